"""Seconds per stage and peak memory of ``flowmap run`` against the number of frames.

One run per length (``--max-frames N``, the first N frames; the source's full length
last), each a separate process; the numbers come from its ``summary.json`` (stage
timings and ``peak_memory_mb``, the process's peak resident memory) and the size of
its output folder. Prints a Markdown table (per frame: seconds and MB) for the README.

    python benchmarks/length_scaling.py ../shared/data/tum-rpy-long/images --out /tmp/scaling
    python benchmarks/length_scaling.py room.mp4 --out /tmp/scaling --keyframes auto --lengths 120 240 480

Extra ``flowmap run`` options follow ``--``, e.g. ``-- --threads 2``; ``--command``
replaces ``flowmap run`` by another command taking the same arguments.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
from pathlib import Path

STAGES = ("keyframes_s", "frames_s", "correspondences_s", "optimization_s", "refine_s", "register_s", "outputs_s")
LABELS = {"keyframes_s": "scan", "frames_s": "decode"}  # column names where the timing key would repeat "keyframes"
"""The top-level stages of ``summary.json["timings"]`` (see :mod:`flowmap.pipeline`)."""


def folder_mb(path: Path) -> float:
    """Size of the files under ``path`` in MB."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def one(source: Path, out: Path, frames: int | None, keyframes: str, extra: list[str], command: str = "flowmap run") -> dict:
    """One ``flowmap run`` (nice'd by the caller if wanted); returns its summary.json
    with ``out_mb``, the size of its output folder."""
    cmd = [*shlex.split(command), str(source), "-o", str(out), "--keyframes", keyframes, "--quiet", "--overwrite"]
    if frames is not None:
        cmd += ["--max-frames", str(frames)]
    subprocess.run(cmd + extra, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "summary.json").read_text())
    summary["out_mb"] = folder_mb(out)
    return summary


def row(summary: dict) -> str:
    """A table row: frames, keyframes, seconds per stage, total and per frame, peak MB and per frame, OUT MB."""
    t = summary["timings"]
    n = summary["frames_posed"] + len(summary["unregistered_frames"])
    stages = " | ".join(f"{t.get(k, 0.0):.1f}" for k in STAGES)
    total, peak = summary["time_s"], summary["peak_memory_mb"]
    return (
        f"| {n} | {summary['n_keyframes']} | {stages} | {total:.1f} | {total / n:.3f} | {peak:.0f} | {peak / n:.1f} | "
        f"{summary['out_mb']:.0f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="a video or an image folder")
    ap.add_argument("--out", type=Path, required=True, help="scratch folder (replaced)")
    ap.add_argument("--lengths", type=int, nargs="*", default=[60, 120], help="frame counts before the full length")
    ap.add_argument("--keyframes", default="all", help="--keyframes of every run (default all: every frame reconstructed)")
    ap.add_argument("--command", default="flowmap run", help="the command that runs flowmap (default: flowmap run)")
    ap.add_argument("extra", nargs="*", help="further flowmap run options (after --)")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    head = " | ".join(LABELS.get(s, s.removesuffix("_s")) + " s" for s in STAGES)
    print(f"| frames | keyframes | {head} | total s | s/frame | peak MB | MB/frame | OUT MB |")
    print("|" + " --- |" * (len(STAGES) + 7))
    for n in [*args.lengths, None]:
        summary = one(args.source, args.out / f"n{n or 'all'}", n, args.keyframes, args.extra, args.command)
        print(row(summary), flush=True)


if __name__ == "__main__":
    main()
