"""Correspondence stage: optical flow, point tracks and bridges over cuts (METHOD.md 2).

:func:`compute_correspondences` turns the frames into a
:class:`~flowmap.types.Correspondences` at the working resolution;
:mod:`flowmap.correspondences.cache` stores it on disk keyed by the frames and the one
:class:`CorrespondenceConfig`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from flowmap.correspondences.bridges import BridgeConfig, find_bridges
from flowmap.correspondences.flow import FlowConfig, compute_flows, flow_shape
from flowmap.correspondences.tracks import TrackConfig, compute_tracks
from flowmap.resolution import resize_images
from flowmap.types import Correspondences


@dataclass
class CorrespondenceConfig:
    """Everything the correspondences depend on besides the frames (also the cache key).

    Attributes:
        flow: optical-flow backend, resolution and validity masks.
        tracks: point tracks.
        bridges: sparse bridges over pairs without valid flow.
    """

    flow: FlowConfig = field(default_factory=FlowConfig)
    tracks: TrackConfig = field(default_factory=TrackConfig)
    bridges: BridgeConfig = field(default_factory=BridgeConfig)


def compute_correspondences(
    images: np.ndarray,
    shape: tuple[int, int],
    cfg: CorrespondenceConfig | None = None,
    progress: bool = True,
    timings: dict[str, float] | None = None,
) -> Correspondences:
    """Flow both ways between neighbours (with masks), point tracks and bridges.

    Flow, tracks and bridges all work at the flow resolution
    (:func:`~flowmap.correspondences.flow.flow_shape`): the frames are resized to it
    here, once; flow is then area-resized to the working resolution.

    Args:
        images: (N, H, W, 3) uint8 RGB frames at the input resolution, N >= 2.
        shape: working resolution (h, w) of the optimisation.
        cfg: settings (default :class:`CorrespondenceConfig`).
        progress: show progress bars.
        timings: if given, receives ``flow_s``, ``tracks_s`` and ``bridges_s`` (measured).

    Returns:
        :class:`Correspondences` at ``shape``, normalised coordinates.

    Raises:
        InputError: bad images or settings.
    """
    cfg = cfg or CorrespondenceConfig()
    t0 = time.perf_counter()
    small = resize_images(images, flow_shape(shape, images.shape[1:3], cfg.flow.scale))
    flow_fwd, flow_bwd, mask_fwd, mask_bwd = compute_flows(small, shape, cfg.flow, progress)
    t1 = time.perf_counter()
    xy, vis, query = compute_tracks(small, cfg.tracks, progress)
    t2 = time.perf_counter()
    bridges = find_bridges(small, mask_fwd, mask_bwd, cfg.bridges)
    if timings is not None:
        timings["flow_s"] = t1 - t0
        timings["tracks_s"] = t2 - t1
        timings["bridges_s"] = time.perf_counter() - t2
    return Correspondences(flow_fwd, flow_bwd, mask_fwd, mask_bwd, xy, vis, query, bridges)
