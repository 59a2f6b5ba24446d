"""Parity of our rules and composites with Zennit, the reference implementation, in float64."""
import pytest
import torch
from torch import nn

zennit = pytest.importorskip("zennit")
from zennit import rules as zrules  # noqa: E402
from zennit.canonizers import SequentialMergeBatchNorm  # noqa: E402
from zennit.composites import (EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlusFlat, LayerMapComposite,  # noqa: E402
                               SpecialFirstLayerMapComposite, layer_map_base)
from zennit.types import Convolution  # noqa: E402

from LRPSegmentationLib.engine import (AlphaBeta, Composite, Epsilon, Flat, Gamma, Identity, WSquare,  # noqa: E402
                                       ZBox, ZPlus, make_composite, prepare_graph)
from lrp_models import SliceDenseNet, prepare, seed_unet  # noqa: E402

LOW = torch.tensor([-2.5, -3.0, -2.0], dtype=torch.float64)
HIGH = torch.tensor([2.5, 3.5, 2.0], dtype=torch.float64)


def zennit_relevance(model, x, r, composite):
    x = x.clone().requires_grad_(True)
    with composite.context(model) as modified:
        out = modified(x)
        out = out[0] if isinstance(out, tuple) else out
        (relevance,) = torch.autograd.grad(out, x, r)
    return relevance


def our_relevance(model, x, r, composite):
    return prepare_graph(model, x, composite).relevance(r)


def zennit_composite(name):
    canonizers = [SequentialMergeBatchNorm()]
    low, high = LOW.view(1, -1, 1, 1, 1), HIGH.view(1, -1, 1, 1, 1)
    if name == "epsilon":  # Zennit has no such named composite; built from its parts
        return SpecialFirstLayerMapComposite(
            layer_map=layer_map_base() + [(Convolution, zrules.Epsilon()), (nn.Linear, zrules.Epsilon())],
            first_map=[(Convolution, zrules.ZBox(low, high))], canonizers=canonizers)
    if name == "epsilon_gamma_box":
        return EpsilonGammaBox(low=low, high=high, canonizers=canonizers)
    if name == "epsilon_plus_flat":
        return EpsilonPlusFlat(canonizers=canonizers)
    return EpsilonAlpha2Beta1(canonizers=canonizers)


def close(ours, theirs, rtol=1e-4):
    return float((ours - theirs).abs().max() / theirs.abs().max()) <= rtol


RULE_PAIRS = [
    (Epsilon(1e-6), zrules.Epsilon(1e-6)),
    (Epsilon(0.1), zrules.Epsilon(0.1)),
    (Gamma(0.25), zrules.Gamma(0.25)),
    (ZPlus(), zrules.ZPlus()),
    (AlphaBeta(2.0, 1.0), zrules.AlphaBeta(2.0, 1.0)),
    (ZBox(LOW, HIGH), zrules.ZBox(LOW.view(1, -1, 1, 1, 1), HIGH.view(1, -1, 1, 1, 1))),
    (Flat(), zrules.Flat()),
    (WSquare(), zrules.WSquare()),
]


@pytest.mark.parametrize("ours,theirs", RULE_PAIRS, ids=lambda r: type(r).__name__)
@pytest.mark.parametrize("layer", ["conv3d", "conv_transpose3d"])
def test_each_rule_matches_zennit_on_a_layer(ours, theirs, layer):
    torch.manual_seed(0)
    module = (nn.Conv3d(3, 4, 3, padding=1) if layer == "conv3d"
              else nn.ConvTranspose3d(3, 4, 2, stride=2)).double().eval()
    model = nn.Sequential(module)
    x = torch.randn(1, 3, 4, 5, 6, dtype=torch.float64)
    r = torch.randn_like(model(x))
    composite = Composite("single", conv=ours, dense=ours, affine=ours)
    expected = zennit_relevance(model, x, r, LayerMapComposite([(Convolution, theirs)]))
    assert close(our_relevance(model, x, r, composite), expected)


# Flat and w² ignore the layer input, so behind Zennit's *functional* ReLU (gradient, which zeroes
# negative inputs) they differ from Zennit's ReLU-module rule (pass), which we use for both.
@pytest.mark.parametrize("ours,theirs", RULE_PAIRS[:5], ids=lambda r: type(r).__name__)
def test_each_rule_matches_zennit_on_a_dense_layer(ours, theirs):
    torch.manual_seed(0)
    model = SliceDenseNet()
    model.bn = nn.Identity()  # a plain Conv2d → ReLU → Linear stack
    model = prepare(model)
    x = torch.randn(1, 3, 1, 5, 6, dtype=torch.float64)
    r = torch.randn_like(model(x))
    composite = Composite("single", conv=ours, dense=ours, affine=ours)
    expected = zennit_relevance(model, x, r, LayerMapComposite([(Convolution, theirs), (nn.Linear, theirs)]))
    assert close(our_relevance(model, x, r, composite), expected)


