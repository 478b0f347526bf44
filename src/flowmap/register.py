"""Registration stage: a pose for every frame that was not a keyframe (issue 25).

After the refinement, each keyframe has a refined camera and a depth map consistent
with it. A frame between keyframes is posed from 2D-3D correspondences: the keyframe's
Shi-Tomasi corners tracked into the frame by pyramidal Lucas-Kanade (the default), or
OpenCV's DIS optical flow (Kroeger et al., ECCV 2016) with a photometric check, from its
nearest posed keyframe (or the ones before and after it), kept where the
forward-backward check (Sundaram et al., ECCV 2010) passes, lift the keyframe's pixels
to world points with its depth and camera; pycolmap's ``estimate_and_refine_absolute_pose`` (COLMAP's LO-RANSAC P3P
followed by a non-linear refinement) estimates the pose from them. A frame with too few
RANSAC inliers, or too small a share of them, is reported as unregistered, never posed
with a guess.

Everything works at the working resolution (the depth maps'); pixel coordinates follow
OpenCV (the centre of column ``i`` at ``u = i``) and are shifted by +0.5 for COLMAP
(:func:`flowmap.camera.to_corner_origin`).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from flowmap.camera import CORNER_SHIFT, to_corner_origin, unproject_pixels
from flowmap.correspondences.flow import DIS_PRESETS, forward_backward_mask, inside_mask, warp_by_flow
from flowmap.correspondences.tracks import lk_forward_backward
from flowmap.errors import InputError
from flowmap.types import NonKeyframes


@dataclass
class RegisterConfig:
    """How frames that are not keyframes are posed.

    Attributes:
        grid_step: the keyframe pixels sampled are every ``grid_step``-th row and column.
        max_points: the most 2D-3D correspondences per frame (a random subset, seed 0).
        flow_preset: OpenCV's DIS preset ("ultrafast", "fast", "medium") of the "dis" method.
        method: "lk": up to ``lk_corners`` Shi-Tomasi corners of the keyframe, tracked into
            the frame by pyramidal Lucas-Kanade (``lk_window`` px window, ``lk_levels``
            pyramid levels) with a forward-backward check; "dis": dense DIS flow both
            ways on a grid of every ``grid_step``-th pixel, forward-backward and
            photometric checks.
        neighbours: 2: pose a frame from the nearest keyframe before it and the one
            after it; 1: from the nearest only.
        threads: frames posed at once by the "lk" method (each frame's result does not
            depend on the others or on the order).
        seed: seed of the pose RANSAC (unseeded, the ATE of tum-rpy-long's 229 frames
            varied 0.0268-0.0269 between runs).

    Measured on tum-rpy-long with 60 keyframes (169 other frames, 2 cores, niced,
    beside other work), two neighbours: medium / 3000 points 48.8 ms a frame, ATE of
    all 229 frames 0.02641; medium / 1000 32.5 ms, 0.02611; fast / 1000 19.8 ms, 0.02573;
    fast / 3000 34.5 ms, 0.02592. The fast preset estimates the flow at a quarter of the
    resolution: on the 160 x 120 synthetic scene of ``tests/test_register.py`` its poses
    were 0.72 degrees off against medium's 0.10, so medium it is. One neighbour instead
    of two (medium / 1000, another load): 21.7 against 54.0 ms a frame, ATE 0.02644
    against 0.02584 (+2 %); the DIS flows are most of the time (15 of 35 s in a profile
    of 389 room-walkin frames, pycolmap 6 s), so the default is one.

    Lucas-Kanade on corners instead of DIS (2026-12-05 session 28, the same tum-rpy-long
    keyframes, quiet machine, one neighbour): DIS medium 20.3 ms a frame, ATE 0.02689;
    LK window 21 11.1 ms, 0.02718; window 15 9.3 ms, 0.02665; window 11 6.0 ms,
    0.02618 but 168/169 registered. Default: LK, window 15. On room-walkin (991 frames
    that are not keyframes) the stage took 6.3 s instead of 21.9 s. pycolmap's pose
    RANSAC is not seeded here, so these ATEs are equal within noise: three more runs of
    LK window 15 gave 0.02680-0.02693, one of DIS 0.02694.
    """

    grid_step: int = 3
    max_points: int = 1000
    flow_preset: str = "medium"
    method: str = "lk"
    lk_corners: int = 1000
    lk_window: int = 15
    lk_levels: int = 3
    neighbours: int = 1
    fb_threshold_px: float = 0.75
    max_intensity_diff: float = 20.0
    max_error_px: float = 1.5
    min_inliers: int = 60
    min_inlier_ratio: float = 0.3
    threads: int = 2
    seed: int = 0


def neighbour_keyframes(position: int, keys: np.ndarray, count: int = 2) -> list[int]:
    """Indices into ``keys`` (sorted frame positions) of the keyframes a frame is posed
    from: with ``count`` 2 the nearest key before and the nearest key after ``position``
    (one of them at the ends), with 1 the nearest of the two (the earlier on a tie)."""
    after = int(np.searchsorted(keys, position))
    both = [k for k in (after - 1, after) if 0 <= k < len(keys)]
    if count >= 2 or len(both) < 2:
        return both
    return [min(both, key=lambda k: abs(int(keys[k]) - position))]


def keyframe_correspondences(
    key_gray: np.ndarray, gray: np.ndarray, depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, cfg: RegisterConfig, dis
) -> tuple[np.ndarray, np.ndarray]:
    """2D-3D correspondences of a frame from one posed keyframe.

    Args:
        key_gray, gray: (h, w) uint8 grayscale keyframe and frame, working resolution.
        depth: (h, w) z-depth of the keyframe (the scale of ``c2w``).
        K: (3, 3) intrinsics in working pixels (OpenCV centres).
        c2w: (4, 4) the keyframe's camera-to-world, OpenCV axes.
        cfg: sampling and flow tolerance.
        dis: an OpenCV ``DISOpticalFlow`` instance.

    Returns:
        uv (P, 2) float64 pixel coordinates in the frame (OpenCV centres) and xyz (P, 3)
        float64 world points.
    """
    fwd = dis.calc(key_gray, gray, None)
    bwd = dis.calc(gray, key_gray, None)
    ok = forward_backward_mask(fwd, bwd, cfg.fb_threshold_px, 0.0) & inside_mask(fwd) & np.isfinite(depth) & (depth > 0)
    ok &= np.abs(warp_by_flow(gray, fwd).astype(np.float32) - key_gray) <= cfg.max_intensity_diff
    grid = np.zeros_like(ok)
    grid[cfg.grid_step // 2 :: cfg.grid_step, cfg.grid_step // 2 :: cfg.grid_step] = True
    v, u = np.nonzero(ok & grid)
    xyz = unproject_pixels(u, v, depth[v, u], K, c2w)
    uv = np.stack([u + fwd[v, u, 0], v + fwd[v, u, 1]], axis=-1).astype(np.float64)
    return uv, xyz


def detect_corners(key_gray: np.ndarray, cfg: RegisterConfig) -> np.ndarray:
    """(P, 2) float32 Shi-Tomasi corners (Shi & Tomasi, CVPR 1994; OpenCV's
    ``goodFeaturesToTrack``) of a keyframe, OpenCV pixel centres, at most ``cfg.lk_corners``."""
    pts = cv2.goodFeaturesToTrack(key_gray, maxCorners=int(cfg.lk_corners), qualityLevel=0.005, minDistance=max(2, cfg.grid_step))
    if pts is None:
        return np.zeros((0, 2), np.float32)
    return pts.reshape(-1, 2).astype(np.float32)


def with_depth(corners: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """(P,) bool: the corners (P, 2) whose nearest pixel of ``depth`` (h, w) is finite and > 0."""
    u, v = np.round(corners[:, 0]).astype(np.int64), np.round(corners[:, 1]).astype(np.int64)
    d = depth[v, u]
    return np.isfinite(d) & (d > 0)


def keyframe_corners(key_gray: np.ndarray, depth: np.ndarray, cfg: RegisterConfig) -> np.ndarray:
    """(P, 2) float32 corners of a keyframe (:func:`detect_corners`) where its depth is valid."""
    pts = detect_corners(key_gray, cfg)
    return pts[with_depth(pts, depth)]


def tracked_correspondences(
    key_gray: np.ndarray, gray: np.ndarray, corners: np.ndarray, depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, cfg: RegisterConfig
) -> tuple[np.ndarray, np.ndarray]:
    """2D-3D correspondences of a frame from one posed keyframe by pyramidal Lucas-Kanade
    (Bouguet 2000; OpenCV's ``calcOpticalFlowPyrLK``) of the keyframe's ``corners`` (P, 2),
    kept where the forward-backward error is within ``cfg.fb_threshold_px``. Arguments and
    returns as :func:`keyframe_correspondences`."""
    if len(corners) == 0:
        return np.zeros((0, 2)), np.zeros((0, 3))
    p1, ok = lk_forward_backward(key_gray, gray, corners, cfg.lk_window, cfg.lk_levels, cfg.fb_threshold_px)
    return lifted(corners, p1, ok, depth, K, c2w)


def lifted(corners: np.ndarray, p1: np.ndarray, ok: np.ndarray, depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tracked corners (P, 2) -> (P, 2) ``p1`` where ``ok`` (P,) and the keyframe's
    depth is valid, as (uv (Q, 2) float64 pixels in the frame, xyz (Q, 3) float64 world
    points lifted with ``depth``, ``K`` and ``c2w``)."""
    keep = ok & with_depth(corners, depth)
    c = corners[keep]
    u, v = np.round(c[:, 0]).astype(np.int64), np.round(c[:, 1]).astype(np.int64)
    xyz = unproject_pixels(c[:, 0], c[:, 1], depth[v, u], K, c2w)
    return p1[keep].astype(np.float64), xyz


@dataclass
class Tracks:
    """Lucas-Kanade tracks of the frames that are not keyframes from their nearest
    keyframes, before any camera is known (:func:`track_frames`).

    Attributes:
        corners: keyframe index (into ``keys``) -> (P, 2) float32 corners
            (:func:`detect_corners`, depth not yet checked).
        tracked: (frame position, keyframe index) -> ((P, 2) float32 positions in the
            frame, (P,) bool forward-backward check passed), for the corners of that keyframe.
    """

    corners: dict[int, np.ndarray]
    tracked: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]


