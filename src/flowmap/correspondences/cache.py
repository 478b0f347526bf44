"""Compute correspondences once per input and cache them on disk.

The cache key is a SHA-256 of the frames' bytes, the working resolution and the flow
and track settings, so a changed input or setting never reuses stale correspondences.
Files are written to a temporary name and renamed into place (no half-written cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from flowmap.correspondences.bridges import BridgeConfig, find_bridges
from flowmap.correspondences.flow import FlowConfig, compute_flows, flow_shape
from flowmap.correspondences.tracks import TrackConfig, compute_tracks
from flowmap.frames import resize_images
from flowmap.types import Correspondences

_FIELDS = (
    "flow_fwd", "flow_bwd", "mask_fwd", "mask_bwd", "tracks_xy", "tracks_visible", "tracks_query",
    "bridge_pairs", "bridge_xy", "bridge_valid",
)


def compute_correspondences(
    images: np.ndarray,
    shape: tuple[int, int],
    flow_cfg: FlowConfig,
    track_cfg: TrackConfig,
    progress: bool = True,
    timings: dict[str, float] | None = None,
    bridge_cfg: BridgeConfig | None = None,
) -> Correspondences:
    """Flow both ways between neighbours (with masks) and point tracks (METHOD.md 2).

    Args:
        images: (N, H, W, 3) uint8 RGB frames at the input resolution, N >= 2.
        shape: working resolution (h, w) of the optimisation.
        flow_cfg, track_cfg: settings.
        progress: show progress bars.
        timings: if given, receives ``flow_s``, ``tracks_s`` and ``bridges_s``.
        bridge_cfg: sparse bridges over cuts (default :class:`BridgeConfig`).

    Returns:
        :class:`Correspondences` at ``shape``, normalised coordinates.

    Raises:
        InputError: bad images or settings.
    """
    t0 = time.perf_counter()
    # Flow, tracks and bridges all work at the flow resolution: resize once.
    small = resize_images(images, flow_shape(shape, images.shape[1:3], flow_cfg.scale))
    flow_fwd, flow_bwd, mask_fwd, mask_bwd = compute_flows(small, shape, flow_cfg, progress)
    t1 = time.perf_counter()
    xy, vis, query = compute_tracks(small, track_cfg, progress)
    t2 = time.perf_counter()
    bridges = find_bridges(small, mask_fwd, mask_bwd, bridge_cfg or BridgeConfig())
    if timings is not None:
        timings["flow_s"] = t1 - t0
        timings["tracks_s"] = t2 - t1
        timings["bridges_s"] = time.perf_counter() - t2
    return Correspondences(flow_fwd, flow_bwd, mask_fwd, mask_bwd, xy, vis, query, *bridges)


def cache_key(images: np.ndarray, shape: tuple[int, int], flow_cfg: FlowConfig, track_cfg: TrackConfig) -> str:
    """Hex SHA-256 (first 16 characters) of the frames and every setting that matters."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(repr(images.shape).encode())
    cfg = {"shape": list(shape), "flow": asdict(flow_cfg), "tracks": asdict(track_cfg)}
    for c in (cfg["flow"], cfg["tracks"]):
        c.pop("threads", None)
    cfg["version"] = 2  # bumped when the cached fields change
    h.update(json.dumps(cfg, sort_keys=True).encode())
    return h.hexdigest()[:16]


def load_or_compute(
    cache_dir: Path | None,
    images: np.ndarray,
    shape: tuple[int, int],
    flow_cfg: FlowConfig,
    track_cfg: TrackConfig,
    progress: bool = True,
    timings: dict[str, float] | None = None,
) -> Correspondences:
    """Correspondences from ``cache_dir`` when cached for these frames and settings, else computed.

    With ``cache_dir`` None nothing is read or written. ``timings`` receives
    ``flow_s``/``tracks_s`` when computed, or ``cache_hit`` = 1.0 when loaded.
    """
    if cache_dir is None:
        return compute_correspondences(images, shape, flow_cfg, track_cfg, progress, timings)
    cache_dir = Path(cache_dir)
    path = cache_dir / f"correspondences-{cache_key(images, shape, flow_cfg, track_cfg)}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                corr = Correspondences(**{k: z[k] for k in _FIELDS})
            if timings is not None:
                timings["cache_hit"] = 1.0
            return corr
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # corrupt: recompute
    corr = compute_correspondences(images, shape, flow_cfg, track_cfg, progress, timings)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    np.savez(tmp, **{k: getattr(corr, k) for k in _FIELDS})
    os.replace(tmp, path)
    return corr
