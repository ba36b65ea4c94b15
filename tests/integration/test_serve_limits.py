"""`posttrain serve` against requests meant to freeze it (tiny-random, real HTTP over loopback): a max_tokens far
past the context, bodies too large or malformed, a request longer than its deadline, a client that goes away, a
stuck worker, a burst of 100 clients, and SIGTERM with requests in flight."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest

from posttrain.serving.requests import body_limit
from posttrain.serving.server import start_server

from .test_serve import MESSAGES, call, chat, start_cli, stop_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONTEXT = 2048  # tiny-random's max_position_embeddings


@pytest.fixture(scope="module")
def generator():
    from posttrain.generation.backends import load_generator

    gen, _ = load_generator("tiny-random", batch_size=8)
    return gen


@pytest.fixture
def serve(generator):
    """start_server(**options) on the shared tiny-random generator; every server is closed after the test."""
    servers = []

    def start(gen=None, **options):
        srv, _, _ = start_server("tiny-random", generator=gen or generator, **{"batch_wait_ms": 5, **options})
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.close(drain_timeout_s=0)


def raw_request(url: str, head: str, body: bytes = b"") -> tuple[str, dict | str]:
    """Send bytes the way no HTTP library would; (status line, parsed JSON body or raw text)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status, _, rest = data.partition(b"\r\n")
    text = rest.partition(b"\r\n\r\n")[2].decode()
    try:
        return status.decode(), json.loads(text)
    except json.JSONDecodeError:
        return status.decode(), text


def sse_events(text: str) -> list:
    events = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]", events[-3:]
    return [json.loads(e) for e in events[:-1]]


def wait_for(predicate, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.02)


