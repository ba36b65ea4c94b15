"""The ``judge`` stage: candidates JSONL -> scores (or comparisons) -> preference pairs, in one output folder.

Judges come from config dicts (``type`` + that judge's options + optional ``weight`` and ``name``)::

    {"type": "verifier"}
    {"type": "llm", "base_url": "http://127.0.0.1:8000/v1", "model": "m", "api_key_env": "OPENAI_API_KEY",
     "rubric": "...", "weight": 2}
    {"type": "local", "model": "runs/sft/model"}
    {"type": "reward_model", "model": "runs/rm/model"}
    {"type": "rubric", "rubric": "examples/rubric.yaml", "base_url": "http://127.0.0.1:8000/v1", "model": "m"}

The pair strategy decides the mode: ``best_vs_worst`` / ``all_above_margin`` score every candidate (one judge: its
raw scores, so ``min_margin`` is in its units; several: the weighted mean of normalised scores in [0, 1]);
``round_robin`` / ``all_pairs`` compare candidates pairwise (several judges: weighted vote).

Outputs: ``pairs.jsonl`` (DPO layout), ``scores.jsonl`` (one row per candidate; pairwise: win rates),
``comparisons.jsonl`` (pairwise only), ``summary.json`` (a rubric judge's per-rule ``asked`` / ``passed`` /
``unparseable`` / ``pass_rate`` over the candidates under ``rubric``), plus the run folder's ``config.yaml`` and
``manifest.json``. Every file is written atomically, after the input has been read and checked.

Candidates a judge could not score (an unparseable LLM answer) and comparisons with an unparseable answer are
counted in a warning (stderr and ``summary.json`` ``warnings``). A run that keeps no pair at all writes its
outputs, marks the manifest failed and raises ``NoPairsKept``: an empty pairs file is never a success.
"""

from __future__ import annotations

import inspect
import math
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from posttrain.data.candidate_rows import read_candidate_rows
from posttrain.data.runfolder import RunFolder, atomic_write_json, atomic_write_text
from posttrain.data.schema import DataError, DataErrors
from posttrain.data.writers import OutputPathError, check_output_path, json_safe, strict_json
from posttrain.judges import pairs as pairing
from posttrain.judges.ensemble import REDUCTIONS, Member, PairwiseEnsemble, agreement_stats, combine_scores
from posttrain.judges.llm import LLMJudge
from posttrain.judges.local import LocalModelJudge
from posttrain.judges.reward_model import RewardModelJudge
from posttrain.judges.rubric import RubricJudge, RubricRowError, rule_statistics
from posttrain.judges.specs import JudgeConfigError, parse_judge_spec
from posttrain.judges.types import PairwiseJudge, Score, ScoringJudge
from posttrain.judges.verifier import VerifierJudge
from posttrain.models.policy import model_tokenizer

JUDGE_TYPES = ("verifier", "llm", "local", "reward_model", "rubric")
PAIR_KEYS = ("strategy", "min_margin", "max_length_ratio", "length_balance", "length_balance_tolerance",
             "length_unit", "tokenizer", "repair", "ensemble", "ensemble_std_k")
CHUNK = 64  # candidates (or comparisons' prompts) per batch handed to a judge: the progress bar's step


class NoPairsKept(JudgeConfigError):
    """Judging ran but kept no pair (every candidate unscored, all ties, every pair below the margin, ...).
    The outputs are written for inspection and the manifest says failed; ``str()`` is one line with the counts."""


def _judge_class(kind: str):
    if kind == "verifier":
        return VerifierJudge
    if kind == "llm":
        return LLMJudge
    if kind == "local":
        return LocalModelJudge
    if kind == "rubric":
        return RubricJudge
    return RewardModelJudge


