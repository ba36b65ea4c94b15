"""Training on top of an adapter lineage in bfloat16 (``model.dtype: bfloat16``, or ``auto`` on a GPU): the lineage's
LoRA adapters stay unmerged, frozen and active beside the adapter the stage trains (models/policy.py::load_policy),
because merged into bfloat16 weights a LoRA update mostly rounds away: the DPO stage would start from, and be
referenced to, an SFT model with much of its update gone. The reference of a preference loss is the lineage alone,
the saved folder holds only the trained adapter, and float32 is merged exactly as before."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from .helpers import pair_rows, sft_rows, tiny_config, write_jsonl
from .test_generation_dtype import _lora

pytestmark = pytest.mark.usefixtures("one_torch_thread")
IDS = torch.tensor([[1, 5, 9, 20, 33, 7, 12, 40]])


def _sft_lineage(folder, base_dir, spread: float) -> str:
    """An SFT output as posttrain writes one (adapter + lineage file) on tiny-random; ``spread``: std of lora_B."""
    from posttrain.models.policy import LINEAGE_FILE

    _lora(folder, base_dir, 0, spread=spread, dropout=0.5)
    (folder / LINEAGE_FILE).write_text(json.dumps({"base": str(base_dir), "merged_adapters": [], "adapter": True}))
    return str(folder)


def _trained_sft(tmp_path) -> str:
    """A real tiny SFT run's LoRA folder (``train_sft`` on the helpers' rows)."""
    from posttrain.trainers.sft import train_sft

    train_sft(tiny_config("sft", write_jsonl(tmp_path / "sft.jsonl", sft_rows()), tmp_path / "sft"))
    return str(tmp_path / "sft" / "model")


def _cfgs(name: str, dtype: str, method: str = "lora"):
    model = SimpleNamespace(name=name, adapter=None, cache_dir=None, dtype=dtype, trust_remote_code=False,
                            gradient_checkpointing=False, checkpoint_every=1)
    peft = SimpleNamespace(method=method, r=4, alpha=8, dropout=0.5, target_modules=["q_proj", "v_proj"])
    return model, peft


def _lineage_delta(layer) -> torch.Tensor:
    return sum(layer.get_delta_weight(a).float() for a in layer.active_adapters if a.startswith("lineage_"))


def test_bfloat16_policy_keeps_its_lineage_unmerged_and_references_it(tmp_path, tiny_model_dir):
    from posttrain.models.adapters import lineage_adapters
    from posttrain.models.policy import load_base, load_for_generation, load_policy
    from posttrain.models.reference import reference_model, reference_weights

    sft = _sft_lineage(tmp_path / "sft", tiny_model_dir, 3e-4)  # a real fine-tune's size: ~1% of the weights
    policy, _, lineage = load_policy(*_cfgs(sft, "bfloat16"), seed=0)
    assert lineage_adapters(policy) == ["lineage_0"] and lineage["merged_adapters"] == [sft]
    assert {n.split(".")[-2] for n, p in policy.named_parameters() if p.requires_grad} == {"default"}
    layer = policy.base_model.model.model.layers[0].self_attn.q_proj
    assert sorted(layer.active_adapters) == ["default", "lineage_0"]
    assert layer.base_layer.weight.dtype == torch.bfloat16 and layer.lora_A["lineage_0"].weight.dtype == torch.float32

    # the SFT update reaches the policy whole; merged into bfloat16 weights (what training did before) it does not
    merged32 = load_base(sft, None, dtype="float32")[0].model.layers[0].self_attn.q_proj.weight.detach()
    base32 = load_base(tiny_model_dir, None, dtype="float32")[0].model.layers[0].self_attn.q_proj.weight.detach()
    merged16 = load_base(sft, None, dtype="bfloat16")[0].model.layers[0].self_attn.q_proj.weight.detach().float()
    delta = merged32 - base32
    assert float((_lineage_delta(layer).detach() - delta).norm() / delta.norm()) < 1e-4
    assert float(((merged16 - layer.base_layer.weight.detach().float()) - delta).norm() / delta.norm()) > 0.3

    # the reference is the lineage alone, dropout off even in train mode: the SFT model as generation loads it
    policy.train()
    with torch.no_grad():
        with reference_model(policy, None) as ref:
            ref_logits = ref(IDS).logits.float()
        policy_logits = policy(IDS).logits.float()
        sft_logits = load_for_generation(sft, dtype="bfloat16")(IDS).logits.float()
        base_logits = load_base(tiny_model_dir, None, dtype="bfloat16")[0](IDS).logits.float()
    assert torch.equal(ref_logits, sft_logits) and torch.equal(policy_logits, ref_logits)  # lora_B starts at zero
    assert not torch.equal(ref_logits, base_logits)
    assert sorted(layer.active_adapters) == ["default", "lineage_0"]  # restored after the reference pass
    assert {p.requires_grad for n, p in policy.named_parameters() if "lineage_0" in n} == {False}
    keys = [k for k, _ in reference_weights(policy, None)]
    assert any("lineage_0" in k for k in keys) and not any(".default." in k for k in keys)


def test_meta_build_matches_and_float32_still_merges(tmp_path, tiny_model_dir):
    """A process that receives its weights (FSDP2, every process but the first) builds the same modules on the meta
    device; in float32 the lineage is merged into the weights as before (no lineage adapters)."""
    from posttrain.models.adapters import lineage_adapters
    from posttrain.models.policy import load_policy

    sft = _sft_lineage(tmp_path / "sft", tiny_model_dir, 3e-4)
    loaded = load_policy(*_cfgs(sft, "bfloat16"), seed=0)[0].state_dict()
    meta = load_policy(*_cfgs(sft, "bfloat16"), seed=0, meta=True)[0].state_dict()
    assert {k: (v.shape, v.dtype) for k, v in loaded.items()} == {k: (v.shape, v.dtype) for k, v in meta.items()}
    assert all(v.is_meta for k, v in meta.items() if ".default." not in k)  # nothing read (the new adapter is
    # initialised where PEFT puts it; the first process's values replace it when the model is sharded)
    fp32 = load_policy(*_cfgs(sft, "float32"), seed=0)[0]
    assert lineage_adapters(fp32) == [] and not any("lineage_" in k for k in fp32.state_dict())
    full = load_policy(*_cfgs(sft, "bfloat16", method="none"), seed=0)[0]  # full fine-tuning trains merged weights
    assert not any("lora_" in k for k in full.state_dict())
    assert all(p.requires_grad for p in full.parameters())  # every one of them (PEFT loads a lineage frozen)
    assert all(p.requires_grad for p in load_policy(*_cfgs(sft, "float32", method="none"), seed=0)[0].parameters())


def test_full_fine_tuning_dpo_from_an_sft_lineage(tmp_path):
    """DPO with ``peft.method=none`` from a LoRA SFT folder trains the merged weights (before session 40 it stopped
    with "the model has no trainable parameters": the merged lineage kept PEFT's frozen flags) and references them:
    the first loss is log 2, every weight is saved, and they moved from the SFT model's."""
    from safetensors.torch import load_file

    from posttrain.models.policy import load_for_generation
    from posttrain.trainers.preference import train_preference
    from posttrain.training.metrics import read_metrics

    sft = _trained_sft(tmp_path)
    out = tmp_path / "dpo"
    train_preference(tiny_config("dpo", write_jsonl(tmp_path / "pairs.jsonl", pair_rows()), out,
                                 f"model.name={sft}", "peft.method=none", "optim.lr=1e-3", "optim.max_steps=2"))
    rows = [r for r in read_metrics(out / "metrics.jsonl") if r.get("split") != "eval"]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6), rows[0]
    saved = load_file(out / "model" / "model.safetensors")
    before = load_for_generation(sft, dtype="float32").state_dict()
    assert set(saved) <= set(before) and not any("lora_" in k for k in saved)
    assert any(not torch.equal(saved[k], before[k]) for k in saved if "layers.0." in k)


