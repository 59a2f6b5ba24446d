"""Region A in one click (main thread, MRML only, no torch, no Qt).

``create_region_segment`` writes a shortcut's region as a segment of the region segmentation:
the predicted target class, the predicted lesion at an RAS point (the crosshair), or TP / FN / FP
against a ground-truth segment (``create_error_segments`` does all three). The masks themselves
come from `LRPSegmentationLib.regions` (the one home of region A as arrays); this module reads the
segments onto the reference grid and writes the result back. ``logic.update_region`` then
recomputes the shares for the new segment from the stored composition.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import regions
from ..vocabulary import ERROR_DESCRIPTIONS, ERROR_MODES, REGION_SHORTCUTS
from . import mrml

__all__ = ["REGION_SEGMENTATION_NAME", "EmptyRegionError", "RegionSegments", "create_error_segments",
           "create_region_segment", "crosshair_ras", "ensure_region_segmentation", "ras_to_voxel",
           "region_segment_name", "write_region_segment"]

#: Default name of the segmentation node the shortcuts write into when none is selected.
REGION_SEGMENTATION_NAME = "LRP regions"
#: Segment colours of the shortcuts ("predicted" keeps the predicted segment's colour).
_SHORTCUT_COLORS = {"lesion": (0.95, 0.75, 0.1), "tp": (0.2, 0.8, 0.25), "fn": (0.2, 0.45, 1.0),
                    "fp": (1.0, 0.2, 0.2)}


class EmptyRegionError(ValueError):
    """The region a shortcut asked for has no voxels; no segment was created."""


@dataclass
class RegionSegments:
    """What ``create_error_segments`` did.

    Attributes:
        segmentation_node: the region segmentation.
        segment_ids: mode ("tp", "fn", "fp") -> ID of the segment created or replaced.
        empty: the modes whose region is empty: no segment (an older one of that name is removed).
        voxels: mode -> number of voxels (0 for the empty ones).
    """

    segmentation_node: Any
    segment_ids: dict[str, str]
    empty: list[str]
    voxels: dict[str, int]

    @property
    def segment_id(self) -> str:
        """The first segment created (TP, else FN, else FP), or "" if all were empty."""
        return next(iter(self.segment_ids.values()), "")

    @property
    def message(self) -> str:
        parts = [f"{mode.upper()}: {self.voxels[mode]} voxels" for mode in self.segment_ids]
        if self.empty:
            parts.append("no " + ", ".join(mode.upper() for mode in self.empty) + " voxels (no segment created)")
        return "; ".join(parts) + "."


def _unknown_shortcut(mode: str) -> ValueError:
    return ValueError(f"unknown region shortcut {mode!r}; choose one of {', '.join(REGION_SHORTCUTS)}")


def region_segment_name(mode: str, class_name: str) -> str:
    """The segment name each shortcut writes (an existing segment of that name is replaced)."""
    if mode == "predicted":
        return f"A: predicted {class_name}"
    if mode == "lesion":
        return f"A: this {class_name} lesion"
    if mode in ERROR_MODES:
        return f"A: {mode.upper()} {class_name}"
    raise _unknown_shortcut(mode)


# --------------------------------------------------------------------------------------------
# Points and segmentations
# --------------------------------------------------------------------------------------------


def crosshair_ras(scene: Any) -> tuple[float, float, float]:
    """The crosshair position in world RAS (Shift + mouse move in a view places it)."""
    crosshair = scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
    if crosshair is None:
        raise ValueError("no crosshair in this scene: place it with Shift + mouse move over a view")
    return tuple(float(value) for value in crosshair.GetCrosshairRAS())


def ras_to_voxel(reference_node: Any, ras_point: Sequence[float]) -> tuple[int, int, int] | None:
    """The (k, j, i) array index of the reference voxel containing a world RAS point, or None outside.

    The reference volume's parent transform is applied (world -> volume RAS), like Slicer's views.
    """
    import vtk

    point = [float(value) for value in ras_point][:3]
    if len(point) != 3:
        raise ValueError(f"an RAS point needs 3 coordinates, got {list(ras_point)}")
    transform_node = reference_node.GetParentTransformNode()
    if transform_node is not None:
        world_to_local = vtk.vtkGeneralTransform()
        transform_node.GetTransformFromWorld(world_to_local)
        point = list(world_to_local.TransformPoint(point))
    ras_to_ijk = vtk.vtkMatrix4x4()
    reference_node.GetRASToIJKMatrix(ras_to_ijk)
    ijk = ras_to_ijk.MultiplyPoint([*point, 1.0])[:3]
    index = tuple(int(np.floor(value + 0.5)) for value in reversed(ijk))  # (k, j, i)
    shape = mrml.volume_shape(reference_node)
    if not all(0 <= n < size for n, size in zip(index, shape)):
        return None
    return index  # type: ignore[return-value]


def ensure_region_segmentation(scene: Any, segmentation_node: Any, reference_node: Any,
                               name: str = REGION_SEGMENTATION_NAME) -> Any:
    """The segmentation that holds region A: ``segmentation_node``, or a new one on the reference grid.

    A segmentation without reference geometry gets the reference volume's.
    """
    import slicer

    mrml._require_volume(reference_node, "reference volume")
    if segmentation_node is None:
        segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        segmentation_node.CreateDefaultDisplayNodes()
        segmentation_node.SetAndObserveTransformNodeID(reference_node.GetTransformNodeID())
    parameter = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    if not segmentation_node.GetSegmentation().GetConversionParameter(parameter):
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    return segmentation_node


def write_region_segment(segmentation_node: Any, name: str, mask: np.ndarray, reference_node: Any,
                         color: Sequence[float] | None = None) -> str:
    """Write a boolean mask (reference grid) as the segment ``name``; returns its ID.

    An existing segment of that name is overwritten in place (same ID, colour kept), not duplicated;
    other segments are untouched, even where they overlap. Only the segmentation's own scene is
    used, and no temporary node is left behind.
    """
    import slicer
    import vtk
    from slicer.util import updateVolumeFromArray

    mask = np.asarray(mask, dtype=bool)
    if mask.shape != mrml.volume_shape(reference_node):
        raise ValueError(f"the mask has shape {mask.shape}, the reference volume {mrml.volume_shape(reference_node)}")
    if not mask.any():
        raise EmptyRegionError(f"the region '{name}' is empty")
    segmentation = segmentation_node.GetSegmentation()
    segment_id = segmentation.GetSegmentIdBySegmentName(name)
    created = not segment_id
    if created:
        segment_id = segmentation.AddEmptySegment("", name, [float(c) for c in (color or (1.0, 1.0, 0.0))])
    scene = segmentation_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__LRP temporary region__")
    try:
        labelmap.CopyOrientation(reference_node)
        labelmap.SetAndObserveTransformNodeID(reference_node.GetTransformNodeID())
        updateVolumeFromArray(labelmap, mask.astype(np.uint8))
        segment_ids = vtk.vtkStringArray()
        segment_ids.InsertNextValue(segment_id)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation_node,
                                                                                       segment_ids):
            raise RuntimeError(f"Slicer could not write the segment '{name}'")
    except BaseException:
        if created:
            segmentation.RemoveSegment(segment_id)
        raise
    finally:
        display_node = labelmap.GetDisplayNode()
        mrml.remove_nodes(scene, [labelmap, display_node.GetColorNode() if display_node is not None else None])
    return segment_id


def _remove_segment_named(segmentation_node: Any, name: str) -> bool:
    segmentation = segmentation_node.GetSegmentation()
    segment_id = segmentation.GetSegmentIdBySegmentName(name)
    if segment_id:
        segmentation.RemoveSegment(segment_id)
    return bool(segment_id)


# --------------------------------------------------------------------------------------------
# The shortcuts
# --------------------------------------------------------------------------------------------


def _shortcut_inputs(region_segmentation_node: Any, reference_node: Any, predicted_segmentation_node: Any,
                     predicted_segment_id: str) -> tuple[np.ndarray, str, tuple[float, float, float]]:
    """The predicted target-class mask on the reference grid, the class name and the segment colour."""
    if region_segmentation_node is None:
        raise ValueError("no segmentation selected for region A: select or create one")
    mrml._require_volume(reference_node, "reference volume")
    if predicted_segmentation_node is None or not predicted_segment_id:
        raise ValueError("no predicted segment selected: press Segment first, or select the predicted "
                         "segmentation and its target-class segment")
    segment = predicted_segmentation_node.GetSegmentation().GetSegment(predicted_segment_id)
    if segment is None:
        raise ValueError(f"segment '{predicted_segment_id}' is not in '{predicted_segmentation_node.GetName()}'")
    predicted = mrml.segment_mask(predicted_segmentation_node, predicted_segment_id, reference_node)
    return predicted, segment.GetName(), tuple(float(c) for c in segment.GetColor())


def _truth_mask(truth_segmentation_node: Any, truth_segment_id: str | None, reference_node: Any) -> np.ndarray:
    if truth_segmentation_node is None or not truth_segment_id:
        raise ValueError("no ground-truth segment selected: select the reference (ground-truth) segment for "
                         "TP / FN / FP")
    return mrml.segment_mask(truth_segmentation_node, truth_segment_id, reference_node)


def create_region_segment(scene: Any, region_segmentation_node: Any, reference_node: Any, mode: str,
                          predicted_segmentation_node: Any, predicted_segment_id: str,
                          truth_segmentation_node: Any = None, truth_segment_id: str | None = None,
                          ras_point: Sequence[float] | None = None) -> str:
    """Region A in one click: write a shortcut's region as a segment of the region segmentation.

    Modes (`vocabulary.REGION_SHORTCUTS`; segment names from ``region_segment_name``; ``<class>`` =
    the predicted segment's name):

    * ``"predicted"`` -> "A: predicted <class>": the predicted target-class segment, copied;
    * ``"lesion"`` -> "A: this <class> lesion": the 26-connected component of the predicted segment
      that contains ``ras_point`` (world RAS, e.g. the crosshair);
    * ``"tp"`` / ``"fn"`` / ``"fp"`` -> "A: TP <class>" ...: against the ground-truth segment.

    All masks are computed on the reference volume's grid (`regions.shortcut_region`). An existing
    segment of the same name is replaced (same segment ID), never duplicated. ``scene`` is the scene
    of the nodes (kept for the symmetry with the other phases; the segmentation's own scene is used).

    Returns:
        The segment ID.

    Raises:
        EmptyRegionError (a ValueError): the region is empty -- "no predicted lesion at this point",
            "the predicted segment 'X' is empty", "no false negatives ..."; no segment is created (an
            older TP/FN/FP segment of that name is removed, as it no longer holds).
        ValueError: missing inputs (the message says which).
    """
    if mode not in REGION_SHORTCUTS:
        raise _unknown_shortcut(mode)
    predicted, class_name, color = _shortcut_inputs(region_segmentation_node, reference_node,
                                                    predicted_segmentation_node, predicted_segment_id)
    name = region_segment_name(mode, class_name)
    truth = index = None
    if mode == "lesion":
        if ras_point is None:
            raise ValueError("no point given: place the crosshair on a predicted lesion")
        index = ras_to_voxel(reference_node, ras_point)
        if index is None or not predicted[index]:
            raise EmptyRegionError("no predicted lesion at this point")
    elif mode in ERROR_MODES:
        truth = _truth_mask(truth_segmentation_node, truth_segment_id, reference_node)
    mask = regions.shortcut_region(mode, predicted, truth, index)
    if not mask.any():
        if mode in ERROR_MODES:
            _remove_segment_named(region_segmentation_node, name)
            raise EmptyRegionError(f"no {ERROR_DESCRIPTIONS[mode]}: the {mode.upper()} region of '{class_name}' "
                                   "is empty (no segment created)")
        raise EmptyRegionError(f"the predicted segment '{class_name}' is empty: nothing was predicted for this class")
    ensure_region_segmentation(scene, region_segmentation_node, reference_node)
    return write_region_segment(region_segmentation_node, name, mask, reference_node,
                                color if mode == "predicted" else _SHORTCUT_COLORS[mode])


def create_error_segments(scene: Any, region_segmentation_node: Any, reference_node: Any,
                          predicted_segmentation_node: Any, predicted_segment_id: str,
                          truth_segmentation_node: Any, truth_segment_id: str) -> RegionSegments:
    """TP, FN and FP against the ground truth, one segment each ("A: TP <class>", ...).

    Empty ones are reported in ``RegionSegments.empty`` and not created (an older segment of that
    name is removed); existing ones are replaced. Raises ValueError for missing inputs only.
    """
    predicted, class_name, _ = _shortcut_inputs(region_segmentation_node, reference_node,
                                                predicted_segmentation_node, predicted_segment_id)
    truth = _truth_mask(truth_segmentation_node, truth_segment_id, reference_node)
    ensure_region_segmentation(scene, region_segmentation_node, reference_node)
    result = RegionSegments(region_segmentation_node, {}, [], {})
    for mode in ERROR_MODES:
        mask = regions.error_mask(mode, predicted, truth)
        name = region_segment_name(mode, class_name)
        result.voxels[mode] = int(mask.sum())
        if mask.any():
            result.segment_ids[mode] = write_region_segment(region_segmentation_node, name, mask, reference_node,
                                                            _SHORTCUT_COLORS[mode])
        else:
            _remove_segment_named(region_segmentation_node, name)
            result.empty.append(mode)
    return result
