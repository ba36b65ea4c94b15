import pytest

from posttrain.feedback.convert import ConvertOptions, convert_events, pair_row, unpaired_row
from posttrain.feedback.events import parse_event

P = [{"role": "user", "content": "Q?"}]


def a(text):
    return [{"role": "assistant", "content": text}]


def events(*records):
    """Records -> events on rows 1, 2, ... of f.jsonl (so an event without an id is 'f.jsonl:ROW')."""
    return [parse_event(dict({"prompt": "Q?"}, **r), "f.jsonl", row) for row, r in enumerate(records, 1)]


def pair(chosen, rejected, kind, ids, votes=1, against=0, prompt=P):
    return {"prompt": prompt, "chosen": a(chosen), "rejected": a(rejected), "source_kind": kind,
            "event_ids": ids, "votes": votes, "votes_against": against}


def row(completion, label, kind, ids, votes=1, against=0, prompt=P):
    return {"prompt": prompt, "completion": a(completion), "label": label, "source_kind": kind,
            "event_ids": ids, "votes": votes, "votes_against": against}


def run(records, **options):
    out = convert_events(events(*records), ConvertOptions(**options))
    return [pair_row(p) for p in out.pairs], [unpaired_row(u) for u in out.unpaired], out


def test_edit_is_edited_over_response_and_identical_edit_is_skipped():
    pairs, unpaired, out = run([{"kind": "edit", "event_id": "e1", "prompt": [{"role": "user", "content": "Hi"}],
                                 "response": "Hello there", "edited": "Hi!"},
                                {"kind": "edit", "response": "same  text", "edited": " same text\n"}])
    assert pairs == [pair("Hi!", "Hello there", "edit", ["e1"], prompt=[{"role": "user", "content": "Hi"}])]
    assert unpaired == []
    assert out.summary["skipped"] == {"edit: edited identical to response": 1}


def test_side_by_side_both_spellings_and_tie():
    pairs, _, out = run([{"kind": "side_by_side", "responses": ["x", "y"], "choice": "b"},
                         {"kind": "pairwise", "response_a": "z", "response_b": "w", "choice": "a"},
                         {"kind": "side_by_side", "responses": ["x", "w"], "choice": "tie"}])
    assert pairs == [pair("y", "x", "side_by_side", ["f.jsonl:1"]), pair("z", "w", "side_by_side", ["f.jsonl:2"])]
    assert out.summary["skipped"] == {"side_by_side: tie": 1}
    assert out.summary["events"]["by_kind"]["side_by_side"] == 3


RANKING = {"kind": "ranking", "event_id": "r1", "responses": ["x", "y", "z"], "ranking": [2, 0, 1]}


def test_ranking_all_is_every_ordered_pair():
    pairs, _, _ = run([RANKING])
    assert pairs == [pair("z", "x", "ranking", ["r1"]), pair("z", "y", "ranking", ["r1"]),
                     pair("x", "y", "ranking", ["r1"])]


def test_ranking_best_vs_rest():
    pairs, _, _ = run([RANKING], ranking_mode="best_vs_rest")
    assert pairs == [pair("z", "x", "ranking", ["r1"]), pair("z", "y", "ranking", ["r1"])]


def test_likert_pairs_need_the_min_gap_and_higher_score_is_chosen():
    records = [{"kind": "likert", "event_id": "l1", "response": "ok", "score": 3},
               {"kind": "likert", "event_id": "l2", "response": "great", "score": 5},
               {"kind": "likert", "event_id": "l3", "response": "bad", "score": 1},
               {"kind": "likert", "event_id": "l4", "response": "meh", "score": 2.5, "prompt": "other"}]
    pairs, unpaired, out = run(records)
    # 3 vs 5: gap 2 -> pair; 3 vs 1: gap 2 -> pair; 5 vs 1: gap 4 -> pair; "meh" is alone on its prompt.
    assert pairs == [pair("great", "ok", "likert", ["l2", "l1"]), pair("ok", "bad", "likert", ["l1", "l3"]),
                     pair("great", "bad", "likert", ["l2", "l3"])]
    assert unpaired == []
    assert out.summary["skipped"] == {
        "likert: no pair (no other reply to the prompt scored min_gap apart) and no unpaired row": 1}
    pairs, _, _ = run(records, likert_min_gap=3)
    assert pairs == [pair("great", "bad", "likert", ["l2", "l3"])]


