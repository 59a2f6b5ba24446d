"""How a network runs on one case's normalized input: the one place that pads a volume the network
cannot take (and crops results back) and chooses between one whole-volume pass and Gaussian-blended
sliding windows — for the prediction, the explanations, the composition map and the ablations.

Like MONAI's inferers, an `Inferer` holds the *how* (patch size, overlap, size divisor, device), and
is applied to inputs::

    inferer = Inferer.for_package(model, package, device="cpu")
    logits = inferer.logits(x)                       # (K, D, H, W), no graph kept
    with inferer.trace(x, package.lrp_composite()) as forward:
        forward.logits                               # the same prediction, from the traced pass
        forward.explain({"tp": tp, "fn": fn}, target)   # every region from that one pass
        forward.composition(target)                  # and the composition map

Every array a caller sees lives on x's own grid; padding never leaks out (relevance that falls on
padding is reported as ``diagnostics["relevance_in_padding"]``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .engine import (DEFAULT_TOLERANCE, Composite, RegionExplanation, Target, TracedForward, check_logits,
                     compute_context, sliding_window_logits)

Crop = tuple[slice, slice, slice]


def _fits(shape: Sequence[int], patch: Sequence[int]) -> bool:
    return all(s <= p for s, p in zip(shape, patch))


@torch.no_grad()
def network_logits(model: nn.Module, x: torch.Tensor, window: Sequence[int] | None = None, overlap: float = 0.5,
                   device: str | torch.device | None = None, progress=None) -> torch.Tensor:
    """Logits (N, K, D, H, W) on the CPU of a batch (N, C, D, H, W) that the network can take as it is:
    one pass per batch, or per item Gaussian-blended sliding windows of size ``window``
    (``progress(done, total)`` after each window).

    Raises:
        ValueError: the model does not return logits on the input grid, or returns NaN/Inf.
    """
    if window is not None:
        return torch.cat([sliding_window_logits(model, x[i:i + 1], window, overlap=overlap, device=device,
                                                progress=progress) for i in range(x.shape[0])])
    with compute_context(model, x[:1], device) as first:  # checks the model and one item, moves the model
        out = model(x.to(device=first.device, dtype=first.dtype))
        out = out[0] if isinstance(out, (tuple, list)) else out
        if out.dim() != 5 or tuple(out.shape[2:]) != tuple(x.shape[2:]):
            raise ValueError(f"the model must return logits (N, K, D, H, W) on the input grid "
                             f"{tuple(x.shape[2:])}, got {tuple(out.shape)}")
        return check_logits(out).cpu()


@dataclass
class Inferer:
    """Runs ``model`` on normalized inputs (1, C, D, H, W) of any size.

    Attributes:
        model: the network, in eval mode, returning logits on its input grid.
        patch_size: (d, h, w) the network was trained on: larger volumes run in sliding windows.
        overlap: fraction of a window shared with its neighbours.
        size_divisor: a volume that fits one patch is edge-padded to a multiple of this (e.g.
            2**depth for a U-Net); None or 1: no padding needed.
        device: "cpu", "cuda", "cuda:N" or None (CUDA when available).
    """

    model: nn.Module
    patch_size: tuple[int, int, int]
    overlap: float = 0.5
    size_divisor: int | None = None
    device: str | torch.device | None = None

    @classmethod
    def for_package(cls, model: nn.Module, package, device: str | torch.device | None = None) -> Inferer:
        """The inferer a `ModelPackage` describes (its patch size, overlap and size divisor)."""
        return cls(model, tuple(package.patch_size), package.overlap, package.size_divisor, device)

    # -- the grid the network runs on ------------------------------------------------------------
    def pad(self, x: torch.Tensor) -> tuple[torch.Tensor, Crop]:
        """Edge-pad (1, C, D, H, W) so the network can run on it: axes shorter than the patch are
        padded to the patch size (sliding windows need a full patch); a volume that fits one patch
        is padded to a multiple of the size divisor. Returns the padded input and the spatial
        slices that crop its outputs back to x's grid."""
        shape = tuple(x.shape[2:])
        divisor = self.size_divisor or 1
        if _fits(shape, self.patch_size):
            target = tuple(-(-n // divisor) * divisor for n in shape)
        else:
            target = tuple(max(n, p) for n, p in zip(shape, self.patch_size))
        crop = tuple(slice(0, n) for n in shape)
        if target == shape:
            return x, crop
        pad: list[int] = []
        for n, t in reversed(list(zip(shape, target))):
            pad += [0, t - n]
        return torch.nn.functional.pad(x, pad, mode="replicate"), crop

    def window(self, padded: torch.Tensor) -> tuple[int, int, int] | None:
        """The sliding-window size for a padded input, or None for one whole-volume pass."""
        return None if _fits(padded.shape[2:], self.patch_size) else self.patch_size

    def pad_mask(self, mask: np.ndarray | torch.Tensor, padded: torch.Tensor, crop: Crop) -> np.ndarray:
        """A (D, H, W) mask on x's grid as a bool mask on the padded grid (False on the padding)."""
        full = np.zeros(padded.shape[2:], dtype=bool)
        full[crop] = np.asarray(mask, dtype=bool)
        return full

    # -- prediction ------------------------------------------------------------------------------
    def logits(self, x: torch.Tensor, progress=None) -> np.ndarray:
        """Logits (K, D, H, W) float32 on x's grid; no graph is kept (cheaper than `trace`).
        ``progress(done, total)`` after each sliding window (never called for one whole-volume pass)."""
        padded, crop = self.pad(x)
        logits = network_logits(self.model, padded, self.window(padded), self.overlap, self.device, progress)
        return logits[(0, slice(None)) + crop].float().numpy()

    # -- explanations ----------------------------------------------------------------------------
    def trace(self, x: torch.Tensor, composite: str | Composite, keep_graphs_gib: float | None = None) -> CaseForward:
        """One traced forward pass of x (see `CaseForward`): prediction, every region's explanation
        and the composition map from it, the network run once per window."""
        padded, crop = self.pad(x)
        window = self.window(padded)
        forward = TracedForward(self.model, padded, composite, self.device, patch_size=window, overlap=self.overlap,
                                keep_graphs_gib=keep_graphs_gib)
        return CaseForward(forward, self, padded, crop)

    # -- the cross-check -------------------------------------------------------------------------
    def ablation(self, x: torch.Tensor, truth: np.ndarray, target: Target, margin_region: np.ndarray | None = None,
                 **options):
        """``evaluation.sequence_ablation`` of x (each sequence replaced by its mean), windowed and
        padded like the prediction: Dice against ``truth``, the decision margin over the true
        positives, or over ``margin_region``'s voxels predicted as the target when given."""
        from . import evaluation

        padded, crop = self.pad(x)
        margin = None if margin_region is None else self.pad_mask(margin_region, padded, crop)
        return evaluation.sequence_ablation(self.model, padded, self.pad_mask(truth, padded, crop), target=target.index,
                                            device=self.device, window=self.window(padded), overlap=self.overlap,
                                            margin_region=margin, **options)


class CaseForward:
    """A `TracedForward` on an `Inferer`'s padded input, answering on the case's own grid.

    Use as a context manager (or call `close`): the model sits on the compute device and the traced
    graphs are kept until then, so more regions cost no new forward pass.
    """

    def __init__(self, forward: TracedForward, inferer: Inferer, padded: torch.Tensor, crop: Crop) -> None:
        self._forward, self._inferer, self._padded, self._crop = forward, inferer, padded, crop

    def __enter__(self) -> CaseForward:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Free the graphs and put the model back (idempotent)."""
        self._forward.close()

    @property
    def forward_passes(self) -> int:
        """Network evaluations so far (one per window, plus re-traces of graphs not kept)."""
        return self._forward.forward_passes

    @property
    def logits(self) -> np.ndarray:
        """The prediction (K, D, H, W) float32 on the case grid, from the traced pass."""
        return self._forward.logits[(0, slice(None)) + self._crop].float().numpy()

    def explain(self, regions: Mapping[str, np.ndarray], target: Target, tolerance: float = DEFAULT_TOLERANCE,
                progress=None) -> dict[str, RegionExplanation]:
        """Each region's exact explanation (one LRP pass per region and window on the CPU, one per window on CUDA), cropped to
        the case grid; shares are those of the cropped map."""
        full = {name: self._inferer.pad_mask(mask, self._padded, self._crop) for name, mask in regions.items()}
        explained = self._forward.explain(full, target, tolerance, progress=progress)
        return {name: self._cropped(result) for name, result in explained.items()}

    def composition(self, target: Target, tolerance: float = DEFAULT_TOLERANCE, progress=None) -> np.ndarray:
        """The sequence-composition map (C, D, H, W) on the case grid (see `TracedForward.composition`)."""
        composition = self._forward.composition(target, tolerance, progress=progress)
        return composition[(slice(None),) + self._crop].numpy()

    def _cropped(self, result: RegionExplanation) -> RegionExplanation:
        """Crop a padded explanation back; the relevance that fell on padding is reported, not kept."""
        if tuple(self._padded.shape[2:]) == tuple(n.stop for n in self._crop):
            return result
        relevance = result.relevance[(slice(None),) + self._crop].contiguous()
        total, kept = result.relevance.sum(), relevance.sum()
        positive = relevance.clamp(min=0).flatten(1).sum(1)
        result.diagnostics["relevance_in_padding"] = float((total - kept) / total) if total != 0 else 0.0
        result.relevance = relevance
        result.sequence_shares = relevance.flatten(1).sum(1) / kept if kept != 0 else torch.zeros_like(positive)
        result.positive_shares = positive / positive.sum() if positive.sum() > 0 else positive
        result.excluded = result.excluded[self._crop]
        return result
