"""``posttrain data``: dedup, decontaminate, redact, clean (all three), inspect (preference diagnostics) and
augment (constraint augmentation of plain replies into SFT rows, ``data/augment.py``).

Every command but ``inspect`` streams INPUT into an output folder: ``clean.jsonl`` (kept rows, in their original
layout), ``removed.jsonl``, ``contamination.jsonl``, ``clusters.jsonl`` (near dedup), ``report.json``,
``config.yaml`` and ``manifest.json``. Bad input: one line ``error: file:LINE: field 'x': ...``, exit 2, nothing
written. File formats and report fields: docs/HYGIENE.md.
"""

from __future__ import annotations

from pathlib import Path

import typer

from posttrain.errors import fail

data_app = typer.Typer(no_args_is_help=True, help="Data hygiene: dedup (exact, MinHash), eval decontamination, "
                       "PII redaction, preference-data diagnostics.")

_KIND = typer.Option("auto", help="sft | preference | unpaired | prompt | auto (from the first row)")
_OUT = typer.Option(..., "--output", "-o", help="output folder")
_PROGRESS = typer.Option(True, help="progress bar")


def _user_errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from posttrain.data.schema import DataError, DataErrors
    from posttrain.hygiene.pii import PIIBackendError

    return DataError, DataErrors, PIIBackendError, ValidationError, ValueError


