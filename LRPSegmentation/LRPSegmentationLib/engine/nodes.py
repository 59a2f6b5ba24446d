"""The nodes of a traced graph: one LRP-aware operation each (see `graph`).

A node maps relevance from its output to its inputs (`Node.relevance`) and carries v = Lᵀu the
other way (`Node.transpose`); both are linear. Pass tensors hold a batch of B vectors stacked
along dim 0 of the traced shape: (B·n0, ...) for a traced value of shape (n0, ...). The traced
batch n0 is 1 except inside window attention, where windows are folded into dim 0; `Graph`
passes such graphs one vector at a time (see ``Graph.folds_batch``).
"""
from __future__ import annotations

import abc
from typing import Callable

import torch

from .composites import Composite
from .linear import LinearLayer
from .rules import stabilize
from .support import Box, bounding_box

Spatial = tuple[int, ...] | None  # a traced value's shape after (N, C); None where it has none

#: Where a pass reads a value's v, from narrowest to widest (`Node.input_reads`, `Graph.reads`).
READS = ("positive", "nonzero", "all")


def _same_box(box: Box, inputs: list[Spatial], output: Spatial) -> list[Box | None]:
    """Input boxes of a node that works voxel by voxel: the output's box for each input of the
    output's spatial shape, the whole of any other (a broadcast term)."""
    return [box if spatial == output else None for spatial in inputs]


class UnsupportedOperationError(ValueError):
    """The model uses an operation the LRP engine cannot explain."""


# --------------------------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------------------------
class Node(abc.ABC):
    """One operation of the traced graph. ``inputs`` are indices of the nodes producing the traced
    operands (node 0 is the model input). Constants (weights, biases, untraced tensors) live in the
    node. Subclasses define the LRP semantics."""

    #: Whether `prepare` reads the forward values of this node and its inputs.
    reads_values = False
    #: Dim 0 of this node's traced output (set by the tracer): 1 unless windows are folded into it.
    output_batch = 1

    def __init__(self, inputs: tuple[int, ...], name: str) -> None:
        self.inputs = inputs
        self.name = name

    def prepare(self, values: list, index: int, composite: Composite) -> None:
        """Keep what `relevance`/`transpose` need; ``values[i]`` are forward outputs."""

    @abc.abstractmethod
    def transpose(self, v_in: list[torch.Tensor]) -> torch.Tensor:
        """Carry v forward: from the inputs' v (one per input) to this node's output."""

    @abc.abstractmethod
    def relevance(self, r: torch.Tensor) -> list[torch.Tensor]:
        """Map this node's output relevance to one relevance tensor per input."""

    def input_boxes(self, box: Box, inputs: list[Spatial], output: Spatial) -> list[Box | None]:
        """For each input, the box of it that `transpose`'s output on ``box`` depends on (None: all
        of it, the safe answer for any operation). ``inputs``/``output``: the traced spatial shapes."""
        return [None] * len(self.inputs)

    def input_reads(self, reads_output: str) -> str:
        """Where this node reads its inputs' v (and sends them relevance), given where its own v is
        read (`READS`): "positive" where the input's forward value is > 0, "nonzero" where it is
        not 0, "all" (the safe answer for any operation)."""
        return "all"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, inputs={self.inputs})"


class InputNode(Node):
    """The model input (node 0): not an operation, so the passes start after it."""

    def __init__(self) -> None:
        super().__init__((), "input")

    def transpose(self, v_in):
        raise RuntimeError("the input node is where the transposed pass starts, not an operation")

    def relevance(self, r):
        raise RuntimeError("the input node is where the LRP pass ends, not an operation")


