"""Constitutional critique-and-revise (Bai et al. 2022, "Constitutional AI", the supervised phase, section 3).

For each prompt + response, a critic model is shown the conversation and one principle of a constitution drawn at
random: it writes a critique of the response against the principle, then a revision that answers the critique.
With ``passes: N`` the revision is critiqued again under a newly drawn principle, N times in all. Outputs:

- ``sft.jsonl``: prompt -> final revision (SFT rows, ``messages``), every non-empty revision;
- ``pairs.jsonl``: chosen = final revision, rejected = the original response (preference rows), where they differ;
- ``critiques.jsonl``: every row's passes (principle id, critique, revision) and its outcome: ``revised``,
  ``unchanged``, ``empty`` (the critic wrote nothing), ``echo`` (the "revision" only repeats the critique, as small
  critics do), ``rejected`` (``verify``: the verifier scores the revision below the original);
- ``summary.json``: counts (rows, revised, unchanged, empty) and the critic's request statistics.

The critic is a judge config of type ``llm`` (any OpenAI-compatible endpoint: retries, backoff, and the SQLite
answer cache of ``judges/llm.py``, so a rerun sends no request it sent before) or ``local`` (a model loaded
in-process, greedy). The draw of a principle depends only on (seed, row key, pass), so reruns and resumed runs
draw the same principles. A constitution is a YAML file ``{principles: [{id, critique, revision}, ...]}``; the
default is ``posttrain/resources/critique/constitution.yaml``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from posttrain.data.candidate_rows import read_candidate_rows
from posttrain.data.layouts import load_examples
from posttrain.data.readers import utf8_lines
from posttrain.data.schema import DataError, DataErrors, Message
from posttrain.data.writers import atomic_write_json, atomic_write_jsonl
from posttrain.judges.run import _judge_class, check_judge_spec
from posttrain.judges.specs import JudgeConfigError
from posttrain.judges.verifier import VerifierJudge

DEFAULT_CONSTITUTION = Path(__file__).resolve().parents[1] / "resources" / "critique" / "constitution.yaml"
CRITIC_TYPES = ("llm", "local")

CRITIQUE_REQUEST = ("Critique the assistant's last reply against this principle: {principle}\n"
                    "Name the specific places where the reply falls short of it. If the reply already meets the "
                    "principle fully, say so. Write only the critique.")
REVISION_REQUEST = ("Rewrite the assistant's reply so that it answers the critique and follows this principle: "
                    "{principle}\nKeep everything the user asked for (content, format, length limits). Write only "
                    "the new reply, with no preamble and no comment on the changes.")
_LABEL = re.compile(r"^\s*(?:\*\*)?(?:revised reply|revised response|revision|rewritten reply|new reply)"
                    r"(?:\*\*)?\s*:\s*(?:\*\*)?\s*", re.IGNORECASE)


OUTCOMES = ("revised", "unchanged", "empty", "echo", "rejected")


class CritiqueError(ValueError):
    """A constitution or critique config is wrong; ``str()`` is one line naming the file or key."""


@dataclass(frozen=True)
class Principle:
    id: str
    critique: str  # the principle as asked in the critique request
    revision: str  # the principle as asked in the revision request


@dataclass
class Item:
    key: str  # stable per row: the candidate's (prompt_id, index), else the hash of prompt + response
    prompt: list[Message]
    response: str
    metadata: dict[str, Any]


def load_constitution(path: str | Path | None = None) -> list[Principle]:
    """The principles of a constitution file; ``CritiqueError`` names the file, the entry and the field."""
    path = Path(path) if path else DEFAULT_CONSTITUTION
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CritiqueError(f"{path}: cannot read the constitution ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise CritiqueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    entries = data.get("principles") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise CritiqueError(f"{path}: expected a mapping with a non-empty 'principles' list")
    principles, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"{path}: principles[{i}]"
        if not isinstance(entry, dict):
            raise CritiqueError(f"{where}: expected a mapping with id, critique, revision")
        unknown = sorted(set(entry) - {"id", "critique", "revision"})
        if unknown:
            raise CritiqueError(f"{where}: unknown key '{unknown[0]}' (expected id, critique, revision)")
        for field in ("id", "critique", "revision"):
            if not isinstance(entry.get(field), str) or not entry[field].strip():
                raise CritiqueError(f"{where}: field '{field}' must be a non-empty string")
        if entry["id"] in seen:
            raise CritiqueError(f"{where}: id '{entry['id']}' repeats")
        seen.add(entry["id"])
        principles.append(Principle(entry["id"], entry["critique"].strip(), entry["revision"].strip()))
    return principles


def _item_key(prompt: list[Message], response: str) -> str:
    blob = json.dumps([prompt, response], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def read_items(path: str | Path) -> list[Item]:
    """Prompt + response rows: a candidates file (``posttrain generate``; docs/CANDIDATES.md) or SFT rows whose
    conversation ends with the assistant reply to critique (``messages``, ``prompt`` + ``completion``, alpaca).
    Bad rows are ``DataError``s naming file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), None, None, "no such file")
    first = None
    for _, line in utf8_lines(str(path), path, []):
        if line.strip():
            try:
                first = json.loads(line)
            except ValueError:
                pass
            break
    if isinstance(first, dict) and "candidate_index" in first:
        rows, _ = read_candidate_rows(path)
        return [Item(f"{r['prompt_id']}:{r['candidate_index']}", r["prompt"], r["text"], dict(r.get("metadata") or {}))
                for r in rows]
    items, errors = [], []
    for ex in load_examples(str(path), "sft"):
        if ex.messages[-1]["role"] != "assistant":
            errors.append(DataError(ex.source, ex.row, "messages", "the conversation must end with the assistant "
                                    "reply to critique"))
            continue
        prompt, response = ex.messages[:-1], ex.messages[-1]["content"]
        items.append(Item(_item_key(prompt, response), prompt, response, dict(ex.metadata)))
    if errors:
        raise errors[0] if len(errors) == 1 else DataErrors(errors)
    return items


