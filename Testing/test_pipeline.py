"""The shared data flow end to end: files → one grid → prediction → regions → explanation → outputs,
and the 3D Slicer scene export."""
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LRPSegmentationLib import pipeline, regions
from LRPSegmentationLib.demo import phantom_case
from LRPSegmentationLib.engine import explain_region, sequence_composition
from LRPSegmentationLib.models import UNet3D, create_package
from LRPSegmentationLib.phantom import SEQUENCES, default_spacing


@pytest.fixture(scope="module")
def package():
    torch.manual_seed(0)
    model = UNet3D(6, 2, 4, 2).eval()
    return create_package(model, "unet3d", {"in_channels": 6, "out_channels": 2, "base_channels": 4, "depth": 2},
                          list(SEQUENCES), normalization={"type": "zscore", "mask": "foreground"},
                          class_names=["background", "tumour"],
                          # the (x, y, z) spacing of the (16, 32, 32) phantom cases below: no resampling
                          target_spacing=default_spacing((16, 32, 32))[::-1],
                          patch_size=(16, 32, 32), name="tiny", composite="epsilon")


@pytest.fixture(scope="module")
def case_files(tmp_path_factory, package):
    """A phantom case on disk; plainT1 on a coarser, shifted grid than the reference."""
    folder = tmp_path_factory.mktemp("case")
    case = phantom_case(5, (16, 32, 32))
    images = [case.geometry.to_image(a) for a in case.images]
    coarse = sitk.Resample(images[1], [16, 8, 8], sitk.Transform(), sitk.sitkLinear,
                           tuple(o + 2.0 for o in images[1].GetOrigin()), tuple(2 * s for s in images[1].GetSpacing()),
                           images[1].GetDirection(), 0.0, sitk.sitkFloat32)
    images[1] = coarse
    for name, image in zip(SEQUENCES, images):
        sitk.WriteImage(image, str(folder / f"{name}.nrrd"))
    sitk.WriteImage(case.geometry.to_image(case.reference_label), str(folder / "label.nrrd"))
    return folder


def test_load_case_puts_every_sequence_on_the_reference_grid(case_files, package):
    case = pipeline.load_case(case_files, package, reference_label=case_files / "label.nrrd")
    assert case.images.shape == (6, 16, 32, 32)
    assert case.name == case_files.name
    assert case.sequences == list(SEQUENCES)
    reference = sitk.ReadImage(str(case_files / "T1-15min.nrrd"))
    assert case.geometry.size == reference.GetSize()
    np.testing.assert_allclose(case.images[-1], sitk.GetArrayFromImage(reference))
    assert case.reference_label.shape == (16, 32, 32) and case.reference_label.max() == 1


def test_load_case_rejects_sequences_that_do_not_match_the_package(case_files, package):
    sources = {name: case_files / f"{name}.nrrd" for name in SEQUENCES[:5]}
    with pytest.raises(ValueError, match="T1-15min"):
        pipeline.load_case(sources, package)


def test_explain_case_equals_the_engine_and_writes_outputs(case_files, package, tmp_path):
    case = pipeline.load_case(case_files, package, reference_label=case_files / "label.nrrd")
    model = package.build()
    truth = case.reference_label.astype(bool)
    result = pipeline.explain_case(case, model, package, regions={"truth": truth}, device="cpu")
    x = pipeline.network_input(case, package)
    direct = explain_region(model, x, truth, 1, package.lrp_composite(), device="cpu")
    torch.testing.assert_close(result.explanations["truth"].relevance, direct.relevance)
    torch.testing.assert_close(torch.from_numpy(result.composition),
                               sequence_composition(model, x, 1, package.lrp_composite(), device="cpu"))
    summary = pipeline.write_case_outputs(result, tmp_path / "out", package)
    out = tmp_path / "out"
    for name in SEQUENCES:
        written = sitk.ReadImage(str(out / "truth" / f"relevance_{name}.nrrd"))
        assert written.GetSize() == case.geometry.size
        np.testing.assert_allclose(written.GetSpacing(), case.geometry.spacing)
        assert (out / f"composition_{name}.nrrd").exists()
    shares = json.loads((out / "truth" / "shares.json").read_text(encoding="utf-8"))
    assert abs(sum(row["share"] for row in shares["shares"]) - 1) < 1e-5
    assert summary["regions"]["truth"]["voxels_used"] == direct.n_used
    assert (out / "shares.png").stat().st_size > 0 and (out / "truth" / "relevance.png").exists()
    with pytest.raises(FileExistsError, match="overwrite"):
        pipeline.write_case_outputs(result, out, package)
    pipeline.write_case_outputs(result, out, package, overwrite=True)


class ForwardCounter:
    """Counts the network's forward calls on data (meta-device shape probes excluded)."""

    def __init__(self, model):
        self.calls = 0
        model.register_forward_hook(self.count)

    def count(self, module, args, output):
        self.calls += args[0].device.type != "meta"


