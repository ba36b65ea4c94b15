"""An LLM judge over any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, TGI, OpenAI, ...), stdlib HTTP.

Pairwise (``compare``): every pair is asked in both orders and a verdict that follows the position is a tie
(``prompts.combine_orders``). Pointwise (``score``): 1-10. Requests retry with exponential backoff and jitter on
timeouts, connection errors, 429 and 5xx (``Retry-After`` honoured); any other 4xx fails at once with one line
(``generation/http_client.py``, shared with the ``openai`` generation backend).
Every answer is cached on disk (``cache.AnswerCache``) before it is used, so a rerun makes no request it made
before. ``compare_many`` / ``score_many`` run ``max_concurrency`` requests at once.
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from posttrain.generation.http_client import MAX_RETRY_AFTER, backoff_delay, parse_retry_after  # noqa: F401 (re-exported)
from posttrain.generation.http_client import post_with_retries, token_limit_field
from posttrain.judges import prompts
from posttrain.judges.cache import AnswerCache, cache_key, default_cache_path
from posttrain.judges.types import Message, Score, Verdict


class JudgeError(RuntimeError):
    """A judge request failed for good; ``str()`` is one actionable line."""


def _answer_text(url: str, data: dict[str, Any]) -> str:
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise JudgeError(f"LLM judge {url}: response has no choices[0].message.content: {str(data)[:200]}") from None
    return content or ""


class LLMJudge:
    """Pairwise and pointwise judge over ``{base_url}/chat/completions``.

    The API key is read from the environment variable ``api_key_env`` and sent as ``Authorization: Bearer``;
    without it no header is sent (local servers need none). Keys live only in the environment, never in argv
    (visible to every user in ``ps``): against a ``posttrain serve`` started with ``$POSTTRAIN_API_KEY``, set
    ``api_key_env: POSTTRAIN_API_KEY``. ``stats()["unparseable"]`` counts answers with no verdict or score.
    ``cache_path=None`` uses ``default_cache_path()``; ``use_cache=False`` turns caching off.
    ``max_tokens_field: max_completion_tokens`` sends the answer's token cap under that name (OpenAI's reasoning
    models refuse ``max_tokens``).
    """

    score_range = prompts.SCORE_RANGE

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
                 rubric: str = prompts.DEFAULT_RUBRIC, temperature: float = 0.0, max_tokens: int = 512,
                 timeout: float = 60.0, max_retries: int = 5, backoff_base: float = 1.0, backoff_max: float = 60.0,
                 max_concurrency: int = 8, cache_path: str | os.PathLike | None = None, use_cache: bool = True,
                 extra_params: dict[str, Any] | None = None, name: str | None = None, seed: int | None = None,
                 max_tokens_field: str = "max_tokens"):
        if not base_url.startswith(("http://", "https://")):
            raise JudgeError(f"LLM judge base_url '{base_url}': must start with http:// or https://")
        if max_retries < 0 or max_concurrency < 1:
            raise JudgeError("LLM judge: max_retries must be >= 0 and max_concurrency >= 1")
        self.base_url, self.model, self.rubric = base_url.rstrip("/"), model, rubric
        self.url = f"{self.base_url}/chat/completions"
        self.name = name or f"llm:{model}"
        try:
            field = token_limit_field(max_tokens_field, "LLM judge")
        except ValueError as e:
            raise JudgeError(str(e)) from None
        self.params = {"temperature": temperature, field: max_tokens, **(extra_params or {})}
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff_base, self.backoff_max, self.max_concurrency = backoff_base, backoff_max, max_concurrency
        key = os.environ.get(api_key_env)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.cache = AnswerCache(cache_path or default_cache_path()) if use_cache else None
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.counters = {"requests": 0, "cache_hits": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0,
                         "unparseable": 0}

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                self.counters[k] += v

    def _request(self, messages: list[Message]) -> tuple[str, dict[str, Any]]:
        payload = {"model": self.model, "messages": messages, **self.params}
        started = time.monotonic()
        data, attempts = post_with_retries(
            self.url, payload, self._headers, self.timeout, max_retries=self.max_retries,
            backoff_base=self.backoff_base, backoff_max=self.backoff_max, rng=self._rng, lock=self._lock,
            error=JudgeError, who="LLM judge", count=lambda name: self._count(**{name: 1}))
        usage = data.get("usage") or {}
        self._count(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    completion_tokens=int(usage.get("completion_tokens") or 0))
        choice = (data.get("choices") or [{}])[0]
        meta = {"model": data.get("model"), "finish_reason": choice.get("finish_reason"), "usage": usage,
                "attempts": attempts, "seconds": round(time.monotonic() - started, 3)}
        return _answer_text(self.url, data), meta

    def complete(self, messages: list[Message]) -> str:
        """The judge's answer to one chat request: from the cache, else from the endpoint (then cached)."""
        key = cache_key(self.base_url, self.model, messages, self.params)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self._count(cache_hits=1)
                return hit[0]
        text, meta = self._request(messages)
        if self.cache is not None:
            self.cache.put(key, text, meta)
        return text

    def complete_many(self, requests: list[list[Message]]) -> list[str]:
        """Answers in order; identical requests are sent once; ``max_concurrency`` in flight at a time."""
        unique: dict[str, list[Message]] = {}
        keys = []
        for messages in requests:
            k = json.dumps(messages, sort_keys=True)
            keys.append(k)
            unique.setdefault(k, messages)
        if len(unique) <= 1 or self.max_concurrency == 1:
            answers = {k: self.complete(m) for k, m in unique.items()}
        else:
            with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(unique))) as pool:
                answers = dict(zip(unique, pool.map(self.complete, unique.values())))
        return [answers[k] for k in keys]

    def compare(self, prompt: list[Message], response_a: str, response_b: str, metadata: dict[str, Any]) -> Verdict:
        return self.compare_many([(prompt, response_a, response_b, metadata)])[0]

    def compare_many(self, items: Sequence[tuple[list[Message], str, str, dict[str, Any]]]) -> list[Verdict]:
        verdicts = prompts.both_orders(self.complete_many, [(p, a, b) for p, a, b, _ in items], self.rubric)
        self._count(unparseable=sum(v.details.get("parsed", []).count(None) for v in verdicts))
        return verdicts

    def score(self, prompt: list[Message], response: str, metadata: dict[str, Any]) -> Score:
        return self.score_many([(prompt, response, metadata)])[0]

    def score_many(self, items: Sequence[tuple[list[Message], str, dict[str, Any]]]) -> list[Score]:
        scores = prompts.pointwise(self.complete_many, [(p, r) for p, r, _ in items], self.rubric)
        self._count(unparseable=sum(math.isnan(s.value) for s in scores))
        return scores

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counters)
