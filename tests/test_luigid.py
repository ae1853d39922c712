"""The central scheduler: a real luigid, two luigi processes as two machines, one PostgreSQL database."""

from __future__ import annotations

import re

import pytest

from astra.database import Task
from tests.claims_tasks import runners
from tests.helpers import background, start_later, wait_for
from workflows.spectra import simulate


def ran_successfully(output: str) -> int:
    summary = output.split("===== Luigi Execution Summary =====")[1]
    found = re.search(r"\* (\d+) ran successfully", summary)
    return int(found.group(1)) if found else 0


@pytest.mark.slow
def test_two_machines_share_one_luigid_and_every_task_runs_once(postgres_url, luigid, tmp_path):
    simulate(tmp_path / "spectra", count=20, seed=11)
    args = ["--module", "workflows", "SummariseSNR", "--spectra-dir", str(tmp_path / "spectra"), "--workers", "2"]
    args += luigid.worker_args()
    machines = [
        ([*args, "--worker-id", name], tmp_path / f"{name}.out", {"ASTRA_DATABASE_URL": postgres_url})
        for name in ("machine-a", "machine-b")
    ]
    with background(*machines) as workers:
        codes = [worker.wait() for worker in workers]
    outputs = [worker.text() for worker in workers]
    # The machine that ran SummariseSNR exits 0 (luigi would say 25: it counts the other machine's tasks as "not
    # granted run permission"). The other one stops when luigid has nothing left for it; if the DAG was not done
    # then, it exits 10 or 25 ([retcode] already_running, not_run) and says why.
    assert 0 in codes and set(codes) <= {0, 10, 25}, outputs
    for code, output in zip(codes, outputs):
        assert code == 0 or "astra: SummariseSNR(" in output.split("Luigi Execution Summary")[-1], output

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


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])  # what a process keeps in memory, the same on either
def test_an_input_another_process_finished_meanwhile_is_found_done_before_the_task_runs(database_url, luigid, tmp_path):
    """Process A, with one worker, schedules two tasks that need the task ``input``, which luigid says process B is
    running, and runs ``busy`` meanwhile. Asking about the second one's inputs had left a "not done" for ``input``
    that nothing used while scheduling; after B finished, luigi's check of the first task's inputs, just before it
    ran, took that answer: "RuntimeError: Unfulfilled dependency at run time", a traceback, and the task failed."""
    common = [*luigid.worker_args(), "--workers", "1", "--no-lock"]
    input_task = ["Hold", "--name", "input", "--runs-log", str(tmp_path / "input.log")]
    input_task += ["--release", str(tmp_path / "input.release")]
    with background() as started:
        b = start_later(started, ["--module", "tests.claims_tasks", *input_task, *common], tmp_path / "b.out")
        wait_for(lambda: runners(tmp_path, "input"), what="process B to run input")
        a_args = ["--module", "tests.claims_tasks", "SharedInput", "--workdir", str(tmp_path), *common]
        a = start_later(started, a_args, tmp_path / "a.out")
        wait_for(lambda: runners(tmp_path, "busy"), what="process A to run busy")
        (tmp_path / "input.release").touch()
        assert b.wait() == 0, b.text()
        (tmp_path / "busy.release").touch()
        assert a.wait() == 0, a.text()
    assert "Unfulfilled" not in a.text() and "Traceback" not in a.text(), a.text()
    assert ran_successfully(a.text()) == 5  # busy, both NeedsInput, ThroughOneMore, SharedInput
    assert {row.status for row in Task.select()} == {"done"} and Task.select().count() == 5
