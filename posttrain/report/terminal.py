"""``print_summary(run_dir)``: the compact terminal view of a run (stage, status, time, main metric, gates)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from posttrain.eval.significance import paired_heads
from posttrain.report.html import paired_comparisons, paired_verdict
from posttrain.report.load import gate_results, load_run, main_metric
from posttrain.report.svg import finite, fmt


def gate_text(stage: dict) -> str:
    """``pass 2/2`` or ``FAIL 1/2: metric, ...`` for a gate stage; ``""`` for other stages."""
    results = gate_results(stage)
    if not results:
        return "no verdict" if stage["command"] == "gate" else ""
    failed = [str(r.get("metric", "?")) for r in results if r.get("passed") is not True]
    if not failed:
        return f"pass {len(results)}/{len(results)}"
    return f"FAIL {len(failed)}/{len(results)}: {', '.join(failed)}"


def print_summary(run_dir: str | Path, console=None) -> None:
    run = load_run(run_dir)
    manifest = run["manifest"] or {}
    console = console or Console()
    table = Table(title=escape(f"run {run['run_dir']}: {manifest.get('status', 'unknown')}"))
    for column in ("stage", "status", "time", "main metric", "gates"):
        table.add_column(column, justify="right" if column == "time" else "left")
    for stage in run["stages"]:
        main = main_metric(stage)
        wall = finite(stage.get("wall_time_s"))
        gates = gate_text(stage)
        style = "green" if gates.startswith("pass") else "red" if gates else ""
        table.add_row(escape(stage["name"]), escape(str(stage.get("status", "?"))),
                      f"{wall:.1f}s" if wall is not None else "",
                      escape(f"{main[0]}={fmt(main[1])}") if main else "",
                      f"[{style}]{escape(gates)}[/{style}]" if style else "")
    if not run["stages"]:
        table.add_row("(no stages found)", "", "", "", "")
    console.print(table)


def print_paired(a: dict, b: dict) -> None:
    """One line per overall and per-group pass rate of each eval stage both loaded runs (``load_run``) have: B - A,
    its 95% paired interval, the rows B gained and lost, and the verdict (``html.paired_comparisons``)."""
    for stage, m in paired_comparisons(a, b):
        for head in paired_heads(m):
            if not head.startswith("suite/"):  # per-suite lines are in the HTML
                typer.echo(f"{stage} {head.rsplit('/', 1)[0]}: B - A {m[head]:+.3f} [{m[head + '/ci_low']:+.3f}, "
                           f"{m[head + '/ci_high']:+.3f}], B gained {m[head + '/gained']:.0f} rows, lost "
                           f"{m[head + '/lost']:.0f}: {paired_verdict(m, head)}")
