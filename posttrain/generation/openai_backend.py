"""The ``openai:URL:MODEL`` backend: candidates sampled from an OpenAI-compatible ``{URL}/chat/completions``
endpoint (a teacher: OpenAI, a vLLM server, ``posttrain serve``), for SFT demonstrations or candidates to judge.

A remote model takes the prompt *messages* (it applies its own chat template) and no token ids, so it is not a
``types.Generator``: ``candidates.py`` hands it ``PromptJob.prompt``. One request per candidate, carrying the
candidate's temperature, top_p, ``max_tokens`` (or ``max_completion_tokens``: ``max_tokens_field``) and its own seed (``types.row_seed``: run seed, prompt id, index),
so each candidate is one entry of the answer cache (``answer_cache.py``, committed as it arrives) and a rerun or a
resumed run asks only for what it lacks. ``max_concurrency`` requests are in flight; a prompt's N completions are
handed back as soon as all N are in. Retries (429, 5xx, timeouts, connection errors; ``Retry-After`` honoured)
back off exponentially with jitter (``http_client.py``); any other 4xx is a one-line ``BackendError``.

Token counts come from the response's ``usage``. Without a local tokenizer, ``approx_tokens`` (chars/4, rounded up,
+4 per message for the role and separators) stands in for a count the endpoint does not send, and for the
prompts of the ``--dry-run`` estimate.
"""

from __future__ import annotations

import os
import random
import re
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.generation.answer_cache import AnswerCache, cache_key
from posttrain.generation.http_client import post_with_retries, token_limit_field
from posttrain.generation.types import BackendError, per_candidate, row_seed
from posttrain.models.builtin import cache_root

# As the judges' llm:URL:MODEL: the URL's path holds no ':', the model name may (``org/model:tag``). Stricter on
# the port: a "model" that starts like one ("8000/v1", "8000") means the model was left out.
_SPEC = re.compile(r"^openai:(https?://(?:\[[0-9A-Fa-f:.]+\]|[^/\s:\[]+)(?::\d+)?(?:/[^:\s]*)?):(?!\d+(?:/|$))(.+)$")
SPEC_HELP = "openai:URL:MODEL, e.g. openai:http://127.0.0.1:8000/v1:my-model"


def parse_openai_spec(backend: str) -> tuple[str, str] | None:
    """``(base_url, model)`` of ``openai:URL:MODEL``; None for any other backend name; ``BackendError`` for an
    ``openai`` spec that does not parse."""
    if backend != "openai" and not backend.startswith("openai:"):
        return None
    m = _SPEC.match(backend)
    if not m:
        raise BackendError(f"backend '{backend}': expected {SPEC_HELP} (http:// or https://; the URL's path "
                           "holds no ':')")
    return m.group(1).rstrip("/"), m.group(2)


def default_cache_path() -> Path:
    """``$POSTTRAIN_CACHE/generate_cache.sqlite`` (default ``~/.cache/posttrain``)."""
    return cache_root() / "generate_cache.sqlite"


