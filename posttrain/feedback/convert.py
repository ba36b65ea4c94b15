"""Feedback events -> preference pairs and unpaired (KTO) rows, with conflicts found and reported.

Every event is first turned into *votes*: a pairwise vote says one reply beats another for a prompt (edits,
side-by-side, rankings, Likert score gaps, and a thumbs-up reply against a thumbs-down reply to the same prompt);
a label vote says one reply is desirable or not (thumbs, and Likert scores past the optional thresholds). Votes on
the same prompt and replies are then pooled: agreeing votes merge into one row (their event ids joined), votes in
both directions are a *conflict*, resolved by policy (``drop``: keep neither; ``majority``: keep the side with more
votes, neither on a tie) and always reported. Prompts and replies are compared after whitespace normalisation
(runs of whitespace -> one space, trimmed); rows keep the first-seen original text.

Everything here is pure: lists of events in, ``Conversion`` (schema examples, conflicts, summary) out.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from posttrain.data.schema import Message, PreferencePair, UnpairedExample
from posttrain.feedback.events import (
    EditEvent,
    FeedbackEvent,
    LikertEvent,
    Origin,
    RankingEvent,
    SideBySideEvent,
    ThumbsEvent,
)

KINDS = ("thumbs", "edit", "side_by_side", "ranking", "likert")
RANKING_MODES = ("all", "best_vs_rest")
CONFLICT_POLICIES = ("drop", "majority")
SUMMARY_CONFLICT_EXAMPLES = 5


@dataclass
class ConvertOptions:
    ranking_mode: str = "all"  # "all": every ordered pair; "best_vs_rest": the top reply against each other one
    likert_min_gap: float = 2  # two Likert replies to one prompt make a pair when their scores differ this much
    likert_scale: tuple[float, float] = (1, 5)
    # (low, high): a Likert score <= low is an undesirable unpaired row, >= high a desirable one; None: no rows.
    likert_unpaired: tuple[float, float] | None = None
    conflicts: str = "drop"
    max_pairs_per_prompt: int | None = None  # None: no cap
    # Multi-aspect Likert events (``scores: {aspect: value}``): the score a pair compares is one aspect's
    # (``aspect``), else the mean of the aspects weighted by ``aspect_weights`` (default: equal weights; an aspect
    # the weights leave out counts 0). ``aspect_all``: a pair also needs its winner to score at least as high on every
    # aspect the two share ("better on all").
    aspect: str | None = None
    aspect_weights: dict[str, float] | None = None
    aspect_all: bool = False

    def __post_init__(self):
        if self.ranking_mode not in RANKING_MODES:
            raise ValueError(f"ranking mode must be one of {', '.join(RANKING_MODES)}, got {self.ranking_mode!r}")
        if self.conflicts not in CONFLICT_POLICIES:
            raise ValueError(f"conflict policy must be one of {', '.join(CONFLICT_POLICIES)}, "
                             f"got {self.conflicts!r}")
        if not self.likert_min_gap > 0:
            raise ValueError(f"the Likert min gap must be > 0, got {self.likert_min_gap}")
        low, high = self.likert_scale
        if not low < high:
            raise ValueError(f"the Likert scale must be LOW,HIGH with LOW < HIGH, got {low:g},{high:g}")
        if self.likert_unpaired is not None:
            below, above = self.likert_unpaired
            if not low <= below < above <= high:
                raise ValueError(f"the Likert unpaired thresholds must be LOW,HIGH with {low:g} <= LOW < HIGH <= "
                                 f"{high:g}, got {below:g},{above:g}")
        if self.max_pairs_per_prompt is not None and self.max_pairs_per_prompt < 1:
            raise ValueError(f"max pairs per prompt must be >= 1, got {self.max_pairs_per_prompt}")
        if self.aspect is not None and self.aspect_weights is not None:
            raise ValueError("give an aspect or aspect weights, not both")
        if self.aspect_weights is not None:
            if not self.aspect_weights or any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0
                                              for w in self.aspect_weights.values()) \
                    or sum(self.aspect_weights.values()) <= 0:
                raise ValueError(f"aspect weights must be numbers >= 0 with a positive sum, got "
                                 f"{self.aspect_weights!r}")


def likert_value(event: LikertEvent, options: ConvertOptions) -> float | None:
    """The score a Likert event is compared by (``ConvertOptions``' aspect settings); None when it has no value
    under them (``aspect`` names an aspect the event did not rate, or the weights give all its aspects 0)."""
    if event.aspects is None:
        return event.score if options.aspect is None else None
    if options.aspect is not None:
        return event.aspects.get(options.aspect)
    if options.aspect_weights is None:
        return sum(event.aspects.values()) / len(event.aspects)
    total = sum(options.aspect_weights.get(name, 0.0) for name in event.aspects)
    if total <= 0:
        return None
    return sum(options.aspect_weights.get(name, 0.0) * v for name, v in event.aspects.items()) / total


def better_on_all(high: LikertEvent, low: LikertEvent) -> bool:
    """The winner scores at least as high as the loser on every aspect both rated (true without shared aspects)."""
    shared = set(high.aspects or {}) & set(low.aspects or {})
    return all(high.aspects[a] >= low.aspects[a] for a in shared)


def aspect_agreement(pairs: list[tuple[LikertEvent, LikertEvent]]) -> dict[str, dict]:
    """Per aspect, over the Likert pairs (winner, loser) whose two events rated it: how often the aspect agrees with
    the pair (winner higher), ties, or disagrees, and the agreement rate."""
    out: dict[str, dict] = {}
    for high, low in pairs:
        for name in sorted(set(high.aspects or {}) & set(low.aspects or {})):
            row = out.setdefault(name, {"pairs": 0, "agree": 0, "tie": 0, "disagree": 0})
            row["pairs"] += 1
            diff = high.aspects[name] - low.aspects[name]
            row["agree" if diff > 0 else "tie" if diff == 0 else "disagree"] += 1
    for row in out.values():
        row["agreement"] = row["agree"] / row["pairs"]
    return out


@dataclass
class PairVote:
    """One vote that ``better`` beats ``worse`` as a reply to ``prompt``; ``origin``: the event it came from
    (for a vote built from two events, the one behind ``better``)."""

    prompt: list[Message]
    better: str
    worse: str
    kind: str
    event_ids: list[str]
    origin: Origin


@dataclass
class LabelVote:
    """One vote that ``response`` is a desirable (``label=True``) or undesirable reply to ``prompt``."""

    prompt: list[Message]
    response: str
    label: bool
    kind: str
    event_ids: list[str]
    origin: Origin


@dataclass
class Conversion:
    pairs: list[PreferencePair]
    unpaired: list[UnpairedExample]
    conflicts: list[dict]  # one JSON-ready record per conflict, resolution included
    summary: dict = field(default_factory=dict)


def normalise_text(text: str) -> str:
    return " ".join(text.split())


def prompt_key(prompt: list[Message]) -> tuple:
    return tuple((m["role"], normalise_text(m["content"])) for m in prompt)


def _unique(items) -> list:
    return list(dict.fromkeys(items))


def _vote(event: FeedbackEvent, better: str, worse: str, skipped: Counter, why: str) -> list[PairVote]:
    if normalise_text(better) == normalise_text(worse):
        skipped[f"{event.kind}: {why}"] += 1
        return []
    return [PairVote(event.prompt, better, worse, event.kind, [event.origin.id], event.origin)]


def event_pair_votes(event: FeedbackEvent, ranking_mode: str, skipped: Counter) -> list[PairVote]:
    """The pairwise votes one edit, side-by-side or ranking event casts (thumbs and Likert need other events)."""
    if isinstance(event, EditEvent):
        return _vote(event, event.edited, event.response, skipped, "edited identical to response")
    if isinstance(event, SideBySideEvent):
        if event.choice == "tie":
            skipped["side_by_side: tie"] += 1
            return []
        a, b = event.response_a, event.response_b
        better, worse = (a, b) if event.choice == "a" else (b, a)
        return _vote(event, better, worse, skipped, "responses identical")
    if isinstance(event, RankingEvent):
        order = [event.responses[i] for i in event.ranking]
        rivals = range(1) if ranking_mode == "best_vs_rest" else range(len(order))
        return [vote for i in rivals for j in range(i + 1, len(order))
                for vote in _vote(event, order[i], order[j], skipped, "pair of identical responses")]
    return []


def likert_pair_votes(events: list[LikertEvent], options: ConvertOptions, skipped: Counter,
                      compared: list | None = None) -> tuple[list[PairVote], set[str]]:
    """Every two scores (``likert_value``) for different replies to one prompt that differ by >=
    ``options.likert_min_gap``: the higher wins (with ``aspect_all``, only if it is also no worse on any shared
    aspect). Returns the votes and the ids of the events that took part in one; ``compared`` collects (winner,
    loser) events."""
    min_gap = options.likert_min_gap
    by_prompt: dict[tuple, list[tuple[LikertEvent, float]]] = {}
    for event in events:
        value = likert_value(event, options)
        if value is None:
            skipped[f"likert: no score for aspect '{options.aspect}'" if options.aspect is not None
                    else "likert: the aspect weights give its aspects 0"] += 1
            continue
        by_prompt.setdefault(prompt_key(event.prompt), []).append((event, value))
    votes, used = [], set()
    for group in by_prompt.values():
        for i, (first, v1) in enumerate(group):
            for second, v2 in group[i + 1:]:
                if normalise_text(first.response) == normalise_text(second.response):
                    continue
                if abs(v1 - v2) < min_gap:
                    continue
                high, low = (first, second) if v1 > v2 else (second, first)
                if options.aspect_all and not better_on_all(high, low):
                    skipped["likert: pair not better on all aspects"] += 1
                    continue
                votes.append(PairVote(high.prompt, high.response, low.response, "likert",
                                      [high.origin.id, low.origin.id], high.origin))
                used |= {first.origin.id, second.origin.id}
                if compared is not None:
                    compared.append((high, low))
    return votes, used


def label_votes(events: list[FeedbackEvent], options: ConvertOptions) -> list[LabelVote]:
    votes = []
    for event in events:
        if isinstance(event, ThumbsEvent):
            votes.append(LabelVote(event.prompt, event.response, event.up, "thumbs", [event.origin.id], event.origin))
        elif isinstance(event, LikertEvent) and options.likert_unpaired is not None:
            low, high = options.likert_unpaired
            score = likert_value(event, options)
            if score is not None and (score <= low or score >= high):
                votes.append(LabelVote(event.prompt, event.response, score >= high, "likert",
                                       [event.origin.id], event.origin))
    return votes


def _merged(votes: list, against: list) -> dict:
    return {"source_kind": "+".join(_unique(v.kind for v in votes)),
            "event_ids": _unique(i for v in votes for i in v.event_ids),
            "votes": len(votes), "votes_against": len(against)}


def _side(votes: list) -> dict:
    return {"votes": len(votes), "event_ids": _unique(i for v in votes for i in v.event_ids),
            "source_kinds": _unique(v.kind for v in votes)}


def _winner(first: list, second: list, policy: str, names: tuple[str, str]) -> tuple[int | None, str]:
    """Which side of a conflict is kept (0, 1, or None for neither) and the words for it."""
    if policy == "majority" and len(first) != len(second):
        side = 0 if len(first) > len(second) else 1
        return side, f"kept {names[side]}"
    return None, "dropped (tied)" if policy == "majority" else "dropped"


def resolve_labels(votes: list[LabelVote], policy: str) -> tuple[list[tuple[UnpairedExample, list[LabelVote]]],
                                                                    list[dict], int]:
    """Pool label votes per (prompt, reply). Returns (row, the votes behind it) per kept row, the conflicts, and
    how many duplicate votes were merged into rows."""
    groups: dict[tuple, list[LabelVote]] = {}
    for vote in votes:
        groups.setdefault((prompt_key(vote.prompt), normalise_text(vote.response)), []).append(vote)
    kept, conflicts, merged = [], [], 0
    for group in groups.values():
        up = [v for v in group if v.label]
        down = [v for v in group if not v.label]
        if up and down:
            side, resolution = _winner(up, down, policy, ("up", "down"))
            conflicts.append({"type": "label", "prompt": group[0].prompt, "response": group[0].response,
                              "up": _side(up), "down": _side(down), "resolution": resolution})
            if side is None:
                continue
            winners, losers = (up, down) if side == 0 else (down, up)
        else:
            winners, losers = group, []
        merged += len(winners) - 1
        first = winners[0]
        row = UnpairedExample(first.prompt, [{"role": "assistant", "content": first.response}], first.label,
                              first.origin.source, first.origin.row, _merged(winners, losers))
        kept.append((row, winners))
    return kept, conflicts, merged


def thumbs_pair_votes(labels: list[tuple[UnpairedExample, list[LabelVote]]]) -> list[PairVote]:
    """Per prompt, every thumbs-up reply against every thumbs-down reply (after conflicts are resolved)."""
    ups: dict[tuple, list[list[LabelVote]]] = {}
    downs: dict[tuple, list[list[LabelVote]]] = {}
    for row, votes in labels:
        thumbs = [v for v in votes if v.kind == "thumbs"]
        if thumbs:
            (ups if row.label else downs).setdefault(prompt_key(row.prompt), []).append(thumbs)
    pair_votes = []
    for key, good in ups.items():
        for better in good:
            for worse in downs.get(key, []):
                pair_votes.append(PairVote(better[0].prompt, better[0].response, worse[0].response, "thumbs",
                                           _unique(i for v in better + worse for i in v.event_ids),
                                           better[0].origin))
    return pair_votes


def resolve_pairs(votes: list[PairVote], policy: str) -> tuple[list[PreferencePair], list[dict], int]:
    """Pool pairwise votes per (prompt, {reply, reply}). Returns the kept pairs in first-seen order, the
    conflicts, and how many duplicate votes were merged into pairs."""
    groups: dict[tuple, dict[tuple, list[PairVote]]] = {}
    for vote in votes:
        better, worse = normalise_text(vote.better), normalise_text(vote.worse)
        group = groups.setdefault((prompt_key(vote.prompt), frozenset((better, worse))), {})
        group.setdefault((better, worse), []).append(vote)
    pairs, conflicts, merged = [], [], 0
    for group in groups.values():
        sides = list(group.values())
        if len(sides) == 2:
            first, second = sides
            side, resolution = _winner(first, second, policy, ("a_over_b", "b_over_a"))
            conflicts.append({"type": "pair", "prompt": first[0].prompt, "response_a": first[0].better,
                              "response_b": first[0].worse, "a_over_b": _side(first), "b_over_a": _side(second),
                              "resolution": resolution})
            if side is None:
                continue
            winners, losers = (first, second) if side == 0 else (second, first)
        else:
            winners, losers = sides[0], []
        merged += len(winners) - 1
        top = winners[0]
        pairs.append(PreferencePair(top.prompt, [{"role": "assistant", "content": top.better}],
                                    [{"role": "assistant", "content": top.worse}], top.origin.source,
                                    top.origin.row, _merged(winners, losers)))
    return pairs, conflicts, merged


def cap_pairs(pairs: list[PreferencePair], cap: int | None) -> tuple[list[PreferencePair], int]:
    """At most ``cap`` pairs per prompt: the ones with most votes, then the first seen; order is kept."""
    if cap is None:
        return pairs, 0
    by_prompt: dict[tuple, list[int]] = {}
    for index, pair in enumerate(pairs):
        by_prompt.setdefault(prompt_key(pair.prompt), []).append(index)
    keep = set()
    for indices in by_prompt.values():
        keep.update(sorted(indices, key=lambda i: (-pairs[i].metadata["votes"], i))[:cap])
    return [p for i, p in enumerate(pairs) if i in keep], len(pairs) - len(keep)


def convert_events(events: list[FeedbackEvent], options: ConvertOptions | None = None) -> Conversion:
    """All events -> pairs, unpaired rows, conflicts and a summary (see the module docstring)."""
    options = options or ConvertOptions()
    skipped: Counter = Counter()
    unique, seen_ids = [], set()
    for event in events:
        # A log retry can write one event twice; counting it twice would double its vote.
        if event.origin.event_id is not None and event.origin.event_id in seen_ids:
            skipped["duplicate event_id"] += 1
            continue
        seen_ids.add(event.origin.event_id)
        unique.append(event)
    pair_votes = [vote for event in unique for vote in event_pair_votes(event, options.ranking_mode, skipped)]
    likert = [e for e in unique if isinstance(e, LikertEvent)]
    compared: list[tuple[LikertEvent, LikertEvent]] = []
    likert_votes, used = likert_pair_votes(likert, options, skipped, compared)
    pair_votes += likert_votes
    labels, label_conflicts, labels_merged = resolve_labels(label_votes(unique, options),
                                                            options.conflicts)
    used |= {i for row, _ in labels for i in row.metadata["event_ids"]}
    idle = sum(1 for e in likert if e.origin.id not in used and likert_value(e, options) is not None)
    if idle:
        skipped["likert: no pair (no other reply to the prompt scored min_gap apart) and no unpaired row"] += idle
    pair_votes += thumbs_pair_votes(labels)
    # Pairs come out in the order of the first event behind them (stable: one event's votes keep their order).
    position = {event.origin.id: i for i, event in reversed(list(enumerate(unique)))}
    pair_votes.sort(key=lambda vote: min(position[i] for i in vote.event_ids))
    pairs, pair_conflicts, pairs_merged = resolve_pairs(pair_votes, options.conflicts)
    pairs, capped = cap_pairs(pairs, options.max_pairs_per_prompt)
    if capped:
        skipped["pairs over max_pairs_per_prompt"] += capped
    unpaired = [row for row, _ in labels]
    conflicts = pair_conflicts + label_conflicts
    summary = {
        "events": {"valid": len(events), "by_kind": {k: sum(e.kind == k for e in events) for k in KINDS}},
        "rows_out": {"pairs": len(pairs), "unpaired": len(unpaired),
                     "pairs_by_source_kind": dict(Counter(p.metadata["source_kind"] for p in pairs)),
                     "unpaired_by_source_kind": dict(Counter(u.metadata["source_kind"] for u in unpaired))},
        "skipped": dict(skipped),
        "merged_duplicates": {"pairs": pairs_merged, "unpaired": labels_merged},
        "conflicts": {"policy": options.conflicts, "pairs": len(pair_conflicts), "unpaired": len(label_conflicts),
                      "resolutions": dict(Counter(c["resolution"] for c in conflicts)),
                      "examples": conflicts[:SUMMARY_CONFLICT_EXAMPLES]},
        "options": asdict(options),
    }
    if any(e.aspects for e in likert):
        summary["aspects"] = aspect_agreement(compared)
    return Conversion(pairs, unpaired, conflicts, summary)


def pair_row(pair: PreferencePair) -> dict:
    """The JSONL row the DPO trainer reads (explicit prompt, message lists), provenance alongside."""
    return {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected, **pair.metadata}


def unpaired_row(row: UnpairedExample) -> dict:
    """The JSONL row the KTO trainer reads, provenance alongside."""
    return {"prompt": row.prompt, "completion": row.completion, "label": row.label, **row.metadata}
