"""The engine's fast paths against their plain definitions, in float64: each rule on the support of
the relevance (`linear.Crop`), per-channel layer products, the two-map z^B rule, the per-channel
transposed pass, the transposed pass on a box of the output, and explain_region for regions touching the
volume's border."""

import pytest
import torch
import torch.nn.functional as F

from LRPSegmentationLib.engine import explain_region
from LRPSegmentationLib.engine.linear import LinearLayer
from LRPSegmentationLib.engine.nodes import LayerNode
from LRPSegmentationLib.engine.region import prepare_graph
from LRPSegmentationLib.engine.rules import AlphaBeta, Epsilon, Flat, Gamma, WSquare, ZBox, ZPlus
from LRPSegmentationLib.engine.support import MOST_OF, bounding_box, mask_of, slices, volume
from lrp_models import per_voxel_reference, seed_unet

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


def conv(n, cin=4, cout=4, k=3, p=1, d=1, groups=1, stride=1, transposed=False, bias=False, seed=0):
    g = gen(seed)
    shape = (cin, cout // groups) if transposed else (cout, cin // groups)
    weight = torch.randn(*shape, *(k,) * n, dtype=F64, generator=g)
    return LinearLayer("conv", weight, torch.randn(cout, dtype=F64, generator=g) if bias else None,
                       stride=(stride,) * n, padding=(p,) * n, dilation=(d,) * n, transposed=transposed,
                       output_padding=(0,) * n, groups=groups)


def sparse_s(out_shape, where: str, seed=1):
    """s (2, C, ...) with random values on a small box: at the first corner, inside, or at the far border."""
    s = torch.zeros(out_shape, dtype=F64)
    box = []
    for size in out_shape[2:]:
        length = max(1, size // 4)
        start = {"corner": 0, "middle": (size - length) // 2, "border": size - length}[where]
        box.append(slice(start, start + length))
    s[(slice(None), slice(None), *box)] = torch.randn(s[(slice(None), slice(None), *box)].shape,
                                                      dtype=F64, generator=gen(seed))
    return s


SIZES = {1: 13, 2: 11, 3: 10}
CASES = [(n, k, p, d, g) for n in (1, 2, 3) for k, p, d in [(1, 0, 1), (3, 1, 1), (3, 0, 2), (5, 2, 1), (5, 2, 2), (3, 2, 1)]
         for g in (1, 2)]


def layer_node(layer: LinearLayer, rule, x: torch.Tensor) -> LayerNode:
    """A prepared graph node for ``layer`` with ``rule`` on input x (batch 1)."""
    node = LayerNode((0,), "test", layer, "conv")
    node.rule, node.input_shape = rule, x.shape
    node.state = rule.prepare(layer, x, layer.apply(x, layer.weight, layer.bias))
    return node


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("n,k,p,d,groups", CASES)
def test_relevance_on_the_support_equals_the_whole_tensors(n, k, p, d, groups, stride):
    """`LayerNode.relevance` runs the rule on the bounding box of r's nonzero values (`Crop`): the
    same input relevance as on the whole tensors, and the cropped adjoint satisfies <Ax, s> = <x, Aᵀs>."""
    layer = conv(n, k=k, p=p, d=d, groups=groups, stride=stride, bias=True)
    x = torch.randn((1, 4) + (SIZES[n],) * n, dtype=F64, generator=gen(3))
    node = layer_node(layer, Epsilon(), x)
    out_shape = (2, 4) + layer.output_spatial(x.shape[2:])
    for where in ("corner", "middle", "border"):
        s = sparse_s(out_shape, where)
        crop = layer.crop(bounding_box(s.ne(0).flatten(0, 1).any(0)), x.shape[2:])
        assert crop is not None, "a small box must take the cropped path"
        reference = node.rule.relevance(layer, node.state, s)
        assert rel(node.relevance(s)[0], reference) <= 1e-12
        if crop.reads_padding_only:
            continue
        adjoint = s.new_zeros((2,) + tuple(x.shape[1:]))
        adjoint[crop.input_index] = crop.unpad(crop.layer.adjoint(crop.output(s), layer.weight,
                                                                  crop.input_shape(x.shape)))
        assert rel(adjoint, layer.adjoint(s, layer.weight, x.shape)) <= 1e-12
        assert torch.isclose((layer.apply(x, layer.weight) * s).sum(), (x * adjoint).sum(), rtol=1e-12, atol=1e-12)
    # A box over half of the output: the whole tensors are used; no support: zero relevance.
    assert layer.crop(tuple((0, m) for m in out_shape[2:]), x.shape[2:]) is None
    zero = node.relevance(torch.zeros(out_shape, dtype=F64))[0]
    assert zero.shape == (2,) + tuple(x.shape[1:]) and not zero.any()


@pytest.mark.parametrize("n", [1, 2, 3])
def test_transposed_and_dense_layers_are_not_cropped(n):
    for layer in (conv(n, k=2, p=0, stride=2, transposed=True), conv(n, transposed=True)):
        assert layer.crop(((0, 1),) * n, (SIZES[n],) * n) is None
    dense = LinearLayer("dense", torch.randn(3, 4, dtype=F64), None)
    assert dense.crop(((0, 1),), (4,)) is None


RULES = [Epsilon(), Epsilon(0.1), Gamma(0.25), ZBox(-3.0, 3.0), ZPlus(), AlphaBeta(), Flat(), WSquare()]
GEOMETRIES = [(3, 3, 1, 1, 1), (3, 3, 0, 2, 2), (2, 5, 2, 1, 1), (3, 1, 0, 1, 1)]  # n, k, p, d, stride


@pytest.mark.parametrize("rule", RULES, ids=repr)
@pytest.mark.parametrize("n,k,p,d,stride", GEOMETRIES)
def test_every_rule_on_a_crop_equals_the_whole_tensors(rule, n, k, p, d, stride):
    """Each rule's `crop` of its state: relevance from a sparse r and the transposed pass on an
    output box equal the whole-tensor ones there (signed input: γ's x⁻ terms and z⁺'s take part)."""
    layer = conv(n, k=k, p=p, d=d, stride=stride, bias=True)
    x = torch.randn((1, 4) + (SIZES[n],) * n, dtype=F64, generator=gen(5))
    node = layer_node(layer, rule, x)
    out_shape = (2, 4) + layer.output_spatial(x.shape[2:])
    v = torch.rand((2,) + tuple(x.shape[1:]), dtype=F64, generator=gen(6)) + 0.5
    whole_v = rule.transpose(layer, node.state, v)
    for where in ("corner", "middle", "border"):
        s = sparse_s(out_shape, where)
        box = bounding_box(s[0, 0] != 0)
        assert rule.crop(node.state, layer.crop(box, x.shape[2:])) is not None
        assert rel(node.relevance(s)[0], rule.relevance(layer, node.state, s)) <= 1e-12
        assert rel(node.transpose([v], box)[slices(box)], whole_v[slices(box)]) <= 1e-12


@pytest.mark.parametrize("layer", [conv(3, cin=3, cout=5), conv(3, cin=3, cout=5, k=2, p=0, stride=2, transposed=True),
                                   conv(2, cin=3, cout=4, k=5, p=2, d=2, bias=True)])
def test_apply_per_channel_equals_masked_input(layer):
    x = torch.randn((1, 3) + (6,) * (layer.weight.dim() - 2), dtype=F64, generator=gen(5))
    for weight in (layer.weight, layer.weight.clamp(min=0)):
        for channels in ([0, 1, 2], [2, 0], [1]):
            rows = layer.apply_per_channel(x, weight, channels)
            reference = []
            for c in channels:
                mask = torch.zeros_like(x)
                mask[:, c] = 1
                reference.append(layer.apply(x * mask, weight))
            assert rel(rows, torch.cat(reference)) <= 1e-12


def test_apply_per_channel_refuses_other_layers():
    x = torch.randn(1, 4, 5, 5, 5, dtype=F64)
    grouped = conv(3, groups=2)
    assert grouped.apply_per_channel(x, grouped.weight, [0, 1]) is None
    dense = LinearLayer("dense", torch.randn(3, 4, dtype=F64), None)
    assert dense.apply_per_channel(torch.randn(1, 4, dtype=F64), dense.weight, [0, 1]) is None
    channel = LinearLayer("channel", torch.randn(4, dtype=F64), torch.randn(4, dtype=F64))
    assert channel.apply_per_channel(x, channel.weight, [0, 1]) is None


def zbox_reference(layer, x, low, high, eps):
    """Textbook z^B: x⊙Wᵀs − low⊙W⁺ᵀs − high⊙W⁻ᵀs, s = r / stab(Wx + b − (W⁺low + b⁺) − (W⁻high + b⁻));
    returns (relevance(r), transpose(v)) as functions, built with F.conv3d / F.conv_transpose3d."""
    w, b, p = layer.weight, layer.bias, layer.padding
    wp, wn, bp, bn = w.clamp(min=0), w.clamp(max=0), b.clamp(min=0), b.clamp(max=0)
    low, high = (torch.as_tensor(t, dtype=F64).view(1, -1, 1, 1, 1).expand_as(x) for t in (low, high))
    d = F.conv3d(x, w, b, padding=p) - F.conv3d(low, wp, bp, padding=p) - F.conv3d(high, wn, bn, padding=p)
    inv = 1 / torch.where(d >= 0, d + eps, d - eps)

    def adj(s, weight):
        return F.conv_transpose3d(s, weight, padding=p)

    def relevance(r):
        s = r * inv
        return x * adj(s, w) - low * adj(s, wp) - high * adj(s, wn)

    def transpose(v):
        return (F.conv3d(x * v, w, padding=p) - F.conv3d(low * v, wp, padding=p)
                - F.conv3d(high * v, wn, padding=p)) * inv
    return relevance, transpose


@pytest.mark.parametrize("bounds", ["per_channel", "scalar"])
def test_zbox_equals_textbook_three_term_rule(bounds):
    layer = conv(3, cin=3, cout=5, bias=True, seed=6)
    x = torch.randn(1, 3, 7, 6, 5, dtype=F64, generator=gen(7))
    if bounds == "per_channel":
        low, high = x.amin(dim=(0, 2, 3, 4)) - 0.3, x.amax(dim=(0, 2, 3, 4)) + 0.2
    else:
        low, high = float(x.min()) - 0.3, float(x.max()) + 0.2
    rule = ZBox(low, high, stabilizer=1e-6)
    z = layer.apply(x, layer.weight, layer.bias)
    state = rule.prepare(layer, x, z)
    ref_relevance, ref_transpose = zbox_reference(layer, x, low, high, 1e-6)
    r = torch.randn(2, 5, 7, 6, 5, dtype=F64, generator=gen(8))
    r_local = sparse_s(r.shape, "border", seed=9)  # through the cropped adjoint
    for rr in (r, r_local):
        assert rel(rule.relevance(layer, state, rr), ref_relevance(rr)) <= 1e-12
    v = torch.randn(2, 3, 7, 6, 5, dtype=F64, generator=gen(10))
    assert rel(rule.transpose(layer, state, v), ref_transpose(v)) <= 1e-12
    # relevance is the exact transpose of transpose: <T v, r> = <v, R r> per batch row.
    for rr in (r, r_local):
        lhs = (rule.transpose(layer, state, v) * rr).flatten(1).sum(1)
        rhs = (v * rule.relevance(layer, state, rr)).flatten(1).sum(1)
        assert torch.allclose(lhs, rhs, rtol=1e-12, atol=1e-12 * float(lhs.abs().max()))
    # transpose_channels: row j is the transpose of v ⊙ 1_c.
    v1 = v[:1]
    for channels in ([0, 1, 2], [2, 0]):
        batch = torch.zeros(len(channels), 3, 7, 6, 5, dtype=F64)
        for j, c in enumerate(channels):
            batch[j, c] = v1[0, c]
        rows = rule.transpose_channels(layer, state, v1, channels)
        assert rows is not None
        assert rel(rows, ref_transpose(batch)) <= 1e-12


def test_epsilon_transpose_channels_and_default_none():
    layer = conv(3, cin=3, cout=4, bias=True, seed=11)
    x = torch.randn(1, 3, 5, 5, 5, dtype=F64, generator=gen(12))
    z = layer.apply(x, layer.weight, layer.bias)
    rule = Epsilon(1e-6)
    state = rule.prepare(layer, x, z)
    v = torch.randn(1, 3, 5, 5, 5, dtype=F64, generator=gen(13))
    batch = torch.zeros(2, 3, 5, 5, 5, dtype=F64)
    batch[0, 2], batch[1, 0] = v[0, 2], v[0, 0]
    assert rel(rule.transpose_channels(layer, state, v, [2, 0]), rule.transpose(layer, state, batch)) <= 1e-12
    alpha_beta = AlphaBeta()
    assert alpha_beta.transpose_channels(layer, alpha_beta.prepare(layer, x, z), v, [0]) is None


@pytest.fixture(scope="module")
def unet_input():
    return seed_unet(), torch.randn(1, 3, 8, 8, 8, dtype=F64, generator=gen(2))


@pytest.mark.parametrize("composite,per_channel", [("epsilon", True), ("epsilon_gamma_box", True),
                                                   ("epsilon_alpha2_beta1", False)])
def test_graph_transpose_channels_equals_indicator_batch(unet_input, composite, per_channel):
    model, x = unet_input
    graph = prepare_graph(model, x, composite)
    first = [node for node in graph.layers if node.inputs == (0,)]
    assert first and all(isinstance(node, LayerNode) for node in first)
    ones = torch.ones_like(x)
    assert (first[0].transpose_channels(ones, [0]) is not None) == per_channel
    total = graph.transpose(ones)
    v_random = torch.rand(x.shape, dtype=F64, generator=gen(14)) + 0.5
    for v_input in (ones, v_random):
        for channels in ([0, 1, 2], [2, 0], [1]):
            batch = torch.zeros((len(channels),) + tuple(x.shape[1:]), dtype=F64)
            for j, c in enumerate(channels):
                batch[j, c] = v_input[0, c]
            fast = graph.transpose(v_input, channels=channels)
            assert rel(fast, graph.transpose(batch)) <= 1e-12
            if v_input is ones and channels == [0, 1, 2]:
                assert rel(fast.sum(0, keepdim=True), total) <= 1e-12  # Σ_c Lᵀ1_c = Lᵀ1


@pytest.mark.parametrize("composite", ["epsilon_gamma_box", "epsilon"])
def test_region_touching_the_border_equals_per_voxel_loop(unet_input, composite):
    model, x = unet_input
    region = torch.zeros(8, 8, 8, dtype=torch.bool)
    region[0:2, 0:2, 0] = True      # first corner
    region[7, 6:8, 7] = True        # far corner and border
    result = explain_region(model, x, region, target=1, composite=composite, device="cpu", tolerance=1e-3)
    reference, used = per_voxel_reference(model, x, region, 1, composite)
    assert result.n_used == used and used > 0
    assert rel(result.relevance, reference) <= 1e-10
    assert result.diagnostics["conservation_error"] <= 1e-10


def test_a_box_that_reads_only_padding():
    """A box wholly inside a padding wider than dilation·(k−1) reads only zeros: its input relevance
    is empty and its transposed output zero (once a crash: the crop's end fell before its start)."""
    layer = conv(1, k=1, p=3, bias=True)  # legal in PyTorch: padding wider than the kernel
    x = torch.randn(1, 4, 10, dtype=F64, generator=gen(21))
    node = layer_node(layer, Epsilon(), x)
    assert layer.crop(((0, 2),), (10,)).reads_padding_only
    s = torch.zeros(1, 4, 16, dtype=F64)
    s[0, 1, 0] = 1.0  # an output that reads only zero padding
    assert torch.equal(node.relevance(s)[0], node.rule.relevance(layer, node.state, s))
    assert not node.transpose([torch.ones_like(x)], ((0, 2),)).any()


@pytest.mark.parametrize("signed", ["none", "some", "all"])
def test_gamma_equals_zennits_four_term_form_for_every_sign_pattern(signed):
    """γ with x⁻ terms on the signed channels only (and G± precomputed) equals the textbook rule:
    x⁺(W + γW⁺) + x⁻(W + γW⁻) for outputs z > 0, x⁺(W + γW⁻) + x⁻(W + γW⁺) for z < 0; and its
    transpose is the exact adjoint of its relevance."""
    from LRPSegmentationLib.engine.rules import Gamma, stabilize
    gamma, layer = 0.25, conv(3, cin=4, cout=5, k=3, p=1, bias=True, seed=7)
    x = torch.randn(1, 4, 6, 5, 4, dtype=F64, generator=gen(8))
    if signed != "all":
        x[:, : (4 if signed == "none" else 2)] = x[:, : (4 if signed == "none" else 2)].abs()
    w, b = layer.weight, layer.bias
    z = F.conv3d(x, w, b, padding=1)
    rule = Gamma(gamma, stabilizer=1e-6)
    state = rule.prepare(layer, x, z)
    assert (state[3] is None) == (signed == "none")
    r = torch.randn((2,) + tuple(z.shape[1:]), dtype=F64, generator=gen(9))

    pos, neg = w.clamp(min=0), w.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    up, un = w + gamma * pos, w + gamma * neg  # W + γW⁺, W + γW⁻
    d_pos = F.conv3d(xp, up, b + gamma * b.clamp(min=0), padding=1) + F.conv3d(xn, un, padding=1)
    d_neg = F.conv3d(xp, un, b + gamma * b.clamp(max=0), padding=1) + F.conv3d(xn, up, padding=1)
    s_pos = r * (z > 0) / stabilize(d_pos, 1e-6)
    s_neg = r * (z < 0) / stabilize(d_neg, 1e-6)
    adj = lambda s, weight: F.conv_transpose3d(s, weight, padding=1)  # noqa: E731
    reference = xp * (adj(s_pos, up) + adj(s_neg, un)) + xn * (adj(s_pos, un) + adj(s_neg, up))
    assert rel(rule.relevance(layer, state, r.clone()), reference) <= 1e-12
    # Relevance at outputs z > 0 only (a ReLU follows): the s⁻ products are skipped, same numbers;
    # also with the state for outputs read where z > 0 only (`prepare_read_where_positive`: G⁺ and
    # G⁻ on the signed channels), whose transpose is the adjoint there and zero where z ≤ 0; it
    # refuses relevance at outputs z ≤ 0 (it has no denominators there) instead of losing it.
    on_positive = r * (z > 0)
    reference = xp * adj(on_positive / stabilize(d_pos, 1e-6), up) + xn * adj(on_positive / stabilize(d_pos, 1e-6), un)
    assert rel(rule.relevance(layer, state, on_positive.clone()), reference) <= 1e-12
    positive_only = rule.prepare_read_where_positive(layer, x, z)
    assert positive_only[5] and (positive_only[4][1] is None) == (signed == "none")
    assert rel(rule.relevance(layer, positive_only, on_positive.clone()), reference) <= 1e-12
    with pytest.raises(RuntimeError, match="found them unread"):
        rule.relevance(layer, positive_only, r.clone())
    v_random = torch.randn((2,) + tuple(x.shape[1:]), dtype=F64, generator=gen(11))
    forward = rule.transpose(layer, positive_only, v_random)
    assert not forward[:, ~(z[0] > 0)].any()
    backward = rule.relevance(layer, positive_only, on_positive.clone())
    for row in range(2):
        lhs, rhs = float((forward[row] * on_positive[row]).sum()), float((v_random[row] * backward[row]).sum())
        assert abs(lhs - rhs) <= 1e-10 * max(abs(lhs), 1.0)

    v = torch.randn((2,) + tuple(x.shape[1:]), dtype=F64, generator=gen(10))
    forward = rule.transpose(layer, state, v)
    backward = rule.relevance(layer, state, r.clone())
    for row in range(2):
        lhs, rhs = float((forward[row] * r[row]).sum()), float((v[row] * backward[row]).sum())
        assert abs(lhs - rhs) <= 1e-10 * max(abs(lhs), 1.0)


# --------------------------------------------------------------------------------------------
# The transposed pass on a box of the output (a painted region's normalization)
# --------------------------------------------------------------------------------------------
def output_boxes(spatial):
    """Boxes of an output of this spatial shape: a corner, the far border, a middle slab, one voxel."""
    return [tuple((0, max(1, n // 3)) for n in spatial),
            tuple((n - max(1, n // 4), n) for n in spatial),
            tuple((n // 3, n // 3 + 2) if axis else (0, n) for axis, n in enumerate(spatial)),
            tuple((n // 2, n // 2 + 1) for n in spatial)]


BOX_CASES = [(n, k, p, d, g, s, t) for n in (1, 2, 3)
             for k, p, d, s in [(1, 0, 1, 1), (3, 1, 1, 1), (3, 0, 2, 1), (5, 2, 2, 1), (1, 3, 1, 1), (3, 1, 1, 2),
                                (2, 0, 1, 2), (4, 1, 1, 3)]
             for g in (1, 2) for t in (False, True) if not (t and k == 1 and p == 3)]


@pytest.mark.parametrize("n,k,p,d,groups,stride,transposed", BOX_CASES)
def test_conv_on_a_box_and_the_input_box_it_reads(n, k, p, d, groups, stride, transposed):
    """`LinearLayer.crop`: the unpadded layer on the cut input equals the whole output on the box,
    and the output there depends on `input_box` of the input alone (zeroing the rest changes
    nothing): plain and transposed convolutions, any stride, padding (also wider than the kernel),
    dilation and groups, float64."""
    layer = conv(n, cin=4, cout=6, k=k, p=p, d=d, groups=groups, stride=stride, transposed=transposed, bias=True)
    x = torch.randn((1, 4) + (SIZES[n],) * n, dtype=F64, generator=gen(20))
    whole = layer.apply(x, layer.weight, layer.bias)
    assert tuple(whole.shape[2:]) == layer.output_spatial(x.shape[2:])
    for box in output_boxes(whole.shape[2:]):
        inside = slices(box)
        reads = layer.input_box(box, x.shape[2:])
        assert all(0 <= a < b <= size for (a, b), size in zip(reads, x.shape[2:]))
        cut = x * mask_of(reads, tuple(x.shape[2:]), x.device)
        assert rel(layer.apply(cut, layer.weight, layer.bias)[inside], whole[inside]) <= 1e-13
        crop = layer.crop(box, x.shape[2:])
        if transposed or volume(box) > MOST_OF * whole[0, 0].numel():
            assert crop is None  # transposed: upsampling layers, computed whole
            continue
        if crop.reads_padding_only:
            assert torch.equal(whole[inside], layer.bias.view((1, -1) + (1,) * n).expand_as(whole[inside]))
            continue
        assert crop.input(x).shape == crop.input_shape(x.shape)
        assert rel(crop.layer.apply(crop.input(x), layer.weight, layer.bias), whole[inside]) <= 1e-13


def box_nets():
    from lrp_models import ResidualNormNet, prepare
    return [("unet", seed_unet(), (8, 8, 8)), ("unet_deep", seed_unet(base=3, depth=3), (8, 16, 8)),
            ("residual_norm", prepare(ResidualNormNet()), (8, 8, 8))]


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_gamma_box", "epsilon_alpha2_beta1", "epsilon_plus_flat"])
def test_graph_transpose_on_an_output_box_equals_the_whole_pass_there(composite):
    """v = Lᵀ1 on an output box (`Graph.transpose(output_box=...)`, each convolution on the box its
    consumers read: cat, +, pooling, upsampling, interpolation, norms in between) equals the whole
    pass on that box, in float64, for boxes at the corners, borders and inside."""
    for name, model, spatial in box_nets():
        x = torch.randn((1, 3) + spatial, dtype=F64, generator=gen(22))
        graph = prepare_graph(model, x, composite)
        ones = torch.ones_like(x)
        whole = graph.transpose(ones)
        for box in output_boxes(whole.shape[2:]) + [((1, 3), (2, 7), (0, 4))]:
            needed = graph.needed_boxes(box)
            assert needed[graph.output] == box and sum(b is not None for b in needed.values()) > 1, name
            if name.startswith("unet"):  # 3×3×3 convolutions read a larger box, up to the input
                assert any(b is not None and b != box for b in needed.values())
            part = graph.transpose(ones, output_box=box)
            assert rel(part[slices(box)], whole[slices(box)]) <= 1e-12, (name, box)


# --------------------------------------------------------------------------------------------
# Where the passes read a layer's output (Graph.reads): γ skips G⁻ before a ReLU
# --------------------------------------------------------------------------------------------
class ActivationNet(torch.nn.Module):
    """conv → ReLU → conv (γ, input ≥ 0) → activation → conv (γ) → head."""

    def __init__(self, activation: torch.nn.Module) -> None:
        super().__init__()
        self.first, self.relu = torch.nn.Conv3d(3, 4, 3, padding=1), torch.nn.ReLU()
        self.middle, self.act = torch.nn.Conv3d(4, 4, 3, padding=1), activation
        self.last, self.head = torch.nn.Conv3d(4, 4, 3, padding=1), torch.nn.Conv3d(4, 2, 1)

    def forward(self, x):
        return self.head(self.last(self.act(self.middle(self.relu(self.first(x))))))


def reads_of_layers(graph) -> dict[str, str]:
    reads = graph.reads()
    return {graph.nodes[i].name.split(":")[0]: reads[i] for i in graph.live if isinstance(graph.nodes[i], LayerNode)}


@pytest.mark.parametrize("activation,middle", [(torch.nn.ReLU(), "positive"), (torch.nn.LeakyReLU(0.1), "nonzero"),
                                               (torch.nn.PReLU(4, init=-0.5), "nonzero"), (torch.nn.ELU(), "nonzero"),
                                               (torch.nn.Identity(), "nonzero")], ids=repr)
def test_reads_where_positive_only_before_a_relu(activation, middle):
    """A layer is read where its output is > 0 only when a ReLU follows (a PReLU with a negative
    slope maps x < 0 to positive values: not so), and γ then keeps no G⁻; the explanation equals
    the per-voxel definition either way (its transposed pass drops such layers' z ≤ 0 outputs)."""
    torch.manual_seed(3)
    model = ActivationNet(activation).double().eval()
    x = torch.randn(1, 3, 6, 6, 6, dtype=F64, generator=gen(30))
    graph = prepare_graph(model, x, "epsilon_gamma_box")
    assert reads_of_layers(graph) == {"first": "positive", "middle": middle, "last": "nonzero", "head": "all"}
    state = [n for n in graph.layers if n.name.startswith("middle")][0].state
    assert state[3] is None and state[5] == (middle == "positive")  # read where z > 0 only: no G⁻
    assert (state[4][1] is None) == (middle == "positive")
    region = torch.zeros(6, 6, 6, dtype=torch.bool)
    region[1:4, 2:5, 0:3] = True
    result = explain_region(model, x, region, 1, "epsilon_gamma_box", device="cpu")
    reference, used = per_voxel_reference(model, x, region, 1, "epsilon_gamma_box")
    assert result.n_used == used and rel(result.relevance, reference) <= 1e-10


def test_dropping_unread_outputs_changes_no_number(unet_input, monkeypatch):
    """The U-Net's passes with γ's unread outputs dropped equal those with every output computed:
    Lᵀ1 at the output and relevance at the input, in float64."""
    from LRPSegmentationLib.engine.rules import Gamma
    model, x = unet_input
    graph = prepare_graph(model, x, "epsilon_gamma_box")
    reads = reads_of_layers(graph)
    assert reads["encoders.0.3"] == reads["decoders.0.0"] == "positive" and reads["head"] == "all"
    assert reads["upsamplers.0"] == "nonzero"
    monkeypatch.setattr(Gamma, "prepare_read_where_positive", lambda self, layer, x, z: self.prepare(layer, x, z))
    whole = prepare_graph(model, x, "epsilon_gamma_box")
    ones = torch.ones_like(x)
    assert rel(graph.transpose(ones), whole.transpose(ones)) <= 1e-12
    r = torch.randn(graph.logits.shape, dtype=F64, generator=gen(31))
    assert rel(graph.relevance(r.clone()), whole.relevance(r.clone())) <= 1e-12
