"""A user's SQL made into the one read-only statement a server may run.

A reading of SQL written by hand can be fooled: PostgreSQL nests block
comments, has dollar quotes and ``E''`` strings, and the text that a check
reads as ``SELECT`` may be a ``COPY ... TO PROGRAM`` to the server. So no
check here decides what runs. The text goes to the server inside a
subquery::

    SELECT * FROM (
    <text>
    ) AS q

which the server's own parser accepts only when the text is one query (a
``SELECT``, a ``WITH`` that changes nothing, ``VALUES``, ``TABLE``; on DuckDB
``FROM t``, ``DESCRIBE``, ``SUMMARIZE``, ``SHOW`` too): a second statement, a
write, ``COPY``, ``DO``, ``LISTEN``, ``PREPARE`` or a data-modifying ``WITH``
inside parentheses does not parse. The server is then asked for exactly one
statement (PostgreSQL's extended protocol takes one; on DuckDB its parser
counts them), and it runs in a read-only transaction.

``EXPLAIN`` keeps its keyword and options in front
(``EXPLAIN ANALYZE SELECT * FROM (<rest>) AS q``); they are taken only when
made of letters, digits, commas, blanks and their parentheses, which cannot
open a comment or a string, so what is explained is always the subquery.

The reading of :mod:`.sqltext` only trims a final ``;`` (and comments after
it) and words the refusal: a wrong reading can make a query fail, never make
another statement run.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from ..errors import QueryError, QueryParameterError
from .sqltext import first_keyword, separated, skip_blanks, without_terminator

# Keywords of texts the subquery takes; any other first word is named in the refusal.
QUERY_WORDS = frozenset({"select", "with", "values", "table", "explain", "from", "describe", "summarize", "show",
                         "pivot", "unpivot"})
ALLOWED = "a read-only query (SELECT, WITH ... SELECT, VALUES, TABLE, or an EXPLAIN of one)"

# EXPLAIN and its options, in an alphabet that cannot open a comment, a string or a dollar quote.
_BLANKS = "[ \t\r\n]"
_EXPLAIN = re.compile(rf"EXPLAIN(?:{_BLANKS}*\([A-Za-z0-9_, \t\r\n]*\)|(?:{_BLANKS}+(?:ANALYZE|ANALYSE|VERBOSE))*)"
                      rf"(?={_BLANKS}|\()", re.IGNORECASE | re.ASCII)


def subquery(sql: str) -> str:
    """The statement the server runs for ``sql``: it inside a subquery,
    behind ``EXPLAIN`` and its options when it begins with them. A line
    comment at its end cannot hide the closing parenthesis, which stands on
    a line of its own."""
    if not isinstance(sql, str) or not sql.strip():
        raise QueryError("the query is empty")
    body = without_terminator(sql)
    explain = _EXPLAIN.match(body, skip_blanks(body))
    if explain is None:
        return f"SELECT * FROM (\n{body}\n) AS q"
    return f"{explain.group(0)} SELECT * FROM (\n{body[explain.end():]}\n) AS q"


def explains(sql: str) -> bool:
    """Whether :func:`subquery` keeps an ``EXPLAIN`` in front of ``sql``."""
    body = without_terminator(sql)
    return _EXPLAIN.match(body, skip_blanks(body)) is not None


def refusal(sql: str, reason: str) -> QueryError:
    """The error for a text the server did not take as one query: what it
    looks like (more than one statement, another kind of statement) and the
    server's own words."""
    if separated(sql):
        return QueryError("give exactly one statement; found more than one (a ; separates them)")
    keyword = first_keyword(sql)
    if keyword not in QUERY_WORDS:
        return QueryError(f"only {ALLOWED} is allowed; this is {keyword.upper() or 'no SQL statement'}")
    return QueryError(f"only {ALLOWED} is allowed, and the server does not read this as one: {reason}")


def check_parameters(takes: int | Sequence[str], params: Sequence[Any] | Mapping[str, Any] | None) -> None:
    """Raise :class:`QueryParameterError` unless ``params`` fit what the
    query takes: ``takes`` values in order (``?``, ``$1``), or values for
    the names ``takes`` lists (``$name``), each given once, no other."""
    error = parameter_error(takes, params)
    if error is not None:
        raise error


def parameter_error(takes: int | Sequence[str],
                    params: Sequence[Any] | Mapping[str, Any] | None) -> QueryParameterError | None:
    """The error :func:`check_parameters` raises, or None when the values fit."""
    given = params or ()
    if isinstance(takes, int):
        if isinstance(given, Mapping):
            return QueryParameterError(f"{_in_order(takes)}; given by name: {', '.join(given)}") if given else None
        return QueryParameterError(f"{_in_order(takes)}; {len(given)} given") if len(given) != takes else None
    wanted = f"the query takes values by name ({', '.join('$' + name for name in takes)})"
    if not isinstance(given, Mapping):
        return QueryParameterError(f"{wanted}; " + (f"{_values(len(given))} given in order" if given else "none given"))
    missing = [name for name in takes if name not in given]
    extra = [name for name in given if name not in takes]
    if not missing and not extra:
        return None
    return QueryParameterError(f"{wanted}; given: {', '.join(given) or 'none'}"
                               + (f"; no value for {', '.join('$' + name for name in missing)}" if missing else "")
                               + (f"; not in the query: {', '.join(extra)}" if extra else ""))


def _in_order(count: int) -> str:
    return (f"the query takes {_values(count)} in order (? or $1, $2, ...)" if count else
            "the query has no placeholders")


def _values(count: int) -> str:
    return f"{count} value" + ("" if count == 1 else "s")
