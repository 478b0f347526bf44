"""Keyframe selection (issue 25): motion measured on thumbnails, keyframes that follow it,
overlap kept between consecutive keyframes, the --keyframes option, and the scan of a
source.

The synthetic sequences are a random texture seen through a moving window: a static
stretch (the window does not move) and a fast stretch (it slides a known number of
pixels per frame), so the motion of every frame is known.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from flowmap.config import FrameConfig, KeyframeConfig
from flowmap.errors import InputError
from flowmap.frames import scan_frames
from flowmap.keyframes import (
    choose_keyframes,
    frame_motion,
    keep_overlap,
    motion_count,
    parse_target,
    select_keyframes,
    target_count,
    thumbnail,
)
from flowmap.types import Frames

WIDTH, HEIGHT = 160, 96


def texture(seed: int = 0, width: int = 2000) -> np.ndarray:
    """(HEIGHT, width) uint8 smooth random texture (blurred noise at two scales)."""
    rng = np.random.default_rng(seed)
    noise = rng.random((HEIGHT, width)).astype(np.float32)
    img = cv2.GaussianBlur(noise, (0, 0), 2.0) + 0.5 * cv2.GaussianBlur(noise, (0, 0), 6.0)
    img = (img - img.min()) / (img.max() - img.min())
    return np.round(img * 255).astype(np.uint8)


def window_sequence(offsets: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, HEIGHT, WIDTH) frames: the texture seen at horizontal ``offsets`` (pixels)."""
    tex = texture(seed)
    return np.stack([tex[:, int(o) : int(o) + WIDTH] for o in offsets])


def static_then_fast(n_static: int = 30, n_fast: int = 30, speed: int = 8) -> np.ndarray:
    """Offsets of a window that stays still for ``n_static`` frames, then moves ``speed`` px a frame."""
    return np.concatenate([np.full(n_static, 10), 10 + speed * np.arange(1, n_fast + 1)])


def test_frame_motion_measures_the_known_shift():
    offsets = static_then_fast(10, 10, speed=6)
    motion = frame_motion(window_sequence(offsets))
    assert motion.shape == (19,)
    np.testing.assert_allclose(motion[:9], 0.0, atol=0.005)
    np.testing.assert_allclose(motion[10:], 6 / WIDTH, rtol=0.1)


def test_static_stretch_gets_few_keyframes_fast_stretch_many():
    offsets = static_then_fast(30, 30, speed=4)
    motion = frame_motion(window_sequence(offsets))
    keys = select_keyframes(motion, 12)
    assert keys[0] == 0 and keys[-1] == len(offsets) - 1 and np.all(np.diff(keys) > 0)
    assert len(keys) <= 12
    in_static = np.sum(keys < 30)
    in_fast = np.sum(keys >= 30)
    assert in_static <= 2 and in_fast >= 9


def test_even_motion_gives_evenly_spaced_keyframes():
    motion = np.full(99, 0.01)
    keys = select_keyframes(motion, 12)
    assert len(keys) == 12
    assert np.diff(keys).max() - np.diff(keys).min() <= 1


def test_no_motion_still_gives_three_keyframes():
    keys = select_keyframes(np.zeros(40), 10)
    assert len(keys) >= 3 and keys[0] == 0 and keys[-1] == 40


def test_consecutive_keyframes_keep_overlap():
    """A target far too small for a fast pan: frames are added until no two consecutive
    keyframes are more than max_step apart in accumulated motion (and in true shift)."""
    offsets = 10 + 10 * np.arange(60)  # 10 px a frame: 0.0625 of the width
    motion = frame_motion(window_sequence(offsets))
    sparse = select_keyframes(motion, 4)
    keys = keep_overlap(sparse, motion, max_step=0.15)
    assert set(sparse.tolist()) <= set(keys.tolist()) and len(keys) > len(sparse)
    shift = np.diff(offsets[keys]) / WIDTH
    assert shift.max() <= 0.15 + 0.01 and np.diff(keys).max() == 2  # 0.15 / 0.0625 = 2.4 frames
    assert keep_overlap(sparse, motion, max_step=10.0).tolist() == sparse.tolist()


