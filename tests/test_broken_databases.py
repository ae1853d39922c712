"""A database astra cannot use as it is stops ``luigi`` (and ``astra``) with one ``astra: ...`` line.

Before, a read-only SQLite file, a half-loaded schema or an older table layout gave a traceback for every task
and ``luigi`` exited 0.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from pathlib import Path

import psycopg2
import pytest

from astra.database import create_schema
from tests.helpers import astra, background, raw_sql, run_luigi, wait_for

ESTIMATE = ["--module", "workflows", "EstimateSNR", "--local-scheduler", "--no-lock"]
#: Another spectrum than EstimateSNR's default.
SECOND = ["--spectrum-path", str(Path(__file__).parents[1] / "workflows" / "data" / "spectra" / "spec-00002.fits")]


def _one_astra_line(text: str) -> str:
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.startswith("astra: ")]
    assert len(lines) == 1, text
    return lines[0]


def _stops(url: str, *words: str) -> None:
    """``luigi`` and ``astra db status`` on ``url`` both stop with one ``astra:`` line holding ``words``."""
    result = run_luigi(*ESTIMATE, env={"ASTRA_DATABASE_URL": url}, timeout=120)
    assert result.returncode != 0, result.stdout
    line = _one_astra_line(result.stdout)
    assert "ran successfully" not in result.stdout
    status = astra("db", "status", env={"ASTRA_DATABASE_URL": url})
    assert status.returncode == 1, status
    assert status.stderr.strip() == line, (status.stderr, line)
    for word in words:
        assert word in line, line


def _execute(url: str, sql: str) -> None:
    if url.startswith("sqlite:///"):
        connection = sqlite3.connect(url[len("sqlite:///") :])
        connection.execute(sql)
        connection.commit()
    else:
        connection = psycopg2.connect(url)
        connection.autocommit = True
        connection.cursor().execute(sql)
    connection.close()


@contextlib.contextmanager
def _read_only(path: Path):
    """``path`` made read-only, also for root (who ignores permission bits): immutable, where the filesystem can."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        yield
        path.chmod(0o644)
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a filesystem without chattr +i: cannot make a read-only file")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.slow
def test_a_read_only_sqlite_file_stops_what_writes_and_serves_what_reads(tmp_path, monkeypatch):
    """luigi stops at once (before a task computes what it could not record), and so do forget and db init; the
    commands that only read work, as they do on a PostgreSQL read replica."""
    path = tmp_path / "astra.db"
    url = f"sqlite:///{path}"
    env = {"ASTRA_DATABASE_URL": url}
    monkeypatch.setenv("ASTRA_DATABASE_URL", url)
    create_schema()
    assert "1 ran successfully" in run_luigi(*ESTIMATE, env=env).stdout
    _execute(url, "drop trigger astra_rows_deleted_snr")  # a table of an earlier release: a reader cannot add it
    with _read_only(path):
        result = run_luigi(*ESTIMATE, *SECOND, env=env, timeout=120)
        line = _one_astra_line(result.stdout)
        assert result.returncode != 0 and "ran successfully" not in result.stdout
        assert "read-only" in line and str(path) in line and "make it writable" in line, line
        for writes in (("tasks", "forget", "1", "--yes"), ("db", "init")):
            refused = astra(*writes, env=env)
            assert refused.returncode == 1 and refused.stderr.strip() == line, refused
        for reads, shows in [
            (("tasks", "list"), "EstimateSNR"),
            (("tasks", "show", "1"), "status     done"),
            (("tasks", "why", "--module", "workflows", "EstimateSNR"), "is done: task 1"),
            (("db", "status"), "tasks         1 (done 1,"),
            (("results", "EstimateSNR", "--module", "workflows", "--format", "csv"), "spec-00001.fits"),
        ]:
            read = astra(*reads, env=env)
            assert read.returncode == 0 and shows in read.stdout, (reads, read.stdout, read.stderr)
    assert raw_sql(url, "select status from task") == [("done",)]  # as it was
    result = run_luigi(*ESTIMATE, *SECOND, env=env)  # writable again: works
    assert "1 ran successfully" in result.stdout, result.stdout


