"""nnU-Net v2 trained-model folders, read as they lie on disk (no nnU-Net installation needed).

nnU-Net writes one folder per trained configuration::

    Dataset003_Liver/nnUNetTrainer__nnUNetPlans__3d_fullres/
        plans.json              the configuration: network, patch size, spacing, normalization, transpose
        dataset.json            channel_names (the sequences, in channel order) and labels (the classes)
        fold_0/checkpoint_final.pth   one trained network per cross-validation fold
        fold_1/checkpoint_final.pth   ...

What nnU-Net predicts for a case is the **mean of the folds' logits**, each the mean over the
input's **mirrorings** along the checkpoint's ``inference_allowed_mirroring_axes`` (test-time
augmentation), computed on the case transposed by ``transpose_forward``. `nnunet_ensemble.NNUNetEnsemble` is that
computation as ONE ``nn.Module`` (architecture ``"nnunet.ensemble"``): permute → Σ over folds and
flips → mean → permute back. Flips, permutations and the mean are linear, so its region map M_A is
exact with the same O(1) LRP passes as a single network.

Safety: nothing named in the folder is imported. The network class and the ``_kw_requires_import``
values (conv, norm, dropout, nonlinearity) resolve only from fixed allow-lists (the
dynamic_network_architectures U-Nets, torch.nn classes); checkpoints are read with
``torch.load(weights_only=True)`` allowing only the few numpy types nnU-Net's training logs hold.

Axes: nnU-Net reads images as SimpleITK arrays, (z, y, x) = our (D, H, W) (with the reader
``NibabelIOWithReorient`` after turning the voxel axes to RAS: the package's ``orientation``
"RAS" makes the pipeline do the same), and stores ``spacing``
and ``patch_size`` in the order after ``transpose_forward``; both are permuted back here, so the
package's ``target_spacing`` is (x, y, z) mm and its ``patch_size`` (D, H, W) like every package's.

`detect`, `describe` (torch-free) and `load` are the importer interface of `models.formats`.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..vocabulary import DEFAULT_COMPOSITE, default_class_colors
from .metadata import PackageDescription

if TYPE_CHECKING:
    from .package import ModelPackage

__all__ = ["ARCHITECTURE", "NETWORK_CLASSES", "check_network", "describe", "detect", "load", "read_checkpoint"]

#: The registry name of `nnunet_ensemble.NNUNetEnsemble`.
ARCHITECTURE = "nnunet.ensemble"
PLANS_FILE, DATASET_FILE, CHECKPOINT_FILE = "plans.json", "dataset.json", "checkpoint_final.pth"
INSTALL_HINT = "pip install dynamic-network-architectures  (or pip install 'lrpsegmentation[nnunet]')"

#: plans.json ``network_class_name`` → the dynamic_network_architectures class (module, name) it
#: means. Older plans name ``residual_unet``; the class now lives in ``unet``.
NETWORK_CLASSES: dict[str, tuple[str, str]] = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet": ("unet", "PlainConvUNet"),
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet": ("unet", "ResidualEncoderUNet"),
    "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet": ("unet", "ResidualEncoderUNet"),
    "dynamic_network_architectures.architectures.unet.ResidualUNet": ("unet", "ResidualUNet"),
}
#: torch.nn classes a ``_kw_requires_import`` value may name (by module path or as ``torch.nn.X``).
_TORCH_OPS = ("Conv3d", "InstanceNorm3d", "BatchNorm3d", "GroupNorm", "Dropout", "Dropout3d", "LeakyReLU", "ReLU",
              "PReLU", "ELU")
_TORCH_MODULES = {"Conv3d": "conv", "InstanceNorm3d": "instancenorm", "BatchNorm3d": "batchnorm",
                  "GroupNorm": "normalization", "Dropout": "dropout", "Dropout3d": "dropout",
                  "LeakyReLU": "activation", "ReLU": "activation", "PReLU": "activation", "ELU": "activation"}
#: nnU-Net image reader → the package's input orientation. All give (z, y, x) arrays as SimpleITK reads
#: them; SimpleITKIO and NibabelIO in the file's own voxel order (None), NibabelIOWithReorient after
#: nibabel's ``as_reoriented(io_orientation(affine))``, i.e. with the voxel axes turned to RAS.
_READERS: dict[str, str | None] = {"SimpleITKIO": None, "NibabelIO": None, "NibabelIOWithReorient": "RAS"}


def torch_op_names() -> dict[str, str]:
    """Allowed ``_kw_requires_import`` value → the torch.nn class name it means."""
    names = {}
    for op in _TORCH_OPS:
        names[f"torch.nn.{op}"] = op
        names[f"torch.nn.modules.{_TORCH_MODULES[op]}.{op}"] = op
    return names


# --------------------------------------------------------------------------------------------
# Reading the folder (torch-free)
# --------------------------------------------------------------------------------------------
def detect(path: Path) -> bool:
    """Whether ``path`` looks like an nnU-Net v2 trained-model folder (plans.json or dataset.json
    beside ``fold_*`` folders); `describe` then says precisely what is missing."""
    path = Path(path)
    if not path.is_dir():
        return False
    has_json = (path / PLANS_FILE).is_file() or (path / DATASET_FILE).is_file()
    return has_json and (any(p.is_dir() for p in path.glob("fold_*")) or path.name.count("__") == 2)


def _json(folder: Path, name: str) -> dict[str, Any]:
    file = folder / name
    if not file.is_file():
        raise FileNotFoundError(f"{folder} is not a complete nnU-Net trained-model folder: {name} is missing")
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{file} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{file} must hold a JSON object")
    return value


def _configuration(plans: dict[str, Any], name: str, file: Path) -> dict[str, Any]:
    """plans["configurations"][name] with ``inherits_from`` resolved (as nnU-Net's PlansManager)."""
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict) or name not in configurations:
        known = sorted(configurations) if isinstance(configurations, dict) else []
        raise ValueError(f"{file} has no configuration {name!r} (it has {known})")
    chain: list[str] = []
    while True:
        if name in chain:
            raise ValueError(f"{file}: configurations inherit in a circle: {' → '.join(chain + [name])}")
        chain.append(name)
        if not isinstance(configurations.get(name), dict):
            raise ValueError(f"{file}: configuration {name!r} (inherited by {chain[0]!r}) is missing")
        parent = configurations[name].get("inherits_from")
        if parent is None:
            break
        name = parent
    resolved: dict[str, Any] = {}
    for link in reversed(chain):
        resolved.update(configurations[link])
    return resolved


