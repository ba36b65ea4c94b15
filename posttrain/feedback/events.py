"""Production feedback events: read JSONL logs and validate each line into one dataclass per kind.

Every event has ``kind`` and ``prompt`` (a string, or a message list ending in a user turn), and optionally
``event_id``, ``timestamp`` (ISO 8601), ``user_id`` and ``model``; other fields are ignored. The kinds and their
fields are documented in ``docs/FEEDBACK.md``. A bad line becomes one ``DataError`` (``file:LINE: field 'x':
message``) and reading goes on, so one pass reports every bad line and the good ones can still be converted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import ClassVar, Literal

from posttrain.data.layouts import check_text
from posttrain.data.readers import read_records
from posttrain.data.schema import DataError, Message
from posttrain.data.validate import message_errors, order_errors

KIND_ALIASES = {"thumbs": "thumbs", "edit": "edit", "side_by_side": "side_by_side", "pairwise": "side_by_side",
                "ranking": "ranking", "likert": "likert"}
RATINGS = {"up": True, "down": False}
CHOICES = ("a", "b", "tie")


@dataclass(frozen=True)
class Origin:
    """Where an event came from. ``id`` is its ``event_id``, or ``file:LINE`` when the log has none."""

    source: str
    row: int
    event_id: str | None = None
    timestamp: str | None = None
    user_id: str | None = None
    model: str | None = None

    @property
    def id(self) -> str:
        return self.event_id if self.event_id is not None else f"{self.source}:{self.row}"


@dataclass
class ThumbsEvent:
    kind: ClassVar[str] = "thumbs"
    prompt: list[Message]
    response: str
    up: bool
    origin: Origin


@dataclass
class EditEvent:
    kind: ClassVar[str] = "edit"
    prompt: list[Message]
    response: str  # what the model said
    edited: str  # what the user changed it to
    origin: Origin


@dataclass
class SideBySideEvent:
    kind: ClassVar[str] = "side_by_side"
    prompt: list[Message]
    response_a: str
    response_b: str
    choice: Literal["a", "b", "tie"]
    origin: Origin


@dataclass
class RankingEvent:
    kind: ClassVar[str] = "ranking"
    prompt: list[Message]
    responses: list[str]
    ranking: list[int]  # indices into ``responses``, best first; a permutation of range(len(responses))
    origin: Origin


@dataclass
class LikertEvent:
    kind: ClassVar[str] = "likert"
    prompt: list[Message]
    response: str
    score: float | None  # the overall score; None when only aspect scores were given
    origin: Origin
    aspects: dict[str, float] | None = None  # multi-aspect ratings: {"helpfulness": 4, "accuracy": 5, ...}


FeedbackEvent = ThumbsEvent | EditEvent | SideBySideEvent | RankingEvent | LikertEvent


_string = check_text  # one definition of 'a non-empty string field' for every reader


def _text(record: dict, key: str, source: str, row: int) -> str:
    return _string(record.get(key), key, source, row)


def _prompt(record: dict, source: str, row: int) -> list[Message]:
    value = record.get("prompt")
    if isinstance(value, str):
        return [{"role": "user", "content": _text(record, "prompt", source, row)}]
    if value is None:
        raise DataError(source, row, "prompt", "missing")
    if not isinstance(value, list):
        raise DataError(source, row, "prompt", f"must be a string or a message list, got {type(value).__name__}")
    # The same checks the trainers apply, so every event that passes here yields rows they accept.
    errors = message_errors(value, "prompt", source, row)
    if not errors:
        messages = [{"role": m["role"], "content": m["content"]} for m in value]
        errors = order_errors([("prompt", messages)], source, row)
        if not errors and messages[-1]["role"] != "user":
            errors = [DataError(source, row, f"prompt[{len(messages) - 1}].role",
                                f"the prompt must end with a user turn, got {messages[-1]['role']!r}")]
    if errors:
        raise errors[0]
    return messages


def _optional_id(record: dict, key: str, source: str, row: int) -> str | None:
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(source, row, key, f"must be a string, got {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise DataError(source, row, key, "is empty")
    return str(value)


def _origin(record: dict, source: str, row: int) -> Origin:
    timestamp = record.get("timestamp")
    if timestamp is not None:
        if not isinstance(timestamp, str):
            raise DataError(source, row, "timestamp", f"must be an ISO 8601 string, got {type(timestamp).__name__}")
        try:
            datetime.fromisoformat(timestamp)
        except ValueError:
            raise DataError(source, row, "timestamp", f"not an ISO 8601 date-time: {timestamp!r}") from None
    model = record.get("model")
    if model is not None and not isinstance(model, str):
        raise DataError(source, row, "model", f"must be a string, got {type(model).__name__}")
    return Origin(source, row, _optional_id(record, "event_id", source, row), timestamp,
                  _optional_id(record, "user_id", source, row), model)


def _rating(value, source: str, row: int) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (1, 0, -1):
        return value == 1
    if isinstance(value, str) and value.strip().lower() in RATINGS:
        return RATINGS[value.strip().lower()]
    if value is None:
        raise DataError(source, row, "rating", "missing")
    raise DataError(source, row, "rating", f"must be 'up' or 'down' (or true/false, 1/0/-1), got {value!r}")


def _two_responses(record: dict, source: str, row: int) -> tuple[str, str]:
    if record.get("responses") is not None:
        if record.get("response_a") is not None or record.get("response_b") is not None:
            raise DataError(source, row, "responses", "give either 'responses' or 'response_a' + 'response_b', "
                            "not both")
        responses = _responses(record, source, row)
        if len(responses) != 2:
            raise DataError(source, row, "responses", f"must hold exactly 2 responses, got {len(responses)}")
        return responses[0], responses[1]
    if record.get("response_a") is None and record.get("response_b") is None:
        raise DataError(source, row, "responses", "missing (or give 'response_a' + 'response_b')")
    return _text(record, "response_a", source, row), _text(record, "response_b", source, row)


def _responses(record: dict, source: str, row: int) -> list[str]:
    value = record.get("responses")
    if value is None:
        raise DataError(source, row, "responses", "missing")
    if not isinstance(value, list):
        raise DataError(source, row, "responses", f"must be a list of strings, got {type(value).__name__}")
    return [_string(item, f"responses[{i}]", source, row) for i, item in enumerate(value)]


def _choice(value, source: str, row: int) -> str:
    if value is None:
        raise DataError(source, row, "choice", "missing")
    if not isinstance(value, str) or value.strip().lower() not in CHOICES:
        raise DataError(source, row, "choice", f"must be 'a', 'b' or 'tie', got {value!r}")
    return value.strip().lower()


def _ranking(value, n: int, source: str, row: int) -> list[int]:
    if value is None:
        raise DataError(source, row, "ranking", "missing")
    if not isinstance(value, list):
        raise DataError(source, row, "ranking", f"must be a list of response indices, got {type(value).__name__}")
    for i, index in enumerate(value):
        if isinstance(index, bool) or not isinstance(index, int):
            raise DataError(source, row, f"ranking[{i}]", f"must be an integer index, got {index!r}")
        if not 0 <= index < n:
            raise DataError(source, row, f"ranking[{i}]", f"index {index} is out of range for {n} responses")
    if sorted(value) != list(range(n)):
        repeated = sorted({i for i in value if value.count(i) > 1})
        missing = sorted(set(range(n)) - set(value))
        raise DataError(source, row, "ranking", f"must be a permutation of 0..{n - 1} (best first): "
                        f"repeated {repeated}, missing {missing}")
    return value


def _score(value, scale: tuple[float, float], source: str, row: int, field: str = "score") -> float:
    if value is None:
        raise DataError(source, row, field, "missing" + (" (or give 'scores': {aspect: score})" if field == "score"
                                                         else ""))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(source, row, field, f"must be a number, got {value!r}")
    low, high = scale
    if not low <= value <= high:
        raise DataError(source, row, field, f"{value} is outside the scale {low:g}..{high:g}")
    return value


def parse_event(record: dict, source: str = "<memory>", row: int = 0,
                likert_scale: tuple[float, float] = (1, 5)) -> FeedbackEvent:
    """One raw log record -> one event, or ``DataError`` naming the first field that is wrong."""
    kind = record.get("kind")
    if kind is None:
        raise DataError(source, row, "kind", f"missing (expected one of {', '.join(KIND_ALIASES)})")
    if not isinstance(kind, str) or kind.strip().lower() not in KIND_ALIASES:
        raise DataError(source, row, "kind", f"unknown kind {kind!r} (expected one of {', '.join(KIND_ALIASES)})")
    kind = KIND_ALIASES[kind.strip().lower()]
    prompt = _prompt(record, source, row)
    origin = _origin(record, source, row)
    if kind == "thumbs":
        return ThumbsEvent(prompt, _text(record, "response", source, row),
                           _rating(record.get("rating"), source, row), origin)
    if kind == "edit":
        return EditEvent(prompt, _text(record, "response", source, row), _text(record, "edited", source, row),
                         origin)
    if kind == "side_by_side":
        a, b = _two_responses(record, source, row)
        return SideBySideEvent(prompt, a, b, _choice(record.get("choice"), source, row), origin)
    if kind == "ranking":
        responses = _responses(record, source, row)
        if len(responses) < 2:
            raise DataError(source, row, "responses", f"a ranking needs at least 2 responses, got {len(responses)}")
        return RankingEvent(prompt, responses, _ranking(record.get("ranking"), len(responses), source, row), origin)
    aspects = _aspects(record.get("scores"), likert_scale, source, row)
    if aspects is not None and record.get("score") is None:
        return LikertEvent(prompt, _text(record, "response", source, row), None, origin, aspects)
    return LikertEvent(prompt, _text(record, "response", source, row),
                       _score(record.get("score"), likert_scale, source, row), origin, aspects)


def _aspects(value, scale: tuple[float, float], source: str, row: int) -> dict[str, float] | None:
    """``scores``: per-aspect Likert scores ``{name: number in the scale}``, or None when absent."""
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise DataError(source, row, "scores", f"must be a non-empty object {{aspect: score}}, got {value!r}")
    out = {}
    for name, score in value.items():
        if not isinstance(name, str) or not name.strip():
            raise DataError(source, row, "scores", f"aspect names must be non-empty strings, got {name!r}")
        out[name] = _score(score, scale, source, row, field=f"scores.{name}")
    return out


def read_events(paths: list[str], likert_scale: tuple[float, float] = (1, 5)
                ) -> tuple[list[FeedbackEvent], list[DataError], int]:
    """Read every event in ``paths`` (JSONL; .json/.parquet/.csv also work through the data readers).

    Returns ``(events, errors, lines)``: the valid events in file order, one ``DataError`` per bad line, and how
    many non-blank lines were read. A path that is not a readable file raises ``DataError`` (nothing to convert).
    """
    paths = [str(p) for p in paths]
    events: list[FeedbackEvent] = []
    errors: list[DataError] = []
    lines = 0
    for path in paths:
        if not Path(path).is_file():
            raise DataError(path, None, None, "no such file")
        line_errors: list[DataError] = []
        for row, record in read_records(path, errors=line_errors):
            lines += 1
            try:
                events.append(parse_event(record, path, row, likert_scale))
            except DataError as e:
                errors.append(e)
        # Lines the reader could not parse (bad JSON, not an object) are lines too.
        lines += len(line_errors)
        errors.extend(line_errors)
    errors.sort(key=lambda e: (paths.index(e.source), e.row or 0))
    return events, errors, lines
