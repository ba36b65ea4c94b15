"""DPO: posttrain vs TRL DPOTrainer on the same model, data, batch size, max length and LoRA adapter.

    nice -n 19 .venv/bin/python bench/dpo_vs_trl.py --model tiny-random --pairs 64 --batch 8
    nice -n 19 .venv/bin/python bench/dpo_vs_trl.py --model smollm2-135m-instruct --pairs 16 --batch 4

Each side runs in its own process (peak RSS is that process's ru_maxrss: imports, model, data and training),
trains one epoch over the same pairs (steps = pairs / batch), and is timed over its optimizer steps only.
tokens/s = prompt + completion tokens of every chosen and rejected sequence (posttrain's rendering of the same
chat template) / training seconds. Rows:

* posttrain padded: split-head chunked log-probs, padded batches (data.prefix_sharing=false), reference computed
  (cache filling).
* posttrain packed: the same with data.packing=true.
* posttrain default (prefix-shared): no layout option set, i.e. data.prefix_sharing=auto, which is prefix
  sharing here (each pair's prompt and the system prompt computed once, rows of at most the model's
  tree_row_tokens).
* posttrain default, cached ref: a rerun (second epoch / beta sweep) that finds every reference log-prob on disk.
* posttrain default, checkpointing: with model.gradient_checkpointing=true, as TRL's default.
* TRL: DPOTrainer defaults plus the same LoRA config (its reference is the adapter disabled, as ours); TRL's
  DPOConfig turns activation checkpointing on by default, so it is run both ways (the ratios are against
  its defaults, the last row).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LR, BETA = 5e-5, 0.1


def run_posttrain(a) -> None:
    common.set_threads(a.threads)
    from posttrain.config import load_config
    from posttrain.trainers.preference import train_preference

    overrides = common.posttrain_overrides(a, LR) + [f"loss.beta={BETA}", f"loss.reference_cache_dir={a.cache}"]
    summary = train_preference(load_config("dpo", None, overrides))
    common.emit({"train_s": summary["train_time_s"], "loss": summary["train/loss"]})


def run_trl(a) -> None:
    common.set_threads(a.threads)
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, tok, lora = common.trl_model(a)
    rows = [json.loads(line) for line in Path(a.data).read_text().splitlines()]
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                             "chosen": [{"role": "assistant", "content": r["chosen"]}],
                             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
    cfg = DPOConfig(output_dir=a.out, per_device_train_batch_size=a.batch, gradient_accumulation_steps=1,
                    max_length=a.max_length, learning_rate=LR, max_steps=a.steps, logging_steps=1,
                    save_strategy="no", report_to=[], seed=42, **common.trl_device(a),
                    dataloader_num_workers=0, beta=BETA, lr_scheduler_type="cosine", warmup_steps=0,
                    disable_tqdm=True, **common.trl_checkpointing(a))
    common.trl_train_and_emit(lambda callbacks: DPOTrainer(model=model, args=cfg, train_dataset=ds,
                                                           processing_class=tok, callbacks=callbacks,
                                                           peft_config=lora))


def main() -> None:
    p = common.trainer_args("--pairs")
    p.add_argument("--cache")
    a = p.parse_args()
    if a.side == "posttrain":
        return run_posttrain(a)
    if a.side == "trl":
        return run_trl(a)

    tmp = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    data = common.write_jsonl(tmp / "pairs.jsonl", common.pair_rows(a.count))
    steps, tokens, base = common.epoch_plan("preference", data, a)
    runs = [("posttrain padded", ["--side", "posttrain", "--layout", "padded", "--cache", str(tmp / "c1")]),
            ("posttrain packed", ["--side", "posttrain", "--layout", "packing", "--cache", str(tmp / "c2")]),
            ("posttrain default (prefix-shared)", ["--side", "posttrain", "--layout", "default", "--cache",
                                                   str(tmp / "c3")]),
            ("posttrain default, cached ref (rerun)", ["--side", "posttrain", "--layout", "default",
                                                       "--cache", str(tmp / "c3")]),
            ("posttrain default, checkpointing", ["--side", "posttrain", "--layout", "default",
                                                  "--checkpointing", "on", "--cache", str(tmp / "c4")]),
            *common.trl_runs("DPOTrainer")]
    if a.quick:  # posttrain's default against TRL's defaults
        runs = [runs[2], runs[-1]]
    rows = common.compare_with_trl(__file__, runs, base, tmp, tokens)
    common.print_comparison("DPO", "pairs", a, steps, tokens, rows)


if __name__ == "__main__":
    main()
