"""Creating BaseTasks: luigi's own rules, at a fraction of luigi's cost.

A task's identity includes those of the tasks it requires, so checking one root means creating every task below it
(see :mod:`astra.identity`); most of that time went into luigi working out each new task's parameter values twice
(once to look the task up in its instance cache, once more in ``Task.__init__``), each time writing the arguments
into an error message in case one is needed, and asking the configuration for every parameter. Here the values are
worked out once per task, and when every parameter is given (and luigi's configuration has no section for the
task) simply by normalising them, which is all luigi does then too. Anything else goes to luigi.

Identifying a batch item creates the plain luigi tasks it requires too, often one ``luigi.ExternalTask`` (an input
file) per item. Inside :func:`quickly` those are made the same quick way, outside
luigi's instance cache (which would keep a million of them), when luigi would do nothing else: see :func:`_quick`.

Checking that a million items are done goes further (:class:`Maker`): the items, and the tasks their ``requires()``
makes, are made without luigi at all when luigi's ``Task.__init__`` would only set their values (:func:`light`),
with the values worked out by a plan per class and set of given names that luigi's own ``get_param_values`` made.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import luigi
from luigi.task_register import Register

T = TypeVar("T")

#: The values worked out for the task being created in this thread, for its ``Task.__init__`` to take.
_creating = threading.local()
#: ``on`` while this thread identifies or runs batch items (:func:`quickly`).
_quickly = threading.local()
#: ``maker``: the Maker whose call() this thread is in (see Maker.call), or None.
_lightly = threading.local()
#: Functions that do what luigi's own (``Task.__init__``, ``Task.get_param_values``) do, only faster (BaseTask's).
_as_luigis: set = set()


def as_luigis(function: Callable) -> Callable:
    """Mark ``function`` as doing what luigi's method of the same name does (only faster): see :func:`light`."""
    _as_luigis.add(getattr(function, "__func__", function))
    return function


class TaskRegister(Register):
    """luigi's metaclass, looking new tasks up in luigi's instance cache after working out their values once."""

    def __call__(cls, *args, **kwargs):  # noqa: N805 -- a metaclass method, as luigi's Register names it
        maker = getattr(_lightly, "maker", None)
        if maker is not None:
            return maker.create(cls, args, kwargs, TaskRegister.cached)
        return TaskRegister.cached(cls, *args, **kwargs)

    def cached(cls, *args, **kwargs):  # noqa: N805
        """The task from luigi's instance cache, created (and kept there) if it is not in it yet."""
        params = cls.get_params()
        values = cls.get_param_values(params, args, kwargs)
        cache = cls._Register__instance_cache  # luigi's, shared with every other task class
        if cache is None:  # luigi.task_register.Register.disable_instance_cache()
            return _create(cls, args, kwargs, params, values)
        key = (cls, tuple(values))
        try:
            hash(key)
        except TypeError:  # a value that cannot be hashed: no instance cache, as in luigi
            return _create(cls, args, kwargs, params, values)
        if key not in cache:
            cache[key] = _create(cls, args, kwargs, params, values)
        return cache[key]


def create(cls: type, kwargs: dict) -> luigi.Task:
    """A new ``cls(**kwargs)`` of a BaseTask class, outside luigi's instance cache, created as TaskRegister does.

    For :func:`astra.identity.items`, which creates one task per batch item only to identify it: calling the class
    itself would keep every one in luigi's instance cache, and ``type.__call__`` alone would have luigi work the
    values out once more and write the task_id that identifying it never needs.
    """
    params = cls.get_params()
    return _create(cls, (), kwargs, params, cls.get_param_values(params, (), kwargs))


class _Plain:
    """Which ``__init__`` creating a task may skip, and what it does beyond luigi's (set by astra.tasks)."""

    init: Callable | None = None  # BaseTask.__init__: creation.initialise, then ``created(task)``
    created: Callable[[luigi.Task], None] = staticmethod(lambda task: None)


