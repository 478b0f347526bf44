"""Tests of the output stage: camera files, PLY, COLMAP model, transforms.json, atomic OUT.

Synthetic scene with exact depth: a textured background plane z = 4 and a textured
square z = 2 in front of it (it occludes parts of the background in every view),
seen by a row of cameras. Real data: the ground-truth cameras of shared/data/fox with
depth ray-cast against two spheres around the object.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest
import trimesh
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation

from flowmap.errors import InputError
from flowmap.outputs import OutputConfig, write_outputs
from flowmap.outputs.colmap import write_colmap
from flowmap.layout import read_intrinsics, read_poses, write_intrinsics, write_poses
from flowmap.outputs.nerfstudio import read_transforms_c2w
from flowmap.outputs.ply import depth_point_cloud, write_ply
from flowmap.types import Frames, Reconstruction
from conftest import SHARED_DATA, needs_data, shared_sequences

DATA = SHARED_DATA
Z_BACK, Z_FRONT, HALF = 4.0, 2.0, 0.35  # background plane, occluding square (|x|, |y| <= HALF)


# ----------------------------------------------------------------------------- scene


def colour(points: np.ndarray) -> np.ndarray:
    """Analytic texture of the scene: (P, 3) world points -> (P, 3) uint8."""
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    c = np.stack([np.sin(5 * x + 1), np.sin(4 * y + 2), np.sin(3 * x - 2 * y + z)], axis=-1)
    return np.round(127.5 + 120 * c).astype(np.uint8)


def cast(c2w: np.ndarray, K: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """z-depth of the first surface along the rays through pixels (u, v) (OpenCV centres)."""
    d = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, dtype=float)], -1)
    r = d @ c2w[:3, :3].T  # ray direction for z-depth 1
    C = c2w[:3, 3]
    t_front = (Z_FRONT - C[2]) / r[..., 2]
    p = C + t_front[..., None] * r
    front = (t_front > 0) & (np.abs(p[..., 0]) <= HALF) & (np.abs(p[..., 1]) <= HALF)
    return np.where(front, t_front, (Z_BACK - C[2]) / r[..., 2])


def render(c2w: np.ndarray, K: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact z-depth (h, w) and colours (h, w, 3) uint8 at the pixel centres."""
    v, u = np.mgrid[0:h, 0:w].astype(float)
    depth = cast(c2w, K, u, v)
    d = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    points = c2w[:3, 3] + (depth[..., None] * d) @ c2w[:3, :3].T
    return depth, colour(points.reshape(-1, 3)).reshape(h, w, 3)


def synthetic(n: int = 6, size: tuple[int, int] = (96, 128), scale: int = 2) -> tuple[Reconstruction, Frames]:
    """Reconstruction with exact depth, input size ``size`` and working size ``size / scale``."""
    H, W = size
    h, w = H // scale, W // scale
    K = np.array([[100.0, 0, (W - 1) / 2], [0, 100.0, (H - 1) / 2], [0, 0, 1]])
    c2w = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        s = i / (n - 1) - 0.5
        c2w[i, :3, :3] = Rotation.from_euler("yx", [-0.25 * s, 0.05 * np.sin(3 * i)]).as_matrix()
        c2w[i, :3, 3] = [1.2 * s, 0.1 * np.cos(2 * i), 0.05 * i]
    names = [f"{i:06d}.jpg" for i in range(n)]
    rec = make_rec(c2w, K, (H, W), (h, w), names)
    images = np.stack([render(T, K, H, W)[1] for T in c2w])
    return rec, Frames(images=images, names=names, source=Path("synthetic"), source_indices=list(range(n)))


def make_rec(c2w, K, image_size, working, names, images=None, depth=None) -> Reconstruction:
    H, W = image_size
    h, w = working
    base = Reconstruction(c2w=c2w, K=K, depth=np.zeros((len(c2w), h, w), np.float32), weights=None,
                          names=names, image_size=(H, W), images=None)
    K_work = base.K_at(h, w)
    if depth is None:
        rendered = [render(T, K_work, h, w) for T in c2w]
        depth = np.stack([d for d, _ in rendered]).astype(np.float32)
        images = np.stack([c for _, c in rendered]) if images is None else images
    return Reconstruction(
        c2w=c2w, K=K, depth=depth, weights=np.ones((len(c2w) - 1, h, w), np.float32), names=names,
        image_size=(H, W), images=images, losses={"flow": 0.1}, timings={"optimization_s": 1.0},
        settings={"seed": 0}, warnings=["test warning"],
    )


def replace(rec: Reconstruction, **changes) -> Reconstruction:
    fields = {k: getattr(rec, k) for k in rec.__dataclass_fields__}
    return Reconstruction(**{**fields, **changes})


