"""Tests for LRPSegmentationLib.slicer.mrml on real MRML nodes (slicer-core, no Qt, no mocks).

The scene comes from the ``mrml_scene`` fixture (conftest.py -> LRPSegmentationLib/slicer/headless.py):
one headless Slicer application per test session, scene cleared before each test.
Volumes are tiny (<= 16^3 voxels) so the whole file runs in a few seconds.
"""
from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
vtk = pytest.importorskip("vtk")

from LRPSegmentationLib.slicer import mrml  # noqa: E402  (needs slicer)

# ------------------------------------------------------------------------------------ helpers


def oblique_ijk_to_ras(spacing, origin, angle_degrees: float) -> np.ndarray:
    """4x4 IJK->RAS: rotation about S by ``angle_degrees``, then spacing, then origin."""
    angle = np.deg2rad(angle_degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


def add_volume(array: np.ndarray, ijk_to_ras: np.ndarray, name: str, label_map: bool = False):
    """A volume node in slicer.mrmlScene (the fixture's scene)."""
    class_name = "vtkMRMLLabelMapVolumeNode" if label_map else "vtkMRMLScalarVolumeNode"
    return slicer.util.addVolumeFromArray(array, ijk_to_ras, name, class_name)


def ras_of_voxels(ijk_to_ras: np.ndarray, shape) -> np.ndarray:
    """RAS coordinates (3, D, H, W) of every voxel centre of an array of ``shape``."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    ijk1 = np.stack([i, j, k, np.ones_like(i)]).reshape(4, -1).astype(float)
    return (ijk_to_ras @ ijk1)[:3].reshape(3, *shape)


def linear_field(ras: np.ndarray) -> np.ndarray:
    """A linear function of position: trilinear resampling reproduces it exactly."""
    return 0.5 * ras[0] - 0.25 * ras[1] + 2.0 * ras[2] + 7.0


def subject_hierarchy_item_count(scene) -> int:
    subject_hierarchy = scene.GetSubjectHierarchyNode()
    items = vtk.vtkIdList()
    subject_hierarchy.GetItemChildren(subject_hierarchy.GetSceneItemID(), items, True)
    return items.GetNumberOfIds()


def node_geometry(volume_node) -> dict:
    directions = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(directions)
    return {
        "ijk_to_ras": mrml.ijk_to_ras_matrix(volume_node),
        "spacing": np.array(volume_node.GetSpacing()),
        "origin": np.array(volume_node.GetOrigin()),
        "directions": slicer.util.arrayFromVTKMatrix(directions)[:3, :3],
        "shape": mrml.volume_shape(volume_node),
    }


REFERENCE_SHAPE = (5, 6, 7)  # (D, H, W)
REFERENCE_IJK_TO_RAS = oblique_ijk_to_ras(spacing=(2.0, 1.5, 3.0), origin=(10.0, -20.0, 5.0), angle_degrees=30.0)


@pytest.fixture
def reference(mrml_scene):
    """An oblique reference volume (rotated 30 degrees, anisotropic spacing)."""
    rng = np.random.default_rng(0)
    return add_volume(rng.normal(size=REFERENCE_SHAPE).astype(np.float32), REFERENCE_IJK_TO_RAS, "T1 reference")


# ------------------------------------------------------------------------------------ harness


def test_harness_provides_scene_logics_and_slicer_util(mrml_scene):
    assert slicer.mrmlScene is mrml_scene
    assert slicer.modules.volumes.logic().IsA("vtkSlicerVolumesLogic")
    assert slicer.modules.segmentations.logic().IsA("vtkSlicerSegmentationsModuleLogic")
    assert slicer.modules.subjecthierarchy.logic().IsA("vtkSlicerSubjectHierarchyModuleLogic")
    assert slicer.modules.colors.logic().GetMRMLScene() is mrml_scene
    assert mrml_scene.GetFirstNode("Grey", "vtkMRMLColorTableNode") is not None  # built-in colour tables

    # slicer.util round trips through the registered logics.
    voxels = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    volume = slicer.util.addVolumeFromArray(voxels, np.diag([2.0, 2.0, 3.0, 1.0]), "ramp")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), voxels)
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segment_id = segmentation.GetSegmentation().AddEmptySegment("box")
    box = np.zeros(voxels.shape, np.uint8)
    box[1:3, 2:4, 1:5] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(box, segmentation, segment_id, volume)
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume), box)

    # New data nodes get subject-hierarchy items, as in the desktop application.
    assert mrml_scene.GetSubjectHierarchyNode().GetItemByDataNode(volume) != 0


def test_clear_scene_resets_to_the_start_up_state(mrml_scene, reference):
    from LRPSegmentationLib.slicer.headless import clear_scene

    mrml.create_output_folder(mrml_scene, "outputs", reference)
    clear_scene()
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode") == 3
    assert subject_hierarchy_item_count(mrml_scene) == 0
    assert mrml_scene.GetSubjectHierarchyNode().GetScene() is mrml_scene


def test_the_headless_application_adds_module_logics_but_never_replaces_them(monkeypatch):
    """slicer-core leaves ``slicer.modules`` None; an existing namespace (e.g. the application's) keeps
    its entries, and inside the desktop application the headless one refuses to start."""
    import types

    from LRPSegmentationLib.slicer import headless

    ours = {"volumes": headless.HeadlessModule("Volumes", slicer.vtkSlicerVolumesLogic()),
            "tables": headless.HeadlessModule("Tables", slicer.vtkSlicerTablesLogic())}
    theirs = types.SimpleNamespace(volumes="the application's Volumes module")
    monkeypatch.setattr(slicer, "modules", theirs)
    headless._register_modules(ours)
    assert slicer.modules is theirs and theirs.volumes == "the application's Volumes module"
    assert theirs.tables is ours["tables"]
    monkeypatch.setattr(slicer, "modules", None)
    headless._register_modules(ours)
    assert slicer.modules.volumes is ours["volumes"] and slicer.modules.tables is ours["tables"]

    monkeypatch.setattr(headless, "_session", None)
    monkeypatch.setattr(slicer, "app", object(), raising=False)
    with pytest.raises(RuntimeError, match="use its scene"):
        headless.start_slicer()


# ------------------------------------------------------------------------------------ volumes → arrays


def test_volume_array_is_a_float32_copy_with_geometry(reference):
    array, ijk_to_ras = mrml.volume_array(reference)
    assert array.dtype == np.float32 and array.shape == REFERENCE_SHAPE
    np.testing.assert_allclose(ijk_to_ras, REFERENCE_IJK_TO_RAS, atol=1e-9)
    array[:] = 0  # a copy: the node keeps its voxels
    assert np.abs(slicer.util.arrayFromVolume(reference)).sum() > 0


def test_arrays_on_reference_puts_every_input_on_the_reference_grid(mrml_scene, reference):
    reference_ras = ras_of_voxels(REFERENCE_IJK_TO_RAS, REFERENCE_SHAPE)

    # Input on the same grid: copied voxel for voxel (integers stay exact).
    same_grid_voxels = np.arange(np.prod(REFERENCE_SHAPE), dtype=np.int16).reshape(REFERENCE_SHAPE)
    same_grid = add_volume(same_grid_voxels, REFERENCE_IJK_TO_RAS, "T2")

    # Input on another grid: 1 mm axis-aligned, LPS-like flipped axes, other origin, covering the
    # reference with a margin. It holds a linear field of position, which trilinear resampling
    # reproduces exactly, so every reference voxel must receive the field at its own position.
    low = reference_ras.reshape(3, -1).min(axis=1) - 3.0
    high = reference_ras.reshape(3, -1).max(axis=1) + 3.0
    extent = np.ceil(high - low).astype(int) + 1  # voxels along R, A, S
    other_ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    other_ijk_to_ras[:3, 3] = [high[0], high[1], low[2]]  # origin at the R/A max corner because of the flips
    other_shape = (extent[2], extent[1], extent[0])
    other_grid = add_volume(
        linear_field(ras_of_voxels(other_ijk_to_ras, other_shape)).astype(np.float32), other_ijk_to_ras, "DWI"
    )

    # Same array shape but shifted by one voxel along I: its voxel i lies on reference voxel i + 1.
    shifted_ijk_to_ras = REFERENCE_IJK_TO_RAS.copy()
    shifted_ijk_to_ras[:3, 3] += REFERENCE_IJK_TO_RAS[:3, 0]
    shifted = add_volume(same_grid_voxels.astype(np.float32), shifted_ijk_to_ras, "ADC")

    nodes_before = mrml_scene.GetNumberOfNodes()
    stacked = mrml.arrays_on_reference([same_grid, other_grid, shifted], reference, ["T2", "DWI", "ADC"])

    assert stacked.shape == (3, *REFERENCE_SHAPE) and stacked.dtype == np.float32
    np.testing.assert_array_equal(stacked[0], same_grid_voxels)
    np.testing.assert_allclose(stacked[1], linear_field(reference_ras), atol=1e-3)
    np.testing.assert_allclose(stacked[2][:, :, 1:], same_grid_voxels[:, :, :-1], atol=1e-3)
    np.testing.assert_array_equal(stacked[2][:, :, 0], 0.0)  # outside the shifted input
    assert mrml_scene.GetNumberOfNodes() == nodes_before  # the resampler's temporary node is gone


def test_arrays_on_reference_rejects_a_missing_input_by_sequence_name(reference):
    with pytest.raises(ValueError, match="'T2w'"):
        mrml.arrays_on_reference([reference, None], reference, ["T1", "T2w"])
    with pytest.raises(ValueError, match="input 2"):
        mrml.arrays_on_reference([reference, None], reference)
    with pytest.raises(ValueError, match="one name per volume"):
        mrml.arrays_on_reference([reference], reference, ["T1", "T2w"])
    with pytest.raises(ValueError, match="reference volume"):
        mrml.arrays_on_reference([reference], None, ["T1"])


# ------------------------------------------------------------------------------------ segmentations

CLASS_NAMES = ["background", "liver", "vessel", "tumour"]
CLASS_COLORS = [(0, 0, 0), (0.8, 0.5, 0.3), (0.1, 0.2, 0.9), (0.9, 0.9, 0.1)]


def make_labels() -> np.ndarray:
    """liver in a slab, tumour in one corner, no vessel (empty class)."""
    labels = np.zeros(REFERENCE_SHAPE, np.uint8)
    labels[1:4, 1:5, 2:6] = 1
    labels[0, 0, 0:2] = 3
    return labels


def test_segmentation_from_labels_round_trips_through_segment_masks(mrml_scene, reference):
    labels = make_labels()
    segmentation = mrml.add_segmentation_from_labels(
        mrml_scene, labels, CLASS_NAMES, CLASS_COLORS, reference, "LRP prediction"
    )

    segments = segmentation.GetSegmentation()
    assert segments.GetNumberOfSegments() == 3
    for index, (class_name, color) in enumerate(zip(CLASS_NAMES[1:], CLASS_COLORS[1:])):
        segment = segments.GetNthSegment(index)
        assert segment.GetName() == class_name
        np.testing.assert_allclose(segment.GetColor(), color)

    nodes_before = mrml_scene.GetNumberOfNodes()
    for class_value, class_name in enumerate(CLASS_NAMES[1:], start=1):
        segment_id = segments.GetSegmentIdBySegmentName(class_name)
        mask = mrml.segment_mask(segmentation, segment_id, reference)
        assert mask.dtype == np.bool_ and mask.shape == REFERENCE_SHAPE
        np.testing.assert_array_equal(mask, labels == class_value)
    assert not mrml.segment_mask(segmentation, segments.GetSegmentIdBySegmentName("vessel"), reference).any()
    assert mrml_scene.GetNumberOfNodes() == nodes_before  # no temporary label maps or colour tables left


def test_segment_mask_on_a_coarser_reference_grid(mrml_scene, reference):
    """A mask is returned on the grid of the reference passed in, not the segmentation's."""
    labels = np.zeros(REFERENCE_SHAPE, np.uint8)
    labels[:, :, :4] = 1  # I < 4: the first half along I
    segmentation = mrml.add_segmentation_from_labels(
        mrml_scene, labels, CLASS_NAMES[:2], CLASS_COLORS[:2], reference, "halves"
    )
    coarse_ijk_to_ras = REFERENCE_IJK_TO_RAS.copy()
    coarse_ijk_to_ras[:3, 0] *= 2.0  # twice the spacing along I, same origin and directions
    coarse = add_volume(np.zeros((5, 6, 4), np.float32), coarse_ijk_to_ras, "coarse")

    mask = mrml.segment_mask(segmentation, segmentation.GetSegmentation().GetNthSegmentID(0), coarse)

    assert mask.shape == (5, 6, 4)
    np.testing.assert_array_equal(mask[:, :, :2], True)  # coarse I 0, 1 = fine I 0, 2
    np.testing.assert_array_equal(mask[:, :, 2:], False)  # coarse I 2, 3 = fine I 4, 6


def test_segment_mask_rejects_unknown_segment_ids(mrml_scene, reference):
    segmentation = mrml.add_segmentation_from_labels(
        mrml_scene, make_labels(), CLASS_NAMES, CLASS_COLORS, reference, "prediction"
    )
    with pytest.raises(ValueError, match="'no such segment'"):
        mrml.segment_mask(segmentation, "no such segment", reference)
    with pytest.raises(ValueError, match="No segmentation"):
        mrml.segment_mask(None, "liver", reference)


def test_segmentation_from_labels_rejects_bad_labels(mrml_scene, reference):
    nodes_before = mrml_scene.GetNumberOfNodes()
    too_high = make_labels()
    too_high[0, 0, 0] = 4
    with pytest.raises(ValueError, match="0..3"):
        mrml.add_segmentation_from_labels(mrml_scene, too_high, CLASS_NAMES, CLASS_COLORS, reference, "x")
    with pytest.raises(ValueError, match="shape"):
        mrml.add_segmentation_from_labels(mrml_scene, too_high[1:], CLASS_NAMES, CLASS_COLORS, reference, "x")
    with pytest.raises(ValueError, match="integer"):
        mrml.add_segmentation_from_labels(
            mrml_scene, make_labels().astype(float), CLASS_NAMES, CLASS_COLORS, reference, "x"
        )
    with pytest.raises(ValueError, match="one colour per class"):
        mrml.add_segmentation_from_labels(mrml_scene, make_labels(), CLASS_NAMES, CLASS_COLORS[:3], reference, "x")
    assert mrml_scene.GetNumberOfNodes() == nodes_before


# ------------------------------------------------------------------------------------ relevance volumes


def test_diverging_color_table_runs_blue_white_red_and_is_reused(mrml_scene):
    table = mrml.create_diverging_color_table(mrml_scene)

    assert table.GetNumberOfColors() == 256
    rgba = np.zeros(4)
    table.GetColor(0, rgba)
    np.testing.assert_allclose(rgba[:3], [0, 0, 1])
    for middle in (127, 128):
        table.GetColor(middle, rgba)
        np.testing.assert_allclose(rgba[:3], [1, 1, 1], atol=1 / 255 + 1e-9)
    table.GetColor(255, rgba)
    np.testing.assert_allclose(rgba[:3], [1, 0, 0])

    assert mrml.create_diverging_color_table(mrml_scene) is table
    same_name = mrml_scene.GetNodesByClassByName("vtkMRMLColorTableNode", mrml.DIVERGING_COLOR_TABLE_NAME)
    assert same_name.GetNumberOfItems() == 1


def test_relevance_volumes_share_a_symmetric_window_on_the_reference_geometry(mrml_scene, reference):
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(3, *REFERENCE_SHAPE)).astype(np.float32)
    maps[1] *= 10.0
    maps[1, 2, 3, 4] = -55.0  # the largest |R| of all maps is negative and in map 1

    volumes = mrml.add_relevance_volumes(mrml_scene, maps, ["LRP T1", "LRP T2", "LRP DWI"], reference)

    assert [volume.GetName() for volume in volumes] == ["LRP T1", "LRP T2", "LRP DWI"]
    reference_geometry = node_geometry(reference)
    color_table = mrml_scene.GetFirstNode(mrml.DIVERGING_COLOR_TABLE_NAME, "vtkMRMLColorTableNode")
    for volume, relevance in zip(volumes, maps):
        geometry = node_geometry(volume)
        for key in ("ijk_to_ras", "spacing", "origin", "directions"):
            np.testing.assert_allclose(geometry[key], reference_geometry[key], atol=1e-9, err_msg=key)
        assert geometry["shape"] == reference_geometry["shape"]
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), relevance)

        display = volume.GetDisplayNode()
        assert display.GetColorNodeID() == color_table.GetID()
        assert not display.GetAutoWindowLevel()
        assert display.GetLevel() == 0.0
        assert display.GetWindow() == pytest.approx(2 * 55.0)  # same window for every map

    # A robust window: the 50th percentile of |R| over all maps.
    robust = mrml.add_relevance_volumes(mrml_scene, maps[:1], ["LRP robust"], reference, window_percentile=50.0)
    assert robust[0].GetDisplayNode().GetWindow() == pytest.approx(2 * np.percentile(np.abs(maps[:1]), 50.0))


