"""Trace an ``nn.Module`` as written into a list of LRP-aware nodes, and propagate through them.

The model's own ``forward`` runs once on the real input under a ``TorchFunctionMode``. Every torch
function that touches a traced tensor becomes a node — functional ops (``torch.cat``, ``+``,
``F.interpolate``) and modules called more than once included — so nothing is rewritten by hand
and shape-dependent Python in ``forward`` is followed exactly. While tracing:

- a normalization (BatchNorm in eval, InstanceNorm/GroupNorm with this input's statistics frozen)
  becomes a per-channel affine node; after tracing, one whose input is a convolution or dense layer
  used by nothing else is folded into it (canonization, `_fold_norms`); the others keep the
  composite's ``affine`` rule (pre-activation residual blocks: norm → act → conv plus the skip);
- a sigmoid/softmax of an input-dependent value is a *gate*: its output is held constant, so a
  product with it (attention gates, gated skips, attention weights @ V) is linear in the other
  factor (see `modern`); a product of two signals that does not end in such a gate raises;
- transformer pieces follow Ali et al. 2022 (`modern`): LayerNorm with its σ frozen, attention
  weights constant, GELU/SiLU pass relevance through;
- in-place operations keep their meaning for the model, but the value they overwrite is kept for
  the rules;
- an operation the engine has no LRP semantics for raises `UnsupportedOperationError` naming it and
  the module it ran in — never a silent wrong map. A tensor computed by such an operation may exist
  (shape checks, logging), but using it on the way to the output raises.

After tracing, `Graph.prepare` lets each node keep only what its rule needs. Then:
- `Graph.transpose(v_in)` carries v forward through the transposed LRP maps (v = Lᵀ u);
- `Graph.relevance(r_out)` runs the LRP backward (M = L r).
Both are linear in their argument, and both accept a batch of vectors (dim 0).
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .composites import Composite
from .linear import LinearLayer
from .modern import GATES, ModernOps
from .nodes import (READS, AdjointNode, CatNode, InputNode, LayerNode, MaxPoolNode, Node, NormNode, PassNode,
                    SumNode, UnsupportedOperationError)
from .support import Box, union


_TAG = "_lrp_trace"  # attribute on traced tensors: (tracer id, what), see `_Tracer.tag_of`


class _Frozen:
    """Tag of a value the rules hold constant: a gate (sigmoid/softmax output) or anything computed
    from gates and constants alone. ``origin`` names the gate, for the error if it is the output."""

    def __init__(self, origin: str) -> None:
        self.origin = origin


class _Pending:
    """Tag of an input-dependent value with no LRP semantics of its own (a product of two signals,
    e.g. attention scores q·kᵀ): fine as long as it only feeds a sigmoid/softmax (which freezes
    it); used on the way to the output in any other way, it raises ``reason``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Argument binding for the torch functions we understand
# --------------------------------------------------------------------------------------------
def _bind(signature: Callable, args: tuple, kwargs: dict) -> dict:
    return signature(*args, **kwargs)


