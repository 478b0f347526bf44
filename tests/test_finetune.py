"""Depth fine-tuning with fixed cameras (flowmap.finetune) on the synthetic scene: with the
true cameras and points sampled from the true surfaces, a mis-scaled, perturbed depth
network comes closer to the true depth, and the cameras are left untouched."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from flowmap.correspondences import compute_correspondences
from flowmap.finetune import FinetuneConfig, finetune_depth
from flowmap.frames import resize_images, working_shape
from flowmap.model.depth import DepthNetConfig
from flowmap.model.flowmap import FlowMapModel, VideoTensors
from flowmap.model.intrinsics import FocalConfig
from flowmap.model.weights import WeightMLPConfig
from flowmap.synthetic import make_scene


@pytest.fixture(scope="module")
def scene_data():
    """An 8-frame orbit at 96 x 128, correspondences and true depth at 48 x 64 (built once)."""
    scene = make_scene(n_frames=8, height=96, width=128, seed=1)
    shape = working_shape(96, 128, 48 * 64, 16)
    corr = compute_correspondences(scene.images, shape, progress=False)
    data = VideoTensors.from_numpy(resize_images(scene.images, shape), corr, "cpu")
    h, w = shape
    # True z-depth at the working pixel centres (nearest sample of the rendered depth).
    rows = np.clip(np.rint((np.arange(h) + 0.5) * 96 / h - 0.5).astype(int), 0, 95)
    cols = np.clip(np.rint((np.arange(w) + 0.5) * 128 / w - 0.5).astype(int), 0, 127)
    depth_true = scene.depth[:, rows][:, :, cols]
    return scene, data, depth_true


def _points(scene, n_per_frame: int = 150, seed: int = 0) -> np.ndarray:
    """World points on the true surfaces: random input pixels of each frame unprojected with the true depth."""
    rng = np.random.default_rng(seed)
    H, W = scene.depth.shape[1:]
    Kinv = np.linalg.inv(scene.K)
    out = []
    for i in range(len(scene.images)):
        v, u = rng.integers(0, H, n_per_frame), rng.integers(0, W, n_per_frame)
        z = scene.depth[i, v, u].astype(np.float64)
        cam = (Kinv @ np.stack([u, v, np.ones_like(u)]).astype(np.float64)).T * z[:, None]
        out.append(cam @ scene.c2w[i, :3, :3].T + scene.c2w[i, :3, 3])
    return np.concatenate(out)


def _log_error(depth: np.ndarray, depth_true: np.ndarray) -> float:
    """Median |log(d / d_true)| over all pixels."""
    return float(np.median(np.abs(np.log(depth / depth_true))))


def _misscaled_model(scene, depth_true: np.ndarray, factor: float) -> FlowMapModel:
    """A fresh network (constant depth) set to ``factor`` x the true median depth, weights perturbed."""
    torch.manual_seed(0)
    model = FlowMapModel(DepthNetConfig(), WeightMLPConfig(), FocalConfig(), (96, 128), known_focal=float(scene.K[0, 0]))
    with torch.no_grad():
        model.depth_net.head.bias.fill_(float(np.log(factor * np.median(depth_true))))
        model.depth_net.head.weight.normal_(0.0, 1e-3)
    return model


def test_finetune_with_true_cameras_recovers_depth(scene_data):
    """Flow + tracks + points with the true cameras bring a 1.3x mis-scaled depth network
    much closer to the true depth and to the points; cameras and K are not modified."""
    scene, data, depth_true = scene_data
    model = _misscaled_model(scene, depth_true, 1.3)
    c2w, K = scene.c2w.copy(), scene.K.copy()
    cfg = replace(FinetuneConfig(), steps=120, lr=1e-3, window=8, loss_points=0)
    result = finetune_depth(model, data, c2w, K, _points(scene), cfg)
    before = _log_error(np.full_like(depth_true, 1.3 * np.median(depth_true)), depth_true)
    after = _log_error(result.depth, depth_true)
    assert result.depth.shape == depth_true.shape and result.depth.dtype == np.float32
    assert np.isfinite(result.depth).all() and (result.depth > 0).all()
    assert after < 0.5 * before, (before, after)
    s = result.stats
    assert s["steps"] == 120 and s["seconds"] > 0
    assert s["depth_agreement_after"] < 0.5 * s["depth_agreement_before"], s
    assert s["loss_after"]["loss"] < s["loss_before"]["loss"], s
    np.testing.assert_array_equal(c2w, scene.c2w)
    np.testing.assert_array_equal(K, scene.K)


def test_points_alone_fix_the_scale(scene_data):
    """The sparse depth term by itself (flow and tracks off) corrects a global mis-scale."""
    scene, data, depth_true = scene_data
    model = _misscaled_model(scene, depth_true, 1.3)
    cfg = replace(FinetuneConfig(), steps=60, lr=1e-3, window=8, flow_weight=0.0, track_weight=0.0)
    result = finetune_depth(model, data, scene.c2w, scene.K, _points(scene), cfg)
    ratio = float(np.median(result.depth / depth_true))
    assert abs(np.log(ratio)) < 0.05, ratio


def test_steps_zero_is_a_no_op(scene_data):
    """steps=0: the network's depth comes back unchanged and the stats say so."""
    scene, data, depth_true = scene_data
    model = _misscaled_model(scene, depth_true, 1.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = finetune_depth(model, data, scene.c2w, scene.K, _points(scene), replace(FinetuneConfig(), steps=0))
    assert result.stats["steps"] == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    np.testing.assert_allclose(result.depth, np.median(depth_true), rtol=1e-2)


def test_bad_config_is_refused(scene_data):
    scene, data, _ = scene_data
    model = _misscaled_model(scene, np.ones(1), 1.0)
    with pytest.raises(ValueError):
        finetune_depth(model, data, scene.c2w, scene.K, np.zeros((0, 3)), replace(FinetuneConfig(), visibility_factor=1.0))
    with pytest.raises(ValueError):
        finetune_depth(model, data, scene.c2w[:3], scene.K, np.zeros((0, 3)), FinetuneConfig())


def test_observed_points_are_used_exactly(scene_data):
    """With the reconstruction's observation lists, each frame's depth term uses exactly
    the points it observes (no visibility guess), and the scale is still corrected."""
    scene, data, depth_true = scene_data
    model = _misscaled_model(scene, depth_true, 1.3)
    per_frame = 150
    observed = [np.arange(i * per_frame, (i + 1) * per_frame) for i in range(len(scene.images))]
    cfg = replace(FinetuneConfig(), steps=60, lr=1e-3, window=8, flow_weight=0.0, track_weight=0.0)
    result = finetune_depth(model, data, scene.c2w, scene.K, _points(scene, per_frame), cfg, observed=observed)
    assert result.stats["points_used"] == per_frame * len(scene.images)
    ratio = float(np.median(result.depth / depth_true))
    assert abs(np.log(ratio)) < 0.05, ratio
    with pytest.raises(ValueError, match="one index array per frame"):
        finetune_depth(model, data, scene.c2w, scene.K, _points(scene, per_frame), cfg, observed=observed[:2])
