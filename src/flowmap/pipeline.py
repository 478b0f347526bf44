"""The one orchestration of a flowmap run: ``run(source, out, config) -> RunResult``.

Stages, in order, each a typed value in and out (see :mod:`flowmap.types`)::

    validate   every option and path (flowmap.validate), before any work
    keyframes  a cheap pass over every frame chooses the keyframes from the motion
               (flowmap.frames.scan_frames, flowmap.keyframes; skipped when every
               frame is a keyframe)
    frames     video / image folder -> Frames of the keyframes (flowmap.frames)
    memory     refuse a run that would not fit (flowmap.memory)
    correspondences   Frames -> Correspondences, cached in OUT.cache/ (flowmap.correspondences)
    checks     degenerate-content warnings (flowmap.checks)
    optimize   fit the model to the correspondences (flowmap.optimize)
    solve      the model on all frames -> Solution (flowmap.solve)
    refine     global refinement on COLMAP: SIFT matches on a pose-guided pair graph,
               triangulation, bundle adjustment in rounds, depth made consistent
               (flowmap.refine; skipped with ``config.refine = None``)
    register   the frames that were not keyframes, posed against the refined
               keyframes (flowmap.register)
    dense      with ``config.dense.enabled`` (``--depth-scale``; off by default):
               multi-view depth of the keyframes with the final cameras held fixed,
               confidence, fused points (flowmap.dense; after an applied refinement)
    outputs    Reconstruction -> files in OUT (flowmap.outputs), when OUT is given

Every stage's wall time is measured where it runs (``timings``: ``keyframes_s`` (the
scan), ``frames_s``,
``correspondences_s`` with ``flow_s`` / ``tracks_s`` / ``bridges_s`` inside,
``optimization_s`` with ``optimize_loop_s`` and ``final_solve_s`` inside, ``refine_s``,
``register_s``, ``dense_s`` with ``dense_s_per_frame``, ``time_s``
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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from flowmap import checks
from flowmap.camera import K_at
from flowmap.config import RunConfig  # flowmap.pipeline.RunConfig keeps working (it lived here)
from flowmap.cores import lower_this_thread
from flowmap.correspondences.cache import load_or_compute
from flowmap.correspondences.flow import resolve_scale
from flowmap.dense import dense_depth
from flowmap.dense.surface import OPEN3D_HINT
from flowmap.errors import DegenerateInputError, FlowmapError
from flowmap.finetune import FinetuneResult, finetune_depth
from flowmap.frames import count_frames, iter_frames, load_frames, scan_frames
from flowmap.io import lock_out
from flowmap.keyframes import target_count
from flowmap.memory import check_run_memory
from flowmap.model.flowmap import VideoTensors
from flowmap.optimize import fit
from flowmap.outputs import write_outputs
from flowmap.outputs.colmap import write_frame_stream
from flowmap.pretrained import Pretrained
from flowmap.refine import RefineConfig, Refinement, refine
from flowmap.refine.depth import fit_scales
from flowmap.register import Tracks, register_frames, track_frames
from flowmap.resolution import resize_images, working_shape
from flowmap.solve import solve
from flowmap.types import Frames, FrameScan, NonKeyframes, Reconstruction, Solution
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
        frames, rec, scan = _reconstruct(source, config, device, init, cache)
    except FlowmapError:
        if cache is not None and not config.resume:  # a user error leaves nothing behind; an interrupted run keeps its cache
            shutil.rmtree(cache, ignore_errors=True)
        raise
    rec.timings["time_s"] = time.perf_counter() - t_start
    timings, warnings = dict(rec.timings), list(rec.warnings)
    if out is not None:
        t0 = time.perf_counter()
        _write(
            rec, frames, out, config, {"source": str(frames.source), **(summary or {})}, warnings, _frame_reader(source, config, scan),
            _stage_dir(cache, config),
        )
        timings["outputs_s"] = time.perf_counter() - t0
        shutil.rmtree(cache, ignore_errors=True)
    timings["total_s"] = time.perf_counter() - t_start
    return RunResult(rec, frames, out, timings, warnings)


def load_keyframes(source: str | Path | Frames, config: RunConfig, timings: dict[str, float]) -> tuple[Frames, FrameScan | None]:
    """The keyframes' :class:`Frames` (input resolution) and the scan that chose them.

    Where :func:`flowmap.keyframes.target_count` keeps every frame (``--keyframes all``,
    or a count of at least the input's frames, counted from the folder or the video's
    header), nothing is scanned: the frames are loaded as before issue 25 and the scan
    is None. Otherwise ("auto", whatever the length) every selected frame is decoded
    once at the working resolution (:func:`flowmap.frames.scan_frames`), then only the
    keyframes at full resolution; where the motion keeps every frame the scan is None
    too. ``timings`` receives ``keyframes_s`` and ``frames_s``.
    """
    t0 = time.perf_counter()
    total = source.n if isinstance(source, Frames) else count_frames(Path(source), config.frames)
    scan = None
    if total is None or target_count(config.keyframes, total) is not None:
        # no bar without a count: a source that is not a video FFmpeg can count fails with one line
        scan = scan_frames(source, config.frames, config.keyframes, config.progress and total is not None, total)
        if len(scan.keys) == scan.n:
            scan = None
    timings["keyframes_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    wanted = None if scan is None else scan.keys.tolist()
    if isinstance(source, Frames):
        frames = source if wanted is None else source.subset(np.asarray(wanted))
    else:
        frames = load_frames(Path(source), config.frames, wanted)
    timings["frames_s"] = time.perf_counter() - t0
    return frames, scan


def _frame_reader(source: str | Path | Frames, config: RunConfig, scan: FrameScan | None, progress: bool | None = None):
    """A function reading the selected frames at given positions one at a time, as
    single-frame :class:`Frames` (the images of the frames that were not keyframes,
    for the outputs); None without a scan. ``progress``: show a bar (None:
    ``config.progress``)."""
    progress = config.progress if progress is None else progress
    if scan is None:
        return None

    def frames_at(positions: list[int]):
        if isinstance(source, Frames):
            for k in positions:
                yield source.subset(np.asarray([k]))
            return
        for _, name, index, image in iter_frames(Path(source), config.frames, positions):
            yield Frames(images=image[None], names=[name], source=Path(source), source_indices=[index])

    def read(positions: list[int]):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(positions), desc="writing other frames", unit="frame", disable=not progress, leave=False)
        with bar:
            for frame in frames_at(positions):
                yield frame
                bar.update()

    return read


def _register(
    scan: FrameScan, c2w: np.ndarray, K: np.ndarray, depth: np.ndarray, registered: np.ndarray | None,
    image_size: tuple[int, int], config: RunConfig, warnings: list[str], tracked: tuple[np.ndarray, Tracks] | None = None,
) -> NonKeyframes:
    """Pose the frames of ``scan`` that are not keyframes (:func:`flowmap.register.register_frames`)
    with the keyframes' final cameras (c2w (N, 4, 4), K in pixels of the input frames)
    and depth (N, h, w); a warning counts those that could not be registered.
    ``tracked``: (the grayscale frames, their tracks) from :func:`_beside_refinement`,
    used when the frames have the depth maps' size."""
    posed = np.ones(len(c2w), bool) if registered is None else np.asarray(registered, bool)
    K_work = K_at(K, image_size, depth.shape[1:])
    tracks = None
    if tracked is not None and tracked[0].shape[1:] == depth.shape[1:]:
        gray, tracks = tracked
    else:
        gray = _working_gray(scan, depth.shape[1:])
    others = register_frames(
        gray, scan.keys, c2w, K_work, depth, posed, scan.names, scan.source_indices, config.register, config.progress, tracks
    )
    missing = others.n - int(others.registered.sum())
    if missing:
        warnings.append(
            f"{missing} of the {others.n} frames that were not keyframes could not be registered (too few RANSAC inliers); "
            "they are left out of the outputs and listed in summary.json (try more --keyframes)"
        )
    return others


