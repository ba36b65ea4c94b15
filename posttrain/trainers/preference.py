"""Preference optimisation on (prompt, chosen, rejected) pairs: DPO and its family (IPO, robust/cDPO, hinge,
SimPO, ORPO, optional RPO NLL term). The loss is picked by name from ``posttrain.losses.LOSSES``.

Chosen and rejected sequences go through the policy in one forward pass (rows ``[:B]`` chosen, ``[B:]``
rejected; or one padding-free packed row with ``data.packing``; or, by default (``data.prefix_sharing``),
prefix-tree rows where each pair's prompt and the row's common system prompt are computed once). The reference
pass is skipped for reference-free losses, and for every micro-batch whose reference log-probs are cached
(``training/refcache.py``). The reference is the starting model (``models/reference.py``) unless
``loss.reference_model`` pins another one (the SFT model in every round of iterated DPO: ``pipeline/rounds.py``).
"""

from __future__ import annotations

import hashlib
import math
import random

import torch

from posttrain.config import ConfigError
from posttrain.data.collate import collate_pairs, collate_sequences, sequence_key
from posttrain.data.layouts import load_examples
from posttrain.data.render import render_dataset
from posttrain.data.sources import source_label
from posttrain.losses.sft import sft_loss
from posttrain.losses import LossSpec, get_loss, preference_loss
from posttrain.models.reference import (build_reference, load_reference_model, reference_model, reference_weights,
                                        same_model)
from posttrain.ops.layouts import batch_sequence_logps, count_tokens
from posttrain.training.loop import StepFns
from posttrain.training.parallel import from_first_process, is_sharded, on_every_process, place_reference
from posttrain.models.fingerprint import fingerprint
from posttrain.training.refcache import ReferenceCache, default_cache_dir
from posttrain.training.run import resolve_prefix_sharing, run_offline_training, to_device


def mix_draw(pair_key: str, fraction: float, pool: int) -> int | None:
    """The SFT row (index into a pool of ``pool`` rows) that one pair brings into its micro-batch, or None: a
    function of the pair's content only, so reruns, resumed runs and any process count mix the same rows."""
    digest = hashlib.sha256(pair_key.encode()).digest()
    if int.from_bytes(digest[:8], "big") / 2**64 >= fraction:
        return None
    return int.from_bytes(digest[8:16], "big") % pool


def preference_step_fns(policy, frozen_reference, *, spec: LossSpec, loss_params: dict, pad_token_id: int,
                        device, packing: bool = False, prefix_sharing: bool = False,
                        max_row_tokens: int | None = None, reference_cache=None, mix_sft=None,
                        mix_fraction: float = 0.0, mix_weight: float = 1.0) -> StepFns:
    """``spec``: the run's loss (``losses.get_loss(cfg.loss.type)``, looked up once). ``reference_cache``: a
    ``ReferenceCache`` (or None): looked up per micro-batch, filled on a miss. ``mix_sft``: rendered SFT rows; a
    ``mix_fraction`` of the pairs (``mix_draw``) each bring one SFT row, whose token-mean NLL x ``mix_weight`` is
    added to the micro-batch's summed loss (so one row weighs like one pair after the loop divides by the pair
    count)."""
    cache = reference_cache if spec.needs_reference else None

    def collate(items):
        batch = to_device(collate_pairs(items, pad_token_id, packing=packing, prefix_sharing=prefix_sharing,
                                           max_row_tokens=max_row_tokens), device)
        if cache is not None or mix_sft:
            batch["seq_keys"] = [sequence_key(c) for c, _ in items] + [sequence_key(r) for _, r in items]
        if mix_sft:
            drawn = [mix_draw(k, mix_fraction, len(mix_sft)) for k in batch["seq_keys"][:len(items)]]
            batch["sft_rows"] = [i for i, row in enumerate(drawn) if row is not None]  # positions of the mixing pairs
            if batch["sft_rows"]:
                batch["sft"] = to_device(collate_sequences([mix_sft[r] for r in drawn if r is not None],
                                                           pad_token_id), device)
        return batch

    def weight(batch):
        return float(batch["num_pairs"])

    def reference_logps(batch, like: torch.Tensor) -> torch.Tensor:
        hit = cache.lookup(batch["seq_keys"]) if cache is not None else None
        if cache is not None and is_sharded(policy) and not on_every_process(hit is not None):
            hit = None  # a forward of a sharded model is a collective: every process runs it, or none does
        if hit is not None:
            return torch.tensor(hit, dtype=like.dtype, device=like.device)
        with torch.no_grad(), reference_model(policy, frozen_reference) as ref_model:
            ref_logps, _, _ = batch_sequence_logps(ref_model, batch)
        if cache is not None:
            cache.store(batch["seq_keys"], ref_logps)
        return ref_logps

    def sft_term(model, batch, losses: torch.Tensor, metrics: dict, with_sft: bool) -> torch.Tensor:
        """The pairs' summed loss plus the mixed SFT rows' weighted token-mean NLLs; ``sft/nll`` (per mixed row,
        NaN elsewhere) and ``sft/mixed`` (1 where a pair brought a row) on every batch, so every process and
        micro-batch logs the same keys."""
        b = batch["num_pairs"]
        nll = torch.full((b,), math.nan)
        mixed = torch.zeros(b)
        total = losses.sum()
        if with_sft and "sft" in batch:
            # Through the unwrapped module: a DDP forward broadcasts buffers (a collective), and only the
            # processes with a mixed row run this one. The gradients still reach DDP's reducer in the same
            # backward pass.
            inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
            _, _, token_logps = batch_sequence_logps(inner, batch["sft"])
            sums, sft_metrics = sft_loss(token_logps, batch["sft"]["loss_mask"][:, 1:])
            means = sums / sft_metrics["tokens"].clamp(min=1)  # (rows,) token-mean NLL of each mixed row
            total = total + mix_weight * means.sum()
            positions = torch.tensor(batch["sft_rows"])
            nll[positions] = means.detach().float().cpu()
            mixed[positions] = 1.0
        metrics["sft/nll"] = nll
        metrics["sft/mixed"] = mixed
        return total

    def loss(model, batch, with_sft: bool = True):
        b = batch["num_pairs"]
        logps, counts, _ = batch_sequence_logps(model, batch)
        ref = {}
        if spec.needs_reference:
            ref_logps = reference_logps(batch, logps)
            ref = {"reference_chosen_logps": ref_logps[:b], "reference_rejected_logps": ref_logps[b:]}
        losses, metrics = preference_loss(
            spec,
            policy_chosen_logps=logps[:b],
            policy_rejected_logps=logps[b:],
            chosen_lengths=counts[:b].float(),
            rejected_lengths=counts[b:].float(),
            **ref,
            **loss_params,
        )
        if mix_sft:
            return sft_term(model, batch, losses, metrics, with_sft), metrics, count_tokens(batch)
        return losses.sum(), metrics, count_tokens(batch)

    return StepFns(collate=collate, weight=weight, loss=loss,
                   eval_loss=(lambda model, batch: loss(model, batch, with_sft=False)) if mix_sft else None,
                   length=lambda pair: len(pair[0].input_ids) + len(pair[1].input_ids),
                   flush=cache.flush if cache is not None else None)