def in_thread(results: dict, name: str, fn, *args, **kwargs) -> threading.Thread:
    def run() -> None:
        start = time.monotonic()
        results[name] = fn(*args, **kwargs)
        results[name + "_s"] = time.monotonic() - start

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_max_tokens_and_prompt_are_checked_against_the_context_before_queuing(serve):
    srv = serve()
    assert srv.context_length == CONTEXT
    status, body = chat(srv.url, max_tokens=1_000_000_000)
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    assert "1000000000" in body["error"]["message"] and "2048" in body["error"]["message"]
    status, body = chat(srv.url, max_completion_tokens=CONTEXT)
    assert status == 400 and "max_completion_tokens" in body["error"]["message"]
    status, body = chat(srv.url, max_tokens=CONTEXT - 5)  # fits alone, not after the prompt
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    assert "2048 tokens" in body["error"]["message"] and "at most" in body["error"]["message"]
    # A prompt that fits the body limit but not the context is refused after tokenizing, before generating.
    huge = [{"role": "user", "content": "owl " * 20_000}]
    start = time.monotonic()
    status, body = call(srv.url, "/v1/chat/completions", {"messages": huge, "max_tokens": 3})
    assert status == 400 and body["error"]["code"] == "context_length_exceeded", body
    assert time.monotonic() - start < 5
    assert srv.batcher.snapshot()["requests"] == 0  # nothing above reached the worker
    # Without max_tokens, the server's default (256) shrinks to the room the prompt leaves.
    tok = srv.tokenizer
    filler = [{"role": "user", "content": "owl " * (CONTEXT - 60)}]
    prompt = len(tok(tok.apply_chat_template(filler, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"])
    assert CONTEXT - 256 < prompt < CONTEXT, prompt
    status, body = call(srv.url, "/v1/chat/completions", {"messages": filler, "temperature": 0})
    assert status == 200 and body["usage"]["total_tokens"] <= CONTEXT, body
    status, body = chat(srv.url, max_tokens=3)
    assert status == 200 and body["usage"]["completion_tokens"] <= 3


def test_a_body_over_the_limit_is_refused_unread_and_the_server_stays_up(serve):
    srv = serve()
    assert srv.max_body_bytes == body_limit(CONTEXT) == CONTEXT * 32 + (64 << 10)
    big = json.dumps({"messages": [{"role": "user", "content": "a" * (5 << 20)}], "max_tokens": 3}).encode()
    start = time.monotonic()
    status, body = call(srv.url, "/v1/chat/completions", raw=big)  # the attack: 5 MB, under the old 8 MiB limit
    assert status == 413 and body["error"]["code"] == "request_too_large", body
    assert str(srv.max_body_bytes) in body["error"]["message"] and "--max-body-bytes" in body["error"]["message"]
    assert time.monotonic() - start < 5
    just_over = json.dumps({"messages": MESSAGES, "pad": "x" * srv.max_body_bytes}).encode()
    assert call(srv.url, "/v1/chat/completions", raw=just_over)[0] == 413
    assert call(srv.url, "/health") == (200, {"status": "ok"})
    assert chat(srv.url, max_tokens=2)[0] == 200
    custom = serve(max_body_bytes=4096)
    status, body = call(custom.url, "/v1/chat/completions", raw=json.dumps({"messages": MESSAGES, "pad": "x" * 5000})
                        .encode())
    assert status == 413 and "4096" in body["error"]["message"]


def test_malformed_length_and_json_get_a_400_not_a_dropped_connection(serve, capfd):
    srv = serve()
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    for value in ("abc", "-5", "1e3", ""):
        status, body = raw_request(srv.url, head + f"Content-Length: {value}", b"{}")
        assert status.startswith("HTTP/1.1 400"), (value, status, body)  # HTTP/1.1 since keep-alive
        assert body["error"]["code"] == "invalid_content_length" and "Content-Length" in body["error"]["message"]
    status, body = raw_request(srv.url, head + "Transfer-Encoding: chunked", b"2\r\n{}\r\n0\r\n\r\n")
    assert status.startswith("HTTP/1.1 411") and body["error"]["code"] == "length_required"
    deep = b"[" * 100_000  # json.loads raises RecursionError, not JSONDecodeError
    status, body = call(srv.url, "/v1/chat/completions", raw=deep)
    assert status == 400 and body["error"]["code"] == "invalid_json"
    assert chat(srv.url, max_tokens=2)[0] == 200
    assert "Traceback" not in capfd.readouterr().err


def test_the_deadline_cuts_a_long_generation_and_the_worker_moves_on(serve):
    # Uncut, 2000 tokens take ~6 s here; with a 1.5 s deadline both long requests (one batch) end near 1.5 s with
    # what they have, and the short request queued behind them is answered right after, not after 2000 tokens.
    srv = serve(request_timeout_s=1.5, batch_wait_ms=300)
    results: dict = {}
    threads = [in_thread(results, "stream", chat, srv.url, max_tokens=2000, temperature=0, stream=True),
               in_thread(results, "plain", chat, srv.url, max_tokens=2000, temperature=0)]
    wait_for(lambda: srv.batcher.snapshot()["running"] == 2)
    time.sleep(0.8)
    threads.append(in_thread(results, "short", chat, srv.url, max_tokens=3, temperature=0))
    for t in threads:
        t.join(timeout=60)
    status, body = results["plain"]
    assert status == 200 and body["choices"][0]["finish_reason"] == "timeout", body
    assert 0 < body["usage"]["completion_tokens"] < 2000
    assert results["plain_s"] < 4.5
    status, text = results["stream"]
    chunks = sse_events(text)
    assert status == 200 and chunks[-1]["choices"][0]["finish_reason"] == "timeout"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    status, body = results["short"]
    assert status == 200 and body["choices"][0]["finish_reason"] in ("stop", "length"), body
    assert results["short_s"] < 4.0
    assert srv.batcher.snapshot()["timed_out"] == 2


def test_a_streaming_client_that_goes_away_frees_the_worker(serve):
    srv = serve()
    parts = urlsplit(srv.url)
    body = json.dumps({"messages": MESSAGES, "max_tokens": 2000, "temperature": 0, "stream": True}).encode()
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.sendall(f"POST /v1/chat/completions HTTP/1.0\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    received = b""
    while b"data: " not in received:  # it is streaming
        chunk = sock.recv(4096)
        assert chunk, received
        received += chunk
    sock.close()
    start = time.monotonic()
    status, answer = chat(srv.url, max_tokens=3, temperature=0)  # queued behind the abandoned 2000 tokens
    assert status == 200 and time.monotonic() - start < 4.0, answer


class StalledGenerator:
    """The real tiny-random generator behind a gate: a batch waits for ``release`` before it starts, as a worker
    stuck in a hung kernel would (the one fault the real model cannot be made to show on demand)."""

    def __init__(self, inner):
        self.inner, self.tokenizer = inner, inner.tokenizer
        self.entered, self.release = threading.Event(), threading.Event()

    def generate_rows(self, rows, on_token=None):
        self.entered.set()
        self.release.wait(60)
        return self.inner.generate_rows(rows, on_token)


def test_health_reports_a_stuck_worker(serve, generator):
    stalled = StalledGenerator(generator)
    srv = serve(stalled, context_length=CONTEXT, stall_timeout_s=1.0)
    time.sleep(1.3)  # idle longer than the stall limit: an idle worker is not stuck
    assert call(srv.url, "/health") == (200, {"status": "ok"})
    results: dict = {}
    thread = in_thread(results, "chat", chat, srv.url, max_tokens=2)
    assert stalled.entered.wait(20)
    time.sleep(1.3)
    status, body = call(srv.url, "/health")
    assert status == 503 and body["status"] == "unavailable", body
    assert "no progress" in body["reason"] and "1 requests running or queued" in body["reason"]
    stalled.release.set()
    thread.join(timeout=30)
    assert results["chat"][0] == 200
    assert call(srv.url, "/health")[0] == 200


def test_connections_over_the_cap_get_503_at_once(serve, generator):
    stalled = StalledGenerator(generator)
    srv = serve(stalled, context_length=CONTEXT, max_connections=1)
    results: dict = {}
    thread = in_thread(results, "chat", chat, srv.url, max_tokens=2)
    assert stalled.entered.wait(20)
    status, body = call(srv.url, "/health")
    assert status == 503 and body["error"]["code"] == "server_busy" and "--max-connections" in body["error"]["message"]
    stalled.release.set()
    thread.join(timeout=30)
    assert results["chat"][0] == 200
    wait_for(lambda: call(srv.url, "/health")[0] == 200)


def test_100_concurrent_clients_are_all_answered(serve):
    srv = serve(max_batch_size=8)
    n = 100
    results: dict = {}
    barrier = threading.Barrier(n)

    def one(i: int):
        barrier.wait()
        try:
            return chat(srv.url, max_tokens=2, temperature=0.5, seed=i)
        except OSError as e:  # a reset connection (the old listen backlog of 5) fails the test, not the thread
            return (type(e).__name__, str(e))

    start = time.monotonic()
    threads = [in_thread(results, str(i), one, i) for i in range(n)]
    for t in threads:
        t.join(timeout=120)
    answers = [results.get(str(i)) for i in range(n)]
    assert [a for a in answers if a is None or a[0] != 200] == []
    # a request is answered as soon as its own rows finish; its batch is counted when the whole batch ends
    wait_for(lambda: srv.batcher.snapshot()["requests"] == n, timeout=20)
    assert time.monotonic() - start < 60


def test_an_idle_keep_alive_connection_does_not_hold_the_shutdown(serve):
    srv = serve()
    parts = urlsplit(srv.url)
    idle = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    idle.request("GET", "/v1/models")
    assert idle.getresponse().read() and idle.sock is not None  # kept alive, now waiting for a request
    start = time.monotonic()
    assert srv.close(drain_timeout_s=20) is True  # nothing was in flight: drained at once, not after 20 s
    assert time.monotonic() - start < 5
    with pytest.raises((ConnectionError, http.client.HTTPException)):  # its client sees the connection closed
        idle.request("GET", "/v1/models")
        idle.getresponse()
    idle.close()


def test_the_drain_waits_for_the_request_in_flight_not_for_a_kept_connection(serve, generator):
    stalled = StalledGenerator(generator)
    srv = serve(stalled, context_length=CONTEXT)
    parts = urlsplit(srv.url)
    kept = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    kept.request("GET", "/v1/models")
    assert kept.getresponse().read()
    results: dict = {}
    thread = in_thread(results, "chat", chat, srv.url, max_tokens=2)  # in flight when the drain starts
    assert stalled.entered.wait(20)
    closing = in_thread(results, "close", srv.close, drain_timeout_s=20)
    wait_for(lambda: srv.draining)
    stalled.release.set()
    thread.join(timeout=30)
    closing.join(timeout=30)
    assert results["chat"][0] == 200 and results["close"] is True  # the request in flight finished within the drain
    assert results["close_s"] < 15


def test_serve_command_drains_requests_in_flight_on_sigterm_then_exits():
    proc, url = start_cli("--drain-timeout", "2", "--batch-wait-ms", "300", env={"POSTTRAIN_API_KEY": "k2"})
    try:
        assert call(url, "/v1/models")[0] == 401  # the key came from $POSTTRAIN_API_KEY

        def post(**fields):
            return call(url, "/v1/chat/completions", {"messages": MESSAGES, "temperature": 0, **fields}, key="k2")

        results: dict = {}
        threads = [in_thread(results, "long", post, max_tokens=2000, n=2, stream=True),
                   in_thread(results, "medium", post, max_tokens=30)]
        wait_for(lambda: call(url, "/v1/stats", key="k2")[1]["running"] == 2)  # both in one batch
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        parts = urlsplit(url)

        def refused() -> bool:
            try:
                socket.create_connection((parts.hostname, parts.port), timeout=1).close()
                return False
            # refused once the listener is closed; a connection that reached the kernel's backlog just before it
            # closed is reset instead: either way the server takes no new connection
            except (ConnectionRefusedError, ConnectionResetError):
                return True

        wait_for(refused, timeout=5)  # stops accepting at once
        for t in threads:
            t.join(timeout=30)
        status, body = results["medium"]  # finished within the drain
        assert status == 200 and body["choices"][0]["finish_reason"] == "length", body
        assert body["usage"]["completion_tokens"] == 30
        status, text = results["long"]  # ~6 s of work: cut at the drain deadline, and told why
        events = sse_events(text)
        assert status == 200 and events[-1]["error"]["code"] == "server_shutting_down", events[-1]
        assert any(e.get("choices", [{}])[0].get("delta", {}).get("content") for e in events[:-1])
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - start < 2 + 6
        err = proc.stderr.read()
        assert "shutting down" in err and "drain timeout" in err and "Traceback" not in err
    finally:
        stop_cli(proc)
