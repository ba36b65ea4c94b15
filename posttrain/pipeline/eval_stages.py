"""The ``eval`` and ``gate`` pipeline stages, over ``posttrain.eval.run_eval`` and ``evaluate_gates``.

``eval`` config: ``model`` (default tiny-random), ``adapter``, ``suites`` (builtin names or files), ``baseline``,
``baseline_adapter``, ``base`` (the model the recipe started from: metrics under ``base/``, drift relative to
it), ``trained_on`` (training files: per-kind pass rates marked trained/unseen) or ``trained_kinds``,
``ifeval_unsupported`` (error | skip), ``max_new_tokens``, ``batch_size``, ``seed``, ``backend``, ``dtype`` (the hf
backend's weights dtype for every local model: auto | float32 | bfloat16 | float16), ``judge`` (win
rate vs the baseline: a spec string as in ``posttrain judge --judge`` -- ``verifier``, ``llm:URL:MODEL``, ``local:MODEL``,
``rm:MODEL`` -- or one judge config dict as in the judge stage). ``model``, ``baseline`` and ``base`` may be
``openai:URL:MODEL`` (an endpoint; key in ``$api_key_env``): such a model is named by its spec only, so a rerun of
the pipeline reuses the stage's answers while the spec is unchanged (change ``seed`` to ask again). It writes ``metrics.json`` and
``responses.jsonl`` into its folder. Every eval stage of a run folder reuses and keeps answers in
``<run_dir>/eval_answers.sqlite`` (``eval/answer_reuse.py``: the same weights, prompts, settings and machine give
the same answers, so a recipe variant regenerates only its new model's, not the base's).

``gate`` config: ``metrics`` (a metrics.json, usually ``${eval.output}/metrics.json``) and ``gates`` (a list of
``{metric, min | max | min_delta | max_drop}``) or ``gates_file``. It writes ``gates.json``; when a gate fails the
stage fails (``GateFailed``), so nothing after it runs and a rerun checks again.
"""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.generation.backends import BACKENDS
from posttrain.generation.types import BackendError
from posttrain.judges.specs import JudgeConfigError, parse_judge_spec
from posttrain.pipeline.spec import (PipelineError, check_file, check_generation_dtype, check_judge_entry, check_keys,
                                     check_types, nothing_pending)

# posttrain.eval, posttrain.judges.run and posttrain.data import torch: the stage functions import them, so
# `import posttrain.pipeline.eval_stages` stays free of torch.

EVAL_KEYS = ("model", "adapter", "suites", "baseline", "baseline_adapter", "base", "max_new_tokens", "batch_size",
             "seed", "backend", "judge", "trained_on", "trained_kinds", "ifeval_unsupported", "rubric", "rubric_judge",
             "api_key_env", "dtype")
GATE_KEYS = ("metrics", "gates", "gates_file")


class GateFailed(RuntimeError):
    """At least one gate failed; ``str()`` is one line listing the failures."""


def check_eval(params: dict, pending) -> None:
    """Keys, types, suites (builtin names, existing files, or files an upstream stage writes) and the judge."""
    from posttrain.eval.suites import BUILTIN_SUITES

    check_keys(params, EVAL_KEYS)
    suites = params.get("suites")
    if not suites:
        raise PipelineError("config: key 'suites' is required (builtin suite names or files)")
    check_types(params, {"model": (str,), "adapter": (str,), "suites": (str, list), "baseline": (str,),
                         "baseline_adapter": (str,), "max_new_tokens": (int,), "batch_size": (int,), "seed": (int,),
                         "backend": (str,), "judge": (str, dict), "base": (str,), "trained_on": (str, list),
                         "trained_kinds": (str, list), "ifeval_unsupported": (str,), "rubric": (str,),
                         "rubric_judge": (str,), "api_key_env": (str,), "dtype": (str,)})
    if params.get("rubric_judge") and not params.get("rubric"):
        raise PipelineError("config: key 'rubric_judge' grades the rules of a 'rubric' file; give 'rubric'")
    check_file(params, "rubric", pending)
    if params.get("ifeval_unsupported", "error") not in ("error", "skip"):
        raise PipelineError(f"config: key 'ifeval_unsupported': expected error or skip, got "
                            f"{params['ifeval_unsupported']!r}")
    for suite in [suites] if isinstance(suites, str) else suites:
        name = _suite_name(suite)
        if not (isinstance(name, str) and (name in BUILTIN_SUITES or pending(name) or Path(name).is_file())):
            raise PipelineError(f"config: key 'suites': no such suite file {suite!r} (builtin suites: "
                                f"{', '.join(BUILTIN_SUITES)})")
    if params.get("backend", "hf") not in BACKENDS:
        raise PipelineError(f"config: key 'backend': '{params['backend']}' is not one of {', '.join(BACKENDS)}")
    check_generation_dtype(params)
    spec = params.get("judge")
    if isinstance(spec, str):
        try:
            spec = parse_judge_spec(spec)
        except JudgeConfigError as e:
            raise PipelineError(f"config: key 'judge': {str(e).replace('--judge ', '')}") from None
    if spec is not None:
        check_judge_entry(spec, "judge")


