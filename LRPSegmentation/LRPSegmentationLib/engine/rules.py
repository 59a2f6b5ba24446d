"""LRP rules for linear layers, one small class per rule (names and parameters as in Zennit).

Every rule has the form  R_in = Σ_k u_k ⊙ A_kᵀ (R_out ⊙ m_k)  where u_k depends on the layer input
(x, x⁺, x⁻, a box bound, 1), A_k is the layer with modified weights, and m_k = mask_k / d_k holds the
stabilized denominators of this forward pass. None of them depends on R, so each rule is linear in
the relevance, and its transpose carries v = Lᵀ1 forward (../docs: lrp-math, section 2):

    v_out = Σ_k m_k ⊙ A_k (u_k ⊙ v_in)

A rule therefore implements three things:
- ``prepare(layer, x, z)``: after the forward pass (x: layer input, z = A x + b), keep what the
  backward needs, in as few tensors as possible;
- ``relevance(layer, state, r)``: map output relevance r to input relevance;
- ``transpose(layer, state, v)``: the transpose of ``relevance``, used for v = Lᵀ1;
- ``crop(state, crop)``: the state on a box of a convolution's output (`linear.Crop`), so that both
  passes near a painted region run on the part of the tensors they need.

Batch dimensions: x and z have batch 1; r and v may have any batch B (broadcast against x).
"""
from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import torch

from .linear import Crop, LinearLayer


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """z + ε·sign(z), with sign(0) = +1 (Zennit's stabilizer): never zero, same sign as z."""
    step = z.new_full((), epsilon)  # a fill, no host-to-device copy on CUDA
    # ±ε first, then + z: the same numbers as where(z ≥ 0, z + ε, z − ε) with two full-size
    # temporaries fewer (this runs at every layer's output). -0.0 >= 0 too: sign(±0) = +1.
    return torch.where(z >= 0, step, -step).add_(z)


def _inverse_stabilized(d: torch.Tensor, epsilon: float) -> torch.Tensor:
    """1 / stabilize(d) (a fresh tensor)."""
    return stabilize(d, epsilon).reciprocal_()