def _folds(folder: Path, folds: Sequence[int | str] | None) -> list[str]:
    """The fold names ("0", "1", ..., "all") to use: ``folds``, or every ``fold_N`` (not ``fold_all``,
    as nnU-Net's predictor)."""
    if folds is None:
        names = sorted((p.name[5:] for p in folder.glob("fold_*") if p.is_dir() and p.name != "fold_all"),
                       key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))
        if not names:
            hint = "; the only fold is fold_all: pass --folds all (Python: folds=['all'])" \
                if (folder / "fold_all" / CHECKPOINT_FILE).is_file() else ""
            raise FileNotFoundError(f"{folder} has no fold_N/{CHECKPOINT_FILE}: no trained fold to use{hint}")
        unfinished = [f"fold_{n}" for n in names if not (folder / f"fold_{n}" / CHECKPOINT_FILE).is_file()]
        if unfinished:
            raise FileNotFoundError(f"{folder}: {', '.join(unfinished)} has no {CHECKPOINT_FILE} (training not "
                                    "finished?); choose the folds to use with --folds (Python: folds=[...])")
        return names
    names = [str(f).strip() for f in folds]
    if not names or any(not (n.isdigit() or n == "all") for n in names) or len(set(names)) != len(names):
        raise ValueError(f"folds must be distinct fold numbers or 'all', got {list(folds)!r}")
    missing = [f"fold_{n}/{CHECKPOINT_FILE}" for n in names if not (folder / f"fold_{n}" / CHECKPOINT_FILE).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: missing fold(s): {', '.join(missing)}")
    return names


def _labels(dataset: dict[str, Any], file: Path) -> list[str]:
    """Class names in logit order from dataset.json ``labels`` (name → value 0..K-1)."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{file}: 'labels' must be an object mapping class names to label values")
    if dataset.get("regions_class_order") is not None or any(isinstance(v, list) for v in labels.values()):
        raise ValueError(f"{file}: region-based training (labels as lists, regions_class_order) predicts "
                         "overlapping sigmoid outputs, which LRPSegmentation does not explain")
    labels = {name: value for name, value in labels.items() if name != "ignore"}  # not an output (nnU-Net)
    if any(isinstance(v, bool) or not isinstance(v, int) for v in labels.values()) or \
            sorted(labels.values()) != list(range(len(labels))):
        raise ValueError(f"{file}: 'labels' must map class names to the values 0, 1, ..., K-1, got {labels}")
    return sorted(labels, key=labels.get)


def _normalization(scheme: Any, use_mask: Any, properties: Any, channel: int, file: Path) -> dict[str, Any]:
    """nnU-Net's normalization scheme of one channel as a package normalization method.

    ZScoreNormalization with ``use_mask_for_norm`` (BraTS-like data with a zero background) maps to
    z-score over the non-zero voxels, zeros kept: nnU-Net's mask is the non-zero region of all
    channels with enclosed holes filled, so zero voxels enclosed by tissue are treated differently
    (there are few in the skull-stripped images nnU-Net uses it for). CTNormalization (clip to the
    training foreground's 0.5/99.5 percentiles, then (x − mean) / std) is the same linear map as a
    clipped fixed window whose ends map to (percentile − mean) / std.
    """
    if scheme == "ZScoreNormalization":
        return {"type": "zscore", "mask": "nonzero"} if use_mask else {"type": "zscore", "mask": "none"}
    if scheme == "CTNormalization":
        needed = ("mean", "std", "percentile_00_5", "percentile_99_5")
        if not isinstance(properties, dict) or not all(isinstance(properties.get(k), (int, float)) for k in needed):
            raise ValueError(f"{file}: CTNormalization of channel {channel} needs "
                             f"foreground_intensity_properties_per_channel[{str(channel)!r}] with {list(needed)}")
        low, high = float(properties["percentile_00_5"]), float(properties["percentile_99_5"])
        mean, std = float(properties["mean"]), max(float(properties["std"]), 1e-8)  # nnU-Net's epsilon
        if not low < high:
            raise ValueError(f"{file}: CTNormalization of channel {channel} has percentile_00_5 {low:g} not below "
                             f"percentile_99_5 {high:g}")
        return {"type": "window", "low": low, "high": high, "range": [(low - mean) / std, (high - mean) / std],
                "clip": True}
    if scheme == "NoNormalization":
        return {"type": "none"}
    if scheme == "RescaleTo01Normalization":  # (x - min) / (max - min): the 0th and 100th percentiles
        return {"type": "percentile", "lower": 0.0, "upper": 100.0, "range": [0.0, 1.0], "mask": "none"}
    raise ValueError(f"{file}: normalization scheme {scheme!r} of channel {channel} cannot be mapped (supported: "
                     "ZScoreNormalization, CTNormalization, NoNormalization, RescaleTo01Normalization)")


def _fingerprint(folder: Path, files: Sequence[str]) -> str:
    """Identity of the folder's model files (names, sizes, modification times): hashing the
    checkpoints' contents (hundreds of MB each) on every selection would be slow."""
    digest = hashlib.sha256()
    for name in files:
        stat = (folder / name).stat()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def inverse_permutation(permutation: Sequence[int]) -> list[int]:
    """The permutation p⁻¹ with p⁻¹[p[i]] = i."""
    return [permutation.index(i) for i in range(len(permutation))]


def describe(path: Path, folds: Sequence[int | str] | None = None) -> PackageDescription:
    """What the folder holds, read from plans.json, dataset.json and the list of folds (torch-free).

    The description's ``architecture_kwargs`` lack ``mirror_axes`` (stored in the checkpoints; `load`
    fills them in), and ``weights["sha256"]`` is a fingerprint of the files, not of their content.

    Raises:
        FileNotFoundError: missing plans.json, dataset.json or fold checkpoints.
        ValueError: a folder whose configuration cannot be imported (2D, an unknown network class,
            an unmappable normalization, region-based labels, ...); the message names it.
    """
    folder = Path(path)
    plans, dataset = _json(folder, PLANS_FILE), _json(folder, DATASET_FILE)
    plans_file, dataset_file = folder / PLANS_FILE, folder / DATASET_FILE
    parts = folder.name.split("__")
    if len(parts) != 3:
        raise ValueError(f"{folder}: cannot tell the configuration; an nnU-Net trained-model folder is named "
                         "<Trainer>__<Plans>__<configuration> (e.g. nnUNetTrainer__nnUNetPlans__3d_fullres)")
    trainer, plans_name, configuration_name = parts
    configuration = _configuration(plans, configuration_name, plans_file)
    if configuration.get("previous_stage"):
        raise ValueError(f"{plans_file}: configuration {configuration_name!r} is a cascade stage, which takes the "
                         f"segmentation of {configuration['previous_stage']!r} as extra input; LRPSegmentation "
                         "explains single-stage configurations (3d_fullres, 3d_lowres)")
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    if not isinstance(reader, str) or reader not in _READERS:
        raise ValueError(f"{plans_file}: image_reader_writer {reader!r} is not supported (supported: "
                         f"{', '.join(_READERS)})")

    channel_names = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(channel_names, dict) or not channel_names or \
            sorted(channel_names, key=lambda k: int(k) if str(k).isdigit() else -1) != \
            [str(i) for i in range(len(channel_names))]:
        raise ValueError(f"{dataset_file}: 'channel_names' must map \"0\", \"1\", ... to the input channels' names")
    sequences = [str(channel_names[str(i)]) for i in range(len(channel_names))]
    classes = _labels(dataset, dataset_file)

    patch, spacing = configuration.get("patch_size"), configuration.get("spacing")
    transpose = plans.get("transpose_forward", [0, 1, 2])
    if not isinstance(patch, list) or len(patch) != 3:
        raise ValueError(f"{plans_file}: configuration {configuration_name!r} is not 3D (patch_size {patch!r}); "
                         "LRPSegmentation explains 3D networks (use a 3d_fullres or 3d_lowres configuration)")
    if not isinstance(spacing, list) or len(spacing) != 3 or sorted(transpose) != [0, 1, 2]:
        raise ValueError(f"{plans_file}: configuration {configuration_name!r} needs a 3D 'spacing' and "
                         f"'transpose_forward' a permutation of [0, 1, 2]; got {spacing!r}, {transpose!r}")
    backward = inverse_permutation(transpose)
    if plans.get("transpose_backward", backward) != backward:
        raise ValueError(f"{plans_file}: transpose_backward {plans['transpose_backward']} is not the inverse of "
                         f"transpose_forward {transpose}")
    # The configuration's axes are the transposed ones: axis i there is array axis transpose[i].
    array_spacing = [spacing[backward[a]] for a in range(3)]  # (z, y, x)
    array_patch = [patch[backward[a]] for a in range(3)]  # (D, H, W)

    architecture = configuration.get("architecture")
    if not isinstance(architecture, dict) or not {"network_class_name", "arch_kwargs"} <= set(architecture):
        raise ValueError(f"{plans_file}: configuration {configuration_name!r} has no 'architecture' section (plans "
                         "of nnU-Net before 2.4); run nnUNetv2_plan_experiment again to update them")
    kwargs = {"network_class_name": architecture["network_class_name"],
              "arch_kwargs": architecture["arch_kwargs"],
              "kw_requires_import": list(architecture.get("_kw_requires_import", [])),
              "input_channels": len(sequences), "num_classes": len(classes),
              "folds": None, "mirror_axes": None, "transpose_forward": list(transpose)}
    check_network(kwargs)

    schemes, masks = configuration.get("normalization_schemes"), configuration.get("use_mask_for_norm")
    if not isinstance(schemes, list) or len(schemes) != len(sequences) or \
            not isinstance(masks, list) or len(masks) != len(sequences):
        raise ValueError(f"{plans_file}: normalization_schemes and use_mask_for_norm need one entry per channel "
                         f"({len(sequences)}: {sequences})")
    properties = plans.get("foreground_intensity_properties_per_channel",
                           plans.get("foreground_intensity_properties_by_modality", {}))
    normalization = [_normalization(s, m, (properties or {}).get(str(c)), c, plans_file)
                     for c, (s, m) in enumerate(zip(schemes, masks))]

    fold_names = _folds(folder, folds)
    kwargs["folds"] = fold_names
    checkpoints = [f"fold_{f}/{CHECKPOINT_FILE}" for f in fold_names]
    dataset_name = plans.get("dataset_name", folder.parent.name)
    info = {"source": "nnU-Net v2", "dataset": dataset_name, "trainer": trainer, "plans": plans_name,
            "configuration": configuration_name, "folds": fold_names}
    return PackageDescription(
        path=str(folder), name=f"{dataset_name} {configuration_name}", architecture=ARCHITECTURE,
        architecture_kwargs=kwargs, sequences=sequences, normalization=normalization,
        reference_sequence=sequences[0], target_spacing=list(reversed(array_spacing)), class_names=classes,
        class_colors=[list(c) for c in default_class_colors(len(classes))], patch_size=array_patch, overlap=0.5,
        composite=DEFAULT_COMPOSITE, box_low=None, box_high=None,
        weights={"file": checkpoints[0], "sha256": _fingerprint(folder, [PLANS_FILE, DATASET_FILE, *checkpoints]),
                 "parameters": None},
        description=f"nnU-Net v2 {folder.name} of {dataset_name}, ensemble of fold(s) {', '.join(fold_names)}",
        training_info=info, orientation=_READERS[reader])


def check_network(kwargs: Mapping[str, Any]) -> None:
    """Check that the network class and the ``_kw_requires_import`` values are on the allow-lists
    (torch-free); ``kwargs`` holds ``network_class_name``, ``arch_kwargs``, ``kw_requires_import``.

    Raises:
        ValueError: naming the class or value that is not allowed.
    """
    name = kwargs.get("network_class_name")
    if name not in NETWORK_CLASSES:
        raise ValueError(f"the nnU-Net plans name the network class {name!r}, which LRPSegmentation does not import "
                         f"(supported: {', '.join(sorted({c for _, c in NETWORK_CLASSES.values()}))} from "
                         "dynamic_network_architectures)")
    arch = kwargs.get("arch_kwargs")
    if not isinstance(arch, dict):
        raise ValueError(f"the nnU-Net architecture's arch_kwargs must be an object, got {arch!r}")
    allowed = torch_op_names()
    for key in kwargs.get("kw_requires_import") or []:
        if key not in arch:
            raise ValueError(f"_kw_requires_import names {key!r}, which is not in arch_kwargs")
        value = arch[key]
        if value is not None and value not in allowed:
            raise ValueError(f"the nnU-Net plans set {key} to {value!r}, which LRPSegmentation does not import "
                             f"(supported: torch.nn {', '.join(_TORCH_OPS)})")
    if arch.get("conv_op") not in (None, *[n for n, op in allowed.items() if op == "Conv3d"]):
        raise ValueError(f"conv_op {arch.get('conv_op')!r}: LRPSegmentation explains 3D networks (Conv3d)")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def _allowed_globals() -> list[Any]:
    """The non-tensor types nnU-Net checkpoints hold: numpy scalars in the training log (losses,
    Dice, ``_best_ema``), pickled under numpy 1 or numpy 2 module names."""
    import numpy as np

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    allowed: list[Any] = [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
                          np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in ("Float16DType", "Float32DType", "Float64DType", "Int32DType",
                                                   "Int64DType", "BoolDType") if hasattr(dtypes, n)]
    return allowed


def _allowed_names() -> set[str]:
    names = set()
    for item in _allowed_globals():
        if isinstance(item, tuple):
            names.add(item[1])
        else:
            names.add(f"{item.__module__}.{item.__qualname__}")
    return names


def read_checkpoint(file: Path) -> dict[str, Any]:
    """An nnU-Net checkpoint read with ``weights_only=True``, allowing only the types nnU-Net stores.

    Raises:
        ValueError: a file that is not a checkpoint, or one holding other objects (named).
    """
    import pickle

    import torch

    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(file))
    except Exception as error:  # noqa: BLE001 — any failure: not a readable torch checkpoint
        raise ValueError(f"{file} cannot be read as a PyTorch checkpoint: {error}") from None
    unexpected = sorted(set(unsafe) - _allowed_names())
    if unexpected:
        raise ValueError(f"{file} holds objects nnU-Net checkpoints do not ({', '.join(unexpected)}); refusing to "
                         "load it, since unpickling them could execute code")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as error:
        raise ValueError(f"{file} cannot be loaded safely: {' '.join(str(error).split())[:300]}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("network_weights"), Mapping):
        raise ValueError(f"{file} is not an nnU-Net checkpoint (no 'network_weights')")
    return checkpoint


def load(path: Path, folds: Sequence[int | str] | None = None, mirroring: bool = True) -> ModelPackage:
    """The folder's fold ensemble (with mirroring unless ``mirroring=False``) as a `ModelPackage`.

    Args:
        path: the ``<Trainer>__<Plans>__<configuration>`` folder.
        folds: fold names to use (default: every ``fold_N``, as nnU-Net).
        mirroring: nnU-Net's test-time mirroring along the checkpoint's
            ``inference_allowed_mirroring_axes`` (on by default, as in nnU-Net).

    Raises:
        FileNotFoundError / ValueError: one line naming what is missing or refused.
    """
    import torch

    from .package import ModelPackage

    folder = Path(path)
    description = describe(folder, folds)
    kwargs = dict(description.architecture_kwargs)
    state: dict[str, torch.Tensor] = {}
    mirror_axes: list[int] | None = None
    for fold in kwargs["folds"]:
        file = folder / f"fold_{fold}" / CHECKPOINT_FILE
        checkpoint = read_checkpoint(file)
        configuration = (checkpoint.get("init_args") or {}).get("configuration")
        if configuration is not None and configuration != description.training_info["configuration"]:
            raise ValueError(f"{file} was trained for configuration {configuration!r}, but the folder is "
                             f"{folder.name!r}")
        if mirror_axes is None:  # nnU-Net takes them from the first fold
            axes = checkpoint.get("inference_allowed_mirroring_axes")
            mirror_axes = [int(a) for a in axes] if axes is not None else []
        weights = dict(checkpoint["network_weights"])
        if weights and all(k.startswith("module.") for k in weights):  # saved from DistributedDataParallel
            weights = {k[len("module."):]: v for k, v in weights.items()}
        bad = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise ValueError(f"{file}: network_weights holds non-tensors ({', '.join(map(str, bad[:5]))})")
        state.update({f"folds.fold_{fold}.{k}": v for k, v in weights.items()})
    kwargs["mirror_axes"] = mirror_axes if mirroring else []
    info = dict(description.training_info, mirroring=bool(mirroring and mirror_axes), mirror_axes=kwargs["mirror_axes"])
    package = ModelPackage(
        name=description.name, architecture=ARCHITECTURE, architecture_kwargs=kwargs,
        sequences=description.sequences, normalization=description.normalization,
        reference_sequence=description.reference_sequence, target_spacing=description.target_spacing,
        class_names=description.class_names, class_colors=description.class_colors,
        patch_size=description.patch_size, overlap=description.overlap, composite=description.composite,
        description=description.description + (", with mirroring" if info["mirroring"] else ", without mirroring"),
        training_info=info, orientation=description.orientation, state_dict=state)
    return package  # `formats.load` checks its architecture
