"""The vLLM backend (GPU): the same ``generate`` / ``generate_rows`` as ``HFGenerator``.

Each row is one vLLM request with ``n=1`` and the row's own seed (``SamplingParams(seed=...)`` makes a request's
sampling independent of the rest of the batch), given as token ids (``TokensPrompt``) so the prompt is exactly
the chat-template rendering posttrain uses everywhere. N candidates of one prompt are N requests with the same
prompt; vLLM's prefix cache computes that prompt once. vLLM schedules its own batches, so ``batch_size`` here
only sets how many rows are handed over per call. No token streaming: ``on_token`` is never called, the text
arrives when a call finishes. Seeds are vLLM's own, so vLLM and HF candidates differ for the same seed.
"""

from __future__ import annotations

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
        import vllm
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
