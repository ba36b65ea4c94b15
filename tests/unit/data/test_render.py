import copy

import pytest

from posttrain.data.render import (
    Rendered,
    RenderStats,
    render_dataset,
    render_messages,
    render_pair,
    render_prompt,
    render_sft,
    render_unpaired,
)
from posttrain.data.schema import DataError, DataErrors, PreferencePair, PromptExample, SFTExample, UnpairedExample

# SmolLM2 pieces, each tokenised on its own: <|im_start|>=1, <|im_end|>=2 (eos), "\n"=198, "system"=9690,
# "user"=4093, "assistant"=[520, 9531]; the default system prompt the template inserts is DEFAULT_SYSTEM.
IM_START, IM_END, NL = 1, 2, 198
DEFAULT_SYSTEM = [2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182]
SYSTEM_TURN = [IM_START, 9690, NL] + DEFAULT_SYSTEM + [IM_END, NL]
USER_HEADER = [IM_START, 4093, NL]
ASSISTANT_HEADER = [IM_START, 520, 9531, NL]
HI, HELLO, BYE, SEE_YOU = [26843], [19556, 17], [3087, 85], [7574, 346, 30]

TWO_TURNS = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "See you."},
]


def with_template(tokenizer, template: str):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    return tok


def test_two_turn_conversation_exact_ids_and_mask(smollm2_tokenizer):
    r = render_messages(TWO_TURNS, smollm2_tokenizer, max_length=512)
    expected_ids = [
        1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182, 2,
        198,                                  # default system turn
        1, 4093, 198, 26843, 2, 198,          # user: Hi
        1, 520, 9531, 198, 19556, 17, 2, 198,  # assistant: Hello!
        1, 4093, 198, 3087, 85, 2, 198,       # user: Bye
        1, 520, 9531, 198, 7574, 346, 30, 2,  # assistant: See you.  (no trailing "\n")
    ]
    expected_mask = [0] * 21 + [0] * 6 + [0, 0, 0, 0, 1, 1, 1, 0] + [0] * 7 + [0, 0, 0, 0, 1, 1, 1, 1]
    # the literal lists are the template's pieces put together
    assert expected_ids == (SYSTEM_TURN + USER_HEADER + HI + [IM_END, NL] + ASSISTANT_HEADER + HELLO + [IM_END, NL]
                            + USER_HEADER + BYE + [IM_END, NL] + ASSISTANT_HEADER + SEE_YOU + [IM_END])
    assert r.input_ids == expected_ids
    assert r.loss_mask == expected_mask
    assert r.prompt_length == 31 and not r.truncated
    trained = [i for i, m in zip(r.input_ids, r.loss_mask) if m]
    assert trained == HELLO + [IM_END] + SEE_YOU + [IM_END]
    assert r.input_ids[-1] == IM_END and r.input_ids[-2] != IM_END


def test_render_sft_keeps_an_explicit_system_message(smollm2_tokenizer):
    ex = SFTExample([{"role": "system", "content": "Hi"}] + TWO_TURNS[:2], source="f.jsonl", row=3)
    r = render_sft(ex, smollm2_tokenizer, max_length=512)
    assert r.input_ids == [IM_START, 9690, NL] + HI + [IM_END, NL] + USER_HEADER + HI + [IM_END, NL] \
        + ASSISTANT_HEADER + HELLO + [IM_END]
    assert r.loss_mask == [0] * 16 + [1, 1, 1]


def test_prefix_property_break_names_the_row(smollm2_tokenizer):
    # stored assistant turns use a "bot" header, the generation prompt says "assistant"
    tok = with_template(smollm2_tokenizer, (
        "{% for m in messages %}{% set role = 'bot' if m['role'] == 'assistant' else m['role'] %}"
        "{{ '<|im_start|>' + role + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"))
    ex = SFTExample(TWO_TURNS[:2], source="chat.jsonl", row=7)
    with pytest.raises(DataError) as e:
        render_sft(ex, tok, max_length=512)
    assert str(e.value).startswith("chat.jsonl:7: field 'messages': chat template breaks the prefix property")
    with pytest.raises(DataErrors) as e:
        render_dataset([ex], tok, max_length=512)
    assert str(e.value).startswith("chat.jsonl:7: field 'messages': chat template breaks the prefix property")


NO_EOS_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '\n' }}{% endfor %}"
                   "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_template_without_eos_gets_exactly_one_eos_appended(smollm2_tokenizer):
    tok = with_template(smollm2_tokenizer, NO_EOS_TEMPLATE)
    r = render_messages([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], tok,
                        max_length=512)
    # "<|im_start|>user\nHi\n<|im_start|>assistant\nHello\n" + appended eos; the turn's own "\n" is trained
    assert r.input_ids == USER_HEADER + HI + [NL] + ASSISTANT_HEADER + [19556, NL, IM_END]
    assert r.loss_mask == [0] * 9 + [1, 1, 1]
    assert r.prompt_length == 9


def test_template_without_eos_multi_turn_masks_each_turn(smollm2_tokenizer):
    tok = with_template(smollm2_tokenizer, NO_EOS_TEMPLATE)
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    r = render_messages(msgs, tok, max_length=512)
    turn = USER_HEADER + HI + [NL] + ASSISTANT_HEADER + [19556, NL]
    assert r.input_ids == turn + turn + [IM_END]
    assert r.loss_mask == [0] * 9 + [1, 1] + [0] * 9 + [1, 1, 1]
    assert r.input_ids.count(IM_END) == 1


