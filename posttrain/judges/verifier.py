"""``VerifierJudge``: a ``ScoringJudge`` that scores a response with the programmatic verifiers its prompt's
metadata asks for (docs/CANDIDATES.md): constraints, a reference ``answer``, and/or ``tests``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from posttrain.judges.types import Message, Score
from posttrain.verifiers.code import extract_code, run_python_tests
from posttrain.verifiers.constraints import check_constraints, constraints_from_metadata
from posttrain.verifiers.match import exact_match, regex_match
from posttrain.verifiers.math import extract_final_answer, math_answer_equal
from posttrain.verifiers.sandbox import SandboxError, resolve
from posttrain.verifiers.style import style_faults

MATCH_KINDS = ("math", "exact", "regex")
_MATCH_OPTIONS = {"math": (), "exact": ("ignore_case", "normalize_whitespace", "strip_punctuation"),
                  "regex": ("full", "ignore_case")}


def _answer_component(response: str, metadata: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """``metadata["match"]`` (default "math") picks the comparison: "math" compares the extracted final answer
    with ``answer``; "exact" compares the whole response; "regex" treats ``answer`` as a pattern.
    ``metadata["match_options"]`` passes keyword options to the exact/regex matcher."""
    reference, kind = metadata["answer"], metadata.get("match") or "math"
    if kind not in MATCH_KINDS:
        raise ValueError(f"metadata 'match' must be one of {', '.join(MATCH_KINDS)}, got {kind!r}")
    if not isinstance(reference, (str, int, float)) or isinstance(reference, bool):
        raise ValueError(f"metadata 'answer' must be a string or number, got {type(reference).__name__}")
    reference = str(reference)
    options = metadata.get("match_options") or {}
    if not isinstance(options, dict) or set(options) - set(_MATCH_OPTIONS[kind]):
        takes = ", ".join(_MATCH_OPTIONS[kind]) or "none"
        raise ValueError(f"metadata 'match_options' for match {kind!r} takes only: {takes}; got {options!r}")
    if kind == "math":
        passed = math_answer_equal(response, reference)
        detail = {"extracted": extract_final_answer(response)}
    elif kind == "exact":
        passed, detail = exact_match(response, reference, **options), {}
    else:
        passed, detail = regex_match(response, reference, **options), {}
    return float(passed), {"match": kind, "reference": reference, "passed": passed, **detail}


COMPONENTS = ("constraints", "answer", "tests")
# metadata key -> the component it belongs to (dropped when that component is not checked)
_SKIPPED_KEYS = {"constraints": "constraints", "constraint": "constraints", "constraint_args": "constraints",
                 "answer": "answer", "match": "answer", "match_options": "answer", "tests": "tests"}


@dataclass
class VerifierJudge:
    """Scores one response against everything verifiable in its metadata. Each component (constraints, answer,
    tests) gives a value in [0, 1]: the fraction of constraints passed, or 1/0 for the answer and the tests.
    ``Score.value`` is their mean, ``Score.passed`` whether every component passed, ``Score.details`` holds
    each component's result under its metadata key. Bad or absent specs raise ``ValueError`` (one line), which
    callers report as a row-level error rather than a score.

    ``style_penalty`` > 0 also checks the response for style faults nobody asked for
    (``verifiers/style.py::style_faults``: degenerate repetition, a whole answer in double quotes, an all-capitals
    answer): a response with any fault has ``style_penalty`` subtracted from its value (so the value lies in
    [-style_penalty, 1]) and does not pass; ``details["style"]`` lists the faults. Two responses that fail the
    same constraints are then no longer a tie when one of them loops or quotes itself."""

    name: str = "verifier"
    code_time_limit_s: float = 5.0
    code_memory_limit_mb: int = 512
    # where candidate code runs: auto | bwrap | unsafe; None: $POSTTRAIN_CODE_SANDBOX or auto (verifiers/sandbox.py)
    code_sandbox: str | None = None
    # Which components to check when the metadata has them: "constraints", "answer", "tests" (default: all). A
    # pool whose rows carry both a format constraint and an answer can be judged on the format alone.
    components: tuple[str, ...] | list[str] = COMPONENTS
    style_penalty: float = 0.0

    def __post_init__(self):
        if isinstance(self.style_penalty, bool) or not isinstance(self.style_penalty, (int, float)) \
                or not 0 <= self.style_penalty <= 1:
            raise ValueError(f"verifier style_penalty must be a number in [0, 1]; got {self.style_penalty!r}")
        bad = [c for c in self.components if c not in COMPONENTS]
        if bad or not self.components:
            raise ValueError(f"verifier components must be a non-empty subset of {', '.join(COMPONENTS)}; "
                             f"got {list(self.components)!r}")
        self.components = tuple(self.components)
        if self.code_sandbox is not None and "tests" in self.components:
            try:  # a bad or unavailable sandbox is one line now, not a failure at the first code row
                resolve(self.code_sandbox)
            except SandboxError as e:
                raise ValueError(str(e)) from None

    def score(self, prompt: list[Message], response: str, metadata: dict[str, Any]) -> Score:
        values: list[float] = []
        passes: list[bool] = []
        details: dict[str, Any] = {}
        asked = metadata  # what the row asks for, whatever is checked: a quotes constraint makes quotes requested
        metadata = {k: v for k, v in metadata.items() if k not in _SKIPPED_KEYS or _SKIPPED_KEYS[k] in self.components}
        constraints = constraints_from_metadata(metadata)  # validated first: a bad spec fails before any work
        if constraints:
            results = check_constraints(response, constraints)
            values.append(sum(r.passed for r in results) / len(results))
            passes.append(all(r.passed for r in results))
            details["constraints"] = [asdict(r) for r in results]
        if metadata.get("answer") is not None:
            value, detail = _answer_component(response, metadata)
            values.append(value)
            passes.append(detail["passed"])
            details["answer"] = detail
        if metadata.get("tests") is not None:
            if not isinstance(metadata["tests"], str) or not metadata["tests"].strip():
                raise ValueError("metadata 'tests' must be non-empty Python test code")
            result = run_python_tests(extract_code(response), metadata["tests"], time_limit_s=self.code_time_limit_s,
                                      memory_limit_mb=self.code_memory_limit_mb, sandbox=self.code_sandbox)
            values.append(float(result.passed))
            passes.append(result.passed)
            details["tests"] = asdict(result)
        if not values:
            keys = ", ".join(sorted(metadata)) or "none"
            raise ValueError("metadata has nothing to verify: expected 'constraints', 'constraint' (+ "
                             f"'constraint_args'), 'answer' or 'tests'; got keys: {keys}")
        value = sum(values) / len(values)
        if self.style_penalty > 0:
            details["style"] = faults = style_faults(response, asked)
            if faults:
                value -= self.style_penalty
                passes.append(False)
        return Score(value=value, passed=all(passes), details=details)
