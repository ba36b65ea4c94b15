"""Reward model: a sequence-classification head (one output) on any causal LM posttrain loads, or an HF classifier,
trained with the Bradley-Terry loss on preference pairs (``losses/reward.py``), LoRA or full.

Sequences are rendered exactly as ``judges/reward_model.py::RewardModelJudge`` renders them at scoring time (the
chat template over prompt + response, no extra special tokens), and the score is the classifier's own pooled
output, so training and judging see the same function. The saved ``model/`` is a plain HF sequence-classification
folder (a LoRA adapter is merged into it): ``RewardModelJudge(out/model)`` loads it, so does ``reward.reward_model``
in PPO/GRPO and ``{type: reward_model, model: ...}`` in the judge stage.

By default (``data.prefix_sharing: auto``) a micro-batch runs as prefix-tree rows: a pair's prompt and the
system prompt go through the trunk once, and each sequence's score is read from the score head's output at its
last token (``tree_rewards``), the position the classifier's own pooling reads in a padded batch.

Eval (held-out pairs): pairwise accuracy, the reward distribution, and how much the score follows response length
(Pearson correlation of score and length, and the accuracy of "the longer one wins"): a length-biased reward
model is a known failure mode, so it is measured and reported in ``reward_eval.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.config import ConfigError
from posttrain.data.sources import source_label
from posttrain.data.layouts import load_examples
from posttrain.data.schema import DataError, DataErrors, PreferencePair
from posttrain.data.writers import atomic_write_json
from posttrain.losses.reward import bradley_terry_loss
from posttrain.eval.reward_stats import reward_stats
from posttrain.models.adapters import is_peft
from posttrain.models.policy import model_tokenizer
from posttrain.models.reward import load_reward_model
from posttrain.ops.logprobs import tree_forward_mask, unwrap_model
from posttrain.ops.layouts import Tree, count_tokens, layout
from posttrain.ops.packing import Layout, prefix_tree
from posttrain.training.loop import StepFns, fit, settings_from_config
from posttrain.training.parallel import gathered, loads_on_meta
from posttrain.training.run import TrainingRun, resolve_prefix_sharing, split_off_eval, to_device


@dataclass
class RenderedPair:
    chosen_ids: list[int]
    rejected_ids: list[int]
    margin: float
    chosen_length: int  # response tokens
    rejected_length: int


def _response_text(messages) -> str:
    return "\n".join(m["content"] for m in messages)


def render_rm_pairs(pairs: list[PreferencePair], tokenizer, *, max_length: int, truncation: str,
                    margin_key: str | None, margin_required: bool = True) -> tuple[list[RenderedPair], int]:
    """(rendered pairs, pairs dropped as too long). ``truncation="truncate"`` keeps the *end* of a long
    sequence (the response), as the judge does. Held-out pairs (``margin_required`` False) may lack the margin
    field (0 is used)."""
    out, dropped, errors = [], 0, []
    for p in pairs:
        margin = 0.0
        if margin_key is not None:
            value = p.metadata.get(margin_key)
            if value is None and not margin_required:
                value = 0.0
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                what = "missing" if value is None else f"got {value!r}"
                errors.append(DataError(p.source, p.row, margin_key, f"loss.margin_key needs a number here: {what}"))
                continue
            margin = float(value)
        sides = []
        for reply in (p.chosen, p.rejected):
            text = tokenizer.apply_chat_template(p.prompt + reply, tokenize=False)
            sides.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        if any(len(s) > max_length for s in sides):
            if truncation == "drop":
                dropped += 1
                continue
            sides = [s[-max_length:] for s in sides]
        lengths = [len(tokenizer(_response_text(r), add_special_tokens=False)["input_ids"])
                   for r in (p.chosen, p.rejected)]
        out.append(RenderedPair(sides[0], sides[1], margin, lengths[0], lengths[1]))
    if errors:
        raise DataErrors(errors)
    return out, dropped


def collate_rm(pairs: list[RenderedPair], pad_token_id: int) -> dict:
    """(2B, T) right-padded: rows ``[:B]`` chosen, ``[B:]`` rejected; ``margin`` (B,)."""
    seqs = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[i, : len(s)] = 1
    return {"layout": Layout.PADDED, "input_ids": input_ids, "attention_mask": attention_mask, "num_pairs": len(pairs),
            "margin": torch.tensor([p.margin for p in pairs], dtype=torch.float32)}


def collate_rm_tree(pairs: list[RenderedPair], max_row_tokens: int | None) -> dict:
    """Prefix-tree rows (``ops/packing.py::prefix_tree``) of the same 2B sequences: a pair's prompt (and the
    system prompt) stored once; ``last_index`` says where each sequence's score is read."""
    seqs = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    b = len(pairs)
    batch = prefix_tree(seqs, [[0] * len(x) for x in seqs], units=[[i, b + i] for i in range(b)],
                        max_row_tokens=max_row_tokens)
    batch.update(num_pairs=b, margin=torch.tensor([p.margin for p in pairs], dtype=torch.float32))
    return batch


