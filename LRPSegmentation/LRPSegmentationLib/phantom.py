"""A multi-sequence liver DCE-MRI phantom with known tumour signal.

No public multi-sequence liver MRI with tumour labels can be shipped, and nobody can check an
explanation of real data against the truth. This module draws synthetic abdomens whose
per-sequence lesion contrast is *chosen*: train a segmentation network on them and per-sequence
relevance can be checked against the sequences that really carry the lesion signal
(see :func:`contrast_only_in`). The phantom is also the demo's embedded data.

What one case holds (:func:`generate_case`):

* anatomy, in physical millimetres: a body outline with subcutaneous fat, a liver (two smoothly
  joined, randomly dented lobes on the patient's right), the inferior vena cava (IVC) and aorta,
  portal and hepatic vein trees inside the liver, and one or more irregular ellipsoidal lesions
  fully inside the liver and not touching each other;
* six co-registered sequences (:data:`SEQUENCES`) rendered from a per-tissue intensity table
  (:data:`CONTRAST_TABLE`), then, each switchable off with 0: partial-volume blur, a small
  rigid shift per sequence relative to the T1-15min reference (the label lives on the
  T1-15min grid), a smooth multiplicative bias field, and Rician noise.

Conventions: arrays are (D, H, W) = (z, y, x), like ``SimpleITK.GetArrayFromImage``; spacing is
(z, y, x) in mm. Physical axes follow DICOM/ITK LPS with identity direction: x grows toward the
patient's left (so the liver, on the patient's right, sits at small x), y toward posterior,
z toward head. The volume is centred on the physical origin.

Everything random comes from ``numpy.random.default_rng([seed, stream])`` with one stream per
concern (anatomy, shifts, bias, noise), so a seed gives the same anatomy whatever the contrast
table, noise, bias or shift settings: variants of one seed differ only in what was switched.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

__all__ = [
    "SEQUENCES",
    "REFERENCE_SEQUENCE",
    "BACKGROUND_TISSUES",
    "LESION_TYPES",
    "CONTRAST_TABLE",
    "STANDARD_FIELD_OF_VIEW_MM",
    "Lesion",
    "PhantomCase",
    "contrast_only_in",
    "default_spacing",
    "with_unrelated_sequences",
    "generate_case",
    "generate_dataset",
]

SEQUENCES: tuple[str, ...] = ("T2", "plainT1", "T1-20s", "T1-60s", "T1-120s", "T1-15min")
"""Channel order of :attr:`PhantomCase.images`: T2, unenhanced T1 and the Gd-EOB-DTPA dynamic
T1 phases (20 s arterial, 60 s portal-venous, 120 s transitional, 15 min hepatobiliary)."""

REFERENCE_SEQUENCE = "T1-15min"
"""The sequence the label is drawn on; misregistration moves every other sequence against it."""

BACKGROUND_TISSUES: tuple[str, ...] = ("air", "fat", "muscle", "liver", "vessel", "artery")
"""Tissues every contrast table must define. Every other key of a table is a lesion tissue."""

LESION_TYPES: tuple[str, ...] = ("HCC", "metastasis", "cyst", "FNH")
"""Lesion types of :data:`CONTRAST_TABLE`."""

# Relative intensities, arbitrary MR units, one column per entry of SEQUENCES:
#              T2    plainT1  T1-20s  T1-60s  T1-120s  T1-15min
CONTRAST_TABLE: Mapping[str, tuple[float, ...]] = MappingProxyType({
    # Outside the body: a small positive floor so noise-free images stay strictly positive.
    "air": (5.0, 5.0, 5.0, 5.0, 5.0, 5.0),
    # T2 is a non-fat-suppressed single-shot TSE (fat bright); the T1 series is a
    # fat-suppressed 3D gradient echo, so fat is dark there and barely enhances.
    "fat": (450.0, 120.0, 125.0, 130.0, 130.0, 125.0),
    # Abdominal wall muscle and the non-hepatic viscera lumped together: dark on T2,
    # darker than liver on T1, mild interstitial enhancement.
    "muscle": (180.0, 280.0, 300.0, 360.0, 370.0, 340.0),
    # Liver parenchyma: dark on T2, brighter than muscle on plain T1, little arterial
    # enhancement (the hepatic artery brings ~25 % of its blood), portal-venous enhancement,
    # and the brightest tissue at 15 min because hepatocytes take up Gd-EOB-DTPA (OATP1B1/3).
    "liver": (250.0, 500.0, 560.0, 760.0, 790.0, 1000.0),
    # Portal and hepatic veins and the IVC: flow void on T2, dark on plain T1, early portal
    # inflow at 20 s, peak at 60 s, washing out by 120 s, darker than the enhanced liver at
    # 15 min (the agent has left the blood; the classic hepatobiliary-phase "dark vessels").
    "vessel": (120.0, 220.0, 450.0, 1100.0, 950.0, 480.0),
    # Aorta: like the veins but peaking in the arterial phase.
    "artery": (100.0, 220.0, 1400.0, 950.0, 800.0, 450.0),
    # Hepatocellular carcinoma: mildly T2 bright, T1 hypointense, arterial-phase
    # hyperenhancement, washout (hypointense to liver) at 60/120 s, and hypointense in the
    # hepatobiliary phase because it lacks functioning OATP transporters.
    "HCC": (340.0, 400.0, 900.0, 620.0, 590.0, 450.0),
    # Metastasis (e.g. colorectal) core: moderately T2 bright, T1 hypointense, hypoenhancing in
    # every phase, no hepatocytes so dark at 15 min ...
    "metastasis": (420.0, 330.0, 380.0, 500.0, 540.0, 380.0),
    # ... surrounded by a rim (the "<type>_rim" key: see generate_case) of viable tumour that
    # enhances in the arterial phase ("rim enhancement") and is also dark at 15 min.
    "metastasis_rim": (360.0, 350.0, 700.0, 720.0, 680.0, 420.0),
    # Simple cyst: fluid, very T2 bright, dark on fat-suppressed T1, never enhances.
    "cyst": (1100.0, 150.0, 150.0, 150.0, 150.0, 150.0),
    # Focal nodular hyperplasia: near iso on T2 and plain T1, intense arterial enhancement,
    # no washout, and iso- to hyperintense at 15 min because its hepatocytes keep OATP8 —
    # the feature that tells it from HCC on Gd-EOB-DTPA MRI.
    "FNH": (280.0, 470.0, 950.0, 800.0, 800.0, 1050.0),
})
"""Tissue or lesion type → six relative intensities, in :data:`SEQUENCES` order (read-only;
build variants with ``dict(CONTRAST_TABLE)`` or :func:`contrast_only_in`).

