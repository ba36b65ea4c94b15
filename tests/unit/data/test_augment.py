"""Constraint augmentation (posttrain/data/augment.py): plain replies -> instruction-following SFT rows whose
replies are the originals repaired to obey the sampled constraints, checked by the verifier."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import random

from posttrain.data.augment import (AugmentSettings, augment_file, augment_rows, echoed, looped, markup_looped,
                                    read_candidates, repair_pairs)
from posttrain.data.layouts import load_examples
from posttrain.data.schema import DataError, DataErrors
from posttrain.verifiers.constraints import check_constraints
from posttrain.verifiers.counting import SENTENCE_BREAK
from posttrain.verifiers.phrasings import CONSTRAINTS, phrasing_groups
from posttrain.verifiers.repair import repair, tidy
from posttrain.verifiers.style import has_repeated_sentence, is_repetitive

REPLY_A = ("Bees collect nectar from flowers. They carry it back to the hive in their stomachs. Inside, they pass "
           "it from bee to bee and fan it with their wings. The water evaporates and the nectar thickens into "
           "honey. Finally they seal it in wax cells for the winter.")
REPLY_B = ("Libraries lend books for free. They also offer quiet rooms to study, computers, and classes for "
           "children and adults. Many host reading clubs. A library card costs nothing and opens all of this to "
           "anyone who lives nearby. Visit")  # cut at the token limit: the unfinished tail goes


def candidate(pid, task, text, finish="stop", metadata=None):
    return {"prompt_id": pid, "candidate_index": 0, "prompt": [{"role": "user", "content": task}], "text": text,
            "finish_reason": finish, "metadata": metadata or {}}


def with_and_without(path, tmp_path, settings, **extra):
    """``augment_file`` of ``path`` with pairs, under ``settings`` and then with ``extra`` too: the SFT rows and
    every pair of the first run stay as they were in the second (asserted). Returns (stats without, stats with, the
    first run's pairs, the second run's pairs, its SFT rows)."""
    base_stats = augment_file(path, tmp_path / "sft0.jsonl", AugmentSettings(**settings), tmp_path / "p0.jsonl")
    stats = augment_file(path, tmp_path / "sft.jsonl", AugmentSettings(**settings, **extra), tmp_path / "p.jsonl")
    before, pairs, sft = read(tmp_path / "p0.jsonl"), read(tmp_path / "p.jsonl"), read(tmp_path / "sft.jsonl")
    assert (tmp_path / "sft.jsonl").read_text() == (tmp_path / "sft0.jsonl").read_text()
    assert pairs[:len(before)] == before
    return base_stats, stats, before, pairs, sft


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def candidates(tmp_path):
    return write(tmp_path / "c.jsonl", [
        candidate("a", "Explain how bees make honey.", REPLY_A),
        candidate("b", "Describe public libraries.", REPLY_B, finish="length"),
        candidate("c", "Say hi.", "Hi there!"),  # 2 words: skipped
        candidate("d", "Describe penguins. Use no commas.", REPLY_A,
                  metadata={"constraints": [{"kind": "no_commas", "args": {}}]}),  # shaped by its constraint
    ])


def test_every_example_is_the_reply_repaired_to_obey_its_constraints(candidates):
    rows, stats = augment_rows(read_candidates(candidates), AugmentSettings(per_reply=4, plain_share=1.0, seed=3,
                                                                            skip_truncated=False))
    assert {k: v for k, v in stats.items() if k != "per_kind"} == {
        "replies": 4, "replies_used": 2, "skipped_constrained": 1, "skipped_short": 1, "skipped_long": 0,
        "skipped_truncated": 0, "skipped_styled": 0, "plain_examples": 2,
        "constrained_examples": 8, "replies_short_of_per_reply": 0, "examples": 10}
    assert sum(stats["per_kind"].values()) == sum(len(r["constraints"]) for r in rows)
    originals = {"a": (REPLY_A, "Explain how bees make honey.", False),
                 "b": (REPLY_B, "Describe public libraries.", True)}
    for row in rows:
        reply, task, truncated = originals[row["source"]["prompt_id"]]
        user, assistant = row["messages"][-2]["content"], row["messages"][-1]["content"]
        assert row["messages"][-1]["role"] == "assistant" and user.startswith(task)
        if not row["constraints"]:
            assert (user, assistant) == (task, tidy(reply, truncated=truncated))
            continue
        assert all(r.passed for r in check_constraints(assistant, row["constraints"]))
        assert assistant == repair(tidy(reply, truncated=truncated), row["constraints"])
        for constraint, phrasing in zip(row["constraints"], row["phrasings"]):
            kind, i = phrasing.split("/")
            assert kind == constraint["kind"] and CONSTRAINTS[kind][1][int(i)](constraint["args"]) in user
    assert not any("Visit" in r["messages"][-1]["content"] for r in rows)  # the cut-off tail is gone
    # a reply's examples ask for different phrasings of constraints
    for pid in "ab":
        asked = [tuple(r["phrasings"]) for r in rows if r["source"]["prompt_id"] == pid and r["constraints"]]
        assert len(asked) == len(set(asked)) == 4


def test_max_words_skips_the_longer_replies(candidates):
    """REPLY_A is 48 words once tidied, REPLY_B 38 (its cut tail goes): a cap of 47 keeps B alone, 48 keeps both."""
    settings = dict(per_reply=1, plain_share=1.0, skip_truncated=False)
    rows, stats = augment_rows(read_candidates(candidates), AugmentSettings(**settings, max_words=47))
    assert (stats["skipped_long"], stats["replies_used"]) == (1, 1)
    assert {r["source"]["prompt_id"] for r in rows} == {"b"}
    rows, stats = augment_rows(read_candidates(candidates), AugmentSettings(**settings, max_words=48))
    assert (stats["skipped_long"], stats["replies_used"]) == (0, 2)
    # the same reply gets the same examples whether or not another reply was skipped
    capped, _ = augment_rows(read_candidates(candidates), AugmentSettings(**settings, max_words=47))
    assert capped == [r for r in rows if r["source"]["prompt_id"] == "b"]


def test_deterministic_per_row_and_hold_out_kinds_are_never_used(candidates):
    rows = read_candidates(candidates)
    held = ("lowercase", "title", "json_answer")
    settings = AugmentSettings(per_reply=5, plain_share=0.0, seed=1, hold_out_kinds=held, skip_truncated=False)
    first, _ = augment_rows(rows, settings)
    again, _ = augment_rows(list(reversed(rows)), settings)
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, first)) == sorted(map(key, again))
    assert not {c["kind"] for r in first for c in r["constraints"]} & set(held)
    other, _ = augment_rows(rows, AugmentSettings(per_reply=5, plain_share=0.0, seed=2, hold_out_kinds=held,
                                                  skip_truncated=False))
    assert sorted(map(key, other)) != sorted(map(key, first))


def test_kind_weights_set_the_dose_per_kind(tmp_path):
    rows = read_candidates(write(tmp_path / "c.jsonl", [candidate(f"p{i}", "Explain how bees make honey.", REPLY_A)
                                                        for i in range(120)]))
    base = dict(per_reply=2, plain_share=0.0, two_constraint_share=0.5, seed=4)
    plain, plain_stats = augment_rows(rows, AugmentSettings(**base))
    # equal weights are the unweighted draw, example for example
    same, _ = augment_rows(rows, AugmentSettings(**base, kind_weights={k: 2.5 for k in CONSTRAINTS}))
    assert same == plain
    weighted, stats = augment_rows(rows, AugmentSettings(**base, kind_weights={"lowercase": 12, "title": 0}))
    per_kind = stats["per_kind"]
    assert "title" not in per_kind and not any(c["kind"] == "title" for r in weighted for c in r["constraints"])
    others = [v for k, v in per_kind.items() if k != "lowercase"]
    # ~12x the dose of any other kind (draws that repair() cannot satisfy are redrawn, so not exactly 12)
    assert per_kind["lowercase"] > 6 * max(others) and per_kind["lowercase"] > 6 * plain_stats["per_kind"]["lowercase"]
    assert stats["constrained_examples"] == plain_stats["constrained_examples"] == 240
    for row in weighted:
        kinds = [c["kind"] for c in row["constraints"]]
        assert len(kinds) == len(set(kinds))  # two constraints of one prompt are never the same kind


def test_more_phrasings_draws_the_extra_wordings_and_minimum_word_counts(tmp_path):
    rows = read_candidates(write(tmp_path / "c.jsonl", [candidate(f"p{i}", "Explain how bees make honey.", REPLY_A)
                                                        for i in range(150)]))
    base = dict(per_reply=2, plain_share=0.0, seed=5, kind_weights={"word_count": 6})
    plain, _ = augment_rows(rows, AugmentSettings(**base))
    more, _ = augment_rows(rows, AugmentSettings(**base, more_phrasings=True))
    wordings = {k: [t for _s, ts in phrasing_groups(k, more=True) for t in ts] for k in CONSTRAINTS}
    used = set()
    for row in more:
        user = row["messages"][-2]["content"]
        assert all(r.passed for r in check_constraints(row["messages"][-1]["content"], row["constraints"]))
        for constraint, phrasing in zip(row["constraints"], row["phrasings"]):
            kind, i = phrasing.split("/")
            assert wordings[kind][int(i)](constraint["args"]) in user  # the id names the wording asked
            used.add((kind, int(i) >= len(CONSTRAINTS[kind][1])))
    # off: only the shipped files' wordings; on: the extra ones too, for the kinds that have them
    assert all(int(p.split("/")[1]) < len(CONSTRAINTS[p.split("/")[0]][1]) for r in plain for p in r["phrasings"])
    assert {k for k, extra in used if extra} >= {"lowercase", "exclamation_sentence", "repeat_prompt", "word_count"}
    # word_count's minimum side: REPLY_A has 48 words, so "at least 15..40" rows keep it whole; no such row before
    minimums = [r for r in more if [c["kind"] for c in r["constraints"]] == ["word_count"]
                and "min" in r["constraints"][0]["args"]]
    assert minimums and all(r["messages"][-1]["content"] == tidy(REPLY_A) for r in minimums)
    assert not any("min" in c["args"] for r in plain for c in r["constraints"])


def test_more_arguments_draws_keywords_and_phrases_from_the_wider_pools(tmp_path):
    """more_arguments: the keywords, opening / closing phrases and paragraph openers asked for come from the shipped
    pools and MORE_ARGUMENTS's; every row asks for its argument in its prompt and its reply obeys it. Off: the
    shipped pools only."""
    from posttrain.verifiers import phrasings as ph

    rows = read_candidates(write(tmp_path / "c.jsonl", [candidate(f"p{i}", "Explain how bees make honey.", REPLY_A)
                                                        for i in range(120)]))
    kinds = ("include_keywords", "keyword_frequency", "starts_with_phrase", "ends_with_phrase",
             "paragraph_first_word")
    base = dict(per_reply=2, plain_share=0.0, seed=4, two_constraint_share=0.0,
                kind_weights={k: (1 if k in kinds else 0) for k in CONSTRAINTS})
    shipped = {"include_keywords": ph.KEYWORDS, "keyword_frequency": ph.KEYWORDS, "starts_with_phrase": ph.OPENERS,
               "ends_with_phrase": ph.CLOSERS, "paragraph_first_word": ph.FIRST_WORDS}
    wider = {"include_keywords": ph.MORE_KEYWORDS, "keyword_frequency": ph.MORE_KEYWORDS,
             "starts_with_phrase": ph.MORE_OPENERS, "ends_with_phrase": ph.MORE_CLOSERS,
             "paragraph_first_word": ph.MORE_FIRST_WORDS}

    def values(constraint):
        args = constraint["args"]
        return args.get("keywords") or [args.get("keyword") or args.get("phrase") or args["word"]]

    for more in (False, True):
        out, _ = augment_rows(rows, AugmentSettings(**base, more_arguments=more))
        drawn = {k: set() for k in kinds}
        for row in out:
            (constraint,) = row["constraints"]
            assert all(r.passed for r in check_constraints(row["messages"][-1]["content"], row["constraints"]))
            for value in values(constraint):
                assert value in row["messages"][-2]["content"]
                drawn[constraint["kind"]].add(value)
        for kind in kinds:
            assert drawn[kind] <= set(shipped[kind]) | (set(wider[kind]) if more else set())
            assert bool(drawn[kind] & set(wider[kind])) == more, kind


def test_a_wording_that_names_its_marker_gets_it_and_no_other_row_changes(tmp_path, monkeypatch):
    """bullet_list/1 asks for '- ' lines and paragraph_count/3 for the *** divider: their rows carry the marker as
    an argument, so the demonstration writes what the sentence asks (it wrote '* ' and blank lines before); no
    random draw is involved, so every other row is what it was without the marking."""
    import posttrain.data.augment as augment_module

    rows = read_candidates(write(tmp_path / "c.jsonl", [candidate(f"p{i}", "Explain how bees make honey.", REPLY_A)
                                                        for i in range(80)]))
    settings = AugmentSettings(per_reply=2, plain_share=0.0, seed=3, more_phrasings=True,
                               kind_weights={"bullet_list": 12, "paragraph_count": 12})
    marked, _ = augment_rows(rows, settings)
    monkeypatch.setattr(augment_module, "fixed_args", lambda template: {})
    unmarked, _ = augment_rows(rows, settings)
    assert [r["phrasings"] for r in marked] == [r["phrasings"] for r in unmarked]
    named = {"bullet_list/1": ("markers", "-"), "bullet_list/4": ("markers", "*"),
             "paragraph_count/3": ("divider", "***")}
    seen = set()
    for new, old in zip(marked, unmarked):
        reply = new["messages"][-1]["content"]
        hits = [(p, c) for p, c in zip(new["phrasings"], new["constraints"]) if p in named]
        if not hits:
            assert new == old
            continue
        for phrasing, constraint in hits:
            arg, value = named[phrasing]
            assert constraint["args"][arg] == value
            seen.add(phrasing)
        kinds = {p.split("/")[0] for p, _ in hits}
        if "bullet_list/1" in new["phrasings"]:
            assert reply.startswith("- ") and "\n* " not in reply and "\n- " in reply
        if "paragraph_count/3" in new["phrasings"]:
            assert "\n***\n" in reply and "***" not in old["messages"][-1]["content"]
        assert kinds and all(r.passed for r in check_constraints(reply, new["constraints"]))
    assert seen == set(named)


def test_drop_system_leaves_the_sampling_system_prompt_out(tmp_path):
    steer = {"role": "system", "content": "Keep every reply under 50 words."}
    row = {**candidate("a", "Explain how bees make honey.", REPLY_A),
           "prompt": [steer, {"role": "user", "content": "Explain how bees make honey."}]}
    path = write(tmp_path / "c.jsonl", [row])
    kept, _ = augment_rows(read_candidates(path), AugmentSettings(per_reply=2, plain_share=1.0))
    dropped, _ = augment_rows(read_candidates(path), AugmentSettings(per_reply=2, plain_share=1.0, drop_system=True))
    assert len(kept) == len(dropped) == 3
    assert all(r["messages"][0] == steer for r in kept)
    assert [r["messages"] for r in dropped] == [r["messages"][1:] for r in kept]


def test_replies_cut_at_the_token_limit_are_skipped_by_default(candidates):
    rows, stats = augment_rows(read_candidates(candidates), AugmentSettings(per_reply=2, plain_share=1.0))
    assert (stats["replies_used"], stats["skipped_truncated"], stats["examples"]) == (1, 1, 3)
    assert {r["source"]["prompt_id"] for r in rows} == {"a"}


def test_skip_styled_skips_quoted_and_all_capitals_replies(tmp_path):
    """A reply wrapped whole in double quotes or written in capitals is the unrequested formatting the drift gates
    count: with skip_styled it makes no example (and no pair); a quote inside a reply is not wrapping."""
    quoted, shouted = f'"{REPLY_A}"', REPLY_A.upper()
    inner = 'Sure, here it is: "Bees collect nectar from flowers and carry it back to the hive."'
    path = write(tmp_path / "c.jsonl", [candidate("q", "Explain how bees make honey.", quoted),
                                        candidate("s", "Explain how bees make honey.", shouted),
                                        candidate("i", "Explain how bees make honey.", inner),
                                        candidate("a", "Explain how bees make honey.", REPLY_A)])
    settings = dict(per_reply=1, plain_share=1.0, seed=0)
    rows, stats = augment_rows(read_candidates(path), AugmentSettings(**settings))
    assert (stats["skipped_styled"], stats["replies_used"]) == (0, 4)
    rows, stats = augment_rows(read_candidates(path), AugmentSettings(**settings, skip_styled=True))
    assert (stats["skipped_styled"], stats["replies_used"], stats["examples"]) == (2, 2, 4)
    assert {r["source"]["prompt_id"] for r in rows} == {"i", "a"}
    stats = augment_file(path, tmp_path / "sft.jsonl", AugmentSettings(**settings, skip_styled=True),
                         pairs_output=tmp_path / "pairs.jsonl")
    pairs = read(tmp_path / "pairs.jsonl")
    assert pairs and {p["source"]["prompt_id"] for p in pairs} <= {"i", "a"}


def test_contrast_pairs_reject_an_unasked_format_edit(tmp_path):
    lower = "bees make honey from nectar and seal it in wax cells for the winter."
    path = write(tmp_path / "c.jsonl", [candidate("a", "Explain how bees make honey.", REPLY_A),
                                        candidate("l", "Explain how bees make honey.", lower),  # nothing to lower
                                        candidate("b", "Describe public libraries.", REPLY_B.rsplit(" ", 1)[0])])
    plain = AugmentSettings(per_reply=2, plain_share=0.0, seed=1)
    contrast = AugmentSettings(per_reply=2, plain_share=0.0, seed=1, contrast_share=1.0, contrast_kinds=("lowercase",))
    base_stats = augment_file(path, tmp_path / "sft0.jsonl", plain, tmp_path / "pairs0.jsonl")
    stats = augment_file(path, tmp_path / "sft.jsonl", contrast, tmp_path / "pairs.jsonl")
    pairs = read(tmp_path / "pairs.jsonl")
    repair_only = read(tmp_path / "pairs0.jsonl")
    sft = read(tmp_path / "sft.jsonl")
    # the SFT rows and repair pairs are those of a run without contrast pairs; the contrast pairs follow them
    assert (tmp_path / "sft.jsonl").read_text() == (tmp_path / "sft0.jsonl").read_text()
    assert pairs[:len(repair_only)] == repair_only and base_stats["contrast_pairs"] == 0
    contrasts = pairs[len(repair_only):]
    assert stats["contrast_pairs"] == len(contrasts) and stats["pairs"] == len(pairs)
    # with share 1 every prompt gives one, unless it asks for lowercase itself or its reply is lowercase already
    # (reply l under the bare task): each reply's bare task, then each of its constrained rows
    wanted = []
    for pid, task, reply in (("a", "Explain how bees make honey.", REPLY_A),
                             ("l", "Explain how bees make honey.", lower),
                             ("b", "Describe public libraries.", REPLY_B.rsplit(" ", 1)[0])):
        rows = [([{"role": "user", "content": task}], tidy(reply), set())]
        rows += [(r["messages"][:-1], r["messages"][-1]["content"], {c["kind"] for c in r["constraints"]})
                 for r in sft if r["source"]["prompt_id"] == pid]
        wanted += [(prompt, chosen, pid) for prompt, chosen, asked in rows
                   if "lowercase" not in asked and chosen != chosen.lower()]
    assert len(contrasts) == len(wanted) >= 3
    for pair, (prompt, chosen, pid) in zip(contrasts, wanted):
        assert pair["prompt"] == prompt and pair["chosen"] == chosen and pair["rejected"] == chosen.lower()
        assert pair["contrast"] == "lowercase" and pair["constraints"] == [] and pair["source"]["prompt_id"] == pid
    assert len(load_examples(str(tmp_path / "pairs.jsonl"), "preference", None)) == len(pairs)
    # a share of 0.5 draws about half the prompts, the same ones each run
    def made(share, seed):
        return augment_file(path, tmp_path / "h.jsonl", AugmentSettings(per_reply=1, contrast_share=share, seed=seed),
                            tmp_path / "hp.jsonl")["contrast_pairs"]
    counts, every = [made(0.5, s) for s in range(12)], sum(made(1.0, s) for s in range(12))
    assert 0.3 * every <= sum(counts) <= 0.7 * every and counts == [made(0.5, s) for s in range(12)]
    with pytest.raises(ValueError, match="contrast_kinds: unknown constraint kind"):
        AugmentSettings(contrast_share=0.5, contrast_kinds=("shouting",))
    with pytest.raises(ValueError, match=r"contrast_share must be in \[0, 1\]"):
        AugmentSettings(contrast_share=1.5)


def test_output_is_sft_data(candidates, tmp_path):
    out = tmp_path / "sft.jsonl"
    stats = augment_file(candidates, out, AugmentSettings(per_reply=2, plain_share=0.5, skip_truncated=False))
    examples = load_examples(str(out), "sft", None)
    assert len(examples) == stats["examples"] > 0
    assert all(ex.metadata["source"]["prompt_id"] in ("a", "b") for ex in examples)


def test_repair_pairs_prefer_the_edit_to_the_reply_as_sampled(candidates, tmp_path):
    out, pairs_out = tmp_path / "sft.jsonl", tmp_path / "pairs.jsonl"
    settings = AugmentSettings(per_reply=3, plain_share=1.0)
    stats = augment_file(candidates, out, settings, pairs_out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    pairs = [json.loads(line) for line in pairs_out.read_text().splitlines()]
    constrained = [r for r in rows if r["constraints"]]
    assert stats["pairs"] == len(pairs) == len(constrained) == 3  # each edit here changes the reply
    original = tidy(REPLY_A)
    for row, pair in zip(constrained, pairs):
        assert pair["prompt"] == row["messages"][:-1] and pair["chosen"] == row["messages"][-1]["content"]
        assert pair["rejected"] == original != pair["chosen"]
        assert pair["constraints"] == row["constraints"] and pair["source"] == row["source"]
        assert all(r.passed for r in check_constraints(pair["chosen"], pair["constraints"]))
    assert len(load_examples(str(pairs_out), "preference", None)) == 3  # what `posttrain dpo` reads
    assert [json.loads(line) for line in out.read_text().splitlines()] == augment_rows(
        read_candidates(candidates), settings)[0]  # the SFT rows do not depend on asking for pairs
    # a plain row, and an edit that changed nothing, make no pair
    sft = [{"messages": [{"role": "user", "content": "t"}, {"role": "assistant", "content": "same"}],
            "constraints": [{"kind": "no_commas", "args": {}}], "phrasings": [], "source": {}}] * 2
    assert repair_pairs(sft, [None, "same"]) == []


def test_bad_rows_are_named_and_nothing_is_written(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(candidate("a", "Explain bees.", REPLY_A)) + "\n{not json\n"
                   + json.dumps({**candidate("b", "x", "y"), "prompt": "Explain bees."}) + "\n"
                   + json.dumps({**candidate("c", "Hi", "y"), "text": 3}) + "\n"
                   + json.dumps(candidate("a", "Explain bees.", REPLY_A)) + "\n")
    out = tmp_path / "sft.jsonl"
    with pytest.raises(DataErrors) as info:
        augment_file(bad, out, AugmentSettings())
    assert [str(e) for e in info.value.errors] == [
        f"{bad}:2: not valid JSON (Expecting property name enclosed in double quotes)",
        f"{bad}:3: field 'prompt': must be a non-empty list of {{role, content}} messages",
        f"{bad}:4: field 'text': missing or not a str",
        f"{bad}:5: field 'candidate_index': repeats candidate 0 of prompt 'a'"]
    assert not out.exists()
    # the judge stage reads candidates with the same reader (data/candidate_rows.py), so the same errors
    from posttrain.judges.run import read_candidates as judge_reader

    with pytest.raises(DataErrors) as same:
        judge_reader(bad)
    assert [str(e) for e in same.value.errors] == [str(e) for e in info.value.errors]
    ends_with_reply = write(tmp_path / "reply.jsonl", [{**candidate("a", "Explain bees.", REPLY_A), "prompt": [
        {"role": "user", "content": "Explain bees."}, {"role": "assistant", "content": "Sure."}]}])
    with pytest.raises(DataError, match=r"reply.jsonl:1: field 'prompt': must end with the user's task"):
        augment_file(ends_with_reply, out, AugmentSettings())
    assert not out.exists()
    short = write(tmp_path / "short.jsonl", [candidate("a", "Say hi.", "Hi!")])
    with pytest.raises(DataErrors, match="no example made"):
        augment_file(short, out, AugmentSettings())
    assert not out.exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"hold_out_kinds": ("lowercase", "nope")}, "unknown constraint kind(s) nope"),
    ({"plain_share": 1.5}, "plain_share must be in [0, 1]"),
    ({"per_reply": -1}, "per_reply and min_words must be >= 0"),
    ({"max_words": 5}, "max_words must be an integer >= min_words (8), got 5"),
    ({"max_words": True}, "max_words must be an integer >= min_words (8), got True"),
    ({"hold_out_kinds": tuple(CONSTRAINTS)}, "every constraint kind is held out"),
    ({"kind_weights": {"lowercase": 2, "loud": 1}}, "kind_weights: unknown constraint kind(s) loud"),
    ({"kind_weights": {"lowercase": -1}}, "kind_weights: lowercase: expected a number >= 0, got -1"),
    ({"kind_weights": {k: 0 for k in CONSTRAINTS}}, "every constraint kind is held out or weighted 0")])
def test_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        AugmentSettings(**kwargs)


def test_looped_cuts_after_one_sentence_and_repeats_it():
    # "Short." has one word: too short for the degeneration metric to compare, so never the looping sentence
    assert looped("Short. The sky is blue today.", random.Random(0), copies=(2, 2)) == (
        "Short. The sky is blue today. The sky is blue today. The sky is blue today.")
    # the copies follow the whitespace that followed the sentence (here a paragraph break); the rest is cut
    text = "The sky is blue today.\n\nBirds fly over the hills. We walked home."
    seen = {looped(text, random.Random(seed), copies=(1, 1)) for seed in range(20)}
    assert seen == {"The sky is blue today.\n\nThe sky is blue today.",
                    "The sky is blue today.\n\nBirds fly over the hills. Birds fly over the hills.",
                    "The sky is blue today.\n\nBirds fly over the hills. We walked home. We walked home."}
    counts = {looped("One two three.", random.Random(seed)).count("One two three.") for seed in range(40)}
    assert counts == {4, 5, 6, 7}  # the sentence, then 3 to 6 more copies
    assert looped("Hi. Ok then.", random.Random(0)) is None


def test_echoed_says_the_instruction_before_a_sentence_but_never_after_the_last():
    text = "Bees make honey. It is sweet.\nThey store it."
    seen = {echoed(text, " Use no commas. ", random.Random(seed)) for seed in range(30)}
    assert seen == {"Use no commas. Bees make honey. It is sweet.\nThey store it.",
                    "Bees make honey. Use no commas. It is sweet.\nThey store it.",
                    "Bees make honey. It is sweet.\nUse no commas. They store it."}
    assert echoed("One sentence only.", "Be brief.", random.Random(0)) == "Be brief. One sentence only."


def test_echo_pairs_reject_the_reply_saying_an_instruction_of_its_prompt(tmp_path):
    from posttrain.verifiers.style import echoes_instruction

    path = write(tmp_path / "c.jsonl", [candidate("a", "Explain how bees make honey.", REPLY_A),
                                        candidate("b", "Describe public libraries.", REPLY_B.rsplit(" ", 1)[0])])
    settings = dict(per_reply=2, plain_share=1.0, seed=3, loop_share=0.5)
    # the SFT rows, repair pairs and loop pairs do not change; one echo pair per constrained prompt follows them
    # (the bare tasks ask for nothing, so they give none)
    base_stats, stats, before, pairs, sft = with_and_without(path, tmp_path, settings, echo_share=1.0)
    assert base_stats["echo_pairs"] == 0
    echoes = pairs[len(before):]
    constrained = [r for r in sft if r["constraints"]]
    assert len(echoes) == len(constrained) == 4 and stats["echo_pairs"] == 4 and stats["pairs"] == len(pairs)
    for pair, row in zip(echoes, constrained):
        prompt, chosen = row["messages"][:-1], row["messages"][-1]["content"]
        assert pair["prompt"] == prompt and pair["chosen"] == chosen and pair["contrast"] == "echo"
        assert pair["constraints"] == []
        task = next(c for c in read(path) if c["prompt_id"] == row["source"]["prompt_id"])["prompt"][-1]["content"]
        said = pair["rejected"]
        # the rejected reply is the chosen one with one of the prompt's own instruction sentences put in whole
        assert len(said) > len(chosen) and not echoes_instruction(prompt[-1]["content"], chosen)
        assert echoes_instruction(prompt[-1]["content"], said)
        sentence = next(s for s in SENTENCE_BREAK.split(prompt[-1]["content"][len(task):].strip()) if s in said)
        assert said.replace(sentence + " ", "", 1) == chosen
    with pytest.raises(ValueError, match=r"echo_share must be in \[0, 1\]"):
        AugmentSettings(echo_share=2)


def test_loop_pairs_reject_the_reply_looping_on_one_sentence(tmp_path):
    path = write(tmp_path / "c.jsonl", [candidate("a", "Explain how bees make honey.", REPLY_A),
                                        candidate("b", "Describe public libraries.", REPLY_B.rsplit(" ", 1)[0])])
    settings = dict(per_reply=2, plain_share=0.0, seed=3, contrast_share=0.5, contrast_kinds=("lowercase",))
    # the SFT rows, repair pairs and contrast pairs do not change; one loop pair per prompt follows them
    base_stats, stats, before, pairs, sft = with_and_without(path, tmp_path, settings, loop_share=1.0)
    assert base_stats["loop_pairs"] == 0
    loops = pairs[len(before):]
    wanted = []
    for pid, task, reply in (("a", "Explain how bees make honey.", REPLY_A),
                             ("b", "Describe public libraries.", REPLY_B.rsplit(" ", 1)[0])):
        wanted.append(([{"role": "user", "content": task}], tidy(reply)))
        wanted += [(r["messages"][:-1], r["messages"][-1]["content"]) for r in sft if r["source"]["prompt_id"] == pid]
    assert len(loops) == len(wanted) == 6 and stats["loop_pairs"] == 6
    assert stats["contrast_pairs"] == base_stats["contrast_pairs"] + 6 and stats["pairs"] == len(pairs)
    for pair, (prompt, chosen) in zip(loops, wanted):
        assert pair["prompt"] == prompt and pair["chosen"] == chosen and pair["contrast"] == "loop"
        assert pair["constraints"] == [] and not has_repeated_sentence(chosen)
        rejected = pair["rejected"]
        assert has_repeated_sentence(rejected) and rejected != chosen
        # the rejected reply is the chosen one up to the end of a sentence, then copies of that sentence
        cut = max(i for i in range(1, len(rejected) + 1) if chosen.startswith(rejected[:i]))
        head, tail = rejected[:cut], rejected[cut:]
        last = head.rstrip().rsplit(". ", 1)[-1].rsplit("\n", 1)[-1]
        assert head.rstrip().endswith(".") and tail.replace(last, "").strip() == ""
        assert 3 <= tail.count(last) <= 6
    assert len(load_examples(str(tmp_path / "p.jsonl"), "preference", None)) == len(pairs)
    with pytest.raises(ValueError, match=r"loop_share must be in \[0, 1\]"):
        AugmentSettings(loop_share=-0.1)


def test_markup_looped_turns_the_first_list_or_division_into_rule_lines():
    one = random.Random(0)
    assert markup_looped("Intro line.\n* Bees fly.\n* They sting.", one, copies=(3, 3)) == (
        "Intro line.\n* * *\n* * *\n* * *")
    assert markup_looped("- Bees fly.\n- They sting.", one, copies=(2, 2)) == "- - -\n- - -"
    assert markup_looped("Bees fly.\n\n***\n\nThey sting.", one, copies=(2, 2)) == "Bees fly.\n\n***\n***"
    assert markup_looped("One.\n******\nTwo.", one, copies=(2, 2)) == "One.\n******\n******"
    # emphasis (no space after the star), a hyphenated word and a plain reply have no list or division
    for text in ("*Bees* fly.\nThey sting.", "A well-known fact - bees fly.", "Bees fly. They sting."):
        assert markup_looped(text, one) is None
    counts = {markup_looped("* a\n* b", random.Random(seed)).count("* * *") for seed in range(60)}
    assert counts == set(range(8, 17))
    assert is_repetitive(markup_looped("* Bees fly.\n* They sting.", random.Random(1)))


def test_markup_loop_pairs_follow_the_others_and_only_for_replies_with_markup(tmp_path):
    path = write(tmp_path / "c.jsonl", [candidate(f"p{i}", "Explain how bees make honey.", REPLY_A)
                                        for i in range(30)])
    settings = dict(per_reply=2, plain_share=0.5, seed=3, loop_share=0.5, echo_share=0.5,
                    kind_weights={"bullet_list": 6, "paragraph_count": 3})
    base_stats, stats, before, pairs, sft = with_and_without(path, tmp_path, settings, markup_loop_share=1.0)
    assert base_stats["markup_loop_pairs"] == 0
    added = pairs[len(before):]
    # one per constrained row whose reply has a bullet or divider line (share 1): bullets, a *** divider, the
    # ****** between two responses; bare replies have none
    marked = [r for r in sft if any(c["kind"] in ("bullet_list", "two_responses") or c["args"].get("divider")
                                    for c in r["constraints"])]
    assert len(added) == stats["markup_loop_pairs"] == len(marked) > 5
    for pair, row in zip(added, marked):
        assert pair["prompt"] == row["messages"][:-1] and pair["chosen"] == row["messages"][-1]["content"]
        assert pair["contrast"] == "markup_loop" and pair["constraints"] == []
        head, rule = pair["rejected"].rstrip("*- \n"), pair["rejected"].split("\n")[-1]
        assert rule in ("* * *", "- - -", "***", "******") and pair["chosen"].startswith(head)
        assert 8 <= pair["rejected"].count(rule + "\n") + 1 <= 16
    with pytest.raises(ValueError, match=r"markup_loop_share must be in \[0, 1\]"):
        AugmentSettings(markup_loop_share=1.5)


def test_cli(candidates, tmp_path):
    from posttrain.cli import app

    out = tmp_path / "sft.jsonl"
    result = CliRunner().invoke(app, ["data", "augment", str(candidates), "-o", str(out), "--per-reply", "2",
                                      "--plain-share", "0"])
    assert result.exit_code == 0, result.output
    assert "wrote 2 examples" in result.output and ("from 1 of 4 replies (skipped: 1 short, 0 long, 1 cut at the "
                                                    "token limit, 0 quoted or in capitals, 1 with constraints)"
                                                    in result.output)
    assert len(out.read_text().splitlines()) == 2
    result = CliRunner().invoke(app, ["data", "augment", str(candidates), "-o", str(out), "--per-reply", "2",
                                      "--plain-share", "0", "--no-skip-truncated"])
    assert result.exit_code == 0 and "wrote 4 examples" in result.output
    result = CliRunner().invoke(app, ["data", "augment", str(candidates), "-o", str(out), "--per-reply", "1",
                                      "--plain-share", "0", "--no-skip-truncated", "--max-words", "47"])
    assert result.exit_code == 0 and "wrote 1 examples" in result.output and "1 short, 1 long, 0 cut at the token limit" in result.output
    styled = write(tmp_path / "styled.jsonl", [candidate("q", "Explain how bees make honey.", f'"{REPLY_A}"'),
                                               candidate("a", "Explain how bees make honey.", REPLY_A)])
    result = CliRunner().invoke(app, ["data", "augment", str(styled), "-o", str(out), "--per-reply", "1",
                                      "--plain-share", "0", "--skip-styled"])
    assert result.exit_code == 0, result.output
    assert "from 1 of 2 replies" in result.output and "1 quoted or in capitals" in result.output
    result = CliRunner().invoke(app, ["data", "augment", str(candidates), "-o", str(out), "--hold-out-kinds", "x"])
    assert result.exit_code == 2 and "error: hold_out_kinds: unknown constraint kind(s) x" in result.output

    result = CliRunner().invoke(app, ["data", "augment", str(candidates), "-o", str(out), "--per-reply", "3",
                                      "--kind-weights", "lowercase=4,title=0"])
    assert result.exit_code == 0, result.output
    assert not any(c["kind"] == "title" for line in out.read_text().splitlines()
                   for c in json.loads(line)["constraints"])
    assert "title" not in result.output.split("per kind:")[1]
    result = CliRunner().invoke(app, ["data", "augment", str(candidates), "-o", str(out), "--per-reply", "2",
                                      "--plain-share", "0", "--pairs", str(tmp_path / "pairs.jsonl")])
    assert result.exit_code == 0 and "wrote 2 repair pairs to" in result.output
    assert len((tmp_path / "pairs.jsonl").read_text().splitlines()) == 2
    result = CliRunner().invoke(app, ["data", "augment", str(candidates), "-o", str(out), "--per-reply", "2",
                                      "--plain-share", "0", "--pairs", str(tmp_path / "pairs.jsonl"),
                                      "--contrast-share", "1", "--contrast-kinds", "all_caps"])
    assert result.exit_code == 0 and "wrote 5 repair pairs to" in result.output, result.output
    # the bare task and the two constrained prompts
    assert "(3 of them contrast, loop, echo or markup-loop pairs)" in result.output
    contrasts = read(tmp_path / "pairs.jsonl")[2:]
    assert [p["rejected"] for p in contrasts] == [p["chosen"].upper() for p in contrasts]
    assert contrasts[0]["chosen"] == tidy(REPLY_A)
    result = CliRunner().invoke(app, ["data", "augment", str(candidates), "-o", str(tmp_path / "y.jsonl"),
                                      "--contrast-share", "0.5"])
    assert result.exit_code == 2 and "--contrast-share needs --pairs" in result.output
    assert not (tmp_path / "y.jsonl").exists()
    result = CliRunner().invoke(app, ["data", "augment", str(candidates), "-o", str(out), "--per-reply", "2",
                                      "--plain-share", "0", "--pairs", str(tmp_path / "pairs.jsonl"),
                                      "--loop-share", "1"])
    assert result.exit_code == 0 and "wrote 5 repair pairs to" in result.output, result.output
    assert "(3 of them contrast, loop, echo or markup-loop pairs)" in result.output
    result = CliRunner().invoke(app, ["data", "augment", str(candidates), "-o", str(tmp_path / "y.jsonl"),
                                      "--loop-share", "0.5"])
    assert result.exit_code == 2 and "--loop-share needs --pairs" in result.output
    result = CliRunner().invoke(app, ["data", "augment", str(candidates), "-o", str(tmp_path / "y.jsonl"),
                                      "--echo-share", "1"])
    assert result.exit_code == 2 and "--echo-share needs --pairs" in result.output
    result = CliRunner().invoke(app, ["data", "augment", str(candidates), "-o", str(out), "--per-reply", "2",
                                      "--plain-share", "0", "--pairs", str(tmp_path / "pairs.jsonl"),
                                      "--echo-share", "1"])
    assert result.exit_code == 0, result.output
    assert "(2 of them contrast, loop, echo or markup-loop pairs)" in result.output
    assert [p["contrast"] for p in read(tmp_path / "pairs.jsonl")[-2:]] == ["echo", "echo"]
    from posttrain.verifiers.phrasings import MORE_CLOSERS

    for more, wider in (([], False), (["--more-arguments"], True)):
        result = CliRunner().invoke(app, ["data", "augment", str(candidates), "-o", str(out), "--per-reply", "3",
                                          "--two-constraint-share", "0", "--kind-weights", "ends_with_phrase=1000",
                                          *more])
        assert result.exit_code == 0, result.output
        phrases = [c["args"]["phrase"] for r in read(out) for c in r["constraints"]]
        assert len(phrases) == 3 and any(p in MORE_CLOSERS for p in phrases) == wider, phrases
    result = CliRunner().invoke(app, ["data", "augment", str(candidates), "-o", str(tmp_path / "y.jsonl"),
                                      "--markup-loop-share", "1"])
    assert result.exit_code == 2 and "--markup-loop-share needs --pairs" in result.output
    result = CliRunner().invoke(app, ["data", "augment", str(candidates), "-o", str(tmp_path / "x.jsonl"),
                                      "--kind-weights", "lowercase:3"])
    assert result.exit_code == 2 and "--kind-weights: expected kind=number, got 'lowercase:3'" in result.output
    assert not (tmp_path / "x.jsonl").exists()


def test_pipeline_stage_feeds_sft(candidates, tmp_path, one_torch_thread):
    from posttrain.pipeline.load import parse_pipeline
    from posttrain.pipeline.runner import run_pipeline

    tree = {"run_dir": str(tmp_path / "run"), "stages": {
        "augment": {"command": "augment", "config": {"candidates": str(candidates), "per_reply": 2,
                                                     "plain_share": 0.5, "hold_out_kinds": ["lowercase"],
                                                     "kind_weights": {"title": 3, "all_caps": 0},
                                                     "more_phrasings": True, "more_arguments": True,
                                                     "drop_system": True, "pairs": True, "contrast_share": 1.0,
                                                     "contrast_kinds": ["all_caps"]}},
        "sft": {"command": "sft", "config": {
            "model": {"name": "tiny-random"}, "data": {"train": "${augment.output}/sft.jsonl", "max_length": 256},
            "optim": {"batch_size": 2, "micro_batch_size": 2, "max_steps": 1}, "train": {"progress": False},
            "decontaminate": False}}}}
    manifest = run_pipeline(parse_pipeline(tree))
    stage = manifest["stages"]["augment"]
    summary = json.loads((Path(stage["folder"]) / "summary.json").read_text())
    assert stage["metrics"]["examples"] == summary["examples"] == 2 + summary["plain_examples"]
    assert summary["skipped_truncated"] == 1
    assert summary["per_kind"].get("lowercase") is None and summary["per_kind"].get("all_caps") is None
    assert summary["pairs"] == len((Path(stage["folder"]) / "pairs.jsonl").read_text().splitlines()) > 0
    assert summary["contrast_pairs"] == 3  # reply a's bare task and its two constrained rows (b: cut, skipped)
    assert manifest["stages"]["sft"]["status"] == "done"


@pytest.mark.parametrize("config, message", [
    ({}, "config: key 'candidates' is required"),
    ({"candidates": "c.jsonl", "per_reply": "two"}, "config: key 'per_reply'"),
    ({"candidates": "c.jsonl", "plain_share": 2.0}, "config: plain_share must be in [0, 1]"),
    ({"candidates": "c.jsonl", "kind_weights": ["lowercase"]}, "config: key 'kind_weights'"),
    ({"candidates": "c.jsonl", "kind_weights": {"lowercase": "x"}}, "config: kind_weights: lowercase: expected a num"),
    ({"candidates": "c.jsonl", "drop_system": "yes"}, "config: key 'drop_system'"),
    ({"candidates": "c.jsonl", "pairs": "yes"}, "config: key 'pairs'"),
    ({"candidates": "c.jsonl", "contrast_share": 0.3}, "config: contrast_share needs pairs: true"),
    ({"candidates": "c.jsonl", "loop_share": 0.3}, "config: loop_share needs pairs: true"),
    ({"candidates": "c.jsonl", "pairs": True, "loop_share": "all"}, "config: key 'loop_share'"),
    ({"candidates": "c.jsonl", "echo_share": 0.3}, "config: echo_share needs pairs: true"),
    ({"candidates": "c.jsonl", "pairs": True, "echo_share": 1.5}, "config: echo_share must be in [0, 1]"),
    ({"candidates": "c.jsonl", "markup_loop_share": 0.3}, "config: markup_loop_share needs pairs: true"),
    ({"candidates": "c.jsonl", "pairs": True, "markup_loop_share": 2}, "config: markup_loop_share must be in [0, 1]"),
    ({"candidates": "c.jsonl", "pairs": True, "contrast_share": 0.3, "contrast_kinds": ["x"]},
     "config: contrast_kinds: unknown constraint kind"),
    ({"candidates": "c.jsonl", "extra": 1}, "config: unknown key 'extra'")])
def test_pipeline_stage_config_is_checked_before_anything_runs(tmp_path, config, message):
    from posttrain.pipeline.registry import STAGES
    from posttrain.pipeline.spec import PipelineError

    write(tmp_path / "c.jsonl", [candidate("a", "Explain bees.", REPLY_A)])
    config = {k: (str(tmp_path / v) if k == "candidates" else v) for k, v in config.items()}
    with pytest.raises(PipelineError, match=message.replace("[", r"\[")):
        STAGES["augment"].check(config, lambda path: False)
