"""Each trainer, 3 steps on tiny-random: loss finite, trained parameters changed, reference untouched."""

from __future__ import annotations

import json
import math

import pytest
import torch

from posttrain.models.resolve import load_causal_lm
from posttrain.training.metrics import read_metrics

from .helpers import kto_rows, pair_rows, sft_rows, tiny_config, write_jsonl


def _base_state():
    return {k: v.clone() for k, v in load_causal_lm("tiny-random").state_dict().items()}


def _check_run(out, expect_adapter: bool):
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["inputs"]["data.train"]["hash"].startswith("sha256:")
    assert (out / "config.yaml").exists()
    rows = [r for r in read_metrics(out / "metrics.jsonl") if r.get("split") != "eval"]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and r["tokens"] > 0 for r in rows)
    assert (out / "model" / ("adapter_model.safetensors" if expect_adapter else "model.safetensors")).exists()
    return rows, manifest


def _lora_weights_changed(out):
    from safetensors.torch import load_file

    weights = load_file(out / "model" / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b, "no LoRA B matrices saved"
    # LoRA B starts at zero: any non-zero entry shows the adapter trained.
    assert any(float(v.abs().max()) > 0 for v in lora_b)


def test_sft_lora(tmp_path):
    from posttrain.trainers.sft import train_sft

    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows())
    summary = train_sft(tiny_config("sft", data, tmp_path / "out"))
    rows, _ = _check_run(tmp_path / "out", expect_adapter=True)
    assert rows[-1]["loss"] < rows[0]["loss"]  # lr 1e-2 on a fixed batch: the NLL must fall
    assert summary["train/kept"] == 16
    _lora_weights_changed(tmp_path / "out")


@pytest.mark.parametrize("loss_type", ["dpo", "ipo", "robust", "hinge", "simpo", "orpo"])
def test_preference_losses_lora(tmp_path, loss_type):
    from posttrain.trainers.preference import train_preference

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())
    extra = ["loss.label_smoothing=0.1"] if loss_type == "robust" else []
    summary = train_preference(tiny_config("dpo", data, tmp_path / "out", f"loss.type={loss_type}", *extra))
    rows, _ = _check_run(tmp_path / "out", expect_adapter=True)
    if loss_type in ("dpo", "robust"):
        # Step 1 runs with policy == reference, so DPO's loss is exactly log 2.
        assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert "rewards/accuracy" in rows[-1] and "train/rewards/margins" in summary
    _lora_weights_changed(tmp_path / "out")


def test_mix_sft_adds_the_sft_nll_of_the_mixed_rows(tmp_path):
    """mix_sft: with every pair bringing an SFT row, step 1's loss is DPO's log 2 plus weight x the mean of the
    rows' token-mean NLL (logged as sft/nll); weight 0 leaves the DPO losses unchanged; the SFT file is a hashed
    input; a fraction mixes the rows ``mix_draw`` picks from the pairs' content."""
    from posttrain.data.collate import sequence_key
    from posttrain.trainers.preference import mix_draw, train_preference

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())
    sft = write_jsonl(tmp_path / "sft.jsonl", sft_rows())
    runs = {}
    for name, extra in {"plain": [], "w0": ["mix_sft.weight=0"], "w2": ["mix_sft.weight=2"],
                        "half": ["mix_sft.fraction=0.5"]}.items():
        mix = [f"mix_sft.path={sft}"] + ([] if name == "half" else ["mix_sft.fraction=1.0"]) if extra else []
        train_preference(tiny_config("dpo", data, tmp_path / name, *mix, *extra))
        runs[name] = _check_run(tmp_path / name, expect_adapter=True)
    plain, w0, w2, half = (runs[k][0] for k in ("plain", "w0", "w2", "half"))
    assert [r["loss"] for r in w0] == pytest.approx([r["loss"] for r in plain], abs=1e-6)
    assert all(r["sft/mixed"] == 1.0 and r["sft/nll"] > 0 for r in w0 + w2)
    assert "sft/nll" not in plain[0]
    # step 1: policy == reference, so the DPO part is log 2; same weights, same SFT rows -> same NLL as the w0 run
    assert w2[0]["loss"] == pytest.approx(math.log(2) + 2 * w2[0]["sft/nll"], abs=1e-5)
    assert w2[0]["sft/nll"] == pytest.approx(w0[0]["sft/nll"], abs=1e-6)
    assert runs["w2"][1]["inputs"]["mix_sft.path"]["hash"].startswith("sha256:")
    # fraction 0.5: the share logged over the 3 steps (4 pairs each, no shuffle) is the share mix_draw gives those pairs
    from posttrain.data.render import render_dataset
    from posttrain.data.layouts import load_examples
    from posttrain.models.policy import model_tokenizer

    tok = model_tokenizer("tiny-random")
    pairs, _ = render_dataset(load_examples(str(data), "preference"), tok, max_length=64)
    expected = [sum(mix_draw(sequence_key(c), 0.5, 16) is not None for c, _ in pairs[4 * i:4 * i + 4]) / 4
                for i in range(3)]
    assert [r["sft/mixed"] for r in half] == expected
    assert 0 < sum(expected) < 3


