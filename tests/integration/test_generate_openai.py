"""`posttrain generate --backend openai:URL:MODEL` against a scripted OpenAI-compatible server on 127.0.0.1: the
candidate rows and the request bodies, retries and one-line errors, a rerun that costs nothing (resume + answer
cache), a real `kill -9` then resume, the dry-run estimate without a local tokenizer, the pipeline stage.

The server answers from the request alone (text ``"<user content> #<seed>"``; a seed divisible by 3 stops at the
token limit), so a test knows what each candidate must hold from its prompt and its seed (``types.row_seed``).
"""

from __future__ import annotations

import json
import math
import socket
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from posttrain.generation.candidates import generate_candidates
from posttrain.generation.cli import generate_app
from posttrain.generation.openai_backend import OpenAIGenerator
from posttrain.generation.types import BackendError, row_seed

from .helpers import TOPICS, ScriptedServer, kill_when_written, write_jsonl

runner = CliRunner()
MODEL = "teacher-model"
ROW_KEYS = {"prompt_id", "prompt", "candidate_index", "text", "prompt_tokens", "completion_tokens", "finish_reason",
            "sampling", "model", "metadata"}


def scripted_answer(body: dict) -> dict:
    """The reply to a request: a function of its last message and seed only (text ``"<content> #<seed>"``; a seed
    divisible by 3 stops at the token limit)."""
    seed, text = body["seed"], f"{body['messages'][-1]['content']} #{body['seed']}"
    limit = body["max_tokens"] if "max_tokens" in body else body["max_completion_tokens"]
    finish, tokens = ("length", limit) if seed % 3 == 0 else ("stop", 2)
    return {"text": text, "finish_reason": finish,
            "usage": {"prompt_tokens": 7 * len(body["messages"]), "completion_tokens": tokens}}


class TeacherServer(ScriptedServer):
    """``helpers.ScriptedServer`` answering with ``scripted_answer``; ``backend`` is its ``openai:URL:MODEL``."""

    def __init__(self):
        super().__init__()
        self.answer = scripted_answer
        self.backend = f"openai:{self.url}:{MODEL}"


@pytest.fixture
def server():
    s = TeacherServer()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Every test its own answer cache ($POSTTRAIN_CACHE), and no API key from the developer's environment."""
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return tmp_path / "cache"


def prompt_rows(n: int) -> list[dict]:
    rows = [{"prompt": f"Say something about {TOPICS[i % len(TOPICS)]} number {i}."} for i in range(n)]
    rows[0] = {"id": "first", "messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "Name a prime."}],
               "constraints": [{"kind": "max_words", "args": {"n": 5}}]}
    return rows


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def cli(*args: str):
    return runner.invoke(generate_app, [str(a) for a in args])


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error: ")]


