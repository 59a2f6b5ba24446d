"""Sliding-window prediction and its exact region explanation, in float64.

References are written out here, independently of the module: the Gaussian, the patch starts, the
blend, and the per-voxel definition M_A = Σ_a M_a / ΣM_a with M_a = Σ_{p∋a} L_p(e_a ⊗ c⊙ω_pa y_pa).
"""
import itertools

import numpy as np
import pytest
import torch

from LRPSegmentationLib.engine import Target, explain_region, prepare_graph, region_shares, sequence_composition
from LRPSegmentationLib.engine.composites import resolve_composite
from LRPSegmentationLib.engine.sliding import (gaussian_importance, patch_grid, sliding_explain_region,
                                               sliding_sequence_composition, sliding_window_logits)
from lrp_models import seed_unet

PATCH = (8, 8, 8)
VOLUME = (12, 10, 14)
# overlap 0.5 → step ≤ 4: D 12 → 0, 4; H 10 → 0, 2; W 14 → 0, 3, 6 (evenly spaced, last flush).
STARTS = list(itertools.product([0, 4], [0, 2], [0, 3, 6]))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def numpy_gaussian(patch, sigma_scale=0.125):
    """nnU-Net/MONAI-style importance: separable Gaussian, centre 1, clamped at 1e-3."""
    axes = [np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / (sigma_scale * n)) ** 2) for n in patch]
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return np.maximum(g / g.max(), 1e-3)


def window(start, patch=PATCH):
    return tuple(slice(s, s + n) for s, n in zip(start, patch))


@pytest.fixture(scope="module")
def model():
    return seed_unet(base=4, depth=2)


