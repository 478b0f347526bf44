"""Dense depth with the refined cameras held fixed (issue 26).

Stages per frame i (cost linear in the number of frames N: a bounded window of
neighbours and of cached flows):

1. fill (:mod:`flowmap.dense.fill`): the network's depth or a smooth field through the
   adjusted points, per frame whichever predicts held-out points better;
2. neighbours (:mod:`flowmap.dense.neighbours`): up to ``neighbours`` frames within
   ``window`` whose baseline subtends about ``target_angle_deg`` at the scene and which
   overlap frame i;
3. triangulation (:mod:`flowmap.dense.triangulate`): DIS flow to each neighbour and back
   at the output resolution, forward-backward check, midpoint triangulation of every
   pixel with the fixed cameras;
4. fusion (:mod:`flowmap.dense.fuse`): parallax-weighted mean of the agreeing estimates,
   a confidence from precision (parallax), agreement and support; pixels under
   ``min_confidence`` take the fill, refitted to the confident pixels; a frame whose
   matched depth (confidence > 0) differs from its adjusted points by more than
   ``max_point_disagreement`` (median relative: cameras too inaccurate for stereo, e.g.
   rolling shutter under fast rotation) keeps the fill alone, as does a frame with
   fewer than ``min_confident_fraction`` confident pixels;
5. surface fill (:mod:`flowmap.dense.surface`, with ``surface`` and at least
   ``surface_min_confident`` of the pixels confident): one surface through the
   confident pixels of the whole video and a plane per image region replace the fill
   wherever they reach (low-texture walls and floors, where stereo is confident only on
   edges); confident pixels keep their stereo depth. The result is kept when its median
   relative difference from the adjusted points (:func:`points_error`, all frames) is no
   larger than the per-frame fill's (on rotation-dominant video the few confident pixels
   can be wrong, and a surface through them would spread their error; without any
   adjusted point to compare with, the per-frame fill is kept);
6. the fused point cloud of the confident pixels, each surface once.

Conventions: OpenCV camera axes, c2w camera-to-world, z-depth in the cameras' units,
pixel centres at integer coordinates, K in pixels of the input frames (rescaled with
:func:`flowmap.camera.K_at`).
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from flowmap.camera import K_at
from flowmap.dense.config import DenseConfig
from flowmap.dense.fill import choose_fill, corrected_base, propagate, seed_points
from flowmap.dense.fuse import fuse_estimates, fused_points
from flowmap.dense.neighbours import choose_neighbours
from flowmap.dense.surface import surface_fill
from flowmap.dense.sweep import sweep_depth
from flowmap.dense.triangulate import PairFlow, epipolar_gradient, fb_error, triangulate_flow
from flowmap.errors import InputError
from flowmap.refine.depth import sample_depth
from flowmap.types import DenseDepth

__all__ = ["DenseConfig", "DenseDepth", "dense_depth", "output_shape"]


def output_shape(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(h, w) of the dense maps for input frames of ``size`` (H, W) at ``scale``."""
    return max(8, int(round(size[0] * scale))), max(8, int(round(size[1] * scale)))


def _resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    if image.shape[:2] == (h, w):
        return image
    interp = cv2.INTER_AREA if image.shape[0] > h else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interp)


def point_errors(depth: np.ndarray, use: np.ndarray, K: np.ndarray, c2w: np.ndarray, points: np.ndarray) -> np.ndarray:
    """|d - z| / z between a frame's depth map (h, w) on pixels ``use`` and the adjusted
    points it observes (P, 3) at their nearest pixels (z: the point's depth, d: the map's;
    K in pixels of the map, c2w (4, 4); :func:`flowmap.refine.depth.sample_depth`), one
    value per point that lands on such a pixel."""
    z_point, z_map = sample_depth(np.where(use, depth, np.nan), c2w, K, np.asarray(points, np.float64).reshape(-1, 3))
    return np.abs(z_map - z_point) / z_point


