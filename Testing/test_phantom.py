"""Tests of the multi-sequence liver DCE-MRI phantom (LRPSegmentationLib.phantom)."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LRPSegmentationLib.phantom import (
    BACKGROUND_TISSUES,
    CONTRAST_TABLE,
    LESION_TYPES,
    REFERENCE_SEQUENCE,
    SEQUENCES,
    PhantomCase,
    contrast_only_in,
    default_spacing,
    generate_case,
    generate_dataset,
    with_unrelated_sequences,
)

CLEAN = dict(noise=0.0, bias_field=0.0, misregistration_mm=0.0, partial_volume_sigma=0.0)
"""Options giving the noise-free, bias-free, unshifted, unblurred rendering of the table."""

# A grid fine enough that 10+ mm lesions keep an interior after erosion, still fast.
FINE_SHAPE = (48, 144, 144)


def eroded(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """Voxels of ``mask`` whose 6-neighbours are all in ``mask``, ``steps`` times over."""
    for _ in range(steps):
        padded = np.pad(mask, 1)
        mask = padded[1:-1, 1:-1, 1:-1].copy()
        for axis in range(3):
            for step in (-1, 1):
                mask &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return mask


def dilated_26(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by one voxel into all 26 neighbours."""
    padded = np.pad(mask, 1)
    depth, height, width = mask.shape
    grown = np.zeros_like(mask)
    for dz in range(3):
        for dy in range(3):
            for dx in range(3):
                grown |= padded[dz:dz + depth, dy:dy + height, dx:dx + width]
    return grown


@pytest.fixture(scope="module")
def default_case() -> PhantomCase:
    return generate_case(11)


def test_same_seed_gives_identical_case_and_other_seed_differs(default_case):
    again = generate_case(11)
    other = generate_case(12)
    np.testing.assert_array_equal(again.images, default_case.images)
    np.testing.assert_array_equal(again.tumour, default_case.tumour)
    np.testing.assert_array_equal(again.shifts_mm, default_case.shifts_mm)
    assert [vars(lesion) for lesion in again.lesions] == [vars(lesion) for lesion in default_case.lesions]
    assert not np.array_equal(other.liver, default_case.liver)
    assert not np.array_equal(other.images, default_case.images)


def test_shapes_dtypes_and_value_range(default_case):
    shape = (32, 96, 96)
    assert default_case.images.shape == (len(SEQUENCES),) + shape
    assert default_case.images.dtype == np.float32
    assert np.all(np.isfinite(default_case.images)) and default_case.images.min() > 0
    for mask in (default_case.tumour, default_case.liver, default_case.body, default_case.vessels):
        assert mask.shape == shape and mask.dtype == bool
    assert default_case.lesion_labels.shape == shape
    assert default_case.sequences == SEQUENCES
    assert default_case.spacing == default_spacing(shape)
    assert default_case.anatomy_scale == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_anatomy_is_nested_and_lesions_are_separate_and_inside_liver(seed):
    case = generate_case(seed, n_lesions=(2, 4))
    assert case.tumour.any() and case.vessels.any()
    assert np.all(case.liver <= case.body)
    assert np.all(case.tumour <= case.liver)
    assert np.all(case.vessels <= case.liver) and not np.any(case.vessels & case.tumour)
    # The liver lies on the patient's right, which is the low-x half in LPS.
    liver_x = np.nonzero(case.liver)[2]
    assert liver_x.mean() < (case.liver.shape[2] - 1) / 2
    labels = case.lesion_labels
    assert sorted(np.unique(labels[labels > 0])) == [lesion.label for lesion in case.lesions]
    for lesion in case.lesions:
        this = labels == lesion.label
        assert lesion.lesion_type in LESION_TYPES
        assert this[lesion.centre_voxel]
        # Never cut by the field of view, never touching another lesion (26-connectivity).
        assert not (this[[0, -1]].any() or this[:, [0, -1]].any() or this[:, :, [0, -1]].any())
        neighbourhood = dilated_26(this)
        assert np.all((labels[neighbourhood] == 0) | (labels[neighbourhood] == lesion.label))
        voxel_ml = np.prod(case.spacing) / 1000
        assert lesion.volume_ml == pytest.approx(this.sum() * voxel_ml)
        # The lesion fits within its stated extent around its centre.
        offsets_mm = (np.argwhere(this) - lesion.centre_voxel) * np.asarray(case.spacing)
        assert np.linalg.norm(offsets_mm, axis=1).max() <= lesion.extent_mm + 1e-6


