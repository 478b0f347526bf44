"""Posing the frames that were not keyframes (issue 25), on the synthetic scene of
:mod:`flowmap.synthetic` with its exact cameras and depth: the recovered poses match the
true ones; a frame that cannot be registered is reported, not posed with a guess."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import threading

from flowmap.register import RegisterConfig, neighbour_keyframes, register_frames, track_frames
from flowmap.synthetic import make_scene


@pytest.fixture(scope="module")
def scene():
    return make_scene(n_frames=16, height=120, width=160)


def gray(images: np.ndarray) -> np.ndarray:
    return np.stack([cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) for img in images])


def rotation_error_deg(A: np.ndarray, B: np.ndarray) -> float:
    R = A[:3, :3].T @ B[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))


def test_neighbour_keyframes():
    keys = np.array([0, 5, 10])
    assert neighbour_keyframes(3, keys) == [0, 1]
    assert neighbour_keyframes(12, keys) == [2]
    assert neighbour_keyframes(7, keys) == [1, 2]


@pytest.mark.parametrize("method,threads", [("lk", 1), ("lk", 2), ("dis", 2)])
def test_recovers_the_true_poses_of_frames_between_keyframes(scene, method, threads):
    """Every frame between keyframes posed within 0.3 degrees and 1 % of the path, each
    in its own slot whether frames are posed one or two at a time."""
    keys = np.array([0, 5, 10, 15])
    names = list(scene.names)
    others = register_frames(
        gray(scene.images), keys, scene.c2w[keys], scene.K, scene.depth[keys], np.ones(len(keys), bool),
        names, list(range(len(names))), RegisterConfig(method=method, threads=threads),
    )
    expected = [i for i in range(16) if i not in keys]
    assert others.positions.tolist() == expected and others.names == [names[i] for i in expected]
    assert others.registered.all() and (others.inliers >= RegisterConfig().min_inliers).all()
    extent = np.linalg.norm(scene.c2w[-1, :3, 3] - scene.c2w[0, :3, 3])
    for pose, i in zip(others.c2w, expected):
        assert rotation_error_deg(pose, scene.c2w[i]) < 0.3
        assert np.linalg.norm(pose[:3, 3] - scene.c2w[i, :3, 3]) < 0.01 * extent


@pytest.mark.parametrize("method", ["lk", "dis"])
def test_unposed_keyframes_are_not_used_and_unmatched_frames_are_reported(scene, method):
    """A frame whose only posed keyframe shows something else (noise) is reported as
    not registered, with an identity placeholder, never posed from bad matches."""
    keys = np.array([0, 5, 10, 15])
    g = gray(scene.images)
    g[12] = np.random.default_rng(0).integers(0, 256, g[12].shape, dtype=np.uint8)
    posed = np.array([True, True, False, False])  # frames 11-14 only have keyframe 5 (index 1) to use
    others = register_frames(
        g, keys, scene.c2w[keys], scene.K, scene.depth[keys], posed, list(scene.names), list(range(16)), RegisterConfig(method=method),
    )
    by_position = dict(zip(others.positions.tolist(), range(others.n)))
    assert not others.registered[by_position[12]]
    np.testing.assert_array_equal(others.c2w[by_position[12]], np.eye(4))
    assert others.registered[by_position[6]]  # beyond the last posed keyframe (5): posed from it alone
    assert others.posed().n == int(others.registered.sum())


@pytest.mark.parametrize("neighbours", [1, 2])
def test_tracks_computed_beforehand_give_the_same_poses(scene, neighbours):
    """The tracks the pipeline computes beside the refinement (no camera needed) pose
    every frame exactly as tracking inside the registration does, also when a keyframe
    ends unposed (its frames then fall back to tracking from the posed ones); a
    cancelled tracking returns no tracks and the registration tracks them itself."""
    keys = np.array([0, 5, 10, 15])
    g = gray(scene.images)
    depth = scene.depth[keys].copy()
    depth[1, :30] = 0  # corners without depth: dropped after tracking instead of before
    cfg = RegisterConfig(neighbours=neighbours)
    tracks = track_frames(g, keys, cfg)
    assert {j for j, _ in tracks.tracked} == set(range(16)) - set(keys.tolist())
    for posed in (np.ones(4, bool), np.array([True, False, True, True])):
        args = (g, keys, scene.c2w[keys], scene.K, depth, posed, list(scene.names), list(range(16)), cfg)
        plain, early = register_frames(*args), register_frames(*args, tracks=tracks)
        assert early.registered.sum() >= 10
        np.testing.assert_array_equal(early.c2w, plain.c2w)
        np.testing.assert_array_equal(early.inliers, plain.inliers)
    cancel = threading.Event()
    cancel.set()
    assert track_frames(g, keys, cfg, cancel).tracked == {}


def test_registration_is_repeatable():
    """The pose RANSAC is seeded: noisy 2D-3D matches with outliers near the inlier
    threshold give the same pose, bit for bit, on every call (unseeded they did not)."""
    from flowmap.camera import project_points
    from flowmap.register import absolute_pose

    rng = np.random.default_rng(0)
    K = np.array([[200.0, 0, 80], [0, 200.0, 60], [0, 0, 1]])
    xyz = np.column_stack([rng.uniform(-1, 1, 400), rng.uniform(-1, 1, 400), rng.uniform(3, 6, 400)])
    uv, _ = project_points(xyz, K, np.eye(4))
    uv = uv + rng.normal(0, 0.8, uv.shape)
    uv[:150] += rng.uniform(-3, 3, (150, 2))  # outliers just beyond the 1.5 px threshold
    poses = [absolute_pose(uv, xyz, K, (120, 160), RegisterConfig())[0] for _ in range(4)]
    assert poses[0] is not None and np.abs(poses[0][:3, 3]).max() < 0.05
    for pose in poses[1:]:
        np.testing.assert_array_equal(pose, poses[0])


def test_an_unknown_registration_method_is_a_clear_error(scene):
    from flowmap.errors import InputError

    keys = np.array([0, 5])
    with pytest.raises(InputError, match="method"):
        register_frames(gray(scene.images[:6]), keys, scene.c2w[keys], scene.K, scene.depth[keys], np.ones(2, bool),
                        list(scene.names[:6]), list(range(6)), RegisterConfig(method="sift"))
