"""Whatever run() luigi calls on a BaseTask is recorded: its own, a mixin's, an inherited one, or none at all.

The classes below are run with the real luigi command line (``luigi --module tests.test_recorded_run ...``).
"""

from __future__ import annotations

import os

import luigi
import pytest

import astra
from astra.batch import BatchTask
from astra.database import Dependency, Task
from astra.identity import task_hash
from astra.targets import forget_cached
from astra.tasks import dynamic_requirements
from tests.conftest import run_luigi
from tests.example_tasks import Leaf


class ComputeMixin:
    """A plain class that brings run() to the task classes that use it."""

    def run(self) -> dict:
        return {"computed": self.i * 10}


class MixinFirst(ComputeMixin, astra.BaseTask):
    i = luigi.IntParameter()


class Measured(astra.BaseTask):
    i = luigi.IntParameter()

    def run(self) -> dict:
        return {"measured": self.i}


class PlainRun:
    def run(self) -> dict:
        return {"plain": self.i}


class PlainAhead(PlainRun, Measured):
    """run() comes from the plain class, ahead of Measured's own in the MRO."""


class NoRun(astra.BaseTask):
    """Only gathers what it requires: luigi calls its (empty) default run()."""

    i = luigi.IntParameter()

    def requires(self) -> Leaf:
        return Leaf(i=self.i)


class SuperCaller(Measured):
    def run(self) -> dict:
        return {**super().run(), "extra": True}


class PreStep:
    """A plain mixin that does something before the task's own run()."""

    def run(self) -> dict:
        if os.environ.get("PRE_STEP_FAILS"):
            raise RuntimeError("the pre-step failed")
        return {**super().run(), "pre": True}


class WithPreStep(PreStep, Measured):
    pass


class YieldingMixin:
    def run(self):
        outputs = yield [Leaf(i=self.i)]
        return {"leaf": outputs[0].read()}


class MixinGenerator(YieldingMixin, astra.BaseTask):
    i = luigi.IntParameter()


class ReturnsGenerator(astra.BaseTask):
    """run() is no generator function, but returns a generator: luigi drives it all the same."""

    i = luigi.IntParameter()

    def run(self):
        return self.steps()

    def steps(self):
        outputs = yield dynamic_requirements([Leaf(i=self.i + 1)])
        return {"leaf": outputs[0].read()}


SHAPES = [MixinFirst, PlainAhead, NoRun, SuperCaller, WithPreStep, MixinGenerator, ReturnsGenerator]
EXPECTED = {  # what each shape's run() returns for i
    MixinFirst: lambda i: {"computed": i * 10},
    PlainAhead: lambda i: {"plain": i},
    NoRun: lambda i: None,
    SuperCaller: lambda i: {"measured": i, "extra": True},
    WithPreStep: lambda i: {"measured": i, "pre": True},
    MixinGenerator: lambda i: {"leaf": {"square": i * i}},
    ReturnsGenerator: lambda i: {"leaf": {"square": (i + 1) ** 2}},
}


class AllShapes(luigi.WrapperTask):
    def requires(self) -> list[astra.BaseTask]:
        return [shape(i=3) for shape in SHAPES]


def test_every_shape_of_run_is_recorded_and_then_skipped(database_url):
    first = run_luigi("--module", "tests.test_recorded_run", "AllShapes", "--local-scheduler")
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

    second = run_luigi("--module", "tests.test_recorded_run", "AllShapes", "--local-scheduler")
    assert "ran successfully" not in second.stdout and "complete ones were encountered" in second.stdout, second.stdout


def test_a_mixin_that_fails_before_the_own_run_is_recorded_failed(database_url, monkeypatch):
    monkeypatch.setenv("PRE_STEP_FAILS", "1")
    task = WithPreStep(i=5)
    assert luigi.build([task], local_scheduler=True, log_level="CRITICAL") is False
    row = Task.get(Task.task_hash == task_hash(task))
    assert row.status == "failed" and row.error == "RuntimeError: the pre-step failed"


@pytest.mark.parametrize("shape", [SuperCaller, MixinFirst, WithPreStep])
def test_a_batch_runs_the_items_own_code_without_recording_it(database_url, shape):
    class Batch(BatchTask):
        item_class = shape

        def parameter_sets(self):
            return [{"i": i} for i in range(3)]

    assert luigi.build([Batch()], local_scheduler=True, log_level="CRITICAL")
    rows = {row.task_hash: row for row in Task.select()}
    assert len(rows) == 3  # the items only: nothing claimed rows of its own
    for i in range(3):
        row = rows[task_hash(shape(i=i))]
        assert row.status == "done" and row.result == EXPECTED[shape](i)