@pytest.fixture(scope="module")
def scene():
    return synthetic()


CFG = OutputConfig(report=False, max_points=4000, colmap_max_points=3000)


@pytest.fixture(scope="module")
def out(scene, tmp_path_factory):
    rec, frames = scene
    return write_outputs(rec, frames, tmp_path_factory.mktemp("run") / "OUT", CFG, summary={"input": "synthetic"})


# ----------------------------------------------------------------------------- files


def random_c2w(rng: np.random.Generator, n: int) -> np.ndarray:
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3] = Rotation.random(n, random_state=rng.integers(1 << 31)).as_matrix()
    c2w[:, :3, 3] = rng.normal(scale=5.0, size=(n, 3))
    return c2w


def test_poses_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    c2w = random_c2w(rng, 20)
    names = [f"{i:06d}.png" for i in range(20)]
    write_poses(tmp_path / "poses.txt", names, c2w)
    names2, c2w2 = read_poses(tmp_path / "poses.txt")
    assert names2 == names
    np.testing.assert_allclose(c2w2, c2w, atol=1e-6)


@needs_data("fox")
def test_intrinsics_round_trip(tmp_path):
    K = np.array([[512.25, 0, 319.75], [0, 510.5, 241.125], [0, 0, 1]])
    write_intrinsics(tmp_path / "intrinsics.json", K, 640, 480, "test")
    d = read_intrinsics(tmp_path / "intrinsics.json")
    assert (d["width"], d["height"], d["source"]) == (640, 480, "test")
    np.testing.assert_allclose(d["K"], K, atol=1e-6)


@needs_data()
@pytest.mark.parametrize("name", shared_sequences() or ["absent"])
def test_reads_shared_data(name, tmp_path):
    names, c2w = read_poses(DATA / name / "poses.txt")
    n_images = len(list((DATA / name / "images").iterdir()))
    assert len(names) == len(c2w) == n_images and names[0] == "000000.jpg"
    np.testing.assert_allclose(c2w[:, :3, :3] @ c2w[:, :3, :3].transpose(0, 2, 1), np.eye(3)[None].repeat(len(c2w), 0), atol=1e-6)
    intr = read_intrinsics(DATA / name / "intrinsics.json")
    image = cv2.imread(str(DATA / name / "images" / names[0]))
    assert image.shape[:2] == (intr["height"], intr["width"])
    # Written back in our layout, the files read the same.
    write_poses(tmp_path / "p.txt", names, c2w)
    np.testing.assert_allclose(read_poses(tmp_path / "p.txt")[1], c2w, atol=1e-6)
    write_intrinsics(tmp_path / "i.json", intr["K"], intr["width"], intr["height"], intr["source"])
    assert read_intrinsics(tmp_path / "i.json")["K"].tolist() == intr["K"].tolist()


def test_bad_files_raise_input_error(tmp_path):
    (tmp_path / "poses.txt").write_text("000000.jpg 1 2 3 0 0 0\n")
    with pytest.raises(InputError, match="poses.txt:1"):
        read_poses(tmp_path / "poses.txt")
    (tmp_path / "intrinsics.json").write_text('{"width": 10, "height": 10, "fx": 5}')
    with pytest.raises(InputError, match="keys"):
        read_intrinsics(tmp_path / "intrinsics.json")
    with pytest.raises(InputError, match="does not exist"):
        read_poses(tmp_path / "missing.txt")


# ----------------------------------------------------------------------------- point cloud


def on_surface(xyz: np.ndarray, tol: float = 1e-4) -> np.ndarray:
    front = (np.abs(xyz[:, 2] - Z_FRONT) < tol) & (np.abs(xyz[:, :2]) <= HALF + tol).all(1)
    return front | (np.abs(xyz[:, 2] - Z_BACK) < tol)


def test_point_cloud_lies_on_the_scene_with_its_colours(scene):
    rec, _ = scene
    xyz, rgb = depth_point_cloud(rec, max_points=2000)
    assert xyz.shape == (2000, 3) and rgb.shape == (2000, 3) and rgb.dtype == np.uint8
    assert on_surface(xyz).all()
    assert np.abs(colour(xyz).astype(int) - rgb.astype(int)).max() <= 1
    assert (np.abs(xyz[:, 2] - Z_FRONT) < 1e-4).sum() > 100  # both surfaces are sampled


