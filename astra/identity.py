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
import itertools
import json
import operator
from collections.abc import Callable, Iterable, Iterator

import luigi
from luigi.parameter import ParameterVisibility
from luigi.task import flatten

from astra import creation, fixed_requires

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
            parsed = json.loads(text, object_pairs_hook=_without_repeated_keys)
            text = json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        except ValueError:  # not JSON, or a key twice (an int and a str key, {1: "x", "1": "y"}): luigi's text
            pass
    return text


def _without_repeated_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object as a dict; ValueError if a key comes twice, which a dict would keep once (and then two values
    luigi tells apart, {1: "x", "1": "y"} and {"1": "y"}, would be one task)."""
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("a key twice")
    return found


def parameters(task: luigi.Task, significant_only: bool = False) -> dict[str, str]:
    """The task's non-private parameters as canonical strings, sorted by name."""
    layout = _layout(type(task))
    texts = layout.significant_texts if significant_only else layout.shown_texts
    return dict(zip(texts.names, texts.of_task(task)))


class _Texts:
    """How to write some parameters of a class as canonical strings (sorted by name), all at once."""

    __slots__ = ("names", "writers", "str_only", "_attributes", "_items")

    def __init__(self, writers: list[tuple[str, Callable[[object], str]]]) -> None:
        self.names = [name for name, _ in writers]
        self.writers = [write for _, write in writers]
        self.str_only = all(write is str for write in self.writers)  # then map(str, ...) writes them, in C
        self._attributes = _getter(operator.attrgetter, self.names)
        self._items = _getter(operator.itemgetter, self.names)

    def of_task(self, task: luigi.Task) -> list[str]:
        """Of a task's values (read as getattr(task, name), which luigi's parameters answer)."""
        return self._write(self._attributes(task))

    def of_values(self, values: dict) -> list[str]:
        """Of values by name (at least these names)."""
        return self._write(self._items(values))

    def _write(self, values: tuple) -> list[str]:
        if self.str_only:
            return list(map(str, values))
        return [write(value) for write, value in zip(self.writers, values)]


def _getter(kind: Callable, names: list) -> Callable[[object], tuple]:
    """``kind(*names)`` (operator.attrgetter or itemgetter), always giving a tuple."""
    if len(names) > 1:
        return kind(*names)
    if names:
        one = kind(names[0])
        return lambda source: (one(source),)
    return lambda source: ()


class _Layout:
    """How the identity of a task class is written, worked out once per class.

    Its non-private parameters sorted by name, each with the function that writes its value as a canonical string,
    and the significant ones among them. Like ``BaseTask.get_params``, this takes a class's parameters as fixed
    once it is defined. :meth:`hash` is where :func:`task_hash` and :func:`items` both hash an identity.
    """

    __slots__ = ("shown", "significant", "shown_texts", "significant_texts", "pick", "prefixes", "leaf_frame")

    def __init__(self, cls: type[luigi.Task]) -> None:
        shown = sorted(
            ((name, p) for name, p in cls.get_params() if p.visibility != ParameterVisibility.PRIVATE),
            key=lambda pair: pair[0],
        )
        self.shown = [(name, _writer(p)) for name, p in shown]
        self.significant = [(name, _writer(p)) for name, p in shown if p.significant]
        self.shown_texts = _Texts(self.shown)
        self.significant_texts = _Texts(self.significant)
        # The significant texts among the shown ones (None: all of them are).
        picked = [i for i, (_, p) in enumerate(shown) if p.significant]
        self.pick = None if len(picked) == len(shown) else _getter(operator.itemgetter, picked)
        self.prefixes = [f"{_json_string(name)}:" for name, _ in self.significant]
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

    def significant_of(self, shown: list[str]) -> list[str]:
        """The significant ones of the texts of the shown parameters (in the order of :attr:`shown`)."""
        return shown if self.pick is None else list(self.pick(shown))

    def hash(self, frame: tuple[str, str], texts: list[str]) -> str:
        """The sha256 (hex) of the identity with ``frame`` (from :func:`_frame`) and these parameters.

        ``texts`` are the significant parameters in the order of :attr:`significant`, as :func:`parameters`
        writes them. What is hashed is ``json.dumps(identity, sort_keys=True, separators=(",", ":"),
        ensure_ascii=False)`` of the :func:`identity` dict, written here without json.dumps, which takes several
        times as long to walk a dict.
        """
        try:
            body = ",".join(map(operator.add, self.prefixes, map(_json_string, texts)))
        except TypeError:  # a parameter whose serialize() gives something other than a string
            body = ",".join(map(operator.add, self.prefixes, map(_canonical_json, texts)))
        head, tail = frame
        return hashlib.sha256((head + body + tail).encode("utf-8", "surrogatepass")).hexdigest()  # as _utf8()


