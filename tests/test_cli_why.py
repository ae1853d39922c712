"""``astra tasks why``: is this task (given as on luigi's command line) done, and if not, what is closest?"""

from __future__ import annotations

import json
import re

from tests.test_cli import SPECTRA, Broken, astra_many, main, one_line_error, run_pipeline
from workflows import EstimateSNR
from workflows.spectra import EXAMPLE_SPECTRA


def test_why_done_not_recorded_and_failed(database_url, capsys):
    run_pipeline(Broken())
    first = EstimateSNR(spectrum_path=SPECTRA[0])
    missing = SPECTRA[0].replace("spec-00001", "spec-00009")
    # No --module: the records say EstimateSNR lives in workflows.
    done, unknown = astra_many(
        ("tasks", "why", "EstimateSNR", "--spectrum-path", SPECTRA[0]),
        ("tasks", "why", "--module", "workflows", "EstimateSNR", "--spectrum-path", missing, "--json"),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{first} is done: task ")
    assert "luigi will not run it again" in done.stdout

    assert unknown.returncode == 1, unknown.stderr
    explained = json.loads(unknown.stdout)
    assert explained["status"] == "not recorded" and explained["record"] is None
    assert explained["task"] == f"EstimateSNR(spectrum_path={missing})"
    assert len(explained["closest"]) == 3
    for candidate in explained["closest"]:
        assert candidate["record"]["task_name"] == "EstimateSNR"
        (difference,) = candidate["differences"]
        assert difference.startswith("parameter spectrum_path: recorded '") and f"asked '{missing}'" in difference

    pair = main(capsys, "tasks", "why", "SummariseSNR", "--pattern", "spec-0000[12].fits")
    assert pair.returncode == 1
    lines = pair.stdout.splitlines()
    assert re.search(r" is not recorded: luigi will run it \(hash [0-9a-f]{12}\)\.$", lines[0]), lines[0]
    assert lines[1] == "Closest recorded SummariseSNR tasks:"
    assert lines[3] == "    parameter pattern: recorded '*.fits', asked 'spec-0000[12].fits'"
    assert lines[4] == "    upstream differs too: was made from 3 tasks this one does not need"

    failed = main(capsys, "tasks", "why", "--module", "tests.test_cli", "Broken")
    assert failed.returncode == 1
    assert failed.stdout.startswith("Broken(reason=broken on purpose) failed: task ")
    assert "  error: ValueError: broken on purpose\nluigi will run it again." in failed.stdout

    # A batch is done when all its items are.
    batch = main(capsys, "tasks", "why", "EstimateSNRBatch", "--spectra-dir", str(EXAMPLE_SPECTRA))
    assert batch.returncode == 0 and "is a batch of 5 EstimateSNR items: 5 done." in batch.stdout
    spectra = json.dumps([SPECTRA[0], missing])
    partly = main(capsys, "tasks", "why", "EstimateSNRBatch", "--spectra", spectra, "--json")
    assert partly.returncode == 1
    explained = json.loads(partly.stdout)
    assert explained["items"] == 2 and explained["statuses"] == {"done": 1, "not recorded": 1}
    assert [item["parameters"] for item in explained["not_done"]] == [{"spectrum_path": missing}]

    never = main(capsys, "tasks", "why", "--module", "tests.test_cli", "Broken", "--reason", "other")
    assert "No Broken task" not in never.stdout and "parameter reason: recorded 'broken on purpose'" in never.stdout


def test_why_usage_errors(database_url, capsys):
    run_pipeline()
    unknown_task = main(capsys, "tasks", "why", "NoSuchTask", "--x", "1")
    assert "no task class 'NoSuchTask' is known; give --module" in one_line_error(unknown_task, 2)
    unknown_parameter = main(capsys, "tasks", "why", "EstimateSNR", "--colour", "red")
    assert "unrecognized arguments: --colour red" in one_line_error(unknown_parameter, 2)
    bad_module = main(capsys, "tasks", "why", "--module", "no.such.module", "EstimateSNR")
    assert "cannot import module 'no.such.module'" in one_line_error(bad_module, 2)
    external = main(capsys, "tasks", "why", "SpectrumFile", "--path", SPECTRA[0])
    assert f"SpectrumFile(path={SPECTRA[0]}) is not an astra task" in one_line_error(external, 2)
    no_family = main(capsys, "tasks", "why")
    assert "Missing argument 'FAMILY'" in one_line_error(no_family, 2)
