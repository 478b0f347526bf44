"""Degenerate-content checks: silent failures turned into warnings or an error.

Degenerate content (pure functions of :class:`~flowmap.types.Correspondences`, the
frames and the result; each returns a list of one-line warnings for
``Reconstruction.warnings``, or raises :class:`~flowmap.errors.DegenerateInputError`
when no reconstruction is possible):

* :func:`motion_warnings`: a static camera or near-identical frames. Flow magnitudes
  are measured at the working resolution, in its pixels; a pair whose median valid flow
  is below ``CheckConfig.static_flow_px`` has almost no parallax. All frames identical
  (the whole video moves less than ``frozen_total_px``) is an error.
* :func:`valid_flow_warnings`: frame pairs where the flow passes its validity checks
  on almost no pixels (textureless, dark, blurred, a scene cut).
* :func:`texture_warnings`: frames that are dark or have almost no texture. A uniform
  frame gets a zero flow that passes the forward-backward and photometric checks, so
  the flow validity alone does not reveal it.
* :func:`focal_warnings`: an estimated focal length at the edge of the candidate range
  of :class:`~flowmap.model.intrinsics.FocalConfig` (the true one may lie outside).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from flowmap.errors import DegenerateInputError
from flowmap.types import Correspondences

if TYPE_CHECKING:
    from flowmap.model.intrinsics import FocalConfig


@dataclass
class CheckConfig:
    """Thresholds of the degenerate-content checks.

    Attributes:
        valid_mask: a flow pixel counts as valid where its mask is above this.
        static_flow_px: a pair whose median valid flow is below this many pixels of
            the working resolution has almost no parallax.
        static_fraction: warn when more than this fraction of the pairs are static.
        frozen_total_px: raise DegenerateInputError when the image moves less than this
            across the whole video (see :func:`span_motion_px`): the camera does not
            move.
        min_valid_fraction: warn about pairs whose flow is valid on fewer pixels.
        min_textured_fraction: warn about frames where fewer pixels lie on an edge
            (gradient above ``edge_gray_levels`` per pixel, gray levels 0-255).
        edge_gray_levels: gradient magnitude of an edge, gray levels per pixel.
        dark_gray_level: warn about frames whose mean gray level is below this.
        focal_edge_spacings: warn when the focal length lies within this many
            candidate spacings of either end of the candidate range (or beyond it).
    """

    valid_mask: float = 0.5
    static_flow_px: float = 0.5
    static_fraction: float = 0.5
    frozen_total_px: float = 1.0
    min_valid_fraction: float = 0.1
    min_textured_fraction: float = 0.01
    edge_gray_levels: float = 2.0
    dark_gray_level: float = 8.0
    focal_edge_spacings: float = 2.0


def _list(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _pair_names(indices, names: list[str] | None) -> list[str]:
    if names is None:
        return [f"{i}-{i + 1}" for i in indices]
    return [f"{names[i]}-{names[i + 1]}" for i in indices]


# ---------------------------------------------------------------------------
# Degenerate content
# ---------------------------------------------------------------------------


def pair_motion_px(corr: Correspondences, valid_mask: float = 0.5) -> np.ndarray:
    """Median forward-flow magnitude of every pair, in pixels of the working resolution.

    Args:
        corr: correspondences; flow in normalised units (see :mod:`flowmap.types`).
        valid_mask: only pixels whose forward mask is above this count.

    Returns:
        (N-1,) float64 median |flow| over valid pixels; NaN for a pair without any.
    """
    h, w = corr.shape
    mag = np.hypot(corr.flow_fwd[..., 0] * w, corr.flow_fwd[..., 1] * h)
    out = np.full(len(mag), np.nan)
    for i, (m, k) in enumerate(zip(mag, corr.mask_fwd)):
        valid = k > valid_mask
        if valid.any():
            out[i] = float(np.median(m[valid]))
    return out


def valid_fraction(corr: Correspondences, valid_mask: float = 0.5) -> np.ndarray:
    """(N-1,) fraction of pixels whose flow is valid in both directions' masks (the smaller)."""
    fwd = (corr.mask_fwd > valid_mask).reshape(len(corr.mask_fwd), -1).mean(axis=1)
    bwd = (corr.mask_bwd > valid_mask).reshape(len(corr.mask_bwd), -1).mean(axis=1)
    return np.minimum(fwd, bwd)


