"""N candidates per prompt, written as the candidate JSONL of ``docs/CANDIDATES.md``; resumable.

Order of work: read and render every prompt (a bad row stops here with one line per error, nothing written),
read what the output already holds, load the model, then generate. Prompts are sorted by length (longest
first) to cut padding, so the file's order is by prompt length, not input order; a prompt's N rows are
always written together, in candidate order.

Resume. Each batch's rows are appended in one write, flushed and fsynced, so a killed run loses at most the
batch in flight. On start, a prompt counts as done when all N of its candidates are in the file; the rows of
prompts that are not done (the torn tail of a killed write, a truncated last line) are dropped, the file is
rewritten atomically without them, and those prompts are generated again. A candidate's seed depends only on
(run seed, prompt id, candidate index), so a regenerated candidate is the one the killed run would have
written (see ``hf.py`` for the float-rounding caveat). Rows made with other settings (model, sampling, a
larger N, a weights dtype other than auto: it is part of each row's ``sampling``) are an error, never silently
mixed or dropped.

A remote backend (``openai:URL:MODEL``, ``openai_backend.py``) has no local tokenizer: prompts are checked but not
rendered (the endpoint applies its chat template to ``PromptJob.prompt``), they keep their input order, and each
prompt's N rows are written (one write, fsynced) as soon as its N answers are in.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from posttrain.data.layouts import load_examples
from posttrain.data.render import render_prompt
from posttrain.data.runfolder import atomic_write_text
from posttrain.data.schema import DataError, DataErrors, Message
from posttrain.generation.backends import check_backend, check_dtype, load_generator, model_label
from posttrain.generation.openai_backend import OpenAIGenerator
from posttrain.generation.types import BackendError, Generator, check_sampling, per_candidate
from posttrain.models.policy import model_tokenizer


@dataclass
class PromptJob:
    prompt_id: str
    prompt: list[Message]
    prompt_ids: list[int]  # the prompt rendered with the generation prompt
    metadata: dict[str, Any]


def prompt_id(messages: list[Message]) -> str:
    """Default prompt id (CANDIDATES.md): sha256 of the JSON of the prompt messages (keys sorted, UTF-8,
    compact separators), first 16 hex chars."""
    text = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def load_prompts(prompts_path: str | os.PathLike, tokenizer, system_prompt: str | None = None) -> list[PromptJob]:
    """Every prompt row, rendered (``tokenizer=None``, a remote model: not rendered, ``prompt_ids`` empty). Raises
    ``DataErrors`` naming every bad row (layout, ``id``, duplicates). ``system_prompt``: a system message put first
    in every prompt that has none of its own (it is part of the prompt written to each candidate row, and of the
    prompt id of a row without an ``id``)."""
    examples = load_examples(str(prompts_path), "prompt")
    if system_prompt:
        system = {"role": "system", "content": system_prompt}
        examples = [ex if ex.prompt[0]["role"] == "system" else replace(ex, prompt=[system, *ex.prompt])
                    for ex in examples]
    jobs, errors, seen = [], [], {}
    for ex in examples:
        raw = ex.metadata.get("id")
        if raw is None:
            pid = prompt_id(ex.prompt)
        elif isinstance(raw, (str, int)) and not isinstance(raw, bool) and str(raw).strip():
            pid = str(raw)
        else:
            errors.append(DataError(ex.source, ex.row, "id", f"must be a non-empty string, got {raw!r}"))
            continue
        if pid in seen:
            what = "id" if raw is not None else "prompt"
            errors.append(DataError(ex.source, ex.row, what, f"duplicate of row {seen[pid]} (prompt_id {pid}); "
                                    "remove it or give each row its own 'id'"))
            continue
        seen[pid] = ex.row
        try:
            ids = render_prompt(ex, tokenizer) if tokenizer is not None else []
        except DataError as e:
            errors.append(e)
            continue
        metadata = {k: v for k, v in ex.metadata.items() if k != "id"}
        jobs.append(PromptJob(pid, ex.prompt, ids, metadata))
    if errors:
        raise DataErrors(errors)
    return jobs


def sampling_of(index: int, temperatures: list[float], top_ps: list[float], max_new_tokens: int, seed: int) -> dict:
    return {"temperature": temperatures[index], "top_p": top_ps[index], "max_new_tokens": max_new_tokens,
            "seed": seed}


@dataclass
class Existing:
    lines: list[str]  # kept lines (complete prompts, and rows of prompts not in this prompt file), newline-ended
    done: set[str]  # prompt ids with all N candidates
    dropped: int  # rows or torn lines dropped
    rewrite: bool  # the file must be rewritten before appending


def read_existing(path: Path, *, n: int, model: str, sampling: list[dict]) -> Existing:
    """What ``path`` already holds; raises ``DataError`` if it holds candidates made with other settings."""
    if not path.exists():
        return Existing([], set(), 0, False)
    raw = path.read_bytes().decode("utf-8", errors="replace")
    rows: dict[str, dict[int, str]] = {}
    order: list[str] = []
    dropped = 0
    for line_number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1  # a line torn by a kill
            continue
        pid, index = (row.get("prompt_id"), row.get("candidate_index")) if isinstance(row, dict) else (None, None)
        if not isinstance(pid, str) or not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise DataError(str(path), line_number, "prompt_id", "not a candidate row (needs 'prompt_id' and "
                            "'candidate_index'); is --output pointing at the right file?")
        if index >= n:
            raise DataError(str(path), line_number, "candidate_index", f"{index}, but this run makes n={n} "
                            "candidates; it was generated with a larger n: use another --output or the same n")
        if row.get("model") != model or row.get("sampling") != sampling[index]:
            raise DataError(str(path), line_number, "sampling", f"made with other settings (model "
                            f"{row.get('model')!r}, sampling {row.get('sampling')}) than this run (model {model!r}, "
                            f"sampling {sampling[index]}); use another --output or delete the file")
        if pid not in rows:
            rows[pid], order = {}, order + [pid]
        if index in rows[pid]:
            dropped += 1  # a duplicate: keep the first
            continue
        rows[pid][index] = line + "\n"
    done = {pid for pid in order if len(rows[pid]) == n}
    lines = [rows[pid][i] for pid in order if pid in done for i in range(n)]
    incomplete = sum(len(rows[pid]) for pid in order if pid not in done)
    dropped += incomplete
    return Existing(lines, done, dropped, rewrite=bool(dropped) or "".join(lines) != raw)


def candidate_row(job: PromptJob, index: int, out, sampling: dict, model: str) -> dict:
    # A remote completion carries the endpoint's own prompt count; a local one is the rendered prompt.
    prompt_tokens = getattr(out, "prompt_tokens", len(job.prompt_ids))
    return {"prompt_id": job.prompt_id, "prompt": job.prompt, "candidate_index": index, "text": out.text,
            "prompt_tokens": prompt_tokens, "completion_tokens": out.completion_tokens,
            "finish_reason": out.finish_reason, "sampling": sampling, "model": model, "metadata": job.metadata}


def _append(fh, rows: list[dict]) -> None:
    # One write per batch, then fsync: after a kill the file ends with whole batches plus at most one torn one.
    fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    fh.flush()
    os.fsync(fh.fileno())


def generate_candidates(prompts_path: str | os.PathLike, output_path: str | os.PathLike, model_name: str | None, *,
                        n: int, temperatures: list[float] | float, top_p: float | list[float] = 1.0,
                        max_new_tokens: int = 256, batch_size: int = 32, seed: int = 0, backend: str = "hf",
                        adapter: str | None = None, progress: bool = True,
                        generator: Generator | OpenAIGenerator | None = None,
                        tokenizer=None, cache_dir: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                        max_concurrency: int = 8, max_retries: int = 5,
                        max_tokens_field: str = "max_tokens", system_prompt: str | None = None,
                        dtype: str = "auto") -> dict[str, Any]:
    """Write ``n`` candidates per prompt to ``output_path`` (JSONL), resuming whatever is already there.

    Candidate i samples at ``temperatures[i % len(temperatures)]`` and ``top_p[i % len(top_p)]`` (a single
    value applies to all). ``batch_size``: sequences per forward pass; ``max(1, batch_size // n)`` prompts are
    generated and flushed at a time. ``generator``/``tokenizer``: an already-loaded backend (tests, eval).
    ``backend="openai:URL:MODEL"``: sampled from that endpoint (``model_name``, when given, is only the rows'
    ``model`` label; default MODEL), ``max_concurrency`` requests at a time, the key from ``$api_key_env``;
    ``generator`` may then be an ``OpenAIGenerator``. ``system_prompt``: see ``load_prompts`` (e.g. a length
    instruction that makes fewer samples run into ``max_new_tokens``; ``posttrain data augment --drop-system``
    leaves it out of the training rows made from them). ``dtype``: the hf backend's weights dtype
    (``backends.GENERATION_DTYPES``); other than auto it is recorded in each row's ``sampling``.
    Returns a summary: prompts, prompts_generated, prompts_skipped (already done), candidates_written,
    completion_tokens, wall_time_s, candidates_per_s, tokens_per_s, dropped_rows, output (and, remote: requests,
    cache_hits, retries).
    """
    t0 = time.perf_counter()
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    temps, top_ps = per_candidate(temperatures, n, "temperature"), per_candidate(top_p, n, "top_p")
    for t, p in zip(temps, top_ps):
        check_sampling(t, p, max_new_tokens)
    output = Path(output_path)
    remote = check_backend(backend)  # (base_url, model) for openai:URL:MODEL
    check_dtype(dtype, backend)
    if remote is not None and adapter:
        raise BackendError(f"--adapter: a remote model ({backend}) takes no adapter")
    if remote is None and not model_name:
        raise BackendError(f"--model: required with the {backend} backend")
    model = (model_name or remote[1]) if remote is not None else model_label(model_name, adapter)
    sampling = [sampling_of(i, temps, top_ps, max_new_tokens, seed) | ({"dtype": dtype} if dtype != "auto" else {})
                for i in range(n)]

    if tokenizer is None and remote is None:
        tokenizer = generator.tokenizer if generator is not None else model_tokenizer(model_name, cache_dir)
    jobs = load_prompts(prompts_path, tokenizer, system_prompt)
    existing = read_existing(output, n=n, model=model, sampling=sampling)
    pending = sorted((j for j in jobs if j.prompt_id not in existing.done), key=lambda j: -len(j.prompt_ids))
    if generator is None and pending:
        if remote is not None:
            generator = OpenAIGenerator(*remote, api_key_env=api_key_env, max_concurrency=max_concurrency,
                                        max_retries=max_retries, max_tokens_field=max_tokens_field)
        else:
            generator, _ = load_generator(model_name, adapter=adapter, backend=backend, batch_size=batch_size,
                                          seed=seed, cache_dir=cache_dir, dtype=dtype)
    if existing.rewrite:
        atomic_write_text(output, "".join(existing.lines))

    skipped = len(jobs) - len(pending)
    written = tokens = 0
    t_gen = time.perf_counter()
    settings = dict(n=n, temperature=temps, top_p=top_ps, max_new_tokens=max_new_tokens, seed=seed)
    if remote is not None:
        batches = _remote_batches(generator, pending, settings)
    else:
        batches = _local_batches(generator, pending, max(1, batch_size // n), settings)
    bar = None
    if progress and pending:
        bar = tqdm(total=len(jobs), initial=skipped, unit="prompt", desc="generate", dynamic_ncols=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(output, "a", encoding="utf-8") as fh:
            for chunk, outs in batches:
                rows = [candidate_row(job, i, out, sampling[i], model)
                        for job, cands in zip(chunk, outs) for i, out in enumerate(cands)]
                _append(fh, rows)
                written += len(rows)
                tokens += sum(r["completion_tokens"] for r in rows)
                if bar is not None:
                    elapsed = max(time.perf_counter() - t_gen, 1e-9)
                    bar.set_postfix_str(f"{written / elapsed:.1f} cand/s, {tokens / elapsed:.0f} tok/s")
                    bar.update(len(chunk))
    finally:
        batches.close()  # a remote run stops sending here, also on an error or Ctrl-C
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    gen_time = max(time.perf_counter() - t_gen, 1e-9)
    summary = {"prompts": len(jobs), "prompts_generated": len(pending), "prompts_skipped": skipped,
               "candidates_written": written, "completion_tokens": tokens, "dropped_rows": existing.dropped,
               "wall_time_s": round(wall, 3), "candidates_per_s": round(written / gen_time, 3) if written else 0.0,
               "tokens_per_s": round(tokens / gen_time, 3) if written else 0.0, "output": str(output)}
    if remote is not None:
        counters = generator.counters if generator is not None else {}
        summary.update({k: counters.get(k, 0) for k in ("requests", "cache_hits", "retries")})
    return summary


def _local_batches(generator: Generator, pending: list[PromptJob], per_flush: int, settings: dict):
    """(prompts, their N outputs each), ``per_flush`` prompts at a time, from a local backend's prompt ids."""
    for start in range(0, len(pending), per_flush):
        chunk = pending[start: start + per_flush]
        yield chunk, generator.generate([j.prompt_ids for j in chunk], keys=[j.prompt_id for j in chunk], **settings)


def _remote_batches(generator: OpenAIGenerator, pending: list[PromptJob], settings: dict):
    """([prompt], [its N completions]) per prompt as its last answer arrives, from a remote backend's messages."""
    if not pending:
        return
    stream = generator.stream([j.prompt for j in pending], [j.prompt_id for j in pending], **settings)
    try:
        for p, outs in stream:
            yield [pending[p]], [outs]
    finally:
        stream.close()  # stops the requests not yet sent and waits for those in flight


def measured_mean_new_tokens(candidates_path: str | os.PathLike) -> float | None:
    """Mean ``completion_tokens`` over a candidate file's rows (torn lines ignored); None without rows."""
    path = Path(candidates_path)
    if not path.exists():
        return None
    counts = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            counts.append(int(json.loads(line)["completion_tokens"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return sum(counts) / len(counts) if counts else None


__all__ = ["PromptJob", "generate_candidates", "load_prompts", "measured_mean_new_tokens", "prompt_id", "read_existing"]
