"""The vLLM backend (GPU): the same ``generate`` / ``generate_rows`` as ``HFGenerator``.

Each row is one vLLM request with ``n=1`` and the row's own seed (``SamplingParams(seed=...)`` makes a request's
sampling independent of the rest of the batch), given as token ids (``TokensPrompt``) so the prompt is exactly
the chat-template rendering posttrain uses everywhere. N candidates of one prompt are N requests with the same
prompt; vLLM's prefix cache computes that prompt once. vLLM schedules its own batches, so ``batch_size`` here
only sets how many rows are handed over per call. No token streaming: ``on_token`` is never called, the text
arrives when a call finishes. Seeds are vLLM's own, so vLLM and HF candidates differ for the same seed.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Sequence

from posttrain.generation.types import (
    BackendError,
    GenOutput,
    RowSpec,
    TokenCallback,
    candidate_rows,
    group,
)

NOT_INSTALLED = ("backend: vllm requested but vllm is not installed (it needs a CUDA GPU: pip install vllm); "
                 "use backend: hf")


def import_vllm():
    try:
        import vllm  # optional dependency
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
    except ImportError:
        raise BackendError(NOT_INSTALLED) from None
    return vllm, SamplingParams, TokensPrompt


class VLLMGenerator:
    """``llm``: a ``vllm.LLM``; ``tokenizer``: the posttrain tokenizer of the same model (for EOS)."""

    def __init__(self, llm, tokenizer, *, batch_size: int = 1024):
        _, self._SamplingParams, self._TokensPrompt = import_vllm()
        self.llm, self.tokenizer, self.batch_size = llm, tokenizer, batch_size

    @classmethod
    def from_path(cls, path: str, tokenizer, *, batch_size: int = 1024, seed: int = 0, **llm_kwargs):
        vllm, _, _ = import_vllm()
        return cls(vllm.LLM(model=path, tokenizer=path, seed=seed, **llm_kwargs), tokenizer, batch_size=batch_size)

    def generate(self, prompt_ids: list[list[int]], *, n: int, temperature, top_p, max_new_tokens: int, seed: int,
                 keys: Sequence[str] | None = None) -> list[list[GenOutput]]:
        rows = candidate_rows(prompt_ids, n=n, temperature=temperature, top_p=top_p,
                              max_new_tokens=max_new_tokens, seed=seed, keys=keys)
        return group(self.generate_rows(rows), n)

    def _params(self, row: RowSpec):
        return self._SamplingParams(
            n=1, temperature=row.temperature, top_p=row.top_p, max_tokens=row.max_new_tokens,
            seed=row.seed if row.temperature > 0 else None, stop=list(row.stop) or None,
            stop_token_ids=[self.tokenizer.eos_token_id], skip_special_tokens=True,
        )

    def generate_rows(self, rows: Sequence[RowSpec], on_token: TokenCallback | None = None) -> list[GenOutput]:
        # on_token is not called: vLLM's offline LLM returns whole outputs, so a streaming caller gets the text
        # when the call finishes (the server then sends it as one chunk).
        outputs: list[GenOutput] = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start: start + self.batch_size]
            results = self.llm.generate([self._TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in chunk],
                                        sampling_params=[self._params(r) for r in chunk], use_tqdm=False)
            for result in results:  # vLLM returns outputs in the order of the prompts
                c = result.outputs[0]
                outputs.append(GenOutput(c.text, list(c.token_ids), "stop" if c.finish_reason == "stop" else "length"))
        return outputs


@contextlib.contextmanager
def merged_weights(policy):
    """The policy's weights as (name, tensor) pairs named as a plain Hugging Face checkpoint of its architecture
    names them (what vLLM's ``load_weights`` takes), with any LoRA/DoRA adapter merged into the base weights for
    the duration of the block (then unmerged: the tensors are the live parameters, valid inside the block only).
    Adapter tensors themselves are left out; tied weights appear once."""
    peft = hasattr(policy, "peft_config") and hasattr(policy, "merge_adapter")
    if peft:
        policy.merge_adapter()
    try:
        base = policy.get_base_model() if peft else policy
        items = []
        for name, param in base.named_parameters():
            if "lora_" in name or ".original_module." in name:
                continue  # merged already / the frozen copy of a module PEFT trains in full
            name = name.replace(".base_layer", "").replace(".modules_to_save.default", "")
            items.append((name, param.data))
        yield items
    finally:
        if peft:
            policy.unmerge_adapter()


class PolicySyncedVLLM:
    """Rollouts for PPO/GRPO with vLLM, colocated with training: a ``vllm.LLM`` built once from the starting
    weights (``path``), into which the current policy's weights (adapter merged) are pushed before every
    ``generate_rows`` call, so each step samples from the policy being trained. Under torchrun every process has
    its own engine on its own GPU (vLLM's ``external_launcher`` executor, seed = rank)."""

    def __init__(self, policy, tokenizer, path: str, *, batch_size: int, rank: int = 0,
                 gpu_memory_utilization: float = 0.3):
        vllm, _, _ = import_vllm()
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        if "MASTER_PORT" not in os.environ:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(s.getsockname()[1])
        self.policy = policy
        self.llm = vllm.LLM(model=path, tokenizer=path, seed=rank, gpu_memory_utilization=gpu_memory_utilization,
                            distributed_executor_backend="external_launcher")
        self.inner = VLLMGenerator(self.llm, tokenizer, batch_size=batch_size)

    def push_weights(self) -> None:
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        with merged_weights(self.policy) as weights:
            for name, tensor in weights:
                engine_model.load_weights([(name, tensor)])
        self.llm.reset_prefix_cache()  # cached prefixes hold the old weights' keys and values

    def generate_rows(self, rows: Sequence[RowSpec], on_token: TokenCallback | None = None) -> list[GenOutput]:
        self.push_weights()
        return self.inner.generate_rows(rows, on_token)
