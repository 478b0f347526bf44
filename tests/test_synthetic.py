"""Tests of the synthetic scene: geometry, brightness constancy, flow, file round trip."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from flowmap.errors import InputError
from flowmap.synthetic import SOURCE, make_geometry, make_scene, write_sequence

H, W = 96, 128


@pytest.fixture(scope="module")
def scene():
    return make_scene(n_frames=12, height=H, width=W, seed=3)


def world_points(scene, i: int, v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """(P, 3) world points of pixels (v, u) of frame i: c2w (z K^-1 (u, v, 1))."""
    K = scene.K
    z = scene.depth[i, v, u].astype(np.float64)
    cam = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], axis=-1)
    return cam @ scene.c2w[i, :3, :3].T + scene.c2w[i, :3, 3]


def project(scene, j: int, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel coords u, v (OpenCV centres) and z-depth of world points in frame j."""
    w2c = np.linalg.inv(scene.c2w[j])
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    return scene.K[0, 0] * cam[:, 0] / z + scene.K[0, 2], scene.K[1, 1] * cam[:, 1] / z + scene.K[1, 2], z


def induced_flow(scene, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 2) ground-truth pixel flow i -> j and (H, W) visibility (in view, not occluded)."""
    v, u = np.mgrid[0:H, 0:W]
    points = world_points(scene, i, v.ravel(), u.ravel())
    uj, vj, zj = project(scene, j, points)
    inside = (uj >= 0) & (uj <= W - 1) & (vj >= 0) & (vj <= H - 1) & (zj > 0)
    # Occlusion: the depth map of frame j at the target must agree with the point's depth
    # (nearest pixel and its neighbours, so depth edges count as occluded).
    ui = np.clip(np.rint(uj), 0, W - 1).astype(int)
    vi = np.clip(np.rint(vj), 0, H - 1).astype(int)
    visible = inside.copy()
    for dv in (-1, 0, 1):
        for du in (-1, 0, 1):
            d = scene.depth[j, np.clip(vi + dv, 0, H - 1), np.clip(ui + du, 0, W - 1)]
            visible &= np.abs(d - zj) < 0.02 * zj
    flow = np.stack([uj - u.ravel(), vj - v.ravel()], axis=-1).reshape(H, W, 2)
    return flow, visible.reshape(H, W)


def test_shapes_types_and_intrinsics(scene):
    assert scene.images.shape == (12, H, W, 3) and scene.images.dtype == np.uint8
    assert scene.depth.shape == (12, H, W) and scene.depth.dtype == np.float32
    assert scene.c2w.shape == (12, 4, 4) and scene.c2w.dtype == np.float64
    assert scene.names == [f"{i:06d}.png" for i in range(12)]
    np.testing.assert_allclose(scene.K[:2, 2], [(W - 1) / 2, (H - 1) / 2])
    assert 0.9 * max(H, W) <= scene.K[0, 0] <= 1.1 * max(H, W)
    assert np.isfinite(scene.depth).all() and scene.depth.min() > 0.5
    R = scene.c2w[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    # The image has texture everywhere (optical flow needs it): local contrast per 8x8 cell.
    grey = scene.images[0].mean(-1)
    cells = grey.reshape(H // 8, 8, W // 8, 8).std(axis=(1, 3))
    assert np.quantile(cells, 0.1) > 3.0


def test_depth_lies_on_the_surface(scene):
    geometry = make_geometry(seed=3)
    rng = np.random.default_rng(0)
    for i in (0, 11):
        v, u = rng.integers(0, H, 2000), rng.integers(0, W, 2000)
        points = world_points(scene, i, v, u)
        sd = geometry.signed_distances(points)  # (P, 2000), positive in free space
        # On a surface (some primitive at distance ~0) and inside no solid.
        assert np.abs(sd).min(axis=0).max() < 1e-6
        assert sd.min() > -1e-6
        # The pixels see objects, not only the room (parallax and occlusion).
        on_object = np.abs(sd[6:]).min(axis=0) < 1e-6
        assert 0.1 < on_object.mean() < 0.8


def test_colour_is_consistent_across_views(scene):
    i, j = 4, 6
    flow, visible = induced_flow(scene, i, j)
    assert visible.mean() > 0.4
    v, u = np.nonzero(visible)
    rng = np.random.default_rng(1)
    pick = rng.choice(v.size, 3000, replace=False)
    v, u = v[pick], u[pick]
    map_x = (u + flow[v, u, 0]).astype(np.float32)[None]
    map_y = (v + flow[v, u, 1]).astype(np.float32)[None]
    warped = cv2.remap(scene.images[j], map_x, map_y, cv2.INTER_LINEAR)[0].astype(float)
    diff = np.abs(warped - scene.images[i][v, u].astype(float)).max(axis=-1)
    # Bilinear lookup of a textured image is not exact; a wrong pose or a
    # view-dependent colour gives differences of tens of levels.
    assert np.median(diff) < 8.0
    assert np.quantile(diff, 0.9) < 25.0
    # Control: the same comparison without motion compensation is far off.
    unwarped = scene.images[j][v, u].astype(float)
    assert np.median(np.abs(unwarped - scene.images[i][v, u].astype(float)).max(axis=-1)) > 3 * np.median(diff)


def test_dis_flow_matches_ground_truth(scene):
    i, j = 5, 6
    flow, visible = induced_flow(scene, i, j)
    magnitude = np.linalg.norm(flow, axis=-1)[visible]
    assert 1.0 < np.median(magnitude) and magnitude.max() < 15.0  # video-like steps
    grey = [cv2.cvtColor(scene.images[k], cv2.COLOR_RGB2GRAY) for k in (i, j)]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    estimate = dis.calc(grey[0], grey[1], None)
    epe = np.linalg.norm(estimate - flow, axis=-1)[visible]
    assert np.median(epe) < 0.5


def test_write_sequence_round_trip(scene, tmp_path):
    out = write_sequence(scene, tmp_path / "seq")
    assert sorted(p.name for p in (out / "images").iterdir()) == scene.names
    image = cv2.cvtColor(cv2.imread(str(out / "images" / scene.names[2])), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(image, scene.images[2])
    lines = (out / "poses.txt").read_text().splitlines()
    assert lines[0] == "# image tx ty tz qx qy qz qw (camera-to-world, OpenCV axes)"
    for line, name, c2w in zip(lines[1:], scene.names, scene.c2w, strict=True):
        fields = line.split()
        assert fields[0] == name
        values = np.array(fields[1:], dtype=float)
        np.testing.assert_allclose(values[:3], c2w[:3, 3], atol=1e-6)
        np.testing.assert_allclose(Rotation.from_quat(values[3:]).as_matrix(), c2w[:3, :3], atol=1e-6)
    meta = json.loads((out / "intrinsics.json").read_text())
    assert (meta["width"], meta["height"], meta["source"]) == (W, H, SOURCE)
    np.testing.assert_allclose([meta["fx"], meta["fy"], meta["cx"], meta["cy"]], scene.K[[0, 1, 0, 1], [0, 1, 2, 2]])
    # Re-writing replaces a previous synthetic sequence and leaves no temporary folder.
    write_sequence(scene, out)
    assert [p.name for p in tmp_path.iterdir()] == ["seq"]
    # A folder with other content is never overwritten.
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(InputError):
        write_sequence(scene, other)
    assert (other / "keep.txt").exists()


def test_deterministic_and_seed_dependent(scene):
    again = make_scene(n_frames=12, height=H, width=W, seed=3)
    np.testing.assert_array_equal(again.images, scene.images)
    np.testing.assert_array_equal(again.depth, scene.depth)
    other = make_scene(n_frames=2, height=H, width=W, seed=4)
    assert np.abs(other.images[0].astype(int) - scene.images[0].astype(int)).mean() > 10


@pytest.mark.parametrize("path", ["orbit", "forward", "sideways"])
def test_paths_move_smoothly(path):
    s = make_scene(n_frames=4, height=24, width=32, path=path)
    steps = np.linalg.norm(np.diff(s.c2w[:, :3, 3], axis=0), axis=1)
    assert steps.min() > 0.05 and steps.max() < 1.5 * steps.min()
    assert np.isfinite(s.depth).all()


@pytest.mark.parametrize("kwargs", [{"path": "spiral"}, {"n_frames": 1}, {"fov_deg": 180.0}, {"height": 4}])
def test_bad_arguments_raise_input_error(kwargs):
    with pytest.raises(InputError):
        make_scene(**kwargs)

