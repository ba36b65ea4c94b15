"""``RubricJudge``: rule-based rewards. A rubric is a list of rules; each response gets a grade per rule, and the
weighted mean of the grades is its score.

A rubric file (YAML or JSON) is a list of rules, or a mapping ``{rules: [...]}``; a rule is::

    id: concise          # a name: letters, digits, _ . - (unique; metric keys and summaries use it)
    text: "Answers in at most three sentences."   # what the LLM judge is asked about (kept for verifier rules too)
    weight: 2            # optional, > 0, default 1
    verifier: ...        # optional: check the rule with a verifier instead of asking an LLM

``verifier`` is either a fixed instruction constraint, in the shape of a row's constraints (docs/CANDIDATES.md),
``{kind: word_count, args: {max: 80}}``, or one of ``row`` (everything verifiable in the row's own metadata:
its constraints, answer and tests, as the ``verifier`` judge checks them), ``constraints``, ``answer``, ``tests``
(only that part of the row). A verifier rule's grade is ``VerifierJudge``'s value in [0, 1] (e.g. the fraction of
the row's constraints passed) and it passes when the verifier passes; it makes no LLM request, so a rubric of
verifier rules only needs no LLM at all. A row whose metadata a verifier rule cannot check (nothing to verify, a bad
constraint) is an error naming the row (``RubricRowError``), as it is for the ``verifier`` judge.

Every other rule is asked of an LLM, one request per (response, rule) (``prompts.rule_messages``): an endpoint
(``base_url`` + ``model``, through ``LLMJudge``: retries, SQLite answer cache) or a local model (``local``, through
``LocalModelJudge``). The answer ends with ``Grade: 0|1|2`` (does not / partly / fully comply); the rule's grade is
N / 2 and it passes at 2. An answer with no grade (``prompts.parse_grade``) leaves the rule ungraded: it is left out
of the weighted mean and counted (``stats()["unparseable"]``, ``rule_statistics``).

``Score.value`` = sum(weight * grade) / sum(weight) over the graded rules, in [0, 1] (NaN when no rule is graded);
``Score.passed`` = every rule passed (False as soon as one graded rule fails, else None when a rule is ungraded);
``Score.details["rules"]`` = ``{id: {grade, passed, weight, raw | verifier, reason?}}`` (grade in [0, 1] or None).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from posttrain.judges import prompts
from posttrain.judges.llm import LLMJudge
from posttrain.judges.local import LocalModelJudge
from posttrain.judges.types import Message, Score
from posttrain.judges.verifier import COMPONENTS, VerifierJudge
from posttrain.verifiers.constraints import validate_constraint

RULE_FIELDS = ("id", "text", "weight", "verifier")
# ``verifier: NAME`` -> the parts of the row's own metadata it checks (VerifierJudge components)
ROW_VERIFIERS: dict[str, tuple[str, ...]] = {"row": COMPONENTS, **{c: (c,) for c in COMPONENTS}}
_ID = re.compile(r"^[A-Za-z0-9_.\-]+$")


class RubricError(ValueError):
    """A rubric file is wrong; ``str()`` is one line naming the file, the rule index and the field."""


class RubricRowError(ValueError):
    """Rows whose metadata a verifier rule cannot check: ``rows`` is ``[(item index, one-line message)]``;
    ``str()`` is the first."""

    def __init__(self, rows: list[tuple[int, str]]):
        self.rows = rows
        super().__init__(rows[0][1])


@dataclass(frozen=True)
class Rule:
    id: str
    text: str
    weight: float = 1.0
    verifier: str | dict[str, Any] | None = None  # a ROW_VERIFIERS name, or {"kind", "args"} (args coerced)


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def _rule(path: str, i: int, raw: Any, seen: dict[str, int]) -> Rule:
    def bad(field: str, message: str) -> RubricError:
        return RubricError(f"{path}: rules[{i}]: field '{field}': {message}")

    if not isinstance(raw, dict):
        raise RubricError(f"{path}: rules[{i}]: expected a mapping with {', '.join(RULE_FIELDS)}, got {_short(raw)}")
    unknown = [k for k in raw if k not in RULE_FIELDS]
    if unknown:
        raise bad(str(unknown[0]), f"unknown field; expected {', '.join(RULE_FIELDS)}")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not _ID.match(rule_id):
        raise bad("id", f"must be a name of letters, digits, _ . - (no spaces), got {_short(rule_id)}")
    if rule_id in seen:
        raise bad("id", f"'{rule_id}' repeats the id of rules[{seen[rule_id]}]")
    seen[rule_id] = i
    text = raw.get("text")
    if not isinstance(text, str) or not text.strip():
        raise bad("text", f"must be a non-empty string, got {_short(text)}")
    weight = raw.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise bad("weight", f"must be a positive number, got {_short(weight)}")
    verifier = raw.get("verifier")
    if isinstance(verifier, dict):
        if "kind" not in verifier or set(verifier) - {"kind", "args"}:
            raise bad("verifier", f"a constraint is {{kind: K, args: {{...}}}}, got {_short(verifier)}")
        try:
            verifier = {"kind": verifier["kind"], "args": validate_constraint(verifier["kind"], verifier.get("args"))}
        except ValueError as e:
            raise bad("verifier", str(e)) from None
    elif verifier is not None and verifier not in ROW_VERIFIERS:
        raise bad("verifier", f"expected one of {', '.join(ROW_VERIFIERS)} or a constraint {{kind: K, args: "
                              f"{{...}}}}, got {_short(verifier)}")
    return Rule(rule_id, text.strip(), float(weight), verifier)


def load_rubric(path: str | Path) -> list[Rule]:
    """The rules of a rubric file, every rule checked; ``RubricError`` (one line) for the first problem."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise RubricError(f"{path}: cannot read the rubric ({str(e).splitlines()[0]})") from None
    if isinstance(data, dict) and "rules" in data:
        unknown = sorted(str(k) for k in data if k != "rules")
        if unknown:
            raise RubricError(f"{path}: unknown key '{unknown[0]}'; expected rules")
        data = data["rules"]
    if not isinstance(data, list):
        raise RubricError(f"{path}: expected a list of rules or a mapping with a 'rules' list")
    if not data:
        raise RubricError(f"{path}: the rubric has no rules")
    seen: dict[str, int] = {}
    return [_rule(str(path), i, raw, seen) for i, raw in enumerate(data)]


