"""The per-frame depth correction of the refinement (flowmap.refine.depth): a depth map
distorted by a smooth multiplicative field is brought back to the surface the points lie
on, and frames with few points get their median factor."""

from __future__ import annotations

import numpy as np

from flowmap.camera import unproject_pixels
from flowmap.refine.depth import fit_correction, fit_scales, grid_for


def _scene(n: int = 3, h: int = 60, w: int = 80, points: int = 400, seed: int = 0):
    """True depth (slanted planes), c2w (small translations), K at (h, w), world points on the
    truth at pixel centres (the depth maps are sampled at the nearest pixel)."""
    rng = np.random.default_rng(seed)
    K = np.array([[70.0, 0, (w - 1) / 2], [0, 70.0, (h - 1) / 2], [0, 0, 1]])
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    depth = np.stack([2.0 + 0.01 * (i + 1) * u + 0.005 * v for i in range(n)]).astype(np.float32)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, 0, 3] = 0.1 * np.arange(n)
    pts = []
    for i in range(n):
        uu, vv = rng.integers(0, w, points).astype(float), rng.integers(0, h, points).astype(float)
        z = 2.0 + 0.01 * (i + 1) * uu + 0.005 * vv
        pts.append(unproject_pixels(uu, vv, z, K, c2w[i]))
    return depth, c2w, K, pts


def _median_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.median(np.abs(a - b) / b))


def test_field_undoes_a_smooth_distortion():
    """depth_true * exp(0.15 sin(.)) -> fit_correction -> within 0.5 % of the truth, and
    clearly better than one scale per frame."""
    depth, c2w, K, pts = _scene()
    n, h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w]
    distorted = depth * np.exp(0.15 * np.sin(u / w * 3.0) * np.cos(v / h * 2.0) + 0.3).astype(np.float32)
    corrected, held, ins = fit_correction(distorted, c2w, K, pts, node_px=10.0, smooth=0.01)
    scales = fit_scales(distorted, c2w, K, pts)[0]
    assert _median_rel(corrected, depth) < 0.005
    assert _median_rel(distorted * scales[:, None, None], depth) > 4 * _median_rel(corrected, depth)
    assert held < 0.01 and ins < 0.01
    assert corrected.dtype == np.float32 and corrected.shape == depth.shape


def test_a_frame_with_few_points_follows_its_fitted_neighbour():
    """A frame with a handful of (wrong) points among fitted frames takes the factor of its
    nearest fitted neighbour, not its own points' (tartanair-hospital, frame 125: 6,000x),
    and a frame without points is rescaled like its neighbours, not left at 1."""
    depth, c2w, K, pts = _scene(n=4)
    pts[1] = pts[1][:5] * 1000.0  # an unconstrained frame's few points, far off
    pts[3] = pts[3][:0]
    corrected, held, ins = fit_correction(depth * 2.0, c2w, K, pts, min_points=30)
    np.testing.assert_allclose(corrected, depth, rtol=0.02)


def test_few_points_give_the_median_factor():
    """No frame has min_points observations: all frames get the median ratio of all points."""
    depth, c2w, K, pts = _scene(points=5)
    corrected, held, ins = fit_correction(depth * 2.0, c2w, K, pts, min_points=30)
    np.testing.assert_allclose(corrected, depth, rtol=1e-5)
    assert np.isnan(held) and np.isnan(ins)


def test_grid_for_spacing():
    assert grid_for((176, 240), 16.0) == (12, 16)
    assert grid_for((10, 10), 100.0) == (2, 2)


def test_normal_equations_equal_the_dense_weighted_products():
    """The bincount accumulation of the bilinear fit's normal equations is A^T W A and
    A^T W y of the dense (P, nodes) design; interpolation is A g."""
    from flowmap.refine.depth import _bilinear_design, _interpolate, _normal_equations

    rng = np.random.default_rng(3)
    h, w, grid = 45, 60, (4, 5)
    u, v = rng.uniform(0, w - 1, 200), rng.uniform(0, h - 1, 200)
    cols, vals = _bilinear_design(u, v, h, w, grid)
    nodes = grid[0] * grid[1]
    A = np.zeros((len(u), nodes))
    np.add.at(A, (np.repeat(np.arange(len(u)), 4), cols.ravel()), vals.ravel())
    assert np.allclose(A.sum(axis=1), 1.0)  # bilinear weights of each sample sum to one
    wts, y, g = rng.uniform(0.1, 1.0, len(u)), rng.normal(size=len(u)), rng.normal(size=nodes)
    AtA, Aty = _normal_equations((cols, vals), wts, y, nodes)
    assert np.allclose(AtA, A.T @ (wts[:, None] * A))
    assert np.allclose(Aty, A.T @ (wts * y))
    assert np.allclose(_interpolate((cols, vals), g), A @ g)
