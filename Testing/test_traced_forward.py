"""`TracedForward`: one traced forward pass per case (per window) answers the prediction, any number
of region explanations and the composition — with the numbers of the one-shot functions, in float64."""
import gc

import pytest
import torch
from torch import nn

from LRPSegmentationLib.engine import (COMPOSITES, Graph, Target, TracedForward, explain_region, region_shares,
                                       sequence_composition, sliding_explain_region, sliding_sequence_composition,
                                       sliding_window_logits)
from lrp_models import (BiasOnlyNet, ResidualNormNet, SliceDenseNet, count_graph_passes, per_voxel_reference, prepare,
                        seed_unet)

PATCH = (8, 8, 8)
VOLUME = (12, 10, 14)  # 2 × 2 × 3 = 12 windows of PATCH at overlap 0.5 (see test_sliding)
WINDOWS = 12


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


class Counting(nn.Module):
    """Wraps a model and counts its forward calls (network evaluations)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def boxes(shape, *corners) -> dict[str, torch.Tensor]:
    """Named box regions: corners are (start, stop) triples."""
    regions = {}
    for k, (start, stop) in enumerate(corners):
        mask = torch.zeros(shape, dtype=torch.bool)
        mask[tuple(slice(a, b) for a, b in zip(start, stop))] = True
        regions[f"r{k}"] = mask
    return regions


def assert_same(result, expected, rtol=1e-10):
    assert (result.n_used, result.n_excluded) == (expected.n_used, expected.n_excluded)
    assert torch.equal(result.excluded, expected.excluded)
    assert relative_error(result.relevance, expected.relevance) <= rtol
    assert torch.allclose(result.sequence_shares, expected.sequence_shares, atol=1e-12, rtol=0)
    assert result.diagnostics.keys() == expected.diagnostics.keys()
    assert result.target == expected.target and result.composite == expected.composite


@pytest.fixture(scope="module")
def case():
    x = torch.randn(1, 3, 8, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return seed_unet(), x, boxes((8, 8, 8), ((2, 3, 3), (5, 6, 5)), ((0, 0, 0), (8, 8, 8)), ((6, 1, 1), (8, 3, 7)))


@pytest.fixture(scope="module")
def volume():
    return torch.randn((1, 3) + VOLUME, dtype=torch.float64, generator=torch.Generator().manual_seed(5))


# --------------------------------------------------------------------------------------------
# Whole volume
# --------------------------------------------------------------------------------------------
def test_whole_volume_runs_the_network_once(case):
    """3 regions, the composition, the logits and a repainted region: one network evaluation."""
    model, x, regions = case
    counting = Counting(model).eval()
    with TracedForward(counting, x, "epsilon_gamma_box", "cpu") as traced:
        maps = traced.explain(regions, target=1)
        composition = traced.composition(1)
        logits = traced.logits
        repainted = traced.explain({"A": ~regions["r0"]}, 1)["A"]
        assert counting.calls == 1 and traced.forward_passes == 1
    with torch.no_grad():
        assert torch.equal(logits, model(x))
    for name, region in regions.items():
        assert_same(maps[name], explain_region(model, x, region, 1, "epsilon_gamma_box", "cpu"))
    assert_same(repainted, explain_region(model, x, ~regions["r0"], 1, "epsilon_gamma_box", "cpu"))
    assert torch.allclose(composition, sequence_composition(model, x, 1, "epsilon_gamma_box", "cpu"),
                          atol=1e-12, rtol=0)


@pytest.mark.parametrize("composite", COMPOSITES)
def test_batched_regions_equal_the_one_region_function(case, composite):
    model, x, regions = case
    with TracedForward(model, x, composite, "cpu") as traced:
        maps = traced.explain(regions, Target(1, contrast=True), tolerance=0.05)
    for name, region in regions.items():
        assert_same(maps[name], explain_region(model, x, region, Target(1, contrast=True), composite, "cpu",
                                               tolerance=0.05))


@pytest.mark.parametrize("net", [ResidualNormNet, SliceDenseNet])
@pytest.mark.parametrize("composite", ["epsilon_gamma_box", "epsilon_plus_flat", "epsilon_alpha2_beta1"])
def test_batched_regions_on_other_layer_types(net, composite):
    """Every node and rule takes a batch of relevance vectors (InstanceNorm, GroupNorm, residual +,
    interpolation, pooling, cat, dense, permutes, flat and z⁺ rules)."""
    model = prepare(net())
    depth = 1 if net is SliceDenseNet else 8
    x = torch.randn(1, 3, depth, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    regions = boxes((depth, 8, 8), ((0, 2, 3), (1, 6, 6)), ((0, 0, 0), (depth, 8, 8)), ((0, 5, 0), (depth, 8, 3)))
    with TracedForward(model, x, composite, "cpu") as traced:
        maps = traced.explain(regions, 0, chunk=2)  # two LRP passes: a batch of 2, then 1
    for name, region in regions.items():
        assert_same(maps[name], explain_region(model, x, region, 0, composite, "cpu"))


def test_batched_regions_equal_the_per_voxel_definition(case):
    model, x, _ = case
    regions = boxes((8, 8, 8), ((2, 3, 3), (4, 5, 5)), ((5, 1, 1), (7, 2, 3)))
    with TracedForward(model, x, "epsilon", "cpu") as traced:
        maps = traced.explain(regions, 1)
    for name, region in regions.items():
        reference, used = per_voxel_reference(model, x, region, 1, "epsilon")
        assert maps[name].n_used == used
        assert relative_error(maps[name].relevance, reference) <= 1e-5
        assert maps[name].diagnostics["conservation_error"] <= 1e-10


def test_one_lrp_pass_for_all_regions_and_one_normalization_per_target(case, monkeypatch):
    model, x, regions = case
    calls = count_graph_passes(monkeypatch)
    with TracedForward(model, x, "epsilon", "cpu") as traced:
        traced.explain(regions, 1, chunk=len(regions))        # all regions in one batch
        assert calls == {"relevance": 1, "transpose": 1}
        traced.explain({"again": regions["r2"]}, 1)           # s_a cached: no transposed pass
        assert calls == {"relevance": 2, "transpose": 1}
        traced.composition(1, chunk=2)                        # C = 3 indicators in batches of 2
        traced.composition(1, tolerance=0.5)                  # cached: no pass at all
        assert calls == {"relevance": 2, "transpose": 3}
        traced.explain({"r0": regions["r0"]}, 0)              # another target: its own s_a (r0's voxels)
        assert calls == {"relevance": 3, "transpose": 4}
        traced.explain(regions, 0)                            # CPU default: one pass per region
        assert calls == {"relevance": 3 + len(regions), "transpose": 5}  # s_a of the other regions' voxels
        traced.explain({"r1": regions["r1"]}, 0)              # every voxel of r1 has its s_a now
        assert calls == {"relevance": 4 + len(regions), "transpose": 5}
    with TracedForward(model, x, "epsilon", "cpu") as traced:
        traced.composition(1)                                 # CPU default: one sequence per pass
        assert calls["transpose"] == 5 + x.shape[1]


def test_normalization_on_region_boxes_adds_each_voxel_once(case, monkeypatch):
    """A region's s_a comes from a transposed pass on its bounding box only; a later, overlapping
    region and the composition add the voxels that still lack it, each once: the numbers of fresh
    objects and of the per-voxel definition."""
    model, x, _ = case
    regions = boxes((8, 8, 8), ((0, 0, 0), (3, 3, 2)), ((2, 1, 1), (4, 4, 4)))
    calls = count_graph_passes(monkeypatch)
    with TracedForward(model, x, "epsilon_gamma_box", "cpu") as traced:
        first = traced.explain({"a": regions["r0"]}, 1)["a"]
        second = traced.explain({"b": regions["r1"]}, 1)["b"]
        assert calls["transpose"] == 2  # b overlaps a: its pass adds b's other voxels
        composition = traced.composition(1)
        assert calls["transpose"] == 2 + x.shape[1]
    assert_same(first, explain_region(model, x, regions["r0"], 1, "epsilon_gamma_box", "cpu"))
    assert_same(second, explain_region(model, x, regions["r1"], 1, "epsilon_gamma_box", "cpu"))
    reference, used = per_voxel_reference(model, x, regions["r1"], 1, "epsilon_gamma_box")
    assert second.n_used == used and relative_error(second.relevance, reference) <= 1e-8
    assert torch.allclose(composition, sequence_composition(model, x, 1, "epsilon_gamma_box", "cpu"),
                          atol=1e-12, rtol=0)


def test_regions_are_named_in_errors(case):
    model, x, regions = case
    with TracedForward(model, x, "epsilon", "cpu") as traced:
        with pytest.raises(ValueError, match="region 'fn' is empty: paint at least one voxel"):
            traced.explain({"tp": regions["r0"], "fn": torch.zeros(8, 8, 8, dtype=torch.bool)}, 1)
        with pytest.raises(ValueError, match=r"region 'fp' has shape \(8, 8, 4\).*output grid is \(8, 8, 8\)"):
            traced.explain({"fp": regions["r0"][..., :4]}, 1)
        with pytest.raises(ValueError, match="non-empty mapping"):
            traced.explain(regions["r0"], 1)
        with pytest.raises(ValueError, match="chunk must be a positive integer"):
            traced.explain(regions, 1, chunk=0)
        with pytest.raises(ValueError, match="target class 2 is out of range"):
            traced.explain(regions, 2)
        assert traced.forward_passes == 1  # the failed calls did not break the object
        assert_same(traced.explain(regions, 1)["r0"], explain_region(model, x, regions["r0"], 1, "epsilon", "cpu"))


def test_all_excluded_region_is_named(case):
    _, x, _ = case
    torch.manual_seed(0)
    model = BiasOnlyNet().double().eval()
    regions = boxes((8, 8, 8), ((0, 0, 0), (8, 8, 4)), ((2, 2, 5), (4, 4, 7)))
    with TracedForward(model, x, "epsilon", "cpu") as traced:
        with pytest.raises(ValueError, match="all 8 voxels of region 'r1' were excluded"):
            traced.explain(regions, 1)
        assert traced.explain({"r0": regions["r0"]}, 1)["r0"].n_excluded == 0


def test_closing_restores_and_refuses_further_use(case):
    model, x, regions = case
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    traced = TracedForward(model, x, "epsilon", "cpu")
    traced.explain(regions, 1)
    # TF32 is off only during a call: a long-lived object leaves the process's settings alone.
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == tf32
    traced.close()
    traced.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        traced.explain(regions, 1)
    with pytest.raises(RuntimeError, match="closed"):
        traced.logits
    model.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            TracedForward(model, x, "epsilon", "cpu")
    finally:
        model.eval()


# --------------------------------------------------------------------------------------------
# Sliding windows
# --------------------------------------------------------------------------------------------
def test_sliding_runs_the_network_once_per_window(volume):
    model = seed_unet(base=4, depth=2)
    counting = Counting(model).eval()
    regions = boxes(VOLUME, ((0, 0, 0), (2, 2, 2)), ((3, 2, 4), (8, 7, 10)), ((10, 8, 12), (12, 10, 14)))
    kwargs = dict(patch_size=PATCH, overlap=0.5, keep_graphs_gib=1.0)
    with TracedForward(counting, volume, "epsilon_gamma_box", "cpu", **kwargs) as traced:
        assert traced.windows == WINDOWS
        corner = traced.explain({"corner": regions["r0"]}, 1)["corner"]
        assert counting.calls == 1  # only the window touching the region ran
        maps = traced.explain(regions, 1)
        composition = traced.composition(1, chunk=2)
        logits = traced.logits
        assert counting.calls == traced.forward_passes == WINDOWS
        assert all(m.diagnostics["patches_retraced"] == 0 for m in maps.values())
    assert relative_error(logits, sliding_window_logits(model, volume, PATCH, 0.5, device="cpu")) <= 1e-12
    assert_same(corner, maps["r0"])
    for name, region in regions.items():
        assert_same(maps[name], sliding_explain_region(model, volume, region, 1, "epsilon_gamma_box",
                                                       patch_size=PATCH, device="cpu"))
        shares, used, excluded = region_shares(composition, region)
        assert (used, excluded) == (maps[name].n_used, maps[name].n_excluded)
        assert torch.allclose(shares, maps[name].sequence_shares, atol=1e-10)
    expected = sliding_sequence_composition(model, volume, 1, "epsilon_gamma_box", patch_size=PATCH, device="cpu")
    assert torch.allclose(composition, expected, atol=1e-10, rtol=0)


def test_sliding_without_budget_retraces_and_gives_the_same_numbers(volume):
    """keep_graphs_gib=0 keeps only the most recent window graph: windows are traced again, and
    the input is the one given at construction even if the caller changes x afterwards."""
    model = seed_unet(base=4, depth=2)
    counting = Counting(model).eval()
    regions = boxes(VOLUME, ((3, 2, 4), (8, 7, 10)), ((0, 0, 0), (12, 10, 14)))
    x = volume.clone()
    with TracedForward(counting, x, "epsilon", "cpu", patch_size=PATCH, keep_graphs_gib=0) as traced:
        first = traced.explain(regions, 1)
        # 12 windows: normalization sweep, then the LRP sweep re-traces all but the last one
        assert counting.calls == 2 * WINDOWS - 1 and first["r0"].diagnostics["patches_retraced"] == WINDOWS - 1
        x.mul_(2.0)
        again = traced.explain(regions, 1)
        assert counting.calls == 3 * WINDOWS - 2  # s_a cached: the LRP sweep only
    for name in regions:
        assert_same(again[name], first[name], rtol=1e-12)  # another summation order
        assert_same(first[name], sliding_explain_region(model, volume, regions[name], 1, "epsilon",
                                                        patch_size=PATCH, device="cpu"))


class GraphsAlive(nn.Module):
    """Wraps a model and records, at each forward call, how many traced graphs are alive."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.alive = model, []

    def forward(self, x):
        self.alive.append(sum(type(o) is Graph for o in gc.get_objects()))
        return self.model(x)


