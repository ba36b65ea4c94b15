"""LLMJudge against a scripted OpenAI-compatible server on 127.0.0.1 (stdlib http.server in a thread).

The server (``helpers.ScriptedServer``) answers each request with ``answer(body)`` unless a scripted failure is
queued (429 with ``Retry-After: 0``, 500, 400, or a hang past the client's timeout), and records every request.
"""

from __future__ import annotations

import json
import time

import pytest

from posttrain.judges.llm import JudgeError, LLMJudge

from .helpers import ScriptedServer

PROMPT = [{"role": "user", "content": "Name a prime number."}]


@pytest.fixture
def server():
    s = ScriptedServer()
    yield s
    s.close()


def prefers_good(body):
    """Answers by content: the response containing GOOD wins, wherever it is shown."""
    user = body["messages"][-1]["content"]
    if "<response>" in user:
        return "Reasoning.\nScore: 8" if "GOOD" in user else "Reasoning.\nScore: 3"
    first = user.split("<response_a>")[1].split("</response_a>")[0]
    return "The better one.\nVerdict: A" if "GOOD" in first else "The better one.\nVerdict: B"


@pytest.fixture
def make_judge(server, tmp_path):
    def make(**kw):
        kw.setdefault("cache_path", tmp_path / "judge_cache.sqlite")
        kw.setdefault("backoff_base", 0.01)
        return LLMJudge(server.url, "scripted-judge", **kw)

    return make


def test_position_bias_becomes_a_tie(server, make_judge):
    v = make_judge().compare(PROMPT, "7", "8", {})
    assert v.winner == "tie" and v.confidence == 0.0
    assert "position bias" in v.details["reason"]
    assert v.details["raw"] == ["Verdict: A", "Verdict: A"]
    assert len(server.requests) == 2
    firsts = sorted(r["messages"][-1]["content"].split("<response_a>\n")[1][0] for r in server.requests)
    assert firsts == ["7", "8"]  # each response was shown first once


def test_consistent_answers_give_the_winner(server, make_judge):
    server.answer = prefers_good
    judge = make_judge()
    assert judge.compare(PROMPT, "bad", "GOOD one", {}).winner == "b"
    v = judge.compare(PROMPT, "GOOD one", "bad", {})
    assert (v.winner, v.confidence) == ("a", 1.0)
    body = server.requests[0]
    assert body["model"] == "scripted-judge" and body["temperature"] == 0.0 and body["max_tokens"] == 512
    assert body["messages"][0]["role"] == "system"


def test_max_completion_tokens_field(server, make_judge, tmp_path):
    """For OpenAI's reasoning models the cap goes under ``max_completion_tokens`` alone (a judge config key, so the
    rubric judge and the critic take it too); any other name is refused when the judge is built."""
    from posttrain.judges.run import build_member

    make_judge(max_tokens_field="max_completion_tokens", max_tokens=64).complete(PROMPT)
    body = server.requests[-1]
    assert body["max_completion_tokens"] == 64 and "max_tokens" not in body
    with pytest.raises(JudgeError, match="LLM judge: max_tokens_field must be max_tokens or max_completion_tokens, "
                                         "got 'tokens'"):
        make_judge(max_tokens_field="tokens")
    rubric = tmp_path / "rubric.yaml"
    rubric.write_text("rules:\n  - {id: clear, text: The answer is clear., weight: 1}\n")
    member = build_member({"type": "rubric", "rubric": str(rubric), "base_url": server.url, "model": "m",
                           "max_tokens_field": "max_completion_tokens", "use_cache": False})
    assert member.judge._llm.params["max_completion_tokens"] == 512 and "max_tokens" not in member.judge._llm.params


def test_pointwise_scores(server, make_judge):
    server.answer = prefers_good
    good, bad = make_judge().score_many([(PROMPT, "GOOD", {}), (PROMPT, "meh", {})])
    assert (good.value, bad.value) == (8.0, 3.0)