def test_point_cloud_drops_inconsistent_depth_and_low_weights(scene):
    rec, _ = scene
    depth = rec.depth.copy()
    depth[3, :, : depth.shape[2] // 2] *= 1.3  # a wrong depth region in frame 3
    bad = replace(rec, depth=depth)
    xyz, _ = depth_point_cloud(bad, max_points=10**6)
    assert on_surface(xyz).all() and len(xyz) > 0.5 * rec.depth.size
    # Zero weights everywhere: only frame 0 (which has no weights of its own) remains.
    xyz0, _ = depth_point_cloud(replace(rec, weights=np.zeros_like(rec.weights)), max_points=10**6)
    h, w = rec.working_size
    K = rec.K_at(h, w)
    cam = (xyz0 - rec.c2w[0, :3, 3]) @ rec.c2w[0, :3, :3]
    uv = (cam @ K.T)[:, :2] / cam[:, 2:]
    assert 0 < len(xyz0) <= h * w
    np.testing.assert_allclose(uv, np.round(uv), atol=1e-4)


def test_ply_loads_with_count_and_colours(out, scene):
    mesh = trimesh.load(out / "points.ply")
    summary = json.loads((out / "summary.json").read_text())
    assert len(mesh.vertices) == CFG.max_points == summary["outputs"]["ply_points"]
    assert on_surface(np.asarray(mesh.vertices), tol=1e-3).all()
    colours = np.asarray(mesh.colors)[:, :3].astype(int)
    assert np.abs(colour(np.asarray(mesh.vertices, dtype=float)).astype(int) - colours).max() <= 2


def test_write_ply_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(50, 3))
    rgb = rng.integers(0, 256, size=(50, 3)).astype(np.uint8)
    write_ply(tmp_path / "p.ply", xyz, rgb)
    mesh = trimesh.load(tmp_path / "p.ply")
    np.testing.assert_allclose(mesh.vertices, xyz, atol=1e-6)
    assert (np.asarray(mesh.colors)[:, :3] == rgb).all()


# ----------------------------------------------------------------------------- COLMAP


def test_colmap_model_cameras_and_poses(out, scene):
    rec, frames = scene
    model = pycolmap.Reconstruction(out / "colmap" / "sparse" / "0")
    assert model.num_cameras() == 1 and model.num_images() == rec.n == model.num_reg_images()
    camera = model.camera(1)
    assert camera.model == pycolmap.CameraModelId.PINHOLE
    assert (camera.width, camera.height) == (frames.width, frames.height)
    K = rec.K_at(frames.height, frames.width)
    np.testing.assert_allclose(camera.params, [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5], atol=1e-9)
    _, c2w_txt = read_poses(out / "poses.txt")
    for i, name in enumerate(frames.names):
        image = model.find_image_with_name(name)
        assert image is not None and image.has_pose
        c2w = image.cam_from_world().inverse().matrix()
        np.testing.assert_allclose(c2w, c2w_txt[i, :3], atol=1e-6)
        np.testing.assert_allclose(c2w, rec.c2w[i, :3], atol=1e-6)
        written = cv2.imread(str(out / "colmap" / "images" / name))
        assert written.shape[:2] == (frames.height, frames.width)
        assert np.abs(written[..., ::-1].astype(int) - frames.images[i]).mean() < 3


def test_colmap_points_reproject_and_respect_occlusion(out, scene):
    rec, frames = scene
    model = pycolmap.Reconstruction(out / "colmap" / "sparse" / "0")
    assert 1000 < model.num_points3D() <= CFG.colmap_max_points
    K = rec.K_at(frames.height, frames.width)
    h, w = rec.working_size
    ids = {model.find_image_with_name(n).image_id: i for i, n in enumerate(frames.names)}
    max_err, n_obs, n_occluded, n_far = 0.0, 0, 0, 0
    for point in model.points3D.values():
        assert on_surface(point.xyz[None])[0]
        assert np.abs(colour(point.xyz[None])[0].astype(int) - point.color.astype(int)).max() <= 1
        for el in point.track.elements:
            i = ids[el.image_id]
            xy = model.image(el.image_id).points2D[el.point2D_idx].xy
            # Our own OpenCV projection, shifted to COLMAP's corner origin.
            cam = rec.c2w[i, :3, :3].T @ (point.xyz - rec.c2w[i, :3, 3])
            max_err = max(max_err, np.abs(K[:2, :2] @ (cam[:2] / cam[2]) + K[:2, 2] + 0.5 - xy).max())
            # Where the depth map of frame i puts the surface seen at xy (bilinear).
            uw = (xy - 0.5 + 0.5) * np.array([w / frames.width, h / frames.height]) - 0.5
            d = map_coordinates(rec.depth[i].astype(float), [[uw[1]], [uw[0]]], order=1, mode="nearest")[0]
            n_far += abs(d - cam[2]) > 0.02 * cam[2]
            # Ground-truth visibility at the exact observation.
            n_occluded += cast(rec.c2w[i], K, np.array(xy[0] - 0.5), np.array(xy[1] - 0.5)) < 0.99 * cam[2]
            n_obs += 1
    assert max_err < 1e-6  # 2D observations are the exact projections (+0.5 px)
    assert n_obs > 2 * model.num_points3D()
    assert n_far <= 0.02 * n_obs and n_occluded <= 0.02 * n_obs
    assert model.compute_mean_reprojection_error() < 1e-6


