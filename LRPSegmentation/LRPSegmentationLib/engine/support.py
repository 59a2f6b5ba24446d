"""Bounding boxes of the part of a tensor a pass needs, so that convolutions skip the rest.

A painted region is small, and so are the nonzero relevance near the output and the output voxels
whose normalization a region needs. A `Box` is a half-open index range per spatial dimension,
``((start, stop), ...)``; None stands for "the whole tensor" wherever a box is accepted. A box may
always be larger than needed (that only costs time), never smaller.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch

Box = tuple[tuple[int, int], ...]

#: A convolution runs on a box only when the box is at most this fraction of its output: cropping and
#: placing cost a copy each, and a box near the whole tensor saves little.
MOST_OF = 0.5


def bounding_box(mask: torch.Tensor) -> Box | None:
    """The smallest box holding every True of ``mask`` (*spatial, bool); None if there is none."""
    box = []
    for axis in range(mask.dim()):
        others = tuple(a for a in range(mask.dim()) if a != axis)
        hits = (mask.any(others) if others else mask).nonzero().flatten()
        if hits.numel() == 0:
            return None
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def union(boxes: Iterable[Box | None]) -> Box | None:
    """The smallest box holding all ``boxes``; None (the whole tensor) if any of them is None."""
    result = None
    for box in boxes:
        if box is None:
            return None
        result = box if result is None else tuple((min(a, c), max(b, d)) for (a, b), (c, d) in zip(result, box))
    return result


def volume(box: Box) -> int:
    return math.prod(b - a for a, b in box)


def is_small(box: Box | None, spatial: Iterable[int]) -> bool:
    """Whether working on ``box`` alone pays, inside a tensor of this spatial shape (see `MOST_OF`)."""
    return box is not None and volume(box) <= MOST_OF * math.prod(spatial)


def slices(box: Box) -> tuple[slice, ...]:
    """Index of the box's content in an (N, C, *spatial) tensor."""
    return (slice(None), slice(None)) + tuple(slice(a, b) for a, b in box)


def mask_of(box: Box, spatial: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A bool tensor of shape ``spatial``, True inside ``box``."""
    mask = torch.zeros(spatial, dtype=torch.bool, device=device)
    mask[tuple(slice(a, b) for a, b in box)] = True
    return mask
