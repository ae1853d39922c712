"""Recording: how one run of a task becomes its ``astra.task`` row. :class:`astra.BaseTask` delegates to this module.

A run takes these steps, all of them here:

1. **claim** (:meth:`Claim.acquire`): before ``run()``, the task's row is taken atomically (status ``running``,
   host, pid, start time, a random token). Another process that reaches a claimed task waits until the holder
   finishes, fails or goes silent for its ``[astra] lease``; then it takes the task over. This is what stops two
   workers, even under two separate luigi schedulers, from running one task twice.
2. **heartbeat** (:meth:`Claim.adopt`): a thread tells other workers every ``lease / 4`` seconds that the claim
   is alive.
3. **finish** (:meth:`Claim.finish`, or :meth:`Claim.record` inside ``BaseTask.completion()``): when ``run()``
   returns, the row becomes ``done`` with the result, in one transaction with the task's own rows.
4. **fail** (:meth:`Claim.fail`): an exception makes the row ``failed``, with the error (:func:`summarise`).
5. **done-cache**: this process's :func:`astra.targets.known` learns that the task is done.

luigi calls ``task.run()`` and nothing else, so :func:`recorded` wraps, once per class, whatever ``run()`` a
``BaseTask`` subclass resolves to (its own, a mixin's, an inherited one or luigi's empty default) in
:func:`run_recorded`, which takes the steps above around it.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager

import luigi
from luigi.task import flatten

from astra import config, identity, outputs, tally, values
from astra.config import settings
from astra.database import output_tables, queries
from astra.database.connection import DatabaseGoneError, close_thread_connection, retried, sharing
from astra.executors import executor_for
from astra.targets import database_targets, input_name, known, recorded_inputs, reopen_if_stale
from astra.version import __version__

logger = logging.getLogger("luigi-interface")

#: The longest error line and traceback kept in a row (characters): the first line of the message, the last frames.
ERROR_CHARS, TRACEBACK_CHARS, TRACEBACK_FRAMES = 2000, 20000, 15


def summarise(exc: BaseException) -> tuple[str, str]:
    """A one-line error and a traceback summary (the last frames only) for ``astra.task``; never raises.

    The one summary of a failure: a task's, a batch item's and a SLURM job's are written alike.
    """
    try:
        message = str(exc)
    except Exception:  # an exception whose __str__ raises must still be recorded as a failure
        message = "<str() of the exception failed>"
    lines = message.strip().splitlines()
    error = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")[:ERROR_CHARS]
    summary = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-TRACEBACK_FRAMES))
    return error, summary[-TRACEBACK_CHARS:]


def recorded_failure(exc: BaseException) -> tuple[int, str] | None:
    """The task row (pk) and the one-line error that recorded a task's failure with ``exc``; None if none did."""
    return getattr(exc, "_astra_failure", None)


def fields(cls: type[luigi.Task], task_id: str, task_hash: str, version: str) -> dict:
    """The identity columns of a task's row: the same for a task run alone and for a batch item. ``version``: the
    task's own (a property, or set in ``__init__``), which its hash was worked out with."""
    return {
        "task_module": cls.__module__,
        "task_name": cls.get_task_family(),
        "task_id": task_id,
        "task_hash": task_hash,
        "version": version,
        "astra_version": __version__,
    }


class ItemFailuresError(RuntimeError):
    """Failures each recorded in the row of its own task (a batch's items): what sums them up needs no traceback."""


class InputLostError(RuntimeError):
    """A task this one needed is not recorded done any more (forgotten, or lost in a server crash, while this one
    ran): this one is not done either."""


