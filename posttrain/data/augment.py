"""Constraint augmentation: a model's own plain replies turned into instruction-following SFT examples.

For each reply to a task with no constraint (``posttrain generate`` on plain task prompts), ``per_reply`` times:
sample one constraint kind (or two compatible ones, ``two_constraint_share`` of the time), one of its phrasings
(``verifiers/phrasings.py``), append the instruction sentences to the task, and repair the reply to obey them
(``verifiers/repair.py``: lowercase it, add the title, cut it to the word limit, ...). The example is kept only if
the verifier then passes every constraint. ``plain_share`` of the replies are also kept as they are, under the
bare task: anchors that keep the model answering plainly when nothing is asked (without them a format learnt from
the edits, e.g. quotes around the whole answer, leaks into every answer).

Why (issue 16): self-distillation keeps the base model's style and length, so capability and length do not
drift, but a 135M model rarely samples a reply that follows an unfamiliar constraint, and repairing what it
sampled for each constrained prompt gives one example per sampled reply. Here one sampled reply gives
``per_reply`` examples, every kind gets about the same number of them, and the edit is the only difference
between examples that share a reply. It is the forward direction of constraint back-translation (Qi et al. 2024,
which adds to a prompt the constraints its reply already meets).

Rows in: candidates (``prompt`` messages ending in the user's task, ``text``, optional ``finish_reason``,
``prompt_id``, ``candidate_index``, ``metadata``). A row whose metadata already carries constraints is skipped
(its reply was shaped by them). Rows out: ``{"messages": [..., user: task + instructions, assistant: edited
reply], "constraints", "phrasings", "source": {"prompt_id", "candidate_index"}}``, which ``posttrain sft`` reads.
Optionally (``augment_file(..., pairs_output=)``) also repair pairs: ``{"prompt": [..., user: task + instructions],
"chosen": edited reply, "rejected": the reply as sampled (tidied), "constraints", "phrasings", "source"}`` for
every constrained example whose edit changed the reply, which ``posttrain dpo`` reads: the two replies differ only
where the instruction is obeyed, so a preference step puts its whole signal on those tokens, where SFT spreads it
over the reply. With ``contrast_share`` > 0, each reply's bare task and each of its constrained prompts, with
probability ``contrast_share``, also give a contrast pair: that prompt's reply (the reply as sampled, or the edited
one) chosen, and the same reply edited for one of ``contrast_kinds`` the prompt does not ask for rejected
(``"contrast": kind``, no constraints). A repair pair alone says "lowercase is better" on every prompt it shows;
the contrast pair says "not when this prompt did not ask", so DPO learns the condition and not the habit (issue 16,
session 24: the quickstart's lowercase pairs left 5.4% of its answers to prompts that asked for no lowercase in
lowercase, the base 0%, mostly answers to prompts that asked for something else). With ``loop_share`` > 0, each
prompt, with that probability and its own random stream, also gives a loop pair (``"contrast": "loop"``): the
prompt's reply chosen, and the reply cut after one of its sentences, which then repeats 3-6 times, rejected
(``looped``): the way a small model's greedy answer degenerates until the token limit. The two sides first differ
where the reply goes on (or ends) and the loop repeats a sentence instead, so DPO lowers a repeat there; a pair in
which the rejected side stopped early would teach stopping instead. With ``echo_share`` > 0, each constrained prompt,
with that probability and its own random stream, also gives an echo pair (``"contrast": "echo"``): the prompt's reply
chosen, and the same reply with one of the prompt's instruction sentences said as one of its own sentences rejected
(``echoed``): a model trained on constraint data can copy the instruction into its answer instead of obeying it
(``eval/drift.py``'s ``format/instruction_echo_rate``). With ``markup_loop_share`` > 0, each prompt whose reply has a
bullet or divider line, with that probability and its own random stream, also gives a markup-loop pair
(``"contrast": "markup_loop"``): the reply chosen, rejected the reply up to that line and then a markdown rule
("* * *" for '* ' bullets) on line after line (``markup_looped``), the loop a small model falls into where a list or
a division should begin.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from posttrain.data.candidate_rows import read_candidate_rows
from posttrain.data.schema import DataError, DataErrors
from posttrain.data.writers import atomic_write_jsonl
from posttrain.verifiers.phrasings import CONSTRAINTS, compatible, fixed_args, phrasing_groups
from posttrain.verifiers.counting import SENTENCE_BREAK, words
from posttrain.verifiers.repair import repair, tidy
from posttrain.verifiers.style import (MIN_SENTENCE_WORDS, has_repeated_sentence, is_all_caps_answer,
                                       is_wrapped_in_quotes, sentence_tokens)


@dataclass(frozen=True)
class AugmentSettings:
    per_reply: int = 3  # constrained examples made from each reply
    plain_share: float = 0.25  # share of replies also kept under the bare task
    two_constraint_share: float = 0.35  # share of examples that ask for two compatible constraints
    hold_out_kinds: tuple[str, ...] = ()  # constraint kinds never used (a leave-out run)
    kind_weights: Mapping[str, float] = field(default_factory=dict)  # relative draw weight per kind (default 1;
    # 0 = never drawn): a kind needs enough examples to be learnt (issue 16 probe K: ~45 rows of lowercase were
    # not enough, ~90 at a higher learning rate moved it), so the dose goes to the kinds the model fails
    min_words: int = 8  # a reply shorter than this once tidied is skipped
    max_words: int | None = None  # a reply longer than this once tidied is skipped (None: no cap): SFT on sampled
    # replies moves the greedy answer's length toward the sampled one's, which for a small instruct model is longer
    skip_truncated: bool = True  # skip replies cut at the token limit (finish_reason "length"): trained on, they
    # teach answers as long as the sampling budget (issue 16 run H: 69% truncated, answers 68% longer than the base)
    skip_styled: bool = False  # skip replies wrapped whole in double quotes or written in capitals: the unrequested
    # formatting the drift gates count (eval/drift.py), which examples under instructions that do not ask for it
    # would teach (issue 16 runs E1 -> E4: 22 of the quickstart's 338 replies skipped; its quoted answers stayed 8%)
    more_phrasings: bool = False  # also draw the wordings of ``verifiers/phrasings.py::MORE_PHRASINGS`` (and
    # word_count's minimum-length side); off, the draws are the ones of the shipped prompt files' phrasings
    more_arguments: bool = False  # draw the keywords, opening and closing phrases and paragraph openers that the
    # prompts ask for from ``verifiers/phrasings.py::MORE_ARGUMENTS``'s wider pools as well (the shipped ones alone:
    # 15 keywords, 6 closing phrases), so that the model copies the one asked for instead of choosing among a few
    contrast_share: float = 0.0  # with pairs: share of prompts (bare and constrained) that also give a contrast pair
    contrast_kinds: tuple[str, ...] = ("lowercase", "all_caps")  # the edits a contrast pair rejects: by default the
    # whole-reply case changes the drift gates count; quotes and JSON also add a closing token where the chosen reply
    # stops, so their contrast pairs teach stopping early (issue 16 run E11: answers 0.70x the base's, E12 without
    # them 0.75x)
    loop_share: float = 0.0  # with pairs: share of prompts (bare and constrained) that also give a loop pair (the
    # reply chosen, the reply looping on one of its sentences rejected): the DPO data's own guard against the
    # repetition that more preference steps bring (issue 16: the quickstart at lowercase weight 1, run V1, gained
    # +9.9 with its repeat rate 2.5 points over the base's)
    echo_share: float = 0.0  # with pairs: share of constrained prompts that also give an echo pair (the reply chosen,
    # the reply saying one of the prompt's instruction sentences rejected): against copying the instruction into the
    # answer (issue 16, session 39: recipe_full's model echoed in 7.2% of its eval stage's constraint answers, the
    # base in 3.4%)
    markup_loop_share: float = 0.0  # with pairs: share of prompts whose reply has a bullet or divider line that also
    # give a markup-loop pair (the reply chosen, the reply turning into "* * *" lines where its list begins rejected):
    # issue 16, session 41: asked for '* ' bullets, the quickstart's SFT and DPO models answered 5 of 23 markup
    # prompts with "* * *" until the token limit (the base: 2); with them (run QM1) such answers fell to the base's
    # count but the gain fell too and a capability gate failed (docs/CANDIDATES.md): no shipped recipe uses them
    drop_system: bool = False  # leave the candidates' system messages out of the SFT rows: a system prompt that
    # only steered sampling (e.g. "keep every reply under 50 words", so that fewer replies run into the token limit)
    # would otherwise be trained on as part of every prompt
    seed: int = 0
    max_tries: int = 40  # draws per reply before giving up on reaching per_reply

    def __post_init__(self) -> None:
        for name, given in (("hold_out_kinds", self.hold_out_kinds), ("kind_weights", self.kind_weights),
                            ("contrast_kinds", self.contrast_kinds)):
            unknown = sorted(set(given) - set(CONSTRAINTS))
            if unknown:
                raise ValueError(f"{name}: unknown constraint kind(s) {', '.join(unknown)} (known: "
                                 f"{', '.join(CONSTRAINTS)})")
        for kind, weight in self.kind_weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
                raise ValueError(f"kind_weights: {kind}: expected a number >= 0, got {weight!r}")
        if self.per_reply < 0 or self.min_words < 0 or self.max_tries < 1:
            raise ValueError("per_reply and min_words must be >= 0, max_tries >= 1")
        if self.max_words is not None and (isinstance(self.max_words, bool) or not isinstance(self.max_words, int)
                                           or self.max_words < max(self.min_words, 1)):
            raise ValueError(f"max_words must be an integer >= min_words ({self.min_words}), got {self.max_words!r}")
        if self.contrast_share > 0 and not self.contrast_kinds:
            raise ValueError("contrast_kinds: empty, but contrast_share > 0")
        for name in ("plain_share", "two_constraint_share", "contrast_share", "loop_share", "echo_share",
                     "markup_loop_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.kinds:
            raise ValueError("hold_out_kinds / kind_weights: every constraint kind is held out or weighted 0")

    @property
    def kinds(self) -> tuple[str, ...]:
        """The constraint kinds drawn from: every verifier kind with a phrasing, less the held-out ones and
        those weighted 0."""
        return tuple(k for k in CONSTRAINTS if k not in set(self.hold_out_kinds) and self.weight(k) > 0)

    def weight(self, kind: str) -> float:
        return float(self.kind_weights.get(kind, 1.0))


def read_candidates(path: str | Path) -> list[dict[str, Any]]:
    """Candidate rows (``data/candidate_rows.py``, the reader the judge stage uses), each with its line number
    under ``_line``, whose prompt must end with the user's task; every bad row is a ``DataError`` naming the file,
    line and field (all of them at once)."""
    rows, lines = read_candidate_rows(path)
    errors = [DataError(str(path), line, "prompt", "must end with the user's task (a 'user' message)")
              for row, line in zip(rows, lines) if row["prompt"][-1]["role"] != "user"]
    if errors:
        raise errors[0] if len(errors) == 1 else DataErrors(errors)
    return [{**row, "_line": line} for row, line in zip(rows, lines)]


def _draw(rng: random.Random, settings: AugmentSettings, kinds: tuple[str, ...], weights: list[float],
          wordings: Mapping[str, list[tuple]], task: str) -> tuple[list[dict], list[str], list[str]]:
    """(constraints, their instruction sentences, "kind/template" ids) of one draw, or empty lists when the
    drawn kinds cannot share a prompt."""
    count = min(2 if rng.random() < settings.two_constraint_share else 1, len(kinds))
    if len(set(weights)) == 1:
        chosen = rng.sample(kinds, count)
    else:  # weighted, without replacement
        pool, chosen = list(zip(kinds, weights)), []
        for _ in range(count):
            (kind, _w), = rng.choices(pool, weights=[w for _k, w in pool])
            chosen.append(kind)
            pool = [(k, w) for k, w in pool if k != kind]
    if not compatible(chosen):
        return [], [], []
    constraints, sentences, phrasings = [], [], []
    for kind in chosen:
        i = rng.randrange(len(wordings[kind]))
        sampler, template = wordings[kind][i]
        args = {"prompt_to_repeat": task} if kind == "repeat_prompt" else {**sampler(rng), **fixed_args(template)}
        constraints.append({"kind": kind, "args": args})
        sentences.append(template(args))
        phrasings.append(f"{kind}/{i}")
    return constraints, sentences, phrasings


def augment_rows(rows: list[dict[str, Any]], settings: AugmentSettings) -> tuple[list[dict], dict[str, Any]]:
    """SFT rows made from candidate rows (see the module docstring), and counts. Deterministic: each reply's
    draws are seeded by (seed, prompt id, candidate index), so a row's examples do not depend on its neighbours."""
    out, _originals, _contrasts, stats = _augment(rows, settings)
    return out, stats


