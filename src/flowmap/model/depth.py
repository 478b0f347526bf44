"""The depth CNN: RGB frame -> dense z-depth and per-pixel features.

FlowMap (section 3.1) parameterises depth by a CNN rather than free per-pixel values,
so that similar patches get similar depths and a gradient on one frame improves all
frames (free per-pixel depth collapses in the paper's ablation). The reference uses
MiDaS-small; flowmap uses a small U-Net that needs no downloaded weights and is cheap
enough to run on a laptop CPU. To save time it runs at ``1 / net_downsample`` of the
working resolution and its depth is upsampled bilinearly (measured: one Adam step over
60 frames drops from 6.3 s to 1.1 s at half resolution).

Depth mapping: ``depth = exp(clamp(out + log_scale, -10, 10))`` (the "exp" mapping of
the reference for networks without a disparity head); it is positive, scale-free and
starts as a constant 1 because the head is zero-initialised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
import torch.nn.functional as F


@dataclass
class DepthNetConfig:
    """Depth network settings.

    Attributes:
        channels: encoder widths per level (each level halves the resolution).
        feature_dim: channels of the per-pixel feature map given to the weight MLP.
        net_downsample: the network runs at working resolution / this factor (4: 68 x 40
            for a 272 x 160 working size) and its depth is upsampled bilinearly. Measured
            on tum-office (17 frames, one CPU thread): factor 2 with 1000 steps gave
            ATE 0.0024 and focal error 2.3 % in 671 s; factor 4 with 2000 steps gave
            0.0020 and 0.7 % in 724 s, so 4 with the paper's 2000 steps is the default.
    """

    channels: tuple[int, ...] = (32, 48, 64, 96, 128)
    feature_dim: int = 32
    net_downsample: int = 4


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ELU(inplace=True))


class DepthNet(nn.Module):
    """U-Net: (B, 3, h, w) RGB in [0, 1] -> depth (B, h, w) and features (B, C, h', w').

    The encoder halves the resolution ``len(channels)`` times; the decoder upsamples
    and adds the skip connections back to the network's input resolution.
    """

    def __init__(self, cfg: DepthNetConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.stem = _conv(3 + 2, ch[0])
        self.down = nn.ModuleList(
            nn.Sequential(_conv(ch[i], ch[i + 1], stride=2), _conv(ch[i + 1], ch[i + 1]))
            for i in range(len(ch) - 1)
        )
        self.lateral = nn.ModuleList(nn.Conv2d(ch[i], cfg.feature_dim, 1) for i in range(len(ch)))
        self.up = nn.ModuleList(_conv(cfg.feature_dim, cfg.feature_dim) for _ in range(len(ch) - 1))
        self.head = nn.Conv2d(cfg.feature_dim, 1, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Args:
            images: (B, 3, h, w) float RGB in [0, 1] at the working resolution.

        Returns:
            depth: (B, h, w) positive z-depth (arbitrary global scale).
            features: (B, feature_dim, h / net_downsample, w / net_downsample).
        """
        B, _, h, w = images.shape
        s = self.cfg.net_downsample
        x = images if s == 1 else F.interpolate(images, scale_factor=1 / s, mode="area")
        x = (x - 0.45) / 0.25
        hn, wn = x.shape[-2:]
        # Pad to a multiple of 2^(levels-1) so every skip connection lines up.
        m = 2 ** (len(self.cfg.channels) - 1)
        ph, pw = (-hn) % m, (-wn) % m
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        # Normalised coordinates as extra channels (CoordConv) let the network express
        # position-dependent depth such as a ground plane.
        yy, xx = torch.meshgrid(
            torch.linspace(-1, 1, x.shape[-2], device=x.device),
            torch.linspace(-1, 1, x.shape[-1], device=x.device),
            indexing="ij",
        )
        coords = torch.stack([xx, yy])[None].expand(B, -1, -1, -1)
        x = self.stem(torch.cat([x, coords], dim=1))
        skips = [x]
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        y = self.lateral[-1](skips[-1])
        for i in range(len(skips) - 2, -1, -1):
            y = F.interpolate(y, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
            y = self.up[i](y + self.lateral[i](skips[i]))
        features = y[..., :hn, :wn]
        logits = self.head(features)
        if s != 1:
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        depth = torch.exp(logits[:, 0].clamp(-10.0, 10.0))
        return depth, features
