"""``posttrain judge``: judge a candidates file and write preference pairs.

Mounted by ``posttrain/cli.py`` as ``app.add_typer(judge_app, name="judge")``; the command is the app's callback,
so it runs as ``posttrain judge --candidates ... -o ...`` with no sub-command name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from posttrain.errors import fail

from posttrain.judges.specs import load_judges_file, parse_judge_spec  # noqa: F401  (re-exported for callers of the CLI module)

judge_app = typer.Typer(add_completion=False, help="Judge candidates and build preference pairs.")

def print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    p = summary["pairs"]
    table = Table(title=f"judge -> {summary['output_dir']}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for key in ("strategy", "prompts_in", "candidates_in", "repaired", "pairs_considered", "pairs_kept"):
        if key in p:
            table.add_row(key.replace("_", " "), str(p[key]))
    for reason, n in p["dropped"].items():
        table.add_row(f"dropped: {reason}", str(n))
    length = p["length"]

    def fmt(x: Any) -> str:
        return "-" if x is None else f"{x:.3g}" if isinstance(x, float) else str(x)

    table.add_row(f"mean length chosen / rejected ({length['unit']})",
                  f"{fmt(length['chosen_mean'])} / {fmt(length['rejected_mean'])}")
    table.add_row("fraction chosen longer (before balancing)",
                  f"{fmt(length['frac_chosen_longer'])} ({fmt(length['frac_chosen_longer_before_balance'])})")
    scores = summary.get("scores") or {}
    if scores.get("mean_score") is not None:
        table.add_row("mean candidate score", fmt(scores["mean_score"]))
    if "pass_rate" in scores:
        table.add_row("candidates passing", fmt(scores["pass_rate"]))
        table.add_row("prompts with a passing candidate", fmt(scores["prompts_with_a_pass"]))
    for judge in summary["judges"]:
        stats = judge.get("stats")
        if stats:
            table.add_row(f"{judge['name']}: requests / cache hits / retries",
                          f"{stats['requests']} / {stats['cache_hits']} / {stats['retries']}")
    agreement = summary.get("agreement")
    if agreement:
        table.add_row(f"judges unanimous ({agreement['over']})", fmt(agreement["unanimous_fraction"]))
        table.add_row("Fleiss kappa", fmt(agreement["fleiss_kappa"]))
    Console(stderr=True).print(table)


@judge_app.callback(invoke_without_command=True)
def judge(
    candidates: Path = typer.Option(..., "--candidates", help="candidates JSONL (the output of `posttrain generate`)"),
    output: Path = typer.Option(..., "--output", "-o", help="output folder for pairs.jsonl, scores.jsonl, summary"),
    judge_specs: list[str] = typer.Option(None, "--judge", help="verifier | llm:URL:MODEL | local:MODEL | "
                                          "reward_model:MODEL (repeatable)"),
    config: Path = typer.Option(None, "--config", help="YAML: a list of judges, or {judges: [...], pairs: {...}}"),
    strategy: str = typer.Option(None, help="best_vs_worst | all_above_margin | repair | round_robin | all_pairs "
                                 "(default: best_vs_worst)"),
    repair: int = typer.Option(None, help="per prompt, pair up to N candidates that fail their constraints with a "
                               "copy edited to obey them (verifiers/repair.py; default: 0, or 1 with --strategy "
                               "repair)"),
    min_margin: float = typer.Option(None, help="drop pairs whose score margin is below this (default: 0)"),
    max_length_ratio: float = typer.Option(None, help="drop pairs whose longer/shorter length ratio exceeds this "
                                           "(default: no limit)"),
    length_balance: bool = typer.Option(None, "--length-balance/--no-length-balance",
                                        help="drop chosen-longer pairs until at most ~half have chosen longer "
                                        "(default: off)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Score (or compare) candidates with the configured judges and write preference pairs."""
    from posttrain.data.schema import DataError, DataErrors
    from posttrain.judges.judge_stage import JudgeConfigError, judge_candidates
    from posttrain.judges.llm import JudgeError
    from posttrain.models.resolve import ModelError

    try:
        judges, pair_config = load_judges_file(config) if config else ([], {})
        judges = judges + [parse_judge_spec(s) for s in judge_specs or []]
        if not judges:
            raise JudgeConfigError("no judge: give --judge (e.g. --judge verifier) or --config judges.yaml")
        overrides = {"strategy": strategy, "min_margin": min_margin, "max_length_ratio": max_length_ratio,
                     "length_balance": length_balance, "repair": repair}
        pair_config = {**pair_config, **{k: v for k, v in overrides.items() if v is not None}}
        summary = judge_candidates(candidates, output, judges, pair_config, progress=progress)
    except (JudgeConfigError, JudgeError, DataError, DataErrors, ModelError) as e:
        fail(e)
    print_summary(summary)
