"""Faults: a worker killed mid-task, PostgreSQL connections dropped mid-DAG, a database that is not there."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time

import luigi
import psycopg2
import pytest

from astra.database import Task, records
from astra.database.connection import reset
from astra.identity import task_hash
from astra.targets import forget_cached
from tests.claims_tasks import hold, hold_args, row_of, runners
from tests.faults_tasks import After, ForgetsItsInput, Pause, Pauses, Sluggard, Tally, WaitsToFinish, WritesTally
from tests.helpers import (
    POSTGRES_USER,
    Relay,
    astra,
    background,
    free_port,
    raw_sql,
    rows_by_path,
    run_luigi,
    start_later,
    summary,
    wait_for,
    with_password,
)
from workflows import SNR
from workflows.spectra import read_spectrum, signal_to_noise, simulate

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
@pytest.mark.parametrize("backend", ["sqlite"])  # PostgreSQL's connections are each process's own
def test_a_worker_left_running_by_a_killed_luigi_records_its_task_in_sqlite(database_url, tmp_path):
    """luigi's parent killed (SIGKILL) while the worker it forked (``--workers 2``) runs the task: the orphan ran on,
    but its record was lost (the task stayed "running", to be run again) once a reader opened the file meanwhile,
    and in a busier file other runs' records went with it and the file was corrupted. The child had found the
    parent's SQLite lock records, copied by fork(), and believed it held locks it did not."""
    status = f"select status, pid, attempts from task where task_hash = x'{task_hash(hold(tmp_path, 'orphan'))}'"
    reset()  # this process holds the file open no more: the reader below is its last user
    with background() as started:
        parent = start_later(started, hold_args(tmp_path, "orphan", "--workers", "2"), tmp_path / "orphan.out")
        wait_for(lambda: runners(tmp_path, "orphan"), what="the task to start")
        (worker,) = runners(tmp_path, "orphan")
        os.kill(parent.process.pid, signal.SIGKILL)  # the parent alone: its worker runs on
        parent.wait()
        reader = astra("tasks", "list")  # opens the file, then closes it as its last user
        assert reader.returncode == 0 and "running" in reader.stdout, reader.stdout + reader.stderr
        (tmp_path / "orphan.release").touch()
        wait_for(lambda: raw_sql(database_url, status)[0][0] != "running", what="the orphaned worker to record it")
    assert raw_sql(database_url, status) == [("done", worker, 1)]
    assert raw_sql(database_url, "pragma integrity_check") == [("ok",)]


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


def test_a_statement_whose_new_connection_is_lost_too_runs_again(postgres_url):
    """A server restarting twice, or terminating backends in a loop (as pg_terminate_backend every 0.1 s did in
    /work/scratch/h_faults-repros/terminate_simple.py): the statement met the second loss right after reconnecting,
    and a task failed with a bare "OperationalError: server closed the connection unexpectedly"."""
    from astra.database import database
    from astra.database.connection import ConnectionLostError

    db = database()
    db.execute_sql("create sequence astra.cuts")
    cut = "select case when nextval('astra.cuts') <= %s then pg_terminate_backend(pg_backend_pid()) end, 7"
    assert db.execute_sql(cut, (3,)).fetchone()[1] == 7  # lost three times, answered on the fourth connection
    with pytest.raises(ConnectionLostError, match=r"lost the connection to .* 6 times in a row, each time right"):
        db.execute_sql(cut, (1000,))  # a statement that ends its own session each time: one line, not a loop
    assert db.execute_sql("select 1").fetchone() == (1,)


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


#: A statement trigger that makes each insert (a COPY too) into a table wait in the server first, long enough for a
#: test to cut the connection while the COPY is under way.
SLOW_INSERTS = """
create or replace function public.astra_test_pause() returns trigger language plpgsql as $$
begin
    perform pg_sleep(1);
    return null;
end $$;
"""


def _slow_copies(admin, tables: list[str]) -> None:
    with admin.cursor() as cursor:
        cursor.execute(SLOW_INSERTS)
        for table in tables:
            cursor.execute(
                f"create trigger astra_test_pause before insert on {table} "
                "for each statement execute function public.astra_test_pause()"
            )


