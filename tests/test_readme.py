"""The task example in README.md runs as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest

import astra
from astra.database import Task
from tests.helpers import LUIGI, REPO, run_luigi
from workflows import EstimateSNR


@pytest.mark.slow
def test_readme_task_example_runs(database_url, tmp_path):
    """As the README says: save the example as mymodule.py, run its command from that directory."""
    readme = (REPO / "README.md").read_text()
    example = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "FlagLowSNR" in block)
    (tmp_path / "mymodule.py").write_text(example)
    command = re.search(r"^PYTHONPATH=\. (luigi --module mymodule FlagLowSNR .*)$", readme, re.M)[1]
    spectrum = REPO / "workflows" / "data" / "spectra" / "spec-00003.fits"
    args = shlex.split(command.replace("workflows/data/spectra/spec-00001.fits", str(spectrum)))[1:]
    # PYTHONPATH=. as the README says (the checkout after it stands for `pip install .`)
    result = run_luigi(*args, env={"PYTHONPATH": "."}, cwd=tmp_path)
    assert "2 ran successfully" in result.stdout, result.stdout
    flag = Task.get(Task.task_name == "FlagLowSNR")
    (snr,) = astra.results(EstimateSNR)
    assert flag.version == "1"
    assert flag.result["low_snr"] == (snr.snr < 10.0)


def test_without_pythonpath_the_module_is_not_found_as_the_readme_warns(tmp_path):
    (tmp_path / "mymodule.py").write_text("import luigi\n")
    result = subprocess.run(
        [LUIGI, "--module", "mymodule", "Nothing", "--local-scheduler"],
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert "No module named 'mymodule'" in result.stdout + result.stderr
    assert "The `luigi` script does not look\nfor modules in the current directory" in (REPO / "README.md").read_text()
