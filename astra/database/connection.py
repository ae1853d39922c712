"""Opening the database: one lazily opened connection per process, chosen by the ``[astra]`` settings.

:data:`DATABASE` (a :class:`Database`) owns it; :func:`database` is the way in. What differs between SQLite and
PostgreSQL once a database is open lives in :mod:`astra.database.dialect`.

Order of precedence: ``--astra-database-url`` on the luigi command line, ``$ASTRA_DATABASE_URL``,
``[astra] database_url``, ``[astra] profile`` (through sdssdb), then an SQLite file at ``~/.astra/astra.db``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import peewee

from astra import config
from astra.database import versions
from astra.database.dialect import POSTGRESQL, SQLite, dialect
from astra.database.models import MODELS, proxy
from astra.database.session import SharedSession
from astra.database.urls import MIN_SECRET, BadURLError, mask_password, postgres_connect_kwargs
from astra.version import __version__

SCHEMA_SQL = Path(__file__).with_name("astradb.sql")

#: How many times this process has lost its PostgreSQL connection. What it learnt before may be gone with the
#: server: done records commit without waiting for the disk (synchronous_commit off), and a crash loses the last.
connections_lost = 0

#: How many times this process has moved to another database, its settings changed (a notebook's second run): what
#: it learnt of the first is not true of the other.
databases_changed = 0

#: Whether this process waited ``[astra] reconnect_seconds`` for the server in vain: then it tries once, not for a
#: minute, each time (a run of a thousand tasks would otherwise wait a minute for each, twice: its record, then its
#: failure).
_gave_up = False

logger = logging.getLogger("luigi-interface")

F = TypeVar("F", bound=Callable)


class DatabaseNotReady(SystemExit):
    """The database cannot be used at all: not reachable, unknown profile, or schema not loaded.

    A ``SystemExit`` on purpose: luigi turns an ordinary exception in ``complete()`` into a traceback for every
    task and carries on, whereas nothing can work without the database, so the luigi command stops with this
    one line instead.
    """


class DatabaseError(RuntimeError):
    """A query failed after the database had been opened (e.g. the server restarted and did not come back)."""


@contextlib.contextmanager
def trying_once() -> Iterator[None]:
    """Inside, a lost connection is tried again once, not for ``[astra] reconnect_seconds``: for what may do
    without the database (the judgement at the end of a luigi run, whose tasks may have found the server gone)."""
    global _gave_up
    before, _gave_up = _gave_up, True
    try:
        yield
    finally:
        _gave_up = before and _gave_up  # as before, unless a reconnect inside found the server back


class DatabaseGoneError(DatabaseError):
    """The server did not come back within ``[astra] reconnect_seconds``: this process waits for it no more."""


class ConnectionLostError(DatabaseError):
    """The connection to PostgreSQL was lost inside a transaction: the server rolled it back, nothing was written."""


class ConflictError(DatabaseError):
    """PostgreSQL rolled a transaction back to end a deadlock with another one (or a serialization failure):
    nothing of it was written, and it may simply run again."""


#: SQLSTATEs of a transaction the server rolled back for a conflict with another: deadlock, serialization failure.
_CONFLICTS = ("40P01", "40001")


class ReadOnlyDatabaseError(DatabaseError):
    """A write refused by a read-only PostgreSQL server (a hot standby, or ``default_transaction_read_only``), or by
    an SQLite file this process may only read."""


class DiskFullError(DatabaseError):
    """The database's disk is full: the transaction that needed the space was not recorded."""


class DatabaseCancelledError(DatabaseError):
    """PostgreSQL cancelled a statement (SQLSTATE 57014): its ``statement_timeout`` ran out, or someone cancelled it
    (``pg_cancel_backend``). The transaction it was in was not recorded."""


class DatabaseLockedError(DatabaseError):
    """Another process held an SQLite database's write lock for longer than ``[astra] sqlite_lock_timeout``."""