def _pos(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(min=0)


def _neg(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(max=0)


class Rule(abc.ABC):
    """Base class. ``input_aware`` is False for rules that ignore the layer input (flat, w²):
    at the first layer they spread relevance uniformly over the input sequences."""

    input_aware = True
    #: Whether both passes meet the layer input x only as (a factor that is 0 where x = 0) ⊙ v or
    #: ⊙ (...): the layer then reads v only where x ≠ 0 (`nodes.Node.input_reads`).
    gates_input = True

    @abc.abstractmethod
    def prepare(self, layer: LinearLayer, x: torch.Tensor, z: torch.Tensor) -> Any:
        """State for the passes, from the layer input x and output z = A x + b (batch 1)."""

    @abc.abstractmethod
    def relevance(self, layer: LinearLayer, state: Any, r: torch.Tensor) -> torch.Tensor:
        """Input relevance from output relevance r."""

    @abc.abstractmethod
    def transpose(self, layer: LinearLayer, state: Any, v: torch.Tensor) -> torch.Tensor:
        """The transpose of `relevance`: carries v from the layer input to its output."""

    def crop(self, state: Any, crop: Crop) -> Any:
        """The state for ``crop.layer`` on the input part ``crop.input`` and the output box: tensors
        shaped like the layer input through ``crop.input``, like its output through ``crop.output``.
        None: the rule has no cropped form (the whole tensors are used)."""
        return None

    def prepare_read_where_positive(self, layer: LinearLayer, x: torch.Tensor, z: torch.Tensor) -> Any:
        """`prepare` for a layer whose outputs the passes read only where z > 0 (a ReLU and rules
        that gate their input follow: `Graph.reads`): a rule may leave out what only z ≤ 0 needs."""
        return self.prepare(layer, x, z)

    def transpose_channels(self, layer: LinearLayer, state: Any, v: torch.Tensor,
                           channels: Sequence[int]) -> torch.Tensor | None:
        """`transpose` of the batch whose row j is v ⊙ 1_c, c = channels[j] (input channel c alone;
        the sequence indicators when v = 1): v (1, C, ...) → (len(channels), out, ...), when the rule
        can compute it channel by channel (`LinearLayer.apply_per_channel`); None otherwise."""
        return None

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not isinstance(v, torch.Tensor))
        return f"{type(self).__name__}({params})"


class Epsilon(Rule):
    """LRP-ε: R_in = x ⊙ Wᵀ(R / (z + ε sign z)). ``epsilon=0`` is LRP-0 (the z-rule)."""

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = epsilon

    def prepare(self, layer, x, z):
        return x, _inverse_stabilized(z, self.epsilon)

    def crop(self, state, crop):
        x, inv_d = state
        return crop.input(x), crop.output(inv_d)

    def relevance(self, layer, state, r):
        x, inv_d = state
        return layer.adjoint(r * inv_d, layer.weight, x.shape).mul_(x)  # in place: a fresh tensor

    def transpose(self, layer, state, v):
        x, inv_d = state
        return layer.apply(x * v, layer.weight).mul_(inv_d)

    def transpose_channels(self, layer, state, v, channels):
        x, inv_d = state
        rows = layer.apply_per_channel(x * v, layer.weight, channels)
        return None if rows is None else rows.mul_(inv_d)


class ZPlus(Rule):
    """LRP-z⁺ (α1β0) in Zennit's form for signed inputs: only the positive contributions
    x⁺W⁺ + x⁻W⁻ (+ b⁺) count."""

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = stabilizer

    def prepare(self, layer, x, z):
        w_pos, w_neg = _pos(layer.weight), _neg(layer.weight)
        d = layer.apply(_pos(x), w_pos, _pos(layer.bias)) + layer.apply(_neg(x), w_neg)
        return x, _inverse_stabilized(d, self.stabilizer)

    def crop(self, state, crop):
        x, inv_d = state
        return crop.input(x), crop.output(inv_d)

    def relevance(self, layer, state, r):
        x, inv_d = state
        s = r * inv_d
        return (_pos(x) * layer.adjoint(s, _pos(layer.weight), x.shape)
                + _neg(x) * layer.adjoint(s, _neg(layer.weight), x.shape))

    def transpose(self, layer, state, v):
        x, inv_d = state
        return (layer.apply(_pos(x) * v, _pos(layer.weight))
                + layer.apply(_neg(x) * v, _neg(layer.weight))) * inv_d


class AlphaBeta(Rule):
    """LRP-αβ (α − β = 1): positive contributions weighted by α, negative ones by β."""

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6) -> None:
        if alpha < 0 or beta < 0 or abs(alpha - beta - 1.0) > 1e-12:
            raise ValueError(f"AlphaBeta needs alpha, beta >= 0 and alpha - beta = 1, got {alpha}, {beta}")
        self.alpha, self.beta, self.stabilizer = alpha, beta, stabilizer

    def prepare(self, layer, x, z):
        w_pos, w_neg = _pos(layer.weight), _neg(layer.weight)
        x_pos, x_neg = _pos(x), _neg(x)
        d_pos = layer.apply(x_pos, w_pos, _pos(layer.bias)) + layer.apply(x_neg, w_neg)
        d_neg = layer.apply(x_pos, w_neg, _neg(layer.bias)) + layer.apply(x_neg, w_pos)
        return x, _inverse_stabilized(d_pos, self.stabilizer), _inverse_stabilized(d_neg, self.stabilizer)

    def crop(self, state, crop):
        x, inv_pos, inv_neg = state
        return crop.input(x), crop.output(inv_pos), crop.output(inv_neg)

    def relevance(self, layer, state, r):
        x, inv_pos, inv_neg = state
        w_pos, w_neg = _pos(layer.weight), _neg(layer.weight)
        s_pos, s_neg = r * inv_pos, r * inv_neg
        adj = layer.adjoint
        return (self.alpha * (_pos(x) * adj(s_pos, w_pos, x.shape) + _neg(x) * adj(s_pos, w_neg, x.shape))
                - self.beta * (_pos(x) * adj(s_neg, w_neg, x.shape) + _neg(x) * adj(s_neg, w_pos, x.shape)))

    def transpose(self, layer, state, v):
        x, inv_pos, inv_neg = state
        w_pos, w_neg = _pos(layer.weight), _neg(layer.weight)
        xv_pos, xv_neg = _pos(x) * v, _neg(x) * v
        return (self.alpha * (layer.apply(xv_pos, w_pos) + layer.apply(xv_neg, w_neg)) * inv_pos
                - self.beta * (layer.apply(xv_pos, w_neg) + layer.apply(xv_neg, w_pos)) * inv_neg)


