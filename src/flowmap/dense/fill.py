"""Depth where the flow has too little parallax: a base depth corrected to the adjusted points.

Two bases are corrected per frame by :func:`flowmap.refine.depth.fit_correction` (a
smooth multiplicative field fitted to the adjusted SfM points the frame observes):

* "network": the depth network's map (the run's depth before this stage);
* "smooth": a constant map, so that the field alone, i.e. a smooth interpolation of the
  points' depths, is the depth. On rotation-dominant video the network's depth can be
  anti-correlated with the scene's (tum-rpy, issue 26), and then this wins.

"auto" keeps, per frame, the one whose corrected depth predicts held-out points better
(fit on even observations, tested on odd ones; fit_correction's own split), so the fill
is never worse than the network's corrected depth on those points.
"""

from __future__ import annotations

import numpy as np

from flowmap.refine.depth import fit_correction


def corrected_base(base: np.ndarray, c2w: np.ndarray, K_work: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, float]:
    """One frame's base depth (h, w) corrected to its points (P, 3) (cameras c2w (4, 4),
    K_work (3, 3) in pixels of ``base``): (corrected (h, w) float32, held-out median
    relative error, NaN with too few points)."""
    out, held, _ = fit_correction(base[None].astype(np.float32), c2w[None], K_work, [points])
    return out[0], held


def choose_fill(
    network: np.ndarray, c2w: np.ndarray, K_work: np.ndarray, points: list[np.ndarray], mode: str
) -> tuple[np.ndarray, list[str], list[float]]:
    """The fill depth of every frame at the working resolution.

    Args:
        network: (N, h, w) the network's z-depth (already in the cameras' units).
        c2w: (N, 4, 4) camera-to-world, OpenCV axes.
        K_work: (3, 3) intrinsics in pixels of ``network``.
        points: N arrays (P_i, 3), the adjusted points each frame observes.
        mode: "auto", "network" or "smooth" (see the module docs).

    Returns:
        fill (N, h, w) float32, the base chosen per frame, its held-out error (NaN
        where the frame has too few points; the network's depth is kept there,
        corrected by the nearest frame's factor as fit_correction does for the video),
        and the chosen bases before their correction (N, h, w) (for a refit).
    """
    n = len(network)
    network = np.asarray(network, np.float32)
    chosen, errors = ["network"] * n, [float("nan")] * n
    bases = np.array(network, copy=True)
    if mode == "network":
        return fit_correction(network, c2w, K_work, points)[0], chosen, errors, bases
    fill = np.array(network, copy=True)
    missing = []
    for i in range(n):
        cands = {}
        if mode == "auto":
            cands["network"] = corrected_base(network[i], c2w[i], K_work, points[i])
        cands["smooth"] = corrected_base(np.ones_like(network[i]), c2w[i], K_work, points[i])
        finite = {k: v for k, v in cands.items() if np.isfinite(v[1])}
        if not finite:
            missing.append(i)
            continue
        best = min(finite, key=lambda k: finite[k][1])
        fill[i], errors[i], chosen[i] = finite[best][0], finite[best][1], best
        if best == "smooth":
            bases[i] = 1.0
    if missing:  # too few points of their own: the network's depth corrected as the video's (nearest frame's factor)
        fill[missing] = fit_correction(network, c2w, K_work, points)[0][missing]
    return fill, chosen, errors, bases


def seed_points(depth: np.ndarray, use: np.ndarray, K: np.ndarray, c2w: np.ndarray, count: int) -> np.ndarray:
    """World points (P, 3), P <= ``count``, of evenly strided confident pixels ``use``
    (h, w) of a depth map (h, w) with intrinsics K (pixels of the map) and c2w (4, 4)."""
    from flowmap.camera import unproject_pixels

    v, u = np.nonzero(use)
    step = max(1, len(v) // max(count, 1))
    v, u = v[::step], u[::step]
    return unproject_pixels(u, v, depth[v, u], K, c2w)


def propagate(
    dense: np.ndarray,
    confidence: np.ndarray,
    base: np.ndarray,
    guide: np.ndarray,
    min_confidence: float,
    base_weight: float,
    lam: float,
    sigma_color: float,
) -> np.ndarray:
    """One frame's depth where the flow is not confident, spread edge-aware from the confident pixels.

    Normalised edge-aware smoothing (normalised convolution, Knutsson & Westin, CVPR 1993,
    with OpenCV ximgproc's Fast Global Smoother as the filter: Min et al., "Fast Global
    Image Smoothing Based on Weighted Least Squares", TIP 2014): the weighted inverse
    depth and the weights are smoothed within image regions of similar colour
    (``guide``) and divided. The seeds are the confident pixels' inverse depth with
    weight = their confidence, and the base (the fill) everywhere else with weight
    ``base_weight``, so that regions no confident pixel reaches keep the base. Inverse
    depth, because a plane's inverse depth is affine in the image (walls, floors).

    Args:
        dense: (h, w) fused depth (NaN where none).
        confidence: (h, w) its confidence in [0, 1].
        base: (h, w) positive fill depth at the same resolution.
        guide: (h, w, 3) uint8 frame at the same resolution.
        min_confidence: seeds are the pixels at or above it.
        base_weight: weight of the base's inverse depth on the other pixels.
        lam, sigma_color: the smoother's strength and colour bandwidth (grey levels).

    Returns:
        (h, w) float32 depth.
    """
    import cv2

    seed = (confidence >= min_confidence) & np.isfinite(dense) & (dense > 0)
    inv = np.where(seed, 1.0 / np.where(seed, dense, 1.0), 1.0 / np.maximum(base, 1e-9))
    weight = np.where(seed, confidence, base_weight).astype(np.float32)
    num = cv2.ximgproc.fastGlobalSmootherFilter(guide, (inv * weight).astype(np.float32), lam, sigma_color)
    den = cv2.ximgproc.fastGlobalSmootherFilter(guide, weight, lam, sigma_color)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    ok = np.isfinite(out) & (out > 0)
    return np.where(ok, 1.0 / np.where(ok, out, 1.0), base).astype(np.float32)
