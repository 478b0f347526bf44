"""Evaluation of camera poses and focal length against ground truth (METHOD.md section 6).

Metrics (all computed on the frames that received a pose only):

* ``ate_paper``: the FlowMap paper's ATE. Camera positions of prediction and ground
  truth are each centred and scaled to unit Frobenius norm (tr(X X^T) = 1 for the
  n x 3 position matrix X), the prediction is fitted onto the ground truth by
  rotation and scale (``scipy.spatial.procrustes``), and the RMSE is taken over all
  3n coordinates. ``scipy.spatial.procrustes`` returns the *disparity*, the sum of
  squared differences over all coordinates, so ``ate_paper = sqrt(disparity / (3 n))``.
  This is what the FlowMap reference implementation computes (``compute_ate`` in
  ``flowmap/misc/ate.py`` of github.com/dcharatan/flowmap: the mean of the squared
  coordinate differences of scipy's two standardised outputs, square-rooted). Note that
  scipy's fit allows a reflection, so a mirrored trajectory scores 0 here; ``ate``
  below does not allow one.
* ``ate``: conventional absolute trajectory error in ground-truth units:
  sqrt(mean_i ||s R p_i + t - g_i||^2) after the Sim(3) Umeyama alignment of the
  predicted positions p onto the ground-truth positions g (:func:`align_sim3`).
* ``rpe_rot_deg``: mean over consecutive registered frames (i, j) of the angle of
  ``R_rel_gt^T R_rel_pred`` in degrees, where ``R_rel`` is the rotation of
  ``inv(c2w_i) @ c2w_j`` (independent of the global alignment).
* ``rpe_trans``: mean over the same pairs of ||s t_rel_pred - t_rel_gt|| in ground-truth
  units, where ``t_rel`` is the translation of ``inv(c2w_i) @ c2w_j`` (the motion in the
  camera frame of i) and s the Sim(3) scale of the ATE alignment.
* ``focal_rel_error``: |f - f_gt| / f_gt at the same image size.
* ``registration_rate``: registered / total frames; ``n_frames``, ``n_registered``.
* Depth, when the ground-truth folder has ``depth/<stem>.png`` (16-bit z-depth in
  millimetres, 0 = no measurement; tum-rpy, tum-rpy-long) and the prediction has depth
  maps: the predicted depth times ONE scale for the whole video, the scale of the poses
  (the Sim(3) scale s of the ``ate`` alignment, so depth and cameras are judged in the
  same units), against the measured depth sampled at the predicted maps' pixel centres
  (nearest neighbour): ``depth_abs_rel`` = mean |s d - d_gt| / d_gt,
  ``depth_delta1`` = fraction with max(s d / d_gt, d_gt / s d) < 1.25 (Eigen et al.,
  NeurIPS 2014), ``depth_abs_rel_constant`` = AbsRel of the best constant depth (one
  value for the whole video, on the same pixels: the weighted median of d_gt with
  weights 1 / d_gt, which minimises AbsRel), ``depth_abs_rel_ratio`` = the two's ratio
  (< 1: better than a plane), ``depth_scale`` = s, ``depth_pixels``.

Pose metrics are NaN when fewer than 3 frames are registered (no alignment is defined).
Sources: Smith et al., FlowMap (3DV 2025), evaluation protocol; Umeyama, "Least-squares
estimation of transformation parameters between two point patterns", TPAMI 1991;
Sturm et al., "A benchmark for the evaluation of RGB-D SLAM systems", IROS 2012 (ATE/RPE).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import cv2
from scipy.spatial import procrustes
from scipy.spatial.transform import Rotation

from flowmap.errors import InputError
from flowmap.layout import read_intrinsics, read_poses

MIN_FRAMES_FOR_POSE_METRICS = 3
GT_DEPTH_UNIT_M = 1e-3
"""Ground-truth depth PNGs of the shared layout hold millimetres."""


def align_sim3(src_xyz: np.ndarray, dst_xyz: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity transform that best maps ``src_xyz`` onto ``dst_xyz`` (Umeyama 1991).

    Minimises sum_i ||dst_i - (s R src_i + t)||^2 over scale s >= 0, rotation R (det +1,
    no reflection) and translation t. The rotation comes from scipy's Kabsch solver
    (``Rotation.align_vectors``) on the centred points; the scale is Umeyama's
    s = sum_i <dst_c_i, R src_c_i> / sum_i ||src_c_i||^2.

    Args:
        src_xyz: (n, 3) points, n >= 3, any units.
        dst_xyz: (n, 3) corresponding points.

    Returns:
        (s, R, t): scale (float), R (3, 3) rotation, t (3,) so that dst ~ s R src + t.
        If all source points coincide, s = 0, R = I and t = mean(dst).

    Raises:
        ValueError: shapes differ, are not (n, 3), n < 3, or values are not finite.
    """
    src = np.asarray(src_xyz, dtype=np.float64)
    dst = np.asarray(dst_xyz, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 3 or src.shape != dst.shape:
        raise ValueError(f"align_sim3 needs two (n, 3) arrays of equal shape, got {src.shape} and {dst.shape}")
    if src.shape[0] < MIN_FRAMES_FOR_POSE_METRICS:
        raise ValueError(f"align_sim3 needs at least 3 points, got {src.shape[0]}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("align_sim3 got non-finite coordinates")
    mu_src, mu_dst = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    var_src = float(np.sum(src_c**2))
    if var_src <= 1e-300:
        return 0.0, np.eye(3), mu_dst
    rot, _ = Rotation.align_vectors(dst_c, src_c)
    R = rot.as_matrix()
    s = float(np.sum(dst_c * (src_c @ R.T)) / var_src)
    t = mu_dst - s * R @ mu_src
    return s, R, t


def ate_paper(pos_pred: np.ndarray, pos_gt: np.ndarray) -> float:
    """FlowMap-paper ATE: RMSE over all coordinates after ``scipy.spatial.procrustes``.

    Both position sets are centred and scaled to tr(X X^T) = 1, the prediction is fitted
    to the ground truth (rotation, possibly a reflection, and scale), and
    ``sqrt(disparity / (3 n))`` is returned, disparity being scipy's sum of squared
    differences. Dimensionless. If the predicted positions all coincide, the best fit
    is the centroid and the value is sqrt(1 / (3 n)) (disparity 1).

    Args:
        pos_pred: (n, 3) predicted camera centres.
        pos_gt: (n, 3) ground-truth camera centres, same order.

    Raises:
        ValueError: the ground-truth positions all coincide or the shapes differ.
    """
    pred = np.asarray(pos_pred, dtype=np.float64)
    gt = np.asarray(pos_gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"ate_paper needs two (n, 3) arrays of equal shape, got {pred.shape} and {gt.shape}")
    if np.linalg.norm(pred - pred.mean(axis=0)) == 0 and np.linalg.norm(gt - gt.mean(axis=0)) > 0:
        disparity = 1.0
    else:
        _, _, disparity = procrustes(gt, pred)
    return float(np.sqrt(disparity / pred.size))


def _relative_poses(c2w: np.ndarray) -> np.ndarray:
    """(n-1, 4, 4) relative poses inv(c2w_k) @ c2w_{k+1} of a (n, 4, 4) sequence."""
    return np.linalg.inv(c2w[:-1]) @ c2w[1:]


def evaluate(
    c2w_pred: np.ndarray,
    c2w_gt: np.ndarray,
    focal_pred: float | None = None,
    focal_gt: float | None = None,
    registered: np.ndarray | None = None,
) -> dict[str, float]:
    """Pose and focal-length metrics of a prediction against ground truth.

    Frames are matched by index. A frame enters the pose metrics when it is marked
    registered and its predicted pose is finite. RPE pairs are consecutive frames of
    the registered subsequence. See the module docstring for the definitions.

    Args:
        c2w_pred: (N, 4, 4) predicted camera-to-world matrices, OpenCV axes, any
            global scale / rotation / translation.
        c2w_gt: (N, 4, 4) ground-truth camera-to-world matrices, same frame order.
        focal_pred: predicted focal length in pixels (same image size as ``focal_gt``).
        focal_gt: ground-truth focal length in pixels.
        registered: (N,) bool, True where the prediction has a pose (None: all).

    Returns:
        dict with ``ate_paper`` (dimensionless), ``ate`` and ``rpe_trans`` (ground-truth
        units), ``rpe_rot_deg`` (degrees), ``focal_rel_error`` (NaN without focal
        lengths), ``registration_rate``, ``n_frames``, ``n_registered``. Pose metrics are
        NaN with fewer than 3 registered frames.

    Raises:
        ValueError: shapes are not (N, 4, 4) / (N,) or differ between the inputs.
    """
    pred = np.asarray(c2w_pred, dtype=np.float64)
    gt = np.asarray(c2w_gt, dtype=np.float64)
    if pred.ndim != 3 or pred.shape[1:] != (4, 4) or pred.shape != gt.shape:
        raise ValueError(f"evaluate needs two (N, 4, 4) arrays of equal shape, got {pred.shape} and {gt.shape}")
    n_frames = pred.shape[0]
    mask = np.ones(n_frames, bool) if registered is None else np.asarray(registered, dtype=bool)
    if mask.shape != (n_frames,):
        raise ValueError(f"registered must have shape ({n_frames},), got {mask.shape}")
    mask = mask & np.isfinite(pred).all(axis=(1, 2))
    n_reg = int(mask.sum())

    metrics: dict[str, float] = {
        "ate_paper": float("nan"),
        "ate": float("nan"),
        "rpe_rot_deg": float("nan"),
        "rpe_trans": float("nan"),
        "focal_rel_error": float("nan"),
        "registration_rate": n_reg / n_frames if n_frames else float("nan"),
        "n_frames": n_frames,
        "n_registered": n_reg,
    }
    if focal_pred is not None and focal_gt is not None:
        metrics["focal_rel_error"] = abs(float(focal_pred) - float(focal_gt)) / float(focal_gt)
    if n_reg < MIN_FRAMES_FOR_POSE_METRICS:
        return metrics

    pred, gt = pred[mask], gt[mask]
    pos_pred, pos_gt = pred[:, :3, 3], gt[:, :3, 3]
    metrics["ate_paper"] = ate_paper(pos_pred, pos_gt)
    s, R, t = align_sim3(pos_pred, pos_gt)
    aligned = s * pos_pred @ R.T + t
    metrics["ate"] = float(np.sqrt(np.mean(np.sum((aligned - pos_gt) ** 2, axis=1))))

    rel_pred, rel_gt = _relative_poses(pred), _relative_poses(gt)
    rot_err = Rotation.from_matrix(np.swapaxes(rel_gt[:, :3, :3], 1, 2) @ rel_pred[:, :3, :3])
    metrics["rpe_rot_deg"] = float(np.degrees(rot_err.magnitude()).mean())
    trans_err = np.linalg.norm(s * rel_pred[:, :3, 3] - rel_gt[:, :3, 3], axis=1)
    metrics["rpe_trans"] = float(trans_err.mean())
    return metrics


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def depth_metrics(depth_pred: list[np.ndarray], depth_gt: list[np.ndarray], scale: float) -> dict[str, float]:
    """AbsRel and delta < 1.25 of scaled predicted depth against measured depth (see the module docs).

    Args:
        depth_pred: per frame (h, w) predicted z-depth, any units.
        depth_gt: per frame (h, w) measured z-depth at the same pixels, metres; <= 0 or
            non-finite where there is no measurement.
        scale: one factor for the whole video that brings the prediction into metres.

    Returns:
        ``depth_abs_rel``, ``depth_delta1``, ``depth_abs_rel_constant``,
        ``depth_abs_rel_ratio``, ``depth_scale``, ``depth_pixels`` (NaN metrics when no
        pixel has both).

    Raises:
        ValueError: the lists differ in length or a pair in shape.
    """
    if len(depth_pred) != len(depth_gt):
        raise ValueError(f"depth_metrics needs as many predicted ({len(depth_pred)}) as measured ({len(depth_gt)}) maps")
    pred_all, gt_all = [], []
    for pred, gt in zip(depth_pred, depth_gt):
        if pred.shape != gt.shape:
            raise ValueError(f"predicted depth {pred.shape} and measured depth {gt.shape} must have the same shape")
        valid = np.isfinite(gt) & (gt > 0) & np.isfinite(pred) & (pred > 0)
        pred_all.append(pred[valid].astype(np.float64))
        gt_all.append(gt[valid].astype(np.float64))
    pred, gt = np.concatenate(pred_all) * scale, np.concatenate(gt_all)
    nan = float("nan")
    if not len(gt) or not (np.isfinite(scale) and scale > 0):
        return dict(depth_abs_rel=nan, depth_delta1=nan, depth_abs_rel_constant=nan, depth_abs_rel_ratio=nan,
                    depth_scale=float(scale), depth_pixels=int(len(gt)))
    abs_rel = float(np.mean(np.abs(pred - gt) / gt))
    constant = _weighted_median(gt, 1.0 / gt)
    abs_rel_constant = float(np.mean(np.abs(constant - gt) / gt))
    return {
        "depth_abs_rel": abs_rel,
        "depth_delta1": float(np.mean(np.maximum(pred / gt, gt / pred) < 1.25)),
        "depth_abs_rel_constant": abs_rel_constant,
        "depth_abs_rel_ratio": abs_rel / abs_rel_constant if abs_rel_constant > 0 else nan,
        "depth_scale": float(scale),
        "depth_pixels": int(len(gt)),
    }


def read_gt_depth(gt_dir: Path, name: str, shape: tuple[int, int]) -> np.ndarray | None:
    """Measured depth (metres) of frame ``name`` sampled at the centres of an (h, w) grid
    (nearest neighbour); None when ``gt_dir/depth/<stem>.png`` does not exist.

    Raises:
        InputError: the file exists but cannot be read as a single-channel image.
    """
    path = Path(gt_dir) / "depth" / f"{Path(name).stem}.png"
    if not path.is_file():
        return None
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.ndim != 2:
        raise InputError(f"cannot read the ground-truth depth {path} as a 16-bit single-channel PNG")
    h, w = shape
    return cv2.resize(raw, (w, h), interpolation=cv2.INTER_NEAREST).astype(np.float64) * GT_DEPTH_UNIT_M


def evaluate_depth(
    names_pred: list[str], c2w_pred: np.ndarray, depth_pred, gt_dir: Path
) -> dict[str, float]:
    """Depth metrics of predicted depth maps against the measured depth of a ground-truth folder.

    Args:
        names_pred: N image names of the prediction.
        c2w_pred: (N, 4, 4) predicted camera-to-world (their Sim(3) alignment onto the
            ground truth gives the one depth scale).
        depth_pred: N predicted (h, w) z-depth maps (an array or a sequence of them), in
            the units of ``c2w_pred``.
        gt_dir: ground-truth folder (poses.txt, depth/<stem>.png in millimetres).

    Returns:
        The dict of :func:`depth_metrics`; empty when the folder has no depth maps for
        these frames or fewer than 3 posed frames can be aligned.
    """
    names_gt, c2w_gt, _ = read_ground_truth(gt_dir)
    matched, _ = match_frames(list(names_pred), names_gt)
    pairs = [(m, k) for k, m in enumerate(matched) if m is not None and np.isfinite(c2w_pred[m]).all()]
    if len(pairs) < MIN_FRAMES_FOR_POSE_METRICS:
        return {}
    pred_idx, gt_idx = map(np.asarray, zip(*pairs))
    scale = align_sim3(c2w_pred[pred_idx, :3, 3], c2w_gt[gt_idx, :3, 3])[0]
    preds, gts = [], []
    for m, k in pairs:
        pred = np.asarray(depth_pred[m])
        gt = read_gt_depth(gt_dir, names_gt[k], pred.shape)
        if gt is not None:
            preds.append(pred)
            gts.append(gt)
    return depth_metrics(preds, gts, scale) if gts else {}


# --- reading output / ground-truth folders ------------------------------------------


def _require_folder(folder: Path, what: str) -> tuple[Path, Path]:
    """Paths of poses.txt and intrinsics.json in ``folder``; InputError if missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{what} folder {folder} does not exist; pass a folder with poses.txt and intrinsics.json")
    paths = folder / "poses.txt", folder / "intrinsics.json"
    for path in paths:
        if not path.is_file():
            raise InputError(
                f"{what} folder {folder} has no {path.name}; pass a folder with poses.txt and intrinsics.json"
            )
    return paths


def _focal_at_width(intrinsics: dict, width: float) -> float:
    """Mean of fx and fy (pixels) rescaled to an image ``width`` pixels wide."""
    return 0.5 * (float(intrinsics["fx"]) + float(intrinsics["fy"])) * width / float(intrinsics["width"])


def read_ground_truth(gt_dir: Path) -> tuple[list[str], np.ndarray, dict]:
    """Read a ground-truth folder in the shared data layout.

    Args:
        gt_dir: folder with ``poses.txt`` (``name tx ty tz qx qy qz qw``, camera-to-world,
            OpenCV axes, quaternion x y z w) and ``intrinsics.json`` (``width height fx fy``
            in pixels).

    Returns:
        (names, c2w (N, 4, 4) float64, intrinsics dict with width, height, fx, fy).

    Raises:
        InputError: the folder or a file is missing or cannot be parsed.
    """
    poses_path, intr_path = _require_folder(gt_dir, "ground-truth")
    names, c2w = read_poses(poses_path)
    return names, c2w, read_intrinsics(intr_path)


def match_frames(names_pred: list[str], names_gt: list[str]) -> tuple[list[int | None], list[str]]:
    """Index into ``names_pred`` for every ground-truth frame (None where it has no pose).

    Names are matched exactly, else by file stem (``000001.jpg`` ~ ``000001.png``); if
    nothing matches but the counts agree, frames are matched by order.

    Returns:
        (matched, notes): ``matched[k]`` is the predicted index of ground-truth frame k
        or None; ``notes`` are human-readable remarks about how frames were matched.

    Raises:
        InputError: no name matches and the frame counts differ.
    """
    notes: list[str] = []
    index = {name: i for i, name in enumerate(names_pred)}
    matched: list[int | None] = [index.get(name) for name in names_gt]
    if all(m is None for m in matched):
        stems = {Path(name).stem: i for i, name in enumerate(names_pred)}
        matched = [stems.get(Path(name).stem) for name in names_gt]
        if any(m is not None for m in matched):
            notes.append("frames matched by file stem (extensions differ)")
    if all(m is None for m in matched):
        if len(names_pred) != len(names_gt):
            raise InputError(
                f"none of the {len(names_pred)} predicted image names matches the {len(names_gt)} "
                f"ground-truth names (e.g. {names_pred[:1]} vs {names_gt[:1]}); name the frames alike"
            )
        matched = list(range(len(names_gt)))
        notes.append("image names differ from the ground truth; frames matched by order")
    return matched, notes


def evaluate_named(
    names_pred: list[str],
    c2w_pred: np.ndarray,
    intrinsics_pred: dict,
    gt_dir: Path,
    depth_pred=None,
) -> dict[str, float | str]:
    """Metrics of named predicted poses and intrinsics against a ground-truth folder.

    Frames are matched with :func:`match_frames`; ground-truth frames missing from the
    prediction count as unregistered, predicted frames without ground truth are ignored.
    The focal length is the mean of fx and fy, compared at the ground-truth image width
    (the prediction is rescaled if its width differs).

    Args:
        names_pred: N_pred image names.
        c2w_pred: (N_pred, 4, 4) camera-to-world, OpenCV axes (NaN rows = no pose).
        intrinsics_pred: dict with ``width``, ``height``, ``fx``, ``fy`` (pixels).
        gt_dir: folder with poses.txt and intrinsics.json (shared data layout).
        depth_pred: N_pred predicted (h, w) z-depth maps (units of ``c2w_pred``), or None.

    Returns:
        The dict of :func:`evaluate`, plus ``focal_px`` and ``focal_gt_px`` (pixels at the
        ground-truth width), the depth metrics of :func:`evaluate_depth` when
        ``depth_pred`` is given and ``gt_dir`` has measured depth, and ``"note"`` (str)
        when something was unusual.

    Raises:
        InputError: the ground-truth folder is missing or invalid, or no frame can be matched.
    """
    names_gt, c2w_gt, intr_gt = read_ground_truth(gt_dir)
    matched, notes = match_frames(list(names_pred), names_gt)
    c2w = np.full((len(names_gt), 4, 4), np.nan)
    registered = np.zeros(len(names_gt), bool)
    for k, m in enumerate(matched):
        if m is not None:
            c2w[k] = c2w_pred[m]
            registered[k] = True
    extra = len(names_pred) - int(registered.sum())
    if extra > 0:
        notes.append(f"{extra} predicted frames have no ground truth and were ignored")

    width_gt = float(intr_gt["width"])
    focal_pred = _focal_at_width(intrinsics_pred, width_gt)
    focal_gt = _focal_at_width(intr_gt, width_gt)
    ratio_w = width_gt / float(intrinsics_pred["width"])
    ratio_h = float(intr_gt["height"]) / float(intrinsics_pred["height"])
    if abs(ratio_w / ratio_h - 1.0) > 0.01:
        notes.append("aspect ratios differ; focal compared after rescaling to the ground-truth width")

    metrics: dict[str, float | str] = dict(
        evaluate(c2w, c2w_gt, focal_pred=focal_pred, focal_gt=focal_gt, registered=registered)
    )
    metrics["focal_px"] = focal_pred
    metrics["focal_gt_px"] = focal_gt
    if depth_pred is not None:
        metrics.update(evaluate_depth(names_pred, c2w_pred, depth_pred, gt_dir))
    if notes:
        metrics["note"] = "; ".join(notes)
    return metrics


def evaluate_run(out_dir: Path, gt_dir: Path) -> dict[str, float | str]:
    """Evaluate a flowmap output folder against a ground-truth folder.

    Reads ``out_dir/poses.txt`` (``name tx ty tz qx qy qz qw``, c2w, OpenCV axes),
    ``out_dir/intrinsics.json`` (``width height fx fy ...`` in pixels) and
    ``out_dir/depth/<stem>.npy`` when present, and the same files in ``gt_dir`` (the
    layout of ``shared/data/*``), then calls :func:`evaluate_named`.

    Returns:
        Metrics as in :func:`evaluate` plus ``focal_px`` / ``focal_gt_px`` (pixels at the
        ground-truth width) and, when relevant, a ``"note"``.

    Raises:
        InputError: either folder is missing, lacks a file, or a file cannot be parsed.
    """
    poses_path, intr_path = _require_folder(out_dir, "output")
    names, c2w = read_poses(poses_path)
    depth_files = [Path(out_dir) / "depth" / f"{Path(name).stem}.npy" for name in names]
    depth = [read_depth(f) for f in depth_files] if all(f.is_file() for f in depth_files) else None
    return evaluate_named(names, c2w, read_intrinsics(intr_path), gt_dir, depth)


def read_depth(path: Path) -> np.ndarray:
    """A depth map ``OUT/depth/<stem>.npy`` of a run (float32, (h, w)).

    Raises:
        InputError: the file is truncated, corrupt or not a 2-D map (one line naming it).
    """
    try:
        depth = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(
            f"cannot read the depth map {path} ({' '.join(str(exc).split())[:80]}); run flowmap run again for this "
            "output, or delete its depth/ folder to evaluate the poses alone"
        ) from None
    if depth.ndim != 2:
        raise InputError(f"the depth map {path} has shape {depth.shape}, expected (h, w); run flowmap run again for this output")
    return depth


def evaluate_reconstruction(rec, gt_dir: Path) -> dict[str, float | str]:
    """Evaluate a :class:`~flowmap.types.Reconstruction` against a ground-truth folder.

    Uses ``rec.names``, ``rec.c2w`` and ``rec.K`` at ``rec.image_size``; see
    :func:`evaluate_named`.
    """
    height, width = rec.image_size
    intrinsics = {"width": width, "height": height, "fx": float(rec.K[0, 0]), "fy": float(rec.K[1, 1])}
    return evaluate_named(list(rec.names), rec.c2w, intrinsics, gt_dir, rec.depth)
