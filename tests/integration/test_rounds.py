"""Rounds end to end on tiny-random (examples/pipeline_rounds_tiny.yaml): sft -> 2 x (generate -> judge -> dpo ->
eval) -> best round -> export; round 2 starts from round 1's model with the SFT model pinned as its reference, a
rerun reuses both rounds, a round that does not improve stops the rounds. And the pinned reference itself
(``loss.reference_model``): its log-probs are the named model's, and another vocabulary is one clear error."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from posttrain.pipeline.registry import STAGES
from posttrain.pipeline.runner import NOT_RUN, run_pipeline
from posttrain.pipeline.load import load_pipeline
from tests.integration.helpers import pair_rows, sft_rows, tiny_config, write_jsonl

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "pipeline_rounds_tiny.yaml"
ROUND = ["generate", "judge", "dpo", "eval"]
ORDER = ["sft", *(f"r{k}_{s}" for k in (1, 2) for s in ROUND), "rounds", "export"]


def run(run_dir: Path, *extra: str) -> dict:
    overrides = [f"run_dir={run_dir}", f"sft.data.train={REPO / 'examples/data/sft_demos.jsonl'}",
                 f"rounds.stages.generate.prompts={REPO / 'examples/data/prompts_train.jsonl'}", *extra]
    return run_pipeline(load_pipeline(EXAMPLE, overrides, commands=STAGES))


def statuses(manifest: dict) -> dict[str, str]:
    return {name: entry["status"] for name, entry in manifest["stages"].items()}


def folder(manifest: dict, name: str) -> Path:
    return Path(manifest["stages"][name]["folder"])


def record(manifest: dict, name: str) -> dict:
    return json.loads((folder(manifest, name) / "stage.json").read_text())


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("rounds") / "run"
    yield run_dir, run(run_dir)
    torch.set_num_threads(before)


def test_round_two_starts_from_round_one_with_the_sft_model_pinned_as_reference(first_run):
    run_dir, manifest = first_run
    assert manifest["order"] == ORDER and statuses(manifest) == dict.fromkeys(ORDER, "done")
    sft, r1 = folder(manifest, "sft") / "model", folder(manifest, "r1_dpo") / "model"
    # round 1 starts from the SFT model, round 2 from round 1's DPO model
    assert record(manifest, "r1_generate")["config"]["model"] == str(sft)
    assert record(manifest, "r2_generate")["config"]["model"] == str(r1)
    assert record(manifest, "r2_dpo")["config"]["model"]["name"] == str(r1)
    assert record(manifest, "r2_eval")["config"]["baseline"] == str(r1)
    # both rounds' DPO: the resolved config names the SFT model as the reference, and the run manifest records
    # it among the stage's inputs with its hash
    for name in ("r1_dpo", "r2_dpo"):
        resolved = yaml.safe_load((folder(manifest, name) / "config.yaml").read_text())
        assert resolved["loss"]["reference_model"] == str(sft)
        assert manifest["stages"][name]["inputs"][str(sft)]["hash"].startswith("sha256:")
        own = json.loads((folder(manifest, name) / "manifest.json").read_text())["inputs"]["loss.reference_model"]
        assert own["location"] == str(sft) and own["hash"].startswith("sha256:")
    # round 2's reference log-probs are not its starting model's: at its first step policy != reference
    first_loss = json.loads((folder(manifest, "r2_dpo") / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert first_loss != pytest.approx(math.log(2), abs=1e-6)
    # the best round's model is linked for the stages after the rounds; export merges through the link
    table = json.loads((folder(manifest, "rounds") / "rounds.json").read_text())
    assert table["metric"] == "constraints/pass_rate" and [r["ran"] for r in table["rounds"]] == [True, True]
    assert table["best_round"] == 2  # min_gain -1.0 in the example: every round counts as improving
    assert (folder(manifest, "rounds") / "model").resolve() == (folder(manifest, "r2_dpo") / "model").resolve()
    assert (folder(manifest, "export") / "model" / "config.json").is_file()


def test_a_rerun_reuses_both_rounds(first_run):
    run_dir, first = first_run
    again = run(run_dir)
    assert statuses(again) == dict.fromkeys(ORDER, "skipped")
    assert all(again["stages"][n]["key"] == first["stages"][n]["key"] for n in ORDER)


def test_a_round_that_does_not_improve_stops_the_rounds(first_run, tmp_path):
    src, first = first_run
    run_dir = tmp_path / "copy"
    shutil.copytree(src, run_dir, symlinks=True)
    # no pass-rate gain can exceed 1.0: round 1 cannot improve enough, so round 2 is not run
    stopped = run(run_dir, "rounds.improve.min_gain=1.0")
    assert {n: stopped["stages"][n]["status"] for n in ORDER} == {
        "sft": "skipped", **{f"r1_{s}": "skipped" for s in ROUND}, **{f"r2_{s}": NOT_RUN for s in ROUND},
        "rounds": "done", "export": "done"}
    reason = stopped["stages"]["r2_dpo"]["reason"]
    assert reason.startswith("r1_eval did not improve constraints/pass_rate by more than 1 (")
    # the best is the start (the SFT model): no round improved on it
    select = run_dir / Path(stopped["stages"]["rounds"]["folder"]).name
    assert json.loads((select / "rounds.json").read_text())["best_round"] == 0
    assert (select / "model").resolve() == (run_dir / Path(first["stages"]["sft"]["folder"]).name / "model").resolve()
    # back to the example's setting: round 2's folders were kept, so nothing reruns
    assert statuses(run(run_dir)) == dict.fromkeys(ORDER, "skipped")


# ---- the pinned reference (loss.reference_model) -------------------------------------------------------------

def reference_values(out: Path) -> dict[str, float]:
    """Every reference log-prob the DPO run cached (sequence key -> value)."""
    values: dict[str, float] = {}
    for part in (out / "refcache").glob("*/part-*.pt"):
        values.update(torch.load(part, weights_only=True))
    return values


def first_loss(out: Path) -> float:
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]


def test_pinned_reference_log_probs_are_the_named_models(tmp_path):
    from posttrain.trainers.preference import train_preference
    from posttrain.trainers.sft import train_sft

    torch.set_num_threads(1)
    train_sft(tiny_config("sft", write_jsonl(tmp_path / "sft.jsonl", sft_rows()), tmp_path / "sft"))
    start = str(tmp_path / "sft" / "model")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())

    def dpo(name: str, *extra: str) -> Path:
        train_preference(tiny_config("dpo", pairs, tmp_path / name, "optim.max_steps=1", *extra))
        return tmp_path / name

    plain = dpo("plain", f"model.name={start}")  # reference = the SFT model it starts from
    pinned = dpo("pinned", f"model.name={start}", "loss.reference_model=tiny-random")
    base = dpo("base")  # starts from tiny-random: reference = tiny-random
    assert first_loss(plain) == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 1
    assert first_loss(pinned) != pytest.approx(math.log(2), abs=1e-3)
    want, got, other = reference_values(base), reference_values(pinned), reference_values(plain)
    assert got.keys() == want.keys() == other.keys() and len(got) == 8  # one micro-batch of 4 pairs
    assert all(got[k] == pytest.approx(want[k], rel=1e-5) for k in want)  # tiny-random's log-probs
    assert all(abs(got[k] - other[k]) > 1e-3 for k in want)  # not the SFT model's
    # the cache is keyed by the reference: the pinned run's folder differs from the plain run's fingerprint
    assert {p.name for p in (pinned / "refcache").iterdir()} != {p.name for p in (plain / "refcache").iterdir()}


def test_pinned_reference_that_is_the_start_costs_no_second_model():
    from posttrain.losses import get_loss
    from posttrain.trainers.preference import pinned_reference

    cfg = tiny_config("dpo", Path("pairs.jsonl"), Path("out"), "loss.reference_model=tiny-random")
    assert pinned_reference(cfg, get_loss(cfg.loss.type), tokenizer=None) is None  # the ordinary reference already is tiny-random


def test_pinned_reference_with_another_vocabulary_is_one_line(tmp_path):
    from transformers import AutoTokenizer

    from posttrain.models.builtin import builtin_dir
    from posttrain.models.reference import ReferenceError_
    from posttrain.trainers.preference import train_preference

    other = tmp_path / "other"
    shutil.copytree(builtin_dir("tiny-random"), other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<extra-token>"])
    tokenizer.save_pretrained(other)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())
    with pytest.raises(ReferenceError_) as e:
        train_preference(tiny_config("dpo", pairs, tmp_path / "out", f"loss.reference_model={other}"))
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"loss.reference_model '{other}': its tokenizer differs")
    assert "'<extra-token>'" in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing written
