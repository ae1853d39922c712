"""What the ``luigi`` command ends with: an exit code and one line that tell the truth, wherever it runs.

Each run here is the real ``luigi`` command, from a directory without luigi.cfg unless the test says otherwise.
"""

from __future__ import annotations

import re

import pytest

from astra import outcome
from astra.database import Task
from tests.faults_tasks import Pause, Pauses, Sluggard, Sluggards
from tests.helpers import REPO, Luigid, astra, background, one_line_error, run_luigi, summary, wait_for

#: The codes astra gives luigi's [retcode] (astra.outcome.EXIT_CODES), as the README documents them.
MISSING_DATA, NOT_RUN, TASK_FAILED = 20, 25, 30


@pytest.fixture(autouse=True)
def no_config_path(monkeypatch):
    monkeypatch.delenv("LUIGI_CONFIG_PATH", raising=False)


def astra_lines(output: str) -> list[str]:
    """The lines astra wrote at the end of a run (after luigi's summary), without luigi's log prefix."""
    after = output.split("===== Luigi Execution Summary =====")[-1]
    return [line.split("astra: ", 1)[1] for line in after.splitlines() if "astra: " in line]


def bad_input(kind: str, tmp_path) -> str:
    path = tmp_path / "spec-bad.fits"
    if kind == "not FITS":
        path.write_text("this is not FITS\n")
    elif kind == "a directory":
        path.mkdir()
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "code", "says"),
    [
        ("not FITS", TASK_FAILED, "spec-bad.fits is not a FITS file: No SIMPLE card found"),
        ("a directory", TASK_FAILED, "spec-bad.fits is a directory, not a spectrum file"),
        ("missing", MISSING_DATA, "its input SpectrumFile(path="),
    ],
)
def test_a_bad_spectrum_path_fails_in_one_line_and_exits_non_zero_without_a_luigi_cfg(
    database_url, tmp_path, kind, code, says
):
    path = bad_input(kind, tmp_path)
    ran = run_luigi("--module", "workflows", "EstimateSNR", "--spectrum-path", path, "--local-scheduler", cwd=tmp_path)
    assert ran.returncode == code, ran.stdout
    assert "Traceback" not in ran.stdout, ran.stdout
    (line,) = astra_lines(ran.stdout)
    assert line.startswith(f"EstimateSNR(spectrum_path={path}) is not done: ") and says in line, line
    if kind == "missing":
        assert not Task.select().exists()
        return
    row = Task.get(Task.task_name == "EstimateSNR")
    assert row.status == "failed" and says in row.error and row.traceback.startswith("Traceback")
    # luigi's own line for the failure says it too, with where the traceback is.
    (failed,) = [entry for entry in ran.stdout.splitlines() if " failed    EstimateSNR(" in entry]
    assert failed.endswith(f"): {row.error} (the traceback: astra tasks show --traceback {row.pk})"), failed
    assert f"(astra tasks show --traceback {row.pk})" in line

    shown, traced = astra("tasks", "show", str(row.pk)), astra("tasks", "show", str(row.pk), "--traceback")
    assert f"error\n  {row.error}\ntraceback\n  astra tasks show --traceback {row.pk}\n" in shown.stdout
    assert "Traceback (most recent call last)" in traced.stdout and "load_spectrum" in traced.stdout


@pytest.mark.slow
def test_a_failed_dependency_exits_non_zero_without_a_luigi_cfg_and_says_which(sqlite_url, tmp_path):
    ran = run_luigi(
        *("--module", "tests.failures_tasks", "AfterFragile", "--name", "r1", "--local-scheduler"),
        env={"FRAGILE_FAILS": "1"},
        cwd=tmp_path,
    )
    assert ran.returncode == TASK_FAILED, ran.stdout
    pk = Task.get(Task.task_name == "Fragile").pk
    assert astra_lines(ran.stdout) == [
        "AfterFragile(name=r1) is not done: Fragile(name=r1) failed with ValueError: calibration of r1 is missing "
        f"(astra tasks show --traceback {pk})"
    ], ran.stdout


@pytest.mark.parametrize("backend", ["sqlite"])  # the judgement does not depend on the database
def test_a_batch_whose_items_take_values_from_the_command_line_is_judged_by_the_tasks_luigi_ran(database_url, tmp_path):
    """``--MeasureStar-band r`` gives the batch's items their band. astra judges the very batch luigi ran, so a done
    batch ends without a line (one made again outside luigi's parser context would have items of band g, which are
    not done); a batch whose item failed still ends with the line, and luigi's code for a failure."""
    args = ["--module", "tests.batch_pool_tasks", "Stars", "--stars", "3", "--MeasureStar-band", "r"]
    args.append("--local-scheduler")
    failed = run_luigi(*args, "--fail-on", "1", cwd=tmp_path)
    assert failed.returncode == TASK_FAILED, failed.stdout
    (line,) = astra_lines(failed.stdout)
    assert line.startswith("Stars(stars=3, fail_on=1) is not done: "), failed.stdout

    done = run_luigi(*args, cwd=tmp_path)
    assert done.returncode == 0 and "1 ran successfully" in summary(done.stdout), done.stdout
    assert astra_lines(done.stdout) == [] and "is not done" not in done.stdout, done.stdout


