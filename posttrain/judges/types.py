"""What every judge returns, and the two shapes a judge can take (``Protocol``s, not base classes).

A *scoring* judge rates one response to a prompt; a *pairwise* judge compares two responses to the same prompt.
Verifiers, reward models and LLM judges all fit one (or both) of these, so collection, pair building and eval
take any judge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Message = dict[str, str]


@dataclass
class Score:
    """``value``: higher is better (verifiers: fraction of checks passed in [0, 1]; reward models: a real number).
    ``passed``: a hard pass/fail where the judge has one (verifiers), else None. ``details``: per-check results,
    raw judge output, etc. (JSON-serialisable)."""

    value: float
    passed: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Verdict:
    """Pairwise outcome: ``winner`` is "a", "b" or "tie"; ``confidence`` in [0, 1] where the judge gives one."""

    winner: Literal["a", "b", "tie"]
    confidence: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class ScoringJudge(Protocol):
    name: str

    def score(self, prompt: list[Message], response: str, metadata: dict[str, Any]) -> Score: ...


@runtime_checkable
class PairwiseJudge(Protocol):
    name: str

    def compare(self, prompt: list[Message], response_a: str, response_b: str, metadata: dict[str, Any]) -> Verdict: ...
