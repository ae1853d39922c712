"""A task with an output table that runs again, for tests/test_output_reruns.py (``luigi --module
tests.rerun_tasks``).

``YieldingStar`` makes three rows from the Leafs it yields, so it is reopened when one of them is forgotten. After the
yield, ``$RERUN_STAR=fail`` makes its run fail and ``$RERUN_STAR=die`` kills its process (a claim left for another
to take over). With ``$RERUN_STAR=plain`` at import, its run() yields nothing (as a later release of the code may
do), so that a batch can run it.
"""

from __future__ import annotations

import os

import astra  # before peewee, which then does not import psycopg 3 (see workflows/__init__.py)

# isort: split
import luigi
import peewee

from astra.batch import BatchTask
from astra.tasks import dynamic_requirements
from tests.example_tasks import Leaf


class Star(astra.OutputModel):
    visit = peewee.IntegerField()
    value = peewee.DoubleField()

    class Meta:
        table_name = "rerun_star"


def _rows(star: int, squares: list[int]) -> list[dict]:
    return [{"visit": v, "value": star + squares[v]} for v in range(3)]


class YieldingStar(astra.BaseTask):
    output_model = Star
    star = luigi.IntParameter()

    if os.environ.get("RERUN_STAR") == "plain":

        def run(self):
            return _rows(self.star, [100, 100, 100])

    else:

        def run(self):
            leaves = yield dynamic_requirements([Leaf(i=i) for i in range(3)])
            if os.environ.get("RERUN_STAR") == "fail":
                raise RuntimeError("failed on purpose")
            if os.environ.get("RERUN_STAR") == "die":
                os._exit(3)
            return _rows(self.star, [result["square"] for result in astra.targets.read_many(leaves)])


class StarsBatch(BatchTask):
    item_class = YieldingStar
    stars = luigi.IntParameter(default=3)

    def parameter_sets(self):
        return [{"star": star} for star in range(self.stars)]
