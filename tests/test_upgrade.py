"""Schema versions: a database made by the astra of commit 9abb7da, brought up to date by `astra db upgrade`."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sqlite3
import subprocess
import time

import luigi
import peewee
import psycopg2
import pytest

from astra.database import Task, database, versions
from astra.database.models import SchemaVersion, utcnow
from astra.identity import task_hash
from astra.targets import forget_cached, read_many
from tests.helpers import (
    ASTRA,
    REPO,
    assert_same,
    astra,
    astra_many,
    catalogue,
    old_schema_database,
    one_line_error,
    psql,
    run_luigi,
    run_upgrade_tasks,
    sessions,
    subprocess_env,
    using_database,
    wait_for,
)
from tests.helpers import SCHEMA_SQL as SQL
from tests.upgrade_tasks import UpgradeFails, UpgradeSpectrum, UpgradeSummary, value

TABLES = ("task", "parameter", "task_parameter", "dependency")


def raw_rows(url: str) -> dict[str, list[dict]]:
    """Every row of the four tables by column name, read without astra (results as the JSON text or jsonb they
    hold, keys as hex text whether stored so or, from schema 11, as bytes)."""
    if url.startswith("sqlite:///"):
        connection = sqlite3.connect(url[len("sqlite:///") :])
        prefix = ""
    else:
        connection = psycopg2.connect(url)
        prefix = "astra."
    try:
        found = {}
        for table in TABLES:
            cursor = connection.cursor()
            cursor.execute(f"select * from {prefix}{table} order by 1, 2")
            names = [column[0] for column in cursor.description]
            found[table] = [
                {
                    name: bytes(value).hex() if isinstance(value, (bytes, memoryview)) else value
                    for name, value in zip(names, row)
                }
                for row in cursor.fetchall()
            ]
        return found
    finally:
        connection.close()


@pytest.fixture
def old_database(backend, tmp_path, request, old_astra, monkeypatch) -> str:
    """A database made and filled by the old astra: 10 spectra and their summary by luigi, 10 by a batch, 1 failed."""
    url = old_schema_database(backend, tmp_path, request, old_astra)  # the old astra creates SQLite tables itself
    run_upgrade_tasks(old_astra, url)
    with using_database(url, monkeypatch):
        yield url


@pytest.mark.slow
def test_upgrade_keeps_every_task_and_result(old_database, backend):
    url = old_database
    before = raw_rows(url)
    assert len(before["task"]) == 22 and len(before["dependency"]) == 10
    old_results = {row["task_hash"]: row["result"] for row in before["task"]}
    assert any("NaN" in (text or "") for text in old_results.values())  # what jsonb cannot take as it is

    # Today's astra will not use it as it is: one line, saying what to do.
    refused = run_luigi("--module", "tests.upgrade_tasks", "UpgradeSummary", "--n", "10", "--local-scheduler")
    lines = [line for line in refused.stdout.splitlines() if line.startswith("astra: ")]
    assert len(lines) == 1 and "Traceback" not in refused.stdout, refused.stdout
    assert "holds astra schema 1" in lines[0] and "run `astra db upgrade`" in lines[0]
    assert "astra db upgrade" in one_line_error(astra("tasks", "list"), 1)

    upgraded = astra("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"from astra schema 1 to {versions.CURRENT}" in upgraded.stdout
    again = astra("db", "upgrade")
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr

    after = raw_rows(url)
    # The old columns keep their values (the upgrade adds columns; the results are JSON now).
    for table in ("parameter", "task_parameter", "dependency"):
        assert [{name: row[name] for name in before[table][0]} for row in after[table]] == before[table], table
    kept = [name for name in before["task"][0] if name != "result"]
    assert [{name: row[name] for name in kept} for row in after["task"]] == [
        {name: row[name] for name in kept} for row in before["task"]
    ]

    # Every task reads back with its result: the values the old code returned (NaN and infinities included).
    forget_cached()
    spectra = [UpgradeSpectrum(i=i) for i in range(20)]
    assert all(task.complete() for task in spectra) and UpgradeSummary(n=10).complete()
    for task, result in zip(spectra, read_many([task.output() for task in spectra])):
        assert_same(result, value(task.i))
    assert UpgradeSummary(n=10).output().read() == {"total": sum(range(10))}
    assert Task.get(Task.task_hash == task_hash(UpgradeFails())).status == "failed"

    # luigi finds everything done, and runs only what was never run.
    rerun = run_luigi("--module", "tests.upgrade_tasks", "UpgradeSummary", "--n", "10", "--local-scheduler")
    assert "1 complete ones were encountered" in rerun.stdout, rerun.stdout
    batch = run_luigi(
        "--module", "tests.upgrade_tasks", "UpgradeSpectra", "--start", "10", "--stop", "21", "--local-scheduler"
    )
    assert "1 ran successfully" in batch.stdout, batch.stdout
    assert_same(UpgradeSpectrum(i=20).output().read(), value(20))

    shown = astra("tasks", "show", "--json", str(Task.get(Task.task_hash == task_hash(UpgradeSpectrum(i=0))).pk))
    assert json.loads(shown.stdout)["result"]["snr"] == {"$float": "NaN"}
    if backend == "postgresql":
        connection = psycopg2.connect(url)
        try:
            cursor = connection.cursor()
            cursor.execute("select result->>'name' from astra.task where result->>'i' = '7'")
            assert cursor.fetchall() == [("spec-00007",)]
        finally:
            connection.close()


@contextlib.contextmanager
def _write_lock(url: str):
    """Hold what an upgrade's first step needs (SQLite's write lock, astra.task on PostgreSQL) until the block ends."""
    if url.startswith("sqlite:///"):
        connection = sqlite3.connect(url[len("sqlite:///") :], isolation_level=None)
        connection.execute("begin immediate")
    else:
        connection = psycopg2.connect(url)
        connection.cursor().execute("lock table astra.task in access exclusive mode")
    try:
        yield
    finally:
        connection.rollback()
        connection.close()


def _waiting(url: str, processes: list[subprocess.Popen]) -> bool:
    """Whether ``processes`` are all waiting for a lock in the database at ``url`` (on SQLite: have opened it)."""
    if url.startswith("sqlite:///"):
        path = os.path.realpath(url[len("sqlite:///") :])
        opened = [p for p in processes if any(os.path.realpath(fd) == path for fd in _fds(p.pid))]
        return len(opened) == len(processes)
    return sessions(url, "wait_event_type = 'Lock'") >= len(processes)


def _fds(pid: int) -> list[str]:
    try:
        return [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:  # gone, or a descriptor closed meanwhile
        return []


@pytest.mark.slow
def test_two_upgrades_at_once_wait_for_each_other(old_database, backend):
    url = old_database
    before = raw_rows(url)
    with _write_lock(url):  # both upgrades get under way, then wait for it
        upgrades = [
            subprocess.Popen([str(ASTRA), "db", "upgrade"], env=subprocess_env(), cwd=REPO, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]  # fmt: skip
        try:
            wait_for(lambda: _waiting(url, upgrades), timeout=120, what="both upgrades to wait for the lock")
            time.sleep(2 if backend == "sqlite" else 0.5)  # SQLite: from opening the file to waiting for its lock
        except BaseException:
            for upgrade in upgrades:
                upgrade.kill()
            raise
    outputs = [upgrade.communicate(timeout=120) for upgrade in upgrades]
    for upgrade, (stdout, stderr) in zip(upgrades, outputs):
        assert upgrade.returncode == 0, stdout + stderr
        assert "Traceback" not in stderr, stderr
    said = [stdout for stdout, _ in outputs]
    upgraded = [text for text in said if f"from astra schema 1 to {versions.CURRENT}" in text]
    idle = [text for text in said if f"already holds astra schema {versions.CURRENT}; nothing to do" in text]
    assert len(upgraded) == len(idle) == 1, said

    database()
    versions_recorded = sorted(row.version for row in SchemaVersion.select())
    assert versions_recorded == list(range(2, versions.CURRENT + 1))
    after = raw_rows(url)
    for table in ("parameter", "task_parameter", "dependency"):
        assert [{name: row[name] for name in before[table][0]} for row in after[table]] == before[table], table
    assert len(after["task"]) == len(before["task"]) == 22
    listing = astra("tasks", "list", "--json")
    assert listing.returncode == 0 and len(json.loads(listing.stdout)) == 22, listing.stderr


@pytest.mark.slow
def test_newer_schema_asks_to_upgrade_astra(database_url):
    SchemaVersion.insert(version=versions.CURRENT + 1, applied=utcnow()).execute()
    refused = run_luigi("--module", "tests.upgrade_tasks", "UpgradeFails", "--local-scheduler")
    lines = [line for line in refused.stdout.splitlines() if line.startswith("astra: ")]
    assert len(lines) == 1, refused.stdout
    assert f"holds astra schema {versions.CURRENT + 1}" in lines[0] and lines[0].endswith("upgrade astra")
    for result in astra_many(("db", "upgrade"), ("db", "init")):
        assert one_line_error(result, 1).endswith("upgrade astra")


def test_sql_file_records_the_current_version(postgres_database):
    """`psql < astradb.sql` makes the current schema from nothing; over an old one it claims nothing."""
    assert psql(postgres_database, SQL).returncode == 0
    assert psql(postgres_database, SQL).returncode == 0
    connection = psycopg2.connect(postgres_database)
    try:
        cursor = connection.cursor()
        cursor.execute("select version from astra.schema_version")
        assert cursor.fetchall() == [(versions.CURRENT,)]
    finally:
        connection.close()


@pytest.mark.slow
def test_sql_file_over_an_old_schema_leaves_it_old(postgres_database, old_astra):
    assert psql(postgres_database, old_astra / "schema" / "astradb" / "astradb.sql").returncode == 0
    assert psql(postgres_database, SQL).returncode == 0
    line = one_line_error(astra("tasks", "list", env={"ASTRA_DATABASE_URL": postgres_database}), 1)
    assert "holds astra schema 1" in line and "astra db upgrade" in line


def test_upgrade_and_a_dry_run_make_no_sqlite_database(tmp_path):
    """`astra db upgrade` and `astra db migrate --dry-run` pointed at a missing SQLite file or a catalogue say so;
    before: they made the file (and its folder) or the astra schema in the catalogue, and upgrade said the database
    'already holds astra schema 12; nothing to do', the dry run 'nothing was changed'."""
    other = catalogue(tmp_path / "catalogue.db")
    for path, said in [(tmp_path / "new" / "astra.db", "does not exist"), (other, "has no astra schema")]:
        env = {"ASTRA_DATABASE_URL": f"sqlite:///{path}"}
        for args in [("db", "upgrade"), ("db", "migrate", "--module", "workflows", "--dry-run")]:
            assert said in one_line_error(astra(*args, env=env), 1), args
    assert not (tmp_path / "new").exists()
    with contextlib.closing(sqlite3.connect(other)) as connection:
        assert connection.execute("select name from sqlite_master").fetchall() == [("stars",)]


def test_a_new_sqlite_database_is_current(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTRA_DATABASE_URL", f"sqlite:///{tmp_path / 'new.db'}")
    assert versions.recorded(database()) == versions.CURRENT


def test_add_column_is_one_step(database_url):
    """What another column of astra.task takes: add_column(field) adds it once, keeping the rows."""
    field = peewee.TextField(null=True)
    field.bind(Task, "queue", set_attribute=False)
    step = versions.add_column(field)
    db = database()
    Task.insert(task_module="m", task_name="T", task_id="T", task_hash="e" * 64, version="", status="done",
                created=utcnow(), attempts=1, astra_version="0").execute()  # fmt: skip
    with db.atomic():
        step.apply(db)
    with db.atomic():
        step.apply(db)  # a second time does nothing
    schema = None if database_url.startswith("sqlite") else "astra"
    assert "queue" in {column.name for column in db.get_columns("task", schema=schema)}
    assert Task.select().count() == 1


def test_a_database_whose_version_rows_are_gone_is_not_upgraded_twice(database_url):
    """A restore that left astra.schema_version's rows out (or a hand that deleted them) made a current database read
    as schema 1: its upgrade failed on PostgreSQL (`operator does not exist: jsonb ~~ unknown`) and on SQLite
    rewrote the results a second time. Now what the steps left says how far it is."""
    assert luigi.build([UpgradeSummary(n=6)], local_scheduler=True, log_level="WARNING")

    def results() -> dict[str, str]:  # as text: NaN is not equal to itself
        return {task.task_hash: json.dumps(task.result, sort_keys=True) for task in Task.select()}

    before = results()
    SchemaVersion.delete().execute()
    line = one_line_error(astra("tasks", "list"), 1)
    assert "holds astra schema 11, older than this astra's" in line, line
    upgraded = astra("db", "upgrade")
    assert upgraded.returncode == 0 and "from astra schema 11 to 12" in upgraded.stdout, upgraded.stderr
    assert results() == before
    forget_cached()
    read = read_many([UpgradeSpectrum(i=i).output() for i in range(6)])
    assert [row["i"] for row in read] == list(range(6)) and math.isnan(read[5]["snr"]) and read[3]["limit"] == -math.inf


@pytest.mark.slow
def test_an_upgrade_that_fails_says_only_the_steps_it_committed(old_database, backend, monkeypatch):
    """On SQLite (and behind a pooler in transaction mode) the whole upgrade is one transaction: its steps were said
    ("schema 2: ...", up to "schema 11: ...") as they ran, and all of them were rolled back with the last."""
    from astra.database.connection import DatabaseNotReady, reset, upgrade_schema

    def fails(db: peewee.Database) -> None:
        raise psycopg2.OperationalError("server closed the connection unexpectedly")  # as a lost connection would

    monkeypatch.setattr(versions, "STEPS", [*versions.STEPS[:-1], dataclasses.replace(versions.STEPS[-1], apply=fails)])
    said = []
    with pytest.raises(psycopg2.OperationalError):
        upgrade_schema(lambda version, description: said.append(version))
    reset()
    with pytest.raises(DatabaseNotReady, match=f"holds astra schema {max(said, default=1)}, older"):
        database()  # what was said is what the database holds
    assert said == ([] if backend == "sqlite" else list(range(2, versions.CURRENT)))  # each step commits on its own
