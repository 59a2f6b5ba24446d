"""Tests for LRPSegmentationLib.imaging: geometry, IO on real files, resampling, normalization.

Every file is written to tmp_path with SimpleITK and read back through the library. Images are
small so the whole file runs in seconds.
"""
from __future__ import annotations

import locale
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LRPSegmentationLib.normalization import foreground_mask, normalize, normalize_sequences, validate_normalization
from LRPSegmentationLib.imaging import (
    Geometry,
    find_case_files,
    overlap_fraction,
    read_image,
    read_sequences,
    resample_to_reference,
    write_image,
    write_label,
)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def rotation(about_x: float, about_y: float, about_z: float) -> tuple[float, ...]:
    """A proper rotation (det +1) as 9 row-major floats: an oblique ITK direction."""
    cx, sx, cy, sy, cz, sz = (np.cos(about_x), np.sin(about_x), np.cos(about_y),
                              np.sin(about_y), np.cos(about_z), np.sin(about_z))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return tuple((rz @ ry @ rx).ravel())


OBLIQUE = rotation(0.3, 0.1, -0.2)
GRID_A = Geometry(size=(40, 36, 30), spacing=(1.0, 1.2, 1.5), origin=(-10.0, 5.0, 3.0),
                  direction=OBLIQUE)
# Different size, spacing, origin and direction; partly outside GRID_A.
GRID_B = Geometry(size=(30, 28, 26), spacing=(1.3, 0.9, 1.7), origin=(-2.0, 10.0, 8.0),
                  direction=rotation(-0.1, 0.25, 0.15))


def voxel_centres(geometry: Geometry) -> np.ndarray:
    """LPS positions of all voxel centres, shape (D, H, W, 3)."""
    k, j, i = np.indices(geometry.array_shape)
    ijk1 = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(np.float64)
    return (ijk1 @ geometry.ijk_to_lps().T)[..., :3]


def continuous_index(geometry: Geometry, points: np.ndarray) -> np.ndarray:
    """ITK continuous (x, y, z) indices of LPS ``points`` (..., 3) on ``geometry``."""
    lps_to_ijk = np.linalg.inv(geometry.ijk_to_lps())
    return points @ lps_to_ijk[:3, :3].T + lps_to_ijk[:3, 3]


def linear_function(points: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """A linear function of LPS position, which linear interpolation reproduces exactly."""
    return offset + 2.0 + 0.5 * points[..., 0] - 0.3 * points[..., 1] + 0.8 * points[..., 2]


def linear_values(geometry: Geometry, offset: float = 0.0,
                  dtype: type = np.float64) -> np.ndarray:
    """(D, H, W) array of ``linear_function`` at the voxel centres of ``geometry``."""
    return linear_function(voxel_centres(geometry), offset).astype(dtype)


def linear_image(geometry: Geometry, offset: float = 0.0) -> sitk.Image:
    return geometry.to_image(linear_values(geometry, offset))


def interior_mask(source: Geometry, target: Geometry) -> np.ndarray:
    """(D, H, W) of ``target``: voxel centres within the hull of ``source``'s voxel centres."""
    index = continuous_index(source, voxel_centres(target))
    return np.all((index >= 0) & (index <= np.array(source.size) - 1), axis=-1)


def exterior_mask(source: Geometry, target: Geometry) -> np.ndarray:
    """(D, H, W) of ``target``: voxel centres clearly outside ``source``'s voxels."""
    index = continuous_index(source, voxel_centres(target))
    return np.any((index < -0.5 - 1e-6) | (index > np.array(source.size) - 0.5 + 1e-6), axis=-1)


def write_dicom_series(image: sitk.Image, folder: Path, series_uid: str,
                       description: str = "test series") -> None:
    """Write an int16 volume as one DICOM file per slice with the geometry tags set.

    Files are named in reverse slice order so that reading by file name would flip the volume:
    the reader must sort by ImagePositionPatient.
    """
    # GDCM's writer switches the process locale to "C" (ASCII text I/O for the rest of the test run).
    ctype = locale.setlocale(locale.LC_CTYPE)
    try:
        _write_dicom_series(image, folder, series_uid, description)
    finally:
        locale.setlocale(locale.LC_CTYPE, ctype)


def _write_dicom_series(image: sitk.Image, folder: Path, series_uid: str, description: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    orientation = list(direction[:, 0]) + list(direction[:, 1])  # row and column cosines
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    slices = image.GetSize()[2]
    for k in range(slices):
        slice_image = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "MR",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
            "0008|0018": f"{series_uid}.{k + 1}",  # SOPInstanceUID
            "0008|103e": description,
            "0020|000d": "1.2.826.0.1.3680043.8.498.1",  # StudyInstanceUID
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),  # InstanceNumber
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in orientation),
            "0018|0050": f"{image.GetSpacing()[2]:.6f}",  # SliceThickness
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        series_number = series_uid.rsplit(".", 1)[-1]
        writer.SetFileName(str(folder / f"IM{series_number}_{slices - 1 - k:04d}.dcm"))
        writer.Execute(slice_image)


