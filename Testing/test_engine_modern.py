"""Modern 3D segmentation networks explained exactly (float64, against the per-voxel definition):
pre-activation residuals (unfoldable norms), attention gates, copies, transformers (LN/AH rules)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from LRPSegmentationLib.engine import (Composite, Epsilon, Identity, UnsupportedOperationError, explain_region,
                                       TracedForward, make_composite, prepare_graph, region_shares)
from LRPSegmentationLib.engine.nodes import LayerNode, NormNode, PassNode
from lrp_models import PreActResidualNet, per_voxel_reference, prepare

nets = pytest.importorskip("monai.networks.nets")


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# name → (builder, spatial size); every network takes 2 sequences and returns 2 classes.
NETWORKS = {
    "PreActResidualNet": (lambda: PreActResidualNet(), 8),
    "SegResNet": (lambda: nets.SegResNet(3, 4, 2, 2, blocks_down=(1, 1), blocks_up=(1,),
                                         norm=("group", {"num_groups": 2})), 8),
    "SegResNetDS": (lambda: nets.SegResNetDS(3, 4, 2, 2, blocks_down=(1, 1), norm="instance"), 8),
    "AttentionUnet": (lambda: nets.AttentionUnet(3, 2, 2, channels=(4, 8), strides=(2,)), 8),
    "VNet": (lambda: nets.VNet(3, 2, 2), 16),
    "UNETR": (lambda: nets.UNETR(2, 2, 16, feature_size=4, hidden_size=8, mlp_dim=8, num_heads=2), 16),
    "SwinUNETR": (lambda: nets.SwinUNETR(2, 2, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                                         norm_name="batch"), 32),
}
HEAVY = {"VNet", "UNETR", "SwinUNETR"}  # float64 forward passes of ~0.5–2 s here: fewer voxels, ε only


@pytest.fixture(scope="module", params=list(NETWORKS))
def network_case(request):
    build, size = NETWORKS[request.param]
    torch.manual_seed(0)
    model = prepare(build())
    x = torch.randn(1, 2, size, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    region = torch.zeros(size, size, size, dtype=torch.bool)
    if request.param in HEAVY:
        region[3, 4, 4:6] = True
    else:
        region[3:5, 3:5, 4] = True
    return request.param, model, x, region


def test_region_equals_per_voxel_loop_and_composition_agrees(network_case):
    name, model, x, region = network_case
    composite = "epsilon" if name in HEAVY else "epsilon_gamma_box"
    with TracedForward(model, x, composite, device="cpu") as traced:  # one trace for both questions
        result = traced.explain_region(region, target=1)
        composition = traced.composition(target=1)
    reference, used = per_voxel_reference(model, x, region, 1, composite)
    assert result.n_used == used > 0
    assert relative_error(result.relevance, reference) <= 1e-10
    assert result.diagnostics["conservation_error"] <= 1e-10
    shares, used, excluded = region_shares(composition, region)
    assert (used, excluded) == (result.n_used, result.n_excluded)
    assert torch.allclose(shares, result.sequence_shares, atol=1e-10)
    assert torch.allclose(shares, reference.flatten(1).sum(1) / reference.sum(), atol=1e-10)


def _nodes(model, x, composite="epsilon"):
    graph = prepare_graph(model, x, composite)
    return [graph.nodes[i] for i in graph.live]


def test_pre_activation_norms_stay_standalone_and_pass_relevance():
    model = prepare(PreActResidualNet())
    x = torch.randn(1, 2, 6, 6, 6, dtype=torch.float64)
    nodes = _nodes(model, x)
    standalone = [n for n in nodes if isinstance(n, LayerNode) and n.kind == "affine"]
    assert len(standalone) == 3  # group, instance and batch norm: their input also feeds the skip
    assert all(isinstance(n.rule, Identity) for n in standalone)
    # The sigmoid gate is a constant weight: its product passes relevance to the signal only,
    # and the gate's convolution is not on the relevance path at all.
    assert any(isinstance(n, PassNode) and "(gate)" in n.name for n in nodes)
    assert not any("gate" in n.name and isinstance(n, LayerNode) for n in nodes)


def test_foldable_norms_are_still_folded():
    model = prepare(nets.SegResNetDS(3, 4, 2, 2, blocks_down=(1, 1), norm="instance"))
    x = torch.randn(1, 2, 8, 8, 8, dtype=torch.float64)
    names = [n.name for n in _nodes(model, x) if isinstance(n, LayerNode)]
    assert any(name.endswith("+ instance_norm") for name in names)  # conv → norm: folded
    assert any(name.endswith(": instance_norm") for name in names)  # norm of a skip input: standalone


def test_identity_conserves_and_epsilon_does_not_on_standalone_norms():
    """Without biases every other rule of the "epsilon" composite conserves relevance, so the
    conserved fraction Lᵀ1 of each output voxel shows what the standalone-norm rule does."""
    torch.manual_seed(0)
    model = prepare(PreActResidualNet(bias=False))
    x = torch.randn(1, 2, 6, 6, 6, dtype=torch.float64)
    base = make_composite("epsilon")
    with_epsilon = Composite("epsilon_affine", base.conv, base.dense, Epsilon(1e-6), base.first, base.stabilizer)
    ones = torch.ones_like(x)
    identity = prepare_graph(model, x, "epsilon").transpose(ones)
    epsilon = prepare_graph(model, x, with_epsilon).transpose(ones)
    assert float((identity - 1).abs().max()) <= 1e-2    # only the ε stabilizers lose a little
    assert float((epsilon - 1).abs().max()) > 0.1       # the norm's shift absorbs or adds relevance
    region = torch.zeros(6, 6, 6, dtype=torch.bool)
    region[2:4, 2:4, 2:4] = True
    result = explain_region(model, x, region, target=1, composite="epsilon", device="cpu")
    assert result.diagnostics["min_abs_conserved_fraction"] >= 0.99


def test_transformer_rules_are_linear_nodes():
    """UNETR: LayerNorm with σ frozen and attention weights @ V are z-rule nodes on fixed linear
    maps; the q·kᵀ scores feed only the softmax, so the q and k projections carry no relevance."""
    model = prepare(NETWORKS["UNETR"][0]())
    x = torch.randn(1, 2, 16, 16, 16, dtype=torch.float64)
    nodes = _nodes(model, x)
    assert sum(isinstance(n, NormNode) and "σ frozen" in n.name for n in nodes) == 2 * 12 + 1
    assert sum(isinstance(n, NormNode) and "fixed factor" in n.name for n in nodes) == 12


class TwoSignalProduct(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv3d(2, 2, 1), nn.Conv3d(2, 2, 1), nn.Conv3d(2, 2, 1)

    def forward(self, x):
        return self.head(self.a(x) * self.b(x))


class SigmoidOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Conv3d(2, 2, 1)

    def forward(self, x):
        return torch.sigmoid(self.head(x))


class TanhGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Conv3d(2, 2, 1)

    def forward(self, x):
        return self.head(x * torch.tanh(x))


def test_products_and_outputs_that_stay_unsupported():
    x = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64)
    region = torch.ones(4, 4, 4, dtype=torch.bool)
    with pytest.raises(UnsupportedOperationError, match="two input-dependent tensors in module 'TwoSignalProduct'.*"
                                                        "neither factor is a gate"):
        explain_region(TwoSignalProduct().double().eval(), x, region, device="cpu")
    with pytest.raises(UnsupportedOperationError, match="computed by torch.sigmoid.*explain logits"):
        explain_region(SigmoidOutput().double().eval(), x, region, device="cpu")
    with pytest.raises(UnsupportedOperationError, match="torch.tanh in module 'TanhGate' is not supported"):
        explain_region(TanhGate().double().eval(), x, region, device="cpu")


def test_copies_send_relevance_back_summed():
    """x.repeat / expand / roll: the adjoint sums the copies back (the z-rule head keeps
    everything without a bias, so the map sums to the explained logit)."""

    class Copies(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Conv3d(6, 2, 1, bias=False)

        def forward(self, x):
            copies = torch.cat([x.repeat(1, 2, 1, 1, 1), x[:, :1].expand(1, 2, 4, 4, 4).roll(1, dims=2)], dim=1)
            return self.head(F.relu(copies))

    model = Copies().double().eval()
    x = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64)
    composite = Composite("z", Epsilon(1e-12), Epsilon(1e-12), Identity(), None, 1e-12)
    graph = prepare_graph(model, x, composite)
    r = torch.zeros_like(graph.logits)
    r[0, 1, 2, 2, 2] = graph.logits[0, 1, 2, 2, 2]
    relevance = graph.relevance(r)
    assert torch.isclose(relevance.sum(), graph.logits[0, 1, 2, 2, 2], rtol=1e-9)


def test_broadcast_addition_sums_relevance_back():
    """conv_a(x) (3 channels) + conv_b(x) (1 channel, broadcast): the narrow branch's relevance is
    summed back over the channels it was broadcast to, so nothing is lost or duplicated."""

    class Broadcast(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv3d(2, 3, 1, bias=False), nn.Conv3d(2, 1, 1, bias=False)
            self.head = nn.Conv3d(3, 2, 1, bias=False)

        def forward(self, x):
            return self.head(self.a(x) + self.b(x))

    torch.manual_seed(0)
    model = Broadcast().double().eval()
    x = torch.randn(1, 2, 3, 3, 3, dtype=torch.float64)
    graph = prepare_graph(model, x, Composite("z", Epsilon(1e-12), Epsilon(1e-12), Identity(), None, 1e-12))
    r = torch.zeros_like(graph.logits)
    r[0, 1, 1, 1, 1] = graph.logits[0, 1, 1, 1, 1]
    assert torch.isclose(graph.relevance(r).sum(), graph.logits[0, 1, 1, 1, 1], rtol=1e-9)
    assert float((graph.transpose(torch.ones_like(x)) - 1).abs().max()) <= 1e-6  # only the 1e-12 stabilizers


@pytest.mark.parametrize("name, kwargs, size", [
    ("monai.SegResNet", {"init_filters": 4, "blocks_down": (1, 1), "blocks_up": (1,),
                         "norm": ("group", {"num_groups": 2})}, 8),
    ("monai.AttentionUnet", {"channels": (4, 8), "strides": (2,)}, 8),
])
def test_registered_architectures_build_and_explain(name, kwargs, size):
    from LRPSegmentationLib.models.registry import available_architectures, build_architecture
    assert {"monai.SegResNet", "monai.SegResNetDS", "monai.AttentionUnet", "monai.VNet", "monai.UNETR",
            "monai.SwinUNETR"} <= set(available_architectures())
    model = prepare(build_architecture(name, in_channels=2, out_channels=2, **kwargs))
    x = torch.randn(1, 2, size, size, size, dtype=torch.float64)
    region = torch.zeros(size, size, size, dtype=torch.bool)
    region[2:4, 2:4, 2] = True
    assert explain_region(model, x, region, target=1, device="cpu").n_used > 0


def test_architecture_arguments_are_checked():
    from LRPSegmentationLib.models.registry import build_architecture
    with pytest.raises(ValueError, match="in_channels must divide 16"):
        build_architecture("monai.VNet", in_channels=6)
    with pytest.raises(ValueError, match="feature_size must be a multiple of 12"):
        build_architecture("monai.SwinUNETR", feature_size=16)


def test_writing_a_signal_into_a_buffer_is_refused():
    """out[:, :2] = conv(x) writes input-dependent values into a constant buffer through an
    operation without LRP semantics: using the buffer afterwards must raise, not treat it as constant."""

    class Writes(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv3d(2, 2, 1), nn.Conv3d(4, 2, 1)

        def forward(self, x):
            out = torch.zeros(1, 4, *x.shape[2:], dtype=x.dtype)
            out[:, :2] = self.conv(x)
            return self.head(out)

    x = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64)
    with pytest.raises(UnsupportedOperationError, match="__setitem__ in module 'Writes'"):
        explain_region(Writes().double().eval(), x, torch.ones(4, 4, 4, dtype=torch.bool), device="cpu")


def test_flash_attention_equals_the_explicit_form():
    """F.scaled_dot_product_attention gets the AH rule too: the same map as softmax(q·kᵀ)·V written out."""

    class Attention(nn.Module):
        def __init__(self, fused: bool):
            super().__init__()
            self.fused, self.qkv, self.proj = fused, nn.Linear(2, 6), nn.Linear(2, 2)

        def forward(self, x):                                    # (1, 2, D, H, W)
            tokens = x.flatten(2).transpose(1, 2)                # (1, N, 2)
            q, k, v = self.qkv(F.layer_norm(tokens, (2,))).chunk(3, dim=-1)
            if self.fused:
                attended = F.scaled_dot_product_attention(q, k, v)
            else:
                attended = torch.softmax(q @ k.transpose(1, 2) / 2 ** 0.5, dim=-1) @ v
            out = self.proj(attended + tokens)
            return out.transpose(1, 2).reshape(x.shape)

    torch.manual_seed(0)
    explicit = Attention(False).double().eval()
    fused = Attention(True).double().eval()
    fused.load_state_dict(explicit.state_dict())
    x = torch.randn(1, 2, 2, 3, 3, dtype=torch.float64)
    region = torch.zeros(2, 3, 3, dtype=torch.bool)
    region[1, 1:, 1:] = True
    a = explain_region(explicit, x, region, target=1, composite="epsilon", device="cpu")
    b = explain_region(fused, x, region, target=1, composite="epsilon", device="cpu")
    assert relative_error(b.relevance, a.relevance) <= 1e-10
