"""The hf backend's weights dtype (``dtype`` / ``--dtype`` of generate and eval, docs/PERFORMANCE.md: bfloat16
decodes ~1.6x faster on a CPU with AMX, and answers differently): bfloat16 weights load and answer, the choice is
recorded (each candidate row's ``sampling``, the eval manifest), a candidate file made at another dtype is not resumed
into, and a dtype that is unknown or that the backend cannot take is a one-line error before any model loads."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from posttrain.generation.backends import check_dtype, load_generator
from posttrain.generation.candidates import generate_candidates
from posttrain.generation.cli import generate_app
from posttrain.generation.types import BackendError

from .helpers import write_jsonl

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
PROMPTS = [{"id": f"p{i}", "prompt": f"Say something about the number {i}."} for i in range(3)]


def test_check_dtype():
    assert [check_dtype(d) for d in ("auto", "float32", "bfloat16", "float16")] == ["auto", "float32", "bfloat16",
                                                                                   "float16"]
    assert check_dtype("auto", "vllm") == "auto"
    with pytest.raises(BackendError, match=r"dtype 'fp8': expected one of: auto, float32, bfloat16, float16"):
        check_dtype("fp8")
    with pytest.raises(BackendError, match="only the hf backend"):
        check_dtype("bfloat16", "vllm")


def test_bfloat16_weights_generate_and_the_dtype_is_recorded_and_guarded(tmp_path):
    generator, _ = load_generator("tiny-random", dtype="bfloat16")
    assert {p.dtype for p in generator.model.parameters()} == {torch.bfloat16}
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    out = tmp_path / "cands.jsonl"
    summary = generate_candidates(prompts, out, "tiny-random", n=2, temperatures=[0.0, 1.0], max_new_tokens=5,
                                  seed=3, progress=False, dtype="bfloat16")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["candidates_written"] == len(rows) == 6
    assert all(r["sampling"]["dtype"] == "bfloat16" and 1 <= r["completion_tokens"] <= 5 for r in rows)
    before = out.read_bytes()
    from posttrain.data.schema import DataError

    # the same file at the default dtype is other settings: refused, nothing rewritten
    with pytest.raises(DataError, match="other settings"):
        generate_candidates(prompts, out, "tiny-random", n=2, temperatures=[0.0, 1.0], max_new_tokens=5, seed=3,
                            progress=False)
    assert out.read_bytes() == before
    # the default writes no dtype key: files made before the option resume as they did
    auto = tmp_path / "auto.jsonl"
    generate_candidates(prompts, auto, "tiny-random", n=1, temperatures=[0.0], max_new_tokens=3, progress=False)
    assert all("dtype" not in json.loads(line)["sampling"] for line in auto.read_text().splitlines())


def test_generate_cli_bad_dtype_is_one_line_and_writes_nothing(tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    out = tmp_path / "cands.jsonl"
    res = runner.invoke(generate_app, ["--prompts", str(prompts), "--model", "tiny-random", "-o", str(out),
                                       "--dtype", "half"])
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert res.exit_code == 2 and len(errors) == 1 and "dtype 'half'" in errors[0], res.output
    res = runner.invoke(generate_app, ["--prompts", str(prompts), "--model", "tiny-random", "-o", str(out),
                                       "--dtype", "bfloat16", "--backend", "vllm"])
    assert res.exit_code == 2 and "only the hf backend" in res.output, res.output
    assert not out.exists()


def test_eval_at_bfloat16_records_it_and_pipeline_checks_the_key(tmp_path):
    from posttrain.eval.cli import eval_command
    from posttrain.pipeline.eval_stages import check_eval
    from posttrain.pipeline.registry import STAGES
    from posttrain.pipeline.spec import PipelineError

    suite = write_jsonl(tmp_path / "suite.jsonl", [
        {"id": "c1", "prompt": "Describe rain. Answer in all lowercase.", "kind": "constraint",
         "constraints": [{"kind": "lowercase", "args": {}}]},
        {"id": "q1", "prompt": "What is 2 + 2?", "kind": "exact", "answer": "4"}])
    app = typer.Typer()
    app.command()(eval_command)
    res = runner.invoke(app, ["--model", "tiny-random", "--base", "tiny-random", "--suite", f"{suite}@4",
                              "--dtype", "bfloat16", "-o", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert manifest["settings"]["dtype"] == "bfloat16"
    answers = [json.loads(line) for line in (tmp_path / "e" / "responses.jsonl").read_text().splitlines()]
    assert len(answers) == 4 and all(1 <= a["completion_tokens"] <= 4 for a in answers)
    res = runner.invoke(app, ["--model", "tiny-random", "--suite", str(suite), "--dtype", "int8", "-o",
                              str(tmp_path / "bad")])
    assert res.exit_code == 2 and "dtype 'int8'" in res.output and not (tmp_path / "bad").exists()

    with pytest.raises(PipelineError, match="config: key 'dtype': dtype 'fp8'"):
        check_eval({"suites": [str(suite)], "dtype": "fp8"}, lambda path: False)
    with pytest.raises(PipelineError, match="config: key 'dtype': .*only the hf backend"):
        STAGES["generate"].check({"prompts": str(suite), "dtype": "bfloat16", "backend": "openai:http://x/v1:m"},
                                 lambda path: False)
    check_eval({"suites": [str(suite)], "dtype": "bfloat16"}, lambda path: False)


def _lora(folder, base_dir, seed: int, spread: float = 3e-4, dropout: float = 0.0) -> str:
    """A LoRA adapter on tiny-random whose update is the size of a real fine-tune's (``spread`` 3e-4: about 1% of
    the weights' spread, below half a bfloat16 step of most of them); ``spread``: std of lora_B."""
    from peft import LoraConfig, get_peft_model

    from posttrain.models.policy import load_base

    model = load_base(base_dir, None, dtype="float32")[0]
    torch.manual_seed(seed)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                                            target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, spread)
    peft.save_pretrained(folder)
    return str(folder)


