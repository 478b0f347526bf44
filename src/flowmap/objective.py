"""The FlowMap objective: reprojected flow and tracks versus observed (METHOD.md section 4).

Both terms unproject a source pixel with its depth and the intrinsics, move it with the
relative pose to the target camera, project it and compare with the observed match,
under a Huber penalty. Errors are measured in normalised image coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor
import torch.nn.functional as F

from flowmap.geometry import invert_rigid, project, sample_image, transform, unproject
from flowmap.model.poses import chain

if TYPE_CHECKING:
    from flowmap.model.flowmap import VideoTensors, WindowOutput


@dataclass
class ObjectiveConfig:
    """Attributes:
        flow_weight: weight of the flow term (METHOD.md: 1000).
        track_weight: weight of the track term (METHOD.md: 100).
        track_start_fraction: the track term is enabled after this fraction of the
            steps (METHOD.md: step 50 of 2000 = 0.025).
        huber_delta: Huber threshold in normalised units (0.01 = about 2-3 working
            pixels; larger residuals are penalised linearly, like outliers).
    """

    flow_weight: float = 1000.0
    track_weight: float = 100.0
    track_start_fraction: float = 0.025
    huber_delta: float = 0.01


def _huber(residual: Tensor, delta: float) -> Tensor:
    """Huber penalty of the 2D residual norm, summed over x and y: (..., 2) -> (...)."""
    return F.huber_loss(residual, torch.zeros_like(residual), reduction="none", delta=delta).sum(-1)


def flow_loss(
    depth: Tensor,
    K: Tensor,
    T_prev_from_next: Tensor,
    xy: Tensor,
    flow_fwd: Tensor,
    flow_bwd: Tensor,
    mask_fwd: Tensor,
    mask_bwd: Tensor,
    delta: float,
) -> Tensor:
    """Mask-weighted Huber error of the induced flow, forward and backward.

    Args:
        depth: (B, h, w) depth of B consecutive frames.
        K: (3, 3) normalised intrinsics.
        T_prev_from_next: (B-1, 4, 4) w2c_i @ c2w_{i+1}.
        xy: (P, 2) normalised pixel centres where the loss is evaluated.
        flow_fwd, flow_bwd: (B-1, P, 2) observed flows at those pixels (normalised).
        mask_fwd, mask_bwd: (B-1, P) validity weights.

    Returns:
        () scalar loss (weighted mean over pairs, directions and pixels).
    """
    error, weight = flow_loss_sums(depth, K, T_prev_from_next, xy, flow_fwd, flow_bwd, mask_fwd, mask_bwd, delta)
    return error / (weight + 1e-8)


def flow_loss_sums(
    depth: Tensor,
    K: Tensor,
    T_prev_from_next: Tensor,
    xy: Tensor,
    flow_fwd: Tensor,
    flow_bwd: Tensor,
    mask_fwd: Tensor,
    mask_bwd: Tensor,
    delta: float,
) -> tuple[Tensor, Tensor]:
    """The weighted sum of Huber errors and the sum of weights whose ratio is
    :func:`flow_loss` (same arguments), so that a long video's loss can be summed over
    chunks of pairs without holding every pair's per-pixel terms at once."""
    n = depth.shape[0] - 1
    xy_b = xy[None].expand(n, -1, -1)
    d_prev = sample_image(depth[:-1, None], xy_b)[..., 0]
    d_next = sample_image(depth[1:, None], xy_b)[..., 0]
    T_next_from_prev = invert_rigid(T_prev_from_next)
    terms, weights = [], []
    for d, T, flow, mask in (
        (d_prev, T_next_from_prev, flow_fwd, mask_fwd),
        (d_next, T_prev_from_next, flow_bwd, mask_bwd),
    ):
        xy_hat, in_front = project(transform(T, unproject(xy_b, d, K)), K)
        w = mask * in_front
        terms.append((_huber(xy_hat - (xy_b + flow), delta) * w).sum())
        weights.append(w.sum())
    return sum(terms), sum(weights)


def track_loss(
    depth: Tensor,
    K: Tensor,
    c2w: Tensor,
    tracks_xy: Tensor,
    tracks_visible: Tensor,
    tracks_query: Tensor,
    delta: float,
) -> Tensor:
    """Huber error of track points reprojected from their query frame to every other
    frame of the window where they are visible.

    Args:
        depth: (B, h, w) depths of the window's frames.
        K: (3, 3) normalised intrinsics.
        c2w: (B, 4, 4) window poses (any common reference frame).
        tracks_xy: (M, B, 2) track positions in the window's frames (normalised).
        tracks_visible: (M, B) bool.
        tracks_query: (M,) index in the window of each track's query frame.

    Returns:
        () scalar loss; zero (with a gradient path) when no pair is visible.
    """
    M, B = tracks_visible.shape
    if M == 0:
        return depth.sum() * 0.0
    src_xy = tracks_xy[torch.arange(M), tracks_query]  # (M, 2)
    # Group the tracks by query frame: depth lookups and transforms are per frame.
    total, count = depth.sum() * 0.0, torch.zeros((), device=depth.device)
    w2c = invert_rigid(c2w)
    for q in torch.unique(tracks_query).tolist():
        sel = tracks_query == q
        xy_q = src_xy[sel]  # (m, 2)
        d = sample_image(depth[q][None, None], xy_q[None])[0, :, 0]
        points = unproject(xy_q, d, K)  # (m, 3) in camera q
        T = w2c @ c2w[q]  # (B, 4, 4) camera q -> camera j
        xy_hat, in_front = project(transform(T, points[None].expand(B, -1, -1)), K)  # (B, m, 2)
        target = tracks_xy[sel].transpose(0, 1)  # (B, m, 2)
        vis = tracks_visible[sel].transpose(0, 1).float() * in_front
        vis[q] = 0.0
        total = total + (_huber(xy_hat - target, delta) * vis).sum()
        count = count + vis.sum()
    return total / (count + 1e-8)


def window_losses(
    out: WindowOutput,
    data: VideoTensors,
    start: int,
    end: int,
    pixels: Tensor | slice,
    cfg: ObjectiveConfig,
    use_tracks: bool,
) -> dict[str, Tensor]:
    """The weighted objective of one window of the model (METHOD.md 4).

    Args:
        out: the model's output for frames [start, end).
        data: the video's tensors.
        start, end: the window.
        pixels: (P,) flattened pixel indices for the flow term, or ``slice(None)`` for all.
        cfg: weights and Huber threshold.
        use_tracks: add the track term (off during the first steps).

    Returns:
        ``{"flow": (), "loss": ()}`` (+ ``"tracks"``): the unweighted terms and the
        weighted total ``flow_weight * flow + track_weight * tracks``.
    """
    s = slice(start, end - 1)
    losses = {
        "flow": flow_loss(
            out.depth,
            out.K,
            out.T,
            data.grid[pixels],
            data.flow_fwd[s][:, pixels],
            data.flow_bwd[s][:, pixels],
            data.mask_fwd[s][:, pixels],
            data.mask_bwd[s][:, pixels],
            cfg.huber_delta,
        )
    }
    loss = cfg.flow_weight * losses["flow"]
    if use_tracks:
        xy, vis, query = data.window_tracks(start, end)
        losses["tracks"] = track_loss(out.depth, out.K, chain(out.T), xy, vis, query, cfg.huber_delta)
        loss = loss + cfg.track_weight * losses["tracks"]
    losses["loss"] = loss
    return losses
