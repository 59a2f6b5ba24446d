"""The reviewed case in and out of the scene: loading it (`load_into_scene`) and Export (`write_outputs`).

Loading reuses what the other front ends use: the bundled phantom goes through the Slicer
module's sample data (`slicer.sample_data`, via ``ModuleLogic.loadSampleData``), a case folder or
``NAME=FILE`` sequences through the command line's reader (`cli.load_case_inputs` ->
`pipeline.load_case`: every sequence resampled onto the reference sequence's grid at the model's
spacing), whose arrays become MRML volumes here. Export writes exactly the files of ``lrpseg
explain --region mask`` (`pipeline.write_case_files`, all-or-nothing through
`outputs.atomic_folder`) from the worker's explanation, plus region A itself as ``mask.nrrd`` so
that ``lrpseg explain --region mask --mask mask.nrrd`` reproduces the export.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LoadedCase", "MASK_FILE", "REGION_NAME", "load_into_scene", "write_outputs"]

#: The exported region's name: the region name ``lrpseg explain --region mask`` gives it.
REGION_NAME = "mask"
#: Region A as a label file in the export folder (1 inside, 0 outside, on the case grid).
MASK_FILE = "mask.nrrd"


@dataclass
class LoadedCase:
    input_nodes: list[Any]
    reference_node: Any
    truth_node: Any = None
    truth_segment_id: str = ""
    files: dict[str, str] | None = None  # sequence name -> the file it was read from (the phantom's)


def load_into_scene(session: Any, source: Any) -> LoadedCase:
    """The case's volumes (package order), its reference, and its ground-truth segment if any."""
    if source.is_phantom:
        return _load_phantom(session)
    return _load_files(session, source)


def _load_phantom(session: Any) -> LoadedCase:
    from ..slicer import sample_data

    logic = session.logic
    folder = session.sample_folder or tempfile.mkdtemp(prefix="lrpseg-review-")
    nodes = logic.loadSampleData(folder)
    by_name = {node.GetName(): node for node in nodes}
    missing = [name for name in session.package.sequences if name not in by_name]
    if missing:
        raise ValueError(f"the bundled phantom has no sequence {', '.join(missing)} of this model: give the case with "
                         "--case FOLDER or --sequence NAME=FILE")
    truth = by_name[sample_data.TRUTH_NODE_NAME]
    files = {name: str(path) for name, path in zip(sample_data.node_names(), sample_data.sample_files(folder))}
    return LoadedCase([by_name[name] for name in session.package.sequences],
                      by_name[session.package.reference_sequence], truth,
                      truth.GetSegmentation().GetSegmentIdBySegmentName(sample_data.TRUTH_SEGMENT_NAME), files)


def _load_files(session: Any, source: Any) -> LoadedCase:
    """A case folder or NAME=FILE sequences, read as the command line reads them, as MRML volumes."""
    import slicer
    import vtk

    from .. import vocabulary
    from ..cli import load_case_inputs
    from ..models.package import load_package
    from ..slicer import mrml

    package = load_package(session.model_path)
    case = load_case_inputs(package, source.case, source.sequences or None, source.reference_label, announce=False)
    scene = session.scene
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(case.geometry.ijk_to_ras()[row, column]))
    nodes = []
    for name, image in zip(case.sequences, case.images):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        node.SetIJKToRASMatrix(matrix)
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(image, dtype=np.float32))
        node.CreateDefaultDisplayNodes()
        nodes.append(node)
    reference = nodes[case.sequences.index(package.reference_sequence)]
    mrml.set_foreground_overlay(scene, reference, None, 0.0)
    truth = None
    truth_id = ""
    if case.reference_label is not None:
        colors = getattr(package, "class_colors", None) or vocabulary.default_class_colors(len(package.class_names))
        truth = mrml.add_segmentation_from_labels(scene, case.reference_label, list(package.class_names),
                                                  [tuple(c) for c in colors], reference, f"{case.name} reference label")
        truth_id = truth.GetSegmentation().GetSegmentIdBySegmentName(str(package.class_names[-1]))
    files = dict(item.split("=", 1) for item in source.sequences) if source.sequences else {"case": str(source.case)}
    return LoadedCase(nodes, reference, truth, truth_id, files)


def _labels(session: Any) -> np.ndarray:
    """The published prediction as a (D, H, W) uint8 label map (class index per voxel)."""
    from ..slicer import mrml

    labels = np.zeros(mrml.volume_shape(session.reference_node), dtype=np.uint8)
    segmentation = session.predicted_node.GetSegmentation()
    for index, name in enumerate(session.package.class_names):
        segment_id = segmentation.GetSegmentIdBySegmentName(str(name))
        if index and segment_id:
            labels[mrml.segment_mask(session.predicted_node, segment_id, session.reference_node)] = index
    return labels


def write_outputs(session: Any, result: Any, folder: str | os.PathLike, overwrite: bool = False) -> dict[str, Any]:
    """Write ``lrpseg explain --region mask``'s files for the worker's `compute.ExplainResult` of region A.

    The region's excluded voxels are where its composition is zero (`compute.ExplainResult`); their
    count must be the worker's ``n_excluded``, else nothing is written (ValueError).

    Returns:
        The summary (``summary.json``).
    """
    import torch

    from .. import pipeline
    from ..engine import DEFAULT_TOLERANCE, RegionExplanation, Target
    from ..imaging import Geometry, write_label
    from ..outputs import atomic_folder
    from ..slicer import mrml

    reference = session.reference_node
    names = [str(name) for name in session.package.sequences]
    geometry = Geometry.from_ijk_to_ras(mrml.ijk_to_ras_matrix(reference), mrml.volume_shape(reference))
    region = session.region_mask()
    excluded = region & ~np.any(np.asarray(result.composition) != 0, axis=0)
    if int(excluded.sum()) != int(result.n_excluded):
        raise ValueError(f"the explanation excludes {result.n_excluded} voxels of region A, its composition map "
                         f"{int(excluded.sum())}: press Explain again before exporting")
    target = Target(session.target_class)
    composite = session.package.composite
    explanation = RegionExplanation(
        relevance=torch.from_numpy(np.asarray(result.relevance)), sequence_shares=torch.from_numpy(result.shares),
        positive_shares=torch.from_numpy(result.positive_shares), n_used=int(result.n_used),
        n_excluded=int(result.n_excluded), excluded=torch.from_numpy(excluded), target=target, composite=composite,
        tolerance=DEFAULT_TOLERANCE, diagnostics=dict(result.diagnostics))
    images = mrml.arrays_on_reference(session.input_nodes, reference, names)
    name = "phantom" if session.source.is_phantom else Path(session.source.case or reference.GetName()).name
    case = pipeline.Case(name, images.astype(np.float32), geometry, names)
    labels = _labels(session)
    case_result = pipeline.CaseResult(case, np.zeros((0,), np.float32), labels, np.asarray(result.composition),
                                      {REGION_NAME: region}, {REGION_NAME: explanation}, target, composite)
    with atomic_folder(Path(folder), overwrite, markers=(pipeline.SUMMARY,)) as temporary:
        summary = pipeline.write_case_files(case_result, temporary, session.package)
        write_label(region.astype(np.uint8), geometry, temporary / MASK_FILE)
    return summary
