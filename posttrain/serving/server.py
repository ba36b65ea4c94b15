"""An OpenAI-compatible chat server over a posttrain model: ``GET /v1/models``, ``POST /v1/chat/completions``
(streaming with Server-Sent Events), ``GET /v1/stats``, ``GET /health``; stdlib ``http.server``, no extra
dependencies. One request is handled by ``handler.py``; this file is the server around it.

Batching. One worker thread owns the model (``batcher.py``). Each HTTP request (its own thread) renders its
messages through the chat template and queues a job of ``n`` rows; the worker takes the oldest job, waits up to
``batch_wait_ms`` for more, and runs every job that fits in ``max_batch_size`` sequences as one batched
``generate``. Sampling is per row (temperature, top-p, seed, token limit, stop strings: see
``generation/hf.py``), so any requests can share a batch; a row leaves the batch when it ends.

Seeds: with ``seed`` in the request, choice i uses ``row_seed(seed, hash of the prompt tokens, i)``, so the
same request gives the same answer whatever it was batched with (up to float rounding, see ``hf.py``).

Limits, so that no one request can freeze the server:

- the model's context (``context_length``, from its config): prompt + ``max_tokens`` must fit, checked before
  the job is queued (400 naming the limit);
- the request body: ``max_body_bytes``, by default ``requests.body_limit(context_length)``, checked on the
  ``Content-Length`` header before the body is parsed or tokenized (413);
- a deadline per request (``request_timeout_s`` after it arrived): its generation stops there and it is answered
  with the text so far, ``finish_reason: "timeout"``; the worker moves on to the next batch;
- ``max_connections`` requests at once (more get 503 at once), a listen backlog of ``LISTEN_BACKLOG``, and
  ``io_timeout_s`` on every socket read and write;
- ``/health`` answers 503 with the reason when the worker makes no progress for ``stall_timeout_s``;
- ``close`` (SIGTERM) stops accepting, closes the keep-alive connections that wait for a request, lets the
  requests in flight finish for up to ``drain_timeout_s``, then stops the batch in flight and answers what is left
  with 503.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from http.server import ThreadingHTTPServer

from posttrain.data.runfolder import promoted_identity
from posttrain.feedback.store import FeedbackStore
from posttrain.generation.backends import load_generator, model_label
from posttrain.generation.types import BackendError, Generator
from posttrain.serving.batcher import Batcher, ReloadError
from posttrain.serving.handler import ChatHandler, StreamText, error_body
from posttrain.serving.requests import body_limit

__all__ = ["ChatServer", "ReloadError", "StreamText", "model_context_length", "start_server"]

# The kernel's queue of connections not yet accepted (socketserver's default is 5: a burst of 30 clients saw
# resets). Linux caps it at net.core.somaxconn (4096 on current kernels).
LISTEN_BACKLOG = 1024


def model_context_length(generator: Generator) -> int | None:
    """Tokens the model attends over, prompt and completion together, from its config; None when unknown."""
    config = getattr(getattr(generator, "model", None), "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    try:  # vLLM knows its own limit
        return int(generator.llm.llm_engine.model_config.max_model_len)  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        pass
    value = getattr(generator.tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 10**7 else None  # unset tokenizers say 1e30


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address, *, generator: Generator, model_name: str, api_key: str | None = None,
                 max_batch_size: int = 8, batch_wait_ms: float = 10.0, default_max_tokens: int = 256,
                 max_n: int = 16, context_length: int | None = None, max_body_bytes: int | None = None,
                 request_timeout_s: float = 600.0, drain_timeout_s: float = 30.0, stall_timeout_s: float = 120.0,
                 max_connections: int = 512, io_timeout_s: float = 30.0, verbose: bool = False,
                 store: FeedbackStore | None = None, model_id: str | None = None,
                 reload_from: Callable[[], tuple[Generator, str]] | None = None, admin_key: str | None = None,
                 lineages: dict[str, str] | None = None):
        context_length = context_length or model_context_length(generator)
        if context_length is None:
            raise BackendError(f"cannot tell the context length of '{model_name}' from its config; pass "
                               f"--context-length")
        super().__init__(address, ChatHandler)
        self.generator, self.tokenizer, self.model_name = generator, generator.tokenizer, model_name
        self.context_length = context_length
        self.max_body_bytes = max_body_bytes or body_limit(context_length)
        self.api_key, self.max_n = api_key, max_n
        self.default_max_tokens = min(default_max_tokens, context_length - 1)
        self.request_timeout_s, self.drain_timeout_s = request_timeout_s, drain_timeout_s
        self.max_connections, self.io_timeout_s, self.verbose = max_connections, io_timeout_s, verbose
        self.created = int(time.time())
        self.store = store  # a feedback store: every completion recorded (unless the request says store: false)
        # model id -> lineage key of the promoted models it served (``reload_from`` adds to it), stored with each
        # completion
        self.lineages = lineages if lineages is not None else {}
        self.tokenizer_lock = threading.Lock()
        self.batcher = Batcher(generator, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms,
                               stall_s=stall_timeout_s, model_id=model_id or model_name)
        # reload (SIGHUP, POST /admin/reload): loads the model again from where it came (a promoted serving
        # folder's `current` link points at the newest promoted model); the admin key guards the HTTP route
        self.reload_from, self.admin_key = reload_from, admin_key
        self._reloading = threading.Lock()
        self.reloads = 0
        self.draining = False
        self._active = 0  # connections being handled (the max_connections cap)
        self._busy = 0  # requests being answered (what a shutdown waits for)
        self._waiting: set = set()  # sockets of connections waiting for their next request line (keep-alive)
        self._idle = threading.Condition()
        self._hurry = threading.Event()

    @property
    def model_id(self) -> str:
        """The id of the model answering now (a promoted model's id, else its name); recorded with every response."""
        return self.batcher._next[1] if self.batcher._next else self.batcher.model_id

    def reload(self) -> str:
        """Load the model again from its source and serve it from the next batch on, without dropping a request
        (requests keep being answered by the old model while the new one loads). Returns the new model id;
        ``ReloadError`` (the old model keeps serving) when there is nothing to reload from, a reload is already
        running, the load fails, or the new tokenizer differs from the served one (requests are tokenized before
        they reach the model, so both must read tokens the same way)."""
        if self.reload_from is None:
            raise ReloadError("this server was not started from a model path it can reload")
        if not self._reloading.acquire(blocking=False):
            raise ReloadError("a reload is already running")
        try:
            try:
                generator, model_id = self.reload_from()
            except Exception as e:  # noqa: BLE001 (any load failure leaves the old model serving)
                first = str(e).splitlines()[0] if str(e) else ""
                raise ReloadError(f"loading the model failed: {type(e).__name__}: {first}") from None
            old, new = self.tokenizer, generator.tokenizer
            if old.get_vocab() != new.get_vocab() or \
                    getattr(old, "chat_template", None) != getattr(new, "chat_template", None):
                raise ReloadError(f"the new model '{model_id}' has a different tokenizer or chat template than the "
                                  f"served one; restart the server to change tokenizers")
            self.batcher.swap(generator, model_id)
            self.reloads += 1
            return model_id
        finally:
            self._reloading.release()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def health(self) -> str | None:
        """None when the server can answer requests, else why not."""
        return "the server is shutting down" if self.draining else self.batcher.health()

    # Connections: counted, so that a flood cannot start unbounded threads and shutdown knows when all are done.

    def process_request(self, request, client_address) -> None:
        with self._idle:
            full = self._active >= self.max_connections
            if not full:
                self._active += 1
        if full:
            threading.Thread(target=self._refuse, args=(request,), daemon=True).start()
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._leave()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._leave()

    def _leave(self) -> None:
        with self._idle:
            self._active -= 1
            self._idle.notify_all()

    # Requests: a connection kept alive between two requests is idle, not in flight; a shutdown closes it at once.

    def request_waits(self, sock) -> None:
        """The connection ``sock`` waits for its next request line; shut at once when the server is closing."""
        with self._idle:
            if self.draining:
                _shut(sock)
            else:
                self._waiting.add(sock)

    def request_begins(self, sock) -> bool:
        """A request line arrived on ``sock``: count it as in flight; False (answer 503) when the server is closing."""
        with self._idle:
            self._waiting.discard(sock)
            if self.draining:
                return False
            self._busy += 1
            return True

    def request_ends(self, sock, counted: bool) -> None:
        with self._idle:
            self._waiting.discard(sock)
            if counted:
                self._busy -= 1
                self._idle.notify_all()

    def _refuse(self, request) -> None:
        """503 to a connection over ``max_connections``, without reading its request."""
        message = f"the server is handling {self.max_connections} requests (--max-connections); retry shortly"
        body = json.dumps(error_body(message, "server_error", "server_busy")).encode()
        head = (f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
                f"\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
        try:
            request.settimeout(1.0)
            request.sendall(head + body)
            request.shutdown(1)  # SHUT_WR: the answer is complete
            request.recv(1 << 16)  # take the unread request, so that closing does not reset the answer away
        except OSError:
            pass
        self.shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return  # a client that went away or stalled mid-request
        self.log_failure(client_address, error)

    def log_failure(self, client_address, error: BaseException | None) -> None:
        if self.verbose:
            traceback.print_exc()
        else:
            print(f"posttrain serve: error on a request from {client_address[0]}: {type(error).__name__}: {error} "
                  f"(--verbose for the traceback)", file=sys.stderr)

    # Shutdown.

    def close(self, drain_timeout_s: float | None = None) -> bool:
        """Graceful shutdown: stop accepting (new connections are refused), let the requests in flight finish for
        up to ``drain_timeout_s`` (default: the server's), then stop the batch in flight and answer what is left
        with 503. True when every request in flight finished by itself."""
        drain = self.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        with self._idle:
            self.draining = True
            for sock in self._waiting:  # idle keep-alive connections: nothing to drain, their clients see them close
                _shut(sock)
            self._waiting.clear()
        self.shutdown()  # serve_forever returns
        self.server_close()  # the listening socket closes: connect() is refused from now on
        drained = self._wait_idle(time.monotonic() + drain)
        self.batcher.close(timeout_s=5.0)
        self._wait_idle(time.monotonic() + 2.0)  # the requests just cut write their answers
        return drained

    def hurry(self) -> None:
        """End the drain of a ``close`` in progress now (a second Ctrl-C)."""
        self._hurry.set()

    def _wait_idle(self, deadline: float) -> bool:
        with self._idle:
            while self._busy > 0 and not self._hurry.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.1))
            return self._busy == 0


