"""Run a pipeline: stages in dependency order, each in ``run_dir/<name>-<key12>``, skipped when already complete.

A stage's key is sha256 over its command, its config with ``${stage.output}`` replaced by the upstream stage's
*key* (not its folder, so keys do not depend on where the run lives), the content hashes of its input files, and
the posttrain version. Changing a value changes that stage's key and, through references, every dependent's key;
everything else keeps its folder and is skipped. A folder without a completion marker is a killed attempt: the
stage runs again with ``resume=True``. ``force`` removes the folders of the named stages and their dependents.

Run-level records: ``run_dir/manifest.json`` (per stage: key, folder, status, wall time, metrics, inputs with
hashes; package versions, git sha), rewritten atomically after every stage, and ``run_dir/latest/<name>`` links.
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

from posttrain.data.writers import atomic_write_json
from posttrain.pipeline.registry import STAGES, StageSpec
from posttrain.pipeline.spec import (
    PipelineError,
    PipelineSpec,
    dependencies,
    downstream,
    substitute,
    topological_order,
)
from posttrain.data.runfolder import content_hash, git_sha, package_versions

STAGE_RECORD = "stage.json"  # written by the runner into a stage's folder after the stage succeeded


@dataclass
class StagePlan:
    name: str
    command: str
    after: list[str]
    key: str
    folder: Path
    params: dict[str, Any]  # the config with references replaced by upstream folders
    input_hashes: dict[str, str | None] = field(default_factory=dict)  # inputs outside the run, hashed


def stage_key(command: str, config: dict, upstream_keys: dict[str, str], input_hashes: dict[str, str | None],
              version: str) -> str:
    """The cache key of one stage (hex sha256); a pure function of its arguments."""
    resolved = substitute(config, {name: f"<stage:{key}>" for name, key in upstream_keys.items()})
    payload = json.dumps({"command": command, "config": resolved, "inputs": input_hashes, "version": version},
                         sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def plan_pipeline(spec: PipelineSpec, registry: dict[str, StageSpec] = STAGES,
                  hasher: Callable[[str], str | None] = content_hash, version: str | None = None) -> list[StagePlan]:
    """Every stage's key, folder and resolved params, in run order. Inputs produced by upstream stages are not
    hashed here (they do not exist yet; the upstream key stands for them)."""
    if version is None:
        from posttrain import __version__ as version
    for name, entry in spec.stages.items():
        if entry.command not in registry:
            raise PipelineError(f"stages.{name}.command: unknown command '{entry.command}' "
                                f"(expected one of {', '.join(registry)})")
    deps = dependencies(spec.stages)
    run_dir = Path(spec.run_dir)
    plans: dict[str, StagePlan] = {}
    for name in topological_order(deps):
        entry = spec.stages[name]
        upstream = {d: plans[d] for d in deps[name]}
        params = substitute(entry.config, {d: str(p.folder) for d, p in upstream.items()})
        produced = [str(p.folder) for p in upstream.values()]
        hashes = {path: hasher(path) for path in registry[entry.command].inputs(params)
                  if not any(path == f or path.startswith(f + os.sep) for f in produced)}
        key = stage_key(entry.command, entry.config, {d: p.key for d, p in upstream.items()}, hashes, version)
        plans[name] = StagePlan(name, entry.command, deps[name], key, run_dir / f"{name}-{key[:12]}", params, hashes)
    return list(plans.values())


def completed(folder: Path, spec: StageSpec) -> bool:
    """The stage's completion marker: the runner's stage.json, or (stages with a run folder) a completed manifest."""
    if (folder / STAGE_RECORD).exists():
        return True
    if spec.marker == "manifest" and (folder / "manifest.json").exists():
        try:
            return json.loads((folder / "manifest.json").read_text()).get("status") == "completed"
        except (OSError, json.JSONDecodeError):
            return False
    return False


def _read_record(folder: Path) -> dict[str, Any]:
    for name in (STAGE_RECORD, "manifest.json"):
        try:
            return json.loads((folder / name).read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return {}


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
    plans = plan_pipeline(spec, registry)
    deps = {p.name: p.after for p in plans}
    force = list(force)
    for name in force:
        if name not in deps:
            raise PipelineError(f"--force {name}: unknown stage (stages: {', '.join(deps)})")
    forced = downstream(deps, force)
    run_dir = Path(spec.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"run_dir": str(run_dir), "started_at": _now(), "status": "running",
                                "forced": sorted(forced), "versions": package_versions(), "git_sha": git_sha(),
                                "order": [p.name for p in plans], "stages": {}}
    say = echo or (lambda _: None)
    for plan in plans:
        stage = registry[plan.command]
        entry: dict[str, Any] = {"command": plan.command, "after": plan.after, "key": plan.key,
                                 "folder": str(plan.folder)}
        manifest["stages"][plan.name] = entry
        if plan.name in forced and plan.folder.exists():
            shutil.rmtree(plan.folder)
        if completed(plan.folder, stage):
            record = _read_record(plan.folder)
            entry.update(status="skipped", wall_time_s=record.get("wall_time_s"), metrics=record.get("metrics", {}),
                         inputs=record.get("inputs", {}))
            say(f"{plan.name}: skipped (complete in {plan.folder})")
        else:
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
            inputs = {path: {"hash": content_hash(path)} for path in stage.inputs(plan.params)}
            entry.update(status="done", resumed=resume, wall_time_s=round(time.time() - t0, 2), metrics=metrics,
                         inputs=inputs)
            atomic_write_json(plan.folder / STAGE_RECORD, {
                "stage": plan.name, "command": plan.command, "key": plan.key, "config": plan.params,
                "inputs": inputs, "metrics": metrics, "wall_time_s": entry["wall_time_s"], "resumed": resume,
                "finished_at": _now(), "versions": manifest["versions"], "git_sha": manifest["git_sha"]})
        entry["main_metric"] = _main_metric(stage, entry.get("metrics") or {})
        _link_latest(run_dir, plan.name, plan.folder)
        atomic_write_json(run_dir / "manifest.json", manifest)
    manifest.update(status="completed", finished_at=_now())
    atomic_write_json(run_dir / "manifest.json", manifest)
    _report(run_dir, say)
    return manifest


def _report(run_dir: Path, say: Callable[[str], None]) -> None:
    from posttrain.report import write_report

    try:
        say(f"report: {write_report(run_dir)}")
    except Exception as e:  # the report must never hide the run's own outcome
        say(f"report: not written ({type(e).__name__}: {e})")
