"""Model packages: a trained network plus everything needed to run and explain it on new MRI.

On disk a package is ONE folder named ``<name>.lrpmodel`` holding two files::

    liver-tumour.lrpmodel/
        model.json            metadata, human-readable JSON (below)
        weights.safetensors   the state dict (safetensors: tensors only, no code)

Reading a package never executes code: the metadata is JSON, the weights are safetensors, and the
network is made by a builder looked up by name in the architecture ``registry`` — nothing named in
the file is ever imported. A package whose architecture is not registered cannot be loaded.

``model.json`` (format version 1)::

    {
      "format": "lrpsegmentation.model",
      "format_version": 1,
      "name": "liver-tumour",
      "description": "free text",
      "training_info": {"dice": 0.81, ...},             free JSON object
      "architecture": {"name": "unet3d", "kwargs": {"in_channels": 6, ...}},
      "input": {
        "sequences": [{"name": "T2", "normalization": {"type": "zscore", ...}}, ...],   in channel order
        "reference_sequence": "T1-15min",                grid every sequence is resampled onto
        "target_spacing_mm": [x, y, z],                  the reference is resampled to this first
        "orientation": "RAS" | null                      optional; see below
      },
      "output": {"classes": [{"name": "background", "color": [r, g, b]}, ...]},   colours in 0..1
      "inference": {"patch_size": [D, H, W], "overlap": 0.5},                    sliding window
      "lrp": {"composite": "epsilon_gamma_box",
              "box_low": [C floats] | null, "box_high": [C floats] | null},      normalized intensities
      "weights": {"file": "weights.safetensors", "sha256": "...", "parameters": 12345}
    }

``model.json`` is read by `metadata.read_description` (torch-free; the Slicer module reads it too),
which checks its structure; `ModelPackage` checks the values.

``input.orientation`` is where the network's voxel axes i, j, k point (``"RAS"``: toward the
patient's Right, Anterior, Superior; three letters, one of each of L/R, P/A, I/S, as nibabel and
MONAI's ``Orientationd`` write them): every image is flipped/permuted into it before resampling
(`imaging.reorient`). Null or absent keeps each image's stored voxel order.

Normalization methods are those of ``normalization.validate_normalization`` and are stored complete
(defaults filled in), so a later change of defaults cannot silently change a package. Box bounds
(null: the engine takes each sequence's range in the input) are in the network's input space,
i.e. after normalization.
"""
from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from ..engine import COMPOSITES, DEFAULT_COMPOSITE, Composite, make_composite
from ..imaging import check_orientation
from ..normalization import validate_normalization
from ..vocabulary import DEFAULT_CLASS_COLORS
from .metadata import (FORMAT, FORMAT_VERSION, METADATA_FILE, PACKAGE_SUFFIX, WEIGHTS_FILE, check_names,
                       read_package_description)
from .registry import build_architecture, build_on_meta

__all__ = ["ModelPackage", "create_package", "load_package", "read_package"]

PathLike = Union[str, os.PathLike]
#: How many keys an error message lists per kind of weight mismatch.
_LISTED = 5


# --------------------------------------------------------------------------------------------
# Field validation: each helper returns the canonical value or raises ValueError naming the field
# --------------------------------------------------------------------------------------------
def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _floats(value: Any, count: int, what: str) -> list[float]:
    if isinstance(value, (str, Mapping)) or not isinstance(value, Sequence) or len(value) != count:
        raise ValueError(f"{what} must be a list of {count} numbers, got {value!r}")
    return [_finite(v, what) for v in value]


