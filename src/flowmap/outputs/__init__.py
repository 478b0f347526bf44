"""Output stage: everything a run writes into its output folder ``OUT``.

::

    OUT/poses.txt             name tx ty tz qx qy qz qw, c2w, OpenCV axes (shared/data layout)
    OUT/intrinsics.json       width height fx fy cx cy source, pixels of the input frames
    OUT/depth/<stem>.npy      float32 z-depth (h, w): the dense stage's (flowmap.dense, half the
                              input resolution by default), else the working resolution's
    OUT/confidence/<stem>.npy float32 confidence in [0, 1] of the dense depth (with the dense stage)
    OUT/points.ply            coloured point cloud from the depth maps (plyfile)
    OUT/colmap/images/        the input frames at input resolution
    OUT/colmap/sparse/0/      COLMAP model (pycolmap): cameras, images, points3D (.bin [+ .txt])
    OUT/transforms.json       nerfstudio cameras (+ OUT/depth_png/<stem>.png, 16-bit depth)
    OUT/summary.json          settings, frames, timings (time_s), losses, focal, warnings
    OUT/report...             written by flowmap.outputs.report when cfg.report

Frames that were not keyframes (``rec.others``, :mod:`flowmap.register`) are written
beside the keyframes in ``poses.txt``, the COLMAP model (registered, no 2D points) and
``transforms.json`` (unless ``keyframes_only``); depth maps stay per keyframe.

Nothing is half-written: all files go to a temporary sibling ``OUT.tmp-<pid>`` that is
renamed into place once complete; an existing OUT is replaced only then
(:func:`flowmap.io.atomic_dir`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from flowmap.config import OutputConfig
from flowmap.io import atomic_dir, atomic_write
from flowmap.outputs.colmap import write_colmap, write_images, write_other_images
from flowmap.layout import write_intrinsics, write_poses
from flowmap.outputs.nerfstudio import NERFSTUDIO_DEFAULT_DEPTH_UNIT, write_transforms
from flowmap.outputs.ply import consistent_pixels, depth_point_cloud, write_ply
from flowmap.types import Frames, NonKeyframes, Reconstruction
from flowmap.validate import check_out_dir

__all__ = ["OutputConfig", "write_outputs"]


def write_outputs(
    rec: Reconstruction,
    frames: Frames,
    out_dir: Path,
    cfg: OutputConfig,
    summary: dict | None = None,
    overwrite: bool = False,
    warnings: list[str] | None = None,
    read_others: Callable[[list[int]], Iterable[Frames]] | None = None,
    staged: Path | None = None,
) -> Path:
    """Write every output of a run into ``out_dir``, atomically.

    Args:
        rec: the reconstruction; ``rec.K`` in pixels of ``frames.images``, depth and
            images at the working resolution, c2w OpenCV axes.
        frames: the input frames (names, input-resolution images for the COLMAP export).
        out_dir: the output folder; must not exist, be empty, or ``overwrite``.
        cfg: what to write.
        summary: extra entries for ``summary.json`` (e.g. the command line, input
            path). They are merged over what is derived from ``rec`` (nested dicts are
            merged key by key). A ``time_s`` given here is the time before the output
            stage; the output time is added to it. Frames of ``rec`` that are not
            registered (``rec.registered``) are left out of every file and named under
            ``unregistered_frames``; ``frames_posed`` counts the others.
        overwrite: replace an existing non-empty ``out_dir`` (only once the new one is
            complete).
        warnings: receives the output stage's warnings (also in ``summary.json``).
        read_others: with ``rec.others`` (frames that were not keyframes): reads the
            input frames at given positions among the selected frames, one
            single-frame :class:`Frames` at a time, for the COLMAP / nerfstudio images.
            The registered ones are written beside the keyframes in ``poses.txt``, the
            COLMAP model and ``transforms.json`` (not with ``cfg.keyframes_only``);
            ``summary.json`` lists the keyframes' source indices under ``keyframes``
            and the others under ``non_keyframes``.
        staged: a folder where some of those images are already encoded (the pipeline
            writes them while the refinement runs); they are moved in, not read again.

    Returns:
        ``out_dir``.

    Raises:
        InputError: ``out_dir`` exists and is a file, or is non-empty without
            ``overwrite``; ``cfg.gt_dir`` is given but not a valid ground-truth folder.
        ValueError: frames and reconstruction disagree, or poses/intrinsics are not finite.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    check_consistent(rec, frames)
    unposed = [name for name, ok in zip(rec.names, rec.posed_mask) if not ok]
    keyframe_info = keyframe_summary(rec, frames, cfg.keyframes_only)
    if rec.others is not None:
        unposed += [name for name, ok in zip(rec.others.names, rec.others.registered) if not ok]
    if unposed:  # frames that could not be registered are reported, never written with a made-up pose
        frames, rec = frames.subset(np.flatnonzero(rec.posed_mask)), rec.posed()
    if rec.others is not None and rec.others.n and read_others is None:
        raise ValueError("frames that were not keyframes need read_others to write their images")
    posed = rec.n + (0 if rec.others is None else int(rec.others.registered.sum()))
    summary = merge({"frames_posed": posed, "unregistered_frames": unposed, **keyframe_info}, summary or {})
    if cfg.report and cfg.gt_dir is not None:  # fail before any work on a bad ground truth
        from flowmap.evaluation import read_ground_truth

        read_ground_truth(Path(cfg.gt_dir))
    with atomic_dir(out_dir) as tmp:
        extra = write_contents(rec, frames, tmp, cfg, read_others, staged)
        timings = {**rec.timings, "outputs_s": time.perf_counter() - t0}
        write_summary(tmp / "summary.json", rec, frames, cfg, extra, timings, summary)
    if warnings is not None:
        warnings.extend(w for w in extra["warnings"] if w not in warnings)
    return out_dir