def _frame(module: str, name: str, version: str, requires: list[str]) -> tuple[str, str]:
    """The JSON text of an identity before and after its parameters (keys in sorted order, as json.dumps has them)."""
    return (
        f'{{"module":{_json_string(module)},"name":{_json_string(name)},"parameters":{{',
        f'}},"requires":[{",".join(map(_json_string, requires))}],"version":{_json_string(version)}}}',
    )


class _Frames:
    """:func:`_frame` of the tasks met in one pass over a batch's items, with what their class alone decides (module,
    name, version: see :func:`_fixed_by_class`) worked out once per class and pass."""

    def __init__(self) -> None:
        self._fixed: dict[type, tuple[str, str] | None] = {}

    def of(self, task: luigi.Task, requires: list[str]) -> tuple[str, str]:
        """:func:`_frame` of ``task``, which requires the tasks hashed ``requires``."""
        cls = type(task)
        fixed = self._fixed.get(cls, False)
        if fixed is False:
            fixed = self._fixed[cls] = self._fixed_by(cls)
        if fixed is None or "version" in task.__dict__:  # a version of the task's own shadows its class's
            return _frame(task.task_module, task.task_family, task_version(task), requires)
        head, version = fixed
        return head, f'}},"requires":[{",".join(map(_json_string, requires))}],"version":{version}}}'

    def of_class(self, cls: type[luigi.Task], requires: list[str]) -> tuple[str, str]:
        """:func:`_frame` of a task of ``cls`` (:func:`_fixed_by_class`) that has no version of its own."""
        fixed = self._fixed.get(cls, False)
        if fixed is False:
            fixed = self._fixed[cls] = self._fixed_by(cls)
        head, version = fixed
        return head, f'}},"requires":[{",".join(map(_json_string, requires))}],"version":{version}}}'

    @staticmethod
    def _fixed_by(cls: type[luigi.Task]) -> tuple[str, str] | None:
        """The frame's text before the parameters, and the version as JSON, if the class alone decides them."""
        if not _fixed_by_class(cls):
            return None
        version = task_version(cls)
        return _frame(cls.__module__, cls.task_family, version, [])[0], _json_string(version)


def _fixed_by_class(cls: type[luigi.Task]) -> bool:
    """Whether the class alone decides the module, name and version of its tasks: luigi's ``task_module`` and
    ``task_family`` and a plain string for ``version`` (which a task could still shadow with one of its own)."""
    for name in ("task_module", "task_family"):
        if inspect.getattr_static(cls, name) is not luigi.Task.__dict__[name]:
            return False
    return isinstance(inspect.getattr_static(cls, "version", ""), str)


def _writer(parameter: luigi.Parameter) -> Callable[[object], str]:
    if isinstance(parameter, _JSON_PARAMETERS):
        return functools.partial(canonical_value, parameter)
    if getattr(parameter.serialize, "__func__", None) is luigi.Parameter.serialize:
        return str  # what luigi's Parameter.serialize does, without a call of Python code
    return parameter.serialize


def _layout(cls: type[luigi.Task]) -> _Layout:
    layout = cls.__dict__.get("_astra_layout")
    if layout is None:
        layout = _Layout(cls)
        type.__setattr__(cls, "_astra_layout", layout)
    return layout


def task_version(task: luigi.Task | type[luigi.Task]) -> str:
    """The ``version`` string of a task ('' when it has none): its class's, or its own (a property, or set in
    ``__init__``)."""
    return str(getattr(task, "version", "") or "")