class LayerNode(Node):
    """A convolution, dense layer or per-channel affine map; its rule comes from the composite.

    ``reads_input``: whether the layer's input is the model input itself, directly or through
    pass-through operations (set by the tracer); such a layer gets the composite's first-layer rule.
    """

    reads_values = True

    def __init__(self, inputs, name, layer: LinearLayer, kind: str) -> None:
        super().__init__(inputs, name)
        self.layer, self.kind = layer, kind
        self.reads_input = False
        #: Whether the passes read this layer's output only where it is > 0 (`Graph.reads`).
        self.read_where_positive = False
        self.rule = None
        self.state = None
        self.input_shape = None

    def assign_rule(self, composite: Composite) -> None:
        self.rule = composite.rule_for(self.kind, is_first=self.reads_input)

    def prepare(self, values, index, composite):
        if self.rule is None:
            self.assign_rule(composite)
        x = values[self.inputs[0]]
        self.input_shape = x.shape
        prepare = self.rule.prepare_read_where_positive if self.read_where_positive else self.rule.prepare
        self.state = prepare(self.layer, x, values[index])

    def transpose(self, v_in, box: Box | None = None):
        """``box``: the part of the output the pass needs; a convolution computes only that part
        (`LinearLayer.crop`), zeros elsewhere."""
        v = v_in[0]
        crop = None if box is None else self.layer.crop(box, self.input_shape[2:])
        if crop is not None and crop.reads_padding_only:
            return v.new_zeros(self._output_shape(v.shape[0]))
        local = None if crop is None else self.rule.crop(self.state, crop)
        if local is None:  # the whole layer (no box, a large one, or a rule without a cropped form)
            return self.rule.transpose(self.layer, self.state, v)
        part = self.rule.transpose(crop.layer, local, crop.input(v))
        out = part.new_zeros(self._output_shape(part.shape[0]))
        out[crop.output_index] = part
        return out

    def relevance(self, r):
        """A convolution's relevance from a region stays local through the last layers: the rule
        runs on the bounding box of r's nonzero values (`LinearLayer.crop`), the same numbers."""
        input_shape = (r.shape[0],) + tuple(self.input_shape[1:])
        crop = None
        if self.layer.kind == "conv" and not self.layer.transposed:
            box = bounding_box(r.ne(0).flatten(0, 1).any(0))  # support over the batch and channels
            crop = None if box is None else self.layer.crop(box, self.input_shape[2:])
            if box is None or (crop is not None and crop.reads_padding_only):
                return [r.new_zeros(input_shape)]
        local = None if crop is None else self.rule.crop(self.state, crop)
        if local is None:
            return [self.rule.relevance(self.layer, self.state, r)]
        part = self.rule.relevance(crop.layer, local, crop.output(r))
        out = part.new_zeros(input_shape)
        out[crop.input_index] = crop.unpad(part)
        return [out]

    def _output_shape(self, batch: int) -> tuple[int, ...]:
        """A plain convolution's output shape for ``batch`` vectors."""
        return (batch, self.layer.weight.shape[0]) + self.layer.output_spatial(self.input_shape[2:])

    def input_boxes(self, box, inputs, output):
        if self.layer.kind == "channel":
            return _same_box(box, inputs, output)
        return [None if inputs[0] is None else self.layer.input_box(box, inputs[0])]

    def input_reads(self, reads_output):
        return "nonzero" if self.rule is not None and self.rule.gates_input else "all"

    def transpose_channels(self, v: torch.Tensor, channels) -> torch.Tensor | None:
        """`Rule.transpose_channels` of this layer: rows v ⊙ 1_c of its input, c in ``channels``."""
        return self.rule.transpose_channels(self.layer, self.state, v, channels)

    def __repr__(self) -> str:
        return f"LayerNode({self.name!r}, {self.kind}, inputs={self.inputs}, rule={self.rule!r})"


class PassNode(Node):
    """Element-wise activations, dropout in eval, copies: relevance passes unchanged (Zennit's
    ``Pass``). ``activation``: "relu" (output max(x, 0)), "other" (an activation f with f(0) = 0,
    sign kept only for some) or None (the output is the input, or a gate > 0 times it)."""

    def __init__(self, inputs, name, activation: str | None = None) -> None:
        super().__init__(inputs, name)
        self.activation = activation

    def transpose(self, v_in):
        return v_in[0]

    def relevance(self, r):
        return [r]

    def input_boxes(self, box, inputs, output):
        return _same_box(box, inputs, output)

    def input_reads(self, reads_output):
        if self.activation == "relu":  # relu(x) is not 0 exactly where x > 0
            return "positive" if reads_output != "all" else "all"
        if self.activation == "other":  # f(x) ≠ 0 where x ≠ 0, but f(x) > 0 may hold for x < 0 (PReLU)
            return "nonzero" if reads_output == "positive" else reads_output
        return reads_output


def _per_sample(fn: Callable[[torch.Tensor], torch.Tensor], t: torch.Tensor, n0: int = 1) -> torch.Tensor:
    """Apply an op traced on a value with n0 rows in dim 0 to each of the vectors stacked in ``t``
    (B·n0 rows): reshapes may name the traced batch size."""
    if t.shape[0] == n0:
        return fn(t)
    return torch.cat([fn(piece) for piece in t.split(n0)])


def _adjoint(fn: Callable[[torch.Tensor], torch.Tensor], input_shape: torch.Size, r: torch.Tensor,
             output_batch: int = 1) -> torch.Tensor:
    """Aᵀ r for a parameter-free linear op A = fn, by autograd on a zero probe.

    ``input_shape``: the traced input's shape (n0, ...); ``output_batch``: dim 0 of the traced output."""
    vectors = r.shape[0] // output_batch
    shape = (vectors * input_shape[0],) + tuple(input_shape[1:])
    probe = torch.zeros(shape, dtype=r.dtype, device=r.device, requires_grad=True)
    with torch.enable_grad():
        out = _per_sample(fn, probe, input_shape[0])
        return torch.autograd.grad(out, probe, r)[0]


class AdjointNode(Node):
    """A parameter-free linear op (resampling, padding, cropping, reshaping): relevance goes back
    through its adjoint. Interpolation weights of each output sum to one, so this conserves
    relevance (it is what Zennit does for layers without a rule)."""

    def __init__(self, inputs, name, fn, input_shape) -> None:
        super().__init__(inputs, name)
        self.fn, self.input_shape = fn, input_shape

    def transpose(self, v_in):
        return _per_sample(self.fn, v_in[0], self.input_shape[0])

    def relevance(self, r):
        return [_adjoint(self.fn, self.input_shape, r, self.output_batch)]


