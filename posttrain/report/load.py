"""Read what a pipeline run folder holds into plain dicts for the report. Nothing here raises on a missing or
broken file: a part that cannot be read is ``None`` (or empty) and the report says "not in this run".

A run folder is ``RUN_DIR/manifest.json`` (from ``posttrain run``) plus ``RUN_DIR/<stage>-<key12>/`` folders. A
stage folder recorded in the manifest under an absolute path that no longer exists (the run was moved) is looked
up by its name inside ``RUN_DIR``. Without a manifest, stage folders are found by name and their files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

TRAINING = ("sft", "dpo", "kto", "reward_model", "ppo", "grpo", "rejection_sft", "online_dpo")
_STAGE_DIR = re.compile(r"^(?P<name>.+)-[0-9a-f]{12}$")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path, limit: int = 200_000) -> list[dict]:
    """Rows of a JSONL file; unparseable lines and non-object rows are skipped, a missing file is ``[]``."""
    rows: list[dict] = []
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if len(rows) >= limit:
                    break
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except OSError:
        return []
    return rows


def _guess_command(folder: Path, name: str) -> str:
    for command, marker in (("gate", "gates.json"), ("eval", "responses.jsonl"), ("judge", "summary.json"),
                            ("generate", "candidates.jsonl")):
        if (folder / marker).exists():
            return command
    return name if name in TRAINING else ("sft" if (folder / "metrics.jsonl").exists() else name)


def _folder(run_dir: Path, recorded: str | None, name: str) -> Path | None:
    if recorded:
        path = Path(recorded)
        if path.is_dir():
            return path
        if (run_dir / path.name).is_dir():
            return run_dir / path.name
    latest = run_dir / "latest" / name
    return latest if latest.is_dir() else None


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """``{"run_dir", "manifest", "stages": [stage dicts in run order]}``. A stage dict holds ``name``,
    ``command``, ``status``, ``wall_time_s``, ``main_metric`` (``[key, value]`` or ``None``), ``metrics``,
    ``error``, ``folder`` (a Path or ``None``) and the stage's own files: ``train_rows``/``eval_rows``
    (training), ``summary`` and ``pairs`` (judge), ``eval_metrics`` and ``responses`` (eval), ``gates``."""
    run_dir = Path(run_dir)
    manifest = read_json(run_dir / "manifest.json")
    manifest = manifest if isinstance(manifest, dict) else None
    stages: list[dict[str, Any]] = []
    if manifest and isinstance(manifest.get("stages"), dict):
        order = [n for n in manifest.get("order") or [] if n in manifest["stages"]]
        order += [n for n in manifest["stages"] if n not in order]
        for name in order:
            entry = manifest["stages"][name] if isinstance(manifest["stages"][name], dict) else {}
            stages.append({"name": name, "command": entry.get("command") or name,
                           "status": entry.get("status", "?"), "wall_time_s": entry.get("wall_time_s"),
                           "main_metric": entry.get("main_metric"), "metrics": entry.get("metrics") or {},
                           "error": entry.get("error"), "folder": _folder(run_dir, entry.get("folder"), name)})
    elif run_dir.is_dir():
        for folder in sorted(p for p in run_dir.iterdir() if p.is_dir() and _STAGE_DIR.match(p.name)):
            name = _STAGE_DIR.match(folder.name)["name"]
            record = read_json(folder / "stage.json") or read_json(folder / "manifest.json") or {}
            record = record if isinstance(record, dict) else {}
            stages.append({"name": name, "command": record.get("command") or _guess_command(folder, name),
                           "status": record.get("status", "done" if record else "?"),
                           "wall_time_s": record.get("wall_time_s"), "main_metric": None,
                           "metrics": record.get("metrics") or {}, "error": None, "folder": folder})
    for stage in stages:
        _load_stage_files(stage)
    return {"run_dir": run_dir, "manifest": manifest, "stages": stages}


def _load_stage_files(stage: dict[str, Any]) -> None:
    folder: Path | None = stage["folder"]
    command = stage["command"]
    stage.update(train_rows=[], eval_rows=[], summary=None, pairs=[], eval_metrics=None, responses=[], gates=None,
                 config_text=None)
    if folder is None:
        return
    if command in TRAINING or (folder / "metrics.jsonl").exists():
        try:
            stage["config_text"] = (folder / "config.yaml").read_text()
        except OSError:
            stage["config_text"] = None
        rows = read_jsonl(folder / "metrics.jsonl")
        stage["train_rows"] = [r for r in rows if r.get("split", "train") == "train"]
        stage["eval_rows"] = [r for r in rows if r.get("split") == "eval"]
    if command == "judge" or (folder / "summary.json").exists():
        summary = read_json(folder / "summary.json")
        stage["summary"] = summary if isinstance(summary, dict) else None
        stage["pairs"] = read_jsonl(folder / "pairs.jsonl", limit=50_000)
    if command == "eval" or (folder / "responses.jsonl").exists():
        metrics = read_json(folder / "metrics.json")
        stage["eval_metrics"] = metrics if isinstance(metrics, dict) else None
        stage["responses"] = read_jsonl(folder / "responses.jsonl")
    if command == "gate" or (folder / "gates.json").exists():
        gates = read_json(folder / "gates.json")
        stage["gates"] = gates if isinstance(gates, dict) else None


def main_metric(stage: dict[str, Any]) -> tuple[str, Any] | None:
    """The manifest's main metric, else a sensible one from the stage's metrics (eval has none recorded)."""
    main = stage.get("main_metric")
    if isinstance(main, (list, tuple)) and len(main) == 2:
        return str(main[0]), main[1]
    results = gate_results(stage)
    if results:
        return "gates passed", f"{sum(r.get('passed') is True for r in results)}/{len(results)}"
    metrics = stage.get("eval_metrics") or stage.get("metrics") or {}
    for key in ("winrate/win_rate", "constraints/pass_rate", "capability/accuracy", "train/loss", "loss",
                "pairs_kept", "gates_passed"):
        if key in metrics:
            return key, metrics[key]
    return None


def gate_results(stage: dict[str, Any]) -> list[dict[str, Any]]:
    gates = stage.get("gates") or {}
    results = gates.get("results") if isinstance(gates, dict) else None
    return [r for r in results if isinstance(r, dict)] if isinstance(results, list) else []
