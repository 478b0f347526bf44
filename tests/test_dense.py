"""The dense depth stage (flowmap.dense): triangulation of flow with fixed cameras, the
fused depth and its confidence on the synthetic scene, pure rotation, the fill chosen
by held-out points, and the fused point cloud on a plane (each surface once)."""

from __future__ import annotations

import numpy as np
import pytest

from flowmap.camera import project_points, unproject_pixels
from flowmap.dense import DenseConfig, dense_depth, output_shape
from flowmap.dense.fill import choose_fill
from flowmap.dense.fuse import fuse_estimates, fused_points
from flowmap.dense.neighbours import choose_neighbours
from flowmap.dense.triangulate import triangulate_flow
from flowmap.synthetic import SCENE_CENTRE, intrinsics, look_at, make_geometry, make_scene, render


def _induced_flow(depth, K, c2w_i, c2w_j):
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w]
    X = unproject_pixels(u.ravel(), v.ravel(), depth.ravel(), K, c2w_i)
    uv, _ = project_points(X, K, c2w_j)
    return (uv - np.stack([u.ravel(), v.ravel()], 1)).reshape(h, w, 2).astype(np.float32)


def _open3d_available() -> bool:
    try:
        import open3d  # noqa: F401
    except ImportError:  # not installed, or (Debian) the system's libusb-1.0 missing
        return False
    return True


def _needs_open3d():
    """Open3D for the surface fill's tests (in the test extra; CI checks that it imports)."""
    pytest.importorskip("open3d", reason="the surface fill needs Open3D (pip install -e '.[test]'; on Debian apt-get install libusb-1.0-0)")


def _sparse_points(depth, K, c2w, count=300, seed=0):
    """World points at random pixels of each true depth map (a stand-in for the adjusted points)."""
    rng = np.random.default_rng(seed)
    pts = []
    for d, pose in zip(depth, c2w):
        v, u = rng.integers(0, d.shape[0], count), rng.integers(0, d.shape[1], count)
        pts.append(unproject_pixels(u, v, d[v, u], K, pose))
    return pts


@pytest.fixture(scope="module")
def orbit():
    return make_scene(n_frames=10, height=120, width=160, path="orbit")


def test_triangulating_the_induced_flow_gives_the_true_depth(orbit):
    """Exact flow from the true depth and cameras -> depth back to float precision,
    targets on their epipolar lines, parallax > 0 for a translated camera."""
    i, j = 3, 6
    flow = _induced_flow(orbit.depth[i], orbit.K, orbit.c2w[i], orbit.c2w[j])
    z, par, epi, direction = triangulate_flow(flow, orbit.K, orbit.c2w[i], orbit.c2w[j])
    rel = np.abs(z - orbit.depth[i]) / orbit.depth[i]
    assert np.nanmax(rel) < 1e-3 and np.isfinite(z).mean() > 0.99
    assert np.median(epi) < 1e-2
    assert np.median(par) > 1.0
    assert np.allclose(np.linalg.norm(direction, axis=-1), 1.0, atol=1e-4)


def test_pure_rotation_has_no_parallax(orbit):
    """Same centre, rotated camera: the induced flow is the infinite homography's, so
    the parallax is ~0 and the fused confidence is 0 everywhere."""
    c2w_j = orbit.c2w[3].copy()
    angle = np.radians(3.0)
    R = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    c2w_j[:3, :3] = orbit.c2w[3][:3, :3] @ R
    flow = _induced_flow(orbit.depth[3], orbit.K, orbit.c2w[3], c2w_j)
    z, par, _, _ = triangulate_flow(flow, orbit.K, orbit.c2w[3], c2w_j)
    assert np.max(par) < 1e-3
    rel = 0.5 / np.maximum(par, 1e-6)  # 0.5 px of flow noise over the parallax
    _, conf = fuse_estimates(z[None], rel[None], np.ones((1, *z.shape), bool), 0.05, 0.1)
    assert conf.max() == 0.0


@pytest.fixture(scope="module")
def rendered():
    return make_scene(n_frames=16, height=192, width=256, path="orbit")


