"""Segmentation networks the engine explains, and (later) the model package format."""
from .unet3d import UNet3D

__all__ = ["UNet3D"]
