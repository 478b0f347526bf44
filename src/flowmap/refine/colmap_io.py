"""Small helpers between flowmap's numpy conventions and pycolmap objects.

Conventions: flowmap puts the centre of pixel column i at u = i; COLMAP at u = i + 0.5.
Poses: flowmap c2w (4, 4) OpenCV axes; COLMAP cam_from_world (Rigid3d, 3 x 4).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def quiet_colmap(verbose: bool = False) -> Iterator[None]:
    """Silence COLMAP's glog output (errors only) inside the block unless verbose."""
    import pycolmap

    previous = pycolmap.logging.minloglevel
    if not verbose:
        pycolmap.logging.minloglevel = int(pycolmap.logging.ERROR)
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = previous


def sift_options(num_threads: int, max_num_features: int):
    """pycolmap.FeatureExtractionOptions with the thread count and the SIFT feature cap set
    (the rest COLMAP's defaults; callers set further SIFT options on ``.sift``)."""
    import pycolmap

    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = num_threads
    extraction.sift.max_num_features = int(max_num_features)
    return extraction


def extract_sift(database: Path, image_dir: Path, names: list[str], camera_model: str, extraction) -> None:
    """COLMAP SIFT of the images ``names`` of ``image_dir`` into ``database``, on the CPU,
    one camera of ``camera_model`` shared by all images (``pycolmap.extract_features``)."""
    import pycolmap

    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    pycolmap.extract_features(
        database,
        image_dir,
        image_names=names,
        camera_mode=pycolmap.CameraMode.SINGLE,
        reader_options=reader,
        extraction_options=extraction,
        device=pycolmap.Device.cpu,
    )


def camera_params(K: np.ndarray, model: str) -> list[float]:
    """COLMAP parameter list of ``model`` from a flowmap K (3, 3), principal point + 0.5."""
    fx, fy = float(K[0, 0]), float(K[1, 1])
    cx, cy = float(K[0, 2]) + 0.5, float(K[1, 2]) + 0.5
    if model == "SIMPLE_PINHOLE":
        return [0.5 * (fx + fy), cx, cy]
    if model == "PINHOLE":
        return [fx, fy, cx, cy]
    if model == "SIMPLE_RADIAL":
        return [0.5 * (fx + fy), cx, cy, 0.0]
    raise ValueError(f"unsupported camera model {model!r}")


def camera_K(camera) -> np.ndarray:
    """flowmap K (3, 3) of a pycolmap camera (principal point - 0.5)."""
    K = np.array(camera.calibration_matrix(), dtype=np.float64)
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    return K


def rigid_from_c2w(c2w: np.ndarray):
    """pycolmap.Rigid3d cam_from_world of a (4, 4) camera-to-world matrix."""
    import pycolmap

    w2c = np.linalg.inv(c2w)
    return pycolmap.Rigid3d(pycolmap.Rotation3d(w2c[:3, :3]), w2c[:3, 3].copy())


def c2w_from_rigid(cam_from_world) -> np.ndarray:
    """(4, 4) camera-to-world of a pycolmap.Rigid3d cam_from_world."""
    w2c = np.eye(4)
    w2c[:3, :] = cam_from_world.matrix()
    return np.linalg.inv(w2c)


def umeyama(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity dst ~ s R src + t (Umeyama 1991), rotation via scipy's Kabsch solver.

    Args:
        src, dst: (n, 3) corresponding points, n >= 3 (fewer: identity returned).
        weights: optional (n,) non-negative weights.

    Returns:
        (s, R (3, 3), t (3,)).
    """
    from scipy.spatial.transform import Rotation

    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    if len(src) < 3 or w.sum() <= 0:
        return 1.0, np.eye(3), np.zeros(3)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    sc, dc = src - mu_s, dst - mu_d
    var = float(w @ np.sum(sc**2, axis=1))
    if var <= 1e-300:
        return 1.0, np.eye(3), mu_d - mu_s
    rot, _ = Rotation.align_vectors(dc, sc, weights=w)
    R = rot.as_matrix()
    s = float(np.sum(w[:, None] * dc * (sc @ R.T)) / var)
    return s, R, mu_d - s * R @ mu_s


def similarity_matrix(s: float, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(4, 4) matrix x -> s R x + t."""
    M = np.eye(4)
    M[:3, :3] = s * R
    M[:3, 3] = t
    return M


def transform_c2w(c2w: np.ndarray, s: float, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Apply the world similarity x -> s R x + t to (N, 4, 4) camera-to-world matrices."""
    out = np.array(c2w, dtype=np.float64, copy=True)
    out[:, :3, :3] = R @ c2w[:, :3, :3]
    out[:, :3, 3] = s * c2w[:, :3, 3] @ R.T + t
    return out


def rotation_angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> np.ndarray:
    """Angle (degrees) of Ra^T Rb for (..., 3, 3) rotations."""
    M = np.swapaxes(Ra, -1, -2) @ Rb
    cos = (np.trace(M, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