def test_requested_lesion_types_and_counts_are_honoured():
    case = generate_case(5, lesion_types=["cyst"], n_lesions=2, lesion_radius_mm=(8.0, 10.0))
    assert [lesion.lesion_type for lesion in case.lesions] == ["cyst", "cyst"]
    assert all(8.0 <= lesion.radius_mm <= 10.0 for lesion in case.lesions)


@pytest.mark.parametrize("lesion_type", LESION_TYPES)
def test_contrast_table_is_honoured(lesion_type):
    case = generate_case(21, shape=FINE_SHAPE, lesion_types=[lesion_type], n_lesions=1,
                         lesion_radius_mm=(12.0, 16.0), **CLEAN)
    core = case.tissue == case.tissue_names.index(lesion_type)
    assert core.sum() > 50
    parenchyma = case.parenchyma
    table_liver = np.asarray(CONTRAST_TABLE["liver"])
    measured_liver = case.images[:, parenchyma].mean(axis=1, dtype=np.float64)
    np.testing.assert_allclose(measured_liver, table_liver, rtol=1e-5)
    measured_ratio = case.images[:, core].mean(axis=1, dtype=np.float64) / measured_liver
    expected_ratio = np.asarray(CONTRAST_TABLE[lesion_type]) / table_liver
    np.testing.assert_allclose(measured_ratio, expected_ratio, rtol=1e-5)
    rim_key = f"{lesion_type}_rim"
    if rim_key in CONTRAST_TABLE:
        rim = case.tissue == case.tissue_names.index(rim_key)
        assert rim.any() and np.all(case.tumour[rim])
        np.testing.assert_allclose(case.images[:, rim].mean(axis=1, dtype=np.float64) / measured_liver,
                                   np.asarray(CONTRAST_TABLE[rim_key]) / table_liver, rtol=1e-5)


def test_background_tissues_follow_the_table(default_case):
    case = generate_case(default_case.seed, **CLEAN)
    for name in BACKGROUND_TISSUES:
        region = case.tissue == case.tissue_names.index(name)
        assert region.any(), name
        np.testing.assert_allclose(case.images[:, region].mean(axis=1, dtype=np.float64), CONTRAST_TABLE[name], rtol=1e-5)


def test_contrast_only_in_keeps_listed_sequences_and_copies_liver_elsewhere():
    keep = ["T2", "T1-20s"]
    table = contrast_only_in(keep)
    assert set(table) == set(CONTRAST_TABLE)
    for name, values in table.items():
        for index, sequence in enumerate(SEQUENCES):
            if name in BACKGROUND_TISSUES or sequence in keep:
                assert values[index] == CONTRAST_TABLE[name][index]
            else:
                assert values[index] == CONTRAST_TABLE["liver"][index]
    # The default table is left untouched.
    assert CONTRAST_TABLE["HCC"][SEQUENCES.index("T1-15min")] != CONTRAST_TABLE["liver"][-1]


def test_unrelated_sequences_come_from_the_donor_and_the_labels_stay():
    keep = ["T2", "T1-20s"]
    case, donor = generate_case(41), generate_case(42)
    before = case.images.copy()
    control = with_unrelated_sequences(case, keep, donor)
    np.testing.assert_array_equal(case.images, before)  # the input is not modified
    for index, name in enumerate(SEQUENCES):
        source = case if name in keep else donor
        np.testing.assert_array_equal(control.images[index], source.images[index])
        np.testing.assert_array_equal(control.shifts_mm[index], source.shifts_mm[index])
    for labels in ("tumour", "liver", "body", "vessels", "lesion_labels", "tissue"):
        np.testing.assert_array_equal(getattr(control, labels), getattr(case, labels))
    # The donor's anatomy differs, so a replaced sequence says nothing about this case's tumour.
    assert (case.tumour != donor.tumour).any()


@pytest.mark.parametrize("keep, donor_seed, message", [
    ("T2", 42, "single string"), (["T3"], 42, "unknown sequence"), (["T2"], 41, "another seed")])
def test_unrelated_sequences_reject_bad_input(keep, donor_seed, message):
    with pytest.raises(ValueError, match=message):
        with_unrelated_sequences(generate_case(41), keep, generate_case(donor_seed))
    with pytest.raises(ValueError, match="same grid"):
        with_unrelated_sequences(generate_case(41), ["T2"], generate_case(42, shape=(16, 64, 64)))