class Gamma(Rule):
    """Generalized LRP-γ (Zennit's form, valid for signed inputs): the weights that agree with the
    sign of the output are boosted by γ. For outputs z > 0 the contributions x⁺(W + γW⁺) and
    x⁻(W + γW⁻) are used, for z < 0 x⁺(W + γW⁻) and x⁻(W + γW⁺).

    Computed with W and W⁺ only (W⁻ = W − W⁺): the "agreeing" part P = W⁺x⁺ + W⁻x⁻ + b⁺
    = W⁺|x| + W x⁻ + b⁺ and the "disagreeing" part z − P add up to z (known from the forward pass).
    The x⁻ terms only involve the input channels that hold negative values ("signed" channels,
    e.g. the upsampled half of a U-Net decoder's concatenated input), so their convolutions run
    on those channels alone.

    A layer whose input has no negative values (after a ReLU or max pooling: most layers of a
    U-Net) has x⁻ = 0, so only G⁺ = W + γW⁺ (outputs z > 0) and G⁻ = W + γW⁻ (z < 0) act on x:
    one convolution for the denominators (P = W⁺x) and two per pass, with no approximation.

    A layer whose outputs the passes read only where z > 0 (a ReLU follows: `Graph.reads`) is
    prepared by `prepare_read_where_positive`: x⁺G⁺ + x⁻G⁻ there, 1/d = 0 elsewhere, so one
    product per pass for an input ≥ 0 (G⁻ on the signed channels only otherwise).
    """

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6) -> None:
        self.gamma, self.stabilizer = gamma, stabilizer

    @staticmethod
    def _signed_channels(layer: LinearLayer, x: torch.Tensor) -> torch.Tensor | slice | None:
        """Input channels holding negative values: None if x ≥ 0, an index tensor for some
        channels of a convolution (groups 1), slice(None) for all (or any other layer kind)."""
        if layer.kind == "conv" and layer.groups == 1 and x.dim() > 2 and x.shape[0] == 1:
            negative = (x < 0).flatten(2).any(2)[0]  # (C,)
            if not negative.any():
                return None
            return slice(None) if negative.all() else negative.nonzero().flatten()
        return slice(None) if bool((x < 0).any()) else None

    @staticmethod
    def _on_channels(layer: LinearLayer, weight: torch.Tensor, channels) -> torch.Tensor:
        """The weights acting on some input channels (the layer's own for slice(None))."""
        if isinstance(channels, slice):
            return weight
        return weight[channels] if layer.transposed else weight[:, channels]

    def prepare(self, layer, x, z):
        return self._prepare(layer, x, z, positive_only=False)

    def prepare_read_where_positive(self, layer, x, z):
        return self._prepare(layer, x, z, positive_only=True)

    def _prepare(self, layer, x, z, positive_only: bool):
        """The state: (x, 1/d, z > 0, signed channels, modified weights, positive_only)."""
        w, b, gamma = layer.weight, layer.bias, self.gamma
        signed = self._signed_channels(layer, x)  # None: x⁻ = 0 and every x⁻ term vanishes
        w_pos = _pos(w)
        # P = W⁺x⁺ + W⁻x⁻ + b⁺ = W⁺|x| + W x⁻ + b⁺ agrees with a positive output; z − P with a negative one.
        agreeing = layer.apply(x if signed is None else x.abs(), w_pos, _pos(b))
        if signed is not None:
            agreeing += layer.apply(_neg(x[:, signed]), self._on_channels(layer, w, signed))
        positive = z > 0
        # The modified weights every pass uses, made once per traced pass rather than in each pass:
        # for a large network they are several element-wise sweeps over all of its parameters.
        g_pos = torch.add(w, w_pos, alpha=gamma)  # G⁺ = W + γW⁺
        if positive_only:
            # Only outputs z > 0 are read (`Graph.reads`): d = z + γP there, 1/d = 0 elsewhere; the
            # passes use x⁺G⁺ + x⁻G⁻, G⁻ = W + γW⁻ on the signed channels only.
            inv_d = stabilize(agreeing.mul_(gamma).add_(z), self.stabilizer).reciprocal_().mul_(positive)
            if signed is None:
                return x, inv_d, positive, signed, (g_pos, None), True
            w_signed = self._on_channels(layer, w, signed)
            return x, inv_d, positive, signed, (g_pos, torch.add(w_signed, _neg(w_signed), alpha=gamma)), True
        # d = z + γP where z > 0 (x⁺(W + γW⁺) + x⁻(W + γW⁻) + b + γb⁺), z + γ(z − P) where z < 0
        # (x⁺(W + γW⁻) + x⁻(W + γW⁺) + b + γb⁻); in place: this runs once per layer at full resolution.
        d = torch.where(positive, agreeing, z - agreeing).mul_(gamma).add_(z)
        del agreeing
        # One tensor holds both inverse denominators (the masks are disjoint); 0 where z = 0.
        inv_d = stabilize(d, self.stabilizer).reciprocal_().mul_(z != 0)
        if signed is None:
            return x, inv_d, positive, signed, (g_pos, torch.add(w, _neg(w), alpha=gamma)), False
        return x, inv_d, positive, signed, (w_pos, self._on_channels(layer, w, signed)), False

    def crop(self, state, crop):
        x, inv_d, positive, signed, weights, positive_only = state
        return crop.input(x), crop.output(inv_d), crop.output(positive), signed, weights, positive_only

    def relevance(self, layer, state, r):
        x, inv_d, positive, signed, weights, positive_only = state
        w, gamma = layer.weight, self.gamma
        s = r * inv_d  # inv_d is 0 where z = 0, so s = s⁺ + s⁻
        s_pos = s * positive
        s_neg = s.sub_(s_pos)
        # A layer followed by a ReLU gets relevance at its outputs z > 0 only: then s⁻ = 0 and its
        # products are skipped (a check costs far less than a convolution).
        if positive_only:  # 1/d = 0 where z ≤ 0: relevance there would be lost, so refuse it
            if bool(r.ne(0).logical_and_(~positive).any()):
                raise RuntimeError("LRP engine: relevance reached outputs z <= 0 of a layer whose graph analysis "
                                   "(Graph.reads) found them unread; please report this model")
            negative = False
        else:
            negative = bool(s_neg.any())
        if signed is None:  # x ⊙ (G⁺ᵀs⁺ + G⁻ᵀs⁻)
            g_pos, g_neg = weights
            out = layer.adjoint(s_pos, g_pos, x.shape)
            if negative:
                out += layer.adjoint(s_neg, g_neg, x.shape)
            return out.mul_(x)
        x_signed = x[:, signed]
        shape = (x.shape[0], x_signed.shape[1]) + tuple(x.shape[2:])
        if positive_only:  # x⁺ ⊙ G⁺ᵀs⁺ + x⁻ ⊙ G⁻ᵀs⁺, the second on the signed channels only
            g_pos, g_neg_signed = weights
            out = layer.adjoint(s_pos, g_pos, x.shape).mul_(_pos(x))
            on_signed = layer.adjoint(s_pos, g_neg_signed, shape).mul_(_neg(x_signed))
            if isinstance(signed, slice):
                return out.add_(on_signed)
            out[:, signed] += on_signed
            return out
        # x⁺ ⊙ (G⁺ᵀs⁺ + G⁻ᵀs⁻) + x⁻ ⊙ (G⁻ᵀs⁺ + G⁺ᵀs⁻) = Wᵀs ⊙ (x + γx⁻) + γ|x| ⊙ A with
        # A = W⁺ᵀs⁺ + W⁻ᵀs⁻ = W⁺ᵀ(s⁺ − s⁻) + Wᵀs⁻. Where x ≥ 0 this is x ⊙ (u + γV) with
        # u = Wᵀ(s + γs⁻) and V = W⁺ᵀ(s⁺ − s⁻); on the signed channels Wᵀs = u − γc, A = V + c
        # with c = Wᵀs⁻ computed for those channels only.
        w_pos, w_signed = weights
        u = layer.adjoint(torch.add(s_pos, s_neg, alpha=1.0 + gamma) if negative else s_pos, w, x.shape)
        v = layer.adjoint(s_pos.sub_(s_neg) if negative else s_pos, w_pos, x.shape)  # W⁺ᵀ(s⁺ − s⁻)
        c = layer.adjoint(s_neg, w_signed, shape) if negative else None
        on_signed = u[:, signed] if c is None else u[:, signed] - gamma * c
        on_signed = on_signed.mul_(_neg(x_signed).mul_(gamma).add_(x_signed))
        on_signed.addcmul_(x_signed.abs(), v[:, signed] if c is None else v[:, signed] + c, value=gamma)
        if isinstance(signed, slice):  # every channel is signed
            return on_signed
        out = u.add_(v, alpha=gamma).mul_(x)
        out[:, signed] = on_signed
        return out

    def transpose(self, layer, state, v):
        x, inv_d, positive, signed, weights, positive_only = state
        w, gamma = layer.weight, self.gamma
        if positive_only:  # G⁺(x⁺v) + G⁻(x⁻v) where z > 0, zeros where z ≤ 0 (not read)
            g_pos, g_neg_signed = weights
            out = layer.apply(x * v if signed is None else _pos(x) * v, g_pos)
            if signed is not None:
                out += layer.apply(_neg(x[:, signed]) * v[:, signed], g_neg_signed)
            return out.mul_(inv_d)  # 1/d is 0 where z ≤ 0
        if signed is None:  # z > 0: G⁺(x v), z < 0: G⁻(x v)
            g_pos, g_neg = weights
            xv = x * v
            out = layer.apply(xv, g_pos)
            return torch.where(positive, out, layer.apply(xv, g_neg), out=out).mul_(inv_d)
        # W(xv) + γP(xv) where z > 0, W(xv) + γ(W(xv) − P(xv)) where z ≤ 0; P(xv) = W⁺(|x|v) + W(x⁻v).
        w_pos, w_signed = weights
        out = layer.apply(x * v, w)
        agreeing = layer.apply(x.abs() * v, w_pos)  # v may be a batch, x is not
        agreeing += layer.apply(_neg(x[:, signed]) * v[:, signed], w_signed)
        out.add_(torch.where(positive, agreeing, out - agreeing), alpha=gamma)
        return out.mul_(inv_d)


