"""Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback", OAIF, Algorithm 1).

Each step: ``optim.batch_size`` prompts, ``online.num_generations`` samples of each from the *current* policy
(``rollout.*``, per-row seeded: a resumed step samples the same tokens), labelled by ``online.judges`` (any judge of
the judge stage: verifier, reward_model, llm, local; several are combined as there), turned into preference pairs
by the judge stage's pair builder (``judges/pairs.py``: ``best_vs_worst`` by score, equal scores give no pair;
``round_robin`` asks a pairwise judge about every two samples, in both orders for an LLM), then one optimizer step
of a DPO-family loss (``losses.LOSSES`` by ``loss.type``: dpo, ipo, robust, hinge, simpo, orpo) on those pairs
against the reference (LoRA: the adapter disabled; full fine-tuning: a frozen copy).

It runs on ``training/rollout_loop.py::fit_rl`` with one update pass of one minibatch: the rows of a rollout batch
are *pairs* (``chosen_*`` and ``rejected_*`` tensors, row i of each is pair i), the loss normaliser is the number
of pairs over all processes, ``optim.micro_batch_size`` is pairs per forward pass (chosen and rejected go through
the policy together, sharing the prompt's forward under prefix sharing). The reference log-probs of a step's pairs
are computed at rollout time: they are new sequences every step, so there is nothing to cache. The log-probs are
those of the untempered policy (temperature 1, the DPO objective's), whatever temperature sampled the tokens.

Outputs besides the run folder: ``pairs.jsonl`` (every pair trained on, in the DPO layout, with its step, judge
scores, token lengths and the judge's details; an empty sample, which the DPO reader refuses, is listed as trained)
and ``model/``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.distributed as dist

from posttrain.config import ConfigError
from posttrain.data.schema import DataError, DataErrors
from posttrain.generation.prompts import last_user_text, sample
from posttrain.generation.vllm_backend import import_vllm
from posttrain.judges import pairs as pairing
from posttrain.judges.ensemble import PairwiseEnsemble, combine_scores
from posttrain.judges.run import JudgeConfigError, build_member
from posttrain.losses import LossSpec, get_loss, preference_loss
from posttrain.models.policy import save_trained
from posttrain.models.reference import build_reference, reference_model
from posttrain.ops.rollout import completion_forward, rollout_tensors
from posttrain.trainers.grpo import no_grad_token_logps
from posttrain.trainers.preference import loss_params
from posttrain.trainers.rl_common import heldout_reward, load_rl_setup, shard_before_sampling
from posttrain.training.loop import reduce_sum_fn, settings_from_config
from posttrain.training.parallel import gathered, max_over_processes, place_reference
from posttrain.training.rollout_loop import RLFns, fit_rl
from posttrain.training.run import TrainingRun

SCORING_STRATEGIES = ("best_vs_worst", "all_above_margin")  # the rest compare two samples (pairwise judges)
SEQ_KEYS = ("input_ids", "attention_mask", "loss_mask", "completion_mask")


def build_judges(specs: list[dict], strategy: str) -> list:
    """The judges (``ensemble.Member``s) from judge-stage config dicts; a bad entry is a ConfigError naming it."""
    try:
        members = [build_member(spec, i) for i, spec in enumerate(specs)]
    except JudgeConfigError as e:
        raise ConfigError(f"online.{e}") from None
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ConfigError(f"online.judges: two judges are named '{max(names, key=names.count)}'; give one a 'name'")
    need = "score" if strategy in SCORING_STRATEGIES else "compare"
    for i, m in enumerate(members):
        if not hasattr(m.judge, need):
            raise ConfigError(f"online.judges[{i}] ({m.name}) cannot {need} responses, which online.strategy="
                              f"{strategy} needs")
    return members


def score_responses(members: list, examples: list, texts: list[str]) -> list:
    """One ``Score`` per (prompt row, response): one judge's own score, several judges' weighted mean of normalised
    scores (``ensemble.combine_scores``, as the judge stage combines them). A row whose metadata a verifier
    rejects is a DataError naming the prompt file and row."""
    items = [(ex.prompt, t, dict(ex.metadata)) for ex, t in zip(examples, texts)]
    columns = []
    for m in members:
        if hasattr(m.judge, "score_many"):  # batched (reward model, LLM)
            columns.append(list(m.judge.score_many(items)))
            continue
        col = []
        for ex, item in zip(examples, items):
            try:
                col.append(m.judge.score(*item))
            except ValueError as e:
                raise DataErrors([DataError(ex.source, ex.row, "metadata", f"judge '{m.name}': {e}")]) from None
        columns.append(col)
    if len(members) == 1:
        return columns[0]
    return [combine_scores(members, [col[i] for col in columns]) for i in range(len(items))]


def judge_pairs(members: list, items: list, outs: list, n: int, strategy: str, pair_opts: dict):
    """(pair rows, pair summary, sample scores or None) for one step's samples (``outs`` prompt-major, ``n`` per
    prompt), built by the judge stage's pair builder (``judges/pairs.py``): scoring strategies score every sample,
    pairwise ones compare every two samples of a prompt (``compare_round_robin``). The rows' ``prompt_id`` is the
    prompt's position in ``items``, ``judge.chosen_index`` / ``rejected_index`` the samples' indices within it."""
    candidates = [{"prompt_id": str(p), "candidate_index": i, "prompt": it.example.prompt,
                   "text": outs[p * n + i].text, "metadata": dict(it.example.metadata)}
                  for p, it in enumerate(items) for i in range(n)]
    meta = {"judges": [m.name for m in members]}
    if strategy in SCORING_STRATEGIES:
        examples = [it.example for it in items for _ in range(n)]
        scores = score_responses(members, examples, [c["text"] for c in candidates])
        keyed = {(c["prompt_id"], c["candidate_index"]): s for c, s in zip(candidates, scores)}
        rows, summary = pairing.build_pairs(candidates, keyed, strategy=strategy, judge_meta=meta, **pair_opts)
        return rows, summary, scores
    judge = members[0].judge if len(members) == 1 else PairwiseEnsemble(members)
    comparisons = pairing.compare_round_robin(candidates, judge)
    rows, summary = pairing.build_pairs_from_comparisons(candidates, comparisons, strategy=strategy, judge_meta=meta,
                                                         **pair_opts)
    return rows, summary, None


class PairsLog:
    """Appends each step's pairs to ``pairs.jsonl``. The first write of a run keeps only the rows of the steps before
    it, so a resumed run (or a rerun into the same folder) never lists a step's pairs twice."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled, self.started = Path(path), enabled, False

    def write(self, step: int, rows: list[dict]) -> None:
        """``step``: 1-based, as in metrics.jsonl."""
        if not self.enabled:
            return
        if not self.started:
            kept = []
            if self.path.exists():
                for line in self.path.read_text(encoding="utf-8").splitlines():
                    try:
                        if json.loads(line).get("step", 0) < step:
                            kept.append(line + "\n")
                    except ValueError:
                        continue  # the torn last line of a killed run
            self.path.write_text("".join(kept), encoding="utf-8")
            self.started = True
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)


