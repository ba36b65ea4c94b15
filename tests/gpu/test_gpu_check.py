"""The GPU check (`make gpu-check` / scripts/gpu_check.sh): what CPU runs cannot show. Every test is marked `gpu`
(deselected in the default run) and skips without CUDA; each appends one row (check, result, numbers) to the
JSON-lines file in $POSTTRAIN_GPU_CHECK_OUT, which the script prints as one table.

Rows: bf16 vs fp32 loss parity for SFT and DPO (tiny-random, same data and seed), DPO from an SFT lineage in bf16
(the lineage kept unmerged: first loss log 2), QLoRA DPO steps (bitsandbytes),
packed (SDPA varlen through position_ids) vs padded log-probs, FSDP2 under torchrun on the visible GPUs (1 GPU:
skipped, needs 2), DeepSpeed ZeRO-2 and ZeRO-3 launched with the shipped accelerate configs (1 or 2 GPUs) against
one DDP process, DPO and SFT tokens/s and MFU against TRL on SmolLM2-135M and on a ~1.1B Llama with random weights
(bench/*_vs_trl.py --quick), and `generate` through vLLM when it is installed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from posttrain.training.metrics import read_metrics

from ..integration.helpers import pair_rows, sft_rows, tiny_config, write_jsonl

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: the GPU check skips on CPU")]


def record(check: str, ok: bool, **numbers) -> None:
    out = os.environ.get("POSTTRAIN_GPU_CHECK_OUT")
    if out:
        with open(out, "a") as fh:
            fh.write(json.dumps({"check": check, "ok": ok, **numbers}) + "\n")


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r.get("split") != "eval"]


@pytest.mark.parametrize("command", ["sft", "dpo"])
def test_bf16_loss_matches_fp32(tmp_path, command):
    from posttrain.trainers.preference import train_preference
    from posttrain.trainers.sft import train_sft

    train = train_sft if command == "sft" else train_preference
    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(16) if command == "sft" else pair_rows(16))
    runs = {}
    for precision in ("fp32", "bf16"):
        train(tiny_config(command, data, tmp_path / precision, f"train.precision={precision}", "optim.lr=1e-3"))
        runs[precision] = losses(tmp_path / precision)
    worst = max(abs(a - b) / max(abs(a), 1e-6) for a, b in zip(runs["fp32"], runs["bf16"]))
    record(f"{command} bf16 vs fp32 loss", worst < 2e-2, max_rel_diff=round(worst, 5), steps=len(runs["bf16"]))
    assert worst < 2e-2


def test_dpo_on_an_sft_lineage_in_bf16(tmp_path):
    """``model.dtype: auto`` is bfloat16 here: DPO from an SFT folder keeps the SFT adapter unmerged beside its own
    (models/policy.py::load_policy), so its first step sees policy == reference == the SFT model (loss log 2) and
    the saved folder holds the DPO adapter alone."""
    from safetensors.torch import load_file

    from posttrain.trainers.preference import train_preference
    from posttrain.trainers.sft import train_sft

    train_sft(tiny_config("sft", write_jsonl(tmp_path / "s.jsonl", sft_rows(16)), tmp_path / "sft"))
    train_preference(tiny_config("dpo", write_jsonl(tmp_path / "d.jsonl", pair_rows(16)), tmp_path / "dpo",
                                 f"model.name={tmp_path / 'sft' / 'model'}", "optim.lr=1e-3"))
    got = losses(tmp_path / "dpo")
    keys = load_file(tmp_path / "dpo" / "model" / "adapter_model.safetensors").keys()
    ok = abs(got[0] - math.log(2)) < 1e-6 and not any("lineage" in k for k in keys)
    record("DPO on an SFT lineage in bf16 (lineage unmerged)", ok, first_loss=round(got[0], 6),
           last_loss=round(got[-1], 5))
    assert ok


def test_qlora_dpo_steps(tmp_path):
    pytest.importorskip("bitsandbytes")
    from posttrain.trainers.preference import train_preference

    data = write_jsonl(tmp_path / "d.jsonl", pair_rows(16))
    train_preference(tiny_config("dpo", data, tmp_path / "q", "peft.method=qlora", "optim.lr=1e-3"))
    got = losses(tmp_path / "q")
    ok = all(math.isfinite(x) for x in got) and (tmp_path / "q" / "model" / "adapter_config.json").exists()
    record("QLoRA DPO steps", ok, first_loss=round(got[0], 5), last_loss=round(got[-1], 5))
    assert ok


def test_packed_equals_padded_on_gpu():
    from posttrain.data.collate import collate_sequences, pack_rendered
    from posttrain.data.render import Rendered
    from posttrain.models.policy import load_base
    from posttrain.ops.layouts import batch_sequence_logps

    model, _, _ = load_base("tiny-random", None)
    model = model.cuda().eval()
    seqs = [Rendered(list(range(5, 5 + n)), [0] * 2 + [1] * (n - 2), 2) for n in (7, 12, 4)]
    with torch.no_grad():
        padded = batch_sequence_logps(model, {k: (v.cuda() if hasattr(v, "cuda") else v)
                                              for k, v in collate_sequences(seqs, 0).items()})[0]
        packed = batch_sequence_logps(model, {k: (v.cuda() if hasattr(v, "cuda") else v)
                                              for k, v in pack_rendered(seqs).items()})[0]
    diff = float((padded - packed).abs().max())
    record(f"packed vs padded log-probs ({model.config._attn_implementation})", diff < 1e-3, max_abs_diff=diff)
    assert diff < 1e-3


def test_fsdp2_on_the_visible_gpus(tmp_path):
    n = torch.cuda.device_count()
    if n < 2:
        record("FSDP2 (torchrun)", True, note=f"skipped: {n} GPU, needs 2")
        pytest.skip("FSDP2 needs 2 GPUs")
    script = Path(__file__).parents[1] / "integration" / "dist_fsdp.py"
    data = write_jsonl(tmp_path / "d.jsonl", pair_rows(16))
    (tmp_path / "r").mkdir()
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script), "dpo",
                          str(tmp_path / "o"), str(tmp_path / "r"), f"data.train={data}", "optim.batch_size=8",
                          "optim.micro_batch_size=2", "optim.max_steps=3", "parallel.strategy=fsdp2"],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    ok = res.returncode == 0
    record("FSDP2 (torchrun, 2 GPUs)", ok, stderr_tail=res.stderr[-200:] if not ok else "")
    assert ok, res.stderr[-2000:]


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_on_the_visible_gpus(tmp_path, stage):
    """parallel.strategy=deepspeed on up to 2 GPUs, launched with the shipped accelerate config (bf16 autocast,
    NCCL): DPO full fine-tuning (ZeRO-3 partitions the reference copy too) against one process under DDP."""
    pytest.importorskip("deepspeed")
    n = min(torch.cuda.device_count(), 2)
    script = Path(__file__).parents[1] / "integration" / "dist_fsdp.py"
    root = Path(__file__).parents[2]
    data = write_jsonl(tmp_path / "d.jsonl", pair_rows(16))
    (tmp_path / "r").mkdir()
    args = [f"data.train={data}", "optim.batch_size=8", "optim.micro_batch_size=2", "optim.max_steps=3",
            "peft.method=none", "data.shuffle=false", "train.precision=bf16"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    res = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                          str(root / "examples" / "accelerate" / f"zero{stage}.yaml"), "--num_processes", str(n),
                          str(script), "dpo", str(tmp_path / "ds"), str(tmp_path / "r"), *args],
                         capture_output=True, text=True, timeout=600, env=env)
    one = subprocess.run([sys.executable, str(script), "dpo", str(tmp_path / "one"), str(tmp_path / "r"), *args],
                         capture_output=True, text=True, timeout=600, env=env)
    ok = res.returncode == 0 and one.returncode == 0
    diff = (max(abs(a - b) for a, b in zip(losses(tmp_path / "ds"), losses(tmp_path / "one"))) if ok else math.nan)
    ok = ok and diff < 2e-2 and f"zero_stage: {stage}" in (tmp_path / "ds" / "config.yaml").read_text()
    record(f"DeepSpeed ZeRO-{stage} (accelerate launch, {n} GPU)", ok, max_loss_diff_vs_ddp=diff,
           stderr_tail=(res.stderr or one.stderr)[-200:] if not ok else "")
    assert ok, (res.stderr + one.stderr)[-2000:]


@pytest.mark.parametrize("trainer", ["dpo", "sft"])
@pytest.mark.parametrize("size", ["smollm2-135m", "llama-1b-random"])
def test_throughput_and_mfu_against_trl(tmp_path, trainer, size):
    """bench/{dpo,sft}_vs_trl.py --device cuda --quick: posttrain's default layout against TRL's defaults on the same
    model, data, batch and LoRA adapter, on SmolLM2-135M and on a ~1.1B Llama built locally from a config (random
    weights, no download): tokens/s, the ratio to TRL, model TFLOP/s and MFU."""
    root = Path(__file__).parents[2]
    sys.path.insert(0, str(root / "bench"))
    import common

    model = ("smollm2-135m-instruct" if size == "smollm2-135m"
             else str(common.random_llama(Path(os.environ.get("POSTTRAIN_GPU_CHECK_MODELS", tmp_path)) / "llama-1b",
                                          **common.LLAMA_1B)))
    count = "--pairs" if trainer == "dpo" else "--rows"
    out = tmp_path / "rows.json"
    res = subprocess.run([sys.executable, str(root / "bench" / f"{trainer}_vs_trl.py"), "--model", model, count, "64",
                          "--batch", "8", "--max-length", "512", "--device", "cuda", "--quick", "--json-out", str(out)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(root)})
    ok = res.returncode == 0 and out.exists()
    rows = json.loads(out.read_text()) if ok else []
    ours = rows[0] if rows else {}
    record(f"{trainer.upper()} tokens/s vs TRL, {size}", ok, tokens_per_s=ours.get("tokens/s"),
           x_trl=ours.get("x TRL tokens/s"), trl_tokens_per_s=rows[-1].get("tokens/s") if rows else None,
           model_tflops=ours.get("model TFLOP/s"), mfu=ours.get("MFU"),
           stderr_tail=res.stderr[-200:] if not ok else "")
    assert ok, res.stderr[-2000:]


def test_generate_through_vllm(tmp_path):
    pytest.importorskip("vllm")
    from posttrain.generation.backends import load_generator

    generator, tokenizer = load_generator("smollm2-135m-instruct", backend="vllm", batch_size=8, seed=0)
    ids = [tokenizer.encode("The colour of the sky is")] * 2
    texts = [outs[0].text for outs in generator.generate(ids, n=1, temperature=0.0, top_p=1.0, max_new_tokens=16,
                                                         seed=0)]
    ok = all(t.strip() for t in texts)
    record("vLLM generate", ok, sample=texts[0][:40])
    assert ok
