"""The module's sample case: a six-sequence liver phantom generated on this computer (no download).

The demo model needs six specific MRI sequences and nothing in 3D Slicer provides them, so the
module registers this case with Slicer's Sample Data module. The first click generates it
(`write_sample_case`, about a second) into Slicer's cache folder and later clicks reuse the files;
`load_sample_case` reads them into a scene. Everything here is Qt-free and torch-free, so the
module's self-test and the pytest suite (slicer-core) use the same two functions.

The case is the demo's (`LRPSegmentationLib.demo`, seed 9001, never used in training) at the
demo model's training shape, so the model's spacing check passes. Volumes are named exactly as
the demo model's sequences ("T2", "plainT1", ...): the module preselects them by name. The ground
truth is a segmentation with one segment named "tumour" (for the TP / FN / FP shortcuts).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import outputs, phantom

__all__ = ["CATEGORY", "REFERENCE_NODE_NAME", "SAMPLE_NAME", "SAMPLE_SEED", "SAMPLE_SHAPE", "TRUTH_NODE_NAME", "TRUTH_SEGMENT_NAME",
           "load_file_types", "load_sample_case", "node_names", "sample_files", "write_sample_case"]

#: Shown in the Sample Data module: the category (section title) and the data set's name.
CATEGORY = "LRP Segmentation"
SAMPLE_NAME = "LRPLiverPhantom"
#: The demo's phantom seed (``demo.DEMO_SEED``; a test checks they agree) and the demo model's
#: training shape (its ``training_info.phantom_shape``): (D, H, W), spacing 5 x 3.75 x 3.75 mm.
SAMPLE_SEED = 9001
SAMPLE_SHAPE = (32, 96, 96)
#: Node name of the ground-truth segmentation; its one segment is named `TRUTH_SEGMENT_NAME`.
TRUTH_NODE_NAME = f"{SAMPLE_NAME} ground truth"
#: The volume the case is shown on, and the demo model's reference sequence.
REFERENCE_NODE_NAME = phantom.REFERENCE_SEQUENCE
TRUTH_SEGMENT_NAME = "tumour"
_TRUTH_COLOR = "0.95 0.35 0.2"  # the demo model's tumour colour


def sample_files(folder: str | os.PathLike) -> list[Path]:
    """The case's files in ``folder``: one NRRD per sequence (`phantom.SEQUENCES` order), then the
    ground-truth segmentation (``.seg.nrrd``)."""
    folder = Path(folder)
    return ([folder / f"{SAMPLE_NAME}-{sequence}.nrrd" for sequence in phantom.SEQUENCES]
            + [folder / f"{SAMPLE_NAME}-truth.seg.nrrd"])


def node_names() -> list[str]:
    """Node names, in `sample_files` order: the sequence names, then `TRUTH_NODE_NAME`."""
    return [*phantom.SEQUENCES, TRUTH_NODE_NAME]


def load_file_types() -> list[str]:
    """Slicer's file types (``slicer.app.coreIOManager`` names), in `sample_files` order."""
    return ["VolumeFile"] * len(phantom.SEQUENCES) + ["SegmentationFile"]


def write_sample_case(folder: str | os.PathLike, seed: int = SAMPLE_SEED,
                      shape: Sequence[int] = SAMPLE_SHAPE) -> list[Path]:
    """Generate the phantom case into ``folder`` unless all its files are there; returns `sample_files`.

    Each file is written all-or-nothing (temporary sibling, then rename), so an interrupted run
    leaves no half-written file that a later call would take for complete.
    """
    files = sample_files(folder)
    if all(path.is_file() and path.stat().st_size > 0 for path in files):
        return files
    images, truth = phantom.generate_case(seed, shape=tuple(shape)).to_sitk()
    _describe_truth_segment(truth)
    for image, path in zip([*images, truth], files):
        with outputs.atomic_file(path, overwrite=True) as temporary:
            _write(image, temporary)
    return files


def _describe_truth_segment(label: Any) -> None:
    """Slicer's segmentation NRRD fields: one segment, named, coloured, with its extent."""
    width, height, depth = label.GetSize()
    fields = {"Segment0_ID": TRUTH_SEGMENT_NAME, "Segment0_Name": TRUTH_SEGMENT_NAME,
              "Segment0_Color": _TRUTH_COLOR, "Segment0_LabelValue": "1", "Segment0_Layer": "0",
              "Segment0_Extent": f"0 {width - 1} 0 {height - 1} 0 {depth - 1}",
              "Segmentation_ReferenceImageExtentOffset": "0 0 0"}
    for key, value in fields.items():
        label.SetMetaData(key, value)


def _write(image: Any, path: Path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(image, str(path), useCompression=True)


def load_sample_case(scene: Any, folder: str | os.PathLike) -> list[Any]:
    """Read the case's files from ``folder`` into ``scene``; returns the nodes in `sample_files` order.

    Uses the storage nodes directly (no Slicer application needed) and then drops them, as the
    Sample Data module does for files read from its cache: saving the scene writes new files
    instead of overwriting the cache.

    Raises:
        FileNotFoundError: a file is missing (call `write_sample_case` first).
        RuntimeError: Slicer could not read a file; nodes read so far are removed.
    """
    from . import mrml

    nodes: list[Any] = []
    try:
        for path, name, kind in zip(sample_files(folder), node_names(), load_file_types()):
            if not path.is_file():
                raise FileNotFoundError(f"sample data file {path} is missing: generate the case first")
            node_class, storage_class = (("vtkMRMLScalarVolumeNode", "vtkMRMLVolumeArchetypeStorageNode")
                                         if kind == "VolumeFile" else
                                         ("vtkMRMLSegmentationNode", "vtkMRMLSegmentationStorageNode"))
            node = scene.AddNewNodeByClass(node_class, name)
            nodes.append(node)
            storage = scene.AddNewNodeByClass(storage_class)
            storage.SetFileName(str(path))
            read = storage.ReadData(node)
            scene.RemoveNode(storage)
            if not read:
                raise RuntimeError(f"3D Slicer could not read {path}")
            node.CreateDefaultDisplayNodes()
    except BaseException:
        mrml.remove_nodes(scene, nodes)
        raise
    return nodes