def test_truncation_drop_and_truncate_are_counted(smollm2_tokenizer):
    short = SFTExample(TWO_TURNS[:2], "f.jsonl", 1)  # 34 tokens
    long = SFTExample([TWO_TURNS[0], {"role": "assistant", "content": "word " * 40}], "f.jsonl", 2)
    full = render_sft(long, smollm2_tokenizer, max_length=10_000)
    assert len(full.input_ids) > 40
    items, stats = render_dataset([short, long], smollm2_tokenizer, max_length=40, truncation="drop")
    assert (stats.kept, stats.dropped, stats.truncated) == (1, 1, 0)
    assert items[0].input_ids == render_sft(short, smollm2_tokenizer, max_length=40).input_ids
    assert render_sft(long, smollm2_tokenizer, max_length=40) is None

    items, stats = render_dataset([short, long], smollm2_tokenizer, max_length=40, truncation="truncate")
    assert (stats.kept, stats.dropped, stats.truncated) == (2, 0, 1)
    cut = items[1]
    assert cut.truncated and len(cut.input_ids) == 40
    assert cut.input_ids == full.input_ids[:40] and cut.loss_mask == full.loss_mask[:40]
    assert cut.loss_mask[-1] == 1 and cut.prompt_length == full.prompt_length
    assert str(stats) == "kept 2 (truncated 1), dropped 0 longer than max_length"
    assert stats.as_dict() == {"kept": 2, "dropped": 0, "truncated": 1}


def test_truncate_ends_on_a_trained_token(smollm2_tokenizer):
    # max_length 38 cuts inside the second user turn: trim back to the first reply's EOS (index 33)
    r = render_messages(TWO_TURNS, smollm2_tokenizer, max_length=38, truncation="truncate")
    assert r.truncated and len(r.input_ids) == 34
    assert r.input_ids[-1] == IM_END and r.loss_mask[-1] == 1


def test_prompt_alone_too_long_is_an_error_under_either_policy(smollm2_tokenizer):
    ex = SFTExample(TWO_TURNS[:2], source="data.jsonl", row=4)  # prompt is 31 tokens
    for policy in ("drop", "truncate"):
        with pytest.raises(DataErrors) as e:
            render_dataset([ex], smollm2_tokenizer, max_length=31, truncation=policy)
        assert str(e.value) == "data.jsonl:4: field 'prompt': prompt alone is 31 tokens, longer than max_length 31"


def test_truncation_policy_is_validated(smollm2_tokenizer):
    with pytest.raises(ValueError, match="'drop', 'truncate'"):
        render_messages(TWO_TURNS, smollm2_tokenizer, max_length=10, truncation="left")
    with pytest.raises(ValueError, match="'drop', 'truncate'"):
        render_dataset([], smollm2_tokenizer, max_length=10, truncation="cut")


def test_pair_trains_only_the_replies_after_a_shared_prompt(smollm2_tokenizer):
    prompt = TWO_TURNS[:3]  # user, assistant, user: the earlier assistant turn is context, not trained
    pair = PreferencePair(prompt, [{"role": "assistant", "content": "See you."}],
                          [{"role": "assistant", "content": "Bye"}], "p.jsonl", 2)
    chosen, rejected = render_pair(pair, smollm2_tokenizer, max_length=512)
    prompt_ids = render_prompt(PromptExample(prompt), smollm2_tokenizer)
    assert prompt_ids == (SYSTEM_TURN + USER_HEADER + HI + [IM_END, NL] + ASSISTANT_HEADER + HELLO + [IM_END, NL]
                          + USER_HEADER + BYE + [IM_END, NL] + ASSISTANT_HEADER)
    n = len(prompt_ids)
    assert chosen.prompt_length == rejected.prompt_length == n
    assert chosen.input_ids == prompt_ids + SEE_YOU + [IM_END] and chosen.loss_mask == [0] * n + [1] * 4
    assert rejected.input_ids == prompt_ids + BYE + [IM_END] and rejected.loss_mask == [0] * n + [1] * 3


def test_pair_is_dropped_when_either_side_is_too_long(smollm2_tokenizer):
    prompt = TWO_TURNS[:1]
    pair = PreferencePair(prompt, [{"role": "assistant", "content": "ok"}],
                          [{"role": "assistant", "content": "no " * 30}], "p.jsonl", 1)
    items, stats = render_dataset([pair], smollm2_tokenizer, max_length=40)
    assert items == [] and (stats.kept, stats.dropped) == (0, 1)
    items, stats = render_dataset([pair], smollm2_tokenizer, max_length=40, truncation="truncate")
    (chosen, rejected), = items
    assert not chosen.truncated and rejected.truncated and len(rejected.input_ids) == 40
    assert stats.truncated == 1


def test_unpaired_items_carry_their_label_and_prompts_end_with_the_generation_prompt(smollm2_tokenizer):
    ex = UnpairedExample(TWO_TURNS[:1], TWO_TURNS[1:2], False, "k.jsonl", 1)
    items, stats = render_dataset([ex, PromptExample(TWO_TURNS[:1])], smollm2_tokenizer, max_length=512)
    (r, label), prompt_ids = items
    assert label is False and isinstance(r, Rendered)
    assert r.input_ids == render_unpaired(ex, smollm2_tokenizer, max_length=512).input_ids
    assert prompt_ids == SYSTEM_TURN + USER_HEADER + HI + [IM_END, NL] + ASSISTANT_HEADER
    assert r.input_ids == prompt_ids + HELLO + [IM_END] and r.prompt_length == len(prompt_ids)
    assert stats == RenderStats(kept=2)


def test_render_dataset_collects_errors_from_every_row(smollm2_tokenizer):
    rows = [SFTExample(TWO_TURNS[:2], "d.jsonl", r) for r in (1, 2, 3)]
    with pytest.raises(DataErrors) as e:
        render_dataset(rows, smollm2_tokenizer, max_length=20)
    assert [str(x).split(":")[1] for x in e.value.errors] == ["1", "2", "3"]
