"""Tests for LRPSegmentationLib.slicer (the module's Qt-free logic) on real MRML nodes.

A tiny randomly initialized UNet3D (6 sequences, 2 classes) and synthetic volumes: four inputs on
the reference grid, two on other grids (resampled by Slicer). Runs in a few seconds on 2 CPU cores.
"""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
vtk = pytest.importorskip("vtk")

from LRPSegmentationLib import engine, regions, vocabulary  # noqa: E402
from LRPSegmentationLib.slicer import compute, jobs, logic, mrml, publish, shortcuts  # noqa: E402
from LRPSegmentationLib.normalization import normalize_sequences  # noqa: E402
from LRPSegmentationLib.models import UNet3D  # noqa: E402
from LRPSegmentationLib.models import package as package_module  # noqa: E402

SEQUENCES = ["T1 pre", "T1 arterial", "T1 portal", "T1 delayed", "T2", "DWI"]
REFERENCE_SHAPE = (8, 8, 12)  # (D, H, W), divisible by 2**depth = 4
REFERENCE_IJK_TO_RAS = np.array([[1.5, 0.0, 0.0, -10.0], [0.0, 1.2, 0.0, 4.0], [0.0, 0.0, 2.0, 30.0],
                                 [0.0, 0.0, 0.0, 1.0]])
NORMALIZATION = {"type": "zscore", "mask": "none"}


def make_model(seed: int = 0) -> UNet3D:
    torch.manual_seed(seed)
    return UNet3D(6, 2, base_channels=4, depth=2).eval()


def make_package(model: UNet3D | None = None, **overrides):
    """A real model package around ``model`` (its weights are copied)."""
    model = model or make_model()
    options = dict(normalization=NORMALIZATION, class_names=["background", "liver lesion"],
                   class_colors=[(0.0, 0.0, 0.0), (0.9, 0.3, 0.1)], composite="epsilon_gamma_box",
                   reference_sequence=SEQUENCES[0], target_spacing=(1.5, 1.2, 2.0), patch_size=REFERENCE_SHAPE,
                   name="tiny")
    for bound in ("box_low", "box_high"):
        if bound in overrides:
            overrides[bound] = [float(overrides[bound])] * len(SEQUENCES)
    options.update(overrides)
    return package_module.create_package(model, "unet3d", {"in_channels": 6, "out_channels": 2,
                                                           "base_channels": 4, "depth": 2},
                                         SEQUENCES, **options)


def add_volume(array, ijk_to_ras, name):
    return slicer.util.addVolumeFromArray(np.asarray(array, dtype=np.float32), ijk_to_ras, name)


@pytest.fixture
def case(mrml_scene):
    """Reference + 6 inputs (2 on other grids) + a segmentation with region A."""
    rng = np.random.default_rng(1)
    reference = add_volume(rng.normal(100, 20, REFERENCE_SHAPE), REFERENCE_IJK_TO_RAS, "T1 pre")
    inputs = [reference]
    for name in SEQUENCES[1:4]:
        inputs.append(add_volume(rng.normal(100, 20, REFERENCE_SHAPE), REFERENCE_IJK_TO_RAS, name))
    # Other grids: 1 mm isotropic with a margin; and an offset anisotropic grid, also covering it.
    other_1 = np.diag([1.0, 1.0, 1.0, 1.0])
    other_1[:3, 3] = [-12.0, 2.0, 28.0]
    inputs.append(add_volume(rng.normal(50, 10, (20, 14, 22)), other_1, "T2"))
    other_2 = np.diag([2.0, 2.0, 2.5, 1.0])
    other_2[:3, 3] = [-11.0, 3.0, 29.0]
    inputs.append(add_volume(rng.normal(800, 100, (9, 7, 11)), other_2, "DWI"))

    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "regions")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("A", "region A")
    mask = np.zeros(REFERENCE_SHAPE, np.uint8)
    mask[3:6, 2:6, 4:9] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segment_id, reference)
    return types.SimpleNamespace(scene=mrml_scene, reference=reference, inputs=inputs,
                                 segmentation=segmentation, segment_id=segment_id, mask=mask.astype(bool))


def geometry(node):
    return mrml.ijk_to_ras_matrix(node), mrml.volume_shape(node), node.GetTransformNodeID()


def assert_same_geometry(node, reference):
    matrix, shape, transform = geometry(node)
    ref_matrix, ref_shape, ref_transform = geometry(reference)
    np.testing.assert_allclose(matrix, ref_matrix, atol=1e-9)
    assert shape == ref_shape and transform == ref_transform


def engine_input(case):
    stacked = mrml.arrays_on_reference(case.inputs, case.reference, SEQUENCES)
    return torch.from_numpy(normalize_sequences(stacked, NORMALIZATION, SEQUENCES))[None]


def table_rows(table_node):
    table = table_node.GetTable()
    names = [table.GetColumnByName(mrml.SEQUENCE_COLUMN).GetValue(i) for i in range(table.GetNumberOfRows())]
    shares = np.array([table.GetColumnByName(mrml.SHARE_COLUMN).GetValue(i) for i in range(table.GetNumberOfRows())])
    return names, shares


def folder_children(scene, folder_item_id):
    subject_hierarchy = scene.GetSubjectHierarchyNode()
    ids = vtk.vtkIdList()
    subject_hierarchy.GetItemChildren(folder_item_id, ids, True)
    return {subject_hierarchy.GetItemDataNode(ids.GetId(i)).GetID() for i in range(ids.GetNumberOfIds())}


# ------------------------------------------------------------------------------------ segment


def test_segment_creates_a_segmentation_on_the_reference_grid_matching_argmax(case):
    model = make_model()
    package = make_package(model)
    node = logic.segment(case.scene, case.inputs, case.reference, package, device="cpu")
    assert node.IsA("vtkMRMLSegmentationNode")
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    assert segmentation.GetNthSegment(0).GetName() == "liver lesion"

    with torch.no_grad():
        expected = model(engine_input(case))[0].argmax(0).numpy() == 1
    mask = mrml.segment_mask(node, segmentation.GetNthSegmentID(0), case.reference)
    np.testing.assert_array_equal(mask, expected)
    # In a subject-hierarchy folder.
    subject_hierarchy = case.scene.GetSubjectHierarchyNode()
    parent = subject_hierarchy.GetItemParent(subject_hierarchy.GetItemByDataNode(node))
    assert subject_hierarchy.GetItemLevel(parent) == "Folder"


