"""Segmentation networks the engine explains, and the model package format.

- `UNet3D`: the seed's Çiçek 3D U-Net.
- ``registry``: architecture name → builder (``"unet3d"``, ``"monai.UNet"``, ``"monai.BasicUNet"``,
  ``"monai.DynUNet"``, and whatever `register_architecture` adds).
- ``package``: `ModelPackage`, a ``<name>.lrpmodel`` folder of ``model.json`` + ``weights.safetensors``.
- ``limits``: the ranges of architecture arguments and the size limit, checked before allocating.

MONAI is optional: this package imports without it.
"""
from .package import (FORMAT_VERSION, PACKAGE_SUFFIX, ModelPackage, create_package, load_package)
from .registry import (available_architectures, build_architecture, build_on_meta, get_builder,
                       register_architecture, unregister_architecture)
from .unet3d import UNet3D

__all__ = [
    "UNet3D",
    "available_architectures", "build_architecture", "build_on_meta", "get_builder", "register_architecture",
    "unregister_architecture",
    "FORMAT_VERSION", "PACKAGE_SUFFIX", "ModelPackage", "create_package", "load_package",
]
