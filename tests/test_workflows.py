"""The example workflows, driven through the real luigi command line on each backend."""

from __future__ import annotations

import statistics
import subprocess
import sys

import pytest

from astra.database import Task
from astra.targets import forget_cached
from tests.helpers import REPO, run_luigi, subprocess_env
from workflows.spectra import read_spectrum, signal_to_noise, simulate, write_spectrum


def summary_says(output: str, phrase: str) -> bool:
    return phrase in output.split("===== Luigi Execution Summary =====")[1]


@pytest.mark.slow
def test_estimate_snr_runs_once_in_a_fresh_clone(tmp_path):
    """No configuration at all: the SQLite default under $HOME, the shipped example spectrum."""
    env = {"ASTRA_DATABASE_URL": "", "HOME": str(tmp_path)}
    first = run_luigi("--module", "workflows", "EstimateSNR", "--local-scheduler", env=env)
    assert first.returncode == 0, first.stdout
    assert summary_says(first.stdout, "1 ran successfully")
    second = run_luigi("--module", "workflows", "EstimateSNR", "--local-scheduler", env=env)
    assert second.returncode == 0
    assert summary_says(second.stdout, "1 complete ones were encountered")
    assert summary_says(second.stdout, "Did not run any tasks")
    assert (tmp_path / ".astra" / "astra.db").exists()


@pytest.mark.slow
def test_summary_dag_on_each_backend(database_url, tmp_path):
    paths = simulate(tmp_path / "spectra", count=6, seed=3)
    args = ["--module", "workflows", "SummariseSNR", "--spectra-dir", str(tmp_path / "spectra"), "--local-scheduler"]
    first = run_luigi(*args, "--workers", "4")
    assert first.returncode == 0, first.stdout
    assert summary_says(first.stdout, "7 ran successfully")
    second = run_luigi(*args)
    assert summary_says(second.stdout, "1 complete ones were encountered")
    assert summary_says(second.stdout, "Did not run any tasks")

    forget_cached()
    rows = {t.task_name: t for t in Task.select()}
    assert Task.select().count() == 7 and Task.select().where(Task.status != "done").count() == 0
    snrs = [signal_to_noise(*read_spectrum(str(p)))[0] for p in paths]
    summary = rows["SummariseSNR"].result
    assert summary["n_spectra"] == 6
    assert summary["median_snr"] == pytest.approx(statistics.median(snrs))


def test_snr_is_the_real_signal_to_noise(tmp_path):
    path = write_spectrum(tmp_path / "spec.fits", snr=20.0, seed=1)
    flux, ivar, mask = read_spectrum(str(path))
    snr, good = signal_to_noise(flux, ivar, mask)
    assert snr == pytest.approx(20.0, rel=0.1)
    assert good == int(((mask == 0) & (ivar > 0)).sum()) < len(flux)
    # masked pixels carry huge flux; ignoring the mask would change the answer
    assert signal_to_noise(flux, ivar, mask * 0)[0] != snr


def test_shipped_examples_exist():
    assert len(list((REPO / "workflows" / "data" / "spectra").glob("spec-*.fits"))) == 5


@pytest.mark.slow
def test_unknown_task_is_one_line_and_records_nothing(database_url):
    result = run_luigi("--module", "workflows", "NoSuchTask", "--local-scheduler")
    assert result.returncode != 0
    assert result.stdout.startswith("astra: luigi knows no task NoSuchTask") and "Traceback" not in result.stdout
    assert Task.select().count() == 0


@pytest.mark.slow
def test_malformed_parameter_gets_luigis_error_and_records_nothing(database_url):
    result = run_luigi("--module", "tests.example_tasks", "Leaf", "--i", "seven", "--local-scheduler")
    assert result.returncode != 0
    assert "invalid literal for int()" in result.stdout
    assert Task.select().count() == 0


@pytest.mark.slow
def test_the_simulator_runs_as_a_module_without_warnings(tmp_path):
    """``python -m workflows.spectra`` used to warn that workflows.spectra was in sys.modules before it ran."""
    result = subprocess.run(
        [sys.executable, "-m", "workflows.spectra", str(tmp_path), "--count", "2"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    assert result.stdout.split() == [str(tmp_path / "spec-00001.fits"), str(tmp_path / "spec-00002.fits")]
