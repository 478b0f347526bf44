"""The optimisation loop and the final solve: synthetic scene with known answers, real fox
frames, the objective at the true cameras, window sampling, the focal switch, NaN safety,
checkpoints and resume."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from flowmap.correspondences import compute_correspondences
from flowmap.evaluation import ate_paper, evaluate_named, read_ground_truth
from flowmap.frames import FrameConfig, load_frames, working_shape
from flowmap.geometry import K_normalised, invert_rigid
from flowmap.model.depth import DepthNetConfig
from flowmap.objective import flow_loss, track_loss
from flowmap.checkpoint import CHECKPOINT_NAME
from flowmap.frames import resize_images
from flowmap.model.flowmap import VideoTensors
from flowmap.optimize import OptimConfig, fit, sample_window
from flowmap.solve import check_solution, solve
from flowmap.synthetic import make_scene
from flowmap.types import Frames, Solution
from conftest import SHARED_DATA, needs_data

FOX = SHARED_DATA / "fox"


def _frames(images: np.ndarray) -> Frames:
    return Frames(images, [f"{i:06d}.png" for i in range(len(images))], Path("synthetic"), list(range(len(images))))


@pytest.fixture(scope="module")
def small_scene():
    """A 10-frame orbit at 96 x 128 with its correspondences at 48 x 64 (built once)."""
    scene = make_scene(n_frames=10, height=96, width=128, seed=1)
    frames = _frames(scene.images)
    shape = working_shape(frames.height, frames.width, 48 * 64, 16)
    corr = compute_correspondences(frames.images, shape, progress=False)
    return scene, frames, corr


def optimize(frames: Frames, corr, cfg: OptimConfig, focal_px=None, **kwargs):
    """Fit, then solve all frames: (Fit, Solution) of the pipeline's two stages."""
    data = VideoTensors.from_numpy(resize_images(frames.images, corr.shape), corr, "cpu")
    fitted = fit(data, cfg, (frames.height, frames.width), focal_px=focal_px, **kwargs)
    return fitted, solve(fitted.model, data, fitted.focal_px, corr.bridges, cfg.objective.huber_delta)


def _cfg(steps: int, **kw) -> OptimConfig:
    return replace(OptimConfig(), steps=steps, window=6, log_every=1, **kw)


def straight_line_ate(c2w_gt: np.ndarray) -> float:
    """ate_paper of a trivial answer: cameras evenly spaced on a straight line."""
    n = len(c2w_gt)
    line = np.zeros((n, 3))
    line[:, 0] = np.arange(n)
    return ate_paper(line, c2w_gt[:, :3, 3])


def test_synthetic_scene_poses_and_focal(small_scene):
    """With the true focal the poses match the rendered path far better than a straight line; the loss decreases."""
    scene, frames, corr = small_scene
    fitted, sol = optimize(frames, corr, _cfg(150), focal_px=float(scene.K[0, 0]), progress=False)
    ate = ate_paper(sol.c2w[:, :3, 3], scene.c2w[:, :3, 3])
    trivial = straight_line_ate(scene.c2w)
    losses = [h["loss"] for h in fitted.history]
    assert ate < 0.5 * trivial and ate < 0.02, (ate, trivial)
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])


def _true_geometry(scene, corr):
    """Normalised K, true relative poses T_{i <- i+1} and true depth at the working resolution (torch)."""
    h, w = corr.shape
    H, W = scene.images.shape[1:3]
    K = K_normalised(scene.K, H, W)
    c2w = torch.as_tensor(scene.c2w, dtype=torch.float32)
    T = invert_rigid(c2w[:-1]) @ c2w[1:]
    depth = torch.as_tensor(np.stack([cv2.resize(d, (w, h), interpolation=cv2.INTER_AREA) for d in scene.depth]))
    return K, c2w, T, depth


