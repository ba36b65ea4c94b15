"""Sampling N candidates per prompt: the HF backend always (``hf.py``), vLLM when installed
(``vllm_backend.py``); the candidate file and its resume (``candidates.py``); the dry-run cost (``cost.py``)."""

from posttrain.generation.types import BackendError, GenOutput, Generator, RowSpec

__all__ = ["BackendError", "GenOutput", "Generator", "RowSpec"]
