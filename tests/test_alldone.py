"""The all-done check of batch items that each require a task: the fast way (items made without luigi) gives the
very identities of the slow way and of luigi's own tasks, and never finds done an item that is not."""

from __future__ import annotations

import gc
import hashlib
import json
import threading
import uuid
from contextlib import contextmanager, nullcontext
from unittest import mock

import luigi
import numpy as np
import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from astra import creation, fixed_requires, identity
from astra.database import Task, create_schema
from astra.database.connection import reset
from astra.identity import items, parameters, required_hashes, task_hash
from astra.targets import forget_cached
from tests import alldone_tasks as tasks
from tests.helpers import POSTGRES
from tests.identity_tasks import EveryParameter, NeedsEveryParameter, NeedsEveryParameterPositionally, WithInit
from tests.identity_values import EVERY_KIND

#: numpy scalars where luigi takes numbers (luigi keeps them as they are, and writes them with str()).
NUMPY_KIND = {
    "integer": st.integers(-(2**63), 2**63 - 1).map(np.int64) | st.integers(0, 255).map(np.uint8),
    "real": st.floats(allow_nan=True, allow_infinity=True).map(np.float64)
    | st.floats(width=32, allow_nan=True).map(np.float32),
    "whole": st.integers(-(2**62), 2**62).map(np.int64),
}


def reference_hash(task: luigi.Task) -> str:
    """The definition: sha256 of identity(task) written by json.dumps with sorted keys."""
    text = json.dumps(identity.identity(task), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@contextmanager
def fast_only():
    """items() may not fall back to the slow way inside."""

    def refuse(cls, parameter_sets):
        raise AssertionError(f"items() of {cls.__name__} took the slow way")

    with mock.patch.object(identity, "_created", refuse):
        yield


def slow_items(cls: type, parameter_sets: list[dict]) -> list[identity.Item]:
    return list(identity._created(cls, parameter_sets))


def check_fast_is_slow(cls: type, values: dict, fast: bool = True) -> str:
    """The item's identity three ways (fast, slow, luigi's task), all equal to the definition; the hash."""
    luigi.task_register.Register.clear_instance_cache()  # luigi's cache takes 0 for False: each case afresh
    task = cls(**values)
    expected = reference_hash(task)
    assert task_hash(task) == expected
    with fast_only() if fast else nullcontext():
        (item,) = items(cls, [values])
    (slow,) = slow_items(cls, [values])
    assert item.task_hash == slow.task_hash == expected
    assert item.parameters == slow.parameters == parameters(task)
    assert item.requires == slow.requires == required_hashes(task)
    assert item.task_id == slow.task_id == task.task_id
    return expected


def drawn(data, kinds: dict) -> dict:
    names = data.draw(st.sets(st.sampled_from(sorted(EVERY_KIND))))
    return {name: data.draw(kinds.get(name, EVERY_KIND[name]), label=name) for name in sorted(names)}


@pytest.mark.parametrize(
    "cls",
    [
        tasks.NeedsEveryParameterByName,
        tasks.NeedsUpstream,
        tasks.NeedsSeveral,
        NeedsEveryParameter,
        NeedsEveryParameterPositionally,
    ],
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fast_and_slow_identities_agree_for_every_kind_of_parameter(cls, data):
    """Random parameter sets (each parameter given or left to its default; significant=False, hidden, private and
    None-able ones among them), numpy scalars where luigi takes numbers; the requirement an astra task or a plain
    luigi one, by keyword or by position, alone or in a dict of lists."""
    kinds = {**EVERY_KIND, **{name: EVERY_KIND[name] | kind for name, kind in NUMPY_KIND.items()}}
    check_fast_is_slow(cls, drawn(data, kinds))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_values_passed_by_name_are_written_straight_from_the_items_values(data):
    """The fixed way's shortcut (identity._required_texts): parameters that keep their values as given."""
    kinds = {
        "text": EVERY_KIND["text"],
        "string": EVERY_KIND["string"] | st.lists(st.integers(), max_size=2),  # a list: luigi keeps a tuple
        "integer": EVERY_KIND["integer"] | NUMPY_KIND["integer"],
        "real": EVERY_KIND["real"] | NUMPY_KIND["real"],
        "note": st.text(),
        "hidden": st.text(),
    }
    names = data.draw(st.sets(st.sampled_from(sorted(kinds))))
    sets = [{name: data.draw(kinds[name], label=name) for name in sorted(names)} for _ in range(3)]
    with mock.patch.object(identity, "_made_light", side_effect=AssertionError("made light")):
        for values, item in zip(sets, [*items(tasks.NeedsSimpleByName, sets)]):
            luigi.task_register.Register.clear_instance_cache()
            assert item.task_hash == reference_hash(tasks.NeedsSimpleByName(**values))
    for values in sets:
        check_fast_is_slow(tasks.NeedsSimpleByName, values)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), extra=st.integers() | st.integers(-(2**70), 2**70), loose=st.text())