def _losses(data: VideoTensors, K, c2w, T, depth) -> tuple[float, float]:
    flow = flow_loss(depth, K, T, data.grid, data.flow_fwd, data.flow_bwd, data.mask_fwd, data.mask_bwd, 0.01)
    tracks = track_loss(depth, K, c2w, data.tracks_xy, data.tracks_visible, data.tracks_query, 0.01)
    return float(flow), float(tracks)


def test_flow_and_track_losses_vanish_at_the_true_cameras(small_scene):
    """The objective at the rendered cameras and depths is near zero and grows under a perturbation."""
    scene, frames, corr = small_scene
    data = VideoTensors.from_numpy(resize_images(frames.images, corr.shape), corr, "cpu")
    K, c2w, T, depth = _true_geometry(scene, corr)
    flow, tracks = _losses(data, K, c2w, T, depth)
    # what is left is the estimated correspondences' own error: Huber of ~0.3 px (flow)
    # and ~1 px (tracks, chained over up to 20 frames) at 64 px width
    assert flow < 5e-5 and tracks < 4e-4, (flow, tracks)
    R = torch.as_tensor(cv2.Rodrigues(np.array([0.0, np.radians(5.0), 0.0]))[0], dtype=torch.float32)
    c2w_bad = c2w.clone()  # every other camera turned by 5 degrees about its y axis
    c2w_bad[1::2, :3, :3] = c2w[1::2, :3, :3] @ R
    T_bad = invert_rigid(c2w_bad[:-1]) @ c2w_bad[1:]
    flow_bad, tracks_bad = _losses(data, K, c2w_bad, T_bad, depth)
    assert flow_bad > 10 * flow and tracks_bad > 3 * tracks, (flow, flow_bad, tracks, tracks_bad)
    K_bad = K.clone()
    K_bad[0, 0] *= 1.3
    K_bad[1, 1] *= 1.3
    assert _losses(data, K_bad, c2w, T, depth)[0] > 2 * flow


def test_window_sampling_is_uniform_and_stays_inside():
    g = torch.Generator().manual_seed(0)
    starts = [sample_window(12, 5, g) for _ in range(4000)]
    assert min(starts) == 0 and max(starts) == 7
    counts = np.bincount(starts, minlength=8)
    assert counts.min() > 0.8 * 500 and counts.max() < 1.2 * 500
    assert {sample_window(4, 10, g) for _ in range(50)} == {0}  # window longer than the video: all frames
    assert {sample_window(6, 0, g) for _ in range(50)} == {0}  # 0: all frames


def test_focal_switch_starts_the_learned_focal_at_the_mean_of_the_last_estimates(small_scene):
    """Half-way, the softmin focal becomes a learned one initialised at the mean of the last estimates."""
    _, frames, corr = small_scene
    cfg = _cfg(20)
    cfg = replace(cfg, focal=replace(cfg.focal, average_last=5))
    fitted, _ = optimize(frames, corr, cfg, progress=False)
    assert fitted.model.learned_focal is not None and not fitted.model.searching_focal
    focals = [h["focal"] for h in fitted.history]  # log_every=1: one entry per step
    switch = int(cfg.focal.switch_fraction * cfg.steps)
    init = float(np.mean(focals[switch - 5 : switch]))
    # the first learned step uses the initial value (its update comes after the forward)
    assert focals[switch] == pytest.approx(init, rel=1e-5)
    assert fitted.focal_px == pytest.approx(float(fitted.model.learned_focal().detach()))


def test_one_step_uses_the_softmin_estimate_of_that_step(small_scene):
    """--steps 1: the switch falls on step 0 with no history; the focal is that step's softmin estimate."""
    _, frames, corr = small_scene
    fitted, sol = optimize(frames, corr, _cfg(1), progress=False)
    assert fitted.model.learned_focal is None
    assert len(fitted.history) == 1 and np.isfinite(fitted.focal_px)
    assert fitted.focal_px == pytest.approx(fitted.history[0]["focal"], rel=1e-6)
    assert sol.K[0, 0] == pytest.approx(fitted.focal_px, rel=1e-6)


