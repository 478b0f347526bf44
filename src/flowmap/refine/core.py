"""The refinement stage: FlowMap cameras -> COLMAP-accurate cameras, one pure function."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import flowmap.refine.adjust as adjust
import flowmap.refine.depth as depth_mod
import flowmap.refine.features as features
import flowmap.refine.pairs as pairs_mod
import flowmap.refine.reinit as reinit_mod
from flowmap.camera import K_at
from flowmap.io import scratch_dir
from flowmap.refine.colmap_io import camera_K, quiet_colmap, transform_c2w, umeyama
from flowmap.refine.config import RefineConfig, Refinement


def _check_inputs(images, c2w, K, depth) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    images = np.asarray(images)
    c2w = np.asarray(c2w, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    depth = np.asarray(depth, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    n = len(images)
    if n < 3:
        raise ValueError(f"refine needs at least 3 frames, got {n}")
    if c2w.shape != (n, 4, 4) or not np.isfinite(c2w).all():
        raise ValueError(f"c2w must be finite (N, 4, 4) with N = {n}, got {c2w.shape}")
    if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"K must be a finite (3, 3) intrinsics matrix with positive focal, got {K}")
    if depth.ndim != 3 or len(depth) != n:
        raise ValueError(f"depth must be (N, h, w) with N = {n}, got {depth.shape}")
    return images, c2w, K, depth


def _degrees(values: np.ndarray) -> list[float | None]:
    """Per-frame angles for summary.json: rounded, None for a frame without pairs."""
    return [round(float(v), 3) if np.isfinite(v) else None for v in values]


def _fallback(c2w, K, n, stats, warnings, message, config: RefineConfig | None = None, per_frame: np.ndarray | None = None) -> Refinement:
    """FlowMap's cameras kept (``applied`` False), with ``message`` as a warning.

    Few views (issue 24): with at most ``config.few_views_max_frames`` frames and
    ``config.report_unregistered``, when the verified pairs contradict FlowMap's cameras
    (some frame's median rotation disagreement with its pairs, ``per_frame`` in degrees,
    exceeds ``config.max_rotation_disagreement_deg``), no frame is posed (``registered``
    all False, ``stats["unregistered_frames"]`` all frames): a few wide-baseline photos
    that neither FlowMap's flow nor the matches tie together are reported, not written
    with wrong poses (castle-P30 every 10th frame: ATE 0.14, 53 degrees of rotation
    error, where COLMAP builds no model either). Without such evidence (no pair with a
    measured rotation, e.g. a nearly static camera) FlowMap's cameras are kept as before.
    """
    warnings.append(message)
    stats["termination"] = "fallback"
    registered = None
    if config is not None and config.report_unregistered and n <= config.few_views_max_frames and per_frame is not None:
        measured = per_frame[np.isfinite(per_frame)]
        if np.any(measured > config.max_rotation_disagreement_deg):
            registered = np.zeros(n, bool)
            stats["unregistered_frames"] = list(range(n))
            warnings.append(
                f"none of the {n} frames could be posed: the verified matches between them do not register them, and they do not "
                "confirm FlowMap's cameras either; photos need more overlap (add some in between)"
            )
    return Refinement(
        c2w.copy(), K.copy(), np.ones(n), np.zeros((0, 3)), np.zeros((0, 3), np.uint8), stats, warnings, applied=False, depth=None,
        registered=registered,
    )


def forward_motion(c2w: np.ndarray) -> float:
    """Median |cos| of the angle between each step's camera motion and the camera's
    optical axis, over the consecutive frames of ``c2w`` (N, 4, 4) that move: about 1 for
    forward motion (driving, walking), near 0 for sideways or orbiting cameras; 0 when
    no frame moves.

    Measured on FlowMap's 25-step cameras: kitti-06 (driving) 0.95; castle-P30,
    fountain-P11, fox, llff-fern, tum-office, tum-rpy(-long), tartanair-hospital
    0.13-0.33.
    """
    steps = np.diff(c2w[:, :3, 3], axis=0)
    length = np.linalg.norm(steps, axis=1)
    moving = length > 1e-9 * max(float(length.max(initial=0.0)), 1e-300)
    if not moving.any():
        return 0.0
    cos = np.abs(np.sum(steps * c2w[:-1, :3, 2], axis=1))[moving] / length[moving]
    return float(np.median(cos))


def settings_for_motion(config: RefineConfig, forward: float) -> RefineConfig:
    """``config`` with its ``forward_*`` settings applied when ``forward`` (see
    :func:`forward_motion`) exceeds ``config.forward_motion_min_cos``; else ``config``.

    On forward motion: COLMAP's SIFT (plain: ``forward_sift_dsp``) with at least 8,192 features (``forward_features``),
    at most ``forward_function_tolerance``, at least ``forward_max_pairs_per_frame`` overlap
    pairs per frame and at most ``forward_converge_tol`` (issue 24; the measurements are in
    :class:`RefineConfig`).
    """
    if not forward > config.forward_motion_min_cos:
        return config
    if config.features == "opencv" and config.forward_features == "colmap":
        config = replace(config, features="colmap", max_num_features=max(config.max_num_features, 8192), sift_dsp=config.forward_sift_dsp)
    if config.forward_function_tolerance is not None:
        config = replace(config, function_tolerance=min(config.function_tolerance, config.forward_function_tolerance))
    if config.forward_max_pairs_per_frame is not None:
        config = replace(config, max_pairs_per_frame=max(config.max_pairs_per_frame, config.forward_max_pairs_per_frame))
    if config.forward_converge_tol is not None:
        config = replace(config, converge_tol=min(config.converge_tol, config.forward_converge_tol))
    return config


def keypoint_density(counts, height: int, width: int) -> float:
    """Median SIFT keypoints per 10,000 pixels of frames of ``height`` x ``width`` with
    ``counts`` keypoints each: a measure of texture (``RefineConfig.low_texture_max_density``)."""
    return float(np.median(np.asarray(counts, dtype=np.float64))) * 1e4 / (height * width) if len(counts) else 0.0


def settings_for_texture(config: RefineConfig, density: float) -> RefineConfig:
    """``config`` with COLMAP's DSP-SIFT and at least 8,192 features
    (``low_texture_features``) when ``density`` (:func:`keypoint_density`) is below
    ``config.low_texture_max_density`` and the features are OpenCV's; else ``config``."""
    if config.features == "opencv" and config.low_texture_features == "colmap" and density < config.low_texture_max_density:
        return replace(config, features="colmap", max_num_features=max(config.max_num_features, 8192))
    return config


