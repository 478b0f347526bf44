"""Correspondence weights: a small MLP on the depth network's features.

FlowMap section 3.2: for a pixel of frame i+1 and its match in frame i (the backward
flow target, sampled bilinearly), the MLP sees both feature vectors and outputs a
confidence in (0, 1] (sigmoid, clipped below at 1e-4). The weights enter only the
Procrustes pose solve, so they learn to down-weight occlusions and wrong flow; the loss
itself is weighted by the observed flow validity masks, so zero weights are no escape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class WeightMLPConfig:
    """Attributes:
        hidden: width of the hidden layers.
        layers: number of hidden layers.
        min_weight: lower clip of the sigmoid output (METHOD.md: 1e-4).
    """

    hidden: int = 64
    layers: int = 2
    min_weight: float = 1e-4


class CorrespondenceWeights(nn.Module):
    """MLP: (features of frame i at the match, features of frame i+1) -> weight."""

    def __init__(self, feature_dim: int, cfg: WeightMLPConfig):
        super().__init__()
        self.cfg = cfg
        dims = [2 * feature_dim] + [cfg.hidden] * cfg.layers
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-1], 1))
        self.mlp = nn.Sequential(*layers)
        # Start near a weight of sigmoid(2) = 0.88 everywhere: every match counts at first.
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.constant_(self.mlp[-1].bias, 2.0)

    def forward(self, features_earlier: Tensor, features_later: Tensor) -> Tensor:
        """Args:
            features_earlier: (..., C) features of frame i sampled at the match.
            features_later: (..., C) features of frame i+1 at its pixel.

        Returns:
            (...,) weights in [min_weight, 1].
        """
        x = torch.cat([features_earlier, features_later], dim=-1)
        return torch.sigmoid(self.mlp(x)[..., 0]).clamp(min=self.cfg.min_weight)