def draw_principle(principles: list[Principle], seed: int, key: str, pass_index: int) -> Principle:
    """The principle of one row's pass: a function of (seed, row key, pass) only."""
    return random.Random(f"{seed}:{key}:{pass_index}").choice(principles)


def clean_revision(text: str) -> str:
    """The critic's revision without a leading label ("Revision:", "**Revised reply:**") or surrounding space."""
    return _LABEL.sub("", text.strip(), count=1).strip()


def build_critic(spec: dict[str, Any]):
    """An object with ``complete_many(list of message lists) -> list of answers`` from a critic config dict
    (``{type: llm, base_url, model, ...}`` or ``{type: local, model, ...}``, the LLM / local judge's keys)."""
    if not isinstance(spec, dict) or spec.get("type") not in CRITIC_TYPES:
        raise CritiqueError(f"critic: expected a config of type {' or '.join(CRITIC_TYPES)} (llm:URL:MODEL or "
                            f"local:MODEL on the command line), got {spec!r}")
    spec = {k: v for k, v in spec.items() if k != "weight"}
    try:
        kind, _, opts = check_judge_spec(spec, "critic")
    except JudgeConfigError as e:
        raise CritiqueError(str(e)) from None
    try:
        return _judge_class(kind)(**opts)
    except ValueError as e:
        raise CritiqueError(f"critic ({kind}): {str(e).splitlines()[0]}") from None


def critique_revise(items: list[Item], critic, principles: list[Principle], *, passes: int = 1, seed: int = 0,
                    progress: bool = True) -> list[dict[str, Any]]:
    """Every item through ``passes`` critique-revise passes; one record per item (see the module docstring).
    All items' critique requests of a pass go out together (``complete_many``: concurrent for an endpoint,
    batched for a local model), then all revision requests."""
    if passes < 1:
        raise CritiqueError(f"passes must be >= 1, got {passes}")
    current = [it.response for it in items]
    history: list[list[dict[str, str]]] = [[] for _ in items]
    alive = list(range(len(items)))  # items whose last revision was non-empty
    bar = tqdm(total=2 * passes * len(items), desc="critique", unit="req", disable=not progress)
    for k in range(passes):
        drawn = {i: draw_principle(principles, seed, items[i].key, k) for i in alive}
        convs = {i: items[i].prompt + [{"role": "assistant", "content": current[i]}] for i in alive}
        critiques = critic.complete_many([convs[i] + [{"role": "user", "content": CRITIQUE_REQUEST.format(
            principle=drawn[i].critique)}] for i in alive])
        bar.update(len(alive))
        revisions = critic.complete_many([
            convs[i] + [{"role": "user", "content": CRITIQUE_REQUEST.format(principle=drawn[i].critique)},
                        {"role": "assistant", "content": critique.strip()},
                        {"role": "user", "content": REVISION_REQUEST.format(principle=drawn[i].revision)}]
            for i, critique in zip(alive, critiques)])
        bar.update(len(alive))
        still = []
        for i, critique, revision in zip(alive, critiques, revisions):
            revision = clean_revision(revision)
            failed = "empty" if not revision else "echo" if is_echo(revision, critique) else None
            history[i].append({"principle": drawn[i].id, "critique": critique.strip(), "revision": revision,
                               **({"failed": failed} if failed else {})})
            if failed is None:
                current[i] = revision
                still.append(i)
        bar.update(2 * (len(alive) - len(still)) * (passes - k - 1))  # the passes a dropped item will not make
        alive = still
    bar.close()
    records = []
    for i, it in enumerate(items):
        good = [p for p in history[i] if "failed" not in p]
        if not good:  # no pass gave a revision: the first failure says why
            outcome, revision = history[i][0]["failed"], None
        else:
            revision = current[i]
            outcome = "unchanged" if revision.strip() == it.response.strip() else "revised"
        records.append({"key": it.key, "prompt": it.prompt, "original": it.response, "revision": revision,
                        "outcome": outcome, "passes": history[i], "metadata": it.metadata})
    return records


