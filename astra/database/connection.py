"""Opening the database: one lazily opened connection per process, chosen by the ``[astra]`` settings.

Order of precedence: ``$ASTRA_DATABASE_URL``, ``[astra] database_url``, ``[astra] profile`` (through sdssdb),
then an SQLite file at ``~/.astra/astra.db``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import peewee
from playhouse.db_url import parse as parse_url

from astra import config
from astra.database.models import MODELS, proxy

SCHEMA_SQL = Path(__file__).with_name("astradb.sql")


class DatabaseNotReady(SystemExit):
    """The database cannot be used at all: not reachable, unknown profile, or schema not loaded.

    A ``SystemExit`` on purpose: luigi turns an ordinary exception in ``complete()`` into a traceback for every
    task and carries on, whereas nothing can work without the database, so the luigi command stops with this
    one line instead.
    """


class DatabaseError(RuntimeError):
    """A query failed after the database had been opened (e.g. the server restarted and did not come back)."""


class _State:
    pid: int | None = None
    key: tuple | None = None
    database: peewee.Database | None = None
    description: str = ""
    inherited: list = []  # databases opened by a parent process: kept alive so a child never closes their sockets


def mask_password(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _settings_key() -> tuple[str, str, str]:
    url = os.environ.get(config.DATABASE_URL_ENV, "")
    if url:
        return url, "", ""
    settings = config.settings()
    return settings.database_url, settings.profile, settings.dbname


def database() -> peewee.Database:
    """The database of this process, opened (and, for SQLite, created) on first use."""
    pid = os.getpid()
    env_url = os.environ.get(config.DATABASE_URL_ENV, "")
    if _State.pid == pid and _State.database is not None and (not env_url or _State.key[0] == env_url):
        return _State.database
    key = _settings_key()
    if _State.pid == pid and _State.key == key and _State.database is not None:
        return _State.database
    if _State.database is not None:
        if _State.pid == pid:
            _State.database.close()
        else:
            _State.inherited.append(_State.database)
    _State.pid, _State.key, _State.database = pid, key, None
    db, description = _open(*key)
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


def _open(url: str, profile: str, dbname: str) -> tuple[peewee.Database, str]:
    if url.startswith("sqlite:///"):
        return _open_sqlite(url[len("sqlite:///") :])
    if url.startswith(("postgresql://", "postgres://")):
        return _open_postgres_url(url)
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


def _open_postgres_url(url: str) -> tuple[peewee.Database, str]:
    params = parse_url(url)
    name = params.pop("database", None) or ""
    params.setdefault("connect_timeout", 5)
    db = peewee.PostgresqlDatabase(name, **params)
    description = mask_password(url)
    _connect_postgres(db, description)
    return db, description


def _open_sdssdb_profile(profile: str, dbname: str) -> tuple[peewee.Database, str]:
    from sdssdb import config as sdssdb_config
    from sdssdb.connection import PeeweeDatabaseConnection

    if profile not in sdssdb_config:
        raise DatabaseNotReady(
            f"astra: sdssdb has no profile {profile!r} (known: {', '.join(sorted(sdssdb_config))}); add it to "
            "~/.config/sdss/sdssdb.yml (or $SDSSDB_CONFIG_PATH), or set ASTRA_DATABASE_URL instead"
        )
    db = PeeweeDatabaseConnection(profile=profile, autoconnect=False, use_psycopg3=False)
    settings = db._config
    where = f"{settings.get('user') or ''}@{settings.get('host') or 'localhost'}:{settings.get('port') or 5432}"
    description = f"sdssdb profile {profile!r}: postgresql://{where}/{dbname}"
    if not db.connect(dbname, silent_on_fail=True, connect_timeout=5):
        raise DatabaseNotReady(
            f"astra: cannot connect to {description}; check that the server is up, the profile in sdssdb.yml "
            "and the password in ~/.pgpass"
        )
    return db, description


def _connect_postgres(db: peewee.PostgresqlDatabase, description: str) -> None:
    try:
        db.connect(reuse_if_open=True)
    except peewee.OperationalError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[0] if lines else type(exc).__name__
        raise DatabaseNotReady(
            f"astra: cannot connect to {description}: {reason}. Check that PostgreSQL is running and "
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
