"""training/run.py::TrainingRun: the run around every trainer's loop (output folder checked first, config and
inputs recorded, a failure marks the manifest failed, outputs and summary recorded on success)."""

import json
import sys

from pathlib import Path

import pytest
import yaml

from posttrain.config import ConfigError, build_config
from posttrain.training.run import TrainingRun, split_off_eval


def config(tmp_path, **train):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    ref = tmp_path / "ref"
    ref.mkdir(exist_ok=True)
    (ref / "weights.bin").write_bytes(b"reference")
    return build_config("dpo", {"model": {"name": "tiny-random"}, "data": {"train": str(data)},
                                "loss": {"reference_model": str(ref)},
                                "train": {"output_dir": str(tmp_path / "out"), "progress": False, **train}})


def manifest(tmp_path):
    return json.loads((tmp_path / "out" / "manifest.json").read_text())


def test_open_records_the_config_and_every_input(tmp_path):
    cfg = config(tmp_path)
    run = TrainingRun(cfg, "dpo")
    extra = tmp_path / "rm"
    extra.mkdir()
    run.open({"reward.reward_model": str(extra)})
    m = manifest(tmp_path)
    assert m["status"] == "running" and m["stage"] == "dpo"
    assert list(m["inputs"]) == ["model", "data.train", "loss.reference_model", "reward.reward_model"]
    assert m["inputs"]["data.train"]["hash"] and m["inputs"]["loss.reference_model"]["hash"]
    written = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert written["loss"]["beta"] == 0.1 and written["train"]["output_dir"] == str(tmp_path / "out")


def test_success_records_summary_and_outputs(tmp_path):
    run = TrainingRun(config(tmp_path), "dpo")
    run.open()

    def save(summary, path):
        (path / "model").mkdir()
        (path / "model" / "w").write_text("1")
        (path / "extra.json").write_text("{}")
        return {**summary, "saved": 1}, {"extra": "extra.json"}

    assert run.train_and_save(lambda: {"loss": 0.5}, save) == {"loss": 0.5, "saved": 1}
    m = manifest(tmp_path)
    assert m["status"] == "completed" and m["metrics"] == {"loss": 0.5, "saved": 1}
    assert set(m["outputs"]) == {"model", "metrics", "extra"} and m["outputs"]["extra"]["hash"]


@pytest.mark.parametrize("where", ["train", "save"])
def test_a_failure_in_training_or_saving_marks_the_run_failed_and_is_raised(tmp_path, where):
    run = TrainingRun(config(tmp_path), "dpo")
    run.open()

    def boom(*_):
        raise RuntimeError(f"{where} broke")

    with pytest.raises(RuntimeError, match=f"{where} broke"):
        run.train_and_save(boom if where == "train" else lambda: {}, boom if where == "save" else None)
    m = manifest(tmp_path)
    assert (m["status"], m["error"]) == ("failed", f"RuntimeError: {where} broke")


def test_guard_marks_failed_only_once_the_folder_is_open(tmp_path):
    run = TrainingRun(config(tmp_path), "dpo")
    with pytest.raises(ValueError):
        with run.guard():
            raise ValueError("before open")
    assert not (tmp_path / "out").exists()  # nothing written for a failure before the folder is opened
    run.open()
    with pytest.raises(ValueError):
        with run.guard():
            raise ValueError("while sampling")
    assert manifest(tmp_path)["error"] == "ValueError: while sampling"


