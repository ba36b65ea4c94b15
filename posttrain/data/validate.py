"""Content checks on schema examples, so a bad row is reported before any training starts.

Each check returns a list of ``DataError`` (one line each: file, row, field such as ``messages[2].content``)
rather than raising, so a whole file can be checked in one pass. Role order is checked only once every message
is well formed: a malformed message would otherwise also show up as a confusing order error.
"""

from __future__ import annotations

from posttrain.data.schema import (
    DataError,
    DataErrors,
    Example,
    PreferencePair,
    PromptExample,
    SFTExample,
    UnpairedExample,
)

ROLES = ("system", "user", "assistant", "tool")
# After an optional leading system message a conversation starts with a user turn, then alternates; tool
# results follow an assistant turn (which called the tool) and are answered by the assistant.
NEXT_ROLES = {"user": ("assistant",), "assistant": ("user", "tool"), "tool": ("tool", "assistant")}
CONTINUATION_ROLES = ("assistant", "tool")


def message_errors(messages, field: str, source: str, row: int) -> list[DataError]:
    """Every message is an object with a known ``role`` and non-empty string ``content``."""
    if not isinstance(messages, list):
        return [DataError(source, row, field, f"must be a list of messages, got {type(messages).__name__}")]
    if not messages:
        return [DataError(source, row, field, "is empty")]
    errors = []
    for i, message in enumerate(messages):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            errors.append(DataError(source, row, where, "must be an object with 'role' and 'content', "
                                    f"got {type(message).__name__}"))
            continue
        role, content = message.get("role"), message.get("content")
        if role is None:
            errors.append(DataError(source, row, f"{where}.role", "missing"))
        elif role not in ROLES:
            errors.append(DataError(source, row, f"{where}.role",
                                    f"unknown role {role!r} (expected one of {', '.join(ROLES)})"))
        if content is None:
            errors.append(DataError(source, row, f"{where}.content", "missing"))
        elif not isinstance(content, str):
            errors.append(DataError(source, row, f"{where}.content",
                                    f"must be a string, got {type(content).__name__}"))
        elif not content.strip():
            errors.append(DataError(source, row, f"{where}.content", "is empty"))
    return errors


def order_errors(parts: list[tuple[str, list]], source: str, row: int) -> list[DataError]:
    """Role order across consecutive pieces of one conversation, e.g. ``[("prompt", p), ("chosen", c)]``.

    Only the first violation is reported: everything after it is out of order relative to it anyway.
    """
    previous = None
    for field, messages in parts:
        for i, message in enumerate(messages):
            role, where = message["role"], f"{field}[{i}].role"
            if role == "system":
                if previous is not None:
                    return [DataError(source, row, where, "a system message may only come first")]
            elif previous in (None, "system"):
                if role != "user":
                    return [DataError(source, row, where,
                                      f"the conversation must start with a user turn, got {role!r}")]
            elif role not in NEXT_ROLES[previous]:
                expected = " or ".join(repr(r) for r in NEXT_ROLES[previous])
                return [DataError(source, row, where, f"{role!r} cannot follow {previous!r} (expected {expected})")]
            previous = role
    return []


def _prompt_errors(prompt: list, source: str, row: int) -> list[DataError]:
    if prompt[-1]["role"] != "user":
        return [DataError(source, row, f"prompt[{len(prompt) - 1}].role",
                          f"the prompt must end with a user turn, got {prompt[-1]['role']!r}")]
    return []


def _continuation_errors(messages: list, field: str, source: str, row: int) -> list[DataError]:
    """A reply: assistant turn(s), possibly with tool results between them, ending with the assistant."""
    for i, message in enumerate(messages):
        if message["role"] not in CONTINUATION_ROLES:
            return [DataError(source, row, f"{field}[{i}].role",
                              f"must be assistant turn(s), got {message['role']!r}")]
    if messages[0]["role"] != "assistant" or messages[-1]["role"] != "assistant":
        i = 0 if messages[0]["role"] != "assistant" else len(messages) - 1
        return [DataError(source, row, f"{field}[{i}].role",
                          "a reply must start and end with an assistant turn, got 'tool'")]
    return []


def _sft_errors(ex: SFTExample) -> list[DataError]:
    src, row, msgs = ex.source, ex.row, ex.messages
    errors = message_errors(msgs, "messages", src, row)
    if errors:
        return errors
    if not any(m["role"] == "assistant" for m in msgs):
        return [DataError(src, row, "messages", "has no assistant turn to train on")]
    if msgs[-1]["role"] != "assistant":
        return [DataError(src, row, f"messages[{len(msgs) - 1}].role",
                          f"the conversation must end with an assistant turn, got {msgs[-1]['role']!r}")]
    return order_errors([("messages", msgs)], src, row)


def _reply_errors(ex, replies: list[str]) -> list[DataError]:
    """Shared by pairs and unpaired rows: a prompt ending in a user turn, then one or more replies."""
    src, row = ex.source, ex.row
    errors = message_errors(ex.prompt, "prompt", src, row)
    for name in replies:
        errors += message_errors(getattr(ex, name), name, src, row)
    if errors:
        return errors
    errors = _prompt_errors(ex.prompt, src, row)
    for name in replies:
        errors += _continuation_errors(getattr(ex, name), name, src, row)
    if errors:
        return errors
    for name in replies:
        for error in order_errors([("prompt", ex.prompt), (name, getattr(ex, name))], src, row):
            if str(error) not in {str(e) for e in errors}:  # a bad prompt shows up once, not per reply
                errors.append(error)
    return errors


def validate_example(ex: Example) -> list[DataError]:
    """All content errors in one example (empty when it is fine)."""
    if isinstance(ex, SFTExample):
        return _sft_errors(ex)
    if isinstance(ex, PreferencePair):
        errors = _reply_errors(ex, ["chosen", "rejected"])
        if not errors and ex.chosen == ex.rejected:
            errors.append(DataError(ex.source, ex.row, "rejected", "identical to chosen"))
        return errors
    if isinstance(ex, UnpairedExample):
        errors = _reply_errors(ex, ["completion"])
        if not isinstance(ex.label, bool):
            errors.append(DataError(ex.source, ex.row, "label", f"must be true or false, got {ex.label!r}"))
        return errors
    if isinstance(ex, PromptExample):
        errors = message_errors(ex.prompt, "prompt", ex.source, ex.row)
        return errors or _prompt_errors(ex.prompt, ex.source, ex.row) or order_errors(
            [("prompt", ex.prompt)], ex.source, ex.row)
    raise TypeError(f"not a schema example: {type(ex).__name__}")


def validate_examples(examples: list[Example]) -> None:
    """Raise ``DataErrors`` listing every problem in ``examples`` (for rows built in memory, e.g. by judges)."""
    errors = [error for ex in examples for error in validate_example(ex)]
    if errors:
        raise DataErrors(errors)
