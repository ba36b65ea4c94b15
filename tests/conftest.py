import os

import pytest


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2's real tokenizer and chat template, from the builtin GGUF (cached after the first build)."""
    from posttrain.models.builtin import load_builtin_tokenizer

    return load_builtin_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir():
    from posttrain.models.builtin import tiny_random_dir

    return tiny_random_dir()


@pytest.fixture
def one_torch_thread():
    """Tiny models on a shared 2-core box: one intra-op thread is ~10x faster than two fighting other jobs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
