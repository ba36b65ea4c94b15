"""The feedback store against both of its backends: a SQLite file and a real PostgreSQL server that these tests
start (``conftest.py``; Debian's postgresql; the PostgreSQL cases skip, saying so, only where no server binary
exists)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.data.schema import DataError
from posttrain.feedback.convert import convert_events, pair_row
from posttrain.feedback.events import read_events
from posttrain.feedback.store import SCHEMA_VERSION, FeedbackStore, StoreError

REPO = Path(__file__).resolve().parents[2]
PROMPT = [{"role": "user", "content": "Name a colour."}]


def test_schema_is_created_once_and_a_newer_one_is_refused(store_url):
    store = FeedbackStore(store_url)
    assert store.schema_version() == SCHEMA_VERSION
    store.close()
    again = FeedbackStore(store_url)  # reopening applies nothing twice
    assert again.schema_version() == SCHEMA_VERSION and again.count("feedback_events") == 0
    with again._transaction() as cur:
        again._execute(cur, "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (SCHEMA_VERSION + 1, "x"))
    again.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1} was written by a newer posttrain"):
        FeedbackStore(store_url)


def test_events_about_stored_responses_export_to_the_pairs_they_mean(store_url, tmp_path):
    """Two answers to one prompt, a thumbs-up on one and a thumbs-down on the other (given only the response ids),
    a side-by-side choosing b, an edit: exported and converted, they are exactly these pairs."""
    store = FeedbackStore(store_url)
    red = store.record_response(model="m1", messages=PROMPT, response="Red.", params={"temperature": 0.7},
                                prompt_tokens=5, completion_tokens=2, latency_ms=12.5)
    soup = store.record_response(model="m1", messages=PROMPT, response="Soup.", params={})
    assert store.response(red)["messages"] == PROMPT and store.response(red)["params"] == {"temperature": 0.7}
    assert store.add_event({"kind": "thumbs", "response_id": red, "rating": "up", "user_id": "u1"}).created
    store.add_event({"kind": "thumbs", "response_id": str(soup), "rating": "down", "comment": "not a colour"})
    store.add_event({"kind": "side_by_side", "prompt": "Say hi.", "responses": ["Bye.", "Hi!"], "choice": "b"})
    store.add_event({"kind": "edit", "response_id": soup, "edited": "Blue."})
    out = tmp_path / "events.jsonl"
    assert store.export_events(out) == 4
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["event_id"] for r in rows] == ["store:1", "store:2", "store:3", "store:4"]
    assert rows[0]["model"] == "m1" and rows[0]["response"] == "Red." and rows[0]["user_id"] == "u1"
    assert rows[1]["comment"] == "not a colour" and rows[1]["response_id"] == soup
    events, errors, _ = read_events([str(out)])
    assert errors == []
    pairs = [(p["chosen"][0]["content"], p["rejected"][0]["content"], p["source_kind"])
             for p in map(pair_row, convert_events(events).pairs)]
    assert sorted(pairs) == sorted([("Red.", "Soup.", "thumbs"), ("Hi!", "Bye.", "side_by_side"),
                                    ("Blue.", "Soup.", "edit")])


def test_a_repeated_idempotency_key_is_stored_once(store_url):
    store = FeedbackStore(store_url)
    event = {"kind": "likert", "prompt": "Q?", "response": "A.", "score": 4}
    first = store.add_event(event, idempotency_key="k-1")
    again = store.add_event(dict(event, score=1), idempotency_key="k-1")
    assert first.created and not again.created and again.id == first.id
    assert store.count("feedback_events") == 1 and store.events()[0]["score"] == 4


@pytest.mark.parametrize("event,field", [
    ({"kind": "thumbs", "response_id": 999, "rating": "up"}, "response_id"),
    ({"kind": "stars", "prompt": "Q?", "response": "A."}, "kind"),
    ({"kind": "side_by_side", "prompt": "Q?", "responses": ["a", "b"]}, "choice"),
    ({"kind": "thumbs", "prompt": "Q?", "response": "A.", "rating": "up", "comment": "x" * 1_000_000}, "comment"),
    ({"kind": "thumbs", "prompt": "Q?", "response": "A." * 200_000, "rating": "up"}, "response"),
    (["not", "an", "object"], None),
])
def test_bad_events_name_the_field_and_store_nothing(store_url, event, field):
    store = FeedbackStore(store_url)
    with pytest.raises(DataError) as err:
        store.add_event(event)
    assert err.value.field_name == field
    assert store.count("feedback_events") == 0


def test_concurrent_writers_lose_and_duplicate_nothing(store_url):
    """8 threads post 40 events each, every event twice with its idempotency key: each key is stored once."""
    store = FeedbackStore(store_url)
    acked: dict[str, int] = {}
    lock = threading.Lock()
    failures: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for i in range(40):
                key = f"t{t}-{i}"
                for _ in range(2):
                    stored = store.add_event({"kind": "thumbs", "prompt": f"Q{t}.{i}?", "response": "A.",
                                              "rating": "up"}, idempotency_key=key)
                    with lock:
                        assert acked.setdefault(key, stored.id) == stored.id
        except BaseException as e:  # noqa: BLE001 (reported below)
            failures.append(e)
        finally:
            store.close()

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(acked) == 320 and len(set(acked.values())) == 320
    assert store.count("feedback_events") == 320


WRITER = """
import sys
from posttrain.feedback.store import FeedbackStore
store = FeedbackStore(sys.argv[1])
i = 0
while True:
    stored = store.add_event({"kind": "thumbs", "prompt": f"Q{i}?", "response": "A.", "rating": "up"},
                             idempotency_key=f"k{i}")
    print(stored.id, flush=True)  # acknowledged: the row is committed
    i += 1
