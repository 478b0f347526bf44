"""The one orchestration of a flowmap run: ``run(source, out, config) -> RunResult``.

Stages, in order, each a typed value in and out (see :mod:`flowmap.types`)::

    validate   every option and path (flowmap.validate), before any work
    frames     video / image folder -> Frames (flowmap.frames)
    memory     refuse a run that would not fit (flowmap.memory)
    correspondences   Frames -> Correspondences, cached in OUT.cache/ (flowmap.correspondences)
    checks     degenerate-content warnings (flowmap.checks)
    optimize   fit the model to the correspondences (flowmap.optimize)
    solve      the model on all frames -> Solution (flowmap.solve)
    refine     global refinement on COLMAP: SIFT matches on a pose-guided pair graph,
               triangulation, bundle adjustment in rounds, depth made consistent
               (flowmap.refine; skipped with ``config.refine = None``)
    outputs    Reconstruction -> files in OUT (flowmap.outputs), when OUT is given

Every stage's wall time is measured where it runs (``timings``: ``frames_s``,
``correspondences_s`` with ``flow_s`` / ``tracks_s`` / ``bridges_s`` inside,
``optimization_s`` with ``optimize_loop_s`` and ``final_solve_s`` inside, ``refine_s``, ``time_s``
up to the outputs, then ``outputs_s`` and ``total_s``). ``flowmap run``, ``flowmap demo``,
``flowmap bench`` and :func:`flowmap.reconstruct` all call :func:`run`.

Cache lifecycle (with OUT): correspondences and checkpoints live in ``OUT.cache/`` beside
OUT. Without ``resume`` an old cache is removed first; a user error removes the cache
(nothing is left behind), an interruption keeps it (``--resume`` continues); a complete
run removes it after the outputs are written.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from flowmap import checks
from flowmap.camera import K_at
from flowmap.config import RunConfig  # flowmap.pipeline.RunConfig keeps working (it lived here)
from flowmap.correspondences.cache import load_or_compute
from flowmap.correspondences.flow import resolve_scale
from flowmap.errors import DegenerateInputError, FlowmapError
from flowmap.finetune import FinetuneResult, finetune_depth
from flowmap.frames import load_frames
from flowmap.io import lock_out
from flowmap.memory import check_run_memory
from flowmap.model.flowmap import VideoTensors
from flowmap.optimize import fit
from flowmap.outputs import write_outputs
from flowmap.pretrained import Pretrained
from flowmap.refine import RefineConfig, Refinement, refine
from flowmap.refine.depth import fit_scales
from flowmap.resolution import resize_images, working_shape
from flowmap.solve import solve
from flowmap.types import Frames, Reconstruction, Solution
from flowmap.validate import validate_run


@dataclass
class RunResult:
    """What a run produced.

    Attributes:
        reconstruction: cameras, depth, weights, losses, history, timings, warnings.
        frames: the decoded input frames (input resolution).
        out: the output folder, None when nothing was written.
        timings: seconds per stage, measured (``reconstruction.timings`` plus
            ``outputs_s`` and ``total_s`` when written).
        warnings: the run's warnings and the output stage's.
    """

    reconstruction: Reconstruction
    frames: Frames
    out: Path | None
    timings: dict[str, float]
    warnings: list[str]


def cache_dir_for(out: Path) -> Path:
    """The cache folder of a run writing to ``out``: ``OUT.cache`` beside it."""
    return out.parent / f"{out.name}.cache"


def run(source: str | Path | Frames, out: Path | None = None, config: RunConfig | None = None, summary: dict | None = None) -> RunResult:
    """Reconstruct cameras, intrinsics and depth from a video, image folder or decoded frames.

    Args:
        source: a video file, a folder of images, or already decoded :class:`Frames`.
        out: the output folder (written atomically); None: nothing is written and
            nothing is cached.
        config: run settings (default :class:`RunConfig`).
        summary: extra entries for ``summary.json`` (e.g. the command line).

    Returns:
        :class:`RunResult`.

    Raises:
        InputError: an option or path is invalid, the source cannot be read, or the run
            would need more memory than is available.
        OutputError: the outputs, cache or lock cannot be written (disk full, permissions).
        DegenerateInputError: the frames are (nearly) identical, or a few photos that
            neither the flow nor the verified matches tie together (no frame posed).
        NumericalError: the optimisation diverged or produced invalid cameras.
    """
    config = with_flow_scale(config or RunConfig())
    out = None if out is None else Path(out)
    path = None if isinstance(source, Frames) else Path(source)
    device, init = validate_run(path, out, config, overwrite=config.overwrite)
    if config.threads is None:
        config = replace(config, threads=_default_threads())
    if config.refine is not None:
        config = replace(config, refine=replace(config.refine, num_threads=config.threads))
    with contextlib.nullcontext() if out is None else lock_out(out), cpu_threads(config.threads):
        return _run_locked(source, out, config, device, init, summary)


def with_flow_scale(config: RunConfig) -> RunConfig:
    """``config`` with its flow scale resolved (:func:`flowmap.correspondences.flow.resolve_scale`:
    the working resolution when the refinement runs, METHOD.md's 2x without it), so that
    the cache key and ``summary.json`` hold the scale used."""
    flow = config.correspondences.flow
    flow = replace(flow, scale=resolve_scale(flow.scale, config.refine is not None))
    return replace(config, correspondences=replace(config.correspondences, flow=flow))


def _default_threads() -> int:
    """Threads of a run without ``--threads``: the cores other processes leave free,
    at most torch's default (:func:`flowmap.cores.auto_threads`)."""
    import torch

    from flowmap.cores import auto_threads

    return auto_threads(torch.get_num_threads())


@contextlib.contextmanager
def cpu_threads(threads: int | None):
    """torch's intra-op threads and OpenCV's worker threads set to ``threads`` for the
    block, restored after (None: unchanged)."""
    if threads is None:
        yield
        return
    import cv2
    import torch

    before = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


def _run_locked(
    source, out: Path | None, config: RunConfig, device: str, init: Pretrained | None, summary: dict | None
) -> RunResult:
    """:func:`run` once its options are valid and OUT (if any) is locked."""
    cache = None if out is None else cache_dir_for(out)
    if cache is not None and cache.exists() and not config.resume:
        shutil.rmtree(cache)
    t_start = time.perf_counter()
    try:
        frames, rec = _reconstruct(source, config, device, init, cache)
    except FlowmapError:
        if cache is not None and not config.resume:  # a user error leaves nothing behind; an interrupted run keeps its cache
            shutil.rmtree(cache, ignore_errors=True)
        raise
    rec.timings["time_s"] = time.perf_counter() - t_start
    timings, warnings = dict(rec.timings), list(rec.warnings)
    if out is not None:
        t0 = time.perf_counter()
        _write(rec, frames, out, config, {"source": str(frames.source), **(summary or {})}, warnings)
        timings["outputs_s"] = time.perf_counter() - t0
        shutil.rmtree(cache, ignore_errors=True)
    timings["total_s"] = time.perf_counter() - t_start
    return RunResult(rec, frames, out, timings, warnings)


def _reconstruct(
    source: str | Path | Frames, config: RunConfig, device: str, init: Pretrained | None, cache: Path | None
) -> tuple[Frames, Reconstruction]:
    """The stages from the frames to the Reconstruction (timings measured per stage);
    ``init``: the networks' starting weights, resolved by :func:`validate_run`."""
    timings: dict[str, float] = {}
    warnings: list[str] = []

    t0 = time.perf_counter()
    frames = source if isinstance(source, Frames) else load_frames(Path(source), config.frames)
    timings["frames_s"] = time.perf_counter() - t0
    if config.memory.check:
        check_run_memory(frames, config, device)
    shape = working_shape(frames.height, frames.width, config.frames.pixel_budget, config.frames.multiple)
    t0 = time.perf_counter()
    corr = load_or_compute(
        cache, frames.images, shape, config.correspondences, progress=config.progress, timings=timings, warnings=warnings
    )
    timings["correspondences_s"] = time.perf_counter() - t0
    working = resize_images(frames.images, shape)  # the one resize to the working resolution
    warnings += checks.motion_warnings(corr, frames.names, config.checks, working)  # raises for identical frames
    warnings += checks.valid_flow_warnings(corr, frames.names, config.checks)
    warnings += checks.texture_warnings(working, frames.names, config.checks)

    t0 = time.perf_counter()
    image_size = (frames.height, frames.width)
    data = VideoTensors.from_numpy(working, corr, device)
    fitted = fit(
        data,
        config.optim,
        image_size,
        focal_px=config.focal,
        seed=config.seed,
        checkpoint_dir=cache,
        progress=config.progress,
        init=init,
    )
    timings["optimize_loop_s"] = fitted.loop_s
    t1 = time.perf_counter()
    solution = solve(fitted.model, data, fitted.focal_px, corr.bridges, config.optim.objective.huber_delta)
    timings["final_solve_s"] = time.perf_counter() - t1
    timings["optimization_s"] = time.perf_counter() - t0
    warnings += fitted.warnings
    if config.focal is None:
        focal = float((solution.K[0, 0] + solution.K[1, 1]) / 2)
        warnings += checks.focal_warnings(focal, image_size, config.optim.focal, config.checks)
    refined = None
    if config.refine is not None:
        t0 = time.perf_counter()
        work_dir = None if cache is None else cache / "refine"  # a killed run leaves it where cleanup and --resume see it
        refined = _refine(frames, solution, config.refine, config.progress, warnings, work_dir)
        timings["refine_s"] = time.perf_counter() - t0
        if refined is not None and refined.registered is not None and not refined.registered.any():
            raise DegenerateInputError(
                f"none of the {frames.n} frames could be posed: the verified matches between them do not register them and "
                "they contradict FlowMap's cameras (COLMAP fails on such inputs too); give photos with more overlap, or more of them"
            )
    depth = solution.depth
    if refined is not None:
        depth = refined.depth if refined.depth is not None else solution.depth * refined.depth_scale[:, None, None]
    finetuned = None
    if refined is not None and refined.applied and config.finetune.steps > 0:
        t0 = time.perf_counter()
        finetuned = finetune_depth(
            fitted.model, data, refined.c2w, refined.K, refined.points_xyz, config.finetune, config.progress,
            depth_before=depth, observed=refined.observed,
        )
        depth = finetuned.depth
        timings["finetune_s"] = time.perf_counter() - t0
    settings = {**config.to_dict(), "device_resolved": device, "working_size": list(shape)}
    return frames, _as_reconstruction(
        solution, refined, finetuned, depth, frames, working, fitted.history, timings, settings, warnings
    )


def _refine(
    frames: Frames, solution: Solution, config: RefineConfig, progress: bool, warnings: list[str], work_dir: Path | None = None
) -> Refinement | None:
    """The refinement stage on the input frames (COLMAP's working folder at ``work_dir``,
    None: the system's temporary directory); None (FlowMap's cameras kept, with a
    warning) where COLMAP itself fails on this input."""
    try:
        refined = refine(frames.images, solution.c2w, solution.K, solution.depth, config, progress=progress, work_dir=work_dir)
    except (RuntimeError, ValueError) as exc:
        warnings.append(f"the global refinement failed ({exc}); FlowMap's cameras are kept")
        return None
    warnings += refined.warnings
    return refined


def depth_agreement(refined: Refinement, depth: np.ndarray, image_size: tuple[int, int]) -> float:
    """Median |d - z| / z between the written depth maps (N, h, w) and the adjusted points
    each frame observes (issue 10's measure; :func:`flowmap.refine.depth.fit_scales`)."""
    K_work = K_at(refined.K, tuple(image_size), depth.shape[1:])
    return fit_scales(np.asarray(depth), refined.c2w, K_work, refined.points_seen())[1]


def _as_reconstruction(
    solution: Solution,
    refined: Refinement | None,
    finetuned: FinetuneResult | None,
    depth: np.ndarray,
    frames: Frames,
    working,
    history: list,
    timings: dict,
    settings: dict,
    warnings: list[str],
) -> Reconstruction:
    """The run's result: the refined cameras where a refinement ran, FlowMap's otherwise;
    ``depth`` (N, h, w) is the last depth stage's (solve, refine or fine-tuning)."""
    c2w, K, refinement = solution.c2w, solution.K, {}
    if refined is not None:
        c2w, K = refined.c2w, refined.K
        refinement = {"applied": bool(refined.applied), **refined.stats}
        if finetuned is not None:
            refinement["finetune"] = finetuned.stats
        if refined.applied:
            refinement["depth_agreement"] = depth_agreement(refined, depth, solution.image_size)
    return Reconstruction(
        c2w=c2w,
        K=K,
        depth=np.asarray(depth, dtype=np.float32),
        weights=solution.weights,
        names=list(frames.names),
        image_size=solution.image_size,
        images=working,
        losses=dict(solution.losses),
        history=history,
        timings=timings,
        settings=settings,
        warnings=warnings,
        flowmap_c2w=None if refined is None else solution.c2w,
        flowmap_K=None if refined is None else solution.K,
        refinement=refinement,
        registered=None if refined is None else refined.registered,
    )


def _write(rec: Reconstruction, frames: Frames, out: Path, config: RunConfig, summary: dict, warnings: list[str]) -> None:
    """The output stage; a failed write (disk full, permissions) is one line, :class:`flowmap.errors.OutputError`
    (no partial OUT is left; OUT.cache is kept for ``--resume``)."""
    write_outputs(rec, frames, out, config.outputs, summary=summary, overwrite=config.overwrite, warnings=warnings)


def reconstruct(source: str | Path | Frames, config: RunConfig | None = None) -> Reconstruction:
    """Camera poses, intrinsics and depth for a video, image folder or decoded frames (nothing written).

    Returns:
        A :class:`Reconstruction`: c2w (N, 4, 4) OpenCV axes with frame 0 = identity,
        K (3, 3) in pixels of the input frames, depth (N, h, w) at the working
        resolution, correspondence weights, losses, timings and warnings (see
        :mod:`flowmap.checks`).

    Raises:
        See :func:`run`.
    """
    return run(source, None, config).reconstruction
