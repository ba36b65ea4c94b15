"""The judge prompts and the parsing of their answers, shared by every text-generating judge (an HTTP endpoint in
``llm.py``, an in-process model in ``local.py``): both send the same messages and read answers the same way.

Pairwise: the judge sees the conversation, Response A and Response B, reasons briefly, and ends with a line
``Verdict: A`` / ``Verdict: B`` / ``Verdict: tie``. Every pair is asked in both orders (``both_orders``); a judge
that picks the same *position* both times is showing position bias, and that counts as a tie
(``combine_orders``). Pointwise: the judge ends with ``Score: N`` on a 1-10 scale. Rubric rules (``rubric.py``):
one request per rule, the judge ends with ``Grade: N`` on 0-2 (does not / partly / fully comply).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from posttrain.judges.types import Message, Score, Verdict

DEFAULT_RUBRIC = """\
Judge which response is the better reply to the user's last message. In order of importance:
1. Follows every explicit instruction in the conversation (format, length, language, constraints).
2. Correct: no factual, logical or computational errors; says so when unsure instead of inventing.
3. Helpful: answers what was asked, completely, without padding. Longer is not better by itself.
4. Safe and honest: declines only what is actually harmful; no needless refusals or lecturing.
5. Clear: well organised and easy to read."""

PAIRWISE_SYSTEM = """\
You are an impartial judge comparing two assistant responses to the same conversation.

Rubric:
{rubric}

Ignore the order in which the responses are shown and the names of the responses. Do not let length alone decide.
Think briefly (at most a few sentences), then end your answer with exactly one final line, one of:
Verdict: A
Verdict: B
Verdict: tie"""

POINTWISE_SYSTEM = """\
You are an impartial judge rating one assistant response to a conversation.

Rubric:
{rubric}

Rate the response from 1 (useless or harmful) to 10 (excellent) against the rubric. Do not let length alone decide.
Think briefly (at most a few sentences), then end your answer with exactly one final line of the form:
Score: N"""

SCORE_RANGE = (1.0, 10.0)

Ask = Callable[[list[list[Message]]], list[str]]
"""Answers a batch of chat requests (lists of messages) with the assistant texts, in order."""


def render_conversation(prompt: Sequence[Message]) -> str:
    return "\n\n".join(f"[{m.get('role', 'user')}]\n{m.get('content', '')}" for m in prompt)


def pairwise_messages(prompt: Sequence[Message], first: str, second: str,
                      rubric: str = DEFAULT_RUBRIC) -> list[Message]:
    user = (f"<conversation>\n{render_conversation(prompt)}\n</conversation>\n\n"
            f"<response_a>\n{first}\n</response_a>\n\n<response_b>\n{second}\n</response_b>\n\n"
            "Which response is better? End with 'Verdict: A', 'Verdict: B' or 'Verdict: tie'.")
    return [{"role": "system", "content": PAIRWISE_SYSTEM.format(rubric=rubric)}, {"role": "user", "content": user}]


def pointwise_messages(prompt: Sequence[Message], response: str, rubric: str = DEFAULT_RUBRIC) -> list[Message]:
    user = (f"<conversation>\n{render_conversation(prompt)}\n</conversation>\n\n"
            f"<response>\n{response}\n</response>\n\nRate the response. End with 'Score: N' (1-10).")
    return [{"role": "system", "content": POINTWISE_SYSTEM.format(rubric=rubric)}, {"role": "user", "content": user}]


# "Verdict: A", "**Verdict:** [[B]]", "verdict - Response A", "Final verdict: Tie", "Verdict: A is better"
_VERDICT = re.compile(r"verdict\W{0,6}(?:response\s+|assistant\s+)?\W{0,3}(tie|a\s+tie|a|b)\b", re.IGNORECASE)
_BRACKETED = re.compile(r"\[\[\s*(a|b|tie)\s*\]\]", re.IGNORECASE)  # MT-bench style "[[A]]"
_BARE = re.compile(r"^\W*(a|b|tie)\W*$", re.IGNORECASE)  # the whole answer is just "A" / "B." / "tie"
_SCORE = re.compile(r"score\W{0,6}(\d+(?:\.\d+)?)(?:\s*/\s*10)?", re.IGNORECASE)


def parse_verdict(text: str) -> str | None:
    """"a", "b" or "tie" from a judge's answer (the last ``Verdict:`` wins), or None if it gives none."""
    for pattern in (_VERDICT, _BRACKETED):
        found = pattern.findall(text or "")
        if found:
            return found[-1].split()[-1].lower()  # "a tie" -> "tie"
    bare = _BARE.match((text or "").strip())
    return bare.group(1).lower() if bare else None


def parse_score(text: str, lo: float = SCORE_RANGE[0], hi: float = SCORE_RANGE[1]) -> float | None:
    """The last ``Score: N`` in [lo, hi], or None."""
    found = _SCORE.findall(text or "")
    if not found:
        return None
    value = float(found[-1])
    return value if lo <= value <= hi else None


