"""What a user names, turned into library objects: a model package path → (package, model),
``NAME=PATH`` sequence arguments, the optional reference label / region mask file of a case
folder, a region mask file → an array on the case grid, and a class name or index → `Target`.

Shared by the command line (`cli`) and the cohort runner (`cohort`). Every problem with what the
user gave is a `UserError` with a one-line message (`one_line`), which the command line prints as
``error: ...`` with exit status 2.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the heavy imports stay inside the functions: `lrpseg --help` starts fast
    import numpy as np

#: File names (without image extension, compared like sequence names) of the optional reference
#: label and region mask inside a case folder.
REFERENCE_LABEL_STEMS = ("reference_label", "label", "ground_truth")
MASK_STEMS = ("mask", "region_mask")

#: Exceptions that are the user's problem (a file that is missing or refused, a value that does
#: not fit), reported in one line rather than as a traceback.
USER_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
               ValueError)


class UserError(Exception):
    """A problem with the inputs a user gave: reported as one line (exit status 2 on the command line)."""


def one_line(error: BaseException | str) -> str:
    """An exception (or message) as one line without the ``[Errno N]`` prefix of OSErrors."""
    text = str(error) if not isinstance(error, KeyError) else str(error.args[0] if error.args else error)
    text = re.sub(r"^\[Errno \d+\] ", "", text)  # OSError: "Permission denied: '/x'"
    return " ".join(text.split()) or type(error).__name__


def find_optional_file(folder: Path, stems: Sequence[str]) -> Path | None:
    """The image file in ``folder`` named like one of ``stems`` (compared like sequence names), if any."""
    from .imaging import image_extension, sequence_key  # as `imaging.find_case_files` matches names

    keys = {sequence_key(s) for s in stems}
    matches = [p for p in sorted(Path(folder).iterdir()) if p.is_file() and not p.name.startswith(".")
               and (extension := image_extension(p)) is not None
               and sequence_key(p.name[: -len(extension)]) in keys]
    if len(matches) > 1:
        raise UserError(f"{folder}: several candidate files {[m.name for m in matches]} for one of {list(stems)}")
    return matches[0] if matches else None


def load_model(path: str | os.PathLike, build: bool = True, **options):
    """(package, model) — model None unless ``build`` — or a UserError saying why the model cannot
    be used. ``path``: any layout `models.formats` reads (a .lrpmodel, an nnU-Net v2 folder, a
    MONAI bundle); ``options``: its import options (nnU-Net ``folds``, ``mirroring``)."""
    from .models.package import load_package

    try:
        package = load_package(path, **options)
        model = package.build() if build else None
    except (FileNotFoundError, ValueError, ImportError) as error:
        raise UserError(f"cannot load the model package {path}: {one_line(error)}") from None
    return package, model


def model_options(folds: Sequence[str] | None = None, mirroring: bool = True) -> dict:
    """The import options the command line passes to `load_model` (only those given, so that a
    .lrpmodel, which takes none, loads with the defaults)."""
    options: dict = {}
    if folds:
        options["folds"] = list(folds)
    if not mirroring:
        options["mirroring"] = False
    return options


def parse_sequence_args(items: Sequence[str], expected: Sequence[str]) -> dict[str, str]:
    """``NAME=PATH`` arguments → {name: path} in the package's order when the names match it
    (names compare like file names: case and '-'/'_'/space differences ignored)."""
    from .imaging import sequence_key

    by_key = {sequence_key(s): s for s in expected}
    given: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UserError(f"--sequence expects NAME=PATH, got {item!r}")
        name = by_key.get(sequence_key(name), name.strip())
        if name in given:
            raise UserError(f"sequence {name!r} is given more than once")
        given[name] = path.strip()
    if set(given) == set(expected):
        return {s: given[s] for s in expected}
    return given  # ModelPackage.check_inputs says what is missing / unexpected


def read_mask(path: str | os.PathLike, geometry) -> np.ndarray:
    """A region mask file (any grid in the same patient space) → (D, H, W) bool on ``geometry``
    (nearest-neighbour resampling; every non-zero voxel is in the region)."""
    import SimpleITK as sitk

    from .imaging import read_image, resample_to_reference

    path = Path(path)
    if not path.exists():
        raise UserError(f"region mask not found: {path}")
    image = read_image(path)
    resampled = resample_to_reference(image, geometry, interpolation="nearest", name=f"region mask {path.name}")
    return sitk.GetArrayFromImage(resampled) != 0


def resolve_target(value: str | None, class_names: Sequence[str]) -> int | None:
    """``--target``: a class index or name (case-insensitive) → index; None → the pipeline's default."""
    if value is None:
        return None
    text = value.strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < len(class_names):
            raise UserError(f"--target {index} is out of range: the model's classes are "
                            f"{', '.join(f'{i}={n}' for i, n in enumerate(class_names))}")
        return index
    lowered = [n.lower() for n in class_names]
    if text.lower() not in lowered:
        raise UserError(f"--target {text!r} is not a class of the model; choose one of "
                        f"{', '.join(f'{i}={n}' for i, n in enumerate(class_names))}")
    return lowered.index(text.lower())


#: How a command-line user supplies what a region mode needs (appended to `regions.choose_regions`' error).
REGION_HINTS = {"reference_label": "pass --reference-label FILE, or put a reference_label.* file into the case folder "
                                   "(cohort CSV: a reference_label column)",
                "mask": "pass --mask FILE (cohort: a mask.* file in the case folder or a mask column in the CSV)"}
