"""`flowmap run` on bad, odd and degenerate input: exit code 2, one line, nothing left behind.

Drives the CLI in-process with typer's CliRunner (so available memory, the optimiser or
a writer can be monkeypatched) and, for a process killed mid-write, in a subprocess.
Tiny inputs are written to tmp_path. Only one test runs the real optimiser (5 steps at
48 x 64 pixels); the others stop before it or replace it with :func:`fake_fit` / :func:`fake_solve`,
which returns a well-formed reconstruction at once.
"""

from __future__ import annotations

import json
import os
import math
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import flowmap.memory
import flowmap.outputs
import flowmap.pipeline
from flowmap.cli import app
from flowmap.synthetic import make_scene
from flowmap.optimize import Fit
from flowmap.types import Solution

FAST = ["--steps", "5", "--pixel-budget", "3072", "--quiet"]


def run(*args: str | Path):
    return CliRunner().invoke(app, ["run", *map(str, args)])


def leftovers(out: Path) -> list[str]:
    """Whatever a run left beside (or as) OUT: OUT itself, OUT.tmp-*, OUT.cache, OUT.old-*."""
    return sorted(p.name for p in out.parent.iterdir() if p.name == out.name or p.name.startswith(out.name + "."))


def assert_refused(result, out: Path, *fragments: str) -> str:
    """Exit code 2, one ``error: ...`` line on stderr containing ``fragments``, nothing left at OUT."""
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert leftovers(out) == [], leftovers(out)
    return lines[0]


@pytest.fixture(scope="module")
def base_image() -> np.ndarray:
    """(96, 128, 3) uint8 textured frame of the synthetic scene."""
    return make_scene(n_frames=2, height=96, width=128).images[0]


@pytest.fixture(scope="module")
def moving(tmp_path_factory) -> Path:
    """Folder of 6 frames of the synthetic orbit (the camera moves a few pixels per frame)."""
    scene = make_scene(n_frames=6, height=48, width=64)
    folder = tmp_path_factory.mktemp("moving") / "images"
    folder.mkdir()
    for name, img in zip(scene.names, scene.images):
        Image.fromarray(img).save(folder / name)
    return folder


def shifted(image: np.ndarray, dx: float) -> np.ndarray:
    M = np.float32([[1, 0, dx], [0, 1, 0.5 * dx]])
    h, w = image.shape[:2]
    return cv2.warpAffine(image, M, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def fake_fit(data, cfg, image_size, focal_px=None, **kwargs) -> Fit:
    """Stand-in for flowmap.optimize.fit: no model, focal sqrt(HW) (or ``cfg.fake_focal``)."""
    H, W = image_size
    f = focal_px if focal_px is not None else float(getattr(cfg, "fake_focal", math.sqrt(H * W)))
    return Fit(model=SimpleNamespace(image_size=tuple(image_size)), focal_px=f)


def fake_solve(model, data, focal_px, *args, **kwargs) -> Solution:
    """Stand-in for flowmap.solve.solve: a camera sliding along x, depth 1."""
    (n, (h, w)), (H, W), f = (data.n, data.shape), model.image_size, focal_px
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, 0, 3] = 0.05 * np.arange(n)
    K = np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]])
    return Solution(c2w, K, np.ones((n, h, w), np.float32), np.ones((n - 1, h, w), np.float32), (H, W), {"flow": 0.0, "tracks": 0.0})


def fake_finetune(model, data, c2w, K, points_xyz, config, progress=False, depth_before=None, observed=None):
    """Stand-in for flowmap.finetune.finetune_depth (the fake fit has no network): the depth as given."""
    from flowmap.finetune import FinetuneResult

    return FinetuneResult(np.asarray(depth_before, dtype=np.float32), {"steps": 0})


def fake_stages(monkeypatch, fit=fake_fit) -> None:
    """Replace the optimisation, the final solve and the depth fine-tuning of the pipeline
    by the fakes above (the refinement, when it runs, is real)."""
    monkeypatch.setattr(flowmap.pipeline, "fit", fit)
    monkeypatch.setattr(flowmap.pipeline, "solve", fake_solve)
    monkeypatch.setattr(flowmap.pipeline, "finetune_depth", fake_finetune)


# ----------------------------------------------------------------------------- paths and files