def run_eval_stage(params: dict, output_dir: Path, resume: bool) -> dict:
    from posttrain.eval.answer_reuse import STORE_NAME
    from posttrain.eval.run import run_eval

    check_eval(params, nothing_pending)
    suites = params["suites"]
    suites = [suites] if isinstance(suites, str) else list(suites)
    judge = _win_rate_judge(params.get("judge"))
    rubric = None
    if params.get("rubric"):
        from posttrain.judges.run import JudgeConfigError, rubric_judge_of

        try:
            rubric = rubric_judge_of(params["rubric"], params.get("rubric_judge"), option="rubric")
        except JudgeConfigError as e:
            raise PipelineError(f"config: key {e}") from None
    try:
        return run_eval(params.get("model", "tiny-random"), suites, baseline=params.get("baseline"),
                        base=params.get("base"), max_new_tokens=int(params.get("max_new_tokens", 256)),
                        batch_size=int(params.get("batch_size", 32)), seed=int(params.get("seed", 0)),
                        output_dir=output_dir, adapter=params.get("adapter"),
                        baseline_adapter=params.get("baseline_adapter"), backend=params.get("backend", "hf"),
                        judge=judge, trained_on=_as_list(params.get("trained_on")),
                        trained_kinds=_as_list(params.get("trained_kinds")),
                        ifeval_unsupported=params.get("ifeval_unsupported", "error"), rubric=rubric,
                        api_key_env=params.get("api_key_env", "OPENAI_API_KEY"), dtype=params.get("dtype", "auto"),
                        answer_cache=Path(output_dir).parent / STORE_NAME)  # shared by the run folder's evals
    except (ValueError, BackendError) as e:  # a bad suite, option or model spec: one line for the user
        raise PipelineError(f"config: {str(e).splitlines()[0]}") from None


def _suite_name(suite):
    """A suite entry without its ``@N`` budget (``constraints_ood@128`` -> ``constraints_ood``)."""
    if isinstance(suite, str) and suite.rpartition("@")[2].isdigit():
        return suite.rpartition("@")[0]
    return suite


def _as_list(value) -> list | None:
    return None if value is None else [value] if isinstance(value, str) else list(value)


def _win_rate_judge(spec):
    """The judge object for ``judge:`` (None when absent); config problems are one-line PipelineErrors."""
    if spec is None:
        return None
    from posttrain.judges.run import JudgeConfigError, win_rate_judge

    try:
        return win_rate_judge(spec)
    except JudgeConfigError as e:
        raise PipelineError(f"config: key 'judge': {str(e).replace('--judge ', '')}") from None


def eval_inputs(params: dict) -> list[str]:
    from posttrain.eval.suites import suite_path

    suites = params.get("suites") or []
    paths = []
    for s in [suites] if isinstance(suites, str) else suites:
        try:
            paths.append(str(suite_path(s)[1]))
        except ValueError:
            paths.append(s)  # reported when the stage runs
    return [p for p in (params.get("model", "tiny-random"), params.get("adapter"), params.get("baseline"),
                        params.get("baseline_adapter"), params.get("base"), *paths,
                        *(_as_list(params.get("trained_on")) or []), params.get("rubric")) if p]


def gate_list(params: dict, pending) -> list | None:
    """The stage's gates (None when ``gates_file`` is written by an upstream stage and not there yet)."""
    from posttrain.eval.gates import GateConfigError, load_gates, parse_gates

    check_keys(params, GATE_KEYS)
    if "metrics" not in params:
        raise PipelineError("config: key 'metrics' is required (a metrics.json, e.g. ${eval.output}/metrics.json)")
    if ("gates" in params) == ("gates_file" in params):
        raise PipelineError("config: give exactly one of 'gates' (a list) and 'gates_file'")
    if "gates_file" in params and pending(params["gates_file"]):
        return None
    try:
        return load_gates(params["gates_file"]) if "gates_file" in params else parse_gates(params["gates"], "gates")
    except GateConfigError as e:
        raise PipelineError(f"config: {e}") from None


def check_gate(params: dict, pending) -> None:
    gate_list(params, pending)


def run_gate_stage(params: dict, output_dir: Path, resume: bool) -> dict:
    from posttrain.data.writers import atomic_write_json
    from posttrain.eval.gates import evaluate_gates, record_verdicts

    gates = gate_list(params, nothing_pending)
    try:
        metrics = json.loads(Path(params["metrics"]).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PipelineError(f"config: key 'metrics': cannot read {params['metrics']}: {e}") from None
    results = evaluate_gates(metrics, gates)
    failed = [r for r in results if not r.passed]
    # The verdicts also go into the eval's own manifest (as `posttrain gate` does), so that folder says whether its
    # model passed. The runner leaves a stage's manifest.json out of the outputs it verifies, so this does not make
    # the finished eval stage look changed.
    record_verdicts(params["metrics"], params.get("gates_file") or f"gate stage {output_dir.name}", results)
    atomic_write_json(output_dir / "gates.json", {
        "metrics": params["metrics"], "passed": not failed,
        "results": [{"metric": r.metric, "kind": r.kind, "threshold": r.threshold, "value": r.value,
                     "baseline_value": r.baseline_value, "passed": r.passed, "reason": r.reason} for r in results]})
    if failed:
        raise GateFailed(f"{len(failed)} of {len(results)} gates failed: "
                         + "; ".join(f"{r.metric}: {r.reason}" for r in failed))
    return {"gates_passed": len(results), "gates_failed": 0}


def gate_inputs(params: dict) -> list[str]:
    return [p for p in (params.get("metrics"), params.get("gates_file")) if p]
