"""Constraint repair: exact edits on hand-made replies, and every repairable kind verified by its own checker."""

import json

import pytest

from posttrain.verifiers.constraints import CONSTRAINTS, check_constraint
from posttrain.verifiers.repair import REPAIRS, repair, tidy

REPLY = "Bees collect nectar from flowers. They store it in the hive, and fan it with their wings. The water " \
        "evaporates and honey is left."


def one(kind, text=REPLY, **args):
    return repair(text, [{"kind": kind, "args": args}])


@pytest.mark.parametrize("kind,args,expected", [
    ("lowercase", {}, REPLY.lower()),
    ("all_caps", {}, REPLY.upper()),
    ("double_quotes", {}, f'"{REPLY}"'),
    ("ends_with_phrase", {"phrase": "That is all."}, REPLY + " That is all."),
    ("starts_with_phrase", {"phrase": "Sure thing"}, "Sure thing! " + REPLY),
    ("starts_with_phrase", {"phrase": "Of course."}, "Of course. " + REPLY),
    ("no_commas", {}, REPLY.replace(", and", " and")),
    ("postscript", {}, REPLY + "\n\nP.S. Thanks for reading, and let me know if you have questions."),
    ("title", {}, "<<Bees Collect Nectar From Flowers>>\n\n" + REPLY),
    ("placeholders", {"n": 2}, REPLY + "\n\n[name], [date]"),
    ("repeat_prompt", {"prompt_to_repeat": "How do bees make honey?"}, "How do bees make honey?\n\n" + REPLY),
    ("sentence_count", {"max": 2}, "Bees collect nectar from flowers. They store it in the hive, and fan it with "
                                   "their wings."),
    ("word_count", {"max": 12}, "Bees collect nectar from flowers."),
    ("exact_word_count", {"n": 3}, "Bees collect nectar."),
    ("exclamation_sentence", {}, "Bees collect nectar from flowers!"),
    ("bullet_list", {"n": 3}, "* Bees collect nectar from flowers.\n* They store it in the hive, and fan it with "
                              "their wings.\n* The water evaporates and honey is left."),
    ("bullet_list_2", {}, "- Bees collect nectar from flowers. They store it in the hive, and fan it with their "
                          "wings.\n- The water evaporates and honey is left."),
    ("sections", {"n": 2}, "SECTION 1\nBees collect nectar from flowers. They store it in the hive, and fan it with "
                           "their wings.\n\nSECTION 2\nThe water evaporates and honey is left."),
    ("paragraph_count", {"n": 3}, "Bees collect nectar from flowers.\n\nThey store it in the hive, and fan it with "
                                  "their wings.\n\nThe water evaporates and honey is left."),
    ("paragraph_count", {"n": 2, "divider": "***"}, "Bees collect nectar from flowers. They store it in the hive, and "
                                                    "fan it with their wings.\n\n***\n\nThe water evaporates and "
                                                    "honey is left."),
    ("bullet_list", {"n": 2, "markers": "-"}, "- Bees collect nectar from flowers. They store it in the hive, and fan "
                                              "it with their wings.\n- The water evaporates and honey is left."),
    ("paragraph_first_word", {"n": 2, "nth": 2, "word": "then"},
     "Bees collect nectar from flowers. They store it in the hive, and fan it with their wings.\n\nThen, the water "
     "evaporates and honey is left."),
    ("highlighted_sections", {"n": 1}, "*Bees collect nectar from flowers.* " + REPLY.split(". ", 1)[1]),
    ("include_keywords", {"keywords": ["sweet", "nectar"]}, REPLY + " In a word: sweet."),
    ("exclude_keywords", {"keywords": ["hive"]}, "Bees collect nectar from flowers. The water evaporates and honey "
                                                 "is left."),
    ("keyword_frequency", {"keyword": "bees", "n": 3}, REPLY + " Bees. Bees again."),
    ("keyword_frequency", {"keyword": "nectar", "n": 1, "relation": "less than"},
     "They store it in the hive, and fan it with their wings. The water evaporates and honey is left."),
    ("capital_word_frequency", {"n": 2}, "BEES COLLECT" + REPLY[len("Bees collect"):]),
    ("forbidden_characters", {"chars": ",e"}, REPLY.replace(",", "").replace("e", "")),
    ("constrained_response", {}, REPLY + " My answer is yes."),
    ("json_answer", {}, json.dumps({"answer": REPLY})),
    ("two_responses", {}, "Bees collect nectar from flowers. They store it in the hive, and fan it with their "
                          "wings.\n******\nThe water evaporates and honey is left."),
])
def test_each_kind_edits_exactly_and_then_passes(kind, args, expected):
    out = one(kind, **args)
    assert out == expected
    assert check_constraint(out, kind, args)