def check_consistent(rec: Reconstruction, frames: Frames) -> None:
    """Raise ValueError unless rec and frames describe the same finite reconstruction."""
    n = rec.n
    if frames.n != n or list(frames.names) != list(rec.names):
        raise ValueError(f"frames ({frames.n}) and reconstruction ({n}) must hold the same named frames")
    if rec.depth.shape[0] != n or rec.images.shape[:3] != rec.depth.shape:
        raise ValueError(f"depth {rec.depth.shape} and images {rec.images.shape} must be (N, h, w[, 3]) with N={n}")
    if not (np.isfinite(rec.c2w).all() and np.isfinite(rec.K).all()):
        raise ValueError("the reconstruction has non-finite poses or intrinsics; nothing written")


def keyframe_summary(rec: Reconstruction, frames: Frames, keyframes_only: bool) -> dict:
    """``summary.json``'s entries on keyframes: ``keyframes`` (source indices of the
    reconstructed frames), ``n_keyframes``, and ``non_keyframes`` (count, posed, whether
    written, their source indices, the names of those not registered)."""
    keys = list(rec.keyframes) or list(frames.source_indices)
    info: dict = {"keyframes": [int(i) for i in keys], "n_keyframes": len(keys)}
    others = rec.others
    if others is not None:
        info["non_keyframes"] = {
            "count": others.n,
            "posed": int(others.registered.sum()),
            "written": not keyframes_only,
            "source_indices": [int(i) for i in others.source_indices],
            "unregistered": [name for name, ok in zip(others.names, others.registered) if not ok],
        }
    return info


def all_poses(rec: Reconstruction, frames: Frames, keyframes_only: bool) -> tuple[list[str], np.ndarray, NonKeyframes | None]:
    """Names and c2w (M, 4, 4) of every posed frame to write, in source order: the
    posed keyframes and, unless ``keyframes_only``, the registered other frames; and
    those other frames (None when none are written)."""
    others = None if rec.others is None or keyframes_only else rec.others.posed()
    if others is None or others.n == 0:
        return list(frames.names), rec.c2w, None
    names = list(frames.names) + list(others.names)
    order = np.argsort(np.concatenate([frames.source_indices, others.source_indices]), kind="stable")
    c2w = np.concatenate([rec.c2w, others.c2w])
    return [names[k] for k in order], c2w[order], others


