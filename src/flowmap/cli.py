"""The ``flowmap`` command: run, batch, eval, demo, bench, view.

User errors (:class:`flowmap.errors.FlowmapError`) print one line on stderr and exit
with code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from flowmap.errors import FlowmapError, InputError

REFINE_HELP = (
    "Global refinement of the cameras: fast (OpenCV SIFT, COLMAP matching + bundle adjustment, default) | "
    "colmap (COLMAP's DSP-SIFT, the slower refinement of flowmap 0.1) | none."
)
CAMERA_MODEL_HELP = "Camera the refinement adjusts: SIMPLE_PINHOLE (one focal) | PINHOLE (fx, fy)."
THREADS_HELP = "CPU threads (torch, OpenCV and COLMAP; default: the cores other processes leave idle). 1 makes a CPU run bit-reproducible."

# Options shared by `run` and `batch` (one definition each).
MAX_FRAMES = typer.Option(None, help="Use at most this many frames (after --stride).")
STRIDE = typer.Option(1, help="Use every k-th frame.")
PIXEL_BUDGET = typer.Option(43200, help="Working resolution in pixels (h*w), aspect kept.")
FOCAL = typer.Option(None, help="Known focal length in pixels of the input frames.")
STEPS = typer.Option(None, help="Optimisation steps (default: see README).")
SEED = typer.Option(0, help="Random seed.")
KEYFRAMES = typer.Option(
    "auto",
    help="Frames to reconstruct, chosen by motion after --stride/--max-frames: auto (every frame up to 240, "
    "else 100 keyframes) | all | N. The other frames are posed against them afterwards.",
)
KEYFRAMES_ONLY = typer.Option(False, help="Write only the keyframes (poses.txt, COLMAP model, transforms.json).")
REFINE = typer.Option("fast", help=REFINE_HELP)
CAMERA_MODEL = typer.Option("SIMPLE_PINHOLE", help=CAMERA_MODEL_HELP)
INIT_HELP = (
    "Where the networks start: default (the checkpoint shipped with flowmap, trained across videos) | "
    "none (random weights) | PATH (a checkpoint of flowmap train)."
)
INIT = typer.Option("default", help=INIT_HELP)
DEPTH_SCALE = typer.Option(
    0.0,
    help="Multi-view dense depth (flowmap.dense, after the refinement) at this resolution relative to the input frames: 0.5 half, 1 full; 0 (default): none, the network's depth corrected to the refined points at the working resolution. Its surface fill needs Open3D: pip install 'flowmap[dense]'.",
)
SCRATCH_STEPS = 100
"""Descent steps without --steps when the networks start from random weights (--init none);
from the shipped network (the default) OptimConfig's 10 (see its docstring)."""

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Camera poses, intrinsics and dense depth from a video or image folder (FlowMap).",
    pretty_exceptions_enable=False,
)


def _fail(exc: BaseException, debug: bool) -> None:
    if debug:
        raise exc
    print(f"error: {exc}", file=sys.stderr)
    raise typer.Exit(code=2)


def _guard(debug: bool, interrupted: str = "interrupted; run again with --resume to continue"):
    """Context manager turning FlowmapError into a one-line error and exit code 2, and an
    interruption (Ctrl-C, or SIGTERM where :func:`_interrupt_on_sigterm` is installed) into
    the line ``interrupted`` and exit code 130."""

    class _Guard:
        def __enter__(self):
            return self

        def __exit__(self, exc_type, exc, tb):
            if exc is None:
                return False
            if isinstance(exc, FlowmapError):
                _fail(exc, debug)
            if isinstance(exc, KeyboardInterrupt):
                print(interrupted, file=sys.stderr)
                raise typer.Exit(code=130)
            return False

    return _Guard()


