"""The pipeline file: ``run_dir`` and named stages, each a command with its config tree.

``${name.output}`` inside any string value of a stage's config is that stage's output folder; it makes the stage
depend on ``name``, as does ``after: [name]`` and ``when: {stage: name, ...}``. Stages run in dependency order,
ties broken by file order. A top-level ``rounds`` block (``rounds.py``) expands into ordinary stages at load time.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from posttrain.config import parse_override, read_yaml_file

REFERENCE = re.compile(r"\$\{([^}.]+)\.output\}")


class PipelineError(ValueError):
    """A pipeline file problem a user can fix; ``str()`` is one line naming the key."""


class Condition(BaseModel):
    """``when``: run the stage only if ``stage``'s recorded ``metric`` exceeds its ``baseline`` metric by more
    than ``min_gain``; otherwise it and its dependents are not run (``runner.py``)."""
    model_config = ConfigDict(extra="forbid")
    stage: str
    metric: str
    baseline: str
    min_gain: float = 0.0


class StageEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: str
    after: list[str] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)
    config_file: str | None = None
    when: Condition | None = None


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run_dir: str
    stages: dict[str, StageEntry]
    rounds: dict[str, Any] | None = None  # checked and expanded by rounds.py


def references(value: Any) -> list[str]:
    """Stage names referenced as ``${name.output}`` anywhere in ``value`` (strings in nested dicts/lists)."""
    if isinstance(value, str):
        return REFERENCE.findall(value)
    if isinstance(value, dict):
        return [name for v in value.values() for name in references(v)]
    if isinstance(value, list):
        return [name for v in value for name in references(v)]
    return []


def substitute(value: Any, replacement: dict[str, str]) -> Any:
    """``value`` with every ``${name.output}`` replaced by ``replacement[name]``."""
    if isinstance(value, str):
        return REFERENCE.sub(lambda m: replacement[m.group(1)], value)
    if isinstance(value, dict):
        return {k: substitute(v, replacement) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, replacement) for v in value]
    return value


def check_keys(params: dict, allowed: tuple[str, ...]) -> None:
    """A stage's plain-dict config may only use ``allowed`` keys (the runner prefixes ``stages.<name>.``)."""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise PipelineError(f"config: unknown key '{unknown[0]}' (expected: {', '.join(allowed)})")


def check_types(params: dict, types: dict[str, tuple[type, ...]]) -> None:
    """Each present, non-null ``params[key]`` is an instance of ``types[key]`` (a bool is not a number)."""
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a mapping"}
    for key, kinds in types.items():
        value = params.get(key)
        if value is None:
            continue
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            expected = " or ".join(dict.fromkeys(names[k] for k in kinds))
            raise PipelineError(f"config: key '{key}': expected {expected}, got {value!r}")


def check_model(model: type, params: dict, prefix: str = "") -> Any:
    """``model(**params)`` for a pydantic model; the first problem as ``config: key '<prefix><key>': ...``."""
    try:
        return model(**params)
    except ValidationError as e:
        err = min(e.errors(), key=lambda x: x["type"] != "extra_forbidden")
        key = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise PipelineError(f"config: key '{prefix}{key}': {msg}") from None


def deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def dependencies(stages: dict[str, StageEntry]) -> dict[str, list[str]]:
    """Each stage's upstream stages (``after`` and references), in first-mention order; unknown names are errors."""
    deps: dict[str, list[str]] = {}
    for name, entry in stages.items():
        found: list[str] = []
        for where, names in (("after", entry.after), ("config", references(entry.config)),
                             ("when.stage", [entry.when.stage] if entry.when else [])):
            for dep in names:
                if dep not in stages:
                    raise PipelineError(f"stages.{name}.{where}: unknown stage '{dep}' "
                                        f"(stages: {', '.join(stages)})")
                if dep == name:
                    raise PipelineError(f"stages.{name}.{where}: a stage cannot depend on itself")
                if dep not in found:
                    found.append(dep)
        deps[name] = found
    return deps


def topological_order(deps: dict[str, list[str]]) -> list[str]:
    """Dependency order, stable by the dict's (file) order; a cycle is an error naming it."""
    position = {name: i for i, name in enumerate(deps)}
    done: list[str] = []
    remaining = dict(deps)
    while remaining:
        ready = [n for n in remaining if all(d in done for d in remaining[n])]
        if not ready:
            raise PipelineError(f"stages: dependency cycle {' -> '.join(_cycle(remaining))}")
        pick = min(ready, key=position.__getitem__)
        done.append(pick)
        del remaining[pick]
    return done


def _cycle(remaining: dict[str, list[str]]) -> list[str]:
    # Every remaining stage has an unfinished dependency, so walking first unfinished deps must revisit one.
    path = [next(iter(remaining))]
    while True:
        nxt = next(d for d in remaining[path[-1]] if d in remaining)
        if nxt in path:
            return path[path.index(nxt):] + [nxt]
        path.append(nxt)


def downstream(deps: dict[str, list[str]], roots: Iterable[str]) -> set[str]:
    """``roots`` and every stage that depends on one of them, directly or not."""
    out = set(roots)
    changed = True
    while changed:
        changed = False
        for name, ups in deps.items():
            if name not in out and out.intersection(ups):
                out.add(name)
                changed = True
    return out


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
            from posttrain.pipeline.rounds import override_rounds

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
        from posttrain.pipeline.rounds import expand_rounds, parse_rounds

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