def test_relevance_volumes_reject_maps_off_the_reference_grid(mrml_scene, reference):
    with pytest.raises(ValueError, match="reference"):
        mrml.add_relevance_volumes(mrml_scene, np.zeros((1, 2, 2, 2)), ["x"], reference)
    with pytest.raises(ValueError, match="one name per map"):
        mrml.add_relevance_volumes(mrml_scene, np.zeros((2, *REFERENCE_SHAPE)), ["x"], reference)
    with pytest.raises(ValueError, match="NaN"):
        mrml.add_relevance_volumes(mrml_scene, np.full((1, *REFERENCE_SHAPE), np.nan), ["x"], reference)


def test_outputs_follow_the_reference_parent_transform(mrml_scene, reference):
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    reference.SetAndObserveTransformNodeID(transform.GetID())
    (volume,) = mrml.add_relevance_volumes(mrml_scene, np.zeros((1, *REFERENCE_SHAPE)), ["LRP"], reference)
    segmentation = mrml.add_segmentation_from_labels(
        mrml_scene, make_labels(), CLASS_NAMES, CLASS_COLORS, reference, "prediction"
    )
    assert volume.GetTransformNodeID() == transform.GetID()
    assert segmentation.GetTransformNodeID() == transform.GetID()


# ------------------------------------------------------------------------------------ subject hierarchy