Lesion contrast in a sequence is the ratio of the lesion's value to ``"liver"``'s there; a lesion
whose value equals the liver's is invisible in that sequence (see :func:`contrast_only_in`).
A lesion type ``T`` with a ``"T_rim"`` entry is drawn with an outer rim of that intensity.
"""

STANDARD_FIELD_OF_VIEW_MM: tuple[float, float, float] = (160.0, 270.0, 360.0)
"""(z, y, x) field of view that holds the phantom's adult abdomen at full size (anatomy scale 1)."""

# Per-concern random streams, see the module docstring.
_ANATOMY_STREAM, _SHIFT_STREAM, _BIAS_STREAM, _NOISE_STREAM = range(4)
_LESION_MARGIN_MM = 2.0  # least liver tissue kept around a lesion, before the voxel-size minimums below


@dataclass
class Lesion:
    """One focal lesion of a :class:`PhantomCase`.

    Attributes:
        label: value of this lesion in :attr:`PhantomCase.lesion_labels` (1, 2, ...).
        lesion_type: a lesion key of the contrast table, e.g. ``"HCC"``.
        centre_voxel: (z, y, x) voxel index of the centre.
        radius_mm: nominal radius: the radius of the sphere with the volume of the lesion's
            ellipsoid before its surface dents; the surface reaches at most ``extent_mm``.
        extent_mm: largest distance from the centre to the lesion surface.
        volume_ml: volume of the drawn voxels.
    """

    label: int
    lesion_type: str
    centre_voxel: tuple[int, int, int]
    radius_mm: float
    extent_mm: float
    volume_ml: float


@dataclass
class PhantomCase:
    """One synthetic multi-sequence liver MRI case.

    Attributes:
        images: (6, D, H, W) float32 raw intensities, channels in :attr:`sequences` order.
        tumour: (D, H, W) bool, every lesion voxel (on the T1-15min grid): the label to learn.
        liver: (D, H, W) bool, the whole liver, its vessels and lesions included.
        body: (D, H, W) bool, everything inside the skin.
        vessels: (D, H, W) bool, hepatic (portal and hepatic vein) vessels inside the liver.
        lesion_labels: (D, H, W) int16, 0 outside lesions, ``lesion.label`` inside each.
        tissue: (D, H, W) int16 index into :attr:`tissue_names` of the tissue drawn at each voxel
            (the noise-free, unshifted truth the images are rendered from).
        tissue_names: name of each tissue index: :data:`BACKGROUND_TISSUES`, then the lesion
            tissues of the contrast table in its key order.
        lesions: the lesions, in label order.
        spacing: (z, y, x) voxel size in mm.
        sequences: names of the image channels.
        shifts_mm: (6, 3) rigid (z, y, x) displacement of each sequence's content in mm
            relative to the label grid; the reference sequence's row is zero.
        anatomy_scale: factor applied to the standard adult anatomy so it fits the field of view.
        seed: the seed the case was drawn from.
    """

    images: np.ndarray
    tumour: np.ndarray
    liver: np.ndarray
    body: np.ndarray
    vessels: np.ndarray
    lesion_labels: np.ndarray
    tissue: np.ndarray
    tissue_names: tuple[str, ...]
    lesions: list[Lesion]
    spacing: tuple[float, float, float]
    sequences: tuple[str, ...] = SEQUENCES
    shifts_mm: np.ndarray = field(default_factory=lambda: np.zeros((len(SEQUENCES), 3)))
    anatomy_scale: float = 1.0
    seed: int = 0

    @property
    def parenchyma(self) -> np.ndarray:
        """(D, H, W) bool: liver minus its vessels and lesions."""
        return self.liver & ~self.vessels & ~self.tumour

    @property
    def origin_xyz(self) -> tuple[float, float, float]:
        """Physical (x, y, z) position in mm of voxel (0, 0, 0); the volume is centred on 0."""
        size_zyx = np.array(self.tumour.shape, dtype=float)
        origin_zyx = -(size_zyx - 1.0) / 2.0 * np.asarray(self.spacing, dtype=float)
        return tuple(float(v) for v in origin_zyx[::-1])

    def to_sitk(self) -> tuple[list[sitk.Image], sitk.Image]:
        """The case as SimpleITK images with spacing, origin and identity (LPS) direction set.

        Returns:
            ``(sequence_images, tumour_label)``: one float32 image per entry of
            :attr:`sequences`, and the tumour label as a uint8 image (1 = tumour).
            ``sitk.GetArrayFromImage`` of them gives back :attr:`images` [c] and :attr:`tumour`.
        """
        spacing_xyz = tuple(float(s) for s in self.spacing[::-1])

        def with_geometry(array: np.ndarray) -> sitk.Image:
            image = sitk.GetImageFromArray(array)
            image.SetSpacing(spacing_xyz)
            image.SetOrigin(self.origin_xyz)
            image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
            return image

        sequence_images = [with_geometry(np.ascontiguousarray(channel)) for channel in self.images]
        return sequence_images, with_geometry(self.tumour.astype(np.uint8))


