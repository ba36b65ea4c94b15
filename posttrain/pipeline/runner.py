"""Run a pipeline: stages in dependency order, each in ``run_dir/<name>-<key12>``, skipped when already complete.

A stage's key is sha256 over its command, its config with ``${stage.output}`` replaced by the upstream stage's
*key* (not its folder, so keys do not depend on where the run lives), the content hashes of its input files, and
the posttrain version. Changing a value changes that stage's key and, through references, every dependent's key;
everything else keeps its folder and is skipped. ``force`` removes the folders of the named stages and their
dependents.

Every stage's config is checked (``StageSpec.check``) before the first stage runs, so a typo in the last stage
costs nothing. A stage is complete when its folder holds the runner's ``stage.json``, written after the stage
succeeded with the size and sha256 of every file the stage wrote (``outputs``) and of every input it read
(``inputs``, upstream outputs included). Before skipping, both are checked again: a finished output that was
truncated, edited or removed, or an input that changed since (an upstream stage recomputed to different bytes),
means the folder is removed and the stage recomputed, with one line saying which file. A folder without
``stage.json`` is a killed attempt: the stage runs again with ``resume=True`` (unless its own manifest says it
completed: then its outputs were never recorded, and it is recomputed).

A stage with a ``when`` condition (``spec.Condition``; the rounds of ``rounds.py`` use it to stop early) runs only
if the condition holds on the metrics its stage recorded in this run; otherwise it is *not run* (status
``not run`` and the reason in the manifest), and so is every stage that depends on it, except a stage whose
``StageSpec.tolerates_not_run`` (the best_round stage: it picks among the rounds that ran). A folder an earlier
run left for a stage that is not run now is kept (a later run whose condition holds skips it) but is no longer
named in the manifest or under ``latest/``.

Run-level records: ``run_dir/manifest.json`` (per stage: key, folder, status, wall time, metrics, inputs with
hashes; package versions, git sha, the code fingerprint), rewritten atomically after every stage, and
``run_dir/latest/<name>`` links.

The key holds the version string, not the code: a stage finished by other posttrain code (an upgrade or a checkout
that kept the version string) is still skipped, but ``stage.json`` records the fingerprint of the code that made it
(``runfolder.code_fingerprint``) and the skip line says when it differs from this install's (or was not recorded),
naming ``--force`` to recompute; the manifest entry keeps it as ``made_by_code``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from posttrain import __version__
from posttrain.data.writers import OutputPathError, atomic_write_json, check_output_path
from posttrain.feedback.store import FeedbackStore, StoreError, store_exists
from posttrain.pipeline.registry import STAGES, STORE_INPUT, StageSpec
from posttrain.pipeline.spec import (
    PipelineError,
    Condition,
    PipelineSpec,
    dependencies,
    downstream,
    substitute,
    topological_order,
)
from posttrain.data.runfolder import code_fingerprint, content_hash, git_sha, package_versions
from posttrain.report import write_report

STAGE_RECORD = "stage.json"  # written by the runner into a stage's folder after the stage succeeded
NOT_RUN = "not run"  # the manifest status of a stage whose `when` condition (or an upstream's) did not hold


@dataclass
class StagePlan:
    name: str
    command: str
    after: list[str]
    key: str
    folder: Path
    params: dict[str, Any]  # the config with references replaced by upstream folders
    input_hashes: dict[str, str | None] = field(default_factory=dict)  # inputs outside the run, hashed
    when: Condition | None = None


def input_hash(path: str) -> str | None:
    """The content hash of a stage input: a file or folder (``content_hash``), or a feedback store's snapshot
    (``STORE_INPUT`` + URL: the hash of its export, ``FeedbackStore.snapshot_hash``; None for a SQLite store that
    does not exist yet, which is not created here; a store that cannot be opened is a ``PipelineError``)."""
    if path.startswith(STORE_INPUT):
        url = path[len(STORE_INPUT):]
        try:
            return FeedbackStore(url).snapshot_hash() if store_exists(url) else None
        except StoreError as e:
            raise PipelineError(f"feedback store: {e}") from None
    return content_hash(path)


def stage_key(command: str, config: dict, upstream_keys: dict[str, str], input_hashes: dict[str, str | None],
              version: str) -> str:
    """The cache key of one stage (hex sha256); a pure function of its arguments."""
    resolved = substitute(config, {name: f"<stage:{key}>" for name, key in upstream_keys.items()})
    payload = json.dumps({"command": command, "config": resolved, "inputs": input_hashes, "version": version},
                         sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def plan_pipeline(spec: PipelineSpec, registry: dict[str, StageSpec] = STAGES,
                  hasher: Callable[[str], str | None] | None = None, version: str | None = None) -> list[StagePlan]:
    """Every stage's key, folder and resolved params, in run order. Each stage's config is checked
    (``StageSpec.check``) before its inputs are read, so a config error anywhere fails before any stage runs.
    Inputs produced by upstream stages are not hashed here (they may not exist yet; the upstream key stands for
    them)."""
    hasher = hasher or input_hash
    if version is None:
        version = __version__
    for name, entry in spec.stages.items():
        if entry.command not in registry:
            raise PipelineError(f"stages.{name}.command: unknown command '{entry.command}' "
                                f"(expected one of {', '.join(registry)})")
    deps = dependencies(spec.stages)
    run_dir = Path(spec.run_dir)
    plans: dict[str, StagePlan] = {}
    for name in topological_order(deps):
        entry, stage = spec.stages[name], registry[spec.stages[name].command]
        upstream = {d: plans[d] for d in deps[name]}
        params = substitute(entry.config, {d: str(p.folder) for d, p in upstream.items()})
        produced = [str(p.folder) for p in plans.values()]

        def pending(path: str, produced: list[str] = produced) -> bool:
            return any(str(path) == f or str(path).startswith(f + os.sep) for f in produced)

        if stage.check is not None:
            try:
                stage.check(params, pending)
            except PipelineError as e:  # stage messages start with "config: ..."; name the stage
                raise PipelineError(f"stages.{name}.{e}") from None
        hashes = {path: hasher(path) for path in stage.inputs(params) if not pending(path)}
        key = stage_key(entry.command, entry.config, {d: p.key for d, p in upstream.items()}, hashes, version)
        plans[name] = StagePlan(name, entry.command, deps[name], key, run_dir / f"{name}-{key[:12]}", params, hashes,
                                entry.when)
    return list(plans.values())


# Not outputs: the runner's record itself, the stage's manifest (a gate adds its verdicts to the eval's manifest
# after the eval finished) and training checkpoints (resume state; nothing reads them once the stage is done).
_NOT_OUTPUTS = (STAGE_RECORD, "manifest.json")
_NOT_OUTPUT_DIRS = ("checkpoints",)


def output_files(folder: Path) -> list[Path]:
    """The files a finished stage wrote into ``folder`` that later runs verify, sorted."""
    out = []
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder)
        if f.is_file() and not (len(rel.parts) == 1 and rel.name in _NOT_OUTPUTS) \
                and rel.parts[0] not in _NOT_OUTPUT_DIRS:
            out.append(f)
    return out


def record_outputs(folder: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {size, hash}}`` of every output file (hashing reads each file once)."""
    return {str(f.relative_to(folder)): {"size": f.stat().st_size, "hash": content_hash(f)}
            for f in output_files(folder)}


