"""Schema 11: the sha256 keys ``task.task_hash`` and ``parameter.parameter_hash`` from hex text to their 32 bytes,
in place, keeping every row, its pk and so every link, result and output row.

SQLite databases are small: one transaction does it (:func:`sqlite`). On PostgreSQL a database may hold 10^7 tasks,
so the long part runs in committed parts that can be interrupted (even by SIGKILL) and resumed by running
``astra db upgrade`` again, while an astra of schema 9 keeps working (:func:`postgresql_prepare`):

1. a column ``<key>_bytes`` beside each key, a trigger that fills it for every row written from then on, and two
   checks, NOT VALID (added without reading the table): the new column is set, and holds 32 bytes;
2. the existing rows filled by pk ranges, one committed transaction per range (a rerun skips the rows filled);
3. the checks validated (a read of the table that lets writers go on), the unique index built ``CONCURRENTLY``
   (one left INVALID by an interrupted build is dropped and built again), and a hash index on ``task_id`` beside
   its btree.

Then :func:`postgresql_swap`, in the transaction that records schema 11, under the upgrade's table locks: the
validated check lets ``SET NOT NULL`` skip the scan, the text column goes (with its index), the new one takes its
name, the index and check theirs. Schema 11 is recorded only then. Behind a pooler in transaction mode the whole
upgrade is one transaction, so the swap does the parts the preparation would have done itself (non-concurrently).
The fill leaves a dead version of every row behind: VACUUM makes the space reusable; ``VACUUM FULL`` (which locks
the tables while it runs) gives it back to the file system.

Schema 12: the unique index of ``task_hash`` holds each task's status too (``INCLUDE``), so the all-done check is
answered from the index alone. On PostgreSQL :func:`status_index_prepare` builds it beside the old one,
``CONCURRENTLY`` (astra goes on writing; a build left INVALID is built again), and :func:`status_index_swap` drops
the old one and gives the new its name, in the transaction that records schema 12.
"""

from __future__ import annotations

from collections.abc import Callable

import peewee

from astra.database.keys import SIZE

#: (table, key column) of every hash key.
KEYS = (("task", "task_hash"), ("parameter", "parameter_hash"))
#: Rows per committed part of the fill.
FILL_CHUNK = 50_000


def sqlite(db: peewee.Database) -> None:
    """The whole step in the caller's transaction: each key rewritten as bytes in a column that takes its name."""
    for table, column in KEYS:
        kinds = {c.name: c.data_type.upper() for c in db.get_columns(table)}
        if kinds.get(column) == "BLOB":
            continue  # done already
        new = f"{column}_bytes"
        if new not in kinds:
            # NOT NULL needs a default in SQLite's ADD COLUMN; every row gets its own key below.
            db.execute_sql(
                f"ALTER TABLE {table} ADD COLUMN {new} BLOB NOT NULL DEFAULT x'{'00' * SIZE}' "
                f"CHECK (length({new}) = {SIZE})"
            )
        last = 0
        while True:
            rows = db.execute_sql(
                f"SELECT pk, {column} FROM {table} WHERE pk > ? ORDER BY pk LIMIT {FILL_CHUNK}", (last,)
            ).fetchall()
            if not rows:
                break
            last = rows[-1][0]
            db.cursor().executemany(
                f"UPDATE {table} SET {new} = ? WHERE pk = ?", [(bytes.fromhex(key), pk) for pk, key in rows]
            )
        db.execute_sql(f"DROP INDEX IF EXISTS {table}_{column}")
        db.execute_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
        db.execute_sql(f"ALTER TABLE {table} RENAME COLUMN {new} TO {column}")
        db.execute_sql(f"CREATE UNIQUE INDEX {table}_{column} ON {table} ({column})")


def _one(db: peewee.Database, sql: str, params: tuple = ()) -> object:
    row = db.execute_sql(sql, params).fetchone()
    return None if row is None else row[0]


def _converted(db: peewee.Database, table: str, column: str) -> bool:
    return _one(db, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass "
                "AND attname = %s AND NOT attisdropped", (f"astra.{table}", column)) == "bytea"  # fmt: skip


def _has_column(db: peewee.Database, table: str, column: str) -> bool:
    return bool(_one(db, "SELECT count(*) FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s "
                     "AND NOT attisdropped", (f"astra.{table}", column)))  # fmt: skip


def _constraint(db: peewee.Database, table: str, name: str) -> bool | None:
    """Whether check ``name`` of ``table`` is validated; None if there is no such check."""
    return _one(db, "SELECT convalidated FROM pg_constraint WHERE conrelid = %s::regclass AND conname = %s",
                (f"astra.{table}", name))  # fmt: skip


