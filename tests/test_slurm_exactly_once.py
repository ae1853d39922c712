"""Exactly once on SLURM, whatever dies: luigi SIGKILLed (its process or its whole group, with any --workers)
leaves its jobs and array elements running, and a rerun adopts them instead of submitting them again."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from astra.database import Task
from tests.helpers import background, jobs_of, result_of, run_luigi, slurm_args, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def rows(name: str) -> list[Task]:
    return list(Task.select().where(Task.task_name == name).order_by(Task.task_id))


@pytest.mark.parametrize("kill", ["luigi", "group"])
def test_killed_luigi_with_workers_leaves_running_jobs_to_record_once(slurm_cluster, postgres_url, tmp_path, kill):
    logs = tmp_path / "logs"
    args = slurm_args(logs, "--module", "tests.slurm_tasks", "Sleeps", "--n", "2", "--prefix", "k")
    args += ["--workers", "2", "--local-scheduler"]
    with background((args + ["--seconds", "8"], tmp_path / "killed.log")) as (first,):
        wait_for(lambda: sum(1 for task in rows("Sleep") if task.slurm_node) == 2, timeout=120, what="2 jobs running")
        jobs = sorted(task.slurm_job_id for task in rows("Sleep"))
        if kill == "luigi":
            os.kill(first.pid, signal.SIGKILL)  # the luigi process only: its forked workers see it gone
        else:
            first.signal(signal.SIGKILL)  # the whole process group
        first.wait(timeout=30)
        # A second luigi process waits for the jobs (they hold the claims) instead of running the tasks again.
        second = run_luigi(*args, "--seconds", "0")
    assert second.returncode == 0, second.stdout[-3000:]
    tasks = rows("Sleep")
    assert [task.status for task in tasks] == ["done", "done"], first.text()[-3000:]
    assert [task.attempts for task in tasks] == [1, 1]
    assert sorted(task.slurm_job_id for task in tasks) == jobs == sorted(jobs_of(logs))
    assert [result_of(task)["slept"] for task in tasks] == [8.0, 8.0]  # the first jobs' results


def test_a_rerun_adopts_the_pending_jobs_of_a_killed_luigi(slurm_cluster, sqlite_url, tmp_path):
    logs = tmp_path / "logs"
    args = slurm_args(logs, "--module", "tests.slurm_tasks", "Sleeps", "--n", "2", "--prefix", "p")
    args += ["--workers", "2", "--local-scheduler"]
    held = []
    try:
        with background((args + ["--slurm-sbatch-args=--hold"], tmp_path / "held.log")) as (first,):
            wait_for(lambda: sum(1 for task in rows("Sleep") if task.slurm_job_id) == 2, timeout=90, what="2 jobs")
            held = sorted(task.slurm_job_id for task in rows("Sleep"))
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
        with background((args, tmp_path / "rerun.log")) as (rerun,):
            # The rerun takes the tasks over (their worker is gone) and follows the held jobs rather than submit.
            wait_for(
                lambda: rerun.text().count("adopted") == 2 or rerun.process.poll() is not None,
                timeout=90,
                what="the rerun to adopt the jobs",
            )
            subprocess.run(["scontrol", "release", ",".join(held)], check=True)
            assert rerun.wait(timeout=120) == 0, rerun.text()[-3000:]
        assert rerun.text().count("(pending) adopted for Sleep") == 2, rerun.text()[-3000:]
    finally:
        subprocess.run(["scancel", *held], capture_output=True)
    tasks = rows("Sleep")
    assert [task.status for task in tasks] == ["done", "done"]
    assert sorted(task.slurm_job_id for task in tasks) == held == sorted(jobs_of(logs))  # nothing else submitted


def test_a_rerun_adopts_the_live_array_elements_of_a_killed_luigi(slurm_cluster, postgres_url, tmp_path):
    logs, tally = tmp_path / "logs", tmp_path / "tally"
    tally.mkdir()
    args = slurm_args(logs, "--module", "tests.slurm_tasks", "Tallies", "--n", "8", "--tally-dir", str(tally))
    args += ["--seconds", "3", "--jobs", "4", "--local-scheduler"]
    with background((args, tmp_path / "killed.log")) as (first,):
        wait_for(lambda: jobs_of(logs), timeout=120, what="an array element to start")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    second = run_luigi(*args)
    assert second.returncode == 0 and "ran successfully" in second.stdout, second.stdout[-3000:]
    assert "live SLURM array elements adopted" in second.stdout, second.stdout[-3000:]
    items = rows("Tally")
    assert len(items) == 8 and {item.status for item in items} == {"done"}
    computed = {path.name: path.read_text().splitlines() for path in tally.iterdir()}
    assert sorted(computed) == [f"t{i}" for i in range(8)]
    assert all(len(runs) == 1 for runs in computed.values()), computed  # no item computed twice
    elements = jobs_of(logs)
    assert len({job.split("_")[0] for job in elements}) == 1, elements  # the first array only
    # Each item says which array element worked it, on which node.
    for item in items:
        assert item.slurm_job_id == computed[result_of(item)["name"]][0] and item.slurm_job_id in elements
        assert item.slurm_node == slurm_cluster
