"""Public Python API: ``reconstruct(source) -> Reconstruction``.

Runs the whole pipeline of METHOD.md: frames -> correspondences -> optimisation of the
depth network (poses by Procrustes, focal by softmin) -> final solve over all frames.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flowmap import checks
from flowmap.correspondences.cache import load_or_compute
from flowmap.correspondences.flow import FlowConfig, flow_shape
from flowmap.correspondences.tracks import TrackConfig
from flowmap.errors import InputError
from flowmap.frames import FrameConfig, load_frames, resize_images, working_shape
from flowmap.optimize import OptimConfig, optimize
from flowmap.types import Frames, Reconstruction


@dataclass
class RunConfig:
    """Everything a run depends on; defaults are METHOD.md's unless the README says why.

    Attributes:
        frames: frame selection and working resolution.
        flow: optical-flow backend and validity masks.
        tracks: point tracks.
        optim: model, objective and optimisation schedule.
        focal: known focal length in pixels of the input frames (skips the search).
        device: "auto" (CUDA when available), "cpu" or "cuda".
        seed: random seed of the network initialisation and the sampling.
        cache_dir: where correspondences and checkpoints are cached (None: no cache).
        progress: show progress bars on stderr.
        checks: thresholds of the degenerate-input warnings and the memory check.
    """

    frames: FrameConfig = field(default_factory=FrameConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    tracks: TrackConfig = field(default_factory=TrackConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    focal: float | None = None
    device: str = "auto"
    seed: int = 0
    cache_dir: Path | None = None
    progress: bool = True
    checks: checks.CheckConfig = field(default_factory=checks.CheckConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cache_dir"] = str(self.cache_dir) if self.cache_dir else None
        return d


def resolve_device(name: str) -> str:
    """Map "auto" | "cpu" | "cuda" to a torch device string.

    Raises:
        InputError: "cuda" asked for but not available, or an unknown name.
    """
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is visible to torch; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise InputError(f"unknown device {name!r}; use auto, cpu or cuda")
    return name


def check_run_memory(frames: Frames, shape: tuple[int, int], config: RunConfig, device: str) -> None:
    """Refuse a run whose predicted peak memory exceeds what is available (see :mod:`flowmap.checks`).

    On CPU the correspondences and the optimisation are checked against the system
    memory; on CUDA only the correspondences (the optimisation's GPU memory is not
    modelled).

    Raises:
        InputError: the estimate (x ``config.checks.memory_margin``) exceeds the
            available memory; the message suggests ``--max-frames`` / ``--pixel-budget``.
    """
    H, W = frames.height, frames.width
    tracks = config.tracks

    def estimate_for(n: int, budget: int) -> checks.MemoryEstimate:
        s = working_shape(H, W, budget, config.frames.multiple)
        m = checks.n_tracks(n, tracks.query_every, tracks.grid, tracks.enabled)
        est = checks.estimate_memory(n, s, config.optim.window, m, flow_shape(s, (H, W), config.flow.scale))
        return est if device == "cpu" else checks.MemoryEstimate(est.correspondences, est.correspondences_peak, 0.0)

    checks.check_memory(
        estimate_for(frames.n, config.frames.pixel_budget),
        frames.n,
        shape,
        config.frames.pixel_budget,
        estimate_for,
        margin=config.checks.memory_margin,
    )


def reconstruct(source: str | Path | Frames, config: RunConfig | None = None) -> Reconstruction:
    """Camera poses, intrinsics and depth for a video, image folder or decoded frames.

    Args:
        source: a video file, a folder of images, or already decoded :class:`Frames`.
        config: run settings (defaults: :class:`RunConfig`).

    Returns:
        A :class:`Reconstruction`: c2w (N, 4, 4) OpenCV axes with frame 0 = identity,
        K (3, 3) in pixels of the input frames, depth (N, h, w) at the working
        resolution, correspondence weights, losses, timings and warnings.

    Warnings (``Reconstruction.warnings``, see :mod:`flowmap.checks`): a static
    camera, pairs with almost no valid flow, dark or uniform frames, an estimated focal
    length at the edge of the candidate range.

    Raises:
        InputError: the source cannot be read, an option is invalid, or the run would
            need more memory than is available.
        DegenerateInputError: the frames are (nearly) identical.
    """
    config = config or RunConfig()
    checks.check_focal(config.focal)
    device = resolve_device(config.device)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    frames = source if isinstance(source, Frames) else load_frames(Path(source), config.frames)
    timings["frames_s"] = time.perf_counter() - t0
    shape = working_shape(frames.height, frames.width, config.frames.pixel_budget, config.frames.multiple)
    if config.checks.memory:
        check_run_memory(frames, shape, config, device)

    t0 = time.perf_counter()
    corr = load_or_compute(
        config.cache_dir, frames.images, shape, config.flow, config.tracks, progress=config.progress, timings=timings
    )
    timings["correspondences_s"] = time.perf_counter() - t0
    working = resize_images(frames.images, shape)
    warnings = checks.motion_warnings(corr, frames.names, config.checks, working)  # raises for identical frames
    warnings += checks.valid_flow_warnings(corr, frames.names, config.checks)
    warnings += checks.texture_warnings(working, frames.names, config.checks)
    del working

    t0 = time.perf_counter()
    rec = optimize(
        frames,
        corr,
        config.optim,
        focal_px=config.focal,
        device=device,
        seed=config.seed,
        checkpoint_dir=config.cache_dir,
        progress=config.progress,
    )
    timings["optimization_s"] = time.perf_counter() - t0
    if config.focal is None:
        focal = float((rec.K[0, 0] + rec.K[1, 1]) / 2)
        warnings += checks.focal_warnings(focal, (frames.height, frames.width), config.optim.focal, config.checks)
    timings.update(rec.timings)
    settings = config.to_dict()
    settings["device_resolved"] = device
    settings["working_size"] = list(shape)
    return Reconstruction(
        c2w=rec.c2w,
        K=rec.K,
        depth=rec.depth,
        weights=rec.weights,
        names=frames.names,
        image_size=(frames.height, frames.width),
        images=rec.images,
        losses=rec.losses,
        history=rec.history,
        timings=timings,
        settings=settings,
        warnings=warnings + list(rec.warnings),
    )