def test_missing_path(tmp_path):
    out = tmp_path / "OUT"
    assert_refused(run(tmp_path / "nope", "-o", out), out, "nope does not exist; give a video file or a folder of images")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "OUT"
    assert_refused(run(tmp_path / "empty", "-o", out), out, "empty contains no images", "give a folder of frames or a video")


def test_fewer_than_three_frames(tmp_path, base_image):
    folder = tmp_path / "two"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(base_image).save(folder / f"{i}.png")
    (folder / "readme.txt").write_text("stray file, ignored")
    out = tmp_path / "OUT"
    assert_refused(run(folder, "-o", out), out, "gives 2 usable frame(s); flowmap needs at least 3")


def test_unreadable_and_truncated_images(tmp_path, base_image):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(shifted(base_image, i)).save(folder / f"{i:03d}.png")
    data = (folder / "002.png").read_bytes()
    (folder / "002.png").write_bytes(data[: len(data) // 3])
    out = tmp_path / "OUT"
    assert_refused(run(folder, "-o", out), out, "cannot read image", "002.png", "truncated", "replace or remove it")
    (folder / "002.png").write_text("<html>a web page saved as .png</html>")
    assert_refused(run(folder, "-o", out), out, "002.png: not an image file Pillow can decode")


def test_truncated_video(tmp_path, base_image):
    import av

    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for i in range(20):
            for packet in stream.encode(av.VideoFrame.from_ndarray(shifted(base_image, i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    out = tmp_path / "OUT"
    assert_refused(run(path, "-o", out), out, "clip.mp4 is", "truncated", "re-export or re-download it")


def test_file_that_is_neither_image_nor_video(tmp_path):
    doc = tmp_path / "report.pdf"
    doc.write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 8)
    out = tmp_path / "OUT"
    assert_refused(run(doc, "-o", out), out, "cannot decode", "report.pdf as a video", "or a folder of images")
    single = tmp_path / "photo.jpg"
    Image.new("RGB", (32, 32)).save(single)
    assert_refused(run(single, "-o", out), out, "photo.jpg is a single image")


def test_frames_of_different_sizes_are_named(tmp_path, base_image):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(base_image).save(folder / f"{i:03d}.png")
    Image.fromarray(base_image[:80]).save(folder / "003.png")
    out = tmp_path / "OUT"
    assert_refused(run(folder, "-o", out), out, "frames differ in size: 1 of 5 are not 128x96 pixels: 003.png (128x80)")


def test_random_bytes_as_images_and_videos(tmp_path, base_image):
    rng = np.random.default_rng(1)
    out = tmp_path / "OUT"
    for case in range(4):
        folder = tmp_path / f"imgs{case}"
        folder.mkdir()
        for i in range(3):
            Image.fromarray(base_image).save(folder / f"{i}.jpg")
        (folder / "3.jpg").write_bytes(rng.bytes(int(rng.integers(1, 3000))))
        assert_refused(run(folder, "-o", out), out, "cannot read image", "3.jpg")
        video = tmp_path / f"v{case}.mov"
        video.write_bytes(rng.bytes(int(rng.integers(0, 3000))))
        assert_refused(run(video, "-o", out), out, f"v{case}.mov")


# ----------------------------------------------------------------------------- options and OUT


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_focal_must_be_positive_and_is_checked_first(tmp_path, value):
    out = tmp_path / "OUT"
    # the source does not even exist: the option is reported first, before any decoding
    assert_refused(run(tmp_path / "nope", "-o", out, "--focal", value), out, "--focal must be a positive number of pixels")


def test_focal_that_is_not_a_number(tmp_path):
    result = run(tmp_path / "nope", "-o", tmp_path / "OUT", "--focal", "wide")
    assert result.exit_code == 2 and "Invalid value for '--focal'" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "OUT").exists()


@pytest.mark.parametrize(
    "option, message",
    [
        (["--max-frames", "2"], "--max-frames must be at least 3"),
        (["--stride", "0"], "--stride must be 1 or more"),
        (["--pixel-budget", "0"], "--pixel-budget must be at least 256"),
        (["--steps", "-3"], "--steps must be >= 0, got -3"),
        (["--steps", "0", "--init", "none"], "runs the network feed-forward, which needs pretrained weights: use --init default"),
        (["--threads", "0"], "--threads must be at least 1, got 0"),
    ],
)
def test_frame_options_are_checked(tmp_path, moving, option, message):
    out = tmp_path / "OUT"
    assert_refused(run(moving, "-o", out, *option), out, message)


def test_non_empty_output_folder_is_refused_without_overwrite(tmp_path, moving):
    out = tmp_path / "OUT"
    out.mkdir()
    (out / "poses.txt").write_text("an earlier run")
    result = run(moving, "-o", out)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: output folder {out} exists and is not empty; choose another or pass --overwrite"
    assert [p.name for p in out.iterdir()] == ["poses.txt"] and (out / "poses.txt").read_text() == "an earlier run"
    assert leftovers(out) == ["OUT"]
    (tmp_path / "file").write_text("x")
    assert run(moving, "-o", tmp_path / "file").stderr.startswith("error: output path")


def test_output_folder_that_holds_the_input_is_refused(tmp_path, base_image):
    data = tmp_path / "data"
    images = data / "images"
    images.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(shifted(base_image, i)).save(images / f"{i}.png")
    for out in (images, data):
        result = run(images, "-o", out, "--overwrite")
        assert result.exit_code == 2 and "holds the input" in result.stderr, result.stderr
    assert sorted(p.name for p in images.iterdir()) == ["0.png", "1.png", "2.png"]


@pytest.mark.parametrize(
    "command, out_name",
    [("run", "afile/out"), ("train", "afile/w.pt"), ("batch", "afile"), ("batch", "afile/root")],
)
def test_output_path_below_a_file_is_refused_by_every_command(tmp_path, moving, command, out_name):
    """`-o afile/...` (run, train, batch): one line naming the file, exit 2, nothing created."""
    (tmp_path / "afile").write_text("x")
    out = tmp_path / out_name
    result = CliRunner().invoke(app, [command, str(moving), "-o", str(out), "--steps", "1", "--quiet"])
    assert result.exit_code == 2, (result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{tmp_path / 'afile'} is a file" in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"] and (tmp_path / "afile").read_text() == "x"


def test_missing_ground_truth_is_refused_before_any_work(tmp_path, moving, monkeypatch):
    """`--gt /nonexistent` fails before a frame is decoded (not after the reconstruction), leaving nothing."""

    def no_decoding(*args, **kwargs):
        raise AssertionError("frames decoded before --gt was checked")

    monkeypatch.setattr(flowmap.pipeline, "load_frames", no_decoding)
    out = tmp_path / "OUT"
    assert_refused(
        run(moving, "-o", out, "--gt", tmp_path / "nonexistent", *FAST), out,
        f"ground-truth folder {tmp_path / 'nonexistent'} does not exist",
    )


DISK_FULL = r"""
import resource, sys
sys.path.insert(0, {tests!r})
import flowmap.pipeline
from flowmap.cli import app
from test_inputs import fake_finetune, fake_fit, fake_solve

real_write = flowmap.pipeline.write_outputs

def write_on_a_full_disk(*args, **kwargs):
    # From here on no file may grow past {limit} bytes: the real writers get EFBIG (SIGXFSZ is ignored by Python).
    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return real_write(*args, **kwargs)

flowmap.pipeline.fit = fake_fit
flowmap.pipeline.solve = fake_solve
flowmap.pipeline.finetune_depth = fake_finetune
flowmap.pipeline.write_outputs = write_on_a_full_disk
app(["run", {source!r}, "-o", {out!r}, "--steps", "5", "--pixel-budget", "3072", "--refine", "none", "--quiet"])
"""


def test_outputs_that_do_not_fit_on_the_disk_give_one_line(tmp_path, moving):
    """The real output writers hit a file size limit (as on a full disk): exit 2, one line that
    says what to do, no traceback, no OUT or OUT.tmp-*; OUT.cache is kept for --resume."""
    out = tmp_path / "OUT"
    script = DISK_FULL.format(tests=str(Path(__file__).parent), source=str(moving), out=str(out), limit=4096)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0].startswith(f"error: cannot write {out}: "), lines[0]  # then numpy's or the OS's reason
    assert lines[0].endswith(
        "; free disk space or choose another output path, then run the same command again "
        "(with --resume the work done so far is reused)"
    )
    assert leftovers(out) == ["OUT.cache"]


# ----------------------------------------------------------------------------- degenerate content


def test_identical_frames_are_an_error(tmp_path, base_image):
    folder = tmp_path / "still"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(base_image).save(folder / f"{i}.png")
    out = tmp_path / "OUT"
    assert_refused(
        run(folder, "-o", out, *FAST),
        out,
        "the 5 frames are (nearly) identical",
        "no parallax",
        "give a video where the camera moves",
    )


def test_odd_formats_static_camera_and_dark_frame_end_in_warnings(tmp_path, base_image):
    """A real (5-step) run: converted formats, and every content warning on stderr and in summary.json."""
    gray = cv2.cvtColor(base_image, cv2.COLOR_RGB2GRAY)
    frames = [shifted(gray, 0.5 * i) for i in range(6)]  # 0.28 px per frame at the working size
    folder = tmp_path / "odd"
    folder.mkdir()
    Image.fromarray(frames[0]).save(folder / "000.png")  # 8-bit grayscale
    cv2.imwrite(str(folder / "001.png"), frames[1].astype(np.uint16) * 257)  # 16-bit grayscale
    rgba = np.dstack([frames[2]] * 3 + [np.full_like(frames[2], 255)])
    Image.fromarray(rgba).save(folder / "002.png")  # RGBA
    Image.fromarray(frames[3] // 40).save(folder / "003.png")  # dark
    cv2.imwrite(str(folder / "004.png"), np.dstack([frames[4]] * 3).astype(np.uint16) * 257)  # 16-bit colour
    Image.fromarray(np.dstack([frames[5]] * 3)).save(folder / "005.png")  # 8-bit colour
    out = tmp_path / "OUT"
    result = run(folder, "-o", out, *FAST)
    assert result.exit_code == 0, (result.stderr, result.exception)
    warnings = [l[len("warning: ") :] for l in result.stderr.splitlines() if l.startswith("warning: ")]
    summary = json.loads((out / "summary.json").read_text())
    assert warnings == summary["warnings"]
    static = [w for w in warnings if w.startswith("static camera:")]
    assert len(static) == 1 and "--stride" in static[0]
    flow = [w for w in warnings if w.startswith("almost no valid flow")]
    assert len(flow) == 1 and "002.png-003.png" in flow[0] and "003.png-004.png" in flow[0]
    dark = [w for w in warnings if "dark or almost uniform" in w]
    assert len(dark) == 1 and "003.png (dark)" in dark[0] and "000.png" not in dark[0]
    assert summary["n_frames"] == 6 and leftovers(out) == ["OUT"]
    assert 1 <= summary["settings"]["threads"] <= torch.get_num_threads()  # no --threads: the idle cores, recorded


def test_focal_at_the_edge_is_a_warning(tmp_path, moving, monkeypatch):
    def edge(data, cfg, image_size, focal_px=None, **kwargs):
        cfg.fake_focal = cfg.focal.max_factor * math.sqrt(image_size[0] * image_size[1])
        return fake_fit(data, cfg, image_size, focal_px, **kwargs)

    fake_stages(monkeypatch, edge)
    out = tmp_path / "OUT"
    result = run(moving, "-o", out, *FAST)
    assert result.exit_code == 0, (result.stderr, result.exception)
    expected = "the estimated focal length 110.9 px is at the upper edge of the searched range 28-111 px"
    assert any(l.startswith(f"warning: {expected}") and "--focal" in l for l in result.stderr.splitlines())
    assert any(w.startswith(expected) for w in json.loads((out / "summary.json").read_text())["warnings"])
    # a known focal length is not questioned
    result = run(moving, "-o", tmp_path / "OUT2", *FAST, "--focal", "110.9")
    assert result.exit_code == 0 and "warning: the estimated focal length" not in result.stderr


# ----------------------------------------------------------------------------- memory


def test_run_too_large_for_the_memory_is_refused_before_any_work(tmp_path, base_image, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(shifted(base_image, i)).save(folder / f"{i:02d}.png")

    def no_work(*args, **kwargs):
        raise AssertionError("correspondences computed although the memory check should refuse")

    monkeypatch.setattr(flowmap.pipeline, "load_or_compute", no_work)
    monkeypatch.setattr(flowmap.memory, "available_memory", lambda: 3.1e8)  # the run's prediction x 1.15 is 329 MB
    out = tmp_path / "OUT"
    # the frames move 1 px (0.8 % of the width) a frame: "auto" reconstructs 10 of the 12
    line = assert_refused(
        run(folder, "-o", out), out, "not enough memory: 10 frames at 128x96 working pixels need about", "310.0 MB is available"
    )
    frames = int(line.split("--max-frames ")[1].split()[0])
    budget = int(line.split("--pixel-budget ")[1].split()[0])
    # following either suggestion passes the check (and reaches the correspondences)
    for option in (["--max-frames", str(frames)], ["--pixel-budget", str(budget)]):
        result = run(folder, "-o", out, *option)
        assert isinstance(result.exception, AssertionError) and "correspondences computed" in str(result.exception)
    monkeypatch.setattr(flowmap.memory, "available_memory", lambda: 3.0e5)  # the decoded frames alone do not fit
    assert_refused(
        run(folder, "-o", out), out, "decoding 10 frames of 128x96 pixels needs 369 kB but only 300 kB", "--max-frames 4 or --stride 3"
    )
    monkeypatch.setattr(flowmap.memory, "available_memory", lambda: 1.0e5)
    assert_refused(run(folder, "-o", out), out, "needs 369 kB but only 100 kB", "free memory")


# ----------------------------------------------------------------------------- nothing half-written


def test_failed_write_leaves_no_out_and_keeps_an_old_one(tmp_path, moving, monkeypatch):
    fake_stages(monkeypatch)
    written = []

    def disk_full(rec, frames, directory, *args, **kwargs):
        written.extend(p.name for p in Path(directory).iterdir())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(flowmap.outputs, "write_transforms", disk_full)
    out = tmp_path / "OUT"
    result = run(moving, "-o", out, *FAST)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: cannot write {out}: No space left on device; free disk space or choose another output path, "
        "then run the same command again (with --resume the work done so far is reused)"
    )
    assert "poses.txt" in written and "points.ply" in written  # files were written before the failure ...
    assert leftovers(out) == ["OUT.cache"]  # ... but only into the temporary folder, now removed
    out.mkdir()
    (out / "poses.txt").write_text("previous run")
    result = run(moving, "-o", out, *FAST, "--overwrite")
    assert result.exit_code == 2 and (out / "poses.txt").read_text() == "previous run"
    assert sorted(p.name for p in out.iterdir()) == ["poses.txt"]


KILL_AT = r"""
import os, signal, sys
sys.path.insert(0, {tests!r})
import flowmap.outputs, flowmap.pipeline, flowmap.refine.core
from flowmap.cli import app
from test_inputs import fake_finetune, fake_fit, fake_solve

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

flowmap.pipeline.fit = fake_fit
flowmap.pipeline.solve = fake_solve
flowmap.pipeline.finetune_depth = fake_finetune
{target} = die
app(["run", {source!r}, "-o", {out!r}, "--steps", "5", "--pixel-budget", "3072", "--quiet"])
"""
"""A run whose function ``target`` kills the process (SIGKILL) when called."""


def test_process_killed_while_writing_leaves_no_out(tmp_path, moving):
    out = tmp_path / "OUT"
    script = KILL_AT.format(tests=str(Path(__file__).parent), source=str(moving), out=str(out), target="flowmap.outputs.write_transforms")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not out.exists()
    tmp = [p for p in tmp_path.iterdir() if p.name.startswith("OUT.tmp-")]
    assert len(tmp) == 1 and (tmp[0] / "poses.txt").is_file()  # the partial files stay out of OUT's way
    assert not (tmp[0] / "summary.json").exists()


def test_a_run_killed_in_the_refinement_leaves_colmaps_folder_only_in_its_cache(tmp_path, moving, monkeypatch):
    """Issue 27.9: COLMAP's working folder (frames, database) lives in OUT.cache/refine,
    not in the system's temporary directory, and the next run removes it."""
    out, system_tmp = tmp_path / "OUT", tmp_path / "system-tmp"
    system_tmp.mkdir()
    # killed after the frames and features are written, while matching
    script = KILL_AT.format(tests=str(Path(__file__).parent), source=str(moving), out=str(out), target="flowmap.refine.core.features.match_pairs")
    env = {**os.environ, "TMPDIR": str(system_tmp)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    work = tmp_path / "OUT.cache" / "refine"
    assert (work / "database.db").is_file()
    assert not [p for p in system_tmp.iterdir() if p.name.startswith("flowmap-refine-")]
    fake_stages(monkeypatch)
    result = run(moving, "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "OUT.cache").exists()


def test_sigterm_then_resume_matches_an_uninterrupted_run(tmp_path):
    """SIGTERM halfway through the optimisation, then --resume: same poses as a run never stopped.

    Without the refinement: COLMAP's multi-threaded matching and adjustment are not
    bit-reproducible between two runs, resumed or not (ATE differences ~1e-3 here)."""
    import signal
    import subprocess
    import sys
    import time as _time

    from flowmap.evaluation import ate_paper
    from flowmap.layout import read_poses
    from flowmap.synthetic import make_scene, write_sequence

    seq = write_sequence(make_scene(n_frames=8, height=64, width=96, seed=2), tmp_path / "seq")
    base = [sys.executable, "-m", "flowmap.cli", "run", str(seq / "images"), "--steps", "110",
            "--pixel-budget", "1536", "--quiet", "--refine", "none"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    full = subprocess.run(base + ["-o", str(tmp_path / "full")], env=env, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr

    out = tmp_path / "out"
    ckpt = tmp_path / "out.cache" / "checkpoint.pt"
    proc = subprocess.Popen(base + ["-o", str(out)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = _time.time() + 300
    while not ckpt.exists() and proc.poll() is None and _time.time() < deadline:
        _time.sleep(0.05)
    assert ckpt.exists(), "no checkpoint was written"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "--resume" in err
    assert not out.exists()

    resumed = subprocess.run(base + ["-o", str(out), "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    names_a, c2w_a = read_poses(tmp_path / "full" / "poses.txt")
    names_b, c2w_b = read_poses(out / "poses.txt")
    assert names_a == names_b
    assert ate_paper(c2w_b[:, :3, 3], c2w_a[:, :3, 3]) < 1e-4


# ----------------------------------------------------------------------------- caches


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_cache_with_resume_is_recomputed_with_a_warning(tmp_path, moving, monkeypatch, damage):
    """A truncated or corrupt OUT.cache file is a cache miss under --resume: recomputed, a warning, no traceback."""
    cache = tmp_path / "OUT.cache"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(flowmap.pipeline, "fit", interrupted)  # stop after the correspondences are cached
    out = tmp_path / "OUT"
    assert run(moving, "-o", out, *FAST).exit_code == 130
    (npz,) = cache.glob("correspondences-*.npz")
    data = npz.read_bytes()
    npz.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"PK\x03\x04 not a zip file" * 20)
    (cache / "checkpoint.pt").write_bytes(b"\x80\x04 not a checkpoint")
    fake_stages(monkeypatch)
    result = run(moving, "-o", out, *FAST, "--resume")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert "Traceback" not in result.stderr
    assert any(l.startswith("warning: the cached correspondences correspondences-") and "recomputed" in l
               for l in result.stderr.splitlines()), result.stderr
    assert (out / "poses.txt").is_file() and not cache.exists()


@pytest.mark.parametrize("command", ["bench", "view"])
def test_sigterm_stops_bench_and_view_cleanly(command, tmp_path, monkeypatch):
    """SIGTERM to `flowmap bench` / `flowmap view` ends with one line and exit 130, not
    pycolmap's stack dump (issue 11.6): the command installs flowmap's handler over the one
    pycolmap's logging sets up."""
    import os
    import signal
    import time as time_mod

    import flowmap.bench
    import flowmap.outputs.viewer

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time_mod.sleep(5)  # the handler interrupts this
        raise AssertionError("SIGTERM did not interrupt")

    monkeypatch.setattr(flowmap.bench, "run_bench", terminated)
    monkeypatch.setattr(flowmap.outputs.viewer, "view", terminated)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        args = [command, str(tmp_path)] + (["-o", str(tmp_path / "b")] if command == "bench" else [])
        result = CliRunner().invoke(app, args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.exit_code == 130, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and ("stopped" in lines[0] or "interrupted" in lines[0]), result.stderr
