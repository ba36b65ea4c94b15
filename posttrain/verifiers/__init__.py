"""Programmatic verifiers (no model): instruction constraints, math final answers, exact/regex match, and
Python code run against unit tests, and constraint repair. Pure functions over text (standard library only, no
model), so every layer from ``data`` up may use them; the judge that applies whichever a prompt's metadata asks
for is ``posttrain/judges/verifier.py`` (``VerifierJudge``)."""

from posttrain.verifiers.code import CodeResult, extract_code, run_python_tests
from posttrain.verifiers.constraints import (CONSTRAINTS, ConstraintResult, ConstraintSpec, check_constraint,
                                             check_constraints, constraints_from_metadata, validate_constraint)
from posttrain.verifiers.match import exact_match, regex_match
from posttrain.verifiers.math import answers_equal, extract_final_answer, math_answer_equal, parse_number

__all__ = [
    "CONSTRAINTS", "CodeResult", "ConstraintResult", "ConstraintSpec", "answers_equal",
    "check_constraint", "check_constraints", "constraints_from_metadata", "exact_match", "extract_code",
    "extract_final_answer", "math_answer_equal", "parse_number", "regex_match", "run_python_tests",
    "validate_constraint",
]