def _short(digest: str | None) -> str:
    return "none" if digest is None else digest[:19]  # "sha256:" + 12 hex digits


def outputs_problem(folder: Path, outputs: dict[str, dict[str, Any]],
                    hasher: Callable[[str], str | None] = content_hash) -> str | None:
    """Why ``folder``'s recorded outputs can no longer be trusted (one line naming the file), or None. The size is
    compared first so a truncated model file costs no hashing."""
    for rel, rec in outputs.items():
        f = folder / rel
        if not f.is_file():
            return f"{f} is missing since the stage finished"
        size = f.stat().st_size
        if size != rec["size"]:
            return f"{f} changed since the stage finished ({size} bytes, {rec['size']} recorded)"
        digest = hasher(str(f))
        if digest != rec["hash"]:
            return f"{f} changed since the stage finished (hash {_short(digest)}, {_short(rec['hash'])} recorded)"
    return None


def inputs_problem(inputs: dict[str, dict[str, Any]], hasher: Callable[[str], str | None]) -> str | None:
    """Why an input recorded when the stage ran no longer matches (one line naming it), or None."""
    for path, rec in inputs.items():
        digest = hasher(path)
        if digest != rec.get("hash"):
            return f"input {path} changed since the stage ran (hash {_short(digest)}, {_short(rec.get('hash'))} " \
                   "recorded)"
    return None


