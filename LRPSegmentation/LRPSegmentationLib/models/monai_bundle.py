"""MONAI bundles as they lie on disk, read without running any of their code.

A bundle (MONAI's model zoo layout)::

    spleen_ct_segmentation/
        configs/inference.json    network_def, preprocessing, inferer, postprocessing (or .yaml/.yml)
        configs/metadata.json     names of the input channels and output classes (optional here)
        models/model.pt           the weights: a state dict saved with torch.save

Importing executes nothing from the folder: the configs are parsed as JSON (YAML with PyYAML), the
weights are read with ``torch.load(weights_only=True)`` (tensors only), and the network is built by
the architecture registry from its ``_target_`` class name. MONAI's config syntax is followed as far
as literal values go: ``@id`` references (``::`` or ``#`` between levels), ``$@id`` (the same),
``%file::id`` macros inside the bundle; any other ``$`` Python expression that a needed value
depends on is refused with the key's name (a value that does not matter, e.g. ``device``, is never
looked at).

What MONAI does before and after the network is mapped onto the package fields (`load`), and
what cannot be mapped is refused with an error naming the transform:

=========================================  ================================================================
MONAI                                      LRPSegmentation package
=========================================  ================================================================
``network_def`` ``_target_`` + literals    architecture ``monai.<Class>`` (any the registry has) + kwargs
LoadImaged, EnsureChannelFirstd,           nothing (no effect on values; casts only to float32/64)
EnsureTyped, ToTensord, CastToTyped
Orientationd(axcodes)                      ``orientation`` = axcodes (e.g. "RAS"): the pipeline reorients too
Spacingd(pixdim)                           ``target_spacing`` (x, y, z) mm
ScaleIntensityRanged(a_min, a_max,         ``{"type": "window", "low": a_min, "high": a_max,
b_min, b_max, clip)                        "range": [b_min, b_max], "clip": clip}``
NormalizeIntensityd(nonzero, channel_wise) ``{"type": "zscore", "mask": "nonzero" | "none"}``
ScaleIntensityd(minv, maxv)                ``{"type": "percentile", "lower": 0, "upper": 100, "range": [minv, maxv]}``
ScaleIntensityRangePercentilesd(clip=True) ``{"type": "percentile", "lower", "upper", "range": [b_min, b_max]}``
CropForegroundd                            refused: cropping changes the logits everywhere in the box
SlidingWindowInferer(roi_size, overlap)    ``patch_size`` (roi_size reversed: D, H, W), ``overlap``
metadata.json channel_def (in / out)       sequence names / class names ("channel 0", "class 0"... if absent)
Activationsd(sigmoid=True), thresholds     refused: multi-label outputs are not mutually exclusive classes
=========================================  ================================================================

**Axis order.** MONAI's ``LoadImage`` gives arrays indexed (x, y, z) (ITK with its default
``reverse_indexing``, or nibabel); this package's pipeline gives SimpleITK's (z, y, x). The
package's network is therefore `BundleNetwork` (architecture ``"monai_bundle.network"``): it
reverses the spatial axes of its input, runs the MONAI network and reverses its logits back — a
permutation, which the LRP engine propagates exactly. ``roi_size`` is reversed into ``patch_size``
likewise; ``pixdim`` is already (x, y, z).

**Orientation.** ``Orientationd`` turns every image into the ``axcodes`` orientation (e.g. RAS) by
flipping and permuting voxels. It becomes the package's ``orientation``, and the case pipeline
does the same flips and permutations (`imaging.reorient`, exact) before resampling, so the network
sees MONAI's voxel order whatever orientation an image is stored in. Outputs are written on that
reoriented grid, with its geometry, so they overlay the original images.
"""
from __future__ import annotations

import json
import math
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..imaging import check_orientation
from ..vocabulary import DEFAULT_COMPOSITE, default_class_colors
from .metadata import PackageDescription

if TYPE_CHECKING:  # torch stays out of `detect` and `describe` (the Slicer module uses them before torch exists)
    from .package import ModelPackage

__all__ = ["BUNDLE_ARCHITECTURE", "CONFIG_FILES", "WEIGHTS_FILE", "detect", "describe", "load"]

#: The inference config, first found wins (relative to the bundle folder).
CONFIG_FILES = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")
METADATA_FILE = "configs/metadata.json"
WEIGHTS_FILE = "models/model.pt"
TORCHSCRIPT_FILE = "models/model.ts"
#: Registry name of `BundleNetwork`; its kwargs are {"network": "monai.<Class>", "kwargs": {...}}.
BUNDLE_ARCHITECTURE = "monai_bundle.network"

