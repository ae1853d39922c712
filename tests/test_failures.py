"""Failure records: a task whose run() raises is recorded as failed, runs again next time, and a success replaces it."""

from __future__ import annotations

import pytest

from astra.database import Task
from astra.identity import task_hash
from astra.targets import forget_cached
from tests.failures_tasks import AfterFragile, Fragile
from tests.helpers import run_luigi


def run_fragile(*, fails: bool) -> str:
    args = ["--module", "tests.failures_tasks", "AfterFragile", "--name", "flat", "--local-scheduler"]
    result = run_luigi(*args, env={"FRAGILE_FAILS": "1" if fails else ""})
    summary = result.stdout.split("===== Luigi Execution Summary =====")[1]
    if fails:
        assert "1 failed:" in summary and "1 had failed dependencies" in summary, result.stdout
    else:
        assert result.returncode == 0 and "2 ran successfully" in summary, result.stdout
    return result.stdout


@pytest.mark.slow
def test_a_failure_is_recorded_retried_and_replaced_by_a_success(database_url):
    fragile = Fragile(name="flat")
    after = AfterFragile(name="flat")

    output = run_fragile(fails=True)
    assert "calibration of flat is missing" in output
    row = Task.get(Task.task_hash == task_hash(fragile))
    assert (row.status, row.attempts, row.completed, row.result) == ("failed", 1, None, None)
    assert row.error == "ValueError: calibration of flat is missing"
    assert row.traceback.startswith("Traceback (most recent call last):")
    assert "in check_calibration" in row.traceback and "second line of the message" in row.traceback
    assert Task.get_or_none(Task.task_hash == task_hash(after)) is None  # its dependent never started
    forget_cached()
    assert not fragile.complete() and not after.complete()

    run_fragile(fails=True)  # the next invocation runs it again
    row = Task.get(Task.task_hash == task_hash(fragile))
    assert (row.status, row.attempts) == ("failed", 2)

    run_fragile(fails=False)
    row = Task.get(Task.task_hash == task_hash(fragile))
    assert (row.status, row.attempts, row.error, row.traceback) == ("done", 3, None, None)
    assert row.result == {"checked": "flat"}
    assert row.completed is not None
    forget_cached()
    assert fragile.complete() and after.complete()
