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
- ``transpose(layer, state, v)``: the transpose of ``relevance``, used for v = Lᵀ1.

Batch dimensions: x and z have batch 1; r and v may have any batch B (broadcast against x).
"""
from __future__ import annotations

import abc
from typing import Any

import torch

from .linear import LinearLayer


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """z + ε·sign(z), with sign(0) = +1 (Zennit's stabilizer): never zero, same sign as z."""
    return torch.where(z >= 0, z + epsilon, z - epsilon)  # -0.0 >= 0 too: sign(±0) = +1


def _pos(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(min=0)


def _neg(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(max=0)


class Rule(abc.ABC):
    """Base class. ``input_aware`` is False for rules that ignore the layer input (flat, w²):
    at the first layer they spread relevance uniformly over the input sequences."""

    input_aware = True

    @abc.abstractmethod
    def prepare(self, layer: LinearLayer, x: torch.Tensor, z: torch.Tensor) -> Any:
        """State for the passes, from the layer input x and output z = A x + b (batch 1)."""

    @abc.abstractmethod
    def relevance(self, layer: LinearLayer, state: Any, r: torch.Tensor) -> torch.Tensor:
        """Input relevance from output relevance r."""

    @abc.abstractmethod
    def transpose(self, layer: LinearLayer, state: Any, v: torch.Tensor) -> torch.Tensor:
        """The transpose of `relevance`: carries v from the layer input to its output."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not isinstance(v, torch.Tensor))
        return f"{type(self).__name__}({params})"


class Epsilon(Rule):
    """LRP-ε: R_in = x ⊙ Wᵀ(R / (z + ε sign z)). ``epsilon=0`` is LRP-0 (the z-rule)."""

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = epsilon

    def prepare(self, layer, x, z):
        return x, 1.0 / stabilize(z, self.epsilon)

    def relevance(self, layer, state, r):
        x, inv_d = state
        return x * layer.adjoint(r * inv_d, layer.weight, x.shape)

    def transpose(self, layer, state, v):
        x, inv_d = state
        return layer.apply(x * v, layer.weight) * inv_d


class ZPlus(Rule):
    """LRP-z⁺ (α1β0) in Zennit's form for signed inputs: only the positive contributions
    x⁺W⁺ + x⁻W⁻ (+ b⁺) count."""

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = stabilizer

    def prepare(self, layer, x, z):
        w_pos, w_neg = _pos(layer.weight), _neg(layer.weight)
        d = layer.apply(_pos(x), w_pos, _pos(layer.bias)) + layer.apply(_neg(x), w_neg)
        return x, 1.0 / stabilize(d, self.stabilizer)

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
        return x, 1.0 / stabilize(d_pos, self.stabilizer), 1.0 / stabilize(d_neg, self.stabilizer)

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

    Computed with two convolutions for the denominators and three per pass instead of Zennit's four,
    using W⁺ + W⁻ = W: the "agreeing" part P = W⁺x⁺ + W⁻x⁻ and the "disagreeing" part
    Q = W⁻x⁺ + W⁺x⁻ add up to W x (known from the forward pass), so each pass needs W and P
    (likewise for the transposes).

    A layer whose input has no negative values (after a ReLU or max pooling: most layers of a
    U-Net) has x⁻ = 0, so only G⁺ = W + γW⁺ (outputs z > 0) and G⁻ = W + γW⁻ (z < 0) act on x:
    one convolution for the denominators (P = W⁺x) and two per pass, with no approximation.
    """

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6) -> None:
        self.gamma, self.stabilizer = gamma, stabilizer

    def prepare(self, layer, x, z):
        w, b, gamma = layer.weight, layer.bias, self.gamma
        nonnegative = not bool((x < 0).any())  # then x⁻ = 0 and every x⁻ term vanishes
        # P = W⁺x⁺ + W⁻x⁻ + b⁺ agrees with a positive output; z − P = W⁻x⁺ + W⁺x⁻ + b⁻ with a negative one.
        agreeing = layer.apply(x if nonnegative else _pos(x), _pos(w), _pos(b))
        if not nonnegative:
            agreeing += layer.apply(_neg(x), _neg(w))
        positive = z > 0
        # d = z + γP where z > 0 (x⁺(W + γW⁺) + x⁻(W + γW⁻) + b + γb⁺), z + γ(z − P) where z < 0
        # (x⁺(W + γW⁻) + x⁻(W + γW⁺) + b + γb⁻); in place: this runs once per layer at full resolution.
        d = torch.where(positive, agreeing, z - agreeing).mul_(gamma).add_(z)
        del agreeing
        # One tensor holds both inverse denominators (the masks are disjoint); 0 where z = 0.
        inv_d = stabilize(d, self.stabilizer).reciprocal_().mul_(z != 0)
        return x, inv_d, positive, nonnegative

    def _boosted(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """G⁺ = W + γW⁺ and G⁻ = W + γW⁻ (weights: cheap next to a convolution at full resolution)."""
        return torch.add(w, _pos(w), alpha=self.gamma), torch.add(w, _neg(w), alpha=self.gamma)

    def relevance(self, layer, state, r):
        x, inv_d, positive, nonnegative = state
        w, gamma = layer.weight, self.gamma
        if nonnegative:  # x ⊙ (G⁺ᵀs⁺ + G⁻ᵀs⁻); inv_d is 0 where z = 0, so s = s⁺ + s⁻
            g_pos, g_neg = self._boosted(w)
            s = r * inv_d
            s_pos = s * positive
            out = layer.adjoint(s_pos, g_pos, x.shape)
            out += layer.adjoint(s.sub_(s_pos), g_neg, x.shape)  # s becomes s⁻
            return out.mul_(x)
        # x⁺ ⊙ (G⁺ᵀs⁺ + G⁻ᵀs⁻) + x⁻ ⊙ (G⁻ᵀs⁺ + G⁺ᵀs⁻) with G^± = W + γW^± and A = W⁺ᵀs⁺ + W⁻ᵀs⁻
        # is Wᵀs ⊙ (x + γx⁻) + γ|x| ⊙ A. In place on fresh tensors: few input-sized temporaries.
        s = r * inv_d
        s_pos = s * positive
        out = layer.adjoint(s, w, x.shape)
        agreeing = layer.adjoint(s_pos, _pos(w), x.shape)
        agreeing += layer.adjoint(s.sub_(s_pos), _neg(w), x.shape)  # s becomes s⁻
        del s, s_pos
        out.mul_(_neg(x).mul_(gamma).add_(x))
        return out.addcmul_(x.abs(), agreeing, value=gamma)

    def transpose(self, layer, state, v):
        x, inv_d, positive, nonnegative = state
        w, gamma = layer.weight, self.gamma
        if nonnegative:  # z > 0: G⁺(x v), z < 0: G⁻(x v)
            g_pos, g_neg = self._boosted(w)
            xv = x * v
            return torch.where(positive, layer.apply(xv, g_pos), layer.apply(xv, g_neg)).mul_(inv_d)
        out = layer.apply(x * v, w)                                         # W (x v)
        agreeing = layer.apply(_pos(x) * v, _pos(w))  # v may be a batch, x is not
        agreeing += layer.apply(_neg(x) * v, _neg(w))                   # P (x v)
        # z > 0: W xv + γP;  z ≤ 0: W xv + γ(W xv − P)
        out.add_(torch.where(positive, agreeing, out - agreeing), alpha=gamma)
        return out.mul_(inv_d)


class ZBox(Rule):
    """LRP-z^B for a bounded input (the first layer): each input lies in [low, high].

    ``low``/``high``: floats or per-channel tensors of shape (C,) (one bound per input sequence).
    """

    def __init__(self, low: float | torch.Tensor, high: float | torch.Tensor, stabilizer: float = 1e-6) -> None:
        self.low, self.high, self.stabilizer = low, high, stabilizer

    def _bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        def expand(bound):
            bound = torch.as_tensor(bound, dtype=x.dtype, device=x.device)
            if bound.dim() == 1:  # one bound per channel
                bound = bound.view((1, -1) + (1,) * (x.dim() - 2))
            return bound.expand_as(x)
        return expand(self.low), expand(self.high)

    def prepare(self, layer, x, z):
        low, high = self._bounds(x)
        w_pos, w_neg = _pos(layer.weight), _neg(layer.weight)
        d = (layer.apply(x, layer.weight, layer.bias) - layer.apply(low, w_pos, _pos(layer.bias))
             - layer.apply(high, w_neg, _neg(layer.bias)))
        return x, 1.0 / stabilize(d, self.stabilizer)

    def relevance(self, layer, state, r):
        x, inv_d = state
        low, high = self._bounds(x)
        s = r * inv_d
        return (x * layer.adjoint(s, layer.weight, x.shape)
                - low * layer.adjoint(s, _pos(layer.weight), x.shape)
                - high * layer.adjoint(s, _neg(layer.weight), x.shape))

    def transpose(self, layer, state, v):
        x, inv_d = state
        low, high = self._bounds(x)
        return (layer.apply(x * v, layer.weight) - layer.apply(low * v, _pos(layer.weight))
                - layer.apply(high * v, _neg(layer.weight))) * inv_d

    def __repr__(self) -> str:
        return f"ZBox(low={self.low!r}, high={self.high!r}, stabilizer={self.stabilizer})"


class Flat(Rule):
    """LRP-flat: relevance spread uniformly over the receptive field (all weights 1, no bias).
    Blind to the input: at the first layer it spreads relevance equally over the sequences."""

    input_aware = False

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = stabilizer

    def prepare(self, layer, x, z):
        ones = torch.ones_like(layer.weight)
        return ones, x.shape, 1.0 / stabilize(layer.apply(torch.ones_like(x), ones), self.stabilizer)

    def relevance(self, layer, state, r):
        ones, shape, inv_d = state
        return layer.adjoint(r * inv_d, ones, shape)

    def transpose(self, layer, state, v):
        ones, shape, inv_d = state
        return layer.apply(v.expand((v.shape[0],) + tuple(shape[1:])), ones) * inv_d


class WSquare(Rule):
    """LRP-w²: relevance spread by squared weights, ignoring the input values (blind to sequences
    at the first layer, like flat). Zennit squares the bias too; so do we."""

    input_aware = False

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = stabilizer

    def prepare(self, layer, x, z):
        squared = layer.weight ** 2
        bias = None if layer.bias is None else layer.bias ** 2
        d = layer.apply(torch.ones_like(x), squared, bias)
        return squared, x.shape, 1.0 / stabilize(d, self.stabilizer)

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

    def prepare(self, layer, x, z):
        return None

    def relevance(self, layer, state, r):
        return r

    def transpose(self, layer, state, v):
        return v
