"""The shipped replies of the builtin model (examples/data/base_replies.jsonl), which the quickstart augments instead
of sampling them again: what they are (the finished replies of recipe_full's `sample` stage), that augment reads
them, and that none of their tasks shares wording with an out-of-distribution eval prompt."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "examples" / "data"
REPLIES = DATA / "base_replies.jsonl"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _six_word_runs(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z']+", text.lower())
    return {tuple(words[i:i + 6]) for i in range(len(words) - 5)}


def test_rows_are_the_finished_samples_of_the_builtin_model_on_the_shipped_tasks():
    tasks = {row["id"]: row["prompt"] for row in _rows(DATA / "tasks.jsonl")}
    rows = _rows(REPLIES)
    assert len(rows) == 433 and len({r["prompt_id"] for r in rows}) == 156
    for row in rows:
        assert row["model"] == "smollm2-135m-instruct" and row["finish_reason"] == "stop"
        assert row["sampling"] == {"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 96, "seed": 1}
        assert row["prompt"] == [{"role": "user", "content": tasks[row["prompt_id"]]}]
        assert 0 <= row["candidate_index"] < 6 and row["text"].strip()
    assert len({(r["prompt_id"], r["candidate_index"]) for r in rows}) == len(rows)


def test_augment_reads_them():
    from posttrain.data.augment import AugmentSettings, augment_rows, read_candidates

    out, stats = augment_rows(read_candidates(REPLIES), AugmentSettings(per_reply=1, max_words=60))
    assert stats["replies"] == 433 and stats["skipped_truncated"] == 0 and stats["replies_used"] > 300
    assert len(out) == stats["examples"]


def test_no_task_shares_a_six_word_run_with_an_out_of_distribution_prompt():
    evals = ROOT / "posttrain" / "resources" / "eval"
    held = set()
    for name in ("constraints_ood", "ifeval_sample", "capability_freeform"):
        for row in _rows(evals / f"{name}.jsonl"):
            held |= _six_word_runs(row["prompt"])
    assert held
    shared = [r["prompt_id"] for r in _rows(REPLIES) if _six_word_runs(r["prompt"][-1]["content"]) & held]
    assert not shared
