"""The FlowMap model: depth network + correspondence-weight MLP + focal length.

Nothing is a free per-frame variable (METHOD.md 3): for a window of consecutive frames
the depth network predicts depth and features; matched pixels of each pair (through
the backward flow) get weights from the MLP; the focal length is known, learned
(:class:`~flowmap.model.intrinsics.LearnedFocal`, after the switch) or the softmin
over candidates; the relative poses come from weighted Procrustes on the matched,
unprojected pixels. :meth:`FlowMapModel.forward` returns all of it as a
:class:`WindowOutput`; the losses are :mod:`flowmap.objective`'s.

Conventions (see :mod:`flowmap.types`): ``xy`` normalised in [0, 1]; ``K`` normalised
intrinsics unless named ``_px``; relative poses ``T[i] = T_{i <- i+1}`` (camera i+1 to
camera i); OpenCV camera axes; z-depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from flowmap.geometry import intrinsics_from_focal, pixel_grid
from flowmap.model.depth import DepthNet, DepthNetConfig
from flowmap.model.intrinsics import FocalConfig, LearnedFocal, softmin_focal
from flowmap.model.poses import PairSamples, pair_samples, relative_poses
from flowmap.model.weights import CorrespondenceWeights, WeightMLPConfig
from flowmap.types import Correspondences


@dataclass
class VideoTensors:
    """One video's working-resolution frames and correspondences as torch tensors.

    Attributes:
        images: (N, 3, h, w) float32 RGB in [0, 1].
        flow_fwd, flow_bwd: (N-1, h*w, 2) normalised flow, pixels flattened row-major.
        mask_fwd, mask_bwd: (N-1, h*w) validity in [0, 1].
        tracks_xy: (M, N, 2) normalised track positions.
        tracks_visible: (M, N) bool.
        tracks_query: (M,) int64 query frame of each track.
        grid: (h*w, 2) normalised pixel centres (:func:`flowmap.geometry.pixel_grid`).
    """

    images: Tensor
    flow_fwd: Tensor
    flow_bwd: Tensor
    mask_fwd: Tensor
    mask_bwd: Tensor
    tracks_xy: Tensor
    tracks_visible: Tensor
    tracks_query: Tensor
    grid: Tensor

    @staticmethod
    def from_numpy(images: np.ndarray, corr: Correspondences, device: str) -> VideoTensors:
        """From (N, h, w, 3) uint8 working-resolution frames and their correspondences."""
        h, w = corr.shape

        def t(a: np.ndarray, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)

        return VideoTensors(
            images=t(images).permute(0, 3, 1, 2).contiguous() / 255.0,
            flow_fwd=t(corr.flow_fwd).reshape(-1, h * w, 2),
            flow_bwd=t(corr.flow_bwd).reshape(-1, h * w, 2),
            mask_fwd=t(corr.mask_fwd).reshape(-1, h * w),
            mask_bwd=t(corr.mask_bwd).reshape(-1, h * w),
            tracks_xy=t(corr.tracks_xy),
            tracks_visible=t(corr.tracks_visible, torch.bool),
            tracks_query=t(corr.tracks_query, torch.long),
            grid=pixel_grid(h, w, device).reshape(-1, 2),
        )

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def window_tracks(self, start: int, end: int) -> tuple[Tensor, Tensor, Tensor]:
        """Tracks seeded in [start, end), restricted to those frames.

        Returns:
            xy (M', B, 2), visible (M', B), query (M',) indices relative to ``start``.
        """
        sel = (self.tracks_query >= start) & (self.tracks_query < end)
        return self.tracks_xy[sel][:, start:end], self.tracks_visible[sel][:, start:end], self.tracks_query[sel] - start


@dataclass
class WindowOutput:
    """What the model says about a window of B consecutive frames.

    Attributes:
        depth: (B, h, w) z-depth.
        samples: pair samples of the B-1 pairs at the sampled pixels.
        focal: () focal length in pixels of the input frames.
        K: (3, 3) normalised intrinsics from ``focal`` (principal point at the centre).
        T: (B-1, 4, 4) relative poses T_{i <- i+1}.
    """

    depth: Tensor
    samples: PairSamples
    focal: Tensor
    K: Tensor
    T: Tensor


class FlowMapModel(torch.nn.Module):
    """Depth network + correspondence-weight MLP + focal length (known, softmin or learned).

    Args:
        depth: depth-network settings.
        weights: weight-MLP settings.
        focal: focal-candidate settings (softmin search).
        image_size: (H, W) of the input frames: the focal length is in their pixels.
        known_focal: a known focal length in input pixels (no search, nothing learned).
    """

    def __init__(
        self,
        depth: DepthNetConfig,
        weights: WeightMLPConfig,
        focal: FocalConfig,
        image_size: tuple[int, int],
        known_focal: float | None = None,
    ):
        super().__init__()
        self.depth_net = DepthNet(depth)
        self.weight_net = CorrespondenceWeights(depth.feature_dim, weights)
        self.focal_cfg = focal
        self.image_size = image_size
        self.known_focal = known_focal
        self.learned_focal: LearnedFocal | None = None

    def enable_learned_focal(self, init_px: float) -> LearnedFocal:
        """Switch from the softmin focal to a learned one initialised at ``init_px`` (METHOD.md 3.3)."""
        device = next(self.parameters()).device
        self.learned_focal = LearnedFocal(init_px).to(device)
        return self.learned_focal

    @property
    def searching_focal(self) -> bool:
        """True while the focal length is the softmin over candidates (neither known nor learned)."""
        return self.known_focal is None and self.learned_focal is None

    def pair_samples(self, depth: Tensor, features: Tensor, flow_bwd: Tensor, mask_bwd: Tensor, xy: Tensor) -> PairSamples:
        """Matched pixels of consecutive frames with MLP weights (:func:`~flowmap.model.poses.pair_samples`)."""
        return pair_samples(depth, features, flow_bwd, mask_bwd, xy, self.weight_net)

    def focal(self, samples: PairSamples, work_size: tuple[int, int]) -> Tensor:
        """() focal length in input pixels: known, learned, or the softmin over candidates of ``samples``."""
        if self.known_focal is not None:
            return torch.tensor(float(self.known_focal), device=samples.depth_next.device)
        if self.learned_focal is not None:
            return self.learned_focal()
        return softmin_focal(samples, self.image_size, work_size, self.focal_cfg)[0]

    def forward(self, data: VideoTensors, start: int, end: int, pixels: Tensor) -> WindowOutput:
        """Depth, pair samples, focal, intrinsics and relative poses of frames [start, end).

        Args:
            data: the video's tensors.
            start, end: the window, 0 <= start < end <= N, at least 2 frames.
            pixels: (P,) indices into the flattened h*w pixels used for the pose and
                focal solves.

        Returns:
            :class:`WindowOutput`.
        """
        depth, features = self.depth_net(data.images[start:end])
        samples = self.pair_samples(
            depth, features, data.flow_bwd[start : end - 1][:, pixels], data.mask_bwd[start : end - 1][:, pixels], data.grid[pixels]
        )
        focal = self.focal(samples, data.shape)
        K = intrinsics_from_focal(focal, *self.image_size)
        return WindowOutput(depth, samples, focal, K, relative_poses(samples, K[None]))
