"""Bridges over cuts: finding them on real frames, solving their pose, re-routing the chain."""

from __future__ import annotations


import numpy as np
from scipy.spatial.transform import Rotation

from flowmap.correspondences.bridges import BridgeConfig, find_bridges, find_cuts
from flowmap.frames import FrameConfig, load_frames, resize_images
from flowmap.solve import apply_bridges, bridge_pose
from conftest import SHARED_DATA, needs_data

FOX = SHARED_DATA / "fox"


def _random_pose(rng: np.random.Generator, angle_deg: float = 15.0, dist: float = 0.5) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(rng.normal(size=3) / np.sqrt(3) * np.radians(angle_deg)).as_matrix()
    T[:3, 3] = rng.normal(size=3) * dist
    return T


def test_apply_bridges_routes_the_chain_through_the_bridge():
    """After re-routing, the chain from a to b equals the bridge; all other pairs are unchanged."""
    rng = np.random.default_rng(0)
    T = np.stack([_random_pose(rng) for _ in range(9)])
    T_ab = _random_pose(rng)
    out = apply_bridges(T, [(4, 2, 7, T_ab)])
    chain = np.eye(4)
    for k in range(2, 7):
        chain = chain @ out[k]
    assert np.allclose(chain, T_ab, atol=1e-10)
    assert np.allclose(np.delete(out, 4, axis=0), np.delete(T, 4, axis=0))


def _matches(rng, T_ab, K, n=300):
    """Points seen by both cameras: normalised xy in a and b, and their z-depths."""
    X_b = np.stack([rng.uniform(-1, 1, n), rng.uniform(-1, 1, n), rng.uniform(3, 6, n)], axis=1)
    X_a = X_b @ T_ab[:3, :3].T + T_ab[:3, 3]

    def project(X):
        return np.stack([K[0, 0] * X[:, 0] / X[:, 2] + K[0, 2], K[1, 1] * X[:, 1] / X[:, 2] + K[1, 2]], axis=1)

    return project(X_a), project(X_b), X_a[:, 2], X_b[:, 2]


def test_bridge_pose_recovers_a_known_pose_and_the_depth_ratio():
    """Essential matrix + depth-scaled triangulation recover T_{a<-b}; a rescaled far side is measured."""
    rng = np.random.default_rng(1)
    K = np.array([[0.9, 0, 0.5], [0, 1.2, 0.5], [0, 0, 1]])
    T_ab = _random_pose(rng, angle_deg=10, dist=0.6)
    xy_a, xy_b, d_a, d_b = _matches(rng, T_ab, K)
    solved = bridge_pose(xy_a, xy_b, d_a, d_b, K, threshold_px=0.5, width=640)
    assert solved is not None
    T, ratio = solved
    angle = np.degrees(Rotation.from_matrix(T[:3, :3] @ T_ab[:3, :3].T).magnitude())
    assert angle < 0.05 and np.allclose(T[:3, 3], T_ab[:3, 3], atol=1e-3) and abs(ratio - 1) < 1e-3
    _, ratio = bridge_pose(xy_a, xy_b, d_a, 1.5 * d_b, K, threshold_px=0.5, width=640)
    assert abs(ratio - 1.5) < 1e-3


def test_find_cuts_thresholds_the_valid_fraction():
    masks = np.ones((5, 4, 4), np.float32)
    masks[2] = 0.0
    masks[4, :1] = 0.0  # 25 % invalid: not a cut
    assert find_cuts(masks, masks, 0.05) == [2]


@needs_data("fox")
def test_fox_cut_is_bridged_by_frames_that_see_the_same_side():
    """On fox, pair 30-31 (a 44 degree turn with blur) has no flow; a bridge with many inliers spans it."""
    frames = load_frames(FOX / "images", FrameConfig())
    images = resize_images(frames.images, (272, 160))
    masks = np.ones((frames.n - 1, 8, 8), np.float32)
    masks[30] = 0.0
    bridges = find_bridges(images, masks, masks, BridgeConfig())
    pairs, xy, valid = bridges.pairs, bridges.xy, bridges.valid
    assert pairs.shape == (1, 3)
    cut, a, b = pairs[0]
    assert cut == 30 and a <= 30 < 31 <= b
    assert valid[0].sum() >= 60
    assert ((xy[0][valid[0]] >= 0) & (xy[0][valid[0]] <= 1)).all()
