"""Programmatic verifiers (no model): instruction constraints, math final answers, exact/regex match, and
Python code run against unit tests; ``VerifierJudge`` applies whichever a prompt's metadata asks for."""

from posttrain.judges.verifiers.code import CodeResult, extract_code, run_python_tests
from posttrain.judges.verifiers.constraints import (CONSTRAINTS, ConstraintResult, ConstraintSpec, check_constraint,
                                                    check_constraints, constraints_from_metadata, validate_constraint)
from posttrain.judges.verifiers.judge import VerifierJudge
from posttrain.judges.verifiers.match import exact_match, regex_match
from posttrain.judges.verifiers.math import answers_equal, extract_final_answer, math_answer_equal, parse_number

__all__ = [
    "CONSTRAINTS", "CodeResult", "ConstraintResult", "ConstraintSpec", "VerifierJudge", "answers_equal",
    "check_constraint", "check_constraints", "constraints_from_metadata", "exact_match", "extract_code",
    "extract_final_answer", "math_answer_equal", "parse_number", "regex_match", "run_python_tests",
    "validate_constraint",
]
