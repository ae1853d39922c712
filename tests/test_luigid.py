"""The central scheduler: a real luigid, two luigi processes as two machines, one PostgreSQL database."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from astra.database import Task
from tests.test_claims import background, free_port, postgres_url, wait_for  # noqa: F401 -- postgres_url is a fixture
from workflows.spectra import simulate

LUIGID = str(Path(sys.executable).with_name("luigid"))


class Luigid:
    """A luigid on a free loopback port with its own state file and log directory."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = directory / "state.pickle"
        self.logdir = directory / "logs"
        self.logdir.mkdir(parents=True)
        command = [LUIGID, "--address", "127.0.0.1", "--port", str(self.port)]
        command += ["--state-path", str(self.state), "--logdir", str(self.logdir)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        # What a user writes to use this luigid (the repository's luigi.cfg picks the local scheduler).
        self.client_config = directory / "client.cfg"
        self.client_config.write_text(
            f"[core]\nlocal_scheduler = false\nscheduler_host = 127.0.0.1\nscheduler_port = {self.port}\n"
        )
        wait_for(self._answers, timeout=30, what=f"luigid on port {self.port}")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"luigid exited with {self.process.returncode}: {self.log()}")
        try:
            self.api("task_list", status="DONE")
        except OSError:
            return False
        return True

    def api(self, method: str, **data: object) -> object:
        """``GET /api/<method>?data=<json>``, as the dashboard does; the response."""
        with urllib.request.urlopen(f"{self.url}/api/{method}?data={quote(json.dumps(data))}", timeout=10) as answer:
            return json.load(answer)["response"]

    def worker_args(self) -> list[str]:
        return ["--scheduler-host", "127.0.0.1", "--scheduler-port", str(self.port)]

    def log(self) -> str:
        path = self.logdir / "luigi-server.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> int:
        """Stop luigid as an operator would (SIGTERM): it saves its state and exits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def luigid(tmp_path, monkeypatch) -> Iterator[Luigid]:
    """A luigid, and $LUIGI_CONFIG_PATH naming a config that uses it for every luigi command the test starts."""
    server = Luigid(tmp_path / "luigid")
    monkeypatch.setenv("LUIGI_CONFIG_PATH", str(server.client_config))
    try:
        yield server
    finally:
        server.stop()


def ran_successfully(output: str) -> int:
    summary = output.split("===== Luigi Execution Summary =====")[1]
    found = re.search(r"\* (\d+) ran successfully", summary)
    return int(found.group(1)) if found else 0


def test_two_machines_share_one_luigid_and_every_task_runs_once(postgres_url, luigid, tmp_path):  # noqa: F811
    simulate(tmp_path / "spectra", count=20, seed=11)
    args = ["--module", "workflows", "SummariseSNR", "--spectra-dir", str(tmp_path / "spectra"), "--workers", "2"]
    args += luigid.worker_args()
    machines = [
        ([*args, "--worker-id", name], tmp_path / f"{name}.out", {"ASTRA_DATABASE_URL": postgres_url})
        for name in ("machine-a", "machine-b")
    ]
    with background(*machines) as workers:
        for worker in workers:
            assert worker.wait() == 0, worker.text()
    outputs = [worker.text() for worker in workers]

    rows = list(Task.select())
    assert len(rows) == 21  # 20 EstimateSNR and one SummariseSNR
    assert {(row.status, row.attempts) for row in rows} == {("done", 1)}
    assert sum(ran_successfully(output) for output in outputs) == 21, outputs

    done = luigid.api("task_list", status="DONE")
    assert {row.task_id for row in rows} <= set(done)
    assert sum(task_id.startswith("SpectrumFile_") for task_id in done) == 20
    assert {done[row.task_id]["name"] for row in rows} == {"EstimateSNR", "SummariseSNR"}
    assert all(set(done[row.task_id]["workers"]) & {"machine-a", "machine-b"} for row in rows)

    assert luigid.stop() == 0
    assert "Saved state in" in luigid.log() and luigid.state.exists()