def skip_init(init: Callable, created: Callable[[luigi.Task], None]) -> None:
    """Tasks whose ``__init__`` is ``init`` (BaseTask's, which does what luigi's does and then calls ``created``)
    are created without calling it: when nothing else comes between it and luigi's, what it does is known."""
    _Plain.init, _Plain.created = init, staticmethod(created)


def _plain(cls: type) -> bool:
    """Whether ``cls``'s tasks may be made without their ``__init__`` (see :func:`skip_init`), kept per class."""
    plain = cls.__dict__.get("_astra_plain")
    if plain is None:
        inits = [c for c in cls.__mro__ if "__init__" in vars(c)]
        plain = (
            _Plain.init is not None
            and cls.__new__ is object.__new__
            and len(inits) >= 2
            and inits[0].__dict__["__init__"] is _Plain.init
            and inits[1] is luigi.Task
        )
        type.__setattr__(cls, "_astra_plain", plain)
    return plain


def _create(cls: type, args: tuple, kwargs: dict, params: list, values: list) -> luigi.Task:
    if _plain(cls):
        # What BaseTask.__init__ would do (creation.initialise with these very values), without the calls.
        task = object.__new__(cls)
        _set_values(task, values)
        _Plain.created(task)
        return task
    # Nested creations (an __init__ that creates other tasks) keep their own; the outer one is put back after.
    outer = getattr(_creating, "task", None)
    _creating.task = (cls, args, kwargs, params, values)
    try:
        return type.__call__(cls, *args, **kwargs)
    finally:
        _creating.task = outer


def initialise(task: luigi.Task, luigis: Callable, args: tuple, kwargs: dict) -> None:
    """``luigis(*args, **kwargs)``, where ``luigis`` is the next ``__init__`` after BaseTask's for ``task``.

    When that is luigi's own ``Task.__init__`` and the values were just worked out, this does what it does without
    working them out again, and leaves ``task_id`` (an md5 of the parameters as JSON) to ``BaseTask.task_id``, for
    when it is first asked: a task created only to identify the one above it never needs it.
    """
    creating = getattr(_creating, "task", None)
    if (
        getattr(luigis, "__func__", None) is not luigi.Task.__init__
        or creating is None
        or creating[0] is not type(task)
        or not _same(creating, task.get_params(), args, kwargs)
    ):
        luigis(*args, **kwargs)
        return
    _set_values(task, creating[4])


def _set_values(task: luigi.Task, values: list[tuple[str, object]]) -> None:
    """What luigi's ``Task.__init__`` does with the values, but for the task_id (and its hash)."""
    for name, value in values:
        setattr(task, name, value)
    task.param_kwargs = dict(values)
    task._warn_on_wrong_param_types()
    task.set_tracking_url = None
    task.set_status_message = None
    task.set_progress_percentage = None


def task_id(task: luigi.Task) -> str:
    """luigi's ``task_id`` of ``task``, as its ``Task.__init__`` works it out."""
    return luigi.task.task_id_str(task.get_task_family(), task.to_str_params(only_significant=True, only_public=True))


def param_values(cls: type, params: list, args: Sequence, kwargs: dict, luigis: Callable) -> list[tuple[str, object]]:
    """What luigi's ``Task.get_param_values(params, args, kwargs)`` returns (``luigis`` is that method)."""
    creating = getattr(_creating, "task", None)
    if creating is not None and creating[0] is cls and _same(creating, params, args, kwargs):
        return list(creating[4])
    values = _given_values(cls, params, args, kwargs)
    return luigis(params, args, kwargs) if values is None else values


