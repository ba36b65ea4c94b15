"""SFT: posttrain vs TRL SFTTrainer on the same model, data, batch size, max length and LoRA adapter.

    nice -n 19 .venv/bin/python bench/sft_vs_trl.py --model tiny-random --rows 64 --batch 8
    nice -n 19 .venv/bin/python bench/sft_vs_trl.py --model smollm2-135m-instruct --rows 16 --batch 4

Both train on assistant tokens only (posttrain: messages with assistant masks; TRL: conversational
prompt-completion rows, completion-only loss). Each side is its own process (peak RSS = its ru_maxrss), one
epoch, timed over optimizer steps. tokens/s = prompt + completion tokens / training seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LORA = dict(r=16, alpha=32)


def run_posttrain(a) -> None:
    common.set_threads(a.threads)
    from posttrain.config import load_config
    from posttrain.trainers.sft import train_sft

    overrides = [f"data.train={a.data}", f"model.name={a.model}", f"train.output_dir={a.out}", "train.progress=false",
                 f"optim.batch_size={a.batch}", f"optim.micro_batch_size={a.batch}", f"optim.max_steps={a.steps}",
                 "optim.lr=2e-4", f"data.max_length={a.max_length}", "data.shuffle=false", "train.overwrite=true",
                 f"peft.r={LORA['r']}", f"peft.alpha={LORA['alpha']}", f"data.packing={a.packing}",
                 "optim.warmup_steps=0"]
    summary = train_sft(load_config("sft", None, overrides))
    common.emit({"train_s": summary["train_time_s"], "loss": summary["train/loss"]})


def run_trl(a) -> None:
    common.set_threads(a.threads)
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    path = common.model_dir(a.model)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rows = [json.loads(line) for line in Path(a.data).read_text().splitlines()]
    ds = Dataset.from_list([{"prompt": r["messages"][:1], "completion": r["messages"][1:]} for r in rows])
    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    cfg = SFTConfig(output_dir=a.out, per_device_train_batch_size=a.batch, gradient_accumulation_steps=1,
                    max_length=a.max_length, learning_rate=2e-4, max_steps=a.steps, logging_steps=1,
                    save_strategy="no", report_to=[], use_cpu=True, bf16=False, fp16=False, seed=42,
                    dataloader_num_workers=0, lr_scheduler_type="cosine", warmup_steps=0, disable_tqdm=True,
                    packing=a.packing == "true", shuffle_dataset=False)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Timer()],
                         peft_config=LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules="all-linear",
                                                task_type="CAUSAL_LM", lora_dropout=0.0))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    common.emit({"train_s": round(sum(times), 2), "loss": losses[-1] if losses else None})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--side", choices=["posttrain", "trl"])
    p.add_argument("--packing", default="false")
    p.add_argument("--data")
    p.add_argument("--out")
    p.add_argument("--steps", type=int)
    a = p.parse_args()
    if a.side == "posttrain":
        return run_posttrain(a)
    if a.side == "trl":
        return run_trl(a)

    tmp = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    data = common.write_jsonl(tmp / "sft.jsonl", common.sft_rows(a.rows))
    tokens, kept = common.rendered_tokens("sft", data, a.model, a.max_length)
    steps = kept // a.batch
    tokens = tokens * steps * a.batch // kept
    base = ["--model", a.model, "--batch", str(a.batch), "--max-length", str(a.max_length), "--threads",
            str(a.threads), "--data", str(data), "--steps", str(steps)]
    runs = [("posttrain padded", ["--side", "posttrain", "--packing", "false"]),
            ("posttrain packed", ["--side", "posttrain", "--packing", "true"]),
            ("TRL SFTTrainer", ["--side", "trl", "--packing", "false"])]
    rows = []
    for name, extra in runs:
        r = common.run_child(__file__, base + extra + ["--out", str(tmp / name.replace(" ", "_"))])
        r["run"] = name
        r["tokens/s"] = round(tokens / r["train_s"], 1)
        rows.append(r)
    trl = rows[-1]
    for r in rows:
        r["x TRL tokens/s"] = round(r["tokens/s"] / trl["tokens/s"], 2)
        r["x TRL peak RSS"] = round(r["peak_rss_mb"] / trl["peak_rss_mb"], 2)
    print(common.table(f"SFT {a.model}: {a.rows} rows, batch {a.batch}, max_length {a.max_length}, {steps} steps, "
                       f"{tokens} tokens, LoRA r={LORA['r']}, {a.threads} threads\nmachine: {common.machine()}",
                       rows, ["run", "train_s", "tokens/s", "peak_rss_mb", "x TRL tokens/s", "x TRL peak RSS",
                              "loss"]))


if __name__ == "__main__":
    main()
