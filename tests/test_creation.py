"""BaseTasks are created faster than luigi creates tasks (astra/creation.py), and come out the same.

And a root whose own record is done is asked about alone, yet a change far upstream still makes it incomplete.
"""

from __future__ import annotations

import logging
import warnings

import luigi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from luigi.task import task_id_str

from astra import creation
from astra.identity import task_hash
from astra.targets import forget_cached
from tests.helpers import looked_for_lost_rows, record_at_once
from tests.identity_tasks import (
    EveryParameter,
    EveryParameterBase,
    Link,
    Spring,
    WarmLeaf,
    WarmRoot,
    WithInit,
    WithMixinInit,
    record_done,
)
from tests.identity_values import EVERY_KIND


def luigis_values(cls: type, *args, **kwargs) -> list:
    """The values luigi's own Task.get_param_values gives."""
    return luigi.Task.get_param_values.__func__(cls, cls.get_params(), args, kwargs)


def same_as_luigi(made: luigi.Task, *args, **kwargs) -> None:
    """``made`` has the values, task_id and hash luigi's own rules give for these arguments."""
    plain = luigi.task_register.Register.__call__(EveryParameter, *args, **kwargs)  # the same parameters, plain
    assert made.to_str_params() == plain.to_str_params()
    assert repr(made.param_kwargs) == repr(plain.param_kwargs)
    expected_id = task_id_str(type(made).get_task_family(), plain.to_str_params(True, True))
    assert made.task_id == expected_id
    assert hash(made) == hash(expected_id)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_tasks_have_the_values_task_id_and_hash_luigi_gives(data):
    names = data.draw(st.sets(st.sampled_from(sorted(EVERY_KIND))))
    values = {name: data.draw(EVERY_KIND[name], label=name) for name in sorted(names)}
    luigi.task_register.Register.clear_instance_cache()
    task = EveryParameterBase(**values)
    same_as_luigi(task, **values)
    try:
        hash(tuple(task.param_kwargs.values()))
    except TypeError:
        return  # luigi keeps no instance of it either
    assert EveryParameterBase(**values) is task  # luigi's instance cache


def test_fields_are_those_luigi_sets():
    """What luigi's Task.__init__ sets (but the task_id, worked out when asked): a new luigi sets more, say."""
    task = WarmLeaf(i=123456)
    plain = object.__new__(WarmLeaf)
    luigi.Task.__init__(plain, i=123456)
    assert set(vars(task)) | {"_Task__hash", "_astra_task_id"} == set(vars(plain)) | {"_astra_task_id"}
    assert task.task_id == plain.task_id
    assert hash(task) == hash(plain) == plain._Task__hash
    assert task == plain


def test_positional_arguments_defaults_and_own_init():
    assert WarmLeaf(7) is WarmLeaf(i=7)
    task = WithInit(3)
    assert (task.i, task.label, task.doubled) == (3, "x", 6)
    assert task.made_before is WarmLeaf(i=-1)
    assert task.task_id == task_id_str("WithInit", {"i": "3", "label": "x"})
    mixed = WithMixinInit(i=4)
    assert mixed.mixed is True and mixed.i == 4
    assert mixed.task_id == task_id_str("WithMixinInit", {"i": "4"})
    with pytest.raises(luigi.parameter.UnknownParameterException):
        WarmLeaf(i=1, j=2)
    with pytest.raises(luigi.parameter.MissingParameterException):
        WarmLeaf()


def test_configuration_gives_values_and_warns_of_unknown_keys(monkeypatch):
    config = luigi.configuration.get_config()
    monkeypatch.setattr(config, "_sections", {**config._sections})  # put the configuration back afterwards
    config.set("WithInit", "label", "from the config")
    assert WithInit(i=1).label == "from the config"
    config.set("WarmLeaf", "unknown", "1")
    WarmLeaf._unconsumed_params = set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        WarmLeaf(i=99)
    assert any(issubclass(w.category, luigi.parameter.UnconsumedParameterWarning) for w in caught)


def test_a_walk_reads_the_configuration_sections_once_and_still_follows_them(monkeypatch):
    """A root's walk lists luigi's sections once for all the leaves it creates: a section for the leaves' class still
    sends them luigi's way (its warning about an option no parameter takes), and the walk leaves no snapshot behind."""
    config = luigi.configuration.get_config()
    monkeypatch.setattr(config, "_sections", {**config._sections})  # put the configuration back afterwards
    config.set("WarmLeaf", "stray", "1")
    WarmLeaf._unconsumed_params = set()
    fresh()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task_hash(WarmRoot(n=3))
    assert [w for w in caught if issubclass(w.category, luigi.parameter.UnconsumedParameterWarning)]
    assert creation.SECTIONS_READ_ONCE.names is None and creation.SECTIONS_READ_ONCE.depth == 0


class QueryCounter(logging.Handler):
    def __enter__(self) -> QueryCounter:
        self.count = 0
        self.logger = logging.getLogger("peewee")
        self.level = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self)
        return self

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)


N = 5000
#: Links of the long chain: more than Python's recursion would follow (about 1,000 frames).
LINKS = 1500


def fresh() -> None:
    """As in a new process: no task instances (each keeps its hash), nothing known about what is done."""
    luigi.task_register.Register.clear_instance_cache()
    forget_cached()


@pytest.fixture
def new_versions():
    """A MonkeyPatch for versions: no task made under a version set here outlives the test. Its own, so that its
    ``undo()`` leaves the test's database (``$ASTRA_DATABASE_URL``, set by ``monkeypatch``) as it is."""
    fresh()
    with pytest.MonkeyPatch.context() as patch:
        yield patch
    fresh()


@pytest.mark.slow
def test_a_done_root_is_asked_alone_and_a_new_version_far_below_makes_it_incomplete(database_url, new_versions):
    record_done(WarmLeaf, [{"i": i} for i in range(N)])
    record_done(WarmRoot, [{"n": N}])
    fresh()
    looked_for_lost_rows(WarmRoot)
    with QueryCounter() as queries:
        assert WarmRoot(n=N).complete() is True
    assert queries.count == 1  # the root alone, not the 5,000 below it

    new_versions.setattr(WarmLeaf, "version", "2")
    fresh()
    root = WarmRoot(n=N)
    assert root.complete() is False
    assert WarmLeaf(i=0).complete() is False
    new_versions.undo()
    fresh()
    assert WarmRoot(n=N).complete() is True  # the same code: the same identity, still done


@pytest.mark.slow
def test_a_new_version_at_the_far_end_of_a_long_chain_makes_its_last_link_incomplete(database_url, new_versions):
    record_done(Spring, [{}])
    record_at_once(Link, [{"k": k} for k in range(LINKS)])  # a batch would take a transaction per link
    fresh()
    last = Link(k=LINKS - 1)
    assert last.complete() is True
    done_hash = task_hash(last)

    new_versions.setattr(Spring, "version", "2")
    fresh()
    last = Link(k=LINKS - 1)
    assert task_hash(last) != done_hash
    assert last.complete() is False
