"""Every difference between SQLite and PostgreSQL that astra knows of, in one place.

Two classes with the same methods, :class:`SQLite` and :class:`PostgreSQL`; :func:`dialect` gives the one of a
database (or of a model, through the database it is bound to). Code elsewhere asks the dialect to do the thing
(``dialect(db).atomic(db)``), never which backend it is on; tests/test_architecture.py checks that.

Tables live in PostgreSQL's ``astra`` schema; SQLite has no schemas, so there the same names stand alone. The
models take their schema from the database they are bound to (:class:`SchemaFromDialect`), so nothing rewrites
them when a database opens.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import logging
import os
import re
import socket
import struct
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import peewee

from astra import values
from astra.database.keys import read, stored
from astra.database.status import DONE, FAILED, RUNNING

if TYPE_CHECKING:
    import numpy as np

UTC = datetime.timezone.utc

logger = logging.getLogger("luigi-interface")

#: Keys per ``IN (...)`` query: SQLite allows 32766 bound variables, and PostgreSQL plans long lists slowly.
CHUNK = 5000


#: The columns of a task row that :meth:`SQLite.record_items` takes from each item, in this order.
ITEM_COLUMNS = "task_module, task_name, task_id, task_hash, version, astra_version, result, error, traceback, duration"

#: Python's JSON brackets as PostgreSQL's array-literal braces, and back.
_BRACES = str.maketrans("[]", "{}")


def _chunked(items: Sequence, size: int = CHUNK):
    for start in range(0, len(items), size):
        yield items[start : start + size]


#: Bytes of an SQLite array (numpy's .npy) that hold its header, shape included, for any array astra stores.
_NPY_HEADER = 1024


def _npy_header(data: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The shape, order and dtype in the header of an array in numpy's .npy format (``data`` may stop after it)."""
    import numpy as np  # only when an array column is compared or rewritten

    buffer = io.BytesIO(bytes(data))
    version = np.lib.format.read_magic(buffer)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(buffer)


