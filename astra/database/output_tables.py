"""The tables of ``astra.OutputModel`` subclasses: created, checked, filled in bulk and read.

On SQLite an output table is created the first time a process uses it. On PostgreSQL tables are made by whoever
owns the schema (``astra db init --module MODULE``, or the DDL of ``astra db sql --module MODULE`` through psql), so
a missing one stops the process with one line naming that command.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from contextlib import contextmanager

import peewee
from peewee import JOIN

from astra.database import output_schema
from astra.database.connection import DatabaseNotReady, ReadOnlyDatabaseError, database, describe
from astra.database.dialect import POSTGRESQL, dialect
from astra.database.models import Parameter, Task, TaskParameter
from astra.database.queries import DONE, chunked
from astra.identity import parameter_hash

#: The output models known to be usable, per open database (a forked child shares its parent's knowledge).
_ready: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def table_name(model: type[peewee.Model]) -> str:
    """``model``'s table as a user names it: ``astra.name`` on PostgreSQL, ``name`` on SQLite."""
    return dialect(database()).table(model)


def ready(model: type[peewee.Model]) -> None:
    """Make sure ``model``'s table can be used, once per process: stop (one line naming the command that fixes it)
    if it does not fit the model (see :mod:`astra.database.output_schema`). A missing table that no task wrote to
    is created on SQLite; on PostgreSQL the process stops."""
    db = database()
    known = _ready.setdefault(db, set())
    if model in known:
        return
    trouble = _own_columns_taken(model) or output_schema.problem(model)
    if trouble is not None:
        raise DatabaseNotReady(trouble)
    if not db.table_exists(model._meta.table_name, schema=dialect(db).schema):
        if not dialect(db).creates_tables_on_use:  # whoever owns the schema makes the table
            module = output_schema.module_to_name(model)
            raise DatabaseNotReady(
                f"astra: {describe()} has no output table {table_name(model)} for {model.__name__}; create it with "
                f"`astra db init --module {module}` (or `astra db sql --module {module} | psql`)"
            )
        db.create_tables([model], safe=True)
    if dialect(db).creates_tables_on_use:  # a table made by an earlier release, or rebuilt by a migration
        try:
            dialect(db).add_rows_trigger(db, model._meta.table_name)
        except ReadOnlyDatabaseError:
            pass  # a command that only reads, on a file it may not write: the next process that records adds it
    known.add(model)


def ready_without_model(cls: type) -> None:
    """Stop, once per process and database, if task class ``cls``, which declares no output model, had one when its
    done tasks of this version ran (see :func:`astra.database.output_schema.lost_model`)."""
    db = database()
    known = _ready.setdefault(db, set())
    if cls in known:
        return
    trouble = output_schema.lost_model(cls)
    if trouble is not None:
        raise DatabaseNotReady(trouble)
    known.add(cls)


def _own_columns_taken(model: type[peewee.Model]) -> str | None:
    """The line that stops a process whose ``model`` takes the place of astra's own columns (``pk``, and ``task``
    in column ``task_pk``, which links each row to its task); None if it leaves them be."""
    fields = model._meta.fields
    task, pk = fields.get("task"), fields.get("pk")
    taken = [
        field.name
        for field in fields.values()
        if field.column_name in ("pk", "task_pk") and field is not task and field is not pk  # not ==: peewee's SQL
    ]
    if not isinstance(pk, peewee.BigAutoField) or pk.column_name != "pk":
        taken.append("pk")
    if not (isinstance(task, peewee.ForeignKeyField) and task.rel_model is Task and task.column_name == "task_pk"):
        taken.append("task")
    if not taken:
        return None
    return (
        f"astra: output model {model.__module__}.{model.__name__} has a field {taken[0]!r} in the place of astra's "
        "own columns (pk, and task_pk: the task that made each row); give it another name"
    )


def check_own_columns(models: Iterable[type[peewee.Model]]) -> None:
    """Stop (one line) if any of ``models`` has a field in the place of astra's own columns."""
    for model in models:
        trouble = _own_columns_taken(model)
        if trouble is not None:
            raise DatabaseNotReady(trouble)


