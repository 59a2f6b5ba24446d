from torch import nn


class TinyUNet(nn.Sequential):  # (N, C, D, H, W) → logits (N, K, D, H, W); kwargs are JSON values
    def __init__(self, in_channels: int, out_channels: int, width: int = 8):
        super().__init__(nn.Conv3d(in_channels, width, 3, padding=1), nn.ReLU(), nn.Conv3d(width, out_channels, 1))
