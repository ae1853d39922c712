"""Whatever run() luigi calls on a BaseTask is recorded: its own, a mixin's, an inherited one, or none at all.

The classes in tests/recorded_run_tasks.py are run with the real luigi command line
(``luigi --module tests.recorded_run_tasks ...``).
"""

from __future__ import annotations

import luigi
import pytest

from astra.database import Dependency, Task
from astra.identity import task_hash
from astra.targets import forget_cached
from tests.example_tasks import Leaf
from tests.helpers import run_luigi
from tests.recorded_run_tasks import (
    SHAPES,
    MixinFirst,
    MixinGenerator,
    NoRun,
    PlainAhead,
    ReturnsGenerator,
    SuperCaller,
    WithPreStep,
    batch_of,
)

EXPECTED = {  # what each shape's run() returns for i
    MixinFirst: lambda i: {"computed": i * 10},
    PlainAhead: lambda i: {"plain": i},
    NoRun: lambda i: None,
    SuperCaller: lambda i: {"measured": i, "extra": True},
    WithPreStep: lambda i: {"measured": i, "pre": True},
    MixinGenerator: lambda i: {"leaf": {"square": i * i}},
    ReturnsGenerator: lambda i: {"leaf": {"square": (i + 1) ** 2}},
}


@pytest.mark.slow
def test_every_shape_of_run_is_recorded_and_then_skipped(database_url):
    first = run_luigi("--module", "tests.recorded_run_tasks", "AllShapes", "--local-scheduler")
    # The shapes, the wrapper and two Leafs (NoRun requires Leaf(i=3), MixinGenerator yields it, too).
    assert "10 ran successfully" in first.stdout, first.stdout
    forget_cached()
    for shape in SHAPES:
        row = Task.get_or_none(Task.task_hash == task_hash(shape(i=3)))
        assert row is not None and row.status == "done", shape
        assert row.result == EXPECTED[shape](3), shape
    # The dynamic dependencies of the generator shapes are edges of theirs.
    for shape, leaf in ((MixinGenerator, Leaf(i=3)), (ReturnsGenerator, Leaf(i=4))):
        edge = (
            Dependency.select()
            .join(Task, on=(Dependency.task == Task.pk))
            .where(Task.task_hash == task_hash(shape(i=3)))
            .get()
        )
        assert edge.dynamic and edge.requires.task_hash == task_hash(leaf)

    second = run_luigi("--module", "tests.recorded_run_tasks", "AllShapes", "--local-scheduler")
    assert "ran successfully" not in second.stdout and "complete ones were encountered" in second.stdout, second.stdout


def test_a_mixin_that_fails_before_the_own_run_is_recorded_failed(database_url, monkeypatch):
    monkeypatch.setenv("PRE_STEP_FAILS", "1")
    task = WithPreStep(i=5)
    assert luigi.build([task], local_scheduler=True, log_level="CRITICAL") is False
    row = Task.get(Task.task_hash == task_hash(task))
    assert row.status == "failed" and row.error == "RuntimeError: the pre-step failed"


@pytest.mark.slow
@pytest.mark.parametrize("shape", [SuperCaller, MixinFirst, WithPreStep])
def test_a_batch_runs_the_items_own_code_without_recording_it(database_url, shape):
    assert luigi.build([batch_of(shape)()], local_scheduler=True, log_level="CRITICAL")
    rows = {row.task_hash: row for row in Task.select()}
    assert len(rows) == 3  # the items only: nothing claimed rows of its own
    for i in range(3):
        row = rows[task_hash(shape(i=i))]
        assert row.status == "done" and row.result == EXPECTED[shape](i)
