"""The fast paths take the same steps as the plain path on tiny-random: packing, cached reference log-probs,
length-sorted batching (split-head log-probs are on in every run; tests/unit/ops compares them to the plain
path directly)."""

from __future__ import annotations

import pytest
import torch

from posttrain.models import reference as reference_mod
from posttrain.training.metrics import read_metrics

from .helpers import pair_rows, sft_rows, tiny_config, write_jsonl


def _losses(out):
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r.get("split") != "eval"]


def _varied_pairs(n=8):
    rows = pair_rows(n)
    for i, r in enumerate(rows):
        r["chosen"] += " extra words" * (i % 4)
        r["prompt"] += " please" * (3 - i % 4)
    return rows


def test_sft_packed_and_prefix_shared_equal_padded_step_by_step(tmp_path, one_torch_thread):
    """Every layout takes the padded path's steps; the default (prefix_sharing: auto) resolves to prefix sharing
    with the model's row budget, and the run folder records what ran."""
    import yaml

    from posttrain.trainers.sft import train_sft

    rows = sft_rows(8)
    for i, r in enumerate(rows):
        r["messages"][1]["content"] += " and more" * (i * 2)
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    losses = {}
    layouts = {"padded": ["data.prefix_sharing=false"], "packing": ["data.packing=true"], "default": [],
               "tree_rows": ["data.prefix_sharing=true", "data.tree_row_tokens=64"]}
    for layout, extra in layouts.items():
        out = tmp_path / layout
        train_sft(tiny_config("sft", data, out, *extra, "data.max_length=160", "optim.micro_batch_size=2",
                              "optim.lr=1e-3"))
        losses[layout] = _losses(out)
        resolved = yaml.safe_load((out / "config.yaml").read_text())["data"]
        assert resolved["prefix_sharing"] is (layout in ("default", "tree_rows"))
        if layout == "default":
            assert resolved["tree_row_tokens"] >= 512
    assert len(losses["packing"]) == 3
    for layout in ("packing", "default", "tree_rows"):
        assert losses[layout] == pytest.approx(losses["padded"], rel=1e-5, abs=1e-6), layout


def test_dpo_packing_and_cache_equal_plain_path_and_skip_reference(tmp_path, one_torch_thread):
    """Plain (padded, no cache) vs packed + cached, 2 epochs: same losses step by step. The cached run pays the
    reference only in epoch 1; a beta-sweep rerun on the same data pays nothing."""
    from posttrain.trainers.preference import train_preference

    data = write_jsonl(tmp_path / "pairs.jsonl", _varied_pairs(8))
    common = ["optim.batch_size=4", "optim.micro_batch_size=2", "optim.max_steps=null", "optim.epochs=2",
              "data.shuffle=true", "optim.lr=5e-3", "data.max_length=96"]
    plain = tmp_path / "plain"
    train_preference(tiny_config("dpo", data, plain, *common, "loss.reference_cache=false",
                                 "data.prefix_sharing=false"))
    cache_dir = tmp_path / "refcache"
    fast = tmp_path / "fast"
    before = reference_mod.reference_passes()
    train_preference(tiny_config("dpo", data, fast, *common, "data.packing=true",
                                 f"loss.reference_cache_dir={cache_dir}"))
    passes = reference_mod.reference_passes() - before
    assert passes == 4  # epoch 1: 2 steps x 2 micro-batches; epoch 2: all cached
    assert len(_losses(fast)) == 4
    assert _losses(fast) == pytest.approx(_losses(plain), rel=1e-5, abs=1e-6)
    assert list(cache_dir.glob("*/part-*.pt"))

    before = reference_mod.reference_passes()
    sweep = tmp_path / "sweep"
    train_preference(tiny_config("dpo", data, sweep, *common, "loss.beta=0.3",
                                 f"loss.reference_cache_dir={cache_dir}"))
    assert reference_mod.reference_passes() - before == 0
    # and the cached numbers are the reference's: the first step is policy == reference, loss log 2
    assert _losses(sweep)[0] == pytest.approx(0.6931472, abs=1e-5)