@pytest.mark.parametrize("method", ["sweep", "flow"])
def test_dense_depth_on_the_synthetic_scene_matches_the_truth(rendered, method):
    """Rendered frames, true cameras, plane sweep or DIS flow: confident pixels within
    3 % (median) of the true depth, at half resolution, and the whole map (fill
    included) within 8 %."""
    scene = rendered
    h, w = output_shape((192, 256), 0.5)
    flat = np.full((16, 48, 64), float(np.median(scene.depth)), np.float32)  # an uninformative network depth
    pts = _sparse_points(scene.depth, scene.K, scene.c2w)
    out = dense_depth(scene.images, scene.c2w, scene.K, flat, pts, DenseConfig(window=8, method=method))
    assert out.depth.shape == (16, h, w) and out.confidence.shape == (16, h, w)
    truth = make_scene(n_frames=16, height=h, width=w, path="orbit").depth  # the same cameras at half resolution
    rel = np.abs(out.depth - truth) / truth
    confident = out.confidence >= DenseConfig().min_confidence
    assert confident.mean() > 0.1
    assert np.median(rel[confident]) < 0.03
    assert np.median(rel) < 0.08
    assert np.all(out.depth > 0)
    assert out.stats["surface"]["applied"] is _open3d_available()  # else: skipped, with the reason


def test_stereo_from_wrong_cameras_is_rejected(rendered):
    """Cameras whose translations are scrambled make stereo contradict the adjusted
    points: every frame keeps the fill (never worse than the fill)."""
    scene = rendered
    pts = _sparse_points(scene.depth, scene.K, scene.c2w)
    c2w = scene.c2w.copy()
    c2w[:, :3, 3] = c2w[::-1, :3, 3]  # reversed path: rotations and positions no longer belong together
    flat = np.full((16, 48, 64), float(np.median(scene.depth)), np.float32)
    out = dense_depth(scene.images, c2w, scene.K, flat, pts, DenseConfig(window=8))
    assert out.stats["confident_fraction"] < 0.01
    assert out.stats["frames_rejected"] + np.sum(out.confidence.reshape(16, -1).max(axis=1) == 0) >= 8


def test_pure_rotation_video_keeps_the_fill():
    """A camera turning on the spot: no neighbour gives parallax, confidence is 0, and
    the depth is the fill (here the smooth field through the true points)."""
    geometry = make_geometry(0)
    K = intrinsics(96, 128)
    base = look_at(np.array([0.0, 1.4, 4.5]), SCENE_CENTRE)
    c2w = []
    for a in np.radians(np.linspace(-4, 4, 6)):
        R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        pose = base.copy()
        pose[:3, :3] = base[:3, :3] @ R
        c2w.append(pose)
    c2w = np.stack(c2w)
    rendered = [render(geometry, p, K, 96, 128) for p in c2w]
    images, depth = np.stack([r[0] for r in rendered]), np.stack([r[1] for r in rendered])
    out = dense_depth(images, c2w, K, depth[:, ::2, ::2].copy(), _sparse_points(depth, K, c2w), DenseConfig(min_angle_deg=0.0))
    assert out.confidence.max() < 0.05
    assert out.stats["confident_fraction"] == 0.0
    assert out.stats["surface"]["applied"] is False  # no surface through no confident pixel


