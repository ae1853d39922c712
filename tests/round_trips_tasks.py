"""Tasks for tests/test_round_trips.py."""

from __future__ import annotations

import luigi

import astra
from tests.example_tasks import Leaf


class NeedsLeaves(astra.BaseTask):
    n = luigi.IntParameter()

    def requires(self) -> list[Leaf]:
        return [Leaf(i=i) for i in range(self.n)]

    def run(self) -> dict:
        return {"n": self.n}
