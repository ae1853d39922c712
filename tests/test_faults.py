"""Faults: a worker killed mid-task, PostgreSQL connections dropped mid-DAG, a database that is not there."""

from __future__ import annotations

import signal
import socket
import time

import luigi
import psycopg2
import pytest

from astra.database import Task
from astra.identity import task_hash
from astra.targets import forget_cached
from tests.claims_tasks import hold, hold_args, row_of, runners
from tests.faults_tasks import Pauses, Tally, WritesTally
from tests.helpers import POSTGRES_USER, background, free_port, run_luigi, start_later, wait_for, with_password

#: Trust authentication accepts any password: enough to show that it never reaches the output.
PASSWORD = "hunter2-secret"


@pytest.mark.slow
def test_a_killed_worker_leaves_no_completed_row_and_the_next_run_finishes(database_url, tmp_path):
    with background() as started:
        killed = start_later(started, hold_args(tmp_path, "killed"), tmp_path / "killed.out")
        wait_for(lambda: runners(tmp_path, "killed"), what="the task to start")
        killed.signal(signal.SIGKILL)
        killed.wait()

    row = row_of("killed", tmp_path)
    assert (row.status, row.completed, row.result, row.pid) == ("running", None, None, killed.pid)
    forget_cached()
    assert not hold(tmp_path, "killed").complete()

    (tmp_path / "killed.release").touch()
    again = run_luigi(*hold_args(tmp_path, "killed"), timeout=60)
    assert again.returncode == 0, again.stdout
    assert f"taking over from {socket.gethostname()} pid {killed.pid} (its process is gone)" in again.stdout
    row = row_of("killed", tmp_path)
    assert (row.status, row.attempts) == ("done", 2)
    assert runners(tmp_path, "killed") == [killed.pid, row.pid]


@pytest.mark.slow
def test_dropped_connections_mid_dag_are_reopened(postgres_url, tmp_path):
    args = ["--module", "tests.faults_tasks", "Pauses", "--n", "12", "--local-scheduler", "--workers", "2"]
    admin = psycopg2.connect(postgres_url)
    admin.autocommit = True
    dropped = 0
    env = {"ASTRA_DATABASE_URL": with_password(postgres_url, PASSWORD)}
    with background((args, tmp_path / "dag.out", env)) as (dag,):
        wait_for(lambda: Task.select().where(Task.status == "done").count(), what="the first task to finish")
        while dag.process.poll() is None and dropped < 4:
            with admin.cursor() as cursor:  # every connection of the luigi processes to this database
                cursor.execute(
                    "select count(pg_terminate_backend(pid)) from pg_stat_activity "
                    "where datname = current_database() and pid <> pg_backend_pid()"
                )
                dropped += cursor.fetchone()[0] > 0
            time.sleep(0.4)
        assert dag.wait() == 0, dag.text()
    admin.close()

    output = dag.text()
    assert dropped >= 2, output
    assert "lost the connection to" in output and "reconnected to" in output
    assert PASSWORD not in output
    assert Task.select().count() == 13
    assert Task.select().where(Task.status != "done").count() == 0, output
    assert Task.get(Task.task_hash == task_hash(Pauses(n=12))).status == "done"


def test_claims_go_on_when_the_server_forgets_prepared_statements(postgres_url):
    """Claims and finishes are prepared once per connection: a DISCARD ALL (as poolers send) or a new connection
    after a drop must prepare them again, not fail the task."""
    from astra.database import database

    def run(n: int) -> None:
        task = Pauses(n=n)
        assert luigi.build([task], local_scheduler=True, workers=1)
        assert Task.get(Task.task_hash == task_hash(task)).status == "done"

    run(1)
    database().execute_sql("DISCARD ALL")
    assert database().execute_sql("select count(*) from pg_prepared_statements").fetchone()[0] == 0
    run(2)
    admin = psycopg2.connect(postgres_url)
    with admin, admin.cursor() as cursor:
        cursor.execute("select pg_terminate_backend(%s)", (database().connection().get_backend_pid(),))
    admin.close()
    run(3)
    assert Task.select().where(Task.status == "done").count() == 6


@pytest.mark.slow
def test_a_connection_lost_inside_a_transaction_writes_nothing(postgres_url):
    env = {"ASTRA_DATABASE_URL": with_password(postgres_url, PASSWORD)}
    args = ["--module", "tests.faults_tasks", "WritesTally", "--label", "cut", "--local-scheduler"]
    first = run_luigi(*args, env={**env, "DROP_CONNECTION": "1"}, timeout=60)
    assert f"lost the connection to postgresql://{POSTGRES_USER}:***@" in first.stdout
    assert "inside a transaction, which the server rolled back" in first.stdout
    assert PASSWORD not in first.stdout

    row = Task.get(Task.task_hash == task_hash(WritesTally(label="cut")))
    assert row.status == "failed" and row.result is None
    assert row.error.startswith("ConnectionLostError: astra: lost the connection") and PASSWORD not in row.error
    assert Tally.select().where(Tally.label == "cut").count() == 0  # the first two rows went with the connection

    second = run_luigi(*args, env=env, timeout=60)
    assert second.returncode == 0, second.stdout
    row = Task.get(Task.task_hash == task_hash(WritesTally(label="cut")))
    assert (row.status, row.attempts, row.error) == ("done", 2, None)
    assert sorted(t.value for t in Tally.select().where(Tally.label == "cut")) == [0, 1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["environment", "command line"])
def test_an_unreachable_database_is_one_clear_line_within_ten_seconds(where):
    url = f"postgresql://astra:{PASSWORD}@127.0.0.1:{free_port()}/astra"
    args = ["--module", "workflows", "EstimateSNR", "--local-scheduler"]
    if where == "environment":
        env = {"ASTRA_DATABASE_URL": url}
    else:
        env, args = {"ASTRA_DATABASE_URL": ""}, [*args, "--astra-database-url", url]
    started = time.monotonic()
    result = run_luigi(*args, env=env, timeout=60)
    elapsed = time.monotonic() - started

    assert result.returncode != 0
    assert elapsed < 10, f"took {elapsed:.1f} s"
    lines = [line for line in result.stdout.splitlines() if line.startswith("astra:")]
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith("astra: cannot connect to postgresql://astra:***@127.0.0.1:")
    assert "Connection refused" in lines[0]
    assert "Traceback" not in result.stdout
    assert PASSWORD not in result.stdout


def test_passwords_are_masked_wherever_urls_are_shown():
    from astra.database import mask_password

    assert mask_password("postgresql://u:p@ss:w0rd@db.example.org:5432/sdss5db") == (
        "postgresql://u:***@db.example.org:5432/sdss5db"
    )
    # An unencoded "&" may be part of the password: everything after "password=" is hidden.
    assert mask_password("postgresql://u@db/x?sslmode=require&password=pw&x=1") == (
        "postgresql://u@db/x?sslmode=require&password=***"
    )
    assert mask_password("sqlite:////data/astra.db") == "sqlite:////data/astra.db"
