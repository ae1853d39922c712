"""A read-only replica (a PostgreSQL hot standby): what reads works there, read ahead by helper threads too; what
writes stops with one line that says to use the primary, and changes nothing."""

from __future__ import annotations

import threading

import luigi
import psycopg2

from astra import results_table
from astra.database import create_schema, output_tables
from astra.database.connection import reset
from astra.database.dialect import PostgreSQL
from astra.targets import forget_cached
from tests.helpers import astra, main, run_luigi
from tests.output_tasks import Sparse, SparseFit


def _use(monkeypatch, url: str) -> None:
    monkeypatch.setenv("ASTRA_DATABASE_URL", url)
    reset()
    forget_cached()


def test_a_standby_reads_and_tells_writers_where_to_go(postgres_standby, monkeypatch, capsys):
    primary, standby = f"{postgres_standby.primary_url}/postgres", f"{postgres_standby.standby_url}/postgres"
    _use(monkeypatch, primary)
    create_schema()
    output_tables.create([Sparse])
    assert luigi.build([SparseFit(star=i) for i in range(7)], local_scheduler=True, log_level="WARNING")
    postgres_standby.caught_up()

    # Reading: the same bytes as the primary's, a task at a time, the next chunks read by helpers on the standby.
    monkeypatch.setattr(results_table, "TASKS_PER_CHUNK", 1)
    asked = ("results", "SparseFit", "--format", "csv")
    on_primary = main(capsys, *asked)
    _use(monkeypatch, standby)
    helpers = []
    read_snapshot = PostgreSQL.read_snapshot

    def watched(self, db, snapshot):
        read_snapshot(self, db, snapshot)
        (recovering,) = db.execute_sql("select pg_is_in_recovery()").fetchone()
        helpers.append((threading.current_thread().name, recovering))

    monkeypatch.setattr(PostgreSQL, "read_snapshot", watched)
    on_standby = main(capsys, *asked)
    assert on_standby.returncode == 0, on_standby.stderr
    assert on_standby.stdout == on_primary.stdout and on_standby.stdout.count("\n") == 8
    assert helpers and all(name.startswith("astra-ahead") and recovering for name, recovering in helpers), helpers
    pk = on_standby.stdout.splitlines()[1].split(",")[0]
    for command in (("tasks", "list"), ("tasks", "show", pk), ("tasks", "why", "SparseFit", "--star", "2")):
        shown = main(capsys, *command)
        assert shown.returncode == 0 and shown.stdout and not shown.stderr, (command, shown.stderr)

    # Writing: one line naming the primary, exit 1, nothing changed.
    for command in (("tasks", "forget", pk, "-y"), ("db", "init"), ("db", "upgrade")):
        refused = astra(*command, env={"ASTRA_DATABASE_URL": standby})
        assert refused.returncode == 1, (command, refused.stderr)
        line = refused.stderr.strip()
        assert "\n" not in line and "Traceback" not in line, line
        assert line.startswith(f"astra: {standby} is read-only (cannot execute"), line
        assert "on its primary (ASTRA_DATABASE_URL or [astra] database_url)" in line
    with psycopg2.connect(primary) as connection, connection.cursor() as cursor:
        cursor.execute("select count(*) from astra.task where status = 'done'")
        assert cursor.fetchone() == (7,)

    # A luigi run: the task fails in one line (no traceback), and the run says why it is not done.
    ran = run_luigi("--module", "tests.output_tasks", "SparseFit", "--star", "9", "--local-scheduler",
                    env={"ASTRA_DATABASE_URL": standby})  # fmt: skip
    assert ran.returncode == 30, ran.stdout[-3000:]
    assert "Traceback" not in ran.stdout, ran.stdout[-3000:]
    assert f"failed    SparseFit(star=9): ReadOnlyDatabaseError: astra: {standby} is read-only" in ran.stdout
    assert "astra: SparseFit(star=9) is not done: the database is read-only, so nothing could be recorded" in ran.stdout
    # A task done already is done on the standby too: nothing to write, exit 0.
    done = run_luigi("--module", "tests.output_tasks", "SparseFit", "--star", "2", "--local-scheduler",
                     env={"ASTRA_DATABASE_URL": standby})  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