def class_version(cls: type[luigi.Task]) -> str | None:
    """The version a class gives all its tasks; None if each task works its own out (a ``version`` property)."""
    return task_version(cls) if isinstance(inspect.getattr_static(cls, "version", ""), str) else None


class IdentityError(Exception):
    """A task's identity cannot be worked out, because a ``requires()`` at or below it raised (or loops).

    Such a task can be neither recorded nor found done; luigi meets the same error when it expands the task that
    raised, and blames that one.
    """


#: Told of each parameter set of :func:`items` that has no identity, and why.
Unidentified = Callable[[dict, IdentityError], None]


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


def _kept(required: object) -> object:
    """What a ``requires()`` gave, in a form that can be read more than once: a generator (or other iterator) run
    into a list, as luigi's ``input()`` would map it. Hashing the item reads it once, ``input()`` again."""
    if required is None or isinstance(required, (luigi.Task, list, tuple, dict)):
        return required
    return list(required)


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
        task.__dict__["_astra_task_hash"] = layout.hash(frame, layout.significant_texts.of_task(task))
        task.__dict__["_astra_requires"] = hashes
    except Exception as exc:  # a parameter that cannot be serialised
        error = IdentityError(f"cannot identify {_name(task)}: {exc!r}")
        error.__cause__ = exc
        # Everything on the path requires ``task``, directly or not: none of it has an identity.
        for above, _, _ in [*path, (task, None, None)]:
            above.__dict__["_astra_identity_error"] = error
        raise error from exc


def _name(task: luigi.Task) -> str:
    """The task as luigi writes it, or, when a value luigi cannot serialise keeps it from that, by its values."""
    try:
        return str(task)
    except Exception:
        values = ", ".join(f"{name}={value!r}" for name, value in getattr(task, "param_kwargs", {}).items())
        return f"{type(task).__name__}({values})"


def recorded_task_hash(module: str, name: str, parameters: dict[str, str]) -> str | None:
    """The hash the task recorded as ``module``, ``name`` and ``parameters`` has today (None if it cannot be made).

    The code may have changed since the record was made (a new ``version``, a new parameter, another upstream):
    then the answer differs from the recorded hash.
    """
    try:
        task = luigi.task_register.load_task(module, name, parameters)
        layout = _layout(type(task))
        # Hashed with the texts recorded, not those of the values read back from them: a value need not read back
        # as itself (a FloatParameter given 2 is recorded "2", read back 2.0, written "2.0"), and the same task
        # would then look changed. A parameter the record lacks (new since) has the text of the value it got.
        names, texts = layout.significant_texts.names, layout.significant_texts.of_task(task)
        texts = [parameters.get(name, text) for name, text in zip(names, texts)]
        frame = _frame(task.task_module, task.task_family, task_version(task), required_hashes(task))
        return layout.hash(frame, texts)
    except Exception:  # the module, class or a parameter is gone, or its requires() raises
        return None


def _canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


#: A string as json.dumps(..., ensure_ascii=False) writes it.
_json_string = json.encoder.encode_basestring


