"""``flowmap train`` (flowmap.train) and starting a run from its weights (``--init``, flowmap.pretrained).

Tiny synthetic videos (a few frames at a small working resolution) so that the tests
measure the training machinery: the loss falls, the weights file loads and starts a run,
a killed training resumes to the state of an uninterrupted one, feed-forward mode
(``--steps 0``) poses every frame, and wrong checkpoints get one line.
"""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from flowmap.config import RunConfig
from flowmap.errors import InputError
from flowmap.model.depth import DepthNetConfig
from flowmap.model.weights import WeightMLPConfig
from flowmap.pipeline import reconstruct
from flowmap.pretrained import default_path, load_pretrained, resolve_init
from flowmap.synthetic import make_scene, write_sequence
from flowmap.train import TrainConfig, train


def _cfg(steps: int, **kw) -> TrainConfig:
    cfg = TrainConfig(steps=steps, log_every=1, val_every=5, val_windows=2, checkpoint_every=kw.pop("checkpoint_every", 100), **kw)
    cfg.frames.pixel_budget = 3072
    cfg.optim.window = 4
    cfg.optim.loss_points = 1024
    cfg.optim.procrustes_points = 512
    return cfg


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Three synthetic orbits of different scenes (two to train on, one held back)."""
    root = tmp_path_factory.mktemp("train-videos")
    return {
        name: write_sequence(make_scene(n_frames=8, height=64, width=96, seed=seed), root / name) / "images"
        for name, seed in (("a", 1), ("b", 2), ("val", 3))
    }


@pytest.fixture(scope="module")
def trained(videos, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("trained") / "w.pt"
    torch.set_num_threads(1)
    result = train([videos["a"], videos["b"]], out, _cfg(60), val_paths=[videos["val"]], progress=False, command="test")
    return out, result


def test_the_loss_falls_and_the_card_is_written(trained):
    out, result = trained
    train_loss = np.array([h["loss"] for h in result.history])
    val = [h["val"] for h in result.history if "val" in h]
    assert len(train_loss) == 60 and len(val) >= 3
    assert train_loss[-15:].mean() < 0.7 * train_loss[:15].mean()
    assert val[-1] < 0.8 * val[0]  # it generalises to a scene it never saw
    card = out.with_suffix(".md").read_text()
    assert "`a` (8 frames), `b` (8 frames)" in card and "`val` (8 frames)" in card and "Rebuild: `test`" in card
    assert out.with_name("w-loss.png").stat().st_size > 1000
    assert not (out.parent / "w.pt.cache" / "train-state.pt").exists()  # the loop state goes once complete
    assert len(list((out.parent / "w.pt.cache").glob("correspondences-*.npz"))) == 3  # computed once, kept


def test_the_weights_load_and_start_a_run_and_feed_forward_poses_every_frame(trained, videos):
    out, _ = trained
    pre = load_pretrained(out, DepthNetConfig(), WeightMLPConfig())
    assert pre.meta["train_sources"] == ["a", "b"] and pre.meta["steps_done"] == 60
    cfg = RunConfig(refine=None, progress=False, init=str(out))
    cfg.frames.pixel_budget = 3072
    cfg.optim.steps = 0
    rec = reconstruct(videos["val"], cfg)
    assert rec.n == 8 and np.isfinite(rec.c2w).all() and np.isfinite(rec.K).all()
    assert 0.5 * 96 < rec.K[0, 0] < 2.0 * 96  # inside the candidate range, not NaN
    # The depth is the pretrained network's (not the constant of a zero head).
    assert np.std(np.log(rec.depth)) > 0.01
    # With steps the run starts from those weights: the first logged loss is the pretrained network's.
    cfg_steps = replace(cfg, optim=replace(cfg.optim, steps=3, log_every=1))
    scratch = replace(cfg_steps, init="none")
    assert reconstruct(videos["val"], cfg_steps).history[0]["loss"] < reconstruct(videos["val"], scratch).history[0]["loss"]


def test_a_killed_training_resumes_to_the_state_of_an_uninterrupted_one(videos, tmp_path):
    torch.set_num_threads(1)
    cfg = _cfg(8, checkpoint_every=2)
    whole = tmp_path / "whole" / "w.pt"
    train([videos["a"], videos["b"]], whole, cfg, progress=False)
    cut = tmp_path / "cut" / "w.pt"
    with pytest.raises(KeyboardInterrupt):
        train([videos["a"], videos["b"]], cut, cfg, progress=False, stop_after=4)
    assert (cut.parent / "w.pt.cache" / "train-state.pt").is_file() and cut.is_file()  # usable weights mid-way
    assert load_pretrained(cut, DepthNetConfig(), WeightMLPConfig()).meta["steps_done"] == 4
    result = train([videos["a"], videos["b"]], cut, cfg, progress=False, resume=True)
    assert [h["step"] for h in result.history] == list(range(8))
    a = load_pretrained(whole, DepthNetConfig(), WeightMLPConfig())
    b = load_pretrained(cut, DepthNetConfig(), WeightMLPConfig())
    for name in a.depth_net:
        assert torch.equal(a.depth_net[name], b.depth_net[name]), name
    for name in a.weight_net:
        assert torch.equal(a.weight_net[name], b.weight_net[name]), name


def test_wrong_checkpoints_get_one_line(trained, tmp_path):
    out, _ = trained
    other = DepthNetConfig(channels=(16, 24, 32, 48, 64))
    with pytest.raises(InputError, match="differs from this run's"):
        load_pretrained(out, other, WeightMLPConfig())
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot be read as a checkpoint"):
        load_pretrained(garbage, DepthNetConfig(), WeightMLPConfig())
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}, "fingerprint": "x"}, foreign)  # e.g. a run's resume checkpoint
    with pytest.raises(InputError, match="not a flowmap weights file"):
        load_pretrained(foreign, DepthNetConfig(), WeightMLPConfig())
    old = tmp_path / "old.pt"
    state = torch.load(out, weights_only=True)
    torch.save({**state, "format": 0}, old)
    with pytest.raises(InputError, match="format 0"):
        load_pretrained(old, DepthNetConfig(), WeightMLPConfig())
    with pytest.raises(InputError, match="no such file"):
        resolve_init(tmp_path / "missing.pt", DepthNetConfig(), WeightMLPConfig())
    # From the command line: one line, exit code 2, before any work.
    for init, words in ((str(garbage), "cannot be read"), ("none", "needs pretrained weights")):
        proc = subprocess.run(
            [sys.executable, "-m", "flowmap.cli", "run", str(tmp_path), "-o", str(tmp_path / "o"), "--init", init, "--steps", "0"],
            capture_output=True, text=True, check=False,
        )
        assert proc.returncode == 2 and words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_the_shipped_checkpoint_loads_for_the_default_networks():
    pre = resolve_init("default", DepthNetConfig(), WeightMLPConfig())
    assert pre is not None and pre.path == default_path()
    assert "mipnerf360_bonsai_c" in pre.meta["val_sources"]
    assert not any(name in pre.meta["train_sources"] for name in ("fox", "tum-office", "llff-fern", "tum-rpy"))
    assert default_path().with_suffix(".md").is_file()


def test_the_train_command_writes_a_checkpoint_and_refuses_bad_output_paths(videos, tmp_path):
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "flowmap.cli", "train", *map(str, args)], capture_output=True, text=True, check=False
        )

    out = tmp_path / "w.pt"
    proc = cli(videos["a"], "--val", videos["val"], "--steps", "3", "--pixel-budget", "3072", "--threads", "1", "--quiet", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "trained 3 steps" in proc.stderr and load_pretrained(out, DepthNetConfig(), WeightMLPConfig()).meta["steps_done"] == 3
    for bad, words in ((tmp_path / "w.txt", "must be a .pt file"), (tmp_path, "must be a .pt file")):
        proc = cli(videos["a"], "--steps", "3", "-o", bad)
        assert proc.returncode == 2 and words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    fresh = tmp_path / "fresh" / "w.pt"
    proc = cli(tmp_path / "missing", "--steps", "3", "-o", fresh)
    assert proc.returncode == 2 and "training source" in proc.stderr and "does not exist" in proc.stderr, proc.stderr
    assert not (tmp_path / "fresh" / "w.pt.cache").exists()  # a bad source leaves no cache behind
    proc = cli(videos["a"], "--val", videos["a"], "--steps", "3", "-o", fresh)
    assert proc.returncode == 2 and "both a training and a validation source" in proc.stderr, proc.stderr
    proc = cli(videos["a"], videos["a"], "--steps", "3", "-o", fresh)
    assert proc.returncode == 2 and "given twice" in proc.stderr, proc.stderr


def _damaged(state: dict, damage: str) -> dict:
    """A copy of a weights file's content with one fault of the kind ``damage``."""
    depth = dict(state["depth_net"])
    name = next(k for k, v in depth.items() if v.is_floating_point() and v.ndim == 4)
    if damage == "missing tensor":
        del depth[name]
    elif damage == "wrong shape":
        depth[name] = depth[name][:1]
    else:
        depth[name] = depth[name].clone()
        depth[name].view(-1)[0] = float(damage)
    return {**state, "depth_net": depth}


