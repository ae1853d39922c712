"""luigi's scan of a big DAG asks the database a few dozen times, not once per task.

The DAG: a root -> 20 middles -> 100 leaves each (2,021 tasks). Half the leaves are done; the others wait for a
spectrum file that has not arrived (a missing external task), so luigi scans everything and runs nothing, and what
is counted is exactly the scan. Queries are counted from peewee's own log, which has every SQL statement.
"""

from __future__ import annotations

import luigi
import pytest
from luigi.execution_summary import LuigiStatusCode

from astra.targets import forget_cached
from tests.helpers import QueryCounter, looked_for_lost_rows
from tests.prefetch_tasks import (
    LEAVES,
    MIDDLES,
    EvenLeaves,
    LeafOne,
    PrefetchLeaf,
    PrefetchMiddle,
    PrefetchRoot,
    PrefetchWrapper,
)

MAX_QUERIES = 50


@pytest.fixture
def half_done(database_url):
    EvenLeaves().run()
    # Start the scan knowing nothing and with no task created yet, as in a new luigi process.
    forget_cached()
    luigi.task_register.Register.clear_instance_cache()
    return database_url


@pytest.mark.slow
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

    LeafOne().run()  # another process could have done this
    looked_for_lost_rows(PrefetchLeaf)
    with QueryCounter() as queries:
        assert leaf.complete() is True  # the negative was used up: asked again
        assert leaf.complete() is True  # positives are kept
    assert queries.count == 1
