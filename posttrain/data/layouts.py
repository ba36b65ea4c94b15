"""The layouts people already have, normalised into the one schema.

One function per kind (``to_sft``, ``to_preference``, ``to_unpaired``, ``to_prompt``) takes a raw record and
returns a schema example, or raises ``DataError`` naming the field that does not fit. Fields a layout does not
use are kept in ``metadata`` (scores, ids, ...). Message *values* (empty content, unknown roles, role order)
are checked afterwards by ``validate``; ``load_examples`` does both for a whole file and reports every error.

Accepted layouts:

- SFT: ``messages`` or ``conversations`` (``{role, content}``, or ShareGPT ``{from, value}``); ``prompt`` +
  ``completion`` (each a string or a message list, TRL prompt-completion); alpaca ``instruction`` (+ ``input``)
  + ``output``.
- Preference: ``prompt`` + ``chosen`` + ``rejected`` as strings or message lists (TRL explicit prompt);
  ``chosen``/``rejected`` as full conversations with the prompt inferred as their shared leading messages (TRL
  implicit prompt, and UltraFeedback-binarized, whose ``prompt`` string repeats the first user turn);
  Anthropic HH strings (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) with no ``prompt``.
- Unpaired (KTO): ``prompt`` + ``completion`` + ``label`` (bool, 0/1, or "true"/"false").
- Prompt: ``prompt`` (string or message list) or ``messages``. IFEval-format rows (google/IFEval
  ``instruction_id_list`` + ``kwargs``, allenai/RLVR-IFeval ``ground_truth``) also get their instructions as
  verifiable ``constraints`` in metadata (``verifiers/ifeval.py`` maps each id to a constraint kind) and
  IFEval's ``key`` as ``id``; an id with no verifier is an error naming it, or, with ``ifeval_unsupported="skip"``,
  dropped (listed in ``ifeval_skipped``; a row left with none is skipped).

Every kind accepts an optional ``system`` string, prepended as a system message.
"""

from __future__ import annotations

import functools
import os
import re

from posttrain.data.sources import iter_source_records, source_label
from posttrain.data.schema import (
    DataError,
    DataErrors,
    Example,
    Message,
    PreferencePair,
    PromptExample,
    SFTExample,
    UnpairedExample,
)
from posttrain.data.validate import validate_example
from posttrain.verifiers.ifeval import IFEvalError, ifeval_constraints, read_ifeval

SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "tool": "tool"}
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
HH_ASSISTANT = "\n\nAssistant:"
LABEL_VALUES = {"true": True, "1": True, "false": False, "0": False}


def _text(record: dict, key: str, source: str, row: int) -> str:
    return check_text(record.get(key), key, source, row)


