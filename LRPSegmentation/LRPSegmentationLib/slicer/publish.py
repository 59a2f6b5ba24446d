"""The one MRML form of a segmentation and of an explanation (main thread, no Qt, no torch).

The module's Segment and Explain buttons and the scene export (`scene.save_slicer_scene`, the
demo's ``.mrml``) all write through `publish_segmentation` / `publish_explanation`, so a saved
scene has exactly the layout the module creates and `find_explanation` finds it again after
loading (``update_region`` then works on it). An explanation of region A is, inside one
subject-hierarchy folder ``<folder>`` beside the reference volume:

- ``<folder> relevance <sequence>``: one scalar volume per sequence (diverging colour table, one
  symmetric window shared by all sequences);
- ``<folder> sequence composition``: a vector volume of C components, each voxel's per-sequence
  composition (attribute `COMPOSITION_ATTRIBUTE`: the sequence names); it references the
  relevance volumes, the table and the chart (roles `RELEVANCE_REFERENCE`, `TABLE_REFERENCE`,
  `CHART_REFERENCE`), which is how a loaded scene is read back;
- ``<folder> shares``: a table of one row per sequence -- columns ``sequence``, ``share``,
  ``positive share``, with the decision shares `DECISION_SHARE_COLUMN` ("decision share
  (Shapley)") beside them, and with the cross-check `MARGIN_COLUMN`; attributes `USED_ATTRIBUTE`,
  `EXCLUDED_ATTRIBUTE`, (cross-check) `WITHOUT_SENSITIVITY_ATTRIBUTE` and (decision shares)
  `WITHOUT_DECISION_ATTRIBUTE`, `MARGIN_ALL_ATTRIBUTE`, `MARGIN_NONE_ATTRIBUTE`;
- ``<folder> shares chart``: its bar chart (LRP share; with the decision shares a second series).

The caution line (`ExplainOutputs.caution`) names the sequences with LRP relevance but (almost) no
share of the decision when the decision shares were computed (`vocabulary.decision_caution`), else
those the cross-check flags (`vocabulary.distractor_caution`); a table whose column is gone (a
repainted region's shares) gives no caution: its flags belonged to the earlier region.

The composition volume and the segmentation reference the reference volume (role
`REFERENCE_REFERENCE`), so re-running Segment or Explain can find its previous outputs
(`replaced_outputs`) and remove them (`remove_outputs`) instead of piling up folders.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import vocabulary
from . import mrml
from .compute import ExplainResult  # the compute phase's result, written here
from .jobs import CancelCallback, check_cancel

__all__ = ["COMPOSITION_ATTRIBUTE", "DECISION_SHARE_COLUMN", "EXCLUDED_ATTRIBUTE", "MARGIN_ALL_ATTRIBUTE",
           "MARGIN_COLUMN", "MARGIN_NONE_ATTRIBUTE", "POSITIVE_SHARE_COLUMN", "USED_ATTRIBUTE",
           "WITHOUT_DECISION_ATTRIBUTE", "WITHOUT_SENSITIVITY_ATTRIBUTE", "ExplainOutputs", "add_color_legends",
           "composition_array", "explanation_outputs", "find_explanation", "find_explanations",
           "publish_explanation", "publish_segmentation", "relevance_order",
           "remove_outputs", "replaced_outputs", "set_table_counts"]

#: Attribute of the composition volume: the comma-separated sequence names of its components.
COMPOSITION_ATTRIBUTE = "LRPSegmentation.CompositionSequences"
#: Attributes of the shares table: region voxels used / excluded by the normalization.
USED_ATTRIBUTE = "LRPSegmentation.VoxelsUsed"
EXCLUDED_ATTRIBUTE = "LRPSegmentation.VoxelsExcluded"
#: With the cross-check: the table column of each sequence's kept decision margin, and the table
#: attribute naming the sequences whose relevance the decision does not back (comma-separated).
MARGIN_COLUMN = "decision margin kept"
WITHOUT_SENSITIVITY_ATTRIBUTE = "LRPSegmentation.RelevanceWithoutSensitivity"
POSITIVE_SHARE_COLUMN = "positive share"
#: With the decision shares: the column of each sequence's Shapley share of A's decision, the
#: attribute naming the sequences with relevance but (almost) no share of it (comma-separated),
#: and A's decision margin with every sequence / with none.
DECISION_SHARE_COLUMN = vocabulary.DECISION_SHARE_LABEL
WITHOUT_DECISION_ATTRIBUTE = "LRPSegmentation.RelevanceWithoutDecision"
MARGIN_ALL_ATTRIBUTE = "LRPSegmentation.DecisionMarginAll"
MARGIN_NONE_ATTRIBUTE = "LRPSegmentation.DecisionMarginNone"
#: Node reference roles of the composition volume (saved in the .mrml).
RELEVANCE_REFERENCE = "LRPSegmentation.Relevance"
TABLE_REFERENCE = "LRPSegmentation.SharesTable"
CHART_REFERENCE = "LRPSegmentation.SharesChart"
#: Node reference role of a published segmentation and composition volume: the reference volume.
REFERENCE_REFERENCE = "LRPSegmentation.ReferenceVolume"
#: Attribute of a published segmentation: the name of the model package that made it.
SEGMENTATION_ATTRIBUTE = "LRPSegmentation.Model"
#: Class of the colour legend display node (desktop Slicer; absent in a bare slicer-core scene).
COLOR_LEGEND_NODE_CLASS = "vtkMRMLColorLegendDisplayNode"


# --------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------


def publish_segmentation(scene: Any, labels: np.ndarray, reference_node: Any, package: Any,
                         name: str | None = None, folder_item_id: int | None = None) -> Any:
    """The (D, H, W) label map as a segmentation node (one segment per class) on the reference grid,
    named ``<reference> LRP segmentation`` in a folder of its own (unless ``folder_item_id``)."""
    class_names = list(package.class_names)
    colors = getattr(package, "class_colors", None) or vocabulary.default_class_colors(len(class_names))
    colors = [tuple(color) for color in colors]
    name = name or f"{reference_node.GetName()} LRP segmentation"
    own_folder = folder_item_id is None
    if own_folder:
        folder_item_id = mrml.create_output_folder(scene, name, reference_node)
    try:
        node = mrml.add_segmentation_from_labels(scene, labels, class_names, colors, reference_node, name,
                                                 folder_item_id)
        node.SetAttribute(SEGMENTATION_ATTRIBUTE, str(getattr(package, "name", "") or "model"))
        node.SetNodeReferenceID(REFERENCE_REFERENCE, reference_node.GetID())
        return node
    except BaseException:
        if own_folder:
            mrml.remove_output_folder(scene, folder_item_id)
        raise


# --------------------------------------------------------------------------------------------
# Explanation
# --------------------------------------------------------------------------------------------


@dataclass
class ExplainOutputs:
    """The nodes of one published explanation, all inside ``folder_item_id``."""

    folder_item_id: int
    relevance_nodes: list[Any]
    composition_node: Any
    table_node: Any
    chart_node: Any
    shares: np.ndarray
    sequence_names: list[str]
    n_used: int
    n_excluded: int
    caution: str = ""  # sequences whose relevance the decision does not back (decision shares or cross-check)
    positive_shares: np.ndarray | None = None  # (C,) share of the positive relevance, when known
    decision_shares: np.ndarray | None = None  # (C,) Shapley share of the decision, when computed


def publish_explanation(scene: Any, result: ExplainResult, reference_node: Any, folder_name: str | None = None,
                        cancel: CancelCallback | None = None, show: bool = True, opacity: float = 0.5
                        ) -> ExplainOutputs:
    """Create the explanation's folder and nodes (see the module docstring) beside the reference.

    Args:
        folder_name: default ``LRP <region name>``; every node name starts with it.
        cancel: checked between the nodes.
        show: put the most relevant sequence's map (first in `relevance_order`) over the reference in the slice
            views, at ``opacity``, with a colour legend.

    On ``Cancelled`` or any error, the folder and everything in it (and the colour table, if this
    call created it) are removed before the exception propagates.
    """
    names = list(result.sequence_names)
    folder_name = folder_name or f"LRP {result.region_name}"
    color_table_existed = scene.GetFirstNode(mrml.DIVERGING_COLOR_TABLE_NAME, "vtkMRMLColorTableNode") is not None
    folder = mrml.create_output_folder(scene, folder_name, reference_node)
    try:
        check_cancel(cancel)
        relevance_nodes = mrml.add_relevance_volumes(
            scene, result.relevance, [f"{folder_name} relevance {name}" for name in names], reference_node, folder)
        check_cancel(cancel)
        composition_node = _add_composition_volume(scene, result.composition, names, reference_node,
                                                   f"{folder_name} sequence composition", folder)
        check_cancel(cancel)
        table = _add_shares_table(scene, result, f"{folder_name} shares", folder)
        chart = mrml.create_shares_bar_chart(scene, table, f"{folder_name} shares chart", folder)
        if result.decision_shares is not None:
            _add_decision_series(scene, chart, table, f"{folder_name} shares chart", folder)
        for node in relevance_nodes:
            composition_node.AddNodeReferenceID(RELEVANCE_REFERENCE, node.GetID())
        composition_node.SetNodeReferenceID(TABLE_REFERENCE, table.GetID())
        composition_node.SetNodeReferenceID(CHART_REFERENCE, chart.GetID())
        composition_node.SetNodeReferenceID(REFERENCE_REFERENCE, reference_node.GetID())
        check_cancel(cancel)
        if show and relevance_nodes:
            strongest = relevance_nodes[relevance_order(result.positive_shares)[0]]
            mrml.set_foreground_overlay(scene, reference_node, strongest, opacity)
            add_color_legends(relevance_nodes, "Relevance")
    except BaseException:
        mrml.remove_output_folder(scene, folder)
        if not color_table_existed:
            mrml.remove_nodes(scene, [scene.GetFirstNode(mrml.DIVERGING_COLOR_TABLE_NAME, "vtkMRMLColorTableNode")])
        raise
    return ExplainOutputs(folder, relevance_nodes, composition_node, table, chart, np.asarray(result.shares), names,
                          result.n_used, result.n_excluded, _caution(table, result.region_name),
                          np.asarray(result.positive_shares, dtype=np.float64),
                          None if result.decision_shares is None else np.asarray(result.decision_shares, np.float64))


def relevance_order(shares: Sequence[float]) -> list[int]:
    """Sequence indices by decreasing share (ties keep their order): the maps are offered in this
    order, the first is shown. Pass the positive shares where known."""
    values = np.asarray(shares, dtype=np.float64)
    return sorted(range(len(values)), key=lambda index: -values[index])


def _add_shares_table(scene: Any, result: ExplainResult, name: str, folder_item_id: int) -> Any:
    extra_columns = {POSITIVE_SHARE_COLUMN: result.positive_shares}
    if result.decision_shares is not None:  # beside the LRP shares
        extra_columns[DECISION_SHARE_COLUMN] = result.decision_shares
    if result.margin_retained is not None:
        extra_columns[MARGIN_COLUMN] = result.margin_retained
    table = mrml.update_shares_table(None, scene, result.sequence_names, result.shares, extra_columns=extra_columns,
                                     table_name=name, folder_item_id=folder_item_id)
    set_table_counts(table, result.n_used, result.n_excluded)
    if result.without_sensitivity is not None:
        flagged = [result.sequence_names[c] for c in result.without_sensitivity]
        table.SetAttribute(WITHOUT_SENSITIVITY_ATTRIBUTE, ",".join(flagged))
    if result.decision_shares is not None:
        flagged = [result.sequence_names[c] for c in (result.without_decision or [])]
        table.SetAttribute(WITHOUT_DECISION_ATTRIBUTE, ",".join(flagged))
        table.SetAttribute(MARGIN_ALL_ATTRIBUTE, repr(float(result.margin_all)))
        table.SetAttribute(MARGIN_NONE_ATTRIBUTE, repr(float(result.margin_none)))
    return table


def _add_decision_series(scene: Any, chart: Any, table: Any, chart_name: str, folder_item_id: int) -> None:
    """A second bar series on the shares chart: the decision shares beside the LRP shares."""
    import slicer

    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{chart_name} {DECISION_SHARE_COLUMN}")
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
    series.SetYColumnName(DECISION_SHARE_COLUMN)
    series.SetLabelColumnName(mrml.SEQUENCE_COLUMN)
    series.SetXColumnName("")
    series.SetColor(0.15, 0.35, 0.8)
    mrml.move_into_folder(scene, [series], folder_item_id)
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle("Share of relevance (LRP) and of the decision (Shapley) per sequence")
    chart.SetYAxisTitle("Share")
    chart.SetLegendVisibility(True)


def _caution(table_node: Any, region_name: str) -> str:
    """The caution line the table's flags call for ("" if none): the decision shares' when they were
    computed, else the cross-check's; none when the flags' column is gone (a repainted region)."""
    table = table_node.GetTable()
    flagged = table_node.GetAttribute(WITHOUT_DECISION_ATTRIBUTE)
    if flagged is not None and table.GetColumnByName(DECISION_SHARE_COLUMN) is not None:
        return vocabulary.decision_caution(flagged.split(",") if flagged else [], region_name)
    flagged = table_node.GetAttribute(WITHOUT_SENSITIVITY_ATTRIBUTE)
    if flagged is None or table.GetColumnByName(MARGIN_COLUMN) is None:
        return ""
    return vocabulary.distractor_caution(flagged.split(",") if flagged else [], region_name)


def _add_composition_volume(scene: Any, composition: np.ndarray, names: Sequence[str], reference_node: Any,
                            name: str, folder_item_id: int) -> Any:
    """The (C, D, H, W) composition as a C-component vector volume on the reference grid."""
    from slicer.util import updateVolumeFromArray

    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", name)
    try:
        node.CopyOrientation(reference_node)
        node.SetAndObserveTransformNodeID(reference_node.GetTransformNodeID())
        updateVolumeFromArray(node, np.ascontiguousarray(np.moveaxis(composition.astype(np.float32), 0, -1)))
        node.SetAttribute(COMPOSITION_ATTRIBUTE, ",".join(names))
        # A vector volume's default (archetype) writer takes 1 or 3 components only: with a NRRD storage
        # node the composition is saved with the scene (File > Save, `scene.save_slicer_scene`).
        node.SetAndObserveStorageNodeID(scene.AddNewNodeByClass("vtkMRMLNRRDStorageNode").GetID())
        mrml.move_into_folder(scene, [node], folder_item_id)
    except BaseException:
        mrml.remove_nodes(scene, [node])
        raise
    return node


def composition_array(composition_node: Any) -> np.ndarray:
    """The stored composition as float32 (C, D, H, W)."""
    from slicer.util import arrayFromVolume

    array = np.asarray(arrayFromVolume(composition_node), dtype=np.float32)
    if array.ndim == 3:
        array = array[..., None]
    return np.ascontiguousarray(np.moveaxis(array, -1, 0))


def set_table_counts(table_node: Any, n_used: int, n_excluded: int) -> None:
    """Store the region's used / excluded voxel counts on the shares table."""
    table_node.SetAttribute(USED_ATTRIBUTE, str(int(n_used)))
    table_node.SetAttribute(EXCLUDED_ATTRIBUTE, str(int(n_excluded)))


