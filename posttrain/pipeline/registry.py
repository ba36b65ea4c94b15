"""The stage table: pipeline command name -> how to check its config, run it into a folder, and which input files
it reads.

``check(params, pending)`` validates the stage's config tree before any stage of the pipeline runs (structure,
types, and the existence of user files; ``pending(path)`` is true for paths inside upstream stages' folders,
which may not exist yet). ``run(params, output_dir, resume)`` runs the stage with its config tree ``params``
(references already replaced by folders) and returns its metrics; ``resume`` is true when the folder holds a
killed attempt. ``inputs(params)`` lists the files/folders whose content decides the stage's output (hashed
into its cache key); names that are not local paths (``tiny-random``, hub ids) are skipped by the hasher.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from posttrain.commands import TRAINING_COMMANDS, TrainingCommand
from posttrain.commands import command as training_command
from posttrain.generation.http_client import TOKEN_LIMIT_FIELDS
from posttrain.pipeline.spec import (PipelineError, Pending, check_file, check_generation_dtype, check_judge_entry,
                                     check_keys, check_model, check_types, nothing_pending)

# Each stage imports its implementation when it runs or is checked (a measured start-up reason, as in cli.py):
# `posttrain run` checks every stage's config before the first one runs, and importing every trainer, judge and
# generator here would add 1-1.4 s on 2 cores (every posttrain module, transformers among them; the model stack with
# peft, 3.6-4.1 s) and optional backends for pipelines that use none of them.


@dataclass(frozen=True)
class StageSpec:
    run: Callable[[dict, Path, bool], dict]
    inputs: Callable[[dict], list[str]]
    check: Callable[[dict, Pending], None] | None = None
    main_metric: str | None = None
    tolerates_not_run: bool = False  # runs even when upstream stages were not run (their outputs absent)


def training_config(command: str, params: dict, output_dir: Path, resume: bool):
    """The config of training command ``command`` (CLI or stage name) built from a stage's config tree, with the
    stage's folder as ``train.output_dir``; problems are one-line ``PipelineError``s naming the key."""
    from posttrain.config import ConfigError, build_config

    row = training_command(command)
    # an empty misspelt section (`trian: {}`) would otherwise be dropped unseen by the section defaults
    sections = row.config.model_fields
    unknown = sorted(set(params) - set(sections))
    if unknown:
        raise PipelineError(f"config: key '{unknown[0]}': unknown key (expected: {', '.join(sections)})")
    train = params.get("train")
    tree = {**params, "train": {**(train if isinstance(train, dict) else {}), "output_dir": str(output_dir),
                                "resume": resume, "overwrite": False}}
    try:
        return build_config(row.name, tree, where="config")
    except ConfigError as e:
        raise PipelineError(str(e).splitlines()[0]) from None


def _training_run(row: TrainingCommand) -> Callable[[dict, Path, bool], dict]:
    def train(params: dict, output_dir: Path, resume: bool) -> dict:
        return row.trainer()(training_config(row.name, params, output_dir, resume))

    if not row.decontaminate:
        return train

    def run(params: dict, output_dir: Path, resume: bool) -> dict:
        # Decontamination against the eval suites first (report by default; `decontaminate:` in the stage config).
        from posttrain.pipeline.hygiene_stages import decontaminate_then_train

        return decontaminate_then_train(row.name, params, output_dir, resume,
                                        lambda p, r: train(p, output_dir, r),
                                        check=lambda p: training_config(row.name, p, output_dir, resume))

    return run


def _training_check(row: TrainingCommand) -> Callable[[dict, Pending], None]:
    """The whole training config (and, for the commands that decontaminate first, the ``decontaminate`` key)."""
    def check(params: dict, pending: Pending) -> None:
        if row.decontaminate:
            from posttrain.pipeline.hygiene_stages import decontamination_settings

            decontamination_settings(params)
            params = {k: v for k, v in params.items() if k != "decontaminate"}
        training_config(row.name, params, Path("<check>"), False)

    return check