def score_head(model):
    """The classifier's per-position head (``score``: what HF's causal-LM sequence classifiers apply to every
    hidden state before pooling the last token) under DDP / PEFT wrappers, or None for other classifiers."""
    head = getattr(unwrap_model(model), "score", None)
    return head if isinstance(head, torch.nn.Module) else None


def tree_rewards(model, batch: dict) -> torch.Tensor:
    """(2B,) scores of prefix-tree rows: one forward through ``model`` (so DDP still syncs), the score head's
    output at every node captured, each sequence's read at its last token, which is what the classifier's own
    pooling reads in a padded batch."""
    captured = []
    handle = score_head(model).register_forward_hook(lambda module, args, out: captured.append(out))
    try:
        model(input_ids=batch["input_ids"], attention_mask=tree_forward_mask(model, batch["tree_mask"]),
              position_ids=batch["position_ids"])
    finally:
        handle.remove()
    scores = captured[-1]  # (R, N, 1)
    return scores.reshape(-1, scores.shape[-1])[batch["last_index"], 0].float()


def batch_rewards(model, batch: dict) -> torch.Tensor:
    """(2B,) scores of a collated batch: prefix-tree rows (``tree_rewards``) or the classifier's pooled output."""
    if layout(batch) is Tree:
        return tree_rewards(model, batch)
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].float()


def rm_step_fns(*, pad_token_id: int, centering: float, use_margin: bool, device, prefix_sharing: bool = False,
                max_row_tokens: int | None = None) -> StepFns:
    def collate(items):
        if prefix_sharing:
            return to_device(collate_rm_tree(items, max_row_tokens), device)
        return to_device(collate_rm(items, pad_token_id), device)

    def weight(batch):
        return float(batch["num_pairs"])

    def loss(model, batch):
        rewards = batch_rewards(model, batch)
        tokens = count_tokens(batch)
        b = batch["num_pairs"]
        losses, m = bradley_terry_loss(rewards[:b], rewards[b:], batch["margin"] if use_margin else None,
                                       centering_coef=centering)
        metrics = {f"rewards/{k}": v for k, v in m.items()}
        return losses.sum(), metrics, tokens

    return StepFns(collate=collate, weight=weight, loss=loss)


def reward_report(model, pairs: list[RenderedPair], fns: StepFns, micro_batch_size: int) -> dict:
    """The model's scores of ``pairs`` and their statistics (``eval/reward_stats.py``)."""
    chosen, rejected = [], []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(pairs), micro_batch_size):
            batch = fns.collate(pairs[i: i + micro_batch_size])
            r = batch_rewards(model, batch)
            b = batch["num_pairs"]
            chosen += r[:b].tolist()
            rejected += r[b:].tolist()
    model.train(was_training)
    return reward_stats(chosen, rejected, [p.chosen_length for p in pairs], [p.rejected_length for p in pairs])