# --------------------------------------------------------------------------------------------
# Reading a published explanation back (e.g. from a loaded scene)
# --------------------------------------------------------------------------------------------


def explanation_outputs(composition_node: Any) -> ExplainOutputs:
    """The `ExplainOutputs` of a published composition volume, from its attributes and references.

    Raises:
        ValueError: not a composition volume of this module, or its table is gone.
    """
    stored = composition_node.GetAttribute(COMPOSITION_ATTRIBUTE) if composition_node is not None else None
    if not stored:
        raise ValueError("not an LRP sequence-composition volume: run Explain")
    table = composition_node.GetNodeReference(TABLE_REFERENCE)
    if table is None:
        raise ValueError(f"the shares table of '{composition_node.GetName()}' is gone: run Explain again")
    names = stored.split(",")
    shares = np.array([table.GetTable().GetColumnByName(mrml.SHARE_COLUMN).GetValue(row)
                       for row in range(table.GetNumberOfRows())], dtype=np.float64)
    relevance = [composition_node.GetNthNodeReference(RELEVANCE_REFERENCE, index)
                 for index in range(composition_node.GetNumberOfNodeReferences(RELEVANCE_REFERENCE))]
    # A repainted region's table (`logic.update_region`) keeps only the signed shares.
    positive_column = table.GetTable().GetColumnByName(POSITIVE_SHARE_COLUMN)
    positive = (None if positive_column is None else
                np.array([positive_column.GetValue(row) for row in range(table.GetNumberOfRows())], dtype=np.float64))
    decision_column = table.GetTable().GetColumnByName(DECISION_SHARE_COLUMN)
    decision = (None if decision_column is None else
                np.array([decision_column.GetValue(row) for row in range(table.GetNumberOfRows())], dtype=np.float64))
    folder = _folder_of(composition_node)
    folder_name = composition_node.GetScene().GetSubjectHierarchyNode().GetItemName(folder) if folder else ""
    region_name = folder_name.removeprefix("LRP ") if folder else "region A"
    return ExplainOutputs(folder, relevance, composition_node, table, composition_node.GetNodeReference(CHART_REFERENCE),
                          shares, names, int(table.GetAttribute(USED_ATTRIBUTE) or 0),
                          int(table.GetAttribute(EXCLUDED_ATTRIBUTE) or 0), _caution(table, region_name), positive,
                          decision)