def test_segment_pads_a_grid_the_network_cannot_take_and_crops_back(mrml_scene):
    shape = (6, 7, 9)  # not divisible by 4
    rng = np.random.default_rng(2)
    inputs = [add_volume(rng.normal(size=shape), REFERENCE_IJK_TO_RAS, name) for name in SEQUENCES]
    node = logic.segment(mrml_scene, inputs, inputs[0], make_package(), device="cpu")
    labelmap = mrml.segment_mask(node, node.GetSegmentation().GetNthSegmentID(0), inputs[0])
    assert labelmap.shape == shape


def test_segment_reports_progress_per_sliding_window(case):
    """A volume larger than the patch runs in windows: the progress bar moves with each one (a whole
    volume is one pass and reports only its start)."""
    package = make_package(patch_size=(8, 8, 8))  # the (8, 8, 12) reference needs two windows
    inputs = logic.prepare_inputs(case.inputs, case.reference, package)
    reported = []
    labels = compute.compute_labels(compute.load_model(package), inputs, package, "cpu",
                                    progress=lambda fraction, message: reported.append((fraction, message)))
    windows = [(f, m) for f, m in reported if "window" in m]
    assert [m for _, m in windows] == ["Running the network: window 1 of 2", "Running the network: window 2 of 2"]
    assert [f for f, _ in reported] == sorted(f for f, _ in reported) and windows[-1][0] > 0.9
    whole = compute.compute_labels(compute.load_model(make_package()), logic.prepare_inputs(
        case.inputs, case.reference, make_package()), make_package(), "cpu")
    assert labels.shape == whole.shape == REFERENCE_SHAPE


def test_segment_missing_input_names_the_sequence(case):
    inputs = list(case.inputs)
    inputs[4] = None
    before = case.scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="'T2'"):
        logic.segment(case.scene, inputs, case.reference, make_package(), device="cpu")
    assert case.scene.GetNumberOfNodes() == before


def test_a_reference_at_another_spacing_than_the_model_is_refused(case):
    """The module creates outputs on the reference's own grid, so a network trained at other voxel
    sizes would segment silently wrong: refused, naming both spacings (the CLI resamples instead)."""
    before = case.scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match=r"1\.5 x 1\.2 x 2 mm.*trained at 3 x 3 x 3 mm"):
        logic.segment(case.scene, case.inputs, case.reference, make_package(target_spacing=(3.0, 3.0, 3.0)),
                             device="cpu")
    assert case.scene.GetNumberOfNodes() == before
    # within 1 % it is the same spacing
    logic.prepare_inputs(case.inputs, case.reference, make_package(target_spacing=(1.51, 1.2, 2.0)))


# ------------------------------------------------------------------------------------ explain


