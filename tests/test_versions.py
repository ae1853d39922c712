"""A task's ``version`` is part of its identity: bumping it runs that task, and what depends on it, again.

The tasks (tests/versions_tasks.py) read their versions from the environment when the module is imported, so each
luigi command in the tests plays a different release of the code (``luigi --module tests.versions_tasks ...``).
"""

from __future__ import annotations

import json

import luigi
import pytest

from astra.database import Task
from astra.targets import forget_cached
from tests.helpers import astra_many, one_line_error, run_luigi
from tests.versions_tasks import Banded, BandedBatch, Reduce


def run(task: str, calibrate: str = "1", reduce: str = "1") -> str:
    """Run ``task`` with the real luigi command line and these versions; the run's summary of what ran."""
    env = {"TEST_CALIBRATE_VERSION": calibrate, "TEST_REDUCE_VERSION": reduce}
    result = run_luigi("--module", "tests.versions_tasks", task, "--local-scheduler", env=env)
    assert "This progress looks :)" in result.stdout, result.stdout
    return result.stdout


def versions() -> list[tuple[str, str]]:
    return sorted(Task.select(Task.task_name, Task.version).where(Task.status == "done").tuples())


@pytest.mark.slow
def test_bumping_a_version_reruns_the_task_and_what_depends_on_it(database_url, monkeypatch):
    assert "2 ran successfully" in run("Reduce")

    # A new version of Reduce alone (here with luigi.build, in this process): Calibrate stays done.
    monkeypatch.setattr(Reduce, "version", "2")
    luigi.task_register.Register.clear_instance_cache()  # tasks made before the change remember their identity
    forget_cached()
    summary = luigi.build([Reduce()], local_scheduler=True, detailed_summary=True, log_level="WARNING").summary_text
    assert "1 ran successfully" in summary and "Reduce(night=1)" in summary.split("ran successfully")[1]
    assert versions() == [("Calibrate", "1"), ("Reduce", "1"), ("Reduce", "2")]
    luigi.task_register.Register.clear_instance_cache()  # nor should later tests get these instances

    # A new version of Calibrate: it runs again, and so does Reduce, whose identity includes Calibrate's.
    assert "2 ran successfully" in run("Reduce", calibrate="2", reduce="2")
    assert versions() == [("Calibrate", "1"), ("Calibrate", "2"), ("Reduce", "1"), ("Reduce", "2"), ("Reduce", "2")]
    newest = Task.select().where(Task.task_name == "Reduce").order_by(Task.pk.desc()).get()
    assert newest.result == {"calibration": {"night": 1, "calibrated_with": "2"}}

    # `why` explains what a new version changes: Calibrate by its version, Reduce by its upstream.
    env = {"TEST_CALIBRATE_VERSION": "3", "TEST_REDUCE_VERSION": "2"}
    same_id, calibrate, reduce = astra_many(
        ("tasks", "show", newest.task_id),
        ("tasks", "why", "Calibrate", "--module", "tests.versions_tasks"),
        ("tasks", "why", "Reduce", "--night", "1", "--json"),
        env=env,
    )
    # The old records stay (one luigi task_id, several versions) until forgotten.
    assert "matches 3 tasks" in one_line_error(same_id, 1)
    assert calibrate.returncode == 1, calibrate.stderr
    assert "Calibrate(night=1) is not recorded: luigi will run it" in calibrate.stdout
    assert "version: recorded '2', asked '3'" in calibrate.stdout
    assert reduce.returncode == 1, reduce.stderr
    explained = json.loads(reduce.stdout)
    assert explained["status"] == "not recorded"
    assert explained["upstream_not_done"] == ["Calibrate(night=1)"]
    closest = explained["closest"][0]
    assert closest["record"]["pk"] == newest.pk
    needs, made_from = closest["differences"]
    assert needs["kind"] == made_from["kind"] == "dependency"
    assert needs["task"]["task"] == "Calibrate(night=1)" and needs["status"] == "not recorded"
    assert needs["recorded"] is None and needs["asked"] == needs["task"]["task_hash"]
    assert made_from["task"]["version"] == "2" and made_from["status"] == "done" and made_from["asked"] is None


def test_a_version_of_the_tasks_own_is_the_one_recorded(database_url, monkeypatch):
    """Its hash was worked out with the task's own version; the record held the class's (a property object's
    text, different in every process), and results of the "current" version found none of them."""
    luigi.task_register.Register.clear_instance_cache()  # luigi's instances keep the hash of an earlier test's model
    assert luigi.build([Banded(band="g"), BandedBatch(bands=["r", "i"])], local_scheduler=True)
    assert versions() == [("Banded", "m1-g"), ("Banded", "m1-i"), ("Banded", "m1-r")]

    monkeypatch.setenv("TEST_BAND_MODEL", "m2")
    forget_cached()
    luigi.task_register.Register.clear_instance_cache()
    assert luigi.build([Banded(band="g")], local_scheduler=True)
    assert ("Banded", "m2-g") in versions() and len(versions()) == 4
    shown = astra_many(("results", "Banded", "--module", "tests.versions_tasks", "--json"))[0]
    assert shown.returncode == 0, shown.stderr
    assert sorted(row["version"] for row in json.loads(shown.stdout)) == ["m1-g", "m1-i", "m1-r", "m2-g"]


@pytest.mark.slow
def test_bumping_the_version_of_a_batchs_items_reruns_what_requires_the_batch(sqlite_url):
    """A task that requires a BatchTask was found done after the items' version was bumped: the batch, a luigi task
    with no record of its own, had the same identity whatever its items' version."""
    first = run_luigi("--module", "tests.versions_tasks", "Census", "--local-scheduler")
    assert "This progress looks :)" in first.stdout, first.stdout
    bumped = run_luigi(
        "--module", "tests.versions_tasks", "Census", "--local-scheduler", env={"TEST_PROFILED_VERSION": "2"}
    )  # fmt: skip
    assert "2 ran successfully" in bumped.stdout, bumped.stdout  # the batch (its 3 items) and Census
    census = Task.select().where(Task.task_name == "Census").order_by(Task.pk.desc()).get()
    assert census.result == {"versions": ["2", "2", "2"]}
    assert versions().count(("Profiled", "2")) == 3 and versions().count(("Census", "")) == 2
