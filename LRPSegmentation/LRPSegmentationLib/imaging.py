"""Imaging IO and preprocessing: from a patient's MRI files to the network's input and back.

Data flow::

    files (NIfTI, NRRD, MHA/MHD, DICOM series folders)
      → read_image                      one sitk.Image per sequence (truncated files, NaN/Inf refused)
      → check_intensities               NaN/Inf, subnormal or constant sequences refused
      → reorient                        (models with an input orientation, e.g. MONAI's
                                        Orientationd("RAS")) voxels flipped/permuted, exactly
      → grid_with_spacing               the case grid: the reference sequence's field of view at
                                        the model's voxel spacing
      → resample_to_reference           every sequence onto the case grid
      → normalize_sequences             the intensity normalization the model was trained with
      → (C, D, H, W) float32 array      the network input, with its Geometry
      → write_image / write_label       outputs written in patient space

Conventions:

* Array order is numpy's ``(D, H, W) = (z, y, x)``, exactly what ``sitk.GetArrayFromImage``
  returns; ITK sizes, spacings and indices are ``(x, y, z)``.
* Physical coordinates are ITK's LPS (x grows to the patient's Left, y to Posterior).
  3D Slicer works in RAS (x, y negated) with IJK voxel indices, i = x fastest.
* ``Geometry`` travels with every array, so anything computed on the reference grid can be
  written back in patient space.
* Orientation codes (``"RAS"``, ``"LPS"``, ...) name where the index axes i, j, k point, as
  nibabel, MONAI and DICOM (and ITK's ``DICOMOrient``) write them: ``"RAS"`` = i toward the
  patient's Right, j Anterior, k Superior (an LPS direction matrix ``diag(-1, -1, 1)``).
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import SimpleITK as sitk

from .nifti_check import check_nifti_data
from .normalization import check_finite, check_intensities

__all__ = [
    "IMAGE_EXTENSIONS",
    "image_extension",
    "sequence_key",
    "Geometry",
    "find_case_files",
    "check_orientation",
    "grid_with_spacing",
    "orientation_of",
    "overlap_fraction",
    "reorient",
    "read_image",
    "read_sequences",
    "resample_to_reference",
    "write_image",
    "write_label",
]

PathLike = Union[str, os.PathLike]

#: File extensions read and written (lower case). Longest first so ".nii.gz" wins over ".gz".
IMAGE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd")

# LPS ↔ RAS: negate x and y. The matrix is its own inverse.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def image_extension(path: Path) -> str | None:
    """The supported image extension ``path`` ends with (lower case), or None."""
    name = path.name.lower()
    for extension in IMAGE_EXTENSIONS:
        if name.endswith(extension):
            return extension
    return None


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Geometry:
    """A 3D voxel grid in patient space, ITK conventions.

    Attributes:
        size: number of voxels (x, y, z). The numpy array shape is the reverse, ``array_shape``.
        spacing: voxel size (x, y, z) in mm.
        origin: LPS position (mm) of the centre of voxel (0, 0, 0).
        direction: 3×3 direction cosines, row-major, 9 floats; column k is the LPS direction of
            index axis k (as ``sitk.Image.GetDirection``).

    Voxel index (i, j, k) = (x, y, z) sits at ``origin + direction @ (spacing * (i, j, k))``.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def __post_init__(self) -> None:
        # Normalise to plain tuples of Python numbers so equality, hashing and JSON work,
        # whatever sequence type (list, numpy array) the caller passed.
        for field_name, length, cast in (("size", 3, int), ("spacing", 3, float),
                                          ("origin", 3, float), ("direction", 9, float)):
            values = tuple(getattr(self, field_name))
            if len(values) != length:
                raise ValueError(f"Geometry.{field_name} needs {length} values, got {len(values)}")
            object.__setattr__(self, field_name, tuple(cast(v) for v in values))
        if any(s < 1 for s in self.size):
            raise ValueError(f"Geometry.size must be positive in every axis, got {self.size}")
        if not all(math.isfinite(s) and s > 0 for s in self.spacing):
            raise ValueError(f"Geometry.spacing must be positive and finite, got {self.spacing}")
        if not all(math.isfinite(v) for v in self.origin + self.direction):
            raise ValueError("Geometry.origin and direction must be finite")
        if abs(np.linalg.det(self.direction_matrix)) < 1e-6:
            raise ValueError(f"Geometry.direction is singular: {self.direction}")

    # -- conversions -------------------------------------------------------------------------

    @classmethod
    def from_image(cls, image: sitk.Image) -> Geometry:
        """The grid of a 3D ``sitk.Image``; raises ValueError for other dimensions."""
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got a {image.GetDimension()}D image")
        return cls(size=image.GetSize(), spacing=image.GetSpacing(), origin=image.GetOrigin(),
                   direction=image.GetDirection())

    def to_image(self, array: np.ndarray) -> sitk.Image:
        """Wrap an array living on this grid into a ``sitk.Image`` carrying this geometry.

        Args:
            array: (D, H, W) scalar voxels, or (D, H, W, K) for a K-component vector image;
                numpy (z, y, x) order as ``sitk.GetArrayFromImage`` returns. ``bool`` is stored
                as uint8 and float16 as float32 (types ITK cannot hold).

        Returns:
            A 3D image of ``array``'s pixel type with this size, spacing, origin and direction.
        """
        if isinstance(array, sitk.Image):
            raise TypeError("to_image takes a numpy array; for an image use "
                            "sitk.GetArrayFromImage(image) or Geometry.apply_to(image)")
        array = np.asarray(array)
        if array.ndim not in (3, 4) or array.shape[:3] != self.array_shape:
            raise ValueError(f"array of shape {array.shape} does not fit this grid: expected "
                             f"{self.array_shape} (D, H, W) or {self.array_shape + ('K',)}")
        if array.dtype == np.bool_:
            array = array.astype(np.uint8)
        elif array.dtype == np.float16:
            array = array.astype(np.float32)
        return self.apply_to(sitk.GetImageFromArray(array, isVector=array.ndim == 4))

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Set this spacing, origin and direction on ``image`` (same size) in place; return it."""
        if image.GetSize() != self.size:
            raise ValueError(f"image of size {image.GetSize()} does not fit this grid of size "
                             f"{self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @property
    def array_shape(self) -> tuple[int, int, int]:
        """Numpy shape (D, H, W) = (size z, size y, size x) of an array on this grid."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        """The 3×3 direction cosine matrix (columns = index axes in LPS)."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def ijk_to_lps(self) -> np.ndarray:
        """4×4 homogeneous matrix mapping voxel index (i, j, k, 1) = (x, y, z, 1) to LPS mm."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction_matrix * np.asarray(self.spacing)  # scales columns
        matrix[:3, 3] = self.origin
        return matrix

    def ijk_to_ras(self) -> np.ndarray:
        """4×4 matrix mapping voxel index (i, j, k, 1) to RAS mm: 3D Slicer's ``IJKToRAS``."""
        return _LPS_TO_RAS @ self.ijk_to_lps()

    @classmethod
    def from_ijk_to_ras(cls, ijk_to_ras: np.ndarray, array_shape: Sequence[int]) -> Geometry:
        """The grid described by a Slicer ``IJKToRAS`` matrix and the array's shape.

        Args:
            ijk_to_ras: 4×4 affine, index (i, j, k, 1) → RAS; columns of the 3×3 part are the
                index axes scaled by the spacing (non-zero, linearly independent).
            array_shape: (D, H, W) of the voxel array (numpy order, as Slicer's
                ``arrayFromVolume`` returns).

        Inverse of ``ijk_to_ras``: ``Geometry.from_ijk_to_ras(g.ijk_to_ras(), g.array_shape)``
        equals ``g`` to float rounding.
        """
        matrix = np.asarray(ijk_to_ras, dtype=np.float64)
        if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
            raise ValueError(f"ijk_to_ras must be a finite 4×4 matrix, got shape {matrix.shape}")
        if not np.allclose(matrix[3], [0.0, 0.0, 0.0, 1.0]):
            raise ValueError(f"ijk_to_ras must be affine (last row 0 0 0 1), got {matrix[3]}")
        if len(array_shape) != 3:
            raise ValueError(f"array_shape must be (D, H, W), got {tuple(array_shape)}")
        ijk_to_lps = _LPS_TO_RAS @ matrix
        linear = ijk_to_lps[:3, :3]
        spacing = np.linalg.norm(linear, axis=0)
        if np.any(spacing == 0):
            raise ValueError(f"ijk_to_ras has a zero column (zero spacing): {matrix}")
        depth, height, width = (int(n) for n in array_shape)
        return cls(size=(width, height, depth), spacing=tuple(spacing),
                   origin=tuple(ijk_to_lps[:3, 3]), direction=tuple((linear / spacing).ravel()))

    # -- comparisons -------------------------------------------------------------------------

    def same_grid(self, other: Geometry, tol: float = 1e-4) -> bool:
        """Whether ``other`` has the same voxels in the same places.

        Sizes must be equal; spacing and origin may differ by ``tol`` mm and direction cosines
        by ``tol``. The default absorbs the float32 rounding of NIfTI headers.
        """
        return (self.size == other.size
                and np.allclose(self.spacing, other.spacing, rtol=0.0, atol=tol)
                and np.allclose(self.origin, other.origin, rtol=0.0, atol=tol)
                and np.allclose(self.direction, other.direction, rtol=0.0, atol=tol))


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def _check_volume(image: sitk.Image, source: str | Path) -> sitk.Image:
    """Raise ValueError unless ``image`` is a 3D single-component volume."""
    if image.GetDimension() != 3:
        raise ValueError(f"{source}: expected a 3D volume, got a {image.GetDimension()}D image "
                         f"of size {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{source}: expected one value per voxel, got "
                         f"{image.GetNumberOfComponentsPerPixel()} components "
                         f"({image.GetPixelIDTypeAsString()}); split it into one file per sequence")
    return image


