"""Database URLs as messages may show them: never with a password.

Redaction goes by the *position* of the user information, never by parsing
the URL: libpq takes passwords a URL parser refuses or reads otherwise
(``#``, ``?``, ``@``, ``/``, bad percent-escapes), and a URL that does not
parse at all is quoted whole in libpq's own error. The user information is
everything between ``://`` and the last ``@`` (before any ``password``
query field); its password is what follows its first ``:``. (Another query
value holding an ``@`` therefore hides the hosts too: more than needed,
never less.)
"""

from __future__ import annotations

import re
from typing import Iterable, NamedTuple
from urllib.parse import unquote

MASK = "***"
# Pieces of a password libpq may quote when it reads the password otherwise
# than we do (it ends the user information at the first ``@`` or ``/``, and a
# host list splits at ``,`` and ``:``). Shorter pieces are left: scrubbing
# every "a" of a message would make it unreadable and give away one letter.
_PIECE_SEPARATORS = re.compile(r"[@/:,?#\[\]&=]")
_SHORTEST_PIECE = 2


class _Parts(NamedTuple):
    prefix: str           # the scheme and "://"
    user: str | None      # None: no password in the user information
    password: str | None
    rest: str             # the rest as written: (user and) hosts, database and query


_FIELD = re.compile(r"[?&]([^?&=]*)=")


def _parts(url: str) -> _Parts:
    """The user information ends at the last ``@`` before any ``password``
    query field (whose value may hold an ``@`` too); without a ``:`` in it
    there is no password there."""
    head, sep, tail = url.partition("://")
    if not sep:
        return _Parts("", None, None, url)
    end = next((field.start() for field in _FIELD.finditer(tail) if _is_password_key(field.group(1))), len(tail))
    userinfo, at, rest = tail[:end].rpartition("@")
    if not at or ":" not in userinfo:
        return _Parts(head + sep, None, None, tail)
    user, _, password = userinfo.partition(":")
    return _Parts(head + sep, user, password, rest + tail[end:])


def _query_fields(rest: str) -> tuple[str, list[tuple[str, str | None]]]:
    """The part before the query, and the query's (key, value) pairs as
    written (value None: no ``=``)."""
    base, question, query = rest.partition("?")
    if not question:
        return rest, []
    fields = []
    for field in query.split("&"):
        key, equals, value = field.partition("=")
        fields.append((key, value if equals else None))
    return base + "?", fields


def _is_password_key(key: str) -> bool:
    return unquote(key).strip().lower() == "password"


def redact(url: str) -> str:
    """``url`` with any password (after the user name, or as a ``password``
    query parameter) replaced by ``***``; everything else as written."""
    parts = _parts(url)
    shown = parts.prefix
    if parts.user is not None:
        shown += f"{parts.user}:{MASK}@"
    base, fields = _query_fields(parts.rest)
    query = "&".join(key if value is None else f"{key}={MASK if _is_password_key(key) else value}"
                     for key, value in fields)
    return shown + base + query


def _passwords(url: str) -> set[str]:
    """The password and any ``password`` query values, as written and decoded."""
    parts = _parts(url)
    found = {parts.password} if parts.password else set()
    found.update(value for key, value in _query_fields(parts.rest)[1] if value and _is_password_key(key))
    return found | {unquote(text, errors="replace") for text in found}


def secrets(url: str) -> list[str]:
    """Every text of ``url`` a message must not show, longest first: the
    password as written and percent-decoded, ``password`` query values, and
    the longer pieces of each (see ``_PIECE_SEPARATORS``)."""
    texts = _passwords(url)
    for secret in list(texts):
        texts.update(piece for piece in _PIECE_SEPARATORS.split(secret) if len(piece) >= _SHORTEST_PIECE)
    return sorted(texts, key=len, reverse=True)


def scrub(text: str, url: str, *, pieces: bool = True) -> str:
    """``text`` (a driver's message) with ``url`` shown redacted and any of
    its secrets replaced by ``***``: libpq quotes a URL it cannot read whole,
    and a token of it (a bad percent-escape, a host) as written. Without
    ``pieces``, only the password itself (for our own messages, where a
    piece would more likely be one of our words)."""
    if not url:
        return text
    found = secrets(url) if pieces else _whole_secrets(url)
    return redact(url).join(_without(segment, found) for segment in text.split(url))


def scrub_all(text: str, urls: Iterable[str]) -> str:
    """``text``, one of our messages, without a password of any of ``urls``:
    the last guard of the front ends, wherever the message came from."""
    for url in urls:
        text = scrub(text, url, pieces=False)
    return text


def _whole_secrets(url: str) -> list[str]:
    return sorted(_passwords(url), key=len, reverse=True)


def _without(text: str, found: list[str]) -> str:
    for secret in found:
        text = text.replace(secret, MASK)
    return text
