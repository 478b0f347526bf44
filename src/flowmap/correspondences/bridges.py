"""Bridges over cuts: sparse matches between frames on either side of a broken pair.

FlowMap chains relative poses of consecutive frames, so one pair without usable flow (a
jump, heavy motion blur, a cut) breaks the whole trajectory: every later camera
inherits that pair's error. On the fox sequence, pair 30-31 (a 44 degree turn with
blur) has 0.3 % of its pixels passing the flow checks and only ~11 SIFT inliers, but
frames 20 and 44 see the same side of the object and share ~190 SIFT inliers.

This module finds such cuts (consecutive pairs where almost no flow is valid) and, for
each, the pair of frames (a <= cut < b) that shares the most RANSAC-verified SIFT matches
(Lowe, IJCV 2004; OpenCV ``findFundamentalMat`` with MAGSAC++). The optimiser then poses
the frames after the cut through that bridge instead of through the broken pair (the
final solve does it: :func:`flowmap.solve.bridge_pose`, :func:`flowmap.solve.apply_bridges`). This is flowmap's addition to the method; the
paper assumes densely sampled video where the chain never breaks.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from flowmap.camera import uv_to_xy
from flowmap.correspondences.sift import ratio_matches, sift_features
from flowmap.types import Bridges

MAX_MATCHES = 512
"""Matches kept per bridge (the best by descriptor distance among the inliers)."""


@dataclass
class BridgeConfig:
    """Attributes:
        enabled: look for bridges at all.
        cut_below: a consecutive pair is a cut when less than this fraction of its
            pixels passes the flow checks (mean of the forward and backward masks).
        search_radius: candidate frames are at most this many frames before the cut's
            first frame and after its second.
        min_inliers: a bridge needs at least this many fundamental-matrix inliers.
        sift_features: SIFT keypoints per frame.
    """

    enabled: bool = True
    cut_below: float = 0.05
    search_radius: int = 30
    min_inliers: int = 60
    sift_features: int = 3000


def find_cuts(mask_fwd: np.ndarray, mask_bwd: np.ndarray, cut_below: float) -> list[int]:
    """Indices i of the pairs (i, i+1) whose valid-flow fraction is below ``cut_below``.

    Args:
        mask_fwd, mask_bwd: (N-1, h, w) flow validity in [0, 1].
    """
    valid = 0.5 * (mask_fwd.reshape(len(mask_fwd), -1).mean(1) + mask_bwd.reshape(len(mask_bwd), -1).mean(1))
    return [int(i) for i in np.nonzero(valid < cut_below)[0]]


def _match(da: np.ndarray, db: np.ndarray, ka: np.ndarray, kb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ratio-tested, fundamental-matrix-verified matches: (K, 2) pixels in a and b, best first."""
    good = sorted(ratio_matches(da, db), key=lambda m: m.distance)
    if len(good) < 8:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    pa = ka[[m.queryIdx for m in good]]
    pb = kb[[m.trainIdx for m in good]]
    _, inliers = cv2.findFundamentalMat(pa, pb, cv2.USAC_MAGSAC, 1.0, 0.999)
    if inliers is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    keep = inliers.ravel().astype(bool)
    return pa[keep], pb[keep]


def find_bridges(images: np.ndarray, mask_fwd: np.ndarray, mask_bwd: np.ndarray, cfg: BridgeConfig) -> Bridges:
    """For every cut, the best-connected frame pair across it and its matches.

    Args:
        images: (N, H, W, 3) uint8 RGB frames (the flow resolution).
        mask_fwd, mask_bwd: (N-1, h, w) flow validity of consecutive pairs.
        cfg: settings.

    Returns:
        :class:`~flowmap.types.Bridges`: pairs (B, 3) int64 rows (cut, a, b) with
        a <= cut < cut + 1 <= b; xy (B, MAX_MATCHES, 4) float32 normalised
        (x_a, y_a, x_b, y_b), zero-padded; valid (B, MAX_MATCHES) bool. B = 0 when there
        is no cut or no bridge reaches ``min_inliers``.
    """
    empty = Bridges.none(MAX_MATCHES)
    if not cfg.enabled:
        return empty
    cuts = find_cuts(mask_fwd, mask_bwd, cfg.cut_below)
    if not cuts:
        return empty
    n, h, w = images.shape[:3]
    features: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def feats(i: int) -> tuple[np.ndarray, np.ndarray | None]:
        if i not in features:
            features[i] = sift_features(images[i], cfg.sift_features)
        return features[i]

    rows, xys, valids = [], [], []
    for j, cut in enumerate(cuts):
        # Candidates stay between the neighbouring cuts (a chain through another cut is
        # broken too); every second frame, plus the cut's own two frames.
        first = max(0, cut - cfg.search_radius, cuts[j - 1] + 1 if j > 0 else 0)
        last = min(n - 1, cut + 1 + cfg.search_radius, cuts[j + 1] if j + 1 < len(cuts) else n - 1)
        lo = sorted(set(range(cut, first - 1, -2)) | {first})
        hi = sorted(set(range(cut + 1, last + 1, 2)) | {last})
        best = (0, -1, -1, None, None)
        for a in lo:
            ka, da = feats(a)
            for b in hi:
                kb, db = feats(b)
                pa, pb = _match(da, db, ka, kb)
                if len(pa) > best[0]:
                    best = (len(pa), a, b, pa, pb)
        count, a, b, pa, pb = best
        if count < cfg.min_inliers:
            continue
        k = min(count, MAX_MATCHES)
        xy = np.zeros((MAX_MATCHES, 4), np.float32)
        xy[:k, :2] = uv_to_xy(pa[:k], h, w)
        xy[:k, 2:] = uv_to_xy(pb[:k], h, w)
        valid = np.zeros(MAX_MATCHES, bool)
        valid[:k] = True
        rows.append((cut, a, b))
        xys.append(xy)
        valids.append(valid)
    if not rows:
        return empty
    return Bridges(np.array(rows, np.int64), np.stack(xys), np.stack(valids))