# --------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------


def contrast_only_in(sequences: Sequence[str],
                     base_table: Mapping[str, Sequence[float]] = CONTRAST_TABLE
                     ) -> dict[str, tuple[float, ...]]:
    """A contrast table whose lesions are visible only in ``sequences``.

    Every lesion tissue (every key that is not in :data:`BACKGROUND_TISSUES`, rims included)
    keeps ``base_table``'s value in the listed sequences and takes the liver's value in all the
    others, so there the lesion cannot be told from parenchyma by intensity. Background tissues
    are unchanged. A network trained on such a variant can only find lesions through the listed
    sequences: per-sequence relevance should fall on them.

    Args:
        sequences: names from :data:`SEQUENCES` that keep lesion contrast; may be empty (lesions
            invisible everywhere, a null control).
        base_table: table to start from, e.g. :data:`CONTRAST_TABLE`.

    Returns:
        A new table (the input is not modified).

    Example:
        >>> table = contrast_only_in(["T2", "T1-20s"])
        >>> table["HCC"][SEQUENCES.index("T1-15min")] == table["liver"][SEQUENCES.index("T1-15min")]
        True
    """
    if isinstance(sequences, str):
        raise ValueError(f"sequences must be a list of sequence names such as [{sequences!r}], "
                         f"not a single string")
    keep = list(sequences)
    unknown = [name for name in keep if name not in SEQUENCES]
    if unknown:
        raise ValueError(f"unknown sequence name(s) {unknown}; choose from {list(SEQUENCES)}")
    if len(set(keep)) != len(keep):
        raise ValueError(f"sequence names are repeated in {keep}")
    table = _validated_table(base_table)
    liver = table["liver"]
    return {
        name: values if name in BACKGROUND_TISSUES else tuple(
            value if sequence in keep else liver_value
            for sequence, value, liver_value in zip(SEQUENCES, values, liver))
        for name, values in table.items()
    }


def with_unrelated_sequences(case: PhantomCase, keep: Sequence[str], donor: PhantomCase) -> PhantomCase:
    """The information control: ``case`` with every sequence not in ``keep`` taken from ``donor``.

    :func:`contrast_only_in` removes the lesions' contrast from the other sequences but leaves
    them showing this patient's liver, vessels and body, which a network may use as context (to
    know where the liver is) — so relevance there can be right. Here the other sequences come
    from an unrelated case (another seed: other anatomy, lesions, bias field and noise): they are
    still realistic images, but carry no information about this case's labels. A network trained
    on such cases can only use ``keep``; any relevance elsewhere is the explanation's error.

    Args:
        case: the case whose labels (tumour, liver, ...) and ``keep`` sequences are kept.
        keep: names from :data:`SEQUENCES` to keep from ``case``.
        donor: a case on the same grid (same shape and spacing), drawn from another seed.

    Returns:
        A new :class:`PhantomCase` (the inputs are not modified).
    """
    if isinstance(keep, str):
        raise ValueError(f"keep must be a list of sequence names such as [{keep!r}], not a single string")
    unknown = [name for name in keep if name not in case.sequences]
    if unknown:
        raise ValueError(f"unknown sequence name(s) {unknown}; choose from {list(case.sequences)}")
    if donor.images.shape != case.images.shape or tuple(donor.spacing) != tuple(case.spacing):
        raise ValueError(f"the donor case must be on the same grid: images {donor.images.shape} vs "
                         f"{case.images.shape}, spacing {donor.spacing} vs {case.spacing}")
    if donor.seed == case.seed:
        raise ValueError(f"the donor must be an unrelated case (another seed), got seed {donor.seed} twice")
    images = case.images.copy()
    shifts = case.shifts_mm.copy()
    for index, name in enumerate(case.sequences):
        if name not in keep:
            images[index] = donor.images[index]
            shifts[index] = donor.shifts_mm[index]
    return replace(case, images=images, shifts_mm=shifts)


def default_spacing(shape: Sequence[int]) -> tuple[float, float, float]:
    """Voxel size (z, y, x) in mm that fits the standard adult abdomen into ``shape``.

    In-plane pixels are square and chosen so a 360 mm (x) by 270 mm (y) field of view fits;
    slices cover 160 mm, about the liver's craniocaudal extent. (64, 260, 320) gives
    (2.5, 1.125, 1.125), a typical clinical 3D T1 acquisition; (32, 96, 96) gives (5, 3.75, 3.75).
    """
    depth, height, width = _validated_shape(shape)
    fov_z, fov_y, fov_x = STANDARD_FIELD_OF_VIEW_MM
    in_plane = max(fov_y / height, fov_x / width)
    return (fov_z / depth, in_plane, in_plane)


def generate_dataset(n_cases: int, first_seed: int = 0, **case_options) -> list[PhantomCase]:
    """``n_cases`` phantom cases from seeds ``first_seed, first_seed + 1, ...``.

    Args:
        n_cases: number of cases, at least 1.
        first_seed: seed of the first case.
        **case_options: passed to :func:`generate_case`.
    """
    if isinstance(n_cases, bool) or not isinstance(n_cases, (int, np.integer)) or n_cases < 1:
        raise ValueError(f"n_cases must be a positive integer, got {n_cases!r}")
    _validated_seed(first_seed)
    return [generate_case(first_seed + offset, **case_options) for offset in range(int(n_cases))]


