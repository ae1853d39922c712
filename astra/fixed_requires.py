"""A ``requires()`` that is a fixed function of the task's parameters: what it makes, read once from its code.

Most ``requires()`` of a batch's items are one line, ``return SpectrumFile(path=self.path, release=self.release)``:
the same classes made from the task's own parameter values (and constants), whatever the values. For such a method
:func:`calls` works out once, per pass over a batch's items, which tasks it makes from which parameters, so that
the identities of a million items and their requirements follow from their values alone (see
:func:`astra.identity.items`), with no task made and no ``requires()`` called per item.

A method qualifies only when its byte code can do nothing else: it takes ``self`` alone, reads only parameters of
``self`` (``self.name``), constants and module-level names that are task classes of the kind
:func:`astra.creation.light` makes and that require nothing, calls only those classes, and builds nothing but
lists, tuples and dicts of what they make; no branch, loop, operator, comprehension, closure or other call. Such
code has one path, so running it once with stand-ins for the parameter values (the classes' calls recorded, not
made) shows what it makes for any values. Anything else (an unknown instruction on another Python, say) and the
method does not qualify, and the items are made and asked (the other ways of :func:`~astra.identity.items`).
"""

from __future__ import annotations

import builtins
import dis
import inspect
import operator
import types
from collections.abc import Callable
from dataclasses import dataclass

import luigi
from luigi.task import flatten

from astra import creation

#: The instructions such a method may have (CPython 3.9 to 3.11 names; later ones may add others, which disqualify).
_ALLOWED = {
    "RESUME", "NOP", "CACHE", "PUSH_NULL", "PRECALL", "KW_NAMES", "CALL", "CALL_KW", "CALL_FUNCTION",
    "CALL_FUNCTION_KW", "LOAD_GLOBAL", "LOAD_FAST", "LOAD_ATTR", "LOAD_CONST", "BUILD_LIST", "BUILD_TUPLE",
    "BUILD_MAP", "BUILD_CONST_KEY_MAP", "RETURN_VALUE", "RETURN_CONST",
    "MAP_ADD", "CALL_FUNCTION_EX",  # a call with many keywords: CPython builds a dict (a stand-in key would raise)
}  # fmt: skip
#: Code flags that disqualify: *args, **kwargs, generators, coroutines, nested functions' cells.
_FLAGS = inspect.CO_VARARGS | inspect.CO_VARKEYWORDS | inspect.CO_GENERATOR | inspect.CO_COROUTINE
_FLAGS |= inspect.CO_ITERABLE_COROUTINE | inspect.CO_ASYNC_GENERATOR
#: Constants that may be passed as they are, once for every item (luigi's parameters never change them).
_CONSTANT_TYPES = (type(None), bool, int, float, complex, str, bytes)


class Call:
    """One task the method makes: ``cls(*args, **dict(zip(names, keywords)))``, each argument a constant or a
    :class:`Parameter` of the task."""

    __slots__ = ("cls", "args", "names", "keywords", "_pick")

    def __init__(self, cls: type, args: tuple, names: tuple[str, ...], keywords: tuple) -> None:
        self.cls, self.args, self.names, self.keywords = cls, args, names, keywords
        # The usual call, every argument a parameter by keyword: one itemgetter picks them all.
        by_name = not args and names and all(isinstance(k, Parameter) for k in keywords)
        self._pick = operator.itemgetter(*[k.name for k in keywords]) if by_name else None

    def __repr__(self) -> str:
        return f"Call({self.cls.__name__}, {self.args!r}, {dict(zip(self.names, self.keywords))!r})"

    def arguments(self, values: dict) -> tuple[tuple, dict]:
        """The arguments of the call for a task with these parameter values."""
        if self._pick is not None:
            picked = self._pick(values)
            return (), dict(zip(self.names, picked if len(self.names) > 1 else (picked,)))
        args = tuple(values[a.name] if isinstance(a, Parameter) else a for a in self.args)
        keywords = [values[k.name] if isinstance(k, Parameter) else k for k in self.keywords]
        return args, dict(zip(self.names, keywords))


