"""Focal length: softmin over candidates, then a learned focal, or a known one.

FlowMap section 3.3: a fixed set of candidate focal lengths, linearly spaced from 0.5 to
2.0 times sqrt(H W) pixels (invariant to the aspect ratio). For each candidate the poses
of the pairs are solved by Procrustes and the flow they induce is compared with the
observed flow; the focal length is the softmin-weighted mean of the candidates. It is a
differentiable function of the depth network. After a switch step it becomes a single
learnable value initialised with the mean of the last softmin estimates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flowmap.geometry import intrinsics_from_focal
from flowmap.model.poses import PairSamples, relative_poses, reprojection_error_px


@dataclass
class FocalConfig:
    """Attributes:
        n_candidates: number of candidates (METHOD.md: 60).
        min_factor, max_factor: candidate range as multiples of sqrt(H W) (0.5, 2.0).
        temperature: softmin sharpness per pixel of mean reprojection error; weights are
            softmax(-temperature * (error - min error)). METHOD.md states 10 x (error -
            min error); flowmap measures the error in working-resolution pixels, so
            10 means a candidate 0.1 px worse gets e^-1 of the weight.
        switch_fraction: fraction of the steps after which the focal becomes learnable
            (METHOD.md: step 1000 of 2000).
        average_last: softmin estimates averaged to initialise the learned focal (100).
    """

    n_candidates: int = 60
    min_factor: float = 0.5
    max_factor: float = 2.0
    temperature: float = 10.0
    switch_fraction: float = 0.5
    average_last: int = 100


def focal_candidates(height: int, width: int, cfg: FocalConfig, device: torch.device | str = "cpu") -> Tensor:
    """(n_candidates,) focal lengths in pixels of a height x width image."""
    scale = (height * width) ** 0.5
    return torch.linspace(cfg.min_factor, cfg.max_factor, cfg.n_candidates, device=device) * scale


def softmin_focal(
    samples: PairSamples, image_size: tuple[int, int], error_size: tuple[int, int], cfg: FocalConfig
) -> tuple[Tensor, Tensor]:
    """Softmin-weighted focal length over the candidates.

    Args:
        samples: matched samples of the pairs used (e.g. all pairs of a window).
        image_size: (H, W) of the input frames: the focal is in their pixels.
        error_size: (h, w) working resolution: the errors are in its pixels.

    Returns:
        focal: () focal length in input-frame pixels (differentiable).
        errors: (n_candidates,) mean reprojection error per candidate, working pixels.
    """
    H, W = image_size
    f = focal_candidates(H, W, cfg, device=samples.depth_next.device)
    K = intrinsics_from_focal(f, H, W)[:, None]  # (C, 1, 3, 3)
    T = relative_poses(samples, K)
    errors = reprojection_error_px(samples, K, T, *error_size)
    w = torch.softmax(-cfg.temperature * (errors - errors.min().detach()), dim=0)
    return (w * f).sum(), errors


class LearnedFocal(nn.Module):
    """A single focal length, log-parameterised so it stays positive (pixels)."""

    def __init__(self, focal_px: float):
        super().__init__()
        self.log_focal = nn.Parameter(torch.tensor(float(focal_px)).log())

    def forward(self) -> Tensor:
        return self.log_focal.exp()
