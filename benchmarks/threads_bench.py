"""Descent time with ``--threads 2``, ``--threads 1`` and no ``--threads`` (the idle cores,
:mod:`flowmap.cores`), first while another process spins on one core, then on an idle
machine. Prints one line per run (the thread count the run used, seconds of the descent
and of the whole run, from its ``summary.json``).

    python benchmarks/threads_bench.py ../shared/data/fountain-P11 --out /tmp/threads
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def one(seq: Path, out: Path, extra: list[str], steps: int) -> dict:
    """Run flowmap (no refinement) and return its summary.json."""
    cmd = ["flowmap", "run", str(seq / "images"), "-o", str(out), "--steps", str(steps), "--refine", "none", "--quiet"]
    subprocess.run(cmd + extra, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seq", type=Path, help="sequence folder (images/)")
    ap.add_argument("--out", type=Path, required=True, help="scratch folder (replaced)")
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    for load in ("busy", "idle"):
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "busy" else None
        time.sleep(1.0)
        try:
            for tag, name, extra in (
                ("--threads 2", "threads2", ["--threads", "2"]),
                ("--threads 1", "threads1", ["--threads", "1"]),
                ("no --threads", "auto", []),
            ):
                s = one(args.seq, args.out / f"{load}-{name}", extra, args.steps)
                t = s["timings"]
                print(f"{load:5s} {tag:13s} threads {s['settings']['threads']}  descent {t['optimize_loop_s']:6.1f} s  run {t['time_s']:6.1f} s", flush=True)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()


if __name__ == "__main__":
    main()