def test_rows_and_request_bodies(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", "sekrit")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(5))
    out = tmp_path / "cands.jsonl"
    server.delay = 0.05
    summary = generate_candidates(prompts, out, None, n=3, temperatures=[0.7, 1.0], top_p=[0.9, 0.95],
                                  max_new_tokens=16, seed=11, backend=server.backend, api_key_env="TEACHER_KEY",
                                  max_concurrency=4, progress=False)
    assert summary["candidates_written"] == 15 and summary["requests"] == 15 and summary["retries"] == 0

    rows = read_rows(out)
    assert len(rows) == 15 and all(set(r) == ROW_KEYS for r in rows)
    by_prompt = {}
    for r in rows:
        i = r["candidate_index"]
        seed = row_seed(11, r["prompt_id"], i)
        assert r["model"] == MODEL
        assert r["sampling"] == {"temperature": [0.7, 1.0][i % 2], "top_p": [0.9, 0.95][i % 2],
                                 "max_new_tokens": 16, "seed": 11}
        assert r["text"] == f"{r['prompt'][-1]['content']} #{seed}"
        stops_at_limit = seed % 3 == 0
        assert r["finish_reason"] == ("length" if stops_at_limit else "stop")
        assert r["completion_tokens"] == (16 if stops_at_limit else 2)
        assert r["prompt_tokens"] == 7 * len(r["prompt"])  # the endpoint's own count
        by_prompt.setdefault(r["prompt_id"], []).append(i)
    assert all(indices == [0, 1, 2] for indices in by_prompt.values())  # a prompt's rows together, in order
    assert len(by_prompt) == 5 and by_prompt.keys() >= {"first"}
    first = [r for r in rows if r["prompt_id"] == "first"]
    assert first[0]["prompt"] == prompt_rows(1)[0]["messages"]
    assert first[0]["metadata"] == {"constraints": [{"kind": "max_words", "args": {"n": 5}}]}

    # Each request: the prompt's messages, its candidate's sampling settings and its own seed.
    expected = {(json.dumps(r["prompt"]), row_seed(11, r["prompt_id"], r["candidate_index"]),
                 [0.7, 1.0][r["candidate_index"] % 2], [0.9, 0.95][r["candidate_index"] % 2]) for r in rows}
    sent = {(json.dumps(b["messages"]), b["seed"], b["temperature"], b["top_p"]) for b in server.requests}
    assert sent == expected and len(server.requests) == 15
    assert all(b["model"] == MODEL and b["max_tokens"] == 16 for b in server.requests)
    assert all(h["Authorization"] == "Bearer sekrit" for h in server.headers)
    assert 1 < server.max_in_flight <= 4


def test_429_and_500_are_retried(server, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(2))
    out = tmp_path / "cands.jsonl"
    server.failures = ["429", "500"]
    server.retry_after = "0.4"  # honoured: the backoff alone would wait about 0.01 s
    teacher = OpenAIGenerator(server.url, MODEL, backoff_base=0.01, max_concurrency=1,
                              cache_path=tmp_path / "answers.sqlite")
    t0 = time.monotonic()
    summary = generate_candidates(prompts, out, None, n=2, temperatures=0.7, max_new_tokens=8, seed=1,
                                  backend=server.backend, generator=teacher, progress=False)
    assert time.monotonic() - t0 >= 0.4
    assert summary["retries"] == 2 and summary["requests"] == 6 == len(server.requests)
    assert sorted((r["prompt_id"], r["candidate_index"]) for r in read_rows(out)) == sorted(
        (pid, i) for pid in {r["prompt_id"] for r in read_rows(out)} for i in range(2))
    assert len(read_rows(out)) == 4
    assert "Authorization" not in server.headers[0]  # no key in the environment: no header


def test_400_is_one_line_and_leaves_only_whole_prompts(server, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(4))
    out = tmp_path / "cands.jsonl"
    server.failures = ["ok", "ok", "400"]  # the first prompt is answered, the second one's first request refused
    res = cli("--prompts", prompts, "-o", out, "--backend", server.backend, "-n", "2", "--max-concurrency", "1",
              "--max-new-tokens", "8", "--no-progress")
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    errors = error_lines(res.output)
    assert len(errors) == 1 and "HTTP 400" in errors[0] and "scripted 400" in errors[0], res.output
    rows = read_rows(out)  # every line whole, and only complete prompts
    assert [r["candidate_index"] for r in rows] == [0, 1] and rows[0]["prompt_id"] == rows[1]["prompt_id"]
    assert len(server.requests) == 3  # nothing sent after the refusal

    with pytest.raises(BackendError, match="HTTP 400"):  # the same one line from the function
        server.failures = ["400"]
        generate_candidates(prompts, out, None, n=2, temperatures=0.7, max_new_tokens=8, backend=server.backend,
                            max_concurrency=1, progress=False)
    assert len(read_rows(out)) == 2


def test_answers_in_flight_when_another_request_fails_are_kept(server, tmp_path):
    """Two prompts in flight at once: one is refused at once, the other's answer comes 0.6 s later. The run still
    fails with the refusal, but only after the answer in flight is written (before: the refusal raised at once and
    the answer was dropped; with both ending between two wakes, which one came first was up to a set's order)."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(2))
    out = tmp_path / "cands.jsonl"
    server.failures = [0.6, "400"]  # whichever request arrives first hangs 0.6 s then answers; the other is refused
    with pytest.raises(BackendError, match="HTTP 400"):
        generate_candidates(prompts, out, None, n=1, temperatures=0.7, max_new_tokens=8, backend=server.backend,
                            max_concurrency=2, progress=False)
    rows = read_rows(out)
    assert len(server.requests) == 2 and len(rows) == 1 and rows[0]["candidate_index"] == 0

    server.failures = []  # the rerun asks only for the refused prompt
    generate_candidates(prompts, out, None, n=1, temperatures=0.7, max_new_tokens=8, backend=server.backend,
                        max_concurrency=2, progress=False)
    assert len(server.requests) == 3 and len(read_rows(out)) == 2


def test_rerun_makes_no_request(server, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(4))
    out = tmp_path / "cands.jsonl"
    args = ["--prompts", prompts, "-o", out, "--backend", server.backend, "-n", "3", "--temperature", "0.8",
            "--max-new-tokens", "8", "--seed", "5", "--no-progress"]
    res = cli(*args)
    assert res.exit_code == 0, res.output
    assert "12 candidates for 4 prompts" in res.output and "12 requests" in res.output
    first = out.read_bytes()
    assert len(server.requests) == 12

    res = cli(*args)  # resume: every prompt is done
    assert res.exit_code == 0 and "0 candidates for 0 prompts (4 already done)" in res.output, res.output
    assert len(server.requests) == 12 and out.read_bytes() == first

    out.unlink()  # the file gone: every answer comes from the cache
    res = cli(*args)
    assert res.exit_code == 0 and "0 requests, 12 answers from the cache" in res.output, res.output
    assert len(server.requests) == 12
    assert sorted(out.read_text().splitlines()) == sorted(first.decode().splitlines())


def test_kill_9_then_resume(server, tmp_path, cache_dir):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(40))
    out = tmp_path / "cands.jsonl"
    server.delay = 0.1
    args = ["--prompts", str(prompts), "-o", str(out), "--backend", server.backend, "-n", "2", "--max-concurrency",
            "2", "--temperature", "1.0", "--max-new-tokens", "8", "--seed", "3", "--no-progress"]
    # killed once two prompts (4 rows) are written
    kill_when_written([sys.executable, "-m", "posttrain.cli", "generate", *args], out, 4,
                      env={"POSTTRAIN_CACHE": str(cache_dir)})
    at_kill = read_rows(out)
    done_at_kill = {r["prompt_id"] for r in at_kill}
    assert all(sum(r["prompt_id"] == pid for r in at_kill) == 2 for pid in done_at_kill)  # whole prompts only
    assert 2 <= len(done_at_kill) < 40
    sent_before = len(server.requests)

    res = cli(*args)
    assert res.exit_code == 0, res.output
    rows = read_rows(out)
    pairs = [(r["prompt_id"], r["candidate_index"]) for r in rows]
    ids = {r["prompt_id"] for r in rows}
    assert len(pairs) == len(set(pairs)) == 80 and len(ids) == 40
    assert f"({len(done_at_kill)} already done)" in res.output
    content_to_id = {json.dumps(r["prompt"]): r["prompt_id"] for r in rows}
    asked_again = {content_to_id[json.dumps(b["messages"])] for b in server.requests[sent_before:]}
    assert not asked_again & done_at_kill  # the rerun never asked for a prompt the file already held
    assert len(server.requests) - sent_before <= 2 * (40 - len(done_at_kill))
    for r in rows:  # and what it wrote is what the scripted teacher answers for that candidate
        assert r["text"] == f"{r['prompt'][-1]['content']} #{row_seed(3, r['prompt_id'], r['candidate_index'])}"


def test_dry_run_estimates_without_a_tokenizer_or_a_request(server, tmp_path):
    rows = prompt_rows(4)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    out = tmp_path / "cands.jsonl"
    res = cli("--prompts", prompts, "-o", out, "--backend", server.backend, "-n", "3", "--max-new-tokens", "100",
              "--dry-run", "--price-input", "1000", "--price-output", "3000")
    assert res.exit_code == 0, res.output
    assert server.requests == [] and not out.exists()
    # Hand-worked: chars/4 of each message, rounded up, + 4 per message; one request per candidate.
    messages = [r["messages"] if "messages" in r else [{"role": "user", "content": r["prompt"]}] for r in rows]
    prompt_tokens = sum(math.ceil(len(m["content"]) / 4) + 4 for ms in messages for m in ms)
    assert f"{prompt_tokens:,} total (approximate: chars/4 + 4 per message" in res.output, res.output
    assert f"generation input     {3 * prompt_tokens:,} tokens (one request per candidate" in res.output
    generation_usd = (3 * prompt_tokens * 1000 + 4 * 3 * 50 * 3000) / 1e6
    assert f"generation ${generation_usd:,.4f}" in res.output, res.output


def test_max_completion_tokens_field(server, tmp_path):
    """OpenAI's reasoning models refuse ``max_tokens``: ``--max-tokens-field max_completion_tokens`` sends the cap
    under that name alone; a field of neither name is one line before any request."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(2))
    res = cli("--prompts", prompts, "-o", tmp_path / "a.jsonl", "--backend", server.backend, "-n", "2",
              "--max-new-tokens", "12", "--max-tokens-field", "max_completion_tokens", "--no-progress")
    assert res.exit_code == 0, res.output
    assert len(server.requests) == 4
    assert all(b["max_completion_tokens"] == 12 and "max_tokens" not in b for b in server.requests)
    res = cli("--prompts", prompts, "-o", tmp_path / "b.jsonl", "--backend", server.backend, "-n", "2",
              "--max-tokens-field", "max_length", "--no-progress")
    assert res.exit_code == 2 and error_lines(res.output) == [
        "error: openai backend: max_tokens_field must be max_tokens or max_completion_tokens, got 'max_length'"]
    assert len(server.requests) == 4 and not (tmp_path / "b.jsonl").exists()


def test_bad_spec_401_and_unreachable_are_one_line(server, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(2))
    out = tmp_path / "cands.jsonl"
    for spec in ("openai:localhost:8000/v1:m", f"openai:{server.url}", f"openai:{server.url}:", "gpt"):
        res = cli("--prompts", prompts, "-o", out, "--backend", spec)
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert len(error_lines(res.output)) == 1 and "openai:URL:MODEL" in res.output, res.output
    assert server.requests == [] and not out.exists()

    server.failures = ["401"]
    res = cli("--prompts", prompts, "-o", out, "--backend", server.backend, "--api-key-env", "NO_SUCH_KEY_VAR",
              "--no-progress")
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    errors = error_lines(res.output)
    assert len(errors) == 1 and "HTTP 401" in errors[0] and "$NO_SUCH_KEY_VAR, which is not set" in errors[0]

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = cli("--prompts", prompts, "-o", tmp_path / "other.jsonl", "--backend",
              f"openai:http://127.0.0.1:{port}/v1:{MODEL}", "--max-retries", "1", "--no-progress")
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    errors = error_lines(res.output)
    assert len(errors) == 1 and "gave up after 1 retries" in errors[0] and "connection" in errors[0], res.output


def test_pipeline_generate_stage_uses_the_backend(server, tmp_path):
    from posttrain.pipeline.registry import STAGES
    from posttrain.pipeline.spec import PipelineError

    stage = STAGES["generate"]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(3))
    params = {"prompts": str(prompts), "backend": server.backend, "n": 2, "temperature": 0.5,
              "max_new_tokens": 8, "max_concurrency": 2, "progress": False}
    stage.check(params, lambda path: False)
    assert stage.inputs(params) == [str(prompts)]  # no local model to hash
    metrics = stage.run(params, tmp_path / "stage", False)
    assert metrics["candidates_written"] == 6 and len(server.requests) == 6
    rows = read_rows(tmp_path / "stage" / "candidates.jsonl")
    assert {r["model"] for r in rows} == {MODEL} and {r["candidate_index"] for r in rows} == {0, 1}
    with pytest.raises(PipelineError, match="key 'backend'.*openai:URL:MODEL"):
        stage.check({**params, "backend": "openai:nowhere"}, lambda path: False)
    with pytest.raises(PipelineError, match="key 'max_tokens_field': expected max_tokens or max_completion_tokens, "
                                            "got 'max_len'"):
        stage.check({**params, "max_tokens_field": "max_len"}, lambda path: False)
    stage.run({**params, "max_tokens_field": "max_completion_tokens", "seed": 1}, tmp_path / "stage2", False)
    assert [b["max_completion_tokens"] for b in server.requests[6:]] == [8] * 6
