"""Atomic file and folder writes: a reader sees the old content or the complete new one.

Every writer of flowmap goes through these two helpers: a file is written to a
temporary sibling (same folder, so the rename stays on one file system) and renamed
over its target with :func:`os.replace`, which POSIX makes atomic; a folder is built
under a temporary sibling name, flushed to disk (``fsync`` of every file and folder, so
the rename is durable: a power cut cannot leave a renamed folder of empty files), and
moved into place once complete, an existing target being removed only then.

A killed process can leave ``OUT.tmp-<pid>`` (a folder being built) or, between the two
renames of a replacement, ``OUT.old-<pid>`` (the previous result) beside ``OUT``: the
next :func:`atomic_dir` on the same target removes the ones of dead processes and puts
an ``OUT.old-<pid>`` back where ``OUT`` is missing (:func:`clean_stale`). Two processes
writing the same user-named path (a run's ``OUT``, a training's weights file, a batch's
``OUT_ROOT``) at once are refused by :func:`lock_out` (an exclusive lock on the hidden
file ``.NAME.lock`` beside it, through the filelock library; the file stays, empty, after
the run: deleting a lock file races with a process opening it).

Any ``OSError`` of a write (disk full, permissions, a file size limit) leaves these
helpers as the one-line :class:`~flowmap.errors.OutputError`
(:func:`flowmap.errors.output_error`), never as a traceback.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from flowmap.errors import InputError, OutputError, output_error


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
        OutputError: the write failed (disk full, permissions); ``path`` is unchanged
            and the temporary file removed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(data):
            data(tmp)
        elif isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise output_error(path, exc) from exc
        raise
    return path


def write_image(path: Path | str, image, params: list[int] | tuple[int, ...] = ()) -> None:
    """Encode ``image`` (an OpenCV array, BGR or single-channel) in the format of
    ``path``'s suffix and write it: a full disk raises the ``OSError`` of the write
    (``cv2.imwrite`` only returns False).

    Raises:
        OSError: the suffix has no encoder, or the write failed.
    """
    import cv2

    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix, image, list(params))
    if not ok:
        raise OSError(f"no image encoder for {path.name}; use a .png or .jpg name")
    path.write_bytes(encoded.tobytes())


@contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Build a folder under a temporary sibling name, then move it to ``target``.

    ``with atomic_dir(out) as tmp:`` yields an empty folder ``out.tmp-<pid>``; when the
    block ends without an exception, an existing ``target`` is renamed aside, ``tmp``
    renamed to ``target`` and the old folder deleted (a failure of the rename puts the
    old folder back). When the block raises, ``tmp`` is removed and ``target`` is
    untouched. An ``OSError`` in the block or in the move (disk full) becomes the
    one-line :class:`~flowmap.errors.OutputError`.
    """
    target = Path(target)
    tmp = target.parent / f"{target.name}.tmp-{os.getpid()}"
    try:
        clean_stale(target)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        yield tmp
        _fsync_tree(tmp)
        _replace_dir(tmp, target)
        _fsync_path(target.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = exc.__cause__ if isinstance(exc, OutputError) else exc  # a file inside: name the folder
        if isinstance(cause, OSError):
            raise output_error(target, cause) from cause
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


def _fsync_path(path: Path) -> None:
    """Flush one file or folder to disk (``os.fsync`` on a read-only descriptor)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` (``root`` included) to disk."""
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync_path(Path(folder) / name)
        _fsync_path(Path(folder))


def _pid_alive(pid: int) -> bool:
    """True when a process with this id exists (signal 0 probes without sending)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale(target: Path | str) -> list[Path]:
    """Remove what dead processes left beside ``target``; restore a lost ``target``.

    ``target.tmp-<pid>`` folders of dead processes are deleted (they were never
    complete). ``target.old-<pid>`` of a dead process is the previous complete result,
    renamed aside by a replacement that was killed before it finished: it is renamed back
    to ``target`` when ``target`` is missing, deleted otherwise. Leftovers of living
    processes are not touched.

    Returns:
        The paths removed or restored.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    pattern = re.compile(re.escape(target.name) + r"\.(tmp|old)-(\d+)$")
    done = []
    for path in sorted(target.parent.iterdir()):
        match = pattern.match(path.name)
        if match is None or _pid_alive(int(match.group(2))):
            continue
        if match.group(1) == "old" and not target.exists():
            path.rename(target)
        else:
            shutil.rmtree(path, ignore_errors=True)
        done.append(path)
    return done


@contextmanager
def lock_out(out: Path | str) -> Iterator[Path]:
    """Hold an exclusive lock on the user-named output ``out`` (a run's folder, a
    training's weights file, a batch's root) for the block: file ``.NAME.lock`` beside it.

    Every command that writes a path the user named takes this lock first, so two
    processes never write one output at once.

    Yields:
        The lock file's path.

    Raises:
        InputError: another process holds the lock (another flowmap command writes ``out``).
        OutputError: the lock file cannot be created (disk full, permissions).
    """
    out = Path(out)
    path = out.parent / f".{out.name}.lock"
    lock = FileLock(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except Timeout:
        raise InputError(
            f"another flowmap process is writing {out} (lock {path}); wait for it to finish or choose another output path"
        ) from None
    except OSError as exc:
        raise output_error(out, exc) from exc
    try:
        yield path
    finally:
        lock.release()


@contextmanager
def scratch_dir(path: Path | str | None, prefix: str = "flowmap-") -> Iterator[Path]:
    """A working folder for the block, removed when the block ends (normally, by an
    exception or by Ctrl-C / SIGTERM).

    Args:
        path: where it goes, e.g. inside a run's ``OUT.cache`` so that only a SIGKILL can
            leave it, and then where the run's own cleanup and ``--resume`` find it; what
            a killed process left there is removed first. None: a new folder in the
            system's temporary directory (:class:`tempfile.TemporaryDirectory`).
        prefix: the name prefix of a folder in the temporary directory.

    Raises:
        OutputError: the folder cannot be created (disk full, permissions).
    """
    if path is None:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            yield Path(tmp)
        return
    path = Path(path)
    try:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    except OSError as exc:
        raise output_error(path, exc) from exc
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