def depth_reprojection_errors(model: pycolmap.Reconstruction, rec: Reconstruction, frames: Frames) -> np.ndarray:
    """Pixel distances between where the depth maps put the points and the observations.

    For every observation (frame j, COLMAP pixel xy) of a point, the depth map of frame j
    (bilinear at xy, working resolution) puts the surface at a world point Y; Y is
    projected into the next frame k of the same track (cyclically) and compared with the
    observation there. Returns one distance (pixels of the exported images) per observation.
    """
    K = rec.K_at(frames.height, frames.width)
    h, w = rec.working_size
    point, frame, xy = [], [], []
    for i, name in enumerate(frames.names):
        for p in model.find_image_with_name(name).points2D:
            if p.has_point3D():
                point.append(p.point3D_id)
                frame.append(i)
                xy.append(p.xy)
    order = np.argsort(point, kind="stable")  # group the observations by point
    point, frame, xy = np.array(point)[order], np.array(frame)[order], np.array(xy)[order]
    first = np.searchsorted(point, point, side="left")
    last = np.searchsorted(point, point, side="right") - 1
    nxt = np.where(np.arange(len(point)) < last, np.arange(len(point)) + 1, first)
    uv = xy - 0.5  # OpenCV pixel centres of the exported images
    work = xy * [w / frames.width, h / frames.height] - 0.5  # same point, working resolution
    depth = np.empty(len(frame))
    for i in np.unique(frame):
        sel = frame == i
        depth[sel] = map_coordinates(rec.depth[i].astype(float), work[sel, ::-1].T, order=1, mode="nearest")
    rays = np.stack([(uv[:, 0] - K[0, 2]) / K[0, 0], (uv[:, 1] - K[1, 2]) / K[1, 1], np.ones(len(uv))], -1)
    world = np.einsum("nij,nj->ni", rec.c2w[frame, :3, :3], depth[:, None] * rays) + rec.c2w[frame, :3, 3]
    k = frame[nxt]
    cam = np.einsum("nji,nj->ni", rec.c2w[k, :3, :3], world - rec.c2w[k, :3, 3])
    proj = cam[:, :2] / cam[:, 2:] @ K[:2, :2].T + K[:2, 2] + 0.5
    return np.linalg.norm(proj - xy[nxt], axis=1)


def test_colmap_points_reproject_where_the_depth_maps_put_them(out, scene):
    rec, frames = scene
    model = pycolmap.Reconstruction(out / "colmap" / "sparse" / "0")
    err = depth_reprojection_errors(model, rec, frames)
    assert len(err) > 2 * model.num_points3D()
    # Off depth edges (where bilinear depth blends two surfaces) the error is ~0.
    assert np.median(err) < 0.01 and (err < 1.0).mean() > 0.98
    # The check can fail: depth maps that disagree with the poses move the points.
    factor = np.where(np.arange(rec.n) % 2, 1.25, 0.8).astype(np.float32)
    scaled = replace(rec, depth=rec.depth * factor[:, None, None])
    assert (depth_reprojection_errors(model, scaled, frames) < 1.0).mean() < 0.5


def test_scene_has_occlusions_the_export_skips(out, scene):
    """The occlusion test above can fail: many points project inside a frame behind the square."""
    rec, frames = scene
    model = pycolmap.Reconstruction(out / "colmap" / "sparse" / "0")
    K = rec.K_at(frames.height, frames.width)
    ids = list(model.point3D_ids())
    xyz = np.array([model.points3D[pid].xyz for pid in ids])
    seen_by = {image_id: set() for image_id in model.images}
    for k, pid in enumerate(ids):
        for el in model.points3D[pid].track.elements:
            seen_by[el.image_id].add(k)
    occluded_total = wrongly_seen = 0
    for i, name in enumerate(frames.names):
        cam = (xyz - rec.c2w[i, :3, 3]) @ rec.c2w[i, :3, :3]
        uv = cam[:, :2] / cam[:, 2:] @ K[:2, :2].T + K[:2, 2]
        inside = (uv[:, 0] > -0.5) & (uv[:, 0] < frames.width - 0.5) & (uv[:, 1] > -0.5) & (uv[:, 1] < frames.height - 0.5)
        occluded = inside & (cast(rec.c2w[i], K, uv[:, 0], uv[:, 1]) < 0.9 * cam[:, 2])
        occluded_total += occluded.sum()
        wrongly_seen += len(seen_by[model.find_image_with_name(name).image_id] & set(np.flatnonzero(occluded).tolist()))
    assert occluded_total > 100 and wrongly_seen <= 0.01 * occluded_total