def _itk_reason(error: Exception) -> str:
    """The reason in an ITK error message, without its source-file location and prefixes."""
    # ITK messages look like "Exception thrown in ... file.cxx:123:\nITK ERROR: Obj(0x..): why".
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = " ".join(line for line in lines if not line.startswith("Exception thrown in"))
    reason = re.sub(r"^(sitk::ERROR:|ITK ERROR:)\s*(\w+\(0x[0-9a-f]+\):\s*)?", "", reason)
    return reason or type(error).__name__


def _dicom_series_description(file_name: str) -> str:
    """SeriesDescription (0008|103e) of one DICOM file, or '' when it has none."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(file_name)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return ""
    return reader.GetMetaData("0008|103e").strip() if reader.HasMetaDataKey("0008|103e") else ""


def _read_dicom_folder(folder: Path, series_id: str | None) -> sitk.Image:
    """Read the one DICOM series (or the one named ``series_id``) in ``folder``."""
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise ValueError(f"{folder}: folder holds no DICOM series (only files directly inside it "
                         f"are searched, not subfolders)")
    if series_id is None:
        if len(series_ids) > 1:
            listing = "\n".join(
                f"  {uid}  ({len(files)} files) {_dicom_series_description(files[0])!r}"
                for uid in series_ids
                for files in [sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)])
            raise ValueError(f"{folder}: folder holds {len(series_ids)} DICOM series; move each "
                             f"into its own folder or pass series_id=<one of>:\n{listing}")
        series_id = series_ids[0]
    elif series_id not in series_ids:
        raise ValueError(f"{folder}: no DICOM series {series_id!r}; found {list(series_ids)}")
    # GDCM sorts the files by position along the slice normal.
    file_names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(file_names)
    reader.MetaDataDictionaryArrayUpdateOn()  # keep each slice's header for the check below
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise ValueError(f"{folder}: cannot read DICOM series {series_id}: "
                         f"{_itk_reason(error)}") from error
    _check_even_slice_spacing(reader, image, folder)
    return image


def _check_even_slice_spacing(reader: sitk.ImageSeriesReader, image: sitk.Image,
                              folder: Path) -> None:
    """Raise ValueError if the slices of a DICOM volume are unevenly spaced (missing slices).

    ITK stacks the slices as if evenly spaced and only prints a warning, which would put every
    slice after a gap in the wrong place. Deviations up to 1 % of the slice spacing (rounding
    in the headers) are accepted.
    """
    positions = []
    for slice_index in range(len(reader.GetFileNames())):
        if not reader.HasMetaDataKey(slice_index, "0020|0032"):
            return  # no per-slice ImagePositionPatient (e.g. one multi-frame file)
        text = reader.GetMetaData(slice_index, "0020|0032")
        positions.append([float(v) for v in text.split("\\")])
    if len(positions) < 3:
        return
    normal = np.asarray(image.GetDirection()).reshape(3, 3)[:, 2]
    gaps = np.diff(np.asarray(positions) @ normal)
    deviation = float(np.max(np.abs(np.abs(gaps) - image.GetSpacing()[2])))
    if deviation > 0.01 * image.GetSpacing()[2]:
        raise ValueError(f"{folder}: DICOM slices are not evenly spaced (gaps from "
                         f"{np.min(np.abs(gaps)):g} to {np.max(np.abs(gaps)):g} mm); slices are "
                         f"missing or the folder mixes acquisitions")


def read_image(path: PathLike, series_id: str | None = None) -> sitk.Image:
    """Read one 3D scalar volume from an image file or a DICOM series folder.

    Args:
        path: a ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd`` file, or a
            folder holding the files of one DICOM series.
        series_id: for a DICOM folder holding several series, the SeriesInstanceUID to read.

    Returns:
        The volume with its pixel type, spacing, origin and direction as stored.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unsupported extension, unreadable, truncated or corrupt file, NaN or
            infinite voxels, no or several DICOM series in the folder, unevenly spaced
            (missing) DICOM slices, not 3D, or more than one component per voxel.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if path.is_dir():
        return _check_volume(_read_dicom_folder(path, series_id), path)
    if image_extension(path) is None:
        hint = " (for DICOM pass the folder holding the series)" if path.suffix.lower() in (
            ".dcm", ".ima", "") else ""
        raise ValueError(f"{path}: unsupported file type{hint}; supported: "
                         f"{', '.join(IMAGE_EXTENSIONS)} or a DICOM series folder")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ValueError(f"{path}: cannot read image: {_itk_reason(error)}") from error
    if image_extension(path) in (".nii", ".nii.gz"):
        check_nifti_data(path)
    image = _check_volume(image, path)
    check_finite(sitk.GetArrayViewFromImage(image), str(path))
    return image