def test_likert_unpaired_thresholds():
    records = [{"kind": "likert", "event_id": "l1", "response": "ok", "score": 3},
               {"kind": "likert", "event_id": "l2", "response": "great", "score": 5},
               {"kind": "likert", "event_id": "l3", "response": "bad", "score": 2}]
    pairs, unpaired, _ = run(records, likert_unpaired=(2, 4), likert_min_gap=3)
    assert pairs == [pair("great", "bad", "likert", ["l2", "l3"])]
    assert unpaired == [row("great", True, "likert", ["l2"]), row("bad", False, "likert", ["l3"])]


def test_thumbs_give_unpaired_rows_and_every_up_down_pair_on_a_prompt():
    records = [{"kind": "thumbs", "event_id": "t1", "response": "good", "rating": "up"},
               {"kind": "thumbs", "event_id": "t2", "response": "bad", "rating": "down"},
               {"kind": "thumbs", "event_id": "t3", "response": "fine", "rating": True},
               {"kind": "thumbs", "event_id": "t4", "response": "alone", "rating": "up", "prompt": "other"}]
    pairs, unpaired, _ = run(records)
    assert unpaired == [row("good", True, "thumbs", ["t1"]), row("bad", False, "thumbs", ["t2"]),
                        row("fine", True, "thumbs", ["t3"]),
                        row("alone", True, "thumbs", ["t4"], prompt=[{"role": "user", "content": "other"}])]
    assert pairs == [pair("good", "bad", "thumbs", ["t1", "t2"]), pair("fine", "bad", "thumbs", ["t3", "t2"])]


def test_max_pairs_per_prompt_caps_combinations():
    records = [{"kind": "thumbs", "event_id": f"u{i}", "response": f"up{i}", "rating": "up"} for i in range(3)]
    records += [{"kind": "thumbs", "event_id": f"d{i}", "response": f"down{i}", "rating": "down"} for i in range(2)]
    pairs, unpaired, out = run(records)
    assert len(pairs) == 6 and len(unpaired) == 5
    pairs, _, out = run(records, max_pairs_per_prompt=2)
    assert pairs == [pair("up0", "down0", "thumbs", ["u0", "d0"]), pair("up0", "down1", "thumbs", ["u0", "d1"])]
    assert out.summary["skipped"] == {"pairs over max_pairs_per_prompt": 4}


def test_exact_duplicates_merge_with_event_ids_joined_across_kinds():
    records = [{"kind": "side_by_side", "event_id": "s1", "responses": ["A", "B"], "choice": "a"},
               {"kind": "pairwise", "event_id": "s2", "responses": ["B", "  A "], "choice": "b"},
               {"kind": "edit", "event_id": "e1", "response": "B", "edited": "A"},
               {"kind": "thumbs", "event_id": "t1", "response": "ok", "rating": "up"},
               {"kind": "thumbs", "event_id": "t2", "response": "ok ", "rating": 1}]
    pairs, unpaired, out = run(records)
    assert pairs == [pair("A", "B", "side_by_side+edit", ["s1", "s2", "e1"], votes=3)]
    assert unpaired == [row("ok", True, "thumbs", ["t1", "t2"], votes=2)]
    assert out.summary["merged_duplicates"] == {"pairs": 2, "unpaired": 1}
    assert out.conflicts == []


def test_a_repeated_event_id_is_counted_once():
    records = [{"kind": "side_by_side", "event_id": "s1", "responses": ["A", "B"], "choice": "a"}] * 2
    pairs, _, out = run(records)
    assert pairs == [pair("A", "B", "side_by_side", ["s1"])]
    assert out.summary["skipped"] == {"duplicate event_id": 1}


CONFLICTING = [{"kind": "side_by_side", "event_id": "s1", "responses": ["A", "B"], "choice": "a"},
               {"kind": "ranking", "event_id": "r1", "responses": ["A", "B"], "ranking": [1, 0]},
               {"kind": "edit", "event_id": "e1", "response": "B", "edited": "A"},
               {"kind": "side_by_side", "event_id": "s2", "responses": ["C", "D"], "choice": "a"}]


