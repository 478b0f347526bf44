"""Per-pixel depth of one frame by a plane sweep over its neighbours, cameras fixed.

Collins' plane sweep ("A space-sweep approach to true multi-image matching", CVPR 1996)
with fronto-parallel planes of frame i, evenly spaced in inverse depth: for the plane
z = 1 / q of camera i, a pixel x of frame i maps to x_j ~ K (R + t n^T q) K^-1 x in
neighbour j (the plane-induced homography, Hartley & Zisserman, MVG 2nd ed., eq. 13.2,
with the relative pose X_j = R X_i + t and n = (0, 0, 1)). Each neighbour is warped
onto frame i for every plane (OpenCV ``warpPerspective``), compared by zero-mean
normalised cross-correlation (ZNCC) in a square window (box filters), and the costs
1 - ZNCC are averaged over the neighbours that see the pixel. The best plane, refined
by a parabola through its neighbouring costs, gives the depth.

The search is one-dimensional along the epipolar line, so a match needs texture along
that line only (walls' edges and grout lines count), and it is well posed near the
epipole as long as the planes move the pixel: the precision is taken from how far the
planes move it (pixels per unit inverse depth, the sweep's parallax).

Conventions: OpenCV camera axes, c2w camera-to-world, z-depth, pixel centres at
integer coordinates, K in pixels of the maps here (the dense stage's resolution).
"""

from __future__ import annotations

import cv2
import numpy as np


def plane_homography(K: np.ndarray, c2w_i: np.ndarray, c2w_j: np.ndarray, q: float) -> np.ndarray:
    """(3, 3) homography from frame i's pixels to frame j's for the plane z_i = 1 / q."""
    R = c2w_j[:3, :3].T @ c2w_i[:3, :3]
    t = c2w_j[:3, :3].T @ (c2w_i[:3, 3] - c2w_j[:3, 3])
    return K @ (R + np.outer(t, [0.0, 0.0, q])) @ np.linalg.inv(K)


