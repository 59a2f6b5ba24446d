"""Shared pytest fixtures."""
import pytest


@pytest.fixture
def mrml_scene():
    """The headless Slicer scene (see slicer_harness.py), emptied before each test.

    slicer-core is imported only by tests that use this fixture.
    """
    from slicer_harness import clear_scene

    return clear_scene()
