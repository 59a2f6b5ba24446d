"""Write an explained case as a 3D Slicer scene (``scene.mrml`` + its data files), built with the
same MRML logic the Slicer module uses (`mrml`), on a headless slicer-core scene (`headless`).

Opening ``scene.mrml`` in 3D Slicer shows the sequences, the predicted segmentation, one relevance
volume per sequence with the module's blue–white–red colour table (symmetric window shared across
sequences), the composition volumes, and the table + bar chart of per-sequence shares, all in a
subject-hierarchy folder; the slice views show the most relevant sequence's map over the
reference image.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import outputs
from .models.package import ModelPackage
from .pipeline import CaseResult

SCENE_FOLDER = "slicer-scene"


def save_slicer_scene(result: CaseResult, folder: str | os.PathLike, package: ModelPackage, region: str = "predicted",
                      overwrite: bool = False) -> Path:
    """Write ``<folder>/slicer-scene/scene.mrml`` and its data files; returns the .mrml path.

    Raises:
        ImportError: slicer-core is not installed.
        FileExistsError: the scene folder exists and ``overwrite`` is False.
        ValueError: ``region`` was not explained.
    """
    import slicer

    from . import mrml
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
    case, names = result.case, result.case.sequences
    ijk_to_ras = case.geometry.ijk_to_ras()
    images = [slicer.util.addVolumeFromArray(np.ascontiguousarray(a), ijk_to_ras, name)
              for a, name in zip(case.images, names)]
    reference = images[names.index(package.reference_sequence)]
    folder_item = mrml.create_output_folder(scene, f"LRP {region} ({result.composite})", reference)
    colors = package.class_colors or [(0.0, 0.0, 0.0), (0.9, 0.2, 0.2)]
    segmentation = mrml.add_segmentation_from_labels(scene, result.labels, package.class_names, colors, reference,
                                                     "prediction", folder_item_id=folder_item)
    explanation = result.explanations[region]
    relevance = mrml.add_relevance_volumes(scene, explanation.relevance.numpy(), [f"relevance {n}" for n in names],
                                           reference, folder_item_id=folder_item)
    composition = [slicer.util.addVolumeFromArray(np.ascontiguousarray(c), ijk_to_ras, f"composition {n}")
                   for c, n in zip(result.composition, names)]
    mrml.move_into_folder(scene, composition, folder_item)
    table = mrml.update_shares_table(None, scene, names, explanation.sequence_shares.tolist(),
                                     extra_columns={"positive_share": explanation.positive_shares.tolist()},
                                     folder_item_id=folder_item)
    mrml.create_shares_bar_chart(scene, table, folder_item_id=folder_item)
    strongest = int(np.argmax(explanation.positive_shares.numpy()))
    mrml.set_foreground_overlay(scene, reference, relevance[strongest], opacity=0.6)
    for node in [*images, segmentation, *relevance, *composition, table, mrml.create_diverging_color_table(scene)]:
        _write_with_storage(node, target)
    scene.SetRootDirectory(str(target))
    scene.SetURL(str(mrml_path))
    if not scene.Commit():
        raise OSError(f"could not write {mrml_path}")
    return mrml_path


def _write_with_storage(node, folder: Path) -> None:
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
