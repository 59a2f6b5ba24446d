"""Linear layers as the rules see them: y = A x + b, with A applicable for any weight.

Every LRP rule evaluates the layer's linear map with *modified* weights (W⁺, W⁻, W + γW⁺, ones, W²)
and its adjoint Aᵀ. `LinearLayer` gives one interface for convolutions (plain or transposed, any
dimension), dense layers and per-channel affine maps (a normalization that could not be folded).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LinearLayer:
    """A linear map with bias. ``kind`` is ``"conv"``, ``"dense"`` or ``"channel"``.

    Shapes: conv weight (out, in/groups, *k) or, transposed, (in, out/groups, *k); dense weight
    (out, in); channel weight and bias (C,) acting on dim 1 of an (N, C, ...) tensor.
    """

    kind: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    transposed: bool = False
    output_padding: tuple[int, ...] = ()
    groups: int = 1

    def apply(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """A' x + b' for modified parameters ``weight``/``bias`` (same shapes as the layer's)."""
        if self.kind == "conv":
            return torch.ops.aten.convolution(x, weight, bias, list(self.stride), list(self.padding),
                                              list(self.dilation), self.transposed,
                                              list(self.output_padding), self.groups)
        if self.kind == "dense":
            return F.linear(x, weight, bias)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        out = x * weight.view(shape)
        return out if bias is None else out + bias.view(shape)

    def shape_bias(self, bias: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A bias (out,) shaped to broadcast against this layer's output ``like``."""
        if self.kind == "dense":
            return bias
        return bias.view((1, -1) + (1,) * (like.dim() - 2))

    def adjoint(self, s: torch.Tensor, weight: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
        """A'ᵀ s: the transpose of the modified map, giving a tensor of the layer input's shape.

        ``input_shape`` is the shape for batch 1; the batch of ``s`` is kept.
        """
        if self.kind == "conv":
            shape = (s.shape[0],) + tuple(input_shape[1:])
            probe = s.new_empty(1).expand(shape)  # only its shape is read
            return torch.ops.aten.convolution_backward(
                s, probe, weight, None, list(self.stride), list(self.padding), list(self.dilation),
                self.transposed, list(self.output_padding), self.groups, [True, False, False])[0]
        if self.kind == "dense":
            return s @ weight
        return s * weight.view((1, -1) + (1,) * (s.dim() - 2))

    def scaled(self, scale: torch.Tensor, shift: torch.Tensor) -> "LinearLayer":
        """This layer followed by the per-output-channel affine map y ↦ scale·y + shift."""
        if self.kind == "conv" and self.transposed:
            if self.groups != 1:
                raise ValueError("folding a normalization into a grouped transposed convolution is not supported")
            weight = self.weight * scale.view((1, -1) + (1,) * (self.weight.dim() - 2))
        else:
            weight = self.weight * scale.view((-1,) + (1,) * (self.weight.dim() - 1))
        bias = shift if self.bias is None else self.bias * scale + shift
        return replace(self, weight=weight, bias=bias)
