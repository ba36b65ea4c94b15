"""The one internal schema every reader produces and every trainer consumes.

A message is a plain dict ``{"role": str, "content": str}``; roles are ``system``, ``user``, ``assistant``
(and ``tool``). Every example remembers where it came from (``source`` file or dataset id, 1-based ``row``) so
that any later error can name the file and row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]


@dataclass
class SFTExample:
    """A demonstration: a conversation whose assistant turns are trained on."""

    messages: list[Message]
    source: str = "<memory>"
    row: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreferencePair:
    """One prompt (a message list ending in a user turn) with a preferred and a dispreferred reply.

    ``chosen`` and ``rejected`` are message lists that continue ``prompt`` (usually one assistant message).
    """

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    source: str = "<memory>"
    row: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class UnpairedExample:
    """A single reply labelled desirable (``label=True``) or undesirable, as KTO consumes it."""

    prompt: list[Message]
    completion: list[Message]
    label: bool
    source: str = "<memory>"
    row: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class PromptExample:
    """A prompt with no reply, for generation and evaluation."""

    prompt: list[Message]
    source: str = "<memory>"
    row: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)


Example = SFTExample | PreferencePair | UnpairedExample | PromptExample

KINDS: dict[str, type] = {
    "sft": SFTExample,
    "preference": PreferencePair,
    "unpaired": UnpairedExample,
    "prompt": PromptExample,
}


class DataError(ValueError):
    """A user's data is wrong. ``str()`` is one line naming file, row and field."""

    def __init__(self, source: str, row: int | None, field_name: str | None, message: str):
        self.source, self.row, self.field_name, self.message = source, row, field_name, message
        where = source if row is None else f"{source}:{row}"
        what = f"field '{field_name}': " if field_name else ""
        super().__init__(f"{where}: {what}{message}")


class DataErrors(ValueError):
    """Several ``DataError``s found in one pass, so a user can fix them all at once."""

    def __init__(self, errors: list[DataError]):
        self.errors = errors
        shown = "\n".join(str(e) for e in errors[:20])
        more = f"\n... and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(shown + more)
