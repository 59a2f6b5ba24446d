"""MRML glue: numpy arrays <-> 3D Slicer nodes, without Qt.

The LRPSegmentation module's Logic calls these functions; tests call them on a
headless scene (``LRPSegmentationLib.slicer.headless``). Everything here needs only the
``slicer`` package (the Slicer application or the ``slicer-core`` wheel) and
never imports Qt.

Conventions
-----------
* Arrays are indexed ``(D, H, W) = (K, J, I)``, as ``slicer.util.arrayFromVolume``
  returns them; channel stacks are ``(C, D, H, W)``.
* Geometry travels as a 4x4 IJK->RAS numpy matrix (``ijk_to_ras_matrix``), the
  matrix ``LRPSegmentationLib.imaging.Geometry.from_ijk_to_ras`` accepts. It is
  the volume's own matrix: parent transforms are not folded in.
* Outputs are created on the *reference* volume's grid: same origin, spacing,
  directions and dimensions, and under the same parent transform, so they
  overlay the reference exactly.
* Every function that creates nodes takes an optional subject-hierarchy
  ``folder_item_id`` (see ``create_output_folder``); ``remove_output_folder``
  removes a folder together with everything in it (used on Cancel).
* Functions that remove nodes also remove their display and storage nodes, so
  the scene is left clean with or without the desktop application.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import slicer
import vtk
from slicer.util import arrayFromVolume, arrayFromVTKMatrix, updateVolumeFromArray

DIVERGING_COLOR_TABLE_NAME = "LRP relevance (blue-white-red)"
SEQUENCE_COLUMN = "sequence"
SHARE_COLUMN = "share"

# Matrices that differ by less than this (mm) are treated as the same grid.
_GEOMETRY_TOLERANCE = 1e-5


# --------------------------------------------------------------------------- volumes → arrays


def ijk_to_ras_matrix(volume_node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """The volume's 4x4 IJK->RAS matrix (origin, spacing, directions), float64 (4, 4)."""
    _require_volume(volume_node, "volume")
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return arrayFromVTKMatrix(matrix)


def volume_array(volume_node: slicer.vtkMRMLScalarVolumeNode) -> tuple[np.ndarray, np.ndarray]:
    """Copy of a scalar volume's voxels and its geometry.

    Returns:
        ``(array, ijk_to_ras)``: ``array`` float32 (D, H, W) -- a copy, safe to modify;
        ``ijk_to_ras`` float64 (4, 4).
    """
    _require_volume(volume_node, "volume")
    return np.array(arrayFromVolume(volume_node), dtype=np.float32), ijk_to_ras_matrix(volume_node)


