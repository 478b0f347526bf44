"""COLMAP model export through pycolmap's ``Reconstruction`` API.

Layout written (what ``ns-train splatfacto --data DIR`` / nerfstudio's colmap
dataparser and the 3D Gaussian Splatting loader ``-s DIR`` read)::

    DIR/images/<name>                 the input frames at input resolution
    DIR/sparse/0/cameras.bin          one PINHOLE camera (fx fy cx cy)
    DIR/sparse/0/images.bin           every frame, registered, with its pose
    DIR/sparse/0/points3D.bin         coloured points sampled from the depth maps
    (+ rigs.bin / frames.bin that pycolmap 4 adds, + *.txt with ``text=True``)

Pixel convention: COLMAP puts the image origin at the top-left *corner* of the
top-left pixel, so the centre of pixel column ``i`` is at ``x = i + 0.5`` (COLMAP's
documentation, "Output format" / camera models; hloc shifts keypoints by +0.5 for the
same reason). flowmap's K uses OpenCV centres (``u = i``), so the exported principal
point and every 2D observation are shifted by +0.5 pixels. Poses: COLMAP stores
``cam_from_world`` (= w2c, OpenCV axes, the same camera axes as flowmap).
"""

from __future__ import annotations

import shutil
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pycolmap
from scipy.spatial.transform import Rotation

from flowmap.camera import corner_uv, project_points, to_corner_origin
from flowmap.io import write_image
from flowmap.outputs.ply import depth_agreement, depth_point_cloud
from flowmap.types import Frames, NonKeyframes, Reconstruction

CAMERA_ID = 1
ENCODE_THREADS = 2  # images encoded at once (OpenCV releases the GIL while encoding)


def _same_file(source: Path, name: str, image: np.ndarray) -> Path | None:
    """The source file of a frame when it can be copied unchanged, else None.

    A file can be copied when it exists, has the frame's size and no EXIF orientation
    other than "normal": flowmap applies EXIF orientation when decoding, while COLMAP
    and the splatting loaders read the pixels as stored. Only the header is read.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(source) / name
    if not path.is_file():
        return None
    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(0x0112, 1)  # EXIF Orientation tag
            size = im.size
    except (UnidentifiedImageError, OSError):
        return None
    return path if orientation == 1 and size == (image.shape[1], image.shape[0]) else None


def write_images(frames: Frames, directory: Path, jpeg_quality: int = 95) -> list[Path]:
    """Write the input frames under their names, at input resolution.

    Frames read from an image folder are copied byte for byte when the file can be
    (see :func:`_same_file`); other frames (video, EXIF-rotated files) are encoded
    with OpenCV.

    Args:
        frames: (N, H, W, 3) uint8 RGB frames, their N names and their source.
        directory: folder to write into (created).
        jpeg_quality: quality of encoded ``.jpg`` / ``.jpeg`` names (other suffixes use
            OpenCV's defaults, e.g. lossless PNG).

    Returns:
        The N written paths.

    Raises:
        OSError: a file could not be written (unknown suffix, disk full).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    source = Path(frames.source) if frames.source is not None else None
    folder = source if source is not None and source.is_dir() else None

    def write(name: str, image: np.ndarray) -> Path:
        path = directory / name
        original = _same_file(folder, name, image) if folder is not None else None
        if original is not None:
            shutil.copyfile(original, path)
        else:
            params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if path.suffix.lower() in (".jpg", ".jpeg") else []
            write_image(path, cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR), params)
        return path

    if frames.n < 2:
        return [write(name, image) for name, image in zip(frames.names, frames.images)]
    # OpenCV's encoder releases the GIL: two threads encode two frames at once
    with ThreadPoolExecutor(max_workers=ENCODE_THREADS) as pool:
        return list(pool.map(write, frames.names, frames.images))


def write_frame_stream(stream: Iterable[Frames], directory: Path, jpeg_quality: int = 95, pending: int = 8) -> int:
    """:func:`write_images` for frames that arrive one :class:`Frames` at a time (decoded
    while earlier ones are encoded, at most ``pending`` waiting in memory); returns
    how many frames were written.

    Raises:
        OSError: as :func:`write_images`.
    """
    written = 0
    with ThreadPoolExecutor(max_workers=ENCODE_THREADS) as pool:
        waiting: deque = deque()
        for frames in stream:
            waiting.append(pool.submit(write_images, frames, directory, jpeg_quality))
            while len(waiting) >= pending:
                written += len(waiting.popleft().result())
        while waiting:
            written += len(waiting.popleft().result())
    return written