def check_judge_spec(spec: Any, where: str) -> tuple[str, float, dict[str, Any]]:
    """(type, weight, constructor options) of one judge config dict, checked without building the judge (which
    may load a model): its type, weight, and keys against the judge's constructor. ``JudgeConfigError`` names
    ``where`` and the key."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise JudgeConfigError(f"{where}: needs a 'type' ({', '.join(JUDGE_TYPES)})")
    opts = dict(spec)
    kind, weight = opts.pop("type"), opts.pop("weight", 1.0)
    if kind not in JUDGE_TYPES:
        raise JudgeConfigError(f"{where}: unknown type '{kind}'; expected one of {', '.join(JUDGE_TYPES)}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
        raise JudgeConfigError(f"{where} ({kind}): 'weight' must be a positive number, got {weight!r}")
    params = inspect.signature(_judge_class(kind)).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(opts) - set(params))
        if unknown:
            raise JudgeConfigError(f"{where} ({kind}): unknown key '{unknown[0]}'; expected one of "
                                   f"{', '.join(params)}, weight")
    missing = [n for n, p in params.items() if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD,
               p.KEYWORD_ONLY) and n not in opts]
    if missing:
        raise JudgeConfigError(f"{where} ({kind}): missing key '{missing[0]}'")
    return kind, float(weight), opts


def build_member(spec: dict[str, Any], index: int = 0) -> Member:
    """A judge (with its weight) from one config dict; unknown types and keys are errors naming them."""
    where = f"judges[{index}]"
    kind, weight, opts = check_judge_spec(spec, where)
    try:
        judge = _judge_class(kind)(**opts)
    except ValueError as e:
        raise JudgeConfigError(f"{where} ({kind}): {str(e).splitlines()[0]}") from None
    return Member(judge, float(weight), (0.0, 1.0) if kind == "verifier" else None)


def read_candidates(path: str | Path) -> list[dict[str, Any]]:
    """Candidate rows (docs/CANDIDATES.md), every row checked; all errors reported at once."""
    return read_candidate_rows(path)[0]


def repair_count(strategy: str, repair: Any) -> int:
    """The number of repaired pairs per prompt (``pairs.repair``; default 1 for the strategy ``repair``, else 0);
    ``JudgeConfigError`` for a value that is not a count or that cannot work with the strategy."""
    if repair is None:
        repair = 1 if strategy == "repair" else 0
    if isinstance(repair, bool) or not isinstance(repair, int) or repair < 0:
        raise JudgeConfigError(f"pairs.repair: expected a count of repaired pairs per prompt (0 or more), "
                               f"got {repair!r}")
    if repair and strategy in pairing.PAIRWISE_STRATEGIES:
        raise JudgeConfigError(f"pairs.repair works with a scoring strategy ({', '.join(pairing.STRATEGIES)}), "
                               f"not '{strategy}'")
    if strategy == "repair" and not repair:
        raise JudgeConfigError("pairs.strategy 'repair' with pairs.repair 0 would propose no pair")
    return repair


def _pair_options(pair_config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    unknown = sorted(set(pair_config) - set(PAIR_KEYS))
    if unknown:
        raise JudgeConfigError(f"pairs: unknown key '{unknown[0]}'; expected one of {', '.join(PAIR_KEYS)}")
    cfg = dict(pair_config)
    strategy = cfg.pop("strategy", "best_vs_worst")
    if strategy not in pairing.STRATEGIES + pairing.PAIRWISE_STRATEGIES:
        raise JudgeConfigError(f"pairs.strategy '{strategy}': expected one of "
                               f"{', '.join(pairing.STRATEGIES + pairing.PAIRWISE_STRATEGIES)}")
    cfg["repair"] = repair_count(strategy, cfg.get("repair"))
    reduce, k = cfg.pop("ensemble", "mean"), cfg.pop("ensemble_std_k", 1.0)
    if reduce not in REDUCTIONS:
        raise JudgeConfigError(f"pairs.ensemble '{reduce}': expected one of {', '.join(REDUCTIONS)}")
    if isinstance(k, bool) or not isinstance(k, (int, float)) or k < 0:
        raise JudgeConfigError(f"pairs.ensemble_std_k: expected a number >= 0, got {k!r}")
    if reduce != "mean" and strategy not in pairing.STRATEGIES:
        raise JudgeConfigError(f"pairs.ensemble '{reduce}' combines scores; strategy '{strategy}' compares pairs "
                               "(weighted vote)")
    cfg["ensemble"] = (reduce, float(k))
    unit, tokenizer = cfg.pop("length_unit", "chars"), cfg.pop("tokenizer", None)
    if unit not in ("chars", "tokens"):
        raise JudgeConfigError(f"pairs.length_unit '{unit}': expected chars or tokens")
    if unit == "tokens":
        if not tokenizer:
            raise JudgeConfigError("pairs.length_unit=tokens needs pairs.tokenizer (a model name)")
        cfg["tokenizer_or_len_fn"] = model_tokenizer(tokenizer)
    return strategy, cfg


def _score_member(member: Member, rows: list[dict[str, Any]], lines: list[int], source: str) -> list[Score]:
    """One judge's scores for a chunk of rows; a row whose metadata the judge rejects (``ValueError``, as
    verifiers raise for a bad or missing spec) is a ``DataError`` naming the file and line; a chunk's errors are
    reported together."""
    items = [(r["prompt"], r["text"], dict(r.get("metadata") or {})) for r in rows]
    if hasattr(member.judge, "score_many"):
        try:
            return list(member.judge.score_many(items))
        except RubricRowError as e:  # a rubric's verifier rule rejected these rows' metadata
            bad = [DataError(source, lines[i], "metadata", f"judge '{member.name}': {msg}") for i, msg in e.rows]
            raise bad[0] if len(bad) == 1 else DataErrors(bad) from None
    out, errors = [], []
    for item, line in zip(items, lines):
        try:
            out.append(member.judge.score(*item))
        except ValueError as e:
            errors.append(DataError(source, line, "metadata", f"judge '{member.name}': {e}"))
    if errors:
        raise errors[0] if len(errors) == 1 else DataErrors(errors)
    return out


def _batches(seq: list, size: int):
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, unit="cand", disable=not enabled)


def _scoring_mode(members: list[Member], candidates: list[dict[str, Any]], lines: list[int], source: str,
                  strategy: str, pair_opts: dict[str, Any], progress: bool, repair: int = 0,
                  ensemble: tuple[str, float] = ("mean", 1.0)):
    """Score every candidate, then build pairs from the scores: (pairs, pair summary, agreement, score rows).
    ``repair`` > 0: also that many repaired copies per prompt of failing candidates, scored, paired with theirs."""
    names = [m.name for m in members]
    for m in members:
        if not hasattr(m.judge, "score"):
            raise JudgeConfigError(f"judge '{m.name}' cannot score single responses; use a pairwise strategy")
    # Judges without a batch method (verifiers) are cheap and may reject a row's metadata: they run first, so
    # a bad row stops the run before an LLM or reward model is asked about that chunk.
    order = sorted(members, key=lambda m: hasattr(m.judge, "score_many"))
    scores: dict[tuple[str, int], Score] = {}
    unscored: dict[str, list[tuple[int, Score]]] = {m.name: [] for m in members}  # (line, score) per judge
    rubric_scores: dict[str, list[Score]] = {m.name: [] for m in members if hasattr(m.judge, "rules")}

    def score(rows: list[dict[str, Any]], row_lines: list[int], bar, repairs: bool = False) -> None:
        for start in range(0, len(rows), CHUNK):
            chunk, chunk_lines = rows[start:start + CHUNK], row_lines[start:start + CHUNK]
            per_member = {m.name: _score_member(m, chunk, chunk_lines, source) for m in order}
            for name, got_scores in per_member.items():
                unscored[name] += [(line, sc) for line, sc in zip(chunk_lines, got_scores)
                                   if not math.isfinite(sc.value)]
                if name in rubric_scores and not repairs:  # per-rule statistics are over the candidates
                    rubric_scores[name] += got_scores
            got = per_member[names[0]] if len(members) == 1 else [
                combine_scores(members, [per_member[m.name][i] for m in members], *ensemble)
                for i in range(len(chunk))]
            scores.update({(r["prompt_id"], r["candidate_index"]): s for r, s in zip(chunk, got)})
            bar.update(len(chunk))

    with _progress(len(candidates), "judging", progress) as bar:
        score(candidates, lines, bar)
    candidate_keys = set(scores)
    repaired = pairing.repair_rows(candidates, scores, repair) if repair else []
    if repaired:
        line_of = {(r["prompt_id"], r["candidate_index"]): line for r, line in zip(candidates, lines)}
        with _progress(len(repaired), "judging repairs", progress) as bar:
            score(repaired, [line_of[(r["prompt_id"], r["repaired_from"])] for r in repaired], bar, repairs=True)
    rows, pair_summary = pairing.build_pairs(candidates, scores, strategy=strategy, judge_meta={"judges": names},
                                             repaired=repaired, **pair_opts)
    pair_summary["repaired"] = len(repaired)
    pair_summary["score_units"] = "raw" if len(members) == 1 else "normalised"
    agreement = None
    if len(members) > 1:
        agreement = agreement_stats([r["judge"]["decisions"] for r in rows if "decisions" in r["judge"]])
        agreement["over"] = "kept pairs"
    score_rows = [{"prompt_id": pid, "candidate_index": idx, "value": s.value, "passed": s.passed,
                   "details": s.details} for (pid, idx), s in scores.items() if (pid, idx) in candidate_keys]
    warnings = [_unscored_warning(name, bad, len(candidates), source) for name, bad in unscored.items() if bad]
    rubric = None
    if rubric_scores:
        judges = {m.name: m.judge for m in members}
        rubric = {name: rule_statistics(judges[name].rules, got) for name, got in rubric_scores.items()}
    return rows, pair_summary, agreement, score_rows, warnings, rubric


def _unscored_warning(judge: str, bad: list[tuple[int, Score]], total: int, source: str) -> str:
    """One line: how many candidates ``judge`` gave no score, with the first one's line and reason."""
    line, score = bad[0]
    reason = (score.details or {}).get("reason") or "no score"
    raw = (score.details or {}).get("raw")
    shown = f", answer {raw.strip()[:80]!r}" if isinstance(raw, str) else ""
    return (f"judge '{judge}' gave no score for {len(bad)} of {total} candidates (first: {source}:{line}: "
            f"{reason}{shown}); they were left out of its scores")


