"""Keyframe stage: choose the frames to reconstruct from the motion itself (issue 25).

A phone clip holds many near-duplicate frames; reconstructing all of them pays flow,
tracks, SIFT, matching and adjustment for nothing. The motion between consecutive
input frames is measured on a cheap pass: OpenCV's DIS optical flow (Kroeger et al.,
ECCV 2016, ultrafast preset) between grayscale thumbnails ``thumb_width`` pixels wide,
reduced to the median flow magnitude in fractions of the width (:func:`frame_motion`).
Keyframes then split the accumulated motion into equal parts, as the FlowMap
reference's ``flowmap.subsample`` makes the flow between kept frames even, and SLAM
systems start a keyframe when the parallax since the last one exceeds a threshold
(:func:`select_keyframes`): a static stretch gets few keyframes, a fast one many. No two
consecutive keyframes are more than ``max_step`` of the width apart in accumulated
motion (:func:`keep_overlap`), so that they keep most of their view in common for the
chain and the refinement's matching. The other frames are posed later against the refined keyframes (:mod:`flowmap.register`).
"""

from __future__ import annotations

import cv2
import numpy as np

from flowmap.config import KeyframeConfig
from flowmap.errors import InputError

MIN_KEYFRAMES = 3
"""FlowMap needs at least three frames (:data:`flowmap.validate.MIN_FRAMES`)."""


def parse_target(text: str | int) -> int | str:
    """``--keyframes`` as a :attr:`KeyframeConfig.target`: "auto", "all" or a count >= 3.

    Raises:
        InputError: anything else.
    """
    value = str(text).strip().lower()
    if value in ("auto", "all"):
        return value
    try:
        count = int(value)
    except ValueError:
        raise InputError(f"--keyframes must be auto, all or a number of frames, got {text!r}") from None
    if count < MIN_KEYFRAMES:
        raise InputError(f"--keyframes must be at least {MIN_KEYFRAMES} (or auto / all), got {count}")
    return count


def check_keyframe_config(cfg: KeyframeConfig) -> None:
    """Raise :class:`InputError` for keyframe settings that cannot work."""
    parse_target(cfg.target)
    if cfg.auto_target < MIN_KEYFRAMES or cfg.auto_all_max < MIN_KEYFRAMES:
        raise InputError(f"keyframe auto_target and auto_all_max must be at least {MIN_KEYFRAMES}")
    if cfg.thumb_width < 16 or not cfg.max_step > 0 or not cfg.auto_min_step >= 0:
        raise InputError("keyframe thumb_width must be at least 16 pixels, max_step positive and auto_min_step >= 0")


def target_count(cfg: KeyframeConfig, n_frames: int) -> int | None:
    """How many keyframes to choose out of ``n_frames`` at most; None: every frame is a
    keyframe, without measuring the motion.

    "auto" aims at every frame of an input of at most ``cfg.auto_all_max`` frames and at
    ``cfg.auto_target`` beyond, and :func:`choose_keyframes` lowers that to what the
    motion holds (:func:`motion_count`), so a short slow clip is scanned too.
    """
    target = parse_target(cfg.target)
    if target == "all":
        return None
    if target == "auto":
        return n_frames if n_frames <= cfg.auto_all_max else cfg.auto_target
    count = int(target)
    return None if count >= n_frames else count


def thumbnail(image: np.ndarray, width: int) -> np.ndarray:
    """(h, width) uint8 grayscale thumbnail of an (H, W, 3) RGB or (H, W) gray image (area
    interpolation; the height keeps the aspect ratio)."""
    gray = image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    height = max(8, int(round(gray.shape[0] * width / gray.shape[1])))
    return cv2.resize(gray, (int(width), height), interpolation=cv2.INTER_AREA)


def flow_motion(dis, a: np.ndarray, b: np.ndarray) -> float:
    """Median length of the DIS flow from thumbnail ``a`` to ``b`` (each (h, w) uint8),
    in fractions of the width."""
    flow = dis.calc(a, b, None)
    return float(np.median(np.hypot(flow[..., 0], flow[..., 1]))) / float(a.shape[1])


def frame_motion(thumbs: np.ndarray) -> np.ndarray:
    """Motion between consecutive frames: median DIS flow magnitude over the width.

    Args:
        thumbs: (N, h, w) uint8 grayscale thumbnails (:func:`thumbnail`).

    Returns:
        (N-1,) float32: entry i is the median over the pixels of frame i of the length
        of the flow i -> i+1, in fractions of the width ``w`` (so independent of the
        thumbnail size); rotation and translation both count.
    """
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    return np.array([flow_motion(dis, thumbs[i], thumbs[i + 1]) for i in range(len(thumbs) - 1)], np.float32)