def small_int16_volume(geometry: Geometry) -> np.ndarray:
    return np.arange(np.prod(geometry.array_shape), dtype=np.int16).reshape(geometry.array_shape)


DICOM_GRID = Geometry(size=(12, 10, 5), spacing=(0.8, 0.9, 3.0), origin=(-50.0, 20.0, 10.0),
                      direction=rotation(0.2, -0.1, 0.3))


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------

def test_geometry_image_round_trip_oblique() -> None:
    array = np.random.default_rng(0).random(GRID_A.array_shape).astype(np.float32)
    image = GRID_A.to_image(array)
    assert image.GetSize() == GRID_A.size
    assert Geometry.from_image(image) == GRID_A
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)

    vector = GRID_A.to_image(np.zeros(GRID_A.array_shape + (3,), dtype=np.float32))
    assert vector.GetNumberOfComponentsPerPixel() == 3
    assert Geometry.from_image(vector) == GRID_A


def test_ijk_to_lps_and_ras_agree_with_itk() -> None:
    image = GRID_A.to_image(np.zeros(GRID_A.array_shape, dtype=np.uint8))
    for index in [(0, 0, 0), (39, 0, 0), (3, 17, 29), (39, 35, 29)]:
        lps = np.asarray(image.TransformIndexToPhysicalPoint(index))
        homogeneous = np.array(index + (1,), dtype=float)
        np.testing.assert_allclose(GRID_A.ijk_to_lps() @ homogeneous, np.r_[lps, 1.0], atol=1e-9)
        ras = np.r_[-lps[0], -lps[1], lps[2], 1.0]
        np.testing.assert_allclose(GRID_A.ijk_to_ras() @ homogeneous, ras, atol=1e-9)


def test_ijk_to_ras_round_trip_oblique() -> None:
    restored = Geometry.from_ijk_to_ras(GRID_A.ijk_to_ras(), GRID_A.array_shape)
    assert restored.size == GRID_A.size
    np.testing.assert_allclose(restored.spacing, GRID_A.spacing, atol=1e-12)
    np.testing.assert_allclose(restored.origin, GRID_A.origin, atol=1e-12)
    np.testing.assert_allclose(restored.direction, GRID_A.direction, atol=1e-12)
    assert restored.same_grid(GRID_A, tol=1e-10)
    assert not restored.same_grid(GRID_B)


