"""Promote a pipeline stage's model to a serving folder, only when the run's gates for it passed.

``posttrain promote RUN_DIR --stage merge --to serving/``:

1. reads ``RUN_DIR/manifest.json``; the stage must have finished (``done`` or ``skipped``) and have a ``model``
   folder; its gates are the ``gate`` stages connected to it through the dependencies (upstream, as in
   ``dpo -> eval -> gate -> merge``, or downstream); there must be at least one, and every one must have passed in
   this run. Anything else is a ``PromotionError`` naming the stage and why, and nothing is copied;
2. copies the model into ``serving/models/<stage>-<key12>/`` (into a temporary folder, renamed when complete) with
   ``promotion.json`` (run, stage, key, the gates and their metrics, time), unless that exact model is there already;
3. points ``serving/current`` at it by replacing a symlink atomically, so a server started on ``serving/current``
   loads the promoted model on its next reload (``posttrain serve`` reloads on SIGHUP or ``POST /admin/reload``)
   and never sees a half-copied folder.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from posttrain.data.runfolder import PROMOTION
from posttrain.models.resolve import ModelError, resolve_model_path

class PromotionError(ValueError):
    """A stage that may not (or cannot) be promoted; ``str()`` is one line."""


def _connected(stages: dict[str, Any], name: str) -> set[str]:
    """Every stage upstream or downstream of ``name`` (its ``after`` lists, transitively)."""
    deps = {n: set(s.get("after") or []) for n, s in stages.items()}
    found, todo = set(), [name]
    while todo:  # upstream
        for d in deps.get(todo.pop(), ()):
            if d not in found:
                found.add(d)
                todo.append(d)
    down, todo = set(), [name]
    while todo:  # downstream
        cur = todo.pop()
        for n, ds in deps.items():
            if cur in ds and n not in down:
                down.add(n)
                todo.append(n)
    return found | down


def check_promotable(run_dir: Path, stage: str) -> tuple[dict[str, Any], Path, list[dict[str, Any]]]:
    """(the stage's manifest entry, its model folder, its gates) or ``PromotionError``."""
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise PromotionError(f"{run_dir}: no readable manifest.json ({e}); is it a `posttrain run` folder?") from None
    stages = manifest.get("stages") or {}
    if stage not in stages:
        failed = next((n for n, s in stages.items() if s.get("status") == "failed"), None)
        why = (f"; the run stopped at stage '{failed}': {stages[failed].get('error') or 'failed'}" if failed
               else f" (stages: {', '.join(stages) or 'none'})")
        raise PromotionError(f"{run_dir}: stage '{stage}' did not run{why}")
    entry = stages[stage]
    if entry.get("status") not in ("done", "skipped"):
        raise PromotionError(f"stage '{stage}' did not finish in this run (status: {entry.get('status')})")
    folder = Path(entry["folder"])
    if not folder.exists():  # the manifest names folders as the run saw them; the run may have been moved
        folder = run_dir / folder.name
    model = folder / "model"
    if not (model / "config.json").is_file() and not (model / "adapter_config.json").is_file():
        raise PromotionError(f"stage '{stage}' has no model folder at {model}")
    gates = [dict(stages[n], name=n) for n in sorted(_connected(stages, stage) & set(stages))
             if stages[n].get("command") == "gate"]
    if not gates:
        raise PromotionError(f"stage '{stage}' has no gate stage before or after it in this run: add a gate "
                             "(examples/gates.yaml) so that only a measured model is promoted")
    failed = [g for g in gates if g.get("status") not in ("done", "skipped")]
    if failed:
        g = failed[0]
        raise PromotionError(f"gate '{g['name']}' did not pass ({g.get('status')}"
                             + (f": {g['error']}" if g.get("error") else "") + f"); stage '{stage}' is not promoted")
    return entry, model, gates


def promote(run_dir: str | Path, stage: str, serving_dir: str | Path) -> Path:
    """Copy the stage's model into ``serving_dir/models/`` and point ``serving_dir/current`` at it (module
    docstring); returns the promoted folder."""
    run_dir, serving_dir = Path(run_dir), Path(serving_dir)
    entry, model, gates = check_promotable(run_dir, stage)
    name = f"{stage}-{str(entry.get('key', 'nokey'))[:12]}"
    models = serving_dir / "models"
    target = models / name
    if not (target / PROMOTION).is_file():
        models.mkdir(parents=True, exist_ok=True)
        tmp = models / f".{name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(model, tmp, symlinks=False)
        record = {"id": name, "run_dir": str(run_dir), "stage": stage, "key": entry.get("key"),
                  "source": str(model), "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "gates": [{"name": g["name"], "status": g.get("status"), "metrics": g.get("metrics")} for g in gates]}
        (tmp / PROMOTION).write_text(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    link, tmp_link = serving_dir / "current", serving_dir / f".current.{os.getpid()}.tmp"
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    os.symlink(Path("models") / name, tmp_link)
    os.replace(tmp_link, link)  # atomic: a reader sees the old model or the new one
    return target



def deploy_base(model_name: str, serving_dir: str | Path) -> Path:
    """The first deploy of a serving folder: an untrained model (a builtin name or a local folder) becomes
    ``serving/models/base-<name>`` and ``current``. Only into a serving folder with no ``current`` yet: after that,
    models arrive through ``promote`` and its gates."""
    serving_dir = Path(serving_dir)
    link = serving_dir / "current"
    if link.is_symlink() or link.exists():
        raise PromotionError(f"{link} exists: a serving folder takes an untrained base once, then promoted models "
                             "(posttrain promote RUN_DIR --stage STAGE)")
    try:
        source = Path(resolve_model_path(model_name))
    except ModelError as e:
        raise PromotionError(str(e)) from None
    if not source.is_dir():
        raise PromotionError(f"model '{model_name}' is not a local folder (download it first)")
    name = "base-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(model_name).name)
    models = serving_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    tmp = models / f".{name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("checkpoints"))
    (tmp / PROMOTION).write_text(json.dumps({"id": name, "base": model_name, "source": str(source), "gates": [],
                                             "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                            indent=2) + "\n")
    target = models / name
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    os.symlink(Path("models") / name, link)
    return target


def promoted_stage(run_dir: Path, model: str | Path) -> str:
    """The name of the run's stage whose folder holds ``model`` (a ``promote`` stage's ``${merge.output}/model``)."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    model = Path(model).resolve()
    for name, entry in (manifest.get("stages") or {}).items():
        folder = entry.get("folder")
        if folder and (model == Path(folder).resolve() or Path(folder).resolve() in model.parents):
            return name
    raise PromotionError(f"promote: model {model} is not the output of a stage of this run: give "
                         "${STAGE.output}/model (e.g. ${merge.output}/model)")


def run_promote_stage(params: dict, output_dir: Path, resume: bool) -> dict:
    """The pipeline's ``promote`` stage: ``posttrain promote`` for the stage whose model ``params["model"]`` is,
    into ``params["to"]``, with the same gate rule (every gate connected to that stage passed in this run; put
    the promote stage after the gate). ``promotion.json`` is also kept in the stage's folder."""
    run_dir = output_dir.parent
    stage = promoted_stage(run_dir, params["model"])
    target = promote(run_dir, stage, params["to"])
    record = json.loads((target / PROMOTION).read_text())
    (output_dir / PROMOTION).write_text(json.dumps(record, indent=2) + "\n")
    return {"promoted": 1, "gates": len(record.get("gates") or [])}
