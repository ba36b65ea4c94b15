"""`posttrain serve` driven by the official `openai` Python client: models list and retrieve, completions, the
streamed usage chunk, 400 naming the field for what the server does not implement, and keep-alive."""

from __future__ import annotations

import http.client
import json

import pytest

from posttrain.serving.server import start_server

openai = pytest.importorskip("openai", reason="the openai client is a dev dependency")
pytestmark = pytest.mark.usefixtures("one_torch_thread")
MESSAGES = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def client():
    srv, thread, url = start_server("tiny-random", "127.0.0.1", 0, max_batch_size=4, batch_wait_ms=5)
    yield srv, openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    srv.close()
    thread.join(timeout=10)


def test_models_list_and_retrieve(client):
    srv, c = client
    assert [m.id for m in c.models.list().data] == [srv.model_name]
    assert c.models.retrieve(srv.model_name).id == srv.model_name
    with pytest.raises(openai.NotFoundError) as e:
        c.models.retrieve("gpt-4o")
    assert "is not served here" in str(e.value)


def test_completion_and_streamed_usage(client):
    srv, c = client
    done = c.chat.completions.create(model=srv.model_name, messages=MESSAGES, max_tokens=4, seed=1)
    assert isinstance(done.choices[0].message.content, str) and done.usage.completion_tokens <= 4
    chunks = list(c.chat.completions.create(model=srv.model_name, messages=MESSAGES, max_tokens=4, seed=1,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == done.choices[0].message.content  # the same seed, the same answer, streamed
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == done.usage.completion_tokens
    assert last.usage.prompt_tokens == done.usage.prompt_tokens
    plain = list(c.chat.completions.create(model=srv.model_name, messages=MESSAGES, max_tokens=2, stream=True))
    assert all(ch.usage is None for ch in plain)


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logprobs": True}, "logprobs"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
])
def test_unsupported_fields_are_a_400_naming_them(client, extra, param):
    srv, c = client
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=srv.model_name, messages=MESSAGES, max_tokens=2, **extra)
    assert e.value.body["param"] == param and e.value.body["code"] == "unsupported_parameter"
    assert f"'{param}' is not supported" in e.value.body["message"]
    # what the API allows as a no-op is accepted
    ok = c.chat.completions.create(model=srv.model_name, messages=MESSAGES, max_tokens=2,
                                   response_format={"type": "text"}, logprobs=False)
    assert ok.choices


def test_keep_alive_serves_several_requests_on_one_connection(client):
    srv, _ = client
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    body = json.dumps({"messages": MESSAGES, "max_tokens": 2})
    for _ in range(3):
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.version == 11 and json.loads(resp.read())["choices"]
    sock = conn.sock
    conn.request("GET", "/v1/models")
    models = conn.getresponse()
    assert models.status == 200 and json.loads(models.read())["data"] and conn.sock is sock  # the same connection
    # an answer given without reading the body (401/404 before the body) closes the connection instead
    conn.request("POST", "/v1/nothing", body=body)
    resp = conn.getresponse()
    assert resp.status == 404 and resp.getheader("Connection") == "close"
    conn.close()