def test_output_folder_sits_beside_the_input_in_its_study(mrml_scene, reference):
    subject_hierarchy = mrml_scene.GetSubjectHierarchyNode()
    patient = subject_hierarchy.CreateSubjectItem(subject_hierarchy.GetSceneItemID(), "Patient 1")
    study = subject_hierarchy.CreateStudyItem(patient, "Liver MRI")
    subject_hierarchy.SetItemParent(subject_hierarchy.GetItemByDataNode(reference), study)

    folder = mrml.create_output_folder(mrml_scene, "LRP outputs", reference)
    volumes = mrml.add_relevance_volumes(mrml_scene, np.ones((2, *REFERENCE_SHAPE)), ["a", "b"], reference, folder)

    assert subject_hierarchy.GetItemParent(folder) == study
    assert subject_hierarchy.GetItemName(folder) == "LRP outputs"
    for volume in volumes:
        assert subject_hierarchy.GetItemParent(subject_hierarchy.GetItemByDataNode(volume)) == folder

    # A node without a subject-hierarchy item: the folder goes under the scene.
    loose = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "hidden")
    assert subject_hierarchy.GetItemParent(mrml.create_output_folder(mrml_scene, "x", loose)) == (
        subject_hierarchy.GetSceneItemID()
    )


def test_cancel_removes_partial_outputs_and_leaves_the_scene_as_before(mrml_scene, reference):
    mrml.create_diverging_color_table(mrml_scene)  # shared across runs: created once, kept on purpose
    nodes_before = mrml_scene.GetNumberOfNodes()
    items_before = subject_hierarchy_item_count(mrml_scene)

    folder = mrml.create_output_folder(mrml_scene, "LRP outputs", reference)
    mrml.add_segmentation_from_labels(mrml_scene, make_labels(), CLASS_NAMES, CLASS_COLORS, reference, "seg", folder)
    mrml.add_relevance_volumes(mrml_scene, np.ones((2, *REFERENCE_SHAPE)), ["a", "b"], reference, folder)
    table = mrml.update_shares_table(None, mrml_scene, ["T1", "T2"], [0.4, 0.6], folder_item_id=folder)
    mrml.create_shares_bar_chart(mrml_scene, table, folder_item_id=folder)
    assert mrml_scene.GetNumberOfNodes() > nodes_before

    removed = mrml.remove_output_folder(mrml_scene, folder)

    assert removed == 6  # segmentation, 2 volumes, table, chart, series
    assert mrml_scene.GetNumberOfNodes() == nodes_before
    assert subject_hierarchy_item_count(mrml_scene) == items_before


