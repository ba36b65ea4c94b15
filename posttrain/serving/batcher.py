"""The queue of chat jobs and the one worker thread that owns the model and runs them in batches.

The worker takes the oldest job, waits up to ``batch_wait_ms`` for more, and runs every job that fits in
``max_batch_size`` sequences (a job is ``n`` sequences) as one ``generate_rows`` call; a job that does not fit
opens the next batch, so nothing is overtaken. Sampling settings are per row, so any jobs can share a batch.

No job holds the worker past its deadline. The worker sees every generated token (the backend's ``on_token``),
so it answers each job as soon as the job's own rows end (not when the batch does), a job whose deadline passes
at once with the text so far (``finish_reason: "timeout"``), and drops a job whose client went away. The rows
of such a job stay in the backend's batch while other rows run (one backend call cannot drop them); once only
such rows are left, the token callback raises ``_StopBatch``, the backend's call ends and the worker moves on.
``close`` stops a batch the same way. A backend that never calls ``on_token`` (vLLM) runs each batch to its end;
its clients still get their timeout answer from their own request thread.

Health: the worker beats on every token and every idle poll of the queue (10 per second); ``health`` reports a
worker that has not beaten for ``stall_s`` (a hung kernel, a prefill far slower than the model should take).
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from dataclasses import dataclass, field

from posttrain.generation.types import GenOutput, Generator, RowSpec, cut_at_stop
from posttrain.serving.requests import RequestError

SHUTDOWN_MESSAGE = "the server shut down before this request finished"


class ReloadError(RuntimeError):
    """A reload that did not happen (the old model keeps serving); ``str()`` is one line."""


@dataclass(eq=False)
class Job:
    """One request's rows and, once it is finished, its ``outputs`` or ``error``. ``deadline``: a
    ``time.monotonic()`` after which its generation stops."""

    rows: list[RowSpec]
    stream: bool
    deadline: float = math.inf
    tokens: queue.Queue = field(default_factory=queue.Queue)  # (choice index, token id); None = finished
    done: threading.Event = field(default_factory=threading.Event)
    outputs: list[GenOutput] | None = None
    error: str | None = None
    error_status: int = 500  # the HTTP status and OpenAI error code of ``error``
    error_code: str = "server_error"
    cancelled: bool = False  # set by the request's thread: nobody will read the result, stop generating it
    model: str | None = None  # the id of the model that generated it (set by the worker when its batch starts)
    generated: list[list[int]] = field(default_factory=list)  # per choice, the tokens so far (worker thread)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.generated = [[] for _ in self.rows]

    def finish(self, outputs: list[GenOutput] | None = None, error: str | None = None, status: int = 500,
               code: str = "server_error") -> bool:
        """Set the result, once: False when it was already set (by the deadline, a shutdown, the batch)."""
        with self._lock:
            if self.done.is_set():
                return False
            self.outputs, self.error, self.error_status, self.error_code = outputs, error, status, code
            self.done.set()
        self.tokens.put(None)
        return True


class _StopBatch(Exception):
    """Raised from the token callback: no row still running belongs to a job that anyone waits for."""


def output_from_tokens(tokenizer, eos: int | None, row: RowSpec, tokens: list[int], ended: bool) -> GenOutput:
    """The ``GenOutput`` of a row from its generated ``tokens`` (the contract in ``generation/types.py``); a row
    that had not ``ended`` (cut by its deadline) gets ``finish_reason="timeout"``."""
    reason = "length" if ended else "timeout"
    if eos is not None and eos in tokens:
        tokens, reason = tokens[: tokens.index(eos) + 1], "stop"
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    if row.stop:
        text, hit = cut_at_stop(text, row.stop)
        reason = "stop" if hit else reason
    return GenOutput(text, list(tokens), reason)  # type: ignore[arg-type]  # "timeout" is the server's own


class _BatchRun:
    """The worker's view of one ``generate_rows`` call: which rows still run, whose jobs are still wanted.

    A job is answered as soon as its own rows have ended (not when the batch does), from the tokens seen; by the
    ``GenOutput`` contract that is the output the backend would return for them."""

    def __init__(self, batcher: "Batcher", batch: list[Job]):
        self.batcher, self.batch = batcher, batch
        self.owners = [(job, i) for job in batch for i in range(len(job.rows))]  # row index -> (job, choice)
        self.spans, start = {}, 0  # id(job) -> its row indices
        for job in batch:
            self.spans[id(job)] = range(start, start + len(job.rows))
            start += len(job.rows)
        self.ended = [False] * len(self.owners)
        self.running = len(self.owners)  # rows the backend is still generating
        self.wanted = len(self.owners)  # of those, rows whose job is not finished yet
        self.next_deadline = min(job.deadline for job in batch)
        self.timed_out = 0

    def row_ended(self, row: RowSpec, tokens: list[int]) -> bool:
        """The backend's own rule for a row that leaves the batch: EOS, its token limit, a stop string."""
        if tokens[-1] == self.batcher.eos or len(tokens) >= row.max_new_tokens:
            return True
        return bool(row.stop) and cut_at_stop(self.batcher.tokenizer.decode(tokens, skip_special_tokens=True),
                                              row.stop)[1]

    def on_token(self, index: int, token: int) -> None:
        now = self.batcher.beat()
        job, choice = self.owners[index]
        tokens = job.generated[choice]
        tokens.append(token)
        if job.stream and not job.done.is_set():
            job.tokens.put((choice, token))
        if not self.ended[index] and self.row_ended(job.rows[choice], tokens):
            self.ended[index] = True
            self.running -= 1
            if not job.done.is_set():
                self.wanted -= 1
                span = self.spans[id(job)]
                if all(self.ended[r] for r in span):
                    job.finish([self.output(r) for r in span])
        if now >= self.next_deadline or (job.cancelled and not job.done.is_set()):
            self.drop_finished_jobs(now)
        if self.batcher.aborting.is_set() or (self.running and not self.wanted):
            raise _StopBatch

    def drop_finished_jobs(self, now: float) -> None:
        """Answer every job past its deadline with its text so far; forget jobs whose client went away."""
        for job in self.batch:
            if job.done.is_set() or not (job.cancelled or now >= job.deadline):
                continue
            span = self.spans[id(job)]
            if job.cancelled:
                job.finish(error="cancelled")
            else:
                job.finish([self.output(r) for r in span])
                self.timed_out += 1
            self.wanted -= sum(not self.ended[r] for r in span)
        self.next_deadline = min((job.deadline for job in self.batch if not job.done.is_set()), default=math.inf)

    def output(self, index: int) -> GenOutput:
        job, choice = self.owners[index]
        return output_from_tokens(self.batcher.tokenizer, self.batcher.eos, job.rows[choice], job.generated[choice],
                                  self.ended[index])