def test_fill_chooses_the_base_that_predicts_held_out_points():
    """A network depth inverted against the truth loses to the smooth field through the
    points; a correct, detailed one (a step edge) wins."""
    h, w = 60, 80
    K = np.array([[70.0, 0, (w - 1) / 2], [0, 70.0, (h - 1) / 2], [0, 0, 1]])
    c2w = np.tile(np.eye(4), (2, 1, 1))
    v, u = np.mgrid[0:h, 0:w]
    truth = np.where((u // 4) % 2 == 0, 2.0, 3.0).astype(np.float32)  # stripes: detail no smooth field has
    truth = np.stack([truth, truth])
    pts = _sparse_points(truth, K, c2w, count=600)
    _, chosen, _, _ = choose_fill(truth.copy(), c2w, K, pts, "auto")
    assert chosen == ["network", "network"]
    _, chosen, _, _ = choose_fill(5.0 - truth, c2w, K, pts, "auto")
    assert chosen == ["smooth", "smooth"]


def test_fused_cloud_writes_a_plane_once():
    """Three cameras translated along a fronto-parallel plane (depth with 0.5 % noise):
    every fused point lies on the plane, and the overlaps are not denser than the parts
    one camera sees (without the duplicate test they would be 2-3x as dense)."""
    h, w, Z = 40, 60, 4.0
    K = np.array([[50.0, 0, (w - 1) / 2], [0, 50.0, (h - 1) / 2], [0, 0, 1]])
    c2w = np.tile(np.eye(4), (3, 1, 1))
    c2w[:, 0, 3] = [0.0, 1.0, 2.0]  # each camera sees 4.8 units of the plane: overlapping
    rng = np.random.default_rng(0)
    depth = (Z * (1 + 0.005 * rng.standard_normal((3, h, w)))).astype(np.float32)
    conf = np.ones((3, h, w), np.float32)
    images = np.zeros((3, h, w, 3), np.uint8)
    xyz, rgb = fused_points(depth, conf, images, K, c2w, 0.5, 0.03, window=5)
    assert rgb.shape == xyz.shape
    assert np.max(np.abs(xyz[:, 2] - Z)) < 0.05 * Z
    x = xyz[:, 0]
    half = Z * (w / 2) / 50.0
    only_first = np.sum((x > -half) & (x < -half + 0.8))  # seen by camera 0 only
    overlap_all = np.sum((x > 2 - half) & (x < 2 - half + 0.8))  # seen by all three
    assert overlap_all < 1.2 * only_first
    doubled, _ = fused_points(depth, conf, images, K, c2w, 0.5, 0.0, window=5)  # tolerance 0: no duplicate test
    assert len(doubled) > 2 * len(xyz) * 0.9


def test_neighbours_are_chosen_by_parallax_within_the_window():
    """On a sideways path the chosen neighbours lie within the window, differ from the
    frame, and the one nearest the target angle comes first."""
    scene = make_scene(n_frames=12, height=48, width=64, path="sideways")
    nbrs = choose_neighbours(scene.depth, scene.c2w, scene.K, 2, 4, 3.0, 0.1, 0.3)
    for i, js in enumerate(nbrs):
        assert 1 <= len(js) <= 2 and all(0 < abs(j - i) <= 4 for j in js)
    unusable = np.ones(12, bool)
    unusable[5] = False
    nbrs = choose_neighbours(scene.depth, scene.c2w, scene.K, 2, 4, 3.0, 0.1, 0.3, usable=unusable)
    assert nbrs[5] == [] and all(5 not in js for js in nbrs)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        DenseConfig(scale=0.0)
    with pytest.raises(ValueError):
        DenseConfig(dis_preset="slow")
    with pytest.raises(ValueError):
        DenseConfig(fill="zeros")


def test_outputs_write_the_dense_maps_and_points(tmp_path):
    """A reconstruction with a dense stage writes its depth (at its own resolution) to
    depth/ and depth_png/, its confidence to confidence/, its fused points to
    points.ply, and states the resolution in summary.json."""
    import json

    import cv2
    import trimesh

    from flowmap.config import OutputConfig
    from flowmap.outputs import write_outputs
    from flowmap.types import DenseDepth, Frames, Reconstruction

    n, H, W, h0, w0, h, w = 3, 32, 48, 8, 12, 16, 24
    rng = np.random.default_rng(0)
    K = np.array([[40.0, 0, (W - 1) / 2], [0, 40.0, (H - 1) / 2], [0, 0, 1]])
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, 0, 3] = 0.1 * np.arange(n)
    dense = DenseDepth(
        depth=rng.uniform(1.0, 2.0, (n, h, w)).astype(np.float32),
        confidence=rng.uniform(0.0, 1.0, (n, h, w)).astype(np.float32),
        images=rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8),
        points_xyz=rng.normal(size=(50, 3)),
        points_rgb=rng.integers(0, 255, (50, 3), dtype=np.uint8),
        fill=["network"] * n,
    )
    rec = Reconstruction(
        c2w=c2w, K=K, depth=np.ones((n, h0, w0), np.float32), weights=np.ones((n - 1, h0, w0), np.float32),
        names=[f"{i:06d}.png" for i in range(n)], image_size=(H, W), images=np.zeros((n, h0, w0, 3), np.uint8),
        dense=dense,
    )
    frames = Frames(images=np.zeros((n, H, W, 3), np.uint8), names=rec.names, source=tmp_path, source_indices=list(range(n)))
    out = write_outputs(rec, frames, tmp_path / "OUT", OutputConfig(report=False, max_points=40))
    for i, name in enumerate(rec.names):
        stem = name.split(".")[0]
        np.testing.assert_array_equal(np.load(out / "depth" / f"{stem}.npy"), dense.depth[i])
        np.testing.assert_array_equal(np.load(out / "confidence" / f"{stem}.npy"), dense.confidence[i])
        assert cv2.imread(str(out / "depth_png" / f"{stem}.png"), cv2.IMREAD_UNCHANGED).shape == (h, w)
    cloud = trimesh.load(out / "points.ply")
    assert len(cloud.vertices) == 40  # max_points of the 50 fused points
    assert all(np.isclose(np.linalg.norm(dense.points_xyz - p, axis=1), 0, atol=1e-5).any() for p in cloud.vertices)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["depth"]["resolution"] == [h, w]


