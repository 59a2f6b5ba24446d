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

The geometry (where each tissue and lesion is) is drawn by :mod:`.phantom_anatomy`; this module
owns the sequences and their contrast table, the case and its variants, argument checks, and the
rendering of the tissue map into images with the acquisition effects.

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

from .phantom_anatomy import (Grid, Lesion, draw_body, draw_great_vessels, draw_hepatic_vessels,
                              draw_liver, place_lesions)

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
    grid = Grid(shape, spacing)
    scale = min(1.0, *(fov / standard for fov, standard
                       in zip(grid.field_of_view_mm, STANDARD_FIELD_OF_VIEW_MM)))

    tissue_names = BACKGROUND_TISSUES + tuple(name for name in table if name not in BACKGROUND_TISSUES)
    code = {name: index for index, name in enumerate(tissue_names)}
    tissue = np.zeros(shape, dtype=np.int16)  # air everywhere to start

    body, inner_body, liver_allowed = draw_body(grid, scale, anatomy_rng)
    tissue[body] = code["fat"]
    tissue[inner_body] = code["muscle"]
    ivc, aorta, ivc_yx = draw_great_vessels(grid, scale, anatomy_rng)
    liver, lobes = draw_liver(grid, scale, anatomy_rng)
    liver &= liver_allowed & ~ivc & ~aorta
    tissue[liver] = code["liver"]
    vessels = draw_hepatic_vessels(grid, scale, lobes, ivc_yx, anatomy_rng) & liver
    tissue[vessels] = code["vessel"]
    tissue[ivc] = code["vessel"]
    tissue[aorta] = code["artery"]

    lesion_labels = np.zeros(shape, dtype=np.int16)
    lesions = place_lesions(grid, liver, lesion_types, n_lesion_range, radius_range, table,
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


def _bias_field(grid: Grid, strength: float, rng: np.random.Generator) -> np.ndarray:
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
