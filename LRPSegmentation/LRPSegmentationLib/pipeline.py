"""One case through the whole data flow, shared by the CLI, the demo and the Slicer module:

    sequences → one grid (the reference sequence's, in the model's orientation, at its spacing) → network input
      → prediction (whole volume or Gaussian-blended sliding windows)
      → region A (a mask, the predicted class, TP/FN/FP against a reference label, or each lesion)
      → explanation (exact M_A, shares) and the sequence-composition map
      → outputs on that grid (NRRD, CSV/JSON, PNG figures); a label map also back on the
        reference sequence's own grid (`labels_on_source_grid`)

Every step is a plain function over arrays and a `ModelPackage`; nothing here knows about files
except `load_case` and `write_case_outputs`/`write_case_files`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from . import outputs
from .engine import RegionExplanation, Target, region_shares
from .inference import Inferer
from .regions import choose_regions
from .imaging import Geometry, find_case_files, read_image, read_sequences, resample_to_reference
from .normalization import normalize_sequences
from .models.package import ModelPackage

PathLike = str | os.PathLike
Progress = Callable[[str], None]



@dataclass
class Case:
    """A patient's sequences on one grid: the case grid, where the network runs and relevance lives.

    Attributes:
        name: case identifier (used in file names and cohort tables).
        images: (C, D, H, W) float32 raw intensities on the case grid, in the model's order.
        geometry: the case grid: the reference sequence's field of view in the model's orientation, at its spacing.
        sequences: C sequence names.
        reference_label: optional (D, H, W) uint8 ground truth on the same grid (for TP/FN/FP).
        source_geometry: the reference sequence's own grid, where a label map goes back to (see
            `labels_on_source_grid`); None on construction means ``geometry`` (not resampled).
    """

    name: str
    images: np.ndarray
    geometry: Geometry
    sequences: list[str]
    reference_label: np.ndarray | None = None
    source_geometry: Geometry | None = None

    def __post_init__(self) -> None:
        if self.source_geometry is None:
            self.source_geometry = self.geometry


def load_case(sources: Mapping[str, PathLike | sitk.Image] | PathLike, package: ModelPackage,
              reference_label: PathLike | sitk.Image | None = None, name: str | None = None) -> Case:
    """Read a case: a mapping sequence name → file/DICOM folder/image, or a case folder holding one
    file per sequence (matched by name, see `imaging.find_case_files`).

    The case grid is the package's reference sequence's grid, with its voxels flipped/permuted into
    the package's ``orientation`` when it has one (as MONAI's ``Orientationd`` does; exact, see
    `imaging.reorient`), at the package's target spacing when the reference's differs by more than
    1 % (same centre, direction and field of view; see `imaging.grid_with_spacing`): the network
    sees voxels of the size and in the order it was trained on. Every sequence is reoriented and
    resampled onto it linearly, a reference label with nearest-neighbour interpolation (moved
    exactly when only the orientation differs). The reference's own grid, as stored, is kept as
    ``Case.source_geometry``.

    Raises:
        ValueError: sequences that do not match the package (names say which), unreadable images,
            sequences that do not overlap the reference or that no normalization can use, a
            reference label whose values are not the package's classes.
    """
    if isinstance(sources, (str, os.PathLike)):
        folder = Path(sources)
        if not folder.is_dir():
            raise FileNotFoundError(f"case folder {folder} does not exist")
        sources = find_case_files(folder, package.sequences)
        name = name or folder.name
    package.check_inputs(list(sources))
    # Loaded here (read_sequences checks them) to keep the reference's own grid.
    loaded = {s: sources[s] if isinstance(sources[s], sitk.Image) else read_image(sources[s])
              for s in package.sequences}
    images, geometry = read_sequences(loaded, package.reference_sequence, spacing=package.target_spacing,
                                      orientation=package.orientation)
    source_geometry = Geometry.from_image(loaded[package.reference_sequence])
    label = None
    if reference_label is not None:
        label = _read_reference_label(reference_label, geometry, package.class_names)
    return Case(name or "case", images, geometry, list(package.sequences), label, source_geometry)


def _read_reference_label(source: PathLike | sitk.Image, geometry: Geometry, class_names: list[str]) -> np.ndarray:
    """A reference label as (D, H, W) uint8 class indices on ``geometry``, checked against the classes."""
    image = source if isinstance(source, sitk.Image) else read_image(source)
    what = "reference label" if isinstance(source, sitk.Image) else f"reference label {source}"
    check_class_values(sitk.GetArrayViewFromImage(image), class_names, what)
    resampled = resample_to_reference(image, geometry, interpolation="nearest", name="reference label")
    return sitk.GetArrayFromImage(resampled).astype(np.uint8)


def check_class_values(values: np.ndarray, class_names: list[str], what: str = "label map") -> None:
    """Raise ValueError unless every value is a class index 0..K-1 (K = ``len(class_names)``).

    Checked before any cast: ``astype(np.uint8)`` would turn -1 into 255 and 0.5 into 0, and every
    voxel of a class the model does not have would silently count as a miss.
    """
    values = np.asarray(values)
    classes = ", ".join(f"{k} = {n}" for k, n in enumerate(class_names))
    if values.dtype.kind in "fc" and not np.all(np.isfinite(values)):
        raise ValueError(f"{what}: holds NaN or infinite values; its values must be class indices: {classes}")
    if values.size == 0 or values.dtype == np.bool_:
        return
    low, high = values.min(), values.max()
    whole = values.dtype.kind in "iu" or bool(np.all(values == np.floor(values)))
    if whole and low >= 0 and high <= len(class_names) - 1:
        return
    distinct = np.unique(values)
    fractional = distinct[distinct != np.floor(distinct)]
    wrong = fractional if fractional.size else distinct[(distinct < 0) | (distinct > len(class_names) - 1)]
    shown = ", ".join(f"{v:g}" for v in wrong[:10]) + (", ..." if wrong.size > 10 else "")
    problem = "are not whole numbers" if fractional.size else "are not classes of the model"
    raise ValueError(f"{what}: values [{shown}] {problem}; its values must be class indices: {classes}")


def labels_on_source_grid(case: Case, logits: np.ndarray) -> np.ndarray:
    """The label map on the reference sequence's own grid (``case.source_geometry``), as nnU-Net
    exports it: the logits (K, D, H, W) on the case grid are resampled linearly (nearest value past
    their border) and the argmax is taken there, so boundaries are interpolated, not blocky. When the
    grids differ only in orientation, the logits are moved voxel for voxel (exact).

    Returns:
        (D, H, W) uint8 labels on ``case.source_geometry``; on the case grid itself when it was not
        resampled (then exactly ``logits.argmax(0)``).
    """
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 4 or logits.shape[1:] != case.geometry.array_shape:
        raise ValueError(f"logits of shape {logits.shape} do not fit the case grid: expected "
                         f"(K,) + {case.geometry.array_shape}")
    if case.source_geometry.same_grid(case.geometry):
        return logits.argmax(0).astype(np.uint8)
    on_source = np.stack([sitk.GetArrayFromImage(resample_to_reference(
        case.geometry.to_image(channel), case.source_geometry, "linear", name="logits", extrapolate=True))
        for channel in logits])
    return on_source.argmax(0).astype(np.uint8)


def network_input(case: Case, package: ModelPackage) -> torch.Tensor:
    """The normalized (1, C, D, H, W) float32 input, exactly as the model was trained."""
    normalized = normalize_sequences(case.images, package.normalization, names=case.sequences)
    return torch.from_numpy(normalized)[None]


def predict(model: nn.Module, x: torch.Tensor, package: ModelPackage, device: str | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Logits (K, D, H, W) float32 and labels (D, H, W) uint8 (argmax) of a normalized input on its
    own grid (`inference.Inferer`: padded, whole volume or sliding windows, cropped back)."""
    logits = Inferer.for_package(model, package, device).logits(x)
    return logits, logits.argmax(0).astype(np.uint8)


