"""The pipeline file: ``run_dir`` and named stages, each a command with its config tree.

``${name.output}`` inside any string value of a stage's config is that stage's output folder; it makes the stage
depend on ``name``, as does ``after: [name]`` and ``when: {stage: name, ...}``. Stages run in dependency order,
ties broken by file order. A top-level ``rounds`` block (``rounds.py``) expands into ordinary stages at load time
(``load.py``: reading the file, overrides, checks).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


Pending = Callable[[str], bool]  # pending(path): a path inside an upstream stage's folder, which may not exist yet


def nothing_pending(path: str) -> bool:
    """The ``pending`` of a stage that is about to run: its upstream outputs exist by now."""
    return False


def check_file(params: dict, key: str, pending: Pending) -> None:
    """``params[key]`` (a path, when given) names an existing file, unless an upstream stage will write it."""
    path = params.get(key)
    if isinstance(path, str) and not pending(path) and not Path(path).is_file():
        raise PipelineError(f"config: key '{key}': no such file {path}")


def check_generation_dtype(params: dict) -> None:
    """``dtype`` (the hf backend's weights dtype) is one the backend takes: a one-line PipelineError otherwise."""
    from posttrain.generation.backends import check_dtype
    from posttrain.generation.types import BackendError

    try:
        check_dtype(str(params.get("dtype", "auto")), str(params.get("backend", "hf")))
    except BackendError as e:
        raise PipelineError(f"config: key 'dtype': {e}") from None


def check_judge_entry(spec: Any, where: str) -> None:
    """One judge config dict (as in the judge stage's ``judges`` list) without building the judge, which may load
    a model: its type, weight, and keys against the judge's constructor."""
    # imported here: the judges package imports torch (about 4 s), which a pipeline without judges never needs
    from posttrain.judges.run import JudgeConfigError, check_judge_spec

    try:
        check_judge_spec(spec, where)
    except JudgeConfigError as e:
        raise PipelineError(f"config: {e}") from None


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
