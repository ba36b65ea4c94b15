"""Gated redeploy: `posttrain promote` copies a run's model into a serving folder only after its gates passed, and
a running `posttrain serve SERVING/current` switches to it on SIGHUP (or POST /admin/reload) without failing a
request, recording which model answered each one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.data.runfolder import promoted_identity
from posttrain.feedback.store import FeedbackStore
from posttrain.pipeline.promote import PromotionError, promote
from posttrain.pipeline.spec import PipelineError

PROMPT = [{"role": "user", "content": "Say something."}]


def _run_dir(root: Path, model: Path, *, gate: str = "done", key: str = "a" * 64) -> Path:
    """A pipeline run folder as `posttrain run` leaves it: dpo -> eval -> gate -> merge, the merge's model copied
    from ``model``."""
    run = root / f"run-{key[:4]}"
    merge = run / f"merge-{key[:12]}"
    if not (merge / "model").exists():
        shutil.copytree(model, merge / "model")
    stages = {"dpo": {"command": "dpo", "after": [], "status": "done", "folder": str(run / "dpo-1")},
              "eval": {"command": "eval", "after": ["dpo"], "status": "done", "folder": str(run / "eval-1")},
              "gate": {"command": "gate", "after": ["eval"], "status": gate, "folder": str(run / "gate-1"),
                       "metrics": {"gates_passed": 5}},
              "merge": {"command": "merge", "after": ["gate", "dpo"], "status": "done", "key": key,
                        "folder": str(merge)}}
    if gate == "failed":
        stages["gate"]["error"] = "GateFailed: 1 of 5 gates failed: length/ratio_to_base: 0.5 < min 0.75"
    (run / "manifest.json").write_text(json.dumps({"status": "done" if gate == "done" else "failed",
                                                   "stages": stages}))
    return run


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, tiny_model_dir):
    """Model A (tiny-random) and model B (A's weights with noise added: other greedy answers), same tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("models")
    a, b = root / "a", root / "b"
    shutil.copytree(tiny_model_dir, a)
    shutil.copytree(tiny_model_dir, b)
    model = AutoModelForCausalLM.from_pretrained(a)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(b)
    return a, b


def test_promote_only_after_the_gates_passed(tmp_path, two_models):
    a, _ = two_models
    serving = tmp_path / "serving"
    with pytest.raises(PromotionError, match=r"gate 'gate' did not pass \(failed: GateFailed: 1 of 5 gates failed"):
        promote(_run_dir(tmp_path, a, gate="failed", key="f" * 64), "merge", serving)
    assert not serving.exists()  # nothing copied
    run = _run_dir(tmp_path, a)
    with pytest.raises(PromotionError, match=r"stage 'export' did not run \(stages: dpo, eval, gate, merge\)"):
        promote(run, "export", serving)
    # a run stopped by its gate never ran the merge: the message says why
    stopped = _run_dir(tmp_path, a, gate="failed", key="e" * 64)
    manifest = json.loads((stopped / "manifest.json").read_text())
    del manifest["stages"]["merge"]
    (stopped / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PromotionError, match="stage 'merge' did not run; the run stopped at stage 'gate': GateFailed"):
        promote(stopped, "merge", serving)
    target = promote(run, "merge", serving)
    assert target == serving / "models" / "merge-aaaaaaaaaaaa" and (serving / "current").resolve() == target
    record = json.loads((target / "promotion.json").read_text())
    assert record["id"] == "merge-aaaaaaaaaaaa" and record["gates"] == [
        {"name": "gate", "status": "done", "metrics": {"gates_passed": 5}}]
    # a run without any gate is refused: only a measured model is promoted
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["stages"]["gate"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PromotionError, match="no gate stage before or after it"):
        promote(run, "merge", serving)
    res = CliRunner().invoke(app, ["promote", str(run), "--to", str(serving)])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "no gate stage" in res.output



def test_first_deploy_of_a_base_model(tmp_path, tiny_model_dir):
    serving = tmp_path / "serving"
    res = CliRunner().invoke(app, ["promote", "--base", str(tiny_model_dir), "--to", str(serving)])
    assert res.exit_code == 0, res.output
    assert json.loads((serving / "current" / "promotion.json").read_text())["id"] == f"base-{tiny_model_dir.name}"
    assert promoted_identity(serving / "current") == (f"base-{tiny_model_dir.name}", f"base:{tiny_model_dir}")
    assert promoted_identity(tiny_model_dir) == (None, None)  # not promoted
    again = CliRunner().invoke(app, ["promote", "--base", str(tiny_model_dir), "--to", str(serving)])
    assert again.exit_code == 2 and "takes an untrained base once" in again.output
    neither = CliRunner().invoke(app, ["promote", "--to", str(serving)])
    assert neither.exit_code == 2 and "give a RUN_DIR" in neither.output


def _chat(url: str, timeout: float = 60) -> tuple[int, dict]:
    body = json.dumps({"messages": PROMPT, "max_tokens": 8, "temperature": 0}).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _reload(url: str, key: str) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/admin/reload", data=b"", headers={"X-Admin-Key": key})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_sighup_switches_to_the_promoted_model_without_failing_a_request(tmp_path, two_models):
    a, b = two_models
    serving, db = tmp_path / "serving", tmp_path / "feedback.db"
    promote(_run_dir(tmp_path, a, key="a" * 64), "merge", serving)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "POSTTRAIN_ADMIN_KEY": "sesame"}
    proc = subprocess.Popen([sys.executable, "-m", "posttrain.serving.cli", str(serving / "current"), "--port", "0",
                             "--store", str(db), "--max-batch-size", "1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read()
        statuses: list[int] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                statuses.append(_chat(url)[0])

        clients = [threading.Thread(target=client) for _ in range(4)]
        for t in clients:
            t.start()
        time.sleep(2)
        promote(_run_dir(tmp_path, b, key="b" * 64), "merge", serving)
        proc.send_signal(signal.SIGHUP)
        store = FeedbackStore(db)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            models = {store.response(i)["model"] for i in range(1, store.count("responses") + 1)}
            if "merge-bbbbbbbbbbbb" in models:
                break
            time.sleep(0.5)
        time.sleep(1)  # a few answers from the new model
        stop.set()
        for t in clients:
            t.join(timeout=120)

        # no request failed while the model changed under them
        assert statuses and set(statuses) == {200}
        rows = [store.response(i) for i in range(1, store.count("responses") + 1)]
        by_model: dict[str, set[str]] = {}
        for row in rows:
            by_model.setdefault(row["model"], set()).add(row["response"])
        assert set(by_model) == {"merge-aaaaaaaaaaaa", "merge-bbbbbbbbbbbb"}
        # greedy, one sequence per batch: each model always gives its own answer, and the two differ
        assert all(len(texts) == 1 for texts in by_model.values())
        assert by_model["merge-aaaaaaaaaaaa"] != by_model["merge-bbbbbbbbbbbb"]
        first_new = min(i for i, r in enumerate(rows) if r["model"] == "merge-bbbbbbbbbbbb")
        assert all(r["model"] == "merge-bbbbbbbbbbbb" for r in rows[first_new + 4:])  # 4 clients' stragglers
        # each completion carries the lineage key of the model that gave it: the promoted run stage's full key
        for row in rows:
            assert row["lineage"].endswith(":merge:" + row["model"][-1] * 64), row

        # over HTTP: the admin key is required, and a model whose chat template differs is refused (409), the
        # served model unchanged
        assert _reload(url, "wrong")[0] == 401
        odd = tmp_path / "odd"
        shutil.copytree(b, odd)
        config = json.loads((odd / "tokenizer_config.json").read_text())
        config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        (odd / "tokenizer_config.json").write_text(json.dumps(config))
        for f in odd.glob("chat_template.*"):
            f.unlink()
        promote(_run_dir(tmp_path, odd, key="c" * 64), "merge", serving)
        status, body = _reload(url, "sesame")
        assert status == 409 and "different tokenizer or chat template" in body["error"]["message"]
        promote(_run_dir(tmp_path, a, key="a" * 64), "merge", serving)  # already there: relinked, not copied
        status, body = _reload(url, "sesame")
        assert (status, body["model"]) == (200, "merge-aaaaaaaaaaaa")
        assert _chat(url)[0] == 200
        assert store.response(store.count("responses"))["model"] == "merge-aaaaaaaaaaaa"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_promote_stage_in_a_pipeline_after_its_gate(tmp_path, tiny_model_dir):
    """gate -> merge (the model soup of tiny-random with itself) -> promote: the promoted folder is the merge
    stage's model and `current` points at it; a failing gate stops merge and promote and leaves `current` alone."""
    from posttrain.pipeline.eval_stages import GateFailed
    from posttrain.pipeline.load import parse_pipeline
    from posttrain.pipeline.registry import STAGES
    from posttrain.pipeline.runner import run_pipeline

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"constraints/pass_rate": 0.6}))
    serving = tmp_path / "serving"
    tree = {"run_dir": str(tmp_path / "run"), "stages": {
        "gate": {"command": "gate", "config": {"metrics": str(metrics),
                                               "gates": [{"metric": "constraints/pass_rate", "min": 0.5}]}},
        "merge": {"command": "merge", "after": ["gate"],
                  "config": {"models": [str(tiny_model_dir), str(tiny_model_dir)], "method": "linear"}},
        "promote": {"command": "promote", "config": {"model": "${merge.output}/model", "to": str(serving)}}}}
    stages = run_pipeline(parse_pipeline(tree, STAGES))["stages"]
    assert stages["promote"]["status"] == "done"
    current = (serving / "current").resolve()
    assert current.name == f"merge-{stages['merge']['key'][:12]}"
    record = json.loads((current / "promotion.json").read_text())
    assert record["stage"] == "merge" and [g["name"] for g in record["gates"]] == ["gate"]
    assert (current / "model.safetensors").is_file()
    assert json.loads((Path(stages["promote"]["folder"]) / "promotion.json").read_text()) == record

    metrics.write_text(json.dumps({"constraints/pass_rate": 0.4}))
    with pytest.raises(GateFailed):
        run_pipeline(parse_pipeline(tree, STAGES))
    assert (serving / "current").resolve() == current  # still the model promoted while the gate passed
    tree["stages"]["promote"]["config"]["model"] = str(tiny_model_dir)
    metrics.write_text(json.dumps({"constraints/pass_rate": 0.6}))
    with pytest.raises(PipelineError, match="is not the output of a stage of this run"):
        run_pipeline(parse_pipeline(tree, STAGES))
