import pytest


@pytest.fixture(scope="session")
def tokenizer(smollm2_tokenizer):
    if smollm2_tokenizer.pad_token_id is None:
        smollm2_tokenizer.pad_token = smollm2_tokenizer.eos_token
    return smollm2_tokenizer


@pytest.fixture(scope="session")
def varied_model(tokenizer):
    """A tiny random Llama whose greedy outputs differ by prompt (tiny-random's tied embeddings just repeat
    the last prompt token), so batch-size invariance is tested on real variety."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from posttrain.models.builtin import TINY_RANDOM_SHAPE

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                             tie_word_embeddings=False, initializer_range=0.1, **TINY_RANDOM_SHAPE)
        return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def prompt_ids(tokenizer):
    texts = ["hi there", "tell me a long story about cats and dogs and rivers", "x", "what is 2+2?", "name a tea"]
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                              tokenize=False) for t in texts]
    return [tokenizer(r, add_special_tokens=False)["input_ids"] for r in rendered]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tests run tiny models on a shared 2-core box, where two intra-op threads fighting other processes
    make each op ~10x slower than one thread; restored afterwards so other tests are unaffected."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