def test_explain_outputs_geometry_table_and_shares_equal_the_engine(case):
    model = make_model()
    package = make_package(model)
    target = engine.Target(1, contrast=True)
    progress = []
    outputs = logic.explain(case.scene, case.inputs, case.reference, case.segmentation, case.segment_id,
                                   package, target, "epsilon_gamma_box", "cpu",
                                   progress=lambda f, m: progress.append((f, m)))

    # One relevance volume per sequence + one composition volume, all on the reference grid.
    assert len(outputs.relevance_nodes) == len(SEQUENCES)
    for node in [*outputs.relevance_nodes, outputs.composition_node]:
        assert_same_geometry(node, case.reference)
    assert outputs.composition_node.GetImageData().GetNumberOfScalarComponents() == len(SEQUENCES)

    # The table: one row per sequence; shares sum to 1 and are the engine's.
    names, shares = table_rows(outputs.table_node)
    assert names == SEQUENCES
    assert shares.sum() == pytest.approx(1.0, abs=1e-5)
    reference = engine.explain_region(model, engine_input(case), torch.from_numpy(case.mask), target,
                                      "epsilon_gamma_box", "cpu")
    np.testing.assert_allclose(shares, reference.sequence_shares.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(outputs.shares, reference.sequence_shares.numpy(), rtol=1e-5, atol=1e-7)
    for channel, node in enumerate(outputs.relevance_nodes):
        np.testing.assert_allclose(slicer.util.arrayFromVolume(node), reference.relevance[channel].numpy(),
                                   rtol=1e-4, atol=1e-6)
    assert outputs.n_used + outputs.n_excluded == int(case.mask.sum())

    # Chart on the table; everything inside the one folder, beside the inputs.
    assert outputs.chart_node.GetNthPlotSeriesNode(0).GetTableNode() is outputs.table_node
    expected = {n.GetID() for n in [*outputs.relevance_nodes, outputs.composition_node, outputs.table_node,
                                    outputs.chart_node, outputs.chart_node.GetNthPlotSeriesNode(0)]}
    assert expected <= folder_children(case.scene, outputs.folder_item_id)
    subject_hierarchy = case.scene.GetSubjectHierarchyNode()
    assert subject_hierarchy.GetItemParent(outputs.folder_item_id) == subject_hierarchy.GetItemParent(
        subject_hierarchy.GetItemByDataNode(case.reference))

    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_the_cross_check_adds_the_kept_margin_and_names_relevance_without_effect(case):
    from LRPSegmentationLib import evaluation

    model = make_model()
    package = make_package(model)
    x = engine_input(case)
    target = 0  # the untrained network calls every voxel class 0: region A has a margin to keep
    with torch.no_grad():
        assert (model(x)[0].argmax(0).numpy()[case.mask] == target).any()
    plain = logic.explain(case.scene, case.inputs, case.reference, case.segmentation, case.segment_id,
                                 package, target, None, "cpu")
    assert plain.table_node.GetTable().GetColumnByName(publish.MARGIN_COLUMN) is None and plain.caution == ""
    outputs = logic.explain(case.scene, case.inputs, case.reference, case.segmentation, case.segment_id,
                                   package, target, None, "cpu", cross_check=True)
    table_node = outputs.table_node
    table = table_node.GetTable()
    column = table.GetColumnByName(publish.MARGIN_COLUMN)
    kept = np.array([column.GetValue(i) for i in range(len(SEQUENCES))])
    region = torch.from_numpy(case.mask)
    expected = evaluation.sequence_ablation(model, x, region, target=target, device="cpu",
                                            margin_region=region).margin_retained
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(kept, expected, rtol=1e-4, atol=1e-6)
    positive = np.array([table.GetColumnByName("positive share").GetValue(i) for i in range(len(SEQUENCES))])
    flagged = [SEQUENCES[c] for c in evaluation.relevance_without_sensitivity(positive, kept)]
    attribute = table_node.GetAttribute(publish.WITHOUT_SENSITIVITY_ATTRIBUTE)
    assert (attribute.split(",") if attribute else []) == flagged
    # The cross-check also computes the decision shares, whose caution speaks (next test); without
    # them the caution line is the cross-check's own.
    outputs.table_node.RemoveAttribute(publish.WITHOUT_DECISION_ATTRIBUTE)
    caution = publish.explanation_outputs(outputs.composition_node).caution
    assert bool(caution) == bool(flagged) and all(name in caution for name in flagged)


def test_the_decision_shares_stand_beside_the_lrp_shares_and_drive_the_caution(case):
    """With the cross-check the table gets a "decision share (Shapley)" column right after the LRP
    positive share (the exact Shapley values of the library, on the same input), the chart a second
    series, and the caution names the sequences with LRP relevance but no share of the decision; a
    loaded scene reads them back; a repainted region's table drops the column and its caution."""
    from LRPSegmentationLib import shapley
    from LRPSegmentationLib.inference import Inferer

    model = make_model()
    package = make_package(model)
    target = 0  # the untrained network calls every voxel class 0: region A has a decision
    outputs = logic.explain(case.scene, case.inputs, case.reference, case.segmentation, case.segment_id,
                            package, target, None, "cpu", cross_check=True)
    table = outputs.table_node.GetTable()
    columns = [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]
    assert columns[columns.index(publish.POSITIVE_SHARE_COLUMN) + 1] == publish.DECISION_SHARE_COLUMN \
        == "decision share (Shapley)"
    column = table.GetColumnByName(publish.DECISION_SHARE_COLUMN)
    decision = np.array([column.GetValue(i) for i in range(len(SEQUENCES))])
    expected = shapley.decision_shapley(Inferer.for_package(model.float(), package, "cpu"), engine_input(case),
                                        {"A": case.mask}, target)["A"]
    np.testing.assert_allclose(decision, expected.shares, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outputs.decision_shares, decision, rtol=1e-6, atol=1e-7)
    assert float(outputs.table_node.GetAttribute(publish.MARGIN_ALL_ATTRIBUTE)) == pytest.approx(expected.margin_all,
                                                                                                  rel=1e-4)
    assert outputs.chart_node.GetNumberOfPlotSeriesNodes() == 2
    assert outputs.chart_node.GetNthPlotSeriesNode(1).GetYColumnName() == publish.DECISION_SHARE_COLUMN
    positive = np.array([table.GetColumnByName(publish.POSITIVE_SHARE_COLUMN).GetValue(i)
                         for i in range(len(SEQUENCES))])
    flagged = [SEQUENCES[c] for c in shapley.relevance_without_decision(positive, decision)]
    attribute = outputs.table_node.GetAttribute(publish.WITHOUT_DECISION_ATTRIBUTE)
    assert (attribute.split(",") if attribute else []) == flagged
    assert outputs.caution == vocabulary.decision_caution(flagged, "region A")
    found = publish.find_explanation(case.scene)
    np.testing.assert_allclose(found.decision_shares, outputs.decision_shares)
    assert found.caution == outputs.caution
    # the forced flags of a distractor: the caution names it, in the decision's words
    outputs.table_node.SetAttribute(publish.WITHOUT_DECISION_ATTRIBUTE, "T2")
    assert "T2" in publish.find_explanation(case.scene).caution and "Shapley" in publish.find_explanation(
        case.scene).caution
    logic.update_region(case.scene, outputs, None, case.segmentation, case.segment_id, case.reference)  # repainted
    again = publish.find_explanation(case.scene)
    assert again.decision_shares is None and again.caution == ""


def test_repainting_region_a_updates_the_same_table_without_lrp(case, monkeypatch):
    model = make_model()
    package = make_package(model)
    outputs = logic.explain(case.scene, case.inputs, case.reference, case.segmentation, case.segment_id,
                                   package, 1, None, "cpu")
    table_id = outputs.table_node.GetID()

    new_mask = np.zeros(REFERENCE_SHAPE, np.uint8)
    new_mask[1:4, 4:8, 0:6] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(new_mask, case.segmentation, case.segment_id, case.reference)
    nodes_before = case.scene.GetNumberOfNodes()

    def no_lrp(*args, **kwargs):
        raise AssertionError("update_region must not run an LRP pass")

    monkeypatch.setattr(engine, "explain_region", no_lrp)
    monkeypatch.setattr(engine, "sequence_composition", no_lrp)
    shares, n_used, n_excluded = logic.update_region(case.scene, outputs, None, case.segmentation,
                                                            case.segment_id, case.reference)
    monkeypatch.undo()

    composition = engine.sequence_composition(model, engine_input(case), 1, "epsilon_gamma_box", "cpu")
    expected, expected_used, expected_excluded = engine.region_shares(composition,
                                                                      torch.from_numpy(new_mask.astype(bool)))
    np.testing.assert_allclose(shares, expected.numpy(), rtol=1e-5, atol=1e-7)
    assert (n_used, n_excluded) == (expected_used, expected_excluded)
    names, table_shares = table_rows(outputs.table_node)
    assert outputs.table_node.GetID() == table_id and names == SEQUENCES
    np.testing.assert_allclose(table_shares, expected.numpy(), rtol=1e-5, atol=1e-7)
    assert table_shares.sum() == pytest.approx(1.0, abs=1e-5)
    assert case.scene.GetNumberOfNodes() == nodes_before

    # The composition node alone (e.g. after reloading a scene) is enough.
    shares_again, _, _ = logic.update_region(case.scene, outputs.composition_node, outputs.table_node,
                                                    case.segmentation, case.segment_id, case.reference)
    np.testing.assert_allclose(shares_again, shares)


def test_empty_segment_is_an_error_and_creates_nothing(case):
    empty_id = case.segmentation.GetSegmentation().AddEmptySegment("B", "lesion core")
    before = case.scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="the segment 'lesion core' is empty: paint region A first"):
        logic.explain(case.scene, case.inputs, case.reference, case.segmentation, empty_id,
                             make_package(), 1, None, "cpu")
    assert case.scene.GetNumberOfNodes() == before


