"""Ctrl-C and SIGTERM as a task's record is written: the record ends true, and the run ends in one line."""

from __future__ import annotations

import signal

import pytest

from astra.database import Task, output_tables
from astra.targets import forget_cached
from tests.helpers import background, run_luigi, wait_for
from tests.interrupt_tasks import InterruptRow

ARGS = ["--module", "tests.interrupt_tasks", "--local-scheduler"]


def records() -> dict[int, tuple[str, str | None, int]]:
    """Each LongRecord's status, error and output rows, by k."""
    forget_cached()
    rows = {row.task_id: row for row in Task.select().where(Task.task_name == "LongRecord")}
    found = {}
    for task_id, row in rows.items():
        k = int(task_id.split("_")[1])
        found[k] = (row.status, row.error, InterruptRow.select().where(InterruptRow.task == row.pk).count())
    return found


def test_a_heartbeat_as_a_failed_record_ends_commits_nothing(postgres_url, tmp_path):
    """peewee gave up the connection before its ROLLBACK: the heartbeat, waiting for its turn, ran inside the
    transaction and committed the done record whose rows had failed, then called the task forgotten."""
    output_tables.create([InterruptRow])
    env = {"SLOW_DIR": str(tmp_path), "INTERRUPT_AT": "beat-in-rollback"}
    run = run_luigi(*ARGS, "LongRecord", "--k", "0", env=env, timeout=120)
    assert run.returncode == 30, run.stdout
    assert records() == {0: ("failed", "RuntimeError: the output rows could not be written", 0)}, run.stdout
    assert "forgotten" not in run.stdout and "no longer this worker's" not in run.stdout, run.stdout


def test_ctrl_c_to_the_group_as_records_are_written_fails_them_in_one_line(postgres_url, tmp_path):
    """Each forked worker printed a KeyboardInterrupt traceback (the interrupt landed in the record, after run()), and
    luigi's SIGTERM to its workers cut their failure records short."""
    output_tables.create([InterruptRow])
    args = [*ARGS, "LongRecords", "--n", "2", "--rows", "300000", "--workers", "2"]
    with background((args, tmp_path / "run.log", {"SLOW_DIR": str(tmp_path)})) as [run]:
        wait_for(lambda: len(list(tmp_path.glob("ran-*"))) == 2, timeout=60, what="both run()s to return")
        run.signal(signal.SIGINT)  # a terminal's Ctrl-C: the whole process group
        assert run.wait(timeout=60) == -signal.SIGINT, run.text()
    output = run.text()
    assert "Traceback" not in output, output
    wait_for(lambda: all(status != "running" for status, _, _ in records().values()), what="the records")
    assert {status for status, _, _ in records().values()} <= {"failed", "done"}, output


@pytest.mark.parametrize("backend", ["sqlite"])  # the signal's way through the processes, the same on either
def test_ctrl_c_to_the_group_in_a_batch_ends_in_one_line(database_url, tmp_path):
    """A batch in a worker luigi forked (``--workers 2``): Ctrl-C to the group printed multiprocessing's
    KeyboardInterrupt traceback through the batch's items before astra's one line (plain tasks ended quietly)."""
    args = [*ARGS, "Dozes", "--n", "150", "--workers", "2", "--no-lock"]
    with background((args, tmp_path / "run.log", {"SLOW_DIR": str(tmp_path)})) as [run]:
        wait_for(lambda: (tmp_path / "doze-5").exists(), timeout=60, what="the batch's items to run")
        run.signal(signal.SIGINT)
        assert run.wait(timeout=60) == -signal.SIGINT, run.text()
    output = run.text()
    assert "Traceback" not in output and "astra: stopped (Ctrl-C or SIGTERM)" in output, output
    forget_cached()
    statuses = {row.status for row in Task.select().where(Task.task_name == "Doze")}
    assert statuses <= {"done", "failed"}, statuses  # the chunk under way: none recorded, all run again
    again = run_luigi(*args, env={"SLOW_DIR": str(tmp_path)}, timeout=120)
    assert again.returncode == 0, again.stdout
    forget_cached()
    assert Task.select().where(Task.task_name == "Doze", Task.status == "done").count() == 150