def test_colmap_binary_files_have_the_documented_layout(out, scene):
    """Read the .bin files as COLMAP documents them ("Output format", binary), the way
    standalone readers (3DGS's ``-s`` loader, nerfstudio's colmap parser) do."""
    import struct

    rec, frames = scene
    sparse = out / "colmap" / "sparse" / "0"
    cam = (sparse / "cameras.bin").read_bytes()
    n_cams, cam_id, model_id, width, height = struct.unpack_from("<QiiQQ", cam)
    K = rec.K_at(frames.height, frames.width)
    assert (n_cams, cam_id, model_id, width, height) == (1, 1, 1, frames.width, frames.height)  # 1 = PINHOLE
    assert struct.unpack_from("<4d", cam, 32) == pytest.approx((K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5))
    data, offset = (sparse / "images.bin").read_bytes(), 8
    assert struct.unpack_from("<Q", data)[0] == rec.n
    for i in range(rec.n):
        image_id, *qt, camera_id = struct.unpack_from("<i7di", data, offset)
        end = data.index(b"\0", offset + 64)
        name = data[offset + 64 : end].decode()
        (n_points,) = struct.unpack_from("<Q", data, end + 1)
        offset = end + 9 + 24 * n_points
        assert (image_id, camera_id, name) == (i + 1, 1, frames.names[i])
        w2c = np.eye(4)
        w2c[:3, :3] = Rotation.from_quat(qt[1:4] + qt[:1]).as_matrix()  # stored w x y z
        w2c[:3, 3] = qt[4:]
        np.testing.assert_allclose(np.linalg.inv(w2c), rec.c2w[i], atol=1e-9)
    assert offset == len(data)
    points = (sparse / "points3D.bin").read_bytes()
    assert struct.unpack_from("<Q", points)[0] == pycolmap.Reconstruction(sparse).num_points3D() > 0


def test_colmap_text_export(scene, tmp_path):
    rec, frames = scene
    model = write_colmap(rec, frames, tmp_path / "colmap", text=True, max_points=300)
    sparse = tmp_path / "colmap" / "sparse" / "0"
    for stem in ("cameras", "images", "points3D"):
        assert (sparse / f"{stem}.bin").is_file() and (sparse / f"{stem}.txt").is_file()
    text = pycolmap.Reconstruction()
    text.read_text(sparse)
    assert text.num_points3D() == model.num_points3D() > 0 and text.num_images() == rec.n


# ----------------------------------------------------------------------------- nerfstudio


def test_transforms_round_trip_and_depth(out, scene):
    rec, frames = scene
    meta = json.loads((out / "transforms.json").read_text())
    K = rec.K_at(frames.height, frames.width)
    assert meta["camera_model"] == "PINHOLE" and (meta["w"], meta["h"]) == (frames.width, frames.height)
    assert (meta["fl_x"], meta["fl_y"], meta["cx"], meta["cy"]) == pytest.approx((K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5))
    np.testing.assert_allclose(read_transforms_c2w(out / "transforms.json"), rec.c2w, atol=1e-9)
    # OpenGL axes: the camera looks down its -z axis, so -z of transform_matrix is the view direction.
    gl = np.array(meta["frames"][2]["transform_matrix"])
    np.testing.assert_allclose(-gl[:3, 2], rec.c2w[2, :3, 2], atol=1e-12)
    unit = meta["depth_unit_scale_factor"]
    for i, f in enumerate(meta["frames"]):
        assert (out / f["file_path"]).is_file()
        png = cv2.imread(str(out / f["depth_file_path"]), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint16 and png.shape == rec.depth[i].shape
        np.testing.assert_allclose(png * unit, rec.depth[i], atol=unit)
    assert meta["ply_file_path"] == "points.ply" and (out / "points.ply").is_file()


def nerfstudio_applied_transform(data_dir: Path) -> np.ndarray:
    """The world transform nerfstudio's dataparser assumes was applied to a dataset's poses.

    The rule of ``nerfstudio/data/dataparsers/nerfstudio_dataparser.py`` (nerfstudio 1.1.5,
    ``_generate_dataparser_outputs``): the file's ``applied_transform`` (3 x 4) when
    present; otherwise, when ``<data>/colmap/sparse/0`` exists, the effective transform of
    its own COLMAP converter, ``[[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 0]]``; otherwise none.
    """
    meta = json.loads((data_dir / "transforms.json").read_text())
    if "applied_transform" in meta:
        return np.asarray(meta["applied_transform"], dtype=np.float64)
    if (data_dir / "colmap" / "sparse" / "0").exists():
        return np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 0]], dtype=np.float64)
    return np.eye(4)[:3]


