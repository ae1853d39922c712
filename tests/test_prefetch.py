"""luigi's scan of a big DAG asks the database a few dozen times, not once per task.

The DAG: a root -> 20 middles -> 100 leaves each (2,021 tasks). Half the leaves are done; the others wait for a
spectrum file that has not arrived (a missing external task), so luigi scans everything and runs nothing, and what
is counted is exactly the scan. Queries are counted from peewee's own log, which has every SQL statement.
"""

from __future__ import annotations

import logging
import os

import luigi
import pytest
from luigi.execution_summary import LuigiStatusCode

from astra import BaseTask
from astra.batch import BatchTask
from astra.targets import forget_cached

MIDDLES, LEAVES = 20, 100
MAX_QUERIES = 50


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


class QueryCounter(logging.Handler):
    """Counts the SQL statements peewee runs in this process (peewee logs each one at DEBUG)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.process == os.getpid():
            self.count += 1

    def __enter__(self) -> QueryCounter:
        self._logger = logging.getLogger("peewee")
        self._level = self._logger.level
        self._logger.setLevel(logging.DEBUG)
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)


@pytest.fixture
def half_done(database_url):
    EvenLeaves().run()
    # Start the scan knowing nothing and with no task created yet, as in a new luigi process.
    forget_cached()
    luigi.task_register.Register.clear_instance_cache()
    return database_url


@pytest.mark.parametrize("root", [PrefetchRoot, PrefetchWrapper], ids=["BaseTask-root", "WrapperTask-root"])
@pytest.mark.parametrize("workers", [1, 4])
def test_scan_of_2021_tasks_needs_few_queries(half_done, root, workers):
    with QueryCounter() as queries:
        result = luigi.build([root()], local_scheduler=True, workers=workers, detailed_summary=True)
    # Nothing could run (half the leaves wait for a missing file), so every query counted belongs to the scan.
    assert result.status == LuigiStatusCode.MISSING_EXT
    assert f"{MIDDLES * LEAVES // 2} complete ones were encountered" in result.summary_text
    assert 0 < queries.count <= MAX_QUERIES, f"{queries.count} queries for a scan of 2,021 tasks"


def test_a_negative_is_used_once_then_asked_again(database_url):
    leaf = PrefetchLeaf(middle=0, leaf=1)
    PrefetchMiddle(middle=0).deps()  # prefetch: leaf 1 is not done
    with QueryCounter() as queries:
        assert leaf.complete() is False  # answered by the prefetch
    assert queries.count == 0

    class LeafOne(EvenLeaves):
        def parameter_sets(self) -> list[dict]:
            return [{"middle": 0, "leaf": 1}]

    LeafOne().run()  # another process could have done this
    with QueryCounter() as queries:
        assert leaf.complete() is True  # the negative was used up: asked again
        assert leaf.complete() is True  # positives are kept
    assert queries.count == 1
