"""The working resolution of a run: its shape from the pixel budget, and images resized to it.

:func:`working_shape` turns an input size and a pixel budget into the working (h, w)
of the optimisation; :func:`resize_images` resizes a stack of frames (to the working or
the flow resolution) keeping OpenCV's pixel-centre convention. Frames, correspondences,
the memory model and the pipeline all need them, so they live below those modules
(re-exported by :mod:`flowmap.frames`, where they lived).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from flowmap.errors import InputError


def working_shape(height: int, width: int, pixel_budget: int, multiple: int) -> tuple[int, int]:
    """Working resolution (h, w) for frames of ``height`` x ``width`` pixels.

    Keeps the aspect ratio as closely as the ``multiple`` allows, with h * w close to
    ``pixel_budget``; both sides are multiples of ``multiple`` and never larger than
    the input (frames are shrunk, never enlarged).

    Example: a 640 x 360 (h x w) phone frame at budget 43200 -> (272, 160).

    Raises:
        InputError: a non-positive budget or multiple, or frames smaller than
            ``multiple`` pixels on a side.
    """
    if pixel_budget <= 0 or multiple <= 0:
        raise InputError(f"pixel budget and multiple must be positive, got {pixel_budget} and {multiple}")
    if height < multiple or width < multiple:
        raise InputError(
            f"frames of {width}x{height} pixels are too small; each side needs at least {multiple} pixels"
        )
    scale = min(1.0, math.sqrt(pixel_budget / (height * width)))
    h = max(1, round(height * scale / multiple)) * multiple
    w = max(1, round(width * scale / multiple)) * multiple
    h = min(h, (height // multiple) * multiple)
    w = min(w, (width // multiple) * multiple)
    return int(h), int(w)


def resize_images(images: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a stack of images to ``shape`` = (h, w).

    Args:
        images: (N, H, W, C) or (N, H, W) array (any dtype OpenCV resizes).
        shape: target (h, w) in pixels.

    Returns:
        (N, h, w, C) or (N, h, w) array of the same dtype. Uses ``cv2.INTER_AREA`` when
        shrinking (pixel-area averaging, no aliasing) and ``cv2.INTER_LINEAR`` otherwise;
        OpenCV's pixel-centre convention (u = x * W - 0.5) is preserved.
    """
    h, w = int(shape[0]), int(shape[1])
    if images.shape[1:3] == (h, w):
        return images.copy()
    shrink = h <= images.shape[1] and w <= images.shape[2]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    out = [cv2.resize(img, (w, h), interpolation=interp) for img in images]
    return np.stack(out).reshape((len(images), h, w) + images.shape[3:])