def test_pair_conflicts_are_reported_and_dropped():
    pairs, _, out = run(CONFLICTING)
    assert pairs == [pair("C", "D", "side_by_side", ["s2"])]
    assert out.conflicts == [{
        "type": "pair", "prompt": P, "response_a": "A", "response_b": "B",
        "a_over_b": {"votes": 2, "event_ids": ["s1", "e1"], "source_kinds": ["side_by_side", "edit"]},
        "b_over_a": {"votes": 1, "event_ids": ["r1"], "source_kinds": ["ranking"]},
        "resolution": "dropped"}]
    assert out.summary["conflicts"]["pairs"] == 1 and out.summary["conflicts"]["resolutions"] == {"dropped": 1}


def test_pair_conflicts_majority_keeps_the_side_with_more_votes_and_drops_ties():
    pairs, _, out = run(CONFLICTING, conflicts="majority")
    assert pairs == [pair("A", "B", "side_by_side+edit", ["s1", "e1"], votes=2, against=1),
                     pair("C", "D", "side_by_side", ["s2"])]
    assert out.conflicts[0]["resolution"] == "kept a_over_b"
    pairs, _, out = run(CONFLICTING[1:], conflicts="majority")
    assert pairs == [pair("C", "D", "side_by_side", ["s2"])]
    assert out.conflicts[0]["resolution"] == "dropped (tied)"


THUMBS_CONFLICT = [{"kind": "thumbs", "event_id": "t1", "response": "X", "rating": "up"},
                   {"kind": "thumbs", "event_id": "t2", "response": "X", "rating": "down"},
                   {"kind": "thumbs", "event_id": "t3", "response": "X", "rating": "up"},
                   {"kind": "thumbs", "event_id": "t4", "response": "Y", "rating": "down"}]


def test_a_reply_rated_up_and_down_is_reported_and_dropped_with_its_pairs():
    pairs, unpaired, out = run(THUMBS_CONFLICT)
    assert unpaired == [row("Y", False, "thumbs", ["t4"])]
    assert pairs == []  # X is neither up nor down, so X > Y is not built either
    assert out.conflicts == [{"type": "label", "prompt": P, "response": "X",
                              "up": {"votes": 2, "event_ids": ["t1", "t3"], "source_kinds": ["thumbs"]},
                              "down": {"votes": 1, "event_ids": ["t2"], "source_kinds": ["thumbs"]},
                              "resolution": "dropped"}]
    assert out.summary["conflicts"]["unpaired"] == 1


def test_label_conflict_majority():
    pairs, unpaired, out = run(THUMBS_CONFLICT, conflicts="majority")
    assert unpaired == [row("X", True, "thumbs", ["t1", "t3"], votes=2, against=1),
                        row("Y", False, "thumbs", ["t4"])]
    assert pairs == [pair("X", "Y", "thumbs", ["t1", "t3", "t4"])]
    assert out.conflicts[0]["resolution"] == "kept up"


def test_thumbs_pair_conflicting_with_a_side_by_side_is_a_conflict():
    records = [{"kind": "thumbs", "event_id": "t1", "response": "X", "rating": "up"},
               {"kind": "thumbs", "event_id": "t2", "response": "Y", "rating": "down"},
               {"kind": "side_by_side", "event_id": "s1", "responses": ["X", "Y"], "choice": "b"}]
    pairs, unpaired, out = run(records)
    assert pairs == [] and len(unpaired) == 2
    assert [(c["a_over_b"]["source_kinds"], c["b_over_a"]["source_kinds"]) for c in out.conflicts] == [
        (["thumbs"], ["side_by_side"])]


def test_prompts_match_after_normalising_messages():
    records = [{"kind": "side_by_side", "event_id": "s1", "responses": ["A", "B"], "choice": "a"},
               {"kind": "side_by_side", "event_id": "s2", "responses": ["A", "B"], "choice": "a",
                "prompt": [{"role": "user", "content": " Q?\n"}]},
               {"kind": "side_by_side", "event_id": "s3", "responses": ["A", "B"], "choice": "b",
                "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Q?"}]}]
    pairs, _, out = run(records)
    assert [p["event_ids"] for p in pairs] == [["s1", "s2"], ["s3"]]
    assert out.conflicts == []


