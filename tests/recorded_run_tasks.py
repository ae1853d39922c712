"""Every shape of run() a BaseTask may have: its own, a mixin's, an inherited one, or none at all
(``luigi --module tests.recorded_run_tasks``).
"""

from __future__ import annotations

import os

import luigi

import astra
from astra.batch import BatchTask
from astra.tasks import dynamic_requirements
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


class AllShapes(luigi.WrapperTask):
    def requires(self) -> list[astra.BaseTask]:
        return [shape(i=3) for shape in SHAPES]


def batch_of(shape: type[astra.BaseTask]) -> type[BatchTask]:
    """A batch of three ``shape`` items, i = 0, 1, 2."""

    class Batch(BatchTask):
        item_class = shape

        def parameter_sets(self):
            return [{"i": i} for i in range(3)]

    return Batch
