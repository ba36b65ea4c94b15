"""The one streaming pass behind every ``posttrain data`` command and the ``data`` pipeline stage.

Rows are read one at a time and handled in batches of ``batch_size`` (MinHash signatures are computed per batch):
exact dedup -> near dedup -> decontamination -> PII redaction -> diagnostics, each step optional. Memory holds
the dedup index (an 8-byte digest per distinct row, a signature and band keys per MinHash representative), the
small eval n-gram index and one batch, never the file.

Outputs go to a hidden temp folder inside the output folder and are renamed into place only when the whole input
has been read, so bad input (``DataError``: one line, ``file:LINE: field 'x': ...``) leaves nothing behind.
``manifest.json`` (status ``completed``) is written last.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm import tqdm

from posttrain.data.runfolder import RunFolder
from posttrain.data.sources import local_paths, source_label, sources_dump
from posttrain.data.writers import atomic_write_json, atomic_write_jsonl
from posttrain.hygiene.decontam import DEFAULT_MIN_WORDS, DEFAULT_N, Decontaminator, build_index
from posttrain.hygiene.dedup import ExactDeduper, NearDeduper
from posttrain.hygiene.diagnostics import PairStats
from posttrain.hygiene.pii import TYPES, Redactor, redact_record
from posttrain.hygiene.templates import TemplateProfile
from posttrain.hygiene.text import Folding, key_text, stream_kind, stream_rows, text_fields

MAX_CLUSTERS_IN_REPORT = 100
OUTPUT_FILES = ("clean.jsonl", "removed.jsonl", "contamination.jsonl", "clusters.jsonl", "report.json")
DECONTAMINATE_FIELDS = ("prompt", "response", "chosen", "rejected", "completion")


class HygieneConfig(BaseModel):
    """Every option of the pass; the CLI commands and the pipeline stage fill it (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["auto", "sft", "preference", "unpaired", "prompt"] = "auto"
    split: str | None = None  # of a dataset folder or hub id (default train)
    # exact dedup
    exact: bool = True
    key: Literal["full", "prompt"] = "full"
    fold_case: bool = True
    fold_whitespace: bool = True
    fold_punctuation: bool = True
    # near dedup
    near: bool = True
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    shingle_size: int = Field(5, ge=1)
    num_perm: int = Field(128, ge=8, le=1024)
    seed: int = 1
    # decontamination
    decontaminate: bool = True
    ngram: int = Field(DEFAULT_N, ge=1)
    min_words: int = Field(DEFAULT_MIN_WORDS, ge=1)
    suites: list[str] | None = None  # builtin suites; None: all
    eval_files: list[str] = Field(default_factory=list)
    decontaminate_fields: list[str] | None = None  # None: every text field
    remove_contaminated: bool = False
    remove_threshold: float = Field(0.0, ge=0.0, le=1.0)
    # PII
    redact: bool = True
    pii_backend: Literal["builtin", "presidio"] = "builtin"
    pii_types: list[str] = Field(default_factory=lambda: list(TYPES))
    # diagnostics (preference data)
    diagnostics: bool = True
    near_identical_threshold: float = Field(0.9, gt=0.0, le=1.0)
    # output and running
    write_clean: bool = True
    batch_size: int = Field(2048, ge=1)
    progress: bool = True

    @field_validator("decontaminate_fields")
    @classmethod
    def _known_fields(cls, value: list[str] | None) -> list[str] | None:
        for name in value or []:
            if name not in DECONTAMINATE_FIELDS:
                raise ValueError(f"unknown field '{name}' (fields: {', '.join(DECONTAMINATE_FIELDS)})")
        return value

    @property
    def folding(self) -> Folding:
        return Folding(self.fold_case, self.fold_whitespace, self.fold_punctuation)


class _Outputs:
    """Streaming writers into a temp folder; ``commit`` renames every file into the output folder."""

    def __init__(self, output: Path, names: list[str]):
        self.output = output
        self.created = not output.exists()
        output.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=".hygiene-", dir=output))
        self.files = {name: open(self.tmp / name, "w", encoding="utf-8") for name in names}

    def write(self, name: str, row: dict) -> None:
        self.files[name].write(json.dumps(row, ensure_ascii=False, default=str) + "\n")

    def commit(self, extra: tuple[str, ...] = ()) -> None:
        """Close the streams and rename them (and ``extra`` files written whole into ``tmp``) into place; outputs
        of an earlier run in the same folder that this run did not produce are removed, so none looks current."""
        for fh in self.files.values():
            fh.close()
        for name in [*self.files, *extra]:
            (self.tmp / name).replace(self.output / name)
        for name in set(OUTPUT_FILES) - {*self.files, *extra}:
            (self.output / name).unlink(missing_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def abort(self) -> None:
        for fh in self.files.values():
            fh.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.created and not any(self.output.iterdir()):
            self.output.rmdir()


def progress_bar(enabled: bool, desc: str):
    return tqdm(desc=desc, unit=" rows", disable=not enabled, mininterval=1.0, dynamic_ncols=True)


def run_hygiene(source: str, output: str | Path, cfg: HygieneConfig, stage: str = "data") -> dict:
    """Run the pass over ``source`` into ``output``; returns the report (also ``output/report.json``)."""
    output = Path(output)
    # Everything that can fail on options or eval files fails before any input row is read.
    kind = stream_kind(source, cfg.kind, cfg.split)
    exact = ExactDeduper(cfg.folding) if cfg.exact else None
    near = NearDeduper(cfg.threshold, cfg.shingle_size, cfg.num_perm, cfg.seed, cfg.folding) if cfg.near else None
    decon = None
    if cfg.decontaminate:
        index = build_index(cfg.suites, cfg.eval_files, cfg.ngram, cfg.min_words)
        decon = Decontaminator(index, cfg.remove_contaminated, cfg.remove_threshold,
                               tuple(cfg.decontaminate_fields) if cfg.decontaminate_fields else None)
    redactor = Redactor(cfg.pii_backend, tuple(cfg.pii_types)) if cfg.redact else None
    pairs = PairStats(cfg.near_identical_threshold) if cfg.diagnostics and kind == "preference" else None
    profile = TemplateProfile()
    names = (["clean.jsonl"] if cfg.write_clean else []) + ["removed.jsonl", "contamination.jsonl"]
    out = _Outputs(output, names)
    removed: Counter = Counter()
    counts = {"rows_in": 0, "rows_out": 0, "rows_redacted": 0}
    try:
        with progress_bar(cfg.progress, f"posttrain data {stage}") as bar:
            batch = []
            for row in stream_rows(source, kind, cfg.split):
                batch.append(row)
                if len(batch) >= cfg.batch_size:
                    _process(batch, cfg, exact, near, decon, redactor, pairs, profile, out, removed, counts)
                    bar.update(len(batch))
                    batch = []
            if batch:
                _process(batch, cfg, exact, near, decon, redactor, pairs, profile, out, removed, counts)
                bar.update(len(batch))
    except BaseException:
        out.abort()
        raise
    report = {
        "input": source_label(source), "kind": kind, "rows_in": counts["rows_in"], "rows_out": counts["rows_out"],
        "removed": {"exact_duplicate": removed["exact_duplicate"], "near_duplicate": removed["near_duplicate"],
                    "contaminated": removed["contaminated"]},
        "exact_dedup": None if exact is None else {
            "key": cfg.key, "distinct": len(exact), "rows_removed": removed["exact_duplicate"],
            "folding": {"case": cfg.fold_case, "whitespace": cfg.fold_whitespace, "punctuation": cfg.fold_punctuation}},
        "near_dedup": _near_report(near, removed) if near is not None else None,
        "decontamination": decon.report() if decon is not None else None,
        "pii": None if redactor is None else {
            "backend": cfg.pii_backend, "types": cfg.pii_types, "rows_redacted": counts["rows_redacted"],
            "counts": {t: redactor.counts.get(t, 0) for t in cfg.pii_types}
            | {k: v for k, v in redactor.counts.items() if k not in cfg.pii_types}},
        "diagnostics": pairs.report() if pairs is not None else None,
        "template": profile.report(),
    }
    try:
        extra = ("report.json",)
        if near is not None:
            atomic_write_jsonl(out.tmp / "clusters.jsonl", _clusters(near))
            extra += ("clusters.jsonl",)
        atomic_write_json(out.tmp / "report.json", report)
        # An earlier run's manifest goes first: killed while files are swapped, the folder must not look finished.
        (output / "manifest.json").unlink(missing_ok=True)
        out.commit(extra)
    except BaseException:
        out.abort()
        raise
    run = RunFolder(output, stage)
    run.write_config(yaml.safe_dump({"input": source if isinstance(source, str) else sources_dump(source),
                                     **cfg.model_dump()}, sort_keys=False))
    for i, path in enumerate(local_paths(source)):
        run.add_input("input" if isinstance(source, str) else f"input[{i}]", path)
    for path in cfg.eval_files:
        run.add_input(f"eval_file:{Path(path).name}", path)
    outputs = {name.split(".")[0]: name for name in names + ["report.json"]
               + (["clusters.jsonl"] if near is not None else [])}
    run.finish(summary_metrics(report), outputs)
    return report


def _process(batch, cfg, exact, near, decon, redactor, pairs, profile, out, removed, counts) -> None:
    counts["rows_in"] += len(batch)
    fields = [text_fields(row.example) for row in batch]
    alive = []
    for row, f in zip(batch, fields):
        first = exact.seen(key_text(f, cfg.key), row.line) if exact is not None else None
        if first is not None:
            removed["exact_duplicate"] += 1
            out.write("removed.jsonl", {"line": row.line, "reason": "exact_duplicate", "duplicate_of": first,
                                        "record": row.record})
        else:
            alive.append((row, f))
    if near is not None and alive:
        verdicts = near.add_batch([r.line for r, _ in alive], [key_text(f, cfg.key) for _, f in alive])
        survivors = []
        for (row, f), verdict in zip(alive, verdicts):
            if verdict is None:
                survivors.append((row, f))
                continue
            removed["near_duplicate"] += 1
            out.write("removed.jsonl", {"line": row.line, "reason": "near_duplicate", "duplicate_of": verdict[0],
                                        "similarity": verdict[1], "record": row.record})
        alive = survivors
    for row, f in alive:
        if decon is not None:
            drop, matches = decon.check(row.line, f)
            for match in matches:
                out.write("contamination.jsonl", match)
            if drop:
                removed["contaminated"] += 1
                out.write("removed.jsonl", {"line": row.line, "reason": "contaminated",
                                            "matches": len(matches), "record": row.record})
                continue
        record = row.record
        if redactor is not None:
            before = sum(redactor.counts.values())
            record = redact_record(record, redactor)
            counts["rows_redacted"] += sum(redactor.counts.values()) > before
        if pairs is not None:
            pairs.add(row.line, f["chosen"], f["rejected"], row.example.metadata)
        profile.add(row.example)
        counts["rows_out"] += 1
        if "clean.jsonl" in out.files:
            out.write("clean.jsonl", record)


def _clusters(near: NearDeduper):
    for cluster in near.clusters.values():
        yield {"representative": cluster.representative, "size": len(cluster.members) + 1,
               "members": [{"line": line, "similarity": s} for line, s in cluster.members]}


def _near_report(near: NearDeduper, removed: Counter) -> dict:
    sizes = Counter(len(c.members) + 1 for c in near.clusters.values())
    largest = sorted(near.clusters.values(), key=lambda c: -len(c.members))[:MAX_CLUSTERS_IN_REPORT]
    return {"threshold": near.threshold, "shingle_size": near.shingle_size, "num_perm": near.num_perm,
            "bands": near.bands, "rows_per_band": near.rows, "representatives": len(near),
            "clusters": len(near.clusters), "rows_removed": removed["near_duplicate"],
            "cluster_sizes": {str(k): v for k, v in sorted(sizes.items())},
            "largest_clusters": [{"representative": c.representative, "size": len(c.members) + 1,
                                  "members": [line for line, _ in c.members[:20]]} for c in largest]}


def summary_metrics(report: dict) -> dict:
    """Flat numbers for manifests and the pipeline's run manifest."""
    metrics = {"rows_in": report["rows_in"], "rows_out": report["rows_out"],
               **{f"removed/{k}": v for k, v in report["removed"].items()}}
    if report.get("decontamination"):
        metrics["decontamination/rows_contaminated"] = report["decontamination"]["rows_contaminated"]
    if report.get("pii"):
        metrics["pii/redactions"] = sum(report["pii"]["counts"].values())
    if report.get("diagnostics"):
        metrics["pairs/chosen_longer_fraction"] = report["diagnostics"]["length"]["chosen_longer_fraction"]
    return metrics
