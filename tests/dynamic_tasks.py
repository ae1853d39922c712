"""Tasks with dynamic dependencies, some of them broken (``luigi --module tests.dynamic_tasks``)."""

from __future__ import annotations

import time
from pathlib import Path

import luigi

import astra
from astra.tasks import dynamic_requirements
from tests.example_tasks import Leaf


class Yielder(astra.BaseTask):
    """Yields Leafs, found only when it runs."""

    n = luigi.IntParameter()

    def run(self):
        outputs = yield dynamic_requirements([Leaf(i=i) for i in range(self.n)])
        return {"total": sum(result["square"] for result in astra.targets.read_many(outputs))}


class YieldsAYielder(astra.BaseTask):
    """A dynamic dependency that has dynamic dependencies of its own."""

    def run(self):
        output = yield Yielder(n=2)
        return {"inner": output.read()}


class BrokenRequires(astra.BaseTask):
    def requires(self):
        raise ValueError("cannot say what I need")


class YieldsBroken(astra.BaseTask):
    def run(self):
        yield BrokenRequires()


class YieldsNonsense(astra.BaseTask):
    def run(self):
        yield 42


class YieldsWithFailingCheck(astra.BaseTask):
    def run(self):
        def complete(complete_fn):
            raise RuntimeError("the custom completeness check failed")

        yield luigi.DynamicRequirements([Leaf(i=1)], complete)


class FailingLeaf(astra.BaseTask):
    def run(self) -> None:
        raise ValueError("bad leaf")


class YieldsAFailure(astra.BaseTask):
    def run(self):
        got = yield FailingLeaf()
        return {"leaf": got.read()}


class AboveAYielder(astra.BaseTask):
    def requires(self) -> YieldsAFailure:
        return YieldsAFailure()

    def run(self) -> dict:
        return {"above": True}


class SlowLeaf(astra.BaseTask):
    """Says it started (a file ``folder/started``), then works until the file ``folder/go`` appears."""

    folder = luigi.Parameter()

    def run(self) -> int:
        Path(self.folder, "started").touch()
        while not Path(self.folder, "go").exists():
            time.sleep(0.05)
        return 1


class YieldsASlowLeaf(astra.BaseTask):
    """Set aside while the SlowLeaf it yields runs."""

    folder = luigi.Parameter()

    def run(self):
        output = yield SlowLeaf(folder=self.folder)
        return {"leaf": output.read()}


class Cut(astra.BaseTask):
    """A FloatParameter given a whole number: its text, "2", reads back as 2.0, whose text is "2.0"."""

    cut = luigi.FloatParameter()

    def run(self) -> float:
        return self.cut


class YieldsACut(astra.BaseTask):
    def run(self):
        output = yield Cut(cut=2)
        return {"cut": output.read()}