# --- the surface fill (flowmap.dense.surface) ----------------------------------------


def _plane_depth(u, v, K, normal, offset):
    """z-depth of the plane normal . X = offset seen by a camera at the origin (OpenCV axes)."""
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, dtype=np.float64)], -1)
    return offset / (rays @ normal)


def test_inverse_plane_fit_is_exact_and_robust():
    """Samples of two planes' inverse depth (affine in the image): without outliers each
    region's fit is exact; with 20 % of the samples 30-100 % off, least squares is
    is pulled by over 10 % and the reweighted fit stays within 3 % of the plane (a fifth
    of that), with every outlier's residual above the threshold."""
    from flowmap.dense.surface import fit_inverse_planes

    rng = np.random.default_rng(0)
    u, v = rng.uniform(0, 100, 2000), rng.uniform(0, 80, 2000)
    labels = (u > 50).astype(int)
    A = np.stack([u, v, np.ones_like(u)], 1)
    coef_true = np.array([[1e-3, -2e-3, 0.5], [-4e-3, 1e-3, 0.9]])
    inv = np.einsum("pk,pk->p", A, coef_true[labels])
    coef, resid = fit_inverse_planes(labels, 2, u, v, inv, np.ones(2000), 0.05, 5)
    np.testing.assert_allclose(coef, coef_true, rtol=1e-8, atol=1e-12)
    assert resid.max() < 1e-8
    outlier = rng.random(2000) < 0.2
    inv_obs = np.where(outlier, inv * rng.uniform(1.3, 2.0, 2000), inv)

    def worst(c):
        return np.max(np.abs(np.einsum("pk,pk->p", A, c[labels]) - inv) / inv)

    plain, _ = fit_inverse_planes(labels, 2, u, v, inv_obs, np.ones(2000), 0.05, 1)
    robust, resid = fit_inverse_planes(labels, 2, u, v, inv_obs, np.ones(2000), 0.05, 10)
    assert worst(plain) > 0.1 and worst(robust) < min(0.03, 0.2 * worst(plain))
    assert np.all(resid[outlier] > 0.05)


def test_a_textureless_panel_takes_the_plane_through_its_seams():
    """A tilted wall whose panel interior has no confident pixel, only two crossing seams
    (and a surface 20 % too deep, a weak prior): the panels get the true plane (within
    1 %, where the surface alone is 20 % off) and are constrained; with one straight seam only, it is not constrained (a line does not fix
    the plane's tilt about it)."""
    from flowmap.dense.surface import segment_planes

    h, w = 60, 80
    K = np.array([[70.0, 0, (w - 1) / 2], [0, 70.0, (h - 1) / 2], [0, 0, 1]])
    v, u = np.mgrid[0:h, 0:w]
    truth = _plane_depth(u, v, K, np.array([0.3, -0.1, 1.0]) / np.linalg.norm([0.3, -0.1, 1.0]), 3.0)
    labels = np.zeros((h, w), int)
    labels[:, 40:] = 1  # two panels side by side
    seams = (np.abs(u - 20) <= 1) | (np.abs(v - 30) <= 1) | (np.abs(u - 60) <= 1)
    labels[seams] = 2  # the seams are their own thin region
    depth, kept, constrained = segment_planes(labels, truth, seams, 1.2 * truth, 0.01, 2)
    panel = labels < 2
    assert kept[panel].all() and constrained[panel].all()
    assert np.max(np.abs(depth[panel] - truth[panel]) / truth[panel]) < 0.01
    one_seam = np.abs(u - 20) <= 1
    _, kept, constrained = segment_planes(np.where(one_seam, 2, 0), truth, one_seam, 1.2 * truth, 0.01, 2)
    assert not constrained[~one_seam].any()


