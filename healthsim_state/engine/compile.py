"""Compile a mapping, once, into specialised ``flatten`` and ``rebuild`` functions.

Like cattrs, we write the Python source for one entity type, compile it, and
register it with ``linecache`` so tracebacks show the generated lines. All the
interpretation of paths, aliases and defaults happens here, once per type; the
generated code is straight-line Python over local variables.

``flatten(entity, position, problems)`` returns the row
``(position, col_0, ..., col_n, residual)``, or ``None`` after appending
:class:`Problem` objects. The *residual* is everything the columns
cannot reproduce: unmapped keys at any depth, explicit nulls, and the given
form of values whose typed copy renders differently (``"2024-01-15T10:30Z"``),
left at their canonical path. It is JSON text, or ``None`` when empty (most
entities), so a load of a plain entity never parses JSON.

``rebuild(row)`` takes ``(position, col_0, ..., col_n, residual)`` and returns the
canonical entity: the residual, with every non-null column rendered at its path
unless the residual already holds a value there. ``rebuild_rows(rows)`` does
the same for a list of rows in one call, reading each column of JSON text
(the residuals, json columns) in one pass first; ``rebuild_columns`` for
the rows' columns.

Each function is generated and compiled the first time it is used, not when
the mapping is: a command that only lists scenarios compiles nothing, and a
save of one type compiles that type's ``flatten`` alone.

How containers are handled (the variables ``n0``, ``n1``, ... of the generated
code): every object on the way to a path or an alias is looked up once and
shallow-copied before anything is popped from it, so the caller's entity is
never changed. A container variable then holds the copy, ``MISSING`` (absent),
or ``BLOCKED`` (a non-object value sits there: fields below it are absent and
the value stays as given). An object that held mapped values and is left empty
is dropped (a load recreates it); an object that was empty to begin with is
unmapped data and is kept.
"""

from __future__ import annotations

import itertools
import linecache
from dataclasses import dataclass, field as dataclass_field
from functools import cached_property
from typing import Any, Callable, Iterable, Sequence

from ..column_types import HeldText, Unfit, identity
from ..errors import Problem, preview
from ..mapping.model import UUID4, Field, Mapping
from .keys import GENERATED
from ..values import MISSING, NotJSON, dump_residual_json, parse_json, parse_json_many, to_json


class _Blocked:
    __slots__ = ()

    def __repr__(self) -> str:
        return "BLOCKED"


BLOCKED: Any = _Blocked()

_counter = itertools.count()


@dataclass
class _Node:
    """A container on the way to some path: ``keys`` from the entity's root."""

    keys: tuple[str, ...]
    var: str
    parent: "_Node | None"
    children: dict[str, "_Node"] = dataclass_field(default_factory=dict)
    fields: list[tuple[int, Field]] = dataclass_field(default_factory=list)  # canonical leaves here


def _trie(mapping: Mapping) -> tuple[_Node, dict[tuple[str, ...], _Node]]:
    root = _Node((), "n0", None)
    nodes = {(): root}
    for path in [f.path for f in mapping.fields] + [a for f in mapping.fields for a in f.aliases]:
        node = root
        for depth in range(1, len(path)):
            keys = path[:depth]
            if keys not in nodes:
                nodes[keys] = _Node(keys, f"n{len(nodes)}", node)
                node.children[keys[-1]] = nodes[keys]
            node = nodes[keys]
    for index, f in enumerate(mapping.fields):
        nodes[f.path[:-1]].fields.append((index, f))
    return root, nodes