class SQLite:
    """SQLite: one file on this host, no schemas, ``?`` placeholders, a write lock taken up front."""

    name = "sqlite"
    #: The schema that holds astra's tables (None: the tables' names stand alone).
    schema: str | None = None
    #: The placeholder of a bound parameter in plain SQL.
    mark = "?"
    #: Whether text may hold NUL (see astra.database.text.check_identity).
    nul_forbidden = False
    #: Whether a float column keeps NaN (SQLite stores NaN as NULL).
    keeps_nan = False
    #: Whether astra creates its tables when a process first uses them (else schema/astradb/astradb.sql, or
    #: ``astra db init``, by whoever owns the schema).
    creates_tables_on_use = True
    #: Whether the references of ``task_parameter`` are checked by triggers once per statement (see
    #: :meth:`check_links_per_statement`) rather than by foreign keys the tables are created with.
    links_checked_per_statement = False
    #: The index method of an index only ever probed for equality (None: the default, a btree).
    equality_index: str | None = None
    #: Whether an index can hold columns it is not keyed on (``INCLUDE``), for scans that read the index alone.
    index_includes = False

    def table(self, model: type[peewee.Model]) -> str:
        """The name of ``model``'s table as plain SQL writes it."""
        return model._meta.table_name

    def atomic(self, db: peewee.Database):
        """A transaction that takes the write lock up front, so two writers queue on the busy timeout instead of
        one of them failing at once when it upgrades a read transaction."""
        return db.atomic(lock_type="IMMEDIATE")

    def not_flushed(self, db: peewee.Database) -> None:
        """Let the current transaction commit without waiting for the disk (nothing to do on SQLite)."""

    def now(self):
        """The current time for timestamps that other hosts compare. SQLite lives on one host: its clock."""
        return datetime.datetime.now(UTC)

    def seconds_since(self, column: peewee.Node) -> peewee.Node:
        """Seconds since the time in ``column``, worked out by the database."""
        return (peewee.fn.julianday("now") - peewee.fn.julianday(column)) * 86400.0

    def matches(self, field: peewee.Field, parts: list[str | None]) -> peewee.Node:
        """``field`` matches ``parts`` (None: any text) case-sensitively: GLOB (SQLite's LIKE ignores case),
        where ``[c]`` stands for a literal c."""
        glob = "".join("*" if part is None else re.sub(r"([*?\[])", r"[\1]", part) for part in parts)
        return peewee.NodeList((field, peewee.SQL("GLOB"), glob))

    def migrator(self, db: peewee.Database):
        from playhouse.migrate import SqliteMigrator

        return SqliteMigrator(db)

    def one_upgrade(self, db: peewee.Database):
        """A block that no other ``astra db upgrade`` runs beside: one write transaction around the whole upgrade
        (its steps are savepoints), so the second finds the first's work done."""
        return db.atomic(lock_type="IMMEDIATE")

    def lock_for_upgrade(self, db: peewee.Database) -> None:
        """Keep workers out while a schema step runs (the IMMEDIATE transaction of :meth:`atomic` does it)."""

    def lock_for_init(self, db: peewee.Database) -> None:
        """Let one ``astra db init`` at a time create the schema (SQLite creates its tables on use instead)."""

    def lock_for_migrate(self, db: peewee.Database, model: type[peewee.Model]) -> None:
        """Keep rows out of ``model``'s (existing) table until the transaction ends, while it is checked and changed
        (the IMMEDIATE transaction of :meth:`atomic` does it)."""

    def check_links_per_statement(self, db: peewee.Database) -> None:
        """Check the references of ``task_parameter`` once per statement rather than per row (schema 9).

        Nothing to do on SQLite: its foreign keys are checked in this process, at no cost worth saving.
        """

    def prepare_binary_keys(self, db: peewee.Database, say) -> None:
        """What schema 11 can do in committed parts before its transaction (nothing on SQLite: small databases)."""

    def binary_keys(self, db: peewee.Database) -> None:
        """Schema 11 in the caller's transaction: the hash keys as their bytes (see astra.database.key_upgrade)."""
        from astra.database import key_upgrade  # only to upgrade

        key_upgrade.sqlite(db)

    def prepare_status_index(self, db: peewee.Database, say) -> None:
        """What schema 12 can do before its transaction (nothing where an index holds no more than its key)."""

    def status_index(self, db: peewee.Database) -> None:
        """Schema 12 in the caller's transaction: the unique index of task_hash holds the status too, where the
        dialect allows it (see astra.database.key_upgrade)."""

    def lock_for_forget(self, db: peewee.Database) -> None:
        """One forget at a time (the IMMEDIATE transaction of :meth:`atomic` does it on SQLite)."""

    def lock_rows(self, db: peewee.Database, table: str, pks: Sequence[int]) -> None:
        """Lock rows ``pks`` of ``table`` until the transaction ends, against a reference to them (a new edge) and
        any write (SQLite: the IMMEDIATE transaction holds the whole database already)."""

    def hold_done(self, db: peewee.Database, table: str, hashes: list[str]) -> set[str]:
        """Those of ``hashes`` that are no done task of ``table``; the others stay done until the transaction ends
        (the IMMEDIATE transaction holds the whole database already)."""
        return set(hashes) - set(self.keys(db, table, "task_hash", hashes, status=DONE))

    def refuse_older_writers(self, db: peewee.Database) -> None:
        """Make a task row with a hash as text fail, as an astra older than schema 11 writes it.

        Such an astra claims a task with ``INSERT OR IGNORE``, which on SQLite skips the row the CHECK on the hash's
        length refuses, as it skips one already there: it then looked for its row, found none, and tried again,
        forever. A trigger's ABORT is an error whatever the statement's OR. (PostgreSQL's ON CONFLICT covers only
        unique keys: the CHECK is an error there.)
        """
        found = db.execute_sql(
            "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'task_hash_as_bytes'"
        ).fetchone()
        if found is None:
            try:
                db.execute_sql(_OLDER_WRITERS_REFUSED)
            except peewee.OperationalError:  # a file this process may only read: its readers need no trigger
                pass

    def columns_sql(self) -> str:
        """A query of (table, column) for every astra table."""
        return "select m.name, p.name from sqlite_master m join pragma_table_info(m.name) p where m.type = 'table'"

    def naive_utc(self, value: datetime.datetime) -> datetime.datetime:
        """An aware time as stored: SQLite has no time zones, so naive UTC."""
        return value.astimezone(UTC).replace(tzinfo=None)

    def result_reader(self):
        """How a result read from the database becomes Python: SQLite gives the JSON text."""
        return values.loads

    def array_type(self, field: peewee.Field) -> str:
        """The column type of an astra.ArrayField: the array's bytes in numpy's ``.npy`` format."""
        return "BLOB"

    def array_value(self, array: np.ndarray) -> object:
        """An array as the database takes it."""
        import numpy as np  # only for output tables with arrays: numpy is ~0.1 s to import

        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return buffer.getvalue()

    def is_one_of(self, column: str, keys: Sequence) -> tuple[str, tuple]:
        """Plain SQL (and its parameters) for ``column`` being one of ``keys`` (at most CHUNK of them)."""
        return f"{column} IN ({', '.join('?' * len(keys))})", tuple(keys)

    def is_one_of_hashes(self, column: str, hashes: Sequence[str]) -> tuple[str, tuple]:
        """:meth:`is_one_of` for a hash key column and ``hashes`` as hex text (as astra.identity writes them)."""
        return self.is_one_of(column, [stored(key) for key in hashes])

    def hash_text(self, column: str) -> str:
        """SQL that reads the hash key ``column`` as the hex text astra.identity writes."""
        return f"lower(hex({column}))"

    def where_one_of(self, query: peewee.ModelSelect, field: peewee.Field, keys: list) -> peewee.ModelSelect:
        """``query`` restricted to rows whose ``field`` is one of ``keys`` (SQLite takes up to 32766 values)."""
        return query.where(field.in_(keys))

    def one_of(self, field: peewee.Field, keys: Sequence[int]) -> peewee.Node:
        """``field`` is one of the integer ``keys`` (at most CHUNK of them), as a condition of any statement."""
        return field.in_(list(keys))

    def keys(
        self, db: peewee.Database, table: str, column: str, hashes: list[str], status: str | None = None
    ) -> dict[str, int]:
        """The primary keys of the rows of ``table`` whose hash key ``column`` is one of ``hashes`` (hex text), and
        whose status is ``status`` if given."""
        found = {}
        where = "" if status is None else f" AND status = '{status}'"
        for chunk in _chunked(hashes):
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT {column}, pk FROM {table} WHERE {column} IN ({marks}){where}"
            found.update((read(key), pk) for key, pk in db.execute_sql(sql, tuple(map(stored, chunk))).fetchall())
        return found

    def linked(
        self, db: peewee.Database, table: str, key: str, value: str, keys: Sequence[int], most: int | None = None
    ) -> list[tuple[int, int]]:
        """``(key, value)`` of the rows of ``table`` whose column ``key`` is one of ``keys`` (at most ``most`` rows
        per key), each key looked up by its own probe of an index that starts with ``key``.

        SQLite plans an ``IN`` list as one index probe per value, and runs in this process, where a query per key
        costs no round trip.
        """
        found: list[tuple[int, int]] = []
        if most is not None:
            for one in keys:
                sql = f"SELECT {key}, {value} FROM {table} WHERE {key} = ? LIMIT {int(most)}"
                found += db.execute_sql(sql, (one,)).fetchall()
            return found
        for chunk in _chunked(list(keys)):
            sql = f"SELECT {key}, {value} FROM {table} WHERE {key} IN ({', '.join('?' * len(chunk))})"
            found += db.execute_sql(sql, tuple(chunk)).fetchall()
        return found

    def rows_by_key(
        self, db: peewee.Database, table: str, key: str, columns: Sequence[str], keys: Sequence[int]
    ) -> list[tuple]:
        """``(key, *columns)`` of the rows of ``table`` whose column ``key`` is one of ``keys`` (at most CHUNK), in
        one statement: by key, each key's rows in pk order. SQLite probes the index on ``key`` once per value."""
        marks = ", ".join("?" * len(keys))
        sql = f"SELECT {key}, {', '.join(columns)} FROM {table} WHERE {key} IN ({marks}) ORDER BY {key}, pk"
        return db.execute_sql(sql, tuple(keys)).fetchall()

    def reader(self, field: peewee.Field, column: str) -> tuple[str, Callable[[object], object]]:
        """The SQL that reads ``field`` (its quoted ``column``) and what makes the value read Python's."""
        return column, field.python_value

    def estimated_rows(self, db: peewee.Database, query: peewee.Query) -> int | None:
        """How many rows ``query`` gives, as the planner estimates it; None where there is no such estimate."""
        return None

    def by_keys_only(self, db: peewee.Database) -> None:
        """Plan the rest of this transaction's statements as index probes (SQLite always does, given an index)."""

    def reading(self, db: peewee.Database):
        """One transaction for a command that reads much (an export): one snapshot for all its statements."""
        return db.atomic()

    def export_snapshot(self, db: peewee.Database) -> str | None:
        """The name of the snapshot of this ``reading()`` transaction, which another connection can read
        (:meth:`read_snapshot`); None where no other connection can (SQLite: the helper reads in this thread)."""
        return None

    def read_snapshot(self, db: peewee.Database, snapshot: str) -> None:
        """Make the transaction just begun on this thread's own connection read ``snapshot``."""
        raise NotImplementedError

    def read_only(self, db: peewee.Database) -> bool:
        """Whether the server refuses every write of this session (a hot standby, default_transaction_read_only)."""
        return False

    def record_items(
        self,
        db: peewee.Database,
        tables: tuple[str, str, str, str],
        status: str,
        rows: list[tuple],
        parameters: dict[str, tuple[str, str, str]],
        links: list[tuple[str, str]],
        edges: list[tuple[str, str]],
    ) -> dict[str, int]:
        """The SQLite half of :func:`astra.database.queries.record_items`, which prepares every argument.

        SQLite runs in this process: executemany costs no round trips. Its clock is this host's (the server's),
        kept in peewee's text form of naive UTC.
        """
        task, parameter, task_parameter, dependency = tables
        stamp = str(self.now().replace(tzinfo=None))
        constants = (status, stamp, stamp, stamp, stamp if status == DONE else None, socket.gethostname(), os.getpid())
        hashes = [row[3] for row in rows]
        # The write lock is held (IMMEDIATE), so what is there now stays as it is until this transaction ends.
        already = {h for h, s in self._statuses(db, task, hashes) if s == DONE or (s == RUNNING and status == FAILED)}
        db.many(
            f"INSERT INTO {task} ({ITEM_COLUMNS}, status, created, started, heartbeat, completed, host, pid, "
            f"attempts) VALUES ({', '.join('?' * 17)}, 1) {_upsert(task)}",
            [(*row[:3], stored(row[3]), *row[4:], *constants) for row in rows],
        )
        db.many(
            f"INSERT OR IGNORE INTO {parameter} (parameter_name, parameter_value, parameter_hash) VALUES (?, ?, ?)",
            [(name, value, stored(key)) for name, value, key in parameters.values()],
        )
        task_pks = self.keys(db, task, "task_hash", hashes + [r for _, r in edges])
        parameter_pks = self.keys(db, parameter, "parameter_hash", list(parameters))
        for table, column, pairs, pks in (
            (task_parameter, "parameter_pk", links, parameter_pks),
            (dependency, "requires_pk", edges, task_pks),
        ):
            db.many(
                f"INSERT OR IGNORE INTO {table} (task_pk, {column}) VALUES (?, ?)",
                [(task_pks[one], pks[other]) for one, other in pairs if one in task_pks and other in pks],
            )
        return {h: task_pks[h] for h in hashes if h not in already}

    def _statuses(self, db: peewee.Database, task: str, hashes: list[str]) -> list[tuple[str, str]]:
        found = []
        for chunk in _chunked(hashes):
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT task_hash, status FROM {task} WHERE task_hash IN ({marks})"
            found += [(read(key), status) for key, status in db.execute_sql(sql, tuple(map(stored, chunk))).fetchall()]
        return found

    def insert_rows(self, db: peewee.Database, model: type[peewee.Model], fields: list, names: str, rows) -> None:
        """``rows`` (task pk, {field name: value}) into ``model``'s table: executemany (SQLite runs in this
        process, where it costs no round trips). ``names`` are the quoted column names of ``fields``."""
        marks = ", ".join("?" * len(fields))
        db.many(
            f'INSERT INTO "{model._meta.table_name}" ({names}) VALUES ({marks})',
            [
                tuple(pk if field.name == "task" else field.db_value(row[field.name]) for field in fields)
                for pk, row in rows
            ],
        )

    def rewrite_results(self, db: peewee.Database, rewritten: list[tuple[int, str]]) -> None:
        """Set the result of each (task pk, JSON text) in ``rewritten``."""
        db.many("UPDATE task SET result = ? WHERE pk = ?", [(t, pk) for pk, t in rewritten])

    def results_as_json(self, db: peewee.Database, result: peewee.Field) -> None:
        """Give the task table's result column its JSON type (SQLite's is text already)."""

    # A claim and a finish (astra.database.queries.claim and finish): one round trip each where it can be.

    def claim_new(
        self, db: peewee.Database, tables: tuple[str, ...], row: dict, parameters: list[tuple[str, str, str]]
    ) -> tuple | None:
        """Insert the claimed task's row with its parameters, unless a row with its hash exists: then that row.

        ``tables`` are the names of the task, parameter, task_parameter and dependency tables; ``row`` holds the
        new row's columns (and ``lease``, ``host``, ``pid``, ``claim_token``); ``parameters`` are ``(name, value,
        hash)``. Returns ``(pk, status, host, pid, lease, claim_token, attempts,
        silence, inserted, linked)``, where ``linked`` counts the parameters linked to a new row; None if another
        process inserted the row just now. Neither a look nor a lost race takes a key (SQLite reuses no sequence).
        """
        task, parameter, task_parameter, _ = tables
        row = {**row, "task_hash": stored(row["task_hash"])}
        parameters = [(name, value, stored(key)) for name, value, key in parameters]
        # One transaction, with the write lock taken up front: the statements in it are calls within this process.
        with db.atomic(lock_type="IMMEDIATE"):
            new = db.execute_sql(
                f"INSERT INTO {task} (task_module, task_name, task_id, task_hash, version, astra_version, status, "
                "created, started, heartbeat, host, pid, lease, claim_token, attempts) SELECT :task_module, "
                f":task_name, :task_id, :task_hash, :version, :astra_version, '{RUNNING}', :now, :now, :now, :host, "
                f":pid, :lease, :claim_token, 1 WHERE NOT EXISTS (SELECT 1 FROM {task} WHERE task_hash = :task_hash) "
                "RETURNING pk",
                {**row, "now": self._now_text()},
            ).fetchone()
            if new is None:
                found = db.execute_sql(
                    f"SELECT pk, status, host, pid, lease, claim_token, attempts, "
                    f"(julianday('now') - julianday(heartbeat)) * 86400.0, 0, 0 FROM {task} WHERE task_hash = ?",
                    (row["task_hash"],),
                ).fetchone()
                return tuple(found) if found else None
            # executemany, not JSON: SQLite's JSON functions end a text at a NUL, which SQLite itself stores.
            db.many(
                f"INSERT INTO {parameter} (parameter_name, parameter_value, parameter_hash) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                parameters,
            )
            db.many(
                f"INSERT INTO {task_parameter} (task_pk, parameter_pk) SELECT ?, pk FROM {parameter} "
                "WHERE parameter_hash = ? ON CONFLICT DO NOTHING",
                [(new[0], key) for _, _, key in parameters],
            )
            linked = len(parameters)  # the write lock is held: no other process stored a parameter meanwhile
        return (new[0], RUNNING, row["host"], row["pid"], row["lease"], row["claim_token"], 1, 0.0, 1, linked)

    def finish(
        self, db: peewee.Database, tables: tuple[str, ...], row: dict, edges: str | None, durable: bool = True
    ) -> tuple[bool, list[str]]:
        """Mark the attempt's row done and add its dependency edges (JSON ``[[task hash, dynamic], ...]``), if every
        task of ``row["needed"]`` (JSON hashes) is recorded done.

        Whether the row was the attempt's, and the needed tasks not done (hashes); nothing is written unless the
        first and none of the second. One statement without edges or needed tasks; with them, the caller holds a
        transaction. ``durable``: the commit waits for the disk (SQLite decides that when it opens, from ``[astra]
        synchronous_commit``).
        """
        task, _, _, dependency = tables
        needed = json.loads(row["needed"])
        if needed:
            done = self.keys(db, task, "task_hash", needed, status=DONE)
            gone = [key for key in needed if key not in done]
            if gone:
                return False, gone
        done = db.execute_sql(
            f"UPDATE {task} SET status = '{DONE}', completed = :now, heartbeat = :now, duration = :duration, "
            "result = json(:result), dynamic_dependencies = :dynamic WHERE pk = :pk AND task_hash = :task_hash "
            f"AND claim_token = :claim_token AND status = '{RUNNING}' RETURNING pk",
            {**row, "task_hash": stored(row["task_hash"]), "now": self._now_text()},
        ).fetchone()
        if done is not None and edges:
            # The keys looked up here, not in SQL: this SQLite has no unhex(); it runs in this process anyway.
            required = json.loads(edges)
            pks = self.keys(db, task, "task_hash", [key for key, _ in required])
            db.many(
                f"INSERT INTO {dependency} (task_pk, requires_pk, dynamic) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [(row["pk"], pks[key], dynamic) for key, dynamic in required if key in pks],
            )
        return done is not None, []

    def _now_text(self) -> str:
        """Now, as peewee writes a time into SQLite: the text of naive UTC."""
        return str(self.naive_utc(self.now()))

    def finish_statements(self, edges: str | None, needed: bool = False) -> int:
        """How many statements :meth:`finish` runs (more than one need a transaction around them)."""
        return 1 + bool(edges) + needed

    # Output tables as they are, for astra.database.output_schema to compare with their models.

    def column_types(self, db: peewee.Database, table: str) -> dict[str, tuple[str, bool]]:
        """Each column of output table ``table``: its type as :meth:`declared_type` writes one, and whether it
        may not be null."""
        return {column.name: (column.data_type.lower(), not column.null) for column in db.get_columns(table)}

    def declared_type(self, db: peewee.Database, field: peewee.Field) -> str:
        """The type of ``field``'s column as :meth:`column_types` gives it (lower case, as created)."""
        return _ddl_type(db, field).lower()

    def stored_dtype(self, db: peewee.Database, table: str, column: str) -> np.dtype | None:
        """The dtype of the arrays an astra.ArrayField column holds where its type does not say it (SQLite: a
        BLOB whatever the dtype, so that of one stored array); None if it holds none."""
        row = db.execute_sql(f'SELECT "{column}" FROM "{table}" WHERE "{column}" IS NOT NULL LIMIT 1').fetchone()
        if row is None:
            return None
        return _npy_header(row[0])[2]

    def newest_shapes(
        self, db: peewee.Database, table: str, column: str, rows: int, tasks: list[int] | None = None
    ) -> list[tuple[int, tuple | None]]:
        """(task_pk, shape) of the newest ``rows`` rows of output table ``table`` (by pk; only rows of ``tasks``, if
        given), the shape of their array in ``column`` (None where it holds none, or an empty one); only the arrays'
        headers are read."""
        found = []
        of_tasks = f"WHERE task_pk IN ({', '.join(map(str, map(int, tasks)))})" if tasks is not None else ""
        header = f'substr("{column}", 1, {_NPY_HEADER})'
        query = f'SELECT task_pk, {header} FROM "{table}" {of_tasks} ORDER BY pk DESC LIMIT ?'
        for task_pk, head in db.execute_sql(query, (rows,)).fetchall():
            shape = None
            if head is not None:
                try:
                    shape = _npy_header(head)[0]
                except ValueError:  # a header longer than read: not looked at
                    pass
            found.append((task_pk, shape if shape and 0 not in shape else None))
        return found

    def rewrite_arrays(self, db: peewee.Database, table: str, column: str, dtype: np.dtype) -> None:
        """Store every array of ``column`` as ``dtype`` (SQLite keeps each array's dtype in its bytes), each value
        cast as PostgreSQL casts it (:func:`_narrowed`); ValueError, having changed some, if one cannot be (the
        caller, having asked :meth:`unfit` first, rolls back)."""
        import numpy as np  # only when an array column is compared or rewritten

        for rows in self._numbers(db, table, column):
            new = []
            for pk, _, data in rows:
                cast, bad = _narrowed(np.load(io.BytesIO(bytes(data)), allow_pickle=False), dtype)
                if bad.any():
                    raise ValueError(f"{table}.{column}: a value of row {pk} does not fit in {dtype}")
                new.append((self.array_value(cast), pk))
            db.many(f'UPDATE "{table}" SET "{column}" = ? WHERE pk = ?', new)

    def unfit(self, db: peewee.Database, table: str, field: peewee.Field, kind: str) -> tuple[int, object] | None:
        """The first value of ``field``'s column in output table ``table`` (by the table's pk; of an array, its first
        element) that the type ``field`` declares cannot hold, the column's type being ``kind`` now: (the row's
        task_pk, the value), or None. Not held: NaN, an infinity or a number outside the range of an integer type;
        in float32, a finite number that would become an infinity or 0 (:func:`_narrowed`). Asked before the column
        is changed: PostgreSQL would stop at such a value with an error that names no table."""
        import numpy as np  # only when a column is narrowed

        dtype = _narrowed_to(field)
        if dtype is None:
            return None
        arrays = hasattr(field, "dtype")
        numbers = "" if arrays else f" AND typeof(\"{field.column_name}\") IN ('real', 'integer')"
        for rows in self._numbers(db, table, field.column_name, numbers):
            for _, task_pk, value in rows:
                values = np.load(io.BytesIO(bytes(value)), allow_pickle=False) if arrays else np.array([value])
                bad = _narrowed(values, dtype)[1]
                if bad.any():
                    return task_pk, values[bad].flat[0].item()
        return None

    def _numbers(self, db: peewee.Database, table: str, column: str, where: str = ""):
        """The rows (pk, task_pk, value) of ``table`` whose ``column`` is not null (and ``where``), in chunks, by
        pk."""
        last = 0
        while True:
            rows = db.execute_sql(
                f'SELECT pk, task_pk, "{column}" FROM "{table}" WHERE pk > ? AND "{column}" IS NOT NULL{where} '
                "ORDER BY pk LIMIT ?",
                (last, CHUNK),
            ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield rows

    def type_change(self, migrator, table: str, field: peewee.Field, declared: str):
        """The playhouse.migrate operation that gives ``field``'s column its ``declared`` type (SQLite rebuilds
        the table, copying the rows)."""
        column = field.column_name
        if declared == "integer":
            # A REAL 5001.5 would stay REAL in an INTEGER column: round it half to even, as PostgreSQL casts (SQLite's
            # round() rounds half away from zero). NaN is NULL here; an infinity :meth:`unfit` refused.
            db = migrator.database
            for rows in self._numbers(db, table, column, f" AND typeof(\"{column}\") = 'real'"):
                db.many(f'UPDATE "{table}" SET "{column}" = ? WHERE pk = ?', [(round(v), pk) for pk, _, v in rows])

        def defined(name: str, definition: str) -> str:
            # Not playhouse's alter_column_type: peewee 4.5 writes the column's name twice there ("n""n" REAL).
            context = migrator.make_context()
            return context.sql(field.ddl(context)).query()[0]

        return migrator._update_column(table, column, defined)

    def holds_exactly(self, db: peewee.Database, table: str, column: str, kind: str, declared: str) -> bool:
        """Whether every value of the column keeps its value in the ``declared`` type, where the types alone do not
        say (SQLite's INTEGER holds 64-bit integers, and its REAL is a double: those within 2**53 stay exact)."""
        if (kind, declared) != ("integer", "real"):
            return False
        largest = db.execute_sql(f'SELECT max(abs("{column}")) FROM "{table}"').fetchone()[0]
        return largest is None or largest <= 2**53

    # Rows deleted outside astra (by hand, in SQL): their tasks are not complete any more, and run again.

    def rows_trigger(self, table: str) -> list[str]:
        """The statements that give output table ``table`` its trigger: deleting rows outside astra reopens their
        done tasks (status failed, saying why). astra's own deletes, of the rows of a task it records again, are
        made inside :meth:`rewriting`, which the trigger lets be."""
        return [
            "CREATE TABLE IF NOT EXISTS astra_rewriting (since REAL)",
            f'DROP TRIGGER IF EXISTS "{_ROWS_TRIGGER}_{table}"',
            f'CREATE TRIGGER "{_ROWS_TRIGGER}_{table}" AFTER DELETE ON "{table}" '
            "WHEN NOT EXISTS (SELECT 1 FROM astra_rewriting) BEGIN "
            f"UPDATE task SET status = '{FAILED}', traceback = NULL, "
            f"error = 'not complete any more: its rows in {table} were deleted outside astra' "
            f"WHERE pk = OLD.task_pk AND status = '{DONE}'; END",
        ]

    def has_rows_trigger(self, db: peewee.Database, table: str) -> bool:
        """Whether output table ``table`` has the trigger of :meth:`rows_trigger` (a table made by an earlier
        release, or rebuilt by a migration on SQLite, has not)."""
        found = db.execute_sql(
            "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? AND name LIKE ?",
            (table, f"{_ROWS_TRIGGER}%"),
        )
        return found.fetchone() is not None

    def add_rows_trigger(self, db: peewee.Database, table: str) -> None:
        """Give output table ``table`` the trigger of :meth:`rows_trigger`, unless it has it."""
        if self.has_rows_trigger(db, table):  # the usual case, asked without the write lock
            return
        with self.atomic(db):  # two processes at once: one adds it, the other then finds it
            if not self.has_rows_trigger(db, table):
                for statement in self.rows_trigger(table):
                    db.execute_sql(statement)

    @contextlib.contextmanager
    def rewriting(self, db: peewee.Database):
        """Inside this, in one transaction, astra deletes rows of output tables without reopening their tasks (the
        rows of a task it records again). SQLite has one writer at a time, and the row said here is never
        committed: no other connection ever sees it."""
        with self.atomic(db):
            db.execute_sql("INSERT INTO astra_rewriting VALUES (julianday('now'))")
            yield
            db.execute_sql("DELETE FROM astra_rewriting")


class PostgreSQL(SQLite):
    """PostgreSQL: a server other hosts share, the ``astra`` schema, ``%s`` placeholders, arrays and jsonb.

    A subclass only to share the docstrings: every method of :class:`SQLite` that differs is written again here.
    """

    name = "postgresql"
    schema = "astra"
    mark = "%s"
    nul_forbidden = True
    keeps_nan = True
    creates_tables_on_use = False
    links_checked_per_statement = True
    equality_index = "hash"  # half a btree's size on task_id, and as quick for "="
    index_includes = True

    def table(self, model: type[peewee.Model]) -> str:
        return f"astra.{model._meta.table_name}"

    def offline(self) -> peewee.Database:
        """A PostgreSQL database that connects nowhere: bound to models, it renders their SQL (DDL)."""
        return peewee.PostgresqlDatabase(None)

    def atomic(self, db: peewee.Database):
        return db.atomic()

    def not_flushed(self, db: peewee.Database) -> None:
        """Let the current transaction commit without waiting for PostgreSQL to flush it to disk (~3 ms here).

        Only for claims and heartbeats: if the server crashes just after such a commit, the claim is lost and the
        task is run again, which is what happens to any task whose worker died. Done and failed records, and the
        task's own rows, stay durable.
        """
        db.execute_sql("set local synchronous_commit = off")

    def now(self):
        """The server's clock: hosts' clocks may disagree by more than a lease; the server's does not disagree
        with itself."""
        return peewee.SQL("now()")

    def seconds_since(self, column: peewee.Node) -> peewee.Node:
        return peewee.fn.date_part("epoch", peewee.fn.now() - column)

    def matches(self, field: peewee.Field, parts: list[str | None]) -> peewee.Node:
        like = "".join("%" if part is None else re.sub(r"([\\%_])", r"\\\1", part) for part in parts)
        return peewee.NodeList((field, peewee.SQL("LIKE"), like, peewee.SQL("ESCAPE '\\'")))

    def migrator(self, db: peewee.Database):
        from playhouse.migrate import PostgresqlMigrator

        return PostgresqlMigrator(db, schema="astra")

    @contextlib.contextmanager
    def one_upgrade(self, db: peewee.Database):
        if not getattr(db, "keeps_session", True):
            # Behind a pooler in transaction mode a session's lock would stay with whichever server session took it
            # (and the unlock go to another): there the whole upgrade is one transaction, under a transaction's lock.
            with db.atomic():
                db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_UPGRADE_LOCK,))
                yield
            return
        # An advisory lock of the session, taken before any DDL: two CREATE TABLE IF NOT EXISTS at once would fail
        # on the catalogue's unique keys. Each step still commits on its own. Waited for 0.2 s at a time: a
        # statement waiting holds a snapshot, which the CREATE INDEX CONCURRENTLY of the upgrade holding the lock
        # (schema 11) would wait for in turn, and the server's deadlock check (deadlock_timeout, 1 s by default)
        # must not come first: with a wait of 1 s it sometimes did, and failed that upgrade (CI, 2026-12-07).
        while True:
            try:
                with db.atomic():
                    db.execute_sql("SET LOCAL lock_timeout = '200ms'")
                    db.execute_sql("SELECT pg_advisory_lock(%s)", (_UPGRADE_LOCK,))
                break
            except peewee.OperationalError as exc:
                if _code(exc) != "55P03":  # lock_not_available: the second is up
                    raise
        try:
            yield
        finally:
            if not db.is_closed():
                db.execute_sql("SELECT pg_advisory_unlock(%s)", (_UPGRADE_LOCK,))

    def lock_for_upgrade(self, db: peewee.Database) -> None:
        # Workers wait until the step is done; a second `astra db upgrade` finds it done.
        db.execute_sql("LOCK TABLE astra.task, astra.schema_version IN ACCESS EXCLUSIVE MODE")

    def lock_for_init(self, db: peewee.Database) -> None:
        # Two `astra db init` at once on an empty database would both CREATE SCHEMA IF NOT EXISTS and one fail on the
        # catalogue's unique keys: the second waits for the first's transaction, then finds everything there.
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_UPGRADE_LOCK,))

    def lock_for_migrate(self, db: peewee.Database, model: type[peewee.Model]) -> None:
        # Before its rows are checked: a worker's insert committed after the check (one begun before it, which the
        # ALTER waits for) would hold a value the check refuses, and the ALTER fail without saying where. Readers
        # go on until the ALTER; a second migration waits.
        db.execute_sql(f'LOCK TABLE astra."{model._meta.table_name}" IN SHARE ROW EXCLUSIVE MODE')

    def check_links_per_statement(self, db: peewee.Database) -> None:
        # Triggers in, then foreign keys out, in the caller's transaction: no moment without a check.
        db.execute_sql(_LINK_CHECKS)
        db.execute_sql(_DROP_LINK_KEYS)

    def prepare_binary_keys(self, db: peewee.Database, say) -> None:
        from astra.database import key_upgrade  # only to upgrade

        key_upgrade.postgresql_prepare(db, say)

    def binary_keys(self, db: peewee.Database) -> None:
        from astra.database import key_upgrade  # only to upgrade

        key_upgrade.postgresql_swap(db)

    def prepare_status_index(self, db, say):
        from astra.database import key_upgrade  # only to upgrade

        key_upgrade.status_index_prepare(db, say)

    def status_index(self, db):
        from astra.database import key_upgrade  # only to upgrade

        key_upgrade.status_index_swap(db)

    def refuse_older_writers(self, db: peewee.Database) -> None:
        pass  # the CHECK on the hash's length refuses them

    def lock_rows(self, db: peewee.Database, table: str, pks: Sequence[int]) -> None:
        for chunk in _chunked(list(pks)):
            db.execute_sql(f"SELECT FROM {table} WHERE pk = ANY(%s::bigint[]) ORDER BY pk FOR UPDATE", (chunk,))

    def hold_done(self, db, table, hashes):
        # FOR SHARE: a forget (FOR UPDATE, then DELETE) or a reopen (an UPDATE of the status) waits for this
        # transaction, or this waits for it and then skips the rows it deleted or made not done (FOR KEY SHARE,
        # which the foreign key of an edge takes, would let the UPDATE through). In the order of the keys, as a
        # forget locks them. Only the keys not held come back (usually none).
        missing = set()
        for chunk in _chunked(hashes):
            sql = f"""
                WITH held AS (SELECT task_hash FROM {table} WHERE task_hash = ANY(%(keys)s::bytea[])
                              AND status = '{DONE}' ORDER BY pk FOR SHARE)
                SELECT key FROM unnest(%(keys)s::bytea[]) AS key WHERE key NOT IN (SELECT task_hash FROM held)"""
            found = db.execute_sql(sql, {"keys": list(map(stored, chunk))}).fetchall()
            missing.update(read(key) for (key,) in found)
        return missing

    def lock_for_forget(self, db: peewee.Database) -> None:
        # Deleting tasks locks astra.task_parameter once their links are deleted (astradb.sql's triggers): two
        # forgets at once would each wait for the other's links. Not that table lock up front, though: a batch
        # re-recording a task being forgotten would hold the task's row while waiting for it (a deadlock).
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_FORGET_LOCK,))

    def columns_sql(self) -> str:
        return "select table_name, column_name from information_schema.columns where table_schema = 'astra'"

    def naive_utc(self, value: datetime.datetime) -> datetime.datetime:
        return value  # a timestamptz keeps the zone

    def result_reader(self):
        return values.decode  # psycopg2 has parsed the jsonb already: only the tags are left to resolve

    def array_type(self, field: peewee.Field) -> str:
        return field.postgres_type

    def array_value(self, array: np.ndarray) -> object:
        # An array literal, '{{1.5,NaN},{...}}', which the server parses into the column's type (JSON's NaN
        # and Infinity are PostgreSQL's too). One string per array travels far faster than a list of floats.
        text = json.dumps(array.tolist(), separators=(",", ":"))
        return text.translate(_BRACES)

    def is_one_of(self, column: str, keys: Sequence) -> tuple[str, tuple]:
        return f"{column} = ANY(%s)", (list(keys),)

    def is_one_of_hashes(self, column, hashes):
        # One text parameter, the keys' hex joined by commas, decoded by the server: psycopg2 quotes each bytes
        # value of a list on its own (~1.5 us a key; 1.5 s of a million-item check), and this costs nothing per
        # key. As an array built before the scan, it is still one probe of the unique index per key.
        return f"{column} = ANY(array(SELECT decode(unnest(string_to_array(%s, ',')), 'hex')))", (",".join(hashes),)

    def hash_text(self, column):
        return f"encode({column}, 'hex')"

    def where_one_of(self, query: peewee.ModelSelect, field: peewee.Field, keys: list) -> peewee.ModelSelect:
        # One array parameter: PostgreSQL plans long IN lists slowly. Raw SQL: the values as the field stores them.
        values = [field.db_value(key) for key in keys]
        return query.where(peewee.NodeList((field, peewee.SQL("= ANY(%s)", (values,)))))

    def one_of(self, field, keys):
        # One array parameter, which peewee renders at once (an IN list costs it ~20 us per value).
        return peewee.NodeList((field, peewee.SQL("= ANY(%s::bigint[])", (list(keys),))))

    def keys(
        self, db: peewee.Database, table: str, column: str, hashes: list[str], status: str | None = None
    ) -> dict[str, int]:
        found = {}
        where = "" if status is None else f" AND status = '{status}'"
        for chunk in _chunked(hashes):
            sql = f"SELECT {column}, pk FROM {table} WHERE {column} = ANY(%s::bytea[]){where}"
            found.update((read(key), pk) for key, pk in db.execute_sql(sql, (list(map(stored, chunk)),)).fetchall())
        return found

    def linked(self, db, table, key, value, keys, most=None):
        # One scalar subquery per key, which PostgreSQL runs as its own probe of the index: as a join or an
        # "= ANY(list)", the plan depends on how many rows the planner expects per key, which it guesses (one in
        # 200 of the table) until an ANALYZE, and then reads the whole table for a list of a few hundred keys.
        limit = f" LIMIT {int(most)}" if most is not None else ""
        sql = (
            f"SELECT k.key, unnest((SELECT array_agg(r.v) FROM (SELECT {value} AS v FROM {table} "
            f"WHERE {key} = k.key{limit}) AS r)) FROM unnest(%s::bigint[]) AS k(key)"
        )
        found: list[tuple[int, int]] = []
        for chunk in _chunked(list(keys)):
            found += db.execute_sql(sql, (list(chunk),)).fetchall()
        return found

    def rows_by_key(self, db, table, key, columns, keys):
        # A lateral subquery per key: its own probe of the index on the key whatever the planner knows (as for
        # linked()), and the rows in the same statement, not a second one naming each row's pk.
        named = ", ".join(f"{column} AS c{i}" for i, column in enumerate(columns))
        sql = (
            f"SELECT k.key, r.* FROM unnest(%s::bigint[]) AS k(key) CROSS JOIN LATERAL "
            f"(SELECT {named} FROM {table} WHERE {key} = k.key ORDER BY pk) AS r"
        )
        rows = db.execute_sql(sql, (list(keys),)).fetchall()
        rows.sort(key=lambda row: row[0])  # stable: each key's rows stay in pk order
        return rows

    def reader(self, field, column):
        # Arrays in their binary form (a bytea of the numbers' own bytes): psycopg2 would parse the text of each
        # number into a Python float, ~10 s of CPU for 10^7 numbers.
        binary = getattr(field, "from_postgres_binary", None)
        if binary is not None:
            return f"array_send({column})", binary
        return column, field.python_value

    def estimated_rows(self, db, query):
        sql, params = query.sql()
        (plan,) = db.execute_sql(f"EXPLAIN (FORMAT JSON) {sql}", params).fetchone()[0]
        return int(plan["Plan"]["Plan Rows"])

    def by_keys_only(self, db: peewee.Database) -> None:
        # Statements that find rows by keys (a forget's deletes): without statistics, PostgreSQL guesses one row in
        # 200 per key and scans the whole table for a few hundred keys. For the rest of the transaction only.
        db.execute_sql(
            "SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; "
            "SET LOCAL jit = off"  # see reading()
        )

    @contextlib.contextmanager
    def reading(self, db: peewee.Database):
        with db.atomic():
            if db.transaction_depth() == 1:  # else a savepoint: the transaction's isolation is set already
                # One snapshot for every statement (READ COMMITTED takes one per statement).
                db.execute_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            # astra's statements probe indexes a key at a time, and without statistics the planner expects
            # thousands of rows per probe: a chunk of 5,000 keys is planned above jit_above_cost, and PostgreSQL
            # then compiles it (~0.05-0.2 s of CPU per statement, for a statement that runs in a few ms).
            db.execute_sql("SET LOCAL jit = off")
            yield

    def export_snapshot(self, db):
        (name,) = db.execute_sql("SELECT pg_export_snapshot()").fetchone()
        return name

    def read_only(self, db):
        (setting,) = db.execute_sql("SELECT current_setting('transaction_read_only')").fetchone()
        return setting == "on"

    def read_snapshot(self, db, snapshot):
        db.execute_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        db.execute_sql("SET TRANSACTION SNAPSHOT %s", (snapshot,))
        db.execute_sql("SET LOCAL jit = off")  # planned as the reading transaction's statements are

    def record_items(self, db, tables, status, rows, parameters, links, edges):
        """The PostgreSQL half of :func:`astra.database.queries.record_items`.

        Rows new to the database travel by ``COPY`` (the fastest way into the server), with primary keys taken
        from the sequences and times from the server's clock (the transaction's ``now()``, as for a task claimed
        alone), so nothing comes back per row and no key is taken for a row that is not written. Should another
        worker record some of the same tasks or parameters meanwhile, the copy fails on their keys and the chunk
        goes the slower way, ``INSERT ... ON CONFLICT`` from a staging table.
        """
        task, parameter, task_parameter, dependency = tables
        known = self.keys(db, task, "task_hash", [row[3] for row in rows])
        fresh = [row for row in rows if row[3] not in known]
        again = [(row[3], *row[6:]) for row in rows if row[3] in known]
        parameter_pks = self.keys(db, parameter, "parameter_hash", list(parameters))
        missing = [value for key, value in parameters.items() if key not in parameter_pks]
        new: dict[str, int] = {}  # task rows inserted by this call
        task_pks: dict[str, int] = {}  # every task row written by this call
        if fresh or missing:
            db.execute_sql("SAVEPOINT astra_record_items")
            try:
                new, made = self._copy_new(db, tables, status, fresh, missing)
            except peewee.IntegrityError:  # another worker recorded some of them just now
                db.execute_sql("ROLLBACK TO SAVEPOINT astra_record_items")
                new, updated, made = self._insert_new(db, tables, status, fresh, missing)
                task_pks.update(updated)
            db.execute_sql("RELEASE SAVEPOINT astra_record_items")
            parameter_pks.update(made)
            if len(parameter_pks) < len(parameters):  # another worker inserted some of them just now
                late = [key for key in parameters if key not in parameter_pks]
                parameter_pks.update(self.keys(db, parameter, "parameter_hash", late))
        task_pks.update(new)
        if again:  # rows already there (a retried failure): updated where _overwritten
            names = ("hashes", "results", "errors", "tracebacks", "durations")
            cursor = db.execute_sql(
                f"UPDATE {task} SET status = %(status)s, started = now(), heartbeat = now(), "
                f"completed = {'now()' if status == DONE else 'NULL'}, host = %(host)s, pid = %(pid)s, "
                f"attempts = {task}.attempts + 1, result = v.result, error = v.error, traceback = v.traceback, "
                "duration = v.duration, claim_token = NULL, lease = NULL FROM unnest(%(hashes)s::bytea[], "
                "%(results)s::jsonb[], %(errors)s::text[], %(tracebacks)s::text[], %(durations)s::float8[]) "
                f"AS v(task_hash, result, error, traceback, duration) WHERE {task}.task_hash = v.task_hash "
                f"AND {_overwritten(task, '%(status)s')} RETURNING {task}.task_hash, {task}.pk",
                {**_here(status), **dict(zip(names, map(list, zip(*again)))), "hashes": [stored(r[0]) for r in again]},
            )
            task_pks.update((read(key), pk) for key, pk in cursor.fetchall())
        required_pks = self.keys(db, task, "task_hash", list({required for _, required in edges}))
        inserted = set(new.values())
        for table, column, pairs, pks in (
            (task_parameter, "parameter_pk", links, parameter_pks),
            (dependency, "requires_pk", edges, required_pks),
        ):
            pairs = [(task_pks[one], pks[other]) for one, other in pairs if one in task_pks and other in pks]
            # The links of a task row inserted just now cannot be there yet: copied straight in.
            self._copy_in(db, f"{table} (task_pk, {column})", [pair for pair in pairs if pair[0] in inserted])
            again_pairs = [pair for pair in pairs if pair[0] not in inserted]
            if again_pairs:
                db.execute_sql(
                    f"INSERT INTO {table} (task_pk, {column}) SELECT * FROM unnest(%s::bigint[], %s::bigint[]) "
                    "ON CONFLICT DO NOTHING",
                    tuple(list(column) for column in zip(*again_pairs)),
                )
        return task_pks

    def _copy_new(self, db, tables, status, fresh, missing) -> tuple[dict[str, int], dict[str, int]]:
        """Copy the new task rows ``fresh`` and parameter rows ``missing`` in; their pks, by hash."""
        task, parameter, _, _ = tables
        task_pks, parameter_pks = {}, {}
        for table, rows, pks in ((task, fresh, task_pks), (parameter, missing, parameter_pks)):
            if not rows:
                continue
            # The sequence's name is looked up once (a scalar subquery, which PostgreSQL runs once), not once per
            # key, which cost ten times more than the key itself.
            cursor = db.execute_sql(
                "SELECT now(), array_agg(nextval((SELECT pg_get_serial_sequence(%s, 'pk')::regclass))) "
                "FROM generate_series(1, %s)",
                (table, len(rows)),
            )
            now, keys = cursor.fetchone()
            if table == task:
                here = _here(status)
                same = (status, now, now, now, now if status == DONE else None, here["host"], here["pid"], 1)
                columns = f"pk, {ITEM_COLUMNS}, status, created, started, heartbeat, completed, host, pid, attempts"
                copied = [(pk, *row[:3], stored(row[3]), *row[4:]) for pk, row in zip(keys, rows)]
                self._copy_in(db, f"{task} ({columns})", copied, same)
                pks.update((row[3], pk) for pk, row in zip(keys, rows))
            else:
                columns = "pk, parameter_name, parameter_value, parameter_hash"
                copied = [(pk, name, value, stored(key)) for pk, (name, value, key) in zip(keys, rows)]
                self._copy_in(db, f"{parameter} ({columns})", copied)
                pks.update((row[2], pk) for pk, row in zip(keys, rows))
        return task_pks, parameter_pks

    def _insert_new(self, db, tables, status, fresh, missing) -> tuple[dict[str, int], ...]:
        """:meth:`_copy_new` where some rows may be there by now: through a staging table, ``ON CONFLICT``.

        Returns the pks of the task rows inserted, of those updated (another worker's failed or running row,
        which may have its links already) and of the parameters inserted, by hash.
        """
        task, parameter, _, _ = tables
        db.execute_sql(_STAGING)
        task_pks, updated = {}, {}
        if fresh:
            self._copy_in(db, f"astra_stage_task ({ITEM_COLUMNS})", [(*r[:3], stored(r[3]), *r[4:]) for r in fresh])
            completed = "now()" if status == DONE else "NULL"
            cursor = db.execute_sql(
                f"INSERT INTO {task} ({ITEM_COLUMNS}, status, created, started, heartbeat, completed, host, pid, "
                f"attempts) SELECT *, %(status)s, now(), now(), now(), {completed}, %(host)s, %(pid)s, 1 "
                f"FROM astra_stage_task {_upsert(task)} RETURNING task_hash, pk, xmax = 0",
                _here(status),
            )
            for key, pk, inserted in cursor.fetchall():
                (task_pks if inserted else updated)[read(key)] = pk
        parameter_pks = {}
        if missing:
            staged = [(name, value, stored(key)) for name, value, key in missing]
            self._copy_in(db, "astra_stage_parameter (parameter_name, parameter_value, parameter_hash)", staged)
            cursor = db.execute_sql(
                f"INSERT INTO {parameter} (parameter_name, parameter_value, parameter_hash) "
                "SELECT * FROM astra_stage_parameter ON CONFLICT DO NOTHING RETURNING parameter_hash, pk"
            )
            parameter_pks = {read(key): pk for key, pk in cursor.fetchall()}
        return task_pks, updated, parameter_pks

    def _copy_in(self, db: peewee.Database, target: str, rows: list[Sequence], same: Sequence = ()) -> None:
        """``COPY target FROM STDIN`` with ``rows`` (each followed by ``same``), as any other statement."""
        if rows:
            _copy_from(db, f"COPY {target} FROM STDIN", _copy_text(rows, same))

    def insert_rows(self, db: peewee.Database, model: type[peewee.Model], fields: list, names: str, rows) -> None:
        """One COPY in binary where every column has an encoder, else the rows as one array per column, unpacked
        by unnest(), one statement per chunk."""
        kinds = [_ddl_type(db, field) for field in fields]
        if all(_encoder(kind, field) for kind, field in zip(kinds, fields)) and not _zoned(fields, kinds, rows):
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
            f"INSERT INTO {self.table(model)} ({names}) SELECT {', '.join(selected)} "
            f"FROM unnest({', '.join(arrays)}) AS u({aliases})"
        )
        for chunk in _chunked(list(rows)):
            columns = [
                [pk for pk, _ in chunk]
                if field.name == "task"
                else [field.db_value(row[field.name]) for _, row in chunk]
                for field in fields
            ]
            db.execute_sql(sql, tuple(columns))

    def rewrite_results(self, db: peewee.Database, rewritten: list[tuple[int, str]]) -> None:
        db.execute_sql(
            "UPDATE astra.task SET result = new.result FROM unnest(%s::bigint[], %s::text[]) AS new(pk, result) "
            "WHERE astra.task.pk = new.pk",
            ([pk for pk, _ in rewritten], [text for _, text in rewritten]),
        )

    def results_as_json(self, db: peewee.Database, result: peewee.Field) -> None:
        from playhouse.migrate import migrate

        migrate(self.migrator(db).alter_column_type("task", "result", result, cast="result::jsonb"))

    def claim_new(
        self, db: peewee.Database, tables: tuple[str, ...], row: dict, parameters: list[tuple[str, str, str]]
    ) -> tuple | None:
        task, parameter, task_parameter, _ = tables
        # One statement: look for the row; insert it only if absent (every INSERT takes a value of the pk
        # sequence, even one ON CONFLICT drops, and a waiting worker asks once a second); insert only the
        # parameters not stored yet, for the same reason; link them. All CTEs see one snapshot: a parameter that
        # another process stores at the same moment is neither seen nor inserted, and ``linked`` comes up short.
        sql = f"""
            WITH existing AS (
                SELECT pk, status, host, pid, lease, claim_token, attempts,
                    date_part('epoch', now() - heartbeat) AS silence
                FROM {task} WHERE task_hash = %(task_hash)s
            ), new AS (
                INSERT INTO {task} (task_module, task_name, task_id, task_hash, version, astra_version, status,
                    created, started, heartbeat, host, pid, lease, claim_token, attempts)
                SELECT %(task_module)s, %(task_name)s, %(task_id)s, %(task_hash)s, %(version)s, %(astra_version)s,
                    '{RUNNING}', now(), now(), now(), %(host)s, %(pid)s, %(lease)s, %(claim_token)s, 1
                WHERE NOT EXISTS (SELECT FROM existing)
                ON CONFLICT (task_hash) DO NOTHING
                RETURNING pk
            ), given AS (
                -- Each parameter looked up by its own index probe: as a join, a prepared statement's generic plan
                -- (which guesses 100 parameters) hashes the whole parameter table instead.
                SELECT p ->> 0 AS name, p ->> 1 AS value, decode(p ->> 2, 'hex') AS hash,
                    (SELECT stored.pk FROM {parameter} AS stored
                     WHERE stored.parameter_hash = decode(p ->> 2, 'hex')) AS pk
                FROM json_array_elements(%(parameters)s::json) AS p
            ), added AS (
                INSERT INTO {parameter} (parameter_name, parameter_value, parameter_hash)
                SELECT name, value, hash FROM given
                WHERE pk IS NULL AND EXISTS (SELECT FROM new)
                ON CONFLICT DO NOTHING
                RETURNING pk
            ), linked AS (
                INSERT INTO {task_parameter} (task_pk, parameter_pk)
                SELECT new.pk, p.pk
                FROM new, (SELECT pk FROM given WHERE pk IS NOT NULL UNION ALL SELECT pk FROM added) AS p
                ON CONFLICT DO NOTHING
                RETURNING 1
            )
            SELECT pk, '{RUNNING}', %(host)s, %(pid)s, %(lease)s::float8, %(claim_token)s, 1, 0.0::float8, 1,
                (SELECT count(*) FROM linked) FROM new
            UNION ALL
            SELECT pk, status, host, pid, lease, claim_token, attempts, silence, 0, 0 FROM existing
        """
        # A claim never waits for the disk: if the server crashes just after, the claim is lost and the task is run
        # again, as any task whose worker died. One message, one transaction.
        params = {**row, "task_hash": stored(row["task_hash"]), "parameters": json.dumps(parameters)}
        found = prepared(sql).execute(db, params, before="SET LOCAL synchronous_commit = off").fetchone()
        return tuple(found) if found else None

    def finish(
        self, db: peewee.Database, tables: tuple[str, ...], row: dict, edges: str | None, durable: bool = True
    ) -> tuple[bool, list[str]]:
        task, _, _, dependency = tables
        sql = f"""
            WITH gone AS MATERIALIZED (
                -- Needed tasks not recorded done any more: one probe each of the index that holds the status.
                SELECT key FROM json_array_elements_text(%(needed)s::json) AS key
                WHERE NOT EXISTS (SELECT FROM {task} AS t WHERE t.task_hash = decode(key, 'hex')
                                  AND t.status = '{DONE}')
            ), done AS (
                UPDATE {task} SET status = '{DONE}', completed = now(), heartbeat = now(), duration = %(duration)s,
                    result = %(result)s::jsonb, dynamic_dependencies = %(dynamic)s
                WHERE pk = %(pk)s AND task_hash = %(task_hash)s AND claim_token = %(claim_token)s
                    AND status = '{RUNNING}' AND NOT EXISTS (SELECT FROM gone)
                RETURNING pk
            ), required AS MATERIALIZED (
                -- One index probe per edge (as a join, the generic plan would hash the whole task table).
                SELECT (SELECT t.pk FROM {task} AS t WHERE t.task_hash = decode(edge ->> 0, 'hex')) AS pk,
                    (edge ->> 1)::boolean AS dynamic
                FROM json_array_elements(%(edges)s::json) AS edge
            ), edges AS (
                INSERT INTO {dependency} (task_pk, requires_pk, dynamic)
                SELECT done.pk, required.pk, required.dynamic FROM done, required WHERE required.pk IS NOT NULL
                ON CONFLICT DO NOTHING
            )
            SELECT (SELECT count(*) FROM done), (SELECT coalesce(json_agg(key), '[]') FROM gone)
        """
        # Not durable: the commit is ordered in the WAL but not waited for (~0.3 ms here); a server crash may lose
        # it, and the task runs again. In a transaction, SET LOCAL covers the whole of it (the task's own rows).
        before = "" if durable else "SET LOCAL synchronous_commit = off"
        params = {**row, "task_hash": stored(row["task_hash"]), "edges": edges or "[]"}
        done, gone = prepared(sql).execute(db, params, before=before).fetchone()
        return bool(done), gone if isinstance(gone, list) else json.loads(gone)

    def finish_statements(self, edges: str | None, needed: bool = False) -> int:
        return 1

    def column_types(self, db: peewee.Database, table: str) -> dict[str, tuple[str, bool]]:
        # format_type() names arrays' element types, which information_schema calls ARRAY.
        cursor = db.execute_sql(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            (f'astra."{table}"',),
        )
        return {name: (kind, not_null) for name, kind, not_null in cursor.fetchall()}

    def declared_type(self, db: peewee.Database, field: peewee.Field) -> str:
        kind = re.sub(r",\s+", ",", _ddl_type(db, field).lower())
        for short, long in _FORMAT_TYPES:
            kind = re.sub(short, long, kind)
        return kind

    def stored_dtype(self, db: peewee.Database, table: str, column: str) -> np.dtype | None:
        return None  # the column's type says it: real[], double precision[], ...

    def newest_shapes(
        self, db: peewee.Database, table: str, column: str, rows: int, tasks: list[int] | None = None
    ) -> list[tuple[int, tuple | None]]:
        of_tasks = "WHERE task_pk = ANY(%s)" if tasks is not None else ""
        query = f'SELECT task_pk, array_dims("{column}") FROM astra."{table}" {of_tasks} ORDER BY pk DESC LIMIT %s'
        found = []
        given = (list(tasks), rows) if tasks is not None else (rows,)
        for task_pk, dims in db.execute_sql(query, given).fetchall():  # dims: '[1:3][1:5]', NULL if empty
            bounds = [part.split(":") for part in dims.strip("[]").split("][")] if dims else []
            found.append((task_pk, tuple(int(high) - int(low) + 1 for low, high in bounds) or None))
        return found

    def rewrite_arrays(self, db: peewee.Database, table: str, column: str, dtype: np.dtype) -> None:
        pass  # the type change of the column rewrote them

    def unfit(self, db: peewee.Database, table: str, field: peewee.Field, kind: str) -> tuple[int, object] | None:
        import numpy as np  # only when a column is narrowed

        dtype, source = _narrowed_to(field), kind.removesuffix("[]")
        if dtype is None or source not in ("smallint", "integer", "bigint", "real", "double precision"):
            return None
        if dtype.kind in "iu" and source in ("real", "double precision"):
            # The cast rounds with rint() (half to even), then refuses what is outside the range (NaN included:
            # PostgreSQL sorts it above every number).
            info = np.iinfo(dtype)
            bad = (
                f"NOT (round(v::float8) >= '{float(info.min)!r}'::float8 "
                f"AND round(v::float8) < '{float(info.max) + 1!r}'::float8)"
            )
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            bad = f"v NOT BETWEEN {info.min} AND {info.max}"
        elif dtype == np.float32 and source == "double precision":
            # Overflow and underflow, as the cast's errors: a finite value whose nearest float32 is infinite, or 0.
            bad = (
                "v <> 0 AND v <> 'NaN' AND abs(v) <> 'Infinity' "
                f"AND (abs(v) >= '{_FLOAT32_INFINITE!r}'::float8 OR abs(v) <= '{_FLOAT32_ZERO!r}'::float8)"
            )
        else:
            return None
        column = f'"{field.column_name}"'
        if kind.endswith("[]"):  # each element, in order
            query = (
                f'SELECT t.task_pk, u.v FROM astra."{table}" t CROSS JOIN LATERAL unnest(t.{column}) '
                f"WITH ORDINALITY AS u(v, n) WHERE {bad} ORDER BY t.pk, u.n LIMIT 1"
            )
        else:
            query = (
                f'SELECT task_pk, v FROM (SELECT pk, task_pk, {column} AS v FROM astra."{table}") AS t '
                f"WHERE {bad} ORDER BY pk LIMIT 1"
            )
        found = db.execute_sql(query).fetchone()
        return None if found is None else (found[0], found[1])

    def holds_exactly(self, db: peewee.Database, table: str, column: str, kind: str, declared: str) -> bool:
        return False  # the types say it (output_schema.WIDER)

    def type_change(self, migrator, table: str, field: peewee.Field, declared: str):
        column = f'"{field.column_name}"'
        if declared == "double precision":
            # Through the text PostgreSQL shows: a real's value is its shortest decimal (astra.outputs.as_real), and
            # 5001.1 would otherwise become 5001.10009765625. (Arrays keep the float32's value, as numpy does.)
            column += "::text"
        return migrator.alter_column_type(table, field.column_name, field, cast=f"{column}::{declared}")

    def rows_trigger(self, table: str) -> list[str]:
        return [
            _ROWS_DELETED,
            f'DROP TRIGGER IF EXISTS {_ROWS_TRIGGER} ON astra."{table}"',
            f'CREATE TRIGGER {_ROWS_TRIGGER} AFTER DELETE ON astra."{table}" REFERENCING OLD TABLE AS old_rows '
            "FOR EACH STATEMENT EXECUTE FUNCTION astra.output_rows_deleted()",
            f'DROP TRIGGER IF EXISTS {_ROWS_TRIGGER}_truncate ON astra."{table}"',
            f'CREATE TRIGGER {_ROWS_TRIGGER}_truncate BEFORE TRUNCATE ON astra."{table}" '
            "FOR EACH STATEMENT EXECUTE FUNCTION astra.output_rows_deleted()",
        ]

    def has_rows_trigger(self, db: peewee.Database, table: str) -> bool:
        found = db.execute_sql(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname IN (%s, %s)",
            (f'astra."{table}"', _ROWS_TRIGGER, f"{_ROWS_TRIGGER}_truncate"),
        )
        return found.fetchone()[0] == 2

    @contextlib.contextmanager
    def rewriting(self, db: peewee.Database):
        # A setting of this transaction alone (through a pooler too), which the trigger reads.
        with self.atomic(db):
            db.execute_sql("SELECT set_config('astra.rewriting', 'on', true)")
            yield
            db.execute_sql("SELECT set_config('astra.rewriting', '', true)")


