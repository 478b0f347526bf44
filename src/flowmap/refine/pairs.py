"""Pose-guided pair graph: which frames to match, chosen from the FlowMap cameras.

Temporal neighbours (+-k) are always matched. Any other pair (i, j) is matched when the
views overlap: the optical axes are less than ``max_axis_angle_deg`` apart and a
``min_overlap`` fraction of frame i's back-projected depth samples lands inside frame j in
front of it (and the reverse). Depth samples come from FlowMap's depth maps, so the
baseline is judged relative to the scene depth implicitly. This finds orbit loop closures
and revisits without matching all N^2 pairs; for N <= ``exhaustive_max_frames`` all pairs
are matched.
"""

from __future__ import annotations

import numpy as np


def _samples(depth: np.ndarray, K_work: np.ndarray, step: int = 8) -> np.ndarray:
    """(N, M, 3) camera-space points from a (N, h, w) depth grid sampled every ``step`` px."""
    n, h, w = depth.shape
    v, u = np.mgrid[step // 2 : h : step, step // 2 : w : step]
    u, v = u.ravel(), v.ravel()
    z = depth[:, v, u].astype(np.float64)
    x = (u - K_work[0, 2]) / K_work[0, 0] * z
    y = (v - K_work[1, 2]) / K_work[1, 1] * z
    return np.stack([x, y, z], axis=-1)


def overlap_matrix(c2w: np.ndarray, K_work: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """(N, N) fraction of frame i's depth samples visible in frame j (in front, inside).

    Args:
        c2w: (N, 4, 4) camera-to-world.
        K_work: (3, 3) intrinsics at the depth maps' resolution (pixel centre at u = i).
        depth: (N, h, w) z-depth, same scale as c2w.
    """
    n, h, w = depth.shape
    pts = _samples(depth, K_work)  # (N, M, 3)
    world = pts @ np.swapaxes(c2w[:, :3, :3], 1, 2) + c2w[:, None, :3, 3]
    w2c = np.linalg.inv(c2w)
    out = np.zeros((n, n))
    for j in range(n):
        cam = world @ w2c[j, :3, :3].T + w2c[j, :3, 3]  # (N, M, 3)
        z = cam[..., 2]
        ok = z > 1e-9
        u = K_work[0, 0] * cam[..., 0] / np.where(ok, z, 1) + K_work[0, 2]
        v = K_work[1, 1] * cam[..., 1] / np.where(ok, z, 1) + K_work[1, 2]
        inside = ok & (u >= -0.5) & (u <= w - 0.5) & (v >= -0.5) & (v <= h - 0.5)
        valid = np.isfinite(pts[..., 2]) & (pts[..., 2] > 0)
        out[:, j] = (inside & valid).sum(1) / np.maximum(valid.sum(1), 1)
    return out


def choose_pairs(c2w: np.ndarray, K_work: np.ndarray, depth: np.ndarray, cfg) -> tuple[list[tuple[int, int]], dict]:
    """Pairs (i, j), i < j, to match; and a dict of counts by reason.

    Raises:
        ValueError: fewer than 2 frames.
    """
    n = len(c2w)
    if n < 2:
        raise ValueError("the pair graph needs at least 2 frames")
    if n <= cfg.exhaustive_max_frames:
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        return pairs, {"exhaustive": len(pairs)}
    chosen: set[tuple[int, int]] = set()
    for i in range(n):
        for k in range(1, cfg.temporal_window + 1):
            if i + k < n:
                chosen.add((i, i + k))
    n_temporal = len(chosen)
    axes = c2w[:, :3, 2]
    cos = np.clip(axes @ axes.T, -1, 1)
    ov = overlap_matrix(c2w, K_work, depth)
    sym = np.minimum(ov, ov.T)
    score = np.where(cos > np.cos(np.radians(cfg.max_axis_angle_deg)), sym, 0.0)
    np.fill_diagonal(score, 0.0)
    for i in range(n):
        order = np.argsort(-score[i])
        added = 0
        for j in order:
            if score[i, j] < cfg.min_overlap or added >= cfg.max_pairs_per_frame:
                break
            if abs(int(j) - i) <= cfg.temporal_window:
                continue
            chosen.add((min(i, int(j)), max(i, int(j))))
            added += 1
    pairs = sorted(chosen)
    return pairs, {"temporal": n_temporal, "overlap": len(pairs) - n_temporal}
