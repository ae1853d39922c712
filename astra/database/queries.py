"""The queries astra runs: every read and write of the astra tables is a function here."""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import peewee

from astra import config, values
from astra.database import text
from astra.database.connection import (
    DatabaseError,
    close_thread_connection,
    database,
    retried,
    use_own_connection,
)
from astra.database.dialect import dialect
from astra.database.models import Dependency, Parameter, Task, TaskParameter
from astra.database.status import DONE, FAILED, RUNNING
from astra.identity import parameter_hash

T = TypeVar("T")
R = TypeVar("R")

#: Keys per ``IN (...)`` query: SQLite allows 32766 bound variables, and PostgreSQL plans long lists slowly.
CHUNK = 5000


def chunked(items: Sequence, size: int = CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _atomic(db: peewee.Database):
    # SQLite: take the write lock up front, so two writers queue on the busy timeout instead of one of them
    # failing at once when it upgrades a read transaction.
    return dialect(db).atomic(db)


def _not_flushed(db: peewee.Database) -> None:
    """Let the current transaction commit without waiting for PostgreSQL to flush it to disk (~3 ms here).

    Only for claims and heartbeats: if the server crashes just after such a commit, the claim is lost and the
    task is run again, which is what happens to any task whose worker died. Done and failed records, and the
    task's own rows, stay durable.
    """
    dialect(db).not_flushed(db)


def done_hashes(hashes: Iterable[str]) -> set[str]:
    """Which of ``hashes`` are recorded as done (one query per CHUNK hashes)."""
    # Only the key and the status, which the unique index of task_hash holds (schema 12): PostgreSQL answers
    # from the index alone, without reading a row of the table per key.
    return {key for key, status in _by_hash(hashes, "status") if status == DONE}


def hold_done(hashes: Iterable[str]) -> set[str]:
    """Those of ``hashes`` not recorded as done; the others are kept so until the transaction ends: a forget or a
    reopen of one waits for it (a forget then finds, by their edges, what this transaction recorded as needing it).
    Call inside :func:`transaction`, before it writes anything else (locks are taken in one order, the rows' keys).
    """
    hashes = list(dict.fromkeys(hashes))
    if not hashes:
        return set()
    db = database()
    return dialect(db).hold_done(db, _table(Task, db), hashes)


def task_ids(hashes: Iterable[str]) -> dict[str, str]:
    """The luigi task_id of each of ``hashes`` that has a row, by hash."""
    return dict(_by_hash(hashes, "task_id"))


def done_rows(hashes: Iterable[str]) -> dict[str, int]:
    """Those of ``hashes`` recorded as done, each with how many dynamic dependencies it recorded (0 if none)."""
    return {
        key: dynamic or 0 for key, status, dynamic in _by_hash(hashes, "status, dynamic_dependencies") if status == DONE
    }


def _by_hash(hashes: Iterable[str], columns: str) -> Iterator[tuple]:
    """``(task_hash, *columns)`` of the rows of astra.task whose hash is one of ``hashes``.

    The status is compared by the callers, not in SQL: given "status = 'done'", PostgreSQL may pick the
    (task_name, status) index and read every done row of the table, instead of looking up each hash.
    """
    hashes = list(dict.fromkeys(hashes))
    db = database()
    # Plain SQL: peewee takes ~20 us to build each value of an IN list, more than the database takes to answer.
    sql = f"SELECT {dialect(db).hash_text('task_hash')}, {columns} FROM {_table(Task, db)} WHERE "
    for chunk in chunked(hashes):
        where, params = dialect(db).is_one_of_hashes("task_hash", chunk)
        yield from db.execute_sql(sql + where, params)


def done_attempt(task_hash: str) -> tuple[int, int] | None:
    """``(attempts, dynamic dependencies recorded)`` of the task's row if it is done, else None."""
    database()
    row = (
        Task.select(Task.attempts, Task.dynamic_dependencies)
        .where(Task.task_hash == task_hash, Task.status == DONE)
        .tuples()
        .first()
    )
    return None if row is None else (row[0], row[1] or 0)


@retried
def reopen(task_hash: str, attempts: int, reason: str) -> bool:
    """Mark a done task failed with ``reason``, so that it can be claimed and run again.

    Only if the row is still the same done attempt (``attempts``): a task that another worker has just run again
    stays as that worker recorded it. True if this call changed the row.
    """
    db = database()
    with _atomic(db):
        return bool(
            Task.update(status=FAILED, error=reason[:2000], traceback=None)
            .where(Task.task_hash == task_hash, Task.status == DONE, Task.attempts == attempts)
            .execute()
        )


@dataclass(frozen=True)
class Recorded:
    """What the record of a dynamic dependency says: enough to rebuild the task and compare its identity."""

    task_hash: str
    status: str
    task_module: str
    task_name: str
    parameters: dict[str, str]
    dynamic_dependencies: int


def dynamic_dependencies(hashes: Iterable[str]) -> dict[str, list[Recorded]]:
    """The recorded dynamic dependencies of each of the tasks ``hashes`` (two queries per CHUNK tasks)."""
    database()
    found: dict[str, list[Recorded]] = {}
    dependant, required = Task.alias(), Task.alias()
    for chunk in chunked(list(dict.fromkeys(hashes))):
        query = (
            Dependency.select(
                dependant.task_hash,
                required.pk,
                required.task_hash,
                required.status,
                required.task_module,
                required.task_name,
                required.dynamic_dependencies,
            )
            .join(dependant, on=(Dependency.task == dependant.pk))
            .switch(Dependency)
            .join(required, on=(Dependency.requires == required.pk))
            .where(dependant.task_hash.in_(chunk), Dependency.dynamic)
            .tuples()
        )
        rows = list(query)
        parameters: dict[int, dict[str, str]] = {pk: {} for _, pk, *_ in rows}
        for pks in chunked(list(parameters)):
            links = (
                TaskParameter.select(TaskParameter.task, Parameter.parameter_name, Parameter.parameter_value)
                .join(Parameter)
                .where(TaskParameter.task.in_(pks))
                .tuples()
            )
            for pk, name, value in links:
                parameters[pk][name] = value
        for task_hash, pk, *recorded, dynamic in rows:
            found.setdefault(task_hash, []).append(Recorded(*recorded[:4], parameters[pk], dynamic or 0))
    return found


def results(hashes: Sequence[str]) -> dict[str, object]:
    """The result (as ``run()`` returned it, see astra.values) of each done hash in ``hashes``."""
    database()
    found = {}
    for chunk in chunked(list(hashes)):
        query = Task.select(Task.task_hash, Task.result).where(Task.task_hash.in_(chunk), Task.status == DONE)
        found.update(query.tuples())
    return found


@dataclass(frozen=True)
class Holder:
    """Who else holds a claim on a task (or held it, before this process took it over)."""

    host: str | None
    pid: int | None
    silence: float | None  # seconds since its last heartbeat, by the database's clock
    status: str = RUNNING
    lease: float | None = None  # the holder's own [astra] lease; None for rows written before leases were kept
    #: The holder set the task aside (luigi dropped its run() to run the tasks it yielded; see :func:`set_aside`).
    set_aside: bool = False


@dataclass(frozen=True)
class Attempt:
    """This process's claim on one task row.

    The row is this attempt's only while it has the attempt's ``task_hash`` and ``token``: ``pk`` alone is not
    enough, since SQLite gives the pk of a forgotten row to the next row inserted.
    """

    pk: int
    task_hash: str
    token: str
    attempts: int
    previous: Holder | None = None  # whose stale claim or failure this attempt took over


class ClaimLostError(DatabaseError):
    """The attempt's row was forgotten or taken over by another worker: this attempt may not write it."""


class InputsGoneError(DatabaseError):
    """Tasks the attempt's task needs are not recorded done any more (forgotten, or lost in a crash, while it ran):
    it may not be recorded done either. ``keys``: their hashes."""

    def __init__(self, keys: list[str]) -> None:
        super().__init__(f"astra: {len(keys)} of the tasks this one needs are not recorded done any more")
        self.keys = keys


def _mine(attempt: Attempt) -> tuple[peewee.Expression, ...]:
    """The conditions under which a row still belongs to ``attempt``: every write of a claim includes them."""
    return (
        Task.pk == attempt.pk,
        Task.task_hash == attempt.task_hash,
        Task.claim_token == attempt.token,
        Task.status == RUNNING,
    )


def _now(db: peewee.Database):
    """The current time for timestamps that other hosts compare: the server's clock on PostgreSQL.

    Hosts' clocks may disagree by more than a lease; the server's does not disagree with itself. SQLite lives on
    one host, so its clock is this host's.
    """
    return dialect(db).now()


def _silence(db: peewee.Database) -> peewee.Node:
    """Seconds since a task's last heartbeat, worked out by the database."""
    return dialect(db).seconds_since(Task.heartbeat)


class _Row(NamedTuple):
    """A task row as a claim finds it (see :meth:`astra.database.dialect.SQLite.claim_new`)."""

    pk: int
    status: str
    host: str | None
    pid: int | None
    lease: float | None
    claim_token: str | None
    attempts: int
    silence: float | None
    inserted: int
    linked: int


class Watch:
    """How long this process has watched one claim of another's, asking again and again without a pause.

    A holder's silence alone cannot tell a holder that stopped from a database server that stopped (frozen, or
    down for a restart): then every heartbeat waits, and the first question after it finds every running task
    silent. So a claim is taken over for its silence only once this process has watched it silent for the
    holder's lease, asking every ``every`` seconds with the server answering: a pause between two answers longer
    than two questions and one of the holder's heartbeat intervals (a server that did not answer, or this process
    stopped) starts the watch again.
    """

    def __init__(self, every: float) -> None:
        self.every = every
        self._claim: tuple | None = None
        self._since = self._last = 0.0

    def seen(self, claim: tuple, lease: float) -> float:
        """Seconds this process has watched ``claim`` (its pk, attempts and token), whose holder beats every
        ``lease / 4`` seconds, without a pause."""
        now = time.monotonic()
        if claim != self._claim or now - self._last > 2 * self.every + lease / 4:
            self._claim, self._since = claim, now
        self._last = now
        return now - self._since


@retried
def claim(fields: dict, params: dict[str, str], lease: float, watch: Watch | None = None) -> Attempt | Holder:
    """Claim the task described by ``fields`` (a new ``astra.task`` row) for this process.

    Returns an :class:`Attempt` when this process may run it, or else the :class:`Holder` of a live claim by
    another process, or (with status ``done``) the one that finished the task. A failed task, or one whose holder
    died on this host or sent no heartbeat for the holder's own lease (``lease`` here is this process's, recorded
    in the row for others to go by), is taken over: of several processes trying at once, exactly one wins. With
    ``watch``, a silent holder is taken over only once this process has watched it that long (see :class:`Watch`).

    A task met for the first time costs one round trip to PostgreSQL (see dialect ``claim_new``).
    """
    db = database()
    text.check_identity(fields, params, nul_forbidden=dialect(db).nul_forbidden)
    host, pid = socket.gethostname(), os.getpid()
    parameters = [(name, value, parameter_hash(name, value)) for name, value in params.items()]
    while True:
        token = secrets.token_hex(16)
        new = {
            **fields,
            "host": host,
            "pid": pid,
            "lease": lease,
            "claim_token": token,
        }
        found = dialect(db).claim_new(db, _claim_tables(db), new, parameters)
        if found is None:
            continue  # another process inserted it just now
        row = _Row(*found)
        if row.inserted:
            if row.linked < len(parameters):  # another process stored one of the parameters at the same moment
                _record_parameters(row.pk, params)
            return Attempt(row.pk, fields["task_hash"], token, 1)
        set_aside = row.status == RUNNING and row.claim_token is None
        holder = Holder(row.host, row.pid, row.silence, row.status, row.lease, set_aside)
        # Taking up a task set aside goes on with the same attempt (luigi calls run() again, from the top).
        attempts = row.attempts if set_aside else row.attempts + 1
        if row.status == DONE:
            return holder
        # Compare-and-swap on the holder's token and ``attempts`` (and on the reason for taking over, which may
        # change meanwhile).
        conditions = [
            Task.pk == row.pk,
            Task.task_hash == fields["task_hash"],
            Task.attempts == row.attempts,
            Task.status == row.status,
            Task.claim_token.is_null() if row.claim_token is None else Task.claim_token == row.claim_token,
        ]
        if row.status == RUNNING:
            holder_lease = row.lease if row.lease is not None else lease
            key = (row.pk, row.attempts, row.claim_token)
            watched = math.inf if watch is None else watch.seen(key, holder_lease)
            if holder_gone(row):
                conditions.append(Task.pid == row.pid)
            elif row.silence is not None and row.silence > holder_lease and watched >= holder_lease:
                conditions.append(_silence(db) > holder_lease)
            else:
                return holder
        now = _now(db)
        with _atomic(db):
            _not_flushed(db)
            taken = (
                Task.update(
                    status=RUNNING,
                    started=now,
                    heartbeat=now,
                    host=host,
                    pid=pid,
                    lease=lease,
                    claim_token=token,
                    completed=None,
                    duration=None,
                    slurm_job_id=None,
                    slurm_node=None,
                    attempts=attempts,
                    error=None,
                    traceback=None,
                    result=None,
                    # The attempt that makes the result is the one whose astra version the record names.
                    astra_version=fields["astra_version"],
                )
                .where(*conditions)
                .execute()
            )
        if taken:
            return Attempt(row.pk, fields["task_hash"], token, attempts, holder)


def _claim_tables(db: peewee.Database) -> tuple[str, ...]:
    """The names of the task, parameter, task_parameter and dependency tables, as plain SQL writes them."""
    return tuple(_table(model, db) for model in (Task, Parameter, TaskParameter, Dependency))


def holder_gone(row: object) -> bool:
    """Whether a running claim (a row with ``host`` and ``pid``) belongs to a process on this host that no longer
    runs it."""
    if row.host != socket.gethostname() or row.pid is None:
        return False
    # This very process: it gave the task up earlier (luigi re-runs a task once new dynamic dependencies are done).
    return row.pid == os.getpid() or not _pid_alive(row.pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _record_parameters(task_pk: int, params: dict[str, str]) -> None:
    if not params:
        return
    rows = {
        parameter_hash(name, value): {"parameter_name": name, "parameter_value": value}
        for name, value in params.items()
    }
    # Insert only the values not stored yet (most are shared): an INSERT that ON CONFLICT drops still takes a
    # value of the pk sequence on PostgreSQL.
    known = dict(
        Parameter.select(Parameter.parameter_hash, Parameter.pk)
        .where(Parameter.parameter_hash.in_(list(rows)))
        .tuples()
    )
    missing = [{**row, "parameter_hash": key} for key, row in rows.items() if key not in known]
    if missing:
        Parameter.insert_many(missing).on_conflict_ignore().execute()
        known.update(
            Parameter.select(Parameter.parameter_hash, Parameter.pk)
            .where(Parameter.parameter_hash.in_([row["parameter_hash"] for row in missing]))
            .tuples()
        )
    TaskParameter.insert_many(
        [(task_pk, pk) for pk in known.values()], fields=[TaskParameter.task, TaskParameter.parameter]
    ).on_conflict_ignore().execute()


@retried
def heartbeat(attempt: Attempt) -> bool:
    """Tell other workers this attempt is alive. False if its row was taken over or forgotten."""
    db = database()
    with _atomic(db):
        _not_flushed(db)
        return bool(Task.update(heartbeat=_now(db)).where(*_mine(attempt)).execute())


@retried
def set_aside(attempt: Attempt) -> None:
    """Let go of the attempt's row without an outcome: luigi dropped the task's run() to run the tasks it yielded,
    and calls it again once they are done. The row stays running, with no claim token: whoever takes it up next
    (this process, another worker once this one is gone or silent) goes on with the same attempt."""
    db = database()
    with _atomic(db):
        Task.update(claim_token=None).where(*_mine(attempt)).execute()


def lost(attempt: Attempt) -> str:
    """Why ``attempt`` no longer holds its row: forgotten, or taken over (by whom)."""
    row = Task.get_or_none(Task.task_hash == attempt.task_hash)
    if row is None:
        return "its record is gone: forgotten (astra tasks forget), or lost in a crash of the database server"
    if row.pk == attempt.pk and row.claim_token == attempt.token:  # the row is still this attempt's, ended
        return f"this run's own record of it, {row.status}, was committed before"
    if row.status == DONE and row.claim_token is None:
        return "a batch recorded the task meanwhile"
    if row.pk != attempt.pk or row.attempts <= attempt.attempts:  # a new row (SQLite may give it the same pk)
        return (
            f"its record was forgotten (astra tasks forget), and {row.host} pid {row.pid} claimed the task again "
            f"(now {row.status})"
        )
    return (
        f"the task was taken over by {row.host} pid {row.pid} (attempt {row.attempts}, now {row.status}; was there "
        "no heartbeat within the lease?)"
    )


def ended_itself(attempt: Attempt) -> bool:
    """Whether ``attempt`` itself ended its row, recording the task done or failed (a heartbeat that waited for that
    write finds the row no longer running, and nothing is wrong)."""
    database()
    return Task.select().where(*_mine(attempt)[:-1], Task.status != RUNNING).exists()


def recorded_done(attempt: Attempt) -> bool:
    """Whether ``attempt`` itself recorded its task done (its finish committed, e.g. just before an interrupt)."""
    database()
    return Task.select().where(*_mine(attempt)[:-1], Task.status == DONE).exists()


def done_by(task_hash: str) -> Holder | None:
    """Who recorded the task done (None if it is not recorded done)."""
    row = Task.get_or_none((Task.task_hash == task_hash) & (Task.status == DONE))
    return None if row is None else Holder(row.host, row.pid, None, DONE)


def finish(
    attempt: Attempt,
    result: object,
    duration: float,
    requires: Iterable[str],
    dynamic: Iterable[str] = (),
    durable: bool = True,
    needed: Iterable[str] = (),
) -> None:
    """Mark the attempt done with its result (see astra.values) and dependency edges.

    Raises :class:`ClaimLostError`, and writes nothing, if the row is no longer the attempt's; and
    :class:`InputsGoneError` if a task of ``needed`` (hashes of the astra tasks luigi checked before the run, and of
    those run() yielded) is not recorded done any more: someone forgot it while this task ran, where no edge led
    `forget --cascade` here yet, or a server crash lost its record. Checked in the same statement as the record.

    ``requires`` are the hashes of what ``requires()`` returned, ``dynamic`` those of the tasks ``run()`` yielded;
    how many of the latter there were is kept too, so that a dynamic dependency whose record goes is noticed.
    A first attempt is one statement on PostgreSQL (one round trip); whatever takes more opens a transaction,
    unless the caller holds one (e.g. with the task's own rows). ``durable``: the commit waits for the disk
    (``[astra] synchronous_commit``).
    """
    db = database()
    requires = list(dict.fromkeys(requires))
    required = set(requires)
    dynamic = [h for h in dict.fromkeys(dynamic) if h not in required]
    edges = json.dumps([[h, False] for h in requires] + [[h, True] for h in dynamic]) if requires or dynamic else None
    row = {
        "pk": attempt.pk,
        "task_hash": attempt.task_hash,
        "claim_token": attempt.token,
        "duration": duration,
        "result": None if result is None else values.dumps(result),
        "dynamic": len(dynamic) or None,
        "needed": json.dumps(list(dict.fromkeys(needed))),
    }
    again = attempt.attempts > 1  # an earlier attempt may have left edges: this run's only are kept
    alone = not again and dialect(db).finish_statements(edges, row["needed"] != "[]") == 1
    outside = db.in_transaction()
    try:
        with contextlib.nullcontext() if alone or outside else _atomic(db):
            if again:
                Dependency.delete().where(
                    Dependency.task == attempt.pk, peewee.fn.EXISTS(Task.select(Task.pk).where(*_mine(attempt)))
                ).execute()
            done, gone = dialect(db).finish(db, _claim_tables(db), row, edges, durable)
    except peewee.IntegrityError:
        # An edge to a task deleted as this statement ran: a forget, which locked the task before looking for
        # what needs it (astra.database.records.forget). Which ones, when a transaction of the caller's allows.
        needed = json.loads(row["needed"])
        if not needed:
            raise  # not an input's: an InputsGoneError would name none
        if outside:
            raise InputsGoneError(needed) from None
        done_now = done_hashes(needed)
        raise InputsGoneError([key for key in needed if key not in done_now] or needed) from None
    if gone:
        raise InputsGoneError(gone)
    if not done:
        raise ClaimLostError(
            f"astra: task row {attempt.pk} is no longer this worker's: {lost(attempt)}; this run's results "
            "were not recorded"
        )


@retried
def fail(attempt: Attempt, error: str, traceback: str, duration: float) -> bool:
    """Record that the attempt failed, with its error. False (nothing written) if the row is no longer its own."""
    db = database()
    with _atomic(db):
        return bool(
            Task.update(
                status=FAILED,
                error=text.escaped(error),
                traceback=text.escaped(traceback),
                duration=duration,
                completed=None,
            )
            .where(*_mine(attempt))
            .execute()
        )


# A task run as a SLURM job (astra.executors.slurm): the luigi worker holds the claim until the job starts; the job
# then holds the same attempt, so it can record its result even if the worker is gone. The job is known by the id
# the holder noted in the row: a later worker that takes the task over from a dead one may adopt its pending job.


@retried
def note_job(attempt: Attempt, job_id: str) -> None:
    """Record which SLURM job runs this attempt (the job takes the attempt over when it starts)."""
    Task.update(slurm_job_id=job_id).where(*_mine(attempt)).execute()


@retried
def hand_over(task_hash: str, job_id: str, node: str) -> Attempt | None:
    """Make this process (SLURM job ``job_id``) the holder of the running attempt that names it; None if no
    running attempt does (taken over by a worker that did not adopt this job, or finished)."""
    db = database()
    host, pid = socket.gethostname(), os.getpid()
    mine = (Task.task_hash == task_hash, Task.slurm_job_id == job_id, Task.status == RUNNING)
    with _atomic(db):
        row = Task.select(Task.pk, Task.claim_token, Task.attempts).where(*mine).tuples().first()
        if row is None:
            return None
        attempt = Attempt(row[0], task_hash, row[1], row[2])
        Task.update(host=host, pid=pid, heartbeat=_now(db), slurm_node=node).where(*_mine(attempt)).execute()
    return attempt


def note_items_job(pks: Iterable[int], job_id: str, node: str) -> None:
    """Record the SLURM job (``ARRAYID_INDEX``) and node that worked these batch items (in the caller's
    transaction, which records them)."""
    for chunk in chunked(list(pks)):
        Task.update(slurm_job_id=job_id, slurm_node=node).where(Task.pk.in_(chunk)).execute()


@retried
def attempt_status(attempt: Attempt) -> str | None:
    """The status of the row while it still belongs to ``attempt``; None once another attempt took it."""
    database()
    return Task.select(Task.status).where(*_mine(attempt)[:-1]).scalar()  # [:-1]: whatever its status


@retried
def job_failed(attempt: Attempt, error: str, traceback: str, duration: float | None) -> None:
    """Record the attempt failed with what SLURM says, over the job's own record of its failure (never over done)."""
    db = database()
    with _atomic(db):
        Task.update(
            status=FAILED,
            error=text.escaped(error),
            traceback=text.escaped(traceback),
            duration=peewee.fn.coalesce(Task.duration, duration),
            completed=None,
        ).where(*_mine(attempt)[:-1], Task.status != DONE).execute()


def transaction():
    """A transaction on the astra database (write-locked up front on SQLite)."""
    return _atomic(database())


#: Whether the calling thread is in a :func:`reading` transaction (only there does :func:`ahead` use helpers: a
#: transaction that writes would not see its own writes from another connection).
_reading = threading.local()


@contextlib.contextmanager
def reading() -> Iterator[None]:
    """A transaction for a command that reads much (an export), planned for its index probes (see the dialect's
    ``reading``): one snapshot for every statement, those of :func:`ahead` included."""
    db = database()
    outer = getattr(_reading, "active", False)
    with dialect(db).reading(db):
        _reading.active = True
        try:
            yield
        finally:
            _reading.active = outer


#: How many results each helper of :func:`ahead` holds ready before the caller takes them.
AHEAD = 2


#: What a helper of :func:`ahead` that could not start hands over instead of its first result.
_ALONE = object()


def ahead(produce: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
    """``produce(item)`` for each of ``items``, in order, made ahead of the caller by helper threads (``[astra]
    read_helpers``) when called inside :func:`reading`: the next chunks' statements run on the server while the
    caller writes this one.

    On PostgreSQL each helper reads on a connection of its own, in a transaction that reads the snapshot of the
    caller's (``pg_export_snapshot``), so all see the same rows; on SQLite everything is made in this thread. An
    exception in ``produce`` is raised here, where its result would have been taken. A helper that cannot open its
    connection (a server at ``max_connections``) leaves its items to the caller, which makes them in its own snapshot.
    """
    db = database()
    # Outside reading() everything is made here, as it is for a single item.
    # How many helpers ([astra] read_helpers): while one waits for the server, another turns rows into values.
    count = min(config.settings().read_helpers, len(items)) if getattr(_reading, "active", False) else 0
    snapshot = dialect(db).export_snapshot(db) if count > 0 and len(items) > 1 else None
    if snapshot is None:
        yield from map(produce, items)
        return
    stop = threading.Event()
    ready = [queue.Queue(maxsize=AHEAD) for _ in range(count)]

    def put(made: queue.Queue, entry: tuple) -> None:
        while not stop.is_set():
            try:
                made.put(entry, timeout=0.1)
                return
            except queue.Full:
                continue

    def work(first: int) -> None:  # items first, first + count, ...
        made = ready[first]
        reading_snapshot = False
        try:
            use_own_connection()
            with db.atomic():
                dialect(db).read_snapshot(db, snapshot)
                reading_snapshot = True
                for item in items[first::count]:
                    if stop.is_set():
                        return
                    put(made, (True, produce(item)))
        except BaseException as exc:  # raised in the caller's thread instead
            # A helper that could not start (no connection left on the server) leaves its items to the caller.
            put(made, (False, exc if reading_snapshot else _ALONE))
        finally:
            close_thread_connection()

    helpers = [threading.Thread(target=work, args=(i,), name=f"astra-ahead-{i}", daemon=True) for i in range(count)]
    for helper in helpers:
        helper.start()
    alone: set[int] = set()  # helpers whose items the caller makes
    try:
        for i in range(len(items)):
            turn = i % count  # the helper that makes item i
            if turn not in alone:
                made, value = ready[turn].get()
                if made:
                    yield value
                    continue
                if value is not _ALONE:
                    raise value
                alone.add(turn)
            yield produce(items[i])
    finally:
        stop.set()  # the caller stopped taking (or failed): the helpers end after their current item
        for helper in helpers:
            helper.join()


# Many items at once (astra.batch): a few statements per chunk, whatever its size, with no per-row round trip.
# How the rows travel is the dialect's business (COPY on PostgreSQL, executemany on SQLite).


def _table(model: type[peewee.Model], db: peewee.Database) -> str:
    return dialect(db).table(model)


def record_items(items: Sequence[dict], status: str) -> dict[str, int]:
    """Record many tasks as ``status`` (done or failed) at once, with their parameters and dependency edges.

    Each item is a dict with ``task_module``, ``task_name``, ``task_id``, ``task_hash``, ``version``,
    ``astra_version``, ``parameters`` (name -> canonical value), ``requires`` (task hashes) and optionally
    ``result`` (JSON text from :func:`astra.values.dumps`), ``error``, ``traceback`` and ``duration``. A task
    already recorded as done stays as it is (first done wins); a failed row is overwritten, and a running one by a
    done record (its holder finds it done at its own record), not by a failure. Times are
    the database's clock, as for a task claimed alone. Call inside :func:`transaction`.

    Returns the pk of each task row written (those already done are left out), by hash.
    """
    db = database()
    items = list({item["task_hash"]: item for item in items}.values())
    if not items:
        return {}
    _check_identities(items, nul_forbidden=dialect(db).nul_forbidden)
    rows = [
        (
            item["task_module"],
            item["task_name"],
            item["task_id"],
            item["task_hash"],
            item["version"],
            item["astra_version"],
            item.get("result"),
            text.escaped(item.get("error")),
            text.escaped(item.get("traceback")),
            item.get("duration"),
        )
        for item in items
    ]
    parameters: dict[str, tuple[str, str, str]] = {}
    hashes: dict[tuple[str, str], str] = {}  # most values are shared: each distinct pair is hashed once
    links, edges = [], []
    for item in items:
        task_hash = item["task_hash"]
        for pair in item["parameters"].items():
            key = hashes.get(pair)
            if key is None:
                key = hashes[pair] = parameter_hash(*pair)
                parameters[key] = (*pair, key)
            links.append((task_hash, key))
        if item["requires"]:  # no generator for an item that requires nothing (0.3 us of ~30 per item)
            edges.extend((task_hash, required) for required in item["requires"])
    tables = tuple(_table(m, db) for m in (Task, Parameter, TaskParameter, Dependency))
    return dialect(db).record_items(db, tables, status, rows, parameters, links, edges)


def unrecordable(items: Sequence[dict]) -> dict[str, str]:
    """The items of :func:`record_items` that no record can hold (their identity's text cannot be stored), by task
    hash, each with the reason: a batch leaves them out rather than lose the whole chunk with them."""
    nul_forbidden = dialect(database()).nul_forbidden
    try:
        _check_identities(list(items), nul_forbidden)
        return {}
    except text.UnstorableTextError:
        pass
    refused = {}
    for item in items:
        try:
            text.check_identity(item, item["parameters"], nul_forbidden, consequence="it was run but not recorded")
        except text.UnstorableTextError as exc:
            refused[item["task_hash"]] = str(exc)
    return refused


def _check_identities(items: list[dict], nul_forbidden: bool) -> None:
    """:func:`text.check_identity` for every item, at the cost of one check of all their text when it is fine."""
    whole = "".join(
        "".join([*(item[field] for field in text.IDENTITY_FIELDS), *item["parameters"].values()]) for item in items
    )
    if text.problem(whole, nul_forbidden) is None:
        return
    for item in items:  # the first item at fault, named as a task alone would be
        text.check_identity(item, item["parameters"], nul_forbidden=nul_forbidden)