def point_disagreement(depth: np.ndarray, use: np.ndarray, K: np.ndarray, c2w: np.ndarray, points: np.ndarray, min_count: int = 10) -> float:
    """Median of :func:`point_errors` of one frame; 0 with fewer than ``min_count`` points."""
    errors = point_errors(depth, use, K, c2w, points)
    return float(np.median(errors)) if len(errors) >= min_count else 0.0


def points_error(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, points: list[np.ndarray]) -> float:
    """Median of :func:`point_errors` pooled over all frames (depth (N, h, w), its
    positive pixels; c2w (N, 4, 4)); NaN without any such point."""
    errors = np.concatenate([np.zeros(0)] + [point_errors(d, d > 0, K, pose, pts) for d, pose, pts in zip(depth, c2w, points)])
    return float(np.median(errors)) if len(errors) else float("nan")


def merge_fill(
    z: np.ndarray,
    c: np.ndarray,
    use: np.ndarray,
    base: np.ndarray,
    base_work: np.ndarray,
    colours: np.ndarray,
    c2w: np.ndarray,
    K_out: np.ndarray,
    K_work: np.ndarray,
    points: np.ndarray,
    config: DenseConfig,
) -> np.ndarray:
    """One frame's depth (h, w): the stereo depth ``z`` where ``use``, elsewhere the fill
    ``base`` refitted to the adjusted points and the confident pixels (the smooth field
    of :func:`flowmap.dense.fill.corrected_base` on the uncorrected base ``base_work``
    at the working resolution, ``K_work``) and, with ``config.propagate``, spread from
    the confident pixels (:func:`flowmap.dense.fill.propagate`); 0 there with fill "none"."""
    if config.fill == "none":
        return np.where(use, z, 0.0).astype(np.float32)
    if use.sum() >= 30:
        seeds = seed_points(z, use, K_out, c2w, config.max_seeds)
        refit, _ = corrected_base(base_work, c2w, K_work, np.concatenate([points.reshape(-1, 3), seeds]))
        base = _resize(refit, base.shape)
    if config.propagate and use.any():
        base = propagate(z, c, base, colours, config.min_confidence, config.base_weight, config.smooth_lambda, config.smooth_sigma)
    return np.where(use, z, base).astype(np.float32)


def depth_range(base: np.ndarray, near_factor: float, far_factor: float) -> tuple[float, float]:
    """(near, far) z-depths the plane sweep spans for a frame whose fill is ``base``
    (h, w): its 2nd percentile of positive finite depth times ``near_factor``, its
    98th times ``far_factor``."""
    d = base[np.isfinite(base) & (base > 0)]
    if len(d) == 0:
        return 0.1, 100.0
    lo, hi = np.percentile(d, [2, 98])
    return near_factor * float(lo), far_factor * float(hi)