def track_frames(gray: np.ndarray, keys: np.ndarray, cfg: RegisterConfig, cancel: threading.Event | None = None) -> Tracks:
    """Track every keyframe's corners into the frames that are not keyframes, from the
    ``cfg.neighbours`` nearest keyframes (all keyframes assumed posed), on one thread.

    It needs no camera, so the pipeline runs it beside the refinement, whose global
    positioning leaves a core idle (issue 25); :func:`register_frames`
    then only lifts and poses. The result equals tracking inside
    :func:`register_frames` (Lucas-Kanade tracks each corner on its own; the corners
    without depth are dropped afterwards instead of before).

    Args:
        gray: (M, h, w) uint8 grayscale of all M selected frames, working resolution.
        keys: (N,) sorted positions of the keyframes among the M frames.
        cfg: the "lk" method's settings.
        cancel: when set, stop early (the tracks so far are returned).

    Returns:
        :class:`Tracks`.
    """
    keys = np.asarray(keys, np.int64)
    out = Tracks(corners={}, tracked={})
    for j in np.setdiff1d(np.arange(len(gray)), keys).tolist():
        if cancel is not None and cancel.is_set():
            break
        for k in neighbour_keyframes(int(j), keys, cfg.neighbours):
            if k not in out.corners:
                out.corners[k] = detect_corners(gray[keys[k]], cfg)
            if len(out.corners[k]):
                out.tracked[(j, k)] = lk_forward_backward(gray[keys[k]], gray[j], out.corners[k], cfg.lk_window, cfg.lk_levels, cfg.fb_threshold_px)
    return out


