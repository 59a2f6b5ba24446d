"""A model's input orientation (package field ``input.orientation``, e.g. MONAI's ``Orientationd("RAS")``):
the pipeline flips/permutes every image into it exactly as MONAI does, writes its outputs on that grid
(overlaying the original images), maps labels back to the stored grid exactly, and the Slicer module
refuses a reference volume stored otherwise.

The reference is MONAI itself: LoadImaged + EnsureChannelFirstd + Orientationd on the same file.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

monai = pytest.importorskip("monai")
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd  # noqa: E402

from LRPSegmentationLib import cli, pipeline  # noqa: E402
from LRPSegmentationLib.imaging import (Geometry, check_orientation, orientation_of, read_image,  # noqa: E402
                                        reorient, resample_to_reference)
from LRPSegmentationLib.models import UNet3D, create_package, load_package  # noqa: E402
from LRPSegmentationLib.models.metadata import read_description  # noqa: E402
from test_import_monai_bundle import (RAS_DIRECTION, SIZE, ct_bundle, ct_volume, monai_network,  # noqa: E402,F401
                                      monai_parser, write_image)

# LPS direction matrices (columns = where index axes i, j, k point) and their codes.
DIRECTIONS = {
    "LPS": np.eye(3),
    "RAS": np.diag([-1.0, -1.0, 1.0]),
    "PIR": np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),  # a permuted (sagittal) storage
}


def stored_image(path: Path, direction: np.ndarray, size=(5, 4, 3), spacing=(1.0, 2.0, 3.0)) -> Path:
    """A NIfTI file with distinct voxel values (so any flip or permutation shows) and a known direction."""
    array = np.arange(np.prod(size), dtype=np.float32).reshape(size[::-1])
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((4.0, -7.0, 12.0))
    image.SetDirection(tuple(np.asarray(direction, dtype=float).ravel()))
    sitk.WriteImage(image, str(path))
    return path


def monai_oriented(path: Path, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """(array (x, y, z), affine in RAS) after MONAI's LoadImaged + EnsureChannelFirstd + Orientationd."""
    data = Compose([LoadImaged("image"), EnsureChannelFirstd("image"), Orientationd("image", axcodes=axcodes)])(
        {"image": str(path)})["image"]
    return data.numpy()[0], data.affine.numpy()


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
@pytest.mark.parametrize("stored", sorted(DIRECTIONS))
@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "PIR", "SLA"])
def test_reorient_equals_monais_orientationd(tmp_path, stored, axcodes):
    path = stored_image(tmp_path / "image.nii.gz", DIRECTIONS[stored])
    original = read_image(path)
    assert orientation_of(Geometry.from_image(original)) == stored  # the code convention: where axes point
    ours = reorient(original, axcodes)
    expected, affine = monai_oriented(path, axcodes)
    assert np.array_equal(sitk.GetArrayFromImage(ours).transpose(2, 1, 0), expected)  # exact: same voxels, order
    assert np.allclose(Geometry.from_image(ours).ijk_to_ras(), affine, atol=1e-5)  # same place in the patient
    assert orientation_of(Geometry.from_image(ours)) == axcodes


@pytest.mark.parametrize("code", ["RAX", "RRS", "RA", "rasl", "", 5, ["R", "A", "S"]])
def test_bad_orientation_codes_are_refused(code):
    with pytest.raises(ValueError, match="must be three letters, one of each pair L/R, P/A, I/S") as error:
        check_orientation(code)
    assert "\n" not in str(error.value)
    assert check_orientation(" ras ") == "RAS" and check_orientation(None) is None


def test_permuted_grids_are_moved_exactly(tmp_path):
    """Labels, masks and logits go between a stored grid and its reoriented grid without interpolation."""
    stored = read_image(stored_image(tmp_path / "image.nii.gz", DIRECTIONS["PIR"], size=(7, 6, 5)))
    oriented = Geometry.from_image(reorient(stored, "RAS"))
    values = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    image = Geometry.from_image(stored).to_image(values)
    for interpolation in ("linear", "nearest"):
        there = resample_to_reference(image, oriented, interpolation)
        back = resample_to_reference(there, Geometry.from_image(stored), interpolation)
        assert np.array_equal(sitk.GetArrayFromImage(back), values)
        assert np.array_equal(sitk.GetArrayFromImage(there), sitk.GetArrayFromImage(reorient(image, "RAS")))
    # `lrpseg predict`'s way back: logits on the reoriented case grid → labels on the stored grid, exactly.
    logits = np.random.default_rng(1).normal(size=(3,) + oriented.array_shape).astype(np.float32)
    case = pipeline.Case("c", logits[:1], oriented, ["x"], source_geometry=Geometry.from_image(stored))
    on_stored = np.stack([sitk.GetArrayFromImage(reorient(oriented.to_image(channel), "PIR")) for channel in logits])
    assert np.array_equal(pipeline.labels_on_source_grid(case, logits), on_stored.argmax(0))


def tiny_package(orientation: str | None):
    torch.manual_seed(0)
    model = UNet3D(1, 2, base_channels=2, depth=1).eval()
    return create_package(model, "unet3d", {"in_channels": 1, "out_channels": 2, "base_channels": 2, "depth": 1},
                          ["T1"], normalization={"type": "zscore", "mask": "none"}, class_names=["bg", "lesion"],
                          target_spacing=(1.0, 1.0, 1.0), patch_size=(4, 4, 4), orientation=orientation)