def forget_checked() -> None:
    """Check every output table again before its next use (after a migration)."""
    _ready.pop(database(), None)


def create(models: Sequence[type[peewee.Model]]) -> None:
    """Create the tables of ``models`` where they are missing (never drops data). The astra schema must exist."""
    check_own_columns(models)
    db = database()
    with db.atomic():
        db.create_tables(list(models), safe=True)
        for model in models:
            dialect(db).add_rows_trigger(db, model._meta.table_name)
    _ready.setdefault(db, set()).update(models)


@contextmanager
def _postgres_dialect(models: Sequence[type[peewee.Model]]):
    """Render ``models`` (and the task table they refer to) as PostgreSQL's, without connecting anywhere."""
    everything = [Task, *models]
    with POSTGRESQL.offline().bind_ctx(everything, bind_refs=False, bind_backrefs=False):
        yield  # the models' schema follows the database they are bound to (dialect.SchemaFromDialect)


def ddl(models: Sequence[type[peewee.Model]]) -> list[str]:
    """The PostgreSQL statements that create the tables of ``models`` in the astra schema (idempotent)."""
    check_own_columns(models)
    statements = []
    with _postgres_dialect(models):
        for model in models:
            for context in [model._schema._create_table(safe=True), *model._schema._create_indexes(safe=True)]:
                sql, params = context.query()
                if params:
                    raise ValueError(f"{model.__name__}: cannot write DDL with parameters ({params!r})")
                statements.append(sql + ";")
            trigger = [f"{statement};" for statement in POSTGRESQL.rows_trigger(model._meta.table_name)]
            statements += [statement for statement in trigger if statement not in statements]  # its function once
    return statements


def _columns(model: type[peewee.Model]) -> list[peewee.Field]:
    return [field for name, field in model._meta.fields.items() if name != "pk"]


def delete_rows(model: type[peewee.Model], task_pks: Iterable[int]) -> None:
    """Delete every row of the tasks ``task_pks`` (those of an earlier run), in the caller's transaction.

    A task's rows are those of its last successful run, and only those: whatever records a task again calls this
    in the transaction that inserts the new rows.
    """
    task_pks = list(dict.fromkeys(task_pks))
    if not task_pks:
        return
    ready(model)
    db = database()
    with dialect(db).rewriting(db):  # astra's own delete: the tasks are not reopened (see dialect.rows_trigger)
        for chunk in chunked(task_pks):
            where, params = dialect(db).is_one_of("task_pk", chunk)
            db.execute_sql(f"DELETE FROM {dialect(db).table(model)} WHERE {where}", params)


def insert(model: type[peewee.Model], rows: Sequence[tuple[int, dict]], checked: bool = False) -> None:
    """Insert ``rows`` (task pk, {field name: value}) into ``model``'s table with one statement per chunk.

    Call inside the transaction that records the tasks as done. On PostgreSQL the rows travel as one array per
    column, unpacked by unnest(); SQLite runs in this process, where executemany costs no round trips.
    ``checked``: the caller knows the table fits (a migration making it fit), so :func:`ready` is not asked.
    """
    if not rows:
        return
    if not checked:
        ready(model)
    db = database()
    fields = _columns(model)
    names = ", ".join(f'"{field.column_name}"' for field in fields)
    dialect(db).insert_rows(db, model, fields, names, rows)


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
        query = dialect(db).where_one_of(query, Task.task_hash, hashes)
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


def count_rows(model: type[peewee.Model], tasks: peewee.ModelSelect) -> int:
    """How many rows of ``model`` the tasks ``tasks`` (a query of task pks) made."""
    ready(model)
    return model.select().where(model.task.in_(tasks)).count()