class LockWaitingSqliteDatabase(peewee.SqliteDatabase):
    """The SQLite database astra opens: a write lock that another process keeps past the busy timeout is one line,
    and so is a full disk.

    SQLite says only "database is locked"; this says which file, how long it waited, why and what to do.
    """

    lock_timeout = 60.0
    #: The file this process opened, as (device, inode): a path that names another file now was deleted or replaced.
    file_id: tuple[int, int] | None = None

    def execute_sql(self, sql, params=None):
        if not self.in_transaction():  # a transaction checked as it began
            self.check_same_file()
        try:
            return super().execute_sql(sql, params)
        except peewee.OperationalError as exc:
            self._explain(exc)
            raise

    def begin(self, *args, **kwargs):
        self.check_same_file()
        try:
            return super().begin(*args, **kwargs)
        except peewee.OperationalError as exc:
            self._explain(exc)
            raise

    def check_same_file(self) -> None:
        """Raise DatabaseError if the file was deleted or replaced since this process opened it: SQLite would go on
        writing into the deleted one, and everything recorded there would go with it, unseen (a run ended done)."""
        if self.file_id is not None and _file_id(self.database) != self.file_id:
            raise DatabaseError(_replaced(self.database))

    def commit(self):
        try:
            return super().commit()
        except peewee.OperationalError as exc:
            self._explain(exc)
            raise

    def many(self, sql: str, rows) -> None:
        """``sql`` for each of ``rows`` by SQLite's own ``executemany`` (in this process: no round trips to save),
        its errors said as every statement's are."""
        try:
            with peewee.__exception_wrapper__:
                self.cursor().executemany(sql, rows)
        except peewee.OperationalError as exc:
            self._explain(exc)
            raise

    def rollback(self):
        # A COMMIT that failed for want of space has ended the transaction already (SQLite rolls it back): a ROLLBACK
        # now would fail, and its error would replace the one that says why.
        connection = self._state.conn
        if connection is not None and not connection.in_transaction:
            return None
        return super().rollback()

    def _explain(self, exc: peewee.OperationalError) -> None:
        """Raise :class:`DatabaseLockedError` if ``exc`` is SQLite's busy timeout running out, and
        :class:`DiskFullError` if its disk (or ``max_page_count``) is full."""
        if "database or disk is full" in str(exc):
            raise DiskFullError(
                f"astra: SQLite database {self.database} could not grow: its disk is full, so nothing of this "
                "transaction was recorded; free space there, or point ASTRA_DATABASE_URL (or [astra] database_url) "
                "at a database on another disk"
            ) from None
        if "readonly database" in str(exc):  # a command that only reads opened it (see only_reading)
            raise ReadOnlyDatabaseError(
                f"astra: SQLite database {self.database} is read-only; record, forget and db init/upgrade/migrate "
                "where it can be written; results and tasks list/show/why work here"
            ) from None
        if "database is locked" in str(exc):
            raise DatabaseLockedError(
                f"astra: SQLite database {self.database} stayed locked by another writer for "
                f"{self.lock_timeout:g} s ([astra] sqlite_lock_timeout), e.g. a task writing inside a long "
                "completion() block; run again once it is done, raise the timeout, or use PostgreSQL"
            ) from None