def select_rules(rules: list[Rule], only: Sequence[str] | None) -> list[Rule]:
    """The rules named in ``only`` (rubric order), or all of them for None; ``ValueError`` (a line without the
    caller's prefix) for anything else than a non-empty list of known ids."""
    if only is None:
        return list(rules)
    if isinstance(only, str) or not only or not all(isinstance(i, str) for i in only):
        raise ValueError(f"expected a list of rule ids, got {only!r}")
    ids, wanted = [r.id for r in rules], set(only)
    unknown = [i for i in only if i not in ids]
    if unknown:
        raise ValueError(f"no rule '{unknown[0]}' (rules: {', '.join(ids)})")
    return [r for r in rules if r.id in wanted]


class RubricJudge:
    """A scoring judge: the weighted mean of a rubric's per-rule grades (see the module docstring).

    The keys are the judge config's (``{type: rubric, rubric: PATH, base_url, model, ...}``): ``base_url``,
    ``model``, ``api_key_env``, ``temperature``, ``max_tokens``, ``max_tokens_field``, ``timeout``, ``max_retries``,
    ``max_concurrency``, ``cache_path``, ``use_cache``, ``extra_params`` as for the ``llm`` judge; or ``local``: a
    model folder or name graded in-process. Needed only when a rule has no verifier. ``code_sandbox``: where a
    ``tests`` rule runs candidate code (``VerifierJudge``). ``only``: the ids of the rules to grade and combine (one
    rule: pairs and rewards from that aspect alone, e.g. ``only: [accuracy]``); the others are neither run nor
    asked, and the name says which (``rubric:NAME[accuracy]``)."""

    score_range = (0.0, 1.0)

    def __init__(self, rubric: str, *, base_url: str | None = None, model: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", local: str | None = None, temperature: float = 0.0,
                 max_tokens: int = 512, timeout: float = 60.0, max_retries: int = 5, max_concurrency: int = 8,
                 cache_path: str | None = None, use_cache: bool = True, extra_params: dict[str, Any] | None = None,
                 code_sandbox: str | None = None, name: str | None = None, max_tokens_field: str = "max_tokens",
                 only: Sequence[str] | None = None):
        self.path = str(rubric)
        self.rules = load_rubric(rubric)
        self.name = name or f"rubric:{Path(rubric).stem}"
        if only is not None:
            try:
                self.rules = select_rules(self.rules, only)
            except ValueError as e:
                raise ValueError(f"rubric {self.path}: only: {e}") from None
            self.name = name or f"{self.name}[{','.join(r.id for r in self.rules)}]"
        self._verifiers = {
            r.id: VerifierJudge(components=("constraints",) if isinstance(r.verifier, dict)
                                else ROW_VERIFIERS[r.verifier], code_sandbox=code_sandbox)
            for r in self.rules if r.verifier is not None}
        asked = [(i, r) for i, r in enumerate(self.rules) if r.verifier is None]
        if (base_url is None) != (model is None):
            raise ValueError(f"rubric {self.path}: base_url and model go together (an OpenAI-compatible endpoint)")
        if base_url is not None and local is not None:
            raise ValueError(f"rubric {self.path}: give base_url + model (an endpoint) or local (a model), not both")
        if asked and base_url is None and local is None:
            i, r = asked[0]
            raise ValueError(f"rubric {self.path}: rules[{i}] ('{r.id}') has no verifier, so an LLM grades it: "
                             "give base_url and model, or local")
        self._llm: Any = None
        if base_url is not None:
            self._llm = LLMJudge(base_url, model, api_key_env=api_key_env, temperature=temperature,
                                 max_tokens=max_tokens, timeout=timeout, max_retries=max_retries,
                                 max_concurrency=max_concurrency, cache_path=cache_path, use_cache=use_cache,
                                 extra_params=extra_params, name=f"{self.name}/llm",
                                 max_tokens_field=max_tokens_field)
        elif local is not None:
            self._llm = LocalModelJudge(local, max_new_tokens=max_tokens, name=f"{self.name}/local")
        self._graded = self._unparseable = 0

    def _verify(self, rule: Rule, prompt: list[Message], response: str, metadata: dict[str, Any]) -> dict[str, Any]:
        """One verifier rule on one response: its grade record (``ValueError`` when the row cannot be checked)."""
        shown = {"constraints": [rule.verifier]} if isinstance(rule.verifier, dict) else metadata
        s = self._verifiers[rule.id].score(prompt, response, shown)
        return {"grade": float(s.value), "passed": bool(s.passed), "weight": rule.weight, "verifier": s.details}

    def score(self, prompt: list[Message], response: str, metadata: dict[str, Any]) -> Score:
        return self.score_many([(prompt, response, metadata)])[0]

    def score_many(self, items: Sequence[tuple[list[Message], str, dict[str, Any]]], *,
                   on_row_error: str = "raise") -> list[Score]:
        """Scores in order. Verifier rules run first, over every item; a row they cannot check raises
        ``RubricRowError`` (every such row) before any LLM request, or with ``on_row_error="skip"`` gets a NaN
        score with the reason and is not sent to the LLM. Then one LLM request per (remaining item, LLM rule)."""
        if on_row_error not in ("raise", "skip"):
            raise ValueError(f"on_row_error must be raise or skip, got {on_row_error!r}")
        grades: list[dict[str, dict[str, Any]] | None] = []
        errors: list[tuple[int, str]] = []
        for index, (prompt, response, metadata) in enumerate(items):
            graded: dict[str, dict[str, Any]] = {}
            for i, rule in enumerate(self.rules):
                if rule.verifier is None:
                    continue
                try:
                    graded[rule.id] = self._verify(rule, prompt, response, dict(metadata or {}))
                except ValueError as e:
                    errors.append((index, f"rubric {self.path}: rules[{i}] ('{rule.id}'): {str(e).splitlines()[0]}"))
                    graded = None
                    break
            grades.append(graded)
        if errors and on_row_error == "raise":
            raise RubricRowError(errors)
        asked = [r for r in self.rules if r.verifier is None]
        requests, where = [], []
        for index, (prompt, response, _) in enumerate(items):
            if grades[index] is not None:
                for rule in asked:
                    requests.append(prompts.rule_messages(prompt, response, rule.text))
                    where.append((index, rule))
        answers = self._llm.complete_many(requests) if requests else []
        for (index, rule), raw in zip(where, answers, strict=True):
            grade = prompts.parse_grade(raw)
            record: dict[str, Any] = {"grade": None if grade is None else grade / prompts.GRADE_TOP,
                                      "passed": None if grade is None else grade == prompts.GRADE_TOP,
                                      "weight": rule.weight, "raw": raw}
            if grade is None:
                record["reason"] = f"unparseable answer: no 'Grade: N' in 0-{prompts.GRADE_TOP}"
                self._unparseable += 1
            grades[index][rule.id] = record
        self._graded += len(answers)
        skipped = dict(errors)
        return [self._combine(g) if g is not None else Score(math.nan, None, {"reason": skipped[i]})
                for i, g in enumerate(grades)]

    def _combine(self, graded: dict[str, dict[str, Any]]) -> Score:
        rules = {r.id: graded[r.id] for r in self.rules}  # rubric order
        done = [g for g in rules.values() if g["grade"] is not None]
        total = sum(g["weight"] for g in done)
        value = sum(g["weight"] * g["grade"] for g in done) / total if done else math.nan
        passes = [g["passed"] for g in rules.values()]
        passed = False if False in passes else None if None in passes else True
        details: dict[str, Any] = {"rules": rules}
        if not done:
            first = next(iter(rules.values()))
            details.update(reason=f"no rule graded ({first.get('reason')})", raw=first.get("raw"))
        return Score(value, passed, details)

    def stats(self) -> dict[str, int]:
        """LLM requests, cache hits, retries and tokens (an endpoint), rule answers asked and unparseable."""
        base = dict(self._llm.stats()) if hasattr(self._llm, "stats") else {"requests": 0, "cache_hits": 0,
                                                                             "retries": 0}
        return base | {"rule_answers": self._graded, "unparseable": self._unparseable}


def rule_statistics(rules: Sequence[Rule], scores: Sequence[Score]) -> dict[str, dict[str, Any]]:
    """Per rule, over the scores that graded it (``details["rules"]``; skipped rows have none): ``asked``,
    ``passed``, ``unparseable``, ``pass_rate`` (passed / graded; None when none graded) and ``mean_grade``."""
    out: dict[str, dict[str, Any]] = {}
    for rule in rules:
        got = [s.details["rules"][rule.id] for s in scores if rule.id in (s.details or {}).get("rules", {})]
        graded = [g for g in got if g["grade"] is not None]
        out[rule.id] = {"asked": len(got), "passed": sum(bool(g["passed"]) for g in graded),
                        "unparseable": len(got) - len(graded),
                        "pass_rate": sum(bool(g["passed"]) for g in graded) / len(graded) if graded else None,
                        "mean_grade": sum(g["grade"] for g in graded) / len(graded) if graded else None}
    return out
