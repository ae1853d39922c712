"""astra behind a connection pooler in transaction mode (a real pgbouncer, from scripts/pgbouncer-local).

There, consecutive transactions of one client may run in different server sessions: nothing astra relies on may
outlive a transaction (prepared statements, temporary tables, session settings, session advisory locks). Without a
pgbouncer these tests are skipped (``scripts/pgbouncer-local start`` brings one up; CI requires it).
"""

from __future__ import annotations

import re

import pytest

from astra.database import Task
from astra.database.connection import database
from tests.helpers import (
    REPO,
    ServerConnections,
    astra,
    astra_many,
    background,
    finished_cleanly,
    jobs_of,
    old_luigi,
    psql,
    run_luigi,
    slurm_args,
    summary,
    wait_for,
)
from workflows import SNR
from workflows.spectra import simulate

pytestmark = pytest.mark.slow


def test_the_connection_through_pgbouncer_keeps_no_session(pgbouncer_url):
    """Detected ([astra] pooler = auto): the claims and finishes are sent as plain statements, prepared nowhere."""
    from astra.database import queries

    db = database()
    assert db.keeps_session is False
    attempt = queries.claim({"task_module": "m", "task_name": "T", "task_id": "T_a", "task_hash": "a" * 64,
                             "version": "", "astra_version": ""}, {"x": "1"}, 60)  # fmt: skip
    queries.finish(attempt, {"ok": 1}, 0.1, [])
    assert queries.done_hashes(["a" * 64]) == {"a" * 64}
    assert db.execute_sql("select count(*) from pg_prepared_statements").fetchone() == (0,)


def test_four_luigi_processes_of_four_workers_share_one_dag_through_pgbouncer(
    pgbouncer_url, postgres_database, tmp_path
):
    """The DAG of issue 23: on main it failed with 'prepared statement ... does not exist / already exists'. Twenty
    processes use no more server connections than pgbouncer's pool has (default_pool_size = 8)."""
    simulate(tmp_path / "spectra", count=200, seed=5)
    args = ["--module", "workflows", "SummariseSNR", "--spectra-dir", str(tmp_path / "spectra"), "--workers", "4"]
    args += ["--local-scheduler", "--no-lock"]  # luigi locks one command per host
    runs = [(args, tmp_path / f"{n}.out") for n in range(4)]
    with ServerConnections(postgres_database) as server, background(*runs) as processes:
        finished_cleanly(processes)
    assert 1 <= server.most <= 8
    assert Task.select().count() == 201
    assert Task.select().where(Task.status != "done").count() == 0
    assert Task.select().where(Task.attempts != 1).count() == 0  # each task ran once
    assert SNR.select().count() == 200


def test_two_batches_with_output_rows_over_the_same_items_through_pgbouncer(pgbouncer_url, tmp_path):
    """Two batches record the same spectra at once, with their output rows: the second's COPY meets the first's
    rows and goes through the staging tables (temporary tables, made inside each transaction)."""
    simulate(tmp_path / "spectra", count=300, seed=3)
    args = ["--module", "workflows", "EstimateSNRBatch", "--spectra-dir", str(tmp_path / "spectra")]
    args += ["--local-scheduler", "--no-lock"]
    with background((args, tmp_path / "a.out"), ([*args, "--processes", "2"], tmp_path / "b.out")) as processes:
        for process in processes:
            assert process.wait(timeout=600) == 0, process.text()
    for process in processes:
        output = process.text()
        assert "ERROR" not in output and "Traceback" not in output, output
    assert Task.select().where(Task.status == "done").count() == Task.select().count() == 300
    assert SNR.select().count() == 300  # one row per item: the batch that recorded it wrote it
    assert SNR.select(SNR.task).distinct().count() == 300


def test_forget_during_a_batch_through_pgbouncer(pgbouncer_url, tmp_path):
    args = ["--module", "tests.pooler_tasks", "Steps", "--count", "1000", "--local-scheduler", "--no-lock"]
    done = Task.select().where(Task.task_name == "Step", Task.status == "done")
    with background((args, tmp_path / "batch.out")) as (batch,):
        wait_for(lambda: done.count() >= 100, timeout=120, what="100 items recorded")
        forgot = astra("tasks", "forget", "--name", "Step", "-y")
        assert forgot.returncode == 0, forgot.stderr
        assert batch.process.poll() is None  # the batch was still running
        # The forgotten items are not done when the batch ends, so neither is the batch: exit code not_run (25),
        # with astra's one line saying so, and no other error.
        assert batch.wait(timeout=300) == 25, batch.text()
    errors = [line for line in batch.text().splitlines() if "ERROR" in line]
    assert errors == [
        "ERROR: astra: Steps(count=1000) is not done: it ran, but some of its items are not recorded done any more: "
        "forgotten (astra tasks forget) or deleted while it ran? Run the command again"
    ], batch.text()
    assert "Traceback" not in batch.text(), batch.text()
    (forgotten,) = map(int, re.findall(r"forgot (\d+) tasks", forgot.stdout))
    assert 100 <= forgotten < 1000
    assert done.count() == 1000 - forgotten
    again = run_luigi(*args)
    assert "1 ran successfully" in summary(again.stdout), again.stdout
    assert done.count() == Task.select().count() == 1000
    assert Task.select().where(Task.attempts != 1).count() == 0


