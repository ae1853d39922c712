"""Dynamic dependencies (tasks that run() yields) count: recorded as edges, forgotten with --cascade, and a task
whose dynamic dependencies changed is not complete any more. A yielded task that cannot be identified fails the
task that yielded it, never leaving it running.
"""

from __future__ import annotations

import json
import re
import subprocess

import luigi
import peewee
import pytest

from astra.database import Dependency, Task
from astra.identity import task_hash
from astra.targets import forget_cached
from tests.dynamic_tasks import Yielder, YieldsAYielder, YieldsBroken, YieldsNonsense, YieldsWithFailingCheck
from tests.example_tasks import Leaf
from tests.helpers import HANG, LUIGI, REPO, astra, main, run_luigi, subprocess_env, summary, wait_for
from tests.helpers import astra as astra_command
from workflows.spectra import simulate


def edges_of(name: str) -> list[tuple[str, bool]]:
    """The recorded edges of the task named ``name``: (name of what it required, dynamic)."""
    dependant = Task.get(Task.task_name == name)
    query = Dependency.select().where(Dependency.task == dependant.pk)
    return sorted((edge.requires.task_name, edge.dynamic) for edge in query)


@pytest.mark.slow
def test_readme_median_snr_reruns_after_a_version_bump_and_a_cascade(database_url, tmp_path):
    readme = (REPO / "README.md").read_text()
    example = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "MedianSNR" in block)
    (tmp_path / "mymodule.py").write_text(example)
    # The next release of the code: EstimateSNR gets a new version, MedianSNR is unchanged.
    (tmp_path / "bumped.py").write_text(
        "import workflows\n\nworkflows.EstimateSNR.version = '2'\nfrom mymodule import *\n"
    )
    spectra = tmp_path / "spectra"
    simulate(spectra, count=3, seed=3)
    env = {"PYTHONPATH": str(tmp_path)}

    def luigi_run(module: str = "mymodule") -> str:
        result = run_luigi("--module", module, "MedianSNR", "--spectra-dir", str(spectra), "--local-scheduler", env=env)
        assert "This progress looks :)" in result.stdout, result.stdout
        return summary(result.stdout)

    def why(module: str = "mymodule", *more: str):
        return astra_command(
            "tasks", "why", "--module", module, "MedianSNR", "--spectra-dir", str(spectra), *more, env=env
        )

    assert "4 ran successfully" in luigi_run()
    median = Task.get(Task.task_name == "MedianSNR")
    assert median.dynamic_dependencies == 3
    first_attempts = median.attempts
    assert edges_of("MedianSNR") == [("EstimateSNR", True)] * 3
    assert "(dynamic)" in astra_command("tasks", "show", str(median.pk), env=env).stdout
    assert why().returncode == 0
    ran = luigi_run()
    assert "ran successfully" not in ran and "1 complete ones were encountered" in ran  # stays done as it is

    # A new version of EstimateSNR: MedianSNR's dynamic dependencies are other tasks now.
    stale = why("bumped")
    assert stale.returncode == 1, stale.stdout + stale.stderr
    assert "is recorded done" in stale.stdout and "but luigi will run it again" in stale.stdout
    assert "is now a different task" in stale.stdout
    (reason,) = json.loads(why("bumped", "--json").stdout)["reasons"]
    assert reason["kind"] == "dynamic_dependency" and reason["task"]["task"].startswith("EstimateSNR(")
    assert reason["recorded"] == reason["task"]["task_hash"] and reason["asked"] != reason["recorded"]
    assert "4 ran successfully" in luigi_run("bumped")
    median = Task.get(Task.task_name == "MedianSNR")
    assert median.status == "done" and median.attempts > first_attempts and median.error is None
    assert (
        sorted(Task.select(Task.version).where(Task.task_name == "EstimateSNR").tuples()) == [("",)] * 3 + [("2",)] * 3
    )
    new_estimates = {t.pk for t in Task.select().where(Task.task_name == "EstimateSNR", Task.version == "2")}
    assert {pk for (pk,) in Dependency.select(Dependency.requires).where(Dependency.task == median.pk).tuples()} == (
        new_estimates
    )
    ran = luigi_run("bumped")
    assert "ran successfully" not in ran and "1 complete ones were encountered" in ran

    # Forgetting one of them with --cascade forgets MedianSNR too, through its dynamic edge; luigi makes both again.
    forgot = astra_command(
        "tasks", "forget", "--name", "EstimateSNR", "--where", "spectrum_path=*spec-00001.fits", "--cascade", "--yes",
        env=env,
    )  # fmt: skip
    assert forgot.returncode == 0, forgot.stderr
    assert "MedianSNR" in forgot.stdout
    assert Task.get_or_none(Task.task_name == "MedianSNR") is None
    assert "2 ran successfully" in luigi_run("bumped")
    assert Task.get(Task.task_name == "MedianSNR").status == "done"


@pytest.mark.slow
def attempts() -> dict[str, int]:
    """The largest ``attempts`` of each task name's records."""
    return {
        name: n
        for name, n in Task.select(Task.task_name, peewee.fn.MAX(Task.attempts)).group_by(Task.task_name).tuples()
    }


