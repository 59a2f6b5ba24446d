"""The Slicer module's Qt-free parts on real MRML nodes (slicer-core): model path, torch checks, jobs,
the state rebuilt from a reloaded scene, replacing previous outputs, the most relevant map shown
first, a transformed reference, the sample case, the self-test's checks and `ModuleLogic`.

Only the widget (Qt) needs the desktop application; everything it decides is tested here.
"""
from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
vtk = pytest.importorskip("vtk")

from LRPSegmentationLib import phantom  # noqa: E402
from LRPSegmentationLib.slicer import compute, logic, module_checks, module_logic, module_state, mrml, publish  # noqa: E402
from LRPSegmentationLib.slicer import sample_data  # noqa: E402
from LRPSegmentationLib.vocabulary import DEMO_MODEL, DEMO_MODEL_RESOURCE  # noqa: E402

RESOURCES = module_logic.RESOURCES
NAMES = ["T2", "plainT1", "T1-20s"]
SHAPE = (4, 5, 6)
IJK_TO_RAS = np.array([[2.0, 0, 0, -3.0], [0, 1.5, 0, 4.0], [0, 0, 3.0, 10.0], [0, 0, 0, 1.0]])


def add_volume(name, array=None, ijk_to_ras=IJK_TO_RAS):
    array = np.random.default_rng(len(name)).normal(size=SHAPE) if array is None else array
    return slicer.util.addVolumeFromArray(np.asarray(array, np.float32), ijk_to_ras, name)


def explain_result(positive_shares=(0.2, 0.5, 0.3), region_name="region A"):
    """A synthetic explanation on SHAPE (what the computation process returns)."""
    rng = np.random.default_rng(0)
    return compute.ExplainResult(relevance=rng.normal(size=(len(NAMES), *SHAPE)).astype(np.float32),
                                 composition=np.full((len(NAMES), *SHAPE), 1 / 3, np.float32),
                                 shares=np.array([0.3, 0.4, 0.3]), positive_shares=np.array(positive_shares),
                                 n_used=12, n_excluded=1, sequence_names=list(NAMES), region_name=region_name)


# ------------------------------------------------------------------------------------ model path


def test_the_bundled_demo_is_stored_relative_and_resolved_at_use(tmp_path):
    bundled = tmp_path / "Resources" / DEMO_MODEL_RESOURCE
    bundled.mkdir(parents=True)
    resources = tmp_path / "Resources"
    assert module_state.default_model_path(resources) == Path(DEMO_MODEL_RESOURCE)
    assert not Path(DEMO_MODEL_RESOURCE).is_absolute()
    assert module_state.storable_model_path(bundled, resources) == Path(DEMO_MODEL_RESOURCE)
    assert module_state.resolve_model_path(Path(DEMO_MODEL_RESOURCE), resources) == bundled
    # An update moves the versioned install folder: the stored relative path follows it.
    moved = tmp_path / "Slicer-5.12" / "Resources"
    (moved / DEMO_MODEL_RESOURCE).mkdir(parents=True)
    assert module_state.resolve_model_path(Path(DEMO_MODEL_RESOURCE), moved) == moved / DEMO_MODEL_RESOURCE
    # A scene saved by an older module version holds the absolute demo path of a folder now gone.
    stale = tmp_path / "Slicer-5.10" / "Resources" / DEMO_MODEL_RESOURCE
    assert module_state.resolve_model_path(stale, moved) == moved / DEMO_MODEL_RESOURCE
    # Saved on Windows: backslashes.
    assert module_state.resolve_model_path("Models\\demo_unet3d.lrpmodel", moved) == moved / DEMO_MODEL_RESOURCE


def test_a_user_package_is_stored_absolute_and_no_model_is_none(tmp_path):
    resources, own = tmp_path / "Resources", tmp_path / "mine" / "liver.lrpmodel"
    own.mkdir(parents=True)
    assert module_state.storable_model_path(own, resources) == own
    assert module_state.resolve_model_path(own, resources) == own
    gone = tmp_path / "elsewhere" / "x.lrpmodel"
    assert module_state.resolve_model_path(gone, resources) == gone  # reported as missing by the reader
    # The parameter node's Path serializer turns "" into "." (pathlib.Path()): both mean no model.
    for nothing in ("", ".", None, Path()):
        assert module_state.resolve_model_path(nothing, resources) is None
    assert module_state.storable_model_path("", resources) == Path()


def test_default_model_falls_back_to_another_bundled_package_or_none(tmp_path):
    assert module_state.default_model_path(tmp_path) == Path()
    (tmp_path / "Models" / "other.lrpmodel").mkdir(parents=True)
    assert module_state.default_model_path(tmp_path) == Path("Models/other.lrpmodel")


