"""Inputs that used to be read as something else and give a wrong result with exit status 0:
truncated files, NaN/Inf hidden by the NIfTI reader, degenerate intensity scales, reference labels
that are not classes of the model, and cases not at the model's voxel spacing.

Every file is real (written with SimpleITK to tmp_path); the model package is a tiny real U-Net.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LRPSegmentationLib import cli, pipeline
from LRPSegmentationLib.imaging import Geometry, grid_with_spacing, read_image, read_sequences
from LRPSegmentationLib.normalization import foreground_mask, normalize, normalize_sequences
from LRPSegmentationLib.models import UNet3D, create_package

SEQUENCES = ["T2", "T1"]
TARGET_SPACING = (2.0, 2.0, 3.0)  # (x, y, z) mm
# A case at the model's spacing: (x, y, z) = 16 × 16 × 8 voxels.
GRID = Geometry((16, 16, 8), TARGET_SPACING, (-15.0, -15.0, -10.5), np.eye(3).ravel())


def volume(shape=(8, 16, 16), seed: int = 0) -> np.ndarray:
    """A float32 'MRI': dark noisy air around a bright textured block."""
    rng = np.random.default_rng(seed)
    image = np.abs(rng.normal(0.0, 3.0, size=shape))
    image[2:-2, 3:-3, 3:-3] = rng.uniform(250.0, 550.0, size=(shape[0] - 4, shape[1] - 6, shape[2] - 6))
    return image.astype(np.float32)


def linear(geometry: Geometry, offset: float = 0.0) -> np.ndarray:
    """(D, H, W) float32 values of a linear function of LPS position (reproduced by linear interpolation)."""
    k, j, i = np.indices(geometry.array_shape)
    points = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(np.float64) @ geometry.ijk_to_lps().T
    return (offset + 100.0 + 0.5 * points[..., 0] - 0.3 * points[..., 1] + 0.8 * points[..., 2]).astype(np.float32)


@pytest.fixture(scope="module")
def package():
    torch.manual_seed(0)
    model = UNet3D(2, 2, base_channels=4, depth=2).eval()
    return create_package(model, "unet3d", {"in_channels": 2, "out_channels": 2, "base_channels": 4, "depth": 2},
                          SEQUENCES, normalization={"type": "zscore", "mask": "none"},
                          class_names=["background", "tumour"], target_spacing=TARGET_SPACING,
                          patch_size=(8, 16, 16), name="tiny")


def write_case(folder: Path, geometry: Geometry, label: np.ndarray | None = None) -> Path:
    """T2.nrrd and T1.nrrd (linear intensities) on ``geometry``, and label.nrrd when given."""
    folder.mkdir(parents=True, exist_ok=True)
    for c, name in enumerate(SEQUENCES):
        sitk.WriteImage(geometry.to_image(linear(geometry, 50.0 * c)), str(folder / f"{name}.nrrd"))
    if label is not None:
        sitk.WriteImage(geometry.to_image(label), str(folder / "label.nrrd"))
    return folder


# --------------------------------------------------------------------------------------------
# 1. Truncated files
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, compress, data_file", [
    ("image.nii", False, None), ("image.nii.gz", True, None),
    ("image.nrrd", False, None), ("image.nrrd", True, None),
    ("image.mha", False, None), ("image.mha", True, None),
    ("image.mhd", False, "image.raw"), ("image.mhd", True, "image.zraw"),
])
def test_truncated_image_file_is_refused(tmp_path: Path, name: str, compress: bool, data_file: str | None) -> None:
    path = tmp_path / name
    sitk.WriteImage(GRID.to_image(volume() + 1.0), str(path), useCompression=compress)
    data = tmp_path / (data_file or name)
    data.write_bytes(data.read_bytes()[: data.stat().st_size * 2 // 3])  # cut the voxel data short

    with pytest.raises(ValueError, match=re.escape(str(path))):
        read_image(path)


def test_truncated_nifti_message_says_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "T2.nii"
    sitk.WriteImage(GRID.to_image(volume()), str(path))
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=rf"T2.nii: the file is truncated.*{size - 100 - 352} of {size - 352} bytes"):
        read_image(path)
    with pytest.raises(ValueError, match="T2.nii: the file is truncated"):
        read_sequences({"T2": path}, reference="T2")


def test_corrupt_nifti_gz_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "T2.nii.gz"
    sitk.WriteImage(GRID.to_image(volume()), str(path))
    raw = bytearray(path.read_bytes())
    raw[-6] ^= 0xFF  # the CRC-32 in the gzip trailer no longer matches the data
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="T2.nii.gz"):
        read_image(path)


# --------------------------------------------------------------------------------------------
# 2. NaN / Inf in NIfTI (SimpleITK's NIfTI reader turns them into 0)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extension", [".nii", ".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_voxels_are_refused_in_every_format(tmp_path: Path, extension: str, bad: float,
                                                        dtype: type) -> None:
    array = volume().astype(dtype)
    array[3, 4, 5] = bad
    array[1, 2, 3] = bad
    path = tmp_path / f"T2{extension}"
    sitk.WriteImage(GRID.to_image(array), str(path))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: 2 voxels are NaN or infinite"):
        read_image(path)
    with pytest.raises(ValueError, match="2 voxels are NaN or infinite"):
        read_sequences({"T2": path}, reference="T2")


def test_finite_nifti_still_reads_exactly(tmp_path: Path) -> None:
    for dtype in (np.float32, np.float64, np.int16, np.uint8):
        array = volume().astype(dtype)
        for extension in (".nii", ".nii.gz"):
            path = tmp_path / f"{np.dtype(dtype).name}{extension}"
            sitk.WriteImage(GRID.to_image(array), str(path))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(path)), array)


def write_nifti2(path: Path, array: np.ndarray, cut: int = 0) -> None:
    """A minimal little-endian NIfTI-2 float32 file (which SimpleITK 2.5 cannot read yet), ``cut`` bytes short."""
    depth, height, width = array.shape
    header = struct.pack("<i8s2h8q", 540, b"n+2\0\r\n\x1a\n", 16, 32, 3, width, height, depth, 1, 1, 1, 1)
    header += struct.pack("<3d8dq6d2q", *[0.0] * 3, *[1.0] * 8, 544, 1.0, *[0.0] * 5, 0, 0)
    header += bytes(104) + struct.pack("<2i18d3i", 0, 1, *[0.0] * 6, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 2, 0)
    header += bytes(32)
    data = header + bytes(4) + array.astype("<f4").tobytes()
    path.write_bytes(data[: len(data) - cut])


def test_nifti2_data_is_checked_too(tmp_path: Path) -> None:
    # Future SimpleITK versions may read NIfTI-2; the data check already understands its header.
    from LRPSegmentationLib.nifti_check import check_nifti_data

    array = volume()
    write_nifti2(tmp_path / "good.nii", array)
    check_nifti_data(tmp_path / "good.nii")
    write_nifti2(tmp_path / "cut.nii", array, cut=40)
    with pytest.raises(ValueError, match=f"holds {array.nbytes - 40} of {array.nbytes} bytes"):
        check_nifti_data(tmp_path / "cut.nii")
    array[1, 2, 3] = np.inf
    write_nifti2(tmp_path / "inf.nii", array)
    with pytest.raises(ValueError, match="1 voxels are NaN or infinite"):
        check_nifti_data(tmp_path / "inf.nii")


def test_uncompressed_file_named_nii_gz_still_reads(tmp_path: Path) -> None:
    array = volume()
    sitk.WriteImage(GRID.to_image(array), str(tmp_path / "plain.nii"))
    named_gz = (tmp_path / "plain.nii").rename(tmp_path / "plain.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(named_gz)), array)


def test_nan_in_memory_sequence_is_refused_by_read_sequences_and_normalize() -> None:
    array = volume()
    array[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"sequence T1: 1 voxels are NaN or infinite"):
        read_sequences({"T2": GRID.to_image(volume()), "T1": GRID.to_image(array)}, reference="T2")
    # Even the 'none' normalization (values passed on unchanged) must not feed NaN to the network.
    with pytest.raises(ValueError, match=r"sequence 0 \(T2\): 1 voxels are NaN or infinite"):
        normalize_sequences(array[None], {"type": "none"}, names=["T2"])


# --------------------------------------------------------------------------------------------
# 3. Degenerate intensity scales
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [2.0 ** -100, 1e-10, 1e-20, 1e-30, 1e-3, 1e20, 1e30])
@pytest.mark.parametrize("method", [{"type": "zscore"}, {"type": "zscore", "mask": "none"},
                                    {"type": "percentile"}, {"type": "percentile", "mask": "foreground"}])
def test_normalization_is_scale_invariant(scale: float, method: dict) -> None:
    image = volume((24, 32, 32), seed=2)
    scaled = (image.astype(np.float64) * scale).astype(np.float32)
    np.testing.assert_array_equal(foreground_mask(scaled), foreground_mask(image))
    np.testing.assert_allclose(normalize(scaled, method), normalize(image, method), rtol=1e-5, atol=1e-5)


def test_subnormal_intensities_are_refused() -> None:
    image = volume()
    tiny = (image.astype(np.float64) * 1e-38).astype(np.float32)  # float32 subnormal range: precision lost
    assert np.any((tiny != 0) & (np.abs(tiny) < np.finfo(np.float32).tiny))
    with pytest.raises(ValueError, match=r"sequence 1 \(T1\): .* subnormal"):
        normalize_sequences(np.stack([image, tiny]), {"type": "zscore"}, names=["T2", "T1"])
    with pytest.raises(ValueError, match=r"sequence T1: .* subnormal"):
        read_sequences({"T2": GRID.to_image(image), "T1": GRID.to_image(tiny)}, reference="T2")


def test_constant_sequence_is_refused_by_read_sequences(tmp_path: Path) -> None:
    path = tmp_path / "T1.nrrd"
    sitk.WriteImage(GRID.to_image(np.zeros(GRID.array_shape, np.int16)), str(path))
    with pytest.raises(ValueError, match="sequence T1 is constant"):
        read_sequences({"T2": GRID.to_image(volume()), "T1": path}, reference="T2")


# --------------------------------------------------------------------------------------------
# 4. Reference labels that are not classes of the model
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, dtype, message", [
    (7, np.uint8, r"values \[7\] are not classes"),
    (-1, np.int16, r"values \[-1\] are not classes"),
    (0.5, np.float32, r"values \[0.5\] are not whole numbers"),
])
def test_reference_label_values_must_be_classes(tmp_path: Path, package, value, dtype, message) -> None:
    label = np.zeros(GRID.array_shape, dtype)
    label[2:4, 5:9, 5:9] = 1
    label[4, 5, 5] = value
    case = write_case(tmp_path / "case", GRID, label)
    with pytest.raises(ValueError, match=message) as error:
        pipeline.load_case(case, package, reference_label=case / "label.nrrd")
    assert "label.nrrd" in str(error.value) and "0 = background, 1 = tumour" in str(error.value)
    # An in-memory label is checked the same way.
    with pytest.raises(ValueError, match=message):
        pipeline.load_case(case, package, reference_label=GRID.to_image(label))
    label[4, 5, 5] = np.nan if dtype == np.float32 else 0
    if dtype == np.float32:
        with pytest.raises(ValueError, match="NaN or infinite"):
            pipeline.load_case(case, package, reference_label=GRID.to_image(label))


def test_float_reference_label_with_class_values_is_accepted(tmp_path: Path, package) -> None:
    label = np.zeros(GRID.array_shape, np.float32)
    label[2:4, 5:9, 5:9] = 1.0
    case = pipeline.load_case(write_case(tmp_path / "case", GRID, label), package,
                              reference_label=tmp_path / "case" / "label.nrrd")
    assert case.reference_label.dtype == np.uint8
    np.testing.assert_array_equal(case.reference_label, label.astype(np.uint8))


# --------------------------------------------------------------------------------------------
# 5. The model's voxel spacing
# --------------------------------------------------------------------------------------------

def test_grid_with_spacing_keeps_the_extent() -> None:
    source = Geometry((100, 80, 3), (0.1, 0.125, 10.0), (5.0, -3.0, 2.0), np.eye(3)[[1, 0, 2]].T.ravel())
    grid = grid_with_spacing(source, (3.75, 3.75, 5.0))
    assert grid.spacing == (3.75, 3.75, 5.0) and grid.direction == source.direction
    assert grid.size == (3, 3, 6)  # round(10 / 3.75), round(10 / 3.75), round(30 / 5)

    def centre(g: Geometry) -> np.ndarray:
        return (g.ijk_to_lps() @ np.r_[(np.array(g.size) - 1) / 2.0, 1.0])[:3]
    np.testing.assert_allclose(centre(grid), centre(source), atol=1e-9)
    # Within 1 % of the model's spacing the grid is kept as it is (no interpolation).
    near = Geometry((10, 10, 4), (2.01, 1.99, 3.02), (0.0, 0.0, 0.0), np.eye(3).ravel())
    assert grid_with_spacing(near, TARGET_SPACING) is near
    assert grid_with_spacing(near, (20.0, 20.0, 20.0)).size == (1, 1, 1)


def test_load_case_resamples_to_the_model_spacing(tmp_path: Path, package) -> None:
    # The same field of view (32 × 32 × 24 mm) acquired at 1 × 1 × 6 mm instead of 2 × 2 × 3 mm.
    fine = Geometry((32, 32, 4), (1.0, 1.0, 6.0), (-15.5, -15.5, -9.0), np.eye(3).ravel())
    label = np.zeros(fine.array_shape, np.uint8)
    label[1:3, 8:20, 8:20] = 1
    case = pipeline.load_case(write_case(tmp_path / "fine", fine, label), package,
                              reference_label=tmp_path / "fine" / "label.nrrd")
    assert case.geometry.same_grid(GRID, tol=1e-9)
    assert case.source_geometry == fine
    # Linear intensities are reproduced exactly wherever the model grid lies inside the source's voxel centres.
    inside = np.zeros(GRID.array_shape, bool)
    inside[1:-1] = True
    for c in range(2):
        np.testing.assert_allclose(case.images[c][inside], linear(GRID, 50.0 * c)[inside], rtol=1e-5)
    assert case.reference_label.shape == GRID.array_shape and set(np.unique(case.reference_label)) == {0, 1}

    at_spacing = pipeline.load_case(write_case(tmp_path / "native", GRID), package)
    assert at_spacing.source_geometry == at_spacing.geometry
    np.testing.assert_array_equal(at_spacing.images[1], linear(GRID, 50.0))  # not resampled


def test_labels_on_source_grid_resample_logits_back(tmp_path: Path, package) -> None:
    fine = Geometry((32, 32, 4), (1.0, 1.0, 6.0), (-15.5, -15.5, -9.0), np.eye(3).ravel())
    case = pipeline.load_case(write_case(tmp_path / "fine", fine), package)
    # Logit of class 1 = a linear function of position minus a threshold: its argmax on the source grid is
    # the threshold of the (exactly interpolated) linear function there, extrapolated at the borders.
    threshold = 110.37  # no voxel centre sits on it
    logits = np.stack([np.zeros(GRID.array_shape, np.float32), linear(GRID) - threshold])
    labels = pipeline.labels_on_source_grid(case, logits)
    assert labels.dtype == np.uint8 and labels.shape == fine.array_shape
    expected = (linear(fine) > threshold).astype(np.uint8)
    assert np.mean(labels == expected) > 0.97
    np.testing.assert_array_equal(labels[1:3, 1:-1, 1:-1], expected[1:3, 1:-1, 1:-1])

    native = pipeline.load_case(write_case(tmp_path / "native", GRID), package)
    np.testing.assert_array_equal(pipeline.labels_on_source_grid(native, logits), logits.argmax(0))


def test_predict_writes_the_label_map_on_the_source_grid(tmp_path: Path, package, capfd) -> None:
    fine = Geometry((32, 32, 4), (1.0, 1.0, 6.0), (-15.5, -15.5, -9.0), np.eye(3).ravel())
    case = write_case(tmp_path / "fine", fine)
    model = package.save(tmp_path / "tiny.lrpmodel")
    output = tmp_path / "seg.nrrd"
    code = cli.main(["--quiet", "predict", "--model", str(model), "--case", str(case), "--output", str(output)])
    assert code == 0, capfd.readouterr().err
    written = read_image(output)
    assert Geometry.from_image(written).same_grid(fine, tol=1e-9)
    # The network ran at the model's spacing and its logits were brought back to the source grid.
    loaded = pipeline.load_case(case, package)
    logits, _ = pipeline.predict(package.build(), pipeline.network_input(loaded, package), package, "cpu")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), pipeline.labels_on_source_grid(loaded, logits))


def test_demo_case_is_at_the_demo_models_spacing() -> None:
    from LRPSegmentationLib import phantom
    from LRPSegmentationLib.demo import DEMO_MODEL
    from LRPSegmentationLib.models.package import load_package

    package = load_package(DEMO_MODEL)
    shape = tuple(package.training_info["phantom_shape"])
    np.testing.assert_allclose(package.target_spacing, phantom.default_spacing(shape)[::-1])
