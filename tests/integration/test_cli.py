"""The `posttrain` command end to end: bad input gets one line naming file, row and field, exit code 2, and the
output folder stays empty; configs validate; adapters merge."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from posttrain.cli import app

from .helpers import pair_rows, sft_rows, write_jsonl

runner = CliRunner()
TINY = ["model.name=tiny-random", "train.progress=false", "optim.batch_size=4", "optim.micro_batch_size=4",
        "optim.max_steps=2", "data.max_length=64"]


def _bad_pairs(case: str) -> list[dict]:
    rows = pair_rows(6)
    bad = rows[2]
    if case == "missing":
        del bad["rejected"]
    elif case == "empty":
        bad["chosen"] = "   "
    elif case == "non_string":
        bad["chosen"] = 42
    elif case == "identical":
        bad["rejected"] = bad["chosen"]
    elif case == "too_long":
        bad["prompt"] = "word " * 200
    return rows


@pytest.mark.parametrize(
    "case, field",
    [("missing", "rejected"), ("empty", "chosen"), ("non_string", "chosen"), ("identical", "rejected"),
     ("too_long", "prompt")],
)
def test_bad_pairs_fail_before_any_output(tmp_path, case, field):
    data = write_jsonl(tmp_path / "pairs.jsonl", _bad_pairs(case))
    out = tmp_path / "out"
    res = runner.invoke(app, ["dpo", f"data.train={data}", f"train.output_dir={out}", *TINY])
    assert res.exit_code == 2, res.output
    # (a first-use model build may print progress before; the error itself is exactly one line)
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"{data}:3:" in errors[0] and f"field '{field}" in errors[0], res.output
    assert not out.exists()


def test_roles_out_of_order_in_sft(tmp_path):
    rows = sft_rows(6)
    user, assistant = rows[4]["messages"]
    rows[4]["messages"] = [user, user, assistant]  # two user turns in a row
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    out = tmp_path / "out"
    res = runner.invoke(app, ["sft", f"data.train={data}", f"train.output_dir={out}", *TINY])
    assert res.exit_code == 2
    assert f"{data}:5: field 'messages[1].role'" in res.output and "cannot follow" in res.output
    assert not out.exists()


def test_every_bad_row_is_reported_and_good_output_dir_is_kept(tmp_path):
    rows = pair_rows(6)
    rows[0]["chosen"] = ""
    rows[4]["rejected"] = rows[4]["chosen"]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    res = runner.invoke(app, ["dpo", f"data.train={data}", f"train.output_dir={out}", "train.overwrite=true", *TINY])
    assert res.exit_code == 2
    assert f"{data}:1:" in res.output and f"{data}:5:" in res.output
    assert (out / "keep.txt").read_text() == "earlier work"  # nothing already written is lost


def test_non_empty_output_dir_needs_resume_or_overwrite(tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("")
    res = runner.invoke(app, ["sft", f"data.train={data}", f"train.output_dir={out}", *TINY])
    assert res.exit_code == 2 and "not empty" in res.output


def test_config_errors_name_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("command: dpo\ndata: {train: x.jsonl}\nloss: {typ: dpo}\n")
    res = runner.invoke(app, ["config", "validate", str(cfg), "--no-data"])
    assert res.exit_code == 2 and "key 'loss.typ': unknown key" in res.output
    res = runner.invoke(app, ["dpo", str(cfg)])
    assert res.exit_code == 2 and "loss.typ" in res.output


def test_config_validate_reads_data(tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(6))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"command: dpo\nmodel: {{name: tiny-random}}\ndata: {{train: {data}, max_length: 64}}\n")
    res = runner.invoke(app, ["config", "validate", str(cfg), "loss.beta=0.3"])
    assert res.exit_code == 0, res.output
    assert "beta: 0.3" in res.output and "train/kept=6" in res.output
    bad = write_jsonl(tmp_path / "bad.jsonl", _bad_pairs("identical"))
    res = runner.invoke(app, ["config", "validate", str(cfg), f"data.train={bad}"])
    assert res.exit_code == 2 and f"{bad}:3: field 'rejected'" in res.output


def test_sft_then_merge_equals_adapter_model(tmp_path):
    from posttrain.models.policy import load_trained

    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(8))
    out = tmp_path / "sft"
    res = runner.invoke(app, ["sft", f"data.train={data}", f"train.output_dir={out}", "optim.lr=1e-2", *TINY])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "model" / "posttrain.json").read_text())["base"] == "tiny-random"
    merged_dir = tmp_path / "merged"
    res = runner.invoke(app, ["merge", str(out / "model"), "-o", str(merged_dir)])
    assert res.exit_code == 0, res.output
    assert (merged_dir / "model.safetensors").exists() and not (merged_dir / "adapter_config.json").exists()
    adapter_model, tok = load_trained(str(out / "model"))
    merged_model, _ = load_trained(str(merged_dir))
    ids = torch.tensor([tok("hello there, general", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        a, b = adapter_model(input_ids=ids).logits, merged_model(input_ids=ids).logits
    base, _ = load_trained("tiny-random")
    with torch.no_grad():
        c = base(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, c, atol=1e-4)  # the adapter did change the model


def test_merge_rejects_non_adapter(tmp_path):
    res = runner.invoke(app, ["merge", str(tmp_path), "-o", str(tmp_path / "m")])
    assert res.exit_code == 2 and "not an adapter folder" in res.output


def test_a_weighted_mixture_with_renamed_columns_validates_and_trains(tmp_path):
    """data.train as a list of {path, columns, weight} mappings, as LLaMA-Factory/axolotl users write it."""
    a = write_jsonl(tmp_path / "a.jsonl", [{"instruction": f"Say {i}.", "response": f"{i}."} for i in range(8)])
    b = write_jsonl(tmp_path / "b.jsonl", sft_rows(4))
    cfg = tmp_path / "mix.yaml"
    cfg.write_text(
        "command: sft\n"
        "data:\n"
        "  train:\n"
        f"    - {{path: {a}, columns: {{prompt: instruction, completion: response}}, weight: 0.5}}\n"
        f"    - {{path: {b}, weight: 2}}\n"
        "  max_length: 64\n")
    res = runner.invoke(app, ["config", "validate", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "train/rows=12" in res.stderr  # 4 of a's 8 rows, b's 4 rows twice
    out = tmp_path / "out"
    res = runner.invoke(app, ["sft", str(cfg), f"train.output_dir={out}", *TINY])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"data.train[0]", "data.train[1]"} <= set(manifest["inputs"])  # each source hashed


def test_merge_methods_write_folders_transformers_loads(tmp_path, tiny_model_dir):
    """merge --method: a model merged with itself (linear) gives its own logits; TIES over a base and a perturbed
    copy loads with transformers and lies between them; bad combinations are one line before any model loads."""
    from transformers import AutoModelForCausalLM

    other = tmp_path / "other"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(other)
    for f in tiny_model_dir.iterdir():
        if "token" in f.name or f.name.endswith(".jinja"):
            (other / f.name).write_bytes(f.read_bytes())
    ids = torch.tensor([[1, 5, 9, 3]])
    base_logits = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits

    same = tmp_path / "same"
    res = runner.invoke(app, ["merge", str(tiny_model_dir), str(tiny_model_dir), "-o", str(same), "--method", "linear"])
    assert res.exit_code == 0, res.output
    assert torch.allclose(AutoModelForCausalLM.from_pretrained(same)(ids).logits, base_logits, atol=1e-5)
    assert json.loads((same / "merge.json").read_text())["method"] == "linear"

    ties = tmp_path / "ties"
    res = runner.invoke(app, ["merge", str(tiny_model_dir), str(other), "-o", str(ties), "--method", "ties",
                              "--base", str(tiny_model_dir), "--density", "0.5", "--weights", "1,1"])
    assert res.exit_code == 0, res.output
    merged = AutoModelForCausalLM.from_pretrained(ties)
    w0 = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters())
    w1 = dict(AutoModelForCausalLM.from_pretrained(other).named_parameters())
    for name, p in merged.named_parameters():  # each entry is the base's, or (only the perturbed copy moved) its own
        keep = torch.isclose(p, w0[name], atol=1e-6) | torch.isclose(p, w1[name], atol=1e-6)
        assert bool(keep.all()), name
    # per-module scales from the command line: the MLP weights extrapolated to 2 from the base, the rest kept at 1
    parts = tmp_path / "parts"
    res = runner.invoke(app, ["merge", str(other), "-o", str(parts), "--method", "task_arithmetic", "--base",
                              str(tiny_model_dir), "--lambda-for", "mlp=2"])
    assert res.exit_code == 0, res.output
    for name, p in AutoModelForCausalLM.from_pretrained(parts).named_parameters():
        want = 2 * w1[name] - w0[name] if "mlp" in name else w1[name]
        assert torch.allclose(p, want, atol=1e-6), name
    for args, message in [(["--method", "ties"], "needs --base"), (["--method", "slerp", "--t", "2"], "--t must be"),
                          ([], "merging several needs --method"), (["--method", "soup"], "expected one of"),
                          (["--method", "ties", "--base", "b", "--lambda-for", "mlp"], "must be PATTERN=NUMBER"),
                          (["--method", "linear", "--lambda-for", "mlp=2"], "applies to task_arithmetic")]:
        res = runner.invoke(app, ["merge", str(tiny_model_dir), str(other), "-o", str(tmp_path / "x"), *args])
        assert res.exit_code == 2 and message in res.output, (args, res.output)
