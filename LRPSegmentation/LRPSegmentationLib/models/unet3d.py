"""The seed's network: a Çiçek-style 3D U-Net (Çiçek et al., MICCAI 2016).

Each level is two (3×3×3 convolution → BatchNorm → ReLU) blocks; the encoder downsamples with
2×2×2 max pooling, the decoder upsamples with 2×2×2 transposed convolutions and concatenates
the encoder's features (`torch.cat`), and a 1×1×1 convolution maps to the class logits.
With ``base_channels=32, depth=4`` it has 22.6 M parameters, the size of the seed's model.

``head_bias=False`` removes the bias of the 1×1×1 head. Why it matters for explanations: with a
head bias a network can learn to call a voxel "tumour" by default, where none of its last features
fire (the features then detect background). Its tumour logit there is the bias alone, so no LRP
relevance — of any rule — reaches the input, and the region explanation has nothing to normalize.
Without the bias, every decision must come from features computed from the input. With ReLU, a
network trained that way can still get stuck with silent (dead) features at tumour voxels, tied
logits and no gradient to leave them; ``activation="leaky_relu"`` keeps a gradient there.
"""
from __future__ import annotations

import torch
from torch import nn

from .limits import MAX_DEPTH, MAX_FEATURES, MAX_IO_CHANNELS, integer


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01, inplace=True)
    raise ValueError(f"activation must be 'relu' or 'leaky_relu', got {name!r}")


class ConvBlock(nn.Sequential):
    """Two (Conv3d 3×3×3 → BatchNorm3d → activation) layers; spatial size is kept."""

    def __init__(self, in_channels: int, out_channels: int, activation: str = "relu") -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm3d(out_channels),
            _activation(activation),
            nn.Conv3d(out_channels, out_channels, 3, padding=1),
            nn.BatchNorm3d(out_channels),
            _activation(activation),
        )


class UNet3D(nn.Module):
    """3D U-Net returning logits.

    Args:
        in_channels: number of input sequences C (1..1024).
        out_channels: number of classes K (1..1024).
        base_channels: feature channels of the first level; level k has ``base_channels * 2**k``
            (1..65536; the registry also bounds the total size, see ``limits``).
        depth: number of 2× downsamplings (1..8). Input D, H, W must be divisible by ``2**depth``.
        head_bias: whether the final 1×1×1 convolution has a bias (see the module docstring).
        activation: "relu" (the seed's) or "leaky_relu" (slope 0.01).

    Shapes: input (N, C, D, H, W) → logits (N, K, D, H, W).

    Raises:
        ValueError: an argument out of its range (named), before anything is allocated.
    """

    def __init__(self, in_channels: int = 6, out_channels: int = 2, base_channels: int = 32,
                 depth: int = 4, head_bias: bool = True, activation: str = "relu") -> None:
        super().__init__()
        # Checked before any layer exists: model.json chooses these (see `limits`).
        in_channels = integer(in_channels, "in_channels", 1, MAX_IO_CHANNELS)
        out_channels = integer(out_channels, "out_channels", 1, MAX_IO_CHANNELS)
        base_channels = integer(base_channels, "base_channels", 1, MAX_FEATURES)
        depth = integer(depth, "depth", 1, MAX_DEPTH)
        if not isinstance(head_bias, bool):
            raise ValueError(f"head_bias must be true or false, got {head_bias!r}")
        widths = [base_channels * 2 ** k for k in range(depth + 1)]
        self.depth = depth
        self.encoders = nn.ModuleList()
        previous = in_channels
        for width in widths[:-1]:
            self.encoders.append(ConvBlock(previous, width, activation))
            previous = width
        self.pool = nn.MaxPool3d(2)  # one module, called at every level
        self.bottleneck = ConvBlock(widths[-2], widths[-1], activation)
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for k in reversed(range(depth)):
            self.upsamplers.append(nn.ConvTranspose3d(widths[k + 1], widths[k], 2, stride=2))
            self.decoders.append(ConvBlock(2 * widths[k], widths[k], activation))
        self.head = nn.Conv3d(widths[0], out_channels, 1, bias=head_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for upsample, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips)):
            x = decoder(torch.cat([skip, upsample(x)], dim=1))
        return self.head(x)
