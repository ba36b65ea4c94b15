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


@pytest.mark.slow
def test_quickstart_pipeline_improves_heldout_constraints(tmp_path, monkeypatch):
    """`make demo`'s pipeline, end to end on the builtin model: the DPO model follows held-out constraints of the
    training data's own templates clearly more often than the SFT model, at about the same length, and the eval
    measures the out-of-distribution suites and the base model alongside. The release gates themselves are the
    pipeline's verdict, reported, not asserted here (issue 16: today's recipe does not carry its gain out of
    distribution, and its out-of-distribution gates say so)."""
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
    ind = "group/in_distribution/constraints/pass_rate"
    assert metrics[ind] - metrics[f"baseline/{ind}"] >= 0.05, metrics
    assert 0.75 <= metrics["group/in_distribution/length/mean_words_ratio_to_baseline"] <= 1.25, metrics
    ood = "group/out_of_distribution"
    for key in (f"{ood}/constraints/pass_rate", f"base/{ood}/constraints/pass_rate", "degeneration/delta_vs_base",
                f"{ood}/length/median_words_ratio_to_base"):
        assert key in metrics, key
    assert (tmp_path / "run" / "report.html").exists()
