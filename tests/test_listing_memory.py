"""Listing tasks never loads their results: ``astra tasks list`` stays small however large the results are.

Peak memory is that of the real ``astra`` subprocess, read by a small parent process from
``getrusage(RUSAGE_CHILDREN)`` (so earlier subprocesses of the test run do not count).
"""

from __future__ import annotations

import json
import resource  # noqa: F401  (used in the parent script below; fails early where there is none)
import subprocess
import sys

import luigi
import pytest

from astra.database import Task
from tests.helpers import ASTRA, subprocess_env
from tests.listing_memory_tasks import SIZE, LargeResult, ListedItems

RESULTS = 10  # of SIZE characters each: 60 MB in all

PEAK = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def _peak_bytes(*args: str, input: str = "", code: int = 0) -> int:
    """The peak resident memory of ``astra ARGS`` run as a subprocess (given ``input``, ending with ``code``)."""
    out = subprocess.run(
        [sys.executable, "-c", PEAK, str(ASTRA), *args],
        env=subprocess_env(),
        input=input,
        capture_output=True,
        text=True,
        timeout=300,
    )
    ended, peak = map(int, out.stdout.split())
    assert ended == code, out.stderr
    return peak


@pytest.mark.slow
def test_listing_and_showing_do_not_load_every_result(database_url):
    baseline = _peak_bytes("db", "status")  # the same imports and connection, no task
    assert luigi.build([LargeResult(index=i) for i in range(RESULTS)], local_scheduler=True, log_level="WARNING")
    total = RESULTS * SIZE
    for args in (["tasks", "list"], ["tasks", "list", "--json"], ["tasks", "forget", "--all", "--dry-run"]):
        grew = _peak_bytes(*args) - baseline
        assert grew < total / 6, f"astra {' '.join(args)}: {grew / 1e6:.0f} MB more for {total / 1e6:.0f} MB of results"
    # `show` loads the one result it shows, and no other.
    pk = Task.select(Task.pk).order_by(Task.pk).first().pk
    grew = _peak_bytes("tasks", "show", str(pk)) - baseline
    assert grew < 3 * SIZE + total / 6, f"astra tasks show: {grew / 1e6:.0f} MB more"


@pytest.mark.slow(20)
def test_a_long_listing_is_written_as_it_is_read(database_url):
    """`astra tasks list --limit 0` of many tasks holds one chunk of them at a time, not every record and its JSON
    (~8 kB per task: 6 GB for 770,000 tasks, where a listing of 10^7 could not finish)."""
    n = 30_000
    assert luigi.build([ListedItems(n=n)], local_scheduler=True, log_level="WARNING")
    baseline = _peak_bytes("tasks", "list", "--limit", "1", "--json")
    for args in (["--json"], []):
        grew = _peak_bytes("tasks", "list", "--limit", "0", *args) - baseline
        assert grew < 60e6, f"astra tasks list --limit 0 {' '.join(args)}: {grew / 1e6:.0f} MB more for {n:,} tasks"
    listed = subprocess.run(
        [str(ASTRA), "tasks", "list", "--limit", "0", "--json"], env=subprocess_env(), capture_output=True, text=True
    )
    records = json.loads(listed.stdout)
    pks = [record["pk"] for record in records]
    assert pks == sorted((task.pk for task in Task.select(Task.pk)), reverse=True)
    assert listed.stdout == json.dumps(records, indent=2) + "\n"  # the text json.dumps gives the whole list
    assert records[0]["parameters"] == {"k": str(n - 1)}


@pytest.mark.slow(40)
def test_forgetting_many_tasks_holds_their_pks_only(database_url):
    """`astra tasks forget` of many tasks holds their pks (a set of ints), not their records: it held every task
    (~2.2 kB each: 1.75 GB for a dry run of 770,000 tasks, where 10^7 could not finish). For a dry run (by --all,
    or by filters with --cascade and its JSON) and the prompt, what each grows by per task from 10,000 tasks to
    40,000; then the forget itself, with its JSON, beside the prompt of the same tasks."""
    runs = [
        (["--all", "--dry-run"], ""),
        (["--name", "ListedItem", "--where", "k=*", "--cascade", "--dry-run", "--json"], ""),
        (["--all"], "n\n"),  # asked, and refused
    ]
    peaks = []
    for n in (10_000, 40_000):
        assert luigi.build([ListedItems(n=n)], local_scheduler=True, log_level="WARNING")
        peaks.append(
            [_peak_bytes("tasks", "forget", *args, input=answer, code=int(bool(answer))) for args, answer in runs]
        )
    for (args, _), few, many in zip(runs, *peaks):
        per_task = (many - few) / 30_000
        assert per_task < 1000, f"astra tasks forget {' '.join(args)}: {per_task:.0f} bytes more per task"
    grew = _peak_bytes("tasks", "forget", "--all", "--cascade", "--yes", "--json") - peaks[1][-1]
    assert grew < 30e6, f"astra tasks forget --all --yes --json: {grew / 1e6:.0f} MB more than its prompt"
    assert Task.select().count() == 0
