"""Reading a model package's ``model.json`` without torch (see ``package`` for the format).

The one parser of the package description: `models.package.load_package` builds a `ModelPackage`
from it (after checking the weights), and the Slicer module reads it to show one volume selector
per sequence before torch is installed. `read_description` also describes the other layouts
`models.formats` reads (nnU-Net v2 folders, MONAI bundles); `read_package_description` reads a
``.lrpmodel`` only. Here the file's *structure* is checked (format and version,
every section with exactly its keys); the *values* are checked where they are used
(`ModelPackage` validates and canonicalizes every field).

Standard library only.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

__all__ = ["FORMAT", "FORMAT_VERSION", "PACKAGE_SUFFIX", "METADATA_FILE", "WEIGHTS_FILE", "PackageDescription",
           "check_names", "package_files", "read_description", "read_package_description"]

PathLike = Union[str, os.PathLike]

FORMAT = "lrpsegmentation.model"
#: Newest format version this code reads and the one it writes.
FORMAT_VERSION = 1
PACKAGE_SUFFIX = ".lrpmodel"
METADATA_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"

_TOP_LEVEL = {"format", "format_version", "name", "architecture", "input", "output", "inference", "lrp", "weights"}
_OPTIONAL = frozenset({"description", "training_info"})


def check_names(value: Any, what: str) -> list[str]:
    """``value`` as a list of unique, non-empty name strings; ValueError naming ``what`` otherwise."""
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"{what} must be a non-empty list of names, got {value!r}")
    names = list(value)
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"{what} must be non-empty strings, got {bad!r}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{what} must be unique; repeated: {duplicates}")
    return names


def check_keys(value: Any, label: str, required: set[str], optional: frozenset[str] = frozenset()) -> None:
    """``value`` must be an object with all ``required`` keys and no others than ``optional``;
    unknown keys are errors so that a misspelt hand edit is not silently ignored."""
    if not isinstance(value, dict):
        raise ValueError(f"{label} must be a JSON object, got {value!r}")
    missing = sorted(required - set(value))
    unknown = sorted(set(value) - required - optional)
    if missing or unknown:
        raise ValueError(f"{label}: missing key(s) {missing}, unknown key(s) {unknown}")


def _section(meta: dict[str, Any], key: str, required: set[str], file: Path,
             optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``meta[key]``, an object with all the ``required`` keys and no others than ``optional``."""
    check_keys(meta[key], f"{file}: '{key}'", required, optional)
    return meta[key]


def read_metadata(file: Path) -> dict[str, Any]:
    """The parsed ``model.json``: a JSON object of our format, a version this code reads, and exactly
    the known top-level keys (sections are checked by `read_description`)."""
    try:
        metadata = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{file} is not valid JSON: {error}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ValueError(f"{file} is not an LRPSegmentation model description (no \"format\": \"{FORMAT}\")")
    version = metadata.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{file}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{file} uses package format version {version}; this LRPSegmentation reads up to "
                         f"version {FORMAT_VERSION} — update LRPSegmentation")
    check_keys(metadata, str(file), _TOP_LEVEL, _OPTIONAL)
    return metadata


def package_files(path: PathLike) -> tuple[Path, Path]:
    """(the package folder, its ``model.json``) for a ``<name>.lrpmodel`` folder or its ``model.json``.

    Raises:
        FileNotFoundError: no such folder, or no ``model.json`` in it.
    """
    path = Path(path)
    folder = path.parent if path.name == METADATA_FILE else path
    file = folder / METADATA_FILE
    if not folder.exists():
        raise FileNotFoundError(f"no model package at {folder}")
    if not file.is_file():
        raise FileNotFoundError(f"{folder} is not a model package: {METADATA_FILE} is missing")
    return folder, file


@dataclass(frozen=True)
class PackageDescription:
    """What a package's ``model.json`` says, as read (values unchecked; see the module docstring).

    Attributes mirror `ModelPackage`'s fields (``sequences``, ``normalization``, ``class_names``,
    ``class_colors``, ``reference_sequence``, ``target_spacing``, ``patch_size``, ``overlap``,
    ``composite``, ``box_low``, ``box_high``, ``orientation``, ...); ``path`` is the package folder
    (as a string, so the Slicer module can store it) and ``weights`` the ``weights`` section (file,
    sha256, parameters).
    """

    path: str
    name: Any
    architecture: Any
    architecture_kwargs: Any
    sequences: list[Any]
    normalization: list[Any]
    reference_sequence: Any
    target_spacing: Any
    class_names: list[Any]
    class_colors: list[Any]
    patch_size: Any
    overlap: Any
    composite: Any
    box_low: Any
    box_high: Any
    weights: dict[str, Any]
    description: Any = ""
    training_info: Any = field(default_factory=dict)
    orientation: Any = None


def read_description(path: PathLike) -> PackageDescription:
    """What the model at ``path`` says, in any format `models.formats` reads: a ``.lrpmodel`` folder
    (or its ``model.json``), an nnU-Net v2 trained-model folder or a MONAI bundle folder.
    Torch-free.

    Raises:
        FileNotFoundError: no model there (the message names the accepted layouts).
        ValueError: not our format, a newer format version, sections with missing or unknown keys,
            or a folder of another format that cannot be imported (the message says why).
    """
    from .formats import describe

    return describe(path)


def read_package_description(path: PathLike) -> PackageDescription:
    """Read and structure-check a package's ``model.json`` (``path``: the folder or the file).

    Raises:
        FileNotFoundError: no package there.
        ValueError: not our format, a newer format version, or sections with missing or unknown keys.
    """
    folder, file = package_files(path)
    meta = read_metadata(file)
    arch = _section(meta, "architecture", {"name", "kwargs"}, file)
    # "orientation" came after format version 1's first files: absent = null (stored voxel order).
    inputs = _section(meta, "input", {"sequences", "reference_sequence", "target_spacing_mm"}, file,
                      frozenset({"orientation"}))
    output = _section(meta, "output", {"classes"}, file)
    inference = _section(meta, "inference", {"patch_size", "overlap"}, file)
    lrp = _section(meta, "lrp", {"composite", "box_low", "box_high"}, file)
    weights = _section(meta, "weights", {"file", "sha256", "parameters"}, file)

    sequences = inputs["sequences"]
    if not isinstance(sequences, list) or not all(isinstance(s, dict) for s in sequences):
        raise ValueError(f"{file}: 'input.sequences' must be a list of {{\"name\", \"normalization\"}} objects")
    for entry in sequences:
        if set(entry) != {"name", "normalization"}:
            raise ValueError(f"{file}: each of 'input.sequences' needs exactly the keys name and normalization, "
                             f"got {sorted(entry)}")
    classes = output["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, dict) and set(c) == {"name", "color"} for c in classes):
        raise ValueError(f"{file}: 'output.classes' must be a list of {{\"name\", \"color\"}} objects")

    return PackageDescription(
        path=str(folder), name=meta["name"], architecture=arch["name"], architecture_kwargs=arch["kwargs"],
        sequences=[s["name"] for s in sequences], normalization=[s["normalization"] for s in sequences],
        reference_sequence=inputs["reference_sequence"], target_spacing=inputs["target_spacing_mm"],
        class_names=[c["name"] for c in classes], class_colors=[c["color"] for c in classes],
        patch_size=inference["patch_size"], overlap=inference["overlap"], composite=lrp["composite"],
        box_low=lrp["box_low"], box_high=lrp["box_high"], weights=weights,
        description=meta.get("description", ""), training_info=meta.get("training_info", {}),
        orientation=inputs.get("orientation"))