def train_reward_model(cfg) -> dict:
    d = cfg.data
    run = TrainingRun(cfg, "reward_model")
    tokenizer = model_tokenizer(cfg.model.name, cfg.model.cache_dir, cfg.model.trust_remote_code)
    train_ex = load_examples(d.train, "preference", d.split)
    eval_ex = load_examples(d.eval, "preference", None) if d.eval else []
    if not eval_ex and d.eval_fraction > 0:
        train_ex, eval_ex = split_off_eval(train_ex, d.eval_fraction, cfg.train.seed)
    render = dict(max_length=d.max_length, truncation=d.truncation, margin_key=cfg.loss.margin_key)
    train, dropped = render_rm_pairs(train_ex, tokenizer, **render)
    evals, eval_dropped = (render_rm_pairs(eval_ex, tokenizer, **render, margin_required=False) if eval_ex
                           else ([], 0))
    if not train:
        raise ConfigError(f"{source_label(d.train)}: no pairs left at data.max_length={d.max_length} (truncation '{d.truncation}')")
    stats = {"train/rows": len(train_ex), "train/kept": len(train), "train/dropped_too_long": dropped}
    if eval_ex:
        stats.update({"eval/rows": len(eval_ex), "eval/kept": len(evals), "eval/dropped_too_long": eval_dropped})
    model, base_name = load_reward_model(cfg.model, cfg.peft, seed=cfg.train.seed, pad_token_id=tokenizer.pad_token_id,
                                         meta=loads_on_meta(cfg, run.accelerator))
    if score_head(model) is None:  # a classifier that pools otherwise (e.g. an encoder's CLS): padded batches
        if cfg.data.prefix_sharing is True:
            raise ConfigError(f"reward-model: data.prefix_sharing needs a causal-LM classifier with a per-position "
                              f"score head; {type(model).__name__} has none (set data.prefix_sharing=false)")
        cfg.data.prefix_sharing = False
    resolve_prefix_sharing(cfg, model)
    fns = rm_step_fns(pad_token_id=tokenizer.pad_token_id, centering=cfg.loss.centering,
                      use_margin=cfg.loss.margin_key is not None, device=run.accelerator.device,
                      prefix_sharing=cfg.data.prefix_sharing, max_row_tokens=cfg.data.tree_row_tokens)
    run.open()

    split = "eval" if evals else "train"
    report: dict = {}

    def train_and_report() -> dict:
        summary = fit(model, train, evals, fns, settings_from_config(cfg, "reward_model"), run.accelerator)
        # every process scores the report's pairs (a sharded forward is a collective; with the weights gathered
        # no forward is), so the main process has it when it saves
        with gathered(model):
            report[split] = reward_report(model, evals or train, fns, cfg.optim.micro_batch_size)
            if evals:
                report["train"] = reward_report(model, train[: len(evals) * 4], fns, cfg.optim.micro_batch_size)
        return summary

    def save(summary: dict, path) -> tuple[dict, dict]:
        summary = {**stats, **summary, **{f"{split}/rm/{k}": v for k, v in report[split].items()}}
        trained = model
        if run.full_state is not None:  # sharded: the gathered weights into a fresh unsharded classifier to merge
            trained, _ = load_reward_model(cfg.model, cfg.peft, seed=cfg.train.seed,
                                           pad_token_id=tokenizer.pad_token_id)
            trained.load_state_dict(run.full_state)
        save_reward_model(trained, tokenizer, path / "model", base_name)
        atomic_write_json(path / "reward_eval.json", report)
        corr = report[split]["length_corr"]
        if isinstance(corr, float) and abs(corr) > 0.3:
            print(f"posttrain: warning: the reward model's scores correlate with response length "
                  f"(r={corr:.2f} on {split} pairs): check for length bias before using it as a PPO reward",
                  flush=True)
        return summary, {"reward_eval": "reward_eval.json"}

    return run.train_and_save(train_and_report, save, model=model)


def save_reward_model(model, tokenizer, out_dir, base_name: str) -> None:
    """A plain HF sequence-classification folder (LoRA merged), loadable by ``RewardModelJudge``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plain = model.merge_and_unload() if is_peft(model) else model
    plain.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    atomic_write_json(out_dir / "posttrain_reward_model.json", {"base": base_name})
