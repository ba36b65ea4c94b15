"""Validating an OpenAI ``/v1/chat/completions`` request body into plain values (no HTTP here).

Supported fields: ``messages`` (required), ``model`` (optional; must be the served model when given),
``temperature`` (0..2, default 1), ``top_p`` (0 < p <= 1, default 1), ``max_tokens`` or
``max_completion_tokens`` (default: the server's), ``n`` (default 1), ``seed``, ``stream``, ``stop`` (a string or
up to 4). Fields this server does not implement (``logprobs``, penalties, tools, ...) are ignored rather than
refused, so stock OpenAI clients work; ``stream_options`` is accepted and ignored (no usage chunk).

Limits that follow from the model's context (``context_length`` tokens), checked before any work is queued:
``max_tokens`` below the context (``parse_chat_request``), prompt + ``max_tokens`` within it (``fit_to_context``),
and the request body within ``body_limit(context_length)`` bytes, so a huge body is refused before it is parsed
or tokenized.
"""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant", "tool")


class RequestError(Exception):
    """A request the server refuses: HTTP status, OpenAI error ``code`` and a one-line message."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param


# A generous bound on request-body bytes per prompt token: English text is 4-7 bytes per token (SmolLM2's tokens
# average 6.9), JSON-escaped non-ASCII is 6 bytes per character (\uXXXX) at one or more tokens per character; only
# whitespace-run and ASCII-art tokens are longer (up to 82 bytes in that vocabulary).
BODY_BYTES_PER_TOKEN = 32
# The JSON around the messages (keys, roles, sampling fields), which the bound above does not cover.
BODY_OVERHEAD_BYTES = 64 << 10


def body_limit(context_length: int) -> int:
    """Largest request body worth reading for a model of ``context_length`` tokens: a larger body holds a prompt
    that fits the context only if its text averages over 32 bytes per token (then raise ``--max-body-bytes``)."""
    return context_length * BODY_BYTES_PER_TOKEN + BODY_OVERHEAD_BYTES


def parse_content_length(value: str | None) -> int:
    """The ``Content-Length`` header as a byte count (0 when absent), or a 400 naming the bad value."""
    if value is None:
        return 0
    text = value.strip()
    if not text.isdigit() or not text.isascii():  # isdigit alone accepts '²' and other Unicode digits
        raise _bad("invalid_content_length", f"Content-Length must be a non-negative integer, got {value[:40]!r}")
    return int(text)


def fit_to_context(prompt_tokens: int, max_tokens: int, *, explicit: bool, context_length: int) -> int:
    """The completion budget of a request whose prompt is ``prompt_tokens`` long: ``max_tokens`` when prompt +
    ``max_tokens`` fits the context, the room left when ``max_tokens`` is the server's default, else a 400."""
    room = context_length - prompt_tokens
    if room < 1:
        raise _bad("context_length_exceeded", f"the messages are {prompt_tokens} tokens, which leaves no room for "
                   f"a completion in this model's context of {context_length} tokens")
    if max_tokens <= room:
        return max_tokens
    if not explicit:  # the server's default shrinks to what fits; a number the client asked for is honoured or refused
        return room
    raise _bad("context_length_exceeded", f"the messages ({prompt_tokens} tokens) + max_tokens ({max_tokens}) = "
               f"{prompt_tokens + max_tokens} tokens is over this model's context of {context_length} tokens; "
               f"ask for at most {room} tokens")


def _bad(code: str, message: str) -> RequestError:
    return RequestError(400, code, message)