#: Transforms that do not change the voxel values the network sees (dtype casts are checked).
_NO_EFFECT = {"LoadImage", "EnsureChannelFirst", "AddChannel", "EnsureType", "ToTensor", "CastToType", "Identity"}
_INTENSITY = {"ScaleIntensityRange", "NormalizeIntensity", "ScaleIntensity", "ScaleIntensityRangePercentiles"}
_SUPPORTED = sorted(_NO_EFFECT | _INTENSITY | {"Orientation", "Spacing"})
#: Postprocessing that only acts on the prediction after the logits; the prediction here is argmax.
_POST_NOTED = {"Invert", "SaveImage", "KeepLargestConnectedComponent", "FillHoles", "RemoveSmallObjects",
               "LabelFilter", "CopyItems", "DeleteItems"}
#: Config keys that are MONAI's instructions, not arguments of the class.
_SPECIAL_KEYS = {"_target_", "_desc_", "_requires_", "_disabled_", "_mode_"}
_FLOAT_DTYPE = re.compile(r"\$?(torch|np|numpy)\.(float32|float64|float|double)|float32|float64")
_REF = re.compile(r"\$?@([A-Za-z0-9_\-:#]+)")  # "$@a.b(...)" is an expression, not a reference
#: Image readers of LoadImage; all of them give (x, y, z) arrays.
_READERS = {None, "ITKReader", "NibabelReader", "PydicomReader", "NrrdReader"}


def _config_file(folder: Path) -> Path | None:
    return next((folder / name for name in CONFIG_FILES if (folder / name).is_file()), None)


def _bundle_folder(path: Path) -> Path:
    """The bundle folder for the folder itself or a file in its ``configs/`` (e.g. inference.json)."""
    path = Path(path)
    if path.is_file() and path.parent.name == "configs":
        return path.parent.parent
    return path


def detect(path: Path) -> bool:
    """Whether ``path`` is (or is a config file of) a MONAI bundle: a folder with configs/inference.json
    (or .yaml/.yml). Reads nothing but the folder listing."""
    folder = _bundle_folder(Path(path))
    return folder.is_dir() and _config_file(folder) is not None


