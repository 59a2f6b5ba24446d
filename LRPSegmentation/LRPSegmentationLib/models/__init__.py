"""Segmentation networks the engine explains, and the model package format.

- `UNet3D`: the seed's Çiçek 3D U-Net.
- ``registry``: architecture name → builder (``"unet3d"``, ``"monai.UNet"``, ``"monai.BasicUNet"``,
  ``"monai.DynUNet"``, and whatever `register_architecture` adds).
- ``package``: `ModelPackage`, a ``<name>.lrpmodel`` folder of ``model.json`` + ``weights.safetensors``.
- ``metadata``: reads ``model.json`` without torch (the Slicer module's start-up uses it).
- ``limits``: the ranges of architecture arguments and the size limit, checked before allocating.

MONAI is optional: this package imports without it. The names below are imported on first use
(PEP 562), so that ``models.metadata`` can be imported without torch.
"""
from __future__ import annotations

import importlib
from typing import Any

#: Public name → the submodule that defines it.
_HOMES = {
    "UNet3D": "unet3d",
    **{name: "registry" for name in ("available_architectures", "build_architecture", "build_on_meta", "get_builder",
                                     "register_architecture", "unregister_architecture")},
    **{name: "metadata" for name in ("FORMAT_VERSION", "PACKAGE_SUFFIX")},
    **{name: "package" for name in ("ModelPackage", "create_package", "load_package")},
}

__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