def test_the_module_logic_resolves_against_the_module_resources():
    module = module_logic.ModuleLogic()
    assert Path(module.defaultModelPath()) == DEMO_MODEL
    assert module.storableModelPath(DEMO_MODEL) == Path(DEMO_MODEL_RESOURCE)
    assert module.resolveModelPath(Path(DEMO_MODEL_RESOURCE)) == DEMO_MODEL


def test_the_model_description_shows_name_version_and_description():
    description = logic.read_package_info(str(DEMO_MODEL))
    text = module_state.describe_package(description)
    assert "<b>demo_unet3d</b>" in text and description.weights["sha256"][:8] in text
    assert "352,966 parameters" in text and "held-out Dice 0.949" in text
    assert "synthetic six-sequence liver phantom" in text and "T1-15min" in text and "tumour" in text
    plain = types.SimpleNamespace(name="a<b", description="", sequences=["x"], class_names=["bg", "y"], weights={})
    assert module_state.describe_package(plain) == "<b>a&lt;b</b><br>Sequences: x. Classes: bg, y."


# ------------------------------------------------------------------------------------ torch


@pytest.mark.parametrize("version, problem", [
    (None, "not installed"), ("2.0.1", "needs 2.1 or later"), ("1.13.1+cu117", "needs 2.1 or later"),
    ("2.1", ""), ("2.1.0", ""), ("2.14.1+cu130", ""), ("2.6.0.dev20240101", ""), ("banana", "cannot be read")])
def test_the_installed_torch_version_is_checked(version, problem):
    found = module_state.torch_version_problem(version)
    assert (problem in found) if problem else found == ""


def test_the_torch_version_comes_from_metadata_and_devices_from_a_separate_process():
    import importlib.metadata

    assert module_state.installed_torch_version() == importlib.metadata.version("torch")
    info = module_state.probe_torch(sys.executable)
    assert info.error == "" and info.version.split("+")[0] == module_state.installed_torch_version().split("+")[0]
    assert info.device_choices[0] == "auto" and info.device_choices[-1] == "cpu"
    assert len(info.device_choices) == 2 + len(info.devices) and info.text.startswith("PyTorch")
    broken = module_state.probe_torch(str(Path(sys.executable).with_name("no-such-python")))
    assert broken.error and "could not be checked" in broken.text


