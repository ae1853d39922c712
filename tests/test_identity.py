"""What makes two task instances the same task."""

from __future__ import annotations

import datetime
import hashlib
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import luigi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from luigi.task import flatten

from astra import creation
from astra.database import Parameter, Task, TaskParameter
from astra.identity import identity, items, parameter_hash, parameters, task_hash
from tests.example_tasks import Leaf, Node, Versioned, WithOptions
from tests.helpers import REPO
from tests.identity_tasks import (
    Colour,
    EveryParameter,
    EveryParameterBase,
    NeedsEveryParameter,
    NeedsEveryParameterPositionally,
)
from tests.identity_values import EVERY_KIND

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


def test_a_key_given_as_an_int_and_as_a_str_is_not_dropped():
    """luigi writes {1: "x", "1": "y"} with the key "1" twice: its task_id differs from that of {"1": "y"}, and
    astra's did not (the JSON read back kept one "1"), so the second task was taken as done."""
    both, one = WithOptions(options={1: "x", "1": "y"}), WithOptions(options={"1": "y"})
    assert both.task_id != one.task_id
    assert task_hash(both) != task_hash(one)
    assert task_hash(WithOptions(options={"b": 1, "a": 2})) == task_hash(WithOptions(options={"a": 2, "b": 1}))


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


def test_a_parameter_named_version_or_executor_is_refused_where_the_class_is_defined():
    """luigi would make ``version`` a parameter of each instance and leave the class its Parameter object, whose text
    (with its address) astra would record as the version, and a batch would hash: another in every process."""
    import astra

    with pytest.raises(TypeError, match=r"VersionedByParameter: a luigi parameter named 'version' takes the place of "):

        class VersionedByParameter(astra.BaseTask):
            version = luigi.Parameter(default="a")

    with pytest.raises(TypeError, match=r"ExecutedByParameter: a luigi parameter named 'executor' takes the place "):

        class ExecutedByParameter(astra.BaseTask):
            executor = luigi.Parameter(default="local")

    class VersionedByText(astra.BaseTask):  # the version astra knows: a string of the class
        version = "2"

    assert identity(VersionedByText())["version"] == "2"


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


# One identity, two ways of working it out: task_hash (a task at a time, what luigi's checks use) and items (many
# parameter sets of a class at once, without creating tasks, what batches use). Both must give the hash of the
# canonical JSON of identity(), for every kind of parameter luigi has.