def test_nan_loss_step_is_skipped_and_run_stays_finite(small_scene):
    """A NaN injected into one step's loss is skipped (with a warning) and does not corrupt the result."""
    _, frames, corr = small_scene
    fitted, sol = optimize(frames, corr, _cfg(12), progress=False, fault_step=5)
    assert any("step 5" in w for w in fitted.warnings)
    assert np.isfinite(sol.c2w).all() and np.isfinite(sol.depth).all() and (sol.depth > 0).all()


def test_too_many_nan_steps_raise_numerical_error(small_scene):
    from flowmap.errors import NumericalError

    _, frames, corr = small_scene
    with pytest.raises(NumericalError, match="diverged"):
        optimize(frames, corr, _cfg(12, max_bad_steps=0), progress=False, fault_step=3)


def test_check_solution_rejects_invalid_cameras():
    from flowmap.errors import NumericalError

    def solution(c2w, depth, f=100.0):
        return Solution(c2w, np.diag([f, f, 1.0]), depth, np.ones((2, 4, 4), np.float32), (4, 4))

    c2w = np.tile(np.eye(4), (3, 1, 1))
    depth = np.ones((3, 4, 4), np.float32)
    check_solution(solution(c2w, depth))
    bad = c2w.copy()
    bad[1, :3, :3] *= 1.1
    with pytest.raises(NumericalError, match="rotations"):
        check_solution(solution(bad, depth))
    with pytest.raises(NumericalError, match="non-finite"):
        check_solution(solution(c2w, depth * np.nan))
    with pytest.raises(NumericalError, match="non-positive"):
        check_solution(solution(c2w, -depth))


def test_resume_from_checkpoint_equals_uninterrupted_run(small_scene, tmp_path, monkeypatch):
    """Interrupt after a checkpoint, resume, and end with the same poses as a run without interruption."""
    import flowmap.optimize as opt_module

    _, frames, corr = small_scene
    cfg = _cfg(20, checkpoint_every=5)
    _, full = optimize(frames, corr, cfg, progress=False)

    original = opt_module.window_losses
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 13:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(opt_module, "window_losses", interrupted)
    with pytest.raises(KeyboardInterrupt):
        optimize(frames, corr, cfg, progress=False, checkpoint_dir=tmp_path)
    monkeypatch.setattr(opt_module, "window_losses", original)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["step"] == 10
    _, resumed = optimize(frames, corr, cfg, progress=False, checkpoint_dir=tmp_path)
    assert ate_paper(resumed.c2w[:, :3, 3], full.c2w[:, :3, 3]) < 1e-4
    assert abs(resumed.K[0, 0] - full.K[0, 0]) < 1e-3 * full.K[0, 0]


def test_checkpoint_of_another_run_is_ignored(small_scene, tmp_path):
    """A checkpoint written with other settings is not resumed from."""
    _, frames, corr = small_scene
    optimize(frames, corr, _cfg(12, checkpoint_every=5), progress=False, checkpoint_dir=tmp_path, seed=1)
    _, a = optimize(frames, corr, _cfg(12, checkpoint_every=5), progress=False, checkpoint_dir=tmp_path, seed=2)
    _, b = optimize(frames, corr, _cfg(12, checkpoint_every=5), progress=False, seed=2)
    assert np.allclose(a.c2w, b.c2w, atol=1e-5)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_unreadable_checkpoint_is_a_miss_with_a_warning(small_scene, tmp_path, damage):
    """A truncated or corrupt checkpoint is never trusted: the run starts again, says so, ends as a fresh run."""
    _, frames, corr = small_scene
    cfg = _cfg(12, checkpoint_every=5)
    optimize(frames, corr, replace(cfg, steps=7), progress=False, checkpoint_dir=tmp_path)  # leaves step 5
    path = tmp_path / CHECKPOINT_NAME
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00not a checkpoint" * 50, "empty": b""}[damage])
    fitted, sol = optimize(frames, corr, cfg, progress=False, checkpoint_dir=tmp_path)
    assert any("checkpoint.pt could not be read" in w for w in fitted.warnings), fitted.warnings
    _, fresh = optimize(frames, corr, cfg, progress=False)
    assert np.allclose(sol.c2w, fresh.c2w, atol=1e-5)


