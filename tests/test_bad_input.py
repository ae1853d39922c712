"""Awkward parameter values are stored and matched exactly (every query is parametrised)."""

from __future__ import annotations

import json

import luigi
import pytest

from astra.database import Parameter, Task
from astra.identity import parameter_hash, task_hash
from astra.targets import forget_cached
from tests.example_tasks import WithOptions
from tests.helpers import run_luigi

AWKWARD = {
    "quotes": 'it\'s "quoted" `and` back\\slashed',
    "sql": "'); drop table astra.task; --",
    "unicode": "Ωμέγα 星 🚀 \u00e9\u0301 \u200b",
    "newlines": "line one\nline two\r\n\ttabbed\n",
    "large": "é" * 100_000,
    "empty": "",
}


@pytest.mark.parametrize("kind", sorted(AWKWARD))
def test_awkward_values_round_trip(database_url, kind):
    value = AWKWARD[kind]
    task = WithOptions(options={"value": value, kind: [value]}, label=value)
    assert luigi.build([task], local_scheduler=True)

    stored = Parameter.get(Parameter.parameter_hash == parameter_hash("label", value))
    assert stored.parameter_value == value
    options = Parameter.get(Parameter.parameter_name == "options").parameter_value
    assert json.loads(options) == {"value": value, kind: [value]}
    assert Task.get(Task.task_hash == task_hash(task)).status == "done"
    assert Task.select().count() == 1  # the SQL fragment did not drop anything

    forget_cached()
    assert WithOptions(options={kind: [value], "value": value}, label=value).complete() is True
    assert WithOptions(options={"value": value, kind: [value]}, label=value + " ").complete() is False


@pytest.mark.slow
def test_awkward_values_from_the_command_line(database_url):
    value = AWKWARD["sql"] + AWKWARD["unicode"] + AWKWARD["quotes"]
    args = ["--module", "tests.example_tasks", "WithOptions", "--options", json.dumps({"v": value})]
    first = run_luigi(*args, "--label", value, "--local-scheduler")
    assert "1 ran successfully" in first.stdout, first.stdout
    second = run_luigi(*args, "--label", value, "--local-scheduler")
    assert "1 complete ones were encountered" in second.stdout, second.stdout
    assert Parameter.get(Parameter.parameter_hash == parameter_hash("label", value)).parameter_value == value


@pytest.mark.parametrize(
    ("name", "offer"), [("EstimateSNRR", "(did you mean EstimateSNR, EstimateSNRBatch?)"), ("Zzzzqq", "")]
)
def test_an_unknown_task_is_one_line_not_a_traceback(sqlite_url, name, offer):
    done = run_luigi("--module", "workflows", name, "--local-scheduler", env={"ASTRA_DATABASE_URL": sqlite_url})
    assert done.returncode != 0
    assert done.stdout.strip().splitlines() == [
        f"astra: luigi knows no task {name}{' ' + offer if offer else ''}; check its name, and that --module names "
        "the module that defines it"
    ]


@pytest.mark.parametrize(
    ("body", "line", "says"),
    [
        (  # the class statement
            "class Fit(astra.BaseTask):\n    version = luigi.Parameter()\n",
            5,
            "definedbad.Fit: a luigi parameter named 'version' takes the place of astra's task version",
        ),
        (  # a batch's parameter named as a method astra calls: every task that required the batch failed with
            # "TypeError: 'tuple' object is not callable"
            "class Fit(astra.BatchTask):\n    items = luigi.ListParameter()\n",
            5,
            "definedbad.Fit: a luigi parameter named 'items' takes the place of BatchTask.items, which astra calls",
        ),
        (  # a float version: bumping 1.1 to 1.10 would change nothing
            "class Fit(astra.BaseTask):\n    version = 1.10\n",
            5,
            "definedbad.Fit: version = 1.1 is a float, which can stay the same when the version changes",
        ),
        (  # the field
            "class Fit(astra.OutputModel):\n    flux = astra.ArrayField('complex64')\n",
            6,
            "astra.ArrayField(complex64): the dtype must be one of float32, float64",
        ),
    ],
)
def test_a_class_astra_cannot_use_is_one_line_naming_its_file_and_line(sqlite_url, tmp_path, body, line, says):
    (tmp_path / "definedbad.py").write_text(f"import luigi\nimport astra\n\n\n{body}")
    done = run_luigi(
        "--module", "definedbad", "Fit", "--local-scheduler",
        env={"ASTRA_DATABASE_URL": sqlite_url, "PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode != 0
    [said] = done.stdout.strip().splitlines()
    assert said.startswith(f"astra: {tmp_path / 'definedbad.py'}, line {line}: ") and says in said, said


PARSED = """import datetime
import luigi
import astra


class Fit(astra.BaseTask):
    n = luigi.IntParameter()
    night = luigi.DateParameter(default=datetime.date(2020, 1, 1))
    options = luigi.DictParameter(default={})

    def run(self):
        return {"n": self.n}


class Broken(astra.BaseTask):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        raise RuntimeError("a bug of the user's own")
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "config", "said"),
    [
        (["--n", "abc"], "", "astra: Fit --n abc: ValueError: invalid literal for int() with base 10: 'abc' (not a"),
        (["--n", "1", "--night", "2020-13-45"], "", "astra: Fit --night 2020-13-45: ValueError: time data "),
        (["--n", "1", "--options", "{oops"], "", "astra: Fit --options {oops: JSONDecodeError: Expecting property"),
        ([], "[Fit]\nn = abc\n", "astra: [Fit] n in luigi's configuration: ValueError: invalid literal for int()"),
        ([], "", "astra: Fit needs --n, which has no default (luigi --module parsedbad Fit --help lists its"),
        (["--n", ""], "", "astra: Fit --n '' is empty, and --n has no default: give it a value (luigi --module"),
    ],
)
def test_a_bad_parameter_value_is_one_line_naming_it(sqlite_url, tmp_path, args, config, said):
    (tmp_path / "parsedbad.py").write_text(PARSED)
    (tmp_path / "luigi.cfg").write_text(config)
    env = {"ASTRA_DATABASE_URL": sqlite_url, "PYTHONPATH": str(tmp_path)}
    env["LUIGI_CONFIG_PATH"] = str(tmp_path / "luigi.cfg")
    done = run_luigi("--module", "parsedbad", "Fit", *args, "--local-scheduler", env=env)
    assert done.returncode == 1, done.stdout
    [line] = done.stdout.strip().splitlines()
    assert line.startswith(said), line
    assert Task.select().count() == 0


def test_an_error_of_the_tasks_own_making_is_not_the_command_lines(sqlite_url, tmp_path):
    (tmp_path / "parsedbad.py").write_text(PARSED)
    env = {"ASTRA_DATABASE_URL": sqlite_url, "PYTHONPATH": str(tmp_path)}
    broken = run_luigi("--module", "parsedbad", "Broken", "--local-scheduler", env=env)
    assert broken.returncode == 40 and "RuntimeError: a bug of the user's own" in broken.stdout
    assert "Traceback" in broken.stdout
