"""lrpseg: explain 3D segmentation networks on multi-sequence MRI from the command line.

Subcommands:

    lrpseg predict   segmentation of one case, on the reference sequence's grid
    lrpseg explain   relevance maps, sequence-composition map, per-sequence shares and figures of one case
    lrpseg cohort    `explain` for many cases (local processes or a Dask cluster), resumable,
                     then one shares table, the cohort bar chart and a summary per region mode
    lrpseg evaluate  faithfulness of an explanation: region perturbation (MoRF / LeRF / random)
                     and per-sequence ablation vs shares
    lrpseg demo      the bundled demo (a phantom case through the whole pipeline)

A case is either a folder holding one image file (or DICOM folder) per sequence, named after the
sequence (``--case FOLDER``; ``t1_15min.nii.gz`` matches ``T1-15min``), or one ``--sequence
NAME=PATH`` per sequence. Every sequence is resampled onto the model's reference sequence's grid,
and every output is written on that grid (same size, spacing, origin and direction).

User errors (missing files, unreadable images, grids that do not overlap, an empty region, inputs
that do not match the model package, existing outputs without ``--overwrite``) end with one line
``error: ...`` on stderr and exit status 2. ``lrpseg cohort`` exits with 1 when some cases failed.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROG = "lrpseg"
REGION_MODES = ("predicted", "tp", "fn", "fp", "lesions", "mask")  # = pipeline.REGION_MODES (checked in tests)
#: File names (without image extension, compared like sequence names) of the optional reference
#: label and region mask inside a case folder.
REFERENCE_LABEL_STEMS = ("reference_label", "label", "ground_truth")
MASK_STEMS = ("mask", "region_mask")
#: Marker written last into a finished cohort case folder.
DONE_MARKER = "done.json"
COHORT_MANIFEST = "cohort.json"

_USER_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
                ValueError)


class UserError(Exception):
    """A problem with the command's inputs: reported as one line, exit status 2."""


def _one_line(error: BaseException | str) -> str:
    text = str(error) if not isinstance(error, KeyError) else str(error.args[0] if error.args else error)
    text = re.sub(r"^\[Errno \d+\] ", "", text)  # OSError: "Permission denied: '/x'"
    return " ".join(text.split()) or type(error).__name__


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------
_QUIET = False


def _bar(total: int | None, desc: str, unit: str = "step"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=_QUIET, leave=False,
                dynamic_ncols=True)


