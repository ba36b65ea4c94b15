"""The `posttrain` console script end to end (posttrain/launch.py -> allocator.preload): a training command re-execs
with tcmalloc preloaded where it is installed, prints nothing about it, and records it in its manifest; with
POSTTRAIN_ALLOCATOR=system it runs and records the system's malloc."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.allocator import ENV, find_library

from .helpers import sft_rows, write_jsonl


def _console_script() -> str | None:
    return shutil.which("posttrain", path=str(Path(sys.executable).parent)) or shutil.which("posttrain")


@pytest.mark.skipif(not sys.platform.startswith("linux") or find_library("tcmalloc") is None,
                    reason="needs Linux and tcmalloc installed (scripts/setup.sh installs libtcmalloc-minimal4)")
@pytest.mark.parametrize("setting", ["auto", "system"])
def test_the_command_runs_with_tcmalloc_and_records_it(tmp_path, setting):
    script = _console_script()
    assert script, "the posttrain console script is not installed (pip install -e .)"
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(4))
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", ENV)}
    env[ENV] = setting
    res = subprocess.run([script, "sft", f"data.train={data}", f"train.output_dir={out}", "model.name=tiny-random",
                          "train.progress=false", "optim.batch_size=4", "optim.micro_batch_size=4",
                          "optim.max_steps=1", "data.max_length=64", "data.eval_fraction=0.0"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    recorded = json.loads((out / "manifest.json").read_text())["versions"]["allocator"]
    if setting == "auto":
        assert recorded == f"tcmalloc ({os.path.realpath(find_library('tcmalloc'))})"
        assert "large alloc" not in res.stderr
    else:
        assert recorded == "system"