def test_a_subclass_with_parameters_of_its_own_and_clone_agrees(data, extra, loose):
    check_fast_is_slow(tasks.NeedsUpstreamMore, {**drawn(data, EVERY_KIND), "extra": extra, "loose": loose})


FIXED = [tasks.NeedsEveryParameterByName, tasks.NeedsLeaf, tasks.NeedsPlain, tasks.NeedsSimpleByName]
NOT_FIXED = [
    tasks.NeedsUpstream,  # **self.param_kwargs
    tasks.NeedsUpstreamMore,  # self.clone()
    tasks.NeedsSeveral,  # a local variable
    tasks.Generates,
    tasks.RaisesInRequires,
    tasks.Branches,
    tasks.Formats,
    tasks.CallsAMethod,
    tasks.CallsAParameter,
    tasks.AsksTaskId,
    tasks.ChangesWhatItRequires,
    tasks.NeedsChain,  # Link requires others
]


def test_which_requires_are_a_fixed_function_of_the_parameters():
    for cls in FIXED:
        assert fixed_requires.calls(cls), cls
    for cls in NOT_FIXED:
        assert fixed_requires.calls(cls) is None, cls
    (call,) = fixed_requires.calls(tasks.NeedsPlain)
    assert call.cls is tasks.Plain and call.arguments({"i": 5}) == ((5,), {})
    every, upstream = fixed_requires.calls(tasks.NeedsEveryParameterByName)
    assert upstream.arguments({"text": "t", "integer": 1, "real": 2.0}) == (
        (),
        {"text": "t", "integer": 1, "real": 2.0, "choice": "ü", "note": "constant"},
    )


@pytest.mark.parametrize("cls", FIXED)
def test_a_fixed_requires_is_not_called_per_item(cls):
    luigi.task_register.Register.clear_instance_cache()
    sets = [{"i": i} for i in range(20)] if "i" in dict(cls.get_params()) else [{"text": "x"}, {}, {"text": "y"}]
    # Neither the slow way nor the light one, which call requires() per item: the fixed calls, read once.
    with fast_only(), mock.patch.object(identity, "_made_light", side_effect=AssertionError("made light")):
        fast = list(items(cls, sets))
    assert [item.task_hash for item in fast] == [reference_hash(cls(**values)) for values in sets]


@pytest.mark.parametrize("cls", [c for c in NOT_FIXED if c not in (tasks.RaisesInRequires, tasks.AsksTaskId)])
def test_what_is_not_a_fixed_function_is_asked_per_item_and_agrees(cls):
    values = {"k": 12} if cls is tasks.NeedsChain else {} if "integer" in dict(cls.get_params()) else {"i": 3}
    check_fast_is_slow(cls, values)