def _working_gray(scan: FrameScan, shape: tuple[int, int]) -> np.ndarray:
    """The scan's grayscale frames (M, h, w) at ``shape`` (h, w)."""
    return scan.gray if scan.gray.shape[1:] == tuple(shape) else resize_images(scan.gray, tuple(shape))


@contextlib.contextmanager
def _beside_refinement(source, scan: FrameScan | None, shape: tuple[int, int], config: RunConfig, stage: Path | None):
    """Inside the block, the work on the frames that are not keyframes that needs no
    camera runs on one thread beside the main one: first the registration's
    Lucas-Kanade tracks (:func:`flowmap.register.track_frames`, frames at ``shape``),
    then, with a ``stage`` folder, their images encoded for the outputs
    (:func:`flowmap.outputs.colmap.write_frame_stream` into ``stage``; the output stage
    moves them in, :func:`flowmap.outputs.colmap.write_other_images`). Yields a function
    that waits for the tracks and returns (grayscale frames, tracks), or None when there
    is nothing to track (no scan, or the "dis" method).

    The refinement leaves a core idle for about a third of its time (COLMAP's global
    positioning runs on one), so the thread runs at nice 10
    (:func:`flowmap.cores.lower_this_thread`) and mostly takes that idle core.
    room-walkin (100 keyframes, 991 other frames; three runs each, alternating):
    registration after the refinement 4.2-4.3 -> 1.3-1.4 s, the run 42.5-43.4 ->
    38.1-42.0 s. Started before FlowMap's descent instead, the tracking slowed the
    descent by 2.5 s (torch's two threads wait for each other at every parallel
    region). Leaving the block stops the thread at its next frame; images it did not
    reach are encoded by the output stage as before.
    """
    if scan is None:
        yield lambda: None
        return
    track = config.register.method == "lk"
    gray = _working_gray(scan, shape) if track else None
    others = np.setdiff1d(np.arange(scan.n), scan.keys).tolist()
    if stage is not None:  # a killed run's half-written files must never be moved in
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
    cancel = threading.Event()
    read = _frame_reader(source, config, scan, progress=False)

    def until_cancelled(frames):
        for frame in frames:
            if cancel.is_set():
                return
            yield frame

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="flowmap-beside") as pool:
        tracks = pool.submit(_in_idle_time, track_frames, gray, scan.keys, config.register, cancel) if track else None
        if stage is not None and others:
            pool.submit(_in_idle_time, write_frame_stream, until_cancelled(read(others)), stage, config.outputs.jpeg_quality)
        try:
            yield (lambda: (gray, tracks.result())) if track else (lambda: None)
        finally:
            cancel.set()  # no effect once finished; otherwise the thread stops at its next frame


