"""A task met for the first time is claimed and finished in at most two round trips to the database.

What is counted is every statement astra's process sends through the database's cursors (``BEGIN`` and
``COMMIT`` included), in the thread that runs the task (the heartbeat thread is left out). On PostgreSQL each
statement is a round trip to the server. SQLite has no server: there a round trip is a transaction (a lock taken
and a commit), and the statements inside one are calls within this process.
"""

from __future__ import annotations

import threading

import luigi
import pytest

from astra.database import Dependency, Task, TaskParameter, database
from astra.database.connection import reset
from astra.identity import task_hash
from astra.targets import known
from tests.example_tasks import Leaf, WithOptions
from tests.round_trips_tasks import NeedsLeaves


class Counting:
    """A database cursor that notes each statement it runs."""

    def __init__(self, cursor, statements: list[str]) -> None:
        self._cursor, self._statements = cursor, statements

    def execute(self, sql, params=None):
        if threading.current_thread() is threading.main_thread():
            self._statements.append(" ".join(str(sql).split()))
        return self._cursor.execute(sql, params) if params is not None else self._cursor.execute(sql)

    def executemany(self, sql, rows):
        if threading.current_thread() is threading.main_thread():
            self._statements.append(" ".join(str(sql).split()))
        return self._cursor.executemany(sql, rows)

    def __getattr__(self, name: str):
        return getattr(self._cursor, name)


@pytest.fixture
def statements(database_url, monkeypatch) -> list[str]:
    """The statements sent from now on (the database is opened first)."""
    db = database()
    sent: list[str] = []
    cursor = db.cursor
    monkeypatch.setattr(db, "cursor", lambda *args, **kwargs: Counting(cursor(*args, **kwargs), sent))
    return sent


def round_trips(statements: list[str], backend: str) -> int:
    if backend == "postgresql":
        return len(statements)
    trips, inside = 0, False
    for sql in statements:
        word = sql.split()[0].upper()
        if not inside:
            trips += 1
        inside = (inside or word == "BEGIN") and word not in ("COMMIT", "ROLLBACK")
    return trips


@pytest.mark.parametrize("make", [lambda: Leaf(i=41), lambda: WithOptions(options={"a": [1, 2]}, label="x")])
def test_a_cold_task_is_claimed_and_finished_in_two_round_trips(statements, backend, make):
    task = make()
    task_hash(task)  # its identity needs no database
    task.run()
    assert round_trips(statements, backend) <= 2, statements
    row = Task.get(Task.task_hash == task_hash(task))
    assert row.status == "done" and row.attempts == 1 and row.claim_token is not None
    linked = TaskParameter.select().where(TaskParameter.task == row.pk).count()
    assert linked == len([p for p in type(task).get_params() if p[1].significant]), statements
    assert task_hash(task) in known().done  # this process knows it is done without asking


def test_a_cold_task_with_requirements_records_its_edges_in_the_same_round_trips(statements, backend):
    task = NeedsLeaves(n=3)
    for leaf in task.requires():
        leaf.run()
    del statements[:]
    task.run()
    # On SQLite the finish with edges is two statements in one transaction: still one round trip.
    assert round_trips(statements, backend) <= 2, statements
    row = Task.get(Task.task_hash == task_hash(task))
    assert row.status == "done" and row.result == {"n": 3}
    assert Dependency.select().where(Dependency.task == row.pk).count() == 3


@pytest.fixture
def synchronous_commit(request):
    """``[astra] synchronous_commit`` set to the test's parameter, removed afterwards."""
    config = luigi.configuration.get_config()
    config.set("astra", "synchronous_commit", request.param)
    reset()  # SQLite decides when it opens
    yield request.param == "true"
    config.remove_option("astra", "synchronous_commit")
    reset()


@pytest.mark.parametrize("synchronous_commit", ["false", "true"], indirect=True)
def test_done_records_wait_for_the_disk_only_when_asked(synchronous_commit, statements, backend):
    task = Leaf(i=43 if synchronous_commit else 44)
    task.run()
    sent = list(statements)
    assert Task.get(Task.task_hash == task_hash(task)).status == "done"
    if backend == "postgresql":
        # The claim never waits; the done record waits unless told not to, for this transaction alone.
        unflushed = [sql for sql in sent if sql.startswith("SET LOCAL synchronous_commit = off")]
        assert len(sent) == 2 and len(unflushed) == (1 if synchronous_commit else 2), sent
        assert database().execute_sql("SHOW synchronous_commit").fetchone()[0] == "on"
    else:
        assert database().execute_sql("PRAGMA synchronous").fetchone()[0] == (2 if synchronous_commit else 1)
