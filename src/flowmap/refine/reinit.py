"""Re-initialisation of the cameras from the verified matches when FlowMap's chain is wrong.

Trigger: the median angle between FlowMap's relative rotation and the verified two-view
geometry's relative rotation (COLMAP's essential-matrix decomposition) over the verified
pairs, or one frame's median of those angles over its own pairs. Re-initialisation: COLMAP's global mapper (GLOMAP, Pan et al. ECCV 2024:
rotation averaging, global positioning, bundle adjustment) on the same database, with
FlowMap's focal as the prior; the result is aligned to the FlowMap cameras with one
similarity on the camera centres (Umeyama). Frames it does not register keep their
FlowMap pose.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from flowmap.refine.colmap_io import c2w_from_rigid, camera_K, rotation_angle_deg, transform_c2w, umeyama


def relative_rotations(
    database: Path,
    verified: list[dict],
    K: np.ndarray,
    cfg,
    max_pairs: int = 150,
    all_pairs: bool = False,
    max_matches: int = 256,
    min_shift_px: float = 0.0,
) -> None:
    """Fill in ``R`` for verified pairs that COLMAP left uncalibrated (in place).

    COLMAP labels a pair UNCALIBRATED when a fundamental matrix explains the matches
    clearly better than an essential matrix with the prior camera, which happens when
    FlowMap's focal is a few percent off; its stored pose is then unreliable. Here an
    essential matrix is re-estimated (LO-RANSAC, cheirality check:
    ``pycolmap.estimate_essential_matrix``) on the inlier matches with the intrinsics
    ``K``, for the ``max_pairs`` pairs with most inliers. Pure-rotation / planar pairs are
    skipped. At most ``max_matches`` of a pair's verified inliers (evenly spaced) enter
    the estimate, and RANSAC may stop after 30 trials when its confidence is reached
    (COLMAP's floor is 1000): the check after the adjustment had cost 10-15 s on llff-fern
    and fox, and a few hundred verified matches fix a relative rotation to a small
    fraction of a degree. ``all_pairs``: re-estimate every pair with ``K`` (the pairs' ``R`` are
    replaced; pairs without an estimate get None), as the check after the adjustment does
    with the adjusted focal (the stored poses used the input focal, which can be tens of
    percent off after a short descent). A pair whose inlier matches move by less than
    ``min_shift_px`` (median, pixels) gets no rotation: a camera that barely moved
    fixes none.
    """
    import pycolmap

    from flowmap.refine.colmap_io import camera_params

    camera = pycolmap.Camera(model="SIMPLE_PINHOLE", width=int(2 * K[0, 2] + 1), height=int(2 * K[1, 2] + 1), params=camera_params(K, "SIMPLE_PINHOLE"))
    if all_pairs:
        todo = list(verified)
        for p in todo:
            p["R"] = p["t"] = None
    else:
        todo = [p for p in verified if p["R"] is None and p["config"] == int(pycolmap.TwoViewGeometryConfiguration.UNCALIBRATED)]
    todo = sorted(todo, key=lambda p: -p["inliers"])[:max_pairs]
    if not todo:
        return
    db = pycolmap.Database.open(database)
    try:
        ids = {img.name: img.image_id for img in db.read_all_images()}
        order = sorted(ids, key=lambda n: n)
        frames = sorted({k for p in todo for k in (p["i"], p["j"])})
        kps = {k: db.read_keypoints(ids[order[k]])[:, :2].astype(np.float64) for k in frames}
    finally:
        db.close()
    ransac = pycolmap.RANSACOptions()
    ransac.max_error = 2.0
    ransac.random_seed = cfg.seed
    # COLMAP's default floor of 1000 trials made each pair cost ~50 ms; the inliers are
    # already verified, so the adaptive stopping rule (confidence 0.9999) ends early.
    ransac.min_num_trials = 30

    def estimate(p: dict) -> None:
        m = p["matches"]
        if min_shift_px > 0 and np.median(np.linalg.norm(kps[p["j"]][m[:, 1]] - kps[p["i"]][m[:, 0]], axis=1)) < min_shift_px:
            return
        if len(m) > max_matches:  # evenly spaced subset: the pair's inliers are already verified
            m = m[np.linspace(0, len(m) - 1, max_matches).round().astype(np.int64)]
        res = pycolmap.estimate_essential_matrix(kps[p["i"]][m[:, 0]], kps[p["j"]][m[:, 1]], camera, camera, ransac)
        if res is not None and "cam2_from_cam1" in res:
            M = res["cam2_from_cam1"].matrix()
            p["R"], p["t"] = M[:, :3].copy(), M[:, 3].copy()

    # pycolmap releases the GIL inside the estimate, and each pair has its own seeded
    # RANSAC, so threads give the same result in half the time on two cores.
    with ThreadPoolExecutor(max(1, cfg.num_threads)) as pool:
        list(pool.map(estimate, todo))


def _pair_angles(c2w: np.ndarray, verified: list[dict], min_inliers: int) -> list[tuple[int, int, float]]:
    """(i, j, degrees between the cameras' and the pair's cam_j_from_cam_i) per usable pair."""
    out = []
    for p in verified:
        if p["R"] is None or p["inliers"] < min_inliers:
            continue
        i, j = p["i"], p["j"]
        if not (np.isfinite(c2w[i, :3, :3]).all() and np.isfinite(c2w[j, :3, :3]).all()):
            continue  # a frame without a pose (taken out of the reconstruction)
        out.append((i, j, float(rotation_angle_deg(c2w[j, :3, :3].T @ c2w[i, :3, :3], p["R"]))))
    return out


def rotation_disagreement(c2w: np.ndarray, verified: list[dict], min_inliers: int = 30) -> tuple[float, int]:
    """Median angle (degrees) between FlowMap's and the verified relative rotations.

    Args:
        c2w: (N, 4, 4) FlowMap cameras.
        verified: pairs from :func:`flowmap.refine.features.read_verified` (after
            :func:`relative_rotations`).
        min_inliers: pairs with fewer inliers are ignored.

    Returns:
        (median angle in degrees (NaN if no pair qualifies), number of pairs used).
    """
    angles = [a for _, _, a in _pair_angles(c2w, verified, min_inliers)]
    if not angles:
        return float("nan"), 0
    return float(np.median(angles)), len(angles)


def frame_disagreement(c2w: np.ndarray, verified: list[dict], min_inliers: int = 30) -> np.ndarray:
    """Per frame: median angle (degrees) between the cameras' and the verified relative
    rotations over the pairs that include the frame (NaN for a frame in no such pair).

    The median over all pairs (:func:`rotation_disagreement`) hides a few wrong frames:
    after an adjustment from a 300-step fox start, frames 44-48 ended 9-15 degrees off
    their pairs while the median over all pairs read 0.13 degrees.

    Args:
        c2w: (N, 4, 4) cameras.
        verified: pairs as for :func:`rotation_disagreement`.
        min_inliers: pairs with fewer inliers are ignored.

    Returns:
        (N,) float64 degrees.
    """
    per: list[list[float]] = [[] for _ in range(len(c2w))]
    for i, j, angle in _pair_angles(c2w, verified, min_inliers):
        per[i].append(angle)
        per[j].append(angle)
    return np.array([np.median(a) if a else np.nan for a in per])


def global_reinit(database: Path, image_dir: Path, workdir: Path, names: list[str], c2w: np.ndarray, cfg) -> dict | None:
    """Cameras from COLMAP's global mapper aligned to the FlowMap frame; None if it fails.

    Returns:
        dict with ``c2w`` (N, 4, 4) (registered frames from the mapper after the similarity,
        others FlowMap's), ``K`` (3, 3) flowmap convention, ``registered`` (N,) bool,
        ``params`` (COLMAP camera parameters).
    """
    import pycolmap

    options = pycolmap.GlobalPipelineOptions()
    options.num_threads = cfg.num_threads
    options.random_seed = cfg.seed
    options.multiple_models = False
    # The two-view verification already decomposed each pair's geometry into a relative
    # pose (``compute_relative_pose``); decomposing again cost fox's mapper 0.2 s.
    options.decompose_relative_pose = False
    options.mapper.bundle_adjustment.refine_principal_point = cfg.refine_principal_point
    options.mapper.bundle_adjustment.refine_extra_params = cfg.camera_model == "SIMPLE_RADIAL"
    options.mapper.bundle_adjustment.ceres.use_gpu = False
    options.mapper.global_positioning.use_gpu = False
    light = len(names) >= cfg.reinit_light_from_frames
    options.mapper.ba_num_iterations = 1 if light else int(cfg.reinit_ba_rounds)
    options.mapper.skip_retriangulation = light or not cfg.reinit_retriangulate
    options.mapper.ba_skip_fixed_rotation_stage = bool(cfg.reinit_skip_fixed_rotation)
    if cfg.reinit_ba_function_tolerance is not None:
        options.mapper.bundle_adjustment.ceres.solver_options.function_tolerance = float(cfg.reinit_ba_function_tolerance)
    if cfg.reinit_tracks_per_view is not None:
        options.mapper.track_required_tracks_per_view = int(cfg.reinit_tracks_per_view)
    return _mapped_start(pycolmap.global_mapping, database, image_dir, workdir / "global", options, names, c2w)


def incremental_start(database: Path, image_dir: Path, workdir: Path, names: list[str], c2w: np.ndarray, cfg) -> dict | None:
    """Cameras from COLMAP's incremental mapper (Schönberger & Frahm CVPR 2016: two-view
    initialisation, image registration, triangulation, bundle adjustment) aligned to the
    FlowMap frame, for a few photos (``RefineConfig.few_views_start``); None when it
    registers fewer than 3 frames. Same result as :func:`global_reinit`.

    COLMAP's own settings, but the principal point (and SIMPLE_RADIAL's distortion) is
    refined only as ``cfg`` says, one model, ``cfg.num_threads`` and ``cfg.seed``.
    """
    import pycolmap

    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = cfg.num_threads
    options.random_seed = cfg.seed
    options.multiple_models = False
    options.ba_refine_principal_point = cfg.refine_principal_point
    options.ba_refine_extra_params = cfg.camera_model == "SIMPLE_RADIAL"
    return _mapped_start(pycolmap.incremental_mapping, database, image_dir, workdir / "incremental", options, names, c2w)


def _mapped_start(mapping, database: Path, image_dir: Path, out: Path, options, names: list[str], c2w: np.ndarray) -> dict | None:
    """Run the pycolmap ``mapping`` function with ``options`` into ``out``; its best model
    aligned to ``c2w`` (:func:`_aligned_start`), None when COLMAP fails."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        models = mapping(database, image_dir, out, options=options)
    except Exception:  # noqa: BLE001 - COLMAP raises plain RuntimeError on failure
        return None
    return _aligned_start(models, names, c2w)