def write_contents(
    rec: Reconstruction, frames: Frames, directory: Path, cfg: OutputConfig, read_others: Callable | None = None,
    staged: Path | None = None,
) -> dict:
    """Write all files into ``directory``; return what summary.json should say about them
    (``read_others``, ``staged``: see :func:`write_outputs`)."""
    H, W = frames.height, frames.width
    info: dict = {"warnings": [], "timings": {}}

    def timed(key: str, start: float) -> None:
        info["timings"][key] = time.perf_counter() - start

    start = time.perf_counter()
    names, c2w, others = all_poses(rec, frames, cfg.keyframes_only)
    write_poses(directory / "poses.txt", names, c2w)
    write_intrinsics(
        directory / "intrinsics.json", rec.K_at(H, W), W, H, "flowmap estimate (pixels of the input frames)"
    )
    maps = depth_maps(rec)
    (directory / "depth").mkdir()
    for name, depth in zip(frames.names, maps.depth):
        np.save(directory / "depth" / f"{Path(name).stem}.npy", np.asarray(depth, dtype=np.float32))
    if rec.dense is not None:
        (directory / "confidence").mkdir()
        for name, conf in zip(frames.names, rec.dense.confidence):
            np.save(directory / "confidence" / f"{Path(name).stem}.npy", np.asarray(conf, dtype=np.float32))
    timed("write_cameras_depth_s", start)

    # the pixels both point sets are drawn from, computed once (0.7 s on 100 frames)
    keep = consistent_pixels(rec, cfg.min_weight, cfg.depth_tol) if cfg.colmap or (cfg.ply and rec.dense is None) else None
    if cfg.ply:
        start = time.perf_counter()
        xyz, rgb = ply_points(rec, cfg, keep)
        write_ply(directory / "points.ply", xyz, rgb)
        info["ply_points"] = len(xyz)
        if len(xyz) == 0:
            info["warnings"].append("the point cloud is empty: no depth passed the consistency filter")
        timed("write_ply_s", start)

    image_dir = "colmap/images"
    if cfg.colmap:
        start = time.perf_counter()
        model = write_colmap(
            rec,
            frames,
            directory / "colmap",
            text=cfg.colmap_text,
            max_points=cfg.colmap_max_points,
            min_weight=cfg.min_weight,
            rel_tol=cfg.depth_tol,
            seed=cfg.seed,
            jpeg_quality=cfg.jpeg_quality,
            others=others,
            read_others=read_others,
            keep=keep,
            staged=staged,
        )
        info["colmap"] = {
            "images": model.num_reg_images(),
            "points3D": model.num_points3D(),
            "mean_track_length": float(model.compute_mean_track_length()) if model.num_points3D() else 0.0,
        }
        timed("write_colmap_s", start)
    elif cfg.transforms:
        image_dir = "images"
        write_images(frames, directory / image_dir, cfg.jpeg_quality)
        if others is not None:
            write_other_images(others, read_others, directory / image_dir, cfg.jpeg_quality, staged)

    if cfg.transforms:
        start = time.perf_counter()
        path = write_transforms(
            maps, frames, directory, image_dir=image_dir, ply_file_path="points.ply" if cfg.ply else None, others=others
        )
        unit = json.loads(path.read_text())["depth_unit_scale_factor"]
        info["depth_unit_scale_factor"] = unit
        if unit != NERFSTUDIO_DEFAULT_DEPTH_UNIT:
            info["warnings"].append(
                f"depth PNGs use depth_unit_scale_factor {unit:g}; pass --depth-unit-scale-factor {unit:g} "
                "to nerfstudio's nerfstudio-data parser"
            )
        timed("write_transforms_s", start)

    if cfg.report:
        start = time.perf_counter()
        try:
            from flowmap.outputs.report import write_report
        except ModuleNotFoundError as e:
            if e.name != "flowmap.outputs.report":
                raise
            info["warnings"].append("no report written: flowmap.outputs.report is not available")
        else:
            write_report(rec, directory, gt_dir=cfg.gt_dir)
        timed("write_report_s", start)
    info["depth_resolution"] = list(maps.working_size)
    return info