class Reconnecting:
    """Mixin for a peewee PostgresqlDatabase: reopen a lost connection and run the statement again.

    Only statements outside a transaction are run again. Inside a transaction the server has already rolled
    back everything the transaction did, so repeating only the last statement would be wrong: that raises
    :class:`ConnectionLostError`, and :func:`retried` runs a whole self-contained transaction again instead.
    """

    description = ""
    #: Texts no message may show (the password), in case the driver echoes them in an error.
    secrets: tuple[str, ...] = ()

    def execute_sql(self, sql, params=None):
        return self._again(lambda: self._execute(sql, params))

    def _execute(self, sql, params):
        try:
            return super().execute_sql(sql, params)
        except peewee.InternalError as exc:
            self._refused(exc)
            raise

    def begin(self, *args, **kwargs):
        return self._again(lambda: super(Reconnecting, self).begin(*args, **kwargs))

    #: How many times in a row one statement runs again on a new connection that was lost too: a server that
    #: restarts twice, or whose backends are being terminated, meets the next run; one that cuts each new connection
    #: at once (or a statement that ends its own session) ends in one line, not a loop.
    RERUNS = 5

    def _again(self, run):
        """``run()``, run again on a new connection after each loss of the connection outside a transaction."""
        for rerun in range(self.RERUNS + 1):
            try:
                return run()
            except (peewee.OperationalError, peewee.InterfaceError) as exc:
                if rerun == self.RERUNS and self._lost() and not self.in_transaction():
                    self._discard()
                    raise ConnectionLostError(
                        f"astra: lost the connection to {self.description} {rerun + 1} times in a row, each time "
                        f"right after reconnecting, on one statement: {self._why(exc)}"
                    ) from exc
                self._recover(exc)
        raise AssertionError("unreachable")

    def commit(self):
        try:
            return super().commit()
        except (peewee.OperationalError, peewee.InterfaceError) as exc:
            if not self._lost():
                raise
            raise ConnectionLostError(
                f"astra: lost the connection to {self.description} while committing a transaction: {self._why(exc)}"
            ) from exc

    def rollback(self):
        if self._lost():
            self._discard()  # the server ended the transaction together with the connection
            return None
        try:
            return super().rollback()
        except (peewee.OperationalError, peewee.InterfaceError):
            # Found lost only now (its last statement was before the server went): ended with it all the same. A
            # rollback on the way out of an error must not replace that error (e.g. a helper's lost connection).
            if not self._lost():
                raise
            self._discard()
            return None

    def copy_from(self, sql: str, data) -> None:
        """``sql``, a ``COPY ... FROM STDIN``, with the file ``data``: run again, or raised, as any statement is."""

        def copy():
            data.seek(0)
            return self._copy(sql, data)

        return self._again(copy)

    def _copy(self, sql: str, data) -> None:
        try:
            with peewee.__exception_wrapper__:
                self.cursor().copy_expert(sql, data)
        except peewee.InternalError as exc:
            self._refused(exc)
            raise

    def _refused(self, exc: peewee.DatabaseError) -> None:
        """Raise :class:`ReadOnlyDatabaseError` if ``exc`` is a write refused by a read-only server (SQLSTATE 25006):
        a user pointed astra at a replica, whose readers work and whose writers can only be told where to go;
        :class:`DiskFullError` if the server's disk is full (53100); and :class:`DatabaseCancelledError` if the
        server cancelled the statement (57014)."""
        code = getattr(exc.__context__, "pgcode", None)
        if code == "53100":
            raise DiskFullError(
                f"astra: {self.description} could not write: the server's disk is full ({self._why(exc)}), so "
                "nothing of this transaction was recorded; free space on the server, then run again"
            ) from None
        if code == "57014":
            # A statement_timeout set for the database or role (ALTER DATABASE ... SET statement_timeout) also
            # cancels astra's own statements, e.g. a batch's COPY of a large chunk: a traceback would not say so.
            raise DatabaseCancelledError(
                f"astra: {self.description} cancelled a statement ({self._why(exc)}), so nothing of its transaction "
                "was recorded; run again, and if a statement_timeout set on the server (SHOW statement_timeout) "
                "cancelled it, raise it for astra's role or database (ALTER ROLE ... SET statement_timeout = ...), "
                "or give a batch a smaller chunk_size"
            ) from None
        if code == "25006":
            raise ReadOnlyDatabaseError(
                f"astra: {self.description} is read-only ({self._why(exc)}: a hot standby, or "
                "default_transaction_read_only); record, forget and db init/upgrade/migrate on its primary "
                "(ASTRA_DATABASE_URL or [astra] database_url); results and tasks list/show/why work here"
            ) from None

    def _why(self, exc: BaseException) -> str:
        return _reason(exc, self.secrets)

    def _lost(self) -> bool:
        connection = self._state.conn
        return connection is None or self._state.closed or bool(getattr(connection, "closed", False))

    def _discard(self) -> None:
        self._state.reset()

    def _recover(self, exc: Exception) -> None:
        """Reopen the connection after ``exc`` if it was lost, or raise."""
        if not self._lost():
            if getattr(exc.__context__, "pgcode", None) in _CONFLICTS:
                raise ConflictError(
                    f"astra: {self.description} rolled a transaction back to end a deadlock with another one "
                    f"({self._why(exc)}): nothing of it took effect, and it is safe to run again"
                ) from exc
            self._refused(exc)
            raise exc
        if self.in_transaction():
            raise ConnectionLostError(
                f"astra: lost the connection to {self.description} inside a transaction, which the server rolled "
                f"back: {self._why(exc)}"
            ) from exc
        self._discard()
        self.reconnect(exc)

    def reconnect(self, exc: Exception) -> None:
        """Open a new connection, trying for up to ``[astra] reconnect_seconds``; raise DatabaseGoneError if none
        opens."""
        global connections_lost, _gave_up
        connections_lost += 1
        logger.warning("astra: lost the connection to %s (%s); reconnecting", self.description, self._why(exc))
        window = config.settings().reconnect_seconds
        deadline = time.monotonic() + (0.0 if _gave_up else window)
        pause = 0.2
        while True:
            try:
                peewee.Database.connect(self)  # the profile-aware connect() of sdssdb would start from scratch
                logger.info("astra: reconnected to %s", self.description)
                _gave_up = False
                return
            except peewee.OperationalError as error:
                self._discard()
                if time.monotonic() + pause > deadline:
                    waited = "again" if _gave_up else f"within {window:g} s ([astra] reconnect_seconds)"
                    _gave_up = True
                    raise DatabaseGoneError(
                        f"astra: lost the connection to {self.description} and could not reconnect {waited}: "
                        f"{self._why(error)}"
                    ) from None
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


class ReconnectingPostgresqlDatabase(SharedSession, Reconnecting, peewee.PostgresqlDatabase):
    """The PostgreSQL database astra opens from a URL: one connection per process, which reconnects."""