class Claim:
    """One attempt of this process at one task."""

    def __init__(self, task: luigi.Task) -> None:
        self.task = task
        self.attempt: queries.Attempt | None = None
        self.recorded = False
        #: Hashes of the astra tasks run() yielded (dynamic dependencies), recorded as edges with the task.
        self.dynamic: dict[str, None] = {}
        #: The ``[astra]`` settings, read once per claim (reading them costs as much as a trivial task's record).
        self.settings = None
        self._started = 0.0
        #: Who recorded the task done, when :meth:`acquire` found it so.
        self.done_by: queries.Holder | None = None

    def acquire(self) -> bool:
        """Wait until this process may run the task (True) or another process has finished it (False)."""
        task = self.task
        row = fields(type(task), task.task_id, identity.task_hash(task), identity.task_version(task))
        params = identity.parameters(task)
        self.settings = settings()
        lease = self.settings.lease  # more than 0 and finite: settings() refuses any other
        said, said_at = None, 0.0
        every = min(1.0, max(0.1, lease / 20))  # short: a waiting worker holds a luigi slot
        watch = queries.Watch(every)
        while True:
            got = queries.claim(row, params, lease, watch)
            if isinstance(got, queries.Attempt):
                break
            if got.status == queries.DONE:
                self.done_by = got
                return False
            # Say so when the holder changes and once a minute: each message is a request to luigid, too.
            if (got.host, got.pid) != said or time.monotonic() - said_at > 60:
                said, said_at = (got.host, got.pid), time.monotonic()
                silence = f"{got.silence:.0f} s" if got.silence is not None else "never"
                self._status(
                    f"waiting: {got.host} pid {got.pid} is running this task (last heartbeat {silence} ago; "
                    f"taken over after {_lease(got, lease):g} s of silence)"
                )
            time.sleep(every)
        if got.previous is not None and got.previous.set_aside:
            logger.debug("astra: %s: taken up again after the tasks its run() yielded", task)
        elif got.previous is not None:
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
        resumed = got.previous is not None and got.previous.set_aside
        if not resumed:  # a run() taken up again after what it yielded was counted when it began
            tally.count(tally.RAN)
        self.adopt(got)
        return True

    def not_run_here(self) -> None:
        """luigi will count the task as run by this process, which found it done (and still done): say plainly that
        it was not."""
        tally.count(tally.NOT_RUN)
        who = self.done_by
        self._status(f"was not run by this process: {who.host} pid {who.pid} ran it (luigi counts it as run here)")

    def adopt(self, attempt: queries.Attempt) -> None:
        """Hold ``attempt`` from now on, heartbeating it (a SLURM job holds what its luigi worker claimed)."""
        if self.settings is None:
            self.settings = settings()
        self.attempt = attempt
        self._started = time.monotonic()
        heartbeats().hold(self, self.settings.lease / 4)

    def record(self, result: object = None) -> None:
        """Mark the task done with its result, in the caller's transaction if one is open.

        A result that cannot be stored as it is raises :class:`astra.values.UnstorableError` (naming where in the
        result it is), before anything is written: the caller records the task as failed.
        """
        model = outputs.output_model(self.task)
        if model is not None:  # the result goes into the task's output table, not the result column
            rows, result = outputs.rows(model, result, f"{self.task.task_family}.run()"), None
            output_tables.ready(model)  # before the record: a table that does not fit stops the process
        stored = None if result is None else values.encode(result)
        # Its record checks that what it requires (a batch: its items) and what it yielded are still done: luigi
        # found them done before it ran this task and does not ask again, and meanwhile someone may forget one
        # (`forget --cascade` finds no edge to a task still running), or a server crash lose a record that was not
        # on disk yet ([astra] synchronous_commit). And it links to them.
        inputs = recorded_inputs(flatten(self.task.requires()), items=False)
        requires = list(dict.fromkeys([*identity.required_hashes(self.task), *inputs]))
        durable = (self.settings or settings()).synchronous_commit
        needed = {**{key: f"a task run() yielded (hash {key[:10]})" for key in self.dynamic}, **inputs}
        try:
            queries.finish(
                self.attempt, stored, time.monotonic() - self._started, requires, self.dynamic, durable, needed
            )
        except queries.InputsGoneError as gone:
            for key in gone.keys:  # luigi may ask again in this process (a retry): the database's answer now
                known().mark_not_done(key)
            lost = input_name(needed[gone.keys[0]], gone.keys[0])
            more = f" (and {len(gone.keys) - 1} more)" if len(gone.keys) > 1 else ""
            raise InputLostError(
                f"astra: {lost}{more}, which this task needs, is not recorded done any more: it was forgotten "
                "while this task ran, or a server crash lost its record ([astra] synchronous_commit); run again, "
                "and it is made first"
            ) from None
        if model is not None:
            if self.attempt.attempts > 1:  # an earlier attempt may have been done (reopened since): its rows go
                output_tables.delete_rows(model, [self.attempt.pk])
            output_tables.insert(model, [(self.attempt.pk, row) for row in rows])
        self.recorded = True

    @retried
    def finish(self, result: object = None) -> None:
        """Mark the task done (all of it again if the connection drops meanwhile).

        Without an output table that is one statement where the database allows it (one round trip on
        PostgreSQL, see :func:`astra.database.queries.finish`); with one, the rows and the record share a
        transaction.
        """
        try:
            if outputs.output_model(self.task) is None:
                self.record(result)
                return
            with queries.transaction():
                self.record(result)
        except queries.ClaimLostError:
            # Another process recorded the task done meanwhile (a batch of its items, or a run that took it over
            # after a forget): the first done record is kept, and the task is done.
            self.done_by = queries.done_by(self.attempt.task_hash)
            if self.done_by is None:
                raise
            self.recorded = True
            who = self.done_by
            self._status(f"recorded done meanwhile by {who.host} pid {who.pid}: its record is kept, not this run's")

    def fail(self, exc: BaseException) -> None:
        """Record the task as failed with ``exc``; a database error here is logged, never raised over ``exc``."""
        if self.recorded:  # already recorded, as done or (by the SLURM executor, with what SLURM said) as failed
            return
        error, summary = summarise(exc)
        try:
            if not queries.fail(self.attempt, error, summary, time.monotonic() - self._started):
                if queries.recorded_done(self.attempt):  # e.g. Ctrl-C just after the commit: the record stands
                    self.recorded = True
                    self._status(f"recorded done by this run before {error or type(exc).__name__}; it is done")
                    return
                logger.warning("astra: the failure of %s was not recorded: %s", self.task, queries.lost(self.attempt))
                return
        except BaseException as db_exc:  # the original error matters more; say why it was not recorded
            logger.error("astra: could not record the failure of %s: %s", self.task, db_exc)
            return
        try:
            exc._astra_failure = (self.attempt.pk, error)
        except AttributeError:  # an exception class without a __dict__: luigi shows its traceback
            pass

    def set_aside(self) -> None:
        """luigi dropped run() to run what it yielded: the next claim of the task goes on with this attempt."""
        try:
            queries.set_aside(self.attempt)
        except Exception as exc:  # the next claim takes it over as from a process gone: one attempt more
            logger.debug("astra: could not set %s aside: %s", self.task, exc)

    def release(self) -> None:
        """Stop the heartbeat (once this returns, no beat of this claim is under way)."""
        heartbeats().let_go(self)

    def beat(self) -> bool:
        """Tell other workers this claim is alive; False once it is no longer this process's (stop beating)."""
        try:
            if not queries.heartbeat(self.attempt):
                if not queries.ended_itself(self.attempt):  # e.g. a beat that waited for a long record to commit
                    logger.warning("astra: %s is no longer this worker's: %s", self.task, queries.lost(self.attempt))
                return False
        except Exception as exc:  # a missed beat is harmless unless it lasts a whole lease
            logger.warning("astra: heartbeat for %s failed: %s", self.task, exc)
        return True

    def _status(self, message: str) -> None:
        if callable(self.task.set_status_message):
            self.task.set_status_message(message)
        logger.info("astra: %s: %s", self.task, message)


