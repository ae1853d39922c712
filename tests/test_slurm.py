"""The SLURM executor against a real single-node cluster (scripts/slurm-local): each task one job, exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from astra.database import Task
from tests.helpers import (
    Relay,
    astra,
    background,
    jobs_of,
    result_of,
    run_luigi,
    scontrol,
    slurm_args,
    start_later,
    wait_for,
)
from workflows.spectra import simulate

pytestmark = pytest.mark.slurm


def row(**where) -> Task:
    query = Task.select()
    for key, value in where.items():
        query = query.where(getattr(Task, key) == value)
    return query.get()


def astra_cli(*args: str) -> str:
    done = astra(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_example_dag_runs_one_job_per_task_and_a_rerun_submits_nothing(slurm_cluster, postgres_url, tmp_path):
    spectra = tmp_path / "spectra"
    simulate(spectra, count=12, seed=5)
    logs = tmp_path / "logs"
    args = slurm_args(logs, "--module", "workflows", "SummariseSNR", "--spectra-dir", str(spectra))
    args += ["--workers", "4", "--local-scheduler"]
    first = run_luigi(*args)
    assert "13 ran successfully" in first.stdout, first.stdout[-3000:]

    tasks = list(Task.select())
    assert len(tasks) == 13 and {task.status for task in tasks} == {"done"}
    jobs = jobs_of(logs)
    # One job per task, each recorded with its own task, on the cluster's node.
    assert sorted(task.slurm_job_id for task in tasks) == sorted(jobs)
    for task in tasks:
        assert jobs[task.slurm_job_id].startswith(task.task_name)
        assert task.slurm_node == slurm_cluster
        assert task.attempts == 1 and task.duration is not None
    summary = row(task_name="SummariseSNR")
    assert result_of(summary)["n_spectra"] == 12

    shown = astra_cli("tasks", "show", str(summary.pk))
    assert f"SLURM job {summary.slurm_job_id} on {slurm_cluster}" in shown
    assert json.loads(astra_cli("tasks", "show", str(summary.pk), "--json"))["slurm_job_id"] == summary.slurm_job_id

    again = run_luigi(*args)
    assert "1 complete ones were encountered" in again.stdout, again.stdout[-3000:]
    assert jobs_of(logs) == jobs  # nothing submitted


@pytest.mark.slow
def test_result_and_records_match_a_local_run(slurm_cluster, database_url, tmp_path):
    logs = tmp_path / "logs"
    done = run_luigi(*slurm_args(logs, "--module", "tests.example_tasks", "Node", "--n", "2", "--local-scheduler"))
    assert "3 ran successfully" in done.stdout, done.stdout[-3000:]
    node = row(task_name="Node")
    assert result_of(node) == {"total": 1}
    assert node.slurm_job_id in jobs_of(logs) and node.slurm_node == slurm_cluster
    # The dependency edges are recorded by the job, as a local run records them.
    assert {edge.requires.task_name for edge in node.dependencies} == {"Leaf"}


@pytest.mark.slow
def test_a_class_can_choose_slurm_and_its_own_job_settings(slurm_cluster, sqlite_url, tmp_path):
    logs = tmp_path / "logs"
    # No --astra-executor: the class says executor = "slurm".
    args = ["--module", "tests.slurm_tasks", "AlwaysSlurm", "--i", "1", "--slurm-log-dir", str(logs)]
    done = run_luigi(*args, "--local-scheduler")
    assert "1 ran successfully" in done.stdout, done.stdout[-3000:]
    task = row(task_name="AlwaysSlurm")
    assert result_of(task) == {"job": task.slurm_job_id, "node": slurm_cluster}
    job = scontrol(task.slurm_job_id)
    assert job["TimeLimit"] == "00:05:00"  # slurm_time = "5"
    assert (
        "astra-class-setting"
        in subprocess.run(["scontrol", "show", "job", task.slurm_job_id], capture_output=True, text=True).stdout
    )


@pytest.mark.slow(80)
def test_failures_leave_the_task_failed_with_the_slurm_state_and_a_rerun_runs_it(slurm_cluster, postgres_url, tmp_path):
    logs = tmp_path / "logs"
    # A time limit is counted in whole minutes and checked every 30 s: start that one first, check it last.
    with background(
        (
            slurm_args(logs, "--module", "tests.slurm_tasks", "OneMinute", "--name", "t", "--local-scheduler"),
            tmp_path / "timeout.log",
        ),
    ) as (timing_out,):
        # A job that exits non-zero: failed, with the exit code and its stderr tail.
        bad = run_luigi(
            *slurm_args(logs, "--module", "tests.slurm_tasks", "ExitsBadly", "--name", "x", "--local-scheduler")
        )
        task = row(task_name="ExitsBadly")
        assert task.status == "failed", bad.stdout[-3000:]
        assert f"SLURM job {task.slurm_job_id} FAILED (exit code 7:0) on {slurm_cluster}" in task.error
        assert "disk quota exceeded" in task.error

        # An exception in run(): the job records it, the worker adds what SLURM says.
        run_luigi(*slurm_args(logs, "--module", "tests.slurm_tasks", "Raises", "--name", "r", "--local-scheduler"))
        task = row(task_name="Raises")
        assert task.status == "failed" and "FAILED (exit code 1:0)" in task.error
        assert "ValueError: no lines found in r" in task.error

        # Over its memory (the class asks for 200 MB and takes 1 GB): failed with OUT_OF_MEMORY.
        run_luigi(*slurm_args(logs, "--module", "tests.slurm_tasks", "Greedy", "--name", "g", "--local-scheduler"))
        task = row(task_name="Greedy")
        assert task.status == "failed" and f"SLURM job {task.slurm_job_id} OUT_OF_MEMORY" in task.error

        # scancel while it runs: failed with CANCELLED; the next invocation submits it again and it is done.
        args = slurm_args(logs, "--module", "tests.slurm_tasks", "Sleep", "--name", "c", "--local-scheduler")
        with background((args + ["--seconds", "120"], tmp_path / "cancel.log")) as (sleeping,):
            job = wait_for(lambda: _running_job("Sleep"), timeout=90, what="the Sleep job to run")
            subprocess.run(["scancel", job], check=True)
            sleeping.wait(timeout=60)
        task = row(task_name="Sleep")
        assert task.status == "failed" and f"SLURM job {job} CANCELLED" in task.error, sleeping.text()[-3000:]
        rerun = run_luigi(*args, "--seconds", "0")
        assert "1 ran successfully" in rerun.stdout, rerun.stdout[-3000:]
        task = row(task_name="Sleep")
        assert task.status == "done" and task.attempts == 2 and task.slurm_job_id != job

        timing_out.wait(timeout=240)
    task = row(task_name="OneMinute")
    assert task.status == "failed" and f"SLURM job {task.slurm_job_id} TIMEOUT" in task.error, timing_out.text()[-3000:]


def _running_job(name: str) -> str | None:
    """The job running task ``name``, once it has taken the claim over (its Python is up and holds the row)."""
    task = Task.select().where(Task.task_name == name).first()
    if task is None or not task.slurm_job_id or not task.slurm_node:
        return None
    return task.slurm_job_id if scontrol(task.slurm_job_id).get("JobState") == "RUNNING" else None


@pytest.mark.slow
def test_two_luigi_processes_on_one_dag_run_each_task_as_one_job(slurm_cluster, postgres_url, tmp_path):
    logs = tmp_path / "logs"
    args = slurm_args(
        logs, "--module", "tests.example_tasks", "Node", "--n", "6", "--workers", "3", "--local-scheduler", "--no-lock"
    )
    with background((args, tmp_path / "a.log"), (args, tmp_path / "b.log")) as runs:
        for run in runs:
            assert run.wait(timeout=300) == 0, run.text()[-3000:]
    tasks = list(Task.select())
    assert len(tasks) == 7 and {task.status for task in tasks} == {"done"}
    assert {task.attempts for task in tasks} == {1}
    jobs = jobs_of(logs)
    assert len(jobs) == 7 and sorted(jobs) == sorted(task.slurm_job_id for task in tasks)


@pytest.mark.slow
def test_killed_luigi_process_leaves_the_job_to_record_its_result_once(slurm_cluster, database_url, tmp_path):
    logs = tmp_path / "logs"
    args = slurm_args(logs, "--module", "tests.slurm_tasks", "Sleep", "--name", "k", "--local-scheduler")
    with background((args + ["--seconds", "6"], tmp_path / "killed.log")) as (first,):
        job = wait_for(lambda: _running_job("Sleep"), timeout=90, what="the Sleep job to run")
        os.kill(first.pid, signal.SIGKILL)  # the luigi process only: the job runs on, under slurmd
        first.wait(timeout=30)
    # A second luigi process must neither run the task nor take it over while the job lives: it waits for it.
    second = run_luigi(*args, "--seconds", "0")
    assert "1 ran successfully" in second.stdout or "complete ones were encountered" in second.stdout, second.stdout
    task = row(task_name="Sleep")
    assert task.status == "done" and task.attempts == 1 and task.slurm_job_id == job
    assert result_of(task) == {"slept": 6.0, "job": job}  # the first job's result, recorded once
    assert list(jobs_of(logs)) == [job]


@pytest.mark.slow
@pytest.mark.parametrize("workers, ctrl_c", [("1", False), ("2", False), ("2", True)])
def test_sigterm_or_ctrl_c_cancels_the_jobs_and_records_the_tasks_failed(
    slurm_cluster, sqlite_url, tmp_path, workers, ctrl_c
):
    logs = tmp_path / "logs"
    args = slurm_args(logs, "--module", "tests.slurm_tasks", "Sleep", "--name", "s", "--seconds", "120")
    with background((args + ["--workers", workers, "--local-scheduler"], tmp_path / "term.log")) as (luigi,):
        job = wait_for(lambda: _running_job("Sleep"), timeout=90, what="the Sleep job to run")
        if ctrl_c:
            luigi.signal(signal.SIGINT)  # as Ctrl-C in a terminal: to the whole process group
        else:
            os.kill(luigi.pid, signal.SIGTERM)  # the luigi process only, as `kill PID` would
        wait_for(lambda: scontrol(job).get("JobState") == "CANCELLED", timeout=60, what=f"job {job} cancelled")
        wait_for(lambda: row(task_name="Sleep").status == "failed", timeout=60, what="the task recorded failed")
    task = row(task_name="Sleep")
    assert f"SLURM job {job} cancelled: the luigi process was interrupted" in task.error


@pytest.mark.slow
def test_dashboard_says_pending_then_running_on_the_node(slurm_cluster, sqlite_url, luigid, tmp_path):
    logs = tmp_path / "logs"
    args = slurm_args(logs, "--module", "tests.slurm_tasks", "Sleep", "--name", "d", "--seconds", "4")
    args += ["--slurm-sbatch-args=--hold", *luigid.worker_args()]  # pending until the test releases it
    seen = []

    def message(wanted: str) -> bool:
        running = luigid.api("task_list", status="RUNNING")
        for task_id in running:
            said = luigid.api("get_task_status_message", task_id=task_id)["statusMessage"]
            if said and said not in seen:
                seen.append(said)
        return any(wanted in said for said in seen)

    with background((args, tmp_path / "d.log")) as (luigi,):
        wait_for(lambda: message("PENDING") or luigi.process.poll() is not None, timeout=60, what="PENDING")
        assert message("PENDING"), luigi.text()[-3000:]
        subprocess.run(["scontrol", "release", row(task_name="Sleep").slurm_job_id], check=True)
        wait_for(lambda: message(f"RUNNING on {slurm_cluster}"), timeout=60, what="a RUNNING message")
        assert luigi.wait(timeout=120) == 0
    job = row(task_name="Sleep").slurm_job_id
    assert f"SLURM job {job} PENDING" in seen and f"SLURM job {job} RUNNING on {slurm_cluster}" in seen, seen


@pytest.mark.slow
@pytest.mark.parametrize("top", ["AboveThreshold", "AboveThresholds"])
def test_a_job_runs_the_task_its_worker_claimed_whose_text_reads_back_otherwise(
    slurm_cluster, sqlite_url, tmp_path, top
):
    """Threshold(cut=2): rebuilt from its text in the job it was Threshold(cut=2.0), another task, which the job
    found no claim of ("no longer claimed ...; not run"); a batch Thresholds(cut=2) had other items than the luigi
    process split into shares ("the batch's parameter sets are not those ..."). Neither ever ran on SLURM."""
    logs = tmp_path / "logs"
    done = run_luigi(*slurm_args(logs, "--module", "tests.slurm_tasks", top, "--local-scheduler"))
    assert "2 ran successfully" in done.stdout, done.stdout[-3000:]
    threshold = row(task_name="Threshold")
    assert threshold.slurm_job_id and result_of(threshold) == {"cut": 2}  # as a local run gives it
    assert result_of(row(task_name=top)) == {"cut": 2}


@pytest.mark.slow
def test_non_astra_tasks_stay_local(slurm_cluster, sqlite_url, tmp_path):
    logs = tmp_path / "logs"
    spectra = tmp_path / "spectra"
    simulate(spectra, count=1, seed=1)
    path = str(next(spectra.glob("*.fits")))
    done = run_luigi(*slurm_args(logs, "--module", "workflows", "SpectrumFile", "--path", path, "--local-scheduler"))
    assert "1 complete ones" in done.stdout and not jobs_of(logs)


@pytest.mark.slow
def test_a_pending_job_whose_luigi_process_died_does_not_run_a_task_taken_over(slurm_cluster, sqlite_url, tmp_path):
    logs = tmp_path / "logs"
    args = slurm_args(logs, "--module", "tests.slurm_tasks", "Sleep", "--name", "p", "--local-scheduler")
    with background((args + ["--seconds", "1", "--slurm-sbatch-args=--hold"], tmp_path / "held.log")) as (first,):
        task = wait_for(lambda: Task.select().where(Task.slurm_job_id.is_null(False)).first(), what="a submitted job")
        job = task.slurm_job_id
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    # Its process is gone, so the next invocation (here a local one) takes the task over and runs it.
    local = run_luigi("--module", "tests.slurm_tasks", "Sleep", "--name", "p", "--seconds", "0", "--local-scheduler")
    assert "1 ran successfully" in local.stdout, local.stdout[-3000:]
    subprocess.run(["scontrol", "release", job], check=True)
    wait_for(lambda: scontrol(job).get("JobState") in ("COMPLETED", "FAILED"), timeout=90, what=f"job {job} to end")
    task = row(task_name="Sleep")
    assert task.status == "done" and task.attempts == 2 and result_of(task)["slept"] == 0.0
    stderr = (logs / f"{jobs_of(logs)[job]}-{job}.err").read_text()
    assert "no longer claimed by an attempt that runs SLURM job" in stderr


@pytest.mark.slow
def test_without_sbatch_the_task_fails_with_one_clear_line(sqlite_url, tmp_path):
    env = {"PATH": f"{tmp_path}:{Path(sys.executable).parent}"}  # no SLURM commands on it
    done = run_luigi(*slurm_args(tmp_path / "logs", "--module", "tests.example_tasks", "Leaf", "--i", "3",
                                 "--local-scheduler"), env=env)  # fmt: skip
    task = row(task_name="Leaf")
    assert task.status == "failed" and task.error.startswith("SlurmJobError: astra: sbatch not found"), done.stdout
    assert "astra: sbatch not found" in done.stdout


@pytest.mark.slow
def test_an_unknown_executor_fails_the_task_with_one_clear_line(sqlite_url):
    done = run_luigi("--module", "tests.example_tasks", "Leaf", "--i", "3", "--astra-executor", "pbs",
                     "--local-scheduler")  # fmt: skip
    task = row(task_name="Leaf")
    assert task.status == "failed", done.stdout
    assert task.error == "ValueError: astra: [astra] executor (or --astra-executor) is 'pbs'; use 'local' or 'slurm'"


@pytest.mark.slow
def test_a_pending_job_keeps_its_claim_past_the_lease(slurm_cluster, sqlite_url, tmp_path):
    logs = tmp_path / "logs"
    args = ["--module", "tests.slurm_tasks", "Sleep", "--name", "l", "--astra-lease", "2", "--local-scheduler"]
    held = slurm_args(logs, *args, "--seconds", "1", "--slurm-sbatch-args=--hold")
    with background((held, tmp_path / "held.log")) as started:
        job = wait_for(lambda: _submitted("Sleep"), timeout=60, what="a submitted job")
        time.sleep(3)  # longer than the lease: the luigi worker's heartbeat keeps the claim while the job pends
        local = start_later(started, [*args, "--seconds", "0"], tmp_path / "local.log")  # another worker, local
        time.sleep(4)
        task = row(task_name="Sleep")
        assert task.status == "running" and task.attempts == 1, local.text()[-3000:]
        subprocess.run(["scontrol", "release", job], check=True)
        assert started[0].wait(timeout=120) == 0 and local.wait(timeout=120) == 0
    task = row(task_name="Sleep")
    assert task.status == "done" and task.attempts == 1 and result_of(task) == {"slept": 1.0, "job": job}


def _submitted(name: str) -> str | None:
    task = Task.select().where(Task.task_name == name, Task.slurm_job_id.is_null(False)).first()
    return task.slurm_job_id if task else None


@pytest.mark.slow
def test_a_job_submitted_from_inside_an_array_element_records_under_its_own_id(slurm_cluster, sqlite_url, tmp_path):
    # A luigi process inside an array element (a pilot's) hands its SLURM_ARRAY_* to the jobs it submits
    # (--export=ALL): a single job must not take them for its own id, find no attempt naming it and not run.
    logs = tmp_path / "logs"
    env = {"SLURM_ARRAY_JOB_ID": "999999", "SLURM_ARRAY_TASK_ID": "0"}
    args = slurm_args(logs, "--module", "tests.slurm_tasks", "Sleep", "--name", "in-array", "--local-scheduler")
    done = run_luigi(*args, env=env)
    assert done.returncode == 0 and "1 ran successfully" in done.stdout, done.stdout[-3000:]
    task = row(task_name="Sleep")
    assert task.status == "done" and task.slurm_job_id in jobs_of(logs)


@pytest.mark.slow
def test_a_misspelt_slurm_setting_fails_the_task_in_one_line_before_any_job(sqlite_url, tmp_path):
    # luigi would only warn (printing the value) and every job would go out without it: to the default partition,
    # with the default memory.
    config = tmp_path / "typo.cfg"
    config.write_text("[core]\nlocal_scheduler = true\n[slurm]\npartiton = gpu\n")
    logs = tmp_path / "logs"
    done = run_luigi(*slurm_args(logs, "--module", "tests.example_tasks", "Leaf", "--i", "3"),
                     env={"LUIGI_CONFIG_PATH": str(config)})  # fmt: skip
    assert done.returncode == 30 and "Traceback" not in done.stdout, done.stdout
    said = f"astra: [slurm] in {config} has 'partiton', which is no astra setting (its '=' missing, or a misspelt"
    assert said in row(task_name="Leaf").error and said in done.stdout
    # A class attribute: slurm_memory for slurm_mem.
    done = run_luigi(*slurm_args(logs, "--module", "tests.slurm_tasks", "MisspeltSlurmSetting", "--name", "m",
                                 "--local-scheduler"))  # fmt: skip
    assert done.returncode == 30 and "Traceback" not in done.stdout, done.stdout
    said = "astra: MisspeltSlurmSetting.slurm_memory is no [slurm] setting (misspelt?); known: slurm_partition, "
    assert said in row(task_name="MisspeltSlurmSetting").error and said in done.stdout
    assert not jobs_of(logs)


@pytest.mark.slow
@pytest.mark.parametrize(
    "task, given, said",
    [
        (["Leaves", "--n", "2"], ["--slurm-jobs", "0"], "astra: [slurm] jobs is 0; it must be more than 0"),
        (["Leaves", "--n", "2", "--jobs", "-2"], [], "astra: Leaves --jobs is -2; it must be 0 ([slurm] jobs) or more"),
        (["Sleep", "--name", "n"], ["--slurm-poll", "-1"], "astra: [slurm] poll is -1.0; it must be more than 0"),
        (["Sleep", "--name", "n"], ["--slurm-poll-max", "0"], "astra: [slurm] poll_max is 0.0; it must be more than 0"),
        (["Sleep", "--name", "n"], ["--slurm-max-running", "-1"], "astra: [slurm] max_running is -1; it must be 0 or"),
        (["Sleep", "--name", "n"], ["--slurm-sbatch-args", "--comment='a b"],
         "astra: [slurm] sbatch_args \"--comment='a b\" cannot be split: No closing quotation"),
        (["Sleep", "--name", "n"], ["--slurm-log-dir", "/proc/astra"],
         "astra: the SLURM log_dir '/proc/astra' cannot be made (No such file or directory); set [slurm] log_dir"),
    ],
)  # fmt: skip
def test_a_slurm_setting_out_of_range_fails_in_one_line_before_any_job(sqlite_url, tmp_path, task, given, said):
    # They divided a batch by zero shares, slept a negative time, or split sbatch's arguments, in a traceback.
    logs = tmp_path / "logs"
    args = slurm_args(logs, "--module", "tests.slurm_tasks", *task, "--local-scheduler")
    done = run_luigi(*args, *given)  # after slurm_args: these win
    assert done.returncode == 30 and said in done.stdout, done.stdout[-3000:]
    assert "Traceback" not in done.stdout, done.stdout  # a batch's too: it has no record to hold one
    assert not logs.exists() or not jobs_of(logs)


@pytest.mark.slow(60)
def test_a_job_runs_on_and_records_its_task_when_the_luigi_process_loses_the_database(
    slurm_cluster, postgres_url, tmp_path
):
    # The luigi process gives up on the database (reconnect_seconds) while the job sleeps: cancelling the job would
    # throw its work away, though it reaches the database itself, as when the luigi process is killed.
    relay = Relay()
    logs = tmp_path / "logs"
    args = slurm_args(logs, "--module", "tests.slurm_tasks", "Sleep", "--name", "d", "--seconds", "15")
    env = {"ASTRA_DATABASE_URL": relay.url(postgres_url)}
    with background((args + ["--astra-reconnect-seconds", "1", "--local-scheduler"], tmp_path / "lost.log", env)) as (
        luigi,
    ):
        job = wait_for(lambda: _running_job("Sleep"), timeout=90, what="the Sleep job to run")
        relay.stop()
        assert luigi.wait(timeout=60) == 30, luigi.text()[-3000:]
        relay = Relay(relay.port)  # the database is back, for the job
        assert f"astra: SLURM jobs {job} of Sleep(name=d) are left to run" in luigi.text(), luigi.text()[-3000:]
        wait_for(lambda: scontrol(job).get("JobState") != "RUNNING", timeout=90, what=f"job {job} to end")
    assert scontrol(job)["JobState"] == "COMPLETED"
    task = row(task_name="Sleep")
    assert task.status == "done" and task.attempts == 1 and result_of(task) == {"slept": 15.0, "job": job}
    relay.stop()
