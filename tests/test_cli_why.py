"""``astra tasks why``: is this task (given as on luigi's command line) done, and if not, what is closest?"""

from __future__ import annotations

import json
import re

import luigi
import pytest
from luigi.task_register import Register

from tests.batch_tasks import MeasureStar, SummariseStars
from tests.cli_tasks import Broken
from tests.helpers import SPECTRA, astra_many, main, one_line_error, run_pipeline
from workflows import EstimateSNR
from workflows.spectra import EXAMPLE_SPECTRA


def reason(kind, parameter=None, recorded=None, asked=None, task=None, status=None) -> dict:
    """One reason of ``why --json``, as it prints it."""
    return {"kind": kind, "parameter": parameter, "recorded": recorded, "asked": asked, "task": task, "status": status}


@pytest.mark.slow
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
    assert explained["status"] == "not recorded" and explained["record"] is None and explained["complete"] is False
    assert explained["task"] == f"EstimateSNR(spectrum_path={missing})"
    assert (explained["task_module"], explained["task_name"]) == ("workflows", "EstimateSNR")
    assert re.fullmatch(r"[0-9a-f]{64}", explained["task_hash"]) and explained["task_id"].startswith("EstimateSNR_")
    assert explained["reasons"] == [reason("not_recorded")]
    assert len(explained["closest"]) == 3
    recorded = set()
    for candidate in explained["closest"]:
        assert candidate["record"]["task_name"] == "EstimateSNR"
        (difference,) = candidate["differences"]  # data only: the sentences are in the text output
        assert difference == reason("parameter", "spectrum_path", difference["recorded"], missing)
        recorded.add(difference["recorded"])
    assert len(recorded) == 3 and recorded <= set(SPECTRA)

    pair = main(capsys, "tasks", "why", "SummariseSNR", "--pattern", "spec-0000[12].fits")
    assert pair.returncode == 1
    lines = pair.stdout.splitlines()
    assert re.search(r" is not recorded: luigi will run it \(hash [0-9a-f]{12}\)\.$", lines[0]), lines[0]
    assert lines[1] == "Closest recorded SummariseSNR tasks:"
    assert lines[3] == "    parameter pattern: recorded '*.fits', asked 'spec-0000[12].fits'"
    assert lines[4] == "    upstream differs too: was made from 3 tasks this one does not need"

    failed = main(capsys, "tasks", "why", "--module", "tests.cli_tasks", "Broken")
    assert failed.returncode == 1
    assert failed.stdout.startswith("Broken(reason=broken on purpose) failed: task ")
    assert "  error: ValueError: broken on purpose\nluigi will run it again." in failed.stdout
    failed = json.loads(main(capsys, "tasks", "why", "Broken", "--json").stdout)
    assert failed["status"] == "failed" and failed["reasons"] == [reason("failed", status="failed")]
    assert failed["record"]["error"] == "ValueError: broken on purpose" and failed["closest"] == []

    # A batch is done when all its items are.
    batch = main(capsys, "tasks", "why", "EstimateSNRBatch", "--spectra-dir", str(EXAMPLE_SPECTRA))
    assert batch.returncode == 0 and "is a batch of 5 EstimateSNR items: 5 done." in batch.stdout
    spectra = json.dumps([SPECTRA[0], missing])
    partly = main(capsys, "tasks", "why", "EstimateSNRBatch", "--spectra", spectra, "--json")
    assert partly.returncode == 1
    explained = json.loads(partly.stdout)
    assert explained["items"] == 2 and explained["statuses"] == {"done": 1, "not recorded": 1}
    assert [item["parameters"] for item in explained["not_done"]] == [{"spectrum_path": missing}]

    never = main(capsys, "tasks", "why", "--module", "tests.cli_tasks", "Broken", "--reason", "other")
    assert "No Broken task" not in never.stdout and "parameter reason: recorded 'broken on purpose'" in never.stdout


