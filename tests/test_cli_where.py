"""``--where``: ``*`` matches any text, ``\\*`` is a literal star and ``\\\\`` a literal backslash, on both backends."""

from __future__ import annotations

import json

import luigi
import pytest

from astra.database import Parameter
from tests.example_tasks import WithOptions
from tests.helpers import astra, main, run_luigi

LABELS = ["*.fits", "a.fits", "b*.fits", "x\\y.fits", "x\\*y", "100%_done", "100xxdone", "[ab].fits", "a?c", "abc"]

#: pattern -> the labels it selects
EXPECTED = {
    "\\*.fits": ["*.fits"],
    "*.fits": ["*.fits", "a.fits", "b*.fits", "x\\y.fits", "[ab].fits"],
    "*\\*.fits": ["*.fits", "b*.fits"],
    "\\**": ["*.fits"],
    "x\\y.fits": ["x\\y.fits"],  # a backslash before anything but * or \ is itself
    "x\\\\y*": ["x\\y.fits"],
    "x\\\\\\*y": ["x\\*y"],
    "x\\\\\\**": ["x\\*y"],
    "*%_*": ["100%_done"],  # LIKE's own wildcards are literal
    "[ab]*": ["[ab].fits"],  # and GLOB's
    "a?c*": ["a?c"],
    "*": LABELS,
}


def labels_of(capsys, pattern: str) -> list[str]:
    result = main(capsys, "tasks", "list", "--name", "WithOptions", "--where", f"label={pattern}", "--json")
    assert result.returncode in (0, 1), result.stderr
    return sorted(task["parameters"]["label"] for task in json.loads(result.stdout or "[]"))


@pytest.mark.slow
def test_where_escapes_a_literal_star_and_backslash(database_url, capsys):
    assert luigi.build([WithOptions(options={}, label=label) for label in LABELS], local_scheduler=True)
    for pattern, labels in EXPECTED.items():
        assert labels_of(capsys, pattern) == sorted(labels), pattern

    # The real command: forgetting `*.fits` literally leaves the other patterns, and luigi runs only it again.
    forget = astra("tasks", "forget", "--name", "WithOptions", "--where", "label=\\*.fits", "--yes")
    assert forget.returncode == 0 and "forgot 1 tasks" in forget.stdout, (forget.stdout, forget.stderr)
    assert labels_of(capsys, "*") == sorted(set(LABELS) - {"*.fits"})
    assert ("label", "*.fits") not in set(
        Parameter.select(Parameter.parameter_name, Parameter.parameter_value).tuples()
    )
    again = run_luigi(
        "--module",
        "tests.example_tasks",
        "WithOptions",
        "--options",
        "{}",
        "--label",
        "*.fits",
        "--local-scheduler",
        "--no-lock",
        env={"ASTRA_DATABASE_URL": database_url},
    )
    assert "1 ran successfully" in again.stdout, again.stdout
    assert labels_of(capsys, "*") == sorted(LABELS)


def test_where_help_tells_the_escape(capsys):
    helped = main(capsys, "tasks", "list", "--help").stdout
    assert "\\* is a literal" in " ".join(helped.split())


def test_results_where_takes_values_as_luigi_does(database_url, capsys):
    """``astra results NAME --where`` reads each value as the class's parameter does on luigi's command line, then
    writes it as astra recorded it: ``--real 1`` ran the task recorded as real=1.0, and ``--where real=1`` finds it."""
    from tests.identity_tasks import EveryParameterBase

    assert luigi.build([EveryParameterBase(real=1.0, flag=True, integer=7)], local_scheduler=True, log_level="WARNING")
    asked = ["real=1", "real=1.0", "real=1e0", "flag=true", "flag=True", "integer=07", "real=1*", "real=2", "real=abc"]
    found = {
        where: main(capsys, "results", "EveryParameterBase", "--where", where, "--columns", "task_pk").returncode
        for where in [*asked, "flag=yes"]
    }
    assert found == {
        "real=1": 0, "real=1.0": 0, "real=1e0": 0, "flag=true": 0, "flag=True": 0, "integer=07": 0, "real=1*": 0,
        "real=2": 1, "real=abc": 1, "flag=yes": 1,
    }  # fmt: skip


def test_a_where_value_the_parameter_cannot_take_is_said(database_url, capsys):
    """``--where integer=abc`` said only that no task matched, as if one might have."""
    from tests.identity_tasks import EveryParameterBase

    assert luigi.build([EveryParameterBase(integer=7)], local_scheduler=True, log_level="WARNING")
    shown = main(capsys, "results", "EveryParameterBase", "--where", "integer=abc")
    assert shown.returncode == 1
    assert "note: --where integer=abc: not a value of EveryParameterBase's integer (invalid literal" in shown.stderr
    assert "so it is matched as written" in shown.stderr


def test_a_where_value_is_normalised_as_luigi_makes_the_task(database_url, capsys):
    """luigi's ``--path ./data/x.fits`` makes the task of ``data/x.fits`` (PathParameter.normalize), as recorded;
    ``--where path=./data/x.fits`` found nothing, though ``astra tasks why`` said the task was done."""
    from tests.identity_tasks import EveryParameterBase

    assert luigi.build([EveryParameterBase(path="./data/x.fits")], local_scheduler=True, log_level="WARNING")
    for where in ("path=./data/x.fits", "path=data/x.fits", "path=data//x.fits"):
        shown = main(capsys, "results", "EveryParameterBase", "--where", where, "--columns", "path", "--json")
        assert shown.returncode == 0 and json.loads(shown.stdout) == [{"path": "data/x.fits"}], (where, shown)


