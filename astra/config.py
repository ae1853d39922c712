"""The ``[astra]`` section of luigi's configuration.

Where a setting comes from, first found wins: the ``luigi`` command line (``--astra-database-url``), then the
environment (``$ASTRA_DATABASE_URL``), then ``[astra]`` in luigi.cfg, then the default.
"""

from __future__ import annotations

import os

import luigi
from luigi.cmdline_parser import CmdlineParser

#: Environment variable that overrides ``[astra] database_url`` (but not ``--astra-database-url``).
DATABASE_URL_ENV = "ASTRA_DATABASE_URL"

#: Where the embedded SQLite database lives when nothing else is configured.
DEFAULT_SQLITE_PATH = os.path.join("~", ".astra", "astra.db")


class astra(luigi.Config):  # noqa: N801 -- luigi names the config section after the class
    """Settings read from ``[astra]`` in luigi.cfg, or ``--astra-<name>`` on the luigi command line."""

    database_url = luigi.Parameter(
        default="",
        description="sqlite:///path or postgresql://user@host:port/dbname; $ASTRA_DATABASE_URL overrides luigi.cfg",
    )
    profile = luigi.Parameter(
        default="",
        description="sdssdb profile to connect with (host, user, port come from sdssdb.yml) when no URL is set",
    )
    dbname = luigi.Parameter(default="sdss5db", description="database name used with an sdssdb profile")
    lease = luigi.FloatParameter(
        default=120.0,
        description="seconds without a heartbeat after which another worker may take over a running task",
    )


def settings() -> astra:
    """The current ``[astra]`` settings (read now, not at import time)."""
    return astra()


def database_url() -> str:
    """The configured database URL: ``--astra-database-url``, else $ASTRA_DATABASE_URL, else luigi.cfg, else ''."""
    return command_line_value("database_url") or os.environ.get(DATABASE_URL_ENV) or settings().database_url


def command_line_value(name: str) -> str:
    """``--astra-<name>`` as given on the running ``luigi`` command line, or '' (luigi.Config cannot tell apart
    a value from the command line and one from luigi.cfg, and the environment must come between the two)."""
    parser = CmdlineParser.get_instance()
    if parser is None:
        return ""
    return getattr(parser.known_args, f"{astra.get_task_family()}_{name}", None) or ""
