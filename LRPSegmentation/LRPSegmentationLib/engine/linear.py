"""Linear layers as the rules see them: y = A x + b, with A applicable for any weight.

Every LRP rule evaluates the layer's linear map with *modified* weights (W⁺, W⁻, W + γW⁺, ones, W²)
and its adjoint Aᵀ. `LinearLayer` gives one interface for convolutions (plain or transposed, any
dimension), dense layers and per-channel affine maps (a normalization that could not be folded).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .support import Box, bounding_box, is_small, slices


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
    #: Set by `on_box` only: `apply` computes this box of the output (see there).
    output_box: Box | None = None

    def apply(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """A' x + b' for modified parameters ``weight``/``bias`` (same shapes as the layer's)."""
        if self.output_box is not None:
            return self._apply_on_box(x, weight, bias)
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

    # -- boxes: the part of the output a pass needs (`support`) ---------------------------------
    def output_spatial(self, input_spatial: Sequence[int]) -> tuple[int, ...]:
        """Spatial output shape of a convolution for an input of this spatial shape."""
        k = self.weight.shape[2:]
        if self.transposed:
            return tuple((n - 1) * s - 2 * p + d * (kk - 1) + op + 1 for n, s, p, d, kk, op in
                         zip(input_spatial, self.stride, self.padding, self.dilation, k, self.output_padding))
        return tuple((n + 2 * p - d * (kk - 1) - 1) // s + 1 for n, s, p, d, kk in
                     zip(input_spatial, self.stride, self.padding, self.dilation, k))

    def input_box(self, box: Box, input_spatial: Sequence[int]) -> Box | None:
        """The box of the input that the output on ``box`` depends on (None: all of it)."""
        if self.kind == "channel":
            return box
        if self.kind != "conv" or len(box) != len(self.stride) or len(input_spatial) != len(box):
            return None
        result = []
        for (a, b), s, p, d, k, n in zip(box, self.stride, self.padding, self.dilation, self.weight.shape[2:],
                                         input_spatial):
            if self.transposed:  # input i reaches outputs i·s − p + j·d, j = 0 … k − 1
                low, high = -(-(a + p - d * (k - 1)) // s), (b - 1 + p) // s + 1
            else:  # output o reads inputs o·s − p + j·d
                low, high = a * s - p, (b - 1) * s - p + d * (k - 1) + 1
            low, high = max(low, 0), min(high, n)
            if low >= high:  # nothing of the input reaches the box along this axis: any one index will do
                low = min(max(low, 0), n - 1)
                high = low + 1
            result.append((low, high))
        return tuple(result)

    def on_box(self, box: Box | None, input_spatial: Sequence[int]) -> "LinearLayer":
        """This layer with `apply` computing only ``box`` of its output, zeros elsewhere: for a
        transposed pass whose later layers read no more of it (`Graph.transpose`'s ``output_box``).
        Itself where that does not pay (a box of most of the output) or for other than plain
        (not transposed) convolutions."""
        if self.kind != "conv" or self.transposed or box is None or len(box) != len(self.stride):
            return self
        return replace(self, output_box=box) if is_small(box, self.output_spatial(input_spatial)) else self

    def _apply_on_box(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """`apply` on ``output_box`` only: the input crop it reads, zero-padded where it passes the
        border (the layer's own padding), convolved without padding; the same sums."""
        box, spatial = self.output_box, x.dim() - 2
        out = x.new_zeros((x.shape[0], weight.shape[0]) + self.output_spatial(x.shape[2:]))
        crop, pads = [], []
        for (a, b), s, p, d, k, n in zip(box, self.stride, self.padding, self.dilation, weight.shape[2:], x.shape[2:]):
            start, stop = a * s - p, (b - 1) * s - p + d * (k - 1) + 1
            low, high = max(start, 0), min(stop, n)
            if low >= high:  # the box reads only padding: zeros (plus the bias)
                if bias is not None:
                    out[slices(box)] = bias.view((1, -1) + (1,) * spatial)
                return out
            crop.append(slice(low, high))
            pads.append((low - start, stop - high))
        piece = x[(slice(None), slice(None), *crop)]
        if any(before or after for before, after in pads):
            piece = F.pad(piece, [n for pair in reversed(pads) for n in pair])
        out[slices(box)] = torch.ops.aten.convolution(piece, weight, bias, list(self.stride), [0] * spatial,
                                                      list(self.dilation), False, [0] * spatial, self.groups)
        return out

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
        box = bounding_box(s.ne(0).flatten(0, 1).any(0))  # support over batch and channels
        if box is None:
            return s.new_zeros(shape)
        if not is_small(box, s.shape[2:]):
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