@dataclass
class CaseResult:
    """Everything computed for one case: the prediction, the composition map and one explanation
    per region (all on the case grid); why requested regions were empty; how often the network ran."""

    case: Case
    logits: np.ndarray
    labels: np.ndarray
    composition: np.ndarray
    regions: dict[str, np.ndarray] = field(default_factory=dict)
    explanations: dict[str, RegionExplanation] = field(default_factory=dict)
    target: Target | None = None
    composite: str = ""
    empty: list[str] = field(default_factory=list)
    forward_passes: int = 0

    def shares_rows(self) -> list[dict[str, Any]]:
        """One row per (region, sequence): the cohort table's rows for this case."""
        rows = []
        for region, result in self.explanations.items():
            for c, sequence in enumerate(self.case.sequences):
                rows.append({"case": self.case.name, "region": region, "sequence": sequence,
                             "share": float(result.sequence_shares[c]),
                             "positive_share": float(result.positive_shares[c]),
                             "voxels_used": result.n_used, "voxels_excluded": result.n_excluded})
        return rows


def case_target(package: ModelPackage, target: int | Target | None = None, contrast: bool = False) -> Target:
    """The explained `Target`: a class index (default: the last class, e.g. "tumour") or a `Target`."""
    if isinstance(target, Target):
        return target
    index = len(package.class_names) - 1 if target is None else int(target)
    if not 0 <= index < len(package.class_names):
        raise ValueError(f"target class {index} is out of range: the model's classes are "
                         + ", ".join(f"{k}={n}" for k, n in enumerate(package.class_names)))
    return Target(index, contrast=contrast)


