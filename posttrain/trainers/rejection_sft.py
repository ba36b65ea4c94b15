"""Rejection-sampling SFT (best-of-N distillation; DeepSeek-AI 2025, R1 sec. 2.3.3; Touvron et al. 2023, Llama 2
sec. 3.2.3): sample N candidates per prompt with the generation backends (HF, or vLLM when installed), score them
with judges (verifiers, reward model, LLM, local model; several are combined as in the judge stage), keep the best
candidate of each prompt (if it reaches ``rejection.min_score``): ``select_winners``. Then the SFT trainer on those
winners (``trainers/sft.py::train_sft_on``), in the same run folder: the layouts (``data.prefix_sharing``), loop and
saving of ``posttrain sft``.

Outputs besides the run folder: ``candidates.jsonl`` (every candidate with its score), ``winners.jsonl`` (SFT
layout: ``messages`` + score), ``model/``.

Under several processes (torchrun / accelerate launch) each samples and scores its shard of the prompts
(``rank::world``; samples are seeded per prompt, so the candidates are those of one process), the shards are
gathered in prompt order on every process, the main process writes the files, and SFT runs as under ``posttrain sft``.
"""

from __future__ import annotations

import gc
import math

import torch.distributed as dist

from posttrain.config import ConfigError
from posttrain.data.render import render_dataset
from posttrain.data.schema import DataErrors, SFTExample
from posttrain.data.writers import atomic_write_jsonl
from posttrain.generation.backends import load_generator
from posttrain.generation.prompts import load_prompt_items, sample
from posttrain.judges.ensemble import ScoringEnsemble
from posttrain.judges.run import JudgeConfigError, build_member
from posttrain.models.policy import model_tokenizer
from posttrain.trainers.sft import train_sft_on
from posttrain.training.run import TrainingData, TrainingRun
from posttrain.verifiers.constraints import check_constraints
from posttrain.verifiers.repair import constraints_of, repair_reply


def build_scorer(judge_specs: list[dict]):
    """(score_many function, name) from judge config dicts, as the judge stage reads them."""
    try:
        members = [build_member(spec, i) for i, spec in enumerate(judge_specs)]
    except JudgeConfigError as e:
        raise ConfigError(f"rejection.{e}") from None
    if not members:
        raise ConfigError("rejection.judges: give at least one judge")
    judge = members[0].judge if len(members) == 1 else ScoringEnsemble(members)

    def score_many(items):
        if hasattr(judge, "score_many"):
            return judge.score_many(items)
        return [judge.score(*it) for it in items]

    return score_many, judge.name


def pick_winners(scores: list[list[float]], min_score: float | None) -> list[int | None]:
    """Index of the best candidate of each prompt (the first on ties; NaN scores never win), or None when no
    candidate reaches ``min_score``."""
    out = []
    for row in scores:
        best, best_i = -math.inf, None
        for i, s in enumerate(row):
            if not math.isnan(s) and s > best:
                best, best_i = s, i
        if best_i is not None and min_score is not None and best < min_score:
            best_i = None
        out.append(best_i)
    return out


def train_rejection_sft(cfg) -> dict:
    """Select the winners (``select_winners``: sampled, judged, written to the run folder), then the SFT trainer on
    them (``trainers/sft.py::train_sft_on``: same layouts, loop and saving as ``posttrain sft``)."""
    run = TrainingRun(cfg, "rejection_sft")
    tokenizer = model_tokenizer(cfg.model.name, cfg.model.cache_dir, cfg.model.trust_remote_code)
    items, stats = load_prompt_items(cfg.data.train, tokenizer, split=cfg.data.split,
                                     max_prompt_length=cfg.data.max_prompt_length, need_verifiable=False)
    score_many, judge_name = build_scorer(cfg.rejection.judges)
    run.open()
    with run.guard():  # sampling and judging happen inside the run folder: a failure there marks it failed
        data = select_winners(cfg, run, items, tokenizer, score_many, judge_name)
    data.stats = {**stats, **data.stats}
    return train_sft_on(run, data, {"candidates": "candidates.jsonl", "winners": "winners.jsonl"})


