"""Bounds on architecture arguments, checked before a network is allocated.

A package's ``model.json`` chooses the arguments of the network it builds; a hand edit or a damaged
file must not make the tool allocate hundreds of gigabytes (or fail deep inside torch). The
built-in builders check their integers against these ranges, and the registry sizes every network
on PyTorch's "meta" device (no memory) against `MAX_PARAMETERS` before building it for real.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

#: Most values (parameters and buffers) a network may have: 8 GB in float32, 90 × the seed's U-Net.
MAX_PARAMETERS = 2_000_000_000
#: Input sequences and output classes.
MAX_IO_CHANNELS = 1024
#: Feature channels of one layer.
MAX_FEATURES = 65536
#: Downsampling levels of `UNet3D` (inputs must be multiples of 2**depth).
MAX_DEPTH = 8
#: Kernel sizes and strides.
MAX_KERNEL = 32


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer(value: Any, name: str, low: int, high: int) -> int:
    """``value`` as an int in [low, high], or a ValueError naming ``name`` and the range."""
    if not _is_int(value) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def integers(value: Any, name: str, high: int, count: int | None = None, nested: bool = False) -> list:
    """A list of ints in [1, high] (``count`` of them when given); with ``nested`` an entry may also
    be a list of such ints (per-axis kernel sizes or strides). Else a ValueError naming ``name``."""
    what = f"{'' if count is None else f'{count} '}positive integers up to {high}"
    if nested:
        what += " (or per-axis lists of them)"

    def ok(item: Any, depth: int) -> bool:
        if _is_int(item):
            return 1 <= item <= high
        return depth == 0 and nested and isinstance(item, Sequence) and not isinstance(item, str) \
            and len(item) > 0 and all(ok(i, 1) for i in item)

    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value \
            or (count is not None and len(value) != count) or not all(ok(v, 0) for v in value):
        shown = list(value) if isinstance(value, (tuple, list)) else value
        raise ValueError(f"{name} must be {what}, got {shown!r}")
    return list(value)