def training_inputs(params: dict) -> list[str]:
    model, data = params.get("model") or {}, params.get("data") or {}
    decontaminate = params.get("decontaminate")  # eval files of the pre-training decontamination (posttrain.hygiene)
    eval_files = (decontaminate.get("eval_files") or []) if isinstance(decontaminate, dict) else []
    loss = params.get("loss") if isinstance(params.get("loss"), dict) else {}
    from posttrain.data.sources import local_paths

    sources = [p for key in ("train", "eval") if data.get(key) for p in local_paths(data[key])]
    mix = params.get("mix_sft") if isinstance(params.get("mix_sft"), dict) else {}  # SFT rows mixed into DPO
    sources += local_paths(mix["path"]) if mix.get("path") else []
    return [p for p in (model.get("name", "tiny-random"), model.get("adapter"), *sources,
                        loss.get("reference_model"), *eval_files) if p]


def training_stages() -> dict[str, StageSpec]:
    """One stage per row of the command table (``posttrain/commands.py``); the trainer is imported when it runs."""
    return {row.stage: StageSpec(_training_run(row), lambda p, row=row: training_inputs(p) + row.extra_inputs(p),
                                 _training_check(row), main_metric=row.main_metric)
            for row in TRAINING_COMMANDS}


def run_data(params: dict, output_dir: Path, resume: bool) -> dict:
    from posttrain.pipeline.hygiene_stages import run_data_stage

    return run_data_stage(params, output_dir, resume)


def check_data(params: dict, pending: Pending) -> None:
    from posttrain.hygiene.clean import HygieneConfig

    rest = dict(params)
    if not rest.pop("input", None):
        raise PipelineError("config: key 'input' is required (the data file to clean)")
    check_model(HygieneConfig, {"progress": False, **rest})


def data_inputs(params: dict) -> list[str]:
    return [p for p in [params.get("input"), *(params.get("eval_files") or [])] if p]


GENERATE_KEYS = ("prompts", "model", "adapter", "limit", "constraint_kinds", "n", "temperature", "top_p",
                 "max_new_tokens", "batch_size", "seed", "system_prompt", "backend", "api_key_env", "max_concurrency",
                 "max_tokens_field", "progress", "dtype")


def select_prompts(path: str, limit: int | None, kinds: list[str] | None) -> list[dict]:
    """The prompt rows to generate for: those whose constraints are all of ``kinds`` (when given), first ``limit``."""
    rows = []
    try:  # utf-8-sig: files exported with a byte-order mark read like any other
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        line = e.object[:e.start].count(b"\n") + 1
        raise PipelineError(f"config: prompts {path}:{line}: not UTF-8 text (byte {e.object[e.start]:#04x}); "
                            "save the file as UTF-8") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PipelineError(f"config: prompts {path}:{number}: not a JSON object ({e.msg})") from None
        if kinds is not None:
            row_kinds = [c.get("kind") for c in row.get("constraints") or []]
            if not row_kinds or any(k not in kinds for k in row_kinds):
                continue
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return rows


def generate_remote(params: dict) -> tuple[str, str] | None:
    """``(base_url, model)`` when the stage samples from ``backend: openai:URL:MODEL``, else None (hf, vllm)."""
    from posttrain.generation.backends import check_backend
    from posttrain.generation.types import BackendError

    try:
        return check_backend(params.get("backend", "hf"))
    except BackendError as e:
        raise PipelineError(f"config: key 'backend': {e}") from None


def check_generate(params: dict, pending: Pending) -> None:
    check_keys(params, GENERATE_KEYS)
    if "prompts" not in params:
        raise PipelineError("config: key 'prompts' is required")
    check_types(params, {"prompts": (str,), "model": (str,), "adapter": (str,), "limit": (int,),
                         "constraint_kinds": (list,), "n": (int,), "temperature": (int, float, list),
                         "top_p": (int, float, list), "max_new_tokens": (int,), "batch_size": (int,), "seed": (int,),
                         "backend": (str,), "api_key_env": (str,), "max_concurrency": (int,),
                         "max_tokens_field": (str,), "progress": (bool,), "system_prompt": (str,), "dtype": (str,)})
    if params.get("max_tokens_field", "max_tokens") not in TOKEN_LIMIT_FIELDS:
        raise PipelineError(f"config: key 'max_tokens_field': expected {' or '.join(TOKEN_LIMIT_FIELDS)}, got "
                            f"{params['max_tokens_field']!r}")
    if generate_remote(params) is not None and params.get("adapter"):
        raise PipelineError("config: key 'adapter': a remote model (backend: openai:URL:MODEL) takes no adapter")
    check_generation_dtype(params)
    check_file(params, "prompts", pending)