def span_motion_px(images: np.ndarray, spans: int = 4) -> float:
    """How far the image moves across the whole video, in pixels of ``images``.

    The median |flow| (OpenCV DIS, medium preset) from the first frame to the frames at
    1/spans, 2/spans, ... of the video, largest of these. Unlike a sum of per-pair
    motions it does not grow with noise, and unlike first-to-last alone it does not
    miss a camera that returns to where it started.

    Args:
        images: (N, h, w, 3) uint8 RGB frames (the working resolution).
        spans: number of target frames.
    """
    import cv2

    n = len(images)
    gray = [cv2.cvtColor(np.ascontiguousarray(images[i]), cv2.COLOR_RGB2GRAY) for i in range(n)]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    targets = sorted({max(1, round(k * (n - 1) / spans)) for k in range(1, spans + 1)})
    return max(float(np.median(np.linalg.norm(dis.calc(gray[0], gray[t], None), axis=-1))) for t in targets)


def motion_warnings(
    corr: Correspondences,
    names: list[str] | None = None,
    cfg: CheckConfig | None = None,
    images: np.ndarray | None = None,
) -> list[str]:
    """Warn about a static camera; raise when the frames do not move at all.

    Args:
        corr: correspondences at the working resolution.
        names: frame names for the messages (default: indices).
        cfg: thresholds.
        images: (N, h, w, 3) uint8 frames at the working resolution; when most pairs
            are static, the motion across the whole video is measured on them
            (:func:`span_motion_px`). Without them it is the sum of the pairs' motions.

    Returns:
        A list with one warning when more than ``cfg.static_fraction`` of the pairs
        move less than ``cfg.static_flow_px`` (suggesting a ``--stride`` that gives
        about 2 px per pair), else [].

    Raises:
        DegenerateInputError: the image moves less than ``cfg.frozen_total_px`` pixels
            across the whole video (all frames essentially identical).
    """
    cfg = cfg or CheckConfig()
    motion = pair_motion_px(corr, cfg.valid_mask)
    measured = motion[np.isfinite(motion)]
    static = motion < cfg.static_flow_px  # NaN compares False: unmeasured pairs are not static
    if len(measured) == 0 or static.sum() <= cfg.static_fraction * len(motion):
        return []
    n = corr.n_frames
    span = span_motion_px(images) if images is not None else float(measured.sum())
    if span < cfg.frozen_total_px:
        raise DegenerateInputError(
            f"the {n} frames are (nearly) identical: the image moves {span:.2f} px across the whole video, so there "
            "is no parallax to reconstruct from; give a video where the camera moves"
        )
    per_frame = span / (n - 1)
    stride = int(min(max(2, math.ceil(2.0 / per_frame)), max(2, (n - 1) // 2)))
    return [
        f"static camera: {int(static.sum())} of {len(motion)} frame pairs move less than {cfg.static_flow_px:g} px "
        f"(median {float(np.median(measured)):.2f} px at the working resolution), so there is little parallax and "
        f"poses and depth are unreliable; use every k-th frame, e.g. --stride {stride}"
    ]


def valid_flow_warnings(
    corr: Correspondences, names: list[str] | None = None, cfg: CheckConfig | None = None
) -> list[str]:
    """Warn about frame pairs whose flow is valid on fewer than ``cfg.min_valid_fraction`` of the pixels.

    Returns:
        [] or one warning naming the pairs (first five) and their valid fractions.
    """
    cfg = cfg or CheckConfig()
    frac = valid_fraction(corr, cfg.valid_mask)
    bad = np.flatnonzero(frac < cfg.min_valid_fraction)
    if len(bad) == 0:
        return []
    labels = [f"{p} {100 * frac[i]:.0f}%" for p, i in zip(_pair_names(bad, names), bad)]
    bridged = {int(c): (int(a), int(b), int(v.sum())) for (c, a, b), v in zip(corr.bridges.pairs, corr.bridges.valid)}
    label = (lambda i: names[i]) if names is not None else str
    notes = [
        f"{label(c)}-{label(c + 1)} bridged through {label(a)}-{label(b)} ({k} SIFT matches)"
        for c, (a, b, k) in sorted(bridged.items())
        if c in set(int(i) for i in bad)
    ]
    unbridged = [i for i in bad if int(i) not in bridged]
    tail = "Their poses are unreliable" if unbridged else "The poses after them come from the bridge"
    if notes:
        tail = f"{'; '.join(notes)}. {tail}" if unbridged else f"{'; '.join(notes)}; the poses after them come from the bridge"
    return [
        f"almost no valid flow in {len(bad)} of {len(frac)} frame pairs (pixels passing the flow checks: "
        f"{_list(labels)}): textureless, dark, blurred or a cut? {tail}"
    ]


def texture_warnings(images: np.ndarray, names: list[str] | None = None, cfg: CheckConfig | None = None) -> list[str]:
    """Warn about frames that are dark or have almost no texture.

    Args:
        images: (N, h, w, 3) uint8 RGB frames (the working resolution is enough).
        names: frame names for the messages (default: indices).
        cfg: thresholds: a frame is dark when its mean gray level (0-255) is below
            ``dark_gray_level``, textureless when fewer than ``min_textured_fraction``
            of its pixels have a gray gradient (Sobel / 8, levels per pixel) above
            ``edge_gray_levels``.

    Returns:
        [] or one warning naming the frames.
    """
    import cv2

    cfg = cfg or CheckConfig()
    names = names if names is not None else [str(i) for i in range(len(images))]
    flagged: list[str] = []
    for name, image in zip(names, images):
        gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float32)
        gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3) / 8.0
        gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3) / 8.0
        textured = float((np.hypot(gx, gy) > cfg.edge_gray_levels).mean())
        if gray.mean() < cfg.dark_gray_level:
            flagged.append(f"{name} (dark)")
        elif textured < cfg.min_textured_fraction:
            flagged.append(f"{name} (no texture)")
    if not flagged:
        return []
    return [
        f"{len(flagged)} of {len(images)} frames are dark or almost uniform: {_list(flagged)}; flow cannot be "
        "measured there, so their depth and poses are unreliable (remove them or improve the exposure)"
    ]