def _given_values(cls: type, params: list, args: Sequence, kwargs: dict) -> list[tuple[str, object]] | None:
    """luigi's parameter values when each parameter is given once and no config section applies, else None.

    Then luigi only normalises each value, the positional arguments in the order of the positional parameters.
    Defaults, a config section for the task, or any mistake (luigi's error) are left to luigi.
    """
    if len(args) + len(kwargs) != len(params):
        return None
    given = kwargs
    if args:
        given = dict(zip([name for name, p in params if p.positional], args))
        if len(given) != len(args) or given.keys() & kwargs.keys():
            return None  # too many positional arguments, or one given twice: luigi's error
        given.update(kwargs)
    named = dict(params)
    if given.keys() != named.keys() or cls.get_task_family() in SECTIONS_READ_ONCE.sections():
        return None
    return [(name, _as_stored(named[name].normalize(given[name]))) for name, _ in params]


class _SectionsReadOnce(threading.local):
    """The sections of luigi's configuration, read once for all the tasks created in this thread inside ``with
    SECTIONS_READ_ONCE:`` (blocks that create thousands of tasks, and change no configuration), else each time.

    luigi asks for them as it creates each task (for its warning about options no parameter takes), and so does
    :func:`_given_values`; finding luigi's configuration object and listing its sections cost about as much as the
    rest of creating a task that is given all its values.
    """

    names: frozenset[str] | None = None
    depth = 0

    def sections(self) -> frozenset[str] | list[str]:
        if self.names is None:
            sections = luigi.configuration.get_config().sections()
            if not self.depth:
                return sections
            self.names = frozenset(sections)
        return self.names

    def __enter__(self) -> None:
        self.depth += 1

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if not self.depth:
            self.names = None


SECTIONS_READ_ONCE = _SectionsReadOnce()


def quickly(call: Callable[[], T]) -> T:
    """``call()``, with the plain luigi tasks it creates in this thread made as :func:`_quick` says.

    For :func:`astra.identity.items`, which creates the tasks each batch item requires, one set per item.
    """
    outer = getattr(_quickly, "on", False)
    _quickly.on = True
    try:
        return call()
    finally:
        _quickly.on = outer


def _quick(cls: type, args: tuple, kwargs: dict) -> luigi.Task | None:
    """A plain luigi task made without luigi's instance cache and with its values worked out once, or None.

    Only for a class that requires nothing (made again for each item, such a task costs no more than looking it up
    in the cache, while one that requires others would have all of those identified again each time) and that
    luigi's ``Task.__init__`` would make from the values alone; and only when each parameter is given
    (:func:`_given_values`). The task is the one luigi would make: same values, same task_id.
    """
    plain = cls.__dict__.get("_astra_quick")
    if plain is None:
        init = next(c for c in cls.__mro__ if "__init__" in vars(c))
        plain = (
            init is luigi.Task
            and cls.__new__ is object.__new__
            and cls.requires is luigi.Task.requires
            and getattr(cls.get_param_values, "__func__", None) is luigi.Task.get_param_values.__func__
            and getattr(cls.get_task_family, "__func__", None) is luigi.Task.get_task_family.__func__
        )
        type.__setattr__(cls, "_astra_quick", plain)
    if not plain:
        return None
    values = _given_values(cls, cls.get_params(), args, kwargs)
    if values is None:
        return None
    task = object.__new__(cls)
    _set_values(task, values)
    task.task_id = task_id(task)
    task._Task__hash = hash(task.task_id)
    return task


#: luigi's own Register.__call__ (also when this module is imported again, by importlib.reload say).
_luigis_call = getattr(Register.__call__, "luigis", Register.__call__)


def _call(cls, *args, **kwargs):  # noqa: N805 -- luigi's Register.__call__, quicker inside quickly()
    maker = getattr(_lightly, "maker", None)
    if maker is not None:
        return maker.create(cls, args, kwargs, _quickly_or_luigis)
    return _quickly_or_luigis(cls, *args, **kwargs)


def _quickly_or_luigis(cls, *args, **kwargs):  # noqa: N805
    if getattr(_quickly, "on", False):
        task = _quick(cls, args, kwargs)
        if task is not None:
            return task
    return _luigis_call(cls, *args, **kwargs)