def depth_maps(rec: Reconstruction) -> Reconstruction:
    """``rec`` with the depth maps to write: the dense stage's where it ran
    (:class:`flowmap.types.DenseDepth`, its resolution), else ``rec`` itself."""
    if rec.dense is None:
        return rec
    return replace(rec, depth=rec.dense.depth, images=rec.dense.images)


def ply_points(rec: Reconstruction, cfg: OutputConfig, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Points of ``points.ply``: the dense stage's fused confident points (each surface
    once) where it ran, else the working-resolution depth filtered by weight and
    neighbour agreement (:func:`flowmap.outputs.ply.depth_point_cloud`); at most
    ``cfg.max_points``, drawn uniformly with ``cfg.seed``; ``keep``: the consistent
    pixels when already computed."""
    if rec.dense is None:
        return depth_point_cloud(rec, cfg.max_points, cfg.min_weight, cfg.depth_tol, cfg.seed, keep)
    xyz, rgb = rec.dense.points_xyz, rec.dense.points_rgb
    if len(xyz) > cfg.max_points:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(xyz), size=cfg.max_points, replace=False))
        xyz, rgb = xyz[keep], rgb[keep]
    return xyz, rgb


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (``resource.getrusage``; Linux reports kB)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak / 2**20 if sys.platform == "darwin" else peak / 1024)


def write_summary(
    path: Path,
    rec: Reconstruction,
    frames: Frames,
    cfg: OutputConfig,
    info: dict,
    timings: dict,
    extra: dict,
) -> None:
    """Write ``summary.json``: what rec and the output stage say, merged with ``extra``."""
    H, W = frames.height, frames.width
    h, w = depth_maps(rec).working_size
    K = rec.K_at(H, W)
    timings = {**timings, **info["timings"]}
    # rec.timings holds nested stages (correspondences_s = flow_s + tracks_s, ...): use the
    # run's total when the caller measured it, else the sum of the top-level stages.
    top_level = ("frames_s", "correspondences_s", "optimization_s")  # optimization_s holds final_solve_s
    time_before = extra.get("time_s", rec.timings.get("time_s", sum(rec.timings.get(k, 0.0) for k in top_level)))
    derived = {
        "n_frames": rec.n,
        "image_size": [H, W],
        "focal_px": float((K[0, 0] + K[1, 1]) / 2),
        "K": K.tolist(),
        "depth": {
            "resolution": [h, w],
            "format": "float32 z-depth .npy per frame, named after the frame stem, in depth/",
            "K": rec.K_at(h, w).tolist(),
        },
        "losses": dict(rec.losses),
        "refinement": dict(rec.refinement),
        "timings": timings,
        "time_s": float(time_before) + timings["outputs_s"],
        "peak_memory_mb": _peak_rss_mb(),
        "warnings": list(rec.warnings) + info["warnings"],
        "settings": {**rec.settings, "outputs": asdict(cfg)},
        "outputs": {k: v for k, v in info.items() if k not in ("warnings", "timings")},
    }
    merged = merge(derived, {k: v for k, v in extra.items() if k != "time_s"})
    atomic_write(path, json.dumps(merged, indent=2, default=to_json) + "\n")


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge; values of ``update`` win, lists of warnings are concatenated."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        elif key == "warnings" and isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = out[key] + [v for v in value if v not in out[key]]
        else:
            out[key] = value
    return out


def to_json(value):
    """JSON fallback: NumPy values as numbers or lists, anything else (paths, enums) as text."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