@pytest.mark.parametrize("name", ["epsilon", "epsilon_gamma_box", "epsilon_plus_flat", "epsilon_alpha2_beta1"])
def test_composites_match_zennit_on_the_seed_unet(name):
    """Conv3d, BatchNorm3d (folded), ReLU, MaxPool3d, ConvTranspose3d, torch.cat skips, 1×1×1 head."""
    model = seed_unet()
    x = torch.randn(1, 3, 8, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 1.5
    x = x.clamp(LOW.view(1, -1, 1, 1, 1), HIGH.view(1, -1, 1, 1, 1))
    logits = model(x)
    r = torch.zeros_like(logits)
    r[:, 1, 2:6, 2:6, 3:5] = logits[:, 1, 2:6, 2:6, 3:5]
    ours = our_relevance(model, x, r, make_composite(name, low=LOW, high=HIGH))
    theirs = zennit_relevance(model, x, r, zennit_composite(name))
    assert close(ours, theirs)


def test_average_pooling_and_dense_match_zennit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.ReLU(), nn.AvgPool3d(2),
                          nn.ConvTranspose3d(4, 4, 2, stride=2), nn.ReLU(), nn.Conv3d(4, 2, 1)).double().eval()
    x = torch.randn(1, 3, 4, 4, 4, dtype=torch.float64).clamp(-2, 2)
    r = torch.randn_like(model(x))
    ours = our_relevance(model, x, r, make_composite("epsilon_gamma_box", low=LOW, high=HIGH))
    assert close(ours, zennit_relevance(model, x, r, zennit_composite("epsilon_gamma_box")))


@pytest.mark.parametrize("ours,theirs", [(Identity(), zrules.Pass()), (Epsilon(1e-6), zrules.Epsilon(1e-6))],
                         ids=["identity", "epsilon"])
def test_standalone_norm_rules_match_zennit(ours, theirs):
    """A BatchNorm that cannot be folded (after a ReLU): our affine rule against Zennit's rule on the
    BatchNorm module itself (Pass = identity; Epsilon, with the running statistics as the bias)."""
    torch.manual_seed(0)
    model = prepare(nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm3d(4), nn.Conv3d(4, 2, 1)))
    x = torch.randn(1, 3, 4, 5, 6, dtype=torch.float64)
    r = torch.randn_like(model(x))
    composite = Composite("single", conv=Epsilon(1e-6), dense=Epsilon(1e-6), affine=ours)
    # First match wins: ours before layer_map_base's own (BatchNorm, Pass) — Zennit's default for a
    # BatchNorm it could not merge is the identity, as ours.
    zennit_map = LayerMapComposite([(nn.BatchNorm3d, theirs), (Convolution, zrules.Epsilon(1e-6))] + layer_map_base())
    assert close(our_relevance(model, x, r, composite), zennit_relevance(model, x, r, zennit_map))


def test_gelu_and_repeat_pass_relevance_like_zennit():
    """GELU is identity-gated (Zennit's Pass on the module); `repeat` has no Zennit rule: it goes
    through the gradient, which is what our adjoint does (copies sum back)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act, self.head = nn.Conv3d(3, 4, 3, padding=1), nn.GELU(), nn.Conv3d(8, 2, 1)

        def forward(self, x):
            return self.head(self.act(self.conv(x)).repeat(1, 2, 1, 1, 1))

    torch.manual_seed(0)
    model = Net().double().eval()
    x = torch.randn(1, 3, 4, 5, 6, dtype=torch.float64)
    r = torch.randn_like(model(x))
    composite = Composite("single", conv=Epsilon(1e-6), dense=Epsilon(1e-6), affine=Identity())
    zennit_map = LayerMapComposite([(nn.GELU, zrules.Pass()), (Convolution, zrules.Epsilon(1e-6))])
    assert close(our_relevance(model, x, r, composite), zennit_relevance(model, x, r, zennit_map))


# Zennit has no rule for LayerNorm with frozen σ (the LN rule) or for attention with constant
# weights (the AH rule) of Ali et al. 2022, nor for sigmoid gates (signal-take-all): those are
# checked against the per-voxel definition and by their structure in test_engine_modern.py.
