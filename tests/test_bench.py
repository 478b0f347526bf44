"""COLMAP baseline and the flowmap-vs-COLMAP benchmark on a few real frames."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from flowmap.baseline import ColmapConfig, choose_matcher, list_images, run_colmap
from flowmap.refine.colmap_io import quiet_colmap
from flowmap.bench import ROW_KEYS, format_table, measure_peak_rss, run_bench
from flowmap.errors import InputError
from flowmap.evaluation import evaluate_named
from flowmap.outputs import OutputConfig
from conftest import SHARED_DATA, needs_data, require_data

DATA = SHARED_DATA
FOUNTAIN = DATA / "fountain-P11"


def make_sequence(root: Path, source: Path, frames: list[int], scale: float) -> Path:
    """A small sequence in the shared layout: some frames of ``source``, resized by ``scale``."""
    seq = root / f"{source.name}-small"
    (seq / "images").mkdir(parents=True)
    names = list_images(source / "images")
    keep = [names[i] for i in frames]
    for name in keep:
        image = cv2.imread(str(source / "images" / name))
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(seq / "images" / name), small, [cv2.IMWRITE_JPEG_QUALITY, 95])
    lines = (source / "poses.txt").read_text().splitlines()
    kept = [line for line in lines if line.startswith("#") or line.split(" ")[0] in keep]
    (seq / "poses.txt").write_text("\n".join(kept) + "\n")
    intr = json.loads((source / "intrinsics.json").read_text())
    height, width = small.shape[:2]
    sx, sy = width / intr["width"], height / intr["height"]
    intr.update(
        width=width,
        height=height,
        fx=intr["fx"] * sx,
        fy=intr["fy"] * sy,
        cx=(intr["cx"] + 0.5) * sx - 0.5,
        cy=(intr["cy"] + 0.5) * sy - 0.5,
    )
    (seq / "intrinsics.json").write_text(json.dumps(intr))
    return seq


@pytest.fixture(scope="module")
def fountain_small(tmp_path_factory) -> Path:
    require_data("fountain-P11")
    return make_sequence(tmp_path_factory.mktemp("seq"), FOUNTAIN, list(range(8)), 0.5)


def test_run_colmap_registers_fountain_with_accurate_focal(fountain_small, tmp_path):
    res = run_colmap(fountain_small / "images", tmp_path / "colmap", ColmapConfig(mapper="incremental"))
    assert res.names == list_images(fountain_small / "images")
    assert res.matcher == "exhaustive"  # 8 < 40 frames
    assert res.n_registered >= 7 and res.n_models >= 1
    assert np.isnan(res.c2w[~res.registered]).all()
    R = res.c2w[res.registered, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-9)
    # principal point at the image centre in OpenCV pixel coordinates: (W - 1) / 2
    assert res.image_size == (256, 384)
    # stage timings add up to the run's time
    assert set(res.timings) == {"extract_s", "match_s", "map_s"} and min(res.timings.values()) > 0
    assert sum(res.timings.values()) == pytest.approx(res.time_s, rel=0.02)
    assert res.K[0, 2] == pytest.approx((384 - 1) / 2) and res.K[1, 2] == pytest.approx((256 - 1) / 2)
    intrinsics = {"width": 384, "height": 256, "fx": res.K[0, 0], "fy": res.K[1, 1]}
    metrics = evaluate_named(res.names, res.c2w, intrinsics, fountain_small)
    assert metrics["focal_rel_error"] < 0.03
    assert metrics["ate_paper"] < 0.005


@needs_data("fountain-P11")
def test_run_colmap_rejects_bad_input(tmp_path):
    with pytest.raises(InputError):
        run_colmap(tmp_path / "missing", tmp_path / "w")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError):
        run_colmap(tmp_path / "empty", tmp_path / "w")
    with pytest.raises(InputError):
        run_colmap(FOUNTAIN / "images", tmp_path / "w", image_names=["nope.jpg"])
    with pytest.raises(InputError):
        run_colmap(FOUNTAIN / "images", tmp_path / "w", ColmapConfig(mapper="nope"))


def test_choose_matcher_follows_frame_count():
    cfg = ColmapConfig()
    assert choose_matcher(cfg, 39) == "exhaustive"
    assert choose_matcher(cfg, 40) == "sequential"
    assert choose_matcher(ColmapConfig(matcher="exhaustive"), 500) == "exhaustive"
    with pytest.raises(InputError):
        choose_matcher(ColmapConfig(matcher="vocab"), 10)


def test_measure_peak_rss_sees_a_transient_allocation():
    with measure_peak_rss() as small:
        np.ones(1000)
    with measure_peak_rss() as big:
        block = np.ones(100 * 2**20 // 8)  # 100 MiB, touched
        del block
    assert big.method in ("vmhwm", "sampling")
    assert big.peak_mb - big.before_mb > 80
    assert small.peak_mb - small.before_mb < 40


@pytest.fixture
def one_torch_thread():
    """One torch thread for the duration of a test.

    torch's intra-op worker threads spin while they wait; on a 2-core machine that other
    processes keep busy, a few optimisation steps take several times longer with two
    threads than with one.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config():
    """flowmap settings for a smoke test: a few steps at a small working resolution."""
    from flowmap.api import RunConfig

    config = RunConfig(progress=False, device="cpu")
    config.frames.pixel_budget = 96 * 64
    config.optim.steps = 4
    config.optim.focal.n_candidates = 12
    config.optim.procrustes_points = 256
    config.optim.loss_points = 2048
    return config