def write_other_images(
    others: NonKeyframes,
    read_others: Callable[[list[int]], Iterable[Frames]],
    directory: Path,
    jpeg_quality: int = 95,
    staged: Path | None = None,
) -> None:
    """The images of the frames that were not keyframes (``others``), under their names
    in ``directory``: a file already written under the same name in ``staged`` (by
    :func:`write_frame_stream` with the same ``jpeg_quality``, while the refinement ran)
    is moved in, the others are read with ``read_others`` (positions -> single-frame
    :class:`Frames`) and encoded (:func:`write_frame_stream`).

    Raises:
        OSError: a file could not be moved or written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    todo = []
    for name, position in zip(others.names, others.positions.tolist()):
        ready = None if staged is None else Path(staged) / name
        if ready is not None and ready.is_file():
            shutil.move(ready, directory / name)  # a rename: OUT.cache lies beside OUT
        else:
            todo.append(position)
    if todo:
        write_frame_stream(read_others(todo), directory, jpeg_quality)


def colmap_camera(K: np.ndarray, width: int, height: int) -> pycolmap.Camera:
    """A PINHOLE camera from OpenCV-convention intrinsics (principal point shifted +0.5).

    Args:
        K: (3, 3) intrinsics in pixels of a ``width`` x ``height`` image, OpenCV centres.
    """
    Kc = to_corner_origin(K)
    params = [Kc[0, 0], Kc[1, 1], Kc[0, 2], Kc[1, 2]]
    return pycolmap.Camera(camera_id=CAMERA_ID, model="PINHOLE", width=int(width), height=int(height), params=params)


def cam_from_world(c2w: np.ndarray) -> pycolmap.Rigid3d:
    """pycolmap ``Rigid3d`` of the world-to-camera transform of a (4, 4) c2w (OpenCV axes)."""
    R_c2w, t_c2w = c2w[:3, :3], c2w[:3, 3]
    # scipy projects a slightly non-orthonormal matrix onto the nearest rotation.
    xyzw = Rotation.from_matrix(R_c2w.T).as_quat()
    return pycolmap.Rigid3d(pycolmap.Rotation3d(xyzw), -R_c2w.T @ t_c2w)


def observations(
    rec: Reconstruction, xyz: np.ndarray, image_size: tuple[int, int], rel_tol: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Where each point is seen in each frame, occlusion-checked against that frame's depth.

    Args:
        rec: the reconstruction (depth at the working resolution).
        xyz: (P, 3) world points.
        image_size: (H, W) of the exported images.
        rel_tol: relative depth tolerance of :func:`flowmap.outputs.ply.depth_agreement`.

    Returns:
        Per frame: (indices (M,) of the points it sees, xy (M, 2) their COLMAP pixel
        coordinates in the exported image, corner origin).
    """
    H, W = image_size
    h, w = rec.working_size
    K_work, K_out = rec.K_at(h, w), rec.K_at(H, W)
    result = []
    for i in range(rec.n):
        _, agrees = depth_agreement(xyz, K_work, rec.c2w[i], np.asarray(rec.depth[i]), rel_tol)
        idx = np.flatnonzero(agrees)
        uv, _ = project_points(xyz[idx], K_out, rec.c2w[i])
        xy = corner_uv(uv)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < W) & (xy[:, 1] >= 0) & (xy[:, 1] < H)
        result.append((idx[inside], xy[inside]))
    return result


def build_reconstruction(
    rec: Reconstruction,
    names: list[str],
    image_size: tuple[int, int],
    xyz: np.ndarray,
    rgb: np.ndarray,
    rel_tol: float = 0.05,
    min_track_length: int = 2,
) -> pycolmap.Reconstruction:
    """A pycolmap model: one PINHOLE camera, every frame registered, points with tracks.

    Args:
        rec: c2w (N, 4, 4) OpenCV axes, K in pixels of the input frames, depth maps.
        names: N image names.
        image_size: (H, W) of the exported images (the camera is ``rec.K_at(H, W)``).
        xyz: (P, 3) world points, rgb: (P, 3) uint8 colours.
        rel_tol: relative depth tolerance of the visibility test.
        min_track_length: points seen in fewer frames are dropped (COLMAP triangulates
            points from at least two views; with a single frame, 1 is used).

    Returns:
        The model; image ids are 1..N in frame order, camera id 1.
    """
    H, W = image_size
    model = pycolmap.Reconstruction()
    model.add_camera_with_trivial_rig(colmap_camera(rec.K_at(H, W), W, H))
    obs = observations(rec, xyz, image_size, rel_tol)
    for i, (name, (_, xy)) in enumerate(zip(names, obs)):
        image = pycolmap.Image(name=name, keypoints=xy.astype(np.float64), camera_id=CAMERA_ID, image_id=i + 1)
        model.add_image_with_trivial_frame(image, cam_from_world(rec.c2w[i]))

    # Flatten (frame, keypoint index) per observation, grouped by point.
    point = np.concatenate([idx for idx, _ in obs]) if obs else np.zeros(0, np.int64)
    image_id = np.concatenate([np.full(len(idx), i + 1) for i, (idx, _) in enumerate(obs)])
    kp_index = np.concatenate([np.arange(len(idx)) for idx, _ in obs])
    order = np.argsort(point, kind="stable")
    point, image_id, kp_index = point[order], image_id[order], kp_index[order]
    starts = np.searchsorted(point, np.arange(len(xyz) + 1))
    min_len = min(min_track_length, rec.n)
    # Plain ints and Track.add_element: a third of the time of TrackElement lists
    # (50,000 points seen 20 times each: 0.2 against 0.7 s).
    image_ids, kp_indices, bounds = image_id.tolist(), kp_index.tolist(), starts.tolist()
    colours = rgb.astype(np.uint8)
    for p in range(len(xyz)):
        a, b = bounds[p], bounds[p + 1]
        if b - a < min_len:
            continue
        track = pycolmap.Track()
        add = track.add_element
        for j, k in zip(image_ids[a:b], kp_indices[a:b]):
            add(j, k)
        model.add_point3D(xyz[p], track, colours[p])
    model.update_point_3d_errors()
    return model


