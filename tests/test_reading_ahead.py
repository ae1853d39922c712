"""``astra.database.queries.ahead``: what a long read (``astra results``) makes a chunk at a time, made by helper
threads ahead of the caller, in order, from the caller's snapshot, with the caller's errors and nothing left running.
"""

from __future__ import annotations

import threading

import luigi
import psycopg2
import pytest

from astra import config
from astra.database import queries, records
from astra.database.connection import is_postgres
from astra.database.models import Task
from astra.targets import forget_cached
from tests.output_tasks import PlainResult


def _twelve_done() -> list[int]:
    forget_cached()
    assert luigi.build([PlainResult(i=i) for i in range(12)], local_scheduler=True, log_level="WARNING")
    return sorted(pk for (pk,) in Task.select(Task.pk).tuples())


@pytest.fixture
def recorded(database_url) -> list[int]:
    """The pks of 12 done tasks."""
    return _twelve_done()


@pytest.fixture
def recorded_on_postgres(postgres_url) -> list[int]:
    """The pks of 12 done tasks, on PostgreSQL."""
    return _twelve_done()


def _helpers() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("astra-ahead")]


def _count(pks) -> int:
    return Task.select().where(Task.pk.in_(list(pks))).count()


def test_in_order_from_the_callers_snapshot(recorded, database_url):
    """Each item's result comes in the order of the items. On PostgreSQL the helpers read the rows as the caller's
    transaction sees them, though another connection deleted them meanwhile (a forget while `astra results` runs)."""
    items = [recorded[i : i + 2] for i in range(0, len(recorded), 2)]
    with queries.reading():
        assert _count(recorded) == 12  # the caller's snapshot is taken by its first statement
        if is_postgres():
            other = psycopg2.connect(database_url)
            other.autocommit = True
            other.cursor().execute("DELETE FROM astra.task WHERE pk = ANY(%s)", (recorded[:6],))
            other.close()
        made = list(queries.ahead(lambda pks: (list(pks), _count(pks), threading.current_thread().name), items))
        assert [pks for pks, _, _ in made] == items
        assert [count for _, count, _ in made] == [2] * len(items)
        threads = {name for _, _, name in made}
        helpers = config.settings().read_helpers
        assert threads == ({f"astra-ahead-{i}" for i in range(helpers)} if is_postgres() else {"MainThread"})
        assert _count(recorded) == 12
    assert _count(recorded) == (6 if is_postgres() else 12)  # after the reading transaction: what was committed
    assert _helpers() == []


def test_without_a_reading_transaction_in_this_thread(recorded):
    """Outside ``reading()`` the items are made here, one after the other; in a transaction that writes too (a
    helper on another connection would not see what it wrote)."""
    made = list(queries.ahead(lambda pk: (pk, threading.current_thread().name), recorded))
    assert made == [(pk, "MainThread") for pk in recorded]
    with queries.transaction():
        Task.delete().where(Task.pk == recorded[0]).execute()
        made = list(queries.ahead(lambda pk: (_count([pk]), threading.current_thread().name), recorded))
        assert made == [(0, "MainThread")] + [(1, "MainThread")] * 11


def test_an_error_is_raised_where_its_result_was_due(recorded):
    """The results before the failing item come first; then its error; the helpers stop and close their
    connections (the caller's transaction stays usable)."""

    def produce(pk: int) -> int:
        if pk == recorded[5]:
            raise ValueError(f"no result for {pk}")
        return _count([pk])

    taken = []
    with queries.reading():
        with pytest.raises(ValueError, match=f"no result for {recorded[5]}"):
            for value in queries.ahead(produce, recorded):
                taken.append(value)
        assert taken == [1] * 5
        assert _count(recorded) == 12
    assert _helpers() == []


def test_a_caller_that_stops_taking_stops_the_helpers(recorded):
    """A caller that takes two results and goes (a writer that failed) leaves no helper running."""
    with queries.reading():
        made = queries.ahead(lambda pk: _count([pk]), recorded)
        assert [next(made), next(made)] == [1, 1]
        made.close()
        assert _helpers() == []


def test_versions_read_with_the_filters(recorded):
    """``records.versions`` gives each matching task's version and completion time (a datetime with its zone on
    either database), oldest first, as reading the tasks gives them."""
    filters = records.Filters(names=("PlainResult",), where=(("i", "1*"),))
    found = {pk: got for chunk in records.versions(filters) for pk, got in chunk.items()}
    tasks = {task.pk: task for task in Task.select().where(Task.pk.in_(list(found)))}
    assert len(found) == 3 and list(found) == sorted(found)  # i = 1, 10 and 11
    assert found == {pk: (tasks[pk].version, tasks[pk].completed) for pk in found}
    assert all(completed.tzinfo is not None for _, completed in found.values())


def test_helpers_that_cannot_start_leave_their_items_to_the_caller(recorded, monkeypatch):
    """A helper whose connection the server refuses (``max_connections`` reached) is no error: the caller makes its
    items, in its own snapshot, and the rest come from the helper that started."""
    from astra.database.connection import database
    from astra.database.dialect import dialect

    kind = type(dialect(database()))
    real = kind.read_snapshot

    def refuse_the_first(self, db, snapshot):
        if threading.current_thread().name == "astra-ahead-0":
            raise psycopg2.OperationalError("FATAL:  sorry, too many clients already")
        return real(self, db, snapshot)

    monkeypatch.setattr(kind, "read_snapshot", refuse_the_first)
    with queries.reading():
        made = list(queries.ahead(lambda pk: (pk, _count([pk]), threading.current_thread().name), recorded))
    assert [(pk, count) for pk, count, _ in made] == [(pk, 1) for pk in recorded]
    if is_postgres():
        assert {name for _, _, name in made[0::2]} == {"MainThread"}
        assert {name for _, _, name in made[1::2]} == {"astra-ahead-1"}
    assert _helpers() == []


def test_connections_lost_mid_read_are_the_error_said(recorded_on_postgres, postgres_url):
    """The server drops the command's connections while its helpers read (``pg_terminate_backend``, as a restart
    does): the error is the lost connection's, not that of the rollback on the way out (which found the caller's
    connection gone too), and the next statement opens a new connection."""
    from astra.database.connection import ConnectionLostError

    recorded = recorded_on_postgres

    def produce(pk: int) -> int:
        if pk == recorded[4]:
            admin = psycopg2.connect(postgres_url)
            admin.autocommit = True
            admin.cursor().execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            admin.close()
        return _count([pk])

    with pytest.raises(ConnectionLostError, match="lost the connection"):
        with queries.reading():
            list(queries.ahead(produce, recorded))
    assert _helpers() == []
    assert _count(recorded) == 12


def test_read_helpers_zero_reads_alone(recorded):
    """``[astra] read_helpers = 0``: no helper, the caller makes every item on its one connection."""
    luigi.configuration.get_config().set("astra", "read_helpers", "0")
    try:
        with queries.reading():
            made = list(queries.ahead(lambda pk: (_count([pk]), threading.current_thread().name), recorded))
    finally:
        luigi.configuration.get_config().remove_option("astra", "read_helpers")
    assert made == [(1, "MainThread")] * 12
