"""Side-by-side benchmark: flowmap against COLMAP on the same frames, in one process.

For every sequence folder (shared layout: ``images/``, ``poses.txt``, ``intrinsics.json``)
flowmap runs first, then COLMAP with each requested mapper (:mod:`flowmap.baseline`), all
on the same frames at the resolution they are stored at. Each run is measured for wall
seconds and peak resident memory and evaluated against the ground truth with
:func:`flowmap.evaluation.evaluate`. The results are printed as a table and written to
``out_root/bench.json``.

Peak memory: the Linux kernel keeps the high-water mark of the resident set of a process
(``VmHWM`` in ``/proc/self/status``); writing "5" to ``/proc/self/clear_refs`` resets it to
the current resident set (proc(5), "clear_refs"). So each run's peak is exact and includes
every thread (COLMAP's worker threads too) without sampling. Where that file cannot be
written, a thread samples ``VmRSS`` every 10 ms instead (may miss short spikes); the
method used is recorded in the JSON. The number is the peak resident set of the whole
process (Python, the imported libraries, the run), so runs are comparable: flowmap's
modules (torch) are imported before the first measurement, and ``rss_before_mb`` records
the resident set at the start of each run.
"""

from __future__ import annotations

import gc
import importlib
import json
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from flowmap.baseline import ColmapConfig, global_mapper_available, list_images, run_colmap
from flowmap.config import OutputConfig, RunConfig
from flowmap.errors import InputError
from flowmap.io import atomic_write, lock_out

PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


# --------------------------------------------------------------------------- memory