def test_mix_draw_share_and_determinism():
    import hashlib

    from posttrain.trainers.preference import mix_draw

    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)]
    drawn = [mix_draw(k, 0.15, 10) for k in keys]
    share = sum(d is not None for d in drawn) / len(drawn)
    assert abs(share - 0.15) < 0.02
    assert all(0 <= d < 10 for d in drawn if d is not None)
    assert [mix_draw(k, 0.15, 10) for k in keys[:50]] == drawn[:50]  # a function of the content only
    assert all(mix_draw(k, 1.0, 3) is not None for k in keys[:50])


def test_dpo_full_finetune_reference_untouched(tmp_path, monkeypatch):
    """Full fine-tuning: a frozen copy is the reference; it must not move while the policy does."""
    import posttrain.trainers.preference as pref

    seen = {}
    real_build = pref.build_reference

    def spy(policy, mode, needs):
        frozen, kind = real_build(policy, mode, needs)
        seen["frozen"], seen["kind"], seen["policy"] = frozen, kind, policy
        return frozen, kind

    monkeypatch.setattr(pref, "build_reference", spy)
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())
    pref.train_preference(tiny_config("dpo", data, tmp_path / "out", "peft.method=none", "optim.lr=1e-3"))
    base = _base_state()
    assert seen["kind"] == "copy"
    frozen = seen["frozen"].state_dict()
    assert all(torch.equal(frozen[k], base[k]) for k in base)  # reference untouched
    policy = seen["policy"].state_dict()
    assert any(not torch.equal(policy[k], base[k]) for k in base)  # policy trained
    _check_run(tmp_path / "out", expect_adapter=False)


def test_lora_base_untouched_and_simpo_skips_reference(tmp_path, monkeypatch):
    import posttrain.trainers.preference as pref

    calls = {"n": 0}
    real = pref.reference_model

    def counting(policy, frozen):
        calls["n"] += 1
        return real(policy, frozen)

    monkeypatch.setattr(pref, "reference_model", counting)
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())
    pref.train_preference(tiny_config("dpo", data, tmp_path / "simpo", "loss.type=simpo"))
    assert calls["n"] == 0  # reference-free: no reference forward at all
    pref.train_preference(tiny_config("dpo", data, tmp_path / "dpo", "loss.type=dpo"))
    assert calls["n"] == 3


def test_kto(tmp_path):
    from posttrain.trainers.kto import train_kto

    data = write_jsonl(tmp_path / "kto.jsonl", kto_rows())
    summary = train_kto(tiny_config("kto", data, tmp_path / "out"))
    rows, _ = _check_run(tmp_path / "out", expect_adapter=True)
    assert rows[0]["loss"] == pytest.approx(0.5, abs=1e-4)  # policy == reference, z0 = 0: 1 - sigmoid(0)
    assert "kl" in rows[-1]
    _lora_weights_changed(tmp_path / "out")