def find_explanations(scene: Any) -> list[ExplainOutputs]:
    """Every published explanation in ``scene`` (e.g. a loaded .mrml), oldest first."""
    class_name = "vtkMRMLVectorVolumeNode"
    nodes = [scene.GetNthNodeByClass(index, class_name) for index in range(scene.GetNumberOfNodesByClass(class_name))]
    return [explanation_outputs(node) for node in nodes
            if node.GetAttribute(COMPOSITION_ATTRIBUTE) and node.GetNodeReference(TABLE_REFERENCE) is not None]


def find_explanation(scene: Any) -> ExplainOutputs | None:
    """The most recently added published explanation in ``scene``, or None."""
    explanations = find_explanations(scene)
    return explanations[-1] if explanations else None


# --------------------------------------------------------------------------------------------
# Replacing the outputs of an earlier run
# --------------------------------------------------------------------------------------------


def replaced_outputs(scene: Any, new: Any, keep: Sequence[Any] = ()) -> list[Any]:
    """The earlier outputs that a newly published one supersedes (what "replace previous results" removes).

    - ``new`` a segmentation node (`publish_segmentation`): the other segmentations published from
      the same reference volume;
    - ``new`` an `ExplainOutputs`: the other explanations of the same reference volume in a folder
      of the same name (the same region explained again).

    Nodes in ``keep`` (e.g. the segmentation region A is painted in) are never included, nor are
    outputs of scenes saved before the reference volume was recorded: nothing of unknown origin.
    """
    kept = {node.GetID() for node in keep if node is not None}
    if isinstance(new, ExplainOutputs):
        subject_hierarchy = scene.GetSubjectHierarchyNode()
        reference = new.composition_node.GetNodeReference(REFERENCE_REFERENCE)
        name = subject_hierarchy.GetItemName(new.folder_item_id)
        return [outputs for outputs in find_explanations(scene)
                if outputs.composition_node is not new.composition_node and reference is not None
                and outputs.composition_node.GetNodeReference(REFERENCE_REFERENCE) is reference
                and subject_hierarchy.GetItemName(outputs.folder_item_id) == name
                and outputs.composition_node.GetID() not in kept]
    reference = new.GetNodeReference(REFERENCE_REFERENCE)
    class_name = "vtkMRMLSegmentationNode"
    nodes = [scene.GetNthNodeByClass(index, class_name) for index in range(scene.GetNumberOfNodesByClass(class_name))]
    return [node for node in nodes if node is not new and reference is not None
            and node.GetAttribute(SEGMENTATION_ATTRIBUTE) is not None
            and node.GetNodeReference(REFERENCE_REFERENCE) is reference and node.GetID() not in kept]


