"""The LRP engine: pure torch; knows nothing of files, MRML or Qt.

- `graph`: trace a model as written into LRP-aware nodes (canonization included).
- `rules`: one class per LRP rule, linear in the relevance, with its transpose.
- `composites`: which rule each layer gets (Zennit's names).
- `region`: the seed's voxel and region explanations, and per-sequence composition.
- `sliding`: the same, exactly, for volumes larger than one network patch (Gaussian-blended windows).
"""
from .composites import COMPOSITES, Composite, input_box_bounds, make_composite
from .graph import Graph, UnsupportedOperationError, trace
from .region import (DEFAULT_COMPOSITE, DEFAULT_TOLERANCE, RegionExplanation, Target, compute_context,
                     check_logits, check_region, explain_region, explain_voxel, prepare_graph, region_shares,
                     resolve_device, sequence_composition)
from .sliding import (gaussian_importance, patch_grid, sliding_explain_region, sliding_sequence_composition,
                      sliding_window_logits)
from .rules import AlphaBeta, Epsilon, Flat, Gamma, Rule, WSquare, ZBox, ZPlus

__all__ = [
    "COMPOSITES", "Composite", "input_box_bounds", "make_composite",
    "Graph", "UnsupportedOperationError", "trace",
    "DEFAULT_COMPOSITE", "DEFAULT_TOLERANCE", "RegionExplanation", "Target", "compute_context",
    "check_logits", "check_region", "explain_region", "explain_voxel", "prepare_graph", "region_shares",
    "resolve_device", "sequence_composition",
    "gaussian_importance", "patch_grid", "sliding_explain_region", "sliding_sequence_composition",
    "sliding_window_logits",
    "AlphaBeta", "Epsilon", "Flat", "Gamma", "Rule", "WSquare", "ZBox", "ZPlus",
]