def test_missing_input_is_an_error_naming_the_sequence(case):
    inputs = list(case.inputs)
    inputs[5] = None
    before = case.scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="'DWI'"):
        logic.explain(case.scene, inputs, case.reference, case.segmentation, case.segment_id,
                             make_package(), 1, None, "cpu")
    assert case.scene.GetNumberOfNodes() == before
    assert logic.check_inputs(inputs, case.reference, SEQUENCES) == ["DWI"]
    assert logic.check_inputs(inputs[:4], None, SEQUENCES) == ["T2", "DWI", "reference volume"]


def subject_hierarchy_item_count(scene) -> int:
    subject_hierarchy = scene.GetSubjectHierarchyNode()
    ids = vtk.vtkIdList()
    subject_hierarchy.GetItemChildren(subject_hierarchy.GetSceneItemID(), ids, True)
    return ids.GetNumberOfIds()


@pytest.mark.parametrize("checks_before_cancel", [0, 2, 4, 5, 6, 7])
def test_cancelled_run_leaves_the_scene_unchanged(case, checks_before_cancel):
    """Cancel at each step, from the first check (before LRP) to the last (nodes created)."""
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > checks_before_cancel

    nodes, items = case.scene.GetNumberOfNodes(), subject_hierarchy_item_count(case.scene)
    with pytest.raises(jobs.Cancelled):
        logic.explain(case.scene, case.inputs, case.reference, case.segmentation, case.segment_id,
                             make_package(), 1, None, "cpu", cancel=cancel)
    assert case.scene.GetNumberOfNodes() == nodes
    assert subject_hierarchy_item_count(case.scene) == items


def test_error_while_creating_outputs_removes_partial_nodes(case, monkeypatch):
    def broken_chart(*args, **kwargs):
        raise RuntimeError("chart failed")

    monkeypatch.setattr(mrml, "create_shares_bar_chart", broken_chart)
    nodes = case.scene.GetNumberOfNodes()
    with pytest.raises(RuntimeError, match="chart failed"):
        logic.explain(case.scene, case.inputs, case.reference, case.segmentation, case.segment_id,
                             make_package(), 1, None, "cpu")
    assert case.scene.GetNumberOfNodes() == nodes


def test_package_box_bounds_are_used(case):
    model = make_model()
    request = logic.prepare_explain(case.inputs, case.reference, case.segmentation, case.segment_id,
                                           make_package(model), 1, None, "cpu")
    default = compute.compute_explanation(request, make_package(model))
    boxed = compute.compute_explanation(request, make_package(model, box_low=-10.0, box_high=10.0))
    assert not np.allclose(default.relevance, boxed.relevance)
    assert boxed.shares.sum() == pytest.approx(1.0, abs=1e-5)


def test_an_explain_click_runs_the_composition_passes_and_one_lrp_pass(case, monkeypatch):
    """The composition runs first: its C transposed passes give every voxel's s_a, so the region
    needs its LRP pass only (no transposed pass of its own)."""
    from lrp_models import count_graph_passes

    request = logic.prepare_explain(case.inputs, case.reference, case.segmentation, case.segment_id,
                                    make_package(), 1, None, "cpu")
    calls = count_graph_passes(monkeypatch)
    result = compute.compute_explanation(request, make_package())
    assert calls == {"transpose": len(SEQUENCES), "relevance": 1}
    assert result.shares.sum() == pytest.approx(1.0, abs=1e-5)


def test_a_real_model_package_drives_segment_and_explain(case, tmp_path):
    """models.package.ModelPackage (saved and loaded) is accepted as the package."""

    model = make_model()
    created = package_module.create_package(
        model, "unet3d", {"in_channels": 6, "out_channels": 2, "base_channels": 4, "depth": 2}, SEQUENCES,
        normalization=NORMALIZATION, class_names=["background", "liver lesion"], target_spacing=(1.5, 1.2, 2.0),
        patch_size=REFERENCE_SHAPE, class_colors=[(0.0, 0.0, 0.0), (0.9, 0.3, 0.1)], box_low=[-4.0] * 6,
        box_high=[4.0] * 6)
    package = package_module.load_package(created.save(tmp_path / "tiny.lrpmodel"))
    node = logic.segment(case.scene, case.inputs, case.reference, package, device="cpu")
    assert node.GetSegmentation().GetNthSegment(0).GetName() == "liver lesion"
    outputs = logic.explain(case.scene, case.inputs, case.reference, case.segmentation, case.segment_id,
                                   package, 1, None, "cpu")
    reference = engine.explain_region(package.build(), engine_input(case), torch.from_numpy(case.mask), 1,
                                      package.lrp_composite(), "cpu")
    np.testing.assert_allclose(outputs.shares, reference.sequence_shares.numpy(), rtol=1e-5, atol=1e-7)


def test_read_package_info_needs_only_the_json(tmp_path):

    created = package_module.create_package(
        make_model(), "unet3d", {"in_channels": 6, "out_channels": 2, "base_channels": 4, "depth": 2}, SEQUENCES,
        normalization=NORMALIZATION, class_names=["background", "liver lesion"], target_spacing=(1.0, 1.0, 1.0),
        patch_size=(8, 8, 8), reference_sequence="T2", composite="epsilon")
    folder = created.save(tmp_path / "tiny.lrpmodel")
    info = logic.read_package_info(folder)
    assert info.sequences == SEQUENCES and info.class_names == ["background", "liver lesion"]
    assert info.composite == "epsilon" and info.reference_sequence == "T2"
    assert logic.read_package_info(folder / "model.json").sequences == SEQUENCES
    with pytest.raises(FileNotFoundError, match="model.json is missing"):
        logic.read_package_info(tmp_path)


# ------------------------------------------------------------------------------------ the module's Logic


