"""Small shared data and config builders for the integration tests (tiny-random on CPU)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from posttrain.config import load_config

TOPICS = ["cats", "rivers", "tea", "maps", "bells", "snow", "ships", "owls", "bread", "clocks", "kites", "moss"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_rows(n: int = 16) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"Tell me about {TOPICS[i % len(TOPICS)]} {i}."},
                      {"role": "assistant", "content": f"Here is a short note about {TOPICS[i % len(TOPICS)]}."}]}
        for i in range(n)
    ]


def pair_rows(n: int = 16) -> list[dict]:
    return [
        {"prompt": f"Name a thing about {TOPICS[i % len(TOPICS)]} number {i}.",
         "chosen": f"one fact about {TOPICS[i % len(TOPICS)]}.",
         "rejected": f"I WILL NOT TALK ABOUT {TOPICS[i % len(TOPICS)].upper()} {i}!"}
        for i in range(n)
    ]


def kto_rows(n: int = 16) -> list[dict]:
    return [
        {"prompt": f"Say something about {TOPICS[i % len(TOPICS)]}.",
         "completion": (f"a calm note on {TOPICS[i % len(TOPICS)]}." if i % 2 == 0 else f"NO {i}!!"),
         "label": i % 2 == 0}
        for i in range(n)
    ]


def tiny_config(command: str, data_path: Path, out: Path, *overrides: str):
    base = [
        f"data.train={data_path}",
        "model.name=tiny-random",
        f"train.output_dir={out}",
        "train.progress=false",
        "optim.batch_size=4",
        "optim.micro_batch_size=4",
        "optim.max_steps=3",
        "optim.lr=1e-2",
        "data.max_length=64",
        "data.shuffle=false",
    ]
    return load_config(command, None, base + list(overrides))


def keep_first_argument(module, name: str, seen: dict, key: str = "model") -> None:
    """Wrap ``module.name`` so that the object it is called with first (the model a loop trains) is kept in
    ``seen[key]``, and in ``seen["on_meta"]`` whether it came to the loop on the meta device (unloaded: its
    weights to come from the first process); for the torchrun scripts (dist_*.py) to report on what was trained."""
    from posttrain.training.parallel import on_meta

    real = getattr(module, name)

    def wrapper(model, *args, **kwargs):
        seen[key] = model
        seen.setdefault("on_meta", on_meta(model))  # the online trainers' is kept before they shard to sample
        return real(model, *args, **kwargs)

    setattr(module, name, wrapper)


def stopped_after_step_2(full: Path, part: Path) -> None:
    """``part`` as a run that stopped right after its step-2 checkpoint: ``full``'s checkpoints (only step 2 with
    save_every=2 and 4 steps) and its first two metrics lines."""
    part.mkdir()
    shutil.copytree(full / "checkpoints", part / "checkpoints")
    (part / "metrics.jsonl").write_text("".join(
        line + "\n" for line in (full / "metrics.jsonl").read_text().splitlines()[:2]))


def assert_resumed_like(full: Path, part: Path) -> dict:
    """The run resumed in ``part`` logged steps 1-4 and took ``full``'s steps 3-4 (loss, gradient norm) to the same
    adapter. Returns the two adapters' weights."""
    from safetensors.torch import load_file

    from posttrain.training.metrics import read_metrics

    full_rows = [r for r in read_metrics(full / "metrics.jsonl") if r.get("split") != "eval"]
    resumed = [r for r in read_metrics(part / "metrics.jsonl") if r.get("split") != "eval"]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(full_rows[2:], resumed[2:]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    wa = load_file(full / "model" / "adapter_model.safetensors")
    wb = load_file(part / "model" / "adapter_model.safetensors")
    assert all((wa[k] - wb[k]).abs().max() < 1e-6 for k in wa)
    return {"full": wa, "part": wb}


class ScriptedServer:
    """An OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1 (stdlib http.server in a thread) for the LLM judge,
    critic, rubric grader and teacher-generation tests. It records every request body and its headers.

    ``answer(body)``: the reply's text, or ``{"text", "finish_reason", "usage"}`` for full control. ``failures``:
    one entry per incoming request, in order, until the list is empty: ``"ok"`` (answer), an HTTP status such as
    ``"429"`` (sent with ``Retry-After: retry_after``), ``"500"``, ``"400"``, ``"401"``, or a float (seconds to hang
    before answering). ``delay``: seconds before each answer."""

    def __init__(self):
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.failures: list[str | float] = []
        self.answer = lambda body: "Verdict: A"
        self.retry_after = "0"
        self.delay = 0.0
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: dict, headers: dict | None = None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    action = server.failures.pop(0) if server.failures else "ok"
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if isinstance(action, str) and action.isdigit():
                        extra = {"Retry-After": server.retry_after} if action == "429" else {}
                        self._send(int(action), {"error": {"message": f"scripted {action}"}}, extra)
                        return
                    time.sleep(action if isinstance(action, float) else server.delay)
                    reply = server.answer(body)
                    if isinstance(reply, str):
                        reply = {"text": reply}
                    usage = reply.get("usage") or {"prompt_tokens": 10, "completion_tokens": 3}
                    self._send(200, {"model": body["model"], "usage": usage, "choices": [
                        {"index": 0, "finish_reason": reply.get("finish_reason", "stop"),
                         "message": {"role": "assistant", "content": reply["text"]}}]})
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on a hung request, or was killed
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def kill_when(args: list[str], ready, *, env: dict | None = None, cwd=None, timeout: float = 120) -> None:
    """Run ``args`` as a process (one torch thread) and ``kill -9`` it as soon as ``ready()`` is true; it must still
    be running then (a run that ends first is a failed test). Returns once the process is gone."""
    proc = subprocess.Popen(args, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ready():
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before it was killed: {proc.stdout.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def kill_when_written(args: list[str], out: Path, lines: int, env: dict | None = None) -> None:
    """``kill_when`` the output file ``out`` holds ``lines`` lines or more."""
    kill_when(args, lambda: out.exists() and out.read_bytes().count(b"\n") >= lines, env=env)