def test_dpo_prefix_sharing_equals_plain_path_and_computes_fewer_tokens(tmp_path, one_torch_thread, monkeypatch):
    """Prefix-tree micro-batches (each pair's prompt and the chat template's system prompt stored once), the
    default layout: the same losses step by step as padded batches, over 2 epochs, in one row per micro-batch
    or split into rows at a small node budget, while the model's forward passes see far fewer tokens."""
    import posttrain.ops.logprobs as logprobs
    from posttrain.trainers.preference import train_preference

    data = write_jsonl(tmp_path / "pairs.jsonl", _varied_pairs(8))
    common = ["optim.batch_size=4", "optim.micro_batch_size=2", "optim.max_steps=null", "optim.epochs=2",
              "data.shuffle=true", "optim.lr=5e-3", "data.max_length=96", "loss.reference_cache=false"]
    seen = {"tree": 0, "padded": 0, "rows": set()}
    real_tree, real_target = logprobs.tree_sequence_logps, logprobs.target_token_logps

    def count_tree(model, batch, *a, **kw):
        seen["tree"] += batch["num_nodes"]
        seen["rows"].add(batch["input_ids"].shape[0])
        return real_tree(model, batch, *a, **kw)

    def count_padded(model, input_ids, attention_mask, *a, **kw):
        seen["padded"] += int(attention_mask.sum())
        return real_target(model, input_ids, attention_mask, *a, **kw)

    monkeypatch.setattr(logprobs, "tree_sequence_logps", count_tree)
    monkeypatch.setattr(logprobs, "target_token_logps", count_padded)
    plain, shared, rows = tmp_path / "plain", tmp_path / "shared", tmp_path / "rows"
    train_preference(tiny_config("dpo", data, plain, *common, "data.prefix_sharing=false"))
    train_preference(tiny_config("dpo", data, shared, *common))  # the default: auto -> prefix sharing
    assert len(_losses(shared)) == 4
    assert _losses(shared) == pytest.approx(_losses(plain), rel=1e-5, abs=1e-6)
    assert 0 < seen["tree"] < 0.75 * seen["padded"]  # non-padding tokens of the padded run vs the tree's
    assert seen["rows"] == {1}
    train_preference(tiny_config("dpo", data, rows, *common, "data.tree_row_tokens=40"))  # a pair per row
    assert _losses(rows) == pytest.approx(_losses(plain), rel=1e-5, abs=1e-6)
    assert seen["rows"] == {1, 2}


def test_auto_prefix_sharing_is_off_under_flash_attention_and_an_explicit_true_is_an_error(tmp_path):
    from posttrain.config import ConfigError
    from posttrain.models.policy import load_base
    from posttrain.training.run import resolve_prefix_sharing

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(4))
    model, _, _ = load_base("tiny-random", None)
    cfg = tiny_config("dpo", data, tmp_path / "x")
    resolve_prefix_sharing(cfg, model)
    assert cfg.data.prefix_sharing is True and cfg.data.tree_row_tokens >= 512
    model.config._attn_implementation = "flash_attention_2"  # the decision reads only this attribute
    cfg = tiny_config("dpo", data, tmp_path / "x")
    resolve_prefix_sharing(cfg, model)
    assert cfg.data.prefix_sharing is False and cfg.data.tree_row_tokens is None
    with pytest.raises(ConfigError, match="4D mask"):
        resolve_prefix_sharing(tiny_config("dpo", data, tmp_path / "x", "data.prefix_sharing=true"), model)
    cfg = tiny_config("dpo", data, tmp_path / "x", "data.packing=true")  # packing: auto is off
    model.config._attn_implementation = "sdpa"
    resolve_prefix_sharing(cfg, model)
    assert cfg.data.prefix_sharing is False


def test_default_tree_row_tokens_follows_model_size():
    from types import SimpleNamespace

    from posttrain.ops.packing import default_tree_row_tokens

    assert default_tree_row_tokens(SimpleNamespace(hidden_size=576, intermediate_size=1536)) == 864  # SmolLM2-135M
    assert default_tree_row_tokens(SimpleNamespace(hidden_size=4096, intermediate_size=11008)) == 6176  # 7B Llama
    assert default_tree_row_tokens(SimpleNamespace(hidden_size=16, intermediate_size=64)) == 512


def test_prefix_sharing_and_packing_exclude_each_other_and_kto_and_reward_model_refuse_them(tmp_path):
    from posttrain.config import ConfigError
    from posttrain.trainers.kto import train_kto

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(4))
    with pytest.raises(ConfigError, match="pick one"):
        tiny_config("dpo", data, tmp_path / "x", "data.packing=true", "data.prefix_sharing=true")
    with pytest.raises(ConfigError, match="kto: data.packing and data.prefix_sharing are not supported"):
        train_kto(tiny_config("kto", data, tmp_path / "k", "data.prefix_sharing=true"))
    from posttrain.trainers.reward_model import train_reward_model

    with pytest.raises(ConfigError, match="reward-model: data.packing is not supported"):
        train_reward_model(tiny_config("reward-model", data, tmp_path / "r", "data.packing=true"))


