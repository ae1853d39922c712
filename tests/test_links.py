"""astra.task_parameter's references (schema 9): what PostgreSQL's per-statement triggers guarantee, alone and
against concurrent writers, as the foreign keys did before them (SQLite keeps its foreign keys)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time

import peewee
import psycopg2
import pytest

from astra.database import Parameter, Task, TaskParameter, database, versions
from astra.database.connection import reset, upgrade_schema
from astra.database.models import utcnow
from astra.database.queries import _record_parameters
from astra.database.records import forget
from tests.helpers import REPO, describe_schema, psql
from tests.helpers import SCHEMA_SQL as SQL

#: A commit whose schema file is schema 8, the last with foreign keys on astra.task_parameter.
SCHEMA_8 = "8d084fd"


def key(name: str) -> str:
    """The key (a sha256, as hex text) of the task or parameter the tests call ``name``; in SQL: sha256('name')."""
    return hashlib.sha256(name.encode()).hexdigest()


def _task(name: str) -> Task:
    return Task.create(
        task_module="m", task_name="T", task_id=name, task_hash=key(name), version="", status="done",
        created=utcnow(), attempts=1, astra_version="0",
    )  # fmt: skip


def _dangling(url: str) -> int:
    """Links to a task or a parameter that is not there."""
    connection = psycopg2.connect(url)
    try:
        cursor = connection.cursor()
        cursor.execute(
            "select count(*) from astra.task_parameter as l "
            "where not exists (select from astra.task as t where t.pk = l.task_pk) "
            "or not exists (select from astra.parameter as p where p.pk = l.parameter_pk)"
        )
        return cursor.fetchone()[0]
    finally:
        connection.close()


def test_a_link_needs_its_task_and_its_parameter(database_url):
    task = _task("a")
    _record_parameters(task.pk, {"p": "1"})
    parameter = Parameter.get().pk
    for link in ({"task": task.pk + 100, "parameter": parameter}, {"task": task.pk, "parameter": parameter + 100}):
        with pytest.raises(peewee.IntegrityError), database().atomic():
            TaskParameter.insert(**link).execute()
    assert list(TaskParameter.select().tuples()) == [(task.pk, parameter)]


def test_a_linked_parameter_stays_an_unlinked_one_goes(database_url):
    kept, other = _task("kept"), _task("other")
    _record_parameters(kept.pk, {"p": "1"})
    _record_parameters(other.pk, {"q": "2"})
    with pytest.raises(peewee.IntegrityError), database().atomic():
        Parameter.delete().where(Parameter.parameter_name == "p").execute()
    Task.delete().where(Task.pk == other.pk).execute()  # its link goes with it
    assert Parameter.delete().where(Parameter.parameter_name == "q").execute() == 1
    assert sorted(p.parameter_name for p in Parameter.select()) == ["p"]
    assert TaskParameter.select().count() == 1


def test_a_link_checked_in_one_statement_with_many(postgres_url):
    """One statement of many links fails whole on one bad link; a good one of thousands goes in."""
    tasks = [_task(f"t{i}") for i in range(3)]
    _record_parameters(tasks[0].pk, {"p": "1"})
    parameter = Parameter.get().pk
    db = database()
    with pytest.raises(peewee.IntegrityError), db.atomic():
        db.execute_sql(
            "insert into astra.task_parameter select t, %s from unnest(%s::bigint[]) as t",
            (parameter, [task.pk for task in tasks[1:]] + [-1]),
        )
    db.execute_sql(
        "insert into astra.task_parameter select t, %s from unnest(%s::bigint[]) as t",
        (parameter, [task.pk for task in tasks[1:]]),
    )
    assert TaskParameter.select().count() == 3


def test_pks_stay_and_truncation_takes_the_links_along(postgres_url):
    task = _task("a")
    _record_parameters(task.pk, {"p": "1"})
    db = database()
    for sql in (
        "update astra.task set pk = pk + 1000",
        "update astra.parameter set pk = pk + 1000",
        "truncate astra.parameter",
        "truncate astra.task cascade",  # the tables with foreign keys to it, not astra.task_parameter
    ):
        with pytest.raises(peewee.IntegrityError), db.atomic():
            db.execute_sql(sql)
    db.execute_sql("update astra.task set status = 'failed'")  # any other column: as before
    db.execute_sql("truncate astra.task, astra.parameter, astra.task_parameter cascade")
    assert Task.select().count() == TaskParameter.select().count() == 0


# Concurrent writers: two connections, one of which waits for the other at the moment that matters.


class Session:
    """A connection of its own, whose statement can run in a thread while the test looks at whether it waits."""

    def __init__(self, url: str, isolation: str = "read committed") -> None:
        self.connection = psycopg2.connect(url)
        self.connection.cursor().execute(f"set session characteristics as transaction isolation level {isolation}")
        self.connection.commit()
        self.error: Exception | None = None
        self.thread: threading.Thread | None = None

    def run(self, sql: str, *args) -> None:
        self.connection.cursor().execute(sql, args)

    def start(self, sql: str, *args) -> None:
        def run():
            try:
                self.run(sql, *args)
            except psycopg2.Error as exc:
                self.error = exc
                self.connection.rollback()

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def waiting(self) -> bool:
        self.thread.join(1.0)
        return self.thread.is_alive()

    def finish(self) -> Exception | None:
        self.thread.join(30)
        assert not self.thread.is_alive()
        return self.error

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def sessions(postgres_url):
    """Two sessions on a database holding tasks 'a' and 'b' linked to parameter 'p'."""
    for name in ("a", "b"):
        _record_parameters(_task(name).pk, {"p": "1"})
    made = []

    def session(isolation: str = "read committed") -> Session:
        made.append(Session(postgres_url, isolation))
        return made[-1]

    yield session
    for one in made:
        one.close()
    assert _dangling(postgres_url) == 0


def _pk(table: str, column: str, value: str) -> int:
    value = bytes.fromhex(key(value)) if column.endswith("_hash") else value
    return database().execute_sql(f"select pk from astra.{table} where {column} = %s", (value,)).fetchone()[0]


def test_a_task_deleted_while_a_link_to_it_is_written_takes_the_link(sessions):
    recorder, forgetter = sessions(), sessions()
    recorder.run(
        "insert into astra.parameter (parameter_name, parameter_value, parameter_hash) values ('q', '2', sha256('q'))"
    )
    recorder.run("insert into astra.task_parameter select %s, pk from astra.parameter "
                 "where parameter_hash = sha256('q')", _pk("task", "task_hash", "a"))  # fmt: skip
    forgetter.start("delete from astra.task where task_hash = sha256('a')")
    assert forgetter.waiting()  # for the recorder, whose link it must see
    recorder.connection.commit()
    assert forgetter.finish() is None
    forgetter.connection.commit()
    assert [link.task.task_hash for link in TaskParameter.select()] == [key("b")]


def test_a_link_to_a_task_being_deleted_fails(sessions):
    recorder, forgetter = sessions(), sessions()
    a, p = _pk("task", "task_hash", "a"), _pk("parameter", "parameter_name", "p")
    forgetter.run("delete from astra.task where pk = %s", a)
    recorder.start("insert into astra.task_parameter values (%s, %s) on conflict do nothing", a, p)
    assert recorder.waiting()
    forgetter.connection.commit()
    assert isinstance(recorder.finish(), psycopg2.errors.ForeignKeyViolation)


def test_a_parameter_linked_meanwhile_stays(sessions):
    """forget's way: links found, deleted, then the parameters no task uses; a recorder links one meanwhile."""
    recorder, forgetter = sessions(), sessions()
    b, p = _pk("task", "task_hash", "b"), _pk("parameter", "parameter_name", "p")
    recorder.run("insert into astra.task (task_module, task_name, task_id, task_hash, version, status, created, "
                 "attempts, astra_version) values ('m', 'T', 'c', sha256('c'), '', 'done', now(), 1, '0')")  # fmt: skip
    recorder.run("insert into astra.task_parameter select pk, %s from astra.task where task_hash = sha256('c')", p)
    a = _pk("task", "task_hash", "a")
    forgetter.start(  # waits for the recorder, which linked p to c; then p is in use
        "delete from astra.task where pk in (%s, %s); delete from astra.parameter where pk = %s", a, b, p
    )
    assert forgetter.waiting()
    recorder.connection.commit()
    assert isinstance(forgetter.finish(), psycopg2.errors.ForeignKeyViolation)
    assert Parameter.select().count() == 1


