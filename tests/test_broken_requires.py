"""A broken ``requires()`` stops only what depends on it, as in plain luigi.

The DAG is ``Top -> [Parent -> [Good(1), BrokenInput], Good(2)]`` where ``BrokenInput.requires()`` raises. Plain
luigi runs ``Good(1)`` and ``Good(2)``, names ``BrokenInput`` and leaves ``Parent`` and ``Top`` pending; astra must
do the same, although the identity of ``Top`` includes that of everything below it. Both run through the real luigi
command line (``luigi --module tests.broken_requires_tasks ...``): the astra tasks, and the same DAG of plain luigi
tasks with ``LocalTarget`` files.
"""

from __future__ import annotations

import re

import luigi
import pytest

from astra.database import Task
from tests.broken_requires_tasks import Good, LoopA, PlainSiblings, Siblings
from tests.helpers import astra as astra_command
from tests.helpers import run_luigi


def outcome(output: str) -> str:
    """luigi's execution summary, with the plain tasks' names and root parameter made like the astra ones."""
    text = output.split("===== Luigi Execution Summary =====")[1]
    text = re.sub(r"root=[^,)]*,?\s*", "", text).replace("Plain", "")
    # With one parameter fewer, luigi abbreviates two Good tasks as Good(i=1,2).
    return text.replace("(, ", "(").replace("Good(i=1) and Good(i=2)", "Good(i=1,2)")


@pytest.mark.slow
def test_a_broken_requires_stops_only_what_depends_on_it(database_url, tmp_path):
    plain = run_luigi(
        "--module", "tests.broken_requires_tasks", "PlainTop", "--root", str(tmp_path), "--local-scheduler"
    )
    astra_run = run_luigi("--module", "tests.broken_requires_tasks", "Top", "--local-scheduler")

    expected = outcome(plain.stdout)
    assert "2 ran successfully" in expected and "Good(i=1,2)" in expected, plain.stdout
    assert "BrokenInput()" in expected, plain.stdout
    assert outcome(astra_run.stdout) == expected, astra_run.stdout
    assert astra_run.stdout.count("Broken cannot say what it needs") >= 1
    assert sorted(Task.select(Task.task_name, Task.status).tuples()) == [("Good", "done"), ("Good", "done")]

    # `why` says which task is broken, in one line.
    why = astra_command("tasks", "why", "--module", "tests.broken_requires_tasks", "Top")
    assert why.returncode == 1 and why.stdout == "", why.stdout
    assert why.stderr.startswith("astra: cannot identify BrokenInput(): its requires() raised ValueError"), why.stderr
    assert len(why.stderr.strip().splitlines()) == 1, why.stderr


def test_a_requirement_whose_output_raises_stops_only_what_depends_on_it(database_url, tmp_path):
    """``BaseTask.deps()`` asks about every requirement at once: one whose ``output()`` raises must not make the
    whole deps() raise, which blamed the task above it and left its other requirements unrun."""
    plain = luigi.build([PlainSiblings(root=str(tmp_path))], local_scheduler=True, detailed_summary=True)
    with_astra = luigi.build([Siblings()], local_scheduler=True, detailed_summary=True)
    expected = outcome(plain.summary_text)
    assert "Good(i=3)" in expected and "NoOutput()" in expected, expected
    assert outcome(with_astra.summary_text) == expected
    assert Good(i=3).complete()


@pytest.mark.slow
def test_a_requires_loop_ends_the_run_saying_so(sqlite_url):
    """luigi leaves both tasks pending; the run ended without a line of astra's (it had not opened the database)."""
    done = run_luigi("--module", "tests.broken_requires_tasks", "LoopA", "--local-scheduler")
    assert done.returncode != 0, done.stdout
    assert done.stdout.strip().splitlines()[-1] == "ERROR: astra: LoopA() is not done: LoopA() requires itself"
    assert not LoopA().complete()