def reference_hash(task: luigi.Task) -> str:
    """The definition: sha256 of identity(task) written by json.dumps with sorted keys."""
    text = json.dumps(identity(task), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def check_one_identity(cls: type[luigi.Task], values: dict) -> str:
    # luigi's instance cache takes a task made with 0 for one made with False (equal in Python), whose JSON differs.
    luigi.task_register.Register.clear_instance_cache()
    task = cls(**values)
    expected = reference_hash(task)
    assert task_hash(task) == expected
    (item,) = items(cls, [values])
    assert item.task_hash == expected
    assert item.parameters == parameters(task)
    assert item.task_id == task.task_id
    return expected


def test_every_kind_of_parameter_is_covered():
    assert {name for name, _ in EveryParameter.get_params()} == set(EVERY_KIND)
    kinds = {type(p) for _, p in EveryParameter.get_params()}
    every = {getattr(luigi, name) for name in dir(luigi) if name.endswith("Parameter")}
    assert every <= kinds, f"no test values for {every - kinds}"


@pytest.mark.parametrize("cls", [EveryParameter, EveryParameterBase])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_task_hash_and_items_agree_for_every_kind_of_parameter(cls, data):
    """Random parameter sets, each parameter given or left to its default."""
    names = data.draw(st.sets(st.sampled_from(sorted(EVERY_KIND))))
    values = {name: data.draw(EVERY_KIND[name], label=name) for name in sorted(names)}
    check_one_identity(cls, values)


@pytest.mark.parametrize("cls", [NeedsEveryParameter, NeedsEveryParameterPositionally])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_items_make_the_plain_tasks_they_require_as_luigi_does(cls, data):
    """items() makes the plain task an item requires without luigi's instance cache: the same task, the same hash."""
    names = data.draw(st.sets(st.sampled_from(sorted(EVERY_KIND))))
    values = {name: data.draw(EVERY_KIND[name], label=name) for name in sorted(names)}
    luigi.task_register.Register.clear_instance_cache()
    (item,) = items(cls, [values])
    cached = luigi.task_register.Register._Register__instance_cache.values()
    assert not any(isinstance(task, EveryParameter) for task in cached)  # made quickly, not kept
    task = cls(**values)
    (required,) = flatten(task.requires())  # made by luigi, kept in its cache
    assert item.requires == [task_hash(required)]
    assert item.task_hash == task_hash(task) == reference_hash(task)
    quick = creation.quickly(task.requires)
    assert quick is not required
    assert (quick.task_id, hash(quick), quick.to_str_params()) == (
        required.task_id,
        hash(required),
        required.to_str_params(),
    )


def test_a_batch_item_keeps_the_tasks_it_was_identified_with_for_its_input():
    from workflows import EstimateSNR, SpectrumFile

    luigi.task_register.Register.clear_instance_cache()
    (item,) = items(EstimateSNR, [{"spectrum_path": "/data/spec-1.fits"}])
    target = item.task.input()  # what run() reads: the output of the SpectrumFile made when it was identified
    assert target.path == "/data/spec-1.fits"
    assert item.task.input() is not target  # a new target each time, as luigi's input() gives
    cached = luigi.task_register.Register._Register__instance_cache.values()
    assert not any(isinstance(task, SpectrumFile) for task in cached)  # not made again, nor kept by luigi
    assert item.requires == [task_hash(SpectrumFile(path="/data/spec-1.fits"))]


def test_insignificant_and_private_parameters_leave_the_hash_alone():
    base = check_one_identity(EveryParameter, {"text": "x"})
    assert check_one_identity(EveryParameter, {"text": "x", "note": "other", "private": "other"}) == base
    assert check_one_identity(EveryParameter, {"text": "x", "hidden": "other"}) != base


#: Hashes recorded by astra before task_hash and items shared one writer (commit fbb7c99): they must not change.
PINNED = {
    (EveryParameter, "defaults"): "261197afa7a0bced8e466a97447141174fdfff0f0ef66501ea6d694b12c3c1e9",
    (EveryParameter, "many"): "40c732ee7a8b0fea202929cc8d141cd4f5490df4ba7548643db7d916756d9eb7",
    (EveryParameter, "odd numbers"): "358930e2f875e6c6dbeb01524501bcf1d301e66c3a3dbfe4d2b4e15d10bbcbe4",
    (EveryParameterBase, "defaults"): "f1cc7977009c45997a4867af9f6bcf089cda4f6c22b2a8ba0251f62226a462f7",
    (EveryParameterBase, "many"): "6da750765b5370b9a3e6e3e619f4b85fec7294f0133adf666a645a292cabeb71",
    (EveryParameterBase, "odd numbers"): "e7e3f5aa1798b9bb1bc14e2051726aa77574585c870d1675cd11addc4d6af692",
}
PINNED_VALUES = {
    "defaults": {},
    "many": dict(
        text='quote " back \\ tab \t nul \x00 line \u2028 ünï 星',
        integer=-(2**70),
        real=float("nan"),
        flag=True,
        day=datetime.date(1999, 12, 31),
        hour=datetime.datetime(2021, 5, 6, 7),
        month=datetime.date(2021, 5, 1),
        interval=luigi.date_interval.Custom(datetime.date(2020, 1, 1), datetime.date(2020, 3, 1)),
        delta=datetime.timedelta(days=8, seconds=3),
        colour=Colour.BLÅ,
        colours=(Colour.GREEN, Colour.RED),
        listed=[1, "ü", [2.5, None], {"b": 1, "a": [True]}],
        tupled=((1, 2), ("x",)),
        mapping={"z": {"y": [1, {"é": None}], "x": 1e300}, "a": -0.0},
        numerical=-1e300,
        choice="ü",
        choices=("b", "a"),
        optional="x",
        optional_int=3,
        optional_float=float("inf"),
        optional_bool=False,
        optional_dict={"k": "v"},
        optional_list=[1],
        optional_tuple=(1,),
        optional_numerical=0.25,
        optional_choice="b",
        optional_path=Path("/tmp/ü"),
        path=Path("a/b"),
        task=Leaf,
        note="n",
        hidden="h",
        private="p",
    ),
    "odd numbers": {"real": -0.0, "integer": 10**20, "text": "\ud800"},
}


@pytest.mark.parametrize("cls, values", PINNED)
def test_recorded_hashes_stay_the_same(cls, values):
    assert check_one_identity(cls, PINNED_VALUES[values]) == PINNED[cls, values]
