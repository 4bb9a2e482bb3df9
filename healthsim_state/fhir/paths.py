"""Paths in FHIR resources and in entities: the declarations' element paths
(``category[0].coding[0].code``) read, written and dropped.

Each path is compiled once into straight-line code (:func:`_putter`,
:func:`_compile_parent`, :func:`_peeker`): most of an export's and an import's
time is spent here. Also the JSON tree helpers both directions share: the
copy an import takes apart, the pruning of what it leaves, the merge of what
it kept back into an export's resource.

List positions: an element taken out of a list leaves ``None`` in the kept copy
(a placeholder), so an export puts the regenerated item back at its place.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from ..mapping import fhir_section as d
from ..values import MISSING


# --- paths in resources ---------------------------------------------------------------------

def _put(node: dict, steps: tuple[d.Step, ...], value: Any) -> None:
    """Write ``value`` at ``steps`` below ``node``, making objects and lists on the way
    (a list too short for an index is padded with None: see :func:`_compact`)."""
    last = len(steps) - 1
    for position, step in enumerate(steps):
        if step.index is None:
            if position == last:
                node[step.key] = value
                return
            node = node.setdefault(step.key, {})
            continue
        items = node.setdefault(step.key, [])
        if len(items) < step.index:
            holed = getattr(_PADDING, "holed", None)
            if holed is not None:
                holed.append(items)  # a hole: the list is compacted once the resource is made
        while len(items) <= step.index:
            items.append(None)
        if position == last:
            items[step.index] = value
            return
        if items[step.index] is None:
            items[step.index] = {}
        node = items[step.index]


_PADDING = threading.local()  # the lists a _put left a hole in (per thread: exports may run in threads)


def _putter(steps: tuple[d.Step, ...]) -> Callable[[dict, Any], None]:
    """``_put`` for one path, generated once as straight-line code (no loop
    over steps: most of an export's time is spent writing elements)."""
    lines = ["def put(node, value):", *_put_lines(steps, "node", "value", "    ")]
    namespace: dict[str, Any] = {"_PADDING": _PADDING}
    exec(compile("\n".join(lines), f"<fhir put {'.'.join(s.key for s in steps)}>", "exec"), namespace)
    return namespace["put"]


def _put_lines(steps: tuple[d.Step, ...], node: str, value: str, indent: str) -> list[str]:
    """The source of ``_put(node, steps, value)`` for one path (``node`` is
    rebound on the way down; needs ``_PADDING`` and ``items`` free)."""
    lines = []
    last = len(steps) - 1
    for position, step in enumerate(steps):
        key = repr(step.key)
        if step.index is None:
            lines.append(f"{node}[{key}] = {value}" if position == last else f"{node} = {node}.setdefault({key}, {{}})")
            continue
        i = step.index
        lines += [f"items = {node}.setdefault({key}, [])",
                  f"if len(items) <= {i}:",
                  f"    if len(items) < {i}:",
                  "        _PADDING.holed.append(items)",
                  f"    items.extend([None] * ({i + 1} - len(items)))"]
        if position == last:
            lines.append(f"items[{i}] = {value}")
        else:
            lines += [f"{node} = items[{i}]",
                      f"if {node} is None:",
                      f"    {node} = items[{i}] = {{}}"]
    return [indent + line for line in lines]


def _parent(node: Any, steps: tuple[d.Step, ...]) -> Any:
    """The container holding the last step's value (a dict, or a list for an
    indexed last step), or MISSING. A path compiled with the declarations runs
    its generated function (see :func:`_compile_parent`)."""
    entry = _PARENTS.get(id(steps))
    if entry is not None and entry[0] is steps:
        return entry[1](node)
    return _parent_generic(node, steps)


_PARENTS: dict[int, tuple[tuple, Callable[[Any], Any]]] = {}  # id(steps) -> (steps, function); steps kept alive


def _compile_parent(steps: tuple[d.Step, ...]) -> None:
    """Generate :func:`_parent` for one path of the declarations (and the
    relative paths of its slices): straight-line code, no loop over steps."""
    if id(steps) in _PARENTS and _PARENTS[id(steps)][0] is steps:
        return
    namespace: dict[str, Any] = {"MISSING": MISSING, "_slice": _slice}
    lines = ["def parent(node):"]
    for position, step in enumerate(steps[:-1]):
        lines += ["    if not isinstance(node, dict):", "        return MISSING",
                  f"    node = node.get({step.key!r}, MISSING)"]
        if step.index is not None:
            lines += ["    if not isinstance(node, list):", "        return MISSING"]
            if step.match:
                namespace[f"S{position}"] = _slicer(step.match)
                for relative, _ in step.match:
                    _compile_parent(relative)
                lines.append(f"    node = S{position}(node, {step.index})")
            else:
                lines += [f"    if len(node) <= {step.index}:", "        return MISSING",
                          f"    node = node[{step.index}]"]
    last = steps[-1]
    lines += ["    if not isinstance(node, dict):", "        return MISSING"]
    if last.index is None:
        lines.append("    return node")
    else:
        lines += [f"    items = node.get({last.key!r})",
                  f"    return items if isinstance(items, list) and len(items) > {last.index} else MISSING"]
    exec(compile("\n".join(lines), f"<fhir parent {'.'.join(s.key for s in steps)}>", "exec"), namespace)
    _PARENTS[id(steps)] = (steps, namespace["parent"])


_Key = tuple  # a path prefix's identity: (key, index, id(match)) a step


def _key(steps: tuple[d.Step, ...]) -> _Key:
    return tuple((step.key, step.index, id(step.match)) for step in steps)


class _PathSource:
    """A generated function's source (the readers of :mod:`.generated`, a
    slice's finder): its lines, the names they use, and the nodes held in
    locals (path prefix -> local name) at the current line, found from the
    local ``root`` by :meth:`node` as :func:`_compile_parent` walks. The root
    is a dict (a resource, a list item its caller tested): no test of it."""

    def __init__(self, root: str = "R", names: dict[str, Any] | None = None) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {"MISSING": MISSING, "_slice": _slice, **(names or {})}
        self.held: dict[_Key, str] = {}
        self.count = 0
        self.root = root
        self.indent = "    "  # where emit writes unless told

    def name(self, prefix: str, value: Any) -> str:
        self.count += 1
        name = f"{prefix}{self.count}"
        self.names[name] = value
        return name

    def local(self) -> str:
        self.count += 1
        return f"n{self.count}"

    def emit(self, *lines: str, indent: str | None = None) -> None:
        indent = self.indent if indent is None else indent
        self.lines.extend(indent + line for line in lines)

    def node(self, steps: tuple[d.Step, ...]) -> str:
        """The local holding the node ``steps`` lead to from the root (MISSING
        when the resource has none there): written here unless held."""
        if not steps:
            return self.root
        key = _key(steps)
        held = self.held.get(key)
        if held is not None:
            return held
        above = self.node(steps[:-1])
        step, var = steps[-1], self.local()
        if above == self.root:
            self.emit(f"{var} = {above}.get({step.key!r}, MISSING)")
        else:
            self.emit(f"{var} = {above}.get({step.key!r}, MISSING) if isinstance({above}, dict) else MISSING")
        if step.index is not None:
            i = step.index
            if step.match:
                self.count += 1
                found = f"m{self.count}_slice"  # _slice of this match (m<n>_slice: a slice look-up, read as one)
                self.names[found] = _slicer(step.match)
                self.emit(f"{var} = {found}({var}, {i}) if isinstance({var}, list) else MISSING")
            else:
                self.emit(f"{var} = {var}[{i}] if isinstance({var}, list) and len({var}) > {i} else MISSING")
        self.held[key] = var
        return var

    def holder(self, steps: tuple[d.Step, ...]) -> str:
        """A local holding what the last step looks in (see :func:`.paths._compile_parent`)."""
        above, last = self.node(steps[:-1]), steps[-1]
        if last.index is None and above == self.root:
            return above
        if last.index is None:  # the node itself when a dict: held as a node below it (forgotten with it)
            key = _key(steps[:-1]) + (("", None, 0),)
            var = self.held.get(key)
            if var is None:
                var = self.held[key] = self.local()
                self.emit(f"{var} = {above} if isinstance({above}, dict) else MISSING")
        else:
            var = self.local()
            test = "" if above == self.root else f" if isinstance({above}, dict) else None"
            self.emit(f"{var} = {above}.get({last.key!r}){test}",
                      f"{var} = {var} if isinstance({var}, list) and len({var}) > {last.index} else MISSING")
        return var

    def found(self, steps: tuple[d.Step, ...], holder: str, value: str, *, none_missing: bool) -> None:
        """``value = `` what the last step finds in ``holder`` (a list's None
        as MISSING with ``none_missing``, as :func:`_peek` has it)."""
        last = steps[-1]
        if last.index is None and holder == self.root:
            self.emit(f"{value} = {holder}.get({last.key!r}, MISSING)")
        elif last.index is None:
            self.emit(f"{value} = MISSING if {holder} is MISSING else {holder}.get({last.key!r}, MISSING)")
        elif none_missing:
            self.emit(f"{value} = MISSING if {holder} is MISSING or {holder}[{last.index}] is None "
                      f"else {holder}[{last.index}]")
        else:
            self.emit(f"{value} = MISSING if {holder} is MISSING else {holder}[{last.index}]")

    def moved(self, steps: tuple[d.Step, ...], below: bool = False) -> None:
        """The element at ``steps`` may have been taken out (``below``: any
        element below it): forget the nodes held there and beneath."""
        key = _key(steps)
        self.held = {k: v for k, v in self.held.items() if k[:len(key)] != key or (below and len(k) == len(key))}



def _parent_generic(node: Any, steps: tuple[d.Step, ...]) -> Any:
    for step in steps[:-1]:
        if not isinstance(node, dict):
            return MISSING
        node = node.get(step.key, MISSING)
        if step.index is not None:
            if not isinstance(node, list):
                return MISSING
            node = _slice(node, step.match, step.index) if step.match else (
                node[step.index] if len(node) > step.index else MISSING)
    if not isinstance(node, dict):
        return MISSING
    last = steps[-1]
    if last.index is None:
        return node
    items = node.get(last.key)
    return items if isinstance(items, list) and len(items) > last.index else MISSING


def _room_at(node: dict, steps: tuple[d.Step, ...]) -> bool:
    """Whether every item before the last step's index is there already."""
    holder = _parent(node, steps[:-1] + (d.Step(steps[-1].key, 0),))
    return holder is not MISSING and len(holder) >= steps[-1].index and None not in holder[:steps[-1].index]


def _slice(items: list, match: tuple, index: int) -> Any:
    """The first item whose constants at ``match``'s paths are equal where
    present (one at least: a constant may be written only ``with`` a column);
    else the item at ``index`` if it holds none of them; else MISSING.
    Remembered while one resource is read (see :func:`_reading`): every element
    of a slice looks for the same item."""
    entry = _FINDERS.get(id(match))  # _find_slice, inline: most look-ups are new ones
    if entry is None or entry[0] is not match:
        entry = _FINDERS[id(match)] = (match, _slice_finder(match))
    memo = getattr(_SLICES, "memo", None)
    if memo is None:
        return entry[1](items, index)
    key = (id(items), id(match), index)
    found = memo.get(key, _NOT_FOUND)
    if found is _NOT_FOUND:
        found = memo[key] = entry[1](items, index)
        if found is not MISSING and not (index < len(items) and items[index] is found):
            moved = getattr(_SLICES, "moved", None)
            if moved is not None:  # an import: the export must put it back there (see _slice_order)
                moved.append((items, index, next(i for i, item in enumerate(items) if item is found)))
    return found


def _slicer(match: tuple) -> Callable[[list, int], Any]:
    """:func:`_slice` of one ``match``, its finder bound (the generated code
    calls it for every slice of every resource: no look-up of the finder a
    call); the same memo and notes of moved slices as :func:`_slice`'s."""
    entry = _FINDERS.get(id(match))
    if entry is None or entry[0] is not match:
        entry = _FINDERS[id(match)] = (match, _slice_finder(match))
    find, match_id = entry[1], id(match)  # match is kept alive by _FINDERS

    def slice_of(items: list, index: int) -> Any:
        memo = getattr(_SLICES, "memo", None)
        if memo is None:
            return find(items, index)
        key = (id(items), match_id, index)
        found = memo.get(key, _NOT_FOUND)
        if found is _NOT_FOUND:
            found = memo[key] = find(items, index)
            if found is not MISSING and not (index < len(items) and items[index] is found):
                moved = getattr(_SLICES, "moved", None)
                if moved is not None:  # an import: the export must put it back there (see _slice_order)
                    moved.append((items, index, next(i for i, item in enumerate(items) if item is found)))
        return found
    return slice_of


_SLICES = threading.local()
_HASHABLE = (str, int, float, bool)  # JSON leaves an index of constants can hold
_NOT_FOUND = object()


class _reading:
    """While a resource is read, slices found are remembered (the lists do not
    change until the constants are dropped, after every element was read)."""

    def __enter__(self):
        self.outer = getattr(_SLICES, "memo", None)
        _SLICES.memo = {}

    def __exit__(self, *exc):
        _SLICES.memo = self.outer


def _find_slice(items: list, match: tuple, index: int) -> Any:
    entry = _FINDERS.get(id(match))
    if entry is None or entry[0] is not match:
        entry = _FINDERS[id(match)] = (match, _slice_finder(match))
    return entry[1](items, index)


_FINDERS: dict[int, tuple[tuple, Callable[[list, int], Any]]] = {}  # id(match) -> (match, its finder)


def _slice_finder(match: tuple) -> Callable[[list, int], Any]:
    """The search :func:`_slice` makes for one slice, generated once as
    straight-line code (the constants' paths walked once an item, their
    common nodes shared): the first dict item whose constants are equal
    where present (one at least), else the dict at ``index`` holding none."""
    source = _PathSource("item")
    source.emit("for item in items:", "    if not isinstance(item, dict):", "        continue", "    equal = False")
    source.indent = "        "
    for steps, value in match:
        found = source.local()
        source.found(steps, source.holder(steps), found, none_missing=True)
        source.emit(f"if {found} is not MISSING:", f"    if {found} != {source.name('V', value)}:", "        continue",
                    "    equal = True")
    source.emit("if equal:", "    return item")
    source.indent, source.held = "    ", {}
    source.emit("if index < len(items):", "    item = items[index]", "    if isinstance(item, dict):")
    source.indent = "            "
    for steps, _ in match:
        found = source.local()
        source.found(steps, source.holder(steps), found, none_missing=True)
        source.emit(f"if {found} is not MISSING:", "    return MISSING")
    source.emit("return item")
    source.indent = "    "
    source.emit("return MISSING")
    lines = ["def find(items, index):", *source.lines]
    exec(compile("\n".join(lines), "<fhir slice>", "exec"), source.names)
    return source.names["find"]


def _slice_order(root: Any, moved: list, memo: dict) -> list:
    """``[[path, declared index, position], ...]`` of the slices an import found
    away from their declared index (Synthea writes a blood pressure's diastolic
    component before the systolic): the export puts its made slices back there,
    so the elements kept beside them stay with their own slice. Lists the export
    puts back as they were without help are left out. Called once the constants
    were dropped (a slice taken whole is empty then); ``memo`` is the read's
    (see :func:`_slice`): the other slices of those lists, found in place."""
    lists: dict[int, tuple[list, dict[int, int]]] = {}
    for items, declared, position in moved:
        lists.setdefault(id(items), (items, {}))[1][declared] = position
    for (list_id, _, declared), item in memo.items():
        if list_id in lists and item is not MISSING:
            lists[list_id][1].setdefault(declared, declared)
    needed = {key: places for key, (items, places) in lists.items() if not _compacts_back(items, places)}
    if not needed:
        return []
    paths: dict[int, tuple] = {}

    def walk(node: Any, path: tuple) -> None:
        if isinstance(node, list) and id(node) in needed:
            paths[id(node)] = path
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(value, (dict, list)):
                walk(value, path + (key,))

    walk(root, ())
    return sorted([list(paths[key]), declared, position] for key, places in needed.items() if key in paths
                  for declared, position in places.items() if declared != position)


def _compacts_back(items: list, places: dict[int, int]) -> bool:
    """Whether an export gives these slices their places without help: the list
    held only them, in their declared order (absent ones close up), each taken whole."""
    ranks = [position for _, position in sorted(places.items())]
    return ranks == list(range(len(items))) and all(item is None or _prune(item) is MISSING for item in items)


def _put_slices_back(made: dict, order: Any) -> None:
    """Move made slices to the positions :func:`_slice_order` noted (outer lists first)."""
    moves: dict[tuple, dict[int, int]] = {}
    for path, declared, position in order if isinstance(order, list) else ():
        moves.setdefault(tuple(path), {})[declared] = position
    for path in sorted(moves, key=len):
        items = made
        for step in path:
            ok = isinstance(items, dict) if isinstance(step, str) else isinstance(items, list) and step < len(items)
            items = items[step] if ok else None
        if not isinstance(items, list):
            continue
        places = {d: p for d, p in moves[path].items() if d < len(items) and items[d] is not None}
        out: list = [None] * max([len(items), *(p + 1 for p in places.values())])
        for declared, position in places.items():
            out[position] = items[declared]
        rest = []  # the others stay where they are, unless a moved slice took the place
        for i, item in enumerate(items):
            if i in places or item is None:
                continue
            if out[i] is None:
                out[i] = item
            else:
                rest.append(item)
        items[:] = out + rest


def _peeker(steps: tuple[d.Step, ...]) -> Callable[[Any], Any]:
    """:func:`_peek` for one path, bound once to its generated parent function
    (a reader calls it for every resource: no lookup of the path each time)."""
    entry = _PEEKERS.get(id(steps))
    if entry is not None and entry[0] is steps:
        return entry[1]
    _compile_parent(steps)
    parent = _PARENTS[id(steps)][1]
    last = steps[-1]
    key, index = last.key, last.index
    if index is None:
        def peek(node: Any) -> Any:
            holder = parent(node)
            return MISSING if holder is MISSING else holder.get(key, MISSING)
    else:
        def peek(node: Any) -> Any:
            holder = parent(node)
            if holder is MISSING:
                return MISSING
            value = holder[index]
            return MISSING if value is None else value
    _PEEKERS[id(steps)] = (steps, peek)
    return peek


_PEEKERS: dict[int, tuple[tuple, Callable[[Any], Any]]] = {}  # id(steps) -> (steps, peek); steps kept alive


def _peek(node: Any, steps: tuple[d.Step, ...]) -> Any:
    holder = _parent(node, steps)
    if holder is MISSING:
        return MISSING
    last = steps[-1]
    if last.index is None:
        return holder.get(last.key, MISSING)
    value = holder[last.index]
    return MISSING if value is None else value


def _everywhere(node: Any, keys: tuple[tuple[str, bool], ...]) -> list:
    """Every value at a path, each list step taken at every position: what
    :func:`_peek` finds there (by index or by slice) is always among them."""
    found = [node]
    for key, listed in keys:
        found = [item.get(key, MISSING) for item in found if isinstance(item, dict)]
        if listed:
            found = [item for items in found if isinstance(items, list) for item in items]
    return found


def _everywhere_function(keys: tuple[tuple[str, bool], ...]) -> Callable[[Any], list]:
    """:func:`_everywhere` for one path, generated once as nested loops (no
    list made a step)."""
    lines, indent, node = ["def everywhere(node):", "    found = []"], "    ", "node"
    for depth, (key, listed) in enumerate(keys):
        value = f"v{depth}"
        lines += [f"{indent}if isinstance({node}, dict):", f"{indent}    {value} = {node}.get({key!r}, MISSING)"]
        indent += "    "
        if listed:
            lines += [f"{indent}if isinstance({value}, list):", f"{indent}    for i{depth} in {value}:"]
            indent += "        "
            value = f"i{depth}"
        node = value
    lines += [f"{indent}found.append({node})", "    return found"]
    namespace: dict[str, Any] = {"MISSING": MISSING}
    exec(compile("\n".join(lines), f"<fhir everywhere {'.'.join(k for k, _ in keys)}>", "exec"), namespace)
    return namespace["everywhere"]


def _constants_test(pairs: tuple[tuple[tuple[d.Step, ...], Any], ...]) -> Callable[[Any], bool]:
    """Whether a resource holds every constant of ``pairs`` (path, value) at
    its path, as :func:`_peek` finds it (slices by :func:`_slice`): one
    function, the paths' common nodes walked once, the first difference ends it."""
    source = _PathSource("R")
    for steps, value in pairs:
        found = source.local()
        source.found(steps, source.holder(steps), found, none_missing=True)
        source.emit(f"if {found} != {source.name('V', value)}:", "    return False")
    source.emit("return True")
    lines = ["def holds(R):", *source.lines]
    exec(compile("\n".join(lines), "<fhir constants>", "exec"), source.names)
    return source.names["holds"]


def _drop(node: Any, steps: tuple[d.Step, ...]) -> None:
    holder = _parent(node, steps)
    if holder is MISSING:
        return
    last = steps[-1]
    if last.index is None:
        holder.pop(last.key, None)
    else:
        holder[last.index] = None  # a placeholder: later items keep their positions


def _prune(node: Any) -> Any:
    """``node`` without empty objects, and without lists that hold only placeholders.
    (Leaves are not passed to a call of their own: most of a resource is leaves;
    JSON data holds plain dicts and lists, so their classes are compared, not
    ``isinstance``d: this runs over every node of every imported resource.)"""
    cls = node.__class__
    if cls is dict:
        out = {}
        for key, value in node.items():
            kind = value.__class__
            if kind is dict or kind is list:
                value = _prune(value)
                if value is MISSING:
                    continue
            out[key] = value
        return out if out else MISSING
    if cls is list:
        items = []
        kept = False
        for item in node:
            kind = item.__class__
            if kind is dict or kind is list:
                item = _prune(item)
                if item is MISSING:
                    item = None
            if item is not None:
                kept = True
            items.append(item)
        return items if kept else MISSING
    if isinstance(node, (dict, list)):  # a subclass (not from JSON): as plain data
        return _prune(dict(node) if isinstance(node, dict) else list(node))
    return node


def _prune_owned(node: Any) -> Any:
    """:func:`_prune` done in place, for a tree the reading owns (its copy of a
    resource, or a resource given up to it): emptied objects and lists are
    taken out of their holders, not rebuilt around the values that stay (a
    third less time, and no second set of containers). Equal to
    :func:`_prune`'s result; a subclass of dict or list is left to it."""
    cls = node.__class__
    if cls is dict:
        gone = None
        for key, value in node.items():
            kind = value.__class__
            # an empty one is MISSING without a call (most are: what the readers emptied), and so is
            # a list of None, {} and [] only (what is left of an identifier, a profile, a coding list):
            # no item true, and none of the other false JSON values (0, 0.0, False, "": equal to 0 or "")
            if (kind is dict and (not value or _prune_owned(value) is MISSING)) or \
                    (kind is list and (not any(value) and 0 not in value and "" not in value
                                      or _prune_owned(value) is MISSING)):
                if gone is None:
                    gone = [key]
                else:
                    gone.append(key)
        if gone is not None:
            for key in gone:
                del node[key]
        return node if node else MISSING
    if cls is list:
        kept = False
        for index, item in enumerate(node):
            kind = item.__class__
            if kind is dict or kind is list:
                if not item or (kind is list and not any(item) and 0 not in item and "" not in item) \
                        or _prune_owned(item) is MISSING:  # (as above)
                    node[index] = None
                else:
                    kept = True
            elif item is not None:
                kept = True
        return node if kept else MISSING
    return _prune(node)


def _compact(node: Any) -> Any:
    """Drop list holes an export left (an item after an absent one moves up)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, (dict, list)):
                node[key] = _compact(value)
        return node
    if isinstance(node, list):
        return [_compact(item) for item in node if item is not None]
    return node


def _merge(made: Any, kept: Any) -> Any:
    """An export's resource with the elements an import kept put back. Kept
    values win at a leaf (the declaration did not read them, so they are the
    original's); a kept list's placeholders take the made items in order."""
    if isinstance(made, dict) and isinstance(kept, dict):
        out = dict(made)
        for key, value in kept.items():
            out[key] = _merge(made[key], value) if key in made else _fill(value)
        return out
    if isinstance(made, list) and isinstance(kept, list):
        if any(item is None for item in kept) and not _facing(made, kept):
            fresh = iter(item for item in made if item is not None)
            out = [next(fresh, None) if item is None else item for item in kept]
            out.extend(fresh)
            return [item for item in out if item is not None]
        out = [_merge_at(made[i] if i < len(made) else None, kept[i]) for i in range(len(kept))]
        return [item for item in out if item is not None] + [item for item in made[len(kept):] if item is not None]
    return kept


def _merge_at(made: Any, kept: Any) -> Any:
    """One position of a list merged by position: a placeholder takes the made
    item, a position with nothing made keeps the kept item."""
    if kept is None:
        return made
    return kept if made is None else _merge(made, kept)


def _facing(made: list, kept: list) -> bool:
    """Whether every placeholder of a kept list has a made item at its position
    (slices at the places they came: a partly kept slice merges with its own
    made item, not with the next placeholder's)."""
    return len(made) >= len(kept) and all(made[i] is not None for i, item in enumerate(kept) if item is None)


def _fill(kept: Any) -> Any:
    """A kept value with nothing made for it: placeholders whose item is gone drop out."""
    if isinstance(kept, list):
        return [_fill(item) for item in kept if item is not None]
    if isinstance(kept, dict):
        return {key: _fill(value) for key, value in kept.items()}
    return kept


def _copy(value: Any) -> Any:
    """A deep copy of JSON data (leaves are shared: they are immutable).
    Classes compared, not ``isinstance``d (see :func:`_prune`)."""
    cls = value.__class__
    if cls is dict:
        out = {}
        for key, item in value.items():
            kind = item.__class__
            out[key] = _copy(item) if kind is dict or kind is list else item
        return out
    if cls is list:
        return [_copy(item) if item.__class__ is dict or item.__class__ is list else item for item in value]
    if isinstance(value, (dict, list)):  # a subclass (not from JSON): copied as plain data
        return _copy(dict(value) if isinstance(value, dict) else list(value))
    return value


# --- paths in entities ----------------------------------------------------------------------


def _field_and_getter(mapping, column: str | None):
    """The field a declaration names by ``column`` and the getter of its
    value from an entity; ``(None, None)`` when the declaration names none."""
    if not column:
        return None, None
    field = mapping.field(column)
    return field, _getter(field.path)


def _getter(path: tuple[str, ...]) -> Callable[[dict], Any]:
    if len(path) == 1:
        key = path[0]
        return lambda entity: entity.get(key)
    if len(path) == 2:
        first, second = path

        def get2(entity: dict) -> Any:
            inner = entity.get(first)
            return inner.get(second) if isinstance(inner, dict) else None
        return get2

    def get(entity: dict) -> Any:
        node: Any = entity
        for key in path:
            if not isinstance(node, dict):
                return None
            node = node.get(key)
        return node
    return get


def _set(entity: dict, path: tuple[str, ...], value: Any) -> None:
    node = entity
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value




def _original_steps(steps: tuple[d.Step, ...]) -> tuple[d.Step, ...] | None:
    """Where a mapped value's original spelling goes (see ORIGINAL_VALUE): the
    ``_<key>`` beside a primitive, FHIR's place for its extensions; None for
    an item of a list."""
    last = steps[-1]
    if last.index is not None:
        return None
    original = steps[:-1] + (d.Step("_" + last.key, None),)
    _compile_parent(original)
    return original


def _coding_shape(element: d.Element) -> tuple[bool, bool, tuple[d.Step, ...]]:
    """Whether a coding element is a bare Coding (``as: Coding``: Encounter.class),
    whether it names one Coding (bare, or a path ending in ``coding[i]``: several
    systems side by side) rather than the CodeableConcept, and the path of its
    list of codings."""
    steps = element.steps
    bare = element.primitive == "Coding"
    single = bare or (steps[-1].key == "coding" and steps[-1].index is not None)
    list_steps = steps[:-1] + (d.Step("coding", None),) if single else steps + (d.Step("coding", None),)
    return bare, single, list_steps


def _columns_of(element: d.Element) -> list[str]:
    """The entity columns an element reads and writes."""
    if element.kind == "field":
        return [element.field]
    if element.kind == "coding":
        c = element.coding
        return [x for x in (c.code, c.display, c.system_field) if x]
    if element.kind == "quantity":
        return [x for x in (element.quantity.value, element.quantity.unit_field) if x]
    if element.kind == "reference":
        return [own for own, _ in element.reference.fields]
    return []
