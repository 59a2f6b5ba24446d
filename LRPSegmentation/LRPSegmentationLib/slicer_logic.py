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
from .imaging import normalize_sequences

__all__ = [
    "BackgroundJob",
    "Cancelled",
    "GPUMemoryError",
    "ExplainOutputs",
    "ExplainRequest",
    "ExplainResult",
    "InputStack",
    "COMPOSITION_ATTRIBUTE",
    "check_inputs",
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
    stacked = mrml.arrays_on_reference(input_nodes, reference_node, names)
    methods = getattr(package, "normalization", None)
    if methods:
        stacked = normalize_sequences(stacked, methods, names)
    return InputStack(stacked.astype(np.float32, copy=False), names, tuple(stacked.shape[1:]))


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
    """

    relevance: np.ndarray
    composition: np.ndarray
    shares: np.ndarray
    positive_shares: np.ndarray
    n_used: int
    n_excluded: int
    diagnostics: dict[str, float] = field(default_factory=dict)


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


def prepare_explain(input_nodes: Sequence[Any], reference_node: Any, segmentation_node: Any, segment_id: str,
                    package: Any, target: Any, composite: str | None = None, device: str | None = "auto",
                    tolerance: float | None = None) -> ExplainRequest:
    """Main-thread part of ``explain``: read the inputs and region A (raises on missing/empty)."""
    inputs = prepare_inputs(input_nodes, reference_node, package)
    mask = region_mask(segmentation_node, segment_id, reference_node)
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    return ExplainRequest(inputs, mask, target, composite, device,
                          segment.GetName() if segment is not None else str(segment_id), tolerance)


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
    try:
        _check_cancel(cancel)
        relevance_nodes = mrml.add_relevance_volumes(
            scene, result.relevance, [f"{folder_name} relevance {name}" for name in names], reference_node, folder)
        _check_cancel(cancel)
        composition_node = _add_composition_volume(scene, result.composition, names, reference_node,
                                                   f"{folder_name} sequence composition", folder)
        _check_cancel(cancel)
        table = mrml.update_shares_table(None, scene, names, result.shares,
                                         extra_columns={"positive share": result.positive_shares},
                                         table_name=f"{folder_name} shares", folder_item_id=folder)
        _set_table_counts(table, result.n_used, result.n_excluded)
        chart = mrml.create_shares_bar_chart(scene, table, f"{folder_name} shares chart", folder)
        _check_cancel(cancel)
        if show and relevance_nodes:
            mrml.set_foreground_overlay(scene, reference_node, relevance_nodes[0], 0.5)
    except BaseException:
        mrml.remove_output_folder(scene, folder)
        if not color_table_existed:
            mrml.remove_nodes(scene, [scene.GetFirstNode(mrml.DIVERGING_COLOR_TABLE_NAME, "vtkMRMLColorTableNode")])
        raise
    return ExplainOutputs(folder, relevance_nodes, composition_node, table, chart,
                          np.asarray(result.shares), list(names), result.n_used, result.n_excluded)


def explain(scene: Any, input_nodes: Sequence[Any], reference_node: Any, segmentation_node: Any, segment_id: str,
            package: Any, target: Any, composite: str | None = None, device: str | None = "auto",
            progress: ProgressCallback | None = None, cancel: CancelCallback | None = None,
            model: Any = None, tolerance: float | None = None) -> ExplainOutputs:
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

    Raises:
        ValueError: a missing input (named), no/empty segment ("the segment 'X' is empty: paint region A
            first"), or an engine error.
        Cancelled: ``cancel()`` returned True; nothing is left in the scene.
    """
    _report(progress, 0.0, "Reading the inputs and region A")
    request = prepare_explain(input_nodes, reference_node, segmentation_node, segment_id, package, target,
                              composite, device, tolerance)
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
