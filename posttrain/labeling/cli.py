"""``posttrain label``: people label side-by-side comparisons and audit a judge, in a browser, over a feedback store.

    posttrain label user alice --store feedback.db            # prints alice's token (--admin for an admin)
    posttrain label add comparisons.jsonl --store feedback.db  # side-by-side tasks (or a generate candidates file)
    posttrain label audit runs/x/judge/pairs.jsonl --store feedback.db -n 50 --batch week-1
    posttrain label serve --store feedback.db --port 8100      # the web app (docs/FEEDBACK.md)
    posttrain label report --store feedback.db -o audit.json   # human-vs-judge agreement
    posttrain feedback export --store feedback.db -o events.jsonl  # answers become feedback events
"""

from __future__ import annotations

from pathlib import Path

import typer

from posttrain.data.schema import DataError, DataErrors
from posttrain.data.writers import atomic_write_json
from posttrain.errors import fail
from posttrain.feedback.store import FeedbackStore, StoreError
from posttrain.labeling.audit import audit_report, labeler_agreement, stratified_sample
from posttrain.labeling.tasks import audit_items, side_by_side_payloads, with_display

label_app = typer.Typer(no_args_is_help=True, help="Label side-by-side comparisons and audit a judge in a browser.")
STORE_HELP = "the feedback store: a SQLite file path, sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
USER_ERRORS = (StoreError, DataError, DataErrors, OSError, ValueError)


@label_app.callback()
def _group() -> None:
    """Label side-by-side comparisons and audit a judge in a browser."""


@label_app.command("user")
def add_user(name: str = typer.Argument(..., help="the labeler's name (recorded with every answer)"),
             store: str = typer.Option(..., "--store", help=STORE_HELP),
             admin: bool = typer.Option(False, "--admin", help="may export and see reports")) -> None:
    """Add a labeler (or re-issue their token) and print the token once."""
    try:
        token = FeedbackStore(store).add_labeler(name, "admin" if admin else "labeler")
    except USER_ERRORS as e:
        fail(e)
    typer.echo(token)


@label_app.command("add")
def add_tasks(source: Path = typer.Argument(None, help="comparisons JSONL (prompt, response_a, response_b) or a "
                                            "generate candidates file"),
              store: str = typer.Option(..., "--store", help=STORE_HELP),
              from_store: bool = typer.Option(False, "--from-store", help="instead of a file: the store's recorded "
                                              "completions with two different choices (serve with n >= 2)"),
              limit: int = typer.Option(None, "--limit", min=1, help="at most this many tasks"),
              batch: str = typer.Option(None, "--batch", help="a name to group these tasks by"),
              answers: int = typer.Option(1, "--answers", min=1, help="labelers who answer each task (2 or more: "
                                          "inter-labeler agreement in `label report`)"),
              assign: str = typer.Option(None, "--assign", help="NAME,NAME,...: only these labelers get the tasks"),
              seed: int = typer.Option(0, "--seed", help="seeds the display order of each task")) -> None:
    """Add side-by-side tasks (each shown in a random, recorded order)."""
    if (source is None) == (not from_store):
        fail("give a comparisons or candidates FILE, or --from-store")
    assignees = [n.strip() for n in assign.split(",") if n.strip()] if assign else None
    if assignees is not None and len(assignees) < answers:
        fail(f"--assign names {len(assignees)} labeler(s), fewer than --answers {answers}: no task could be done")
    try:
        opened = FeedbackStore(store)
        if from_store:
            payloads = with_display(opened.two_choice_responses(), seed)
            if not payloads:
                fail(f"{store}: no recorded completion with two different choices that is not a task already")
        else:
            payloads = side_by_side_payloads(source, seed)
        extra = {"answers_needed": answers} if answers > 1 else {}
        if assignees:
            extra["assignees"] = assignees
        ids = opened.add_label_tasks("side_by_side", [{**p, **extra} for p in payloads[:limit]], batch)
    except USER_ERRORS as e:
        fail(e)
    typer.echo(f"added {len(ids)} side-by-side task(s)" + (f" to batch {batch}" if batch else "")
               + (f", {answers} answers each" if answers > 1 else "")
               + (f", for {', '.join(assignees)}" if assignees else ""))


