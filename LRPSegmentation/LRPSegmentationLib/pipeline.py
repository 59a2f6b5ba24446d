"""One case through the whole data flow, shared by the CLI, the demo and the Slicer module:

    sequences → one grid (the model's reference sequence) → normalized network input
      → prediction (whole volume or Gaussian-blended sliding windows)
      → region A (a mask, the predicted class, TP/FN/FP against a reference label, or each lesion)
      → explanation (exact M_A, shares) and the sequence-composition map
      → outputs on the reference grid (NRRD, CSV/JSON, PNG figures)

Every step is a plain function over arrays and a `ModelPackage`; nothing here knows about files
except `load_case` and `write_case_outputs`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from . import outputs
from .engine import (DEFAULT_TOLERANCE, RegionExplanation, Target, explain_region, region_shares, sequence_composition,
                     sliding_explain_region, sliding_sequence_composition, sliding_window_logits)
from .imaging import Geometry, find_case_files, normalize_sequences, read_image, read_sequences, resample_to_reference
from .models.package import ModelPackage

PathLike = str | os.PathLike
Progress = Callable[[str], None]

#: How region A can be chosen.
REGION_MODES = ("predicted", "tp", "fn", "fp", "lesions", "mask")


@dataclass
class Case:
    """A patient's sequences on one grid.

    Attributes:
        name: case identifier (used in file names and cohort tables).
        images: (C, D, H, W) float32 raw intensities on the reference grid, in the model's order.
        geometry: the reference grid.
        sequences: C sequence names.
        reference_label: optional (D, H, W) uint8 ground truth on the same grid (for TP/FN/FP).
    """

    name: str
    images: np.ndarray
    geometry: Geometry
    sequences: list[str]
    reference_label: np.ndarray | None = None


def load_case(sources: Mapping[str, PathLike | sitk.Image] | PathLike, package: ModelPackage,
              reference_label: PathLike | sitk.Image | None = None, name: str | None = None) -> Case:
    """Read a case: a mapping sequence name → file/DICOM folder/image, or a case folder holding one
    file per sequence (matched by name, see `imaging.find_case_files`).

    Every sequence is resampled onto the package's reference sequence's grid; a reference label is
    resampled with nearest-neighbour interpolation.

    Raises:
        ValueError: sequences that do not match the package (names say which), unreadable images,
            sequences that do not overlap the reference.
    """
    if isinstance(sources, (str, os.PathLike)):
        folder = Path(sources)
        if not folder.is_dir():
            raise FileNotFoundError(f"case folder {folder} does not exist")
        sources = find_case_files(folder, package.sequences)
        name = name or folder.name
    package.check_inputs(list(sources))
    ordered = {s: sources[s] for s in package.sequences}
    images, geometry = read_sequences(ordered, package.reference_sequence)
    label = None
    if reference_label is not None:
        image = reference_label if isinstance(reference_label, sitk.Image) else read_image(reference_label)
        label = sitk.GetArrayFromImage(resample_to_reference(image, geometry, interpolation="nearest",
                                                             name="reference label")).astype(np.uint8)
    return Case(name or "case", images, geometry, list(package.sequences), label)


def network_input(case: Case, package: ModelPackage) -> torch.Tensor:
    """The normalized (1, C, D, H, W) float32 input, exactly as the model was trained."""
    normalized = normalize_sequences(case.images, package.normalization, names=case.sequences)
    return torch.from_numpy(normalized)[None]


def _fits_one_patch(shape, patch) -> bool:
    return all(s <= p for s, p in zip(shape, patch))


def pad_for_model(x: torch.Tensor, package: ModelPackage) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Edge-pad (1, C, D, H, W) so the network can run on it: axes shorter than the patch are
    padded to the patch size (sliding windows need a full patch), and a volume that fits one patch
    is padded to a multiple of the network's size divisor (e.g. 2**depth). Returns the padded input
    and the spatial slices that crop outputs back to the original grid."""
    shape = tuple(x.shape[2:])
    divisor = package.size_divisor or 1
    if _fits_one_patch(shape, package.patch_size):
        target = tuple(-(-n // divisor) * divisor for n in shape)
    else:
        target = tuple(max(n, p) for n, p in zip(shape, package.patch_size))
    crop = tuple(slice(0, n) for n in shape)
    if target == shape:
        return x, crop
    pad = []
    for n, t in reversed(list(zip(shape, target))):
        pad += [0, t - n]
    return torch.nn.functional.pad(x, pad, mode="replicate"), crop


def _uses_sliding(x: torch.Tensor, package: ModelPackage) -> bool:
    """Whole-volume inference when the (padded) volume fits one patch; sliding windows otherwise."""
    return not _fits_one_patch(x.shape[2:], package.patch_size)


def predict(model: nn.Module, x: torch.Tensor, package: ModelPackage, device: str | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Logits (K, D, H, W) float32 and labels (D, H, W) uint8 (argmax) on x's grid."""
    padded, crop = pad_for_model(x, package)
    if _uses_sliding(padded, package):
        logits = sliding_window_logits(model, padded, package.patch_size, package.overlap, device=device)
    else:
        from .engine import resolve_device
        dev = resolve_device(device)
        original = next(model.parameters()).device
        try:
            with torch.no_grad():
                logits = model.to(dev)(padded.to(dev))
                logits = (logits[0] if isinstance(logits, (tuple, list)) else logits).cpu()
        finally:
            model.to(original)
    logits = logits[(0, slice(None)) + crop].float().numpy()
    return logits, logits.argmax(0).astype(np.uint8)


def explain_input(model: nn.Module, x: torch.Tensor, package: ModelPackage, region: np.ndarray,
                  target: Target, composite: str | None = None, device: str | None = None,
                  tolerance: float = DEFAULT_TOLERANCE) -> RegionExplanation:
    """Exact region explanation of a normalized input (1, C, D, H, W) on its own grid, padded for
    the network and cropped back (whole volume or sliding windows, as `predict` does).

    Relevance that falls on padding is cropped away; its share of the total is reported as
    ``diagnostics["relevance_in_padding"]`` and the shares are those of the cropped map.
    """
    padded, crop = pad_for_model(x, package)
    lrp_composite = package.lrp_composite(composite)  # with the package's box bounds
    full_region = np.zeros(padded.shape[2:], dtype=bool)
    full_region[crop] = np.asarray(region, dtype=bool)
    if _uses_sliding(padded, package):
        result = sliding_explain_region(model, padded, full_region, target, lrp_composite,
                                        patch_size=package.patch_size, overlap=package.overlap, device=device,
                                        tolerance=tolerance)
    else:
        result = explain_region(model, padded, full_region, target, lrp_composite, device=device,
                                tolerance=tolerance)
    if padded.shape == x.shape:
        return result
    relevance = result.relevance[(slice(None),) + crop].contiguous()
    total, kept = result.relevance.sum(), relevance.sum()
    positive = relevance.clamp(min=0).flatten(1).sum(1)
    result.diagnostics["relevance_in_padding"] = float((total - kept) / total) if total != 0 else 0.0
    result.relevance = relevance
    result.sequence_shares = relevance.flatten(1).sum(1) / kept if kept != 0 else torch.zeros_like(positive)
    result.positive_shares = positive / positive.sum() if positive.sum() > 0 else positive
    result.excluded = result.excluded[crop]
    return result


def ablation_input(model: nn.Module, x: torch.Tensor, package: ModelPackage, region: np.ndarray,
                   target: Target, device: str | None = None):
    """The cross-check of an explanation (``evaluation.sequence_ablation`` on a normalized input on
    its own grid, padded and windowed as `predict` does): per sequence, the fraction of region A's
    decision margin (over A's voxels predicted as the target class) kept when the sequence is
    replaced by its mean. Dice inside it is measured against A itself."""
    from . import evaluation

    padded, crop = pad_for_model(x, package)
    full_region = np.zeros(padded.shape[2:], dtype=bool)
    full_region[crop] = np.asarray(region, dtype=bool)
    window = package.patch_size if _uses_sliding(padded, package) else None
    return evaluation.sequence_ablation(model, padded, full_region, target=target.index, device=device,
                                        window=window, overlap=package.overlap, margin_region=full_region)


def composition_input(model: nn.Module, x: torch.Tensor, package: ModelPackage, target: Target,
                      composite: str | None = None, device: str | None = None,
                      tolerance: float = DEFAULT_TOLERANCE) -> np.ndarray:
    """The sequence-composition map (C, D, H, W) of a normalized input on its own grid."""
    padded, crop = pad_for_model(x, package)
    lrp_composite = package.lrp_composite(composite)
    if _uses_sliding(padded, package):
        composition = sliding_sequence_composition(model, padded, target, lrp_composite,
                                                   patch_size=package.patch_size, overlap=package.overlap,
                                                   device=device, tolerance=tolerance)
    else:
        composition = sequence_composition(model, padded, target, lrp_composite, device=device, tolerance=tolerance)
    return composition[(slice(None),) + crop].numpy()


def connected_lesions(mask: np.ndarray, min_voxels: int = 1) -> list[np.ndarray]:
    """Connected components (26-connectivity) of a mask, largest first."""
    image = sitk.GetImageFromArray(np.asarray(mask, dtype=np.uint8))
    components = sitk.RelabelComponent(sitk.ConnectedComponent(image, True), minimumObjectSize=min_voxels)
    labels = sitk.GetArrayFromImage(components)
    return [labels == k for k in range(1, int(labels.max()) + 1)]


def select_regions(mode: str, labels: np.ndarray, target_class: int, reference_label: np.ndarray | None = None,
                   mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Region(s) A on the output grid, by name.

    Modes: ``predicted`` (the predicted target class), ``tp``/``fn``/``fp`` (against the reference
    label's target class), ``lesions`` (each connected predicted lesion: ``lesion-1``, ...),
    ``mask`` (a given mask). Empty regions are left out (the caller reports them).
    """
    if mode not in REGION_MODES:
        raise ValueError(f"unknown region mode {mode!r}; choose one of {', '.join(REGION_MODES)}")
    predicted = labels == target_class
    if mode in ("tp", "fn", "fp"):
        if reference_label is None:
            raise ValueError(f"region mode {mode!r} needs a reference label (ground truth)")
        truth = reference_label == target_class
        region = {"tp": predicted & truth, "fn": truth & ~predicted, "fp": predicted & ~truth}[mode]
        return {mode: region} if region.any() else {}
    if mode == "lesions":
        return {f"lesion-{i + 1}": lesion for i, lesion in enumerate(connected_lesions(predicted))}
    if mode == "mask":
        if mask is None:
            raise ValueError("region mode 'mask' needs a mask")
        mask = np.asarray(mask).astype(bool)
        if mask.shape != labels.shape:
            raise ValueError(f"the region mask has shape {mask.shape}, the case grid is {labels.shape}")
        return {"mask": mask} if mask.any() else {}
    return {"predicted": predicted} if predicted.any() else {}


@dataclass
class CaseResult:
    """Everything computed for one case: the prediction, the composition map and one explanation
    per region (all on the reference grid)."""

    case: Case
    logits: np.ndarray
    labels: np.ndarray
    composition: np.ndarray
    regions: dict[str, np.ndarray] = field(default_factory=dict)
    explanations: dict[str, RegionExplanation] = field(default_factory=dict)
    target: Target | None = None
    composite: str = ""

    def shares_rows(self) -> list[dict[str, Any]]:
        """One row per (region, sequence): the cohort table's rows for this case."""
        rows = []
        for region, result in self.explanations.items():
            for c, sequence in enumerate(self.case.sequences):
                rows.append({"case": self.case.name, "region": region, "sequence": sequence,
                             "share": float(result.sequence_shares[c]),
                             "positive_share": float(result.positive_shares[c]),
                             "voxels_used": result.n_used, "voxels_excluded": result.n_excluded})
        return rows


def explain_case(case: Case, model: nn.Module, package: ModelPackage, regions: str | Mapping[str, np.ndarray] = "predicted",
                 target: int | Target | None = None, composite: str | None = None, device: str | None = None,
                 progress: Progress | None = None) -> CaseResult:
    """Predict, pick the region(s), and explain each one exactly; also the composition map.

    Args:
        regions: a region mode (see `select_regions`) or a name → (D, H, W) mask mapping.
        target: class index or `Target`; default: the last class (e.g. "tumour").
        composite: default: the package's.
    """
    say = progress or (lambda _msg: None)
    target = Target(len(package.class_names) - 1) if target is None else target
    target = target if isinstance(target, Target) else Target(int(target))
    composite = composite or package.composite
    x = network_input(case, package)
    say("segmenting")
    logits, labels = predict(model, x, package, device)
    if isinstance(regions, str):
        regions = select_regions(regions, labels, target.index, case.reference_label)
    say("computing the sequence-composition map")
    composition = composition_input(model, x, package, target, composite, device)
    result = CaseResult(case, logits, labels, composition, target=target, composite=composite)
    for name, region in regions.items():
        say(f"explaining region {name} ({int(np.sum(region))} voxels)")
        result.regions[name] = np.asarray(region, dtype=bool)
        result.explanations[name] = explain_region_of(result, model, package, region, device=device)
    return result


def explain_region_of(result: CaseResult, model: nn.Module, package: ModelPackage, region: np.ndarray,
                      device: str | None = None) -> RegionExplanation:
    """Explain one more region of an already predicted case (same target and composite)."""
    return explain_input(model, network_input(result.case, package), package, region, result.target,
                         result.composite, device)


def write_case_outputs(result: CaseResult, folder: PathLike, package: ModelPackage, overwrite: bool = False
                       ) -> dict[str, Any]:
    """Write a case's outputs to ``folder``:

    - ``segmentation.nrrd`` (labels), ``composition_<sequence>.nrrd``;
    - per region R: ``R/relevance_<sequence>.nrrd``, ``R/shares.csv``, ``R/shares.json``,
      and ``R/relevance.png`` (image and relevance panels of every sequence);
    - ``shares.png``: the per-sequence distribution of every region.

    Returns a summary dict (also written as ``summary.json``). Existing files are never replaced
    unless ``overwrite`` (checked for every path before anything is written).
    """
    from . import figures  # matplotlib only where figures are written (not needed inside 3D Slicer)

    folder = Path(folder)
    case, names = result.case, result.case.sequences
    planned = [folder / "segmentation.nrrd", folder / "summary.json", folder / "shares.png"]
    planned += outputs.relevance_paths(folder, names, "composition")
    for region in result.explanations:
        planned += outputs.relevance_paths(folder / outputs.safe_name(region), names)
        planned += [folder / outputs.safe_name(region) / f for f in ("shares.csv", "shares.json", "relevance.png")]
    outputs.check_writable(planned, overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    outputs.write_segmentation(folder, result.labels, case.geometry, overwrite=overwrite)
    outputs.write_maps(folder, result.composition, names, case.geometry, prefix="composition", overwrite=overwrite)
    summary: dict[str, Any] = {"case": case.name, "model": package.name, "sequences": names,
                               "target": result.target.describe(package.class_names),
                               "composite": result.composite, "regions": {}}
    spacing_zyx = tuple(case.geometry.spacing[::-1])
    for region, explanation in result.explanations.items():
        sub = folder / outputs.safe_name(region)
        outputs.write_maps(sub, explanation.relevance.numpy(), names, case.geometry, overwrite=overwrite)
        info = {"voxels_used": explanation.n_used, "voxels_excluded": explanation.n_excluded,
                "tolerance": explanation.tolerance, "diagnostics": explanation.diagnostics}
        outputs.write_shares(sub, names, explanation.sequence_shares.tolist(), explanation.positive_shares.tolist(),
                             metadata={"case": case.name, "region": region, "target": summary["target"],
                                       "composite": result.composite, **info}, overwrite=overwrite)
        figures.plot_relevance_panels(case.images, explanation.relevance.numpy(), result.regions[region], names,
                                      sub / "relevance.png", title=f"{case.name}: {region}", spacing=spacing_zyx)
        summary["regions"][region] = {"shares": dict(zip(names, explanation.sequence_shares.tolist())),
                                      "positive_shares": dict(zip(names, explanation.positive_shares.tolist())),
                                      **info}
    if result.explanations:
        figures.plot_sequence_shares({r: e.sequence_shares.tolist() for r, e in result.explanations.items()},
                                     names, folder / "shares.png",
                                     title=f"{case.name}: normalized relevance per sequence")
    outputs.write_json(folder / "summary.json", summary, overwrite=overwrite)
    return summary


def shares_from_composition(result: CaseResult, region: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Shares of any repainted region from the stored composition map (no LRP pass)."""
    shares, used, excluded = region_shares(torch.from_numpy(result.composition), region)
    return shares.numpy(), used, excluded