# --------------------------------------------------------------------------------------------
# The config: literal values only
# --------------------------------------------------------------------------------------------
def _read_structured(file: Path, label: str) -> Any:
    """A JSON or YAML file's content (YAML needs PyYAML: safe_load, no Python objects)."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{label} is not a text file: {error}") from None
    if file.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{label} is not valid JSON: {error}") from None
    try:
        import yaml
    except ImportError:
        raise ValueError(f"{label} is YAML, which needs PyYAML: pip install pyyaml") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{label} is not valid YAML: {' '.join(str(error).split())}") from None


def _split_id(config_id: str) -> list[str]:
    return [part for part in re.split(r"::|#", config_id) if part != ""]


class _Config:
    """One bundle config: look up ids and resolve values to literals (see the module docstring)."""

    def __init__(self, data: Any, file: Path, folder: Path) -> None:
        if not isinstance(data, dict):
            raise ValueError(f"{file} must hold a JSON object, got {type(data).__name__}")
        self.data, self.folder = data, folder
        self.label = str(file.relative_to(folder)) if file.is_relative_to(folder) else str(file)

    def raw(self, config_id: str) -> Any:
        """The unresolved value at ``config_id`` (``a::b::0``)."""
        value = self.data
        for part in _split_id(config_id):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                raise ValueError(f"{self.label}: no '{config_id}' (a reference points to it)")
        return value

    def follow(self, value: Any, where: str, depth: int = 0) -> Any:
        """``value`` with a top-level reference or macro replaced by what it points to (nested
        values are left as they are)."""
        if depth > 32:
            raise ValueError(f"{self.label}: '{where}' references form a cycle")
        if not isinstance(value, str):
            return value
        if match := _REF.fullmatch(value):
            target = match.group(1)
            if target.startswith((":", "#")):
                raise ValueError(f"{self.label}: '{where}' uses a relative reference {value!r}; write the full id")
            return self.follow(self.raw(target), target.replace("#", "::"), depth + 1)
        if value.startswith("%"):
            return self.follow(self._macro(value, where), where, depth + 1)
        if value.startswith("$") and not _FLOAT_DTYPE.fullmatch(value):
            raise ValueError(f"{self.label}: '{where}' is a Python expression ({value!r}), which importing never "
                             "runs; replace it by its literal value")
        return value

    def resolve(self, value: Any, where: str, depth: int = 0) -> Any:
        """``value`` with every reference and macro in it resolved to literal JSON values."""
        value = self.follow(value, where, depth)
        if isinstance(value, dict):
            return {k: self.resolve(v, f"{where}::{k}", depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, f"{where}::{i}", depth + 1) for i, v in enumerate(value)]
        return value

    def argument(self, item: dict[str, Any], name: str, where: str, default: Any = None) -> Any:
        """Argument ``name`` of a ``_target_`` item, resolved; ``default`` when absent."""
        return self.resolve(item[name], f"{where}::{name}") if name in item else default

    def _macro(self, value: str, where: str) -> Any:
        """``%id`` (this file) or ``%configs/other.json::id`` (a file inside the bundle)."""
        text = value[1:]
        match = re.match(r"(.+?\.(?:json|ya?ml))(?:::|#|$)(.*)", text)
        if not match:
            return self.raw(text)
        file = (self.folder / match.group(1)).resolve()
        if not file.is_relative_to(self.folder.resolve()) or not file.is_file():
            raise ValueError(f"{self.label}: '{where}' includes {match.group(1)!r}, which is not a file in the bundle")
        return _Config(_read_structured(file, str(file)), file, self.folder).raw(match.group(2))

    def class_name(self, item: Any, where: str, namespace: str) -> str:
        """The MONAI class an item's ``_target_`` names: ``Name``, ``monai.<namespace>.Name`` or
        ``monai.<namespace>.<module>.Name``; anything else would be the bundle's own code."""
        if not isinstance(item, dict) or "_target_" not in item:
            raise ValueError(f"{self.label}: '{where}' must be an object with a _target_, got {item!r}")
        target = self.follow(item["_target_"], f"{where}::_target_")
        parts = target.split(".") if isinstance(target, str) else []
        prefix = ["monai", *namespace.split(".")]
        if not parts or not parts[-1].isidentifier() or not (
                len(parts) == 1 or (parts[:len(prefix)] == prefix and len(parts) in (len(prefix) + 1, len(prefix) + 2))):
            raise ValueError(f"{self.label}: '{where}' names {target!r}, which is not a class of monai.{namespace}; "
                             "a bundle's own code is never imported")
        mode = item.get("_mode_", "default")
        if mode != "default":
            raise ValueError(f"{self.label}: '{where}' has _mode_ {mode!r}; only plain instances can be imported")
        return parts[-1]

    def disabled(self, item: dict[str, Any], where: str) -> bool:
        value = self.resolve(item.get("_disabled_", False), f"{where}::_disabled_")
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise ValueError(f"{self.label}: '{where}::_disabled_' must be true or false, got {value!r}")
        return value

    def transforms(self, key: str) -> list[tuple[str, str, str, dict[str, Any]]]:
        """(class name without the dictionary 'd', class name, config id, item) of each enabled
        transform of ``key`` (a Compose, or a list)."""
        value = self.follow(self.raw(key), key)
        where = key
        if isinstance(value, dict):
            if self.class_name(value, key, "transforms") != "Compose":
                value = [value]
            else:
                where = f"{key}::transforms"
                value = self.follow(value.get("transforms", []), where)
        if not isinstance(value, list):
            raise ValueError(f"{self.label}: '{key}' must be a Compose or a list of transforms, got {value!r}")
        items = []
        for index, raw in enumerate(value):
            item_where = f"{where}::{index}"
            item = self.follow(raw, item_where)
            name = self.class_name(item, item_where, "transforms")
            if not self.disabled(item, item_where):
                items.append((name[:-1] if name.endswith("d") and name[:-1] in _KNOWN_BASES else name,
                              name, item_where, item))
        return items


#: Transform base names whose dictionary version ends in "d" (so "Spacingd" → "Spacing").
_KNOWN_BASES = set(_SUPPORTED) | {"Activations", "AsDiscrete", "Compose", "CropForeground", "Lambda",
                                   "SqueezeDim"} | _POST_NOTED


# --------------------------------------------------------------------------------------------
# Mapping a bundle onto the package fields
# --------------------------------------------------------------------------------------------
@dataclass
class _Bundle:
    """What a bundle maps to (`_read`): the package fields, torch-free, plus notes for the user."""

    folder: Path
    name: str
    network: str
    network_kwargs: dict[str, Any]
    sequences: list[str]
    normalization: dict[str, Any]
    target_spacing: list[float]
    class_names: list[str]
    patch_size: list[int]
    overlap: float
    description: str
    orientation: str | None = None
    notes: list[str] = field(default_factory=list)
    bundle_version: Any = None

    @property
    def architecture_kwargs(self) -> dict[str, Any]:
        return {"network": self.network, "kwargs": self.network_kwargs}

    @property
    def training_info(self) -> dict[str, Any]:
        return {"source": "MONAI bundle", "bundle": self.folder.name, "bundle_version": self.bundle_version,
                "notes": self.notes}


