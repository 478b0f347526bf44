"""The correspondence cache (a hit reuses, a changed frame or setting misses, a bad file is recomputed) and LK tracks."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

import flowmap.correspondences.cache as cache_module
from flowmap.correspondences import CorrespondenceConfig
from flowmap.correspondences.cache import cache_key, load_or_compute
from flowmap.synthetic import make_scene


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return make_scene(n_frames=5, height=48, width=64, seed=3).images


SHAPE = (32, 48)


def _cfg(**bridges) -> CorrespondenceConfig:
    cfg = CorrespondenceConfig()
    cfg.flow.threads = cfg.tracks.threads = 1
    return replace(cfg, bridges=replace(cfg.bridges, **bridges)) if bridges else cfg


def test_cache_key_covers_frames_resolution_and_every_setting(images):
    base = cache_key(images, SHAPE, _cfg())
    assert cache_key(images.copy(), SHAPE, _cfg()) == base
    other = images.copy()
    other[2, 0, 0, 0] ^= 1
    assert cache_key(other, SHAPE, _cfg()) != base
    assert cache_key(images, (16, 32), _cfg()) != base
    assert cache_key(images, SHAPE, replace(_cfg(), flow=replace(_cfg().flow, fb_threshold_px=2.0))) != base
    assert cache_key(images, SHAPE, replace(_cfg(), tracks=replace(_cfg().tracks, grid=20))) != base
    assert cache_key(images, SHAPE, _cfg(min_inliers=30)) != base  # bridges are part of the key
    assert cache_key(images, SHAPE, replace(_cfg(), flow=replace(_cfg().flow, threads=7))) == base  # cores do not matter


def test_hit_reuses_and_miss_recomputes(images, tmp_path, monkeypatch):
    calls = []
    original = cache_module.compute_correspondences

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(cache_module, "compute_correspondences", counted)
    timings: dict = {}
    first = load_or_compute(tmp_path, images, SHAPE, _cfg(), progress=False, timings=timings)
    assert len(calls) == 1 and "flow_s" in timings
    timings = {}
    again = load_or_compute(tmp_path, images, SHAPE, _cfg(), progress=False, timings=timings)
    assert len(calls) == 1 and timings == {"cache_hit": 1.0}
    for name in ("flow_fwd", "mask_bwd", "tracks_xy", "tracks_visible", "tracks_query"):
        assert np.array_equal(getattr(first, name), getattr(again, name)), name
    assert np.array_equal(first.bridges.pairs, again.bridges.pairs) and again.bridges.xy.shape == first.bridges.xy.shape
    load_or_compute(tmp_path, images, SHAPE, _cfg(min_inliers=30), progress=False)
    assert len(calls) == 2 and len(list(tmp_path.glob("correspondences-*.npz"))) == 2
    load_or_compute(None, images, SHAPE, _cfg(), progress=False)  # no cache folder: always computed
    assert len(calls) == 3


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing key"])
def test_unreadable_cache_file_is_a_miss_with_a_warning(images, tmp_path, damage):
    first = load_or_compute(tmp_path, images, SHAPE, _cfg(), progress=False)
    (path,) = tmp_path.glob("correspondences-*.npz")
    if damage == "missing key":
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files if k != "flow_fwd"}
        np.savez(path.with_suffix(""), **arrays)  # np.savez adds .npz
    else:
        data = path.read_bytes()
        path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"PK\x03\x04" + b"\x00" * 64, "empty": b""}[damage])
    warnings: list[str] = []
    timings: dict = {}
    again = load_or_compute(tmp_path, images, SHAPE, _cfg(), progress=False, timings=timings, warnings=warnings)
    assert "cache_hit" not in timings and len(warnings) == 1 and "recomputed" in warnings[0]
    assert np.array_equal(first.flow_fwd, again.flow_fwd)
    assert load_or_compute(tmp_path, images, SHAPE, _cfg(), progress=False, timings=timings) is not None
    assert timings.get("cache_hit") == 1.0  # the recomputed file is good again


def test_tracks_follow_a_known_shift_and_die_at_the_border():
    """LK tracks on a texture moving 3 px right per frame: every visible point sits at
    its query position + 3 px x (frame offset), and a point is invisible from the frame
    where it would have left the image on."""
    from flowmap.correspondences.tracks import TrackConfig, compute_tracks

    rng = np.random.default_rng(0)
    h, w, n, shift = 64, 96, 8, 3
    texture = (rng.random((h // 4, (w + n * shift) // 4, 3)) * 255).astype(np.uint8)
    texture = cv2.resize(texture, (w + n * shift, h), interpolation=cv2.INTER_LINEAR)
    frames = np.stack([texture[:, n * shift - t * shift : n * shift - t * shift + w] for t in range(n)])
    xy, vis, query = compute_tracks(frames, TrackConfig(grid=8, query_every=4, radius=n), progress=False)
    assert len(xy) > 0
    u = xy[..., 0] * w - 0.5
    m, t = np.nonzero(vis)
    expected = u[np.arange(len(xy)), query][m] + shift * (t - query[m])
    inside = (expected > 12) & (expected < w - 12)  # away from the LK window's border effects
    assert inside.sum() > 50
    assert np.abs(u[m, t][inside] - expected[inside]).max() < 0.2
    assert not ((u[m, t] + 0.5) > w).any(), "a point outside the image is marked visible"
    # forward tracks reach the right border and die there: no point is visible beyond it
    first = frames.shape[0] - 1
    leaving = (u[:, 0] + shift * first > w + 1) & vis[:, 0]
    assert not (vis[leaving, first]).any()


def test_flow_resolution_follows_the_refinement():
    """Flow at METHOD.md's 2x the working resolution for FlowMap alone, at the working
    resolution when the global refinement follows (issue 23), unless set; the resolved
    scale is what the cache key and summary.json see."""
    from flowmap.config import RunConfig
    from flowmap.correspondences.flow import flow_shape
    from flowmap.pipeline import with_flow_scale
    from flowmap.refine import RefineConfig

    shape, image = (180, 240), (480, 640)
    refined = with_flow_scale(RunConfig(refine=RefineConfig()))
    alone = with_flow_scale(RunConfig(refine=None))
    chosen = with_flow_scale(RunConfig(refine=RefineConfig(), correspondences=CorrespondenceConfig(flow=replace(CorrespondenceConfig().flow, scale=1.5))))
    assert flow_shape(shape, image, refined.correspondences.flow.scale) == shape
    assert flow_shape(shape, image, alone.correspondences.flow.scale) == (360, 480)
    assert flow_shape(shape, image, chosen.correspondences.flow.scale) == (270, 360)
    assert cache_key(np.zeros((2, 4, 4, 3), np.uint8), shape, refined.correspondences) != cache_key(
        np.zeros((2, 4, 4, 3), np.uint8), shape, alone.correspondences
    )


def test_cache_stores_tracks_by_their_visible_entries(tmp_path):
    """Issue 25: a track is seen in at most 2 x radius + 1 frames, so the cache stores its
    visible entries only; the file then grows linearly with the frames (the dense
    (tracks, frames) arrays grow with their square) and reads back exactly."""
    cfg = _cfg()
    cfg.tracks = replace(cfg.tracks, radius=2, query_every=2)
    images = make_scene(n_frames=16, height=48, width=64, seed=3).images
    first = load_or_compute(tmp_path, images, SHAPE, cfg, progress=False)
    visible = first.tracks_visible
    assert visible.sum(axis=1).max() <= 2 * 2 + 1 and visible.shape[1] == 16
    dense_tracks = first.tracks_xy.nbytes + visible.nbytes
    (path,) = tmp_path.glob("correspondences-*.npz")
    others = sum(getattr(first, f).nbytes for f in ("flow_fwd", "flow_bwd", "mask_fwd", "mask_bwd", "tracks_query"))
    stored_tracks = path.stat().st_size - others
    assert stored_tracks < 0.5 * dense_tracks
    again = load_or_compute(tmp_path, images, SHAPE, cfg, progress=False)
    assert np.array_equal(again.tracks_xy, first.tracks_xy) and np.array_equal(again.tracks_visible, visible)
    assert again.tracks_xy.dtype == np.float32 and again.tracks_visible.dtype == bool
