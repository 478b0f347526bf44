"""``flowmap batch`` against a loop of single ``flowmap run`` calls, in one benchmark.

For the given sequence folders (shared layout: SEQ/images, poses.txt, intrinsics.json):

1. one ``flowmap run SEQ/images --gt SEQ`` per sequence, one after the other, default
   settings and threads (what a user without ``batch`` would do), each timed as a whole
   process (the batch finds the same ground truth beside each image folder);
2. one ``flowmap batch SEQ/images ... --jobs J`` over all of them, timed as a whole process;
3. for the sequences named by ``--identical``: ``flowmap run --threads T`` with the
   batch's threads per task, and a byte comparison of every output file except the two
   that record timings (``summary.json``, ``report.html``) with the batch's output; these
   runs' times give a second ratio, batch / sum of single runs with the same threads
   (``--identical-only`` adds sequences to an earlier call's comparison).

It prints the table and the ratio batch / sum of singles, and writes ``bench-batch.json``.

    python benchmarks/batch_bench.py ../shared/data/*/ --out /tmp/batch-bench --jobs 2 \\
        --identical fountain-P11 tum-office llff-fern
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

TIMING_FILES = ("summary.json", "report.html")


def _flowmap(*args: str) -> tuple[float, int, str]:
    """(wall seconds, exit code, last stderr lines) of one flowmap command."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "flowmap.cli", *args], capture_output=True, text=True)
    return time.perf_counter() - t0, res.returncode, "\n".join(res.stderr.strip().splitlines()[-3:])


def compare_outputs(a: Path, b: Path) -> list[str]:
    """Files that differ (or exist on one side only) between two run folders, timing files excluded."""
    files = {p.relative_to(a) for p in a.rglob("*") if p.is_file()} | {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    diff = []
    for rel in sorted(files):
        if rel.name in TIMING_FILES:
            continue
        pa, pb = a / rel, b / rel
        if not (pa.is_file() and pb.is_file()) or pa.read_bytes() != pb.read_bytes():
            diff.append(str(rel))
    return diff


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sequences", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--identical", nargs="*", default=[], help="sequence names to compare byte for byte")
    ap.add_argument("--flags", default="", help="extra flowmap flags for every command, e.g. '--steps 20' (a smoke test)")
    ap.add_argument("--identical-only", action="store_true",
                    help="only the byte comparisons, against the batch output an earlier call left in --out (adds to its bench-batch.json)")
    args = ap.parse_args(argv)
    EXTRA = shlex.split(args.flags)

    seqs = [s.resolve() for s in args.sequences]
    out = args.out.resolve()
    report: dict = {"jobs": args.jobs, "flags": EXTRA, "single": {}, "identical": {}}

    if args.identical_only:
        report = json.loads((out / "bench-batch.json").read_text())
        seqs = [s for s in seqs if s.name in args.identical]
        rc = report["batch"]["rc"]
        batch = report["batch"]["summary"]
        return _identical(seqs, args.identical, out, batch, EXTRA, report, rc)

    for seq in seqs:
        wall, rc, err = _flowmap("run", str(seq / "images"), "-o", str(out / "single" / seq.name), "--gt", str(seq), "--overwrite", "--quiet", *EXTRA)
        report["single"][seq.name] = {"wall_s": wall, "rc": rc, "stderr": err}
        print(f"single {seq.name}: {wall:.1f} s (rc {rc})", flush=True)

    wall, rc, err = _flowmap("batch", *[str(s / "images") for s in seqs], "-o", str(out / "batch"), "--jobs", str(args.jobs),
                             "--overwrite", "--quiet", *EXTRA)
    batch = json.loads((out / "batch" / "batch.json").read_text())
    report["batch"] = {"wall_s": wall, "rc": rc, "stderr": err, "summary": batch}
    print(f"batch: {wall:.1f} s (rc {rc}), {batch['done']} done, {batch['failed']} failed, threads {batch['threads']}", flush=True)
    return _identical(seqs, args.identical, out, batch, EXTRA, report, rc)


def _identical(seqs, names, out, batch, EXTRA, report, rc) -> int:
    """Byte comparisons with single runs at the batch's threads; the table; bench-batch.json."""
    for name in names:
        seq = next(s for s in seqs if s.name == name)
        ref = out / "single-threads" / name
        t, rc_one, err = _flowmap("run", str(seq / "images"), "-o", str(ref), "--gt", str(seq), "--overwrite", "--quiet", "--threads", str(batch["threads"]), *EXTRA)
        diff = compare_outputs(ref, out / "batch" / name) if rc_one == 0 else ["run failed: " + err]
        report["identical"][name] = {"wall_s": t, "differing_files": diff}
        print(f"identical {name}: {'yes' if not diff else 'NO: ' + ', '.join(diff[:5])}", flush=True)

    total = sum(r["wall_s"] for r in report["single"].values())
    report["sum_single_s"] = total
    report["ratio"] = report["batch"]["wall_s"] / total
    same = report["identical"]
    if set(same) == set(report["single"]):  # every sequence also ran alone with the batch's threads
        report["sum_single_same_threads_s"] = sum(v["wall_s"] for v in same.values())
        report["ratio_same_threads"] = report["batch"]["wall_s"] / report["sum_single_same_threads_s"]
    by = {r["name"]: r for r in batch["sources"]}
    print(f"\n{'sequence':<14} {'single s':>9} {'single T s':>11} {'in batch s':>11} {'status':>8} identical")
    for name, single in report["single"].items():
        r = by.get(name, {})
        t_in, t_same = r.get("time_s"), same.get(name, {}).get("wall_s")
        fmt = lambda t: "-" if t is None else f"{t:.1f}"  # noqa: E731
        ident = "-" if name not in same else ("yes" if not same[name]["differing_files"] else "NO")
        print(f"{name:<14} {single['wall_s']:>9.1f} {fmt(t_same):>11} {fmt(t_in):>11} {r.get('status', '-'):>8} {ident}")
    print(f"sum of single runs {total:.1f} s (default threads); batch --jobs {report['jobs']} x {batch['threads']} threads "
          f"{report['batch']['wall_s']:.1f} s; ratio {report['ratio']:.3f}")
    if "ratio_same_threads" in report:
        print(f"sum of single runs with the batch's {batch['threads']} thread(s) {report['sum_single_same_threads_s']:.1f} s; "
              f"ratio {report['ratio_same_threads']:.3f}")
    (out / "bench-batch.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0 if rc == 0 and all(not v["differing_files"] for v in report["identical"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
