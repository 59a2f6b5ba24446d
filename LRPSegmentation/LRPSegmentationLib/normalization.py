"""Intensity normalization: the network input's values, exactly as the model was trained.

A model package stores one method dict per sequence (``validate_normalization`` completes and
checks it); ``normalize_sequences`` applies them to a (C, D, H, W) stack on the case grid. Before
any scale is estimated, ``check_intensities`` refuses what cannot be normalized faithfully (NaN/Inf,
subnormal, constant sequences); z-score and percentile normalization and the Otsu foreground mask
do not depend on the intensity unit (a sequence times any positive factor gives the same input).
The fixed ``window`` (a CT Hounsfield window) does: it is for images in a calibrated unit.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

__all__ = ["NORMALIZATION_TYPES", "check_finite", "check_intensities", "foreground_mask", "normalize",
           "normalize_sequences", "validate_normalization"]


#: Normalization types and their settings with defaults. A method dict names a ``"type"`` and
#: may override any of that type's settings; ``validate_normalization`` fills in the rest.
NORMALIZATION_TYPES: dict[str, dict[str, Any]] = {
    "zscore": {"mask": "foreground", "foreground_threshold": "otsu"},
    "percentile": {"lower": 0.5, "upper": 99.5, "range": [0.0, 1.0], "mask": "none",
                   "foreground_threshold": "otsu"},
    # low and high have no default: a window is chosen for the model (e.g. HU -57..164 for spleen CT).
    "window": {"low": None, "high": None, "range": [0.0, 1.0], "clip": True},
    "none": {},
}


def validate_normalization(method: Mapping[str, Any]) -> dict[str, Any]:
    """Check a normalization method dict and return it complete (defaults filled in, JSON-able).

    Methods:

    * ``{"type": "zscore", "mask": "foreground" | "none" | "nonzero", "foreground_threshold": "otsu" | t}``:
      subtract the mean and divide by the standard deviation, both computed inside the mask
      (see ``foreground_mask``) and applied to every voxel; with ``"nonzero"`` both are computed
      over the voxels != 0 and only those are normalized, zeros stay 0 (MONAI's
      ``NormalizeIntensity(nonzero=True)``, e.g. skull-stripped MRI).
    * ``{"type": "percentile", "lower": 0.5, "upper": 99.5, "range": [0, 1], "mask": ...}``:
      clip to the lower/upper percentiles (of the masked voxels) and rescale linearly so they
      map to ``range``.
    * ``{"type": "window", "low": a, "high": b, "range": [0, 1], "clip": true}``: a fixed
      intensity window, e.g. Hounsfield units for CT: ``a`` maps to ``range[0]``, ``b`` to
      ``range[1]``, linearly; with ``clip`` values outside are clipped to ``range`` (MONAI's
      ``ScaleIntensityRange(a_min=a, a_max=b, b_min=range[0], b_max=range[1], clip=...)``).
      No statistics: it does not adapt to the image, so the intensities must be in the unit the
      window was chosen for.
    * ``{"type": "none"}``: values unchanged (as float32).

    Raises:
        ValueError: unknown type, unknown setting or invalid value; the message lists the valid
            choices.
    """
    if not isinstance(method, Mapping) or "type" not in method:
        raise ValueError(f"a normalization method is a dict with a 'type' key "
                         f"(one of {sorted(NORMALIZATION_TYPES)}), got {method!r}")
    kind = method["type"]
    if kind not in NORMALIZATION_TYPES:
        raise ValueError(f"unknown normalization type {kind!r}; valid types: "
                         f"{sorted(NORMALIZATION_TYPES)}")
    defaults = NORMALIZATION_TYPES[kind]
    unknown = sorted(set(method) - set(defaults) - {"type"})
    if unknown:
        raise ValueError(f"normalization {kind!r} has no setting(s) {unknown}; valid settings: "
                         f"{sorted(defaults)}")
    complete: dict[str, Any] = {"type": kind, **defaults, **method}

    masks = ("foreground", "none", "nonzero") if kind == "zscore" else ("foreground", "none")
    if "mask" in complete and complete["mask"] not in masks:
        raise ValueError(f"normalization mask must be 'foreground' or 'none' (zscore also 'nonzero'), "
                         f"got {complete['mask']!r}")
    if "foreground_threshold" in complete:
        threshold = complete["foreground_threshold"]
        is_number = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
        if threshold != "otsu" and not (is_number and math.isfinite(threshold)):
            raise ValueError(f"foreground_threshold must be 'otsu' or a finite intensity, "
                             f"got {threshold!r}")
    if kind == "percentile":
        try:
            lower, upper = float(complete["lower"]), float(complete["upper"])
            value_range = [float(v) for v in complete["range"]]
        except (TypeError, ValueError):
            raise ValueError(f"percentile normalization needs numbers lower, upper and a pair "
                             f"range, got {method!r}") from None
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"percentile normalization needs 0 <= lower < upper <= 100, "
                             f"got lower={lower}, upper={upper}")
        if len(value_range) != 2 or not value_range[0] < value_range[1]:
            raise ValueError(f"percentile range must be [low, high] with low < high, "
                             f"got {complete['range']!r}")
        complete.update(lower=lower, upper=upper, range=value_range)
    if kind == "window":
        complete.update(_validate_window(complete))
    return complete


def _validate_window(method: Mapping[str, Any]) -> dict[str, Any]:
    """low, high, range and clip of a ``window`` method, checked and as plain floats/bool."""
    def finite(value: Any, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"window normalization needs a finite number {what}, got {value!r}")
        return float(value)

    low, high = finite(method["low"], "low"), finite(method["high"], "high")
    if not low < high:
        raise ValueError(f"window normalization needs low < high (the intensities mapped to range[0] and "
                         f"range[1]), got low={low:g}, high={high:g}")
    value_range = method["range"]
    if isinstance(value_range, (str, Mapping)) or not isinstance(value_range, Sequence) or len(value_range) != 2:
        raise ValueError(f"window range must be [low, high], got {value_range!r}")
    value_range = [finite(v, "in range") for v in value_range]
    if not value_range[0] < value_range[1]:
        raise ValueError(f"window range must be [low, high] with low < high, got {method['range']!r}")
    if not isinstance(method["clip"], bool):
        raise ValueError(f"window clip must be true or false, got {method['clip']!r}")
    return {"low": low, "high": high, "range": value_range}


def check_finite(array: np.ndarray, name: str) -> None:
    """Raise ValueError if ``array`` has NaN or infinite voxels (they would poison every output)."""
    if array.dtype.kind in "fc":  # integers are always finite
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ValueError(f"{name}: {bad} voxels are NaN or infinite; replace them (e.g. by 0) "
                             f"and save the image again")


def check_intensities(array: np.ndarray, name: str = "image", constant_ok: bool = False) -> None:
    """Refuse intensities that no normalization can turn into a faithful network input.

    Args:
        array: the voxels of one sequence, in their stored dtype.
        name: what to call the sequence in error messages.
        constant_ok: accept a constant image (for ``{"type": "none"}``, which divides by nothing).

    Raises:
        ValueError: NaN or infinite voxels; subnormal floats (0 < |v| < the dtype's smallest
            normal number, e.g. 1.2e-38 for float32: an image scaled so small that its values
            have lost significant digits, which no rescaling restores); or a constant image.
    """
    array = np.asarray(array)
    check_finite(array, name)
    if array.dtype.kind == "f" and array.size:
        tiny = np.finfo(array.dtype).tiny
        subnormal = int(np.count_nonzero((np.abs(array) < tiny) & (array != 0)))
        if subnormal:
            raise ValueError(f"{name}: {subnormal} voxels are subnormal {array.dtype} numbers "
                             f"(0 < |value| < {tiny:.3g}): the intensities are scaled so small that "
                             f"precision is lost; export the image in its usual intensity range")
    if not constant_ok and array.size and array.min() == array.max():
        raise ValueError(f"{name} is constant (every voxel = {array.flat[0]:g}); it has no intensity "
                         f"scale to normalize — check the file")


def foreground_mask(array: np.ndarray, threshold: str | float = "otsu") -> np.ndarray:
    """Body/foreground voxels of one MRI volume: those brighter than a threshold.

    Args:
        array: (D, H, W) intensities.
        threshold: ``"otsu"`` — Otsu's threshold (SimpleITK, 128-bin histogram), which on MRI
            separates the dark air background from the body; air-filled holes inside the body
            (lungs, bowel gas) also fall below it, which is harmless for intensity statistics.
            A number: voxels strictly above that intensity (``0`` = the non-zero voxels).

    Returns:
        (D, H, W) bool mask. With ``"otsu"`` it does not depend on the intensity unit: scaling
        the image by any positive factor gives the same mask (to float rounding).
    """
    array = np.asarray(array)
    if threshold != "otsu":
        return array > threshold
    values = array.astype(np.float64)
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    if 0.0 < peak < math.inf:
        # ITK's Otsu histogram breaks down for tiny intensity ranges (1e-10 and below); scaling by
        # a power of two into [-1, 1] first is exact, so the mask ignores the image's unit.
        values = np.ldexp(values, -math.frexp(peak)[1])
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.Execute(sitk.GetImageFromArray(values.astype(np.float32)))
    return values > otsu.GetThreshold()


def normalize(array: np.ndarray, method: Mapping[str, Any], name: str = "image") -> np.ndarray:
    """Apply one intensity normalization (see ``validate_normalization``) to one sequence.

    Args:
        array: (D, H, W) intensities of one sequence.
        method: the normalization method dict.
        name: what to call the sequence in error messages.

    Returns:
        (D, H, W) float32 normalized array (a new array).

    ``zscore`` and ``percentile`` do not depend on the intensity unit: scaling the image by a
    positive factor gives the same result to float rounding.

    Raises:
        ValueError: invalid method; NaN, infinite or subnormal voxels (``check_intensities``);
            or, for ``zscore``/``percentile``, an image that is constant (inside its mask) or a
            mask with fewer than 2 voxels — these have no scale to normalize by, and dividing by
            zero would produce NaN.
    """
    method = validate_normalization(method)
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{name}: expected a (D, H, W) array, got shape {array.shape}")
    check_intensities(array, name, constant_ok=method["type"] in ("none", "window"))
    if method["type"] == "none":
        return array.astype(np.float32)
    values = array.astype(np.float64)
    if method["type"] == "window":
        low, high = method["range"]
        scaled = (values - method["low"]) / (method["high"] - method["low"]) * (high - low) + low
        return (np.clip(scaled, low, high) if method["clip"] else scaled).astype(np.float32)
    if method["mask"] == "nonzero":
        mask = values != 0
        statistics_values = values[mask]
        where = "among the non-zero voxels"
    elif method["mask"] == "foreground":
        mask = foreground_mask(values, method["foreground_threshold"])
        statistics_values = values[mask]
        where = f"inside the foreground mask (threshold {method['foreground_threshold']!r})"
    else:
        statistics_values = values.ravel()
        where = "over the image"
    if statistics_values.size < 2:
        raise ValueError(f"{name}: only {statistics_values.size} voxel(s) {where}; cannot "
                         f"normalize — use a lower foreground_threshold or mask 'none'")

    if method["type"] == "zscore":
        mean, std = statistics_values.mean(), statistics_values.std()
        if std == 0.0:
            raise ValueError(f"{name} is constant {where} (value {mean:g}); z-score is undefined "
                             f"— use mask 'none' or another normalization")
        if method["mask"] == "nonzero":  # zeros (outside the mask) stay 0
            return np.where(mask, (values - mean) / std, 0.0).astype(np.float32)
        return ((values - mean) / std).astype(np.float32)

    # percentile
    lower, upper = np.percentile(statistics_values, [method["lower"], method["upper"]])
    if upper <= lower:
        raise ValueError(f"{name}: percentiles {method['lower']} and {method['upper']} {where} "
                         f"are equal ({lower:g}); widen them or use another normalization")
    low, high = method["range"]
    scaled = (np.clip(values, lower, upper) - lower) / (upper - lower)
    return (scaled * (high - low) + low).astype(np.float32)


def normalize_sequences(array: np.ndarray,
                        methods: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                        names: Sequence[str] | None = None) -> np.ndarray:
    """Normalize every channel of a stacked (C, D, H, W) input.

    Args:
        array: (C, D, H, W) intensities, e.g. from ``read_sequences``.
        methods: one method dict for all channels, or a list of C dicts, one per channel.
        names: C sequence names, added to the channel index in error messages.

    Returns:
        (C, D, H, W) float32 normalized array (a new array).
    """
    array = np.asarray(array)
    if array.ndim != 4:
        raise ValueError(f"expected a (C, D, H, W) array, got shape {array.shape}")
    channels = array.shape[0]
    if isinstance(methods, Mapping):
        methods = [methods] * channels
    if len(methods) != channels:
        raise ValueError(f"got {len(methods)} normalization methods for {channels} channels; "
                         f"give one per channel or a single dict for all")
    if names is not None and len(names) != channels:
        raise ValueError(f"got {len(names)} names for {channels} channels")
    normalized = np.empty(array.shape, dtype=np.float32)
    for channel, method in enumerate(methods):
        label = f"sequence {channel}" + (f" ({names[channel]})" if names is not None else "")
        normalized[channel] = normalize(array[channel], method, name=label)
    return normalized
