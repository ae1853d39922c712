"""The identity of a task: what makes two task instances "the same task" for astra.

A task is identified by its module, its luigi family, its ``version``, its significant parameters (hidden ones
included, private ones excluded, written as canonical strings) and the identities of the tasks it requires, hashed
with sha256. Including what it requires means that bumping the version of one task, or changing what feeds it,
gives everything downstream a new identity too, so luigi runs those again. This is the only place where a task's
identity is computed.
"""

from __future__ import annotations

import hashlib
import json

import luigi
from luigi.parameter import ParameterVisibility
from luigi.task import flatten

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
    values = {}
    for name, parameter in task.get_params():
        if parameter.visibility == ParameterVisibility.PRIVATE:
            continue
        if significant_only and not parameter.significant:
            continue
        values[name] = canonical_value(parameter, getattr(task, name))
    return dict(sorted(values.items()))


def task_version(task: luigi.Task) -> str:
    """The ``version`` string a task class declares ('' when it declares none)."""
    return str(getattr(task, "version", "") or "")


def identity(task: luigi.Task) -> dict:
    """What a task's hash is computed from."""
    return {
        "module": task.task_module,
        "name": task.task_family,
        "version": task_version(task),
        "parameters": parameters(task, significant_only=True),
        "requires": sorted({task_hash(required) for required in flatten(task.requires())}),
    }


def task_hash(task: luigi.Task) -> str:
    """The sha256 (hex) that identifies ``task`` in ``astra.task.task_hash``."""
    # luigi keeps one instance per task, and parameters never change, so the hash is worked out once per process.
    cached = task.__dict__.get("_astra_task_hash")
    if cached is None:
        text = json.dumps(identity(task), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        cached = task.__dict__["_astra_task_hash"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return cached


def parameter_hash(name: str, value: str) -> str:
    """The sha256 (hex) that identifies one (name, value) pair in ``astra.parameter``."""
    return hashlib.sha256(f"{name}\x00{value}".encode()).hexdigest()