def test_dpo_in_bfloat16_from_an_sft_lineage(tmp_path):
    """SFT (float32), then DPO at ``model.dtype=bfloat16`` from its folder: the first DPO step sees policy ==
    reference exactly (loss log 2: the reference is the SFT lineage, not the base), the saved folder holds the DPO
    adapter only and names the SFT adapter in its lineage, and the result loads both ways."""
    from safetensors.torch import load_file

    from posttrain.models.policy import load_for_generation, resolve_lineage
    from posttrain.trainers.preference import train_preference
    from posttrain.training.metrics import read_metrics

    sft = _trained_sft(tmp_path)
    out = tmp_path / "dpo"
    train_preference(tiny_config("dpo", write_jsonl(tmp_path / "pairs.jsonl", pair_rows()), out,
                                 f"model.name={sft}", "model.dtype=bfloat16", "optim.max_steps=2"))
    rows = [r for r in read_metrics(out / "metrics.jsonl") if r.get("split") != "eval"]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6), rows[0]
    saved = load_file(out / "model" / "adapter_model.safetensors")
    assert saved and not any("lineage" in k for k in saved)
    assert resolve_lineage(str(out / "model"))[1] == [str((tmp_path / "sft" / "model").resolve()),
                                                     str((out / "model").resolve())]
    model = load_for_generation(str(out / "model"), dtype="bfloat16")
    assert sorted(model.model.layers[0].self_attn.q_proj.active_adapters) == ["lineage_0", "lineage_1"]
    assert load_for_generation(str(out / "model"), dtype="float32").model.layers[0].self_attn.q_proj.weight.dtype \
        == torch.float32


def test_grpo_in_bfloat16_from_an_sft_lineage_references_the_lineage(tmp_path, tiny_model_dir):
    """The online trainers load their policy the same way: GRPO at bfloat16 from an SFT folder measures its KL
    against the SFT lineage (zero before the first update; against the base it would not be), and saves its own
    adapter only."""
    from safetensors.torch import load_file

    from posttrain.trainers.grpo import train_grpo
    from posttrain.training.metrics import read_metrics

    from .test_rl import rl_config

    sft = _sft_lineage(tmp_path / "sft", tiny_model_dir, 0.05)
    train_grpo(rl_config("grpo", tmp_path, f"model.name={sft}", "model.dtype=bfloat16", "optim.batch_size=2",
                         "optim.micro_batch_size=8", "optim.max_steps=2", "grpo.num_generations=4",
                         "grpo.beta=0.04", "data.eval=null"))
    rows = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert rows[0]["kl"] == 0.0 and rows[1]["kl"] > 0.0, [r["kl"] for r in rows]
    saved = load_file(tmp_path / "out" / "model" / "adapter_model.safetensors")
    assert saved and not any("lineage" in k for k in saved)