def repair_pairs(sft_rows: list[dict], originals: list[str | None]) -> list[dict]:
    """Preference rows (module docstring) from the constrained SFT rows and the replies they were edited from
    (``originals[i]``: the tidied sampled reply of ``sft_rows[i]``, None for a plain row); an edit that changed
    nothing makes no pair."""
    pairs = []
    for row, original in zip(sft_rows, originals):
        *prompt, answer = row["messages"]
        if original is None or answer["content"] == original:
            continue
        pairs.append({"prompt": prompt, "chosen": answer["content"], "rejected": original,
                      "constraints": row["constraints"], "phrasings": row["phrasings"], "source": row["source"]})
    return pairs


def _contrast_pair(rng: random.Random, settings: AugmentSettings, prompt: list[dict], chosen: str,
                   asked: set[str], source: dict) -> dict | None:
    """A contrast pair for one prompt and its reply (module docstring): an edit of a kind the prompt does not ask
    for, drawn from ``contrast_kinds``, makes the rejected reply; None when every such kind is asked for, or the
    drawn edit changes nothing or fails."""
    kinds = [k for k in settings.contrast_kinds if k not in asked]
    if not kinds:
        return None
    kind = rng.choice(kinds)
    sampler, _templates = CONSTRAINTS[kind]
    edited = repair(chosen, [{"kind": kind, "args": sampler(rng)}])
    if edited is None or edited == chosen:
        return None
    return {"prompt": prompt, "chosen": chosen, "rejected": edited, "constraints": [], "phrasings": [],
            "source": source, "contrast": kind}