def _gather_rows(rows: list[dict], world: int) -> list[dict]:
    if world == 1:
        return rows
    shards: list = [None] * world
    dist.all_gather_object(shards, rows)
    return [r for shard in shards for r in shard]


def _mean(total: float, count: float) -> float:
    return total / count if count else math.nan


def step_metrics(reduce, outs, rows, summary, scores, chosen, rejected) -> dict:
    """The step's labelling statistics over all processes (``reduce`` sums a float64 tensor over them): counts of
    pairs kept and ties, judge scores of samples and of kept pairs, judge agreement (ensembles), and lengths of
    chosen vs rejected (a judge that prefers longer answers shows here before the policy becomes verbose)."""
    dropped = summary["dropped"]
    values = [s.value for s in scores or [] if math.isfinite(s.value)]
    passes = [bool(s.passed) for s in scores or [] if s.passed is not None]
    agreement = [r["judge"]["agreement"] for r in rows if r["judge"].get("agreement") is not None]
    c_len, r_len = [len(o.token_ids) for o in chosen], [len(o.token_ids) for o in rejected]
    local = {
        "pairs": len(rows), "ties": dropped["tie"],
        "dropped": dropped["duplicate"] + dropped["margin"] + dropped["length_ratio"], "unscored": dropped["unscored"],
        "samples": len(outs), "length": sum(len(o.token_ids) for o in outs),
        "clipped": sum(o.finish_reason == "length" for o in outs),
        "score": sum(values), "scored": len(values),
        "passed": sum(passes), "judged": len(passes),
        "chosen_score": sum(r["chosen_score"] for r in rows), "rejected_score": sum(r["rejected_score"] for r in rows),
        "chosen_len": sum(c_len), "rejected_len": sum(r_len), "chosen_longer": sum(c > r for c, r in zip(c_len, r_len)),
        "agreement": sum(agreement), "agreed": len(agreement),
    }
    t = dict(zip(local, reduce(torch.tensor(list(local.values()), dtype=torch.float64)).tolist()))
    out = {"pairs/kept": int(t["pairs"]), "pairs/ties": int(t["ties"]), "pairs/dropped": int(t["dropped"]),
           "samples/unscored": int(t["unscored"]),
           "score/chosen": _mean(t["chosen_score"], t["pairs"]),
           "score/rejected": _mean(t["rejected_score"], t["pairs"]),
           "score/margin": _mean(t["chosen_score"] - t["rejected_score"], t["pairs"]),
           "length/chosen": _mean(t["chosen_len"], t["pairs"]), "length/rejected": _mean(t["rejected_len"], t["pairs"]),
           "length/frac_chosen_longer": _mean(t["chosen_longer"], t["pairs"]),
           "response_length": _mean(t["length"], t["samples"]), "response_clipped": _mean(t["clipped"], t["samples"])}
    if t["scored"]:
        out["score/mean"] = t["score"] / t["scored"]
    if t["judged"]:
        out["score/pass_rate"] = t["passed"] / t["judged"]
    if t["agreed"]:
        out["judge/agreement"] = t["agreement"] / t["agreed"]
    return out


