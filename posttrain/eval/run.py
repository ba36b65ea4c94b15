"""``run_eval``: greedy responses of a model (and a baseline) to eval suites, scored, compared, written.

Output folder: ``responses.jsonl`` (one row per suite row and model), ``metrics.json`` (flat keys; the
baseline's under ``baseline/``; win rates under ``winrate/``), ``manifest.json`` (inputs with content hashes,
settings, package versions, metrics, status; ``posttrain gate`` adds its verdicts under ``gates``). All atomic.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from posttrain.eval.scoring import score_suite
from posttrain.eval.suites import EvalRow, load_suite
from posttrain.eval.winrate import length_controlled_win_rate, win_indicators, win_rate
from posttrain.judges.types import PairwiseJudge, ScoringJudge


def generate_responses(model: str, rows: list[EvalRow], *, max_new_tokens: int, batch_size: int, seed: int,
                       adapter: str | None = None, backend: str = "hf") -> list[tuple[str, int, str]]:
    """Greedy ``(text, completion_tokens, finish_reason)`` for each row's prompt, in row order."""
    from posttrain.data.render import render_prompt
    from posttrain.data.schema import PromptExample
    from posttrain.generation.backends import load_generator

    from tqdm.auto import tqdm

    generator, tokenizer = load_generator(model, adapter=adapter, backend=backend, batch_size=batch_size, seed=seed)
    prompt_ids = [render_prompt(PromptExample(r.prompt, r.source, r.row), tokenizer) for r in rows]
    # Longest prompts first, in chunks of one batch each, so the bar moves per batch and padding stays low.
    order = sorted(range(len(rows)), key=lambda i: -len(prompt_ids[i]))
    outs: list = [None] * len(rows)
    with tqdm(total=len(rows), desc=f"eval {model}", unit="prompt", dynamic_ncols=True) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start: start + batch_size]
            got = generator.generate([prompt_ids[i] for i in chunk], n=1, temperature=0.0, top_p=1.0,
                                     max_new_tokens=max_new_tokens, seed=seed,
                                     keys=[f"{rows[i].suite}/{rows[i].id}" for i in chunk])
            for i, o in zip(chunk, got):
                outs[i] = o[0]
            bar.update(len(chunk))
    del generator  # free the model before the next one loads
    return [(o.text, o.completion_tokens, o.finish_reason) for o in outs]