def test_results_of_a_class_its_module_no_longer_has_say_so(database_url, capsys, tmp_path, monkeypatch):
    """A class renamed since its tasks ran: the line pointed at a note that was not there, and at PYTHONPATH."""
    (tmp_path / "renamed_mod.py").write_text(
        "import luigi\nimport astra\n\n\nclass Before(astra.BaseTask):\n    def run(self):\n        return {'x': 1}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import renamed_mod

    assert luigi.build([renamed_mod.Before()], local_scheduler=True, log_level="WARNING")
    (tmp_path / "renamed_mod.py").write_text("import astra\n")  # the next release: Before is gone
    shown = astra("results", "Before", env={"PYTHONPATH": str(tmp_path)})
    assert "note: Before is no task class of renamed_mod (renamed or removed?)" in shown.stderr, shown.stderr


@pytest.mark.parametrize("backend", ["sqlite"])  # importing does not depend on the database
def test_results_of_a_class_moved_to_another_module_read_its_rows(database_url, tmp_path, monkeypatch):
    """Records name two modules, the old one gone: the first that failed to import gave up on both, and the results
    of an output model were not found ("recorded no JSON result")."""
    source = (
        "import luigi\nimport peewee\nimport astra\n\n\nclass MovedFit(astra.OutputModel):\n"
        "    teff = peewee.DoubleField()\n\n\nclass MovedStar(astra.BaseTask):\n    output_model = MovedFit\n"
        "    n = luigi.IntParameter()\n\n    def run(self):\n        return {'teff': 5000.0 + self.n}\n"
    )
    (tmp_path / "moved_a.py").write_text(source)
    env = {"PYTHONPATH": str(tmp_path)}
    assert astra("db", "init", "--module", "moved_a", env=env).returncode == 0
    assert run_luigi("--module", "moved_a", "MovedStar", "--n", "1", "--local-scheduler", env=env).returncode == 0
    (tmp_path / "moved_b.py").write_text(source)  # the next release moves the class
    (tmp_path / "moved_a.py").unlink()
    assert run_luigi("--module", "moved_b", "MovedStar", "--n", "2", "--local-scheduler", env=env).returncode == 0

    shown = astra("results", "MovedStar", "--format", "csv", "--columns", "n,teff", env=env)
    assert shown.returncode == 0, shown.stderr
    assert sorted(shown.stdout.splitlines()[1:]) == ["1,5001.0", "2,5002.0"], shown.stdout


@pytest.mark.parametrize("backend", ["sqlite"])  # importing does not depend on the database
def test_results_of_a_class_in_two_modules_ask_which(database_url, tmp_path):
    """Records name two modules that both still define the class (a copy moved, the old one kept): luigi knows two
    classes of the name, and the note said it was in neither ("no task class of copy_a, copy_b (renamed or
    removed?)"), then that the output table needs the class, to be found on PYTHONPATH, where it was."""
    source = (
        "import luigi\nimport peewee\nimport astra\n\n\nclass CopiedFit(astra.OutputModel):\n"
        "    teff = peewee.DoubleField()\n\n\nclass CopiedStar(astra.BaseTask):\n    output_model = CopiedFit\n"
        "    n = luigi.IntParameter()\n\n    def run(self):\n        return {'teff': 5000.0 + self.n}\n"
    )
    env = {"PYTHONPATH": str(tmp_path)}
    for n, module in enumerate(("copy_a", "copy_b")):
        (tmp_path / f"{module}.py").write_text(source)
        assert astra("db", "init", "--module", module, env=env).returncode == 0
        ran = run_luigi("--module", module, "CopiedStar", "--n", str(n), "--local-scheduler", env=env)
        assert ran.returncode == 0, ran.stdout

    shown = astra("results", "CopiedStar", env=env)
    assert (shown.returncode, shown.stderr.splitlines()) == (2, [
        "astra: CopiedStar is a task class of more than one module (copy_a, copy_b), each with tasks of its own; name "
        "the one you mean with --module (see `astra results --help`)"
    ]), shown.stderr  # fmt: skip
    shown = astra("results", "CopiedStar", "--module", "copy_b", "--format", "csv", "--columns", "n,teff", env=env)
    assert (shown.returncode, shown.stdout.splitlines()[1:]) == (0, ["1,5001.0"]), shown.stderr


@pytest.mark.parametrize("common", [False, True])
def test_a_parameter_given_twice_finds_tasks_of_either_value(database_url, capsys, monkeypatch, common):
    """``--where integer=7 --where integer=8`` found nothing (each task has one value: "and" of the two), where
    repeating a filter means "any of these". Two parameters still combine with "and". ``common``: the values are
    too common to list, so each task is checked against them."""
    from astra.database import records
    from tests.identity_tasks import EveryParameterBase

    if common:
        monkeypatch.setattr(records, "LISTED", 0)
        monkeypatch.setattr(records, "LISTED_ALL", 0)
    tasks = [EveryParameterBase(integer=n, flag=n % 2 == 0) for n in (7, 8, 9)]
    assert luigi.build(tasks, local_scheduler=True, log_level="WARNING")

    def found(*where: str) -> list[int]:
        shown = main(capsys, "results", "EveryParameterBase", *where, "--columns", "integer", "--format", "csv")
        return sorted(int(line) for line in shown.stdout.splitlines()[1:])

    assert found("--where", "integer=7", "--where", "integer=8") == [7, 8]
    assert found("--where", "integer=7", "--where", "integer=8", "--where", "flag=true") == [8]
    assert found("--where", "integer=7", "--where", "integer=6") == [7]
    listed = main(capsys, "tasks", "list", "--where", "integer=9", "--where", "integer=8", "--json")
    assert sorted(int(task["parameters"]["integer"]) for task in json.loads(listed.stdout)) == [8, 9]