def test_low_precision_keeps_lora_lineages_unmerged(tmp_path, tiny_model_dir):
    """At bfloat16 the adapters of a lineage stay unmerged and all active, their weights float32, so the update
    reaches the output whole; merged into bfloat16 weights most of it would round away (the measured cost on the
    builtin model is in docs/PERFORMANCE.md). At float32 the model is merged as before."""
    from peft.tuners.lora import LoraLayer

    from posttrain.models.policy import load_base, load_for_generation

    first, second = _lora(tmp_path / "a1", tiny_model_dir, 0), _lora(tmp_path / "a2", tiny_model_dir, 1)
    merged32 = load_base(first, second, dtype="float32")[0].model.layers[0].self_attn.q_proj.weight
    base32 = load_base(tiny_model_dir, None, dtype="float32")[0].model.layers[0].self_attn.q_proj.weight
    delta = (merged32 - base32).detach()
    assert delta.abs().max() > 0

    model = load_for_generation(first, second, dtype="bfloat16")
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, LoraLayer) and sorted(layer.active_adapters) == ["lineage_0", "lineage_1"]
    assert layer.base_layer.weight.dtype == torch.bfloat16
    assert {layer.lora_A[n].weight.dtype for n in layer.active_adapters} == {torch.float32}
    x = torch.randn(16, delta.shape[1])
    with torch.no_grad():
        branch = sum(layer.lora_B[n](layer.lora_A[n](x)) * layer.scaling[n] for n in layer.active_adapters)
    reference = x @ delta.T
    assert ((branch - reference).norm() / reference.norm()).item() < 1e-4

    rounded = (load_base(first, second, dtype="bfloat16")[0].model.layers[0].self_attn.q_proj.weight.float()
               - base32.to(torch.bfloat16).float())
    assert ((rounded - delta).norm() / delta.norm()).item() > 0.3  # what merging at bfloat16 would have kept
    generator, _ = load_generator(first, adapter=second, dtype="bfloat16")
    assert isinstance(generator.model.model.layers[0].self_attn.q_proj, LoraLayer)
    outs = generator.generate([[1, 5, 9, 200]], n=1, temperature=0.0, top_p=1.0, max_new_tokens=4, seed=0)
    assert 1 <= outs[0][0].completion_tokens <= 4

    plain = load_for_generation(first, second, dtype="float32")
    assert not isinstance(plain.model.layers[0].self_attn.q_proj, LoraLayer)
    assert torch.equal(plain.model.layers[0].self_attn.q_proj.weight, merged32)