# --------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------

_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}


def _resample_filter(reference: Geometry, interpolator: int) -> sitk.ResampleImageFilter:
    """An identity-transform resampler onto ``reference``, 0 outside the input."""
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize(reference.size)
    resampler.SetOutputSpacing(reference.spacing)
    resampler.SetOutputOrigin(reference.origin)
    resampler.SetOutputDirection(reference.direction)
    resampler.SetTransform(sitk.Transform())  # identity: both grids are in the same LPS space
    resampler.SetInterpolator(interpolator)
    resampler.SetDefaultPixelValue(0.0)
    return resampler


def _as_geometry(grid: sitk.Image | Geometry) -> Geometry:
    return grid if isinstance(grid, Geometry) else Geometry.from_image(grid)


def overlap_fraction(image: sitk.Image | Geometry, reference: sitk.Image | Geometry) -> float:
    """Fraction (0…1) of the reference's voxel centres that fall inside ``image``'s extent.

    The extent is the image's voxels including their half-voxel border — the region where ITK
    interpolates instead of writing the default value. 0 means resampling would give zeros only.
    """
    image_geometry, reference_geometry = _as_geometry(image), _as_geometry(reference)
    # Resampling an all-ones image (nearest neighbour) marks exactly the covered voxels.
    ones = image_geometry.apply_to(sitk.Image(image_geometry.size, sitk.sitkUInt8) + 1)
    covered = _resample_filter(reference_geometry, sitk.sitkNearestNeighbor).Execute(ones)
    return float(sitk.GetArrayViewFromImage(covered).mean())


