"""Ours against the floor: what each operation costs next to what DuckDB itself
costs for the same work, measured in the same run (issue 24, decision 2).
Prints one JSON line per measure.

    python3 -m benchmarks.floors                  # small operations, then 100k-entity saves
    python3 -m benchmarks.floors --million        # and 1M-entity saves (several GB of RAM)
    python3 -m benchmarks.floors --only small --rounds 41
    python3 -m benchmarks.run --floors            # the same as the first

How a floor is made: our operation runs once, untimed, with ``duckdb.connect``
wrapped so that every call it makes on its connections is written down (the
SQL text and its parameters, the appender rows, the Arrow columns lent to an
``INSERT ... SELECT``). The floor then does that work with bare ``duckdb``:
the same file, connected with the same settings, the same calls, no Python
of ours around them. The floors are:

- a load of one small scenario, and ``list_scenarios(limit=None)`` over 300:
  connect, every statement the operation ran (its transaction, the store's
  state, the lookups, the SELECTs of each type), close;
- a save of 50 entities: connect, ``BEGIN``, the same rows written to the
  same tables by the same calls, ``COMMIT``, close (the bookkeeping around
  them, the scenario's row, tags and version, is ours, not the floor's);
  ``statements`` beside it is every call the save made, that bookkeeping
  too, replayed as the save of a new scenario (what our SQL costs without
  our Python);
- with ``keep_open`` (the file kept open between operations), the same on a
  connection that is already open: no connect, no close;
- a large save (100k, 1M): the Arrow floor, our exact ``INSERT`` statements
  fed with the Arrow columns our codec made (outside the timing) into an
  empty store, with ``COMMIT``, from connect to close as our save is timed;
  and ``read_json``: ``CREATE TABLE t AS SELECT * FROM read_json(...)``, one
  table a type, of the same entities as NDJSON, into a new file with the same
  settings, from connect to close;
- stored bytes per entity: our file after the save against ``read_json``'s.

Ours and its floor(s) take turns, round by round, the order rotating each
round, so a change in the shared machine's speed weighs on both sides.
``ours`` and ``floor`` are medians (ms, or bytes per entity); ``ratio`` is
the median of the rounds' own ratios (each round's ours over the same
round's floor, so a busy spell weighs on both), ``ratio_iqr`` their
interquartile range, and ``*_iqr`` that of each side's times. ``target`` is the issue's; ``met`` says whether the ratio is
within it. Compare ratios: the machine is what it is.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import duckdb

from benchmarks.generate import entity_count, legacy_scenario, ndjson_lines, scenario, write_ndjson

KEEP_OPEN = 1.0
"""Seconds the file stays open between operations in the ``keep_open`` measures."""

TARGETS = {  # issue 24: ours / floor
    ("load", False): 1.05, ("load", True): 1.10,
    ("save", False): 1.20, ("save", True): 1.50,
    ("list", False): 1.10, ("list", True): 1.30,
    "large save": 1.50, "bytes": 1.0,
}


# --- what an operation does on its connections ------------------------------------------------

class Recording:
    """The calls one operation made on DuckDB connections, in order:
    ``("connect", args, kwargs)``, ``("execute", sql, params)``,
    ``("table", name)``, ``("append", table, columns, rows)``,
    ``("register", name, arrow)``, ``("unregister", name)``."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    @property
    def connect(self) -> tuple[tuple, dict]:
        """How the operation first connected (path and settings)."""
        found = next((e for e in self.events if e[0] == "connect"), None)
        if found is None:  # the backend no longer calls duckdb.connect: the recording must follow it
            raise RuntimeError("the operation made no duckdb.connect call, so its calls were not recorded")
        return found[1], found[2]

    def statements(self) -> list[tuple]:
        """Every call made on a connection (what a load's floor does)."""
        return [e for e in self.events if e[0] != "connect"]

    def writes(self) -> list[tuple]:
        """The entity rows written: appender rows, and each ``INSERT`` that
        reads Arrow columns with the registering of them (a save's floor)."""
        out, lent = [], False
        for event in self.events:
            if event[0] in ("append", "register", "unregister"):
                out.append(event)
                lent = event[0] == "register"
            elif event[0] == "execute" and lent:
                out.append(event)
        return out


