"""The serving layer without HTTP: request validation, limits from the context, outputs cut by a deadline, and
incremental stream text."""

from __future__ import annotations

import pytest

from posttrain.generation.types import RowSpec
from posttrain.serving.batcher import output_from_tokens
from posttrain.serving.requests import (RequestError, body_limit, fit_to_context, parse_chat_request,
                                        parse_content_length)
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


def test_max_tokens_over_the_context_is_refused_before_tokenizing():
    messages = [{"role": "user", "content": "hi"}]
    for key in ("max_tokens", "max_completion_tokens"):
        with pytest.raises(RequestError) as e:
            parse_chat_request({"messages": messages, key: 1_000_000_000}, context_length=2048, **KW)
        assert (e.value.status, e.value.code) == (400, "context_length_exceeded")
        assert key in e.value.message and "2048" in e.value.message
    r = parse_chat_request({"messages": messages, "max_tokens": 2047}, context_length=2048, **KW)
    assert (r["max_tokens"], r["max_tokens_given"]) == (2047, True)
    r = parse_chat_request({"messages": messages}, context_length=2048, **KW)
    assert (r["max_tokens"], r["max_tokens_given"]) == (16, False)


def test_fit_to_context():
    assert fit_to_context(100, 50, explicit=True, context_length=2048) == 50
    assert fit_to_context(2000, 48, explicit=True, context_length=2048) == 48  # exactly full
    assert fit_to_context(2000, 256, explicit=False, context_length=2048) == 48  # the default shrinks
    with pytest.raises(RequestError) as e:
        fit_to_context(2000, 49, explicit=True, context_length=2048)
    assert e.value.code == "context_length_exceeded"
    assert all(s in e.value.message for s in ("2000 tokens", "49", "2049", "2048", "at most 48"))
    with pytest.raises(RequestError) as e:
        fit_to_context(2048, 256, explicit=False, context_length=2048)
    assert "no room" in e.value.message and "2048" in e.value.message


def test_body_limit_and_content_length():
    assert body_limit(2048) == 2048 * 32 + 65536
    assert body_limit(8192) > body_limit(2048)
    assert parse_content_length(None) == 0 and parse_content_length(" 12 ") == 12
    for bad in ("abc", "-5", "1.5", "1e3", "", "\u00b2"):
        with pytest.raises(RequestError) as e:
            parse_content_length(bad)
        assert (e.value.status, e.value.code) == (400, "invalid_content_length")


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


EOS = 300


def test_output_from_tokens_follows_the_genoutput_contract():
    tok, row = CharTokenizer(), RowSpec([1], 0.0, 1.0, 5, 0, ["!"])
    assert output_from_tokens(tok, EOS, row, list(b"abc") + [EOS, 65], True).finish_reason == "stop"
    out = output_from_tokens(tok, EOS, row, list(b"abc") + [EOS, 65], True)
    assert (out.text, out.token_ids) == ("abc", [97, 98, 99, EOS])
    out = output_from_tokens(tok, EOS, row, list(b"abcde"), True)
    assert (out.text, out.finish_reason) == ("abcde", "length")
    out = output_from_tokens(tok, EOS, row, list(b"ab!c"), True)
    assert (out.text, out.finish_reason, out.completion_tokens) == ("ab", "stop", 4)
    out = output_from_tokens(tok, EOS, row, list(b"ab"), False)  # cut by the deadline
    assert (out.text, out.finish_reason) == ("ab", "timeout")