class Batcher:
    """The queue and the worker thread that owns the model. ``stats``: requests, batches, sizes seen."""

    def __init__(self, generator: Generator, *, max_batch_size: int = 8, batch_wait_ms: float = 10.0,
                 stall_s: float = 120.0, model_id: str = "model"):
        self.generator, self.max_batch_size, self.wait_s = generator, max_batch_size, batch_wait_ms / 1000
        self.model_id = model_id
        self._next: tuple[Generator, str] | None = None  # a reloaded model, taken up between batches
        self.tokenizer = generator.tokenizer
        self.eos = getattr(self.tokenizer, "eos_token_id", None)
        self.stall_s = stall_s
        self.queue: queue.Queue[Job] = queue.Queue()
        self.stats = {"requests": 0, "batches": 0, "max_batch_requests": 0, "max_batch_sequences": 0,
                      "batch_requests_histogram": {}, "timed_out": 0}
        self.running: list[Job] = []
        self.last_beat = time.monotonic()
        self.aborting = threading.Event()  # the batch in flight stops at its next token
        self._carry: Job | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, name="posttrain-serve-worker", daemon=True)
        self.thread.start()

    def swap(self, generator: Generator, model_id: str) -> None:
        """Serve ``generator`` from the next batch on. The batch in flight finishes on the model it started with,
        and nothing queued is dropped; each job records the id of the model that answered it."""
        with self._lock:
            self._next = (generator, model_id)

    def submit(self, job: Job) -> None:
        if self._stop.is_set():
            raise RequestError(503, "server_shutting_down", "the server is shutting down")
        self.queue.put(job)
        if self._stop.is_set():  # close() emptied the queue between the check above and the put
            job.finish(error=SHUTDOWN_MESSAGE, status=503, code="server_shutting_down")

    def beat(self) -> float:
        self.last_beat = now = time.monotonic()
        return now

    def health(self) -> str | None:
        """None when the worker is alive and making progress, else the reason it is not."""
        if not self.thread.is_alive():
            return "the generation worker has stopped" if not self._stop.is_set() else "the server is shutting down"
        quiet = time.monotonic() - self.last_beat
        if quiet > self.stall_s:
            waiting = len(self.running) + self.queue.qsize() + (self._carry is not None)
            return (f"the generation worker has made no progress for {quiet:.0f} s (limit {self.stall_s:g} s, "
                    f"--stall-timeout) with {waiting} requests running or queued")
        return None

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop taking work, stop the batch in flight at its next token, fail whatever is still queued."""
        self._stop.set()
        self.aborting.set()
        self.thread.join(timeout=timeout_s)
        leftover = [self._carry] if self._carry else []
        while True:
            try:
                leftover.append(self.queue.get_nowait())
            except queue.Empty:
                break
        for job in leftover + list(self.running):
            job.finish(error=SHUTDOWN_MESSAGE, status=503, code="server_shutting_down")

    def _take(self, timeout: float) -> Job:
        """The next job still wanted: one whose client gave up or whose deadline passed in the queue is failed."""
        while True:
            job = self.queue.get(timeout=timeout)
            if job.cancelled:
                job.finish(error="cancelled")
            elif time.monotonic() >= job.deadline:
                job.finish(error="the request timed out waiting in the queue (--request-timeout)", status=503,
                           code="timeout")
                self._count_timeout()
            else:
                return job

    def _collect(self) -> list[Job]:
        job, self._carry = self._carry, None
        if job is None:
            job = self._take(0.1)
        batch, size = [job], len(job.rows)
        deadline = time.monotonic() + self.wait_s
        while size < self.max_batch_size:
            try:
                nxt = self._take(max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if size + len(nxt.rows) > self.max_batch_size:
                self._carry = nxt  # first in the next batch, so nothing is overtaken
                break
            batch.append(nxt)
            size += len(nxt.rows)
        return batch

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.beat()
            try:
                batch = self._collect()
            except queue.Empty:
                continue
            self.beat()
            with self._lock:
                if self._next is not None:  # a reload: between two batches, never inside one
                    (self.generator, self.model_id), self._next = self._next, None
            for job in batch:
                job.model = self.model_id
            self.running = batch
            try:
                self._run(batch)
            finally:
                self.running = []

    def _run(self, batch: list[Job]) -> None:
        run = _BatchRun(self, batch)
        rows = [row for job in batch for row in job.rows]
        with self._lock:  # counted when the batch starts: a job can be answered (and its client ask for the stats)
            s = self.stats  # before the batch ends
            s["requests"] += len(batch)
            s["batches"] += 1
            s["max_batch_requests"] = max(s["max_batch_requests"], len(batch))
            s["max_batch_sequences"] = max(s["max_batch_sequences"], len(rows))
            hist = s["batch_requests_histogram"]
            hist[str(len(batch))] = hist.get(str(len(batch)), 0) + 1
        try:
            outputs = self.generator.generate_rows(rows, run.on_token)
        except _StopBatch:
            outputs = None
        except Exception as e:  # a failed batch must not kill the worker; each request gets a 500
            for job in batch:
                job.finish(error=f"generation failed: {type(e).__name__}: {e}")
            return
        if self.aborting.is_set():
            for job in batch:
                job.finish(error=SHUTDOWN_MESSAGE, status=503, code="server_shutting_down")
            return
        if outputs is not None:  # jobs not answered yet: a backend that does not call on_token (vLLM)
            for job in batch:
                span = run.spans[id(job)]
                job.finish(outputs[span.start: span.stop])
        with self._lock:
            self.stats["timed_out"] += run.timed_out

    def _count_timeout(self) -> None:
        with self._lock:
            self.stats["timed_out"] += 1

    def snapshot(self) -> dict:
        with self._lock:
            stats = json.loads(json.dumps(self.stats))
        stats["running"] = len(self.running)
        stats["queued"] = self.queue.qsize() + (self._carry is not None)
        return stats
