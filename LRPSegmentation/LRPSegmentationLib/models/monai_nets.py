"""Builders for MONAI segmentation networks (an optional extra: ``pip install monai``).

This module imports without MONAI; MONAI is imported only when a network is built. Defaults are
small 3D networks for the seed's task: 6 input sequences, 2 classes (background, tumour). All
return logits (N, K, D, H, W) in eval mode, which is what the LRP engine explains; the engine
supports their layers (convolutions, transposed convolutions, InstanceNorm, PReLU/LeakyReLU,
residual additions, concatenation, replicate padding); ``Testing/test_models.py`` checks each
against the per-voxel LRP definition.

Spatial sizes (D, H, W) the networks accept (``ModelPackage.size_divisor`` finds the divisor):

- ``monai.UNet``: multiples of ``prod(strides)`` (8 with the defaults);
- ``monai.BasicUNet``: any size (odd sizes are replicate-padded when upsampling), but after its
  four 2× downsamplings the bottleneck must keep more than one voxel for its instance norm
  (e.g. 32 × 16 × 16 or larger);
- ``monai.DynUNet``: multiples of ``prod(strides)`` (8 with the defaults).
"""
from __future__ import annotations

import importlib.util
from typing import Any, Callable, Sequence

from torch import nn

from .limits import MAX_FEATURES, MAX_IO_CHANNELS, MAX_KERNEL, integer, integers

_INSTALL_HINT = "MONAI is not installed: pip install monai  (or pip install 'lrpsegmentation[monai]')"


def monai_available() -> bool:
    """Whether MONAI can be found, without importing it (importing MONAI takes seconds)."""
    try:
        return importlib.util.find_spec("monai") is not None
    except (ImportError, ValueError):  # a broken or hidden installation
        return False


def _check_io(in_channels: Any, out_channels: Any, spatial_dims: Any) -> None:
    """Checks shared by the builders, run before MONAI allocates anything (see ``limits``)."""
    integer(in_channels, "in_channels", 1, MAX_IO_CHANNELS)
    integer(out_channels, "out_channels", 1, MAX_IO_CHANNELS)
    integer(spatial_dims, "spatial_dims", 1, 3)


def nets():
    """``monai.networks.nets``, or a ValueError saying how to install MONAI."""
    try:
        from monai.networks import nets
    except ImportError as error:
        raise ValueError(f"{_INSTALL_HINT} ({error})") from error
    return nets


def build_monai_unet(in_channels: int = 6, out_channels: int = 2,
                     channels: Sequence[int] = (16, 32, 64, 128), strides: Sequence[int] = (2, 2, 2),
                     num_res_units: int = 2, spatial_dims: int = 3, **kwargs: Any) -> nn.Module:
    """``monai.networks.nets.UNet``: residual units, strided convolutions, InstanceNorm, PReLU
    (MONAI's defaults for norm and activation).

    Args:
        in_channels: input sequences C.
        out_channels: classes K.
        channels: features per level (one more entry than ``strides``).
        strides: downsampling factor after each level but the last.
        num_res_units: residual units per block (MONAI's own default is 0; 2 as in its tutorials).
        spatial_dims: 3 for volumes.
        **kwargs: passed on (``kernel_size``, ``up_kernel_size``, ``act``, ``norm``, ``dropout``, ...).

    Shapes: (N, C, D, H, W) → (N, K, D, H, W); D, H, W divisible by ``prod(strides)``.
    """
    _check_io(in_channels, out_channels, spatial_dims)
    integers(channels, "channels", MAX_FEATURES)
    integers(strides, "strides", MAX_KERNEL, nested=True)
    integer(num_res_units, "num_res_units", 0, 16)
    return nets().UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                       channels=channels, strides=strides, num_res_units=num_res_units, **kwargs)


def build_monai_basic_unet(in_channels: int = 6, out_channels: int = 2,
                           features: Sequence[int] = (16, 16, 32, 64, 128, 16), spatial_dims: int = 3,
                           **kwargs: Any) -> nn.Module:
    """``monai.networks.nets.BasicUNet``: two (conv → InstanceNorm → LeakyReLU) per level, max
    pooling, transposed-convolution upsampling, concatenated skips.

    Args:
        in_channels: input sequences C.
        out_channels: classes K.
        features: six feature counts: five levels and the last decoder block.
        spatial_dims: 3 for volumes.
        **kwargs: passed on (``act``, ``norm``, ``bias``, ``dropout``, ``upsample``).

    Shapes: (N, C, D, H, W) → (N, K, D, H, W); any D, H, W with D·H·W ≥ 32·16·16 or so (the
    bottleneck, 1/16 of each axis rounded down, needs more than one voxel).
    """
    _check_io(in_channels, out_channels, spatial_dims)
    integers(features, "features", MAX_FEATURES, count=6)
    return nets().BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                            features=features, **kwargs)


def build_monai_dynunet(in_channels: int = 6, out_channels: int = 2,
                        kernel_size: Sequence[int | Sequence[int]] = (3, 3, 3, 3),
                        strides: Sequence[int | Sequence[int]] = (1, 2, 2, 2),
                        upsample_kernel_size: Sequence[int | Sequence[int]] | None = None,
                        filters: Sequence[int] | None = (16, 32, 64, 128),
                        deep_supervision: bool = True, deep_supr_num: int = 1, res_block: bool = True,
                        spatial_dims: int = 3, **kwargs: Any) -> nn.Module:
    """``monai.networks.nets.DynUNet`` (nnU-Net-style): residual blocks, InstanceNorm, LeakyReLU,
    transposed-convolution upsampling.

    With ``deep_supervision`` the network returns all heads stacked in training mode but only the
    main head's logits in eval mode (MONAI's behaviour), so the engine explains the main head.

    Args:
        in_channels: input sequences C.
        out_channels: classes K.
        kernel_size: convolution kernel per level.
        strides: stride per level (the first is usually 1).
        upsample_kernel_size: per upsampling; defaults to ``strides[1:]``.
        filters: features per level (as many entries as ``strides``).
        deep_supervision: add auxiliary heads for training.
        deep_supr_num: number of auxiliary heads (fewer than the upsamplings).
        res_block: residual blocks instead of plain ones.
        spatial_dims: 3 for volumes.
        **kwargs: passed on (``norm_name``, ``act_name``, ``dropout``, ``trans_bias``).

    Shapes: (N, C, D, H, W) → (N, K, D, H, W) in eval; D, H, W divisible by ``prod(strides)``.
    """
    _check_io(in_channels, out_channels, spatial_dims)
    integers(kernel_size, "kernel_size", MAX_KERNEL, nested=True)
    integers(strides, "strides", MAX_KERNEL, nested=True)
    if filters is not None:
        integers(filters, "filters", MAX_FEATURES)
    if upsample_kernel_size is None:
        upsample_kernel_size = list(strides[1:])
    integers(upsample_kernel_size, "upsample_kernel_size", MAX_KERNEL, nested=True)
    return nets().DynUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                          kernel_size=kernel_size, strides=strides, upsample_kernel_size=upsample_kernel_size,
                          filters=filters, deep_supervision=deep_supervision, deep_supr_num=deep_supr_num,
                          res_block=res_block, **kwargs)


#: Architecture name → builder; ``registry`` offers these names when MONAI is available.
MONAI_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "monai.UNet": build_monai_unet,
    "monai.BasicUNet": build_monai_basic_unet,
    "monai.DynUNet": build_monai_dynunet,
}
