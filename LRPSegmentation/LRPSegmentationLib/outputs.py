"""Writers for an explanation's outputs: relevance maps (NRRD on the reference grid), the
sequence-composition map, and the per-sequence shares (CSV and JSON).

Every writer refuses to replace an existing file unless ``overwrite=True`` (FileExistsError),
and checks all target paths before writing anything, so a refused run leaves no partial output.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .imaging import Geometry, write_image, write_label

PathLike = str | os.PathLike


def safe_name(name: str) -> str:
    """A file-name-safe version of a sequence or class name ("T1-15min" stays, "T1 15 min" → "T1_15_min")."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def check_writable(paths: Sequence[Path], overwrite: bool) -> None:
    """Raise FileExistsError listing existing files before anything is written."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise FileExistsError(f"output already exists: {shown}; choose another output folder or pass "
                              "overwrite=True (--overwrite)")


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
    return [write_image(m, geometry, p, overwrite=overwrite, compress=True) for m, p in zip(maps, paths)]


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
    folder.mkdir(parents=True, exist_ok=True)
    rows = shares_table(names, shares, positive_shares)
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps({"shares": rows, **(metadata or {})}, indent=2, default=_json_default))
    return csv_path, json_path


def write_segmentation(folder: PathLike, labels: np.ndarray, geometry: Geometry, name: str = "segmentation",
                       overwrite: bool = False) -> Path:
    """The predicted label map as ``<name>.nrrd`` (uint8, compressed)."""
    path = Path(folder) / f"{name}.nrrd"
    check_writable([path], overwrite)
    return write_label(labels, geometry, path, overwrite=overwrite)


def write_json(path: PathLike, data: Mapping[str, Any], overwrite: bool = False) -> Path:
    """A JSON file (numpy and torch values converted), refusing to replace an existing one."""
    path = Path(path)
    check_writable([path], overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_json_default))
    return path


def write_text(path: PathLike, text: str, overwrite: bool = False) -> Path:
    """A text file (e.g. a report), refusing to replace an existing one."""
    path = Path(path)
    check_writable([path], overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
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
