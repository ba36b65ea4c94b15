"""examples/quickstart.yaml's stage graph end to end on tiny-random (the real model's run is `make demo` and the slow
test in test_builtin_slow.py): the shipped replies are augmented, SFT trains on those rows, the repair pairs of the
same replies train DPO from the SFT model, the eval measures the model against the base on the six suites, the
release gates stop a model that learnt nothing (so export does not run), and a rerun reuses every finished stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from posttrain.pipeline.eval_stages import GateFailed
from posttrain.pipeline.load import load_pipeline
from posttrain.pipeline.registry import STAGES
from posttrain.pipeline.runner import run_pipeline

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "quickstart.yaml"
TRAINED = ["augment", "sft", "repair_pairs", "dpo"]


def overrides(run_dir: Path) -> list[str]:
    replies = REPO / "examples/data/base_replies.jsonl"
    return [f"run_dir={run_dir}", f"augment.candidates={replies}", f"repair_pairs.candidates={replies}",
            "sft.model.name=tiny-random", "sft.optim.max_steps=2", "dpo.optim.max_steps=2",
            "eval.baseline=tiny-random", "eval.base=tiny-random",
            f"eval.suites=[{REPO / 'examples/data/prompts_diverse_heldout.jsonl'}@8, capability, refusal, "
            "constraints_ood@8, ifeval_sample@8, capability_freeform@8]",
            f"gate.gates_file={REPO / 'examples/gates.yaml'}"]


def manifest_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def test_quickstart_stages_chain_and_the_gates_stop_an_untrained_model(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_dir = tmp_path / "run"
        with pytest.raises(GateFailed, match="gates failed"):
            run_pipeline(load_pipeline(EXAMPLE, overrides(run_dir), commands=STAGES))
        first = manifest_of(run_dir)
        stages = first["stages"]
        assert [stages[name]["status"] for name in TRAINED] == ["done"] * 4
        assert stages["eval"]["status"] == "done" and stages["gate"]["status"] == "failed"
        assert "export" not in stages or stages["export"]["status"] != "done"

        augmented = stages["augment"]["metrics"]
        assert augmented["replies"] == 433 and augmented["examples"] == stages["sft"]["metrics"]["train/rows"]
        pairs = Path(stages["repair_pairs"]["folder"]) / "pairs.jsonl"
        assert stages["repair_pairs"]["metrics"]["pairs"] == len(pairs.read_text().splitlines()) > 0
        dpo_config = yaml.safe_load((Path(stages["dpo"]["folder"]) / "config.yaml").read_text())
        assert dpo_config["data"]["train"] == str(pairs)
        assert dpo_config["model"]["name"] == f"{stages['sft']['folder']}/model"  # from (and referenced to) the SFT model

        metrics = json.loads((Path(stages["eval"]["folder"]) / "metrics.json").read_text())
        for key in ("group/in_distribution/constraints/pass_rate", "group/out_of_distribution/constraints/pass_rate",
                    "base/group/out_of_distribution/constraints/pass_rate",
                    "group/out_of_distribution/capability/accuracy", "degeneration/delta_vs_base",
                    "group/out_of_distribution/length/median_words", "refusal/benign_rate",
                    "format/unrequested_lowercase_rate"):
            assert key in metrics, key
        verdict = json.loads((Path(stages["gate"]["folder"]) / "gates.json").read_text())
        assert verdict["passed"] is False and len(verdict["results"]) == 16

        with pytest.raises(GateFailed):
            run_pipeline(load_pipeline(EXAMPLE, overrides(run_dir), commands=STAGES))
        again = manifest_of(run_dir)["stages"]
        assert [again[name]["status"] for name in [*TRAINED, "eval"]] == ["skipped"] * 5
    finally:
        torch.set_num_threads(before)
