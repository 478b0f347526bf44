"""Dense optical flow between consecutive frames, both directions, with validity masks.

METHOD.md section 2: flow i -> i+1 and i+1 -> i is estimated at ``scale`` x the working
resolution per side (4x the pixel budget at METHOD.md's scale 2; the working resolution
itself when the global refinement follows, :func:`resolve_scale`), checked there, then
resized down to the working resolution and expressed in normalised units (a
displacement of the whole image width is 1.0; see :mod:`flowmap.types`).

The validity mask of a flow is the product of

* a forward-backward check (Sundaram, Brox, Keutzer, "Dense point trajectories by
  GPU-accelerated large displacement optical flow", ECCV 2010, eq. 5): a pixel x passes
  when ``|f(x) + b(x + f(x))|^2 <= fb_relative * (|f|^2 + |b|^2) + fb_threshold_px^2``,
* the photometric weight of the FlowMap reference implementation: warp the target frame
  with the flow and take ``(1 - max_c |I_src - I_warped|)^photometric_power`` with
  colours in [0, 1],
* zero where the flow points outside the target image,

computed at the flow resolution and area-averaged down, so the working-resolution mask
is a soft value in [0, 1].

Backends are OpenCV estimators behind the small :class:`FlowBackend` protocol; choose one
by name from :data:`FLOW_BACKENDS`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Protocol

import cv2
import numpy as np
from tqdm import tqdm

from flowmap.correspondences.sift import ratio_matches, sift_features
from flowmap.errors import InputError


class FlowBackend(Protocol):
    """A dense optical-flow estimator.

    Called as ``backend(src, dst)`` with two (H, W, 3) uint8 RGB images of the same
    size; returns the (H, W, 2) float32 displacement (du, dv) in pixels from each pixel
    centre of ``src`` to its match in ``dst``. Instances need not be thread-safe: use
    one per thread.
    """

    def __call__(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray: ...


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


class DISFlow:
    """OpenCV Dense Inverse Search, medium preset (Kroeger et al., ECCV 2016)."""

    def __init__(self) -> None:
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def __call__(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        return self._dis.calc(_gray(src), _gray(dst), None)


class DeepFlowBackend:
    """OpenCV contrib DeepFlow (Weinzaepfel et al., ICCV 2013), default parameters."""

    def __init__(self) -> None:
        self._deepflow = cv2.optflow.createOptFlow_DeepFlow()

    def __call__(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        return self._deepflow.calc(_gray(src), _gray(dst), None)


class FarnebackFlow:
    """OpenCV Farneback polynomial-expansion flow (Farneback, SCIA 2003).

    Parameters: pyramid scale 0.5, 5 levels, 15 px window, 3 iterations, poly_n 5,
    poly_sigma 1.2 (OpenCV's documented example values).
    """

    def __call__(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        return cv2.calcOpticalFlowFarneback(_gray(src), _gray(dst), None, 0.5, 5, 15, 3, 5, 1.2, 0)


FLOW_BACKENDS: dict[str, Callable[[], FlowBackend]] = {
    "dis": DISFlow,
    "deepflow": DeepFlowBackend,
    "farneback": FarnebackFlow,
}
"""Backend name -> factory returning a fresh :class:`FlowBackend`."""


def make_backend(name: str) -> FlowBackend:
    """A new flow backend by name (see :data:`FLOW_BACKENDS`).

    Raises:
        InputError: unknown name.
    """
    try:
        return FLOW_BACKENDS[name]()
    except KeyError:
        raise InputError(f"unknown flow backend {name!r}; use one of {', '.join(FLOW_BACKENDS)}") from None


@dataclass
class FlowConfig:
    """Optical flow and its validity masks.

    Attributes:
        backend: flow estimator, a key of :data:`FLOW_BACKENDS`. Default "dis" (OpenCV
            DIS, medium preset), chosen by measurement (a comparison script, since removed) on this
            2-core CPU at the flow resolution of the pipeline: on fox (544 x 320) DIS
            takes ~45 ms per flow vs ~1000 ms for DeepFlow (~4.5 s vs ~100 s for the
            98 flows of 50 frames), for a small gain from DeepFlow (median epipolar
            distance to the ground-truth cameras 0.10 vs 0.07 px, forward-backward pass
            0.89 vs 0.93). On tum-office (tens of pixels of motion) both agree with
            the ground truth equally (median epipolar distance ~1.7 vs ~1.9 px, at the
            noise of the ground truth), and on wide-baseline castle-P30 DeepFlow
            passes the forward-backward check on more pixels whose flow is wrong
            (epipolar distance ~20 px on passing pixels vs ~8 px for DIS).
        scale: flow (and the tracks and bridges) are computed at ``scale`` x the
            working resolution per side, capped at the input size, then area-resized
            down. None (default): :func:`resolve_scale` picks it for the run, 2.0 (4x
            the pixel budget, METHOD.md 2) for FlowMap alone and 1.0 when the global
            refinement follows.
        fb_threshold_px: absolute tolerance (pixels at the flow resolution) of the
            forward-backward check.
        fb_relative: relative tolerance of the forward-backward check (the 0.01 of
            Sundaram et al. 2010): the squared round-trip error may also grow by
            this fraction of the squared flow magnitudes, which tolerates the larger
            absolute errors of large motions.
        photometric_power: exponent of the photometric weight (1 - max colour
            difference)^power of the FlowMap reference (8).
        prewarp_below: when less than this fraction of a pair's pixels pass the checks
            (large motion), the flow is estimated again after warping the target by a
            homography fitted to SIFT matches (:func:`prewarped_flow`) and the better of
            the two is kept. On fox, 2 of 49 pairs move by ~120 px (37 % of the width)
            and DIS passes on 1 % of their pixels; prewarped, on ~40 %. 0 disables.
        threads: flow pairs computed in parallel (OpenCV releases the GIL); 0 uses
            every CPU core.
    """

    backend: str = "dis"
    scale: float | None = None
    fb_threshold_px: float = 1.0
    fb_relative: float = 0.01
    photometric_power: float = 8.0
    prewarp_below: float = 0.5
    threads: int = 0


DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
"""OpenCV's DIS presets by name (Kroeger et al., ECCV 2016), for the stages that run DIS
directly (:mod:`flowmap.register`, :mod:`flowmap.dense`)."""

METHOD_SCALE = 2.0
"""Flow resolution per side relative to the working resolution, METHOD.md 2 (4x the pixels)."""

REFINED_SCALE = 1.0
"""Flow resolution when the global refinement follows (:func:`resolve_scale`)."""


def resolve_scale(scale: float | None, refine: bool) -> float:
    """The flow scale of a run: ``scale`` when set; else :data:`METHOD_SCALE` for FlowMap
    alone and :data:`REFINED_SCALE` when the global refinement (:mod:`flowmap.refine`)
    follows.

    With the refinement, FlowMap's cameras only start it (its SIFT matches at the input
    resolution carry the accuracy), and flow at the working resolution kept every refined
    result (issue 23, ``benchmarks/refine_eval.py`` from 10-step starts, 2026-12-05):
    ATE (paper) castle-P30 0.00100 (0.00090 at scale 2), fountain-P11 0.00016 (0.00016),
    fox 0.00027 (0.00026), llff-fern 0.00069 (0.00073), tum-office 0.00102 (0.00103),
    tum-rpy 0.057 (0.054), while flow, tracks and bridges cost 1.2-2.0 s instead of
    3.0-7.0 s on castle-P30, fox and tum-rpy (fox: flow 3.2 -> 1.0 s, bridges 2.0 -> 0.5 s).
    """
    if scale is not None:
        return float(scale)
    return REFINED_SCALE if refine else METHOD_SCALE


def flow_shape(shape: tuple[int, int], image_shape: tuple[int, int], scale: float | None) -> tuple[int, int]:
    """Resolution (h, w) at which flow and tracks are computed.

    ``scale`` (None: :data:`METHOD_SCALE`) x the working ``shape`` per side, capped per side at the input
    ``image_shape`` (no point in estimating flow on enlarged frames), at least ``shape``;
    ``scale`` > 0 (:func:`flowmap.validate.check_correspondence_config`).
    """
    scale = resolve_scale(scale, refine=False)
    return tuple(  # type: ignore[return-value]
        int(max(s, min(round(s * scale), full))) for s, full in zip(shape, image_shape)
    )


def pixel_uv(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) float32 pixel coordinates u (column) and v (row) of every pixel centre.

    OpenCV convention, the centre of column ``i`` at ``u = i`` (for ``cv2.remap``); the
    normalised grid of the model is :func:`flowmap.geometry.pixel_grid`.
    """
    u, v = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return u, v


