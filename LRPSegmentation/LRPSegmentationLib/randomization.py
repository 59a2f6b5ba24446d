"""Model-parameter randomization (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018).

Re-initialize the network's weights (cascading from the top, or all at once) and rank-correlate the
region explanation with the original one: an explanation that does not change when the model
is destroyed does not explain the model. Conventions as in ``evaluation``: ``x`` is
(1, C, D, H, W), ``region`` is (D, H, W) bool on the output grid, relevance is (C, D, H, W).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .engine import (DEFAULT_COMPOSITE, DEFAULT_TOLERANCE, Composite, Target, compute_context,
                     explain_region, sliding_explain_region)
from .evaluation import _check_x, spearman

__all__ = ["MAX_CORRELATION_VALUES", "RandomizationStage", "RandomizationResult", "randomization_check"]

#: At most this many values enter the rank correlation of :func:`randomization_check`.
MAX_CORRELATION_VALUES = 200_000

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _parametrized_units(model: nn.Module, x: torch.Tensor, device) -> list[list[str]]:
    """Leaf modules with parameters in execution order, grouped into units: a layer plus the
    normalization layers that directly follow it (Conv → BatchNorm re-initialize together)."""
    seen: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        if list(module.children()) or not any(True for _ in module.parameters(recurse=False)):
            continue
        hooks.append(module.register_forward_hook(
            lambda _m, _i, _o, name=name: seen.append(name) if name not in seen else None))
    try:
        with torch.no_grad(), compute_context(model, x, device) as x_dev:
            model(x_dev)
    finally:
        for hook in hooks:
            hook.remove()
    modules = dict(model.named_modules())
    units: list[list[str]] = []
    for name in seen:
        if isinstance(modules[name], _NORM_TYPES) and units:
            units[-1].append(name)
        else:
            units.append([name])
    return units


def _reinitialize(model: nn.Module, names: Sequence[str]) -> None:
    modules = dict(model.named_modules())
    for name in names:
        module = modules[name]
        if not hasattr(module, "reset_parameters"):
            raise ValueError(f"layer {name!r} ({type(module).__name__}) has no reset_parameters(); "
                             "cannot re-initialize it")
        module.reset_parameters()
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            module.reset_running_stats()


@dataclass
class RandomizationStage:
    """One step of :func:`randomization_check`.

    Attributes:
        layers: names of the layers re-initialized so far (cumulative).
        correlation: Spearman correlation of |relevance| (original vs randomized); NaN when the
            randomized model could not be explained (every region voxel excluded).
        correlation_signed: the same over signed relevance.
        positive_shares: (C,) positive sequence shares of the randomized model's explanation.
        shares_change: total-variation distance ½ Σ_c |Δ positive share| to the original (0..1).
        error: why the randomized model could not be explained, else None.
    """

    layers: tuple[str, ...]
    correlation: float
    correlation_signed: float
    positive_shares: np.ndarray
    shares_change: float
    error: str | None = None


@dataclass
class RandomizationResult:
    """Result of :func:`randomization_check`; the headline numbers are those of the last stage
    (every selected layer randomized).

    Attributes:
        correlation: Spearman correlation of |relevance|, original vs fully randomized.
        correlation_signed: the same over signed relevance.
        original_shares: (C,) positive sequence shares of the original explanation.
        randomized_shares: (C,) those of the last stage.
        shares_change: total-variation distance between them (0..1).
        stages: every stage, top layer first for ``layers="top"``.
        layers: the mode used.
        n_values: voxel values (all sequences) entering each correlation.
    """

    correlation: float
    correlation_signed: float
    original_shares: np.ndarray
    randomized_shares: np.ndarray
    shares_change: float
    stages: list[RandomizationStage] = field(default_factory=list)
    layers: str | int = "top"
    n_values: int = 0


def randomization_check(model: nn.Module, x: torch.Tensor, region, target: int | Target = 1,
                        composite: str | Composite = DEFAULT_COMPOSITE,
                        device: str | torch.device | None = None, layers: str | int = "top", seed: int = 0, *,
                        tolerance: float = DEFAULT_TOLERANCE, max_values: int = MAX_CORRELATION_VALUES,
                        window=None, overlap: float = 0.5) -> RandomizationResult:
    """Model-parameter randomization test (Adebayo et al., "Sanity checks for saliency maps", 2018).

    The model is copied (``copy.deepcopy``; the original is untouched) and its layers are
    re-initialized with their own default initializers (``reset_parameters()`` under
    ``torch.manual_seed(seed)``, the global RNG state restored afterwards): convolutions get fresh
    random weights, normalization layers become identity transforms with reset running
    statistics. A parametrized layer and the normalization layers right after it form one unit.

    * ``layers="top"``: cascading randomization, one unit more per stage from the output head
      down to the first layer (execution order), explaining after each stage;
    * ``layers=n`` (int): the same cascade, stopping after the top n units;
    * ``layers="all"``: one stage, every unit at once.

    Each stage recomputes ``explain_region`` and compares it with the original map by Spearman
    rank correlation over the voxels of all sequences, of |relevance| (``correlation``, Adebayo's
    main measure: the sign of LRP maps flips easily and is compared separately in
    ``correlation_signed``), on at most ``max_values`` voxels drawn without replacement
    (seeded; the same voxels for both maps). A faithful explanation must change: correlations well
    below 1. Also reported: how much the positive sequence shares move.

    Returns:
        :class:`RandomizationResult`.

    Raises:
        ValueError: bad inputs (as ``explain_region``), unknown ``layers``, or the ORIGINAL model
            not explainable on the region.
    """
    x = _check_x(x)
    if isinstance(layers, bool) or not (layers in ("top", "all") or (isinstance(layers, int) and layers >= 1)):
        raise ValueError(f"layers must be 'top', 'all' or a positive number of top layers, got {layers!r}")
    if isinstance(max_values, bool) or not isinstance(max_values, int) or max_values < 2:
        raise ValueError(f"max_values must be an integer >= 2, got {max_values!r}")

    def explain(m: nn.Module):
        if window is not None:
            return sliding_explain_region(m, x, region, target, composite, patch_size=window, overlap=overlap,
                                          device=device, tolerance=tolerance)
        return explain_region(m, x, region, target, composite, device=device, tolerance=tolerance)

    original = explain(model)
    if not torch.isfinite(original.relevance).all():
        raise ValueError("the original explanation contains NaN/Inf values (a region voxel whose map keeps "
                         "none of its score?); raise the tolerance")
    flat = original.relevance.reshape(-1)
    total = flat.numel()
    if total > max_values:
        index = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(total, max_values, replace=False)))
    else:
        index = torch.arange(total)
    reference = flat[index].double().numpy()
    reference_abs = np.abs(reference)
    original_shares = original.positive_shares.double().numpy()

    units = _parametrized_units(model, x, device)
    if not units:
        raise ValueError("the model has no parametrized layers to randomize")
    if layers == "all":
        schedule = [[name for unit in units for name in unit]]
    else:
        top = list(reversed(units))
        schedule = [top[k] for k in range(len(top) if layers == "top" else min(int(layers), len(top)))]

    randomized = copy.deepcopy(model)
    randomized.eval()
    done: list[str] = []
    stages = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for names in schedule:
            _reinitialize(randomized, names)
            done.extend(names)
            try:
                explanation = explain(randomized)
                if not torch.isfinite(explanation.relevance).all():
                    raise ValueError("the randomized model's explanation contains NaN/Inf values")
            except ValueError as error:  # e.g. every region voxel excluded in the random model
                stages.append(RandomizationStage(tuple(done), float("nan"), float("nan"),
                                                 np.full_like(original_shares, np.nan), float("nan"), str(error)))
                continue
            values = explanation.relevance.reshape(-1)[index].double().numpy()
            shares = explanation.positive_shares.double().numpy()
            stages.append(RandomizationStage(
                layers=tuple(done),
                correlation=spearman(reference_abs, np.abs(values)),
                correlation_signed=spearman(reference, values),
                positive_shares=shares,
                shares_change=float(0.5 * np.abs(shares - original_shares).sum())))
    last = stages[-1]
    return RandomizationResult(correlation=last.correlation, correlation_signed=last.correlation_signed,
                               original_shares=original_shares, randomized_shares=last.positive_shares,
                               shares_change=last.shares_change, stages=stages, layers=layers,
                               n_values=int(index.numel()))
