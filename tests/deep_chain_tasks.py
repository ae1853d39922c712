"""A chain of nights, each requiring the one before, as astra tasks and as plain luigi tasks
(``luigi --module tests.deep_chain_tasks``).
"""

from __future__ import annotations

import os

import luigi

import astra
from astra.batch import BatchTask


class Night(astra.BaseTask):
    n = luigi.IntParameter()

    def requires(self) -> list[Night]:
        return [Night(n=self.n - 1)] if self.n > 0 else []

    def run(self) -> dict:
        return {"night": self.n}


class EarlierNights(BatchTask):
    item_class = Night
    below = luigi.IntParameter()

    def parameter_sets(self):
        return ({"n": n} for n in range(self.below))


class PlainNight(luigi.Task):
    n = luigi.IntParameter()
    root = luigi.Parameter()

    def requires(self) -> list[PlainNight]:
        return [PlainNight(n=self.n - 1, root=self.root)] if self.n > 0 else []

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(os.path.join(self.root, str(self.n)))

    def run(self) -> None:
        with self.output().open("w") as out:
            out.write(str(self.n))
