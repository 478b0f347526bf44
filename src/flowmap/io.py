"""Atomic file and folder writes: a reader sees the old content or the complete new one.

Every writer of flowmap goes through these two helpers: a file is written to a
temporary sibling (same folder, so the rename stays on one file system) and renamed
over its target with :func:`os.replace`, which POSIX makes atomic; a folder is built
under a temporary sibling name and moved into place once complete, an existing target
being removed only then.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: Path | str, data: bytes | str | Callable[[Path], None]) -> Path:
    """Write ``path`` atomically.

    Args:
        path: the file to (re)write; its folder is created if missing.
        data: bytes, text (UTF-8), or a function ``f(tmp_path)`` that writes the
            content to the temporary path it is given (e.g. ``torch.save``, ``np.savez``;
            the temporary name keeps ``path``'s suffix, which ``np.savez`` needs).

    Returns:
        ``path``.

    Raises:
        OSError: the write failed (disk full, permissions); ``path`` is unchanged and
            the temporary file removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        if callable(data):
            data(tmp)
        elif isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Build a folder under a temporary sibling name, then move it to ``target``.

    ``with atomic_dir(out) as tmp:`` yields an empty folder ``out.tmp-<pid>``; when the
    block ends without an exception, an existing ``target`` is renamed aside, ``tmp``
    renamed to ``target`` and the old folder deleted (a failure of the rename puts the
    old folder back). When the block raises, ``tmp`` is removed and ``target`` is
    untouched.
    """
    target = Path(target)
    tmp = target.parent / f"{target.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(new: Path, target: Path) -> None:
    """Move the complete folder ``new`` to ``target``; an existing ``target`` is removed last."""
    old = None
    if target.exists():
        old = target.parent / f"{target.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