def test_the_module_never_imports_torch_to_show_its_status():
    """enter() shows torchStatus(): metadata only, no torch import (and so no CUDA initialisation)."""
    script = ("import sys; from LRPSegmentationLib.slicer.headless import start_slicer; start_slicer()\n"
              "from LRPSegmentationLib.slicer.module_logic import ModuleLogic\n"
              "print(ModuleLogic().torchStatus()); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert done.returncode == 0, done.stderr
    status, imported = done.stdout.strip().splitlines()[-2:]
    assert status.startswith("PyTorch ") and imported == "False"


# ------------------------------------------------------------------------------------ jobs


def test_job_progress_shows_whatever_the_job_reports():
    job = types.SimpleNamespace(fraction=0.37, message="LRP of region A")
    assert module_state.job_progress(job) == (37, "LRP of region A")
    for fraction, percent in ((float("nan"), 0), (None, 0), (1.7, 100), (-0.2, 0), ("0.5", 50)):
        assert module_state.job_progress(types.SimpleNamespace(fraction=fraction, message=None))[0] == percent


def test_results_are_not_published_after_cancel_or_into_a_closed_scene(mrml_scene):
    reference = add_volume("T2")
    running = types.SimpleNamespace(cancelled=lambda: False)
    assert module_state.publish_refusal(running, mrml_scene, [reference, None]) == ""
    assert module_state.publish_refusal(types.SimpleNamespace(cancelled=lambda: True), mrml_scene, [reference]) \
        == "cancelled"
    assert module_state.publish_refusal(types.SimpleNamespace(cancelled=True), mrml_scene, []) == "cancelled"
    mrml_scene.Clear(0)  # File > Close Scene while the job ran
    assert "no longer in the scene" in module_state.publish_refusal(running, mrml_scene, [reference])


# ------------------------------------------------------------------------------------ results in the scene


def save_and_reload(scene, folder: Path):
    """File > Save (every storable node with a storage node), Close Scene, load the .mrml again."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLStorableNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLStorableNode")
        if node.GetHideFromEditors() or node.IsA("vtkMRMLColorTableNode") and node.GetType() != node.User:
            continue
        if node.GetStorageNode() is None:
            node.AddDefaultStorageNode()
        storage = node.GetStorageNode()
        storage.SetFileName(str(folder / f"{node.GetID()}.{storage.GetDefaultWriteFileExtension()}"))
        assert storage.WriteData(node), node.GetName()
    scene.SetRootDirectory(str(folder))
    scene.SetURL(str(folder / "scene.mrml"))
    assert scene.Commit()
    from LRPSegmentationLib.slicer.headless import clear_scene

    scene = clear_scene()
    scene.SetURL(str(folder / "scene.mrml"))
    assert scene.Import()
    return scene


def test_the_explanation_is_rebuilt_from_a_reloaded_scene_and_update_shares_works(mrml_scene, tmp_path):
    pytest.importorskip("torch")
    reference = add_volume("T1-20s")
    published = publish.publish_explanation(mrml_scene, explain_result(), reference)
    assert module_state.current_explanation(mrml_scene, published) is published

    scene = save_and_reload(mrml_scene, tmp_path)
    assert published.composition_node.GetScene() is None  # the remembered nodes are gone ...
    found = module_state.current_explanation(scene, published)  # ... the scene's are found instead
    assert found is not None and found.sequence_names == NAMES
    np.testing.assert_allclose(found.positive_shares, [0.2, 0.5, 0.3])
    assert module_state.display_order(found) == [1, 2, 0]
    assert found.composition_node.GetNodeReference(publish.REFERENCE_REFERENCE).GetName() == "T1-20s"

    reference = scene.GetFirstNodeByName("T1-20s")
    regions = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "regions")
    mask = np.zeros(SHAPE, np.uint8)
    mask[1:3, 1:4, 2:5] = 1
    segment_id = regions.GetSegmentation().AddEmptySegment("A", "A")
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, regions, segment_id, reference)
    shares, used, excluded = logic.update_region(scene, found, None, regions, segment_id, reference)  # Update shares
    np.testing.assert_allclose(shares, [1 / 3] * 3, rtol=1e-5)
    assert used + excluded == int(mask.sum())


def test_the_most_relevant_map_is_shown_first_at_the_chosen_opacity(mrml_scene):
    reference = add_volume("T1-20s")
    outputs = publish.publish_explanation(mrml_scene, explain_result(positive_shares=(0.1, 0.3, 0.6)), reference,
                                          opacity=0.25)
    for index in range(mrml_scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = mrml_scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        assert composite.GetForegroundVolumeID() == outputs.relevance_nodes[2].GetID()
        assert composite.GetBackgroundVolumeID() == reference.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.25)
    assert publish.relevance_order([0.2, 0.5, 0.5, 0.1]) == [1, 2, 0, 3]  # ties keep their order


def test_explaining_the_same_region_again_replaces_only_its_previous_results(mrml_scene):
    reference, other = add_volume("T1-20s"), add_volume("T2")
    first = publish.publish_explanation(mrml_scene, explain_result(), reference)
    other_region = publish.publish_explanation(mrml_scene, explain_result(region_name="B"), reference)
    other_reference = publish.publish_explanation(mrml_scene, explain_result(), other)
    second = publish.publish_explanation(mrml_scene, explain_result(), reference)
    replaced = publish.replaced_outputs(mrml_scene, second)
    assert [outputs.composition_node for outputs in replaced] == [first.composition_node]
    subject_hierarchy = mrml_scene.GetSubjectHierarchyNode()
    user_note = mrml_scene.AddNewNodeByClass("vtkMRMLTableNode", "my notes")  # put into the old folder by a user
    mrml.move_into_folder(mrml_scene, [user_note], first.folder_item_id)
    publish.remove_outputs(mrml_scene, replaced)
    gone = [*first.relevance_nodes, first.composition_node, first.table_node, first.chart_node]
    assert all(node.GetScene() is None for node in gone)
    assert user_note.GetScene() is mrml_scene and subject_hierarchy.GetItemName(first.folder_item_id)  # kept
    for kept in (second, other_region, other_reference):
        assert kept.composition_node.GetScene() is mrml_scene and kept.chart_node.GetScene() is mrml_scene
    assert publish.replaced_outputs(mrml_scene, second) == []
    publish.remove_outputs(mrml_scene, [other_region])  # an emptied folder goes too
    assert not subject_hierarchy.GetItemName(other_region.folder_item_id)


def test_segmenting_again_replaces_the_previous_segmentation_but_never_a_kept_one(mrml_scene):
    reference, other = add_volume("T1-20s"), add_volume("T2")
    package = types.SimpleNamespace(class_names=["background", "tumour"], class_colors=[(0, 0, 0), (1, 0, 0)],
                                    name="demo")
    labels = np.zeros(SHAPE, np.uint8)
    labels[1:3, 1:3, 1:3] = 1

    def segment(volume):
        return publish.publish_segmentation(mrml_scene, labels, volume, package)

    old, painted, elsewhere = segment(reference), segment(reference), segment(other)
    assert old.GetAttribute(publish.SEGMENTATION_ATTRIBUTE) == "demo"
    hand_made = mrml.add_segmentation_from_labels(mrml_scene, labels, package.class_names, package.class_colors,
                                                  reference, "hand-made")  # not published by the module
    new = segment(reference)
    replaced = publish.replaced_outputs(mrml_scene, new, keep=[painted, None])
    assert replaced == [old]
    folder = mrml_scene.GetSubjectHierarchyNode().GetItemParent(
        mrml_scene.GetSubjectHierarchyNode().GetItemByDataNode(old))
    publish.remove_outputs(mrml_scene, [*replaced, old])  # twice: the second is already gone
    assert old.GetScene() is None and not mrml_scene.GetSubjectHierarchyNode().GetItemName(folder)
    assert all(node.GetScene() is mrml_scene for node in (painted, elsewhere, hand_made, new))


# ------------------------------------------------------------------------------------ transformed reference


def linear_transform(scene, translation=(0.0, 0.0, 0.0), angle_degrees=0.0):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkTransform()
    matrix.Translate(*translation)
    matrix.RotateZ(angle_degrees)
    transform.SetMatrixTransformToParent(matrix.GetMatrix())
    return transform, slicer.util.arrayFromVTKMatrix(matrix.GetMatrix())


def slicer_resample(node, reference):
    resampled = slicer.vtkSlicerVolumesLogic.ResampleVolumeToReferenceVolume(node, reference)
    try:
        return slicer.util.arrayFromVolume(resampled).copy()
    finally:
        mrml.remove_nodes(resampled.GetScene(), [resampled])


def test_resampling_is_slicers_own_where_slicer_is_right(mrml_scene):
    """Bitwise the numbers of ResampleVolumeToReferenceVolume: no transform, the input's, a shared one."""
    reference = add_volume("reference")
    source_grid = IJK_TO_RAS.copy()
    source_grid[:3, :3] *= 0.7
    source_grid[:3, 3] += [0.4, -0.3, 0.9]
    volume = add_volume("input", np.random.default_rng(3).normal(50, 9, (9, 8, 10)), source_grid)
    integer = add_volume("integer", np.random.default_rng(4).integers(0, 900, (9, 8, 10)), source_grid)
    integer_image = integer.GetImageData()
    cast = vtk.vtkImageCast()
    cast.SetInputData(integer_image)
    cast.SetOutputScalarTypeToShort()
    cast.Update()
    integer.SetAndObserveImageData(cast.GetOutput())  # int16 MRI: rounded while resampling, as in Slicer
    transform, _ = linear_transform(mrml_scene, (1.1, -0.6, 0.4), 7.0)
    for setting in ("none", "input", "shared"):
        reference.SetAndObserveTransformNodeID(transform.GetID() if setting == "shared" else None)
        for node in (volume, integer):
            node.SetAndObserveTransformNodeID(transform.GetID() if setting != "none" else None)
            ours, theirs = mrml.resample_onto(node, reference), slicer_resample(node, reference)
            assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), (setting, node.GetName())
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 3  # nothing left behind