def _reason(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """The first line of ``exc``'s message, with any of ``secrets`` masked."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return _hide(lines[0] if lines else type(exc).__name__, secrets)


def _hide(text: str, secrets: tuple[str, ...]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_SECRET:
            text = text.replace(secret, "***")
    return text


def retried(function: F) -> F:
    """Run ``function``, a self-contained transaction, again if the connection was lost inside it, or the server
    rolled it back to end a deadlock with another transaction (the other then goes on: this one runs after it).

    Safe only for functions whose transaction can simply be repeated; inside a caller's transaction the error
    goes to the caller, whose earlier statements were lost too.
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        for attempt in range(3):
            try:
                return function(*args, **kwargs)
            except (ConnectionLostError, ConflictError) as exc:
                if attempt == 2 or database().in_transaction():
                    raise
                logger.warning("%s; running the transaction again", exc)
                if isinstance(exc, ConflictError):  # a moment, at random, for the other one to take its locks
                    time.sleep(random.uniform(0.05, 0.5))
        raise AssertionError("unreachable")

    return wrapper


def _settings_key() -> tuple[str, str, str]:
    url = _url_override()
    if url:
        return url, "", ""
    settings = config.settings()
    return settings.database_url, settings.profile, settings.dbname


def _url_override() -> str:
    """A URL that beats luigi.cfg: from the luigi command line, else from the environment (cheap to ask)."""
    return config.command_line_value("database_url") or os.environ.get(config.DATABASE_URL_ENV, "")


class Database:
    """The database of this process: its peewee connection, where it points, and who opened it.

    Opened lazily by :meth:`get` from the settings, and opened again when they change. A forked child opens its
    own connection on first use and never closes its parent's: closing (or garbage-collecting) the parent's
    connection object would end the session the parent is still using over the same socket, so the child keeps
    that one object alive, unused, in :attr:`inherited` (which already holds its grandparent's, and so on: one per
    generation of processes, never more than one per process).
    """

    def __init__(self) -> None:
        self.pid: int | None = None  # the process that opened :attr:`db`
        self.key: tuple | None = None  # the settings it was opened from
        self.db: peewee.Database | None = None
        self.description = ""
        self.inherited: tuple[peewee.Database, ...] = ()
        self.reading_only = False  # see only_reading()
        #: What :attr:`key` was read from (:func:`astra.config.sources`): while it is the same, so is the key.
        self.sources: tuple | None = None
        self.existing_only = False  # see only_existing()

    def get(self) -> peewee.Database:
        """The database of this process, opened (and, for SQLite, created) on first use."""
        pid = os.getpid()
        sources = config.sources()  # reading the settings costs more than a use of the database: only if these change
        if self.pid == pid and self.db is not None and config.same_sources(self.sources, sources):
            return self.db
        key = _settings_key()
        self.sources = sources
        if self.pid == pid and self.key == key and self.db is not None:
            return self.db
        # A forked worker whose parent was connected must not give up at once if the server is restarting.
        patient = self.db is not None and self.pid != pid and self.key == key
        if self.pid == pid and self.key is not None and self.key != key:
            global databases_changed
            databases_changed += 1
        self._let_go()
        self.pid, self.key = pid, key
        config.check_scheduler()
        db, description = _open(*key, patient=patient, reading_only=self.reading_only, existing=self.existing_only)
        proxy.initialize(db)
        _check_schema(db, description)
        self.db, self.description = db, description
        return db

    @property
    def dialect(self) -> SQLite:
        """The dialect of this process's database (opening it if need be)."""
        return dialect(self.get())

    def use(self, db: peewee.Database, key: tuple, description: str) -> None:
        """Make ``db``, opened from the settings ``key``, the database of this process."""
        if self.db is not db:
            self._let_go()
        self.pid, self.key, self.db, self.description = os.getpid(), key, db, description
        proxy.initialize(db)

    def close_thread(self) -> None:
        """Close the calling thread's connection, if this process opened the database; never open one.

        On PostgreSQL that is the thread's own connection, if it uses one (the process's stays for its other
        threads, until idle); SQLite's connections are each thread's.
        """
        if self.db is not None and self.pid == os.getpid():
            if isinstance(self.db, SharedSession):
                self.db.close_own()
            else:
                self.db.close()

    def reset(self) -> None:
        """Close this process's connection (never a parent's) and forget the database: the next use opens it
        again from the settings. For tests, and for code that changed the settings."""
        self._let_go()
        self.pid = self.key = self.sources = None
        self.description = ""
        self.reading_only = False  # the next command of a test's process may write
        self.existing_only = False
        _opened_files.clear()  # a file deleted on purpose may be made again
        config.forget_sqlite_paths()  # a test's relative path or HOME means its own directory

    def _let_go(self) -> None:
        """Stop using :attr:`db`: close it if this process opened it, else keep it alive (see the class)."""
        if self.db is None:
            return
        if self.pid == os.getpid():
            self.db.close()
        elif not any(db is self.db for db in self.inherited):
            self.inherited += (self.db,)
        self.db = None


#: The database of this process.
DATABASE = Database()


def _close_sqlite_before_fork() -> None:
    """Close this thread's SQLite connection before the process forks (luigi's ``--workers N``), as SQLite requires.

    A child that opened the same file again would find the parent's records of its file locks, copied with its
    memory, and believe it held locks it does not: once the parent died, the next process to open the file took
    it for its own, checkpointed and deleted the WAL under the child, and what the child recorded after was lost
    (other processes' records too, and the file could be corrupted). The parent opens it again on its next use.
    """
    db = DATABASE.db
    if isinstance(db, peewee.SqliteDatabase) and DATABASE.pid == os.getpid() and not db.in_transaction():
        db.close()


os.register_at_fork(before=_close_sqlite_before_fork)


def only_reading() -> None:
    """This process only reads the records (``astra results``, ``tasks list``, ``show``, ``why``, ``db status``): an
    SQLite file it may not write does for it, as a read replica does on PostgreSQL. Any other process stops on
    such a file as it opens it, before a task computes what it could not record."""
    DATABASE.reading_only = True


def only_existing() -> None:
    """This process changes what is recorded (``astra tasks forget``) but has no reason to make a database: an
    SQLite file that is missing, or holds no astra schema, is said so, as to a process that only reads."""
    DATABASE.existing_only = True


def database() -> peewee.Database:
    """The database of this process, opened (and, for SQLite, created) on first use."""
    return DATABASE.get()


def close_thread_connection() -> None:
    """Close the calling thread's connection to this process's database, if it has one; never open one.

    For helper threads (heartbeats, a batch's asker) as they end: calling :func:`database` there could open a
    connection just to close it, to another database if the settings changed meanwhile.
    """
    DATABASE.close_thread()


def use_own_connection() -> None:
    """The calling thread uses a connection of its own (until :func:`close_thread_connection`), not the process's
    PostgreSQL connection: for helper threads that query beside the main thread for speed (a batch's)."""
    db = database()
    if isinstance(db, SharedSession):
        db.use_own()


def sharing(wait: float):
    """A block in which the calling thread uses the process's PostgreSQL connection if it is free within ``wait``
    seconds, else one of its own (a heartbeat must not wait out a task's long transaction)."""
    db = database()
    return db.sharing(wait) if isinstance(db, SharedSession) else contextlib.nullcontext()


def is_open() -> bool:
    """Whether this process has opened its database (and not let go of it since); never opens it."""
    return DATABASE.db is not None and DATABASE.pid == os.getpid()


def describe() -> str:
    """Where the database of this process points, with any password masked."""
    DATABASE.get()
    return DATABASE.description


def files() -> list[str]:
    """The files that hold the database of this process: an SQLite file and its journals (which may not exist
    yet); none for a server's."""
    db = DATABASE.get()
    if not isinstance(db, peewee.SqliteDatabase):
        return []
    path = os.path.abspath(db.database)
    return [path, *(path + ending for ending in ("-wal", "-shm", "-journal"))]


def reset() -> None:
    """Close this process's connection and forget the database (see :meth:`Database.reset`)."""
    DATABASE.reset()


def is_postgres(db: peewee.Database | None = None) -> bool:
    """Whether ``db`` (by default this process's database) is PostgreSQL. For tests: astra asks its dialect."""
    return dialect(db or database()) is POSTGRESQL


def _open(
    url: str, profile: str, dbname: str, patient: bool = False, reading_only: bool = False, existing: bool = False
) -> tuple[peewee.Database, str]:
    if url.startswith(config.SQLITE_PREFIX):
        return _open_sqlite(url[len(config.SQLITE_PREFIX) :], reading_only, existing)
    if url.startswith(("postgresql://", "postgres://")):
        return _open_postgres_url(url, patient)
    if url:
        raise DatabaseNotReady(
            f"astra: cannot use database URL {mask_password(url)!r}: expected sqlite:///path or postgresql://..."
        )
    if profile:
        return _open_sdssdb_profile(profile, dbname)
    return _open_sqlite(config.DEFAULT_SQLITE_PATH, reading_only, existing)


#: The SQLite files this process (or the process it was forked from) opened, as (device, inode), by path.
_opened_files: dict[str, tuple[int, int] | None] = {}


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _replaced(path: str) -> str:
    return (
        f"astra: SQLite database {path} was deleted or replaced while this run used it; what was recorded in it "
        "since went with the old file. Run again, with the file where it belongs"
    )


def _in_memory(path: str) -> str:
    """Why ``sqlite:///:memory:`` (or an SQLite ``file:`` URI) is refused rather than given an in-memory database:
    each process of a run (a worker of ``--workers``, a batch's pool, a SLURM job) would have one of its own, and all
    of it would go when the process ends, so no task would ever be found done."""
    return (
        f"astra: sqlite:///{path} is not a file: astra records in a file that every process of a run shares and the "
        "next run reads (an in-memory database would be lost as each process ends, and nothing would ever be found "
        "done); give a path, e.g. sqlite:///astra.db, or sqlite:////tmp/astra.db for a throwaway one"
    )


def _open_sqlite(path: str, reading_only: bool = False, existing: bool = False) -> tuple[peewee.Database, str]:
    """Open (or make) the SQLite database at ``path``; ``reading_only`` (:func:`only_reading`) or ``existing``
    (:func:`only_existing`): one that is missing, or holds no astra schema, stops instead of being made."""
    existing = existing or reading_only
    if path == ":memory:" or path.startswith("file:"):  # SQLite's own names, which sqlite3 without uri=True takes
        raise DatabaseNotReady(_in_memory(path))  # as a file of that name in the current directory
    path = config.sqlite_path(path)
    description = f"sqlite:///{path}"
    if path in _opened_files and _file_id(path) != _opened_files[path]:
        raise DatabaseNotReady(_replaced(path))  # rather than make a new, empty one (a forked worker would)
    if existing and not os.path.exists(path):  # an empty new file would answer "no tasks match": a typo hidden
        raise DatabaseNotReady(
            f"astra: SQLite database {path} does not exist, so nothing is recorded there yet; check "
            "ASTRA_DATABASE_URL (or [astra] database_url), or record there first (a luigi run, or `astra db init`)"
        )
    if existing and _holds_no_astra_tables(path):  # a catalogue, say: make nothing in it, not even WAL
        raise DatabaseNotReady(
            f"astra: {description} has no astra schema, so nothing is recorded there; check ASTRA_DATABASE_URL "
            "(or [astra] database_url), or record there first (a luigi run, or `astra db init`)"
        )
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        lock_timeout = config.settings().sqlite_lock_timeout
        db = LockWaitingSqliteDatabase(
            path,
            timeout=lock_timeout,
            # WAL lets readers go on while one process writes; the busy timeout makes writers queue, not fail.
            # NORMAL: in WAL mode a commit does not wait for the disk, and a crash may lose the last ones; FULL
            # waits ([astra] synchronous_commit, as on PostgreSQL).
            pragmas={
                "journal_mode": "wal",
                "busy_timeout": _milliseconds(lock_timeout),
                "foreign_keys": 1,
                "synchronous": "full" if config.settings().synchronous_commit else "normal",
            },
        )
        db.lock_timeout = lock_timeout
        proxy.initialize(db)
        if not db.table_exists("task"):
            versions.create(db)  # a new database (e.g. the embedded default on first use)
        elif versions.recorded(db) == versions.CURRENT:
            db.create_tables(MODELS, safe=True)  # a table lost since is made again; older schemas: astra db upgrade
            dialect(db).refuse_older_writers(db)  # a database upgraded before this astra made the trigger
    except (OSError, peewee.DatabaseError) as exc:
        full = _no_space_left(os.path.dirname(path))  # SQLite says "disk I/O error" when WAL's files cannot grow
        raise DatabaseNotReady(f"astra: cannot open SQLite database {path}: {exc}{full}") from None
    if not reading_only:
        _check_writable(db, path)
    db.file_id = _opened_files[path] = _file_id(path)
    return db, description


def _holds_no_astra_tables(path: str) -> bool:
    """Whether the SQLite file ``path`` is a database without astra's task table; False when it cannot be told
    without writing (not a database, a WAL file it cannot read alone): opening it says what is wrong then."""
    try:
        peek = sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True)
        try:
            return peek.execute("select 1 from sqlite_master where name = 'task'").fetchone() is None
        finally:
            peek.close()
    except sqlite3.Error:
        return False