def test_transforms_state_no_world_transform_beside_colmap(out, scene):
    """nerfstudio must not assume its COLMAP axis swap for flowmap's poses (issue 11.1): with
    OUT/colmap beside transforms.json, only an explicit identity keeps exports in flowmap's world."""
    rec, _ = scene
    assert (out / "colmap" / "sparse" / "0").is_dir()
    applied = nerfstudio_applied_transform(out)
    np.testing.assert_array_equal(applied, np.eye(4)[:3])
    # world points mapped back with the inverse of applied_transform land on poses.txt's centres
    centres = read_transforms_c2w(out / "transforms.json")[:, :3, 3]
    back = (centres - applied[:, 3]) @ np.linalg.inv(applied[:, :3]).T
    np.testing.assert_allclose(back, read_poses(out / "poses.txt")[1][:, :3, 3], atol=1e-6)


def test_transforms_without_colmap_writes_own_images(scene, tmp_path):
    rec, frames = scene
    cfg = OutputConfig(colmap=False, ply=False, report=False)
    out = write_outputs(rec, frames, tmp_path / "OUT", cfg)
    meta = json.loads((out / "transforms.json").read_text())
    assert not (out / "colmap").exists() and "ply_file_path" not in meta
    assert all((out / f["file_path"]).is_file() for f in meta["frames"])


# ----------------------------------------------------------------------------- OUT folder


def test_out_folder_files_and_summary(out, scene):
    rec, frames = scene
    names, c2w = read_poses(out / "poses.txt")
    assert names == frames.names
    np.testing.assert_allclose(c2w, rec.c2w, atol=1e-6)
    intr = read_intrinsics(out / "intrinsics.json")
    np.testing.assert_allclose(intr["K"], rec.K, atol=1e-6)
    assert (intr["width"], intr["height"]) == (frames.width, frames.height)
    for i, name in enumerate(names):
        depth = np.load(out / "depth" / f"{Path(name).stem}.npy")
        assert depth.dtype == np.float32 and np.array_equal(depth, rec.depth[i])
    s = json.loads((out / "summary.json").read_text())
    assert s["n_frames"] == rec.n and s["input"] == "synthetic"
    assert s["depth"]["resolution"] == list(rec.working_size)
    assert s["focal_px"] == pytest.approx(100.0) and s["losses"] == {"flow": 0.1}
    assert s["timings"]["optimization_s"] == 1.0 and s["time_s"] >= 1.0 + s["timings"]["outputs_s"] - 1e-9
    assert "test warning" in s["warnings"] and s["settings"]["outputs"]["max_points"] == CFG.max_points
    assert s["outputs"]["colmap"]["images"] == rec.n
    assert not list(out.parent.glob("OUT.tmp-*"))


def test_frames_that_could_not_be_registered_are_left_out_and_named(scene, tmp_path):
    """Issue 24: a frame without a measured pose is not written with a made-up one: poses,
    depth, COLMAP model and transforms.json hold the posed frames, summary.json names the
    others, and each posed frame keeps its own pose, depth and weights."""
    rec, frames = scene
    registered = np.ones(rec.n, bool)
    registered[[1, 4]] = False
    out = write_outputs(replace(rec, registered=registered), frames, tmp_path / "OUT", CFG)
    kept = np.flatnonzero(registered)
    names, c2w = read_poses(out / "poses.txt")
    assert names == [frames.names[k] for k in kept]
    np.testing.assert_allclose(c2w, rec.c2w[kept], atol=1e-6)
    assert sorted(p.stem for p in (out / "depth").glob("*.npy")) == [Path(n).stem for n in names]
    s = json.loads((out / "summary.json").read_text())
    assert s["unregistered_frames"] == [frames.names[1], frames.names[4]] and s["frames_posed"] == len(kept)
    model = pycolmap.Reconstruction(out / "colmap" / "sparse" / "0")
    assert sorted(img.name for img in model.images.values()) == names
    assert len(json.loads((out / "transforms.json").read_text())["frames"]) == len(kept)
    posed = replace(rec, registered=registered).posed()
    np.testing.assert_array_equal(posed.weights[1], rec.weights[kept[2] - 1])
    full = write_outputs(rec, frames, tmp_path / "ALL", CFG)
    s = json.loads((full / "summary.json").read_text())
    assert s["unregistered_frames"] == [] and s["frames_posed"] == rec.n


def test_existing_out_is_refused_then_replaced(scene, tmp_path):
    rec, frames = scene
    cfg = OutputConfig(colmap=False, transforms=False, ply=False, report=False)
    out = tmp_path / "OUT"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        write_outputs(rec, frames, out, cfg)
    assert (out / "old.txt").read_text() == "keep me" and not (out / "poses.txt").exists()
    write_outputs(rec, frames, out, cfg, overwrite=True)
    assert (out / "poses.txt").is_file() and not (out / "old.txt").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        write_outputs(rec, frames, tmp_path / "file", cfg)
    # An existing empty folder is fine.
    (tmp_path / "empty").mkdir()
    assert (write_outputs(rec, frames, tmp_path / "empty", cfg) / "summary.json").is_file()


