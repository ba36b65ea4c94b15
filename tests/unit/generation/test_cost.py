"""The dry-run cost model: exact token counts and money for a small prompt file."""

from __future__ import annotations

import json

import pytest

from posttrain.data.render import render_prompt
from posttrain.data.schema import DataErrors, PromptExample
from posttrain.generation.cost import cost_model, format_cost, pairs_per_prompt

PROMPTS = [{"prompt": "Name a river."}, {"messages": [{"role": "user", "content": "Two words about tea."}]},
           {"prompt": "Count to three.", "system": "Be brief."}]


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))
    return path


def _lengths(tokenizer) -> list[int]:
    messages = [[{"role": "user", "content": "Name a river."}], [{"role": "user", "content": "Two words about tea."}],
                [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count to three."}]]
    return [len(render_prompt(PromptExample(m), tokenizer)) for m in messages]


def test_all_pairs_counts_and_money_are_exact(prompts_file, tokenizer):
    lengths = _lengths(tokenizer)
    c = cost_model(prompts_file, tokenizer, n=4, mean_new_tokens=10, judge_prompt_tokens=100, judge_output_tokens=5,
                   prices={"input": 1.0, "output": 2.0})
    mean_prompt = sum(lengths) / 3
    assert c["prompts"] == 3 and c["candidates"] == 12 and c["mean_prompt_tokens"] == pytest.approx(mean_prompt)
    assert c["generation_input_tokens"] == sum(lengths)
    assert c["generation_output_tokens"] == 3 * 4 * 10 == 120
    assert c["pairs_per_prompt"] == 6  # 4 * 3 / 2
    assert c["judge_calls"] == 3 * 6 * 2 == 36  # both orders
    assert c["judge_input_tokens"] == pytest.approx(36 * (100 + mean_prompt + 2 * 10))
    assert c["judge_output_tokens"] == 36 * 5 == 180
    assert c["generation_usd"] == pytest.approx((sum(lengths) * 1.0 + 120 * 2.0) / 1e6)
    assert c["judge_usd"] == pytest.approx((36 * (120 + mean_prompt) * 1.0 + 180 * 2.0) / 1e6)
    assert c["total_usd"] == pytest.approx(c["generation_usd"] + c["judge_usd"])
    text = format_cost(c)
    assert "36 calls" in text and "$" in text and "3 x 4 candidates = 12" in text


def test_best_vs_worst_default_tokens_and_measured_mean(prompts_file, tokenizer, tmp_path):
    c = cost_model(prompts_file, tokenizer, n=8, max_new_tokens=64, pairing="best-vs-worst", judge_calls_per_pair=1)
    assert c["mean_new_tokens"] == 32 and c["mean_new_tokens_source"] == "max_new_tokens/2"
    assert c["judge_calls"] == 3 and c["generation_output_tokens"] == 3 * 8 * 32
    assert "total_usd" not in c and "--price-input" in format_cost(c)
    cands = tmp_path / "c.jsonl"
    cands.write_text('{"completion_tokens": 4}\n{"completion_tokens": 8}\n{"completion_tok')  # torn last line
    c = cost_model(prompts_file, tokenizer, n=2, candidates_path=cands)
    assert c["mean_new_tokens"] == 6 and c["mean_new_tokens_source"] == "measured"
    assert pairs_per_prompt(1, "all-pairs") == 0 and pairs_per_prompt(5, "all-pairs") == 10


def test_bad_prompt_row_is_named(tmp_path, tokenizer):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(DataErrors, match=r"p\.jsonl:2: field 'prompt'"):
        cost_model(path, tokenizer, n=2)
