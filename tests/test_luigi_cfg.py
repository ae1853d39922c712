"""The repository's luigi.cfg: the bare command runs, a configured luigid is used, failures exit non-zero."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from astra.database import Task
from tests.helpers import REPO, free_port, run_luigi
from tests.helpers import luigi_error_line as one_line_error

SHIPPED = (REPO / "luigi.cfg").read_text()
SPECTRUM = str(REPO / "workflows" / "data" / "spectra" / "spec-00003.fits")


@pytest.fixture(autouse=True)
def no_config_path(monkeypatch):
    """Only the luigi.cfg of the directory luigi runs in."""
    monkeypatch.delenv("LUIGI_CONFIG_PATH", raising=False)


def bare(*args: str, cwd: Path = REPO, **env: str):
    """``luigi --module workflows EstimateSNR ...`` with no --local-scheduler and no $LUIGI_CONFIG_PATH."""
    started = time.monotonic()
    result = run_luigi("--module", "workflows", "EstimateSNR", *args, env=env, cwd=cwd)
    return result, time.monotonic() - started


@pytest.mark.slow
def test_the_bare_command_runs_from_the_checkout(database_url):
    result, seconds = bare("--spectrum-path", SPECTRUM)
    assert result.returncode == 0, result.stdout
    assert "1 ran successfully" in result.stdout, result.stdout
    assert "RPCError" not in result.stdout and "Warning" not in result.stdout, result.stdout
    assert Task.get(Task.task_name == "EstimateSNR").status == "done"


@pytest.mark.slow
def test_a_configured_luigid_is_used(database_url, luigid, tmp_path, monkeypatch):
    """The README's way to name a luigid: edit local_scheduler and scheduler_host/port in luigi.cfg."""
    monkeypatch.delenv("LUIGI_CONFIG_PATH")  # the luigid fixture's: this test writes its own luigi.cfg
    config = SHIPPED.replace("local_scheduler = true", "local_scheduler = false")
    config = config.replace("# scheduler_host = localhost", "scheduler_host = 127.0.0.1")
    config = config.replace("# scheduler_port = 8082", f"scheduler_port = {luigid.port}")
    assert config.count("127.0.0.1") == 1 and str(luigid.port) in config, "the shipped luigi.cfg changed: update"
    (tmp_path / "luigi.cfg").write_text(config)
    result, _ = bare("--spectrum-path", SPECTRUM, cwd=tmp_path)
    assert "1 ran successfully" in result.stdout, result.stdout
    assert "UnconsumedParameterWarning" not in result.stdout and "deprecated" not in result.stdout, result.stdout
    task_id = Task.get(Task.task_name == "EstimateSNR").task_id
    assert task_id in luigid.api("task_list", status="DONE")


@pytest.mark.slow
def test_no_luigid_where_one_is_configured_stops_within_seconds(database_url, tmp_path):
    port = free_port()  # nothing listens there
    (tmp_path / "luigi.cfg").write_text(f"[core]\nscheduler_host = 127.0.0.1\nscheduler_port = {port}\n")
    result, seconds = bare("--spectrum-path", SPECTRUM, cwd=tmp_path)
    line = one_line_error(result)
    assert f"no luigid answers at http://127.0.0.1:{port}/" in line and "--local-scheduler" in line, line
    assert len(result.stdout.splitlines()) < 10, result.stdout
    assert "RPCError" not in result.stdout
    assert seconds < 30, seconds  # was 62 s of luigi's retries (plus start-up on a loaded machine)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])  # the scheduler chosen does not depend on the database
def test_a_luigid_named_on_the_command_line_wins_over_the_shipped_config(database_url, luigid, monkeypatch):
    """The checkout's luigi.cfg says local_scheduler = true; --scheduler-host/--scheduler-port still use luigid."""
    monkeypatch.delenv("LUIGI_CONFIG_PATH")  # the luigid fixture's: only the shipped luigi.cfg
    assert "\nlocal_scheduler = true\n" in SHIPPED
    result, _ = bare("--spectrum-path", SPECTRUM, "--scheduler-host", "127.0.0.1", "--scheduler-port", str(luigid.port))
    assert result.returncode == 0 and "1 ran successfully" in result.stdout, result.stdout
    task_id = Task.get(Task.task_name == "EstimateSNR").task_id
    assert task_id in luigid.api("task_list", status="DONE")

    result, _ = bare("--spectrum-path", SPECTRUM, "--scheduler-host", "127.0.0.1", "--scheduler-port", "1")
    assert "no luigid answers at http://127.0.0.1:1/" in one_line_error(result)


def test_no_old_scheduler_option_names_in_the_shipped_config():
    """``default_scheduler_host`` makes luigi warn UnconsumedParameterWarning on every run."""
    for text in (SHIPPED, (REPO / "README.md").read_text()):
        assert not re.search(r"^#? *default_scheduler_\w+ *=", text, re.MULTILINE)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spectrum", "code"),
    [("not-a-fits-file", 30), ("missing", 20)],  # [retcode] task_failed, missing_data
)
@pytest.mark.parametrize("backend", ["sqlite"])  # luigi's exit codes do not depend on the database
def test_failures_exit_non_zero_through_the_shipped_config(database_url, tmp_path, spectrum, code):
    path = tmp_path / "spec-bad.fits"
    if spectrum == "not-a-fits-file":
        path.write_text("this is not FITS\n")
    result, _ = bare("--spectrum-path", str(path))
    assert result.returncode == code, result.stdout
