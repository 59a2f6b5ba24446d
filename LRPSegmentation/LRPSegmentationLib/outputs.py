"""Writers for an explanation's outputs: relevance maps (NRRD on the reference grid), the
sequence-composition map, and the per-sequence shares (CSV and JSON).

Every writer refuses to replace an existing file unless ``overwrite=True`` (FileExistsError),
and checks all target paths before writing anything, so a refused run leaves no partial output.

Whole outputs are written all-or-nothing with `atomic_folder` (a folder) and `atomic_file` (one
file): everything goes to a hidden temporary sibling (``.<name>.partial-<host>-<pid>``) that is
renamed into place when complete, so a reader sees the old complete output or the new complete one,
never a mixture, and a killed run leaves no half-written file under a final name. Temporary
siblings left by killed runs are removed by the next run on the same machine (those of processes
that still run, or of other machines, are left alone; hidden, they are ignored).

A write that fails (read-only file system, no permission, disk full) raises `WriteError`, whose
message is one line: ``cannot write PATH: No space left on device``.
"""
from __future__ import annotations

import csv
import errno as errnos
import json
import os
import re
import shutil
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .imaging import Geometry, write_image, write_label

PathLike = str | os.PathLike

#: Longest folder name `folder_name` gives (bytes): room for the temporary siblings' prefix and suffix
#: within the usual 255-byte limit of a file name.
MAX_FOLDER_NAME = 200


def safe_name(name: str) -> str:
    """A file-name-safe version of a sequence or class name ("T1-15min" stays, "T1 15 min" → "T1_15_min")."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def folder_name(name: str) -> str:
    """The folder name of a case (or region) called ``name``: `safe_name`, and a leading "." becomes "_"
    (hidden names are the temporary folders'). Two names can give the same folder ("a b", "a_b"):
    callers that create several folders must check that theirs are distinct.

    Raises:
        ValueError: a name that cannot name one folder: empty, only dots ("." and ".." are the folder
            itself and its parent), or longer than `MAX_FOLDER_NAME` bytes.
    """
    safe = safe_name(name)
    if not safe.strip(".") or len(safe.encode()) > MAX_FOLDER_NAME:
        why = "it is too long" if safe.strip(".") else "it is empty or only dots"
        raise ValueError(f"{name!r} cannot be used as a folder name ({why}); rename it")
    return "_" + safe[1:] if safe.startswith(".") else safe


def check_writable(paths: Sequence[Path], overwrite: bool) -> None:
    """Raise FileExistsError listing existing files before anything is written."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise FileExistsError(f"output already exists: {shown}; choose another output folder or pass "
                              "overwrite=True (--overwrite)")


# --------------------------------------------------------------------------------------------
# Failed writes
# --------------------------------------------------------------------------------------------
class WriteError(OSError):
    """An output that cannot be written; ``str()`` is ``cannot write PATH: REASON``."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def _file_system_problem(path: Path) -> int | None:
    """Why writing at ``path`` fails, as the file system tells it now (an errno), or None.
    For writers whose errors carry no errno (SimpleITK/ITK raise RuntimeError)."""
    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if hasattr(os, "statvfs"):
        stats = os.statvfs(folder)
        if stats.f_flag & os.ST_RDONLY:
            return errnos.EROFS
        if stats.f_bavail * stats.f_frsize < 2**20:  # what a failed write leaves of a full disk
            return errnos.ENOSPC
    if not os.access(folder, os.W_OK):
        return errnos.EACCES
    return None


@contextmanager
def writing(path: PathLike) -> Iterator[None]:
    """Raise a failed write inside the block as a `WriteError` naming ``path`` (or the file the
    error names) and the reason. Errors that are not about the file system pass unchanged."""
    try:
        yield
    except WriteError:
        raise
    except OSError as error:
        if error.errno is None:  # ours, e.g. FileExistsError("output already exists ...")
            raise
        raise WriteError(error.errno, error.strerror, str(error.filename or path)) from error
    except RuntimeError as error:  # SimpleITK: no errno, a page of ITK text
        cause = _file_system_problem(Path(path))
        if cause is None:
            raise
        raise WriteError(cause, os.strerror(cause), str(path)) from error


# --------------------------------------------------------------------------------------------
# All-or-nothing outputs
# --------------------------------------------------------------------------------------------
#: This machine, in the temporary siblings' names (a process id means something only on its machine).
_HOST = safe_name(socket.gethostname()).replace(".", "_")[:32] or "host"


def _split_extension(name: str, is_file: bool) -> tuple[str, str]:
    """("seg", ".nii.gz") for a file, so its temporary sibling keeps the extension the writers read;
    (name, "") for a folder."""
    stem, dot, rest = name.partition(".")
    return (stem, dot + rest) if is_file and stem else (name, "")


def _sibling(final: Path, kind: str, is_file: bool = False) -> Path:
    stem, extension = _split_extension(final.name, is_file)
    return final.parent / f".{stem}.{kind}-{_HOST}-{os.getpid()}{extension}"


def _may_be_running(host: str, pid: int) -> bool:
    """Whether the process that made a temporary sibling may still write it (True when unsure)."""
    if host != _HOST or os.name == "nt":  # another machine; Windows' os.kill would end the process
        return True
    if pid == os.getpid():
        return False  # a killed run's, whose number this process now has
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _remove_leftovers(final: Path, is_file: bool = False) -> None:
    """Remove the temporary siblings of ``final`` left by killed runs on this machine. A run killed
    between the two renames of `atomic_folder`'s swap left no ``final`` but its complete old
    folder: that one is put back."""
    if not final.parent.is_dir():
        return
    stem, extension = _split_extension(final.name, is_file)
    pattern = re.compile(rf"\.{re.escape(stem)}\.(partial|old)-(.+)-(\d+){re.escape(extension)}")
    for entry in sorted(final.parent.iterdir()):
        match = pattern.fullmatch(entry.name)
        if match is None or _may_be_running(match.group(2), int(match.group(3))):
            continue
        if match.group(1) == "old" and not final.exists() and not final.is_symlink():
            os.rename(entry, final)
        else:
            _discard(entry)


def _discard(path: Path) -> None:
    """Remove a file or folder tree if it can be removed (cleaning up must not hide the real error)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


