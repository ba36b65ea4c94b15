"""Hygiene inside ``posttrain run``: the ``data`` stage, and decontamination before every training stage.

``data`` stage config: ``input`` (required) plus any ``HygieneConfig`` key (``exact``, ``near``, ``threshold``,
``decontaminate``, ``remove_contaminated``, ``redact``, ...). Its folder holds ``clean.jsonl`` for the next stage:
``data: {train: ${data.output}/clean.jsonl}``.

Training stages (``sft``, ``dpo``, ``kto``) take one extra key, ``decontaminate``: ``true`` (the default),
``false``, or a mapping of ``DecontaminateSettings``. Before training, the stage's ``data.train`` is checked
against the eval suites; the report goes to ``<stage>/hygiene/`` (a run folder: report.json,
contamination.jsonl, manifest.json), its numbers into the stage's returned metrics (``decontamination/*``), and
its summary into the stage's ``manifest.json`` under ``hygiene``. Rows are removed only with ``remove: true``:
then ``hygiene/clean.jsonl`` is written first and trained on (the trainer is told the folder is a resume, which
with no checkpoint is a fresh start, because the folder is no longer empty).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field

from posttrain.commands import command as training_command
from posttrain.data.writers import atomic_write_json
from posttrain.hygiene.clean import HygieneConfig, run_hygiene, summary_metrics
from posttrain.hygiene.decontam import DEFAULT_MIN_WORDS, DEFAULT_N
from posttrain.pipeline.spec import PipelineError, check_model

HYGIENE_DIR = "hygiene"


class DecontaminateSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    ngram: int = Field(DEFAULT_N, ge=1)
    min_words: int = Field(DEFAULT_MIN_WORDS, ge=1)
    suites: list[str] | None = None
    eval_files: list[str] = Field(default_factory=list)
    fields: list[str] | None = None
    remove: bool = False
    remove_threshold: float = Field(0.0, ge=0.0, le=1.0)


def run_data_stage(params: dict, output_dir: Path, resume: bool) -> dict:
    """The ``data`` pipeline stage (resume just runs the pass again: it is one streaming pass)."""
    params = dict(params)
    source = params.pop("input", None)
    if not source:
        raise PipelineError("config: key 'input' is required (the data file to clean)")
    cfg = check_model(HygieneConfig, {"progress": False, **params}, "")
    report = run_hygiene(str(source), output_dir, cfg, stage="data")
    return summary_metrics(report)


def decontamination_settings(params: dict) -> DecontaminateSettings:
    value = params.get("decontaminate", True)
    if isinstance(value, bool):
        return DecontaminateSettings(enabled=value)
    if not isinstance(value, dict):
        raise PipelineError("config: key 'decontaminate': must be true, false or a mapping")
    return check_model(DecontaminateSettings, value, "decontaminate.")


def decontaminate_then_train(command: str, params: dict, output_dir: Path, resume: bool,
                             train: Callable[[dict, bool], dict],
                             check: Callable[[dict], object] | None = None) -> dict:
    """Decontaminate ``params['data']['train']``, then ``train(params without 'decontaminate', resume)``.
    ``check(params)`` validates the training config first, so a config error is reported before a data error."""
    settings = decontamination_settings(params)
    params = {k: v for k, v in params.items() if k != "decontaminate"}
    if check is not None:
        check(params)
    source = (params.get("data") or {}).get("train")
    if not settings.enabled or not source:
        return train(params, resume)
    cfg = HygieneConfig(kind=training_command(command).data_kind, split=params["data"].get("split"), exact=False, near=False,
                        redact=False, diagnostics=False, decontaminate=True, ngram=settings.ngram,
                        min_words=settings.min_words, suites=settings.suites, eval_files=settings.eval_files,
                        decontaminate_fields=settings.fields, remove_contaminated=settings.remove,
                        remove_threshold=settings.remove_threshold, write_clean=settings.remove, progress=False)
    hygiene_dir = output_dir / HYGIENE_DIR
    if settings.remove:
        # Trained on, so it must live in the stage folder before training starts.
        report = run_hygiene(source, hygiene_dir, cfg, stage="decontaminate")
        params = {**params, "data": {**params["data"], "train": str(hygiene_dir / "clean.jsonl")}}
        metrics = train(params, True)
    else:
        # Report only: written next to the model once training is done (the trainer wants an empty folder).
        # The system temp folder, not the run folder: a killed run must not leave debris next to its stages.
        with tempfile.TemporaryDirectory(prefix="posttrain-hygiene-") as tmp:
            report = run_hygiene(source, Path(tmp) / HYGIENE_DIR, cfg, stage="decontaminate")
            metrics = train(params, resume)
            if hygiene_dir.exists():
                shutil.rmtree(hygiene_dir)
            shutil.move(str(Path(tmp) / HYGIENE_DIR), str(hygiene_dir))
    _record_in_manifest(output_dir, report)
    decon = report["decontamination"]
    return {**metrics, "decontamination/rows_checked": decon["rows_checked"],
            "decontamination/rows_contaminated": decon["rows_contaminated"],
            "decontamination/rows_removed": decon["rows_removed"]}


def _record_in_manifest(output_dir: Path, report: dict) -> None:
    path = output_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    decon = dict(report["decontamination"])
    decon.pop("matches", None)  # the full list is in hygiene/contamination.jsonl
    manifest["hygiene"] = {"report": f"{HYGIENE_DIR}/report.json",
                           "contamination": f"{HYGIENE_DIR}/contamination.jsonl", "decontamination": decon}
    atomic_write_json(path, manifest)
