"""Exactness of the engine against the seed's per-voxel definition, in float64."""
import pytest
import torch

from LRPSegmentationLib.engine import (COMPOSITES, Target, explain_region, explain_voxel, region_shares,
                                       sequence_composition)
from LRPSegmentationLib.models import UNet3D
from lrp_models import MirroredEnsemble, ResidualNormNet, SliceDenseNet, count_graph_passes, per_voxel_reference, prepare, seed_unet


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def unet_case():
    model = seed_unet()
    x = torch.randn(1, 3, 8, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    region = torch.zeros(8, 8, 8, dtype=torch.bool)
    region[2:5, 3:6, 3:5] = True
    return model, x, region


@pytest.mark.parametrize("composite", COMPOSITES)
def test_region_equals_per_voxel_loop_on_seed_unet(unet_case, composite):
    model, x, region = unet_case
    result = explain_region(model, x, region, target=1, composite=composite, device="cpu")
    reference, used = per_voxel_reference(model, x, region, 1, composite)
    assert result.n_used == used
    assert result.n_used + result.n_excluded == int(region.sum())
    assert relative_error(result.relevance, reference) <= 1e-5
    # Every used voxel contributes total relevance 1.
    assert result.diagnostics["conservation_error"] <= 1e-10
    assert torch.allclose(result.sequence_shares, reference.flatten(1).sum(1) / reference.sum(), atol=1e-10)
    assert torch.isclose(result.sequence_shares.sum(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_gamma_box"])
def test_composition_gives_region_shares_without_new_pass(unet_case, composite):
    model, x, region = unet_case
    composition = sequence_composition(model, x, target=1, composite=composite, device="cpu")
    assert composition.shape == (3, 8, 8, 8)
    assert torch.isfinite(composition).all()
    for painted in (region, ~region, torch.ones_like(region)):
        result = explain_region(model, x, painted, target=1, composite=composite, device="cpu")
        shares, used, excluded = region_shares(composition, painted)
        assert (used, excluded) == (result.n_used, result.n_excluded)
        assert torch.allclose(shares, result.sequence_shares, atol=1e-10)


def test_contrast_target_equals_per_voxel_loop(unet_case):
    model, x, region = unet_case
    target = Target(1, contrast=True)
    result = explain_region(model, x, region, target=target, composite="epsilon", device="cpu")
    logits = model(x)
    contrast = logits[0, 1] - logits[0, 0]
    reference = None
    for voxel in region.nonzero().tolist():
        m_a = explain_voxel(model, x, voxel, target, "epsilon", device="cpu")
        d, h, w = voxel
        # The map of a contrast target carries the contrast score (up to what biases absorb).
        s_a = m_a.sum()
        if abs(s_a / logits[0, :, d, h, w].abs().sum()) < 1e-3:
            continue
        reference = m_a / s_a if reference is None else reference + m_a / s_a
    assert relative_error(result.relevance, reference) <= 1e-5
    assert contrast.shape == region.shape


@pytest.mark.parametrize("net", [ResidualNormNet, SliceDenseNet])
@pytest.mark.parametrize("composite", ["epsilon", "epsilon_gamma_box", "epsilon_alpha2_beta1"])
def test_region_equals_per_voxel_loop_on_other_layer_types(net, composite):
    model = prepare(net())
    depth = 1 if net is SliceDenseNet else 8
    x = torch.randn(1, 3, depth, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    region = torch.zeros(depth, 8, 8, dtype=torch.bool)
    region[0, 2:6, 3:6] = True
    if depth > 1:
        region[4, 1:3, 1:3] = True
    result = explain_region(model, x, region, target=0, composite=composite, device="cpu")
    reference, used = per_voxel_reference(model, x, region, 0, composite)
    assert result.n_used == used > 0
    assert relative_error(result.relevance, reference) <= 1e-5


def test_cost_does_not_grow_with_region_size(unet_case, monkeypatch):
    """One transposed pass and one LRP pass, for a single voxel and for the whole grid."""
    model, x, _ = unet_case
    calls = count_graph_passes(monkeypatch)
    for region in (torch.zeros(8, 8, 8, dtype=torch.bool).index_put_((torch.tensor([3]),) * 3, torch.tensor(True)),
                   torch.ones(8, 8, 8, dtype=torch.bool)):
        calls.update(relevance=0, transpose=0)
        explain_region(model, x, region, target=1, composite="epsilon", device="cpu")
        assert calls == {"relevance": 1, "transpose": 1}


def test_float32_matches_float64(unet_case):
    model, x, region = unet_case
    exact = explain_region(model, x, region, target=1, composite="epsilon_gamma_box", device="cpu")
    single = explain_region(model.float(), x.float(), region, target=1, composite="epsilon_gamma_box", device="cpu")
    model.double()
    assert single.relevance.dtype == torch.float32
    assert relative_error(single.relevance.double(), exact.relevance) <= 1e-4


def test_model_and_input_are_left_unchanged(unet_case):
    model, x, region = unet_case
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_before = x.clone()
    explain_region(model, x, region, target=1, composite="epsilon_gamma_box", device="cpu")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(x, x_before)
    assert not model.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    # Without biases every voxel keeps nearly all of its score (a random net's biases absorb most
    # of it, and 1/|ΣM_a| then amplifies any rounding difference), so this compares the arithmetic.
    torch.manual_seed(0)
    model = UNet3D(3, 2, 8, 2).eval()
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            torch.nn.init.zeros_(module.bias)
    x = torch.randn(1, 3, 16, 16, 16, generator=torch.Generator().manual_seed(4))
    region = torch.zeros(16, 16, 16, dtype=torch.bool)
    region[4:10, 5:9, 6:12] = True
    for composite in ("epsilon", "epsilon_gamma_box"):
        cpu = explain_region(model, x, region, 1, composite, device="cpu")
        gpu = explain_region(model, x, region, 1, composite, device="cuda")
        assert (gpu.n_used, gpu.n_excluded) == (cpu.n_used, cpu.n_excluded)
        assert relative_error(gpu.relevance, cpu.relevance) <= 1e-4
        comp_cpu = sequence_composition(model, x, 1, composite, device="cpu")
        comp_gpu = sequence_composition(model, x, 1, composite, device="cuda")
        # Voxels whose target logit is ≈ 0 keep only the ε-stabilizer's share of it: their shares
        # are ill-conditioned in float32 on any device (CPU float32 vs float64 differs there too).
        with torch.no_grad():
            conditioned = model(x)[0, 1].abs() > 1e-3
        assert float((comp_gpu - comp_cpu)[:, conditioned].abs().max()) <= 1e-4


def test_mirrored_ensemble_equals_per_voxel_loop():
    """Flips and the mean over members (nnU-Net's fold ensemble with mirroring) are linear."""
    second = seed_unet(base=6)  # a different architecture width and different weights
    model = MirroredEnsemble([seed_unet(), second]).eval()
    x = torch.randn(1, 3, 8, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    region = torch.zeros(8, 8, 8, dtype=torch.bool)
    region[1:4, 2:6, 5:7] = True
    result = explain_region(model, x, region, target=1, composite="epsilon_gamma_box", device="cpu")
    reference, used = per_voxel_reference(model, x, region, 1, "epsilon_gamma_box")
    assert result.n_used == used > 0
    assert relative_error(result.relevance, reference) <= 1e-5
