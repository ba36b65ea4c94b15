"""``run_eval``: greedy responses of a model (and a baseline, and the base model) to eval suites, scored,
compared, written.

Output folder: ``responses.jsonl`` (one row per suite row and model), ``metrics.json`` (flat keys; the
baseline's under ``baseline/``, the base model's under ``base/``; ratios and deltas against each from
``drift.relative_metrics``, the length against each on the rows where neither answer loops from
``drift.paired_length``; each pass-rate difference against each with its 95% paired interval, from
``significance.paired_metrics``; win rates under ``winrate/``), ``manifest.json`` (inputs with content hashes,
settings, package versions, metrics, status; ``posttrain gate`` adds its verdicts under ``gates``). All atomic.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from posttrain.data.render import render_prompt
from posttrain.data.runfolder import content_hash, package_versions
from posttrain.data.schema import DataError, PromptExample
from posttrain.data.writers import atomic_write_json, atomic_write_jsonl
from posttrain.eval.answer_reuse import AnswerStore, answers_key
from posttrain.eval.coverage import trained_kinds as read_trained_kinds
from posttrain.eval.drift import paired_length, relative_metrics
from posttrain.eval.scoring import score_suite
from posttrain.eval.significance import paired_metrics
from posttrain.eval.suites import EvalRow, load_suite, parse_suite
from posttrain.eval.winrate import length_controlled_win_rate, win_indicators, win_rate
from posttrain.generation.backends import check_dtype, load_generator, model_label
from posttrain.generation.openai_backend import OpenAIGenerator, parse_openai_spec
from posttrain.judges.rubric import rule_statistics
from posttrain.judges.types import PairwiseJudge, ScoringJudge


def remote_model(model: str | None) -> tuple[str, str] | None:
    """``(base_url, model name)`` of a model given as ``openai:URL:MODEL`` (an OpenAI-compatible endpoint: a
    deployment, a vLLM server, a teacher), else None; a malformed spec is a one-line ``BackendError``."""
    return parse_openai_spec(model) if model and model.startswith("openai:") else None


def _remote_responses(remote: tuple[str, str], label: str, rows: list[EvalRow], budgets: list[int], *, seed: int,
                      api_key_env: str) -> list[tuple[str, int, str]]:
    """Greedy answers of an endpoint (temperature 0, one request per row, the row's budget as ``max_tokens``,
    each row's own seed). Not cached: a deployment may change behind the same name, and an eval measures it now."""
    generator = OpenAIGenerator(*remote, api_key_env=api_key_env, use_cache=False)
    outs: list = [None] * len(rows)
    with tqdm(total=len(rows), desc=f"eval {label}", unit="prompt", dynamic_ncols=True) as bar:
        for budget in sorted(set(budgets)):
            order = [i for i in range(len(rows)) if budgets[i] == budget]
            for p, (c,) in generator.stream([rows[i].prompt for i in order],
                                            [f"{rows[i].suite}/{rows[i].id}" for i in order], n=1, temperature=0.0,
                                            top_p=1.0, max_new_tokens=budget, seed=seed):
                outs[order[p]] = (c.text, c.completion_tokens, c.finish_reason)
                bar.update(1)
    return outs


def generate_responses(model: str, rows: list[EvalRow], *, max_new_tokens: int | list[int], batch_size: int,
                       seed: int, adapter: str | None = None, backend: str = "hf",
                       api_key_env: str = "OPENAI_API_KEY", dtype: str = "auto", store: AnswerStore | None = None,
                       sources: dict[str, str] | None = None, role: str = "model") -> list[tuple[str, int, str]]:
    """Greedy ``(text, completion_tokens, finish_reason)`` for each row's prompt, in row order. ``dtype``: the hf
    backend's weights dtype (a remote model is answered as it is served).
    ``max_new_tokens``: one budget for all rows, or one per row (rows are batched with rows of the same budget).
    ``model`` may be ``openai:URL:MODEL``: the endpoint answers (``backend`` and ``batch_size`` do not apply).
    ``store``: answers of the same weights, prompts, settings and machine are taken from it, and new ones put in
    it (``eval/answer_reuse.py``; hf backend only). ``sources[role]`` is set to ``reused`` or ``generated``."""
    budgets = [max_new_tokens] * len(rows) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    remote = remote_model(model)
    if remote is not None:
        return _remote_responses(remote, model, rows, budgets, seed=seed, api_key_env=api_key_env)
    generator, tokenizer = load_generator(model, adapter=adapter, backend=backend, batch_size=batch_size, seed=seed,
                                          dtype=dtype)
    prompt_ids = [render_prompt(PromptExample(r.prompt, r.source, r.row), tokenizer) for r in rows]
    key = None
    if store is not None and backend == "hf":
        key = answers_key(generator.model, prompt_ids, budgets, batch_size=batch_size, seed=seed)
        kept = store.get(key)
        if kept is not None:  # the key holds every prompt: one answer per row
            print(f"posttrain eval: {model_label(model, adapter)}: {len(kept)} answers reused from {store.path} "
                  "(same weights, prompts, settings and machine)", file=sys.stderr, flush=True)
            if sources is not None:
                sources[role] = "reused"
            return kept
    # Per budget, longest prompts first, in chunks of one batch each, so the bar moves per batch and padding
    # stays low.
    outs: list = [None] * len(rows)
    with tqdm(total=len(rows), desc=f"eval {model}", unit="prompt", dynamic_ncols=True) as bar:
        for budget in sorted(set(budgets)):
            order = sorted((i for i in range(len(rows)) if budgets[i] == budget), key=lambda i: -len(prompt_ids[i]))
            for start in range(0, len(order), batch_size):
                chunk = order[start: start + batch_size]
                got = generator.generate([prompt_ids[i] for i in chunk], n=1, temperature=0.0, top_p=1.0,
                                         max_new_tokens=budget, seed=seed,
                                         keys=[f"{rows[i].suite}/{rows[i].id}" for i in chunk])
                for i, o in zip(chunk, got):
                    outs[i] = o[0]
                bar.update(len(chunk))
    del generator  # free the model before the next one loads
    answers = [(o.text, o.completion_tokens, o.finish_reason) for o in outs]
    if key is not None:
        store.put(key, answers, {"model": model_label(model, adapter), "rows": len(rows)})
    if sources is not None:
        sources[role] = "generated"
    return answers


def _score(rows: list[EvalRow], gens: list[tuple[str, int, str]], label: str, role: str,
           trained: set[str] | None = None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    metrics, scores = score_suite(rows, [g[0] for g in gens], [g[1] for g in gens], [g[2] for g in gens], trained)
    records = [{"suite": r.suite, "group": r.group, "id": r.id, "kind": r.kind, "role": role, "model": label,
                "text": g[0],
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


def rubric_metrics(judge: Any, rows: list[EvalRow], gens: list[tuple[str, int, str]]
                   ) -> tuple[dict[str, float], list[Any]]:
    """``rubric/*`` metrics of one model's responses under a ``RubricJudge`` (judges/rubric.py), and each row's
    ``Score``: ``rubric/score`` (mean weighted grade in [0, 1]), ``rubric/pass_rate`` (every rule passed),
    ``rubric/n`` (rows scored), ``rubric/skipped`` (rows a verifier rule cannot check, e.g. a ``constraints`` rule
    on a refusal prompt: left out), ``rubric/unparseable`` (LLM answers with no grade), and per rule
    ``rubric/rule/<id>/pass_rate`` and ``rubric/rule/<id>/n`` (the rows that rule was graded on)."""
    items = [(r.prompt, g[0], {"id": r.id, "suite": r.suite, "kind": r.kind, **r.metadata})
             for r, g in zip(rows, gens)]
    scores = judge.score_many(items, on_row_error="skip")
    scored = [s for s in scores if "rules" in s.details]
    values = [s.value for s in scored if s.value == s.value]  # not NaN
    judged = [s.passed for s in scored if s.passed is not None]
    metrics = {"rubric/n": float(len(values)), "rubric/skipped": float(len(scores) - len(scored))}
    if values:
        metrics["rubric/score"] = sum(values) / len(values)
    if judged:
        metrics["rubric/pass_rate"] = sum(judged) / len(judged)
    per_rule = rule_statistics(judge.rules, scored)
    metrics["rubric/unparseable"] = float(sum(st["unparseable"] for st in per_rule.values()))
    for rule, st in per_rule.items():
        metrics[f"rubric/rule/{rule}/n"] = float(st["asked"] - st["unparseable"])
        if st["pass_rate"] is not None:
            metrics[f"rubric/rule/{rule}/pass_rate"] = st["pass_rate"]
    return metrics, scores


def _add_rubric(judge: Any, rows: list[EvalRow], gens: list[tuple[str, int, str]], metrics: dict[str, float],
                records: list[dict[str, Any]]) -> None:
    """Rubric metrics into ``metrics``, each row's rubric score into its response record."""
    got, scores = rubric_metrics(judge, rows, gens)
    metrics |= got
    for rec, sc in zip(records, scores):
        rec["rubric"] = {"value": sc.value, "passed": sc.passed, **sc.details}


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


def load_suites(suites: list[str], max_new_tokens: int, ifeval_unsupported: str = "error"
                ) -> tuple[list[EvalRow], list[int], list[dict[str, Any]]]:
    """(rows of every suite, each row's token budget, the manifest's suite entries). Every suite is read and
    validated here, before any model loads; a suite named twice is a ``ValueError``."""
    rows: list[EvalRow] = []
    budgets: list[int] = []
    entries = []
    for s in suites:
        spec = parse_suite(s)
        skipped: list[DataError] = []
        suite_rows = load_suite(s, ifeval_unsupported=ifeval_unsupported, skipped=skipped)
        if any(r.suite == spec.name for r in rows):
            raise ValueError(f"suites: '{s}' is given twice (suite name '{spec.name}')")
        budget = spec.max_new_tokens or max_new_tokens
        rows.extend(suite_rows)
        budgets.extend([budget] * len(suite_rows))
        skipped_ids = sorted({i for r in suite_rows for i in r.metadata.get("ifeval_skipped", [])})
        entries.append({"suite": spec.name, "path": str(spec.path), "group": spec.group, "max_new_tokens": budget,
                        "rows": len(suite_rows), "hash": content_hash(spec.path),
                        **({"skipped_rows": len(skipped), "skipped_ids": skipped_ids}
                           if ifeval_unsupported == "skip" else {})})
    return rows, budgets, entries


def combine_metrics(metrics: dict[str, float], refs: dict[str, dict[str, float]], rows: list[EvalRow] | None = None,
                    verdicts: dict[str, list[bool]] | None = None,
                    texts: dict[str, list[str]] | None = None) -> dict[str, float]:
    """The model's metrics, its ratios and deltas against each reference (``drift.relative_metrics``), and each
    reference's metrics under ``<ref>/`` (the baseline's with its own drift from the base). With the ``rows`` and
    each model's per-row ``verdicts`` (``"model"`` and each reference), every pass-rate difference against each
    reference with its 95% paired interval (``significance.paired_metrics``); with each model's per-row answers
    (``texts``, same roles), the length against each reference on the rows where neither loops
    (``drift.paired_length``)."""
    out = dict(metrics)
    with_texts = rows is not None and texts is not None
    paired = {ref: paired_length(rows, texts["model"], texts[ref], ref) for ref in refs} if with_texts else {}
    for ref, ref_metrics in refs.items():
        out |= relative_metrics(metrics, ref_metrics, ref) | paired.get(ref, {})
    for ref, ref_metrics in refs.items():
        if ref == "baseline" and "base" in refs:  # how far the baseline itself had drifted from the base
            ref_metrics = ref_metrics | relative_metrics(ref_metrics, refs["base"], "base")
            if with_texts:
                ref_metrics |= paired_length(rows, texts["baseline"], texts["base"], "base")
        out |= {f"{ref}/{k}": v for k, v in ref_metrics.items()}
    if rows is not None and verdicts is not None:
        for ref in refs:  # is each pass-rate change real?
            out |= paired_metrics(rows, verdicts["model"], verdicts[ref], ref)
    return out


def run_eval(model: str, suites: list[str], *, baseline: str | None = None, base: str | None = None,
             max_new_tokens: int = 256, batch_size: int = 32, seed: int = 0,
             judge: PairwiseJudge | ScoringJudge | None = None, output_dir: str | Path, adapter: str | None = None,
             baseline_adapter: str | None = None, backend: str = "hf", trained_on: list[str] | None = None,
             trained_kinds: list[str] | None = None, ifeval_unsupported: str = "error",
             rubric: Any = None, api_key_env: str = "OPENAI_API_KEY", dtype: str = "auto",
             answer_cache: str | Path | None = None) -> dict[str, float]:
    """Evaluate ``model`` (and ``baseline``, and ``base``: the model the recipe started from) on ``suites``
    (builtin names or paths, optionally ``@N`` for a suite's budget) and write the output folder. Every suite is
    read and validated before any model loads. Returns the metrics written to metrics.json.

    ``max_new_tokens`` is the budget of suites without their own. ``trained_on`` (training files of any layout)
    and ``trained_kinds`` name the constraint kinds the model was trained on: the per-kind metrics mark each kind
    trained or unseen. Win rates need both a baseline and a judge (pairwise, or scoring: the higher score wins);
    without a judge they are skipped. The base model's metrics go under ``base/``, and length, degeneration and
    formatting are also given relative to it (``drift.relative_metrics``); a base equal to the baseline is not
    generated twice. ``rubric`` (a ``RubricJudge``) adds ``rubric/*`` metrics for every model (``rubric_metrics``:
    per-rule pass rates). Any of the three models may be ``openai:URL:MODEL`` (an OpenAI-compatible endpoint,
    its key in ``$api_key_env``): e.g. a candidate against the model being served. ``dtype``: the weights dtype of
    every local model (``generation.backends.GENERATION_DTYPES``; auto is float32 on a CPU): the same for all three,
    so that their answers differ by the model only. ``answer_cache``: a SQLite file of answers to reuse and keep
    (``eval/answer_reuse.py``: only answers of the same weights, prompts, settings and machine are reused); the
    manifest says which model's answers were reused."""
    started = time.time()
    check_dtype(dtype, backend)
    rows, budgets, suite_inputs = load_suites(suites, max_new_tokens, ifeval_unsupported)
    if judge is not None and baseline is None:
        raise ValueError("judge: a win-rate judge needs a baseline to compare against")
    for name, which, extra in (("model", model, adapter), ("baseline", baseline, baseline_adapter),
                               ("base", base, None)):  # a malformed spec fails here, before any model loads
        if remote_model(which) is not None and extra:
            raise ValueError(f"{name} {which}: a remote model (openai:URL:MODEL) takes no adapter")
    trained = (read_trained_kinds(trained_on or [], trained_kinds or [])
               if trained_on is not None or trained_kinds is not None else None)
    store = AnswerStore(answer_cache) if answer_cache is not None else None
    sources: dict[str, str] = {}
    settings = dict(max_new_tokens=budgets, batch_size=batch_size, seed=seed, backend=backend,
                    api_key_env=api_key_env, dtype=dtype, store=store, sources=sources)

    model_gens = generate_responses(model, rows, adapter=adapter, role="model", **settings)
    metrics, records = _score(rows, model_gens, model_label(model, adapter), "model", trained)
    verdicts: dict[str, list[bool]] = {"model": [r["passed"] for r in records]}
    texts: dict[str, list[str]] = {"model": [g[0] for g in model_gens]}
    if rubric is not None:
        _add_rubric(rubric, rows, model_gens, metrics, records)
    refs: dict[str, dict[str, float]] = {}
    if baseline is not None:
        base_gens = generate_responses(baseline, rows, adapter=baseline_adapter, role="baseline", **settings)
        refs["baseline"], base_records = _score(rows, base_gens, model_label(baseline, baseline_adapter),
                                                "baseline", trained)
        verdicts["baseline"] = [r["passed"] for r in base_records]
        texts["baseline"] = [g[0] for g in base_gens]
        if rubric is not None:
            _add_rubric(rubric, rows, base_gens, refs["baseline"], base_records)
        if judge is not None:
            wr, winners = judge_pairs(judge, rows, model_gens, base_gens)
            metrics |= wr
            for rec, w in zip(records, winners):
                rec["judge_winner"] = {"a": "model", "b": "baseline", "tie": "tie", None: None}[w]
        records += base_records
    if base is not None:
        same = base == baseline and baseline_adapter is None
        gens = base_gens if same else generate_responses(base, rows, role="base", **settings)
        refs["base"], base_model_records = _score(rows, gens, model_label(base, None), "base", trained)
        verdicts["base"] = [r["passed"] for r in base_model_records]
        texts["base"] = [g[0] for g in gens]
        if rubric is not None:
            _add_rubric(rubric, rows, gens, refs["base"], base_model_records)
        records += base_model_records
    metrics = combine_metrics(metrics, refs, rows, verdicts, texts)

    out = Path(output_dir)
    atomic_write_jsonl(out / "responses.jsonl", records)
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "manifest.json", {
        "stage": "eval", "status": "completed",
        "inputs": {"model": model, "adapter": adapter, "baseline": baseline, "baseline_adapter": baseline_adapter,
                   "base": base, "suites": suite_inputs, "judge": getattr(judge, "name", None),
                   "rubric": ({"path": rubric.path, "hash": content_hash(rubric.path), "judge": rubric.name}
                              if rubric is not None else None),
                   "trained_on": [{"path": str(p), "hash": content_hash(p)} for p in trained_on or []],
                   "trained_kinds": sorted(trained) if trained is not None else None},
        "settings": {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "seed": seed, "backend": backend,
                     "dtype": dtype, "temperature": 0.0, "ifeval_unsupported": ifeval_unsupported,
                     "answer_cache": str(answer_cache) if answer_cache is not None else None},
        "answers": sources,  # per model: generated here, or reused from the answer cache
        "outputs": ["responses.jsonl", "metrics.json"], "metrics": metrics,
        "versions": package_versions(), "wall_time_s": time.time() - started,
    })
    if store is not None:
        store.close()
    return metrics
