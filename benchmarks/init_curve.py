"""Refined accuracy against gradient steps, from scratch (``--init none``) and from the
shipped checkpoint (``--init default``), with COLMAP incremental on the same frames, in one
process (issue 13's measurement; issue 12's step curve).

For each sequence folder (shared layout) COLMAP incremental runs once, then flowmap for
every (init, steps) pair with the default refinement; each row gives the run's time, the
FlowMap cameras' ATE before the refinement, the refined ATE and focal error, and whether
the refinement issue's bar holds (ATE <= COLMAP's, focal error <= max(1 %, COLMAP's),
every frame posed).

    python benchmarks/init_curve.py ../shared/data/{fox,tum-office,llff-fern} \\
        --none 25,50,100,200 --default 0,25,50,100 --out /work/runs/init-curve
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path


def _steps(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sequences", nargs="+", type=Path)
    ap.add_argument("--none", type=_steps, default=[25, 50, 100, 200], help="step counts from scratch")
    ap.add_argument("--default", type=_steps, default=[0, 25, 50, 100], help="step counts from the shipped checkpoint")
    ap.add_argument("--init-path", default="default", help="checkpoint for the pretrained rows (default: the shipped one)")
    ap.add_argument("--out", type=Path, default=Path("init-curve"))
    ap.add_argument("--set", action="append", default=[], help="OptimConfig override key=value for the pretrained rows")
    args = ap.parse_args(argv)

    from flowmap.baseline import ColmapConfig, list_images
    from flowmap.bench import _run_colmap_row, _run_flowmap, _stderr
    from flowmap.config import RunConfig

    args.out.mkdir(parents=True, exist_ok=True)
    overrides = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        overrides[k] = type(getattr(RunConfig().optim, k))(v)
    rows = []
    for seq in args.sequences:
        name = seq.resolve().name
        names = list_images(seq / "images")
        colmap = _run_colmap_row(seq, name, args.out / name / "colmap", ColmapConfig(mapper="incremental"), names, _stderr)
        rows.append(colmap)
        runs = [("none", s) for s in args.none] + [(args.init_path, s) for s in args.default]
        for init, steps in runs:
            cfg = RunConfig(progress=False, init=init)
            cfg.optim.steps = steps
            if init != "none":
                cfg.optim = replace(cfg.optim, **overrides)
            _stderr(f"[{name}] init {init}, {steps} steps ...")
            fm, _ = _run_flowmap(seq, name, args.out / name / "flowmap", cfg, None, _stderr)
            refined = fm[0]
            before = fm[1] if len(fm) > 1 else {}
            row = {
                "sequence": name, "init": init, "steps": steps, "time_s": refined.get("time_s"),
                "ate_before": before.get("ate_paper"), "focal_before": before.get("focal_rel_error"),
                "ate": refined.get("ate_paper"), "focal": refined.get("focal_rel_error"),
                "registered": refined.get("registered"), "n_frames": refined.get("n_frames"),
                "colmap_ate": colmap.get("ate_paper"), "colmap_focal": colmap.get("focal_rel_error"),
                "colmap_s": colmap.get("time_s"), "error": refined.get("error"),
                "timings": refined.get("timings"),
            }
            ok = (
                row["ate"] is not None and row["colmap_ate"] is not None
                and row["ate"] <= row["colmap_ate"] and row["focal"] <= max(0.01, row["colmap_focal"])
                and row["registered"] == row["n_frames"]
            )
            row["bar"] = bool(ok)
            rows.append(row)
            with (args.out / "init-curve.json").open("w") as fh:
                json.dump(rows, fh, indent=1, default=str)
            print(_line(row), flush=True)
    print("\nsequence       init     steps   time s  COLMAP s  ATE before  ATE after  COLMAP ATE  focal %  COLMAP %  bar")
    for r in rows:
        if "init" in r:
            print(_line(r))
    return 0


def _line(r: dict) -> str:
    def f(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    init = "default" if r["init"] not in ("none",) else "none"
    return (
        f"{r['sequence']:14s} {init:8s} {r['steps']:5d} {f(r['time_s'], '8.1f')} {f(r['colmap_s'], '9.1f')} "
        f"{f(r['ate_before'], '11.5f')} {f(r['ate'], '10.6f')} {f(r['colmap_ate'], '11.6f')} "
        f"{f(100 * r['focal'] if r['focal'] is not None else None, '8.2f')} "
        f"{f(100 * r['colmap_focal'] if r['colmap_focal'] is not None else None, '9.2f')}  {'yes' if r['bar'] else 'no'}"
    )


if __name__ == "__main__":
    sys.exit(main())
