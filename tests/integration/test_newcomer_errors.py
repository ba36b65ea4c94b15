"""What a newcomer meets first: help that shows the override syntax, --version and -h, a commented config for every
command that validates, and one exact line (exit 2, no traceback) for each common mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.config import COMMANDS, load_config

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _error(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_version_short_help_and_override_syntax_in_help():
    from posttrain import __version__

    assert runner.invoke(app, ["--version"]).output.strip() == f"posttrain {__version__}"
    short = runner.invoke(app, ["sft", "-h"])
    assert short.exit_code == 0
    text = " ".join(short.output.split())
    assert "[SECTION.KEY=VALUE]" in text and "optim.lr=1e-5" in text and "config show sft --doc" in text


@pytest.mark.parametrize("command", list(COMMANDS))
def test_config_show_doc_is_a_commented_config_that_validates(command, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the doc names the shipped example data, relative to a clone
    res = runner.invoke(app, ["config", "show", command, "--doc"])
    assert res.exit_code == 0, res.output
    doc = tmp_path / f"{command}.yaml"
    doc.write_text(res.stdout)
    assert res.stdout.splitlines()[2] == f"command: {command}" and res.stdout.count("\n  # ") > 20
    tree = yaml.safe_load(res.stdout)
    assert tree["command"] == command
    # every key of the config is in the file, with the value the command would use anyway
    defaults = load_config(command, None, [f"data.train={tree['data']['train']}"]).model_dump(mode="json")
    assert load_config(command, doc).model_dump(mode="json") == defaults
    checked = runner.invoke(app, ["config", "validate", str(doc), "--no-data"])
    assert checked.exit_code == 0, checked.output


def test_the_shipped_dpo_example_validates_before_its_sft_model_exists(monkeypatch):
    monkeypatch.chdir(ROOT)
    res = runner.invoke(app, ["config", "validate", "examples/dpo.yaml"])
    assert res.exit_code == 0, res.output
    assert "warning: model 'runs/sft/model': no such folder; the data rows were checked" in res.stderr
    assert "train/rows=480 eval/rows=120" in res.stderr


def test_newcomer_mistakes_are_one_exact_line(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert _error(["sft"]) == ("error: posttrain sft needs a config: posttrain sft CONFIG.yaml [section.key=value ...] "
                               "(e.g. examples/sft.yaml; `posttrain config show sft --doc > sft.yaml` writes one "
                               "with every key)")
    # an SFT file given to dpo: one line naming what was found and what is needed, not one line per row
    assert _error(["dpo", "examples/dpo.yaml", "model.name=tiny-random", "data.train=examples/data/sft_demos.jsonl",
                   f"train.output_dir={tmp_path / 'o1'}"]) == (
        "error: examples/data/sft_demos.jsonl: its rows look like sft data (first row's fields: messages), but this "
        "needs preference rows with prompt, chosen, rejected")
    # a training config given to `run`
    assert _error(["run", "examples/dpo.yaml"]) == (
        "error: examples/dpo.yaml is a `dpo` training config, not a pipeline: run `posttrain dpo examples/dpo.yaml` "
        "(a pipeline has run_dir and stages)")
    # YAML syntax: file, line and column
    bad = tmp_path / "bad.yaml"
    bad.write_text("command: sft\nmodel: {name: x\n")
    assert _error(["config", "validate", str(bad)]) == (
        f"error: {bad}:3:1: not valid YAML: expected ',' or '}}', but got '<stream end>' (while parsing a flow "
        "mapping)")
    # unknown keys, commands and model names: did you mean
    typo = tmp_path / "typo.yaml"
    typo.write_text("command: sft\ndata: {train: examples/data/sft_demos.jsonl}\noptim: {lrr: 0.001}\n")
    assert _error(["config", "validate", str(typo)]) == f"error: {typo}: key 'optim.lrr': unknown key (did you mean 'lr'?)"
    assert _error(["config", "show", "dpoo"]) == (
        f"error: unknown command 'dpoo' (did you mean 'dpo'?); choose one of: {', '.join(COMMANDS)}")
    from posttrain.models.resolve import _hub_error  # the message a hub load that failed offline ends in

    assert str(_hub_error("smollm2-135m", OSError("offline"))) == (
        "model 'smollm2-135m': could not load it from the Hugging Face Hub (no network to reach the Hugging Face "
        "Hub); did you mean 'smollm2-135m-instruct'? use a local folder or a builtin model (smollm2-135m-instruct, "
        "tiny-random)")
    # a data path that does not exist: said before any model is loaded
    assert _error(["sft", "examples/sft.yaml", "data.train=missing.jsonl", "model.name=smollm2-135m-instruct",
                   f"train.output_dir={tmp_path / 'o3'}"]) == "error: missing.jsonl: no such file or folder (data.train)"
