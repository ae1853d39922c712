"""A task with a large result, and many small ones, for the listing-memory tests."""

from __future__ import annotations

import luigi

import astra
from astra.batch import BatchTask

SIZE = 6_000_000  # characters per result


class LargeResult(astra.BaseTask):
    index = luigi.IntParameter()

    def run(self) -> str:
        return f"{self.index}" * SIZE


class ListedItem(astra.BaseTask):
    """A trivial task, recorded by the thousand for the test of a long listing."""

    k = luigi.IntParameter()

    def run(self) -> int:
        return self.k


class ListedItems(BatchTask):
    item_class = ListedItem
    n = luigi.IntParameter()

    def parameter_sets(self):
        for k in range(self.n):
            yield {"k": k}