def test_dora_and_stacked_adapter_lineage(tmp_path):
    """DPO from an SFT adapter folder: the SFT adapter is merged, the reference is the SFT model."""
    from posttrain.models.policy import load_trained
    from posttrain.trainers.preference import train_preference
    from posttrain.trainers.sft import train_sft

    sft_data = write_jsonl(tmp_path / "sft.jsonl", sft_rows())
    train_sft(tiny_config("sft", sft_data, tmp_path / "sft", "peft.method=dora"))
    pairs = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())
    train_preference(tiny_config("dpo", pairs, tmp_path / "dpo", f"model.name={tmp_path / 'sft' / 'model'}"))
    lineage = json.loads((tmp_path / "dpo" / "model" / "posttrain.json").read_text())
    assert lineage["base"] == "tiny-random"
    assert lineage["merged_adapters"] == [str((tmp_path / "sft" / "model").resolve())]
    rows = read_metrics(tmp_path / "dpo" / "metrics.jsonl")
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # reference == SFT model at step 1
    model, tok = load_trained(str(tmp_path / "dpo" / "model"))
    assert model.config.vocab_size == len(tok)


def test_gradient_checkpointing_gives_the_same_step(tmp_path):
    from posttrain.trainers.sft import train_sft

    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows())
    losses = {}
    for name, overrides in {"off": ["model.gradient_checkpointing=false"],
                            "all": ["model.gradient_checkpointing=true"],
                            "every2": ["model.gradient_checkpointing=true", "model.checkpoint_every=2"]}.items():
        out = tmp_path / name
        train_sft(tiny_config("sft", data, out, *overrides))
        losses[name] = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    assert losses["all"] == pytest.approx(losses["off"], rel=1e-5)
    assert losses["every2"] == pytest.approx(losses["off"], rel=1e-5)


def test_checkpoint_every_keeps_the_activations_of_the_other_layers():
    """checkpoint_every=2 checkpoints layers 0, 2, ...: the tensors autograd keeps for the backward (outside the
    checkpointed regions) lie strictly between no checkpointing and checkpointing every layer."""
    import torch

    from posttrain.config import ModelSection, PeftSection
    from posttrain.models.policy import checkpointed_layers, load_policy

    saved = {}
    for name, section in {"off": ModelSection(name="tiny-random"),
                          "all": ModelSection(name="tiny-random", gradient_checkpointing=True),
                          "every2": ModelSection(name="tiny-random", gradient_checkpointing=True,
                                                 checkpoint_every=2)}.items():
        model, _, _ = load_policy(section, PeftSection(method="lora", r=4, alpha=8), seed=0)
        model.train()
        flags = [layer.gradient_checkpointing for layer in checkpointed_layers(model)]
        assert flags == {"off": [False, False], "all": [True, True], "every2": [True, False]}[name]
        count = 0

        def pack(t):
            nonlocal count
            count += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=torch.arange(3, 35)[None]).logits.sum().backward()
        saved[name] = count
    assert saved["all"] < saved["every2"] < saved["off"]


def test_checkpoint_every_without_checkpointing_is_a_config_error(tmp_path):
    from posttrain.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="checkpoint_every=2 only applies with model.gradient_checkpointing=true"):
        load_config("sft", None, [f"data.train={tmp_path / 'x.jsonl'}", "model.checkpoint_every=2"])


def test_checkpointing_is_really_on_under_lora_and_uses_the_current_name():
    """The test above passes even if checkpointing silently stays off; here the decoder layers must be set to
    checkpoint, through a PEFT wrapper, without transformers' deprecation warning for the old method name."""
    import warnings

    from posttrain.config import ModelSection, PeftSection
    from posttrain.models.policy import load_policy

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, _, _ = load_policy(ModelSection(name="tiny-random", gradient_checkpointing=True),
                                  PeftSection(method="lora", r=4, alpha=8), seed=0)
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    assert not [w for w in caught if "checkpointing_enable` is deprecated" in str(w.message)]


def test_checkpoint_every_on_a_model_without_decoder_layers_is_a_clear_error():
    """A model whose checkpointing is not per layer (no transformers GradientCheckpointingLayer) cannot pick
    every N-th layer: a ModelError that names the key, instead of silently checkpointing everything."""
    import torch

    from posttrain.models.policy import enable_checkpointing
    from posttrain.models.resolve import ModelError

    class WholeModelCheckpointing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(4, 4)
            self.enabled = False

        def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
            self.enabled = True

    model = WholeModelCheckpointing()
    enable_checkpointing(model)  # every layer: fine
    assert model.enabled
    with pytest.raises(ModelError, match="model.checkpoint_every=2: WholeModelCheckpointing has no per-layer"):
        enable_checkpointing(WholeModelCheckpointing(), every=2)
