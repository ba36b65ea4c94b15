"""Rounds: repeat generate -> judge -> train (-> eval) N times from the latest model, in one pipeline file.

```yaml
rounds:
  count: 2
  start: ${sft.output}/model       # round 1's starting model
  reference: pinned                # pinned: every round's DPO reference is `start` (loss.reference_model);
                                   # previous: each round's reference is the model it starts from
  train: dpo                       # the stage whose `<output>/model` the next round starts from (default: the
                                   # template's only training stage)
  improve: {stage: eval, metric: constraints/pass_rate, min_gain: 0.0}   # optional: stop early
  stages:                          # the template, repeated each round
    generate: {command: generate, config: {model: "${round.model}", ...}}
    ...
```

Expansion happens when the file is loaded (``expand_rounds``): round k's copy of template stage ``name`` is the
ordinary stage ``r<k>_<name>``, with references to template stages rewritten to that round's stages,
``${round.model}`` = ``start`` in round 1 and ``${r<k-1>_<train>.output}/model`` after, and ``${round.index}`` = k.
So each round is cached like any stage: a rerun skips finished rounds, and a changed setting reruns only the
stages (and rounds) after it. A stage named ``rounds`` (command ``best_round``) is added after the last round:
later stages use ``${rounds.output}/model``, the best round's model.

Early stopping (``improve``). The ``improve.stage`` is an eval stage of the template with
``baseline: ${round.model}``, so one metrics.json holds the round's model (``metric``) and its starting model
(``baseline/<metric>``). Round k improved when ``metric - baseline/metric > min_gain`` (a negative ``min_gain``
tolerates that much of a drop). Every stage of round k+1 carries the runner condition ``when`` on round k's eval
(``runner.py``): when round k did not improve, round k+1 and everything after it are *not run* (status
``not run`` in the run manifest, with the reason; folders an earlier run left for them are kept, so lowering
``min_gain`` again reuses them). The best round is then the last round that improved, or the
start when none did: each round's gain is measured against the previous round's model, so the chain of
improving rounds ends at the best one.

Gates: an eval per round decides the rounds; a gate stage belongs after the rounds, on the selected model (a
gate inside the template runs like any stage: a failing gate stops the whole pipeline, rounds not compared).
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from posttrain.models.resolve import ModelError, resolve_model_path
from posttrain.pipeline.spec import (
    REFERENCE,
    Condition,
    PipelineError,
    PipelineSpec,
    StageEntry,
    check_keys,
    check_types,
    deep_merge,
)

ROUND_VALUE = re.compile(r"\$\{round\.([^}]*)\}")
SELECT = "rounds"  # the name of the added best-round stage: later stages use ${rounds.output}/model
TRAINING = ("sft", "dpo", "kto", "ppo", "grpo", "rejection_sft", "online_dpo")  # stages that write <output>/model
PINNABLE = ("dpo",)  # trainers that load loss.reference_model (trainers/preference.py::pinned_reference)


class Improve(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: str
    metric: str
    min_gain: float = 0.0


class RoundsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int = Field(ge=1)
    start: str
    reference: Literal["pinned", "previous"] = "pinned"
    train: str | None = None
    improve: Improve | None = None
    stages: dict[str, StageEntry]


def stage_name(k: int, name: str) -> str:
    """Round ``k``'s copy of template stage ``name``; matches the ``${name.output}`` reference pattern."""
    return f"r{k}_{name}"


def override_rounds(rounds: Any, keys: list[str], value: Any, text: str) -> None:
    """Apply the override ``rounds.<keys>=value`` to the raw ``rounds`` mapping: ``rounds.count=3``,
    ``rounds.improve.min_gain=0.1``, or ``rounds.stages.<stage>.<section>.<key>=value`` (that template stage's
    config, so every round)."""
    if not isinstance(rounds, dict):
        raise PipelineError(f"override '{text}': the pipeline has no rounds")
    node, path = rounds, keys[:-1]
    if keys[0] == "stages":
        stages = rounds.get("stages") if isinstance(rounds.get("stages"), dict) else {}
        if len(keys) < 3:
            raise PipelineError(f"override '{text}' must look like rounds.stages.stage.section.key=value")
        if keys[1] not in stages:
            raise PipelineError(f"override '{text}': unknown round stage '{keys[1]}' "
                                f"(round stages: {', '.join(stages)})")
        node, path = stages[keys[1]].setdefault("config", {}), keys[2:-1]
    for part in path:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise PipelineError(f"override '{text}': '{part}' is not a section")
    node[keys[-1]] = value


def _fail(where: str, key: str, msg: str) -> PipelineError:
    return PipelineError(f"{where}: key '{key}': {msg}")