def test_a_link_to_a_parameter_being_deleted_fails(sessions):
    recorder, forgetter = sessions(), sessions()
    b, p = _pk("task", "task_hash", "b"), _pk("parameter", "parameter_name", "p")
    forgetter.run("delete from astra.task_parameter where parameter_pk = %s", p)
    forgetter.run("delete from astra.parameter where pk = %s", p)
    recorder.start("insert into astra.task_parameter values (%s, %s) on conflict do nothing", b, p)
    assert recorder.waiting()
    forgetter.connection.commit()
    assert isinstance(recorder.finish(), psycopg2.errors.ForeignKeyViolation)


def test_a_link_from_an_older_snapshot_fails(sessions):
    """Repeatable read: the recorder's snapshot still shows the task deleted since, whose row it then locks."""
    recorder, forgetter = sessions("repeatable read"), sessions()
    a, p = _pk("task", "task_hash", "a"), _pk("parameter", "parameter_name", "p")
    recorder.run("select count(*) from astra.task")  # the snapshot
    forgetter.run("delete from astra.task where pk = %s", a)
    forgetter.connection.commit()
    with pytest.raises((psycopg2.errors.SerializationFailure, psycopg2.errors.ForeignKeyViolation)):
        recorder.run("insert into astra.task_parameter values (%s, %s)", a, p)