def _cut_copies(admin, process, tables: list[str]) -> list[str]:
    """Terminate the connection of the first COPY into each of ``tables`` while ``process`` runs; the tables cut."""
    cut: list[str] = []
    while process.poll() is None and len(cut) < len(tables):
        table = tables[len(cut)]
        with admin.cursor() as cursor:
            cursor.execute(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity where datname = current_database() "
                "and pid <> pg_backend_pid() and state = 'active' and query like %s",
                (f"COPY {table} %",),
            )
            if cursor.fetchone()[0]:
                cut.append(table)
        time.sleep(0.02)
    return cut


@pytest.mark.slow
def test_a_batch_whose_connection_drops_during_copy_finishes_and_records_each_item_once(postgres_url, tmp_path):
    paths = simulate(tmp_path / "spectra", count=40, seed=7)
    admin = psycopg2.connect(postgres_url)
    admin.autocommit = True
    _slow_copies(admin, ["astra.task", "astra.snr"])
    env = {"ASTRA_DATABASE_URL": with_password(postgres_url, PASSWORD)}
    args = [
        "--module",
        "workflows",
        "EstimateSNRBatch",
        "--spectra-dir",
        str(tmp_path / "spectra"),
        "--local-scheduler",
    ]
    with background((args, tmp_path / "batch.out", env)) as (batch,):
        cut = _cut_copies(admin, batch.process, ["astra.task", "astra.snr"])
        assert batch.wait() == 0, batch.text()
    admin.close()

    output = batch.text()
    assert cut == ["astra.task", "astra.snr"], output  # the item rows' COPY, then the output rows' in the retry
    assert "1 ran successfully" in summary(output), output
    assert output.count("lost the connection to") == 2 and PASSWORD not in output
    assert "Traceback" not in output, output
    rows = rows_by_path(paths)
    assert all(row is not None and (row.status, row.attempts) == ("done", 1) for row in rows.values()), rows
    assert Task.select().count() == len(paths)
    measured = {row.task.pk: row for row in SNR.select()}
    assert len(measured) == SNR.select().count() == len(paths)  # one row per item: nothing written twice
    for path in paths:
        snr, n_good = signal_to_noise(*read_spectrum(str(path), reader="astropy"))
        row = measured[rows[str(path)].pk]
        assert (row.snr, row.n_good_pixels) == (snr, n_good)


@pytest.mark.slow
def test_a_task_whose_connection_drops_while_writing_its_output_rows_is_done(postgres_url, tmp_path):
    (path,) = simulate(tmp_path / "spectra", count=1, seed=8)
    admin = psycopg2.connect(postgres_url)
    admin.autocommit = True
    _slow_copies(admin, ["astra.snr"])
    env = {"ASTRA_DATABASE_URL": with_password(postgres_url, PASSWORD)}
    args = ["--module", "workflows", "EstimateSNR", "--spectrum-path", str(path), "--local-scheduler"]
    with background((args, tmp_path / "task.out", env)) as (task,):
        cut = _cut_copies(admin, task.process, ["astra.snr"])
        assert task.wait() == 0, task.text()
    admin.close()

    output = task.text()
    assert cut == ["astra.snr"], output
    assert "1 ran successfully" in summary(output), output
    assert "lost the connection to" in output and PASSWORD not in output
    row = rows_by_path([path])[str(path)]
    assert (row.status, row.attempts, row.error) == ("done", 1, None)
    (measured,) = SNR.select().where(SNR.task == row.pk)
    assert measured.snr == signal_to_noise(*read_spectrum(str(path), reader="astropy"))[0]


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
    # What starting luigi and importing the module costs on this machine now (seconds on a loaded one): astra's
    # share, failing at once on a refused connection rather than retrying, is what is left.
    started = time.monotonic()
    run_luigi("--module", "workflows", "EstimateSNR", "--help", env=env, timeout=60)
    start_up = time.monotonic() - started

    assert result.returncode != 0
    assert elapsed < start_up + 10, f"took {elapsed:.1f} s, of which starting luigi {start_up:.1f} s"
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


