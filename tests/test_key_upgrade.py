"""Schema 11 (issue 21, item 3): a database written by main at commit 2f2f5c7 (schema 9, keys as hex text) is
converted in place by `astra db upgrade`, keeping every task, result, parameter, link and output row, its tasks still
done; on PostgreSQL an upgrade killed mid-fill, with the old astra writing meanwhile, resumes to the same end.
Schema 12 (issue 21, item 4): the unique index of task_hash of a database written at schema 11 holds the status."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys

import psycopg2
import pytest

from astra.database import queries, versions
from tests.helpers import (
    REPO,
    astra,
    describe_schema,
    old_luigi,
    old_schema_database,
    psql,
    raw_sql,
    run_luigi,
    run_old_luigi,
    run_upgrade_tasks,
    subprocess_env,
    unpack_commit,
    using_database,
)
from tests.helpers import SCHEMA_SQL as SQL

#: main before schemas 10 and 11: its schema file and code are schema 9, with the keys as hex text.
MAIN = "2f2f5c7"
#: main at schema 10 (an index of JSON results), the last with the keys as hex text.
MAIN_10 = "000886a"
#: main at schema 11 (the keys as bytes), before the unique index of task_hash held the status.
MAIN_11 = "e1900a6"
TABLES = ("task", "parameter", "task_parameter", "dependency", "snr")


@pytest.fixture(scope="module")
def schema9(tmp_path_factory):
    """astra, its schema and the example workflows of commit 2f2f5c7."""
    return unpack_commit(MAIN, ["astra", "schema", "workflows"], tmp_path_factory.mktemp("astra-2f2f5c7"))


@pytest.fixture(scope="module")
def schema10(tmp_path_factory):
    """astra of commit 000886a, schema 10: what still runs while the upgrade to 11 prepares."""
    return unpack_commit(MAIN_10, ["astra", "schema", "workflows"], tmp_path_factory.mktemp("astra-000886a"))


@pytest.fixture(scope="module")
def schema11(tmp_path_factory):
    """astra of commit e1900a6, schema 11."""
    return unpack_commit(MAIN_11, ["astra", "schema", "workflows"], tmp_path_factory.mktemp("astra-e1900a6"))


def _old_astra(checkout, url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ASTRA_DATABASE_URL": url, "PYTHONPATH": str(checkout)}
    return subprocess.run([sys.executable, "-m", "astra.cli", *args], env=env, cwd=checkout, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def _write_with_old_astra(checkout, url: str) -> None:
    """Tasks alone and in a batch, their dependencies, a failure, and output rows (the example's astra.snr)."""
    made = _old_astra(checkout, url, "db", "init", "--module", "workflows")
    assert made.returncode == 0, made.stdout + made.stderr
    run_upgrade_tasks(checkout, url)
    ran = run_old_luigi(checkout, url, "--module", "workflows", "SummariseSNR")
    assert "This progress looks :)" in ran.stdout, ran.stdout


@pytest.fixture
def schema9_database(backend, tmp_path, request, schema9, monkeypatch) -> str:
    url = old_schema_database(backend, tmp_path, request, schema9)
    _write_with_old_astra(schema9, url)
    with using_database(url, monkeypatch):
        yield url


def _connect(url: str):
    return sqlite3.connect(url[len("sqlite:///") :]) if url.startswith("sqlite:///") else psycopg2.connect(url)


def content(url: str, tables=TABLES) -> dict[str, list[dict]]:
    """Every row of ``tables`` by column name (not position: the upgrade moves a key to the end of its table), the
    keys as hex text whichever way they are stored; columns of an unfinished upgrade (``*_bytes``) left out."""
    prefix = "" if url.startswith("sqlite:///") else "astra."
    connection = _connect(url)
    try:
        found = {}
        for table in tables:
            cursor = connection.cursor()
            cursor.execute(f"select * from {prefix}{table}")
            names = [column[0] for column in cursor.description]
            rows = [
                {
                    name: bytes(value).hex()
                    if isinstance(value, (bytes, memoryview)) and name.endswith("_hash")
                    else value
                    for name, value in zip(names, row)
                    if not name.endswith("_bytes")
                }
                for row in cursor.fetchall()
            ]
            found[table] = sorted(rows, key=lambda row: repr(sorted(row.items())))
        return found
    finally:
        connection.close()


def _check_still_done(checkout) -> None:
    """luigi finds every recorded task done: nothing runs again."""
    summary = run_luigi("--module", "tests.upgrade_tasks", "UpgradeSummary", "--n", "10", "--local-scheduler")
    assert "1 complete ones were encountered" in summary.stdout and "ran successfully" not in summary.stdout, (
        summary.stdout
    )
    batch = run_luigi("--module", "tests.upgrade_tasks", "UpgradeSpectra", "--start", "10", "--stop", "20",
                      "--local-scheduler")  # fmt: skip
    assert "1 complete ones were encountered" in batch.stdout and "ran successfully" not in batch.stdout, batch.stdout
    spectra = str(checkout / "workflows" / "data" / "spectra")  # where the old astra's run read them
    snr = run_luigi("--module", "workflows", "SummariseSNR", "--spectra-dir", spectra, "--local-scheduler")
    assert "1 complete ones were encountered" in snr.stdout and "ran successfully" not in snr.stdout, snr.stdout


def _astra_schema(url: str) -> dict:
    """describe_schema of astra's own tables (not the output tables)."""
    own = ("task", "parameter", "task_parameter", "dependency", "schema_version")
    described = describe_schema(url)
    return {
        "columns": [c for c in described["columns"] if c[0] in own],
        "indexes": [i for i in described["indexes"] if i[1].split(" ON astra.")[1].split(" ")[0] in own],
        "constraints": [c for c in described["constraints"] if c[0].removeprefix("astra.") in own],
    }


def _fresh_schema(url: str) -> dict:
    """describe_schema of a new database made by this astra's schema file (beside the one at ``url``)."""
    name = url.rsplit("/", 1)[1] + "_fresh"
    admin = psycopg2.connect(url)
    admin.autocommit = True
    admin.cursor().execute(f"create database {name}")
    fresh = url.rsplit("/", 1)[0] + "/" + name
    try:
        assert psql(fresh, SQL).returncode == 0
        return _astra_schema(fresh)
    finally:
        admin.cursor().execute(f"drop database if exists {name} with (force)")
        admin.close()


@pytest.mark.slow
def test_upgrade_from_main_keeps_every_row_and_every_task_done(schema9_database, backend, schema9):
    url = schema9_database
    before = content(url)
    assert len(before["task"]) == 22 + 6 and len(before["snr"]) == 5 and len(before["dependency"]) == 10 + 5
    assert all(len(row["task_hash"]) == 64 for row in before["task"])

    upgraded = astra("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert f"from astra schema 9 to {versions.CURRENT}" in upgraded.stdout, upgraded.stdout
    again = astra("db", "upgrade")
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr

    assert content(url) == before
    connection = _connect(url)
    try:
        cursor = connection.cursor()
        prefix = "" if backend == "sqlite" else "astra."
        cursor.execute(f"select task_hash, length(task_hash) from {prefix}task")
        assert all(isinstance(key, (bytes, memoryview)) and size == 32 for key, size in cursor.fetchall())
    finally:
        connection.close()
    if backend == "postgresql":
        assert _astra_schema(url) == _fresh_schema(url)  # the same columns, types, indexes and checks as new
    _check_still_done(schema9)
    # The astra command reads them: a hash prefix of odd length finds its task.
    key = before["task"][0]["task_hash"]
    shown = astra("tasks", "show", key[:7])
    assert shown.returncode == 0 and key in shown.stdout, shown.stdout + shown.stderr


#: The upgrade, with parts of 100 rows (so that it is still filling when killed) and its lines unbuffered.
SLOW_UPGRADE = (
    "from astra.database import key_upgrade; key_upgrade.FILL_CHUNK = 100; "
    "from astra.cli import main; main(['db', 'upgrade'])"
)
#: Tasks (and a parameter each) added by SQL to the old database, so that the fill takes a while.
EXTRA = 30_000


def _add_rows(url: str) -> None:
    """EXTRA more done tasks in the old format (hex keys), each linked to a parameter of its own."""
    connection = psycopg2.connect(url)
    connection.autocommit = True
    cursor = connection.cursor()
    cursor.execute(
        "insert into astra.task (task_module, task_name, task_id, task_hash, version, status, created, attempts, "
        "astra_version) select 'm', 'Extra', 'Extra_' || i, encode(sha256(('extra' || i)::bytea), 'hex'), '', "
        "'done', now(), 1, '0' from generate_series(1, %s) i",
        (EXTRA,),
    )
    cursor.execute(
        "insert into astra.parameter (parameter_name, parameter_value, parameter_hash) select 'i', i::text, "
        "encode(sha256(('i' || i)::bytea), 'hex') from generate_series(1, %s) i",
        (EXTRA,),
    )
    cursor.execute(
        "insert into astra.task_parameter (task_pk, parameter_pk) select t.pk, p.pk from astra.task t "
        "join astra.parameter p on p.parameter_name = 'i' and t.task_id = 'Extra_' || p.parameter_value"
    )
    connection.close()


def _interrupted_build(url: str, name: str, create: str) -> None:
    """Index ``name`` made by ``create`` and left INVALID, as a ``CREATE INDEX CONCURRENTLY`` interrupted leaves it."""
    connection = psycopg2.connect(url)
    connection.autocommit = True
    connection.cursor().execute(create)
    connection.cursor().execute("update pg_index set indisvalid = false where indexrelid = %s::regclass",
                                (f"astra.{name}",))  # fmt: skip
    connection.close()


def _one(url: str, sql: str) -> tuple:
    return raw_sql(url, sql)[0]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql"])
def test_upgrade_killed_mid_fill_resumes_to_the_same_end(schema9_database, schema9, schema10):
    url = schema9_database
    _add_rows(url)
    before = content(url)
    upgrade = subprocess.Popen(
        [sys.executable, "-c", SLOW_UPGRADE], env=subprocess_env({"PYTHONUNBUFFERED": "1"}), cwd=REPO,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    said = []
    try:
        for line in upgrade.stdout:
            said.append(line)
            if "astra.task.task_hash: up to pk" in line:
                break
    finally:
        upgrade.send_signal(signal.SIGKILL)
        upgrade.wait(timeout=60)
    assert any("up to pk" in line for line in said), said
    # Killed mid-fill: not schema 11 yet, the new column partly filled.
    assert _one(url, "select max(version) from astra.schema_version") == (10,)
    total, filled = _one(url, "select count(*), count(task_hash_bytes) from astra.task")
    assert 0 < filled < total, (filled, total)

    # The astra of schema 10 (which the killed run reached) goes on working: the trigger gives its new rows their bytes.
    ran = old_luigi(schema10, url, "UpgradeSpectra", "--start", "20", "--stop", "25")
    assert "This progress looks" in ran.stdout, ran.stdout
    assert _one(url, "select count(*) from astra.task where task_name = 'UpgradeSpectrum' "
                "and task_hash_bytes = decode(task_hash, 'hex')") == (25,)  # fmt: skip
    written = content(url)
    assert len(written["task"]) == len(before["task"]) + 5

    # An index build interrupted as well: left INVALID, it is dropped and built again.
    _interrupted_build(url, "task_task_id_hash", "create index task_task_id_hash on astra.task using hash (task_id)")

    resumed = astra("db", "upgrade")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"from astra schema 10 to {versions.CURRENT}" in resumed.stdout, resumed.stdout
    assert content(url) == written
    assert _one(url, "select count(*) from astra.task where length(task_hash) = 32") == (len(written["task"]),)
    assert _astra_schema(url) == _fresh_schema(url)
    assert _one(url, "select bool_and(indisvalid) from pg_index where indrelid = 'astra.task'::regclass") == (True,)
    _check_still_done(schema9)
    more = run_luigi("--module", "tests.upgrade_tasks", "UpgradeSpectra", "--start", "20", "--stop", "26",
                     "--local-scheduler")  # fmt: skip
    assert "1 ran successfully" in more.stdout, more.stdout  # only the one never run


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql"])
def test_the_index_of_task_hash_takes_the_status_and_every_task_stays_done(
    backend, tmp_path, request, schema11, monkeypatch
):
    url = old_schema_database(backend, tmp_path, request, schema11)
    _write_with_old_astra(schema11, url)
    with using_database(url, monkeypatch):
        before = content(url)
        assert _one(url, "select indexdef from pg_indexes where indexname = 'task_task_hash'") == (
            "CREATE UNIQUE INDEX task_task_hash ON astra.task USING btree (task_hash)",
        )
        # A build of the new index interrupted by an earlier run: left INVALID, it is dropped and built again.
        _interrupted_build(
            url, "task_task_hash_status", "create unique index task_task_hash_status on astra.task (task_hash)"
        )

        upgraded = astra("db", "upgrade")
        assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
        assert f"from astra schema 11 to {versions.CURRENT}" in upgraded.stdout, upgraded.stdout
        assert content(url) == before
        assert _astra_schema(url) == _fresh_schema(url)
        assert _one(url, "select indexdef from pg_indexes where indexname = 'task_task_hash'") == (
            "CREATE UNIQUE INDEX task_task_hash ON astra.task USING btree (task_hash) INCLUDE (status)",
        )
        assert _one(url, "select bool_and(indisvalid), count(*) from pg_index "
                    "where indrelid = 'astra.task'::regclass") == (True, 5)  # fmt: skip
        _check_still_done(schema11)
        done = {row["task_hash"] for row in before["task"] if row["status"] == "done"}
        assert len(done) == len(before["task"]) - 1  # all but UpgradeFails
        assert queries.done_hashes(row["task_hash"] for row in before["task"]) == done


def test_an_astra_older_than_binary_keys_fails_on_sqlite_rather_than_spin(sqlite_url):
    """astra before schema 11 claimed a task with INSERT OR IGNORE and a hash as hex text: on SQLite that skips the
    row the CHECK refuses, as it skips one already there, and such a worker, still running after an upgrade, looked
    for its row, found none and tried again at full speed, forever. Its insert is an error now."""
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as old:
        with pytest.raises(sqlite3.IntegrityError, match="an astra older than that wrote one as text: stop its"):
            old.execute(  # the older release's claim
                "INSERT OR IGNORE INTO task (task_module, task_name, task_id, task_hash, version, status, created, "
                "attempts, astra_version) VALUES ('m', 'T', 'T_1', ?, '', 'running', '2026-01-01', 1, '0.1')",
                ("ab" * 32,),
            )
        assert old.execute("SELECT count(*) FROM task").fetchone() == (0,)
