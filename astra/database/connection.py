"""Opening the database: one lazily opened connection per process, chosen by the ``[astra]`` settings.

Order of precedence: ``--astra-database-url`` on the luigi command line, ``$ASTRA_DATABASE_URL``,
``[astra] database_url``, ``[astra] profile`` (through sdssdb), then an SQLite file at ``~/.astra/astra.db``.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import peewee
from playhouse.db_url import parse as parse_url

from astra import config
from astra.database.models import MODELS, proxy

SCHEMA_SQL = Path(__file__).with_name("astradb.sql")

#: How long a process keeps trying to reopen a lost PostgreSQL connection (e.g. while the server restarts).
RECONNECT_SECONDS = 60.0

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


class ConnectionLostError(DatabaseError):
    """The connection to PostgreSQL was lost inside a transaction: the server rolled it back, nothing was written."""


class _State:
    pid: int | None = None
    key: tuple | None = None
    database: peewee.Database | None = None
    description: str = ""
    inherited: list = []  # databases opened by a parent process: kept alive so a child never closes their sockets


def mask_password(url: str) -> str:
    """``url`` with any password replaced by ``***``: in ``user:password@`` and in ``?password=``."""
    # The last "@" before the path ends the credentials: a password may itself hold an unescaped "@".
    url = re.sub(r"(://[^:/@?#]*:)[^/?#]*@", r"\1***@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)


class Reconnecting:
    """Mixin for a peewee PostgresqlDatabase: reopen a lost connection and run the statement again.

    Only statements outside a transaction are run again. Inside a transaction the server has already rolled
    back everything the transaction did, so repeating only the last statement would be wrong: that raises
    :class:`ConnectionLostError`, and :func:`retried` runs a whole self-contained transaction again instead.
    """

    description = ""

    def execute_sql(self, sql, params=None):
        try:
            return super().execute_sql(sql, params)
        except (peewee.OperationalError, peewee.InterfaceError) as exc:
            self._recover(exc)
        return super().execute_sql(sql, params)

    def begin(self, *args, **kwargs):
        try:
            return super().begin(*args, **kwargs)
        except (peewee.OperationalError, peewee.InterfaceError) as exc:
            self._recover(exc)
        return super().begin(*args, **kwargs)

    def commit(self):
        try:
            return super().commit()
        except (peewee.OperationalError, peewee.InterfaceError) as exc:
            if not self._lost():
                raise
            raise ConnectionLostError(
                f"astra: lost the connection to {self.description} while committing a transaction: {_reason(exc)}"
            ) from exc

    def rollback(self):
        if self._lost():
            self._discard()  # the server ended the transaction together with the connection
            return None
        return super().rollback()

    def _lost(self) -> bool:
        connection = self._state.conn
        return connection is None or self._state.closed or bool(getattr(connection, "closed", False))

    def _discard(self) -> None:
        self._state.reset()

    def _recover(self, exc: Exception) -> None:
        """Reopen the connection after ``exc`` if it was lost, or raise."""
        if not self._lost():
            raise exc
        if self.in_transaction():
            raise ConnectionLostError(
                f"astra: lost the connection to {self.description} inside a transaction, which the server rolled "
                f"back: {_reason(exc)}"
            ) from exc
        self._discard()
        self.reconnect(exc)

    def reconnect(self, exc: Exception) -> None:
        """Open a new connection, trying for up to RECONNECT_SECONDS; raise DatabaseError if none opens."""
        logger.warning("astra: lost the connection to %s (%s); reconnecting", self.description, _reason(exc))
        deadline = time.monotonic() + RECONNECT_SECONDS
        pause = 0.2
        while True:
            try:
                peewee.Database.connect(self)  # the profile-aware connect() of sdssdb would start from scratch
                logger.info("astra: reconnected to %s", self.description)
                return
            except peewee.OperationalError as error:
                self._discard()
                if time.monotonic() + pause > deadline:
                    raise DatabaseError(
                        f"astra: lost the connection to {self.description} and could not reconnect within "
                        f"{RECONNECT_SECONDS:g} s: {_reason(error)}"
                    ) from None
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


class ReconnectingPostgresqlDatabase(Reconnecting, peewee.PostgresqlDatabase):
    """The PostgreSQL database astra opens from a URL."""


def _reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def retried(function: F) -> F:
    """Run ``function``, a self-contained transaction, again if the connection was lost inside it.

    Safe only for functions whose transaction can simply be repeated; inside a caller's transaction the error
    goes to the caller, whose earlier statements were lost too.
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        for attempt in range(3):
            try:
                return function(*args, **kwargs)
            except ConnectionLostError:
                if attempt == 2 or database().in_transaction():
                    raise
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


def database() -> peewee.Database:
    """The database of this process, opened (and, for SQLite, created) on first use."""
    pid = os.getpid()
    override = _url_override()
    if _State.pid == pid and _State.database is not None and (not override or _State.key[0] == override):
        return _State.database
    key = _settings_key()
    if _State.pid == pid and _State.key == key and _State.database is not None:
        return _State.database
    if _State.database is not None:
        if _State.pid == pid:
            _State.database.close()
        else:
            _State.inherited.append(_State.database)
    # A forked worker whose parent was connected must not give up at once if the server is restarting.
    patient = _State.database is not None and _State.pid != pid and _State.key == key
    _State.pid, _State.key, _State.database = pid, key, None
    config.check_scheduler()
    db, description = _open(*key, patient=patient)
    _bind(db)
    _check_schema(db, description)
    _State.database, _State.description = db, description
    return db


def describe() -> str:
    """Where the database of this process points, with any password masked."""
    database()
    return _State.description


def is_postgres(db: peewee.Database | None = None) -> bool:
    return isinstance(db or database(), peewee.PostgresqlDatabase)


