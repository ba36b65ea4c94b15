import random
import threading

from posttrain.judges.cache import AnswerCache, cache_key
from posttrain.judges.llm import backoff_delay, parse_retry_after

MSGS = [{"role": "user", "content": "hi"}]


def test_key_depends_on_everything_that_changes_the_answer():
    base = cache_key("http://h/v1", "m", MSGS, {"temperature": 0.0, "max_tokens": 8})
    assert base == cache_key("http://h/v1/", "m", MSGS, {"max_tokens": 8, "temperature": 0.0})
    assert base != cache_key("http://other/v1", "m", MSGS, {"temperature": 0.0, "max_tokens": 8})
    assert base != cache_key("http://h/v1", "m2", MSGS, {"temperature": 0.0, "max_tokens": 8})
    assert base != cache_key("http://h/v1", "m", [{"role": "user", "content": "hi!"}],
                             {"temperature": 0.0, "max_tokens": 8})
    assert base != cache_key("http://h/v1", "m", MSGS, {"temperature": 0.7, "max_tokens": 8})


def test_answers_persist_across_instances(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = AnswerCache(path)
    assert cache.get("k") is None
    cache.put("k", "Verdict: A", {"attempts": 2})
    cache.close()
    again = AnswerCache(path)
    assert again.get("k") == ("Verdict: A", {"attempts": 2})
    assert len(again) == 1
    mode = again._conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_concurrent_threads(tmp_path):
    cache = AnswerCache(tmp_path / "c.sqlite")

    def work(t):
        for i in range(50):
            cache.put(f"{t}-{i}", f"text {t} {i}")
            assert cache.get(f"{t}-{i}")[0] == f"text {t} {i}"

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(cache) == 400


def test_retry_after_and_backoff():
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("99999") == 600.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    rng = random.Random(0)
    for attempt, (lo, hi) in enumerate([(0.5, 1), (1, 2), (2, 4), (4, 8), (5, 10), (5, 10)]):
        d = backoff_delay(attempt, 1.0, 10.0, None, rng)
        assert lo <= d <= hi
    assert backoff_delay(5, 1.0, 10.0, retry_after=0.0) == 0.0
