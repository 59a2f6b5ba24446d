"""The model layouts LRPSegmentation reads as they lie on disk, detected and dispatched.

- ``"lrpmodel"``: the package format (``<name>.lrpmodel/`` with ``model.json``; `package`);
- ``"nnunet"``: an nnU-Net v2 trained-model folder (`nnunet`);
- ``"monai_bundle"``: a MONAI bundle folder (`monai_bundle`).

An importer module exposes ``detect(path) -> bool``, ``describe(path) -> PackageDescription``
(torch-free: the Slicer module shows one volume selector per sequence before torch exists) and
``load(path, **options) -> ModelPackage``. Importing never executes code from the folder.
Importer modules are imported when needed; one that cannot be imported (not installed, or not yet
written) is skipped by `detect_format` and never breaks the other formats.

A single file (a TorchScript archive, an ONNX model, a bare checkpoint) is refused with what to do
instead: LRP needs the network's Python class (load the state dict into it, register it, and
write a package with ``create_package``).

Standard library only at import (torch is imported by `load`).
"""
from __future__ import annotations

import importlib
import inspect
import os
import zipfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Union

from .metadata import METADATA_FILE, PackageDescription

if TYPE_CHECKING:
    from .package import ModelPackage

__all__ = ["FORMATS", "ACCEPTED_LAYOUTS", "describe", "detect_format", "load", "single_file_message"]

PathLike = Union[str, os.PathLike]

#: Format name → importer module (relative to this package); "lrpmodel" is read by `package`.
_IMPORTERS = {"nnunet": "nnunet", "monai_bundle": "monai_bundle"}
FORMATS = ("lrpmodel", *_IMPORTERS)

#: One line naming the three layouts (the message for a folder that is none of them).
ACCEPTED_LAYOUTS = ("a .lrpmodel folder (model.json), an nnU-Net v2 trained-model folder "
                    "(<Trainer>__<Plans>__<configuration> with plans.json, dataset.json, fold_N/checkpoint_final.pth) "
                    "or a MONAI bundle folder (configs/inference.json, models/model.pt)")

HOW_TO_PACKAGE = ("LRP needs the network's Python class: load the state dict into it, register the class "
                  "(register_architecture or an 'lrpsegmentation.architectures' entry point) and write a package "
                  "with create_package(...).save('<name>.lrpmodel')")


def _importer(name: str) -> ModuleType | None:
    """The importer module of format ``name``, or None when it is not available."""
    try:
        return importlib.import_module(f".{_IMPORTERS[name]}", __package__)
    except ModuleNotFoundError as error:
        if error.name and error.name.endswith(f"models.{_IMPORTERS[name]}"):
            return None  # the importer itself is absent; anything else missing inside it is a real error
        raise


def single_file_message(path: Path) -> str:
    """Why a single model file cannot be explained, and how to get there (one line)."""
    suffix = path.suffix.lower()
    kind = "a model file"
    if suffix == ".onnx":
        kind = "an ONNX model"
    elif zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (OSError, zipfile.BadZipFile):
            names = []
        if any(n.split("/", 1)[-1].startswith("code/") or n.endswith("/constants.pkl") for n in names):
            kind = "a TorchScript archive"
        else:
            kind = "a PyTorch checkpoint"
    elif suffix in (".pt", ".pth", ".ckpt", ".ts"):
        kind = "a PyTorch file"
    return (f"{path} is {kind}; LRPSegmentation explains networks it can trace as Python modules, not "
            f"TorchScript or ONNX graphs, and reads {ACCEPTED_LAYOUTS}. {HOW_TO_PACKAGE}")


def detect_format(path: PathLike) -> str:
    """The format of ``path``: ``"lrpmodel"``, ``"nnunet"`` or ``"monai_bundle"``.

    A ``model.json`` file, or a folder holding one, is ``"lrpmodel"``; so is a missing path or a
    folder named ``*.lrpmodel`` (then `package.load_package` says what is missing).

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: a single file (TorchScript, ONNX, checkpoint: what to do instead), or a folder
            of none of the three layouts (the message names them).
    """
    path = Path(path)
    if path.name == METADATA_FILE or (path / METADATA_FILE).is_file() or path.name.endswith(".lrpmodel"):
        return "lrpmodel"
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}")
    for name in _IMPORTERS:  # an importer may also accept a file of its layout (a bundle's config)
        module = _importer(name)
        if module is not None and module.detect(path):
            return name
    if path.is_file():
        raise ValueError(single_file_message(path))
    raise FileNotFoundError(f"{path} is not a model LRPSegmentation reads ({METADATA_FILE} is missing); "
                            f"expected {ACCEPTED_LAYOUTS}")


def _module_for(path: Path) -> tuple[str, ModuleType | None]:
    name = detect_format(path)
    if name == "lrpmodel":
        return name, None
    module = _importer(name)
    if module is None:  # detect_format found it, so it imports; kept for type checkers
        raise ValueError(f"{path}: the {name} importer is not available")
    return name, module


def describe(path: PathLike, **options: Any) -> PackageDescription:
    """What the model at ``path`` says (any format), without torch; see `metadata.read_description`.

    ``options`` go to the importer (e.g. ``folds`` for nnU-Net); a .lrpmodel takes none.
    """
    from .metadata import read_package_description

    name, module = _module_for(Path(path))
    if module is None:
        return read_package_description(path)
    return module.describe(Path(path), **options)


def load(path: PathLike, check: bool = True, **options: Any) -> ModelPackage:
    """The model at ``path`` (any format) as a `ModelPackage`; see `package.load_package`.

    Args:
        path: a .lrpmodel folder (or its model.json), an nnU-Net v2 trained-model folder, a MONAI
            bundle folder.
        check: run `ModelPackage.check_architecture` (shapes only).
        **options: importer options: nnU-Net ``folds=[0, 1]``, ``mirroring=False``.
    """
    from .package import read_package

    name, module = _module_for(Path(path))
    if module is None:
        if options:
            raise ValueError(f"{path} is a .lrpmodel package, which takes no import options "
                             f"({', '.join(sorted(options))}); they apply to nnU-Net folders")
        return read_package(path, check=check)
    parameters = inspect.signature(module.load).parameters
    accepted = [p for p in parameters if p not in ("path", "check")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"{path} is a {name} model, which takes no option(s) {', '.join(unknown)} "
                         f"(it takes: {', '.join(accepted) or 'none'})")
    if "check" in parameters:  # the importer checks itself
        return module.load(Path(path), check=check, **options)
    package = module.load(Path(path), **options)
    if check:
        package.check_architecture()
    return package
