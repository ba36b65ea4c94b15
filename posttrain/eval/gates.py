"""Gates: thresholds on eval metrics that decide whether a model ships.

A gates file (YAML) is a list, or a mapping with a ``gates`` list, of entries with ``metric`` and exactly one of:
- ``min: x``       value >= x
- ``max: x``       value <= x
- ``min_delta: x`` value - baseline >= x   (baseline = ``baseline/<metric>`` in the same metrics.json)
- ``max_drop: x``  baseline - value <= x

A delta gate may add ``against: base`` to compare with ``base/<metric>`` (the base model the recipe started
from, ``eval --base``) instead of the baseline (default ``against: baseline``): a model can beat the SFT
baseline while both have drifted from the base.

A ``min_delta`` gate on a pass rate may add ``significant: true``: the lower end of the 95% paired interval of
the difference (``<metric>/delta_vs_<reference>/ci_low``, ``significance.py``) must clear the threshold, not
only the point estimate, so a gain that a few rows' luck could explain does not pass (``min_delta: 0`` with
``significant: true`` reads "the model is better, beyond noise").

A metric (or, for delta gates, its baseline) missing from metrics.json is a *failing gate* with a reason, not a
config error: the gates file is fine, the eval did not produce what it promised (a suite not run, no baseline),
and that must block shipping just like a low score. Malformed gate entries are config errors (``GateConfigError``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from posttrain.config import read_yaml_file
from posttrain.data.writers import atomic_write_json

GATE_KINDS = ("min", "max", "min_delta", "max_drop")
REFERENCES = ("baseline", "base")


class GateConfigError(ValueError):
    """A malformed gates file; ``str()`` is one line naming the file, the entry and the key."""


@dataclass
class Gate:
    metric: str
    kind: str
    threshold: float
    against: str = "baseline"
    significant: bool = False


@dataclass
class GateResult:
    """``baseline_value``: the value a delta gate compares with (the baseline's, or the base model's when
    ``against`` is "base")."""

    metric: str
    kind: str
    threshold: float
    value: float | None
    baseline_value: float | None
    passed: bool
    reason: str
    against: str = "baseline"
    significant: bool = False


def parse_gates(raw: Any, source: str = "<gates>") -> list[Gate]:
    """Gates from the parsed YAML (``GateConfigError`` naming ``source``, entry index and key otherwise)."""
    if isinstance(raw, dict) and set(raw) == {"gates"}:
        raw = raw["gates"]
    if not isinstance(raw, list) or not raw:
        raise GateConfigError(f"{source}: expected a non-empty list of gates (or a mapping with a 'gates' list)")
    gates = []
    for i, entry in enumerate(raw):
        where = f"{source}: gates[{i}]"
        if not isinstance(entry, dict):
            raise GateConfigError(f"{where}: expected a mapping like {{metric: ..., min: ...}}, got {entry!r}")
        unknown = set(entry) - {"metric", "against", "significant", *GATE_KINDS}
        if unknown:
            raise GateConfigError(f"{where}: unknown key '{sorted(unknown)[0]}' (expected metric, one of "
                                  f"{', '.join(GATE_KINDS)}, and optionally against, significant)")
        metric = entry.get("metric")
        if not isinstance(metric, str) or not metric:
            raise GateConfigError(f"{where}.metric: required, a metric name like 'constraints/pass_rate'")
        kinds = [k for k in GATE_KINDS if k in entry]
        if len(kinds) != 1:
            raise GateConfigError(f"{where}: needs exactly one of {', '.join(GATE_KINDS)}, got "
                                  f"{', '.join(kinds) or 'none'}")
        value = entry[kinds[0]]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise GateConfigError(f"{where}.{kinds[0]}: must be a finite number, got {value!r}")
        against = entry.get("against", "baseline")
        if against not in REFERENCES:
            raise GateConfigError(f"{where}.against: must be one of {', '.join(REFERENCES)}, got {against!r}")
        if against != "baseline" and kinds[0] not in ("min_delta", "max_drop"):
            raise GateConfigError(f"{where}.against: only min_delta and max_drop compare with a reference model")
        significant = entry.get("significant", False)
        if not isinstance(significant, bool):
            raise GateConfigError(f"{where}.significant: must be true or false, got {significant!r}")
        if significant and kinds[0] != "min_delta":
            raise GateConfigError(f"{where}.significant: only a min_delta gate tests its interval (a gain beyond "
                                  f"noise); got {kinds[0]}")
        gates.append(Gate(metric, kinds[0], float(value), against, significant))
    return gates


def load_gates(path: str | Path) -> list[Gate]:
    return parse_gates(read_yaml_file(path, "gates", GateConfigError), str(path))


def _number(metrics: dict[str, Any], key: str) -> float | None:
    v = metrics.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def evaluate_gate(metrics: dict[str, Any], gate: Gate) -> GateResult:
    value = _number(metrics, gate.metric)
    ref = f"{gate.against}/{gate.metric}"
    base = _number(metrics, ref)
    t = gate.threshold

    def result(passed: bool, reason: str) -> GateResult:
        return GateResult(gate.metric, gate.kind, t, value, base, passed, reason, gate.against, gate.significant)

    if value is None:
        return result(False, f"metric '{gate.metric}' missing from metrics")
    if gate.kind == "min":
        return result(value >= t, f"{value:.4g} {'>=' if value >= t else '<'} min {t:g}")
    if gate.kind == "max":
        return result(value <= t, f"{value:.4g} {'<=' if value <= t else '>'} max {t:g}")
    if base is None:
        return result(False, f"{gate.against} '{ref}' missing from metrics ({gate.kind} needs a {gate.against}"
                      + (", eval --base" if gate.against == "base" else "") + ")")
    vs = "" if gate.against == "baseline" else f" vs {gate.against}"
    if gate.significant:
        key = f"{gate.metric}/delta_vs_{gate.against}"
        low, high = _number(metrics, f"{key}/ci_low"), _number(metrics, f"{key}/ci_high")
        if low is None or high is None:
            return result(False, f"interval '{key}/ci_low' missing from metrics (significant needs the paired "
                          "interval an eval writes for pass rates)")
        delta = value - base
        return result(low >= t, f"delta{vs} {delta:+.4g}, 95% interval [{low:+.4g}, {high:+.4g}]: low "
                      f"{'>=' if low >= t else '<'} min_delta {t:g}")
    if gate.kind == "min_delta":
        delta = value - base
        return result(delta >= t, f"delta{vs} {delta:+.4g} {'>=' if delta >= t else '<'} min_delta {t:g}")
    drop = base - value
    return result(drop <= t, f"drop{vs} {drop:.4g} {'<=' if drop <= t else '>'} max_drop {t:g}")


def evaluate_gates(metrics: dict[str, Any], gates: list[Gate]) -> list[GateResult]:
    """One result per gate, in order."""
    return [evaluate_gate(metrics, g) for g in gates]


def record_verdicts(metrics_json: str | Path, source: str, results: list[GateResult]) -> str | None:
    """Add the verdicts under ``gates`` to the ``manifest.json`` beside ``metrics_json`` (the eval's folder), so the
    eval's own record says whether its model passed. Returns a warning line when there is no readable manifest to
    update (metrics from elsewhere), else None. ``source``: where the gates came from (a file, or a stage)."""
    manifest = Path(metrics_json).parent / "manifest.json"
    if not manifest.exists():
        return f"{manifest}: no eval manifest beside the metrics; verdicts not recorded there"
    try:
        data = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict):
        return f"{manifest} is not a JSON object; verdicts not recorded"
    data["gates"] = {"source": source, "passed": all(r.passed for r in results),
                     "results": [asdict(r) for r in results]}
    atomic_write_json(manifest, data)
    return None