def _pairwise_mode(members: list[Member], candidates: list[dict[str, Any]], strategy: str,
                   pair_opts: dict[str, Any], progress: bool):
    """Compare every pair of candidates per prompt, then build pairs from the verdicts:
    (pairs, pair summary, agreement, win-rate rows, comparisons)."""
    for m in members:
        if not hasattr(m.judge, "compare"):
            raise JudgeConfigError(f"judge '{m.name}' cannot compare two responses; use a scoring strategy")
    judge = members[0].judge if len(members) == 1 else PairwiseEnsemble(members)
    comparisons: list[dict[str, Any]] = []
    groups = list(pairing.group_by_prompt(candidates).values())
    with _progress(len(candidates), "comparing", progress) as bar:
        for chunk in _batches(groups, max(1, CHUNK // max(1, len(groups[0])))):
            comparisons += pairing.compare_round_robin([r for g in chunk for r in g], judge)
            bar.update(sum(len(g) for g in chunk))
    rows, pair_summary = pairing.build_pairs_from_comparisons(
        candidates, comparisons, strategy=strategy, judge_meta={"judges": [m.name for m in members]}, **pair_opts)
    agreement = judge.stats() | {"over": "all comparisons"} if isinstance(judge, PairwiseEnsemble) else None
    score_rows = [{"prompt_id": pid, "candidate_index": idx, "value": s.value, "passed": None, "details": s.details}
                  for (pid, idx), s in pairing.win_rates(candidates, comparisons).items()]
    unparseable = [c for c in comparisons if "unparseable" in str((c.get("details") or {}).get("reason", ""))]
    warnings = []
    if unparseable:
        first = unparseable[0]
        warnings.append(f"{len(unparseable)} of {len(comparisons)} comparisons had an unparseable judge answer "
                        f"and count as ties (first: prompt '{first['prompt_id']}', candidates {first['a_index']} vs "
                        f"{first['b_index']}: {first['details']['reason']})")
    return rows, pair_summary, agreement, score_rows, comparisons, warnings


def score_statistics(score_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How the candidates scored: mean score, pass rate where the judge has pass/fail (verifiers), the share of
    prompts with at least one passing candidate (only those can give a pair), and pass rate per constraint kind."""
    values = [r["value"] for r in score_rows if isinstance(r.get("value"), (int, float)) and math.isfinite(r["value"])]
    judged = [r for r in score_rows if r.get("passed") is not None]
    by_prompt: dict[str, list[bool]] = {}
    by_kind: dict[str, list[bool]] = {}
    for r in judged:
        by_prompt.setdefault(r["prompt_id"], []).append(bool(r["passed"]))
        for c in (r.get("details") or {}).get("constraints") or []:
            by_kind.setdefault(c["name"], []).append(bool(c["passed"]))
    out: dict[str, Any] = {"candidates_scored": len(score_rows),
                           "mean_score": sum(values) / len(values) if values else None}
    if judged:
        out.update({
            "pass_rate": sum(r["passed"] for r in judged) / len(judged),
            "prompts_with_a_pass": sum(any(v) for v in by_prompt.values()) / len(by_prompt),
            "prompts_all_pass": sum(all(v) for v in by_prompt.values()) / len(by_prompt),
            "pass_rate_by_constraint": {k: round(sum(v) / len(v), 4) for k, v in sorted(by_kind.items())},
        })
    return out


def judge_candidates(candidates_path: str | Path, output_dir: str | Path, judges_config: list[dict[str, Any]],
                     pair_config: dict[str, Any] | None = None, *, progress: bool = False) -> dict[str, Any]:
    """Judge a candidates file and write pairs; returns the summary (also written to ``summary.json``)."""
    t0 = time.time()
    try:
        check_output_path(output_dir, "output folder")  # before any judge model loads or endpoint is asked
    except OutputPathError as e:
        raise JudgeConfigError(str(e)) from None
    strategy, pair_opts = _pair_options(pair_config or {})
    repair = pair_opts.pop("repair")
    ensemble = pair_opts.pop("ensemble")  # how several scoring judges combine (ensemble.combine_scores)
    if not judges_config:
        raise JudgeConfigError("judges: at least one judge is needed")
    candidates, lines = read_candidate_rows(candidates_path)
    members = [build_member(spec, i) for i, spec in enumerate(judges_config)]
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise JudgeConfigError(f"judges: two judges are named '{max(names, key=names.count)}'; give one a 'name'")
    out = Path(output_dir)
    if strategy in pairing.STRATEGIES:
        rows, pair_summary, agreement, score_rows, warnings, rubric = _scoring_mode(
            members, candidates, lines, str(candidates_path), strategy, pair_opts, progress, repair, ensemble)
        comparisons = None
    else:
        rows, pair_summary, agreement, score_rows, comparisons, warnings = _pairwise_mode(
            members, candidates, strategy, pair_opts, progress)
        rubric = None
    for warning in warnings:
        print(f"posttrain judge: warning: {warning}", file=sys.stderr, flush=True)

    stats = score_statistics(score_rows) if comparisons is None else None
    judges_info = [{"name": m.name, "weight": m.weight, **({"stats": m.judge.stats()} if hasattr(m.judge, "stats")
                                                           else {})} for m in members]
    summary = json_safe({"candidates": str(candidates_path), "output_dir": str(out), "judges": judges_info,
                         "pairs": pair_summary, "agreement": agreement, "scores": stats, "warnings": warnings,
                         **({"rubric": rubric} if rubric else {}), "seconds": round(time.time() - t0, 2)})

    run = RunFolder(out, "judge")
    run.add_input("candidates", str(candidates_path))
    for i, spec in enumerate(judges_config):  # a rubric file decides the scores as much as the candidates do
        if spec.get("type") == "rubric":
            run.add_input(f"judges[{i}].rubric", str(spec["rubric"]))
    run.write_config(yaml.safe_dump({"judges": judges_config, "pairs": pair_config or {}}, sort_keys=False))

    def jsonl(rows_: list[dict[str, Any]]) -> str:
        return "".join(strict_json(r, ensure_ascii=False, default=str) + "\n" for r in rows_)

    atomic_write_text(out / "scores.jsonl", jsonl(score_rows))
    if comparisons is not None:
        atomic_write_text(out / "comparisons.jsonl", jsonl(comparisons))
    atomic_write_text(out / "pairs.jsonl", jsonl(rows))
    atomic_write_json(out / "summary.json", summary)
    metrics = {"pairs_kept": pair_summary["pairs_kept"], "pairs_considered": pair_summary["pairs_considered"]}
    if not rows:
        # An empty pairs file would only fail later, in training, far from its cause: stop here, outputs kept.
        reasons = ", ".join(f"{k} {v}" for k, v in pair_summary["dropped"].items() if v) or "no pairs proposed"
        error = (f"no pairs kept from {len(candidates)} candidates of {pair_summary['prompts_in']} prompts "
                 f"(dropped: {reasons}); see {out / 'scores.jsonl'}")
        run.manifest["metrics"].update(metrics)
        run.save(status="failed", error=error)
        raise NoPairsKept(error)
    run.finish(metrics, {"pairs": "pairs.jsonl", "scores": "scores.jsonl", "summary": "summary.json",
                         **({"comparisons": "comparisons.jsonl"} if comparisons is not None else {})})
    return summary


def win_rate_judge(spec: str | dict[str, Any]):
    """The judge for a win rate against a baseline, from a spec string (``verifier``, ``llm:URL:MODEL``,
    ``local:MODEL``, ``rm:MODEL``) or one judge config dict: pairwise (asked in both orders) or scoring (the higher
    score wins). ``JudgeConfigError`` for anything else."""
    judge = build_member(parse_judge_spec(spec) if isinstance(spec, str) else spec).judge
    if not isinstance(judge, (PairwiseJudge, ScoringJudge)):
        raise JudgeConfigError(f"judge {spec!r}: neither a pairwise nor a scoring judge")
    return judge


def rubric_judge_of(path, grader: str | None, option: str = "--rubric"):
    """The ``RubricJudge`` of a rubric file and an optional grader spec (``llm:URL:MODEL`` | ``local:MODEL``), for
    ``posttrain eval --rubric`` and the pipeline eval stage's ``rubric``, built before any model loads;
    ``JudgeConfigError`` (one line, naming ``option``) for a bad rubric file or grader."""
    spec: dict = {"type": "rubric", "rubric": str(path)}
    if grader is not None:
        g = parse_judge_spec(grader)
        if g["type"] not in ("llm", "local"):
            raise JudgeConfigError(f"{option}-judge '{grader}': expected llm:URL:MODEL or local:MODEL")
        spec |= {"base_url": g["base_url"], "model": g["model"]} if g["type"] == "llm" else {"local": g["model"]}
    try:
        return build_member(spec).judge
    except JudgeConfigError as e:
        raise JudgeConfigError(f"{option}: {str(e).split(': ', 1)[1]}") from None
