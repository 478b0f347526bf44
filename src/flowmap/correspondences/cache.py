"""On-disk cache of the correspondences, keyed by the frames and the CorrespondenceConfig.

The key is a SHA-256 of the frames' bytes, the working resolution and every setting of
:class:`~flowmap.correspondences.CorrespondenceConfig` (flow, tracks, bridges; thread
counts excluded), so a changed input or setting never reuses stale correspondences.
Files are written atomically (:func:`flowmap.io.atomic_write`). A cache file that cannot
be read back (truncated, corrupt, from another version) is a cache miss: it is deleted,
the correspondences are recomputed and a warning says so.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from flowmap.correspondences import CorrespondenceConfig, compute_correspondences
from flowmap.io import atomic_write
from flowmap.types import Bridges, Correspondences

CACHE_VERSION = 4
"""Bumped when the cached fields or their meaning change (4: tracks stored sparsely)."""

_BRIDGE_PREFIX = "bridge_"
_SPARSE_TRACKS = ("tracks_xy", "tracks_visible")
"""Stored as their visible entries only (issue 25): a track is seen in at most
2 x radius + 1 frames, so the dense (M, N) arrays, M ~ N / query_every x grid^2, grew
with the square of the frame count (219 of the 560 MB of a 334-frame run's cache)."""


def cache_key(images: np.ndarray, shape: tuple[int, int], cfg: CorrespondenceConfig) -> str:
    """Hex SHA-256 (first 16 characters) of the frames, the working resolution and the settings."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(repr(images.shape).encode())
    settings = asdict(cfg)
    for part in settings.values():
        part.pop("threads", None)  # how many cores compute it does not change the result
    blob = {"shape": list(shape), "settings": settings, "version": CACHE_VERSION}
    h.update(json.dumps(blob, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _arrays(corr: Correspondences) -> dict[str, np.ndarray]:
    """The arrays written to the cache file: the tracks as their visible entries
    (``tracks_xy`` is zero elsewhere, :func:`flowmap.correspondences.tracks.compute_tracks`,
    so this is lossless) and the visibility as bits; everything else as it is."""
    skip = ("bridges", *_SPARSE_TRACKS)
    out = {f.name: getattr(corr, f.name) for f in fields(corr) if f.name not in skip}
    visible = np.asarray(corr.tracks_visible, bool)
    out["tracks_visible_bits"] = np.packbits(visible, axis=1)
    out["tracks_visible_xy"] = np.asarray(corr.tracks_xy)[visible]
    out.update({_BRIDGE_PREFIX + f.name: getattr(corr.bridges, f.name) for f in fields(Bridges)})
    return out


def _from_arrays(z) -> Correspondences:
    bridges = Bridges(**{f.name: z[_BRIDGE_PREFIX + f.name] for f in fields(Bridges)})
    names = [f.name for f in fields(Correspondences) if f.name not in ("bridges", *_SPARSE_TRACKS)]
    arrays = {k: z[k] for k in names}
    n_frames = arrays["flow_fwd"].shape[0] + 1
    visible = np.unpackbits(z["tracks_visible_bits"], axis=1, count=n_frames).astype(bool)
    xy = np.zeros(visible.shape + (2,), np.float32)
    xy[visible] = z["tracks_visible_xy"]
    return Correspondences(**arrays, tracks_xy=xy, tracks_visible=visible, bridges=bridges)


def load_or_compute(
    cache_dir: Path | None,
    images: np.ndarray,
    shape: tuple[int, int],
    cfg: CorrespondenceConfig,
    progress: bool = True,
    timings: dict[str, float] | None = None,
    warnings: list[str] | None = None,
) -> Correspondences:
    """Correspondences from ``cache_dir`` when cached for these frames and settings, else computed.

    Args:
        cache_dir: the cache folder; None: nothing is read or written.
        images: (N, H, W, 3) uint8 frames at the input resolution.
        shape: working resolution (h, w).
        cfg: the settings (part of the key).
        progress: show progress bars while computing.
        timings: receives ``flow_s``/``tracks_s``/``bridges_s`` when computed, or
            ``cache_hit`` = 1.0 when loaded.
        warnings: receives one line when a cache file was unreadable and recomputed.

    Returns:
        :class:`Correspondences` at ``shape``.
    """
    if cache_dir is None:
        return compute_correspondences(images, shape, cfg, progress, timings)
    path = Path(cache_dir) / f"correspondences-{cache_key(images, shape, cfg)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                corr = _from_arrays(z)
        except Exception as exc:  # noqa: BLE001  (truncated, corrupt or foreign: a miss, never trusted)
            path.unlink(missing_ok=True)
            if warnings is not None:
                warnings.append(f"the cached correspondences {path.name} could not be read ({type(exc).__name__}); recomputed")
        else:
            if timings is not None:
                timings["cache_hit"] = 1.0
            return corr
    corr = compute_correspondences(images, shape, cfg, progress, timings)
    arrays = _arrays(corr)
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays))
    return corr
