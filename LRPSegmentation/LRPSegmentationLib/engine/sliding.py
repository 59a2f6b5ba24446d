"""Whole volumes by sliding windows: Gaussian-blended prediction and its exact region explanation.

A clinical volume (e.g. 6×64×260×320) is larger than the patch a network was trained on. As in
nnU-Net and MONAI, the volume is covered by overlapping patches p, each predicted on its own, and
the patch logits are blended with a Gaussian importance g (high in the patch centre):

    Y_a = Σ_p g_p(a) y_p(a) / Σ_q g_q(a) = Σ_p ω_pa y_pa,      ω_pa ≥ 0,  Σ_p ω_pa = 1.

The blend is a linear layer with non-negative weights. The z-rule through it, started from the
target score c⊙Y_a at voxel a, hands patch p the output relevance c⊙(ω_pa y_pa) exactly (no
denominator: Σ_p ω_pa y_pa is Y_a itself). With L_p the LRP map of patch p placed into the volume's
input coordinates (overlaps summed), the seed's per-voxel map of the whole volume is

    M_a = Σ_{p∋a} L_p(e_a ⊗ c⊙ω_pa y_pa)
    s_a = ΣM_a = Σ_p ω_pa Σ_k c_k y_pak (L_pᵀ1)_ak
    M_A = Σ_{a∈A} M_a / s_a = Σ_p L_p w_p,   w_pa = 1[a∈A, usable] ω_pa c⊙y_pa / s_a

so, as in `region.explain_region`, the region explanation costs a constant number of passes per
patch that touches A — whatever |A| — and only those patches are run.

Conventions (see `region` for the rest):
- Box bounds of the input-layer rule come from the WHOLE volume, resolved once: bounds taken per
  patch would make neighbouring patches explain with different rules.
- The model must keep the spatial size (output grid = input grid), as segmentation nets do.
- A voxel is excluded when |s_a| / Σ_p ω_pa Σ_k |c_k y_pak| < tolerance: the relevance injected
  into the patch outputs for voxel a is what its map could keep, and with a single patch this is
  exactly the criterion of `explain_region`.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import torch
from torch import nn

from .composites import Composite
from .region import (DEFAULT_COMPOSITE, DEFAULT_TOLERANCE, RegionExplanation, Target, as_target, check_logits,
                     check_tolerance, compute_context)

#: Smallest Gaussian importance (relative to the centre). Like MONAI's clamp: every voxel of a patch
#: keeps a positive weight, so every voxel of the volume has a positive total weight.
MIN_IMPORTANCE = 1e-3
DEFAULT_OVERLAP = 0.5
DEFAULT_SIGMA_SCALE = 0.125

#: ``progress(done, total)``, called after each patch step.
Progress = Callable[[int, int], None]

_AXES = ("D", "H", "W")


# --------------------------------------------------------------------------------------------
# Patch grid and Gaussian importance
# --------------------------------------------------------------------------------------------
def _check_shape(shape, what: str) -> tuple[int, int, int]:
    if isinstance(shape, int) and not isinstance(shape, bool) and what == "patch_size":
        shape = (shape,) * 3  # one edge length for a cubic patch
    try:
        values = tuple(shape)
    except TypeError:
        raise ValueError(f"{what} must be three positive integers (D, H, W), got {shape!r}") from None
    if len(values) != 3 or not all(hasattr(v, "__index__") and not isinstance(v, bool) for v in values):
        raise ValueError(f"{what} must be three positive integers (D, H, W), got {shape!r}")
    values = tuple(int(v) for v in values)
    if min(values) < 1:
        raise ValueError(f"{what} must be three positive integers (D, H, W), got {values}")
    return values


def _check_overlap(overlap: float) -> float:
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be a fraction of the patch in [0, 1) (e.g. 0.5), got {overlap!r}")
    return float(overlap)


def patch_grid(volume_shape: Sequence[int], patch_size: Sequence[int] | int,
               overlap: float = DEFAULT_OVERLAP) -> list[tuple[int, int, int]]:
    """Start indices of the patches covering a volume (nnU-Net's layout).

    Along each axis the patches are evenly spaced, with a step of at most ``patch·(1 - overlap)``
    voxels (at least 1), the first at 0 and the last flush with the far border, so every voxel is
    covered and no patch leaves the volume.

    Args:
        volume_shape: (D, H, W).
        patch_size: (d, h, w), or one int for a cube.
        overlap: fraction of the patch shared by neighbours, in [0, 1).

    Returns:
        Start tuples (z, y, x) in C order; patch p covers [z, z+d) × [y, y+h) × [x, x+w).

    Raises:
        ValueError: a volume smaller than the patch along an axis. Patches are not padded here: padded
            voxels would receive relevance that is cropped away, and M_A would no longer sum to the
            number of voxels explained. Pad the volume yourself (it is then part of the explained
            input) or choose a smaller patch.
    """
    volume = _check_shape(volume_shape, "volume_shape")
    patch = _check_shape(patch_size, "patch_size")
    overlap = _check_overlap(overlap)
    per_axis = []
    for axis, size, edge in zip(_AXES, volume, patch):
        if size < edge:
            raise ValueError(f"the volume is smaller than the patch along {axis}: {size} < {edge} voxels "
                             f"(volume {volume}, patch {patch}); pad the volume to at least the patch size "
                             "or choose a smaller patch")
        step = max(edge * (1.0 - overlap), 1.0)
        # The tiny slack keeps e.g. 4 / 4.000000000000001 from asking for one patch too many.
        steps = math.ceil((size - edge) / step - 1e-9)
        per_axis.append([round(i * (size - edge) / steps) for i in range(steps + 1)] if steps > 0 else [0])
    return list(itertools.product(*per_axis))


def gaussian_importance(patch_size: Sequence[int] | int, sigma_scale: float = DEFAULT_SIGMA_SCALE,
                        dtype: torch.dtype = torch.float32, device: str | torch.device | None = None
                        ) -> torch.Tensor:
    """Gaussian blending weights of one patch, as in nnU-Net/MONAI.

    g(i) = Π_axes exp(-(i - centre)² / (2 σ²)), σ = ``sigma_scale`` · edge length, centred at
    (edge - 1)/2 (mirror-symmetric), scaled to 1 at the centre and clamped below at
    `MIN_IMPORTANCE` so that it is positive everywhere.

    Returns:
        (d, h, w) tensor of ``dtype`` on ``device``.
    """
    patch = _check_shape(patch_size, "patch_size")
    if isinstance(sigma_scale, bool) or not isinstance(sigma_scale, (int, float)) or not sigma_scale > 0:
        raise ValueError(f"sigma_scale must be a positive number (σ as a fraction of the patch, e.g. 0.125), "
                         f"got {sigma_scale!r}")
    g = torch.ones(patch, dtype=torch.float64)
    for axis, edge in enumerate(patch):
        offset = torch.arange(edge, dtype=torch.float64) - (edge - 1) / 2
        profile = torch.exp(-0.5 * (offset / (sigma_scale * edge)) ** 2)
        g = g * profile.view([-1 if k == axis else 1 for k in range(3)])
    g = (g / g.max()).clamp(min=MIN_IMPORTANCE)
    return g.to(dtype=dtype, device=device)


class _Blend:
    """The patch grid of one volume with its Gaussian weights; ω_p = g / Σ_q g_q on patch p."""

    def __init__(self, spatial: Sequence[int], patch_size, overlap: float, sigma_scale: float,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.patch = _check_shape(patch_size, "patch_size")
        self.starts = patch_grid(spatial, self.patch, overlap)
        self.importance = gaussian_importance(self.patch, sigma_scale, dtype, device)
        self.weight_sum = torch.zeros(tuple(spatial), dtype=dtype, device=device)
        for start in self.starts:
            self.weight_sum[self.slices(start)] += self.importance

    def slices(self, start: tuple[int, int, int]) -> tuple[slice, slice, slice]:
        return tuple(slice(s, s + e) for s, e in zip(start, self.patch))

    def omega(self, start: tuple[int, int, int]) -> torch.Tensor:
        """(d, h, w) blend weights of this patch (positive: every voxel is covered)."""
        return self.importance / self.weight_sum[self.slices(start)]


def _check_patch_output(logits: torch.Tensor, patch: tuple[int, int, int], batch: int = 1) -> None:
    if logits.dim() != 5 or logits.shape[0] != batch or tuple(logits.shape[2:]) != patch:
        raise ValueError(f"on a patch of size {patch} the model returned logits of shape {tuple(logits.shape)}; "
                         f"sliding windows need logits ({batch}, K, {', '.join(map(str, patch))}) on the same "
                         "grid as the patch (choose a patch size the network accepts, e.g. divisible by its "
                         "total downsampling factor)")


def _graph_budget(keep_graphs_gib: float | None, device: torch.device) -> int:
    """Bytes the kept window graphs of a `forward.TracedForward` may hold (``keep_graphs_gib``)."""
    if keep_graphs_gib is not None:
        if not keep_graphs_gib >= 0:
            raise ValueError(f"keep_graphs_gib must be >= 0 (GiB), got {keep_graphs_gib}")
        return int(keep_graphs_gib * 2 ** 30)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return _available_ram() // 4


def _available_ram() -> int:
    """MemAvailable of /proc/meminfo in bytes (Linux); 0 where it cannot be read."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _room_for(nbytes: int, device: torch.device) -> bool:
    """Whether a CUDA device still has ``nbytes`` free (always True elsewhere): kept graphs must
    leave room for the next patch's graph and its passes."""
    return device.type != "cuda" or torch.cuda.mem_get_info(device)[0] >= nbytes


def _report(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------
def sliding_window_logits(model: nn.Module, x: torch.Tensor, patch_size: Sequence[int] | int,
                          overlap: float = DEFAULT_OVERLAP, device: str | torch.device | None = None,
                          batch_size: int = 1, sigma_scale: float = DEFAULT_SIGMA_SCALE,
                          progress: Progress | None = None) -> torch.Tensor:
    """Gaussian-blended sliding-window prediction Y_a = Σ_p g_p(a) y_p(a) / Σ_p g_p(a).

    Args:
        model: network in eval mode returning logits (N, K, d, h, w) for patches (N, C, d, h, w)
            (a tuple output's first element is used: deep supervision).
        x: the whole volume (1, C, D, H, W), each axis at least the patch size.
        patch_size: (d, h, w) or one int.
        overlap: fraction of a patch shared by neighbours, in [0, 1).
        device: "cpu", "cuda", "cuda:N" or None (CUDA when available).
        batch_size: patches per forward pass.
        sigma_scale: σ of the Gaussian as a fraction of the patch.
        progress: called as ``progress(done, total)`` after each batch, counting patches.

    Returns:
        Logits (1, K, D, H, W) on the CPU, in the model's dtype.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    with compute_context(model, x, device) as x_dev:
        blend = _Blend(x_dev.shape[2:], patch_size, overlap, sigma_scale, x_dev.dtype, x_dev.device)
        accumulated = None
        for first in range(0, len(blend.starts), batch_size):
            starts = blend.starts[first:first + batch_size]
            patches = torch.cat([x_dev[(slice(None), slice(None)) + blend.slices(s)] for s in starts])
            try:
                with torch.no_grad():
                    out = model(patches)
            except RuntimeError as error:  # e.g. a patch size the network's downsampling cannot take
                raise ValueError(f"the model failed on patches of shape {tuple(patches.shape)}: {error}") from error
            logits = out[0] if isinstance(out, (tuple, list)) else out
            _check_patch_output(logits, blend.patch, len(starts))
            check_logits(logits)
            if accumulated is None:
                accumulated = logits.new_zeros((1, logits.shape[1]) + tuple(x_dev.shape[2:]))
            for y, start in zip(logits, starts):
                accumulated[(0, slice(None)) + blend.slices(start)] += blend.importance * y
            _report(progress, first + len(starts), len(blend.starts))
        return (accumulated / blend.weight_sum).cpu()


# --------------------------------------------------------------------------------------------
# Explanations
# --------------------------------------------------------------------------------------------
def sliding_explain_region(model: nn.Module, x: torch.Tensor, region, target: int | Target = 1,
                           composite: str | Composite = DEFAULT_COMPOSITE, *, patch_size: Sequence[int] | int,
                           overlap: float = DEFAULT_OVERLAP, device: str | torch.device | None = None,
                           tolerance: float = DEFAULT_TOLERANCE, sigma_scale: float = DEFAULT_SIGMA_SCALE,
                           progress: Progress | None = None,
                           keep_graphs_gib: float | None = None) -> RegionExplanation:
    """The seed's region explanation M_A = Σ_{a∈A} M_a / ΣM_a of the Gaussian-blended whole-volume
    prediction (`sliding_window_logits`), exactly (see the module docstring for M_a).

    Only patches whose output overlaps A are run, in two sweeps: the first traces each one and runs
    one transposed pass (s_a and the exclusion test need every patch containing a); the second runs
    one LRP pass per patch from w_p. The first sweep keeps each patch's traced graph for the second
    while they fit in ``keep_graphs_gib``; a patch whose graph was not kept is traced again (one
    extra forward pass; the last patch of the first sweep is always reused). Passes per touching
    patch: 1-2 forward, 1 transposed, 1 LRP — independent of |A|. With one patch this is exactly
    `explain_region`. (A `forward.TracedForward` with ``whole_if_fits=False``, used for one region.)

    Args:
        model: network in eval mode, logits on the patch's own grid.
        x: the whole volume (1, C, D, H, W).
        region: bool mask (D, H, W) on the volume's grid (tensor or numpy).
        target: class index or `Target`.
        composite: a name or a `Composite`; box bounds default to the WHOLE volume's per-sequence range.
        patch_size: (d, h, w) or one int (keyword-only).
        overlap, sigma_scale: the blend, as in `sliding_window_logits`.
        device: "cpu", "cuda", "cuda:N" or None (CUDA when available).
        tolerance: exclude voxels whose map keeps less than this fraction of the relevance injected
            into the patch outputs for them.
        progress: ``progress(done, total)`` after each patch step; total = 2 × touching patches.
        keep_graphs_gib: memory the kept patch graphs may hold (``Graph.nbytes``); None = half of
            the free memory of the CUDA device, or a quarter of the available RAM on the CPU (Linux;
            0 where unknown). 0 keeps one patch graph at a time.

    Returns:
        `RegionExplanation` (tensors on the CPU; relevance (C, D, H, W)). ``diagnostics`` adds to those
        of `explain_region` ``patches_run`` (patches touching A) and ``patches_total`` (the grid).

    Raises:
        ValueError: bad shapes, patch larger than the volume, overlap/tolerance out of range, empty
            region, NaN/Inf input, training mode, target out of range, every region voxel excluded.
    """
    from .forward import TracedForward  # built on this module

    target, tolerance = as_target(target), check_tolerance(tolerance)
    with TracedForward(model, x, composite, device, patch_size=patch_size, overlap=overlap, sigma_scale=sigma_scale,
                       keep_graphs_gib=keep_graphs_gib, whole_if_fits=False) as traced:
        return traced.explain_region(region, target, tolerance, progress=progress)


def sliding_sequence_composition(model: nn.Module, x: torch.Tensor, target: int | Target = 1,
                                 composite: str | Composite = DEFAULT_COMPOSITE, *,
                                 patch_size: Sequence[int] | int, overlap: float = DEFAULT_OVERLAP,
                                 device: str | torch.device | None = None, tolerance: float = DEFAULT_TOLERANCE,
                                 sigma_scale: float = DEFAULT_SIGMA_SCALE, chunk: int | None = None,
                                 progress: Progress | None = None) -> torch.Tensor:
    """Per-sequence composition of every voxel's normalized map, over the whole volume:

        composition_c(a) = Σ_p ω_pa Σ_k c_k y_pak (L_pᵀ1_c)_ak / s_a

    One sweep over all patches (`forward.TracedForward.composition`): per patch one forward, one
    transposed pass of 1 for s_a — the normalization `sliding_explain_region` uses, so both exclude
    the same voxels — and C transposed passes (run as batches of ``chunk``); one patch graph alive
    at a time.

    Args:
        as in `sliding_explain_region`; ``chunk`` limits how many sequence indicators are carried
        forward at once (memory), ``progress(done, total)`` counts patches.

    Returns:
        (C, D, H, W) on the volume's grid, on the CPU. Usable voxels' shares sum to 1; excluded
        voxels are all zero, so ``region_shares(composition, A)`` equals the ``sequence_shares`` of
        `sliding_explain_region` for any A, with no new pass.
    """
    from .forward import TracedForward, check_chunk  # built on this module

    target, tolerance, chunk = as_target(target), check_tolerance(tolerance), check_chunk(chunk)
    # One window graph at a time, as each window is needed once.
    with TracedForward(model, x, composite, device, patch_size=patch_size, overlap=overlap, sigma_scale=sigma_scale,
                       keep_graphs_gib=0, whole_if_fits=False) as traced:
        return traced.composition(target, tolerance, chunk, progress=progress)
