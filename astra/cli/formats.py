"""How the ``astra`` command writes things: times, durations, tables for people, records as JSON for scripts."""

from __future__ import annotations

import datetime
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import luigi

    from astra.database.models import Task

UTC = datetime.timezone.utc

#: The columns of a task listing (``astra tasks list``, ``astra tasks forget``).
TASK_HEADERS = ["pk", "name", "status", "version", "when (UTC)", "duration", "host", "hash", "parameters"]


def time(value: datetime.datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def iso(value: datetime.datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def short(value: str, width: int = 40) -> str:
    # The end of a long value (a file name, the last digits) tells values apart better than its start.
    return value if len(value) <= width else "..." + value[-(width - 3) :]


def given(value: str, width: int = 100) -> str:
    """What the user typed, quoted, as an error echoes it: a value pasted by mistake (a whole file) is cut short."""
    return repr(value) if len(value) <= width else f"{value[:width]!r}... ({len(value):,} characters)"


def name(task: luigi.Task | str, width: int = 200) -> str:
    """A task as luigi writes it, cut short: a batch's list of a million files is no use on a terminal."""
    text = str(task)
    return text if len(text) <= width else text[: width - 4] + "...)"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(header)] + [len(row[i]) for row in rows]) for i, header in enumerate(headers)]
    lines = [headers, ["-" * width for width in widths], *rows]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def status(task: Task) -> str:
    """The task's status as the person reads it: ``waiting`` for a running task set aside while the tasks its
    run() yielded run (luigi calls its run() again once they are done); JSON and the filters keep ``running``."""
    return "waiting" if task.status == "running" and task.claim_token is None else task.status


def record(task: Task, parameters: dict[str, str] | None = None) -> dict:
    """A task record as plain JSON values."""
    found = {
        "pk": task.pk,
        "task_module": task.task_module,
        "task_name": task.task_name,
        "task_id": task.task_id,
        "task_hash": task.task_hash,
        "version": task.version,
        "status": task.status,
        "created": iso(task.created),
        "started": iso(task.started),
        "heartbeat": iso(task.heartbeat),
        "completed": iso(task.completed),
        "duration": task.duration,
        "host": task.host,
        "pid": task.pid,
        "attempts": task.attempts,
        "astra_version": task.astra_version,
        "error": task.error,
        "slurm_job_id": task.slurm_job_id,
        "slurm_node": task.slurm_node,
    }
    if parameters is not None:
        found["parameters"] = parameters
    return found


def edge(task: Task) -> dict:
    """A required or requiring task, as JSON."""
    return {k: getattr(task, k) for k in ("pk", "task_name", "task_id", "task_hash", "status", "dynamic")}


def task_rows(tasks: Sequence[Task], parameters: dict[int, dict[str, str]]) -> list[list[str]]:
    """The rows of a task listing (see TASK_HEADERS)."""
    return [
        [
            str(task.pk),
            task.task_name,
            status(task),
            task.version or "-",
            time(task.completed or task.started or task.created),
            duration(task.duration),
            task.host or "-",
            task.task_hash[:12],
            " ".join(f"{key}={short(value)}" for key, value in parameters[task.pk].items()),
        ]
        for task in tasks
    ]


def print_json(value: object) -> None:
    out(json.dumps(value, indent=2, default=str, allow_nan=False) + "\n")


def print_json_list(items: Iterable[object]) -> None:
    """:func:`print_json` of a list, written an item at a time: the same text, without the whole list (or its
    text, which json builds from a small string per value) in memory."""
    for text in json_list(items):
        out(text)
    out("\n")


def json_list(items: Iterable[object], depth: int = 0) -> Iterator[str]:
    """The text :func:`print_json` gives a list of ``items`` nested ``depth`` levels deep (a value of an object:
    1), in pieces of a thousand items."""
    indent = "\n" + "  " * (depth + 1)
    parts: list[str] = []
    before = "[" + indent  # the first item's; then a comma's
    for item in items:
        text = json.dumps(item, indent=2, default=str, allow_nan=False).replace("\n", indent)  # a "\n" in a string
        parts.append(before + text)  # is escaped: these are json's own
        before = "," + indent
        if len(parts) == 1000:
            yield "".join(parts)
            parts = []
    yield "".join(parts) + ("[]" if before.startswith("[") else "\n" + "  " * depth + "]")


def out(text: str) -> None:
    """Write ``text`` to stdout, all of it, or raise BrokenPipeError.

    Not ``sys.stdout.write`` for what may be long: given more than a pipe takes at once, Python's buffered writer
    drops the rest when the reader goes away (``| head``) and says nothing, so the command would end 0.
    """
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # no descriptor (a captured stdout): nothing is dropped there
        sys.stdout.write(text)
        return
    sys.stdout.flush()
    data = memoryview(text.encode(sys.stdout.encoding or "utf-8", sys.stdout.errors or "strict"))
    while data:
        data = data[os.write(descriptor, data) :]


def say(message: str) -> None:
    """A note for the person at the terminal (stderr, so stdout stays clean for scripts)."""
    click.echo(message, err=True)