def texture_sample(n: int, count: int) -> np.ndarray:
    """Indices of ``count`` frames spread evenly over ``n`` (all of them when n <= count),
    whose SIFT keypoints judge the texture before the other frames are extracted."""
    return np.unique(np.linspace(0, n - 1, min(n, max(1, count))).round().astype(int))


def clearly_low_texture(config: RefineConfig, density: float) -> bool:
    """True when a sample's :func:`keypoint_density` is below
    ``config.texture_sample_margin`` times ``config.low_texture_max_density`` (so far
    below that the median of every frame would be below the threshold too) and the
    low-texture features apply (:func:`settings_for_texture`); a density nearer the
    threshold is decided on every frame."""
    low = density < config.texture_sample_margin * config.low_texture_max_density
    return low and settings_for_texture(config, density) is not config


def settings_for_few_views(config: RefineConfig, n: int) -> RefineConfig:
    """``config`` for ``n`` frames: with at most ``config.few_views_max_frames`` (a few
    wide-baseline photos) the global mapper keeps the fixed-rotation stage of its bundle
    adjustment (``reinit_skip_fixed_rotation`` off), and with ``few_views_start``
    "incremental" the database is made as COLMAP makes it by default (its plain SIFT,
    8,192 features, no focal prior) for COLMAP's incremental start
    (:func:`flowmap.refine.reinit.incremental_start`; measurements in
    :class:`RefineConfig`).

    Skipping that stage left fountain-P11 every 3rd frame (4 photos) 10 degrees off
    (ATE 0.0184 against 0.00026 with it, from a 10-step start, 2026-12-05 session 28),
    and no check caught it. A SIMPLE_RADIAL camera for a few photos (COLMAP's default
    model) was tried as well: castle-P30 every 6th frame 0.00229 and fountain-P11 every
    3rd 0.00052 in ``flowmap bench`` (0.00327 and 0.00051 without): not kept.
    """
    if n > config.few_views_max_frames:
        return config
    config = replace(config, reinit_skip_fixed_rotation=False)
    if config.few_views_start == "incremental":
        config = replace(config, features="colmap", max_num_features=max(config.max_num_features, 8192), sift_dsp=False, focal_prior=False)
    return config


