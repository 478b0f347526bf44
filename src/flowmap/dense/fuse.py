"""Fusion of one frame's per-neighbour depth estimates, and the fused point cloud.

Per pixel (:func:`fuse_estimates`): an estimate is valid when its flow passes the
forward-backward and epipolar checks and its expected relative error ``r`` (flow noise
over parallax, :func:`flowmap.dense.frame_depth`) is small enough; the median of the
valid ones is the reference, an estimate *agrees* when it is within ``agree_tol``
(relative) of it, and the depth is the mean of the agreeing estimates weighted by
1 / r^2 (inverse variance). The confidence in [0, 1] is the product of

* precision: 1 - r_fused / max_rel_err, clipped to [0, 1], r_fused = 1 / sqrt(sum 1 / r^2),
* agreement: the agreeing fraction of the valid estimates,
* support: min(agreeing, 2) / 2 (one estimate alone is not cross-checked),

so it is 0 where no neighbour has parallax (pure rotation) or no flow is consistent.

The point cloud (:func:`fused_points`) takes the confident pixels frame by frame and
leaves out a pixel whose point an earlier frame within the window already holds (the
point projects onto a confident pixel there whose depth agrees within ``ply_tol``):
each surface is written by the first frame that sees it confidently, not once per frame
(the visibility-based fusion idea of Merrell et al., "Real-time visibility-based
fusion of depth maps", ICCV 2007, reduced to its duplicate test).
"""

from __future__ import annotations

import warnings

import numpy as np

from flowmap.camera import project_points, unproject_pixels


def fuse_estimates(
    depths: np.ndarray, rel_err: np.ndarray, valid: np.ndarray, agree_tol: float, max_rel_err: float
) -> tuple[np.ndarray, np.ndarray]:
    """Fused depth and confidence of one frame from M neighbours' estimates.

    Args:
        depths: (M, h, w) z-depth estimates (NaN: none).
        rel_err: (M, h, w) expected relative depth error of each estimate (> 0).
        valid: (M, h, w) bool, estimates that passed the flow and parallax checks.
        agree_tol, max_rel_err: see the module docs.

    Returns:
        depth: (h, w) float32 (NaN where no estimate is valid).
        confidence: (h, w) float32 in [0, 1].
    """
    valid = valid & np.isfinite(depths) & (depths > 0)
    z = np.where(valid, depths, np.nan)
    n_valid = valid.sum(axis=0)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmedian's "All-NaN slice": expected here
        ref = np.nanmedian(z, axis=0)
        agree = valid & (np.abs(z - ref) <= agree_tol * ref)
    with np.errstate(divide="ignore"):
        wts = np.where(agree, 1.0 / np.maximum(rel_err.astype(np.float64), 1e-9) ** 2, 0.0)
    total = wts.sum(axis=0)
    n_agree = agree.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(total > 0, (wts * np.nan_to_num(z)).sum(axis=0) / total, np.nan)
        precision = np.clip(1.0 - 1.0 / np.sqrt(total) / max_rel_err, 0.0, 1.0)
        agreement = np.where(n_valid > 0, n_agree / np.maximum(n_valid, 1), 0.0)
    conf = np.where(total > 0, precision * agreement * np.minimum(n_agree, 2) / 2.0, 0.0)
    return depth.astype(np.float32), conf.astype(np.float32)


def already_held(xyz: np.ndarray, K: np.ndarray, c2w: np.ndarray, depth: np.ndarray, keep: np.ndarray, tol: float) -> np.ndarray:
    """(P,) bool: world points that land on a kept pixel of an earlier frame whose
    depth agrees within ``tol`` (relative), i.e. that frame already wrote this surface.

    Args:
        xyz: (P, 3) world points.
        K: (3, 3) intrinsics in pixels of ``depth``.
        c2w: (4, 4) the earlier frame's camera-to-world, OpenCV axes.
        depth: (h, w) its z-depth.
        keep: (h, w) bool, its pixels that entered the cloud.
    """
    h, w = depth.shape
    uv, z = project_points(xyz, K, c2w)
    with np.errstate(invalid="ignore"):
        ok = (z > 0) & (uv[:, 0] > -0.5) & (uv[:, 0] < w - 0.5) & (uv[:, 1] > -0.5) & (uv[:, 1] < h - 0.5)
    u = np.rint(np.nan_to_num(uv[:, 0])).astype(np.int64).clip(0, w - 1)
    v = np.rint(np.nan_to_num(uv[:, 1])).astype(np.int64).clip(0, h - 1)
    d = depth[v, u]
    with np.errstate(invalid="ignore"):
        return ok & keep[v, u] & (np.abs(z - d) <= tol * d)


def fused_points(
    depth: np.ndarray,
    confidence: np.ndarray,
    images: np.ndarray,
    K: np.ndarray,
    c2w: np.ndarray,
    min_confidence: float,
    tol: float,
    window: int,
    stride: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Coloured world points of the confident pixels of all frames, each surface once.

    Args:
        depth: (N, h, w) z-depth.
        confidence: (N, h, w) in [0, 1].
        images: (N, h, w, 3) uint8 colours at the same resolution.
        K: (3, 3) intrinsics in pixels of ``depth``.
        c2w: (N, 4, 4) camera-to-world, OpenCV axes.
        min_confidence: pixels below it are left out.
        tol: relative depth tolerance of the duplicate test (:func:`already_held`).
        window: earlier frames checked for duplicates (cost O(N window)).
        stride: every ``stride``-th pixel per axis.

    Returns:
        xyz (P, 3) float64, rgb (P, 3) uint8.
    """
    n, h, w = depth.shape
    sub = np.zeros((h, w), bool)
    sub[::stride, ::stride] = True
    kept: list[np.ndarray] = []
    xyz_all, rgb_all = [], []
    for i in range(n):
        with np.errstate(invalid="ignore"):
            keep = sub & (confidence[i] >= min_confidence) & np.isfinite(depth[i]) & (depth[i] > 0)
        v, u = np.nonzero(keep)
        xyz = unproject_pixels(u, v, depth[i][v, u], K, c2w[i])
        dup = np.zeros(len(xyz), bool)
        for j in range(max(0, i - window), i):
            dup |= already_held(xyz, K, c2w[j], depth[j], kept[j], tol)
        keep[v[dup], u[dup]] = False
        kept.append(keep)
        xyz_all.append(xyz[~dup])
        rgb_all.append(images[i][v[~dup], u[~dup]])
        if i >= window:
            kept[i - window] = None  # only the window is needed: memory stays bounded
    return np.concatenate(xyz_all).reshape(-1, 3), np.concatenate(rgb_all).reshape(-1, 3).astype(np.uint8)
