"""Interactive 3D view of an output folder: camera frustums with their frames and the
point cloud, served in the browser by viser (https://viser.studio).

``build_scene`` turns an output folder into plain arrays (no server, testable);
``view`` starts a viser server on localhost and shows them. viser is an optional
dependency, imported only inside :func:`view`.

Output-folder files used: ``poses.txt`` (``name tx ty tz qx qy qz qw``, camera-to-world,
OpenCV axes, quaternion x y z w), ``intrinsics.json`` (``width height fx fy`` in pixels),
optionally ``points.ply`` (vertex x y z and red green blue) and the frames in
``images/<name>`` or ``colmap/images/<name>``.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from flowmap.errors import InputError
from flowmap.layout import read_intrinsics, read_poses

MAX_POINTS = 300_000
THUMBNAIL_WIDTH = 160
IMAGE_FOLDERS = ("images", "colmap/images")  # where flowmap.outputs writes the frames


def _read_points(path: Path, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """(M, 3) float32 xyz and (M, 3) uint8 rgb of a PLY's vertices, evenly subsampled to ``max_points``."""
    from plyfile import PlyData

    try:
        vertex = PlyData.read(str(path))["vertex"]
        xyz = np.stack([np.asarray(vertex[k], dtype=np.float32) for k in "xyz"], axis=1)
    except (KeyError, ValueError, OSError) as exc:
        raise InputError(f"{path} is not a PLY point cloud with x, y, z vertices ({exc}); regenerate it") from None
    names = vertex.data.dtype.names or ()
    if all(k in names for k in ("red", "green", "blue")):
        rgb = np.stack([np.asarray(vertex[k]) for k in ("red", "green", "blue")], axis=1).astype(np.uint8)
    else:
        rgb = np.full((len(xyz), 3), 160, np.uint8)
    if len(xyz) > max_points:
        keep = np.linspace(0, len(xyz) - 1, max_points).astype(int)
        xyz, rgb = xyz[keep], rgb[keep]
    return xyz, rgb


def _read_thumbnail(out_dir: Path, name: str) -> np.ndarray | None:
    """(h, THUMBNAIL_WIDTH, 3) uint8 RGB thumbnail of frame ``name`` from ``OUT/images`` or
    ``OUT/colmap/images``; None if neither holds a readable file."""
    paths = [out_dir / folder / name for folder in IMAGE_FOLDERS]
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        return None
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        return None
    h, w = bgr.shape[:2]
    size = (THUMBNAIL_WIDTH, max(1, round(h * THUMBNAIL_WIDTH / w)))
    return cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)[..., ::-1].copy()


