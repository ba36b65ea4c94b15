"""The serving layer without HTTP: request validation and incremental stream text."""

from __future__ import annotations

import pytest

from posttrain.serving.requests import RequestError, parse_chat_request
from posttrain.serving.server import StreamText

KW = dict(model_name="tiny", default_max_tokens=16, max_n=4)


def test_defaults_and_fields():
    r = parse_chat_request({"messages": [{"role": "user", "content": "hi"}]}, **KW)
    assert (r["temperature"], r["top_p"], r["max_tokens"], r["n"], r["seed"], r["stream"], r["stop"]) == \
        (1.0, 1.0, 16, 1, None, False, [])
    r = parse_chat_request({"model": "tiny", "messages": [{"role": "developer", "content": [{"type": "text",
                            "text": "a"}, {"type": "text", "text": "b"}]}, {"role": "user", "content": "x"}],
                            "temperature": 0, "max_completion_tokens": 3, "n": 2, "seed": 4, "stop": "\n",
                            "logprobs": False}, **KW)
    assert r["messages"][0] == {"role": "system", "content": "ab"}
    assert (r["temperature"], r["max_tokens"], r["n"], r["seed"], r["stop"]) == (0.0, 3, 2, 4, ["\n"])


@pytest.mark.parametrize("body, status, code", [
    ({}, 400, "missing_messages"),
    ({"messages": []}, 400, "invalid_messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_messages"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 3}, 400, "invalid_value"),
    ({"messages": [{"role": "user", "content": "x"}], "top_p": 0}, 400, "invalid_value"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 5}, 400, "invalid_value"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}, 400, "invalid_value"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 5}, 400, "invalid_value"),
    ({"messages": [{"role": "user", "content": "x"}], "model": "gpt-4"}, 404, "model_not_found"),
    ([1, 2], 400, "invalid_request"),
])
def test_bad_requests(body, status, code):
    with pytest.raises(RequestError) as e:
        parse_chat_request(body, **KW)
    assert (e.value.status, e.value.code) == (status, code)


class CharTokenizer:
    """One token per byte, decoded as UTF-8 with replacement, like a byte-level BPE."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def _stream(text: str, stop: list[str]) -> tuple[list[str], str]:
    st, deltas = StreamText(CharTokenizer(), stop), []
    for b in text.encode():
        deltas.append(st.push(b))
    final = CharTokenizer().decode(list(text.encode()))
    from posttrain.generation.types import cut_at_stop

    final = cut_at_stop(final, stop)[0]
    deltas.append(st.finish(final))
    return [d for d in deltas if d], final


def test_stream_holds_back_partial_characters_and_stop_prefixes():
    deltas, final = _stream("caf\u00e9 \u20ac!", [])
    assert "".join(deltas) == final == "caf\u00e9 \u20ac!" and all("\ufffd" not in d for d in deltas)
    deltas, final = _stream("hello END world", ["END"])
    assert "".join(deltas) == final == "hello " and not any("E" in d for d in deltas)
    deltas, final = _stream("a EN b", ["END"])  # a stop prefix that never completes is released at the end
    assert "".join(deltas) == final == "a EN b"