@label_app.command("audit")
def add_audit(decisions: Path = typer.Argument(..., help="a judge run's pairs.jsonl or comparisons.jsonl"),
              store: str = typer.Option(..., "--store", help=STORE_HELP),
              candidates: Path = typer.Option(None, "--candidates", help="the candidates the judge read (needed for "
                                              "comparisons.jsonl; gives prompt categories for pairs.jsonl)"),
              sample: int = typer.Option(50, "-n", "--sample", help="decisions to audit, stratified"),
              batch: str = typer.Option(..., "--batch", help="the audit batch (drift is reported across batches)"),
              seed: int = typer.Option(0, "--seed")) -> None:
    """Add a stratified sample of a judge's decisions as blind audit tasks."""
    try:
        is_pairs = "comparisons" not in decisions.name
        items = audit_items(pairs=decisions if is_pairs else None, comparisons=None if is_pairs else decisions,
                            candidates=candidates)
        chosen = with_display(stratified_sample(items, sample, seed), seed)
        FeedbackStore(store).add_label_tasks("audit", chosen, batch)
    except USER_ERRORS as e:
        fail(e)
    strata = len({tuple(sorted(it["strata"].items())) for it in chosen})
    typer.echo(f"added {len(chosen)} audit task(s) from {len(items)} decisions across {strata} strata to batch {batch}")


@label_app.command("report")
def report(store: str = typer.Option(..., "--store", help=STORE_HELP),
           batch: str = typer.Option(None, "--batch", help="one batch only (default: all, with drift across them)"),
           output: Path = typer.Option(None, "-o", "--output", help="write the report as JSON")) -> None:
    """Human-vs-judge agreement of the audits (Cohen's kappa with a 95% interval, per stratum and batch), and the
    agreement between labelers on side-by-side tasks answered by several (Fleiss' kappa)."""
    try:
        opened = FeedbackStore(store)
        result = audit_report(opened.label_answers("audit", batch))
        result["labelers"] = labeler_agreement(opened.label_answers("side_by_side", batch))
        if output is not None:
            atomic_write_json(output, result)
    except USER_ERRORS as e:
        fail(e)
    agree = result["labelers"]
    if agree["tasks"]:
        kappa = "undefined" if agree["fleiss_kappa"] is None else f"{agree['fleiss_kappa']:.3f}"
        typer.echo(f"side-by-side tasks with several labelers: {agree['tasks']}, all agree {agree['all_agree']:.3f}, "
                   f"pairwise agreement {agree['pairwise_agreement']:.3f}, Fleiss kappa {kappa} "
                   f"({agree['fleiss_tasks']} tasks x {agree['raters_per_task']} labelers)")
    o = result["overall"]
    if not o["n"]:
        typer.echo("no audit answers yet")
        return
    kappa = "undefined" if o["kappa"] is None else f"{o['kappa']:.3f} [{o['ci95'][0]:.2f}, {o['ci95'][1]:.2f}]"
    typer.echo(f"audits: {o['n']}, agreement {o['agreement']:.3f}, kappa {kappa}")
    for name, m in result["batches"].items():
        typer.echo(f"  batch {name}: n {m['n']}, agreement {m['agreement']:.3f}")


@label_app.command("serve")
def serve_app(store: str = typer.Option(..., "--store", help=STORE_HELP),
              host: str = typer.Option("127.0.0.1", "--host"),
              port: int = typer.Option(8100, "--port"),
              threads: int = typer.Option(8, "--threads", help="waitress worker threads")) -> None:
    """Serve the labeling and audit pages (log in with a token from `posttrain label user`)."""
    try:
        # flask and waitress are an optional extra: imported only when the app runs
        from posttrain.labeling.app import serve
    except ImportError:
        fail("the labeling app needs flask and waitress: pip install 'posttrain[label]'")
    try:
        FeedbackStore(store)  # a bad URL or schema is one line before the server starts
    except USER_ERRORS as e:
        fail(e)
    typer.echo(f"labeling app on http://{host}:{port}/login")
    serve(store, host=host, port=port, threads=threads)
