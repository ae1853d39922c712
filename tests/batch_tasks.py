"""Tasks for the batch tests: an item with every kind of luigi parameter, and a batch of them."""

from __future__ import annotations

import luigi

from astra import BaseTask
from astra.batch import BatchTask


class Measure(BaseTask):
    """An item with every kind of parameter luigi has: identity must not depend on how it was created."""

    star = luigi.IntParameter()
    band = luigi.Parameter(default="g")
    options = luigi.DictParameter(default={"b": 1, "a": [2, 3]})
    secret = luigi.Parameter(default="h", visibility=luigi.parameter.ParameterVisibility.HIDDEN)
    scratch = luigi.Parameter(default="p", visibility=luigi.parameter.ParameterVisibility.PRIVATE)
    note = luigi.Parameter(default="", significant=False)
    fail_on = luigi.IntParameter(default=-1, significant=False)

    def run(self) -> int:
        if self.star == self.fail_on:
            raise ValueError(f"star {self.star} has no good pixels")
        return self.star * 10


class MeasureStars(BatchTask):
    item_class = Measure
    chunk_size = 400
    stars = luigi.IntParameter()
    fail_on = luigi.IntParameter(default=-1)

    processed: list[int] = []

    def parameter_sets(self):
        return [{"star": star, "fail_on": self.fail_on} for star in range(self.stars)]

    def process(self, chunk):
        MeasureStars.processed.extend(item.values["star"] for item in chunk)
        return super().process(chunk)