def generate_case(seed: int,
                  shape: Sequence[int] = (32, 96, 96),
                  spacing: Sequence[float] | None = None,
                  lesion_types: Sequence[str] = LESION_TYPES,
                  n_lesions: int | tuple[int, int] = (1, 3),
                  lesion_radius_mm: tuple[float, float] = (5.0, 20.0),
                  contrast: Mapping[str, Sequence[float]] = CONTRAST_TABLE,
                  noise: float = 0.04,
                  bias_field: float = 0.15,
                  misregistration_mm: float = 1.5,
                  partial_volume_sigma: float = 0.6) -> PhantomCase:
    """Draw one synthetic multi-sequence liver MRI case.

    Args:
        seed: non-negative integer; the same arguments and seed give identical arrays.
        shape: (D, H, W) = (z, y, x) voxel grid, each at least 8.
        spacing: (z, y, x) voxel size in mm; ``None`` uses :func:`default_spacing` (shape).
            When the resulting field of view is smaller than
            :data:`STANDARD_FIELD_OF_VIEW_MM`, the whole anatomy (not the lesion radii) is
            scaled down uniformly to fit, see :attr:`PhantomCase.anatomy_scale`.
        lesion_types: lesion keys of ``contrast`` to draw each lesion's type from, uniformly.
        n_lesions: number of lesions, or an inclusive (min, max) range to draw it from. Lesions
            are placed while they fit (inside the liver, not touching each other); a case gets
            fewer when the liver is full, but never zero.
        lesion_radius_mm: inclusive (min, max) range of nominal lesion radii in mm. A drawn
            radius that does not fit the remaining liver shrinks to the largest that does, but
            not below min.
        contrast: tissue → six intensities table, e.g. :data:`CONTRAST_TABLE` or
            :func:`contrast_only_in` (...). Must hold :data:`BACKGROUND_TISSUES` and every entry
            of ``lesion_types``; all values positive.
        noise: Rician noise standard deviation as a fraction of each sequence's liver intensity
            (0.04: liver SNR 25); 0 turns noise off.
        bias_field: strength b of the multiplicative bias field ``exp(b * p)``, with p a random
            quadratic polynomial per sequence scaled to max |p| = 1 over the volume, so the
            field stays within [exp(-b), exp(b)]; 0 turns it off.
        misregistration_mm: largest craniocaudal (z) rigid shift of a non-reference sequence in
            mm (breath-hold differences are mostly craniocaudal); in-plane shifts are at most
            half of it. Each shift's length is at least a quarter of this. 0 turns it off.
        partial_volume_sigma: standard deviation, in voxels along each axis, of the Gaussian
            blur that mimics partial-volume edges; 0 turns it off.

    Returns:
        The :class:`PhantomCase`. ``images`` are strictly positive float32.

    Raises:
        ValueError: on any invalid argument, saying which and how to fix it.
    """
    seed = _validated_seed(seed)
    shape = _validated_shape(shape)
    spacing = default_spacing(shape) if spacing is None else _validated_spacing(spacing)
    table = _validated_table(contrast)
    lesion_types = _validated_lesion_types(lesion_types, table)
    n_lesion_range = _validated_count_range(n_lesions)
    radius_range = _validated_radius_range(lesion_radius_mm)
    noise = _validated_strength("noise", noise)
    bias_field = _validated_strength("bias_field", bias_field)
    misregistration_mm = _validated_strength("misregistration_mm", misregistration_mm)
    partial_volume_sigma = _validated_strength("partial_volume_sigma", partial_volume_sigma)
    if bias_field > 2.0:
        raise ValueError(f"bias_field must be <= 2 (field within [exp(-b), exp(b)]), got {bias_field}")

    anatomy_rng = np.random.default_rng([seed, _ANATOMY_STREAM])
    grid = _Grid(shape, spacing)
    scale = min(1.0, *(fov / standard for fov, standard
                       in zip(grid.field_of_view_mm, STANDARD_FIELD_OF_VIEW_MM)))

    tissue_names = BACKGROUND_TISSUES + tuple(name for name in table if name not in BACKGROUND_TISSUES)
    code = {name: index for index, name in enumerate(tissue_names)}
    tissue = np.zeros(shape, dtype=np.int16)  # air everywhere to start

    body, inner_body, liver_allowed = _draw_body(grid, scale, anatomy_rng)
    tissue[body] = code["fat"]
    tissue[inner_body] = code["muscle"]
    ivc, aorta, ivc_yx = _draw_great_vessels(grid, scale, anatomy_rng)
    liver, lobes = _draw_liver(grid, scale, anatomy_rng)
    liver &= liver_allowed & ~ivc & ~aorta
    tissue[liver] = code["liver"]
    vessels = _draw_hepatic_vessels(grid, scale, lobes, ivc_yx, anatomy_rng) & liver
    tissue[vessels] = code["vessel"]
    tissue[ivc] = code["vessel"]
    tissue[aorta] = code["artery"]

    lesion_labels = np.zeros(shape, dtype=np.int16)
    lesions = _place_lesions(grid, liver, lesion_types, n_lesion_range, radius_range, table,
                             tissue, code, lesion_labels, anatomy_rng)
    tumour = lesion_labels > 0
    vessels &= ~tumour  # lesions displace the vessels they grow over

    # Render: per-tissue intensity lookup, then the acquisition effects in physical order
    # (object blur, patient motion between breath-holds, coil sensitivity, receiver noise).
    intensity_lookup = np.array([table[name] for name in tissue_names], dtype=np.float32)
    images = np.ascontiguousarray(np.moveaxis(intensity_lookup[tissue], -1, 0))  # (6, D, H, W)
    shifts_mm = _draw_shifts(seed, misregistration_mm)
    for channel in range(len(SEQUENCES)):
        images[channel] = _blur_and_shift(images[channel], spacing, partial_volume_sigma,
                                          shifts_mm[channel])
    if bias_field > 0:
        bias_rng = np.random.default_rng([seed, _BIAS_STREAM])
        for channel in range(len(SEQUENCES)):
            images[channel] *= _bias_field(grid, bias_field, bias_rng)
    if noise > 0:
        noise_rng = np.random.default_rng([seed, _NOISE_STREAM])
        for channel in range(len(SEQUENCES)):
            sigma = noise * table["liver"][channel]
            _add_rician_noise(images[channel], sigma, noise_rng)

    return PhantomCase(images=images, tumour=tumour, liver=liver, body=body, vessels=vessels,
                       lesion_labels=lesion_labels, tissue=tissue, tissue_names=tissue_names,
                       lesions=lesions, spacing=spacing, sequences=SEQUENCES,
                       shifts_mm=shifts_mm, anatomy_scale=scale, seed=seed)


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _validated_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _validated_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    values = tuple(shape) if isinstance(shape, (tuple, list, np.ndarray)) else ()
    if (len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                for v in values) or min(values) < 8):
        raise ValueError(f"shape must be three integers (D, H, W), each >= 8, got {shape!r}")
    return tuple(int(v) for v in values)


