"""Decision shares: exact Shapley values of the input sequences for the decision in region A.

LRP's shares say how the network's computation distributes region A's score over the sequences;
a sequence whose signal later layers cancel still gets relevance (distractor relevance, README
"The proof"). The Shapley value asks the decision itself: how much of region A's decision margin
does each sequence carry, when sequences are removed in every combination?

* Value function v(S): the decision margin (`evaluation.decision_margins`: mean target logit minus
  the largest other logit) averaged over a FIXED set of voxels — region A's voxels predicted as
  the target with every sequence present, decided once from the full input — with every sequence
  outside the coalition S replaced by a constant baseline (`BASELINES`): by default its mean over
  its foreground, the cross-check's fill (`evaluation.fill_level`), so that on the same voxels
  v(all but one) is the margin the cross-check keeps; or its mean over the whole volume, over a reference region
  such as the liver, or 0 after normalization.
* Exact for C ≤ `EXACT_MAX_SEQUENCES`: all 2^C coalitions (64 for six sequences), several
  coalitions per forward pass, through the case's `inference.Inferer` (padding, whole volume or
  sliding windows: the same passes as the prediction). Optionally the Shapley interaction index of
  every pair (a C × C matrix): negative for redundant sequences (either one suffices), positive
  for sequences that only work together.
* For more sequences: permutation sampling (antithetic pairs: each permutation and its reverse)
  with a standard error per sequence.

The axioms, as the tests check them: the values add up to v(all) − v(none) (efficiency; checked
before any number is returned), a sequence that changes nothing gets 0 (null player), and two
interchangeable sequences get equal values (symmetry).

    inferer = Inferer.for_package(model, package, device)
    results = decision_shapley(inferer, x, {"tp": tp}, Target(1), sequences=package.sequences)
    results["tp"].values        # (C,) in margin units; sum = margin_all − margin_none
    results["tp"].shares        # (C,) values / (margin_all − margin_none); sum = 1
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .engine import Target
from .engine.region import as_target
from .evaluation import decision_margins, fill_level, spearman
from .inference import Inferer, network_logits
from .vocabulary import DECISION_MAX_SHARE, DECISION_SHARE_LABEL, DISTRACTOR_MIN_SHARE

__all__ = ["BASELINES", "DEFAULT_BASELINE", "EXACT_MAX_SEQUENCES", "EfficiencyError", "NoDecisionError",
           "ShapleyResult", "baseline_levels", "case_decision_shares", "decided_regions", "decision_report",
           "decision_shapley", "exact_shapley", "relevance_without_decision", "shapley_interactions", "shares_table"]

#: What a removed sequence is replaced by (a constant per sequence, computed on the case grid).
BASELINES = ("foreground_mean", "volume_mean", "region_mean", "zero")
#: The default: the cross-check's fill (`evaluation.sequence_ablation`), an in-distribution level.
DEFAULT_BASELINE = "foreground_mean"
#: Exact enumeration (2^C coalitions) up to this many sequences; permutation sampling above.
EXACT_MAX_SEQUENCES = 8
#: Coalition inputs per forward pass (bounded memory: batch × C × voxels × 4 bytes of input). On
#: the demo case (2-core CPU) 4 per pass ran the 64 inputs in 12.9 s, 8 per pass in 16.4 s.
DEFAULT_BATCH = 4
#: At most this many bytes of coalition inputs go into one whole-volume forward pass.
MAX_BATCH_BYTES = 1 << 30
#: Permutations of the sampling estimate (an even number: antithetic pairs).
DEFAULT_PERMUTATIONS = 128
#: Relative tolerance of the efficiency check (float64 sums of ≤ 2^8 terms are far inside it).
EFFICIENCY_TOLERANCE = 1e-9

Progress = Callable[[int, int], None]


class NoDecisionError(ValueError):
    """Region A has no decision to share: no voxel predicted as the target, or a margin that does
    not change when every sequence is removed."""


class EfficiencyError(ArithmeticError):
    """The values do not add up to v(all) − v(none): no number is returned (a bug, not bad input)."""


@dataclass
class ShapleyResult:
    """The Shapley values of the C sequences for one region A.

    Attributes:
        sequences: the C sequence names.
        values: (C,) float64, in margin units (logit differences); sum = margin_all − margin_none.
        margin_all: v(all): the decision margin with every sequence.
        margin_none: v(none): the margin with every sequence replaced by its baseline.
        voxels: how many voxels the margins average over (region A ∩ predicted target, fixed).
        method: "exact" (all 2^C coalitions) or "sampling".
        baseline: the `BASELINES` entry used.
        standard_error: (C,) of the sampling estimate; None for exact values.
        interactions: (C, C) Shapley interaction index of each pair (diagonal 0), or None.
        permutations: permutations sampled (0 for exact values).
        forward_passes: network inputs evaluated (shared by every region of one call).
        coalition_margins: exact only: (2^C,) v(S) of every coalition, S as a bit mask (bit c set =
            sequence c present): ``[-1]`` is v(all), ``[2^C - 1 - 2^c]`` the margin without c alone
            (the cross-check's kept margin, with the default baseline).
    """

    sequences: list[str]
    values: np.ndarray
    margin_all: float
    margin_none: float
    voxels: int
    method: str
    baseline: str
    standard_error: np.ndarray | None = None
    interactions: np.ndarray | None = None
    permutations: int = 0
    forward_passes: int = 0
    coalition_margins: np.ndarray | None = None

    @property
    def shares(self) -> np.ndarray:
        """(C,) ``values / (margin_all − margin_none)``: the decision shares, summing to 1 (a
        negative share: that sequence pulls the margin down)."""
        return self.values / (self.margin_all - self.margin_none)

    def as_report(self, lrp_positive_shares: Sequence[float] | None = None) -> dict[str, Any]:
        """JSON-ready: values and shares by sequence, both margins, and (given LRP's positive shares)
        those beside them and their Spearman rank agreement."""
        report: dict[str, Any] = {
            "values": dict(zip(self.sequences, self.values.tolist())),
            "shares": dict(zip(self.sequences, self.shares.tolist())),
            "margin_all": self.margin_all, "margin_none": self.margin_none, "voxels": self.voxels,
            "method": self.method, "baseline": self.baseline}
        if self.standard_error is not None:
            report["standard_error"] = dict(zip(self.sequences, self.standard_error.tolist()))
            report["permutations"] = self.permutations
        if lrp_positive_shares is not None:
            lrp = np.asarray(lrp_positive_shares, dtype=np.float64)
            report["lrp_positive_shares"] = dict(zip(self.sequences, lrp.tolist()))
            report["spearman_lrp_vs_shapley"] = spearman(lrp, self.shares)
        if self.interactions is not None:
            report["interactions"] = {a: dict(zip(self.sequences, row.tolist()))
                                      for a, row in zip(self.sequences, self.interactions)}
        return report


# --------------------------------------------------------------------------------------------
# The game: coalition values from the network
# --------------------------------------------------------------------------------------------
def baseline_levels(x: torch.Tensor, baseline: str = DEFAULT_BASELINE,
                    reference_region: np.ndarray | None = None) -> torch.Tensor:
    """(C,) float64: the constant each sequence is replaced by when it is removed.

    Args:
        x: (1, C, D, H, W) normalized input on the case grid.
        baseline: "foreground_mean" (its mean above its Otsu threshold: the cross-check's fill,
            `evaluation.fill_level`; ≈ 0 after a foreground z-score), "volume_mean" (its mean over
            the whole volume, mostly air in an abdominal MRI: an out-of-distribution level inside
            the body), "region_mean" (its mean over ``reference_region``, e.g. the liver) or "zero"
            (0 after normalization).
        reference_region: (D, H, W) bool, for "region_mean".
    """
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    channels = x.shape[1]
    if baseline == "zero":
        return torch.zeros(channels, dtype=torch.float64)
    if baseline == "volume_mean":
        return x[0].detach().double().flatten(1).mean(1).cpu()
    if baseline == "foreground_mean":
        return torch.tensor([fill_level(x, c) for c in range(channels)], dtype=torch.float64)
    if reference_region is None:
        raise ValueError("baseline 'region_mean' needs a reference region (e.g. the liver mask)")
    region = torch.as_tensor(np.asarray(reference_region, dtype=bool))
    if tuple(region.shape) != tuple(x.shape[2:]):
        raise ValueError(f"the reference region has shape {tuple(region.shape)}, the volume {tuple(x.shape[2:])}")
    if not region.any():
        raise ValueError("the reference region is empty: paint it, or use the baseline 'volume_mean'")
    return x[0].detach().double()[:, region.to(x.device)].mean(1).cpu()


def decided_regions(regions: Mapping[str, np.ndarray], labels: np.ndarray, target: int | Target
                    ) -> tuple[dict[str, np.ndarray], list[str]]:
    """The regions that hold voxels predicted as the target (their decision has a margin), and a
    note for each one that does not (e.g. a false-negative region, where no voxel is decided for
    the target)."""
    index = as_target(target).index
    kept, notes = {}, []
    for name, region in regions.items():
        if np.any(np.asarray(region, dtype=bool) & (np.asarray(labels) == index)):
            kept[name] = region
        else:
            notes.append(f"region '{name}' holds no voxel predicted as the target: no decision margin to share")
    return kept, notes


class _Game:
    """v(S) for every region at once: coalition inputs (bit c of a mask set = sequence c present)
    evaluated in batches on the network's padded grid; only the margins are kept."""

    def __init__(self, inferer: Inferer, x: torch.Tensor, regions: Mapping[str, np.ndarray], target: Target,
                 levels: torch.Tensor, batch_size: int, progress: Progress | None) -> None:
        self.inferer, self.target, self.progress = inferer, target, progress
        self.padded, self.crop = inferer.pad(x)
        self.window = inferer.window(self.padded)
        # Sliding windows run one input at a time anyway; whole-volume batches stay under the budget.
        item_bytes = self.padded[0].numel() * self.padded.element_size()
        self.batch_size = 1 if self.window is not None else max(1, min(batch_size, MAX_BATCH_BYTES // item_bytes))
        self.levels = levels.to(self.padded.dtype)
        self.channels = x.shape[1]
        self.full = (1 << self.channels) - 1
        self.values: dict[int, np.ndarray] = {}  # mask → (regions,) margins
        self.passes = 0
        # The fixed voxels: region A ∩ predicted target with every sequence (decided once, here).
        logits = self._logits([self.full])
        predicted = (logits[0].argmax(0) == target.index).numpy()
        self.voxels = {}
        for name, region in regions.items():
            padded_region = inferer.pad_mask(region, self.padded, self.crop)
            self.voxels[name] = padded_region & predicted
            if not self.voxels[name].any():
                raise NoDecisionError(f"region '{name}' holds no voxel predicted as the target, so its decision "
                                      "has no margin to share; choose a region the model calls the target")
        self.names = list(regions)
        self._store([self.full], logits)

    def _logits(self, masks: Sequence[int]) -> torch.Tensor:
        batch = self.padded.repeat(len(masks), 1, 1, 1, 1)
        for item, mask in enumerate(masks):
            for c in range(self.channels):
                if not mask >> c & 1:
                    batch[item, c] = self.levels[c]
        self.passes += len(masks)
        return network_logits(self.inferer.model, batch, self.window, self.inferer.overlap, self.inferer.device)

    def _store(self, masks: Sequence[int], logits: torch.Tensor) -> None:
        margins = np.stack([decision_margins(logits, self.target.index, self.voxels[n]) for n in self.names], 1)
        for mask, row in zip(masks, margins):
            self.values[mask] = row

    def evaluate(self, masks: Sequence[int], total: int | None = None) -> None:
        """Compute v for every mask not known yet (``total``: for progress, the passes planned)."""
        pending = list(dict.fromkeys(m for m in masks if m not in self.values))
        for first in range(0, len(pending), self.batch_size):
            chunk = pending[first:first + self.batch_size]
            self._store(chunk, self._logits(chunk))
            if self.progress is not None:
                self.progress(self.passes, max(total or 0, self.passes))

    def table(self, region: int) -> np.ndarray:
        """(2^C,) float64 v(mask) of one region (every mask must be known)."""
        return np.array([self.values[m][region] for m in range(self.full + 1)])


# --------------------------------------------------------------------------------------------
# Shapley values of a known game
# --------------------------------------------------------------------------------------------
def exact_shapley(v: np.ndarray) -> np.ndarray:
    """The Shapley values (C,) of a game given by v (2^C,), v[mask] with bit c = player c present:
    φ_i = Σ_{S ∌ i} |S|! (C − |S| − 1)! / C! · (v(S ∪ {i}) − v(S))."""
    v = np.asarray(v, dtype=np.float64)
    n = _players(v)
    sizes = np.array([bin(m).count("1") for m in range(v.size)])
    weight = np.array([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)])
    phi = np.zeros(n)
    for i in range(n):
        without = np.array([m for m in range(v.size) if not m >> i & 1])
        phi[i] = float(np.sum(weight[sizes[without]] * (v[without | (1 << i)] - v[without])))
    return phi


def shapley_interactions(v: np.ndarray) -> np.ndarray:
    """The Shapley interaction index (Grabisch 1997) of every pair, (C, C) symmetric, diagonal 0:
    I_ij = Σ_{S ⊆ N∖{i,j}} |S|! (C − |S| − 2)! / (C − 1)! · (v(S∪ij) − v(S∪i) − v(S∪j) + v(S)).
    Negative: i and j are redundant (either suffices); positive: they only work together."""
    v = np.asarray(v, dtype=np.float64)
    n = _players(v)
    matrix = np.zeros((n, n))
    if n < 2:
        return matrix
    sizes = np.array([bin(m).count("1") for m in range(v.size)])
    weight = np.array([math.factorial(s) * math.factorial(n - s - 2) / math.factorial(n - 1) for s in range(n - 1)])
    for i in range(n):
        for j in range(i + 1, n):
            pair = (1 << i) | (1 << j)
            rest = np.array([m for m in range(v.size) if not m & pair])
            delta = v[rest | pair] - v[rest | (1 << i)] - v[rest | (1 << j)] + v[rest]
            matrix[i, j] = matrix[j, i] = float(np.sum(weight[sizes[rest]] * delta))
    return matrix


def _players(v: np.ndarray) -> int:
    n = int(round(math.log2(v.size))) if v.size else -1
    if v.ndim != 1 or n < 1 or 1 << n != v.size:
        raise ValueError(f"a game needs 2^C values (C ≥ 1), got {v.size}")
    if not np.all(np.isfinite(v)):
        raise ValueError("the game's values contain NaN/Inf")
    return n


def _check_efficiency(values: np.ndarray, v_all: float, v_none: float, scale: float) -> None:
    gap = abs(float(np.sum(values)) - (v_all - v_none))
    if not gap <= EFFICIENCY_TOLERANCE * max(1.0, scale):
        raise EfficiencyError(f"the Shapley values sum to {np.sum(values)!r}, not v(all) − v(none) = "
                              f"{v_all - v_none!r} (gap {gap:.3g}); refusing to report them")


# --------------------------------------------------------------------------------------------
# The public entry point
# --------------------------------------------------------------------------------------------
def decision_shapley(inferer: Inferer, x: torch.Tensor, regions: Mapping[str, np.ndarray], target: int | Target,
                     *, sequences: Sequence[str] | None = None, baseline: str = DEFAULT_BASELINE,
                     reference_region: np.ndarray | None = None, interactions: bool = False,
                     method: str = "auto", permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0,
                     batch_size: int = DEFAULT_BATCH, progress: Progress | None = None) -> dict[str, ShapleyResult]:
    """The Shapley values of the C input sequences for the decision in each region A.

    Every region shares the same forward passes (each coalition input runs once; the margins of all
    regions are read from its logits). The margins are averaged over each region's voxels that the
    model predicts as the target WITH ALL SEQUENCES: a fixed set, decided once from the full input,
    so v(S) of a reduced input is measured on the same voxels.

    Cost: exact, 2^C network inputs (64 for six sequences), ``batch_size`` per pass; sampling, at
    most ``permutations`` · (C − 1) + 2 inputs (coalitions met twice run once).

    Args:
        inferer: the case's `inference.Inferer` (model, patch size, device).
        x: (1, C, D, H, W) normalized input on the case grid.
        regions: name → (D, H, W) bool region A on the case grid.
        target: class index or `engine.Target` (the margin is the class's logit minus the largest
            other logit, also for a class-vs-rest target).
        sequences: the C names (default "0", "1", ...).
        baseline: what a removed sequence becomes (`BASELINES`, see `baseline_levels`).
        reference_region: (D, H, W) bool, for ``baseline="region_mean"``.
        interactions: also the C × C pairwise interaction index (exact only).
        method: "auto" (exact up to `EXACT_MAX_SEQUENCES` sequences), "exact" or "sampling".
        permutations: sampled permutations (even: antithetic pairs), for sampling.
        seed: seed of the sampled permutations.
        batch_size: coalition inputs per forward pass (whole-volume passes; fewer when their inputs
            would exceed `MAX_BATCH_BYTES`; sliding windows take one input at a time).
        progress: ``progress(inputs done, inputs planned)`` after each pass.

    Returns:
        region name → `ShapleyResult`.

    Raises:
        ValueError: bad arguments; `NoDecisionError` (a ValueError): a region without voxels
            predicted as the target, or a margin that does not change when every sequence is removed.
        EfficiencyError: the values do not add up (never expected; nothing is returned).
    """
    target = as_target(target)
    if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.shape[0] != 1:
        raise ValueError("x must be a (1, C, D, H, W) tensor (one case)")
    channels = x.shape[1]
    names = [str(s) for s in sequences] if sequences is not None else [str(c) for c in range(channels)]
    if len(names) != channels:
        raise ValueError(f"got {len(names)} sequence names for {channels} input sequences")
    if not regions:
        raise ValueError("no region to compute Shapley values for")
    if method not in ("auto", "exact", "sampling"):
        raise ValueError(f"method must be 'auto', 'exact' or 'sampling', got {method!r}")
    if method == "auto":
        method = "exact" if channels <= EXACT_MAX_SEQUENCES else "sampling"
    if method == "exact" and channels > 16:
        raise ValueError(f"exact Shapley values of {channels} sequences need 2^{channels} passes; use sampling")
    if interactions and method != "exact":
        raise ValueError("pairwise interactions need exact enumeration (at most "
                         f"{EXACT_MAX_SEQUENCES} sequences or method='exact')")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if method == "sampling" and (isinstance(permutations, bool) or not isinstance(permutations, int)
                                 or permutations < 4 or permutations % 2):
        raise ValueError(f"permutations must be an even integer ≥ 4 (antithetic pairs), got {permutations!r}")
    for name, region in regions.items():
        if np.asarray(region).shape != tuple(x.shape[2:]):
            raise ValueError(f"region '{name}' has shape {np.asarray(region).shape}, the volume {tuple(x.shape[2:])}")

    levels = baseline_levels(x, baseline, reference_region)
    planned = 1 << channels if method == "exact" else permutations * (channels - 1) + 2
    game = _Game(inferer, x, regions, target, levels, batch_size, progress)
    game.evaluate([0], planned)
    if method == "exact":
        game.evaluate(range(1 << channels), planned)
        estimates = {k: (exact_shapley(game.table(k)), None) for k in range(len(game.names))}
    else:
        estimates = _sampled(game, channels, permutations, seed, planned)
    results = {}
    for k, name in enumerate(game.names):
        v_all, v_none = float(game.values[game.full][k]), float(game.values[0][k])
        values, error = estimates[k]
        scale = float(max(abs(m[k]) for m in game.values.values()))
        if not abs(v_all - v_none) > EFFICIENCY_TOLERANCE * max(1.0, scale):
            raise NoDecisionError(f"region '{name}': the decision margin is the same with every sequence removed "
                             f"({v_all:.4g}): there is no decision for the sequences to share")
        _check_efficiency(values, v_all, v_none, scale)
        results[name] = ShapleyResult(
            names, values, v_all, v_none, int(game.voxels[name].sum()), method, baseline, error,
            shapley_interactions(game.table(k)) if interactions else None,
            permutations if method == "sampling" else 0, game.passes,
            game.table(k) if method == "exact" else None)
    return results


def _sampled(game: _Game, channels: int, permutations: int, seed: int, planned: int
             ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Antithetic permutation sampling: each permutation's marginal contributions (which sum to
    v(all) − v(none) exactly), averaged per pair with its reverse; standard error over the pairs."""
    rng = np.random.default_rng(seed)
    orders = []
    for _ in range(permutations // 2):
        order = rng.permutation(channels)
        orders += [order, order[::-1]]
    prefixes = [[int(sum(1 << int(c) for c in order[:k])) for k in range(channels + 1)] for order in orders]
    game.evaluate([m for chain in prefixes for m in chain], planned)
    estimates = {}
    for k in range(len(game.names)):
        contributions = np.zeros((len(orders), channels))
        for row, (order, chain) in enumerate(zip(orders, prefixes)):
            margins = np.array([game.values[m][k] for m in chain])
            contributions[row, order] = np.diff(margins)
        pairs = contributions.reshape(-1, 2, channels).mean(1)
        estimates[k] = (pairs.mean(0), pairs.std(0, ddof=1) / math.sqrt(pairs.shape[0]))
    return estimates


# --------------------------------------------------------------------------------------------
# For the front ends
# --------------------------------------------------------------------------------------------
def case_decision_shares(result: Any, model: torch.nn.Module, package: Any, device: str | None = None,
                         baseline: str = DEFAULT_BASELINE, progress: Progress | None = None
                         ) -> tuple[dict[str, ShapleyResult], list[str]]:
    """The decision shares of every explained region of a `pipeline.CaseResult` (one set of 2^C
    forward passes for all of them), and a note for each region without a decision (no voxel
    predicted as the target, e.g. false negatives)."""
    from . import pipeline

    decided, notes = decided_regions(result.regions, result.labels, result.target)
    if not decided:
        return {}, notes
    x = pipeline.network_input(result.case, package)
    inferer = Inferer.for_package(model, package, device)
    return decision_shapley(inferer, x, decided, result.target, sequences=result.case.sequences, baseline=baseline,
                            progress=progress), notes


def relevance_without_decision(positive_shares: Sequence[float], decision_shares: Sequence[float],
                               min_share: float = DISTRACTOR_MIN_SHARE, max_decision: float = DECISION_MAX_SHARE
                               ) -> list[int]:
    """Sequences with at least ``min_share`` of region A's positive LRP relevance but at most
    ``max_decision`` of its decision (Shapley share; ≈ 0 or negative): distractor relevance. Unlike
    the one-at-a-time cross-check (`evaluation.relevance_without_sensitivity`) this also sees a
    sequence that looks unused alone only because another one carries the same information."""
    lrp, decision = np.asarray(positive_shares, dtype=np.float64), np.asarray(decision_shares, dtype=np.float64)
    if lrp.shape != decision.shape:
        raise ValueError(f"got {lrp.size} LRP shares but {decision.size} decision shares; one per sequence each")
    return [c for c in range(lrp.size) if lrp[c] >= min_share and decision[c] <= max_decision]


def shares_table(sequences: Sequence[str], shares: Sequence[float], positive_shares: Sequence[float],
                 decision: ShapleyResult | None) -> list[str]:
    """Text lines: one row per sequence with its LRP share (signed and positive part) and, when
    computed, its decision share (Shapley) and Shapley value in margin units."""
    header = f"  {'sequence':<12}{'LRP share':>11}{'LRP positive':>14}"
    if decision is not None:
        header += f"{DECISION_SHARE_LABEL:>27}{'value (margin)':>16}"
    lines = [header]
    for c, name in enumerate(sequences):
        line = f"  {name:<12}{100 * shares[c]:>10.1f}%{100 * positive_shares[c]:>13.1f}%"
        if decision is not None:
            line += f"{100 * decision.shares[c]:>26.1f}%{decision.values[c]:>16.3f}"
        lines.append(line)
    if decision is not None:
        lines.append(f"  decision margin {decision.margin_all:.3f} with every sequence, {decision.margin_none:.3f} "
                     f"with none ({decision.baseline}); {decision.voxels} voxels predicted as the target; "
                     f"Spearman(LRP positive, Shapley) {spearman(positive_shares, decision.shares):.2f}")
    return lines


def decision_report(decisions: Mapping[str, ShapleyResult], explanations: Mapping[str, Any]) -> dict[str, Any]:
    """region → `ShapleyResult.as_report` beside that region's LRP positive shares
    (``explanations``: region → `engine.RegionExplanation`), JSON-ready (``shapley.json``)."""
    return {name: decision.as_report(np.asarray(explanations[name].positive_shares, dtype=np.float64))
            for name, decision in decisions.items()}
