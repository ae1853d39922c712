"""The identity of a task: what makes two task instances "the same task" for astra.

A task is identified by its module, its luigi family, its ``version``, its significant parameters (hidden ones
included, private ones excluded, written as canonical strings) and the identities of the tasks it requires, hashed
with sha256. Including what it requires means that bumping the version of one task, or changing what feeds it,
gives everything downstream a new identity too, so luigi runs those again. This is the only place where a task's
identity is computed.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import inspect
import json
from collections.abc import Callable, Iterable, Iterator

import luigi
from luigi.parameter import ParameterVisibility
from luigi.task import flatten

from astra import creation

# Parameters whose serialised form is JSON: luigi writes dicts in insertion order, so two equal dicts could
# serialise differently. astra re-writes them with sorted keys.
_JSON_PARAMETERS = (
    luigi.DictParameter,
    luigi.ListParameter,
    luigi.TupleParameter,
    luigi.OptionalDictParameter,
    luigi.OptionalListParameter,
    luigi.OptionalTupleParameter,
)


def canonical_value(parameter: luigi.Parameter, value: object) -> str:
    """``value`` as the string luigi would parse back, with JSON written in one canonical way."""
    text = parameter.serialize(value)
    if isinstance(parameter, _JSON_PARAMETERS) and text:
        try:
            text = json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        except ValueError:
            pass
    return text


def parameters(task: luigi.Task, significant_only: bool = False) -> dict[str, str]:
    """The task's non-private parameters as canonical strings, sorted by name."""
    layout = _layout(type(task))
    shown = layout.significant if significant_only else layout.shown
    return {name: write(getattr(task, name)) for name, write in shown}


class _Layout:
    """How the identity of a task class is written, worked out once per class.

    Its non-private parameters sorted by name, each with the function that writes its value as a canonical string,
    and the significant ones among them. Like ``BaseTask.get_params``, this takes a class's parameters as fixed
    once it is defined. :meth:`hash` is where :func:`task_hash` and :func:`items` both hash an identity.
    """

    __slots__ = ("shown", "significant", "keys", "leaf_frame")

    def __init__(self, cls: type[luigi.Task]) -> None:
        shown = sorted(
            ((name, p) for name, p in cls.get_params() if p.visibility != ParameterVisibility.PRIVATE),
            key=lambda pair: pair[0],
        )
        self.shown = [(name, _writer(p)) for name, p in shown]
        self.significant = [(name, _writer(p)) for name, p in shown if p.significant]
        self.keys = [(name, f"{_json_string(name)}:") for name, _ in self.significant]
        #: For a class whose identity follows from the values alone (then it requires nothing): the version and the
        #: frame of its tasks under that version, worked out once rather than once per task (a root over 5,000
        #: leaves identifies 5,000 of them). None for other classes.
        self.leaf_frame: tuple[str, tuple[str, str]] | None = None
        if _values_only(cls):
            self.leaf_frame = (task_version(cls), _frame(cls.__module__, cls.task_family, task_version(cls), []))

    def frame_of_leaf(self, task: luigi.Task) -> tuple[str, str] | None:
        """The frame of ``task``, of a class whose identity follows from the values alone; None for other tasks."""
        if self.leaf_frame is None or "_astra_required_tasks" in task.__dict__:
            return None
        version, frame = self.leaf_frame
        current = task_version(task)
        if current != version:  # a class given another version since (tests do)
            frame = _frame(task.task_module, task.task_family, current, [])
            self.leaf_frame = (current, frame)
        return frame

    def hash(self, frame: tuple[str, str], texts: dict[str, str]) -> str:
        """The sha256 (hex) of the identity with ``frame`` (from :func:`_frame`) and these parameters.

        ``texts`` holds at least the significant parameters, as :func:`parameters` writes them. What is hashed is
        ``json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` of the :func:`identity`
        dict, written here without json.dumps, which takes several times as long to walk a dict.
        """
        try:
            body = ",".join([key + _json_string(texts[name]) for name, key in self.keys])
        except TypeError:  # a parameter whose serialize() gives something other than a string
            body = ",".join([key + _canonical_json(texts[name]) for name, key in self.keys])
        head, tail = frame
        return hashlib.sha256(_utf8(head + body + tail)).hexdigest()