class ZBox(Rule):
    """LRP-z^B for a bounded input (the first layer): each input lies in [low, high].

    ``low``/``high``: floats or per-channel tensors of shape (C,) (one bound per input sequence).

    R_in = x ⊙ Wᵀs − low ⊙ W⁺ᵀs − high ⊙ W⁻ᵀs with s = R / (Wx + b − (W⁺low + b⁺) − (W⁻high + b⁻)).
    With W⁻ = W − W⁺ this is (x − high) ⊙ Wᵀs + (high − low) ⊙ W⁺ᵀs, and the denominator is
    W(x − high) + W⁺(high − low) (b − b⁺ − b⁻ = 0): two maps per pass instead of three.
    """

    gates_input = False  # (high − low) ⊙ W⁺ᵀs reaches inputs x = 0 too

    def __init__(self, low: float | torch.Tensor, high: float | torch.Tensor, stabilizer: float = 1e-6) -> None:
        self.low, self.high, self.stabilizer = low, high, stabilizer

    def _bound(self, bound, x: torch.Tensor) -> torch.Tensor:
        """A bound shaped to broadcast against x: a scalar, or (1, C, 1, ...) for one per channel."""
        bound = torch.as_tensor(bound, dtype=x.dtype, device=x.device)
        return bound.view((1, -1) + (1,) * (x.dim() - 2)) if bound.dim() == 1 else bound

    def prepare(self, layer, x, z):
        low, high = self._bound(self.low, x), self._bound(self.high, x)
        shifted, spread = x - high, high - low  # x − high (like x), high − low (broadcasts)
        d = layer.apply(shifted, layer.weight).add_(layer.apply(spread.expand_as(x), _pos(layer.weight)))
        return shifted, spread, _inverse_stabilized(d, self.stabilizer)

    def crop(self, state, crop):
        shifted, spread, inv_d = state  # spread: a bound per channel (broadcasts), not a tensor of voxels
        return crop.input(shifted), spread, crop.output(inv_d)

    def relevance(self, layer, state, r):
        shifted, spread, inv_d = state
        s = r * inv_d
        out = layer.adjoint(s, layer.weight, shifted.shape).mul_(shifted)
        return out.addcmul_(layer.adjoint(s, _pos(layer.weight), shifted.shape), spread)

    def transpose(self, layer, state, v):
        shifted, spread, inv_d = state
        out = layer.apply(shifted * v, layer.weight)
        return out.add_(layer.apply(spread * v, _pos(layer.weight))).mul_(inv_d)

    def transpose_channels(self, layer, state, v, channels):
        shifted, spread, inv_d = state
        rows = layer.apply_per_channel(shifted * v, layer.weight, channels)
        if rows is None:
            return None
        spread_v = (spread * v).expand_as(shifted)
        return rows.add_(layer.apply_per_channel(spread_v, _pos(layer.weight), channels)).mul_(inv_d)

    def __repr__(self) -> str:
        return f"ZBox(low={self.low!r}, high={self.high!r}, stabilizer={self.stabilizer})"


