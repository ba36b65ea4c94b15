"""The vLLM backend: a clear error without vllm, and the mapping onto vLLM's documented API (checked against a
stand-in module, since vllm needs a GPU)."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

from posttrain.generation.types import BackendError, row_seed


def test_missing_vllm_is_one_clear_line(monkeypatch):
    from posttrain.generation.backends import load_generator

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(BackendError, match="backend: vllm requested but vllm is not installed"):
        load_generator("tiny-random", backend="vllm")


def test_requests_map_onto_sampling_params_and_token_prompts(monkeypatch):
    calls = []

    class FakeLLM:
        def generate(self, prompts, sampling_params, use_tqdm):
            calls.append((prompts, sampling_params))
            return [SimpleNamespace(outputs=[SimpleNamespace(text=f"t{i}", token_ids=[5, 2] if i % 2 else [5, 6, 7],
                                                             finish_reason="stop" if i % 2 else "length")])
                    for i, _ in enumerate(prompts)]

    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = lambda **kw: kw
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    from posttrain.generation.vllm_backend import VLLMGenerator

    gen = VLLMGenerator(FakeLLM(), SimpleNamespace(eos_token_id=2), batch_size=3)
    outs = gen.generate([[1, 2], [3]], n=2, temperature=[0.0, 0.9], top_p=0.8, max_new_tokens=7, seed=4,
                        keys=["a", "b"])
    assert [[o.text for o in c] for c in outs] == [["t0", "t1"], ["t2", "t0"]]  # 4 rows in calls of 3 + 1
    assert outs[0][1].finish_reason == "stop" and outs[0][1].completion_tokens == 2
    assert outs[0][0].finish_reason == "length"
    prompts = [p for c in calls for p in c[0]]
    params = [p for c in calls for p in c[1]]
    assert prompts == [{"prompt_token_ids": [1, 2]}] * 2 + [{"prompt_token_ids": [3]}] * 2
    assert params[1] == {"n": 1, "temperature": 0.9, "top_p": 0.8, "max_tokens": 7, "seed": row_seed(4, "a", 1),
                         "stop": None, "stop_token_ids": [2], "skip_special_tokens": True}
    assert params[0]["seed"] is None and params[0]["temperature"] == 0.0  # greedy


def _lora_policy():
    import torch

    from posttrain.config import ModelSection, PeftSection
    from posttrain.models.policy import load_policy

    policy, tok, _ = load_policy(ModelSection(name="tiny-random"), PeftSection(method="lora", r=4, alpha=8), seed=0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # a trained adapter: merging it changes the weights
    return policy, tok


def test_merged_weights_are_the_merged_model_named_as_a_plain_checkpoint():
    import copy

    import torch

    from posttrain.generation.vllm_backend import merged_weights

    policy, _ = _lora_policy()
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        before = policy(input_ids=ids).logits
        plain = copy.deepcopy(policy).merge_and_unload()
    expected = dict(plain.named_parameters())
    unmerged = {n.replace(".base_layer", ""): p.detach().clone()
                for n, p in policy.get_base_model().named_parameters() if "lora_" not in n}
    with merged_weights(policy) as weights:
        names = [n for n, _ in weights]
        assert sorted(names) == sorted(expected)  # no lora_ tensors, no ".base_layer" in a name
        for name, tensor in weights:
            assert torch.allclose(tensor, expected[name], atol=1e-6), name
        assert sum(not torch.equal(t, unmerged[n]) for n, t in weights) >= 7  # the adapted projections
    with torch.no_grad():
        assert torch.allclose(policy(input_ids=ids).logits, before, atol=1e-5)  # unmerged again


def test_policy_synced_vllm_pushes_the_current_weights_before_each_rollout(monkeypatch):
    """The stand-in LLM records what posttrain calls: the colocated engine's construction, a full weight push
    (then a prefix-cache reset) before every generate call, with the weights the policy has at that moment."""
    import torch

    events = []

    class EngineModel:
        def load_weights(self, weights):
            (name, tensor), = weights
            events.append(("load", name, tensor.clone()))

    class FakeLLM:
        def __init__(self, **kwargs):
            self.kwargs = kwargs
            self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(
                driver_worker=SimpleNamespace(model_runner=SimpleNamespace(model=EngineModel()))))

        def reset_prefix_cache(self):
            events.append(("reset",))

        def generate(self, prompts, sampling_params, use_tqdm):
            events.append(("generate", len(prompts)))
            return [SimpleNamespace(outputs=[SimpleNamespace(text="x", token_ids=[7], finish_reason="stop")])
                    for _ in prompts]

    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = lambda **kw: kw
    vllm.LLM = FakeLLM
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    from posttrain.generation.types import candidate_rows
    from posttrain.generation.vllm_backend import PolicySyncedVLLM

    policy, tok = _lora_policy()
    gen = PolicySyncedVLLM(policy, tok, "/merged/start", batch_size=8, rank=1, gpu_memory_utilization=0.25)
    assert gen.llm.kwargs == {"model": "/merged/start", "tokenizer": "/merged/start", "seed": 1,
                              "gpu_memory_utilization": 0.25, "distributed_executor_backend": "external_launcher"}
    rows = candidate_rows([[1, 2, 3]], n=2, temperature=1.0, top_p=1.0, max_new_tokens=4, seed=0, keys=["k"])
    assert [o.text for o in gen.generate_rows(rows)] == ["x", "x"]
    n_weights = len(dict(policy.get_base_model().named_parameters())) - sum(
        "lora_" in n for n, _ in policy.named_parameters())
    kinds = [e[0] for e in events]
    assert kinds == ["load"] * n_weights + ["reset", "generate"]
    q_name = next(e[1] for e in events if e[0] == "load" and "q_proj" in e[1])
    first = next(e[2] for e in events if e[0] == "load" and e[1] == q_name)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(1.0)  # an optimizer step
    events.clear()
    gen.generate_rows(rows)
    second = next(e[2] for e in events if e[0] == "load" and e[1] == q_name)
    assert not torch.allclose(first, second)  # the engine samples from the updated policy


def test_rl_with_vllm_backend_but_no_vllm_fails_before_writing(monkeypatch, tmp_path):
    import json

    from posttrain.config import ConfigError, load_config
    from posttrain.trainers.grpo import train_grpo

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say hi.", "answer": "hi"}) + "\n")
    monkeypatch.setitem(sys.modules, "vllm", None)
    cfg = load_config("grpo", None, [f"data.train={prompts}", "model.name=tiny-random", "rollout.backend=vllm",
                                     f"train.output_dir={tmp_path / 'out'}", "optim.batch_size=1"])
    with pytest.raises(BackendError, match="vllm is not installed"):
        train_grpo(cfg)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="rejection.backend"):
        load_config("rejection-sft", None, [f"data.train={prompts}", "rollout.backend=vllm"])
