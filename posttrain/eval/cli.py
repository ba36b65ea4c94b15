"""``posttrain eval`` and ``posttrain gate`` (command functions, mounted by ``posttrain/cli.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from posttrain.errors import fail

def _default_suites() -> list[str]:
    """Every builtin suite but the reserved one (``constraints_reserve``: asked for by name, never by default)."""
    from posttrain.eval.suites import BUILTIN, RESERVE

    return [name for name, suite in BUILTIN.items() if suite.group != RESERVE]


def eval_command(
    model: str = typer.Option(..., "--model", help="builtin name, HF folder, hub id, a trained run's model folder, "
                              "or openai:URL:MODEL (an OpenAI-compatible endpoint; also for --baseline and --base)"),
    output: Path = typer.Option(..., "--output", "-o", help="output folder: responses.jsonl, metrics.json, "
                                "manifest.json"),
    suite: list[str] = typer.Option(None, "--suite", help="repeatable: a builtin suite (constraints, capability, "
                                    "refusal, constraints_ood, ifeval_sample, capability_freeform, "
                                    "constraints_ood2, constraints_reserve) or a suite file (our rows or IFEval "
                                    "format), optionally NAME@N for its max new tokens; default: every builtin suite "
                                    "but constraints_reserve (reserved: asked for by name)"),
    baseline: str = typer.Option(None, "--baseline", help="a model to compare against (metrics under baseline/)"),
    base: str = typer.Option(None, "--base", help="the model the recipe started from (metrics under base/; "
                             "length, degeneration and formatting also relative to it)"),
    trained_on: list[str] = typer.Option(None, "--trained-on", help="repeatable: a training file (prompts, pairs, "
                                         "demos); its constraint kinds are marked trained in the per-kind metrics"),
    trained_kinds: str = typer.Option(None, "--trained-kinds", help="comma-separated constraint kinds trained on "
                                      "(with or instead of --trained-on)"),
    ifeval_unsupported: str = typer.Option("error", "--ifeval-unsupported", help="error | skip: IFEval instruction "
                                           "ids with no verifier"),
    adapter: str = typer.Option(None, "--adapter", help="an extra adapter folder to merge on top of --model"),
    judge: str = typer.Option(None, "--judge", help="a judge for win rate vs --baseline: llm:URL:MODEL | "
                              "local:MODEL (pairwise, both orders) | verifier | rm:MODEL (higher score wins)"),
    rubric: Path = typer.Option(None, "--rubric", help="a rubric file (docs/RL.md): rubric/* metrics, per-rule "
                                "pass rates, for every model"),
    rubric_judge: str = typer.Option(None, "--rubric-judge", help="who grades the rubric's rules without a "
                                     "verifier: llm:URL:MODEL | local:MODEL"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="budget of suites without their own"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed"),
    backend: str = typer.Option("hf", "--backend", help="hf | vllm"),
    dtype: str = typer.Option("auto", "--dtype", help="hf backend: weights dtype of every local model, auto | "
                              "float32 | bfloat16 | float16 (auto: bfloat16 on a GPU that has it, else float32)"),
    answer_cache: Path = typer.Option(None, "--answer-cache", help="a SQLite file: answers of the same weights, "
                                      "prompts, settings and machine are reused from it, new ones kept in it "
                                      "(a pipeline's eval stages share <run_dir>/eval_answers.sqlite)"),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="openai:URL:MODEL models: the "
                                    "environment variable holding the API key (sent as a Bearer token when set)"),
) -> None:
    """Greedy responses to eval suites, scored (pass rates, accuracy, refusal, length, win rate)."""
    from posttrain.data.schema import DataError, DataErrors
    from posttrain.data.writers import check_output_path
    from posttrain.eval.run import run_eval
    from posttrain.eval.significance import PAIRED_FIELDS, paired_heads
    from posttrain.generation.types import BackendError
    from posttrain.judges.run import JudgeConfigError, rubric_judge_of, win_rate_judge
    from posttrain.models.resolve import ModelError

    try:
        check_output_path(output, "--output")  # before any model loads (an OutputPathError is a ValueError)
        pairwise = win_rate_judge(judge) if judge is not None else None
        if rubric_judge is not None and rubric is None:
            raise JudgeConfigError("--rubric-judge grades the rules of a --rubric file; give --rubric")
        rubric_judge_ = rubric_judge_of(rubric, rubric_judge) if rubric is not None else None
        kinds = [k.strip() for k in trained_kinds.split(",") if k.strip()] if trained_kinds is not None else None
        metrics = run_eval(model, suite or _default_suites(), baseline=baseline, base=base,
                           max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, judge=pairwise,
                           output_dir=output, adapter=adapter, backend=backend, trained_on=trained_on or None,
                           trained_kinds=kinds, ifeval_unsupported=ifeval_unsupported, rubric=rubric_judge_,
                           api_key_env=api_key_env, dtype=dtype, answer_cache=answer_cache)
    except (DataError, DataErrors, ModelError, BackendError, JudgeConfigError, ValueError) as e:
        fail(e)
    # Per-kind and per-suite keys are many; the terminal shows the headline ones, metrics.json has all. A paired
    # difference shows as one line: delta [95% interval] (rows gained, lost).
    heads = paired_heads(metrics)
    shown = [h for h in heads if not h.startswith("suite/")]
    detail = {k for k in metrics if "/kind/" in k or "/rule/" in k
              or k.startswith(("suite/", "baseline/suite/", "base/suite/"))}
    detail |= {f"{h}/{f}" for h in heads for f in PAIRED_FIELDS} | set(heads)
    for key in sorted(set(metrics) - detail):
        typer.echo(f"{key}: {metrics[key]:.4g}")
    for h in shown:
        typer.echo(f"{h}: {metrics[h]:+.4g} [{metrics[h + '/ci_low']:+.4g}, {metrics[h + '/ci_high']:+.4g}]"
                   f" ({metrics[h + '/gained']:.0f} rows gained, {metrics[h + '/lost']:.0f} lost)")
    if left := len(detail - set(shown)):
        typer.echo(f"(and {left} per-kind, per-suite and interval metrics in {output / 'metrics.json'})")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def gate_command(
    metrics_json: Path = typer.Argument(..., help="metrics.json of `posttrain eval` (its folder's manifest.json "
                                        "gets the verdicts)"),
    gates: Path = typer.Option(..., "--gates", help="YAML list of {metric, min | max | min_delta | max_drop, "
                        "[against: base], [significant: true]}"),
) -> None:
    """Check eval metrics against gates; exit 0 when all pass, 1 when any fails, 2 on a config error."""
    from rich.console import Console
    from rich.table import Table

    from posttrain.eval.gates import GateConfigError, evaluate_gates, load_gates, record_verdicts

    try:
        gate_list = load_gates(gates)
        try:
            metrics = json.loads(Path(metrics_json).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise GateConfigError(f"{metrics_json}: cannot read metrics ({e.__class__.__name__}: {e})") from None
        if not isinstance(metrics, dict):
            raise GateConfigError(f"{metrics_json}: expected a JSON object of metrics")
    except GateConfigError as e:
        fail(e)
    results = evaluate_gates(metrics, gate_list)
    table = Table(title=f"gates: {gates}")
    for col in ("metric", "value", "reference", "threshold", "verdict"):
        table.add_column(col)
    for r in results:
        verdict = "[green]PASS[/green]" if r.passed else f"[red]FAIL[/red] ({r.reason})"
        vs = f" vs {r.against}" if r.kind in ("min_delta", "max_drop") else ""
        vs += " (95% low)" if r.significant else ""
        table.add_row(r.metric, _fmt(r.value), _fmt(r.baseline_value), f"{r.kind} {r.threshold:g}{vs}", verdict)
    Console().print(table)
    warning = record_verdicts(metrics_json, str(gates), results)
    if warning and (Path(metrics_json).parent / "manifest.json").exists():
        typer.echo(f"warning: {warning}", err=True)
    failed = sum(not r.passed for r in results)
    typer.echo(f"{len(results) - failed}/{len(results)} gates passed")
    if failed:
        raise typer.Exit(1)