def parse_rounds(raw: Any, where: str) -> RoundsSpec:
    """The ``rounds`` mapping's structure checked; problems are one-line PipelineErrors naming ``rounds.<key>``."""
    if not isinstance(raw, dict):
        raise _fail(where, "rounds", "expected a mapping with count, start and stages")
    try:
        spec = RoundsSpec.model_validate(raw)
    except ValidationError as e:
        err = min(e.errors(), key=lambda x: x["type"] != "extra_forbidden")
        key = ".".join(str(p) for p in ("rounds", *err["loc"]))
        msg = {"extra_forbidden": "unknown key", "missing": "required key is missing"}.get(err["type"], err["msg"])
        raise _fail(where, key, msg) from None
    if not spec.stages:
        raise _fail(where, "rounds.stages", "at least one stage is needed")
    return spec


def check_rounds(spec: RoundsSpec, where: str) -> None:
    """The checks that read the template's configs (after their ``config_file`` is merged); fills in ``train``."""
    names = ", ".join(spec.stages)
    if spec.train is None:
        found = [n for n, e in spec.stages.items() if e.command in TRAINING]
        if len(found) != 1:
            raise _fail(where, "rounds.train", f"name the stage whose model the next round starts from "
                                               f"({'several' if found else 'no'} training stages among: {names})")
        spec.train = found[0]
    elif spec.train not in spec.stages:
        raise _fail(where, "rounds.train", f"unknown stage '{spec.train}' (round stages: {names})")
    if spec.improve is not None:
        entry = spec.stages.get(spec.improve.stage)
        if entry is None:
            raise _fail(where, "rounds.improve.stage", f"unknown stage '{spec.improve.stage}' (round stages: "
                                                       f"{names})")
        if entry.command != "eval" or entry.config.get("baseline") != "${round.model}":
            raise _fail(where, "rounds.improve.stage", f"'{spec.improve.stage}' must be an eval stage with "
                                                       "baseline: ${round.model} (the round's gain is its model "
                                                       "against the model it started from)")
    if spec.reference == "pinned":
        _check_pinnable(spec.stages[spec.train], spec.train, where)


def _check_pinnable(entry: StageEntry, name: str, where: str) -> None:
    if entry.command not in PINNABLE:
        raise _fail(where, "rounds.reference", f"pinned needs a training stage that loads loss.reference_model "
                                               f"({', '.join(PINNABLE)}); '{name}' is {entry.command} (use "
                                               "reference: previous)")
    if (entry.config.get("loss") or {}).get("reference_model") is not None:
        raise _fail(where, f"rounds.stages.{name}.config.loss.reference_model",
                    "set by reference: pinned (the rounds' start); remove it here or use reference: previous")


def _round_values(value: Any, k: int, model: str, rename: dict[str, str], where: str) -> Any:
    """``value`` (a config tree) for round ``k``: template references renamed, ``${round.*}`` substituted."""
    if isinstance(value, dict):
        return {key: _round_values(v, k, model, rename, where) for key, v in value.items()}
    if isinstance(value, list):
        return [_round_values(v, k, model, rename, where) for v in value]
    if not isinstance(value, str):
        return value
    if value == "${round.index}":
        return k  # a whole value: the number itself (e.g. a seed per round)
    value = REFERENCE.sub(lambda m: f"${{{rename.get(m.group(1), m.group(1))}.output}}", value)

    def one(m: re.Match) -> str:
        if m.group(1) == "model":
            return model
        if m.group(1) == "index":
            return str(k)
        raise PipelineError(f"{where}: unknown '${{round.{m.group(1)}}}' (expected ${{round.model}} or "
                            "${round.index})")

    return ROUND_VALUE.sub(one, value)


def expand_rounds(spec: PipelineSpec, rounds: RoundsSpec, where: str) -> PipelineSpec:
    """``spec`` with its ``rounds`` replaced by ordinary stages ``r<k>_<name>`` and the ``rounds`` select stage
    (see the module docstring). The template's ``config_file`` values are merged before this is called."""
    check_rounds(rounds, where)
    template, train, improve = rounds.stages, rounds.train, rounds.improve
    added: dict[str, StageEntry] = {}
    for k in range(1, rounds.count + 1):
        model = rounds.start if k == 1 else f"${{{stage_name(k - 1, train)}.output}}/model"
        rename = {name: stage_name(k, name) for name in template}
        for name, entry in template.items():
            if rename[name] in spec.stages or rename[name] == SELECT:
                raise _fail(where, f"rounds.stages.{name}", f"round stage {rename[name]} clashes with "
                                                            f"stages.{rename[name]}; rename one of them")
            config = _round_values(copy.deepcopy(entry.config), k, model, rename,
                                   f"{where}: key 'rounds.stages.{name}.config'")
            if rounds.reference == "pinned" and name == train:
                config = deep_merge(config, {"loss": {"reference_model": rounds.start}})
            when = None
            if improve is not None and k > 1:
                when = Condition(stage=stage_name(k - 1, improve.stage), metric=improve.metric,
                                 baseline=f"baseline/{improve.metric}", min_gain=improve.min_gain)
            added[rename[name]] = StageEntry(command=entry.command, after=[rename.get(a, a) for a in entry.after],
                                             config=config, when=when)
    if SELECT in spec.stages:
        raise _fail(where, f"stages.{SELECT}", f"the name '{SELECT}' is the rounds' best-round stage; rename it")
    added[SELECT] = StageEntry(command="best_round", config={
        "start": rounds.start,
        **({"metric": improve.metric, "min_gain": improve.min_gain} if improve is not None else {}),
        "rounds": [{"model": f"${{{stage_name(k, train)}.output}}/model",
                    **({"metrics": f"${{{stage_name(k, improve.stage)}.output}}/metrics.json"}
                       if improve is not None else {})}
                   for k in range(1, rounds.count + 1)]})
    return spec.model_copy(update={"stages": {**spec.stages, **added}, "rounds": None})