def _milliseconds(seconds: float) -> int:
    return max(0, int(min(seconds * 1000, 2**31 - 1)))  # infinity ([astra] sqlite_lock_timeout = inf): SQLite's most


def _no_space_left(folder: str) -> str:
    """What to add to an error in ``folder`` when its disk is full ('' when it is not, or cannot be told)."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f" (its disk is full: free space in {folder})" if free == 0 else ""


def _check_writable(db: LockWaitingSqliteDatabase, path: str) -> None:
    """Stop at once on a database astra could read but not record in (SQLite would fail only at the first write).

    A write that is rolled back: SQLite refuses it at once on a read-only file, also for root on an immutable
    file or a read-only mount, where the permission bits would say nothing. (Opening the file here to try would
    be wrong: closing any descriptor of the file drops the locks SQLite holds on it in this process.) It never
    waits for the write lock: with WAL, readers (``astra tasks list``) go on beside a writer, and a lock held by
    another process means the file takes writes.
    """
    connection = db.connection()
    connection.execute("pragma busy_timeout = 0")
    try:
        connection.execute("begin immediate")
        try:
            (version,) = connection.execute("pragma user_version").fetchone()
            connection.execute(f"pragma user_version = {int(version)}")
        finally:
            connection.execute("rollback")
        return
    except sqlite3.OperationalError as exc:
        if "readonly" not in str(exc):
            return  # locked by another writer: the real write will wait for it (and tell, if it must)
        db.close()
    finally:
        if not db.is_closed():
            connection.execute(f"pragma busy_timeout = {_milliseconds(db.lock_timeout)}")
    raise DatabaseNotReady(
        f"astra: SQLite database {path} is read-only, so nothing could be recorded in it (finished tasks, forget, "
        "db init); make it writable, or point ASTRA_DATABASE_URL (or [astra] database_url) at another file; "
        "results and tasks list/show/why read it as it is"
    )


#: Options for every PostgreSQL connection: give up on a silent server after 5 s, and notice a server that
#: vanished without closing the socket (a crashed host, a network cut) within about a minute.
POSTGRES_OPTIONS = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def _open_postgres_url(url: str, patient: bool = False) -> tuple[peewee.Database, str]:
    description = mask_password(url)
    try:
        name, params = postgres_connect_kwargs(url)
    except BadURLError as exc:
        raise DatabaseNotReady(f"astra: cannot use database URL {description}: {exc}") from None
    for key, value in POSTGRES_OPTIONS.items():
        params.setdefault(key, value)
    db = ReconnectingPostgresqlDatabase(name, **params)
    db.description = description
    # Driver errors may echo a connection option: hide the password in them, as written and as decoded.
    written = url.partition("://")[2].rpartition("@")[0].partition(":")[2]
    db.secrets = tuple({written, str(params.get("password") or "")} - {""})
    _connect_postgres(db, description, patient)
    return db, description


def _open_sdssdb_profile(profile: str, dbname: str) -> tuple[peewee.Database, str]:
    """Connect with the host, user and port of an sdssdb profile and the password from ~/.pgpass.

    sdssdb's own ``connect()`` passes only user, host and port to psycopg2 (no connect timeout: a silent server
    hangs it) and hides the server's reason for refusing; so astra takes the profile's settings from sdssdb and
    connects the way it does for a URL.
    """
    import pgpasslib

    sdssdb_config = _sdssdb_profiles()  # first: importing sdssdb reads its file
    from sdssdb.connection import PeeweeDatabaseConnection

    if profile not in sdssdb_config:
        raise DatabaseNotReady(
            f"astra: sdssdb has no profile {profile!r} (known: {', '.join(sorted(sdssdb_config))}); add it to "
            "~/.config/sdss/sdssdb.yml (or $SDSSDB_CONFIG_PATH), or set ASTRA_DATABASE_URL instead"
        )
    # Still a PeeweeDatabaseConnection (and named so), which also reconnects and is shared by the threads.
    db = type("PeeweeDatabaseConnection", (SharedSession, Reconnecting, PeeweeDatabaseConnection), {})(
        profile=profile, autoconnect=False, use_psycopg3=False
    )
    params = {key: db._config[key] for key in ("user", "host", "port") if db._config.get(key) is not None}
    if not str(params.get("port", 0)).isdigit():
        raise DatabaseNotReady(
            f"astra: sdssdb profile {profile!r} in {_sdssdb_file()} has port {params['port']!r}, which is not a "
            "number; correct it there, or set ASTRA_DATABASE_URL instead"
        )
    where = f"{params.get('user') or ''}@{params.get('host') or 'localhost'}:{params.get('port') or 5432}"
    description = f"sdssdb profile {profile!r}: postgresql://{where}/{dbname}"
    db.description = description
    try:
        params["password"] = pgpasslib.getpass(dbname=dbname, **params)
    except pgpasslib.PgPassException:  # no ~/.pgpass, or one with the wrong mode: connect without a password
        params["password"] = None
    peewee.PostgresqlDatabase.init(db, dbname, prefer_psycopg3=False, **params, **POSTGRES_OPTIONS)
    try:
        SharedSession.connect(db)  # not sdssdb's profile-aware connect(), which would start from scratch
    except peewee.OperationalError as exc:
        raise DatabaseNotReady(
            f"astra: cannot connect to {description}: {mask_password(_reason(exc))}. Check the profile in "
            "sdssdb.yml and the password in ~/.pgpass"
        ) from None
    db.dbname = dbname
    db.autoconnect = True  # opened again after [astra] idle_close
    db.post_connect()
    return db, description


def _sdssdb_profiles() -> dict:
    """sdssdb's profiles, or DatabaseNotReady naming its file if sdssdb cannot read it (it does as it is imported)."""
    import yaml

    try:
        from sdssdb import config
    except OSError as exc:
        raise DatabaseNotReady(
            f"astra: sdssdb cannot read {exc.filename or _sdssdb_file()}: {exc.strerror or exc}; correct "
            "$SDSSDB_CONFIG_PATH (or unset it for ~/.config/sdss/sdssdb.yml), or set ASTRA_DATABASE_URL instead"
        ) from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: YAML, but not a mapping of profiles
        mark = getattr(exc, "problem_mark", None)
        where = f"{mark.name}, line {mark.line + 1}" if mark else _sdssdb_file()
        problem = getattr(exc, "problem", None) or str(exc)  # not the text of the line: it may hold a password
        raise DatabaseNotReady(
            f"astra: sdssdb cannot read {where}: {problem}; correct it (a YAML mapping of profiles), or set "
            "ASTRA_DATABASE_URL instead"
        ) from None
    return config


