"""``posttrain judge``: judge a candidates file and write preference pairs.

Mounted by ``posttrain/cli.py`` as ``app.add_typer(judge_app, name="judge")``; the command is the app's callback,
so it runs as ``posttrain judge --candidates ... -o ...`` with no sub-command name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from posttrain.errors import fail

from posttrain.judges.specs import JudgeConfigError, load_judges_file, parse_judge_spec  # noqa: F401  (re-exported for callers of the CLI module)

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
                                          "reward_model:MODEL | rubric:FILE (repeatable)"),
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
    from posttrain.judges.run import JudgeConfigError, judge_candidates
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


def critique_command(
    inputs: Path = typer.Option(..., "--input", "-i", help="candidates JSONL (`posttrain generate`) or SFT rows "
                                "whose conversation ends with the reply to critique"),
    output: Path = typer.Option(..., "--output", "-o", help="output folder: sft.jsonl, pairs.jsonl, "
                                "critiques.jsonl, summary.json"),
    critic: str = typer.Option(None, "--critic", help="llm:URL:MODEL (any OpenAI-compatible endpoint) or "
                               "local:MODEL (the model itself can be its own critic)"),
    critic_config: Path = typer.Option(None, "--critic-config", help="YAML: one critic config, the LLM / local "
                                       "judge's keys (type, base_url, model, api_key_env, max_tokens, ...)"),
    constitution: Path = typer.Option(None, "--constitution", help="YAML {principles: [{id, critique, "
                                      "revision}]} (default: the shipped one)"),
    passes: int = typer.Option(1, "--passes", min=1, help="critique-revise passes per response"),
    seed: int = typer.Option(0, "--seed", help="seeds the principle drawn per response and pass"),
    limit: int = typer.Option(None, "--limit", min=1, help="only the first N rows"),
    verify: bool = typer.Option(False, "--verify", help="keep a revision only if the verifier scores it at least as "
                                "high as the original (rows with constraints, answers or tests)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Constitutional critique-and-revise: SFT rows (prompt -> revision) and pairs (revision over original)."""
    import yaml

    from posttrain.data.schema import DataError, DataErrors
    from posttrain.judges.critique import CritiqueError, run_critique
    from posttrain.judges.llm import JudgeError
    from posttrain.models.resolve import ModelError

    try:
        if (critic is None) == (critic_config is None):
            raise CritiqueError("give one of --critic (llm:URL:MODEL or local:MODEL) or --critic-config FILE")
        if critic_config is not None:
            try:
                spec = yaml.safe_load(critic_config.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as e:
                raise CritiqueError(f"{critic_config}: cannot read it ({str(e).splitlines()[0]})") from None
        else:
            spec = parse_judge_spec(critic)
        summary = run_critique(inputs, output, spec, constitution=constitution, passes=passes, seed=seed,
                               limit=limit, verify=verify, progress=progress)
    except (CritiqueError, JudgeError, DataError, DataErrors, ModelError, JudgeConfigError) as e:
        fail(e)
    stats = (summary["critic"].get("stats") or {})
    typer.echo(f"{summary['rows']} responses, {summary['passes']} pass(es): {summary['revised']} revised, "
               f"{summary['unchanged']} unchanged, {summary['empty']} empty, {summary['echo']} echoing the critique"
               + (f", {summary['rejected']} rejected by the verifier" if verify else "")
               + f" -> {summary['sft_rows']} SFT rows, "
               f"{summary['pairs']} pairs in {output} ({summary['wall_time_s']:.1f} s"
               + (f"; {stats['requests']} requests, {stats['cache_hits']} cache hits" if stats else "") + ")")