#: The name of the trigger of :meth:`SQLite.rows_trigger` (on SQLite, where names are the database's, with the
#: table's name after it).
_ROWS_TRIGGER = "astra_rows_deleted"

#: PostgreSQL's function behind that trigger: the done tasks of the deleted rows (of a statement, or all of a
#: TRUNCATE) are reopened, each probed by its pk, unless astra itself deletes them (:meth:`PostgreSQL.rewriting`).
_ROWS_DELETED = f"""
create or replace function astra.output_rows_deleted() returns trigger language plpgsql as $$
declare
    reopened bigint[];
begin
    if current_setting('astra.rewriting', true) = 'on' then
        return null;
    end if;
    if tg_op = 'TRUNCATE' then
        execute 'select array(select distinct task_pk from '
            || quote_ident(tg_table_schema) || '.' || quote_ident(tg_table_name) || ')' into reopened;
    else
        reopened := array(select distinct task_pk from old_rows);
    end if;
    update astra.task set status = '{FAILED}', traceback = null,
        error = 'not complete any more: its rows in ' || tg_table_schema || '.' || tg_table_name
            || ' were deleted outside astra'
    where pk = any (reopened) and status = '{DONE}';
    return null;
end $$"""

SQLITE, POSTGRESQL = SQLite(), PostgreSQL()


