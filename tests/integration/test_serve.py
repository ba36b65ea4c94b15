"""`posttrain serve` on tiny-random over real HTTP (stdlib client only): OpenAI response shapes, n, streaming,
bearer auth, errors, and batching of concurrent requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from posttrain.serving.server import start_server

MESSAGES = [{"role": "user", "content": "Tell me about owls."}]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def server():
    srv, thread, url = start_server("tiny-random", "127.0.0.1", 0, max_batch_size=8, batch_wait_ms=5)
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
    yield srv
    srv.close()
    thread.join(timeout=10)
    assert not thread.is_alive()


def call(url: str, path: str, body=None, *, key: str | None = None, raw: bytes | None = None):
    """(status, parsed JSON or raw text)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url + path, data=data, method="POST" if data is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            text = resp.read().decode()
            status = resp.status
    except urllib.error.HTTPError as e:
        text, status = e.read().decode(), e.code
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def chat(url: str, **fields):
    return call(url, "/v1/chat/completions", {"model": "tiny-random", "messages": MESSAGES, **fields})


def stream_events(url: str, **fields) -> list:
    status, text = chat(url, stream=True, **fields)
    assert status == 200
    events = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def streamed_text(chunks: list, index: int = 0) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"][0]["index"] == index)


def test_models_and_completion_shape(server):
    status, body = call(server.url, "/v1/models")
    assert status == 200 and body["object"] == "list" and body["data"][0]["id"] == "tiny-random"
    status, body = chat(server.url, temperature=0, max_tokens=6)
    assert status == 200, body
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "tiny-random"
    assert isinstance(body["created"], int) and len(body["choices"]) == 1
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["finish_reason"] in ("stop", "length")
    tok = server.tokenizer
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(tok(text, add_special_tokens=False)["input_ids"])
    assert 1 <= usage["completion_tokens"] <= 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_n_choices_and_seeded_sampling(server):
    status, body = chat(server.url, n=2, temperature=1.0, max_tokens=5, seed=7)
    assert status == 200 and [c["index"] for c in body["choices"]] == [0, 1]
    assert 2 <= body["usage"]["completion_tokens"] <= 2 * 5  # summed over both choices
    assert body["choices"][0]["message"]["content"] != body["choices"][1]["message"]["content"]
    _, again = chat(server.url, n=2, temperature=1.0, max_tokens=5, seed=7)
    assert [c["message"] for c in again["choices"]] == [c["message"] for c in body["choices"]]


def test_stream_matches_the_non_streamed_text(server):
    _, greedy = chat(server.url, temperature=0, max_tokens=8)
    chunks = stream_events(server.url, temperature=0, max_tokens=8)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert streamed_text(chunks) == greedy["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == greedy["choices"][0]["finish_reason"]
    # Sampled random tokens (partial UTF-8 pieces included) stream to exactly the same text.
    _, sampled = chat(server.url, temperature=1.0, max_tokens=12, seed=3, n=2)
    chunks = stream_events(server.url, temperature=1.0, max_tokens=12, seed=3, n=2)
    for i in range(2):
        assert streamed_text(chunks, i) == sampled["choices"][i]["message"]["content"]
    assert len([c for c in chunks if c["choices"][0]["delta"].get("content")]) > 2  # token by token, not one blob


def test_bearer_key_is_enforced(server):
    srv, thread, url = start_server("tiny-random", generator=server.generator, api_key="sekret")
    try:
        for key in (None, "wrong"):
            status, body = chat(url, max_tokens=2, key=key)
            assert status == 401 and body["error"]["code"] == "invalid_api_key"
            assert set(body["error"]) >= {"message", "type", "code"}
        assert call(url, "/v1/models")[0] == 401
        assert call(url, "/v1/models", key="sekret")[0] == 200
        status, body = call(url, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 2}, key="sekret")
        assert status == 200 and body["choices"]
    finally:
        srv.close()


def test_bad_requests_get_openai_errors(server):
    status, body = call(server.url, "/v1/chat/completions", raw=b"{not json")
    assert status == 400 and body["error"]["code"] == "invalid_json"
    assert body["error"]["type"] == "invalid_request_error"
    status, body = call(server.url, "/v1/chat/completions", {"model": "tiny-random"})
    assert status == 400 and "messages" in body["error"]["message"]
    status, body = chat(server.url, temperature=-1)
    assert status == 400 and "temperature" in body["error"]["message"]
    assert call(server.url, "/v1/nothing")[0] == 404


def test_concurrent_requests_are_batched(server):
    srv, thread, url = start_server("tiny-random", generator=server.generator, max_batch_size=8, batch_wait_ms=500)
    results: list = [None] * 6
    barrier = threading.Barrier(6)

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = chat(url, temperature=0.5, max_tokens=4, seed=i, stream=i % 3 == 0)

    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert all(r is not None and r[0] == 200 for r in results), results
        status, stats = call(url, "/v1/stats")
        assert status == 200 and stats["requests"] == 6
        assert stats["max_batch_requests"] > 1 and stats["batches"] < 6, stats
    finally:
        srv.close()


def start_cli(*args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`posttrain serve tiny-random --port 0 ARGS` as a real process, and its URL once it listens (printed alone
    on stdout). The command itself is tested in test_serve_limits.py (one process start: they are slow)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "posttrain.serving.cli", "tiny-random", "--port", "0", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()  # the URL alone on stdout, once it listens
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise AssertionError(f"no URL on stdout ({url!r}): {proc.communicate()[1]}")
    return proc, url


def stop_cli(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