"""


def test_a_writer_killed_mid_stream_keeps_every_acknowledged_event(store_url, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen([sys.executable, str(script), store_url], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    acked = []
    deadline = time.monotonic() + 60
    while len(acked) < 50 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            acked.append(int(line))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(acked) >= 50
    ids = {int(e["event_id"].split(":")[1]) for e in FeedbackStore(store_url).events()}
    assert set(acked) <= ids


def test_cli_export_then_to_pairs(store_url, tmp_path):
    store = FeedbackStore(store_url)
    store.add_event({"kind": "side_by_side", "prompt": "Q?", "responses": ["x", "y"], "choice": "a"})
    runner = CliRunner()
    out = tmp_path / "events.jsonl"
    res = runner.invoke(app, ["feedback", "export", "--store", store_url, "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "wrote 1 event(s)" in res.output
    res = runner.invoke(app, ["feedback", "to-pairs", str(out), "-o", str(tmp_path / "pairs")])
    assert res.exit_code == 0, res.output
    pairs = [json.loads(line) for line in (tmp_path / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [("x", "y")]


def test_export_redacts_pii_in_every_text_field_on_request(store_url, tmp_path):
    store = FeedbackStore(store_url)
    store.add_event({"kind": "side_by_side", "prompt": "Mail ann@example.com?", "response_a": "Call 555-123-4567.",
                     "response_b": "ok", "choice": "a", "comment": "I am bob@example.org"})
    store.add_event({"kind": "edit", "prompt": "Q?", "response": "x", "edited": "write to cat@example.net"})
    out = tmp_path / "events.jsonl"
    res = CliRunner().invoke(app, ["feedback", "export", "--store", store_url, "-o", str(out), "--redact"])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "@example" not in text and "555-123-4567" not in text
    rows = [json.loads(line) for line in text.splitlines()]
    assert rows[0]["prompt"] == "Mail [EMAIL]?" and rows[0]["comment"] == "I am [EMAIL]"
    assert rows[0]["response_a"] == "Call [PHONE]." and rows[1]["edited"] == "write to [EMAIL]"
    assert rows[0]["kind"] == "side_by_side" and rows[0]["choice"] == "a"  # structure untouched
    assert "ann@example.com" in store.snapshot()[0]  # the store itself keeps what was said


def test_cli_bad_store_url_is_one_line(tmp_path):
    res = CliRunner().invoke(app, ["feedback", "export", "--store", "mysql://x/y", "-o", str(tmp_path / "e.jsonl")])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "error: store 'mysql://x/y': expected a file path, sqlite:///PATH or postgresql://USER@HOST/DB"]
