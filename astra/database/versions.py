"""Schema versions: which astra schema a database holds, and the steps that bring an older one up to date.

Schema 1 is what astra wrote before it recorded versions (``astra.task`` with a text ``result``, no
``astra.schema_version``). Step N of :data:`STEPS` brings a database from schema N to N + 1, in a transaction of
its own, and records N + 1 in ``astra.schema_version``; ``astra db upgrade`` applies the steps a database lacks.

Adding a column to ``astra.task`` takes one line here, ``add_column(Task.new_column)`` (nullable, or with a
default), besides the column in ``models.py`` and ``schema/astradb/astradb.sql`` and the version number that file
gives a new database (tests/test_upgrade.py checks they agree).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import peewee

from astra import values
from astra.database.dialect import dialect
from astra.database.models import JSON_RESULT_INDEX, MODELS, Dependency, SchemaVersion, Task, utcnow


@dataclass(frozen=True)
class Step:
    """One change of the schema, from the version before it to the next."""

    description: str
    apply: Callable[[peewee.Database], None]
    #: What can be done before ``apply``, outside any transaction, in committed parts that an interrupted upgrade
    #: resumes (a rewrite of every row); ``say`` tells the progress. Where the upgrade is one transaction (behind a
    #: pooler in transaction mode), it does not run and ``apply`` does it all.
    beforehand: Callable[[peewee.Database, Callable[[str], None]], None] | None = None


def add_column(field: peewee.Field) -> Step:
    """A step that adds ``field`` (of a model in models.py) to its table."""
    table = field.model._meta.table_name

    def apply(db: peewee.Database) -> None:
        from playhouse.migrate import migrate  # only to upgrade: it imports peewee's PostgreSQL extensions too

        if field.column_name not in {column.name for column in db.get_columns(table, schema=dialect(db).schema)}:
            migrate(dialect(db).migrator(db).add_column(table, field.column_name, field))

    return Step(f"add column {table}.{field.column_name}", apply)


#: Written by astra before schema 2; such text may hold what jsonb and astra.values would read differently.
_SUSPECT = ("NaN", "Infinity", '"$', "e+", "u0000")
_CHUNK = 5000


def _result_as_json(db: peewee.Database) -> None:
    """Rewrite results that hold NaN or Infinity (or look like tags) with astra.values; on PostgreSQL, make jsonb."""
    table, mark = dialect(db).table(Task), dialect(db).mark
    suspect = " OR ".join([f"result LIKE {mark}"] * len(_SUSPECT))
    last = 0
    while True:  # a chunk at a time, in the order of pk: a million results need not fit in memory
        rows = db.execute_sql(
            f"SELECT pk, result FROM {table} WHERE pk > {mark} AND ({suspect}) ORDER BY pk LIMIT {_CHUNK}",
            [last, *(f"%{text}%" for text in _SUSPECT)],
        ).fetchall()
        if not rows:
            break
        last = rows[-1][0]
        rewritten = [(pk, values.dumps(_legacy(text))) for pk, text in rows]
        dialect(db).rewrite_results(db, rewritten)
    dialect(db).results_as_json(db, Task.result)


def _legacy(text: str) -> object:
    """A result as astra wrote it before schema 2 (json.dumps: NaN and Infinity as bare words)."""
    try:
        return json.loads(text)
    except ValueError:
        return text  # not JSON at all: keep the text itself, as a JSON string


def _links_per_statement(db: peewee.Database) -> None:
    """Triggers rather than foreign keys for the references of task_parameter, where the dialect wants them."""
    dialect(db).check_links_per_statement(db)


def _json_index(db: peewee.Database) -> None:
    """The index of done tasks with a JSON result (models.JSON_RESULT_INDEX), unless it is there."""
    db.execute(Task._schema._create_index(JSON_RESULT_INDEX, safe=True))


def _binary_keys(db: peewee.Database) -> None:
    """task_hash and parameter_hash as their 32 bytes, task_id's index a hash index where the dialect has them."""
    dialect(db).binary_keys(db)


def _prepare_binary_keys(db: peewee.Database, say: Callable[[str], None]) -> None:
    dialect(db).prepare_binary_keys(db, say)


def _status_index(db: peewee.Database) -> None:
    dialect(db).status_index(db)


def _prepare_status_index(db: peewee.Database, say: Callable[[str], None]) -> None:
    dialect(db).prepare_status_index(db, say)


