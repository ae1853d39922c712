"""Claims: a process's right to run one task, held in its ``astra.task`` row while ``run()`` goes on.

A claim is taken atomically before ``run()`` (status ``running`` with host, pid and start time), kept alive by a
heartbeat thread, and ends as ``done`` (in the same transaction as the task's own rows) or ``failed`` (with the
error). Another process that reaches a claimed task waits until the holder finishes, fails or goes silent for
``[astra] lease`` seconds; then it takes the task over. This is what stops two workers, even under two separate
luigi schedulers, from running one task twice.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import traceback
from contextlib import contextmanager

import luigi

import astra
from astra import identity, outputs, tally, values
from astra.config import settings
from astra.database import output_tables, queries
from astra.database.connection import close_thread_connection, retried

logger = logging.getLogger("luigi-interface")


def summarise(exc: BaseException) -> tuple[str, str]:
    """A one-line error and a traceback summary (the last frames only) for ``astra.task``; never raises."""
    try:
        message = str(exc)
    except Exception:  # an exception whose __str__ raises must still be recorded as a failure
        message = "<str() of the exception failed>"
    lines = message.strip().splitlines()
    error = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")[:2000]
    summary = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-15))
    return error, summary[-20000:]


class Claim:
    """One attempt of this process at one task."""

    def __init__(self, task: luigi.Task) -> None:
        self.task = task
        self.attempt: queries.Attempt | None = None
        self.recorded = False
        #: Hashes of the astra tasks run() yielded (dynamic dependencies), recorded as edges with the task.
        self.dynamic: dict[str, None] = {}
        self._started = 0.0
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> bool:
        """Wait until this process may run the task (True) or another process has finished it (False)."""
        task = self.task
        fields = {
            "task_module": task.task_module,
            "task_name": task.task_family,
            "task_id": task.task_id,
            "task_hash": identity.task_hash(task),
            "version": identity.task_version(task),
            "astra_version": astra.__version__,
        }
        params = identity.parameters(task)
        lease = settings().lease
        if not 0 < lease < math.inf:  # also NaN: a lease no one can wait out, or a heartbeat loop without pause
            raise ValueError(f"astra: [astra] lease must be a positive number of seconds, not {lease!r}")
        said, said_at = None, 0.0
        while True:
            got = queries.claim(fields, params, lease)
            if isinstance(got, queries.Attempt):
                break
            if got.status == queries.DONE:
                # luigi will count the task as run by this process: say plainly that it was not.
                tally.count(tally.NOT_RUN)
                self._status(
                    f"was not run by this process: {got.host} pid {got.pid} ran it (luigi counts it as run here)"
                )
                return False
            # Say so when the holder changes and once a minute: each message is a request to luigid, too.
            if (got.host, got.pid) != said or time.monotonic() - said_at > 60:
                said, said_at = (got.host, got.pid), time.monotonic()
                silence = f"{got.silence:.0f} s" if got.silence is not None else "never"
                self._status(
                    f"waiting: {got.host} pid {got.pid} is running this task (last heartbeat {silence} ago; "
                    f"taken over after {_lease(got, lease):g} s of silence)"
                )
            time.sleep(min(1.0, max(0.1, lease / 20)))  # short: a waiting worker holds a luigi slot
        if got.previous is not None:
            was = got.previous
            if was.status == queries.FAILED:
                why = "it failed"
            elif was.silence is not None and was.silence > _lease(was, lease):
                why = f"no heartbeat for {was.silence:.0f} s (its lease: {_lease(was, lease):g} s)"
            else:
                why = "its process is gone"
            logger.info(
                "astra: %s: attempt %d, taking over from %s pid %s (%s)", task, got.attempts, was.host, was.pid, why
            )
        tally.count(tally.RAN)
        self.adopt(got)
        return True

    def adopt(self, attempt: queries.Attempt) -> None:
        """Hold ``attempt`` from now on, heartbeating it (a SLURM job holds what its luigi worker claimed)."""
        self.attempt = attempt
        self._started = time.monotonic()
        self._beat = threading.Thread(target=self._heartbeat, args=(settings().lease / 4,), daemon=True)
        self._beat.start()

    def record(self, result: object = None) -> None:
        """Mark the task done with its result. Call inside ``queries.transaction()``.

        A result that cannot be stored as it is raises :class:`astra.values.UnstorableError` (naming where in the
        result it is), before anything is written: the caller records the task as failed.
        """
        model = outputs.output_model(self.task)
        if model is not None:  # the result goes into the task's output table, not the result column
            rows, result = outputs.rows(model, result, f"{self.task.task_family}.run()"), None
        stored = None if result is None else values.encode(result)
        requires = identity.required_hashes(self.task)
        queries.finish(self.attempt, stored, time.monotonic() - self._started, requires, self.dynamic)
        if model is not None:
            output_tables.insert(model, [(self.attempt.pk, row) for row in rows])
        self.recorded = True

    @retried
    def finish(self, result: object = None) -> None:
        """Mark the task done in a transaction of its own (run again if the connection drops during it)."""
        with queries.transaction():
            self.record(result)

    def fail(self, exc: BaseException) -> None:
        """Record the task as failed with ``exc``; a database error here is logged, never raised over ``exc``."""
        if self.recorded:  # already recorded, as done or (by astra.slurm, with what SLURM said) as failed
            return
        error, summary = summarise(exc)
        try:
            if not queries.fail(self.attempt, error, summary, time.monotonic() - self._started):
                logger.warning("astra: the failure of %s was not recorded: %s", self.task, queries.lost(self.attempt))
        except BaseException as db_exc:  # the original error matters more; say why it was not recorded
            logger.error("astra: could not record the failure of %s: %s", self.task, db_exc)

    def release(self) -> None:
        """Stop the heartbeat."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()

    def _heartbeat(self, interval: float) -> None:
        try:
            while not self._stop.wait(interval):
                try:
                    if not queries.heartbeat(self.attempt):
                        logger.warning(
                            "astra: %s is no longer this worker's: %s", self.task, queries.lost(self.attempt)
                        )
                        return
                except Exception as exc:  # a missed beat is harmless unless it lasts a whole lease
                    logger.warning("astra: heartbeat for %s failed: %s", self.task, exc)
        finally:
            close_thread_connection()

    def _status(self, message: str) -> None:
        if callable(self.task.set_status_message):
            self.task.set_status_message(message)
        logger.info("astra: %s: %s", self.task, message)


def _lease(holder: queries.Holder, default: float) -> float:
    """The lease a holder promised to keep (its own ``[astra] lease``); ``default`` for rows that do not say."""
    return holder.lease if holder.lease is not None else default


@contextmanager
def holding(claim: Claim, result: object = None):
    """A transaction in which the task writes its own rows; leaving it cleanly records the task as done."""
    with queries.transaction():
        yield
        claim.record(result)
