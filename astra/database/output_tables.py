"""The tables of ``astra.OutputModel`` subclasses: created, checked, filled in bulk and read.

On SQLite an output table is created the first time a process uses it. On PostgreSQL tables are made by whoever
owns the schema (``astra db init --module MODULE``, or the DDL of ``astra db sql --module MODULE`` through psql), so
a missing one stops the process with one line naming that command.
"""

from __future__ import annotations

import datetime
import io
import struct
import weakref
from collections.abc import Iterable, Sequence
from contextlib import contextmanager

import numpy as np
import peewee
from peewee import JOIN

from astra.database.connection import DatabaseNotReady, database, describe, is_postgres
from astra.database.models import Parameter, Task, TaskParameter
from astra.database.queries import DONE, chunked
from astra.identity import parameter_hash

#: The output models known to be usable, per open database (a forked child shares its parent's knowledge).
_ready: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _bind(model: type[peewee.Model], db: peewee.Database) -> None:
    model._meta.schema = "astra" if is_postgres(db) else None


def table_name(model: type[peewee.Model]) -> str:
    return f"astra.{model._meta.table_name}"


def ready(model: type[peewee.Model]) -> None:
    """Make sure ``model``'s table can be used: create it on SQLite; on PostgreSQL stop if it is missing."""
    db = database()
    known = _ready.setdefault(db, set())
    if model in known:
        return
    _bind(model, db)
    if is_postgres(db):
        if not db.table_exists(model._meta.table_name, schema="astra"):
            raise DatabaseNotReady(
                f"astra: {describe()} has no output table {table_name(model)} for {model.__name__}; create it with "
                f"`astra db init --module {model.__module__}` (or `astra db sql --module {model.__module__} | psql`)"
            )
    else:
        db.create_tables([model], safe=True)
    known.add(model)


def create(models: Sequence[type[peewee.Model]]) -> None:
    """Create the tables of ``models`` where they are missing (never drops data). The astra schema must exist."""
    db = database()
    for model in models:
        _bind(model, db)
    with db.atomic():
        db.create_tables(list(models), safe=True)
    _ready.setdefault(db, set()).update(models)


@contextmanager
def _postgres_dialect(models: Sequence[type[peewee.Model]]):
    """Render ``models`` (and the task table they refer to) as PostgreSQL's, without connecting anywhere."""
    everything = [Task, *models]
    schemas = [model._meta.schema for model in everything]
    postgres = peewee.PostgresqlDatabase(None)
    try:
        with postgres.bind_ctx(everything, bind_refs=False, bind_backrefs=False):
            for model in everything:
                model._meta.schema = "astra"
            yield
    finally:
        for model, schema in zip(everything, schemas):
            model._meta.schema = schema


def ddl(models: Sequence[type[peewee.Model]]) -> list[str]:
    """The PostgreSQL statements that create the tables of ``models`` in the astra schema (idempotent)."""
    statements = []
    with _postgres_dialect(models):
        for model in models:
            for context in [model._schema._create_table(safe=True), *model._schema._create_indexes(safe=True)]:
                sql, params = context.query()
                if params:
                    raise ValueError(f"{model.__name__}: cannot write DDL with parameters ({params!r})")
                statements.append(sql + ";")
    return statements


def _columns(model: type[peewee.Model]) -> list[peewee.Field]:
    return [field for name, field in model._meta.fields.items() if name != "pk"]


