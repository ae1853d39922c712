"""Releases of tests/evolving_tasks.py for the output-migration tests: run its tasks, migrate and read its results as
a given release (``$EVOLVING``), through the real ``luigi`` and ``astra`` commands."""

from __future__ import annotations

import json

from tests.helpers import astra, raw_sql, run_luigi

MODULE = ("--module", "tests.evolving_tasks")


def release(changes: str = "") -> dict:
    """The environment of a release of tests/evolving_tasks.py that made ``changes``."""
    return {"EVOLVING": changes}


def luigi(changes: str, *args: str):
    return run_luigi(*MODULE, *args, "--local-scheduler", env=release(changes))


def migrate(changes: str, *args: str):
    return astra("db", "migrate", *MODULE, *args, env=release(changes))


def refusal(changes: str, *args: str) -> str:
    """The one line `astra db migrate` refuses with, changing nothing (exit 1, no traceback)."""
    refused = migrate(changes, *args)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    return refused.stderr.strip()


def rows(changes: str, name: str = "FitStar") -> list[dict]:
    shown = astra("results", name, *MODULE, "--json", env=release(changes))
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def done_stars(url: str) -> int:
    return raw_sql(url, "select count(*) from astra.task where task_name = 'FitStar' and status = 'done'")[0][0]


def column_names(url: str) -> list[tuple]:
    if url.startswith("sqlite:///"):
        return [(row[1],) for row in raw_sql(url, "pragma table_info(evolving_fit)")]
    return raw_sql(url, "select column_name from information_schema.columns where table_name = 'evolving_fit'")