def _frame(module: str, name: str, version: str, requires: list[str]) -> tuple[str, str]:
    """The JSON text of an identity before and after its parameters (keys in sorted order, as json.dumps has them)."""
    return (
        f'{{"module":{_json_string(module)},"name":{_json_string(name)},"parameters":{{',
        f'}},"requires":[{",".join(map(_json_string, requires))}],"version":{_json_string(version)}}}',
    )


def _writer(parameter: luigi.Parameter) -> Callable[[object], str]:
    if isinstance(parameter, _JSON_PARAMETERS):
        return functools.partial(canonical_value, parameter)
    return parameter.serialize


def _layout(cls: type[luigi.Task]) -> _Layout:
    layout = cls.__dict__.get("_astra_layout")
    if layout is None:
        layout = _Layout(cls)
        type.__setattr__(cls, "_astra_layout", layout)
    return layout


def task_version(task: luigi.Task) -> str:
    """The ``version`` string a task class declares ('' when it declares none)."""
    return str(getattr(task, "version", "") or "")


class IdentityError(Exception):
    """A task's identity cannot be worked out, because a ``requires()`` at or below it raised (or loops).

    Such a task can be neither recorded nor found done; luigi meets the same error when it expands the task that
    raised, and blames that one.
    """


def identity(task: luigi.Task) -> dict:
    """What a task's hash is computed from."""
    return _identity(task, required_hashes(task))


def _identity(task: luigi.Task, requires: list[str]) -> dict:
    return {
        "module": task.task_module,
        "name": task.task_family,
        "version": task_version(task),
        "parameters": parameters(task, significant_only=True),
        "requires": requires,
    }


def requirements(task: luigi.Task) -> object:
    """What ``task.requires()`` gives; for a batch item, what it gave when the item was identified (:func:`items`),
    so that its ``input()`` uses those very tasks rather than making them again."""
    kept = task.__dict__.get("_astra_required_tasks")
    return task.requires() if kept is None else kept


def required_hashes(task: luigi.Task) -> list[str]:
    """The sorted, distinct hashes of the tasks ``task`` requires."""
    # task_hash keeps the ones it hashed: calling requires() again would create (or look up) every required task
    # a second time, a good part of the cost of identifying a batch item.
    known = task.__dict__.get("_astra_requires")
    if known is not None:
        return list(known)
    return sorted({task_hash(required) for required in flatten(task.requires())})


def task_hash(task: luigi.Task) -> str:
    """The sha256 (hex) that identifies ``task`` in ``astra.task.task_hash``.

    The hash includes the hashes of everything ``task`` requires, so this walks the whole DAG below it, depth
    first with a stack of its own rather than by recursion: a task that requires the previous night's run may sit
    on a chain of thousands. Raises :class:`IdentityError` when a ``requires()`` on the way raises.
    """
    # luigi keeps one instance per task, and parameters never change, so the hash (or the reason there is none)
    # is worked out once per process and kept on the instance.
    cached = task.__dict__.get("_astra_task_hash")
    if cached is not None:
        return cached
    # A walk may create thousands of tasks (a root's 5,000 leaves), all kept by luigi's instance cache: every 700
    # new objects would start the garbage collector on the young ones, every tenth time on older ones too, to find
    # nothing to free (~10% of a walk over 5,000 leaves). So it pauses for the walk (unless something else paused
    # it), and the tasks the walk creates ask luigi's configuration once, not each.
    collecting = gc.isenabled()
    if collecting:
        gc.disable()
    try:
        with creation.SECTIONS_READ_ONCE:
            return _walk(task)
    finally:
        if collecting:
            gc.enable()