class Item:
    """One parameter set of a task class, with the identity its task would have (see :func:`items`)."""

    __slots__ = ("cls", "values", "task_hash", "_parameters", "requires", "_required", "_task", "_task_id")

    def __init__(
        self,
        cls: type[luigi.Task],
        values: dict[str, object],
        task_hash: str,
        parameters: dict[str, str] | tuple[list[str], list[str]],
        requires: list[str],
        task: luigi.Task | None = None,
        required: dict[str, type] | tuple[list[str], tuple[type, ...]] | None = None,
    ) -> None:
        self.cls = cls
        self.values = values  # parameter values, as the task would hold them
        self.task_hash = task_hash
        self._parameters = parameters  # see parameters; or (names, texts), made a dict when first asked
        self.requires = requires  # hashes of the tasks it requires
        self._required = required  # see required; or (hashes, their classes); None: ask the task
        self._task = task
        self._task_id: str | None = None

    @property
    def parameters(self) -> dict[str, str]:
        """The non-private parameters as canonical strings, as in astra.parameter (only items not done need them)."""
        if type(self._parameters) is tuple:
            self._parameters = dict(zip(*self._parameters))
        return self._parameters

    def required(self) -> Iterable[tuple[str, type]]:
        """The hash and the class of each task it requires (a batch checks those recorded in astra.task are done)."""
        if self._required is None:
            self._required = {task_hash(one): type(one) for one in flatten(requirements(self.task))}
        return zip(*self._required) if type(self._required) is tuple else self._required.items()

    @property
    def version(self) -> str:
        """The version its hash was worked out with: the task's own if it was made, else its class's."""
        return task_version(self._task if self._task is not None else self.cls)

    @property
    def task(self) -> luigi.Task:
        """The task itself (created on first use, outside luigi's instance cache so a million of them can go)."""
        if self._task is None:
            self._task = _created_task(self.cls, self.values)
            if self.cls.requires is not luigi.Task.requires:
                # What its input() gives (see requirements()), made as when an item is identified the slow way.
                self._task.__dict__["_astra_required_tasks"] = creation.quickly(lambda: _kept(self._task.requires()))
        return self._task

    def __str__(self) -> str:
        """As luigi writes the task: ``EstimateSNR(spectrum_path=...)``."""
        if self._task is not None:
            return str(self._task)
        # luigi's Task.__repr__: the significant parameters, in the order the class declares them.
        shown = [f"{name}={p.serialize(self.values[name])}" for name, p in self.cls.get_params() if p.significant]
        return f"{self.cls.get_task_family()}({', '.join(shown)})"

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


def items(
    cls: type[luigi.Task], parameter_sets: Iterable[dict], unidentified: Unidentified | None = None
) -> Iterator[Item]:
    """The identities of ``cls(**values)`` for many parameter sets: the same hashes :func:`task_hash` gives.

    A parameter set whose task cannot be made or identified (luigi refuses its values, its ``requires()`` raises)
    raises :class:`IdentityError`; with ``unidentified``, that is called with the set and the error instead, and
    the next sets follow.

    The fastest of four ways the class allows; each writes the identity with the :class:`_Layout` of
    :func:`task_hash` (its ``hash`` is the one place an identity is hashed):

    - a class that requires nothing (:func:`_values_only`): hashed straight from the values, no task made;
    - a :func:`creation.light` class (no ``__init__``, ``__new__``, ``__setattr__`` of its own or a mixin's, see
      there) whose ``requires()`` only makes tasks of light classes that require nothing from its parameters and
      constants (:mod:`astra.fixed_requires`: ``return SpectrumFile(path=self.path)``, an input file's
      ``luigi.ExternalTask`` or an astra task upstream): the item and what it requires hashed from the values, no
      task made and no ``requires()`` called per item;
    - any other ``requires()`` of a light class (a loop, a branch, ``**self.param_kwargs``, a generator, ...): the
      item is made without luigi (:class:`creation.Maker`), its ``requires()`` runs once per item as luigi would
      run it, and the tasks of light classes that require nothing which it makes are made without luigi too and
      hashed from their values; any other task it requires is made by luigi's rules and hashed by
      :func:`task_hash`. Should anything go wrong there (``requires()`` raises, or asks a plain luigi task it
      made for the ``task_id`` such a task lacks, or hashes it), that item and all after it go the slow way,
      which raises if luigi would;
    - any other class, the slow way (:func:`_created`): each item created as luigi would, and hashed with the
      tasks it requires.

    tests/test_identity.py and tests/test_alldone.py check each way against :func:`task_hash` of tasks luigi
    made, and against the definition (:func:`identity` as JSON), for every kind of parameter.
    """
    maker = creation.Maker()
    if _values_only(cls):
        return _from_values(cls, parameter_sets, maker, unidentified)
    if not creation.light(cls):
        return _created(cls, parameter_sets, unidentified)
    calls = fixed_requires.calls(cls) if _fixed_by_class(cls) else None
    if calls is not None and all(_fixed_by_class(call.cls) for call in calls):
        return _from_fixed_requires(cls, iter(parameter_sets), maker, calls, unidentified)
    return _made_light(cls, iter(parameter_sets), maker, unidentified)


