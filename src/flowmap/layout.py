"""The shared camera layout: ``poses.txt`` and ``intrinsics.json``, read and written.

The layout is the one of the test sequences in ``shared/data`` (see its README):

* ``poses.txt``: an optional ``#`` comment header, then one line per image
  ``name tx ty tz qx qy qz qw``: camera-to-world (c2w), OpenCV camera axes (x right,
  y down, z forward), translation = camera centre in world units, rotation as a unit
  quaternion in scalar-last (x y z w) order, as :mod:`scipy.spatial.transform` uses.
* ``intrinsics.json``: ``{"width", "height", "fx", "fy", "cx", "cy", "source"}`` in
  pixels of the images as stored, pinhole without distortion, OpenCV pixel centres
  (the centre of pixel column ``i`` is at ``u = i``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from flowmap.errors import InputError
from flowmap.io import atomic_write

POSES_HEADER = "# image tx ty tz qx qy qz qw (camera-to-world, OpenCV axes)"
INTRINSICS_KEYS = ("width", "height", "fx", "fy", "cx", "cy")


def write_poses(path: Path, names: list[str], c2w: np.ndarray) -> None:
    """Write camera-to-world poses as ``name tx ty tz qx qy qz qw`` lines.

    Args:
        path: the file to write (``poses.txt``).
        names: N image names (no whitespace).
        c2w: (N, 4, 4) camera-to-world, OpenCV axes; the rotation block must be a
            rotation (it is converted with scipy's ``Rotation.from_matrix``).

    Raises:
        ValueError: shapes disagree, a pose is not finite, or a name contains whitespace.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or c2w.shape[0] != len(names):
        raise ValueError(f"c2w must be ({len(names)}, 4, 4) for {len(names)} names, got {c2w.shape}")
    if not np.isfinite(c2w).all():
        raise ValueError("c2w contains NaN or inf; refusing to write poses")
    if any(not n or n.split() != [n] for n in names):
        raise ValueError("image names must be non-empty and contain no whitespace")
    quats = Rotation.from_matrix(c2w[:, :3, :3]).as_quat()  # (N, 4) x y z w
    lines = [POSES_HEADER]
    for name, T, q in zip(names, c2w, quats):
        t = T[:3, 3]
        lines.append(f"{name} " + " ".join(f"{v:.9f}" for v in (*t, *q)))
    atomic_write(path, "\n".join(lines) + "\n")


def read_poses(path: Path) -> tuple[list[str], np.ndarray]:
    """Read a ``poses.txt`` written by :func:`write_poses` or shipped in ``shared/data``.

    Returns:
        names: N image names in file order.
        c2w: (N, 4, 4) float64 camera-to-world, OpenCV axes (quaternions are
            normalised by scipy).

    Raises:
        InputError: the file is missing, empty, or a line is not 8 fields of
            ``name tx ty tz qx qy qz qw`` with finite numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist; give a poses.txt with lines 'name tx ty tz qx qy qz qw'")
    names: list[str] = []
    rows: list[list[float]] = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        try:
            values = [float(v) for v in fields[1:]]
        except ValueError:
            values = []
        if len(fields) != 8 or len(values) != 7 or not all(math.isfinite(v) for v in values):
            raise InputError(f"{path}:{lineno}: expected 'name tx ty tz qx qy qz qw', got {line[:80]!r}")
        if np.linalg.norm(values[3:]) < 1e-12:
            raise InputError(f"{path}:{lineno}: zero quaternion; fix the pose of {fields[0]}")
        names.append(fields[0])
        rows.append(values)
    if not rows:
        raise InputError(f"{path} holds no poses; expected lines 'name tx ty tz qx qy qz qw'")
    values = np.asarray(rows, dtype=np.float64)
    c2w = np.tile(np.eye(4), (len(rows), 1, 1))
    c2w[:, :3, :3] = Rotation.from_quat(values[:, 3:]).as_matrix()
    c2w[:, :3, 3] = values[:, :3]
    return names, c2w


def write_intrinsics(path: Path, K: np.ndarray, width: int, height: int, source: str) -> None:
    """Write ``intrinsics.json`` (``width height fx fy cx cy source``).

    Args:
        path: the file to write.
        K: (3, 3) pinhole intrinsics in pixels of a ``width`` x ``height`` image,
            OpenCV pixel centres (pixel column ``i`` is centred at ``u = i``).
        width, height: image size in pixels the intrinsics refer to.
        source: one line saying where the intrinsics come from.

    Raises:
        ValueError: K is not a finite (3, 3) matrix or the size is not positive.
    """
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise ValueError(f"K must be a finite (3, 3) matrix, got shape {K.shape}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    data = {
        "width": int(width),
        "height": int(height),
        "fx": float(K[0, 0]),
        "fy": float(K[1, 1]),
        "cx": float(K[0, 2]),
        "cy": float(K[1, 2]),
        "source": str(source),
    }
    atomic_write(path, json.dumps(data, indent=2) + "\n")


def read_intrinsics(path: Path) -> dict:
    """Read ``intrinsics.json``.

    Returns:
        ``{"width": int, "height": int, "fx", "fy", "cx", "cy": float, "source": str,
        "K": (3, 3) float64 array}`` (pixels, OpenCV pixel centres).

    Raises:
        InputError: the file is missing, not JSON, or lacks a key / has a bad value.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path} does not exist; give an intrinsics.json with width height fx fy cx cy") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); fix or regenerate it") from None
    if not isinstance(data, dict) or any(k not in data for k in INTRINSICS_KEYS):
        raise InputError(f"{path} must hold the keys {', '.join(INTRINSICS_KEYS)}")
    try:
        out = {"width": int(data["width"]), "height": int(data["height"])}
        out.update({k: float(data[k]) for k in ("fx", "fy", "cx", "cy")})
    except (TypeError, ValueError):
        raise InputError(f"{path}: width/height must be integers and fx fy cx cy numbers") from None
    if out["width"] <= 0 or out["height"] <= 0 or not (out["fx"] > 0 and out["fy"] > 0):
        raise InputError(f"{path}: width, height, fx and fy must be positive")
    out["source"] = str(data.get("source", ""))
    out["K"] = np.array([[out["fx"], 0.0, out["cx"]], [0.0, out["fy"], out["cy"]], [0.0, 0.0, 1.0]])
    return out
