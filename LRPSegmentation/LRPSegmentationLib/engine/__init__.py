"""The LRP engine: pure torch; knows nothing of files, MRML or Qt.

- `graph`: trace a model as written into LRP-aware nodes (`nodes`; canonization included; gates,
  attention, LayerNorm and copies in `modern`).
- `rules`: one class per LRP rule, linear in the relevance, with its transpose.
- `composites`: which rule each layer gets (Zennit's names).
- `region`: the seed's voxel and region explanations, and per-sequence composition.
- `support`: bounding boxes of the part of a tensor a pass needs (convolutions skip the rest).
- `sliding`: the same, exactly, for volumes larger than one network patch (Gaussian-blended windows).
- `forward`: `TracedForward`, one traced forward pass of a case (whole or windowed) answering the
  prediction, any number of region explanations and the composition; the functions above wrap it.
"""
from .composites import COMPOSITES, Composite, input_box_bounds, make_composite
from .forward import TracedForward
from .graph import Graph, UnsupportedOperationError, trace
from .region import (DEFAULT_COMPOSITE, DEFAULT_TOLERANCE, RegionExplanation, Target, compute_context,
                     check_logits, check_region, explain_region, explain_voxel, prepare_graph, region_shares,
                     resolve_device, sequence_composition)
from .sliding import (gaussian_importance, patch_grid, sliding_explain_region, sliding_sequence_composition,
                      sliding_window_logits)
from .rules import AlphaBeta, Epsilon, Flat, Gamma, Identity, Rule, WSquare, ZBox, ZPlus

__all__ = [
    "COMPOSITES", "Composite", "input_box_bounds", "make_composite",
    "TracedForward",
    "Graph", "UnsupportedOperationError", "trace",
    "DEFAULT_COMPOSITE", "DEFAULT_TOLERANCE", "RegionExplanation", "Target", "compute_context",
    "check_logits", "check_region", "explain_region", "explain_voxel", "prepare_graph", "region_shares",
    "resolve_device", "sequence_composition",
    "gaussian_importance", "patch_grid", "sliding_explain_region", "sliding_sequence_composition",
    "sliding_window_logits",
    "AlphaBeta", "Epsilon", "Flat", "Gamma", "Identity", "Rule", "WSquare", "ZBox", "ZPlus",
]