#: In order: STEPS[0] brings schema 1 to 2, STEPS[1] brings 2 to 3, ...
STEPS: list[Step] = [
    Step("results as JSON with NaN, dates and numpy values kept (jsonb on PostgreSQL)", _result_as_json),  # 2
    add_column(Task.lease),  # 3
    add_column(Task.claim_token),  # 4
    add_column(Task.dynamic_dependencies),  # 5
    add_column(Dependency.dynamic),  # 6
    add_column(Task.slurm_job_id),  # 7
    add_column(Task.slurm_node),  # 8
    Step("task_parameter's references checked per statement, not per row (PostgreSQL)", _links_per_statement),  # 9
    Step("an index of done tasks with a JSON result (what the pre-run check of output tables asks)", _json_index),  # 10
    Step("sha256 keys as their 32 bytes, a hash index on task_id", _binary_keys, _prepare_binary_keys),  # 11
    Step(
        "the index of task_hash holds the status: done checks read it alone", _status_index, _prepare_status_index
    ),  # 12
]

#: The schema this astra reads and writes.
CURRENT = len(STEPS) + 1


def recorded(db: peewee.Database) -> int | None:
    """The schema version ``db`` holds; None if it has no astra tables at all."""
    if not db.table_exists("task", schema=dialect(db).schema):
        return None
    if not db.table_exists("schema_version", schema=dialect(db).schema):
        return 1
    return SchemaVersion.select(peewee.fn.MAX(SchemaVersion.version)).scalar() or _without_a_version(db)


def _without_a_version(db: peewee.Database) -> int:
    """The schema of a database whose astra.schema_version holds no row, told by what the steps left.

    astradb.sql loaded onto a database made before versions were recorded leaves the table empty (schema 1); so
    would a restore that left its rows out, or a hand that deleted them, from a database of any schema. The steps
    from 3 on find what they add already there and leave it, but 2 (the results rewritten) and 11 (the keys
    converted) must not run twice: a result rewritten again reads otherwise.
    """
    types = {column.name: column.data_type.lower() for column in db.get_columns("task", schema=dialect(db).schema)}
    if types.get("task_hash") in ("bytea", "blob"):
        return 11
    if dialect(db).schema:  # PostgreSQL: step 2 made the results jsonb (astradb.sql adds later columns to any table)
        return 2 if types.get("result") == "jsonb" else 1
    return 2 if "lease" in types else 1  # SQLite, which astradb.sql does not make: step 3 came after 2


def create(db: peewee.Database) -> None:
    """Create the tables of a new SQLite database, at the current version (PostgreSQL: astradb.sql does it)."""
    with dialect(db).atomic(db):
        db.create_tables(MODELS, safe=True)
        dialect(db).refuse_older_writers(db)
        SchemaVersion.insert(version=CURRENT, applied=utcnow()).on_conflict_ignore().execute()


def upgrade(
    db: peewee.Database,
    progress: Callable[[int, str], None] = lambda version, description: None,
    say: Callable[[str], None] = lambda text: None,
) -> int:
    """Apply the steps ``db`` lacks, each in its own transaction (on SQLite, savepoints of one transaction that
    holds the write lock throughout), after the committed parts a step may prepare; returns the version it held
    before. ``say`` tells how a long preparation goes.

    Upgrades run one at a time: a second waits for the first, then finds the steps done and returns the current
    version.

    Raises ValueError if ``db`` has no astra schema, or a newer one than this astra knows.
    """
    uncommitted = []  # steps done inside the upgrade's one transaction (SQLite, a pooler): said once it commits
    with dialect(db).one_upgrade(db):  # a second upgrade waits here, then finds nothing to do
        before = recorded(db)
        if before is None:
            raise ValueError("it has no astra schema")
        if before > CURRENT:
            raise ValueError(f"it holds astra schema {before}, newer than this astra knows ({CURRENT})")
        SchemaVersion.create_table(safe=True)
        for version in range(before + 1, CURRENT + 1):
            step = STEPS[version - 2]
            if step.beforehand is not None and not db.in_transaction():
                step.beforehand(db, say)  # committed as it goes: a rerun resumes it
            with dialect(db).atomic(db):
                dialect(db).lock_for_upgrade(db)  # workers wait until the step is done
                step.apply(db)
                SchemaVersion.insert(version=version, applied=utcnow()).execute()
            if db.in_transaction():
                uncommitted.append((version, step.description))
            else:
                progress(version, step.description)
    for version, description in uncommitted:
        progress(version, description)
    return before
