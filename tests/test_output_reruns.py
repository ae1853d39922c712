"""A task's output rows are those of its last successful run, however it came to run again (issue 18, item 1).

Each path that reopens or re-runs a task with an output table, through the real ``luigi`` command on both backends
(and ``astra`` in this process: its ``main()``): a dynamic dependency forgotten, a dead claim taken over, a batch
re-recording an item, forget + rerun.
"""

from __future__ import annotations

import json

import pytest

from astra.database import Task
from tests.helpers import astra, main, run_luigi
from tests.rerun_tasks import Star

MODULE = ("--module", "tests.rerun_tasks")


@pytest.fixture
def stars_db(database_url):
    made = astra("db", "init", *MODULE)
    assert made.returncode == 0, made.stderr
    return database_url


def luigi(*args: str, env: dict | None = None) -> str:
    ran = run_luigi(*MODULE, *args, "--local-scheduler", env=env)
    return ran.stdout


def rows_of(capsys, star: int) -> list[tuple[int, float]]:
    """The rows `astra results` gives for star ``star``: (visit, value)."""
    shown = main(capsys, "results", "YieldingStar", *MODULE, "--where", f"star={star}", "--json")
    assert shown.returncode == 0, shown.stderr
    return sorted((row["visit"], row["value"]) for row in json.loads(shown.stdout))


def forget(capsys, *args: str) -> None:
    forgot = main(capsys, "tasks", "forget", *args, "--yes")
    assert forgot.returncode == 0, forgot.stderr


def first_run(capsys) -> None:
    assert "This progress looks :)" in luigi("YieldingStar", "--star", "1")
    assert rows_of(capsys, 1) == [(0, 1.0), (1, 2.0), (2, 5.0)]
    forget(capsys, "--name", "Leaf", "--where", "i=0")  # a dynamic dependency goes: the star is not complete any more


@pytest.mark.slow
def test_a_reopened_task_keeps_only_its_new_rows(stars_db, capsys):
    first_run(capsys)
    out = luigi("YieldingStar", "--star", "1")
    assert "This progress looks :)" in out, out
    task = Task.get(Task.task_name == "YieldingStar")
    assert task.status == "done" and task.attempts > 1
    assert rows_of(capsys, 1) == [(0, 1.0), (1, 2.0), (2, 5.0)]  # 3 rows, not 6
    assert Star.select().count() == 3


@pytest.mark.slow
def test_a_dead_claim_taken_over_keeps_only_the_new_rows(stars_db, capsys):
    first_run(capsys)
    luigi("YieldingStar", "--star", "1", env={"RERUN_STAR": "die"})  # reopened, claimed, and its process dies
    assert Task.get(Task.task_name == "YieldingStar").status == "running"
    out = luigi("YieldingStar", "--star", "1")
    assert "This progress looks :)" in out and "taking over" in out, out
    assert rows_of(capsys, 1) == [(0, 1.0), (1, 2.0), (2, 5.0)]
    assert Star.select().count() == 3


@pytest.mark.slow
def test_a_batch_re_recording_an_item_keeps_only_its_new_rows(stars_db, capsys):
    first_run(capsys)
    luigi("YieldingStar", "--star", "1", env={"RERUN_STAR": "fail"})  # reopened, and its run fails
    assert Task.get(Task.task_name == "YieldingStar").status == "failed"
    out = luigi("StarsBatch", "--stars", "3", env={"RERUN_STAR": "plain"})
    assert "This progress looks :)" in out, out
    assert rows_of(capsys, 1) == [(0, 101.0), (1, 101.0), (2, 101.0)]
    assert Star.select().count() == 9  # 3 stars, 3 rows each


@pytest.mark.slow
def test_forget_and_rerun_keeps_only_the_new_rows(stars_db, capsys):
    assert "This progress looks :)" in luigi("YieldingStar", "--star", "1")
    forget(capsys, "--name", "YieldingStar")
    assert Star.select().count() == 0
    assert "This progress looks :)" in luigi("YieldingStar", "--star", "1")
    assert rows_of(capsys, 1) == [(0, 1.0), (1, 2.0), (2, 5.0)]
    assert Star.select().count() == 3