class NormNode(Node):
    """Average pooling and scaling by constants: the z-rule on a parameter-free linear op,
    R_in = x ⊙ Aᵀ(R / stab(A x)) (Zennit's ``Norm``)."""

    reads_values = True

    def __init__(self, inputs, name, fn, input_shape) -> None:
        super().__init__(inputs, name)
        self.fn, self.input_shape = fn, input_shape
        self.x = self.inv_d = None

    def prepare(self, values, index, composite):
        self.x = values[self.inputs[0]]
        self.inv_d = stabilize(values[index], composite.stabilizer).reciprocal_()

    def transpose(self, v_in):
        return _per_sample(self.fn, self.x * v_in[0], self.input_shape[0]) * self.inv_d

    def relevance(self, r):
        return [self.x * _adjoint(self.fn, self.input_shape, r * self.inv_d, self.output_batch)]

    def input_reads(self, reads_output):
        return "nonzero"  # v and relevance meet the input as x ⊙ (...)


def _sum_to(r: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Relevance of a term that was broadcast (dims of size 1 in its traced ``shape``, dim 0 aside)
    summed back to that shape."""
    dims = tuple(d for d in range(1, r.dim()) if shape[d] == 1 and r.shape[d] != 1)
    return r.sum(dim=dims, keepdim=True) if dims else r


class SumNode(Node):
    """z = Σ_k c_k x_k (+ constant): residual additions. Relevance is split in proportion to each
    branch's contribution, R_k = c_k x_k R / stab(z) (Zennit's ``Norm`` on its ``Sum`` layer);
    a constant term absorbs its share, like a bias. A term broadcast along some dimensions gets its
    relevance summed back over them."""

    reads_values = True

    def __init__(self, inputs, name, coefficients: tuple[float, ...]) -> None:
        super().__init__(inputs, name)
        self.coefficients = coefficients
        self.terms = self.inv_d = None

    def prepare(self, values, index, composite):
        self.terms = [c * values[i] for c, i in zip(self.coefficients, self.inputs)]
        self.inv_d = stabilize(values[index], composite.stabilizer).reciprocal_()

    def transpose(self, v_in):
        return sum(t * v for t, v in zip(self.terms, v_in)) * self.inv_d

    def relevance(self, r):
        s = r * self.inv_d
        return [_sum_to(t * s, t.shape) for t in self.terms]

    def input_boxes(self, box, inputs, output):
        return _same_box(box, inputs, output)

    def input_reads(self, reads_output):
        return "nonzero"  # each term meets v and relevance as c_k x_k ⊙ (...)


class CatNode(Node):
    """Concatenation (U-Net skips): relevance is split back to the pieces. ``sizes`` has one entry
    per piece, constants included (their share is dropped); ``pieces`` maps each piece to its
    position in ``inputs`` or None for a constant."""

    def __init__(self, inputs, name, dim: int, sizes: list[int], pieces: list[int | None], shapes) -> None:
        super().__init__(inputs, name)
        self.dim, self.sizes, self.pieces, self.shapes = dim, sizes, pieces, shapes

    def transpose(self, v_in):
        parts = []
        for piece, shape in zip(self.pieces, self.shapes):
            if piece is None:
                shape = (v_in[0].shape[0],) + tuple(shape[1:])
                parts.append(v_in[0].new_zeros(shape))
            else:
                parts.append(v_in[piece].expand((v_in[0].shape[0],) + tuple(v_in[piece].shape[1:])))
        return torch.cat(parts, dim=self.dim)

    def relevance(self, r):
        chunks = torch.split(r, self.sizes, dim=self.dim)
        return [chunks[k] for k, piece in enumerate(self.pieces) if piece is not None]

    def input_boxes(self, box, inputs, output):
        return _same_box(box, inputs, output) if self.dim == 1 else [None] * len(self.inputs)

    def input_reads(self, reads_output):
        return reads_output  # each piece's values are the output's there


class MaxPoolNode(Node):
    """Max pooling routes relevance to the winning input (the gradient; Zennit's default)."""

    def __init__(self, inputs, name, indices: torch.Tensor, input_shape) -> None:
        super().__init__(inputs, name)
        self.indices, self.input_shape = indices, input_shape

    def transpose(self, v_in):
        v = v_in[0]
        flat = v.flatten(2)
        idx = self.indices.flatten(2).expand(v.shape[0], -1, -1)
        return flat.gather(2, idx).view((v.shape[0],) + tuple(self.indices.shape[1:]))

    def relevance(self, r):
        shape = (r.shape[0],) + tuple(self.input_shape[1:])
        out = r.new_zeros(shape).flatten(2)
        idx = self.indices.flatten(2).expand(r.shape[0], -1, -1)
        return [out.scatter_add_(2, idx, r.flatten(2)).view(shape)]

    def input_reads(self, reads_output):
        return reads_output  # the winners' values are the output's; the others are not read