def _number(body: dict, key: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad("invalid_value", f"'{key}' must be a number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise _bad("invalid_value", f"'{key}' must be in {bound}, got {value}")
    return float(value)


def _integer(body: dict, key: str, default: int | None, low: int, high: int | None) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad("invalid_value", f"'{key}' must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        raise _bad("invalid_value", f"'{key}' must be between {low} and {high if high is not None else 'any'}, "
                   f"got {value}")
    return value


def _content(value, i: int) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # the content-parts form: [{"type": "text", "text": "..."}]
        parts = []
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise _bad("invalid_messages", f"messages[{i}].content: only text parts are supported")
            parts.append(part["text"])
        return "".join(parts)
    raise _bad("invalid_messages", f"messages[{i}].content must be a string")


def _messages(body: dict) -> list[dict[str, str]]:
    messages = body.get("messages")
    if messages is None:
        raise _bad("missing_messages", "'messages' is required")
    if not isinstance(messages, list) or not messages:
        raise _bad("invalid_messages", "'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _bad("invalid_messages", f"messages[{i}] must be an object with 'role' and 'content'")
        role = m.get("role")
        if role == "developer":  # OpenAI's newer name for the system turn
            role = "system"
        if role not in ROLES:
            raise _bad("invalid_messages", f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        out.append({"role": role, "content": _content(m.get("content"), i)})
    return out


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise _bad("invalid_value", "'stop' must be a non-empty string or a list of up to 4")
    return stops


# Request fields of the OpenAI API this server does not implement: a request that uses one is refused (400 naming
# it) rather than answered as if the field were not there.
UNSUPPORTED = {"tools": "tool calling", "tool_choice": "tool calling", "functions": "function calling",
               "function_call": "function calling", "response_format": "structured output (only type 'text')",
               "logprobs": "log-probabilities", "top_logprobs": "log-probabilities", "logit_bias": "logit bias",
               "audio": "audio output", "prediction": "predicted outputs"}


def _unsupported(body: dict) -> None:
    for key, what in UNSUPPORTED.items():
        value = body.get(key)
        if value in (None, False, [], {}) or (key == "tool_choice" and value == "none") \
                or (key == "response_format" and isinstance(value, dict) and value.get("type") == "text"):
            continue
        raise RequestError(400, "unsupported_parameter", f"'{key}' is not supported by posttrain serve ({what}); "
                           "remove it from the request", param=key)


def _stream_options(body: dict, stream: bool) -> bool:
    """Whether a streamed answer ends with a usage chunk (``stream_options.include_usage``)."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise RequestError(400, "invalid_value", "'stream_options' is only allowed with stream: true",
                           param="stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"} \
            or not isinstance(options.get("include_usage", False), bool):
        raise RequestError(400, "invalid_value", "'stream_options' takes only include_usage (true or false)",
                           param="stream_options")
    return bool(options.get("include_usage"))


def parse_chat_request(body: Any, *, model_name: str, default_max_tokens: int, max_n: int,
                       context_length: int | None = None) -> dict[str, Any]:
    """Plain values of a chat request, or ``RequestError``. ``max_tokens_given``: the client set the limit (so it
    is refused, not shrunk, when the prompt leaves less room: ``fit_to_context``)."""
    if not isinstance(body, dict):
        raise _bad("invalid_request", "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != model_name:
        raise RequestError(404, "model_not_found", f"model '{model}' is not served here (this server: '{model_name}')")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("invalid_value", f"'stream' must be true or false, got {stream!r}")
    _unsupported(body)
    include_usage = _stream_options(body, stream)
    given = _integer(body, "max_completion_tokens", None, 1, None)
    given = _integer(body, "max_tokens", given, 1, None)
    if given is not None and context_length is not None and given >= context_length:
        key = "max_tokens" if body.get("max_tokens") is not None else "max_completion_tokens"
        raise _bad("context_length_exceeded", f"'{key}' is {given}, but this model's context is {context_length} "
                   f"tokens (prompt included)")
    seed = _integer(body, "seed", None, -(1 << 63), (1 << 63) - 1)
    store = body.get("store", True)  # OpenAI's `store`: false keeps this exchange out of a feedback store
    if not isinstance(store, bool):
        raise _bad("invalid_value", f"'store' must be true or false, got {store!r}")
    return {
        "store": store,
        "messages": _messages(body),
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        "max_tokens": given if given is not None else default_max_tokens,
        "max_tokens_given": given is not None,
        "n": _integer(body, "n", 1, 1, max_n),
        "seed": seed,
        "stream": stream,
        "include_usage": include_usage,
        "stop": _stop(body),
    }
