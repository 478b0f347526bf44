"""Coloured point cloud from the depth maps, and its PLY file (written with plyfile).

Conventions (see :mod:`flowmap.types`): OpenCV camera axes, ``c2w`` camera-to-world,
z-depth, pixel coordinates with the centre of pixel column ``i`` at ``u = i``.

The pinhole model (:mod:`flowmap.camera`) is used in pixels of the depth maps (working
resolution, K from ``Reconstruction.K_at(h, w)``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from flowmap.camera import project_points, unproject_pixels
from flowmap.types import Reconstruction


def depth_agreement(
    xyz: np.ndarray, K: np.ndarray, c2w: np.ndarray, depth: np.ndarray, rel_tol: float
) -> tuple[np.ndarray, np.ndarray]:
    """Which world points lie on the surface a camera's depth map sees (occlusion check).

    A point is *inside* when it projects in front of the camera within the image, and
    *agrees* when, in addition, its z-depth ``z`` matches the depth map at the nearest
    pixel and at each of the (up to) four pixels around its sub-pixel position,
    ``|z - D| <= rel_tol * D``. A point far behind the depth map is occluded in that
    frame; a point far in front of it contradicts it; a point next to a depth edge
    (one of the four pixels belongs to another surface) is ambiguous and does not
    agree either, so that any interpolation of the depth map at its position stays
    within ``rel_tol`` of ``z``.

    Args:
        xyz: (P, 3) world points.
        K: (3, 3) intrinsics in pixels of ``depth``.
        c2w: (4, 4) camera-to-world, OpenCV axes.
        depth: (h, w) z-depth map of that camera (non-finite or <= 0: no depth).
        rel_tol: relative depth tolerance.

    Returns:
        inside: (P,) bool.
        agrees: (P,) bool (implies ``inside``).
    """
    h, w = depth.shape
    uv, z = project_points(xyz, K, c2w)
    with np.errstate(invalid="ignore"):
        inside = (z > 0) & (uv[:, 0] > -0.5) & (uv[:, 0] < w - 0.5) & (uv[:, 1] > -0.5) & (uv[:, 1] < h - 0.5)
    idx = np.flatnonzero(inside)
    u, v, zi = uv[idx, 0], uv[idx, 1], z[idx]
    ok = np.ones(len(idx), dtype=bool)
    cols = (np.rint(u), np.floor(u), np.floor(u) + 1)
    rows = (np.rint(v), np.floor(v), np.floor(v) + 1)
    for col, row in [(cols[0], rows[0])] + [(c, r) for c in cols[1:] for r in rows[1:]]:
        d = depth[row.astype(np.int64).clip(0, h - 1), col.astype(np.int64).clip(0, w - 1)]
        with np.errstate(invalid="ignore"):
            ok &= np.isfinite(d) & (d > 0) & (np.abs(zi - d) <= rel_tol * d)
    agrees = np.zeros_like(inside)
    agrees[idx[ok]] = True
    return inside, agrees


def pixel_confidence(rec: Reconstruction, i: int, min_weight: float) -> np.ndarray:
    """Pixels of frame ``i`` whose correspondence weight is high enough, (h, w) bool.

    ``rec.weights[i - 1]`` lies on the pixels of frame ``i`` (pair ``(i-1, i)``).
    Procrustes is invariant to a global scale of the weights, so only relative values
    carry meaning: a pixel passes when its weight is at least ``min_weight`` times the
    99th percentile of that pair's weights. Frame 0 has no weights of its own and
    passes everywhere (the depth-consistency check still applies).
    """
    if i == 0 or rec.weights is None or len(rec.weights) < i or min_weight <= 0:
        return np.ones(rec.working_size, dtype=bool)
    w = np.nan_to_num(np.asarray(rec.weights[i - 1], np.float64), nan=0.0)
    ref = float(np.quantile(w, 0.99))
    if ref <= 0:
        return np.zeros(w.shape, dtype=bool)
    return w >= min_weight * ref


def consistent_pixels(rec: Reconstruction, min_weight: float = 0.5, rel_tol: float = 0.05) -> np.ndarray:
    """Pixels whose depth is trustworthy, (N, h, w) bool.

    A pixel of frame ``i`` is kept when its depth is finite and positive, its
    correspondence weight passes :func:`pixel_confidence`, and its 3D point agrees
    (:func:`depth_agreement`, ``rel_tol``) with the depth map of frame ``i-1`` or
    ``i+1``. With a single frame only the first two tests apply.
    """
    n = rec.n
    h, w = rec.working_size
    K = rec.K_at(h, w)
    vv, uu = np.mgrid[0:h, 0:w]
    uu, vv = uu.ravel(), vv.ravel()
    keep = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        d = np.asarray(rec.depth[i], np.float64).ravel()
        ok = np.isfinite(d) & (d > 0) & pixel_confidence(rec, i, min_weight).ravel()
        if n > 1:
            xyz = unproject_pixels(uu[ok], vv[ok], d[ok], K, rec.c2w[i])
            agree = np.zeros(len(xyz), dtype=bool)
            for j in (i - 1, i + 1):
                if 0 <= j < n:
                    agree |= depth_agreement(xyz, K, rec.c2w[j], np.asarray(rec.depth[j]), rel_tol)[1]
            ok[np.flatnonzero(ok)[~agree]] = False
        keep[i] = ok.reshape(h, w)
    return keep


def depth_point_cloud(
    rec: Reconstruction,
    max_points: int,
    min_weight: float = 0.5,
    rel_tol: float = 0.05,
    seed: int = 0,
    keep: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Coloured world points unprojected from the depth maps of all frames.

    Pixels are filtered by :func:`consistent_pixels` (correspondence weight relative
    to the pair, and depth agreement with a neighbouring frame), then at most
    ``max_points`` are drawn uniformly at random over all kept pixels of all frames
    (deterministic for a given ``seed``).

    Args:
        rec: the reconstruction; depth (N, h, w) and images (N, h, w, 3) at the
            working resolution, K in pixels of the input frames (rescaled here with
            ``rec.K_at(h, w)``), c2w OpenCV axes.
        max_points: the most points returned.
        min_weight: relative weight threshold, see :func:`pixel_confidence`.
        rel_tol: relative depth tolerance of the neighbour check.
        seed: seed of the random subsampling.
        keep: (N, h, w) bool, :func:`consistent_pixels` of ``rec`` with these
            ``min_weight`` and ``rel_tol`` when the caller has it already (the point
            cloud and the COLMAP model share it); None: computed here.

    Returns:
        xyz: (P, 3) float64 world coordinates, P <= max_points.
        rgb: (P, 3) uint8 colours from ``rec.images``.
    """
    if max_points < 0:
        raise ValueError(f"max_points must be >= 0, got {max_points}")
    if keep is None:
        keep = consistent_pixels(rec, min_weight, rel_tol)
    flat = np.flatnonzero(keep)
    if len(flat) > max_points:
        flat = np.sort(np.random.default_rng(seed).choice(flat, size=max_points, replace=False))
    frame, row, col = np.unravel_index(flat, keep.shape)
    h, w = rec.working_size
    K = rec.K_at(h, w)
    xyz = np.empty((len(flat), 3))
    for i in np.unique(frame):
        sel = frame == i
        xyz[sel] = unproject_pixels(col[sel], row[sel], rec.depth[i][row[sel], col[sel]], K, rec.c2w[i])
    rgb = np.asarray(rec.images)[frame, row, col].astype(np.uint8)
    return xyz, rgb


def write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Write a binary little-endian PLY point cloud with plyfile.

    Vertex properties ``x y z`` (float32, world units) and ``red green blue`` (uint8),
    the layout Open3D, trimesh, MeshLab and nerfstudio's ``ply_file_path`` read.

    Args:
        path: the ``.ply`` file to write.
        xyz: (P, 3) world points.
        rgb: (P, 3) colours, uint8 (or integers in 0..255).

    Raises:
        ValueError: shapes disagree.
    """
    xyz = np.asarray(xyz)
    rgb = np.asarray(rgb)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or rgb.shape != xyz.shape:
        raise ValueError(f"xyz and rgb must both be (P, 3), got {xyz.shape} and {rgb.shape}")
    vertex = np.empty(
        len(xyz), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    )
    for k, name in enumerate("xyz"):
        vertex[name] = xyz[:, k]
    for k, name in enumerate(("red", "green", "blue")):
        vertex[name] = rgb[:, k]
    PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<").write(str(path))