def test_full_finetune_rerun_builds_no_reference_copy(tmp_path, one_torch_thread, monkeypatch):
    import posttrain.trainers.preference as pref

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(8))
    built = []
    real = pref.build_reference
    monkeypatch.setattr(pref, "build_reference", lambda *a: built.append(1) or real(*a))
    # runs share reference log-probs through one cache folder (the default is each run's own <output_dir>/refcache)
    args = ["peft.method=none", "optim.lr=1e-4", f"loss.reference_cache_dir={tmp_path / 'shared'}"]
    before = reference_mod.reference_passes()
    pref.train_preference(tiny_config("dpo", data, tmp_path / "a", *args, "optim.max_steps=1"))  # half the data
    assert built == [1] and list((tmp_path / "shared").glob("*/part-*.pt"))
    assert reference_mod.reference_passes() - before == 1
    before = reference_mod.reference_passes()
    pref.train_preference(tiny_config("dpo", data, tmp_path / "b", *args, "optim.max_steps=2"))
    assert built == [1, 1] and reference_mod.reference_passes() - before == 1  # step 1 cached, step 2 not
    before = reference_mod.reference_passes()
    pref.train_preference(tiny_config("dpo", data, tmp_path / "c", *args, "optim.max_steps=2", "loss.type=ipo"))
    assert built == [1, 1] and reference_mod.reference_passes() - before == 0  # all cached: no copy, no pass


def test_length_sorted_order_is_a_seeded_permutation_and_groups_lengths():
    from posttrain.training.loop import epoch_order, step_indices

    lengths = [((i * 37) % 101) + 1 for i in range(100)]
    kw = dict(num_items=100, batch_size=4, seed=3, shuffle=True, lengths=lengths, sort_window=5)
    order = epoch_order(0, **kw)
    assert sorted(order) == list(range(100)) and order == epoch_order(0, **kw)
    assert order != epoch_order(1, **kw)
    spread = [max(lengths[i] for i in order[s:s + 4]) - min(lengths[i] for i in order[s:s + 4])
              for s in range(0, 100, 4)]
    plain = epoch_order(0, **{**kw, "sort_window": 0})
    plain_spread = [max(lengths[i] for i in plain[s:s + 4]) - min(lengths[i] for i in plain[s:s + 4])
                    for s in range(0, 100, 4)]
    assert sum(spread) < sum(plain_spread) / 3
    memo: dict = {}
    steps = [step_indices(s, steps_per_epoch=25, **kw, _orders=memo) for s in range(30)]
    assert steps == [step_indices(s, steps_per_epoch=25, **kw) for s in range(30)]  # resume needs only the step


def test_sort_by_length_resume_reproduces_next_steps(tmp_path, one_torch_thread):
    import shutil

    from posttrain.trainers.sft import train_sft

    rows = sft_rows(16)
    for i, r in enumerate(rows):
        r["messages"][1]["content"] += " more" * (i % 5)
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    args = ["data.sort_by_length=true", "data.sort_window=2", "data.shuffle=true", "optim.max_steps=6",
            "optim.micro_batch_size=2", "train.save_every=2", "optim.lr=1e-3"]
    full = tmp_path / "full"
    train_sft(tiny_config("sft", data, full, *args))
    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(full / "checkpoints" / "step-000002", part / "checkpoints" / "step-000002")
    (part / "metrics.jsonl").write_text("".join(
        line + "\n" for line in (full / "metrics.jsonl").read_text().splitlines()[:2]))
    train_sft(tiny_config("sft", data, part, *args, "train.resume=true"))
    assert _losses(part) == pytest.approx(_losses(full), rel=1e-6, abs=1e-7)
    assert len(_losses(full)) == 6  # crosses into the second epoch (4 steps per epoch)


