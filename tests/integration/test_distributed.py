"""Two CPU processes under torchrun (gloo): the run completes, ranks agree, and the result matches one process
on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.training.metrics import read_metrics

from .helpers import pair_rows, write_jsonl

SCRIPT = Path(__file__).with_name("dist_train.py")


def _run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.distributed
def test_two_process_dpo_matches_one_process(tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(16))
    (tmp_path / "r2").mkdir()
    (tmp_path / "r1").mkdir()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    _run(torchrun + [str(SCRIPT), str(data), str(tmp_path / "two"), str(tmp_path / "r2")], tmp_path)
    _run([sys.executable, str(SCRIPT), str(data), str(tmp_path / "one"), str(tmp_path / "r1")], tmp_path)

    ranks = [json.loads((tmp_path / "r2" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and ranks[0]["backend"] == "gloo"
    assert ranks[0]["loss"] == ranks[1]["loss"]
    assert ranks[0]["params"] == ranks[1]["params"]  # DDP kept both replicas identical

    two = [r for r in read_metrics(tmp_path / "two" / "metrics.jsonl") if r.get("split") != "eval"]
    one = [r for r in read_metrics(tmp_path / "one" / "metrics.jsonl") if r.get("split") != "eval"]
    assert [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(two, one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        assert a["tokens"] == b["tokens"]
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["status"] == "completed"
