"""Region A as arrays: the one home of every way to choose the region an explanation is about.

From a label map (the network's argmax) and, optionally, a reference label (ground truth), all on
one grid as (D, H, W) arrays:

- ``predicted``: the voxels predicted as the target class;
- ``tp`` / ``fn`` / ``fp``: predicted & truth / truth & not predicted / predicted & not truth;
- ``lesions``: each 26-connected component of the prediction, largest first (``lesion-1``, ...);
- ``lesion`` (a Slicer shortcut): the one predicted lesion that holds a given voxel;
- ``mask``: a region given as a mask.

And why a region is empty, in words (`empty_region_message`), so that every front end says the
same. numpy and SimpleITK only: the Slicer module's main thread uses this without torch. Mode names
come from `vocabulary`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

from .vocabulary import ERROR_DESCRIPTIONS, ERROR_MODES, REGION_MODES, REGION_SHORTCUTS

__all__ = ["MissingRegionInput", "REGION_MODES", "choose_regions", "connected_components", "empty_region_message",
           "error_mask", "lesion_at", "select_regions", "shortcut_region"]


class MissingRegionInput(ValueError):
    """A region mode needs an input that was not given (a reference label, a mask, a point)."""


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def _components(mask: np.ndarray) -> sitk.Image:
    """Connected-component labels (26-connectivity: faces, edges and corners) of a (D, H, W) mask,
    as an image: 0 = background, 1..N in no particular order."""
    return sitk.ConnectedComponent(sitk.GetImageFromArray(np.asarray(mask, dtype=np.uint8)), True)


def connected_components(mask: np.ndarray, min_voxels: int = 1) -> list[np.ndarray]:
    """The 26-connected components of a (D, H, W) mask as bool masks, largest first.

    Components smaller than ``min_voxels`` are left out.
    """
    labels = sitk.GetArrayFromImage(sitk.RelabelComponent(_components(mask), minimumObjectSize=min_voxels))
    return [labels == k for k in range(1, int(labels.max(initial=0)) + 1)]


def lesion_at(mask: np.ndarray, index: Sequence[int]) -> np.ndarray:
    """The 26-connected component of a (D, H, W) mask that holds voxel ``index`` = (k, j, i);
    all False when that voxel is not in the mask. Same components as `connected_components`."""
    mask = np.asarray(mask, dtype=bool)
    index = tuple(int(n) for n in index)
    if not mask[index]:
        return np.zeros(mask.shape, dtype=bool)
    labels = sitk.GetArrayFromImage(_components(mask))
    return labels == labels[index]


def error_mask(mode: str, predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """True positives, false negatives or false positives (``mode`` "tp", "fn", "fp") of a
    predicted mask against a truth mask, both bool (D, H, W). The three partition their union."""
    predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    if truth.shape != predicted.shape:
        raise ValueError(f"the ground truth has shape {truth.shape}, the prediction {predicted.shape}")
    if mode == "tp":
        return predicted & truth
    if mode == "fn":
        return truth & ~predicted
    if mode == "fp":
        return predicted & ~truth
    raise ValueError(f"unknown error region {mode!r}; choose one of {', '.join(ERROR_MODES)}")


# --------------------------------------------------------------------------------------------
# Regions of a case (CLI, pipeline, demo) and of a shortcut (Slicer module)
# --------------------------------------------------------------------------------------------


def select_regions(mode: str, labels: np.ndarray, target_class: int, reference_label: np.ndarray | None = None,
                   mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Region(s) A of one mode, by name, from a (D, H, W) label map.

    Modes (`vocabulary.REGION_MODES`): ``predicted``, ``tp``/``fn``/``fp`` (against the reference
    label's target class), ``lesions`` (``lesion-1``, ``lesion-2``, ..., largest first), ``mask``.
    Empty regions are left out: the result may be ``{}`` (`empty_region_message` says why).

    Raises:
        ValueError: an unknown mode, or a mask of another shape.
        MissingRegionInput: ``tp``/``fn``/``fp`` without a reference label, ``mask`` without a mask.
    """
    if mode not in REGION_MODES:
        raise ValueError(f"unknown region mode {mode!r}; choose one of {', '.join(REGION_MODES)}")
    predicted = np.asarray(labels) == target_class
    if mode in ERROR_MODES:
        if reference_label is None:
            raise MissingRegionInput(f"region mode {mode!r} needs a reference label (ground truth)")
        region = error_mask(mode, predicted, np.asarray(reference_label) == target_class)
        return {mode: region} if region.any() else {}
    if mode == "lesions":
        return {f"lesion-{i + 1}": lesion for i, lesion in enumerate(connected_components(predicted))}
    if mode == "mask":
        if mask is None:
            raise MissingRegionInput("region mode 'mask' needs a mask")
        mask = np.asarray(mask).astype(bool)
        if mask.shape != predicted.shape:
            raise ValueError(f"the region mask has shape {mask.shape}, the case grid is {predicted.shape}")
        return {"mask": mask} if mask.any() else {}
    return {"predicted": predicted} if predicted.any() else {}