def test_api_key_from_the_named_env_var(server, make_judge, monkeypatch):
    monkeypatch.setenv("SCRIPTED_JUDGE_KEY", "sekrit")
    make_judge(api_key_env="SCRIPTED_JUDGE_KEY").complete(PROMPT)
    assert server.headers[-1]["Authorization"] == "Bearer sekrit"
    monkeypatch.delenv("SCRIPTED_JUDGE_KEY")
    make_judge(api_key_env="SCRIPTED_JUDGE_KEY", use_cache=False).complete(PROMPT)
    assert "Authorization" not in server.headers[-1]


def test_retries_after_429_500_and_timeout(server, make_judge):
    server.failures = ["429", "500", 1.5]
    judge = make_judge(timeout=0.4)
    assert judge.complete(PROMPT) == "Verdict: A"
    assert len(server.requests) == 4
    assert judge.stats()["requests"] == 4 and judge.stats()["retries"] == 3


def test_retry_after_is_honoured(server, make_judge):
    # a 30 s exponential backoff would hang this test; Retry-After: 0 says retry now
    server.failures = ["429", "429"]
    judge = make_judge(backoff_base=30.0)
    start = time.monotonic()
    assert judge.complete(PROMPT) == "Verdict: A"
    assert time.monotonic() - start < 10 and judge.stats()["retries"] == 2


def test_400_fails_at_once_with_a_clear_error(server, make_judge):
    server.failures = ["400"]
    with pytest.raises(JudgeError) as e:
        make_judge(backoff_base=30.0).complete(PROMPT)
    assert str(e.value) == f"LLM judge {server.url}/chat/completions: HTTP 400 Bad Request: " \
                           '{"error": {"message": "scripted 400"}}'
    assert len(server.requests) == 1


def test_gives_up_after_max_retries(server, make_judge):
    server.failures = ["500"] * 5
    with pytest.raises(JudgeError, match=r"gave up after 2 retries \(last error: HTTP 500\)"):
        make_judge(max_retries=2).complete(PROMPT)
    assert len(server.requests) == 3


def test_second_run_costs_nothing(server, make_judge):
    server.answer = prefers_good
    items = [(PROMPT, f"GOOD {i}", f"bad {i}", {}) for i in range(3)]
    first = make_judge(max_concurrency=4)
    verdicts = [v.winner for v in first.compare_many(items)]
    assert verdicts == ["a", "a", "a"] and len(server.requests) == 6
    assert [v.winner for v in first.compare_many(items)] == verdicts
    assert first.stats()["cache_hits"] == 6 and len(server.requests) == 6
    fresh = make_judge()  # a new process would see the same file
    raws = [v.details["raw"] for v in first.compare_many(items)]
    assert [v.details["raw"] for v in fresh.compare_many(items)] == raws
    assert fresh.stats()["requests"] == 0 and len(server.requests) == 6
    make_judge(rubric="Prefer brevity.").compare(*items[0])  # another rubric is another question
    assert len(server.requests) == 8


def test_requests_run_concurrently(server, make_judge):
    server.delay = 0.3
    make_judge(max_concurrency=4, use_cache=False).compare_many([(PROMPT, f"a{i}", f"b{i}", {}) for i in range(4)])
    assert len(server.requests) == 8 and server.max_in_flight > 1