def test_a_transformed_reference_gets_its_inputs_where_it_shows_them(mrml_scene):
    """Slicer's function ignores the reference's transform; ours equals hardening it into the grid."""
    rng = np.random.default_rng(5)
    source_grid = np.diag([1.0, 1.0, 1.0, 1.0])
    source_grid[:3, 3] = [-12.0, -6.0, 0.0]
    volume = add_volume("input", rng.normal(size=(30, 24, 28)), source_grid)
    reference = add_volume("reference")
    transform, matrix = linear_transform(mrml_scene, (1.3, -0.8, 2.1), 11.0)
    reference.SetAndObserveTransformNodeID(transform.GetID())
    hardened = add_volume("hardened", np.zeros(SHAPE), matrix @ IJK_TO_RAS)  # the same world grid, no transform
    ours = mrml.arrays_on_reference([volume], reference, ["T2"])[0]
    np.testing.assert_allclose(ours, slicer_resample(volume, hardened), rtol=1e-6, atol=1e-6)
    assert not np.allclose(ours, slicer_resample(volume, reference))  # what Slicer 5.10 gives
    volume.SetAndObserveTransformNodeID(transform.GetID())  # both under it: nothing moves
    np.testing.assert_allclose(mrml.resample_onto(volume, reference), slicer_resample(volume, reference))


