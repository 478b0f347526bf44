"""The thread count of a run without --threads: the cores other processes leave idle."""

import subprocess
import sys

import pytest

from flowmap.cores import auto_threads, choose_threads, free_cores


def test_choose_threads_counts_idle_cores():
    assert choose_threads(2, 0.0) == 2  # idle machine: every core
    assert choose_threads(2, 1.0) == 1  # another process keeps one of two cores busy
    assert choose_threads(2, 2.0) == 1  # all busy: still one thread
    assert choose_threads(8, 2.6) == 5  # 5.4 idle cores
    assert choose_threads(8, 2.4) == 6  # 5.6 idle cores: a core busy 40 % counts as free
    with pytest.raises(ValueError):
        choose_threads(0, 0.0)
    with pytest.raises(ValueError):
        choose_threads(2, -0.5)


def test_a_busy_process_takes_a_core_away():
    """With one process spinning, at least one core of the affinity set is not free."""
    import psutil

    cores = len(psutil.Process().cpu_affinity())
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        free = free_cores(interval_s=0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert free is not None and 1 <= free <= max(1, cores - 1)


def test_auto_threads_never_exceeds_the_default():
    assert auto_threads(1, interval_s=0.05) == 1
    assert 1 <= auto_threads(64, interval_s=0.05) <= 64
    with pytest.raises(ValueError):
        auto_threads(0)


def test_lower_this_thread_changes_only_the_calling_thread():
    """The thread that asks gets nice 10; the main thread (the process) keeps its own."""
    import os
    import sys
    import threading

    from flowmap.cores import lower_this_thread

    seen = {}

    def work():
        seen["lowered"] = lower_this_thread(10)
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = os.getpriority(os.PRIO_PROCESS, 0)
    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert os.getpriority(os.PRIO_PROCESS, 0) == before
    if sys.platform.startswith("linux"):
        assert seen["lowered"] and seen["nice"] == max(before, 10)
    else:
        assert not seen["lowered"]