def run_generate(params: dict, output_dir: Path, resume: bool) -> dict:
    """Writes ``prompts.jsonl`` (the selected prompts) and ``candidates.jsonl``; resumes its own file."""
    from posttrain.data.writers import atomic_write_jsonl
    from posttrain.generation.candidates import generate_candidates

    check_generate(params, nothing_pending)
    p = dict(params)
    prompts = output_dir / "prompts.jsonl"
    if not (resume and prompts.exists()):
        atomic_write_jsonl(prompts, select_prompts(p["prompts"], p.get("limit"), p.get("constraint_kinds")))
    # with openai:URL:MODEL, `model` is only the rows' label (default MODEL)
    model = p.get("model") if generate_remote(p) is not None else p.get("model", "tiny-random")
    summary = generate_candidates(
        prompts, output_dir / "candidates.jsonl", model, n=int(p.get("n", 4)),
        temperatures=p.get("temperature", 1.0), top_p=p.get("top_p", 1.0),
        max_new_tokens=int(p.get("max_new_tokens", 256)), batch_size=int(p.get("batch_size", 32)),
        seed=int(p.get("seed", 0)), backend=p.get("backend", "hf"), adapter=p.get("adapter"),
        progress=bool(p.get("progress", True)), api_key_env=p.get("api_key_env", "OPENAI_API_KEY"),
        max_concurrency=int(p.get("max_concurrency", 8)), max_tokens_field=p.get("max_tokens_field", "max_tokens"),
        system_prompt=p.get("system_prompt"), dtype=p.get("dtype", "auto"))
    return {k: summary[k] for k in ("prompts", "prompts_generated", "prompts_skipped", "candidates_written",
                                    "completion_tokens", "tokens_per_s")}


def generate_inputs(params: dict) -> list[str]:
    if generate_remote(params) is not None:  # a remote model has no local files; its spec is in the config
        return [params["prompts"]] if params.get("prompts") else []
    return [p for p in (params.get("prompts"), params.get("model", "tiny-random"), params.get("adapter")) if p]


def check_judge(params: dict, pending: Pending) -> None:
    from posttrain.judges.run import PAIR_KEYS, JudgeConfigError, repair_count
    from posttrain.judges.pairs import PAIRWISE_STRATEGIES, STRATEGIES

    check_keys(params, ("candidates", "judges", "pairs", "progress"))
    if "candidates" not in params:
        raise PipelineError("config: key 'candidates' is required")
    check_types(params, {"candidates": (str,), "judges": (list,), "pairs": (dict,), "progress": (bool,)})
    for i, spec in enumerate(params.get("judges") or []):
        check_judge_entry(spec, f"judges[{i}]")
    pairs = params.get("pairs") or {}
    unknown = sorted(set(pairs) - set(PAIR_KEYS))
    if unknown:
        raise PipelineError(f"config: key 'pairs.{unknown[0]}': unknown key (expected: {', '.join(PAIR_KEYS)})")
    if pairs.get("strategy", "best_vs_worst") not in STRATEGIES + PAIRWISE_STRATEGIES:
        raise PipelineError(f"config: key 'pairs.strategy': '{pairs['strategy']}' is not one of "
                            f"{', '.join(STRATEGIES + PAIRWISE_STRATEGIES)}")
    try:
        repair_count(pairs.get("strategy", "best_vs_worst"), pairs.get("repair"))
    except JudgeConfigError as e:
        raise PipelineError(f"config: {e}") from None
    check_file(params, "candidates", pending)


def judge_inputs(params: dict) -> list[str]:
    """The candidates, and what each judge reads besides: a local or reward model's folder, a rubric file."""
    from posttrain.commands import judge_files

    return ([params["candidates"]] if params.get("candidates") else []) + judge_files(params.get("judges") or [])


def run_judge(params: dict, output_dir: Path, resume: bool) -> dict:
    from posttrain.judges.run import JudgeConfigError, judge_candidates

    check_judge(params, nothing_pending)
    try:
        summary = judge_candidates(params["candidates"], output_dir, params.get("judges") or [{"type": "verifier"}],
                                   params.get("pairs"), progress=bool(params.get("progress", False)))
    except JudgeConfigError as e:
        raise PipelineError(f"config: {e}") from None
    scores = summary.get("scores") or {}
    return {"pairs_kept": summary["pairs"]["pairs_kept"], "pairs_considered": summary["pairs"]["pairs_considered"],
            **{k: scores[k] for k in ("pass_rate", "mean_score") if scores.get(k) is not None}}