def test_deleting_tasks_needs_read_committed(sessions):
    forgetter = sessions("repeatable read")
    with pytest.raises(psycopg2.errors.FeatureNotSupported):
        forgetter.run("delete from astra.task where task_hash = sha256('a')")


def test_forget_waits_for_a_recording_in_progress(sessions, postgres_url):
    recorder = sessions()
    recorder.run("insert into astra.task (task_module, task_name, task_id, task_hash, version, status, created, "
                 "attempts, astra_version) values ('m', 'T', 'c', sha256('c'), '', 'done', now(), 1, '0')")  # fmt: skip
    recorder.run("insert into astra.task_parameter select t.pk, p.pk from astra.task as t, astra.parameter as p "
                 "where t.task_hash = sha256('c')")  # fmt: skip
    done = []
    thread = threading.Thread(target=lambda: done.append(forget([_pk("task", "task_hash", "a")])))
    thread.start()
    time.sleep(1.0)
    assert not done  # forget waits: the parameter it may delete is being linked
    recorder.connection.commit()
    thread.join(30)
    assert done and done[0].parameters == 0  # p is still used, by b and c
    reset()


def test_forgetting_a_task_a_batch_records_again(sessions):
    """The batch holds the task's row, then writes its links; forget waits for it, then takes them along."""
    recorder = sessions()
    recorder.run("update astra.task set status = 'failed', attempts = attempts + 1 where task_hash = sha256('a')")
    done = []
    thread = threading.Thread(target=lambda: done.append(forget([_pk("task", "task_hash", "a")])))
    thread.start()
    time.sleep(1.0)
    recorder.run(
        "insert into astra.parameter (parameter_name, parameter_value, parameter_hash) values ('q', '2', sha256('q'))"
    )
    recorder.run("insert into astra.task_parameter select t.pk, p.pk from astra.task as t, astra.parameter as p "
                 "where t.task_hash = sha256('a') and p.parameter_hash = sha256('q')")  # fmt: skip
    assert not done
    recorder.connection.commit()
    thread.join(30)
    assert done and done[0].tasks == 1 and [task.task_hash for task in Task.select()] == [key("b")]
    assert [link.task.task_hash for link in TaskParameter.select()] == [key("b")]  # a's links, q's too, went with a
    # q, which only a used, too: forget read a's links only once the batch had written them (it left q unused).
    assert [parameter.parameter_name for parameter in Parameter.select()] == ["p"] and done[0].parameters == 1
    reset()


def test_two_forgets_at_once(sessions):
    done = []
    threads = [threading.Thread(target=lambda n=n: done.append(forget([_pk("task", "task_hash", n)]))) for n in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(forgotten.tasks for forgotten in done) == [1, 1]
    assert Task.select().count() == TaskParameter.select().count() == Parameter.select().count() == 0
    reset()


def test_two_batches_of_overlapping_items_at_once(postgres_url):
    """Two processes record overlapping items with the same parameters at the same time: every link is there."""
    script = (
        "import hashlib, sys\n"
        "from astra.database import queries\n"
        "start = int(sys.argv[1])\n"
        "items = [dict(task_module='m', task_name='T', task_id=f't{i}', version='',\n"
        "              task_hash=hashlib.sha256(f'h{i}'.encode()).hexdigest(),\n"
        "              astra_version='0', parameters={'i': str(i), 'release': 'dr19'}, requires=[])\n"
        "         for i in range(start, start + 3000)]\n"
        "for first in range(0, 3000, 500):\n"
        "    with queries.transaction():\n"
        "        queries.record_items(items[first:first + 500], queries.DONE)\n"
    )
    env = {"ASTRA_DATABASE_URL": postgres_url, "PYTHONPATH": str(REPO)}
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(start)], env={**os.environ, **env}) for start in (0, 1500)
    ]
    assert [process.wait(120) for process in processes] == [0, 0]
    assert Task.select().count() == 4500
    assert TaskParameter.select().count() == 9000
    assert Parameter.select().count() == 4501
    assert _dangling(postgres_url) == 0