def _positive_numbers(value: Any, what: str, integer: bool = False) -> list[Any]:
    """Three positive numbers from a number or a list of 3 (MONAI repeats a single value)."""
    values = [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if not isinstance(values, list) or len(values) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{what} must be 3 positive numbers, got {value!r}")
    if integer and not all(float(v).is_integer() for v in values):
        raise ValueError(f"{what} must be 3 positive integers, got {value!r}")
    return [int(v) for v in values] if integer else [float(v) for v in values]


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _network(config: _Config) -> tuple[str, dict[str, Any]]:
    """("monai.<Class>", literal kwargs) of ``network_def``."""
    if "network_def" not in config.data:
        raise ValueError(f"{config.label} has no network_def")
    item = config.follow(config.data["network_def"], "network_def")
    name = config.class_name(item, "network_def", "networks.nets")
    kwargs = {k: config.resolve(v, f"network_def::{k}") for k, v in item.items() if k not in _SPECIAL_KEYS}
    nested = [k for k, v in kwargs.items() if "_target_" in json.dumps(v)]
    if nested:
        raise ValueError(f"{config.label}: network_def::{nested[0]} builds an object (_target_); only literal "
                         "arguments can be imported")
    if kwargs.get("spatial_dims", 3) != 3:
        raise ValueError(f"{config.label}: network_def has spatial_dims {kwargs['spatial_dims']!r}; "
                         "LRPSegmentation explains 3D networks")
    return f"monai.{name}", kwargs


def _data_format(metadata: dict[str, Any], side: str, key: str) -> dict[str, Any]:
    """metadata.json's network_data_format.<side>.<key> ({} where absent)."""
    entry: Any = metadata
    for part in ("network_data_format", side, key):
        entry = entry.get(part, {}) if isinstance(entry, dict) else {}
    return entry if isinstance(entry, dict) else {}


def _channel_names(metadata: dict[str, Any], side: str, key: str, count: int, generic: str,
                   notes: list[str]) -> list[str]:
    """Names from metadata.json network_data_format.<side>.<key>.channel_def, or generic ones."""
    definition = _data_format(metadata, side, key).get("channel_def")
    if isinstance(definition, dict) and sorted(definition, key=str) == sorted(map(str, range(count)), key=str) \
            and all(isinstance(v, str) and v.strip() for v in definition.values()):
        return [definition[str(i)].strip() for i in range(count)]
    names = [f"{generic} {i}" for i in range(count)]
    notes.append(f"{METADATA_FILE} gives no {count} names in network_data_format.{side}.{key}.channel_def; "
                 f"named {names[0]!r}... (not the bundle's own names)")
    return names


def _io_count(kwargs: dict[str, Any], key: str, metadata: dict[str, Any], side: str, entry: str,
              label: str) -> int:
    """in_channels / out_channels from network_def, else metadata.json's num_channels."""
    value = kwargs.get(key)
    if value is None:
        value = _data_format(metadata, side, entry).get("num_channels")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{label}: network_def needs a positive integer {key} (or metadata.json "
                         f"network_data_format.{side}.{entry}.num_channels), got {value!r}")
    return value


def _check_float_cast(config: _Config, item: dict[str, Any], where: str, name: str) -> None:
    dtype = item.get("dtype")
    if isinstance(dtype, str) and dtype.startswith(("@", "%")):
        dtype = config.resolve(dtype, f"{where}::dtype")
    if dtype is not None and not (isinstance(dtype, str) and _FLOAT_DTYPE.fullmatch(dtype)):
        raise ValueError(f"{config.label}: '{where}' {name} casts to dtype {dtype!r}, which changes the values; "
                         "only float32/float64 casts can be imported")


def _preprocessing(config: _Config, channels: int, notes: list[str]
                   ) -> tuple[dict[str, Any], list[float] | None, str | None]:
    """(the normalization method for every channel, target spacing or None, orientation or None) of
    ``preprocessing``."""
    if "preprocessing" not in config.data:
        raise ValueError(f"{config.label} has no preprocessing; its transforms say how to prepare the input")
    normalization: dict[str, Any] | None = None
    spacing: list[float] | None = None
    orientation: str | None = None
    lps_affine = False  # LoadImage(affine_lps_to_ras=False): Orientationd's letters would mean LPS directions
    intensity_at = None
    for name, class_name, where, item in config.transforms("preprocessing"):
        arg = lambda key, default=None, item=item, where=where: config.argument(item, key, where, default)  # noqa: E731
        label = f"{config.label}: '{where}' ({class_name})"
        if name in _NO_EFFECT:
            _check_float_cast(config, item, where, class_name)
            if name == "LoadImage" and (arg("reverse_indexing", True) is False or arg("reader") not in _READERS):
                raise ValueError(f"{label} reads with reader {arg('reader')!r}, reverse_indexing "
                                 f"{arg('reverse_indexing', True)!r}; only 3D readers giving (x, y, z) arrays "
                                 f"({', '.join(sorted(r for r in _READERS if r))}) can be imported")
            lps_affine = lps_affine or (name == "LoadImage" and arg("affine_lps_to_ras", True) is False)
        elif name == "Orientation":
            if lps_affine:
                raise ValueError(f"{label} follows a LoadImaged with affine_lps_to_ras=false, which makes its axcodes "
                                 "LPS directions; only the default (RAS) can be imported")
            orientation = _orientation(arg, label)
            if spacing is not None:
                notes.append("Spacingd comes before Orientationd in the bundle; here the image is reoriented first")
        elif name == "Spacing":
            spacing = _positive_numbers(arg("pixdim"), f"{label} pixdim")
            if intensity_at is not None:
                notes.append(f"{intensity_at} comes before Spacingd in the bundle; here the image is resampled first")
            notes.append("resampled to the target spacing by this pipeline (linear, same centre), not by "
                         "MONAI's Spacingd: voxel values can differ slightly where the spacing changes")
        elif name in _INTENSITY:
            if normalization is not None:
                raise ValueError(f"{label} follows {intensity_at}: chained intensity transforms cannot be mapped "
                                 "onto one normalization per sequence")
            normalization, intensity_at = _intensity(name, arg, channels, label), name
        elif name == "CropForeground":
            # Not only at the box's edges: the receptive field and instance-norm statistics span the
            # patch (a 3-level MONAI UNet: logits changed by up to 70 % of their range, 6 voxels inside).
            raise ValueError(f"{label} crops each image to its foreground box before the network, which changes "
                             "the network's outputs everywhere (receptive field, normalization statistics); this "
                             "pipeline runs on the whole volume, so the bundle cannot be imported faithfully")
        else:
            raise ValueError(f"{label}: preprocessing transform {class_name} has no equivalent in LRPSegmentation "
                             f"(supported: {', '.join(n + 'd' for n in _SUPPORTED)})")
    if normalization is None:
        notes.append("no intensity transform in preprocessing: the network sees the image values unchanged")
        normalization = {"type": "none"}
    return normalization, spacing, orientation


#: MONAI's default ``labels`` of Orientation: the codes' letters mean RAS+ world directions, as nibabel's.
_MONAI_LABELS = [["L", "R"], ["P", "A"], ["I", "S"]]


def _orientation(arg, label: str) -> str:
    """The orientation code an ``Orientationd`` turns images into (``arg(key, default)`` reads its arguments)."""
    labels = arg("labels", _MONAI_LABELS)
    if labels is None:  # MONAI's coming default: the image's space, RAS after LoadImage (affine_lps_to_ras)
        labels = _MONAI_LABELS
    if not isinstance(labels, (list, tuple)) or [list(pair) if isinstance(pair, (list, tuple)) else pair
                                                 for pair in labels] != _MONAI_LABELS:
        raise ValueError(f"{label} has labels {labels!r}; only MONAI's default (('L', 'R'), ('P', 'A'), ('I', 'S')) "
                         "can be imported")
    if arg("as_closest_canonical", False) is True:
        return "RAS"
    axcodes = arg("axcodes")
    if axcodes is None:
        raise ValueError(f"{label} has neither axcodes nor as_closest_canonical=true; give axcodes (e.g. \"RAS\")")
    return check_orientation(axcodes, f"{label} axcodes")


def _intensity(name: str, arg, channels: int, label: str) -> dict[str, Any]:
    """The normalization method of one MONAI intensity transform (``arg(key, default)`` reads its arguments)."""
    if arg("channel_wise", False) is not True and channels > 1 and name != "ScaleIntensityRange":
        raise ValueError(f"{label} with channel_wise false uses statistics of all {channels} channels together; "
                         "LRPSegmentation normalizes each sequence on its own")
    if name == "ScaleIntensityRange":
        b_min, b_max = arg("b_min"), arg("b_max")
        if b_min is None or b_max is None:
            raise ValueError(f"{label} needs b_min and b_max")
        return {"type": "window", "low": _number(arg("a_min"), f"{label} a_min"),
                "high": _number(arg("a_max"), f"{label} a_max"),
                "range": [_number(b_min, f"{label} b_min"), _number(b_max, f"{label} b_max")],
                "clip": bool(arg("clip", False))}
    if name == "NormalizeIntensity":
        if arg("subtrahend") is not None or arg("divisor") is not None:
            raise ValueError(f"{label} with a fixed subtrahend/divisor is not supported")
        return {"type": "zscore", "mask": "nonzero" if arg("nonzero", False) else "none"}
    if name == "ScaleIntensity":
        if arg("factor") is not None or arg("minv", 0.0) is None or arg("maxv", 1.0) is None:
            raise ValueError(f"{label}: only the min-max rescaling (minv, maxv; no factor) is supported")
        return {"type": "percentile", "lower": 0.0, "upper": 100.0, "mask": "none",
                "range": [_number(arg("minv", 0.0), f"{label} minv"), _number(arg("maxv", 1.0), f"{label} maxv")]}
    # ScaleIntensityRangePercentiles: the percentile normalization always clips
    if not arg("clip", False) or arg("relative", False):
        raise ValueError(f"{label}: only clip=true, relative=false is supported")
    return {"type": "percentile", "lower": _number(arg("lower"), f"{label} lower"),
            "upper": _number(arg("upper"), f"{label} upper"), "mask": "none",
            "range": [_number(arg("b_min"), f"{label} b_min"), _number(arg("b_max"), f"{label} b_max")]}


def _inferer(config: _Config, notes: list[str]) -> tuple[list[int], float]:
    """(patch_size (D, H, W), overlap) from a SlidingWindowInferer."""
    if "inferer" not in config.data:
        raise ValueError(f"{config.label} has no inferer; a SlidingWindowInferer gives the patch size")
    item = config.follow(config.data["inferer"], "inferer")
    name = config.class_name(item, "inferer", "inferers")
    if name != "SlidingWindowInferer":
        raise ValueError(f"{config.label}: 'inferer' is {name}; only SlidingWindowInferer (its roi_size is "
                         "the patch size) can be imported")
    roi = _positive_numbers(config.argument(item, "roi_size", "inferer"), f"{config.label}: inferer roi_size",
                            integer=True)
    overlap = _number(config.argument(item, "overlap", "inferer", 0.25), f"{config.label}: inferer overlap")
    if config.argument(item, "mode", "inferer", "constant") != "gaussian":
        notes.append("windows are blended with Gaussian weights here; the bundle's SlidingWindowInferer averages "
                     "them (mode constant): logits differ where windows overlap")
    elif config.argument(item, "sigma_scale", "inferer", 0.125) != 0.125:
        notes.append("windows are blended with Gaussian weights of sigma_scale 0.125 here, not the bundle's "
                     f"{config.argument(item, 'sigma_scale', 'inferer')}: logits differ where windows overlap")
    return roi[::-1], overlap  # MONAI's (x, y, z) → (D, H, W) = (z, y, x)


def _postprocessing(config: _Config, notes: list[str]) -> None:
    """Refuse outputs that are not mutually exclusive classes; note what only changes the prediction."""
    if "postprocessing" not in config.data:
        return
    for name, _, where, item in config.transforms("postprocessing"):
        if name == "Activations" and config.argument(item, "sigmoid", where, False):
            raise ValueError(f"{config.label}: '{where}' applies a sigmoid: the bundle predicts overlapping "
                             "labels, one channel each; LRPSegmentation explains mutually exclusive classes (argmax)")
        if name == "AsDiscrete" and config.argument(item, "threshold", where) is not None \
                and not config.argument(item, "argmax", where, False):
            raise ValueError(f"{config.label}: '{where}' thresholds each channel: the bundle predicts "
                             "overlapping labels; LRPSegmentation explains mutually exclusive classes (argmax)")
        if name in _POST_NOTED - {"Invert", "SaveImage", "CopyItems", "DeleteItems"}:
            notes.append(f"the prediction here is the argmax of the logits, without the bundle's {name}d")


def _read(path: Path, options: dict[str, Any]) -> _Bundle:
    """Map a bundle onto the package fields (torch-free); see the module docstring."""
    folder = _bundle_folder(Path(path))
    if not folder.is_dir():
        raise FileNotFoundError(f"no MONAI bundle at {folder}")
    file = _config_file(folder)
    if file is None:
        raise FileNotFoundError(f"{folder} is not a MONAI bundle: configs/inference.json is missing")
    config = _Config(_read_structured(file, str(file)), file, folder)
    metadata: dict[str, Any] = {}
    notes: list[str] = []
    if (folder / METADATA_FILE).is_file():
        metadata = _read_structured(folder / METADATA_FILE, str(folder / METADATA_FILE))
        if not isinstance(metadata, dict):
            raise ValueError(f"{folder / METADATA_FILE} must hold a JSON object")
    else:
        notes.append(f"no {METADATA_FILE}")

    network, kwargs = _network(config)
    channels = _io_count(kwargs, "in_channels", metadata, "inputs", "image", config.label)
    classes = _io_count(kwargs, "out_channels", metadata, "outputs", "pred", config.label)
    kwargs.setdefault("in_channels", channels)  # explicit: the builders' defaults are not MONAI's
    kwargs.setdefault("out_channels", classes)
    _postprocessing(config, notes)  # first: an output that can never be imported outranks missing options
    normalization, spacing, orientation = _preprocessing(config, channels, notes)
    if options["target_spacing"] is not None:
        spacing = _positive_numbers(list(options["target_spacing"]), "target_spacing")
    if spacing is None:
        raise ValueError(f"{config.label}: preprocessing has no Spacingd, so the network ran at each image's own "
                         "spacing, which a package cannot express; give target_spacing=(x, y, z) in mm")
    if options["patch_size"] is not None:
        patch, overlap = _positive_numbers(list(options["patch_size"]), "patch_size", integer=True), 0.5
    else:
        patch, overlap = _inferer(config, notes)

    name = metadata.get("name") if isinstance(metadata.get("name"), str) and metadata["name"].strip() else folder.name
    text = metadata.get("description") if isinstance(metadata.get("description"), str) else ""
    return _Bundle(
        folder=folder, name=name.strip(), network=network, network_kwargs=kwargs,
        sequences=_channel_names(metadata, "inputs", "image", channels, "channel", notes),
        normalization=normalization, target_spacing=spacing,
        class_names=_channel_names(metadata, "outputs", "pred", classes, "class", notes),
        patch_size=patch, overlap=overlap, orientation=orientation, notes=notes,
        bundle_version=metadata.get("version"),
        description=" ".join(part for part in (f"Imported from the MONAI bundle {folder.name}.", text.strip(),
                                                ("Import notes: " + "; ".join(notes) + ".") if notes else "") if part))


def describe(path: Path, *, target_spacing: Sequence[float] | None = None,
             patch_size: Sequence[int] | None = None) -> PackageDescription:
    """What the bundle at ``path`` maps to, without torch (the Slicer module shows its sequences).

    Options as for `load`.

    Raises:
        FileNotFoundError: no bundle there.
        ValueError: a config that cannot be mapped (the message names the key or transform).
    """
    bundle = _read(Path(path), dict(target_spacing=target_spacing, patch_size=patch_size))
    return PackageDescription(
        path=str(bundle.folder), name=bundle.name, architecture=BUNDLE_ARCHITECTURE,
        architecture_kwargs=bundle.architecture_kwargs, sequences=bundle.sequences,
        normalization=[bundle.normalization] * len(bundle.sequences), reference_sequence=bundle.sequences[-1],
        target_spacing=bundle.target_spacing, class_names=bundle.class_names,
        class_colors=[list(c) for c in default_class_colors(len(bundle.class_names))], patch_size=bundle.patch_size,
        overlap=bundle.overlap, composite=DEFAULT_COMPOSITE, box_low=None, box_high=None,
        weights={"file": WEIGHTS_FILE, "sha256": None, "parameters": None}, description=bundle.description,
        training_info=bundle.training_info, orientation=bundle.orientation)


# --------------------------------------------------------------------------------------------
# Weights and the network (torch from here on)
# --------------------------------------------------------------------------------------------
def _read_weights(folder: Path) -> dict[str, Any]:
    """The state dict in models/model.pt: a plain state dict, or one under "model"/"state_dict"/"network"
    (as MONAI's CheckpointSaver writes it). Loaded with weights_only=True: tensors, no objects."""
    import pickle

    import torch

    file = folder / WEIGHTS_FILE
    if not file.is_file():
        if (folder / TORCHSCRIPT_FILE).is_file():
            raise ValueError(f"{folder} holds only the TorchScript {TORCHSCRIPT_FILE}, which cannot be explained "
                             f"layer by layer; put the state dict in {WEIGHTS_FILE} "
                             "(torch.save(network.state_dict(), 'models/model.pt'))")
        raise FileNotFoundError(f"{folder} is incomplete: {WEIGHTS_FILE} is missing")
    if zipfile.is_zipfile(file):
        with zipfile.ZipFile(file) as archive:
            if any(n.split("/", 2)[1:2] == ["code"] for n in archive.namelist()):
                raise ValueError(f"{file} is a TorchScript archive, which cannot be explained layer by layer; save "
                                 "the state dict instead: torch.save(network.state_dict(), 'models/model.pt')")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{file} cannot be read as tensors only (weights_only): {first}") from None

    def tensors(value: Any) -> bool:
        return isinstance(value, dict) and bool(value) and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())

    if tensors(checkpoint):
        return dict(checkpoint)
    for key in ("model", "state_dict", "network"):
        if isinstance(checkpoint, dict) and tensors(checkpoint.get(key)):
            return dict(checkpoint[key])
    described = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise ValueError(f"{file} holds {described}, not a state dict (names → tensors, or one under \"model\")")