def _stage_dir(cache: Path | None, config: RunConfig) -> Path | None:
    """Where the other frames' images are encoded ahead of the outputs
    (``OUT.cache/frames``); None when no output will need them."""
    outputs = config.outputs
    if cache is None or outputs.keyframes_only or not (outputs.colmap or outputs.transforms):
        return None
    return cache / "frames"


def _in_idle_time(fn, *args):
    """``fn(*args)`` on this thread at nice 10 (:func:`flowmap.cores.lower_this_thread`)."""
    lower_this_thread(10)
    return fn(*args)


def _reconstruct(
    source: str | Path | Frames, config: RunConfig, device: str, init: Pretrained | None, cache: Path | None
) -> tuple[Frames, Reconstruction, FrameScan | None]:
    """The stages from the frames to the Reconstruction (timings measured per stage);
    ``init``: the networks' starting weights, resolved by :func:`validate_run`. Also
    returns the keyframe scan (None when every frame is a keyframe)."""
    timings: dict[str, float] = {}
    warnings: list[str] = []

    frames, scan = load_keyframes(source, config, timings)
    if config.memory.check:
        check_run_memory(frames, config, device)
    shape = working_shape(frames.height, frames.width, config.frames.pixel_budget, config.frames.multiple)
    fitted, data, working, solution = _flowmap(frames, shape, config, device, init, cache, timings, warnings)
    with _beside_refinement(source, scan, solution.depth.shape[1:], config, _stage_dir(cache, config)) as tracked:
        rec, refined, depth = _refined(frames, solution, fitted, data, working, shape, device, config, cache, timings, warnings)
        if scan is not None:
            t0 = time.perf_counter()
            others = _register(scan, rec.c2w, rec.K, rec.depth, rec.registered, rec.image_size, config, warnings, tracked())
            timings["register_s"] = time.perf_counter() - t0
            rec = replace(rec, others=others)
    if refined is not None and refined.applied and config.dense.enabled:
        rec = _dense(rec, frames, np.asarray(depth), refined, config, timings)
    return frames, rec, scan


