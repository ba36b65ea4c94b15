"""The command table (posttrain/commands.py) is the one place that lists the training commands: every row is a
CLI command and a pipeline stage, with the same config class, and the two reach the same trainer."""

import pytest
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.commands import BY_STAGE, TRAINING_COMMANDS, command
from posttrain.config import COMMANDS, SFTConfig, load_config
from posttrain.pipeline.registry import STAGES, training_config


def test_every_training_command_is_in_the_cli_and_the_pipeline_with_one_config_class(tmp_path):
    cli = {c.name for c in app.registered_commands}
    for row in TRAINING_COMMANDS:
        assert row.name in cli, row.name
        assert row.stage in STAGES and STAGES[row.stage].main_metric == row.main_metric
        assert row.config is COMMANDS[row.name]
        from_pipeline = training_config(row.stage, {"data": {"train": "x.jsonl"}}, tmp_path, False)
        from_cli = load_config(row.name, None, ["data.train=x.jsonl", f"train.output_dir={tmp_path}"])
        assert type(from_pipeline) is type(from_cli) is row.config
        assert callable(row.trainer())
    assert {r.name for r in TRAINING_COMMANDS} == set(COMMANDS)
    assert len(BY_STAGE) == len(TRAINING_COMMANDS)


def test_rows_are_found_by_cli_or_stage_name():
    assert command("reward-model") is command("reward_model")
    assert command("sft").config is SFTConfig and command("sft").data_kind == "sft"
    with pytest.raises(KeyError):
        command("sftt")


def test_cli_help_lists_each_training_command_with_its_table_help():
    out = CliRunner().invoke(app, ["--help"], terminal_width=200).output
    for row in TRAINING_COMMANDS:
        assert row.name in out
    assert command("online-dpo").help.split(":")[0] in out


def test_stage_inputs_add_the_rows_extra_files():
    params = {"model": {"name": "m"}, "data": {"train": "p.jsonl"},
              "online": {"judges": [{"type": "reward_model", "model": "rm"}, {"type": "verifier"}]}}
    assert STAGES["online_dpo"].inputs(params) == ["m", "p.jsonl", "rm"]
    assert STAGES["grpo"].inputs({"model": {"name": "m"}, "data": {"train": "p.jsonl"}}) == ["m", "p.jsonl"]
