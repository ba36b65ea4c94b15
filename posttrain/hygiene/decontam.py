"""N-gram decontamination against eval sets (GPT-3 / Llama style, on word tokens).

Every eval example (its prompt, plus its reference answer when the row has one) is cut into word ``n``-grams
(default 13); a training text is contaminated by that example when it contains at least one of them. An eval
text shorter than ``n`` words contributes itself whole as one gram (as long as it has ``min_words`` words), or
short eval prompts (most of the builtin suites) could never be found.

Per match the report gives the eval set and example id, the training field (``prompt``, ``response``,
``chosen``, ...), how many of the example's distinct n-grams the row contains, and the overlap fraction
(matched / the example's n-grams): 1.0 means the whole eval example appears in the training row.

The index holds only the eval n-grams (small); training rows stream past it. A lookup only starts at tokens
that begin some eval gram, so common-word-free text costs one set lookup per token.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.data.layouts import to_prompt
from posttrain.data.readers import read_records
from posttrain.data.schema import DataError
from posttrain.eval.suites import BUILTIN_SUITES
from posttrain.hygiene.text import words

DEFAULT_N = 13
DEFAULT_MIN_WORDS = 6
# Fields of an eval row that hold text worth protecting besides the prompt (answers of capability rows).
ANSWER_FIELDS = ("answer", "completion", "response", "output", "reference")


@dataclass
class EvalExample:
    eval_set: str
    id: str
    n_grams: int  # distinct grams of this example


@dataclass
class Match:
    eval_set: str
    eval_id: str
    field: str
    matched_ngrams: int
    eval_ngrams: int

    @property
    def overlap(self) -> float:
        return self.matched_ngrams / self.eval_ngrams


@dataclass
class EvalIndex:
    n: int = DEFAULT_N
    min_words: int = DEFAULT_MIN_WORDS
    examples: list[EvalExample] = field(default_factory=list)
    grams: dict[tuple[str, ...], list[int]] = field(default_factory=dict)  # gram -> example indices
    lengths_by_first: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    sets: dict[str, dict] = field(default_factory=dict)  # eval set -> {"source", "examples", "ngrams"}

    def add(self, eval_set: str, example_id: str, texts: list[str]) -> None:
        grams: set[tuple[str, ...]] = set()
        for text in texts:
            tokens = words(text)
            if len(tokens) >= self.n:
                grams.update(tuple(tokens[i:i + self.n]) for i in range(len(tokens) - self.n + 1))
            elif len(tokens) >= self.min_words:
                grams.add(tuple(tokens))
        if not grams:
            return
        index = len(self.examples)
        self.examples.append(EvalExample(eval_set, example_id, len(grams)))
        info = self.sets.setdefault(eval_set, {"examples": 0, "ngrams": 0})
        info["examples"] += 1
        info["ngrams"] += len(grams)
        for gram in grams:
            self.grams.setdefault(gram, []).append(index)
            self.lengths_by_first[gram[0]].add(len(gram))

    def matches(self, field_name: str, text: str) -> list[Match]:
        """Every eval example ``text`` shares a gram with, with how many of its grams it shares."""
        tokens = words(text)
        found: dict[int, set[tuple[str, ...]]] = {}
        starts = self.lengths_by_first
        for i in [i for i, token in enumerate(tokens) if token in starts]:  # positions that can start a gram
            for length in starts[tokens[i]]:
                if i + length > len(tokens):
                    continue
                gram = tuple(tokens[i:i + length])
                hit = self.grams.get(gram)
                if hit:
                    for index in hit:
                        found.setdefault(index, set()).add(gram)
        out = []
        for index, grams in found.items():
            ex = self.examples[index]
            out.append(Match(ex.eval_set, ex.id, field_name, len(grams), ex.n_grams))
        return out


def _row_texts(record: dict) -> list[str]:
    texts = []
    prompt = to_prompt(record).prompt
    texts.extend(m["content"] for m in prompt)
    for key in ANSWER_FIELDS:
        value = record.get(key)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            texts.append(str(value))
    return texts


def add_eval_file(index: EvalIndex, path: str, name: str | None = None) -> None:
    """Add every row of a JSONL/JSON/CSV/Parquet eval file (any prompt layout; ``id`` when present)."""
    name = name or Path(path).stem
    index.sets.setdefault(name, {"examples": 0, "ngrams": 0})["source"] = str(path)
    for row, record in read_records(path):
        try:
            texts = _row_texts(record)
        except DataError as e:
            raise DataError(path, row, e.field_name, e.message) from None
        index.add(name, str(record.get("id", f"{name}:{row}")), texts)


def build_index(suites: list[str] | None = None, files: list[str] | None = None, n: int = DEFAULT_N,
                min_words: int = DEFAULT_MIN_WORDS) -> EvalIndex:
    """The n-gram index of the builtin eval suites named in ``suites`` (default: all of them) and of ``files``."""
    if n < 1:
        raise ValueError(f"n-gram size must be >= 1, got {n}")
    index = EvalIndex(n=n, min_words=min(min_words, n))
    for name in BUILTIN_SUITES if suites is None else suites:
        if name not in BUILTIN_SUITES:
            raise ValueError(f"unknown eval suite '{name}' (builtin: {', '.join(BUILTIN_SUITES)}); "
                             "pass other eval files with --eval-file")
        add_eval_file(index, str(BUILTIN_SUITES[name]), name)
    for path in files or []:
        if not Path(path).exists():
            raise DataError(path, None, None, "no such eval file")
        add_eval_file(index, path)
    return index


class Decontaminator:
    """Checks rows' text fields against an ``EvalIndex`` and keeps the report.

    A row is contaminated when any field matches any eval example; it is *removed* only when ``remove`` is set
    and its largest overlap fraction is >= ``remove_threshold`` (0: any match)."""

    def __init__(self, index: EvalIndex, remove: bool = False, remove_threshold: float = 0.0,
                 fields: tuple[str, ...] | None = None, max_listed: int = 1000):
        self.index, self.remove, self.remove_threshold, self.fields = index, remove, remove_threshold, fields
        self.max_listed = max_listed
        self.rows_checked = self.rows_contaminated = self.rows_removed = 0
        self.per_set = {name: {"contaminated_rows": 0, "matched_examples": set()} for name in index.sets}
        self.listed: list[dict] = []

    def check(self, line: int, texts: dict[str, str]) -> tuple[bool, list[dict]]:
        """(remove this row?, its matches as report records)."""
        self.rows_checked += 1
        matches = [m for name, text in texts.items() if self.fields is None or name in self.fields
                   for m in self.index.matches(name, text)]
        if not matches:
            return False, []
        self.rows_contaminated += 1
        records = [{"line": line, "eval_set": m.eval_set, "eval_id": m.eval_id, "field": m.field,
                    "matched_ngrams": m.matched_ngrams, "eval_ngrams": m.eval_ngrams,
                    "overlap": round(m.overlap, 4)} for m in matches]
        for name in {m.eval_set for m in matches}:
            self.per_set[name]["contaminated_rows"] += 1
        for m in matches:
            self.per_set[m.eval_set]["matched_examples"].add(m.eval_id)
        drop = self.remove and max(m.overlap for m in matches) >= self.remove_threshold
        self.rows_removed += int(drop)
        for r in records:
            r["removed"] = drop
        if len(self.listed) < self.max_listed:
            self.listed.extend(records[: self.max_listed - len(self.listed)])
        return drop, records

    def report(self) -> dict:
        return {
            "n": self.index.n, "min_words": self.index.min_words, "fields": list(self.fields or ["all"]),
            "remove": self.remove, "remove_threshold": self.remove_threshold,
            "rows_checked": self.rows_checked, "rows_contaminated": self.rows_contaminated,
            "rows_removed": self.rows_removed,
            "eval_sets": {name: {**info, "contaminated_rows": self.per_set[name]["contaminated_rows"],
                                 "contaminated_examples": len(self.per_set[name]["matched_examples"]),
                                 "contaminated_example_ids": sorted(self.per_set[name]["matched_examples"])[:100]}
                          for name, info in self.index.sets.items()},
            "matches": self.listed,
            "matches_listed": len(self.listed),
        }
