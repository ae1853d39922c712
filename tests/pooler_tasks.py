"""Tasks for the pooler and connection tests (``luigi --module tests.pooler_tasks``): naps, and a slow batch."""

from __future__ import annotations

import time

import luigi

import astra
from astra.batch import BatchTask


class Nap(astra.BaseTask):
    i = luigi.IntParameter()
    seconds = luigi.FloatParameter(default=1.0, significant=False)

    def run(self) -> dict:
        time.sleep(self.seconds)
        return {"i": self.i}


class Naps(astra.BaseTask):
    n = luigi.IntParameter()
    seconds = luigi.FloatParameter(default=1.0, significant=False)

    def requires(self) -> list[Nap]:
        return [Nap(i=i, seconds=self.seconds) for i in range(self.n)]

    def run(self) -> dict:
        return {"n": self.n}


class Step(astra.BaseTask):
    n = luigi.IntParameter()

    def run(self) -> int:
        time.sleep(0.02)
        return self.n


class Steps(BatchTask):
    """A batch that records a chunk of 20 items about every 0.4 s."""

    item_class = Step
    chunk_size = 20
    count = luigi.IntParameter()

    def parameter_sets(self):
        return [{"n": n} for n in range(self.count)]