def _lease(holder: queries.Holder, default: float) -> float:
    """The lease a holder promised to keep (its own ``[astra] lease``); ``default`` for rows that do not say."""
    return holder.lease if holder.lease is not None else default


class Heartbeats:
    """One thread per process that beats every claim the process holds, each every ``lease / 4`` seconds.

    A thread per claim, started and joined around every run, cost a trivial task more than its records. This one
    starts with the first claim and sleeps until the next beat is due; with no claim left it waits to be told of the
    next. It beats through the process's connection (:func:`astra.database.connection.sharing`), or through one
    of its own, closed again, while another thread's transaction holds that one.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._due: dict[Claim, tuple[float, float]] = {}  # claim -> (next beat by time.monotonic(), interval)
        self._beating: Claim | None = None
        self._waiting_until: float | None = None  # when the thread wakes (math.inf: when told); None: it is busy
        self._thread: threading.Thread | None = None

    def hold(self, claim: Claim, interval: float) -> None:
        """Beat ``claim`` every ``interval`` seconds from now on."""
        with self._changed:
            due = time.monotonic() + interval
            self._due[claim] = (due, interval)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="astra-heartbeats", daemon=True)
                self._thread.start()
            # Wake the thread only if it would sleep past this beat: each wake-up costs the running task a switch
            # of the interpreter lock (up to 5 ms), more than a trivial task's records.
            if self._waiting_until is not None and due < self._waiting_until:
                self._changed.notify_all()

    def let_go(self, claim: Claim) -> None:
        """Beat ``claim`` no more; returns once no beat of it is under way."""
        with self._changed:
            self._due.pop(claim, None)
            while self._beating is claim:
                self._changed.wait()

    def _run(self) -> None:
        connected = False
        while True:
            with self._changed:
                claim = self._next(connected)
            if claim is None:  # nothing to beat: close its connection while waiting (SQLite's is the thread's)
                close_thread_connection()
                connected = False
                continue
            connected, keep = True, False
            try:
                # The process's connection, unless a transaction holds it for long: a late beat may cost the claim.
                with sharing(wait=0.2):
                    keep = claim.beat()
            finally:
                with self._changed:
                    if not keep:
                        self._due.pop(claim, None)
                    self._beating = None
                    self._changed.notify_all()

    def _next(self, connected: bool) -> Claim | None:
        """Wait (holding the lock) for the next claim due a beat; None when there is none and a connection open."""
        while True:
            if not self._due and connected:
                return None
            now = time.monotonic()
            if self._due:
                claim, (due, interval) = min(self._due.items(), key=lambda item: item[1][0])
                if due <= now:
                    self._due[claim] = (now + interval, interval)
                    self._beating = claim
                    return claim
                self._waiting_until = due
                self._changed.wait(due - now)
            else:
                self._waiting_until = math.inf
                self._changed.wait()
            self._waiting_until = None


_heartbeats = Heartbeats()


def heartbeats() -> Heartbeats:
    """This process's :class:`Heartbeats`."""
    return _heartbeats


