"""`posttrain run` end to end on tiny-random: sft -> generate -> judge (verifier) -> dpo from
examples/pipeline_tiny.yaml. Caching, a changed middle stage, --force, a SIGKILL during DPO, `posttrain status`."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from posttrain.pipeline.cli import app
from posttrain.pipeline.registry import STAGES
from posttrain.pipeline.runner import run_pipeline
from posttrain.pipeline.load import load_pipeline

from .helpers import kill_when

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "pipeline_tiny.yaml"
ORDER = ["sft", "generate", "judge", "dpo"]


def overrides(run_dir: Path, *extra: str) -> list[str]:
    # Absolute data paths so the test does not depend on the working directory; three DPO steps leave time to
    # SIGKILL the run between its first checkpoint and its end.
    return [f"run_dir={run_dir}", f"sft.data.train={REPO / 'examples/data/sft_demos.jsonl'}",
            f"generate.prompts={REPO / 'examples/data/prompts_train.jsonl'}", "dpo.optim.max_steps=3", *extra]


def run(run_dir: Path, *extra: str, force: tuple[str, ...] = ()) -> dict:
    return run_pipeline(load_pipeline(EXAMPLE, overrides(run_dir, *extra), commands=STAGES), force)


def statuses(manifest: dict) -> dict[str, str]:
    return {name: manifest["stages"][name]["status"] for name in ORDER}


def snapshot(manifest: dict) -> dict[str, int]:
    """mtime (ns) of every file in every stage folder."""
    out = {}
    for name in ORDER:
        folder = Path(manifest["stages"][name]["folder"])
        out.update({str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()})
    return out


def losses(folder: Path) -> list[float]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["loss"] for r in rows if "split" not in r]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("pipeline") / "run"
    manifest = run(run_dir)
    dpo = Path(manifest["stages"]["dpo"]["folder"])
    # What the uninterrupted DPO produced, kept before other tests rewrite this run_dir.
    reference = {"losses": losses(dpo), "adapter": load_file(dpo / "model" / "adapter_model.safetensors")}
    yield run_dir, manifest, reference
    torch.set_num_threads(before)


def test_first_run_runs_every_stage_and_chains_outputs(first_run):
    run_dir, manifest, reference = first_run
    assert statuses(manifest) == dict.fromkeys(ORDER, "done") and manifest["status"] == "completed"
    stages = manifest["stages"]
    for name in ORDER:
        folder = Path(stages[name]["folder"])
        assert folder.parent == run_dir and folder.name == f"{name}-{stages[name]['key'][:12]}"
        assert (folder / "stage.json").exists() and (run_dir / "latest" / name).resolve() == folder.resolve()
    assert stages["judge"]["metrics"]["pairs_kept"] >= 2
    assert len(reference["losses"]) == 3
    dpo_config = json.loads((Path(stages["dpo"]["folder"]) / "stage.json").read_text())["config"]
    assert dpo_config["data"]["train"] == f"{stages['judge']['folder']}/pairs.jsonl"
    assert dpo_config["model"]["adapter"] == f"{stages['sft']['folder']}/model"
    sft_inputs = stages["sft"]["inputs"]
    assert sft_inputs[str(REPO / "examples/data/sft_demos.jsonl")]["hash"].startswith("sha256:")
    assert stages["dpo"]["inputs"][dpo_config["data"]["train"]]["hash"].startswith("sha256:")
    written = json.loads((run_dir / "manifest.json").read_text())
    assert written["stages"]["dpo"]["key"] == stages["dpo"]["key"] and "torch" in written["versions"]


def test_rerun_skips_then_a_changed_middle_stage_and_force_rerun_downstream(first_run):
    run_dir, first, reference = first_run
    before = snapshot(first)
    again = run(run_dir)
    assert statuses(again) == dict.fromkeys(ORDER, "skipped")
    assert snapshot(again) == before  # nothing was rewritten: no training, no generation
    assert again["stages"]["dpo"]["metrics"] == first["stages"]["dpo"]["metrics"]

    changed = run(run_dir, "generate.seed=1")
    assert statuses(changed) == {"sft": "skipped", "generate": "done", "judge": "done", "dpo": "done"}
    keys = {n: (first["stages"][n]["key"], changed["stages"][n]["key"]) for n in ORDER}
    assert keys["sft"][0] == keys["sft"][1] and all(a != b for n, (a, b) in keys.items() if n != "sft")
    assert Path(first["stages"]["dpo"]["folder"]).exists()  # the old result stays cached
    back = run(run_dir)
    assert statuses(back) == dict.fromkeys(ORDER, "skipped")

    forced = run(run_dir, force=("judge",))
    assert statuses(forced) == {"sft": "skipped", "generate": "skipped", "judge": "done", "dpo": "done"}
    assert all(forced["stages"][n]["key"] == first["stages"][n]["key"] for n in ORDER)
    dpo = Path(forced["stages"]["dpo"]["folder"])
    assert losses(dpo) == pytest.approx(reference["losses"], rel=1e-5)
    for name in ("sft", "generate"):
        folder = Path(first["stages"][name]["folder"])
        assert {p: t for p, t in before.items() if p.startswith(str(folder))} == \
               {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_sigkill_during_dpo_resumes_to_the_uninterrupted_result(first_run, tmp_path, capfd):
    src, first, reference = first_run
    run_dir = tmp_path / "copy"
    shutil.copytree(src, run_dir, symlinks=True)  # keys do not depend on where the run lives
    dpo = run_dir / Path(first["stages"]["dpo"]["folder"]).name
    shutil.rmtree(dpo)  # the copy now needs only DPO (its old checkpoints must not satisfy the wait below)
    args = [sys.executable, "-m", "posttrain.pipeline.cli", "run", str(EXAMPLE), *overrides(run_dir)]
    # killed at a finished checkpoint: not step-N.tmp/, whose state.json exists just before its rename to step-N/
    kill_when(args, lambda: any(not p.parent.name.endswith(".tmp") for p in dpo.glob("checkpoints/*/state.json")),
              cwd=REPO, timeout=150)
    assert not (dpo / "stage.json").exists()
    assert json.loads((dpo / "manifest.json").read_text())["status"] == "running"
    killed = json.loads((run_dir / "manifest.json").read_text())
    assert killed["status"] == "running" and killed["stages"]["dpo"]["status"] == "running"

    torch.set_num_threads(1)
    capfd.readouterr()
    resumed = run(run_dir)
    assert "posttrain: resumed from" in capfd.readouterr().out  # from the killed run's checkpoint, not step 0
    assert statuses(resumed) == {"sft": "skipped", "generate": "skipped", "judge": "skipped", "dpo": "done"}
    assert resumed["stages"]["dpo"]["resumed"] is True and resumed["stages"]["dpo"]["folder"] == str(dpo)
    assert losses(dpo) == pytest.approx(reference["losses"], rel=1e-5)
    adapter = load_file(dpo / "model" / "adapter_model.safetensors")
    assert adapter.keys() == reference["adapter"].keys()
    for name, tensor in adapter.items():
        torch.testing.assert_close(tensor, reference["adapter"][name], rtol=1e-5, atol=1e-6)


def test_status_command_prints_every_stage(first_run):
    run_dir, first, _ = first_run
    result = CliRunner().invoke(app, ["status", str(run_dir)])
    assert result.exit_code == 0, result.output
    for name in ORDER:
        assert name in result.output
    assert first["stages"]["dpo"]["key"][:12] in result.output and "train/loss=" in result.output
    assert "pairs_kept=" in result.output
    missing = CliRunner().invoke(app, ["status", str(run_dir / "nope")])
    assert missing.exit_code == 2 and "no pipeline manifest" in missing.output


def test_eval_and_gate_stages_after_dpo(first_run, tmp_path):
    import yaml

    run_dir, first, _ = first_run
    suite = tmp_path / "suite.jsonl"
    suite.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "prompt": "Say hi in lowercase.", "kind": "constraint",
         "constraints": [{"kind": "lowercase", "args": {}}]},
        {"id": "b", "prompt": "Name a colour. Do not use commas.", "kind": "constraint",
         "constraints": [{"kind": "no_commas", "args": {}}]}]))
    tree = yaml.safe_load(EXAMPLE.read_text())
    tree["stages"]["eval"] = {"command": "eval", "config": {
        "model": "tiny-random", "adapter": "${dpo.output}/model", "suites": [str(suite)], "max_new_tokens": 3}}
    tree["stages"]["gate"] = {"command": "gate", "config": {
        "metrics": "${eval.output}/metrics.json", "gates": [{"metric": "constraints/n", "min": 2}]}}
    pipeline_yaml = tmp_path / "pipeline.yaml"
    pipeline_yaml.write_text(yaml.safe_dump(tree, sort_keys=False))

    passed = run_pipeline(load_pipeline(pipeline_yaml, overrides(run_dir), commands=STAGES))
    assert statuses(passed) == dict.fromkeys(ORDER, "skipped")  # the chain up to dpo is cached
    assert passed["stages"]["eval"]["status"] == "done" and passed["stages"]["gate"]["status"] == "done"
    eval_folder = Path(passed["stages"]["eval"]["folder"])
    assert json.loads((eval_folder / "metrics.json").read_text())["constraints/n"] == 2
    assert passed["stages"]["gate"]["metrics"] == {"gates_passed": 1, "gates_failed": 0}

    strict = "gate.gates=[{metric: constraints/n, min: 3}]"
    result = CliRunner().invoke(app, ["run", str(pipeline_yaml), *overrides(run_dir), strict])
    assert result.exit_code == 1 and "1 of 1 gates failed: constraints/n" in result.output
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["eval"]["status"] == "skipped" and manifest["stages"]["gate"]["status"] == "failed"
    verdict = json.loads((Path(manifest["stages"]["gate"]["folder"]) / "gates.json").read_text())
    assert verdict["passed"] is False and verdict["results"][0]["value"] == 2


def test_a_truncated_stage_output_is_recomputed_before_a_downstream_stage_trains_on_it(first_run, tmp_path):
    """Truncating judge's pairs.jsonl on a line boundary used to leave judge 'complete', so DPO (here forced, as
    after a changed DPO setting) trained on the shorter file under the same cache key."""
    src, first, reference = first_run
    run_dir = tmp_path / "copy"
    shutil.copytree(src, run_dir, symlinks=True)
    pairs = run_dir / Path(first["stages"]["judge"]["folder"]).name / "pairs.jsonl"
    full = pairs.read_text()
    assert len(full.splitlines()) >= 2
    torch.set_num_threads(1)
    said: list[str] = []
    for force in ((), ("dpo",)):
        pairs.write_text(full.splitlines(keepends=True)[0])
        said.clear()
        manifest = run_pipeline(load_pipeline(EXAMPLE, overrides(run_dir), commands=STAGES), force, echo=said.append)
        assert pairs.read_text() == full
        line = next(s for s in said if s.startswith("judge: "))
        assert line.startswith(f"judge: {pairs} changed since the stage finished (") and "recorded)" in line
        assert line.endswith(": recomputing")
        # judge rebuilt the same pairs, so DPO's recorded input still matches: skipped unless forced
        assert statuses(manifest) == {"sft": "skipped", "generate": "skipped", "judge": "done",
                                      "dpo": "done" if force else "skipped"}
    assert losses(run_dir / Path(first["stages"]["dpo"]["folder"]).name) == pytest.approx(reference["losses"],
                                                                                          rel=1e-5)
    dpo = run_dir / Path(first["stages"]["dpo"]["folder"]).name
    assert list((dpo / "refcache").glob("*/part-*.pt"))  # the reference cache lives in DPO's own folder
    assert not list(pairs.parent.glob("*.refcache"))
