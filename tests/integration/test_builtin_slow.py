"""On the real builtin SmolLM2-135M-Instruct (CPU, minutes): LoRA SFT then LoRA DPO on the shipped data lifts
the implicit-reward accuracy on held-out pairs (never trained on) clearly above chance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.config import load_config

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_builtin_sft_then_dpo_lifts_heldout_reward_accuracy(tmp_path):
    from posttrain.trainers.preference import train_preference
    from posttrain.trainers.sft import train_sft

    common = ["train.progress=false", "train.overwrite=true"]
    sft = load_config("sft", ROOT / "examples/demo/sft.yaml",
                      [f"data.train={ROOT / 'examples/data/sft_demos.jsonl'}", f"train.output_dir={tmp_path / 'sft'}",
                       *common])
    train_sft(sft)
    dpo = load_config("dpo", ROOT / "examples/demo/dpo.yaml",
                      [f"model.name={tmp_path / 'sft' / 'model'}", f"train.output_dir={tmp_path / 'dpo'}",
                       f"data.train={ROOT / 'examples/data/pairs_train.jsonl'}",
                       f"data.eval={ROOT / 'examples/data/pairs_heldout.jsonl'}", *common])
    summary = train_preference(dpo)
    manifest = json.loads((tmp_path / "dpo" / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert summary["eval/rows"] >= 100
    assert summary["eval/rewards/accuracy"] >= 0.7, summary
    assert summary["eval/rewards/margins"] > 0