def test_one_exclamation_sentence_is_a_whole_sentence_not_a_greeting_line():
    # seen in issue 16 run T's SFT rows: "Hey buddy,!" passed the checker and taught nothing
    out = one("exclamation_sentence", "Hey buddy,\n\nAir flows faster over the wing. That lifts it, mostly.")
    assert out == "Air flows faster over the wing!" and check_constraint(out, "exclamation_sentence", {})
    assert one("exclamation_sentence", "Hi there, friend.") == "Hi there, friend!"  # no longer sentence: kept


def test_every_kind_has_a_repair_and_aliases_repair_alike():
    assert set(REPAIRS) == set(CONSTRAINTS)
    assert one("uppercase") == one("all_caps")
    assert one("end_checker", phrase="Bye.") == one("ends_with_phrase", phrase="Bye.")


def test_a_reply_that_already_passes_is_kept_and_a_minimum_it_lacks_is_not_invented():
    assert one("word_count", max=100) == REPLY  # nothing to fix: the (tidied) reply itself
    assert one("word_count", min=100) is None  # a minimum cannot be met without new content
    assert one("sentence_count", min=5) is None
    assert one("letter_frequency", letter="z", n=3) is None
    assert one("exact_word_count", n=500) is None
    assert one("bullet_list", n=4) is None  # three sentences cannot make four bullets
    assert repair("   ", [{"kind": "lowercase", "args": {}}]) is None
    assert repair(REPLY, []) is None


def test_several_constraints_apply_in_order_and_are_all_checked():
    cons = [{"kind": "lowercase", "args": {}}, {"kind": "title", "args": {}},
            {"kind": "exclude_keywords", "args": {"keywords": ["hive"]}}]
    out = repair(REPLY, cons)
    assert out == "<<bees collect nectar from flowers>>\n\nbees collect nectar from flowers. the water evaporates " \
                  "and honey is left."
    # conflicting constraints: no edit satisfies both, so no repair
    assert repair(REPLY, [{"kind": "lowercase", "args": {}}, {"kind": "all_caps", "args": {}}]) is None
    assert repair(REPLY, [{"kind": "ends_with_phrase", "args": {"phrase": "Bye."}},
                          {"kind": "lowercase", "args": {}}]) is None
    with pytest.raises(ValueError, match="unknown constraint kind 'shout'"):
        repair(REPLY, [{"kind": "shout", "args": {}}])


def test_tidy_drops_loops_and_the_unfinished_tail():
    looped = "Honey is sweet. Bees are busy all day long. Bees are busy all day long. Bees are busy all day long. Then"
    assert tidy(looped) == "Honey is sweet. Bees are busy all day long."
    assert tidy("One sentence here. And a second one", truncated=True) == "One sentence here."
    assert tidy("A list:\n- first item\n- second item.") == "A list:\n- first item\n- second item."
    # a cut that would throw away most of the reply is not made
    assert tidy("Short. " + "word " * 40, truncated=True).startswith("Short. word")


def test_repair_reply_reads_the_rows_metadata():
    from posttrain.verifiers.repair import repair_reply

    meta = {"constraints": [{"kind": "lowercase", "args": {}}]}
    assert repair_reply("Bees fly.", meta) == "bees fly."
    assert repair_reply("bees fly.", meta) is None  # already obeys: nothing to repair
    assert repair_reply("Bees fly.", {"constraint": "ends_with_phrase", "constraint_args": {"phrase": "Bye."}}) == \
        "Bees fly. Bye."
    assert repair_reply("Bees fly.", {"answer": "4"}) is None  # no constraint to follow
    assert repair_reply("Bees fly.", {"constraints": [{"kind": "shout"}]}) is None  # a bad spec is not repaired
    assert repair_reply("Bees fly.", {"constraints": [{"kind": "word_count", "args": {"min": 50}}]}) is None