# Schema 8 brought to 9.


@pytest.fixture
def schema_8(postgres_database, tmp_path) -> str:
    try:
        text = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{SCHEMA_8}:schema/astradb/astradb.sql"],
            capture_output=True, check=True, text=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"commit {SCHEMA_8} is not in this checkout ({exc})")
    assert "select 8, now()" in text
    (tmp_path / "schema_8.sql").write_text(text)
    loaded = psql(postgres_database, tmp_path / "schema_8.sql")
    assert loaded.returncode == 0, loaded.stderr
    return postgres_database


def _triggers(url: str) -> list[tuple]:
    connection = psycopg2.connect(url)
    try:
        cursor = connection.cursor()
        cursor.execute(
            "select tgname, pg_get_triggerdef(t.oid) from pg_trigger as t "
            "where tgrelid::regclass::text like 'astra.%' and not tgisinternal order by 1"
        )
        triggers = cursor.fetchall()
        cursor.execute(
            "select proname, pg_get_functiondef(p.oid) from pg_proc as p "
            "where pronamespace = 'astra'::regnamespace order by 1"
        )
        return triggers + cursor.fetchall()
    finally:
        connection.close()


def test_schema_8_upgraded_keeps_its_rows_and_is_the_file(schema_8, postgres_database, monkeypatch):
    connection = psycopg2.connect(schema_8)
    cursor = connection.cursor()
    cursor.execute(
        "insert into astra.task (task_module, task_name, task_id, task_hash, version, status, created, attempts, "
        "astra_version) select 'm', 'T', 't' || i, encode(sha256(('h' || i)::bytea), 'hex'), '', 'done', now(), 1, "
        "'0' from generate_series(1, 3) i"
    )
    cursor.execute(
        "insert into astra.parameter (parameter_name, parameter_value, parameter_hash) "
        "values ('p', '1', encode(sha256('p'), 'hex'))"
    )
    cursor.execute("insert into astra.task_parameter select t.pk, p.pk from astra.task t, astra.parameter p")
    connection.commit()
    cursor.execute("select * from astra.task_parameter order by 1")
    links = cursor.fetchall()
    connection.close()

    monkeypatch.setenv("ASTRA_DATABASE_URL", schema_8)
    reset()
    where, before, after = upgrade_schema()
    assert (before, after) == (8, versions.CURRENT) == (8, 12)
    assert list(TaskParameter.select().order_by(TaskParameter.task).tuples()) == links
    reset()

    reference = postgres_database + "_file"
    admin = psycopg2.connect(postgres_database)
    admin.autocommit = True
    admin.cursor().execute(f"create database {reference.rsplit('/', 1)[1]}")
    admin.close()
    try:
        assert psql(reference, SQL).returncode == 0
        upgraded, made = describe_schema(schema_8), describe_schema(reference)
        assert upgraded["constraints"] == made["constraints"]
        assert upgraded["indexes"] == made["indexes"]
        assert _triggers(schema_8) == _triggers(reference)
        assert len(_triggers(reference)) == 8 + 4
    finally:
        admin = psycopg2.connect(postgres_database)
        admin.autocommit = True
        admin.cursor().execute(f"drop database if exists {reference.rsplit('/', 1)[1]} with (force)")
        admin.close()

    # and it works as a new one does
    monkeypatch.setenv("ASTRA_DATABASE_URL", schema_8)
    reset()
    Task.delete().where(Task.task_hash == key("h1")).execute()
    assert TaskParameter.select().count() == 2
    with pytest.raises(peewee.IntegrityError), database().atomic():
        TaskParameter.insert(task=12345, parameter=Parameter.get().pk).execute()
    reset()
