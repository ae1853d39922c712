"""Many tasks checked with one query: ``BaseTask.bulk_complete`` (luigi's Range tools) and dynamic requirements."""

from __future__ import annotations

import datetime
import functools

import luigi
import pytest
from luigi.tools.range import RangeDaily

from astra import BaseTask
from astra.database import Task
from astra.identity import task_hash
from astra.targets import forget_cached
from astra.tasks import dynamic_requirements
from tests.bulk_complete_tasks import Nightly, Square, SumOfSquares, recorder
from tests.helpers import QueryCounter, looked_for_lost_rows

TODAY = datetime.date.today()
DAYS = [TODAY - datetime.timedelta(days=n) for n in range(30, 0, -1)]


@pytest.fixture(autouse=True)
def new_task_instances():
    """Each test creates its own task instances (luigi would hand back those of the test before, with what they
    remember, such as RangeDaily's cached requirements)."""
    luigi.task_register.Register.clear_instance_cache()


def record_done(item_class: type[BaseTask], sets: list[dict]) -> None:
    recorder(item_class, sets).run()
    forget_cached()


def test_bulk_complete_is_one_query(database_url):
    record_done(Nightly, [{"night": night} for night in DAYS[::3]])
    looked_for_lost_rows(Nightly)
    with QueryCounter() as queries:
        done = Nightly.bulk_complete(DAYS)
    assert done == DAYS[::3]
    assert queries.count == 1


def test_bulk_complete_takes_a_partial_tuples_and_dicts(database_url):
    record_done(Nightly, [{"night": night, "observatory": "lco"} for night in DAYS[:10]])
    looked_for_lost_rows(Nightly)
    lco = functools.partial(Nightly, observatory="lco")
    with QueryCounter() as queries:
        assert Nightly.bulk_complete.__func__(lco, DAYS[5:15]) == DAYS[5:10]
    assert queries.count == 1
    assert Nightly.bulk_complete([(DAYS[0], "lco"), (DAYS[0], "apo")]) == [(DAYS[0], "lco")]
    assert Nightly.bulk_complete([{"night": DAYS[1], "observatory": "lco"}, {"night": DAYS[1]}]) == [
        {"night": DAYS[1], "observatory": "lco"}
    ]


def test_range_daily_asks_once_and_runs_only_the_missing_nights(database_url):
    record_done(Nightly, [{"night": night, "observatory": "lco"} for night in DAYS[::2]])
    looked_for_lost_rows(Nightly)
    window = RangeDaily(of=Nightly, of_params={"observatory": "lco"}, start=DAYS[0], stop=TODAY)
    with QueryCounter() as queries:
        missing = window.requires()
    assert queries.count == 1
    assert sorted(task.night for task in missing) == DAYS[1::2]
    before = {row.task_hash: row.completed for row in Task.select()}
    assert luigi.build([window], local_scheduler=True)
    after = {row.task_hash: row.completed for row in Task.select()}
    ran = {h for h in after if h not in before}
    assert ran == {task_hash(Nightly(night=night, observatory="lco")) for night in DAYS[1::2]}
    assert all(after[h] == before[h] for h in before)


def test_dynamic_requirements_are_checked_with_one_query(database_url):
    record_done(Square, [{"i": i} for i in range(0, 40, 2)])
    looked_for_lost_rows(Square)
    requirements = dynamic_requirements([Square(i=i) for i in range(40)])
    with QueryCounter() as queries:
        assert requirements.complete(lambda task: task.complete()) is False
    assert queries.count == 1
    record_done(Square, [{"i": i} for i in range(40)])
    with QueryCounter() as queries:
        assert requirements.complete(lambda task: task.complete()) is True
    assert queries.count == 1


def test_a_run_that_yields_dynamic_requirements(database_url):
    record_done(Square, [{"i": 3}])
    three = Task.get(Task.task_hash == task_hash(Square(i=3)))
    task = SumOfSquares(n=5)
    assert luigi.build([task], local_scheduler=True)
    assert Task.select().where(Task.task_name == "Square", Task.status == "done").count() == 5
    assert Task.get(Task.task_hash == task_hash(Square(i=3))).completed == three.completed  # not run again
    assert task.output().read() == 0 + 1 + 4 + 9 + 16