def _note(message: str) -> None:
    """A message on stderr that does not break a running progress bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


class _Steps:
    """A progress bar over named steps; ``pipeline`` progress messages advance it."""

    def __init__(self, steps: Sequence[str], desc: str) -> None:
        self.bar = _bar(len(steps), desc)
        self.steps = list(steps)
        self.done = 0

    def __call__(self, message: str) -> None:
        self.bar.set_postfix_str(message[:60], refresh=False)
        self.advance()

    def advance(self, message: str | None = None) -> None:
        if message:
            self.bar.set_postfix_str(message[:60], refresh=False)
        if self.done < self.bar.total:
            self.bar.update(1)
            self.done += 1

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> _Steps:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def _sequence_key(name: str) -> str:
    import re

    return re.sub(r"[-_\s]+", "_", name.strip().lower())


def _image_stem(path: Path) -> str | None:
    from .imaging import IMAGE_EXTENSIONS

    lower = path.name.lower()
    for extension in IMAGE_EXTENSIONS:
        if lower.endswith(extension):
            return path.name[: -len(extension)]
    return None


def find_optional_file(folder: Path, stems: Sequence[str]) -> Path | None:
    """The image file in ``folder`` named like one of ``stems`` (compared like sequence names), if any."""
    keys = {_sequence_key(s) for s in stems}
    matches = [p for p in sorted(Path(folder).iterdir()) if p.is_file() and not p.name.startswith(".")
               and (stem := _image_stem(p)) is not None and _sequence_key(stem) in keys]
    if len(matches) > 1:
        raise UserError(f"{folder}: several candidate files {[m.name for m in matches]} for one of {list(stems)}")
    return matches[0] if matches else None


def load_model(path: str | os.PathLike, build: bool = True):
    """(package, model) — model None unless ``build`` — or a UserError saying why the package
    cannot be used."""
    from .models.package import load_package

    try:
        package = load_package(path)
        model = package.build() if build else None
    except (FileNotFoundError, ValueError, ImportError) as error:
        raise UserError(f"cannot load the model package {path}: {_one_line(error)}") from None
    return package, model


def parse_sequence_args(items: Sequence[str], expected: Sequence[str]) -> dict[str, str]:
    """``NAME=PATH`` arguments → {name: path} in the package's order when the names match it
    (names compare like file names: case and '-'/'_'/space differences ignored)."""
    by_key = {_sequence_key(s): s for s in expected}
    given: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UserError(f"--sequence expects NAME=PATH, got {item!r}")
        name = by_key.get(_sequence_key(name), name.strip())
        if name in given:
            raise UserError(f"sequence {name!r} is given more than once")
        given[name] = path.strip()
    if set(given) == set(expected):
        return {s: given[s] for s in expected}
    return given  # ModelPackage.check_inputs says what is missing / unexpected


def load_case_inputs(package, case: str | None = None, sequences: Sequence[str] | None = None,
                     reference_label: str | None = None, name: str | None = None, announce: bool = True):
    """A pipeline `Case` from a case folder or NAME=PATH sequences (and an optional reference label;
    a case folder's ``reference_label.*``/``label.*`` file is used when none is given)."""
    from . import pipeline

    if case is not None:
        folder = Path(case)
        if not folder.exists():
            raise UserError(f"case folder not found: {folder}")
        if not folder.is_dir():
            raise UserError(f"--case expects a folder, {folder} is a file")
        if reference_label is None:
            found = find_optional_file(folder, REFERENCE_LABEL_STEMS)
            if found is not None:
                reference_label = str(found)
                if announce:
                    _note(f"using the reference label {found}")
        sources: Any = folder
    else:
        sources = parse_sequence_args(sequences or [], package.sequences)
        for seq, path in sources.items():
            if not Path(path).exists():
                raise UserError(f"image of sequence {seq} not found: {path}")
    if reference_label is not None and not Path(reference_label).exists():
        raise UserError(f"reference label not found: {reference_label}")
    return pipeline.load_case(sources, package, reference_label=reference_label, name=name)


def read_mask(path: str | os.PathLike, geometry):
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


def make_target(index: int | None, contrast: bool, class_names: Sequence[str]):
    from .engine import Target

    index = len(class_names) - 1 if index is None else index
    return Target(index, contrast=contrast)


def _region_mode(name: str) -> str:
    return "lesions" if name.startswith("lesion-") else name


def empty_region_message(mode: str, labels, target: int, reference_label, class_name: str) -> str:
    """Why region ``mode`` is empty, in words."""
    import numpy as np

    predicted = np.asarray(labels) == target
    truth = None if reference_label is None else np.asarray(reference_label) == target
    no_truth = truth is not None and not truth.any()
    if mode in ("predicted", "lesions"):
        detail = f"no voxel is predicted as {class_name}"
    elif mode == "mask":
        detail = "the region mask has no voxel on the reference grid"
    elif mode == "tp":
        detail = ("no true positives: " + (f"the reference label has no {class_name} voxel" if no_truth else
                  f"no voxel is predicted as {class_name}" if not predicted.any() else
                  f"the predicted {class_name} does not overlap the reference label"))
    elif mode == "fn":
        detail = "no false negatives: " + (f"the reference label has no {class_name} voxel" if no_truth else
                                           "the prediction covers the reference label")
    elif mode == "fp":
        detail = "no false positives: " + (f"no voxel is predicted as {class_name}" if not predicted.any() else
                                           f"every predicted {class_name} voxel lies inside the reference label")
    else:
        detail = "no voxel"
    return f"region '{mode}' is empty: {detail}"


def choose_regions(modes: Sequence[str], labels, target: int, reference_label, mask, class_name: str
                   ) -> tuple[dict[str, Any], list[str]]:
    """The regions of every mode, and one message per mode whose region is empty."""
    from . import pipeline

    regions: dict[str, Any] = {}
    empty: list[str] = []
    for mode in modes:
        if mode in ("tp", "fn", "fp") and reference_label is None:
            raise UserError(f"region mode {mode!r} needs a reference label: pass --reference-label FILE, or put "
                            "a reference_label.* file into the case folder (cohort CSV: a reference_label column)")
        if mode == "mask" and mask is None:
            raise UserError("region mode 'mask' needs a mask: pass --mask FILE (cohort: a mask.* file in the case "
                            "folder or a mask column in the CSV)")
        found = pipeline.select_regions(mode, labels, target, reference_label, mask)
        if found:
            regions.update(found)
        else:
            empty.append(empty_region_message(mode, labels, target, reference_label, class_name))
    return regions, empty


def _region_modes(args) -> list[str]:
    modes = list(dict.fromkeys(args.region or (["mask"] if getattr(args, "mask", None) else ["predicted"])))
    if getattr(args, "mask", None) and "mask" not in modes:
        raise UserError("--mask is used by the region mode 'mask'; add --region mask")
    return modes


def _check_output_file(path: Path, overwrite: bool) -> None:
    from .imaging import IMAGE_EXTENSIONS

    if not str(path).lower().endswith(IMAGE_EXTENSIONS):
        raise UserError(f"{path}: cannot tell the file format from the name; use one of {', '.join(IMAGE_EXTENSIONS)}")
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise UserError(f"output already exists: {path}; choose another name or pass --overwrite")


# --------------------------------------------------------------------------------------------
# One case: explain (shared by `explain` and `cohort`)
# --------------------------------------------------------------------------------------------
def explain_one(case, package, model, modes: Sequence[str], target_index: int | None, contrast: bool,
                composite: str | None, device: str | None, mask=None, progress: Callable[[str], None] | None = None,
                allow_empty: bool = False):
    """Predict, select the regions, explain them. Returns (CaseResult, empty-region messages).
    When every requested region is empty: raises UserError (before any LRP pass), or with
    ``allow_empty`` returns a result without explanations (prediction and composition map only)."""
    from . import pipeline

    say = progress or (lambda _m: None)
    target = make_target(target_index, contrast, package.class_names)
    say("segmenting")
    _, labels = pipeline.predict(model, pipeline.network_input(case, package), package, device)
    regions, empty = choose_regions(modes, labels, target.index, case.reference_label, mask,
                                    package.class_names[target.index])
    if not regions and not allow_empty:
        raise UserError("; ".join(empty))
    result = pipeline.explain_case(case, model, package, regions=regions, target=target, composite=composite,
                                   device=device, progress=say)
    return result, empty


# --------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------
def cmd_predict(args) -> int:
    from . import pipeline
    from .imaging import write_label
    from .outputs import atomic_file, writing

    output = Path(args.output)
    _check_output_file(output, args.overwrite)
    # all-or-nothing; creating the temporary file first checks that the output can be written
    with atomic_file(output, args.overwrite) as temp, \
            _Steps(["load model", "read case", "segment", "write"], "predict") as steps:
        package, model = load_model(args.model)
        steps.advance("reading the case")
        case = load_case_inputs(package, args.case, args.sequence, announce=False)
        steps.advance("segmenting")
        logits, _ = pipeline.predict(model, pipeline.network_input(case, package), package, args.device)
        labels = pipeline.labels_on_source_grid(case, logits)  # back from the model's spacing
        steps.advance("writing")
        with writing(temp):
            write_label(labels, case.source_geometry, temp, overwrite=True)
        steps.advance()
    counts = {name: int((labels == k).sum()) for k, name in enumerate(package.class_names)}
    print(f"segmentation written to {output} ({', '.join(f'{n}: {c} voxels' for n, c in counts.items())})")
    return 0


# --------------------------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------------------------
def cmd_explain(args) -> int:
    from . import pipeline
    from .outputs import atomic_folder

    output = Path(args.output)
    modes = _region_modes(args)
    # all-or-nothing; creating the temporary folder first checks that the output can be written
    with atomic_folder(output, args.overwrite, markers=(pipeline.SUMMARY,)) as folder, \
            _Steps(["load model", "read case", "segment", "composition map"] + [f"region {m}" for m in modes]
                   + ["write"], "explain") as steps:
        package, model = load_model(args.model)
        target_index = resolve_target(args.target, package.class_names)
        steps.advance("reading the case")
        case = load_case_inputs(package, args.case, args.sequence, args.reference_label)
        mask = read_mask(args.mask, case.geometry) if args.mask else None
        result, empty = explain_one(case, package, model, modes, target_index, args.contrast, args.composite,
                                    args.device, mask, progress=steps)
        for message in empty:
            _note(f"note: {message}; skipped")
        steps.advance("writing outputs")
        summary = pipeline.write_case_files(result, folder, package)
        steps.advance()
    print(f"case {case.name}: target {summary['target']}, composite {summary['composite']}")
    names = case.sequences
    print(f"{'region':<14}{'voxels':>8}  " + "".join(f"{n:>10}" for n in names))
    for region, info in summary["regions"].items():
        print(f"{region:<14}{info['voxels_used']:>8}  "
              + "".join(f"{100 * info['shares'][n]:>9.1f}%" for n in names))
    print(f"outputs in {output}")
    return 0


# --------------------------------------------------------------------------------------------
# cohort
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaseSpec:
    """One cohort case: a case folder, or sequence name → path (absolute paths)."""

    name: str
    folder: str | None = None
    sequences: dict[str, str] | None = None
    reference_label: str | None = None
    mask: str | None = None


@dataclass(frozen=True)
class CohortSettings:
    """What every case of a cohort run is computed with (picklable; shipped to the workers)."""

    model: str
    output: str
    regions: tuple[str, ...] = ("predicted",)
    target: int | None = None
    contrast: bool = False
    composite: str | None = None
    device: str | None = None
    overwrite: bool = False
    threads: int | None = None

    def manifest(self) -> dict[str, Any]:
        """The settings that decide the results (a rerun must use the same)."""
        return {"model": self.model, "regions": list(self.regions), "target": self.target,
                "contrast": self.contrast, "composite": self.composite}


def case_folder(settings: CohortSettings, name: str) -> Path:
    """``OUTPUT/cases/<folder name>``; ValueError for a name that cannot name a folder ("..", "")."""
    from .outputs import folder_name

    return Path(settings.output) / "cases" / folder_name(name)


_MODEL_CACHE: dict[Any, Any] = {}


def _cached_model(path: str):
    """One (package, model) per worker process (reloaded when the package changes)."""
    stamp = Path(path, "model.json").stat().st_mtime_ns if Path(path, "model.json").exists() else None
    key = (path, stamp)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = load_model(path)
    return _MODEL_CACHE[key]


def _read_done(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / DONE_MARKER).read_text())
    except (OSError, ValueError):
        return None