AUGMENT_KEYS = ("candidates", "per_reply", "plain_share", "two_constraint_share", "hold_out_kinds", "kind_weights",
                "min_words", "max_words", "skip_truncated", "skip_styled", "more_phrasings", "more_arguments",
                "drop_system", "seed", "pairs", "contrast_share", "contrast_kinds", "loop_share", "echo_share",
                "markup_loop_share")


def augment_settings(params: dict, pending: Pending = nothing_pending):
    """``AugmentSettings`` of an ``augment`` stage's config (``data/augment.py``); one-line PipelineErrors."""
    from posttrain.data.augment import AugmentSettings

    check_keys(params, AUGMENT_KEYS)
    if "candidates" not in params:
        raise PipelineError("config: key 'candidates' is required (e.g. ${generate.output}/candidates.jsonl)")
    check_types(params, {"candidates": (str,), "per_reply": (int,), "plain_share": (int, float),
                         "two_constraint_share": (int, float), "hold_out_kinds": (list,), "kind_weights": (dict,),
                         "min_words": (int,), "max_words": (int,),
                         "skip_truncated": (bool,), "skip_styled": (bool,), "more_phrasings": (bool,),
                         "more_arguments": (bool,), "drop_system": (bool,), "contrast_share": (int, float),
                         "contrast_kinds": (list,),
                         "loop_share": (int, float), "echo_share": (int, float), "markup_loop_share": (int, float),
                         "seed": (int,), "pairs": (bool,)})
    for key in ("contrast_share", "loop_share", "echo_share", "markup_loop_share"):
        if params.get(key) and not params.get("pairs"):
            raise PipelineError(f"config: {key} needs pairs: true (contrast, loop, echo and markup-loop pairs are "
                                "preference pairs)")
    check_file(params, "candidates", pending)
    options = {k: v for k, v in params.items() if k not in ("candidates", "pairs")}
    options["hold_out_kinds"] = tuple(options.get("hold_out_kinds") or ())
    if "contrast_kinds" in options:
        options["contrast_kinds"] = tuple(options["contrast_kinds"])
    try:
        return AugmentSettings(**options)
    except ValueError as e:
        raise PipelineError(f"config: {e}") from None


def check_augment(params: dict, pending: Pending) -> None:
    augment_settings(params, pending)


def run_augment(params: dict, output_dir: Path, resume: bool) -> dict:
    """``augment``: writes ``sft.jsonl`` (train on it with ``data: {train: ${augment.output}/sft.jsonl}``),
    with ``pairs: true`` also ``pairs.jsonl`` (repair pairs: ``dpo`` with ``data: {train:
    ${augment.output}/pairs.jsonl}``), and ``summary.json`` (counts, per kind)."""
    from posttrain.data.augment import augment_file
    from posttrain.data.writers import atomic_write_json

    settings = augment_settings(params)
    stats = augment_file(params["candidates"], output_dir / "sft.jsonl", settings,
                         output_dir / "pairs.jsonl" if params.get("pairs") else None)
    atomic_write_json(output_dir / "summary.json", stats)
    return {k: v for k, v in stats.items() if k != "per_kind"}


CRITIQUE_KEYS = ("inputs", "critic", "constitution", "passes", "seed", "limit", "verify")


def critique_critic(params: dict) -> dict:
    """The critic config of a ``critique`` stage: a spec string (``llm:URL:MODEL``, ``local:MODEL``) or a mapping."""
    from posttrain.judges.specs import JudgeConfigError, parse_judge_spec

    critic = params.get("critic")
    if isinstance(critic, str):
        try:
            return parse_judge_spec(critic)
        except JudgeConfigError as e:
            raise PipelineError(f"config: key 'critic': {e}") from None
    if not isinstance(critic, dict):
        raise PipelineError("config: key 'critic' is required: llm:URL:MODEL, local:MODEL, or a mapping with the "
                            "LLM / local judge's keys")
    return critic