class _Appender:
    def __init__(self, inner: Any, event: tuple) -> None:
        self._inner, self._event = inner, event

    def __enter__(self) -> "_Appender":
        self._inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._inner.__exit__(*exc)

    def append_rows(self, rows: Any) -> Any:
        self._event[3].extend(rows)
        return self._inner.append_rows(rows)


class _Connection:
    """A DuckDB connection that writes down what is asked of it."""

    def __init__(self, con: duckdb.DuckDBPyConnection, recording: Recording) -> None:
        self._con, self._recording = con, recording

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)

    def execute(self, sql: Any, params: Any = None) -> Any:
        self._recording.events.append(("execute", sql, list(params) if params is not None else []))
        return self._con.execute(sql, params) if params is not None else self._con.execute(sql)

    def table(self, name: str) -> Any:
        self._recording.events.append(("table", name))
        return self._con.table(name)

    def register(self, name: str, view: Any) -> Any:
        # a view lent for one statement lets go of its array after it: keep the array itself
        self._recording.events.append(("register", name, getattr(view, "array", view)))
        return self._con.register(name, view)

    def unregister(self, name: str) -> Any:
        self._recording.events.append(("unregister", name))
        return self._con.unregister(name)

    def appender(self, table: str, *args: Any, **kwargs: Any) -> _Appender:
        event = ("append", table, kwargs.get("columns"), [])
        self._recording.events.append(event)
        return _Appender(self._con.appender(table, *args, **kwargs), event)


@contextmanager
def recording() -> Iterator[Recording]:
    """Every ``duckdb.connect`` made inside the block gives a connection
    that writes down its calls (our backend calls ``duckdb.connect``)."""
    found, connect = Recording(), duckdb.connect

    def recorded(*args: Any, **kwargs: Any) -> _Connection:
        found.events.append(("connect", args, kwargs))
        return _Connection(connect(*args, **kwargs), found)

    duckdb.connect = recorded
    try:
        yield found
    finally:
        duckdb.connect = connect


class _Stream:
    """An Arrow array offered to DuckDB again (a fresh stream each read)."""

    def __init__(self, array: Any) -> None:
        self.array = array

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self.array.__arrow_c_stream__(requested_schema)


def replay(con: duckdb.DuckDBPyConnection, events: list[tuple]) -> None:
    """Make the recorded calls on ``con``, fetching every result."""
    for event in events:
        kind = event[0]
        if kind == "execute":
            con.execute(event[1], event[2])
            if con.description is not None:
                con.fetchall()
        elif kind == "table":
            con.table(event[1])
        elif kind == "append":
            with con.appender(event[1], columns=event[2]) as appender:
                appender.append_rows(event[3])
        elif kind == "register":
            con.register(event[1], _Stream(event[2]))
        elif kind == "unregister":
            con.unregister(event[1])


def _bare(recorded: Recording, events: list[tuple], *, transaction: bool) -> Callable[[], None]:
    """Connect as the operation did, make ``events`` (in a transaction of
    their own when asked), close."""
    args, kwargs = recorded.connect

    def run() -> None:
        con = duckdb.connect(*args, **kwargs)
        try:
            _in_transaction(con, events) if transaction else replay(con, events)
        finally:
            con.close()
    return run


def _in_transaction(con: duckdb.DuckDBPyConnection, events: list[tuple]) -> None:
    con.execute("BEGIN TRANSACTION")
    replay(con, events)
    con.execute("COMMIT")


# --- rounds ------------------------------------------------------------------------------------

def _timed(operation: Callable[[], object]) -> float:
    started = time.perf_counter()
    operation()
    return time.perf_counter() - started


def interleaved(sides: dict[str, Callable[[], object]], rounds: int,
                before: Callable[[str], None] | None = None, after: Callable[[str], None] | None = None
                ) -> dict[str, list[float]]:
    """Seconds of each side, round by round; the order rotates each round
    (AB, BA, ...) so neither side always runs first. ``before`` and
    ``after`` (given the side's name) run outside the timing."""
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            if before is not None:
                before(name)
            times[name].append(_timed(sides[name]))
            if after is not None:
                after(name)
    return times


