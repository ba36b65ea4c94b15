import json

import pytest

from posttrain.data.schema import DataError
from posttrain.feedback.events import (
    EditEvent,
    LikertEvent,
    Origin,
    RankingEvent,
    SideBySideEvent,
    ThumbsEvent,
    parse_event,
    read_events,
)


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def test_every_kind_parses_into_its_dataclass_with_origin():
    thumbs = parse_event({"event_id": "e1", "kind": "thumbs", "prompt": "hi", "response": "yo", "rating": "up",
                          "timestamp": "2025-01-02T03:04:05Z", "user_id": 42, "model": "m1", "extra": 1},
                         "f.jsonl", 3)
    assert thumbs == ThumbsEvent([u("hi")], "yo", True,
                                 Origin("f.jsonl", 3, "e1", "2025-01-02T03:04:05Z", "42", "m1"))
    edit = parse_event({"kind": "edit", "prompt": [u("a"), a("b"), u("c")], "response": "r", "edited": "R"},
                       "f.jsonl", 4)
    assert edit == EditEvent([u("a"), a("b"), u("c")], "r", "R", Origin("f.jsonl", 4))
    assert edit.origin.id == "f.jsonl:4"
    sbs = parse_event({"kind": "side_by_side", "prompt": "p", "responses": ["x", "y"], "choice": "B"})
    assert sbs == SideBySideEvent([u("p")], "x", "y", "b", Origin("<memory>", 0))
    alias = parse_event({"kind": "pairwise", "prompt": "p", "response_a": "x", "response_b": "y", "choice": "tie"})
    assert alias == SideBySideEvent([u("p")], "x", "y", "tie", Origin("<memory>", 0))
    ranking = parse_event({"kind": "ranking", "prompt": "p", "responses": ["x", "y", "z"], "ranking": [2, 0, 1]})
    assert ranking == RankingEvent([u("p")], ["x", "y", "z"], [2, 0, 1], Origin("<memory>", 0))
    likert = parse_event({"kind": "likert", "prompt": "p", "response": "x", "score": 4.5})
    assert likert == LikertEvent([u("p")], "x", 4.5, Origin("<memory>", 0))


@pytest.mark.parametrize("rating, up", [("up", True), ("Down", False), (True, True), (False, False),
                                        (1, True), (0, False), (-1, False)])
def test_thumbs_ratings(rating, up):
    assert parse_event({"kind": "thumbs", "prompt": "p", "response": "r", "rating": rating}).up is up


@pytest.mark.parametrize("record, field, message", [
    ({"prompt": "p"}, "kind", "missing"),
    ({"kind": "stars", "prompt": "p"}, "kind", "unknown kind 'stars'"),
    ({"kind": "thumbs", "response": "r", "rating": "up"}, "prompt", "missing"),
    ({"kind": "thumbs", "prompt": 3, "response": "r", "rating": "up"}, "prompt", "must be a string or a message"),
    ({"kind": "thumbs", "prompt": [u("a"), a("b")], "response": "r", "rating": "up"}, "prompt[1].role",
     "must end with a user turn"),
    ({"kind": "thumbs", "prompt": [u("")], "response": "r", "rating": "up"}, "prompt[0].content", "is empty"),
    ({"kind": "thumbs", "prompt": "p", "rating": "up"}, "response", "missing"),
    ({"kind": "thumbs", "prompt": "p", "response": "  ", "rating": "up"}, "response", "is empty"),
    ({"kind": "thumbs", "prompt": "p", "response": ["r"], "rating": "up"}, "response", "must be a string"),
    ({"kind": "thumbs", "prompt": "p", "response": "r", "rating": "meh"}, "rating", "must be 'up' or 'down'"),
    ({"kind": "thumbs", "prompt": "p", "response": "r", "rating": 2}, "rating", "must be 'up' or 'down'"),
    ({"kind": "thumbs", "prompt": "p", "response": "r", "rating": "up", "timestamp": "yesterday"}, "timestamp",
     "not an ISO 8601"),
    ({"kind": "thumbs", "prompt": "p", "response": "r", "rating": "up", "event_id": [1]}, "event_id",
     "must be a string"),
    ({"kind": "edit", "prompt": "p", "response": "r"}, "edited", "missing"),
    ({"kind": "side_by_side", "prompt": "p", "responses": ["x", "y"], "choice": "c"}, "choice",
     "must be 'a', 'b' or 'tie'"),
    ({"kind": "side_by_side", "prompt": "p", "responses": ["x", "y", "z"], "choice": "a"}, "responses",
     "exactly 2"),
    ({"kind": "side_by_side", "prompt": "p", "responses": ["x", ""], "choice": "a"}, "responses[1]", "is empty"),
    ({"kind": "side_by_side", "prompt": "p", "response_a": "x", "choice": "a"}, "response_b", "missing"),
    ({"kind": "side_by_side", "prompt": "p", "choice": "a"}, "responses", "missing"),
    ({"kind": "ranking", "prompt": "p", "responses": ["x"], "ranking": [0]}, "responses", "at least 2"),
    ({"kind": "ranking", "prompt": "p", "responses": ["x", "y"], "ranking": [0, 0]}, "ranking",
     "permutation of 0..1 (best first): repeated [0], missing [1]"),
    ({"kind": "ranking", "prompt": "p", "responses": ["x", "y"], "ranking": [0]}, "ranking", "missing [1]"),
    ({"kind": "ranking", "prompt": "p", "responses": ["x", "y"], "ranking": [0, 2]}, "ranking[1]",
     "out of range"),
    ({"kind": "ranking", "prompt": "p", "responses": ["x", "y"], "ranking": [0, "1"]}, "ranking[1]",
     "must be an integer"),
    ({"kind": "likert", "prompt": "p", "response": "r", "score": 6}, "score", "outside the scale 1..5"),
    ({"kind": "likert", "prompt": "p", "response": "r", "score": "5"}, "score", "must be a number"),
    ({"kind": "likert", "prompt": "p", "response": "r", "score": True}, "score", "must be a number"),
])
def test_malformed_events_name_the_field(record, field, message):
    with pytest.raises(DataError) as info:
        parse_event(record, "log.jsonl", 7)
    assert info.value.field_name == field
    assert str(info.value).startswith(f"log.jsonl:7: field '{field}': ")
    assert message in str(info.value)


def test_likert_scale_is_configurable():
    assert parse_event({"kind": "likert", "prompt": "p", "response": "r", "score": 9}, likert_scale=(0, 10)).score == 9
    with pytest.raises(DataError, match="outside the scale 0..10"):
        parse_event({"kind": "likert", "prompt": "p", "response": "r", "score": -1}, likert_scale=(0, 10))


def test_read_events_keeps_valid_lines_and_reports_each_bad_line_with_its_number(tmp_path):
    good = {"kind": "thumbs", "prompt": "p", "response": "r", "rating": "up"}
    lines = [json.dumps(good), "{not json", "", json.dumps({"kind": "edit", "prompt": "p", "response": "r"}),
             json.dumps([1, 2]), json.dumps(dict(good, response="s"))]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    events, errors, count = read_events([str(path)])
    assert [(e.response, e.origin.row) for e in events] == [("r", 1), ("s", 6)]
    assert [(e.row, e.field_name) for e in errors] == [(2, None), (4, "edited"), (5, None)]
    assert str(errors[0]).startswith(f"{path}:2: invalid JSON")
    assert str(errors[1]) == f"{path}:4: field 'edited': missing"
    assert count == 5  # the blank line is not an event


def test_read_events_missing_file_is_one_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_events([str(tmp_path / "nope.jsonl")])
