"""Tests of LRPSegmentationLib.training: loss, reproducibility, Dice, preprocessing, shipped model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from LRPSegmentationLib import phantom, training
from LRPSegmentationLib.normalization import foreground_mask
from LRPSegmentationLib.models import load_package

MODELS = Path(__file__).resolve().parents[1] / "LRPSegmentation" / "Resources" / "Models"
DEMO_PACKAGE = MODELS / "demo_unet3d.lrpmodel"
VARIANT_PACKAGE = MODELS / "variant_T2_T1-20s.lrpmodel"

TINY = dict(n_train_cases=2, n_val_cases=0, base_channels=4, depth=2, shape=(16, 32, 32),
            patch=None, batch_size=1, learning_rate=1e-2, progress=False)


def test_dice_on_known_masks():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    assert training.dice(a, b) == 1.0  # both empty: agreement
    a[0, 0, :2] = True  # 2 voxels
    assert training.dice(a, b) == 0.0
    b[0, 0, 1:4] = True  # 3 voxels, 1 shared
    assert training.dice(a, b) == pytest.approx(2 * 1 / 5)
    assert training.dice(torch.from_numpy(a), torch.from_numpy(a)) == 1.0
    with pytest.raises(ValueError):
        training.dice(a, b[0])


def test_preprocess_shape_dtype_and_per_sequence_zscore():
    case = phantom.generate_case(3, shape=(16, 32, 32))
    x = training.preprocess(case)
    assert x.shape == (1, 6, 16, 32, 32) and x.dtype == torch.float32
    for channel in range(6):
        mask = foreground_mask(case.images[channel])  # the Otsu mask of DEMO_NORMALIZATION
        values = x[0, channel].numpy()[mask]
        assert values.mean() == pytest.approx(0.0, abs=1e-4)
        assert values.std() == pytest.approx(1.0, abs=1e-3)
        # Air (outside the body) is darker than the body in every sequence after normalization.
        inside = x[0, channel].numpy()[case.body]
        outside = x[0, channel].numpy()[~case.body]
        assert outside.mean() < inside.mean() - 1.0
        assert np.isfinite(x[0, channel].numpy()).all()
    assert training.DEMO_NORMALIZATION == {"type": "zscore", "mask": "foreground"}


def test_training_decreases_loss_and_is_reproducible():
    model_a, history_a = training.train_demo_model(steps=16, seed=7, **TINY)
    model_b, history_b = training.train_demo_model(steps=16, seed=7, **TINY)
    losses = history_a.loss
    assert len(losses) == 16 and all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    assert losses == history_b.loss
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not model_a.training


def test_trained_model_becomes_a_model_package(tmp_path):
    model, history = training.train_demo_model(steps=2, seed=1, **{**TINY, "n_val_cases": 1})
    path = training.package_model(model, history, name="tiny").save(tmp_path / "tiny.lrpmodel")
    package = load_package(path)
    assert package.architecture_kwargs == {"in_channels": 6, "out_channels": 2, "base_channels": 4, "depth": 2,
                                           "head_bias": False, "activation": "leaky_relu"}
    assert package.class_names == ["background", "tumour"]
    assert package.sequences == list(phantom.SEQUENCES)
    assert package.normalization[0]["type"] == "zscore"
    assert package.training_info["training"]["train_seeds"] == history.train_seeds
    assert package.training_info["held_out_seeds"] == history.val_seeds
    x = torch.randn(1, 6, 16, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), package.build()(x))


def test_shipped_demo_model_segments_fresh_cases():
    package = load_package(DEMO_PACKAGE)
    info = package.training_info
    assert sum(f.stat().st_size for f in DEMO_PACKAGE.iterdir()) < 10e6
    assert package.architecture_kwargs["head_bias"] is False  # decisions come from input evidence
    shape = tuple(info["phantom_shape"])
    used = set(info["training"]["train_seeds"]) | set(info["held_out_seeds"])
    seeds = [training.TEST_FIRST_SEED + k for k in range(3)]
    assert not used & set(seeds)
    scores = training.evaluate(package.build(), [phantom.generate_case(s, shape=shape) for s in seeds])
    # Measured on the shipped model (2-core CPU): 0.912, 0.970, 0.946; held-out seeds 5000-5007:
    # mean 0.949 (model.json training_info). The margin allows for another torch build.
    assert np.mean(scores) > 0.88 and min(scores) > 0.8, scores


def test_information_control_cases_and_package_record(tmp_path):
    keep = ["T2", "T1-20s"]
    case = training.phantom_training_case(1000, (16, 32, 32), information_only_in=keep)
    options = dict(shape=(16, 32, 32), contrast=phantom.contrast_only_in(keep))
    own = phantom.generate_case(1000, **options)
    donor = phantom.generate_case(1000 + training.DONOR_SEED_OFFSET, **options)
    for index, name in enumerate(phantom.SEQUENCES):
        np.testing.assert_array_equal(case.images[index], (own if name in keep else donor).images[index])
    np.testing.assert_array_equal(case.tumour, own.tumour)

    model, history = training.train_demo_model(steps=2, seed=1, information_only_in=keep, **TINY)
    package = load_package(training.package_model(model, history, name="control").save(tmp_path / "c.lrpmodel"))
    info = package.training_info
    assert info["information_only_in"] == keep and info["contrast_sequences"] == keep
    assert "with_unrelated_sequences" in info["phantom_contrast"]
    assert info["training"]["information_only_in"] == keep


def test_randomized_channels_are_redrawn_and_the_others_kept():
    data = training.prepare_cases([1000, 1001], (16, 32, 32))
    patch = data[0][0][:, :, :16, :16]
    before = patch.clone()
    draws = [training._randomize_channels(patch, [1, 3], data, torch.Generator().manual_seed(k)) for k in range(12)]
    assert torch.equal(patch, before)  # the training data is not modified
    again = training._randomize_channels(patch, [1, 3], data, torch.Generator().manual_seed(5))
    assert torch.equal(again, draws[5])  # reproducible
    kept = [0, 2, 4, 5]
    assert all(torch.equal(d[kept], patch[kept]) for d in draws)
    changed = [not torch.equal(d[c], patch[c]) for d in draws for c in (1, 3)]
    assert 8 <= sum(changed) < 24  # redrawn in about 3/4 of the draws, kept in the rest
    x, y = training._sample_batch(data, 4, (16, 16, 16), torch.Generator().manual_seed(3), True, [1, 3])
    assert x.shape == (4, 6, 16, 16, 16) and y.shape == (4, 16, 16, 16)
