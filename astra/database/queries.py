"""The queries astra runs: every read and write of the astra tables is a function here."""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import peewee

from astra.database.connection import DatabaseError, database, is_postgres
from astra.database.models import Dependency, Parameter, Task, TaskParameter, utcnow
from astra.identity import parameter_hash

#: Keys per ``IN (...)`` query: SQLite allows 32766 bound variables, and PostgreSQL plans long lists slowly.
CHUNK = 5000

RUNNING, DONE, FAILED = "running", "done", "failed"


def chunked(items: Sequence, size: int = CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _atomic(db: peewee.Database):
    # SQLite: take the write lock up front, so two writers queue on the busy timeout instead of one of them
    # failing at once when it upgrades a read transaction.
    return db.atomic() if is_postgres(db) else db.atomic(lock_type="IMMEDIATE")


def done_hashes(hashes: Iterable[str]) -> set[str]:
    """Which of ``hashes`` are recorded as done (one query per CHUNK hashes)."""
    hashes = list(dict.fromkeys(hashes))
    database()
    found: set[str] = set()
    for chunk in chunked(hashes):
        query = Task.select(Task.task_hash).where(Task.task_hash.in_(chunk), Task.status == DONE).tuples()
        found.update(row[0] for row in query)
    return found


def results(hashes: Sequence[str]) -> dict[str, object]:
    """The JSON text stored as result for each done hash in ``hashes``."""
    database()
    found = {}
    for chunk in chunked(list(hashes)):
        query = Task.select(Task.task_hash, Task.result).where(Task.task_hash.in_(chunk), Task.status == DONE)
        found.update(query.tuples())
    return found


@dataclass(frozen=True)
class Attempt:
    """This process's claim on one task row: valid while the row's ``attempts`` still equals ``attempts``."""

    pk: int
    attempts: int


@dataclass(frozen=True)
class Holder:
    """Who else is running a task right now."""

    host: str | None
    pid: int | None
    heartbeat: datetime.datetime | None


def claim(fields: dict, params: dict[str, str], lease: float) -> Attempt | Holder | None:
    """Claim the task described by ``fields`` (a new ``astra.task`` row) for this process.

    Returns an :class:`Attempt` when this process may run it, ``None`` when it is already done, or the
    :class:`Holder` of a live claim by another process. A failed task, or one whose holder stopped sending
    heartbeats for ``lease`` seconds (or died on this host), is taken over.
    """
    db = database()
    now = utcnow()
    host, pid = socket.gethostname(), os.getpid()
    mine = dict(status=RUNNING, started=now, heartbeat=now, host=host, pid=pid, completed=None, duration=None)
    with _atomic(db):
        inserted = Task.insert(created=now, attempts=1, **fields, **mine).on_conflict_ignore().as_rowcount().execute()
        row = Task.get(Task.task_hash == fields["task_hash"])
        if inserted:
            _record_parameters(row.pk, params)
            return Attempt(row.pk, row.attempts)
    if row.status == DONE:
        return None
    if row.status == RUNNING and not _abandoned(row, lease):
        return Holder(row.host, row.pid, row.heartbeat)
    # Compare-and-swap on ``attempts``: of several processes taking over at once, exactly one wins.
    with _atomic(db):
        taken = (
            Task.update(attempts=row.attempts + 1, error=None, traceback=None, **mine)
            .where(Task.pk == row.pk, Task.attempts == row.attempts)
            .execute()
        )
    if taken:
        return Attempt(row.pk, row.attempts + 1)
    return claim(fields, params, lease)


def _abandoned(row: Task, lease: float) -> bool:
    """Whether a running claim's holder is gone: dead on this host, or silent for longer than the lease."""
    if row.host == socket.gethostname() and row.pid is not None:
        if row.pid == os.getpid():
            return True  # this process gave up on it earlier (e.g. luigi re-runs a task after new dependencies)
        if not _pid_alive(row.pid):
            return True
    if row.heartbeat is None:
        return True
    return (utcnow() - row.heartbeat).total_seconds() > lease


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
    rows = [
        {"parameter_name": name, "parameter_value": value, "parameter_hash": parameter_hash(name, value)}
        for name, value in params.items()
    ]
    Parameter.insert_many(rows).on_conflict_ignore().execute()
    hashes = [row["parameter_hash"] for row in rows]
    pks = Parameter.select(Parameter.pk).where(Parameter.parameter_hash.in_(hashes)).tuples()
    TaskParameter.insert_many(
        [(task_pk, pk) for (pk,) in pks], fields=[TaskParameter.task, TaskParameter.parameter]
    ).on_conflict_ignore().execute()


def heartbeat(attempt: Attempt) -> bool:
    """Tell other workers this attempt is alive. False if the claim was taken over."""
    with _atomic(database()):
        return bool(
            Task.update(heartbeat=utcnow()).where(Task.pk == attempt.pk, Task.attempts == attempt.attempts).execute()
        )


def finish(attempt: Attempt, result: str | None, duration: float, requires: Iterable[str]) -> None:
    """Mark the attempt done with its result and dependency edges. Call inside the caller's transaction."""
    now = utcnow()
    updated = (
        Task.update(status=DONE, completed=now, heartbeat=now, duration=duration, result=result)
        .where(Task.pk == attempt.pk, Task.attempts == attempt.attempts)
        .execute()
    )
    if not updated:
        raise DatabaseError(
            f"astra: task row {attempt.pk} was taken over by another worker while this one ran it "
            "(no heartbeat within [astra] lease?); this run's results were not recorded"
        )
    requires = list(dict.fromkeys(requires))
    for chunk in chunked(requires):
        required = Task.select(peewee.Value(attempt.pk), Task.pk).where(Task.task_hash.in_(chunk))
        Dependency.insert_from(required, [Dependency.task, Dependency.requires]).on_conflict_ignore().execute()


def fail(attempt: Attempt, error: str, traceback: str, duration: float) -> None:
    """Record that the attempt failed, with its error."""
    with _atomic(database()):
        Task.update(status=FAILED, error=error, traceback=traceback, duration=duration, completed=None).where(
            Task.pk == attempt.pk, Task.attempts == attempt.attempts
        ).execute()


def transaction():
    """A transaction on the astra database (write-locked up front on SQLite)."""
    return _atomic(database())


# Many items at once (astra.batch): one statement per table per chunk, with no per-row round trip. On PostgreSQL
# the rows travel as arrays and are unpacked by unnest(); on SQLite, which runs in this process, executemany is as
# fast and simpler.


def _table(model: type[peewee.Model], db: peewee.Database) -> str:
    return f"astra.{model._meta.table_name}" if is_postgres(db) else model._meta.table_name


def record_items(items: Sequence[dict], status: str) -> None:
    """Record many tasks as ``status`` (done or failed) at once, with their parameters and dependency edges.

    Each item is a dict with ``task_module``, ``task_name``, ``task_id``, ``task_hash``, ``version``,
    ``astra_version``, ``parameters`` (name -> canonical value), ``requires`` (task hashes) and optionally
    ``result``, ``error``, ``traceback`` and ``duration``. A task already recorded as done stays as it is (first
    done wins); a failed or running row is overwritten. Call inside :func:`transaction`.
    """
    db = database()
    items = list({item["task_hash"]: item for item in items}.values())
    if not items:
        return
    now = utcnow()
    host, pid = socket.gethostname(), os.getpid()
    completed = now if status == DONE else None
    task, parameter, task_parameter, dependency = (_table(m, db) for m in (Task, Parameter, TaskParameter, Dependency))
    columns = "task_module, task_name, task_id, task_hash, version, astra_version, result, error, traceback, duration"
    upsert = (
        f"ON CONFLICT (task_hash) DO UPDATE SET status = excluded.status, started = excluded.started, "
        f"heartbeat = excluded.heartbeat, completed = excluded.completed, duration = excluded.duration, "
        f"host = excluded.host, pid = excluded.pid, attempts = {task}.attempts + 1, result = excluded.result, "
        f"error = excluded.error, traceback = excluded.traceback WHERE {task}.status <> '{DONE}'"
    )
    rows = [
        (
            item["task_module"],
            item["task_name"],
            item["task_id"],
            item["task_hash"],
            item["version"],
            item["astra_version"],
            item.get("result"),
            item.get("error"),
            item.get("traceback"),
            item.get("duration"),
        )
        for item in items
    ]
    parameters = {}
    links, edges = [], []
    for item in items:
        for name, value in item["parameters"].items():
            key = parameter_hash(name, value)
            parameters[key] = (name, value, key)
            links.append((item["task_hash"], key))
        edges.extend((item["task_hash"], required) for required in item["requires"])
    constants = (status, now, now, now, completed, host, pid)
    if is_postgres(db):
        cursor = db.cursor()
        cursor.execute(
            f"INSERT INTO {task} ({columns}, status, created, started, heartbeat, completed, host, pid, attempts) "
            "SELECT *, %s, %s::timestamptz, %s::timestamptz, %s::timestamptz, %s::timestamptz, %s, %s::int, 1 "
            "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], "
            f"%s::text[], %s::text[], %s::float8[]) {upsert}",
            (*constants, *(list(column) for column in zip(*rows))),
        )
        if parameters:
            cursor.execute(
                f"INSERT INTO {parameter} (parameter_name, parameter_value, parameter_hash) "
                f"SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]) ON CONFLICT DO NOTHING",
                tuple(list(column) for column in zip(*parameters.values())),
            )
        for table, pairs, target_table, key in (
            (task_parameter, links, parameter, "parameter_hash"),
            (dependency, edges, task, "task_hash"),
        ):
            if pairs:
                column = "parameter_pk" if table == task_parameter else "requires_pk"
                cursor.execute(
                    f"INSERT INTO {table} (task_pk, {column}) SELECT a.pk, b.pk "
                    f"FROM unnest(%s::text[], %s::text[]) AS x(one, other) JOIN {task} a ON a.task_hash = x.one "
                    f"JOIN {target_table} b ON b.{key} = x.other ON CONFLICT DO NOTHING",
                    tuple(list(column) for column in zip(*pairs)),
                )
        return
    # SQLite keeps peewee's text form of a naive UTC datetime.
    stamp = str(now.replace(tzinfo=None))
    constants = (status, stamp, stamp, stamp, stamp if completed else None, host, pid)
    connection = db.connection()
    connection.executemany(
        f"INSERT INTO {task} ({columns}, status, created, started, heartbeat, completed, host, pid, attempts) "
        f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1) {upsert}",
        [(*row, *constants) for row in rows],
    )
    connection.executemany(
        f"INSERT OR IGNORE INTO {parameter} (parameter_name, parameter_value, parameter_hash) VALUES (?, ?, ?)",
        list(parameters.values()),
    )
    connection.executemany(
        f"INSERT OR IGNORE INTO {task_parameter} (task_pk, parameter_pk) SELECT a.pk, b.pk FROM {task} a, "
        f"{parameter} b WHERE a.task_hash = ? AND b.parameter_hash = ?",
        links,
    )
    connection.executemany(
        f"INSERT OR IGNORE INTO {dependency} (task_pk, requires_pk) SELECT a.pk, b.pk FROM {task} a, {task} b "
        f"WHERE a.task_hash = ? AND b.task_hash = ?",
        edges,
    )