def _sdssdb_file() -> str:
    """The file of sdssdb's profiles, as the user would name it."""
    return os.environ.get("SDSSDB_CONFIG_PATH") or "~/.config/sdss/sdssdb.yml"


def _connect_postgres(db: ReconnectingPostgresqlDatabase, description: str, patient: bool = False) -> None:
    try:
        db.connect(reuse_if_open=True)
    except peewee.OperationalError as exc:
        if _BAD_OPTION_VALUE.search(str(exc)):  # e.g. sslmode=bogus: libpq says so before it tries the server
            raise DatabaseNotReady(_unusable_url(description, db._why(exc))) from None
        if patient:
            db.reconnect(exc)
            return
        raise DatabaseNotReady(
            f"astra: cannot connect to {description}: {db._why(exc)}. Check that PostgreSQL is running and "
            "ASTRA_DATABASE_URL (or [astra] database_url) is right"
        ) from None
    except peewee.ProgrammingError as exc:  # libpq refused the URL itself, e.g. an unknown option after '?'
        raise DatabaseNotReady(_unusable_url(description, db._why(exc))) from None


# What libpq says of an option it knows given a value it cannot use (`invalid sslmode value: "bogus"`, `invalid
# integer value "x" for connection option "port"`): the URL is wrong, not the server.
_BAD_OPTION_VALUE = re.compile(r"\binvalid \S+ value\b")


