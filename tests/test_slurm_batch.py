"""Batches as SLURM job arrays, and pilot workers (an array of luigi processes), on a real cluster."""

from __future__ import annotations

import subprocess
import sys

import pytest

from astra.database import Task, records
from tests.helpers import (
    REPO,
    astra,
    background,
    jobs_of,
    result_of,
    run_luigi,
    scontrol,
    slurm_args,
    subprocess_env,
    summary,
    wait_for,
)
from workflows.spectra import simulate

pytestmark = pytest.mark.slurm


@pytest.mark.slow
def test_batch_runs_as_an_array_of_shares_and_a_rerun_submits_only_unfinished_shares(
    slurm_cluster,
    postgres_url,
    luigid,
    tmp_path,
):
    spectra = tmp_path / "spectra"
    simulate(spectra, count=9, seed=2)
    logs = tmp_path / "logs"
    server = luigid
    args = slurm_args(logs, "--module", "workflows", "EstimateSNRBatch", "--spectra-dir", str(spectra))
    args += ["--jobs", "3", *server.worker_args()]
    try:
        first = run_luigi(*args)
        assert "1 ran successfully" in first.stdout, first.stdout[-3000:]
        (batch_id,) = server.api("task_list", status="DONE")
        progress = server.api("get_task_status_message", task_id=batch_id)["statusMessage"]
    finally:
        server.stop()
    elements = jobs_of(logs)
    array = {job.split("_")[0] for job in elements}
    assert len(array) == 1 and sorted(job.split("_")[1] for job in elements) == ["0", "1", "2"]
    assert "9 of 9 items done" in progress, progress
    items = list(Task.select())
    assert len(items) == 9 and {item.status for item in items} == {"done"}
    assert {item.task_name for item in items} == {"EstimateSNR"}

    again = run_luigi(*slurm_args(logs, "--module", "workflows", "EstimateSNRBatch", "--spectra-dir", str(spectra),
                                  "--jobs", "3", "--local-scheduler"))  # fmt: skip
    assert "1 complete ones were encountered" in again.stdout and jobs_of(logs) == elements

    # Forget one item: only its share is submitted again, and only that item is recorded again.
    forgotten = items[4]
    Task.delete().where(Task.pk == forgotten.pk).execute()
    third = run_luigi(*slurm_args(logs, "--module", "workflows", "EstimateSNRBatch", "--spectra-dir", str(spectra),
                                  "--jobs", "3", "--local-scheduler"))  # fmt: skip
    assert "1 ran successfully" in third.stdout, third.stdout[-3000:]
    new = sorted(set(jobs_of(logs)) - set(elements))
    assert len(new) == 1, new
    assert Task.select().where(Task.status == "done").count() == 9
    assert {item.pk for item in Task.select()} - {item.pk for item in items} == {
        Task.get(Task.task_hash == forgotten.task_hash).pk
    }


@pytest.mark.slow
def test_pilot_array_of_luigi_workers_runs_each_task_once(slurm_cluster, postgres_url, luigid, tmp_path):
    spectra = tmp_path / "spectra"
    simulate(spectra, count=8, seed=4)
    server = luigid  # and $LUIGI_CONFIG_PATH names a config that uses it, which the pilots inherit
    env = subprocess_env(
        {"ASTRA_SCHEDULER": f"127.0.0.1:{server.port}", "ASTRA_WORKERS": "2", "ASTRA_PYTHON": sys.executable}
    )
    command = ["sbatch", "--parsable", "--array=0-1", f"--output={tmp_path}/pilot-%A_%a.out"]
    command += [str(REPO / "scripts" / "pilot.sbatch"), "--module", "workflows", "SummariseSNR"]
    command += ["--spectra-dir", str(spectra)]
    try:
        job = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

        def finished() -> bool:
            states = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
            return states.count("JobState=COMPLETED") == 2 or "FAILED" in states or "CANCELLED" in states

        wait_for(finished, timeout=240, what=f"pilot array {job}")
        done = server.api("task_list", status="DONE")
    finally:
        server.stop()
    outputs = "\n".join(path.read_text() for path in sorted(tmp_path.glob("pilot-*.out")))
    assert scontrol(f"{job}_0").get("JobState") == "COMPLETED", outputs[-4000:]
    assert scontrol(f"{job}_1").get("JobState") == "COMPLETED", outputs[-4000:]
    assert outputs.count("pilot ") == 2
    tasks = list(Task.select())
    assert len(tasks) == 9 and {task.status for task in tasks} == {"done"}
    assert {task.attempts for task in tasks} == {1}  # every task ran once, whichever element reached it
    assert not any(task.slurm_job_id for task in tasks)  # run inside the pilots, not as jobs of their own
    assert result_of(Task.get(Task.task_name == "SummariseSNR"))["n_spectra"] == 8
    assert any(task_id.startswith("SummariseSNR") for task_id in done)


def test_a_batch_array_works_the_items_with_the_values_given_on_the_luigi_command_line(
    slurm_cluster, postgres_url, tmp_path
):
    """``--MeasureStar-band r`` sets the items' band in the array's jobs too, as in the luigi process that submits
    them: a job is a new interpreter, which does not see the luigi command line unless it is told."""
    from tests.batch_tasks import MeasureStar

    args = slurm_args(tmp_path / "logs", "--module", "tests.batch_pool_tasks", "Stars", "--stars", "3", "--jobs", "1")
    ran = run_luigi(*args, "--MeasureStar-band", "r", "--local-scheduler")
    assert ran.returncode == 0, ran.stdout[-3000:]
    assert [MeasureStar(star=star, band="r").complete() for star in range(3)] == [True] * 3
    assert [MeasureStar(star=star).complete() for star in range(3)] == [False] * 3  # the default band, "g"


