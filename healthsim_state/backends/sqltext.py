"""SQL text as a PostgreSQL server reads it: placeholders, the first keyword, a final ``;``.

The store's own SQL is written with ``?`` placeholders (the portable subset);
PostgreSQL numbers them (``$1``, ``$2``, ...). :func:`numbered` rewrites the
marks that stand outside string literals, quoted identifiers, comments
(block comments nest, as the server reads them) and dollar-quoted text, so a
``?`` or ``%`` inside a literal stays what it is. Values never enter the
text: they travel as parameters.

This reading never decides alone what a server runs (see
:mod:`~healthsim_state.backends.sandbox`): it binds values, trims a final
``;`` and names what a refused text looks like.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Callable, Iterator, Mapping, Sequence

# What to step over (literals, identifiers, comments, dollar quotes) and the
# marks to find, in one left-to-right scan; a block comment's end is found by
# _comment_end, since the server nests them.
_TOKENS = re.compile(r"""
      [Ee]'(?:[^'\\]|\\.|'')*'                      # an escape string: E'it\'s'
    | '(?:[^']|'')*'                                # a string literal
    | "(?:[^"]|"")*"                                # a quoted identifier
    | --[^\n]*                                      # a line comment
    | (?P<comment>/\*)                              # a block comment begins
    | \$(?P<tag>[A-Za-z_][A-Za-z0-9_]*|)\$[\s\S]*?\$(?P=tag)\$    # dollar-quoted text: $$...$$, $x$...$x$
    | (?P<number>\$\d+)                             # a numbered placeholder, as PostgreSQL writes it
    | (?P<name>\$[A-Za-z_][A-Za-z0-9_]*)            # a named placeholder, as DuckDB writes it
    | (?P<mark>\?)                                  # a placeholder
    | (?P<end>;)                                    # a statement's end
""", re.VERBOSE)
_MARKS = ("number", "name", "mark", "end")
_COMMENT_EDGE = re.compile(r"/\*|\*/")
_BLANK = re.compile(r"\s+|--[^\n]*")
_WORD = re.compile(r"[A-Za-z_]+")


def _comment_end(sql: str, position: int) -> int:
    """Where the block comment opened just before ``position`` ends (its
    nested comments included); the text's end if it never does."""
    depth = 1
    for edge in _COMMENT_EDGE.finditer(sql, position):
        depth += 1 if edge.group(0) == "/*" else -1
        if depth == 0:
            return edge.end()
    return len(sql)


def marks(sql: str) -> Iterator[tuple[str, re.Match]]:
    """Each placeholder and ``;`` outside literals and comments: (kind, match),
    kind one of ``number``, ``name``, ``mark``, ``end``."""
    position = 0
    while (match := _TOKENS.search(sql, position)) is not None:
        position = _comment_end(sql, match.end()) if match.group("comment") else match.end()
        kind = next((k for k in _MARKS if match.group(k) is not None), None)
        if kind is not None:
            yield kind, match


def _rewrite(sql: str, replace: Callable[[str, str], str | None]) -> str:
    """``sql`` with each mark for which ``replace(kind, text)`` gives text replaced by it."""
    parts, last = [], 0
    for kind, match in marks(sql):
        new = replace(kind, match.group(0))
        if new is not None:
            parts += [sql[last:match.start()], new]
            last = match.end()
    return "".join(parts) + sql[last:] if parts else sql


@lru_cache(maxsize=2048)
def numbered(sql: str) -> str:
    """``sql`` with each ``?`` placeholder replaced by ``$1``, ``$2``, ... in order."""
    if "?" not in sql:
        return sql
    count = 0

    def replace(kind: str, text: str) -> str | None:
        nonlocal count
        if kind != "mark":
            return None
        count += 1
        return f"${count}"

    return _rewrite(sql, replace)


def placeholder_names(sql: str) -> list[str]:
    """The ``$name`` placeholders of ``sql``, each once, in order of first use."""
    return list(dict.fromkeys(match.group(0)[1:] for kind, match in marks(sql) if kind == "name"))


def bind_user_query(sql: str, params: Sequence[Any] | Mapping[str, Any] | None) -> tuple[str, list[Any] | None]:
    """A user's query and its values as PostgreSQL takes them: ``?`` marks
    (when the text has no ``$1``-style placeholders of its own) become
    ``$1``, ``$2``, ...; with a mapping, each ``$name`` becomes a numbered
    placeholder bound to ``params[name]``. Raises ``KeyError`` naming a
    ``$name`` the mapping lacks."""
    if params is None or len(params) == 0:
        return sql, None
    if isinstance(params, Mapping):
        order: dict[str, int] = {}

        def name(kind: str, text: str) -> str | None:
            if kind != "name":
                return None
            key = text[1:]
            if key not in params:
                raise KeyError(key)
            return f"${order.setdefault(key, len(order) + 1)}"

        text = _rewrite(sql, name)
        return text, [params[key] for key in order]
    if any(kind == "number" for kind, _ in marks(sql)):
        return sql, list(params)
    return numbered(sql), list(params)


def skip_blanks(sql: str, position: int = 0, *, parentheses: bool = False) -> int:
    """Where the text goes on after blanks and comments (and opening
    parentheses, if asked) from ``position``."""
    while position < len(sql):
        blank = _BLANK.match(sql, position)
        if blank:
            position = blank.end()
        elif sql.startswith("/*", position):
            position = _comment_end(sql, position + 2)
        elif parentheses and sql[position] == "(":
            position += 1
        else:
            break
    return position


def first_keyword(sql: str) -> str:
    """The statement's first word, lowercased, after blanks, comments and
    opening parentheses (``''`` when there is none)."""
    word = _WORD.match(sql, skip_blanks(sql, parentheses=True))
    return word.group(0).lower() if word else ""


def without_terminator(sql: str) -> str:
    """``sql`` without the ``;`` (or several) that ends it, nor the blanks
    and comments after that: the one statement, fit to go inside parentheses."""
    while True:
        ends = [match.start() for kind, match in marks(sql) if kind == "end"]
        if not ends or skip_blanks(sql, ends[-1] + 1) < len(sql):
            return sql
        sql = sql[:ends[-1]]


def separated(sql: str) -> bool:
    """Whether a ``;`` stands between statements in ``sql`` (one that ends it aside)."""
    return any(kind == "end" for kind, _ in marks(without_terminator(sql)))