def add_posed_images(model: pycolmap.Reconstruction, names: list[str], c2w: np.ndarray) -> None:
    """Register images without observations in ``model`` (frames posed after the
    refinement, :mod:`flowmap.register`): ids after the existing ones, camera 1.

    Args:
        model: a model from :func:`build_reconstruction`.
        names: M image names; c2w: (M, 4, 4) camera-to-world, OpenCV axes.
    """
    first = max(model.images.keys(), default=0) + 1
    for k, (name, pose) in enumerate(zip(names, c2w)):
        image = pycolmap.Image(name=name, keypoints=np.zeros((0, 2)), camera_id=CAMERA_ID, image_id=first + k)
        model.add_image_with_trivial_frame(image, cam_from_world(pose))


def write_colmap(
    rec: Reconstruction,
    frames: Frames,
    directory: Path,
    text: bool = False,
    max_points: int = 50_000,
    min_weight: float = 0.5,
    rel_tol: float = 0.05,
    seed: int = 0,
    jpeg_quality: int = 95,
    others: NonKeyframes | None = None,
    read_others: Callable[[list[int]], Iterable[Frames]] | None = None,
    keep: np.ndarray | None = None,
    staged: Path | None = None,
) -> pycolmap.Reconstruction:
    """Write a COLMAP model of the reconstruction: ``images/`` and ``sparse/0/``.

    The camera is PINHOLE with rec's focal length and principal point scaled to the
    input frames (``rec.K_at(H, W)``, +0.5 px for COLMAP's corner origin); each frame
    is an image registered with ``cam_from_world = inv(c2w)``; points3D are sampled
    from the depth maps (:func:`flowmap.outputs.ply.depth_point_cloud`: filtered by
    correspondence weights and neighbour depth consistency), coloured, and observed in
    every frame where they project inside the image and agree with that frame's depth
    map within ``rel_tol`` (so occluded frames get no observation).

    Args:
        rec: the reconstruction.
        frames: the input frames (written to ``directory/images`` under their names).
        directory: the model folder (``OUT/colmap``); created.
        text: also write ``cameras.txt images.txt points3D.txt`` beside the ``.bin``.
        max_points: the most 3D points.
        min_weight, rel_tol, seed: point sampling, see ``depth_point_cloud``.
        jpeg_quality: quality of the written ``.jpg`` frames.
        others: posed frames that were not keyframes, registered in the model without
            observations (:func:`add_posed_images`); None: none.
        read_others: reads the input frames at the given positions among the selected
            frames (``others.positions``), one :class:`Frames` of one frame at a time,
            so that their images are written without holding them all in memory.
        keep: the pixels the points are drawn from, as ``depth_point_cloud``'s (None:
            computed there).
        staged: a folder holding some of ``others``' images already encoded
            (:func:`write_other_images`), or None.

    Returns:
        The pycolmap model that was written.

    Raises:
        ValueError: frames and reconstruction disagree (count or names).
        OSError: a file could not be written.
    """
    if frames.n != rec.n or list(frames.names) != list(rec.names):
        raise ValueError(f"frames ({frames.n}) and reconstruction ({rec.n}) must hold the same named frames")
    directory = Path(directory)
    write_images(frames, directory / "images", jpeg_quality)
    xyz, rgb = depth_point_cloud(rec, max_points, min_weight=min_weight, rel_tol=rel_tol, seed=seed, keep=keep)
    model = build_reconstruction(rec, list(frames.names), (frames.height, frames.width), xyz, rgb, rel_tol)
    if others is not None and others.n:
        add_posed_images(model, others.names, others.c2w)
        write_other_images(others, read_others, directory / "images", jpeg_quality, staged)
    sparse = directory / "sparse" / "0"
    sparse.mkdir(parents=True, exist_ok=True)
    model.write(sparse)
    if text:
        model.write_text(sparse)
    return model
