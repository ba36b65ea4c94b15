"""``posttrain serve --store``: completions are recorded under the id the client gets, ``POST /v1/feedback``
takes events about them (validated, idempotent, acknowledged after the commit), and the exported events become
the pairs they mean. Real HTTP over loopback against tiny-random, a real SQLite store."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from posttrain.feedback.convert import convert_events, pair_row
from posttrain.feedback.events import read_events
from posttrain.feedback.store import FeedbackStore
from posttrain.serving.server import start_server

from .test_serve import MESSAGES, call, chat, stream_events

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    db = tmp_path_factory.mktemp("store") / "feedback.db"
    srv, thread, url = start_server("tiny-random", "127.0.0.1", 0, max_batch_size=8, batch_wait_ms=5, store=str(db))
    yield srv, db
    srv.close()
    thread.join(timeout=10)


def feedback(url: str, body, *, key: str | None = None, raw: bytes | None = None):
    req = urllib.request.Request(url + "/v1/feedback", data=raw if raw is not None else json.dumps(body).encode(),
                                 method="POST")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Idempotency-Key", key)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_completions_are_recorded_and_feedback_about_them_becomes_pairs(served, tmp_path):
    srv, db = served
    status, a = chat(srv.url, max_tokens=4, temperature=1.0, seed=1, n=2)
    assert status == 200
    chunks = stream_events(srv.url, max_tokens=4, temperature=1.0, seed=2)
    streamed_id = chunks[0]["id"]
    status, private = chat(srv.url, max_tokens=4, store=False)
    assert status == 200
    store = FeedbackStore(db)
    first = store.response(a["id"], 0)
    assert first["messages"] == MESSAGES and first["response"] == a["choices"][0]["message"]["content"]
    assert first["model"] == srv.model_name and first["params"]["seed"] == 1 and first["latency_ms"] > 0
    assert store.response(a["id"], 1)["response"] == a["choices"][1]["message"]["content"]
    assert store.response(streamed_id, 0) is not None  # a streamed answer is recorded once it has finished
    assert store.response(private["id"], 0) is None  # "store": false
    assert store.count("responses") == 3

    # thumbs up on choice 0, down on choice 1: one pair, chosen = choice 0
    status, up = feedback(srv.url, {"kind": "thumbs", "response_id": a["id"], "rating": "up", "user_id": "u1"})
    assert status == 200 and up["created"] is True
    status, _ = feedback(srv.url, {"kind": "thumbs", "response_id": a["id"], "choice_index": 1, "rating": "down",
                                   "comment": "worse"})
    assert status == 200
    out = tmp_path / "events.jsonl"
    assert store.export_events(out) == 2
    events, errors, _ = read_events([str(out)])
    assert errors == []
    pairs = [pair_row(p) for p in convert_events(events).pairs]
    texts = [c["message"]["content"] for c in a["choices"]]
    assert texts[0].strip() != texts[1].strip()  # seed 1: two different samples
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [(texts[0], texts[1])]


def test_a_repeated_idempotency_key_is_acknowledged_once_and_stored_once(served):
    srv, db = served
    _, a = chat(srv.url, max_tokens=3)
    results = []

    def post():
        results.append(feedback(srv.url, {"kind": "likert", "response_id": a["id"], "score": 5}, key="same-key"))

    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [s for s, _ in results] == [200] * 6
    assert len({b["id"] for _, b in results}) == 1 and sum(b["created"] for _, b in results) == 1
    assert sum(e.get("score") == 5 for e in FeedbackStore(db).events()) == 1


@pytest.mark.parametrize("body,raw,status,param,text", [
    ({"kind": "thumbs", "response_id": "chatcmpl-nope", "rating": "up"}, None, 400, "response_id", "no response"),
    ({"kind": "stars", "prompt": "Q?", "response": "A."}, None, 400, "kind", "unknown kind"),
    ({"kind": "side_by_side", "prompt": "Q?", "responses": ["a", "b"]}, None, 400, "choice", "missing"),
    ({"kind": "thumbs", "prompt": "Q?", "response": "A.", "rating": "up", "comment": "x" * 20_000}, None, 400,
     "comment", "the limit is 10000"),
    (None, b"{not json", 400, None, "not valid JSON"),
    (None, b"x" * 2_000_000, 413, None, "over this server's limit"),
])
def test_bad_feedback_is_a_4xx_naming_the_field_and_stores_nothing(served, body, raw, status, param, text):
    srv, db = served
    before = FeedbackStore(db).count("feedback_events")
    got, answer = feedback(srv.url, body, raw=raw)
    assert got == status and text in answer["error"]["message"]
    assert answer["error"]["param"] == param
    assert FeedbackStore(db).count("feedback_events") == before
    assert call(srv.url, "/health")[0] == 200  # still serving


def test_feedback_without_a_store_is_404_and_a_bad_store_url_fails_before_loading():
    srv, thread, url = start_server("tiny-random", "127.0.0.1", 0)
    try:
        status, answer = feedback(url, {"kind": "thumbs", "prompt": "Q?", "response": "A.", "rating": "up"})
        assert status == 404 and "--store" in answer["error"]["message"]
    finally:
        srv.close()
        thread.join(timeout=10)
    from posttrain.feedback.store import StoreError

    with pytest.raises(StoreError, match="expected a file path"):
        start_server("tiny-random", "127.0.0.1", 0, store="mysql://x/y")


def test_load_then_kill_9_loses_no_acknowledged_event(tmp_path):
    """`posttrain serve --store` as a real process: 50 concurrent clients make 200 chat completions and post
    2,000 feedback events about them (each with its own idempotency key): every acknowledged event is in the store
    exactly once. Then the server is killed with SIGKILL while 20 clients post: after it is gone, every event that
    got a 200 is in the store. The latencies of the first phase are written to load.json (p50/p99)."""
    from .test_serve import start_cli, stop_cli

    db = tmp_path / "feedback.db"
    proc, url = start_cli("--store", str(db), "--max-batch-size", "16")
    acked: dict[str, str] = {}
    latencies: list[float] = []
    lock = threading.Lock()
    failures: list[str] = []

    def client(c: int) -> None:
        try:
            ids = []
            for i in range(4):
                status, body = chat(url, max_tokens=2, seed=c * 10 + i)
                assert status == 200, body
                ids.append(body["id"])
            for i in range(40):
                key = f"c{c}-e{i}"
                t0 = time.perf_counter()
                status, body = feedback(url, {"kind": "thumbs", "response_id": ids[i % 4],
                                              "rating": "up" if i % 2 else "down"}, key=key)
                dt = time.perf_counter() - t0
                assert status == 200 and body["created"], body
                with lock:
                    acked[key] = body["id"]
                    latencies.append(dt)
        except BaseException as e:  # noqa: BLE001 (reported below)
            failures.append(f"client {c}: {e!r}")

    try:
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        assert failures == []
    finally:
        stop_cli(proc)
    store = FeedbackStore(db)
    assert len(acked) == 2000 and store.count("feedback_events") == 2000 and store.count("responses") == 200
    stored = {f"feedback-{e['event_id'].split(':')[1]}" for e in store.events()}
    assert set(acked.values()) == stored
    latencies.sort()
    (tmp_path / "load.json").write_text(json.dumps({
        "events": 2000, "completions": 200, "clients": 50, "wall_s": round(wall, 2),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2)}))
    print("load:", (tmp_path / "load.json").read_text())

    # kill -9 mid-stream
    proc, url = start_cli("--store", str(db))
    got: list[str] = []
    stop = threading.Event()

    def poster(c: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                status, body = feedback(url, {"kind": "likert", "prompt": "Q?", "response": "A.", "score": 3},
                                        key=f"k{c}-{i}")
            except (OSError, http.client.HTTPException):
                return  # the server is gone (refused, reset, or killed mid-answer)
            if status == 200:
                with lock:
                    got.append(body["id"])
            i += 1

    posters = [threading.Thread(target=poster, args=(c,)) for c in range(20)]
    for t in posters:
        t.start()
    deadline = time.monotonic() + 60
    while len(got) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no drain, no cleanup
    proc.wait()
    stop.set()
    for t in posters:
        t.join(timeout=30)
    assert len(got) >= 300
    after = {f"feedback-{e['event_id'].split(':')[1]}" for e in FeedbackStore(db).events()}
    assert set(got) <= after


def test_the_shipped_simulated_users_post_verifier_feedback(served, tmp_path):
    """scripts/simulate_users.py against a served model with a store: every prompt gets one event (side-by-side
    when the verifier tells the two answers apart, else a thumbs), each about a recorded completion; a rerun stores
    nothing twice (idempotency keys)."""
    srv, db = served
    rows = [{"prompt": f"Name a fruit, number {i}. Answer in all lowercase.",
             "constraints": [{"kind": "lowercase"}]} for i in range(6)]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = FeedbackStore(db)
    before = store.count("feedback_events")
    cmd = [sys.executable, str(REPO / "scripts" / "simulate_users.py"), "--url", srv.url, "--prompts", str(prompts),
           "--limit", "6", "--users", "2", "--max-tokens", "8"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "about 6 prompt(s); 0 error(s)" in first.stdout
    events = store.events()[before:]
    assert len(events) == 6 and {e["kind"] for e in events} <= {"side_by_side", "thumbs"}
    assert all(store.response(e["response_id"])["response"] in (e.get("response"), e.get("response_a"),
                                                                 e.get("response_b")) for e in events)
    assert subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600).returncode == 0
    assert store.count("feedback_events") == before + 6