def _conv_sig(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return locals()


def _convt_sig(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    return locals()


def _linear_sig(input, weight, bias=None):
    return locals()


def _bn_sig(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    return locals()


def _in_sig(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
            momentum=0.1, eps=1e-5):
    return locals()


def _gn_sig(input, num_groups, weight=None, bias=None, eps=1e-5):
    return locals()


def _maxpool_sig(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    return locals()


def _binary_sig(input, other, *, alpha=1, out=None):
    return locals()


def _tuple(value, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def _explicit_padding(padding, weight: torch.Tensor, dilation: tuple[int, ...], n: int) -> tuple[int, ...]:
    if padding == "valid":
        return (0,) * n
    if padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
        if any(t % 2 for t in total):
            raise UnsupportedOperationError("padding='same' with an even kernel (asymmetric padding) is not supported")
        return tuple(t // 2 for t in total)
    return _tuple(padding, n)


_CONV = {torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3}
_CONVT = {torch.conv_transpose1d: 1, torch.conv_transpose2d: 2, torch.conv_transpose3d: 3}
_MAXPOOL = {F.max_pool1d: F.max_pool1d_with_indices, F.max_pool2d: F.max_pool2d_with_indices,
            F.max_pool3d: F.max_pool3d_with_indices, F.max_pool1d_with_indices: F.max_pool1d_with_indices,
            F.max_pool2d_with_indices: F.max_pool2d_with_indices,
            F.max_pool3d_with_indices: F.max_pool3d_with_indices}
_AVGPOOL = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
            F.adaptive_avg_pool3d}
_ACTIVATIONS = {F.gelu, F.silu,  # identity-gated (Ali et al. 2022)
                F.relu, torch.relu, torch.Tensor.relu, F.relu_, torch.relu_, torch.Tensor.relu_, F.leaky_relu,
                F.leaky_relu_, torch.prelu, F.prelu, F.elu, F.elu_, F.rrelu}
_RELU = {F.relu, torch.relu, torch.Tensor.relu, F.relu_, torch.relu_, torch.Tensor.relu_}
_DROPOUT = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout}
_IDENTITY = {torch.Tensor.contiguous, torch.Tensor.clone, torch.clone, torch.Tensor.to, torch.Tensor.float,
             torch.Tensor.double, torch.Tensor.type_as, torch.Tensor.detach, torch.detach}
_RESHAPE = {torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.Tensor.flatten, torch.flatten,
            torch.Tensor.permute, torch.permute, torch.Tensor.transpose, torch.transpose, torch.Tensor.squeeze,
            torch.squeeze, torch.Tensor.unsqueeze, torch.unsqueeze, torch.Tensor.__getitem__,
            torch.Tensor.narrow, torch.narrow, F.pad, F.interpolate, F.upsample, torch.Tensor.movedim,
            torch.flip, torch.Tensor.flip}  # flips: mirroring test-time augmentation
_ADD = {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__, torch.Tensor.__iadd__,
        torch.Tensor.add_}
_SUB = {torch.sub, torch.Tensor.sub, torch.Tensor.__sub__, torch.Tensor.__isub__, torch.Tensor.sub_,
        torch.subtract}
_MUL = {torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.Tensor.__imul__,
        torch.Tensor.mul_, torch.Tensor.div, torch.Tensor.__truediv__, torch.Tensor.__itruediv__,
        torch.Tensor.div_, torch.div, torch.multiply, torch.divide}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_CREATE = {"zeros_like", "ones_like", "empty_like", "full_like", "new_zeros", "new_ones", "new_empty",
           "new_full", "new_tensor"}
_HINTS = {"log_softmax": "explain logits: return them from forward() instead of log-probabilities"}


def _func_name(func: Callable) -> str:
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
    return name.replace("_VariableFunctionsClass.", "torch.").replace("TensorBase.", "Tensor.")


#: Position of the ``inplace`` argument of functions that take one.
_INPLACE_ARG = {F.silu: 1,
                F.relu: 1, F.leaky_relu: 2, F.elu: 2, F.rrelu: 4, F.dropout: 3, F.dropout1d: 3, F.dropout2d: 3,
                F.dropout3d: 3, F.alpha_dropout: 3, F.feature_alpha_dropout: 3}


def _is_inplace(func: Callable, args: tuple, kwargs: dict) -> bool:
    if "inplace" in kwargs:
        return bool(kwargs["inplace"])
    position = _INPLACE_ARG.get(func)
    if position is not None:
        return len(args) > position and bool(args[position])
    name = getattr(func, "__name__", "")
    return name.startswith("__i") or (name.endswith("_") and not name.endswith("__"))


# --------------------------------------------------------------------------------------------
# The tracer
# --------------------------------------------------------------------------------------------
class _Tracer(ModernOps, TorchFunctionMode):
    _ids = itertools.count()

    def __init__(self, x: torch.Tensor) -> None:
        super().__init__()
        self.id = next(self._ids)
        self.nodes: list[Node] = [InputNode()]
        self.values: list[Any] = [x]
        self.consumers: list[int] = [0]
        self.module_stack: list[str] = []
        # Nodes whose value is the model input unchanged (node 0, and pass-throughs of it).
        self.input_like: set[int] = {0}
        setattr(x, _TAG, (self.id, 0))

    # -- tags --------------------------------------------------------------------------------
    def tag_of(self, t: Any) -> int | str | _Frozen | _Pending | None:
        """What the tracer knows of ``t``: a node index (a signal), a reason string (computed by an
        unsupported operation), `_Frozen` (a gate or a value computed from gates), `_Pending`, or
        None (a constant: weights, buffers, tensors not computed from the input)."""
        if not isinstance(t, torch.Tensor):
            return None
        tag = getattr(t, _TAG, None)
        if tag is None or tag[0] != self.id:
            return None
        return tag[1]

    def index_of(self, t: Any) -> int | None:
        """Node index of a traced tensor, None for a constant or gate; raises for a tainted tensor."""
        tag = self.tag_of(t)
        if tag is None or isinstance(tag, _Frozen):
            return None
        if isinstance(tag, str):
            raise UnsupportedOperationError(tag)
        if isinstance(tag, _Pending):
            raise UnsupportedOperationError(tag.reason)
        return tag

    def _is_traced(self, t: Any) -> bool:
        """Whether ``t`` is input-dependent and not a gate (gates count as constants)."""
        tag = self.tag_of(t)
        return tag is not None and not isinstance(tag, _Frozen)

    def is_frozen(self, t: Any) -> bool:
        return isinstance(self.tag_of(t), _Frozen)

    def _mark(self, out: Any, mark: _Frozen | _Pending) -> Any:
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                setattr(t, _TAG, (self.id, mark))
        return out

    def freeze(self, out: Any, origin: str) -> Any:
        """Tag ``out`` as a gate (held constant by the rules); ``origin`` names the operation."""
        return self._mark(out, _Frozen(origin))

    def defer(self, out: Any, reason: str) -> Any:
        """Tag ``out`` as input-dependent without LRP semantics: fine if it only feeds a gate."""
        return self._mark(out, _Pending(reason))

    def add(self, node: Node, value: torch.Tensor) -> torch.Tensor:
        for i in node.inputs:
            self.consumers[i] += 1
        if isinstance(node, LayerNode):
            node.reads_input = node.inputs[0] in self.input_like
        node.output_batch = value.shape[0]
        self.nodes.append(node)
        self.values.append(value)
        self.consumers.append(0)
        setattr(value, _TAG, (self.id, len(self.nodes) - 1))
        return value

    @property
    def where(self) -> str:
        return self.module_stack[-1] if self.module_stack else "forward"

    # -- dispatch ----------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = [a for a in itertools.chain(args, kwargs.values())]
        flat += [t for a in flat if isinstance(a, (list, tuple)) for t in a]
        tags = [self.tag_of(a) for a in flat]
        if all(tag is None for tag in tags):
            return func(*args, **kwargs)
        name = _func_name(func)
        if not any(isinstance(tag, (int, str)) for tag in tags):
            return self._gate_branch(func, name, args, kwargs, tags)
        handler = self._handler(func, name)
        if handler is None:
            return self._untraced(func, name, args, kwargs)
        for a in flat:
            self.index_of(a)  # raises if an operand came from an unsupported operation
        first = args[0] if args and self._is_traced(args[0]) else None
        inplace = first is not None and _is_inplace(func, args, kwargs)
        if inplace:
            # The op overwrites a value the rules may need: keep a copy for the record.
            index = self.index_of(first)
            if self.values[index] is first:
                self.values[index] = first.clone()
        version = None if first is None else first._version
        out = handler(func, name, args, kwargs)
        if first is not None and not inplace and first._version != version:
            raise UnsupportedOperationError(f"{name} in module '{self.where}' modified its input in place "
                                            "in a way the tracer does not know")
        return out

    def _gate_branch(self, func, name, args, kwargs, tags):
        """An operation on gates, pending values and constants only (no signal): it carries no
        relevance. Its output is a gate (sigmoid/softmax, or computed from gates and constants) or
        pending (computed from a pending value)."""
        out = func(*args, **kwargs)
        if func in GATES:
            return self.freeze(out, f"{name} in module '{self.where}'")
        pending = next((tag for tag in tags if isinstance(tag, _Pending)), None)
        return self._mark(out, pending or next(tag for tag in tags if isinstance(tag, _Frozen)))

    def _untraced(self, func, name, args, kwargs):
        out = func(*args, **kwargs)
        short = name.rsplit(".", 1)[-1]
        if short in _CREATE:
            return out  # depends on the shape only: a constant
        hint = _HINTS.get(short.strip("_"), "")
        reason = (f"operation {name} in module '{self.where}' is not supported by the LRP engine"
                  + (f" ({hint})" if hint else "")
                  + "; supported: convolutions (incl. transposed), linear, batch/instance/group/layer norm, "
                    "ReLU/LeakyReLU/PReLU/ELU/GELU/SiLU, dropout, max/avg pooling, interpolate, pad, cat/stack, "
                    "+/-, scaling by constants, gates (products with a sigmoid/softmax output), matmul/einsum "
                    "with one input-dependent factor, reshapes and copies (repeat/expand/tile/roll/split)")
        targets = list(out) if isinstance(out, (tuple, list)) else [out]
        if args and (func is torch.Tensor.__setitem__ or _is_inplace(func, args, kwargs)):
            targets.append(args[0])  # e.g. buffer[..., :k] = x: the written tensor now depends on x
        for t in targets:
            if isinstance(t, torch.Tensor):
                setattr(t, _TAG, (self.id, reason))
        return out

    def _handler(self, func, name):
        modern = self._modern_handler(func)
        if modern is not None:
            return modern
        if func in _CONV:
            return self._conv
        if func in _CONVT:
            return self._conv_transpose
        if func is F.linear:
            return self._linear
        if func in (F.batch_norm, F.instance_norm, F.group_norm):
            return self._norm
        if func in _ACTIVATIONS or func in _DROPOUT or func in _IDENTITY:
            return self._pass
        if func in _MAXPOOL:
            return self._max_pool
        if func in _AVGPOOL:
            return self._avg_pool
        if func in _RESHAPE:
            return self._reshape
        if func in _ADD or func in _SUB:
            return self._add
        if func in _MUL:
            return self._scale
        if func in _CAT:
            return self._cat
        return None

    def _note_pass_through(self, index: int, out: torch.Tensor) -> None:
        """Mark ``out`` (the newest node) as the model input when it holds exactly the values of
        input-like node ``index``: the first-layer rule (z^B, flat, w²) belongs to the layer that
        reads the input, whatever copies, casts, eval dropouts or no-op reshapes come before it."""
        before = self.values[index]  # the kept copy if an in-place op overwrote it
        if index in self.input_like and out.shape == before.shape and torch.equal(out, before.to(out.dtype)):
            self.input_like.add(len(self.nodes) - 1)

    # -- handlers ----------------------------------------------------------------------------
    def _constant(self, t, what: str):
        if self._is_traced(t):
            raise UnsupportedOperationError(f"{what} in module '{self.where}' depends on the input; "
                                            "only constant weights are supported")
        return None if t is None else t.detach()

    def _conv(self, func, name, args, kwargs):
        a = _bind(_conv_sig, args, kwargs)
        n = _CONV[func]
        weight, bias = self._constant(a["weight"], "a convolution weight"), self._constant(a["bias"], "a bias")
        dilation = _tuple(a["dilation"], n)
        layer = LinearLayer("conv", weight, bias, _tuple(a["stride"], n),
                            _explicit_padding(a["padding"], weight, dilation, n), dilation, False, (0,) * n,
                            a["groups"])
        out = func(*args, **kwargs)
        return self.add(LayerNode((self.index_of(a["input"]),), f"{self.where}: {name}", layer, "conv"), out)

    def _conv_transpose(self, func, name, args, kwargs):
        a = _bind(_convt_sig, args, kwargs)
        n = _CONVT[func]
        weight, bias = self._constant(a["weight"], "a convolution weight"), self._constant(a["bias"], "a bias")
        layer = LinearLayer("conv", weight, bias, _tuple(a["stride"], n), _tuple(a["padding"], n),
                            _tuple(a["dilation"], n), True, _tuple(a["output_padding"], n), a["groups"])
        out = func(*args, **kwargs)
        return self.add(LayerNode((self.index_of(a["input"]),), f"{self.where}: {name}", layer, "conv"), out)

    def _linear(self, func, name, args, kwargs):
        a = _bind(_linear_sig, args, kwargs)
        layer = LinearLayer("dense", self._constant(a["weight"], "a linear weight"),
                            self._constant(a["bias"], "a bias"))
        out = func(*args, **kwargs)
        return self.add(LayerNode((self.index_of(a["input"]),), f"{self.where}: {name}", layer, "dense"), out)

    def _norm(self, func, name, args, kwargs):
        """Normalizations become a per-channel affine map with this forward pass's statistics."""
        x = args[0] if args else kwargs["input"]
        if func is F.batch_norm:
            a = _bind(_bn_sig, args, kwargs)
            if a["training"] and a["running_mean"] is not None:
                raise UnsupportedOperationError(f"batch norm in module '{self.where}' runs in training mode; "
                                                "call model.eval() first")
            if a["training"]:  # no running statistics: this input's statistics, frozen
                dims = (0,) + tuple(range(2, x.dim()))
                mean, var = x.mean(dim=dims), x.var(dim=dims, unbiased=False)
            else:
                mean, var = a["running_mean"], a["running_var"]
            channels = x.shape[1]
        elif func is F.instance_norm:
            a = _bind(_in_sig, args, kwargs)
            if x.shape[0] != 1:
                raise UnsupportedOperationError("instance norm is traced for batch size 1 only")
            if a["use_input_stats"]:
                dims = tuple(range(2, x.dim()))
                mean, var = x.mean(dim=dims).flatten(), x.var(dim=dims, unbiased=False).flatten()
            else:
                mean, var = a["running_mean"], a["running_var"]
            channels = x.shape[1]
        else:
            a = _bind(_gn_sig, args, kwargs)
            groups, channels = a["num_groups"], x.shape[1]
            grouped = x.reshape(x.shape[0], groups, -1)
            mean = grouped.mean(dim=2).flatten().repeat_interleave(channels // groups)
            var = grouped.var(dim=2, unbiased=False).flatten().repeat_interleave(channels // groups)
        weight = a["weight"] if a["weight"] is not None else torch.ones(channels, dtype=x.dtype, device=x.device)
        bias = a["bias"] if a["bias"] is not None else torch.zeros(channels, dtype=x.dtype, device=x.device)
        scale = self._constant(weight, "a norm weight") / torch.sqrt(var.detach() + a["eps"])
        shift = self._constant(bias, "a norm bias") - mean.detach() * scale
        out = func(*args, **kwargs)
        layer = LinearLayer("channel", scale, shift)
        node = LayerNode((self.index_of(x),), f"{self.where}: {name}", layer, "affine")
        node.normalization = name  # `_fold_norms` may fold it into the layer before it
        return self.add(node, out)

    def _pass(self, func, name, args, kwargs):
        if func in _DROPOUT and (kwargs.get("training", args[2] if len(args) > 2 else True)):
            raise UnsupportedOperationError(f"dropout in module '{self.where}' is active; call model.eval() first")
        x = args[0] if args else kwargs["input"]
        if func in (torch.prelu, F.prelu):
            self._constant(args[1] if len(args) > 1 else kwargs["weight"], "a PReLU weight")
        out = func(*args, **kwargs)
        index = self.index_of(x)
        activation = "relu" if func in _RELU else "other" if func in _ACTIVATIONS else None
        out = self.add(PassNode((index,), f"{self.where}: {name}", activation), out)
        if func not in _ACTIVATIONS:  # dropout in eval, copies, casts
            self._note_pass_through(index, out)
        return out

    def _max_pool(self, func, name, args, kwargs):
        a = _bind(_maxpool_sig, args, kwargs)
        want_indices = a.pop("return_indices") or func in (F.max_pool1d_with_indices, F.max_pool2d_with_indices,
                                                             F.max_pool3d_with_indices)
        x = a.pop("input")
        out, indices = _MAXPOOL[func](x, **a)
        node = MaxPoolNode((self.index_of(x),), f"{self.where}: {name}", indices, x.shape)
        out = self.add(node, out)
        if want_indices:
            indices = indices.clone()
            setattr(indices, _TAG, (self.id, f"max-pool indices used in module '{self.where}' (unpooling) "
                                             "are not supported"))
            return out, indices
        return out

    def _avg_pool(self, func, name, args, kwargs):
        x, rest = args[0], args[1:]
        out = func(*args, **kwargs)
        fn = lambda t: func(t, *rest, **kwargs)  # noqa: E731
        return self.add(NormNode((self.index_of(x),), f"{self.where}: {name}", fn, x.shape), out)

    def _reshape(self, func, name, args, kwargs):
        x, rest = args[0], args[1:]
        if any(self._is_traced(a) for a in itertools.chain(rest, kwargs.values())):
            raise UnsupportedOperationError(f"{name} in module '{self.where}' with input-dependent arguments")
        if func is F.pad:
            mode = kwargs.get("mode", rest[1] if len(rest) > 1 else "constant")
            pad = kwargs.get("pad", rest[0] if rest else None)
            fn = lambda t: F.pad(t, pad, mode=mode)  # noqa: E731  (a constant fill is an offset, not linear)
        else:
            # The passes' tensors need not have the forward value's strides: view as reshape.
            op = torch.Tensor.reshape if func is torch.Tensor.view and not isinstance(
                rest[0] if rest else None, torch.dtype) else func
            fn = lambda t: op(t, *rest, **kwargs)  # noqa: E731
        out = func(*args, **kwargs)
        index = self.index_of(x)
        out = self.add(AdjointNode((index,), f"{self.where}: {name}", fn, x.shape), out)
        self._note_pass_through(index, out)
        return out

    def _add(self, func, name, args, kwargs):
        a = _bind(_binary_sig, args, kwargs)
        first, second = a["input"], a["other"]
        sign = -1.0 if func in _SUB else 1.0
        coefficients = [(first, 1.0), (second, sign * a["alpha"])]
        traced = [(self.index_of(t), c) for t, c in coefficients if self._is_traced(t)]
        out = func(*args, **kwargs)
        for t, _ in coefficients:
            if self._is_traced(t) and (t.dim() != out.dim() or t.shape[0] != out.shape[0]):
                raise UnsupportedOperationError(f"{name} in module '{self.where}' broadcasts an input-dependent "
                                                f"tensor of shape {tuple(t.shape)} to {tuple(out.shape)} across "
                                                "dimensions or the batch; expand it explicitly first")
        node = SumNode(tuple(i for i, _ in traced), f"{self.where}: {name}", tuple(c for _, c in traced))
        return self.add(node, out)

    def _scale(self, func, name, args, kwargs):
        """Multiplication or division by a constant: the z-rule on a diagonal linear map; by a gate
        (a sigmoid/softmax output): signal-take-all (`modern`)."""
        operands = list(args[:2]) + [kwargs[k] for k in ("other",) if k in kwargs]
        traced = [t for t in operands if self._is_traced(t)]
        divides = "div" in name
        if kwargs.get("rounding_mode") is not None:
            raise UnsupportedOperationError(f"{name} with rounding in module '{self.where}' is not linear")
        if len(traced) != 1 or (divides and traced[0] is not operands[0]):
            what = "division by an input-dependent tensor" if len(traced) == 1 else \
                f"{name} of two input-dependent tensors"
            return self.defer(func(*args, **kwargs),
                              f"{what} in module '{self.where}' is not supported: neither factor is a gate "
                              "(a sigmoid/softmax output, held constant as in attention gates)")
        x = traced[0]
        constant = operands[1] if operands[0] is x else operands[0]
        out = func(*args, **kwargs)
        if self.is_frozen(constant):
            return self._gate_product(func, name, x, out)
        op = torch.div if divides else torch.mul
        fn = lambda t: op(t, constant)  # noqa: E731
        return self.add(NormNode((self.index_of(x),), f"{self.where}: {name}", fn, x.shape), out)

    def _cat(self, func, name, args, kwargs):
        tensors = args[0] if args else kwargs["tensors"]
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        dim = dim % tensors[0].dim()
        if dim == 0:
            raise UnsupportedOperationError(f"concatenation along the batch dimension in module '{self.where}'")
        inputs, pieces = [], []
        for t in tensors:
            if self._is_traced(t):
                pieces.append(len(inputs))
                inputs.append(self.index_of(t))
            else:
                pieces.append(None)
        out = func(*args, **kwargs)
        node = CatNode(tuple(inputs), f"{self.where}: {name}", dim, [t.shape[dim] for t in tensors], pieces,
                       [t.shape for t in tensors])
        return self.add(node, out)


# --------------------------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------------------------
class Graph:
    """A traced forward pass: nodes in execution order, node 0 the input, ``output`` the logits."""

    def __init__(self, nodes: list[Node], values: list, output: int) -> None:
        self.nodes, self.output = nodes, output
        self.logits: torch.Tensor = values[output]
        self._values = values
        self.input_shape = values[0].shape
        #: Each value's shape after (N, C) (None for a non-tensor): what `needed_boxes` checks against.
        self.spatial = [tuple(v.shape[2:]) if isinstance(v, torch.Tensor) and v.dim() > 2 else None
                        for v in values]
        live = {output}
        for index in range(output, -1, -1):
            if index in live:
                live.update(nodes[index].inputs)
        if 0 not in live:
            raise UnsupportedOperationError("the model's output does not depend on its input")
        self.live = sorted(live)
        self._fold_norms(values)
        #: Whether some value has more than one row in dim 0 (Swin windows folded into the batch):
        #: the passes then run one vector at a time (the rules' states broadcast over dim 0).
        self.folds_batch = any(isinstance(values[i], torch.Tensor) and values[i].shape[0] != 1 for i in self.live)
        self.composite: Composite | None = None

    def _fold_norms(self, values: list) -> None:
        """Canonization: fold each normalization into the convolution or dense layer before it when
        that layer's output feeds nothing else (in the live graph); the folded layer's output is the
        normalized value. A normalization that cannot be folded keeps its own affine node."""
        consumers = self._consumers()
        for index in self.live:
            norm = self.nodes[index]
            if not getattr(norm, "normalization", None):
                continue
            source = norm.inputs[0]
            producer = self.nodes[source]
            if not (isinstance(producer, LayerNode) and producer.kind in ("conv", "dense") and consumers[source] == 1):
                continue
            if producer.kind == "dense" and values[source].dim() != 2:
                continue  # the norm's channels (dim 1) are not the dense layer's features (last dim)
            try:
                producer.layer = producer.layer.scaled(norm.layer.weight, norm.layer.bias)
            except ValueError:  # a grouped transposed convolution: keep the norm on its own
                continue
            producer.name += f" + {norm.normalization}"
            values[source] = values[index]
            self.nodes[index] = PassNode((source,), f"{norm.name} (folded)")

    @property
    def layers(self) -> list[LayerNode]:
        return [self.nodes[i] for i in self.live if isinstance(self.nodes[i], LayerNode)]

    def prepare(self, composite: Composite) -> "Graph":
        """Let every node keep what its rule needs, then drop the forward values."""
        if self._values is None:
            raise RuntimeError("this graph was already prepared; trace the model again for another composite")
        self.composite = composite
        values = self._values
        for index in self.live:  # the rules first: where each value is read depends on them
            node = self.nodes[index]
            if isinstance(node, LayerNode):
                node.assign_rule(composite)
        reads = self.reads()
        # Free each forward value right after the last node that reads it: the rules keep only
        # their own state (e.g. 1/denominator), so the peak stays near the forward pass's.
        last_read = {}
        for index in self.live[1:]:
            if self.nodes[index].reads_values:
                for i in (*self.nodes[index].inputs, index):
                    last_read[i] = index
        for index in self.live[1:]:
            node = self.nodes[index]
            if isinstance(node, LayerNode):
                node.read_where_positive = reads[index] == "positive"
            node.prepare(values, index, composite)
            for i in (*node.inputs, index):
                if last_read.get(i, index) <= index:
                    values[i] = None
        self._values = None
        return self

    def reads(self) -> dict[int, str]:
        """Where the passes read each live node's v, and send it relevance (`nodes.READS`): the
        output everywhere; an input where its consumers read it (`Node.input_reads`), the widest
        over consumers. E.g. a convolution followed by a ReLU and layers whose rules gate their
        input is read where its output is > 0 only. Needs the rules (`prepare` assigns them first)."""
        reads = {self.output: "all"}
        for index in reversed(self.live[1:]):
            node = self.nodes[index]
            need = node.input_reads(reads.get(index, "all"))
            for i in node.inputs:
                reads[i] = need if i not in reads else max(reads[i], need, key=READS.index)
        return reads

    def nbytes(self) -> int:
        """Bytes held by this graph's tensors (rule states, folded weights, logits; each storage
        counted once). Shared model parameters are counted too, so this errs on the high side."""
        seen: dict[int, int] = {}

        def visit(item, depth: int = 0) -> None:
            if isinstance(item, torch.Tensor):
                storage = item.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
            elif depth < 4 and isinstance(item, (tuple, list)):
                for element in item:
                    visit(element, depth + 1)
            elif depth < 4 and isinstance(item, dict):
                for element in item.values():
                    visit(element, depth + 1)
            elif depth < 4 and getattr(item, "__closure__", None):  # e.g. attention weights in a fn
                for cell in item.__closure__:
                    try:
                        visit(cell.cell_contents, depth + 1)
                    except ValueError:  # an empty cell
                        pass
            elif depth < 4 and hasattr(item, "__dict__") and not isinstance(item, (Node, type)):
                visit(vars(item), depth + 1)

        for index in self.live:
            visit(vars(self.nodes[index]))
        visit(self.logits)
        return sum(seen.values())

    def _consumers(self) -> dict[int, int]:
        counts = {i: 0 for i in self.live}
        for i in self.live:
            for j in self.nodes[i].inputs:
                counts[j] += 1
        return counts

    def needed_boxes(self, output_box: Box) -> dict[int, Box | None]:
        """For each live node, the box of its value that the output on ``output_box`` depends on
        (None: all of it), from the output back through `Node.input_boxes`; a value read by several
        nodes needs the union of what each reads."""
        boxes: dict[int, Box | None] = {self.output: output_box}
        for index in reversed(self.live[1:]):
            node, box = self.nodes[index], boxes.get(index)
            spatial = self.spatial[index]
            if box is None or spatial is None or len(box) != len(spatial):
                needs = [None] * len(node.inputs)
            else:
                needs = node.input_boxes(box, [self.spatial[i] for i in node.inputs], spatial)
            for i, need in zip(node.inputs, needs):
                boxes[i] = union((boxes[i], need)) if i in boxes else need
        return boxes

    def transpose(self, v_input: torch.Tensor, channels: Sequence[int] | None = None,
                  output_box: Box | None = None) -> torch.Tensor:
        """v_out = Lᵀ-direction pass: given v at the input (B, C, ...) return v at the output
        (B, K, ...). With v_input = 1 this is the conserved fraction Lᵀ1 of every output.

        ``output_box``: only this box of v_out is needed (the voxels of a painted region): each
        convolution then computes just the box of its output that the rest of the pass reads
        (`needed_boxes`), and v_out is exact inside ``output_box`` only (zero or partial outside).

        ``channels``: a batch of input-channel indicators. v_input is then (1, C, ...) and row j of
        the batch is v_input ⊙ 1_c, c = channels[j] (the sequence composition's Lᵀ1_c for v_input
        = 1). Layers reading the input compute those rows channel by channel (`Rule.transpose_channels`:
        C single-channel convolutions instead of C full ones); everything after them runs batched.
        """
        if channels is not None:
            channels = list(channels)
            if self.folds_batch:
                return self.transpose(self._indicator_batch(v_input, channels))
        elif self.folds_batch and v_input.shape[0] > 1:
            return torch.cat([self.transpose(v_input[i:i + 1]) for i in range(v_input.shape[0])])
        remaining = self._consumers()
        v = {} if channels is not None else {0: v_input}
        boxes = self.needed_boxes(output_box) if output_box is not None and not self.folds_batch else {}

        def operand(i: int) -> torch.Tensor:
            if i not in v:  # node 0 as the full batch of indicator rows, built on first need only
                v[0] = self._indicator_batch(v_input, channels)
            return v[i]

        for index in self.live[1:]:
            node = self.nodes[index]
            out = None
            if channels is not None and node.inputs == (0,) and isinstance(node, LayerNode):
                out = node.transpose_channels(v_input, channels)
            if out is None:
                operands = [operand(i) for i in node.inputs]
                box = boxes.get(index)
                out = node.transpose(operands, box) if box is not None and isinstance(node, LayerNode) \
                    else node.transpose(operands)
            v[index] = out
            for i in node.inputs:
                remaining[i] -= 1
                if remaining[i] == 0 and i != self.output:
                    v.pop(i, None)
        return v[self.output]

    @staticmethod
    def _indicator_batch(v_input: torch.Tensor, channels: list[int]) -> torch.Tensor:
        """Rows v_input ⊙ 1_c for c in ``channels``: (len(channels), C, ...) from v_input (1, C, ...)."""
        batch = v_input.new_zeros((len(channels),) + tuple(v_input.shape[1:]))
        for row, c in enumerate(channels):
            batch[row, c] = v_input[0, c]
        return batch

    def relevance(self, r_output: torch.Tensor) -> torch.Tensor:
        """The LRP backward: relevance at the output (B, K, ...) → relevance at the input (B, C, ...)."""
        if self.folds_batch and r_output.shape[0] > 1:
            return torch.cat([self.relevance(r_output[i:i + 1]) for i in range(r_output.shape[0])])
        r = {self.output: r_output}
        for index in reversed(self.live[1:]):
            node = self.nodes[index]
            if index not in r:
                continue
            for i, r_in in zip(node.inputs, node.relevance(r.pop(index))):
                r[i] = r_in if i not in r else r[i] + r_in
        if 0 not in r:
            return torch.zeros((r_output.shape[0],) + tuple(self.input_shape[1:]),
                               dtype=r_output.dtype, device=r_output.device)
        return r[0]


def trace(model: nn.Module, x: torch.Tensor) -> Graph:
    """Run ``model(x)`` once and record it as a `Graph` (no gradients, model unchanged).

    Shapes: x (1, C, *spatial). The output must be a tensor of logits (1, K, *spatial) or a
    tuple/list whose first element is (deep supervision: the main head is explained).
    """
    x = x.detach().clone()
    tracer = _Tracer(x)
    hooks = []
    for module_name, module in model.named_modules():
        label = module_name or type(module).__name__
        hooks.append(module.register_forward_pre_hook(
            lambda _m, _a, label=label: tracer.module_stack.append(label)))
        hooks.append(module.register_forward_hook(lambda _m, _a, _o: tracer.module_stack.pop() and None))
    try:
        with torch.no_grad(), tracer:
            out = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if isinstance(out, dict):
        raise UnsupportedOperationError("the model returns a dict; wrap it so forward() returns the logits tensor")
    tag = tracer.tag_of(out)
    if isinstance(tag, _Frozen):
        raise UnsupportedOperationError(f"the model's output is computed by {tag.origin}: explain logits, return "
                                        "them from forward() instead of softmax/sigmoid outputs")
    index = tracer.index_of(out)
    if index is None:
        raise UnsupportedOperationError("the model's output is not computed from its input by traced operations")
    return Graph(tracer.nodes, tracer.values, index)
