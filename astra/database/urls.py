"""Reading database URLs without ever showing a password.

A password in a URL may hold characters a URL parser takes for separators (``/``, ``#``, ``?``, ``@``) when the
user did not percent-encode them; ``urllib`` then reads part of the password as a port or a host and puts it in
its error. Here the credentials end at the last ``@`` of the URL, and every message is built from a masked URL,
so no part of a password is shown however the URL looks.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote

#: Query parameters whose value is secret: masked in descriptions, from ``=`` to the end of the URL.
_SECRET_QUERY = re.compile(r"([?&](?:password|sslpassword)=).*", flags=re.IGNORECASE | re.DOTALL)


#: Shorter passwords are not searched for elsewhere in a text: "***" for every "p" would garble it, and reveal it.
MIN_SECRET = 4


class BadURLError(ValueError):
    """A database URL that cannot be read; the message never holds any part of the password."""


def _split_credentials(rest: str) -> tuple[str | None, str]:
    """``rest`` (what follows ``scheme://``) as (credentials or None, host and the rest)."""
    if "@" not in rest:
        return None, rest
    credentials, _, after = rest.rpartition("@")
    return credentials, after


def mask_password(url: str) -> str:
    """``url`` with any password replaced by ``***``: in ``user:password@`` and in ``?password=``."""
    scheme, separator, rest = _SECRET_QUERY.sub(r"\1***", url).partition("://")
    if not separator:
        scheme, rest = "", scheme
    credentials, after = _split_credentials(rest)
    if credentials is not None:
        user, colon, password = credentials.partition(":")
        if len(password) >= MIN_SECRET:  # also where the URL repeats it, e.g. in an option
            after = after.replace(password, "***")
        rest = f"{user}{':***' if colon else ''}@{after}"
    return scheme + separator + rest


def postgres_connect_kwargs(url: str) -> tuple[str, dict[str, object]]:
    """The database name and the psycopg2 connect keywords of a ``postgresql://`` URL.

    ``postgresql://user:password@host:port/dbname?option=value``; user, password and database name are
    percent-decoded, so ``p%40ss`` reaches the server as ``p@ss``. Raises :class:`BadURLError`.
    """
    _, separator, rest = url.partition("://")
    if not separator:
        raise BadURLError("expected postgresql://user@host:port/dbname")
    credentials, after = _split_credentials(rest)
    kwargs: dict[str, object] = {}
    if credentials is not None:
        user, colon, password = credentials.partition(":")
        if user:
            kwargs["user"] = unquote(user)
        if colon and password:
            kwargs["password"] = unquote(password)
    location = re.match(r"(?P<netloc>[^/?#]*)(?:/(?P<path>[^?#]*))?(?:\?(?P<query>[^#]*))?", after)
    assert location is not None  # every string matches
    netloc, path, query = location["netloc"], location["path"] or "", location["query"] or ""
    host, port = netloc, ""
    bracketed = re.fullmatch(r"\[(?P<host>[^\]]*)\](?::(?P<port>.*))?", netloc)
    if bracketed:  # an IPv6 address
        host, port = bracketed["host"], bracketed["port"] or ""
    elif ":" in netloc:
        host, _, port = netloc.rpartition(":")
    if port and not port.isdigit():
        raise BadURLError("the port after the host must be a number (percent-encode any /, #, ? or @ in the password)")
    if host:
        kwargs["host"] = unquote(host)
    if port:
        kwargs["port"] = int(port)
    if not path:  # peewee would take the database for uninitialised, and say only that
        raise BadURLError("it names no database: expected postgresql://user@host:port/dbname")
    for key, value in parse_qsl(query, keep_blank_values=True):
        kwargs[key] = value
    return unquote(path), kwargs