def _unusable_url(description: str, why: str) -> str:
    return (
        f"astra: cannot use database URL {description}: {why}; correct the options after '?' (libpq's connection "
        "parameters, e.g. sslmode=require) in ASTRA_DATABASE_URL (or [astra] database_url)"
    )


def _columns(db: peewee.Database) -> dict[str, set[str]]:
    """The columns of each astra table in ``db``, in one query."""
    sql = dialect(db).columns_sql()
    found: dict[str, set[str]] = {}
    for table, column in db.execute_sql(sql).fetchall():
        found.setdefault(table, set()).add(column)
    return found


def _check_schema(db: peewee.Database, description: str) -> None:
    """Stop with one line unless ``db`` holds the schema this astra reads and writes: every task would fail."""
    prefix = f"{dialect(db).schema}." if dialect(db).schema else ""
    columns = _columns(db)
    tables = [model._meta.table_name for model in MODELS]
    if not any(table in columns for table in tables):
        raise DatabaseNotReady(
            f"astra: {description} has no astra schema; load it with `astra db init` "
            "or `psql -d DBNAME < schema/astradb/astradb.sql`"
        )
    version = versions.recorded(db) if "task" in columns else versions.CURRENT
    if version < versions.CURRENT:
        raise DatabaseNotReady(
            f"astra: {description} holds astra schema {version}, older than this astra's ({versions.CURRENT}); "
            "run `astra db upgrade` (it keeps every task)"
        )
    if version > versions.CURRENT:
        raise DatabaseNotReady(
            f"astra: {description} holds astra schema {version}, newer than astra {__version__} knows "
            f"({versions.CURRENT}); upgrade astra"
        )
    missing = [prefix + table for table in tables if table not in columns]
    if missing:
        raise DatabaseNotReady(
            f"astra: {description} has only part of the astra schema (no table {', '.join(missing)}); "
            "complete it with `astra db init` (which never drops data)"
        )
    lacking = [
        f"{prefix}{model._meta.table_name}.{field.column_name}"
        for model in MODELS
        for field in model._meta.sorted_fields
        if field.column_name not in columns[model._meta.table_name]
    ]
    if lacking:
        raise DatabaseNotReady(
            f"astra: {description} has an older astra schema (no column {', '.join(lacking)}); "
            "upgrade it with `astra db upgrade`"
        )