def test_remove_nodes_skips_none_and_already_removed_nodes(mrml_scene, reference):
    mrml.create_diverging_color_table(mrml_scene)
    nodes_before = mrml_scene.GetNumberOfNodes()
    volumes = mrml.add_relevance_volumes(mrml_scene, np.ones((2, *REFERENCE_SHAPE)), ["a", "b"], reference)
    assert mrml_scene.GetNumberOfNodes() == nodes_before + 4  # 2 volumes + 2 display nodes

    mrml.remove_nodes(mrml_scene, [volumes[0], None])
    mrml.remove_nodes(mrml_scene, volumes)  # volumes[0] is already gone

    assert mrml_scene.GetNumberOfNodes() == nodes_before


# ------------------------------------------------------------------------------------ table and chart


def table_column(table_node, name) -> list:
    column = table_node.GetTable().GetColumnByName(name)
    return [column.GetValue(row) for row in range(column.GetNumberOfValues())]


def test_shares_table_and_bar_chart_update_in_place(mrml_scene):
    table = mrml.update_shares_table(
        None, mrml_scene, ["T1", "T2", "DWI"], [0.5, 0.3, 0.2], extra_columns={"relevance sum": [5.0, 3.0, 2.0]}
    )
    chart = mrml.create_shares_bar_chart(mrml_scene, table)

    assert table.GetNumberOfRows() == 3 and table.GetNumberOfColumns() == 3
    assert table_column(table, "sequence") == ["T1", "T2", "DWI"]
    assert table.GetTable().GetColumnByName("sequence").IsA("vtkStringArray")
    np.testing.assert_allclose(slicer.util.arrayFromTableColumn(table, "share"), [0.5, 0.3, 0.2], rtol=1e-6)
    np.testing.assert_allclose(slicer.util.arrayFromTableColumn(table, "relevance sum"), [5.0, 3.0, 2.0])
    assert chart.GetNumberOfPlotSeriesNodes() == 1
    series = chart.GetNthPlotSeriesNode(0)
    assert series.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeBar
    assert series.GetTableNode() is table
    assert series.GetYColumnName() == "share" and series.GetLabelColumnName() == "sequence"

    # Repainting the region: same table node, no new nodes, the chart's series reads the new values.
    nodes_before = mrml_scene.GetNumberOfNodes()
    updated = mrml.update_shares_table(table, mrml_scene, ["T1", "T2", "DWI", "ADC"], [0.1, 0.2, 0.3, 0.4])

    assert updated is table
    assert mrml_scene.GetNumberOfNodes() == nodes_before
    assert series.GetTableNode() is table
    assert table_column(series.GetTableNode(), "sequence") == ["T1", "T2", "DWI", "ADC"]
    np.testing.assert_allclose(
        slicer.util.arrayFromTableColumn(series.GetTableNode(), "share"), [0.1, 0.2, 0.3, 0.4], rtol=1e-6
    )
    assert table.GetNumberOfColumns() == 2  # the extra column of the first call is gone