def _validated_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be three positive (z, y, x) voxel sizes in mm, got {spacing!r}")
    return values


def _validated_strength(name: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not np.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (0 switches it off), got {value!r}")
    return number


def _validated_table(table: Mapping[str, Sequence[float]]) -> dict[str, tuple[float, ...]]:
    if not isinstance(table, Mapping):
        raise ValueError(f"the contrast table must be a dict of tissue -> {len(SEQUENCES)} "
                         f"intensities, got {type(table).__name__}")
    missing = [name for name in BACKGROUND_TISSUES if name not in table]
    if missing:
        raise ValueError(f"the contrast table lacks background tissue(s) {missing}; "
                         f"it needs all of {list(BACKGROUND_TISSUES)}")
    checked = {}
    for name, values in table.items():
        try:
            row = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            row = ()
        if len(row) != len(SEQUENCES) or not all(np.isfinite(v) and v > 0 for v in row):
            raise ValueError(f"contrast table entry {name!r} must be {len(SEQUENCES)} positive "
                             f"intensities (one per {list(SEQUENCES)}), got {values!r}")
        checked[str(name)] = row
    return checked


def _validated_lesion_types(lesion_types: Sequence[str], table: Mapping) -> tuple[str, ...]:
    if isinstance(lesion_types, str):
        raise ValueError(f"lesion_types must be a list of names such as [{lesion_types!r}], "
                         f"not a single string")
    types = tuple(lesion_types)
    available = [name for name in table if name not in BACKGROUND_TISSUES]
    if not types or any(name not in available for name in types):
        raise ValueError(f"lesion_types must be a non-empty list of lesion entries of the contrast "
                         f"table {available}, got {list(types)}")
    return types


def _validated_count_range(n_lesions: int | tuple[int, int]) -> tuple[int, int]:
    bounds = (n_lesions, n_lesions) if isinstance(n_lesions, (int, np.integer)) else n_lesions
    try:
        low, high = bounds
        valid = all(not isinstance(v, bool) and isinstance(v, (int, np.integer)) for v in bounds)
    except (TypeError, ValueError):
        valid = False
    if not valid or not 1 <= low <= high:
        raise ValueError(f"n_lesions must be an integer >= 1 or a (min, max) pair with "
                         f"1 <= min <= max, got {n_lesions!r}")
    return int(low), int(high)


def _validated_radius_range(radius_mm: tuple[float, float]) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in radius_mm)
        valid = np.isfinite(low) and np.isfinite(high) and 0 < low <= high
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"lesion_radius_mm must be a (min, max) pair of radii in mm with "
                         f"0 < min <= max, got {radius_mm!r}")
    return low, high


# --------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------


class _Grid:
    """Voxel grid with centred physical coordinates in mm, as broadcastable 1-D axes."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
        self.shape = shape
        self.spacing = np.asarray(spacing, dtype=float)
        self.field_of_view_mm = tuple(n * s for n, s in zip(shape, spacing))
        self.axes_mm = [((np.arange(n) - (n - 1) / 2.0) * s).astype(np.float32)
                        for n, s in zip(shape, spacing)]
        self.everything = (slice(None), slice(None), slice(None))

    def box(self, low_mm: np.ndarray, high_mm: np.ndarray) -> tuple[slice, slice, slice]:
        """Index slices of the voxels whose centres may lie in the (z, y, x) mm box."""
        centre_index = (np.asarray(self.shape) - 1) / 2.0
        low = np.floor(np.asarray(low_mm) / self.spacing + centre_index).astype(int)
        high = np.ceil(np.asarray(high_mm) / self.spacing + centre_index).astype(int) + 1
        low = np.clip(low, 0, self.shape)
        high = np.clip(high, 0, self.shape)
        return tuple(slice(lo, hi) for lo, hi in zip(low, high))

    def coordinates(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, ...]:
        """Broadcastable (n, 1, 1), (1, n, 1), (1, 1, n) mm coordinates of a box."""
        z, y, x = (axis[part] for axis, part in zip(self.axes_mm, box))
        return z[:, None, None], y[None, :, None], x[None, None, :]

    def voxel_to_mm(self, index: Sequence[float]) -> np.ndarray:
        return (np.asarray(index, dtype=float) - (np.asarray(self.shape) - 1) / 2.0) * self.spacing


def _random_dents(rng: np.random.Generator, amplitude: float, n_terms: int,
                  frequency: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random smooth function on the unit sphere, as cosine terms with total amplitude ≤ amplitude."""
    frequencies = rng.normal(0.0, frequency, size=(n_terms, 3))
    phases = rng.uniform(0.0, 2 * np.pi, size=n_terms)
    weights = rng.uniform(0.3, 1.0, size=n_terms)
    return frequencies, phases, (amplitude * weights / weights.sum())


