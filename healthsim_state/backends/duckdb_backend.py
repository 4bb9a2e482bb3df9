"""The DuckDB backend: one file (or ``:memory:``), opened per operation.

The file is open only while an operation runs, so an idle process never keeps
another out. Inside one process, the threads writing one file take turns (see
:meth:`DuckDBBackend._writer_turn`). Processes take turns first come, first
served, in a queue kept beside the file (``<file>.lock``, see
:mod:`.filelock`); then, while a program outside the queue holds the file's
lock, opening waits with the store's one :class:`~.base.Backoff`. The whole
wait lasts up to the lock timeout, then raises :class:`DatabaseLockedError`
naming the holder's PID.

A transaction's life (begin, commit, rollback, errors) is the base class's
template; this module supplies the hooks: the connection (the writer turn,
the queue, the kept instance, a failed first write's file removed) and
DuckDB's statements and errors.

Opening costs: creating the DuckDB instance (see the README's figures), and after a write,
closing it checkpoints the file. With ``keep_open=S`` (asked for, never by
default) the process keeps the instance for S seconds after its last
operation, for any manager of the file: operations in a burst then connect to
the live instance in well under a millisecond, and the checkpoint happens
once, when the file is let go. Meanwhile another process waits for the file
as it would for a running operation.

Every connection is made with extension autoinstall and autoload off, so that
opening a user-given path never reaches the network. ``:memory:`` keeps one
database for the backend's life (each session is a cursor on it).
"""

from __future__ import annotations

import atexit
import datetime as _dt
import glob
import importlib.util
import os
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import duckdb

from ..column_types import ColumnType
from ..errors import DatabaseLockedError, StoreError, StoreNotFoundError, TransactionConflictError
from . import filelock
from .base import Backend, Backoff, Dialect, Session, quote

MEMORY = ":memory:"

# Large reads go by way of NumPy when it is installed (it comes with pandas);
# not a dependency: without it they take a sixth longer. Imported by DuckDB
# at the first such read, not here (an import costs a command line call).
NUMPY = importlib.util.find_spec("numpy") is not None

DIALECT = Dialect(
    name="duckdb",
    types={"varchar": "VARCHAR", "integer": "INTEGER", "bigint": "BIGINT", "double": "DOUBLE",
           "boolean": "BOOLEAN", "date": "DATE", "timestamp": "TIMESTAMP", "json": "JSON"},
    read={
        "date": "CAST({0} AS VARCHAR)",
        # isoformat: 'T', and six digits of fraction only when there is one
        "timestamp": "CASE WHEN microsecond({0}) % 1000000 = 0 THEN strftime({0}, '%Y-%m-%dT%H:%M:%S') "
                     "ELSE strftime({0}, '%Y-%m-%dT%H:%M:%S.%f') END",
        "decimal_short": "CAST({0} AS DOUBLE)",
        "decimal_long": "CAST({0} AS VARCHAR)",
        "json": "CAST({0} AS VARCHAR)",
    },
    # A small read selects these as they are: DuckDB hands over dates, naive
    # datetimes, Decimals and JSON text, and their isoformat, float (both
    # correctly rounded: an unscaled integer of 15 digits over a power of ten)
    # and the text itself are exactly what the expressions above give, at
    # two thirds of the planning.
    read_after={"date": _dt.date.isoformat, "timestamp": _dt.datetime.isoformat, "decimal_short": float,
                "json": str},
)

# New files use 16 KB blocks: every table a checkpoint touches costs whole
# blocks, and with the default 256 KB a store of versions grew by megabytes a
# write (existing files keep the block size they were made with).
CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False,
          "default_block_size": 16_384}
_PID = re.compile(r"PID (\d+)")


