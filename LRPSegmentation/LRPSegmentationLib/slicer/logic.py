"""The LRPSegmentation module's Segment / Explain / repaint logic on MRML, without Qt.

Every long operation is split in three phases so the module can keep Slicer responsive:

1. ``prepare_*`` (main thread, reads MRML): input volumes -> numpy arrays on the reference grid,
   normalized as the model package says; the painted segment -> a boolean mask.
2. ``compute.compute_*`` (numpy/torch only, never touches MRML or Qt; in the module they run in
   the computation process, see `worker_client`): the network's prediction, or the LRP region
   explanation plus the per-voxel sequence composition.
3. ``publish.publish_*`` (main thread, writes MRML): the output nodes, in one subject-hierarchy
   folder beside the reference volume.

``segment`` and ``explain`` run the three phases one after the other (what tests and scripts
use). A ``cancel`` callable (returns True to stop) is checked between steps; a ``progress``
callable receives ``(fraction in 0..1, message)``. On cancellation (``jobs.Cancelled``) or any
error, every node created so far is removed before the exception propagates. ``update_region``
recomputes the shares of a repainted region A from the stored composition, without an LRP pass.

The model is a `models.package.ModelPackage`; the computation is `compute`'s (the shared
`inference.Inferer`: the prediction; one traced forward pass for the explanation and the
composition map), exactly what the CLI and the demo run. torch is imported only inside
`compute`'s functions and ``update_region``. A GPU out-of-memory error becomes `jobs.GPUMemoryError`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..imaging import Geometry, check_orientation, grid_with_spacing, orientation_of
from ..normalization import normalize_sequences
from . import mrml, publish
from .compute import ExplainRequest, InputStack, compute_explanation, compute_labels, load_model
from .jobs import CancelCallback, ProgressCallback, check_cancel, report

__all__ = ["check_inputs", "check_reference_orientation", "check_reference_spacing", "explain", "find_volume_by_name",
           "prepare_explain", "prepare_inputs", "read_package_info", "region_mask", "segment", "update_region"]


# --------------------------------------------------------------------------------------------
# Inputs (main thread)
# --------------------------------------------------------------------------------------------


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
    check_reference_orientation(reference_node, package)
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


def check_reference_orientation(reference_node: Any, package: Any) -> None:
    """Refuse a reference volume whose voxel axes do not point as the model's input orientation says.

    The command line flips/permutes such a case into the model's orientation (`pipeline.load_case`,
    `imaging.reorient`); the module creates its outputs on the reference volume's own grid, so here
    the network would see the voxels flipped or permuted and segment silently wrong.

    Raises:
        ValueError: naming both orientations and how to reorient the reference.
    """
    # The module passes the model's description (read, not validated): canonicalize here.
    wanted = check_orientation(getattr(package, "orientation", None), "the model's input orientation")
    if wanted is None:
        return
    geometry = Geometry.from_ijk_to_ras(mrml.ijk_to_ras_matrix(reference_node), mrml.volume_shape(reference_node))
    have = orientation_of(geometry)
    if have != wanted:
        toward = ", ".join(_DIRECTIONS[letter] for letter in wanted)
        raise ValueError(f"the model expects volumes whose voxel axes I, J, K point {wanted} (toward {toward}), the "
                         f"reference volume's point {have}: reorient it (module Orient Scalar Volume) and select the "
                         "reoriented volume as reference")


_DIRECTIONS = {"R": "Right", "L": "Left", "A": "Anterior", "P": "Posterior", "S": "Superior", "I": "Inferior"}


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
    torch is installed): `models.metadata.read_description`, the same reader `load_package` uses.
    ``path`` is the ``<name>.lrpmodel`` folder or its ``model.json``.

    Returns:
        A `models.metadata.PackageDescription` (``name``, ``description``, ``sequences``,
        ``class_names``, ``composite``, ``reference_sequence``, ``path`` (the folder), ...).

    Raises:
        FileNotFoundError / ValueError: not a model package, or one the module cannot use
            (invalid sequence or class names, fewer than two classes).
    """
    from ..models.metadata import check_names, read_description

    description = read_description(path)
    try:
        check_names(description.sequences, "input sequences")
        check_names(description.class_names, "class names")
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if len(description.class_names) < 2:
        raise ValueError(f"{path}: a segmentation model needs at least two classes (background and one more)")
    return description


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
# Segment
# --------------------------------------------------------------------------------------------


def segment(scene: Any, input_nodes: Sequence[Any], reference_node: Any, package: Any, device: str | None = "auto",
            progress: ProgressCallback | None = None, cancel: CancelCallback | None = None,
            model: Any = None, name: str | None = None) -> Any:
    """Normalize the inputs, run the network on the reference grid and add the segmentation.

    Returns:
        The new ``vtkMRMLSegmentationNode`` (in a subject-hierarchy folder beside the reference).
    """
    report(progress, 0.0, "Reading the input volumes")
    inputs = prepare_inputs(input_nodes, reference_node, package)
    check_cancel(cancel)
    model = model if model is not None else load_model(package)
    labels = compute_labels(model, inputs, package, device, cancel, progress)
    check_cancel(cancel)
    report(progress, 0.9, "Creating the segmentation")
    node = publish.publish_segmentation(scene, labels, reference_node, package, name)
    report(progress, 1.0, "Done")
    return node


