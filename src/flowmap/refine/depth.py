"""Dense depth made consistent with the refined cameras: one robust scale per frame.

Each adjusted 3D point observed in frame i is transformed into camera i (refined pose),
projected into FlowMap's depth map at the working resolution, and its z compared with
the depth there. The per-frame factor is the median of z_point / z_map (robust to the
outliers a depth map has at edges). Agreement is the median over all such observations
of |z_map * scale - z_point| / z_point.
"""

from __future__ import annotations

import numpy as np

from flowmap.camera import project_points


def sample_depth(depth: np.ndarray, c2w: np.ndarray, K_work: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(z_point, z_map) for world points seen by one camera; pairs outside the map dropped.

    Args:
        depth: (h, w) z-depth map.
        c2w: (4, 4) camera-to-world.
        K_work: (3, 3) intrinsics of the depth map.
        points: (P, 3) world points.
    """
    h, w = depth.shape
    uv, z = project_points(points, K_work, c2w)
    ok = z > 1e-12
    uv = np.where(ok[:, None], uv, -1.0)
    ui, vi = np.rint(uv[:, 0]).astype(np.int64), np.rint(uv[:, 1]).astype(np.int64)
    ok &= (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
    zm = depth[np.clip(vi, 0, h - 1), np.clip(ui, 0, w - 1)].astype(np.float64)
    ok &= np.isfinite(zm) & (zm > 0)
    return z[ok], zm[ok]


def fit_scales(
    depth: np.ndarray, c2w: np.ndarray, K_work: np.ndarray, points_per_frame: list[np.ndarray], min_points: int = 10
) -> tuple[np.ndarray, float, float]:
    """Per-frame depth scales and the agreement before / after scaling.

    Args:
        depth: (N, h, w) depth maps.
        c2w: (N, 4, 4) cameras the points are expressed with.
        K_work: (3, 3) intrinsics at the depth maps' resolution.
        points_per_frame: N arrays (P_i, 3) of the world points each frame observes.
        min_points: frames with fewer samples keep scale 1.

    Returns:
        (scales (N,), median relative difference unscaled, median relative difference scaled).
    """
    n = len(depth)
    scales = np.ones(n)
    rel_before, rel_after = [], []
    for i in range(n):
        if len(points_per_frame[i]) == 0:
            continue
        zp, zm = sample_depth(depth[i], c2w[i], K_work, points_per_frame[i])
        if len(zp) < min_points:
            continue
        scales[i] = float(np.median(zp / zm))
        rel_before.append(np.abs(zm - zp) / zp)
        rel_after.append(np.abs(zm * scales[i] - zp) / zp)
    if not rel_before:
        return scales, float("nan"), float("nan")
    return scales, float(np.median(np.concatenate(rel_before))), float(np.median(np.concatenate(rel_after)))


def points_per_frame(rec, ids: list[int], transform=None) -> list[np.ndarray]:
    """World points observed by each frame of ``rec`` (index = frame), optionally transformed.

    Args:
        rec: pycolmap.Reconstruction.
        ids: image id of each frame.
        transform: optional callable (P, 3) -> (P, 3) applied to the points.
    """
    pos = {img_id: k for k, img_id in enumerate(ids)}
    lists: list[list[np.ndarray]] = [[] for _ in ids]
    for p in rec.points3D.values():
        for el in p.track.elements:
            if el.image_id in pos:
                lists[pos[el.image_id]].append(p.xyz)
    out = []
    for L in lists:
        arr = np.array(L, dtype=np.float64).reshape(-1, 3)
        out.append(transform(arr) if transform is not None and len(arr) else arr)
    return out


def _project(depth_hw, c2w, K_work, points):
    h, w = depth_hw
    uv, z = project_points(points, K_work, c2w)
    ok = z > 1e-12
    u, v = np.where(ok, uv[:, 0], -1.0), np.where(ok, uv[:, 1], -1.0)
    ok &= (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
    return u[ok], v[ok], z[ok]


def _bilinear_design(u, v, h, w, grid):
    """(P, gh*gw) bilinear interpolation weights of pixel positions on a gh x gw node grid."""
    gh, gw = grid
    x = u / max(w - 1, 1) * (gw - 1)
    y = v / max(h - 1, 1) * (gh - 1)
    x0 = np.clip(np.floor(x).astype(int), 0, gw - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, gh - 2)
    fx, fy = x - x0, y - y0
    A = np.zeros((len(u), gh * gw))
    rows = np.arange(len(u))
    for dy, dx, wgt in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        A[rows, (y0 + dy) * gw + x0 + dx] += wgt
    return A


def _field(h, w, grid, g):
    """(h, w) dense field interpolated bilinearly from gh x gw node values g."""
    v, u = np.mgrid[0:h, 0:w]
    return (_bilinear_design(u.ravel().astype(float), v.ravel().astype(float), h, w, grid) @ g).reshape(h, w)


def fit_correction(depth: np.ndarray, c2w: np.ndarray, K_work: np.ndarray, pts: list[np.ndarray], grid=(4, 4), smooth: float = 1.0, min_points: int = 30):
    """Per-frame smooth multiplicative depth correction fitted to the adjusted points.

    For frame i, log(z_point / z_map) at the points it observes is fitted by a field
    bilinear on a ``grid`` of nodes (robust: Huber-weighted least squares, 5 IRLS
    iterations, scale 0.02), regularised towards the frame's median log ratio with
    weight ``smooth`` per node and by first differences between neighbouring nodes. The
    corrected depth is depth * exp(field). Frames with fewer than ``min_points`` keep the
    constant median factor.

    Returns:
        (corrected depth (N, h, w) float32, median relative difference of the corrected
        depth on held-out points (fit on even, test on odd samples), in-sample median).
    """
    n, h, w = depth.shape
    gh, gw = grid
    out = np.array(depth, dtype=np.float32, copy=True)
    held, ins = [], []
    # first-difference operator between neighbouring nodes
    D = []
    for r in range(gh):
        for c in range(gw):
            for dr, dc in ((0, 1), (1, 0)):
                if r + dr < gh and c + dc < gw:
                    row = np.zeros(gh * gw)
                    row[r * gw + c], row[(r + dr) * gw + c + dc] = -1, 1
                    D.append(row)
    D = np.array(D)

    def solve(A, y, prior):
        wts = np.ones(len(y))
        g = np.full(gh * gw, prior)
        for _ in range(5):
            Aw = A * wts[:, None]
            lhs = A.T @ Aw + smooth * np.eye(gh * gw) + 10.0 * smooth * D.T @ D
            rhs = Aw.T @ y + smooth * prior
            g = np.linalg.solve(lhs, rhs)
            r = np.abs(A @ g - y)
            wts = np.where(r < 0.02, 1.0, 0.02 / np.maximum(r, 1e-12))
        return g

    for i in range(n):
        if len(pts[i]) == 0:
            continue
        u, v, zp = _project((h, w), c2w[i], K_work, pts[i])
        zm = depth[i][np.rint(v).astype(int), np.rint(u).astype(int)].astype(np.float64)
        ok = np.isfinite(zm) & (zm > 0)
        u, v, zp, zm = u[ok], v[ok], zp[ok], zm[ok]
        if len(zp) < min_points:
            continue
        y = np.log(zp / zm)
        prior = float(np.median(y))
        A = _bilinear_design(u, v, h, w, grid)
        tr, te = np.arange(len(y)) % 2 == 0, np.arange(len(y)) % 2 == 1
        g_half = solve(A[tr], y[tr], float(np.median(y[tr])))
        held.append(np.abs(np.exp(A[te] @ g_half - y[te]) - 1.0))
        g = solve(A, y, prior)
        ins.append(np.abs(np.exp(A @ g - y) - 1.0))
        out[i] = (depth[i] * np.exp(_field(h, w, grid, g))).astype(np.float32)
    if not held:
        return out, float("nan"), float("nan")
    return out, float(np.median(np.concatenate(held))), float(np.median(np.concatenate(ins)))