def test_package_round_trip_and_older_files(tmp_path):
    saved = tiny_package("ras").save(tmp_path / "oriented.lrpmodel")
    meta = json.loads((saved / "model.json").read_text(encoding="utf-8"))
    assert meta["input"]["orientation"] == "RAS"  # canonical upper case
    assert load_package(saved).orientation == "RAS" and read_description(saved).orientation == "RAS"
    # A package written before the field (no "orientation" key) loads, keeping the stored voxel order.
    plain = tiny_package(None).save(tmp_path / "plain.lrpmodel")
    assert "orientation" not in json.loads((plain / "model.json").read_text(encoding="utf-8"))["input"]
    assert load_package(plain).orientation is None
    # A bad code in a hand-edited model.json: one line naming the file.
    meta["input"]["orientation"] = "RAP"
    (saved / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"oriented.lrpmodel/model.json: orientation must be three letters") as error:
        load_package(saved)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="orientation must be three letters"):
        tiny_package("XYZ")


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_lrpseg_explain_and_predict_on_an_lps_image_follow_monai(ct_bundle, tmp_path):  # noqa: F811
    """The CT bundle (Orientationd RAS) on an image stored LPS: MONAI's logits; outputs overlay the image."""
    lps = write_image(tmp_path / "ct_lps.nii.gz", ct_volume(), direction=tuple(np.eye(3).ravel()))
    package = load_package(ct_bundle)
    assert package.orientation == "RAS"
    case = pipeline.load_case({"image": lps}, package)
    with torch.no_grad():
        ours = package.build()(pipeline.network_input(case, package))[0]
    monai_x = monai_parser(ct_bundle).get_parsed_content("preprocessing")({"image": str(lps)})["image"][None]
    with torch.no_grad():
        reference = monai_network(ct_bundle)(monai_x.as_tensor())[0].permute(0, 3, 2, 1)  # (K, z, y, x)
    assert torch.allclose(ours, reference, atol=1e-5)
    assert case.geometry.direction == RAS_DIRECTION and case.source_geometry.direction == tuple(np.eye(3).ravel())

    common = ["--model", str(ct_bundle), "--sequence", f"image={lps}", "--device", "cpu"]
    mask = np.zeros(SIZE, dtype=np.uint8)  # (x, y, z) on the stored (LPS) grid
    mask[2:9, 3:7, 1:5] = 1
    mask_file = write_image(tmp_path / "mask.nii.gz", mask, direction=tuple(np.eye(3).ravel()))
    done = subprocess.run([sys.executable, "-m", "LRPSegmentationLib.cli", "explain", *common, "--target", "spleen",
                           "--region", "mask", "--mask", str(mask_file), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert done.returncode == 0, done.stderr
    region = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))["regions"]["mask"]
    assert region["voxels_used"] + region["voxels_excluded"] == int(mask.sum())  # moved exactly, not resampled
    segmentation = sitk.ReadImage(str(tmp_path / "out" / "segmentation.nrrd"))
    assert Geometry.from_image(segmentation).same_grid(case.geometry)  # the reoriented grid, its true geometry
    assert np.array_equal(sitk.GetArrayFromImage(segmentation), reference.argmax(0).numpy())
    relevance = sitk.ReadImage(str(tmp_path / "out" / "mask" / "relevance_image.nrrd"))
    assert Geometry.from_image(relevance).same_grid(case.geometry)
    # Overlay: the segmentation voxel at index (i, j, k) lies where the LPS image's voxel (W-1-i, H-1-j, k) does.
    source = sitk.ReadImage(str(lps))
    point = segmentation.TransformIndexToPhysicalPoint((2, 3, 4))
    assert source.TransformPhysicalPointToIndex(point) == (source.GetSize()[0] - 3, source.GetSize()[1] - 4, 4)

    assert cli.main(["--quiet", "predict", *common, "--output", str(tmp_path / "seg.nii.gz")]) == 0  # in-process
    on_source = sitk.ReadImage(str(tmp_path / "seg.nii.gz"))
    assert Geometry.from_image(on_source).same_grid(Geometry.from_image(source))
    # Exact: MONAI's argmax flipped back into the stored (LPS) order, no interpolation.
    assert np.array_equal(sitk.GetArrayFromImage(on_source), reference.argmax(0).flip(1, 2).numpy())


def test_slicer_refuses_a_reference_stored_in_another_orientation(mrml_scene, tmp_path):
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    from LRPSegmentationLib.slicer import logic

    values = np.random.default_rng(0).normal(100.0, 20.0, (4, 4, 4)).astype(np.float32)
    ras = slicer.util.addVolumeFromArray(values, np.diag([1.0, 1.0, 1.0, 1.0]), "T1")
    lps = slicer.util.addVolumeFromArray(values, np.diag([-1.0, -1.0, 1.0, 1.0]), "T1 LPS")
    # What the module passes: the model's description, read from model.json (here in lower case).
    saved = tiny_package("RAS").save(tmp_path / "oriented.lrpmodel")
    (saved / "model.json").write_text((saved / "model.json").read_text(encoding="utf-8").replace('"RAS"', '"ras"'))
    package = logic.read_package_info(str(saved))
    assert package.orientation == "ras"
    assert logic.prepare_inputs([ras], ras, package).array.shape == (1, 4, 4, 4)
    with pytest.raises(ValueError) as error:
        logic.prepare_inputs([lps], lps, package)
    assert str(error.value) == (
        "the model expects volumes whose voxel axes I, J, K point RAS (toward Right, Anterior, Superior), the "
        "reference volume's point LPS: reorient it (module Orient Scalar Volume) and select the reoriented volume "
        "as reference")
    package = tiny_package(None)  # no orientation: any stored order is taken
    assert logic.prepare_inputs([lps], lps, package).array.shape == (1, 4, 4, 4)
