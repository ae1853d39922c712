"""How an output table differs from its model, and the migration that makes it fit (``astra db migrate``).

Output models change between releases of a pipeline: a column more, a wider type, a new table name, an output table
for a task that had a JSON result. :func:`changes` compares a model with its table and with the records of the tasks
that use it; :func:`astra.database.output_tables.ready` stops a process whose tables do not fit (before any task
computes), and :func:`migrate` makes them fit, all in one transaction:

- missing tables are created and missing columns added (nullable, or with a default), keeping every row;
- a type is widened where no value changes (``real[]`` -> ``double precision[]``, ``integer`` -> ``bigint``; on
  SQLite, whose array columns are BLOBs whatever the dtype, float32 -> float64 arrays are rewritten);
- the table that holds the rows of the model's tasks is renamed to the model's new ``table_name``;
- a column the model no longer has may be null from then on (its values stay);
- the JSON result of a done task recorded before its class had this output model becomes its rows where it fits the
  model (every key a field, the required ones given); a task whose result does not fit, or whose rows are gone with
  a dropped table, is reopened, so that luigi runs it again.

What would lose or reinterpret values (dropping a column, narrowing or changing a type) is refused, saying what to
do, unless the caller allows it (``--allow-data-loss``): then columns are dropped and values cast.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import peewee
from luigi.task_register import Register, TaskClassException

from astra.database.connection import database, describe
from astra.database.dialect import dialect
from astra.database.models import CLASS_NAME, JSON_RESULTS, MODELS, Task
from astra.database.queries import chunked
from astra.database.status import DONE, FAILED
from astra.identity import class_version


def module_to_name(model: type) -> str:
    """The module to give ``astra db ... --module`` for ``model``'s table: its own, or for a model of a script run as
    ``__main__`` (which the astra command cannot import by that name: its own __main__ is astra's), the script's
    module name. Its table is the same whichever module defines the model."""
    if model.__module__ in ("__main__", "__mp_main__"):
        path = getattr(sys.modules.get(model.__module__), "__file__", None)
        if path:
            return os.path.splitext(os.path.basename(path))[0]
    return model.__module__


#: Type changes that keep every value, as the dialect names types (arrays: the same with ``[]``).
WIDER = {
    ("smallint", "integer"),
    ("smallint", "bigint"),
    ("integer", "bigint"),
    ("smallint", "real"),
    ("smallint", "double precision"),
    ("integer", "double precision"),
    ("real", "double precision"),
}
WIDER |= {(f"{a}[]", f"{b}[]") for a, b in WIDER}

#: Turns rows a task returned into checked rows of a model (astra.outputs.rows), for carrying JSON results over.
RowsOf = Callable[[type[peewee.Model], object, str], list[dict]]
#: How rows (task pk, row) are written into an output table: ``output_tables.insert``, which imports this module.
Write = Callable[[type[peewee.Model], list[tuple[int, dict]]], None]


def run_operations(*operations: object) -> None:
    """Run playhouse.migrate operations (imported here: only a migration needs it)."""
    from playhouse.migrate import migrate

    migrate(*operations)


class MigrationRefusedError(ValueError):
    """The migration would lose or reinterpret values, or cannot be done without the user's decision."""


@dataclass(frozen=True)
class Change:
    """One way an output table does not fit its model, and what migrating does about it."""

    #: What differs, e.g. ``column logg is missing``.
    what: str
    #: Makes the table fit (given the database); None where only the user can decide (``refusal`` says what to do).
    apply: Callable[[peewee.Database], None] | None
    #: Done only when the user allows values to be lost or reinterpreted.
    lossy: bool = False
    #: Whether a process must stop until it is done (a column the model no longer has, left null, need not).
    stops: bool = True
    #: What the user should do when the change is not made.
    refusal: str = ""


def owners(model: type[peewee.Model]) -> list[tuple[str, str]]:
    """(module, task name) of every task class luigi knows whose ``output_model`` is ``model``."""
    found = []
    for name in Register.task_names():
        try:
            cls = Register.get_task_cls(name)
        except TaskClassException:  # two classes of one name: luigi refuses to run either
            continue
        if getattr(cls, "output_model", None) is model:
            found.append((cls.__module__, cls.get_task_family()))
    return found


def _of(owned: Sequence[tuple[str, str]], current: bool = False) -> peewee.Expression:
    """Tasks of the classes ``owned`` ((module, name) pairs); ``current``: only those of the version each class
    declares (all of a class whose tasks work theirs out). A task of another version may have written another
    model's table: a class given a new output model with a new version leaves its old rows where they are."""
    versions = {(module, name): version for module, name, version in _versions(owned)} if current else {}
    condition = None
    for module, name in owned:
        one = (Task.task_module == module) & (Task.task_name == name)
        if (module, name) in versions:
            one &= Task.version == versions[module, name]
        condition = one if condition is None else condition | one
    return condition if condition is not None else peewee.SQL("1 = 0")


def _names(owned: Sequence[tuple[str, str]]) -> str:
    return ", ".join(name for _, name in owned)


def changes(
    model: type[peewee.Model],
    owned: Sequence[tuple[str, str]] | None = None,
    rows_of: RowsOf | None = None,
    write: Write | None = None,
) -> list[Change]:
    """How ``model``'s table differs from the model, and from the records of its tasks (``owned``, by default the
    task classes luigi knows that use it). Empty when the table fits. ``rows_of`` checks the rows that JSON results
    become (needed only to apply the changes)."""
    db = database()
    table = model._meta.table_name
    owned = owners(model) if owned is None else owned
    done = Task.select(Task.pk).where(_of(owned, current=True), Task.status == DONE)
    carry = []  # of every version: a probe of one partial index, which is empty once they are carried
    json_results = Task.select(Task.pk).where(CLASS_NAME.in_([f"{m}.{n}" for m, n in owned]), JSON_RESULTS)
    if json_results.exists():  # one probe of the partial index task_json_result
        carry.append(
            Change(
                f"done {_names(owned)} tasks were recorded before it had this output table (their results are "
                "JSON): their results become its rows where they fit it, the others run again",
                lambda db: _carry(db, model, owned, rows_of, write, rowless=False),
            )
        )
    if db.table_exists(table, schema=dialect(db).schema):
        behind = _left_behind(db, model, owned, table)
        if behind is not None:
            return behind
        found = [*_columns(db, model, table), *_indexes(db, model, table), *_trigger(db, table)]
        return found + _shapes(db, model, owned) + carry
    if not done.exists():
        return [Change(f"table {table} is missing", lambda db: _create(db, model), stops=False), *carry]
    holders = _holders(db, model, owned)
    if len(holders) > 1:
        return [
            Change(
                f"table {table} is missing and tables {', '.join(holders)} hold rows of {_names(owned)}",
                None,
                refusal=f"rename the one that holds {model.__name__}'s rows to {table} (ALTER TABLE ... RENAME TO)",
            )
        ]
    if holders:
        (old,) = holders
        rename = Change(
            f"table {table} is missing and {old} holds the rows of {_names(owned)}: {old} is renamed {table}",
            lambda db: run_operations(dialect(db).migrator(db).rename_table(old, table)),
        )
        return [rename, *_columns(db, model, old, table), *_indexes(db, model, old), *_trigger(db, old, table)]
    return [
        Change(f"table {table} is missing", lambda db: _create(db, model)),
        Change(
            f"done {_names(owned)} tasks have no rows in it: their JSON results become rows where they fit, the "
            "others run again",
            lambda db: _carry(db, model, owned, rows_of, write, rowless=True),
        ),
    ]


def _columns(db: peewee.Database, model: type[peewee.Model], table: str, target: str | None = None) -> list[Change]:
    """How the columns of ``table`` differ from ``model``'s fields; the changes apply to ``target`` (the table's
    name once renamed)."""
    target = target or table
    language = dialect(db)
    have = language.column_types(db, table)
    columns = {field.column_name for field in model._meta.sorted_fields}
    # A column the model lost beside one it gained may be one renamed: its values would stay behind, unless renamed.
    lost = [column for column in have if column not in columns]
    named = f"{language.schema}.{table}" if language.schema else table  # as psql would find it
    renamed = (
        f" (if it is {' or '.join(lost)} renamed, rename that column first: ALTER TABLE {named} RENAME COLUMN ...)"
        if lost
        else ""
    )
    found = []
    for field in model._meta.sorted_fields:
        column = field.column_name
        declared = language.declared_type(db, field)
        if column not in have:
            if not field.null and field.default is None:
                found.append(
                    Change(
                        f"column {column} is missing",
                        None,
                        refusal=f"the rows it holds need a value: declare {model.__name__}.{field.name} with "
                        f"null=True or a default{renamed}",
                    )
                )
            else:
                found.append(Change(f"column {column} is missing{renamed}", _add(target, field)))
            continue
        kind, not_null = have[column]
        if kind != declared:
            exact = language.holds_exactly(db, table, column, kind, declared)
            found.append(_retype(model, target, field, kind, declared, exact))
        elif hasattr(field, "dtype"):  # an astra.ArrayField, whose dtype the column type may not say (SQLite)
            stored = language.stored_dtype(db, table, column)
            if stored is not None and stored != field.dtype:
                import numpy as np  # only where an array column is compared

                lossless = np.can_cast(stored, field.dtype, casting="safe")
                found.append(
                    Change(
                        f"column {column} holds {stored} arrays, the model says {field.dtype}",
                        _rewrite(model, target, field, stored, checked=not lossless),
                        lossy=not lossless,
                        refusal="" if lossless else "their values would change",
                    )
                )
        if not_null and field.null:
            found.append(Change(f"column {column} may not be null, the model says it may", _nullable(target, column)))
    for column, (_, not_null) in have.items():
        if column in columns:
            continue
        drop = Change(
            f"column {column} is not in the model",
            lambda db, column=column: run_operations(dialect(db).migrator(db).drop_column(target, column)),
            lossy=True,
            stops=False,
            refusal="its values would go",
        )
        found.append(drop)
        if not_null:  # new rows could not be inserted without a value for it
            found.append(Change(f"column {column} is not in the model and may not be null", _nullable(target, column)))
    return found


#: The newest rows of an output table whose arrays :func:`_shapes` looks at.
SAMPLED = 50


def _shapes(db: peewee.Database, model: type[peewee.Model], owned: Sequence[tuple[str, str]]) -> list[Change]:
    """The array fields whose declared shape the newest rows of done tasks of their class's current version do not
    have: the shape changed in the model with the task's version left as it was, and luigi would count those tasks
    done, their rows of the old shape beside new ones. Rows of other versions rightly keep the shape they were made
    with. A few of the newest rows are looked at (by the output table's pk, only the arrays' shapes): a bounded
    cost at every start, whatever the tables hold; and the rows of the first done tasks of each class.
    """
    shaped = [field for field in model._meta.sorted_fields if getattr(field, "shape", None) is not None]
    current = {(module, name): version for module, name, version in _versions(owned)} if shaped else {}
    if not current:
        return []
    # A model several classes share (a subclass's tasks, say): the newest rows may all be one class's, so each
    # class's first done tasks (the first entries of the task name's index: bounded) are looked at too.
    firsts = []
    for (module, name), version in current.items():
        first = Task.select(Task.pk, Task.task_module, Task.version).where(Task.task_name == name, Task.status == DONE)
        firsts.append([pk for pk, of, at in first.limit(SAMPLED).tuples() if (of, at) == (module, version)])
    found = []
    for field in shaped:
        table, column = model._meta.table_name, field.column_name
        newest = dialect(db).newest_shapes(db, table, column, SAMPLED)
        for pks in filter(None, firsts):
            newest += dialect(db).newest_shapes(db, table, column, SAMPLED, tasks=pks)
        tasks = Task.select(Task.pk, Task.task_module, Task.task_name, Task.version).where(
            Task.pk.in_(sorted({pk for pk, shape in newest if shape is not None})), Task.status == DONE
        )
        made_by = {pk: (module, name, version) for pk, module, name, version in tasks.tuples()}
        for task_pk, shape in newest:
            module, name, version = made_by.get(task_pk, (None, None, None))
            expected = current.get((module, name))
            if shape is None or expected is None or version != expected or field.takes_shape(shape):
                continue
            found.append(
                Change(
                    f"column {field.column_name} holds arrays of shape {shape} in the rows of done {name} tasks of "
                    f"version {version!r}, the model declares {field.shape_as_written}",
                    None,
                    refusal=f"bump {name}.version to run those tasks again (their rows stay, as the old version's), "
                    "or declare the shape they have",
                )
            )
            break
    return found


def _versions(owned: Sequence[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(module, name, version) of the classes ``owned`` whose tasks all have their class's version."""
    found = []
    for module, name in owned:
        version = class_version(Register.get_task_cls(name))
        if version is not None:
            found.append((module, name, version))
    return found


def _indexes(db: peewee.Database, model: type[peewee.Model], table: str) -> list[Change]:
    """The indexes ``model`` declares (``unique=True``, ``index=True``, ``Meta.indexes``) that ``table`` lacks.

    A table made before its model said ``unique=True`` takes rows the model forbids, where a new one refuses them:
    migrating adds the index, unless rows already break it (only the user can say which to keep). Indexes on
    expressions, and partial ones, are not compared.
    """
    language = dialect(db)
    have = {index.name: (tuple(index.columns), index.unique) for index in db.get_indexes(table, schema=language.schema)}
    found = []
    for index in model._meta.fields_to_index():
        columns = tuple(getattr(part, "column_name", None) for part in index._expressions)
        if None in columns or index._where is not None:
            continue
        if any(cols == columns and (unique or not index._unique) for cols, unique in have.values()):
            continue
        what = f"{'a unique index' if index._unique else 'an index'} on {', '.join(columns)} is missing"
        shared = _sharing(db, table, columns) if index._unique else 0
        if shared:
            fields = ", ".join(f"{model.__name__}.{model._meta.columns[column].name}" for column in columns)
            refusal = (
                f"{shared:,} rows share their values with another row: delete the extra rows, or declare {fields} "
                "without unique=True"
            )
            found.append(Change(what, None, refusal=refusal))
            continue
        found.append(Change(what, _index(model, index, replaces=index._name in have), stops=index._unique))
    return found


def _left_behind(
    db: peewee.Database, model: type[peewee.Model], owned: Sequence[tuple[str, str]], table: str
) -> list[Change] | None:
    """What to do when the rows of ``owned``'s done tasks are in another table than ``table``, ``model``'s, which
    exists too; None when they are not. Its ``table_name`` was changed to a table made meanwhile (empty: by hand, or
    by ``astra db sql | psql`` of the new release), or to another model's: the old rows stayed where they were, and
    the tasks would count as done without them. An empty ``table`` gives way to the old one; a table with rows of
    its own, only the user can merge.

    Asked of one task, the first of its class's version the index gives (the oldest, mostly) among the first
    :data:`SAMPLED`: a few index probes, no look at every row.
    """
    language = dialect(db)
    # The first of the first done tasks that are of their class's version now (a bounded look, as _shapes takes):
    # those of an older version may rightly have their rows in another model's table.
    firsts = Task.select(Task.pk, Task.task_module, Task.task_name, Task.version).where(
        _of(owned), Task.status == DONE, Task.result.is_null()
    )
    current = {(module, name): version for module, name, version in _versions(owned)}
    first = next(
        (pk for pk, *of, at in firsts.limit(SAMPLED).tuples() if current.get(tuple(of), at) == at),
        None,
    )
    if first is None or _holds(db, table, first):
        return None
    own = {m._meta.table_name for m in MODELS} | {table}
    for old in db.get_tables(schema=language.schema):
        if old in own or "task_pk" not in language.column_types(db, old) or not _holds(db, old, first):
            continue
        what = f"table {table} exists, but {old} holds the rows of {_names(owned)}"
        if _holds(db, table, None):
            refusal = f"move them into {table} (INSERT INTO ... SELECT), or give {model.__name__} back table_name {old}"
            return [Change(what, None, refusal=refusal)]
        replace = Change(f"{what}: the empty {table} is dropped and {old} renamed {table}", _replace(model, old))
        return [replace, *_columns(db, model, old, table), *_indexes(db, model, old), *_trigger(db, old, table)]
    return None  # in no table: it made no rows


def _replace(model: type[peewee.Model], old: str) -> Callable[[peewee.Database], None]:
    """Drop ``model``'s (empty) table and give its name to ``old``."""

    def apply(db: peewee.Database) -> None:
        model.drop_table(safe=False)
        run_operations(dialect(db).migrator(db).rename_table(old, model._meta.table_name))

    return apply


def _holds(db: peewee.Database, table: str, task_pk: int | None) -> bool:
    """Whether ``table`` holds a row of the task ``task_pk`` (a probe of its task_pk index); of any task: None."""
    rows = peewee.Table(table, ["task_pk"], schema=dialect(db).schema)
    query = rows.select(peewee.SQL("1")).limit(1)
    if task_pk is not None:
        query = query.where(rows.task_pk == task_pk)
    return query.bind(db).scalar() is not None


def _trigger(db: peewee.Database, table: str, target: str | None = None) -> list[Change]:
    """The trigger that reopens a task whose rows are deleted outside astra, if ``table`` lacks it (made by an
    earlier release); it goes on ``target`` (the table's name once renamed). Without it such a task stays done, as
    it did before: luigi need not stop."""
    if dialect(db).has_rows_trigger(db, table):
        return []
    what = "the trigger that reopens a task whose rows are deleted outside astra is missing"
    return [Change(what, lambda db: dialect(db).add_rows_trigger(db, target or table), stops=False)]


def _create(db: peewee.Database, model: type[peewee.Model]) -> None:
    db.create_tables([model])
    dialect(db).add_rows_trigger(db, model._meta.table_name)


def _sharing(db: peewee.Database, table: str, columns: Sequence[str]) -> int:
    """How many rows of ``table`` share their values of ``columns`` (none of them null) with another row."""
    rows = peewee.Table(table, schema=dialect(db).schema)
    keys = [getattr(rows.c, column) for column in columns]
    count = peewee.fn.COUNT(peewee.SQL("*"))
    known = [key.is_null(False) for key in keys]  # a unique index takes any number of rows with a null
    groups = rows.select(count.alias("n")).where(*known).group_by(*keys).having(count > 1)
    return db.execute(groups.select_from(peewee.fn.COALESCE(peewee.fn.SUM(groups.c.n), 0))).fetchone()[0]


def _index(model: type[peewee.Model], index: peewee.ModelIndex, replaces: bool) -> Callable[[peewee.Database], None]:
    """Create ``index``; first drop the index of its name that the table has (``replaces``), not unique or on other
    columns."""

    def apply(db: peewee.Database) -> None:
        if replaces:
            run_operations(dialect(db).migrator(db).drop_index(model._meta.table_name, index._name))
        db.execute(model._schema._create_index(index, safe=False))

    return apply


def _add(table: str, field: peewee.Field) -> Callable[[peewee.Database], None]:
    return lambda db: run_operations(dialect(db).migrator(db).add_column(table, field.column_name, field))


def _nullable(table: str, column: str) -> Callable[[peewee.Database], None]:
    return lambda db: run_operations(dialect(db).migrator(db).drop_not_null(table, column))


def _retype(
    model: type[peewee.Model], table: str, field: peewee.Field, kind: str, declared: str, exact: bool = False
) -> Change:
    """``exact``: the column's values all keep their value in the new type, though the types alone do not say so."""
    lossless = exact or (kind, declared) in WIDER or (kind.startswith("character varying") and declared == "text")

    def apply(db: peewee.Database) -> None:
        if not lossless:
            _refuse_unfit(db, model, table, field, kind)
        run_operations(dialect(db).type_change(dialect(db).migrator(db), table, field, declared))

    return Change(
        f"column {field.column_name} is {kind}, the model says {declared}",
        apply,
        lossy=not lossless,
        refusal="" if lossless else "its values would be cast",
    )


def _rewrite(
    model: type[peewee.Model], table: str, field: peewee.Field, stored: object, checked: bool
) -> Callable[[peewee.Database], None]:
    """Store the arrays of ``field``'s column as its dtype (SQLite, which keeps each array's dtype in its bytes);
    first, where values may not fit (``checked``), refuse if one does not."""

    def apply(db: peewee.Database) -> None:
        if checked:
            _refuse_unfit(db, model, table, field, str(stored))
        dialect(db).rewrite_arrays(db, table, field.column_name, field.dtype)

    return apply


def _refuse_unfit(db: peewee.Database, model: type[peewee.Model], table: str, field: peewee.Field, kind: str) -> None:
    """Refuse (MigrationRefusedError) to cast ``field``'s column, of type ``kind`` now, if a value of it is one the
    type ``field`` declares cannot hold (NaN made an integer, a double beyond float32's range...): cast, it would
    become another value, or PostgreSQL would stop the migration without saying where."""
    found = dialect(db).unfit(db, table, field, kind)
    if found is None:
        return
    task_pk, value = found
    held = f"an astra.ArrayField('{field.dtype}')" if hasattr(field, "dtype") else f"a peewee.{type(field).__name__}"
    raise MigrationRefusedError(
        f"cannot migrate {table}: column {field.column_name} holds {value!r} (in a row of task {task_pk}), which "
        f"{held} cannot hold; fix or delete the rows that hold such values, or declare {model.__name__}.{field.name} "
        "with a type that holds them"
    )


def _holders(db: peewee.Database, model: type[peewee.Model], owned: Sequence[tuple[str, str]]) -> list[str]:
    """The tables (other than astra's own) that hold rows of tasks of ``owned``: where a renamed model's rows are."""
    language = dialect(db)
    own = {m._meta.table_name for m in MODELS} | {model._meta.table_name}
    found = []
    for table in db.get_tables(schema=language.schema):
        if table in own or "task_pk" not in language.column_types(db, table):
            continue
        rows = peewee.Table(table, ["task_pk"], schema=language.schema)
        mine = Task.select(Task.pk).where(_of(owned, current=True))
        if rows.select(peewee.SQL("1")).where(rows.task_pk.in_(mine)).limit(1).bind(db).scalar():
            found.append(table)
    return found


def _carry(
    db: peewee.Database,
    model: type[peewee.Model],
    owned: Sequence[tuple[str, str]],
    rows_of: RowsOf | None,
    write: Write | None,
    rowless: bool,
) -> None:
    """Make rows of the JSON results of the done tasks of ``owned`` where they fit ``model``; reopen the others
    (and with ``rowless``, done tasks of their class's version without a result, whose rows went with their table:
    those of another version may have written another model's table)."""
    current = {(module, name): version for module, name, version in _versions(owned)}
    last = 0
    while True:
        query = (
            Task.select(Task.pk, Task.task_module, Task.task_name, Task.version, Task.result)
            .where(_of(owned), Task.status == DONE, Task.pk > last)
            .order_by(Task.pk)
            .limit(5000)
        )
        if not rowless:
            query = query.where(Task.result.is_null(False))
        tasks = list(query)
        if not tasks:
            return
        last = tasks[-1].pk
        carried, rows, reopened = [], [], {}
        for task in tasks:
            if task.result is None:
                if current.get((task.task_module, task.task_name), task.version) == task.version:
                    reopened[task.pk] = f"its rows went with the output table {model._meta.table_name}"
                continue
            try:
                made = rows_of(model, task.result, f"the result of {task.task_name} task {task.pk}")
            except (TypeError, ValueError) as exc:
                reopened[task.pk] = f"its result, recorded before it had an output table, does not fit it: {exc}"
                continue
            carried.append(task.pk)
            rows += [(task.pk, row) for row in made]
        write(model, rows)
        for chunk in chunked(carried):
            Task.update(result=None).where(Task.pk.in_(chunk)).execute()
        for pk, why in reopened.items():
            Task.update(status=FAILED, error=f"not complete any more: {why}"[:2000], traceback=None).where(
                Task.pk == pk, Task.status == DONE
            ).execute()


def problem(model: type[peewee.Model]) -> str | None:
    """The line that stops a process whose ``model`` does not fit its table; None if it fits (a missing table no
    task wrote to is the caller's: created on SQLite, asked for on PostgreSQL)."""
    found = [change for change in changes(model) if change.stops]
    if not found:
        return None
    table = dialect(database()).table(model)
    # What only the user can do, said at once, when `astra db migrate` would only refuse.
    fix = "; ".join(change.refusal for change in found if change.apply is None)
    if not all(change.apply is None for change in found):
        fix = f"run `astra db migrate --module {module_to_name(model)}` (--dry-run prints the SQL)"
    return (
        f"astra: output table {table} of {describe()} does not fit {model.__module__}.{model.__name__}: "
        f"{'; '.join(change.what for change in found)}; {fix}"
    )


def lost_model(cls: type) -> str | None:
    """The line that stops a process whose task class ``cls`` declares no output model while its first done tasks of
    its current version have rows in an output table: it had one when they ran, and its version was left as it was,
    so luigi would count them done and ``read()`` give None for them (a task that needs one would fail, or take
    None for its value). None when no such rows are found (a bounded look, as :func:`_shapes` takes)."""
    version = class_version(cls)
    if version is None:
        return None
    db = database()
    module, name = cls.__module__, cls.get_task_family()
    first = Task.select(Task.pk, Task.task_module, Task.version).where(Task.task_name == name, Task.status == DONE)
    pks = [pk for pk, of, at in first.limit(SAMPLED).tuples() if (of, at) == (module, version)]
    if not pks:
        return None
    language = dialect(db)
    own = {model._meta.table_name for model in MODELS}
    tables = sorted({table for table, column in db.execute_sql(language.columns_sql()) if column == "task_pk"} - own)
    for table in tables:
        rows = peewee.Table(table, ["task_pk"], schema=language.schema)
        if rows.select(peewee.SQL("1")).where(rows.task_pk.in_(pks)).limit(1).bind(db).scalar():
            shown = f"{language.schema}.{table}" if language.schema else table
            return (
                f"astra: done {name} tasks of version {version!r} wrote their results to output table {shown} of "
                f"{describe()}, and {module}.{cls.__name__} declares no output_model now (luigi would count them "
                f"done, their results unread); bump {name}.version to run them again (their rows stay, as the old "
                "version's), or declare its output_model again"
            )
    return None


@dataclass(frozen=True)
class Migrated:
    """What :func:`migrate` did (or, dry, would do): per model, its changes; the SQL it ran."""

    changes: dict[type[peewee.Model], list[Change]]
    statements: list[str]


def migrate(
    models: Sequence[type[peewee.Model]],
    rows_of: RowsOf,
    write: Write,
    allow_loss: bool = False,
    dry_run: bool = False,
) -> Migrated:
    """Make the tables of ``models`` fit them, in one transaction (rolled back when ``dry_run``).

    Raises :class:`MigrationRefusedError` (having changed nothing) if a change would lose or reinterpret values and
    ``allow_loss`` is not given, or needs the user's decision.
    """
    db = database()
    done: dict[type[peewee.Model], list[Change]] = {}
    statements: list[str] = []
    with dialect(db).atomic(db) as transaction:
        planned = {}
        for model in models:
            found = changes(model, rows_of=rows_of, write=write)
            if found and db.table_exists(model._meta.table_name, schema=dialect(db).schema):
                # Only a table that changes is locked (its writers wait), then looked at again: what it holds now
                # is what the changes check and change.
                dialect(db).lock_for_migrate(db, model)
                found = changes(model, rows_of=rows_of, write=write)
            planned[model] = found
        for model, found in planned.items():
            for change in found:
                table = model._meta.table_name
                if change.apply is None:
                    raise MigrationRefusedError(f"cannot migrate {table}: {change.what}; {change.refusal}")
                if change.lossy and not allow_loss and change.stops:
                    raise MigrationRefusedError(
                        f"will not migrate {table}: {change.what} ({change.refusal}); change the model back, "
                        "or run again with --allow-data-loss to do it anyway"
                    )
        with _recording(statements):
            for model, found in planned.items():
                done[model] = [change for change in found if allow_loss or not change.lossy]
                for change in done[model]:
                    change.apply(db)
                if done[model] and db.table_exists(model._meta.table_name, schema=dialect(db).schema):
                    # SQLite rebuilds a table to change a column's type or let it be null, without its trigger.
                    dialect(db).add_rows_trigger(db, model._meta.table_name)
        if dry_run:
            transaction.rollback()
    return Migrated(done, statements)


@contextmanager
def _recording(statements: list[str]) -> Iterator[None]:
    """Note the SQL peewee runs meanwhile (it logs each statement at DEBUG)."""

    class Note(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if isinstance(record.msg, tuple) and record.msg:
                statements.append(str(record.msg[0]))

    logger = logging.getLogger("peewee")
    handler, level = Note(logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
