"""A DAG of 2,021 tasks, root -> 20 middles -> 100 leaves each, whose leaves wait for a file that never arrives."""

from __future__ import annotations

import luigi

from astra import BaseTask
from astra.batch import BatchTask

MIDDLES, LEAVES = 20, 100


class Undelivered(luigi.ExternalTask):
    """A spectrum file that never arrives."""

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget("/nonexistent/astra-test/undelivered.fits")


class PrefetchLeaf(BaseTask):
    middle = luigi.IntParameter()
    leaf = luigi.IntParameter()

    def requires(self) -> Undelivered:
        return Undelivered()

    def run(self) -> int:
        return self.middle * LEAVES + self.leaf


class PrefetchMiddle(BaseTask):
    middle = luigi.IntParameter()

    def requires(self) -> list[PrefetchLeaf]:
        return [PrefetchLeaf(middle=self.middle, leaf=leaf) for leaf in range(LEAVES)]

    def run(self) -> None:
        pass


class PrefetchRoot(BaseTask):
    def requires(self) -> list[PrefetchMiddle]:
        return [PrefetchMiddle(middle=middle) for middle in range(MIDDLES)]

    def run(self) -> None:
        pass


class PrefetchWrapper(luigi.WrapperTask):
    """A plain luigi WrapperTask: its complete() asks each middle directly, without going through deps()."""

    def requires(self) -> list[PrefetchMiddle]:
        return [PrefetchMiddle(middle=middle) for middle in range(MIDDLES)]


class EvenLeaves(BatchTask):
    """Records the even-numbered leaves of every middle as done."""

    item_class = PrefetchLeaf

    def parameter_sets(self) -> list[dict]:
        return [{"middle": m, "leaf": leaf} for m in range(MIDDLES) for leaf in range(0, LEAVES, 2)]

    def process(self, chunk: list) -> list[int]:
        return [item.values["middle"] * LEAVES + item.values["leaf"] for item in chunk]


class LeafOne(EvenLeaves):
    """Records leaf 1 of middle 0 (an odd one) as done."""

    def parameter_sets(self) -> list[dict]:
        return [{"middle": 0, "leaf": 1}]