def _run_config(
    max_frames: Optional[int] = None,
    stride: int = 1,
    pixel_budget: int = 43200,
    focal: Optional[float] = None,
    steps: Optional[int] = None,
    device: str = "auto",
    seed: int = 0,
    quiet: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    colmap_text: bool = False,
    gt: Optional[Path] = None,
    refine: str = "fast",
    camera_model: str = "SIMPLE_PINHOLE",
    threads: Optional[int] = None,
    init: str = "default",
    finetune_steps: Optional[int] = None,
    keyframes: str = "auto",
    keyframes_only: bool = False,
    depth_scale: float = 0.0,
):
    """The flags of ``run`` / ``demo`` / ``bench`` / ``batch`` as a :class:`flowmap.config.RunConfig`."""
    from flowmap.config import RunConfig
    from flowmap.keyframes import parse_target
    from flowmap.validate import refine_config

    cfg = RunConfig(
        focal=focal, device=device, seed=seed, progress=not quiet, overwrite=overwrite, resume=resume, threads=threads,
        init=str(init),
    )
    cfg.refine = refine_config(refine, camera_model)
    cfg.frames.max_frames = max_frames
    cfg.frames.stride = stride
    cfg.frames.pixel_budget = pixel_budget
    cfg.keyframes.target = parse_target(keyframes)
    cfg.outputs.keyframes_only = keyframes_only
    cfg.outputs.colmap_text = colmap_text
    cfg.outputs.gt_dir = gt
    if steps is not None:
        cfg.optim.steps = steps
    elif cfg.init == "none":
        cfg.optim.steps = SCRATCH_STEPS
    if finetune_steps is not None:
        if finetune_steps < 0:
            raise InputError(f"--finetune-steps must be >= 0, got {finetune_steps}")
        cfg.finetune = replace(cfg.finetune, steps=finetune_steps)
    if not (depth_scale == 0 or 0.05 <= depth_scale <= 1):
        raise InputError(f"--depth-scale must be 0 (no dense stage) or between 0.05 and 1, got {depth_scale}")
    cfg.dense = replace(cfg.dense, enabled=depth_scale > 0, scale=depth_scale or cfg.dense.scale)
    return cfg


def posed_line(rec) -> str:
    """How many frames a run posed, for its last line: ``"1091 of 1091 frames posed (100
    keyframes)"``, with the count that could not be registered when there are any."""
    keys = int(rec.posed_mask.sum())
    total, posed = rec.n, keys
    if rec.others is not None:
        total, posed = total + rec.others.n, posed + int(rec.others.registered.sum())
    text = f"{posed} of {total} frames posed" if posed != total or rec.others is not None else f"{posed} frames posed"
    if rec.others is not None:
        text += f" ({rec.n} keyframes)"
    if posed != total:
        text += f"; {total - posed} could not be registered: see summary.json"
    return text


def _interrupt_on_sigterm() -> None:
    """Make SIGTERM behave like Ctrl-C: the run stops cleanly and can be resumed.

    Installed after pycolmap is imported, whose logging library sets its own handler
    (a stack dump) for SIGTERM.
    """
    import signal

    import pycolmap  # noqa: F401  (import first so that this handler wins)

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _print_metrics(metrics: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(metrics, default=float))
        return
    for key, value in metrics.items():
        if isinstance(value, float):
            print(f"{key:>20s}  {value:.6g}")
        else:
            print(f"{key:>20s}  {value}")


