"""Train the demo 3D U-Net on phantom cases, reproducibly, on a CPU.

The demo model is the seed's Çiçek 3D U-Net (:class:`~LRPSegmentationLib.models.UNet3D`, six
sequences in, two classes out: background, tumour), small enough to ship (base_channels 8,
depth 3: 352 k parameters, 1.4 MB) and trained on synthetic cases from
:mod:`LRPSegmentationLib.phantom`, whose lesion signal per sequence is known.

Everything is deterministic given the seeds: cases come from phantom seeds, the network's
initialization, patch positions and flips from ``torch.manual_seed(seed)`` and a dedicated
``torch.Generator``; with the same torch build and thread count, the same call gives bitwise
identical weights.

Input pipeline (:func:`preprocess`): each sequence is z-scored with the statistics of its own
foreground (Otsu) mask — :data:`DEMO_NORMALIZATION`, applied with
:func:`LRPSegmentationLib.normalization.normalize_sequences`, the same call the pipeline uses — and the
six are stacked in :data:`~LRPSegmentationLib.phantom.SEQUENCES` order into (1, 6, D, H, W).

Training: random (D, 64, 64) patches of whole (32, 96, 96) phantom volumes (half of them
centred on a tumour voxel), random flips along the three axes, loss = cross-entropy + soft Dice
of the tumour class, Adam with a cosine learning-rate decay. Evaluation runs on whole volumes.

Output (:func:`package_model`): a model package (``models.package``, ``<name>.lrpmodel/`` with
``model.json`` + ``weights.safetensors``) holding the architecture, the weights, the phantom's
sequences and normalization, and the training record (seeds, configuration, held-out Dice).

Command line (the default demo model: 1500 steps, about 9.5 min on 2 idle CPU cores at about
0.36 s/step; slower when other processes share the cores, then ``--threads 1`` is better)::

    python -m LRPSegmentationLib.training --output LRPSegmentation/Resources/Models/demo_unet3d.lrpmodel

The variant used to check the shares adds ``--contrast-only-in T2 T1-20s``; the information
control (the other sequences from unrelated cases) ``--information-only-in T2 T1-20s``.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import phantom
from .evaluation import dice  # noqa: F401  (part of this module's API)
from .normalization import normalize_sequences
from .models import ModelPackage, UNet3D, create_package

__all__ = [
    "DEMO_NORMALIZATION",
    "CLASS_NAMES",
    "DEMO_ARCHITECTURE",
    "DEMO_SHAPE",
    "DEMO_PATCH",
    "TRAIN_FIRST_SEED",
    "VAL_FIRST_SEED",
    "TEST_FIRST_SEED",
    "DONOR_SEED_OFFSET",
    "TrainingHistory",
    "preprocess",
    "phantom_training_case",
    "prepare_cases",
    "dice",
    "soft_dice_ce_loss",
    "predict",
    "evaluate",
    "train_demo_model",
    "package_model",
    "main",
]

DEMO_NORMALIZATION: dict[str, Any] = {"type": "zscore", "mask": "foreground"}
"""Per-sequence normalization of the demo model's input: z-score with the mean and standard
deviation inside the sequence's Otsu foreground mask (see ``normalization.validate_normalization``)."""

CLASS_NAMES: tuple[str, ...] = ("background", "tumour")
"""Output channels of the demo model."""

DEMO_ARCHITECTURE: dict[str, int] = {"in_channels": 6, "out_channels": 2, "base_channels": 8,
                                     "depth": 3, "head_bias": False, "activation": "leaky_relu"}
"""``UNet3D`` keyword arguments of the demo model. No head bias: a first model trained with one
called tumour by default where its last features were silent (the features detected background),
so 93 % of its tumour voxels had logits from the bias alone and nothing for LRP to explain. Without
the bias but with ReLU, training stalled with silent features at tumour voxels (Dice 0); LeakyReLU
keeps a gradient there."""

DEMO_SHAPE: tuple[int, int, int] = (32, 96, 96)
"""Phantom grid (D, H, W) the demo model is trained on (spacing ``phantom.default_spacing``:
5 × 3.75 × 3.75 mm)."""

