"""Recording many batch items at once (queries.record_items): the rows, their clock, and a race with another worker."""

from __future__ import annotations

import datetime
import hashlib

import pytest

import astra
from astra.database import Parameter, Task, TaskParameter, database, dialect, queries
from tests.helpers import assert_no_key_burnt

#: Text that COPY's text format writes escaped: tab, newline, carriage return and backslash.
AWKWARD = "a\tb\nc\rd\\e \\N"


def _item(name: str, **extra) -> dict:
    return {
        "task_module": "tests.test_bulk_recording",
        "task_name": "Item",
        "task_id": f"Item_{name}",
        "task_hash": hashlib.sha256(name.encode()).hexdigest(),
        "version": "",
        "astra_version": astra.__version__,
        "parameters": {"name": name, "shared": "same"},
        "requires": [],
        "result": '{"n": 1}',
        "duration": 0.5,
        **extra,
    }


def _links() -> dict[str, dict[str, str]]:
    """Each task's parameters, by task hash, as the tables hold them."""
    found: dict[str, dict[str, str]] = {}
    query = (
        TaskParameter.select(Task.task_hash, Parameter.parameter_name, Parameter.parameter_value)
        .join(Task)
        .switch(TaskParameter)
        .join(Parameter)
        .tuples()
    )
    for task_hash, name, value in query:
        found.setdefault(task_hash, {})[name] = value
    return found


def test_items_read_back_as_given_with_the_database_clock(database_url):
    items = [
        _item("a", parameters={"name": AWKWARD, "shared": "same"}, result='{"text": "x\\ty\\\\z"}'),
        _item("b", error=f"ValueError: {AWKWARD}", traceback=f"Traceback\n\t{AWKWARD}", result=None),
    ]
    with queries.transaction():
        written = queries.record_items(items[:1], queries.DONE)
        written.update(queries.record_items(items[1:], queries.FAILED))
        # The clock of the database (on PostgreSQL the transaction's now(), as a lone task's claim writes).
        (now,) = database().execute_sql("select now()" if "postgres" in database_url else "select 1").fetchone()
    rows = {row.task_hash: row for row in Task.select()}
    assert set(written) == set(rows) and {rows[h].pk for h in written} == set(written.values())
    a, b = rows[items[0]["task_hash"]], rows[items[1]["task_hash"]]
    assert (a.status, a.result, a.error, a.duration, a.attempts) == ("done", {"text": "x\ty\\z"}, None, 0.5, 1)
    assert (b.status, b.result, b.error, b.traceback) == ("failed", None, items[1]["error"], items[1]["traceback"])
    assert b.completed is None
    assert a.created == a.started == a.heartbeat == a.completed
    if "postgres" in database_url:
        assert a.completed == now
    else:
        assert abs(a.completed - datetime.datetime.now(datetime.timezone.utc)) < datetime.timedelta(minutes=1)
    assert _links() == {item["task_hash"]: item["parameters"] for item in items}


def test_rows_another_worker_records_meanwhile_are_met_as_they_are(database_url, backend, monkeypatch):
    """The lookup before the write misses rows that another worker records just then: the write still keeps a
    done row, takes over a failed one, and links each task it wrote to its parameters, burning no key."""
    with queries.transaction():
        queries.record_items([_item("d")], queries.DONE)
        queries.record_items([_item("f", error="ValueError: no")], queries.FAILED)
    before = {row.task_hash: row for row in Task.select()}
    if backend == "postgresql":
        # As if the first lookups (of the tasks, of the parameters) had run just before the other worker
        # committed: they find none of its rows.
        keys, calls = dialect.PostgreSQL.keys, []

        def blind(self, *args):
            calls.append(args)
            return {} if len(calls) <= 2 else keys(self, *args)

        monkeypatch.setattr(dialect.PostgreSQL, "keys", blind)
    items = [_item(name, result='"again"') for name in ("d", "f", "n")]
    with queries.transaction():
        written = queries.record_items(items, queries.DONE)
    rows = {row.task_hash: row for row in Task.select()}
    d, f, n = (items[i]["task_hash"] for i in range(3))
    assert set(written) == {f, n} and written[f] == before[f].pk
    assert (rows[d].result, rows[d].attempts, rows[d].completed) == ({"n": 1}, 1, before[d].completed)
    assert (rows[f].status, rows[f].result, rows[f].error, rows[f].attempts) == ("done", "again", None, 2)
    assert (rows[n].status, rows[n].result) == ("done", "again")
    assert _links() == {item["task_hash"]: item["parameters"] for item in items}
    if backend == "sqlite":
        assert_no_key_burnt()


@pytest.mark.parametrize("size", [1, 12_000])
def test_chunks_of_any_size_are_recorded_whole(database_url, size):
    items = [_item(f"{i:05d}") for i in range(size)]
    with queries.transaction():
        written = queries.record_items(items, queries.DONE)
    assert len(written) == size == Task.select().count()
    assert Parameter.select().count() == size + 1  # one name each, one shared value
    assert TaskParameter.select().count() == 2 * size
    assert_no_key_burnt()