# --------------------------------------------------------------------------------------------
# Explain
# --------------------------------------------------------------------------------------------


def prepare_explain(input_nodes: Sequence[Any], reference_node: Any, segmentation_node: Any, segment_id: str,
                    package: Any, target: Any, composite: str | None = None, device: str | None = "auto",
                    tolerance: float | None = None, cross_check: bool = False, contrast: bool = False
                    ) -> ExplainRequest:
    """Main-thread part of ``explain``: read the inputs and region A (raises on missing/empty).
    ``target``: a class index (with ``contrast`` for class vs rest; no torch needed) or an
    ``engine.Target``."""
    inputs = prepare_inputs(input_nodes, reference_node, package)
    mask = region_mask(segmentation_node, segment_id, reference_node)
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    return ExplainRequest(inputs, mask, target, composite, device,
                          segment.GetName() if segment is not None else str(segment_id), tolerance, cross_check,
                          contrast)


def explain(scene: Any, input_nodes: Sequence[Any], reference_node: Any, segmentation_node: Any, segment_id: str,
            package: Any, target: Any, composite: str | None = None, device: str | None = "auto",
            progress: ProgressCallback | None = None, cancel: CancelCallback | None = None,
            model: Any = None, tolerance: float | None = None, cross_check: bool = False
            ) -> publish.ExplainOutputs:
    """Explain region A (a segment) with LRP and create all outputs beside the inputs.

    Creates, in one subject-hierarchy folder beside the reference volume, the nodes of
    `publish.publish_explanation`: one relevance volume per sequence, the sequence-composition
    vector volume (lets ``update_region`` recompute the shares without a new LRP pass), the shares
    table (one row per sequence) and its bar chart.

    Args:
        target: class index or ``engine.Target`` (``Target(k, contrast=True)`` = class vs rest).
        composite: composite name (`vocabulary.COMPOSITES`); None = the package's default.
        device: "auto", "cpu", "cuda" or "cuda:N".
        progress: called with (fraction, message).
        cancel: returns True to stop; checked between steps.
        model: an already built model (else ``package.build()``).
        cross_check: also replace each sequence by its mean and add the kept decision margin as a
            table column (C + 1 more forward passes); the table's
            ``publish.WITHOUT_SENSITIVITY_ATTRIBUTE`` names the sequences with relevance but no effect.

    Raises:
        ValueError: a missing input (named), no/empty segment ("the segment 'X' is empty: paint region A
            first"), or an engine error.
        jobs.Cancelled: ``cancel()`` returned True; nothing is left in the scene.
    """
    report(progress, 0.0, "Reading the inputs and region A")
    request = prepare_explain(input_nodes, reference_node, segmentation_node, segment_id, package, target,
                              composite, device, tolerance, cross_check)
    result = compute_explanation(request, package, model, progress, cancel)
    report(progress, 0.95, "Creating the output nodes")
    outputs = publish.publish_explanation(scene, result, reference_node, cancel=cancel)
    report(progress, 1.0, "Done")
    return outputs


def update_region(scene: Any, composition_node: Any, table_node: Any, segmentation_node: Any, segment_id: str,
                  reference_node: Any, sequence_names: Sequence[str] | None = None
                  ) -> tuple[np.ndarray, int, int]:
    """Recompute the shares table for a repainted region A from the stored composition (no LRP pass).

    ``composition_node`` may also be a `publish.ExplainOutputs` (then ``table_node`` may be None),
    e.g. the one `publish.find_explanation` finds in a loaded scene. The same table node is
    updated in place, so the bar chart follows.

    Returns:
        (shares (C,), voxels used, voxels excluded).
    """
    import torch

    from ..engine import region_shares

    if isinstance(composition_node, publish.ExplainOutputs):
        table_node = table_node or composition_node.table_node
        sequence_names = sequence_names or composition_node.sequence_names
        composition_node = composition_node.composition_node
    if composition_node is None or composition_node.GetScene() is not scene:
        raise ValueError("the sequence-composition volume is gone: run Explain again")
    if table_node is None:
        raise ValueError("no shares table to update: run Explain first")
    if sequence_names is None:
        stored = composition_node.GetAttribute(publish.COMPOSITION_ATTRIBUTE)
        sequence_names = stored.split(",") if stored else None
    composition = publish.composition_array(composition_node)
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
    publish.set_table_counts(table_node, n_used, n_excluded)
    return shares, n_used, n_excluded