def test_astra_db_upgrade_through_pgbouncer(pgbouncer_database, postgres_database, old_astra, monkeypatch):
    """A database of schema 1 (made by the old astra, directly), upgraded through pgbouncer, then used there."""
    assert psql(postgres_database, old_astra / "schema" / "astradb" / "astradb.sql").returncode == 0
    old = old_luigi(old_astra, postgres_database, "UpgradeSummary", "--n", "4")
    assert "This progress looks :)" in old.stdout, old.stdout
    env = {"ASTRA_DATABASE_URL": pgbouncer_database}
    for upgraded in astra_many(("db", "upgrade"), ("db", "upgrade"), env=env):  # two at once: one after the other
        assert upgraded.returncode == 0, upgraded.stderr
    assert _advisory_locks(postgres_database) == 0  # none left held by a pooled server session
    assert "astra db upgrade" not in astra("tasks", "list", env=env).stderr
    more = run_luigi("--module", "tests.upgrade_tasks", "UpgradeSummary", "--n", "6", "--local-scheduler", env=env)
    assert "This progress looks :)" in more.stdout, more.stdout
    assert "3 ran successfully" in summary(more.stdout), more.stdout  # two new spectra and their summary
    monkeypatch.setenv("ASTRA_DATABASE_URL", pgbouncer_database)
    database()
    assert Task.select().where(Task.status == "done").count() == Task.select().count() == 6 + 2


def _advisory_locks(url: str) -> int:
    import psycopg2

    connection = psycopg2.connect(url)
    try:
        cursor = connection.cursor()
        cursor.execute("select count(*) from pg_locks where locktype = 'advisory' and database = "
                       "(select oid from pg_database where datname = current_database())")  # fmt: skip
        return cursor.fetchone()[0]
    finally:
        connection.close()


@pytest.mark.slurm
def test_a_slurm_job_array_records_through_pgbouncer(slurm_cluster, pgbouncer_url, tmp_path):
    """A batch as a SLURM job array, every element recording through pgbouncer."""
    simulate(tmp_path / "spectra", count=9, seed=2)
    logs = tmp_path / "logs"
    args = slurm_args(logs, "--module", "workflows", "EstimateSNRBatch", "--spectra-dir", str(tmp_path / "spectra"))
    result = run_luigi(*args, "--jobs", "3", "--local-scheduler", timeout=600)
    assert "1 ran successfully" in summary(result.stdout), result.stdout[-3000:]
    assert len(jobs_of(logs)) == 3
    assert Task.select().where(Task.status == "done").count() == Task.select().count() == 9
    assert SNR.select().count() == 9


#: SQL that would leave state in the server session for a later transaction, which behind a pooler in transaction
#: mode may run in another session, or another client's transaction in this one.
SESSION_STATE = {
    "a session SET (not SET LOCAL)": r"(^|[;\"'(])\s*SET\s+(?!LOCAL\b)(SESSION\s+)?\w+(\.\w+)?\s*(=|TO\b)",
    "a session advisory lock (pg_advisory_xact_lock lasts the transaction)": r"pg_(try_)?advisory_lock(_shared)?\s*\(",
    "LISTEN": r"\bLISTEN\s+\w",
    "a cursor held past its transaction": r"WITH\s+HOLD|withhold|named_cursor|cursor\(\s*name",
    "a temporary table not made in each transaction that uses it": r"CREATE\s+TEMP(ORARY)?\s+TABLE\s+(?!IF NOT EXISTS)",
    "a prepared statement outside dialect.Prepared": r"\bPREPARE\s+\w+",
}


@pytest.mark.parametrize("what", SESSION_STATE)
def test_no_statement_relies_on_the_session(what):
    """Every statement of astra/database (and the schema file it runs) keeps to one transaction; the exceptions, the
    prepared claims and finishes (dialect.Prepared) and the upgrade's lock (one_upgrade), ask whether the session
    is kept."""
    pattern = re.compile(SESSION_STATE[what], re.I | re.M)
    found = []
    for path in [*sorted((REPO / "astra" / "database").glob("*.py")), REPO / "astra" / "database" / "astradb.sql"]:
        text = path.read_text()
        if path.name == "dialect.py":  # the two places that ask whether the session is kept
            text = text.replace(text[text.index("class Prepared") : text.index("def prepared(")], "")
            upgrade = text.index("def one_upgrade", text.index("class PostgreSQL"))
            text = text.replace(text[upgrade : text.index("def lock_for_upgrade", upgrade)], "")
        found += [f"{path.name}: {match.group(0).strip()}" for match in pattern.finditer(text)]
    assert not found, f"{what}: {found}"


def test_results_read_ahead_through_pgbouncer(pgbouncer_url, tmp_path, capsys, monkeypatch):
    """``astra results`` reads its chunks in helper threads that share its snapshot (``pg_export_snapshot``):
    through pgbouncer in transaction mode too, in chunks of one task, giving the rows a single thread reads."""
    import luigi
    from astropy.table import Table

    from astra import results_table
    from tests.helpers import main

    simulate(tmp_path / "spectra", count=20, seed=7)
    done = run_luigi("--module", "workflows", "SummariseSNR", "--spectra-dir", str(tmp_path / "spectra"),
                     "--local-scheduler", "--no-lock")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    monkeypatch.setattr(results_table, "TASKS_PER_CHUNK", 1)
    files = {}
    for helpers in (2, 0):  # [astra] read_helpers; 0: none, the command reads every chunk itself
        luigi.configuration.get_config().set("astra", "read_helpers", str(helpers))
        try:
            files[helpers] = tmp_path / f"snr{helpers}.fits"
            written = main(capsys, "results", "EstimateSNR", "--format", "fits", "-o", str(files[helpers]))
        finally:
            luigi.configuration.get_config().remove_option("astra", "read_helpers")
        assert written.returncode == 0 and "wrote 20 rows" in written.stderr, written.stderr
    read_ahead, alone = (Table.read(files[helpers]) for helpers in (2, 0))
    assert read_ahead.pformat(max_lines=-1, max_width=-1) == alone.pformat(max_lines=-1, max_width=-1)
