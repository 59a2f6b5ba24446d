"""Linear layers as the rules see them: y = A x + b, with A applicable for any weight.

Every LRP rule evaluates the layer's linear map with *modified* weights (W⁺, W⁻, W + γW⁺, ones, W²)
and its adjoint Aᵀ. `LinearLayer` gives one interface for convolutions (plain or transposed, any
dimension), dense layers and per-channel affine maps (a normalization that could not be folded).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
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

    def apply_per_channel(self, x: torch.Tensor, weight: torch.Tensor, channels: Sequence[int]) -> torch.Tensor | None:
        """Row j of the result is A'(x ⊙ 1_c) for c = channels[j]: the layer applied to input channel
        c alone. Single-channel products instead of full ones whose other input channels are zero
        (a C-fold saving; a grouped convolution would do the same work, but oneDNN runs it 3-4×
        slower than these separate calls).

        Shapes: x (1, C, ...) → (len(channels), out, ...). None for layers other than convolutions
        with groups=1 (a dense layer's features are not dim 1): callers then build the rows themselves.
        """
        if self.kind != "conv" or self.groups != 1 or x.shape[0] != 1:
            return None
        rows = []
        for c in channels:
            piece = weight[c:c + 1] if self.transposed else weight[:, c:c + 1]  # input channel c's weights
            rows.append(self.apply(x[:, c:c + 1], piece))
        return torch.cat(rows)

    def shape_bias(self, bias: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A bias (out,) shaped to broadcast against this layer's output ``like``."""
        if self.kind == "dense":
            return bias
        return bias.view((1, -1) + (1,) * (like.dim() - 2))

    def adjoint(self, s: torch.Tensor, weight: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
        """A'ᵀ s: the transpose of the modified map, giving a tensor of the layer input's shape.

        ``input_shape`` is the shape for batch 1; the batch of ``s`` is kept. A stride-1 convolution
        runs on the bounding box of s's nonzero values only (`_adjoint_on_support`).
        """
        if self.kind == "conv":
            shape = (s.shape[0],) + tuple(input_shape[1:])
            on_support = self._adjoint_on_support(s, weight, shape)
            if on_support is not None:
                return on_support
            return self._conv_adjoint(s, weight, shape, self.padding)
        if self.kind == "dense":
            return s @ weight
        return s * weight.view((1, -1) + (1,) * (s.dim() - 2))

    def _conv_adjoint(self, s: torch.Tensor, weight: torch.Tensor, shape: tuple[int, ...],
                      padding: tuple[int, ...]) -> torch.Tensor:
        probe = s.new_empty(1).expand(shape)  # only its shape is read
        return torch.ops.aten.convolution_backward(
            s, probe, weight, None, list(self.stride), list(padding), list(self.dilation),
            self.transposed, list(self.output_padding), self.groups, [True, False, False])[0]

    def _adjoint_on_support(self, s: torch.Tensor, weight: torch.Tensor, shape: tuple[int, ...]
                            ) -> torch.Tensor | None:
        """The adjoint of a stride-1 convolution computed on the bounding box of s's nonzero values
        only (relevance started from a painted region stays local through the last layers of a
        decoder): the same numbers, placed into zeros. None when the box is more than half of s, or
        for strided and transposed convolutions (then the whole s is used)."""
        spatial = s.dim() - 2
        if self.transposed or spatial < 1 or any(st != 1 for st in self.stride):
            return None
        nonzero = s.ne(0).flatten(0, 1).any(0)  # (*spatial) support over batch and channels
        box = []
        for axis in range(spatial):
            others = tuple(a for a in range(spatial) if a != axis)
            hits = nonzero.any(others).nonzero().flatten() if others else nonzero.nonzero().flatten()
            if hits.numel() == 0:
                return s.new_zeros(shape)
            box.append((int(hits[0]), int(hits[-1]) + 1))
        if math.prod(b - a for a, b in box) > 0.5 * nonzero.numel():
            return None
        out = s.new_zeros(shape)
        # With padding 0, an input crop that starts at a - p and is (b - a) + dilation·(k - 1) long
        # has exactly the output crop [a, b): its adjoint is the input relevance there.
        crop_in, crop_out, place, lengths = [], [], [], []
        for (a, b), p, d, k, n in zip(box, self.padding, self.dilation, weight.shape[2:], shape[2:]):
            start, length = a - p, (b - a) + d * (k - 1)
            low = max(start, 0)
            high = max(min(start + length, n), low)  # the rest lies in the zero padding (maybe all of it)
            crop_out.append(slice(a, b))
            crop_in.append(slice(low - start, high - start))
            place.append(slice(low, high))
            lengths.append(length)
        s_crop = s[(slice(None), slice(None), *crop_out)]
        local = self._conv_adjoint(s_crop, weight, shape[:2] + tuple(lengths), (0,) * spatial)
        out[(slice(None), slice(None), *place)] = local[(slice(None), slice(None), *crop_in)]
        return out

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