def _import_module_with_qt_stubbed(monkeypatch):
    """Import LRPSegmentation.py on slicer-core: Qt, ctk and the Slicer-app-only Python modules stubbed.

    Only the Logic and the self-test run; the Widget (Qt) needs the desktop application.
    """
    import importlib
    import sys
    import unittest

    def stub(name, **attributes):
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
        return module

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            pass

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            pass

    class ScriptedLoadableModule:
        pass

    class ScriptedLoadableModuleWidget:
        pass

    stub("qt")
    stub("ctk")
    i18n = stub("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text)
    wrapper = stub("slicer.parameterNodeWrapper", parameterNodeWrapper=lambda cls: cls,
                   Choice=lambda choices: None, WithinRange=lambda minimum, maximum: None)
    scripted = stub("slicer.ScriptedLoadableModule", ScriptedLoadableModule=ScriptedLoadableModule,
                    ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
                    ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
                    ScriptedLoadableModuleTest=ScriptedLoadableModuleTest)
    monkeypatch.setattr(slicer, "i18n", i18n, raising=False)
    monkeypatch.setattr(slicer, "parameterNodeWrapper", wrapper, raising=False)
    monkeypatch.setattr(slicer, "ScriptedLoadableModule", scripted, raising=False)
    monkeypatch.syspath_prepend(str(Path(logic.__file__).resolve().parents[2]))  # LRPSegmentation/
    monkeypatch.delitem(sys.modules, "LRPSegmentation", raising=False)
    return importlib.import_module("LRPSegmentation")


def test_the_module_self_test_runs_on_slicer_core(mrml_scene, monkeypatch):
    module = _import_module_with_qt_stubbed(monkeypatch)
    test = module.LRPSegmentationTest()
    test.runTest()  # segment, empty-segment + missing-input errors, cancel, explain, repaint
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 1


def test_the_module_logic_reads_package_info_and_finds_no_default_model(monkeypatch, tmp_path):
    module = _import_module_with_qt_stubbed(monkeypatch)
    logic = module.LRPSegmentationLogic()
    assert isinstance(logic.defaultModelPath(), str)
    info = logic.torchInfo()
    assert "PyTorch" in info["text"] and isinstance(info["cuda_devices"], list)
    assert logic.missingInputs([None] * 6, None, SEQUENCES) == [*SEQUENCES, "reference volume"]


# ------------------------------------------------------------------------------------ region A shortcuts

CLASS_NAMES = ["background", "tumour"]


def shortcut_labels():
    """Predicted labels with two lesions (lesion 2 has a voxel joined only by a corner: 26-connectivity)
    and a ground truth inside the prediction (so FN is empty)."""
    predicted = np.zeros(REFERENCE_SHAPE, np.uint8)
    predicted[1:3, 1:3, 1:3] = 1  # lesion 1: 8 voxels
    predicted[5:7, 4:7, 7:10] = 1  # lesion 2: 18 voxels ...
    predicted[7, 7, 10] = 1  # ... + 1 voxel touching (6, 6, 9) by a corner only
    truth = np.zeros(REFERENCE_SHAPE, np.uint8)
    truth[1:3, 1:3, 1:3] = 1
    truth[5:7, 4:6, 7:10] = 1
    return predicted, truth


def voxel_ras(index):
    """World RAS of the centre of voxel (k, j, i) of the reference grid."""
    k, j, i = index
    return (REFERENCE_IJK_TO_RAS @ np.array([i, j, k, 1.0]))[:3]


def segmentation_from_labels(case, labels, name):
    node = mrml.add_segmentation_from_labels(case.scene, labels, CLASS_NAMES, [(0, 0, 0), (0.9, 0.3, 0.1)],
                                             case.reference, name)
    return node, node.GetSegmentation().GetSegmentIdBySegmentName("tumour")


@pytest.fixture
def shortcut_case(case):
    predicted_labels, truth_labels = shortcut_labels()
    predicted, predicted_id = segmentation_from_labels(case, predicted_labels, "prediction")
    truth, truth_id = segmentation_from_labels(case, truth_labels, "ground truth")
    return types.SimpleNamespace(case=case, scene=case.scene, reference=case.reference, regions=case.segmentation,
                                 predicted=predicted, predicted_id=predicted_id, truth=truth, truth_id=truth_id,
                                 predicted_labels=predicted_labels, truth_labels=truth_labels)


def shortcut(c, mode, **kwargs):
    options = dict(truth_segmentation_node=c.truth, truth_segment_id=c.truth_id)
    options.update(kwargs)
    return shortcuts.create_region_segment(c.scene, c.regions, c.reference, mode, c.predicted, c.predicted_id,
                                              **options)


def test_predicted_shortcut_copies_the_target_class_segment(shortcut_case):
    c = shortcut_case
    segment_id = shortcut(c, "predicted")
    segment = c.regions.GetSegmentation().GetSegment(segment_id)
    assert segment.GetName() == "A: predicted tumour"
    expected = regions.select_regions("predicted", c.predicted_labels, 1)["predicted"]
    np.testing.assert_array_equal(mrml.segment_mask(c.regions, segment_id, c.reference), expected)
    # region A ("A") is untouched; the prediction itself too.
    np.testing.assert_array_equal(mrml.segment_mask(c.regions, c.case.segment_id, c.reference), c.case.mask)
    np.testing.assert_array_equal(mrml.segment_mask(c.predicted, c.predicted_id, c.reference), expected)


def test_this_lesion_shortcut_takes_the_26_connected_lesion_at_the_point(shortcut_case):
    c = shortcut_case
    lesions = regions.connected_components(c.predicted_labels == 1)
    assert len(lesions) == 2  # the corner voxel belongs to lesion 2 (26-connectivity)
    lesion_2 = next(lesion for lesion in lesions if lesion[6, 5, 8])
    assert lesion_2[7, 7, 10] and lesion_2.sum() == 19

    segment_id = shortcut(c, "lesion", ras_point=voxel_ras((6, 5, 8)))
    assert c.regions.GetSegmentation().GetSegment(segment_id).GetName() == "A: this tumour lesion"
    np.testing.assert_array_equal(mrml.segment_mask(c.regions, segment_id, c.reference), lesion_2)

    segments = c.regions.GetSegmentation().GetNumberOfSegments()
    nodes = c.scene.GetNumberOfNodes()
    for outside in [(0, 7, 0), (-5, 0, 0)]:  # background voxel; outside the volume
        with pytest.raises(shortcuts.EmptyRegionError, match="no predicted lesion at this point"):
            shortcut(c, "lesion", ras_point=voxel_ras(outside))
    assert c.regions.GetSegmentation().GetNumberOfSegments() == segments
    assert c.scene.GetNumberOfNodes() == nodes  # no temporary node left behind

    # Another point (lesion 1): the same segment is replaced, not duplicated.
    assert shortcut(c, "lesion", ras_point=voxel_ras((1, 2, 1))) == segment_id
    assert c.regions.GetSegmentation().GetNumberOfSegments() == segments
    lesion_1 = next(lesion for lesion in lesions if lesion[1, 2, 1])
    np.testing.assert_array_equal(mrml.segment_mask(c.regions, segment_id, c.reference), lesion_1)


def test_ras_point_goes_through_the_reference_parent_transform(shortcut_case):
    c = shortcut_case
    transform = c.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 25.0)
    transform.SetMatrixTransformToParent(matrix)
    c.reference.SetAndObserveTransformNodeID(transform.GetID())
    world = voxel_ras((6, 5, 8)) + np.array([25.0, 0.0, 0.0])
    assert shortcuts.ras_to_voxel(c.reference, world) == (6, 5, 8)
    assert shortcuts.ras_to_voxel(c.reference, voxel_ras((6, 5, 8))) != (6, 5, 8)