def run_case(spec: CaseSpec, settings: CohortSettings) -> dict[str, Any]:
    """Explain one cohort case into ``OUTPUT/cases/<case>/`` (the same function for every executor).

    Finished cases (a ``done.json`` marker, written last) are skipped unless ``settings.overwrite``.
    The outputs are written into a temporary folder, created before the computation (so an
    unwritable output fails at once) and renamed when complete (`outputs.atomic_folder`): a case
    folder exists only when it is finished. Never raises: returns {case, status ("done", "skipped",
    "failed"), message, rows (the case's rows of the cohort table), seconds, folder}.
    """
    from .outputs import atomic_folder

    start = time.time()
    status: dict[str, Any] = {"case": spec.name, "status": "failed", "message": "", "rows": [], "seconds": 0.0,
                              "folder": None}
    try:
        folder = case_folder(settings, spec.name)
        status["folder"] = str(folder)
        done = _read_done(folder)
        if done is not None and not settings.overwrite:
            status.update(status="skipped", rows=done.get("rows", []), message="already done",
                          notes=done.get("notes", []))
            return status
        with atomic_folder(folder, settings.overwrite, markers=(DONE_MARKER, "summary.json")) as scratch:
            rows, empty = _explain_case_into(scratch, spec, settings, start)
        status.update(status="done", rows=rows, notes=empty, message="; ".join(empty))
    except (UserError, OSError, *_USER_ERRORS) as error:
        status["message"] = _one_line(error)
    except Exception as error:  # noqa: BLE001 — one failing case must not stop the cohort
        status["message"] = f"{type(error).__name__}: {_one_line(error)}"
    status["seconds"] = round(time.time() - start, 3)
    return status