def test_lesions_visible_only_in_t2_under_contrast_only_in_t2():
    noise = 0.04
    case = generate_case(31, shape=FINE_SHAPE, contrast=contrast_only_in(["T2"]), n_lesions=3,
                         lesion_radius_mm=(10.0, 15.0), noise=noise, bias_field=0.0,
                         misregistration_mm=0.0, partial_volume_sigma=0.6)
    parenchyma = eroded(case.parenchyma, 2)
    t2 = SEQUENCES.index("T2")
    for lesion in case.lesions:
        core = eroded(case.lesion_labels == lesion.label)
        assert core.sum() > 20
        for index, sequence in enumerate(SEQUENCES):
            lesion_mean = case.images[index, core].mean(dtype=np.float64)
            liver_mean = case.images[index, parenchyma].mean(dtype=np.float64)
            sigma = noise * CONTRAST_TABLE["liver"][index]
            standard_error = sigma * np.sqrt(1 / core.sum() + 1 / parenchyma.sum())
            difference = abs(lesion_mean - liver_mean) / standard_error
            if index == t2:
                assert difference > 10, (lesion.lesion_type, sequence, difference)
            else:
                assert difference < 5, (lesion.lesion_type, sequence, difference)


def test_anatomy_does_not_depend_on_contrast_noise_or_shifts(default_case):
    variant = generate_case(default_case.seed, contrast=contrast_only_in(["T1-60s"]), noise=0.1,
                            bias_field=0.3, misregistration_mm=2.0)
    for name in ("tumour", "liver", "body", "vessels", "lesion_labels", "tissue"):
        np.testing.assert_array_equal(getattr(variant, name), getattr(default_case, name))


def test_misregistration_moves_other_sequences_and_leaves_reference_on_label():
    # Only the liver and its lesions show up (everything else at the air floor), and the
    # field of view holds the whole liver, so each channel's intensity centroid tracks its shift.
    liver_only = {name: CONTRAST_TABLE["liver"] for name in CONTRAST_TABLE}
    for name in ("air", "fat", "muscle", "vessel", "artery"):
        liver_only[name] = CONTRAST_TABLE["air"]
    floor = CONTRAST_TABLE["air"][0]
    options = dict(shape=(40, 96, 96), spacing=(5.0, 4.0, 4.0), contrast=liver_only,
                   noise=0.0, bias_field=0.0, partial_volume_sigma=0.6)
    still = generate_case(41, misregistration_mm=0.0, **options)
    moved = generate_case(41, misregistration_mm=2.0, **options)
    assert not still.liver[[0, -1]].any()
    reference = SEQUENCES.index(REFERENCE_SEQUENCE)
    np.testing.assert_array_equal(moved.images[reference], still.images[reference])
    np.testing.assert_array_equal(moved.tumour, still.tumour)
    assert np.all(moved.shifts_mm[reference] == 0) and np.all(still.shifts_mm == 0)

    def centroid_mm(image: np.ndarray) -> np.ndarray:
        weight = image - floor
        indices = np.indices(image.shape).reshape(3, -1)
        return (indices @ weight.ravel() / weight.sum()) * np.asarray(moved.spacing)

    for index, sequence in enumerate(SEQUENCES):
        if index == reference:
            continue
        shift = moved.shifts_mm[index]
        assert 0.5 <= np.linalg.norm(shift) and abs(shift[0]) <= 2.0 and np.all(abs(shift[1:]) <= 1.0)
        assert not np.array_equal(moved.images[index], still.images[index]), sequence
        measured = centroid_mm(moved.images[index]) - centroid_mm(still.images[index])
        np.testing.assert_allclose(measured, shift, atol=0.05, err_msg=sequence)


def test_bias_field_is_smooth_bounded_and_differs_per_sequence():
    strength = 0.2
    flat = generate_case(51, **CLEAN)
    biased = generate_case(51, **{**CLEAN, "bias_field": strength})
    ratio = biased.images / flat.images
    assert ratio.min() >= np.exp(-strength) - 1e-4 and ratio.max() <= np.exp(strength) + 1e-4
    for channel in ratio:
        assert channel.std() > 0.01
        # Smooth: neighbouring voxels differ far less than the field's overall range.
        assert np.abs(np.diff(channel, axis=2)).max() < 0.1 * (channel.max() - channel.min())
    assert not np.allclose(ratio[0], ratio[1])


def test_rician_noise_has_requested_level_and_positive_floor():
    noise = 0.05
    clean = generate_case(61, **CLEAN)
    noisy = generate_case(61, **{**CLEAN, "noise": noise})
    interior = eroded(clean.parenchyma, 1)
    air = ~dilated_26(clean.body)
    for index in range(len(SEQUENCES)):
        sigma = noise * CONTRAST_TABLE["liver"][index]
        residual = noisy.images[index, interior] - clean.images[index, interior]
        assert residual.std() == pytest.approx(sigma, rel=0.1)
        assert abs(residual.mean()) < 0.1 * sigma
        # In air the magnitude of noise has a mean well above the noise-free floor (Rician bias).
        assert noisy.images[index, air].mean() > CONTRAST_TABLE["air"][index] + 0.5 * sigma