def _from_values(
    cls: type[luigi.Task], parameter_sets: Iterable[dict], maker: creation.Maker, unidentified: Unidentified | None
) -> Iterator[Item]:
    """:func:`items` of a class that requires nothing: hashed from the values, no task made."""
    layout = _layout(cls)
    names, write, significant_of = layout.shown_texts.names, layout.shown_texts.of_values, layout.significant_of
    frame = _frame(cls.__module__, cls.task_family, task_version(cls), [])
    for given in parameter_sets:
        try:
            values = maker.values(cls, (), given)
            texts = write(values)
            item = Item(cls, values, layout.hash(frame, significant_of(texts)), (names, texts), [])
        except Exception:  # luigi refuses the values, say: its own error, as luigi would make the task
            yield from _created(cls, [given], unidentified)
            continue
        yield item


def _from_fixed_requires(
    cls: type[luigi.Task],
    parameter_sets: Iterator[dict],
    maker: creation.Maker,
    calls: list[fixed_requires.Call],
    unidentified: Unidentified | None,
) -> Iterator[Item]:
    """:func:`items` of a light class whose ``requires()`` is a fixed function of its parameters
    (:func:`fixed_requires.calls`): the item and what it requires hashed from the values, no task made."""
    layout = _layout(cls)
    names, write, significant_of = layout.shown_texts.names, layout.shown_texts.of_values, layout.significant_of
    frames = _Frames()
    hash_item, values_of = layout.hash, maker.values
    made: list[tuple] | None = None  # per task it requires: how its texts are written, how hashed, its frame
    classes = tuple(call.cls for call in calls)
    for given in parameter_sets:
        try:
            values = values_of(cls, (), given)
            if made is None:  # the first item: its calls leave the plans that _required_texts reads
                made = [
                    (_required_texts(call, values, maker), _layout(call.cls).hash, frames.of_class(call.cls, []))
                    for call in calls
                ]
            hashes = [hash_required(frame, texts_of(values)) for texts_of, hash_required, frame in made]
            requires = hashes if len(hashes) == 1 else sorted(set(hashes))
            texts = write(values)
            item = Item(cls, values, hash_item(frames.of_class(cls, requires), significant_of(texts)), (names, texts),
                        requires, required=(hashes, classes))  # fmt: skip
        except Exception:  # luigi's error, say: as luigi would, from this item on (see _made_light)
            yield from _created(cls, itertools.chain([given], parameter_sets), unidentified)
            return
        yield item


def _required_texts(call: fixed_requires.Call, values: dict, maker: creation.Maker) -> Callable[[dict], list[str]]:
    """How the significant parameters of the task ``call`` makes are written, from the values of the item.

    Those of the task ``maker`` makes from the item's arguments; straight from the item's values where the call
    passes parameters by name to parameters that keep them as given (luigi's ``Parameter.normalize``): an item's
    value is no list or set (luigi made it a tuple), so it is the required task's value too, and the others are the
    defaults of the plan, the same for every item.
    """
    required = _layout(call.cls).significant_texts
    args, kwargs = call.arguments(values)
    planned = maker.values(call.cls, args, kwargs)  # luigi's values; the plan for the next items
    by_name = not args and all(isinstance(k, fixed_requires.Parameter) for k in call.keywords)
    if not by_name or not maker.keeps_given(call.cls, args, kwargs):
        return lambda values: required.of_values(maker.values(call.cls, *call.arguments(values)))
    source = dict(zip(call.names, [k.name for k in call.keywords]))  # its parameter -> the item's parameter
    # (writer, the item's parameter) for a value given, (None, its text) for a default.
    parts = [
        (write, source[name]) if name in source else (None, write(planned[name]))
        for name, write in zip(required.names, required.writers)
    ]
    return lambda values: [text if write is None else write(values[text]) for write, text in parts]