def test_surface_fill_recovers_low_texture_depth_across_frames():
    """Rendered orbit, true cameras; stereo confident only on the strongest edges (15 % of
    the pixels, true depth there) and a flat wrong fill elsewhere (as on white walls): the
    video's surface and the region planes bring the other pixels to within 2 % (median),
    from over 20 %, and the confident pixels keep their depth (all but a few on depth
    edges, which are off both their region's plane and the smoothed surface)."""
    import cv2

    from flowmap.dense.surface import surface_fill

    _needs_open3d()
    scene = make_scene(n_frames=12, height=96, width=128, path="orbit")
    grad = np.stack([np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))
                     for g in (cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in scene.images)])
    confident = grad >= np.quantile(grad, 0.85)
    flat = np.where(confident, scene.depth, np.median(scene.depth)).astype(np.float32)
    cfg = DenseConfig(surface_octree_depth=8, segment_min_px=40)
    out, source, stats = surface_fill(flat, confident, scene.images, scene.K, scene.c2w, cfg)
    rel_before = np.abs(flat - scene.depth) / scene.depth
    rel = np.abs(out - scene.depth) / scene.depth
    assert np.median(rel_before[~confident]) > 0.2
    assert np.median(rel[~confident]) < 0.02
    assert np.mean(out[confident] == flat[confident]) > 0.99
    assert (source[~confident] > 0).mean() > 0.9 and stats["round1_points"] > stats["round0_points"]


def test_without_open3d_the_stage_keeps_its_fill_and_says_why(rendered, monkeypatch):
    """Open3D missing: one clear error from the surface module, and the dense stage still
    returns its maps with the reason in its statistics (the pipeline turns it into a warning)."""
    import sys

    from flowmap.dense.surface import OPEN3D_HINT, open3d
    from flowmap.errors import InputError

    monkeypatch.setitem(sys.modules, "open3d", None)
    with pytest.raises(InputError, match=r"flowmap\[dense\]"):
        open3d()
    scene = rendered
    flat = np.full((16, 48, 64), float(np.median(scene.depth)), np.float32)
    out = dense_depth(scene.images[:6], scene.c2w[:6], scene.K, flat[:6], _sparse_points(scene.depth[:6], scene.K, scene.c2w[:6]), DenseConfig(window=4))
    assert out.stats["surface"]["applied"] is False and OPEN3D_HINT in out.stats["surface"]["skipped"]
    assert np.all(out.depth > 0)


def test_a_surface_that_contradicts_the_adjusted_points_is_not_kept(rendered, monkeypatch):
    """The surface fill is kept only where it agrees with the adjusted points at least as
    well as the per-frame fill: a surface 50 % too deep (as the few, wrong confident pixels
    of a rotation-dominant video give) is dropped and the maps are the per-frame fill's."""
    import flowmap.dense as dense_module
    from flowmap.dense.surface import surface_fill

    scene = rendered
    flat = np.full((16, 48, 64), float(np.median(scene.depth)), np.float32)
    pts = _sparse_points(scene.depth, scene.K, scene.c2w)
    args = (scene.images[:8], scene.c2w[:8], scene.K, flat[:8], pts[:8])
    without = dense_depth(*args, DenseConfig(window=4, surface=False))

    def too_deep(depth, confident, *rest):
        out, source, stats = surface_fill(depth, confident, *rest) if _open3d_available() else (depth, np.zeros(depth.shape, np.uint8), {})
        return np.where(confident, depth, 1.5 * out), source, stats

    monkeypatch.setattr(dense_module, "surface_fill", too_deep)
    out = dense_depth(*args, DenseConfig(window=4))
    assert out.stats["surface"]["applied"] and not out.stats["surface"]["kept"]
    assert out.stats["surface"]["points_error"] > out.stats["surface"]["points_error_without"]
    np.testing.assert_array_equal(out.depth, without.depth)