def select_winners(cfg, run: TrainingRun, items: list, tokenizer, score_many, judge_name: str) -> TrainingData:
    """Sample ``rejection.n`` candidates per prompt, score them, keep each prompt's best (``pick_winners``; with
    ``rejection.repair`` a repaired candidate competes too); the main process writes ``candidates.jsonl`` and
    ``winners.jsonl`` into the run folder. Returns the winners rendered for SFT, with the selection counts as
    stats. Under several processes each samples and scores its shard ``rank::world``; every process gets all."""
    r = cfg.rejection
    accelerator = run.accelerator
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = items[rank::world]
    generator, _ = load_generator(cfg.model.name, adapter=cfg.model.adapter, backend=r.backend,
                                  batch_size=cfg.rollout.batch_size, seed=r.seed, cache_dir=cfg.model.cache_dir,
                                  dtype=cfg.model.dtype)
    my_outs = sample(generator, mine, n=r.n, rollout_cfg=cfg.rollout, seed=r.seed) if mine else []
    del generator
    gc.collect()
    judged = score_many([(it.example.prompt, my_outs[p * r.n + i].text, it.example.metadata)
                         for p, it in enumerate(mine) for i in range(r.n)])
    outs, flat = gather_prompt_major(my_outs, [j.value for j in judged], len(items), r.n, world)
    values = [flat[p * r.n: (p + 1) * r.n] for p in range(len(items))]
    repaired = repair_winners(items, outs, values, r.n, score_many) if r.repair else {}
    for p, (_, value) in repaired.items():
        values[p] = values[p] + [value]  # the repair is candidate n of its prompt for picking the winner
    winners = pick_winners(values, r.min_score)
    candidates, winner_rows, examples = [], [], []
    for p, it in enumerate(items):
        for i in range(r.n):
            o = outs[p * r.n + i]
            candidates.append({"prompt_id": it.key, "candidate_index": i, "prompt": it.example.prompt,
                               "response": o.text, "score": values[p][i], "winner": winners[p] == i,
                               "completion_tokens": len(o.token_ids), "finish_reason": o.finish_reason})
        w = winners[p]
        text = repaired[p][0] if w == r.n else outs[p * r.n + w].text if w is not None else ""
        if w is None or not text.strip():
            continue
        messages = it.example.prompt + [{"role": "assistant", "content": text}]
        winner_rows.append({"messages": messages, "score": values[p][w], "prompt_id": it.key,
                            **({"repaired": True} if w == r.n else {})})
        examples.append(SFTExample(messages, str(run.path / "winners.jsonl"), len(winner_rows)))
    if run.is_main:
        atomic_write_jsonl(run.path / "candidates.jsonl", candidates)
        atomic_write_jsonl(run.path / "winners.jsonl", winner_rows)
    finite = [v for row in values for v in row[: r.n] if not math.isnan(v)]  # sampled candidates, not repairs
    stats = {"rejection/judge": judge_name, "rejection/candidates": len(candidates),
             "rejection/winners": len(winner_rows),
             **({"rejection/repaired_winners": sum(bool(w.get("repaired")) for w in winner_rows)} if r.repair else {}),
             "rejection/mean_score": sum(finite) / len(finite) if finite else math.nan,
             "rejection/winner_mean_score": (sum(w["score"] for w in winner_rows) / len(winner_rows)
                                             if winner_rows else math.nan)}
    if not examples:
        raise ConfigError(f"rejection-sft: no winners among {len(candidates)} candidates (rejection.min_score="
                          f"{r.min_score}); lower it or sample more (rejection.n)")
    # A sampled text can re-tokenise differently after the chat template (BPE merging across the generation
    # prompt): such winners cannot be trained on exactly, so they are dropped and counted, not fatal.
    train, unrenderable = [], 0
    for ex in examples:
        try:
            train += render_dataset([ex], tokenizer, max_length=cfg.max_length, truncation="drop")[0]
        except DataErrors:
            unrenderable += 1
    stats.update({"sft/kept": len(train), "sft/dropped_too_long": len(examples) - len(train) - unrenderable,
                  "sft/dropped_unrenderable": unrenderable})
    if len(train) < cfg.optim.batch_size:
        raise ConfigError(f"rejection-sft: {len(train)} winners, fewer than optim.batch_size="
                          f"{cfg.optim.batch_size}; lower the batch size or add prompts")
    return TrainingData(tokenizer, train, [], stats)


def repair_winners(items: list, outs: list, values: list[list[float]], n: int, score_many
                   ) -> dict[int, tuple[str, float]]:
    """prompt index -> (repaired text, its score) for prompts whose best candidate fails its instruction
    constraints: candidates are tried best score first (then lowest index) and the first that
    ``verifiers/repair.py`` can fix is repaired and scored by the same judges. Prompts without constraints, or
    whose best candidate already obeys them, get nothing."""
    wanted: dict[int, str] = {}
    for p, it in enumerate(items):
        constraints = constraints_of(it.example.metadata)
        order = sorted(range(n), key=lambda i: (-values[p][i] if not math.isnan(values[p][i]) else math.inf, i))
        if not constraints or all(c.passed for c in check_constraints(outs[p * n + order[0]].text, constraints)):
            continue  # nothing to follow, or the best candidate already follows it
        for i in order:
            o = outs[p * n + i]
            fixed = repair_reply(o.text, it.example.metadata, truncated=o.finish_reason == "length")
            if fixed is not None:
                wanted[p] = fixed
                break
    keys = list(wanted)
    scored = score_many([(items[p].example.prompt, wanted[p], items[p].example.metadata) for p in keys]) if keys else []
    return {p: (wanted[p], s.value) for p, s in zip(keys, scored)}


def gather_prompt_major(my_outs: list, my_values: list[float], num_prompts: int, n: int, world: int
                        ) -> tuple[list, list[float]]:
    """Every process's candidates and scores for its prompts ``rank::world``, back in prompt-major order (row
    p * n + i is candidate i of prompt p), on every process. One process: unchanged."""
    if world == 1:
        return my_outs, my_values
    shards: list = [None] * world
    dist.all_gather_object(shards, (my_outs, my_values))
    outs, values = [], []
    for p in range(num_prompts):
        shard_outs, shard_values = shards[p % world]
        local = p // world
        outs.extend(shard_outs[local * n: (local + 1) * n])
        values.extend(shard_values[local * n: (local + 1) * n])
    return outs, values
