"""``posttrain report RUN_DIR``: write ``RUN_DIR/report.html`` and print the run's summary. The main CLI mounts
``report_command``; ``python -m posttrain.report.cli RUN_DIR`` runs it alone."""

from __future__ import annotations

from pathlib import Path

import typer

from posttrain.errors import fail

from posttrain.report.html import write_comparison, write_report
from posttrain.report.load import load_run
from posttrain.report.terminal import print_paired, print_summary

__all__ = ["report_command", "write_report", "app"]


def report_command(run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="a pipeline's run_dir"),
                   other: Path = typer.Argument(None, metavar="[OTHER_RUN_DIR]", help="a second run: write a "
                                                "comparison (metrics with deltas, paired intervals of the pass "
                                                "rates, curves overlaid) instead"),
                   output: Path = typer.Option(None, "-o", "--output", help="the comparison's file (default: "
                                               "RUN_DIR/compare.html)")) -> None:
    """Write a self-contained HTML report (training curves, pairs, eval, lengths, gates) into RUN_DIR, or with
    two runs a comparison of them."""
    for folder in (run_dir, other):
        if folder is not None and not folder.is_dir():
            fail(f"{folder}: no such folder (give the run_dir of `posttrain run`)")
    if other is not None:
        a, b = load_run(run_dir), load_run(other)  # each run's files read once, for the page and the terminal
        path = write_comparison(a, b, output or run_dir / "compare.html")
        print_paired(a, b)
        typer.echo(f"comparison: {path}")
        return
    path = write_report(run_dir)
    print_summary(run_dir)
    typer.echo(f"report: {path}")


app = typer.Typer(add_completion=False)
app.command("report")(report_command)

if __name__ == "__main__":
    app()
