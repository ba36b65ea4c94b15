"""Data sources as users of LLaMA-Factory and axolotl write them: ``data.train`` (and ``data.eval``) is a path or
hub id, or a mapping, or a list of mappings (a mixture)::

    data:
      train:
        - {path: openai/gsm8k, name: main, split: train, columns: {prompt: question, answer: answer}}
        - {path: examples/data/prompts_train.jsonl, weight: 0.5}

- ``path``: a file (jsonl/json/parquet/csv), a ``save_to_disk`` folder or a hub dataset id;
- ``name``: the hub dataset's configuration (gsm8k's ``main``);
- ``split``: which split (default: ``data.split``, else ``train``);
- ``columns``: ``{schema field: column in this source}``, e.g. ``{prompt: question, chosen: answer_good}``: the
  column is renamed to the field the posttrain layout reads (docs: data layouts), so public datasets load as they
  are;
- ``weight``: how much of the source goes into the mixture: each row ``floor(weight)`` times, plus a seeded sample
  of the remaining fraction (0.5: half of the rows, drawn with a seed from the source's path, the same every run).

Rows keep their own source's row numbers, and errors name the source as ``path[name:split]``.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from posttrain.data.readers import missing_local_source, read_records
from posttrain.data.schema import DataError


@dataclass(frozen=True)
class Source:
    path: str
    name: str | None = None
    split: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    weight: float = 1.0

    @property
    def label(self) -> str:
        tags = ":".join(t for t in (self.name, self.split) if t)
        return f"{self.path}[{tags}]" if tags else self.path


def sources_of(value: Any) -> list[Source]:
    """The sources of a ``data.train`` value: a string, a mapping (or a config section), or a list of them."""
    if isinstance(value, str):
        return [Source(value)]
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, Mapping):
        return [Source(str(value["path"]), value.get("name"), value.get("split"), dict(value.get("columns") or {}),
                       float(value.get("weight", 1.0)))]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in sources_of(v)]
    raise TypeError(f"a data source must be a path, a mapping or a list of mappings, got {type(value).__name__}")


def sources_dump(value: Any) -> list[dict[str, Any]]:
    """The sources as plain mappings (for a config or report file)."""
    return [{"path": s.path, "name": s.name, "split": s.split, "columns": s.columns, "weight": s.weight}
            for s in sources_of(value)]


def source_label(value: Any) -> str:
    """How messages name a data value: its path, or the sources joined with ``+``."""
    if isinstance(value, str):
        return value
    return " + ".join(s.label + (f" (x{s.weight:g})" if s.weight != 1 else "") for s in sources_of(value))


def local_paths(value: Any) -> list[str]:
    """The sources' paths (hashed as a stage's inputs; a hub id hashes to nothing, as before)."""
    return [s.path for s in sources_of(value)]


def missing_local(value: Any) -> str | None:
    """The first source path that names a local file or folder that does not exist, or None."""
    return next((s.path for s in sources_of(value) if missing_local_source(s.path)), None)


def _renamed(record: dict, columns: dict[str, str], label: str, row: int) -> dict:
    out = dict(record)
    for target, column in columns.items():
        if column not in record:
            raise DataError(label, row, column, f"missing (data columns map '{target}' to it; the row has "
                            f"{', '.join(record) or 'no fields'})")
        if column != target:
            out[target] = out.pop(column)
    return out


def weighted(rows: list, weight: float, seed_text: str) -> list:
    """``rows`` repeated ``floor(weight)`` times plus a seeded sample of ``round(frac * len(rows))`` of them, kept in
    their file order."""
    whole, frac = int(math.floor(weight)), weight - math.floor(weight)
    out = [r for _ in range(whole) for r in rows]
    take = round(frac * len(rows))
    if take:
        seed = int.from_bytes(hashlib.blake2b(seed_text.encode(), digest_size=8).digest(), "big")
        picked = sorted(random.Random(seed).sample(range(len(rows)), take))
        out += [rows[i] for i in picked]
    return out


def iter_source_records(value: Any, split: str | None = None, errors: list[DataError] | None = None
                        ) -> Iterator[tuple[str, int, dict]]:
    """``(source label, row, record)`` of every source of ``value`` in order, columns renamed, weights applied."""
    for source in sources_of(value):
        label = source.label
        records = read_records(source.path, source.split or split, errors=errors, config_name=source.name)

        def renamed(records=records, source=source, label=label):
            for row, record in records:
                try:
                    yield row, _renamed(record, source.columns, label, row)
                except DataError as e:
                    if errors is None:
                        raise
                    errors.append(e)

        if source.weight == 1:
            for row, record in renamed():
                yield label, row, record
        else:
            for row, record in weighted(list(renamed()), source.weight, source.path):
                yield label, row, record
