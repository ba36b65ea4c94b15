"""``posttrain feedback to-pairs``: production feedback logs -> pairs.jsonl, unpaired.jsonl, conflicts.jsonl and
summary.json in one output folder; ``posttrain feedback export``: a feedback store's events -> the JSONL to-pairs
reads. The main CLI mounts ``feedback_app`` as ``posttrain feedback``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from posttrain.errors import fail

from posttrain.data.schema import DataError
from posttrain.data.writers import atomic_write_json, atomic_write_text, jsonl_text
from posttrain.feedback.convert import (
    CONFLICT_POLICIES,
    KINDS,
    RANKING_MODES,
    Conversion,
    ConvertOptions,
    convert_events,
    pair_row,
    unpaired_row,
)
from posttrain.feedback.events import read_events
from posttrain.feedback.store import FeedbackStore, StoreError

feedback_app = typer.Typer(no_args_is_help=True, help="Production feedback (thumbs, edits, side-by-side, "
                           "rankings, Likert) -> training data.")

SHOWN_ERRORS = 20  # malformed lines printed; all are counted, and the first SUMMARY_ERRORS go to summary.json
SUMMARY_ERRORS = 1000
SHOWN_CONFLICTS = 3


@feedback_app.callback()
def _group() -> None:
    """Production feedback (thumbs, edits, side-by-side, rankings, Likert) -> training data."""
    # A callback keeps the commands named subcommands (typer would run a lone command directly).


def _range(text: str | None, option: str) -> tuple[float, float] | None:
    if text is None:
        return None
    parts = text.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{option} must be LOW,HIGH (two numbers), got {text!r}") from None
    return low, high


def write_outputs(output: Path, conversion: Conversion) -> dict[str, Path]:
    """Write every file atomically (temp name, then rename); summary.json last, so its presence means done."""
    output.mkdir(parents=True, exist_ok=True)
    files = {"pairs": output / "pairs.jsonl", "unpaired": output / "unpaired.jsonl",
             "conflicts": output / "conflicts.jsonl", "summary": output / "summary.json"}
    atomic_write_text(files["pairs"], jsonl_text([pair_row(p) for p in conversion.pairs]))
    atomic_write_text(files["unpaired"], jsonl_text([unpaired_row(u) for u in conversion.unpaired]))
    atomic_write_text(files["conflicts"], jsonl_text(conversion.conflicts))
    atomic_write_json(files["summary"], conversion.summary)
    return files


def _print_errors(errors: list[DataError]) -> None:
    for error in errors[:SHOWN_ERRORS]:
        typer.echo(str(error), err=True)
    if len(errors) > SHOWN_ERRORS:
        typer.echo(f"... and {len(errors) - SHOWN_ERRORS} more malformed events", err=True)


def _short(value, width: int = 40) -> str:
    if isinstance(value, list):  # a prompt: show its last (user) turn
        value = value[-1]["content"]
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_report(conversion: Conversion, files: dict[str, Path]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = conversion.summary
    table = Table(title="feedback -> training data")
    for column in ("kind", "events in", "pairs out", "unpaired out"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    by_kind = summary["events"]["by_kind"]
    for kind in KINDS:
        pairs = sum(kind in p.metadata["source_kind"].split("+") for p in conversion.pairs)
        unpaired = sum(kind in u.metadata["source_kind"].split("+") for u in conversion.unpaired)
        table.add_row(kind, str(by_kind[kind]), str(pairs), str(unpaired))
    table.add_row("total", str(summary["events"]["valid"]), str(len(conversion.pairs)),
                  str(len(conversion.unpaired)), style="bold")
    console.print(table)
    if summary["skipped"]:
        skipped = Table(title="skipped")
        skipped.add_column("reason")
        skipped.add_column("count", justify="right")
        for reason, count in summary["skipped"].items():
            skipped.add_row(reason, str(count))
        console.print(skipped)
    if summary.get("aspects"):
        aspects = Table(title="aspects over the Likert pairs (does each aspect agree with the pair?)")
        for column in ("aspect", "pairs", "agree", "tie", "disagree", "agreement"):
            aspects.add_column(column, justify="left" if column == "aspect" else "right")
        for name, row in summary["aspects"].items():
            aspects.add_row(name, *(str(row[k]) for k in ("pairs", "agree", "tie", "disagree")),
                            f"{row['agreement']:.2f}")
        console.print(aspects)
    merged = summary["merged_duplicates"]
    console.print(f"merged duplicates: {merged['pairs']} pair votes, {merged['unpaired']} label votes",
                  markup=False)
    if conversion.conflicts:
        _print_conflicts(console, conversion)
    for name, path in files.items():
        console.print(f"{name}: {path}", markup=False, highlight=False)


def _print_conflicts(console, conversion: Conversion) -> None:
    from rich.table import Table
    from rich.text import Text

    info = conversion.summary["conflicts"]
    resolutions = ", ".join(f"{k}: {v}" for k, v in info["resolutions"].items())
    table = Table(title=f"conflicts: {info['pairs']} pairs, {info['unpaired']} labels judged both ways "
                        f"(policy {info['policy']}; {resolutions})")
    for column in ("type", "prompt", "reply A", "reply B", "votes", "resolution"):
        table.add_column(column)
    for conflict in conversion.conflicts[:SHOWN_CONFLICTS]:
        if conflict["type"] == "pair":
            row = (_short(conflict["response_a"]), _short(conflict["response_b"]),
                   f"A>B {conflict['a_over_b']['votes']}, B>A {conflict['b_over_a']['votes']}")
        else:
            row = (_short(conflict["response"]), "",
                   f"up {conflict['up']['votes']}, down {conflict['down']['votes']}")
        # Text, not str: replies may contain "[...]", which rich would otherwise read as markup and drop.
        table.add_row(*(Text(cell) for cell in (conflict["type"], _short(conflict["prompt"]), *row,
                                                  conflict["resolution"])))
    console.print(table)
    if len(conversion.conflicts) > SHOWN_CONFLICTS:
        console.print(f"... and {len(conversion.conflicts) - SHOWN_CONFLICTS} more (all in conflicts.jsonl)",
                      markup=False)


def _weights(text: str | None) -> dict[str, float] | None:
    """``helpfulness=2,accuracy=1`` -> {"helpfulness": 2.0, "accuracy": 1.0}; ValueError naming the option."""
    if text is None:
        return None
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"--aspect-weights: expected NAME=WEIGHT,..., got {part!r}")
    return out


@feedback_app.command("to-pairs")
def to_pairs(
    events_files: list[Path] = typer.Argument(..., metavar="EVENTS_FILE", help="feedback event logs (JSONL)"),
    output: Path = typer.Option(..., "--output", "-o", help="output folder"),
    ranking_mode: str = typer.Option("all", help=f"{' | '.join(RANKING_MODES)}"),
    likert_min_gap: float = typer.Option(2.0, help="score gap that makes two Likert replies a pair"),
    likert_scale: str = typer.Option("1,5", help="LOW,HIGH of the Likert scale"),
    likert_unpaired: str = typer.Option(None, help="LOW,HIGH: also write Likert scores <= LOW as undesirable "
                                        "and >= HIGH as desirable unpaired rows"),
    conflicts: str = typer.Option("drop", help=f"{' | '.join(CONFLICT_POLICIES)}: what to keep when votes "
                                  "disagree (always reported)"),
    max_pairs_per_prompt: int = typer.Option(None, help="keep at most this many pairs per prompt"),
    aspect: str = typer.Option(None, help="multi-aspect Likert events (scores: {aspect: value}): pair on this "
                               "aspect only"),
    aspect_weights: str = typer.Option(None, help="NAME=W,...: pair on the weighted mean of the aspects "
                                       "(default: equal weights)"),
    aspect_all: bool = typer.Option(False, "--aspect-all", help="a Likert pair's winner must also be no worse on "
                                    "any aspect both rated (better on all)"),
    strict: bool = typer.Option(False, help="exit 2 and write nothing if any event is malformed"),
) -> None:
    """Convert feedback events into preference pairs (DPO) and unpaired rows (KTO), reporting conflicts."""
    from posttrain.data.writers import check_output_path

    try:
        check_output_path(output, "--output")  # before any event is read: a typo costs nothing
        options = ConvertOptions(ranking_mode, likert_min_gap, _range(likert_scale, "--likert-scale"),
                                 _range(likert_unpaired, "--likert-unpaired"), conflicts, max_pairs_per_prompt,
                                 aspect, _weights(aspect_weights), aspect_all)
        events, errors, lines = read_events([str(p) for p in events_files], options.likert_scale)
    except (ValueError, DataError) as e:  # DataError is a ValueError; both are one line for the user
        fail(e)
    _print_errors(errors)
    if errors and strict:
        fail(f"{len(errors)} malformed event(s) of {lines}; --strict: nothing written")
    if not events:
        fail(f"no valid events in {lines} line(s); nothing written")
    conversion = convert_events(events, options)
    conversion.summary = {"inputs": [str(p) for p in events_files], **conversion.summary}
    conversion.summary["events"] = {"lines": lines, "malformed": len(errors), **conversion.summary["events"]}
    conversion.summary["malformed"] = [str(e) for e in errors[:SUMMARY_ERRORS]]
    files = write_outputs(output, conversion)
    _print_report(conversion, files)
    if not conversion.pairs:
        typer.echo("warning: no pairs were produced; pairs.jsonl is empty", err=True)
    if errors:
        typer.echo(f"warning: {len(errors)} malformed event(s) skipped (listed above); --strict makes them fatal",
                   err=True)


@feedback_app.command("export")
def export(
    store: str = typer.Option(..., "--store", help="the feedback store: a SQLite file path, sqlite:///PATH or "
                              "postgresql://USER@HOST:PORT/DB"),
    output: Path = typer.Option(..., "-o", "--output", help="events JSONL to write (the format to-pairs reads)"),
    redact: bool = typer.Option(False, "--redact", help="replace PII in every text field with typed placeholders "
                                "(the builtin detectors of `posttrain data redact`)"),
) -> None:
    """Every feedback event in a store -> events JSONL (then: posttrain feedback to-pairs OUTPUT -o DIR)."""
    try:
        count = FeedbackStore(store).export_events(output, redact=redact)
    except (StoreError, DataError, OSError) as e:
        fail(e)
    typer.echo(f"wrote {count} event(s) to {output}")