def build_bundle_network(network: str, kwargs: dict[str, Any]):
    """`BundleNetwork` around the registry's ``network`` (a ``monai.*`` name) built with ``kwargs``."""
    from .registry import get_builder

    if not isinstance(network, str) or not network.startswith("monai."):
        raise ValueError(f"a MONAI bundle network must be a monai.* architecture, got {network!r}")
    if not isinstance(kwargs, dict):
        raise ValueError(f"the kwargs of {network} must be an object, got {kwargs!r}")
    return _bundle_network_class()(get_builder(network)(**kwargs))


_BUNDLE_NETWORK = None


def _bundle_network_class():
    """`BundleNetwork`, defined on first use so that this module imports without torch."""
    global _BUNDLE_NETWORK
    if _BUNDLE_NETWORK is None:
        from torch import Tensor, nn

        class BundleNetwork(nn.Module):
            """A MONAI network fed this package's (N, C, D, H, W) = (z, y, x) arrays: it reverses the
            spatial axes into MONAI's (x, y, z), runs ``network`` and reverses the logits back."""

            def __init__(self, network: nn.Module) -> None:
                super().__init__()
                self.network = network

            def forward(self, x: Tensor) -> Tensor:
                return self.network(x.permute(0, 1, 4, 3, 2)).permute(0, 1, 4, 3, 2)

        _BUNDLE_NETWORK = BundleNetwork
    return _BUNDLE_NETWORK


