"""Progress: what a long task reports with ``progress()`` shows in luigid's dashboard (its JSON API)."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import time

import pytest

from astra.database import Task
from tests.helpers import LUIGI, REPO, background, subprocess_env, wait_for
from tests.progress_tasks import Crunch, SlowBatch


@pytest.mark.slow
def test_progress_shows_in_luigid(postgres_url, luigid, tmp_path):
    release = tmp_path / "release"
    args = ["--module", "tests.progress_tasks", "Crunch", "--release", str(release), *luigid.worker_args()]
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


@pytest.mark.slow
@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_batch_reports_progress_to_luigid_while_it_works(postgres_url, luigid, tmp_path, processes):
    args = ["--module", "tests.progress_tasks", "SlowBatch", "--run-id", "luigid", *luigid.worker_args()]
    args += ["--processes", processes]  # a pool reports as its parts come back
    task_id = SlowBatch(run_id="luigid").task_id
    seen: list[tuple[float, str]] = []  # (when, status message) each time luigid shows a new one
    with background((args, tmp_path / "batch.out", {"ASTRA_DATABASE_URL": postgres_url})) as (batch,):
        while batch.process.poll() is None:
            info = luigid.api("task_list", status="RUNNING").get(task_id)
            if info and info["status_message"] and (not seen or seen[-1][1] != info["status_message"]):
                seen.append((time.monotonic(), info["status_message"]))
            time.sleep(0.1)
        assert batch.wait() == 0, batch.text()
    # 300 items of 0.03 s: about 9 s of work in one chunk of 1,000. At least every 2 s of work a new report.
    assert len(seen) >= 4, seen
    assert seen[0][1].endswith("items done or tried, 0 failed") and not seen[0][1].startswith("300 of")
    done = [int(message.split()[0]) for _, message in seen]
    assert done == sorted(done) and done[0] < 300
    assert "items/s" not in batch.text()  # no terminal: no progress lines in the log
    final = luigid.api("task_list", status="DONE")[task_id]
    assert (final["status_message"], final["progress_percentage"]) == ("300 of 300 items done or tried, 0 failed", 100)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])  # the log line does not depend on the database
def test_a_batch_in_a_terminal_logs_its_rate_and_time_left(database_url, tmp_path):
    """stderr is a terminal (a pseudo-terminal here): a line with items done, rate and time left, every log_seconds."""
    args = ["--module", "tests.progress_tasks", "SlowBatch", "--run-id", "tty", "--count", "100", "--log-seconds", "1"]
    env = subprocess_env({"ASTRA_DATABASE_URL": database_url})
    leader, follower = pty.openpty()
    process = subprocess.Popen([LUIGI, *args, "--local-scheduler"], stdin=follower, stdout=follower, stderr=follower,
                               cwd=REPO, env=env, close_fds=True)  # fmt: skip
    os.close(follower)
    output = b""
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the pseudo-terminal closed: luigi has exited
            break
        if not data:
            break
        output += data
    os.close(leader)
    assert process.wait(timeout=60) == 0, output.decode(errors="replace")
    text = output.decode(errors="replace")
    line = r"SlowBatch\S*: (\d+) of 100 items done or tried \(0 failed\), ([\d.]+) items/s, about (\S+) left"
    lines = re.findall(line, text)
    assert len(lines) >= 2, text
    assert all(0 < int(done) <= 100 and float(rate) > 0 for done, rate, _ in lines), lines
    assert int(lines[0][0]) < 100, lines  # while it works, not only at the end