def test_geometry_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="spacing"):
        Geometry((4, 4, 4), (1.0, 0.0, 1.0), (0.0, 0.0, 0.0), np.eye(3).ravel())
    with pytest.raises(ValueError, match="direction needs 9"):
        Geometry((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="does not fit"):
        GRID_A.to_image(np.zeros((30, 36, 41), dtype=np.float32))
    with pytest.raises(ValueError, match="affine"):
        Geometry.from_ijk_to_ras(np.ones((4, 4)), (3, 3, 3))


# --------------------------------------------------------------------------------------------
# Reading and writing files
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extension", [".nrrd", ".nii.gz", ".mha"])
def test_write_read_round_trip(tmp_path: Path, extension: str) -> None:
    array = np.random.default_rng(1).normal(size=GRID_A.array_shape).astype(np.float32)
    path = write_image(array, GRID_A, tmp_path / "sub" / f"volume{extension}")
    assert path.is_file()  # parent folder was created

    image = read_image(path)
    assert image.GetPixelID() == sitk.sitkFloat32
    # NIfTI stores its header in float32; 1e-5 mm is far below any voxel size.
    assert Geometry.from_image(image).same_grid(GRID_A, tol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)


def test_dicom_series_read_as_volume(tmp_path: Path) -> None:
    volume = small_int16_volume(DICOM_GRID)
    write_dicom_series(DICOM_GRID.to_image(volume), tmp_path / "t2", "1.2.826.0.1.3680043.8.498.2")

    image = read_image(tmp_path / "t2")
    # DICOM stores positions as decimal strings with 6 decimals here.
    assert Geometry.from_image(image).same_grid(DICOM_GRID, tol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume)


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "t2"
    write_dicom_series(DICOM_GRID.to_image(small_int16_volume(DICOM_GRID)), folder,
                       "1.2.826.0.1.3680043.8.498.6")
    sorted(folder.iterdir())[2].unlink()  # a slice in the middle
    with pytest.raises(ValueError, match="not evenly spaced"):
        read_image(folder)


def test_dicom_folder_with_two_series(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    volume = small_int16_volume(DICOM_GRID)
    write_dicom_series(DICOM_GRID.to_image(volume), folder, "1.2.826.0.1.3680043.8.498.3", "first")
    write_dicom_series(DICOM_GRID.to_image(volume + 1), folder, "1.2.826.0.1.3680043.8.498.4",
                       "second")

    with pytest.raises(ValueError, match="2 DICOM series") as error:
        read_image(folder)
    assert "1.2.826.0.1.3680043.8.498.3" in str(error.value)
    assert "1.2.826.0.1.3680043.8.498.4" in str(error.value)
    assert "second" in str(error.value)  # the series description helps the user choose

    chosen = read_image(folder, series_id="1.2.826.0.1.3680043.8.498.4")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(chosen), volume + 1)


def test_read_image_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.nrrd"):
        read_image(tmp_path / "missing.nrrd")

    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="garbage.nii.gz"):
        read_image(garbage)

    with pytest.raises(ValueError, match="unsupported file type.*DICOM"):
        read_image(garbage.rename(tmp_path / "slice.dcm"))

    flat = tmp_path / "flat.mha"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkFloat32), str(flat))
    with pytest.raises(ValueError, match="3D"):
        read_image(flat)

    rgb = tmp_path / "vector.nrrd"
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3), str(rgb))
    with pytest.raises(ValueError, match="3 components"):
        read_image(rgb)

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no DICOM series"):
        read_image(tmp_path / "empty")


def test_write_refuses_to_overwrite(tmp_path: Path) -> None:
    ones = np.ones(GRID_B.array_shape, dtype=np.float32)
    path = write_image(ones, GRID_B, tmp_path / "relevance.nrrd")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_image(2 * ones, GRID_B, path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(path)), ones)

    write_image(2 * ones, GRID_B, path, overwrite=True)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(path)), 2 * ones)

    with pytest.raises(ValueError, match="file format"):
        write_image(ones, GRID_B, tmp_path / "relevance.png")
    with pytest.raises(ValueError, match="does not fit"):
        write_image(ones[:-1], GRID_B, tmp_path / "wrong_shape.nrrd")
    assert not (tmp_path / "wrong_shape.nrrd").exists()


def test_write_label(tmp_path: Path) -> None:
    labels = np.zeros(GRID_B.array_shape, dtype=np.int64)  # argmax returns int64
    labels[5:15, 4:20, 6:22] = 1
    labels[8:10, 8:10, 8:10] = 2
    path = write_label(labels, GRID_B, tmp_path / "segmentation.seg.nrrd")

    image = read_image(path)
    assert image.GetPixelID() == sitk.sitkUInt8
    assert Geometry.from_image(image).same_grid(GRID_B, tol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), labels)
    assert b"encoding: gzip" in path.read_bytes()[:1000]  # compressed NRRD header

    with pytest.raises(FileExistsError):
        write_label(labels, GRID_B, path)
    with pytest.raises(ValueError, match="integer"):
        write_label(labels.astype(np.float32), GRID_B, tmp_path / "float.nrrd")
    with pytest.raises(ValueError, match="0…255"):
        write_label(labels + 255, GRID_B, tmp_path / "large.nrrd")


