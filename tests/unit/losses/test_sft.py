import pytest
import torch

from posttrain.losses import get_loss
from posttrain.losses.sft import sft_loss


def test_sft_sums_masked_nll_per_example():
    token_logps = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, float("-inf"), -4.0], [-1.0, -1.0, -1.0]])
    loss_mask = torch.tensor([[1, 0, 1], [1, 0, 0], [0, 0, 0]])
    losses, metrics = sft_loss(token_logps, loss_mask)
    assert losses.tolist() == [4.0, 0.5, 0.0]  # -inf under a 0 mask does not leak in
    assert metrics["tokens"].tolist() == [2.0, 1.0, 0.0]
    assert metrics["nll_mean"].tolist() == [2.0, 0.5, 0.0]
    assert not metrics["nll_mean"].requires_grad


def test_sft_gradient_only_on_masked_tokens():
    token_logps = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    sft_loss(token_logps, torch.tensor([[1.0, 0.0, 1.0]]))[0].sum().backward()
    assert token_logps.grad.tolist() == [[-1.0, 0.0, -1.0]]


def test_global_sum_over_tokens_is_the_token_mean():
    token_logps = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]])
    mask = torch.tensor([[1, 1, 1], [0, 0, 1]])
    losses, metrics = sft_loss(token_logps, mask)
    assert (losses.sum() / metrics["tokens"].sum()).item() == pytest.approx((1 + 2 + 3 + 6) / 4)


def test_registry_entry():
    spec = get_loss("sft")
    assert spec.fn is sft_loss and spec.kind == "sft" and not spec.needs_reference


def test_sums_give_the_same_loss_and_metrics_as_the_token_grid():
    from posttrain.losses.sft import sft_loss_from_sums

    token_logps = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -0.25, -4.0]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]])
    grid_losses, grid = sft_loss(token_logps, mask)
    losses, metrics = sft_loss_from_sums(torch.tensor([-2.5, -3.25]), torch.tensor([2.0, 2.0]))
    assert losses.tolist() == grid_losses.tolist() == [2.5, 3.25]
    assert metrics["nll_mean"].tolist() == grid["nll_mean"].tolist() == [1.25, 1.625]
    assert metrics["tokens"].tolist() == grid["tokens"].tolist() == [2.0, 2.0]
    assert sft_loss_from_sums(torch.tensor([0.0]), torch.tensor([0.0]))[1]["nll_mean"].tolist() == [0.0]