def _within(ratio: float, bound: float) -> bool:
    """``ratio`` lies in [1 / bound, bound] (False for NaN)."""
    return bool(1.0 / bound <= ratio <= bound)


def _unexplained_focal_move(f_before: float, f_new: float, disagreement: float, s0: dict | None, s1: dict, config: RefineConfig) -> str | None:
    """Why a focal move beyond ``max_focal_ratio`` (``max_focal_ratio_reinit`` after a
    re-initialisation) is not acceptable, or None when it is (issue 24).

    The move is judged by what the adjusted cameras explain, not by its size: FlowMap's focal is what goes wrong
    on forward motion and low texture (kitti-06: 207.5 px against 369; the adjustment
    found 348 px at 0.22 px reprojection error and 0.03 deg disagreement with the verified
    pairs, ATE 0.0061 -> 0.00014). It is accepted up to ``max_focal_ratio_explained`` when
    the adjusted relative rotations agree with the verified pairs' to
    ``focal_explained_max_disagreement_deg`` (median) and, from FlowMap's own cameras, the
    reprojection error did not grow.
    """
    moved = f"focal moved too far ({f_before:.1f} -> {f_new:.1f} px)"
    if not _within(f_new / f_before, config.max_focal_ratio_explained):
        return moved
    if not disagreement <= config.focal_explained_max_disagreement_deg:
        return f"{moved} and the adjusted cameras disagree with the verified pairs by {disagreement:.2f} deg"
    if s0 is not None and not s1["reproj_px"] <= s0["reproj_px"]:
        return f"{moved} and the reprojection error grew ({s0['reproj_px']:.2f} -> {s1['reproj_px']:.2f} px)"
    return None