def arrays_on_reference(
    volume_nodes: Sequence[slicer.vtkMRMLScalarVolumeNode | None],
    reference_node: slicer.vtkMRMLScalarVolumeNode,
    sequence_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Stack the input volumes on the reference volume's voxel grid.

    Inputs already on the reference grid are copied as they are; the others are
    resampled by `resample_onto` (trilinear, nearest neighbour for label maps, the
    parent transforms of the input AND of the reference applied; voxels outside the
    input become 0). The output keeps each input's voxel type while resampling, so
    integer MRI is rounded to integers before the float32 cast.

    Args:
        volume_nodes: C scalar volumes, one per MRI sequence; None = not selected.
        reference_node: the volume whose grid the result lives on.
        sequence_names: C names used in error messages (default "input 1", ...).

    Returns:
        float32 (C, D, H, W), (D, H, W) being the reference's array shape.

    Raises:
        ValueError: an input is None (the message names its sequence), is not a
            scalar volume with voxels, or ``sequence_names`` has the wrong length.
    """
    if sequence_names is None:
        sequence_names = [f"input {index + 1}" for index in range(len(volume_nodes))]
    if len(sequence_names) != len(volume_nodes):
        raise ValueError(
            f"Got {len(volume_nodes)} volumes but {len(sequence_names)} sequence names; give one name per volume."
        )
    if len(volume_nodes) == 0:
        raise ValueError("No input volumes given; select at least one volume.")
    _require_volume(reference_node, "reference volume")
    for node, name in zip(volume_nodes, sequence_names):
        if node is None:
            raise ValueError(f"No volume selected for sequence '{name}'. Select a volume for every input sequence.")
        _require_volume(node, f"volume for sequence '{name}'")

    reference_shape = volume_shape(reference_node)
    stacked = np.empty((len(volume_nodes), *reference_shape), dtype=np.float32)
    for channel, node in enumerate(volume_nodes):
        if _same_grid(node, reference_node):
            stacked[channel] = arrayFromVolume(node)
            continue
        stacked[channel] = resample_onto(node, reference_node)
    return stacked


def resample_onto(volume_node: slicer.vtkMRMLScalarVolumeNode,
                  reference_node: slicer.vtkMRMLScalarVolumeNode) -> np.ndarray:
    """The volume's voxels on the reference volume's grid, in world space: (D, H, W) of the reference.

    The pipeline of ``vtkSlicerVolumesLogic.ResampleVolumeToReferenceVolume`` (the same
    ``vtkImageReslice``, trilinear or nearest neighbour for label maps, the input's voxel type,
    0 outside the input), with one difference: that function applies the *input's* inverse
    parent transform where the reference's belongs, so a transform on the reference volume is
    ignored (Slicer 5.10). Here the chain is input IJK -> RAS -> input's parent transform to
    world -> reference's parent transform from world -> reference IJK, so a transformed
    reference (e.g. after registration) gets its inputs where it shows them. Non-linear
    transforms are applied too. Nothing is added to the scene.
    """
    from vtk.util.numpy_support import vtk_to_numpy

    _require_volume(volume_node, "volume")
    _require_volume(reference_node, "reference volume")
    chain = vtk.vtkGeneralTransform()
    chain.PostMultiply()
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    chain.Concatenate(ijk_to_ras)
    for node, to_world in ((volume_node, True), (reference_node, False)):
        parent = node.GetParentTransformNode()
        if parent is not None:
            transform = vtk.vtkGeneralTransform()
            if to_world:
                parent.GetTransformToWorld(transform)
            else:
                parent.GetTransformFromWorld(transform)
            chain.Concatenate(transform)
    ras_to_ijk = vtk.vtkMatrix4x4()
    reference_node.GetRASToIJKMatrix(ras_to_ijk)
    chain.Concatenate(ras_to_ijk)
    chain.Inverse()  # vtkImageReslice maps output voxels to input voxels

    reslice = vtk.vtkImageReslice()
    reslice.SetInputData(volume_node.GetImageData())
    reslice.SetOutputOrigin(0, 0, 0)
    reslice.SetOutputSpacing(1, 1, 1)
    columns, rows, slices = reference_node.GetImageData().GetDimensions()
    reslice.SetOutputExtent(0, columns - 1, 0, rows - 1, 0, slices - 1)
    linear = vtk.vtkTransform()
    # vtkImageReslice is faster with a linear transform, as in Slicer's function.
    linear_chain = slicer.vtkMRMLTransformNode.IsGeneralTransformLinear(chain, linear)
    reslice.SetResliceTransform(linear if linear_chain else chain)
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        reslice.SetInterpolationModeToNearestNeighbor()
    else:
        reslice.SetInterpolationModeToLinear()
    reslice.Update()
    voxels = vtk_to_numpy(reslice.GetOutput().GetPointData().GetScalars())
    return voxels.reshape(slices, rows, columns).copy()


def volume_shape(volume_node: slicer.vtkMRMLVolumeNode) -> tuple[int, int, int]:
    """Array shape (D, H, W) of a volume: its image dimensions (I, J, K) reversed."""
    _require_volume(volume_node, "volume")
    columns, rows, slices = volume_node.GetImageData().GetDimensions()
    return slices, rows, columns


# --------------------------------------------------------------------------- segmentations


def segment_mask(
    segmentation_node: slicer.vtkMRMLSegmentationNode,
    segment_id: str,
    reference_node: slicer.vtkMRMLScalarVolumeNode,
) -> np.ndarray:
    """One segment as a boolean mask on the reference volume's grid.

    Same result as ``slicer.util.arrayFromSegmentBinaryLabelmap`` but uses the
    segmentation's own scene and leaves no temporary nodes behind.

    Returns:
        bool (D, H, W). An EMPTY segment gives an all-False mask (no error):
        the caller decides whether that is acceptable.

    Raises:
        ValueError: no segmentation, or ``segment_id`` is not one of its segments
            (look an ID up by name with ``GetSegmentation().GetSegmentIdBySegmentName``).
    """
    if segmentation_node is None:
        raise ValueError("No segmentation selected; select the segmentation that contains the region.")
    _require_volume(reference_node, "reference volume")
    segmentation = segmentation_node.GetSegmentation()
    if not segment_id or segmentation.GetSegment(segment_id) is None:
        known = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        raise ValueError(
            f"Segment '{segment_id}' is not in segmentation '{segmentation_node.GetName()}'; its segments are {known}."
        )
    scene = segmentation_node.GetScene()
    segment_ids = vtk.vtkStringArray()
    segment_ids.InsertNextValue(segment_id)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__LRP temporary segment export__")
    try:
        exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, segment_ids, labelmap, reference_node
        )
        if not exported:
            raise RuntimeError(f"Slicer could not export segment '{segment_id}' onto the reference grid.")
        mask = arrayFromVolume(labelmap) != 0
    finally:
        # The export also creates a display node and a colour table for the label map.
        display_node = labelmap.GetDisplayNode()
        color_node = display_node.GetColorNode() if display_node is not None else None
        remove_nodes(scene, [labelmap, color_node])
    if mask.shape != volume_shape(reference_node):  # defensive: never silently return a wrong grid
        raise RuntimeError(f"Exported mask has shape {mask.shape}, expected {volume_shape(reference_node)}.")
    return mask


def add_segmentation_from_labels(
    scene: slicer.vtkMRMLScene,
    labels: np.ndarray,
    class_names: Sequence[str],
    colors: Sequence[Sequence[float]],
    reference_node: slicer.vtkMRMLScalarVolumeNode,
    name: str,
    folder_item_id: int | None = None,
) -> slicer.vtkMRMLSegmentationNode:
    """A segmentation node with one segment per non-background class.

    Args:
        labels: integer (D, H, W) on the reference grid; value k means class k,
            0 is background.
        class_names: name of every class, indexed by label value (index 0 = background,
            not turned into a segment).
        colors: RGB in 0..1 per class, indexed like ``class_names`` (index 0 unused).
        reference_node: gives the geometry (the segmentation's reference image geometry).
        name: node name.
        folder_item_id: subject-hierarchy folder to put the node in, or None.

    Returns:
        The new node. Segment i (0-based) is class i+1, named ``class_names[i+1]``
        with colour ``colors[i+1]``; a class absent from ``labels`` gives an empty segment.
    """
    _require_volume(reference_node, "reference volume")
    labels = np.asarray(labels)
    if labels.shape != volume_shape(reference_node):
        raise ValueError(f"labels have shape {labels.shape} but the reference volume is {volume_shape(reference_node)}.")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != np.bool_:
        raise ValueError(f"labels must be an integer array, got {labels.dtype}.")
    if len(class_names) < 2:
        raise ValueError("class_names needs the background (index 0) and at least one class.")
    if len(colors) != len(class_names):
        raise ValueError(f"Got {len(class_names)} class names but {len(colors)} colours; give one colour per class.")
    for class_name, color in zip(class_names[1:], colors[1:]):
        if len(color) != 3 or not all(0.0 <= component <= 1.0 for component in color):
            raise ValueError(f"Colour of class '{class_name}' must be 3 numbers in 0..1, got {tuple(color)}.")
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(
            f"labels range {labels.min()}..{labels.max()} does not fit the {len(class_names)} class names "
            f"(values must be 0..{len(class_names) - 1})."
        )

    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    label_volume = None
    try:
        segmentation_node.CreateDefaultDisplayNodes()
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
        segmentation_node.SetAndObserveTransformNodeID(reference_node.GetTransformNodeID())
        segment_ids = vtk.vtkStringArray()  # i-th ID receives label value i+1
        for class_name, color in zip(class_names[1:], colors[1:]):
            segment_ids.InsertNextValue(
                segmentation_node.GetSegmentation().AddEmptySegment("", class_name, [float(c) for c in color])
            )
        label_volume = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__LRP temporary labels__")
        label_volume.CopyOrientation(reference_node)
        label_volume.SetAndObserveTransformNodeID(reference_node.GetTransformNodeID())
        updateVolumeFromArray(label_volume, labels.astype(np.uint8 if len(class_names) <= 256 else np.int32))
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
            label_volume, segmentation_node, segment_ids
        ):
            raise RuntimeError(f"Slicer could not import the labels into segmentation '{name}'.")
    except Exception:
        remove_nodes(scene, [segmentation_node])
        raise
    finally:
        remove_nodes(scene, [label_volume])
    if folder_item_id is not None:
        move_into_folder(scene, [segmentation_node], folder_item_id)
    return segmentation_node


# --------------------------------------------------------------------------- relevance volumes


def create_diverging_color_table(
    scene: slicer.vtkMRMLScene, name: str = DIVERGING_COLOR_TABLE_NAME
) -> slicer.vtkMRMLColorTableNode:
    """The 256-entry blue -> white -> red colour table, created once per scene.

    Entry 0 is pure blue (0, 0, 1), entries 127/128 are white to within 1/255,
    entry 255 is pure red (1, 0, 0); with a window symmetric around 0, negative
    relevance is blue and positive is red. An existing colour table node with this
    name is returned instead of creating a duplicate.
    """
    existing = scene.GetFirstNode(name, "vtkMRMLColorTableNode")
    if existing is not None:
        return existing
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    table.SetTypeToUser()
    table.SetNumberOfColors(256)
    for entry, t in enumerate(np.linspace(0.0, 1.0, 256)):
        if t < 0.5:  # blue -> white
            red = green = 2.0 * t
            blue = 1.0
        else:  # white -> red
            red = 1.0
            green = blue = 2.0 * (1.0 - t)
        table.SetColor(entry, f"{2.0 * t - 1.0:+.3f}", red, green, blue, 1.0)
    return table


def add_relevance_volumes(
    scene: slicer.vtkMRMLScene,
    maps: np.ndarray,
    names: Sequence[str],
    reference_node: slicer.vtkMRMLScalarVolumeNode,
    folder_item_id: int | None = None,
    window_percentile: float = 100.0,
) -> list[slicer.vtkMRMLScalarVolumeNode]:
    """One scalar volume per relevance map, with one shared symmetric window.

    All maps get the same window so the sequences can be compared by eye:
    level 0 and window ``2 * p``, where ``p`` is the ``window_percentile``-th
    percentile of |R| over ALL maps together (100 = max |R|, the default; e.g.
    99.5 ignores a few hot voxels). All-zero maps get window 2. The display uses
    ``create_diverging_color_table`` (blue < 0 < red).

    Args:
        maps: float (C, D, H, W) on the reference grid; finite values.
        names: C node names.
        reference_node: gives origin, spacing, directions and parent transform.
        folder_item_id: subject-hierarchy folder to put the volumes in, or None.
        window_percentile: in (0, 100].

    Returns:
        The C new volume nodes, in the order of ``maps``. If creation fails half-way,
        the volumes created so far are removed before the error propagates.
    """
    _require_volume(reference_node, "reference volume")
    maps = np.asarray(maps)
    if maps.ndim != 4 or maps.shape[1:] != volume_shape(reference_node):
        raise ValueError(
            f"maps must be (C, D, H, W) with (D, H, W) = {volume_shape(reference_node)} (the reference), "
            f"got {maps.shape}."
        )
    if len(names) != maps.shape[0]:
        raise ValueError(f"Got {maps.shape[0]} maps but {len(names)} names; give one name per map.")
    if not 0.0 < window_percentile <= 100.0:
        raise ValueError(f"window_percentile must be in (0, 100], got {window_percentile}.")
    if not np.all(np.isfinite(maps)):
        raise ValueError("Relevance maps contain NaN or infinite values.")

    half_window = float(np.percentile(np.abs(maps), window_percentile)) if maps.size else 0.0
    if half_window <= 0.0:
        half_window = 1.0  # all-zero maps: any positive window shows them white
    color_table = create_diverging_color_table(scene)

    created: list[slicer.vtkMRMLScalarVolumeNode] = []
    try:
        for relevance, name in zip(maps, names):
            volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
            created.append(volume)
            volume.CopyOrientation(reference_node)
            volume.SetAndObserveTransformNodeID(reference_node.GetTransformNodeID())
            updateVolumeFromArray(volume, relevance.astype(np.float32))
            volume.CreateDefaultDisplayNodes()
            display = volume.GetDisplayNode()
            display.SetAndObserveColorNodeID(color_table.GetID())
            display.AutoWindowLevelOff()
            display.SetWindowLevel(2.0 * half_window, 0.0)
        if folder_item_id is not None:
            move_into_folder(scene, created, folder_item_id)
    except Exception:
        remove_nodes(scene, created)
        raise
    return created


# --------------------------------------------------------------------------- subject hierarchy


def create_output_folder(scene: slicer.vtkMRMLScene, name: str, beside_node: slicer.vtkMRMLNode | None) -> int:
    """A subject-hierarchy folder next to ``beside_node`` (typically the input volume).

    The folder's parent is the parent of ``beside_node``'s item (its study or
    patient, or the scene); if the node has no item, or is None, the folder goes
    under the scene.

    Returns:
        The folder's subject-hierarchy item ID.
    """
    subject_hierarchy = _subject_hierarchy(scene)
    parent_id = subject_hierarchy.GetSceneItemID()
    if beside_node is not None:
        beside_item = subject_hierarchy.GetItemByDataNode(beside_node)
        if beside_item:
            parent_id = subject_hierarchy.GetItemParent(beside_item)
    return subject_hierarchy.CreateFolderItem(parent_id, name)


def move_into_folder(scene: slicer.vtkMRMLScene, nodes: Sequence[slicer.vtkMRMLNode], folder_item_id: int) -> None:
    """Put data nodes under a subject-hierarchy folder (creating their items if missing)."""
    subject_hierarchy = _subject_hierarchy(scene)
    if not folder_item_id or subject_hierarchy.GetItemLevel(folder_item_id) != "Folder":
        raise ValueError(f"Subject-hierarchy item {folder_item_id} is not a folder; use create_output_folder().")
    for node in nodes:
        item_id = subject_hierarchy.GetItemByDataNode(node)
        if item_id:
            subject_hierarchy.SetItemParent(item_id, folder_item_id)
        else:  # no Slicer application adding items automatically
            subject_hierarchy.CreateItem(folder_item_id, node)


def remove_output_folder(scene: slicer.vtkMRMLScene, folder_item_id: int) -> int:
    """Remove a folder and every data node under it (with display/storage nodes).

    Used on Cancel to drop partially created outputs. The shared diverging colour
    table is not in the folder and stays. Returns the number of data nodes removed.
    """
    subject_hierarchy = _subject_hierarchy(scene)
    child_ids = vtk.vtkIdList()
    subject_hierarchy.GetItemChildren(folder_item_id, child_ids, True)
    data_nodes = [subject_hierarchy.GetItemDataNode(child_ids.GetId(i)) for i in range(child_ids.GetNumberOfIds())]
    data_nodes = [node for node in data_nodes if node is not None]
    remove_nodes(scene, data_nodes)
    subject_hierarchy.RemoveItem(folder_item_id, False, True)
    return len(data_nodes)


def remove_nodes(scene: slicer.vtkMRMLScene, nodes: Sequence[slicer.vtkMRMLNode | None]) -> None:
    """Remove nodes with their display and storage nodes and subject-hierarchy items.

    None entries and nodes no longer in ``scene`` are skipped, so it is safe to
    call on a partially built list.
    """
    subject_hierarchy = _subject_hierarchy(scene)
    for node in nodes:
        if node is None or node.GetScene() is not scene:
            continue
        attached = []
        if node.IsA("vtkMRMLDisplayableNode"):
            attached += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        if node.IsA("vtkMRMLStorableNode"):
            attached += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
        item_id = subject_hierarchy.GetItemByDataNode(node)
        if item_id:
            subject_hierarchy.RemoveItem(item_id, False, False)
        scene.RemoveNode(node)
        for attached_node in attached:
            if attached_node is not None and attached_node.GetScene() is scene:
                scene.RemoveNode(attached_node)


# --------------------------------------------------------------------------- table and chart


def update_shares_table(
    table_node: slicer.vtkMRMLTableNode | None,
    scene: slicer.vtkMRMLScene,
    names: Sequence[str],
    shares: Sequence[float],
    extra_columns: Mapping[str, Sequence[float]] | None = None,
    table_name: str = "LRP relevance shares",
    folder_item_id: int | None = None,
) -> slicer.vtkMRMLTableNode:
    """Write one row per sequence: "sequence" (string), "share" (float), extras.

    Pass the table returned by an earlier call to refresh it in place (same node,
    so a chart built on it follows); pass None to create a new one (named
    ``table_name``, put in ``folder_item_id`` if given).

    Args:
        names: N sequence names.
        shares: N numbers (e.g. each sequence's fraction of the total relevance).
        extra_columns: column name -> N numbers, appended after "share".
    """
    if len(names) != len(shares):
        raise ValueError(f"Got {len(names)} sequence names but {len(shares)} shares; give one share per name.")
    extra_columns = dict(extra_columns or {})
    for column_name, values in extra_columns.items():
        if column_name in (SEQUENCE_COLUMN, SHARE_COLUMN):
            raise ValueError(f"Extra column name '{column_name}' clashes with a built-in column; rename it.")
        if len(values) != len(names):
            raise ValueError(f"Extra column '{column_name}' has {len(values)} values, expected {len(names)}.")

    sequence_column = vtk.vtkStringArray()
    sequence_column.SetName(SEQUENCE_COLUMN)
    for name in names:
        sequence_column.InsertNextValue(str(name))
    table = vtk.vtkTable()
    table.AddColumn(sequence_column)
    for column_name, values in [(SHARE_COLUMN, shares), *extra_columns.items()]:
        column = vtk.vtkFloatArray()
        column.SetName(column_name)
        for value in values:
            column.InsertNextValue(float(value))
        table.AddColumn(column)

    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", table_name)
        if folder_item_id is not None:
            move_into_folder(scene, [table_node], folder_item_id)
    table_node.SetAndObserveTable(table)  # one Modified event; observers (charts, views) refresh
    return table_node


def create_shares_bar_chart(
    scene: slicer.vtkMRMLScene,
    table_node: slicer.vtkMRMLTableNode,
    chart_name: str = "LRP relevance shares",
    folder_item_id: int | None = None,
) -> slicer.vtkMRMLPlotChartNode:
    """A bar chart of the table's "share" column, bars labelled by "sequence".

    Creates a ``vtkMRMLPlotSeriesNode`` (bar type) referencing the table and a
    ``vtkMRMLPlotChartNode`` showing it. The series reads the table node, so
    later ``update_shares_table(table_node, ...)`` calls show up without new nodes.
    Reach the series with ``chart.GetNthPlotSeriesNode(0)``.
    """
    if table_node is None:
        raise ValueError("No shares table given; create it with update_shares_table() first.")
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{chart_name} bars")
    chart = None
    try:
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
        series.SetYColumnName(SHARE_COLUMN)
        series.SetLabelColumnName(SEQUENCE_COLUMN)
        series.SetXColumnName("")  # bar charts use the row index as x
        series.SetColor(0.85, 0.2, 0.15)
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", chart_name)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
        chart.SetTitle("Share of relevance per sequence")
        chart.SetXAxisTitle("Sequence")
        chart.SetYAxisTitle("Share of relevance")
        chart.SetLegendVisibility(False)
        if folder_item_id is not None:
            move_into_folder(scene, [chart, series], folder_item_id)
    except Exception:
        remove_nodes(scene, [chart, series])
        raise
    return chart


# --------------------------------------------------------------------------- slice views


def set_foreground_overlay(
    scene: slicer.vtkMRMLScene,
    background_node: slicer.vtkMRMLVolumeNode | None,
    foreground_node: slicer.vtkMRMLVolumeNode | None,
    opacity: float = 0.5,
) -> int:
    """Show ``foreground_node`` over ``background_node`` in every slice view.

    Sets each slice composite node's background and foreground volume and the
    foreground opacity. None leaves that layer unchanged. A scene without slice
    views (e.g. a headless test scene) is fine: nothing happens.

    Returns:
        The number of slice views updated.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in 0..1, got {opacity}.")
    composite_nodes = [
        scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))
    ]
    for composite in composite_nodes:
        if background_node is not None:
            composite.SetBackgroundVolumeID(background_node.GetID())
        if foreground_node is not None:
            composite.SetForegroundVolumeID(foreground_node.GetID())
        composite.SetForegroundOpacity(opacity)
    return len(composite_nodes)


# --------------------------------------------------------------------------- helpers


def _require_volume(node: slicer.vtkMRMLNode | None, what: str) -> None:
    """ValueError unless ``node`` is a scalar volume (or label map) with voxels."""
    if node is None:
        raise ValueError(f"No {what} selected.")
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        raise ValueError(f"The {what} '{node.GetName()}' is a {node.GetClassName()}, not a scalar volume.")
    if node.GetImageData() is None:
        raise ValueError(f"The {what} '{node.GetName()}' has no voxel data.")


def _same_grid(node: slicer.vtkMRMLVolumeNode, reference_node: slicer.vtkMRMLVolumeNode) -> bool:
    """Same dimensions, IJK->RAS matrix and parent transform: no resampling needed."""
    return (
        volume_shape(node) == volume_shape(reference_node)
        and node.GetTransformNodeID() == reference_node.GetTransformNodeID()
        and np.allclose(ijk_to_ras_matrix(node), ijk_to_ras_matrix(reference_node), atol=_GEOMETRY_TOLERANCE)
    )


def _subject_hierarchy(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLSubjectHierarchyNode:
    """The scene's subject hierarchy node, re-created if the scene was cleared."""
    subject_hierarchy = scene.GetSubjectHierarchyNode()
    if subject_hierarchy is None or subject_hierarchy.GetScene() is not scene:
        subject_hierarchy = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    return subject_hierarchy
