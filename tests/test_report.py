"""Tests for the visual report and the viewer's scene data (flowmap.outputs.report / viewer)."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np
import pytest

from flowmap.errors import InputError
from flowmap.evaluation import evaluate_reconstruction, read_ground_truth
from flowmap.outputs import OutputConfig, write_outputs
from flowmap.layout import write_intrinsics, write_poses
from flowmap.outputs.ply import write_ply
from flowmap.outputs.report import _fmt, ground_truth_in_prediction_frame, view_axes, write_report
from flowmap.outputs.viewer import build_scene
from flowmap.types import Frames, Reconstruction
from conftest import SHARED_DATA, needs_data, require_data

DATA = SHARED_DATA
FOX = DATA / "fox"
WORK_W, WORK_H = 90, 160  # fox is portrait, 360 x 640


def fox_reconstruction(scale: float = 0.3) -> Reconstruction:
    """A Reconstruction built from fox's ground truth (first frame = identity, scaled)
    with synthetic depth (plane plus gradient), random weights and a decreasing history."""
    require_data("fox")
    names, c2w_gt, intr = read_ground_truth(FOX)
    c2w = np.linalg.inv(c2w_gt[0]) @ c2w_gt
    c2w[:, :3, 3] *= scale
    n = len(names)
    images = np.stack([
        cv2.resize(cv2.imread(str(FOX / "images" / name))[..., ::-1], (WORK_W, WORK_H), interpolation=cv2.INTER_AREA)
        for name in names
    ])
    yy, xx = np.mgrid[0:WORK_H, 0:WORK_W].astype(np.float32)
    depth = np.stack([2.0 + 0.01 * yy + 0.005 * xx + 0.02 * i for i in range(n)]).astype(np.float32)
    rng = np.random.default_rng(0)
    weights = rng.uniform(0.0, 1.0, (n - 1, WORK_H, WORK_W)).astype(np.float32)
    steps = np.arange(0, 2000, 20)
    history = [
        {"step": float(s), "loss": 1.0 * np.exp(-s / 400) + 0.01, "flow": 0.8 * np.exp(-s / 400) + 0.008,
         "tracks": 0.2 * np.exp(-s / 300) + 0.002, "focal": 400 + 58 * (1 - np.exp(-s / 200))}
        for s in steps
    ]
    K = np.array([[intr["fx"], 0, 179.5], [0, intr["fy"], 319.5], [0, 0, 1]])
    return Reconstruction(
        c2w=c2w, K=K, depth=depth, weights=weights, names=names,
        image_size=(int(intr["height"]), int(intr["width"])), images=images,
        losses={"loss": 0.0105, "flow": 0.0081, "tracks": 0.0024},
        history=history, timings={"correspondences_s": 12.3, "optimization_s": 95.1},
        settings={"device_resolved": "cpu"}, warnings=["example warning <b>escaped</b>"],
    )


@pytest.fixture(scope="module")
def fox_rec() -> Reconstruction:
    return fox_reconstruction()


@needs_data("fox")
def test_report_files_with_ground_truth(fox_rec, tmp_path):
    html_path = write_report(fox_rec, tmp_path / "out", gt_dir=FOX)
    png_path = tmp_path / "out" / "report.png"
    assert html_path == tmp_path / "out" / "report.html"
    image = cv2.imread(str(png_path))
    assert image is not None
    assert 900 <= image.shape[1] <= 2500 and 700 <= image.shape[0] <= 2500
    assert image.std() > 10  # something was drawn
    text = html_path.read_text()
    assert "data:image/png;base64," in text and "ate_paper" in text
    assert "&lt;b&gt;escaped&lt;/b&gt;" in text  # warnings are escaped
    # the numbers shown are the reconstruction's: metrics against the ground truth, losses, timings
    metrics = evaluate_reconstruction(fox_rec, FOX)
    for key in ("ate_paper", "focal_rel_error", "registration_rate"):
        assert f"<td>{_fmt(metrics[key])}</td>" in text, key
    for value in (*fox_rec.losses.values(), *fox_rec.timings.values()):
        assert f"<td>{_fmt(value)}</td>" in text, value
    embedded = base64.b64decode(text.split("data:image/png;base64,")[1].split('"')[0])
    assert embedded == png_path.read_bytes()  # the page shows this run's figure
    assert not list((tmp_path / "out").glob(".*.tmp-*"))


def test_report_without_ground_truth_or_history(fox_rec, tmp_path):
    bare = Reconstruction(
        c2w=fox_rec.c2w[:4], K=fox_rec.K, depth=fox_rec.depth[:4], weights=fox_rec.weights[:3],
        names=fox_rec.names[:4], image_size=fox_rec.image_size, images=fox_rec.images[:4],
    )
    html_path = write_report(bare, tmp_path)
    assert cv2.imread(str(tmp_path / "report.png")) is not None
    assert "ate_paper" not in html_path.read_text()


def test_report_missing_ground_truth_folder(fox_rec, tmp_path):
    with pytest.raises(InputError):
        write_report(fox_rec, tmp_path, gt_dir=tmp_path / "nope")


@needs_data("fox")
def test_ground_truth_overlay_matches_prediction(fox_rec):
    # The test reconstruction is the ground truth up to a similarity, so the aligned
    # ground truth must coincide with it.
    aligned = ground_truth_in_prediction_frame(fox_rec, FOX)
    np.testing.assert_allclose(aligned, fox_rec.c2w, atol=1e-6)


def test_view_axes_orthonormal_and_up(fox_rec):
    axes = view_axes(fox_rec.c2w)
    np.testing.assert_allclose(axes @ axes.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(axes) > 0
    # up opposes the mean camera y axis (OpenCV y points down)
    assert axes[2] @ fox_rec.c2w[:, :3, 1].mean(axis=0) < 0


# --- viewer scene ---------------------------------------------------------------------


def _write_output_folder(folder: Path, rec: Reconstruction, n_points: int = 500) -> np.ndarray:
    """poses.txt, intrinsics.json, points.ply and images/ (first 3 frames) of an output folder."""
    folder.mkdir(parents=True)
    H, W = rec.image_size
    write_poses(folder / "poses.txt", rec.names, rec.c2w)
    write_intrinsics(folder / "intrinsics.json", rec.K, W, H, "test")
    rng = np.random.default_rng(1)
    xyz = rng.normal(size=(n_points, 3)).astype(np.float32)
    write_ply(folder / "points.ply", xyz, rng.integers(0, 256, (n_points, 3), dtype=np.uint8))
    (folder / "images").mkdir()
    for name, image in zip(rec.names[:3], rec.images[:3]):
        cv2.imwrite(str(folder / "images" / name), image[..., ::-1])
    return xyz


def test_build_scene_shapes_and_geometry(fox_rec, tmp_path):
    xyz = _write_output_folder(tmp_path / "out", fox_rec)
    scene = build_scene(tmp_path / "out")
    n = fox_rec.n
    assert scene["positions"].shape == (n, 3)
    assert scene["wxyz"].shape == (n, 4)
    assert scene["frustum_corners"].shape == (n, 4, 3)
    np.testing.assert_allclose(scene["positions"], fox_rec.c2w[:, :3, 3], atol=1e-6)
    np.testing.assert_allclose(scene["points"], xyz, atol=1e-6)
    assert scene["colors"].shape == (500, 3) and scene["colors"].dtype == np.uint8
    # frustum corners lie in front of their camera at depth `frustum_depth`
    w2c = np.linalg.inv(fox_rec.c2w)
    local = np.einsum("nij,nkj->nki", w2c[:, :3, :3], scene["frustum_corners"] - scene["positions"][:, None])
    np.testing.assert_allclose(local[..., 2], scene["frustum_depth"], rtol=1e-6)
    H, W = fox_rec.image_size
    assert scene["aspect"] == pytest.approx(W / H)
    assert scene["fov_y"] == pytest.approx(2 * np.arctan(H / (2 * fox_rec.K[1, 1])))
    # images found for the frames written, None for the others
    assert scene["images"][0].shape[2] == 3 and scene["images"][5] is None


def test_build_scene_missing_folder(tmp_path):
    with pytest.raises(InputError):
        build_scene(tmp_path / "missing")


@needs_data("fox")
def test_build_scene_on_a_written_output_folder(fox_rec, tmp_path):
    # The folder written by the output stage (frames in images/, report on) is what the
    # viewer reads; the frames are given at the working resolution here to stay fast.
    n = 8
    rec = Reconstruction(
        c2w=fox_rec.c2w[:n], K=fox_rec.K_at(WORK_H, WORK_W), depth=fox_rec.depth[:n], weights=fox_rec.weights[: n - 1],
        names=fox_rec.names[:n], image_size=(WORK_H, WORK_W), images=fox_rec.images[:n], history=fox_rec.history,
    )
    frames = Frames(images=rec.images, names=rec.names, source=FOX, source_indices=list(range(n)))
    out = write_outputs(rec, frames, tmp_path / "out", OutputConfig(colmap=False, transforms=True, report=True))
    assert cv2.imread(str(out / "report.png")) is not None and (out / "report.html").stat().st_size > 10_000
    scene = build_scene(out)
    assert scene["names"] == rec.names
    np.testing.assert_allclose(scene["c2w"], rec.c2w, atol=1e-6)
    assert all(image is not None and image.shape == (round(WORK_H * 160 / WORK_W), 160, 3) for image in scene["images"])
    assert scene["aspect"] == pytest.approx(WORK_W / WORK_H)
