"""One HTTP request of ``posttrain serve``: routes, limits checked before any work is queued, the answer (JSON or
Server-Sent Events). The server around it (connections, batching, shutdown) is ``server.py``.

Streaming is token by token for every request, batched or not: the backend hands each new token to the
request's thread, which decodes it incrementally, holds back a trailing partial UTF-8 character and any text
that could be the start of a stop string, and sends the rest as ``chat.completion.chunk`` deltas; the last
delta is whatever the final text adds, so the deltas concatenate to the non-streamed text. A backend that
cannot stream (vLLM) sends the text in one chunk at the end.

Order of checks on ``POST /v1/chat/completions``, cheapest first, so a hostile request costs little: the bearer
key; ``Content-Length`` (400 when it is not a number, 413 over the body limit, the body then read and dropped so
the client sees the answer); JSON; fields (``max_tokens`` below the context); the chat template and tokenizer;
prompt + ``max_tokens`` within the context. Only then is the job queued, with its deadline.
"""

from __future__ import annotations

import hmac
import json
import queue
import secrets
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING

from posttrain.data.schema import DataError
from posttrain.generation.types import RowSpec, cut_at_stop, prompt_key, row_seed
from posttrain.serving.batcher import Job, ReloadError
from posttrain.serving.requests import RequestError, fit_to_context, parse_chat_request, parse_content_length

if TYPE_CHECKING:
    from posttrain.serving.server import ChatServer

# How long a request's thread waits past its deadline for the worker's truncated answer before answering 503
# itself (the worker answers at the first token after the deadline; no token comes if it is stuck).
GRACE_S = 2.0
# An over-limit body up to this size is read and dropped before the 413, so the client is not reset mid-send.
DISCARD_LIMIT = 16 << 20


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