def test_a_version_on_the_class_or_the_task_is_part_of_the_identity(monkeypatch):
    before = check_fast_is_slow(tasks.NeedsUpstream, {"integer": 3})
    monkeypatch.setattr(tasks.Upstream, "version", "3")  # a new version of what the items require
    after = check_fast_is_slow(tasks.NeedsUpstream, {"integer": 3})
    assert after != before
    monkeypatch.setattr(tasks.NeedsUpstream, "version", "")
    assert check_fast_is_slow(tasks.NeedsUpstream, {"integer": 3}) not in (before, after)
    # A requires() that sets a version on the task it made, and on the item itself: as luigi's tasks would have it.
    check_fast_is_slow(tasks.ChangesWhatItRequires, {"i": 1})


@pytest.mark.parametrize(
    "cls, values",
    [
        (tasks.NeedsPlain, {"i": 4}),
        (tasks.Generates, {"i": 4}),
        (tasks.NeedsLeaf, {"i": np.int64(4), "release": "dr20"}),
        (tasks.NeedsChain, {"k": 30}),  # a requirement that requires others: hashed by task_hash
    ],
)
def test_more_shapes_of_requires_take_the_fast_way(cls, values):
    check_fast_is_slow(cls, values)


@pytest.mark.parametrize("cls", [tasks.AsksTaskId, tasks.HashesThem])
def test_a_requires_that_needs_what_a_light_task_lacks_falls_back_to_the_slow_way(cls):
    sets = [{"i": i} for i in range(5)]
    fast = list(items(cls, sets))  # the first item meets the missing task_id, and it and the rest go the slow way
    assert [item.task_hash for item in fast] == [item.task_hash for item in slow_items(cls, sets)]
    assert all(item.requires for item in fast)
    for item, values in zip(fast, sets):
        assert item.task_hash == check_fast_is_slow(cls, values, fast=False)


def test_a_class_that_is_not_light_goes_the_slow_way():
    assert not creation.light(tasks.WithOwnInit)
    assert not creation.light(WithInit)
    assert creation.light(tasks.NeedsLeaf) and creation.light(tasks.Plain) and creation.light(EveryParameter)
    with mock.patch.object(identity, "_made_light", side_effect=AssertionError("made light")):
        check_fast_is_slow(tasks.WithOwnInit, {"i": 3}, fast=False)


def test_a_requires_that_raises_raises_as_the_slow_way_does():
    assert [item.values["i"] for item in items(tasks.RaisesInRequires, [{"i": 0}, {"i": 2}])] == [0, 2]
    with pytest.raises(ValueError, match="no leaf for 3"):
        list(items(tasks.RaisesInRequires, [{"i": 0}, {"i": 3}, {"i": 4}]))
    with pytest.raises(ValueError, match="no leaf for 3"):
        slow_items(tasks.RaisesInRequires, [{"i": 0}, {"i": 3}])


def test_light_tasks_stay_out_of_luigis_cache_and_the_item_task_is_luigis():
    luigi.task_register.Register.clear_instance_cache()
    with fast_only():
        made = list(items(tasks.NeedsPlain, [{"i": i} for i in range(3)]))
    cached = luigi.task_register.Register._Register__instance_cache.values()
    assert not any(isinstance(task, (tasks.Plain, tasks.NeedsPlain)) for task in cached)
    task = made[1].task  # made when asked, as the slow way makes it (what it requires made quickly)
    assert task.input().path == "/data/dr19/1.fits"
    assert task.task_id == tasks.NeedsPlain(i=1).task_id


# The check itself, on each backend: the batch is complete only if every item is recorded done under the identity
# it has today; a requirement that is new (a new version of it, never run) makes every item a new task, not done.