def test_parse_target_and_count():
    assert parse_target("auto") == "auto" and parse_target("ALL") == "all" and parse_target("60") == 60
    for bad in ("2", "-5", "many", "1.5"):
        with pytest.raises(InputError, match="--keyframes"):
            parse_target(bad)
    cfg = KeyframeConfig()
    assert target_count(cfg, cfg.auto_all_max) == cfg.auto_all_max  # short inputs: every frame the motion holds
    assert target_count(cfg, cfg.auto_all_max + 1) == cfg.auto_target
    assert target_count(KeyframeConfig(target="all"), 5000) is None
    assert target_count(KeyframeConfig(target=60), 229) == 60
    assert target_count(KeyframeConfig(target=60), 40) is None


def test_choose_keyframes_all_keeps_every_frame():
    thumbs = window_sequence(static_then_fast(5, 5))
    keys, motion = choose_keyframes(thumbs, KeyframeConfig(target="all"))
    assert keys.tolist() == list(range(10)) and motion.shape == (9,)


def test_auto_takes_fewer_keyframes_of_a_slow_clip():
    """"auto" never splits the motion into steps under ``auto_min_step`` of the width: a
    window crawling 0.25 px a frame for 300 frames (75 px, 0.47 widths in all) gets about
    47 keyframes about 1 % of the width apart, not the 100 of a fast clip; an explicit
    count is kept whatever the motion."""
    slow = window_sequence(10 + np.arange(300) * 0.25)  # integer offsets: 0.25 px a frame on average
    cfg = KeyframeConfig(auto_all_max=100)
    keys, motion = choose_keyframes(slow, cfg)
    expected = motion_count(motion, cfg.auto_min_step)
    assert abs(float(motion.sum()) - 75 / WIDTH) < 0.05  # the motion measured is the true 75 px
    assert 40 <= expected <= 55 and len(keys) == expected < cfg.auto_target
    steps = np.diff(np.concatenate([[0.0], np.cumsum(motion)])[keys])
    assert np.mean(steps) >= 0.9 * cfg.auto_min_step  # 1 px moves every 4 frames: steps alternate 0.7 / 1.35 %
    fast = window_sequence(10 + np.arange(300) * 5)  # 5 px a frame: 9.4 widths, the target binds
    assert len(choose_keyframes(fast, cfg)[0]) == cfg.auto_target
    assert len(choose_keyframes(slow, KeyframeConfig(target=80))[0]) == 80  # asked for: kept
    assert motion_count(motion, 0.0) == 300 and motion_count(np.zeros(10), 0.01) == 3
    # a short slow clip (at most auto_all_max frames) is thinned the same way ...
    short = KeyframeConfig(auto_all_max=300)
    short_keys, short_motion = choose_keyframes(slow[:200], short)
    assert len(short_keys) == motion_count(short_motion, short.auto_min_step) < 40
    # ... while a short clip that moves more than 1 % of the width a frame keeps every frame
    assert choose_keyframes(fast[:60], short)[0].tolist() == list(range(60))


def test_thumbnail_keeps_the_aspect_ratio():
    image = np.zeros((480, 640, 3), np.uint8)
    assert thumbnail(image, 160).shape == (120, 160)


def test_scan_of_decoded_frames(tmp_path):
    """scan_frames on decoded Frames: names and indices of every frame, grayscale at the
    working resolution, and keyframes that follow the motion."""
    offsets = static_then_fast(20, 20, speed=6)
    gray = window_sequence(offsets)
    frames = Frames(
        images=np.repeat(gray[..., None], 3, axis=-1), names=[f"{i:06d}.png" for i in range(40)], source=tmp_path,
        source_indices=[2 * i for i in range(40)],
    )
    scan = scan_frames(frames, FrameConfig(pixel_budget=WIDTH * HEIGHT), KeyframeConfig(target=8))
    assert scan.n == 40 and scan.source_indices == frames.source_indices and scan.gray.shape == (40, HEIGHT, WIDTH)
    assert scan.keys[0] == 0 and scan.keys[-1] == 39 and np.sum(scan.keys >= 20) > np.sum(scan.keys < 20)


