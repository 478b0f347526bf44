"""Triangulation with given cameras and bundle adjustment in rounds, all in pycolmap.

COLMAP's point triangulator (``pycolmap.triangulate_points``: track creation, merging,
completion) and COLMAP's Ceres bundle adjuster (Schönberger & Frahm CVPR 2016; Triggs et
al., "Bundle adjustment - a modern synthesis", 2000). One round = adjust all poses, the
shared intrinsics and the points under a robust loss; drop observations beyond
``filter_max_error_px``; re-triangulate every match with the adjusted cameras.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from flowmap.refine.colmap_io import c2w_from_rigid, rigid_from_c2w


def build_reconstruction(database: Path, names: list[str], c2w: np.ndarray, K_params: list[float] | None = None):
    """pycolmap.Reconstruction with the database's camera, images (keypoints) and given poses.

    Args:
        database: COLMAP database written by :mod:`flowmap.refine.features`.
        names: frame names, index = frame.
        c2w: (N, 4, 4) camera-to-world of the frames.
        K_params: optional COLMAP camera parameters overriding the database's.
    """
    import pycolmap

    db = pycolmap.Database.open(database)
    try:
        cameras = db.read_all_cameras()
        if len(cameras) != 1:
            raise RuntimeError(f"expected one shared camera in the database, found {len(cameras)}")
        camera = cameras[0]
        if K_params is not None:
            camera.params = list(K_params)
        rec = pycolmap.Reconstruction()
        rec.add_camera_with_trivial_rig(camera)
        index = {name: k for k, name in enumerate(names)}
        for img in sorted(db.read_all_images(), key=lambda im: im.image_id):
            kps = db.read_keypoints(img.image_id)[:, :2].astype(np.float64)
            image = pycolmap.Image(name=img.name, keypoints=kps, camera_id=camera.camera_id, image_id=img.image_id)
            rec.add_image_with_trivial_frame(image, rigid_from_c2w(c2w[index[img.name]]))
    finally:
        db.close()
    return rec


def image_ids(rec, names: list[str]) -> list[int]:
    """Image id of each frame (index = frame); -1 for a frame ``rec`` does not hold (the
    triangulation returns only the registered images)."""
    by_name = {img.name: img_id for img_id, img in rec.images.items()}
    return [by_name.get(n, -1) for n in names]


def poses(rec, names: list[str]) -> np.ndarray:
    """(N, 4, 4) camera-to-world of the frames in ``rec``; NaN for a frame without a pose
    (deregistered: :func:`deregister`)."""
    out = np.full((len(names), 4, 4), np.nan)
    for k, i in enumerate(image_ids(rec, names)):
        if i >= 0 and rec.images[i].has_pose:
            out[k] = c2w_from_rigid(rec.images[i].cam_from_world())
    return out


def deregister(rec, names: list[str], frames) -> None:
    """Take ``frames`` (indices into ``names``) out of ``rec`` (in place): no pose, their
    observations deleted, so that triangulation and bundle adjustment leave them out."""
    ids = image_ids(rec, names)
    for k in frames:
        if ids[int(k)] >= 0 and rec.images[ids[int(k)]].has_pose:
            rec.deregister_frame(rec.images[ids[int(k)]].frame_id)


def triangulate(rec, database: Path, image_dir: Path, workdir: Path, cfg):
    """Triangulate every verified match with the cameras of ``rec`` held fixed (new points)."""
    import pycolmap

    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = cfg.num_threads
    options.random_seed = cfg.seed
    options.triangulation.min_angle = cfg.min_tri_angle_deg
    options.triangulation.ignore_two_view_tracks = False
    options.ba_refine_focal_length = False
    options.ba_refine_principal_point = False
    options.ba_refine_extra_params = False
    options.ba_global_max_refinements = int(cfg.tri_refinements)
    out = workdir / "tri"
    out.mkdir(parents=True, exist_ok=True)
    return pycolmap.triangulate_points(rec, database, image_dir, out, clear_points=True, options=options, refine_intrinsics=False)


def reprojection_stats(rec) -> dict:
    """Mean reprojection error (px), points, observations of ``rec``; per-image observation counts."""
    rec.update_point_3d_errors()
    n_obs = {img_id: int(img.num_points3D) for img_id, img in rec.images.items()}
    errs = [p.error for p in rec.points3D.values()]
    return {
        "reproj_px": float(np.mean(errs)) if errs else float("nan"),
        "points": int(rec.num_points3D()),
        "observations": int(sum(n_obs.values())),
        "per_image": n_obs,
    }


def _loss(name: str):
    import pycolmap

    return {
        "cauchy": pycolmap.LossFunctionType.CAUCHY,
        "soft_l1": pycolmap.LossFunctionType.SOFT_L1,
        "huber": pycolmap.LossFunctionType.HUBER,
        "trivial": pycolmap.LossFunctionType.TRIVIAL,
    }[name]


def bundle_adjust(
    rec, cfg, fixed_image: int, refine_intrinsics: bool = True, loss: str | None = None, function_tolerance: float | None = None
) -> dict:
    """One Ceres bundle adjustment of all registered images, shared intrinsics and points.

    The gauge is fixed by COLMAP's TWO_CAMS_FROM_WORLD gauge (``fixed_image`` is kept
    for the record; COLMAP picks the two cameras). ``loss`` overrides ``cfg.loss``,
    ``function_tolerance`` ``cfg.function_tolerance``.

    Returns:
        dict with ``termination`` (Ceres termination type name), ``iterations``,
        ``initial_cost``, ``final_cost``, ``usable`` (bool).
    """
    import pycolmap

    options = pycolmap.BundleAdjustmentOptions()
    options.refine_focal_length = refine_intrinsics
    options.refine_principal_point = refine_intrinsics and cfg.refine_principal_point
    options.refine_extra_params = refine_intrinsics and cfg.camera_model == "SIMPLE_RADIAL"
    options.print_summary = False
    options.ceres.loss_function_type = _loss(loss or cfg.loss)
    options.ceres.loss_function_scale = cfg.loss_scale
    solver = options.ceres.solver_options
    solver.max_num_iterations = cfg.max_iterations
    solver.num_threads = cfg.num_threads
    solver.function_tolerance = cfg.function_tolerance if function_tolerance is None else function_tolerance
    solver.gradient_tolerance = 1e-10
    solver.parameter_tolerance = 1e-9
    config = pycolmap.BundleAdjustmentConfig()
    for img_id in rec.reg_image_ids():
        config.add_image(img_id)
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
    adjuster = pycolmap.create_default_bundle_adjuster(options, config, rec)
    t0 = time.perf_counter()
    summary = adjuster.solve()
    out = {
        "termination": str(summary.termination_type).split(".")[-1],
        "usable": bool(summary.is_solution_usable()),
        "seconds": round(time.perf_counter() - t0, 3),
        "num_residuals": int(summary.num_residuals),
    }
    ceres_summary = getattr(summary, "ceres_summary", None)
    if ceres_summary is not None:
        out["iterations"] = int(ceres_summary.num_successful_steps + ceres_summary.num_unsuccessful_steps)
    return out


def filter_points(rec, cfg) -> int:
    """Drop observations beyond the error bound, negative depth, small angle; count dropped."""
    import pycolmap

    return int(pycolmap.ObservationManager(rec).filter_all_points3D(cfg.filter_max_error_px, cfg.min_tri_angle_deg))


def weak_frames(rec, names: list[str], fraction: float) -> list[int]:
    """Frames (indices into ``names``) with a pose in ``rec`` and fewer observations than
    ``fraction`` times the median over the posed frames."""
    ids = image_ids(rec, names)
    posed = [k for k, i in enumerate(ids) if i >= 0 and rec.images[i].has_pose]
    if not posed:
        return []
    counts = np.array([rec.images[ids[k]].num_points3D for k in posed])
    limit = fraction * float(np.median(counts))
    return [k for k, c in zip(posed, counts) if c < limit]


def repose(rec, names: list[str], frames: list[int], verified: list[dict], cfg, record: dict | None = None) -> list[int]:
    """New poses for ``frames`` of ``rec`` (in place) from their verified matches to the
    points other frames observe: pycolmap's LO-RANSAC absolute pose with refinement
    (P3P, Haralick et al. IJCV 1994; COLMAP's image registration, Schönberger & Frahm
    CVPR 2016), the shared camera held fixed. A frame gets the new pose when its inliers
    are at least twice its current observations (and at least ``cfg.repose_min_inliers``):
    a frame that is merely weakly seen keeps its pose (tum-rpy-long: 19 such frames
    reposed at a margin of 1-6 inliers cost 16 s of adjustment and changed nothing).

    A frame whose pose an adjustment left off (its observations then fail the filter, so
    the next rounds cannot bring it back) is placed again where its matches put it
    (tartanair-hospital, white walls: frame 125 kept 50 observations, 28x the median
    position error, while its neighbours held 800-1800).

    Args:
        rec: pycolmap.Reconstruction with the database's keypoints.
        names: frame names, index = frame.
        frames: frames to try.
        verified: pairs of :func:`flowmap.refine.features.read_verified` (``matches``:
            inlier keypoint indices, column 0 in frame ``i``).
        cfg: :class:`RefineConfig` (``filter_max_error_px``, ``repose_min_inliers``).
        record: optional dict, filled with frame -> [2D-3D candidates, inliers, observations].

    Returns:
        the frames that got a new pose.
    """
    import pycolmap

    ids = image_ids(rec, names)
    camera = rec.cameras[next(iter(rec.cameras))]
    moved = []
    for k in frames:
        image = rec.images[ids[k]]
        uv, xyz, seen = [], [], set()
        for p in verified:
            if k not in (p["i"], p["j"]):
                continue
            other = p["j"] if k == p["i"] else p["i"]
            if ids[other] < 0 or not rec.images[ids[other]].has_pose:
                continue
            mine, theirs = (p["matches"][:, 0], p["matches"][:, 1]) if k == p["i"] else (p["matches"][:, 1], p["matches"][:, 0])
            points2D = rec.images[ids[other]].points2D
            for a, b in zip(mine.tolist(), theirs.tolist()):
                if a not in seen and points2D[b].has_point3D():
                    seen.add(a)
                    uv.append(image.points2D[a].xy)
                    xyz.append(rec.points3D[points2D[b].point3D_id].xyz)
        needed = max(cfg.repose_min_inliers, 2 * image.num_points3D)
        if record is not None:
            record[int(k)] = [len(uv), 0, int(image.num_points3D)]
        if len(uv) < needed:
            continue
        options = pycolmap.AbsolutePoseEstimationOptions()
        options.ransac.max_error = 2.0 * float(cfg.filter_max_error_px)
        options.ransac.random_seed = cfg.seed
        result = pycolmap.estimate_and_refine_absolute_pose(np.array(uv), np.array(xyz), camera, options)
        if record is not None and result is not None:
            record[int(k)][1] = int(result["num_inliers"])
        if result is None or int(result["num_inliers"]) < needed:
            continue
        rec.frames[image.frame_id].rig_from_world = result["cam_from_world"]
        moved.append(k)
    return moved


def round_cap(cfg, n_frames: int) -> int:
    """The most adjustment rounds for ``n_frames`` frames: ``cfg.rounds``, or
    ``cfg.rounds_long`` (if smaller) from ``cfg.long_from_frames`` frames on."""
    return min(cfg.rounds, cfg.rounds_long) if n_frames >= cfg.long_from_frames else cfg.rounds


def adjust_rounds(rec, database: Path, image_dir: Path, workdir: Path, names: list[str], cfg, timings: dict) -> tuple[object, list[dict]]:
    """Rounds of adjust -> filter -> re-triangulate until the cameras stop moving.

    Stops early when a round moves no camera centre by more than ``cfg.converge_tol`` of
    the trajectory extent and the focal by less than ``cfg.converge_tol`` relative; at
    most :func:`round_cap` rounds.

    Returns:
        (reconstruction after the last adjustment and filtering, per-round records).
    """
    records = []
    cap = round_cap(cfg, len(names))
    for r in range(cap):
        before = poses(rec, names)
        f_before = float(rec.cameras[next(iter(rec.cameras))].mean_focal_length())
        t0 = time.perf_counter()
        info = bundle_adjust(rec, cfg, fixed_image=image_ids(rec, names)[0])
        timings["adjust_s"] = timings.get("adjust_s", 0.0) + time.perf_counter() - t0
        dropped = filter_points(rec, cfg)
        after = poses(rec, names)
        f_after = float(rec.cameras[next(iter(rec.cameras))].mean_focal_length())
        posed = np.isfinite(after[:, 0, 0]) & np.isfinite(before[:, 0, 0])
        extent = float(np.linalg.norm(np.ptp(after[posed, :3, 3], axis=0))) or 1.0
        move = float(np.max(np.linalg.norm(after[posed, :3, 3] - before[posed, :3, 3], axis=1)) / extent)
        stats = reprojection_stats(rec)
        info.update(round=r + 1, dropped=dropped, max_move=move, focal=f_after, reproj_px=stats["reproj_px"], observations=stats["observations"])
        records.append(info)
        converged = move < cfg.converge_tol and abs(f_after - f_before) < cfg.converge_tol * f_before
        info["converged"] = bool(converged)
        if converged or r == cap - 1:
            break
        t0 = time.perf_counter()
        rec = triangulate(rec, database, image_dir, workdir, cfg)
        timings["triangulate_s"] = timings.get("triangulate_s", 0.0) + time.perf_counter() - t0
    if cfg.final_loss is not None:
        t0 = time.perf_counter()
        info = bundle_adjust(rec, cfg, fixed_image=image_ids(rec, names)[0], loss=cfg.final_loss, function_tolerance=cfg.final_function_tolerance)
        timings["adjust_s"] = timings.get("adjust_s", 0.0) + time.perf_counter() - t0
        dropped = filter_points(rec, cfg)
        stats = reprojection_stats(rec)
        f_after = float(rec.cameras[next(iter(rec.cameras))].mean_focal_length())
        info.update(round="final", loss=cfg.final_loss, dropped=dropped, focal=f_after, reproj_px=stats["reproj_px"], observations=stats["observations"])
        info["converged"] = records[-1]["converged"]
        records.append(info)
    return rec, records