# --------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------

def test_resample_reproduces_a_linear_function() -> None:
    resampled = resample_to_reference(linear_image(GRID_A), GRID_B)
    assert Geometry.from_image(resampled) == GRID_B
    values = sitk.GetArrayFromImage(resampled)

    interior = interior_mask(GRID_A, GRID_B)
    exterior = exterior_mask(GRID_A, GRID_B)
    assert interior.sum() > 1000 and exterior.sum() > 1000  # the test covers both cases
    expected = linear_function(voxel_centres(GRID_B))
    np.testing.assert_allclose(values[interior], expected[interior], atol=1e-6)
    assert np.all(values[exterior] == 0.0)


def test_resample_onto_its_own_grid_keeps_values() -> None:
    values = np.random.default_rng(3).random(GRID_B.array_shape)
    # Off by less than the same_grid tolerance, as after a NIfTI float32 header round trip.
    nearly = Geometry(GRID_B.size, GRID_B.spacing, np.add(GRID_B.origin, 1e-6), GRID_B.direction)
    resampled = resample_to_reference(nearly.to_image(values), GRID_B)
    assert Geometry.from_image(resampled) == GRID_B
    np.testing.assert_array_equal(sitk.GetArrayFromImage(resampled), values)


def test_resample_accepts_an_image_reference_and_casts_integers() -> None:
    reference = GRID_B.to_image(np.zeros(GRID_B.array_shape, dtype=np.int16))
    integers = sitk.Cast(linear_image(GRID_A, offset=500.0), sitk.sitkInt16)
    resampled = resample_to_reference(integers, reference)
    # Linear interpolation of integers gives float32, not values rounded back to int16.
    assert resampled.GetPixelID() == sitk.sitkFloat32
    values = sitk.GetArrayFromImage(resampled)[interior_mask(GRID_A, GRID_B)]
    assert np.any(values != np.round(values))


def test_resample_nearest_keeps_labels() -> None:
    labels = (np.indices(GRID_A.array_shape).sum(axis=0) % 3).astype(np.uint8)
    resampled = resample_to_reference(GRID_A.to_image(labels), GRID_B, interpolation="nearest")
    assert resampled.GetPixelID() == sitk.sitkUInt8
    values = sitk.GetArrayFromImage(resampled)
    assert set(np.unique(values)) == {0, 1, 2}

    with pytest.raises(ValueError, match="interpolation must be one of"):
        resample_to_reference(GRID_A.to_image(labels), GRID_B, interpolation="cubic")


def test_overlap_fraction_and_no_overlap_error() -> None:
    grid = Geometry((10, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3).ravel())
    half_shifted = Geometry((10, 4, 4), (1.0, 1.0, 1.0), (5.0, 0.0, 0.0), np.eye(3).ravel())
    assert overlap_fraction(grid, half_shifted) == pytest.approx(0.5)
    assert overlap_fraction(grid, grid) == 1.0

    far_away = Geometry(GRID_A.size, GRID_A.spacing, (1000.0, 0.0, 0.0), GRID_A.direction)
    assert overlap_fraction(far_away, GRID_B) == 0.0
    with pytest.raises(ValueError, match="sequence T2 does not overlap the reference grid"):
        resample_to_reference(linear_image(far_away), GRID_B, name="T2")