def _check_replaceable(final: Path, overwrite: bool, markers: Sequence[str]) -> None:
    """Refuse to replace ``final`` unless it is missing or empty, or ``overwrite`` and it holds an
    earlier output of this kind (one of ``markers``): anything else may be someone's data."""
    if not final.exists():
        return
    if not final.is_dir():
        raise FileExistsError(f"{final} is a file; give a folder")
    if next(final.iterdir(), None) is None:
        return
    if not overwrite:
        raise FileExistsError(f"output already exists: {final}; choose another output folder or pass "
                              "overwrite=True (--overwrite) to replace it")
    if markers and not any((final / m).exists() for m in markers):
        raise FileExistsError(f"{final} is not empty and holds no earlier output (none of {', '.join(markers)}); "
                              "it is not replaced, even with --overwrite: choose another output folder")


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_empty(folders: Sequence[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _rename_in_error(error: BaseException, temp: Path, final: Path) -> None:
    """Name the final output, not the hidden temporary one, in a failed write's message."""
    if isinstance(error, WriteError) and isinstance(error.filename, str) and error.filename.startswith(str(temp)):
        error.filename = str(final) + error.filename[len(str(temp)):]


@contextmanager
def atomic_folder(final: PathLike, overwrite: bool = False, markers: Sequence[str] = ()) -> Iterator[Path]:
    """Write the folder ``final`` all-or-nothing: yields an empty temporary sibling folder, renamed
    to ``final`` when the block ends without an error; after an error (or Ctrl-C) it is removed and
    ``final`` is as it was. Enter it before computing: creating the temporary folder is the check
    that the output can be written, before minutes of work.

    An existing ``final`` (with ``overwrite``) is replaced as a whole, so no file of an earlier run
    survives beside the new ones: it is moved aside (``.<name>.old-<host>-<pid>``), the new folder
    renamed in, then the old one deleted.

    Args:
        final: the output folder. Missing parent folders are created (and removed again on an error).
        overwrite: replace an existing, non-empty ``final``.
        markers: file names of which an earlier output of this kind holds one (e.g. "summary.json"):
            a non-empty folder without any is never replaced (it may be someone's data).

    Raises:
        FileExistsError: ``final`` is a file, or is not empty and may not be replaced.
        WriteError: the folder cannot be written (read-only, no permission, disk full).
    """
    final = Path(os.path.abspath(final))
    temp = _sibling(final, "partial")
    created = _missing_folders(final.parent)
    try:
        with writing(final):
            _remove_leftovers(final)
            _check_replaceable(final, overwrite, markers)
            final.parent.mkdir(parents=True, exist_ok=True)
            temp.mkdir()
        yield temp
        with writing(final):
            _check_replaceable(final, overwrite, markers)  # again: another process may have written it
            _swap_in(temp, final)
    except BaseException as error:
        _discard(temp)
        _remove_empty(created)
        _rename_in_error(error, temp, final)
        raise


def _swap_in(temp: Path, final: Path) -> None:
    if not final.exists():
        os.rename(temp, final)
        return
    old = _sibling(final, "old")
    os.rename(final, old)
    try:
        os.rename(temp, final)
    except BaseException:
        os.rename(old, final)
        raise
    _discard(old)


@contextmanager
def atomic_file(final: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Write the file ``final`` all-or-nothing: yields the path of a temporary sibling (created
    empty, with ``final``'s extension, so writers pick the same format) that replaces ``final``
    (``os.replace``) when the block ends without an error, and is removed otherwise.

    Raises:
        FileExistsError: ``final`` exists and not ``overwrite``, or is a folder.
        WriteError: the file cannot be written.
    """
    final = Path(os.path.abspath(final))
    if final.is_dir():
        raise FileExistsError(f"{final} is a folder; give a file name")
    check_writable([final], overwrite)
    temp = _sibling(final, "partial", is_file=True)
    created = _missing_folders(final.parent)
    try:
        with writing(final):
            _remove_leftovers(final, is_file=True)
            final.parent.mkdir(parents=True, exist_ok=True)
            temp.open("xb").close()
        yield temp
        with writing(final):
            check_writable([final], overwrite)
            os.replace(temp, final)
    except BaseException as error:
        _discard(temp)
        _remove_empty(created)
        _rename_in_error(error, temp, final)
        raise


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------
def relevance_paths(folder: PathLike, names: Sequence[str], prefix: str = "relevance") -> list[Path]:
    return [Path(folder) / f"{prefix}_{safe_name(n)}.nrrd" for n in names]


def write_maps(folder: PathLike, maps: np.ndarray, names: Sequence[str], geometry: Geometry,
               prefix: str = "relevance", overwrite: bool = False) -> list[Path]:
    """One NRRD per sequence: ``<prefix>_<name>.nrrd``.

    Args:
        maps: (C, D, H, W) float, on ``geometry``'s grid.
        names: C sequence names.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 4 or maps.shape[0] != len(names):
        raise ValueError(f"maps must be (C, D, H, W) with C = {len(names)} names, got {maps.shape}")
    paths = relevance_paths(folder, names, prefix)
    check_writable(paths, overwrite)
    written = []
    for array, path in zip(maps, paths):
        with writing(path):
            written.append(write_image(array, geometry, path, overwrite=overwrite, compress=True))
    return written


def shares_table(names: Sequence[str], shares: Sequence[float], positive_shares: Sequence[float] | None = None
                 ) -> list[dict[str, Any]]:
    """Rows {sequence, share, positive_share, rank} (rank 1 = largest share)."""
    order = np.argsort(-np.asarray(shares, dtype=float))
    ranks = np.empty(len(names), dtype=int)
    ranks[order] = np.arange(1, len(names) + 1)
    rows = []
    for i, name in enumerate(names):
        row = {"sequence": name, "share": float(shares[i])}
        if positive_shares is not None:
            row["positive_share"] = float(positive_shares[i])
        row["rank"] = int(ranks[i])
        rows.append(row)
    return rows


def write_shares(folder: PathLike, names: Sequence[str], shares: Sequence[float],
                 positive_shares: Sequence[float] | None = None, metadata: Mapping[str, Any] | None = None,
                 stem: str = "shares", overwrite: bool = False) -> tuple[Path, Path]:
    """``<stem>.csv`` (one row per sequence) and ``<stem>.json`` (rows + metadata: target, composite,
    voxels used/excluded, diagnostics, ...)."""
    folder = Path(folder)
    csv_path, json_path = folder / f"{stem}.csv", folder / f"{stem}.json"
    check_writable([csv_path, json_path], overwrite)
    rows = shares_table(names, shares, positive_shares)
    write_csv(csv_path, rows, overwrite=overwrite)
    write_json(json_path, {"shares": rows, **(metadata or {})}, overwrite=overwrite)
    return csv_path, json_path


def write_csv(path: PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
              overwrite: bool = False) -> Path:
    """A CSV file with a header (``columns``, default: the first row's keys; other keys are left
    out), written all-or-nothing (`atomic_file`)."""
    path = Path(path)
    with atomic_file(path, overwrite) as temp, writing(path), open(temp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns or (rows[0] if rows else [])),
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_segmentation(folder: PathLike, labels: np.ndarray, geometry: Geometry, name: str = "segmentation",
                       overwrite: bool = False) -> Path:
    """The predicted label map as ``<name>.nrrd`` (uint8, compressed)."""
    path = Path(folder) / f"{name}.nrrd"
    check_writable([path], overwrite)
    with writing(path):
        return write_label(labels, geometry, path, overwrite=overwrite)


def write_json(path: PathLike, data: Mapping[str, Any], overwrite: bool = False) -> Path:
    """A JSON file (numpy and torch values converted), refusing to replace an existing one;
    written all-or-nothing (`atomic_file`)."""
    return write_text(path, json.dumps(data, indent=2, default=_json_default), overwrite=overwrite)


def write_text(path: PathLike, text: str, overwrite: bool = False) -> Path:
    """A text file (e.g. a report), refusing to replace an existing one; written all-or-nothing
    (`atomic_file`)."""
    path = Path(path)
    with atomic_file(path, overwrite) as temp, writing(path):
        temp.write_text(text, encoding="utf-8")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
