"""Production feedback (thumbs, edits, side-by-side, rankings, Likert) -> preference pairs and unpaired rows.

``read_events`` parses and validates logs, ``convert_events`` turns events into pairs, unpaired rows, conflicts and
a summary, and ``feedback_app`` is the ``posttrain feedback`` command. See docs/FEEDBACK.md.
"""

from posttrain.feedback.cli import feedback_app, write_outputs
from posttrain.feedback.convert import (
    Conversion,
    ConvertOptions,
    LabelVote,
    PairVote,
    convert_events,
    normalise_text,
    pair_row,
    prompt_key,
    unpaired_row,
)
from posttrain.feedback.events import (
    EditEvent,
    FeedbackEvent,
    LikertEvent,
    Origin,
    RankingEvent,
    SideBySideEvent,
    ThumbsEvent,
    parse_event,
    read_events,
)

__all__ = [
    "Conversion", "ConvertOptions", "EditEvent", "FeedbackEvent", "LabelVote", "LikertEvent", "Origin", "PairVote",
    "RankingEvent", "SideBySideEvent", "ThumbsEvent", "convert_events", "feedback_app", "normalise_text",
]