def resample_to_reference(image: sitk.Image, reference: sitk.Image | Geometry,
                          interpolation: str = "linear", name: str = "image",
                          extrapolate: bool = False) -> sitk.Image:
    """Resample ``image`` onto the reference grid (identity transform, 0 outside ``image``).

    Args:
        image: a 3D scalar volume in the same patient space (same study, registered).
        reference: the target grid, as an image or a ``Geometry``.
        interpolation: ``"linear"`` for intensities, ``"nearest"`` for labels.
        name: what to call ``image`` in error messages (e.g. the sequence name).
        extrapolate: outside ``image``, take the nearest voxel's value instead of 0 (for maps
            brought back to a grid that reaches a little past them, e.g. logits).

    Returns:
        An image with the reference's size, spacing, origin and direction. ``"linear"`` returns
        float32 for integer inputs (keeping float64 as float64), so interpolated values are not
        rounded; ``"nearest"`` keeps the pixel type.

    Raises:
        ValueError: unknown interpolation, or no reference voxel lies inside ``image``.
    """
    if interpolation not in _INTERPOLATORS:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATORS)}, "
                         f"got {interpolation!r}")
    reference_geometry = _as_geometry(reference)
    image_geometry = Geometry.from_image(image)
    if interpolation == "linear" and image.GetPixelID() not in (sitk.sitkFloat32,
                                                                sitk.sitkFloat64):
        image = sitk.Cast(image, sitk.sitkFloat32)
    if image_geometry.same_grid(reference_geometry):
        # Already there: skip interpolation; take the reference's header so grids compare equal.
        return reference_geometry.apply_to(sitk.Image(image))
    permuted = _permuted_onto(image, reference_geometry)
    if permuted is not None:
        return permuted  # the same voxels in another order: moved, not interpolated
    if overlap_fraction(image_geometry, reference_geometry) == 0.0:
        raise ValueError(f"sequence {name} does not overlap the reference grid; are they from "
                         f"the same study/registered? ({name}: {_describe_extent(image_geometry)}"
                         f"; reference: {_describe_extent(reference_geometry)})")
    resampler = _resample_filter(reference_geometry, _INTERPOLATORS[interpolation])
    resampler.SetUseNearestNeighborExtrapolator(extrapolate)
    return resampler.Execute(image)


