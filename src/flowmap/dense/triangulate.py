"""Per-pixel depth of one frame from dense flow to one neighbour, cameras fixed.

Conventions (see :mod:`flowmap.types`): OpenCV camera axes, ``c2w`` camera-to-world,
z-depth, pixel centres at integer coordinates, K in pixels of the maps here (the
output resolution of the dense stage).

Flow is OpenCV's DIS (Kroeger et al., "Fast Optical Flow using Dense Inverse Search",
ECCV 2016). A pixel x of frame i and its flow target x' in frame j define two rays;
their closest points give the depth (the midpoint method, Hartley & Sturm, "Triangulation",
CVIU 1997, sec. 5.3). The precision is set by the *parallax* in pixels, |x' - H x| with
H = K R_j^T R_i K^-1 the infinite homography (where x' would be for a point at infinity,
Hartley & Zisserman, MVG 2nd ed., sec. 13.4): translational flow is inversely
proportional to depth, so a flow error of s pixels makes a relative depth error of
about s / parallax.
"""

from __future__ import annotations

import cv2
import numpy as np

from flowmap.correspondences.flow import DIS_PRESETS


class PairFlow:
    """DIS flow between grayscale frames (uint8, (h, w)) at the output resolution."""

    def __init__(self, preset: str = "medium") -> None:
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])

    def flow(self, gray_i: np.ndarray, gray_j: np.ndarray) -> np.ndarray:
        """Flow i -> j, (h, w, 2) float32 pixels."""
        return self._dis.calc(gray_i, gray_j, None)


def fb_error(fwd: np.ndarray, bwd: np.ndarray) -> np.ndarray:
    """|fwd(x) + bwd(x + fwd(x))| per pixel (h, w), pixels; inf where x + fwd(x) leaves
    the image. ``fwd`` (h, w, 2) maps frame i to j, ``bwd`` j to i."""
    h, w = fwd.shape[:2]
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    mx, my = u + fwd[..., 0], v + fwd[..., 1]
    back = cv2.remap(bwd, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(np.nan, np.nan))
    err = np.linalg.norm(fwd + back, axis=-1)
    return np.where(np.isfinite(err), err, np.inf).astype(np.float32)


def pixel_rays(K: np.ndarray, R: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """World-frame directions (P, 3) of pixels (u, v) for rotation R (camera-to-world),
    scaled so that their camera-frame z is 1 (a distance t along them is z-depth)."""
    cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], axis=-1)
    return cam @ R.T


def fundamental(K: np.ndarray, c2w_i: np.ndarray, c2w_j: np.ndarray) -> np.ndarray:
    """(3, 3) fundamental matrix F with x_j^T F x_i = 0 for homogeneous pixels
    (Hartley & Zisserman, MVG 2nd ed., eq. 9.1: F = K^-T [t]_x R K^-1, with the relative
    pose X_j = R X_i + t of the two camera-to-world poses)."""
    R = c2w_j[:3, :3].T @ c2w_i[:3, :3]
    t = c2w_j[:3, :3].T @ (c2w_i[:3, 3] - c2w_j[:3, 3])
    tx = np.array([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]])
    Kinv = np.linalg.inv(K)
    return Kinv.T @ tx @ R @ Kinv


def triangulate_flow(
    flow: np.ndarray, K: np.ndarray, c2w_i: np.ndarray, c2w_j: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Depth of every pixel of frame i from its flow to frame j (midpoint method).

    Args:
        flow: (h, w, 2) flow i -> j in pixels.
        K: (3, 3) intrinsics in pixels of the flow's grid.
        c2w_i, c2w_j: (4, 4) camera-to-world, OpenCV axes.

    Returns:
        depth: (h, w) float32 z-depth in camera i (NaN where the rays are parallel or
            the point lies behind either camera).
        parallax: (h, w) float32 pixels, |x' - H_inf x| (0 for pure rotation).
        epi_dist: (h, w) float32 pixels, distance of the flow target x' from the
            epipolar line F x (flow the cameras cannot explain).
        epi_dir: (h, w, 2) float32 unit direction of the epipolar line through x in
            frame i (along which image texture constrains the depth).
    """
    h, w = flow.shape[:2]
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = u.ravel(), v.ravel()
    u2 = u + flow[..., 0].ravel().astype(np.float64)
    v2 = v + flow[..., 1].ravel().astype(np.float64)
    Ri, Rj = c2w_i[:3, :3], c2w_j[:3, :3]
    di = pixel_rays(K, Ri, u, v)
    dj = pixel_rays(K, Rj, u2, v2)
    w0 = c2w_i[:3, 3] - c2w_j[:3, 3]
    a = np.einsum("pk,pk->p", di, di)
    b = np.einsum("pk,pk->p", di, dj)
    c = np.einsum("pk,pk->p", dj, dj)
    d = di @ w0
    e = dj @ w0
    denom = a * c - b * b
    with np.errstate(divide="ignore", invalid="ignore"):
        ti = (b * e - c * d) / denom
        tj = (a * e - b * d) / denom
    ok = (np.abs(denom) > 1e-12 * a * c) & (ti > 0) & (tj > 0)
    depth = np.where(ok, ti, np.nan)
    # where the ray of x would land in j for a point at infinity
    inf = di @ Rj  # camera-j frame directions
    with np.errstate(divide="ignore", invalid="ignore"):
        ui = K[0, 0] * inf[:, 0] / inf[:, 2] + K[0, 2]
        vi = K[1, 1] * inf[:, 1] / inf[:, 2] + K[1, 2]
    parallax = np.hypot(u2 - ui, v2 - vi)
    parallax = np.where(np.isfinite(parallax) & (inf[:, 2] > 0), parallax, 0.0)
    F = fundamental(K, c2w_i, c2w_j)
    x1 = np.stack([u, v, np.ones_like(u)], axis=-1)
    x2 = np.stack([u2, v2, np.ones_like(u)], axis=-1)
    line_j = x1 @ F.T  # epipolar lines in j
    line_i = x2 @ F  # epipolar lines in i (through x)
    with np.errstate(divide="ignore", invalid="ignore"):
        epi = np.abs(np.einsum("pk,pk->p", line_j, x2)) / np.hypot(line_j[:, 0], line_j[:, 1])
        norm = np.hypot(line_i[:, 0], line_i[:, 1])
        direction = np.stack([line_i[:, 1] / norm, -line_i[:, 0] / norm], axis=-1)
    epi = np.where(np.isfinite(epi), epi, np.inf)
    direction = np.nan_to_num(direction)
    return (
        depth.reshape(h, w).astype(np.float32),
        parallax.reshape(h, w).astype(np.float32),
        epi.reshape(h, w).astype(np.float32),
        direction.reshape(h, w, 2).astype(np.float32),
    )


def epipolar_gradient(gray: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """|grad I . l| per pixel (h, w), grey levels per pixel: the image gradient of frame i
    along its epipolar line ``direction`` (h, w, 2), the texture that fixes the match
    along the line (Engel, Sturm & Cremers, "Semi-dense visual odometry for a monocular
    camera", ICCV 2013, sec. 2.1.2: the disparity error grows as 1 / (g . l))."""
    g = gray.astype(np.float32)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    return np.abs(gx * direction[..., 0] + gy * direction[..., 1])