def test_output_dir_checked_before_anything_else(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty; set train.resume=true"):
        TrainingRun(config(tmp_path), "dpo")
    run = TrainingRun(config(tmp_path, overwrite=True), "dpo")
    assert (tmp_path / "out" / "keep.txt").exists()  # replaced only when the run folder is opened
    run.open()
    assert not (tmp_path / "out" / "keep.txt").exists()


def test_split_off_eval_is_seeded_and_keeps_order():
    rows = list(range(20))
    train, held = split_off_eval(rows, 0.25, seed=3)
    assert len(held) == 5 and sorted(train + held) == rows and train == sorted(train) and held == sorted(held)
    assert split_off_eval(rows, 0.25, seed=3) == (train, held) and split_off_eval(rows, 0.25, seed=4) != (train, held)
    assert len(split_off_eval(rows, 0.001, seed=0)[1]) == 1


@pytest.mark.parametrize("command,override,message", [
    ("dpo", {"peft": {"method": "qlora"}}, "peft.method=qlora with parallel.strategy=fsdp2: 4-bit base weights"),
    ("grpo", {"rollout": {"backend": "vllm"}}, "rollout.backend=vllm with parallel.strategy=fsdp2: syncing sharded"),
])
def test_fsdp2_combinations_not_run_yet_stop_before_anything(tmp_path, command, override, message):
    cfg = build_config(command, {"model": {"name": "tiny-random"}, "data": {"train": str(tmp_path / "p.jsonl")},
                                 "parallel": {"strategy": "fsdp2"}, "train": {"output_dir": str(tmp_path / "out")},
                                 **override})
    with pytest.raises(ConfigError, match="^" + message):
        TrainingRun(cfg, command)
    assert not (tmp_path / "out").exists()
    cfg.parallel.strategy = "ddp"
    TrainingRun(cfg, command)  # the same config under ddp passes this check


@pytest.mark.parametrize("command,override,message", [
    ("dpo", {"peft": {"method": "qlora"}}, "peft.method=qlora with parallel.strategy=deepspeed: 4-bit base weights"),
    ("grpo", {"rollout": {"backend": "vllm"}}, "rollout.backend=vllm with parallel.strategy=deepspeed: syncing"),
    ("online_dpo", {"rollout": {"backend": "vllm"}}, "rollout.backend=vllm with parallel.strategy=deepspeed"),
    ("sft", {"train": {"on_nonfinite": "skip"}}, "train.on_nonfinite=skip with parallel.strategy=deepspeed"),
    ("sft", {"missing": True}, r"parallel.strategy=deepspeed: DeepSpeed is not installed; pip install "
                               r"'posttrain\[deepspeed\]'"),
])
def test_deepspeed_combinations_not_run_stop_before_anything(tmp_path, monkeypatch, command, override, message):
    if override.pop("missing", False):
        monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed -> ImportError
    kind = "online-dpo" if command == "online_dpo" else command
    train = {"output_dir": str(tmp_path / "out"), **override.pop("train", {})}
    cfg = build_config(kind, {"model": {"name": "tiny-random"}, "data": {"train": str(tmp_path / "p.jsonl")},
                              "parallel": {"strategy": "deepspeed"}, "train": train, **override})
    with pytest.raises(ConfigError, match="^" + message):
        TrainingRun(cfg, command)
    assert not (tmp_path / "out").exists()


def test_mix_sft_with_zero3_is_refused_and_with_zero2_accepted():
    base = {"data": {"train": "p.jsonl"}, "mix_sft": {"path": "s.jsonl"}}
    with pytest.raises(ConfigError, match="mix_sft with parallel.strategy=deepspeed is not supported"):
        build_config("dpo", {**base, "parallel": {"strategy": "deepspeed", "zero_stage": 3}})
    cfg = build_config("dpo", {**base, "parallel": {"strategy": "deepspeed", "zero_stage": 2}})
    assert (cfg.parallel.strategy, cfg.parallel.zero_stage) == ("deepspeed", 2)


def test_an_unknown_parallel_strategy_is_a_config_error():
    with pytest.raises(ConfigError, match="parallel.strategy"):
        build_config("sft", {"data": {"train": "x.jsonl"}, "parallel": {"strategy": "zero3"}})


@pytest.mark.parametrize("name", ["ddp", "fsdp2", "multi_node", "zero2", "zero3"])
def test_shipped_accelerate_configs_select_their_strategy(name):
    """examples/accelerate/*.yaml parse with accelerate's own reader; launched with them, a run takes the strategy
    their distributed_type names (FSDP -> fsdp2, plain multi-GPU keeps the configured one)."""
    from accelerate.commands.config.config_args import ClusterConfig

    from posttrain.training.parallel import launcher_strategy

    root = Path(__file__).parents[3]
    cluster = ClusterConfig.from_yaml_file(str(root / "examples" / "accelerate" / f"{name}.yaml"))
    expected = {"ddp": ("MULTI_GPU", "ddp"), "fsdp2": ("FSDP", "fsdp2"), "multi_node": ("FSDP", "fsdp2"),
                "zero2": ("DEEPSPEED", "deepspeed"), "zero3": ("DEEPSPEED", "deepspeed")}[name]
    assert (cluster.distributed_type.value, launcher_strategy(cluster.distributed_type, "ddp",
                                                              cluster.num_processes)) == expected
    if name.startswith("zero"):  # the stage launcher_zero_stage reads (accelerate passes it on as this env var)
        assert cluster.deepspeed_config["zero_stage"] == int(name[-1])
    if name == "multi_node":
        assert cluster.num_machines == 2 and cluster.num_processes == 16


def test_launch_type_decides_the_strategy_or_stops_with_one_line():
    from accelerate.utils import DistributedType

    from posttrain.training.parallel import launcher_strategy

    assert launcher_strategy(DistributedType.NO, "ddp", 1) == "ddp"
    assert launcher_strategy(DistributedType.MULTI_CPU, "fsdp2", 2) == "fsdp2"  # torchrun + the config key
    assert launcher_strategy(DistributedType.FSDP, "ddp", 8) == "fsdp2"
    assert launcher_strategy(DistributedType.DEEPSPEED, "ddp", 8) == "deepspeed"
    with pytest.raises(ConfigError, match="FSDP config and 1 process: there is nothing to shard over"):
        launcher_strategy(DistributedType.FSDP, "ddp", 1)


def test_an_optimizer_built_before_sharding_is_caught():
    """fully_shard replaces every parameter; an optimizer built before holds the old tensors (the loss would never
    move). Replacing a parameter the same way is what check_optimizer_covers must notice."""
    import torch

    from posttrain.training.parallel import check_optimizer_covers

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    model[1].bias.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    check_optimizer_covers(model, optimizer)
    model[0].weight = torch.nn.Parameter(model[0].weight.detach().clone())  # what sharding does to every parameter
    with pytest.raises(RuntimeError, match=r"does not hold 1 of the model's trainable parameters \(first: 0.weight\)"):
        check_optimizer_covers(model, optimizer)
