"""The faithfulness report of one case (what ``lrpseg evaluate`` computes and writes).

For every region A of a case: its exact explanation (all regions from one traced forward), 3D
region perturbation in three orders (most relevant first, least relevant first, random; AOPC and
the areas between the curves), and the per-sequence ablation of the whole case (Dice drop and
decision margin kept when a sequence is replaced by an uninformative one) compared with A's
relevance shares (Spearman), plus the sequences that get relevance although ablating them changes
nothing (`evaluation.relevance_without_sensitivity`), and the decision shares: exact Shapley values
of the sequences for A's decision margin (`shapley.decision_shapley`, all regions from the same
2^C forward passes) beside the LRP shares, with their rank agreement.

    result = evaluate_case(case, model, package, {"mask": mask}, Target(1))
    result.report["regions"]["mask"]["aopc"]      # {"morf": ..., "lerf": ..., "random": ...}
    write_evaluation(result, "out/evaluation")    # evaluation.json, ablation.csv, ... all-or-nothing

The metrics themselves live in `evaluation`; this module runs them on a `pipeline.Case` and lays
out the report and its files.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import evaluation, pipeline, shapley
from .engine import Target
from .inference import Inferer
from .models.package import ModelPackage
from .outputs import atomic_folder, safe_name, write_json, writing

#: Written last into an evaluation folder; marks a folder that `write_evaluation` may replace.
REPORT = "evaluation.json"


@dataclass
class CaseEvaluation:
    """The faithfulness report of one case.

    Attributes:
        report: JSON-ready dict (written as ``evaluation.json``): case, model, target, composite,
            sequences, ``ablation`` (truth, fill, base/ablated Dice, Dice drops, margins),
            ``perturbation_settings``, ``regions`` (per region: shares, AOPC per order, areas
            between the curves, Spearman(shares, Dice drops), relevance_without_sensitivity,
            ``shapley`` (`shapley.ShapleyResult.as_report`: per sequence the value in margin units
            and the decision share, margin_all, margin_none, the LRP positive shares beside them
            and spearman_lrp_vs_shapley; None where the region holds no voxel predicted as the
            target), the curves) and ``notes`` (e.g. why a requested region is left out).
        ablation: the per-sequence ablation of the case.
        curves: region name → order → its `evaluation.PerturbationCurve`.
        shapley_results: region name → its `shapley.ShapleyResult` (regions with a decision only).
    """

    report: dict[str, Any]
    ablation: evaluation.AblationResult
    curves: dict[str, dict[str, evaluation.PerturbationCurve]] = field(default_factory=dict)
    shapley_results: dict[str, shapley.ShapleyResult] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# The network's own input grid for the ablation and perturbation passes (`evaluation` takes the
# padded input and the window; `inference.Inferer` decides both, as for every other pass).
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _NetworkGrid:
    """The normalized input as the network runs on it.

    Attributes:
        x: (1, C, D', H', W') the input edge-padded by `inference.Inferer.pad`.
        crop: spatial slices of the case grid (D, H, W) inside the padded grid.
        window: sliding-window patch size, or None for one whole-volume pass.
        overlap: the sliding windows' overlap (the package's).
    """

    x: torch.Tensor
    crop: tuple[slice, ...]
    window: tuple[int, int, int] | None
    overlap: float

    @classmethod
    def of(cls, inferer: Inferer, x: torch.Tensor) -> _NetworkGrid:
        padded, crop = inferer.pad(x)
        return cls(padded, crop, inferer.window(padded), inferer.overlap)

    def pad(self, array: np.ndarray) -> np.ndarray:
        """(D, H, W) or (C, D, H, W) on the case grid → the padded grid, zeros outside (dtype kept)."""
        shape = tuple(self.x.shape[2:])
        full = np.zeros(shape if array.ndim == 3 else (array.shape[0],) + shape, dtype=array.dtype)
        full[(Ellipsis,) + self.crop] = array
        return full


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------
def evaluate_case(case: pipeline.Case, model: nn.Module, package: ModelPackage, regions: Mapping[str, np.ndarray],
                  target: Target, *, composite: str | None = None, device: str | None = None, steps: int = 20,
                  patch: Sequence[int] = (4, 4, 4), fill: str = "mean", seed: int = 0,
                  labels: np.ndarray | None = None, notes: Sequence[str] = (),
                  progress: Callable[[str], None] | None = None, decision_shares: bool = True,
                  baseline: str = shapley.DEFAULT_BASELINE) -> CaseEvaluation:
    """The faithfulness report of ``regions`` of one case (see the module docstring).

    Args:
        regions: name → (D, H, W) bool region A on the case grid (non-empty; see `regions.choose_regions`).
        target: the explained class (and logit or contrast).
        composite: LRP composite; default: the package's.
        steps: perturbation steps (each curve has steps + 1 points).
        patch: perturbation block size (D, H, W) in voxels.
        fill: what an ablated sequence is replaced by (`evaluation.FILL_MODES`).
        seed: seed of the random perturbation order.
        labels: (D, H, W) predicted labels when already computed (saves a network pass; the
            ablation's Dice is measured against them when the case has no reference label).
        notes: recorded in the report (e.g. the requested regions that were empty).
        progress: called with a short message before each step.
        decision_shares: compute the exact Shapley values of the sequences (2^C more forward
            passes for all regions together; `shapley.decision_shapley`).
        baseline: what a sequence removed for the Shapley values becomes (`shapley.BASELINES`).
    """
    say = progress or (lambda _message: None)
    x = pipeline.network_input(case, package)
    if labels is None:
        say("segmenting")
        _, labels = pipeline.predict(model, x, package, device)
    inferer = Inferer.for_package(model, package, device)
    grid = _NetworkGrid.of(inferer, x)
    if case.reference_label is not None:
        truth, truth_source = case.reference_label == target.index, "reference label"
    else:
        truth, truth_source = labels == target.index, "the model's own prediction"
    say("sequence ablation")
    ablation = evaluation.sequence_ablation(model, grid.x, grid.pad(truth), target=target.index, fill=fill,
                                            device=device, window=grid.window, overlap=grid.overlap)
    composite = composite or package.composite
    report: dict[str, Any] = {
        "case": case.name, "model": package.name, "target": target.describe(package.class_names),
        "composite": composite, "sequences": case.sequences,
        "ablation": _ablation_report(ablation, case.sequences, truth_source),
        "perturbation_settings": {"patch": list(patch), "steps": steps, "fill": "blur", "score": "probability",
                                  "seed": seed},
        "regions": {}, "notes": list(notes)}
    result = CaseEvaluation(report, ablation)
    if decision_shares:
        decided, skipped = shapley.decided_regions(regions, labels, target)
        report["notes"] += skipped
        if decided:
            say("decision shares (Shapley)")
            result.shapley_results = shapley.decision_shapley(inferer, x, decided, target, sequences=case.sequences,
                                                      baseline=baseline)
    say(f"explaining {', '.join(regions)}")
    with inferer.trace(x, package.lrp_composite(composite)) as forward:  # every region from one forward pass
        explanations = forward.explain(regions, target)
    for name, region in regions.items():
        explanation = explanations[name]
        relevance = explanation.relevance.numpy() if isinstance(explanation.relevance, torch.Tensor) \
            else np.asarray(explanation.relevance)
        curves = {}
        for order in evaluation.PERTURBATION_ORDERS:
            say(f"{name}: {order}")
            curves[order] = evaluation.region_perturbation(
                model, grid.x, grid.pad(region), grid.pad(relevance), target=target.index, patch=tuple(patch),
                steps=steps, device=device, order=order, seed=seed, window=grid.window, overlap=grid.overlap)
        result.curves[name] = curves
        report["regions"][name] = _region_report(explanation, ablation, curves, case.sequences, int(np.sum(region)))
        decision = result.shapley_results.get(name)
        report["regions"][name]["shapley"] = (decision.as_report(explanation.positive_shares.numpy())
                                              if decision is not None else None)
    return result


def _ablation_report(ablation: evaluation.AblationResult, sequences: Sequence[str], truth_source: str
                     ) -> dict[str, Any]:
    return {"truth": truth_source, "fill": ablation.fill, "base_dice": ablation.base_dice,
            "ablated_dice": dict(zip(sequences, ablation.ablated_dice.tolist())),
            "dice_drop": dict(zip(sequences, ablation.drops.tolist())),
            # None where the model calls no voxel the target class (no margin to keep)
            "base_margin": ablation.base_margin if np.isfinite(ablation.base_margin) else None,
            "margin_retained": {sequence: (float(v) if np.isfinite(v) else None) for sequence, v
                                in zip(sequences, ablation.margin_retained)}}


def _region_report(explanation, ablation: evaluation.AblationResult,
                   curves: Mapping[str, evaluation.PerturbationCurve], sequences: Sequence[str], voxels: int
                   ) -> dict[str, Any]:
    """One region's entry of the report (``explanation``: its `engine.RegionExplanation`)."""
    shares = explanation.sequence_shares.numpy()
    positive = explanation.positive_shares.numpy()
    flagged = evaluation.relevance_without_sensitivity(positive, ablation.margin_retained)
    return {"relevance_without_sensitivity": [sequences[c] for c in flagged],
            "voxels": voxels, "voxels_used": explanation.n_used,
            "shares": dict(zip(sequences, shares.tolist())),
            "positive_shares": dict(zip(sequences, positive.tolist())),
            "spearman_shares_vs_dice_drop": evaluation.shares_vs_ablation(shares, ablation.drops),
            "aopc": {o: evaluation.aopc(c) for o, c in curves.items()},
            "area_between_morf_lerf": evaluation.area_between(curves["morf"], curves["lerf"]),
            "area_between_morf_random": evaluation.area_between(curves["morf"], curves["random"]),
            "perturbation": {o: {"fraction_removed": c.fraction_removed.tolist(), "scores": c.scores.tolist(),
                                 "n_patches": c.n_patches, "patches_per_step": c.patches_per_step}
                             for o, c in curves.items()}}


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def write_evaluation(result: CaseEvaluation, folder: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the report's files (see `write_evaluation_files`) to ``folder`` all-or-nothing
    (`outputs.atomic_folder`): an existing folder is refused unless ``overwrite``, and then
    replaced as a whole only when it holds an earlier report (``evaluation.json``)."""
    with atomic_folder(folder, overwrite, markers=(REPORT,)) as temp:
        write_evaluation_files(result, temp)
    return Path(folder)


def write_evaluation_files(result: CaseEvaluation, folder: Path) -> None:
    """Into the (temporary) folder ``folder``: ``ablation.csv`` (per sequence: ablated Dice, Dice
    drop, margin kept, each region's share and, where computed, its decision share (Shapley)), per
    region R ``perturbation_R.csv`` (the three curves) and ``evaluation_R.png``
    (`figures.plot_evaluation`), and ``evaluation.json`` last."""
    from . import figures  # matplotlib only where figures are written

    folder = Path(folder)
    report, ablation = result.report, result.ablation
    sequences = report["sequences"]
    with writing(folder), open(folder / "ablation.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        decided = [n for n, r in report["regions"].items() if r.get("shapley")]
        writer.writerow(["sequence", "ablated_dice", "dice_drop", "margin_retained"]
                        + [f"share_{n}" for n in report["regions"]] + [f"shapley_share_{n}" for n in decided])
        for c, sequence in enumerate(sequences):
            writer.writerow([sequence, ablation.ablated_dice[c], ablation.drops[c], ablation.margin_retained[c]]
                            + [r["shares"][sequence] for r in report["regions"].values()]
                            + [report["regions"][n]["shapley"]["shares"][sequence] for n in decided])
    for name, curves in result.curves.items():
        info = report["regions"][name]
        with writing(folder), open(folder / f"perturbation_{safe_name(name)}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["step", "fraction_removed"] + list(curves))
            for step in range(len(curves["morf"])):
                writer.writerow([step, curves["morf"].fraction_removed[step]] + [curves[o].scores[step] for o in curves])
        with writing(folder):
            figures.plot_evaluation(folder / f"evaluation_{safe_name(name)}.png", curves, sequences,
                                    [info["shares"][s] for s in sequences], ablation.drops,
                                    f"{report['case']}: region {name}, {report['target']}",
                                    info["spearman_shares_vs_dice_drop"])
    write_json(folder / REPORT, report)