def warp_by_flow(image: np.ndarray, flow_px: np.ndarray) -> np.ndarray:
    """Sample ``image`` at ``x + flow(x)`` (bilinear, border replicated).

    Args:
        image: (H, W, C) or (H, W) array sampled (float32 or uint8).
        flow_px: (H, W, 2) float32 displacement in pixels.

    Returns:
        Array shaped like ``image`` (its channels) on the grid of ``flow_px``.
    """
    u, v = pixel_uv(*flow_px.shape[:2])
    return cv2.remap(image, u + flow_px[..., 0], v + flow_px[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def inside_mask(flow_px: np.ndarray) -> np.ndarray:
    """(H, W) bool: the flow target lies inside the image [-0.5, W-0.5] x [-0.5, H-0.5]."""
    h, w = flow_px.shape[:2]
    u, v = pixel_uv(h, w)
    tu, tv = u + flow_px[..., 0], v + flow_px[..., 1]
    return (tu >= -0.5) & (tu <= w - 0.5) & (tv >= -0.5) & (tv <= h - 0.5)


def forward_backward_mask(flow_px: np.ndarray, flow_back_px: np.ndarray, threshold_px: float, relative: float) -> np.ndarray:
    """(H, W) bool forward-backward consistency of ``flow_px`` (Sundaram et al. 2010).

    Args:
        flow_px: (H, W, 2) flow src -> dst in pixels.
        flow_back_px: (H, W, 2) flow dst -> src in pixels (on the dst grid).
        threshold_px: absolute tolerance in pixels.
        relative: tolerance relative to the squared flow magnitudes.
    """
    back = warp_by_flow(flow_back_px, flow_px)
    err2 = np.sum((flow_px + back) ** 2, axis=-1)
    tol2 = relative * (np.sum(flow_px**2, axis=-1) + np.sum(back**2, axis=-1)) + threshold_px**2
    return err2 <= tol2


def photometric_mask(src: np.ndarray, dst: np.ndarray, flow_px: np.ndarray, power: float) -> np.ndarray:
    """(H, W) float32 photometric weight ``(1 - max_c |src - dst(x + flow)|)^power``.

    Colours in [0, 1]; ``src``/``dst`` (H, W, 3) uint8 RGB. From the FlowMap reference
    implementation (METHOD.md section 2).
    """
    warped = warp_by_flow(dst.astype(np.float32), flow_px)
    diff = np.abs(src.astype(np.float32) - warped).max(axis=-1) / 255.0
    return np.clip(1.0 - diff, 0.0, 1.0) ** power


def flow_masks(
    src: np.ndarray, dst: np.ndarray, flow_px: np.ndarray, flow_back_px: np.ndarray, cfg: FlowConfig
) -> np.ndarray:
    """(H, W) float32 validity in [0, 1] of ``flow_px`` (src -> dst) at the flow resolution.

    Product of the forward-backward check, the photometric weight and the inside test.
    """
    fb = forward_backward_mask(flow_px, flow_back_px, cfg.fb_threshold_px, cfg.fb_relative)
    inside = inside_mask(flow_px)
    photo = photometric_mask(src, dst, flow_px, cfg.photometric_power)
    return (photo * (fb & inside)).astype(np.float32)


def to_working(flow_px: np.ndarray, mask: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Area-resize a flow (pixels) and its mask to ``shape``; flow becomes normalised.

    Normalised displacement = pixel displacement / (W, H) of the grid it was measured on,
    which is independent of the resolution it is later sampled at.
    """
    fh, fw = flow_px.shape[:2]
    h, w = shape
    interp = cv2.INTER_AREA if (h <= fh and w <= fw) else cv2.INTER_LINEAR
    flow = cv2.resize(flow_px, (w, h), interpolation=interp) / np.array([fw, fh], dtype=np.float32)
    m = cv2.resize(mask, (w, h), interpolation=interp)
    return flow.astype(np.float32), np.clip(m, 0.0, 1.0).astype(np.float32)


def homography(src: np.ndarray, dst: np.ndarray, min_inliers: int = 15) -> np.ndarray | None:
    """3x3 homography mapping pixels of ``src`` to ``dst`` from SIFT matches, or None.

    OpenCV SIFT (Lowe, IJCV 2004) with the ratio test at 0.8, then RANSAC
    (``cv2.findHomography``, 3 px). None when fewer than ``min_inliers`` matches agree.
    """
    pts_a, da = sift_features(src, 2000)
    pts_b, db = sift_features(dst, 2000)
    if len(pts_a) < min_inliers:
        return None
    good = ratio_matches(da, db)
    if len(good) < min_inliers:
        return None
    pa = pts_a[[m.queryIdx for m in good]]
    pb = pts_b[[m.trainIdx for m in good]]
    H, inliers = cv2.findHomography(pa, pb, cv2.RANSAC, 3.0)
    if H is None or inliers is None or int(inliers.sum()) < min_inliers:
        return None
    return H


def prewarped_flow(backend: FlowBackend, src: np.ndarray, dst: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Flow src -> dst estimated between ``src`` and ``dst`` warped back by ``H``.

    ``dst`` is resampled at H x, the backend measures the (small) residual flow r,
    and the flow is H(x + r(x)) - x. Handles motions beyond the backend's pyramid.
    """
    h, w = src.shape[:2]
    warped = cv2.warpPerspective(dst, H, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    residual = backend(src, warped)
    u, v = pixel_uv(h, w)
    pts = np.stack([u + residual[..., 0], v + residual[..., 1]], axis=-1).reshape(-1, 1, 2)
    mapped = cv2.perspectiveTransform(pts.astype(np.float64), H).reshape(h, w, 2)
    return (mapped - np.stack([u, v], axis=-1)).astype(np.float32)


def _pair(images: np.ndarray, i: int, shape: tuple[int, int], cfg: FlowConfig) -> tuple[np.ndarray, ...]:
    backend = make_backend(cfg.backend)
    a, b = images[i], images[i + 1]
    fwd = backend(a, b)
    bwd = backend(b, a)
    mask_fwd = flow_masks(a, b, fwd, bwd, cfg)
    mask_bwd = flow_masks(b, a, bwd, fwd, cfg)
    if cfg.prewarp_below > 0 and min(mask_fwd.mean(), mask_bwd.mean()) < cfg.prewarp_below:
        H = homography(a, b)
        if H is not None:
            fwd2 = prewarped_flow(backend, a, b, H)
            bwd2 = prewarped_flow(backend, b, a, np.linalg.inv(H))
            m_fwd2 = flow_masks(a, b, fwd2, bwd2, cfg)
            m_bwd2 = flow_masks(b, a, bwd2, fwd2, cfg)
            if m_fwd2.mean() + m_bwd2.mean() > mask_fwd.mean() + mask_bwd.mean():
                fwd, bwd, mask_fwd, mask_bwd = fwd2, bwd2, m_fwd2, m_bwd2
    return (*to_working(fwd, mask_fwd, shape), *to_working(bwd, mask_bwd, shape))


def compute_flows(
    images: np.ndarray, shape: tuple[int, int], cfg: FlowConfig, progress: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Forward and backward flow of consecutive frames with validity masks.

    Args:
        images: (N, H, W, 3) uint8 RGB frames at the flow resolution (see
            :func:`flow_shape`; the caller resizes), N >= 2.
        shape: working resolution (h, w) the flow is area-resized to.
        cfg: backend and mask settings.
        progress: show a tqdm bar on stderr.

    Returns:
        flow_fwd: (N-1, h, w, 2) float32 normalised flow i -> i+1 at the pixel centres of
            frame i (dx, dy in units of image width and height).
        flow_bwd: (N-1, h, w, 2) float32 normalised flow i+1 -> i on frame i+1.
        mask_fwd, mask_bwd: (N-1, h, w) float32 validity in [0, 1]: forward-backward
            check x photometric weight, zero where the flow leaves the image.

    Raises:
        InputError: fewer than 2 frames, an unknown backend or a non-positive scale.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InputError(f"images must be (N, H, W, 3) uint8 RGB, got {images.shape} {images.dtype}")
    if len(images) < 2:
        raise InputError(f"flow needs at least 2 frames, got {len(images)}")
    make_backend(cfg.backend)  # fail early on a bad name
    threads = cfg.threads if cfg.threads > 0 else (os.cpu_count() or 1)
    n = len(images) - 1
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(
            tqdm(
                pool.map(lambda i: _pair(images, i, shape, cfg), range(n)),
                total=n,
                desc=f"flow ({cfg.backend})",
                unit="pair",
                disable=not progress,
            )
        )
    flow_fwd, mask_fwd, flow_bwd, mask_bwd = (np.stack(x) for x in zip(*results))
    return flow_fwd, flow_bwd, mask_fwd, mask_bwd
