"""What a generation backend takes and returns, and the shape every backend has (a ``Protocol``).

A backend samples *rows*: one prompt, one candidate, its own sampling settings and seed. ``generate`` (N
candidates for each of P prompts) is built on rows, and so is the server, which batches unrelated requests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

FinishReason = Literal["stop", "length"]


@dataclass
class GenOutput:
    """One sampled completion. ``token_ids`` are the generated tokens, the EOS included when the model emitted it
    (``finish_reason="stop"``); ``completion_tokens == len(token_ids)``. ``text`` is decoded with
    ``skip_special_tokens=True`` and cut before the first stop string, if any."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class RowSpec:
    """One sequence to sample. ``temperature == 0`` is greedy (``top_p`` and ``seed`` are then unused)."""

    prompt_ids: list[int]
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    stop: list[str] = field(default_factory=list)


# on_token(row index into the list passed to generate_rows, token id): called for every generated token of a
# row that is still running (the EOS included), as soon as the backend has it. Used for streaming.
TokenCallback = Callable[[int, int], None]


class Generator(Protocol):
    """A generation backend (``HFGenerator``, ``VLLMGenerator``)."""

    tokenizer: object

    def generate_rows(self, rows: Sequence[RowSpec], on_token: TokenCallback | None = None) -> list[GenOutput]: ...

    def generate(self, prompt_ids: list[list[int]], *, n: int, temperature, top_p, max_new_tokens: int, seed: int,
                 keys: Sequence[str] | None = None) -> list[list[GenOutput]]: ...


def row_seed(seed: int, key: str, candidate_index: int) -> int:
    """The seed of one (prompt, candidate): a function of the run seed, the prompt's key and the candidate index
    only, so a candidate does not change when the prompts around it (batch, order, resume) do."""
    digest = hashlib.sha256(f"{seed}:{key}:{candidate_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def prompt_key(prompt_ids: Sequence[int]) -> str:
    """Default seeding key of a prompt: a hash of its token ids."""
    return hashlib.sha256(",".join(map(str, prompt_ids)).encode()).hexdigest()[:16]


def per_candidate(value, n: int, name: str) -> list[float]:
    """A float, or a list cycled round-robin over candidates: candidate i gets ``value[i % len(value)]``."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ValueError(f"{name}: give at least one value")
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ValueError(f"{name}: expected a number, got {v!r}")
    return [float(values[i % len(values)]) for i in range(n)]


def check_sampling(temperature: float, top_p: float, max_new_tokens: int) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")


def candidate_rows(prompt_ids: list[list[int]], *, n: int, temperature, top_p, max_new_tokens: int, seed: int,
                   keys: Sequence[str] | None = None) -> list[RowSpec]:
    """P*N rows, prompt-major: row ``p * n + i`` is candidate i of prompt p."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    temps, top_ps = per_candidate(temperature, n, "temperature"), per_candidate(top_p, n, "top_p")
    if keys is not None and len(keys) != len(prompt_ids):
        raise ValueError(f"{len(keys)} keys for {len(prompt_ids)} prompts")
    rows = []
    for p, ids in enumerate(prompt_ids):
        key = keys[p] if keys is not None else prompt_key(ids)
        for i in range(n):
            check_sampling(temps[i], top_ps[i], max_new_tokens)
            rows.append(RowSpec(list(ids), temps[i], top_ps[i], max_new_tokens, row_seed(seed, key, i)))
    return rows


def group(outputs: list[GenOutput], n: int) -> list[list[GenOutput]]:
    return [outputs[i: i + n] for i in range(0, len(outputs), n)]


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first occurrence of any stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class BackendError(RuntimeError):
    """A generation backend cannot be used here; ``str()`` is one actionable line."""