def test_a_batch_array_works_the_items_with_the_configuration_a_script_set(slurm_cluster, postgres_url, tmp_path):
    """A script that sets luigi's configuration in memory (``[MeasureStar] band = r``) and submits a batch array: the
    jobs must work the items with it, as the submitting process identifies them."""
    from tests.batch_tasks import MeasureStar

    script = f"""
import luigi
from tests.batch_pool_tasks import Stars
config = luigi.configuration.get_config()
for section, option, value in [("MeasureStar", "band", "r"), ("astra", "executor", "slurm"),
                               ("slurm", "log_dir", {str(tmp_path / "logs")!r}), ("slurm", "poll", "0.2"),
                               ("slurm", "poll_max", "2")]:
    config.set(section, option, value)
assert luigi.build([Stars(stars=3, jobs=1)], local_scheduler=True)
"""
    ran = subprocess.run(
        [sys.executable, "-c", script], env=subprocess_env({"ASTRA_DATABASE_URL": postgres_url}), cwd=REPO,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert [MeasureStar(star=star, band="r").complete() for star in range(3)] == [True] * 3
    assert [MeasureStar(star=star).complete() for star in range(3)] == [False] * 3  # the default band, "g"


@pytest.mark.slow
def test_an_array_works_the_items_beside_one_without_an_identity(slurm_cluster, postgres_url, tmp_path):
    from tests.batch_tasks import Calibrated

    args = ["--module", "tests.batch_tasks", "CalibratedBatch", "--numbers", "[0, 1, 2, 3]", "--broken", "1"]
    run = run_luigi(*slurm_args(tmp_path / "logs", *args, "--jobs", "2", "--local-scheduler"))
    assert run.returncode == 30, run.stdout[-3000:]
    assert "1 item has no identity (not run, not recorded); first: cannot identify Calibrated(n=1)" in run.stdout
    assert "Traceback" not in run.stdout, run.stdout[-3000:]
    done = {row.task_id for row in Task.select().where(Task.status == "done")}
    assert done == {Calibrated(n=n).task_id for n in [0, 2, 3]} and Task.select().count() == 3


def test_an_array_keeps_each_chain_of_items_in_one_share(slurm_cluster, postgres_url, tmp_path):
    """Each star's nights need the night before; before, the shares took every other item, so a night whose night
    before another share had not recorded yet failed, and each link took a run of its own."""
    args = ["--module", "tests.batch_tasks", "StarNights", "--stars", "3", "--nights", "4", "--jobs", "2"]
    run = run_luigi(*slurm_args(tmp_path / "logs", *args, "--local-scheduler"))
    assert run.returncode == 0, run.stdout[-3000:]
    rows = list(Task.select())
    assert len(rows) == 12 and {row.status for row in rows} == {"done"}
    parameters = records.parameters_of([row.pk for row in rows])
    jobs = {}
    for row in rows:
        jobs.setdefault(row.slurm_job_id, set()).add(int(parameters[row.pk]["star"]))
    assert sorted(map(sorted, jobs.values())) == [[0, 2], [1]], jobs


def test_an_array_whose_parameter_sets_change_under_it_fails_saying_so(slurm_cluster, postgres_url, tmp_path):
    """Inside the elements, the first parameter set is gone: each share's items are not those the luigi process
    split. Before, the elements worked what they found, star 0 by none of them, and luigi said the batch ran
    successfully."""
    args = ["--module", "tests.batch_tasks", "DriftingNights", "--stars", "4", "--drift", "drop", "--jobs", "2"]
    run = run_luigi(*slurm_args(tmp_path / "logs", *args, "--local-scheduler"))
    assert run.returncode != 0 and "ran successfully" not in summary(run.stdout), run.stdout[-3000:]
    assert "not those the luigi process split into shares" in run.stdout, run.stdout[-3000:]
    assert Task.select().count() == 0


@pytest.mark.slow
def test_items_forgotten_while_an_array_runs_fail_the_batch_saying_so(slurm_cluster, postgres_url, tmp_path):
    """Every element ended COMPLETED, but an item the first share recorded was forgotten before the second ended:
    luigi said "ran successfully" and astra that luigi left the batch pending (exit 25). Now the batch fails (exit
    30) with the count, and a rerun makes the item again."""
    tally = tmp_path / "tally"
    tally.mkdir()
    tallies = ["--module", "tests.slurm_tasks", "Tallies", "--n", "6", "--tally-dir", str(tally), "--seconds", "1"]
    args = slurm_args(tmp_path / "logs", *tallies, "--jobs", "2", "--slurm-max-running", "1", "--local-scheduler")
    done = Task.select().where(Task.task_name == "Tally", Task.status == "done")
    with background((args, tmp_path / "array.out")) as (array,):
        wait_for(lambda: done.count() >= 3, timeout=180, what="the first share's items recorded")
        forgot = astra("tasks", "forget", "--name", "Tally", "--where", "name=t0", "--yes")
        assert forgot.returncode == 0, forgot.stderr
        assert array.wait(timeout=300) == 30, array.text()
    output = array.text()
    assert "1 of the 6 items the SLURM array" in output and "although every element ended COMPLETED" in output
    assert "ran successfully" not in summary(output), output
    assert done.count() == 5

    again = run_luigi(*args)
    assert "1 ran successfully" in summary(again.stdout), again.stdout[-3000:]
    assert done.count() == 6 and (tally / "t0").read_text().count("\n") == 2  # t0 made again, the others once
    assert all((tally / f"t{i}").read_text().count("\n") == 1 for i in range(1, 6))