def _iqr(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return high - low


def _quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [values[0], values[0]]
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return [low, high]


def compared(measure: str, times: dict[str, list[float]], target: float, *, floor: str = "floor",
             **extra: Any) -> dict:
    """One line: ours against ``floor`` (and against any other side timed)."""
    ours = statistics.median(times["ours"])
    line: dict[str, Any] = {"measure": measure, **extra, "unit": "ms", "ours": round(ours * 1000, 2)}
    for side, values in times.items():
        if side == "ours":
            continue
        key = "floor" if side == floor else side
        median = statistics.median(values)
        ratios = [a / b for a, b in zip(times["ours"], values)]
        suffix = "" if key == "floor" else f"_{key}"
        line[key] = round(median * 1000, 2)
        line["ratio" + suffix] = round(statistics.median(ratios), 3)
        line["ratio_iqr" + suffix] = [round(q, 3) for q in _quartiles(ratios)]
        line[f"{key}_iqr"] = round(_iqr(values) * 1000, 2)
    line["ours_iqr"] = round(_iqr(times["ours"]) * 1000, 2)
    line.update(target=target, met=line["ratio"] <= target, rounds=len(times["ours"]))
    return line


# --- small operations ----------------------------------------------------------------------------

def fifty_entities() -> dict[str, list[dict]]:
    """The 50 entities of the small save (one patient's, eight types)."""
    small = scenario(1, seed=1)
    fifty = {"patient": small["patient"], "encounter": small["encounter"], "lab_result": small["lab_result"],
             "vital_sign": small["vital_sign"], "claim": small["claim"], "claim_line": small["claim_line"][:13],
             "medication": small["medication"], "diagnosis": small["diagnosis"]}
    assert entity_count(fifty) == 50, entity_count(fifty)
    return fifty


def _small_side(path: Path, keep: float, operation: Callable[[Any], object]) -> Callable[[], None]:
    from healthsim_state import StateManager

    def run() -> None:
        with StateManager(path, keep_open=keep) as sm:
            operation(sm)
    return run


def _recorded(run: Callable[[], None]) -> Recording:
    with recording() as found:
        run()
    return found


def measure_small(workdir: Path, rounds: int, *, background: int = 100, listed: int = 300) -> Iterator[dict]:
    """Load one small scenario (from a store of ``background`` 960-entity
    scenarios), save 50 entities, list ``listed`` scenarios: each with the
    file opened per operation and with ``keep_open``, against its floor."""
    from healthsim_state import StateManager
    from healthsim_state.backends.duckdb_backend import WARM

    loads = workdir / "loads.duckdb"
    with StateManager(loads, keep_open=KEEP_OPEN) as sm:
        block = scenario(12, seed=2)
        for index in range(background):
            sm.save_scenario(f"bulk-{index}", block)
        one = scenario(1, seed=3)
        sm.save_scenario("one", one)
    many = workdir / "many.duckdb"
    with StateManager(many, keep_open=KEEP_OPEN) as sm:
        patient = {"patient": scenario(1, seed=5)["patient"]}
        for index in range(listed):
            sm.save_scenario(f"scenario {index}", patient, tags=[f"t{index % 7}"], description=f"number {index}")
    saves = workdir / "saves.duckdb"
    StateManager(saves).create()
    WARM.release(loads)
    WARM.release(many)
    fifty, names = fifty_entities(), iter(range(10**9))

    operations = [
        ("load", f"load one {entity_count(one)}-entity scenario ({background + 1} in the store)", loads,
         lambda sm: sm.load_scenario("one")),
        ("save", "save 50 entities", saves, lambda sm: sm.save_scenario(f"small-{next(names)}", fifty)),
        ("list", f"list_scenarios(limit=None) of {listed}", many, lambda sm: sm.list_scenarios(limit=None)),
    ]
    for kind, measure, path, operation in operations:
        for keep in (0.0, KEEP_OPEN):
            yield _small_measure(kind, measure, _small_side(path, keep, operation), keep, rounds, path)
            WARM.release(path)


def _small_measure(kind: str, measure: str, ours: Callable[[], None], keep: float, rounds: int,
                   path: Path) -> dict:
    """Ours against its floor; for a save also against ``statements``, every
    call the save made (its bookkeeping too) replayed as a new scenario.
    The recorded run starts with the file let go: a kept instance lends its
    connection, made before the recording, to the next operation, which
    then connects nothing that the recording could see; the connection
    the recorded run keeps is let go after it (it records)."""
    from healthsim_state.backends.duckdb_backend import WARM

    ours()  # warm: mappings read, plans made
    WARM.release(path)
    recorded = _recorded(ours)
    WARM.release(path)
    ours()  # the kept instance open again, for the rounds
    events = recorded.writes() if kind == "save" else recorded.statements()
    statements = _as_new_scenarios(recorded.statements()) if kind == "save" else None
    args, kwargs = recorded.connect
    con = duckdb.connect(*args, **kwargs) if keep else None  # shares the instance kept open for ours
    try:
        if con is None:
            sides = {"ours": ours, "floor": _bare(recorded, events, transaction=kind == "save")}
            if statements is not None:
                sides["statements"] = lambda: _bare(recorded, statements.current, transaction=False)()
        else:
            sides = {"ours": ours, "floor": (lambda: _in_transaction(con, events)) if kind == "save"
                     else (lambda: replay(con, events))}
            if statements is not None:
                sides["statements"] = lambda: replay(con, statements.current)
        times = interleaved(sides, rounds, before=statements.renew if statements is not None else None)
    finally:
        if con is not None:
            con.close()
    return compared(measure, times, TARGETS[(kind, bool(keep))], keep_open=keep,
                    floor_does=_describe(events, kind, opened=bool(keep)))


class _as_new_scenarios:
    """A save's recorded calls made anew each round as the save of a new
    scenario: its id and name (found in the ``INSERT INTO scenarios``)
    swapped for new ones wherever they are a value, outside the timing.
    ``current`` is None when no such insert was recorded."""

    def __init__(self, events: list[tuple]) -> None:
        self.events, self.current = events, None
        found = next((e[2] for e in events if e[0] == "execute" and isinstance(e[1], str)
                      and e[1].startswith("INSERT INTO scenarios")), None)
        self.old = None if found is None else (found[0], found[1])
        self.rounds = 0

    def renew(self, side: str) -> None:
        if side != "statements" or self.old is None:
            return
        self.rounds += 1
        swap = {self.old[0]: str(uuid.uuid4()), self.old[1]: f"{self.old[1]}#{self.rounds}"}
        self.current = [_swapped(event, swap) for event in self.events]


def _swapped(event: tuple, swap: dict[str, str]) -> tuple:
    def value(v: Any) -> Any:
        return swap.get(v, v) if isinstance(v, str) else v

    if event[0] == "execute":
        return ("execute", event[1], [value(v) for v in event[2]])
    if event[0] == "append":
        return ("append", event[1], event[2], [tuple(map(value, row)) for row in event[3]])
    return event


def _describe(events: list[tuple], kind: str, *, opened: bool) -> str:
    calls = sum(1 for e in events if e[0] in ("execute", "append", "table"))
    start, end = ("on an open connection: ", "") if opened else ("connect, ", ", close")
    if kind == "save":
        rows = sum(len(e[3]) for e in events if e[0] == "append")
        return f"{start}BEGIN, the same {calls} writes ({rows} appender rows), COMMIT{end}"
    return f"{start}the same {calls} statements{end}"


# --- large saves -----------------------------------------------------------------------------------

def measure_large(workdir: Path, size: int, shape: str, rounds: int) -> Iterator[dict]:
    """A save of ``size`` entities into an empty store against the Arrow
    floor and against ``read_json``; then the stored bytes per entity."""
    from healthsim_state import StateManager

    make = legacy_scenario if shape == "legacy" else scenario
    data = make(max(1, size // 80), seed=size)
    entities = entity_count(data)
    empty = workdir / "empty.duckdb"
    if not empty.exists():
        StateManager(empty).create()
    lines = ndjson_lines(data)
    files = write_ndjson(lines, workdir)
    del lines
    target = {"ours": workdir / "ours.duckdb", "arrow": workdir / "arrow.duckdb",
              "read_json": workdir / "read_json.duckdb"}

    def fresh(side: str) -> None:  # outside the timing: each side writes into a new file
        gc.collect()
        _remove(target[side])
        if side != "read_json":
            shutil.copyfile(empty, target[side])

    def ours() -> None:
        with StateManager(target["ours"]) as sm:
            sm.save_scenario("bench", data)

    fresh("ours")
    recorded = _recorded(ours)  # our codec makes the Arrow columns, once
    writes = recorded.writes()
    args, kwargs = recorded.connect
    settings = kwargs.get("config", {})

    def arrow() -> None:
        con = duckdb.connect(str(target["arrow"]), config=settings)
        try:
            _in_transaction(con, writes)
        finally:
            con.close()

    def read_json() -> None:
        con = duckdb.connect(str(target["read_json"]), config=settings)
        try:
            con.execute("BEGIN TRANSACTION")
            for kind, path in files.items():
                con.execute(f'CREATE TABLE "{kind}" AS SELECT * FROM read_json(?, format = \'newline_delimited\')',
                            [str(path)])
            con.execute("COMMIT")
        finally:
            con.close()

    sizes: dict[str, int] = {}

    def measured(side: str) -> None:
        sizes[side] = target[side].stat().st_size

    times = interleaved({"ours": ours, "arrow": arrow, "read_json": read_json}, rounds, before=fresh, after=measured)
    for path in [*target.values(), *files.values()]:
        _remove(path)
    yield compared(f"save {entities:,} entities into an empty store", times, TARGETS["large save"], floor="arrow",
                   entities=entities, shape=shape,
                   floor_does=f"connect, BEGIN, our {sum(1 for e in writes if e[0] == 'execute')} INSERTs of ready "
                              "Arrow columns, COMMIT, close")
    yield {"measure": "stored bytes per entity", "entities": entities, "shape": shape, "unit": "bytes/entity",
           "ours": round(sizes["ours"] / entities, 1), "floor": round(sizes["read_json"] / entities, 1),
           "ratio": round(sizes["ours"] / sizes["read_json"], 3), "arrow_floor": round(sizes["arrow"] / entities, 1),
           "target": TARGETS["bytes"], "met": sizes["ours"] <= sizes["read_json"], "floor_does": "read_json's file"}


def _remove(path: Path) -> None:
    for each in (path, path.with_name(path.name + ".wal"), path.with_name(path.name + ".lock")):
        each.unlink(missing_ok=True)


# --- command line ---------------------------------------------------------------------------------

def measure_floors(workdir: Path, *, rounds: int = 21, large_rounds: int = 5, sizes: tuple[int, ...] = (100_000,),
                   shapes: tuple[str, ...] = ("canonical", "legacy"), only: str | None = None,
                   background: int = 100, listed: int = 300) -> Iterator[dict]:
    if only in (None, "small"):
        yield from measure_small(workdir, rounds, background=background, listed=listed)
    if only in (None, "large"):
        for size in sizes:
            for shape in shapes:
                yield from measure_large(workdir, size, shape, large_rounds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.floors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=21, help="rounds of each small operation (default 21)")
    parser.add_argument("--large-rounds", type=int, default=5, help="rounds of each large save (default 5)")
    parser.add_argument("--sizes", default="100000", help="comma-separated entity counts of the large saves")
    parser.add_argument("--million", action="store_true", help="add 1,000,000-entity saves")
    parser.add_argument("--only", choices=("small", "large"), help="only the small operations, or the large saves")
    parser.add_argument("--workdir", type=Path, help="where to put databases (default: a temp dir)")
    args = parser.parse_args(argv)
    sizes = tuple(int(n) for n in args.sizes.split(",") if n) + ((1_000_000,) if args.million else ())
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for line in measure_floors(Path(tmp), rounds=args.rounds, large_rounds=args.large_rounds, sizes=sizes,
                                   only=args.only):
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
