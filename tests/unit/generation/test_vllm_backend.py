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
