import pytest

from posttrain.data.layouts import to_preference, to_prompt, to_sft, to_unpaired
from posttrain.data.schema import DataError, PreferencePair, PromptExample, SFTExample, UnpairedExample


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def s(text):
    return {"role": "system", "content": text}


# ---- SFT -----------------------------------------------------------------------------------------------------

def test_sft_messages_keeps_role_and_content_and_other_fields_as_metadata():
    ex = to_sft({"messages": [dict(u("hi"), tool_calls=None), a("hello")], "id": 7}, "f.jsonl", 3)
    assert ex == SFTExample([u("hi"), a("hello")], "f.jsonl", 3, {"id": 7})


def test_sft_conversations_including_sharegpt_from_value():
    ex = to_sft({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]})
    assert ex.messages == [u("hi"), a("yo")]
    assert to_sft({"conversations": [u("hi"), a("yo")]}).messages == [u("hi"), a("yo")]


def test_sft_prompt_completion_standard_and_conversational():
    assert to_sft({"prompt": "hi", "completion": "hello"}).messages == [u("hi"), a("hello")]
    ex = to_sft({"prompt": [s("be nice"), u("hi")], "completion": [a("hello")], "score": 1.0})
    assert ex.messages == [s("be nice"), u("hi"), a("hello")] and ex.metadata == {"score": 1.0}


def test_sft_alpaca_with_and_without_input():
    ex = to_sft({"instruction": "Sum", "input": "1 2", "output": "3", "source": "alpaca"})
    assert ex.messages == [u("Sum\n\n1 2"), a("3")] and ex.metadata == {"source": "alpaca"}
    assert to_sft({"instruction": "Say hi", "input": "", "output": "hi"}).messages == [u("Say hi"), a("hi")]


def test_sft_system_field_is_prepended():
    ex = to_sft({"system": "be brief", "prompt": "hi", "completion": "hello"})
    assert ex.messages == [s("be brief"), u("hi"), a("hello")] and ex.metadata == {}
    with pytest.raises(DataError, match="field 'system': the row has both"):
        to_sft({"system": "x", "messages": [s("y"), u("hi"), a("yo")]})


@pytest.mark.parametrize("record, field", [
    ({"text": "hello"}, "messages"),
    ({"prompt": "hi"}, "completion"),
    ({"prompt": 5, "completion": "x"}, "prompt"),
    ({"instruction": "x", "output": ""}, "output"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [u("hi"), "hello"]}, "messages[1]"),
])
def test_sft_malformed_rows_name_the_field(record, field):
    with pytest.raises(DataError) as e:
        to_sft(record, "f.jsonl", 9)
    assert e.value.field_name == field and str(e.value).startswith(f"f.jsonl:9: field '{field}': ")


# ---- preference ----------------------------------------------------------------------------------------------

def test_preference_explicit_prompt_standard():
    p = to_preference({"prompt": "q", "chosen": "good", "rejected": "bad", "margin": 2}, "p.jsonl", 1)
    assert p == PreferencePair([u("q")], [a("good")], [a("bad")], "p.jsonl", 1, {"margin": 2})


def test_preference_explicit_prompt_conversational():
    p = to_preference({"prompt": [s("sys"), u("q")], "chosen": [a("good")], "rejected": [a("bad")]})
    assert (p.prompt, p.chosen, p.rejected) == ([s("sys"), u("q")], [a("good")], [a("bad")])


def test_preference_implicit_prompt_is_the_longest_common_message_prefix():
    shared = [u("q1"), a("a1"), u("q2")]
    p = to_preference({"chosen": shared + [a("good")], "rejected": shared + [a("bad")], "id": "x"})
    assert (p.prompt, p.chosen, p.rejected, p.metadata) == (shared, [a("good")], [a("bad")], {"id": "x"})


def test_preference_implicit_prompt_cuts_back_to_a_user_turn():
    # the replies start with the same assistant message: that message is part of the reply, not the prompt
    p = to_preference({"chosen": [u("q"), a("same"), u("more"), a("x")], "rejected": [u("q"), a("same")]})
    assert p.prompt == [u("q")] and p.chosen == [a("same"), u("more"), a("x")] and p.rejected == [a("same")]