@pytest.fixture
def alldone_database(backend, tmp_path, monkeypatch):
    """An empty astra database on ``backend``: SQLite, or a PostgreSQL database alldone_<random>, dropped after."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'astra.db'}"
    else:
        url = request_postgres_database()
    monkeypatch.setenv("ASTRA_DATABASE_URL", url)
    forget_cached()
    create_schema()
    try:
        yield url
    finally:
        forget_cached()
        reset()
        if backend != "sqlite":
            admin(f"drop database if exists {url.rpartition('/')[2]} with (force)")


def admin(statement: str) -> None:
    connection = psycopg2.connect(f"{POSTGRES}/postgres", connect_timeout=5)
    connection.autocommit = True
    try:
        connection.cursor().execute(statement)
    finally:
        connection.close()


def request_postgres_database() -> str:
    name = f"alldone_{uuid.uuid4().hex[:12]}"
    try:
        admin(f"create database {name}")
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES}: {exc}")
    return f"{POSTGRES}/{name}"


def both_ways_complete(batch: luigi.Task) -> bool:
    """batch.complete() the fast way, checked against the slow way, each as a new process would answer (luigi's
    instance cache keeps each task's hash, worked out once: with the version it had then)."""
    forget_cached()
    luigi.task_register.Register.clear_instance_cache()
    with fast_only():
        fast = batch.complete()
    forget_cached()
    luigi.task_register.Register.clear_instance_cache()
    with mock.patch.object(identity, "_made_light", lambda cls, sets, maker: identity._created(cls, sets)):
        slow = batch.complete()
    assert fast == slow
    return fast


def test_a_requirement_not_done_makes_the_check_say_not_done(alldone_database, monkeypatch):
    batch = tasks.Items(n=300)
    assert not both_ways_complete(batch)
    tasks.NeededItems(n=300).run()
    batch.run()
    assert both_ways_complete(batch)

    # A new version of what the items require: a requirement never run, so each item is a new task, not done.
    monkeypatch.setattr(tasks.Needed, "version", "2")
    assert not both_ways_complete(batch)
    assert [item.task_hash for item in batch.pending()] == [item.task_hash for item in slow_items(
        tasks.NeedsLeaf, [{"i": i} for i in range(300)])]  # fmt: skip
    tasks.NeededItems(n=300).run()  # the new version of what they need
    batch.run()  # runs them all again, under their new identities
    assert both_ways_complete(batch)
    monkeypatch.setattr(tasks.Needed, "version", "")
    assert both_ways_complete(batch)  # the old records still stand for the old identities

    # One item's record gone: not done, and that item alone is pending.
    (lost,) = items(tasks.NeedsLeaf, [{"i": 123}])
    Task.delete().where(Task.task_hash == lost.task_hash).execute()
    assert not both_ways_complete(batch)
    forget_cached()
    assert [item.values["i"] for item in batch.pending()] == [123]


def test_a_check_puts_the_garbage_collectors_setting_back(alldone_database):
    """A check runs Python's collector less often while it identifies items (astra.batch._fewer_collections), and
    leaves the threshold as it found it: after a check that finds the items done or not, one that raises, and two
    checks in threads at once."""
    before = gc.get_threshold()
    watched = tasks.WatchedItems
    watched.seen = []
    assert not watched(n=50).complete()
    tasks.NeededItems(n=50).run()
    watched(n=50).run()  # work, not a check: the threshold as it was
    assert watched.seen[0] > before[0] and set(watched.seen[1:]) == {before[0]}
    watched.seen = []
    assert watched(n=50).complete()
    with pytest.raises(RuntimeError, match="parameter_sets"):
        watched(n=50, fail=True).complete()
    assert len(watched.seen) == 2 and all(seen > before[0] for seen in watched.seen)
    assert gc.get_threshold() == before

    watched.meeting = threading.Barrier(2)
    answers = []
    try:
        checks = [threading.Thread(target=lambda n=n: answers.append(watched(n=n).complete())) for n in (40, 60)]
        for check in checks:
            check.start()
        for check in checks:
            check.join(timeout=60)
    finally:
        watched.meeting = None
    assert sorted(answers) == [False, True]
    assert gc.get_threshold() == before