# Every plain luigi task is created through its metaclass's __call__: the one hook where the tasks a batch item
# requires can be made quickly. Outside quickly() it is luigi's own, one thread-local look-up later.
_call.luigis = _luigis_call
Register.__call__ = _call


def _as_stored(value: object) -> object:
    return tuple(value) if isinstance(value, (list, set)) else value  # lists and sets become tuples, as in luigi


def _same(creating: tuple, params: list, args: Sequence, kwargs: dict) -> bool:
    """Whether these are the very arguments of the task being created (so its values are known)."""
    _, given_args, given_kwargs, given_params, _ = creating
    if len(args) != len(given_args) or len(kwargs) != len(given_kwargs) or params != given_params:
        return False
    # A loop rather than all(map(...)): a task has a few arguments, and this runs for every task a root requires.
    for arg, given in zip(args, given_args):
        if arg is not given:
            return False
    for (name, value), (given_name, given) in zip(kwargs.items(), given_kwargs.items()):
        if name != given_name or value is not given:
            return False
    return True


def making(maker: object, function: Callable[[], T]) -> T:
    """``function()``, with every task it makes in this thread made by ``maker.create(cls, args, kwargs,
    otherwise)`` (a :class:`Maker`, or what stands in for one) and any other plain luigi task quickly."""
    outer = getattr(_lightly, "maker", None), getattr(_quickly, "on", False)
    _lightly.maker, _quickly.on = maker, True
    try:
        return function()
    finally:
        _lightly.maker, _quickly.on = outer


def light(cls: type) -> bool:
    """Whether a task of ``cls`` can be made without luigi, as :meth:`Maker.make` does, the same task but for
    luigi's ``task_id`` (a BaseTask works its own out when asked; a plain luigi task made so has none).

    So when luigi's ``Task.__init__`` (after BaseTask's, which only makes it faster) would do nothing but set the
    values that ``get_param_values`` (luigi's, or BaseTask's) gives: no ``__new__``, ``__init__``,
    ``__setattr__`` or ``__getattribute__`` of its own or a mixin's, and each parameter stored under its own name.
    """
    known = cls.__dict__.get("_astra_light")
    if known is None:
        inits = [c for c in cls.__mro__ if "__init__" in vars(c)]
        own = inits[: inits.index(luigi.Task)] if luigi.Task in inits else None
        known = (
            own is not None
            and all(vars(c)["__init__"] in _as_luigis for c in own)
            and getattr(cls.get_param_values, "__func__", None) in {*_as_luigis, luigi.Task.get_param_values.__func__}
            and cls.__new__ is object.__new__
            and cls.__setattr__ is object.__setattr__
            and cls.__getattribute__ is object.__getattribute__
            and cls._warn_on_wrong_param_types is luigi.Task._warn_on_wrong_param_types
            and all(getattr(p, "_attribute_name", name) == name for name, p in cls.get_params())
        )
        type.__setattr__(cls, "_astra_light", known)
    return known


#: For map(isinstance, values, _LISTS): the values luigi stores as tuples.
_LISTS = itertools.repeat((list, set))


def _itself(value: T) -> T:
    return value


#: What luigi's ``Task.__init__`` sets after the values (but for ``task_id`` and its hash).
_UNSET = {"set_tracking_url": None, "set_status_message": None, "set_progress_percentage": None}