def is_echo(revision: str, critique: str) -> bool:
    """A "revision" that only repeats the critique (what small critics do: the rewrite request answered with the
    critique again) is no revision: the two, lower-cased with spaces collapsed, are 80% the same or more."""
    a, b = (" ".join(t.lower().split()) for t in (revision, critique))
    return bool(a and b) and difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() >= 0.8


def verify_revisions(records: list[dict[str, Any]]) -> None:
    """``--verify``: where a row carries verifiable metadata (constraints, an answer, tests), its revision is kept
    only if the verifier scores it at least as high as the original; otherwise the outcome becomes ``rejected``
    and the revision is dropped. Rows the verifier cannot check are kept as they are (``verified: null``)."""
    judge = VerifierJudge()
    for r in records:
        if r["revision"] is None or r["outcome"] != "revised":
            continue
        try:
            before = judge.score(r["prompt"], r["original"], r["metadata"]).value
            after = judge.score(r["prompt"], r["revision"], r["metadata"]).value
        except ValueError:  # nothing to verify on this row
            r["verified"] = None
            continue
        r["verified"] = {"original": before, "revision": after}
        if after < before:
            r["outcome"], r["revision"] = "rejected", None


def write_outputs(records: list[dict[str, Any]], output_dir: Path) -> dict[str, int]:
    """sft.jsonl, pairs.jsonl and critiques.jsonl (atomic); returns the counts."""
    sft, pairs = [], []
    for r in records:
        if r["revision"] is None:
            continue
        meta = {**r["metadata"], "critique": {"principles": [p["principle"] for p in r["passes"]],
                                              "critiques": [p["critique"] for p in r["passes"]]}}
        sft.append({"messages": r["prompt"] + [{"role": "assistant", "content": r["revision"]}], "metadata": meta})
        if r["outcome"] == "revised":
            pairs.append({"prompt": r["prompt"], "chosen": r["revision"], "rejected": r["original"],
                          "metadata": meta})
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(output_dir / "sft.jsonl", sft)
    atomic_write_jsonl(output_dir / "pairs.jsonl", pairs)
    atomic_write_jsonl(output_dir / "critiques.jsonl", records)
    counts = {"rows": len(records), "sft_rows": len(sft), "pairs": len(pairs)}
    for outcome in OUTCOMES:
        counts[outcome] = sum(r["outcome"] == outcome for r in records)
    return counts


def run_critique(inputs: str | Path, output_dir: str | Path, critic_spec: dict[str, Any], *,
                 constitution: str | Path | None = None, passes: int = 1, seed: int = 0, limit: int | None = None,
                 verify: bool = False, progress: bool = True) -> dict[str, Any]:
    """Read, critique and revise, write the outputs and ``summary.json``; returns the summary. Everything that
    can be checked (constitution, critic config, every input row) is checked before the first request."""
    started = time.monotonic()
    principles = load_constitution(constitution)
    if passes < 1:
        raise CritiqueError(f"passes must be >= 1, got {passes}")
    items = read_items(inputs)
    if limit is not None:
        items = items[:limit]
    critic = build_critic(critic_spec)
    records = critique_revise(items, critic, principles, passes=passes, seed=seed, progress=progress)
    if verify:
        verify_revisions(records)
    output_dir = Path(output_dir)
    counts = write_outputs(records, output_dir)
    per_principle: dict[str, int] = {}
    for r in records:
        for p in r["passes"]:
            per_principle[p["principle"]] = per_principle.get(p["principle"], 0) + 1
    summary = {"inputs": str(inputs), "output_dir": str(output_dir), "passes": passes, "seed": seed, "verify": verify,
               "constitution": str(Path(constitution) if constitution else DEFAULT_CONSTITUTION),
               "principles_drawn": dict(sorted(per_principle.items())), **counts,
               "critic": {"type": critic_spec.get("type"), "model": critic_spec.get("model"),
                          "stats": critic.stats() if hasattr(critic, "stats") else None},
               "wall_time_s": round(time.monotonic() - started, 3)}
    atomic_write_json(output_dir / "summary.json", summary)
    return summary