@needs_data("fountain-P11")
def test_bench_smoke_flowmap_and_colmap(tmp_path, one_torch_thread):
    seq = make_sequence(tmp_path, FOUNTAIN, list(range(6)), 0.25)
    outputs = OutputConfig(max_points=2000, colmap_max_points=2000)
    results = run_bench(
        [seq], tmp_path / "out", tiny_config(), mappers=("incremental", "global"), output_config=outputs
    )
    rows = {r["method"]: r for r in results["rows"]}
    assert set(rows) == {"flowmap", "flowmap-norefine", "colmap-incremental", "colmap-global"}
    assert all(list(r) == list(ROW_KEYS) for r in rows.values())  # the same keys on every row
    assert all(r["sequence"] == seq.name and r["n_frames"] == 6 for r in rows.values())
    assert all(r["image_size"] == [128, 192] for r in rows.values())  # same frames, same resolution
    fm = rows["flowmap"]
    assert fm["error"] is None, fm["error"]
    assert fm["registered"] == 6 and fm["ate_paper"] is not None and fm["focal_rel_error"] is not None
    assert fm["peak_mb"] >= fm["rss_before_mb"] > 0 and fm["time_ratio"] is None
    # the same run's cameras before the refinement: timed without the refinement stage
    before = rows["flowmap-norefine"]
    assert before["registered"] == 6 and before["ate_paper"] is not None and before["time_ratio"] is None
    stages_after = fm["timings"]["refine_s"] + fm["timings"].get("finetune_s", 0.0) + fm["timings"].get("dense_s", 0.0)
    assert before["time_s"] == pytest.approx(fm["time_s"] - stages_after)
    for method in ("colmap-incremental", "colmap-global"):
        row = rows[method]
        assert row["matcher"] == "exhaustive"  # 6 < 40 frames
        assert row["time_s"] > 0 and row["peak_mb"] >= row["rss_before_mb"] > 0
        assert 0 <= row["registered"] <= 6
        if row["ate_paper"] is not None:
            assert row["ate_ratio"] == pytest.approx(fm["ate_paper"] / row["ate_paper"])
            if row["registered"] == 6:  # the same frames: the common-frame ratio is the plain one
                assert row["ate_ratio_common"] == pytest.approx(row["ate_ratio"])
        assert row["time_ratio"] == pytest.approx(fm["time_s"] / row["time_s"])
    assert rows["colmap-incremental"]["registered"] >= 5 and rows["colmap-incremental"]["ate_paper"] < 0.01
    # flowmap's outputs, with the ground truth in the report
    out = tmp_path / "out" / seq.name / "flowmap"
    assert fm["outputs"] == str(out) and (out / "colmap" / "sparse" / "0" / "images.bin").is_file()
    assert "ate_paper" in (out / "report.html").read_text()
    saved = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert saved["rows"] == results["rows"] and saved["table"] == results["table"]
    table = format_table(results)
    assert table == results["table"]
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["sequence", "method", "time"] and len(lines) >= 2 + len(rows)
    assert all(any(line.split()[1] == m for line in lines[2 : 2 + len(rows)]) for m in rows)
    assert "6/6" in lines[2]
    # where the time goes: flowmap's stages (the refinement's sub-steps inside) and COLMAP's
    stages = {(line.split()[0], line.split()[1]): line for line in lines if " descent " in line or " extract " in line}
    assert set(stages) == {(seq.name, "flowmap"), (seq.name, "colmap-incremental"), (seq.name, "colmap-global")}
    assert "refine" in stages[(seq.name, "flowmap")] and "(SIFT " in stages[(seq.name, "flowmap")]
    assert fm["timings"]["refine_features_s"] > 0 and fm["timings"]["refine_total_s"] <= fm["timings"]["refine_s"]
    assert all(f" {k} " in stages[(seq.name, "colmap-incremental")] for k in ("extract", "match", "map"))


def test_bench_rejects_a_folder_without_ground_truth(tmp_path):
    (tmp_path / "seq" / "images").mkdir(parents=True)
    with pytest.raises(InputError, match="poses.txt"):
        run_bench([tmp_path / "seq"], tmp_path / "out")


def test_two_benches_into_one_folder_are_refused(tmp_path):
    """A second bench writing the same results folder is refused before any work (two
    benches into one folder removed each other's flowmap caches mid-run)."""
    from flowmap.io import lock_out
    from flowmap.synthetic import make_scene, write_sequence

    seq = write_sequence(make_scene(n_frames=4, height=48, width=64, seed=0), tmp_path / "seq")
    with lock_out(tmp_path / "out"):
        with pytest.raises(InputError, match="another flowmap process is writing"):
            run_bench([seq], tmp_path / "out", colmap=False)
    assert not (tmp_path / "out").exists()