def test_read_sequences_stacks_on_the_reference_grid(tmp_path: Path) -> None:
    # Each sequence on its own grid, in its own format; channel c holds linear_function + 100 c.
    t2_grid = GRID_A
    plain_t1_grid = Geometry((34, 30, 28), (1.1, 1.1, 1.4), (-6.0, 2.0, 0.0), rotation(0, 0, 0.4))
    late_grid = GRID_B  # the reference
    write_image(linear_values(t2_grid, 0.0, np.float32), t2_grid, tmp_path / "T2.nrrd")
    write_image(linear_values(plain_t1_grid, 100.0, np.float32), plain_t1_grid,
                tmp_path / "plainT1.nii.gz")
    reference_values = linear_values(late_grid, 300.0, np.float32)
    write_image(reference_values, late_grid, tmp_path / "T1-15min.mha")
    in_memory = linear_image(GRID_A, 200.0)

    sequences = {"T2": tmp_path / "T2.nrrd", "plainT1": str(tmp_path / "plainT1.nii.gz"),
                 "T1-20s": in_memory, "T1-15min": tmp_path / "T1-15min.mha"}
    array, geometry = read_sequences(sequences, reference="T1-15min")

    assert array.dtype == np.float32
    assert array.shape == (4,) + late_grid.array_shape
    assert geometry.same_grid(late_grid, tol=1e-9)
    np.testing.assert_array_equal(array[3], reference_values)  # the reference is not resampled
    expected = linear_function(voxel_centres(late_grid))
    for channel, grid in enumerate([t2_grid, plain_t1_grid, GRID_A]):
        interior = interior_mask(grid, late_grid)
        assert interior.sum() > 1000
        np.testing.assert_allclose(array[channel][interior], expected[interior] + 100 * channel,
                                   atol=1e-3)

    with pytest.raises(ValueError, match="reference sequence 'T1-60s' is not among"):
        read_sequences(sequences, reference="T1-60s")
    with pytest.raises(FileNotFoundError, match="nope.nrrd"):
        read_sequences({"T2": tmp_path / "nope.nrrd"}, reference="T2")


# --------------------------------------------------------------------------------------------
# Normalization
# --------------------------------------------------------------------------------------------