def focal_warnings(
    focal_px: float,
    image_size: tuple[int, int],
    focal_cfg: FocalConfig,
    cfg: CheckConfig | None = None,
) -> list[str]:
    """Warn when an estimated focal length ends at (or beyond) an end of the candidate range.

    The candidates of :func:`flowmap.model.intrinsics.focal_candidates` run from
    ``min_factor`` to ``max_factor`` x sqrt(H W) in ``n_candidates`` even steps; a
    softmin estimate piles up on the last candidate when the true focal length lies
    beyond it.

    Args:
        focal_px: the estimated focal length in pixels of the input frames.
        image_size: (H, W) of the input frames.
        focal_cfg: the candidate range used.
        cfg: ``focal_edge_spacings``: how close to an end counts as "at the edge".

    Returns:
        [] or one warning (suggesting ``--focal`` when the focal length is known).
    """
    cfg = cfg or CheckConfig()
    scale = math.sqrt(image_size[0] * image_size[1])
    lo, hi = focal_cfg.min_factor * scale, focal_cfg.max_factor * scale
    margin = cfg.focal_edge_spacings * (hi - lo) / max(1, focal_cfg.n_candidates - 1)
    if not np.isfinite(focal_px):
        return [f"the focal length estimate is not finite ({focal_px}); pass --focal if you know it"]
    if lo + margin < focal_px < hi - margin:
        return []
    edge = "lower" if focal_px <= lo + margin else "upper"
    view = "a very wide-angle (fisheye?)" if edge == "lower" else "a telephoto or zoomed"
    return [
        f"the estimated focal length {focal_px:.1f} px is at the {edge} edge of the searched range "
        f"{lo:.0f}-{hi:.0f} px ({focal_cfg.min_factor:g}-{focal_cfg.max_factor:g} x sqrt(H W)): the true one may lie "
        f"outside it ({view} camera?); pass --focal in pixels if you know it"
    ]