def explain_case(case: Case, model: nn.Module, package: ModelPackage,
                 regions: str | Sequence[str] | Mapping[str, np.ndarray] = "predicted",
                 target: int | Target | None = None, composite: str | None = None, device: str | None = None,
                 mask: np.ndarray | None = None, progress: Progress | None = None, require_region: bool = True,
                 region_hints: Mapping[str, str] | None = None) -> CaseResult:
    """A case through the whole explanation, from ONE traced forward pass (the network runs once per
    window): the prediction, the region(s) chosen from it, the composition map, and every region's
    exact explanation (all regions batched through one LRP pass).

    Args:
        case: the sequences on the case grid (`load_case`).
        regions: a region mode or several (see `regions.select_regions`: "predicted", "tp", ...), or
            a name → (D, H, W) mask mapping on the case grid.
        target: class index or `Target`; default: the last class (e.g. "tumour").
        composite: default: the package's.
        mask: the mask of region mode "mask".
        require_region: with True, a request whose regions are all empty raises ValueError naming
            why (before any LRP pass); with False the result holds only the prediction and the
            composition map. Empty regions are always listed in ``CaseResult.empty``.
        region_hints: how the front end's user supplies a missing reference label / mask (added to
            the error message, see `regions.choose_regions`).

    Raises:
        ValueError: a region mode's input is missing, or (``require_region``) every region is empty.
    """
    say = progress or (lambda _msg: None)
    target = case_target(package, target)
    composite = composite or package.composite
    x = network_input(case, package)
    inferer = Inferer.for_package(model, package, device)
    with inferer.trace(x, package.lrp_composite(composite)) as forward:
        say("segmenting")
        logits = forward.logits
        labels = logits.argmax(0).astype(np.uint8)
        if isinstance(regions, Mapping):
            chosen = {name: np.asarray(region, dtype=bool) for name, region in regions.items()}
            empty = [f"region '{name}' is empty" for name, region in chosen.items() if not region.any()]
            chosen = {name: region for name, region in chosen.items() if region.any()}
        else:
            modes = [regions] if isinstance(regions, str) else list(regions)
            chosen, empty = choose_regions(modes, labels, target.index, case.reference_label, mask,
                                           package.class_names[target.index], region_hints)
        if not chosen and require_region:
            raise ValueError("; ".join(empty) or "no region to explain")
        say("computing the sequence-composition map")
        composition = forward.composition(target)
        explanations = {}
        if chosen:
            say(f"explaining {len(chosen)} region(s): {', '.join(chosen)}")
            explanations = forward.explain(chosen, target)
        passes = forward.forward_passes
    return CaseResult(case, logits, labels, composition, chosen, explanations, target, composite, empty, passes)


#: Written last into a case's output folder; marks a folder that `write_case_outputs` may replace.
SUMMARY = "summary.json"


