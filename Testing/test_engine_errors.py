"""Bad input gets a clear ValueError; unsupported operations are named; no NaN ever comes out."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from LRPSegmentationLib.engine import (Target, UnsupportedOperationError, explain_region, explain_voxel,
                                       make_composite, region_shares, sequence_composition, trace)
from lrp_models import BiasOnlyNet, seed_unet


@pytest.fixture(scope="module")
def case():
    model = seed_unet()
    x = torch.randn(1, 3, 8, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    region = torch.zeros(8, 8, 8, dtype=torch.bool)
    region[3:5, 3:5, 3:5] = True
    return model, x, region


@pytest.mark.parametrize("bad_x, message", [
    (torch.randn(3, 8, 8, 8, dtype=torch.float64), r"shape \(1, C, D, H, W\)"),
    (torch.randn(2, 3, 8, 8, 8, dtype=torch.float64), r"shape \(1, C, D, H, W\)"),
    (torch.randn(1, 4, 8, 8, 8, dtype=torch.float64), "expects 3 input sequences, x has 4"),
    (torch.ones(1, 3, 8, 8, 8, dtype=torch.int64), "floating-point"),
])
def test_bad_input_shape_and_type(case, bad_x, message):
    model, _, region = case
    with pytest.raises(ValueError, match=message):
        explain_region(model, bad_x, region, device="cpu")


def test_nan_input(case):
    model, x, region = case
    x = x.clone()
    x[0, 1, 2, 2, 2] = float("nan")
    x[0, 0, 1, 1, 1] = float("inf")
    with pytest.raises(ValueError, match="2 NaN/Inf values"):
        explain_region(model, x, region, device="cpu")


def test_region_errors(case):
    model, x, region = case
    with pytest.raises(ValueError, match=r"region has shape \(8, 8, 4\).*output grid is \(8, 8, 8\)"):
        explain_region(model, x, region[:, :, :4], device="cpu")
    with pytest.raises(ValueError, match="region is empty"):
        explain_region(model, x, torch.zeros_like(region), device="cpu")
    with pytest.raises(ValueError, match="boolean"):
        explain_region(model, x, region.double() * 0.5, device="cpu")
    # numpy and 0/1 integer masks are accepted
    result = explain_region(model, x, region.numpy().astype(np.uint8), device="cpu")
    assert result.n_used + result.n_excluded == 8


def test_training_mode_and_target_range(case):
    model, x, region = case
    model.train()
    try:
        with pytest.raises(ValueError, match="training mode.*model.eval"):
            explain_region(model, x, region, device="cpu")
    finally:
        model.eval()
    with pytest.raises(ValueError, match="target class 2 is out of range: the model has 2 classes"):
        explain_region(model, x, region, target=2, device="cpu")
    with pytest.raises(ValueError, match="target must be a class index"):
        explain_region(model, x, region, target="tumour", device="cpu")
    with pytest.raises(ValueError, match="outside the output grid"):
        explain_voxel(model, x, (8, 0, 0), device="cpu")


def test_tolerance_must_be_a_positive_fraction(case):
    model, x, region = case
    for bad in (0.0, -1e-3, 1.0, "1e-3"):
        with pytest.raises(ValueError, match=r"tolerance must be a fraction in \(0, 1\)"):
            explain_region(model, x, region, tolerance=bad, device="cpu")
        with pytest.raises(ValueError, match="tolerance must be"):
            sequence_composition(model, x, tolerance=bad, device="cpu")


def test_unknown_composite_and_half_precision(case):
    model, x, region = case
    with pytest.raises(ValueError, match="unknown composite 'lrp'.*epsilon_gamma_box"):
        explain_region(model, x, region, composite="lrp", device="cpu")
    with pytest.raises(ValueError, match="half precision"):
        explain_region(seed_unet().half(), x, region, device="cpu")


class GatedNet(nn.Module):
    """A product of two signals with no gate (no sigmoid/softmax on either factor): no LRP
    semantics in the engine (with torch.sigmoid on the gate it is an attention gate, supported)."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Conv3d(3, 3, 1)
        self.head = nn.Conv3d(3, 2, 1)

    def forward(self, x):
        return self.head(x * self.gate(x))


class SoftmaxNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Conv3d(3, 2, 1)

    def forward(self, x):
        return F.softmax(self.head(x), dim=1)


class ShapeCheckingNet(nn.Module):
    """Uses an unsupported op on the side (not on the output path): allowed."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv3d(3, 2, 1)

    def forward(self, x):
        if torch.isnan(x).any():  # a tensor computed by an unknown op, never used for the output
            raise RuntimeError("nan")
        return self.head(x)


def test_unsupported_operations_are_named(case):
    _, x, region = case
    with pytest.raises(UnsupportedOperationError, match="mul of two input-dependent tensors in module 'GatedNet'"):
        explain_region(GatedNet().double().eval(), x, region, device="cpu")
    with pytest.raises(UnsupportedOperationError, match="explain logits"):
        explain_region(SoftmaxNet().double().eval(), x, region, device="cpu")
    result = explain_region(ShapeCheckingNet().double().eval(), x, region, device="cpu")
    assert result.n_used > 0
    assert issubclass(UnsupportedOperationError, ValueError)


def test_trace_reproduces_the_model_output(case):
    model, x, _ = case
    assert torch.equal(trace(model, x).logits, model(x))


def test_unnormalizable_voxels_are_counted_not_hidden(case):
    _, x, _ = case
    torch.manual_seed(0)
    model = BiasOnlyNet().double().eval()
    region = torch.zeros(8, 8, 8, dtype=torch.bool)
    region[2:4, 2:4, 2:6] = True  # half on the informative side, half on the constant side
    result = explain_region(model, x, region, target=1, composite="epsilon", device="cpu")
    assert (result.n_used, result.n_excluded) == (8, 8)
    assert result.excluded[..., 4:].sum() == 8 and result.excluded[..., :4].sum() == 0
    assert torch.isfinite(result.relevance).all()
    composition = sequence_composition(model, x, target=1, composite="epsilon", device="cpu")
    assert torch.isfinite(composition).all()
    assert float(composition[:, ..., 4:].abs().max()) == 0.0
    shares, used, excluded = region_shares(composition, region)
    assert (used, excluded) == (8, 8)
    only_constant = torch.zeros_like(region)
    only_constant[..., 6] = True
    with pytest.raises(ValueError, match="were excluded"):
        explain_region(model, x, only_constant, target=1, composite="epsilon", device="cpu")


def test_flat_first_layer_is_declared_blind():
    assert not make_composite("epsilon_plus_flat").input_aware
    assert make_composite("epsilon_gamma_box").input_aware
    assert Target(1, contrast=True).describe(["background", "tumour"]) == "tumour vs rest (logit contrast)"