def absolute_pose(uv: np.ndarray, xyz: np.ndarray, K: np.ndarray, size: tuple[int, int], cfg: RegisterConfig) -> tuple[np.ndarray | None, int]:
    """A camera's pose from 2D-3D correspondences: pycolmap's LO-RANSAC + refinement.

    Args:
        uv: (P, 2) pixel coordinates (OpenCV centres) in an image of ``size`` (h, w).
        xyz: (P, 3) world points.
        K: (3, 3) intrinsics in those pixels (fixed).
        size: (h, w) of the image.
        cfg: inlier threshold and acceptance.

    Returns:
        (c2w (4, 4) OpenCV axes or None when not accepted, number of inliers).
    """
    import pycolmap

    if len(uv) < max(cfg.min_inliers, 4):
        return None, 0
    Kc = to_corner_origin(K)
    camera = pycolmap.Camera(
        model="PINHOLE", width=int(size[1]), height=int(size[0]), params=[Kc[0, 0], Kc[1, 1], Kc[0, 2], Kc[1, 2]]
    )
    options = pycolmap.AbsolutePoseEstimationOptions()
    options.ransac.max_error = float(cfg.max_error_px)
    options.ransac.random_seed = int(cfg.seed)  # the same poses on every run
    result = pycolmap.estimate_and_refine_absolute_pose(uv + CORNER_SHIFT, xyz, camera, options)
    if result is None:
        return None, 0
    inliers = int(result["num_inliers"])
    if inliers < cfg.min_inliers or inliers < cfg.min_inlier_ratio * len(uv):
        return None, inliers
    w2c = np.eye(4)
    w2c[:3] = result["cam_from_world"].matrix()
    return np.linalg.inv(w2c), inliers


