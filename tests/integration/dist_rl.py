"""Run under torchrun by test_distributed.py: trains GRPO, PPO or rejection-sampling SFT and writes this rank's
view of the result."""

import hashlib
import json
import os
import sys

import torch

from posttrain.config import load_config

command, out, result_dir = sys.argv[1:4]
seen = {}

from tests.integration.helpers import keep_first_argument  # noqa: E402


if command == "grpo":
    import posttrain.trainers.grpo as trainer

    keep_first_argument(trainer, "grpo_fns", seen)
    train = trainer.train_grpo
elif command == "rejection-sft":
    import posttrain.trainers.rejection_sft as trainer
    import posttrain.training.run as run

    keep_first_argument(run, "fit", seen)  # the policy rejection-sft trains (the SFT trainer's train_on_data)
    train = trainer.train_rejection_sft
else:
    import posttrain.trainers.ppo as trainer

    keep_first_argument(trainer, "ppo_fns", seen)  # the policy with its value head
    train = trainer.train_ppo

torch.set_num_threads(1)
cfg = load_config(command, None, ["model.name=tiny-random", f"train.output_dir={out}", "train.progress=false",
                                  *sys.argv[4:]])
summary = train(cfg)
digest = hashlib.sha256()
for name, p in sorted(seen["model"].named_parameters()):
    if p.requires_grad:
        digest.update(name.encode() + p.detach().cpu().numpy().tobytes())
rank = int(os.environ.get("RANK", "0"))
with open(os.path.join(result_dir, f"rank{rank}.json"), "w") as fh:
    json.dump({"rank": rank, "world": int(os.environ.get("WORLD_SIZE", "1")), "params": digest.hexdigest(),
               "summary": {k: v for k, v in summary.items() if isinstance(v, (int, float))}}, fh)