def loss_params(loss_cfg, spec: LossSpec) -> dict:
    """The config values the chosen loss declares, plus beta and rpo_alpha (which every paired loss takes)."""
    params = {"beta": loss_cfg.beta, "rpo_alpha": loss_cfg.rpo_alpha}
    params.update({name: getattr(loss_cfg, name) for name in spec.params if hasattr(loss_cfg, name)})
    return params


def open_reference_cache(cfg, spec: LossSpec, policy, accelerator, pinned=None):
    """The ``ReferenceCache`` of this reference and precision, or None when caching is off / not needed.
    ``pinned``: the frozen ``loss.reference_model``, whose weights then make the fingerprint."""
    if not (cfg.loss.reference_cache and spec.needs_reference):
        return None
    root = cfg.loss.reference_cache_dir or default_cache_dir(cfg.train.output_dir)  # never beside the data
    key = from_first_process(lambda: fingerprint(reference_weights(policy, pinned),  # others may be on meta
                                                 precision=str(accelerator.mixed_precision),
                                                 device_type=accelerator.device.type))
    return ReferenceCache(f"{root}/{key}")


def pinned_reference(cfg, spec: LossSpec, tokenizer):
    """The frozen ``loss.reference_model``, or None when it is unset, unused by the loss (``spec``), or the very
    model training starts from (then the ordinary reference is that model, at no extra load or memory)."""
    name = cfg.loss.reference_model
    if name is None or not spec.needs_reference or same_model(name, cfg.model.name, cfg.model.adapter):
        return None
    return load_reference_model(name, tokenizer, cache_dir=cfg.model.cache_dir, dtype=cfg.model.dtype,
                                trust_remote_code=cfg.model.trust_remote_code)


def mix_rows(cfg, tokenizer) -> list | None:
    """The rendered rows of ``mix_sft.path`` (same max length and truncation as the pairs), or None."""
    if cfg.mix_sft.path is None:
        return None
    rows, _ = render_dataset(load_examples(cfg.mix_sft.path, "sft", None), tokenizer,
                             max_length=cfg.data.max_length, truncation=cfg.data.truncation)
    if not rows:
        raise ConfigError(f"mix_sft.path {source_label(cfg.mix_sft.path)}: no SFT rows left within data.max_length="
                          f"{cfg.data.max_length}")
    return rows


def train_preference(cfg) -> dict:
    spec = get_loss(cfg.loss.type)  # the one lookup of the run's loss; everything below takes the spec

    def build(model, data, accelerator):
        resolve_prefix_sharing(cfg, model)
        pinned = pinned_reference(cfg, spec, data.tokenizer)
        cache = open_reference_cache(cfg, spec, model, accelerator, pinned)
        everything = [s for pair in data.train + data.eval for s in pair]
        if cache is not None and cache.covers(sequence_key(s) for s in everything):
            frozen = None  # every reference log-prob is on disk: no frozen copy, no reference pass
        elif pinned is not None:
            frozen = pinned
        else:
            frozen, _ = build_reference(model, cfg.loss.reference, spec.needs_reference)
        place_reference(frozen, cfg, accelerator)
        return preference_step_fns(model, frozen, spec=spec, loss_params=loss_params(cfg.loss, spec),
                                   pad_token_id=data.tokenizer.pad_token_id, device=accelerator.device,
                                   packing=cfg.data.packing, prefix_sharing=cfg.data.prefix_sharing,
                                   max_row_tokens=cfg.data.tree_row_tokens, reference_cache=cache,
                                   mix_sft=mix_rows(cfg, data.tokenizer), mix_fraction=cfg.mix_sft.fraction,
                                   mix_weight=cfg.mix_sft.weight)

    return run_offline_training(cfg, "dpo", "preference", build)