def approx_text_tokens(text: str) -> int:
    """Tokens of a text without its tokenizer: chars/4, rounded up."""
    return -(-len(text) // 4)


def approx_tokens(messages: Sequence[dict[str, Any]]) -> int:
    """Tokens of a chat prompt without its tokenizer: chars/4 of each content, rounded up, + 4 per message."""
    return sum(approx_text_tokens(str(m.get("content") or "")) + 4 for m in messages)


APPROX_TOKENS = "approximate: chars/4 + 4 per message, no local tokenizer for a remote model"


@dataclass
class Completion:
    """One remote candidate: what a candidate row needs (``GenOutput`` without token ids)."""

    text: str
    finish_reason: str  # "stop" | "length"
    completion_tokens: int
    prompt_tokens: int


def _completion(text: str, meta: dict[str, Any], messages: list[dict[str, Any]]) -> Completion:
    usage = meta.get("usage") or {}
    # "length" is the only truncation; anything else (stop, eos, content_filter, ...) ended the answer.
    finish = "length" if meta.get("finish_reason") == "length" else "stop"
    return Completion(text, finish, int(usage.get("completion_tokens") or approx_text_tokens(text)),
                      int(usage.get("prompt_tokens") or approx_tokens(messages)))


class _Stopped(Exception):
    """A request not sent (or a retry abandoned) because the run is stopping: another request failed for good."""


class OpenAIGenerator:
    """Samples candidates from ``{base_url}/chat/completions``.

    The API key is read from the environment variable ``api_key_env`` and sent as ``Authorization: Bearer`` only
    when it is set (local servers need none); it never goes on the command line. ``cache_path=None`` uses
    ``default_cache_path()``; ``use_cache=False`` turns caching off.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", timeout: float = 120.0,
                 max_retries: int = 5, backoff_base: float = 1.0, backoff_max: float = 60.0,
                 max_concurrency: int = 8, cache_path: str | os.PathLike | None = None, use_cache: bool = True,
                 seed: int | None = None, max_tokens_field: str = "max_tokens"):
        if max_retries < 0 or max_concurrency < 1:
            raise BackendError("openai backend: max_retries must be >= 0 and max_concurrency >= 1")
        try:
            self.max_tokens_field = token_limit_field(max_tokens_field, "openai backend")
        except ValueError as e:
            raise BackendError(str(e)) from None
        self.base_url, self.model = base_url.rstrip("/"), model
        self.url = f"{self.base_url}/chat/completions"
        self.timeout, self.max_retries, self.max_concurrency = timeout, max_retries, max_concurrency
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.cache = AnswerCache(cache_path or default_cache_path()) if use_cache else None
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()  # set once a run fails or ends early: nothing more is sent
        self.counters = {"requests": 0, "cache_hits": 0, "retries": 0}

    def _count(self, name: str) -> None:
        with self._lock:
            self.counters[name] += 1

    def complete(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> Completion:
        """One candidate: from the cache, else from the endpoint (then cached before it is used)."""
        if self._stop.is_set():
            raise _Stopped()
        key = cache_key(self.base_url, self.model, messages, params)
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            self._count("cache_hits")
            return _completion(hit[0], hit[1], messages)
        try:
            text, meta = self._request(messages, params)
        except BackendError:
            self._stop.set()  # a permanent failure: the other workers send nothing more
            raise
        if self.cache is not None:
            self.cache.put(key, text, meta)
        return _completion(text, meta, messages)

    def _request(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        payload = {"model": self.model, "messages": messages, **params}

        def before_retry() -> None:
            if self._stop.is_set():  # another request failed for good: no more retries
                raise _Stopped()

        try:
            data, attempts = post_with_retries(
                self.url, payload, self._headers, self.timeout, max_retries=self.max_retries,
                backoff_base=self.backoff_base, backoff_max=self.backoff_max, rng=self._rng, lock=self._lock,
                error=BackendError, who="openai backend", count=self._count, wait=self._stop.wait,
                before_retry=before_retry)
        except BackendError as e:
            if getattr(e, "status", None) in (401, 403):
                where = "is set" if self._headers else "is not set"
                raise BackendError(f"{e} (the API key is read from ${self.api_key_env}, which {where}; "
                                   "--api-key-env names another variable)") from None
            raise
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"openai backend {self.url}: response has no choices[0].message.content: "
                               f"{str(data)[:200]}") from None
        return text, {"model": data.get("model"), "finish_reason": choice.get("finish_reason"),
                      "usage": data.get("usage") or {}, "attempts": attempts}

    def stream(self, prompts: Sequence[list[dict[str, Any]]], keys: Sequence[str], *, n: int, temperature, top_p,
               max_new_tokens: int, seed: int) -> Iterator[tuple[int, list[Completion]]]:
        """``(prompt index, its n completions)`` for each prompt, as soon as all n are in (roughly prompt order).

        Requests are submitted prompt-major, at most ``2 * max_concurrency`` queued at once, so a long prompt file
        holds few futures and few half-done prompts. A request that fails for good stops the others from sending;
        the requests already in flight still end, every prompt they complete is yielded, and then the failure is
        raised here: no answer that came back is lost."""
        temps, top_ps = per_candidate(temperature, n, "temperature"), per_candidate(top_p, n, "top_p")
        todo = ((p, i) for p in range(len(prompts)) for i in range(n))
        queued: dict[Future, tuple[int, int]] = {}
        partial: dict[int, dict[int, Completion]] = {}
        failed: BaseException | None = None
        self._stop.clear()
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="openai-backend")
        try:
            while True:
                while failed is None and len(queued) < 2 * self.max_concurrency and (job := next(todo, None)):
                    p, i = job
                    params = {"temperature": temps[i], "top_p": top_ps[i], self.max_tokens_field: max_new_tokens,
                              "seed": row_seed(seed, keys[p], i)}
                    queued[pool.submit(self.complete, prompts[p], params)] = (p, i)
                if not queued:
                    if failed is not None:
                        raise failed
                    return
                finished, _ = wait(queued, return_when=FIRST_COMPLETED)
                for future in sorted(finished, key=lambda f: queued[f]):  # a set: put it in submission order
                    p, i = queued.pop(future)
                    error = future.exception()
                    if isinstance(error, _Stopped):
                        continue  # not sent because another request failed for good
                    if error is not None:
                        failed = failed or error  # raised once the requests in flight have ended
                        continue
                    partial.setdefault(p, {})[i] = future.result()
                    if len(partial[p]) == n:
                        got = partial.pop(p)
                        yield p, [got[j] for j in range(n)]
        finally:
            self._stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
