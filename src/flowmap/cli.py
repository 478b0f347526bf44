"""The ``flowmap`` command: run, eval, demo, bench, view.

User errors (:class:`flowmap.errors.FlowmapError`) print one line on stderr and exit
with code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import typer

from flowmap.errors import FlowmapError

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


def _guard(debug: bool):
    """Context manager turning FlowmapError into a one-line error and exit code 2."""

    class _Guard:
        def __enter__(self):
            return self

        def __exit__(self, exc_type, exc, tb):
            if exc is None:
                return False
            if isinstance(exc, FlowmapError):
                _fail(exc, debug)
            if isinstance(exc, KeyboardInterrupt):
                print("interrupted; run again with --resume to continue", file=sys.stderr)
                raise typer.Exit(code=130)
            return False

    return _Guard()


def _run_config(
    max_frames: Optional[int],
    stride: int,
    pixel_budget: int,
    focal: Optional[float],
    steps: Optional[int],
    device: str,
    seed: int,
    cache_dir: Optional[Path],
    quiet: bool,
):
    from flowmap.api import RunConfig

    cfg = RunConfig(focal=focal, device=device, seed=seed, cache_dir=cache_dir, progress=not quiet)
    cfg.frames.max_frames = max_frames
    cfg.frames.stride = stride
    cfg.frames.pixel_budget = pixel_budget
    if steps is not None:
        cfg.optim.steps = steps
    return cfg


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


def _check_out_apart(source: Path, out: Path) -> None:
    """Refuse an output folder that is, or contains, the input (``--overwrite`` would delete it)."""
    from flowmap.errors import InputError

    src, dst = source.resolve(), out.resolve()
    if src == dst or dst in src.parents:
        raise InputError(f"output folder {out} holds the input {source}; choose an output folder elsewhere")


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
    max_frames: Optional[int] = typer.Option(None, help="Use at most this many frames (after --stride)."),
    stride: int = typer.Option(1, help="Use every k-th frame."),
    pixel_budget: int = typer.Option(43200, help="Working resolution in pixels (h*w), aspect kept."),
    focal: Optional[float] = typer.Option(None, help="Known focal length in pixels of the input frames."),
    steps: Optional[int] = typer.Option(None, help="Optimisation steps (default: see README)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    seed: int = typer.Option(0, help="Random seed."),
    gt: Optional[Path] = typer.Option(None, help="Ground-truth folder (shared layout) to evaluate against."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty output folder."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from its checkpoint."),
    colmap_text: bool = typer.Option(False, help="Also write the COLMAP model as .txt."),
    quiet: bool = typer.Option(False, help="No progress bars."),
    debug: bool = typer.Option(False, help="Show tracebacks."),
):
    """Reconstruct cameras, intrinsics and depth; write them to OUT."""
    with _guard(debug):
        from flowmap.api import reconstruct
        from flowmap.checks import check_focal
        from flowmap.frames import check_config, load_frames
        from flowmap.outputs import OutputConfig, check_out_dir, write_outputs

        # options and the output folder first: nothing is decoded for a run that cannot be written
        check_focal(focal)
        cfg = _run_config(max_frames, stride, pixel_budget, focal, steps, device, seed, None, quiet)
        check_config(cfg.frames)
        check_out_dir(out, overwrite)
        _check_out_apart(source, out)
        cache_dir = out.parent / f"{out.name}.cache"
        if cache_dir.exists() and not resume:
            shutil.rmtree(cache_dir)
        cfg.cache_dir = cache_dir
        _interrupt_on_sigterm()
        t0 = time.perf_counter()
        try:
            frames = load_frames(source, cfg.frames)
            rec = reconstruct(frames, cfg)
        except FlowmapError:
            if not resume:  # a user error leaves nothing behind; an interrupted run keeps its cache
                shutil.rmtree(cache_dir, ignore_errors=True)
            raise
        rec.timings["frames_s"] = time.perf_counter() - t0 - sum(
            v for k, v in rec.timings.items() if k in ("correspondences_s", "optimization_s")
        )
        rec.timings["time_s"] = time.perf_counter() - t0
        summary = {"source": str(source), "command": " ".join(sys.argv)}
        try:
            write_outputs(rec, frames, out, OutputConfig(colmap_text=colmap_text, gt_dir=gt), summary=summary, overwrite=overwrite)
        except OSError as exc:  # disk full, permissions: write_outputs has left no partial OUT
            if debug or exc.errno is None:
                raise
            from flowmap.errors import InputError

            raise InputError(
                f"cannot write the outputs to {out}: {exc.strerror}; free space or choose another folder and run "
                "again (--resume reuses the cached work)"
            ) from None
        shutil.rmtree(cache_dir, ignore_errors=True)
        try:  # the run's warnings and the output stage's, as summary.json lists them
            warnings = json.loads((out / "summary.json").read_text())["warnings"]
        except (OSError, ValueError, KeyError):
            warnings = rec.warnings
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        f = rec.K[0, 0]
        print(f"{rec.n} frames posed, focal {f:.1f} px, {rec.timings['time_s']:.0f} s -> {out}", file=sys.stderr)
        if gt is not None:
            from flowmap.evaluation import evaluate_run

            _print_metrics(evaluate_run(out, gt), as_json=False)


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
    steps: int = typer.Option(500, help="Optimisation steps (fewer than a real run, so the demo takes a few minutes)."),
    overwrite: bool = typer.Option(True, help="Replace the output folder."),
    quiet: bool = typer.Option(False, help="No progress bars."),
    debug: bool = typer.Option(False, help="Show tracebacks."),
):
    """Render a synthetic scene with a known camera path, reconstruct it, print the errors."""
    with _guard(debug):
        from flowmap.api import reconstruct
        from flowmap.evaluation import evaluate_run
        from flowmap.frames import load_frames
        from flowmap.outputs import OutputConfig, write_outputs
        from flowmap.synthetic import make_scene, write_sequence

        print("rendering a synthetic scene ...", file=sys.stderr)
        scene = make_scene(n_frames=frames)
        with tempfile.TemporaryDirectory() as tmp:
            seq = write_sequence(scene, Path(tmp) / "scene")
            cfg = _run_config(None, 1, 43200, None, steps, "auto", 0, None, quiet)
            t0 = time.perf_counter()
            loaded = load_frames(seq / "images", cfg.frames)
            rec = reconstruct(loaded, cfg)
            rec.timings["time_s"] = time.perf_counter() - t0
            write_outputs(rec, loaded, out, OutputConfig(), summary={"source": "synthetic demo"}, overwrite=overwrite)
            gt_dir = out / "ground_truth"
            shutil.copytree(seq, gt_dir, ignore=shutil.ignore_patterns("images"))
        metrics = evaluate_run(out, gt_dir)
        print(f"outputs in {out}/ (ground truth in {gt_dir}/)")
        _print_metrics(metrics, as_json=False)


@app.command()
def bench(
    seq_dirs: list[Path] = typer.Argument(..., help="Sequence folders (images/, poses.txt, intrinsics.json)."),
    out: Path = typer.Option(Path("bench-out"), "-o", "--out", help="Results folder (bench.json)."),
    steps: Optional[int] = typer.Option(None, help="flowmap optimisation steps."),
    no_global: bool = typer.Option(False, help="Skip COLMAP's global mapper."),
    no_colmap: bool = typer.Option(False, help="Run flowmap only."),
    debug: bool = typer.Option(False, help="Show tracebacks."),
):
    """Run flowmap and COLMAP on the same frames; print a table and write bench.json."""
    with _guard(debug):
        from flowmap.bench import run_bench

        cfg = _run_config(None, 1, 43200, None, steps, "auto", 0, None, quiet=True)
        mappers = ("incremental",) if no_global else ("incremental", "global")
        results = run_bench(seq_dirs, out, cfg, mappers=mappers, colmap=not no_colmap)
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
    with _guard(debug):
        from flowmap.outputs.viewer import view as serve

        serve(out, host=host, port=port)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
