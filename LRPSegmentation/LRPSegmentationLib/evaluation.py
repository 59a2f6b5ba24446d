"""Faithfulness checks of region explanations: does the relevance point at what the model uses?

Pure functions over ``(model, x, region, ...)`` — no files, no MRML — used by ``lrpseg evaluate``
and by the demo's report. All inputs follow the engine's conventions: ``x`` is (1, C, D, H, W),
masks are (D, H, W) bool on the output grid, relevance is (C, D, H, W) (``explain_region``).

* :func:`sequence_ablation` — replace one sequence at a time by an uninformative one
  (:func:`uninformative_fill`) and measure the drop in Dice of the predicted target class and the
  decision margin (:func:`decision_margins`, also the value function of ``shapley``).
  :func:`shares_vs_ablation` rank-correlates those drops with per-sequence relevance shares;
  :func:`relevance_without_sensitivity` lists sequences with relevance but no effect on the margin.
* :func:`region_perturbation` — 3D region perturbation (Samek et al., IEEE TNNLS 2017): remove
  (sequence, 3D block) patches in order of relevance (MoRF / LeRF) or at random and follow the
  model's mean target probability over the region; summarized by :func:`aopc` and
  :func:`area_between`.
* ``randomization.randomization_check`` (its own module) — model-parameter randomization.
* :func:`dice`, :func:`spearman` — the metrics, NaN-free.

Every model evaluation goes through the engine's ``compute_context`` (eval mode required, TF32
off, model returned to its device). ``window`` (optional, everywhere) is the sliding-window patch
size of ``engine.sliding`` for volumes larger than one network patch; ``None`` runs the whole
volume in one pass.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .engine import check_region
from .engine.region import as_target
from .inference import network_logits
from .vocabulary import DISTRACTOR_MIN_RETAINED, DISTRACTOR_MIN_SHARE

__all__ = [
    "FILL_MODES",
    "PERTURBATION_FILLS",
    "PERTURBATION_ORDERS",
    "AblationResult",
    "PerturbationCurve",
    "dice",
    "spearman",
    "rank",
    "uninformative_fill",
    "fill_level",
    "decision_margins",
    "sequence_ablation",
    "shares_vs_ablation",
    "relevance_without_sensitivity",
    "perturbation_blocks",
    "region_perturbation",
    "aopc",
    "area_between",
]

FILL_MODES = ("mean", "zeros", "noise")
"""Modes of :func:`uninformative_fill`."""
PERTURBATION_FILLS = ("blur", "mean")
"""What a removed block is replaced by in :func:`region_perturbation`."""
PERTURBATION_ORDERS = ("morf", "lerf", "random")
"""Block orders of :func:`region_perturbation`."""

# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
def _as_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def dice(prediction, truth) -> float:
    """Dice coefficient 2|P∩T| / (|P| + |T|) of two boolean masks (numpy arrays or tensors).

    Both empty gives 1.0 (perfect agreement on "nothing there").

    Raises:
        ValueError: different shapes.
    """
    p, t = _as_numpy(prediction).astype(bool), _as_numpy(truth).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction has shape {p.shape} but truth has shape {t.shape}")
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / total


def rank(values) -> np.ndarray:
    """1-based ranks of a 1D array, ties getting the average of the ranks they span
    (``scipy.stats.rankdata(method="average")``)."""
    v = _as_numpy(values).astype(np.float64).ravel()
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    # start of each run of equal values
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], v.size]  # exclusive
    average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(v.size, dtype=np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation of two equally long 1D sequences (Pearson correlation of their
    average ranks, so ties are handled like ``scipy.stats.spearmanr``).

    NaN-free by convention: when either side is constant (no ranking at all) the result is 0.0,
    "no monotone association", where scipy would return NaN. Fewer than two values also give 0.0.

    Raises:
        ValueError: different lengths, or NaN/Inf values.
    """
    a, b = _as_numpy(a).astype(np.float64).ravel(), _as_numpy(b).astype(np.float64).ravel()
    if a.size != b.size:
        raise ValueError(f"spearman needs two sequences of the same length, got {a.size} and {b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("spearman got NaN/Inf values")
    if a.size < 2:
        return 0.0
    ra, rb = rank(a), rank(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    if denominator == 0.0:
        return 0.0
    return float(np.clip((ra * rb).sum() / denominator, -1.0, 1.0))


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------
def _check_x(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor of shape (1, C, D, H, W), got {type(x).__name__}")
    if x.dim() != 5 or x.shape[0] != 1:
        raise ValueError(f"x must have shape (1, C, D, H, W) (one case, C sequences), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    return x


def _check_channel(channel: int, channels: int) -> int:
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or not 0 <= channel < channels:
        raise ValueError(f"channel must be a sequence index in 0..{channels - 1}, got {channel!r}")
    return int(channel)


def _check_mask(mask, spatial, what: str) -> torch.Tensor:
    mask = torch.as_tensor(_as_numpy(mask) if not isinstance(mask, torch.Tensor) else mask).cpu()
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or not ((mask == 0) | (mask == 1)).all():
            raise ValueError(f"{what} must be a boolean (D, H, W) mask (0/1 integers are accepted)")
        mask = mask.bool()
    if tuple(mask.shape) != tuple(spatial):
        raise ValueError(f"{what} has shape {tuple(mask.shape)} but the volume is {tuple(spatial)}")
    return mask


def _logits_fn(model: nn.Module, device, window, overlap: float):
    """A function x (N, C, D, H, W) → logits (N, K, D, H, W) on the CPU (`inference.network_logits`)."""
    return functools.partial(network_logits, model, window=window, overlap=overlap, device=device)


def _check_class(target: int, logits: torch.Tensor) -> int:
    if not 0 <= target < logits.shape[1]:
        raise ValueError(f"target class {target} is out of range: the model has {logits.shape[1]} classes")
    return target


# --------------------------------------------------------------------------------------------
# Sequence ablation
# --------------------------------------------------------------------------------------------
def uninformative_fill(x: torch.Tensor, channel: int, mask=None, mode: str = "mean",
                       seed: int = 0) -> torch.Tensor:
    """``x`` with sequence ``channel`` replaced by an uninformative one (a new tensor).

    Modes:

    * ``"mean"`` (default): the whole sequence becomes one constant, its mean inside ``mask`` — a
      flat sequence at a realistic intensity level (e.g. ≈ 0 after a foreground z-score), carrying
      no spatial information at all, background included.
    * ``"zeros"``: the whole sequence becomes 0 (the mean of a z-scored sequence's foreground,
      but far from the level of unnormalized or [0, 1]-scaled inputs — prefer ``"mean"``).
    * ``"noise"``: i.i.d. Gaussian noise with the mean and standard deviation of the sequence inside
      ``mask`` (seeded with ``seed``): realistic level and spread, no structure.

    Args:
        x: (1, C, D, H, W) or (C, D, H, W).
        channel: index of the sequence to replace.
        mask: (D, H, W) bool body/foreground mask for the statistics; ``None``: voxels above the
            sequence's own Otsu threshold (``normalization.foreground_mask``), or the whole volume if
            that is empty.
        mode: one of :data:`FILL_MODES`.
        seed: random seed of ``"noise"``.

    Raises:
        ValueError: bad shapes, channel, mode, or an empty mask.
    """
    if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5) or (x.dim() == 5 and x.shape[0] != 1):
        raise ValueError(f"x must be a (1, C, D, H, W) or (C, D, H, W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if mode not in FILL_MODES:
        raise ValueError(f"unknown fill mode {mode!r}; choose one of {FILL_MODES}")
    volume = x[0] if x.dim() == 5 else x
    channel = _check_channel(channel, volume.shape[0])
    sequence = volume[channel].detach()
    inside = _fill_statistics_voxels(sequence, mask)
    out = x.detach().clone()
    target = out[0, channel] if x.dim() == 5 else out[channel]
    if mode == "mean":
        target.fill_(float(inside.mean()))
    elif mode == "zeros":
        target.zero_()
    else:
        generator = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(sequence.shape, generator=generator, dtype=torch.float64)
        std = float(inside.std(unbiased=False)) if inside.numel() > 1 else 0.0
        target.copy_((noise * std + float(inside.mean())).to(target.dtype))
    return out


def _fill_statistics_voxels(sequence: torch.Tensor, mask=None) -> torch.Tensor:
    """The float64 values of a (D, H, W) sequence that `uninformative_fill` takes its statistics from:
    inside ``mask``, else above the sequence's Otsu threshold (the whole volume if that is empty)."""
    if mask is None:
        from .normalization import foreground_mask  # SimpleITK only when needed
        values = sequence.cpu().double().numpy()
        mask = torch.from_numpy(foreground_mask(values)) if values.max() > values.min() else None
        if mask is None or not mask.any():
            mask = torch.ones(sequence.shape, dtype=torch.bool)
    else:
        mask = _check_mask(mask, sequence.shape, "mask")
        if not mask.any():
            raise ValueError("the fill mask is empty: no voxels to take the sequence's statistics from")
    return sequence[mask.to(sequence.device)].double()


def fill_level(x: torch.Tensor, channel: int, mask=None) -> float:
    """The constant that :func:`uninformative_fill` (mode ``"mean"``) puts in place of sequence
    ``channel`` of x (1, C, D, H, W): its mean inside ``mask``, else over its Otsu foreground."""
    x = _check_x(x)
    return float(_fill_statistics_voxels(x[0, _check_channel(channel, x.shape[1])].detach(), mask).mean())


@dataclass
class AblationResult:
    """Result of :func:`sequence_ablation`.

    Attributes:
        base_dice: Dice of the predicted target class against the truth with all sequences.
        ablated_dice: (C,) Dice with sequence c replaced by the uninformative fill.
        drops: (C,) ``base_dice - ablated_dice``; large = the model needs that sequence.
        fill: the fill mode used.
        target: the class index.
        base_margin: mean target margin (target logit minus the largest other logit) over the
            true-positive voxels (the predicted target voxels if none is true; NaN if none).
        ablated_margin: (C,) the same mean margin, on the same voxels, with sequence c replaced.
            Finer than Dice: a decision can keep its label while losing most of its margin.
    """

    base_dice: float
    ablated_dice: np.ndarray
    drops: np.ndarray
    fill: str
    target: int
    base_margin: float = float("nan")
    ablated_margin: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def margin_retained(self) -> np.ndarray:
        """(C,) ``ablated_margin / base_margin``: 1 = the decision does not depend on that sequence
        at all, ≤ 0 = without it the region is no longer called the target class."""
        return self.ablated_margin / self.base_margin

    def most_important(self) -> int:
        """Index of the sequence whose removal costs most Dice."""
        return int(np.argmax(self.drops))


def decision_margins(logits: torch.Tensor, target: int, voxels) -> np.ndarray:
    """The decision margin of each batch item: the mean over ``voxels`` of the target logit minus
    the largest other logit (> 0 where the target class wins), in float64.

    The one definition of "the decision margin" (the cross-check of :func:`sequence_ablation` and
    the value function of ``shapley``). The caller fixes ``voxels`` once, e.g. region A's voxels
    predicted as the target with every sequence present, so that margins of altered inputs are
    averaged over the same voxels.

    Args:
        logits: (N, K, D, H, W).
        target: class index.
        voxels: (D, H, W) bool.

    Returns:
        (N,) margins; NaN when ``voxels`` is empty or the model has fewer than two classes.
    """
    if logits.dim() != 5:
        raise ValueError(f"logits must be (N, K, D, H, W), got shape {tuple(logits.shape)}")
    voxels = _check_mask(voxels, logits.shape[2:], "voxels")
    if not voxels.any() or logits.shape[1] < 2:
        return np.full(logits.shape[0], np.nan)
    target = _check_class(target, logits)
    inside = logits[:, :, voxels.to(logits.device)].double()  # (N, K, V)
    others = torch.cat([inside[:, :target], inside[:, target + 1:]], dim=1).amax(1)
    return (inside[:, target] - others).mean(1).cpu().numpy()


def sequence_ablation(model: nn.Module, x: torch.Tensor, region_truth, target: int = 1, fill: str = "mean",
                      device: str | torch.device | None = None, mask=None, *, window=None,
                      overlap: float = 0.5, seed: int = 0, margin_region=None) -> AblationResult:
    """Per-sequence ablation: how much Dice (and decision margin) does the model lose without each sequence?

    The prediction is ``argmax_k logits == target`` over the whole volume; Dice is computed over
    the whole volume against ``region_truth`` (e.g. the tumour label). Then each sequence in turn
    is replaced by :func:`uninformative_fill` (``fill``, statistics inside ``mask``) and Dice is
    measured again, and the mean target margin over the true positives (``margin_retained``).
    C + 1 forward passes.

    Args:
        model: segmentation network in eval mode, logits (1, K, D, H, W).
        x: (1, C, D, H, W) input.
        region_truth: (D, H, W) bool ground truth of the target class (may be empty: Dice 1 when the
            prediction is empty too).
        target: class index.
        fill: a :data:`FILL_MODES` mode.
        device: "cpu", "cuda", ... or None (CUDA when available).
        mask: (D, H, W) body/foreground mask for the fill statistics (see :func:`uninformative_fill`).
        window: sliding-window patch size, or None for one whole-volume pass.
        margin_region: (D, H, W) bool: measure the margin over its predicted-target voxels instead
            of the true positives (e.g. a painted region A without a ground truth).

    Returns:
        :class:`AblationResult`.
    """
    x = _check_x(x)
    if fill not in FILL_MODES:
        raise ValueError(f"unknown fill mode {fill!r}; choose one of {FILL_MODES}")
    target = as_target(target).index
    truth = _check_mask(region_truth, x.shape[2:], "region_truth")
    logits = _logits_fn(model, device, window, overlap)
    base = logits(x)
    target = _check_class(target, base)
    predicted = base.argmax(1)[0] == target
    base_dice = dice(predicted, truth)
    if margin_region is not None:
        margin_voxels = predicted & _check_mask(margin_region, x.shape[2:], "margin_region")
    else:
        margin_voxels = predicted & truth if (predicted & truth).any() else predicted

    def mean_margin(out: torch.Tensor) -> float:
        return float(decision_margins(out, target, margin_voxels)[0])

    ablated = np.empty(x.shape[1])
    ablated_margin = np.empty(x.shape[1])
    for channel in range(x.shape[1]):
        out = logits(uninformative_fill(x, channel, mask=mask, mode=fill, seed=seed))
        ablated[channel] = dice(out.argmax(1)[0] == target, truth)
        ablated_margin[channel] = mean_margin(out)
    return AblationResult(base_dice=base_dice, ablated_dice=ablated, drops=base_dice - ablated, fill=fill,
                          target=target, base_margin=mean_margin(base), ablated_margin=ablated_margin)


def relevance_without_sensitivity(positive_shares, margin_retained, min_share: float = DISTRACTOR_MIN_SHARE,
                                  min_retained: float = DISTRACTOR_MIN_RETAINED) -> list[int]:
    """Sequences whose relevance the decision does not back (distractor relevance).

    A sequence is listed when it gets at least ``min_share`` of the region's positive relevance
    although replacing it keeps at least ``min_retained`` of the decision margin
    (:attr:`AblationResult.margin_retained`). LRP splits each first-layer neuron's relevance in
    proportion to its inputs' contributions, so a sequence with non-zero first-layer weights gets
    relevance even where later layers cancel its effect on the decision (Kindermans et al., ICLR
    2018, call such inputs distractors); the README's proof measures it on a control model.

    Args:
        positive_shares: (C,) positive relevance share per sequence (``RegionExplanation``).
        margin_retained: (C,) from :func:`sequence_ablation` (NaN never qualifies).

    Returns:
        The sequence indices, in order.
    """
    shares, retained = _as_numpy(positive_shares).ravel(), _as_numpy(margin_retained).ravel()
    if shares.size != retained.size:
        raise ValueError(f"got {shares.size} shares but {retained.size} margins; one per sequence each")
    return [c for c in range(shares.size) if shares[c] >= min_share and retained[c] >= min_retained]


def shares_vs_ablation(shares, drops) -> float:
    """Spearman rank correlation between per-sequence relevance shares and ablation Dice drops
    (1: relevance ranks the sequences exactly as their removal hurts)."""
    shares, drops = _as_numpy(shares).ravel(), _as_numpy(drops).ravel()
    if shares.size != drops.size:
        raise ValueError(f"got {shares.size} shares but {drops.size} ablation drops; one per sequence each")
    return spearman(shares, drops)


# --------------------------------------------------------------------------------------------
# Region perturbation
# --------------------------------------------------------------------------------------------
def _gaussian_blur(volume: torch.Tensor, sigma: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian blur of (C, D, H, W) per channel, replicate borders, kernels ≤ 3σ."""
    out = volume.double()[None]  # (1, C, D, H, W)
    channels = out.shape[1]
    for axis, s in enumerate(sigma):
        if s <= 0:
            continue
        radius = max(1, int(math.ceil(3 * s)))
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
        kernel = torch.exp(-0.5 * (offsets / s) ** 2)
        kernel /= kernel.sum()
        shape = [1, 1, 1]
        shape[axis] = kernel.numel()
        weight = kernel.view(1, 1, *shape).repeat(channels, 1, 1, 1, 1)
        pad = [0] * 6  # (W left, W right, H ..., D ...)
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), weight, groups=channels)
    return out[0].to(volume.dtype)


def _check_triple(value, what: str) -> tuple[int, int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value),) * 3
    try:
        values = tuple(value)
    except TypeError:
        raise ValueError(f"{what} must be three positive integers (voxels), got {value!r}") from None
    if len(values) != 3 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
                                   for v in values):
        raise ValueError(f"{what} must be three positive integers (voxels), got {value!r}")
    return tuple(int(v) for v in values)


def perturbation_blocks(spatial: Sequence[int], region, patch=(4, 4, 4), margin=None
                        ) -> list[tuple[slice, slice, slice]]:
    """The candidate 3D blocks of :func:`region_perturbation`.

    The volume is tiled by non-overlapping ``patch`` blocks aligned at voxel 0 (border blocks are
    cut). Candidates are the blocks that intersect the region's bounding box dilated by ``margin``
    voxels per axis (default: two blocks) — the neighbourhood that can influence the region for a
    network whose receptive field is a few blocks wide, clipped to the volume.
    """
    patch = _check_triple(patch, "patch")
    margin = tuple(2 * p for p in patch) if margin is None else _check_triple(margin, "margin") \
        if not (isinstance(margin, (int, np.integer)) and margin == 0) else (0, 0, 0)
    region = np.asarray(_as_numpy(region)).astype(bool)
    coords = np.nonzero(region)
    ranges = []
    for axis in range(3):
        low = max(0, int(coords[axis].min()) - margin[axis])
        high = min(int(spatial[axis]), int(coords[axis].max()) + 1 + margin[axis])
        first, last = low // patch[axis], (high - 1) // patch[axis]
        ranges.append([slice(b * patch[axis], min((b + 1) * patch[axis], int(spatial[axis])))
                       for b in range(first, last + 1)])
    return [(a, b, c) for a in ranges[0] for b in ranges[1] for c in ranges[2]]


@dataclass
class PerturbationCurve:
    """Result of :func:`region_perturbation`.

    Attributes:
        scores: (steps + 1,) the model's mean target score over the region after 0, 1, ... steps
            (``scores[0]``: unperturbed input).
        fraction_removed: (steps + 1,) fraction of the candidate patches removed so far.
        order: "morf", "lerf" or "random".
        score: "probability" (mean softmax probability of the target) or "logit".
        n_patches: candidate (sequence, block) patches.
        patches_per_step: patches removed per step.
        patch: block size in voxels.
        fill: "blur" or "mean".
    """

    scores: np.ndarray
    fraction_removed: np.ndarray
    order: str
    score: str
    n_patches: int
    patches_per_step: int
    patch: tuple[int, int, int]
    fill: str

    def __len__(self) -> int:
        return len(self.scores)


def _scores_of(curve) -> np.ndarray:
    scores = curve.scores if isinstance(curve, PerturbationCurve) else _as_numpy(curve)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size < 1 or not np.isfinite(scores).all():
        raise ValueError("a perturbation curve needs at least one finite score")
    return scores


def aopc(curve) -> float:
    """Area over the perturbation curve (Samek et al. 2017):
    ``1/(L+1) Σ_{k=0..L} (f(x⁰) − f(xᵏ))``. Large for MoRF = the most relevant patches matter."""
    scores = _scores_of(curve)
    return float(np.mean(scores[0] - scores))


def area_between(morf, other) -> float:
    """Mean of ``other − morf`` over the steps (``other`` = LeRF or random) = AOPC(MoRF) −
    AOPC(other) when both start from the same input. Positive = the relevance ranking removes
    what the model needs faster than ``other`` does."""
    a, b = _scores_of(morf), _scores_of(other)
    if a.size != b.size:
        raise ValueError(f"curves of different lengths ({a.size} and {b.size}); use the same steps")
    return float(np.mean(b - a))


def region_perturbation(model: nn.Module, x: torch.Tensor, region, relevance, target: int = 1,
                        patch=(4, 4, 4), steps: int = 20, fill: str = "blur",
                        device: str | torch.device | None = None, order: str = "morf", *,
                        score: str = "probability", margin=None, blur_sigma=None, seed: int = 0,
                        batch_size: int = 4, window=None, overlap: float = 0.5) -> PerturbationCurve:
    """3D region perturbation (Samek et al. 2017) of a region explanation.

    A patch is (sequence c, 3D block): every sequence is tiled into non-overlapping ``patch``
    blocks and only blocks near the region are candidates (:func:`perturbation_blocks`), giving
    C × n_blocks patches. They are ranked by their summed (signed) relevance — most relevant first
    (``"morf"``), least relevant first (``"lerf"``), or a seeded random permutation (``"random"``,
    the baseline) — and removed ``patches_per_step = ceil(n / steps)`` at a time, so all candidates
    are gone after ``steps`` steps. A removed patch takes the values of the same block of a
    strongly blurred copy of its sequence (``"blur"``, Gaussian σ = ``blur_sigma`` voxels, default
    twice the block edge per axis) or the sequence's mean over the volume (``"mean"``); fills come
    from the original input, so removals do not compound.

    After each step the model is run and the region's mean target score recorded: by default the
    mean softmax probability of ``target`` (bounded in [0, 1], comparable across models and easy
    to plot); ``score="logit"`` gives the mean target logit.

    Cost: ``steps + 1`` forward passes (``batch_size`` inputs per pass).

    Args:
        model: network in eval mode returning logits (1, K, D, H, W).
        x: (1, C, D, H, W).
        region: (D, H, W) bool region whose score is followed.
        relevance: (C, D, H, W) relevance (e.g. ``explain_region(...).relevance``); ignored for
            ``order="random"`` but its shape is still checked.
        target: class index.
        patch: block size in voxels (three ints or one).
        steps: number of removal steps L.
        fill: one of :data:`PERTURBATION_FILLS`.
        device: "cpu", "cuda", ... or None.
        order: one of :data:`PERTURBATION_ORDERS`.
        score: "probability" or "logit".
        margin: voxels added around the region's bounding box (default two blocks).
        blur_sigma: σ in voxels for ``fill="blur"`` (number or triple); default 2 × patch.
        seed: seed of the random order.
        batch_size: perturbed inputs per forward pass.
        window: sliding-window patch size for large volumes, or None.

    Returns:
        :class:`PerturbationCurve`.
    """
    x = _check_x(x)
    if order not in PERTURBATION_ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of {PERTURBATION_ORDERS}")
    if fill not in PERTURBATION_FILLS:
        raise ValueError(f"unknown fill {fill!r}; choose one of {PERTURBATION_FILLS}")
    if score not in ("probability", "logit"):
        raise ValueError(f"score must be 'probability' or 'logit', got {score!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    patch = _check_triple(patch, "patch")
    target = as_target(target).index
    spatial = tuple(x.shape[2:])
    region = check_region(region, spatial, torch.device("cpu"))
    relevance = torch.as_tensor(_as_numpy(relevance)) if not isinstance(relevance, torch.Tensor) else relevance
    relevance = relevance.detach().cpu()
    if relevance.dim() == 5 and relevance.shape[0] == 1:
        relevance = relevance[0]
    if tuple(relevance.shape) != tuple(x.shape[1:]):
        raise ValueError(f"relevance has shape {tuple(relevance.shape)}, expected (C, D, H, W) = "
                         f"{tuple(x.shape[1:])} like x without the batch axis")
    if not torch.isfinite(relevance).all():
        raise ValueError("relevance contains NaN/Inf values")

    blocks = perturbation_blocks(spatial, region.numpy(), patch, margin)
    channels = x.shape[1]
    patches = [(c, block) for c in range(channels) for block in blocks]
    n = len(patches)
    if order == "random":
        ranking = np.random.default_rng(seed).permutation(n)
    else:
        totals = np.array([float(relevance[(c,) + block].sum()) for c, block in patches])
        ranking = np.argsort(-totals if order == "morf" else totals, kind="stable")
    per_step = int(math.ceil(n / steps))

    original = x.detach().cpu()
    if fill == "blur":
        sigma = tuple(2.0 * p for p in patch) if blur_sigma is None else (
            (float(blur_sigma),) * 3 if isinstance(blur_sigma, (int, float)) else tuple(float(s) for s in blur_sigma))
        if len(sigma) != 3 or min(sigma) <= 0:
            raise ValueError(f"blur_sigma must be a positive number or three, got {blur_sigma!r}")
        replacement = _gaussian_blur(original[0], sigma)[None]
    else:
        replacement = original.mean(dim=(2, 3, 4), keepdim=True).expand_as(original)

    # inputs after 0 .. steps steps, each built from the previous one
    current = original.clone()
    inputs = [current.clone()]
    for step in range(steps):
        for index in ranking[step * per_step:(step + 1) * per_step]:
            c, block = patches[int(index)]
            where = (0, c) + block
            current[where] = replacement[where]
        inputs.append(current.clone())

    logits = _logits_fn(model, device, window, overlap)
    region_np = region
    scores = []
    for first in range(0, len(inputs), batch_size):
        out = logits(torch.cat(inputs[first:first + batch_size]))
        target = _check_class(target, out)
        values = torch.softmax(out.double(), dim=1)[:, target] if score == "probability" else out.double()[:, target]
        scores.extend(float(v) for v in values[:, region_np].mean(1))
    removed = np.minimum(np.arange(steps + 1) * per_step, n) / n
    return PerturbationCurve(scores=np.array(scores), fraction_removed=removed, order=order, score=score,
                             n_patches=n, patches_per_step=per_step, patch=patch, fill=fill)
