"""``astra tasks forget``: delete records (with everything downstream), then luigi runs exactly those again."""

from __future__ import annotations

import json

import luigi
import pytest

from astra.database import Dependency, Parameter, Task
from astra.targets import forget_cached
from tests.helpers import SPECTRA, astra, catalogue, main, one_line_error, run_luigi, run_pipeline
from workflows import EstimateSNR, SummariseSNR
from workflows.spectra import EXAMPLE_SPECTRA


def recorded() -> dict[str, tuple]:
    """(task name, created) of every record, by hash: a forgotten and re-run task has a new ``created``."""
    return {task.task_hash: (task.task_name, task.created) for task in Task.select()}


def parameter_values() -> set[tuple[str, str]]:
    return set(Parameter.select(Parameter.parameter_name, Parameter.parameter_value).tuples())


@pytest.mark.slow
def test_forget_with_cascade_then_luigi_reruns_exactly_those(database_url, capsys):
    pair = SummariseSNR(pattern="spec-0000[12].fits")  # needs only the first two spectra
    run_pipeline(pair)
    first, third = EstimateSNR(spectrum_path=SPECTRA[0]), EstimateSNR(spectrum_path=SPECTRA[2])
    everything = SummariseSNR()
    before = recorded()
    assert len(before) == 7

    # Forgetting one task without --cascade: its pattern goes, the spectra_dir it shares with the other summary stays.
    only_pair = main(capsys, "tasks", "forget", "--name", "SummariseSNR", "--where", "pattern=spec-0000[12].fits", "-y")
    assert only_pair.returncode == 0, only_pair.stderr
    assert "forgot 1 tasks; removed 1 parameter values" in only_pair.stdout
    assert ("pattern", "spec-0000[12].fits") not in parameter_values()
    assert ("spectra_dir", str(EXAMPLE_SPECTRA)) in parameter_values()
    assert set(recorded()) == set(before) - {pair.output().task_hash}

    selection = ("tasks", "forget", "--name", "EstimateSNR", "--where", "spectrum_path=*spec-00001.fits", "--cascade")
    dry = main(capsys, *selection, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert planned["dry_run"] is True
    assert sorted(t["task_id"] for t in planned["tasks"]) == sorted([first.task_id, everything.task_id])
    assert len(recorded()) == 6  # a dry run changes nothing

    # Without --yes it asks; no answer (or "n") forgets nothing.
    refused = astra(*selection, input="n\n")
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == ["Forget these 2 tasks? [y/N]: ", "astra: aborted, nothing changed"]
    assert len(recorded()) == 6

    accepted = astra(*selection, input="y\n")
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.startswith("2 tasks to forget (1 EstimateSNR, 1 SummariseSNR) with everything downstream")
    assert "forgot 2 tasks; removed 3 parameter values" in accepted.stdout  # spectrum_path, pattern, spectra_dir

    third_pk = Task.get(Task.task_hash == third.output().task_hash).pk
    by_ref = astra("tasks", "forget", str(third_pk), "--yes", "--json")
    assert by_ref.returncode == 0, by_ref.stderr
    assert [t["pk"] for t in json.loads(by_ref.stdout)["tasks"]] == [third_pk]

    forgotten = {first.output().task_hash, everything.output().task_hash, third.output().task_hash}
    assert set(recorded()) == set(before) - forgotten - {pair.output().task_hash}
    assert Dependency.select().count() == 0  # the summary's edges went with it

    forget_cached()
    rerun = run_luigi("--module", "workflows", "SummariseSNR", "--local-scheduler")
    assert "3 ran successfully" in rerun.stdout, rerun.stdout
    after = recorded()
    again = {h for h, (_, created) in after.items() if h not in before or created != before[h][1]}
    assert again == forgotten  # exactly those, and no others (the pair was not asked for)
    assert all(after[h] == before[h] for h in set(after) - forgotten)
    assert Dependency.select().count() == 5


@pytest.mark.slow
def test_forget_needs_a_selection(database_url, capsys):
    run_pipeline()
    nothing = main(capsys, "tasks", "forget", "--yes")
    assert "say which tasks to forget" in one_line_error(nothing, 2)
    both = main(capsys, "tasks", "forget", "1", "--name", "EstimateSNR", "--yes")
    assert "not both" in one_line_error(both, 2)
    unknown = main(capsys, "tasks", "forget", "--name", "NoSuchTask", "--yes")
    assert one_line_error(unknown, 1).startswith("astra: no tasks match: no task is named 'NoSuchTask'")
    assert Task.select().count() == 6

    everything = main(capsys, "tasks", "forget", "--all", "--yes")
    assert everything.returncode == 0 and "forgot 6 tasks; removed 7 parameter values" in everything.stdout
    assert Task.select().count() == Parameter.select().count() == Dependency.select().count() == 0


def test_forget_makes_no_sqlite_database(tmp_path):
    """A mistyped path, or a catalogue: before, forget made the file (and its folder) or the astra schema in the
    catalogue, then said no tasks matched."""
    import contextlib
    import sqlite3

    other = catalogue(tmp_path / "catalogue.db")
    for path, said in [(tmp_path / "new" / "astra.db", "does not exist"), (other, "has no astra schema")]:
        env = {"ASTRA_DATABASE_URL": f"sqlite:///{path}"}
        for args in [("--all", "--yes"), ("1", "--yes"), ("--name", "EstimateSNR", "--dry-run")]:
            assert said in one_line_error(astra("tasks", "forget", *args, env=env), 1), args
    assert not (tmp_path / "new").exists()
    with contextlib.closing(sqlite3.connect(other)) as connection:
        assert connection.execute("select name from sqlite_master").fetchall() == [("stars",)]


@pytest.mark.slow
def test_forget_of_more_tasks_than_it_shows(database_url, capsys, monkeypatch):
    """The plan lists the first tasks and counts them all per name; --json lists every task in pk order, in the text
    json.dumps gives, also when a forget's records wait in a temporary file on disk (they are held as pks only)."""
    from astra.cli import tasks as tasks_command
    from tests.listing_memory_tasks import ListedItems

    run_pipeline()
    assert luigi.build([ListedItems(n=25)], local_scheduler=True, log_level="WARNING")
    every = [pk for (pk,) in Task.select(Task.pk).order_by(Task.pk).tuples()]
    plan = main(capsys, "tasks", "forget", "--all", "--dry-run")
    lines = plan.stdout.splitlines()
    assert lines[0] == "31 tasks to forget (5 EstimateSNR, 25 ListedItem, 1 SummariseSNR):"
    assert [int(line.split()[0]) for line in lines[3:23]] == every[:20]
    assert lines[23:] == ["... and 11 more"]
    assert plan.stderr == "dry run: nothing forgotten\n"

    dry = main(capsys, "tasks", "forget", "--all", "--dry-run", "--json")
    planned = json.loads(dry.stdout)
    assert dry.stdout == json.dumps(planned, indent=2) + "\n"
    assert [task["pk"] for task in planned["tasks"]] == every[::-1]  # newest first, as `tasks list` lists them
    by_ref = json.loads(main(capsys, "tasks", "forget", "7", "1", "--cascade", "--dry-run", "--json").stdout)
    assert [task["pk"] for task in by_ref["tasks"]] == [7, 1, 6]  # as given, then what is downstream

    monkeypatch.setattr(tasks_command, "SPOOLED", 100)  # bytes: the records go to a file at once
    forgot = main(capsys, "tasks", "forget", "--all", "--cascade", "--yes", "--json")
    assert forgot.returncode == 0, forgot.stderr
    done = json.loads(forgot.stdout)
    assert forgot.stdout == json.dumps(done, indent=2) + "\n"
    assert done == {"dry_run": False, "tasks": planned["tasks"][::-1], "parameters_removed": 32}  # in pk order
    assert Task.select().count() == Parameter.select().count() == Dependency.select().count() == 0
