"""``posttrain eval`` with a model served over HTTP (``openai:URL:MODEL``): a deployment, a vLLM server or a
teacher is evaluated like a local model. The endpoint here is ``posttrain serve`` on tiny-random, so its greedy
answers must be exactly those of the same model run locally."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from posttrain.eval.run import run_eval
from posttrain.generation.types import BackendError

ROWS = [
    {"id": "c1", "prompt": "Describe rain. Answer in all lowercase.", "kind": "constraint",
     "constraints": [{"kind": "lowercase", "args": {}}]},
    {"id": "c2", "prompt": "Name a colour. Do not use any commas.", "kind": "constraint",
     "constraints": [{"kind": "no_commas", "args": {}}]},
    {"id": "q1", "prompt": "What is 2 + 2?", "kind": "exact", "answer": "4"},
]


@pytest.fixture(scope="module")
def served():
    from posttrain.serving.server import start_server

    server, _thread, url = start_server("tiny-random", port=0, max_batch_size=1, default_max_tokens=8)
    yield url
    server.close()


@pytest.fixture
def suite(tmp_path):
    path = tmp_path / "suite.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def responses(folder) -> dict[tuple[str, str], dict]:
    rows = [json.loads(line) for line in (folder / "responses.jsonl").read_text().splitlines()]
    return {(r["role"], r["id"]): r for r in rows}


@pytest.mark.usefixtures("one_torch_thread")
def test_a_served_model_answers_as_the_same_model_run_locally(served, suite, tmp_path):
    spec = f"openai:{served}/v1:tiny-random"
    metrics = run_eval(spec, [f"{suite}@6", "constraints_ood@1"], base="tiny-random", max_new_tokens=6,
                       batch_size=1, output_dir=tmp_path / "out")
    got = responses(tmp_path / "out")
    assert len(got) == 2 * (3 + 142)
    for (role, row_id), r in got.items():
        if role != "model":
            continue
        local = got[("base", row_id)]
        assert (r["text"], r["completion_tokens"], r["finish_reason"]) == \
            (local["text"], local["completion_tokens"], local["finish_reason"]), row_id
        assert r["model"] == spec
    assert got[("model", "c1")]["completion_tokens"] <= 6 and got[("model", "ood-0000")]["completion_tokens"] <= 1
    for key, value in metrics.items():  # the same answers score the same
        if f"base/{key}" in metrics:
            assert value == metrics[f"base/{key}"], key
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["inputs"]["model"] == spec


def test_remote_model_errors_are_one_line(suite, tmp_path):
    with pytest.raises(ValueError, match=r"^model openai:http://127.0.0.1:9/v1:m: a remote model \(openai:URL:MODEL\) "
                                         r"takes no adapter$"):
        run_eval("openai:http://127.0.0.1:9/v1:m", [str(suite)], adapter="some/adapter", output_dir=tmp_path / "a")
    with pytest.raises(BackendError, match="expected openai:URL:MODEL"):
        run_eval("tiny-random", [str(suite)], base="openai:127.0.0.1:9", output_dir=tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

    from posttrain.cli import app

    result = CliRunner().invoke(app, ["eval", "--model", "openai:http://127.0.0.1:9/v1:", "--suite", str(suite),
                                      "-o", str(tmp_path / "c")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if line.startswith("error: ")] == [
        "error: backend 'openai:http://127.0.0.1:9/v1:': expected openai:URL:MODEL, e.g. "
        "openai:http://127.0.0.1:8000/v1:my-model (http:// or https://; the URL's path holds no ':')"]


@pytest.mark.usefixtures("one_torch_thread")
def test_pipeline_eval_stage_with_a_served_baseline(served, suite, tmp_path):
    from posttrain.pipeline.registry import STAGES

    stage = STAGES["eval"]
    params = {"model": "tiny-random", "baseline": f"openai:{served}/v1:tiny-random", "suites": [str(suite)],
              "max_new_tokens": 4, "batch_size": 1, "api_key_env": "NO_KEY_HERE"}
    stage.check(params, lambda path: False)
    metrics = stage.run(params, tmp_path / "stage", False)
    got = responses(tmp_path / "stage")
    assert all(got[("model", r["id"])]["text"] == got[("baseline", r["id"])]["text"] for r in ROWS)
    assert metrics["constraints/pass_rate"] == metrics["baseline/constraints/pass_rate"]