def _ddl_type(db: peewee.Database, field: peewee.Field) -> str:
    """The column type ``field`` is created with on ``db``."""
    context = db.get_sql_context()
    return context.sql(field.ddl_datatype(context)).query()[0]


#: The numpy dtype a scalar field's column holds in PostgreSQL, by peewee's field type, where it holds fewer values
#: than a double or a 64-bit integer (:meth:`SQLite.unfit`).
_SCALAR_DTYPES = {"SMALLINT": "int16", "INT": "int32", "BIGINT": "int64", "FLOAT": "float32"}

#: The least magnitude of a double whose nearest float32 is infinite (halfway between the largest float32 and 2**128,
#: which rounds to even: up), and the greatest of one whose nearest float32 is 0 (half the least float32 above 0).
_FLOAT32_INFINITE = 2.0**128 - 2.0**103
_FLOAT32_ZERO = 2.0**-150


def _narrowed_to(field: peewee.Field) -> np.dtype | None:
    """The numpy dtype of the values ``field``'s column holds (of an ArrayField, its elements), for the types that
    may not hold every value of another (an integer type, float32); None for the others."""
    import numpy as np

    if hasattr(field, "dtype"):  # an astra.ArrayField
        return np.dtype(field.dtype)
    name = _SCALAR_DTYPES.get(field.field_type)
    return None if name is None else np.dtype(name)