def remove_outputs(scene: Any, outputs: Sequence[Any]) -> None:
    """Remove published outputs (segmentation nodes or `ExplainOutputs`) with their display and
    storage nodes, and each one's folder once it is empty. Anything else a user put into such a
    folder stays, and so does the shared colour table."""
    subject_hierarchy = scene.GetSubjectHierarchyNode()
    for item in outputs:
        if isinstance(item, ExplainOutputs):
            nodes = [*item.relevance_nodes, item.composition_node, item.table_node, item.chart_node]
            if item.chart_node is not None:
                nodes += [item.chart_node.GetNthPlotSeriesNode(index)
                          for index in range(item.chart_node.GetNumberOfPlotSeriesNodes())]
            folder = item.folder_item_id
        elif item is not None and item.GetScene() is scene:
            nodes, folder = [item], _folder_of(item)
        else:  # already gone
            continue
        mrml.remove_nodes(scene, nodes)
        empty = folder and subject_hierarchy.GetNumberOfItemChildren(folder) == 0
        if empty and subject_hierarchy.GetItemLevel(folder) == "Folder":
            subject_hierarchy.RemoveItem(folder, False, False)


def _folder_of(node: Any) -> int:
    """The subject-hierarchy parent item of a data node (0 if it has no item)."""
    subject_hierarchy = node.GetScene().GetSubjectHierarchyNode()
    item = subject_hierarchy.GetItemByDataNode(node)
    return subject_hierarchy.GetItemParent(item) if item else 0


# --------------------------------------------------------------------------------------------
# Colour legend
# --------------------------------------------------------------------------------------------


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

    colors = getattr(getattr(slicer, "modules", None), "colors", None)
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
