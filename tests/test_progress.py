"""Progress: what a long task reports with ``progress()`` shows in luigid's dashboard (its JSON API)."""

from __future__ import annotations

import os

import luigi

import astra
from astra.database import Task
from tests.test_claims import background, postgres_url, wait_for  # noqa: F401 -- postgres_url is a fixture
from tests.test_luigid import luigid  # noqa: F401 -- a fixture


class Crunch(astra.BaseTask):
    """Works through ``steps`` items, stopping halfway until the file ``release`` exists."""

    steps = luigi.IntParameter(default=4)
    release = luigi.Parameter(significant=False)

    def run(self) -> dict:
        for step in range(self.steps):
            self.progress(step, self.steps, "spectra")
            if step == self.steps // 2:
                wait_for(lambda: os.path.exists(self.release), timeout=60, what="the release file")
        self.progress(self.steps, self.steps, "spectra")
        return {"steps": self.steps}


def test_progress_shows_in_luigid(postgres_url, luigid, tmp_path):  # noqa: F811 -- fixtures
    release = tmp_path / "release"
    args = ["--module", "tests.test_progress", "Crunch", "--release", str(release), *luigid.worker_args()]
    task_id = Crunch(release=str(release)).task_id

    def running() -> dict | None:
        info = luigid.api("task_list", status="RUNNING").get(task_id)
        return info if info and info["status_message"] == "2/4 spectra" else None

    with background((args, tmp_path / "crunch.out", {"ASTRA_DATABASE_URL": postgres_url})) as (crunch,):
        info = wait_for(running, what="luigid to show the task halfway")
        assert info["progress_percentage"] == 50
        assert luigid.api("get_task_status_message", task_id=task_id)["statusMessage"] == "2/4 spectra"
        release.touch()
        assert crunch.wait() == 0, crunch.text()

    done = luigid.api("task_list", status="DONE")[task_id]
    assert (done["status_message"], done["progress_percentage"]) == ("4/4 spectra", 100)
    assert Task.get(Task.task_id == task_id).status == "done"


def test_progress_outside_a_worker_does_nothing():
    task = Crunch(release="unused")
    task.progress(1, 2, "spectra")  # no scheduler to tell: must not fail
    assert task.set_status_message is None and task.set_progress_percentage is None