def error_body(message: str, kind: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer
    server_version = "posttrain-serve"
    # Keep-alive: every answer has a Content-Length (a stream says Connection: close), so a client may send its next
    # request on the same connection; an idle one is closed after io_timeout_s (the socket timeout).
    protocol_version = "HTTP/1.1"
    answered = False  # a status line has been sent, so an error can no longer be a plain JSON answer
    body_read = False  # the request's body has been read in full (else the connection cannot be kept)

    def setup(self) -> None:
        self.timeout = self.server.io_timeout_s  # every socket read and write; a silent client frees its thread
        super().setup()

    def handle_one_request(self) -> None:
        # Until its request line arrives a connection is idle (a shutdown closes it); from then on the request is in
        # flight (a shutdown lets it finish, within the drain timeout)
        self.counted = False
        self.server.request_waits(self.connection)
        try:
            super().handle_one_request()
        finally:
            self.server.request_ends(self.connection, self.counted)

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        self.counted = self.server.request_begins(self.connection)
        if not self.counted:
            self.close_connection = True
            self._error(503, "server_shutting_down", "the server is shutting down")
            return False
        return True

    def log_message(self, format, *args) -> None:  # noqa: A002 (the stdlib's name)
        if self.server.verbose:
            super().log_message(format, *args)

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        if self.command == "POST" and not self.body_read:
            self.close_connection = True  # its unread body must not be taken for the next request
        self.answered = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str, message: str, param: str | None = None) -> None:
        kind = {401: "authentication_error", 404: "not_found_error", 500: "server_error",
                503: "server_error"}.get(status, "invalid_request_error")
        self._json(status, error_body(message, kind, code, param))

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
            reason = self.server.health()
            if reason is None:
                return self._json(200, {"status": "ok"})
            return self._json(503, {"status": "unavailable", "reason": reason})
        if not self._authorised():
            return
        model = {"id": self.server.model_name, "object": "model", "created": self.server.created,
                 "owned_by": "posttrain", "max_model_len": self.server.context_length}
        if path == "/v1/models":
            return self._json(200, {"object": "list", "data": [model]})
        if path.startswith("/v1/models/"):
            if urllib.parse.unquote(path[len("/v1/models/"):]) == self.server.model_name:
                return self._json(200, model)
            return self._error(404, "model_not_found", f"model '{urllib.parse.unquote(path[11:])}' is not served "
                               f"here (this server: '{self.server.model_name}')", "model")
        if path == "/v1/stats":
            return self._json(200, self.server.batcher.snapshot())
        self._error(404, "not_found", f"no route GET {path}")

    def do_POST(self) -> None:  # noqa: N802
        self.answered = self.body_read = False  # per request: one connection may carry several
        try:
            self._post()
        except (ConnectionError, TimeoutError):
            self.close_connection = True  # the client went away or stalled; nobody to answer
        except Exception as e:  # a bug of ours: answer 500 with one line rather than drop the connection
            self.server.log_failure(self.client_address, e)
            if not self.answered:
                self._error(500, "server_error", f"internal error: {type(e).__name__}: {e}")

    def _post(self) -> None:
        arrived = time.monotonic()
        path = self.path.split("?")[0].rstrip("/")
        if not self._authorised():
            return
        if path == "/v1/feedback":
            return self._feedback()
        if path == "/admin/reload":
            return self._reload()
        if path != "/v1/chat/completions":
            return self._error(404, "not_found", f"no route POST {path}")
        try:
            request = self._read_request()
            job = Job(request["rows"], request["stream"], deadline=arrived + self.server.request_timeout_s)
            self.server.batcher.submit(job)
        except RequestError as e:
            return self._error(e.status, e.code, e.message, e.param)
        request["arrived"] = arrived
        if request["stream"]:
            self._stream(job, request)
        else:
            self._complete(job, request)

    def _record(self, req: dict, outs: list) -> None:
        """Every choice of a finished completion into the feedback store (if one is configured and the request
        did not say ``store: false``), under the completion id the client gets."""
        store = self.server.store
        if store is None or not req["store"] or not outs:
            return
        latency = (time.monotonic() - req["arrived"]) * 1000
        params = {"temperature": req["temperature"], "top_p": req["top_p"], "max_tokens": req["max_tokens"],
                  "n": req["n"], "seed": req["seed"], "stop": req["stop"]}
        for i, o in enumerate(outs):
            store.record_response(model=req["model_id"], lineage=self.server.lineages.get(req["model_id"]),
                                  messages=req["messages"], response=o.text, params=params,
                                  prompt_tokens=req["prompt_tokens"],
                                  completion_tokens=o.completion_tokens, latency_ms=round(latency, 2),
                                  request_id=req["id"], choice_index=i)

    def _feedback(self) -> None:
        """``POST /v1/feedback``: one event about a recorded completion (``response_id`` = its ``chatcmpl-`` id,
        ``choice_index``), acknowledged only once committed; an ``Idempotency-Key`` header (or
        ``idempotency_key`` field) seen before returns the first event's id and stores nothing."""
        store = self.server.store
        try:
            raw = self._read_body()
        except RequestError as e:
            return self._error(e.status, e.code, e.message)
        if store is None:
            return self._error(404, "feedback_off", "this server keeps no feedback store: start it with "
                               "`posttrain serve MODEL --store feedback.db`")
        try:
            body = json.loads(raw or b"")
        except (ValueError, RecursionError) as e:
            return self._error(400, "invalid_json", f"request body is not valid JSON: {e}")
        key = self.headers.get("Idempotency-Key")
        if isinstance(body, dict) and "idempotency_key" in body:
            key = body.pop("idempotency_key")
            if not isinstance(key, str):
                return self._error(400, "invalid_event", f"field 'idempotency_key': must be a string, got {key!r}")
        try:
            stored = store.add_event(body, idempotency_key=key)
        except DataError as e:
            return self._json(400, {"error": {"message": str(e), "type": "invalid_request_error",
                                              "param": e.field_name, "code": "invalid_event"}})
        self._json(200, {"id": f"feedback-{stored.id}", "object": "feedback", "created": stored.created})

    def _reload(self) -> None:
        """``POST /admin/reload`` (admin key): load the model again from its source (a serving folder's ``current``
        link: the newest promoted model) and answer from the next batch on; 200 with the new model id after the
        switch is scheduled, 409 when the reload did not happen (the old model keeps serving)."""
        key = self.server.admin_key
        if not key:
            return self._error(404, "admin_off", "start the server with --admin-key (or $POSTTRAIN_ADMIN_KEY) to "
                               "reload it over HTTP; SIGHUP reloads it too")
        given = self.headers.get("X-Admin-Key", "")
        if not hmac.compare_digest(given.encode(), key.encode()):
            return self._error(401, "invalid_admin_key", "missing or wrong admin key (send 'X-Admin-Key: <key>')")
        try:
            model_id = self.server.reload()
        except ReloadError as e:
            return self._json(409, error_body(str(e), "invalid_request_error", "reload_failed"))
        self._json(200, {"object": "reload", "model": model_id})

    def _read_body(self) -> bytes:
        if "Content-Length" not in self.headers and "Transfer-Encoding" in self.headers:
            self.close_connection = True
            raise RequestError(411, "length_required", "send the body with a Content-Length header (chunked "
                               "transfer encoding is not supported)")
        try:
            length = parse_content_length(self.headers.get("Content-Length"))
        except RequestError:
            self.close_connection = True  # where this body ends is unknown, so the connection cannot be reused
            raise
        limit = self.server.max_body_bytes
        if length > limit:
            self.close_connection = True
            if length <= DISCARD_LIMIT:
                self._read(length, keep=False)
            raise RequestError(413, "request_too_large", f"the request body is {length} bytes, over this server's "
                               f"limit of {limit} bytes (--max-body-bytes; the default follows the model's "
                               f"{self.server.context_length}-token context)")
        return self._read(length)

    def _read(self, length: int, keep: bool = True) -> bytes:
        """``length`` bytes of body, all within ``io_timeout_s`` (a client trickling bytes is cut off: 408)."""
        parts, left = [], length
        deadline = time.monotonic() + self.server.io_timeout_s
        while left > 0:
            if time.monotonic() > deadline:
                self.close_connection = True
                raise RequestError(408, "request_timeout", f"the request body did not arrive within "
                                   f"{self.server.io_timeout_s:g} s")
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                raise ConnectionResetError("the client closed the connection mid-body")
            left -= len(chunk)
            if keep:
                parts.append(chunk)
        self.body_read = keep
        return b"".join(parts)

    def _read_request(self) -> dict:
        raw = self._read_body()
        try:
            body = json.loads(raw or b"")
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise RequestError(400, "invalid_json", f"request body is not valid JSON: {e}") from None
        s = self.server
        req = parse_chat_request(body, model_name=s.model_name, default_max_tokens=s.default_max_tokens, max_n=s.max_n,
                                 context_length=s.context_length)
        with s.tokenizer_lock:
            try:
                text = s.tokenizer.apply_chat_template(req["messages"], tokenize=False, add_generation_prompt=True)
            except Exception as e:  # the template's own raise_exception ("roles must alternate", ...)
                raise RequestError(400, "invalid_messages", f"the chat template rejected the messages: {e}") from None
            prompt_ids = s.tokenizer(text, add_special_tokens=False)["input_ids"]
        req["max_tokens"] = fit_to_context(len(prompt_ids), req["max_tokens"], explicit=req["max_tokens_given"],
                                           context_length=s.context_length)
        seed = req["seed"] if req["seed"] is not None else secrets.randbits(63)
        key = prompt_key(prompt_ids)
        req["rows"] = [RowSpec(prompt_ids, req["temperature"], req["top_p"], req["max_tokens"],
                               row_seed(seed, key, i), req["stop"]) for i in range(req["n"])]
        req["prompt_tokens"] = len(prompt_ids)
        req["id"] = "chatcmpl-" + uuid.uuid4().hex[:24]
        req["created"] = int(time.time())
        return req

    def _timeout_message(self) -> str:
        return f"the request did not finish within the server's request timeout ({self.server.request_timeout_s:g} s)"

    def _wait(self, job: Job) -> bool:
        finished = job.done.wait(max(0.0, job.deadline + GRACE_S - time.monotonic()))
        if not finished:
            job.cancelled = True  # the worker drops it, queued or running
            if not job.done.is_set():
                self._error(503, "timeout", self._timeout_message())
                return False
        if job.error:
            self._error(job.error_status, job.error_code, job.error)
            return False
        return True

    def _complete(self, job: Job, req: dict) -> None:
        if not self._wait(job):
            return
        req["model_id"] = job.model or self.server.model_id
        outs = job.outputs or []
        self._record(req, outs)  # committed before the answer, so feedback about it can arrive right after
        completion = sum(o.completion_tokens for o in outs)
        self._json(200, {
            "id": req["id"], "object": "chat.completion", "created": req["created"], "model": self.server.model_name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": o.text},
                         "finish_reason": o.finish_reason, "logprobs": None} for i, o in enumerate(outs)],
            "usage": {"prompt_tokens": req["prompt_tokens"], "completion_tokens": completion,
                      "total_tokens": req["prompt_tokens"] + completion},
        })

    def _event(self, body: dict | str) -> None:
        data = body if isinstance(body, str) else json.dumps(body)
        self.wfile.write(b"data: " + data.encode() + b"\n\n")

    def _chunk(self, req: dict, index: int, delta: dict, finish_reason: str | None) -> None:
        self._event({"id": req["id"], "object": "chat.completion.chunk", "created": req["created"],
                     "model": self.server.model_name,
                     "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]})

    def _stream(self, job: Job, req: dict) -> None:
        self.answered = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        texts = [StreamText(self.server.tokenizer, req["stop"]) for _ in job.rows]
        try:
            for i in range(len(job.rows)):
                self._chunk(req, i, {"role": "assistant", "content": ""}, None)
            while True:
                item = job.tokens.get(timeout=max(0.0, job.deadline + GRACE_S - time.monotonic()))
                if item is None:
                    break
                delta = texts[item[0]].push(item[1])
                if delta:
                    self._chunk(req, item[0], {"content": delta}, None)
            job.done.wait(1.0)
            if job.error:  # headers are sent: report it in the stream, as OpenAI does
                self._event(error_body(job.error, "server_error", job.error_code))
            else:
                req["model_id"] = job.model or self.server.model_id
                self._record(req, job.outputs or [])
                for i, out in enumerate(job.outputs or []):
                    rest = texts[i].finish(out.text)
                    if rest:
                        self._chunk(req, i, {"content": rest}, None)
                    self._chunk(req, i, {}, out.finish_reason)
                if req["include_usage"]:  # stream_options.include_usage: one last chunk, no choices
                    completion = sum(o.completion_tokens for o in job.outputs or [])
                    self._event({"id": req["id"], "object": "chat.completion.chunk", "created": req["created"],
                                 "model": self.server.model_name, "choices": [],
                                 "usage": {"prompt_tokens": req["prompt_tokens"], "completion_tokens": completion,
                                           "total_tokens": req["prompt_tokens"] + completion}})
            self._event("[DONE]")
        except queue.Empty:
            job.cancelled = True
            self._event(error_body(self._timeout_message(), "server_error", "timeout"))
            self._event("[DONE]")
        except (ConnectionError, TimeoutError):
            job.cancelled = True  # the client went away or stopped reading: stop generating for it