_SWAP = {"a": "b", "b": "a", "tie": "tie"}


def combine_orders(raw_ab: str, raw_ba: str) -> Verdict:
    """One verdict from the answers to (A, B) and to (B, A), in the caller's A/B terms.

    Both orders name the same response: that response wins (confidence 1). Both say tie: tie (confidence 1).
    Each picks the same *position*: position bias, tie (confidence 0). One picks a response and the other says
    tie (or cannot be parsed): tie (confidence 0.5). An unparseable answer counts as a tie for its order.
    """
    first, second_pos = parse_verdict(raw_ab), parse_verdict(raw_ba)
    second = None if second_pos is None else _SWAP[second_pos]
    a, b = first or "tie", second or "tie"
    details: dict[str, Any] = {"raw": [raw_ab, raw_ba], "orders": ["ab", "ba"], "parsed": [first, second_pos]}
    reasons = [f"unparseable answer in order {o}" for o, p in (("ab", first), ("ba", second_pos)) if p is None]
    if a == b:
        winner, confidence = a, 1.0
    elif a != "tie" and b != "tie":
        winner, confidence = "tie", 0.0
        reasons.append(f"position bias: picked position {first.upper()} in both orders")
    else:
        winner, confidence = "tie", 0.5
        if not reasons:
            reasons.append("orders disagree: one picks a response, the other says tie")
    if reasons:
        details["reason"] = "; ".join(reasons)
    return Verdict(winner, confidence, details)


def both_orders(ask: Ask, items: Sequence[tuple[Sequence[Message], str, str]], rubric: str = DEFAULT_RUBRIC
                ) -> list[Verdict]:
    """Verdicts for (prompt, response_a, response_b) items, each asked as (A, B) and (B, A) in one batch."""
    requests = []
    for prompt, a, b in items:
        requests += [pairwise_messages(prompt, a, b, rubric), pairwise_messages(prompt, b, a, rubric)]
    answers = ask(requests)
    return [combine_orders(answers[2 * i], answers[2 * i + 1]) for i in range(len(items))]


def pointwise(ask: Ask, items: Sequence[tuple[Sequence[Message], str]], rubric: str = DEFAULT_RUBRIC) -> list[Score]:
    """1-10 scores for (prompt, response) items; an unparseable answer gives a NaN value and a reason."""
    answers = ask([pointwise_messages(prompt, response, rubric) for prompt, response in items])
    scores = []
    for raw in answers:
        value = parse_score(raw)
        if value is None:
            scores.append(Score(math.nan, None, {"raw": raw, "reason": "unparseable answer: no 'Score: N' in 1-10"}))
        else:
            scores.append(Score(value, None, {"raw": raw}))
    return scores


# ----------------------------------------------------------------------------------------- rubric rules (rubric.py)

GRADE_TOP = 2  # a rule's grade: 0 (does not comply), 1 (partly), 2 (fully)

RULE_SYSTEM = """\
You are an impartial judge checking one assistant response against one rule.

Rule:
{rule}

Judge this rule only, nothing else about the response. Grade it:
0 = the response does not comply with the rule
1 = the response partly complies
2 = the response fully complies
Think briefly (at most a few sentences), then end your answer with exactly one final line of the form:
Grade: N"""


def rule_messages(prompt: Sequence[Message], response: str, rule: str) -> list[Message]:
    """The request asking whether ``response`` complies with the rubric rule ``rule`` (the rule's text)."""
    user = (f"<conversation>\n{render_conversation(prompt)}\n</conversation>\n\n"
            f"<response>\n{response}\n</response>\n\n"
            "Does the response comply with the rule? End with 'Grade: 0', 'Grade: 1' or 'Grade: 2'.")
    return [{"role": "system", "content": RULE_SYSTEM.format(rule=rule)}, {"role": "user", "content": user}]


# "Grade: 2", "**Grade:** 1", "Final grade: [[0]]", "grade - 2/2", "Grade: 2.0"
_GRADE = re.compile(r"grade\W{0,6}(\d+(?:\.\d+)?)(?:\s*/\s*(\d+))?", re.IGNORECASE)
_BARE_GRADE = re.compile(r"^\W*(\d)\W*$")  # the whole answer is just "2" / "2."


def parse_grade(text: str, top: int = GRADE_TOP) -> int | None:
    """The last ``Grade: N`` (N a whole number in 0..top; ``N/top`` accepted), else a bare ``N`` as the whole
    answer, else None. A grade out of range or over another scale (``Grade: 7``, ``Grade: 1/10``) is None."""
    found = _GRADE.findall(text or "")
    if found:
        number, scale = found[-1]
        if scale and int(scale) != top:
            return None
    else:
        bare = _BARE_GRADE.match((text or "").strip())
        if not bare:
            return None
        number = bare.group(1)
    value = float(number)
    return int(value) if value.is_integer() and 0 <= value <= top else None