@pytest.mark.parametrize(
    "damage, words",
    [("missing tensor", "lacks tensors"), ("wrong shape", "has shape"), ("nan", "NaN or infinite"), ("inf", "NaN or infinite")],
)
def test_damaged_weights_are_refused_before_any_work(tmp_path, damage, words):
    """Flowmap weights with a tensor missing, of another shape or not finite: one line, exit 2,
    nothing beside OUT (no traceback from load_state_dict or the SVD of a NaN network)."""
    from typer.testing import CliRunner

    from flowmap.cli import app

    weights = tmp_path / "damaged.pt"
    torch.save(_damaged(torch.load(default_path(), weights_only=True), damage), weights)
    with pytest.raises(InputError, match=words):
        load_pretrained(weights, DepthNetConfig(), WeightMLPConfig())
    out = tmp_path / "OUT"
    result = CliRunner().invoke(app, ["run", str(tmp_path / "nope"), "-o", str(out), "--init", str(weights), "--steps", "0"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and words in lines[0] and "--init default" in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.pt"]


@pytest.mark.parametrize(
    "setting, words",
    [({"lr": math.nan}, "--lr must be a finite positive number"), ({"lr": -1.0}, "--lr must be a finite positive number"),
     ({"steps": 0}, "--steps must be at least 1")],
)
def test_training_settings_are_checked_before_any_work(videos, tmp_path, setting, words):
    out = tmp_path / "w.pt"
    with pytest.raises(InputError, match=words):
        train([videos["a"]], out, replace(_cfg(3), **setting), progress=False)
    assert list(tmp_path.iterdir()) == []  # no correspondences computed, no cache


def test_a_missing_later_source_leaves_no_cache(videos, tmp_path):
    """The second training source (or a validation source) is missing: refused before the
    first is decoded, so no w.pt.cache is left."""
    out = tmp_path / "w.pt"
    for train_paths, val_paths, role in (
        ([videos["a"], tmp_path / "missing"], [], "training source"),
        ([videos["a"]], [tmp_path / "missing"], "validation source"),
    ):
        with pytest.raises(InputError, match=f"{role} .*missing does not exist"):
            train(train_paths, out, _cfg(3), val_paths=val_paths, progress=False)
        assert list(tmp_path.iterdir()) == []


def test_two_trainings_into_one_output_are_refused(videos, tmp_path):
    """A training whose weights file another process writes is refused with one line and
    writes nothing (neither weights nor cache)."""
    from test_io import held_by_another_process

    out = tmp_path / "w.pt"
    with held_by_another_process(out):
        with pytest.raises(InputError, match="another flowmap process is writing"):
            train([videos["a"]], out, _cfg(3), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".w.pt.lock"]