def check_critique(params: dict, pending: Pending) -> None:
    from posttrain.judges.critique import CRITIC_TYPES, CritiqueError, load_constitution

    check_keys(params, CRITIQUE_KEYS)
    if "inputs" not in params:
        raise PipelineError("config: key 'inputs' is required (e.g. ${generate.output}/candidates.jsonl)")
    check_types(params, {"inputs": (str,), "constitution": (str,), "passes": (int,), "seed": (int,),
                         "limit": (int,), "verify": (bool,)})
    check_file(params, "inputs", pending)
    critic = critique_critic(params)
    if critic.get("type") not in CRITIC_TYPES:
        raise PipelineError(f"config: key 'critic': type must be {' or '.join(CRITIC_TYPES)}")
    check_judge_entry(critic, "critic")
    if (params.get("passes") or 1) < 1:
        raise PipelineError("config: key 'passes': must be >= 1")
    try:
        load_constitution(params.get("constitution"))
    except CritiqueError as e:
        raise PipelineError(f"config: key 'constitution': {e}") from None


def run_critique_stage(params: dict, output_dir: Path, resume: bool) -> dict:
    """``critique``: ``sft.jsonl`` (train with ``data: {train: ${critique.output}/sft.jsonl}``), ``pairs.jsonl``,
    ``critiques.jsonl``, ``summary.json`` (judges/critique.py)."""
    from posttrain.judges.critique import run_critique

    summary = run_critique(params["inputs"], output_dir, critique_critic(params),
                           constitution=params.get("constitution"), passes=int(params.get("passes") or 1),
                           seed=int(params.get("seed") or 0), limit=params.get("limit"),
                           verify=bool(params.get("verify")), progress=True)
    return {k: summary[k] for k in ("rows", "revised", "unchanged", "empty", "echo", "rejected", "sft_rows",
                                    "pairs")}


def critique_inputs(params: dict) -> list[str]:
    """The rows, the constitution (the shipped one when none is named) and a local critic's model folder."""
    from posttrain.judges.critique import DEFAULT_CONSTITUTION

    critic = params.get("critic")
    model = critic.get("model") if isinstance(critic, dict) and critic.get("type") == "local" else \
        critic.partition(":")[2] if isinstance(critic, str) and critic.startswith("local:") else None
    return [p for p in (params.get("inputs"), params.get("constitution") or str(DEFAULT_CONSTITUTION), model) if p]


FEEDBACK_KEYS = ("events", "store", "redact", "ranking_mode", "likert_min_gap", "likert_scale", "likert_unpaired",
                 "conflicts", "max_pairs_per_prompt", "aspect", "aspect_weights", "aspect_all")


def feedback_options(params: dict, pending: Pending = nothing_pending):
    """(event files, ``ConvertOptions``) of a feedback stage's config; problems are one-line PipelineErrors."""
    from posttrain.feedback.convert import ConvertOptions

    check_keys(params, FEEDBACK_KEYS)
    events, store = params.get("events"), params.get("store")
    if bool(events) == bool(store):
        raise PipelineError("config: give one of 'events' (a file or a list of files) or 'store' (a feedback store "
                            "URL)")
    if store:
        from posttrain.feedback.store import StoreError, store_exists

        if not isinstance(store, str):
            raise PipelineError("config: key 'store': must be a store URL (a SQLite path, sqlite:///PATH or "
                                "postgresql://...)")
        try:
            store_exists(store)  # the URL's form only: nothing is opened or created while checking
        except StoreError as e:
            raise PipelineError(f"config: key 'store': {e}") from None
        events = []
    else:
        events = [events] if isinstance(events, str) else list(events)
    for path in events:
        check_file({"events": path}, "events", pending)
    opts = {k: (tuple(v) if k in ("likert_scale", "likert_unpaired") and v is not None else v)
            for k, v in params.items() if k not in ("events", "store", "redact")}
    try:
        return events, ConvertOptions(**opts)
    except (ValueError, TypeError) as e:
        raise PipelineError(f"config: {e}") from None


def check_feedback(params: dict, pending: Pending) -> None:
    feedback_options(params, pending)


def run_feedback(params: dict, output_dir: Path, resume: bool) -> dict:
    from posttrain.feedback.cli import write_outputs
    from posttrain.feedback.convert import convert_events
    from posttrain.feedback.events import read_events

    events, options = feedback_options(params)
    if params.get("store"):  # the store's snapshot, kept beside the pairs (its hash is the stage's input hash)
        from posttrain.feedback.store import FeedbackStore

        events = [str(output_dir / "events.jsonl")]
        FeedbackStore(params["store"]).export_events(events[0], redact=bool(params.get("redact")))
    parsed, errors, lines = read_events(events, options.likert_scale)
    if not parsed:
        raise PipelineError(f"config: key 'events': no valid events in {lines} line(s)")
    conversion = convert_events(parsed, options)
    conversion.summary = {"inputs": events, **conversion.summary, "malformed": [str(e) for e in errors[:1000]]}
    write_outputs(output_dir, conversion)
    return {"pairs": len(conversion.pairs), "unpaired": len(conversion.unpaired),
            "conflicts": len(conversion.conflicts), "malformed": len(errors)}