def _shut(sock) -> None:
    """End both directions of a connection's socket: its handler's blocking read returns at once (end of stream)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the client


def start_server(model_name: str, host: str = "127.0.0.1", port: int = 0, *, adapter: str | None = None,
                 api_key: str | None = None, max_batch_size: int = 8, batch_wait_ms: float = 10.0,
                 default_max_tokens: int = 256, generator: Generator | None = None, served_name: str | None = None,
                 verbose: bool = False, cache_dir: str | None = None, store: str | None = None,
                 admin_key: str | None = None, **limits) -> tuple[ChatServer, threading.Thread, str]:
    """Load the model (unless ``generator`` is given), bind, and serve in a daemon thread.

    Returns ``(server, thread, url)``; ``server.close()`` shuts down gracefully. ``port=0`` picks a free port
    (read it from ``url``). ``served_name``: the model id clients see (default: the model name as given).
    ``limits``: ``ChatServer``'s ``context_length``, ``max_body_bytes``, ``request_timeout_s``,
    ``drain_timeout_s``, ``stall_timeout_s``, ``max_connections``, ``io_timeout_s``, ``max_n``. ``store``: a
    feedback store URL (``feedback/store.py``), opened before the model loads: completions are recorded there and
    ``POST /v1/feedback`` takes events about them. ``admin_key``: enables ``POST /admin/reload`` for that bearer
    key (``ChatServer.reload``; SIGHUP does the same in ``posttrain serve``)."""
    feedback = FeedbackStore(store) if store else None  # a bad URL fails before the model loads

    lineages: dict[str, str] = {}  # model id -> lineage key, recorded with each completion the model gives

    def load() -> tuple[Generator, str]:
        """The model at ``model_name`` now (a serving folder's ``current`` link is resolved again on every load)."""
        loaded, _ = load_generator(model_name, adapter=adapter, backend="hf", batch_size=max_batch_size,
                                   cache_dir=cache_dir)
        promoted, lineage = promoted_identity(model_name)
        model_id = promoted or model_label(model_name, adapter)
        if lineage:
            lineages[model_id] = lineage
        return loaded, model_id

    reload_from = None
    if generator is None:
        generator, model_id = load()
        reload_from = load
    else:
        model_id = None
    server = ChatServer((host, port), generator=generator, model_name=served_name or model_label(model_name, adapter),
                        api_key=api_key, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms,
                        default_max_tokens=default_max_tokens, verbose=verbose, store=feedback, model_id=model_id,
                        reload_from=reload_from, admin_key=admin_key, lineages=lineages, **limits)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="posttrain-serve",
                              daemon=True)
    thread.start()
    return server, thread, server.url
