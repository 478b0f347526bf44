"""Point tracks: a query grid every few frames, tracked forwards and backwards.

METHOD.md section 2: query points on a regular grid (35 x 35) in every 5th frame, each
tracked over +-20 frames with a visibility flag per frame; a track point whose colour
differs from the query frame's by more than 0.2 (max over RGB channels, colours in
[0, 1]) is marked invisible. The paper uses CoTracker; flowmap uses OpenCV's pyramidal
Lucas-Kanade (Bouguet, "Pyramidal implementation of the Lucas Kanade feature tracker",
2001), chained frame to frame, with a forward-backward check (Kalal, Mikolajczyk,
Matas, "Forward-backward error", ICPR 2010) at every link: a point is tracked from
frame t to t+1, then back, and lost for good when it does not return within
``fb_threshold_px``.

Tracks are computed at the flow resolution (see :func:`flowmap.correspondences.flow.flow_shape`)
and returned in normalised coordinates.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

from flowmap.camera import uv_to_xy
from flowmap.errors import InputError


@dataclass
class TrackConfig:
    """Point-track settings (defaults from METHOD.md section 2).

    Attributes:
        enabled: compute tracks at all (False: flow only, METHOD.md's ablation).
        query_every: a query grid is placed in every ``query_every``-th frame.
        grid: the query grid has ``grid`` x ``grid`` points.
        radius: each query is tracked up to ``radius`` frames forwards and backwards.
        fb_threshold_px: forward-backward tolerance per link (pixels at the track resolution).
        color_threshold: a point is invisible where its colour differs from the query's
            by more than this (max over channels, colours in [0, 1]).
        lk_window: Lucas-Kanade window side in pixels.
        lk_levels: pyramid levels above the base image.
        threads: query frames tracked in parallel; 0 uses every CPU core.
    """

    enabled: bool = True
    query_every: int = 5
    grid: int = 35
    radius: int = 20
    fb_threshold_px: float = 1.0
    color_threshold: float = 0.2
    lk_window: int = 21
    lk_levels: int = 3
    threads: int = 0


def _bilinear_rgb(image: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(P, 3) float colours in [0, 1] of ``image`` (H, W, 3) uint8 at pixel positions ``pts`` (P, 2)."""
    if len(pts) == 0:
        return np.zeros((0, 3), np.float32)
    map_x = np.ascontiguousarray(pts[:, 0].reshape(-1, 1), dtype=np.float32)
    map_y = np.ascontiguousarray(pts[:, 1].reshape(-1, 1), dtype=np.float32)
    out = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(-1, 3).astype(np.float32) / 255.0


def lk_forward_backward(
    gray0: np.ndarray, gray1: np.ndarray, pts: np.ndarray, window: int, levels: int, fb_threshold_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Track points from ``gray0`` into ``gray1`` with pyramidal Lucas-Kanade and keep
    those that return within ``fb_threshold_px`` when tracked back (Kalal et al. 2010).

    Args:
        gray0, gray1: (H, W) uint8 grayscale images.
        pts: (P, 2) float32 pixel positions in ``gray0`` (OpenCV centres).
        window: Lucas-Kanade window side in pixels; levels: pyramid levels above the base.
        fb_threshold_px: forward-backward tolerance in pixels.

    Returns:
        (P, 2) float32 positions in ``gray1`` and (P,) bool: found both ways, back within
        the tolerance, finite and inside [-0.5, W - 0.5] x [-0.5, H - 0.5].
    """
    params = dict(
        winSize=(window, window),
        maxLevel=levels,
        criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01),
    )
    cur = np.ascontiguousarray(pts, dtype=np.float32).reshape(-1, 1, 2)
    nxt, st, _ = cv2.calcOpticalFlowPyrLK(gray0, gray1, cur, None, **params)
    back, st_b, _ = cv2.calcOpticalFlowPyrLK(gray1, gray0, nxt, None, **params)
    fb = np.linalg.norm((back - cur).reshape(-1, 2), axis=1)
    p = nxt.reshape(-1, 2)
    h, w = gray1.shape[:2]
    inside = (p[:, 0] >= -0.5) & (p[:, 0] <= w - 0.5) & (p[:, 1] >= -0.5) & (p[:, 1] <= h - 0.5)
    ok = (st.ravel() == 1) & (st_b.ravel() == 1) & (fb <= fb_threshold_px) & inside & np.isfinite(p).all(axis=1)
    return p, ok


def _track_direction(
    gray: list[np.ndarray], start: int, stop: int, step: int, pts0: np.ndarray, cfg: TrackConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Chain LK from frame ``start`` towards ``stop`` (exclusive) in direction ``step``.

    Only the points still alive are tracked at each link (LK treats points
    independently, so the result is the same as tracking all of them; most tracks die
    within a few frames).

    Returns positions (F, P, 2) pixels and alive (F, P) bool for frames
    start+step, start+2*step, ... (F = number of frames visited).
    """
    pts = pts0.astype(np.float32).reshape(-1, 2).copy()
    alive = np.ones(len(pts0), bool)
    positions, alives = [], []
    for t in range(start, stop, step):
        idx = np.flatnonzero(alive)
        p, ok = lk_forward_backward(gray[t], gray[t + step], pts[idx], cfg.lk_window, cfg.lk_levels, cfg.fb_threshold_px)
        alive[idx[~ok]] = False
        pts[idx[ok]] = p[ok]
        positions.append(np.where(alive[:, None], pts, 0.0))
        alives.append(alive.copy())
        if not alive.any():
            break
    if not positions:
        return np.zeros((0, len(pts0), 2), np.float32), np.zeros((0, len(pts0)), bool)
    return np.stack(positions), np.stack(alives)


def _track_query(
    images: np.ndarray, gray: list[np.ndarray], q: int, cfg: TrackConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Tracks seeded on the grid of frame ``q``: xy (P, N, 2) pixels, visible (P, N)."""
    n, h, w = images.shape[:3]
    g = (np.arange(cfg.grid, dtype=np.float32) + 0.5) / cfg.grid
    gx, gy = np.meshgrid(g * w - 0.5, g * h - 0.5)
    pts0 = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)
    xy = np.zeros((len(pts0), n, 2), np.float32)
    vis = np.zeros((len(pts0), n), bool)
    xy[:, q] = pts0
    vis[:, q] = True
    colour0 = _bilinear_rgb(images[q], pts0)
    for step, stop in ((1, min(n - 1, q + cfg.radius)), (-1, max(0, q - cfg.radius))):
        pos, alive = _track_direction(gray, q, stop, step, pts0, cfg)
        for k in range(len(pos)):
            t = q + step * (k + 1)
            colour = _bilinear_rgb(images[t], pos[k])
            same = np.abs(colour - colour0).max(axis=1) <= cfg.color_threshold
            xy[:, t] = pos[k]
            vis[:, t] = alive[k] & same
    return xy, vis


def compute_tracks(
    images: np.ndarray, cfg: TrackConfig, progress: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point tracks over a video.

    Args:
        images: (N, H, W, 3) uint8 RGB frames at the resolution to track at (the flow
            resolution; the caller resizes).
        cfg: track settings.
        progress: show a tqdm bar on stderr.

    Returns:
        tracks_xy: (M, N, 2) float32 normalised positions (x = (u + 0.5) / W), zero
            where not visible.
        tracks_visible: (M, N) bool.
        tracks_query: (M,) int64 frame of the query point.
        M = grid^2 x number of query frames (0 when tracks are disabled). Tracks that
        are visible in no frame other than their query frame are dropped.

    Raises:
        InputError: images that are not an (N, H, W, 3) uint8 stack, or a bad setting.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InputError(f"images must be (N, H, W, 3) uint8 RGB, got {images.shape} {images.dtype}")
    n, h, w = images.shape[:3]
    empty = (np.zeros((0, n, 2), np.float32), np.zeros((0, n), bool), np.zeros((0,), np.int64))
    if not cfg.enabled:
        return empty
    if cfg.query_every < 1 or cfg.grid < 1 or cfg.radius < 1:
        raise InputError("track query_every, grid and radius must be at least 1")
    gray = [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in images]
    queries = list(range(0, n, cfg.query_every))
    threads = cfg.threads if cfg.threads > 0 else (os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(
            tqdm(
                pool.map(lambda q: _track_query(images, gray, q, cfg), queries),
                total=len(queries),
                desc="tracks (LK)",
                unit="query",
                disable=not progress,
            )
        )
    xy = np.concatenate([r[0] for r in results])
    vis = np.concatenate([r[1] for r in results])
    query = np.concatenate([np.full(len(r[0]), q, np.int64) for r, q in zip(results, queries)])
    keep = vis.sum(axis=1) >= 2
    xy, vis, query = xy[keep], vis[keep], query[keep]
    xy = uv_to_xy(xy, h, w)
    xy[~vis] = 0.0
    return xy.astype(np.float32), vis, query
