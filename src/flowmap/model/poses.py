"""Relative poses by weighted Procrustes, chained into camera-to-world matrices.

FlowMap section 3.2: for a consecutive pair (i, i+1), pixels of frame i+1 are unprojected
with their depth, matched to frame i through the backward flow (depth of frame i sampled
bilinearly at the flow target), and the rigid transform between the two point sets is
solved in closed form by weighted Procrustes. Chaining the relative transforms gives all
c2w with frame 0 = identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flowmap.geometry import procrustes, project, sample_image, transform, unproject
from flowmap.model.weights import CorrespondenceWeights


@dataclass
class PairSamples:
    """Matched samples of consecutive pairs, independent of the intrinsics.

    Attributes:
        xy_next: (P, 2) normalised pixels of frame i+1 (shared by all pairs).
        depth_next: (B-1, P) depth of frame i+1 there.
        xy_prev: (B-1, P, 2) matched normalised position in frame i (backward flow).
        depth_prev: (B-1, P) depth of frame i sampled at xy_prev.
        weights: (B-1, P) Procrustes weights (MLP confidence x flow validity).
        mask: (B-1, P) observed flow validity (in [0, 1], zero outside the image).
    """

    xy_next: Tensor
    depth_next: Tensor
    xy_prev: Tensor
    depth_prev: Tensor
    weights: Tensor
    mask: Tensor


def pair_samples(
    depth: Tensor,
    features: Tensor,
    flow_bwd: Tensor,
    mask_bwd: Tensor,
    xy: Tensor,
    weight_net: CorrespondenceWeights | None,
) -> PairSamples:
    """Match sampled pixels of frames 1..B-1 to frames 0..B-2 through the backward flow.

    Args:
        depth: (B, h, w) depths of B consecutive frames.
        features: (B, C, h', w') depth-network features (any resolution).
        flow_bwd: (B-1, P, 2) backward flow (i+1 -> i) at the sampled pixels, normalised.
        mask_bwd: (B-1, P) its validity.
        xy: (P, 2) normalised sampled pixel centres.
        weight_net: correspondence-weight MLP, or None for weights = validity.

    Returns:
        :class:`PairSamples`.
    """
    n_pairs = depth.shape[0] - 1
    xy_b = xy[None].expand(n_pairs, -1, -1)
    depth_next = sample_image(depth[1:, None], xy_b)[..., 0]
    xy_prev = xy_b + flow_bwd
    inside = ((xy_prev >= 0) & (xy_prev <= 1)).all(dim=-1).float()
    depth_prev = sample_image(depth[:-1, None], xy_prev)[..., 0]
    mask = mask_bwd * inside
    if weight_net is None:
        weights = mask
    else:
        f_prev = sample_image(features[:-1], xy_prev)
        f_next = sample_image(features[1:], xy_b)
        weights = weight_net(f_prev, f_next) * mask
    return PairSamples(xy, depth_next, xy_prev, depth_prev, weights, mask)


def relative_poses(samples: PairSamples, K: Tensor) -> Tensor:
    """Solve T_{i <- i+1} (camera i+1 -> camera i, = w2c_i @ c2w_{i+1}) per pair.

    Args:
        samples: matched samples of B-1 pairs.
        K: (..., 1, 3, 3) normalised intrinsics; leading dims broadcast (e.g. one per
            focal candidate).

    Returns:
        (..., B-1, 4, 4) rigid transforms.
    """
    p = unproject(samples.xy_next, samples.depth_next, K)  # camera i+1
    q = unproject(samples.xy_prev, samples.depth_prev, K)  # camera i
    return procrustes(p, q, samples.weights.expand(p.shape[:-1]))


def reprojection_error_px(samples: PairSamples, K: Tensor, T: Tensor, height: int, width: int) -> Tensor:
    """Mask-weighted mean L1 distance, in working-resolution pixels, between where the
    solved pose sends frame i+1's pixels and where the observed backward flow sends them.

    Args:
        samples: pair samples (B-1 pairs).
        K: (..., 1, 3, 3) normalised intrinsics.
        T: (..., B-1, 4, 4) T_{i <- i+1}.

    Returns:
        (...,) error per leading index (averaged over pairs and pixels).
    """
    p = unproject(samples.xy_next, samples.depth_next, K)
    xy_hat, in_front = project(transform(T, p), K)
    scale = torch.tensor([width, height], dtype=xy_hat.dtype, device=xy_hat.device)
    err = ((xy_hat - samples.xy_prev) * scale).abs().sum(dim=-1)
    w = samples.mask * in_front
    return (err * w).sum(dim=(-1, -2)) / (w.sum(dim=(-1, -2)) + 1e-8)


def chain(T_prev_from_next: Tensor) -> Tensor:
    """Chain relative transforms into c2w with frame 0 = identity.

    Args:
        T_prev_from_next: (B-1, 4, 4), element i = w2c_i @ c2w_{i+1}.

    Returns:
        (B, 4, 4) c2w, c2w_{i+1} = c2w_i @ T_i.
    """
    eye = torch.eye(4, dtype=T_prev_from_next.dtype, device=T_prev_from_next.device)
    c2w = [eye]
    for T in T_prev_from_next:
        c2w.append(c2w[-1] @ T)
    return torch.stack(c2w)
