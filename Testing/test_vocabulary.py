"""The shared names (LRPSegmentationLib.vocabulary) agree with the code that gives them meaning."""
from __future__ import annotations

import pytest

from LRPSegmentationLib import vocabulary


def test_composite_names_are_the_engines():
    torch = pytest.importorskip("torch")  # noqa: F841 - the engine needs it
    from LRPSegmentationLib import engine

    assert engine.COMPOSITES is vocabulary.COMPOSITES
    assert engine.DEFAULT_COMPOSITE == vocabulary.DEFAULT_COMPOSITE
    blind = {name for name in engine.COMPOSITES if not engine.make_composite(name).input_aware}
    assert blind == set(vocabulary.INPUT_BLIND_COMPOSITES)


def test_the_composite_menu_offers_every_composite_default_first_input_blind_last():
    menu = vocabulary.COMPOSITE_MENU
    assert sorted(menu) == sorted(vocabulary.COMPOSITES) and len(menu) == len(set(menu))
    assert menu[0] == vocabulary.DEFAULT_COMPOSITE
    assert set(menu[-len(vocabulary.INPUT_BLIND_COMPOSITES):]) == set(vocabulary.INPUT_BLIND_COMPOSITES)


def test_the_demo_model_is_bundled_where_the_module_looks():
    assert vocabulary.DEMO_MODEL.is_dir() and (vocabulary.DEMO_MODEL / "model.json").is_file()
    assert vocabulary.DEMO_MODEL.parts[-3:] == ("Resources", *vocabulary.DEMO_MODEL_RESOURCE.split("/"))


def test_default_class_colors_are_the_packages_and_repeat_past_the_palette():
    palette = vocabulary.DEFAULT_CLASS_COLORS
    assert vocabulary.default_class_colors(2) == list(palette[:2])
    many = vocabulary.default_class_colors(len(palette) + 3)
    assert many[:len(palette)] == list(palette) and many[len(palette):] == list(palette[1:4])
    assert all(len(c) == 3 and all(0.0 <= v <= 1.0 for v in c) for c in palette)


def test_the_distractor_caution_shows_its_threshold():
    assert vocabulary.distractor_caution([]) == ""
    text = vocabulary.distractor_caution(["T2", "DWI"], "tp")
    assert text.startswith("caution (tp): T2, DWI get relevance") and ">= 95 % of its margin" in text
    assert ">= 90 % " in vocabulary.distractor_caution(["T2"], min_retained=0.9)
    assert vocabulary.DISTRACTOR_MIN_RETAINED == 0.95 and vocabulary.DISTRACTOR_MIN_SHARE == 0.1


def test_the_cross_check_flags_with_the_vocabularys_thresholds():
    import inspect

    pytest.importorskip("torch")
    from LRPSegmentationLib import evaluation

    parameters = inspect.signature(evaluation.relevance_without_sensitivity).parameters
    assert parameters["min_share"].default == vocabulary.DISTRACTOR_MIN_SHARE
    assert parameters["min_retained"].default == vocabulary.DISTRACTOR_MIN_RETAINED