class Maker:
    """Tasks made for one pass over a batch's items, with luigi's values but without luigi's cost.

    :meth:`values` gives the values luigi would: the first time for a class and the names given (and how many
    given by position), luigi's own ``get_param_values`` works them out (defaults, a config section, or its
    error), and the plan it leaves (how to normalise each given value, the values of the others) gives them
    from then on; as for luigi, the configuration is taken as fixed while the items are looked at. :meth:`make`
    makes a task of a :func:`light` class from them. Inside :meth:`call`, the tasks of light classes that
    require nothing are made so, and kept in :attr:`made` for the caller to hash; any other task is made by
    luigi's own rules (inside :func:`quickly`), luigi's instance cache included, with no light task inside it.
    """

    def __init__(self) -> None:
        self._plans: dict[tuple, tuple[list[str], list[Callable], dict]] = {}
        self._light: dict[type, bool] = {}
        #: The tasks the last :meth:`call` made light, by ``id()``.
        self.made: dict[int, luigi.Task] = {}

    def values(self, cls: type, args: tuple, kwargs: dict) -> dict:
        """luigi's values of ``cls(*args, **kwargs)``, in the order of ``cls.get_params()`` (a new dict)."""
        key = (cls, len(args), *kwargs)
        plan = self._plans.get(key)
        if plan is None:
            return self._plan(cls, args, kwargs, key)
        names, normalizers, template = plan
        values = template.copy()
        given = (*args, *kwargs.values()) if args else kwargs.values()
        if normalizers is None:  # luigi's Parameter.normalize for each: the value itself
            values.update(zip(names, given))
            if not any(map(isinstance, given, _LISTS)):
                return values
            normalizers = [_itself] * len(names)
        for name, normalize, value in zip(names, normalizers, given):
            value = normalize(value)
            values[name] = tuple(value) if isinstance(value, (list, set)) else value  # as luigi stores it
        return values

    def keeps_given(self, cls: type, args: tuple, kwargs: dict) -> bool:
        """Whether :meth:`values` of ``cls`` with arguments like these (given before) keeps each given value as it
        is: luigi's ``Parameter.normalize`` for each (values that are no list or set)."""
        plan = self._plans.get((cls, len(args), *kwargs))
        return plan is not None and plan[1] is None

    def _plan(self, cls: type, args: tuple, kwargs: dict, key: tuple) -> dict:
        params = cls.get_params()
        values = dict(cls.get_param_values(params, args, kwargs))  # luigi's rules, or its error
        named = dict(params)
        names = [name for name, p in params if p.positional][: len(args)] + list(kwargs)
        normalizers = [named[name].normalize for name in names]
        if all(getattr(n, "__func__", None) is luigi.Parameter.normalize for n in normalizers):
            normalizers = None
        self._plans[key] = (names, normalizers, values.copy())
        return values

    def make(self, cls: type, values: dict) -> luigi.Task:
        """A task of a :func:`light` class with these values (from :meth:`values`), outside luigi's instance cache."""
        task = object.__new__(cls)
        state = task.__dict__
        state.update(values)
        state["param_kwargs"] = values
        state.update(_UNSET)
        return task

    def call(self, function: Callable[[], T]) -> T:
        """``function()`` (a ``requires()``), with the tasks it makes made as the class docstring says."""
        self.made = {}
        return making(self, function)

    def untouched(self, task: luigi.Task) -> bool:
        """Whether ``task`` was made light by the last :meth:`call` and nothing was set on it but its values."""
        return self.made.get(id(task)) is task and len(task.__dict__) == len(task.param_kwargs) + 1 + len(_UNSET)

    def create(self, cls: type, args: tuple, kwargs: dict, otherwise: Callable) -> luigi.Task:
        """Inside :meth:`call`: ``cls(*args, **kwargs)``, light if it can be, else by ``otherwise``."""
        light_class = self._light.get(cls)
        if light_class is None:
            light_class = self._light[cls] = light(cls) and cls.requires is luigi.Task.requires
        if light_class:
            task = self.make(cls, self.values(cls, args, kwargs))
            self.made[id(task)] = task
            return task
        # luigi's own, with nothing light inside: this task may be kept (luigi's instance cache), and its
        # ``__init__`` may make others and keep them.
        _lightly.maker = None
        try:
            return otherwise(cls, *args, **kwargs)
        finally:
            _lightly.maker = self
