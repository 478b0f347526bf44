"""Output stage: everything a run writes into its output folder ``OUT``.

::

    OUT/poses.txt             name tx ty tz qx qy qz qw, c2w, OpenCV axes (shared/data layout)
    OUT/intrinsics.json       width height fx fy cx cy source, pixels of the input frames
    OUT/depth/<stem>.npy      float32 z-depth (h, w) at the working resolution
    OUT/points.ply            coloured point cloud from the depth maps (plyfile)
    OUT/colmap/images/        the input frames at input resolution
    OUT/colmap/sparse/0/      COLMAP model (pycolmap): cameras, images, points3D (.bin [+ .txt])
    OUT/transforms.json       nerfstudio cameras (+ OUT/depth_png/<stem>.png, 16-bit depth)
    OUT/summary.json          settings, frames, timings (time_s), losses, focal, warnings
    OUT/report...             written by flowmap.outputs.report when cfg.report

Nothing is half-written: all files go to a temporary sibling ``OUT.tmp-<pid>`` that is
renamed into place once complete; an existing OUT is replaced only then
(:func:`flowmap.io.atomic_dir`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from flowmap.config import OutputConfig
from flowmap.io import atomic_dir, atomic_write
from flowmap.outputs.colmap import write_colmap, write_images
from flowmap.layout import write_intrinsics, write_poses
from flowmap.outputs.nerfstudio import NERFSTUDIO_DEFAULT_DEPTH_UNIT, write_transforms
from flowmap.outputs.ply import depth_point_cloud, write_ply
from flowmap.types import Frames, Reconstruction
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
    if unposed:  # frames that could not be registered are reported, never written with a made-up pose
        frames, rec = frames.subset(np.flatnonzero(rec.posed_mask)), rec.posed()
    summary = merge({"frames_posed": rec.n, "unregistered_frames": unposed}, summary or {})
    if cfg.report and cfg.gt_dir is not None:  # fail before any work on a bad ground truth
        from flowmap.evaluation import read_ground_truth

        read_ground_truth(Path(cfg.gt_dir))
    with atomic_dir(out_dir) as tmp:
        extra = write_contents(rec, frames, tmp, cfg)
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


def write_contents(rec: Reconstruction, frames: Frames, directory: Path, cfg: OutputConfig) -> dict:
    """Write all files into ``directory``; return what summary.json should say about them."""
    H, W = frames.height, frames.width
    h, w = rec.working_size
    info: dict = {"warnings": [], "timings": {}}

    def timed(key: str, start: float) -> None:
        info["timings"][key] = time.perf_counter() - start

    start = time.perf_counter()
    write_poses(directory / "poses.txt", list(frames.names), rec.c2w)
    write_intrinsics(
        directory / "intrinsics.json", rec.K_at(H, W), W, H, "flowmap estimate (pixels of the input frames)"
    )
    (directory / "depth").mkdir()
    for name, depth in zip(frames.names, rec.depth):
        np.save(directory / "depth" / f"{Path(name).stem}.npy", np.asarray(depth, dtype=np.float32))
    timed("write_cameras_depth_s", start)

    if cfg.ply:
        start = time.perf_counter()
        xyz, rgb = depth_point_cloud(rec, cfg.max_points, cfg.min_weight, cfg.depth_tol, cfg.seed)
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

    if cfg.transforms:
        start = time.perf_counter()
        path = write_transforms(
            rec, frames, directory, image_dir=image_dir, ply_file_path="points.ply" if cfg.ply else None
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
    info["depth_resolution"] = [h, w]
    return info


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
    h, w = rec.working_size
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
