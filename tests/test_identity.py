"""What makes two task instances the same task."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import luigi
import pytest

from astra.database import Parameter, Task, TaskParameter
from astra.identity import identity, parameter_hash, parameters, task_hash
from tests.example_tasks import Leaf, Node, Versioned, WithOptions
from tests.helpers import REPO

HASH_IN_SUBPROCESS = """
import json, sys
from astra.identity import task_hash
from tests.example_tasks import WithOptions
print(task_hash(WithOptions(options=json.loads(sys.argv[1]))))
"""


def hash_in_new_process(options_json: str, seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", HASH_IN_SUBPROCESS, options_json], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


@pytest.mark.slow
def test_equal_dicts_are_the_same_task_in_separate_processes():
    first = hash_in_new_process('{"x": 1, "y": 2}', seed="1")
    second = hash_in_new_process('{"y": 2, "x": 1}', seed="2")
    assert first == second
    assert len(first) == 64
    assert first != hash_in_new_process('{"x": 1, "y": 3}', seed="1")


def test_hidden_parameters_count_private_and_insignificant_do_not():
    base = task_hash(WithOptions(options={"a": 1}))
    assert task_hash(WithOptions(options={"a": 1}, hidden="other")) != base
    assert task_hash(WithOptions(options={"a": 1}, private="other")) == base
    assert task_hash(WithOptions(options={"a": 1}, note="other")) == base
    assert "private" not in parameters(WithOptions(options={"a": 1}))
    assert "note" in parameters(WithOptions(options={"a": 1}))
    assert "note" not in parameters(WithOptions(options={"a": 1}), significant_only=True)


def test_identity_covers_module_family_version_and_requirements():
    node = Node(n=2)
    described = identity(node)
    assert described["module"] == "tests.example_tasks"
    assert described["name"] == "Node"
    assert described["requires"] == sorted([task_hash(Leaf(i=0)), task_hash(Leaf(i=1))])
    assert task_hash(Node(n=2, start=1)) != task_hash(node)

    assert task_hash(Versioned(i=1)) != task_hash(Leaf(i=1))


def test_task_is_found_by_any_parameter_and_rebuilt_from_its_records(database_url):
    task = WithOptions(options={"b": [1, 2], "a": {"z": 1, "y": 2}}, label="find me", note="not significant")
    assert luigi.build([task], local_scheduler=True)

    wanted = Parameter.get(Parameter.parameter_hash == parameter_hash("label", "find me"))
    found = Task.select().join(TaskParameter).where(TaskParameter.parameter == wanted.pk).get()
    assert found.task_hash == task_hash(task)
    assert found.task_id == task.task_id

    stored = {
        p.parameter_name: p.parameter_value
        for p in Parameter.select().join(TaskParameter).where(TaskParameter.task == found.pk)
    }
    assert json.loads(stored["options"]) == {"a": {"y": 2, "z": 1}, "b": [1, 2]}
    assert stored["note"] == "not significant"
    task_class = luigi.task_register.Register.get_task_cls(found.task_name)
    assert importlib.import_module(found.task_module) is sys.modules[task_class.__module__]
    rebuilt = task_class.from_str_params(stored)
    assert task_hash(rebuilt) == found.task_hash
    assert rebuilt.complete() is True