class _Source:
    """A tiny indenting source writer."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def __call__(self, line: str) -> None:
        self.lines.append("    " * self.depth + line)

    def indent(self) -> "_Source":
        self.depth += 1
        return self

    def dedent(self) -> None:
        self.depth -= 1

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


# --- flatten -------------------------------------------------------------------

def _flatten_source(mapping: Mapping, nodes: dict[tuple[str, ...], _Node]) -> str:
    out = _Source()
    out("def flatten(entity, position, problems):")
    out.indent()
    out("if entity.__class__ is not dict:")
    out("    problems.append(Problem('expected an object (a dict), got ' + type(entity).__name__, "
        "ENTITY, position, None, entity))")
    out("    return None")
    out("n0 = entity.copy()")
    out("failed = len(problems)")
    containers = [n for keys, n in nodes.items() if keys]
    for node in containers:  # parents come before children (insertion order)
        _open_container(out, node)
    for index, f in enumerate(mapping.fields):
        _flatten_field(out, index, f, nodes)
    for node in sorted(containers, key=lambda n: -len(n.keys)):
        parent = node.parent.var
        out(f"if {node.var}.__class__ is dict and not {node.var} and e_{node.var}:")
        out(f"    del {parent}[{node.keys[-1]!r}]")
    out("residual = dump_residual(n0, position, problems) if n0 else None")
    out("if len(problems) != failed:")
    out("    return None")
    columns = ", ".join(f"c{i}" for i in range(len(mapping.fields)))
    out(f"return (position, {columns}, residual)")
    return out.text()


def _open_container(out: _Source, node: _Node) -> None:
    """Look a container up in its parent and copy it (see module docstring).

    ``e_<var>`` records whether it held anything before we popped from it."""
    parent, var, key = node.parent.var, node.var, node.keys[-1]
    out(f"e_{var} = False")
    guard = parent != "n0"
    if guard:  # under a nested container that may itself be absent or blocked
        out(f"if {parent}.__class__ is not dict:")
        out(f"    {var} = {parent}")
        out("else:")
        out.indent()
    out(f"{var} = {parent}.get({key!r}, MISSING)")
    out(f"if {var}.__class__ is dict:")
    out(f"    e_{var} = len({var}) > 0")
    out(f"    {var} = {parent}[{key!r}] = {var}.copy()")
    out(f"elif {var} is not MISSING:")
    out(f"    {var} = BLOCKED")
    if guard:
        out.dedent()


def _lookup(out: _Source, keys: tuple[str, ...], nodes: dict[tuple[str, ...], _Node], *, alias: bool) -> None:
    """``v = <value at keys>``: MISSING if absent, BLOCKED under a non-object."""
    parent = nodes[keys[:-1]].var
    leaf = repr(keys[-1])
    if parent == "n0":
        out(f"v = n0.pop({leaf}, MISSING)")
        return
    out(f"if {parent}.__class__ is dict:")
    out(f"    v = {parent}.pop({leaf}, MISSING)")
    if not alias:  # an alias under a non-object is merely absent
        out(f"elif {parent} is not MISSING:")
        out("    v = BLOCKED")


def _ensure(out: _Source, node: _Node) -> None:
    """Make ``node`` a dict in place, creating absent parents (never BLOCKED here)."""
    if node.parent is None:
        return
    out(f"if {node.var}.__class__ is not dict:")
    out.indent()
    _ensure(out, node.parent)
    out(f"{node.var} = {node.parent.var}[{node.keys[-1]!r}] = {{}}")
    out.dedent()


def _flatten_field(out: _Source, index: int, f: Field, nodes: dict[tuple[str, ...], _Node]) -> None:
    # Paths may hold any character but a dot (a line break too): in the source they
    # appear only as escaped literals, never as raw text.
    sources = " | ".join(ascii(".".join(keys)) for keys in (f.path, *f.aliases))
    out(f"# {f.column} <- {sources}")
    out("v = MISSING")
    _lookup(out, f.path, nodes, alias=False)
    for alias in f.aliases:
        out("if v is MISSING:")
        out.indent()
        _lookup(out, alias, nodes, alias=True)
        out.dedent()
    if f.default == UUID4:  # the key is made from the whole entity, once it is flattened (see .keys)
        out("if v is MISSING:")
        out(f"    c{index} = GENERATED")
        out("elif v is BLOCKED:")
    else:
        if f.default is not MISSING:
            out("if v is MISSING:")
            out(f"    v = D{index}")
        out("if v is MISSING or v is BLOCKED:")
    out(f"    c{index} = None")
    if f.required:
        out(f"    problems.append(Problem(missing_message(v), ENTITY, position, {f.dotted!r}, None))")
    test = f.type.fast_test
    if test:
        out(f"elif {test}:")
        out(f"    c{index} = v")
    out("else:")
    out.indent()
    out(f"c{index}, v = convert(F{index}, v, position, problems)")
    out("if v is not MISSING:")
    out.indent()
    node = nodes[f.path[:-1]]
    _ensure(out, node)
    out(f"{node.var}[{f.path[-1]!r}] = v")
    out.dedent()
    out.dedent()


# --- rebuild -------------------------------------------------------------------

def _rebuild_source(mapping: Mapping, root: _Node) -> str:
    out = _Source()
    columns = ", ".join(f"c{i}" for i in range(len(mapping.fields)))
    out("def rebuild(row):")
    out.indent()
    out(f"_, {columns}, residual = row")
    out("if residual is None:")
    out.indent()
    out("e = {}")
    _build_plain(out, root, "e", itertools.count(), frozenset())
    out("return e")
    out.dedent()
    out("e = loads(residual)")
    _build_merged(out, root, "e", itertools.count(), frozenset())
    out("return e")
    return out.text()


def _rebuild_rows_source(mapping: Mapping, root: _Node) -> str:
    """``rebuild_rows(rows, residuals, texts)``: the entities of many rows
    (any iterable of them: a list, or ``zip`` over columns). The JSON texts
    (the residuals, and each json column's, in :func:`_parsed` order) come
    as columns of their own and are read first, each in one pass
    (``loads_many``); a row takes the next value of each of its non-null
    texts, so every branch below takes one whether it uses it or not."""
    out = _Source()
    in_order = _parsed(mapping)
    parsed = frozenset(in_order)
    columns = ", ".join(f"c{i}" for i in range(len(mapping.fields)))
    out("def rebuild_rows(rows, residuals, texts):")
    out.indent()
    out("residuals = iter(loads_many([t for t in residuals if t is not None]))")
    for order, index in enumerate(in_order):
        out(f"J{index} = iter(loads_many([t for t in texts[{order}] if t is not None]))")
    out("out = []")
    out("append = out.append")
    out(f"for _, {columns}, residual in rows:")
    out.indent()
    out("if residual is None:")
    out.indent()
    out("e = {}")
    _build_plain(out, root, "e", itertools.count(), parsed)
    out.dedent()
    out("else:")
    out.indent()
    out("e = next(residuals)")
    _build_merged(out, root, "e", itertools.count(), parsed)
    out.dedent()
    out("append(e)")
    out.dedent()
    out("return out")
    return out.text()


def _parsed(mapping: Mapping) -> tuple[int, ...]:
    """The fields whose column holds JSON text, parsed on the way out."""
    return tuple(i for i, f in enumerate(mapping.fields) if f.type.render is parse_json)


def _build_merged(out: _Source, node: _Node, var: str, names: "itertools.count[int]",
                  parsed: frozenset[int]) -> None:
    """Put each non-null column at its path in the parsed residual ``var``,
    unless the residual already holds a value there (the given form wins)."""
    for index, f in node.fields:
        key = repr(f.path[-1])
        if index in parsed:  # its value is taken whether used or not
            out(f"if c{index} is not None:")
            out(f"    v = next(J{index})")
            out(f"    if {key} not in {var}:")
            out(f"        {var}[{key}] = v")
            continue
        out(f"if c{index} is not None and {key} not in {var}:")
        out(f"    {var}[{key}] = {_render(index, f, parsed)}")
    for key, child in node.children.items():
        if not _has_fields(child):
            continue
        sub = f"d{next(names)}"
        out(f"{sub} = {var}.get({key!r})")
        out(f"if {sub}.__class__ is dict:")
        out.indent()
        _build_merged(out, child, sub, names, parsed)
        out.dedent()
        out("else:")  # absent (or null, or blocked: then the columns below are all null)
        out.indent()
        _plain_child(out, key, child, var, names, parsed)
        out.dedent()


def _render(index: int, f: Field, parsed: frozenset[int]) -> str:
    if index in parsed:
        return f"next(J{index})"
    return f"c{index}" if f.type.render is identity else f"R{index}(c{index})"


def _build_plain(out: _Source, node: _Node, var: str, names: "itertools.count[int]",
                 parsed: frozenset[int]) -> None:
    for index, f in node.fields:
        out(f"if c{index} is not None:")
        out(f"    {var}[{f.path[-1]!r}] = {_render(index, f, parsed)}")
    for key, child in node.children.items():
        if _has_fields(child):
            _plain_child(out, key, child, var, names, parsed)


def _plain_child(out: _Source, key: str, child: _Node, var: str, names: "itertools.count[int]",
                 parsed: frozenset[int]) -> None:
    """Build the object at ``var[key]`` from columns alone; attach it if not empty."""
    sub = f"d{next(names)}"
    out(f"{sub} = {{}}")
    _build_plain(out, child, sub, names, parsed)
    out(f"if {sub}:")
    out(f"    {var}[{key!r}] = {sub}")


def _has_fields(node: _Node) -> bool:
    return bool(node.fields) or any(_has_fields(c) for c in node.children.values())


# --- runtime helpers used by the generated code ------------------------------------

def _missing_message(value: Any) -> str:
    if value is BLOCKED:
        return "required field is missing: a non-object value sits on its path"
    return "required field is missing"


@dataclass(frozen=True, eq=False)
class Codec:
    """Everything per entity type that the engine compiles from one mapping;
    the generated functions and their source are made on first use."""

    mapping: Mapping
    # For the column-wise flatten (engine.columns): the slow path of one value
    # (``convert(field, value, position, problems) -> (column, kept)``), the
    # residual's JSON text (``dump_residual(rest, position, problems)``), and
    # what engine.columns keeps for this type (its plans, one per shape met).
    convert: Callable[[Field, Any, int, list[Problem]], tuple[Any, Any]] | None = None
    dump_residual: Callable[[dict, int, list[Problem]], str | None] | None = None
    cache: dict = dataclass_field(default_factory=dict, compare=False, repr=False)
    scope: dict[str, Any] = dataclass_field(default_factory=dict, compare=False, repr=False)  # generated code's

    @cached_property
    def _tree(self) -> tuple[_Node, dict[tuple[str, ...], _Node]]:
        return _trie(self.mapping)

    @cached_property
    def flatten_source(self) -> str:
        return _flatten_source(self.mapping, self._tree[1])

    @cached_property
    def rebuild_source(self) -> str:
        return _rebuild_source(self.mapping, self._tree[0])

    @cached_property
    def flatten(self) -> Callable[[Any, int, list[Problem]], tuple | None]:
        return _compile(self.flatten_source, "flatten", self.mapping.entity, self.scope)

    @cached_property
    def rebuild(self) -> Callable[[tuple], dict]:
        return _compile(self.rebuild_source, "rebuild", self.mapping.entity, self.scope)

    @cached_property
    def rebuild_texts(self) -> Callable[[Iterable[tuple], Sequence[Any], list[Sequence[Any]]], list[dict]]:
        """Generated: (rows, residual texts, json columns' texts) -> entities; see rebuild_rows."""
        source = _rebuild_rows_source(self.mapping, self._tree[0])
        return _compile(source, "rebuild_rows", self.mapping.entity, self.scope)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f.column for f in self.mapping.fields)

    @cached_property
    def _parsed(self) -> tuple[int, ...]:
        """:func:`_parsed` of the mapping, found once (a load asks it of every type)."""
        return _parsed(self.mapping)

    def rebuild_rows(self, rows: list[tuple]) -> list[dict]:
        """The entities of rows ``(position, col_0, ..., residual)``, as
        :attr:`rebuild` makes them one at a time."""
        return self.rebuild_texts(rows, [row[-1] for row in rows],
                                  [[row[i + 1] for row in rows] for i in self._parsed])

    def rebuild_columns(self, columns: Sequence[Sequence[Any]]) -> list[dict]:
        """The same from the rows' columns ``(positions, col_0, ..., residuals)``
        (no row tuples made: ``zip`` hands each one over in turn)."""
        return self.rebuild_texts(zip(*columns), columns[-1], [columns[i + 1] for i in self._parsed])

    @property
    def key_indexes(self) -> tuple[int, ...]:
        """Where the key columns sit in a row ``(position, col_0, ..., residual)``."""
        columns = self.columns
        return tuple(1 + columns.index(c) for c in self.mapping.primary_key)


def compile_mapping(mapping: Mapping) -> Codec:
    entity = mapping.entity

    def convert(f: Field, value: Any, position: int, problems: list[Problem]) -> tuple[Any, Any]:
        """The slow path of one value: null, canonical rendering, type check."""
        if value is None:
            if f.required or f.column in mapping.primary_key:
                problems.append(Problem("a key or required field may not be null", entity, position, f.dotted, None))
                return None, MISSING
            return None, None  # an explicit null: the column is NULL, the residual keeps the null
        try:
            return f.type.convert(value)
        except HeldText as held:
            if f.column in mapping.primary_key:
                problems.append(Problem("a key cannot hold a NUL character", entity, position, f.dotted, value))
                return None, MISSING
            return None, held.text  # the column stays NULL; the residual keeps the text
        except Unfit as reason:
            if f.strict:
                problems.append(Problem(f"{reason}, got {preview(value)} (type {f.type.name})",
                                        entity, position, f.dotted, value))
                return None, MISSING
        try:  # non-strict: keep the value exactly as given
            return None, to_json(value)
        except NotJSON as reason:
            problems.append(Problem(str(reason), entity, position, f.dotted, value))
            return None, MISSING

    def dump_residual(rest: dict, position: int, problems: list[Problem]) -> str | None:
        try:
            return dump_residual_json(to_json(rest))
        except NotJSON as reason:
            where = ".".join(str(k) for k in reason.path)
            problems.append(Problem(reason.reason, entity, position, where or None, None))
            return None
        except (RecursionError, ValueError) as reason:
            problems.append(Problem(f"cannot be stored as JSON ({reason})", entity, position, None, None))
            return None

    scope: dict[str, Any] = {
        "MISSING": MISSING, "BLOCKED": BLOCKED, "Problem": Problem, "ENTITY": entity,
        "GENERATED": GENERATED, "convert": convert, "dump_residual": dump_residual,
        "missing_message": _missing_message, "loads": parse_json, "loads_many": parse_json_many,
    }
    for index, f in enumerate(mapping.fields):
        scope[f"F{index}"] = f
        scope[f"D{index}"] = f.default
        scope[f"R{index}"] = f.type.render
    return Codec(mapping, convert, dump_residual, scope=scope)


def _compile(source: str, name: str, entity: str, scope: dict[str, Any]) -> Callable:
    filename = f"<healthsim-state {name} {entity} #{next(_counter)}>"
    code = compile(source, filename, "exec")
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = dict(scope)
    exec(code, namespace)
    return namespace[name]


