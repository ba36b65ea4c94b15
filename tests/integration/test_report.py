"""`posttrain report` on a real run: the tiny pipeline (sft -> generate -> judge -> dpo) plus eval against the SFT
baseline and gates (one passing, one failing), then the report opened in real headless Chromium: the rendered DOM
has every section and its SVG charts, and a screenshot is not blank."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner
from posttrain.cli import app as main_app


from posttrain.pipeline.eval_stages import GateFailed
from posttrain.pipeline.registry import STAGES
from posttrain.pipeline.runner import run_pipeline
from posttrain.pipeline.load import load_pipeline

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "pipeline_tiny.yaml"
SECTIONS = ("summary", "training", "pairs", "eval", "lengths", "gates")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("report")
    suite = tmp / "suite.jsonl"
    suite.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "prompt": "Say hi in lowercase.", "kind": "constraint",
         "constraints": [{"kind": "lowercase", "args": {}}]},
        {"id": "b", "prompt": "Name a colour. Do not use commas.", "kind": "constraint",
         "constraints": [{"kind": "no_commas", "args": {}}]},
        {"id": "c", "prompt": "Reply with one word in lowercase.", "kind": "constraint",
         "constraints": [{"kind": "lowercase", "args": {}}]}]))
    tree = yaml.safe_load(EXAMPLE.read_text())
    tree["stages"]["eval"] = {"command": "eval", "config": {
        "model": "tiny-random", "adapter": "${dpo.output}/model", "baseline": "tiny-random",
        "baseline_adapter": "${sft.output}/model", "suites": [str(suite)], "max_new_tokens": 4}}
    tree["stages"]["gate"] = {"command": "gate", "config": {
        "metrics": "${eval.output}/metrics.json",
        "gates": [{"metric": "constraints/n", "min": 3}, {"metric": "constraints/n", "max": 1}]}}
    pipeline_yaml = tmp / "pipeline.yaml"
    pipeline_yaml.write_text(yaml.safe_dump(tree, sort_keys=False))
    run = tmp / "run"
    overrides = [f"run_dir={run}", f"sft.data.train={REPO / 'examples/data/sft_demos.jsonl'}",
                 f"generate.prompts={REPO / 'examples/data/prompts_train.jsonl'}", "dpo.optim.max_steps=3"]
    try:
        with pytest.raises(GateFailed):  # the second gate fails on purpose: the report must show it red
            run_pipeline(load_pipeline(pipeline_yaml, overrides, commands=STAGES))
    finally:
        torch.set_num_threads(before)
    return run


def test_report_command_writes_report_and_prints_summary(run_dir):
    from posttrain.report.cli import app

    result = CliRunner().invoke(app, [str(run_dir)])
    assert result.exit_code == 0, result.output
    assert f"report: {run_dir / 'report.html'}" in result.output
    for stage in ("sft", "generate", "judge", "dpo", "eval", "gate"):
        assert stage in result.output
    assert "FAIL 1/2" in result.output
    html = (run_dir / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # self-contained: nothing fetched
    assert "<script" not in html  # a static page: no script of ours, and user text is escaped
    assert CliRunner().invoke(app, [str(run_dir / "missing")]).exit_code == 2


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs it as root)")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    from posttrain.report import write_report

    report = write_report(run_dir)
    url = report.resolve().as_uri()
    dom = chromium(["--dump-dom", url], tmp_path / "profile").stdout
    assert "posttrain run report" in dom
    for sid in SECTIONS:  # each section exists, has its heading and (except summary) is not empty
        m = re.search(rf'<section id="{sid}"><h2>[^<]+</h2>(.*?)</section>', dom, re.S)
        assert m, f"section {sid} missing from the rendered DOM"
    sections = dict(re.findall(r'<section id="(\w+)">(.*?)</section>', dom, re.S))
    for sid in ("training", "pairs", "lengths"):
        assert "not in this run" not in sections[sid], sid
        assert "<svg" in sections[sid] and "<title>" in sections[sid], f"no chart in {sid}"
    assert len(re.findall(r"<svg\b", sections["training"])) >= 4  # sft loss; dpo loss, margins, accuracy
    assert "<polyline" in sections["training"]
    assert "rewards/margins" in sections["training"] and "rewards/accuracy" in sections["training"]
    assert "pairs_kept" in sections["pairs"] and "baseline" in sections["lengths"]
    assert "constraints/pass_rate" in sections["eval"] and "delta" in sections["eval"]
    assert sections["gates"].count('class="fail"') >= 2 and 'class="pass"' in sections["gates"]

    shot = tmp_path / "shot.png"
    chromium([f"--screenshot={shot}", "--window-size=1200,2000", "--hide-scrollbars", url], tmp_path / "profile2")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1200, 2000)
    assert len(data) > 30_000, f"screenshot is only {len(data)} bytes: a blank page?"


def test_report_shows_lr_grad_norm_hyperparameters_and_samples(run_dir):
    from posttrain.report.html import render_report
    from posttrain.report.load import load_run

    html = render_report(load_run(run_dir))
    training = html.split('<section id="training">')[1].split("</section>")[0]
    assert "dpo: lr" in training and "dpo: grad_norm" in training and "dpo: tokens_per_s" in training
    assert "resolved hyperparameters (config.yaml)" in training and "max_steps: 3" in training
    assert "Sample pairs (the first" in html and "Sample generations (model vs baseline)" in html


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs it as root)")
def test_comparison_of_two_runs_in_headless_chromium(run_dir, tmp_path):
    """`posttrain report A B`: B is A with one eval metric changed; the deltas table and both runs' curves render."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(run_dir, other, symlinks=True)
    manifest = json.loads((other / "manifest.json").read_text())
    eval_folder = other / Path(manifest["stages"]["eval"]["folder"]).name
    for stage in manifest["stages"].values():  # the copy's manifest points at its own folders
        stage["folder"] = str(other / Path(stage["folder"]).name)
    (other / "manifest.json").write_text(json.dumps(manifest))
    metrics = json.loads((eval_folder / "metrics.json").read_text())
    metrics["constraints/pass_rate"] = metrics["constraints/pass_rate"] + 0.25
    (eval_folder / "metrics.json").write_text(json.dumps(metrics))
    rows = [json.loads(line) for line in (eval_folder / "responses.jsonl").read_text().splitlines()]
    for r in rows:  # B's model passes exactly the rows A's model failed
        if r["role"] == "model":
            r["passed"] = not r["passed"]
    (eval_folder / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    gained = sum(1 for r in rows if r["role"] == "model" and r["passed"])
    out = tmp_path / "compare.html"
    res = CliRunner().invoke(main_app, ["report", str(run_dir), str(other), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert (f"eval constraints/pass_rate: B - A {(2 * gained - 3) / 3:+.3f} [" in res.output
            and f"B gained {gained} rows, lost {3 - gained}:" in res.output)
    dom = chromium(["--dump-dom", out.resolve().as_uri()], tmp_path / "profile").stdout
    table = re.search(r'<section id="compare-metrics">(.*?)</section>', dom, re.S).group(1)
    row = re.search(r"<td>eval</td><td>constraints/pass_rate</td>(.*?)</tr>", table, re.S).group(1)
    assert row.endswith("<td class=\"num\">0.25</td>")  # the last column: B - A
    paired = re.search(r'<section id="compare-paired">(.*?)</section>', dom, re.S).group(1)
    row = re.search(r"<td>eval</td><td>constraints/pass_rate</td>(.*?)</tr>", paired, re.S).group(1)
    assert f'<td class="num">{gained}</td><td class="num">{3 - gained}</td>' in row
    curves = re.search(r'<section id="compare-curves">(.*?)</section>', dom, re.S).group(1)
    assert "A loss" in curves and "B loss" in curves and curves.count("<polyline") >= 4
