"""Write an explained case as a 3D Slicer scene (``scene.mrml`` + its data files).

The scene is built on the headless slicer-core application (`headless`) by the very functions the
module's Segment and Explain buttons use (`publish.publish_segmentation`,
`publish.publish_explanation`), so opening ``scene.mrml`` in 3D Slicer gives the module's own node
layout: the sequences, the predicted segmentation in its folder, and the explanation's folder with
one relevance volume per sequence (blue-white-red, one symmetric window), the sequence-composition
vector volume, the shares table and its bar chart. The slice views show the most relevant
sequence's map over the reference image. Repainting region A in that scene updates the shares
(the module finds the explanation with `publish.find_explanation`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import outputs

if TYPE_CHECKING:  # torch-importing modules: only for the annotations
    from ..models.package import ModelPackage
    from ..pipeline import CaseResult

__all__ = ["SCENE_FOLDER", "save_slicer_scene"]

SCENE_FOLDER = "slicer-scene"


def save_slicer_scene(result: CaseResult, folder: str | os.PathLike, package: ModelPackage, region: str = "predicted",
                      overwrite: bool = False) -> Path:
    """Write ``<folder>/slicer-scene/scene.mrml`` and its data files; returns the .mrml path.

    Args:
        result: the explained case (its sequences, labels, composition and explanations).
        region: the explanation to publish (default "predicted"; else the first one explained).

    Raises:
        ImportError: slicer-core is not installed.
        FileExistsError: the scene file exists and ``overwrite`` is False.
        ValueError: nothing was explained.
    """
    import slicer

    from . import compute, mrml, publish
    from .headless import clear_scene, start_slicer

    if region not in result.explanations:
        region = next(iter(result.explanations), None)
        if region is None:
            raise ValueError("nothing was explained: no region to put in the scene")
    target = Path(folder) / SCENE_FOLDER
    mrml_path = target / "scene.mrml"
    outputs.check_writable([mrml_path], overwrite)
    target.mkdir(parents=True, exist_ok=True)
    start_slicer()
    scene = clear_scene()
    names = list(result.case.sequences)
    ijk_to_ras = result.case.geometry.ijk_to_ras()
    images = [slicer.util.addVolumeFromArray(np.ascontiguousarray(image), ijk_to_ras, name)
              for image, name in zip(result.case.images, names)]
    reference = images[names.index(package.reference_sequence)]
    segmentation = publish.publish_segmentation(scene, result.labels, reference, package)
    explanation = compute.ExplainResult.from_explanation(result.explanations[region], result.composition, names,
                                                         region)
    published = publish.publish_explanation(scene, explanation, reference, f"LRP {region} ({result.composite})",
                                            show=False)
    strongest = int(np.argmax(explanation.positive_shares))
    mrml.set_foreground_overlay(scene, reference, published.relevance_nodes[strongest], opacity=0.6)
    for node in [*images, segmentation, *published.relevance_nodes, published.composition_node,
                 published.table_node, mrml.create_diverging_color_table(scene)]:
        _write_with_storage(node, target)
    scene.SetRootDirectory(str(target))
    scene.SetURL(str(mrml_path))
    if not scene.Commit():
        raise OSError(f"could not write {mrml_path}")
    return mrml_path


def _write_with_storage(node: Any, folder: Path) -> None:
    """Give a data node a storage node with a file in ``folder`` and write the data there."""
    if node.GetStorageNode() is None:
        node.AddDefaultStorageNode()
    storage = node.GetStorageNode()
    extension = storage.GetDefaultWriteFileExtension()
    storage.SetFileName(str(folder / f"{outputs.safe_name(node.GetName())}.{extension}"))
    if hasattr(storage, "SetUseCompression"):
        storage.SetUseCompression(True)
    if not storage.WriteData(node):
        raise OSError(f"could not write {storage.GetFileName()}")
