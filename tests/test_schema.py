"""The schema file, the peewee models and the constraints they promise."""

from __future__ import annotations

import hashlib

import peewee
import psycopg2
import pytest

from astra.database import Parameter, Task, TaskParameter, create_schema, database
from astra.database.models import MODELS, proxy, utcnow
from astra.database.queries import _record_parameters
from astra.identity import parameter_hash
from tests.helpers import POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER, describe_schema, psql
from tests.helpers import SCHEMA_SQL as SQL


def test_sql_file_creates_the_three_tables(postgres_database):
    result = psql(postgres_database, SQL)
    assert result.returncode == 0, result.stderr
    tables = {column[0] for column in describe_schema(postgres_database)["columns"]}
    assert {"task", "parameter", "task_parameter"} <= tables
    names = {(t, c) for t, c, _, _ in describe_schema(postgres_database)["columns"]}
    for column in ["pk", "task_module", "task_name", "task_id", "task_hash", "status", "created", "completed"]:
        assert ("task", column) in names
    for column in ["duration", "host", "astra_version"]:
        assert ("task", column) in names
    assert {("parameter", "pk"), ("parameter", "parameter_name"), ("parameter", "parameter_value")} <= names
    assert {("task_parameter", "task_pk"), ("task_parameter", "parameter_pk")} <= names


def test_loading_the_sql_file_twice_keeps_data(postgres_database, monkeypatch):
    assert psql(postgres_database, SQL).returncode == 0
    connection = psycopg2.connect(postgres_database)
    connection.autocommit = True
    connection.cursor().execute(
        "insert into astra.task (task_module, task_name, task_id, task_hash, version, status, created, attempts, "
        "astra_version) values ('m', 'T', 'T__x', sha256('h'), '', 'done', now(), 1, '0')"
    )
    again = psql(postgres_database, SQL)
    assert again.returncode == 0, again.stderr
    cursor = connection.cursor()
    cursor.execute("select encode(task_hash, 'hex') from astra.task")
    assert cursor.fetchall() == [(hashlib.sha256(b"h").hexdigest(),)]
    connection.close()


@pytest.mark.slow
def test_sql_file_and_peewee_models_agree(postgres_database, monkeypatch):
    """The SQL file and the models describe the same columns, types, nullability, indexes and constraints."""
    assert psql(postgres_database, SQL).returncode == 0
    from_sql = describe_schema(postgres_database)

    other = postgres_database.rsplit("/", 1)[0] + "/" + postgres_database.rsplit("/", 1)[1] + "_models"
    admin = psycopg2.connect(postgres_database)
    admin.autocommit = True
    admin.cursor().execute(f"create database {other.rsplit('/', 1)[1]}")
    admin.close()
    try:
        db = peewee.PostgresqlDatabase(
            other.rsplit("/", 1)[1], host=POSTGRES_HOST, port=POSTGRES_PORT, user=POSTGRES_USER
        )
        proxy.initialize(db)
        for model in MODELS:
            model._meta.schema = "astra"
        db.execute_sql("create schema astra")
        db.create_tables(MODELS)
        db.close()
        from_models = describe_schema(other)
    finally:
        admin = psycopg2.connect(postgres_database)
        admin.autocommit = True
        admin.cursor().execute(f"drop database if exists {other.rsplit('/', 1)[1]} with (force)")
        admin.close()
        proxy.initialize(None)
    assert from_sql["columns"] == from_models["columns"]
    assert from_sql["indexes"] == from_models["indexes"]
    assert from_sql["constraints"] == from_models["constraints"]


def test_sqlite_gets_the_same_tables_automatically(tmp_path, monkeypatch, postgres_database):
    assert psql(postgres_database, SQL).returncode == 0
    expected = {}
    for table, column, _, nullable in describe_schema(postgres_database)["columns"]:
        expected.setdefault(table, set()).add((column, nullable == "YES"))

    monkeypatch.setenv("ASTRA_DATABASE_URL", f"sqlite:///{tmp_path / 'new.db'}")
    db = database()
    assert isinstance(db, peewee.SqliteDatabase)
    for table, columns in expected.items():
        found = {(c.name, c.null) for c in db.get_columns(table)}
        # SQLite reports an INTEGER PRIMARY KEY as nullable; PostgreSQL's serial is not.
        found = {(name, False if name == "pk" else null) for name, null in found}
        assert found == columns, table


def _task_row(name: str) -> Task:
    return Task.create(
        task_module="m",
        task_name=name,
        task_id=name,
        task_hash=hashlib.sha256(name.encode()).hexdigest(),
        version="",
        status="done",
        created=utcnow(),
        attempts=1,
        astra_version="0",
    )


@pytest.mark.parametrize("value", ["short", "x" * 100_000])
def test_parameter_rows_are_unique_per_name_and_value(database_url, value):
    first, second = _task_row("a"), _task_row("b")
    _record_parameters(first.pk, {"p": value, "q": value})
    _record_parameters(second.pk, {"p": value})
    _record_parameters(second.pk, {"p": value})
    assert Parameter.select().where(Parameter.parameter_name == "p").count() == 1
    assert Parameter.select().count() == 2
    assert TaskParameter.select().count() == 3
    stored = Parameter.get(Parameter.parameter_hash == parameter_hash("p", value))
    assert stored.parameter_value == value


def test_database_refuses_a_duplicate_parameter_pair(database_url):
    Parameter.create(parameter_name="p", parameter_value="v", parameter_hash=parameter_hash("p", "v"))
    with pytest.raises(peewee.IntegrityError), database().atomic():
        Parameter.create(parameter_name="p", parameter_value="v", parameter_hash=parameter_hash("p", "v"))


def test_removing_a_task_removes_its_junction_rows(database_url):
    task = _task_row("a")
    _record_parameters(task.pk, {"p": "1", "q": "2"})
    assert TaskParameter.select().count() == 2
    Task.delete().where(Task.pk == task.pk).execute()
    assert TaskParameter.select().count() == 0
    assert Parameter.select().count() == 2  # parameters may be shared; forgetting them is the CLI's job


def test_create_schema_is_idempotent(database_url):
    _task_row("kept")
    create_schema()
    create_schema()
    assert [t.task_hash for t in Task.select()] == [hashlib.sha256(b"kept").hexdigest()]
