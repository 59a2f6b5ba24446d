"""Tests for LRPSegmentationLib.slicer_logic (the module's Qt-free logic) on real MRML nodes.

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

from LRPSegmentationLib import engine, mrml, slicer_logic  # noqa: E402
from LRPSegmentationLib.imaging import normalize_sequences  # noqa: E402
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
                   reference_sequence=SEQUENCES[0], target_spacing=(1.0, 1.0, 1.0), patch_size=REFERENCE_SHAPE,
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
    node = slicer_logic.segment(case.scene, case.inputs, case.reference, package, device="cpu")
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
    node = slicer_logic.segment(mrml_scene, inputs, inputs[0], make_package(), device="cpu")
    labelmap = mrml.segment_mask(node, node.GetSegmentation().GetNthSegmentID(0), inputs[0])
    assert labelmap.shape == shape


def test_segment_missing_input_names_the_sequence(case):
    inputs = list(case.inputs)
    inputs[4] = None
    before = case.scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="'T2'"):
        slicer_logic.segment(case.scene, inputs, case.reference, make_package(), device="cpu")
    assert case.scene.GetNumberOfNodes() == before


# ------------------------------------------------------------------------------------ explain


def test_explain_outputs_geometry_table_and_shares_equal_the_engine(case):
    model = make_model()
    package = make_package(model)
    target = engine.Target(1, contrast=True)
    progress = []
    outputs = slicer_logic.explain(case.scene, case.inputs, case.reference, case.segmentation, case.segment_id,
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


def test_repainting_region_a_updates_the_same_table_without_lrp(case, monkeypatch):
    model = make_model()
    package = make_package(model)
    outputs = slicer_logic.explain(case.scene, case.inputs, case.reference, case.segmentation, case.segment_id,
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
    shares, n_used, n_excluded = slicer_logic.update_region(case.scene, outputs, None, case.segmentation,
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
    shares_again, _, _ = slicer_logic.update_region(case.scene, outputs.composition_node, outputs.table_node,
                                                    case.segmentation, case.segment_id, case.reference)
    np.testing.assert_allclose(shares_again, shares)


def test_empty_segment_is_an_error_and_creates_nothing(case):
    empty_id = case.segmentation.GetSegmentation().AddEmptySegment("B", "lesion core")
    before = case.scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="the segment 'lesion core' is empty: paint region A first"):
        slicer_logic.explain(case.scene, case.inputs, case.reference, case.segmentation, empty_id,
                             make_package(), 1, None, "cpu")
    assert case.scene.GetNumberOfNodes() == before


def test_missing_input_is_an_error_naming_the_sequence(case):
    inputs = list(case.inputs)
    inputs[5] = None
    before = case.scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="'DWI'"):
        slicer_logic.explain(case.scene, inputs, case.reference, case.segmentation, case.segment_id,
                             make_package(), 1, None, "cpu")
    assert case.scene.GetNumberOfNodes() == before
    assert slicer_logic.check_inputs(inputs, case.reference, SEQUENCES) == ["DWI"]
    assert slicer_logic.check_inputs(inputs[:4], None, SEQUENCES) == ["T2", "DWI", "reference volume"]


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
    with pytest.raises(slicer_logic.Cancelled):
        slicer_logic.explain(case.scene, case.inputs, case.reference, case.segmentation, case.segment_id,
                             make_package(), 1, None, "cpu", cancel=cancel)
    assert case.scene.GetNumberOfNodes() == nodes
    assert subject_hierarchy_item_count(case.scene) == items


def test_error_while_creating_outputs_removes_partial_nodes(case, monkeypatch):
    def broken_chart(*args, **kwargs):
        raise RuntimeError("chart failed")

    monkeypatch.setattr(mrml, "create_shares_bar_chart", broken_chart)
    nodes = case.scene.GetNumberOfNodes()
    with pytest.raises(RuntimeError, match="chart failed"):
        slicer_logic.explain(case.scene, case.inputs, case.reference, case.segmentation, case.segment_id,
                             make_package(), 1, None, "cpu")
    assert case.scene.GetNumberOfNodes() == nodes


def test_package_box_bounds_are_used(case):
    model = make_model()
    request = slicer_logic.prepare_explain(case.inputs, case.reference, case.segmentation, case.segment_id,
                                           make_package(model), 1, None, "cpu")
    default = slicer_logic.compute_explanation(request, make_package(model))
    boxed = slicer_logic.compute_explanation(request, make_package(model, box_low=-10.0, box_high=10.0))
    assert not np.allclose(default.relevance, boxed.relevance)
    assert boxed.shares.sum() == pytest.approx(1.0, abs=1e-5)


def test_background_job_runs_the_compute_step_in_a_thread_and_can_be_cancelled(case):
    """The module's pattern: prepare (main) -> compute (worker thread) -> publish (main)."""
    import threading

    model = make_model()
    package = make_package(model)
    request = slicer_logic.prepare_explain(case.inputs, case.reference, case.segmentation, case.segment_id,
                                           package, 1, None, "cpu")
    threads = []

    def compute(progress, cancel):
        threads.append(threading.current_thread())
        return slicer_logic.compute_explanation(request, package, model, progress, cancel)

    job = slicer_logic.BackgroundJob(compute).start()
    assert job.wait(120) and job.done
    assert threads[0] is not threading.main_thread()
    assert job.fraction >= 0.9
    outputs = slicer_logic.publish_explanation(case.scene, request, job.result(), case.reference)
    assert len(outputs.relevance_nodes) == len(SEQUENCES)

    nodes = case.scene.GetNumberOfNodes()
    job = slicer_logic.BackgroundJob(compute)
    job.cancel()
    job.start()
    assert job.wait(120)
    with pytest.raises(slicer_logic.Cancelled):
        job.result()
    assert case.scene.GetNumberOfNodes() == nodes