def test_without_budget_one_window_graph_is_alive_at_a_time(volume):
    """keep_graphs_gib=0: a window's graph is freed before the next window is traced (memory)."""
    watched = GraphsAlive(seed_unet(base=4, depth=2)).eval()
    with TracedForward(watched, volume, "epsilon", "cpu", patch_size=PATCH, keep_graphs_gib=0) as traced:
        traced.composition(1)
        traced.explain(boxes(VOLUME, ((3, 2, 4), (8, 7, 10))), 0)
    assert len(watched.alive) > WINDOWS and max(watched.alive) == 0
    sliding_sequence_composition(watched, volume, 1, "epsilon", patch_size=PATCH, device="cpu")
    assert max(watched.alive) == 0


def test_a_volume_that_fits_one_patch_runs_whole(case):
    model, x, regions = case
    with TracedForward(model, x, "epsilon", "cpu", patch_size=(8, 16, 16)) as traced:
        assert traced.windows == 1
        result = traced.explain(regions, 1)["r0"]
    assert_same(result, explain_region(model, x, regions["r0"], 1, "epsilon", "cpu"))
    with pytest.raises(ValueError, match="pad the volume"):
        TracedForward(model, x, "epsilon", "cpu", patch_size=(8, 16, 16), whole_if_fits=False)
    with pytest.raises(ValueError, match="keep_graphs_gib"):
        TracedForward(model, x, "epsilon", "cpu", patch_size=4, keep_graphs_gib=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu_and_the_model_comes_back(volume):
    model = seed_unet(base=4, depth=2).float()
    for module in model.modules():  # see test_engine_exactness.test_cuda_matches_cpu: biases
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):  # would absorb the score
            nn.init.zeros_(module.bias)
    regions = boxes(VOLUME, ((3, 2, 4), (8, 7, 10)), ((0, 0, 0), (4, 4, 4)))
    out = {}
    for device in ("cpu", "cuda"):
        with TracedForward(model, volume.float(), "epsilon_gamma_box", device, patch_size=PATCH) as traced:
            assert next(model.parameters()).device.type == device
            out[device] = traced.explain(regions, 1), traced.composition(1), traced.logits
        assert next(model.parameters()).device.type == "cpu"
    (maps_cpu, comp_cpu, logits_cpu), (maps_gpu, comp_gpu, logits_gpu) = out["cpu"], out["cuda"]
    assert logits_gpu.device.type == "cpu" and relative_error(logits_gpu, logits_cpu) <= 1e-5
    for name in regions:
        assert (maps_gpu[name].n_used, maps_gpu[name].n_excluded) == (maps_cpu[name].n_used, maps_cpu[name].n_excluded)
        assert relative_error(maps_gpu[name].relevance, maps_cpu[name].relevance) <= 1e-4
    conditioned = logits_cpu[0, 1].abs() > 1e-3  # shares of voxels with a logit ≈ 0 are ill-conditioned in fp32
    assert float((comp_gpu - comp_cpu)[:, conditioned].abs().max()) <= 1e-4