def test_error_shortcuts_match_select_regions_and_an_empty_fn_is_reported_not_created(shortcut_case):
    c = shortcut_case
    result = shortcuts.create_error_segments(c.scene, c.regions, c.reference, c.predicted, c.predicted_id,
                                                c.truth, c.truth_id)
    assert result.empty == ["fn"] and set(result.segment_ids) == {"tp", "fp"}
    assert result.voxels["fn"] == 0 and "no FN voxels" in result.message
    segmentation = c.regions.GetSegmentation()
    assert not segmentation.GetSegmentIdBySegmentName("A: FN tumour")
    for mode in ("tp", "fp"):
        expected = regions.select_regions(mode, c.predicted_labels, 1, c.truth_labels)[mode]
        segment_id = result.segment_ids[mode]
        assert segmentation.GetSegment(segment_id).GetName() == f"A: {mode.upper()} tumour"
        np.testing.assert_array_equal(mrml.segment_mask(c.regions, segment_id, c.reference), expected)
        assert result.voxels[mode] == int(expected.sum())
    assert regions.select_regions("fn", c.predicted_labels, 1, c.truth_labels) == {}

    # The single-mode call reports the empty FN the same way.
    segments = segmentation.GetNumberOfSegments()
    with pytest.raises(shortcuts.EmptyRegionError, match="no false negatives"):
        shortcut(c, "fn")
    assert segmentation.GetNumberOfSegments() == segments

    # Twice: replaced, same IDs, same segment count.
    again = shortcuts.create_error_segments(c.scene, c.regions, c.reference, c.predicted, c.predicted_id,
                                               c.truth, c.truth_id)
    assert again.segment_ids == result.segment_ids and segmentation.GetNumberOfSegments() == segments

    # A ground truth with a missed lesion: FN appears; FP (now empty) is removed, not left stale.
    truth_labels = c.predicted_labels.copy()
    truth_labels[3:5, 6:8, 0:2] = 1
    truth, truth_id = segmentation_from_labels(c.case, truth_labels, "ground truth 2")
    third = shortcuts.create_error_segments(c.scene, c.regions, c.reference, c.predicted, c.predicted_id,
                                               truth, truth_id)
    assert third.empty == ["fp"] and not segmentation.GetSegmentIdBySegmentName("A: FP tumour")
    expected_fn = regions.select_regions("fn", c.predicted_labels, 1, truth_labels)["fn"]
    np.testing.assert_array_equal(mrml.segment_mask(c.regions, third.segment_ids["fn"], c.reference), expected_fn)
    assert third.segment_ids["tp"] == result.segment_ids["tp"]


def test_each_shortcut_twice_keeps_the_segment_count(shortcut_case):
    c = shortcut_case
    point = dict(ras_point=voxel_ras((5, 4, 7)))
    first = {mode: shortcut(c, mode, **(point if mode == "lesion" else {})) for mode in ("predicted", "lesion", "tp",
                                                                                          "fp")}
    count = c.regions.GetSegmentation().GetNumberOfSegments()
    assert count == 1 + len(first)  # region A + one per shortcut
    second = {mode: shortcut(c, mode, **(point if mode == "lesion" else {})) for mode in first}
    assert second == first and c.regions.GetSegmentation().GetNumberOfSegments() == count


def test_shortcut_inputs_missing_are_named_errors(shortcut_case):
    c = shortcut_case
    with pytest.raises(ValueError, match="no predicted segment selected"):
        shortcuts.create_region_segment(c.scene, c.regions, c.reference, "predicted", None, "")
    with pytest.raises(ValueError, match="no ground-truth segment selected"):
        shortcut(c, "tp", truth_segmentation_node=None)
    with pytest.raises(ValueError, match="place the crosshair"):
        shortcut(c, "lesion")
    with pytest.raises(ValueError, match="unknown region shortcut"):
        shortcut(c, "lesions")
    empty = c.predicted.GetSegmentation().AddEmptySegment("", "nothing")
    with pytest.raises(shortcuts.EmptyRegionError, match="the predicted segment 'nothing' is empty"):
        shortcuts.create_region_segment(c.scene, c.regions, c.reference, "predicted", c.predicted, empty)


def test_shortcut_into_a_new_region_segmentation(shortcut_case):
    c = shortcut_case
    regions = shortcuts.ensure_region_segmentation(c.scene, None, c.reference)
    assert regions.GetName() == shortcuts.REGION_SEGMENTATION_NAME
    segment_id = shortcuts.create_region_segment(c.scene, regions, c.reference, "predicted", c.predicted,
                                                    c.predicted_id)
    np.testing.assert_array_equal(mrml.segment_mask(regions, segment_id, c.reference), c.predicted_labels == 1)
    assert shortcuts.ensure_region_segmentation(c.scene, regions, c.reference) is regions


