"""Tracer handlers for the operations of modern segmentation networks: gates, attention,
LayerNorm, and copies (repeat/expand/tile/split).

The rules, and where they come from:

- **Gates** (attention gates, gated skips, SiLU): y = g ⊙ s where g is the output of a sigmoid or
  softmax. The gate is held constant, a weight on the signal s, and relevance flows through s only
  ("signal-take-all", Arras et al. 2017, LRP for LSTMs): R_s = R_y. Nothing flows into the branch
  that computed g. A product of two signals where neither factor is a gate raises.
- **Attention** (the AH rule of Ali et al., ICML 2022, "XAI for Transformers: better explanations
  through conservative propagation"): the softmax attention weights are held constant, so
  attn @ V is a linear map of V with a fixed weight; it gets the z-rule (R_V = V ⊙ Aᵀ(R / stab(A V)),
  Zennit's ``Norm`` on that map). The scores q·kᵀ (a product of two signals) are allowed because
  they only feed the softmax. ``F.scaled_dot_product_attention`` gets the same rule, and any
  matmul/bmm/einsum with one input-dependent factor is handled the same way: a linear map with a
  fixed weight.
- **LayerNorm** (the LN rule of Ali et al. 2022): y = (x − μ)/σ·γ + β with σ held constant is linear
  in x (the centring x − μ is the linear part, β a bias that absorbs its share); z-rule on it.
- **GELU/SiLU**: identity-gated, relevance passes unchanged like ReLU (Ali et al. 2022).
- **Copies** (repeat, expand, tile, repeat_interleave, roll, split, chunk, unbind, stack):
  parameter-free linear maps; relevance goes back through the adjoint (copies sum back).

All of these are linear in the relevance for a fixed forward pass, so `region`'s transposed pass
keeps M_A exact in a constant number of passes.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .nodes import AdjointNode, CatNode, NormNode, PassNode, UnsupportedOperationError

#: Functions whose output is a gate (held constant by the rules).
GATES = {torch.sigmoid, torch.Tensor.sigmoid, F.sigmoid, torch.softmax, torch.Tensor.softmax, F.softmax,
         torch.special.expit}
MATMUL = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, torch.bmm,
          torch.Tensor.bmm, torch.mm, torch.Tensor.mm, torch.einsum}
#: Identity-gated activations (x·Φ(x), x·σ(x)): relevance passes unchanged.
GATED_ACTIVATIONS = {F.gelu, F.silu}
#: Parameter-free linear copies with shape-only (non-tensor) arguments.
COPIES = {torch.Tensor.repeat, torch.Tensor.expand, torch.tile, torch.Tensor.tile, torch.repeat_interleave,
          torch.Tensor.repeat_interleave, torch.roll, torch.Tensor.roll, torch.Tensor.unflatten, torch.unflatten,
          torch.swapaxes, torch.Tensor.swapaxes, torch.swapdims, torch.Tensor.swapdims, torch.moveaxis,
          torch.Tensor.moveaxis, torch.movedim}
#: x.expand_as(y) and friends: only y's shape is used.
AS_SHAPE = {torch.Tensor.expand_as: torch.Tensor.expand, torch.Tensor.view_as: torch.Tensor.view,
            torch.Tensor.reshape_as: torch.Tensor.reshape}
PIECES = {torch.split, torch.Tensor.split, torch.chunk, torch.Tensor.chunk, torch.unbind, torch.Tensor.unbind,
          torch.tensor_split, torch.Tensor.tensor_split}
STACK = {torch.stack}


def _sdpa_sig(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return locals()


def _layer_norm_sig(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    return locals()


class ModernOps:
    """Handlers mixed into the tracer (`graph._Tracer`); they use its ``add``, ``index_of``,
    ``_is_traced``, ``tag_of``, ``is_frozen``, ``freeze``, ``defer``, ``_mark``, ``_reshape``,
    ``_constant`` and ``where``."""

    def _modern_handler(self, func) -> Any:
        if func in GATES:
            return self._gate_source
        if func in MATMUL:
            return self._matmul
        if func is F.layer_norm:
            return self._layer_norm
        if func in COPIES:
            return self._reshape
        if func in AS_SHAPE:
            return self._as_shape
        if func in PIECES:
            return self._pieces
        if func in STACK:
            return self._stack
        if func is F.scaled_dot_product_attention:
            return self._attention
        return None

    def _gate_source(self, func, name, args, kwargs):
        """sigmoid/softmax of a signal: the output is a gate, a constant for the rules (no node)."""
        return self.freeze(func(*args, **kwargs), f"{name} in module '{self.where}'")

    def _gate_product(self, func, name, x, out):
        """y = g ⊙ x (or x / g) with g a gate: signal-take-all, R_x = R_y (summed back over the
        dimensions the gate broadcast x to)."""
        label = f"{self.where}: {name} (gate)"
        if out.shape == x.shape:
            return self.add(PassNode((self.index_of(x),), label), out)
        shape = out.shape
        fn = lambda t: torch.broadcast_to(t, shape)  # noqa: E731
        return self.add(AdjointNode((self.index_of(x),), label, fn, x.shape), out)

    def _matmul(self, func, name, args, kwargs):
        """matmul/bmm/einsum with one input-dependent factor: a linear map with that factor's
        partner fixed (attention weights @ V: the AH rule), z-rule. Two input-dependent factors:
        allowed only on the way into a softmax/sigmoid (attention scores)."""
        if func is torch.einsum:
            equation = args[0]
            operands = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
            call = lambda ops: torch.einsum(equation, *ops)  # noqa: E731
        else:
            operands = list(args)
            call = lambda ops: func(*ops, **kwargs)  # noqa: E731
        signals = [i for i, t in enumerate(operands) if self._is_traced(t)]
        out = call(operands)
        if len(signals) != 1:
            return self.defer(out, f"{name} of two input-dependent tensors in module '{self.where}' is not "
                                   "supported: neither factor is a gate (a sigmoid/softmax output, held "
                                   "constant); attention scores q·kᵀ are fine only when they feed a softmax")
        position, x = signals[0], operands[signals[0]]
        constants = [t.detach() if isinstance(t, torch.Tensor) else t for t in operands]

        def fn(t: torch.Tensor) -> torch.Tensor:
            ops = list(constants)
            ops[position] = t
            return call(ops)
        return self.add(NormNode((self.index_of(x),), f"{self.where}: {name} (fixed factor)", fn, x.shape), out)

    def _attention(self, func, name, args, kwargs):
        """F.scaled_dot_product_attention (flash attention): softmax(q·kᵀ·scale + mask) @ V with the
        attention weights held constant (AH rule), as `_matmul` does for the explicit form."""
        a = _sdpa_sig(*args, **kwargs)
        q, k, v = a["query"], a["key"], a["value"]
        if self._is_traced(a["attn_mask"]) or a["dropout_p"] or a["enable_gqa"]:
            raise UnsupportedOperationError(f"{name} in module '{self.where}' with an input-dependent mask, "
                                            "dropout or grouped-query attention is not supported")
        out = func(*args, **kwargs)
        if not self._is_traced(v):  # only q and/or k depend on the input: the output is a constant
            return out if not (self._is_traced(q) or self._is_traced(k)) else self.defer(
                out, f"{name} in module '{self.where}': the attention weights depend on the input but V does not")
        scale = a["scale"] if a["scale"] is not None else q.shape[-1] ** -0.5
        scores = (q.detach() @ k.detach().transpose(-2, -1)) * scale
        mask = a["attn_mask"]
        if a["is_causal"]:
            n, m = scores.shape[-2:]
            scores = scores.masked_fill(~torch.ones(n, m, dtype=torch.bool, device=q.device).tril(), float("-inf"))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        weights = scores.softmax(dim=-1)
        fn = lambda t: weights @ t  # noqa: E731
        return self.add(NormNode((self.index_of(v),), f"{self.where}: {name} (weights fixed)", fn, v.shape), out)

    def _layer_norm(self, func, name, args, kwargs):
        """LayerNorm with σ held constant (LN rule): linear centring and scaling, β a bias; z-rule."""
        a = _layer_norm_sig(*args, **kwargs)
        x = a["input"]
        dims = tuple(range(-len(tuple(a["normalized_shape"])), 0))
        inv_sigma = torch.rsqrt(x.var(dim=dims, unbiased=False, keepdim=True) + a["eps"]).detach()
        weight = self._constant(a["weight"], "a layer norm weight")
        self._constant(a["bias"], "a layer norm bias")

        def fn(t: torch.Tensor) -> torch.Tensor:
            centred = (t - t.mean(dim=dims, keepdim=True)) * inv_sigma
            return centred if weight is None else centred * weight
        out = func(*args, **kwargs)
        return self.add(NormNode((self.index_of(x),), f"{self.where}: {name} (σ frozen)", fn, x.shape), out)

    def _as_shape(self, func, name, args, kwargs):
        """x.expand_as(y), x.view_as(y), x.reshape_as(y): only y's shape is read."""
        x, other = args[0], (args[1] if len(args) > 1 else kwargs["other"])
        if not self._is_traced(x):  # a gate or constant shaped like a signal: still constant
            out = func(*args, **kwargs)
            return self._mark(out, self.tag_of(x)) if self.is_frozen(x) else out
        shape = tuple(other.shape)
        return self._reshape(AS_SHAPE[func], name, (x, shape), {})

    def _pieces(self, func, name, args, kwargs):
        """split/chunk/unbind: each piece is a linear view of the input (adjoint: zero-padded back)."""
        x, rest = args[0], args[1:]
        if any(self._is_traced(a) for a in (*rest, *kwargs.values())):
            raise UnsupportedOperationError(f"{name} in module '{self.where}' with input-dependent arguments")
        pieces = func(*args, **kwargs)
        index = self.index_of(x)
        outputs = []
        for k, piece in enumerate(pieces):
            fn = lambda t, k=k: func(t, *rest, **kwargs)[k]  # noqa: E731
            outputs.append(self.add(AdjointNode((index,), f"{self.where}: {name}[{k}]", fn, x.shape), piece))
        return type(pieces)(outputs) if isinstance(pieces, list) else tuple(outputs)

    def _stack(self, func, name, args, kwargs):
        """torch.stack = unsqueeze each piece, then concatenate (relevance splits back)."""
        tensors = args[0] if args else kwargs["tensors"]
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        dim = dim % (tensors[0].dim() + 1)
        if dim == 0:
            raise UnsupportedOperationError(f"stacking along the batch dimension in module '{self.where}'")
        inputs, pieces = [], []
        for t in tensors:
            if self._is_traced(t):
                fn = lambda u: u.unsqueeze(dim)  # noqa: E731
                unsqueezed = self.add(AdjointNode((self.index_of(t),), f"{self.where}: {name} (unsqueeze)", fn,
                                                  t.shape), t.unsqueeze(dim))
                pieces.append(len(inputs))
                inputs.append(self.index_of(unsqueezed))
            else:
                pieces.append(None)
        out = func(*args, **kwargs)
        shapes = [t.unsqueeze(dim).shape for t in tensors]
        node = CatNode(tuple(inputs), f"{self.where}: {name}", dim, [1] * len(tensors), pieces, shapes)
        return self.add(node, out)