def _forked() -> None:
    global _heartbeats
    _heartbeats = Heartbeats()  # the parent's thread is not in a forked child, and its lock may be held


os.register_at_fork(after_in_child=_forked)


@contextmanager
def holding(claim: Claim, result: object = None):
    """A transaction in which the task writes its own rows; leaving it cleanly records the task as done."""
    with queries.transaction():
        yield
        claim.record(result)


# The run: what happens around the run() that luigi calls.


def recorded(run: Callable) -> Callable:
    """``run`` (a ``run`` method) wrapped in :func:`run_recorded`; applied once, by ``BaseTask.__init_subclass__``.

    A wrapped ``run`` is returned as it is, so a class whose ``run`` is inherited from an astra class is not
    wrapped twice. Inside a run that is already going (a subclass's ``run()`` calling ``super().run()``, or
    :func:`run_unrecorded`), the wrapped function simply runs.
    """
    if getattr(run, "_astra_recorded", False):
        return run
    local = inspect.isgeneratorfunction(run)  # it yields dynamic dependencies: it runs here, whatever the executor

    @functools.wraps(run)
    def wrapped(task, *args, **kwargs):
        call = functools.partial(run, task, *args, **kwargs)
        return call() if task._astra_in_run else run_recorded(task, call, local)

    wrapped._astra_recorded = True
    return wrapped


def run_recorded(task: luigi.Task, call: Callable[[], object], local: bool = False) -> object:
    """Claim ``task``, ``call`` its run, and record it as done or failed; what luigi should get back from run().

    A run that is (or returns) a generator, yielding dynamic dependencies, is followed by :func:`_follow` and
    recorded when it finishes, with the tasks it yielded. ``local``: run here whatever the task's executor.
    """
    with interrupted_once():
        try:
            claim = _start(task)
            if claim is None:
                return None  # another worker finished it meanwhile
            try:
                result = call() if local else executor_for(task, claim.settings).run(task, claim, call)
            except BaseException as exc:
                _end(task, claim, error=exc)
                raise
            if isinstance(result, types.GeneratorType):  # luigi drives it, so shall we
                return _follow(task, claim, result)
            _end(task, claim, result)  # an interrupt here (a long record) records the failure in _end
        except DatabaseGoneError:
            config.stop_asking_for_work()
            raise
    return None


@contextmanager
def interrupted_once() -> Iterator[None]:
    """Around a task's work in a process luigi forked for it (``--workers`` above 1): the first Ctrl-C or SIGTERM
    interrupts the work (:func:`_interrupt_once`), and the process then ends quietly (:func:`_stop_quietly`) once
    the failure is recorded; in any other process, nothing changes."""
    forked = _in_task_process()
    if forked:
        _interrupt_once()
    try:
        yield
    except KeyboardInterrupt:
        if forked:
            _stop_quietly()
        raise


def run_unrecorded(task: luigi.Task) -> object:
    """What ``task.run()`` returns, without the claim and record around it (:mod:`astra.batch` records items)."""
    task._astra_in_run = True
    try:
        return task.run()
    finally:
        task._astra_in_run = False