def _permuted_onto(image: sitk.Image, reference: Geometry) -> sitk.Image | None:
    """``image``'s voxels reordered onto ``reference`` when ``reference`` is ``image``'s grid with its
    index axes permuted and/or flipped (e.g. `reorient`'s output grid); else None.

    Exact (voxels are moved, never interpolated), so a label map or logits go back and forth between
    a stored grid and its reoriented grid without change.
    """
    if sorted(image.GetSize()) != sorted(reference.size):
        return None
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(reference.direction)
    permuted = sitk.DICOMOrient(image, code)
    if not Geometry.from_image(permuted).same_grid(reference):
        return None
    return reference.apply_to(permuted)


#: Opposite ends of the three patient axes, as orientation codes spell them.
_AXIS_LETTERS = ("LR", "PA", "IS")


def check_orientation(code: object, what: str = "orientation") -> str | None:
    """``code`` as a canonical orientation code (upper case, e.g. ``"RAS"``), or None for None.

    A code has three letters, one from each of L/R, P/A and I/S, in any order; they name where the
    index axes i, j, k point (see the module docstring).

    Raises:
        ValueError: anything else, naming ``what`` and the accepted form.
    """
    if code is None:
        return None
    text = code.strip().upper() if isinstance(code, str) else None
    if text is None or len(text) != 3 or sorted(
            next((a for a, pair in enumerate(_AXIS_LETTERS) if letter in pair), -1) for letter in text) != [0, 1, 2]:
        raise ValueError(f"{what} must be three letters, one of each pair L/R, P/A, I/S, naming where the voxel "
                         f"axes i, j, k point (e.g. \"RAS\"); got {code!r}")
    return text