def check_text(value, key: str, source: str, row: int) -> str:
    """``value`` if it is a non-empty string, else the DataError naming ``key``."""
    if value is None:
        raise DataError(source, row, key, "missing")
    if not isinstance(value, str):
        raise DataError(source, row, key, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(source, row, key, "is empty")
    return value


def _messages(value, key: str, source: str, row: int) -> list[Message]:
    """Copy a message list keeping only ``role`` and ``content``: Arrow-backed rows carry every struct field
    (``tool_calls: None`` ...) and templates treat a present ``None`` differently from an absent key."""
    if not isinstance(value, list):
        raise DataError(source, row, key, f"must be a string or a message list, got {type(value).__name__}")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise DataError(source, row, f"{key}[{i}]",
                            f"must be an object with 'role' and 'content', got {type(message).__name__}")
        if "role" not in message and "from" in message:  # ShareGPT
            role = message.get("from")
            message = {"role": SHAREGPT_ROLES.get(role, role), "content": message.get("value")}
        messages.append({k: message[k] for k in ("role", "content") if message.get(k) is not None})
    return messages


def _turns(record: dict, key: str, role: str, source: str, row: int) -> list[Message]:
    """A field that is either plain text (one ``role`` turn) or a message list."""
    value = record.get(key)
    if isinstance(value, list):
        return _messages(value, key, source, row)
    if isinstance(value, dict):
        return _messages([value], key, source, row)
    if value is not None and not isinstance(value, str):
        raise DataError(source, row, key, f"must be a string or a message list, got {type(value).__name__}")
    return [{"role": role, "content": _text(record, key, source, row)}]


def _with_system(record: dict, messages: list[Message], source: str, row: int) -> list[Message]:
    system = record.get("system")
    if system is None or system == "":  # a CSV column that is empty for this row
        return messages
    if not isinstance(system, str) or not system.strip():
        raise DataError(source, row, "system", "must be a non-empty string")
    if messages and messages[0].get("role") == "system":
        raise DataError(source, row, "system", "the row has both a 'system' field and a system message")
    return [{"role": "system", "content": system}] + messages


def _metadata(record: dict, used: tuple[str, ...]) -> dict:
    return {k: v for k, v in record.items() if k not in used}


def _present(record: dict, *keys: str) -> bool:
    # Columnar sources (Parquet, datasets) give every row every column, with None where a row has no value.
    return any(record.get(k) is not None for k in keys)


def to_sft(record: dict, source: str = "<memory>", row: int = 0) -> SFTExample:
    if _present(record, "messages", "conversations"):
        key = "messages" if _present(record, "messages") else "conversations"
        messages, used = _messages(record[key], key, source, row), (key,)
    elif _present(record, "prompt", "completion"):
        messages = (_turns(record, "prompt", "user", source, row)
                    + _turns(record, "completion", "assistant", source, row))
        used = ("prompt", "completion")
    elif _present(record, "instruction", "output"):
        instruction = _text(record, "instruction", source, row)
        extra = record.get("input")
        if isinstance(extra, str) and extra.strip():
            instruction = f"{instruction}\n\n{extra}"
        elif extra not in (None, "") and not isinstance(extra, str):
            raise DataError(source, row, "input", f"must be a string, got {type(extra).__name__}")
        messages = [{"role": "user", "content": instruction},
                    {"role": "assistant", "content": _text(record, "output", source, row)}]
        used = ("instruction", "input", "output")
    else:
        raise DataError(source, row, "messages", "missing: expected 'messages', 'conversations', 'prompt' + "
                        f"'completion', or 'instruction' + 'output' (the row has: {', '.join(record) or 'nothing'})")
    return SFTExample(_with_system(record, messages, source, row), source, row, _metadata(record, used + ("system",)))


def _split_shared_prefix(chosen: list[Message], rejected: list[Message], source: str, row: int):
    """Prompt = the longest run of leading messages the two conversations share, cut back to a user turn."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n > 0 and chosen[n - 1].get("role") != "user":
        n -= 1
    if n == 0:
        raise DataError(source, row, "prompt", "missing, and chosen and rejected share no leading messages ending "
                        "in a user turn to infer it from; add a 'prompt' field")
    return chosen[:n], chosen[n:], rejected[n:]


def _strip_one_space(text: str) -> str:
    return text[1:] if text.startswith(" ") else text


def _parse_hh(text: str, source: str, row: int) -> list[Message]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c"`` -> user/assistant/user messages."""
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text
    parts = re.split(r"\n\n(Human|Assistant):", text)
    if parts[0].strip():
        raise DataError(source, row, "chosen", "Anthropic HH text must start with '\\n\\nHuman:'")
    return [{"role": HH_ROLES[parts[i]], "content": _strip_one_space(parts[i + 1])} for i in range(1, len(parts), 2)]


def _split_hh(chosen: str, rejected: str, source: str, row: int):
    """Anthropic HH: the prompt is the two strings' common prefix, cut back to its last ``"\\n\\nAssistant:"``;
    what follows in each string is that side's reply."""
    shared = len(os.path.commonprefix([chosen, rejected]))
    marker = chosen.rfind(HH_ASSISTANT, 0, shared)
    if marker < 0:
        raise DataError(source, row, "chosen", "no 'prompt' field, and chosen and rejected do not share a prefix "
                        "ending in '\\n\\nAssistant:' (Anthropic HH layout)")
    reply_start = marker + len(HH_ASSISTANT)
    prompt = _parse_hh(chosen[:marker], source, row)
    return (prompt, [{"role": "assistant", "content": _strip_one_space(chosen[reply_start:])}],
            [{"role": "assistant", "content": _strip_one_space(rejected[reply_start:])}])


def _is_conversation(messages: list[Message]) -> bool:
    return bool(messages) and messages[0].get("role") in ("system", "user")


def to_preference(record: dict, source: str = "<memory>", row: int = 0) -> PreferencePair:
    for key in ("chosen", "rejected"):
        if record.get(key) is None:
            raise DataError(source, row, key, "missing")
    if not _present(record, "prompt") and isinstance(record["chosen"], str) and isinstance(record["rejected"], str):
        prompt, chosen, rejected = _split_hh(record["chosen"], record["rejected"], source, row)
    else:
        chosen = _turns(record, "chosen", "assistant", source, row)
        rejected = _turns(record, "rejected", "assistant", source, row)
        if _is_conversation(chosen) and _is_conversation(rejected):
            # Implicit prompt; UltraFeedback also has a 'prompt' string, which repeats the shared user turn.
            prompt, chosen, rejected = _split_shared_prefix(chosen, rejected, source, row)
        elif not _present(record, "prompt"):
            raise DataError(source, row, "prompt", "missing: chosen and rejected are replies, so the row needs a "
                            "'prompt' (or full conversations in chosen and rejected)")
        else:
            prompt = _turns(record, "prompt", "user", source, row)
    return PreferencePair(_with_system(record, prompt, source, row), chosen, rejected, source, row,
                          _metadata(record, ("prompt", "chosen", "rejected", "system")))


def _label(value, source: str, row: int) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in LABEL_VALUES:
        return LABEL_VALUES[value.strip().lower()]
    if value is None:
        raise DataError(source, row, "label", "missing")
    raise DataError(source, row, "label", f"must be true or false (or 1/0), got {value!r}")


def to_unpaired(record: dict, source: str = "<memory>", row: int = 0) -> UnpairedExample:
    prompt = _turns(record, "prompt", "user", source, row)
    completion = _turns(record, "completion", "assistant", source, row)
    label = _label(record.get("label"), source, row)
    return UnpairedExample(_with_system(record, prompt, source, row), completion, label, source, row,
                           _metadata(record, ("prompt", "completion", "label", "system")))


class SkippedRow(DataError):
    """A prompt row left with no instruction to verify once its unsupported IFEval ids were skipped."""


IFEVAL_UNSUPPORTED = ("error", "skip")


def _ifeval_metadata(record: dict, metadata: dict, source: str, row: int, unsupported: str) -> dict:
    """``metadata`` plus the row's IFEval instructions as ``constraints`` (unchanged for other rows)."""
    try:
        found = read_ifeval(record)
        if found is None:
            return metadata
        field, ids, kwargs = found
        if _present(record, "constraints", "constraint"):
            raise DataError(source, row, field, "the row has both IFEval instructions and 'constraints' or "
                            "'constraint'; keep one")
        constraints, skipped = ifeval_constraints(field, ids, kwargs, unsupported=unsupported)
    except IFEvalError as e:
        raise DataError(source, row, e.field, str(e)) from None
    if not constraints:
        raise SkippedRow(source, row, field, f"skipped: no instruction with a verifier ({', '.join(skipped)})")
    out = {**metadata, "instruction_id_list": ids, "constraints": constraints}
    if skipped:
        out["ifeval_skipped"] = skipped
    if out.get("id") is None and isinstance(record.get("key"), (int, str)) and not isinstance(record["key"], bool):
        out["id"] = record["key"]
    return out


def to_prompt(record: dict, source: str = "<memory>", row: int = 0, *,
              ifeval_unsupported: str = "error") -> PromptExample:
    if _present(record, "prompt"):
        prompt, used = _turns(record, "prompt", "user", source, row), ("prompt",)
    elif _present(record, "messages"):
        prompt, used = _messages(record["messages"], "messages", source, row), ("messages",)
    else:
        raise DataError(source, row, "prompt", f"missing (the row has: {', '.join(record) or 'nothing'})")
    metadata = _ifeval_metadata(record, _metadata(record, used + ("system",)), source, row, ifeval_unsupported)
    return PromptExample(_with_system(record, prompt, source, row), source, row, metadata)


CONVERTERS = {"sft": to_sft, "preference": to_preference, "unpaired": to_unpaired, "prompt": to_prompt}


EXPECTED_FIELDS = {"sft": "messages (or prompt + completion)", "preference": "prompt, chosen, rejected",
                   "unpaired": "prompt, completion, label", "prompt": "prompt (or messages)"}
# a row with none of its kind's own fields is another kind of data, not a broken row of this kind
_OWN_FIELDS = {"sft": ("messages", "conversations", "completion", "output", "instruction"),
               "preference": ("chosen", "rejected"), "unpaired": ("label",), "prompt": ("prompt", "messages")}


def guess_kind(record: dict) -> str | None:
    """The data kind a raw record most likely is: preference, unpaired, sft or prompt (None: none of them)."""
    if record.get("chosen") is not None and record.get("rejected") is not None:
        return "preference"
    if record.get("label") is not None and record.get("completion") is not None:
        return "unpaired"
    if any(record.get(k) is not None for k in ("messages", "conversations", "completion", "output")):
        return "sft"
    if record.get("prompt") is not None:
        return "prompt"
    return None


def load_examples(source: str, kind: str, split: str | None = None, *, ifeval_unsupported: str = "error",
                  skipped: list[DataError] | None = None) -> list[Example]:
    """Read ``source``, convert every row to ``kind`` and validate it. Raises ``DataErrors`` listing every bad
    row (one line each) so a user fixes the file in one go; nothing is returned unless every row is good.
    ``ifeval_unsupported`` (prompt rows): "error" or "skip" IFEval instruction ids with no verifier; rows skipped
    whole are appended to ``skipped`` when given."""
    if kind not in CONVERTERS:
        raise ValueError(f"unknown data kind {kind!r} (expected one of {', '.join(CONVERTERS)})")
    if ifeval_unsupported not in IFEVAL_UNSUPPORTED:
        raise ValueError(f"ifeval_unsupported must be one of {', '.join(IFEVAL_UNSUPPORTED)}, got "
                         f"{ifeval_unsupported!r}")
    convert = CONVERTERS[kind]
    if kind == "prompt":
        convert = functools.partial(to_prompt, ifeval_unsupported=ifeval_unsupported)
    examples: list[Example] = []
    errors: list[DataError] = []
    n_skipped = 0
    first: dict | None = None
    label = source_label(source)
    try:
        for where, row, record in iter_source_records(source, split, errors=errors):
            first = record if first is None else first
            try:
                example = convert(record, where, row)
            except SkippedRow as e:
                n_skipped += 1
                if skipped is not None:
                    skipped.append(e)
                continue
            except DataError as e:
                errors.append(e)
                continue
            row_errors = validate_example(example)
            errors.extend(row_errors)
            if not row_errors:
                examples.append(example)
    except DataError as e:  # the source as a whole is unreadable (missing, wrong type, hub unreachable)
        errors.append(e)
    if not errors and not examples:
        left = f" left ({n_skipped} skipped: no instruction with a verifier)" if n_skipped else ""
        errors.append(DataError(label, None, None, f"has no rows{left}"))
    found = guess_kind(first) if first is not None and not examples else None
    if errors and found is not None and found != kind and kind in EXPECTED_FIELDS \
            and not any(k in first for k in _OWN_FIELDS[kind]):
        # every row failed because the file holds another kind of data: one line, not one per row
        raise DataError(label, None, None, f"its rows look like {found} data (first row's fields: "
                        f"{', '.join(first)}), but this needs {kind} rows with {EXPECTED_FIELDS[kind]}")
    if errors:
        raise DataErrors(errors)
    return examples
