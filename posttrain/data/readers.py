"""Raw records from wherever people keep data: JSONL, JSON, Parquet, CSV, a ``save_to_disk`` folder, or a
Hugging Face Hub dataset id.

Every reader yields ``(row, record)`` with a 1-based ``row`` that a user can find again: the line number in
JSONL (blank lines keep their number), the record number everywhere else (for CSV, the header is not counted).
JSONL, CSV and Parquet are streamed so a large file is never held twice in memory.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

from posttrain.data.schema import DataError

# datasets (2 s to import) and pyarrow (not a direct dependency: datasets brings it) are imported by the readers
# that need them, so `import posttrain.data` stays free of them.

FILE_TYPES = (".jsonl", ".json", ".parquet", ".csv")
# A JSON file holding one object whose only list sits under one of these keys (common dataset dumps).
JSON_LIST_KEYS = ("data", "rows", "train")
# Suffixes that mark a string as a local file even when it does not exist (hub ids rarely have them).
_FILE_LIKE_SUFFIXES = FILE_TYPES + (".gz", ".tsv", ".txt", ".arrow", ".zst")


def read_records(source: str, split: str | None = None, errors: list[DataError] | None = None,
                 config_name: str | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(row, record)`` from ``source``.

    ``split`` picks a split of a saved ``DatasetDict`` or a hub dataset (default ``"train"``); single files
    have no splits and ignore it. A row that cannot be parsed raises ``DataError``, unless ``errors`` is a list:
    then the error is appended and reading goes on, so one pass can report every bad line. ``config_name``: a
    hub dataset's configuration (``load_dataset(source, config_name)``, gsm8k's ``main``).
    """
    path = Path(source).expanduser()
    if path.is_dir():
        yield from _read_saved_dataset(source, path, split)
    elif path.is_file():
        suffix = path.suffix.lower()
        readers = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}
        if suffix not in readers:
            raise DataError(source, None, None, f"unsupported file type '{suffix or path.name}' (expected "
                            f"{', '.join(FILE_TYPES)}, or a folder saved with datasets.save_to_disk)")
        try:
            yield from readers[suffix](source, path, errors)
        except (UnicodeDecodeError, csv.Error) as e:
            raise DataError(source, None, None, f"cannot be read as {suffix[1:].upper()} text: {e}") from None
    elif _looks_like_path(source):
        raise DataError(source, None, None, "no such file or folder")
    else:
        yield from _read_hub(source, split, config_name)


def _looks_like_path(source: str) -> bool:
    # "org/name" is a hub id; "./x", "/x", "a/b/c", "x.jsonl" or a Windows path is a local path.
    return (Path(source).suffix.lower() in _FILE_LIKE_SUFFIXES or source.startswith((".", "/", "~"))
            or source.count("/") > 1 or os.sep != "/" and os.sep in source)


def missing_local_source(source: str) -> bool:
    """A source that names a local file or folder (not a hub id) that does not exist: checked before any model is
    loaded, so a typo in a data path costs no model conversion."""
    return _looks_like_path(source) and not Path(source).expanduser().exists()


def _object(source: str, row: int, value, errors: list[DataError] | None) -> dict | None:
    if isinstance(value, dict):
        return value
    _fail(errors, DataError(source, row, None, f"expected a JSON object, got {type(value).__name__}"))
    return None


def _fail(errors: list[DataError] | None, error: DataError) -> None:
    if errors is None:
        raise error
    errors.append(error)


def not_utf8(source: str, raw: bytes, error: UnicodeDecodeError, line_number: int | None = None) -> DataError:
    """The ``DataError`` for bytes that are not UTF-8 (e.g. a Latin-1 export), naming the line and column rather
    than a byte offset. ``raw`` is one JSONL line numbered ``line_number`` (whose number is the row, as for every
    JSONL error), or a whole file (JSON, CSV: the line is counted and named in the message, as rows there are
    records)."""
    start = raw.rfind(b"\n", 0, error.start) + 1
    column = len(raw[start:error.start].decode("utf-8", "replace")) + 1
    what = (f"not UTF-8 text (byte 0x{raw[error.start]:02x} at column {column}); save the file as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)")
    if line_number is not None:
        return DataError(source, line_number, None, what)
    line = raw.count(b"\n", 0, error.start) + 1
    return DataError(source, None, None, f"line {line}: {what}")


def _without_bom(raw: bytes) -> bytes:
    return raw[len(codecs.BOM_UTF8):] if raw.startswith(codecs.BOM_UTF8) else raw


