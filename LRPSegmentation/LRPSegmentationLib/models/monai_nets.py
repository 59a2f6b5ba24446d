"""Builders for MONAI segmentation networks (an optional extra: ``pip install monai``).

This module imports without MONAI; MONAI is imported only when a network is built. Defaults are
small 3D networks for the seed's task: 6 input sequences, 2 classes (background, tumour). All
return logits (N, K, D, H, W) in eval mode, which is what the LRP engine explains; the engine
supports their layers (convolutions, transposed convolutions, Batch/Instance/Group/LayerNorm,
PReLU/LeakyReLU/ELU/GELU, residual additions, concatenation, replicate padding, attention gates,
self-attention); ``Testing/test_models.py`` and ``Testing/test_engine_modern.py`` check them
against the per-voxel LRP definition.

Spatial sizes (D, H, W) the networks accept (``ModelPackage.size_divisor`` finds the divisor):

- ``monai.UNet``: multiples of ``prod(strides)`` (8 with the defaults);
- ``monai.BasicUNet``: any size (odd sizes are replicate-padded when upsampling), but after its
  four 2× downsamplings the bottleneck must keep more than one voxel for its instance norm
  (e.g. 32 × 16 × 16 or larger);
- ``monai.DynUNet``: multiples of ``prod(strides)`` (8 with the defaults);
- ``monai.SegResNet``, ``monai.SegResNetDS``: multiples of 2**(len(blocks_down) − 1) (8);
- ``monai.AttentionUnet``: multiples of ``prod(strides)`` (8);
- ``monai.VNet``: multiples of 16;
- ``monai.UNETR``: exactly ``img_size``;
- ``monai.SwinUNETR``: multiples of 32.
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


def build_monai_segresnet(in_channels: int = 6, out_channels: int = 2, init_filters: int = 8,
                          blocks_down: Sequence[int] = (1, 2, 2, 4), blocks_up: Sequence[int] = (1, 1, 1),
                          spatial_dims: int = 3, **kwargs: Any) -> nn.Module:
    """``monai.networks.nets.SegResNet`` (Myronenko 2018; MONAI's brain-tumour bundle): pre-activation
    residual blocks (GroupNorm → ReLU → conv, plus the skip), so its normalizations stay standalone
    per-channel affine maps (the identity rule, see ``engine.rules.Identity``).

    Args:
        in_channels: input sequences C.
        out_channels: classes K.
        init_filters: features of the first level (doubled per level; a multiple of the GroupNorm's
            ``num_groups``, 8 unless ``norm`` says otherwise).
        blocks_down: residual blocks per encoder level.
        blocks_up: residual blocks per decoder level (one fewer entry than ``blocks_down``).
        spatial_dims: 3 for volumes.
        **kwargs: passed on (``norm``, ``act``, ``dropout_prob``, ``upsample_mode``, ...).

    Shapes: (N, C, D, H, W) → (N, K, D, H, W); D, H, W divisible by 2**(len(blocks_down) − 1).
    """
    _check_io(in_channels, out_channels, spatial_dims)
    integer(init_filters, "init_filters", 1, MAX_FEATURES)
    integers(blocks_down, "blocks_down", 64)
    integers(blocks_up, "blocks_up", 64, count=len(blocks_down) - 1)
    return nets().SegResNet(spatial_dims=spatial_dims, init_filters=init_filters, in_channels=in_channels,
                            out_channels=out_channels, blocks_down=tuple(blocks_down), blocks_up=tuple(blocks_up),
                            **kwargs)


def build_monai_segresnet_ds(in_channels: int = 6, out_channels: int = 2, init_filters: int = 32,
                             blocks_down: Sequence[int] = (1, 2, 2, 4), spatial_dims: int = 3,
                             **kwargs: Any) -> nn.Module:
    """``monai.networks.nets.SegResNetDS`` (Auto3DSeg's SegResNet with deep supervision): pre-activation
    residual blocks; in eval mode only the main head's logits are returned.

    Args:
        in_channels: input sequences C.
        out_channels: classes K.
        init_filters: features of the first level (doubled per level).
        blocks_down: residual blocks per encoder level.
        spatial_dims: 3 for volumes.
        **kwargs: passed on (``norm``, ``act``, ``blocks_up``, ``dsdepth``, ``upsample_mode``, ...).

    Shapes: (N, C, D, H, W) → (N, K, D, H, W); D, H, W divisible by 2**(len(blocks_down) − 1).
    """
    _check_io(in_channels, out_channels, spatial_dims)
    integer(init_filters, "init_filters", 1, MAX_FEATURES)
    integers(blocks_down, "blocks_down", 64)
    return nets().SegResNetDS(spatial_dims=spatial_dims, init_filters=init_filters, in_channels=in_channels,
                              out_channels=out_channels, blocks_down=tuple(blocks_down), **kwargs)


def build_monai_attention_unet(in_channels: int = 6, out_channels: int = 2,
                               channels: Sequence[int] = (16, 32, 64, 128), strides: Sequence[int] = (2, 2, 2),
                               spatial_dims: int = 3, **kwargs: Any) -> nn.Module:
    """``monai.networks.nets.AttentionUnet`` (Oktay et al. 2018): skips gated by sigmoid attention
    gates. The gate is a constant weight on the skip (signal-take-all): relevance flows through the
    skip, not through the gate's branch.

    Args:
        in_channels: input sequences C.
        out_channels: classes K.
        channels: features per level (one more entry than ``strides``).
        strides: downsampling factor after each level but the last.
        spatial_dims: 3 for volumes.
        **kwargs: passed on (``kernel_size``, ``up_kernel_size``, ``dropout``).

    Shapes: (N, C, D, H, W) → (N, K, D, H, W); D, H, W divisible by ``prod(strides)``.
    """
    _check_io(in_channels, out_channels, spatial_dims)
    integers(channels, "channels", MAX_FEATURES)
    integers(strides, "strides", MAX_KERNEL, count=len(channels) - 1, nested=True)
    return nets().AttentionUnet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                                channels=channels, strides=strides, **kwargs)


def build_monai_vnet(in_channels: int = 4, out_channels: int = 2, spatial_dims: int = 3, **kwargs: Any) -> nn.Module:
    """``monai.networks.nets.VNet`` (Milletari et al. 2016): residual stages with 5³ convolutions,
    BatchNorm, ELU; its input transition repeats the input channels to 16 features.

    Args:
        in_channels: input sequences C; must divide 16 (1, 2, 4, 8 or 16).
        out_channels: classes K.
        spatial_dims: 3 for volumes.
        **kwargs: passed on (``act``, ``dropout_prob_down``, ``dropout_prob_up``, ``bias``, ...).

    Shapes: (N, C, D, H, W) → (N, K, D, H, W); D, H, W divisible by 16.
    """
    _check_io(in_channels, out_channels, spatial_dims)
    if 16 % in_channels:
        raise ValueError(f"VNet repeats its input channels to 16 features: in_channels must divide 16, "
                         f"got {in_channels}")
    return nets().VNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)


def build_monai_unetr(in_channels: int = 6, out_channels: int = 2, img_size: Sequence[int] = (96, 96, 96),
                      feature_size: int = 16, hidden_size: int = 768, mlp_dim: int = 3072, num_heads: int = 12,
                      spatial_dims: int = 3, **kwargs: Any) -> nn.Module:
    """``monai.networks.nets.UNETR`` (Hatamizadeh et al. 2022): a ViT encoder (16³ patches, 12
    blocks) with a convolutional decoder. Explained with the LN and AH rules of Ali et al. 2022.

    Args:
        in_channels: input sequences C.
        out_channels: classes K.
        img_size: the ONE input size (D, H, W) the network accepts (its position embedding), each a
            multiple of 16.
        feature_size: decoder features.
        hidden_size: transformer width (a multiple of ``num_heads``).
        mlp_dim: transformer MLP width.
        num_heads: attention heads.
        spatial_dims: 3 for volumes.
        **kwargs: passed on (``proj_type``, ``norm_name``, ``conv_block``, ``res_block``, ...).

    Shapes: (N, C, *img_size) → (N, K, *img_size).
    """
    _check_io(in_channels, out_channels, spatial_dims)
    integers(img_size, "img_size", 4096, count=spatial_dims)
    for name, value in (("feature_size", feature_size), ("hidden_size", hidden_size), ("mlp_dim", mlp_dim),
                        ("num_heads", num_heads)):
        integer(value, name, 1, MAX_FEATURES)
    return nets().UNETR(in_channels=in_channels, out_channels=out_channels, img_size=tuple(img_size),
                        feature_size=feature_size, hidden_size=hidden_size, mlp_dim=mlp_dim, num_heads=num_heads,
                        spatial_dims=spatial_dims, **kwargs)


def build_monai_swin_unetr(in_channels: int = 6, out_channels: int = 2, feature_size: int = 24,
                           depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                           spatial_dims: int = 3, **kwargs: Any) -> nn.Module:
    """``monai.networks.nets.SwinUNETR`` (Hatamizadeh et al. 2022): a Swin transformer encoder
    (shifted windows, relative position bias, patch merging) with a convolutional decoder.
    Explained with the LN and AH rules of Ali et al. 2022; the window masks and position biases
    only enter the (constant) attention weights.

    Args:
        in_channels: input sequences C.
        out_channels: classes K.
        feature_size: embedding width (a multiple of 12).
        depths: Swin blocks per stage (4 stages).
        num_heads: attention heads per stage.
        spatial_dims: 3 for volumes.
        **kwargs: passed on (``window_size``, ``norm_name``, ``drop_rate``, ``use_v2``, ...).

    Shapes: (N, C, D, H, W) → (N, K, D, H, W); D, H, W divisible by 32 (with instance norm,
    the 1/32 bottleneck must keep more than one voxel: 64 or more on some axis).
    """
    _check_io(in_channels, out_channels, spatial_dims)
    integer(feature_size, "feature_size", 12, MAX_FEATURES)
    if feature_size % 12:
        raise ValueError(f"feature_size must be a multiple of 12, got {feature_size}")
    integers(depths, "depths", 64, count=4)
    integers(num_heads, "num_heads", 1024, count=4)
    return nets().SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size,
                            depths=tuple(depths), num_heads=tuple(num_heads), spatial_dims=spatial_dims, **kwargs)


#: Architecture name → builder; ``registry`` offers these names when MONAI is available.
MONAI_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "monai.UNet": build_monai_unet,
    "monai.BasicUNet": build_monai_basic_unet,
    "monai.DynUNet": build_monai_dynunet,
    "monai.SegResNet": build_monai_segresnet,
    "monai.SegResNetDS": build_monai_segresnet_ds,
    "monai.AttentionUnet": build_monai_attention_unet,
    "monai.VNet": build_monai_vnet,
    "monai.UNETR": build_monai_unetr,
    "monai.SwinUNETR": build_monai_swin_unetr,
}