def insert(model: type[peewee.Model], rows: Sequence[tuple[int, dict]]) -> None:
    """Insert ``rows`` (task pk, {field name: value}) into ``model``'s table with one statement per chunk.

    Call inside the transaction that records the tasks as done. On PostgreSQL the rows travel as one array per
    column, unpacked by unnest(); SQLite runs in this process, where executemany costs no round trips.
    """
    if not rows:
        return
    ready(model)
    db = database()
    fields = _columns(model)
    names = ", ".join(f'"{field.column_name}"' for field in fields)
    if not is_postgres(db):
        marks = ", ".join("?" * len(fields))
        db.connection().executemany(
            f'INSERT INTO "{model._meta.table_name}" ({names}) VALUES ({marks})',
            [
                tuple(pk if field.name == "task" else field.db_value(row[field.name]) for field in fields)
                for pk, row in rows
            ],
        )
        return
    kinds = [_postgres_type(db, field) for field in fields]
    if all(_encoder(kind, field) for kind, field in zip(kinds, fields)):
        _copy(db, model, fields, kinds, rows)
        return
    arrays, selected = [], []
    for i, field in enumerate(fields):
        typed = getattr(field, "postgres_type", None)  # an astra.ArrayField: its literals are cast on the server
        kind = "TEXT" if typed else kinds[i]
        arrays.append(f"%s::{kind}[]")
        selected.append(f"c{i}::{typed}" if typed else f"c{i}")
    aliases = ", ".join(f"c{i}" for i in range(len(fields)))
    sql = (
        f"INSERT INTO {table_name(model)} ({names}) SELECT {', '.join(selected)} "
        f"FROM unnest({', '.join(arrays)}) AS u({aliases})"
    )
    for chunk in chunked(list(rows)):
        columns = [
            [pk for pk, _ in chunk] if field.name == "task" else [field.db_value(row[field.name]) for _, row in chunk]
            for field in fields
        ]
        db.execute_sql(sql, tuple(columns))


def _postgres_type(db: peewee.Database, field: peewee.Field) -> str:
    context = db.get_sql_context()
    return context.sql(field.ddl_datatype(context)).query()[0]


# COPY in binary: numbers travel as their bytes, which PostgreSQL takes without parsing text (parsing a float
# array's text costs about a microsecond per element on each side). Types without an encoder here go through
# INSERT ... SELECT FROM unnest() instead.
_EPOCH = datetime.datetime(2000, 1, 1)
_BINARY = {
    "BIGINT": struct.Struct(">q").pack,
    "INTEGER": struct.Struct(">i").pack,
    "SMALLINT": struct.Struct(">h").pack,
    "DOUBLE PRECISION": struct.Struct(">d").pack,
    "REAL": struct.Struct(">f").pack,
    "BOOLEAN": lambda value: b"\x01" if value else b"\x00",
    "TEXT": lambda value: str(value).encode(),
}


def _timestamp(value: datetime.datetime) -> bytes:
    if value.tzinfo is not None:
        value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return struct.pack(">q", (value - _EPOCH) // datetime.timedelta(microseconds=1))


def _encoder(kind: str, field: peewee.Field):
    if hasattr(field, "postgres_binary"):
        return field.postgres_binary
    if kind in ("TIMESTAMP", "TIMESTAMPTZ"):
        return lambda value: _timestamp(value if isinstance(value, datetime.datetime) else field.python_value(value))
    if kind.startswith("VARCHAR"):
        return _BINARY["TEXT"]
    return _BINARY.get(kind)


#: Numbers of a fixed size, by PostgreSQL type: a chunk of them is packed by numpy, not row by row.
_FIXED = {
    "BIGINT": ">i8",
    "INTEGER": ">i4",
    "SMALLINT": ">i2",
    "DOUBLE PRECISION": ">f8",
    "REAL": ">f4",
    "BOOLEAN": "?",
}


def _packed(fields, kinds, rows) -> bytes | None:
    """The COPY tuples of ``rows`` built as one numpy structured array, or None if a value needs more care
    (a NULL, text, a time, arrays of different shapes).
    """
    layout, columns = [("count", ">i2")], {}
    for i, (field, kind) in enumerate(zip(fields, kinds)):
        if field.name == "task":
            values = np.array([pk for pk, _ in rows], dtype=">i8")
        elif hasattr(field, "postgres_binary_block"):
            values = field.postgres_binary_block([row[field.name] for _, row in rows])
            if values is None:
                return None
        elif kind in _FIXED:
            raw = [row[field.name] for _, row in rows]
            if any(value is None for value in raw):
                return None
            values = np.array([field.db_value(value) for value in raw], dtype=_FIXED[kind])
        else:
            return None
        layout += [(f"length{i}", ">i4"), (f"value{i}", values.dtype)]
        columns[i] = values
    packed = np.empty(len(rows), dtype=layout)
    packed["count"] = len(fields)
    for i, values in columns.items():
        packed[f"length{i}"] = values.dtype.itemsize
        packed[f"value{i}"] = values
    return packed.tobytes()


def _copy(db, model, fields, kinds, rows) -> None:
    """``rows`` into ``model``'s table with one ``COPY ... FROM STDIN (FORMAT binary)``."""
    encoders = [_encoder(kind, field) for kind, field in zip(kinds, fields)]
    count = struct.pack(">h", len(fields))
    null = struct.pack(">i", -1)
    length = struct.Struct(">i").pack
    buffer = io.BytesIO()
    buffer.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0))
    packed = _packed(fields, kinds, rows)
    for pk, row in rows if packed is None else ():
        parts = [count]
        for field, encode in zip(fields, encoders):
            value = pk if field.name == "task" else row[field.name]
            if value is not None and not hasattr(field, "postgres_binary"):
                value = field.db_value(value)
            if value is None:
                parts.append(null)
            else:
                data = encode(value)
                parts += (length(len(data)), data)
        buffer.write(b"".join(parts))
    if packed is not None:
        buffer.write(packed)
    buffer.write(struct.pack(">h", -1))
    buffer.seek(0)
    names = ", ".join(f'"{field.column_name}"' for field in fields)
    db.cursor().copy_expert(f"COPY {table_name(model)} ({names}) FROM STDIN WITH (FORMAT binary)", buffer)