@needs_data("fox")
def test_short_real_run_on_fox():
    """12 fox frames, few steps: a pose per frame, a decreasing loss, and poses near the ground truth."""
    frames = load_frames(FOX / "images", FrameConfig(max_frames=12, pixel_budget=96 * 64))
    shape = working_shape(frames.height, frames.width, 96 * 64, 16)
    corr = compute_correspondences(frames.images, shape, progress=False)
    fitted, sol = optimize(frames, corr, _cfg(60), progress=False)
    assert sol.c2w.shape == (12, 4, 4) and sol.depth.shape == (12, *shape)
    losses = [h["loss"] for h in fitted.history]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    H, W = sol.image_size
    intr = {"width": W, "height": H, "fx": sol.K[0, 0], "fy": sol.K[1, 1]}
    metrics = evaluate_named(list(frames.names), sol.c2w, intr, FOX)
    assert metrics["n_registered"] == 12
    gt_names, gt_c2w, _ = read_ground_truth(FOX)
    gt = gt_c2w[[gt_names.index(n) for n in frames.names]]
    trivial = straight_line_ate(gt)
    assert metrics["ate_paper"] < 0.5 * trivial, (metrics["ate_paper"], trivial)


def test_synthetic_scene_focal_is_estimated():
    """Without the focal: the softmin-then-learned focal lands near the true one and poses beat a straight line."""
    scene = make_scene(n_frames=10, height=120, width=160, seed=4, fov_deg=70)
    frames = _frames(scene.images)
    shape = working_shape(frames.height, frames.width, 96 * 128, 16)
    corr = compute_correspondences(frames.images, shape, progress=False)
    # At 96 x 128 working pixels the network runs at half resolution (the default quarter
    # would leave it 24 x 32 pixels).
    cfg = _cfg(400, depth=DepthNetConfig(net_downsample=2))
    _, sol = optimize(frames, corr, cfg, progress=False)
    print(f"focal {sol.K[0, 0]:.1f} vs {scene.K[0, 0]:.1f}")
    focal_error = abs(sol.K[0, 0] - scene.K[0, 0]) / scene.K[0, 0]
    ate = ate_paper(sol.c2w[:, :3, 3], scene.c2w[:, :3, 3])
    trivial = straight_line_ate(scene.c2w)
    assert focal_error < 0.1, (sol.K[0, 0], scene.K[0, 0])
    assert ate < 0.5 * trivial, (ate, trivial)


def test_final_solve_is_the_same_in_any_chunk_size(small_scene):
    """The final solve runs the network and the pairs ``chunk`` frames at a time (the
    previous chunk's last frame carried over) and sums the flow loss chunk by chunk, to
    bound its memory: any chunk size gives the same cameras, depth, weights and losses as
    one pass over the whole video."""
    _, frames, corr = small_scene
    data = VideoTensors.from_numpy(resize_images(frames.images, corr.shape), corr, "cpu")
    fitted = fit(data, _cfg(2), (frames.height, frames.width))
    whole = solve(fitted.model, data, fitted.focal_px, chunk=frames.n)
    for chunk in (1, 3, 4):
        part = solve(fitted.model, data, fitted.focal_px, chunk=chunk)
        np.testing.assert_allclose(part.c2w, whole.c2w, atol=1e-6)
        np.testing.assert_allclose(part.depth, whole.depth, rtol=1e-5)
        np.testing.assert_allclose(part.weights, whole.weights, atol=1e-6)
        assert part.losses["flow"] == pytest.approx(whole.losses["flow"], rel=1e-5)
        assert part.losses["tracks"] == pytest.approx(whole.losses["tracks"], rel=1e-5)