def create_schema() -> str:
    """Create the astra tables where they are missing and say where. Never drops data.

    On PostgreSQL this runs schema/astradb/astradb.sql itself, so ``astra db init`` and ``psql < astradb.sql``
    give the same tables. A database with an older (or newer) schema is left as it is, with a one-line error.
    """
    key = _settings_key()
    db, description = _open(*key)
    proxy.initialize(db)
    if not dialect(db).creates_tables_on_use and versions.recorded(db) in (None, versions.CURRENT):
        with db.atomic():
            dialect(db).lock_for_init(db)
            db.execute_sql(SCHEMA_SQL.read_text())
    try:
        _check_schema(db, description)  # e.g. an older layout, which creating missing tables does not change
    except DatabaseNotReady:
        db.close()
        raise
    DATABASE.use(db, key, description)
    return description


def upgrade_schema(progress=lambda version, description: None, say=lambda text: None) -> tuple[str, int, int]:
    """Bring the configured database to the current schema (``astra db upgrade``), keeping every row.

    Returns where it is, and the versions before and after. ``progress(version, description)`` is called for each
    step once it is committed, ``say(text)`` as a long one goes.
    """
    key = _settings_key()
    # An SQLite file that is missing, or holds no astra schema, has nothing to upgrade: said so, not made one.
    db, description = _open(*key, existing=True)
    proxy.initialize(db)
    version = versions.recorded(db)
    if version is None or version > versions.CURRENT:
        _check_schema(db, description)  # nothing this astra can upgrade: the same line as at opening
    before = versions.upgrade(db, progress, say)
    dialect(db).refuse_older_writers(db)  # the workers of the astra that wrote it may be running still
    DATABASE.use(db, key, description)
    return description, before, versions.CURRENT