def write_case_outputs(result: CaseResult, folder: PathLike, package: ModelPackage, overwrite: bool = False
                       ) -> dict[str, Any]:
    """Write a case's outputs (see `write_case_files`) to ``folder``, all-or-nothing: into a hidden
    temporary sibling that is renamed to ``folder`` when complete (`outputs.atomic_folder`), so an
    interrupted run leaves the earlier output or none, never a mixture.

    Returns the summary dict (also written as ``summary.json``). An existing non-empty ``folder`` is
    refused (FileExistsError) unless ``overwrite``; then it is replaced as a whole (no file of an
    earlier run survives) when it holds an earlier output (``summary.json``), and refused otherwise.
    """
    with outputs.atomic_folder(folder, overwrite, markers=(SUMMARY,)) as temp:
        summary = write_case_files(result, temp, package)
    return summary


def write_case_files(result: CaseResult, folder: PathLike, package: ModelPackage) -> dict[str, Any]:
    """Write a case's outputs into ``folder`` (created if missing; for an all-or-nothing output pass
    the temporary folder of `outputs.atomic_folder`, as `write_case_outputs` does):

    - ``segmentation.nrrd`` (labels), ``composition_<sequence>.nrrd``;
    - per region R: ``R/relevance_<sequence>.nrrd``, ``R/shares.csv``, ``R/shares.json``,
      and ``R/relevance.png`` (image and relevance panels of every sequence);
    - ``shares.png``: the per-sequence distribution of every region;
    - ``summary.json`` last.

    Returns the summary dict. Existing files are never replaced (FileExistsError, checked for every
    path before anything is written); a failed write raises `outputs.WriteError`.
    """
    from . import figures  # matplotlib only where figures are written (not needed inside 3D Slicer)

    folder = Path(folder)
    case, names = result.case, result.case.sequences
    region_folders = {region: folder / outputs.folder_name(region) for region in result.explanations}
    by_folder: dict[Path, str] = {}
    for region, sub in region_folders.items():
        if by_folder.setdefault(sub, region) != region:
            raise ValueError(f"regions {by_folder[sub]!r} and {region!r} would share the output folder {sub.name}; "
                             "rename one")
    planned = [folder / "segmentation.nrrd", folder / SUMMARY, folder / "shares.png"]
    planned += outputs.relevance_paths(folder, names, "composition")
    for sub in region_folders.values():
        planned += outputs.relevance_paths(sub, names)
        planned += [sub / f for f in ("shares.csv", "shares.json", "relevance.png")]
    outputs.check_writable(planned, overwrite=False)
    with outputs.writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    outputs.write_segmentation(folder, result.labels, case.geometry)
    outputs.write_maps(folder, result.composition, names, case.geometry, prefix="composition")
    summary: dict[str, Any] = {"case": case.name, "model": package.name, "sequences": names,
                               "target": result.target.describe(package.class_names),
                               "composite": result.composite, "regions": {}}
    spacing_zyx = tuple(case.geometry.spacing[::-1])
    for region, explanation in result.explanations.items():
        sub = region_folders[region]
        outputs.write_maps(sub, explanation.relevance.numpy(), names, case.geometry)
        info = {"voxels_used": explanation.n_used, "voxels_excluded": explanation.n_excluded,
                "tolerance": explanation.tolerance, "diagnostics": explanation.diagnostics}
        outputs.write_shares(sub, names, explanation.sequence_shares.tolist(), explanation.positive_shares.tolist(),
                             metadata={"case": case.name, "region": region, "target": summary["target"],
                                       "composite": result.composite, **info})
        with outputs.writing(sub / "relevance.png"):
            figures.plot_relevance_panels(case.images, explanation.relevance.numpy(), result.regions[region], names,
                                          sub / "relevance.png", title=f"{case.name}: {region}", spacing=spacing_zyx)
        summary["regions"][region] = {"shares": dict(zip(names, explanation.sequence_shares.tolist())),
                                      "positive_shares": dict(zip(names, explanation.positive_shares.tolist())),
                                      **info}
    if result.explanations:
        with outputs.writing(folder / "shares.png"):
            figures.plot_sequence_shares({r: e.sequence_shares.tolist() for r, e in result.explanations.items()},
                                         names, folder / "shares.png",
                                         title=f"{case.name}: normalized relevance per sequence")
    outputs.write_json(folder / SUMMARY, summary)
    return summary


def shares_from_composition(result: CaseResult, region: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Shares of any repainted region from the stored composition map (no LRP pass)."""
    shares, used, excluded = region_shares(torch.from_numpy(result.composition), region)
    return shares.numpy(), used, excluded