def _apply(H: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = H @ np.stack([u, v, np.ones_like(u)])
    with np.errstate(divide="ignore", invalid="ignore"):
        return p[0] / p[2], p[1] / p[2]


def window_stats(image: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Box-filtered mean and variance (h, w) of a float32 image over ``window`` x ``window``."""
    mean = cv2.blur(image, (window, window))
    var = cv2.blur(image * image, (window, window)) - mean * mean
    return mean, np.maximum(var, 0.0)


def sweep_depth(
    gray_i: np.ndarray,
    grays: list[np.ndarray],
    K: np.ndarray,
    c2w_i: np.ndarray,
    c2ws: list[np.ndarray],
    depth_range: tuple[float, float],
    planes: int,
    window: int,
    min_texture: float,
    flow_sigma_px: float,
    max_rel_err: float,
    unique_margin: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """Depth and confidence of frame i from a plane sweep over its neighbours.

    Args:
        gray_i: (h, w) uint8 frame i.
        grays: M neighbour frames (h, w) uint8.
        K: (3, 3) intrinsics in pixels of these images.
        c2w_i, c2ws: camera-to-world (4, 4) of frame i and of the M neighbours.
        depth_range: (near, far) z-depths spanned by the planes (> 0).
        planes: number of planes, evenly spaced in inverse depth.
        window: ZNCC window side in pixels (odd).
        min_texture: pixels whose window standard deviation (grey levels) is lower
            get confidence 0 (no texture to match).
        flow_sigma_px: matching precision in pixels.
        max_rel_err: expected relative depth error at which the confidence reaches 0.
        unique_margin: cost margin (in 1 - ZNCC) by which the best plane must beat the
            best one more than two planes away for full confidence (repeated texture,
            e.g. tiles, matches at several depths).

    Returns:
        depth: (h, w) float32 z-depth (NaN where no neighbour sees the pixel).
        confidence: (h, w) float32 in [0, 1]: best ZNCC (clipped at 0) times the
            precision 1 - rel_err / max_rel_err, rel_err = flow_sigma_px / (parallax
            per unit inverse depth * q), times the uniqueness (second-best cost - best)
            / unique_margin clipped to [0, 1], times the fraction of neighbours whose
            own best plane lies within two planes of it; 0 without texture or at the
            end planes.
    """
    h, w = gray_i.shape
    near, far = depth_range
    qs = np.linspace(1.0 / near, 1.0 / far, planes)
    Ii = gray_i.astype(np.float32)
    mu_i, var_i = window_stats(Ii, window)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = u.ravel(), v.ravel()
    cost = np.zeros((planes, h, w), np.float32)
    seen = np.zeros((planes, h, w), np.float32)
    rate = np.zeros(h * w)  # pixels moved per unit inverse depth, best neighbour
    own_best = []  # each neighbour's own best plane, for the agreement
    for gray_j, c2w_j in zip(grays, c2ws):
        Ij2 = cv2.merge([gray_j.astype(np.float32), np.ones((h, w), np.float32)])
        u0, v0 = _apply(plane_homography(K, c2w_i, c2w_j, qs[0]), u, v)
        u1, v1 = _apply(plane_homography(K, c2w_i, c2w_j, qs[-1]), u, v)
        moved = np.nan_to_num(np.hypot(u1 - u0, v1 - v0)) / max(abs(qs[0] - qs[-1]), 1e-12)
        rate = np.maximum(rate, moved)
        own_min = np.full((h, w), np.inf, np.float32)
        own_arg = np.full((h, w), -10, np.int32)
        for k, q in enumerate(qs):
            H = plane_homography(K, c2w_i, c2w_j, q)
            # the frame and a mask of ones in one warp: seen where the neighbour covers the pixel
            # (a NaN border would spread along rows through the box filters' running sums)
            warped, mask = cv2.split(cv2.warpPerspective(Ij2, H, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP))
            seen_k = mask > 0.999
            mu_w, var_w = window_stats(warped, window)
            c = cv2.blur(Ii * warped, (window, window))
            c -= mu_i * mu_w
            c /= np.sqrt(np.maximum(var_i * var_w, 1e-6))
            np.subtract(1.0, c, out=c)  # 1 - ZNCC
            unseen = ~seen_k
            c[unseen] = np.inf
            np.copyto(own_arg, k, where=c < own_min)
            np.minimum(own_min, c, out=own_min)
            c[unseen] = 0.0
            cost[k] += c
            seen[k] += seen_k
        own_best.append(own_arg)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_cost = np.where(seen > 0, cost / np.maximum(seen, 1), np.inf)
    best = np.argmin(mean_cost, axis=0)
    rows, cols = np.mgrid[0:h, 0:w]
    c0 = mean_cost[best, rows, cols]
    cm = mean_cost[np.clip(best - 1, 0, planes - 1), rows, cols]
    cp = mean_cost[np.clip(best + 1, 0, planes - 1), rows, cols]
    interior = (best > 0) & (best < planes - 1) & np.isfinite(cm) & np.isfinite(cp)
    with np.errstate(invalid="ignore", divide="ignore"):
        curv = cm - 2 * c0 + cp
        offset = np.where(interior & (curv > 0), 0.5 * (cm - cp) / curv, 0.0)
    step = qs[1] - qs[0] if planes > 1 else 0.0
    q = qs[best] + np.clip(offset, -0.5, 0.5) * step
    depth = np.where(np.isfinite(c0) & (q > 0), 1.0 / np.where(q > 0, q, 1.0), np.nan)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        rel_err = flow_sigma_px / (rate.reshape(h, w) * q)
        precision = np.clip(1.0 - np.nan_to_num(rel_err, nan=np.inf) / max_rel_err, 0.0, 1.0)
        score = np.clip(1.0 - np.nan_to_num(c0, posinf=1.0), 0.0, 1.0)
        band = np.abs(np.arange(planes)[:, None, None] - best[None]) <= 2
        second = np.min(np.where(band, np.inf, mean_cost), axis=0)  # the best match elsewhere on the line
        unique = np.clip(np.nan_to_num(second - c0, nan=0.0, posinf=unique_margin) / unique_margin, 0.0, 1.0)
    agree = np.mean([np.abs(b - best) <= 2 for b in own_best], axis=0)  # neighbours whose own match agrees
    conf = np.where(interior & (np.sqrt(var_i) >= min_texture), score * precision * unique * agree, 0.0)
    return depth.astype(np.float32), conf.astype(np.float32)
