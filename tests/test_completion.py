"""A task is recorded as done when run() returns, and only then."""

from __future__ import annotations

import pickle

import luigi
import pytest

from astra import DatabaseTarget
from astra.database import DatabaseError, Task, database
from astra.database.connection import is_postgres
from astra.identity import task_hash
from astra.targets import forget_cached
from tests.example_tasks import Failing, Leaf, Node, Note, WritesNotes


def row(task: luigi.Task) -> Task | None:
    return Task.get_or_none(Task.task_hash == task_hash(task))


def test_run_records_completion_and_result(database_url):
    task = Leaf(i=7)
    assert task.complete() is False
    assert luigi.build([task], local_scheduler=True)
    recorded = row(task)
    assert recorded.status == "done"
    assert recorded.result == {"square": 49}
    assert recorded.task_name == "Leaf" and recorded.task_module == "tests.example_tasks"
    assert recorded.task_id == task.task_id
    assert recorded.completed >= recorded.started >= recorded.created
    assert recorded.duration >= 0 and recorded.host and recorded.pid
    forget_cached()
    assert task.complete() is True
    assert task.output().read() == {"square": 49}


def test_a_second_build_runs_nothing(database_url):
    assert luigi.build([Node(n=5)], local_scheduler=True)
    first = {t.task_hash: t.completed for t in Task.select()}
    forget_cached()
    result = luigi.build([Node(n=5)], local_scheduler=True, detailed_summary=True)
    assert result.scheduling_succeeded
    assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS_WITH_RETRY or result.status.name == (
        "SUCCESS"
    )
    assert {t.task_hash: t.completed for t in Task.select()} == first
    assert len(first) == 6


def test_exception_in_run_leaves_no_completed_row(database_url):
    task = Failing(message="no good")
    assert luigi.build([task], local_scheduler=True) is False
    recorded = row(task)
    assert recorded.status == "failed"
    assert recorded.completed is None
    assert "no good" in recorded.error
    forget_cached()
    assert task.complete() is False


def test_own_rows_commit_with_the_completion_row(database_url):
    good = WritesNotes(count=3)
    assert luigi.build([good], local_scheduler=True)
    assert Note.select().where(Note.task_name == good.task_id).count() == 3
    assert row(good).status == "done"
    assert row(good).result == {"notes": 3}


def test_an_error_inside_completion_rolls_back_own_rows(database_url):
    bad = WritesNotes(count=3, fail_inside=True)
    assert luigi.build([bad], local_scheduler=True) is False
    assert Note.select().where(Note.task_name == bad.task_id).count() == 0
    assert row(bad).status == "failed"
    assert bad.complete() is False


def test_completion_outside_run_is_refused():
    with pytest.raises(RuntimeError, match="inside run"):
        with WritesNotes().completion():
            pass


def test_tasks_and_targets_pickle_after_use(database_url):
    task = Leaf(i=3)
    assert luigi.build([task], local_scheduler=True)
    database()  # a live connection in this process must not travel with the task
    copy = pickle.loads(pickle.dumps(task))
    assert task_hash(copy) == task_hash(task)
    target = pickle.loads(pickle.dumps(task.output()))
    assert isinstance(target, DatabaseTarget)
    assert target.exists() is True


def test_a_database_error_in_complete_says_what_failed(database_url):
    assert luigi.build([Leaf(i=1)], local_scheduler=True)
    db = database()
    db.execute_sql("drop table task_parameter" if not is_postgres() else "drop schema astra cascade")
    if not is_postgres():
        db.execute_sql("drop table dependency")
        db.execute_sql("drop table task")
    forget_cached()
    with pytest.raises(DatabaseError, match="could not check whether Leaf"):
        Leaf(i=2).complete()
