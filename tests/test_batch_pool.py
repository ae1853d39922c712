"""A batch worked by a pool of processes (``--processes N``) records every item as one process does."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import luigi
import pytest

import astra
from astra.batch import BatchError, PoolBrokenError
from astra.database import Task
from astra.database.connection import reset
from astra.identity import task_hash
from tests.batch_pool_tasks import Meeting, Stars, Victim, Victims
from tests.batch_tasks import MeasureStar
from tests.helpers import background, rows_by_path, run_luigi, sessions, subprocess_env, summary, wait_for
from workflows import EstimateSNR, EstimateSNRBatch
from workflows.spectra import read_spectrum, signal_to_noise, simulate


@pytest.mark.slow
def test_a_pool_records_every_item_as_one_process_does(database_url):
    progress, messages = [], []
    batch = Stars(stars=1000, fail_on=517, processes=2)
    batch.set_progress_percentage, batch.set_status_message = progress.append, messages.append
    with pytest.raises(BatchError, match="1 of 1000 items failed"):
        batch.run()
    assert progress[-1] == 100 and messages[-1] == "1000 of 1000 items done or tried, 1 failed"
    done = Task.select().where(Task.task_name == "MeasureStar", Task.status == "done")
    assert sorted(row.result for row in done) == [10 * star for star in range(1000) if star != 517]
    failed = Task.get(Task.status == "failed")
    assert failed.task_hash == task_hash(MeasureStar(star=517, fail_on=517))
    assert failed.error == "ValueError: star 517 has no good pixels"
    assert "in run" in failed.traceback  # the traceback summary made where the item ran
    # This process wrote every record, as it does alone (the pool only computes).
    assert {row.pid for row in Task.select()} == {os.getpid()}
    assert all(row.duration is not None and row.duration >= 0 for row in Task.select())

    again = Stars(stars=1000, processes=2)  # star 517 works now; only it is worked again
    again.run()
    assert again.complete() is True
    assert Task.get(Task.task_hash == task_hash(MeasureStar(star=517))).attempts == 2
    assert Task.select().where(Task.status == "done").count() == 1000


def test_processes_do_not_change_any_identity(tmp_path):
    paths = [str(p) for p in simulate(tmp_path / "spectra", count=2, seed=3)]
    alone, pooled = EstimateSNRBatch(spectra=paths), EstimateSNRBatch(spectra=paths, processes=2)
    assert alone.task_id == pooled.task_id
    assert astra.identity.task_hash(alone) == astra.identity.task_hash(pooled)
    assert [i.task_hash for i in alone.items()] == [i.task_hash for i in pooled.items()]
    assert [i.task_hash for i in pooled.items()] == [task_hash(EstimateSNR(spectrum_path=p)) for p in paths]


@pytest.mark.slow
@pytest.mark.parametrize(
    "parameter, configured, used",
    [(0, None, 1), (2, None, 2), (0, "2", 2), (1, "2", 1)],
    ids=["default", "parameter", "configured", "parameter beats configuration"],
)
def test_processes_come_from_the_parameter_else_the_configuration(database_url, tmp_path, parameter, configured, used):
    (tmp_path / "pids").mkdir()
    if configured is not None:
        luigi.configuration.get_config().set("astra", "batch_processes", configured)
    try:
        Meeting(workdir=str(tmp_path / "pids"), meet=used, processes=parameter).run()
    finally:
        if configured is not None:
            luigi.configuration.get_config().remove_option("astra", "batch_processes")
    pids = {row.result for row in Task.select().where(Task.task_name == "Rendezvous")}
    assert Task.select().where(Task.status == "done").count() == 20
    assert len(pids) == used
    assert (pids == {os.getpid()}) == (used == 1)


@pytest.mark.slow
def test_a_killed_pool_process_leaves_its_items_not_done_and_a_rerun_finishes_them(database_url, tmp_path):
    (tmp_path / "block").touch()
    raised: list[BaseException] = []

    def work() -> None:
        try:
            Victims(workdir=str(tmp_path), processes=2).run()
        except BaseException as exc:  # noqa: BLE001 -- looked at below
            raised.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    victim = tmp_path / "victim.pid"
    wait_for(victim.exists, timeout=120, what="the victim item to start")
    time.sleep(0.5)  # let the other process go on with what it has
    os.kill(int(victim.read_text()), signal.SIGKILL)
    worker.join(timeout=120)
    assert len(raised) == 1 and isinstance(raised[0], PoolBrokenError), raised
    assert "run the batch again" in str(raised[0])

    rows = {row.task_hash: row for row in Task.select()}
    expected = {task_hash(Victim(n=n, victim=25, workdir=str(tmp_path))): n for n in range(40)}
    assert task_hash(Victim(n=25, victim=25, workdir="")) not in rows  # the killed item: nothing recorded
    assert len(rows) >= 10  # the first chunk was recorded before the victim's chunk was handed out
    for key, row in rows.items():  # whatever was recorded is right
        assert (row.status, row.result, row.attempts) == ("done", expected[key], 1)
    recorded = {key: row.completed for key, row in rows.items()}

    (tmp_path / "block").unlink()
    Victims(workdir=str(tmp_path), processes=2).run()
    after = {row.task_hash: row for row in Task.select()}
    assert sorted(row.result for row in after.values()) == list(range(40))
    assert all(row.status == "done" and row.attempts == 1 for row in after.values())
    assert all(after[key].completed == completed for key, completed in recorded.items())  # not done twice


@pytest.mark.slow
def test_estimate_snr_batch_in_two_processes_from_the_command_line(database_url, tmp_path):
    spectra = tmp_path / "spectra"
    paths = simulate(spectra, count=30, seed=4)
    broken = spectra / "spec-00031.fits"
    broken.write_text("not a FITS file")
    args = ["--module", "workflows", "EstimateSNRBatch", "--spectra-dir", str(spectra), "--processes", "2"]
    first = run_luigi(*args, "--local-scheduler")
    assert "1 of 31 items failed" in first.stdout, first.stdout
    rows = rows_by_path([*paths, broken])
    for path in paths:
        assert rows[str(path)].status == "done"
        row = EstimateSNR(spectrum_path=str(path)).output().read()
        assert row.snr == signal_to_noise(*read_spectrum(str(path), reader="astropy"))[0]
    failed = rows[str(broken)]
    assert failed.status == "failed" and "OSError" in failed.error and "No SIMPLE card" in failed.error
    assert failed.traceback
    assert len({row.pid for row in rows.values()}) == 1  # the luigi process recorded them all

    broken.unlink()
    second = run_luigi(*args, "--local-scheduler")
    assert "1 complete ones were encountered" in summary(second.stdout), second.stdout


@pytest.mark.parametrize("given", ["environment", "command line"])
def test_a_relative_sqlite_path_names_one_file_after_a_task_changed_directory(tmp_path, given):
    """``sqlite:///astra.db`` is the file in the directory luigi started in: a task's run() that changed directory
    made the pool processes open (and create) another astra.db there, where no input was done (every item failed,
    'not complete'); a SLURM job was given the same relative path."""
    elsewhere = tmp_path / "elsewhere"
    args = ["--module", "tests.batch_pool_tasks", "WandererItems", "--elsewhere", str(elsewhere), "--local-scheduler"]
    args += ["--processes", "2"]
    url = "sqlite:///astra.db"
    if given == "environment":
        ran = run_luigi(*args, env={"ASTRA_DATABASE_URL": url}, cwd=tmp_path)
    else:
        ran = run_luigi(*args, "--astra-database-url", url, env={"ASTRA_DATABASE_URL": ""}, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout
    assert not (elsewhere / "astra.db").exists()
    with sqlite3.connect(tmp_path / "astra.db") as connection:
        rows = connection.execute("select task_name, status from task order by task_name").fetchall()
    assert rows == [("Wanderer", "done")] + [("WandererItem", "done")] * 4


def test_a_pool_works_the_items_with_the_values_given_on_the_luigi_command_line(database_url):
    """``--MeasureStar-band r`` on the command line sets the items' band, in a pool as in one process: the pool
    processes are new interpreters, which do not see the luigi command line unless they are told it."""
    args = ["--module", "tests.batch_pool_tasks", "Stars", "--stars", "5", "--MeasureStar-band", "r"]
    args.append("--local-scheduler")
    ran = run_luigi(*args, "--processes", "2")
    assert ran.returncode == 0, ran.stdout
    assert [MeasureStar(star=star, band="r").complete() for star in range(5)] == [True] * 5
    assert [MeasureStar(star=star).complete() for star in range(5)] == [False] * 5  # the default band, "g"


def test_a_pool_works_the_items_with_the_configuration_a_script_set(database_url):
    """A script may set luigi's configuration in memory (``[MeasureStar] band = r``): the pool processes must work the
    items with it, as this process identifies them, or they would record other items as done."""
    config = luigi.configuration.get_config()
    config.set("MeasureStar", "band", "r")
    try:
        assert luigi.build([Stars(stars=5, processes=2)], local_scheduler=True, log_level="WARNING")
    finally:
        config.remove_section("MeasureStar")
    assert [MeasureStar(star=star, band="r").complete() for star in range(5)] == [True] * 5
    assert [MeasureStar(star=star).complete() for star in range(5)] == [False] * 5  # the default band, "g"


def _session_processes(session: int) -> list[str]:
    """The live processes (not zombies) of a session, as ``pid command``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path("/proc", entry, "stat").read_text()
            command = Path("/proc", entry, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):  # not a process, or one that ended meanwhile
            continue
        state, _, _, sid = stat.rpartition(")")[2].split()[:4]
        if int(sid) == session and state != "Z":
            found.append(f"{entry} {command[:200]}")
    return found