# ---- the best_round stage -------------------------------------------------------------------------------------

BEST_ROUND_KEYS = ("start", "rounds", "metric", "min_gain")


def check_best_round(params: dict, pending) -> None:
    check_keys(params, BEST_ROUND_KEYS)
    for key in ("start", "rounds"):
        if key not in params:
            raise PipelineError(f"config: key '{key}' is required")
    check_types(params, {"start": (str,), "rounds": (list,), "metric": (str,), "min_gain": (int, float)})
    for i, entry in enumerate(params["rounds"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise PipelineError(f"config: key 'rounds[{i}]': expected {{model: FOLDER, metrics: FILE}}")
        check_keys(entry, ("model", "metrics"))
        if ("metric" in params) != ("metrics" in entry):
            raise PipelineError(f"config: key 'rounds[{i}].metrics': give each round's metrics.json exactly when "
                                "'metric' is set")


def _metric(path: str, name: str) -> float | None:
    try:
        metrics = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PipelineError(f"config: key 'rounds': cannot read {path}: {e}") from None
    if name not in metrics:
        raise PipelineError(f"config: key 'metric': '{name}' is not in {path} (it has: "
                            f"{', '.join(sorted(metrics)[:12])}, ...)")
    return metrics[name]


def round_table(params: dict) -> tuple[int, list[dict]]:
    """(best round, one row per round). Round 0 is the start. With a ``metric``, round k ran when every round
    before it improved on its starting model by more than ``min_gain`` (the runner's ``when`` on every round
    after the first; a folder an earlier run left for a round not run now does not count), and the best round is
    the last round of that chain that improved itself; without one, every round ran and the last is the best."""
    metric, min_gain = params.get("metric"), float(params.get("min_gain", 0.0))
    rows, best, chain = [], 0, True
    for k, entry in enumerate(params["rounds"], start=1):
        row: dict[str, Any] = {"round": k, "model": entry["model"], "ran": chain and Path(entry["model"]).is_dir()}
        if row["ran"] and metric is not None:
            value, start = _metric(entry["metrics"], metric), _metric(entry["metrics"], f"baseline/{metric}")
            gain = value - start if value is not None and start is not None else None
            row.update({"metrics": entry["metrics"], metric: value, f"baseline/{metric}": start, "gain": gain,
                        "improved": gain is not None and gain > min_gain})
        chain = row["ran"] and row.get("improved", True)
        if chain:
            best = k
        rows.append(row)
    return best, rows


def run_best_round(params: dict, output_dir: Path, resume: bool) -> dict:
    """Writes ``rounds.json`` (per-round metric, gain, improved; the best round) and ``model``, a link to the
    best round's model folder (the start when no round improved)."""
    from posttrain.data.writers import atomic_write_json  # posttrain.data imports torch: keeps this module free of it

    check_best_round(params, lambda _: False)
    best, rows = round_table(params)
    chosen = params["rounds"][best - 1]["model"] if best else params["start"]
    target = Path(chosen)
    if not target.is_dir():
        try:
            target = Path(resolve_model_path(chosen))  # a builtin start resolves to its cached folder
        except ModelError as e:
            raise PipelineError(f"config: key 'start': {e}") from None
    if not target.is_dir():
        raise PipelineError(f"config: key 'start': no round improved on '{chosen}', which is not a local folder "
                            "to link as this stage's model")
    link, tmp = output_dir / "model", output_dir / ".model.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    # relative inside the run folder, so a moved or copied run still points at its own round
    os.symlink(os.path.relpath(target.resolve(), output_dir.resolve()), tmp)
    os.replace(tmp, link)
    metric = params.get("metric")
    atomic_write_json(output_dir / "rounds.json", {"metric": metric, "min_gain": params.get("min_gain", 0.0),
                                                   "best_round": best, "model": chosen, "rounds": rows})
    out = {"best_round": best, "rounds_run": sum(r["ran"] for r in rows)}
    if metric is not None and best:
        out[f"best/{metric}"] = rows[best - 1][metric]
    return out


def best_round_inputs(params: dict) -> list[str]:
    """Every round's model and metrics (a round that did not run hashes as absent) and the start."""
    paths = [params.get("start")]
    for entry in params.get("rounds") or []:
        if isinstance(entry, dict):
            paths += [entry.get("model"), entry.get("metrics")]
    return [p for p in paths if isinstance(p, str)]