DEMO_PATCH: tuple[int, int, int] = (32, 64, 64)
"""Training patch size (whole depth, 64 × 64 in plane)."""

TRAIN_FIRST_SEED = 1000
"""Training cases use phantom seeds TRAIN_FIRST_SEED, TRAIN_FIRST_SEED + 1, ..."""
VAL_FIRST_SEED = 5000
"""Validation (held-out) cases use seeds from here."""
TEST_FIRST_SEED = 9000
"""Seeds from here are never used by training or validation: use them for fresh test cases."""
DONOR_SEED_OFFSET = 100_000
"""The information control (``information_only_in``) takes the other sequences of case ``seed``
from the unrelated case ``seed + DONOR_SEED_OFFSET``."""

# tumour_weight: without a head bias, an unweighted loss settles where tumour voxels have silent
# features (logits tied, p = 0.5, soft Dice ≈ 0.67, argmax background); weighting the tumour class
# in the cross-entropy pushes the network to produce evidence for tumour.
_DEFAULTS = {"n_train_cases": 48, "n_val_cases": 8, "steps": 1500, "batch_size": 2,
             "learning_rate": 3e-3, "seed": 0, "tumour_weight": 10.0}


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def preprocess(case: "phantom.PhantomCase | np.ndarray",
               normalization: Mapping[str, Any] = DEMO_NORMALIZATION) -> torch.Tensor:
    """Normalize a case's six sequences and stack them as the network input.

    Args:
        case: a :class:`~LRPSegmentationLib.phantom.PhantomCase` or a (C, D, H, W) array.
        normalization: one method dict for every sequence (default :data:`DEMO_NORMALIZATION`).

    Returns:
        (1, C, D, H, W) float32 CPU tensor.
    """
    images = case.images if isinstance(case, phantom.PhantomCase) else np.asarray(case)
    names = case.sequences if isinstance(case, phantom.PhantomCase) else None
    normalized = normalize_sequences(images, normalization, names=names)
    return torch.from_numpy(np.ascontiguousarray(normalized))[None]


def phantom_training_case(seed: int, shape: Sequence[int] = DEMO_SHAPE,
                          contrast: Mapping[str, Sequence[float]] | None = None,
                          information_only_in: Sequence[str] | None = None) -> "phantom.PhantomCase":
    """The phantom case a model of this module sees for ``seed``.

    ``information_only_in``: the information control — lesion contrast only in these sequences
    (``phantom.contrast_only_in``) and every other sequence from the unrelated case
    ``seed + DONOR_SEED_OFFSET`` (``phantom.with_unrelated_sequences``), so only these sequences
    say anything about the case's lesions. Overrides ``contrast``.
    """
    options: dict[str, Any] = {"shape": tuple(int(n) for n in shape)}
    if information_only_in is not None:
        options["contrast"] = phantom.contrast_only_in(information_only_in)
    elif contrast is not None:
        options["contrast"] = contrast
    case = phantom.generate_case(int(seed), **options)
    if information_only_in is not None:
        donor = phantom.generate_case(int(seed) + DONOR_SEED_OFFSET, **options)
        case = phantom.with_unrelated_sequences(case, information_only_in, donor)
    return case


