"""Run under torchrun by test_distributed.py: trains DPO and writes this rank's view of the result."""

import hashlib
import json
import os
import sys

import torch

from posttrain.config import load_config
from posttrain.trainers.preference import train_preference

data, out, result_dir = sys.argv[1:4]
seen = {}
import posttrain.trainers.preference as pref  # noqa: E402

real_step_fns = pref.preference_step_fns


def keep_policy(policy, *args, **kwargs):
    # Called once per run with the (prepared) policy, whether the reference is a model or the on-disk cache.
    seen["policy"] = policy
    return real_step_fns(policy, *args, **kwargs)


pref.preference_step_fns = keep_policy
cfg = load_config("dpo", None, [f"data.train={data}", "model.name=tiny-random", f"train.output_dir={out}",
                                "train.progress=false", "optim.batch_size=8", "optim.micro_batch_size=2",
                                "optim.max_steps=3", "optim.lr=1e-3", "data.max_length=64", "data.shuffle=false",
                                *sys.argv[4:]])
summary = train_preference(cfg)
digest = hashlib.sha256()
for name, p in sorted(seen["policy"].named_parameters()):
    if p.requires_grad:
        digest.update(name.encode() + p.detach().cpu().numpy().tobytes())
rank = int(os.environ.get("RANK", "0"))
with open(os.path.join(result_dir, f"rank{rank}.json"), "w") as fh:
    json.dump({"rank": rank, "world": int(os.environ.get("WORLD_SIZE", "1")), "loss": summary["train/loss"],
               "params": digest.hexdigest(), "backend": str(torch.distributed.get_backend())
               if torch.distributed.is_initialized() else None}, fh)