def _score(rows: list[EvalRow], gens: list[tuple[str, int, str]], label: str, role: str
           ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    metrics, scores = score_suite(rows, [g[0] for g in gens], [g[1] for g in gens])
    records = [{"suite": r.suite, "id": r.id, "kind": r.kind, "role": role, "model": label, "text": g[0],
                "completion_tokens": g[1], "finish_reason": g[2], "passed": s.passed, "score": s.score,
                **({"details": s.details} if s.details else {})}
               for r, g, s in zip(rows, gens, scores)]
    return metrics, records


def _compare(judge: PairwiseJudge | ScoringJudge, row: EvalRow, model_text: str, baseline_text: str) -> str | None:
    """``"a"`` (model), ``"b"`` (baseline), ``"tie"``, or None when a scoring judge cannot score this row (a
    verifier on a row with nothing to verify, e.g. a refusal prompt): that row is left out of the win rate."""
    metadata = {"id": row.id, "suite": row.suite, "kind": row.kind, **row.metadata}
    if isinstance(judge, PairwiseJudge):
        return judge.compare(row.prompt, model_text, baseline_text, metadata).winner
    try:  # a scoring judge (verifier, reward model): the higher score wins, equal scores tie
        a, b = (judge.score(row.prompt, t, metadata).value for t in (model_text, baseline_text))
    except ValueError:
        return None
    return "a" if a > b else "b" if b > a else "tie"


def row_slice(row: EvalRow) -> str:
    """The slice a row's win counts in: ``suite/category`` when the row has a ``category``, else the suite."""
    category = row.metadata.get("category")
    return f"{row.suite}/{category}" if isinstance(category, str) and category else row.suite


def judge_pairs(judge: PairwiseJudge | ScoringJudge, rows: list[EvalRow], model_gens: list[tuple[str, int, str]],
                baseline_gens: list[tuple[str, int, str]]) -> tuple[dict[str, float], list[str | None]]:
    """``winrate/*`` metrics and each row's winner (``a`` = model; None = not judged). Response a is the model,
    b the baseline. Per slice (see ``row_slice``, and per suite when slices are categories):
    ``winrate/slice/<slice>/{win_rate, ci_low, ci_high, n}``."""
    winners = [_compare(judge, r, m[0], b[0]) for r, m, b in zip(rows, model_gens, baseline_gens)]
    judged = [i for i, w in enumerate(winners) if w is not None]
    if not judged:
        return {"winrate/n": 0.0, "winrate/skipped": float(len(rows))}, winners
    ind = win_indicators([winners[i] for i in judged])
    out = win_rate(ind) | length_controlled_win_rate(
        ind, [float(model_gens[i][1] - baseline_gens[i][1]) for i in judged])
    metrics = {f"winrate/{k}": v for k, v in out.items()} | {"winrate/skipped": float(len(rows) - len(judged))}
    slices: dict[str, list[float]] = {}
    for i, x in zip(judged, ind):
        names = {row_slice(rows[i]), rows[i].suite}
        for name in names:
            slices.setdefault(name, []).append(x)
    for name in sorted(slices):
        wr = win_rate(slices[name])
        metrics |= {f"winrate/slice/{name}/{k}": wr[k] for k in ("win_rate", "ci_low", "ci_high", "n")}
    return metrics, winners


def run_eval(model: str, suites: list[str], *, baseline: str | None = None, max_new_tokens: int = 256,
             batch_size: int = 32, seed: int = 0, judge: PairwiseJudge | ScoringJudge | None = None,
             output_dir: str | Path, adapter: str | None = None, baseline_adapter: str | None = None,
             backend: str = "hf") -> dict[str, float]:
    """Evaluate ``model`` (and ``baseline``) on ``suites`` (builtin names or paths) and write the output folder.
    Every suite is read and validated before any model loads. Returns the metrics written to metrics.json.
    Win rates need both a baseline and a judge (pairwise, or scoring: the higher score wins); without a judge
    they are skipped."""
    from posttrain.data.writers import atomic_write_json, atomic_write_jsonl
    from posttrain.eval.suites import suite_path
    from posttrain.generation.backends import model_label
    from posttrain.data.runfolder import content_hash, package_versions

    started = time.time()
    rows: list[EvalRow] = []
    suite_inputs = []
    for s in suites:
        name, path = suite_path(s)
        suite_rows = load_suite(s)
        if any(r.suite == name for r in rows):
            raise ValueError(f"suites: '{s}' is given twice (suite name '{name}')")
        rows.extend(suite_rows)
        suite_inputs.append({"suite": name, "path": str(path), "rows": len(suite_rows), "hash": content_hash(path)})
    if judge is not None and baseline is None:
        raise ValueError("judge: a win-rate judge needs a baseline to compare against")
    settings = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, backend=backend)

    model_gens = generate_responses(model, rows, adapter=adapter, **settings)
    metrics, records = _score(rows, model_gens, model_label(model, adapter), "model")
    if baseline is not None:
        base_gens = generate_responses(baseline, rows, adapter=baseline_adapter, **settings)
        base_metrics, base_records = _score(rows, base_gens, model_label(baseline, baseline_adapter), "baseline")
        if base_metrics.get("length/mean_tokens"):
            metrics["length/ratio_to_baseline"] = metrics["length/mean_tokens"] / base_metrics["length/mean_tokens"]
        if judge is not None:
            wr, winners = judge_pairs(judge, rows, model_gens, base_gens)
            metrics |= wr
            for rec, w in zip(records, winners):
                rec["judge_winner"] = {"a": "model", "b": "baseline", "tie": "tie", None: None}[w]
        metrics |= {f"baseline/{k}": v for k, v in base_metrics.items()}
        records += base_records

    out = Path(output_dir)
    atomic_write_jsonl(out / "responses.jsonl", records)
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "manifest.json", {
        "stage": "eval", "status": "completed",
        "inputs": {"model": model, "adapter": adapter, "baseline": baseline, "baseline_adapter": baseline_adapter,
                   "suites": suite_inputs, "judge": getattr(judge, "name", None)},
        "settings": settings | {"temperature": 0.0},
        "outputs": ["responses.jsonl", "metrics.json"], "metrics": metrics,
        "versions": package_versions(), "wall_time_s": time.time() - started,
    })
    return metrics
