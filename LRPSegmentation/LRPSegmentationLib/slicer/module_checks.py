"""The module's self-test without the network: the same checks inside 3D Slicer and on slicer-core.

``LRPSegmentationTest`` (in ``LRPSegmentation.py``) runs `check_without_network` on Slicer's
scene, so the self-test checks something even where torch is not installed; the pytest suite runs
it on a headless slicer-core scene, once with ``import torch`` blocked. Numpy, SimpleITK and MRML
only: no torch, no Qt.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from ..vocabulary import DEMO_MODEL_RESOURCE
from . import compute, logic, module_state, mrml, publish, sample_data

__all__ = ["check_network", "check_without_network"]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def check_without_network(scene: Any, resources: str | os.PathLike, folder: str | os.PathLike,
                          say: Callable[[str], Any] = print) -> None:
    """Everything the module does around the network, on ``scene`` (emptied by the caller):

    1. the sample case is generated into ``folder`` and loaded, named as the demo model expects;
    2. the bundled demo model (when ``resources`` holds it) finds all its inputs by name;
    3. a published explanation is found again from the scene alone (as after loading a saved
       scene), its most relevant map is shown first, and re-publishing replaces the earlier one;
    4. a transformed reference volume gets its inputs where it shows them.

    Raises:
        AssertionError: naming the first check that failed.
    """
    say("Sample case (generated, no download)")
    sample_data.write_sample_case(folder)
    nodes = sample_data.load_sample_case(scene, folder)
    _check([node.GetName() for node in nodes] == sample_data.node_names(), "sample case node names")
    volumes = nodes[:-1]
    reference = next(node for node in volumes if node.GetName() == sample_data.REFERENCE_NODE_NAME)

    demo = module_state.resolve_model_path(DEMO_MODEL_RESOURCE, resources)
    if demo is not None and demo.is_dir():
        package = logic.read_package_info(str(demo))
        inputs = [logic.find_volume_by_name(scene, name) for name in package.sequences]
        _check(logic.check_inputs(inputs, logic.find_volume_by_name(scene, package.reference_sequence),
                                  package.sequences) == [], "the demo model finds the sample case's volumes")
        _check(str(package.name) in module_state.describe_package(package), "the model's name is shown")

    say("Published results: found again from the scene, most relevant map first, replaced")
    shape = mrml.volume_shape(reference)
    names = [node.GetName() for node in volumes]
    result = compute.ExplainResult(
        relevance=np.random.default_rng(0).normal(size=(len(names), *shape)).astype(np.float32),
        composition=np.full((len(names), *shape), 1.0 / len(names), np.float32),
        shares=np.full(len(names), 1.0 / len(names)), positive_shares=np.array([0.1, 0.1, 0.4, 0.1, 0.2, 0.1]),
        n_used=10, n_excluded=0, sequence_names=names)
    first = publish.publish_explanation(scene, result, reference)
    second = publish.publish_explanation(scene, result, reference)
    found = module_state.current_explanation(scene, None)  # nothing remembered, as after a scene load
    _check(found is not None and found.composition_node is second.composition_node, "explanation found again")
    _check(module_state.display_order(found)[0] == 2, "the most relevant sequence is offered first")
    composite = scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    _check(composite is None or composite.GetForegroundVolumeID() == second.relevance_nodes[2].GetID(),
           "the most relevant map is shown")
    replaced = publish.replaced_outputs(scene, second)
    _check([outputs.composition_node for outputs in replaced] == [first.composition_node], "what is replaced")
    publish.remove_outputs(scene, replaced)
    _check(first.composition_node.GetScene() is None and second.composition_node.GetScene() is scene,
           "the earlier explanation is removed, the new one stays")

    say("A transformed reference volume gets its inputs where it shows them")
    import vtk

    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 7.5)  # 7.5 mm toward patient right: 2 voxels of 3.75 mm
    transform.SetMatrixTransformToParent(matrix)
    reference.SetAndObserveTransformNodeID(transform.GetID())
    moved = mrml.arrays_on_reference([volumes[0]], reference)[0]
    original = mrml.volume_array(volumes[0])[0]
    # The phantom's i axis points to the patient's left, so right is 2 voxels toward lower i.
    _check(np.allclose(moved[:, :, 2:], original[:, :, :-2], rtol=1e-5, atol=1e-3),
           "the reference's transform is applied when resampling")
    reference.SetAndObserveTransformNodeID(None)
    mrml.remove_nodes(scene, [transform])


#: Sequence names of the tiny network `check_network` builds.
_SEQUENCES = ["T1 pre", "T1 arterial", "T1 portal", "T1 delayed", "T2", "DWI"]


def _raises(expected: type[BaseException], match: str, function: Callable[[], Any]) -> None:
    try:
        function()
    except expected as error:
        _check(match in str(error), f"expected {match!r} in the error, got {error!r}")
        return
    raise AssertionError(f"expected {expected.__name__} ({match!r})")


def check_network(scene: Any, say: Callable[[str], Any] = print) -> None:
    """Segment, explain and repaint with a tiny random 3D U-Net on generated volumes (needs torch):
    one input on another grid, a model's input orientation checked, an empty and a missing input named,
    a cancelled run leaving nothing, the cross-check column, shares without a new LRP pass, the "this lesion" shortcut.

    Raises:
        AssertionError: naming the first check that failed.
    """
    import slicer
    import torch

    from ..engine import Target
    from ..models import UNet3D, create_package
    from . import jobs, shortcuts

    say("Segment and explain with a tiny network")
    rng = np.random.default_rng(0)
    shape = (8, 8, 12)
    ijk_to_ras = np.diag([1.5, 1.2, 2.0, 1.0])
    inputs = [slicer.util.addVolumeFromArray(rng.normal(100, 20, shape).astype(np.float32), ijk_to_ras, name)
              for name in _SEQUENCES[:5]]
    other_grid = np.diag([1.0, 1.0, 1.0, 1.0])
    other_grid[:3, 3] = [-2.0, -2.0, -2.0]
    inputs.append(slicer.util.addVolumeFromArray(rng.normal(500, 50, (22, 14, 22)).astype(np.float32), other_grid,
                                                 _SEQUENCES[5]))
    reference = inputs[0]
    torch.manual_seed(0)
    model = UNet3D(6, 2, base_channels=4, depth=2).eval()
    package = create_package(model, "unet3d", {"in_channels": 6, "out_channels": 2, "base_channels": 4, "depth": 2},
                             list(_SEQUENCES), normalization={"type": "zscore", "mask": "none"},
                             class_names=["background", "lesion"], class_colors=[(0, 0, 0), (0.9, 0.3, 0.1)],
                             reference_sequence=_SEQUENCES[0], target_spacing=(1.5, 1.2, 2.0), patch_size=shape,
                             name="self-test")
    segmentation = logic.segment(scene, inputs, reference, package, "cpu")
    _check(segmentation.GetSegmentation().GetNumberOfSegments() == 1, "one segment per foreground class")

    say("A model with an input orientation takes a reference volume stored in it, refuses another")
    package.orientation = "RAS"  # the reference's IJKToRAS is a positive diagonal: I → R, J → A, K → S
    _check(logic.prepare_inputs(inputs, reference, package).array.shape[1:] == shape, "a RAS reference is taken")
    package.orientation = "LPS"
    _raises(ValueError, "reorient it (module Orient Scalar Volume)", lambda: logic.prepare_inputs(inputs, reference,
                                                                                               package))
    package.orientation = None

    regions = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "regions")
    regions.CreateDefaultDisplayNodes()
    segment_id = regions.GetSegmentation().AddEmptySegment("A", "region A")

    def explain(nodes=inputs, **options):
        return logic.explain(scene, nodes, reference, regions, segment_id, package, Target(1, True), None, "cpu",
                             **options)

    _raises(ValueError, "the segment 'region A' is empty: paint region A first", explain)
    mask = np.zeros(shape, np.uint8)
    mask[3:6, 2:6, 4:9] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, regions, segment_id, reference)
    _raises(ValueError, "'T2'", lambda: explain([*inputs[:4], None, inputs[5]]))
    count = scene.GetNumberOfNodes()
    _raises(jobs.Cancelled, "cancelled", lambda: explain(cancel=lambda: True))
    _check(scene.GetNumberOfNodes() == count, "a cancelled run leaves no nodes")

    outputs = explain(model=model, cross_check=True)
    _check(len(outputs.relevance_nodes) == len(_SEQUENCES), "one relevance map per sequence")
    _check(abs(float(np.sum(outputs.shares)) - 1.0) < 1e-4, "the shares sum to 1")
    margins = outputs.table_node.GetTable().GetColumnByName(publish.MARGIN_COLUMN)
    _check(margins is not None and margins.GetNumberOfTuples() == len(_SEQUENCES), "the cross-check column")
    _check(all(mrml.volume_shape(node) == shape for node in outputs.relevance_nodes), "maps on the reference grid")

    say("Repaint region A: shares without a new LRP pass; the lesion shortcut")
    mask[:] = 0
    mask[1:4, 4:8, 0:6] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, regions, segment_id, reference)
    shares, used, excluded = logic.update_region(scene, outputs, None, regions, segment_id, reference)
    _check(abs(float(np.sum(shares)) - 1.0) < 1e-4 and used + excluded == int(mask.sum()), "repainted shares")
    ras = (ijk_to_ras @ np.array([5.0, 6.0, 2.0, 1.0]))[:3]  # voxel (k, j, i) = (2, 6, 5), inside the box
    lesion_id = shortcuts.create_region_segment(scene, regions, reference, "lesion", regions, segment_id,
                                                ras_point=ras)
    _check(regions.GetSegmentation().GetSegment(lesion_id).GetName() == "A: this region A lesion", "lesion name")
    _check(np.array_equal(mrml.segment_mask(regions, lesion_id, reference), mask != 0), "the lesion is the box")
    _raises(shortcuts.EmptyRegionError, "no predicted lesion at this point",
            lambda: shortcuts.create_region_segment(scene, regions, reference, "lesion", regions, segment_id,
                                                    ras_point=(0.0, 0.0, 0.0)))
