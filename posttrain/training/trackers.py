"""Experiment trackers (``train.report_to``): every metrics.jsonl record also goes to TensorBoard, Weights & Biases,
MLflow or trackio, through accelerate's tracker classes (the same ones ``Accelerator(log_with=...)`` uses).

- The resolved config is logged once as hyperparameters, flattened to ``section.key`` (lists and nulls as text).
- Each record's numbers are logged at its ``step``; eval records under ``eval/<name>``.
- Where they go: TensorBoard event files in ``<output_dir>/tensorboard/<run_name>``; MLflow to
  ``$MLFLOW_TRACKING_URI``, else a file store in ``<output_dir>/mlruns`` (opted in with
  ``MLFLOW_ALLOW_FILE_STORE``); W&B to its project (``WANDB_MODE=offline``
  keeps it on disk, in ``<output_dir>/wandb``); trackio to its local project.
- A tracker whose package is missing is a one-line error naming the pip extra, checked when the config is read.

Only the main process logs (``MetricsLog`` is only enabled there).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from posttrain.config import missing_tracker


def flat_config(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1e-4}}`` -> ``{"optim.lr": 1e-4}``; values that are not bool/int/float/str become text."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics record (not ``step``), eval ones prefixed ``eval/``."""
    prefix = "eval/" if record.get("split") == "eval" else ""
    return {f"{prefix}{k}": float(v) for k, v in record.items()
            if k not in ("step", "split") and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


class Trackers:
    """The trackers of one run; ``log(record)`` for every metrics.jsonl record, ``finish()`` at the end."""

    def __init__(self, names, output_dir: str | Path, run_name: str, config: dict[str, Any]):
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS  # keeps `import posttrain.training` free of accelerate

        problem = missing_tracker(names)
        if problem:
            raise ValueError(problem)
        out = Path(output_dir)
        self.trackers = []
        for name in names:
            cls = LOGGER_TYPE_TO_CLASS[name]
            if name == "tensorboard":
                tracker = cls(run_name, logging_dir=str(out / "tensorboard"))
            elif name == "mlflow":
                import mlflow  # optional dependency

                if not os.environ.get("MLFLOW_TRACKING_URI"):
                    # a local file store beside the run (MLflow 3 keeps it behind an explicit opt-in; a team
                    # sets MLFLOW_TRACKING_URI to its server instead)
                    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
                    mlflow.set_tracking_uri((out / "mlruns").resolve().as_uri())
                tracker = cls(experiment_name=run_name, run_name=run_name)
            elif name == "wandb":
                tracker = cls(run_name, dir=str(out), name=run_name)
            else:
                tracker = cls(run_name)
            tracker.start()
            tracker.store_init_configuration(flat_config(config))
            self.trackers.append(tracker)

    def log(self, record: dict[str, Any]) -> None:
        values = scalars(record)
        if values:
            for tracker in self.trackers:
                tracker.log(values, step=int(record.get("step", 0)))

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        """A table of sampled completions (one dict per row, the same keys): a W&B table, TensorBoard text (a
        markdown table under ``samples``), an MLflow table artifact ``samples/step_<step>.json``; trackio gets
        none (it has no table)."""
        if not rows:
            return
        columns = list(rows[0])
        cells = [[r.get(c) if isinstance(r.get(c), (int, float, str)) or r.get(c) is None else str(r.get(c))
                  for c in columns] for r in rows]
        for tracker in self.trackers:
            name = getattr(tracker, "name", "")
            if name == "wandb":
                tracker.log_table("samples", columns=columns, data=cells, step=step)
            elif name == "tensorboard":
                def cell(v):
                    return str(v).replace("|", "\\|").replace("\n", "<br>")
                text = "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                                  + ["| " + " | ".join(cell(v) for v in row) + " |" for row in cells])
                tracker.writer.add_text("samples", text, global_step=step)
            elif name == "mlflow":
                import mlflow  # optional dependency

                mlflow.log_table({c: [row[i] for row in cells] for i, c in enumerate(columns)},
                                 artifact_file=f"samples/step_{step}.json")

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
