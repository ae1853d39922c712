"""No secret of the user's leaves in the clear when tasks run as SLURM jobs: not on any command line (``ps`` shows
every process's to every user of a node), not in the job script, not in the job's logs or any file astra writes."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from astra.database import Task
from tests.helpers import background, jobs_of, slurm_args, wait_for, with_password

pytestmark = pytest.mark.slurm

PASSWORD = "pw-s3cret-abc"  # in ASTRA_DATABASE_URL (trust authentication ignores it)
CONFIG_SECRET = "s3cret-xyz"  # in luigi.cfg, in a section astra knows nothing about


class CommandLines:
    """Every process's command line (``ps -eo args``), sampled until stopped."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["ps", "-ewwo", "args"], capture_output=True, text=True).stdout
            self.seen.update(out.splitlines())
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def test_no_secret_on_command_lines_in_job_scripts_or_files(slurm_cluster, postgres_url, tmp_path):
    url = with_password(postgres_url, PASSWORD)
    config = tmp_path / "secret.cfg"
    config.write_text(f"[some_section]\npassword = {CONFIG_SECRET}\n")
    env = {"ASTRA_DATABASE_URL": url, "LUIGI_CONFIG_PATH": str(config)}
    logs = tmp_path / "logs"
    task = slurm_args(logs, "--module", "tests.slurm_tasks", "Sleep", "--name", "s", "--seconds", "3")
    batch = slurm_args(logs, "--module", "tests.slurm_tasks", "Leaves", "--n", "4", "--jobs", "2")
    scripts, jobs_shown = [], []
    sampler = CommandLines()
    try:
        with background(
            (task + ["--local-scheduler"], tmp_path / "task.log", env),
            (batch + ["--local-scheduler"], tmp_path / "batch.log", env),
        ) as runs:
            job = wait_for(
                lambda: Task.select().where(Task.task_name == "Sleep", Task.slurm_node.is_null(False)).first(),
                timeout=90,
                what="the Sleep job to run",
            ).slurm_job_id
            for job_id in [job, *(j.split("_")[0] for j in jobs_of(logs))]:
                script = subprocess.run(["scontrol", "write", "batch_script", job_id, "-"], capture_output=True)
                scripts.append(script.stdout.decode(errors="replace"))
                shown = subprocess.run(["scontrol", "show", "job", "-dd", job_id], capture_output=True, text=True)
                jobs_shown.append(shown.stdout)
            for run in runs:
                assert run.wait(timeout=180) == 0, run.text()[-3000:]
                assert "ran successfully" in run.text(), run.text()[-3000:]
    finally:
        sampler.stop()
    assert Task.select().where(Task.status == "done").count() == 5  # Sleep and 4 Leaf items
    # The sampler saw the jobs' own Python processes.
    assert any("astra" in line and "main" in line for line in sampler.seen), sorted(sampler.seen)
    assert scripts and all("#!/bin/sh" in script for script in scripts), scripts
    for secret in (PASSWORD, CONFIG_SECRET):
        assert not [line for line in sampler.seen if secret in line]
        assert not [script for script in scripts if secret in script], scripts
        assert not [shown for shown in jobs_shown if secret in shown]
        written = [path for path in tmp_path.rglob("*") if path.is_file() and path != config]
        assert written and not [path for path in written if secret in path.read_text(errors="replace")]
    # astra leaves no file of its own behind in the log directory: only each job's stdout and stderr.
    assert {path.suffix for path in logs.iterdir()} == {".out", ".err"}
