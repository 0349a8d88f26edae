"""Masks: exactly k ones, straight-through gradients, fixed random masks."""

import pytest
import torch

from propetl.masks import Mask, kept_count, topk_mask


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("shape", [(8, 16), (3, 5, 7), (64, 1)])
def test_learned_mask_keeps_exactly_k_entries_over_the_whole_tensor(shape, sparsity):
    mask = Mask(shape, sparsity)()
    numel = mask.numel()
    assert mask.sum().item() == numel - int(sparsity * numel) == kept_count(numel, sparsity)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


def test_kept_count_follows_the_official_getsubnet_rounding():
    # official GetSubnet zeroes the int((1 - kept) * numel) smallest scores: 12 of 128 at
    # sparsity 0.1 (116 kept), where round((1 - s) * numel) would keep 115
    assert kept_count(128, 0.1) == 116
    assert kept_count(98_304, 0.9) == 98_304 - 88_473


def test_mask_keeps_the_largest_absolute_scores():
    scores = torch.tensor([[0.1, -5.0, 0.3], [2.0, -0.2, 0.05]])
    mask = topk_mask(scores, sparsity=0.5)
    assert mask.tolist() == [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]


def test_gradient_passes_straight_through_to_the_score_magnitudes():
    scores = torch.randn(4, 6, requires_grad=True)
    upstream = torch.randn(4, 6)
    (topk_mask(scores, 0.75) * upstream).sum().backward()
    assert torch.equal(scores.grad, upstream * scores.detach().sign())


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_gradient_step_drops_a_harmful_entry_whatever_the_sign_of_its_score(sign):
    # Entry 0 is kept (largest |score|) but keeping it raises the loss, so plain gradient
    # descent on the scores must shrink its magnitude until another entry takes its place.
    scores = torch.tensor([sign * 1.0, 0.9, 0.5], requires_grad=True)
    harm = torch.tensor([1.0, 0.0, 0.0])
    optimizer = torch.optim.SGD([scores], lr=0.2)
    for _ in range(3):
        optimizer.zero_grad()
        (topk_mask(scores, sparsity=1 / 3) * harm).sum().backward()
        optimizer.step()
    assert topk_mask(scores, sparsity=1 / 3).tolist() == [0.0, 1.0, 1.0]


@pytest.mark.parametrize("fan_in, bound", [(None, 1 / 64**0.5), (256, 1 / 16)])
def test_scores_are_kaiming_uniform_on_the_given_fan_in(fan_in, bound):
    # kaiming_uniform_(a=sqrt(5)) is uniform in +-1/sqrt(fan_in); default fan-in: the tensor's own
    scores = Mask((256, 64), 0.5, fan_in=fan_in).scores
    assert scores.abs().max() <= bound
    assert scores.abs().max() > 0.9 * bound


def test_random_mask_is_fixed_untrained_and_has_k_ones():
    mask = Mask.random((10, 10), 0.7, torch.Generator().manual_seed(0))
    assert not mask.learned and list(mask.parameters()) == []
    assert mask().sum().item() == 30
    again = Mask.random((10, 10), 0.7, torch.Generator().manual_seed(0))
    assert torch.equal(mask(), again())


def test_fixed_mask_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        Mask((4, 4), 0.5, torch.ones(4, 5))