def looped(text: str, rng: random.Random, copies: tuple[int, int] = (3, 6)) -> str | None:
    """``text`` cut after one of its sentences (drawn among those of at least ``MIN_SENTENCE_WORDS`` words, the
    ones the degeneration metric compares), that sentence then repeated ``copies`` (inclusive range) more times,
    each copy after the whitespace that followed it in the text (a space, or the line break): the rejected side of
    a loop pair. None when no sentence is long enough."""
    spans, start = [], 0
    for brk in [*SENTENCE_BREAK.finditer(text), None]:
        end, gap = (brk.start(), brk.group()) if brk is not None else (len(text.rstrip()), " ")
        piece = text[start:end].strip()
        if len(sentence_tokens(piece)) >= MIN_SENTENCE_WORDS:
            spans.append((end, piece, gap))
        if brk is not None:
            start = brk.end()
    if not spans:
        return None
    end, piece, gap = spans[rng.randrange(len(spans))]
    out = text[:end] + (gap + piece) * rng.randint(*copies)
    return out if has_repeated_sentence(out) else None


_MARKUP_LINE = re.compile(r"^[ \t]*(?:([*-]) +\S|(\*{3,}|-{3,})[ \t]*$)", re.MULTILINE)


def markup_looped(text: str, rng: random.Random, copies: tuple[int, int] = (8, 16)) -> str | None:
    """``text`` up to its first bullet line ('* ' or '- ') or divider line ("***", "******", "---"), then that
    markup alone as a markdown rule ("* * *" for '* ' bullets, "- - -" for '- ' ones, the divider itself) on
    ``copies`` (inclusive range) lines: the rejected side of a markup-loop pair. None when the text has no such
    line."""
    found = _MARKUP_LINE.search(text)
    if found is None:
        return None
    rule = " ".join([found.group(1)] * 3) if found.group(1) else found.group(2)
    return text[:found.start()] + "\n".join([rule] * rng.randint(*copies))