@pytest.mark.slow
def test_a_killed_luigi_leaves_no_pool_process_and_no_connection_behind(postgres_url, tmp_path):
    """SIGKILL of the luigi process alone (not its process group): its pool, the forkserver and the resource
    tracker go too, and with them every connection to the database."""
    reset()  # this process's own connection (the fixture's) is not counted below
    (tmp_path / "block").touch()
    args = ["--module", "tests.batch_pool_tasks", "Victims", "--workdir", str(tmp_path), "--processes", "2"]
    with background(([*args, "--local-scheduler"], tmp_path / "luigi.out")) as (luigi_process,):
        try:
            wait_for((tmp_path / "victim.pid").exists, timeout=120, what="an item to start in the pool")
            assert len(_session_processes(luigi_process.pid)) >= 4  # luigi, forkserver, two pool processes, ...
            assert sessions(postgres_url) >= 2  # luigi's and the pool processes'
            os.kill(luigi_process.pid, signal.SIGKILL)
            luigi_process.wait()
            time.sleep(10)
            left = _session_processes(luigi_process.pid)
            assert left == [], left
            assert sessions(postgres_url) == 0
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(luigi_process.pid, signal.SIGKILL)  # whatever is left, in the test's own process group


SCRIPT = """
import luigi

import astra


class ScriptSquare(astra.BaseTask):
    i = luigi.IntParameter()

    def run(self):
        return self.i * self.i


class ScriptSquares(astra.BatchTask):
    item_class = ScriptSquare
    chunk_size = 5

    def parameter_sets(self):
        return [{"i": i} for i in range(12)]


class ScriptTotal(astra.BaseTask):
    def requires(self):
        return ScriptSquares(processes=2)

    def run(self):
        return sum(astra.read_many(self.input()))


if __name__ == "__main__":
    print(luigi.build([ScriptTotal()], local_scheduler=True))
"""


def test_a_pool_of_a_script_records_its_items_as_the_script_names_them(database_url, tmp_path):
    """Tasks a script defines are of module ``__main__``, part of their identity. In a pool process the script is
    ``__mp_main__``: its items were recorded as tasks of that module, never the batch's, so the batch was never
    complete and what required it failed at every run ("Unfulfilled dependency at run time")."""
    (tmp_path / "squares.py").write_text(SCRIPT)
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "squares.py"], cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True
        )
        assert done.stdout.strip() == "True", done.stdout + done.stderr
    modules = [(row.task_name, row.task_module, row.status) for row in Task.select().order_by(Task.pk)]
    assert modules == [("ScriptSquare", "__main__", "done")] * 12 + [("ScriptTotal", "__main__", "done")]
    assert Task.get(Task.task_name == "ScriptTotal").result == sum(i * i for i in range(12))
