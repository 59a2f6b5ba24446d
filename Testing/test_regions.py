"""Region A as arrays (LRPSegmentationLib.regions): modes, TP/FN/FP, lesions, the lesion at a
point, and why a region is empty. numpy + SimpleITK only: no torch, no Slicer."""
from __future__ import annotations

import numpy as np
import pytest

from LRPSegmentationLib import regions, vocabulary
from LRPSegmentationLib.regions import MissingRegionInput

SHAPE = (6, 8, 10)


def lesion_labels() -> np.ndarray:
    """Three predicted lesions of 27, 8 and 2 voxels; the last voxel of the 8-voxel one touches it
    only by a corner (26-connectivity joins it, 6-connectivity would not)."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[0:3, 0:3, 0:3] = 1  # 27 voxels
    labels[4:6, 5:7, 5:6] = 1  # 4 voxels ...
    labels[4:6, 5:7, 6:7] = 1  # ... + 4 = 8 voxels in a 2x2x2 block
    labels[3, 4, 4] = 1  # + 1 voxel touching (4, 5, 5) by a corner: 9 voxels
    labels[0, 7, 8:10] = 1  # 2 voxels
    return labels


def test_the_modes_are_the_vocabulary():
    assert regions.REGION_MODES is vocabulary.REGION_MODES
    assert set(vocabulary.ERROR_MODES) <= set(vocabulary.REGION_MODES)
    assert set(vocabulary.ERROR_MODES) <= set(vocabulary.REGION_SHORTCUTS)
    with pytest.raises(ValueError, match="unknown region mode 'everything'"):
        regions.select_regions("everything", lesion_labels(), 1)


def test_tp_fn_fp_partition_the_union_of_prediction_and_truth():
    rng = np.random.default_rng(0)
    labels, truth = rng.integers(0, 3, SHAPE), rng.integers(0, 3, SHAPE)
    predicted, true = labels == 2, truth == 2
    masks = {mode: regions.error_mask(mode, predicted, true) for mode in vocabulary.ERROR_MODES}
    np.testing.assert_array_equal(masks["tp"] | masks["fn"] | masks["fp"], predicted | true)
    assert not (masks["tp"] & masks["fn"]).any() and not (masks["tp"] & masks["fp"]).any()
    assert not (masks["fn"] & masks["fp"]).any()
    np.testing.assert_array_equal(masks["tp"], predicted & true)
    for mode in vocabulary.ERROR_MODES:
        np.testing.assert_array_equal(regions.select_regions(mode, labels, 2, truth)[mode], masks[mode])
        np.testing.assert_array_equal(regions.shortcut_region(mode, predicted, true), masks[mode])
    with pytest.raises(ValueError, match="shape"):
        regions.error_mask("tp", predicted, true[:-1])
    with pytest.raises(MissingRegionInput, match="needs a reference label"):
        regions.select_regions("tp", labels, 2)


def test_lesions_are_26_connected_components_largest_first():
    labels = lesion_labels()
    found = regions.select_regions("lesions", labels, 1)
    assert list(found) == ["lesion-1", "lesion-2", "lesion-3"]
    assert [int(mask.sum()) for mask in found.values()] == [27, 9, 2]
    assert found["lesion-2"][3, 4, 4]  # joined by a corner
    np.testing.assert_array_equal(sum(mask.astype(int) for mask in found.values()), labels)
    components = regions.connected_components(labels == 1, min_voxels=3)
    assert [int(mask.sum()) for mask in components] == [27, 9]
    assert regions.connected_components(np.zeros(SHAPE, bool)) == []
    assert regions.select_regions("lesions", np.zeros(SHAPE, np.uint8), 1) == {}


def test_the_lesion_at_a_point_is_its_component():
    predicted = lesion_labels() == 1
    components = regions.connected_components(predicted)
    for index, expected in (((3, 4, 4), components[1]), ((1, 1, 1), components[0]), ((0, 7, 9), components[2])):
        np.testing.assert_array_equal(regions.lesion_at(predicted, index), expected)
        np.testing.assert_array_equal(regions.shortcut_region("lesion", predicted, index=index), expected)
    assert not regions.lesion_at(predicted, (5, 0, 0)).any()  # a background voxel
    with pytest.raises(MissingRegionInput, match="needs a point"):
        regions.shortcut_region("lesion", predicted)


def test_predicted_mask_and_shortcut_regions():
    labels = lesion_labels()
    np.testing.assert_array_equal(regions.select_regions("predicted", labels, 1)["predicted"], labels == 1)
    assert regions.select_regions("predicted", labels, 2) == {}
    copy = regions.shortcut_region("predicted", labels == 1)
    copy[:] = False
    assert (labels == 1).any()  # a copy
    mask = np.zeros(SHAPE, np.uint8)
    mask[2, 2, 2] = 7
    assert regions.select_regions("mask", labels, 1, mask=mask)["mask"].sum() == 1
    assert regions.select_regions("mask", labels, 1, mask=np.zeros(SHAPE)) == {}
    with pytest.raises(ValueError, match=r"region mask has shape \(6, 8\)"):
        regions.select_regions("mask", labels, 1, mask=np.ones(SHAPE[:2]))
    with pytest.raises(MissingRegionInput, match="needs a mask"):
        regions.select_regions("mask", labels, 1)
    with pytest.raises(MissingRegionInput, match="'FN' region needs a ground-truth segment"):
        regions.shortcut_region("fn", labels == 1)
    with pytest.raises(ValueError, match="unknown region shortcut 'lesions'"):
        regions.shortcut_region("lesions", labels == 1)


def _labels(*boxes) -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    for box in boxes:
        labels[box] = 1
    return labels


A, B = np.s_[0:2, 0:2, 0:2], np.s_[3:5, 3:5, 3:5]
NOTHING = _labels()


@pytest.mark.parametrize("mode, labels, truth, why", [
    ("predicted", NOTHING, None, "no voxel is predicted as tumour"),
    ("lesions", NOTHING, None, "no voxel is predicted as tumour"),
    ("mask", _labels(A), None, "the region mask has no voxel on the reference grid"),
    ("tp", _labels(A), NOTHING, "no true positives: the reference label has no tumour voxel"),
    ("tp", NOTHING, _labels(A), "no true positives: no voxel is predicted as tumour"),
    ("tp", _labels(A), _labels(B), "no true positives: the predicted tumour does not overlap the reference label"),
    ("fn", _labels(A), NOTHING, "no false negatives: the reference label has no tumour voxel"),
    ("fn", _labels(A, B), _labels(A), "no false negatives: the prediction covers the reference label"),
    ("fp", NOTHING, _labels(A), "no false positives: no voxel is predicted as tumour"),
    ("fp", _labels(A), _labels(A, B), "no false positives: every predicted tumour voxel lies inside the reference"),
])
def test_each_empty_region_says_why(mode, labels, truth, why):
    mask = np.zeros(SHAPE, bool)
    assert regions.select_regions(mode, labels, 1, truth, mask) == {}
    message = regions.empty_region_message(mode, labels, 1, truth, "tumour")
    assert message.startswith(f"region '{mode}' is empty: {why}")
    chosen, empty = regions.choose_regions([mode], labels, 1, truth, mask, "tumour")
    assert chosen == {} and empty == [message]


def test_choose_regions_merges_modes_and_names_missing_inputs_first():
    labels, truth = _labels(A, B), _labels(A)
    chosen, empty = regions.choose_regions(["predicted", "tp", "fn", "lesions"], labels, 1, truth, None, "tumour")
    assert list(chosen) == ["predicted", "tp", "lesion-1", "lesion-2"]
    assert empty == [regions.empty_region_message("fn", labels, 1, truth, "tumour")]
    hints = {"reference_label": "pass --reference-label FILE", "mask": "pass --mask FILE"}
    with pytest.raises(MissingRegionInput, match="region mode 'fp' needs a reference label: pass --reference-label"):
        regions.choose_regions(["predicted", "fp"], labels, 1, None, None, "tumour", hints)
    with pytest.raises(MissingRegionInput, match=r"region mode 'mask' needs a mask$"):
        regions.choose_regions(["mask"], labels, 1, truth, None, "tumour")
