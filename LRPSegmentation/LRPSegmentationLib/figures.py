"""The seed's figures (matplotlib, PNG): the per-sequence relevance distribution bar chart, for
one case or a cohort (one colour per patient, grouped by sequence; with the decision shares
(Shapley) in a second panel), pixel-level relevance
panels of each sequence over a region (true positive, false negative, ...), and the faithfulness
figure of ``lrpseg evaluate`` (perturbation curves beside shares vs ablation).

Relevance is shown with a diverging blue–white–red map, symmetric around zero and shared by all
sequences of a figure, so the sequences compare.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never opens a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PathLike = str | os.PathLike
RELEVANCE_CMAP = "bwr"


def plot_sequence_shares(shares: Mapping[str, Sequence[float]], sequence_names: Sequence[str], path: PathLike,
                         title: str = "Normalized relevance per MRI sequence",
                         ylabel: str = "share of region relevance",
                         decision_shares: Mapping[str, Sequence[float]] | None = None) -> Path:
    """Grouped bar chart: x = sequences, one bar (colour) per case.

    Args:
        shares: case name → C shares (in ``sequence_names`` order). One case gives a plain bar chart.
        sequence_names: the C sequence names.
        decision_shares: case name → C decision shares (Shapley): drawn in a second panel below,
            each case in the same colour (cases without them are left out of that panel).
    """
    cases = list(shares)
    values = _share_matrix(shares, cases, sequence_names)
    decision_cases = [c for c in cases if decision_shares and c in decision_shares]
    n_cases, n_seq = values.shape
    rows = 2 if decision_cases else 1
    width = min(13.0, max(6.0, 1.1 * n_seq + 0.06 * n_cases * n_seq))
    fig, axes = plt.subplots(rows, 1, figsize=(width, 4.2 * rows), dpi=120, squeeze=False)
    colours = plt.get_cmap("tab20" if n_cases > 10 else "tab10")
    colour_of = {case: colours(i % colours.N) for i, case in enumerate(cases)}
    _share_bars(axes[0, 0], values, cases, colour_of, sequence_names, ylabel, title)
    if decision_cases:
        _share_bars(axes[1, 0], _share_matrix(decision_shares, decision_cases, sequence_names), decision_cases,
                    colour_of, sequence_names, "share of the decision (Shapley)",
                    "Decision share per sequence (exact Shapley values of the decision margin)")
    fig.tight_layout()
    return _save(fig, path)


def _share_matrix(shares: Mapping[str, Sequence[float]], cases: Sequence[str], sequence_names: Sequence[str]
                  ) -> np.ndarray:
    values = np.array([np.asarray(shares[c], dtype=float) for c in cases])  # (cases, C)
    if values.ndim != 2 or values.shape[1] != len(sequence_names):
        raise ValueError(f"each case needs {len(sequence_names)} shares, got shape {values.shape}")
    return values


def _share_bars(ax, values: np.ndarray, cases: Sequence[str], colour_of: Mapping[str, Any],
                sequence_names: Sequence[str], ylabel: str, title: str) -> None:
    """One panel of `plot_sequence_shares`: a bar per case and sequence, the mean over cases."""
    n_cases, n_seq = values.shape
    width = 0.8 / n_cases
    x = np.arange(n_seq)
    for i, case in enumerate(cases):
        ax.bar(x - 0.4 + width * (i + 0.5), values[i], width, label=case, color=colour_of[case],
               edgecolor="white", linewidth=0.3)
    if n_cases > 1:
        ax.plot(x, values.mean(0), "k_", markersize=22, markeredgewidth=2, label="mean")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, sequence_names)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.grid(axis="y", alpha=0.3)
    if n_cases > 1:
        ax.legend(fontsize=7, ncol=min(n_cases + 1, 6), loc="upper center", bbox_to_anchor=(0.5, -0.1),
                  frameon=False)


def plot_relevance_panels(images: np.ndarray, relevance: np.ndarray, region: np.ndarray,
                          sequence_names: Sequence[str], path: PathLike, title: str = "",
                          slice_index: int | None = None, spacing: Sequence[float] | None = None) -> Path:
    """Two rows of panels on one axial slice: each sequence's image, and its relevance map with the
    region's outline.

    Args:
        images: (C, D, H, W) input images (any intensity units).
        relevance: (C, D, H, W) relevance (M_A).
        region: (D, H, W) bool, the explained region.
        slice_index: axial slice; default: the slice with the most region voxels.
        spacing: (z, y, x) mm, for a correct aspect ratio.
    """
    images, relevance, region = np.asarray(images), np.asarray(relevance), np.asarray(region, dtype=bool)
    if images.shape != relevance.shape or images.shape[1:] != region.shape:
        raise ValueError(f"images {images.shape}, relevance {relevance.shape} and region {region.shape} "
                         "must share the grid")
    if slice_index is None:
        slice_index = int(region.reshape(region.shape[0], -1).sum(1).argmax())
    n_seq = images.shape[0]
    limit = float(np.abs(relevance[:, slice_index]).max()) or 1.0
    aspect = 1.0 if spacing is None else spacing[1] / spacing[2]
    fig, axes = plt.subplots(2, n_seq + 1, figsize=(2.3 * n_seq + 0.8, 5.0), dpi=120, squeeze=False,
                             gridspec_kw={"width_ratios": [1.0] * n_seq + [0.07]})
    axes[0, -1].axis("off")
    for c in range(n_seq):
        image = images[c, slice_index]
        lo, hi = np.percentile(image, [1, 99])
        axes[0, c].imshow(image, cmap="gray", vmin=lo, vmax=hi, aspect=aspect)
        axes[0, c].set_title(sequence_names[c], fontsize=9)
        shown = axes[1, c].imshow(relevance[c, slice_index], cmap=RELEVANCE_CMAP, vmin=-limit, vmax=limit,
                                  aspect=aspect)
        if region[slice_index].any():
            for row in (0, 1):
                axes[row, c].contour(region[slice_index], levels=[0.5], colors="lime", linewidths=0.7)
        for row in (0, 1):
            axes[row, c].set_xticks([])
            axes[row, c].set_yticks([])
    axes[0, 0].set_ylabel("image", fontsize=9)
    axes[1, 0].set_ylabel("relevance", fontsize=9)
    bar = fig.colorbar(shown, cax=axes[1, -1])
    bar.set_label("relevance (per region voxel)", fontsize=8)
    fig.suptitle(f"{title}  (axial slice {slice_index})".strip(), fontsize=10)
    return _save(fig, path)


def plot_evaluation(path: PathLike, curves: Mapping[str, Any], sequence_names: Sequence[str], shares, drops,
                    title: str, rho: float | None) -> Path:
    """Faithfulness of one region's explanation: left, the region-perturbation curves (MoRF, LeRF,
    random); right, each sequence's relevance share beside the Dice drop when it is ablated.

    Args:
        curves: order ("morf", "lerf", "random") → `evaluation.PerturbationCurve`.
        shares: (C,) relevance shares; drops: (C,) Dice drops, both in ``sequence_names`` order.
        rho: Spearman correlation of shares and drops, shown in the panel title (None: not shown).
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    styles = {"morf": ("tab:red", "MoRF"), "lerf": ("tab:blue", "LeRF"), "random": ("gray", "random")}
    for order, curve in curves.items():
        colour, label = styles[order]
        left.plot(curve.fraction_removed, curve.scores, "-o", color=colour, markersize=3, label=label)
    left.set_xlabel("fraction of (sequence, block) patches removed")
    left.set_ylabel(f"mean target {next(iter(curves.values())).score} in the region")
    left.set_title("region perturbation")
    left.grid(alpha=0.3)
    left.legend()
    x = np.arange(len(sequence_names))
    right.bar(x - 0.2, shares, 0.4, color="tab:purple", label="relevance share")
    right.set_ylabel("relevance share")
    right.set_xticks(x, sequence_names, rotation=30)
    twin = right.twinx()
    twin.bar(x + 0.2, drops, 0.4, color="tab:orange", label="Dice drop when ablated")
    twin.set_ylabel("Dice drop when the sequence is ablated")
    low, high = min(0.0, float(np.min(drops))), max(float(np.max(drops)), 0.0)
    twin.set_ylim(low * 1.1 if low < 0 else 0.0, high * 1.1 if high > 0 else 0.05)
    right.set_ylim(bottom=min(0.0, float(np.min(shares)) * 1.1))
    handles = right.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    right.legend(handles, [h.get_label() for h in handles], fontsize=8)
    right.set_title("sequence ablation" + (f" (Spearman ρ = {rho:.2f})" if rho is not None else ""))
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
