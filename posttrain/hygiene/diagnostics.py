"""Preference-data diagnostics: the biases a DPO run will learn if the data has them.

``PairStats`` accumulates over a stream of pairs (memory: two length lists, one int per pair) and ``report()``
returns plain numbers:

- ``length``: chosen and rejected lengths in characters and words (mean, median, p10, p90, min, max);
  ``chosen_longer_fraction`` / ``rejected_longer_fraction`` / ``equal_length_fraction`` by characters, and the
  mean of chosen/rejected character ratios. A chosen-longer fraction far above 0.5 is length bias.
- ``identical``: chosen == rejected (ends stripped); ``near_identical``: not identical, but equal after case,
  punctuation and whitespace folding (similarity 1.0) or with a Jaccard similarity of their word-trigram sets
  (word sets for replies under three words) >= ``near_threshold``.
- ``format``: per artifact (markdown headers, bullets, numbered lists, bold, code fences, tables), the fraction
  of chosen and of rejected replies that have it, and the pairs where only chosen (only rejected) has it.
  ``flagged`` lists artifacts present in chosen at least ``artifact_ratio`` times as often as in rejected (and
  at least 5 points more often): a preference for formatting, not content.
- ``refusals``: the fraction of chosen and of rejected replies that open with a refusal (the eval refusal
  detector), and pairs where chosen refuses and rejected does not (and the reverse).
- ``judge``: when rows carry scores (``chosen_score``/``rejected_score``, or UltraFeedback's
  ``score_chosen``/``score_rejected``), the fraction of scored pairs whose chosen scored higher (agreement),
  lower (disagreement) or equal; with a per-judge ``judges`` mapping ``{name: {"chosen": s, "rejected": s}}``
  the same per judge.
"""

from __future__ import annotations

import re
from collections import Counter

from posttrain.eval.scoring import is_refusal
from posttrain.hygiene.text import Folding, normalise, words

FORMAT_ARTIFACTS = {
    "markdown_header": re.compile(r"(?m)^\s{0,3}#{1,6}\s+\S"),
    "bullet": re.compile(r"(?m)^\s*[-*+•]\s+\S"),
    "numbered_list": re.compile(r"(?m)^\s*\d{1,3}[.)]\s+\S"),
    "bold": re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__"),
    "code_fence": re.compile(r"(?m)^\s*```"),
    "table": re.compile(r"(?m)^\s*\|.*\|\s*$"),
}
# Characters each artifact needs; a reply without them skips the regex (most replies skip most of them).
_ARTIFACT_HINTS = {"markdown_header": "#", "bullet": "-*+•", "numbered_list": "0123456789", "bold": "*_",
                   "code_fence": "`", "table": "|"}
SCORE_KEYS = (("chosen_score", "rejected_score"), ("score_chosen", "score_rejected"))