def _aligned_start(models: dict, names: list[str], c2w: np.ndarray) -> dict | None:
    """The model of ``models`` (COLMAP's id -> Reconstruction) with most registered
    frames, aligned to ``c2w`` (N, 4, 4) by one similarity on the registered camera
    centres (Umeyama); frames it leaves out keep their ``c2w``. None below 3 frames.
    See :func:`global_reinit` for the result."""
    models = [m for m in models.values() if m.num_reg_images() >= 3]
    if not models:
        return None
    best = max(models, key=lambda m: m.num_reg_images())
    index = {n: k for k, n in enumerate(names)}
    reg = np.zeros(len(names), bool)
    g = np.array(c2w, dtype=np.float64, copy=True)
    for img in best.images.values():
        if img.has_pose and img.name in index:
            k = index[img.name]
            g[k] = c2w_from_rigid(img.cam_from_world())
            reg[k] = True
    if reg.sum() < 3:
        return None
    s, R, t = umeyama(g[reg, :3, 3], c2w[reg, :3, 3])
    aligned = transform_c2w(g, s, R, t)
    result = np.where(reg[:, None, None], aligned, c2w)
    camera = next(iter(best.cameras.values()))
    return {"c2w": result, "K": camera_K(camera), "registered": reg, "params": list(camera.params)}