STORE_INPUT = "feedback-store:"  # an input that is a feedback store's snapshot, hashed by ``runner.input_hash``


def feedback_inputs(params: dict) -> list[str]:
    if isinstance(params.get("store"), str):
        return [STORE_INPUT + params["store"]]
    events = params.get("events") or []
    return [events] if isinstance(events, str) else list(events)


def _mix_run(params: dict, output_dir: Path, resume: bool) -> dict:
    from posttrain.pipeline.mix import run_mix_stage

    return run_mix_stage(params, output_dir, resume)


def _mix_inputs(params: dict) -> list[str]:
    from posttrain.pipeline.mix import mix_inputs

    return mix_inputs(params)


def _mix_check(params: dict, pending: Pending) -> None:
    from posttrain.pipeline.mix import KINDS, _entries

    check_keys(params, ("inputs", "kind"))
    if params.get("kind", "preference") not in KINDS:
        raise PipelineError(f"config: key 'kind': '{params['kind']}' is not one of {', '.join(KINDS)}")
    _entries(params)


MERGE_DTYPES = ("float32", "bfloat16", "float16")


MERGE_KEYS = ("model", "models", "method", "weights", "base", "density", "lambda", "lambda_for", "t", "seed", "dtype")


def check_merge(params: dict, pending: Pending) -> None:
    """One ``model`` (an adapter folded into its base: the export) or ``models`` (two or more, merged with
    ``method``: linear | task_arithmetic | ties | dare_ties | slerp, models/merge.py; task_arithmetic takes one,
    ExPO's extrapolation from ``base`` when ``lambda`` is above 1)."""
    check_keys(params, MERGE_KEYS)
    check_types(params, {"model": (str,), "models": (list,), "method": (str,), "weights": (list,), "base": (str,),
                         "density": (int, float), "lambda": (int, float), "lambda_for": (dict,), "t": (int, float),
                         "seed": (int,)})
    if ("model" in params) == ("models" in params):
        raise PipelineError("config: give 'model' (an adapter folder to fold, e.g. ${dpo.output}/model) or "
                            "'models' (two or more models to merge with 'method')")
    if str(params.get("dtype", "float32")) not in MERGE_DTYPES:
        raise PipelineError(f"config: key 'dtype': '{params['dtype']}' is not one of {', '.join(MERGE_DTYPES)}")
    if "model" in params:
        several = sorted(k for k in ("method", "weights", "base", "density", "lambda", "lambda_for", "t", "seed")
                         if k in params)
        if several:
            raise PipelineError(f"config: key '{several[0]}' applies to 'models' (a merge of several models), "
                                "not to 'model'")
        return
    from posttrain.models.merge import check_merge_args

    models = params["models"]
    if not all(isinstance(m, str) and m for m in models):
        raise PipelineError("config: key 'models': expected a list of model folders or names")
    weights = params.get("weights")
    if weights is not None and not _all_numbers(weights):
        raise PipelineError("config: key 'weights': expected a list of numbers")
    if not _all_numbers((params.get("lambda_for") or {}).values()):
        raise PipelineError("config: key 'lambda_for': expected a mapping of weight-name patterns to numbers "
                            "(e.g. {self_attn: 1.5})")
    try:
        check_merge_args(models, str(params.get("method", "linear")), weights, params.get("base"),
                         float(params.get("density", 1.0)), float(params.get("t", 0.5)), _lambda_for(params))
    except ValueError as e:
        raise PipelineError(f"config: {e}") from None


