"""flowmap vs COLMAP on the same frames, one after the other in one process.

Usage (same behaviour as ``flowmap bench``):

    python benchmarks/compare_colmap.py ../shared/data/*/ --out bench-out
    python benchmarks/compare_colmap.py ../shared/data/fox --steps 200 --mappers incremental
    python benchmarks/compare_colmap.py ../shared/data/*/ --no-flowmap   # COLMAP only

Prints a table (wall seconds, peak resident memory, registered frames, ate_paper, focal
error, flowmap / COLMAP time and ATE ratios) and writes ``OUT/bench.json``; see
:func:`flowmap.bench.run_bench`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flowmap.baseline import ColmapConfig
from flowmap.bench import run_bench
from flowmap.errors import FlowmapError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("seq_dirs", nargs="+", type=Path, help="sequence folders: images/, poses.txt, intrinsics.json")
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="results folder (bench.json, outputs)")
    parser.add_argument(
        "--mappers", default="incremental,global", help="COLMAP mappers, comma-separated: incremental,global"
    )
    parser.add_argument("--no-colmap", action="store_true", help="run flowmap only")
    parser.add_argument("--no-flowmap", action="store_true", help="run COLMAP only")
    parser.add_argument("--matcher", default="auto", help="COLMAP matcher: auto, sequential or exhaustive")
    parser.add_argument("--colmap-threads", type=int, default=-1, help="CPU threads COLMAP may use (-1: all)")
    parser.add_argument("--steps", type=int, default=None, help="flowmap optimisation steps (default: flowmap's)")
    parser.add_argument("--device", default="auto", help="flowmap device: auto, cpu or cuda")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from flowmap.api import RunConfig

    config = RunConfig(device=args.device, progress=False)
    if args.steps is not None:
        config.optim.steps = args.steps
    mappers = tuple(m.strip() for m in args.mappers.split(",") if m.strip())
    colmap_config = ColmapConfig(matcher=args.matcher, num_threads=args.colmap_threads)
    try:
        results = run_bench(
            args.seq_dirs,
            args.out,
            config,
            mappers=mappers,
            colmap=not args.no_colmap,
            colmap_config=colmap_config,
            flowmap=not args.no_flowmap,
        )
    except FlowmapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(results["table"])
    print(f"\nwrote {args.out / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