def refine(
    images, c2w, K, depth, config: RefineConfig = RefineConfig(), progress: bool = True, work_dir: Path | None = None
) -> Refinement:
    """Refine FlowMap's cameras with SIFT matches, triangulation and bundle adjustment.

    Pipeline (all geometry by COLMAP through pycolmap, Schönberger & Frahm CVPR 2016):
    SIFT per frame -> pose-guided pair graph -> matching + two-view verification ->
    [re-initialisation by COLMAP's global mapper (GLOMAP, Pan et al. ECCV 2024) when
    FlowMap's relative rotations disagree with the verified geometry: by more than
    ``reinit_rotation_deg`` in the median over pairs, or by more than
    ``reinit_frame_before_deg`` for one frame] -> triangulation
    with the cameras fixed -> rounds of Ceres bundle adjustment (all poses, shared
    focal, robust loss), outlier filtering and re-triangulation [-> the same from the
    global mapper's cameras when a frame still disagrees with its verified pairs by more
    than ``reinit_frame_deg``; the better agreement is kept] -> one similarity back
    to FlowMap's frame -> per-frame depth scales. A few photos (at most
    ``few_views_max_frames``, ``few_views_start`` "incremental") start from COLMAP's
    incremental mapper instead (:func:`flowmap.refine.reinit.incremental_start`, on a
    database made with COLMAP's default SIFT and no focal prior): the photos it does not
    register, and any whose adjusted rotation stays more than ``reinit_frame_deg`` off
    its verified pairs (taken out one at a time, the rest adjusted again), are reported
    as not registered; when it registers fewer than 3 the video path above runs.

    Args:
        images: (N, H, W, 3) uint8 RGB frames at the input resolution, N >= 3.
        c2w: (N, 4, 4) float64 camera-to-world, OpenCV axes (FlowMap's result).
        K: (3, 3) float64 intrinsics in input pixels; pixel centre of column i at u = i.
        depth: (N, h, w) float32 z-depth at the working resolution, same scale as c2w.
        config: :class:`RefineConfig`.
        progress: print one line per sub-step to stderr.
        work_dir: COLMAP's working folder (frames, database), emptied first and removed
            at the end (:func:`flowmap.io.scratch_dir`); None: a new folder in the
            system's temporary directory. A run puts it in its ``OUT.cache`` so that a
            killed run leaves it only where the run's own cleanup and ``--resume`` see it.

    Returns:
        :class:`Refinement` in FlowMap's frame: c2w[0] = I and the trajectory's scale
        matched to FlowMap's by a similarity on the camera centres, so depth *
        depth_scale is in the units of c2w. ``stats`` holds: pairs (chosen, by reason,
        verified), rotation_disagreement_deg, rotation_disagreement_frames_deg and
        rotation_disagreement_frames_after_deg (per frame, None without a pair),
        rotation_disagreement_after_deg, reinit, reinit_reason, reinit_light, tracks, observations,
        reproj_px_before / after, focal_before / after, rounds (list of per-round
        records), termination, seconds (per sub-step), depth_agreement_before / after
        (median |d - z| / z over the observations of the adjusted points, before: the
        input depth against the points triangulated with the input cameras; after: the
        returned depth against the adjusted points), depth_agreement_field_heldout (the
        same for the correction field fitted on half of the observations, tested on the
        other half), unconstrained_frames, unregistered_frames (the frames reported as
        not posed, see ``Refinement.registered``), frames_off_after (frames more than
        ``max_frame_disagreement_deg`` from their verified pairs after the adjustment,
        named in a warning), max_jump, keypoint_density (OpenCV SIFT keypoints per
        10,000 px, see ``RefineConfig.low_texture_max_density``), repose_tried (frame ->
        [2D-3D candidates, inliers, observations] of the weak frames tried by
        :func:`flowmap.refine.adjust.repose`) and reposed_frames. The "before" entries
        (reproj_px_before, observations_before, depth_agreement_before) need the input
        cameras' own triangulation, which is skipped when the cameras are re-initialised
        before any adjustment: they are then absent.

    Raises:
        ValueError: malformed inputs or configuration.
    """
    config.check()
    images, c2w, K, depth = _check_inputs(images, c2w, K, depth)
    n, H, W = images.shape[:3]
    warnings: list[str] = []
    stats: dict = {"frames": n, "seconds": {}}
    stats["forward_motion"] = forward = forward_motion(c2w)
    config = settings_for_few_views(settings_for_motion(config, forward), n)
    sec = stats["seconds"]
    t_all = time.perf_counter()

    def say(msg: str) -> None:
        if progress:
            print(f"[refine] {msg}", file=sys.stderr, flush=True)

    K_work = K_at(K, (H, W), depth.shape[1:])
    f_before = 0.5 * (K[0, 0] + K[1, 1])
    stats["focal_before"] = float(f_before)

    with scratch_dir(work_dir, prefix="flowmap-refine-") as work, quiet_colmap(False):
        import pycolmap

        pycolmap.set_random_seed(config.seed)
        image_dir, db = work / "images", work / "database.db"
        t0 = time.perf_counter()
        names = features.write_images(images, image_dir)
        if config.features == "opencv":
            # a sample of frames first: clearly low texture goes to DSP-SIFT without
            # extracting the rest twice; otherwise the sample is kept and the decision
            # is taken on every frame (as when all of them were extracted first)
            sample = features.opencv_sift_frames(images, texture_sample(n, config.texture_sample_frames), config)
            density = keypoint_density([len(k) for k, _ in sample.values()], H, W)
            if not clearly_low_texture(config, density):
                counts = features.extract_opencv(db, image_dir, names, images, K, config, done=sample)
                density = keypoint_density(counts, H, W)
            stats["keypoint_density"] = density
            textured = config
            config = settings_for_texture(config, density)
            if config is not textured:  # low texture: COLMAP's DSP-SIFT instead, into a fresh database
                say(f"low texture ({density:.1f} SIFT keypoints per 10,000 px): COLMAP's DSP-SIFT instead")
                db.unlink(missing_ok=True)
                features.extract(db, image_dir, names, K, config)
        else:
            features.extract(db, image_dir, names, K, config)
        stats["features"] = config.features
        sec["features_s"] = time.perf_counter() - t0
        say(f"SIFT on {n} frames: {sec['features_s']:.1f} s")

        t0 = time.perf_counter()
        pair_list, by_reason = pairs_mod.choose_pairs(c2w, K_work, depth, config)
        sec["pairs_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        features.match_pairs(db, pair_list, names, work, config)
        verified = features.read_verified(db, names)
        sec["match_s"] = time.perf_counter() - t0
        stats["pairs"] = {"chosen": len(pair_list), **by_reason, "verified": len(verified)}
        say(f"matched {len(pair_list)} pairs ({by_reason}), {len(verified)} verified: {sec['match_s']:.1f} s")
        if config.focal_prior:
            reinit_mod.relative_rotations(db, verified, K, config)
        else:
            # COLMAP verified the pairs at its default focal: the rotation of every pair with
            # a baseline is estimated again with FlowMap's (the checks compare FlowMap's
            # cameras); pure-rotation (panoramic) and degenerate pairs, and pairs whose
            # matches moved by less than 3 % of the image, stay without.
            general = {int(getattr(pycolmap.TwoViewGeometryConfiguration, c)) for c in ("CALIBRATED", "UNCALIBRATED", "PLANAR")}
            todo = [p for p in verified if p["config"] in general]
            reinit_mod.relative_rotations(db, todo, K, config, all_pairs=True, min_shift_px=0.03 * max(H, W))
        disagreement, n_used = reinit_mod.rotation_disagreement(c2w, verified)
        stats["rotation_pairs"] = n_used
        stats["rotation_disagreement_deg"] = disagreement
        per_frame0 = reinit_mod.frame_disagreement(c2w, verified)
        stats["rotation_disagreement_frames_deg"] = _degrees(per_frame0)
        if len(verified) < max(2, n // 4):
            message = f"refinement skipped: only {len(verified)} of {len(pair_list)} pairs verified; FlowMap cameras kept"
            return _fallback(c2w, K, n, stats, warnings, message, config, per_frame0)
        worst0 = float(np.nanmax(per_frame0)) if np.isfinite(per_frame0).any() else float("nan")
        if config.reinit == "always":
            why = "asked for"
        elif config.reinit == "auto" and (not np.isfinite(disagreement) or disagreement > config.reinit_rotation_deg):
            why = f"{disagreement:.1f} deg median disagreement"
        elif config.reinit == "auto" and worst0 > config.reinit_frame_before_deg:
            why = f"frame {int(np.nanargmax(per_frame0))} disagrees by {worst0:.1f} deg before the adjustment"
        else:
            why = None
        do_reinit = why is not None
        before: dict = {}

        def triangulated(rec):
            """``rec`` with every verified match triangulated (cameras fixed), timed into ``sec``."""
            t0 = time.perf_counter()
            rec = adjust.triangulate(rec, db, image_dir, work, config)
            sec["triangulate_s"] = sec.get("triangulate_s", 0.0) + time.perf_counter() - t0
            return rec

        def triangulated_before():
            """FlowMap's cameras with their points triangulated (the reference of the safety
            checks and the "before" statistics), built once, when first needed: not at all
            when the cameras are re-initialised straight away (1-7 s saved on castle-P30,
            fox and tum-rpy)."""
            if not before:
                rec0 = triangulated(adjust.build_reconstruction(db, names, c2w))
                s0 = adjust.reprojection_stats(rec0)
                stats["reproj_px_before"] = s0["reproj_px"]
                stats["observations_before"] = s0["observations"]
                pts0 = depth_mod.points_per_frame(rec0, adjust.image_ids(rec0, names))
                stats["depth_agreement_before"] = depth_mod.fit_scales(depth, c2w, K_work, pts0)[1]
                before.update(rec=rec0, stats=s0)
            return before["rec"]

        def adjusted(rec_start, reinit: bool) -> dict:
            """Rounds of adjustment from ``rec_start``; the result checked against the pairs."""
            rec_a, rounds_a = adjust.adjust_rounds(rec_start, db, image_dir, work, names, config, sec)
            weak_a = adjust.weak_frames(rec_a, names, config.repose_weak_fraction) if config.repose_weak_fraction > 0 else []
            tried = stats.setdefault("repose_tried", {})
            reposed = adjust.repose(rec_a, names, weak_a, verified, config, tried) if weak_a else []
            if reposed:  # frames the adjustment left off: placed again by their matches, then adjusted again
                say(f"frames {reposed} posed again from their matches")
                stats["reposed_frames"] = stats.get("reposed_frames", []) + reposed
                rec_a = triangulated(rec_a)
                rec_a, more = adjust.adjust_rounds(rec_a, db, image_dir, work, names, config, sec)
                rounds_a = rounds_a + more
            c2w_a = adjust.poses(rec_a, names)
            K_a = camera_K(rec_a.cameras[next(iter(rec_a.cameras))])
            # The pairs' rotations again, with the adjusted focal (they were estimated with FlowMap's).
            pairs_a = [dict(p) for p in verified]
            reinit_mod.relative_rotations(db, pairs_a, K_a, config, all_pairs=True)
            median, _ = reinit_mod.rotation_disagreement(c2w_a, pairs_a)
            frames = reinit_mod.frame_disagreement(c2w_a, pairs_a)
            worst = float(np.nanmax(frames)) if np.isfinite(frames).any() else float("nan")
            return {"rec": rec_a, "rounds": rounds_a, "c2w": c2w_a, "K": K_a, "median": median, "frames": frames, "worst": worst, "reinit": reinit}

        def reinitialised(why: str, settings: RefineConfig = config, mapper=reinit_mod.global_reinit):
            """Adjusted result from the cameras of COLMAP's global mapper (or ``mapper``:
            :func:`flowmap.refine.reinit.incremental_start`), or None when it fails."""
            t0 = time.perf_counter()
            g = mapper(db, image_dir, work, names, c2w, settings)
            sec["reinit_s"] = sec.get("reinit_s", 0.0) + time.perf_counter() - t0
            if g is None:
                if mapper is reinit_mod.global_reinit:
                    warnings.append("re-initialisation by the global mapper failed; adjusting from the FlowMap cameras")
                return None
            stats["reinit_light"] = n >= config.reinit_light_from_frames
            stats["reinit_registered"] = int(g["registered"].sum())
            stats["reinit_reason"] = why
            say(f"re-initialised ({why}): {g['registered'].sum()}/{n} registered, {sec['reinit_s']:.1f} s")
            rec_g = adjust.build_reconstruction(db, names, g["c2w"], g["params"])
            if mapper is reinit_mod.incremental_start:
                # A photo the incremental mapper did not register has no pose to offer.
                adjust.deregister(rec_g, names, np.flatnonzero(~g["registered"]))
            return adjusted(triangulated(rec_g), reinit=True)

        def retried(result: dict, why: str, settings: RefineConfig = config) -> dict:
            """The global mapper's adjusted result for ``why`` (run with ``settings``) where
            its worst frame agrees better with the verified pairs than ``result``'s; else
            ``result``, and the record says the second try was not kept."""
            second = reinitialised(why, settings)
            if second is not None and not second["worst"] >= result["worst"]:
                return second
            if second is not None:
                stats["reinit_reason"] += "; not kept (no better agreement)"
            return result

        result = None
        if n <= config.few_views_max_frames and config.few_views_start == "incremental" and config.reinit != "never":
            # A few photos: the start comes from the verified geometry (issue 24).
            result = reinitialised("a few photos: COLMAP's incremental start", mapper=reinit_mod.incremental_start)
            while result is not None and result["worst"] > config.reinit_frame_deg:
                # A photo registered against its verified pairs' rotations is taken out
                # (reported as not posed) and the others are adjusted again.
                frame = int(np.nanargmax(result["frames"]))
                stats["reinit_reason"] += f"; frame {frame} left out ({result['worst']:.0f} deg off its pairs)"
                rec_k = result["rec"]
                adjust.deregister(rec_k, names, [frame])
                if rec_k.num_reg_images() < 3:
                    result = None
                    break
                result = adjusted(triangulated(rec_k), reinit=True)
        if result is None and do_reinit:
            result = reinitialised(why)
        if result is not None and config.reinit_tracks_per_view is not None and result["worst"] > config.reinit_frame_deg:
            # The track cap made the global mapper cheap; a frame left far from its
            # verified pairs gets the mapper's full run (every track).
            frame = int(np.nanargmax(result["frames"]))
            full = replace(config, reinit_tracks_per_view=None)
            result = retried(result, f"{why}; frame {frame} disagreed by {result['worst']:.1f} deg, again with every track", full)
        if result is None:
            result = adjusted(triangulated_before(), reinit=False)
            if config.reinit == "auto" and not do_reinit and result["worst"] > config.reinit_frame_deg:
                # A few frames adjusted into a wrong minimum (the median over pairs hides
                # them): try the global mapper's cameras. Not retried when the global
                # mapper already failed above.
                frame = int(np.nanargmax(result["frames"]))
                result = retried(result, f"frame {frame} disagrees by {result['worst']:.1f} deg after the adjustment")
        stats["reinit"] = result["reinit"]
        rec, rounds, refined, K_new = result["rec"], result["rounds"], result["c2w"], result["K"]
        stats["rounds"] = rounds
        last = rounds[-1]
        n_rounds = sum(1 for r in rounds if r["round"] != "final")
        stats["termination"] = (
            f"converged after {n_rounds} rounds" if last.get("converged") else f"round cap ({adjust.round_cap(config, n)}) reached, cameras still moving"
        ) + f", last Ceres: {last['termination']}"
        s1 = adjust.reprojection_stats(rec)
        stats.update(tracks=s1["points"], observations=s1["observations"], reproj_px_after=s1["reproj_px"])
        ids = adjust.image_ids(rec, names)
        s0 = before.get("stats")  # None when re-initialised straight away
        reproj0 = "-" if s0 is None else f"{s0['reproj_px']:.3f}"
        say(f"{n_rounds} rounds: reproj {reproj0} -> {s1['reproj_px']:.3f} px, {s1['points']} tracks, {s1['observations']} obs")

        per_image = s1["per_image"]
        weak = [k for k in range(n) if per_image.get(ids[k], 0) < config.min_observations_per_frame]
        good = np.array([k not in weak for k in range(n)])
        stats["unconstrained_frames"] = weak

        # Safety: is the adjusted result worse by its own measures?
        reasons = []
        if not last["usable"]:
            reasons.append("Ceres reported an unusable solution")
        if good.sum() < 3:
            reasons.append(f"only {good.sum()} frames constrained")
        if not stats["reinit"]:  # measures against FlowMap's own triangulation
            if not s1["reproj_px"] <= max(s0["reproj_px"], 1e-9) * 1.05:
                reasons.append(f"reprojection error grew ({s0['reproj_px']:.2f} -> {s1['reproj_px']:.2f} px)")
            if s1["observations"] < 0.5 * s0["observations"]:
                reasons.append(f"inlier observations fell ({s0['observations']} -> {s1['observations']})")
        unregistered: list[int] = []
        few = n <= config.few_views_max_frames
        if weak and (len(weak) > config.max_weak_fraction * n or (few and stats["reinit"])):
            # A few photos: a frame the matches do not constrain has only FlowMap's chain,
            # which flow across wide baselines does not make reliable.
            if stats["reinit"] and good.sum() >= 3 and config.report_unregistered:
                # FlowMap's chain disagreed with the verified pairs, so its poses for the
                # frames the matches do not reach are not trusted either (issue 24: a few
                # wide-baseline photos): those frames are reported, not posed.
                unregistered = list(weak)
            else:
                reasons.append(f"{len(weak)} of {n} frames left unconstrained")
        stats["unregistered_frames"] = unregistered
        after = result["median"]
        stats["rotation_disagreement_after_deg"] = after
        stats["rotation_disagreement_frames_after_deg"] = _degrees(result["frames"])
        f_new = float(K_new[0, 0]) if np.isfinite(K_new).all() else float("nan")
        if not _within(f_new / f_before, config.max_focal_ratio_reinit if stats["reinit"] else config.max_focal_ratio):
            focal_reason = _unexplained_focal_move(f_before, f_new, after, None if stats["reinit"] else s0, s1, config)
            if focal_reason:
                reasons.append(focal_reason)
            else:
                stats["focal_move_explained"] = True
                warnings.append(
                    f"the refinement moved FlowMap's focal length from {f_before:.1f} to {f_new:.1f} px: kept, because the "
                    f"adjusted cameras explain the matches ({s1['reproj_px']:.2f} px reprojection error, {after:.2f} deg median "
                    "disagreement with the verified pairs); FlowMap's own focal was off"
                )
        if not after <= config.max_rotation_disagreement_deg:
            reasons.append(
                f"the adjusted cameras disagree with the verified pair geometry ({after:.1f} deg median relative rotation)"
            )
        if reasons:
            return _fallback(c2w, K, n, stats, warnings, "refinement rejected, FlowMap cameras kept: " + "; ".join(reasons), config, per_frame0)

        # Back to FlowMap's frame: similarity on constrained camera centres, then c2w[0] = I.
        s, R, t = umeyama(refined[good, :3, 3], c2w[good, :3, 3])
        aligned = transform_c2w(refined, s, R, t)
        extent = float(np.linalg.norm(np.ptp(c2w[:, :3, 3], axis=0)))
        scene = float(np.median(depth[np.isfinite(depth) & (depth > 0)])) if np.any(depth > 0) else 0.0
        jump = float(np.max(np.linalg.norm(aligned[good, :3, 3] - c2w[good, :3, 3], axis=1)) / max(extent + scene, 1e-12))
        stats["max_jump"] = jump
        if jump > config.max_jump and not stats["reinit"]:
            message = f"refinement rejected, FlowMap cameras kept: cameras jumped by {jump:.2f} of the scene extent"
            return _fallback(c2w, K, n, stats, warnings, message, config, per_frame0)
        good_idx = np.flatnonzero(good)
        for k in weak:
            # FlowMap's own pose relative to the nearest constrained frame, so the weak
            # frame neither jumps nor turns against its neighbours (the similarity has
            # already brought both trajectories to FlowMap's scale).
            nb = int(good_idx[np.argmin(np.abs(good_idx - k))])
            aligned[k] = aligned[nb] @ np.linalg.inv(c2w[nb]) @ c2w[k]
        off = [k for k, d in enumerate(result["frames"]) if d > config.max_frame_disagreement_deg]
        stats["frames_off_after"] = off
        if off:
            warnings.append(
                f"frames {off} disagree with their verified pairs by more than {config.max_frame_disagreement_deg:g} deg "
                f"after the refinement (up to {result['worst']:.0f} deg): their poses, and maybe the frames beyond them, are unreliable"
            )
        if unregistered:
            warnings.append(
                f"frames {unregistered} could not be registered (fewer than {config.min_observations_per_frame} adjusted "
                f"observations, and FlowMap's chain disagrees with the verified pairs): {n - len(unregistered)} of {n} frames posed"
            )
        elif weak:
            warnings.append(
                f"frames {weak} have fewer than {config.min_observations_per_frame} adjusted observations: "
                "they keep their FlowMap pose relative to the nearest refined frame"
            )
        anchor = np.linalg.inv(aligned[0])
        out_c2w = anchor @ aligned

        def to_out(x: np.ndarray) -> np.ndarray:
            y = s * x @ R.T + t
            return y @ anchor[:3, :3].T + anchor[:3, 3]

        t0 = time.perf_counter()
        rec.extract_colors_for_all_images(str(image_dir))
        xyz = np.array([p.xyz for p in rec.points3D.values()]).reshape(-1, 3)
        rgb = np.array([p.color for p in rec.points3D.values()], dtype=np.uint8).reshape(-1, 3)
        xyz = to_out(xyz) if len(xyz) else xyz
        observed = depth_mod.observed_points(rec, ids)
        pts = [xyz[idx] for idx in observed]
        Kw_new = K_at(K_new, (H, W), depth.shape[1:])
        scales, unscaled, agree1 = depth_mod.fit_scales(depth, out_c2w, Kw_new, pts)
        stats["depth_agreement_unscaled_after"] = unscaled
        depth_out = depth * scales[:, None, None].astype(np.float32)
        if config.depth_node_px is not None:
            depth_out, held, ins = depth_mod.fit_correction(depth, out_c2w, Kw_new, pts, config.depth_node_px, config.depth_smooth)
            stats["depth_agreement_field_heldout"] = held
            agree1 = ins
        stats["depth_agreement_after"] = agree1
        sec["depth_s"] = time.perf_counter() - t0

    stats["focal_after"] = float(0.5 * (K_new[0, 0] + K_new[1, 1]))
    sec["total_s"] = time.perf_counter() - t_all
    agree0 = stats.get("depth_agreement_before", float("nan"))
    say(f"focal {f_before:.2f} -> {stats['focal_after']:.2f} px, depth agreement {agree0:.4f} -> {agree1:.4f}, {sec['total_s']:.1f} s")
    registered = np.array([k not in unregistered for k in range(n)])
    return Refinement(
        out_c2w, K_new, scales, xyz, rgb, stats, warnings, applied=True, depth=depth_out, observed=observed, registered=registered
    )
