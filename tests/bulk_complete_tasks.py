"""Tasks for the bulk-completion tests: nights of an observatory, squares, and a batch that records items as done."""

from __future__ import annotations

import luigi

from astra import BaseTask
from astra.batch import BatchTask
from astra.targets import read_many
from astra.tasks import dynamic_requirements


class Nightly(BaseTask):
    """One night of one observatory."""

    night = luigi.DateParameter()
    observatory = luigi.Parameter(default="apo")

    def run(self) -> str:
        return f"{self.observatory} {self.night}"


class Square(BaseTask):
    i = luigi.IntParameter()

    def run(self) -> int:
        return self.i * self.i


class SumOfSquares(BaseTask):
    """Finds out what it needs only when it runs, and yields it all at once."""

    n = luigi.IntParameter()

    def run(self):
        targets = yield dynamic_requirements([Square(i=i) for i in range(self.n)])
        return sum(read_many(targets))


class RecordDone(BatchTask):
    """Runs items of any class in a batch (what another process could have done meanwhile)."""

    sets: list = []

    def parameter_sets(self) -> list[dict]:
        return self.sets


def recorder(item_class: type[BaseTask], sets: list[dict]) -> RecordDone:
    """A batch that records ``item_class`` tasks of these parameter sets as done when it runs."""
    return type("Recorder", (RecordDone,), {"item_class": item_class, "sets": sets})()
