"""Honest accounting: waiting for a claim burns no keys, and a process says which tasks it did not run itself."""

from __future__ import annotations

import socket
import time

import luigi
import pytest

import astra
from astra import tally
from astra.database import Task, queries
from tests.claims_tasks import hold, hold_args, runners
from tests.dynamic_tasks import YieldsAYielder
from tests.helpers import assert_no_key_burnt, background, start_later, wait_for


@pytest.mark.slow
def test_polling_a_claimed_task_burns_no_keys(database_url, tmp_path):
    args = hold_args(tmp_path, "polled", "--astra-lease", "2")  # a waiter with lease 2 asks ten times a second
    with background() as started:
        holder = start_later(started, args, tmp_path / "holder.out")
        wait_for(lambda: runners(tmp_path, "polled"), what="the holder to start the task")
        waiter = start_later(started, args, tmp_path / "waiter.out")
        wait_for(lambda: "waiting: " in waiter.text(), timeout=60, what="the waiter to find the task claimed")
        time.sleep(2)  # some twenty polls
        (tmp_path / "polled.release").touch()
        assert holder.wait() == 0, holder.text()
        assert waiter.wait() == 0, waiter.text()
    assert_no_key_burnt()

    (tmp_path / "next.release").touch()
    assert luigi.build([hold(tmp_path, "next")], local_scheduler=True, log_level="WARNING")
    assert [pk for (pk,) in Task.select(Task.pk).order_by(Task.pk).tuples()] == [1, 2]
    assert_no_key_burnt()


def _item(name: str, shared: str, **extra) -> dict:
    return {
        "task_module": "tests.claims_tasks",
        "task_name": "Item",
        "task_id": f"Item_{name}",
        "task_hash": name * 64,
        "version": "",
        "astra_version": astra.__version__,
        "parameters": {"name": name, "shared": shared},
        "requires": [],
        **extra,
    }


@pytest.mark.slow
def test_claims_and_batches_that_meet_existing_rows_burn_no_keys(database_url):
    """Parameters shared with earlier tasks, and a batch's failed items recorded again, take no new keys."""
    for name in ("a", "b", "c"):
        fields = {key: value for key, value in _item(name, "same").items() if key not in ("parameters", "requires")}
        attempt = queries.claim(fields, {"name": name, "shared": "same"}, 60)
        with queries.transaction():
            queries.finish(attempt, None, 0.0, [])
    items = [_item(name, "same", error="ValueError: no") for name in ("d", "e")]
    for status in (queries.FAILED, queries.FAILED, queries.DONE):
        with queries.transaction():
            queries.record_items(items, status)
    assert Task.select().where(Task.status == queries.DONE).count() == 5
    assert Task.get(Task.task_hash == "d" * 64).attempts == 3
    assert_no_key_burnt()


@pytest.mark.slow
def test_a_process_says_which_tasks_it_did_not_run_itself(database_url, tmp_path):
    """Two processes run the same two tasks (with two workers each): the second says it ran neither."""
    args = ["--module", "tests.claims_tasks", "Both", "--workdir", str(tmp_path), "--workers", "2"]
    args += ["--local-scheduler", "--no-lock"]
    with background() as started:
        first = start_later(started, args, tmp_path / "first.out")
        wait_for(lambda: runners(tmp_path, "one") and runners(tmp_path, "two"), timeout=60, what="both to start")
        second = start_later(started, args, tmp_path / "second.out")
        wait_for(lambda: second.text().count("waiting: ") >= 2, timeout=60, what="the second to wait for both")
        (tmp_path / "one.release").touch()
        (tmp_path / "two.release").touch()
        assert first.wait() == 0, first.text()
        assert second.wait() == 0, second.text()

    # luigi says each process ran both tasks; astra says which one really did.
    for process in (first, second):
        assert "3 ran successfully" in process.text().split("Execution Summary")[1], process.text()
    host = socket.gethostname()
    for name in ("one", "two"):
        (pid,) = runners(tmp_path, name)
        line = f"astra: Hold(name={name}): was not run by this process: {host} pid {pid} ran it"
        assert f"{line} (luigi counts it as run here)" in second.text()
    assert (
        "astra: 2 of the tasks luigi counts as run by this process were run by other workers (each named above as "
        "'not run by this process'); this process ran 0 astra tasks itself"
    ) in second.text()
    assert "not run by this process" not in first.text()


def test_a_task_whose_run_yields_counts_once(database_url):
    """luigi calls run() again, from the top, once what it yielded is done: that is the same task, counted once.
    Before, each time run() was taken up again counted one more task this process "ran itself"."""
    ran_before, _ = tally.ran_here()
    assert luigi.build([YieldsAYielder()], local_scheduler=True, log_level="WARNING")
    ran, _ = tally.ran_here()
    assert ran - ran_before == 4  # YieldsAYielder, Yielder(n=2), Leaf(i=0), Leaf(i=1)
