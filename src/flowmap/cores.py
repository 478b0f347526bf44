"""How many CPU threads a run should use: the cores that other processes leave free.

torch's intra-op parallel regions end at a barrier, so a step waits for its slowest
thread. When another process keeps one of two cores busy, a run with two intra-op threads
is several times slower than the same run with one (the speed issue measured 3-4x on the
development machine), while on an idle machine two threads are faster. ``flowmap run``
without ``--threads`` therefore samples the load of the cores it may run on (psutil) just
before it starts and uses the idle ones, never more than torch's own default.
"""

from __future__ import annotations

import math
import os
import sys
import threading


def free_cores(interval_s: float = 0.25) -> int | None:
    """Cores of this process's CPU affinity that were idle over the last ``interval_s``.

    Args:
        interval_s: sampling interval in seconds (this call blocks that long).

    Returns:
        The number of idle cores, at least 1; None where the load cannot be read (psutil
        missing or no per-CPU counters on this platform).

    Source: per-CPU busy percentages from ``psutil.cpu_percent(percpu=True)``; a core
    counts as busy in proportion to its busy percentage.
    """
    try:
        import psutil

        percent = psutil.cpu_percent(interval=interval_s, percpu=True)
        try:
            cpus = sorted(psutil.Process().cpu_affinity())
        except (AttributeError, NotImplementedError, OSError):  # macOS has no affinity
            cpus = list(range(len(percent)))
    except (ImportError, OSError, RuntimeError):
        return None
    usable = [percent[c] for c in cpus if c < len(percent)]
    if not usable:
        return None
    busy = sum(usable) / 100.0
    return choose_threads(len(usable), busy)


def choose_threads(cores: int, busy_cores: float) -> int:
    """Threads for ``cores`` cores of which ``busy_cores`` (a sum of per-core busy
    fractions) are used by other processes: the idle cores rounded to the nearest whole
    core (a core busy 40 % of the time still counts as free), at least 1.

    Raises:
        ValueError: when ``cores`` < 1 or ``busy_cores`` < 0.
    """
    if cores < 1 or busy_cores < 0:
        raise ValueError(f"cores >= 1 and busy_cores >= 0 are required, got {cores}, {busy_cores}")
    return max(1, min(cores, math.floor(cores - busy_cores + 0.5)))


def auto_threads(default: int, interval_s: float = 0.25) -> int:
    """The thread count of a run without ``--threads``: the free cores (:func:`free_cores`),
    at most ``default`` (torch's intra-op default, which follows ``OMP_NUM_THREADS``), and
    ``default`` where the load cannot be read.

    Raises:
        ValueError: when ``default`` < 1.
    """
    if default < 1:
        raise ValueError(f"default must be at least 1, got {default}")
    free = free_cores(interval_s)
    return default if free is None else min(default, free)


def lower_this_thread(nice: int) -> bool:
    """Give the calling thread the scheduling priority ``nice`` (Linux: a thread's own
    nice value, ``setpriority`` on its thread id, never raised); elsewhere nothing
    changes, since the same call would lower the whole process. Returns whether the
    thread now runs at ``nice`` or lower.

    For work beside the main stages that should only take the cores they leave idle (the
    other frames' tracks and images beside the refinement, issue 25): at nice 10 the
    kernel gives such a thread about a tenth of a core the main threads want.
    """
    if not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:  # never raise a thread that already runs lower
            os.setpriority(os.PRIO_PROCESS, tid, int(nice))
    except OSError:
        return False
    return True