@pytest.mark.slow
def test_the_users_configuration_still_decides_the_exit_codes(sqlite_url, tmp_path):
    args = ["--module", "tests.failures_tasks", "Fragile", "--name", "r2", "--local-scheduler"]
    (tmp_path / "luigi.cfg").write_text("[retcode]\ntask_failed = 3\n")
    assert run_luigi(*args, env={"FRAGILE_FAILS": "1"}, cwd=tmp_path).returncode == 3
    given = run_luigi(*args, "--retcode-task-failed", "5", env={"FRAGILE_FAILS": "1"}, cwd=tmp_path)
    assert given.returncode == 5, given.stdout
    assert run_luigi(*args, cwd=tmp_path).returncode == 0


def client_config(luigid, tmp_path):
    """The luigid's client configuration, retrying a lost luigid every second for a minute (luigi's default: every
    30 s, 3 times)."""
    config = tmp_path / "client-retrying.cfg"
    config.write_text(luigid.client_config.read_text() + "rpc-retry-wait = 1\nrpc-retry-attempts = 60\n")
    return config


@pytest.mark.slow
def test_a_luigid_restarted_mid_run_ends_the_run_non_zero_saying_so(postgres_url, luigid, tmp_path, monkeypatch):
    monkeypatch.setenv("LUIGI_CONFIG_PATH", str(client_config(luigid, tmp_path)))
    args = ["--module", "tests.faults_tasks", "Pauses", "--n", "30"]
    with background((args, tmp_path / "client.out")) as (client,):
        wait_for(lambda: Task.select().where(Task.status == "done").count() >= 3, timeout=120, what="3 tasks done")
        luigid.kill()
        luigid.start()  # the same port, no state: it never saved any
        assert client.wait(timeout=180) == NOT_RUN, client.text()
    done = Task.select().where(Task.status == "done").count()
    assert done < 31, "the run finished before luigid was killed: nothing was tested"
    (line,) = astra_lines(client.text())
    assert line.startswith(f"Pauses(n=30) is not done: luigid at {luigid.url}/ does not know it any more"), line
    assert f"({31 - done} of the 31 astra tasks it needs are not done)" in line, line

    again = run_luigi(*args, cwd=tmp_path)  # as the line says: run it again
    assert again.returncode == 0 and not astra_lines(again.stdout), again.stdout
    assert Task.select().where(Task.status == "done").count() == 31


def test_a_task_not_done_only_because_others_run_what_it_needs_exits_already_running(sqlite_url):
    """luigi counts the tasks luigid gave other workers as "not granted run permission" (its not_run, 25), and 10 of
    16 clients on one luigid exited 25; the README's code for a task not done while another worker runs what it
    needs is 10 (already_running)."""
    import luigi.retcodes

    from astra import identity, recording
    from astra.database import queries

    needed = Sluggard(i=0, seconds=60.0)
    row = recording.fields(Sluggard, needed.task_id, identity.task_hash(needed), identity.task_version(needed))
    attempt = queries.claim(row, identity.parameters(needed), 60)
    Task.update(host="node-7").where(Task.pk == attempt.pk).execute()  # a worker on another host, within its lease
    codes = luigi.retcodes.retcode()
    before = codes.not_run, codes.already_running
    try:
        (line,) = outcome._judge([Sluggards(n=1, seconds=60.0)])
        assert line.startswith("astra: Sluggards(n=1, seconds=60.0) is not done: 1 still running (Sluggard_0_60"), line
        assert (codes.not_run, codes.already_running) == (10, 10)
    finally:
        codes.not_run, codes.already_running = before


def test_a_task_not_done_because_another_process_saw_what_it_needs_fail_exits_task_failed(sqlite_url):
    """Three luigi processes on one luigid shared a task that failed in one of them: it exited 30, the other two 10
    (luigi: "being run by another worker") and 25 ("not granted run permission"), each saying the same failure,
    with nothing running any more. The records decide: task_failed (30)."""
    import luigi.retcodes

    from astra import identity, recording
    from astra.database import queries

    needed = Sluggard(i=0, seconds=60.0)
    row = recording.fields(Sluggard, needed.task_id, identity.task_hash(needed), identity.task_version(needed))
    attempt = queries.claim(row, identity.parameters(needed), 60)
    assert queries.fail(attempt, "ValueError: broken", "Traceback ...", 0.1)
    codes = luigi.retcodes.retcode()
    before = codes.not_run, codes.already_running
    try:
        (line,) = outcome._judge([Sluggards(n=1, seconds=60.0)])
        assert line.startswith(
            "astra: Sluggards(n=1, seconds=60.0) is not done: Sluggard(i=0, seconds=60.0) failed with"
        ), line
        assert (codes.not_run, codes.already_running) == (TASK_FAILED, TASK_FAILED)
    finally:
        codes.not_run, codes.already_running = before


