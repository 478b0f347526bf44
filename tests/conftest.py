"""Shared test fixtures: where the real sequences are, and skipping without them.

The sequences (fox, tum-office, ...) live outside the repository, in ``../shared/data``
relative to it (override with the environment variable ``FLOWMAP_SHARED_DATA``). Tests
that read them are marked with :func:`needs_data` and skip, with the reason, when the
folder is absent, so the suite passes from a bare clone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("FLOWMAP_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
"""Folder of the shared sequences (``images/``, ``poses.txt``, ``intrinsics.json`` each)."""


def shared_sequences() -> list[str]:
    """Names of the sequences in :data:`SHARED_DATA` with ground-truth poses ([] when absent)."""
    if not SHARED_DATA.is_dir():
        return []
    return sorted(p.name for p in SHARED_DATA.iterdir() if (p / "poses.txt").is_file())


def needs_data(*names: str) -> pytest.MarkDecorator:
    """Skip unless every named sequence (or, with no names, the folder) is in :data:`SHARED_DATA`."""
    missing = [n for n in names if not (SHARED_DATA / n / "poses.txt").is_file()]
    if not SHARED_DATA.is_dir():
        reason = f"shared data folder {SHARED_DATA} is absent (set FLOWMAP_SHARED_DATA to use another)"
    else:
        reason = f"shared sequence(s) {', '.join(missing)} absent from {SHARED_DATA}"
    return pytest.mark.skipif(not SHARED_DATA.is_dir() or bool(missing), reason=reason)


def require_data(*names: str) -> None:
    """Inside a fixture: skip the tests that use it unless the named sequences are present."""
    marker = needs_data(*names)
    if marker.args[0]:
        pytest.skip(marker.kwargs["reason"])
