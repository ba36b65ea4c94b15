import json

import pytest

from posttrain.data.layouts import load_examples
from posttrain.data.schema import DataErrors, PreferencePair, PromptExample, SFTExample, UnpairedExample
from posttrain.data.validate import validate_example, validate_examples


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def errors_of(tmp_path, kind, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataErrors) as e:
        load_examples(str(path), kind)
    messages = [str(x) for x in e.value.errors]
    for m in messages:
        assert "\n" not in m and m.startswith(f"{path}:")
    return [m[len(str(path)) + 1:] for m in messages]  # "row: field 'x': message"


SFT_CASES = [
    ({"messages": [u("hi")]}, "messages", "has no assistant turn to train on"),
    ({"messages": [{"role": "user"}, a("x")]}, "messages[0].content", "missing"),
    ({"messages": [{"content": "hi"}, a("x")]}, "messages[0].role", "missing"),
    ({"messages": [u("   "), a("x")]}, "messages[0].content", "is empty"),
    ({"messages": [u("hi"), a(["x"])]}, "messages[1].content", "must be a string, got list"),
    ({"messages": [u("hi"), {"role": "bot", "content": "x"}]}, "messages[1].role",
     "unknown role 'bot' (expected one of system, user, assistant, tool)"),
    ({"messages": [u("hi"), a("x"), a("y")]}, "messages[2].role",
     "'assistant' cannot follow 'assistant' (expected 'user' or 'tool')"),
    ({"messages": [a("x"), u("hi"), a("y")]}, "messages[0].role",
     "the conversation must start with a user turn, got 'assistant'"),
    ({"messages": [u("hi"), a("x"), {"role": "system", "content": "s"}, u("q"), a("y")]}, "messages[2].role",
     "a system message may only come first"),
    ({"messages": [u("hi"), a("x"), u("more")]}, "messages[2].role",
     "the conversation must end with an assistant turn, got 'user'"),
    ({"prompt": "hi", "completion": ""}, "completion", "is empty"),
    ({"instruction": "hi"}, "output", "missing"),
]


@pytest.mark.parametrize("record, field, message", SFT_CASES)
def test_sft_errors_are_one_line_with_file_row_and_field(tmp_path, record, field, message):
    good = {"messages": [u("hi"), a("hello")]}
    assert errors_of(tmp_path, "sft", [good, good, record]) == [f"3: field '{field}': {message}"]


PREFERENCE_CASES = [
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "rejected", "identical to chosen"),
    ({"prompt": "q", "chosen": "", "rejected": "b"}, "chosen", "is empty"),
    ({"prompt": [u("q"), a("x")], "chosen": "g", "rejected": "b"}, "prompt[1].role",
     "the prompt must end with a user turn, got 'assistant'"),
    ({"prompt": [a("x"), u("q")], "chosen": "g", "rejected": "b"}, "prompt[0].role",
     "the conversation must start with a user turn, got 'assistant'"),
    ({"prompt": "q", "chosen": [a("g")], "rejected": [a("b"), u("more")]}, "rejected[1].role",
     "must be assistant turn(s), got 'user'"),
    ({"prompt": "q", "chosen": [a("g"), {"role": "tool", "content": "r"}], "rejected": "b"}, "chosen[1].role",
     "a reply must start and end with an assistant turn, got 'tool'"),
    ({"prompt": "q", "chosen": [{"role": "assistant", "content": 3}], "rejected": "b"}, "chosen[0].content",
     "must be a string, got int"),
    ({"prompt": "q", "rejected": "b"}, "chosen", "missing"),
]


@pytest.mark.parametrize("record, field, message", PREFERENCE_CASES)
def test_preference_errors(tmp_path, record, field, message):
    assert errors_of(tmp_path, "preference", [record]) == [f"1: field '{field}': {message}"]


def test_unpaired_and_prompt_errors(tmp_path):
    rows = [{"prompt": "q", "completion": "c", "label": "maybe"},
            {"prompt": "q", "completion": [u("c")], "label": True},
            {"prompt": "q", "completion": "c", "label": 1}]
    assert errors_of(tmp_path, "unpaired", rows) == [
        "1: field 'label': must be true or false (or 1/0), got 'maybe'",
        "2: field 'completion[0].role': must be assistant turn(s), got 'user'",
    ]
    rows = [{"messages": [u("q"), a("x")]}, {"prompt": " "}, {"prompt": "fine"}]
    assert errors_of(tmp_path, "prompt", rows) == [
        "1: field 'prompt[1].role': the prompt must end with a user turn, got 'assistant'",
        "2: field 'prompt': is empty",
    ]


def test_load_examples_collects_errors_from_several_rows_at_once(tmp_path):
    rows = [
        {"messages": [u("hi"), a("hello")]},
        {"messages": [u(""), a(5)]},          # two errors in one row
        {"prompt": "q"},
        {"messages": [u("hi"), a("hello")]},
        {"text": "raw"},
    ]
    assert errors_of(tmp_path, "sft", rows, name="mixed.jsonl") == [
        "2: field 'messages[0].content': is empty",
        "2: field 'messages[1].content': must be a string, got int",
        "3: field 'completion': missing",
        "5: field 'messages': missing: expected 'messages', 'conversations', 'prompt' + 'completion', or "
        "'instruction' + 'output' (the row has: text)",
    ]


def test_tool_turns_are_allowed_after_an_assistant_turn():
    tool = {"role": "tool", "content": "42"}
    assert validate_example(SFTExample([u("q"), a("call"), tool, a("it is 42")])) == []
    assert validate_example(PreferencePair([u("q")], [a("call"), tool, a("42")], [a("no")])) == []
    assert validate_example(UnpairedExample([u("q")], [a("x")], True)) == []
    assert validate_example(PromptExample([{"role": "system", "content": "s"}, u("q")])) == []
    with pytest.raises(DataErrors, match="<memory>:0: field 'messages\\[1\\].role': 'tool' cannot follow 'user'"):
        validate_examples([SFTExample([u("q"), tool, a("x")])])
