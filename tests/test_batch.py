"""``flowmap batch`` on Ray (flowmap.batch): a local embedded Ray, a cluster started with
``ray start --head`` and reached by address, a corrupt source among good ones, a batch
killed mid-way and resumed, and outputs identical to single runs.

The sources are tiny synthetic sequences (6 frames, few steps, no refinement) so that
the tests measure the batch machinery, not the reconstruction.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from flowmap.batch import BatchConfig, read_sources, run_batch
from flowmap.config import RunConfig
from flowmap.errors import InputError
from flowmap.pipeline import run
from flowmap.synthetic import make_scene, write_sequence

FLAGS = ["--steps", "15", "--pixel-budget", "1536", "--refine", "none", "--quiet"]
OUTPUT_FILES = ("poses.txt", "intrinsics.json", "transforms.json", "points.ply", "summary.json", "report.html")


def _config(steps: int = 15) -> RunConfig:
    cfg = RunConfig(refine=None, progress=False)
    cfg.optim.steps = steps
    cfg.frames.pixel_budget = 1536
    return cfg


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Two good synthetic sequences (shared layout, so ground truth is found) and a folder of corrupt images."""
    root = tmp_path_factory.mktemp("batch-sources")
    seqs = {}
    for name, seed in (("orbit-a", 1), ("orbit-b", 2)):
        seqs[name] = write_sequence(make_scene(n_frames=6, height=48, width=64, seed=seed), root / name) / "images"
    bad = root / "broken" / "images"
    bad.mkdir(parents=True)
    for k in range(4):
        (bad / f"{k:06d}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    seqs["broken"] = bad
    return seqs


def _complete(out: Path) -> bool:
    return all((out / f).is_file() for f in OUTPUT_FILES) and len(list((out / "depth").glob("*.npy"))) == 6


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowmap.cli", *args], capture_output=True, text=True, env=env, **kw)


def test_local_batch_with_a_corrupt_source(sources, tmp_path):
    """Embedded Ray, 2 jobs x 1 thread: the good sources finish (metrics from their ground
    truth), the corrupt one fails with the one-line error `run` gives, a missing one is a
    failed source too (the others run), and each output is identical to a single
    `flowmap run` with the same settings and seed."""
    out = tmp_path / "batch"
    missing = tmp_path / "gone" / "clip.mp4"
    items = [sources["orbit-a"], sources["broken"], missing, sources["orbit-b"]]
    summary = run_batch(items, out, _config(), BatchConfig(jobs=2, threads=1, progress=False))
    by = {r["name"]: r for r in summary["sources"]}
    assert (summary["done"], summary["failed"], summary["jobs"], summary["threads"]) == (2, 2, 2, 1)
    assert by["clip.mp4"]["status"] == "failed" and by["clip.mp4"]["error"] == f"source not found: {missing}; check the path"
    assert by["broken"]["status"] == "failed" and "\n" not in by["broken"]["error"]
    assert "broken" in by["broken"]["error"] and "Traceback" not in by["broken"]["error"]
    assert not (out / "broken").exists() and not (out / "clip.mp4").exists()
    for name in ("orbit-a", "orbit-b"):
        assert by[name]["status"] == "done" and by[name]["frames"] == 6
        assert _complete(out / name)
        assert np.isfinite(by[name]["metrics"]["ate_paper"])
    assert json.loads((out / "batch.json").read_text())["sources"] == json.loads(json.dumps(summary["sources"], default=str))
    page = (out / "batch.html").read_text()
    assert 'href="orbit-a/report.html"' in page and "broken" in page

    single = tmp_path / "single"
    run(sources["orbit-a"], single, replace(_config(), threads=1))
    for f in ("poses.txt", "intrinsics.json", "transforms.json", "points.ply"):
        assert (single / f).read_bytes() == (out / "orbit-a" / f).read_bytes(), f
    for f in sorted((single / "depth").glob("*.npy")):
        np.testing.assert_array_equal(np.load(f), np.load(out / "orbit-a" / "depth" / f.name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_batch_on_a_cluster_by_address(sources, tmp_path):
    """`ray start --head` on 127.0.0.1 (token authentication, as Ray recommends), then
    `flowmap batch --address` submits to it with the same token."""
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    start = subprocess.run(
        ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        out = tmp_path / "cluster"
        res = _cli("batch", str(sources["orbit-a"]), "-o", str(out), "--address", f"127.0.0.1:{port}", "--threads", "1",
                   *FLAGS, env=env, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        summary = json.loads((out / "batch.json").read_text())
        assert summary["address"] == f"127.0.0.1:{port}" and summary["done"] == 1
        assert _complete(out / "orbit-a")
        assert "orbit-a" in res.stdout and "1 done" in res.stdout
    finally:
        subprocess.run(["ray", "stop", "--force"], capture_output=True, env=env, timeout=120)


def test_killed_batch_resumes_to_completion(sources, tmp_path):
    """SIGTERM while the second source runs: the first output is complete, the second is
    absent (only its checkpoint cache), nothing is half-written; the same command with
    --resume skips the first and finishes the second; without --resume it is refused."""
    out = tmp_path / "killed"
    args = ["batch", str(sources["orbit-a"]), str(sources["orbit-b"]), "-o", str(out), "--jobs", "1", "--threads", "1",
            "--steps", "400", "--pixel-budget", "1536", "--refine", "none", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "flowmap.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    done = []
    while time.time() < deadline and proc.poll() is None:
        if (out / "batch.json").exists():
            done = [r["name"] for r in json.loads((out / "batch.json").read_text())["sources"] if r["status"] == "done"]
            if done:
                break
        time.sleep(0.5)
    assert proc.poll() is None and len(done) == 1, "the batch should be killed while its second source runs"
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err
    first, second = done[0], ({"orbit-a", "orbit-b"} - set(done)).pop()
    assert _complete(out / first)
    assert not (out / second).exists()
    assert not [p for p in out.iterdir() if ".tmp-" in p.name or ".old-" in p.name]

    refused = _cli(*args)
    assert refused.returncode == 2 and "--resume" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1

    resumed = _cli(*args, "--resume", timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((out / "batch.json").read_text())
    status = {r["name"]: r["status"] for r in summary["sources"]}
    assert status == {first: "skipped", second: "done"}
    assert _complete(out / first) and _complete(out / second)


def test_without_ray_one_line(sources, tmp_path, monkeypatch):
    """No Ray installed: one line that says how to install it."""
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputError, match=r"pip install -e '\.\[batch\]'"):
        run_batch([sources["orbit-a"]], tmp_path / "o", _config(), BatchConfig(progress=False))


def test_sources_from_a_list_file_and_names(sources, tmp_path):
    """A text file of sources (relative paths, comments, a ground-truth column); frame
    folders named `images` take their sequence's name; duplicates and missing paths are refused."""
    listing = tmp_path / "sources.txt"
    rel = os.path.relpath(sources["orbit-b"], tmp_path)
    listing.write_text(f"# two sequences\n{sources['orbit-a']}\n\n{rel}\t{sources['orbit-b'].parent}\n")
    got = read_sources([listing])
    assert [s.name for s in got] == ["orbit-a", "orbit-b"]
    assert got[0].gt == sources["orbit-a"].parent and got[1].gt == sources["orbit-b"].parent
    with pytest.raises(InputError, match="listed twice"):
        read_sources([listing, sources["orbit-a"]])
    assert [s.path for s in read_sources([tmp_path / "nope.mp4"])] == [tmp_path / "nope.mp4"]  # fails in the batch
    (tmp_path / "x" / "clip").mkdir(parents=True)
    (tmp_path / "y" / "clip").mkdir(parents=True)
    assert [s.name for s in read_sources([tmp_path / "x" / "clip", tmp_path / "y" / "clip"])] == ["x-clip", "y-clip"]


def test_list_files_take_any_path_and_a_tab_before_the_ground_truth(sources, tmp_path):
    """A list line is one path, spaces and '#' included (one space or two: never split);
    a tab separates the ground-truth folder; only whole lines starting with '#' are comments."""
    paths = [tmp_path / "my clip" / "images", tmp_path / "a  b # c", tmp_path / " lead"]
    for path in paths:
        path.mkdir(parents=True)
    gt = sources["orbit-a"].parent
    listing = tmp_path / "list.txt"
    listing.write_text(f"# comment\n{paths[0]}\n{paths[1]}\t{gt}\n  # indented comment\n\n{paths[2].name}\n")
    got = read_sources([listing])
    assert [s.path for s in got] == [paths[0], paths[1], tmp_path / "lead"]  # relative to the list, stripped
    assert [s.gt for s in got] == [None, gt, None]
    assert [s.path for s in read_sources([paths[0]])] == [paths[0]]  # as on the command line
    listing.write_text(f"{paths[0]}\t{gt}\t{gt}\n")
    with pytest.raises(InputError, match="list.txt:1: expected 'SOURCE' or 'SOURCE<TAB>GT_DIR'"):
        read_sources([listing])


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_an_unreachable_address_is_refused_at_once(sources, tmp_path, scheme):
    """Nothing listens at --address: one line within seconds (not Ray's minutes of retries),
    exit 2, and nothing written under OUT_ROOT."""
    from typer.testing import CliRunner

    from flowmap.cli import app

    address = f"{scheme}127.0.0.1:{_free_port()}"  # nothing listens there
    out = tmp_path / "root"
    t0 = time.monotonic()
    result = CliRunner().invoke(app, ["batch", str(sources["orbit-a"]), "-o", str(out), "--address", address, *FLAGS])
    assert time.monotonic() - t0 < 60
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, (result.stderr, result.exception)
    assert lines[0].startswith(f"error: cannot reach Ray at {address}: ") and "ray start --head" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no OUT_ROOT, no lock file


def test_no_batch_json_before_ray_is_connected(sources, tmp_path, monkeypatch):
    """ray.init failing at a reachable address (e.g. Ray Client's extra missing): one line,
    and OUT_ROOT holds no batch.json."""
    import ray

    def refuse(*args, **kwargs):
        raise ConnectionError("Ray Client requires pip package `ray[client]`")

    monkeypatch.setattr(ray, "init", refuse)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"ray://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(InputError, match=r"cannot start or reach Ray at ray://.*ray\[client\]"):
            run_batch([sources["orbit-a"]], tmp_path / "root", _config(), BatchConfig(address=address, progress=False))
    assert not (tmp_path / "root").exists()
