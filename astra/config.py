"""The ``[astra]`` section of luigi's configuration."""

from __future__ import annotations

import os

import luigi

#: Environment variable that overrides ``[astra] database_url``.
DATABASE_URL_ENV = "ASTRA_DATABASE_URL"

#: Where the embedded SQLite database lives when nothing else is configured.
DEFAULT_SQLITE_PATH = os.path.join("~", ".astra", "astra.db")


class astra(luigi.Config):  # noqa: N801 -- luigi names the config section after the class
    """Settings read from ``[astra]`` in luigi.cfg, or ``--astra-<name>`` on the luigi command line."""

    database_url = luigi.Parameter(
        default="",
        description="sqlite:///path or postgresql://user@host:port/dbname; overridden by $ASTRA_DATABASE_URL",
    )
    profile = luigi.Parameter(
        default="",
        description="sdssdb profile to connect with (host, user, port come from sdssdb.yml) when no URL is set",
    )
    dbname = luigi.Parameter(default="sdss5db", description="database name used with an sdssdb profile")
    lease = luigi.FloatParameter(
        default=120.0,
        description="seconds this worker's running tasks may go without a heartbeat before another worker takes them "
        "over (recorded in each task's row, so every worker goes by the holder's lease)",
    )


def settings() -> astra:
    """The current ``[astra]`` settings (read now, not at import time)."""
    return astra()


def database_url() -> str:
    """The configured database URL: $ASTRA_DATABASE_URL, else ``[astra] database_url``, else ''."""
    return os.environ.get(DATABASE_URL_ENV) or settings().database_url