def select_keyframes(motion: np.ndarray, target: int) -> np.ndarray:
    """Keyframes that split the accumulated motion into ``target - 1`` equal parts.

    The frame whose accumulated motion is closest to each of ``k * total / (target - 1)``
    is kept (the first and last frames always), so that stretches without motion give
    few keyframes and fast ones many (the count is then below ``target``).

    Args:
        motion: (N-1,) motion between consecutive frames (:func:`frame_motion`,
            fractions of the image width).
        target: the keyframe count aimed at (>= 3).

    Returns:
        (K,) int64 sorted frame indices, first 0 and last N-1, min(3, N) <= K <= target.
    """
    n = len(motion) + 1
    if target >= n:
        return np.arange(n)
    cumulative = accumulated(motion)
    total = cumulative[-1]
    if not total > 0:
        return np.unique(np.linspace(0, n - 1, MIN_KEYFRAMES).round().astype(np.int64))
    marks = np.linspace(0.0, total, target)
    right = np.clip(np.searchsorted(cumulative, marks), 1, n - 1)
    nearer_left = marks - cumulative[right - 1] < cumulative[right] - marks
    nearest = np.where(nearer_left, right - 1, right)
    nearest[0], nearest[-1] = 0, n - 1  # the first and last frames, whatever the motion there
    keys = np.unique(nearest)
    if len(keys) < MIN_KEYFRAMES:
        keys = np.unique(np.concatenate([keys, np.linspace(0, n - 1, MIN_KEYFRAMES).round().astype(np.int64)]))
    return keys


def accumulated(motion: np.ndarray) -> np.ndarray:
    """(N,) float64 motion accumulated from frame 0 (0 at frame 0)."""
    return np.concatenate([[0.0], np.cumsum(np.asarray(motion, np.float64))])


def keep_overlap(keys: np.ndarray, motion: np.ndarray, max_step: float) -> np.ndarray:
    """``keys`` with frames added where consecutive keyframes lie too far apart.

    The motion between two keyframes is the motion accumulated over the frames between
    them: an upper bound of their displacement (a camera shaking back and forth counts
    its travel both ways). Where it exceeds ``max_step``, the furthest frame within
    ``max_step`` (at least the next frame) becomes a keyframe too, greedily. A direct
    flow between the two keyframes would be tighter, but it was measured to fail
    silently where they no longer overlap (DIS then returns small, wrong flow).

    Args:
        keys: (K,) sorted keyframe positions, first 0.
        motion: (N-1,) consecutive motion (:func:`frame_motion`, fractions of the width).
        max_step: the most accumulated motion between consecutive keyframes.

    Returns:
        (K',) int64 sorted keyframe positions, K' >= K, a superset of ``keys``.
    """
    cumulative = accumulated(motion)
    out = [int(keys[0])]
    for nxt in (int(k) for k in keys[1:]):
        while cumulative[nxt] - cumulative[out[-1]] > max_step and nxt - out[-1] > 1:
            last = out[-1]
            reach = int(np.searchsorted(cumulative, cumulative[last] + max_step, side="right")) - 1
            out.append(min(max(reach, last + 1), nxt - 1))
        out.append(nxt)
    return np.asarray(out, np.int64)


def choose_keyframes(thumbs: np.ndarray, cfg: KeyframeConfig) -> tuple[np.ndarray, np.ndarray]:
    """The keyframes of a sequence from its thumbnails.

    Args:
        thumbs: (N, h, w) uint8 grayscale thumbnails of the selected frames.
        cfg: the target and the overlap limit.

    Returns:
        (keys, motion): keys (K,) int64 sorted positions of the keyframes among the N
        frames (all of them when :func:`target_count` says so), motion (N-1,) float32
        between consecutive frames (fractions of the width).
    """
    motion = frame_motion(thumbs)
    count = target_count(cfg, len(thumbs))
    if count is None:
        return np.arange(len(thumbs)), motion
    # A short input that does not move at all keeps every frame, as before the scan
    # covered short inputs, so that FlowMap's check names all of them as identical.
    if parse_target(cfg.target) == "auto" and (len(thumbs) > cfg.auto_all_max or float(np.sum(motion)) > 0):
        count = min(count, motion_count(motion, cfg.auto_min_step))
    return keep_overlap(select_keyframes(motion, count), motion, cfg.max_step), motion


def motion_count(motion: np.ndarray, min_step: float) -> int:
    """The most keyframes whose consecutive steps can all be ``min_step`` of the width
    (accumulated motion / ``min_step`` + 1, at least :data:`MIN_KEYFRAMES`): what "auto"
    keeps of a slow clip (:attr:`KeyframeConfig.auto_min_step`).

    Args:
        motion: (N-1,) consecutive motion (:func:`frame_motion`, fractions of the width).
        min_step: fraction of the width; 0: no limit.
    """
    if not min_step > 0:
        return len(motion) + 1
    return max(MIN_KEYFRAMES, int(float(np.sum(motion)) / min_step) + 1)