def _bind(db: peewee.Database) -> None:
    proxy.initialize(db)
    schema = "astra" if isinstance(db, peewee.PostgresqlDatabase) else None
    for model in MODELS:
        model._meta.schema = schema


def _open(url: str, profile: str, dbname: str, patient: bool = False) -> tuple[peewee.Database, str]:
    if url.startswith("sqlite:///"):
        return _open_sqlite(url[len("sqlite:///") :])
    if url.startswith(("postgresql://", "postgres://")):
        return _open_postgres_url(url, patient)
    if url:
        raise DatabaseNotReady(
            f"astra: cannot use database URL {mask_password(url)!r}: expected sqlite:///path or postgresql://..."
        )
    if profile:
        return _open_sdssdb_profile(profile, dbname)
    return _open_sqlite(config.DEFAULT_SQLITE_PATH)


def _open_sqlite(path: str) -> tuple[peewee.Database, str]:
    path = os.path.abspath(os.path.expanduser(path))
    description = f"sqlite:///{path}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        db = peewee.SqliteDatabase(
            path,
            timeout=60,
            # WAL lets readers go on while one process writes; the busy timeout makes writers queue, not fail.
            pragmas={"journal_mode": "wal", "busy_timeout": 60000, "foreign_keys": 1, "synchronous": "normal"},
        )
        _bind(db)
        db.create_tables(MODELS, safe=True)
    except (OSError, peewee.DatabaseError) as exc:
        raise DatabaseNotReady(f"astra: cannot open SQLite database {path}: {exc}") from None
    return db, description


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
    params = parse_url(url)
    name = params.pop("database", None) or ""
    for key, value in POSTGRES_OPTIONS.items():
        params.setdefault(key, value)
    db = ReconnectingPostgresqlDatabase(name, **params)
    description = mask_password(url)
    db.description = description
    _connect_postgres(db, description, patient)
    return db, description


def _open_sdssdb_profile(profile: str, dbname: str) -> tuple[peewee.Database, str]:
    """Connect with the host, user and port of an sdssdb profile and the password from ~/.pgpass.

    sdssdb's own ``connect()`` passes only user, host and port to psycopg2 (no connect timeout: a silent server
    hangs it) and hides the server's reason for refusing; so astra takes the profile's settings from sdssdb and
    connects the way it does for a URL.
    """
    import pgpasslib
    from sdssdb import config as sdssdb_config
    from sdssdb.connection import PeeweeDatabaseConnection

    if profile not in sdssdb_config:
        raise DatabaseNotReady(
            f"astra: sdssdb has no profile {profile!r} (known: {', '.join(sorted(sdssdb_config))}); add it to "
            "~/.config/sdss/sdssdb.yml (or $SDSSDB_CONFIG_PATH), or set ASTRA_DATABASE_URL instead"
        )
    # Still a PeeweeDatabaseConnection (and named so), which also reconnects.
    db = type("PeeweeDatabaseConnection", (Reconnecting, PeeweeDatabaseConnection), {})(
        profile=profile, autoconnect=False, use_psycopg3=False
    )
    params = {key: db._config[key] for key in ("user", "host", "port") if db._config.get(key) is not None}
    where = f"{params.get('user') or ''}@{params.get('host') or 'localhost'}:{params.get('port') or 5432}"
    description = f"sdssdb profile {profile!r}: postgresql://{where}/{dbname}"
    db.description = description
    try:
        params["password"] = pgpasslib.getpass(dbname=dbname, **params)
    except pgpasslib.PgPassException:  # no ~/.pgpass, or one with the wrong mode: connect without a password
        params["password"] = None
    peewee.PostgresqlDatabase.init(db, dbname, prefer_psycopg3=False, **params, **POSTGRES_OPTIONS)
    try:
        peewee.PostgresqlDatabase.connect(db)
    except peewee.OperationalError as exc:
        raise DatabaseNotReady(
            f"astra: cannot connect to {description}: {mask_password(_reason(exc))}. Check the profile in "
            "sdssdb.yml and the password in ~/.pgpass"
        ) from None
    db.dbname = dbname
    db.post_connect()
    return db, description


def _connect_postgres(db: ReconnectingPostgresqlDatabase, description: str, patient: bool = False) -> None:
    try:
        db.connect(reuse_if_open=True)
    except peewee.OperationalError as exc:
        if patient:
            db.reconnect(exc)
            return
        raise DatabaseNotReady(
            f"astra: cannot connect to {description}: {_reason(exc)}. Check that PostgreSQL is running and "
            "ASTRA_DATABASE_URL (or [astra] database_url) is right"
        ) from None


def _check_schema(db: peewee.Database, description: str) -> None:
    schema = "astra" if isinstance(db, peewee.PostgresqlDatabase) else None
    if not db.table_exists("task", schema=schema):
        raise DatabaseNotReady(
            f"astra: {description} has no astra schema; load it with `astra db init` "
            "or `psql -d DBNAME < schema/astradb/astradb.sql`"
        )


def create_schema() -> str:
    """Create the astra tables where they are missing and say where. Never drops data.

    On PostgreSQL this runs schema/astradb/astradb.sql itself, so ``astra db init`` and ``psql < astradb.sql``
    give the same tables.
    """
    key = _settings_key()
    db, description = _open(*key)
    _bind(db)
    if isinstance(db, peewee.PostgresqlDatabase):
        with db.atomic():
            db.execute_sql(SCHEMA_SQL.read_text())
    if _State.database is not None and _State.pid == os.getpid() and _State.database is not db:
        _State.database.close()
    _State.pid, _State.key, _State.database, _State.description = os.getpid(), key, db, description
    return description
