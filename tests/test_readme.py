"""The task example in README.md runs as written."""

from __future__ import annotations

import re

from astra.database import Task
from tests.conftest import REPO, run_luigi


def test_readme_task_example_runs(database_url, tmp_path):
    readme = (REPO / "README.md").read_text()
    example = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "FlagLowSNR" in block)
    (tmp_path / "mymodule.py").write_text(example)
    spectrum = REPO / "workflows" / "data" / "spectra" / "spec-00003.fits"
    args = ["--module", "mymodule", "FlagLowSNR", "--spectrum-path", str(spectrum), "--local-scheduler"]
    result = run_luigi(*args, env={"PYTHONPATH": str(tmp_path)})
    assert "2 ran successfully" in result.stdout, result.stdout
    flag = Task.get(Task.task_name == "FlagLowSNR")
    snr = Task.get(Task.task_name == "EstimateSNR")
    assert flag.version == "1"
    assert ('"low_snr": true' in flag.result) == (float(re.search(r'"snr": ([\d.]+)', snr.result)[1]) < 10.0)