def _all_numbers(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _lambda_for(params: dict) -> dict[str, float]:
    return {str(k): float(v) for k, v in (params.get("lambda_for") or {}).items()}


def run_merge(params: dict, output_dir: Path, resume: bool) -> dict:
    """``merge``: ``<output>/model``, a plain HF folder. Config: ``model`` (an adapter folder, usually
    ``${dpo.output}/model``, folded with its lineage: the export) or ``models`` + ``method`` (+ ``weights``,
    ``base``, ``density``, ``lambda``, ``lambda_for``, ``t``, ``seed``: ``posttrain merge``'s options); ``dtype``
    (float32 | bfloat16 | float16, default float32)."""
    check_merge(params, nothing_pending)
    dtype = str(params.get("dtype", "float32"))
    try:
        if "model" in params:
            from posttrain.models.policy import merge_to_folder

            out = merge_to_folder(params["model"], output_dir / "model", dtype=dtype)
        else:
            from posttrain.models.merge import merge_models

            out = merge_models(list(params["models"]), output_dir / "model", method=str(params.get("method",
                               "linear")), weights=params.get("weights"), base=params.get("base"),
                               density=float(params.get("density", 1.0)), lam=float(params.get("lambda", 1.0)),
                               t=float(params.get("t", 0.5)), seed=int(params.get("seed", 0)), dtype=dtype,
                               lambda_for=_lambda_for(params))
    except ValueError as e:
        raise PipelineError(f"config: {e}") from None
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return {"export_mb": size / 2**20}


def merge_inputs(params: dict) -> list[str]:
    models = params.get("models") if isinstance(params.get("models"), list) else [params.get("model")]
    return [m for m in models + [params.get("base")] if isinstance(m, str) and m]


def check_promote(params: dict, pending: Pending) -> None:
    check_keys(params, ("model", "to"))
    check_types(params, {"model": (str,), "to": (str,)})
    for key, example in (("model", "${merge.output}/model"), ("to", "serving")):
        if not params.get(key):
            raise PipelineError(f"config: key '{key}' is required (e.g. {example})")


def run_promote(params: dict, output_dir: Path, resume: bool) -> dict:
    """``promote``: copy an upstream stage's model into the serving folder ``to`` once its gates passed
    (``pipeline/promote.py``); a running ``posttrain serve`` picks it up on SIGHUP."""
    from posttrain.pipeline.promote import PromotionError, run_promote_stage

    check_promote(params, nothing_pending)
    try:
        return run_promote_stage(params, output_dir, resume)
    except PromotionError as e:
        raise PipelineError(f"config: {e}") from None


def _eval_stages() -> dict[str, StageSpec]:
    """``eval`` and ``gate``, registered only where ``posttrain.eval`` exists (``run_eval`` and ``evaluate_gates``
    are imported when the stage runs, so importing the registry stays cheap)."""
    from importlib.util import find_spec

    if find_spec("posttrain.eval") is None:
        return {}
    from posttrain.pipeline.eval_stages import (check_eval, check_gate, eval_inputs, gate_inputs, run_eval_stage,
                                                run_gate_stage)

    return {"eval": StageSpec(run_eval_stage, eval_inputs, check_eval),
            "gate": StageSpec(run_gate_stage, gate_inputs, check_gate, main_metric="gates_passed")}


def _best_round_stage() -> dict[str, StageSpec]:
    """``best_round``: the stage a ``rounds`` block adds after its last round (``pipeline/rounds.py``)."""
    from posttrain.pipeline.rounds import best_round_inputs, check_best_round, run_best_round

    return {"best_round": StageSpec(run_best_round, best_round_inputs, check_best_round, main_metric="best_round",
                                    tolerates_not_run=True)}


STAGES: dict[str, StageSpec] = {
    **training_stages(),
    "data": StageSpec(run_data, data_inputs, check_data, main_metric="rows_out"),
    "generate": StageSpec(run_generate, generate_inputs, check_generate, main_metric="candidates_written"),
    "judge": StageSpec(run_judge, judge_inputs, check_judge,
                       main_metric="pairs_kept"),
    "feedback": StageSpec(run_feedback, feedback_inputs, check_feedback, main_metric="pairs"),
    "critique": StageSpec(run_critique_stage, critique_inputs, check_critique, main_metric="pairs"),
    "augment": StageSpec(run_augment, lambda p: [p["candidates"]] if p.get("candidates") else [],
                         check_augment, main_metric="examples"),
    "merge": StageSpec(run_merge, merge_inputs, check_merge,
                       main_metric="export_mb"),
    "mix": StageSpec(_mix_run, _mix_inputs, _mix_check, main_metric="rows"),
    "promote": StageSpec(run_promote, lambda p: [p["model"]] if p.get("model") else [], check_promote,
                         main_metric="promoted"),
    **_eval_stages(),
    **_best_round_stage(),
}
