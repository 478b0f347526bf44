"""Measure the refinement stage (flowmap.refine) before/after on the shared sequences.

For each sequence folder (shared layout: images/, poses.txt, intrinsics.json) it loads a
FlowMap start from a run folder written by ``flowmap run`` (poses.txt, intrinsics.json,
depth/NNNNNN.npy), runs :func:`flowmap.refine.refine` on the input images and prints
ATE (paper convention), focal error and RPE before/after against ground truth, with
seconds per sub-step. JSON records go to ``--log``.

    python benchmarks/refine_eval.py /work/shared/data/fox --runs /work/runs/start300-{seq}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def load_start(run_dir: Path):
    """(names, c2w (N,4,4), K (3,3), depth (N,h,w), input (H, W)) of a flowmap run folder."""
    from flowmap.evaluation import read_ground_truth

    names, c2w, intr = read_ground_truth(run_dir)
    K = np.array([[intr["fx"], 0, intr["cx"]], [0, intr["fy"], intr["cy"]], [0, 0, 1]], dtype=np.float64)
    files = sorted((run_dir / "depth").glob("*.npy"))
    depth = np.stack([np.load(f) for f in files]).astype(np.float32)
    if len(files) != len(names):
        raise SystemExit(f"{run_dir}: {len(files)} depth maps for {len(names)} poses")
    return names, c2w, K, depth, (int(intr["height"]), int(intr["width"]))


def load_images(seq: Path, names: list[str]) -> np.ndarray:
    from flowmap.frames import read_image

    return np.stack([read_image(seq / "images" / n) for n in names])


def metrics(c2w, K, gt_c2w, gt_intr, width):
    from flowmap.evaluation import evaluate

    f_gt = 0.5 * (gt_intr["fx"] + gt_intr["fy"]) * width / gt_intr["width"]
    return evaluate(c2w, gt_c2w, 0.5 * (K[0, 0] + K[1, 1]), f_gt)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sequences", nargs="+", type=Path)
    ap.add_argument("--runs", default="/work/runs/start300-{seq}", help="run folder pattern, {seq} = folder name")
    ap.add_argument("--log", type=Path, default=Path("/work/runs/refine-logs/refine_eval.jsonl"))
    ap.add_argument("--set", action="append", default=[], help="RefineConfig override key=value (repeatable)")
    args = ap.parse_args(argv)

    from flowmap.evaluation import match_frames, read_ground_truth
    from flowmap.refine import RefineConfig, refine

    overrides = {}
    defaults = RefineConfig()
    for kv in args.set:
        k, v = kv.split("=", 1)
        default = getattr(defaults, k)
        if v == "None":
            overrides[k] = None
        elif isinstance(default, bool):
            overrides[k] = v.lower() in ("1", "true", "yes")
        elif default is None:  # an optional setting: a number if it reads as one
            try:
                overrides[k] = int(v)
            except ValueError:
                try:
                    overrides[k] = float(v)
                except ValueError:
                    overrides[k] = v
        else:
            overrides[k] = type(default)(v)
    cfg = RefineConfig(**overrides)
    rows = []
    for seq in args.sequences:
        run = Path(args.runs.format(seq=seq.name))
        names, c2w, K, depth, (H, W) = load_start(run)
        gt_names, gt_c2w, gt_intr = read_ground_truth(seq)
        idx, _ = match_frames(names, gt_names)
        if any(i is None for i in idx) or len(idx) != len(names):
            raise SystemExit(f"{seq}: run frames do not match the ground truth")
        c2w, names = c2w[idx], [names[i] for i in idx]
        depth = depth[idx]
        images = load_images(seq, names)
        t0 = time.perf_counter()
        res = refine(images, c2w, K, depth, cfg, progress=True)
        wall = time.perf_counter() - t0
        before = metrics(c2w, K, gt_c2w, gt_intr, W)
        posed = np.ones(len(names), bool) if res.registered is None else res.registered
        after = metrics(res.c2w[posed], res.K, gt_c2w[posed], gt_intr, W) if posed.any() else {k: float("nan") for k in before}
        row = {
            "seq": seq.name,
            "config": overrides,
            "applied": res.applied,
            "before": before,
            "after": after,
            "wall_s": wall,
            "K_after": res.K,
            "stats": res.stats,
            "warnings": res.warnings,
        }
        rows.append(row)
        args.log.parent.mkdir(parents=True, exist_ok=True)
        with args.log.open("a") as fh:
            fh.write(json.dumps(row, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)) + "\n")
        for w in res.warnings:
            print(f"  warning: {w}", file=sys.stderr)

    hdr = f"{'sequence':14s} {'ATE before':>11s} {'ATE after':>10s} {'focal% b':>9s} {'focal% a':>9s} {'RPEdeg b':>9s} {'RPEdeg a':>9s} {'reinit':>6s} {'applied':>7s} {'depth agr b/a':>14s}  seconds"
    print(hdr)
    for r in rows:
        b, a, s = r["before"], r["after"], r["stats"]
        secs = " ".join(f"{k.removesuffix('_s')}={v:.1f}" for k, v in s.get("seconds", {}).items())
        agr = f"{s.get('depth_agreement_before', float('nan')):.3f}/{s.get('depth_agreement_after', float('nan')):.3f}/{s.get('depth_agreement_field_heldout', float('nan')):.3f}"
        print(
            f"{r['seq']:14s} {b['ate_paper']:11.5f} {a['ate_paper']:10.5f} {100*b['focal_rel_error']:9.2f} {100*a['focal_rel_error']:9.2f}"
            f" {b['rpe_rot_deg']:9.3f} {a['rpe_rot_deg']:9.3f} {str(s.get('reinit', False)):>6s} {str(r['applied']):>7s} {agr:>14s}  {secs}"
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
