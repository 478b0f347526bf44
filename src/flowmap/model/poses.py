"""Relative poses by weighted Procrustes, chained into camera-to-world matrices.

FlowMap section 3.2: for a consecutive pair (i, i+1), pixels of frame i+1 are unprojected
with their depth, matched to frame i through the backward flow (depth of frame i sampled
bilinearly at the flow target), and the rigid transform between the two point sets is
solved in closed form by weighted Procrustes. Chaining the relative transforms gives all
c2w with frame 0 = identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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


def bridge_pose(
    xy_a: np.ndarray, xy_b: np.ndarray, depth_a: np.ndarray, depth_b: np.ndarray, K: np.ndarray, threshold_px: float, width: int
) -> tuple[np.ndarray, float] | None:
    """Relative pose T_{a <- b} of two non-consecutive frames from sparse matches.

    The rotation and the direction of the translation come from the essential matrix
    (OpenCV ``findEssentialMat`` with RANSAC, then ``recoverPose``'s cheirality test)
    on the matches' camera rays; the length of the translation from the predicted
    depths, so that it is in the network's units like every other relative pose: the
    inliers are triangulated (``cv2.triangulatePoints``) with a unit translation and
    the translation is scaled by the median ratio of the predicted depth in frame a
    to the triangulated one.

    Args:
        xy_a, xy_b: (K, 2) normalised matched positions in frames a and b.
        depth_a, depth_b: (K,) predicted z-depths there.
        K: (3, 3) normalised intrinsics.
        threshold_px: RANSAC threshold in pixels of an image ``width`` wide.
        width: width in pixels the threshold refers to.

    Returns:
        T_ab: (4, 4) float64 T_{a <- b} (maps camera-b points to camera a) in the
            units of frame a's depth;
        depth_ratio: how much larger frame b's predicted depths are than frame a's
            units (the same triangulation scaled by frame b's depths). Frames on the
            two sides of a cut are not tied by any loss, so the network may give them
            different scales (1.45 on fox); the caller rescales the far side.
        or None when fewer than 15 matches survive.
    """
    import cv2

    def rays(xy: np.ndarray) -> np.ndarray:
        return np.stack([(xy[:, 0] - K[0, 2]) / K[0, 0], (xy[:, 1] - K[1, 2]) / K[1, 1]], axis=1).astype(np.float64)

    ra, rb = rays(xy_a), rays(xy_b)
    if len(ra) < 15:
        return None
    thr = threshold_px / (K[0, 0] * width)
    E, inliers = cv2.findEssentialMat(rb, ra, np.eye(3), cv2.RANSAC, 0.999, thr)
    if E is None or E.shape != (3, 3) or inliers is None or int(inliers.sum()) < 15:
        return None
    count, R, t, mask = cv2.recoverPose(E, rb, ra, np.eye(3), mask=inliers.copy())
    keep = mask.ravel() > 0
    if count < 15 or keep.sum() < 15:
        return None
    # Triangulate the inliers with the unit-length translation, then scale so that their
    # depths in frame a agree (median ratio) with the network's depths there.
    t = t.ravel() / np.linalg.norm(t)
    P_b = np.hstack([np.eye(3), np.zeros((3, 1))])
    P_a = np.hstack([R, t[:, None]])
    X_h = cv2.triangulatePoints(P_b, P_a, rb[keep].T, ra[keep].T)
    X_b = (X_h[:3] / X_h[3]).T
    z_a = (X_b @ R.T + t)[:, 2]
    ok = (X_b[:, 2] > 0) & (z_a > 0)
    if ok.sum() < 15:
        return None
    scale = float(np.median(depth_a[keep][ok] / z_a[ok]))
    scale_b = float(np.median(depth_b[keep][ok] / X_b[ok, 2]))
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = scale * t
    return T, scale_b / scale


def apply_bridges(T: np.ndarray, cuts_and_poses: list[tuple[int, int, int, np.ndarray]]) -> np.ndarray:
    """Replace the relative pose of each cut pair so the chain passes through its bridge.

    With P(i, j) = T_i ... T_{j-1} = T_{i <- j}, a bridge T_{a <- b} over the cut c
    (a <= c < b) sets T_c = P(a, c)^-1 T_{a <- b} P(c+1, b)^-1, so that chaining gives
    c2w_b = c2w_a T_{a <- b} while every other consecutive pose is unchanged.

    Args:
        T: (N-1, 4, 4) float64 T_{i <- i+1}.
        cuts_and_poses: (c, a, b, T_{a <- b}) per bridge.

    Returns:
        (N-1, 4, 4) a modified copy.
    """
    T = T.copy()

    def product(i: int, j: int) -> np.ndarray:
        P = np.eye(4)
        for k in range(i, j):
            P = P @ T[k]
        return P

    for c, a, b, T_ab in cuts_and_poses:
        T[c] = np.linalg.inv(product(a, c)) @ T_ab @ np.linalg.inv(product(c + 1, b))
    return T