def body_phantom(seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A (24, 32, 32) 'MRI': dim noisy air around a bright textured block; (image, body mask)."""
    rng = np.random.default_rng(seed)
    image = np.abs(rng.normal(0.0, 3.0, size=(24, 32, 32)))
    body = np.zeros(image.shape, dtype=bool)
    body[4:20, 6:26, 5:27] = True
    image[body] = rng.uniform(250.0, 550.0, size=body.sum())
    return image.astype(np.float32), body


def test_otsu_foreground_finds_the_body() -> None:
    image, body = body_phantom()
    np.testing.assert_array_equal(foreground_mask(image), body)
    np.testing.assert_array_equal(foreground_mask(image, threshold=0.0), image > 0)


def test_zscore_inside_the_foreground() -> None:
    image, body = body_phantom()
    normalized = normalize(image, {"type": "zscore"})
    assert normalized.dtype == np.float32 and normalized.shape == image.shape
    assert normalized[body].mean() == pytest.approx(0.0, abs=1e-5)
    assert normalized[body].std() == pytest.approx(1.0, abs=1e-5)
    # The statistics come from the body but the transform applies everywhere.
    expected_air = (image[~body] - image[body].mean()) / image[body].std()
    np.testing.assert_allclose(normalized[~body], expected_air, rtol=1e-5)

    whole = normalize(image, {"type": "zscore", "mask": "none"})
    assert whole.mean() == pytest.approx(0.0, abs=1e-5)
    assert whole.std() == pytest.approx(1.0, abs=1e-5)


def test_percentile_clips_and_rescales() -> None:
    image, _ = body_phantom()
    method = {"type": "percentile", "lower": 2.0, "upper": 98.0, "range": [-1, 1]}
    normalized = normalize(image, method)
    assert normalized.min() == pytest.approx(-1.0) and normalized.max() == pytest.approx(1.0)
    low, high = np.percentile(image.astype(np.float64), [2.0, 98.0])
    # Voxels beyond the percentiles are clipped: about 2 % of them at each end.
    assert np.mean(normalized == normalized.min()) == pytest.approx(0.02, abs=0.002)
    assert np.mean(normalized == normalized.max()) == pytest.approx(0.02, abs=0.002)
    inside = (image > low) & (image < high)
    np.testing.assert_allclose(normalized[inside], 2 * (image[inside] - low) / (high - low) - 1,
                               atol=1e-5)


def test_constant_image_is_a_clear_error() -> None:
    image, _ = body_phantom()
    stacked = np.stack([image, np.full(image.shape, 7.0, dtype=np.float32)])
    with pytest.raises(ValueError, match=r"sequence 1 \(plainT1\) is constant"):
        normalize_sequences(stacked, {"type": "zscore"}, names=["T2", "plainT1"])
    with pytest.raises(ValueError, match="sequence 1 is constant"):
        normalize_sequences(stacked, [{"type": "none"}, {"type": "percentile"}])
    # "none" has nothing to divide by zero, so a constant image passes unchanged.
    unchanged = normalize_sequences(stacked, [{"type": "zscore"}, {"type": "none"}])
    assert np.all(unchanged[1] == 7.0) and not np.any(np.isnan(unchanged))


def test_normalize_sequences_applies_one_method_per_channel() -> None:
    image, body = body_phantom()
    stacked = np.stack([image, 3 * image + 10])
    methods = [{"type": "zscore"}, {"type": "percentile", "lower": 0, "upper": 100}]
    normalized = normalize_sequences(stacked, methods)
    np.testing.assert_array_equal(normalized[0], normalize(image, methods[0]))
    assert normalized[1].min() == pytest.approx(0.0) and normalized[1].max() == pytest.approx(1.0)
    # A single dict applies to every channel; z-score removes the affine intensity change.
    same = normalize_sequences(stacked, {"type": "zscore"})
    np.testing.assert_allclose(same[0], same[1], atol=1e-4)
    with pytest.raises(ValueError, match="2 channels"):
        normalize_sequences(stacked, [{"type": "zscore"}])


def test_normalization_methods_are_validated() -> None:
    with pytest.raises(ValueError, match=r"valid types: \['none', 'percentile', 'window', 'zscore'\]"):
        normalize(np.zeros((2, 2, 2)), {"type": "minmax"})
    with pytest.raises(ValueError, match="no setting"):
        validate_normalization({"type": "percentile", "lowr": 1})
    with pytest.raises(ValueError, match="lower < upper"):
        validate_normalization({"type": "percentile", "lower": 99, "upper": 1})
    with pytest.raises(ValueError, match="foreground_threshold"):
        validate_normalization({"type": "zscore", "foreground_threshold": "triangle"})
    complete = validate_normalization({"type": "zscore"})
    assert complete == {"type": "zscore", "mask": "foreground", "foreground_threshold": "otsu"}


# --------------------------------------------------------------------------------------------
# Finding a case's files
# --------------------------------------------------------------------------------------------

def test_find_case_files_matches_names_loosely(tmp_path: Path) -> None:
    tiny = Geometry((4, 4, 3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3).ravel())
    data = np.zeros(tiny.array_shape, dtype=np.int16)
    write_image(data, tiny, tmp_path / "t2.nii.gz")
    write_image(data, tiny, tmp_path / "PLAINT1.nrrd")
    write_image(data, tiny, tmp_path / "t1_15min.mha")
    write_dicom_series(DICOM_GRID.to_image(small_int16_volume(DICOM_GRID)), tmp_path / "T1 20s",
                       "1.2.826.0.1.3680043.8.498.5")
    (tmp_path / "t2.json").write_text("{}")  # sidecars and hidden files are ignored
    (tmp_path / ".DS_Store").write_bytes(b"")

    names = ["T2", "plainT1", "T1-15min", "T1-20s"]
    found = find_case_files(tmp_path, names)
    assert list(found) == names
    assert found == {"T2": tmp_path / "t2.nii.gz", "plainT1": tmp_path / "PLAINT1.nrrd",
                     "T1-15min": tmp_path / "t1_15min.mha", "T1-20s": tmp_path / "T1 20s"}
    assert read_image(found["T1-20s"]).GetSize() == DICOM_GRID.size

    with pytest.raises(ValueError, match=r"missing sequence\(s\) \['T1-60s'\]") as error:
        find_case_files(tmp_path, names + ["T1-60s"])
    assert "t1_15min.mha" in str(error.value) and "T1 20s/" in str(error.value)

    write_image(data, tiny, tmp_path / "T2.nrrd")
    with pytest.raises(ValueError, match="several candidates for T2"):
        find_case_files(tmp_path, names)
    with pytest.raises(FileNotFoundError):
        find_case_files(tmp_path / "no_such_case", names)