def test_a_real_model_package_drives_segment_and_explain(case, tmp_path):
    """models.package.ModelPackage (saved and loaded) is accepted as the package."""

    model = make_model()
    created = package_module.create_package(
        model, "unet3d", {"in_channels": 6, "out_channels": 2, "base_channels": 4, "depth": 2}, SEQUENCES,
        normalization=NORMALIZATION, class_names=["background", "liver lesion"], target_spacing=(1.5, 1.2, 2.0),
        patch_size=REFERENCE_SHAPE, class_colors=[(0.0, 0.0, 0.0), (0.9, 0.3, 0.1)], box_low=[-4.0] * 6,
        box_high=[4.0] * 6)
    package = package_module.load_package(created.save(tmp_path / "tiny.lrpmodel"))
    node = slicer_logic.segment(case.scene, case.inputs, case.reference, package, device="cpu")
    assert node.GetSegmentation().GetNthSegment(0).GetName() == "liver lesion"
    outputs = slicer_logic.explain(case.scene, case.inputs, case.reference, case.segmentation, case.segment_id,
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
    info = slicer_logic.read_package_info(folder)
    assert info.sequences == SEQUENCES and info.class_names == ["background", "liver lesion"]
    assert info.composite == "epsilon" and info.reference_sequence == "T2"
    assert slicer_logic.read_package_info(folder / "model.json").sequences == SEQUENCES
    with pytest.raises(FileNotFoundError, match="model.json is missing"):
        slicer_logic.read_package_info(tmp_path)


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
    wrapper = stub("slicer.parameterNodeWrapper", parameterNodeWrapper=lambda cls: cls)
    scripted = stub("slicer.ScriptedLoadableModule", ScriptedLoadableModule=ScriptedLoadableModule,
                    ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
                    ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
                    ScriptedLoadableModuleTest=ScriptedLoadableModuleTest)
    monkeypatch.setattr(slicer, "i18n", i18n, raising=False)
    monkeypatch.setattr(slicer, "parameterNodeWrapper", wrapper, raising=False)
    monkeypatch.setattr(slicer, "ScriptedLoadableModule", scripted, raising=False)
    monkeypatch.syspath_prepend(str(Path(slicer_logic.__file__).resolve().parents[1]))
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
