"""The LRPSegmentation module's logic, without Qt.

``LRPSegmentation.py`` (the Slicer module) is only UI wiring; its Logic delegates here, and the
tests drive these functions on real MRML nodes (slicer-core, headless).

Every long operation is split in three phases so the module can keep Slicer responsive:

1. ``prepare_*`` (main thread, reads MRML): input volumes -> numpy arrays on the reference grid,
   normalized as the model package says; the painted segment -> a boolean mask.
2. ``compute_*`` (any thread, pure numpy/torch, never touches MRML or Qt): the network's
   prediction, or the LRP region explanation plus the per-voxel sequence composition.
3. ``publish_*`` (main thread, writes MRML): the output nodes, all inside one subject-hierarchy
   folder beside the reference volume.

Region A shortcuts (main thread, MRML only, no torch): ``create_region_segment`` writes the
predicted target class, the predicted lesion at an RAS point, or TP / FN / FP against a ground-truth
segment as a segment of the region segmentation (``create_error_segments`` does all three);
``update_region`` then recomputes the shares for it from the stored composition. ``publish_explanation``
adds a colour legend to the relevance volumes where the application offers one (``add_color_legends``).

``segment`` and ``explain`` run the three phases one after the other (what tests and scripts
use). A ``cancel`` callable (returns True to stop) is checked between steps; a ``progress``
callable receives ``(fraction in 0..1, message)``. On cancellation (``Cancelled``) or any error,
every node created so far is removed before the exception propagates.

The model is a `models.package.ModelPackage`. The computation itself is the shared pipeline's
(`pipeline.predict`, `pipeline.explain_input`, `pipeline.composition_input`): the network runs on
the reference grid, as one patch or as Gaussian-blended sliding windows of the package's patch
size, padded where the network needs it and cropped back — exactly what the CLI and demo do.
A GPU out-of-memory error becomes `GPUMemoryError`, whose message offers the CPU.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import mrml
from .imaging import Geometry, grid_with_spacing, normalize_sequences

__all__ = [
    "BackgroundJob",
    "Cancelled",
    "GPUMemoryError",
    "ExplainOutputs",
    "ExplainRequest",
    "ExplainResult",
    "InputStack",
    "COMPOSITION_ATTRIBUTE",
    "EmptyRegionError",
    "REGION_SHORTCUTS",
    "RegionSegments",
    "add_color_legends",
    "check_inputs",
    "create_error_segments",
    "create_region_segment",
    "crosshair_ras",
    "ensure_region_segmentation",
    "find_volume_by_name",
    "compute_explanation",
    "compute_labels",
    "composition_array",
    "explain",
    "load_model",
    "prepare_explain",
    "prepare_inputs",
    "read_package_info",
    "publish_explanation",
    "publish_segmentation",
    "region_mask",
    "region_shortcut_mask",
    "segment",
    "update_region",
]

ProgressCallback = Callable[[float, str], None]
CancelCallback = Callable[[], bool]

#: Attribute set on the composition volume: the comma-separated sequence names of its components.
COMPOSITION_ATTRIBUTE = "LRPSegmentation.CompositionSequences"
#: Attributes set on the shares table.
USED_ATTRIBUTE = "LRPSegmentation.VoxelsUsed"
EXCLUDED_ATTRIBUTE = "LRPSegmentation.VoxelsExcluded"
#: With the cross-check: the table column of each sequence's kept decision margin, and the table
#: attribute naming the sequences whose relevance the decision does not back (comma-separated).
MARGIN_COLUMN = "decision margin kept"
WITHOUT_SENSITIVITY_ATTRIBUTE = "LRPSegmentation.RelevanceWithoutSensitivity"


class GPUMemoryError(RuntimeError):
    """The GPU ran out of memory; the message says what to try instead."""


def _gpu_memory_error(error: Exception) -> GPUMemoryError:
    return GPUMemoryError(f"the GPU ran out of memory ({error}). Choose device 'cpu' (slower, uses main "
                          "memory), a smaller region of interest, or a model package with a smaller patch size")


class Cancelled(RuntimeError):
    """The user cancelled; partially created outputs have been removed."""


def _check_cancel(cancel: CancelCallback | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("cancelled by the user")


def _report(progress: ProgressCallback | None, fraction: float, message: str) -> None:
    if progress is not None:
        progress(float(fraction), message)


# --------------------------------------------------------------------------------------------
# Inputs (main thread)
# --------------------------------------------------------------------------------------------


@dataclass
class InputStack:
    """Normalized model input on the reference grid.

    Attributes:
        array: float32 (C, D, H, W), (D, H, W) = reference array shape, channels in the package's
            sequence order.
        sequence_names: the C names.
        reference_shape: (D, H, W) of the reference volume.
    """

    array: np.ndarray
    sequence_names: list[str]
    reference_shape: tuple[int, int, int]


def _sequence_names(package: Any) -> list[str]:
    names = list(getattr(package, "sequences", None) or [])
    if not names:
        raise ValueError("the model package lists no input sequences")
    return [str(name) for name in names]


def check_inputs(input_nodes: Sequence[Any], reference_node: Any, sequence_names: Sequence[str]) -> list[str]:
    """Names of the sequences with no volume selected (plus "reference volume" if missing).

    Empty list = ready. The widget uses it to disable Apply and build its tooltip.
    """
    missing = [name for name, node in zip(sequence_names, input_nodes) if node is None]
    missing += list(sequence_names[len(input_nodes):])
    if reference_node is None:
        missing.append("reference volume")
    return missing


def prepare_inputs(input_nodes: Sequence[Any], reference_node: Any, package: Any) -> InputStack:
    """Stack the input volumes on the reference grid and normalize them (main thread).

    Raises:
        ValueError: a sequence has no volume (the message names it), wrong number of inputs,
            or the normalization failed (e.g. a constant image).
    """
    names = _sequence_names(package)
    input_nodes = list(input_nodes)
    if len(input_nodes) < len(names):
        input_nodes += [None] * (len(names) - len(input_nodes))
    if len(input_nodes) != len(names):
        raise ValueError(f"the model expects {len(names)} sequences ({', '.join(names)}), "
                         f"got {len(input_nodes)} volumes")
    for name, node in zip(names, input_nodes):
        if node is None:
            raise ValueError(f"no volume selected for sequence '{name}': select a volume for every input sequence")
    if reference_node is None:
        raise ValueError("no reference volume selected: the outputs are created on its grid")
    check_reference_spacing(reference_node, package)
    stacked = mrml.arrays_on_reference(input_nodes, reference_node, names)
    methods = getattr(package, "normalization", None)
    if methods:
        stacked = normalize_sequences(stacked, methods, names)
    return InputStack(stacked.astype(np.float32, copy=False), names, tuple(stacked.shape[1:]))


def check_reference_spacing(reference_node: Any, package: Any) -> None:
    """Refuse a reference volume whose voxel spacing is not the model's (beyond 1 %).

    The command line resamples such a case to the model's spacing (`pipeline.load_case`); the
    module creates its outputs on the reference volume's own grid, so here the network would see
    voxels of a size it was never trained on and segment silently wrong.

    Raises:
        ValueError: naming both spacings and how to resample the reference.
    """
    target = getattr(package, "target_spacing", None)
    if not target:
        return
    geometry = Geometry.from_ijk_to_ras(mrml.ijk_to_ras_matrix(reference_node), mrml.volume_shape(reference_node))
    if grid_with_spacing(geometry, target) is not geometry:
        have = " x ".join(f"{s:.3g}" for s in geometry.spacing)
        want = " x ".join(f"{s:.3g}" for s in target)
        raise ValueError(f"the reference volume's voxels are {have} mm, the model was trained at {want} mm: "
                         "resample the reference volume to the model's spacing (module Resample Scalar Volume) "
                         "and select the resampled volume as reference")


def region_mask(segmentation_node: Any, segment_id: str, reference_node: Any) -> np.ndarray:
    """The painted region A as a bool (D, H, W) mask on the reference grid.

    Raises:
        ValueError: no segmentation/segment selected, or the segment is empty.
    """
    if segmentation_node is None:
        raise ValueError("no segmentation selected for region A: select or create one and paint region A")
    if not segment_id:
        raise ValueError("no segment selected for region A: select the segment that holds region A")
    mask = mrml.segment_mask(segmentation_node, segment_id, reference_node)
    if not mask.any():
        segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
        name = segment.GetName() if segment is not None else segment_id
        raise ValueError(f"the segment '{name}' is empty: paint region A first")
    return mask


def read_package_info(path: str) -> Any:
    """What the user interface needs from a model package, read from its ``model.json`` only.

    Needs neither torch nor safetensors (so the module can show one selector per sequence before
    torch is installed). ``path`` is the ``<name>.lrpmodel`` folder or its ``model.json``.

    Returns:
        A namespace with ``name``, ``description``, ``sequences``, ``class_names``, ``composite``,
        ``reference_sequence`` and ``path`` (the folder).

    Raises:
        FileNotFoundError / ValueError: not a model package.
    """
    import json
    import types
    from pathlib import Path

    folder = Path(path)
    if folder.name == "model.json":
        folder = folder.parent
    file = folder / "model.json"
    if not file.is_file():
        raise FileNotFoundError(f"{folder} is not a model package: model.json is missing")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
        sequences = [str(entry["name"]) for entry in meta["input"]["sequences"]]
        class_names = [str(entry["name"]) for entry in meta["output"]["classes"]]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{file} is not a valid model package description: {error}") from None
    if not sequences or len(class_names) < 2:
        raise ValueError(f"{file} lists no input sequences or fewer than two classes")
    return types.SimpleNamespace(
        name=str(meta.get("name", folder.stem)), description=str(meta.get("description", "")),
        sequences=sequences, class_names=class_names,
        composite=(meta.get("lrp") or {}).get("composite") or "epsilon_gamma_box",
        reference_sequence=(meta.get("input") or {}).get("reference_sequence"), path=str(folder))


# --------------------------------------------------------------------------------------------
# Model helpers (any thread)
# --------------------------------------------------------------------------------------------


def load_model(package: Any) -> Any:
    """``package.build()`` in eval mode (float32)."""
    model = package.build()
    return model.float().eval()


def compute_labels(model: Any, inputs: InputStack, package: Any, device: str | None = "auto",
                   cancel: CancelCallback | None = None, progress: ProgressCallback | None = None) -> np.ndarray:
    """The network's label map (argmax over the logits) on the reference grid, uint8/int32 (D, H, W).

    Pure torch: safe in a worker thread.
    """
    import torch

    from . import pipeline

    _check_cancel(cancel)
    _report(progress, 0.1, "Running the network")
    x = torch.from_numpy(np.ascontiguousarray(inputs.array))[None]
    try:
        _, labels = pipeline.predict(model, x, package, device)
    except torch.cuda.OutOfMemoryError as error:
        raise _gpu_memory_error(error) from None
    _check_cancel(cancel)
    classes = len(getattr(package, "class_names", None) or [])
    return labels.astype(np.uint8 if max(classes, int(labels.max(initial=0)) + 1) <= 256 else np.int32)


# --------------------------------------------------------------------------------------------
# Segment
# --------------------------------------------------------------------------------------------


def publish_segmentation(scene: Any, labels: np.ndarray, reference_node: Any, package: Any,
                         name: str | None = None, folder_item_id: int | None = None) -> Any:
    """The label map as a segmentation node (one segment per class) on the reference grid."""
    class_names = list(package.class_names)
    colors = getattr(package, "class_colors", None) or getattr(package, "colors", None)
    colors = [tuple(color) for color in (colors or _default_colors(len(class_names)))]
    name = name or f"{reference_node.GetName()} LRP segmentation"
    if folder_item_id is None:
        folder_item_id = mrml.create_output_folder(scene, name, reference_node)
        try:
            return mrml.add_segmentation_from_labels(scene, labels, class_names, colors, reference_node, name,
                                                     folder_item_id)
        except BaseException:
            mrml.remove_output_folder(scene, folder_item_id)
            raise
    return mrml.add_segmentation_from_labels(scene, labels, class_names, colors, reference_node, name,
                                             folder_item_id)


def segment(scene: Any, input_nodes: Sequence[Any], reference_node: Any, package: Any, device: str | None = "auto",
            progress: ProgressCallback | None = None, cancel: CancelCallback | None = None,
            model: Any = None, name: str | None = None) -> Any:
    """Normalize the inputs, run the network on the reference grid and add the segmentation.

    Returns:
        The new ``vtkMRMLSegmentationNode`` (in a subject-hierarchy folder beside the reference).
    """
    _report(progress, 0.0, "Reading the input volumes")
    inputs = prepare_inputs(input_nodes, reference_node, package)
    _check_cancel(cancel)
    model = model if model is not None else load_model(package)
    labels = compute_labels(model, inputs, package, device, cancel, progress)
    _check_cancel(cancel)
    _report(progress, 0.9, "Creating the segmentation")
    node = publish_segmentation(scene, labels, reference_node, package, name)
    _report(progress, 1.0, "Done")
    return node


def _default_colors(count: int) -> list[tuple[float, float, float]]:
    palette = [(0.0, 0.0, 0.0), (0.85, 0.33, 0.1), (0.1, 0.6, 0.85), (0.3, 0.75, 0.3), (0.9, 0.8, 0.2),
               (0.6, 0.3, 0.8)]
    return [palette[i % len(palette)] for i in range(count)]


# --------------------------------------------------------------------------------------------
# Explain
# --------------------------------------------------------------------------------------------


@dataclass
class ExplainRequest:
    """Everything the worker thread needs (numpy only)."""

    inputs: InputStack
    region: np.ndarray
    target: Any
    composite: str | None
    device: str | None
    region_name: str = "region A"
    tolerance: float | None = None
    cross_check: bool = False


@dataclass
class ExplainResult:
    """What the worker thread returns (numpy only), all on the reference grid.

    Attributes:
        relevance: float32 (C, D, H, W), M_A.
        composition: float32 (C, D, H, W), per-voxel sequence shares (0 where excluded).
        shares: (C,) share of M_A per sequence (signed; sums to 1).
        positive_shares: (C,) share of the positive part of M_A.
        n_used / n_excluded: region voxels used / excluded by the normalization.
        diagnostics: the engine's conservation checks.
        margin_retained: (C,) with the cross-check: the fraction of A's decision margin kept when
            the sequence is replaced by its mean (``pipeline.ablation_input``); else None.
    """

    relevance: np.ndarray
    composition: np.ndarray
    shares: np.ndarray
    positive_shares: np.ndarray
    n_used: int
    n_excluded: int
    diagnostics: dict[str, float] = field(default_factory=dict)
    margin_retained: np.ndarray | None = None


@dataclass
class ExplainOutputs:
    """The nodes ``explain`` created, all inside ``folder_item_id``."""

    folder_item_id: int
    relevance_nodes: list[Any]
    composition_node: Any
    table_node: Any
    chart_node: Any
    shares: np.ndarray
    sequence_names: list[str]
    n_used: int
    n_excluded: int
    caution: str = ""  # with the cross-check: sequences whose relevance the decision does not back


def prepare_explain(input_nodes: Sequence[Any], reference_node: Any, segmentation_node: Any, segment_id: str,
                    package: Any, target: Any, composite: str | None = None, device: str | None = "auto",
                    tolerance: float | None = None, cross_check: bool = False) -> ExplainRequest:
    """Main-thread part of ``explain``: read the inputs and region A (raises on missing/empty)."""
    inputs = prepare_inputs(input_nodes, reference_node, package)
    mask = region_mask(segmentation_node, segment_id, reference_node)
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    return ExplainRequest(inputs, mask, target, composite, device,
                          segment.GetName() if segment is not None else str(segment_id), tolerance, cross_check)


def compute_explanation(request: ExplainRequest, package: Any, model: Any = None,
                        progress: ProgressCallback | None = None,
                        cancel: CancelCallback | None = None) -> ExplainResult:
    """Worker-thread part of ``explain``: the LRP region explanation and the sequence composition.

    Pure numpy/torch: never touches MRML or Qt.
    """
    import torch

    from . import pipeline
    from .engine import DEFAULT_TOLERANCE, Target
    from .engine.region import as_target

    _check_cancel(cancel)
    _report(progress, 0.05, "Building the model")
    model = model if model is not None else load_model(package)
    x = torch.from_numpy(np.ascontiguousarray(request.inputs.array))[None]
    target = request.target if isinstance(request.target, Target) else as_target(request.target)
    tolerance = DEFAULT_TOLERANCE if request.tolerance is None else request.tolerance
    _check_cancel(cancel)
    try:
        _report(progress, 0.15, f"LRP of {request.region_name}")
        explanation = pipeline.explain_input(model, x, package, request.region, target, request.composite,
                                             request.device, tolerance)
        _check_cancel(cancel)
        _report(progress, 0.55, "Sequence composition of every voxel")
        composition = pipeline.composition_input(model, x, package, target, request.composite, request.device,
                                                 tolerance)
        margin_retained = None
        if request.cross_check:
            _check_cancel(cancel)
            _report(progress, 0.8, "Cross-check: each sequence replaced by its mean")
            margin_retained = pipeline.ablation_input(model, x, package, request.region, target,
                                                      request.device).margin_retained
    except torch.cuda.OutOfMemoryError as error:
        raise _gpu_memory_error(error) from None
    _check_cancel(cancel)
    _report(progress, 0.9, "Collecting the results")

    return ExplainResult(
        relevance=explanation.relevance.detach().cpu().numpy().astype(np.float32),
        composition=composition.astype(np.float32),
        shares=explanation.sequence_shares.detach().cpu().numpy().astype(np.float64),
        positive_shares=explanation.positive_shares.detach().cpu().numpy().astype(np.float64),
        n_used=int(explanation.n_used),
        n_excluded=int(explanation.n_excluded),
        diagnostics=dict(explanation.diagnostics),
        margin_retained=margin_retained,
    )


def publish_explanation(scene: Any, request: ExplainRequest, result: ExplainResult, reference_node: Any,
                        folder_name: str | None = None, cancel: CancelCallback | None = None,
                        show: bool = True) -> ExplainOutputs:
    """Main-thread part of ``explain``: create the output folder and nodes.

    On ``Cancelled`` or any error, the folder and everything in it (and the colour table, if this
    call created it) are removed before the exception propagates.
    """
    names = request.inputs.sequence_names
    folder_name = folder_name or f"LRP {request.region_name}"
    color_table_existed = scene.GetFirstNode(mrml.DIVERGING_COLOR_TABLE_NAME, "vtkMRMLColorTableNode") is not None
    folder = mrml.create_output_folder(scene, folder_name, reference_node)
    caution = ""
    try:
        _check_cancel(cancel)
        relevance_nodes = mrml.add_relevance_volumes(
            scene, result.relevance, [f"{folder_name} relevance {name}" for name in names], reference_node, folder)
        _check_cancel(cancel)
        composition_node = _add_composition_volume(scene, result.composition, names, reference_node,
                                                   f"{folder_name} sequence composition", folder)
        _check_cancel(cancel)
        extra_columns = {"positive share": result.positive_shares}
        if result.margin_retained is not None:
            extra_columns[MARGIN_COLUMN] = result.margin_retained
        table = mrml.update_shares_table(None, scene, names, result.shares, extra_columns=extra_columns,
                                         table_name=f"{folder_name} shares", folder_item_id=folder)
        _set_table_counts(table, result.n_used, result.n_excluded)
        if result.margin_retained is not None:
            from .evaluation import relevance_without_sensitivity

            flagged = [names[c] for c in relevance_without_sensitivity(result.positive_shares, result.margin_retained)]
            table.SetAttribute(WITHOUT_SENSITIVITY_ATTRIBUTE, ",".join(flagged))
            if flagged:
                caution = (f"Caution: {', '.join(flagged)} get relevance although region A keeps >= 95 % of its "
                           f"decision margin without them (see the 'decision margin kept' column).")
        chart = mrml.create_shares_bar_chart(scene, table, f"{folder_name} shares chart", folder)
        _check_cancel(cancel)
        if show and relevance_nodes:
            mrml.set_foreground_overlay(scene, reference_node, relevance_nodes[0], 0.5)
            add_color_legends(relevance_nodes, "Relevance")
    except BaseException:
        mrml.remove_output_folder(scene, folder)
        if not color_table_existed:
            mrml.remove_nodes(scene, [scene.GetFirstNode(mrml.DIVERGING_COLOR_TABLE_NAME, "vtkMRMLColorTableNode")])
        raise
    return ExplainOutputs(folder, relevance_nodes, composition_node, table, chart,
                          np.asarray(result.shares), list(names), result.n_used, result.n_excluded, caution)


def explain(scene: Any, input_nodes: Sequence[Any], reference_node: Any, segmentation_node: Any, segment_id: str,
            package: Any, target: Any, composite: str | None = None, device: str | None = "auto",
            progress: ProgressCallback | None = None, cancel: CancelCallback | None = None,
            model: Any = None, tolerance: float | None = None, cross_check: bool = False) -> ExplainOutputs:
    """Explain region A (a segment) with LRP and create all outputs beside the inputs.

    Creates, in one subject-hierarchy folder beside the reference volume: one relevance volume per
    sequence (diverging blue-white-red, shared symmetric window), the sequence-composition vector
    volume (C components; lets ``update_region`` recompute the shares without a new LRP pass), the
    shares table (one row per sequence) and its bar chart.

    Args:
        target: class index or ``engine.Target`` (``Target(k, contrast=True)`` = class vs rest).
        composite: composite name (``engine.COMPOSITES``); None = the package's default.
        device: "auto", "cpu", "cuda" or "cuda:N".
        progress: called with (fraction, message).
        cancel: returns True to stop; checked between steps.
        model: an already built model (else ``package.build()``).
        cross_check: also replace each sequence by its mean and add the kept decision margin as a
            table column (C + 1 more forward passes); the table's
            ``WITHOUT_SENSITIVITY_ATTRIBUTE`` names the sequences with relevance but no effect.

    Raises:
        ValueError: a missing input (named), no/empty segment ("the segment 'X' is empty: paint region A
            first"), or an engine error.
        Cancelled: ``cancel()`` returned True; nothing is left in the scene.
    """
    _report(progress, 0.0, "Reading the inputs and region A")
    request = prepare_explain(input_nodes, reference_node, segmentation_node, segment_id, package, target,
                              composite, device, tolerance, cross_check)
    result = compute_explanation(request, package, model, progress, cancel)
    _report(progress, 0.95, "Creating the output nodes")
    outputs = publish_explanation(scene, request, result, reference_node, cancel=cancel)
    _report(progress, 1.0, "Done")
    return outputs


def update_region(scene: Any, composition_node: Any, table_node: Any, segmentation_node: Any, segment_id: str,
                  reference_node: Any, sequence_names: Sequence[str] | None = None
                  ) -> tuple[np.ndarray, int, int]:
    """Recompute the shares table for a repainted region A from the stored composition (no LRP pass).

    ``composition_node`` may also be an ``ExplainOutputs`` (then ``table_node`` may be None).
    The same table node is updated in place, so the bar chart follows.

    Returns:
        (shares (C,), voxels used, voxels excluded).
    """
    import torch

    from .engine import region_shares

    if isinstance(composition_node, ExplainOutputs):
        table_node = table_node or composition_node.table_node
        sequence_names = sequence_names or composition_node.sequence_names
        composition_node = composition_node.composition_node
    if composition_node is None or composition_node.GetScene() is not scene:
        raise ValueError("the sequence-composition volume is gone: run Explain again")
    if table_node is None:
        raise ValueError("no shares table to update: run Explain first")
    if sequence_names is None:
        stored = composition_node.GetAttribute(COMPOSITION_ATTRIBUTE)
        sequence_names = stored.split(",") if stored else None
    composition = composition_array(composition_node)
    if sequence_names is None:
        sequence_names = [f"sequence {i + 1}" for i in range(composition.shape[0])]
    if len(sequence_names) != composition.shape[0]:
        raise ValueError(f"{len(sequence_names)} sequence names for a composition of {composition.shape[0]}")
    mask = region_mask(segmentation_node, segment_id, reference_node)
    if mask.shape != composition.shape[1:]:
        raise ValueError(f"region A has shape {mask.shape} but the composition is {composition.shape[1:]}: "
                         "the reference volume changed; run Explain again")
    shares, n_used, n_excluded = region_shares(torch.from_numpy(composition), torch.from_numpy(mask))
    shares = shares.numpy().astype(np.float64)
    mrml.update_shares_table(table_node, scene, list(sequence_names), shares)
    _set_table_counts(table_node, n_used, n_excluded)
    return shares, n_used, n_excluded


def composition_array(composition_node: Any) -> np.ndarray:
    """The stored composition as float32 (C, D, H, W)."""
    from slicer.util import arrayFromVolume

    array = np.asarray(arrayFromVolume(composition_node), dtype=np.float32)
    if array.ndim == 3:
        array = array[..., None]
    return np.ascontiguousarray(np.moveaxis(array, -1, 0))


def _add_composition_volume(scene: Any, composition: np.ndarray, names: Sequence[str], reference_node: Any,
                            name: str, folder_item_id: int) -> Any:
    from slicer.util import updateVolumeFromArray

    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", name)
    try:
        node.CopyOrientation(reference_node)
        node.SetAndObserveTransformNodeID(reference_node.GetTransformNodeID())
        updateVolumeFromArray(node, np.ascontiguousarray(np.moveaxis(composition.astype(np.float32), 0, -1)))
        node.SetAttribute(COMPOSITION_ATTRIBUTE, ",".join(names))
        mrml.move_into_folder(scene, [node], folder_item_id)
    except BaseException:
        mrml.remove_nodes(scene, [node])
        raise
    return node


def _set_table_counts(table_node: Any, n_used: int, n_excluded: int) -> None:
    table_node.SetAttribute(USED_ATTRIBUTE, str(int(n_used)))
    table_node.SetAttribute(EXCLUDED_ATTRIBUTE, str(int(n_excluded)))


# --------------------------------------------------------------------------------------------
# Colour legend (main thread)
# --------------------------------------------------------------------------------------------

COLOR_LEGEND_NODE_CLASS = "vtkMRMLColorLegendDisplayNode"


def add_color_legends(nodes: Sequence[Any], title: str = "Relevance") -> list[Any]:
    """A colour legend (colour bar) for each displayable node, where the application supports it.

    Uses the Colors module logic's ``AddDefaultColorLegendDisplayNode`` (desktop Slicer), else the
    static ``vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode`` when the scene knows the legend
    node class; otherwise (e.g. a bare slicer-core scene) nothing happens. Never raises: a legend is
    a convenience, the outputs must be published without it. The legend nodes are display nodes of
    ``nodes``, so removing a node (``mrml.remove_nodes``) removes its legend too.

    Returns:
        The legend display nodes created (or already present); empty when unsupported.
    """
    import logging

    import slicer

    add = None
    modules = getattr(slicer, "modules", None)
    colors = getattr(modules, "colors", None)
    try:
        color_logic = colors.logic() if colors is not None else None
    except Exception:  # noqa: BLE001 - no Colors module: try the static call below
        color_logic = None
    add = getattr(color_logic, "AddDefaultColorLegendDisplayNode", None)
    legends = []
    for node in nodes:
        if node is None or node.GetScene() is None:
            continue
        adder = add
        if adder is None:
            slicer_color_logic = getattr(slicer, "vtkSlicerColorLogic", None)
            if slicer_color_logic is None or not node.GetScene().IsNodeClassRegistered(COLOR_LEGEND_NODE_CLASS):
                continue
            adder = getattr(slicer_color_logic, "AddDefaultColorLegendDisplayNode", None)
            if adder is None:
                continue
        try:
            legend = adder(node)
        except Exception:  # noqa: BLE001 - skip silently, see the docstring
            logging.debug("could not add a colour legend to %s", node.GetName(), exc_info=True)
            continue
        if legend is None:
            continue
        if hasattr(legend, "SetTitleText"):
            legend.SetTitleText(title)
        if hasattr(legend, "SetLabelFormat"):
            legend.SetLabelFormat("%.2g")  # relevance values are small: "%.1f" would show 0.0 everywhere
        legends.append(legend)
    return legends


# --------------------------------------------------------------------------------------------
# Region A shortcuts (main thread): predicted class, one lesion, TP / FN / FP
# --------------------------------------------------------------------------------------------

#: Region A shortcut modes of ``create_region_segment``.
REGION_SHORTCUTS = ("predicted", "lesion", "tp", "fn", "fp")
#: Default name of the segmentation node the shortcuts write into when none is selected.
REGION_SEGMENTATION_NAME = "LRP regions"
_ERROR_MODES = ("tp", "fn", "fp")
_SHORTCUT_COLORS = {"lesion": (0.95, 0.75, 0.1), "tp": (0.2, 0.8, 0.25), "fn": (0.2, 0.45, 1.0),
                    "fp": (1.0, 0.2, 0.2)}
_ERROR_DESCRIPTIONS = {"tp": "true positives", "fn": "false negatives", "fp": "false positives"}


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


def region_segment_name(mode: str, class_name: str) -> str:
    """The segment name each shortcut writes (an existing segment of that name is replaced)."""
    if mode == "predicted":
        return f"A: predicted {class_name}"
    if mode == "lesion":
        return f"A: this {class_name} lesion"
    if mode in _ERROR_MODES:
        return f"A: {mode.upper()} {class_name}"
    raise ValueError(f"unknown region shortcut {mode!r}; choose one of {', '.join(REGION_SHORTCUTS)}")


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


def connected_component_at(mask: np.ndarray, index: Sequence[int]) -> np.ndarray:
    """The 26-connected component of ``mask`` that contains voxel ``index`` (all False if not in it).

    Same components as ``pipeline.connected_lesions`` (SimpleITK, full connectivity), without torch.
    """
    import SimpleITK as sitk

    mask = np.asarray(mask, dtype=bool)
    index = tuple(int(n) for n in index)
    if not mask[index]:
        return np.zeros(mask.shape, dtype=bool)
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True))
    return labels == labels[index]


def region_shortcut_mask(mode: str, predicted: np.ndarray, truth: np.ndarray | None = None,
                         index: Sequence[int] | None = None) -> np.ndarray:
    """The region A mask of a shortcut, from the predicted (and ground-truth) target-class masks.

    ``predicted``: "predicted"; ``lesion``: the 26-connected component of ``predicted`` holding voxel
    ``index``; ``tp``/``fn``/``fp``: ``predicted & truth`` / ``truth & ~predicted`` / ``predicted & ~truth``
    (the regions of ``pipeline.select_regions``). May be empty; the callers decide.
    """
    predicted = np.asarray(predicted, dtype=bool)
    if mode == "predicted":
        return predicted.copy()
    if mode == "lesion":
        if index is None:
            raise ValueError("the 'lesion' shortcut needs a point")
        return connected_component_at(predicted, index)
    if mode in _ERROR_MODES:
        if truth is None:
            raise ValueError(f"the '{mode.upper()}' region needs a ground-truth segment")
        truth = np.asarray(truth, dtype=bool)
        if truth.shape != predicted.shape:
            raise ValueError(f"the ground truth has shape {truth.shape}, the prediction {predicted.shape}")
        return {"tp": predicted & truth, "fn": truth & ~predicted, "fp": predicted & ~truth}[mode]
    raise ValueError(f"unknown region shortcut {mode!r}; choose one of {', '.join(REGION_SHORTCUTS)}")


def _segment_name(segmentation_node: Any, segment_id: str) -> str:
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    return segment.GetName() if segment is not None else str(segment_id)


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


def create_region_segment(scene: Any, region_segmentation_node: Any, reference_node: Any, mode: str,
                          predicted_segmentation_node: Any, predicted_segment_id: str,
                          truth_segmentation_node: Any = None, truth_segment_id: str | None = None,
                          ras_point: Sequence[float] | None = None) -> str:
    """Region A in one click: write a shortcut's region as a segment of the region segmentation.

    Modes (segment names from ``region_segment_name``; ``<class>`` = the predicted segment's name):

    * ``"predicted"`` -> "A: predicted <class>": the predicted target-class segment, copied;
    * ``"lesion"`` -> "A: this <class> lesion": the 26-connected component of the predicted segment
      that contains ``ras_point`` (world RAS, e.g. the crosshair);
    * ``"tp"`` / ``"fn"`` / ``"fp"`` -> "A: TP <class>" ...: against the ground-truth segment.

    All masks are computed on the reference volume's grid. An existing segment of the same name is
    replaced (same segment ID), never duplicated. ``scene`` is the scene of the nodes (kept for the
    symmetry with the other phases; the segmentation's own scene is used).

    Returns:
        The segment ID.

    Raises:
        EmptyRegionError (a ValueError): the region is empty -- "no predicted lesion at this point",
            "the predicted segment 'X' is empty", "no false negatives ..."; no segment is created (an
            older TP/FN/FP segment of that name is removed, as it no longer holds).
        ValueError: missing inputs (the message says which).
    """
    if mode not in REGION_SHORTCUTS:
        raise ValueError(f"unknown region shortcut {mode!r}; choose one of {', '.join(REGION_SHORTCUTS)}")
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
    elif mode in _ERROR_MODES:
        truth = _truth_mask(truth_segmentation_node, truth_segment_id, reference_node)
    mask = region_shortcut_mask(mode, predicted, truth, index)
    if not mask.any():
        if mode in _ERROR_MODES:
            _remove_segment_named(region_segmentation_node, name)
            raise EmptyRegionError(f"no {_ERROR_DESCRIPTIONS[mode]}: the {mode.upper()} region of '{class_name}' "
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
    for mode in _ERROR_MODES:
        mask = region_shortcut_mask(mode, predicted, truth)
        name = region_segment_name(mode, class_name)
        result.voxels[mode] = int(mask.sum())
        if mask.any():
            result.segment_ids[mode] = write_region_segment(region_segmentation_node, name, mask, reference_node,
                                                            _SHORTCUT_COLORS[mode])
        else:
            _remove_segment_named(region_segmentation_node, name)
            result.empty.append(mode)
    return result


def crosshair_ras(scene: Any) -> tuple[float, float, float]:
    """The crosshair position in world RAS (Shift + mouse move in a view places it)."""
    crosshair = scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
    if crosshair is None:
        raise ValueError("no crosshair in this scene: place it with Shift + mouse move over a view")
    return tuple(float(value) for value in crosshair.GetCrosshairRAS())


def find_volume_by_name(scene: Any, name: str | None, class_name: str = "vtkMRMLScalarVolumeNode") -> Any:
    """The volume whose name matches ``name`` (e.g. a package's reference sequence), or None.

    Exact name first, then case-insensitive, then ignoring everything but letters and digits
    ("T1-20s" = "t1_20s"); label maps are skipped. Ambiguous fuzzy matches give None.
    """
    import re

    if not name:
        return None
    nodes = [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]
    nodes = [node for node in nodes if node is not None and not node.IsA("vtkMRMLLabelMapVolumeNode")]

    def simplified(text: str) -> str:
        return re.sub(r"[^0-9a-z]", "", text.lower())

    for key in (lambda text: text, str.lower, simplified):
        matches = [node for node in nodes if key(node.GetName() or "") == key(name)]
        if len(matches) >= 1 and (key is not simplified or len(matches) == 1):
            return matches[0]
    return None


# --------------------------------------------------------------------------------------------
# Background work (no Qt): the module polls a BackgroundJob with a QTimer
# --------------------------------------------------------------------------------------------


class BackgroundJob:
    """Run ``function(progress=..., cancel=...)`` in a daemon thread.

    The function must not touch MRML or Qt. The main thread polls ``done``, ``fraction`` and
    ``message`` (e.g. from a QTimer), calls ``cancel()`` to request a stop, and on completion
    reads ``result()`` (which re-raises the worker's exception, ``Cancelled`` included).
    """

    def __init__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        import threading

        self._function, self._args, self._kwargs = function, args, kwargs
        self._cancel_requested = threading.Event()
        self._finished = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self.fraction = 0.0
        self.message = ""
        self._thread = threading.Thread(target=self._run, name="LRPSegmentation worker", daemon=True)

    def start(self) -> "BackgroundJob":
        self._thread.start()
        return self

    def _progress(self, fraction: float, message: str) -> None:
        self.fraction, self.message = float(fraction), str(message)

    def _run(self) -> None:
        try:
            self._result = self._function(*self._args, progress=self._progress, cancel=self.cancelled,
                                          **self._kwargs)
        except BaseException as error:  # handed to the main thread by result()
            self._error = error
        finally:
            self._finished.set()

    def cancel(self) -> None:
        """Ask the worker to stop at its next check."""
        self._cancel_requested.set()

    def cancelled(self) -> bool:
        return self._cancel_requested.is_set()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    def result(self) -> Any:
        """The function's return value; raises its exception. Only once ``done``."""
        if not self.done:
            raise RuntimeError("the background job is still running")
        if self._error is not None:
            raise self._error
        return self._result
