"""An OpenAI-compatible chat server over a posttrain model: ``GET /v1/models``, ``POST /v1/chat/completions``
(streaming with Server-Sent Events), ``GET /v1/stats``; stdlib ``http.server``, no extra dependencies.

Batching. One worker thread owns the model. Each HTTP request (its own thread) renders its messages through
the chat template and queues a job of ``n`` rows; the worker takes the oldest job, waits up to
``batch_wait_ms`` for more, and runs every job that fits in ``max_batch_size`` sequences as one batched
``generate``. Sampling is per row (temperature, top-p, seed, token limit, stop strings: see
``generation/hf.py``), so any requests can share a batch; a batch runs until its longest row is done.

Streaming is token by token for every request, batched or not: the backend hands each new token to the
request's thread, which decodes it incrementally, holds back a trailing partial UTF-8 character and any text
that could be the start of a stop string, and sends the rest as ``chat.completion.chunk`` deltas; the last
delta is whatever the final text adds, so the deltas concatenate to the non-streamed text. A backend that
cannot stream (vLLM) would send the text in one chunk at the end.

Seeds: with ``seed`` in the request, choice i uses ``row_seed(seed, hash of the prompt tokens, i)``, so the
same request gives the same answer whatever it was batched with (up to float rounding, see ``hf.py``).
"""

from __future__ import annotations

import hmac
import json
import queue
import secrets
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from posttrain.generation.types import Generator, RowSpec, cut_at_stop, prompt_key, row_seed
from posttrain.serving.batcher import Batcher, Job
from posttrain.serving.requests import RequestError, parse_chat_request

MAX_BODY_BYTES = 8 << 20