def test_preference_ultrafeedback_binarized():
    record = {
        "prompt": "What is 2+2?",
        "prompt_id": "abc",
        "chosen": [u("What is 2+2?"), a("4")],
        "rejected": [u("What is 2+2?"), a("5")],
        "score_chosen": 9.0,
        "score_rejected": 2.0,
    }
    p = to_preference(record)
    assert (p.prompt, p.chosen, p.rejected) == ([u("What is 2+2?")], [a("4")], [a("5")])
    assert p.metadata == {"prompt_id": "abc", "score_chosen": 9.0, "score_rejected": 2.0}


def test_preference_anthropic_hh_longest_common_prefix():
    chosen = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke\n\nAssistant: " \
             "Why did the chicken cross the road?"
    rejected = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke\n\nAssistant: " \
               "Why not."
    p = to_preference({"chosen": chosen, "rejected": rejected}, "hh.jsonl", 5)
    assert p.prompt == [u("Hi there"), a("Hello! How can I help?"), u("Tell me a joke")]
    # the common prefix runs into "Why "; it is cut back to the last "\n\nAssistant:" and one space stripped
    assert p.chosen == [a("Why did the chicken cross the road?")]
    assert p.rejected == [a("Why not.")]
    assert p.metadata == {}


def test_preference_hh_without_shared_assistant_marker_is_an_error():
    with pytest.raises(DataError, match="hh.jsonl:2: field 'chosen'"):
        to_preference({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"},
                      "hh.jsonl", 2)


def test_preference_system_field_and_missing_fields():
    p = to_preference({"system": "sys", "prompt": "q", "chosen": "g", "rejected": "b"})
    assert p.prompt == [s("sys"), u("q")]
    with pytest.raises(DataError, match="field 'rejected': missing"):
        to_preference({"prompt": "q", "chosen": "g"})
    with pytest.raises(DataError, match="field 'prompt': missing"):
        to_preference({"chosen": [a("g")], "rejected": [a("b")]})
    with pytest.raises(DataError, match="field 'prompt': missing"):
        to_preference({"chosen": [u("x"), a("g")], "rejected": [u("y"), a("b")]})


# ---- unpaired (KTO) ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("label, expected", [
    (True, True), (False, False), (1, True), (0, False), ("true", True), ("False", False), ("1", True), ("0", False),
])
def test_unpaired_label_forms(label, expected):
    ex = to_unpaired({"prompt": "q", "completion": "c", "label": label, "rater": "r1"}, "k.csv", 2)
    assert ex == UnpairedExample([u("q")], [a("c")], expected, "k.csv", 2, {"rater": "r1"})


@pytest.mark.parametrize("label", [2, "yes", 0.5, None, [True]])
def test_unpaired_bad_label_names_field_label(label):
    with pytest.raises(DataError) as e:
        to_unpaired({"prompt": "q", "completion": "c", "label": label}, "k.csv", 4)
    assert str(e.value).startswith("k.csv:4: field 'label': ")


def test_unpaired_conversational():
    ex = to_unpaired({"prompt": [u("q")], "completion": [a("c")], "label": False})
    assert (ex.prompt, ex.completion, ex.label) == ([u("q")], [a("c")], False)


# ---- prompt only ---------------------------------------------------------------------------------------------

def test_prompt_forms():
    assert to_prompt({"prompt": "q", "id": 1}) == PromptExample([u("q")], metadata={"id": 1})
    assert to_prompt({"prompt": [u("q")]}).prompt == [u("q")]
    assert to_prompt({"messages": [s("x"), u("q")]}).prompt == [s("x"), u("q")]
    assert to_prompt({"system": "x", "prompt": "q"}).prompt == [s("x"), u("q")]
    with pytest.raises(DataError, match="field 'prompt': missing"):
        to_prompt({"question": "q"})
