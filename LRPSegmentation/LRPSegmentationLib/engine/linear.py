"""Linear layers as the rules see them: y = A x + b, with A applicable for any weight.

Every LRP rule evaluates the layer's linear map with *modified* weights (W⁺, W⁻, W + γW⁺, ones, W²)
and its adjoint Aᵀ. `LinearLayer` gives one interface for convolutions (plain or transposed, any
dimension), dense layers and per-channel affine maps (a normalization that could not be folded).

`Crop` restricts a plain convolution to a box of its output: the passes near a painted region need
a small part of the last layers' tensors only (`nodes.LayerNode`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .support import Box, is_small, slices


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

    def crop(self, box: Box | None, input_spatial: Sequence[int]) -> "Crop | None":
        """This layer restricted to ``box`` of its output (`Crop`), for a plain convolution (not
        transposed, any stride) whose box is small (`support.is_small`); None otherwise (then the
        whole tensors are used)."""
        if (self.kind != "conv" or self.transposed or box is None or len(box) != len(self.stride)
                or not is_small(box, self.output_spatial(input_spatial))):
            return None
        read, pads = [], []
        for (a, b), s, p, d, k, n in zip(box, self.stride, self.padding, self.dilation, self.weight.shape[2:],
                                         input_spatial):
            start, stop = a * s - p, (b - 1) * s - p + d * (k - 1) + 1  # what the box reads, padding included
            low, high = max(start, 0), min(stop, n)
            if low >= high:  # it reads padding only
                low = high = min(max(start, 0), n)
            read.append(slice(low, high))
            pads.append((low - start, stop - high))
        return Crop(replace(self, padding=(0,) * len(box)), tuple(read), tuple(pads), tuple(box))

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


@dataclass(frozen=True)
class Crop:
    """A plain convolution on a box of its output. ``layer`` is the convolution without padding;
    `input` cuts a tensor shaped like the layer's input to the part the box reads and zero-pads it
    where the box reaches into the layer's padding, so that ``layer`` maps it to exactly the output
    box (`output` cuts tensors shaped like the output). The adjoint of ``layer`` maps back to the
    padded part; `unpad` drops the padding, and `input_index` places the rest.

    Shapes: any (N, C, *spatial) with the layer's input or output spatial shape.
    """

    layer: LinearLayer
    read: tuple[slice, ...]        # the input's part the box reads, inside the tensor
    pads: tuple[tuple[int, int], ...]  # zeros before and after it per axis (the layer's padding)
    box: Box                       # the output box

    @property
    def reads_padding_only(self) -> bool:
        return any(r.start == r.stop for r in self.read)

    @property
    def input_index(self) -> tuple[slice, ...]:
        return (slice(None), slice(None)) + self.read

    @property
    def output_index(self) -> tuple[slice, ...]:
        return slices(self.box)

    def input(self, t: torch.Tensor) -> torch.Tensor:
        part = t[self.input_index]
        if any(before or after for before, after in self.pads):
            part = F.pad(part, [n for pair in reversed(self.pads) for n in pair])
        return part

    def input_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The shape `input` gives for a tensor of this shape."""
        return tuple(shape[:2]) + tuple(r.stop - r.start + before + after
                                        for r, (before, after) in zip(self.read, self.pads))

    def output(self, t: torch.Tensor) -> torch.Tensor:
        return t[self.output_index]

    def unpad(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor shaped like `input`'s result without its padding (shaped like ``t[input_index]``)."""
        return t[(slice(None), slice(None)) + tuple(slice(before, size - after) for (before, after), size
                                                     in zip(self.pads, t.shape[2:]))]