def _explain_case_into(folder: Path, spec: CaseSpec, settings: CohortSettings, start: float
                       ) -> tuple[list[dict[str, Any]], list[str]]:
    """`run_case`'s work: explain the case, write its outputs and ``done.json`` into the empty
    ``folder``; returns its rows of the cohort table and the notes on empty regions."""
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    from . import pipeline
    from .outputs import write_json

    package, model = _cached_model(settings.model)
    sources: Any = Path(spec.folder) if spec.folder else dict(spec.sequences or {})
    if isinstance(sources, dict):
        unset = [s for s, p in sources.items() if not p]
        if unset:
            raise UserError(f"no image given for sequence(s) {unset}")
        missing = [f"{s}: {p}" for s, p in sources.items() if not Path(p).exists()]
        if missing:
            raise UserError(f"image not found ({'; '.join(missing)})")
        sources = parse_sequence_args([f"{s}={p}" for s, p in sources.items()], package.sequences)
    case = pipeline.load_case(sources, package, reference_label=spec.reference_label, name=spec.name)
    mask = read_mask(spec.mask, case.geometry) if spec.mask else None
    result, empty = explain_one(case, package, model, settings.regions, settings.target, settings.contrast,
                                settings.composite, settings.device, mask, allow_empty=True)
    pipeline.write_case_files(result, folder, package)
    rows = result.shares_rows()
    write_json(folder / DONE_MARKER, {"case": spec.name, "settings": settings.manifest(), "rows": rows,
                                      "notes": empty, "seconds": time.time() - start,
                                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return rows, empty


def read_cohort_cases(source: str | os.PathLike, sequences: Sequence[str]) -> list[CaseSpec]:
    """Cases from a CSV (columns ``case``, one per sequence name, optional ``reference_label`` and
    ``mask``; relative paths are relative to the CSV's folder) or a folder of case folders (each
    may hold ``reference_label.*`` and ``mask.*``)."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"--cases {source} does not exist")
    if source.is_dir():
        from .imaging import IMAGE_EXTENSIONS

        subfolders = [p for p in sorted(source.iterdir()) if p.is_dir() and not p.name.startswith(".")]
        if not subfolders:
            images = [p.name for p in source.iterdir() if p.name.lower().endswith(IMAGE_EXTENSIONS)]
            hint = " (it holds images: for a single case use `lrpseg explain --case`)" if images else ""
            raise UserError(f"{source} holds no case folders{hint}")
        specs = []
        for folder in subfolders:
            specs.append(CaseSpec(name=folder.name, folder=str(folder.resolve()),
                                  reference_label=_optional(find_optional_file(folder, REFERENCE_LABEL_STEMS)),
                                  mask=_optional(find_optional_file(folder, MASK_STEMS))))
        return specs
    with open(source, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        rows: list[tuple[int, dict[str, str]]] = []  # (line number, cells)
        for row in reader:
            if None in row:  # more cells than the header: DictReader files the rest under None
                raise UserError(f"{source}, line {reader.line_num}: {len(columns) + len(row[None])} cells, the "
                                f"header has {len(columns)}; remove the extra cells (a path with a comma needs "
                                "quotes)")
            rows.append((reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items()}))
    by_key = {_sequence_key(s): s for s in sequences}
    column_of: dict[str, str] = {}
    unknown = []
    for column in columns:
        key = _sequence_key(column)
        if key in ("case", "reference_label", "mask"):
            column_of[key] = column
        elif key == "label":
            column_of["reference_label"] = column
        elif key in by_key:
            column_of[by_key[key]] = column
        elif column:
            unknown.append(column)
    missing = [s for s in sequences if s not in column_of]
    if "case" not in column_of or missing or unknown:
        problems = (["no 'case' column"] if "case" not in column_of else []) + \
                   ([f"no column for sequence(s) {missing}"] if missing else []) + \
                   ([f"unknown column(s) {unknown}"] if unknown else [])
        raise UserError(f"{source}: {'; '.join(problems)}; expected columns: case, {', '.join(sequences)}, "
                        "and optionally reference_label, mask")
    if not rows:
        raise UserError(f"{source} lists no cases")
    base = source.resolve().parent

    def path(value: str) -> str | None:
        return str((base / value).resolve()) if value else None

    from .outputs import folder_name

    specs, seen = [], set()
    for number, row in rows:
        name = row[column_of["case"]]
        if not name:
            raise UserError(f"{source}, line {number}: the case name is empty")
        try:
            folder_name(name)  # its output folder: OUTPUT/cases/<name>
        except ValueError as error:
            raise UserError(f"{source}, line {number}: case {_one_line(error)}") from None
        if name in seen:
            raise UserError(f"{source}: case {name!r} is listed more than once")
        seen.add(name)
        specs.append(CaseSpec(name=name, sequences={s: path(row[column_of[s]]) or "" for s in sequences},
                              reference_label=path(row.get(column_of.get("reference_label", ""), "")),
                              mask=path(row.get(column_of.get("mask", ""), ""))))
    return specs


def _optional(path: Path | None) -> str | None:
    return str(path.resolve()) if path is not None else None


def _check_manifest(output: Path, settings: CohortSettings) -> None:
    from .outputs import write_json

    manifest_path = output / COHORT_MANIFEST
    manifest = settings.manifest()
    if manifest_path.exists() and not settings.overwrite:
        try:
            previous = json.loads(manifest_path.read_text()).get("settings", {})
        except (OSError, ValueError):
            previous = None
        if previous != manifest:
            changed = sorted(k for k in manifest if previous is None or previous.get(k) != manifest[k])
            raise UserError(f"{output} holds a cohort run with other settings ({', '.join(changed)} differ); "
                            "choose another output folder or pass --overwrite to recompute every case")
    elif not manifest_path.exists() and output.exists() and any(output.iterdir()) and not settings.overwrite:
        raise UserError(f"output folder {output} is not empty and holds no cohort run; choose another output "
                        "folder or pass --overwrite")
    write_json(manifest_path, {"settings": manifest, "started": time.strftime("%Y-%m-%dT%H:%M:%S")},
               overwrite=True)


def _die_with_parent(parent: int) -> None:
    """Initializer of the local cohort workers: end with the main process, however it ends (kill -9
    included), instead of running on and then waiting forever for work, holding a model in memory.

    Linux: the kernel sends the worker SIGKILL when its parent ends (prctl PR_SET_PDEATHSIG; the
    pool starts its workers from the main thread). Elsewhere a thread checks the parent every second.
    """
    import signal
    import threading

    PR_SET_PDEATHSIG = 1
    if sys.platform.startswith("linux"):
        import ctypes

        watched = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    else:
        watched = False
    if not watched:
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="lrpseg-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # the parent ended before the watch began
        os._exit(1)


def _run_local(specs: list[CaseSpec], settings: CohortSettings, workers: int, report: Callable) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    # spawn: forking a process that already runs torch threads can deadlock
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(run_case, spec, settings): spec for spec in specs}
        for future in as_completed(futures):
            try:
                report(future.result())
            except BrokenProcessPool as error:
                report(_failed(futures[future], f"the worker process died ({_one_line(error)})"))
            except Exception as error:  # noqa: BLE001
                report(_failed(futures[future], f"{type(error).__name__}: {_one_line(error)}"))


def _run_dask(specs: list[CaseSpec], settings: CohortSettings, workers: int, scheduler: str | None,
              report: Callable) -> None:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as error:
        raise UserError(f"--executor dask needs dask.distributed: pip install 'dask[distributed]' ({error})") \
            from None
    cluster = None
    if scheduler:
        _probe_scheduler(scheduler)
    try:
        if scheduler:
            client = Client(scheduler, timeout="30s")
        else:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)
    except (OSError, TimeoutError, ValueError) as error:
        if cluster is not None:
            cluster.close()
        raise UserError(f"cannot connect to the Dask scheduler {scheduler or '(local cluster)'}: "
                        f"{_one_line(error)}") from None
    try:
        stamp = f"{os.getpid()}-{time.time_ns()}"
        futures = [client.submit(run_case, spec, settings, pure=False, key=f"lrpseg-case-{i}-{stamp}")
                   for i, spec in enumerate(specs)]
        spec_of = {f.key: s for f, s in zip(futures, specs)}
        for future in as_completed(futures):
            try:
                report(future.result())
            except Exception as error:  # noqa: BLE001 — e.g. KilledWorker
                report(_failed(spec_of[future.key], f"{type(error).__name__}: {_one_line(error)}"))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _probe_scheduler(address: str) -> None:
    """Fail fast (instead of Dask's 30 s of retries) when nothing listens at a tcp:// address."""
    import socket
    from urllib.parse import urlsplit

    if "://" not in address:
        address = "tcp://" + address
    parts = urlsplit(address)
    if parts.scheme not in ("tcp", "tls") or not parts.hostname:
        return  # inproc://, ucx://, ...: left to Dask
    try:
        port = parts.port or 8786
        with socket.create_connection((parts.hostname, port), timeout=10):
            pass
    except (OSError, ValueError) as error:
        raise UserError(f"cannot connect to the Dask scheduler {address}: {_one_line(error)}") from None


def _failed(spec: CaseSpec, message: str) -> dict[str, Any]:
    return {"case": spec.name, "status": "failed", "message": message, "rows": [], "seconds": 0.0}


def cohort_summary(rows: Sequence[Mapping[str, Any]], sequences: Sequence[str]) -> list[dict[str, Any]]:
    """Per region mode and sequence: n, mean, std (sample; 0 for one value), median, min, max of the
    shares over all (case, region) samples, mean positive share, and mean rank (1 = largest share
    within its case and region)."""
    import numpy as np

    samples: dict[tuple[str, str, str], dict[str, tuple[float, float]]] = {}
    for row in rows:
        key = (_region_mode(row["region"]), row["case"], row["region"])
        samples.setdefault(key, {})[row["sequence"]] = (float(row["share"]), float(row["positive_share"]))
    summary = []
    for mode in dict.fromkeys(k[0] for k in samples):
        groups = [v for k, v in samples.items() if k[0] == mode and all(s in v for s in sequences)]
        shares = np.array([[g[s][0] for s in sequences] for g in groups])
        positive = np.array([[g[s][1] for s in sequences] for g in groups])
        order = np.argsort(-shares, axis=1, kind="stable")
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(1, len(sequences) + 1)[None].repeat(len(groups), 0), axis=1)
        for c, sequence in enumerate(sequences):
            values = shares[:, c]
            summary.append({"region": mode, "sequence": sequence, "n": int(values.size),
                            "mean": float(values.mean()), "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
                            "median": float(np.median(values)), "min": float(values.min()),
                            "max": float(values.max()), "mean_positive_share": float(positive[:, c].mean()),
                            "mean_rank": float(ranks[:, c].mean())})
    return summary


def write_cohort_outputs(output: Path, statuses: list[dict[str, Any]], sequences: Sequence[str],
                         settings: CohortSettings) -> dict[str, Any]:
    """cohort_shares.csv, cohort_status.csv, cohort_summary.csv/.json and the bar chart(s); each file
    replaced all-or-nothing (`outputs.atomic_file`)."""
    from . import figures
    from .outputs import atomic_file, safe_name, write_csv, write_json, writing

    rows = [dict(row, region_mode=_region_mode(row["region"])) for s in statuses for row in s.get("rows", [])]
    columns = ["case", "region", "region_mode", "sequence", "share", "positive_share", "voxels_used",
               "voxels_excluded"]
    write_csv(output / "cohort_shares.csv", rows, columns, overwrite=True)
    write_csv(output / "cohort_status.csv",
              [{"case": s["case"], "status": s["status"], "seconds": s.get("seconds", 0.0),
                "regions": " ".join(dict.fromkeys(r["region"] for r in s.get("rows", []))),
                "message": s.get("message", "")} for s in statuses],
              ["case", "status", "seconds", "regions", "message"], overwrite=True)
    summary = cohort_summary(rows, sequences)
    write_csv(output / "cohort_summary.csv", summary, list(summary[0]) if summary else ["region", "sequence"],
              overwrite=True)
    modes = list(dict.fromkeys(r["region_mode"] for r in rows))
    charts = {}
    for mode in modes:
        shares: dict[str, list[float]] = {}
        for row in rows:
            if row["region_mode"] == mode:
                label = row["case"] if row["region"] == mode else f"{row['case']}/{row['region']}"
                shares.setdefault(label, [0.0] * len(sequences))[list(sequences).index(row["sequence"])] = row["share"]
        name = "cohort_shares.png" if len(modes) == 1 else f"cohort_shares_{safe_name(mode)}.png"
        with atomic_file(output / name, overwrite=True) as temp, writing(output / name):
            figures.plot_sequence_shares(shares, sequences, temp, title=f"Normalized relevance per sequence, "
                                                                        f"region {mode} ({len(shares)} cases)")
        charts[mode] = name
    data = {"settings": settings.manifest(), "sequences": list(sequences),
            "cases": [{k: s.get(k) for k in ("case", "status", "message", "seconds")} for s in statuses],
            "summary": {mode: {r["sequence"]: {k: v for k, v in r.items() if k not in ("region", "sequence")}
                               for r in summary if r["region"] == mode} for mode in modes},
            "charts": charts}
    write_json(output / "cohort_summary.json", data, overwrite=True)
    return data


def cmd_cohort(args) -> int:
    from .outputs import writing

    output = Path(args.output).resolve()
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file; give a folder")
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if args.scheduler and args.executor != "dask":
        raise UserError("--scheduler is used with --executor dask")
    if args.mask:
        raise UserError("lrpseg cohort takes masks from a 'mask' CSV column or mask.* files in the case folders, "
                        "not --mask")
    package, _ = load_model(args.model, build=False)  # the workers build the network
    modes = list(dict.fromkeys(args.region or ["predicted"]))
    target = resolve_target(args.target, package.class_names)
    threads = args.threads or (max(1, (os.cpu_count() or 1) // args.workers) if args.executor == "local" else None)
    settings = CohortSettings(model=str(Path(args.model).resolve()), output=str(output), regions=tuple(modes),
                              target=target, contrast=args.contrast, composite=args.composite, device=args.device,
                              overwrite=args.overwrite, threads=threads)
    specs = read_cohort_cases(args.cases, package.sequences)
    folders: dict[str, str] = {}
    for spec in specs:
        folder = case_folder(settings, spec.name)
        # case-insensitively: one folder on macOS and Windows file systems
        other = folders.setdefault(folder.name.casefold(), spec.name)
        if other != spec.name:
            raise UserError(f"cases {other!r} and {spec.name!r} would get the same output folder {folder} "
                            "(characters other than letters, digits, '-', '_', '.' become '_'; case is "
                            "ignored); rename one")
    with writing(output):  # an unwritable output folder fails here, before any case is computed
        output.mkdir(parents=True, exist_ok=True)
        _check_manifest(output, settings)
        (output / "cases").mkdir(exist_ok=True)

    statuses: dict[str, dict[str, Any]] = {}
    pending = []
    for spec in specs:  # finished cases are skipped here, without starting a worker
        done = None if settings.overwrite else _read_done(case_folder(settings, spec.name))
        if done is not None:
            statuses[spec.name] = {"case": spec.name, "status": "skipped", "message": "already done",
                                   "rows": done.get("rows", []), "seconds": round(float(done.get("seconds", 0.0)), 3)}
            _note(f"case {spec.name}: skipped (already done)")
        else:
            pending.append(spec)
    bar = _bar(len(pending), "cohort", unit="case")

    def report(status: dict[str, Any]) -> None:
        statuses[status["case"]] = status
        if status["status"] == "failed":
            _note(f"case {status['case']}: FAILED: {status['message']}")
        else:
            extra = f" ({status['message']})" if status.get("message") else ""
            _note(f"case {status['case']}: {status['status']} in {status['seconds']:.1f} s{extra}")
        bar.update(1)

    try:
        if pending:
            _note(f"{len(pending)} case(s) to compute, {len(specs) - len(pending)} already done; executor "
                  f"{args.executor}" + (f" at {args.scheduler}" if args.scheduler else f", {args.workers} worker(s)"))
            if args.executor == "dask":
                _run_dask(pending, settings, args.workers, args.scheduler, report)
            else:
                _run_local(pending, settings, args.workers, report)
    finally:
        bar.close()
    ordered = [statuses[s.name] for s in specs if s.name in statuses]
    write_cohort_outputs(output, ordered, package.sequences, settings)
    failed = [s for s in ordered if s["status"] == "failed"]
    done = sum(s["status"] == "done" for s in ordered)
    skipped = sum(s["status"] == "skipped" for s in ordered)
    print(f"cohort: {done} done, {skipped} skipped (already done), {len(failed)} failed; tables and charts in {output}")
    for s in failed:
        print(f"error: case {s['case']}: {s['message']}", file=sys.stderr)
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------
def _plot_evaluation(path: Path, curves: Mapping[str, Any], sequences: Sequence[str], shares, drops,
                     title: str, rho: float | None) -> Path:
    from . import figures  # noqa: F401 — sets the Agg backend
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    styles = {"morf": ("tab:red", "MoRF"), "lerf": ("tab:blue", "LeRF"), "random": ("gray", "random")}
    for order, curve in curves.items():
        colour, label = styles[order]
        left.plot(curve.fraction_removed, curve.scores, "-o", color=colour, markersize=3, label=label)
    left.set_xlabel("fraction of (sequence, block) patches removed")
    left.set_ylabel(f"mean target {next(iter(curves.values())).score} in the region")
    left.set_title("region perturbation")
    left.grid(alpha=0.3)
    left.legend()
    x = np.arange(len(sequences))
    right.bar(x - 0.2, shares, 0.4, color="tab:purple", label="relevance share")
    right.set_ylabel("relevance share")
    right.set_xticks(x, sequences, rotation=30)
    twin = right.twinx()
    twin.bar(x + 0.2, drops, 0.4, color="tab:orange", label="Dice drop when ablated")
    twin.set_ylabel("Dice drop when the sequence is ablated")
    low, high = min(0.0, float(np.min(drops))), max(float(np.max(drops)), 0.0)
    twin.set_ylim(low * 1.1 if low < 0 else 0.0, high * 1.1 if high > 0 else 0.05)
    right.set_ylim(bottom=min(0.0, float(np.min(shares)) * 1.1))
    handles = right.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    right.legend(handles, [h.get_label() for h in handles], fontsize=8)
    right.set_title("sequence ablation" + (f" (Spearman ρ = {rho:.2f})" if rho is not None else ""))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def cmd_evaluate(args) -> int:
    import numpy as np
    import torch

    from . import evaluation, pipeline
    from .outputs import atomic_folder, safe_name, write_json, writing

    output = Path(args.output)
    modes = _region_modes(args)
    orders = ("morf", "lerf", "random")
    # all-or-nothing; creating the temporary folder first checks that the output can be written
    with atomic_folder(output, args.overwrite, markers=("evaluation.json",)) as folder, \
            _Steps(["load model", "read case", "segment", "ablation"]
                   + [f"{m} {o}" for m in modes for o in ("explain",) + orders] + ["write"], "evaluate") as steps:
        package, model = load_model(args.model)
        target_index = resolve_target(args.target, package.class_names)
        target = make_target(target_index, args.contrast, package.class_names)
        steps.advance("reading the case")
        case = load_case_inputs(package, args.case, args.sequence, args.reference_label)
        mask = read_mask(args.mask, case.geometry) if args.mask else None
        x = pipeline.network_input(case, package)
        steps.advance("segmenting")
        logits, labels = pipeline.predict(model, x, package, args.device)
        class_name = package.class_names[target.index]
        regions, empty = choose_regions(modes, labels, target.index, case.reference_label, mask, class_name)
        if not regions:
            raise UserError("; ".join(empty))
        for message in empty:
            _note(f"note: {message}; skipped")
        # the network's own input grid (padded to what it accepts); masks are padded with zeros
        padded, crop = pipeline.pad_for_model(x, package)
        window = None if all(s <= p for s, p in zip(padded.shape[2:], package.patch_size)) else package.patch_size

        def pad(array):
            full = np.zeros(padded.shape[2:] if array.ndim == 3 else (array.shape[0],) + tuple(padded.shape[2:]),
                            dtype=array.dtype)
            full[(Ellipsis,) + crop] = array
            return full

        if case.reference_label is not None:
            truth, truth_source = case.reference_label == target.index, "reference label"
        else:
            truth, truth_source = labels == target.index, "the model's own prediction"
        steps.advance("sequence ablation")
        ablation = evaluation.sequence_ablation(model, padded, pad(truth), target=target.index, fill=args.fill,
                                                device=args.device, window=window, overlap=package.overlap)
        steps.advance()
        result = pipeline.CaseResult(case, logits, labels, np.zeros((0,)), target=target,
                                     composite=args.composite or package.composite)
        report: dict[str, Any] = {
            "case": case.name, "model": package.name, "target": target.describe(package.class_names),
            "composite": result.composite, "sequences": case.sequences,
            "ablation": {"truth": truth_source, "fill": ablation.fill, "base_dice": ablation.base_dice,
                         "ablated_dice": dict(zip(case.sequences, ablation.ablated_dice.tolist())),
                         "dice_drop": dict(zip(case.sequences, ablation.drops.tolist())),
                         # None where the model calls no voxel the target class (no margin to keep)
                         "base_margin": ablation.base_margin if np.isfinite(ablation.base_margin) else None,
                         "margin_retained": {sequence: (float(v) if np.isfinite(v) else None) for sequence, v
                                             in zip(case.sequences, ablation.margin_retained)}},
            "perturbation_settings": {"patch": list(args.patch), "steps": args.steps, "fill": "blur",
                                      "score": "probability", "seed": args.seed},
            "regions": {}, "notes": empty}
        files = []
        for name, region in regions.items():
            steps.advance(f"explaining {name}")
            explanation = pipeline.explain_region_of(result, model, package, region, device=args.device)
            relevance = explanation.relevance.numpy() if isinstance(explanation.relevance, torch.Tensor) \
                else np.asarray(explanation.relevance)
            shares = explanation.sequence_shares.numpy()
            curves = {}
            for order in orders:
                steps.advance(f"{name}: {order}")
                curves[order] = evaluation.region_perturbation(
                    model, padded, pad(region), pad(relevance), target=target.index, patch=tuple(args.patch),
                    steps=args.steps, device=args.device, order=order, seed=args.seed, window=window,
                    overlap=package.overlap)
            rho = evaluation.shares_vs_ablation(shares, ablation.drops)
            positive = explanation.positive_shares.numpy()
            report["regions"][name] = {
                "relevance_without_sensitivity": [case.sequences[c] for c in evaluation.relevance_without_sensitivity(
                    positive, ablation.margin_retained)],
                "voxels": int(np.sum(region)), "voxels_used": explanation.n_used,
                "shares": dict(zip(case.sequences, shares.tolist())),
                "positive_shares": dict(zip(case.sequences, explanation.positive_shares.numpy().tolist())),
                "spearman_shares_vs_dice_drop": rho,
                "aopc": {o: evaluation.aopc(c) for o, c in curves.items()},
                "area_between_morf_lerf": evaluation.area_between(curves["morf"], curves["lerf"]),
                "area_between_morf_random": evaluation.area_between(curves["morf"], curves["random"]),
                "perturbation": {o: {"fraction_removed": c.fraction_removed.tolist(), "scores": c.scores.tolist(),
                                     "n_patches": c.n_patches, "patches_per_step": c.patches_per_step}
                                 for o, c in curves.items()}}
            files.append((name, curves, shares, rho))
        steps.advance("writing")
        with writing(folder), open(folder / "ablation.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sequence", "ablated_dice", "dice_drop", "margin_retained"]
                            + [f"share_{n}" for n in report["regions"]])
            for c, sequence in enumerate(case.sequences):
                writer.writerow([sequence, ablation.ablated_dice[c], ablation.drops[c], ablation.margin_retained[c]]
                                + [r["shares"][sequence] for r in report["regions"].values()])
        for name, curves, shares, rho in files:
            with writing(folder), open(folder / f"perturbation_{safe_name(name)}.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["step", "fraction_removed"] + list(curves))
                for step in range(len(curves["morf"])):
                    writer.writerow([step, curves["morf"].fraction_removed[step]]
                                    + [curves[o].scores[step] for o in curves])
            with writing(folder):
                _plot_evaluation(folder / f"evaluation_{safe_name(name)}.png", curves, case.sequences, shares,
                                 ablation.drops, f"{case.name}: region {name}, {report['target']}", rho)
        write_json(folder / "evaluation.json", report)
        steps.advance()
    print(f"case {case.name}: Dice {ablation.base_dice:.3f} against {truth_source}")
    for name, info in report["regions"].items():
        print(f"region {name}: AOPC MoRF {info['aopc']['morf']:.4f}, LeRF {info['aopc']['lerf']:.4f}, "
              f"random {info['aopc']['random']:.4f}; area MoRF–LeRF {info['area_between_morf_lerf']:.4f}; "
              f"Spearman(shares, Dice drops) {info['spearman_shares_vs_dice_drop']:.2f}")
        if info["relevance_without_sensitivity"]:
            print(f"  caution: {', '.join(info['relevance_without_sensitivity'])} get relevance although "
                  f"replacing them keeps >= 95 % of the decision margin (see README, 'distractor relevance')")
    print(f"outputs in {output}")
    return 0


# --------------------------------------------------------------------------------------------
# Parser and entry point
# --------------------------------------------------------------------------------------------
class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line too: ``error: lrpseg explain: ... (see lrpseg explain --help)``."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {_one_line(message)} (see {self.prog} --help)\n")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="PKG", help="model package (a <name>.lrpmodel folder)")


def _add_case(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--case", metavar="FOLDER",
                       help="case folder: one image file or DICOM folder per sequence, named after the sequence "
                            "(an optional reference_label.* / label.* file is used as reference label)")
    group.add_argument("--sequence", action="append", metavar="NAME=PATH",
                       help="one sequence image (file or DICOM folder); repeat for every sequence of the model")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when available)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def _add_explanation(p: argparse.ArgumentParser, mask: bool = True) -> None:
    from .engine import COMPOSITES

    p.add_argument("--region", action="extend", nargs="+", choices=REGION_MODES, metavar="MODE",
                   help="region(s) A to explain: predicted (the predicted target class), tp/fn/fp (true positive, "
                        "false negative, false positive parts against the reference label), lesions (each "
                        "connected predicted lesion), mask (a given mask). Default: predicted (mask with --mask)")
    if mask:
        p.add_argument("--mask", metavar="FILE", help="region mask image for --region mask (resampled with nearest "
                                                      "neighbour onto the reference grid; non-zero = region)")
    p.add_argument("--target", metavar="CLASS", help="explained class, index or name (default: the last class)")
    p.add_argument("--contrast", action="store_true",
                   help="explain the class-vs-rest logit contrast instead of the class logit")
    p.add_argument("--composite", choices=COMPOSITES, default=None, help="LRP composite (default: the model's)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("predict", formatter_class=_Formatter, help="segment one case",
                       description="Segment one case with a model package and write the label map on the "
                                   "reference sequence's grid.")
    _add_model(p)
    _add_case(p)
    p.add_argument("--output", required=True, metavar="FILE", help="label map to write (.nrrd, .nii.gz, ...)")
    _add_common(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", formatter_class=_Formatter, help="explain one case (relevance maps, shares, figures)",
                       description="Explain the segmentation of one case: per-sequence relevance maps of each "
                                   "region, the sequence-composition map, per-sequence shares (CSV, JSON) and "
                                   "figures, all on the reference grid, written to OUTPUT.")
    _add_model(p)
    _add_case(p)
    p.add_argument("--output", required=True, metavar="DIR", help="output folder")
    _add_explanation(p)
    p.add_argument("--reference-label", metavar="FILE", help="ground-truth label (for --region tp/fn/fp), "
                                                             "resampled with nearest neighbour")
    _add_common(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("cohort", formatter_class=_Formatter, help="explain many cases; cohort tables and chart",
                       description="Explain every case of a cohort (local processes or a Dask cluster) into "
                                   "OUTPUT/cases/<case>/, then write cohort_shares.csv (one row per case, region and "
                                   "sequence), cohort_status.csv, cohort_summary.csv/.json (per sequence: mean, std, "
                                   "median, min, max, mean rank) and the cohort bar chart cohort_shares.png (one "
                                   "colour per case; cohort_shares_<mode>.png with several region modes). Resumable: "
                                   "finished cases (done.json) are skipped; a failing case is reported and the "
                                   "others go on (exit status 1).")
    _add_model(p)
    p.add_argument("--cases", required=True, metavar="CSV_OR_FOLDER",
                   help="a CSV with columns case, one per sequence name (image paths, relative to the CSV), and "
                        "optionally reference_label and mask; or a folder of case folders (each may hold "
                        "reference_label.* and mask.*)")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder")
    _add_explanation(p, mask=False)
    p.add_argument("--mask", help=argparse.SUPPRESS)
    p.add_argument("--executor", choices=("local", "dask"), default="local",
                   help="local (default): a pool of local processes; dask: a Dask distributed cluster")
    p.add_argument("--workers", type=int, default=1,
                   help="local worker processes, or workers of the local Dask cluster started without --scheduler "
                        "(default: 1)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address, e.g. tcp://host:8786 (all workers "
                                                          "must see the same paths)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per case (default: CPU cores / workers for the local executor)")
    _add_common(p)
    p.set_defaults(func=cmd_cohort)

    p = sub.add_parser("evaluate", formatter_class=_Formatter, help="faithfulness of an explanation",
                       description="Faithfulness of the explanation of one case: 3D region perturbation of each "
                                   "region (most relevant first, least relevant first, random; AOPC and the area "
                                   "between the curves) and per-sequence ablation (Dice drop when a sequence is "
                                   "replaced by an uninformative one) against the relevance shares (Spearman). "
                                   "Writes evaluation.json, ablation.csv, perturbation_<region>.csv and "
                                   "evaluation_<region>.png.")
    _add_model(p)
    _add_case(p)
    p.add_argument("--output", required=True, metavar="DIR", help="output folder")
    _add_explanation(p)
    p.add_argument("--reference-label", metavar="FILE",
                   help="ground-truth label (Dice of the ablation; --region tp/fn/fp). Without it Dice is "
                        "measured against the model's own prediction")
    p.add_argument("--steps", type=int, default=20, help="perturbation steps (default: 20)")
    p.add_argument("--patch", type=int, nargs=3, default=(4, 4, 4), metavar=("D", "H", "W"),
                   help="perturbation block size in voxels (default: 4 4 4)")
    p.add_argument("--fill", default="mean", choices=("mean", "zeros", "noise"), help="what an ablated sequence is replaced by (default: mean)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random perturbation order (default: 0)")
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)

    sub.add_parser("demo", help="run the bundled demo (options: lrpseg demo --help)", add_help=False,
                   description="Delegates to python -m LRPSegmentationLib.demo; see lrpseg demo --help.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``lrpseg`` console script. Returns the exit status (0 ok, 1 some cohort cases failed,
    2 user error)."""
    global _QUIET
    argv = list(sys.argv[1:] if argv is None else argv)
    # `lrpseg [-q] [--debug] demo ...`: everything after `demo` belongs to the demo's own parser
    position = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if position is not None and argv[position] == "demo":
        from . import demo

        try:
            return demo.main(argv[position + 1:])
        except SystemExit as exit_:  # the demo's --help or usage errors
            return int(exit_.code or 0)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, message already printed)
        return int(exit_.code or 0)
    _QUIET = args.quiet
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (UserError, OSError, *_USER_ERRORS) as error:  # OSError: e.g. outputs.WriteError, a full disk
        if args.debug:
            raise
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