def online_dpo_fns(policy, frozen_reference, generator, members, *, num_generations: int, strategy: str,
                   pair_opts: dict, rollout_cfg, seed: int, spec: LossSpec, loss_kwargs: dict, pad_token_id: int,
                   micro_batch_size: int, device, reduce, pairs_log: PairsLog, world: int = 1,
                   tree_row_tokens: int | None = None, lockstep: bool = False) -> RLFns:
    """``lockstep``: every process must run as many micro-batches as the others (several processes under fsdp2,
    whose sharded forwards are collectives, or DeepSpeed, which reduces gradients in every backward)."""
    G = num_generations
    labelled: dict = {}  # the last rollout's global statistics, logged by after_step
    trained = {"pairs": 0}  # pairs of every step so far, over all processes (in checkpoints)

    def rollout(items, step):
        outs = sample(generator, items, n=G, rollout_cfg=rollout_cfg, seed=seed * 1000003 + step)
        rows, summary, scores = judge_pairs(members, items, outs, G, strategy, pair_opts)
        picks = [(int(r["prompt_id"]), r["judge"]["chosen_index"], r["judge"]["rejected_index"]) for r in rows]
        chosen = [outs[p * G + c] for p, c, _ in picks]
        rejected = [outs[p * G + r] for p, _, r in picks]
        labelled.clear()
        labelled.update(step_metrics(reduce, outs, rows, summary, scores, chosen, rejected))
        trained["pairs"] += labelled["pairs/kept"]
        pairs_log.write(step + 1, _gather_rows([
            {"step": step + 1, "prompt_id": items[p].key, "prompt": r["prompt"], "chosen": r["chosen"],
             "rejected": r["rejected"], "chosen_score": r["chosen_score"], "rejected_score": r["rejected_score"],
             "margin": r["margin"], "chosen_tokens": len(c.token_ids), "rejected_tokens": len(x.token_ids),
             "judge": r["judge"]} for r, (p, _, _), c, x in zip(rows, picks, chosen, rejected)], world))
        n = len(rows)
        # Pairs of weight 0 (a sample against itself) fill in: when every prompt of this process tied, one stands
        # in (alone everywhere, the step's weight is 0 and fit_rl skips the update; when other processes do have
        # pairs, this one still runs the loss and the metric reductions they run: no gradient, NaN metrics). In
        # lockstep (a sharded policy's forward is a collective; DeepSpeed reduces gradients in every backward)
        # every process fills up to the most pairs any has and all run the same number of micro-batches.
        target = max(n, 1)
        if lockstep:
            target = max_over_processes(target)
        fill = target - n
        pair_weight = [1.0] * n + [0.0] * fill
        picks, chosen, rejected = picks + [(0, 0, 0)] * fill, chosen + outs[:1] * fill, rejected + outs[:1] * fill
        n = target
        batch: dict = {"num_rows": n, "pair_weight": torch.tensor(pair_weight, device=device),
                       "samples": [{"prompt": last_user_text(r["prompt"]), "chosen": r["chosen"],
                                    "rejected": r["rejected"], "chosen_score": r["chosen_score"],
                                    "rejected_score": r["rejected_score"]} for r in rows]}
        prompts = [items[p].prompt_ids for p, _, _ in picks]
        # chosen rows [:n], rejected rows [n:], one padded width, so a micro-batch of pairs is one forward pass
        seqs = rollout_tensors(prompts + prompts, [o.token_ids for o in chosen + rejected], pad_token_id, device,
                               tree_row_tokens)
        if spec.needs_reference:
            seqs["num_rows"] = 2 * n
            with reference_model(policy, frozen_reference) as ref:
                ref_logps = no_grad_token_logps(ref, seqs, 2 * micro_batch_size, 1.0).sum(-1)  # (2n,)
            batch.update(reference_chosen_logps=ref_logps[:n], reference_rejected_logps=ref_logps[n:])
        for k in SEQ_KEYS:
            batch[f"chosen_{k}"], batch[f"rejected_{k}"] = seqs[k][:n], seqs[k][n:]
        batch["tree_row_tokens"] = tree_row_tokens
        return batch, {}

    def weight(batch):
        return float(batch["pair_weight"].sum())

    def loss(model, batch):
        b = batch["num_rows"]
        seqs = {k: torch.cat([batch[f"chosen_{k}"], batch[f"rejected_{k}"]]) for k in SEQ_KEYS}
        seqs["tree_row_tokens"] = batch["tree_row_tokens"]
        logps = completion_forward(model, seqs)[1].sum(-1)  # (2B,) sequence log-probs at temperature 1
        counts = seqs["completion_mask"].sum(-1).float()
        ref = {}
        if spec.needs_reference:
            ref = {"reference_chosen_logps": batch["reference_chosen_logps"],
                   "reference_rejected_logps": batch["reference_rejected_logps"]}
        losses, metrics = preference_loss(spec, policy_chosen_logps=logps[:b], policy_rejected_logps=logps[b:],
                                          chosen_lengths=counts[:b], rejected_lengths=counts[b:], **ref,
                                          **loss_kwargs)
        w = batch["pair_weight"]
        real = w > 0
        metrics = {k: torch.where(real, v, torch.full_like(v, math.nan)) for k, v in metrics.items()}
        tokens = int((batch["chosen_attention_mask"].sum(-1) + batch["rejected_attention_mask"].sum(-1))[real].sum())
        return (losses * w).sum(), metrics, tokens

    # The labelling statistics are already global (one reduce in the rollout); fit_rl would average rollout
    # metrics weighted by rows, i.e. pairs, which a step without any pair turns into NaN: they come in here instead.
    return RLFns(rollout=rollout, weight=weight, loss=loss, after_step=lambda record: dict(labelled),
                 state=lambda: dict(trained), load_state=trained.update)


