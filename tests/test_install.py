"""``pip install .`` gives a working package: schema file, example spectra, and ``luigi --module workflows``."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO


def _venv_seeing_these_packages(venv: Path) -> Path:
    """A new virtual environment whose Python also imports what this Python has installed; returns its python.

    ``--system-site-packages`` would show the base interpreter's packages instead, which lack the dependencies
    when the tests run from a virtual environment. Here a ``.pth`` file adds this Python's own site directories
    (their ``.pth`` files included) after the new environment's, so a wheel installed into it comes first.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    here = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    lines = [f"import site; site.addsitedir({directory!r})" for directory in here if os.path.isdir(directory)]
    Path(purelib, "zz_outer_site_packages.pth").write_text("\n".join(lines) + "\n")
    return python


@pytest.mark.slow
def test_wheel_installs_and_runs_the_workflow_outside_the_checkout(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("sdss_astra-*.whl")  # the distribution is sdss-astra; the package stays astra
    names = zipfile.ZipFile(wheel).namelist()
    assert "astra/database/astradb.sql" in names
    assert "workflows/data/spectra/spec-00001.fits" in names
    with zipfile.ZipFile(wheel) as archive:
        requires = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "\nName: sdss-astra\n" in requires  # "astra" on PyPI is another project
    for dependency in ["luigi", "peewee", "psycopg2-binary", "sdssdb"]:
        assert f"Requires-Dist: {dependency}" in requires

    # A virtual environment that sees the dependencies installed where this test runs, but not the checkout.
    venv = tmp_path / "venv"
    python = _venv_seeing_these_packages(venv)
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ASTRA_DATABASE_URL")}
    env["HOME"] = str(tmp_path)
    out = subprocess.run(
        [python, "-m", "luigi", "--module", "workflows", "EstimateSNR", "--local-scheduler"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert "1 ran successfully" in out.stderr + out.stdout, out.stderr
    where = subprocess.run(
        [python, "-c", "import astra, workflows; print(astra.__file__, workflows.__file__)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(REPO) not in where and str(venv) in where
