"""A developer's plain ``pytest`` has no side effects on the machine: without a SLURM cluster up, the SLURM tests
skip and say how to enable them; nothing is installed (apt-get) and no daemon is started."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO


@pytest.mark.slow
@pytest.mark.parametrize("start", ["", "1"])
def test_without_a_cluster_slurm_tests_skip_without_installing_or_starting_anything(tmp_path, start):
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "calls.log"
    # No cluster answers here; apt-get and the daemons only log that they were called.
    for name in ("sinfo", "apt-get", "munged", "slurmctld", "slurmd"):
        (fake / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\nexit 1\n')
        (fake / name).chmod(0o755)
    env = {key: value for key, value in os.environ.items() if not key.startswith("ASTRA_")}
    env.update(PATH=f"{fake}:{os.path.dirname(sys.executable)}:/usr/bin:/bin", ASTRA_SLURM_DIR=str(tmp_path / "slurm"))
    if start:  # asked to start one, it tries (with slurm-local start), and still skips when it cannot
        env["ASTRA_START_SLURM"] = start
    test = "tests/test_slurm_polling.py::test_the_console_names_each_job_submitted"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", test, "-n", "0", "-rs", "-p", "no:cacheprovider"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and "1 skipped" in done.stdout, done.stdout[-3000:]
    assert "scripts/slurm-local start" in done.stdout and "ASTRA_START_SLURM=1" in done.stdout, done.stdout[-3000:]
    called = log.read_text().splitlines() if log.exists() else []
    if start:
        assert called and called[0].startswith("sinfo"), called
    else:
        assert called == ["sinfo -h -o %T"], called  # only asked whether a cluster is up
