import pytest
import torch

from posttrain.losses import LOSSES, PAIRED_LOSS_TYPES, get_loss, preference_loss


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


INPUTS = dict(policy_chosen_logps=t(-10.0), policy_rejected_logps=t(-12.0), chosen_lengths=t(4.0),
              rejected_lengths=t(5.0))
REFERENCE = dict(reference_chosen_logps=t(-11.0), reference_rejected_logps=t(-11.5))


def test_table_contents():
    assert set(LOSSES) == {"sft", "dpo", "robust", "hinge", "ipo", "simpo", "orpo", "kto"}
    assert PAIRED_LOSS_TYPES == ("dpo", "ipo", "robust", "hinge", "simpo", "orpo")
    assert all(LOSSES[name].kind == "paired" for name in PAIRED_LOSS_TYPES)
    assert (LOSSES["sft"].kind, LOSSES["kto"].kind) == ("sft", "unpaired")
    assert {name for name, spec in LOSSES.items() if spec.needs_reference} == {"dpo", "robust", "hinge", "ipo", "kto"}
    assert {name: spec.default_beta for name, spec in LOSSES.items()} == {
        "sft": None, "dpo": 0.1, "robust": 0.1, "hinge": 0.1, "ipo": 0.1, "simpo": 2.0, "orpo": 0.1, "kto": 0.1}
    assert all(spec.name == name and spec.paper for name, spec in LOSSES.items())


def test_unknown_loss():
    with pytest.raises(ValueError, match="unknown loss 'nope'; choose one of: sft, dpo"):
        get_loss("nope")
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        preference_loss("nope", **INPUTS, **REFERENCE)


def test_non_paired_loss_rejected():
    with pytest.raises(ValueError, match="'kto' trains on unpaired data, not pairs"):
        preference_loss("kto", **INPUTS, **REFERENCE)


@pytest.mark.parametrize("loss_type", ["dpo", "robust", "hinge", "ipo"])
def test_missing_reference(loss_type):
    with pytest.raises(ValueError, match=f"loss '{loss_type}' needs a reference model"):
        preference_loss(loss_type, **INPUTS)


@pytest.mark.parametrize("loss_type", ["simpo", "orpo"])
def test_reference_free_losses_run_without_reference(loss_type):
    losses, _ = preference_loss(loss_type, **INPUTS)
    assert losses.shape == (1,) and torch.isfinite(losses).all()


def test_unexpected_param_names_it_and_the_loss():
    with pytest.raises(ValueError, match=r"loss 'hinge' does not take parameter\(s\) gamma"):
        preference_loss("hinge", gamma=0.5, **INPUTS, **REFERENCE)
    with pytest.raises(ValueError, match=r"loss 'dpo' does not take parameter\(s\) gamma"):
        preference_loss("dpo", gamma=1.0, **INPUTS, **REFERENCE)
    # None means "not set" and is dropped
    preference_loss("hinge", gamma=None, label_smoothing=None, **INPUTS, **REFERENCE)


def test_default_beta_used_when_none():
    default, _ = preference_loss("simpo", beta=None, **INPUTS)
    explicit, _ = preference_loss("simpo", beta=2.0, **INPUTS)
    other, _ = preference_loss("simpo", beta=1.0, **INPUTS)
    assert default.item() == explicit.item() != other.item()


def test_declared_params_are_passed_through():
    plain, _ = preference_loss("dpo", **INPUTS, **REFERENCE)
    smoothed, _ = preference_loss("dpo", label_smoothing=0.2, **INPUTS, **REFERENCE)
    assert plain.item() != smoothed.item()


@pytest.mark.parametrize("bad", [dict(beta=0.0), dict(beta=-1.0), dict(rpo_alpha=-0.1)])
def test_bad_numbers(bad):
    with pytest.raises(ValueError):
        preference_loss("dpo", **bad, **INPUTS, **REFERENCE)