def register_frames(
    gray: np.ndarray,
    keys: np.ndarray,
    c2w: np.ndarray,
    K: np.ndarray,
    depth: np.ndarray,
    posed: np.ndarray,
    names: list[str],
    source_indices: list[int],
    cfg: RegisterConfig,
    progress: bool = False,
    tracks: Tracks | None = None,
) -> NonKeyframes:
    """Pose every frame that is not a keyframe against the posed keyframes.

    Args:
        gray: (M, h, w) uint8 grayscale of all M selected frames, working resolution.
        keys: (N,) sorted positions of the keyframes among the M frames.
        c2w: (N, 4, 4) the keyframes' camera-to-world (refined), OpenCV axes.
        K: (3, 3) intrinsics in working pixels (OpenCV centres), shared.
        depth: (N, h, w) the keyframes' z-depth, the scale of ``c2w``.
        posed: (N,) bool, the keyframes with a measured pose (others are not used).
        names: M names of the frames; source_indices: their M indices in the source.
        cfg: sampling, flow, RANSAC and acceptance.
        progress: show a tqdm bar (frames done / total, time left) on stderr.
        tracks: the "lk" tracks computed beforehand (:func:`track_frames` on the same
            ``gray``, ``keys`` and ``cfg``); the pairs it lacks (a nearest keyframe that
            ended unposed) are tracked here.

    Returns:
        :class:`NonKeyframes` of the M - N other frames, in order.

    Raises:
        InputError: an unknown ``cfg.flow_preset`` or ``cfg.method``.
    """
    from tqdm.auto import tqdm

    if cfg.flow_preset not in DIS_PRESETS:
        raise InputError(f"unknown DIS preset {cfg.flow_preset!r}; use one of {', '.join(DIS_PRESETS)}")
    if cfg.method not in ("lk", "dis"):
        raise InputError(f"unknown registration method {cfg.method!r}; use lk or dis")
    keys = np.asarray(keys, np.int64)
    posed_keys = np.flatnonzero(np.asarray(posed, bool))
    others = np.setdiff1d(np.arange(len(gray)), keys)
    # OpenCV spreads a DIS flow over the cores; the instance is only made for "dis".
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[cfg.flow_preset]) if cfg.method == "dis" else None

    corners: dict[int, np.ndarray] = {}

    def correspondences(k: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        if cfg.method == "dis":
            return keyframe_correspondences(gray[keys[k]], gray[j], depth[k], K, c2w[k], cfg, dis)
        if tracks is not None and (j, k) in tracks.tracked:
            return lifted(tracks.corners[k], *tracks.tracked[(j, k)], depth[k], K, c2w[k])
        return tracked_correspondences(gray[keys[k]], gray[j], corners[k], depth[k], K, c2w[k], cfg)

    def pose_of(j: int) -> tuple[np.ndarray | None, int]:
        parts = [
            correspondences(k, j)
            for k in (posed_keys[m] for m in neighbour_keyframes(int(j), keys[posed_keys], cfg.neighbours))
        ]
        if not parts:
            return None, 0
        uv, xyz = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        if len(uv) > cfg.max_points:
            pick = np.sort(np.random.default_rng(int(j)).choice(len(uv), cfg.max_points, replace=False))
            uv, xyz = uv[pick], xyz[pick]
        return absolute_pose(uv, xyz, K, gray.shape[1:], cfg)

    out_c2w = np.tile(np.eye(4), (len(others), 1, 1))
    registered = np.zeros(len(others), bool)
    inliers = np.zeros(len(others), np.int64)
    bar = tqdm(total=len(others), desc="posing other frames", unit="frame", disable=not progress, leave=False)
    if cfg.method == "lk":
        for k in posed_keys:  # before the threads start: they only read ``corners``
            found = tracks.corners.get(k) if tracks is not None else None
            corners[k] = keyframe_corners(gray[keys[k]], depth[k], cfg) if found is None else found[with_depth(found, depth[k])]
    # Lucas-Kanade and pycolmap's RANSAC release the GIL, so frames are posed two at a
    # time (room-walkin's 991 frames: 5.9 -> 4.3 s); one DIS instance is not shared.
    workers = cfg.threads if cfg.method == "lk" else 1
    with bar, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for n, (pose, count) in enumerate(pool.map(pose_of, others.tolist())):
            inliers[n] = count
            if pose is not None:
                out_c2w[n], registered[n] = pose, True
            bar.update()
    return NonKeyframes(
        names=[names[j] for j in others],
        source_indices=[int(source_indices[j]) for j in others],
        positions=others,
        c2w=out_c2w,
        registered=registered,
        inliers=inliers,
    )