def _narrowed(values: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """``values`` cast to ``dtype`` as PostgreSQL casts them, and where ``dtype`` cannot hold them (a mask; their
    cast is then no value). A float made an integer is rounded half to even (PostgreSQL's rint(), numpy's
    ``np.rint``), and NaN, an infinity or a number outside the integer type's range cannot be held; a finite float
    made a narrower float cannot be where it would become an infinity or 0 (PostgreSQL's overflow and underflow
    errors; numpy's cast gives them silently)."""
    import numpy as np

    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        if dtype.kind in "iu" and values.dtype.kind == "f":
            info = np.iinfo(dtype)
            rounded = np.rint(values)
            bad = ~((rounded >= float(info.min)) & (rounded < float(info.max) + 1))  # NaN: neither
            return np.where(bad, 0, rounded).astype(dtype), bad
        if dtype.kind in "iu" and values.dtype.kind in "iu":
            info = np.iinfo(dtype)
            return values.astype(dtype), (values < info.min) | (values > info.max)
        cast = values.astype(dtype)
        if dtype.kind == "f" and values.dtype.kind == "f":
            return cast, (np.isfinite(values) & ~np.isfinite(cast)) | ((cast == 0) & (values != 0))
        return cast, np.zeros(values.shape, dtype=bool)


#: peewee's names of PostgreSQL types and format_type()'s (what the catalog says), as regular expressions.
_FORMAT_TYPES = [
    (r"^timestamptz\b", "timestamp with time zone"),
    (r"^timestamp\b(?! with)", "timestamp without time zone"),
    (r"^time\b(?! with)", "time without time zone"),
    (r"^varchar\b", "character varying"),
    (r"^char\b", "character"),
    (r"^decimal\b", "numeric"),
    (r"^bigserial\b", "bigint"),
    (r"^serial\b", "integer"),
    (r"^int\b", "integer"),
]


class Prepared:
    """A PostgreSQL statement planned once per connection (``PREPARE``), then only executed.

    Planning the claim's CTEs takes about as long as running them. The statement is prepared in the same message
    as its first execution on each connection, so a new connection (after a reconnect) prepares it again. Only
    where the server session outlives the transaction (not behind a pooler in transaction mode, see
    :mod:`astra.database.session`), and only outside a transaction: there, if the session turns out not to have it
    (``DISCARD ALL``, a pooler that handed over another session) or to have it already, the statement is sent again
    the other way, and should that fail too, the session is not kept and the plain statement is sent from then on
    (each attempt is one message, one transaction: a statement that failed this way ran nothing). Inside a
    transaction such an error would abort the transaction and lose what it wrote, so the plain statement is sent.
    """

    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", sql)))
        positional = re.sub(r"%\((\w+)\)s", lambda m: f"${self.names.index(m.group(1)) + 1}", sql)
        self.name = "astra_" + hashlib.sha1(positional.encode()).hexdigest()[:16]
        self.prepare = f"PREPARE {self.name} AS {positional}"
        self.run = f"EXECUTE {self.name} ({', '.join(['%s'] * len(self.names))})"
        #: The connections (psycopg2's) on which the statement is known to be prepared.
        self.connections: weakref.WeakSet = weakref.WeakSet()

    def execute(self, db: peewee.Database, params: dict, before: str = ""):
        """Run the statement with ``params`` (by name) after the statement ``before``; the cursor."""
        if db.in_transaction() or not getattr(db, "keeps_session", True):
            return self._plain(db, params, before)
        values = tuple(params[name] for name in self.names)
        connection = db.connection()
        prepared = connection in self.connections
        try:
            sql = (before, self.run) if prepared else (before, self.prepare, self.run)
            cursor = db.execute_sql("; ".join(filter(None, sql)), values)
        except peewee.DatabaseError as exc:
            # Not there after all (26000), or there already (42P05; a PREPARE stays even when the EXECUTE sent with
            # it fails): the other way. Anything else is the statement's own error.
            self.connections.discard(connection)
            code = _code(exc)
            if code not in _SESSION_LOST:
                raise
            sql = (before, self.prepare, self.run) if code == "26000" else (before, self.run)
            try:
                cursor = db.execute_sql("; ".join(filter(None, sql)), values)
            except peewee.DatabaseError as again:
                if _code(again) not in _SESSION_LOST:
                    raise
                # Both ways wrong: each message meets another session, as behind a pooler in transaction mode.
                logger.warning(
                    "astra: %s keeps no session between transactions (a connection pooler?): no statement is "
                    "prepared from now on; set [astra] pooler = transaction to say so",
                    getattr(db, "description", "the database"),
                )
                db.keeps_session = False
                return self._plain(db, params, before)
        self.connections.add(db.connection())
        return cursor

    def _plain(self, db: peewee.Database, params: dict, before: str):
        """The statement sent as it is, planned afresh: it needs nothing of the session."""
        return db.execute_sql("; ".join(filter(None, (before, self.sql))), params)


#: SQLSTATEs of a prepared statement the session does not have (26000) or has already (42P05).
_SESSION_LOST = ("26000", "42P05")


def _code(exc: peewee.DatabaseError) -> str | None:
    return getattr(exc.__context__, "pgcode", None)  # psycopg2's error, which peewee's replaced


_prepared: dict[str, Prepared] = {}


def prepared(sql: str) -> Prepared:
    """The :class:`Prepared` statement of ``sql`` (with ``%(name)s`` placeholders), made once per process."""
    if sql not in _prepared:
        _prepared[sql] = Prepared(sql)
    return _prepared[sql]


# PostgreSQL's bulk insert of output rows (PostgreSQL.insert_rows).


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


def _zoned(fields, kinds, rows) -> bool:
    """Whether a time among ``rows`` needs the session's time zone, which binary COPY would take for UTC: an aware
    time in a ``timestamp`` column, a naive one in a ``timestamptz`` column. The server converts those."""
    for field, kind in zip(fields, kinds):
        if kind in ("TIMESTAMP", "TIMESTAMPTZ") and field.name != "task":
            for _, row in rows:
                value = row.get(field.name)
                if isinstance(value, datetime.datetime) and (value.tzinfo is not None) == (kind == "TIMESTAMP"):
                    return True
    return False


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
    import numpy as np  # only when output rows are written: numpy is ~0.1 s to import

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
    _copy_from(db, f"COPY {POSTGRESQL.table(model)} ({names}) FROM STDIN WITH (FORMAT binary)", buffer)


def _copy_from(db: peewee.Database, sql: str, data: io.IOBase) -> None:
    """``sql``, a ``COPY ... FROM STDIN``, with ``data``; errors as peewee's, and a lost connection handled as for
    any other statement by astra's databases (``copy_from`` of astra.database.connection.Reconnecting)."""
    copy_from = getattr(db, "copy_from", None)
    if copy_from is not None:
        copy_from(sql, data)
        return
    with peewee.__exception_wrapper__:
        db.cursor().copy_expert(sql, data)


#: The references of ``astra.task_parameter`` as schema 9 checks them: triggers that look at each statement's links
#: at once, where foreign keys ran a query per link (the same text as in schema/astradb/astradb.sql, which says why
#: this is safe against concurrent writers; tests/test_links.py checks they agree).
_OLDER_WRITERS_SAID = (
    "astra: this database keeps task hashes as 32 bytes (astra schema 11 and later), and an astra older than that "
    "wrote one as text: stop its workers, and run the astra that upgraded the database"
)
_OLDER_WRITERS_REFUSED = f"""
CREATE TRIGGER IF NOT EXISTS task_hash_as_bytes BEFORE INSERT ON task WHEN typeof(new.task_hash) <> 'blob'
BEGIN
    SELECT RAISE(ABORT, '{_OLDER_WRITERS_SAID}');
END
"""

_LINK_CHECKS = """
create or replace function astra.task_parameter_check() returns trigger language plpgsql as $$
begin
    if current_setting('transaction_isolation') <> 'read committed' then
        -- This snapshot may predate a delete: lock the rows as a foreign key does, which fails on a deleted one.
        perform from astra.task as t where t.pk in (select task_pk from new_links) for key share of t;
        perform from astra.parameter as p where p.pk in (select parameter_pk from new_links) for key share of p;
    end if;
    -- One index probe per key, written so that no plan can scan the whole table instead: the plan is kept for
    -- the session, and the statement that made it may have had a thousand times fewer or more links.
    if exists (select from (select distinct task_pk from new_links) as l
               where (select t.pk from astra.task as t where t.pk = l.task_pk) is null) then
        raise foreign_key_violation using message = 'astra.task_parameter: a link to a task not in astra.task';
    end if;
    if exists (select from (select distinct parameter_pk from new_links) as l
               where (select p.pk from astra.parameter as p where p.pk = l.parameter_pk) is null) then
        raise foreign_key_violation
            using message = 'astra.task_parameter: a link to a parameter not in astra.parameter';
    end if;
    return null;
end $$;

create or replace function astra.task_deleted() returns trigger language plpgsql as $$
begin
    if current_setting('transaction_isolation') <> 'read committed' then
        raise exception 'astra: delete from astra.task in a READ COMMITTED transaction (see astra.task_parameter)'
            using errcode = 'feature_not_supported';
    end if;
    lock table astra.task_parameter in share row exclusive mode;  -- see above: the links of concurrent writers
    delete from astra.task_parameter where task_pk = any (array(select pk from old_rows));  -- by its index
    return null;
end $$;

create or replace function astra.parameter_deleted() returns trigger language plpgsql as $$
begin
    if current_setting('transaction_isolation') <> 'read committed' then
        raise exception 'astra: delete from astra.parameter in a READ COMMITTED transaction (see astra.task_parameter)'
            using errcode = 'feature_not_supported';
    end if;
    lock table astra.task_parameter in share row exclusive mode;  -- see above: the links of concurrent writers
    if exists (select from astra.task_parameter where parameter_pk = any (array(select pk from old_rows))) then
        raise foreign_key_violation using message = 'astra.parameter: a parameter still linked to a task';
    end if;
    return null;
end $$;

-- A task or parameter keeps its pk, and is truncated only together with astra.task_parameter.
create or replace function astra.links_kept() returns trigger language plpgsql as $$
begin
    if tg_op = 'UPDATE' then
        raise foreign_key_violation using message = 'astra.' || tg_table_name || ': a pk is never changed';
    end if;
    if exists (select from astra.task_parameter) then
        raise foreign_key_violation
            using message = 'astra.' || tg_table_name || ': truncate it together with astra.task_parameter';
    end if;
    return null;
end $$;

drop trigger if exists task_parameter_inserted on astra.task_parameter;
create trigger task_parameter_inserted after insert on astra.task_parameter
    referencing new table as new_links for each statement execute function astra.task_parameter_check();
drop trigger if exists task_parameter_updated on astra.task_parameter;
create trigger task_parameter_updated after update on astra.task_parameter
    referencing new table as new_links for each statement execute function astra.task_parameter_check();
drop trigger if exists task_deleted on astra.task;
create trigger task_deleted after delete on astra.task
    referencing old table as old_rows for each statement execute function astra.task_deleted();
drop trigger if exists parameter_deleted on astra.parameter;
create trigger parameter_deleted after delete on astra.parameter
    referencing old table as old_rows for each statement execute function astra.parameter_deleted();
drop trigger if exists task_pk_kept on astra.task;
create trigger task_pk_kept before update of pk on astra.task
    for each row when (old.pk <> new.pk) execute function astra.links_kept();
drop trigger if exists parameter_pk_kept on astra.parameter;
create trigger parameter_pk_kept before update of pk on astra.parameter
    for each row when (old.pk <> new.pk) execute function astra.links_kept();
drop trigger if exists task_truncated on astra.task;
create trigger task_truncated after truncate on astra.task
    for each statement execute function astra.links_kept();
drop trigger if exists parameter_truncated on astra.parameter;
create trigger parameter_truncated after truncate on astra.parameter
    for each statement execute function astra.links_kept();
"""

#: The advisory lock a forget holds: a key of astra's own (the bytes of "astrafor").
_FORGET_LOCK = int.from_bytes(b"astrafor", "big") >> 1
#: The advisory lock an upgrade holds (the bytes of "astraupg").
_UPGRADE_LOCK = int.from_bytes(b"astraupg", "big") >> 1

#: The foreign keys of ``astra.task_parameter`` before schema 9, whatever their names.
_DROP_LINK_KEYS = """
do $$
declare name text;
begin
    for name in select conname from pg_constraint
                where conrelid = 'astra.task_parameter'::regclass and contype = 'f' loop
        execute 'alter table astra.task_parameter drop constraint ' || quote_ident(name);
    end loop;
end $$
"""


def _here(status: str) -> dict:
    return {"status": status, "host": socket.gethostname(), "pid": os.getpid()}


#: Per connection, created on first use: rows on their way in, gone at the end of each transaction.
_STAGING = (
    "SET LOCAL client_min_messages = warning; "  # not a notice per chunk that the tables exist
    "CREATE TEMPORARY TABLE IF NOT EXISTS astra_stage_task (task_module text, task_name text, task_id text, "
    "task_hash bytea, version text, astra_version text, result jsonb, error text, traceback text, "
    "duration double precision) ON COMMIT DELETE ROWS; "
    "CREATE TEMPORARY TABLE IF NOT EXISTS astra_stage_parameter (parameter_name text, parameter_value text, "
    "parameter_hash bytea) ON COMMIT DELETE ROWS; "
    "DELETE FROM astra_stage_task; DELETE FROM astra_stage_parameter"
)

#: What COPY's text format writes as a backslash escape.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(rows: Sequence[Sequence], same: Sequence = ()) -> io.StringIO:
    """``rows``, each followed by the values ``same``, in COPY's text format (tab-separated, ``\\N`` for NULL)."""
    tail = "".join(["\t" + _copy_value(value) for value in same]) + "\n"
    text = _copy_text_plain(rows, tail)
    if text is None:
        escapes = _COPY_ESCAPES
        lines = [
            "\t".join(
                [v.translate(escapes) if v.__class__ is str else "\\N" if v is None else _copy_value(v) for v in row]
            )
            + tail
            for row in rows
        ]
        text = "".join(lines)
    return io.StringIO(text)


def _copy_text_plain(rows: Sequence[Sequence], tail: str) -> str | None:
    """:func:`_copy_text`'s text where no value needs an escape (the usual case), else None.

    A column at a time, so that the work per value is done by ``map`` and ``join``: this runs for every value of
    a million items. Numbers never need an escape; text is looked through once, a column at a time.
    """
    if len(set(map(len, rows))) != 1:
        return None  # no rows, or rows of different lengths
    kinds = [set(map(type, column)) for column in zip(*rows)]
    if all(kind == {int} for kind in kinds) and set(map(type, rows)) == {tuple}:  # keys: a format does it all
        return "".join(map(("\t".join(["%d"] * len(kinds)) + tail.replace("%", "%%")).__mod__, rows))
    columns = []
    for column, kind in zip(zip(*rows), kinds):
        if kind == {str}:
            if _needs_escape("".join(column)):
                return None
            columns.append(column)
        elif kind <= {int, float}:
            columns.append(map(str, column))
        elif kind == {bytes}:
            columns.append(map(_copy_bytes, column))
        elif kind == {type(None)}:
            columns.append(("\\N",) * len(column))
        elif kind == {str, type(None)}:
            if _needs_escape("".join(filter(None, column))):
                return None
            columns.append(["\\N" if v is None else v for v in column])
        else:
            return None
    return tail.join(map("\t".join, zip(*columns))) + tail


def _needs_escape(text: str) -> bool:
    return "\\" in text or "\t" in text or "\n" in text or "\r" in text


def _copy_value(value: object) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    if isinstance(value, bytes):
        return _copy_bytes(value)
    return str(value)


def _copy_bytes(value: bytes) -> str:
    """A ``bytea`` in COPY's text format: its hex input form, whose backslash COPY wants escaped."""
    return "\\\\x" + value.hex()


def _overwritten(task: str, status: str) -> str:
    """When a batch's record of a task (of ``status``, an SQL expression) replaces its row: a failed row, and a
    running one by a done record (the process that holds it finds the task done at its own record). A done row
    stays, and so does a running one that a failure would take from its holder."""
    return f"({task}.status = '{FAILED}' OR ({task}.status = '{RUNNING}' AND {status} = '{DONE}'))"


def _upsert(task: str) -> str:
    """A task row recorded again by a batch, where :func:`_overwritten`."""
    return (
        f"ON CONFLICT (task_hash) DO UPDATE SET status = excluded.status, started = excluded.started, "
        f"heartbeat = excluded.heartbeat, completed = excluded.completed, duration = excluded.duration, "
        f"host = excluded.host, pid = excluded.pid, attempts = {task}.attempts + 1, result = excluded.result, "
        f"error = excluded.error, traceback = excluded.traceback, claim_token = NULL, lease = NULL "
        f"WHERE {_overwritten(task, 'excluded.status')}"
    )


def dialect(db: peewee.Database | peewee.DatabaseProxy | None) -> SQLite:
    """The dialect of ``db`` (a proxy stands for the database it points to; an unbound one for PostgreSQL's,
    whose schema the models name by default)."""
    if isinstance(db, peewee.DatabaseProxy):
        db = db.obj
    return SQLITE if isinstance(db, peewee.SqliteDatabase) else POSTGRESQL


def of_model(model: type[peewee.Model]) -> SQLite:
    """The dialect of the database ``model`` is bound to."""
    return dialect(model._meta.database)


class SchemaFromDialect(peewee.Metadata):
    """Model metadata whose schema is the dialect's of the database the model is bound to: ``astra`` on
    PostgreSQL, none on SQLite. The one place that decides whether astra's tables carry the ``astra.`` prefix.

    A schema set by hand (``model._meta.schema = ...``) is ignored; a model bound to no database names PostgreSQL's.
    """

    @property
    def schema(self) -> str | None:
        return dialect(self.database).schema

    @schema.setter
    def schema(self, value: str | None) -> None:
        self._schema = value  # set by peewee as the model is made; not what the model uses

    @property
    def table(self) -> peewee.Table:
        schema = self.schema
        if self._table is None or self._table._schema != schema:
            self._table = peewee.Table(
                self.table_name,
                [field.column_name for field in self.sorted_fields],
                schema=schema,
                _model=self.model,
                _database=self.database,
            )
        return self._table

    @table.deleter
    def table(self) -> None:
        self._table = None

    @property
    def entity(self) -> peewee.Entity:
        schema = self.schema
        return peewee.Entity(schema, self.table_name) if schema else peewee.Entity(self.table_name)


class DialectIndex(peewee.ModelIndex):
    """An index declared with the model (a partial one, say, which ``Meta.indexes`` cannot express) whose table is
    the model's as it is created: ``astra.task`` on PostgreSQL, ``task`` on SQLite (peewee's own would keep the
    table of the moment it was declared)."""

    @property
    def _table(self) -> peewee.Table:
        return self._model._meta.table

    @_table.setter
    def _table(self, value: peewee.Table) -> None:
        pass  # set by Index.__init__; the model's metadata decides


class CoveringIndex(DialectIndex):
    """An index that also holds the columns ``include`` where the dialect allows it (PostgreSQL's ``INCLUDE``), so
    that a query reading only its key and those columns is answered from the index alone; a plain one elsewhere."""

    def __init__(self, *args, include: tuple[str, ...], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.include = include

    def __sql__(self, ctx):
        super().__sql__(ctx)
        if dialect(self._model._meta.database).index_includes:
            ctx.literal(f" INCLUDE ({', '.join(self.include)})")
        return ctx
