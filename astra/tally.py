"""What this luigi process really ran, beside what luigi says it ran.

A task that another worker is running when this process reaches it is waited for, and its ``run()`` then returns
without running it; luigi cannot tell and counts it among the tasks this process "ran successfully". astra says
so in a log line per task (``... was not run by this process``) and, when the process exits, in one line for the
process and the worker processes it forked (``--workers N``): how many tasks it ran itself and how many luigi
counts that other workers ran. The counts live in shared memory made before this process first forks (luigi's
workers) or counts a task, whichever comes first, so every worker adds to the same two numbers; a run that finds its
work done makes none (making it imports ctypes and multiprocessing's shared memory, ~5 ms of start-up).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os

logger = logging.getLogger("luigi-interface")

RAN, NOT_RUN = 0, 1


class _Shared:
    owner = os.getpid()
    counts: list | None = None  # [RAN, NOT_RUN], in shared memory when the platform allows it


def _counts() -> list:
    if _Shared.counts is None:
        try:
            _Shared.counts = multiprocessing.Array("q", 2)
        except OSError:  # no shared memory here (e.g. no /dev/shm): count this process alone
            _Shared.counts = [0, 0]
    return _Shared.counts


def count(which: int) -> None:
    """Count one task this process ran (``RAN``) or left to another worker (``NOT_RUN``)."""
    counts = _counts()
    lock = getattr(counts, "get_lock", None)
    if lock is None:
        counts[which] += 1
        return
    with lock():
        counts[which] += 1


def ran_here() -> tuple[int, int]:
    """How many tasks this process (with its workers) ran, and how many it left to other workers, so far."""
    counts = _Shared.counts
    if counts is None:
        return 0, 0  # nothing counted, and no worker forked that could have
    return counts[RAN], counts[NOT_RUN]


def _report() -> None:
    if os.getpid() != _Shared.owner:
        return  # a forked worker: its parent reports for it
    ran, not_run = ran_here()
    if not_run:
        logger.info(
            "astra: %d of the tasks luigi counts as run by this process were run by other workers (each named above "
            "as 'not run by this process'); this process ran %d astra task%s itself",
            not_run,
            ran,
            "" if ran == 1 else "s",
        )


os.register_at_fork(before=_counts)  # before luigi forks a worker: the worker must add to the parent's counts
atexit.register(_report)