@dataclass(frozen=True)
class Parameter:
    """A stand-in for the value of the task's parameter ``name``."""

    name: str


class _Made:
    """A call recorded while the method runs on stand-ins (made by :class:`_Recorder`)."""

    __slots__ = ("call",)

    def __init__(self, call: Call) -> None:
        self.call = call


class _Recorder:
    """Stands in for :class:`creation.Maker` while the method runs once: records each call instead of making it."""

    def __init__(self, classes: set[type]) -> None:
        self.classes = classes

    def create(self, cls: type, args: tuple, kwargs: dict, otherwise: Callable) -> object:
        if cls not in self.classes:
            raise TypeError(f"{cls} was not read from the code")  # cannot happen: every callee is such a class
        return _Made(Call(cls, args, tuple(kwargs), tuple(kwargs.values())))


def calls(cls: type) -> list[Call] | None:
    """The tasks ``cls.requires()`` makes, if it is a fixed function of the parameters (see the module); else None.

    Worked out anew for each call (once per pass over a batch's items), as the module-level names it reads may
    have been bound to other classes since.
    """
    function = getattr(cls, "requires", None)
    if not isinstance(function, types.FunctionType):
        return None
    params = {name for name, _ in cls.get_params()}
    classes = _classes(function, params)
    if classes is None:
        return None
    probe = types.SimpleNamespace(**{name: Parameter(name) for name in params})
    try:
        made = creation.making(_Recorder(set(classes.values())), lambda: function(probe))
    except Exception:  # a stand-in was used as a value (called, say): not a fixed function after all
        return None
    found = flatten(made)
    if not all(isinstance(one, _Made) for one in found):
        return None
    result = [one.call for one in found]
    if not all(_constant_or_parameter(a) for call in result for a in (*call.args, *call.keywords)):
        return None
    return result


def _classes(function: types.FunctionType, params: set[str]) -> dict[str, type] | None:
    """The task classes the method's code reads by name, if that code qualifies (see the module); else None."""
    code = function.__code__
    if code.co_argcount != 1 or code.co_kwonlyargcount or code.co_flags & _FLAGS or code.co_nlocals != 1:
        return None
    if code.co_freevars or code.co_cellvars or function.__defaults__ or function.__kwdefaults__:
        return None
    classes: dict[str, type] = {}
    previous = None
    for instruction in dis.get_instructions(code):
        name = instruction.opname
        if name not in _ALLOWED:
            return None
        if name == "LOAD_FAST" and instruction.arg != 0:
            return None
        if name == "LOAD_ATTR" and (previous != "LOAD_FAST" or instruction.argval not in params):
            return None  # only self.<parameter>
        if name == "LOAD_GLOBAL":
            found = _global(function, instruction.argval)
            if not _plain_task_class(found):
                return None
            classes[instruction.argval] = found
        if name != "CACHE":
            previous = name
    return classes


def _global(function: types.FunctionType, name: str) -> object:
    if name in function.__globals__:
        return function.__globals__[name]
    return getattr(builtins, name, None)


def _plain_task_class(found: object) -> bool:
    """A task class that :func:`creation.light` makes and that requires nothing, made through luigi's metaclass
    (or BaseTask's), where the calls are recorded."""
    return (
        isinstance(found, type)
        and issubclass(found, luigi.Task)
        and type(found).__call__ in (creation.TaskRegister.__call__, luigi.task_register.Register.__call__)
        and found.requires is luigi.Task.requires
        and creation.light(found)
    )


def _constant_or_parameter(value: object) -> bool:
    if isinstance(value, Parameter):
        return True
    if isinstance(value, tuple):
        return all(_constant_or_parameter(v) and not isinstance(v, Parameter) for v in value)
    return type(value) in _CONSTANT_TYPES
