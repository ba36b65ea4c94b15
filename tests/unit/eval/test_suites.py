"""The builtin suites: every row loads, every constraint set can be met (a witness reply passes it), the
out-of-distribution suites share no phrasing with the shipped training data, and suite budgets and groups."""

import json
import math
import re
from pathlib import Path

import pytest

from posttrain.data.schema import DataError
from posttrain.eval.scoring import score_suite
from posttrain.eval.suites import BUILTIN, BUILTIN_SUITES, IN_DISTRIBUTION, OUT_OF_DISTRIBUTION, load_suite, parse_suite
from posttrain.verifiers import check_constraints, constraints_from_metadata

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "examples" / "data"


def witness(constraints: list[dict], prompt: str = "") -> str:
    """A reply that obeys every constraint of a row, built mechanically: if this cannot be done for a row, the
    row asks for something contradictory (or something this builder does not know, which the test also flags)."""
    c = {x["kind"]: x["args"] for x in constraints}
    special = list(c.get("include_keywords", {}).get("keywords", []))
    if "keyword_frequency" in c:
        special += [c["keyword_frequency"]["keyword"]] * c["keyword_frequency"]["n"]
    if "letter_frequency" in c:
        special.append(c["letter_frequency"]["letter"] * c["letter_frequency"]["n"])
    special += ["NOTE"] * c.get("capital_word_frequency", {}).get("n", 0)
    special += ["*marked*"] * c.get("highlighted_sections", {}).get("n", 0)
    special += ["[name]"] * c.get("placeholders", {}).get("n", 0)
    case = str.lower if "lowercase" in c else str.upper if "all_caps" in c else (lambda t: t)

    if "valid_json" in c or "json_answer" in c:
        return case(json.dumps({"answer": " ".join(special) or "fine"}))
    if "exclamation_sentence" in c:
        return case(" ".join(["Wow", *special, "this works!"]))
    if "exact_word_count" in c:
        words = (special + ["word"] * 50)[: c["exact_word_count"]["n"]]
        return case(" ".join(words) + ".")

    bounds = c.get("word_count", {})
    sentences_wanted = 1 if "max" in bounds else 2
    if "min" in bounds:
        sentences_wanted = max(sentences_wanted, math.ceil(bounds["min"] / 6) + 1)
    count = c.get("sentence_count", {})
    sentences_wanted = max(sentences_wanted, count.get("min", 0))
    if "max" in count:
        sentences_wanted = min(sentences_wanted, count["max"])
    paragraphs = c.get("paragraph_count", c.get("paragraph_first_word", {})).get("n", 1)
    sentences_wanted = max(sentences_wanted, paragraphs)
    bits = [f"Line {i} keeps the reply going smoothly." for i in range(sentences_wanted)]
    if special:
        bits[0] = bits[0][:-1] + " with " + " ".join(special) + "."
    if "constrained_response" in c:
        bits.insert(0, c["constrained_response"].get("options", ["My answer is yes."])[0])

    if "bullet_list" in c or "bullet_list_2" in c:
        n = c.get("bullet_list", {}).get("n", 2)
        body = " ".join(bits) + "\n" + "\n".join(f"- Point {i}." for i in range(n))
    elif "sections" in c:
        marker = c["sections"].get("marker", "SECTION")
        headed = [f"{marker} {i + 1}\nSome text here." for i in range(c["sections"]["n"])]
        body = " ".join(bits) + "\n" + "\n".join(headed)
    elif paragraphs > 1:
        per = math.ceil(len(bits) / paragraphs)
        groups = [" ".join(bits[i * per:(i + 1) * per]) or "More." for i in range(paragraphs)]
        if "paragraph_first_word" in c:
            nth, word = c["paragraph_first_word"]["nth"], c["paragraph_first_word"]["word"]
            groups[nth - 1] = f"{word} {groups[nth - 1]}"
        body = "\n\n".join(groups)
    else:
        body = " ".join(bits)
    if "title" in c:
        body = "<<Plan>>\n" + body
    if "starts_with_phrase" in c:
        body = c["starts_with_phrase"]["phrase"] + " " + body
    if "ends_with_phrase" in c:
        body = body + " " + c["ends_with_phrase"]["phrase"]
    if "postscript" in c:
        body = body + "\n" + c["postscript"].get("marker", "P.S.") + " one more note."
    if "two_responses" in c:
        body = body + "\n******\n" + body.replace("Line", "Piece")
    if "repeat_prompt" in c:
        body = c["repeat_prompt"]["prompt_to_repeat"] + " " + body
    if "double_quotes" in c:
        body = f'"{body}"'
    return case(body)


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_builtin_suite_loads_with_its_group(name):
    rows = load_suite(name)
    assert rows and {r.group for r in rows} == {BUILTIN[name].group}
    assert len({r.id for r in rows}) == len(rows)