def test_partial_volume_blur_stays_within_tissue_range_and_softens_edges():
    sharp = generate_case(71, **CLEAN)
    soft = generate_case(71, **{**CLEAN, "partial_volume_sigma": 0.8})
    for index in range(len(SEQUENCES)):
        values = [CONTRAST_TABLE[name][index] for name in sharp.tissue_names]
        assert soft.images[index].min() >= min(values) - 1e-3
        assert soft.images[index].max() <= max(values) + 1e-3
        assert len(np.unique(sharp.images[index])) <= len(values)
        assert len(np.unique(soft.images[index])) > 10 * len(values)


def test_to_sitk_round_trips_arrays_and_geometry(default_case):
    images, label = default_case.to_sitk()
    assert len(images) == len(SEQUENCES)
    for image, array in zip(images, default_case.images):
        assert image.GetSpacing() == pytest.approx(default_case.spacing[::-1])
        assert image.GetDirection() == pytest.approx(np.eye(3).ravel())
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)
    assert label.GetPixelID() == sitk.sitkUInt8
    assert label.GetSpacing() == images[0].GetSpacing() and label.GetOrigin() == images[0].GetOrigin()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label).astype(bool), default_case.tumour)
    # The volume is centred on the physical origin.
    centre_index = [(n - 1) / 2 for n in label.GetSize()]
    assert label.TransformContinuousIndexToPhysicalPoint(centre_index) == pytest.approx((0, 0, 0), abs=1e-9)


def test_small_field_of_view_scales_the_anatomy_to_fit():
    case = generate_case(81, shape=(32, 96, 96), spacing=(3.0, 1.6, 1.6), lesion_radius_mm=(4.0, 8.0))
    assert case.anatomy_scale < 0.5
    body = case.body
    assert not (body[:, [0, -1]].any() or body[:, :, [0, -1]].any())
    assert case.tumour.any()


def test_generate_dataset_uses_consecutive_seeds():
    cases = generate_dataset(2, first_seed=7, noise=0.0)
    assert [case.seed for case in cases] == [7, 8]
    np.testing.assert_array_equal(cases[1].images, generate_case(8, noise=0.0).images)


@pytest.mark.parametrize("options, message", [
    (dict(seed=-1), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(shape=(32, 96)), "shape"),
    (dict(shape=(4, 96, 96)), "shape"),
    (dict(spacing=(3.0, 0.0, 1.6)), "spacing"),
    (dict(noise=-0.1), "noise"),
    (dict(noise="loud"), "noise"),
    (dict(bias_field=float("nan")), "bias_field"),
    (dict(misregistration_mm=-1.0), "misregistration_mm"),
    (dict(partial_volume_sigma=-1.0), "partial_volume_sigma"),
    (dict(lesion_types=["angioma"]), "lesion_types"),
    (dict(lesion_types="HCC"), "lesion_types"),
    (dict(n_lesions=0), "n_lesions"),
    (dict(n_lesions=(3, 1)), "n_lesions"),
    (dict(lesion_radius_mm=(10.0, 5.0)), "lesion_radius_mm"),
    (dict(lesion_radius_mm=(80.0, 90.0)), "lesion_radius_mm"),
    (dict(contrast={"liver": CONTRAST_TABLE["liver"]}), "background tissue"),
    (dict(contrast={**CONTRAST_TABLE, "HCC": (1.0, 2.0)}), "'HCC'"),
    (dict(contrast={**CONTRAST_TABLE, "cyst": (1.0, 2.0, 3.0, 4.0, 5.0, -6.0)}), "'cyst'"),
])
def test_bad_parameters_raise_clear_value_errors(options, message):
    arguments = {"seed": 0, **options}
    with pytest.raises(ValueError, match=message):
        generate_case(**arguments)


@pytest.mark.parametrize("sequences, message", [
    ("T2", "single string"),
    (["T3"], "unknown sequence"),
    (["T2", "T2"], "repeated"),
])
def test_contrast_only_in_rejects_bad_sequence_lists(sequences, message):
    with pytest.raises(ValueError, match=message):
        contrast_only_in(sequences)


def test_generate_dataset_rejects_bad_count():
    with pytest.raises(ValueError, match="n_cases"):
        generate_dataset(0)