@pytest.fixture
def patient_luigid(tmp_path, monkeypatch):
    """A luigid that keeps a DONE task done for 10 minutes whatever a worker says (luigi's default: 10 s)."""
    server = Luigid(tmp_path / "luigid", scheduler="stable_done_cooldown_secs = 600")
    monkeypatch.setenv("LUIGI_CONFIG_PATH", str(server.client_config))
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_two_clients_with_two_databases_on_one_luigid(postgres_url, patient_luigid, tmp_path):
    luigid = patient_luigid
    args = ["--module", "tests.faults_tasks", "Pauses", "--n", "3"]
    first = run_luigi(*args, cwd=tmp_path)
    assert first.returncode == 0 and "4 ran successfully" in summary(first.stdout), first.stdout
    # Tasks another worker of this database finished after the end of a run found them not done, and before
    # luigid answered: not "another database" (that was said of 6 in 12 runs of 4 clients on one luigid).
    finished = {task.task_id: task for task in [Pauses(n=3), *(Pause(i=i) for i in range(3))]}
    assert outcome._luigid_view(f"{luigid.url}/", Pauses(n=3), finished) == []
    # Another client, another database: luigid hands it nothing, because it holds every task as done (for its
    # stable_done_cooldown_secs; from then on it would give the tasks to whoever asks, and each client runs them).
    other = f"sqlite:///{tmp_path / 'other.db'}"
    second = run_luigi(*args, env={"ASTRA_DATABASE_URL": other}, cwd=tmp_path)
    assert second.returncode == NOT_RUN, second.stdout
    (line,) = astra_lines(second.stdout)
    assert line.startswith(f"Pauses(n=3) is not done: luigid at {luigid.url}/ holds 4 of them as done ("), line
    assert f"that {other} has no done record of: another luigi client that records to another database" in line
    assert re.search(r"\(4 of the 4 astra tasks it needs are not done\)$", line), line


@pytest.mark.slow
def test_a_task_forgotten_right_after_a_run_through_luigid_is_not_blamed_on_another_database(
    postgres_url, luigid, tmp_path
):
    """Run, forget, run again at once through luigid: luigid holds the forgotten task as done for its
    stable_done_cooldown_secs, so the second run exits 25, and its line said only "another luigi client that records
    to another database shares this luigid", which was not so. It names the forget too, and when to run again."""
    args = ["--module", "tests.faults_tasks", "Pauses", "--n", "1"]
    assert run_luigi(*args, cwd=tmp_path).returncode == 0
    forgot = astra("tasks", "forget", "--name", "Pauses", "--yes")
    assert forgot.returncode == 0, forgot.stderr
    again = run_luigi(*args, cwd=tmp_path)
    assert again.returncode == NOT_RUN, again.stdout
    (line,) = astra_lines(again.stdout)
    assert line.startswith(f"Pauses(n=1) is not done: luigid at {luigid.url}/ holds 1 of them as done ("), line
    assert "or they were forgotten (astra tasks forget) since luigid last heard they were done" in line, line
    assert "stable_done_cooldown_secs (10 s by default: run the command again then)" in line, line


def test_an_unimportable_module_is_one_line_in_astra_tasks_why(sqlite_url, tmp_path):
    (tmp_path / "fails_on_import.py").write_text("import astra\n\nundefined_name\n")
    env = {"PYTHONPATH": str(tmp_path)}
    missing = astra("tasks", "why", "--module", "workflow", "EstimateSNR", env=env)
    assert one_line_error(missing, 2) == (
        "astra: cannot import module 'workflow': No module named 'workflow'; run from the directory that holds it, "
        "or add that to PYTHONPATH (see `astra tasks why --help`)"
    )
    failing = astra("tasks", "why", "--module", "fails_on_import", "EstimateSNR", env=env)
    assert one_line_error(failing, 2) == (
        "astra: cannot import module 'fails_on_import': NameError: name 'undefined_name' is not defined "
        f"({tmp_path / 'fails_on_import.py'}, line 3) (see `astra tasks why --help`)"
    )


def test_the_readme_shows_the_last_line_of_luigis_traceback_for_a_mistyped_module(tmp_path):
    """luigi imports --module before astra is imported: no supported way to say it in one line, so the README does."""
    ran = run_luigi("--module", "workflow", "EstimateSNR", "--local-scheduler", cwd=tmp_path)
    last = ran.stdout.strip().splitlines()[-1]
    assert ran.returncode != 0 and last == "ModuleNotFoundError: No module named 'workflow'", ran.stdout
    assert f"**`{last}`**" in (REPO / "README.md").read_text()