def write_candidates(path):
    rows = []
    for p in range(2):
        for i, text in enumerate([f"bad {p}", f"GOOD {p}", f"meh {p}"]):
            rows.append({"prompt_id": f"p{p}", "prompt": [{"role": "user", "content": f"question {p}"}],
                         "candidate_index": i, "text": text, "metadata": {}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_judge_stage_end_to_end(server, tmp_path):
    from posttrain.judges.run import judge_candidates

    server.answer = prefers_good
    cands = write_candidates(tmp_path / "candidates.jsonl")
    spec = {"type": "llm", "base_url": server.url, "model": "m", "cache_path": str(tmp_path / "c.sqlite")}
    summary = judge_candidates(cands, tmp_path / "out", [spec], {"min_margin": 1.0})
    pairs = [json.loads(x) for x in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()]
    assert [(p["chosen"], p["rejected"], p["margin"]) for p in pairs] == [("GOOD 0", "bad 0", 5.0),
                                                                        ("GOOD 1", "bad 1", 5.0)]
    assert pairs[0]["prompt"] == [{"role": "user", "content": "question 0"}]
    assert summary["pairs"]["pairs_kept"] == 2 and summary["pairs"]["score_units"] == "raw"
    assert summary["judges"][0]["stats"]["requests"] == 6
    scores = [json.loads(x) for x in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    assert [s["value"] for s in scores] == [3.0, 8.0, 3.0, 3.0, 8.0, 3.0]
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["status"] == "completed"
    # a rerun is free
    again = judge_candidates(cands, tmp_path / "out2", [spec], {"min_margin": 1.0})
    assert again["judges"][0]["stats"]["requests"] == 0 and len(server.requests) == 6
    # pairwise mode with two judges: the scripted one and the same one under another rubric
    both = [dict(spec, name="j1"), dict(spec, name="j2", rubric="Be brief.", weight=2)]
    summary = judge_candidates(cands, tmp_path / "pw", both, {"strategy": "round_robin"})
    pairs = [json.loads(x) for x in (tmp_path / "pw" / "pairs.jsonl").read_text().splitlines()]
    assert [p["chosen"] for p in pairs] == ["GOOD 0", "GOOD 1"]
    assert summary["agreement"]["unanimous_fraction"] == 1.0
    assert len((tmp_path / "pw" / "comparisons.jsonl").read_text().splitlines()) == 6


def test_cli_mounted_as_a_subcommand(server, tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from posttrain.judges.cli import judge_app

    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    server.answer = prefers_good
    app = typer.Typer()
    app.add_typer(judge_app, name="judge")
    app.command("noop")(lambda: None)  # a parent with other commands, like posttrain's
    cands = write_candidates(tmp_path / "candidates.jsonl")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["judge", "--candidates", str(cands), "-o", str(out),
                                      "--judge", f"llm:{server.url}:m", "--strategy", "all_above_margin",
                                      "--min-margin", "1", "--max-length-ratio", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "pairs kept" in result.output
    assert len((out / "pairs.jsonl").read_text().splitlines()) == 4  # GOOD over bad and over meh, twice
    assert (tmp_path / "cache" / "judge_cache.sqlite").exists()
    bad = CliRunner().invoke(app, ["judge", "--candidates", str(cands), "-o", str(out), "--judge", "llm:nope"])
    assert bad.exit_code == 2 and "error: --judge 'llm:nope'" in bad.output


def test_llm_judge_against_posttrain_serve_on_tiny_random(tmp_path, monkeypatch):
    """The real path: `posttrain serve` (tiny-random) as the judge endpoint, with a bearer token. Its verdicts are
    noise, but every pair is asked in both orders over real HTTP, each answer parses into a valid Verdict, and a
    second judge on the same cache file makes no request at all."""
    from posttrain.judges.llm import LLMJudge
    from posttrain.serving.server import start_server

    monkeypatch.setenv("POSTTRAIN_TEST_JUDGE_KEY", "sekret")
    server, thread, url = start_server("tiny-random", port=0, api_key="sekret", default_max_tokens=8)
    try:
        items = [([{"role": "user", "content": f"Name a colour {i}."}], "red", "blue", {}) for i in range(3)]
        cache = tmp_path / "judge.sqlite"

        def judge():
            return LLMJudge(f"{url}/v1", "tiny-random", api_key_env="POSTTRAIN_TEST_JUDGE_KEY", cache_path=cache,
                            max_tokens=8, timeout=120, max_concurrency=3)

        first = judge()
        verdicts = first.compare_many(items)
        assert all(v.winner in ("a", "b", "tie") for v in verdicts)
        # a request is answered when its own rows finish; the server counts it when its whole batch ends
        deadline = time.monotonic() + 20
        while server.batcher.snapshot()["requests"] < 2 * len(items) and time.monotonic() < deadline:
            time.sleep(0.02)
        served = server.batcher.snapshot()["requests"]
        assert first.stats()["requests"] == served == 2 * len(items)  # both orders, every pair
        second = judge()
        again = second.compare_many(items)
        assert [v.winner for v in again] == [v.winner for v in verdicts]
        assert second.stats()["requests"] == 0 and server.batcher.snapshot()["requests"] == served
    finally:
        server.close()


def test_unparseable_scores_are_counted_and_no_pairs_is_a_failure(server, tmp_path, capsys):
    from posttrain.judges.run import NoPairsKept, judge_candidates

    server.answer = lambda body: "Looks fine to me."  # no "Score: N" anywhere
    cands = write_candidates(tmp_path / "candidates.jsonl")
    spec = {"type": "llm", "base_url": server.url, "model": "m", "cache_path": str(tmp_path / "c.sqlite")}
    out = tmp_path / "out"
    with pytest.raises(NoPairsKept) as e:
        judge_candidates(cands, out, [spec])
    assert str(e.value) == (f"no pairs kept from 6 candidates of 2 prompts (dropped: unscored 6, no_candidates 2); "
                            f"see {out / 'scores.jsonl'}")
    warning = (f"judge 'llm:m' gave no score for 6 of 6 candidates (first: {cands}:1: unparseable answer: no "
               "'Score: N' in 1-10, answer 'Looks fine to me.'); they were left out of its scores")
    assert f"posttrain judge: warning: {warning}" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"] == str(e.value)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["warnings"] == [warning] and summary["judges"][0]["stats"]["unparseable"] == 6
    assert (out / "pairs.jsonl").read_text() == ""


def test_some_unparseable_scores_warn_with_the_count_and_the_rest_pair(server, tmp_path, capsys):
    from posttrain.judges.run import judge_candidates

    server.answer = lambda body: "Hmm." if "meh" in body["messages"][-1]["content"] else prefers_good(body)
    cands = write_candidates(tmp_path / "candidates.jsonl")
    spec = {"type": "llm", "base_url": server.url, "model": "m", "cache_path": str(tmp_path / "c.sqlite")}
    summary = judge_candidates(cands, tmp_path / "out", [spec])
    assert summary["pairs"]["pairs_kept"] == 2 and summary["pairs"]["dropped"]["unscored"] == 2
    assert "judge 'llm:m' gave no score for 2 of 6 candidates (first: " f"{cands}:3:" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["status"] == "completed"


def test_unparseable_verdicts_are_counted_and_all_ties_fail(server, tmp_path, capsys):
    from posttrain.judges.run import NoPairsKept, judge_candidates

    server.answer = lambda body: "Both have merit."
    cands = write_candidates(tmp_path / "candidates.jsonl")
    spec = {"type": "llm", "base_url": server.url, "model": "m", "cache_path": str(tmp_path / "c.sqlite")}
    with pytest.raises(NoPairsKept, match=r"^no pairs kept from 6 candidates of 2 prompts \(dropped: tie 2\)"):
        judge_candidates(cands, tmp_path / "out", [spec], {"strategy": "round_robin"})
    assert ("6 of 6 comparisons had an unparseable judge answer and count as ties (first: prompt 'p0', candidates "
            "0 vs 1: unparseable answer in order ab; unparseable answer in order ba)") in capsys.readouterr().err


def test_cli_exits_2_when_no_pair_is_kept(server, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from posttrain.cli import app

    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    server.answer = lambda body: "no idea"
    cands = write_candidates(tmp_path / "candidates.jsonl")
    result = CliRunner().invoke(app, ["judge", "--candidates", str(cands), "-o", str(tmp_path / "out"),
                                      "--judge", f"llm:{server.url}:m", "--no-progress"])
    assert result.exit_code == 2
    assert "warning: judge 'llm:m' gave no score for 6 of 6 candidates" in result.output
    assert "error: no pairs kept from 6 candidates" in result.output