def _made_light(
    cls: type[luigi.Task], parameter_sets: Iterator[dict], maker: creation.Maker, unidentified: Unidentified | None
) -> Iterator[Item]:
    """:func:`items` of a light class that requires other tasks (see there)."""
    layout = _layout(cls)
    names, write, significant_of = layout.shown_texts.names, layout.shown_texts.of_task, layout.significant_of
    frames = _Frames()
    for given in parameter_sets:
        try:
            task = maker.make(cls, maker.values(cls, (), given))
            required = {}
            for one in maker.call(functools.partial(_flat_requires, task)):
                if maker.untouched(one):  # made light, and its class requires nothing
                    required_layout = _layout(type(one))
                    texts = required_layout.significant_texts.of_task(one)
                    required[required_layout.hash(frames.of(one, []), texts)] = type(one)
                else:
                    required[creation.quickly(functools.partial(task_hash, one))] = type(one)
            requires = sorted(required)
            texts = write(task)  # after requires(), as task_hash reads them
            hashed = layout.hash(frames.of(task, requires), significant_of(texts))
            item = Item(cls, task.param_kwargs, hashed, (names, texts), requires, required=required)
        except Exception:
            # luigi's error or the task's own, or a light task missing what luigi's would have: as luigi would,
            # from this item on (and the error again, if luigi meets it too).
            yield from _created(cls, itertools.chain([given], parameter_sets), unidentified)
            return
        yield item


def _flat_requires(task: luigi.Task) -> list[luigi.Task]:
    required = task.requires()
    return [required] if isinstance(required, luigi.Task) else flatten(required)  # a generator runs here, too


def _created(
    cls: type[luigi.Task], parameter_sets: Iterable[dict], unidentified: Unidentified | None = None
) -> Iterator[Item]:
    """:func:`items` the slow way: each item created as luigi would, and hashed with what it requires.

    Outside luigi's instance cache, so that a million of them can go once identified; so are the plain tasks
    they require (creation.quickly).
    """
    for values in parameter_sets:
        task = None
        try:
            task = _created_task(cls, values)
            hashed = creation.quickly(functools.partial(_identify_item, task))
            item = Item(cls, task.param_kwargs, hashed, parameters(task), required_hashes(task), task)
        except Exception as exc:
            if unidentified is None:
                raise
            if task is None:
                exc = IdentityError(f"cannot make {cls.__name__}(**{values!r}): {exc!r}")
            elif not isinstance(exc, IdentityError):
                exc = IdentityError(f"cannot identify {_name(task)}: its requires() raised {exc!r}")
            unidentified(values, exc)
            continue
        yield item


def _created_task(cls: type[luigi.Task], values: dict) -> luigi.Task:
    """``cls(**values)`` as luigi makes it, outside luigi's instance cache."""
    return creation.create(cls, values) if isinstance(cls, creation.TaskRegister) else type.__call__(cls, **values)


def _identify_item(task: luigi.Task) -> str:
    # The item keeps what its requires() gave (see requirements()), made quickly by the caller.
    task.__dict__["_astra_required_tasks"] = _kept(task.requires())
    return task_hash(task)


def _values_only(cls: type[luigi.Task]) -> bool:
    """Whether the identity of a task of ``cls`` follows from its parameter values alone, without creating it.

    Not so when it requires other tasks, or when its module, name, version or values could depend on the instance:
    a ``task_module``, ``task_family`` or ``version`` of its own that is not a plain string, or an ``__init__`` of
    its own (which may change them).
    """
    if cls.requires is not luigi.Task.requires or not _fixed_by_class(cls):
        return False
    init = next(c for c in cls.__mro__ if "__init__" in vars(c))
    return init is luigi.Task or init.__module__.split(".")[0] == "astra"


def parameter_hash(name: str, value: str) -> str:
    """The sha256 (hex) that identifies one (name, value) pair in ``astra.parameter``."""
    return hashlib.sha256(_utf8(f"{name}\x00{value}")).hexdigest()


def _utf8(text: str) -> bytes:
    """``text`` as UTF-8; a lone surrogate (an undecodable byte of a file name) hashes too, instead of raising."""
    return text.encode("utf-8", "surrogatepass")