class StreamText:
    """Incremental detokenisation of one choice: ``push`` returns the text that is safe to send now."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.token_ids: list[int] = []
        self.sent = ""
        self.stopped = False

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.token_ids.append(token)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        text, self.stopped = cut_at_stop(text, self.stop)
        end = len(text) if self.stopped else len(text) - self.hold
        if not self.stopped and text.endswith("\ufffd"):  # a character whose bytes have not all arrived
            end = min(end, len(text) - 1)
        return self._send(text[:end])

    def finish(self, final_text: str) -> str:
        return self._send(final_text)

    def _send(self, text: str) -> str:
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, *, generator: Generator, model_name: str, api_key: str | None = None,
                 max_batch_size: int = 8, batch_wait_ms: float = 10.0, default_max_tokens: int = 256,
                 max_n: int = 16, request_timeout_s: float = 600.0, verbose: bool = False):
        super().__init__(address, ChatHandler)
        self.generator, self.tokenizer, self.model_name = generator, generator.tokenizer, model_name
        self.api_key, self.default_max_tokens, self.max_n = api_key, default_max_tokens, max_n
        self.request_timeout_s, self.verbose = request_timeout_s, verbose
        self.created = int(time.time())
        self.tokenizer_lock = threading.Lock()
        self.batcher = Batcher(generator, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        """Graceful shutdown: stop accepting, let the batch in flight finish, answer queued requests 503."""
        self.shutdown()
        self.batcher.close()
        self.server_close()


def _error_body(message: str, kind: str, code: str | None) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer
    server_version = "posttrain-serve"

    def log_message(self, format, *args) -> None:  # noqa: A002 (the stdlib's name)
        if self.server.verbose:
            super().log_message(format, *args)

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str, message: str) -> None:
        kind = {401: "authentication_error", 404: "not_found_error", 500: "server_error",
                503: "server_error"}.get(status, "invalid_request_error")
        self._json(status, _error_body(message, kind, code))

    def _authorised(self) -> bool:
        key = self.server.api_key
        if not key:
            return True
        given = self.headers.get("Authorization", "")
        if given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip().encode(), key.encode()):
            return True
        self._error(401, "invalid_api_key", "missing or wrong API key (send 'Authorization: Bearer <key>')")
        return False

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            return self._json(200, {"status": "ok"})
        if not self._authorised():
            return
        if path == "/v1/models":
            return self._json(200, {"object": "list", "data": [
                {"id": self.server.model_name, "object": "model", "created": self.server.created,
                 "owned_by": "posttrain"}]})
        if path == "/v1/stats":
            return self._json(200, self.server.batcher.snapshot())
        self._error(404, "not_found", f"no route GET {path}")

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?")[0].rstrip("/")
        if not self._authorised():
            return
        if path != "/v1/chat/completions":
            return self._error(404, "not_found", f"no route POST {path}")
        try:
            request = self._read_request()
            job = Job(request["rows"], request["stream"])
            self.server.batcher.submit(job)
        except RequestError as e:
            return self._error(e.status, e.code, e.message)
        if request["stream"]:
            self._stream(job, request)
        else:
            self._complete(job, request)

    def _read_request(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise RequestError(413, "request_too_large", f"request body over {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(self.rfile.read(length) or b"")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(400, "invalid_json", f"request body is not valid JSON: {e}") from None
        s = self.server
        req = parse_chat_request(body, model_name=s.model_name, default_max_tokens=s.default_max_tokens, max_n=s.max_n)
        with s.tokenizer_lock:
            try:
                text = s.tokenizer.apply_chat_template(req["messages"], tokenize=False, add_generation_prompt=True)
            except Exception as e:  # the template's own raise_exception ("roles must alternate", ...)
                raise RequestError(400, "invalid_messages", f"the chat template rejected the messages: {e}") from None
            prompt_ids = s.tokenizer(text, add_special_tokens=False)["input_ids"]
        seed = req["seed"] if req["seed"] is not None else secrets.randbits(63)
        key = prompt_key(prompt_ids)
        req["rows"] = [RowSpec(prompt_ids, req["temperature"], req["top_p"], req["max_tokens"],
                               row_seed(seed, key, i), req["stop"]) for i in range(req["n"])]
        req["prompt_tokens"] = len(prompt_ids)
        req["id"] = "chatcmpl-" + uuid.uuid4().hex[:24]
        req["created"] = int(time.time())
        return req

    def _wait(self, job: Job) -> bool:
        if not job.done.wait(self.server.request_timeout_s):
            self._error(503, "timeout", "the request did not finish in time")
            return False
        if job.error:
            status = 503 if "shut down" in job.error else 500
            self._error(status, "server_error", job.error)
            return False
        return True

    def _complete(self, job: Job, req: dict) -> None:
        if not self._wait(job):
            return
        outs = job.outputs or []
        completion = sum(o.completion_tokens for o in outs)
        self._json(200, {
            "id": req["id"], "object": "chat.completion", "created": req["created"], "model": self.server.model_name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": o.text},
                         "finish_reason": o.finish_reason, "logprobs": None} for i, o in enumerate(outs)],
            "usage": {"prompt_tokens": req["prompt_tokens"], "completion_tokens": completion,
                      "total_tokens": req["prompt_tokens"] + completion},
        })

    def _chunk(self, req: dict, index: int, delta: dict, finish_reason: str | None) -> None:
        chunk = {"id": req["id"], "object": "chat.completion.chunk", "created": req["created"],
                 "model": self.server.model_name,
                 "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
        self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        self.wfile.flush()

    def _stream(self, job: Job, req: dict) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        texts = [StreamText(self.server.tokenizer, req["stop"]) for _ in job.rows]
        try:
            for i in range(len(job.rows)):
                self._chunk(req, i, {"role": "assistant", "content": ""}, None)
            deadline = time.monotonic() + self.server.request_timeout_s
            while True:
                item = job.tokens.get(timeout=max(0.0, deadline - time.monotonic()))
                if item is None:
                    break
                delta = texts[item[0]].push(item[1])
                if delta:
                    self._chunk(req, item[0], {"content": delta}, None)
            job.done.wait(1.0)
            if job.error:  # headers are sent: report it in the stream, as OpenAI does
                self.wfile.write(b"data: " + json.dumps(_error_body(job.error, "server_error", None)).encode()
                                 + b"\n\n")
            else:
                for i, out in enumerate(job.outputs or []):
                    rest = texts[i].finish(out.text)
                    if rest:
                        self._chunk(req, i, {"content": rest}, None)
                    self._chunk(req, i, {}, out.finish_reason)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except queue.Empty:
            self.wfile.write(b"data: " + json.dumps(_error_body("timed out", "server_error", "timeout")).encode()
                             + b"\n\ndata: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away; its rows finish with the batch and are dropped


def start_server(model_name: str, host: str = "127.0.0.1", port: int = 0, *, adapter: str | None = None,
                 api_key: str | None = None, max_batch_size: int = 8, batch_wait_ms: float = 10.0,
                 default_max_tokens: int = 256, generator: Generator | None = None, served_name: str | None = None,
                 verbose: bool = False, cache_dir: str | None = None) -> tuple[ChatServer, threading.Thread, str]:
    """Load the model (unless ``generator`` is given), bind, and serve in a daemon thread.

    Returns ``(server, thread, url)``; ``server.close()`` shuts down gracefully. ``port=0`` picks a free port
    (read it from ``url``). ``served_name``: the model id clients see (default: the model name as given)."""
    from posttrain.generation.backends import load_generator, model_label

    if generator is None:
        generator, _ = load_generator(model_name, adapter=adapter, backend="hf", batch_size=max_batch_size,
                                      cache_dir=cache_dir)
    server = ChatServer((host, port), generator=generator, model_name=served_name or model_label(model_name, adapter),
                        api_key=api_key, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms,
                        default_max_tokens=default_max_tokens, verbose=verbose)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="posttrain-serve",
                              daemon=True)
    thread.start()
    return server, thread, server.url