def _json_value(value: Any, what: str) -> Any:
    """A deep copy made of plain JSON types (tuples become lists); rejects what JSON cannot hold."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must hold only JSON values (numbers, strings, booleans, null, lists, "
                         f"objects with string keys): {error}") from None


def _normalizations(value: Any, sequences: list[str]) -> list[dict[str, Any]]:
    """One complete method per sequence, from one method for all, a list, or a name → method map."""
    if isinstance(value, Mapping) and "type" in value:
        methods = [value] * len(sequences)
    elif isinstance(value, Mapping):
        missing = [s for s in sequences if s not in value]
        unknown = [k for k in value if k not in sequences]
        if missing or unknown:
            raise ValueError(f"normalization by sequence name must name every sequence exactly: "
                             f"missing {missing}, unknown {unknown}")
        methods = [value[s] for s in sequences]
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != len(sequences):
            raise ValueError(f"got {len(value)} normalization methods for {len(sequences)} sequences "
                             f"{sequences}; give one per sequence, one for all, or a name → method dict")
        methods = list(value)
    else:
        raise ValueError(f"normalization must be a method dict, a list of them or a sequence name → "
                         f"method dict, got {value!r}")
    complete = []
    for name, method in zip(sequences, methods):
        try:
            complete.append(_json_value(validate_normalization(method), "normalization"))
        except ValueError as error:
            raise ValueError(f"normalization of sequence {name!r}: {error}") from None
    return complete


def _state_dict(value: Any) -> dict[str, torch.Tensor]:
    if not isinstance(value, Mapping) or not value:
        raise ValueError("state_dict must be a non-empty mapping of parameter names to tensors")
    bad = [k for k, v in value.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"state_dict must map names to tensors; bad entries: {bad[:_LISTED]}")
    state = {k: v.detach().cpu().contiguous() for k, v in value.items()}
    _check_finite(state)
    return state


def _check_finite(state: Mapping[str, torch.Tensor]) -> None:
    """Refuse NaN/Inf weights: such a network predicts nothing meaningful (e.g. all background), and
    a checksum only proves that the file is the one that was saved, not that its values are sane."""
    bad = [(k, int((~torch.isfinite(v)).sum()), v.numel()) for k, v in state.items()
           if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        bad.sort(key=lambda item: _natural(item[0]))
        more = f", … ({len(bad) - _LISTED} more)" if len(bad) > _LISTED else ""
        listed = ", ".join(f"{k} ({n} of {total} values)" for k, n, total in bad[:_LISTED])
        raise ValueError(f"the weights contain NaN/Inf in {len(bad)} tensor(s): {listed}{more}; a network with "
                         "such weights gives no meaningful output — fix the training or export the weights again")


def _shape(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(s) for s in shape)


def _natural(key: str) -> list:
    """Sort key putting ``layers.2`` before ``layers.10`` (safetensors returns keys in storage order)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", key)]


