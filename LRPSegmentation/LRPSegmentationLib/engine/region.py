"""Region-normalized LRP for segmentation (the seed's M_A) in a constant number of passes.

For one forward pass LRP is a linear map L from output relevance to input relevance. With y the
logits, c the target's class coefficients and e_a the indicator of output voxel a:

    M_a = L (e_a ⊗ c⊙y_a)                    the seed's map for voxel a        (explain_voxel)
    s_a = 1ᵀ M_a = Σ_k c_k y_ka (Lᵀ1)_ka     its total, from ONE transposed pass over all a
    M_A = Σ_{a∈A} M_a / s_a = L w,  w_a = 1[a∈A] c⊙y_a / s_a                    (explain_region)

and the share of sequence c in every output voxel at once, (Lᵀ1_c)/(Lᵀ1)   (sequence_composition).

A voxel whose map keeps almost none of its score (|s_a| / Σ_k |c_k y_ka| below ``tolerance``, e.g.
relevance absorbed by biases) cannot be normalized stably — not by the per-voxel loop either. It is
excluded, counted and reported; nothing is ever divided by zero.

`explain_region` and `sequence_composition` answer one question each; `forward.TracedForward`
keeps the traced pass and answers any number of them (several regions from one forward pass).
"""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .composites import Composite, resolve_composite
from .graph import Graph, trace
from ..vocabulary import DEFAULT_COMPOSITE  # the name the UI shares: one definition

