"""Every shipped pipeline example parses and plans: each stage's config is checked (keys, types, files, judges,
pair options) as `posttrain run` checks it before the first stage runs, with nothing run or written."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
PIPELINES = sorted(p for p in (ROOT / "examples").glob("*.yaml") if "stages" in yaml.safe_load(p.read_text()))


def test_the_pipeline_examples_are_found():
    names = {p.name for p in PIPELINES}
    assert {"quickstart.yaml", "recipe_repair.yaml", "pipeline_rounds_tiny.yaml"} <= names


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_pipeline_example_plans(path, monkeypatch, tmp_path):
    from posttrain.pipeline.registry import STAGES
    from posttrain.pipeline.runner import plan_pipeline
    from posttrain.pipeline.load import parse_pipeline

    monkeypatch.chdir(ROOT)  # the examples name their data relative to the repository root
    tree = yaml.safe_load(path.read_text())
    tree["run_dir"] = str(tmp_path / "run")
    plans = plan_pipeline(parse_pipeline(tree, STAGES, where=str(path)))
    assert plans and not (tmp_path / "run").exists()
