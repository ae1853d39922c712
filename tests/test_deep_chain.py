"""A task that requires the previous night's run: chains of 10,000 nights work, as they do in plain luigi.

The identity of a night includes those of all nights before it, so astra walks the whole chain for the first one it
meets (with a stack of its own: Python's recursion stops at about 1,000 frames). Running 10,000 tasks one after the
other takes plain luigi's scheduler about half an hour here (it is quadratic in the number of pending tasks), so the
first 9,990 nights are made beforehand (by touching files for plain luigi; for astra, recorded with their edges in one
transaction, as a batch records a chunk: a batch would work the chain a link and a transaction at a time, ~50 s on
PostgreSQL here, which tests/test_batch.py tests on short chains) and the luigi command line runs the last ten of
both; a worker then scans a chain of 10,000 nights that are all still to do.
"""

from __future__ import annotations

import re

import pytest
from luigi.scheduler import Scheduler
from luigi.worker import Worker

from astra.database import Dependency, Task
from astra.identity import task_hash
from astra.targets import forget_cached
from tests.deep_chain_tasks import Night, PlainNight
from tests.helpers import astra as astra_command
from tests.helpers import record_at_once, run_luigi

DEPTH = 10_000
MADE = DEPTH - 10  # nights made before the luigi command runs


def outcome(output: str) -> str:
    text = output.split("===== Luigi Execution Summary =====")[1]
    return re.sub(r",?\s*root=[^,)]*", "", text).replace("PlainNight", "Night")


@pytest.mark.slow(20)
def test_a_chain_of_ten_thousand_nights(database_url, tmp_path):
    module = ["--module", "tests.deep_chain_tasks"]
    record_at_once(Night, [{"n": n} for n in range(MADE)], result=lambda values: {"night": values["n"]})
    assert Dependency.select().count() == MADE - 1
    root = tmp_path / "plain"
    root.mkdir()
    for n in range(MADE):
        (root / str(n)).write_text(str(n))

    last = str(DEPTH - 1)
    plain = run_luigi(*module, "PlainNight", "--n", last, "--root", str(root), "--local-scheduler", timeout=600)
    deep = run_luigi(*module, "Night", "--n", last, "--local-scheduler", timeout=600)
    assert "10 ran successfully" in outcome(plain.stdout), plain.stdout
    assert outcome(deep.stdout) == outcome(plain.stdout), deep.stdout
    assert Task.select().where(Task.status == "done").count() == DEPTH
    assert Dependency.select().count() == DEPTH - 1
    again = run_luigi(*module, "Night", "--n", last, "--local-scheduler", timeout=600)
    assert "ran successfully" not in outcome(again.stdout), again.stdout
    assert "1 complete ones were encountered" in outcome(again.stdout), again.stdout

    done = astra_command("tasks", "why", *module, "Night", "--n", last)
    assert done.returncode == 0 and f"Night(n={last}) is done" in done.stdout, done.stdout + done.stderr
    first = Task.get(Task.task_hash == task_hash(Night(n=0)))
    forgot = astra_command("tasks", "forget", str(first.pk), "--cascade", "--yes")
    assert forgot.returncode == 0, forgot.stderr
    assert f"forgot {DEPTH} tasks" in forgot.stdout
    assert Task.select().count() == 0 and Dependency.select().count() == 0
    gone = astra_command("tasks", "why", *module, "Night", "--n", last)
    assert gone.returncode == 1 and "is not recorded: luigi will run it" in gone.stdout, gone.stdout + gone.stderr

    # A luigi worker scans a chain of 10,000 nights still to do, like plain luigi's (running them would take long).
    forget_cached()
    for made in root.iterdir():
        made.unlink()
    for top in (Night(n=DEPTH - 1), PlainNight(n=DEPTH - 1, root=str(root))):
        with Worker(scheduler=Scheduler(), worker_processes=1) as worker:
            assert worker.add(top)
            assert len(worker._scheduled_tasks) == DEPTH


@pytest.mark.slow
def test_a_chain_deeper_than_pythons_recursion_runs_whole(database_url, tmp_path):
    """300 nights, none made yet (astra used to fail from about 246): both run all of them."""
    module = ["--module", "tests.deep_chain_tasks"]
    plain = run_luigi(*module, "PlainNight", "--n", "299", "--root", str(tmp_path), "--local-scheduler")
    deep = run_luigi(*module, "Night", "--n", "299", "--local-scheduler")
    assert "300 ran successfully" in outcome(plain.stdout), plain.stdout
    assert outcome(deep.stdout) == outcome(plain.stdout), deep.stdout
    assert Task.select().where(Task.status == "done").count() == 300