def read(model: type[peewee.Model], hashes: Iterable[str]) -> dict[str, list[peewee.Model]]:
    """The output rows of each done task among ``hashes``, in the order they were inserted."""
    ready(model)
    found: dict[str, list[peewee.Model]] = {}
    for chunk in chunked(list(dict.fromkeys(hashes))):
        query = (
            model.select(model, Task.pk, Task.task_hash)
            .join(Task, on=(model.task == Task.pk))
            .where(Task.task_hash.in_(chunk), Task.status == DONE)
            .order_by(model.pk)
        )
        for row in query:
            found.setdefault(row.task.task_hash, []).append(row)
    return found


def done_tasks(
    name: str,
    module: str | None,
    parameters: Sequence[tuple[str, str]],
    version: str | None,
    hashes: Sequence[str] | None = None,
) -> peewee.ModelSelect:
    """The pks of done tasks named ``name`` (from ``module``) with these (name, canonical value) parameters,
    of ``version`` and among ``hashes`` where given.
    """
    db = database()
    query = Task.select(Task.pk).where(Task.task_name == name, Task.status == DONE)
    if hashes is not None:
        hashes = list(dict.fromkeys(hashes))
        # One array parameter on PostgreSQL; SQLite takes up to 32766 values in a list.
        if is_postgres(db):
            query = query.where(peewee.NodeList((Task.task_hash, peewee.SQL("= ANY(%s)", (hashes,)))))
        else:
            query = query.where(Task.task_hash.in_(hashes))
    if module:
        query = query.where(Task.task_module == module)
    if version is not None:
        query = query.where(Task.version == version)
    for key, value in parameters:
        given = (
            TaskParameter.select(TaskParameter.task)
            .join(Parameter)
            .where(Parameter.parameter_hash == parameter_hash(key, value))
        )
        query = query.where(Task.pk.in_(given))
    return query


def task_column(model: type[peewee.Model], wanted: str) -> str:
    """The attribute that task column ``wanted`` has in :func:`select_rows`: ``task_`` first if ``model`` has it."""
    return f"task_{wanted}" if wanted in model._meta.fields or wanted == "task_pk" else wanted


def select_rows(model: type[peewee.Model], tasks: peewee.ModelSelect, parameters: Sequence[str]) -> peewee.ModelSelect:
    """Rows of ``model`` made by ``tasks`` (a query of task pks), with each task's parameters (recorded text),
    version and completion time as attributes; a name an output field already has gets a ``task_`` prefix.
    """
    ready(model)

    def name(wanted: str) -> str:
        return task_column(model, wanted)

    columns = [Task.version.alias(name("version")), Task.completed.alias(name("completed"))]
    query = model.select(model, *columns).join(Task, on=(model.task == Task.pk))
    for i, parameter in enumerate(parameters):
        values = (
            TaskParameter.select(TaskParameter.task.alias("task_pk"), Parameter.parameter_value)
            .join(Parameter)
            .where(Parameter.parameter_name == parameter)
            .alias(f"p{i}")
        )
        query = query.join_from(Task, values, JOIN.LEFT_OUTER, on=(values.c.task_pk == Task.pk))
        query = query.select_extend(values.c.parameter_value.alias(name(parameter)))
    return query.where(model.task.in_(tasks)).order_by(model.pk).objects()