def frame_depth(
    i: int,
    neighbours: list[int],
    flows,
    gray: np.ndarray,
    c2w: np.ndarray,
    K: np.ndarray,
    config: DenseConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Fused depth and confidence (h, w) of frame i from its neighbours.

    ``flows(a, b)`` returns the DIS flow a -> b (h, w, 2) at the output resolution (K's
    pixels); ``gray`` is frame i there (uint8). Each estimate's expected relative error
    is sigma / parallax, with the flow noise sigma^2 = flow_sigma_px^2 +
    (image_noise / g_epi)^2 (g_epi: the gradient along the epipolar line,
    :func:`flowmap.dense.triangulate.epipolar_gradient`); an estimate is valid when its
    flow passes the forward-backward and epipolar checks, its parallax is at least
    ``min_parallax_px`` and its error at most ``max_rel_err``.
    """
    depths, errors, valid = [], [], []
    for j in neighbours:
        fwd = flows(i, j)
        fb = fb_error(fwd, flows(j, i))
        z, par, epi, direction = triangulate_flow(fwd, K, c2w[i], c2w[j])
        g_epi = epipolar_gradient(gray, direction)
        sigma = np.sqrt(config.flow_sigma_px**2 + (config.image_noise / np.maximum(g_epi, 1e-3)) ** 2)
        rel = sigma / np.maximum(par, 1e-6)
        depths.append(z)
        errors.append(rel)
        valid.append(
            (fb <= config.fb_tol_px) & (epi <= config.epi_tol_px) & (par >= config.min_parallax_px) & (rel <= config.max_rel_err)
        )
    return fuse_estimates(np.stack(depths), np.stack(errors), np.stack(valid), config.agree_tol, config.max_rel_err)


def _with_surface(
    depth: np.ndarray, confident: np.ndarray, colours: np.ndarray, K: np.ndarray, c2w: np.ndarray, config: DenseConfig,
    usable: np.ndarray | None,
) -> tuple[np.ndarray, dict]:
    """The depth maps with the surface fill (:func:`flowmap.dense.surface.surface_fill`)
    where ``config.surface`` asks for it and enough of the posed frames' pixels are
    ``confident``, and what it did (``applied``; ``skipped``: why not)."""
    if not config.surface:
        return depth, {"applied": False, "skipped": "off"}
    posed = np.ones(len(depth), bool) if usable is None else np.asarray(usable, bool)
    confident = confident & posed[:, None, None]
    fraction = float(confident[posed].mean()) if posed.any() else 0.0
    if fraction < config.surface_min_confident:
        return depth, {"applied": False, "skipped": f"{fraction:.1%} of the pixels confident, under {config.surface_min_confident:.0%}"}
    try:
        filled, source, stats = surface_fill(depth, confident, colours, K, c2w, config, posed)
    except InputError as exc:
        return depth, {"applied": False, "skipped": str(exc)}
    from_plane, from_surface = float(np.mean(source[posed] == 2)), float(np.mean(source[posed] == 1))
    return filled, {"applied": True, **stats, "plane_fraction": from_plane, "surface_fraction": from_surface}


def dense_depth(
    images: np.ndarray,
    c2w: np.ndarray,
    K: np.ndarray,
    network_depth: np.ndarray,
    points: list[np.ndarray],
    config: DenseConfig = DenseConfig(),
    usable: np.ndarray | None = None,
    progress: bool = False,
) -> DenseDepth:
    """Depth and confidence of every frame at ``config.scale`` of the input resolution.

    Args:
        images: (N, H, W, 3) uint8 RGB input frames.
        c2w: (N, 4, 4) refined camera-to-world, OpenCV axes (held fixed).
        K: (3, 3) refined intrinsics in pixels of the input frames.
        network_depth: (N, h0, w0) the run's depth so far (the network's, in the
            cameras' units) at the working resolution.
        points: N arrays (P_i, 3), the adjusted world points each frame observes.
        config: see :class:`DenseConfig`.
        usable: (N,) bool, posed frames (others keep the fill and are no neighbour).
        progress: show a progress bar.

    Returns:
        :class:`flowmap.types.DenseDepth`.
    """
    from tqdm.auto import tqdm

    t0, cpu0 = time.perf_counter(), time.process_time()
    n, H, W = images.shape[:3]
    shape = output_shape((H, W), config.scale)
    K_out = K_at(K, (H, W), shape)
    K_work = K_at(K, (H, W), network_depth.shape[1:])
    mode = "network" if config.fill == "none" else config.fill
    fill, chosen, _, fill_work = choose_fill(np.asarray(network_depth, np.float32), c2w, K_work, points, mode)
    t_fill = time.perf_counter() - t0
    nbrs = choose_neighbours(
        fill, c2w, K_work, config.neighbours, config.window, config.target_angle_deg, config.min_angle_deg,
        config.min_overlap, usable,
    )
    dis = PairFlow(config.dis_preset)
    gray: dict[int, np.ndarray] = {}
    cache: dict[tuple[int, int], np.ndarray] = {}

    def gray_of(k: int) -> np.ndarray:
        if k not in gray:
            gray[k] = _resize(cv2.cvtColor(images[k], cv2.COLOR_RGB2GRAY), shape)
        return gray[k]

    def flows(a: int, b: int) -> np.ndarray:
        if (a, b) not in cache:
            cache[(a, b)] = dis.flow(gray_of(a), gray_of(b))
        return cache[(a, b)]

    depth = np.zeros((n, *shape), np.float32)
    conf = np.zeros((n, *shape), np.float32)
    stereo = np.zeros((n, *shape), np.float32)
    rejected: list[int] = []
    colours = np.zeros((n, *shape, 3), np.uint8)
    for i in tqdm(range(n), desc="dense depth", unit="frame", disable=not progress, leave=False):
        for key in [k for k in cache if max(k) < i]:  # no frame from i on needs them: memory stays bounded
            del cache[key]
        for k in [k for k in gray if k < i - config.window]:
            del gray[k]
        colours[i] = _resize(images[i], shape)
        base = _resize(fill[i], shape)
        depth[i] = 0.0 if config.fill == "none" else base
        if not nbrs[i]:
            continue
        if config.method == "sweep":
            z, c = sweep_depth(
                gray_of(i), [gray_of(j) for j in nbrs[i]], K_out, c2w[i], [c2w[j] for j in nbrs[i]],
                depth_range(base, config.near_factor, config.far_factor), config.planes, config.window_px,
                config.min_texture, config.flow_sigma_px, config.max_rel_err,
            )
        else:
            z, c = frame_depth(i, nbrs[i], flows, gray_of(i), c2w, K_out, config)
        use = (c >= config.min_confidence) & np.isfinite(z)
        if use.mean() < config.min_confident_fraction:
            continue  # a few isolated matches: the fill alone
        if point_disagreement(z, c > 0, K_out, c2w[i], points[i]) > config.max_point_disagreement:
            rejected.append(i)  # the stereo depth contradicts the adjusted points: cameras that do not support stereo here
            continue
        stereo[i] = np.where(use, z, 0.0)
        conf[i] = c
    confident = (conf >= config.min_confidence) & (stereo > 0)
    filled, surface_stats = _with_surface(np.where(confident, stereo, depth), confident, colours, K_out, c2w, config, usable)
    for i in np.flatnonzero(confident.reshape(n, -1).any(axis=1)):  # each frame's fill, refitted and spread from its confident pixels
        depth[i] = merge_fill(
            stereo[i], conf[i], confident[i], depth[i], fill_work[i], colours[i], c2w[i], K_out, K_work, points[i], config
        )
    if surface_stats["applied"]:
        # the surface fill only where it agrees with the adjusted points at least as well as the
        # per-frame fill (on rotation-dominant video the confident pixels themselves can be wrong)
        with_surface, without = points_error(filled, K_out, c2w, points), points_error(depth, K_out, c2w, points)
        surface_stats.update(points_error=with_surface, points_error_without=without, kept=bool(with_surface <= without))
        if with_surface <= without:
            depth = filled
    t_ply = time.perf_counter()
    xyz, rgb = fused_points(depth, conf, colours, K_out, c2w, config.min_confidence, config.ply_tol, config.window, config.ply_stride)
    seconds = time.perf_counter() - t0
    stats = {
        "resolution": list(shape),
        "seconds": seconds,
        "seconds_per_frame": seconds / max(n, 1),
        "cpu_seconds_per_frame": (time.process_time() - cpu0) / max(n, 1),  # all threads of the process
        "fill_s": t_fill,
        "points_s": time.perf_counter() - t_ply,
        "confident_fraction": float(np.mean(conf >= config.min_confidence)),
        "neighbours_mean": float(np.mean([len(b) for b in nbrs])) if n else 0.0,
        "fill_chosen": {k: chosen.count(k) for k in sorted(set(chosen))},
        "frames_rejected": len(rejected),
        "points": int(len(xyz)),
        "surface": surface_stats,
    }
    return DenseDepth(depth=depth, confidence=conf, images=colours, points_xyz=xyz, points_rgb=rgb, fill=chosen, stats=stats)