class DuckDBBackend(Backend):
    dialect = DIALECT

    def __init__(self, path: str | Path, *, read_only: bool = False, lock_timeout: float = 10.0,
                 keep_open: float = 0.0):
        self.memory = str(path) == MEMORY
        self.path = Path(path).expanduser() if not self.memory else Path(MEMORY)
        self.label = str(self.path)
        self.read_only = read_only
        self.lock_timeout = lock_timeout
        self.keep_open = keep_open if not self.memory else 0.0
        self._memory_con: duckdb.DuckDBPyConnection | None = None
        self._memory_lock = threading.Lock()
        self._memory_key = f"{MEMORY}#{id(self)}"

    def exists(self) -> bool:
        return self.memory or self.path.is_file()

    def close(self) -> None:
        if self._memory_con is not None:
            self._memory_con.close()
            self._memory_con = None

    # --- the hooks of the transaction template (see Backend.session) ----------------------------

    driver_errors = (duckdb.Error,)

    @contextmanager
    def _connection(self, writable: bool, exclusive: bool) -> Iterator[Session]:
        """This process's writer turn (a write), the file's queue, a
        connection; when the block ends, the instance kept (``keep_open``)
        or let go, and a new file whose first write did not commit removed.
        (One writer at a time: a write holds the layout alone already.)"""
        with self._writer_turn(writable):
            # a kept instance of the file is in use now: it holds the file, no need to queue; its
            # idle connection, when no other session has it, is this session's (no connect, no close)
            kept, lent = (None, None) if self.memory else WARM.hold(self.path, self.read_only)
            read_only = self.read_only if kept is None else kept  # a kept read-write instance serves a reader too
            queue = not (self.memory or kept is not None)
            new = queue and not self.exists()  # (a file system call: only where the queue needs it)
            with self._queued(shared=self.read_only, create=not (new or self.read_only), queue=queue) as deadline:
                con, made = (lent, False) if lent is not None else self._connect(writable, deadline, read_only)
                committed = False
                try:
                    yield DuckDBSession(con, writable=writable, label=self.label, backend=self)
                    committed = True
                finally:
                    if self.keep_open and (committed or not made):
                        WARM.keep(self.path, read_only, self.keep_open, lent)  # before the close: the instance lives on
                    elif not self.memory:
                        WARM.release(self.path, lent)
                    removing = made and not committed and _empty(con)
                    left = removing and not self._remove_new_file()  # while con holds DuckDB's lock on it
                    if lent is None:  # a lent connection went back (or was closed) above
                        _close_quietly(con)
                    if left:  # Windows: an open file cannot be removed
                        self._remove_new_file()

    def _begin(self, session: Session) -> None:
        session.con.execute("BEGIN TRANSACTION")

    def _commit(self, session: Session) -> None:
        session.con.execute("COMMIT")

    def _rollback(self, session: Session) -> None:
        _rollback(session.con)

    def translate(self, error: BaseException) -> Exception:
        return translate(error, self.label)

    @contextmanager
    def _writer_turn(self, write: bool) -> Iterator[None]:
        """Writers of one file in one process take turns. Their connections
        share one DuckDB database, where two write transactions on the same
        rows conflict (and retrying does not help under steady load: a thread
        can lose every round); in turn, none conflicts. Other processes wait
        on the file's own lock."""
        if not write or self.read_only:
            yield
            return
        lock = _writer_lock(self._memory_key if self.memory else str(self.path.resolve()))
        if not lock.acquire(timeout=self.lock_timeout if self.lock_timeout > 0 else 0.001):
            raise DatabaseLockedError(
                f"{self.path} is being written by another thread of this process, and it went on for "
                f"{self.lock_timeout:g} s; wait for it to finish, or raise HEALTHSIM_LOCK_TIMEOUT",
                path=self.path, pid=os.getpid())
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def _queued(self, *, shared: bool, create: bool, queue: bool = True) -> Iterator[float]:
        """This process's turn at the file, first come, first served among
        the processes waiting for it (see :mod:`.filelock`; ``shared``: a
        read-only open, which goes with the readers next to it), held until
        the block ends. Yields the deadline for DuckDB's own lock: after a
        turn that came in time the file is free but for programs outside
        the queue; at the lock timeout it gets one last try, and the error
        names the holder's PID. ``create``: make the queue's file if it is
        not there (a read-only open, or the first write, writes no file)."""
        deadline = time.monotonic() + self.lock_timeout
        try:
            place = filelock.acquire(self.path, shared=shared, create=create, deadline=deadline) if queue else None
        except TimeoutError:
            place = None
        try:
            yield deadline
        finally:
            filelock.release(place)

    def _remove_new_file(self) -> bool:
        """A first write that failed leaves no file behind: bad input changes
        nothing. Removed while the connection still holds DuckDB's lock on
        it, and only while it is empty (see :func:`_empty`); a process
        waiting for the lock tries the path again, and makes a new file.
        Whether the file is gone."""
        for path in (_wal(self.path), self.path):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                return False
        return True

    @contextmanager
    def connection(self, *, write: bool, config: dict[str, Any] | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the file outside any transaction, for the features
        built on the backend (a user's query, with settings of its own;
        compacting, which replaces the file): this process's writer turn (a
        write) and the file's queue held, no kept instance (one process opens
        a file with one set of settings), closed when the block ends."""
        with self._writer_turn(write):
            WARM.release(self.path)
            with self._queued(shared=not write, create=write) as deadline:
                con = connect_waiting(self.path, self.lock_timeout, read_only=not write, config=config,
                                      deadline=deadline)
                try:
                    yield con
                finally:
                    _close_quietly(con)

    def _connect(self, write: bool, deadline: float, read_only: bool) -> tuple[duckdb.DuckDBPyConnection, bool]:
        """A connection, and whether this call made the file. ``read_only``
        is the backend's mode, or the mode of the instance a session holds
        (:meth:`_Warm.hold`)."""
        if self.memory:
            with self._memory_lock:
                if self._memory_con is None:
                    self._memory_con = duckdb.connect(MEMORY, config=CONFIG)
                return self._memory_con.cursor(), False
        if not self.path.is_file():
            if self.read_only or not write:
                raise StoreNotFoundError(f"no database at {self.path} (nothing has been saved there yet)")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StoreError(f"cannot create the directory for the database {self.path}: "
                                 f"{error.strerror or error}") from None
        return _open_waiting(self.path, self.lock_timeout, read_only=read_only, config=None, deadline=deadline)


class DuckDBSession(Session):
    dialect = DIALECT

    def __init__(self, con: duckdb.DuckDBPyConnection, *, writable: bool, label: str, backend: DuckDBBackend):
        self.con = con
        self.writable = writable
        self.label = label
        self._translated = backend.translated  # a bulk write's failure is ours at once: the store diagnoses it

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.con.execute(sql, params)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self.con.execute(sql, params).fetchall()

    def table_exists(self, table: str) -> bool:
        """Asked of the catalog through the Python API (``table()`` binds the
        name and runs nothing; a missing table fails nothing, the transaction
        goes on): several times cheaper on a fresh instance than a query of
        ``duckdb_tables()`` or ``information_schema``."""
        try:
            self.con.table(quote(table))
        except duckdb.CatalogException:
            return False
        return True

    @property
    def reads_columns(self) -> bool:
        return NUMPY

    def fetch_columns(self, sql: str, params: Sequence[Any], width: int) -> list[list]:
        """By way of NumPy where it is installed: DuckDB fills a NumPy array a
        column (a masked one where there are NULLs, so NULL stays apart from
        NaN) and ``tolist`` makes the Python values in C, a sixth less time
        than a tuple a row."""
        global NUMPY
        if not NUMPY:
            return super().fetch_columns(sql, params, width)
        try:
            arrays = self.con.execute(sql, params).fetchnumpy()
        except ImportError:  # found but not importable: rows from now on
            NUMPY = False
            return super().fetch_columns(sql, params, width)
        if len(arrays) != width:  # two columns of one name would share a key
            return super().fetch_columns(sql, params, width)
        return [array.tolist() for array in arrays.values()]

    def stream(self, sql: str, params: Sequence[Any], batch_size: int) -> Iterator[list[tuple]]:
        cursor = self.con.execute(sql, params)
        while True:
            rows = cursor.fetchmany(batch_size)
            if not rows:
                return
            yield rows

    def append(self, table: str, columns: Sequence[str], rows: Sequence[tuple]) -> None:
        with self._translated(), self.con.appender(table, columns=list(columns)) as appender:
            appender.append_rows(rows)

    def append_columns(self, table: str, columns: Sequence[str], arrays: Sequence[Any],
                       types: Sequence[ColumnType | None], length: int) -> None:
        """The columns as Arrow arrays (built by nanoarrow, in C, from the
        Python lists), inserted with one ``INSERT ... SELECT`` that DuckDB runs
        over them; dates and timestamps come as ISO text and are cast in SQL."""
        from .arrow_columns import lent_columns  # nanoarrow: only for a write

        try:
            view, selected, params = lent_columns(columns, arrays, types, length)
        except (ValueError, TypeError, OverflowError) as error:  # lone surrogates, mostly: diagnosed above
            raise StoreError(f"the database {self.label} could not take the rows: {error}") from None
        self.con.register(_COLUMNS_VIEW, view)
        try:
            with self._translated():
                self.con.execute(f"INSERT INTO {quote(table)} ({', '.join(map(quote, columns))}) "
                                 f"SELECT {', '.join(selected)} FROM {_COLUMNS_VIEW}", params)
        finally:
            self.con.unregister(_COLUMNS_VIEW)
            view.array = None


_writer_locks: dict[str, threading.RLock] = {}
_writer_locks_guard = threading.Lock()


def _writer_lock(key: str) -> threading.RLock:
    """The process's writer lock of one file (re-entrant: a thread never
    waits for itself)."""
    with _writer_locks_guard:
        lock = _writer_locks.get(key)
        if lock is None:
            lock = _writer_locks[key] = threading.RLock()
        return lock


_COLUMNS_VIEW = "_healthsim_columns"


class _Kept:
    """One file's kept instance: its idle connection, the moment it may go
    (None while a session uses the instance), and whether a session has
    the connection itself (``lent``: then only that session closes it)."""

    __slots__ = ("read_only", "con", "until", "lent")

    def __init__(self, read_only: bool, con: duckdb.DuckDBPyConnection, until: float | None):
        self.read_only, self.con, self.until, self.lent = read_only, con, until, False


class _Warm:
    """Database instances kept open between operations (``keep_open``): one
    idle connection per file holds the instance, with the moment it may go
    (None while a session uses it); one daemon thread lets each go once its
    file has been idle for the time asked. (A timer thread per operation
    cost a burst's every operation a thread start.) A session lends the
    idle connection when no other session has it (an operation on a kept
    file then opens and closes nothing: a tenth of a small list's time); a
    session that finds it lent connects to the instance as before. One
    process can open a file with one set of settings: a reading session
    uses a kept read-write instance as it is (its backend asks nothing of
    it that a read-only one would refuse: it only reads), and a writing
    session lets a kept read-only one go first. So a burst that mixes a
    server's reads and writes opens the file once more at most, not at
    every change of mode."""

    def __init__(self) -> None:
        self._lock = threading.Condition(threading.Lock())
        self._kept: dict[Path, _Kept] = {}
        self._sweeper: threading.Thread | None = None
        self._wake = 0.0  # when the sweeper wakes next
        atexit.register(self.release_all)

    def hold(self, path: Path, read_only: bool) -> tuple[bool | None, duckdb.DuckDBPyConnection | None]:
        """A session of ``path`` starts: its instance may not go now. The
        kept instance's mode (read-only or not) when one serves the session
        (the process holds the file already), else None; and its connection
        when no other session has it (the session gives it back with
        :meth:`keep` or :meth:`release`), else None."""
        with self._lock:
            found = self._kept.get(path)
            if found is None:
                return None, None
            if found.read_only and not read_only:  # a writer cannot use a read-only instance
                del self._kept[path]
                if not found.lent:  # (a lent one is closed by its session)
                    _close_quietly(found.con)
                return None, None
            found.until = None
            if found.lent:
                return found.read_only, None
            found.lent = True
            return found.read_only, found.con

    def keep(self, path: Path, read_only: bool, seconds: float, lent: duckdb.DuckDBPyConnection | None = None) -> None:
        """A session of ``path`` ends: keep its instance ``seconds`` more
        (``lent``: the kept connection the session had, given back)."""
        with self._lock:
            found = self._kept.get(path)
            if found is not None and lent is not None and found.con is lent:
                found.lent = False
            elif found is None or found.read_only != read_only:
                if found is not None and not found.lent:
                    _close_quietly(found.con)
                if lent is not None:
                    con = lent  # let go or replaced meanwhile: the one lent is kept again
                else:
                    try:  # the session's connection is still open: this one shares its instance
                        con = duckdb.connect(str(path), read_only=read_only, config=CONFIG)
                    except duckdb.Error:
                        self._kept.pop(path, None)
                        return
                found = self._kept[path] = _Kept(read_only, con, None)
            elif lent is not None:  # another connection of the instance is kept now
                _close_quietly(lent)
            until = found.until = time.monotonic() + seconds
            if self._sweeper is None or not self._sweeper.is_alive():
                self._wake = until
                self._sweeper = threading.Thread(target=self._sweep, name="healthsim-keep-open", daemon=True)
                self._sweeper.start()
            elif until < self._wake:
                self._lock.notify()  # it waits for a later moment: wake it to wait less

    def release(self, path: Path, lent: duckdb.DuckDBPyConnection | None = None) -> None:
        """Let the kept instance of ``path`` go now (a session without
        keep_open ended; ``lent``: the kept connection it had). A connection
        another session has is closed by that session."""
        with self._lock:
            found = self._kept.pop(path, None)
        if found is not None and (not found.lent or found.con is lent):
            _close_quietly(found.con)
        if lent is not None and (found is None or found.con is not lent):
            _close_quietly(lent)

    def release_all(self) -> None:
        for path in list(self._kept):
            self.release(path)

    def _sweep(self) -> None:
        """Close each idle instance when its moment comes; end when none is kept."""
        while True:
            with self._lock:
                now = time.monotonic()
                idle = {path: kept.until for path, kept in self._kept.items()
                        if kept.until is not None and not kept.lent}
                gone = [self._kept.pop(path).con for path, until in idle.items() if until <= now]
                waits = [until - now for until in idle.values() if until > now]
                if not self._kept:
                    self._sweeper = None
                    return
                if not gone:  # (every kept instance in use: wait for a session to end)
                    self._wake = now + min(waits) if waits else float("inf")
                    self._lock.wait(min(waits) if waits else None)
            for con in gone:
                _close_quietly(con)


def _close_quietly(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.close()
    except duckdb.Error:
        pass


WARM = _Warm()


def _empty(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the database holds nothing (no table, no sequence): a file
    this process made may have been opened and saved to by another process
    between its making and this connection; then it stays."""
    try:
        ((count,),) = con.execute("SELECT (SELECT count(*) FROM duckdb_tables()) "
                                  "+ (SELECT count(*) FROM duckdb_sequences())").fetchall()
    except duckdb.Error:
        return False  # cannot tell: a file is better left than lost
    return count == 0


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass  # the transaction is already gone (the connection failed)


def translate(error: duckdb.Error, label: str) -> Exception:
    """Our error for a DuckDB one: a lost race is a conflict (worth running
    again), anything else names the file."""
    text = str(error)
    if isinstance(error, duckdb.TransactionException) or "Conflict on" in text or "write-write conflict" in text:
        return TransactionConflictError(f"{label}: another transaction changed the same data at the same time "
                                        f"and kept doing so ({_first_line(text)})")
    if isinstance(error, duckdb.ConstraintException) and "Duplicate key" in text:
        return TransactionConflictError(f"{label}: another transaction saved the same key at the same time "
                                        f"({_first_line(text)})")
    return StoreError(f"the database {label} could not be used: {_first_line(text)}")


def connect_waiting(path: Path, timeout: float, *, read_only: bool = False, config: dict[str, Any] | None = None,
                    deadline: float | None = None) -> duckdb.DuckDBPyConnection:
    """Open ``path``, waiting (with backoff) while another process holds its
    lock, for up to ``timeout`` seconds (or until ``deadline``, when the wait
    began earlier: ``timeout`` is then what the message says);
    then :class:`DatabaseLockedError`. A writable open of a missing file
    makes it first, whole (see :func:`_make_whole`)."""
    return _open_waiting(path, timeout, read_only=read_only, config=config, deadline=deadline)[0]


def _open_waiting(path: Path, timeout: float, *, read_only: bool, config: dict[str, Any] | None,
                  deadline: float | None) -> tuple[duckdb.DuckDBPyConnection, bool]:
    """:func:`connect_waiting`, and whether this call made the file."""
    backoff = Backoff(time.monotonic() + timeout if deadline is None else deadline, floor=0.5)
    settings = dict(CONFIG, **(config or {}))
    made = False
    while True:
        if not read_only and not path.exists():  # again each round: a failed first write elsewhere removes its file
            made = _make_whole(path) or made
        before = _identity(path)
        try:
            con = duckdb.connect(str(path), read_only=read_only, config=settings)
        except duckdb.Error as error:
            text = str(error)
            if _is_other_configuration(text):
                blocker = _own_connection_message(path)
            elif _is_lock_conflict(text):
                blocker = None
            elif before is not None and _identity(path) != before:
                continue  # removed (a failed first write elsewhere) while DuckDB opened it: again, anew
            elif _being_made(path) and backoff.wait():
                continue  # made by a program that does not make it whole: it will be in a moment
            else:
                kind = _foreign_file(path)
                if kind is not None:
                    raise StoreError(f"cannot open {path} as a healthsim-state database: it is {kind}, not a "
                                     "DuckDB database; give the path of a DuckDB file (or a new one)") from None
                raise StoreError(f"cannot open {path} as a healthsim-state database: {_first_line(text)}") from None
            if not backoff.wait():
                if blocker is not None:
                    raise StoreError(blocker) from None
                holder = _PID.search(text)
                raise DatabaseLockedError(
                    f"{path} is locked by another process"
                    + (f" (PID {holder[1]})" if holder else "")
                    + f" and stayed locked for {timeout:g} s; wait for it to finish, stop it, or raise "
                    "HEALTHSIM_LOCK_TIMEOUT", path=path, pid=int(holder[1]) if holder else None) from None
            continue
        after = _identity(path)
        if after is not None and before in (None, after):
            return con, made
        _close_quietly(con)  # opened, then removed from under it before DuckDB's lock: see _identity


def _identity(path: Path) -> tuple[int, int] | None:
    """The file at ``path`` (device and inode), or None where there is none.

    DuckDB opens a file, then locks it. A failed first write elsewhere
    removes its new file while holding that lock (``_remove_new_file``), so a
    connect that opened the file just before the removal gets the lock just
    after it, on a file no longer at the path: what it then commits is lost
    with the file. A connection whose file is still the one the path named
    before the connect holds the file at the path (no one removes a file
    without its lock); any other is closed and made again."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _make_whole(path: Path) -> bool:
    """Make a new, empty database at ``path`` whole or not at all; whether
    this call made it. DuckDB makes a new file in steps (creates it, locks
    it, writes its header), and a process opening the path between them
    found "not a valid DuckDB database file" (or, making it too, truncated
    it). So the file is made under a name of this process and thread beside
    it, then linked into place: a link never replaces a file, so the first
    maker wins and the others open its file. False too where the file
    system has no hard links or the scratch file cannot be made: DuckDB
    then makes the file itself, as before, and says what is wrong if it
    cannot."""
    _remove_dead_scratch(path)
    scratch = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.new")
    try:
        duckdb.connect(str(scratch), config=CONFIG).close()
        os.link(scratch, path)
    except (duckdb.Error, OSError):  # FileExistsError: another process made it first
        return False
    finally:
        for leftover in (scratch, _wal(scratch)):
            try:
                leftover.unlink()
            except OSError:
                pass
    return True


def _remove_dead_scratch(path: Path) -> None:
    """Remove the scratch files of :func:`_make_whole` that a process killed
    between making and linking one left beside ``path``: those whose process
    no longer runs (a live one's may be in use)."""
    try:
        leftovers = list(path.parent.glob(f".{glob.escape(path.name)}.*-*.new"))
    except OSError:
        return
    for leftover in leftovers:
        pid = leftover.name[len(path.name) + 2:].partition("-")[0]
        if pid.isdigit() and not _running(int(pid)):
            for name in (leftover, _wal(leftover)):
                try:
                    name.unlink()
                except OSError:
                    pass


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it runs, as another user
        return True
    return True


YOUNG = 1.0  # seconds: a file this new, still without a whole header, is being made
HEADERS = 3 * 4096  # bytes: DuckDB's main header and its two database headers


def _being_made(path: Path) -> bool:
    """Whether a file that failed to open looks half made by a DuckDB
    outside this module (another program, a file system without hard links,
    or one made again just after a failed first write removed it): modified
    under :data:`YOUNG` ago, no longer than the headers, and nothing but
    zeros or DuckDB's own magic at the start. A file of another kind, or an
    older one, is an error at once."""
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            head = handle.read(16)
    except OSError:
        return False
    if time.time() - stat.st_mtime > YOUNG or stat.st_size > HEADERS:
        return False
    return head[8:12] == b"DUCK" or not head.strip(b"\0")


def _wal(path: Path) -> Path:
    return path.with_name(path.name + ".wal")


_FILE_KINDS = ((b"SQLite format 3\x00", "an SQLite database"), (b"PAR1", "a Parquet file"), (b"PK\x03\x04", "a ZIP file"),
               (b"{", "a JSON file"), (b"[", "a JSON file"))


def _foreign_file(path: Path) -> str | None:
    """What a file that failed to open is, when its first bytes say it is no
    DuckDB database (whose header has ``DUCK`` at byte 8); None otherwise."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return None
    if head[8:12] == b"DUCK":
        return None  # a DuckDB file: the engine's own message says what is wrong
    if not head:
        return "an empty file"
    for magic, kind in _FILE_KINDS:
        if head.startswith(magic):
            return kind
    return "a file of another kind"


def _is_lock_conflict(text: str) -> bool:
    return "Could not set lock" in text or "Conflicting lock" in text


def _is_other_configuration(text: str) -> bool:
    return "different configuration" in text


def _own_connection_message(path: Path) -> str:
    return (f"{path} is open in this process through another DuckDB connection (yours, or a notebook's) made "
            "with other settings, and DuckDB lets one process use a file with one set of settings at a time; "
            "close that connection (con.close()) and try again, or query the store through healthsim-state "
            "(the sql command, or healthsim_state.interop.run_query)")


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else "unknown error"
