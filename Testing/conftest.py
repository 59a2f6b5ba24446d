"""Shared pytest fixtures."""
import pytest


@pytest.fixture
def mrml_scene():
    """The headless Slicer scene (see LRPSegmentationLib/slicer/headless.py), emptied before each test.

    slicer-core is imported only by tests that use this fixture.
    """
    from LRPSegmentationLib.slicer.headless import clear_scene

    return clear_scene()