def _weight_mismatches(expected: Mapping[str, torch.Size], weights: Mapping[str, torch.Tensor]) -> list[str]:
    """Describe keys missing from / unexpected in ``weights`` and shape mismatches (first few each)."""
    missing = sorted((k for k in expected if k not in weights), key=_natural)
    unexpected = sorted((k for k in weights if k not in expected), key=_natural)
    shapes = [f"{k}: weights {_shape(weights[k].shape)}, architecture {_shape(expected[k])}"
              for k in sorted(expected, key=_natural)
              if k in weights and _shape(weights[k].shape) != _shape(expected[k])]

    def listed(items: list[str]) -> str:
        more = f", … ({len(items) - _LISTED} more)" if len(items) > _LISTED else ""
        return "; ".join(items[:_LISTED]) + more

    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {listed(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {listed(shapes)}")
    return problems


def _to_json(value: Any, level: int = 0) -> str:
    """JSON with one key per line, but short lists of plain values (colours, shapes) on one line."""
    pad = "  " * level
    if isinstance(value, dict) and value:
        items = [f"{pad}  {json.dumps(k, ensure_ascii=False)}: {_to_json(v, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(v, dict) and v for v in value):
        items = [f"{pad}  {_to_json(v, level + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _safetensors():
    """``safetensors.torch`` and its error type, imported only when package files are read or
    written (so that ``LRPSegmentationLib.models`` imports without it)."""
    try:
        import safetensors
        import safetensors.torch
    except ImportError as error:
        raise ImportError(f"reading and writing model packages needs safetensors: pip install safetensors "
                          f"({error})") from error
    return safetensors.torch, safetensors.SafetensorError


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _meta_output_shape(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """Shape of ``model``'s logits (the first output if it returns several) for an input of ``shape``,
    computed on the "meta" device; None when an operation has no shape-only implementation.
    Other errors (sizes that do not fit the network) propagate."""
    try:
        with torch.no_grad():
            out = model(torch.empty(shape, device="meta"))
    except Exception as error:
        if isinstance(error, NotImplementedError) or "meta" in str(error).lower():
            return None
        raise
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"the model returns {type(out).__name__}, not a logits tensor")
    return tuple(out.shape)


# --------------------------------------------------------------------------------------------
# The package
# --------------------------------------------------------------------------------------------
@dataclass(eq=False)
class ModelPackage:
    """A network's architecture, weights, and how to feed and explain it.

    Fields are validated and put in canonical form on construction (and again before saving);
    invalid values raise ValueError naming the field.

    Attributes:
        name: display name.
        architecture: registry name, e.g. ``"unet3d"`` or ``"monai.DynUNet"``.
        architecture_kwargs: keyword arguments of the architecture's builder (JSON values).
        sequences: input sequence names in channel order, e.g. ``["T2", "plainT1", ..., "T1-15min"]``.
        normalization: one complete method dict per sequence (``normalization.validate_normalization``);
            on construction also a single dict for all, or a sequence name → dict mapping.
        class_names: K names, in logit order, e.g. ``["background", "tumour"]``.
        target_spacing: (x, y, z) voxel spacing in mm the network was trained at.
        patch_size: (D, H, W) sliding-window patch, in voxels.
        state_dict: the weights (CPU tensors).
        reference_sequence: the sequence whose grid the others are resampled onto (None: the last).
        class_colors: K (r, g, b) colours in 0..1 (None: a default palette).
        overlap: sliding-window overlap fraction in [0, 1).
        composite: default LRP composite, one of ``engine.COMPOSITES``.
        box_low, box_high: per-sequence z^B bounds (C floats) or None (each sequence's input range).
        description: free text.
        training_info: free JSON object (data, epochs, validation Dice, ...).
        orientation: where the network's voxel axes point, e.g. ``"RAS"`` (`imaging.check_orientation`):
            every image is reoriented into it first; None keeps each image's stored voxel order.
    """

    name: str
    architecture: str
    architecture_kwargs: dict[str, Any]
    sequences: list[str]
    normalization: list[dict[str, Any]]
    class_names: list[str]
    target_spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    reference_sequence: str | None = None
    class_colors: list[tuple[float, float, float]] | None = None
    overlap: float = 0.5
    composite: str = DEFAULT_COMPOSITE
    box_low: list[float] | None = None
    box_high: list[float] | None = None
    description: str = ""
    training_info: dict[str, Any] = field(default_factory=dict)
    orientation: str | None = None

    def __post_init__(self) -> None:
        self._canonicalize()

    def _canonicalize(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.architecture, str) or not self.architecture:
            raise ValueError(f"architecture must be a registry name, got {self.architecture!r}")
        if not isinstance(self.architecture_kwargs, Mapping):
            raise ValueError(f"architecture_kwargs must be a dict, got {type(self.architecture_kwargs).__name__}")
        self.architecture_kwargs = _json_value(dict(self.architecture_kwargs), "architecture_kwargs")
        self.sequences = check_names(self.sequences, "sequences")
        channels = len(self.sequences)
        if self.reference_sequence is None:
            self.reference_sequence = self.sequences[-1]
        if self.reference_sequence not in self.sequences:
            raise ValueError(f"reference_sequence {self.reference_sequence!r} is not one of the sequences "
                             f"{self.sequences}")
        self.normalization = _normalizations(self.normalization, self.sequences)
        self.class_names = check_names(self.class_names, "class_names")
        classes = len(self.class_names)
        if self.class_colors is None:
            if classes > len(DEFAULT_CLASS_COLORS):
                raise ValueError(f"give class_colors for {classes} classes (the default palette has "
                                 f"{len(DEFAULT_CLASS_COLORS)})")
            self.class_colors = list(DEFAULT_CLASS_COLORS[:classes])
        if isinstance(self.class_colors, str) or not isinstance(self.class_colors, Sequence) \
                or len(self.class_colors) != classes:
            raise ValueError(f"class_colors must hold one (r, g, b) per class ({classes}: {self.class_names}), "
                             f"got {self.class_colors!r}")
        colors = []
        for class_name, color in zip(self.class_names, self.class_colors):
            rgb = _floats(color, 3, f"the colour of class {class_name!r}")
            if not all(0.0 <= c <= 1.0 for c in rgb):
                raise ValueError(f"the colour of class {class_name!r} must be (r, g, b) in 0..1, got {color!r}")
            colors.append(tuple(rgb))
        self.class_colors = colors
        spacing = _floats(self.target_spacing, 3, "target_spacing (x, y, z in mm)")
        if not all(s > 0 for s in spacing):
            raise ValueError(f"target_spacing (x, y, z in mm) must be positive, got {self.target_spacing!r}")
        self.target_spacing = tuple(spacing)
        patch = self.patch_size
        if isinstance(patch, (str, Mapping)) or not isinstance(patch, Sequence) or len(patch) != 3 or \
                not all(isinstance(p, numbers.Integral) and not isinstance(p, bool) and p > 0 for p in patch):
            raise ValueError(f"patch_size must be three positive integers (D, H, W), got {patch!r}")
        self.patch_size = tuple(int(p) for p in patch)
        self.overlap = _finite(self.overlap, "overlap")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.composite not in COMPOSITES:
            raise ValueError(f"composite must be one of {', '.join(COMPOSITES)}, got {self.composite!r}")
        if self.box_low is not None:
            self.box_low = _floats(self.box_low, channels, f"box_low (one per sequence: {self.sequences})")
        if self.box_high is not None:
            self.box_high = _floats(self.box_high, channels, f"box_high (one per sequence: {self.sequences})")
        if self.box_low is not None and self.box_high is not None:
            bad = [s for s, lo, hi in zip(self.sequences, self.box_low, self.box_high) if not lo < hi]
            if bad:
                raise ValueError(f"box_low must be below box_high for every sequence; not so for {bad}")
        if not isinstance(self.description, str):
            raise ValueError(f"description must be a string, got {type(self.description).__name__}")
        if not isinstance(self.training_info, Mapping):
            raise ValueError(f"training_info must be a dict, got {type(self.training_info).__name__}")
        self.training_info = _json_value(dict(self.training_info), "training_info")
        self.orientation = check_orientation(self.orientation, "orientation")
        self.state_dict = _state_dict(self.state_dict)

    # -- inputs ---------------------------------------------------------------------------------
    def check_inputs(self, sequence_names: Sequence[str]) -> None:
        """Check that ``sequence_names`` are exactly this package's sequences, in its order.

        Raises:
            ValueError: saying which sequences are missing, unexpected, repeated, or, when the
                names are right, that the order differs; the expected order is always given.
        """
        if isinstance(sequence_names, str):
            raise ValueError(f"give a list of sequence names, not the string {sequence_names!r}")
        given = list(sequence_names)
        if given == self.sequences:
            return
        missing = [s for s in self.sequences if s not in given]
        unexpected = [s for s in given if s not in self.sequences]
        repeated = sorted({s for s in given if given.count(s) > 1}, key=given.index)
        problems = []
        if missing:
            problems.append(f"missing {missing}")
        if unexpected:
            problems.append(f"unexpected {unexpected}")
        if repeated:
            problems.append(f"given more than once {repeated}")
        if not problems:
            problems.append(f"out of order: got {given}")
        raise ValueError(f"the input sequences do not match model {self.name!r}, which expects "
                         f"{self.sequences} in this order: {'; '.join(problems)}")

    # -- the network ----------------------------------------------------------------------------
    @property
    def weights_dtype(self) -> torch.dtype:
        """The floating dtype the weights were saved in (float32 when there are none)."""
        dtypes = [t.dtype for t in self.state_dict.values() if t.is_floating_point()]
        return max(set(dtypes), key=dtypes.count) if dtypes else torch.float32

    def build(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> nn.Module:
        """The network with its weights, in eval mode.

        Args:
            device: where to put it.
            dtype: floating dtype of the parameters; None keeps the saved one (`weights_dtype`).

        Returns:
            The ``nn.Module``: (1, C, D, H, W) → logits (1, K, D, H, W), C = len(sequences),
            K = len(class_names).

        Raises:
            ValueError: unknown architecture, arguments out of range or a network over the size
                limit (checked before allocating), weights that do not fit it (missing/unexpected
                keys, shape mismatches), or NaN/Inf weights.
        """
        _check_finite(self.state_dict)  # again: the dict may have been changed since construction
        # Sized and matched on the meta device first: nothing is allocated for a network that fails.
        model, on_meta = self._shape_model()
        self._raise_on_mismatch({k: v.shape for k, v in model.state_dict().items()})
        if on_meta:
            model = build_architecture(self.architecture, **self.architecture_kwargs)
        model.to(device=device, dtype=dtype or self.weights_dtype)
        model.load_state_dict(self.state_dict, strict=True)
        return model.eval()

    def lrp_composite(self, name: str | None = None) -> Composite:
        """The engine composite ``name`` (default: the package's) with the package's box bounds."""
        low = torch.tensor(self.box_low, dtype=torch.float64) if self.box_low is not None else None
        high = torch.tensor(self.box_high, dtype=torch.float64) if self.box_high is not None else None
        return make_composite(name or self.composite, low=low, high=high)

    def _raise_on_mismatch(self, expected: Mapping[str, torch.Size]) -> None:
        problems = _weight_mismatches(expected, self.state_dict)
        if problems:
            raise ValueError(f"the weights of model {self.name!r} do not match architecture "
                             f"{self.architecture!r} with {self.architecture_kwargs}: " + "; ".join(problems))

    def _shape_model(self) -> tuple[nn.Module, bool]:
        """The network for shape checks, in eval: on the "meta" device (no memory, no compute) when
        its builder allows, else on the CPU. Returns (model, on_meta)."""
        model = build_on_meta(self.architecture, **self.architecture_kwargs)
        if model is not None:
            return model.eval(), True
        # A builder computing on tensors at init.
        return build_architecture(self.architecture, **self.architecture_kwargs).eval(), False

    def check_architecture(self) -> None:
        """Check, without allocating the network, that the weights fit the architecture and that a
        (1, C, *patch_size) input gives (1, K, *patch_size) logits (C sequences, K classes).

        The network is built and run on PyTorch's "meta" device (shapes only). An architecture that
        cannot be built there is built on the CPU for the weight check; one whose forward cannot
        run there skips the shape check.

        Raises:
            ValueError: unknown architecture, weights that do not fit, or an input/output shape that
                contradicts ``sequences``, ``class_names`` or ``patch_size``.
        """
        model, on_meta = self._shape_model()
        self._raise_on_mismatch({k: v.shape for k, v in model.state_dict().items()})
        if not on_meta:
            return
        shape = (1, len(self.sequences)) + self.patch_size
        try:
            got = _meta_output_shape(model, shape)
        except Exception as error:  # noqa: BLE001 — any failure on this input is the user's shape problem
            raise ValueError(f"architecture {self.architecture!r} fails on an input of shape {shape} "
                             f"({len(self.sequences)} sequences, patch_size {self.patch_size}); check the "
                             f"sequences and that patch_size suits the network's downsampling: {error}") from None
        expected = (1, len(self.class_names)) + self.patch_size
        if got is not None and got != expected:
            raise ValueError(f"architecture {self.architecture!r} maps a {shape} input to {got}, but the package "
                             f"needs logits of shape {expected} ({len(self.class_names)} classes "
                             f"{self.class_names}, patch_size {self.patch_size})")

    @property
    def size_divisor(self) -> int | None:
        """Spatial sizes the network accepts are multiples of this (e.g. 2**depth for `UNet3D`);
        pad inputs up to a multiple of it. None when it cannot be determined on the meta device.

        Found as the smallest common divisor d of the patch dimensions for which a patch d voxels
        larger on every axis still gives logits of its own size (shape-only probes, cached).
        """
        key = (self.architecture, json.dumps(self.architecture_kwargs, sort_keys=True), self.patch_size,
               len(self.sequences), len(self.class_names))
        cached = self.__dict__.get("_size_divisor")
        if cached is None or cached[0] != key:
            cached = (key, self._probe_size_divisor())
            self.__dict__["_size_divisor"] = cached
        return cached[1]

    def _probe_size_divisor(self) -> int | None:
        model, on_meta = self._shape_model()
        if not on_meta:
            return None
        common = math.gcd(*self.patch_size)
        for d in (d for d in range(1, common + 1) if common % d == 0):
            spatial = tuple(p + d for p in self.patch_size)
            try:
                got = _meta_output_shape(model, (1, len(self.sequences)) + spatial)
            except Exception:  # noqa: BLE001 — this size does not fit the network: try the next
                continue
            if got is None:
                return None
            if got == (1, len(self.class_names)) + spatial:
                return d
        return None

    # -- files ----------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """The content of ``model.json`` except the ``weights`` section (plain JSON values)."""
        self._canonicalize()
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "training_info": self.training_info,
            "architecture": {"name": self.architecture, "kwargs": self.architecture_kwargs},
            "input": {
                "sequences": [{"name": s, "normalization": n} for s, n in zip(self.sequences, self.normalization)],
                "reference_sequence": self.reference_sequence,
                "target_spacing_mm": list(self.target_spacing),
                **({"orientation": self.orientation} if self.orientation is not None else {}),
            },
            "output": {"classes": [{"name": n, "color": list(c)} for n, c in zip(self.class_names, self.class_colors)]},
            "inference": {"patch_size": list(self.patch_size), "overlap": self.overlap},
            "lrp": {"composite": self.composite, "box_low": self.box_low, "box_high": self.box_high},
        }

    def save(self, path: PathLike, overwrite: bool = False) -> Path:
        """Write the package folder ``path`` (its name must end in ``.lrpmodel``).

        The folder is written next to its destination and renamed into place, so a failed save
        leaves no half-written package; with ``overwrite`` an existing package is replaced.

        Returns:
            The package folder.

        Raises:
            ValueError: bad folder name or invalid fields.
            FileExistsError: ``path`` exists and ``overwrite`` is False, or it exists and is not a
                model package (never replaced, even with ``overwrite``).
        """
        path = Path(path)
        if not path.name.endswith(PACKAGE_SUFFIX) or path.name == PACKAGE_SUFFIX:
            raise ValueError(f"a model package is a folder named '<name>{PACKAGE_SUFFIX}', got {path.name!r}")
        if path.exists() or path.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
            if path.is_symlink() or not (path / METADATA_FILE).is_file():
                raise FileExistsError(f"{path} exists and is not a model package (no {METADATA_FILE}); "
                                      "refusing to replace it")
        metadata = self.metadata()  # validates before anything is written
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        safetensors_torch = _safetensors()[0]
        old = None
        try:
            staging.mkdir()
            # safetensors refuses tensors sharing memory (tied weights); give each its own storage.
            safetensors_torch.save_file({k: v.clone() for k, v in self.state_dict.items()},
                                        str(staging / WEIGHTS_FILE), metadata={"format": FORMAT})
            metadata["weights"] = {"file": WEIGHTS_FILE, "sha256": _sha256(staging / WEIGHTS_FILE),
                                   "parameters": sum(t.numel() for t in self.state_dict.values())}
            (staging / METADATA_FILE).write_text(_to_json(metadata) + "\n", encoding="utf-8")
            if path.exists():
                old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
                path.rename(old)
            staging.rename(path)
        except BaseException:
            if old is not None and not path.exists():
                old.rename(path)  # put the previous package back
                old = None
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return path


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def load_package(path: PathLike, check: bool = True, **options: Any) -> ModelPackage:
    """The model at ``path`` as a `ModelPackage`, in any layout `formats` reads: a package folder
    written by `ModelPackage.save` (or its ``model.json``), an nnU-Net v2 trained-model folder, or
    a MONAI bundle folder (the format is detected).

    Nothing in the folder is executed: JSON metadata, safetensors weights (checkpoints of other
    formats with ``torch.load(weights_only=True)``), and the architecture looked up by name in the
    registry.

    Args:
        path: the ``<name>.lrpmodel`` folder or its ``model.json``, or another format's folder.
        check: also run `ModelPackage.check_architecture` (cheap: shapes only).
        **options: import options of other formats, e.g. nnU-Net ``folds=[0, 1]``, ``mirroring=False``.

    Raises:
        FileNotFoundError: no model there (the message names the accepted layouts).
        ValueError: malformed or newer-format metadata, a weights file that is corrupt or fails its
            checksum, an unknown architecture, weights that do not fit the architecture, a single
            TorchScript/ONNX file, or a folder of another format that cannot be imported.
    """
    from .formats import load

    return load(path, check=check, **options)


def read_package(path: PathLike, check: bool = True) -> ModelPackage:
    """Read a package folder written by `ModelPackage.save` (or its ``model.json``); see `load_package`."""
    description = read_package_description(path)
    folder, weights = Path(description.path), description.weights
    file = folder / METADATA_FILE
    if weights["file"] != WEIGHTS_FILE:  # a fixed name: the file never chooses what is read
        raise ValueError(f"{file}: 'weights.file' must be {WEIGHTS_FILE!r}, got {weights['file']!r}")
    weights_file = folder / WEIGHTS_FILE
    if not weights_file.is_file():
        raise FileNotFoundError(f"{folder} is incomplete: {WEIGHTS_FILE} is missing")
    if _sha256(weights_file) != weights["sha256"]:
        raise ValueError(f"{weights_file} does not match the checksum in {METADATA_FILE}: the file was changed "
                         "or is corrupt")
    st, SafetensorError = _safetensors()
    try:
        state_dict = st.load_file(str(weights_file))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{weights_file} cannot be read as safetensors: {error}") from None
    if sum(t.numel() for t in state_dict.values()) != weights["parameters"]:
        raise ValueError(f"{weights_file} holds {sum(t.numel() for t in state_dict.values())} values, "
                         f"{METADATA_FILE} says {weights['parameters']}")

    try:
        package = ModelPackage(
            name=description.name, architecture=description.architecture,
            architecture_kwargs=description.architecture_kwargs, sequences=description.sequences,
            normalization=description.normalization, reference_sequence=description.reference_sequence,
            target_spacing=description.target_spacing, class_names=description.class_names,
            class_colors=description.class_colors, patch_size=description.patch_size, overlap=description.overlap,
            composite=description.composite, box_low=description.box_low, box_high=description.box_high,
            description=description.description, training_info=description.training_info,
            orientation=description.orientation, state_dict=state_dict)
    except ValueError as error:
        raise ValueError(f"{file}: {error}") from None
    if check:
        package.check_architecture()
    return package


def create_package(model: nn.Module, architecture: str, architecture_kwargs: Mapping[str, Any],
                   sequences: Sequence[str], *, normalization: Any, class_names: Sequence[str],
                   target_spacing: Sequence[float], patch_size: Sequence[int], name: str = "model",
                   reference_sequence: str | None = None,
                   class_colors: Sequence[Sequence[float]] | None = None, overlap: float = 0.5,
                   composite: str = DEFAULT_COMPOSITE, box_low: Sequence[float] | None = None,
                   box_high: Sequence[float] | None = None, description: str = "",
                   training_info: Mapping[str, Any] | None = None, orientation: str | None = None) -> ModelPackage:
    """Package a trained network (a copy of its weights) with its metadata; see `ModelPackage`.

    ``architecture(**architecture_kwargs)`` must rebuild ``model``'s structure: this is checked
    (weights keys and shapes, and a (1, C, *patch_size) → (1, K, *patch_size) shape probe) so that
    a package that cannot be loaded is never created.

    Args:
        model: the trained network (any mode, any device).
        architecture: registry name (see ``registry.available_architectures``).
        architecture_kwargs: the builder's keyword arguments (JSON values).
        sequences: C input sequence names in channel order.
        normalization: one method dict for all sequences, a list of C, or a name → method dict.
        class_names: K class names in logit order.
        target_spacing: (x, y, z) mm.
        patch_size: (D, H, W) voxels.
        Other arguments: see `ModelPackage`.

    Raises:
        ValueError: invalid metadata, or a model that the architecture does not rebuild.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    package = ModelPackage(
        name=name, architecture=architecture, architecture_kwargs=dict(architecture_kwargs),
        sequences=list(sequences), normalization=normalization, class_names=list(class_names),
        target_spacing=target_spacing, patch_size=patch_size, reference_sequence=reference_sequence,
        class_colors=class_colors, overlap=overlap, composite=composite, box_low=box_low, box_high=box_high,
        description=description, training_info=dict(training_info or {}), orientation=orientation,
        # A copy: later training steps on `model` must not change the package.
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    package.check_architecture()
    return package