def test_a_task_whose_input_a_crash_lost_is_not_recorded_done(postgres_url, tmp_path):
    """Done records commit without waiting for the disk, so a server crash loses the last ones. In one run, Pause(i=0)
    is recorded, then the server goes down with its record (Crash), then After(i=0) runs: luigi checked its input
    from what this process knew, so nothing asked the database again, and After was recorded done on top of it."""
    marker = str(tmp_path / "crashed")
    assert not luigi.build([After(i=0, marker=marker)], local_scheduler=True)
    after = Task.get(Task.task_hash == task_hash(After(i=0, marker=marker)))
    assert after.status == "failed", after.status
    assert "Pause(i=0), which this task needs, is not recorded done any more" in after.error, after.error

    forget_cached()
    assert luigi.build([After(i=0, marker=marker)], local_scheduler=True)  # the input is made first, then the task
    statuses = [Task.get(Task.task_hash == task_hash(t)).status for t in (Pause(i=0), After(i=0, marker=marker))]
    assert statuses == ["done", "done"]


def test_a_task_whose_input_is_forgotten_while_it_runs_is_not_recorded_done(database_url):
    """`forget --cascade` finds what needs a task by the recorded edges, and a task still running has none: it was
    recorded done on top of the forgotten input (its edge left out), and no later run made the input again."""
    assert not luigi.build([ForgetsItsInput(i=1)], local_scheduler=True)
    task = Task.get(Task.task_hash == task_hash(ForgetsItsInput(i=1)))
    assert task.status == "failed", task.status
    assert "Pause(i=1), which this task needs, is not recorded done any more" in task.error, task.error
    assert not Task.select().where(Task.task_hash == task_hash(Pause(i=1))).exists()

    forget_cached()
    assert luigi.build([ForgetsItsInput(i=1, forget=False)], local_scheduler=True)  # the input first, then the task
    statuses = [Task.get(Task.task_hash == task_hash(t)).status for t in (Pause(i=1), ForgetsItsInput(i=1))]
    assert statuses == ["done", "done"]


def test_an_input_lost_with_the_tasks_own_claim_is_one_line(database_url):
    """A crash that lost both the input's record and the task's own claim: the failure could not be recorded, and
    luigi printed InputLostError's traceback (23 lines) before astra's line."""
    result = run_luigi("--module", "tests.faults_tasks", "LosesItsInputAndItself", "--i", "3", "--local-scheduler")
    assert result.returncode == 30, result.stdout
    assert "Traceback" not in result.stdout, result.stdout
    assert "InputLostError: astra: Pause(i=3), which this task needs, is not recorded done any more" in result.stdout


def test_the_database_gone_while_luigi_asks_what_is_done_is_one_line(sqlite_url):
    """luigi writes the traceback of an error in complete() into its warning: 40 lines for a server gone."""
    result = run_luigi("--module", "tests.faults_tasks", "AskedWhenGone", "--local-scheduler")
    assert result.returncode == 35, result.stdout
    assert "Traceback" not in result.stdout, result.stdout
    assert "due to error in complete() method: DatabaseGoneError: astra: lost the connection" in result.stdout


