"""Text a database cannot hold: the one place that decides what happens to it on the way in.

PostgreSQL's ``text`` has no NUL character (psycopg2 refuses it with a bare ``ValueError``), and neither backend
stores a ``str`` that is not valid Unicode: a lone surrogate, which is what Python makes of an undecodable byte in
a file name or on the command line (``luigi ... --path $'\\xff.fits'``).

- Text that names a task (a parameter value, the module, the family, the version) is never altered, since an
  altered value would name another task: a task with such text fails with a clear ``astra:`` message before
  anything is written (on SQLite a NUL is stored as it is).
- Text that only describes what happened (an error, a traceback) is stored with those characters written out as
  Python escapes (``\\x00``, ``\\udcff``) on both backends, so a failure is always recorded, and recorded alike.
- Results are JSON, which escapes them itself (``\\u0000``).
"""

from __future__ import annotations

from astra.database.connection import DatabaseError

#: The fields of a task row that name the task; the parameters are checked as well.
IDENTITY_FIELDS = ("task_module", "task_name", "version")


class UnstorableTextError(DatabaseError):
    """Text that names a task holds a character the database cannot store."""


def problem(text: str, nul_forbidden: bool) -> str | None:
    """What in ``text`` the database cannot store, in words, or None if it can store all of it.

    ``nul_forbidden``: the database's text cannot hold NUL (PostgreSQL's; see astra.database.dialect).
    """
    if nul_forbidden and "\x00" in text:
        return f"a NUL character (at position {text.index(chr(0))}), which PostgreSQL cannot store"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"{text[exc.start]!r} (at position {exc.start}), which is not valid Unicode (an undecodable byte in a "
            "file name?) and no database can store"
        )
    return None


def check_identity(
    fields: dict, params: dict[str, str], nul_forbidden: bool, consequence: str = "the task was not run"
) -> None:
    """Raise :class:`UnstorableTextError` if a task's identity text (``fields`` and ``params``) cannot be stored."""
    named = [(f"parameter {name!r}", value) for name, value in params.items()]
    named += [(field, fields[field]) for field in IDENTITY_FIELDS if isinstance(fields.get(field), str)]
    for what, value in named:
        trouble = problem(value, nul_forbidden)
        if trouble is not None:
            raise UnstorableTextError(
                f"astra: {what} of {fields.get('task_name', 'the task')} holds {trouble}; {consequence}. "
                "Pass the value without it (e.g. percent- or base64-encoded)"
            )


def escaped(text: str | None) -> str | None:
    """``text`` with NUL characters and lone surrogates written out as Python escapes (for errors, tracebacks)."""
    if text is None:
        return None
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