class Flat(Rule):
    """LRP-flat: relevance spread uniformly over the receptive field (all weights 1, no bias).
    Blind to the input: at the first layer it spreads relevance equally over the sequences."""

    input_aware = gates_input = False

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = stabilizer

    def prepare(self, layer, x, z):
        ones = torch.ones_like(layer.weight)
        return ones, x.shape, _inverse_stabilized(layer.apply(torch.ones_like(x), ones), self.stabilizer)

    def crop(self, state, crop):
        ones, shape, inv_d = state
        return ones, crop.input_shape(shape), crop.output(inv_d)

    def relevance(self, layer, state, r):
        ones, shape, inv_d = state
        return layer.adjoint(r * inv_d, ones, shape)

    def transpose(self, layer, state, v):
        ones, shape, inv_d = state
        return layer.apply(v.expand((v.shape[0],) + tuple(shape[1:])), ones) * inv_d


class WSquare(Rule):
    """LRP-w²: relevance spread by squared weights, ignoring the input values (blind to sequences
    at the first layer, like flat). Zennit squares the bias too; so do we."""

    input_aware = gates_input = False

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = stabilizer

    def prepare(self, layer, x, z):
        squared = layer.weight ** 2
        bias = None if layer.bias is None else layer.bias ** 2
        d = layer.apply(torch.ones_like(x), squared, bias)
        return squared, x.shape, _inverse_stabilized(d, self.stabilizer)

    def crop(self, state, crop):
        squared, shape, inv_d = state
        return squared, crop.input_shape(shape), crop.output(inv_d)

    def relevance(self, layer, state, r):
        squared, shape, inv_d = state
        return layer.adjoint(r * inv_d, squared, shape)

    def transpose(self, layer, state, v):
        squared, shape, inv_d = state
        return layer.apply(v.expand((v.shape[0],) + tuple(shape[1:])), squared) * inv_d


class Identity(Rule):
    """Identity: R_in = R (relevance passes unchanged; Zennit's ``Pass``). The default for a
    normalization that cannot be folded into the layer before it (a per-channel affine map with
    frozen statistics, e.g. the norm → act → conv of a pre-activation residual block).

    Hui & Binder 2019 ("BatchNorm decomposition for deep neural network interpretation") compare
    identity and ε for standalone batch norm: ε scales relevance by (a·x)/(a·x + b), which the bias
    b = β − μ·a can make arbitrarily large or flip in sign (their MobileNet failure); identity cannot,
    and it conserves relevance exactly. Zennit's composites do the same for a BatchNorm they could not
    merge (``layer_map_base``: BatchNorm → ``Pass``). Pass ``Composite(affine=Epsilon(...))`` for the
    ε treatment.
    """

    gates_input = False  # relevance and v pass unchanged

    def prepare(self, layer, x, z):
        return None

    def relevance(self, layer, state, r):
        return r

    def transpose(self, layer, state, v):
        return v