def echoed(text: str, instruction: str, rng: random.Random) -> str:
    """``text`` with ``instruction`` said as one of its sentences: before its first sentence or after one of the
    others but its last, drawn at random (never after the last: a rejected side that goes on where the chosen one
    stops would teach stopping). The rejected side of an echo pair."""
    end = len(text.rstrip())
    starts = [0] + [b.end() for b in SENTENCE_BREAK.finditer(text) if b.end() < end]
    at = starts[rng.randrange(len(starts))]
    return f"{text[:at]}{instruction.strip()} {text[at:]}"


def _augment(rows: list[dict[str, Any]], settings: AugmentSettings
             ) -> tuple[list[dict], list[str | None], list[dict], dict[str, Any]]:
    """(SFT rows, the reply each constrained row was edited from or None for a plain row, contrast pairs, then loop
    pairs, then echo pairs, then markup-loop pairs, counts)."""
    out: list[dict] = []
    originals: list[str | None] = []
    contrasts: list[dict] = []
    loops: list[dict] = []
    echoes: list[dict] = []
    markup_loops: list[dict] = []
    stats: dict[str, Any] = {"replies": len(rows), "replies_used": 0, "skipped_constrained": 0,
                             "skipped_short": 0, "skipped_long": 0, "skipped_truncated": 0, "skipped_styled": 0,
                             "plain_examples": 0, "constrained_examples": 0, "replies_short_of_per_reply": 0}
    kinds = settings.kinds
    weights = [settings.weight(k) for k in kinds]  # once per run, not per draw
    wordings = {k: [(sampler, t)
                    for sampler, templates in phrasing_groups(k, settings.more_phrasings, settings.more_arguments)
                    for t in templates] for k in kinds}  # kind -> [(args sampler, template)], by template index
    per_kind = {k: 0 for k in kinds}
    for row in rows:
        if (row.get("metadata") or {}).get("constraints"):
            stats["skipped_constrained"] += 1
            continue
        truncated = row.get("finish_reason") == "length"
        if truncated and settings.skip_truncated:
            stats["skipped_truncated"] += 1
            continue
        reply = tidy(row["text"], truncated=truncated)
        if len(words(reply)) < settings.min_words:
            stats["skipped_short"] += 1
            continue
        if settings.max_words is not None and len(words(reply)) > settings.max_words:
            stats["skipped_long"] += 1
            continue
        if settings.skip_styled and (is_wrapped_in_quotes(reply) or is_all_caps_answer(reply)):
            stats["skipped_styled"] += 1
            continue
        stats["replies_used"] += 1
        *context, user = row["prompt"]
        if settings.drop_system:
            context = [m for m in context if m["role"] != "system"]
        task = user["content"].strip()
        source = {"prompt_id": row.get("prompt_id"), "candidate_index": row.get("candidate_index")}
        stream = f"{settings.seed}:{row.get('prompt_id')}:{row.get('candidate_index')}:{row['_line']}"
        rng = random.Random(stream)
        first = len(out)
        if rng.random() < settings.plain_share:
            out.append({"messages": [*context, {"role": "user", "content": task},
                                     {"role": "assistant", "content": reply}],
                        "constraints": [], "phrasings": [], "source": source})
            originals.append(None)
            stats["plain_examples"] += 1
        made, seen = 0, set()
        for _ in range(settings.max_tries):
            if made >= settings.per_reply:
                break
            constraints, sentences, phrasings = _draw(rng, settings, kinds, weights, wordings, task)
            if not constraints or tuple(phrasings) in seen:
                continue
            edited = repair(reply, constraints)  # None unless the verifier passes every constraint
            if edited is None:
                continue
            seen.add(tuple(phrasings))
            out.append({"messages": [*context, {"role": "user", "content": " ".join([task, *sentences])},
                                     {"role": "assistant", "content": edited}],
                        "constraints": constraints, "phrasings": phrasings, "source": source})
            originals.append(reply)
            for c in constraints:
                per_kind[c["kind"]] += 1
            made += 1
        stats["constrained_examples"] += made
        stats["replies_short_of_per_reply"] += made < settings.per_reply
        # the prompts this reply answers (its bare task, then each constrained row) and what each asks for: contrast
        # and loop pairs draw from them, each on its own random stream, so nothing above changes with them
        prompts = [([*context, {"role": "user", "content": task}], reply, set())] + [
            (r["messages"][:-1], r["messages"][-1]["content"], {c["kind"] for c in r["constraints"]})
            for r in out[first:] if r["constraints"]]
        if settings.contrast_share > 0:
            crng = random.Random(f"contrast:{stream}")
            for prompt, chosen, asked in prompts:
                if crng.random() < settings.contrast_share and (
                        pair := _contrast_pair(crng, settings, prompt, chosen, asked, source)) is not None:
                    contrasts.append(pair)
        if settings.loop_share > 0:
            lrng = random.Random(f"loop:{stream}")
            for prompt, chosen, _asked in prompts:
                if lrng.random() < settings.loop_share and (rejected := looped(chosen, lrng)) is not None:
                    loops.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "constraints": [],
                                  "phrasings": [], "source": source, "contrast": "loop"})
        if settings.echo_share > 0:
            erng = random.Random(f"echo:{stream}")
            for prompt, chosen, asked in prompts:
                if asked and erng.random() < settings.echo_share:
                    instructions = SENTENCE_BREAK.split(prompt[-1]["content"][len(task):].strip())
                    said = instructions[erng.randrange(len(instructions))]
                    echoes.append({"prompt": prompt, "chosen": chosen, "rejected": echoed(chosen, said, erng),
                                   "constraints": [], "phrasings": [], "source": source, "contrast": "echo"})
        if settings.markup_loop_share > 0:
            mrng = random.Random(f"markup:{stream}")
            for prompt, chosen, _asked in prompts:
                if _MARKUP_LINE.search(chosen) and mrng.random() < settings.markup_loop_share:
                    markup_loops.append({"prompt": prompt, "chosen": chosen, "rejected": markup_looped(chosen, mrng),
                                         "constraints": [], "phrasings": [], "source": source,
                                         "contrast": "markup_loop"})
    stats["examples"] = len(out)
    stats["per_kind"] = per_kind
    return out, originals, contrasts + loops + echoes + markup_loops, stats


