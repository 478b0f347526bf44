"""Geometric identities of flowmap.geometry and the pose / focal solvers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from flowmap.geometry import (
    K_normalised,
    K_pixels,
    induced_flow,
    intrinsics_from_focal,
    invert_rigid,
    pixel_grid,
    procrustes,
    project,
    sample_image,
    transform,
    unproject,
)
from flowmap.model.intrinsics import FocalConfig, focal_candidates, softmin_focal
from flowmap.model.poses import PairSamples, chain, relative_poses


def random_se3(rng: np.random.Generator, batch: int, max_angle: float = 0.5, max_t: float = 1.0) -> torch.Tensor:
    rot = Rotation.from_rotvec(rng.normal(size=(batch, 3)) * max_angle / np.sqrt(3))
    T = np.tile(np.eye(4), (batch, 1, 1))
    T[:, :3, :3] = rot.as_matrix()
    T[:, :3, 3] = rng.uniform(-max_t, max_t, size=(batch, 3))
    return torch.tensor(T, dtype=torch.float64)


@pytest.mark.parametrize("batch", [1, 4])
def test_procrustes_recovers_transform_with_weights_and_noise(batch):
    rng = np.random.default_rng(0)
    T = random_se3(rng, batch)
    p = torch.tensor(rng.normal(size=(batch, 500, 3)))
    q = transform(T, p) + 1e-4 * torch.tensor(rng.normal(size=(batch, 500, 3)))
    # Gross outliers with zero weight must not move the solution.
    q[:, :100] += torch.tensor(rng.normal(size=(batch, 100, 3))) * 5
    w = torch.ones(batch, 500, dtype=torch.float64)
    w[:, :100] = 0.0
    T_hat = procrustes(p, q, w)
    assert torch.allclose(T_hat, T, atol=1e-4)
    R = T_hat[:, :3, :3]
    assert torch.allclose(torch.linalg.det(R), torch.ones(batch, dtype=torch.float64), atol=1e-9)


def test_procrustes_never_returns_a_reflection():
    rng = np.random.default_rng(1)
    p = torch.tensor(rng.normal(size=(1, 50, 3)))
    q = p * torch.tensor([1.0, 1.0, -1.0])  # a mirror image: best rotation, not reflection
    T = procrustes(p, q, torch.ones(1, 50, dtype=torch.float64))
    assert torch.linalg.det(T[0, :3, :3]).item() == pytest.approx(1.0, abs=1e-9)


def test_procrustes_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    T = random_se3(rng, 1)
    p = torch.tensor(rng.normal(size=(1, 20, 3)), requires_grad=True)
    q = (transform(T, p) + 0.05 * torch.tensor(rng.normal(size=(1, 20, 3)))).detach().requires_grad_(True)
    w = torch.tensor(rng.uniform(0.1, 1.0, size=(1, 20)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: procrustes(a, b, c), (p, q, w), atol=1e-6)


def test_unproject_project_round_trip():
    rng = np.random.default_rng(3)
    K = intrinsics_from_focal(torch.tensor(300.0), 120, 160)
    xy = torch.tensor(rng.uniform(0, 1, size=(2, 100, 2)), dtype=torch.float32)
    depth = torch.tensor(rng.uniform(0.5, 10, size=(2, 100)), dtype=torch.float32)
    points = unproject(xy, depth, K)
    assert torch.allclose(points[..., 2], depth)
    xy2, in_front = project(points, K)
    assert in_front.all()
    assert torch.allclose(xy2, xy, atol=1e-6)


def test_K_normalised_pixel_round_trip_and_centre_convention():
    K_px = np.array([[500.0, 0, 319.5], [0, 505.0, 239.5], [0, 0, 1]])
    K = K_normalised(K_px, 480, 640)
    # The principal point at the OpenCV image centre (W-1)/2 is the normalised centre 0.5.
    assert K[0, 2].item() == pytest.approx(0.5)
    assert K[1, 2].item() == pytest.approx(0.5)
    assert np.allclose(K_pixels(K, 480, 640), K_px, atol=1e-4)


def test_pixel_grid_matches_grid_sample_convention():
    image = torch.arange(12, dtype=torch.float32).reshape(1, 1, 3, 4)
    xy = pixel_grid(3, 4).reshape(1, -1, 2)
    assert torch.allclose(sample_image(image, xy)[0, :, 0], image.flatten(), atol=1e-5)


def test_induced_flow_of_translation_matches_analytic():
    # A fronto-parallel plane at depth Z, camera moved by tx along x: flow_x = -fx tx / Z.
    h, w, f, Z, tx = 60, 80, 70.0, 4.0, 0.3
    K = intrinsics_from_focal(torch.tensor(f), h, w)
    xy = pixel_grid(h, w).reshape(1, -1, 2)
    depth = torch.full((1, h * w), Z)
    c2w_target = torch.eye(4)
    c2w_target[0, 3] = tx
    flow, valid = induced_flow(xy, depth, K[None], invert_rigid(c2w_target)[None])
    assert valid.all()
    assert torch.allclose(flow[..., 0], torch.full_like(flow[..., 0], -(f / w) * tx / Z), atol=1e-6)
    assert torch.allclose(flow[..., 1], torch.zeros_like(flow[..., 1]), atol=1e-6)


def test_induced_flow_of_rotation_is_the_homography_and_ignores_depth():
    rng = np.random.default_rng(4)
    h, w = 48, 64
    K = intrinsics_from_focal(torch.tensor(60.0), h, w)
    T = random_se3(rng, 1, max_angle=0.1).float()
    T[:, :3, 3] = 0
    xy = pixel_grid(h, w).reshape(1, -1, 2)
    depth = torch.tensor(rng.uniform(1, 10, size=(1, h * w)), dtype=torch.float32)
    flow, _ = induced_flow(xy, depth, K[None], T)
    H = K @ T[0, :3, :3] @ torch.linalg.inv(K)
    hom = torch.cat([xy[0], torch.ones(h * w, 1)], dim=1) @ H.T
    expected = hom[:, :2] / hom[:, 2:] - xy[0]
    assert torch.allclose(flow[0], expected, atol=1e-5)


def _synthetic_pair(focal: float, h: int = 48, w: int = 64, seed: int = 5):
    """Two cameras looking at a smooth random surface; exact backward flow and depths."""
    rng = np.random.default_rng(seed)
    K = intrinsics_from_focal(torch.tensor(focal, dtype=torch.float64), h, w)
    xy = pixel_grid(h, w).reshape(-1, 2).double()
    yy, xx = xy[:, 1], xy[:, 0]
    depth_next = 3.0 + 0.8 * torch.sin(4 * xx) * torch.cos(3 * yy) + 0.5 * xx
    T_prev_from_next = torch.eye(4, dtype=torch.float64)
    T_prev_from_next[:3, :3] = torch.tensor(Rotation.from_rotvec([0.02, -0.05, 0.01]).as_matrix())
    T_prev_from_next[:3, 3] = torch.tensor([0.25, 0.05, 0.05])
    points_prev = transform(T_prev_from_next, unproject(xy, depth_next, K))
    xy_prev, _ = project(points_prev, K)
    samples = PairSamples(
        xy_next=xy,
        depth_next=depth_next[None],
        xy_prev=xy_prev[None],
        depth_prev=points_prev[None, :, 2],
        weights=torch.ones(1, h * w, dtype=torch.float64),
        mask=torch.ones(1, h * w, dtype=torch.float64),
    )
    return samples, K, T_prev_from_next


def test_relative_pose_recovers_the_true_pose_from_exact_matches():
    samples, K, T = _synthetic_pair(70.0)
    T_hat = relative_poses(samples, K[None])
    assert torch.allclose(T_hat[0], T, atol=1e-8)


@pytest.mark.parametrize("focal", [90.0, 140.0, 200.0])
def test_softmin_focal_picks_the_true_focal(focal):
    h, w = 96, 128
    samples, _, _ = _synthetic_pair(focal, h, w)
    f_hat, errors = softmin_focal(samples, (h, w), (h, w), FocalConfig())
    candidates = focal_candidates(h, w, FocalConfig())
    spacing = float(candidates[1] - candidates[0])
    assert abs(float(f_hat) - focal) < spacing
    assert abs(float(candidates[errors.argmin()]) - focal) <= spacing


def test_chain_composes_relative_poses():
    rng = np.random.default_rng(6)
    c2w = random_se3(rng, 5)
    c2w = invert_rigid(c2w[:1]) @ c2w  # frame 0 = identity
    rel = invert_rigid(c2w[:-1]) @ c2w[1:]
    assert torch.allclose(chain(rel), c2w, atol=1e-10)


def test_polar_rotation_gradient_matches_finite_differences_and_is_finite_when_degenerate():
    """The custom backward equals numerical derivatives, and stays finite for repeated singular values."""
    from flowmap.geometry import PolarRotation

    torch.manual_seed(3)
    M = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(PolarRotation.apply, (M,), eps=1e-6, atol=1e-5)
    # A covariance with two equal singular values: the SVD's own backward gives NaN.
    Q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    degenerate = (Q @ torch.diag(torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64)) @ Q.T)[None].requires_grad_(True)
    R = PolarRotation.apply(degenerate)
    (R * torch.randn(1, 3, 3, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(degenerate.grad).all()
    assert torch.allclose(R[0] @ R[0].T, torch.eye(3, dtype=torch.float64), atol=1e-10)