def _config(**kwargs):
    from pydantic import ValidationError

    from posttrain.hygiene.clean import HygieneConfig

    try:
        return HygieneConfig(**{k: v for k, v in kwargs.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        raise ValueError(f"option '{'.'.join(str(p) for p in err['loc'])}': {err['msg']}") from None


def _run(source: Path, output: Path, stage: str, **options) -> dict:
    from posttrain.data.writers import check_output_path
    from posttrain.hygiene.clean import run_hygiene

    try:
        check_output_path(output, "--output")
        cfg = _config(**options)
        report = run_hygiene(str(source), output, cfg, stage=stage)
    except _user_errors() as e:
        fail(e, first_line=True)
    _print_summary(report, output)
    return report


def _print_summary(report: dict, output: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"posttrain data: {report['input']} ({report['kind']})")
    table.add_column("step")
    table.add_column("result", justify="right")
    table.add_row("rows in", str(report["rows_in"]))
    if report["exact_dedup"]:
        table.add_row("exact duplicates removed", str(report["removed"]["exact_duplicate"]))
    if report["near_dedup"]:
        nd = report["near_dedup"]
        table.add_row(f"near duplicates removed (J >= {nd['threshold']})",
                      f"{nd['rows_removed']} in {nd['clusters']} clusters")
    if report["decontamination"]:
        dc = report["decontamination"]
        table.add_row(f"contaminated rows ({dc['n']}-gram)", str(dc["rows_contaminated"]))
        for name, info in dc["eval_sets"].items():
            table.add_row(f"  vs {name}", f"{info['contaminated_rows']} rows, {info['contaminated_examples']} "
                          f"of {info['examples']} eval examples")
        table.add_row("contaminated rows removed", str(dc["rows_removed"]))
    if report["pii"]:
        for name, count in report["pii"]["counts"].items():
            if count:
                table.add_row(f"PII redacted: {name}", str(count))
        table.add_row("rows with PII", str(report["pii"]["rows_redacted"]))
    table.add_row("rows out", str(report["rows_out"]), style="bold")
    console.print(table)
    if report.get("diagnostics"):
        print_diagnostics(report["diagnostics"], console)
    console.print(f"output: {output}", markup=False, highlight=False)


def print_diagnostics(diag: dict, console=None, template: dict | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"preference-data diagnostics ({diag['pairs']} pairs)")
    for column in ("measure", "chosen", "rejected"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    length = diag["length"]
    for unit in ("chars", "words"):
        c, r = length[unit]["chosen"], length[unit]["rejected"]
        if c.get("n"):
            table.add_row(f"length ({unit}) mean / median", f"{c['mean']:.1f} / {c['median']:.1f}",
                          f"{r['mean']:.1f} / {r['median']:.1f}")
            table.add_row(f"length ({unit}) p10 - p90", f"{c['p10']:.0f} - {c['p90']:.0f}",
                          f"{r['p10']:.0f} - {r['p90']:.0f}")
    table.add_row("longer side (fraction of pairs)", f"{length['chosen_longer_fraction']:.3f}",
                  f"{length['rejected_longer_fraction']:.3f}")
    for name, a in diag["format"]["artifacts"].items():
        table.add_row(f"has {name}", f"{a['chosen_fraction']:.3f}", f"{a['rejected_fraction']:.3f}")
    table.add_row("opens with a refusal", f"{diag['refusals']['chosen_fraction']:.3f}",
                  f"{diag['refusals']['rejected_fraction']:.3f}")
    table.add_row("identical pairs", str(diag["identical"]["pairs"]), "")
    table.add_row("near-identical pairs", str(diag["near_identical"]["pairs"]), "")
    for name, j in diag["judge"].items():
        table.add_row(f"judge {name}: agree / disagree / tie", f"{j['agree']:.3f} / {j['disagree']:.3f} / "
                      f"{j['tie']:.3f}", f"{j['pairs']} pairs")
    console.print(table)
    for warning in diag["warnings"] + ((template or {}).get("warnings") or []):
        console.print(f"warning: {warning}", markup=False, highlight=False, style="yellow")


_INPUT = typer.Argument(..., help="data file (JSONL, JSON, CSV, Parquet), datasets folder or hub id")
_KEY = typer.Option("full", help="full: the whole row must match | prompt: the prompt alone")
_FOLD_CASE = typer.Option(True, help="fold case before comparing")
_FOLD_WS = typer.Option(True, help="collapse whitespace before comparing")
_FOLD_PUNCT = typer.Option(True, help="drop punctuation and symbols before comparing")
_THRESHOLD = typer.Option(0.8, help="near-duplicate Jaccard threshold")
_SHINGLE = typer.Option(5, help="near-duplicate shingle size (words)")
_NUM_PERM = typer.Option(128, help="MinHash permutations")
_NGRAM = typer.Option(13, help="decontamination n-gram size (words)")
_SUITE = typer.Option(None, "--suite", help="builtin eval suite to check against (repeatable; default: all)")
_EVAL_FILE = typer.Option(None, "--eval-file", help="another eval JSONL to check against (repeatable)")
_REMOVE = typer.Option(False, help="drop contaminated rows (default: report only)")
_REMOVE_THRESHOLD = typer.Option(0.0, help="drop only rows whose overlap fraction with an eval example is >= this")
_FIELDS = typer.Option(None, "--field", help="only check these fields (prompt, response, chosen, rejected, "
                       "completion; repeatable; default: all)")
_BACKEND = typer.Option("builtin", help="builtin | presidio (builtin detectors, then Presidio's analyzer)")
_TYPES = typer.Option(None, "--type", help="PII types to redact (repeatable; default: all builtin types)")


@data_app.command("dedup")
def dedup(source: Path = _INPUT, output: Path = _OUT, kind: str = _KIND, key: str = _KEY,
          exact: bool = typer.Option(True, help="exact dedup on normalised text"),
          near: bool = typer.Option(True, help="near-dedup with MinHash LSH"),
          fold_case: bool = _FOLD_CASE, fold_whitespace: bool = _FOLD_WS, fold_punctuation: bool = _FOLD_PUNCT,
          threshold: float = _THRESHOLD, shingle_size: int = _SHINGLE, num_perm: int = _NUM_PERM,
          progress: bool = _PROGRESS) -> None:
    """Remove exact and near duplicates (one representative per cluster kept; clusters reported)."""
    _run(source, output, "dedup", kind=kind, key=key, exact=exact, near=near, fold_case=fold_case,
         fold_whitespace=fold_whitespace, fold_punctuation=fold_punctuation, threshold=threshold,
         shingle_size=shingle_size, num_perm=num_perm, decontaminate=False, redact=False, diagnostics=False,
         progress=progress)


@data_app.command("decontaminate")
def decontaminate(source: Path = _INPUT, output: Path = _OUT, kind: str = _KIND, ngram: int = _NGRAM,
                  suite: list[str] = _SUITE, eval_file: list[str] = _EVAL_FILE, remove: bool = _REMOVE,
                  remove_threshold: float = _REMOVE_THRESHOLD, field: list[str] = _FIELDS,
                  progress: bool = _PROGRESS) -> None:
    """Find training rows sharing n-grams with eval sets (builtin suites and --eval-file); report, optionally drop."""
    _run(source, output, "decontaminate", kind=kind, exact=False, near=False, redact=False, diagnostics=False,
         ngram=ngram, suites=suite or None, eval_files=eval_file or [], remove_contaminated=remove,
         remove_threshold=remove_threshold, decontaminate_fields=field or None, progress=progress)


@data_app.command("redact")
def redact(source: Path = _INPUT, output: Path = _OUT, kind: str = _KIND, backend: str = _BACKEND,
           type_: list[str] = _TYPES, progress: bool = _PROGRESS) -> None:
    """Replace PII (email, phone, card, IP, IBAN, SSN, URL credentials, secrets) with typed placeholders."""
    _run(source, output, "redact", kind=kind, exact=False, near=False, decontaminate=False, diagnostics=False,
         pii_backend=backend, pii_types=type_ or None, progress=progress)


@data_app.command("clean")
def clean(source: Path = _INPUT, output: Path = _OUT, kind: str = _KIND, key: str = _KEY,
          fold_case: bool = _FOLD_CASE, fold_whitespace: bool = _FOLD_WS, fold_punctuation: bool = _FOLD_PUNCT,
          threshold: float = _THRESHOLD, shingle_size: int = _SHINGLE, num_perm: int = _NUM_PERM,
          ngram: int = _NGRAM, suite: list[str] = _SUITE, eval_file: list[str] = _EVAL_FILE,
          remove_contaminated: bool = _REMOVE, remove_threshold: float = _REMOVE_THRESHOLD,
          redact_pii: bool = typer.Option(True, "--redact/--no-redact", help="PII redaction"),
          backend: str = _BACKEND, progress: bool = _PROGRESS) -> None:
    """All of it in one pass: exact dedup -> near dedup -> decontamination -> PII redaction (+ diagnostics for
    preference data)."""
    _run(source, output, "clean", kind=kind, key=key, fold_case=fold_case, fold_whitespace=fold_whitespace,
         fold_punctuation=fold_punctuation, threshold=threshold, shingle_size=shingle_size, num_perm=num_perm,
         ngram=ngram, suites=suite or None, eval_files=eval_file or [], remove_contaminated=remove_contaminated,
         remove_threshold=remove_threshold, redact=redact_pii, pii_backend=backend, progress=progress)


@data_app.command("inspect")
def inspect(pairs: Path = typer.Argument(..., help="preference pairs (any layout posttrain dpo reads)"),
            sft: Path = typer.Option(None, help="SFT data, to check template / system-prompt consistency"),
            sft_model: str = typer.Option(None, help="model the SFT stage uses (compares chat templates)"),
            pref_model: str = typer.Option(None, help="model the preference stage uses"),
            json_path: Path = typer.Option(None, "--json", help="also write the diagnostics here (JSON)"),
            near_identical: float = typer.Option(0.9, help="word-trigram Jaccard that makes a pair near-identical"),
            progress: bool = _PROGRESS) -> None:
    """Preference-data diagnostics: length bias, identical pairs, format artifacts, refusals, judge agreement."""
    from posttrain.data.writers import atomic_write_json, check_output_path
    from posttrain.hygiene.clean import progress_bar
    from posttrain.hygiene.diagnostics import PairStats
    from posttrain.hygiene.templates import TemplateProfile, chat_template, compare
    from posttrain.hygiene.text import stream_rows, text_fields

    try:
        if json_path is not None:
            check_output_path(json_path, "--json", folder=False)
        stats, pref_profile = PairStats(near_identical), TemplateProfile()
        with progress_bar(progress, "posttrain data inspect") as bar:
            for row in stream_rows(str(pairs), "preference"):
                f = text_fields(row.example)
                stats.add(row.line, f["chosen"], f["rejected"], row.example.metadata)
                pref_profile.add(row.example)
                bar.update()
        result = {"input": str(pairs), **stats.report()}
        template = None
        if sft is not None or (sft_model and pref_model):
            sft_profile = TemplateProfile()
            if sft is not None:
                for row in stream_rows(str(sft), "sft"):
                    sft_profile.add(row.example)
            templates = (chat_template(sft_model), chat_template(pref_model)) if sft_model and pref_model \
                else (None, None)
            template = compare(sft_profile, pref_profile, *templates)
            result["template"] = template
    except _user_errors() as e:
        fail(e, first_line=True)
    except Exception as e:  # a model name that does not resolve (ModelError) is the user's to fix too
        from posttrain.models.resolve import ModelError

        if not isinstance(e, ModelError):
            raise
        fail(e, first_line=True)
    print_diagnostics(result, template=template)
    if json_path is not None:
        atomic_write_json(json_path, result)
        typer.echo(f"diagnostics: {json_path}")


def _kind_weights(text: str) -> dict[str, float]:
    """``kind=weight,...`` of ``--kind-weights``; ValueError naming the option on a malformed item."""
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, sep, value = item.partition("=")
        try:
            weights[kind.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--kind-weights: expected kind=number, got {item!r}") from None
        if not sep:
            raise ValueError(f"--kind-weights: expected kind=number, got {item!r}")
    return weights


def _kinds(text: str) -> tuple[str, ...]:
    """A comma-separated list of constraint kinds as a tuple (blanks dropped)."""
    return tuple(k.strip() for k in text.split(",") if k.strip())


@data_app.command("augment")
def augment(candidates: Path = typer.Argument(..., help="candidates of plain task prompts (posttrain generate)"),
            output: Path = typer.Option(..., "--output", "-o", help="SFT rows to write (JSONL)"),
            per_reply: int = typer.Option(3, help="constrained examples made from each reply"),
            plain_share: float = typer.Option(0.25, help="share of replies also kept under the bare task"),
            two_constraint_share: float = typer.Option(0.35, help="share of examples asking for two constraints"),
            hold_out_kinds: str = typer.Option("", help="comma-separated constraint kinds never used"),
            kind_weights: str = typer.Option("", help="relative draw weights, e.g. lowercase=3,title=0.5 "
                                                       "(others 1, 0 = never)"),
            min_words: int = typer.Option(8, help="skip a reply shorter than this once tidied"),
            max_words: int = typer.Option(None, help="skip a reply longer than this once tidied"),
            skip_truncated: bool = typer.Option(True, help="skip replies cut at the token limit"),
            skip_styled: bool = typer.Option(False, help="skip replies wrapped whole in double quotes or written in "
                                                          "capitals (unrequested formatting)"),
            more_phrasings: bool = typer.Option(False, help="also use the extra wordings of each constraint "
                                                             "(verifiers/phrasings.py MORE_PHRASINGS)"),
            more_arguments: bool = typer.Option(False, help="also draw the keywords and opening / closing phrases "
                                                             "asked for from wider pools (verifiers/phrasings.py "
                                                             "MORE_ARGUMENTS)"),
            drop_system: bool = typer.Option(False, help="leave the candidates' system messages out of the rows "
                                                          "(a system prompt that only steered sampling)"),
            pairs: Path = typer.Option(None, "--pairs", help="also write repair pairs here (JSONL: chosen = the "
                                       "edited reply, rejected = the reply as sampled; posttrain dpo reads them)"),
            contrast_share: float = typer.Option(0.0, help="with --pairs: share of prompts (bare and constrained) that "
                                                            "also give a contrast pair (their reply chosen, an "
                                                            "unasked format edit of it rejected)"),
            contrast_kinds: str = typer.Option(None, help="comma-separated edits a contrast pair rejects (default: "
                                                          "AugmentSettings.contrast_kinds, the two case edits)"),
            loop_share: float = typer.Option(0.0, help="with --pairs: share of prompts that also give a loop pair "
                                                        "(their reply chosen, the reply looping on one of its "
                                                        "sentences rejected)"),
            echo_share: float = typer.Option(0.0, help="with --pairs: share of constrained prompts that also give an "
                                                        "echo pair (their reply chosen, the reply saying one of the "
                                                        "prompt's instruction sentences rejected)"),
            markup_loop_share: float = typer.Option(0.0, help="with --pairs: share of prompts whose reply has a "
                                                               "bullet or divider line that also give a markup-loop "
                                                               "pair (their reply chosen, the reply turning into "
                                                               "'* * *' lines there rejected)"),
            seed: int = typer.Option(0)) -> None:
    """Constraint augmentation: each plain reply + sampled instruction constraints, the reply repaired to obey
    them (verifier-checked), as SFT rows; some replies also kept plain (docs/CANDIDATES.md)."""
    from posttrain.data.augment import AugmentSettings, augment_file
    from posttrain.data.writers import check_output_path

    try:
        check_output_path(output, "--output", folder=False)
        if pairs is not None:
            check_output_path(pairs, "--pairs", folder=False)
        elif given := [f"--{n}" for n, v in (("contrast-share", contrast_share), ("loop-share", loop_share),
                                                ("echo-share", echo_share),
                                                ("markup-loop-share", markup_loop_share)) if v]:
            raise ValueError(f"{given[0]} needs --pairs (contrast, loop, echo and markup-loop pairs are preference "
                             "pairs)")
        settings = AugmentSettings(per_reply=per_reply, kind_weights=_kind_weights(kind_weights), plain_share=plain_share,
                                   two_constraint_share=two_constraint_share, min_words=min_words, seed=seed,
                                   max_words=max_words, skip_truncated=skip_truncated, skip_styled=skip_styled,
                                   more_phrasings=more_phrasings, more_arguments=more_arguments,
                                   drop_system=drop_system,
                                   hold_out_kinds=tuple(k for k in hold_out_kinds.split(",") if k),
                                   contrast_share=contrast_share, loop_share=loop_share,
                                   echo_share=echo_share, markup_loop_share=markup_loop_share,
                                   **({} if contrast_kinds is None else {"contrast_kinds": _kinds(contrast_kinds)}))
        stats = augment_file(candidates, output, settings, pairs)
    except _user_errors() as e:
        fail(e, first_line=True)
    per_kind = stats.pop("per_kind")
    typer.echo(f"wrote {stats['examples']} examples to {output} ({stats['constrained_examples']} constrained, "
               f"{stats['plain_examples']} plain) from {stats['replies_used']} of {stats['replies']} replies "
               f"(skipped: {stats['skipped_short']} short, {stats['skipped_long']} long, {stats['skipped_truncated']} cut at the token limit, "
               f"{stats['skipped_styled']} quoted or in capitals, {stats['skipped_constrained']} with constraints)")
    typer.echo("per kind: " + ", ".join(f"{k} {v}" for k, v in per_kind.items()))
    if pairs is not None:
        contrast = (f" ({stats['contrast_pairs']} of them contrast, loop, echo or markup-loop pairs)"
                    if stats["contrast_pairs"] else "")
        typer.echo(f"wrote {stats['pairs']} repair pairs to {pairs}{contrast}")