@pytest.mark.slow
def test_a_half_loaded_schema_stops_luigi_until_db_init_completes_it(database_url, backend):
    prefix = "astra." if backend == "postgresql" else ""
    _execute(database_url, f"drop table {prefix}task_parameter")
    _execute(database_url, f"drop table {prefix}parameter")
    if backend == "postgresql":
        _stops(
            database_url, "only part of the astra schema", "astra.parameter", "astra.task_parameter", "astra db init"
        )
        init = astra("db", "init", env={"ASTRA_DATABASE_URL": database_url})
        assert init.returncode == 0, init.stderr
    # SQLite creates missing tables itself when it opens the file.
    result = run_luigi(*ESTIMATE, env={"ASTRA_DATABASE_URL": database_url})
    assert result.returncode == 0 and "1 ran successfully" in result.stdout, result.stdout


@pytest.mark.slow
def test_an_older_table_layout_stops_luigi_with_one_line(database_url, backend):
    prefix = "astra." if backend == "postgresql" else ""
    _execute(database_url, f"alter table {prefix}task drop column traceback")
    _stops(database_url, "older astra schema", f"{prefix}task.traceback", "astra db upgrade")
    init = astra("db", "init", env={"ASTRA_DATABASE_URL": database_url})  # creating tables does not fix it
    assert init.returncode == 1 and "older astra schema" in init.stderr, init.stderr


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_an_sqlite_file_deleted_mid_run_stops_the_run_rather_than_record_into_nothing(tmp_path, workers):
    """The process went on writing into the deleted file (and a forked worker made a new, empty one at the path):
    the run ended with every task done, and nothing recorded anywhere."""
    path = tmp_path / "run.db"
    env = {"ASTRA_DATABASE_URL": f"sqlite:///{path}", "SLOW_DIR": str(tmp_path)}
    args = ["--module", "tests.faults_tasks", "Sluggards", "--n", "4", "--workers", str(workers), "--local-scheduler"]
    with background((args, tmp_path / "run.log", env)) as [run]:
        wait_for(lambda: list(tmp_path.glob("started-*")), what="the first task to start")
        for name in ("run.db", "run.db-wal", "run.db-shm"):
            with contextlib.suppress(FileNotFoundError):
                (tmp_path / name).unlink()
        code = run.wait(timeout=120)
    output = run.text()
    assert code != 0, output
    assert f"SQLite database {path} was deleted or replaced while this run used it" in output, output
    assert "This progress looks :)" not in output


@pytest.mark.slow
def test_a_statement_the_server_cancels_is_one_line(postgres_url):
    """A statement_timeout set on the database cancels astra's statements too, here the COPY of a batch's chunk
    (made slow by a trigger): the batch failed with a traceback of 60 lines, and `astra` said only `astra: database
    error: canceling statement due to statement timeout`. Now one line says what happened and what to do."""
    name = postgres_url.rsplit("/", 1)[1]
    _execute(postgres_url, f"alter database {name} set statement_timeout = '500ms'")  # for the sessions to come
    _execute(
        postgres_url,
        "create function astra.slow() returns trigger language plpgsql as $$ begin perform pg_sleep(1); "
        "return null; end $$",
    )
    _execute(postgres_url, "create trigger slow before insert on astra.task execute function astra.slow()")
    ran = run_luigi("--module", "tests.batch_tasks", "MeasureStars", "--stars", "40", "--local-scheduler")
    assert ran.returncode == 30 and "Traceback" not in ran.stdout, ran.stdout[-3000:]
    cancelled = (
        f"DatabaseCancelledError: astra: {postgres_url} cancelled a statement (canceling statement due to statement "
        "timeout), so nothing of its transaction was recorded; run again, and if a statement_timeout set on the server"
    )
    assert cancelled in ran.stdout, ran.stdout[-3000:]
    assert raw_sql(postgres_url, "select count(*) from astra.task") == [(0,)]
