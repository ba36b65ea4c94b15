"""Loading a pipeline file: read the YAML, apply ``stage.section.key=value`` overrides, merge each stage's
``config_file``, check names and commands, expand a ``rounds`` block (``rounds.py``) into ordinary stages, and
check the dependency graph, all before anything runs. The spec itself (stages, references, order) is ``spec.py``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Iterable

import yaml
from pydantic import ValidationError

from posttrain.config import COMMANDS, parse_override, read_yaml_file
from posttrain.pipeline.rounds import expand_rounds, override_rounds, parse_rounds
from posttrain.pipeline.spec import PipelineError, PipelineSpec, StageEntry, deep_merge, dependencies, topological_order


def apply_overrides(tree: dict, overrides: Iterable[str]) -> dict:
    """``stage.section.key=value`` overrides into the raw pipeline tree's stage configs (and ``run_dir=...``)."""
    tree = copy.deepcopy(tree)
    stages = tree.get("stages") if isinstance(tree.get("stages"), dict) else {}
    for text in overrides:
        keys, value = parse_override(text)
        if keys == ["run_dir"]:
            tree["run_dir"] = value
            continue
        if keys[0] == "rounds" and len(keys) > 1:  # rounds.count=3, rounds.stages.dpo.optim.lr=1e-5
            override_rounds(tree.get("rounds"), keys[1:], value, text)
            continue
        if len(keys) < 2:
            raise PipelineError(f"override '{text}' must look like stage.section.key=value")
        if keys[0] not in stages:
            raise PipelineError(f"override '{text}': unknown stage '{keys[0]}' (stages: {', '.join(stages)})")
        node = stages[keys[0]].setdefault("config", {})
        for part in keys[1:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise PipelineError(f"override '{text}': '{part}' is not a section")
        node[keys[-1]] = value
    return tree


def load_pipeline(path: str | Path, overrides: Iterable[str] = (), commands: Iterable[str] | None = None
                  ) -> PipelineSpec:
    """Read, override and check a pipeline file; ``config_file`` (relative to the pipeline file) is merged under
    ``config``. Raises ``PipelineError`` (one line naming the key)."""
    path = Path(path)
    tree = read_yaml_file(path, "pipeline", PipelineError)
    if not isinstance(tree, dict):
        raise PipelineError(f"{path}: the top level must be a mapping with run_dir and stages")
    declared = tree.get("command")
    if isinstance(declared, str) and "stages" not in tree:
        if declared in COMMANDS:
            raise PipelineError(f"{path} is a `{declared}` training config, not a pipeline: run `posttrain "
                                f"{declared} {path}` (a pipeline has run_dir and stages)")
    return parse_pipeline(apply_overrides(tree, overrides), commands, base_dir=path.parent, where=str(path))


def parse_pipeline(tree: dict, commands: Iterable[str] | None = None, base_dir: Path = Path("."),
                   where: str = "<pipeline>") -> PipelineSpec:
    try:
        spec = PipelineSpec.model_validate(tree)
    except ValidationError as e:
        # An unknown key first: a misspelt key also shows up as the real one missing.
        err = min(e.errors(), key=lambda x: x["type"] != "extra_forbidden")
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = {"extra_forbidden": "unknown key", "missing": "required key is missing"}.get(err["type"], err["msg"])
        raise PipelineError(f"{where}: key '{key}': {msg}") from None
    allowed = list(commands) if commands is not None else None
    _prepare_stages(spec.stages, "stages", allowed, base_dir, where)
    if spec.rounds is not None:
        rounds = parse_rounds(spec.rounds, where)
        _prepare_stages(rounds.stages, "rounds.stages", allowed, base_dir, where)
        spec = expand_rounds(spec, rounds, where)
    if not spec.stages:
        raise PipelineError(f"{where}: key 'stages': at least one stage is needed")
    topological_order(dependencies(spec.stages))  # unknown stages and cycles fail here, before anything runs
    return spec


def _prepare_stages(stages: dict[str, StageEntry], prefix: str, allowed: list[str] | None, base_dir: Path,
                    where: str) -> None:
    """Check names and commands; merge each ``config_file`` (relative to ``base_dir``) under its ``config``."""
    for name, entry in stages.items():
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise PipelineError(f"{where}: key '{prefix}.{name}': stage names use letters, digits, '_' and '-'")
        if allowed is not None and entry.command not in allowed:
            raise PipelineError(f"{where}: key '{prefix}.{name}.command': unknown command '{entry.command}' "
                                f"(expected one of {', '.join(allowed)})")
        if entry.config_file:
            file = Path(entry.config_file)
            file = file if file.is_absolute() else base_dir / file
            try:
                loaded = yaml.safe_load(file.read_text()) or {}
            except (OSError, yaml.YAMLError) as e:
                raise PipelineError(f"{where}: key '{prefix}.{name}.config_file': cannot read {file}: "
                                    f"{str(e).splitlines()[0]}") from None
            if not isinstance(loaded, dict):
                raise PipelineError(f"{where}: key '{prefix}.{name}.config_file': {file} is not a mapping")
            loaded.pop("command", None)
            entry.config = deep_merge(loaded, entry.config)