def _index(db: peewee.Database, name: str) -> bool | None:
    """Whether index ``astra.name`` is valid; None if there is no such index."""
    return _one(db, "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)", (f"astra.{name}",))


def _method(db: peewee.Database, name: str) -> str | None:
    return _one(db, "SELECT a.amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam WHERE c.oid = to_regclass(%s)",
                (f"astra.{name}",))  # fmt: skip


def _begin(db: peewee.Database, table: str, column: str) -> None:
    """Part 1: the new column, the trigger that fills it for rows written from now on, the checks (NOT VALID)."""
    new = f"{column}_bytes"
    db.execute_sql(f"ALTER TABLE astra.{table} ADD COLUMN IF NOT EXISTS {new} bytea")
    db.execute_sql(
        f"CREATE OR REPLACE FUNCTION astra.{table}_{new}() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN NEW.{new} := decode(NEW.{column}, 'hex'); RETURN NEW; END $$"
    )
    db.execute_sql(f"DROP TRIGGER IF EXISTS {table}_{new} ON astra.{table}")
    db.execute_sql(
        f"CREATE TRIGGER {table}_{new} BEFORE INSERT OR UPDATE OF {column} ON astra.{table} "
        f"FOR EACH ROW EXECUTE FUNCTION astra.{table}_{new}()"
    )
    if _constraint(db, table, f"{table}_{new}_set") is None:
        db.execute_sql(
            f"ALTER TABLE astra.{table} ADD CONSTRAINT {table}_{new}_set CHECK ({new} IS NOT NULL) NOT VALID"
        )
    if _constraint(db, table, f"{table}_{new}_check") is None:
        db.execute_sql(
            f"ALTER TABLE astra.{table} ADD CONSTRAINT {table}_{new}_check CHECK (length({new}) = {SIZE}) NOT VALID"
        )


def _fill(db: peewee.Database, table: str, column: str, say: Callable[[str], None]) -> None:
    """Part 2: the rows written before the trigger, a committed range of pks at a time."""
    new = f"{column}_bytes"
    top = _one(db, f"SELECT max(pk) FROM astra.{table}") or 0
    filled, shown = 0, 0
    for low in range(0, top, FILL_CHUNK):
        cursor = db.execute_sql(
            f"UPDATE astra.{table} SET {new} = decode({column}, 'hex') WHERE pk > %s AND pk <= %s AND {new} IS NULL",
            (low, low + FILL_CHUNK),
        )
        filled += cursor.rowcount
        done = min(low + FILL_CHUNK, top)
        if done - shown >= top // 10 or done == top:
            say(f"  astra.{table}.{column}: up to pk {done:,} of {top:,} ({filled:,} rows filled by this run)")
            shown = done


def _indexes(db: peewee.Database, table: str, column: str) -> None:
    """Part 3: the checks validated, the unique index of the new column built without blocking writers."""
    new = f"{column}_bytes"
    for check in (f"{table}_{new}_set", f"{table}_{new}_check"):
        if not _constraint(db, table, check):
            db.execute_sql(f"ALTER TABLE astra.{table} VALIDATE CONSTRAINT {check}")
    _concurrently(db, f"{table}_{new}", f"CREATE UNIQUE INDEX CONCURRENTLY {table}_{new} ON astra.{table} ({new})")


def _concurrently(db: peewee.Database, name: str, create: str) -> None:
    """``create`` (an index ``name``, CONCURRENTLY) unless it is there and valid; an invalid one (a build that was
    interrupted) is dropped first."""
    valid = _index(db, name)
    if valid:
        return
    if valid is False:
        db.execute_sql(f"DROP INDEX CONCURRENTLY IF EXISTS astra.{name}")
    db.execute_sql(create)


def postgresql_prepare(db: peewee.Database, say: Callable[[str], None]) -> None:
    """Parts 1-3 of every key, each committed; outside any transaction. A rerun goes on where one stopped."""
    for table, column in KEYS:
        if _converted(db, table, column):
            continue
        with db.atomic():  # the column comes with its trigger: no row is written between them
            _begin(db, table, column)
        _fill(db, table, column, say)
        _indexes(db, table, column)
        say(f"  astra.{table}.{column}: filled, checked and indexed")
    if _method(db, "task_task_id") == "btree":
        _concurrently(db, "task_task_id_hash",
                      "CREATE INDEX CONCURRENTLY task_task_id_hash ON astra.task USING hash (task_id)")  # fmt: skip


