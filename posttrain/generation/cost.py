"""What a generate + judge run will cost, before anything runs (``posttrain generate --dry-run``).

Counting (P prompts, N candidates each, T mean new tokens per candidate, prompt lengths L_p from the chat
template, so exactly what the model will see):

- generation input tokens: sum of L_p, once per prompt. An API with ``n=`` (and vLLM's prefix cache) processes
  a prompt once for its N candidates; the HF backend recomputes it per candidate, which costs time, not money.
  The ``openai`` backend sends one request per candidate (each with its own seed), so an endpoint bills the
  prompt N times (``prompt_per_candidate=True``: N * sum of L_p; a provider's prompt caching may discount it).
- a remote model has no local tokenizer (``tokenizer=None``): L_p is approximated as chars/4 of the message
  contents, rounded up, + 4 tokens per message (``openai_backend.approx_tokens``), and the output says so.
- generation output tokens: P * N * T.
- pairs per prompt: ``all-pairs`` compares every pair, N(N-1)/2; ``best-vs-worst`` compares one pair (the
  candidates a scoring judge ranked best and worst).
- judge calls: P * pairs * ``judge_calls_per_pair`` (default 2: a pairwise judge sees both orders, A-B and B-A,
  to cancel position bias).
- judge input tokens per call: ``judge_prompt_tokens`` (the judge's own instructions) + mean L + 2T (the prompt
  and two responses); judge output tokens per call: ``judge_output_tokens``.
- money: ``prices = {"input": USD per 1M input tokens, "output": USD per 1M output tokens}``, applied to both
  parts; the generation part is shown separately because local generation is paid in GPU time instead.

T is, in order: ``mean_new_tokens`` if given, the mean ``completion_tokens`` of an existing candidate file,
else ``max_new_tokens / 2``.
"""

from __future__ import annotations

import os
from typing import Any

from posttrain.generation.candidates import load_prompts, measured_mean_new_tokens
from posttrain.generation.openai_backend import APPROX_TOKENS, approx_tokens

PAIRINGS = ("all-pairs", "best-vs-worst")


def pairs_per_prompt(n: int, pairing: str) -> int:
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing: unknown '{pairing}' (expected one of: {', '.join(PAIRINGS)})")
    if n < 2:
        return 0
    return n * (n - 1) // 2 if pairing == "all-pairs" else 1


def cost_model(prompts_path: str | os.PathLike, tokenizer, *, n: int, max_new_tokens: int = 256,
               mean_new_tokens: float | None = None, candidates_path: str | os.PathLike | None = None,
               pairing: str = "all-pairs", judge_calls_per_pair: int = 2, judge_prompt_tokens: int = 300,
               judge_output_tokens: int = 16, prices: dict[str, float] | None = None,
               prompt_per_candidate: bool = False, system_prompt: str | None = None) -> dict[str, Any]:
    """Token counts (and money, given ``prices``) of generating and judging ``n`` candidates per prompt.
    Reads and renders every prompt, so bad rows raise ``DataErrors`` here, as in the real run.
    ``tokenizer=None`` (a remote model): prompt tokens approximated; ``prompt_per_candidate``: one request per
    candidate, so the prompt is billed ``n`` times. ``system_prompt``: as ``generate --system-prompt`` adds it."""
    jobs = load_prompts(prompts_path, tokenizer, system_prompt)
    P = len(jobs)
    prompt_tokens = sum(len(j.prompt_ids) if tokenizer is not None else approx_tokens(j.prompt) for j in jobs)
    mean_prompt = prompt_tokens / P
    source = "given"
    if mean_new_tokens is None and candidates_path is not None:
        mean_new_tokens = measured_mean_new_tokens(candidates_path)
        source = "measured"
    if mean_new_tokens is None:
        mean_new_tokens, source = max_new_tokens / 2, "max_new_tokens/2"
    T = float(mean_new_tokens)
    pairs = pairs_per_prompt(n, pairing)
    calls = P * pairs * judge_calls_per_pair
    per_call_input = judge_prompt_tokens + mean_prompt + 2 * T
    out: dict[str, Any] = {
        "prompts": P, "candidates_per_prompt": n, "candidates": P * n,
        "mean_prompt_tokens": mean_prompt, "mean_new_tokens": T, "mean_new_tokens_source": source,
        "prompt_tokens": prompt_tokens,
        "prompt_tokens_counted": "chat template" if tokenizer is not None else APPROX_TOKENS,
        "prompt_per_candidate": prompt_per_candidate,
        "generation_input_tokens": prompt_tokens * (n if prompt_per_candidate else 1),
        "generation_output_tokens": P * n * T,
        "pairing": pairing, "pairs_per_prompt": pairs, "judge_calls_per_pair": judge_calls_per_pair,
        "judge_calls": calls, "judge_input_tokens": calls * per_call_input,
        "judge_output_tokens": calls * judge_output_tokens,
    }
    if prices:
        unknown = set(prices) - {"input", "output"}
        if unknown:
            raise ValueError(f"prices: unknown keys {sorted(unknown)} (expected 'input' and 'output', USD per 1M)")
        p_in, p_out = float(prices.get("input", 0.0)), float(prices.get("output", 0.0))
        gen = (out["generation_input_tokens"] * p_in + out["generation_output_tokens"] * p_out) / 1e6
        judge = (out["judge_input_tokens"] * p_in + out["judge_output_tokens"] * p_out) / 1e6
        out.update(price_input_per_1m=p_in, price_output_per_1m=p_out, generation_usd=gen, judge_usd=judge,
                   total_usd=gen + judge)
    return out


def format_cost(c: dict[str, Any]) -> str:
    """The cost estimate as a few aligned lines for a terminal."""
    lines = [
        f"prompts              {c['prompts']:,} x {c['candidates_per_prompt']} candidates = {c['candidates']:,}",
        f"prompt tokens        {c['mean_prompt_tokens']:,.1f} mean, {c['prompt_tokens']:,} total"
        + ("" if c["prompt_tokens_counted"] == "chat template" else f" ({c['prompt_tokens_counted']})"),
        f"new tokens           {c['mean_new_tokens']:,.1f} mean per candidate ({c['mean_new_tokens_source']}), "
        f"{c['generation_output_tokens']:,.0f} total",
        f"judge                {c['pairs_per_prompt']} pairs/prompt ({c['pairing']}) x {c['judge_calls_per_pair']} "
        f"calls/pair = {c['judge_calls']:,} calls",
        f"judge tokens         {c['judge_input_tokens']:,.0f} in, {c['judge_output_tokens']:,.0f} out",
    ]
    if c["prompt_per_candidate"]:
        lines.insert(2, f"generation input     {c['generation_input_tokens']:,} tokens (one request per candidate: "
                        f"each prompt is sent {c['candidates_per_prompt']} times)")
    if "total_usd" in c:
        lines.append(f"cost (USD)           generation ${c['generation_usd']:,.4f} + judge ${c['judge_usd']:,.4f} "
                     f"= ${c['total_usd']:,.4f}  (at ${c['price_input_per_1m']:g} in / "
                     f"${c['price_output_per_1m']:g} out per 1M tokens)")
    else:
        lines.append("cost (USD)           give --price-input / --price-output (USD per 1M tokens) for an estimate")
    return "\n".join(lines)
