"""Gentle on the scheduler: one status query per poll for every job of every luigi worker, backing off to
``[slurm] poll_max``; arrays within the cluster's MaxArraySize and ``[slurm] max_running``; a trace per item."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from astra.database import Task
from tests.helpers import background, jobs_of, result_of, run_luigi, slurm_args, wait_for

pytestmark = pytest.mark.slurm

#: The SLURM commands a luigi process may ask about jobs: each is wrapped to log its calls.
QUERIES = ("squeue", "scontrol", "sacct", "sbatch")


def logging_commands(directory: Path, max_array_size: int | None = None) -> tuple[dict, Path]:
    """Wrappers of SLURM's commands that log each call and run the real one; the environment that uses them (and a
    TMPDIR of its own: astra shares its squeue answers there). ``max_array_size``: what ``scontrol show config``
    says of MaxArraySize."""
    bin_dir, log = directory / "bin", directory / "calls.log"
    bin_dir.mkdir()
    (directory / "tmp").mkdir()
    for name in QUERIES:
        real = shutil.which(name)
        body = f'#!/bin/sh\necho "{name} $*" >> {log}\n'
        if name == "scontrol" and max_array_size:
            config = f'{real} "$@" | sed "s/^MaxArraySize .*/MaxArraySize = {max_array_size}/"'
            body += f'if [ "$1 $2" = "show config" ]; then {config}; exit; fi\n'
        (bin_dir / name).write_text(body + f'exec {real} "$@"\n')
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(directory / "tmp")}, log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.slow
def test_sixteen_workers_share_one_squeue_per_poll_backing_off(slurm_cluster, sqlite_url, tmp_path):
    env, log = logging_commands(tmp_path)
    logs = tmp_path / "logs"
    args = slurm_args(logs, "--module", "tests.slurm_tasks", "Sleeps", "--n", "16", "--prefix", "q")
    args += ["--workers", "16", "--slurm-poll-max", "4", "--slurm-sbatch-args=--hold", "--local-scheduler"]
    held = []
    with background((args, tmp_path / "held.log", env)) as (luigi,):
        wait_for(lambda: len(Task.select().where(Task.slurm_job_id.is_null(False))) == 16, timeout=120, what="16 jobs")
        held = [task.slurm_job_id for task in Task.select()]
        before = len(calls(log))
        subprocess.run(["sleep", "20"])  # 16 workers follow 16 pending jobs
        during = [call for call in calls(log)[before:] if not call.startswith("sbatch")]
        subprocess.run(["scancel", *held], check=True)
        luigi.wait(timeout=60)
    # 20 s at an interval that has backed off to 4 s: about 5 polls, one squeue each for all 16 jobs.
    assert during and all(call.startswith("squeue") for call in during), during
    assert len(during) <= 8, during
    tasks = list(Task.select())
    assert {task.status for task in tasks} == {"failed"} and all("CANCELLED" in task.error for task in tasks)
    assert sum(call.startswith("sbatch") for call in calls(log)) == 16


@pytest.mark.slow
def test_arrays_keep_within_max_array_size_and_max_running_and_trace_each_item(slurm_cluster, postgres_url, tmp_path):
    env, log = logging_commands(tmp_path, max_array_size=3)
    logs, tally = tmp_path / "logs", tmp_path / "tally"
    tally.mkdir()
    args = slurm_args(logs, "--module", "tests.slurm_tasks", "Tallies", "--n", "5", "--tally-dir", str(tally))
    args += ["--jobs", "5", "--slurm-max-running", "2", "--local-scheduler"]
    done = run_luigi(*args, env=env)
    assert done.returncode == 0 and "1 ran successfully" in done.stdout, done.stdout[-3000:]
    submissions = [call for call in calls(log) if call.startswith("sbatch")]
    # Five shares, at most 3 elements per array: two arrays (0-2 and 0-1), the throttle of 2 divided between them.
    assert len(submissions) == 2, submissions
    assert [call.split("--array=")[1].split()[0] for call in submissions] == ["0-2%1", "0-1%1"]
    arrays = sorted({job.split("_")[0] for job in jobs_of(logs)}, key=int)
    for array in arrays:
        assert f"SLURM array {array} (" in done.stdout  # luigi's console names every submission
    items = list(Task.select().where(Task.task_name == "Tally"))
    assert len(items) == 5 and {item.status for item in items} == {"done"}
    for item in items:  # each item names the array element (ARRAYID_INDEX) that worked it, and its node
        name = result_of(item)["name"]
        assert item.slurm_job_id == (tally / name).read_text().strip() and item.slurm_node == slurm_cluster
    assert sorted(item.slurm_job_id for item in items) == sorted(jobs_of(logs))


@pytest.mark.slow
def test_the_console_names_each_job_submitted(slurm_cluster, sqlite_url, tmp_path):
    done = run_luigi(*slurm_args(tmp_path / "logs", "--module", "tests.slurm_tasks", "Sleep", "--name", "c",
                                 "--local-scheduler"))  # fmt: skip
    job = Task.get(Task.task_name == "Sleep").slurm_job_id
    assert f"SLURM job {job} submitted for Sleep(name=c" in done.stdout, done.stdout[-3000:]


@pytest.mark.slow
def test_another_users_shared_directory_is_refused_in_one_line(slurm_cluster, sqlite_url, tmp_path):
    """The squeue answers astra shares live in a directory only this user may write: one that others may (made by
    someone else in a shared /tmp, say) could feed false answers, so it is refused."""
    (tmp_path / "tmp" / f"astra-slurm-{os.getuid()}").mkdir(parents=True)
    (tmp_path / "tmp" / f"astra-slurm-{os.getuid()}").chmod(0o777)
    done = run_luigi(*slurm_args(tmp_path / "logs", "--module", "tests.slurm_tasks", "Sleep", "--name", "u",
                                 "--local-scheduler"), env={"TMPDIR": str(tmp_path / "tmp")})  # fmt: skip
    task = Task.get(Task.task_name == "Sleep")
    assert task.status == "failed" and "is not a directory only you can use; remove it" in task.error, done.stdout