@app.command()
def run(
    source: Path = typer.Argument(..., help="Video file (mp4/mov/avi/...) or folder of images."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder."),
    max_frames: Optional[int] = MAX_FRAMES,
    stride: int = STRIDE,
    keyframes: str = KEYFRAMES,
    write_keyframes_only: bool = KEYFRAMES_ONLY,
    pixel_budget: int = PIXEL_BUDGET,
    focal: Optional[float] = FOCAL,
    steps: Optional[int] = STEPS,
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    seed: int = SEED,
    gt: Optional[Path] = typer.Option(None, help="Ground-truth folder (shared layout) to evaluate against."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty output folder."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from its checkpoint."),
    colmap_text: bool = typer.Option(False, help="Also write the COLMAP model as .txt."),
    refine: str = REFINE,
    camera_model: str = CAMERA_MODEL,
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
    init: str = INIT,
    finetune_steps: int = typer.Option(
        0, help="Steps of depth fine-tuning with the refined cameras held fixed (0: off; the refinement's correction field makes the depth agree with the cameras)."
    ),
    depth_scale: float = DEPTH_SCALE,
    quiet: bool = typer.Option(False, help="No progress bars."),
    debug: bool = typer.Option(False, help="Show tracebacks."),
):
    """Reconstruct cameras, intrinsics and depth; write them to OUT."""
    with _guard(debug):
        from flowmap.pipeline import run as run_pipeline

        cfg = _run_config(
            max_frames, stride, pixel_budget, focal, steps, device, seed, quiet, overwrite, resume, colmap_text, gt,
            refine, camera_model, threads, init, finetune_steps, keyframes, write_keyframes_only, depth_scale,
        )
        _interrupt_on_sigterm()
        result = run_pipeline(source, out, cfg, summary={"command": " ".join(sys.argv)})
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        rec = result.reconstruction
        print(f"{posed_line(rec)}, focal {rec.K[0, 0]:.1f} px, {result.timings['total_s']:.0f} s -> {out}", file=sys.stderr)
        if gt is not None:
            from flowmap.evaluation import evaluate_run

            _print_metrics(evaluate_run(out, gt), as_json=False)


@app.command()
def batch(
    sources: list[Path] = typer.Argument(..., help="Videos, image folders, or text files listing them (one path per line; a tab, then a ground-truth folder, optionally)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output root: one folder per source, batch.json, batch.html."),
    jobs: Optional[int] = typer.Option(None, help="Sources run in parallel (default: cores // threads)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads per source (default: cores // jobs, at least 1)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster (ray://HOST:PORT or HOST:PORT; default: RAY_ADDRESS, else a local Ray)."),
    resume: bool = typer.Option(False, help="Skip finished sources, resume interrupted ones."),
    overwrite: bool = typer.Option(False, help="Redo every source, replacing its output."),
    max_frames: Optional[int] = MAX_FRAMES,
    stride: int = STRIDE,
    keyframes: str = KEYFRAMES,
    write_keyframes_only: bool = KEYFRAMES_ONLY,
    pixel_budget: int = PIXEL_BUDGET,
    focal: Optional[float] = FOCAL,
    steps: Optional[int] = STEPS,
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    seed: int = SEED,
    colmap_text: bool = typer.Option(False, help="Also write the COLMAP models as .txt."),
    refine: str = REFINE,
    camera_model: str = CAMERA_MODEL,
    init: str = INIT,
    quiet: bool = typer.Option(False, help="No progress bar."),
    debug: bool = typer.Option(False, help="Show tracebacks."),
):
    """Run every source (as `flowmap run` does) into OUT/<name>/ on Ray; summarise in OUT/batch.json."""
    with _guard(debug, interrupted="interrupted; run the same command with --resume to continue"):
        from flowmap.batch import BatchConfig, format_batch_table, run_batch

        cfg = _run_config(
            max_frames, stride, pixel_budget, focal, steps, device, seed, True, False, False, colmap_text, None,
            refine, camera_model, init=init, keyframes=keyframes, keyframes_only=write_keyframes_only,
        )
        bcfg = BatchConfig(jobs=jobs, threads=threads, address=address, resume=resume, overwrite=overwrite, progress=not quiet)
        _interrupt_on_sigterm()
        summary = run_batch(sources, out, cfg, bcfg)
        print(format_batch_table(summary))
        print(f"-> {out / 'batch.json'}, {out / 'batch.html'}", file=sys.stderr)
        if summary.get("failed"):
            raise typer.Exit(code=1)


@app.command()
def train(
    sources: list[Path] = typer.Argument(..., help="Videos or image folders to train on (no ground truth needed)."),
    out: Path = typer.Option(..., "-o", "--out", help="Checkpoint to write (.pt); its model card and loss plot go beside it."),
    val: list[Path] = typer.Option([], "--val", help="A held-back video or folder for the validation loss (repeatable)."),
    steps: int = typer.Option(6000, help="Training steps (one random window of one random video each)."),
    lr: float = typer.Option(1e-3, help="Peak learning rate."),
    max_frames: Optional[int] = MAX_FRAMES,
    stride: int = STRIDE,
    pixel_budget: int = PIXEL_BUDGET,
    device: str = typer.Option("auto", help="auto (the GPU when torch sees one) | cpu | cuda"),
    seed: int = SEED,
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: all cores)."),
    resume: bool = typer.Option(False, help="Continue an interrupted training (same sources and settings)."),
    quiet: bool = typer.Option(False, help="No progress bars."),
    debug: bool = typer.Option(False, help="Show tracebacks."),
):
    """Train the depth network and weight MLP across videos (FlowCam); use it with run --init CKPT."""
    with _guard(debug):
        from flowmap.config import TrainConfig
        from flowmap.pipeline import cpu_threads
        from flowmap.train import train as train_across
        from flowmap.validate import check_threads, resolve_device

        cfg = TrainConfig(steps=steps, lr=lr, seed=seed)
        cfg.frames.max_frames = max_frames
        cfg.frames.stride = stride
        cfg.frames.pixel_budget = pixel_budget
        check_threads(threads)
        _interrupt_on_sigterm()
        with cpu_threads(threads):
            result = train_across(
                sources, out, cfg, val_paths=val, device=resolve_device(device), resume=resume, progress=not quiet,
                command=" ".join(["flowmap", *(a for a in sys.argv[1:] if a != "--resume")]),
            )
        last = result.history[-1] if result.history else {}
        val_text = f", validation loss {last['val']:.4f}" if "val" in last else ""
        print(f"trained {steps} steps in {result.train_s:.0f} s{val_text} -> {out}", file=sys.stderr)