@pytest.fixture(scope="module")
def volume():
    return torch.randn((1, 3) + VOLUME, dtype=torch.float64, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def blend_weights():
    """ω_p = g / Σ_q g_q for each patch start, from the numpy Gaussian."""
    g = torch.from_numpy(numpy_gaussian(PATCH))
    weight_sum = torch.zeros(VOLUME, dtype=torch.float64)
    for start in STARTS:
        weight_sum[window(start)] += g
    return {start: g / weight_sum[window(start)] for start in STARTS}


# --------------------------------------------------------------------------------------------
# Grid and Gaussian
# --------------------------------------------------------------------------------------------
def test_patch_grid_covers_the_volume_with_the_last_patch_flush():
    assert sorted(patch_grid(VOLUME, PATCH, 0.5)) == sorted(STARTS)
    assert patch_grid((8, 8, 8), 8, 0.5) == [(0, 0, 0)]
    assert patch_grid((16, 8, 12), (8, 8, 4), 0.0) == list(itertools.product([0, 8], [0], [0, 4, 8]))
    # A high overlap never repeats a start (step at least one voxel).
    starts = patch_grid((10, 8, 8), 8, 0.99)
    assert sorted({s[0] for s in starts}) == [0, 1, 2] and len(starts) == 3
    covered = torch.zeros(VOLUME, dtype=torch.int64)
    for start in patch_grid(VOLUME, PATCH, 0.25):
        assert all(0 <= s and s + n <= v for s, n, v in zip(start, PATCH, VOLUME))
        covered[window(start)] += 1
    assert (covered > 0).all()


def test_gaussian_importance_matches_the_formula():
    g = gaussian_importance((8, 6, 4), dtype=torch.float64)
    assert g.shape == (8, 6, 4)
    np.testing.assert_allclose(g.numpy(), numpy_gaussian((8, 6, 4)), rtol=1e-12)
    assert float(g.min()) == pytest.approx(1e-3) and float(g.max()) <= 1.0
    assert torch.equal(g, g.flip(0)) and torch.equal(g, g.flip(2))  # mirror-symmetric
    wide = gaussian_importance(8, sigma_scale=1.0, dtype=torch.float64)
    assert float(wide.min()) > 0.5  # a large σ gives an almost flat blend


# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------
def test_one_patch_prediction_is_the_model_output(model):
    x = torch.randn(1, 3, 8, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(sliding_window_logits(model, x, PATCH, 0.5, device="cpu"), expected,
                          rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("batch_size", [1, 5])
def test_prediction_is_the_gaussian_blend(model, volume, batch_size):
    g = torch.from_numpy(numpy_gaussian(PATCH))
    numerator = torch.zeros((1, 2) + VOLUME, dtype=torch.float64)
    denominator = torch.zeros(VOLUME, dtype=torch.float64)
    with torch.no_grad():
        for start in STARTS:
            numerator[(slice(None), slice(None)) + window(start)] += g * model(
                volume[(slice(None), slice(None)) + window(start)])
            denominator[window(start)] += g
    calls = []
    logits = sliding_window_logits(model, volume, PATCH, 0.5, device="cpu", batch_size=batch_size,
                                   progress=lambda done, total: calls.append((done, total)))
    assert logits.shape == (1, 2) + VOLUME
    assert relative_error(logits, numerator / denominator) <= 1e-12
    assert calls[-1] == (len(STARTS), len(STARTS)) and len(calls) == -(-len(STARTS) // batch_size)


# --------------------------------------------------------------------------------------------
# Explanations
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("composite", ["epsilon", "epsilon_gamma_box"])
def test_one_patch_equals_the_engine(model, composite):
    x = torch.randn(1, 3, 8, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    region = torch.zeros(8, 8, 8, dtype=torch.bool)
    region[2:6, 1:5, 3:7] = True
    expected = explain_region(model, x, region, 1, composite, device="cpu", tolerance=0.05)
    result = sliding_explain_region(model, x, region, 1, composite, patch_size=PATCH, device="cpu", tolerance=0.05)
    assert (result.n_used, result.n_excluded) == (expected.n_used, expected.n_excluded)
    assert expected.n_excluded > 0  # the tolerance is exercised
    assert torch.equal(result.excluded, expected.excluded)
    assert relative_error(result.relevance, expected.relevance) <= 1e-10
    assert torch.allclose(result.sequence_shares, expected.sequence_shares, atol=1e-10)
    composition = sliding_sequence_composition(model, x, 1, composite, patch_size=PATCH, device="cpu")
    assert torch.allclose(composition, sequence_composition(model, x, 1, composite, device="cpu"), atol=1e-10)


def per_voxel_definition(model, x, region, target, composite, weights, tolerance):
    """M_A literally: for each a, each patch p ∋ a runs LRP from e_a ⊗ c⊙ω_pa y_pa; the maps are
    placed into the volume and summed, normalized by their sum, and added up. A voxel is excluded
    when its map keeps less than ``tolerance`` of the relevance injected, Σ_p Σ_k |c_k ω_pa y_pak|."""
    composite = resolve_composite(composite, x)  # box bounds of the whole volume
    graphs = {start: prepare_graph(model, x[(slice(None), slice(None)) + window(start)], composite)
              for start in STARTS}
    c = target.coefficients(2, torch.float64, torch.device("cpu"))
    total, used = torch.zeros_like(x[0]), 0
    for voxel in region.nonzero().tolist():
        m_a, injected = torch.zeros_like(x[0]), 0.0
        for start, graph in graphs.items():
            local = tuple(v - s for v, s in zip(voxel, start))
            if not all(0 <= i < n for i, n in zip(local, PATCH)):
                continue
            r = torch.zeros_like(graph.logits)
            r[(0, slice(None)) + local] = c * weights[start][local] * graph.logits[(0, slice(None)) + local]
            m_a[(slice(None),) + window(start)] += graph.relevance(r)[0]
            injected += float(r.abs().sum())
        s_a = m_a.sum()
        if injected == 0 or abs(s_a) / injected < tolerance:
            continue
        total += m_a / s_a
        used += 1
    return total, used


@pytest.mark.parametrize("target, composite", [(Target(1), "epsilon_gamma_box"), (Target(1), "epsilon"),
                                               (Target(0, contrast=True), "epsilon_alpha2_beta1")])
def test_multi_patch_equals_the_per_voxel_definition(model, volume, blend_weights, target, composite):
    region = torch.zeros(VOLUME, dtype=torch.bool)
    # A corner voxel (one patch), voxels in 2, 4 and 8 patches, and the far corner.
    for voxel in [(0, 0, 0), (1, 1, 4), (3, 5, 3), (5, 4, 7), (6, 6, 6), (7, 3, 12), (11, 9, 13), (9, 8, 2)]:
        region[voxel] = True
    tolerance = 0.1  # excludes some of these voxels with these nets
    reference, used = per_voxel_definition(model, volume, region, target, composite, blend_weights, tolerance)
    result = sliding_explain_region(model, volume, region, target, composite, patch_size=PATCH, overlap=0.5,
                                    device="cpu", tolerance=tolerance)
    assert 0 < used < int(region.sum())  # both used and excluded voxels
    assert result.n_used == used and result.n_used + result.n_excluded == int(region.sum())
    assert relative_error(result.relevance, reference) <= 1e-5
    assert result.diagnostics["conservation_error"] <= 1e-10
    assert torch.allclose(result.sequence_shares, reference.flatten(1).sum(1) / reference.sum(), atol=1e-10)


def test_kept_graphs_give_the_same_result_without_retracing(model, volume):
    region = torch.zeros(VOLUME, dtype=torch.bool)
    region[3:8, 2:7, 4:10] = True  # inside all 12 patches
    runs = {gib: sliding_explain_region(model, volume, region, 1, "epsilon_gamma_box", patch_size=PATCH,
                                        device="cpu", keep_graphs_gib=gib) for gib in (0, 1.0)}
    touching = int(runs[0].diagnostics["patches_run"])
    assert touching == len(STARTS)
    assert runs[0].diagnostics["patches_retraced"] == touching - 1  # the last graph of sweep 1 is reused
    assert runs[1.0].diagnostics["patches_retraced"] == 0
    assert torch.equal(runs[0].relevance, runs[1.0].relevance)
    graph = prepare_graph(model, volume[(slice(None), slice(None)) + window(STARTS[0])], "epsilon")
    assert graph.nbytes() >= graph.logits.numel() * graph.logits.element_size()
    with pytest.raises(ValueError, match="keep_graphs_gib"):
        sliding_explain_region(model, volume, region, 1, "epsilon", patch_size=PATCH, device="cpu",
                               keep_graphs_gib=-1)


def test_composition_gives_the_region_shares(model, volume):
    composition = sliding_sequence_composition(model, volume, 1, "epsilon_gamma_box", patch_size=PATCH,
                                               device="cpu", chunk=2)
    assert composition.shape == (3,) + VOLUME and torch.isfinite(composition).all()
    sums = composition.sum(0)
    assert torch.all(((sums - 1).abs() < 1e-10) | (composition == 0).all(0))
    corner = torch.zeros(VOLUME, dtype=torch.bool)
    corner[:3, :3, :4] = True
    for region in (corner, torch.ones(VOLUME, dtype=torch.bool)):
        result = sliding_explain_region(model, volume, region, 1, "epsilon_gamma_box", patch_size=PATCH,
                                        device="cpu")
        shares, used, excluded = region_shares(composition, region)
        assert (used, excluded) == (result.n_used, result.n_excluded)
        assert torch.allclose(shares, result.sequence_shares, atol=1e-10)


def test_only_patches_touching_the_region_run(model, volume):
    def run(region):
        calls = []
        result = sliding_explain_region(model, volume, region, 1, "epsilon", patch_size=PATCH, device="cpu",
                                        progress=lambda done, total: calls.append((done, total)))
        assert [done for done, _ in calls] == list(range(1, len(calls) + 1))
        assert result.diagnostics["patches_total"] == len(STARTS)
        return calls[-1][1], result.diagnostics["patches_run"]

    corner = torch.zeros(VOLUME, dtype=torch.bool)
    corner[0, 0, 0] = True                     # only in the patch at the origin
    assert run(corner) == (2, 1)               # two sweeps over one patch
    middle = torch.zeros(VOLUME, dtype=torch.bool)
    middle[5, 5, 5] = True                     # in both D starts, both H starts, W starts 0 and 3
    assert run(middle) == (2 * 8, 8)
    calls = []
    sliding_sequence_composition(model, volume, 1, "epsilon", patch_size=PATCH, device="cpu",
                                 progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (len(STARTS), len(STARTS))


def test_bad_input_is_rejected_with_a_fix(model, volume):
    region = torch.zeros(VOLUME, dtype=torch.bool)
    region[4, 4, 4] = True
    with pytest.raises(ValueError, match="smaller than the patch along W"):
        patch_grid(VOLUME, (8, 8, 16), 0.5)
    with pytest.raises(ValueError, match="pad the volume"):
        sliding_explain_region(model, volume, region, 1, patch_size=(16, 8, 8), device="cpu")
    for overlap in (1.0, -0.1, "half"):
        with pytest.raises(ValueError, match="overlap"):
            sliding_window_logits(model, volume, PATCH, overlap, device="cpu")
    with pytest.raises(ValueError, match="patch_size"):
        patch_grid(VOLUME, (8, 8), 0.5)
    with pytest.raises(ValueError, match="sigma_scale"):
        gaussian_importance(PATCH, sigma_scale=0.0)
    with pytest.raises(ValueError, match="resample the mask"):
        sliding_explain_region(model, volume, region[:-1], 1, patch_size=PATCH, device="cpu")
    with pytest.raises(ValueError, match="region is empty"):
        sliding_explain_region(model, volume, torch.zeros(VOLUME, dtype=torch.bool), 1, patch_size=PATCH,
                               device="cpu")
    with pytest.raises(ValueError, match="tolerance"):
        sliding_sequence_composition(model, volume, 1, patch_size=PATCH, device="cpu", tolerance=-1)
    with pytest.raises(ValueError, match="target class 2 is out of range"):
        sliding_explain_region(model, volume, region, 2, patch_size=PATCH, device="cpu")
    shrinking = torch.nn.Conv3d(3, 2, 3).double().eval()  # no padding: 8³ patches → 6³ logits
    with pytest.raises(ValueError, match="same grid as the patch"):
        sliding_window_logits(shrinking, volume, PATCH, device="cpu")
    with pytest.raises(ValueError, match="same grid as the patch"):
        sliding_sequence_composition(shrinking, volume, 1, patch_size=PATCH, device="cpu")
    # A patch the U-Net cannot take (not divisible by its downsampling factor 4).
    with pytest.raises(ValueError, match="model failed"):
        sliding_explain_region(model, volume, region, 1, patch_size=(6, 8, 8), device="cpu")
    with pytest.raises(ValueError, match="model failed"):
        sliding_window_logits(model, volume, (6, 8, 8), device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(volume):
    """Same numbers on the GPU as on the CPU; the result comes back on the CPU."""
    gpu_model = seed_unet(base=4, depth=2).float()
    for module in gpu_model.modules():  # see test_engine_exactness.test_cuda_matches_cpu: biases
        if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):  # would absorb the score
            torch.nn.init.zeros_(module.bias)
    x = volume.float()
    region = torch.zeros(VOLUME, dtype=torch.bool)
    region[3:8, 2:7, 4:10] = True
    for composite in ("epsilon", "epsilon_gamma_box"):
        cpu = sliding_explain_region(gpu_model, x, region, 1, composite, patch_size=PATCH, device="cpu")
        gpu = sliding_explain_region(gpu_model, x, region, 1, composite, patch_size=PATCH, device="cuda")
        assert gpu.relevance.device.type == "cpu"
        assert (gpu.n_used, gpu.n_excluded) == (cpu.n_used, cpu.n_excluded)
        assert relative_error(gpu.relevance, cpu.relevance) <= 1e-4
        logits_cpu = sliding_window_logits(gpu_model, x, patch_size=PATCH, device="cpu")
        logits_gpu = sliding_window_logits(gpu_model, x, patch_size=PATCH, device="cuda")
        assert relative_error(logits_gpu, logits_cpu) <= 1e-5
