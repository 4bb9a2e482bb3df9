"""SQL text as a PostgreSQL server reads it: placeholders and the first keyword.

The store's own SQL is written with ``?`` placeholders (the portable subset);
PostgreSQL numbers them (``$1``, ``$2``, ...). :func:`numbered` rewrites the
marks that stand outside string literals, quoted identifiers, comments and
dollar-quoted text, so a ``?`` or ``%`` inside a literal stays what it is.
Values never enter the text: they travel as parameters.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Mapping, Sequence

# What to step over (literals, identifiers, comments, dollar quotes) and the
# marks to rewrite, in one left-to-right scan.
_TOKENS = re.compile(r"""
      [Ee]'(?:[^'\\]|\\.|'')*'                      # an escape string: E'it\'s'
    | '(?:[^']|'')*'                                # a string literal
    | "(?:[^"]|"")*"                                # a quoted identifier
    | --[^\n]*                                      # a line comment
    | /\*(?:.|\n)*?\*/                              # a block comment
    | \$(?P<tag>[A-Za-z_][A-Za-z0-9_]*)?\$(?:.|\n)*?\$(?P=tag)\$   # dollar-quoted text
    | (?P<number>\$\d+)                             # a numbered placeholder, as PostgreSQL writes it
    | (?P<name>\$[A-Za-z_][A-Za-z0-9_]*)            # a named placeholder, as DuckDB writes it
    | (?P<mark>\?)                                  # a placeholder
""", re.VERBOSE)


@lru_cache(maxsize=2048)
def numbered(sql: str) -> str:
    """``sql`` with each ``?`` placeholder replaced by ``$1``, ``$2``, ... in order."""
    if "?" not in sql:
        return sql
    count = 0

    def replace(match: re.Match) -> str:
        nonlocal count
        if match.group("mark") is None:
            return match.group(0)
        count += 1
        return f"${count}"

    return _TOKENS.sub(replace, sql)


def bind_user_query(sql: str, params: Sequence[Any] | Mapping[str, Any] | None) -> tuple[str, list[Any] | None]:
    """A user's query and its values as PostgreSQL takes them: ``?`` marks
    (when the text has no ``$1``-style placeholders of its own) become
    ``$1``, ``$2``, ...; with a mapping, each ``$name`` becomes a numbered
    placeholder bound to ``params[name]``. Raises ``KeyError`` naming a
    ``$name`` the mapping lacks."""
    if params is None or (not isinstance(params, Mapping) and len(params) == 0):
        return sql, None
    if isinstance(params, Mapping):
        order: dict[str, int] = {}

        def name(match: re.Match) -> str:
            found = match.group("name")
            if found is None:
                return match.group(0)
            key = found[1:]
            if key not in params:
                raise KeyError(key)
            return f"${order.setdefault(key, len(order) + 1)}"

        text = _TOKENS.sub(name, sql)
        return text, [params[key] for key in order]
    if any(m.group("number") for m in _TOKENS.finditer(sql)):
        return sql, list(params)
    return numbered(sql), list(params)


_SKIP = re.compile(r"(?:\s+|--[^\n]*|/\*(?:.|\n)*?\*/|\()*")
_WORD = re.compile(r"[A-Za-z_]+")


def first_keyword(sql: str) -> str:
    """The statement's first word, lowercased, after blanks, comments and
    opening parentheses (``''`` when there is none)."""
    position = _SKIP.match(sql).end()
    word = _WORD.match(sql, position)
    return word.group(0).lower() if word else ""

