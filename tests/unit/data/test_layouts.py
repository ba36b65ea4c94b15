import json

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


# ---- IFEval-format prompt rows ---------------------------------------------------------------------------------

IFEVAL_TEN = [  # google/IFEval rows (nulls as in columnar copies), RLVR-IFeval ground truths, one plain row
    {"key": 11, "prompt": "Write a poem. No commas.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
    {"key": 12, "prompt": "Essay of 300 words without commas.",
     "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
     "kwargs": [{}, {"relation": "at least", "num_words": 300}]},
    {"key": 13, "prompt": "A title and 3 bullets.",
     "instruction_id_list": ["detectable_format:title", "detectable_format:number_bullet_lists"],
     "kwargs": [{"num_bullets": None}, {"num_bullets": 3, "relation": None}]},
    {"key": 14, "prompt": "In lowercase.", "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]},
    {"key": 15, "prompt": "Mention tea twice, end with 'Bye.'",
     "instruction_id_list": ["keywords:frequency", "startend:end_checker"],
     "kwargs": [{"keyword": "tea", "frequency": 2, "relation": "at least"}, {"end_phrase": "Bye."}]},
    {"key": 16, "prompt": "Quote it all.", "instruction_id_list": ["startend:quotation"], "kwargs": [{}]},
    {"messages": [{"role": "user", "content": "Lowercase please."}],
     "ground_truth": json.dumps({"func_name": "validate_lowercase", "N": None, "quantifier": None}),
     "dataset": "ifeval"},
    {"messages": [{"role": "user", "content": "About 50 words."}],
     "ground_truth": json.dumps({"func_name": "validate_word_constraint", "N": 50, "quantifier": "at most"})},
    {"messages": [{"role": "user", "content": "Two paragraphs, no commas, a P.S."}],
     "ground_truth": "[{'instruction_id': ['length_constraints:number_paragraphs', 'punctuation:no_comma', "
                     "'detectable_content:postscript'], 'kwargs': [{'num_paragraphs': 2}, None, "
                     "{'postscript_marker': 'P.S.'}]}]"},
    {"prompt": "A plain prompt with a math answer.", "ground_truth": "42"},
]


def test_ifeval_reader_on_ten_rows_against_a_hand_count(tmp_path):
    from posttrain.data.layouts import load_examples

    path = tmp_path / "ifeval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in IFEVAL_TEN))
    examples = load_examples(str(path), "prompt")
    assert len(examples) == 10
    kinds: dict[str, int] = {}
    for ex in examples:
        for c in ex.metadata.get("constraints", []):
            kinds[c["kind"]] = kinds.get(c["kind"], 0) + 1
    # by hand: no_comma in rows 1, 2, 9; lowercase in 4 and 7; word counts in 2 and 8; one each of the rest
    assert kinds == {"no_commas": 3, "lowercase": 2, "word_count": 2, "title": 1, "bullet_list": 1,
                     "keyword_frequency": 1, "ends_with_phrase": 1, "double_quotes": 1, "paragraph_count": 1,
                     "postscript": 1}
    assert sum(kinds.values()) == 14 and sum(len(ex.metadata.get("constraints", [])) > 0 for ex in examples) == 9
    assert [ex.metadata.get("id") for ex in examples[:6]] == [11, 12, 13, 14, 15, 16]  # IFEval's key is the id
    assert examples[1].metadata["constraints"] == [{"kind": "no_commas", "args": {}},
                                                   {"kind": "word_count", "args": {"min": 300}}]
    assert examples[7].metadata["constraints"] == [{"kind": "word_count", "args": {"max": 50}}]
    assert examples[7].metadata["instruction_id_list"] == ["length_constraints:number_words"]
    assert examples[6].prompt == [u("Lowercase please.")]
    assert examples[9].metadata == {"ground_truth": "42"}  # not IFEval: left as it was


def test_ifeval_rows_with_unsupported_or_conflicting_instructions(tmp_path):
    from posttrain.data.layouts import load_examples
    from posttrain.data.schema import DataErrors

    rows = [{"key": 1, "prompt": "Reply in German.", "instruction_id_list": ["language:response_language"],
             "kwargs": [{"language": "de"}]},
            {"key": 2, "prompt": "German, no commas.",
             "instruction_id_list": ["language:response_language", "punctuation:no_comma"],
             "kwargs": [{"language": "de"}, {}]},
            {"key": 3, "prompt": "Both.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}],
             "constraints": [{"kind": "lowercase", "args": {}}]}]
    path = tmp_path / "f.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataErrors) as e:
        load_examples(str(path), "prompt")
    lines = str(e.value).splitlines()
    assert lines[0] == (f"{path}:1: field 'instruction_id_list': instruction id 'language:response_language' has "
                        "no verifier (supported: see posttrain/verifiers/ifeval.py IFEVAL_IDS; or skip such "
                        "ids)")
    assert lines[1].startswith(f"{path}:2: field 'instruction_id_list': instruction id 'language:response_language'")
    assert lines[2] == (f"{path}:3: field 'instruction_id_list': the row has both IFEval instructions and "
                        "'constraints' or 'constraint'; keep one")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    skipped: list = []
    (ex,) = load_examples(str(path), "prompt", ifeval_unsupported="skip", skipped=skipped)
    assert ex.metadata["constraints"] == [{"kind": "no_commas", "args": {}}]
    assert ex.metadata["ifeval_skipped"] == ["language:response_language"]
    assert [(s.row, s.field_name) for s in skipped] == [(1, "instruction_id_list")]
    with pytest.raises(ValueError, match="ifeval_unsupported must be one of error, skip"):
        load_examples(str(path), "prompt", ifeval_unsupported="ignore")
