"""Run under torchrun (or alone) by test_distributed.py: trains SFT, DPO, GRPO, PPO or a reward model with the given overrides and
writes this rank's view: how many parameter elements it holds (its shards under parallel.strategy=fsdp2 or
deepspeed ZeRO-3), split into trainable and frozen, how many optimizer-state elements (DeepSpeed: its partition),
and the summary."""

import json
import os
import sys

import torch

from posttrain.config import load_config
from posttrain.training.parallel import full_numel, is_sharded, local_numel, on_meta

command, out, result_dir = sys.argv[1:4]
seen = {}

if command == "sft":
    import posttrain.trainers.sft as trainer

    train = trainer.train_sft
elif command == "grpo":
    import posttrain.trainers.grpo as trainer

    train = trainer.train_grpo
elif command == "ppo":
    import posttrain.trainers.ppo as trainer

    train = trainer.train_ppo
elif command == "reward-model":
    import posttrain.trainers.reward_model as trainer

    train = trainer.train_reward_model
else:
    import posttrain.trainers.preference as trainer

    train = trainer.train_preference
import posttrain.trainers.rl_common as rl_common  # noqa: E402
import posttrain.training.run as stage  # noqa: E402
from tests.integration.helpers import keep_first_argument  # noqa: E402


import posttrain.training.loop as loop  # noqa: E402

keep_first_argument(stage, "fit", seen)
real_engine = loop.deepspeed_engine


def keep_engine(*args, **kwargs):
    seen["engine"] = engine = real_engine(*args, **kwargs)
    return engine


loop.deepspeed_engine = keep_engine
keep_first_argument(rl_common, "fit_rl", seen)
real_shard_before_sampling = rl_common.shard_before_sampling


def keep_on_meta(cfg, model, accelerator):  # the online trainers shard (and fill) their model before fit_rl
    seen["on_meta"] = on_meta(model)
    return real_shard_before_sampling(cfg, model, accelerator)


rl_common.shard_before_sampling = keep_on_meta
if command == "reward-model":
    keep_first_argument(trainer, "fit", seen)
if hasattr(trainer, "build_reference"):  # the frozen reference copy (full fine-tuning), if one is built
    real_build_reference = trainer.build_reference

    def keep_reference(*args, **kwargs):
        frozen, other = real_build_reference(*args, **kwargs)
        seen["reference"] = frozen
        return frozen, other

    trainer.build_reference = keep_reference
torch.set_num_threads(1)
cfg = load_config(command, None, ["model.name=tiny-random", f"train.output_dir={out}", "train.progress=false",
                                  *sys.argv[4:]])
summary = train(cfg)
model = seen["model"]
held = {"trainable": 0, "frozen": 0}
full = {"trainable": 0, "frozen": 0}
for p in model.parameters():
    kind = "trainable" if p.requires_grad else "frozen"
    held[kind] += local_numel(p)
    full[kind] += full_numel(p)
reference = seen.get("reference")
ref_held = sum(local_numel(p) for p in reference.parameters()) if reference is not None else None
ref_full = sum(full_numel(p) for p in reference.parameters()) if reference is not None else None
engine = seen.get("engine")
optimizer_held = None
if engine is not None:  # the torch optimizer inside DeepSpeed's: its state over this process's partition
    optimizer_held = sum(t.numel() for st in engine.optimizer.optimizer.state.values() for t in st.values()
                         if torch.is_tensor(t) and t.dim() > 0)
rank = int(os.environ.get("RANK", "0"))
with open(os.path.join(result_dir, f"rank{rank}.json"), "w") as fh:
    json.dump({"rank": rank, "world": int(os.environ.get("WORLD_SIZE", "1")), "sharded": is_sharded(model),
               "held": held, "full": full, "reference_held": ref_held, "reference_full": ref_full,
               "optimizer_held": optimizer_held, "on_meta": seen.get("on_meta"),
               "summary": {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}}, fh)