def test_update_region_follows_a_shortcut_repaint(shortcut_case):
    c = shortcut_case
    outputs = logic.explain(c.scene, c.case.inputs, c.reference, c.regions, c.case.segment_id,
                                   make_package(), 1, None, "cpu")
    composition = torch.from_numpy(publish.composition_array(outputs.composition_node))

    def check(segment_id):
        mask = mrml.segment_mask(c.regions, segment_id, c.reference)
        shares, used, excluded = logic.update_region(c.scene, outputs, None, c.regions, segment_id,
                                                            c.reference)
        expected, expected_used, expected_excluded = engine.region_shares(composition, torch.from_numpy(mask))
        np.testing.assert_allclose(shares, expected.numpy(), rtol=1e-5, atol=1e-7)
        assert (used, excluded) == (expected_used, expected_excluded)
        np.testing.assert_allclose(table_rows(outputs.table_node)[1], expected.numpy(), rtol=1e-5, atol=1e-7)
        return shares

    lesion_id = shortcut(c, "lesion", ras_point=voxel_ras((6, 5, 8)))
    lesion_2 = check(lesion_id)
    assert shortcut(c, "lesion", ras_point=voxel_ras((1, 1, 1))) == lesion_id  # repaint the same segment
    lesion_1 = check(lesion_id)
    assert not np.allclose(lesion_1, lesion_2)
    check(shortcut(c, "predicted"))
    check(shortcuts.create_error_segments(c.scene, c.regions, c.reference, c.predicted, c.predicted_id,
                                             c.truth, c.truth_id).segment_ids["fp"])


# ------------------------------------------------------------------------------------ colour legend


def publish_synthetic(case, cancel=None):
    """publish_explanation on made-up arrays (no LRP pass)."""
    rng = np.random.default_rng(3)
    channels = len(SEQUENCES)
    composition = rng.random((channels, *REFERENCE_SHAPE)).astype(np.float32)
    composition /= composition.sum(0, keepdims=True)
    result = compute.ExplainResult(
        relevance=rng.normal(size=(channels, *REFERENCE_SHAPE)).astype(np.float32) * 1e-3, composition=composition,
        shares=np.full(channels, 1 / channels), positive_shares=np.full(channels, 1 / channels),
        n_used=int(case.mask.sum()), n_excluded=0, sequence_names=list(SEQUENCES))
    return publish.publish_explanation(case.scene, result, case.reference, cancel=cancel)


def legend_count(scene):
    return scene.GetNumberOfNodesByClass("vtkMRMLColorLegendDisplayNode")


def test_publish_without_colour_legend_support_works(case):
    """slicer-core's headless scene has no colour legend node class: publishing skips the legend."""
    outputs = publish_synthetic(case)
    assert len(outputs.relevance_nodes) == len(SEQUENCES)
    assert legend_count(case.scene) == 0
    for node in outputs.relevance_nodes:
        assert node.GetNumberOfDisplayNodes() == 1


def test_publish_adds_a_colour_legend_where_the_colors_logic_offers_one(case, monkeypatch):
    calls = []

    class DesktopColorLogic:  # what vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode does
        def AddDefaultColorLegendDisplayNode(self, node):
            calls.append(node.GetID())
            legend = slicer.vtkMRMLColorLegendDisplayNode()
            node.GetScene().AddNode(legend)
            legend.SetAndObservePrimaryDisplayNode(node.GetDisplayNode())
            node.AddAndObserveDisplayNodeID(legend.GetID())
            return legend

    monkeypatch.setattr(slicer.modules, "colors", types.SimpleNamespace(logic=DesktopColorLogic))
    nodes = case.scene.GetNumberOfNodes()
    outputs = publish_synthetic(case)
    assert calls == [node.GetID() for node in outputs.relevance_nodes]
    assert legend_count(case.scene) == len(SEQUENCES)
    legend = outputs.relevance_nodes[0].GetNthDisplayNode(1)
    assert legend.IsA("vtkMRMLColorLegendDisplayNode") and legend.GetTitleText() == "Relevance"
    # Removing the outputs (Cancel's path) takes the legends with them.
    mrml.remove_output_folder(case.scene, outputs.folder_item_id)
    assert legend_count(case.scene) == 0
    assert case.scene.GetNumberOfNodes() == nodes + 1  # the shared colour table stays

    class BrokenColorLogic:
        def AddDefaultColorLegendDisplayNode(self, node):
            raise RuntimeError("no legend here")

    monkeypatch.setattr(slicer.modules, "colors", types.SimpleNamespace(logic=BrokenColorLogic))
    assert len(publish_synthetic(case).relevance_nodes) == len(SEQUENCES)


# ------------------------------------------------------------------------------------ reference volume by name


def test_find_volume_by_name_for_the_reference_sequence(case):
    assert logic.find_volume_by_name(case.scene, "T1 pre") is case.reference
    assert logic.find_volume_by_name(case.scene, "t1 PRE") is case.reference
    assert logic.find_volume_by_name(case.scene, "T1-arterial") is case.inputs[1]
    assert logic.find_volume_by_name(case.scene, "T1-15min") is None
    assert logic.find_volume_by_name(case.scene, None) is None
    add_volume(np.zeros(REFERENCE_SHAPE), REFERENCE_IJK_TO_RAS, "T1_pre")
    add_volume(np.zeros(REFERENCE_SHAPE), REFERENCE_IJK_TO_RAS, "T1-pre")
    assert logic.find_volume_by_name(case.scene, "T1 pre") is case.reference  # exact wins
    assert logic.find_volume_by_name(case.scene, "t1.pre") is None  # ambiguous


def test_shortcuts_fire_the_events_the_module_observes_and_update_region_fires_none(shortcut_case):
    """The widget restarts its 300 ms timer on SegmentModified / RepresentationModified of the region
    segmentation node; update_region must not fire them itself (no feedback loop)."""
    c = shortcut_case
    outputs = publish_synthetic(c.case)
    events = []
    tags = [c.regions.AddObserver(event, lambda caller, event_name: events.append(event_name))
            for event in (slicer.vtkSegmentation.SegmentModified, slicer.vtkSegmentation.RepresentationModified)]
    try:
        segment_id = shortcut(c, "predicted")
        assert events, "a shortcut repaint must notify the observers of the segmentation node"
        events.clear()
        shortcut(c, "predicted")  # replacing fires them too
        assert events
        events.clear()
        logic.update_region(c.scene, outputs, None, c.regions, segment_id, c.reference)
        assert events == []
    finally:
        for tag in tags:
            c.regions.RemoveObserver(tag)


def test_crosshair_ras_reads_the_crosshair_node(mrml_scene):
    crosshair = mrml_scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
    if crosshair is None:  # the desktop app has one singleton; the headless scene may not
        crosshair = mrml_scene.AddNewNodeByClass("vtkMRMLCrosshairNode")
    crosshair.SetCrosshairRAS(1.5, -2.0, 30.0)
    assert shortcuts.crosshair_ras(mrml_scene) == (1.5, -2.0, 30.0)