def test_failure_mid_write_leaves_nothing(scene, tmp_path, monkeypatch):
    import flowmap.outputs as outputs

    rec, frames = scene

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(outputs, "write_transforms", broken)
    cfg = OutputConfig(colmap=False, ply=True, report=False, max_points=100)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_outputs(rec, frames, tmp_path / "OUT", cfg)
    assert list(tmp_path.iterdir()) == []
    # With overwrite, the previous OUT survives a failed run untouched.
    old = tmp_path / "OUT"
    old.mkdir()
    (old / "poses.txt").write_text("previous run")
    with pytest.raises(RuntimeError):
        write_outputs(rec, frames, old, cfg, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OUT"]
    assert (old / "poses.txt").read_text() == "previous run"


def test_report_is_called_and_its_errors_propagate(scene, tmp_path, monkeypatch):
    rec, frames = scene
    calls = []

    def fake_report(rec_arg, directory, gt_dir=None):
        calls.append(directory)
        (Path(directory) / "report.html").write_text("<html></html>")

    fake = types.ModuleType("flowmap.outputs.report")
    fake.write_report = fake_report
    monkeypatch.setitem(sys.modules, "flowmap.outputs.report", fake)
    cfg = OutputConfig(colmap=False, transforms=False, ply=False, report=True)
    out = write_outputs(rec, frames, tmp_path / "OUT", cfg)
    assert (out / "report.html").is_file() and calls[0].name.startswith("OUT.tmp-")

    def failing_report(*args, **kwargs):
        raise ValueError("report bug")

    fake.write_report = failing_report
    with pytest.raises(ValueError, match="report bug"):
        write_outputs(rec, frames, tmp_path / "OUT2", cfg)
    assert not (tmp_path / "OUT2").exists()
    # A missing report module (None in sys.modules makes the import fail) is skipped with a warning.
    monkeypatch.setitem(sys.modules, "flowmap.outputs.report", None)
    out3 = write_outputs(rec, frames, tmp_path / "OUT3", cfg)
    assert any("report" in w for w in json.loads((out3 / "summary.json").read_text())["warnings"])


# ----------------------------------------------------------------------------- real data: fox


def sphere_depth(c2w: np.ndarray, K: np.ndarray, h: int, w: int, centre: np.ndarray, radii: tuple[float, float]):
    """z-depth of the first hit of a small sphere, else the inside of a large one (both around centre)."""
    v, u = np.mgrid[0:h, 0:w].astype(float)
    d = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1) @ c2w[:3, :3].T
    o = c2w[:3, 3] - centre
    a = (d * d).sum(-1)
    b = 2 * d @ o
    depth = np.full((h, w), np.inf)
    for r, sign in ((radii[1], 1.0), (radii[0], -1.0)):  # far side of the big sphere, near side of the small
        disc = b * b - 4 * a * (o @ o - r * r)
        t = (-b + sign * np.sqrt(np.maximum(disc, 0))) / (2 * a)
        depth = np.where((disc > 0) & (t > 0), np.minimum(depth, t), depth)
    return depth.astype(np.float32)


