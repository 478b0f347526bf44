"""Memory model: refuse a run before any work when it would not fit in memory.

The peak resident memory of a run is predicted from frames x working pixels
(:func:`estimate_memory`, coefficients of :class:`MemoryModel` measured on CPU) and
compared with the memory available (``/proc/meminfo`` MemAvailable, capped by a cgroup
limit), so that a run too large is refused with a suggested ``--max-frames`` /
``--pixel-budget`` instead of being killed by the out-of-memory killer
(:func:`check_memory`, :func:`check_run_memory`). Decoding alone is checked by
:func:`check_frames_memory` before the frames are read.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from flowmap.config import MemoryConfig, RunConfig  # noqa: F401  (MemoryConfig re-exported: it lived here)
from flowmap.correspondences.flow import flow_shape
from flowmap.errors import InputError
from flowmap.resolution import working_shape
from flowmap.types import Frames


@dataclass(frozen=True)
class MemoryModel:
    """Peak resident memory of :func:`flowmap.optimize.optimize` beyond its inputs, in bytes.

    ``base + P * (per_chunk_px * min(N, chunk + 1) + per_frame_px * N + per_window_px * window)``
    with P = h * w working pixels, N frames and ``window`` frames per step. The windowed
    steps keep the network's activations of ``window`` frames for the backward pass;
    the final solve holds depth and features of all N frames and the per-pixel pose
    samples of one chunk of ``chunk`` pairs (:func:`flowmap.solve.solve`'s, 4).

    Measured on CPU (torch 2.13, one thread, 3 steps, tracks as the default
    TrackConfig seeds them) as VmHWM - VmRSS around ``fit`` + ``solve`` (peak reset
    through ``/proc/self/clear_refs``) on 15 configurations: N in {10, 30, 60, 100} x
    h x w in {96 x 128, 176 x 240, 272 x 352} at window 10, windows 5 and 20 at N = 30,
    and N = 200 (2026-12-05, the solve's chunk 4; ``/work/runs/s30/mem_calib.py`` of that
    session); least squares gave base 193 MB and 122 / 63 / 347 bytes a pixel, predicting
    every measurement within -13 % / +17 %; the coefficients below are those times 1.12,
    so that the model errs on the safe side (-3 % / +31 %). With the solve's former chunk
    of 16 pairs the same runs peaked up to 0.5 GB higher (the solve's per-pixel samples of
    16 pairs at once). The tracks (up to 74k x 300) added nothing measurable beyond their
    storage, which :func:`estimate_memory` counts with the correspondences.
    """

    base: float = 2.16e8
    per_chunk_px: float = 137.0
    per_frame_px: float = 71.0
    per_window_px: float = 389.0
    chunk: int = 4

    def optimisation(self, n_frames: int, pixels: int, window: int) -> float:
        """Bytes the optimisation adds on top of the frames and correspondences."""
        window = n_frames if window <= 0 else min(window, n_frames)
        per_px = self.per_chunk_px * min(n_frames, self.chunk + 1) + self.per_frame_px * n_frames
        return self.base + pixels * (per_px + self.per_window_px * window)


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted memory of a run in bytes (beyond the decoded frames).

    Attributes:
        correspondences: flow, masks and tracks as stored (kept during optimisation).
        correspondences_peak: while computing them (results listed, then stacked).
        optimisation: what the optimisation adds on top of the correspondences.
        peak: the larger of the two phases.
    """

    correspondences: float
    correspondences_peak: float
    optimisation: float

    @property
    def peak(self) -> float:
        return max(self.correspondences_peak, self.correspondences + self.optimisation)


def n_tracks(n_frames: int, query_every: int = 5, grid: int = 35, enabled: bool = True) -> int:
    """Number of point tracks :func:`flowmap.correspondences.tracks.compute_tracks` seeds."""
    return math.ceil(n_frames / max(1, query_every)) * grid * grid if enabled else 0


def estimate_memory(
    n_frames: int,
    shape: tuple[int, int],
    window: int,
    tracks: int,
    flow_shape: tuple[int, int] | None = None,
    model: MemoryModel | None = None,
) -> MemoryEstimate:
    """Predict the memory a run needs beyond the decoded frames.

    Args:
        n_frames: N frames.
        shape: working resolution (h, w).
        window: frames per optimisation step (0: all).
        tracks: number of point tracks M (see :func:`n_tracks`).
        flow_shape: resolution at which flow and tracks are computed (default 2x shape per side).
        model: coefficients of the optimisation (default: the measured ones).

    Returns:
        :class:`MemoryEstimate` in bytes.
    """
    model = model or MemoryModel()
    h, w = shape
    P = h * w
    fh, fw = flow_shape or (2 * h, 2 * w)
    pairs = max(n_frames - 1, 0)
    flow = pairs * P * (2 + 2 + 1 + 1) * 4  # flow_fwd, flow_bwd (2 float32), masks (float32)
    track_bytes = tracks * n_frames * (2 * 4 + 1) + tracks * 8
    stored = flow + track_bytes
    # while computing: frames resized to the flow resolution, per-pair results listed
    # then stacked (2x the flow), tracks likewise
    computing = n_frames * fh * fw * 3 + 2 * stored
    return MemoryEstimate(
        correspondences=float(stored),
        correspondences_peak=float(computing),
        optimisation=float(model.optimisation(n_frames, P, window)),
    )


def _cgroup_available() -> float | None:
    """Bytes left under this process's cgroup memory limit (v2 or v1), None without a limit."""
    candidates = [
        (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),
        (Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"), Path("/sys/fs/cgroup/memory/memory.usage_in_bytes")),
    ]
    for limit_path, usage_path in candidates:
        try:
            limit = limit_path.read_text().strip()
            usage = int(usage_path.read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:
            return None
        return float(max(int(limit) - usage, 0))
    return None


def available_memory() -> float | None:
    """Bytes of memory this process can still use without swapping; None if unknown.

    Linux ``/proc/meminfo`` MemAvailable (the kernel's estimate, counting reclaimable
    caches), capped by a cgroup (container) limit; elsewhere
    ``os.sysconf("SC_AVPHYS_PAGES") * SC_PAGE_SIZE`` (free pages only).
    """
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = float(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            return None
    limit = _cgroup_available()
    return available if limit is None else min(available, limit)


def format_bytes(n: float) -> str:
    """``1.5 GB``-style (powers of 1000)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1e3:.0f} kB"


def check_frames_memory(n_frames: int, height: int, width: int, available: float | None = None) -> None:
    """Refuse to decode N frames of height x width RGB that would not fit in memory.

    Decoded frames stay in memory for the whole run (the COLMAP export writes them at
    full resolution), so they may take at most half of the available memory.

    Raises:
        InputError: ``n_frames * height * width * 3`` bytes exceed half of ``available``
            (default: :func:`available_memory`; unknown memory is not checked).
    """
    available = available_memory() if available is None else available
    need = float(n_frames) * height * width * 3
    if available is None or n_frames <= 0 or need <= available / 2:
        return
    fit = int(available / 2 // (height * width * 3))
    advice = (
        f"use --max-frames {fit} or --stride {math.ceil(n_frames / fit)}"
        if fit >= 3
        else "free memory, or use smaller frames or a machine with more memory"
    )
    raise InputError(
        f"decoding {n_frames} frames of {width}x{height} pixels needs {format_bytes(need)} but only "
        f"{format_bytes(available)} of memory is available; {advice}"
    )


def check_memory(
    estimate: MemoryEstimate,
    n_frames: int,
    shape: tuple[int, int],
    pixel_budget: int,
    estimate_for,
    available: float | None = None,
    margin: float = 1.15,
) -> None:
    """Refuse a run whose predicted peak memory exceeds the available memory.

    Args:
        estimate: the prediction for the run as configured.
        n_frames, shape, pixel_budget: the run's frames, working resolution (h, w) and
            pixel budget (for the message and the suggestions).
        estimate_for: ``f(n_frames, pixel_budget) -> MemoryEstimate`` used to find the
            most frames and the largest pixel budget that fit.
        available: bytes available (default: :func:`available_memory`; unknown memory
            is not checked).
        margin: the estimate is multiplied by this before the comparison.

    Raises:
        InputError: one line with the estimate, the available memory and the largest
            ``--max-frames`` and ``--pixel-budget`` that fit.
    """
    available = available_memory() if available is None else available
    if available is None or estimate.peak * margin <= available:
        return

    def fits(n: int, budget: int) -> bool:
        return estimate_for(n, budget).peak * margin <= available

    lo, hi = 2, n_frames  # most frames that fit: binary search (monotone in N)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid, pixel_budget) else (lo, mid - 1)
    options = []
    if lo >= 3:
        options.append(f"--max-frames {lo} (or --stride {math.ceil(n_frames / lo)})")
    budgets = [b for b in (32000, 24000, 16000, 12000, 8000, 6000, 4000) if b < pixel_budget]
    budget = next((b for b in budgets if fits(n_frames, b)), None)
    if budget is not None:
        options.append(f"--pixel-budget {budget}")
    advice = "use " + " or ".join(options) if options else "free memory or use a machine with more"
    h, w = shape
    raise InputError(
        f"not enough memory: {n_frames} frames at {w}x{h} working pixels need about {format_bytes(estimate.peak)} "
        f"but {format_bytes(available)} is available; {advice}"
    )


def check_run_memory(frames: Frames, config: RunConfig, device: str) -> None:
    """Refuse a run whose predicted peak memory exceeds what is available.

    On CPU the correspondences and the optimisation are checked against the system
    memory; on CUDA only the correspondences (the optimisation's GPU memory is not
    modelled).

    Args:
        frames: the decoded frames (N, H, W from them).
        config: the run's settings (working resolution, flow scale, tracks, window,
            ``config.memory``).
        device: the resolved torch device ("cpu" or "cuda").

    Raises:
        InputError: the estimate (x ``config.memory.margin``) exceeds the available
            memory; the message suggests ``--max-frames`` / ``--pixel-budget``.
    """
    H, W = frames.height, frames.width
    tracks = config.correspondences.tracks

    def estimate_for(n: int, budget: int) -> MemoryEstimate:
        s = working_shape(H, W, budget, config.frames.multiple)
        m = n_tracks(n, tracks.query_every, tracks.grid, tracks.enabled)
        est = estimate_memory(n, s, config.optim.window, m, flow_shape(s, (H, W), config.correspondences.flow.scale))
        return est if device == "cpu" else MemoryEstimate(est.correspondences, est.correspondences_peak, 0.0)

    check_memory(
        estimate_for(frames.n, config.frames.pixel_budget),
        frames.n,
        working_shape(H, W, config.frames.pixel_budget, config.frames.multiple),
        config.frames.pixel_budget,
        estimate_for,
        margin=config.memory.margin,
    )
