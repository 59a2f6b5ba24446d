"""What the LRPSegmentation module's widget decides, without Qt (tested on slicer-core).

The widget in ``LRPSegmentation.py`` only wires Qt to these functions:

- the model path: the bundled demo package is stored *relative* to the module's ``Resources/``
  folder (`storable_model_path`) and resolved when used (`resolve_model_path`), so a saved scene
  or the parameter node survives an extension update that moves the versioned install folder;
- PyTorch: the installed version read from the package metadata (`installed_torch_version`),
  never by importing torch in Slicer's process; the minimum version (`torch_version_problem`, as
  TotalSegmentator and MONAIAuto3DSeg check theirs); the devices from a short probe process
  (`probe_torch`), so CUDA is never initialised on Slicer's main thread;
- a running job: the progress bar's value (`job_progress`), and whether its results may still
  be published (`publish_refusal`: not after Cancel, not into a scene whose inputs are gone);
- the explanation the module works on, rebuilt from the scene after a scene load
  (`current_explanation`), and the order its maps are offered in (`display_order`);
- the model package's description for the user (`describe_package`).
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

from ..models.metadata import PACKAGE_SUFFIX
from ..vocabulary import DEMO_MODEL_RESOURCE
from . import publish

__all__ = ["MINIMUM_TORCH_VERSION", "TorchInfo", "current_explanation", "default_model_path",
           "describe_package", "display_order", "installed_torch_version", "job_progress", "probe_torch",
           "publish_refusal", "resolve_model_path", "storable_model_path", "torch_version_problem"]

#: The oldest torch the engine supports (pyproject's ``torch>=2.1``); given to PyTorchUtils as ">=2.1".
MINIMUM_TORCH_VERSION = "2.1"


# --------------------------------------------------------------------------------------------
# The model path
# --------------------------------------------------------------------------------------------


def default_model_path(resources: str | os.PathLike) -> Path:
    """The parameter node's default model: the bundled demo (`vocabulary.DEMO_MODEL_RESOURCE`,
    relative), else the first bundled ``*.lrpmodel`` (relative), else ``Path()`` (none)."""
    resources = Path(resources)
    if (resources / DEMO_MODEL_RESOURCE).is_dir():
        return Path(DEMO_MODEL_RESOURCE)
    bundled = sorted((resources / "Models").glob(f"*{PACKAGE_SUFFIX}"))
    return bundled[0].relative_to(resources) if bundled else Path()


def storable_model_path(path: str | os.PathLike, resources: str | os.PathLike) -> Path:
    """What the parameter node stores for a chosen package: relative to ``resources`` when the
    package is bundled there, else the absolute path. "" gives ``Path()`` (no model)."""
    if not str(path).strip():
        return Path()
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(Path(os.path.abspath(resources)))
    except ValueError:
        return absolute


def resolve_model_path(stored: str | os.PathLike | None, resources: str | os.PathLike) -> Path | None:
    """The package folder a stored model path means now, or None for "no model".

    A relative path is inside ``resources`` (the bundled packages; a path saved on Windows with
    backslashes is read too). An absolute path that no longer exists but ends in
    ``Resources/Models/<name>.lrpmodel`` (a scene saved with an older module version, whose
    versioned install folder is gone) is looked up among the bundled packages.
    """
    text = str(stored or "").strip()
    if text in ("", "."):
        return None
    resources = Path(resources)
    path = Path(text)
    if not path.is_absolute() and not PureWindowsPath(text).is_absolute():
        return resources.joinpath(*PureWindowsPath(text).parts)
    if path.exists():
        return path
    parts = PureWindowsPath(text).parts
    if len(parts) >= 3 and parts[-3] == "Resources" and parts[-2] == "Models":
        bundled = resources / "Models" / parts[-1]
        if bundled.exists():
            return bundled
    return path


def describe_package(description: Any) -> str:
    """The model shown to the user (HTML): name, version, description, sequences and classes.

    A package has no version field of its own; its identity is its weights, so the version shown
    is the first 8 hex digits of the weights' SHA-256 (and the parameter count), with the
    held-out Dice when ``training_info`` records one.
    """
    weights = getattr(description, "weights", None) or {}
    version = []
    if weights.get("sha256"):
        version.append(f"weights {str(weights['sha256'])[:8]}")
    if weights.get("parameters"):
        version.append(f"{int(weights['parameters']):,} parameters")
    dice = (getattr(description, "training_info", None) or {}).get("held_out_dice_mean")
    if dice is not None:
        version.append(f"held-out Dice {float(dice):.3f}")
    lines = [f"<b>{_html(description.name)}</b>" + (f" ({', '.join(version)})" if version else "")]
    if getattr(description, "description", ""):
        lines.append(_html(description.description))
    lines.append(f"Sequences: {_html(', '.join(map(str, description.sequences)))}. "
                 f"Classes: {_html(', '.join(map(str, description.class_names)))}.")
    return "<br>".join(lines)


def _html(text: Any) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------


def installed_torch_version() -> str | None:
    """The installed torch's version from its package metadata (torch is not imported), or None."""
    import importlib.metadata

    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    """(major, minor, patch...) of a version string such as "2.4.1+cu121" or "2.6.0.dev20240101"."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def torch_version_problem(version: str | None, minimum: str = MINIMUM_TORCH_VERSION) -> str:
    """Why an installed torch cannot be used ("" when it can); ``version`` None means not installed.

    The message says how to fix it, like MONAIAuto3DSeg's and TotalSegmentator's checks.
    """
    if version is None:
        return f"PyTorch is not installed: it is installed (>={minimum}) on the first Segment or Explain"
    have, need = _release(version), _release(minimum)
    if not have:
        return f"the installed PyTorch reports the version '{version}', which cannot be read"
    width = max(len(have), len(need))
    if have + (0,) * (width - len(have)) < need + (0,) * (width - len(need)):
        return (f"PyTorch {version} is installed, but LRP Segmentation needs {minimum} or later: open the "
                f"'PyTorch Utils' module, uninstall PyTorch, restart 3D Slicer and install it with the "
                f"version requirement >={minimum}")
    return ""


@dataclass
class TorchInfo:
    """What `probe_torch` found.

    Attributes:
        version: torch.__version__, or None (not installed / probe failed).
        cuda: the CUDA version torch was built with, or None (CPU-only build).
        devices: the names of the usable CUDA devices (index = N of ``cuda:N``).
        error: why the probe failed ("" when it worked).
    """

    version: str | None
    cuda: str | None = None
    devices: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def device_choices(self) -> list[str]:
        """The device menu: "auto", one "cuda:N" per GPU, "cpu"."""
        return ["auto", *(f"cuda:{index}" for index in range(len(self.devices))), "cpu"]

    @property
    def text(self) -> str:
        """One line for the user."""
        if self.error:
            return f"PyTorch could not be checked: {self.error}"
        if self.version is None:
            return "PyTorch is not installed yet: it is installed on the first Segment or Explain."
        if self.devices:
            return f"PyTorch {self.version}, CUDA {self.cuda}, GPU: {', '.join(self.devices)}"
        build = f"CUDA build {self.cuda}" if self.cuda else "CPU-only build"
        return f"PyTorch {self.version} ({build}); no GPU available: computing on the CPU"


_PROBE = ("import json, torch\n"
          "gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] "
          "if torch.cuda.is_available() else []\n"
          "print(json.dumps({'version': torch.__version__, 'cuda': torch.version.cuda, 'devices': gpus}))\n")


def probe_torch(python: str | os.PathLike | None, timeout: float = 120.0) -> TorchInfo:
    """Ask a separate Python process (Slicer's ``PythonSlicer``) for torch's version and GPUs.

    torch is imported and CUDA initialised in that process only, never in Slicer's. Without torch
    installed nothing is started.
    """
    version = installed_torch_version()
    if version is None:
        return TorchInfo(None)
    if not python:
        return TorchInfo(version, error="no Python executable to probe with (PythonSlicer not found)")
    try:
        done = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        return TorchInfo(version, error=str(error))
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return TorchInfo(version, error=lines[-1] if lines else f"exit status {done.returncode}")
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return TorchInfo(version, error=f"unexpected answer {done.stdout!r}")
    return TorchInfo(found["version"], found["cuda"], list(found["devices"]))


# --------------------------------------------------------------------------------------------
# A running job
# --------------------------------------------------------------------------------------------


def job_progress(job: Any) -> tuple[int, str]:
    """(percent 0..100, message) of whatever the job reports as ``fraction`` (0..1) and ``message``.

    A missing, NaN or out-of-range fraction is clamped rather than shown as garbage.
    """
    try:
        fraction = float(getattr(job, "fraction", 0.0) or 0.0)
    except (TypeError, ValueError):
        fraction = 0.0
    if not math.isfinite(fraction):
        fraction = 0.0
    return int(round(100 * min(1.0, max(0.0, fraction)))), str(getattr(job, "message", "") or "")


def _cancel_requested(job: Any) -> bool:
    flag = getattr(job, "cancelled", False)
    return bool(flag() if callable(flag) else flag)


def publish_refusal(job: Any, scene: Any, nodes: Sequence[Any]) -> str:
    """Why a finished job's results must NOT be published ("" = publish).

    Checked on the main thread right before the publish step: after Cancel, or when any of the
    job's input nodes left ``scene`` (Close Scene, a node deleted), the results are dropped, so
    nothing is ever published into a new scene.
    """
    if _cancel_requested(job):
        return "cancelled"
    for node in nodes:
        if node is not None and (node.GetScene() is not scene or scene.GetNodeByID(node.GetID()) is not node):
            return f"'{node.GetName()}' is no longer in the scene (scene closed or node deleted): results discarded"
    return ""


# --------------------------------------------------------------------------------------------
# The explanation the module works on
# --------------------------------------------------------------------------------------------


def current_explanation(scene: Any, last: publish.ExplainOutputs | None = None) -> publish.ExplainOutputs | None:
    """``last`` while its nodes are in ``scene``, else the newest explanation found in the scene.

    This is how "Update shares" and repainting keep working after a scene is saved and loaded
    again: nothing is remembered that the scene does not hold.
    """
    if last is not None and all(node is not None and node.GetScene() is scene
                                for node in (last.composition_node, last.table_node)):
        return last
    return publish.find_explanation(scene)


def display_order(outputs: publish.ExplainOutputs) -> list[int]:
    """Sequence indices, most relevant first (`publish.relevance_order` of the positive shares where
    the table has them, else of the signed shares)."""
    return publish.relevance_order(outputs.positive_shares if outputs.positive_shares is not None else outputs.shares)
