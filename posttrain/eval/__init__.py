"""Eval layer: suites as data (``suites.py``), scoring (``scoring.py``), win rate and length-controlled win rate
(``winrate.py``), gates (``gates.py``), ``run_eval`` (``run.py``), commands (``cli.py``)."""

from posttrain.eval.gates import Gate, GateConfigError, GateResult, evaluate_gates, load_gates, parse_gates
from posttrain.eval.run import run_eval
from posttrain.eval.scoring import REFUSAL_PHRASES, is_refusal, length_stats, score_row, score_suite
from posttrain.eval.suites import BUILTIN_SUITES, EvalRow, load_suite
from posttrain.eval.winrate import length_controlled_win_rate, wilson_interval, win_indicators, win_rate

__all__ = [
    "BUILTIN_SUITES", "EvalRow", "Gate", "GateConfigError", "GateResult", "REFUSAL_PHRASES", "evaluate_gates",
    "is_refusal", "length_controlled_win_rate", "length_stats", "load_gates", "load_suite", "parse_gates",
    "run_eval", "score_row", "score_suite", "wilson_interval", "win_indicators", "win_rate",
]