def shortcut_region(mode: str, predicted: np.ndarray, truth: np.ndarray | None = None,
                    index: Sequence[int] | None = None) -> np.ndarray:
    """Region A of a Slicer shortcut (`vocabulary.REGION_SHORTCUTS`) from bool (D, H, W) masks of the
    predicted target class and, for TP/FN/FP, of the ground truth. May be empty; callers decide.

    ``predicted``: a copy of ``predicted``; ``lesion``: `lesion_at` voxel ``index``; ``tp``/``fn``/``fp``:
    `error_mask`.
    """
    predicted = np.asarray(predicted, dtype=bool)
    if mode == "predicted":
        return predicted.copy()
    if mode == "lesion":
        if index is None:
            raise MissingRegionInput("the 'lesion' shortcut needs a point")
        return lesion_at(predicted, index)
    if mode in ERROR_MODES:
        if truth is None:
            raise MissingRegionInput(f"the '{mode.upper()}' region needs a ground-truth segment")
        return error_mask(mode, predicted, truth)
    raise ValueError(f"unknown region shortcut {mode!r}; choose one of {', '.join(REGION_SHORTCUTS)}")


# --------------------------------------------------------------------------------------------
# Why a region is empty
# --------------------------------------------------------------------------------------------


def empty_region_message(mode: str, labels: np.ndarray, target: int, reference_label: np.ndarray | None,
                         class_name: str) -> str:
    """Why region ``mode`` of a (D, H, W) label map is empty, in words, e.g.
    ``region 'fn' is empty: no false negatives: the prediction covers the reference label``."""
    predicted = np.asarray(labels) == target
    truth = None if reference_label is None else np.asarray(reference_label) == target
    no_truth = truth is not None and not truth.any()
    nothing_predicted = f"no voxel is predicted as {class_name}"
    truth_empty = f"the reference label has no {class_name} voxel"
    if mode in ("predicted", "lesions"):
        detail = nothing_predicted
    elif mode == "mask":
        detail = "the region mask has no voxel on the reference grid"
    elif mode == "tp":
        detail = (truth_empty if no_truth else nothing_predicted if not predicted.any() else
                  f"the predicted {class_name} does not overlap the reference label")
    elif mode == "fn":
        detail = truth_empty if no_truth else "the prediction covers the reference label"
    elif mode == "fp":
        detail = (nothing_predicted if not predicted.any() else
                  f"every predicted {class_name} voxel lies inside the reference label")
    else:
        detail = "no voxel"
    if mode in ERROR_MODES:
        detail = f"no {ERROR_DESCRIPTIONS[mode]}: {detail}"
    return f"region '{mode}' is empty: {detail}"


def choose_regions(modes: Sequence[str], labels: np.ndarray, target: int, reference_label: np.ndarray | None,
                   mask: np.ndarray | None, class_name: str, hints: Mapping[str, str] | None = None
                   ) -> tuple[dict[str, Any], list[str]]:
    """The regions of every mode, and one `empty_region_message` per mode whose region is empty.

    Args:
        modes: region modes, in order; their regions are merged into one name → mask dict.
        hints: how the front end's user supplies a missing input, by "reference_label" / "mask"
            (e.g. the CLI's ``--reference-label FILE``), appended to the error message.

    Raises:
        MissingRegionInput: a mode's input is missing (checked before any region is computed).
    """
    hints = hints or {}
    for mode in modes:
        missing = ("reference_label" if mode in ERROR_MODES and reference_label is None else
                   "mask" if mode == "mask" and mask is None else None)
        if missing:
            what = "a reference label" if missing == "reference_label" else "a mask"
            hint = f": {hints[missing]}" if missing in hints else ""
            raise MissingRegionInput(f"region mode {mode!r} needs {what}{hint}")
    regions: dict[str, Any] = {}
    empty: list[str] = []
    for mode in modes:
        found = select_regions(mode, labels, target, reference_label, mask)
        if found:
            regions.update(found)
        else:
            empty.append(empty_region_message(mode, labels, target, reference_label, class_name))
    return regions, empty