def task_columns(parameters: Sequence[str], taken: Iterable[str] = ()) -> dict[str, tuple[str, str | None]]:
    """The names of the task columns beside the columns ``taken`` (output fields, result keys), each with what it
    holds: ``("task_pk" | "version" | "completed", None)`` or ``("parameter", its name)``.

    In that order, the task's pk, its parameters, version and completion time: each keeps its name unless a field
    or an earlier column has it, and then gets ``task_`` before it, as often as it takes (a parameter named
    ``completed`` keeps the name, and the completion time is ``task_completed``).
    """
    used = set(taken)
    columns = {}
    for kind, parameter in [("task_pk", None), *(("parameter", p) for p in parameters), ("version", None),
                            ("completed", None)]:  # fmt: skip
        name = parameter or kind
        while name in used:
            name = f"task_{name}"
        used.add(name)
        columns[name] = (kind, parameter)
    return columns


def select_rows(model: type[peewee.Model], tasks: peewee.ModelSelect, parameters: Sequence[str]) -> peewee.ModelSelect:
    """Rows of ``model`` made by ``tasks`` (a query of task pks), with each task's parameters (recorded text),
    version and completion time as attributes, named by :func:`task_columns` (a name an output field already has
    gets a ``task_`` prefix).
    """
    ready(model)
    names = {what: name for name, what in task_columns(parameters, model._meta.fields).items()}
    columns = [Task.version.alias(names["version", None]), Task.completed.alias(names["completed", None])]
    query = model.select(model, *columns).join(Task, on=(model.task == Task.pk))
    for i, parameter in enumerate(parameters):
        values = (
            TaskParameter.select(TaskParameter.task.alias("task_pk"), Parameter.parameter_value)
            .join(Parameter)
            .where(Parameter.parameter_name == parameter)
            .alias(f"p{i}")
        )
        query = query.join_from(Task, values, JOIN.LEFT_OUTER, on=(values.c.task_pk == Task.pk))
        query = query.select_extend(values.c.parameter_value.alias(names["parameter", parameter]))
    return query.where(model.task.in_(tasks)).order_by(model.pk).objects()


#: Fields whose values come from the driver as Python wants them: read without peewee's conversion, which costs
#: more than the query itself at a million rows.
_PLAIN = {
    peewee.FloatField,
    peewee.DoubleField,
    peewee.SmallIntegerField,
    peewee.IntegerField,
    peewee.BigIntegerField,
    peewee.TextField,
    peewee.CharField,
}


def columns_of(
    model: type[peewee.Model], tasks: Sequence[int], fields: Sequence[str]
) -> tuple[list[int], dict[str, list]]:
    """The task pk of each row of ``model`` made by ``tasks`` (task pks), in the order of the tasks and then of the
    rows, and the values of ``fields`` in those rows: only the columns asked for, without a join. A chunk of tasks
    per statement, each task's rows found by a probe of the index on task_pk (see
    :meth:`astra.database.dialect.SQLite.rows_by_key`), whatever the planner knows of the table.
    """
    ready(model)
    db = database()
    chosen = [model._meta.fields[name] for name in fields]
    readers = [dialect(db).reader(field, f'"{field.column_name}"') for field in chosen]
    table = dialect(db).table(model)
    pks: list[int] = []
    values: dict[str, list] = {field.name: [] for field in chosen}
    for chunk in chunked(sorted(tasks)):
        rows = dialect(db).rows_by_key(db, table, "task_pk", [sql for sql, _ in readers] or ["pk"], chunk)
        columns = list(zip(*rows)) if rows else [()] * (1 + len(chosen))
        pks += columns[0]
        for field, (_, convert), column in zip(chosen, readers, columns[1:]):
            plain = type(field) in _PLAIN and convert == field.python_value
            if plain:
                values[field.name] += column
            elif convert == getattr(field, "from_postgres_binary", None):  # a chunk of arrays, by numpy at once
                values[field.name] += field.many_from_postgres_binary(column)
            else:
                values[field.name] += [convert(v) for v in column]
    return pks, values


def first_rows(model: type[peewee.Model], task_pk: int, limit: int) -> tuple[list[peewee.Model], int]:
    """The first ``limit`` rows the task ``task_pk`` made in ``model``'s table, and how many it made."""
    ready(model)
    rows = model.select().where(model.task == task_pk).order_by(model.pk)
    return list(rows.limit(limit)), rows.count()
