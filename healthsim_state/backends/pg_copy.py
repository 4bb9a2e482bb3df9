"""Binary ``COPY`` into PostgreSQL, the server's part overlapped with ours.

The server is another process: while it parses and inserts one chunk's rows
we can flatten the next. A plain ``COPY`` takes turns instead: its end waits
until the server has inserted every row. So a large write is formatted here,
in the caller's thread (psycopg's binary formatter, with no server involved,
so a value psycopg cannot encode fails at once, at its own write), and a
worker thread sends the bytes and waits out the server, while the caller
goes on. One connection runs one statement at a time: the next statement of
the session first waits for the copy in flight (:meth:`CopyPipe.wait`), and
that is where a server's error of the copy (a constraint, a lost race)
surfaces; the transaction then rolls back as it would have. A small write is
sent at once (a thread costs more than it saves).
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import psycopg
from psycopg.copy import LibpqWriter, Writer

# Rows from which a write goes through the worker thread. Below, the copy's
# end costs the server less than a thread's start and hand-over cost us.
BACKGROUND_ROWS = 2000
THREAD_NAME = "healthsim-copy"
_NEVER = 1 << 62  # bytes: a flush threshold never reached


class _Collected(Writer):
    """A copy's formatted bytes, kept in blocks (psycopg's own, about 32 KB
    each) for the worker to send."""

    def __init__(self) -> None:
        self.blocks: list[Any] = []

    def write(self, data: Any) -> None:
        self.blocks.append(data)


class CopyPipe:
    """At most one ``COPY`` in flight on a connection, sent by a worker
    thread; :meth:`wait` joins it (on every path: the session waits before
    its next statement, its commit and its rollback)."""

    def __init__(self, con: "psycopg.Connection"):
        self.con = con
        self._worker: threading.Thread | None = None
        self._error: BaseException | None = None

    def copy(self, statement: str, types: Sequence[int], rows: Sequence[tuple], dumpers: Sequence[type] = ()) -> None:
        """Write ``rows`` with ``statement`` (a ``COPY ... FROM STDIN (FORMAT
        BINARY)``), each value sent as ``types`` says (by the connection's
        dumpers, or these ``dumpers`` for their types); a large write returns
        before the server has taken it."""
        if len(rows) < BACKGROUND_ROWS:
            self.wait()
            with self._cursor(dumpers).copy(statement) as copy:
                copy.set_types(types)
                write = copy.write_row
                for row in rows:
                    write(row)
            return
        blocks = self._formatted(types, rows, dumpers)  # while the previous copy, if any, is still with the server
        self.wait()
        self._worker = threading.Thread(target=self._send, args=(statement, blocks),
                                        name=THREAD_NAME, daemon=True)
        self._worker.start()

    def wait(self) -> None:
        """Join the copy in flight, if any, and raise its error."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.join()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _cursor(self, dumpers: Sequence[type]) -> "psycopg.Cursor":
        cursor = self.con.cursor()
        for dumper in dumpers:
            cursor.adapters.register_dumper(None, dumper)  # this cursor's only
        return cursor

    def _formatted(self, types: Sequence[int], rows: Sequence[tuple], dumpers: Sequence[type]) -> list[Any]:
        collected = _Collected()
        with psycopg.Copy(self._cursor(dumpers), binary=True, writer=collected) as formatter:
            formatter.set_types(types)
            write = formatter.write_row
            for row in rows:
                write(row)
        return collected.blocks

    def _send(self, statement: str, blocks: list[Any]) -> None:
        """The worker: the copy, holding the connection's lock (psycopg's)
        until the server has taken every row. Every block goes into libpq's
        buffer at once (it sends what the socket takes meanwhile, and the
        rest at the copy's end): flushing each megabyte, psycopg's default,
        would wake the worker for each, and each wake-up takes the GIL from
        the thread flattening the next chunk."""
        try:
            cursor = self.con.cursor()
            with cursor.copy(statement, writer=LibpqWriter(cursor, flush_threshold=_NEVER)) as copy:
                write = copy.write
                for block in blocks:
                    write(block)
        except BaseException as error:  # raised in the session's thread, by wait()
            self._error = error
