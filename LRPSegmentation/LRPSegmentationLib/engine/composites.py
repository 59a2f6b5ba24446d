"""Composites: which rule each layer of a network gets (Zennit's names and defaults).

A composite maps a layer to a rule by its kind — the first layer (the one reading the input
sequences, directly or through operations that leave their values unchanged: eval dropout,
Identity, copies, dtype casts, no-op reshapes), convolutions (plain and transposed), dense layers,
and per-channel affine maps that could not be folded into a neighbouring layer. Sums of branches (residual additions) and average
pooling always use the z-rule with the composite's stabilizer (Zennit's ``Norm``); activations,
max pooling, concatenation and resampling pass relevance through (see ``graph``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..vocabulary import COMPOSITES  # the names `make_composite` accepts, torch-free for the user interfaces
from .rules import AlphaBeta, Epsilon, Flat, Gamma, Identity, Rule, ZBox, ZPlus

#: Layer kinds a composite assigns rules to.
LAYER_KINDS = ("first", "conv", "dense", "affine")


@dataclass
class Composite:
    """Rules by layer kind. ``first=None`` means the first layer uses the rule of its kind.

    ``stabilizer`` is used by the z-rule at residual sums and average pooling.
    """

    name: str
    conv: Rule
    dense: Rule
    affine: Rule
    first: Rule | None = None
    stabilizer: float = 1e-6

    def rule_for(self, kind: str, is_first: bool) -> Rule:
        """The rule for a layer of ``kind`` ("conv", "dense" or "affine")."""
        if is_first and self.first is not None:
            return self.first
        return getattr(self, kind)

    @property
    def input_aware(self) -> bool:
        """False if the first layer's rule ignores the input values (per-sequence shares are then
        meaningless: relevance is spread uniformly over the sequences)."""
        return self.first is None or self.first.input_aware


def make_composite(name: str, low: float | torch.Tensor | None = None, high: float | torch.Tensor | None = None,
                   epsilon: float = 1e-6, gamma: float = 0.25, stabilizer: float = 1e-6) -> Composite:
    """Build a named composite.

    - ``epsilon``: z^B (box) at the first layer, ε everywhere else. Cheapest input-aware choice.
    - ``epsilon_gamma_box``: z^B at the first layer, γ on convolutions, ε on dense layers
      (Zennit's ``EpsilonGammaBox``; Kohlbrenner et al. 2020). The default.
    - ``epsilon_plus_flat``: flat at the first layer, z⁺ on convolutions, ε on dense layers
      (Zennit's ``EpsilonPlusFlat``). Blind to the input sequences: do not use it for shares.
    - ``epsilon_alpha2_beta1``: α2β1 on convolutions, ε on dense layers, no special first layer
      (Zennit's ``EpsilonAlpha2Beta1``).

    Every composite passes relevance through a normalization that cannot be folded into the layer
    before it (`Identity`, the conservative choice; Hui & Binder 2019).

    ``low``/``high`` are the box bounds of the input (floats, or one value per sequence, shape (C,));
    the engine fills them from the input's per-sequence range when they are None.
    """
    affine = Identity()  # normalizations that cannot be folded: see `rules.Identity` for why not ε
    if name == "epsilon":
        return Composite(name, conv=Epsilon(epsilon), dense=Epsilon(epsilon), affine=affine,
                         first=ZBox(low, high, stabilizer), stabilizer=stabilizer)
    if name == "epsilon_gamma_box":
        return Composite(name, conv=Gamma(gamma, stabilizer), dense=Epsilon(epsilon), affine=affine,
                         first=ZBox(low, high, stabilizer), stabilizer=stabilizer)
    if name == "epsilon_plus_flat":
        return Composite(name, conv=ZPlus(stabilizer), dense=Epsilon(epsilon), affine=affine,
                         first=Flat(stabilizer), stabilizer=stabilizer)
    if name == "epsilon_alpha2_beta1":
        return Composite(name, conv=AlphaBeta(2.0, 1.0, stabilizer), dense=Epsilon(epsilon), affine=affine,
                         stabilizer=stabilizer)
    raise ValueError(f"unknown composite {name!r}; choose one of {', '.join(COMPOSITES)} "
                     "or pass a Composite instance")


def input_box_bounds(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence box bounds from the input itself: min and max of each channel.

    Shapes: x (1, C, *spatial) → low, high (C,).
    """
    dims = (0,) + tuple(range(2, x.dim()))
    return x.amin(dim=dims), x.amax(dim=dims)


def resolve_composite(composite: str | Composite, x: torch.Tensor) -> Composite:
    """A Composite for this input: names are built, and missing box bounds come from ``x``."""
    if isinstance(composite, str):
        composite = make_composite(composite)
    if not isinstance(composite, Composite):
        raise ValueError(f"composite must be a name ({', '.join(COMPOSITES)}) or a Composite, "
                         f"got {type(composite).__name__}")
    first = composite.first
    if isinstance(first, ZBox) and (first.low is None or first.high is None):
        low, high = input_box_bounds(x)
        first = ZBox(low if first.low is None else first.low, high if first.high is None else first.high,
                     first.stabilizer)
        composite = Composite(composite.name, composite.conv, composite.dense, composite.affine, first,
                              composite.stabilizer)
    return composite