def utf8_lines(source: str, path: Path, errors: list[DataError] | None = None) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 file split at ``\\n`` (JSONL's line end; ``\\r\\n`` works too),
    1-based, line ends kept. A byte-order mark, which many exporters write, is dropped. A line that is not UTF-8
    is a ``DataError`` naming it (``not_utf8``); with ``errors`` it is appended there and the line skipped."""
    with open(path, "rb") as fh:
        for line_number, raw in enumerate(fh, 1):
            if line_number == 1:
                raw = _without_bom(raw)
            try:
                yield line_number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                _fail(errors, not_utf8(source, raw, e, line_number))


def _locate_bad_byte(source: str, path: Path) -> DataError:
    """After a text reader hit undecodable bytes: find the first one again, by line."""
    raw = _without_bom(path.read_bytes())
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return not_utf8(source, raw, e)
    return DataError(source, None, None, "not UTF-8 text")


def _read_jsonl(source: str, path: Path, errors) -> Iterator[tuple[int, dict]]:
    for line_number, line in utf8_lines(source, path, errors):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            _fail(errors, DataError(source, line_number, None, f"invalid JSON: {e.msg} (column {e.colno})"))
            continue
        record = _object(source, line_number, value, errors)
        if record is not None:
            yield line_number, record


def _read_json(source: str, path: Path, errors) -> Iterator[tuple[int, dict]]:
    # A JSON document has to be parsed whole; use JSONL for files that do not fit in memory.
    raw = _without_bom(path.read_bytes())
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8(source, raw, e) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(source, None, None, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}")
    if isinstance(value, dict):
        lists = [k for k in JSON_LIST_KEYS if isinstance(value.get(k), list)]
        if len(lists) != 1:
            raise DataError(source, None, None, "expected a list of objects, or an object with one list under "
                            f"{' / '.join(repr(k) for k in JSON_LIST_KEYS)}")
        value = value[lists[0]]
    if not isinstance(value, list):
        raise DataError(source, None, None, f"expected a list of objects, got {type(value).__name__}")
    for row, item in enumerate(value, 1):
        record = _object(source, row, item, errors)
        if record is not None:
            yield row, record


def _read_parquet(source: str, path: Path, errors) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt or non-parquet file
        raise DataError(source, None, None, f"not a readable Parquet file: {e}") from None
    row = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            row += 1
            yield row, record


def _csv_cell(cell):
    # Message lists and objects cannot live in a CSV cell except as JSON text; a cell that merely starts
    # with a bracket but is not JSON (e.g. "[INST] ...") stays a string.
    if isinstance(cell, str) and cell.lstrip().startswith(("[", "{")):
        try:
            return json.loads(cell)
        except json.JSONDecodeError:
            return cell
    return cell


def _read_csv(source: str, path: Path, errors) -> Iterator[tuple[int, dict]]:
    # utf-8-sig: a byte-order mark would otherwise become part of the first column's name.
    with open(path, encoding="utf-8-sig", newline="") as fh:
        try:
            for row, record in enumerate(csv.DictReader(fh), 1):
                # DictReader puts surplus cells under the key None; they belong to no column.
                yield row, {k: _csv_cell(v) for k, v in record.items() if k is not None}
        except UnicodeDecodeError:
            raise _locate_bad_byte(source, path) from None


def _rows(dataset) -> Iterator[tuple[int, dict]]:
    for row, record in enumerate(dataset, 1):
        yield row, dict(record)


def _pick_split(source: str, dataset, split: str | None):
    import datasets

    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        name = split or "train"
        if name not in dataset:
            raise DataError(source, None, None, f"has no split '{name}' (splits: {', '.join(dataset)}); "
                            "set data.split")
        return dataset[name]
    return dataset


def _read_saved_dataset(source: str, path: Path, split: str | None) -> Iterator[tuple[int, dict]]:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as e:  # FileNotFoundError and friends: the folder is not a saved dataset
        raise DataError(source, None, None, f"is a folder but not one written by datasets.save_to_disk ({e})"
                        ) from None
    yield from _rows(_pick_split(source, dataset, split))


def _read_hub(source: str, split: str | None, config_name: str | None = None) -> Iterator[tuple[int, dict]]:
    import datasets

    try:
        dataset = datasets.load_dataset(source, config_name, split=split or "train")
    except Exception as e:  # offline, not found, gated, bad split: all are the user's to fix
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(source, None, None, f"could not load dataset '{source}' from the Hugging Face Hub: "
                        f"{reason}; pass a local file or folder") from None
    yield from _rows(dataset)
