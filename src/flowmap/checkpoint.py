"""Fingerprinted checkpoints of the optimisation, for ``--resume``.

A checkpoint is the state of the loop after a step (network and optimiser state, the
sampling generator, the focal history, the logged history, the learning-rate scale)
with the fingerprint of the run it belongs to: a hash of the optimisation settings,
the known focal length, the seed, the number of frames and the working resolution. A
resume continues only from a checkpoint with the same fingerprint, so it ends with the
same result as an uninterrupted run. A checkpoint that cannot be read (truncated,
corrupt, foreign) is never trusted: the run starts again and says so in a warning.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch

from flowmap.io import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 2
"""Version of the checkpoint's contents, part of every fingerprint: a checkpoint written by
a flowmap whose model or state layout differed (format 1: before the pipeline restructure,
when the learned focal was named ``focal``) never matches, so it is recomputed, not loaded."""


def fingerprint(*parts) -> str:
    """Hex SHA-256 (16 characters) of the run's settings and :data:`CHECKPOINT_FORMAT`;
    dataclasses are hashed field by field."""
    plain = [CHECKPOINT_FORMAT] + [asdict(p) if is_dataclass(p) and not isinstance(p, type) else p for p in parts]
    blob = json.dumps(plain, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_checkpoint(path: Path | str, state: dict) -> None:
    """Write ``state`` (tensors and plain data) with ``torch.save`` to ``path``, atomically."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path | str, expected: str, warnings: list[str] | None = None) -> dict | None:
    """The checkpoint at ``path`` if it exists, can be read and has the fingerprint ``expected``.

    Loaded with ``torch.load(weights_only=True)`` (tensors and plain data only).

    Args:
        path: the checkpoint file.
        expected: the fingerprint of this run (:func:`fingerprint`).
        warnings: receives one line when a file exists but cannot be read (it is then
            deleted; the run starts from step 0).

    Returns:
        The state dict, or None (no file, unreadable, or another run's).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"expected a dict, got {type(state).__name__}")
    except Exception as exc:  # noqa: BLE001  (zipfile, EOF, pickle errors ...: a miss, never trusted)
        path.unlink(missing_ok=True)
        if warnings is not None:
            warnings.append(
                f"the checkpoint {path.name} could not be read ({type(exc).__name__}); the optimisation started again"
            )
        return None
    return state if state.get("fingerprint") == expected else None
