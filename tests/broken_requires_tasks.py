"""A DAG whose ``BrokenInput.requires()`` raises, as astra tasks and as plain luigi tasks with ``LocalTarget`` files
(``luigi --module tests.broken_requires_tasks``).
"""

from __future__ import annotations

import os

import luigi

import astra


class Good(astra.BaseTask):
    i = luigi.IntParameter()

    def run(self) -> dict:
        return {"i": self.i}


class BrokenInput(astra.BaseTask):
    def requires(self):
        raise ValueError("Broken cannot say what it needs")


class Parent(astra.BaseTask):
    def requires(self) -> list[astra.BaseTask]:
        return [Good(i=1), BrokenInput()]


class Top(astra.BaseTask):
    def requires(self) -> list[astra.BaseTask]:
        return [Parent(), Good(i=2)]


class PlainTask(luigi.Task):
    root = luigi.Parameter()

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(os.path.join(self.root, self.task_id))

    def run(self) -> None:
        with self.output().open("w") as out:
            out.write("done")


class PlainGood(PlainTask):
    i = luigi.IntParameter()


class PlainBrokenInput(PlainTask):
    def requires(self):
        raise ValueError("Broken cannot say what it needs")


class PlainParent(PlainTask):
    def requires(self) -> list[luigi.Task]:
        return [PlainGood(i=1, root=self.root), PlainBrokenInput(root=self.root)]


class PlainTop(PlainTask):
    def requires(self) -> list[luigi.Task]:
        return [PlainParent(root=self.root), PlainGood(i=2, root=self.root)]


class NoOutput(luigi.Task):
    """A plain luigi task whose ``output()`` raises: luigi names it, and runs what does not depend on it."""

    def output(self):
        raise ValueError("NoOutput cannot say where its output goes")


class Siblings(astra.BaseTask):
    def requires(self) -> list[luigi.Task]:
        return [NoOutput(), Good(i=3)]


class PlainSiblings(PlainTask):
    def requires(self) -> list[luigi.Task]:
        return [NoOutput(), PlainGood(i=3, root=self.root)]


class LoopA(astra.BaseTask):
    """Requires LoopB, which requires it: a task no run can make."""

    def requires(self) -> LoopB:
        return LoopB()


class LoopB(astra.BaseTask):
    def requires(self) -> LoopA:
        return LoopA()