def load(path: Path, *, check: bool = True, target_spacing: Sequence[float] | None = None,
         patch_size: Sequence[int] | None = None) -> ModelPackage:
    """The bundle at ``path`` as a `ModelPackage` (architecture ``"monai_bundle.network"``).

    Args:
        path: the bundle folder (or its configs/inference.json).
        check: run `ModelPackage.check_architecture` (shapes only).
        target_spacing: (x, y, z) mm, for bundles without ``Spacingd`` (or to override it).
        patch_size: (D, H, W) voxels, for bundles without a SlidingWindowInferer.

    Raises:
        FileNotFoundError: no bundle, or no models/model.pt.
        ValueError: a config that cannot be mapped (naming the key or transform), a network the
            registry does not have, weights that are not a state dict or do not fit the network.
    """
    from .package import ModelPackage
    from .registry import available_architectures

    bundle = _read(Path(path), dict(target_spacing=target_spacing, patch_size=patch_size))
    if bundle.network not in available_architectures():
        supported = [n for n in available_architectures() if n.startswith("monai.")]
        raise ValueError(f"{bundle.folder}: network_def {bundle.network.removeprefix('monai.')} is not an architecture "
                         f"LRPSegmentation explains; supported: {', '.join(supported) or 'none (install monai)'}")
    state = _read_weights(bundle.folder)
    try:
        package = ModelPackage(
            name=bundle.name, architecture=BUNDLE_ARCHITECTURE, architecture_kwargs=bundle.architecture_kwargs,
            sequences=bundle.sequences, normalization=bundle.normalization, class_names=bundle.class_names,
            class_colors=default_class_colors(len(bundle.class_names)), target_spacing=bundle.target_spacing,
            patch_size=bundle.patch_size, overlap=bundle.overlap, description=bundle.description,
            training_info=bundle.training_info, orientation=bundle.orientation,
            state_dict={f"network.{k}": v for k, v in state.items()})
    except ValueError as error:
        raise ValueError(f"{bundle.folder}: {error}") from None
    if check:
        package.check_architecture()
    return package
