"""One POST to an OpenAI-compatible endpoint over stdlib HTTP, its retries, and the wait before a retry.

``post_json`` sorts failures into transient ones (``Retryable``: timeouts, connection errors, 429 and 5xx, with the
server's ``Retry-After``) and permanent ones (any other 4xx, a body that is not JSON: the caller's error class, one
line); ``post_with_retries`` is the one retry loop around it (backoff with jitter, the server's ``Retry-After``, a
give-up line). Shared by the LLM judge (``judges/llm.py``) and the ``openai`` generation backend
(``openai_backend.py``); it lives in ``generation``, the lower of the two layers, so that neither imports the other.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import random
import time
import urllib.error
import urllib.request
from typing import Any

MAX_RETRY_AFTER = 600.0  # a server asking for longer than this is treated as down
# The request field that caps the answer's tokens: ``max_tokens`` is what most OpenAI-compatible servers read
# (vLLM, posttrain serve, TGI); OpenAI's reasoning models (o1, o3, ...) refuse it and take ``max_completion_tokens``.
TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")


def token_limit_field(name: str, who: str) -> str:
    """``name`` when it is one of ``TOKEN_LIMIT_FIELDS``, else a ``ValueError`` naming ``who`` and the choices."""
    if name not in TOKEN_LIMIT_FIELDS:
        raise ValueError(f"{who}: max_tokens_field must be {' or '.join(TOKEN_LIMIT_FIELDS)}, got {name!r}")
    return name


class Retryable(Exception):
    """A transient failure: try again after ``backoff_delay`` (``retry_after``: the server's own wait, if sent)."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): the server's ``Retry-After`` when it sent one,
    else exponential (base * 2**attempt, at most cap) with "equal jitter" (half fixed, half uniform random), so
    that many clients that failed together do not retry together."""
    if retry_after is not None:
        return retry_after
    step = min(cap, base * (2 ** attempt))
    return step / 2 + (rng or random).uniform(0, step / 2)


def post_json(url: str, payload: dict[str, Any], headers: dict[str, str], timeout: float, *,
              error: type[Exception] = RuntimeError, who: str = "endpoint") -> dict[str, Any]:
    """One POST; raises ``Retryable`` for transient failures and ``error("{who} {url}: ...")`` for permanent ones
    (with ``.status``, the HTTP status, when there was one)."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace").strip().replace("\n", " ")[:300]
        if e.code == 429 or e.code >= 500:
            raise Retryable(f"HTTP {e.code}", parse_retry_after(e.headers.get("Retry-After"))) from None
        failure = error(f"{who} {url}: HTTP {e.code} {e.reason}: {detail or '(empty body)'}")
        failure.status = e.code
        raise failure from None
    except urllib.error.URLError as e:
        raise Retryable(f"connection error: {e.reason}") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as e:
        raise Retryable(f"{type(e).__name__}: {e}") from None
    try:
        return json.loads(body)
    except ValueError:
        raise error(f"{who} {url}: response is not JSON: {body[:200]!r}") from None


def post_with_retries(url: str, payload: dict[str, Any], headers: dict[str, str], timeout: float, *,
                      max_retries: int, backoff_base: float, backoff_max: float, rng: random.Random, lock,
                      error: type[Exception], who: str, count=lambda name: None, wait=time.sleep,
                      before_retry=lambda: None) -> tuple[dict[str, Any], int]:
    """``post_json`` retried on transient failures, waiting ``backoff_delay`` between attempts: (the response,
    the number of attempts). ``count("requests" | "retries")`` is told of each; ``before_retry()`` may raise to
    abandon a retry (a run that is stopping); ``wait(seconds)`` sleeps (an event's ``wait`` wakes up early). After
    ``max_retries`` retries the last transient failure becomes ``error("{who} {url}: gave up ...")``; permanent
    failures are ``post_json``'s."""
    for attempt in range(max_retries + 1):
        count("requests")
        try:
            return post_json(url, payload, headers, timeout, error=error, who=who), attempt + 1
        except Retryable as e:
            before_retry()
            if attempt == max_retries:
                raise error(f"{who} {url}: gave up after {max_retries} retries (last error: {e})") from None
            count("retries")
            with lock:  # one random generator shared by the worker threads
                delay = backoff_delay(attempt, backoff_base, backoff_max, e.retry_after, rng)
            wait(delay)
    raise AssertionError("unreachable")