def test_suite_sizes_and_groups():
    sizes = {name: len(load_suite(name)) for name in BUILTIN_SUITES}
    assert sizes == {"constraints": 120, "capability": 120, "refusal": 30, "constraints_ood": 142,
                     "ifeval_sample": 30, "capability_freeform": 71, "constraints_ood2": 99,
                     "constraints_reserve": 100}
    assert {n for n, s in BUILTIN.items() if s.group == IN_DISTRIBUTION} == {"constraints", "capability"}
    assert {n for n, s in BUILTIN.items() if s.group == OUT_OF_DISTRIBUTION} == {
        "constraints_ood", "ifeval_sample", "capability_freeform", "constraints_ood2"}
    assert BUILTIN["constraints_reserve"].group == "reserve"


# The out-of-distribution and reserved constraint suites: none may share phrasing with what training sees.
FRESH_CONSTRAINT_SUITES = ("constraints_ood", "ifeval_sample", "constraints_ood2", "constraints_reserve")


@pytest.mark.parametrize("name", ["constraints", *FRESH_CONSTRAINT_SUITES])
def test_every_constraint_row_can_be_satisfied(name):
    unmet = []
    for row in load_suite(name):
        constraints = constraints_from_metadata(row.metadata)
        text = witness(constraints, row.prompt[-1]["content"])
        failed = [r.name for r in check_constraints(text, constraints) if not r.passed]
        if failed:
            unmet.append((row.id, failed, text))
    assert unmet == []


def test_witness_builder_is_not_trivially_passing():
    """The satisfiability test above means something only if the builder's replies do fail other rows' asks."""
    asks = [{"kind": "lowercase", "args": {}}, {"kind": "bullet_list", "args": {"n": 3}}]
    text = witness([{"kind": "all_caps", "args": {}}, {"kind": "paragraph_count", "args": {"n": 2}}])
    assert not any(r.passed for r in check_constraints(text, asks))