@pytest.mark.parametrize("options, message", [
    ({"ranking_mode": "some"}, "ranking mode"), ({"conflicts": "keep"}, "conflict policy"),
    ({"likert_min_gap": 0}, "min gap"), ({"likert_scale": (5, 1)}, "LOW < HIGH"),
    ({"likert_unpaired": (4, 2)}, "thresholds"), ({"max_pairs_per_prompt": 0}, ">= 1")])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(ValueError, match=message):
        ConvertOptions(**options)


ASPECTS = [  # three replies to Q?, rated on three aspects (1-5)
    {"kind": "likert", "event_id": "x", "response": "x", "scores": {"help": 5, "accuracy": 2, "clarity": 4}},
    {"kind": "likert", "event_id": "y", "response": "y", "scores": {"help": 2, "accuracy": 4, "clarity": 1}},
    {"kind": "likert", "event_id": "z", "response": "z", "scores": {"help": 1, "accuracy": 1, "clarity": 2}},
]


def test_multi_aspect_pairs_from_one_aspect_weighted_mean_or_better_on_all():
    # one aspect: help x 5, y 2, z 1 -> x>y (gap 3), x>z (4); y-z gap 1 < 2
    pairs, _, out = run(ASPECTS, aspect="help")
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(a("x"), a("y")), (a("x"), a("z"))]
    # equal weights: means x 11/3, y 7/3, z 4/3 -> only x-z is 2 or more apart (7/3)
    pairs, _, out = run(ASPECTS)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(a("x"), a("z"))]
    # weights accuracy 3, help 1 (clarity 0): x (5+6)/4 = 2.75, y (2+12)/4 = 3.5, z 1 -> y>z (2.5); x-y, x-z < 2
    pairs, _, _ = run(ASPECTS, aspect_weights={"accuracy": 3, "help": 1})
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(a("y"), a("z"))]
    # better on all, gap 1 on the equal-weight mean: x>y fails (accuracy 2 < 4), x>z holds, y>z fails (clarity 1 < 2)
    pairs, _, out = run(ASPECTS, likert_min_gap=1, aspect_all=True)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(a("x"), a("z"))]
    assert out.summary["skipped"]["likert: pair not better on all aspects"] == 2
    # agreement per aspect over the pairs kept (x over z): every aspect agrees
    assert out.summary["aspects"] == {name: {"pairs": 1, "agree": 1, "tie": 0, "disagree": 0, "agreement": 1.0}
                                      for name in ("accuracy", "clarity", "help")}
    # without better-on-all, gap 1: x>y (11/3 vs 7/3), x>z, y>z (7/3 vs 4/3): accuracy disagrees with x>y,
    # clarity with y>z (1 < 2), help agrees with all three
    _, _, out = run(ASPECTS, likert_min_gap=1)
    assert out.summary["aspects"]["accuracy"] == {"pairs": 3, "agree": 2, "tie": 0, "disagree": 1,
                                                  "agreement": 2 / 3}
    assert out.summary["aspects"]["clarity"]["disagree"] == 1 and out.summary["aspects"]["help"]["agreement"] == 1.0


def test_aspect_errors_and_events_without_the_aspect():
    pairs, _, out = run(ASPECTS + [{"kind": "likert", "response": "w", "score": 5}], aspect="clarity")
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(a("x"), a("y")), (a("x"), a("z"))]
    assert out.summary["skipped"]["likert: no score for aspect 'clarity'"] == 1
    with pytest.raises(ValueError, match="an aspect or aspect weights, not both"):
        ConvertOptions(aspect="help", aspect_weights={"help": 1})
    with pytest.raises(ValueError, match="aspect weights must be numbers >= 0 with a positive sum"):
        ConvertOptions(aspect_weights={"help": 0})
    with pytest.raises(ValueError, match=r"f.jsonl:1: field 'scores.help': 7 is outside the scale 1..5"):
        events({"kind": "likert", "response": "x", "scores": {"help": 7}})
    with pytest.raises(ValueError, match=r"field 'scores': must be a non-empty object"):
        events({"kind": "likert", "response": "x", "scores": []})
    with pytest.raises(ValueError, match=r"field 'score': missing \(or give 'scores'"):
        events({"kind": "likert", "response": "x"})
