"""NumPy pinhole camera: intrinsics at a resolution, pixel-centre conventions, (un)projection.

Conventions (see :mod:`flowmap.types`): OpenCV camera axes (x right, y down, z
forward); ``c2w`` is camera-to-world (4, 4); ``depth`` is z-depth. flowmap's pixel
coordinates ``uv`` put the centre of pixel column ``i`` at ``u = i`` (OpenCV, COLMAP's
``.txt`` of old, ``K`` of every flowmap value). COLMAP's camera models and nerfstudio's
``transforms.json`` put the image origin at the top-left *corner*, so the centre of
column ``i`` is at ``i + 0.5`` (COLMAP documentation, "Cameras"; hloc shifts keypoints
by +0.5 for the same reason): :func:`to_corner_origin` and :func:`corner_uv` convert.
Normalised coordinates ``xy`` in [0, 1] (the centre of column ``i`` at ``(i + 0.5) / W``)
are converted by :func:`uv_to_xy`.

Pinhole model, in pixels of the image ``K`` refers to::

    unproject:  X_cam = depth * K^-1 [u, v, 1]^T,    X_world = R_c2w X_cam + t_c2w
    project:    X_cam = R_c2w^T (X_world - t_c2w),   [u, v] = (K X_cam)[:2] / z
"""

from __future__ import annotations

import numpy as np

CORNER_SHIFT = 0.5
"""Pixels from flowmap's pixel-centre origin to a corner-origin convention (COLMAP, nerfstudio)."""


def K_at(K: np.ndarray, size: tuple[int, int], new_size: tuple[int, int]) -> np.ndarray:
    """Intrinsics of an image of ``size`` (H, W) rescaled to ``new_size`` (H', W').

    The image is scaled, not cropped: a point at ``u`` moves to
    ``u' = (u + 0.5) * W' / W - 0.5`` (pixel centres stay pixel centres).

    Args:
        K: (3, 3) intrinsics in pixels of an H x W image, OpenCV pixel centres.
        size: (H, W).
        new_size: (H', W').

    Returns:
        (3, 3) float64 intrinsics in pixels of the H' x W' image.
    """
    (H, W), (h, w) = size, new_size
    sx, sy = w / W, h / H
    out = np.array(K, dtype=np.float64, copy=True)
    out[0, 0] *= sx
    out[1, 1] *= sy
    out[0, 2] = (out[0, 2] + 0.5) * sx - 0.5
    out[1, 2] = (out[1, 2] + 0.5) * sy - 0.5
    return out


def to_corner_origin(K: np.ndarray) -> np.ndarray:
    """(3, 3) intrinsics with the principal point moved to a corner-origin convention (+0.5 px)."""
    out = np.array(K, dtype=np.float64, copy=True)
    out[:2, 2] += CORNER_SHIFT
    return out


def corner_uv(uv: np.ndarray) -> np.ndarray:
    """(..., 2) pixel coordinates, pixel-centre origin -> corner origin (+0.5 px)."""
    return np.asarray(uv, dtype=np.float64) + CORNER_SHIFT


def uv_to_xy(uv: np.ndarray, height: int, width: int) -> np.ndarray:
    """(..., 2) pixel coordinates (centre of column i at u = i) -> float32 normalised xy in [0, 1].

    Computed in float32 (the precision of the OpenCV keypoints and tracks it converts).
    """
    return (np.asarray(uv, dtype=np.float32) + np.float32(0.5)) / np.array([width, height], dtype=np.float32)


def unproject_pixels(u: np.ndarray, v: np.ndarray, depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """World points of pixels with known z-depth.

    Args:
        u, v: (P,) pixel coordinates (OpenCV pixel centres).
        depth: (P,) z-depth of those pixels.
        K: (3, 3) intrinsics in the same pixels.
        c2w: (4, 4) camera-to-world, OpenCV axes.

    Returns:
        (P, 3) float64 world points.
    """
    x = (np.asarray(u, np.float64) - K[0, 2]) / K[0, 0]
    y = (np.asarray(v, np.float64) - K[1, 2]) / K[1, 1]
    z = np.asarray(depth, np.float64)
    cam = np.stack([x * z, y * z, z], axis=-1)
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


def project_points(xyz: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points into a camera.

    Args:
        xyz: (P, 3) world points.
        K: (3, 3) intrinsics in pixels (OpenCV pixel centres).
        c2w: (4, 4) camera-to-world, OpenCV axes.

    Returns:
        uv: (P, 2) pixel coordinates (NaN where z <= 0).
        z: (P,) z-depth in the camera (<= 0 behind it).
    """
    cam = (np.asarray(xyz, np.float64) - c2w[:3, 3]) @ c2w[:3, :3]
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.stack([K[0, 0] * cam[:, 0] / z + K[0, 2], K[1, 1] * cam[:, 1] / z + K[1, 2]], axis=-1)
    uv[z <= 0] = np.nan
    return uv, z