def test_a_forgotten_dynamic_dependency_makes_the_dependant_run_again(database_url):
    top = YieldsAYielder()
    assert luigi.build([top], local_scheduler=True, log_level="WARNING")
    assert edges_of("YieldsAYielder") == [("Yielder", True)]
    assert edges_of("Yielder") == [("Leaf", True), ("Leaf", True)]
    forget_cached()
    assert top.complete() and Yielder(n=2).complete()
    # luigi called each run() twice (before and after what it yielded): one attempt each, not two.
    assert attempts() == {"YieldsAYielder": 1, "Yielder": 1, "Leaf": 1}

    # Forgotten without --cascade, two levels down: both tasks above it are not complete any more.
    leaf = Task.get(Task.task_hash == task_hash(Leaf(i=1)))
    assert astra_command("tasks", "forget", str(leaf.pk), "--yes").returncode == 0
    forget_cached()
    assert not Yielder(n=2).complete()
    assert not top.complete()
    result = luigi.build([top], local_scheduler=True, detailed_summary=True, log_level="WARNING")
    assert "3 ran successfully" in result.summary_text, result.summary_text
    assert "run by other workers" not in result.summary_text, result.summary_text  # reopened here, and run here
    forget_cached()
    assert top.complete()
    assert attempts() == {"YieldsAYielder": 2, "Yielder": 2, "Leaf": 1}
    assert Task.get(Task.task_name == "YieldsAYielder").result == {"inner": {"total": 1}}


@pytest.mark.slow
def test_a_dynamic_dependency_whose_value_reads_back_otherwise_stays_complete(database_url):
    """Cut(cut=2) is recorded with the text "2", which luigi reads back as 2.0: rebuilt from its record (in
    another process: this one's instance cache gives back the task made with 2), it hashed otherwise, so the done task
    that yielded it ran again, and the threshold with it."""
    first = run_luigi("--module", "tests.dynamic_tasks", "YieldsACut", "--local-scheduler")
    assert "2 ran successfully" in summary(first.stdout), first.stdout
    again = run_luigi("--module", "tests.dynamic_tasks", "YieldsACut", "--local-scheduler")
    assert "1 complete ones were encountered" in summary(again.stdout), again.stdout
    assert attempts() == {"YieldsACut": 1, "Cut": 1}
    assert "ran successfully" not in summary(again.stdout), again.stdout


@pytest.mark.parametrize(
    ("task", "error"),
    [
        (YieldsBroken, "IdentityError: cannot identify BrokenRequires(): its requires() raised ValueError"),
        (YieldsNonsense, "AttributeError: 'int' object has no attribute"),
        (YieldsWithFailingCheck, "RuntimeError: the custom completeness check failed"),
    ],
)
def test_a_yielded_task_that_breaks_fails_the_task_that_yielded_it(database_url, task, error):
    assert luigi.build([task()], local_scheduler=True, log_level="CRITICAL") is False
    row = Task.get(Task.task_hash == task_hash(task()))
    assert row.status == "failed", row.status
    assert row.error.startswith(error), row.error


@pytest.mark.slow
def test_a_yielded_broken_task_through_the_luigi_command_line(database_url):
    result = run_luigi("--module", "tests.dynamic_tasks", "YieldsBroken", "--local-scheduler")
    assert "1 failed" in summary(result.stdout), result.stdout
    assert "cannot say what I need" in result.stdout
    row = Task.get(Task.task_name == "YieldsBroken")
    assert row.status == "failed" and "BrokenRequires()" in row.error
    assert astra_command("tasks", "list", "--status", "running").stdout.count("YieldsBroken") == 0


@pytest.mark.slow
def test_a_run_whose_yielded_task_failed_ends_saying_so_not_still_running(sqlite_url):
    """luigi drops run()'s generator to run what it yielded; that failed, so the task was left with its row
    running under the luigi process's pid. The run ended saying it was "still running" (that process, now gone),
    and never named the failure; `why` said it was running."""
    done = run_luigi("--module", "tests.dynamic_tasks", "AboveAYielder", "--local-scheduler")
    assert done.returncode == 30, done.stdout
    last = [line for line in done.stdout.splitlines() if "is not done:" in line][-1]
    assert "still running" not in last, last
    assert "FailingLeaf__99914b932b failed too" in last and "1 left unfinished (YieldsAFailure__99914b932b" in last
    why = astra("tasks", "why", "YieldsAFailure", "--module", "tests.dynamic_tasks")
    assert "YieldsAFailure() was left unfinished" in why.stdout and "that process is gone" in why.stdout, why.stdout


def test_a_task_set_aside_for_what_it_yielded_is_shown_waiting(database_url, tmp_path, capsys):
    """While the task its run() yielded runs, the record of the one that yielded it stays running, without a claim;
    before, list, show and why called it running, with a heartbeat that no longer moved."""
    luigi_run = subprocess.Popen(
        [LUIGI, "--module", "tests.dynamic_tasks", "YieldsASlowLeaf", "--folder", str(tmp_path), "--local-scheduler"],
        env=subprocess_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: (tmp_path / "started").exists(), what="the yielded task to start")
        listed = main(capsys, "tasks", "list", "--name", "YieldsASlowLeaf").stdout
        assert re.search(r"YieldsASlowLeaf +waiting ", listed), listed
        assert re.search(r"SlowLeaf +running ", main(capsys, "tasks", "list", "--name", "SlowLeaf").stdout)
        parent = Task.get(Task.task_name == "YieldsASlowLeaf")
        shown = main(capsys, "tasks", "show", str(parent.pk)).stdout
        assert "status     waiting (for the tasks its run() yielded)" in shown, shown
        asked = ["--module", "tests.dynamic_tasks", "YieldsASlowLeaf", "--folder", str(tmp_path)]
        why = main(capsys, "tasks", "why", *asked).stdout
        assert "is waiting for the tasks its run() yielded" in why, why
        running = main(capsys, "tasks", "list", "--status", "running").stdout  # the filter: the status as stored
        assert re.search(r" YieldsASlowLeaf +waiting ", running) and re.search(r" SlowLeaf +running ", running)
    finally:
        (tmp_path / "go").touch()
        assert luigi_run.wait(timeout=HANG) == 0
    assert re.search(r"YieldsASlowLeaf +done ", main(capsys, "tasks", "list", "--name", "YieldsASlowLeaf").stdout)
