"""Which constraint kinds a model was trained on, and the pass rate of each kind, trained or unseen.

A pass rate over constraint kinds the training data taught says little about instruction following in general;
the per-kind table separates them. Kinds are compared by their canonical name (``canonical_kind``: an alias such
as ``uppercase`` counts as ``all_caps``); ``bullet_list`` and ``bullet_list_2`` are different kinds (the trained
one fixes two "- " items).

Metric keys: ``constraints/kind/<kind>/pass_rate`` and ``.../n`` (over constraint instances, not rows: a row
with two constraints counts once in each kind), and with a trained set ``constraints/kind/<kind>/trained``
(1.0 or 0.0), ``constraints/trained/{pass_rate,n}``, ``constraints/unseen/{pass_rate,n}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from posttrain.data.readers import read_records
from posttrain.data.schema import DataError
from posttrain.verifiers.constraints import CONSTRAINTS
from posttrain.verifiers.ifeval import IFEVAL_KINDS, IFEvalError, read_ifeval


def canonical_kind(kind: str) -> str:
    """The first name in ``CONSTRAINTS`` with the same rule (``uppercase`` -> ``all_caps``); unknown kinds as given."""
    spec = CONSTRAINTS.get(kind)
    if spec is None:
        return kind
    return next(name for name, other in CONSTRAINTS.items() if other.fn is spec.fn)


def _record_kinds(record: dict[str, Any]) -> set[str]:
    """Constraint kinds named by one training row: ``constraints``, ``constraint``, IFEval ids, also inside a
    nested ``metadata`` object (candidate and pair files keep prompt metadata there)."""
    kinds: set[str] = set()
    for md in (record, record.get("metadata")):
        if not isinstance(md, dict):
            continue
        if isinstance(md.get("constraints"), list):
            kinds |= {c["kind"] for c in md["constraints"] if isinstance(c, dict) and isinstance(c.get("kind"), str)}
        if isinstance(md.get("constraint"), str):
            kinds.add(md["constraint"])
        try:
            found = read_ifeval(md)
        except IFEvalError:
            found = None
        kinds |= {IFEVAL_KINDS[i] for i in (found[1] if found else []) if i in IFEVAL_KINDS}
    return {canonical_kind(k) for k in kinds}


def trained_kinds(files: Iterable[str] = (), kinds: Iterable[str] = ()) -> set[str]:
    """Canonical kinds named by any row of ``files`` (any layout: prompt, pair, candidate, SFT files with
    constraint metadata) plus ``kinds``. ``DataError`` for an unreadable file or an unknown kind name."""
    out = set()
    for kind in kinds:
        if kind not in CONSTRAINTS:
            raise DataError("trained kinds", None, None, f"unknown constraint kind {kind!r}; known kinds: "
                            f"{', '.join(CONSTRAINTS)}")
        out.add(canonical_kind(kind))
    for path in files:
        errors: list[DataError] = []
        for _, record in read_records(str(path), None, errors=errors):
            out |= _record_kinds(record)
        if errors:
            raise errors[0]
    return out


def kind_metrics(details: Sequence[dict[str, Any]], trained: set[str] | None = None) -> dict[str, float]:
    """Per-kind pass rates from constraint rows' score details (``{"constraints": [{"kind", "passed"}]}``);
    with ``trained``, each kind marked and pass rates pooled over trained and unseen kinds."""
    by_kind: dict[str, list[bool]] = {}
    for d in details:
        for c in d.get("constraints", []):
            by_kind.setdefault(canonical_kind(c["kind"]), []).append(bool(c["passed"]))
    out: dict[str, float] = {}
    for kind in sorted(by_kind):
        flags = by_kind[kind]
        out[f"constraints/kind/{kind}/pass_rate"] = sum(flags) / len(flags)
        out[f"constraints/kind/{kind}/n"] = float(len(flags))
        if trained is not None:
            out[f"constraints/kind/{kind}/trained"] = float(kind in trained)
    if trained is not None:
        for name, keep in (("trained", True), ("unseen", False)):
            flags = [f for kind, fs in by_kind.items() if (kind in trained) == keep for f in fs]
            if flags:
                out[f"constraints/{name}/pass_rate"] = sum(flags) / len(flags)
                out[f"constraints/{name}/n"] = float(len(flags))
    return out