def test_ood_suite_covers_many_kinds_each_phrased_three_ways():
    rows = load_suite("constraints_ood")
    by_kind: dict[str, set[str]] = {}
    for r in rows:
        for c, phrasing in zip(r.metadata["constraints"], r.metadata["phrasings"]):
            by_kind.setdefault(c["kind"], set()).add(phrasing)
    assert len(by_kind) >= 25
    assert {k: len(v) for k, v in by_kind.items() if len(v) < 3} == {}
    counts = [len(r.metadata["constraints"]) for r in rows]
    assert min(counts) == 1 and max(counts) == 3 and sum(n > 1 for n in counts) >= 60


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _training_prompts() -> list[str]:
    texts = []
    for path in sorted(DATA.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if isinstance(row.get("prompt"), str):
                texts.append(row["prompt"])
            texts += [m["content"] for m in row.get("messages", []) if m.get("role") == "user"]
    return texts


def test_ood_suites_share_no_phrasing_with_the_training_data():
    """No 6-word run of an out-of-distribution prompt appears in any shipped training prompt (examples/data),
    and none of the templated instructions of make_sample_data.py appears in them."""
    train = set()
    for text in _training_prompts():
        train |= _ngrams(text, 6)
    assert len(train) > 1000
    shared = {}
    for name in (*FRESH_CONSTRAINT_SUITES, "capability_freeform"):
        for row in load_suite(name):
            common = _ngrams(row.prompt[-1]["content"], 6) & train
            if common:
                shared[f"{name}/{row.id}"] = sorted(common)[:2]
    assert shared == {}
    templated = ["Answer in all lowercase.", "Answer in ALL CAPITAL LETTERS.", "Do not use any commas.",
                 "Wrap your entire answer in double quotes.", "Answer with a bullet list of exactly 2 items",
                 "Answer in one sentence that ends with an exclamation mark.", "Give the answer as JSON like",
                 "End your answer with the phrase", "Start your answer with", "Answer in exactly"]
    for name in FRESH_CONSTRAINT_SUITES:
        for row in load_suite(name):
            assert not any(t.lower().rstrip(".") in row.prompt[-1]["content"].lower() for t in templated), row.id


def test_ood_suites_share_no_phrasing_with_any_augmentation_wording():
    """Every wording augmentation can draw (verifiers/phrasings.py: CONSTRAINTS and MORE_PHRASINGS, each rendered
    with 20 seeds of its arguments) shares no 6-word run with an out-of-distribution prompt."""
    import random

    from posttrain.verifiers.phrasings import CONSTRAINTS, phrasing_groups

    wordings = set()
    for kind in CONSTRAINTS:
        for sampler, templates in (phrasing_groups(kind, more=True)
                                   + phrasing_groups(kind, more=True, more_arguments=True)):
            for seed in range(20):
                args = {"prompt_to_repeat": "x"} if kind == "repeat_prompt" else sampler(random.Random(seed))
                for template in templates:
                    wordings |= _ngrams(template(args), 6)
    assert len(wordings) > 300
    shared = {f"{name}/{row.id}": sorted(common)[:2] for name in FRESH_CONSTRAINT_SUITES
              for row in load_suite(name) if (common := _ngrams(row.prompt[-1]["content"], 6) & wordings)}
    assert shared == {}


def test_the_wider_argument_pools_hold_no_argument_of_a_builtin_suite():
    """No keyword, opening or closing phrase or paragraph opener of ``MORE_ARGUMENTS``'s pools is one that a builtin
    suite asks for (case and end punctuation aside): training on them would teach the eval's own arguments. Of the
    shipped pools, two paragraph openers are words that constraints_ood asks for (ood-0032 not to use "also",
    ood-0099 to open a paragraph with "Finally"): pinned here, so that no other value joins them."""
    from posttrain.verifiers import phrasings as ph

    def norm(value):
        return value.lower().strip().rstrip(".!?")

    def asked(names):
        values = set()
        for name in names:
            for row in load_suite(name):
                for c in constraints_from_metadata(row.metadata) if row.kind == "constraint" else []:
                    args = c.get("args") or {}
                    values |= {norm(v) for v in args.get("keywords") or []}
                    values |= {norm(args[k]) for k in ("keyword", "phrase", "word") if isinstance(args.get(k), str)}
        return values

    wider = ph.MORE_KEYWORDS + ph.MORE_OPENERS + ph.MORE_CLOSERS + ph.MORE_FIRST_WORDS
    shipped = ph.KEYWORDS + ph.OPENERS + ph.CLOSERS + ph.FIRST_WORDS
    assert len(wider + shipped) == len({norm(v) for v in wider + shipped}) == 140
    fresh = asked(FRESH_CONSTRAINT_SUITES)
    assert len(fresh) > 50
    assert sorted({norm(v) for v in wider} & asked(BUILTIN)) == []
    assert sorted({norm(v) for v in shipped} & fresh) == ["also", "finally"]


@pytest.mark.parametrize("suite", ["constraints_reserve", "constraints_ood2"])
def test_fresh_suites_are_written_apart_from_the_other_suites(suite):
    """The reserved suite's and constraints_ood2's tasks and wordings share no 6-word run with any other builtin
    suite's prompts (so a recipe tuned on those has not seen their phrasing either), and each asks for many kinds,
    alone and in pairs."""
    others = set()
    for name in BUILTIN:
        if name != suite:
            for row in load_suite(name):
                others |= _ngrams(row.prompt[-1]["content"], 6)
    rows = load_suite(suite)
    shared = {row.id: sorted(common)[:2] for row in rows if (common := _ngrams(row.prompt[-1]["content"], 6) & others)}
    assert shared == {}
    kinds = {c["kind"] for r in rows for c in r.metadata["constraints"]}
    counts = [len(r.metadata["constraints"]) for r in rows]
    assert len(kinds) >= 25 and counts.count(1) >= 50 and counts.count(2) >= 25


def test_the_reserved_suite_runs_only_when_named():
    from posttrain.eval.cli import _default_suites

    assert _default_suites() == [name for name in BUILTIN if name != "constraints_reserve"]  # by name only


def test_freeform_capability_needs_the_fact_and_a_sentence():
    rows = load_suite("capability_freeform")
    assert all(r.kind == "exact" and r.metadata["match"] == "regex" and r.metadata["min_words"] >= 6 for r in rows)
    bare, _ = score_suite(rows[:1], ["Light."])  # "Why do we see lightning before we hear thunder?"
    full, _ = score_suite(rows[:1], ["We see it first because light travels much faster than sound does."])
    wrong, _ = score_suite(rows[:1], ["We see it first because the clouds are very close to the ground."])
    assert (bare["capability/accuracy"], full["capability/accuracy"], wrong["capability/accuracy"]) == (0, 1, 0)
    short, _ = score_suite(rows[:1], ["Light travels faster than sound."])  # the fact, but 5 words
    assert short["capability/accuracy"] == 0


def test_freeform_questions_are_not_in_the_training_data_or_the_short_capability_suite():
    stems = {q.split("?")[0].lower() for q in _training_prompts()}
    stems |= {r.prompt[-1]["content"].split("?")[0].lower() for r in load_suite("capability")}
    assert [r.id for r in load_suite("capability_freeform") if r.prompt[-1]["content"].split("?")[0].lower()
            in stems] == []


def test_suite_budget_suffix_and_defaults(tmp_path):
    assert parse_suite("constraints_ood").max_new_tokens == 256
    assert parse_suite("constraints").max_new_tokens is None  # the run's budget
    spec = parse_suite("constraints@48")
    assert (spec.name, spec.max_new_tokens, spec.group) == ("constraints", 48, IN_DISTRIBUTION)
    f = tmp_path / "mine.jsonl"
    f.write_text(json.dumps({"prompt": "p", "kind": "refusal_benign"}) + "\n")
    assert (parse_suite(f"{f}@64").name, parse_suite(f"{f}@64").max_new_tokens, parse_suite(str(f)).group) == (
        "mine", 64, "custom")
    with pytest.raises(DataError, match="no such suite file"):
        parse_suite("nope@64")