# ----------------------------------------------------------------------------- a whole run


@pytest.fixture(scope="module")
def keyframe_run(tmp_path_factory):
    """A run on a 24-frame synthetic sequence with --keyframes 8 (FlowMap's cameras, no
    refinement, to keep it short), and the same with --write-keyframes-only."""
    from flowmap.config import RunConfig
    from flowmap.pipeline import run
    from flowmap.synthetic import make_scene, write_sequence

    root = tmp_path_factory.mktemp("keyframes")
    seq = write_sequence(make_scene(n_frames=24, height=96, width=128), root / "scene")
    cfg = RunConfig(refine=None, progress=False)
    cfg.optim.steps = 10
    cfg.frames.pixel_budget = 96 * 128
    cfg.keyframes.target = 8
    cfg.outputs.report = False
    result = run(seq / "images", root / "OUT", cfg)
    cfg.outputs.keyframes_only = True
    only = run(seq / "images", root / "ONLY", cfg)
    return seq, result, only


def test_run_poses_every_frame_and_lists_the_keyframes(keyframe_run):
    import json

    import pycolmap

    from flowmap.evaluation import evaluate_run
    from flowmap.layout import read_poses

    seq, result, _ = keyframe_run
    out = result.out
    summary = json.loads((out / "summary.json").read_text())
    keys = summary["keyframes"]
    assert keys[0] == 0 and keys[-1] == 23 and 3 <= len(keys) <= 8 and summary["n_keyframes"] == len(keys)
    others = summary["non_keyframes"]
    assert sorted(keys + others["source_indices"]) == list(range(24)) and others["count"] == 24 - len(keys)
    assert others["posed"] == others["count"] and others["unregistered"] == [] and summary["frames_posed"] == 24
    assert "register_s" in summary["timings"] and "keyframes_s" in summary["timings"]
    names, _ = read_poses(out / "poses.txt")
    assert names == [f"{i:06d}.png" for i in range(24)]  # every frame, in source order
    assert sorted(p.stem for p in (out / "depth").glob("*.npy")) == [f"{i:06d}" for i in keys]  # depth per keyframe
    model = pycolmap.Reconstruction(out / "colmap" / "sparse" / "0")
    assert model.num_reg_images() == 24 and len(list((out / "colmap" / "images").iterdir())) == 24
    transforms = json.loads((out / "transforms.json").read_text())
    assert len(transforms["frames"]) == 24 and not any("depth_file_path" in f for f in transforms["frames"])
    # the frames between keyframes are posed as well as the keyframes themselves
    all_frames = evaluate_run(out, seq)
    assert all_frames["n_registered"] == 24
    key_rec = result.reconstruction
    from flowmap.evaluation import evaluate_named

    key_only = evaluate_named(key_rec.names, key_rec.c2w, {"width": 128, "height": 96, "fx": key_rec.K[0, 0], "fy": key_rec.K[1, 1]}, seq)
    assert all_frames["ate"] <= 1.5 * key_only["ate"] + 1e-3


def test_write_keyframes_only(keyframe_run):
    import json

    from flowmap.layout import read_poses

    _, result, only = keyframe_run
    summary = json.loads((only.out / "summary.json").read_text())
    names, _ = read_poses(only.out / "poses.txt")
    assert len(names) == summary["n_keyframes"] == len(result.reconstruction.names)
    assert summary["non_keyframes"]["written"] is False and summary["non_keyframes"]["posed"] > 0
    transforms = json.loads((only.out / "transforms.json").read_text())
    assert all("depth_file_path" in f for f in transforms["frames"])