def test_bench_commands_report_bad_input_in_one_line(tmp_path):
    import importlib.util

    from typer.testing import CliRunner

    from flowmap.cli import app

    (tmp_path / "seq" / "images").mkdir(parents=True)
    result = CliRunner().invoke(app, ["bench", str(tmp_path / "seq"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "error:" in result.output and "poses.txt" in result.output
    script_path = Path(__file__).parents[1] / "benchmarks" / "compare_colmap.py"
    spec = importlib.util.spec_from_file_location("compare_colmap", script_path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(tmp_path / "seq"), "--out", str(tmp_path / "out2"), "--no-global"]) == 2
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


@needs_data("fountain-P11")
def test_exif_focal_is_not_given_to_colmap(tmp_path):
    """COLMAP would take a focal prior from EXIF; the baseline must start without one."""
    import pycolmap
    from PIL import Image

    from flowmap.baseline import _forget_focal_priors

    (tmp_path / "images").mkdir()
    for name in list_images(FOUNTAIN / "images")[:2]:
        image = Image.open(FOUNTAIN / "images" / name).reduce(4)  # 192 x 128
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0xA405] = 50  # FocalLengthIn35mmFilm
        image.save(tmp_path / "images" / name, exif=exif)
    database = tmp_path / "database.db"
    with quiet_colmap(False):
        pycolmap.extract_features(database, tmp_path / "images", camera_mode=pycolmap.CameraMode.SINGLE,
                                  reader_options=pycolmap.ImageReaderOptions(camera_model="SIMPLE_PINHOLE"),
                                  device=pycolmap.Device.cpu)

    def cameras():
        db = pycolmap.Database.open(database)
        try:
            return db.read_all_cameras()
        finally:
            db.close()

    assert [c.has_prior_focal_length for c in cameras()] == [True]  # the test image does carry a prior
    _forget_focal_priors(database, ColmapConfig())
    (camera,) = cameras()
    assert not camera.has_prior_focal_length and camera.params[0] == pytest.approx(1.2 * 192)


@needs_data("castle-P30")
def test_few_view_subsets_are_built_from_a_sequence(tmp_path):
    """``PATH::K`` benchmarks every K-th frame (issue 24's few-view inputs): the subset
    holds those images, their ground-truth poses and the intrinsics, nothing else."""
    from flowmap.bench import parse_sequence, subset_sequence
    from flowmap.evaluation import read_ground_truth

    castle = SHARED_DATA / "castle-P30"
    assert parse_sequence(f"{castle}::6") == (castle, 6) and parse_sequence(castle) == (castle, 1)
    for bad in ("1", "x", ""):
        with pytest.raises(InputError):
            parse_sequence(f"{castle}::{bad}")
    sub = subset_sequence(castle, 6, tmp_path)
    every = list_images(castle / "images")[::6]
    assert sub.name == "castle-P30-every6" and list_images(sub / "images") == every and len(every) == 5
    names, c2w, _ = read_ground_truth(sub)
    all_names, all_c2w, _ = read_ground_truth(castle)
    assert names == every
    np.testing.assert_allclose(c2w, all_c2w[[all_names.index(n) for n in every]])
    with pytest.raises(InputError, match="at least 3"):
        subset_sequence(castle, 20, tmp_path)


def test_common_ate_ratio_compares_the_frames_both_posed(tmp_path):
    """Where COLMAP drops frames, the common ratio evaluates flowmap on COLMAP's frames
    only: a flowmap run that is exact there and off on the dropped frames scores 0 against
    any COLMAP error, whatever the plain ratio says; too few common frames: None."""
    from flowmap.bench import common_ate_ratio
    from flowmap.evaluation import ate_paper, read_ground_truth
    from flowmap.synthetic import make_scene, write_sequence

    scene = make_scene(n_frames=8, height=48, width=64, seed=0)
    seq = write_sequence(scene, tmp_path / "seq")
    names = list(scene.names)
    rng = np.random.default_rng(0)
    ours = scene.c2w.copy()
    ours[6:, :3, 3] += 0.5  # wrong only where COLMAP has no pose
    theirs = scene.c2w[:6].copy()
    theirs[:, :3, 3] += rng.normal(0, 0.01, (6, 3))
    assert common_ate_ratio((names, ours), (names[:6], theirs), seq) < 1e-4  # poses.txt keeps ~7 digits
    ours[:6, :3, 3] += rng.normal(0, 0.02, (6, 3))
    gt = read_ground_truth(seq)[1][:6, :3, 3]
    expected = ate_paper(ours[:6, :3, 3], gt) / ate_paper(theirs[:, :3, 3], gt)
    assert common_ate_ratio((names, ours), (names[:6], theirs), seq) == pytest.approx(expected) and expected > 1
    assert ate_paper(ours[:, :3, 3], scene.c2w[:, :3, 3]) > ate_paper(theirs[:, :3, 3], scene.c2w[:6, :3, 3])  # plain ratio > 1
    assert common_ate_ratio((names, ours), (names[:2], theirs[:2]), seq) is None