def _start(task: luigi.Task) -> Claim | None:
    """Claim ``task`` for this process; None if it is done (another worker finished it meanwhile)."""
    claim = Claim(task)
    while not claim.acquire():
        if not reopen_if_stale(task):  # luigi found it not complete: its dynamic dependencies may have changed
            claim.not_run_here()
            return None
    task._astra_claim, task._astra_in_run = claim, True
    return claim


def _in_task_process() -> bool:
    """Whether this is a process luigi forked for a task (``--workers`` above 1), and this its main thread."""
    return multiprocessing.parent_process() is not None and threading.current_thread() is threading.main_thread()


def _interrupt_once() -> None:
    """In a process luigi forked for a task: the first Ctrl-C or SIGTERM interrupts the task, later ones are ignored.

    A terminal's Ctrl-C reaches every process of the group, and luigi's own process then passes it on as SIGTERM:
    a second interrupt would cut short the record of the first (the failure, or the ROLLBACK of a finish), leaving
    the task ``running`` and its transaction open.
    """
    for number in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(number) not in (signal.SIG_IGN, None):
            signal.signal(number, _interrupted)


def _interrupted(signum: int, frame: object) -> None:
    for number in (signal.SIGINT, signal.SIGTERM):
        # Not SIG_IGN: a signal already on its way to a Python handler would then be printed as "ignored due to
        # race condition".
        signal.signal(number, _ignored)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _ignored(signum: int, frame: object) -> None:
    """A later Ctrl-C or SIGTERM in a task process already interrupted (see :func:`_interrupt_once`)."""


def _stop_quietly() -> None:
    """End a process luigi forked for a task (``--workers`` above 1) that Ctrl-C or SIGTERM stopped, its failure
    recorded: raised on, the KeyboardInterrupt would end in a traceback per process (multiprocessing prints it),
    before the one line the luigi process says (astra.config). luigi's own process is stopping too."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(130)


def _end(task: luigi.Task, claim: Claim, result: object = None, error: BaseException | None = None) -> None:
    """Record the task as done with ``result``, or failed with ``error``; then let go of the claim."""
    try:
        if error is not None:
            claim.fail(error)
            return
        try:
            if not claim.recorded:  # completion() records inside run()
                claim.finish(result)
        except BaseException as exc:
            claim.fail(exc)
            raise
        for target in database_targets([task]):
            known().mark_done(target.task_hash)
    finally:
        _let_go(task, claim)


def _let_go(task: luigi.Task, claim: Claim) -> None:
    claim.release()
    task._astra_claim, task._astra_in_run = None, False


def _follow(task: luigi.Task, claim: Claim, steps: Generator) -> Generator:
    """Pass what ``run()`` yields on to luigi, and luigi's answers back, noting the tasks yielded; record at the end.

    luigi drops the generator when a yielded task is not complete yet: then the claim is let go (the row stays
    ``running``, and luigi calls ``run()`` again once those tasks are done). Anything else that stops it records
    the task as failed; that includes a yielded task whose identity cannot be worked out (its requires() raises),
    which would otherwise leave the task waiting for something luigi cannot schedule.
    """
    try:
        answer = None
        while True:
            try:
                wanted = steps.send(answer)
            except StopIteration as stop:
                result = stop.value
                break
            tasks = wanted.flat_requirements if isinstance(wanted, luigi.DynamicRequirements) else flatten(wanted)
            for target in database_targets(tasks):
                if target.identity_error is not None:
                    raise target.identity_error
            claim.dynamic.update(dict.fromkeys(recorded_inputs(tasks, items=False)))
            try:
                answer = yield wanted
            except GeneratorExit:
                steps.close()
                raise
    except GeneratorExit:
        try:
            claim.set_aside()
        finally:
            _let_go(task, claim)
        raise
    except BaseException as exc:
        _end(task, claim, error=exc)
        raise
    _end(task, claim, result)


def failed_outside_run(task: luigi.Task, exception: BaseException) -> None:
    """luigi failed a task while its run() was suspended at a yield (e.g. checking what it yielded raised).

    The generator is only dropped after this, so the claim is still held: record the failure, or the row would
    stay ``running``. ``BaseTask`` registers this for luigi's FAILURE event.
    """
    claim = getattr(task, "_astra_claim", None)
    if claim is not None:
        claim.fail(exception)