def orientation_of(geometry: Geometry) -> str:
    """The orientation code of a grid: where its index axes point most closely (e.g. ``"LPS"`` for an
    identity direction)."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(geometry.direction)


def reorient(image: sitk.Image, orientation: str) -> sitk.Image:
    """The same volume with its voxels flipped and permuted so that its index axes point as
    ``orientation`` says (e.g. ``"RAS"``), exactly, as MONAI's ``Orientationd`` and nibabel's
    ``as_reoriented`` do. Voxel values, spacing (permuted) and physical positions are unchanged;
    only the order in which the voxels are stored changes.

    Args:
        image: a 3D volume.
        orientation: a code accepted by `check_orientation`.

    Returns:
        ``image`` itself when already so oriented, otherwise a new image whose direction columns
        point as ``orientation`` says (to the nearest axis for an oblique image).
    """
    code = check_orientation(orientation)
    if orientation_of(Geometry.from_image(image)) == code:
        return image
    return sitk.DICOMOrient(image, code)


def grid_with_spacing(geometry: Geometry, spacing: Sequence[float], rtol: float = 0.01) -> Geometry:
    """The grid covering ``geometry``'s field of view at another voxel spacing.

    Args:
        geometry: the source grid (e.g. the reference sequence's).
        spacing: the wanted (x, y, z) voxel size in mm (e.g. the model's target spacing).
        rtol: spacings within this relative difference in every axis count as equal.

    Returns:
        ``geometry`` itself when its spacing equals ``spacing`` within ``rtol`` (no
        interpolation); otherwise a grid with ``spacing``, the same direction and the same centre,
        and ``round(size * old spacing / spacing)`` voxels per axis (at least 1), so its extent
        is as close as whole voxels allow to the source's. The centre, not the first voxel, is
        kept so the field of view stays symmetric (every new voxel centre lies inside the source
        volume).
    """
    new_spacing = np.asarray(spacing, dtype=np.float64)
    old_spacing = np.asarray(geometry.spacing)
    if new_spacing.shape != (3,) or not np.all(np.isfinite(new_spacing) & (new_spacing > 0)):
        raise ValueError(f"spacing must be three positive (x, y, z) sizes in mm, got {spacing!r}")
    if np.all(np.abs(old_spacing - new_spacing) <= rtol * new_spacing):
        return geometry
    old_size = np.asarray(geometry.size, dtype=np.float64)
    size = np.maximum(np.rint(old_size * old_spacing / new_spacing), 1.0)
    # Voxel-index centre of the volume, moved from the old to the new spacing.
    shift = (old_size - 1.0) / 2.0 * old_spacing - (size - 1.0) / 2.0 * new_spacing
    origin = np.asarray(geometry.origin) + geometry.direction_matrix @ shift
    return Geometry(tuple(int(n) for n in size), tuple(new_spacing), tuple(origin), geometry.direction)


def _describe_extent(geometry: Geometry) -> str:
    """Axis-aligned LPS bounds of a grid's voxel centres, for error messages."""
    corners = np.array([[i, j, k, 1.0] for i in (0, geometry.size[0] - 1)
                        for j in (0, geometry.size[1] - 1) for k in (0, geometry.size[2] - 1)])
    points = (geometry.ijk_to_lps() @ corners.T)[:3]
    return "LPS " + " × ".join(f"[{lo:.1f}, {hi:.1f}]"
                               for lo, hi in zip(points.min(axis=1), points.max(axis=1))) + " mm"


def read_sequences(sequences: Mapping[str, PathLike | sitk.Image], reference: str,
                   spacing: Sequence[float] | None = None, orientation: str | None = None
                   ) -> tuple[np.ndarray, Geometry]:
    """Read a patient's sequences and stack them on one grid: the reference sequence's grid
    (reoriented to ``orientation`` when given, see `reorient`), at ``spacing`` when given (see
    ``grid_with_spacing``).

    Args:
        sequences: sequence name → file / DICOM folder path, or an already loaded ``sitk.Image``.
            The channel order is the mapping's order (the order the model expects).
        reference: the name of the sequence whose grid all others are resampled onto.
        spacing: the (x, y, z) voxel size in mm the stack must have (e.g. the model's target
            spacing); None keeps the reference's. A reference spacing within 1 % of it is kept.
        orientation: where the grid's index axes must point (e.g. ``"RAS"``, the model's input
            orientation); every sequence is reoriented (exactly) before resampling. None keeps the
            reference's stored voxel order.

    Returns:
        ``(array, geometry)``: float32 array (C, D, H, W), C = ``len(sequences)``, with channel
        c = the c-th sequence linearly resampled (0 outside its extent; the reference channel
        is not resampled when its grid is kept), and the grid.

    Raises:
        ValueError: empty mapping, unknown reference name, unreadable or non-overlapping
            sequence, or a sequence no normalization can use (``check_intensities``: NaN,
            infinite or subnormal voxels, a constant image), naming the sequence.
        FileNotFoundError: a path does not exist.
    """
    if not sequences:
        raise ValueError("no sequences given")
    if reference not in sequences:
        raise ValueError(f"reference sequence {reference!r} is not among the sequences "
                         f"{list(sequences)}")
    orientation = check_orientation(orientation)

    def load(name: str) -> sitk.Image:
        source = sequences[name]
        if isinstance(source, sitk.Image):
            image = _check_volume(source, f"sequence {name}")
        elif isinstance(source, (str, os.PathLike)):
            image = read_image(source)
        else:
            raise TypeError(f"sequence {name}: expected a path or sitk.Image, got {type(source)}")
        # On the stored voxels: resampling would spread a NaN and hide a constant image.
        check_intensities(sitk.GetArrayViewFromImage(image), f"sequence {name}")
        return image if orientation is None else reorient(image, orientation)

    reference_image = load(reference)
    geometry = Geometry.from_image(reference_image)
    if spacing is not None:
        geometry = grid_with_spacing(geometry, spacing)
    array = np.empty((len(sequences),) + geometry.array_shape, dtype=np.float32)
    for channel, name in enumerate(sequences):
        image = reference_image if name == reference else load(name)
        resampled = resample_to_reference(image, geometry, "linear", name=name)
        array[channel] = sitk.GetArrayViewFromImage(resampled)  # the view needs `resampled` alive
    return array, geometry


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _prepare_output(path: PathLike, overwrite: bool) -> Path:
    """Validate the extension and the overwrite rule; create the parent folders."""
    path = Path(path)
    if image_extension(path) is None:
        raise ValueError(f"{path}: cannot tell the file format; use one of "
                         f"{', '.join(IMAGE_EXTENSIONS)}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_image(array: np.ndarray, geometry: Geometry, path: PathLike, overwrite: bool = False,
                compress: bool = False) -> Path:
    """Write an array living on ``geometry`` as an image file in patient space.

    Args:
        array: (D, H, W) scalar or (D, H, W, K) vector voxels; the pixel type is kept.
        geometry: the grid the array lives on (e.g. the reference grid from ``read_sequences``).
        path: output file; the format follows the extension (see ``IMAGE_EXTENSIONS``).
            Parent folders are created.
        overwrite: replace an existing file; otherwise an existing file is an error.
        compress: compress the voxel data (``.nii.gz`` is always compressed).

    Returns:
        The path written.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        ValueError: unknown extension, or the array's shape does not fit ``geometry``.
    """
    image = geometry.to_image(array)  # shape check before anything touches the disk
    path = _prepare_output(path, overwrite)
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def write_label(labels: np.ndarray, geometry: Geometry, path: PathLike,
                overwrite: bool = False) -> Path:
    """Write a label map (e.g. a segmentation) as a compressed uint8 image.

    Labels are written as they are — never interpolated. To move labels onto another grid,
    use ``resample_to_reference(..., interpolation="nearest")``.

    Args:
        labels: (D, H, W) integer or bool array with values 0…255.
        geometry, path, overwrite: as for ``write_image``.

    Returns:
        The path written.

    Raises:
        ValueError: non-integer dtype or values outside 0…255.
    """
    labels = np.asarray(labels)
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(f"labels must have an integer or bool dtype, got {labels.dtype}; "
                         f"convert with e.g. probabilities.argmax(0)")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"labels must lie in 0…255 to be stored as uint8, got "
                         f"{labels.min()}…{labels.max()}")
    image = geometry.to_image(labels.astype(np.uint8))
    path = _prepare_output(path, overwrite)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


# --------------------------------------------------------------------------------------------
# Finding a case's files
# --------------------------------------------------------------------------------------------

def sequence_key(name: str) -> str:
    """Comparison key for sequence names: lower case, runs of '-', '_', ' ' → one '_'."""
    return re.sub(r"[-_\s]+", "_", name.strip().lower())


def find_case_files(folder: PathLike, sequence_names: Sequence[str]) -> dict[str, Path]:
    """Find one image file or DICOM subfolder per expected sequence in a case folder.

    An entry matches a sequence when its name without the image extension (a subfolder: its
    whole name) equals the sequence name, ignoring case and treating '-', '_' and spaces alike:
    ``"T1-15min"`` matches ``t1_15min.nii.gz`` and a DICOM folder ``T1 15min``. Hidden entries
    and files without an image extension (``.raw``, ``.json``, …) are ignored. Subfolders are
    taken to be DICOM series folders; ``read_image`` checks that.

    Args:
        folder: the case folder.
        sequence_names: the expected sequence names, e.g. ``["T2", "plainT1", "T1-15min"]``.

    Returns:
        sequence name → path, in ``sequence_names`` order.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ValueError: ``folder`` is not a folder; sequence names collide; a sequence is missing
            or matched by several entries (the message lists what was found).
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"case folder not found: {folder}")
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    if not sequence_names:
        raise ValueError("no sequence names given")
    keys = [sequence_key(name) for name in sequence_names]
    if len(set(keys)) != len(keys):
        raise ValueError(f"sequence names {list(sequence_names)} are not distinct once case, "
                         f"'-', '_' and spaces are ignored")

    candidates: dict[str, list[Path]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            stem = entry.name
        else:
            extension = image_extension(entry)
            if extension is None:
                continue
            stem = entry.name[: -len(extension)]
        candidates.setdefault(sequence_key(stem), []).append(entry)

    found: dict[str, Path] = {}
    missing, ambiguous = [], []
    for name, key in zip(sequence_names, keys):
        matches = candidates.get(key, [])
        if not matches:
            missing.append(name)
        elif len(matches) > 1:
            ambiguous.append(f"{name}: {[m.name for m in matches]}")
        else:
            found[name] = matches[0]
    if missing or ambiguous:
        available = sorted(p.name + ("/" if p.is_dir() else "")
                           for paths in candidates.values() for p in paths)
        problems = []
        if missing:
            problems.append(f"missing sequence(s) {missing}")
        if ambiguous:
            problems.append(f"several candidates for {'; '.join(ambiguous)}")
        raise ValueError(f"{folder}: {' and '.join(problems)}. Found image files / folders: "
                         f"{available or 'none'}. Names match by file name without extension, "
                         f"ignoring case and '-'/'_'/space differences.")
    return found
