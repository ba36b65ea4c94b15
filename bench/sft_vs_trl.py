"""SFT: posttrain vs TRL SFTTrainer on the same model, data, batch size, max length and LoRA adapter.

    nice -n 19 .venv/bin/python bench/sft_vs_trl.py --model tiny-random --rows 64 --batch 8
    nice -n 19 .venv/bin/python bench/sft_vs_trl.py --model smollm2-135m-instruct --rows 16 --batch 4

Both train on assistant tokens only (posttrain: messages with assistant masks; TRL: conversational
prompt-completion rows, completion-only loss). Each side is its own process (peak RSS = its ru_maxrss), one
epoch, timed over optimizer steps. tokens/s = prompt + completion tokens / training seconds. TRL's SFTConfig turns
activation checkpointing on by default, so TRL runs both ways and posttrain also runs with it on (on every
layer, and on every 2nd layer: ``model.checkpoint_every=2``); the ratios are against TRL's defaults (the last row).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LR = 2e-4


def run_posttrain(a) -> None:
    common.set_threads(a.threads)
    from posttrain.config import load_config
    from posttrain.trainers.sft import train_sft

    summary = train_sft(load_config("sft", None, common.posttrain_overrides(a, LR)))
    common.emit({"train_s": summary["train_time_s"], "loss": summary["train/loss"]})


def run_trl(a) -> None:
    common.set_threads(a.threads)
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tok, lora = common.trl_model(a)
    rows = [json.loads(line) for line in Path(a.data).read_text().splitlines()]
    ds = Dataset.from_list([{"prompt": r["messages"][:1], "completion": r["messages"][1:]} for r in rows])
    cfg = SFTConfig(output_dir=a.out, per_device_train_batch_size=a.batch, gradient_accumulation_steps=1,
                    max_length=a.max_length, learning_rate=LR, max_steps=a.steps, logging_steps=1,
                    save_strategy="no", report_to=[], seed=42, **common.trl_device(a),
                    dataloader_num_workers=0, lr_scheduler_type="cosine", warmup_steps=0, disable_tqdm=True,
                    packing=a.layout == "packing", shuffle_dataset=False, **common.trl_checkpointing(a))
    common.trl_train_and_emit(lambda callbacks: SFTTrainer(model=model, args=cfg, train_dataset=ds,
                                                           processing_class=tok, callbacks=callbacks,
                                                           peft_config=lora))


def main() -> None:
    a = common.trainer_args("--rows").parse_args()
    if a.side == "posttrain":
        return run_posttrain(a)
    if a.side == "trl":
        return run_trl(a)

    tmp = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    data = common.write_jsonl(tmp / "sft.jsonl", common.sft_rows(a.count))
    steps, tokens, base = common.epoch_plan("sft", data, a)
    runs = [("posttrain padded", ["--side", "posttrain", "--layout", "padded"]),
            ("posttrain packed", ["--side", "posttrain", "--layout", "packing"]),
            ("posttrain default (prefix-shared)", ["--side", "posttrain", "--layout", "default"]),
            ("posttrain default, checkpointing", ["--side", "posttrain", "--layout", "default",
                                                  "--checkpointing", "on"]),
            ("posttrain default, checkpointing every 2nd layer",
             ["--side", "posttrain", "--layout", "default", "--checkpointing", "on", "--checkpoint-every", "2"]),
            *common.trl_runs("SFTTrainer")]
    if a.quick:  # posttrain's default against TRL's defaults
        runs = [runs[2], runs[-1]]
    rows = common.compare_with_trl(__file__, runs, base, tmp, tokens)
    common.print_comparison("SFT", "rows", a, steps, tokens, rows)


if __name__ == "__main__":
    main()
