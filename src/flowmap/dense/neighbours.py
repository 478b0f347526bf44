"""Neighbours per frame for dense triangulation, chosen by baseline.

A neighbour j of frame i is useful when its baseline subtends a large enough angle at
the scene frame i sees (the triangulation angle, which sets the depth precision) while
it still sees most of that scene (overlap). Both are judged with the frame's depth
(the network's, corrected to the adjusted points) on a coarse grid of pixels: the
parallax of a point X seen by camera i from camera j is the angle between the rays
c_i -> X and c_j -> X (Hartley & Zisserman, Multiple View Geometry, 2nd ed., sec. 12.6,
"the angle between the rays"), its median over the grid is the pair's parallax.
"""

from __future__ import annotations

import numpy as np

from flowmap.camera import project_points, unproject_pixels


def grid_points(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, step: int = 16) -> np.ndarray:
    """World points (P, 3) of every ``step``-th pixel of a z-depth map (h, w) with
    intrinsics K (3, 3, pixels of the map) and camera-to-world c2w (4, 4, OpenCV axes);
    pixels without a positive finite depth are skipped."""
    h, w = depth.shape
    v, u = np.mgrid[step // 2 : h : step, step // 2 : w : step]
    d = depth[v, u]
    ok = np.isfinite(d) & (d > 0)
    return unproject_pixels(u[ok], v[ok], d[ok], K, c2w)


def pair_geometry(points: np.ndarray, c2w_i: np.ndarray, c2w_j: np.ndarray, K: np.ndarray, size: tuple[int, int]) -> tuple[float, float]:
    """(median parallax in degrees, overlap fraction) of camera j on frame i's points.

    Args:
        points: (P, 3) world points frame i sees.
        c2w_i, c2w_j: (4, 4) camera-to-world, OpenCV axes.
        K: (3, 3) intrinsics in pixels of an image of ``size`` (h, w).
    """
    if len(points) == 0:
        return 0.0, 0.0
    h, w = size
    uv, z = project_points(points, K, c2w_j)
    with np.errstate(invalid="ignore"):
        inside = (z > 0) & (uv[:, 0] >= -0.5) & (uv[:, 0] <= w - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] <= h - 0.5)
    a = points - c2w_i[:3, 3]
    b = points - c2w_j[:3, 3]
    cos = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return float(np.median(angle)), float(np.mean(inside))


def choose_neighbours(
    depth: np.ndarray,
    c2w: np.ndarray,
    K: np.ndarray,
    count: int,
    window: int,
    target_deg: float,
    min_deg: float,
    min_overlap: float,
    usable: np.ndarray | None = None,
) -> list[list[int]]:
    """Up to ``count`` neighbours of every frame, by parallax closest to ``target_deg``.

    Candidates are the frames within +-``window`` of frame i with parallax of at least
    ``min_deg`` and overlap of at least ``min_overlap`` (:func:`pair_geometry`); they
    are ranked by |log(parallax / target_deg)|. Cost: O(N window).

    Args:
        depth: (N, h, w) z-depth used to judge parallax and overlap (any resolution).
        c2w: (N, 4, 4) camera-to-world, OpenCV axes.
        K: (3, 3) intrinsics in pixels of ``depth``.
        usable: (N,) bool, frames that may be triangulated or be neighbours (posed);
            None: all.

    Returns:
        N lists of frame indices (empty for an unusable frame or one with no candidate).
    """
    n = len(c2w)
    usable = np.ones(n, bool) if usable is None else np.asarray(usable, bool)
    size = depth.shape[1:]
    out: list[list[int]] = []
    for i in range(n):
        if not usable[i]:
            out.append([])
            continue
        pts = grid_points(np.asarray(depth[i], np.float64), K, c2w[i])
        scored = []
        for j in range(max(0, i - window), min(n, i + window + 1)):
            if j == i or not usable[j]:
                continue
            angle, overlap = pair_geometry(pts, c2w[i], c2w[j], K, size)
            if angle >= min_deg and overlap >= min_overlap:
                scored.append((abs(np.log(max(angle, 1e-9) / target_deg)), j))
        out.append([j for _, j in sorted(scored)[:count]])
    return out
