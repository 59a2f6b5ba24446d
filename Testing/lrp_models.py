"""Small test networks covering the layer types users' U-Nets contain, plus the per-voxel reference.

Every network takes (1, C, D, H, W) and returns logits (1, K, D, H, W).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from LRPSegmentationLib.engine import Graph, explain_voxel
from LRPSegmentationLib.models import UNet3D


def randomize_norms(model: nn.Module) -> nn.Module:
    """Give normalizations non-trivial statistics and affine parameters (fresh ones are identities)."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm3d, nn.BatchNorm2d, nn.BatchNorm1d)):
            module.running_mean.copy_(torch.rand(module.num_features, generator=generator) * 0.4 - 0.2)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) * 1.5 + 0.5)
        if getattr(module, "weight", None) is not None and isinstance(module, (nn.modules.batchnorm._NormBase,
                                                                                 nn.GroupNorm)):
            with torch.no_grad():
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(module.bias.shape, generator=generator) * 0.2 - 0.1)
    return model


def seed_unet(in_channels: int = 3, classes: int = 2, base: int = 4, depth: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return randomize_norms(UNet3D(in_channels, classes, base, depth)).double().eval()


class ResidualNormNet(nn.Module):
    """MONAI/nnU-Net-style pieces: InstanceNorm, GroupNorm, LeakyReLU, PReLU, ELU, residual `+`,
    strided conv, trilinear and nearest `F.interpolate`, AvgPool, Dropout, a conv module called
    twice, and deep supervision (a tuple output whose first element is the main head)."""

    def __init__(self, in_channels: int = 3, classes: int = 2, width: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv3d(in_channels, width, 3, padding=1)
        self.inorm = nn.InstanceNorm3d(width, affine=True)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.shared = nn.Conv3d(width, width, 3, padding=1)  # called twice
        self.gnorm = nn.GroupNorm(2, width)
        self.prelu = nn.PReLU(width)
        self.down = nn.Conv3d(width, 2 * width, 3, stride=2, padding=1)
        self.elu = nn.ELU()
        self.dropout = nn.Dropout3d(0.3)
        self.pool = nn.AvgPool3d(2)
        self.mix = nn.Conv3d(5 * width, width, 1)
        self.head = nn.Conv3d(width, classes, 1)
        self.aux = nn.Conv3d(2 * width, classes, 1)

    def forward(self, x):
        x = self.act(self.inorm(self.stem(x)))
        residual = x
        x = self.prelu(self.gnorm(self.shared(x)))
        x = self.shared(x) + residual
        low = self.dropout(self.elu(self.down(x)))
        pooled = self.pool(x)
        up_linear = F.interpolate(low, scale_factor=2, mode="trilinear", align_corners=False)
        up_nearest = F.interpolate(torch.cat([low, pooled], dim=1), size=x.shape[2:], mode="nearest")
        x = self.mix(torch.cat([up_linear, up_nearest], dim=1)) + x
        return self.head(x), self.aux(low)


class SliceDenseNet(nn.Module):
    """Conv2d on a (D = 1) slice and a dense (`nn.Linear`) classifier over channels via permutes."""

    def __init__(self, in_channels: int = 3, classes: int = 2, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.dense = nn.Linear(width, classes)

    def forward(self, x):
        features = F.relu(self.bn(self.conv(x[:, :, 0])))           # (1, width, H, W)
        logits = self.dense(features.permute(0, 2, 3, 1))           # (1, H, W, K)
        return logits.permute(0, 3, 1, 2).unsqueeze(2)              # (1, K, 1, H, W)


def prepare(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return randomize_norms(model).double().eval()


def per_voxel_reference(model, x, region, target, composite, tolerance=1e-3):
    """The seed's definition, literally: Σ_a M_a / ΣM_a over the region, one LRP pass per voxel.

    Returns (M_A, number of voxels used)."""
    with torch.no_grad():
        out = model(x)
    logits = out[0] if isinstance(out, tuple) else out
    total, used = None, 0
    for voxel in region.nonzero().tolist():
        m_a = explain_voxel(model, x, voxel, target, composite, device="cpu")
        score = logits[0, target, voxel[0], voxel[1], voxel[2]]
        s_a = m_a.sum()
        if score == 0 or abs(s_a / score) < tolerance:
            continue
        total = m_a / s_a if total is None else total + m_a / s_a
        used += 1
    return total, used


class BiasOnlyNet(nn.Module):
    """Half of the (8, 8, 8) output grid is a constant (bias only): those voxels keep no relevance
    (every one of them is excluded by the normalization)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv3d(3, 2, 1)

    def forward(self, x):
        mask = torch.zeros(1, 1, 8, 8, 8, dtype=x.dtype)
        mask[..., :4] = 1.0
        return self.head(x * mask)


def count_graph_passes(monkeypatch) -> dict[str, int]:
    """Count `Graph.relevance` (LRP) and `Graph.transpose` passes from now on (the returned dict
    is updated in place)."""
    calls = {"relevance": 0, "transpose": 0}
    for name in calls:
        original = getattr(Graph, name)

        def counting(self, arg, *args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(self, arg, *args, **kwargs)
        monkeypatch.setattr(Graph, name, counting)
    return calls


class MirroredEnsemble(nn.Module):
    """Mean of several networks' logits over input flips (test-time mirroring): a linear
    combination of networks, so its region map stays exact."""

    def __init__(self, members: list[nn.Module], axes: tuple[int, ...] = (2, 3, 4)) -> None:
        super().__init__()
        self.members, self.axes = nn.ModuleList(members), axes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flips = [()] + [(a,) for a in self.axes]
        total = None
        for member in self.members:
            for dims in flips:
                y = member(x.flip(dims)).flip(dims) if dims else member(x)
                total = y if total is None else total + y
        return total / (len(self.members) * len(flips))


class PreActResidualNet(nn.Module):
    """Pre-activation residual blocks (norm → act → conv, plus the skip; SegResNet's pattern), so
    the normalizations cannot be folded into a convolution, with GroupNorm, InstanceNorm and
    BatchNorm; a sigmoid-gated skip (attention-gate style), a channel `repeat` (VNet's input
    transition), `expand`, `chunk`, `stack` and GELU/SiLU."""

    def __init__(self, in_channels: int = 2, classes: int = 2, width: int = 4, bias: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv3d(in_channels, width, 3, padding=1, bias=bias)
        self.norms = nn.ModuleList([nn.GroupNorm(2, width), nn.InstanceNorm3d(width, affine=True),
                                    nn.BatchNorm3d(width)])
        self.convs = nn.ModuleList([nn.Conv3d(width, width, 3, padding=1, bias=bias) for _ in range(3)])
        self.gate = nn.Conv3d(width, 1, 1, bias=bias)
        self.head = nn.Conv3d(width, classes, 1, bias=bias)
        self.repeats = width // in_channels

    def forward(self, x):
        x = self.stem(x) + x.repeat(1, self.repeats, 1, 1, 1)
        for norm, conv, act in zip(self.norms, self.convs, (F.relu, F.gelu, F.silu)):
            x = x + conv(act(norm(x)))
        gate = torch.sigmoid(self.gate(F.relu(x)))                  # (1, 1, D, H, W)
        x = x * gate.expand_as(x) + x                                # gated skip
        first, second = x.chunk(2, dim=1)
        x = torch.stack([first, second], dim=2).flatten(1, 2)        # interleave the halves
        return self.head(x)
