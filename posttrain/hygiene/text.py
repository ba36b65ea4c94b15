"""Rows as text: stream a data file, normalise each row into the one schema (so every layout ``posttrain.data``
accepts works here too), and pull out the text fields that hygiene compares.

Reading is streaming: one record at a time, the first bad row raises one ``DataError`` naming file, line and
field, and nothing downstream has written a finished file yet.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

from posttrain.data.layouts import CONVERTERS, guess_kind
from posttrain.data.sources import iter_source_records, source_label
from posttrain.data.schema import DataError, Example, PreferencePair, PromptExample, SFTExample, UnpairedExample
from posttrain.data.validate import validate_example

KINDS = ("auto", "sft", "preference", "unpaired", "prompt")
_WORD = re.compile(r"\w+", re.UNICODE)
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Folding:
    """How text is normalised before two rows are compared (exact dedup keys, MinHash shingles)."""

    case: bool = True
    whitespace: bool = True
    punctuation: bool = True


_PUNCT_TABLE: dict[int, str] = {}


def _punctuation_table() -> dict[int, str]:
    # Every punctuation (P*) and symbol (S*) code point of the BMP -> a space; str.translate runs it in C.
    if not _PUNCT_TABLE:
        _PUNCT_TABLE.update({c: " " for c in range(0x10000) if unicodedata.category(chr(c))[0] in "PS"})
    return _PUNCT_TABLE


def normalise(text: str, folding: Folding = Folding()) -> str:
    """NFKC, then the configured folds. Punctuation folding drops every Unicode punctuation/symbol character,
    so ``"Hello, world!"`` and ``"hello world"`` become the same key."""
    text = unicodedata.normalize("NFKC", text)
    if folding.case:
        text = text.casefold()
    if folding.punctuation:
        text = text.translate(_punctuation_table())
    if folding.whitespace:
        text = _SPACE.sub(" ", text).strip()
    return text


def words(text: str) -> list[str]:
    """Lower-cased word tokens (``\\w+``), the unit of n-grams for decontamination and diagnostics."""
    return _WORD.findall(text.casefold())


def digest(text: str) -> bytes:
    """A stable 8-byte key (the same across runs and machines, unlike ``hash``)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


def detect_kind(record: dict) -> str:
    """The schema kind a raw record most likely is (``--kind auto``)."""
    kind = guess_kind(record)
    if kind is not None:
        return kind
    raise ValueError("cannot tell the data kind from its first row (fields: "
                     f"{', '.join(record) or 'none'}); pass --kind")


def _joined(messages) -> str:
    return "\n".join(m["content"] for m in messages)


def text_fields(example: Example) -> dict[str, str]:
    """The texts hygiene compares, by field: ``prompt`` always; then ``response`` (SFT assistant turns),
    ``chosen`` + ``rejected`` (pairs) or ``completion`` (unpaired)."""
    if isinstance(example, SFTExample):
        return {"prompt": _joined(m for m in example.messages if m["role"] != "assistant"),
                "response": _joined(m for m in example.messages if m["role"] == "assistant")}
    if isinstance(example, PreferencePair):
        return {"prompt": _joined(example.prompt), "chosen": _joined(example.chosen),
                "rejected": _joined(example.rejected)}
    if isinstance(example, UnpairedExample):
        return {"prompt": _joined(example.prompt), "completion": _joined(example.completion)}
    if isinstance(example, PromptExample):
        return {"prompt": _joined(example.prompt)}
    raise TypeError(f"not a schema example: {type(example).__name__}")


def key_text(fields: dict[str, str], key: str) -> str:
    """What two rows must share to be duplicates: ``full`` (every field) or ``prompt`` (the prompt only)."""
    if key == "prompt":
        return fields["prompt"]
    return "\x1f".join(f"{name}\x1e{text}" for name, text in fields.items())


@dataclass
class Row:
    line: int  # 1-based line (JSONL) or record number
    record: dict  # the raw record, written back out unchanged (or redacted)
    example: Example


def _is_identical_pair_error(error: DataError) -> bool:
    # Hygiene reports identical chosen/rejected pairs (diagnostics) instead of refusing the file.
    return error.field_name == "rejected" and error.message == "identical to chosen"


def stream_rows(source: str, kind: str = "auto", split: str | None = None) -> Iterator[Row]:
    """Every row of ``source`` (``split`` of a dataset folder or hub id) as a ``Row``; the first bad row raises
    its ``DataError`` (one line)."""
    convert = None
    for where, line, record in iter_source_records(source, split):
        if convert is None:
            if kind == "auto":
                try:
                    kind = detect_kind(record)
                except ValueError as e:
                    raise DataError(where, line, None, str(e)) from None
            convert = CONVERTERS[kind]
        example = convert(record, where, line)
        errors = [e for e in validate_example(example) if not _is_identical_pair_error(e)]
        if errors:
            raise errors[0]
        yield Row(line, record, example)
    if convert is None:
        raise DataError(source_label(source), None, None, "has no rows")


def stream_kind(source: str, kind: str, split: str | None = None) -> str:
    """The kind ``stream_rows`` will use (reads one record when ``kind`` is auto)."""
    if kind != "auto":
        return kind
    for where, line, record in iter_source_records(source, split):
        try:
            return detect_kind(record)
        except ValueError as e:
            raise DataError(where, line, None, str(e)) from None
    raise DataError(source_label(source), None, None, "has no rows")
