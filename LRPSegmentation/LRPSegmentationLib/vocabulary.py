"""The names the user interfaces share: one home for every constant the Slicer module, the CLI,
the demo and the engine would otherwise each write down.

Standard library only (no numpy, no torch, no slicer): the Slicer module imports this at start-up,
before torch is installed, and the engine may import it too. Anything that needs computing lives
elsewhere; this module only names things.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# --------------------------------------------------------------------------------------------
# LRP composites (built by ``engine.composites.make_composite``; a test checks the two agree)
# --------------------------------------------------------------------------------------------

#: Every composite name the engine builds, in the order error messages list them.
COMPOSITES = ("epsilon", "epsilon_gamma_box", "epsilon_plus_flat", "epsilon_alpha2_beta1")
#: The composite used when neither the user nor the model package names one.
DEFAULT_COMPOSITE = "epsilon_gamma_box"
#: Composites whose first-layer rule ignores the input values: per-sequence shares are meaningless.
INPUT_BLIND_COMPOSITES = ("epsilon_plus_flat",)
#: The order a menu offers them: the default first, the input-blind ones last.
COMPOSITE_MENU = tuple(sorted(COMPOSITES, key=lambda name: (name != DEFAULT_COMPOSITE,
                                                            name in INPUT_BLIND_COMPOSITES)))

# --------------------------------------------------------------------------------------------
# Region A (computed by ``regions``)
# --------------------------------------------------------------------------------------------

#: Region modes of a case (CLI ``--region``, ``regions.select_regions``): the predicted target
#: class, true positives / false negatives / false positives against a reference label, each
#: connected predicted lesion, or a given mask.
REGION_MODES = ("predicted", "tp", "fn", "fp", "lesions", "mask")
#: The modes that compare the prediction with a reference label (ground truth).
ERROR_MODES = ("tp", "fn", "fp")
#: What the error modes are called in sentences.
ERROR_DESCRIPTIONS = {"tp": "true positives", "fn": "false negatives", "fp": "false positives"}
#: The Slicer module's one-click region A shortcuts: like the region modes, but "lesion" is the one
#: predicted lesion at a point (the crosshair) rather than every lesion.
REGION_SHORTCUTS = ("predicted", "lesion", "tp", "fn", "fp")

# --------------------------------------------------------------------------------------------
# Model packages
# --------------------------------------------------------------------------------------------

#: The bundled demo model package, relative to the Slicer module's ``Resources/`` folder.
DEMO_MODEL_RESOURCE = "Models/demo_unet3d.lrpmodel"
#: The same package as an absolute path (this file is ``LRPSegmentation/LRPSegmentationLib/``).
DEMO_MODEL = Path(__file__).resolve().parents[1] / "Resources" / DEMO_MODEL_RESOURCE

#: Class colours (r, g, b in 0..1) when a model package gives none: background black, then
#: distinct colours. ``models.package`` refuses more classes than this without colours.
DEFAULT_CLASS_COLORS = ((0.0, 0.0, 0.0), (0.9, 0.2, 0.2), (0.2, 0.7, 0.3), (0.2, 0.4, 0.9), (0.95, 0.8, 0.2),
                        (0.7, 0.3, 0.8), (0.2, 0.8, 0.8), (0.95, 0.5, 0.1))


def default_class_colors(count: int) -> list[tuple[float, float, float]]:
    """``count`` colours from `DEFAULT_CLASS_COLORS`, repeating the palette (not the background)
    when there are more classes than colours."""
    palette, rest = DEFAULT_CLASS_COLORS, DEFAULT_CLASS_COLORS[1:]
    return [palette[k] if k < len(palette) else rest[(k - 1) % len(rest)] for k in range(count)]


# --------------------------------------------------------------------------------------------
# The cross-check: relevance the decision does not back ("distractor relevance", README)
# --------------------------------------------------------------------------------------------

#: A sequence is flagged when it gets at least this share of region A's positive relevance ...
DISTRACTOR_MIN_SHARE = 0.1
#: ... although replacing it by its mean keeps at least this fraction of A's decision margin.
DISTRACTOR_MIN_RETAINED = 0.95


def distractor_caution(sequences: Sequence[str], region: str | None = None,
                       min_retained: float = DISTRACTOR_MIN_RETAINED) -> str:
    """The one-line caution for flagged sequences (empty string when there are none).

    Args:
        sequences: the flagged sequence names (``evaluation.relevance_without_sensitivity``).
        region: region A's name, shown in the sentence when given.
        min_retained: the threshold the sequences were flagged with (shown as a percentage).

    Example: ``caution (tp): T2, DWI get relevance although the decision keeps >= 95 % of its
    margin without them (distractor relevance, see the README)``.
    """
    if not sequences:
        return ""
    where = f" ({region})" if region else ""
    return (f"caution{where}: {', '.join(sequences)} get relevance although the decision keeps "
            f">= {100 * min_retained:g} % of its margin without them (distractor relevance, see the README)")


# --------------------------------------------------------------------------------------------
# Decision shares (Shapley values of the sequences, ``shapley``)
# --------------------------------------------------------------------------------------------

#: What the Slicer table, the CLI and the reports call a sequence's Shapley share of the decision.
DECISION_SHARE_LABEL = "decision share (Shapley)"
#: A sequence with at least `DISTRACTOR_MIN_SHARE` of the positive relevance is named when its
#: decision share is at most this (≈ 0, or negative: the decision does not rest on it).
DECISION_MAX_SHARE = 0.05


def decision_caution(sequences: Sequence[str], region: str | None = None,
                     max_share: float = DECISION_MAX_SHARE) -> str:
    """The one-line caution for sequences with LRP relevance but (almost) no share of the decision
    (``shapley.relevance_without_decision``); empty string when there are none.

    Example: ``caution (tp): T1-15min get relevance but carry <= 5 % of the decision (Shapley);
    distractor relevance, see the README``.
    """
    if not sequences:
        return ""
    where = f" ({region})" if region else ""
    return (f"caution{where}: {', '.join(sequences)} get relevance but carry <= {100 * max_share:g} % of the "
            f"decision (Shapley); distractor relevance, see the README")