def judge_reward(members: list):
    """The held-out reward for ``rl_common.heldout_reward``: the judges' score of each response (``score_responses``;
    an LLM judge answers pointwise here, 1-10)."""

    def reward(examples, texts, lengths, batch_whitening: bool = True):
        scores = score_responses(members, examples, texts)
        values = torch.tensor([s.value for s in scores], dtype=torch.float32)
        finite = values[torch.isfinite(values)]
        metrics = {"score/mean": float(finite.mean()) if len(finite) else math.nan}
        passes = [s.passed for s in scores if s.passed is not None]
        if passes:
            metrics["score/pass_rate"] = sum(passes) / len(passes)
        return values, metrics

    return reward


def judge_inputs(judges: list[dict]) -> list[tuple[str, str]]:
    """(name, folder) of the judges that are local models (reward model, local LLM): their content decides the pairs."""
    return [(f"online.judges[{i}].model", j["model"]) for i, j in enumerate(judges)
            if isinstance(j, dict) and j.get("type") in ("reward_model", "local") and j.get("model")]


def train_online_dpo(cfg) -> dict:
    o, spec = cfg.online, get_loss(cfg.loss.type)
    if cfg.rollout.backend == "vllm":  # before the judges, which may load models
        import_vllm()
    run = TrainingRun(cfg, "online_dpo")
    accelerator, is_main = run.accelerator, run.is_main
    members = build_judges(o.judges, o.strategy)
    setup = load_rl_setup(cfg, run, need_verifiable=any(j.get("type") == "verifier" for j in o.judges))
    tokenizer, policy, generator = setup.tokenizer, setup.policy, setup.generator
    frozen, _ = build_reference(policy, cfg.loss.reference, spec.needs_reference)
    place_reference(frozen, cfg, accelerator)
    run.open(dict(judge_inputs(o.judges)))
    fns = online_dpo_fns(
        policy, frozen, generator, members, num_generations=o.num_generations, strategy=o.strategy,
        pair_opts={"min_margin": o.min_score_gap, "max_length_ratio": o.max_length_ratio}, rollout_cfg=cfg.rollout,
        seed=cfg.train.seed, spec=spec, loss_kwargs=loss_params(cfg.loss, spec),
        pad_token_id=tokenizer.pad_token_id, micro_batch_size=cfg.optim.micro_batch_size, device=accelerator.device,
        reduce=reduce_sum_fn(accelerator), pairs_log=PairsLog(run.path / "pairs.jsonl", is_main),
        world=accelerator.num_processes, tree_row_tokens=cfg.data.tree_row_tokens if cfg.data.prefix_sharing else None,
        lockstep=cfg.parallel.strategy != "ddp" and accelerator.num_processes > 1)
    reward = judge_reward(members)

    def heldout(prefix: str) -> dict:
        if not setup.eval_items:
            return {}
        policy.eval()
        with gathered(policy):  # after a sharded run: each process samples its share with the full weights
            return heldout_reward(generator, setup.eval_items, reward, cfg.rollout, cfg.train.seed, prefix,
                                  accelerator)

    def train() -> dict:
        shard_before_sampling(cfg, policy, accelerator)
        summary = {**setup.stats, **heldout("eval_before")}
        summary.update(fit_rl(policy, setup.items, fns, settings_from_config(cfg, "online_dpo"), accelerator,
                              update_epochs=1, mini_batches=1))
        summary["pairs/trained"] = fns.state()["pairs"]
        if not summary["pairs/trained"]:
            raise ConfigError(f"online-dpo: no step kept a pair ({summary['steps']} steps: the judges scored every "
                              "sample of a prompt alike, or below online.min_score_gap), so nothing was trained; "
                              "raise rollout.temperature or online.num_generations, or check the judges")
        summary.update(heldout("eval_after"))
        return summary

    def save(summary: dict, path) -> tuple[dict, dict]:
        save_trained(policy, tokenizer, path / "model", setup.lineage, state_dict=run.full_state)
        for m in members:  # LLM judges: requests, cache hits, retries, tokens (this process's)
            if hasattr(m.judge, "stats"):
                summary.update({f"judge/{m.name}/{k}": v for k, v in m.judge.stats().items()
                                if isinstance(v, (int, float))})
        return summary, {"pairs": "pairs.jsonl"}

    return run.train_and_save(train, save, model=policy)