def test_why_json_says_what_differs_as_data(database_url, capsys, monkeypatch):
    """``--json`` gives each difference as kind, parameter, recorded and asked values; the text says it in words."""
    run_pipeline()
    done = json.loads(main(capsys, "tasks", "why", "EstimateSNR", "--spectrum-path", SPECTRA[0], "--json").stdout)
    assert done["complete"] is True and done["status"] == "done" and done["reasons"] == []
    assert done["record"]["task_hash"] == done["task_hash"]

    # A summary asked for other inputs: a parameter, and upstream tasks it was not made from, each as data.
    pair = json.loads(main(capsys, "tasks", "why", "SummariseSNR", "--pattern", "spec-0000[12].fits", "--json").stdout)
    (closest,) = pair["closest"]
    parameter, *upstream = closest["differences"]
    assert parameter == reason("parameter", "pattern", "*.fits", "spec-0000[12].fits")
    assert len(upstream) == 3 and {d["kind"] for d in upstream} == {"dependency"}
    for dependency in upstream:
        assert dependency["asked"] is None and dependency["status"] == "done"
        assert dependency["recorded"] == dependency["task"]["task_hash"]
        assert dependency["task"]["task_id"].startswith("EstimateSNR_")

    # A new version of EstimateSNR: the closest record has the same parameters, and differs by its version only.
    monkeypatch.setattr(EstimateSNR, "version", "2")
    Register.clear_instance_cache()  # instances made before the change remember their identity
    try:
        bumped = main(capsys, "tasks", "why", "EstimateSNR", "--spectrum-path", SPECTRA[0], "--json")
        text = main(capsys, "tasks", "why", "EstimateSNR", "--spectrum-path", SPECTRA[0])
    finally:
        Register.clear_instance_cache()
    assert bumped.returncode == 1
    explained = json.loads(bumped.stdout)
    assert explained["version"] == "2" and explained["reasons"] == [reason("not_recorded")]
    closest = explained["closest"][0]
    assert closest["differences"] == [reason("version", None, "", "2")]
    assert "    version: recorded '(none)', asked '2'" in text.stdout.splitlines()


@pytest.mark.slow
def test_why_usage_errors(database_url, capsys):
    run_pipeline()
    unknown_task = main(capsys, "tasks", "why", "NoSuchTask", "--x", "1")
    assert "no task class 'NoSuchTask' is known; give --module" in one_line_error(unknown_task, 2)
    not_in_module = main(capsys, "tasks", "why", "--module", "workflows", "NoSuchTask")  # before: "give --module"
    assert one_line_error(not_in_module, 2).startswith("astra: module workflows defines no task class 'NoSuchTask'")
    unknown_parameter = main(capsys, "tasks", "why", "EstimateSNR", "--colour", "red")
    assert "unrecognized arguments: --colour red" in one_line_error(unknown_parameter, 2)
    bad_module = main(capsys, "tasks", "why", "--module", "no.such.module", "EstimateSNR")
    assert "cannot import module 'no.such.module'" in one_line_error(bad_module, 2)
    external = main(capsys, "tasks", "why", "SpectrumFile", "--path", SPECTRA[0])
    assert f"SpectrumFile(path={SPECTRA[0]}) is not an astra task" in one_line_error(external, 2)
    no_family = main(capsys, "tasks", "why")
    assert "Missing argument 'FAMILY'" in one_line_error(no_family, 2)
    bad_value = main(capsys, "tasks", "why", "EstimateSelectedSNR", "--fiber", "x")  # named, as luigi's line does
    assert "EstimateSelectedSNR --fiber x: ValueError: invalid literal for int()" in one_line_error(bad_value, 2)


def test_why_of_a_summary_of_a_batch_counts_the_items_it_names(database_url, capsys, monkeypatch):
    """A task that requires a batch is linked to each item: why names a few of them and counts the others, first
    to last. Before: a line for each item that differs (two for each of a million items after a new version of the
    items), in the order of their hashes, and a comparison of the links whose cost grew with their square."""
    assert luigi.build([SummariseStars(stars=25)], local_scheduler=True, log_level="WARNING")
    monkeypatch.setattr(MeasureStar, "version", "2")
    Register.clear_instance_cache()  # instances made before the change remember their identity
    try:
        bumped = main(capsys, "tasks", "why", "--module", "tests.batch_tasks", "SummariseStars", "--stars", "25")
        more = main(capsys, "tasks", "why", "--module", "tests.batch_tasks", "SummariseStars", "--stars", "26")
    finally:
        Register.clear_instance_cache()
    assert bumped.returncode == 1
    lines = bumped.stdout.splitlines()
    assert lines[1].startswith("25 of the astra tasks it requires are not done either: MeasureStar(star=0, "), lines
    upstream = [line.strip() for line in lines[4:]]
    assert len(upstream) == 8, bumped.stdout
    named = [f"MeasureStar(star={star}, band=g, options={json.dumps({'b': 1, 'a': [2, 3]})}" for star in range(3)]
    assert [line.split(", secret")[0] for line in upstream[:3]] == [f"upstream: needs {name}" for name in named]
    assert upstream[3] == "upstream: ... and 22 more tasks it was not made from"
    assert upstream[4].startswith("upstream: was made from task 1 MeasureStar_") and "(version 2)" not in upstream[4]
    assert upstream[7] == "upstream: ... and 22 more tasks this one does not need"
    assert more.returncode == 1 and "    upstream differs too: needs 26 tasks it was not made from" in more.stdout