@app.command("eval")
def eval_(
    out: Path = typer.Argument(..., help="Output folder of a run (poses.txt, intrinsics.json)."),
    gt: Path = typer.Option(..., "--gt", help="Ground-truth folder (poses.txt, intrinsics.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    debug: bool = typer.Option(False, help="Show tracebacks."),
):
    """Compare a run's poses and intrinsics with ground truth (METHOD.md section 6)."""
    with _guard(debug):
        from flowmap.evaluation import evaluate_run

        _print_metrics(evaluate_run(out, gt), as_json)


@app.command()
def demo(
    out: Path = typer.Option(Path("flowmap-demo"), "-o", "--out", help="Output folder."),
    frames: int = typer.Option(24, help="Frames of the synthetic video."),
    steps: Optional[int] = typer.Option(None, help="Optimisation steps (default: a real run's, see README)."),
    overwrite: bool = typer.Option(True, help="Replace the output folder."),
    quiet: bool = typer.Option(False, help="No progress bars."),
    debug: bool = typer.Option(False, help="Show tracebacks."),
):
    """Render a synthetic scene with a known camera path, reconstruct it, print the errors."""
    with _guard(debug):
        from flowmap.evaluation import evaluate_run
        from flowmap.pipeline import run as run_pipeline
        from flowmap.synthetic import make_scene, write_sequence

        print("rendering a synthetic scene ...", file=sys.stderr)
        scene = make_scene(n_frames=frames)
        with tempfile.TemporaryDirectory() as tmp:
            seq = write_sequence(scene, Path(tmp) / "scene")
            cfg = _run_config(steps=steps, quiet=quiet, overwrite=overwrite)
            run_pipeline(seq / "images", out, cfg, summary={"source": "synthetic demo"})
            gt_dir = out / "ground_truth"
            shutil.copytree(seq, gt_dir, ignore=shutil.ignore_patterns("images"))
        metrics = evaluate_run(out, gt_dir)
        print(f"outputs in {out}/ (ground truth in {gt_dir}/)")
        _print_metrics(metrics, as_json=False)


@app.command()
def bench(
    seq_dirs: list[str] = typer.Argument(
        ..., help="Sequence folders (images/, poses.txt, intrinsics.json); FOLDER::K keeps every K-th frame (a few-view subset)."
    ),
    out: Path = typer.Option(Path("bench-out"), "-o", "--out", help="Results folder (bench.json)."),
    steps: Optional[int] = typer.Option(None, help="flowmap optimisation steps."),
    device: str = typer.Option("auto", help="flowmap device: auto | cpu | cuda"),
    no_global: bool = typer.Option(False, help="Skip COLMAP's global mapper."),
    no_colmap: bool = typer.Option(False, help="Run flowmap only."),
    no_flowmap: bool = typer.Option(False, help="Run COLMAP only."),
    matcher: str = typer.Option("auto", help="COLMAP matcher: auto | sequential | exhaustive"),
    colmap_threads: int = typer.Option(-1, help="CPU threads COLMAP may use (-1: all)."),
    refine: str = typer.Option("fast", help=REFINE_HELP),
    init: str = INIT,
    depth_scale: float = DEPTH_SCALE,
    debug: bool = typer.Option(False, help="Show tracebacks."),
):
    """Run flowmap and COLMAP on the same frames; print a table and write bench.json.

    With the refinement on (the default), the table also lists "flowmap-norefine": the
    same run's cameras before the refinement, timed without it.
    """
    with _guard(debug, interrupted=f"benchmark interrupted; the rows measured so far are in {out / 'bench.json'}"):
        from flowmap.baseline import ColmapConfig
        from flowmap.bench import run_bench

        _interrupt_on_sigterm()
        cfg = _run_config(steps=steps, device=device, quiet=True, refine=refine, init=init, depth_scale=depth_scale)
        mappers = ("incremental",) if no_global else ("incremental", "global")
        colmap_cfg = ColmapConfig(matcher=matcher, num_threads=colmap_threads)
        results = run_bench(
            seq_dirs, out, cfg, mappers=mappers, colmap=not no_colmap, colmap_config=colmap_cfg, flowmap=not no_flowmap
        )
        print(results["table"])
        print(f"wrote {out / 'bench.json'} (all numbers) and flowmap's outputs under {out}/", file=sys.stderr)


@app.command()
def view(
    out: Path = typer.Argument(..., help="Output folder of a run."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (localhost by default)."),
    port: int = typer.Option(8080, help="Port."),
    debug: bool = typer.Option(False, help="Show tracebacks."),
):
    """Interactive 3D view of the cameras and the point cloud (viser)."""
    with _guard(debug, interrupted="viewer stopped"):
        from flowmap.outputs.viewer import view as serve

        _interrupt_on_sigterm()
        serve(out, host=host, port=port)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