def augment_file(candidates: str | Path, output: str | Path, settings: AugmentSettings,
                 pairs_output: str | Path | None = None) -> dict[str, Any]:
    """Read ``candidates``, write the SFT rows to ``output`` (and with ``pairs_output``, the repair pairs there;
    atomically: a failed run leaves no partial file), return the counts (``pairs``: how many pairs, contrast pairs
    included, which follow the repair pairs; ``contrast_pairs``: how many of those, ``loop_pairs``, ``echo_pairs``
    and ``markup_loop_pairs`` among them).
    ``DataErrors`` for bad rows before anything is written."""
    rows, originals, contrasts, stats = _augment(read_candidates(candidates), settings)
    if not rows:
        raise DataErrors([DataError(str(candidates), None, None, "no example made: every reply was skipped (too "
                                    f"short under min_words={settings.min_words}, too long over max_words="
                                    f"{settings.max_words}, cut at the token limit, quoted or in capitals under "
                                    "skip_styled, or its prompt had constraints)")])
    atomic_write_jsonl(output, rows)
    if pairs_output is not None:
        pairs = repair_pairs(rows, originals) + contrasts
        atomic_write_jsonl(pairs_output, pairs)
        stats["pairs"] = len(pairs)
        stats["contrast_pairs"] = len(contrasts)
        stats["loop_pairs"] = sum(p.get("contrast") == "loop" for p in contrasts)
        stats["echo_pairs"] = sum(p.get("contrast") == "echo" for p in contrasts)
        stats["markup_loop_pairs"] = sum(p.get("contrast") == "markup_loop" for p in contrasts)
    return stats