@pytest.mark.slow
def test_a_task_that_finishes_while_forget_cascade_runs_is_not_left_done_without_its_input(
    postgres_url, tmp_path, monkeypatch
):
    """`forget --cascade` looked for dependants, then deleted: a dependant that finished in between (its edge
    committed after the look) stayed done, its edge deleted with the forgotten input. Now the rows are locked
    before the look, and such a dependant's record waits for the forget, then finds its input gone."""
    assert luigi.build([Pause(i=2)], local_scheduler=True)
    args = ["--module", "tests.faults_tasks", "WaitsToFinish", "--i", "2", "--local-scheduler"]
    env = {"ASTRA_DATABASE_URL": postgres_url, "SLOW_DIR": str(tmp_path)}
    with background((args, tmp_path / "run.log", env)) as [run]:
        wait_for(lambda: (tmp_path / "started-2").exists(), what="the task to start")
        looked = records.downstream

        def finishing_meanwhile(pks):
            found = looked(pks)
            if not (tmp_path / "go-2").exists():  # once: let the dependant finish between the look and the delete
                (tmp_path / "go-2").touch()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    run.wait(timeout=10)  # it finishes here unless its record waits for this forget
            return found

        monkeypatch.setattr(records, "downstream", finishing_meanwhile)
        records.forget([Task.get(Task.task_hash == task_hash(Pause(i=2))).pk], cascade=True)
        run.wait(timeout=60)
    forget_cached()
    row = Task.get_or_none(Task.task_hash == task_hash(WaitsToFinish(i=2)))
    assert row is None or row.status == "failed", (row.status, run.text())
    if row is not None:
        assert "Pause(i=2), which this task needs, is not recorded done any more" in row.error, row.error


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_server_gone_for_good_stops_the_run_rather_than_each_task_waiting_for_it(postgres_url, tmp_path, workers):
    """Each task waited [astra] reconnect_seconds for the server to come back, twice (its record, then its
    failure), and a forked worker afresh for each: a thousand pending tasks took hours to fail. Now the run starts
    no more tasks once the server stayed away, and those under way try it once more."""
    relay = Relay()
    (tmp_path / "luigi.cfg").write_text("[astra]\nreconnect_seconds = 2\n")
    env = {
        "ASTRA_DATABASE_URL": relay.url(postgres_url),
        "LUIGI_CONFIG_PATH": str(tmp_path / "luigi.cfg"),
        "SLOW_DIR": str(tmp_path),
    }
    args = ["--module", "tests.faults_tasks", "Sluggards", "--n", "12", "--workers", str(workers), "--local-scheduler"]
    with background((args, tmp_path / "run.log", env)) as [run]:
        wait_for(lambda: list(tmp_path.glob("started-*")), what="the first task to start")
        relay.stop()
        code = run.wait(timeout=120)
    output = run.text()
    assert code == 30, output
    assert "the database is gone, so this run starts no more tasks" in output, output
    started = len(list(tmp_path.glob("started-*")))
    assert started <= 2 * workers, (started, output)  # those under way (and one a worker had asked for), not 12
    assert "Traceback" not in output.split("===== Luigi Execution Summary =====")[-1]
    last = output.strip().splitlines()[-1]  # it ended on "reconnecting", saying nothing of the requested task
    assert last.startswith("ERROR: astra: Sluggards(n=12, seconds=1.0) may not be done: the database did not answer")
    assert last.endswith("run the command again once it does"), last


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_stops_the_luigi_command_with_one_line(sqlite_url, tmp_path, workers):
    """It ended in the traceback of the KeyboardInterrupt that astra makes of SIGTERM (so that luigi stops its
    workers), an exit code the README did not list; with two workers, in a traceback per forked task process."""
    args = ["--module", "tests.faults_tasks", "Sluggard", "--i", "0", "--seconds", "60", "--local-scheduler"]
    args += ["--workers", str(workers)]
    env = {"ASTRA_DATABASE_URL": sqlite_url, "SLOW_DIR": str(tmp_path)}
    with background((args, tmp_path / "run.log", env)) as [run]:
        wait_for(lambda: (tmp_path / "started-0").exists(), what="the task to start")
        os.kill(run.pid, signal.SIGTERM)
        assert run.wait(timeout=60) == -signal.SIGINT  # Python ends itself with SIGINT: a shell shows 130
    output = run.text()
    assert "Traceback" not in output, output
    assert output.strip().splitlines()[-1].startswith("astra: stopped (Ctrl-C or SIGTERM)"), output
    forget_cached()
    recorded = Task.get(Task.task_hash == task_hash(Sluggard(i=0, seconds=60.0)))
    assert recorded.status == "failed" and "KeyboardInterrupt" in recorded.error
