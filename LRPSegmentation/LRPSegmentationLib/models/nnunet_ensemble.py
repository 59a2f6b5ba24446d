"""`NNUNetEnsemble`: what nnU-Net's predictor computes for a patch, as one ``nn.Module``.

Registered as architecture ``"nnunet.ensemble"`` (see ``nnunet`` for reading the folders). The
network classes come from dynamic_network_architectures (an optional dependency, imported when a
network is built), resolved from `nnunet.NETWORK_CLASSES` only.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .nnunet import INSTALL_HINT, NETWORK_CLASSES, check_network, inverse_permutation, torch_op_names

__all__ = ["NNUNetEnsemble"]


def _network_class(name: str) -> type[nn.Module]:
    try:
        from dynamic_network_architectures.architectures import unet
    except ImportError:
        raise ValueError(f"nnU-Net networks need dynamic_network_architectures, which is not installed: "
                         f"{INSTALL_HINT}") from None
    return getattr(unet, NETWORK_CLASSES[name][1])


class NNUNetEnsemble(nn.Module):
    """The mean over folds and mirrorings of nnU-Net's networks, on nnU-Net's axis order.

    ``forward``: x (N, C, D, H, W) → logits (N, K, D, H, W) =
    permute⁻¹( mean over folds f and mirrorings m of  m(net_f(m(permute(x)))) ),
    with permute = ``transpose_forward`` and m ranging over the identity and every non-empty subset
    of ``mirror_axes`` (axes of the transposed spatial dimensions, as nnU-Net stores them). Every
    step is linear in the networks' outputs, so LRP of the ensemble is exact in O(1) passes.

    Args (the package's JSON ``architecture.kwargs``):
        network_class_name: an allow-listed dynamic_network_architectures class (`nnunet.NETWORK_CLASSES`).
        arch_kwargs: its keyword arguments as in plans.json (``conv_op`` etc. as strings).
        kw_requires_import: which ``arch_kwargs`` name torch.nn classes (allow-listed).
        input_channels, num_classes: C and K.
        folds: fold names ("0", "1", ..., "all"); the weights of fold f are under ``folds.fold_<f>.``.
        mirror_axes: flip axes (subset of 0, 1, 2), or [] / None for no mirroring.
        transpose_forward: nnU-Net's permutation of the spatial axes (D, H, W).
    """

    def __init__(self, network_class_name: str, arch_kwargs: dict[str, Any], kw_requires_import: Sequence[str],
                 input_channels: int, num_classes: int, folds: Sequence[str], mirror_axes: Sequence[int] | None,
                 transpose_forward: Sequence[int] = (0, 1, 2)) -> None:
        super().__init__()
        check_network({"network_class_name": network_class_name, "arch_kwargs": arch_kwargs,
                       "kw_requires_import": kw_requires_import})
        if isinstance(folds, str) or not folds or len(set(map(str, folds))) != len(folds) or \
                not all(re.fullmatch(r"\d+|all", str(f)) for f in folds):
            raise ValueError(f"folds must be distinct fold names ('0', '1', ..., 'all'), got {folds!r}")
        axes = list(mirror_axes or [])
        if len(set(axes)) != len(axes) or not all(isinstance(a, int) and 0 <= a <= 2 for a in axes):
            raise ValueError(f"mirror_axes must be distinct axes among 0, 1, 2, got {mirror_axes!r}")
        if sorted(transpose_forward) != [0, 1, 2]:
            raise ValueError(f"transpose_forward must be a permutation of [0, 1, 2], got {transpose_forward!r}")
        network = _network_class(network_class_name)
        ops = torch_op_names()
        resolved = dict(arch_kwargs)
        for key in kw_requires_import:
            if resolved[key] is not None:
                resolved[key] = getattr(nn, ops[resolved[key]])
        resolved["deep_supervision"] = False  # inference: the full-resolution head only
        self.folds = nn.ModuleDict({f"fold_{f}": network(input_channels=input_channels, num_classes=num_classes,
                                                         **resolved) for f in folds})
        # nnU-Net's order: the identity, then every combination of the axes (on the transposed data)
        self.flips = [()] + [tuple(a + 2 for a in combination) for size in range(1, len(axes) + 1)
                             for combination in itertools.combinations(axes, size)]
        self.transposed = list(transpose_forward) != [0, 1, 2]
        self.forward_order = [0, 1] + [a + 2 for a in transpose_forward]
        self.backward_order = [0, 1] + [a + 2 for a in inverse_permutation(transpose_forward)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            x = x.permute(*self.forward_order)
        # On the "meta" device (shape checks: no values) one network gives the ensemble's shape.
        members = list(self.folds.values())[:1] if x.device.type == "meta" else self.folds.values()
        flips = self.flips[:1] if x.device.type == "meta" else self.flips
        total = None
        for network in members:
            for axes in flips:
                y = network(x.flip(axes)).flip(axes) if axes else network(x)
                total = y if total is None else total + y
        mean = total / (len(members) * len(flips))
        return mean.permute(*self.backward_order) if self.transposed else mean