def _flowmap(frames: Frames, shape: tuple[int, int], config: RunConfig, device: str, init, cache, timings: dict, warnings: list[str]):
    """FlowMap on the keyframes at the working ``shape``: correspondences, the descent and
    the final solve; returns (the fitted model and focal, the video tensors, the working
    frames (N, h, w, 3), the :class:`Solution`)."""
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
    return fitted, data, working, solution


def _refined(frames, solution, fitted, data, working, shape, device, config: RunConfig, cache, timings: dict, warnings: list[str]):
    """The stages after FlowMap's solve: the refinement and the depth fine-tuning, then
    the :class:`Reconstruction` of the keyframes; returns it, the refinement (or None)
    and the final depth (N, h, w)."""
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
    rec = _as_reconstruction(
        solution, refined, finetuned, depth, frames, working, fitted.history, timings,
        {**config.to_dict(), "device_resolved": device, "working_size": list(shape)}, warnings,
    )
    return rec, refined, depth


def _dense(rec: Reconstruction, frames: Frames, depth: np.ndarray, refined: Refinement, config: RunConfig, timings: dict) -> Reconstruction:
    """The dense depth stage (:func:`flowmap.dense.dense_depth`) with the final cameras
    held fixed; ``timings`` receives ``dense_s`` and ``dense_s_per_frame``, the
    refinement statistics the dense maps' agreement with the adjusted points."""
    t0 = time.perf_counter()
    dense = dense_depth(
        frames.images, rec.c2w, rec.K, depth, refined.points_seen(), config.dense, rec.registered, config.progress
    )
    timings["dense_s"] = time.perf_counter() - t0
    timings["dense_s_per_frame"] = timings["dense_s"] / max(rec.n, 1)
    refinement = {**rec.refinement, "dense": dense.stats, "depth_agreement_network": rec.refinement.get("depth_agreement")}
    refinement["depth_agreement"] = depth_agreement(refined, dense.depth, rec.image_size)
    warnings = list(rec.warnings)
    if OPEN3D_HINT in str(dense.stats.get("surface", {}).get("skipped", "")):
        warnings.append(f"dense depth without its surface fill: {OPEN3D_HINT}")
    return replace(rec, dense=dense, refinement=refinement, warnings=warnings)


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
        keyframes=[int(i) for i in frames.source_indices],
    )


def _write(
    rec: Reconstruction, frames: Frames, out: Path, config: RunConfig, summary: dict, warnings: list[str], read_others=None,
    staged: Path | None = None,
) -> None:
    """The output stage; a failed write (disk full, permissions) is one line, :class:`flowmap.errors.OutputError`
    (no partial OUT is left; OUT.cache is kept for ``--resume``). ``read_others``, ``staged``: see
    :func:`flowmap.outputs.write_outputs`."""
    write_outputs(
        rec, frames, out, config.outputs, summary=summary, overwrite=config.overwrite, warnings=warnings, read_others=read_others,
        staged=staged,
    )


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
