"""nerfstudio ``transforms.json`` export (with 16-bit depth PNGs).

nerfstudio's data conventions (docs.nerf.studio, "Data conventions" and "Using custom
data"): ``transform_matrix`` is camera-to-world with OpenGL/Blender camera axes
(x right, y up, z back, i.e. looking down -z); intrinsics ``fl_x fl_y cx cy w h`` in
pixels with the image origin at the top-left corner (pixel centres at ``i + 0.5``, as
in COLMAP, whose cameras nerfstudio copies unchanged); ``camera_model`` one of
COLMAP's names. Per frame ``file_path`` and optional ``depth_file_path`` are relative
to the JSON's folder. Depth PNGs hold ``depth / depth_unit_scale_factor`` as uint16
(0 = no depth); nerfstudio's parser takes the factor from its option
``--depth-unit-scale-factor`` (default 1e-3), so the value used is also written at the
top level of the JSON.

Conversion: ``c2w_gl = c2w_cv @ diag(1, -1, -1, 1)`` (flip the camera y and z axes);
the flip is its own inverse. The world frame is flowmap's (frame 0 = identity).

``applied_transform``: nerfstudio's dataparser (``nerfstudio/data/dataparsers/
nerfstudio_dataparser.py``) composes its ``dataparser_transform`` with the file's
``applied_transform`` (3 x 4) when present; when it is absent and a COLMAP model exists at
``<data>/colmap/sparse/0`` -- as flowmap writes one -- it assumes the axis swap of its own
COLMAP converter was applied (``[[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 0]]``, nerfstudio 1.1.5). flowmap's poses are written in flowmap's
world without any swap, so the file states the identity (what ``ns-process-data`` writes
for an unchanged world); exports to the world frame then map back onto ``poses.txt``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from flowmap.camera import to_corner_origin
from flowmap.errors import InputError
from flowmap.io import write_image
from flowmap.types import Frames, NonKeyframes, Reconstruction

CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])
APPLIED_TRANSFORM = np.eye(4)[:3]
"""The world transform applied to the poses before writing: none (see the module docs)."""
NERFSTUDIO_DEFAULT_DEPTH_UNIT = 1e-3
UINT16_MAX = 65535


def depth_unit_scale(depth: np.ndarray) -> float:
    """The unit ``s`` of the 16-bit depth PNGs (PNG value = depth / s).

    nerfstudio's default 1e-3 when the largest depth is between 1 and 65.535 scene
    units (at least 1000 levels, and no extra option for ``ns-train``); otherwise the
    smallest power of ten for which the largest depth still fits, ``max / s <= 65535``.
    Returns 1e-3 when the depth maps hold no positive finite value.
    """
    d = np.asarray(depth, np.float64)
    d = d[np.isfinite(d) & (d > 0)]
    if d.size == 0 or 1.0 <= d.max() <= UINT16_MAX * NERFSTUDIO_DEFAULT_DEPTH_UNIT:
        return NERFSTUDIO_DEFAULT_DEPTH_UNIT
    return float(10.0 ** math.ceil(math.log10(d.max() / UINT16_MAX)))


def write_depth_png(path: Path, depth: np.ndarray, unit: float) -> None:
    """Write a z-depth map as a 16-bit PNG holding ``round(depth / unit)`` (0 = no depth).

    Raises:
        OSError: the file could not be written (disk full).
    """
    d = np.asarray(depth, np.float64)
    valid = np.isfinite(d) & (d > 0)
    png = np.zeros(d.shape, np.uint16)
    png[valid] = np.clip(np.round(d[valid] / unit), 0, UINT16_MAX).astype(np.uint16)
    write_image(path, png)


def write_transforms(
    rec: Reconstruction,
    frames: Frames,
    directory: Path,
    image_dir: str = "colmap/images",
    depth_dir: str | None = "depth_png",
    ply_file_path: str | None = None,
    others: NonKeyframes | None = None,
) -> Path:
    """Write ``directory/transforms.json`` (and depth PNGs) for nerfstudio.

    Args:
        rec: the reconstruction; c2w (N, 4, 4) OpenCV axes, K in pixels of the input
            frames, depth (N, h, w) z-depth at the working resolution.
        frames: the input frames; only their names and size are used here (the images
            themselves must already exist under ``directory/image_dir``).
        directory: the output folder (``OUT``).
        image_dir: folder of the images, relative to ``directory``.
        depth_dir: folder for the 16-bit depth PNGs (working resolution; nerfstudio
            resizes them to the image), relative to ``directory``; None: no depth.
        ply_file_path: a point cloud relative to ``directory`` for nerfstudio's
            ``ply_file_path`` (splatfacto initialisation), or None.
        others: posed frames that were not keyframes (no depth map), listed after the
            keyframes (images under ``image_dir`` too). nerfstudio wants a depth file
            for every frame or none, so with any of them the entries name no depth file
            (the keyframes' PNGs are still written to ``depth_dir``).

    Returns:
        The path of ``transforms.json``.

    Raises:
        ValueError: frames and reconstruction disagree.
    """
    if frames.n != rec.n or list(frames.names) != list(rec.names):
        raise ValueError(f"frames ({frames.n}) and reconstruction ({rec.n}) must hold the same named frames")
    directory = Path(directory)
    H, W = frames.height, frames.width
    K = to_corner_origin(rec.K_at(H, W))  # corner origin, see the module docstring
    meta: dict = {
        "camera_model": "PINHOLE",
        "fl_x": float(K[0, 0]),
        "fl_y": float(K[1, 1]),
        "cx": float(K[0, 2]),
        "cy": float(K[1, 2]),
        "w": int(W),
        "h": int(H),
        "applied_transform": APPLIED_TRANSFORM.tolist(),
    }
    if depth_dir is not None:
        unit = depth_unit_scale(rec.depth)
        meta["depth_unit_scale_factor"] = unit
        (directory / depth_dir).mkdir(parents=True, exist_ok=True)
    if ply_file_path is not None:
        meta["ply_file_path"] = ply_file_path
    entries = []
    for i, name in enumerate(frames.names):
        entry = {
            "file_path": f"{image_dir}/{name}",
            "transform_matrix": (rec.c2w[i] @ CV_TO_GL).tolist(),
        }
        if depth_dir is not None:
            rel = f"{depth_dir}/{Path(name).stem}.png"
            write_depth_png(directory / rel, rec.depth[i], unit)
            if others is None or others.n == 0:
                entry["depth_file_path"] = rel
        entries.append(entry)
    for name, c2w in [] if others is None else zip(others.names, others.c2w):
        entries.append({"file_path": f"{image_dir}/{name}", "transform_matrix": (c2w @ CV_TO_GL).tolist()})
    meta["frames"] = entries
    path = directory / "transforms.json"
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return path


def read_transforms_c2w(path: Path) -> np.ndarray:
    """Camera-to-world poses of a ``transforms.json``, back in OpenCV axes.

    Returns:
        (N, 4, 4) float64 c2w (OpenCV axes), in the order of ``frames`` in the file.

    Raises:
        InputError: the file is missing or has no ``frames[*].transform_matrix``.
    """
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
        c2w_gl = np.array([f["transform_matrix"] for f in meta["frames"]], dtype=np.float64)
    except FileNotFoundError:
        raise InputError(f"{path} does not exist; give a nerfstudio transforms.json") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise InputError(f"{path} is not a transforms.json with frames[*].transform_matrix") from None
    if c2w_gl.ndim != 3 or c2w_gl.shape[1:] != (4, 4):
        raise InputError(f"{path}: every transform_matrix must be 4 x 4")
    return c2w_gl @ CV_TO_GL