def _status_kb(key: str) -> int | None:
    """A ``kB`` field (``VmRSS``, ``VmHWM``) of /proc/self/status, None where unavailable."""
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_memory() -> None:
    """Free what the previous run left: Python garbage, then glibc's free heap pages back
    to the kernel (``malloc_trim(0)``, glibc only; elsewhere nothing more), so the next
    run's peak is not inflated by memory this process merely keeps. Measured between two
    tum-office runs in one process: resident set 737 -> 529 MiB."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark of this process; False if not allowed."""
    try:
        PROC_CLEAR_REFS.write_text("5")
    except OSError:
        return False
    # A kernel that ignores the request leaves VmHWM above VmRSS.
    hwm, rss = _status_kb("VmHWM"), _status_kb("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 1024


@dataclass
class MemoryPeak:
    """Peak resident set of this process during a ``with measure_peak_rss() as m:`` block.

    Attributes:
        before_mb: resident set at the start (MiB), None without /proc.
        peak_mb: peak resident set during the block (MiB), None without /proc.
        method: "vmhwm" (kernel high-water mark after a reset), "sampling" (10 ms
            VmRSS samples) or "unavailable".
    """

    before_mb: float | None = None
    peak_mb: float | None = None
    method: str = "unavailable"
    _samples: list[int] = field(default_factory=list, repr=False)


@contextmanager
def measure_peak_rss(interval_s: float = 0.01) -> Iterator[MemoryPeak]:
    """Measure the peak resident set (MiB) of this process over a block; see the module docs."""
    result = MemoryPeak()
    before = _status_kb("VmRSS")
    if before is None:
        yield result
        return
    result.before_mb = before / 1024
    if _reset_peak_rss():
        result.method = "vmhwm"
        try:
            yield result
        finally:
            hwm = _status_kb("VmHWM")
            result.peak_mb = None if hwm is None else hwm / 1024
        return

    result.method = "sampling"
    stop = threading.Event()
    result._samples.append(before)

    def sample() -> None:
        while not stop.wait(interval_s):
            rss = _status_kb("VmRSS")
            if rss is not None:
                result._samples.append(rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        result._samples.append(_status_kb("VmRSS") or before)
        result.peak_mb = max(result._samples) / 1024


# --------------------------------------------------------------------------- data


def check_sequence(seq_dir: Path) -> None:
    """Raise :class:`InputError` unless ``seq_dir`` has images/, poses.txt and intrinsics.json."""
    seq_dir = Path(seq_dir)
    missing = [p for p in ("images", "poses.txt", "intrinsics.json") if not (seq_dir / p).exists()]
    if missing:
        raise InputError(
            f"{seq_dir} is not a benchmark sequence (missing {', '.join(missing)}); "
            "pass folders with images/, poses.txt and intrinsics.json"
        )


SUBSET_MARK = "::"


def parse_sequence(arg: str | Path) -> tuple[Path, int]:
    """``PATH`` or ``PATH::K`` (every K-th frame of the sequence, K >= 2) -> (PATH, K).

    Raises:
        InputError: K is not an integer >= 2.
    """
    text = str(arg)
    if SUBSET_MARK not in text:
        return Path(text), 1
    path, _, every = text.rpartition(SUBSET_MARK)
    if not every.isdigit() or int(every) < 2:
        raise InputError(f"{text}: after '{SUBSET_MARK}' give K >= 2 to keep every K-th frame, e.g. castle-P30{SUBSET_MARK}6")
    return Path(path), int(every)


def subset_sequence(seq_dir: Path, every: int, root: Path) -> Path:
    """A sequence folder under ``root`` with every ``every``-th frame of ``seq_dir`` (the
    first included): images (links to the originals), their ground-truth poses (and depth
    maps where the sequence has them), the same intrinsics. It is how the benchmark
    builds few-view inputs from a video (issue 24: castle-P30 every 6th frame = 5 photos).

    Returns:
        the folder, named ``<name>-every<K>``; rebuilt on every call.

    Raises:
        InputError: fewer than 3 frames would remain.
    """
    from flowmap.layout import read_poses, write_poses

    names = list_images(seq_dir / "images")[::every]
    if len(names) < 3:
        raise InputError(f"{seq_dir}{SUBSET_MARK}{every} keeps {len(names)} frames; flowmap needs at least 3")
    dst = Path(root) / f"{seq_dir.resolve().name}-every{every}"
    if dst.exists():
        import shutil

        shutil.rmtree(dst)
    (dst / "images").mkdir(parents=True)
    for name in names:
        (dst / "images" / name).symlink_to((seq_dir / "images" / name).resolve())
    gt_names, c2w = read_poses(seq_dir / "poses.txt")
    index = {n: k for k, n in enumerate(gt_names)}
    kept = [n for n in names if n in index]
    write_poses(dst / "poses.txt", kept, c2w[[index[n] for n in kept]])
    (dst / "intrinsics.json").write_text((seq_dir / "intrinsics.json").read_text())
    if (seq_dir / "depth").is_dir():
        (dst / "depth").mkdir()
        for name in names:
            for f in (seq_dir / "depth").glob(f"{Path(name).stem}.*"):
                (dst / "depth" / f.name).symlink_to(f.resolve())
    return dst


# --------------------------------------------------------------------------- rows

POSES_KEY = "_posed"  # transient row entry: (names, c2w) of the posed frames, not written
ROW_KEYS = (
    "sequence",
    "method",
    "n_frames",
    "registered",
    "time_s",
    "peak_mb",
    "rss_before_mb",
    "memory_method",
    "peak_gpu_mb",
    "ate_paper",
    "ate",
    "rpe_rot_deg",
    "rpe_trans",
    "focal_rel_error",
    "focal_px",
    "focal_gt_px",
    "registration_rate",
    "depth_abs_rel",
    "depth_delta1",
    "depth_abs_rel_constant",
    "depth_abs_rel_ratio",
    "depth_agreement",
    "time_ratio",
    "ate_ratio",
    "ate_ratio_common",
    "n_models",
    "matcher",
    "image_size",
    "outputs",
    "timings",
    "warnings",
    "note",
    "error",
)
"""Keys of every result row (flowmap and COLMAP rows alike; None where not applicable).

sequence, method ("flowmap", "flowmap-norefine" (the same run's cameras before the
refinement), "colmap-incremental", "colmap-global"); n_frames (frames
with ground truth) and registered (of those, frames with a pose); time_s (wall seconds of
the whole run: decoding, features/flow, optimisation/mapping, not the export of outputs);
peak_mb / rss_before_mb (peak and starting resident set of the process, MiB) and
memory_method; peak_gpu_mb (peak CUDA memory allocated by torch, flowmap on a GPU only);
the metrics of :func:`flowmap.evaluation.evaluate_named` (ate_paper dimensionless, ate and
rpe_trans in ground-truth units, rpe_rot_deg in degrees, focal_rel_error =
|f - f_gt| / f_gt, focal_px / focal_gt_px at the ground-truth width, registration_rate,
and the depth metrics of :func:`flowmap.evaluation.evaluate_depth` where the sequence has
measured depth: flowmap rows only);
time_ratio and ate_ratio = flowmap / this row (COLMAP rows only; ate_ratio compares
flowmap's ATE on every frame it posed with COLMAP's on the frames COLMAP registered);
ate_ratio_common: flowmap / this row with both ATEs on the frames both posed (COLMAP rows
where COLMAP posed at least 3 of flowmap's frames); n_models (COLMAP:
models built, the largest is evaluated); matcher (COLMAP: "sequential"/"exhaustive");
image_size [H, W] of the frames both methods read; outputs (flowmap: folder of its
outputs); timings (flowmap: seconds per stage); warnings; note (evaluation notes);
error (why a run failed).
"""


def _new_row(sequence: str, method: str) -> dict:
    row = dict.fromkeys(ROW_KEYS)
    row.update(sequence=sequence, method=method, warnings=[])
    return row


def _plain(value):
    """JSON-friendly value: NumPy scalars as Python numbers, NaN/inf as None, tuples as lists."""
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _evaluate(
    names: list[str], c2w: np.ndarray, K: np.ndarray | None, size: tuple[int, int], seq_dir: Path, depth=None
) -> dict:
    """Metrics of named cameras against the sequence's ground truth (flowmap.evaluation).

    Frames are matched by name; ground-truth frames without a pose count as
    unregistered; the focal length (mean of fx, fy) is compared at the ground-truth width.
    Returns the row entries (``registered`` is evaluate's ``n_registered``).
    """
    from flowmap.evaluation import evaluate_named

    height, width = size
    nan = float("nan")
    fx, fy = (nan, nan) if K is None else (float(K[0, 0]), float(K[1, 1]))
    intrinsics = {"width": width, "height": height, "fx": fx, "fy": fy}
    metrics = dict(evaluate_named(list(names), c2w, intrinsics, seq_dir, depth))
    metrics["registered"] = metrics.pop("n_registered")
    return {k: _plain(v) for k, v in metrics.items() if k in ROW_KEYS}


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()


def _cuda_in_use(config: RunConfig) -> bool:
    """True when flowmap will run on a CUDA device under ``config``."""
    if config.device == "cpu":
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _measured(fn: Callable[[], object], row: dict, log: Callable[[str], None], cuda: bool = False):
    """Call ``fn()`` measuring wall seconds and peak memory into ``row``; None if it raised.

    With ``cuda``, the peak CUDA memory torch allocated goes to ``row["peak_gpu_mb"]``.
    A failed run is recorded as ``row["error"]`` (its traceback goes to ``log``) so that
    one failure does not stop the benchmark.
    """
    result = None
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with measure_peak_rss() as mem:
        t0 = time.perf_counter()
        try:
            result = fn()
            if cuda:
                torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001  (any failure of a run is a result to report)
            row["error"] = _error_text(exc)
            log(traceback.format_exc())
        row["time_s"] = time.perf_counter() - t0
    row.update(peak_mb=mem.peak_mb, rss_before_mb=mem.before_mb, memory_method=mem.method)
    if cuda:
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _run_flowmap(
    seq_dir: Path, name: str, out_dir: Path, config: RunConfig, output_config: OutputConfig | None, log: Callable
) -> tuple[list[dict], list[str] | None]:
    """One flowmap run on ``seq_dir/images`` (:func:`flowmap.pipeline.run`): its rows and
    the names of the frames it used.

    The rows are "flowmap" (the run's result) and, when the run refined its cameras,
    "flowmap-norefine": the same run's FlowMap cameras before the refinement stage, timed
    without it (``refine_s``, the depth fine-tuning's ``finetune_s`` and the dense depth
    stage's ``dense_s``), so that both come
    from one run on the same frames. The outputs
    (``output_config``, report with the ground truth overlaid) are written to ``out_dir``;
    ``output_config=None``: none. A row's ``time_s`` is the pipeline's measured time up to
    the outputs (decoding, correspondences, optimisation, solve, refinement); ``peak_mb``
    is the peak over the whole run, outputs included.
    """
    from flowmap.pipeline import run

    row = _new_row(name, "flowmap")
    if output_config is not None:
        output_config = replace(output_config, gt_dir=seq_dir) if output_config.report else output_config
    cfg = replace(config, outputs=output_config or config.outputs, overwrite=True, resume=False)
    out = None if output_config is None else out_dir
    result = _measured(lambda: run(seq_dir / "images", out, cfg), row, log, cuda=_cuda_in_use(config))
    if result is None:
        return [row], None
    rec = result.reconstruction
    timings = dict(result.timings)
    for key, value in (rec.refinement.get("seconds") or {}).items():  # the refinement's sub-steps
        timings[f"refine_{key}"] = value
    row.update(
        time_s=rec.timings["time_s"],
        image_size=[result.frames.height, result.frames.width],
        timings={k: _plain(v) for k, v in timings.items()},
        warnings=list(result.warnings),
        outputs=None if out is None else str(out),
    )
    posed = rec.posed()  # frames that could not be registered count as unregistered, as COLMAP's do
    depth = posed.depth if posed.dense is None else posed.dense.depth  # the written maps (flowmap.dense where it ran)
    row.update(_evaluate(posed.names, posed.c2w, posed.K, posed.image_size, seq_dir, depth))
    row[POSES_KEY] = (list(posed.names), np.asarray(posed.c2w))
    if rec.refinement.get("depth_agreement") is not None:
        row["depth_agreement"] = rec.refinement["depth_agreement"]
    rows = [row]
    if rec.flowmap_c2w is not None:
        unrefined = _new_row(name, "flowmap-norefine")
        unrefined.update({k: row[k] for k in ("image_size", "peak_mb", "rss_before_mb", "memory_method")})
        refinement_s = sum(rec.timings.get(k, 0.0) for k in ("refine_s", "finetune_s", "dense_s"))
        unrefined["time_s"] = rec.timings["time_s"] - refinement_s
        unrefined.update(_evaluate(rec.names, rec.flowmap_c2w, rec.flowmap_K, rec.image_size, seq_dir))
        rows.append(unrefined)
    return rows, list(rec.names)


def _run_colmap_row(
    seq_dir: Path, name: str, workdir: Path, cfg: ColmapConfig, names: list[str], log: Callable
) -> dict:
    """One COLMAP run on the frames ``names`` of ``seq_dir/images``: its row."""
    row = _new_row(name, f"colmap-{cfg.mapper}")
    res = _measured(lambda: run_colmap(seq_dir / "images", workdir, cfg, image_names=names), row, log)
    if res is None:
        return row
    row.update(n_models=res.n_models, matcher=res.matcher, timings={k: _plain(v) for k, v in res.timings.items()})
    if res.K is None:
        row["error"] = f"COLMAP built no model from {len(res.names)} frames"
        registered, c2w, K, size = [], np.zeros((0, 4, 4)), None, (1, 1)
    else:
        registered = [n for n, r in zip(res.names, res.registered) if r]
        c2w, K, size = res.c2w[res.registered], res.K, res.image_size
        row["image_size"] = list(res.image_size)
    if registered:
        row.update(_evaluate(registered, c2w, K, size, seq_dir))
        row[POSES_KEY] = (registered, np.asarray(c2w))
    else:
        row.update(_evaluate_none(seq_dir))
    return row


def _evaluate_none(seq_dir: Path) -> dict:
    """Row entries of a run that posed no frame of ``seq_dir``."""
    from flowmap.evaluation import read_ground_truth

    names_gt = read_ground_truth(seq_dir)[0]
    return {"n_frames": len(names_gt), "registered": 0, "registration_rate": 0.0}


def _add_ratios(rows: list[dict], seq_dir: Path) -> None:
    """On every COLMAP row: flowmap / COLMAP for time and ate_paper, and for ate_paper on
    the frames both posed (:func:`common_ate_ratio`); None where undefined."""
    flowmap = next((r for r in rows if r["method"] == "flowmap"), None)
    for row in rows:
        if flowmap is None or row["method"].startswith("flowmap"):
            continue
        row["time_ratio"] = _ratio(flowmap.get("time_s"), row.get("time_s"))
        row["ate_ratio"] = _ratio(flowmap.get("ate_paper"), row.get("ate_paper"))
        if POSES_KEY in flowmap and POSES_KEY in row:
            row["ate_ratio_common"] = common_ate_ratio(flowmap[POSES_KEY], row[POSES_KEY], seq_dir)


def common_ate_ratio(
    ours: tuple[list[str], np.ndarray], theirs: tuple[list[str], np.ndarray], seq_dir: Path
) -> float | None:
    """ATE (paper convention, :func:`flowmap.evaluation.ate_paper`) of ``ours`` over that
    of ``theirs``, both on the ground-truth frames that both posed.

    Where one method drops frames the other poses, the plain ratio compares different
    frame sets (e.g. COLMAP's 135 easiest of 189); this one does not.

    Args:
        ours, theirs: (names, c2w (M, 4, 4)) of the posed frames, OpenCV axes.
        seq_dir: the sequence (its ``poses.txt`` is the ground truth).

    Returns:
        The ratio, or None when fewer than 3 frames are common or an ATE is 0.
    """
    from flowmap.evaluation import MIN_FRAMES_FOR_POSE_METRICS, ate_paper, match_frames, read_ground_truth

    names_gt, c2w_gt, _ = read_ground_truth(seq_dir)
    mine, _ = match_frames(list(ours[0]), names_gt)
    other, _ = match_frames(list(theirs[0]), names_gt)
    common = [k for k, (a, b) in enumerate(zip(mine, other)) if a is not None and b is not None]
    if len(common) < MIN_FRAMES_FOR_POSE_METRICS:
        return None
    gt = c2w_gt[common, :3, 3]
    a = ate_paper(np.asarray(ours[1])[[mine[k] for k in common], :3, 3], gt)
    b = ate_paper(np.asarray(theirs[1])[[other[k] for k in common], :3, 3], gt)
    return _ratio(a, b)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
        return None
    return float(a / b)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_bench(
    seq_dirs: list[Path | str],
    out_root: Path,
    config: RunConfig | None = None,
    mappers: tuple[str, ...] = ("incremental", "global"),
    colmap: bool = True,
    colmap_config: ColmapConfig | None = None,
    flowmap: bool = True,
    output_config: OutputConfig | None = None,
    save_outputs: bool = True,
    log: Callable[[str], None] = _stderr,
) -> dict:
    """Run flowmap and COLMAP on each sequence, one after the other in this process.

    Both read the same frames: the files of ``SEQ/images`` that flowmap used (all of
    them unless ``config.frames`` selects fewer), at the resolution they are stored at
    (flowmap shrinks them to its working resolution internally and reports intrinsics
    for the stored size; COLMAP extracts SIFT from them as they are). COLMAP: SIFT,
    exhaustive matching below 40 frames and sequential matching from 40 on (unless
    ``colmap_config.matcher`` says otherwise), one shared SIMPLE_PINHOLE camera whose
    focal length is estimated (EXIF focal data is not used), and each mapper of
    ``mappers`` as its own complete run (extraction, matching, mapping), so that each
    COLMAP row's time is what that pipeline costs from the frames.

    Args:
        seq_dirs: sequence folders in the shared layout (``images/NNNNNN.jpg``,
            ``poses.txt`` camera-to-world OpenCV axes, ``intrinsics.json``); ``PATH::K``
            benchmarks every K-th frame of PATH (:func:`subset_sequence`, built under
            ``out_root/subsets``), filed as ``<name>-every<K>``.
        out_root: results folder: ``bench.json``, and per sequence ``<name>/flowmap``
            (flowmap's outputs, report with the ground truth overlaid) and
            ``<name>/colmap-<mapper>`` (COLMAP database and models).
        config: flowmap's run settings (default :class:`flowmap.config.RunConfig` without
            progress bars and without a cache, so that the time is a cold run's).
        mappers: COLMAP mappers to run, "incremental" and/or "global"; "global" is
            skipped with a note when the installed pycolmap has no global mapper.
        colmap: run COLMAP at all.
        colmap_config: base COLMAP settings (matcher, threads, seed); ``mapper`` is
            replaced by each entry of ``mappers``.
        flowmap: run flowmap (off: COLMAP only, e.g. to re-measure the baseline).
        output_config: what flowmap's outputs hold (default :class:`OutputConfig`).
        save_outputs: write flowmap's outputs at all.
        log: where progress lines go (default: stderr).

    Returns:
        ``{"rows": [...], "table": str, "machine": {...}, "settings": {...}}``; one row
        per sequence x method, every row with the keys :data:`ROW_KEYS` (None where not
        applicable or not measured); ``error`` says why a run failed. The same dict is
        written to ``out_root/bench.json`` (atomically).

    Raises:
        InputError: a folder is not a sequence, an unknown mapper is asked for, or
            another flowmap process writes ``out_root`` (its lock, :func:`flowmap.io.lock_out`).
    """
    parsed = [parse_sequence(s) for s in seq_dirs]
    if not parsed:
        raise InputError("no sequence folders given; pass one or more folders with images/, poses.txt, intrinsics.json")
    for seq_dir, _ in parsed:
        check_sequence(seq_dir)
    seq_names = [s.resolve().name + (f"-every{k}" if k > 1 else "") for s, k in parsed]
    if len(set(seq_names)) != len(seq_names):
        raise InputError(f"sequence folder names must differ (results are filed by name), got {seq_names}")
    unknown = [m for m in mappers if m not in ("incremental", "global")]
    if unknown:
        raise InputError(f"unknown COLMAP mapper(s) {unknown}; use incremental and/or global")
    config = config or RunConfig(progress=False)
    base = colmap_config or ColmapConfig()
    output_config = (output_config or OutputConfig()) if save_outputs else None
    run_mappers = list(dict.fromkeys(mappers)) if colmap else []
    notes = []
    if "global" in run_mappers and not global_mapper_available():
        notes.append("the installed pycolmap has no global mapper; colmap-global skipped")
        log(notes[-1])
        run_mappers.remove("global")
    if flowmap:  # load flowmap's modules (torch) before any memory measurement
        for module in ("flowmap.pipeline", "flowmap.optimize", "flowmap.solve", "flowmap.correspondences.cache"):
            importlib.import_module(module)

    out_root = Path(out_root)
    with lock_out(out_root):  # two benches into one folder would delete each other's caches
        out_root.mkdir(parents=True, exist_ok=True)
        seq_dirs = [s if k == 1 else subset_sequence(s, k, out_root / "subsets") for s, k in parsed]
        rows: list[dict] = []
        for seq_dir, name in zip(seq_dirs, seq_names):
            names = list_images(seq_dir / "images")
            seq_rows = []
            if flowmap:
                log(f"[{name}] flowmap on {len(names)} frames ...")
                fm_rows, fm_names = _run_flowmap(seq_dir, name, out_root / name / "flowmap", config, output_config, log)
                names = fm_names or names
                seq_rows.extend(fm_rows)
                _release_memory()
            for mapper in run_mappers:
                cfg = replace(base, mapper=mapper)
                log(f"[{name}] COLMAP ({mapper}) on {len(names)} frames ...")
                seq_rows.append(_run_colmap_row(seq_dir, name, out_root / name / f"colmap-{mapper}", cfg, names, log))
                _release_memory()
            _add_ratios(seq_rows, seq_dir)
            rows.extend({k: _plain(row[k]) for k in ROW_KEYS} for row in seq_rows)
            _write_json_atomic(out_root / "bench.json", _results(rows, config, base, run_mappers, notes))  # partial

        results = _results(rows, config, base, run_mappers, notes)
        _write_json_atomic(out_root / "bench.json", results)
    return results


def _results(rows: list[dict], config: RunConfig, base: ColmapConfig, mappers: list[str], notes: list[str]) -> dict:
    results = {
        "rows": rows,
        "settings": {
            "flowmap": config.to_dict(),
            "colmap": {**asdict(base), "mappers": mappers},
        },
        "machine": _machine(),
        "notes": notes,
    }
    results["table"] = format_table(results)
    return results


def _machine() -> dict:
    import platform

    import pycolmap

    info = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "pycolmap": pycolmap.__version__}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def _write_json_atomic(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(_plain(data), indent=2, default=str) + "\n")


# --------------------------------------------------------------------------- table

COLUMNS = (
    ("sequence", "sequence", "{}"),
    ("method", "method", "{}"),
    ("time s", "time_s", "{:.1f}"),
    ("peak MB", "peak_mb", "{:.0f}"),
    ("run MB", "run_mb", "{:.0f}"),
    ("registered", None, ""),
    ("ate_paper", "ate_paper", "{:.5f}"),
    ("focal err %", "focal_rel_error", "{:.2f}"),
    ("depth agr %", "depth_agreement", "{:.2f}"),
    ("depth AbsRel", "depth_abs_rel", "{:.3f}"),
    ("depth d<1.25", "depth_delta1", "{:.3f}"),
    ("plane AbsRel", "depth_abs_rel_constant", "{:.3f}"),
    ("time ratio", "time_ratio", "{:.2f}"),
    ("ATE ratio", "ate_ratio", "{:.2f}"),
    ("ATE ratio common", "ate_ratio_common", "{:.2f}"),
)


def _cell(row: dict, key: str | None, fmt: str) -> str:
    if key is None:  # registered / frames of the ground truth
        reg, n = row.get("registered"), row.get("n_frames")
        return "-" if reg is None else f"{reg}/{n}"
    if key == "run_mb":  # the part of the peak the run added to the process
        peak, before = row.get("peak_mb"), row.get("rss_before_mb")
        return "-" if peak is None or before is None else fmt.format(peak - before)
    value = row.get(key)
    if value is None:
        return "-"
    if key in ("focal_rel_error", "depth_agreement"):
        value = 100 * value
    return fmt.format(value)


# (label, key) of the stages in a row's ``timings``, in pipeline order; refine_* are the
# refinement's sub-steps (flowmap.refine: stats["seconds"]).
STAGES = (
    ("frames", "frames_s"), ("flow", "flow_s"), ("tracks", "tracks_s"), ("bridges", "bridges_s"),
    ("descent", "optimize_loop_s"), ("solve", "final_solve_s"), ("refine", "refine_s"),
    ("finetune", "finetune_s"), ("dense", "dense_s"), ("extract", "extract_s"), ("match", "match_s"), ("map", "map_s"),
)
REFINE_STAGES = (
    ("SIFT", "refine_features_s"), ("match", "refine_match_s"), ("reinit", "refine_reinit_s"),
    ("triangulate", "refine_triangulate_s"), ("adjust", "refine_adjust_s"), ("depth", "refine_depth_s"),
)


def _stages(timings: dict) -> str:
    """One line of stage seconds, e.g. ``flow 1.2  descent 15.0  refine 20.1 (SIFT 7.5, ...)``."""

    def parts(spec) -> list[str]:
        return [f"{label} {timings[key]:.1f}" for label, key in spec if isinstance(timings.get(key), (int, float))]

    inner = parts(REFINE_STAGES)
    out = []
    for label, key in STAGES:
        if isinstance(timings.get(key), (int, float)):
            out.append(f"{label} {timings[key]:.1f}" + (f" ({', '.join(inner)})" if key == "refine_s" and inner else ""))
    return "  ".join(out)


def format_table(results: dict) -> str:
    """Plain-text table of :func:`run_bench` results: one line per sequence x method.

    Columns: time s (wall), peak MB (peak resident set of the whole process, which
    includes Python and the loaded libraries), run MB (that peak minus the resident set
    at the start of the run: what the run itself added),
    registered frames / frames, ate_paper, focal err % (100 |f - f_gt| / f_gt), depth agr %
    (flowmap rows with a refinement: median relative difference between the written depth
    maps and the adjusted points each frame observes), depth
    AbsRel and plane AbsRel (the best constant depth on the same pixels) where the sequence
    has measured depth, and on COLMAP lines the ratios flowmap / COLMAP of time and ate_paper (< 1: flowmap faster /
    more accurate; "ATE ratio common": both ATEs on the frames both posed). Failed runs are listed under the table
    with their error.
    """
    rows = results["rows"]
    header = [c[0] for c in COLUMNS]
    body = [[_cell(r, key, fmt) for _, key, fmt in COLUMNS] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), line(["-" * w for w in widths])] + [line(b) for b in body]
    stages = [f"{r['sequence']:14s} {r['method']:18s} {_stages(r['timings'])}" for r in rows if r.get("timings") and r["method"] != "flowmap-norefine"]
    if stages:
        out += ["", "where the time goes (wall seconds per stage; flowmap's outputs are not timed):"] + stages
    gpu = [r for r in rows if r.get("peak_gpu_mb") is not None]
    if gpu:
        out += ["", "peak GPU memory (torch): " + ", ".join(f"{r['sequence']} {r['peak_gpu_mb']:.0f} MB" for r in gpu)]
    errors = [f"{r['sequence']} {r['method']}: {r['error']}" for r in rows if r.get("error")]
    if errors:
        out += ["", "errors:"] + [f"  {e}" for e in errors]
    return "\n".join(out)