def _walk(task: luigi.Task) -> str:
    """:func:`task_hash` of a task not identified yet."""
    path: list[tuple[luigi.Task, list[luigi.Task], int]] = []  # (task, what it requires, next one to look at)
    on_path: set[int] = set()
    current: luigi.Task | None = task
    while True:
        if current is not None:  # go down into ``current``
            error = current.__dict__.get("_astra_identity_error")
            if error is None and id(current) in on_path:
                error = IdentityError(f"{current} requires itself")
            if error is None:
                layout = _layout(type(current))
                frame = layout.frame_of_leaf(current)
                if frame is not None:
                    # It requires nothing and its class says all but its values: hash it here, in one step.
                    _identify(current, layout, frame, [], path)
                    if not path:
                        return current.__dict__["_astra_task_hash"]
                    current = None
                    continue
                try:
                    path.append((current, flatten(requirements(current)), 0))
                    on_path.add(id(current))
                except Exception as exc:
                    error = IdentityError(f"cannot identify {current}: its requires() raised {exc!r}")
                    error.__cause__ = exc
            if error is not None:
                # Everything on the path requires ``current``, directly or not: none of it has an identity.
                for below, _, _ in path:
                    below.__dict__["_astra_identity_error"] = error
                raise error.with_traceback(None)
            current = None
        below, requires, i = path[-1]
        while i < len(requires) and "_astra_task_hash" in requires[i].__dict__:
            i += 1
        if i < len(requires):
            path[-1] = (below, requires, i + 1)
            current = requires[i]
            continue
        path.pop()
        on_path.discard(id(below))
        hashes = sorted({required.__dict__["_astra_task_hash"] for required in requires})
        frame = _frame(below.task_module, below.task_family, task_version(below), hashes)
        _identify(below, _layout(type(below)), frame, hashes, path)
        if not path:
            return below.__dict__["_astra_task_hash"]


def _identify(
    task: luigi.Task,
    layout: _Layout,
    frame: tuple[str, str],
    hashes: list[str],
    path: list[tuple[luigi.Task, list[luigi.Task], int]] = (),
) -> None:
    """Keep on ``task`` its hash and those of what it requires (``hashes``); :func:`task_hash` walks ``path``."""
    try:
        texts = {name: write(getattr(task, name)) for name, write in layout.significant}
        task.__dict__["_astra_task_hash"] = layout.hash(frame, texts)
        task.__dict__["_astra_requires"] = hashes
    except Exception as exc:  # a parameter that cannot be serialised
        error = IdentityError(f"cannot identify {task}: {exc!r}")
        error.__cause__ = exc
        # Everything on the path requires ``task``, directly or not: none of it has an identity.
        for above, _, _ in [*path, (task, None, None)]:
            above.__dict__["_astra_identity_error"] = error
        raise error from exc


def recorded_task_hash(module: str, name: str, parameters: dict[str, str]) -> str | None:
    """The hash the task recorded as ``module``, ``name`` and ``parameters`` has today (None if it cannot be made).

    The code may have changed since the record was made (a new ``version``, a new parameter, another upstream):
    then the answer differs from the recorded hash.
    """
    try:
        task = luigi.task_register.load_task(module, name, parameters)
        return task_hash(task)
    except Exception:  # the module, class or a parameter is gone, or its requires() raises
        return None


def _canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


#: A string as json.dumps(..., ensure_ascii=False) writes it.
_json_string = json.encoder.encode_basestring


class Item:
    """One parameter set of a task class, with the identity its task would have (see :func:`items`)."""

    __slots__ = ("cls", "values", "task_hash", "parameters", "requires", "_task", "_task_id")

    def __init__(
        self,
        cls: type[luigi.Task],
        values: dict[str, object],
        task_hash: str,
        parameters: dict[str, str],
        requires: list[str],
        task: luigi.Task | None = None,
    ) -> None:
        self.cls = cls
        self.values = values  # parameter values, as the task would hold them
        self.task_hash = task_hash
        self.parameters = parameters  # non-private parameters as canonical strings, as in astra.parameter
        self.requires = requires  # hashes of the tasks it requires
        self._task = task
        self._task_id: str | None = None

    @property
    def task(self) -> luigi.Task:
        """The task itself (created on first use, outside luigi's instance cache so a million of them can go)."""
        if self._task is None:
            self._task = type.__call__(self.cls, **self.values)
        return self._task

    @property
    def task_id(self) -> str:
        """luigi's task_id of the task (worked out only when needed: finding items done does not need it)."""
        if self._task_id is None:
            if self._task is not None:
                self._task_id = self._task.task_id
            else:
                public = {
                    name: p.serialize(self.values[name])
                    for name, p in self.cls.get_params()
                    if p.significant and p.visibility == ParameterVisibility.PUBLIC
                }
                self._task_id = luigi.task.task_id_str(self.cls.get_task_family(), public)
        return self._task_id