def test_a_case_runs_the_network_once_and_explains_every_region_from_that_pass(case_files, package):
    """Prediction, three regions (modes chosen from that prediction) and the composition map from ONE
    forward pass; each region equals its own engine explanation."""
    case = pipeline.load_case(case_files, package, reference_label=case_files / "label.nrrd")
    model = package.build()
    counter = ForwardCounter(model)
    truth = case.reference_label.astype(bool)
    halves = {"truth": truth, "upper": truth & (np.arange(16) < 8)[:, None, None],
              "box": np.zeros_like(truth)}
    halves["box"][2:6, 4:12, 4:12] = True
    result = pipeline.explain_case(case, model, package, regions=halves, device="cpu")
    assert counter.calls == 1 and result.forward_passes == 1
    assert set(result.explanations) == set(halves)
    x = pipeline.network_input(case, package)
    for name, region in halves.items():
        direct = explain_region(model, x, region, 1, package.lrp_composite(), device="cpu")
        torch.testing.assert_close(result.explanations[name].relevance, direct.relevance)
        assert result.explanations[name].n_used == direct.n_used
    # region modes are chosen from the same prediction; an empty mode is reported, not explained
    counter.calls = 0
    result = pipeline.explain_case(case, model, package, regions=["tp", "fn", "fp"], device="cpu")
    assert counter.calls == 1
    predicted, truth_class = result.labels == 1, case.reference_label == 1
    for mode, region in {"tp": predicted & truth_class, "fn": truth_class & ~predicted,
                         "fp": predicted & ~truth_class}.items():
        assert (mode in result.explanations) == bool(region.any())
        assert (mode in result.explanations) != any(f"region '{mode}'" in m for m in result.empty)


def test_a_volume_larger_than_a_patch_runs_the_network_once_per_window(package):
    case = phantom_case(6, (16, 40, 32))  # two windows of (16, 32, 32)
    model = package.build()
    counter = ForwardCounter(model)
    regions = {"a": np.zeros((16, 40, 32), bool), "b": np.zeros((16, 40, 32), bool)}
    regions["a"][6:9, 30:34, 10:13] = True
    regions["b"][2:4, 2:6, 2:6] = True
    result = pipeline.explain_case(case, model, package, regions=regions, device="cpu")
    assert counter.calls == 2 and result.forward_passes == 2
    for name, region in regions.items():
        shares, _, _ = pipeline.shares_from_composition(result, region)
        np.testing.assert_allclose(shares, result.explanations[name].sequence_shares.numpy(), atol=1e-5)


def test_every_region_empty_is_refused_before_any_lrp_pass(case_files, package):
    case = pipeline.load_case(case_files, package)
    with pytest.raises(ValueError, match="region 'mask' is empty"):
        pipeline.explain_case(case, package.build(), package, regions="mask", mask=np.zeros((16, 32, 32), bool),
                              device="cpu")
    result = pipeline.explain_case(case, package.build(), package, regions="mask", mask=np.zeros((16, 32, 32), bool),
                                   device="cpu", require_region=False)
    assert result.explanations == {} and result.composition.shape == (6, 16, 32, 32) and result.empty


def test_region_selection(package):
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[1:3, 1:3, 1:3] = 1
    labels[5:7, 5:7, 5:7] = 1
    truth = np.zeros_like(labels)
    truth[1:3, 1:3, 1:4] = 1
    assert len(regions.select_regions("lesions", labels, 1)) == 2
    found = {m: regions.select_regions(m, labels, 1, truth) for m in ("tp", "fn", "fp")}
    assert found["tp"]["tp"].sum() == 8 and found["fn"]["fn"].sum() == 4 and found["fp"]["fp"].sum() == 8
    assert regions.select_regions("fn", labels, 1, labels) == {}
    with pytest.raises(ValueError, match="needs a reference label"):
        regions.select_regions("tp", labels, 1)
    with pytest.raises(ValueError, match="unknown region mode"):
        regions.select_regions("everything", labels, 1)


def test_volumes_larger_than_a_patch_use_sliding_windows(package):
    case = phantom_case(6, (16, 40, 32))
    model = package.build()
    region = np.zeros((16, 40, 32), bool)
    region[6:9, 30:34, 10:13] = True
    result = pipeline.explain_case(case, model, package, regions={"A": region}, device="cpu")
    diagnostics = result.explanations["A"].diagnostics
    assert diagnostics["patches_total"] == 2 and diagnostics["patches_run"] >= 1
    assert result.composition.shape == (6, 16, 40, 32)
    shares, used, _ = pipeline.shares_from_composition(result, region)
    np.testing.assert_allclose(shares, result.explanations["A"].sequence_shares.numpy(), atol=1e-5)


def test_slicer_scene_opens_with_the_outputs(case_files, package, tmp_path):
    slicer = pytest.importorskip("slicer")
    from LRPSegmentationLib.slicer.scene import save_slicer_scene
    case = pipeline.load_case(case_files, package, reference_label=case_files / "label.nrrd")
    result = pipeline.explain_case(case, package.build(), package, regions={"predicted": case.reference_label > 0},
                                   device="cpu")
    path = save_slicer_scene(result, tmp_path, package)
    scene = slicer.vtkMRMLScene()
    scene.SetURL(str(path))
    assert scene.Connect()
    volumes = {scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode").GetName()
               for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))}
    folder = f"LRP predicted ({result.composite})"  # the module's layout (slicer.publish)
    assert {f"{folder} relevance {n}" for n in SEQUENCES} <= volumes and set(SEQUENCES) <= volumes
    relevance = scene.GetFirstNodeByName(f"{folder} relevance T2")
    assert relevance.GetImageData().GetDimensions() == case.geometry.size
    assert relevance.GetDisplayNode().GetColorNode().GetName().startswith("LRP relevance")
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 1
    with pytest.raises(FileExistsError):
        save_slicer_scene(result, tmp_path, package)