def postgresql_swap(db: peewee.Database) -> None:
    """The new columns take the keys' names, in the caller's transaction (which holds the tables' locks). What the
    preparation did not do (behind a pooler it does not run), this does itself."""
    db.execute_sql("LOCK TABLE astra.parameter IN ACCESS EXCLUSIVE MODE")
    for table, column in KEYS:
        if _converted(db, table, column):
            continue
        new = f"{column}_bytes"
        if not _has_column(db, table, new):
            _begin(db, table, column)
        if not _constraint(db, table, f"{table}_{new}_set"):
            db.execute_sql(f"UPDATE astra.{table} SET {new} = decode({column}, 'hex') WHERE {new} IS NULL")
        _indexes_here(db, table, new)
        db.execute_sql(f"ALTER TABLE astra.{table} ALTER COLUMN {new} SET NOT NULL")  # the valid check: no scan
        db.execute_sql(f"ALTER TABLE astra.{table} DROP CONSTRAINT {table}_{new}_set")
        db.execute_sql(f"DROP TRIGGER {table}_{new} ON astra.{table}")
        db.execute_sql(f"DROP FUNCTION astra.{table}_{new}()")
        db.execute_sql(f"ALTER TABLE astra.{table} DROP COLUMN {column}")  # and its unique index
        db.execute_sql(f"ALTER TABLE astra.{table} RENAME COLUMN {new} TO {column}")
        db.execute_sql(f"ALTER INDEX astra.{table}_{new} RENAME TO {table}_{column}")
        db.execute_sql(f"ALTER TABLE astra.{table} RENAME CONSTRAINT {table}_{new}_check TO {table}_{column}_check")
    if _method(db, "task_task_id") == "btree":
        _here(db, "task_task_id_hash", "CREATE INDEX task_task_id_hash ON astra.task USING hash (task_id)")
        db.execute_sql("DROP INDEX astra.task_task_id")
        db.execute_sql("ALTER INDEX astra.task_task_id_hash RENAME TO task_task_id")


def _indexes_here(db: peewee.Database, table: str, new: str) -> None:
    """Part 3 inside a transaction, where the preparation left it undone: the checks validated, the unique index
    built (not concurrently)."""
    for check in (f"{table}_{new}_set", f"{table}_{new}_check"):
        if not _constraint(db, table, check):
            db.execute_sql(f"ALTER TABLE astra.{table} VALIDATE CONSTRAINT {check}")
    _here(db, f"{table}_{new}", f"CREATE UNIQUE INDEX {table}_{new} ON astra.{table} ({new})")


def _here(db: peewee.Database, name: str, create: str) -> None:
    """``create`` (an index ``name``) in the caller's transaction, unless the preparation built it and it is valid;
    an invalid one is dropped first. The twin of :func:`_concurrently`, for where that did not run (a pooler)."""
    valid = _index(db, name)
    if valid:
        return
    if valid is False:
        db.execute_sql(f"DROP INDEX astra.{name}")
    db.execute_sql(create)


#: Schema 12's unique index of task_hash, while it is built beside the old one.
_STATUS_INDEX = "task_task_hash_status"
#: Its CREATE, given CONCURRENTLY outside a transaction and nothing inside one.
_STATUS_CREATE = f"CREATE UNIQUE INDEX {{}} {_STATUS_INDEX} ON astra.task (task_hash) INCLUDE (status)"


def _holds_status(db: peewee.Database) -> bool:
    """Whether the unique index of task_hash holds more than its key (the status, schema 12)."""
    return bool(_one(db, "SELECT i.indnatts > i.indnkeyatts FROM pg_index i WHERE i.indexrelid = "
                         "to_regclass('astra.task_task_hash')"))  # fmt: skip


def status_index_prepare(db: peewee.Database, say: Callable[[str], None]) -> None:
    """Schema 12, outside any transaction: the index with the status built beside the old one, writers going on."""
    if _holds_status(db):
        return
    say("  astra.task: building the index of task_hash again, with the status (astra goes on writing)")
    _concurrently(db, _STATUS_INDEX, _STATUS_CREATE.format("CONCURRENTLY"))


def status_index_swap(db: peewee.Database) -> None:
    """Schema 12 in the caller's transaction: the new index takes the old one's place (built here if the
    preparation did not run, behind a pooler)."""
    if _holds_status(db):
        return
    _here(db, _STATUS_INDEX, _STATUS_CREATE.format(""))
    db.execute_sql("DROP INDEX astra.task_task_hash")
    db.execute_sql(f"ALTER INDEX astra.{_STATUS_INDEX} RENAME TO task_task_hash")
