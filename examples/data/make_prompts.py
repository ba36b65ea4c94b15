"""Generate diverse instruction-following training prompts: many task types x many topics x many phrasings of
each constraint kind, with a leave-out protocol.

    python examples/data/make_prompts.py                                   # -> examples/data/prompts_diverse.jsonl
    python examples/data/make_prompts.py --n 400 --seed 7 -o my_prompts.jsonl
    python examples/data/make_prompts.py --hold-out-kinds lowercase,title --hold-out-templates 0
    python examples/data/make_prompts.py --tasks-only --n 320 -o examples/data/tasks.jsonl   # plain tasks
    python examples/data/make_prompts.py --eval-suite examples/data/prompts_diverse.jsonl --n 64 --seed 99 \
        -o examples/data/prompts_diverse_heldout.jsonl          # in-distribution eval rows, none of the training's

Each row is a prompt row that `generate`, `judge`, `grpo`, `online-dpo` and `eval` read:
``{"id", "prompt", "category", "constraints": [{"kind", "args"}], "phrasings": ["kind/template", ...]}``.
The constraints are the verifier kinds of ``posttrain/verifiers/constraints.py``; there is no answer key
(open-ended tasks), so a verifier judge scores the constraints alone.

Why this exists (issue 16): training prompts from one template per constraint kind and one task shape (short
factual questions) teach the phrasing, not the skill. Here every kind has several independent phrasings, tasks are
open-ended (explain, describe, list, write a note, give advice, ...), and a prompt may carry two constraints.

Leave-out protocol: ``--hold-out-kinds`` drops every prompt that would use those constraint kinds, and
``--hold-out-templates K`` drops phrasing template number K of every kind (0-based; the held-out phrasings can then
be used to test transfer to an unseen wording). The header of the summary printed at the end lists what was held
out; every row records its ``phrasings`` so an eval can tell which kinds and wordings a model was trained on.

Deterministic (fixed seed, stdlib only).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from posttrain.verifiers.phrasings import CONSTRAINTS, compatible, fixed_args

HERE = Path(__file__).resolve().parent

TOPICS = [
    "the water cycle", "recycling at home", "learning a new language", "keeping a houseplant alive",
    "the history of the bicycle", "why the sky looks blue", "saving money on groceries", "a rainy afternoon",
    "how bees make honey", "the benefits of walking", "planning a picnic", "public libraries", "volcanoes",
    "the moon's phases", "making bread at home", "first day at a new job", "how vaccines train the body",
    "electric cars", "the importance of sleep", "a trip to the mountains", "chess for beginners",
    "composting kitchen scraps", "the life of a lighthouse keeper", "how rainbows form", "writing a good email",
    "caring for a puppy", "the invention of paper", "solar panels", "a busy train station", "learning to swim",
    "why leaves change colour in autumn", "the rules of football", "drinking enough water", "a quiet village",
    "how a refrigerator keeps food cold", "visiting a museum", "the ocean's tides", "starting a vegetable garden",
    "time management for students", "the northern lights", "a birthday surprise", "how airplanes stay in the air",
    "reducing screen time", "the desert at night", "teamwork", "an old clock shop", "how to make a cup of tea",
    "the benefits of reading", "penguins", "a thunderstorm", "cleaning a messy room", "the first moon landing",
    "how clouds form", "a friendly robot", "riding the bus", "the smell of fresh coffee", "snow days",
    "why exercise is good for the heart", "a lost umbrella", "the rainforest",
]

# Task shapes: {t} is the topic. None of these is a short factual question with a one-word answer.
TASKS = [
    ("explain", "Explain {t} to a curious ten-year-old."),
    ("explain", "Can you explain {t} in simple words?"),
    ("describe", "Describe {t}."),
    ("describe", "Paint a picture in words of {t}."),
    ("advice", "Give some practical advice about {t}."),
    ("advice", "What tips would you share with someone interested in {t}?"),
    ("note", "Write a short note to a friend about {t}."),
    ("note", "Compose a brief message to a coworker that mentions {t}."),
    ("story", "Tell a very short story about {t}."),
    ("story", "Write a tiny tale involving {t}."),
    ("opinion", "What do you think is most interesting about {t}?"),
    ("reasons", "Why should people care about {t}?"),
    ("summary", "Give a quick overview of {t}."),
    ("blurb", "Write a blurb for a community newsletter about {t}."),
]

def make_rows(n: int, seed: int, *, hold_out_kinds=(), hold_out_templates=(), two_constraint_share: float = 0.35,
              id_prefix: str = "diverse") -> list[dict]:
    """``n`` prompt rows; each has one constraint, or two compatible ones (``two_constraint_share`` of rows)."""
    unknown = set(hold_out_kinds) - set(CONSTRAINTS)
    if unknown:
        raise SystemExit(f"make_prompts: unknown constraint kind(s) {sorted(unknown)}; known: {', '.join(CONSTRAINTS)}")
    kinds = [k for k in CONSTRAINTS if k not in set(hold_out_kinds)]
    rng = random.Random(seed)
    rows, seen = [], set()
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n:
            raise SystemExit(f"make_prompts: could not make {n} distinct prompts (made {len(rows)})")
        count = 2 if rng.random() < two_constraint_share else 1
        chosen = rng.sample(kinds, count)
        if not compatible(chosen):
            continue
        category, task = rng.choice(TASKS)
        topic = rng.choice(TOPICS)
        sentences, constraints, phrasings = [], [], []
        for kind in chosen:
            sampler, templates = CONSTRAINTS[kind]
            usable = [i for i in range(len(templates)) if i not in set(hold_out_templates)]
            if not usable:
                raise SystemExit(f"make_prompts: every phrasing of {kind} is held out")
            i = rng.choice(usable)
            args = {**sampler(rng), **fixed_args(templates[i])}
            if kind == "repeat_prompt":  # the request to copy is the task sentence, not the instruction
                args = {"prompt_to_repeat": task.format(t=topic)}
            sentences.append(templates[i](args))
            constraints.append({"kind": kind, "args": args})
            phrasings.append(f"{kind}/{i}")
        prompt = " ".join([task.format(t=topic)] + sentences)
        if prompt in seen:
            continue
        seen.add(prompt)
        rows.append({"id": f"{id_prefix}-{len(rows):04d}", "prompt": prompt, "category": category,
                     "constraints": constraints, "phrasings": phrasings})
    return rows


def task_rows(n: int, seed: int, id_prefix: str = "task") -> list[dict]:
    """``n`` distinct plain task prompts (a task shape and a topic, no constraint): what ``posttrain generate``
    answers before ``posttrain data augment`` adds constraints to the replies."""
    pairs = [(category, task, topic) for category, task in TASKS for topic in TOPICS]
    if n > len(pairs):
        raise SystemExit(f"make_prompts: only {len(pairs)} distinct tasks exist, asked for {n}")
    random.Random(seed).shuffle(pairs)
    return [{"id": f"{id_prefix}-{i:04d}", "prompt": task.format(t=topic), "category": category}
            for i, (category, task, topic) in enumerate(pairs[:n])]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=480, help="prompt rows to write")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("-o", "--output", default=str(HERE / "prompts_diverse.jsonl"))
    ap.add_argument("--hold-out-kinds", default="", help="comma-separated constraint kinds to leave out")
    ap.add_argument("--hold-out-templates", default="", help="comma-separated phrasing template numbers (0-based) "
                                                             "to leave out of every kind")
    ap.add_argument("--two-constraint-share", type=float, default=0.35)
    ap.add_argument("--eval-suite", metavar="TRAIN.jsonl", default=None,
                    help="write an in-distribution eval suite instead: rows the generator could have made for "
                         "TRAIN.jsonl (same kinds and phrasings) but none of its prompts, with kind 'constraint' "
                         "and group 'in_distribution' (`posttrain eval --suite FILE`)")
    ap.add_argument("--tasks-only", action="store_true",
                    help="write plain task prompts with no constraint instead (for `posttrain data augment`)")
    a = ap.parse_args(argv)
    kinds = [k for k in a.hold_out_kinds.split(",") if k]
    templates = [int(t) for t in a.hold_out_templates.split(",") if t]
    if a.tasks_only:
        rows = task_rows(a.n, a.seed)
        Path(a.output).write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {len(rows)} task prompts to {a.output}")
        return
    if a.eval_suite:
        taken = {json.loads(line)["prompt"] for line in Path(a.eval_suite).read_text().splitlines() if line.strip()}
        pool = make_rows(a.n + len(taken), a.seed, hold_out_kinds=kinds, hold_out_templates=templates,
                         two_constraint_share=a.two_constraint_share, id_prefix="heldout-diverse")
        rows = [{**r, "kind": "constraint", "group": "in_distribution"} for r in pool if r["prompt"] not in taken]
        rows = rows[: a.n]
    else:
        rows = make_rows(a.n, a.seed, hold_out_kinds=kinds, hold_out_templates=templates,
                         two_constraint_share=a.two_constraint_share)
    out = Path(a.output)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    per_kind: dict[str, int] = {}
    for r in rows:
        for c in r["constraints"]:
            per_kind[c["kind"]] = per_kind.get(c["kind"], 0) + 1
    print(f"wrote {len(rows)} prompts to {out} (held out: kinds {kinds or 'none'}, templates {templates or 'none'})")
    print("per kind: " + ", ".join(f"{k} {v}" for k, v in sorted(per_kind.items())))


if __name__ == "__main__":
    main()