def items(cls: type[luigi.Task], parameter_sets: Iterable[dict]) -> Iterator[Item]:
    """The identities of ``cls(**values)`` for many parameter sets: the same hashes :func:`task_hash` gives.

    A class that requires nothing is hashed straight from the values, without creating a luigi task per set: luigi
    takes tens of microseconds to create one, too slow for millions. Other classes (see :func:`_values_only`) are
    created and hashed with the tasks they require, plain ones made quickly (:func:`creation.quickly`). Either
    way the text is written and hashed by the same :class:`_Layout` as in :func:`task_hash`, and
    tests/test_identity.py checks both against :func:`identity` for every kind of parameter, and the quickly made
    tasks against luigi's.
    """
    params = cls.get_params()
    if not _values_only(cls):
        astra_task = isinstance(cls, creation.TaskRegister)
        for values in parameter_sets:
            # Outside luigi's instance cache, so that a million of them can go once identified; so are the plain
            # tasks they require (creation.quickly).
            task = creation.create(cls, values) if astra_task else type.__call__(cls, **values)
            hashed = creation.quickly(functools.partial(_identify_item, task))
            yield Item(cls, task.param_kwargs, hashed, parameters(task), required_hashes(task), task)
        return
    named = dict(params)
    layout = _layout(cls)
    shown = layout.shown
    frame = _frame(cls.__module__, cls.task_family, task_version(cls), [])
    # Per tuple of given names (in their order, which is the order of the values): how to normalise each given
    # value, and the values of the others. luigi's own rules (config sections, unknown or missing parameters)
    # decide those, and they stay the same for every set that gives the same names. A million items usually give
    # one tuple of names, so the loop below does only what each item needs.
    plans: dict[tuple, tuple[list, dict]] = {}
    for given in parameter_sets:
        keys = tuple(given)
        plan = plans.get(keys)
        if plan is None:
            resolved = dict(cls.get_param_values(params, [], given))
            defaults = {name: value for name, value in resolved.items() if name not in given}
            plan = plans[keys] = ([(name, named[name].normalize) for name in keys], defaults)
        normalizers, defaults = plan
        values = {}
        for name, normalize in normalizers:
            value = normalize(given[name])
            values[name] = tuple(value) if isinstance(value, (list, set)) else value  # as luigi stores it
        values.update(defaults)
        texts = {name: write(values[name]) for name, write in shown}
        yield Item(cls, values, layout.hash(frame, texts), texts, [])


def _identify_item(task: luigi.Task) -> str:
    # The item keeps what its requires() gave (see requirements()), made quickly by the caller.
    task.__dict__["_astra_required_tasks"] = task.requires()
    return task_hash(task)


def _values_only(cls: type[luigi.Task]) -> bool:
    """Whether the identity of a task of ``cls`` follows from its parameter values alone, without creating it.

    Not so when it requires other tasks, or when its module, name, version or values could depend on the instance:
    a ``task_module``, ``task_family`` or ``version`` of its own that is not a plain string, or an ``__init__`` of
    its own (which may change them).
    """
    if cls.requires is not luigi.Task.requires:
        return False
    for name in ("task_module", "task_family"):
        if inspect.getattr_static(cls, name) is not luigi.Task.__dict__[name]:
            return False
    if not isinstance(inspect.getattr_static(cls, "version", ""), str):
        return False
    init = next(c for c in cls.__mro__ if "__init__" in vars(c))
    return init is luigi.Task or init.__module__.split(".")[0] == "astra"


def parameter_hash(name: str, value: str) -> str:
    """The sha256 (hex) that identifies one (name, value) pair in ``astra.parameter``."""
    return hashlib.sha256(_utf8(f"{name}\x00{value}")).hexdigest()


def _utf8(text: str) -> bytes:
    """``text`` as UTF-8; a lone surrogate (an undecodable byte of a file name) hashes too, instead of raising."""
    return text.encode("utf-8", "surrogatepass")
