"""Sparse SIFT matching shared by the homography pre-warp and the bridges over cuts.

OpenCV SIFT (Lowe, IJCV 2004) with a brute-force 2-nearest-neighbour search and Lowe's
ratio test (section 7.1).
"""

from __future__ import annotations

import cv2
import numpy as np


def sift_features(image: np.ndarray, n_features: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Keypoints and descriptors of an (H, W, 3) uint8 RGB image.

    Returns:
        points: (K, 2) float32 keypoint positions in pixels (OpenCV centres, u = column).
        descriptors: (K, 128) float32, or None when no keypoint was found.
    """
    keypoints, descriptors = cv2.SIFT_create(n_features).detectAndCompute(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), None)
    return np.float32([k.pt for k in keypoints]).reshape(-1, 2), descriptors


def ratio_matches(desc_a: np.ndarray | None, desc_b: np.ndarray | None, ratio: float = 0.8) -> list[cv2.DMatch]:
    """Matches a -> b whose nearest neighbour is closer than ``ratio`` x the second nearest.

    Returns [] when either side has fewer than two descriptors. Order: OpenCV's (by query index).
    """
    if desc_a is None or desc_b is None or len(desc_a) < 2 or len(desc_b) < 2:
        return []
    pairs = cv2.BFMatcher().knnMatch(desc_a, desc_b, k=2)
    return [m[0] for m in pairs if len(m) == 2 and m[0].distance < ratio * m[1].distance]