@pytest.mark.parametrize("chat", [False, True], ids=["raw", "chat-template"])
def test_generation_loop_matches_generate_row_for_row(one_torch_thread, smollm2_tokenizer, chat):
    """decode=loop (finished rows leave the batch; a repeated prompt and the prefix common to all prompts, here
    the chat template's system prompt, are run once) gives every row the same tokens as decode=generate: greedy
    and sampled rows, nucleus and full-vocabulary rows, different token limits, in one batch."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from posttrain.generation.hf import MIN_SHARED_PREFIX, HFGenerator, shared_prefix_len
    from posttrain.generation.types import RowSpec
    from posttrain.models.builtin import TINY_RANDOM_SHAPE

    tok = smollm2_tokenizer
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.eos_token_id, tie_word_embeddings=False, initializer_range=0.1,
                             **TINY_RANDOM_SHAPE)
        model = LlamaForCausalLM(config).eval()
    texts = ("hello there", "a much longer prompt about tea", "x", "what is two plus two")
    if chat:
        texts = tuple(tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                              tokenize=False) for t in texts)
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert (shared_prefix_len(prompts) >= MIN_SHARED_PREFIX) == chat
    rows = [RowSpec(prompts[i % 4], temperature=t, top_p=p, max_new_tokens=m, seed=100 + i)
            for i, (t, p, m) in enumerate([(0.0, 1.0, 6), (1.0, 0.9, 12), (0.7, 1.0, 3), (1.3, 0.5, 12),
                                           (1.0, 1.0, 9), (0.0, 1.0, 12), (0.9, 0.8, 1), (1.0, 0.95, 7)])]
    a = HFGenerator(model, tok, batch_size=8, decode="generate").generate_rows(rows)
    b = HFGenerator(model, tok, batch_size=8, decode="loop").generate_rows(rows)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert [o.finish_reason for o in a] == [o.finish_reason for o in b]
    assert sorted({len(o.token_ids) for o in b}) == [1, 3, 6, 7, 9, 12]  # rows really left at different steps


def test_reward_model_tree_rows_give_the_padded_scores_and_gradients(one_torch_thread):
    """The reward model's prefix-tree path: scores read from the score head at each sequence's last node equal the
    classifier's own pooled scores on the padded batch, and so do the gradients (one row, and pairs split over
    rows at a small budget)."""
    from posttrain.config import ModelSection, PeftSection
    from posttrain.trainers.reward_model import (RenderedPair, collate_rm, collate_rm_tree, load_reward_model,
                                                 tree_rewards)

    torch.manual_seed(0)
    model, _ = load_reward_model(ModelSection(name="tiny-random"), PeftSection(method="lora", r=4, alpha=8), seed=0,
                                 pad_token_id=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
    system = torch.randint(1, 120, (6,)).tolist()
    pairs = []
    for prompt_len, c_len, r_len in ((5, 4, 7), (9, 2, 3), (3, 6, 6)):
        prompt = system + torch.randint(1, 120, (prompt_len,)).tolist()
        pairs.append(RenderedPair(prompt + torch.randint(1, 120, (c_len,)).tolist(),
                                  prompt + torch.randint(1, 120, (r_len,)).tolist(), 0.0, c_len, r_len))
    padded = collate_rm(pairs, pad_token_id=0)
    expected = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits[:, 0]
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, 1.5, -1.0])
    (expected * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads
    for budget, rows in ((None, 1), (24, 3)):
        model.zero_grad()
        tree = collate_rm_tree(pairs, budget)
        assert tree["input_ids"].shape[0] == rows
        got = tree_rewards(model, tree)
        assert torch.allclose(got, expected.detach(), atol=1e-5), (got, expected)
        (got * weights).sum().backward()
        for n, p in model.named_parameters():
            if n in grads:
                assert torch.allclose(p.grad, grads[n], atol=1e-5), n


def test_reward_model_default_prefix_sharing_takes_the_padded_steps(tmp_path, one_torch_thread):
    import yaml

    from posttrain.trainers.reward_model import train_reward_model

    data = write_jsonl(tmp_path / "pairs.jsonl", _varied_pairs(8))
    common = ["optim.batch_size=4", "optim.micro_batch_size=2", "optim.max_steps=4", "optim.lr=5e-3",
              "data.max_length=96"]
    train_reward_model(tiny_config("reward-model", data, tmp_path / "plain", *common, "data.prefix_sharing=false"))
    train_reward_model(tiny_config("reward-model", data, tmp_path / "tree", *common))
    assert yaml.safe_load((tmp_path / "tree" / "config.yaml").read_text())["data"]["prefix_sharing"] is True
    assert len(_losses(tmp_path / "tree")) == 4
    assert _losses(tmp_path / "tree") == pytest.approx(_losses(tmp_path / "plain"), rel=1e-5, abs=1e-6)
