"""Tests of flowmap.io: atomic folders, leftovers of killed runs, the lock on OUT."""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flowmap.errors import InputError, OutputError
from flowmap.io import atomic_dir, atomic_write, clean_stale, lock_out, scratch_dir


def dead_pid() -> int:
    """The id of a process that has exited (a finished child)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_killed_replacement_restores_previous_result(tmp_path):
    """A kill between the two renames of --overwrite leaves OUT.old-<pid> only: the next
    atomic_dir puts it back first, then replaces it as usual (issue 11.7)."""
    out = tmp_path / "OUT"
    old = tmp_path / f"OUT.old-{dead_pid()}"
    old.mkdir()
    (old / "poses.txt").write_text("previous")
    assert clean_stale(out) == [old]
    assert (out / "poses.txt").read_text() == "previous" and not old.exists()


def test_stale_tmp_of_dead_process_removed_living_kept(tmp_path):
    out = tmp_path / "OUT"
    dead = tmp_path / f"OUT.tmp-{dead_pid()}"
    living = tmp_path / f"OUT.tmp-{os.getppid()}"
    dead.mkdir()
    living.mkdir()
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("new")
    assert not dead.exists() and living.exists()
    assert (out / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["OUT", living.name])


def test_old_of_dead_process_removed_when_out_exists(tmp_path):
    out = tmp_path / "OUT"
    out.mkdir()
    (out / "poses.txt").write_text("current")
    old = tmp_path / f"OUT.old-{dead_pid()}"
    old.mkdir()
    clean_stale(out)
    assert not old.exists() and (out / "poses.txt").read_text() == "current"


def test_atomic_dir_flushes_before_rename(tmp_path, monkeypatch):
    """Every file and folder is fsynced before the final rename (durable replacement)."""
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    out = tmp_path / "OUT"
    with atomic_dir(out) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.bin").write_bytes(b"1")
    names = {Path(p).name for p in synced}
    assert {"b.bin", "sub", tmp.name, tmp_path.name} <= names


def _hold(path: str, ready, release) -> None:
    with lock_out(Path(path)):
        ready.set()
        release.wait(30)


@contextlib.contextmanager
def held_by_another_process(out: Path):
    """OUT locked by another process (a second flowmap run) for the duration of the block."""
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(out), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        yield
    finally:
        release.set()
        holder.join(30)


def test_second_writer_of_same_out_refused(tmp_path):
    """Two runs writing one OUT at once: the second gets one line, the first keeps going (issue 11.5)."""
    out = tmp_path / "OUT"
    with held_by_another_process(out):
        with pytest.raises(InputError, match="another flowmap process is writing"):
            with lock_out(out):
                pass
    with lock_out(out):  # free again once the first one finished
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".OUT.lock"]


def test_cli_run_refuses_out_locked_by_another_run(tmp_path):
    """`flowmap run` into an OUT another run holds: exit 2, one line, nothing written."""
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from flowmap.cli import app

    images = tmp_path / "frames"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "OUT"
    with held_by_another_process(out):
        result = CliRunner().invoke(app, ["run", str(images), "-o", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "another flowmap process is writing" in lines[0]
    assert not out.exists() and not (tmp_path / "OUT.cache").exists()


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_every_write_helper_turns_a_full_disk_into_one_line(tmp_path, monkeypatch):
    """atomic_write, atomic_dir and lock_out (the helpers every writer uses) raise the one-line
    OutputError for an OSError, naming the target and what to do, and leave no temporary file."""
    with pytest.raises(OutputError) as caught:
        atomic_write(tmp_path / "a.json", lambda tmp: (Path(tmp).write_text("part"), _disk_full()))
    assert str(caught.value).startswith(f"cannot write {tmp_path / 'a.json'}: No space left on device; free disk space")
    with pytest.raises(OutputError, match=r"cannot write .*OUT: No space left on device; .*--resume"):
        with atomic_dir(tmp_path / "OUT") as tmp:
            atomic_write(tmp / "inner.txt", lambda t: _disk_full())  # a file inside: the message names OUT
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.setattr("flowmap.io.FileLock.acquire", _disk_full)
    with pytest.raises(OutputError, match="No space left on device"):
        with lock_out(tmp_path / "OUT"):
            pass


def test_a_scratch_folder_at_a_chosen_path_replaces_what_a_killed_process_left_and_goes_at_the_end(tmp_path):
    """scratch_dir(OUT.cache/refine): stale content is removed first, the folder is removed
    when the block ends or raises (only a SIGKILL leaves it, inside OUT.cache)."""
    work = tmp_path / "OUT.cache" / "refine"
    work.mkdir(parents=True)
    (work / "database.db").write_bytes(b"a killed run's COLMAP database")
    with scratch_dir(work) as folder:
        assert folder == work and list(work.iterdir()) == []
        (folder / "database.db").write_bytes(b"x")
    assert not work.exists() and (tmp_path / "OUT.cache").is_dir()
    with pytest.raises(KeyboardInterrupt):
        with scratch_dir(work) as folder:
            (folder / "database.db").write_bytes(b"x")
            raise KeyboardInterrupt
    assert not work.exists()
    with scratch_dir(None, prefix="flowmap-test-") as folder:
        assert folder.is_dir() and folder.name.startswith("flowmap-test-")
    assert not folder.exists()