def prepare_cases(seeds: Sequence[int], shape: Sequence[int] = DEMO_SHAPE,
                  contrast: Mapping[str, Sequence[float]] | None = None,
                  normalization: Mapping[str, Any] = DEMO_NORMALIZATION,
                  information_only_in: Sequence[str] | None = None
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Phantom cases for the given seeds as ``(x (6, D, H, W) float32, y (D, H, W) int64)``
    (see :func:`phantom_training_case` for ``contrast`` and ``information_only_in``)."""
    data = []
    for seed in seeds:
        case = phantom_training_case(seed, shape, contrast, information_only_in)
        data.append((preprocess(case, normalization)[0],
                     torch.from_numpy(case.tumour.astype(np.int64))))
    return data


def _randomize_channels(xp: torch.Tensor, channels: Sequence[int], data, generator: torch.Generator) -> torch.Tensor:
    """Redraw ``channels`` of one (C, d, h, w) patch: each, independently, with probability 1/2 a
    patch of that sequence from a random training case at a random place, 1/4 Gaussian noise of
    random level and spread, 1/4 kept — so their content says nothing about the label."""
    xp = xp.clone()
    for c in channels:
        u = float(torch.rand(1, generator=generator))
        if u < 0.5:
            source = data[int(torch.randint(len(data), (1,), generator=generator))][0][c]
            start = [int(torch.randint(s - n + 1, (1,), generator=generator)) for n, s in zip(xp.shape[1:], source.shape)]
            xp[c] = source[tuple(slice(a, a + n) for a, n in zip(start, xp.shape[1:]))]
        elif u < 0.75:
            spread = 1.5 * float(torch.rand(1, generator=generator))
            level = float(torch.randn(1, generator=generator))
            xp[c] = torch.randn(xp.shape[1:], generator=generator) * spread + level
    return xp


def _sample_batch(data, batch_size: int, patch: Sequence[int], generator: torch.Generator,
                  flip: bool = True, randomize: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch of patches; half of them centred (as far as fits) on a tumour voxel;
    the ``randomize`` channels redrawn by :func:`_randomize_channels`."""
    xs, ys = [], []
    for _ in range(batch_size):
        index = int(torch.randint(len(data), (1,), generator=generator))
        x, y = data[index]
        size = y.shape
        p = [min(int(a), int(b)) for a, b in zip(patch, size)]
        if float(torch.rand(1, generator=generator)) < 0.5 and bool(y.any()):
            voxels = torch.nonzero(y)
            centre = voxels[int(torch.randint(len(voxels), (1,), generator=generator))].tolist()
            start = [min(max(c - pp // 2, 0), s - pp) for c, pp, s in zip(centre, p, size)]
        else:
            start = [int(torch.randint(s - pp + 1, (1,), generator=generator)) for pp, s in zip(p, size)]
        sl = tuple(slice(a, a + pp) for a, pp in zip(start, p))
        xp, yp = x[(slice(None),) + sl], y[sl]
        if flip:
            dims = [d for d in range(3) if float(torch.rand(1, generator=generator)) < 0.5]
            if dims:
                xp = torch.flip(xp, [d + 1 for d in dims])
                yp = torch.flip(yp, dims)
        if randomize:
            xp = _randomize_channels(xp, randomize, data, generator)
        xs.append(xp)
        ys.append(yp)
    return torch.stack(xs), torch.stack(ys)


# --------------------------------------------------------------------------------------------
# Loss and metrics
# --------------------------------------------------------------------------------------------


def soft_dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0,
                      tumour_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy (tumour voxels weighted by ``tumour_weight``) + (1 − soft Dice of class 1).

    Args:
        logits: (N, 2, D, H, W).
        target: (N, D, H, W) int64 labels in {0, 1}.
    """
    weight = torch.tensor([1.0, tumour_weight], dtype=logits.dtype, device=logits.device)
    ce = F.cross_entropy(logits, target, weight=weight)
    probability = torch.softmax(logits, dim=1)[:, 1]
    truth = (target == 1).to(probability.dtype)
    intersection = (probability * truth).sum()
    soft_dice = (2 * intersection + smooth) / (probability.sum() + truth.sum() + smooth)
    return ce + (1 - soft_dice)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(D, H, W) bool tumour mask (argmax of the logits) for an input (1, C, D, H, W) or (C, D, H, W)."""
    if x.dim() == 4:
        x = x[None]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        return (model(x.to(device)).argmax(1)[0] == 1).cpu()
    finally:
        model.train(was_training)


def evaluate(model: torch.nn.Module, cases) -> list[float]:
    """Per-case tumour Dice of ``model`` on whole volumes.

    Args:
        cases: PhantomCase objects (preprocessed with :data:`DEMO_NORMALIZATION`) or
            ``(x, y)`` pairs from :func:`prepare_cases`.
    """
    scores = []
    for case in cases:
        if isinstance(case, phantom.PhantomCase):
            x, y = preprocess(case), torch.from_numpy(case.tumour)
        else:
            x, y = case
        scores.append(dice(predict(model, x), y == 1 if y.dtype != torch.bool else y))
    return scores


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class TrainingHistory:
    """What :func:`train_demo_model` did: loss per step, validation Dice at checkpoints."""

    loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_dice: list[list[float]] = field(default_factory=list)
    train_seeds: list[int] = field(default_factory=list)
    val_seeds: list[int] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def final_val_dice(self) -> list[float]:
        return self.val_dice[-1] if self.val_dice else []


def train_demo_model(n_train_cases: int = _DEFAULTS["n_train_cases"],
                     n_val_cases: int = _DEFAULTS["n_val_cases"],
                     steps: int = _DEFAULTS["steps"],
                     base_channels: int = DEMO_ARCHITECTURE["base_channels"],
                     depth: int = DEMO_ARCHITECTURE["depth"],
                     head_bias: bool = DEMO_ARCHITECTURE["head_bias"],
                     activation: str = DEMO_ARCHITECTURE["activation"],
                     tumour_weight: float = _DEFAULTS["tumour_weight"],
                     shape: Sequence[int] = DEMO_SHAPE,
                     contrast: Mapping[str, Sequence[float]] | None = None,
                     information_only_in: Sequence[str] | None = None,
                     randomize_others: bool = True,
                     seed: int = _DEFAULTS["seed"],
                     progress: bool = True,
                     patch: Sequence[int] | None = DEMO_PATCH,
                     batch_size: int = _DEFAULTS["batch_size"],
                     learning_rate: float = _DEFAULTS["learning_rate"],
                     validate_every: int = 300,
                     train_first_seed: int = TRAIN_FIRST_SEED,
                     val_first_seed: int = VAL_FIRST_SEED,
                     flip: bool = True,
                     num_threads: int | None = 2,
                     device: str | torch.device = "cpu") -> tuple[UNet3D, TrainingHistory]:
    """Train a ``UNet3D(6, 2, base_channels, depth)`` on phantom cases.

    Args:
        n_train_cases: training cases (seeds ``train_first_seed + i``).
        n_val_cases: held-out validation cases (seeds ``val_first_seed + i``); 0 skips validation.
        steps: optimizer steps (one batch of ``batch_size`` patches each).
        base_channels, depth: ``UNet3D`` size; head_bias: see ``models.unet3d`` (off for the demo).
        shape: phantom grid (D, H, W); each of D, H, W divisible by ``2**depth``.
        contrast: phantom contrast table (e.g. ``phantom.contrast_only_in([...])``); None = default.
        information_only_in: train on the information control (see :func:`phantom_training_case`).
        randomize_others: with ``information_only_in``, redraw the other sequences of every training
            patch (a random case's patch, noise, or kept; :func:`_randomize_channels`) so the network
            learns to ignore them. Without it a network keeps first-layer weights on them (see the
            README's proof: they are distractors whose contributions cancel only on average).
        seed: seeds torch (initialization, patches, flips).
        progress: print the loss and validation Dice as it goes.
        patch: training patch size, clipped to ``shape`` (None = whole volumes); divisible by
            ``2**depth``.
        batch_size, learning_rate: Adam settings; the learning rate decays by a cosine to 2 %.
        validate_every: steps between validation passes (and one at the end).
        flip: random flips along z, y, x.
        tumour_weight: cross-entropy weight of tumour voxels.
        num_threads: ``torch.set_num_threads`` value (None leaves it).
        device: where to train ("cpu" reproduces the shipped CPU numbers; "cuda" is much faster
            but gives different, not bitwise reproducible, weights). Patches are always drawn on
            the CPU, so the data order does not depend on the device.

    Returns:
        ``(model, history)``; the model is in eval mode on the CPU.
    """
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    shape = tuple(int(s) for s in shape)
    patch = shape if patch is None else tuple(min(int(p), s) for p, s in zip(patch, shape))
    for size in shape + patch:
        if size % 2 ** depth:
            raise ValueError(f"shape {shape} and patch {patch} must be divisible by 2**depth = {2 ** depth}")
    start_time = time.perf_counter()
    train_seeds = list(range(train_first_seed, train_first_seed + n_train_cases))
    val_seeds = list(range(val_first_seed, val_first_seed + n_val_cases))
    train_data = prepare_cases(train_seeds, shape, contrast, information_only_in=information_only_in)
    val_data = (prepare_cases(val_seeds, shape, contrast, information_only_in=information_only_in)
                if n_val_cases else [])

    randomize = ([c for c, name in enumerate(phantom.SEQUENCES) if name not in information_only_in]
                 if information_only_in is not None and randomize_others else [])
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = UNet3D(in_channels=6, out_channels=2, base_channels=base_channels, depth=depth,
                   head_bias=head_bias, activation=activation).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(step, steps) / max(steps, 1))))
    history = TrainingHistory(train_seeds=train_seeds, val_seeds=val_seeds, config={
        "n_train_cases": n_train_cases, "n_val_cases": n_val_cases, "steps": steps,
        "base_channels": base_channels, "depth": depth, "head_bias": head_bias, "activation": activation,
        "tumour_weight": tumour_weight,
        "shape": list(shape), "patch": list(patch),
        "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed, "flip": flip,
        "loss": "cross-entropy + soft Dice (tumour)", "optimizer": "Adam, cosine decay to 2 %",
        "custom_contrast": contrast is not None or information_only_in is not None,
        "information_only_in": list(information_only_in) if information_only_in is not None else None,
        "randomized_channels": [phantom.SEQUENCES[c] for c in randomize],
        "device": str(device)})

    model.train()
    running = None
    for step in range(1, steps + 1):
        x, y = _sample_batch(train_data, batch_size, patch, generator, flip, randomize)
        loss = soft_dice_ce_loss(model(x.to(device)), y.to(device), tumour_weight=tumour_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        history.loss.append(value)
        running = value if running is None else 0.95 * running + 0.05 * value
        if val_data and (step % validate_every == 0 or step == steps):
            scores = evaluate(model, val_data)
            model.train()
            history.val_steps.append(step)
            history.val_dice.append(scores)
            if progress:
                print(f"step {step}/{steps} loss {running:.4f} val Dice {np.mean(scores):.3f} "
                      f"({time.perf_counter() - start_time:.0f} s)", flush=True)
        elif progress and step % 50 == 0:
            print(f"step {step}/{steps} loss {running:.4f} ({time.perf_counter() - start_time:.0f} s)",
                  flush=True)
    model.eval()
    model.cpu()
    history.seconds = time.perf_counter() - start_time
    return model, history


# --------------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------------


def package_model(model: UNet3D, history: TrainingHistory | None = None,
                  contrast_sequences: Sequence[str] | None = None, name: str = "demo_unet3d") -> ModelPackage:
    """The trained network as a model package (`models.package`): architecture, weights, the
    phantom's sequences and normalization, class names, spacing, patch, and the training record
    (seeds, configuration, held-out Dice) in ``training_info``."""
    config = history.config if history is not None else {}
    shape = tuple(config.get("shape", DEMO_SHAPE))
    spacing_zyx = phantom.default_spacing(shape)
    information_only_in = config.get("information_only_in")
    if information_only_in is not None:
        contrast_sequences = information_only_in
    info: dict[str, Any] = {
        "data": "synthetic liver DCE-MRI phantom (LRPSegmentationLib.phantom)",
        "phantom_shape": list(shape),
        "phantom_contrast": (f"contrast_only_in({list(contrast_sequences)})" if contrast_sequences is not None
                             else "CONTRAST_TABLE"),
        "contrast_sequences": list(contrast_sequences) if contrast_sequences is not None else None,
        # The information control: the other sequences come from case seed + DONOR_SEED_OFFSET.
        "information_only_in": list(information_only_in) if information_only_in is not None else None,
    }
    if information_only_in is not None:
        info["phantom_contrast"] += (f" + with_unrelated_sequences(donor = seed + {DONOR_SEED_OFFSET}) "
                                     f"for the other sequences")
    if history is not None:
        final = history.final_val_dice
        info.update({"training": {**config, "train_seeds": history.train_seeds, "seconds": round(history.seconds, 1),
                                  "torch": torch.__version__,
                                  "final_loss_mean_last_50": float(np.mean(history.loss[-50:]))},
                     "held_out_seeds": history.val_seeds,
                     "held_out_dice": [round(v, 4) for v in final],
                     "held_out_dice_mean": round(float(np.mean(final)), 4) if final else None})
    kwargs = {"in_channels": model.encoders[0][0].in_channels, "out_channels": model.head.out_channels,
              "base_channels": model.encoders[0][0].out_channels, "depth": model.depth,
              "head_bias": model.head.bias is not None,
              "activation": "leaky_relu" if isinstance(model.encoders[0][2], torch.nn.LeakyReLU) else "relu"}
    variant = f", lesion contrast only in {', '.join(contrast_sequences)}" if contrast_sequences else ""
    if information_only_in is not None:
        variant = (f", information only in {', '.join(information_only_in)} (lesion contrast only there, "
                   f"the other sequences from unrelated cases)")
    return create_package(
        model, "unet3d", kwargs, phantom.SEQUENCES, normalization=DEMO_NORMALIZATION, class_names=CLASS_NAMES,
        target_spacing=tuple(reversed(spacing_zyx)), patch_size=shape, name=name,
        class_colors=[(0.0, 0.0, 0.0), (0.95, 0.35, 0.2)],
        description=f"The seed's 3D U-Net trained on the synthetic six-sequence liver phantom{variant}.",
        training_info=info)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m LRPSegmentationLib.training --output PATH [options]``: train and save."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="model package folder to write (<name>.lrpmodel)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing package")
    parser.add_argument("--train-cases", type=int, default=_DEFAULTS["n_train_cases"])
    parser.add_argument("--val-cases", type=int, default=_DEFAULTS["n_val_cases"])
    parser.add_argument("--steps", type=int, default=_DEFAULTS["steps"])
    parser.add_argument("--base-channels", type=int, default=DEMO_ARCHITECTURE["base_channels"])
    parser.add_argument("--depth", type=int, default=DEMO_ARCHITECTURE["depth"])
    parser.add_argument("--shape", type=int, nargs=3, default=list(DEMO_SHAPE))
    parser.add_argument("--batch-size", type=int, default=_DEFAULTS["batch_size"])
    parser.add_argument("--learning-rate", type=float, default=_DEFAULTS["learning_rate"])
    parser.add_argument("--seed", type=int, default=_DEFAULTS["seed"])
    parser.add_argument("--tumour-weight", type=float, default=_DEFAULTS["tumour_weight"],
                        help="cross-entropy weight of tumour voxels")
    parser.add_argument("--contrast-only-in", nargs="+", default=None, metavar="SEQUENCE",
                        help="train on the phantom variant with lesion contrast only in these sequences")
    parser.add_argument("--information-only-in", nargs="+", default=None, metavar="SEQUENCE",
                        help="train on the information control: lesion contrast only in these sequences "
                             "and every other sequence taken from an unrelated case")
    parser.add_argument("--keep-others", action="store_true",
                        help="with --information-only-in: do not redraw the other sequences during training")
    parser.add_argument("--device", default="cpu", help="cpu (default, reproducible) or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.contrast_only_in and args.information_only_in:
        parser.error("give --contrast-only-in or --information-only-in, not both")
    contrast = phantom.contrast_only_in(args.contrast_only_in) if args.contrast_only_in else None
    model, history = train_demo_model(
        n_train_cases=args.train_cases, n_val_cases=args.val_cases, steps=args.steps,
        base_channels=args.base_channels, depth=args.depth, shape=args.shape, contrast=contrast,
        information_only_in=args.information_only_in, randomize_others=not args.keep_others,
        seed=args.seed, progress=not args.quiet, batch_size=args.batch_size,
        learning_rate=args.learning_rate, device=args.device, num_threads=args.threads,
        tumour_weight=args.tumour_weight)
    path = package_model(model, history, args.contrast_only_in, name=Path(args.output).stem).save(
        args.output, overwrite=args.overwrite)
    final = history.final_val_dice
    print(f"saved {path}; "
          f"{history.seconds:.0f} s; held-out Dice "
          f"{', '.join(f'{v:.3f}' for v in final)} (mean {np.mean(final) if final else float('nan'):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