def test_the_module_logic_prefers_the_bundled_demo_and_finds_the_reference_volume(case, monkeypatch):
    module = _import_module_with_qt_stubbed(monkeypatch)
    logic = module.LRPSegmentationLogic()
    # The bundled demo is in the repository (module_state.default_model_path: Testing/test_slicer_module_state.py).
    assert Path(logic.defaultModelPath()).parts[-3:] == ("Resources", "Models", "demo_unet3d.lrpmodel")
    assert logic.findReferenceVolume(types.SimpleNamespace(reference_sequence="T1 arterial")) is case.inputs[1]
    assert logic.findReferenceVolume(types.SimpleNamespace(reference_sequence=None)) is None
    assert logic.findReferenceVolume(None) is None


# ------------------------------------------------------------------------------------ one MRML form


def folder_layout(scene, folder_item_id):
    """(class, name without the folder's name) of every node in an output folder."""
    subject_hierarchy = scene.GetSubjectHierarchyNode()
    prefix = subject_hierarchy.GetItemName(folder_item_id) + " "
    ids = vtk.vtkIdList()
    subject_hierarchy.GetItemChildren(folder_item_id, ids, True)
    nodes = [subject_hierarchy.GetItemDataNode(ids.GetId(i)) for i in range(ids.GetNumberOfIds())]
    return sorted((node.GetClassName(), node.GetName().removeprefix(prefix)) for node in nodes)


def table_columns(table_node):
    table = table_node.GetTable()
    return [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]


def test_the_scene_export_has_the_module_layout_and_update_region_works_on_the_loaded_scene(case, tmp_path):
    """save_slicer_scene publishes like the module does; the loaded .mrml is found like the module
    finds it, and a repainted region's shares are the composition's region_shares (no LRP pass)."""
    from LRPSegmentationLib import pipeline
    from LRPSegmentationLib.imaging import Geometry
    from LRPSegmentationLib.slicer.headless import clear_scene
    from LRPSegmentationLib.slicer.scene import save_slicer_scene

    model = make_model()
    package = make_package(model)
    module_outputs = logic.explain(case.scene, case.inputs, case.reference, case.segmentation, case.segment_id,
                                   package, 1, None, "cpu")
    module_layout = folder_layout(case.scene, module_outputs.folder_item_id)
    module_columns = table_columns(module_outputs.table_node)

    images = mrml.arrays_on_reference(case.inputs, case.reference, SEQUENCES)  # the case on the reference grid
    geometry = Geometry.from_ijk_to_ras(REFERENCE_IJK_TO_RAS, REFERENCE_SHAPE)
    result = pipeline.explain_case(pipeline.Case("tiny", images, geometry, list(SEQUENCES)), model, package,
                                   regions={"predicted": case.mask}, device="cpu")
    path = save_slicer_scene(result, tmp_path, package)

    scene = clear_scene()
    scene.SetURL(str(path))
    assert scene.Import()
    outputs = publish.find_explanation(scene)  # what the module does on a loaded scene
    assert outputs is not None and outputs.sequence_names == SEQUENCES
    assert folder_layout(scene, outputs.folder_item_id) == module_layout
    assert table_columns(outputs.table_node) == module_columns
    assert outputs.composition_node.GetImageData().GetNumberOfScalarComponents() == len(SEQUENCES)
    explanation = result.explanations["predicted"]
    np.testing.assert_allclose(outputs.shares, explanation.sequence_shares.numpy(), atol=1e-6)  # table as text
    assert (outputs.n_used, outputs.n_excluded) == (explanation.n_used, explanation.n_excluded)
    for channel, node in enumerate(outputs.relevance_nodes):
        np.testing.assert_allclose(slicer.util.arrayFromVolume(node), explanation.relevance[channel].numpy(),
                                   rtol=1e-6, atol=1e-9)
    reference = logic.find_volume_by_name(scene, package.reference_sequence)
    segmentation = scene.GetFirstNodeByName(f"{reference.GetName()} LRP segmentation")
    assert segmentation is not None and segmentation.IsA("vtkMRMLSegmentationNode")

    new_mask = np.zeros(REFERENCE_SHAPE, bool)
    new_mask[1:4, 4:8, 0:6] = True
    regions_node = shortcuts.ensure_region_segmentation(scene, None, reference)
    segment_id = shortcuts.write_region_segment(regions_node, "A: repainted", new_mask, reference)
    shares, used, excluded = logic.update_region(scene, outputs, None, regions_node, segment_id, reference)
    expected, expected_used, expected_excluded = engine.region_shares(torch.from_numpy(result.composition),
                                                                      torch.from_numpy(new_mask))
    np.testing.assert_allclose(shares, expected.numpy(), rtol=1e-5, atol=1e-7)
    assert (used, excluded) == (expected_used, expected_excluded)
    np.testing.assert_allclose(table_rows(outputs.table_node)[1], expected.numpy(), rtol=1e-5, atol=1e-7)


def test_find_explanation_gives_the_nodes_explain_created(case):
    assert publish.find_explanation(case.scene) is None
    outputs = logic.explain(case.scene, case.inputs, case.reference, case.segmentation, case.segment_id,
                            make_package(), 0, None, "cpu", cross_check=True)
    found = publish.find_explanation(case.scene)
    assert found.composition_node is outputs.composition_node and found.table_node is outputs.table_node
    assert found.chart_node is outputs.chart_node and found.folder_item_id == outputs.folder_item_id
    assert [n.GetID() for n in found.relevance_nodes] == [n.GetID() for n in outputs.relevance_nodes]
    assert found.sequence_names == outputs.sequence_names and found.caution == outputs.caution
    np.testing.assert_allclose(found.shares, outputs.shares, rtol=1e-6)
    assert (found.n_used, found.n_excluded) == (outputs.n_used, outputs.n_excluded)
    mrml.remove_output_folder(case.scene, outputs.folder_item_id)
    assert publish.find_explanation(case.scene) is None


def test_the_slicer_wing_imports_without_torch():
    import subprocess
    import sys

    script = ("import sys\nimport LRPSegmentationLib.slicer.logic, LRPSegmentationLib.slicer.shortcuts, "
              "LRPSegmentationLib.slicer.publish, LRPSegmentationLib.slicer.scene, LRPSegmentationLib.slicer.jobs, "
              "LRPSegmentationLib.slicer.compute, LRPSegmentationLib.slicer.worker_client\n"
              "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