def build_scene(out_dir: Path, max_points: int = MAX_POINTS) -> dict:
    """Cameras and point cloud of an output folder as plain arrays.

    Args:
        out_dir: flowmap output folder (poses.txt, intrinsics.json; points.ply and
            images/ or colmap/images/ optional).
        max_points: at most this many points are kept (evenly subsampled).

    Returns:
        dict with
        ``names`` (N,), ``c2w`` (N, 4, 4) camera-to-world (OpenCV axes),
        ``positions`` (N, 3) camera centres, ``wxyz`` (N, 4) camera rotations as
        scalar-first quaternions (viser's convention),
        ``fov_y`` (radians, vertical), ``aspect`` (width / height),
        ``frustum_depth`` (scene units: 5 % of the scene extent),
        ``frustum_corners`` (N, 4, 3) world positions of the image corners
        (top-left, top-right, bottom-right, bottom-left) at z = frustum_depth in camera
        coordinates, ``images`` (N,) RGB thumbnails or None,
        ``points`` (M, 3) float32 and ``colors`` (M, 3) uint8 (M = 0 without points.ply).

    Raises:
        InputError: the folder, poses.txt or intrinsics.json is missing or invalid.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise InputError(f"output folder {out_dir} does not exist; pass the folder a flowmap run wrote")
    for file_name in ("poses.txt", "intrinsics.json"):
        if not (out_dir / file_name).is_file():
            raise InputError(f"{out_dir} has no {file_name}; pass the folder a flowmap run wrote")
    names, c2w = read_poses(out_dir / "poses.txt")
    intr = read_intrinsics(out_dir / "intrinsics.json")
    W, H, fx, fy = (float(intr[k]) for k in ("width", "height", "fx", "fy"))

    if (out_dir / "points.ply").is_file():
        points, colors = _read_points(out_dir / "points.ply", max_points)
    else:
        points, colors = np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)

    positions = c2w[:, :3, 3]
    extent_of = positions if len(points) == 0 else np.concatenate([positions, np.percentile(points, [5, 95], axis=0)])
    extent = float(np.ptp(extent_of, axis=0).max()) if len(extent_of) > 1 else 1.0
    depth = 0.05 * extent if extent > 0 else 0.1

    # Image corners in OpenCV camera coordinates at z = depth (pixel edges, not centres);
    # the frustum is drawn symmetric (principal point at the image centre), as viser draws it.
    half_w, half_h = 0.5 * W / fx * depth, 0.5 * H / fy * depth
    corners_cam = np.array(
        [[-half_w, -half_h, depth], [half_w, -half_h, depth], [half_w, half_h, depth], [-half_w, half_h, depth]]
    )
    corners = np.einsum("nij,kj->nki", c2w[:, :3, :3], corners_cam) + positions[:, None]

    return {
        "names": names,
        "c2w": c2w,
        "positions": positions,
        "wxyz": np.roll(Rotation.from_matrix(c2w[:, :3, :3]).as_quat(), 1, axis=1),
        "fov_y": float(2 * np.arctan(H / (2 * fy))),
        "aspect": W / H,
        "frustum_depth": depth,
        "frustum_corners": corners,
        "images": [_read_thumbnail(out_dir, name) for name in names],
        "points": points,
        "colors": colors,
    }


def view(out_dir: Path, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve an interactive 3D view of an output folder until interrupted (Ctrl-C).

    Shows every camera as a frustum (with its frame when ``images/`` has it), the
    trajectory as a polyline and ``points.ply`` as a coloured point cloud. Open
    ``http://host:port`` in a browser.

    Args:
        out_dir: flowmap output folder.
        host: interface to bind; the default serves on this machine only.
        port: TCP port.

    Raises:
        InputError: viser is not installed, or the folder is invalid (see :func:`build_scene`).
    """
    try:
        import viser
    except ImportError:
        raise InputError("the 3D viewer needs viser: pip install viser") from None

    scene = build_scene(out_dir)
    server = viser.ViserServer(host=host, port=port, label=f"flowmap: {Path(out_dir).name}")
    server.scene.set_up_direction(-np.asarray(scene["c2w"][:, :3, 1].mean(axis=0)))  # OpenCV y is down
    if len(scene["points"]):
        server.scene.add_point_cloud(
            "/points", scene["points"], scene["colors"], point_size=0.02 * scene["frustum_depth"]
        )
    # viser normalises the frustum to unit volume, then multiplies by `scale`; this
    # scale puts the image plane at z = frustum_depth.
    y = np.tan(scene["fov_y"] / 2)
    scale = scene["frustum_depth"] * np.cbrt(y * y * scene["aspect"] / 3)
    for i in range(len(scene["names"])):
        server.scene.add_camera_frustum(
            f"/cameras/{i:06d}",
            fov=scene["fov_y"],
            aspect=scene["aspect"],
            scale=float(scale),
            thickness=1.5,
            thickness_units="screen",
            wxyz=scene["wxyz"][i],
            position=scene["positions"][i],
            image=scene["images"][i],
            color=(40, 90, 200),
        )
    if len(scene["positions"]) > 1:
        segments = np.stack([scene["positions"][:-1], scene["positions"][1:]], axis=1)
        server.scene.add_line_segments(
            "/trajectory", segments, colors=(200, 60, 40), thickness=2.0, thickness_units="screen"
        )
    print(f"flowmap viewer: http://{host}:{port}  (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        server.stop()
