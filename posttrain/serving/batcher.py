"""The queue of chat jobs and the one worker thread that owns the model and runs them in batches.

The worker takes the oldest job, waits up to ``batch_wait_ms`` for more, and runs every job that fits in
``max_batch_size`` sequences (a job is ``n`` sequences) as one ``generate_rows`` call; a job that does not fit
opens the next batch, so nothing is overtaken. Sampling settings are per row, so any jobs can share a batch.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass, field

from posttrain.generation.types import GenOutput, Generator, RowSpec
from posttrain.serving.requests import RequestError


@dataclass
class Job:
    rows: list[RowSpec]
    stream: bool
    tokens: queue.Queue = field(default_factory=queue.Queue)  # (choice index, token id); None = finished
    done: threading.Event = field(default_factory=threading.Event)
    outputs: list[GenOutput] | None = None
    error: str | None = None


class Batcher:
    """The queue and the worker thread that owns the model. ``stats``: requests, batches, sizes seen."""

    def __init__(self, generator: Generator, *, max_batch_size: int = 8, batch_wait_ms: float = 10.0):
        self.generator, self.max_batch_size, self.wait_s = generator, max_batch_size, batch_wait_ms / 1000
        self.queue: queue.Queue[Job] = queue.Queue()
        self.stats = {"requests": 0, "batches": 0, "max_batch_requests": 0, "max_batch_sequences": 0,
                      "batch_requests_histogram": {}}
        self._carry: Job | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, name="posttrain-serve-worker", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        if self._stop.is_set():
            raise RequestError(503, "server_shutting_down", "the server is shutting down")
        self.queue.put(job)

    def close(self) -> None:
        """Stop taking work, finish the batch in flight, fail whatever is still queued."""
        self._stop.set()
        self.thread.join(timeout=60)
        leftover = [self._carry] if self._carry else []
        while True:
            try:
                leftover.append(self.queue.get_nowait())
            except queue.Empty:
                break
        for job in leftover:
            self._fail(job, "the server shut down before this request ran")

    def _collect(self) -> list[Job]:
        job, self._carry = self._carry, None
        if job is None:
            job = self.queue.get(timeout=0.1)
        batch, size = [job], len(job.rows)
        deadline = time.monotonic() + self.wait_s
        while size < self.max_batch_size:
            try:
                nxt = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
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
            try:
                batch = self._collect()
            except queue.Empty:
                continue
            self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        rows, owners = [], []
        for job in batch:
            for i, row in enumerate(job.rows):
                rows.append(row)
                owners.append((job, i))

        def on_token(index: int, token: int) -> None:
            job, choice = owners[index]
            if job.stream:
                job.tokens.put((choice, token))

        streaming = any(job.stream for job in batch)
        try:
            outputs = self.generator.generate_rows(rows, on_token if streaming else None)
        except Exception as e:  # a failed batch must not kill the worker; each request gets a 500
            for job in batch:
                self._fail(job, f"generation failed: {type(e).__name__}: {e}")
            return
        with self._lock:
            s = self.stats
            s["requests"] += len(batch)
            s["batches"] += 1
            s["max_batch_requests"] = max(s["max_batch_requests"], len(batch))
            s["max_batch_sequences"] = max(s["max_batch_sequences"], len(rows))
            hist = s["batch_requests_histogram"]
            hist[str(len(batch))] = hist.get(str(len(batch)), 0) + 1
        start = 0
        for job in batch:
            job.outputs = outputs[start: start + len(job.rows)]
            start += len(job.rows)
            job.tokens.put(None)
            job.done.set()

    def snapshot(self) -> dict:
        with self._lock:
            return json.loads(json.dumps(self.stats))

    @staticmethod
    def _fail(job: Job, message: str) -> None:
        job.error = message
        job.tokens.put(None)
        job.done.set()