#: Default for ``tolerance``: a voxel whose LRP map keeps less than 0.1 % of its target score is excluded.
DEFAULT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Target:
    """What is explained at each output voxel: the logit of class ``index`` or, with
    ``contrast=True``, that logit minus the mean of the other classes' logits ("class vs rest";
    for two classes the logit difference)."""

    index: int
    contrast: bool = False

    def coefficients(self, num_classes: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Class weights c (K,) of the explained score t = Σ_k c_k y_k."""
        if not 0 <= self.index < num_classes:
            raise ValueError(f"target class {self.index} is out of range: the model has {num_classes} classes "
                             f"(0..{num_classes - 1})")
        if self.contrast and num_classes < 2:
            raise ValueError("a class-vs-rest target needs at least two classes")
        c = torch.zeros(num_classes, dtype=dtype, device=device)
        if self.contrast:
            c -= 1.0 / (num_classes - 1)
        c[self.index] = 1.0
        return c

    def describe(self, class_names: Sequence[str] | None = None) -> str:
        name = class_names[self.index] if class_names else f"class {self.index}"
        return f"{name} vs rest (logit contrast)" if self.contrast else f"{name} (logit)"


def as_target(target: int | Target) -> Target:
    if isinstance(target, Target):
        return target
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        return Target(int(target))
    raise ValueError(f"target must be a class index (int) or a Target, got {target!r}")


@dataclass
class RegionExplanation:
    """Result of `explain_region`.

    Attributes:
        relevance: M_A, (C, D, H, W) on the input grid. Sums to ``n_used``.
        sequence_shares: (C,) share of M_A per input sequence (signed; sums to 1).
        positive_shares: (C,) share of the positive part of M_A per sequence (sums to 1).
        n_used: region voxels that contributed (each with total relevance 1).
        n_excluded: region voxels excluded because their map keeps less than ``tolerance`` of the score.
        excluded: (D, H, W) bool on the output grid, the excluded voxels.
        diagnostics: conservation checks, see `explain_region`.
    """

    relevance: torch.Tensor
    sequence_shares: torch.Tensor
    positive_shares: torch.Tensor
    n_used: int
    n_excluded: int
    excluded: torch.Tensor
    target: Target
    composite: str
    tolerance: float
    diagnostics: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Input checks and the compute context
# --------------------------------------------------------------------------------------------
_DEVICES = "use 'auto', 'cpu', 'cuda' or 'cuda:N'"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The compute device: ``None``/``"auto"`` is CUDA when available, else the CPU.

    Raises:
        ValueError: a string torch cannot parse ("gpu", "cuda:x"), a device other than the CPU or
            CUDA (the "meta" device holds no values), CUDA on a machine without it, or a CUDA
            index the machine does not have.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        if not isinstance(device, (str, torch.device)):
            raise TypeError(type(device).__name__)
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; {_DEVICES}") from None
    if resolved.type == "meta":
        raise ValueError(f"device 'meta' holds no data (shapes only) and cannot compute; {_DEVICES}")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported; {_DEVICES}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {resolved} requested but CUDA is not available; use device='cpu'")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"device {resolved} requested but this machine has {count} CUDA device(s) "
                             f"(cuda:0 to cuda:{count - 1})")
    return resolved


def _refuse_meta(t: torch.Tensor, what: str) -> None:
    """Tensors on the meta device have a shape but no values: nothing can be computed from them."""
    if t.device.type == "meta":
        raise ValueError(f"{what} is on the meta device (a shape without values); pass a tensor with data, "
                         "e.g. on the CPU")


def check_logits(logits: torch.Tensor) -> torch.Tensor:
    """Return ``logits`` if they are all finite; NaN/Inf logits have no argmax and no explanation,
    and would otherwise come out as "all background" or "every voxel excluded".

    Raises:
        ValueError: saying how many values are not finite.
    """
    finite = torch.isfinite(logits)
    if not finite.all():
        raise ValueError(f"the model's logits contain {int((~finite).sum())} NaN/Inf values (of {logits.numel()}): "
                         "the network overflows on this input; check its weights (e.g. trained in another "
                         "precision) and the input's normalization")
    return logits


def _check_model_and_input(model: nn.Module, x: torch.Tensor) -> torch.dtype:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):  # its graph cannot be traced module by module
        raise ValueError("the model is a TorchScript module, which LRP cannot trace; use the network's Python "
                         "class: load the state dict into it (model.load_state_dict(torch.jit.load(path)."
                         "state_dict())), register the class and create a package (create_package)")
    if model.training:
        raise ValueError("the model is in training mode (dropout/batch-norm statistics change the map); "
                         "call model.eval() first")
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor of shape (1, C, D, H, W), got {type(x).__name__}")
    _refuse_meta(x, "x")
    if any(t.device.type == "meta" for t in itertools.chain(model.parameters(), model.buffers())):
        raise ValueError("the model's weights are on the meta device (shapes without values); load its weights "
                         "first (e.g. ModelPackage.build())")
    if x.dim() != 5 or x.shape[0] != 1:
        raise ValueError(f"x must have shape (1, C, D, H, W) (one case, C sequences), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"x contains {bad} NaN/Inf values; fix the preprocessing (e.g. resampling outside "
                         "the field of view) before explaining")
    params = list(model.parameters())
    dtype = params[0].dtype if params else x.dtype
    if dtype in (torch.float16, torch.bfloat16):
        raise ValueError("LRP divides by small numbers and is wrong in half precision; convert the model "
                         "with model.float() (or model.double() for references)")
    first_conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if first_conv is not None and first_conv.in_channels != x.shape[1] and not first_conv.transposed:
        raise ValueError(f"the model expects {first_conv.in_channels} input sequences, x has {x.shape[1]} "
                         "channels")
    return dtype


@contextlib.contextmanager
def tf32_off() -> Iterator[None]:
    """TF32 off for the duration (LRP divides by small numbers; TF32 keeps about 10 mantissa bits),
    restored afterwards."""
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


@contextlib.contextmanager
def model_on(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """``model`` moved to ``device``, and back to where its parameters were afterwards."""
    params = list(model.parameters())
    original = params[0].device if params else device
    try:
        yield model.to(device)
    finally:
        model.to(original)


def checked_input(model: nn.Module, x: torch.Tensor, device: str | torch.device | None
                  ) -> tuple[torch.Tensor, torch.device]:
    """Check ``model`` and ``x`` (see `compute_context`) and return x on the compute device, in the
    model's dtype (float32 or float64), with the device."""
    dtype = _check_model_and_input(model, x)
    device = resolve_device(device)
    return x.detach().to(device=device, dtype=dtype), device


@contextlib.contextmanager
def compute_context(model: nn.Module, x: torch.Tensor, device: str | torch.device | None) -> Iterator[torch.Tensor]:
    """Run on ``device`` with TF32 off; the model is returned to its original device afterwards.

    Yields x on the device, in the model's dtype (float32 or float64).
    """
    x_dev, device = checked_input(model, x, device)
    with tf32_off(), model_on(model, device):
        yield x_dev


def prepare_graph(model: nn.Module, x: torch.Tensor, composite: str | Composite) -> Graph:
    """Trace ``model`` on ``x`` (already on its device) and attach the composite's rules."""
    try:
        graph = trace(model, x)
    except RuntimeError as error:  # e.g. a shape mismatch inside the model
        raise ValueError(f"the model failed on an input of shape {tuple(x.shape)}: {error}") from error
    if graph.logits.dim() != 5 or graph.logits.shape[0] != 1:
        raise ValueError(f"the model must return logits of shape (1, K, D, H, W), got {tuple(graph.logits.shape)}")
    check_logits(graph.logits)
    return graph.prepare(resolve_composite(composite, x))


def region_label(name: object = None) -> str:
    """How errors name a region: "region", or "region 'tp'" for a named one."""
    return "region" if name is None else f"region {name!r}"


def check_region(region, spatial: torch.Size, device: torch.device, name: object = None) -> torch.Tensor:
    """``region`` as a bool (D, H, W) tensor on ``device``; ``name`` (e.g. "tp") goes into the errors.

    Raises:
        ValueError: not a 0/1 mask, a shape other than the output grid ``spatial``, or empty.
    """
    label = region_label(name)
    if isinstance(region, torch.Tensor):
        _refuse_meta(region, label)
    region = torch.as_tensor(np.asarray(region) if not isinstance(region, torch.Tensor) else region)
    if region.dtype != torch.bool:
        if region.is_floating_point() or not ((region == 0) | (region == 1)).all():
            raise ValueError(f"{label} must be a boolean (D, H, W) mask (0/1 integers are accepted)")
        region = region.bool()
    if tuple(region.shape) != tuple(spatial):
        raise ValueError(f"{label} has shape {tuple(region.shape)} but the model's output grid is "
                         f"{tuple(spatial)}; resample the mask to the output grid")
    if not region.any():
        raise ValueError(f"{'the region' if name is None else label} is empty: paint at least one voxel")
    return region.to(device)


def check_tolerance(tolerance: float) -> float:
    """``tolerance`` must be a fraction in (0, 1): with 0, voxels whose map sums to exactly zero
    would be divided by zero."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0.0 < tolerance < 1.0:
        raise ValueError(f"tolerance must be a fraction in (0, 1) (e.g. {DEFAULT_TOLERANCE:g}), got {tolerance!r}")
    return float(tolerance)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def explain_voxel(model: nn.Module, x: torch.Tensor, voxel: Sequence[int], target: int | Target = 1,
                  composite: str | Composite = DEFAULT_COMPOSITE, device: str | torch.device | None = None
                  ) -> torch.Tensor:
    """The seed's M_a: LRP started from the target score at one output voxel.

    Args:
        model: network in eval mode returning logits (1, K, D, H, W).
        x: input (1, C, D, H, W).
        voxel: (d, h, w) index on the output grid.
        target: class index or `Target`.
        composite: a name from `COMPOSITES` or a `Composite`.
        device: "cpu", "cuda", "cuda:N" or None (CUDA when available).

    Returns:
        M_a, (C, D, H, W) on the input grid, on the compute device. Its sum is s_a.
    """
    target = as_target(target)
    with compute_context(model, x, device) as x_dev:
        graph = prepare_graph(model, x_dev, composite)
        y = graph.logits
        coefficients = target.coefficients(y.shape[1], y.dtype, y.device)
        if len(voxel) != 3 or not all(0 <= int(i) < n for i, n in zip(voxel, y.shape[2:])):
            raise ValueError(f"voxel {tuple(voxel)} is outside the output grid {tuple(y.shape[2:])}")
        d, h, w = (int(i) for i in voxel)
        r = torch.zeros_like(y)
        r[0, :, d, h, w] = coefficients * y[0, :, d, h, w]
        return graph.relevance(r)[0]


def explain_region(model: nn.Module, x: torch.Tensor, region, target: int | Target = 1,
                   composite: str | Composite = DEFAULT_COMPOSITE, device: str | torch.device | None = None,
                   tolerance: float = DEFAULT_TOLERANCE) -> RegionExplanation:
    """The seed's region explanation M_A = Σ_{a∈A} M_a / ΣM_a, exactly, in one forward pass, one
    transposed pass and one LRP pass, whatever the size of A.

    Args:
        model: network in eval mode returning logits (1, K, D, H, W).
        x: input (1, C, D, H, W), C sequences.
        region: bool mask (D, H, W) on the output grid (tensor or numpy).
        target: class index or `Target` (class-vs-rest contrast).
        composite: a name from `COMPOSITES` or a `Composite`; box bounds default to x's per-sequence range.
        device: "cpu", "cuda", "cuda:N" or None (CUDA when available).
        tolerance: exclude voxels whose map keeps less than this fraction of their score.

    Returns:
        `RegionExplanation` (tensors on the CPU). ``diagnostics`` holds ``relevance_sum`` (should
        equal ``n_used``), ``conservation_error`` (their relative difference), and the mean/min of
        the conserved fraction s_a / Σ|c⊙y_a| over the used voxels.

    Raises:
        ValueError: bad shapes, empty region, NaN/Inf input, training mode, target out of range,
            or every region voxel excluded.
    """
    from .forward import TracedForward  # built on this module

    target, tolerance = as_target(target), check_tolerance(tolerance)
    with TracedForward(model, x, composite, device) as traced:
        return traced.explain_region(region, target, tolerance)


def sequence_composition(model: nn.Module, x: torch.Tensor, target: int | Target = 1,
                         composite: str | Composite = DEFAULT_COMPOSITE, device: str | torch.device | None = None,
                         tolerance: float = DEFAULT_TOLERANCE, chunk: int | None = None) -> torch.Tensor:
    """For every output voxel a, the share of its normalized map M_a/ΣM_a that lies in each input
    sequence: (Lᵀ1_c)_a / (Lᵀ1)_a, from C transposed passes (``chunk`` per batch; None: one per pass
    on the CPU, all at once on CUDA; see `TracedForward.composition`).

    Returns:
        (C, D, H, W) over the OUTPUT grid, on the CPU. Each usable voxel's shares sum to 1; excluded
        voxels (see `explain_region`) are all zero. The shares of any region A are
        `region_shares(composition, A)` — exactly those of `explain_region` — with no new pass.
    """
    from .forward import TracedForward  # built on this module

    target, tolerance = as_target(target), check_tolerance(tolerance)
    with TracedForward(model, x, composite, device) as traced:
        return traced.composition(target, tolerance, chunk)


def region_shares(composition: torch.Tensor, region) -> tuple[torch.Tensor, int, int]:
    """Per-sequence shares of a region from a `sequence_composition` map (no LRP pass).

    Args:
        composition: (C, D, H, W) from `sequence_composition`.
        region: bool mask (D, H, W).

    Returns:
        shares (C,) summing to 1, number of voxels used, number excluded.
    """
    region = check_region(region, composition.shape[1:], composition.device)
    valid = composition.sum(0).abs() > 0.5  # usable voxels sum to 1, excluded ones to 0
    used = region & valid
    n_used = int(used.sum())
    if n_used == 0:
        raise ValueError(f"all {int(region.sum())} region voxels were excluded (no usable LRP normalization)")
    return composition[:, used].sum(1) / n_used, n_used, int(region.sum()) - n_used