def read_record(folder: Path) -> dict[str, Any] | None:
    """The runner's ``stage.json`` of ``folder``; None when absent or unreadable."""
    try:
        record = json.loads((folder / STAGE_RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def stale_reason(folder: Path, hasher: Callable[[str], str | None]) -> str | None:
    """None when ``folder`` holds a finished stage whose outputs and inputs are as recorded; otherwise why it must
    be recomputed, or ``""`` when there is nothing finished there (absent, empty, or a killed attempt)."""
    record = read_record(folder)
    if record is None:
        if (folder / STAGE_RECORD).exists():
            return f"{folder / STAGE_RECORD} is unreadable"
        if _manifest_completed(folder):
            return f"{folder} finished without a stage record (its outputs were never recorded)"
        return ""
    if not isinstance(record.get("outputs"), dict):
        return f"{folder / STAGE_RECORD} records no output hashes (written by an older posttrain)"
    return outputs_problem(folder, record["outputs"], hasher) or inputs_problem(record.get("inputs") or {}, hasher)


def _manifest_completed(folder: Path) -> bool:
    try:
        return json.loads((folder / "manifest.json").read_text()).get("status") == "completed"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def condition_reason(when: Condition, metrics: dict[str, Any]) -> str | None:
    """None when ``when`` holds on ``metrics`` (what ``when.stage`` recorded), else why not, in one line. A metric
    the stage did not record is a PipelineError (a misspelt name must not pass for "did not improve")."""
    for key in (when.metric, when.baseline):
        if key not in metrics:
            raise PipelineError(f"when: stage {when.stage} recorded no metric '{key}' (it has: "
                                f"{', '.join(sorted(metrics)[:10])}{', ...' if len(metrics) > 10 else ''})")
    value, base = metrics[when.metric], metrics[when.baseline]
    if value is not None and base is not None and value - base > when.min_gain:
        return None

    def show(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, (int, float)) else str(v)

    return (f"{when.stage} did not improve {when.metric} by more than {when.min_gain:g} "
            f"({show(base)} -> {show(value)})")


def not_run_reason(plan: StagePlan, stage: StageSpec, entries: dict[str, dict[str, Any]]) -> str | None:
    """Why ``plan`` is not run in this run (an upstream stage was not run, or its ``when`` does not hold), or
    None. The reason of a stage left out because of an upstream one is that upstream's reason."""
    for up in plan.after:
        if entries[up].get("status") == NOT_RUN and (not stage.tolerates_not_run or
                                                    (plan.when is not None and up == plan.when.stage)):
            return entries[up]["reason"]
    return condition_reason(plan.when, entries[plan.when.stage].get("metrics") or {}) if plan.when else None


def _link_latest(run_dir: Path, name: str, folder: Path) -> None:
    latest = run_dir / "latest"
    latest.mkdir(parents=True, exist_ok=True)
    tmp = latest / f".{name}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.relpath(folder, latest), tmp)
    os.replace(tmp, latest / name)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _main_metric(spec: StageSpec, metrics: dict[str, Any]) -> list | None:
    if spec.main_metric is None:
        return None
    for key in (spec.main_metric, f"train/{spec.main_metric}"):
        if key in metrics:
            return [key, metrics[key]]
    return None


def run_pipeline(spec: PipelineSpec, force: Iterable[str] = (), registry: dict[str, StageSpec] = STAGES,
                 echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or skip) every stage; returns the run manifest, also written to ``run_dir/manifest.json``. A stage
    that raises is recorded as failed, the manifest is written, and the error propagates (dependents do not run)."""
    plans = plan_pipeline(spec, registry)  # checks every stage's config: an error writes nothing
    deps = {p.name: p.after for p in plans}
    force = list(force)
    for name in force:
        if name not in deps:
            raise PipelineError(f"--force {name}: unknown stage (stages: {', '.join(deps)})")
    forced = downstream(deps, force)
    run_dir = Path(spec.run_dir)
    try:  # a run_dir that is a file, inside a file or unwritable: one line now, not a traceback after stage 1
        check_output_path(run_dir, "run_dir")
    except OutputPathError as e:
        raise PipelineError(str(e)) from None
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"run_dir": str(run_dir), "started_at": _now(), "status": "running",
                                "forced": sorted(forced), "versions": package_versions(), "git_sha": git_sha(),
                                "code": code_fingerprint(), "order": [p.name for p in plans], "stages": {}}
    say = echo or (lambda _: None)
    hashes: dict[str, str | None] = {}  # content hashes of inputs, computed once until a stage writes something

    def hasher(path: str) -> str | None:
        if path not in hashes:
            hashes[path] = input_hash(path)
        return hashes[path]

    for plan in plans:
        stage = registry[plan.command]
        entry: dict[str, Any] = {"command": plan.command, "after": plan.after, "key": plan.key,
                                 "folder": str(plan.folder)}
        manifest["stages"][plan.name] = entry
        try:
            why = not_run_reason(plan, stage, manifest["stages"])
        except PipelineError as e:
            entry.update(status="failed", error=f"PipelineError: stages.{plan.name}.{e}")
            manifest.update(status="failed", finished_at=_now())
            atomic_write_json(run_dir / "manifest.json", manifest)
            raise PipelineError(f"stages.{plan.name}.{e}") from None
        if why is not None:
            del entry["folder"]  # an earlier run's folder may be there; it is not this run's output
            latest = run_dir / "latest" / plan.name
            if latest.is_symlink():
                latest.unlink()
            entry.update(status=NOT_RUN, reason=why, main_metric=None)
            say(f"{plan.name}: not run: {why}")
            atomic_write_json(run_dir / "manifest.json", manifest)
            continue
        if plan.name in forced and plan.folder.exists():
            shutil.rmtree(plan.folder)
        reason = stale_reason(plan.folder, hasher)
        if reason is None:
            record = read_record(plan.folder) or {}
            entry.update(status="skipped", wall_time_s=record.get("wall_time_s"), metrics=record.get("metrics", {}),
                         inputs=record.get("inputs", {}))
            made_by = record.get("code")
            if made_by == manifest["code"]:
                say(f"{plan.name}: skipped (complete in {plan.folder})")
            else:
                entry["made_by_code"] = made_by
                say(f"{plan.name}: skipped (complete in {plan.folder}), but made by other posttrain code "
                    f"({made_by or 'not recorded'}; this install: {manifest['code']}): --force {plan.name} "
                    "recomputes it and its dependents")
        else:
            if reason:  # a finished stage that no longer matches its record: start it over, not resume it
                say(f"{plan.name}: {reason}: recomputing")
                shutil.rmtree(plan.folder)
            entry.update(_run_stage(plan, stage, run_dir, manifest, entry, say))
            hashes.clear()
        entry["main_metric"] = _main_metric(stage, entry.get("metrics") or {})
        _link_latest(run_dir, plan.name, plan.folder)
        atomic_write_json(run_dir / "manifest.json", manifest)
    manifest.update(status="completed", finished_at=_now())
    atomic_write_json(run_dir / "manifest.json", manifest)
    _report(run_dir, say)
    return manifest


def _run_stage(plan: StagePlan, stage: StageSpec, run_dir: Path, manifest: dict[str, Any], entry: dict[str, Any],
               say: Callable[[str], None]) -> dict[str, Any]:
    """Run one stage into its folder and write its ``stage.json``; returns the manifest entry's new fields."""
    resume = plan.folder.exists() and any(plan.folder.iterdir())
    plan.folder.mkdir(parents=True, exist_ok=True)
    say(f"{plan.name}: {'resuming' if resume else 'running'} {plan.command} in {plan.folder}")
    entry["status"] = "running"  # what a killed run leaves in the manifest
    atomic_write_json(run_dir / "manifest.json", manifest)
    t0 = time.time()
    try:
        try:
            metrics = stage.run(plan.params, plan.folder, resume) or {}
        except PipelineError as e:  # stage messages start with "config: ..."; name the stage
            raise PipelineError(f"stages.{plan.name}.{e}") from None
    except BaseException as e:
        entry.update(status="failed", wall_time_s=round(time.time() - t0, 2),
                     error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        manifest.update(status="failed", finished_at=_now())
        atomic_write_json(run_dir / "manifest.json", manifest)
        _report(run_dir, say)  # a failed gate is exactly when the report is read
        raise
    wall = round(time.time() - t0, 2)
    inputs = {path: {"hash": input_hash(path)} for path in stage.inputs(plan.params)}
    atomic_write_json(plan.folder / STAGE_RECORD, {
        "stage": plan.name, "command": plan.command, "key": plan.key, "config": plan.params,
        "inputs": inputs, "outputs": record_outputs(plan.folder), "metrics": metrics, "wall_time_s": wall,
        "resumed": resume, "finished_at": _now(), "versions": manifest["versions"], "git_sha": manifest["git_sha"],
        "code": manifest["code"]})
    return {"status": "done", "resumed": resume, "wall_time_s": wall, "metrics": metrics, "inputs": inputs}


def _report(run_dir: Path, say: Callable[[str], None]) -> None:
    try:
        say(f"report: {write_report(run_dir)}")
    except Exception as e:  # the report must never hide the run's own outcome
        say(f"report: not written ({type(e).__name__}: {e})")
