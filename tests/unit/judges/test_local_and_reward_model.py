"""The in-process judges on tiny models: a random causal LM (its verdicts are junk, which must come out as ties
with a reason) and a tiny random sequence classifier as a reward model."""

import math

import pytest

from posttrain.judges.types import PairwiseJudge, ScoringJudge, Verdict

PROMPT = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture(scope="module")
def local_judge():
    from posttrain.judges.local import LocalModelJudge

    return LocalModelJudge("tiny-random", max_new_tokens=6, batch_size=4, device="cpu")


def test_local_judge_returns_valid_verdicts_and_junk_is_a_tie(local_judge):
    assert isinstance(local_judge, PairwiseJudge) and isinstance(local_judge, ScoringJudge)
    items = [(PROMPT, "4", "5", {}), (PROMPT, "Four.", "It is 4, since 2 + 2 = 4.", {})]
    verdicts = local_judge.compare_many(items)
    assert len(verdicts) == 2
    for v in verdicts:
        assert isinstance(v, Verdict) and v.winner in ("a", "b", "tie") and 0.0 <= v.confidence <= 1.0
        assert len(v.details["raw"]) == 2 and all(isinstance(r, str) for r in v.details["raw"])
        if None in v.details["parsed"]:
            assert v.winner == "tie" and "unparseable" in v.details["reason"]
    # a random 6-token answer is practically never "Verdict: X": the unparseable path is exercised
    assert any(None in v.details["parsed"] for v in verdicts)
    # greedy: the same question gets the same answers
    again = local_judge.compare(PROMPT, "4", "5", {})
    assert again.details["raw"] == verdicts[0].details["raw"]


def test_local_judge_scores(local_judge):
    s = local_judge.score(PROMPT, "4", {})
    if math.isnan(s.value):
        assert "unparseable" in s.details["reason"]
    else:
        assert 1 <= s.value <= 10
    assert isinstance(s.details["raw"], str)


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from posttrain.models.resolve import load_tokenizer

    tok = load_tokenizer("tiny-random")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id,
                         max_position_embeddings=512)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    path = tmp_path_factory.mktemp("rm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_reward_model_scores_batched_equal_unbatched(tiny_reward_model):
    from posttrain.judges.reward_model import RewardModelJudge

    judge = RewardModelJudge(tiny_reward_model, batch_size=3, device="cpu")
    responses = ["4", "The answer is 4, because two plus two is four.", "five", "I am not sure, maybe 22?"]
    batched = judge.score_many([(PROMPT, r, {}) for r in responses])
    single = [judge.score(PROMPT, r, {}) for r in responses]
    assert all(math.isfinite(s.value) for s in batched)
    assert [s.value for s in batched] == pytest.approx([s.value for s in single], abs=1e-5)
    assert len({round(s.value, 6) for s in batched}) == len(responses)  # different inputs, different rewards


def test_reward_model_compare(tiny_reward_model):
    from posttrain.judges.reward_model import RewardModelJudge

    judge = RewardModelJudge(tiny_reward_model, device="cpu")
    ra, rb = (s.value for s in judge.score_many([(PROMPT, "4", {}), (PROMPT, "five", {})]))
    v = judge.compare(PROMPT, "4", "five", {})
    assert v.winner == ("a" if ra > rb else "b")
    assert v.confidence == pytest.approx(1 / (1 + math.exp(-abs(ra - rb))))
    assert judge.compare(PROMPT, "five", "4", {}).winner == ("b" if ra > rb else "a")
    same = judge.compare(PROMPT, "4", "4", {})
    assert same.winner == "tie"


def test_reward_model_needs_one_label(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from posttrain.judges.reward_model import RewardModelJudge
    from posttrain.models.resolve import ModelError, load_tokenizer

    tok = load_tokenizer("tiny-random")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=2, pad_token_id=tok.pad_token_id)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="num_labels=2"):
        RewardModelJudge(str(tmp_path), device="cpu")