def _dented_radius(u: np.ndarray, v: np.ndarray, w: np.ndarray,
                   dents: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised radius |(u, v, w)| and the dented surface radius 1 + f(direction) there."""
    radius = np.sqrt(u * u + v * v + w * w) + np.float32(1e-6)
    surface = np.ones_like(radius)
    for (fu, fv, fw), phase, amplitude in zip(*dents):
        surface += np.float32(amplitude) * np.cos((fu * u + fv * v + fw * w) / radius + phase)
    return radius, surface


def _draw_body(grid: _Grid, scale: float, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body outline, its inside below the subcutaneous fat, and where the liver may be."""
    semi_x = rng.uniform(150.0, 170.0) * scale
    semi_y = rng.uniform(105.0, 118.0) * scale
    fat_mm = rng.uniform(8.0, 22.0) * scale
    waist = rng.uniform(-0.06, 0.06)  # the outline widens or narrows slightly along z
    outline = _random_dents(rng, 0.04, 3, 1.5)
    z, y, x = grid.coordinates(grid.everything)
    half_z = grid.field_of_view_mm[0] / 2.0
    widening = (1.0 + waist * z / half_z).astype(np.float32)  # (D, 1, 1)
    # The back is flatter than the belly: posterior (y > 0) semi-axis is shorter.
    semi_y_here = np.where(y > 0, 0.85 * semi_y, semi_y).astype(np.float32)  # (1, H, 1)
    radius_2d, surface_2d = _dented_radius(x / semi_x, y / semi_y_here, np.zeros_like(y + x), outline)
    in_plane = radius_2d / surface_2d  # (1, H, W): 1 on the skin
    body = in_plane <= widening

    def inside(margin_mm: float) -> np.ndarray:
        # Shrink the outline by an absolute margin: compare against a smaller normalised radius.
        return in_plane <= widening * (1.0 - margin_mm / (0.85 * semi_y))

    return body, inside(fat_mm), inside(fat_mm + 6.0 * scale)


def _draw_great_vessels(grid: _Grid, scale: float, rng: np.random.Generator
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IVC (right of midline) and aorta (left) as vertical tubes in front of the spine.

    Returns the IVC and aorta masks and the IVC's in-plane (y, x) centre in mm.
    """
    _, y, x = grid.coordinates(grid.everything)
    ivc_yx = np.array([45.0, -25.0]) * scale + rng.normal(0, 3.0, 2) * scale
    aorta_yx = np.array([55.0, 20.0]) * scale + rng.normal(0, 3.0, 2) * scale
    ivc_radius = rng.uniform(10.0, 13.0) * scale
    aorta_radius = rng.uniform(9.0, 12.0) * scale
    # The IVC is flattened front to back; both are straight along z.
    ivc_2d = ((y - ivc_yx[0]) / (0.75 * ivc_radius)) ** 2 + ((x - ivc_yx[1]) / ivc_radius) ** 2 <= 1
    aorta_2d = (y - aorta_yx[0]) ** 2 + (x - aorta_yx[1]) ** 2 <= aorta_radius ** 2
    full = np.ones((grid.shape[0], 1, 1), dtype=bool)
    return full & ivc_2d, full & aorta_2d, ivc_yx


def _draw_liver(grid: _Grid, scale: float, rng: np.random.Generator
                ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Liver as a smooth union of a large right lobe and a smaller anterior-medial left lobe.

    Returns the mask and each lobe's (centre, semi-axes) in mm, (z, y, x).
    """
    lobes = [  # (centre, semi-axes) of the standard anatomy, (z, y, x) mm
        (np.array([0.0, -8.0, -60.0]), np.array([55.0, 68.0, 62.0])),
        (np.array([12.0, -45.0, 15.0]), np.array([34.0, 34.0, 52.0])),
    ]
    lobes = [((centre + rng.normal(0.0, 5.0, 3)) * scale, axes * rng.uniform(0.9, 1.08, 3) * scale)
             for centre, axes in lobes]
    dent_amplitude = 0.15
    smoothing = 0.25  # of the smooth union below
    dents = [_random_dents(rng, dent_amplitude, 5, 2.0) for _ in lobes]
    # The smooth union reaches at most smoothing / 4 beyond either lobe's level set.
    reach = (1 + dent_amplitude) * (1 + smoothing / 4)
    low = np.min([c - a * reach for c, a in lobes], axis=0)
    high = np.max([c + a * reach for c, a in lobes], axis=0)
    box = grid.box(low, high)
    z, y, x = grid.coordinates(box)
    levels = []  # < 0 inside each lobe
    for (centre, axes), lobe_dents in zip(lobes, dents):
        radius, surface = _dented_radius((z - centre[0]) / axes[0], (y - centre[1]) / axes[1],
                                         (x - centre[2]) / axes[2], lobe_dents)
        levels.append(radius / surface - 1.0)
    # Polynomial smooth minimum: a union whose junction is a smooth saddle, not a crease.
    k = np.float32(smoothing)
    blend = np.clip(0.5 + 0.5 * (levels[1] - levels[0]) / k, 0.0, 1.0)
    union = levels[1] * (1 - blend) + levels[0] * blend - k * blend * (1 - blend)
    liver = np.zeros(grid.shape, dtype=bool)
    liver[box] = union <= 0
    return liver, lobes


def _draw_hepatic_vessels(grid: _Grid, scale: float,
                          lobes: list[tuple[np.ndarray, np.ndarray]],
                          ivc_yx: np.ndarray,
                          rng: np.random.Generator) -> np.ndarray:
    """Portal vein tree from the hilum and hepatic vein tree converging on the IVC at the dome.

    Both are recursively bifurcating straight tubes; the caller clips them to the liver.
    """
    (right_centre, right_axes), (left_centre, _) = lobes
    segments: list[tuple[np.ndarray, np.ndarray, float]] = []
    # Portal vein: enters inferior-medially, splits into a right branch (lateral, cranial)
    # and a left branch (medial, anterior, toward the left lobe).
    hilum = right_centre + np.array([-0.3, 0.15, 0.4]) * right_axes
    portal_trunk = 7.0 * scale
    _grow_tree(hilum, np.array([0.3, -0.1, -1.0]), 0.5 * right_axes[2], portal_trunk, 3, rng, segments)
    _grow_tree(hilum, left_centre - hilum, 0.5 * np.linalg.norm(left_centre - hilum),
               0.8 * portal_trunk, 3, rng, segments)
    # Hepatic veins: right, middle and left, fanning inferiorly-anteriorly from the IVC.
    confluence = np.array([right_centre[0] + 0.55 * right_axes[0], *ivc_yx])
    for direction in ([-0.5, -0.3, -1.0], [-0.5, -1.0, 0.0], [-0.4, -0.8, 0.8]):
        _grow_tree(confluence, np.array(direction), 0.45 * right_axes[1], 6.0 * scale, 2, rng, segments)

    vessels = np.zeros(grid.shape, dtype=bool)
    for start, end, radius in segments:
        box = grid.box(np.minimum(start, end) - radius, np.maximum(start, end) + radius)
        if any(part.stop <= part.start for part in box):
            continue
        z, y, x = grid.coordinates(box)
        axis = end - start
        # Distance from each voxel centre to the segment: project, clamp to the ends.
        t = ((z - start[0]) * axis[0] + (y - start[1]) * axis[1] + (x - start[2]) * axis[2]) / axis.dot(axis)
        t = np.clip(t, 0.0, 1.0)
        distance_sq = ((z - start[0] - t * axis[0]) ** 2 + (y - start[1] - t * axis[1]) ** 2
                       + (x - start[2] - t * axis[2]) ** 2)
        vessels[box] |= distance_sq <= radius ** 2
    return vessels


def _grow_tree(start: np.ndarray, direction: np.ndarray, length: float, radius: float,
               depth: int, rng: np.random.Generator,
               segments: list[tuple[np.ndarray, np.ndarray, float]]) -> None:
    """Append a segment and, ``depth`` times over, two children branching to either side."""
    direction = np.asarray(direction, dtype=float)
    direction = direction / np.linalg.norm(direction)
    end = start + length * direction
    segments.append((start, end, radius))
    if depth == 0:
        return
    side = rng.normal(size=3)
    side -= side.dot(direction) * direction  # a random direction perpendicular to this branch
    side /= np.linalg.norm(side)
    for sign in (1.0, -1.0):
        angle = rng.uniform(0.35, 0.75)  # 20°–43° off the parent axis
        child = np.cos(angle) * direction + sign * np.sin(angle) * side
        _grow_tree(end, child, length * rng.uniform(0.65, 0.85), radius * 0.72, depth - 1,
                   rng, segments)


def _place_lesions(grid: _Grid, liver: np.ndarray, lesion_types: tuple[str, ...],
                   n_lesion_range: tuple[int, int], radius_range: tuple[float, float],
                   table: dict[str, tuple[float, ...]], tissue: np.ndarray,
                   code: dict[str, int], lesion_labels: np.ndarray,
                   rng: np.random.Generator) -> list[Lesion]:
    """Place non-touching irregular ellipsoids fully inside the liver; draw them into the maps.

    A lesion of extent e fits at voxel c when c lies at least e + edge_margin inside the liver
    (liver distance map) and at least e + e_k + gap from every placed lesion k. ``room`` holds,
    per voxel, the largest e + edge_margin that fits there.
    """
    # The liver may be cut by the volume's first/last slices: treat outside the volume as
    # outside the liver so lesions are never truncated by the field of view.
    padded = np.pad(liver, 1)
    mask_image = sitk.GetImageFromArray(padded.astype(np.uint8))
    mask_image.SetSpacing(tuple(float(s) for s in grid.spacing[::-1]))
    depth_in_liver = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
        mask_image, insideIsPositive=True, squaredDistance=False, useImageSpacing=True))
    room = depth_in_liver[1:-1, 1:-1, 1:-1].astype(np.float32)
    room[~liver] = -1.0
    # The distance map measures to boundary voxel centres, and a lesion voxel may lie up to half
    # a voxel diagonal past the continuous surface: that much edge margin keeps lesions inside.
    # Between lesions, more than a full voxel diagonal keeps them separate 26-connected
    # components, so connected-component analysis recovers each lesion.
    diagonal = float(np.linalg.norm(grid.spacing))
    edge_margin = max(_LESION_MARGIN_MM, 0.5 * diagonal)
    gap = max(_LESION_MARGIN_MM, 1.01 * diagonal)
    z, y, x = grid.coordinates(grid.everything)

    lesions: list[Lesion] = []
    target = int(rng.integers(n_lesion_range[0], n_lesion_range[1] + 1))
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    for label in range(1, target + 1):
        lesion_type = str(rng.choice(lesion_types))
        # Semi-axis factors with geometric mean 1, so radius_mm is the volume-equivalent radius.
        axis_factors = rng.uniform(0.8, 1.2, 3)
        axis_factors /= np.prod(axis_factors) ** (1.0 / 3.0)
        dent_amplitude = 0.08
        extent_factor = axis_factors.max() * (1.0 + dent_amplitude)
        radius = rng.uniform(*radius_range)
        largest = (room.max() - edge_margin) / extent_factor
        radius = min(radius, largest)
        if radius < radius_range[0]:
            break  # the liver is full
        extent = radius * extent_factor
        # min(): a radius shrunk to the largest that fits must still find its voxel despite rounding.
        candidates = np.flatnonzero(room >= min(extent + edge_margin, room.max()))
        centre_index = np.unravel_index(candidates[rng.integers(len(candidates))], grid.shape)
        centre_mm = grid.voxel_to_mm(centre_index)

        rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        dents = _random_dents(rng, dent_amplitude, 4, 2.0)
        box = grid.box(centre_mm - extent, centre_mm + extent)
        bz, by, bx = grid.coordinates(box)
        offset = (bz - centre_mm[0], by - centre_mm[1], bx - centre_mm[2])
        # Coordinates in the lesion's own frame, normalised by its semi-axes.
        local = [sum(rotation[i, j] * offset[i] for i in range(3)) / (radius * axis_factors[j])
                 for j in range(3)]
        normalised_radius, surface = _dented_radius(*local, dents)
        inside = normalised_radius <= surface
        tissue_box = tissue[box]
        tissue_box[inside] = code[lesion_type]
        rim_key = f"{lesion_type}_rim"
        if rim_key in table:
            # Rim ~30 % of the radius, but at least 1.5 in-plane voxels so it is visible.
            rim_fraction = min(0.6, max(0.3, 1.5 * grid.spacing[1:].max() / radius))
            tissue_box[inside & (normalised_radius >= surface * (1.0 - rim_fraction))] = code[rim_key]
        lesion_labels[box][inside] = label
        lesions.append(Lesion(label=label, lesion_type=lesion_type,
                              centre_voxel=tuple(int(i) for i in centre_index),
                              radius_mm=float(radius), extent_mm=float(extent),
                              volume_ml=float(inside.sum()) * voxel_ml))
        # Keep the next lesions away from this one.
        distance = np.sqrt((z - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 + (x - centre_mm[2]) ** 2)
        np.minimum(room, distance - extent - (gap - edge_margin), out=room)

    if not lesions:
        raise ValueError(f"no lesion of radius >= {radius_range[0]} mm fits in this case's liver "
                         f"(deepest point {room.max():.1f} mm from its edge); lower "
                         f"lesion_radius_mm or use a larger shape/spacing")
    return lesions


# --------------------------------------------------------------------------------------------
# Acquisition effects
# --------------------------------------------------------------------------------------------


def _draw_shifts(seed: int, misregistration_mm: float) -> np.ndarray:
    """(6, 3) (z, y, x) content displacements in mm; zero for the reference sequence."""
    shifts = np.zeros((len(SEQUENCES), 3))
    if misregistration_mm == 0:
        return shifts
    rng = np.random.default_rng([seed, _SHIFT_STREAM])
    for channel, name in enumerate(SEQUENCES):
        if name == REFERENCE_SEQUENCE:
            continue
        # Mostly craniocaudal (breath-hold position), at least a quarter of the maximum long.
        while True:
            shift = rng.uniform(-1.0, 1.0, 3) * np.array([1.0, 0.5, 0.5]) * misregistration_mm
            if np.linalg.norm(shift) >= 0.25 * misregistration_mm:
                break
        shifts[channel] = shift
    return shifts


def _blur_and_shift(image: np.ndarray, spacing: tuple[float, float, float], sigma_voxels: float,
                    shift_mm: np.ndarray) -> np.ndarray:
    """(D, H, W) image blurred by a Gaussian of ``sigma_voxels`` and moved by ``shift_mm`` (z, y, x)."""
    if sigma_voxels == 0 and not np.any(shift_mm):
        return image
    sitk_image = sitk.GetImageFromArray(image)
    sitk_image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    if sigma_voxels > 0:
        # DiscreteGaussian: a sampled, normalised, non-negative kernel, so values stay within
        # the range of the input (the recursive Gaussian rings for sub-voxel sigmas).
        variances = [float((sigma_voxels * s) ** 2) for s in spacing[::-1]]
        sitk_image = sitk.DiscreteGaussian(sitk_image, variances, 32, 0.01, True)
    if np.any(shift_mm):
        # Resample reads output(p) = input(p + t); content moves by -t.
        move = sitk.TranslationTransform(3, tuple(float(-s) for s in shift_mm[::-1]))
        sitk_image = sitk.Resample(sitk_image, sitk_image, move, sitk.sitkLinear, 0.0,
                                   sitk.sitkFloat32, True)  # nearest-neighbour beyond the edge
    return sitk.GetArrayFromImage(sitk_image)


def _bias_field(grid: _Grid, strength: float, rng: np.random.Generator) -> np.ndarray:
    """(D, H, W) float32 field exp(strength * p), p a random quadratic scaled to max |p| = 1."""
    z, y, x = (axis / max(abs(axis[0]), 1e-6) for axis in grid.axes_mm)  # each in [-1, 1]
    z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
    c = rng.normal(size=9).astype(np.float32)
    in_plane = c[0] * x + c[1] * y + c[2] * x * x + c[3] * y * y + c[4] * x * y  # (1, H, W)
    along_z = c[5] * z + c[6] * z * z  # (D, 1, 1)
    polynomial = in_plane + along_z + z * (c[7] * x + c[8] * y)
    polynomial *= np.float32(strength) / max(float(np.abs(polynomial).max()), 1e-6)
    return np.exp(polynomial, out=polynomial)


def _add_rician_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> None:
    """Replace a (D, H, W) magnitude image by |image + complex Gaussian noise|, in place.

    Magnitude reconstruction of complex data with Gaussian noise in both channels gives
    Rician noise: Gaussian at high SNR, a positive floor in air.
    """
    real = rng.standard_normal(image.shape, dtype=np.float32)
    real *= np.float32(sigma)
    real += image
    imaginary = rng.standard_normal(image.shape, dtype=np.float32)
    imaginary *= np.float32(sigma)
    np.sqrt(real * real + imaginary * imaginary, out=image)