def test_shares_table_rejects_mismatched_lengths(mrml_scene):
    with pytest.raises(ValueError, match="one share per name"):
        mrml.update_shares_table(None, mrml_scene, ["T1", "T2"], [1.0])
    with pytest.raises(ValueError, match="'extra'"):
        mrml.update_shares_table(None, mrml_scene, ["T1"], [1.0], extra_columns={"extra": [1.0, 2.0]})
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0


# ------------------------------------------------------------------------------------ slice views


def test_foreground_overlay_sets_every_slice_view(mrml_scene, reference):
    (relevance,) = mrml.add_relevance_volumes(mrml_scene, np.ones((1, *REFERENCE_SHAPE)), ["LRP"], reference)

    updated = mrml.set_foreground_overlay(mrml_scene, reference, relevance, opacity=0.6)

    assert updated == 3  # Red, Yellow, Green
    for index in range(3):
        composite = mrml_scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        assert composite.GetBackgroundVolumeID() == reference.GetID()
        assert composite.GetForegroundVolumeID() == relevance.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.6)
    with pytest.raises(ValueError, match="opacity"):
        mrml.set_foreground_overlay(mrml_scene, reference, relevance, opacity=1.5)


def test_foreground_overlay_without_slice_views_does_nothing():
    bare_scene = slicer.vtkMRMLScene()  # no application, no views
    volume = bare_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    assert mrml.set_foreground_overlay(bare_scene, volume, volume) == 0


# ------------------------------------------------------------------------------------ interfaces


def test_ijk_to_ras_matrix_feeds_imaging_geometry(reference):
    """mrml's plain 4x4 matrices fit LRPSegmentationLib.imaging.Geometry both ways."""
    from LRPSegmentationLib.imaging import Geometry

    geometry = Geometry.from_ijk_to_ras(mrml.ijk_to_ras_matrix(reference), mrml.volume_shape(reference))
    np.testing.assert_allclose(geometry.ijk_to_ras(), REFERENCE_IJK_TO_RAS, atol=1e-9)
    assert tuple(geometry.array_shape) == REFERENCE_SHAPE
