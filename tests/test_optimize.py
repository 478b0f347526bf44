"""The optimisation loop: synthetic scene with known answers, real fox frames, NaN safety, resume."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from flowmap.correspondences.cache import compute_correspondences
from flowmap.correspondences.flow import FlowConfig
from flowmap.correspondences.tracks import TrackConfig
from flowmap.evaluation import ate_paper, evaluate_reconstruction
from flowmap.frames import FrameConfig, load_frames, working_shape
from flowmap.model.depth import DepthNetConfig
from flowmap.optimize import CHECKPOINT_NAME, OptimConfig, check_result, optimize
from flowmap.synthetic import make_scene
from flowmap.types import Frames

FOX = Path(__file__).resolve().parents[2] / "shared" / "data" / "fox"


def _frames(images: np.ndarray) -> Frames:
    return Frames(images, [f"{i:06d}.png" for i in range(len(images))], Path("synthetic"), list(range(len(images))))


@pytest.fixture(scope="module")
def small_scene():
    """A 10-frame orbit at 96 x 128 with its correspondences at 48 x 64 (built once)."""
    scene = make_scene(n_frames=10, height=96, width=128, seed=1)
    frames = _frames(scene.images)
    shape = working_shape(frames.height, frames.width, 48 * 64, 16)
    corr = compute_correspondences(frames.images, shape, FlowConfig(), TrackConfig(), progress=False)
    return scene, frames, corr


def _cfg(steps: int, **kw) -> OptimConfig:
    return replace(OptimConfig(), steps=steps, window=6, log_every=1, **kw)


def test_synthetic_scene_poses_and_focal(small_scene):
    """With the true focal the poses match the rendered camera path tightly; the loss decreases."""
    scene, frames, corr = small_scene
    rec = optimize(frames, corr, _cfg(150), focal_px=float(scene.K[0, 0]), progress=False)
    ate = ate_paper(rec.c2w[:, :3, 3], scene.c2w[:, :3, 3])
    losses = [h["loss"] for h in rec.history]
    assert ate < 0.02, ate
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])


def test_nan_loss_step_is_skipped_and_run_stays_finite(small_scene):
    """A NaN injected into one step's loss is skipped (with a warning) and does not corrupt the result."""
    _, frames, corr = small_scene
    rec = optimize(frames, corr, _cfg(12), progress=False, fault_step=5)
    assert any("step 5" in w for w in rec.warnings)
    assert np.isfinite(rec.c2w).all() and np.isfinite(rec.depth).all() and (rec.depth > 0).all()


def test_too_many_nan_steps_raise_numerical_error(small_scene):
    from flowmap.errors import NumericalError

    _, frames, corr = small_scene
    with pytest.raises(NumericalError, match="diverged"):
        optimize(frames, corr, _cfg(12, max_bad_steps=0), progress=False, fault_step=3)


def test_check_result_rejects_invalid_cameras():
    from flowmap.errors import NumericalError

    c2w = np.tile(np.eye(4), (3, 1, 1))
    depth = np.ones((3, 4, 4), np.float32)
    check_result(c2w, depth, 100.0)
    bad = c2w.copy()
    bad[1, :3, :3] *= 1.1
    with pytest.raises(NumericalError, match="rotations"):
        check_result(bad, depth, 100.0)
    with pytest.raises(NumericalError, match="non-finite"):
        check_result(c2w, depth * np.nan, 100.0)
    with pytest.raises(NumericalError, match="non-positive"):
        check_result(c2w, -depth, 100.0)


def test_resume_from_checkpoint_equals_uninterrupted_run(small_scene, tmp_path, monkeypatch):
    """Interrupt after a checkpoint, resume, and end with the same poses as a run without interruption."""
    import flowmap.optimize as opt_module

    _, frames, corr = small_scene
    cfg = _cfg(20, checkpoint_every=5)
    full = optimize(frames, corr, cfg, progress=False)

    original = opt_module._step_losses
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 13:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(opt_module, "_step_losses", interrupted)
    with pytest.raises(KeyboardInterrupt):
        optimize(frames, corr, cfg, progress=False, checkpoint_dir=tmp_path)
    monkeypatch.setattr(opt_module, "_step_losses", original)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["step"] == 10
    resumed = optimize(frames, corr, cfg, progress=False, checkpoint_dir=tmp_path)
    assert ate_paper(resumed.c2w[:, :3, 3], full.c2w[:, :3, 3]) < 1e-4
    assert abs(resumed.K[0, 0] - full.K[0, 0]) < 1e-3 * full.K[0, 0]


def test_checkpoint_of_another_run_is_ignored(small_scene, tmp_path):
    """A checkpoint written with other settings is not resumed from."""
    _, frames, corr = small_scene
    optimize(frames, corr, _cfg(12, checkpoint_every=5), progress=False, checkpoint_dir=tmp_path, seed=1)
    a = optimize(frames, corr, _cfg(12, checkpoint_every=5), progress=False, checkpoint_dir=tmp_path, seed=2)
    b = optimize(frames, corr, _cfg(12, checkpoint_every=5), progress=False, seed=2)
    assert np.allclose(a.c2w, b.c2w, atol=1e-5)


def test_short_real_run_on_fox():
    """12 fox frames, few steps: finite outputs, a pose per frame, and a decreasing loss."""
    frames = load_frames(FOX / "images", FrameConfig(max_frames=12, pixel_budget=96 * 64))
    shape = working_shape(frames.height, frames.width, 96 * 64, 16)
    corr = compute_correspondences(frames.images, shape, FlowConfig(), TrackConfig(), progress=False)
    rec = optimize(frames, corr, _cfg(60), progress=False)
    assert rec.c2w.shape == (12, 4, 4) and rec.depth.shape == (12, *shape)
    assert np.isfinite(rec.c2w).all() and np.isfinite(rec.depth).all() and (rec.depth > 0).all()
    losses = [h["loss"] for h in rec.history]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    metrics = evaluate_reconstruction(rec, FOX)
    assert metrics["registration_rate"] == pytest.approx(12 / 50)
    assert np.isfinite(metrics["ate_paper"])


def test_synthetic_scene_focal_is_estimated():
    """Without the focal: the softmin-then-learned focal lands near the true one and poses stay accurate."""
    scene = make_scene(n_frames=10, height=120, width=160, seed=4, fov_deg=70)
    frames = _frames(scene.images)
    shape = working_shape(frames.height, frames.width, 96 * 128, 16)
    corr = compute_correspondences(frames.images, shape, FlowConfig(), TrackConfig(), progress=False)
    # At 96 x 128 working pixels the network runs at half resolution (the default quarter
    # would leave it 24 x 32 pixels).
    cfg = _cfg(400, depth=DepthNetConfig(net_downsample=2))
    rec = optimize(frames, corr, cfg, progress=False)
    print(f"focal {rec.K[0, 0]:.1f} vs {scene.K[0, 0]:.1f}")
    focal_error = abs(rec.K[0, 0] - scene.K[0, 0]) / scene.K[0, 0]
    ate = ate_paper(rec.c2w[:, :3, 3], scene.c2w[:, :3, 3])
    assert focal_error < 0.1, (rec.K[0, 0], scene.K[0, 0])
    assert ate < 0.03, ate