# ------------------------------------------------------------------------------------ the sample case


def test_the_sample_case_is_generated_once_offline_and_loads_as_the_demo_model_expects(mrml_scene, tmp_path):
    from LRPSegmentationLib import demo

    files = sample_data.write_sample_case(tmp_path)
    assert [path.name for path in files][-1] == "LRPLiverPhantom-truth.seg.nrrd" and all(p.is_file() for p in files)
    stamps = [path.stat().st_mtime_ns for path in files]
    assert sample_data.write_sample_case(tmp_path) == files
    assert [path.stat().st_mtime_ns for path in files] == stamps  # the second click reuses the files
    assert sorted(os.listdir(tmp_path)) == sorted(path.name for path in files)  # no temporary leftovers

    nodes = sample_data.load_sample_case(mrml_scene, tmp_path)
    assert [node.GetName() for node in nodes] == sample_data.node_names()
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLStorageNode") == 0  # the cache is never overwritten
    generated = phantom.generate_case(demo.DEMO_SEED, shape=sample_data.SAMPLE_SHAPE)
    assert sample_data.SAMPLE_SEED == demo.DEMO_SEED
    for channel, node in enumerate(nodes[:-1]):
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), generated.images[channel])
    reference = nodes[-2]
    truth = nodes[-1].GetSegmentation()
    segment_id = truth.GetSegmentIdBySegmentName(sample_data.TRUTH_SEGMENT_NAME)
    np.testing.assert_array_equal(mrml.segment_mask(nodes[-1], segment_id, reference), generated.tumour)

    package = logic.read_package_info(str(DEMO_MODEL))
    assert tuple(package.training_info["phantom_shape"]) == sample_data.SAMPLE_SHAPE
    inputs = [logic.find_volume_by_name(mrml_scene, name) for name in package.sequences]
    assert logic.check_inputs(inputs, logic.find_volume_by_name(mrml_scene, package.reference_sequence),
                              package.sequences) == []
    logic.check_reference_spacing(reference, package)  # the model's spacing: no refusal


def test_an_interrupted_generation_leaves_no_file_taken_for_complete(tmp_path, monkeypatch):
    calls = []

    def write_then_fail(image, path):
        calls.append(path)
        if len(calls) == 3:
            path.write_bytes(b"half")
            raise OSError("disk full")
        return real_write(image, path)

    real_write = sample_data._write
    monkeypatch.setattr(sample_data, "_write", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        sample_data.write_sample_case(tmp_path)
    files = sample_data.sample_files(tmp_path)
    assert [path.is_file() for path in files] == [True, True] + [False] * (len(files) - 2)
    monkeypatch.setattr(sample_data, "_write", real_write)
    assert all(path.is_file() for path in sample_data.write_sample_case(tmp_path))


def test_the_sample_data_source_points_at_the_cache_files_never_at_the_network(monkeypatch, tmp_path):
    monkeypatch.setattr(module_logic.ModuleLogic, "sampleDataFolder", staticmethod(lambda: str(tmp_path)))
    source = module_logic.ModuleLogic.sampleDataSource()
    files = sample_data.sample_files(tmp_path)
    assert source["uris"] == [path.as_uri() for path in files] and all(u.startswith("file://") for u in source["uris"])
    assert source["fileNames"] == [path.name for path in files]
    # SampleData.SampleDataSource requires these to have the same length.
    assert len(source["uris"]) == len(source["nodeNames"]) == len(source["loadFileType"]) == 7
    assert source["category"] == sample_data.CATEGORY and Path(source["thumbnailFileName"]).is_file()
    assert module_logic.ModuleLogic().loadSampleData(tmp_path)[0].GetName() == "T2"


# ------------------------------------------------------------------------------------ the self-test's checks


def test_the_self_test_without_the_network_passes_on_slicer_core(mrml_scene, tmp_path):
    said = []
    module_checks.check_without_network(mrml_scene, RESOURCES, tmp_path, said.append)
    assert len(said) == 3


def test_the_self_test_checks_everything_but_the_network_without_torch(tmp_path):
    """As in a Slicer without the PyTorch extension: ``import torch`` fails."""
    script = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('no torch here')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from LRPSegmentationLib.slicer.headless import clear_scene\n"
        "from LRPSegmentationLib.slicer import module_checks, module_logic\n"
        f"module_checks.check_without_network(clear_scene(), module_logic.RESOURCES, {str(tmp_path)!r})\n"
        "print('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_the_self_test_with_the_network_passes_on_slicer_core(mrml_scene):
    pytest.importorskip("torch")
    module_checks.check_network(mrml_scene, lambda message: None)
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 1