def _quantiles(values: list[int]) -> dict:
    if not values:
        return {"n": 0}
    s = sorted(values)

    def q(p: float) -> float:  # linear interpolation between closest ranks (numpy's default)
        pos = p * (len(s) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        return round(s[lo] + (s[hi] - s[lo]) * (pos - lo), 4)

    return {"n": len(s), "mean": round(sum(s) / len(s), 4), "median": q(0.5), "p10": q(0.1), "p90": q(0.9),
            "min": s[0], "max": s[-1]}


def _grams(text: str) -> set:
    tokens = words(text)
    if len(tokens) < 3:
        return set(tokens)
    return {tuple(tokens[i:i + 3]) for i in range(len(tokens) - 2)}


def where(lines: list[int], total: int, shown: int = 10) -> str:
    """``line 3`` / ``lines 3, 7`` / ``lines 3, 7, ... (10 of 25 listed)``: the rows (JSONL line numbers, else
    record numbers) a warning is about, so the console names them as ``--json`` does."""
    head = ", ".join(str(n) for n in lines[:shown])
    more = f", ... ({min(len(lines), shown)} of {total} listed)" if total > min(len(lines), shown) else ""
    return f"line{'s' if total > 1 else ''} {head}{more}"


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class PairStats:
    def __init__(self, near_threshold: float = 0.9, artifact_ratio: float = 1.5, max_listed: int = 100):
        self.is_refusal = is_refusal
        self.near_threshold, self.artifact_ratio, self.max_listed = near_threshold, artifact_ratio, max_listed
        self.n = 0
        self.chars = {"chosen": [], "rejected": []}
        self.words = {"chosen": [], "rejected": []}
        self.longer = Counter()
        self.ratio_sum = 0.0
        self.identical: list[int] = []
        self.near_identical: list[tuple[int, float]] = []
        self.n_identical = self.n_near = 0
        self.format = {name: Counter() for name in FORMAT_ARTIFACTS}
        self.refusal = Counter()
        self.judges: dict[str, Counter] = {}

    def add(self, line: int, chosen: str, rejected: str, metadata: dict) -> None:
        self.n += 1
        for side, text in (("chosen", chosen), ("rejected", rejected)):
            self.chars[side].append(len(text))
            self.words[side].append(len(words(text)))
        lc, lr = len(chosen), len(rejected)
        self.longer["chosen" if lc > lr else "rejected" if lr > lc else "equal"] += 1
        self.ratio_sum += lc / max(lr, 1)
        if chosen.strip() == rejected.strip():
            self.n_identical += 1
            if len(self.identical) < self.max_listed:
                self.identical.append(line)
        else:
            # Differing only in case, punctuation or spacing is near-identical (similarity 1.0), not identical:
            # that difference can be the whole point of a pair (e.g. an "answer in lowercase" constraint).
            similarity = (1.0 if normalise(chosen, Folding()) == normalise(rejected, Folding())
                          else jaccard(_grams(chosen), _grams(rejected)))
            if similarity >= self.near_threshold:
                self.n_near += 1
                if len(self.near_identical) < self.max_listed:
                    self.near_identical.append((line, round(similarity, 4)))
        for name, pattern in FORMAT_ARTIFACTS.items():
            hint = _ARTIFACT_HINTS[name]
            c = any(h in chosen for h in hint) and bool(pattern.search(chosen))
            r = any(h in rejected for h in hint) and bool(pattern.search(rejected))
            counts = self.format[name]
            counts["chosen"] += c
            counts["rejected"] += r
            counts["only_chosen"] += c and not r
            counts["only_rejected"] += r and not c
        c, r = self.is_refusal(chosen), self.is_refusal(rejected)
        self.refusal["chosen"] += c
        self.refusal["rejected"] += r
        self.refusal["only_chosen"] += c and not r
        self.refusal["only_rejected"] += r and not c
        self._judge(metadata)

    def _judge(self, metadata: dict) -> None:
        for chosen_key, rejected_key in SCORE_KEYS:
            c, r = _number(metadata.get(chosen_key)), _number(metadata.get(rejected_key))
            if c is not None and r is not None:
                self._vote("scores", c, r)
                break
        judges = metadata.get("judges")
        if isinstance(judges, dict):
            for name, verdict in judges.items():
                if isinstance(verdict, dict):
                    c, r = _number(verdict.get("chosen")), _number(verdict.get("rejected"))
                    if c is not None and r is not None:
                        self._vote(str(name), c, r)

    def _vote(self, name: str, chosen: float, rejected: float) -> None:
        counts = self.judges.setdefault(name, Counter())
        counts["agree" if chosen > rejected else "disagree" if chosen < rejected else "tie"] += 1

    def report(self) -> dict:
        n = max(self.n, 1)

        def frac(count: int | float) -> float:
            return round(count / n, 4)

        fmt = {}
        flagged = []
        for name, c in self.format.items():
            fc, fr = frac(c["chosen"]), frac(c["rejected"])
            fmt[name] = {"chosen_fraction": fc, "rejected_fraction": fr, "only_chosen_pairs": c["only_chosen"],
                         "only_rejected_pairs": c["only_rejected"]}
            if fc >= self.artifact_ratio * fr and fc - fr >= 0.05:
                flagged.append(name)
        judges = {}
        for name, c in self.judges.items():
            total = sum(c.values())
            judges[name] = {"pairs": total, **{k: round(c[k] / total, 4) for k in ("agree", "disagree", "tie")}}
        return {
            "pairs": self.n,
            "length": {
                "chars": {"chosen": _quantiles(self.chars["chosen"]), "rejected": _quantiles(self.chars["rejected"])},
                "words": {"chosen": _quantiles(self.words["chosen"]), "rejected": _quantiles(self.words["rejected"])},
                "chosen_longer_fraction": frac(self.longer["chosen"]),
                "rejected_longer_fraction": frac(self.longer["rejected"]),
                "equal_length_fraction": frac(self.longer["equal"]),
                "mean_length_ratio": round(self.ratio_sum / n, 4),
            },
            "identical": {"pairs": self.n_identical, "fraction": frac(self.n_identical), "lines": self.identical},
            "near_identical": {"threshold": self.near_threshold, "pairs": self.n_near, "fraction": frac(self.n_near),
                               "examples": [{"line": line, "similarity": s} for line, s in self.near_identical]},
            "format": {"artifacts": fmt, "flagged": flagged},
            "refusals": {"chosen_fraction": frac(self.refusal["chosen"]),
                         "rejected_fraction": frac(self.refusal["rejected"]),
                         "only_chosen_pairs": self.refusal["only_chosen"],
                         "only_rejected_pairs": self.refusal["only_rejected"]},
            "judge": judges,
            "warnings": self.warnings(flagged),
        }

    def warnings(self, flagged: list[str]) -> list[str]:
        out = []
        n = max(self.n, 1)
        if self.n >= 10 and self.longer["chosen"] / n >= 0.7:
            out.append(f"length bias: chosen is longer in {self.longer['chosen'] / n:.0%} of pairs")
        if self.n_identical:
            out.append(f"{self.n_identical} pair(s) have identical chosen and rejected (no signal): "
                       f"{where(self.identical, self.n_identical)}")
        if self.n_near:
            out.append(f"{self.n_near} pair(s) are near-identical (word-trigram Jaccard >= {self.near_threshold}): "
                       f"{where([line for line, _ in self.near_identical], self.n_near)}")
        for name in flagged:
            c = self.format[name]
            out.append(f"format artifact: {name} in {c['chosen'] / n:.0%} of chosen vs {c['rejected'] / n:.0%} "
                       "of rejected")
        if self.refusal["only_chosen"] > self.refusal["only_rejected"] and self.refusal["only_chosen"] / n >= 0.05:
            out.append(f"refusals preferred: chosen refuses and rejected does not in "
                       f"{self.refusal['only_chosen']} pair(s)")
        for name, c in self.judges.items():
            total = sum(c.values())
            if total and c["disagree"] / total >= 0.1:
                out.append(f"judge '{name}' scored rejected above chosen in {c['disagree'] / total:.0%} of pairs")
        return out