@needs_data("fox")
def test_fox_ground_truth_exports_a_loadable_model(tmp_path):
    names, c2w = read_poses(DATA / "fox" / "poses.txt")
    intr = read_intrinsics(DATA / "fox" / "intrinsics.json")
    images = np.stack([cv2.imread(str(DATA / "fox" / "images" / n))[..., ::-1] for n in names])
    H, W = images.shape[1:3]
    h, w = H // 4, W // 4
    # The point nearest to all optical axes is the object; put a sphere there.
    A = np.zeros((3, 3))
    bvec = np.zeros(3)
    for T in c2w:
        P = np.eye(3) - np.outer(T[:3, 2], T[:3, 2])
        A += P
        bvec += P @ T[:3, 3]
    centre = np.linalg.solve(A, bvec)
    dist = np.linalg.norm(c2w[:, :3, 3] - centre, axis=1)
    rec0 = make_rec(c2w, intr["K"], (H, W), (h, w), names, depth=np.zeros((len(names), h, w), np.float32))
    K_work = rec0.K_at(h, w)
    depth = np.stack([sphere_depth(T, K_work, h, w, centre, (0.3 * dist.min(), 3 * dist.max())) for T in c2w])
    small = np.stack([cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA) for im in images])
    rec = replace(rec0, depth=depth, images=small)
    frames = Frames(images=images, names=names, source=DATA / "fox" / "images", source_indices=list(range(len(names))))
    cfg = OutputConfig(report=False, max_points=20_000, colmap_max_points=8000)
    out = write_outputs(rec, frames, tmp_path / "OUT", cfg)
    model = pycolmap.Reconstruction(out / "colmap" / "sparse" / "0")
    assert model.num_reg_images() == 50 and model.num_points3D() >= 5000
    camera = model.camera(1)
    assert camera.params[0] == pytest.approx(intr["fx"]) and camera.params[2] == pytest.approx(intr["cx"] + 0.5)
    gt_names, gt_c2w = read_poses(DATA / "fox" / "poses.txt")
    for name, T in zip(gt_names, gt_c2w):
        np.testing.assert_allclose(model.find_image_with_name(name).cam_from_world().inverse().matrix(), T[:3], atol=1e-6)
    np.testing.assert_allclose(read_poses(out / "poses.txt")[1], gt_c2w, atol=1e-6)
    assert read_intrinsics(out / "intrinsics.json")["K"] == pytest.approx(intr["K"], abs=1e-6)
    assert model.compute_mean_track_length() > 2
    err = depth_reprojection_errors(model, rec, frames)
    assert (err < 1.0).mean() > 0.98
    # Frames read from a folder are the input files themselves (no re-encoding).
    for name in names[:: len(names) // 5]:
        assert (out / "colmap" / "images" / name).read_bytes() == (DATA / "fox" / "images" / name).read_bytes()


def test_depth_unit_scale_fits_uint16():
    from flowmap.outputs.nerfstudio import depth_unit_scale

    assert depth_unit_scale(np.array([0.5, 4.0])) == 1e-3  # nerfstudio's default when it fits
    for top in (0.02, 0.9, 70.0, 12345.0):
        unit = depth_unit_scale(np.array([np.nan, 0.0, top]))
        assert top / unit <= 65535 < top / (unit / 10)


def test_frames_written_as_they_arrive_equal_the_batch_write(tmp_path):
    """write_frame_stream (frames decoded one at a time, encoded in threads) writes the
    same files, byte for byte, as write_images of the whole stack."""
    from flowmap.outputs.colmap import write_frame_stream, write_images

    ramp = np.linspace(0, 40, 32)[None, :, None]
    images = np.stack([np.broadcast_to(20 + 30 * k + ramp, (24, 32, 3)) for k in range(7)]).astype(np.uint8)
    names = [f"{k:06d}.jpg" for k in range(7)]
    frames = Frames(images=images, names=names, source=None, source_indices=list(range(7)))
    write_images(frames, tmp_path / "batch")
    stream = (frames.subset(np.asarray([k])) for k in range(7))
    assert write_frame_stream(stream, tmp_path / "stream", pending=2) == 7
    for name in names:
        assert (tmp_path / "stream" / name).read_bytes() == (tmp_path / "batch" / name).read_bytes()
    decoded = cv2.imread(str(tmp_path / "stream" / names[4]))[..., ::-1]
    assert np.abs(decoded.astype(int) - images[4]).mean() < 3  # the frame at its name, not a neighbour (30 levels apart)


def test_other_frames_staged_during_the_refinement_are_moved_in_not_read_again(tmp_path):
    """Images of frames that were not keyframes, encoded ahead into a staging folder,
    are moved into the model's folder byte for byte; only the missing ones are read and
    encoded, and the folder ends as if nothing had been staged."""
    from flowmap.outputs.colmap import write_frame_stream, write_other_images
    from flowmap.types import NonKeyframes

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 24, 32, 3), dtype=np.uint8)
    names = [f"{i:06d}.jpg" for i in range(4)]
    others = NonKeyframes(
        names=names[1:], source_indices=[1, 2, 3], positions=np.array([1, 2, 3]), c2w=np.tile(np.eye(4), (3, 1, 1)),
        registered=np.ones(3, bool), inliers=np.full(3, 100),
    )
    asked: list[list[int]] = []

    def read(positions):
        asked.append(list(positions))
        for k in positions:
            yield Frames(images=images[k : k + 1], names=[names[k]], source=tmp_path / "clip.mp4", source_indices=[k])

    plain = tmp_path / "plain"
    write_other_images(others, read, plain, 90)
    staged = tmp_path / "stage"
    write_frame_stream(read([2]), staged, 90)
    ahead = (staged / names[2]).read_bytes()
    asked.clear()
    out = tmp_path / "out"
    write_other_images(others, read, out, 90, staged)
    assert asked == [[1, 3]]  # the staged frame is not read again
    assert not (staged / names[2]).exists() and (out / names[2]).read_bytes() == ahead
    assert sorted(p.name for p in out.iterdir()) == names[1:]
    for name in names[1:]:
        assert (out / name).read_bytes() == (plain / name).read_bytes()
