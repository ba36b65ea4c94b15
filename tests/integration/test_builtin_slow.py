"""On the real builtin SmolLM2-135M-Instruct (CPU, minutes): LoRA SFT then LoRA DPO on the shipped data lifts
the implicit-reward accuracy on held-out pairs (never trained on) clearly above chance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.config import load_config

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.builtin    # not in `make test-backends` (the slow tests CI runs too): minutes each


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


@pytest.mark.slow
def test_quickstart_pipeline_improves_heldout_constraints(tmp_path, monkeypatch):
    """`make demo`'s pipeline, end to end on the builtin model: the DPO model follows constraints clearly more often
    than the untouched base both on held-out rows of the training generator and on prompts phrased by someone else,
    and keeps the base's free-form capability and answer length within loose bounds (the release gates are the
    pipeline's verdict, with tighter bounds; a different CPU's float rounding can move a question or two)."""
    import yaml

    from posttrain.pipeline.eval_stages import GateFailed
    from posttrain.pipeline.registry import STAGES
    from posttrain.pipeline.runner import run_pipeline
    from posttrain.pipeline.load import parse_pipeline

    tree = yaml.safe_load((ROOT / "examples/quickstart.yaml").read_text())
    tree["run_dir"] = str(tmp_path / "run")
    monkeypatch.chdir(ROOT)
    try:
        run_pipeline(parse_pipeline(tree, STAGES))
    except GateFailed:
        pass
    (eval_dir,) = (tmp_path / "run").glob("eval-*")
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    ind, ood = "group/in_distribution", "group/out_of_distribution"
    assert metrics[f"{ind}/constraints/pass_rate"] - metrics[f"base/{ind}/constraints/pass_rate"] >= 0.10, metrics
    assert metrics[f"{ood}/constraints/pass_rate"] - metrics[f"base/{ood}/constraints/pass_rate"] >= 0.05, metrics
    assert metrics[f"{ood}/constraints/pass_rate/delta_vs_base/ci_low"] > 0, metrics
    assert metrics[f"base/{ood}/capability/accuracy"] - metrics[f"{ood}/capability/accuracy"] <= 0.05, metrics
    assert 0.6 <= metrics[f"{ood}/length/paired_words_ratio_to_base"] <= 1.4, metrics
    assert "degeneration/delta_vs_base" in metrics
    assert (tmp_path / "run" / "report.html").exists()
