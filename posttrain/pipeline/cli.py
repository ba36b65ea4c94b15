"""``posttrain run PIPELINE.yaml`` and ``posttrain status RUN_DIR``. The main CLI mounts ``run_command`` and
``status_command``; ``python -m posttrain.pipeline.cli`` runs them alone."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import typer

from posttrain.errors import fail

from posttrain.pipeline.spec import PipelineError


def run_command(
    pipeline_yaml: Path = typer.Argument(..., metavar="PIPELINE_YAML", help="pipeline file (run_dir and stages)"),
    overrides: list[str] = typer.Argument(None, metavar="[STAGE.SECTION.KEY=VALUE]...",
                                          help="dotted overrides of a stage's config, e.g. sft.optim.lr=1e-4"),
    force: list[str] = typer.Option([], "--force", metavar="STAGE",
                                    help="recompute this stage and its dependents (repeatable)"),
) -> None:
    """Run every stage of a pipeline in dependency order, skipping stages whose cached output is complete.

    Exit codes: 0 every stage done; 1 a release gate failed (the model was measured, not exported); 2 bad pipeline
    file, config or data (one line); 3 a stage crashed (traceback above the last line)."""
    from posttrain.config import ConfigError
    from posttrain.data.schema import DataError, DataErrors
    from posttrain.pipeline.eval_stages import GateFailed
    from posttrain.pipeline.registry import STAGES
    from posttrain.pipeline.runner import run_pipeline
    from posttrain.pipeline.load import load_pipeline

    try:
        spec = load_pipeline(pipeline_yaml, overrides or (), commands=STAGES)
        manifest = run_pipeline(spec, force, echo=lambda line: typer.echo(f"posttrain run: {line}", err=True))
    except (PipelineError, ConfigError, DataError, DataErrors) as e:
        fail(e, first_line=True)
        return
    except GateFailed as e:  # a failed gate is a verdict, not a crash: exit 1, one line
        typer.echo(f"posttrain run: gate failed: {e}", err=True)
        raise typer.Exit(1) from None
    except Exception as e:  # a crash keeps its traceback and its own exit code, so no caller reads it as a verdict
        traceback.print_exc()
        first = (str(e).splitlines() or [""])[0]
        typer.echo(f"posttrain run: crashed: {type(e).__name__}{': ' + first if first else ''} (the run's "
                   "manifest records the failed stage; a rerun resumes from it)", err=True)
        raise typer.Exit(3) from None
    print_status(manifest)


def status_command(run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="a pipeline's run_dir")) -> None:
    """Show each stage of a pipeline run: status, cache key, wall time and main metric."""
    path = run_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        fail(f"{path}: no pipeline manifest (is {run_dir} a run_dir of `posttrain run`?)")
        return
    except json.JSONDecodeError as e:
        fail(f"{path}: not valid JSON: {e}")
        return
    print_status(manifest)


def promote_command(
    run_dir: Path = typer.Argument(None, metavar="RUN_DIR", help="a pipeline's run_dir"),
    stage: str = typer.Option("merge", "--stage", help="the stage whose model to promote"),
    to: Path = typer.Option(..., "--to", help="the serving folder (models/ and the current link go there)"),
    base: str = typer.Option(None, "--base", metavar="MODEL", help="first deploy only: an untrained model (builtin "
                             "name or folder) becomes the serving folder's current model, no run needed"),
) -> None:
    """Copy a stage's model into a serving folder and point its `current` link at it, only if the run's gates for
    that stage passed; a server started on SERVING/current switches to it on SIGHUP or POST /admin/reload."""
    from posttrain.pipeline.promote import PromotionError, deploy_base, promote

    if (run_dir is None) == (base is None):
        fail("give a RUN_DIR (with --stage) to promote a gated model, or --base MODEL for a first deploy")
    try:
        target = deploy_base(base, to) if base is not None else promote(run_dir, stage, to)
    except (PromotionError, OSError) as e:
        fail(e)
    if base is not None:
        typer.echo(f"deployed {base} -> {target}; serve it with `posttrain serve {to / 'current'}`")
        return
    typer.echo(f"promoted {stage} -> {target} ({to / 'current'} points at it); reload a running server with "
               f"`kill -HUP <pid>` or POST /admin/reload")


def _metric_text(main: list | None) -> str:
    if not main:
        return ""
    name, value = main
    return f"{name}={value:.4f}" if isinstance(value, float) else f"{name}={value}"


def print_status(manifest: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"pipeline {manifest.get('run_dir', '')}: {manifest.get('status', '?')}")
    for column in ("stage", "command", "status", "key", "wall time", "main metric"):
        table.add_column(column, justify="right" if column == "wall time" else "left")
    for name in manifest.get("order") or list(manifest.get("stages", {})):
        entry = manifest.get("stages", {}).get(name)
        if entry is None:
            table.add_row(name, "", "not run", "", "", "")
            continue
        wall = entry.get("wall_time_s")
        table.add_row(name, entry.get("command", ""), entry.get("status", "?"), entry.get("key", "")[:12],
                      f"{wall:.1f}s" if isinstance(wall, (int, float)) else "", _metric_text(entry.get("main_metric")))
    Console(width=120).print(table)
    for name, entry in manifest.get("stages", {}).items():
        if entry.get("status") == "failed":
            typer.echo(f"{name} failed: {entry.get('error', '')}", err=True)
        elif entry.get("status") == "not run":
            typer.echo(f"{name} not run: {entry.get('reason', '')}", err=True)


app = typer.Typer(add_completion=False, no_args_is_help=True, help="Pipelines: run and status.")
app.command("run")(run_command)
app.command("status")(status_command)

if __name__ == "__main__":
    app()
