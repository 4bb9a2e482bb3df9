"""Binary ``COPY`` into PostgreSQL, the server's part overlapped with ours.

The server is another process: while it parses and inserts one chunk's rows
we can flatten the next. A plain ``COPY`` takes turns instead: its end waits
until the server has inserted every row. So a large write is formatted here
(psycopg's binary formatter, with no server involved, so a value psycopg
cannot encode fails at once, at its own write), sent whole, and its end is
not waited for: the socket's send buffer is made large enough to hold a
chunk's bytes, so the kernel feeds the server while the caller goes on, and
the copy's result is read before the session's next statement
(:meth:`CopyPipe.wait`: the session calls it before every statement, its
commit and its rollback). That is where a server's error of the copy (a
constraint, a lost race) surfaces; the transaction then rolls back as it
would have. No thread: one sending while the caller flattens needs the GIL
each time the socket drains, and the two took turns (measured: no faster
than waiting). A small write is sent and waited for at once.

The deferred part talks to libpq through psycopg's ``pq`` layer (the
connection's own ``pgconn``): between :meth:`CopyPipe.copy` and
:meth:`CopyPipe.wait` nothing else may use the connection.
"""

from __future__ import annotations

import selectors
import socket
from typing import Any, Sequence

import psycopg
from psycopg import errors, pq
from psycopg.copy import Writer

# Rows from which a write is not waited for. Below, the server's part is
# shorter than what the deferral costs.
DEFERRED_ROWS = 2000
# Bytes the socket's send buffer is asked for (the kernel may cap it:
# net.core.wmem_max): a chunk's rows, 16,384 entities, are 1-5 MB.
SEND_BUFFER = 4 << 20


class _Collected(Writer):
    """A copy's formatted bytes, kept in blocks (psycopg's own, about 32 KB
    each) to be sent whole."""

    def __init__(self) -> None:
        self.blocks: list[Any] = []

    def write(self, data: Any) -> None:
        self.blocks.append(data)


class CopyPipe:
    """At most one ``COPY`` in flight on a connection, its result not yet
    read; :meth:`wait` reads it (on every path: the session waits before its
    next statement, its commit and its rollback)."""

    def __init__(self, con: "psycopg.Connection"):
        self.con = con
        self.pending = False
        self._buffer_set = False

    def copy(self, statement: str, types: Sequence[int], rows: Sequence[tuple], dumpers: Sequence[type] = ()) -> None:
        """Write ``rows`` with ``statement`` (a ``COPY ... FROM STDIN (FORMAT
        BINARY)``), each value sent as ``types`` says (by the connection's
        dumpers, or these ``dumpers`` for their types); a large write returns
        before the server has taken it."""
        if len(rows) < DEFERRED_ROWS:
            self.wait()
            with self._cursor(dumpers).copy(statement) as copy:
                _write_rows(copy, types, rows)
            return
        blocks = self._formatted(types, rows, dumpers)  # while the previous copy, if any, is still with the server
        self.wait()
        self._start(statement)
        pgconn = self.con.pgconn
        for block in blocks:
            while not pgconn.put_copy_data(block):
                _wait(pgconn, write=True)
        pgconn.put_copy_end()
        self.pending = True
        pgconn.flush()  # as much as the socket takes now; the rest when waited for

    def wait(self) -> None:
        """Read the result of the copy in flight, if any; raise its error."""
        if not self.pending:
            return
        self.pending = False
        pgconn = self.con.pgconn
        while pgconn.flush():
            _wait(pgconn, write=True)
        failed = None
        while (result := _result(pgconn)) is not None:
            if result.status != pq.ExecStatus.COMMAND_OK and failed is None:
                failed = errors.error_from_result(result, encoding=self.con.info.encoding)
        if failed is not None:
            raise failed

    def _start(self, statement: str) -> None:
        """Send the ``COPY`` statement and wait for the server to take data."""
        pgconn = self.con.pgconn
        if not self._buffer_set:
            self._buffer_set = True
            _enlarge_send_buffer(pgconn.socket)
        pgconn.send_query(statement.encode())
        while pgconn.flush():
            _wait(pgconn, write=True)
        started = _result(pgconn)
        if started is None or started.status != pq.ExecStatus.COPY_IN:
            while _result(pgconn) is not None:
                pass
            raise errors.error_from_result(started, encoding=self.con.info.encoding) if started is not None \
                else psycopg.OperationalError("the server did not answer the COPY statement")

    def _cursor(self, dumpers: Sequence[type]) -> "psycopg.Cursor":
        cursor = self.con.cursor()
        for dumper in dumpers:
            cursor.adapters.register_dumper(None, dumper)  # this cursor's only
        return cursor

    def _formatted(self, types: Sequence[int], rows: Sequence[tuple], dumpers: Sequence[type]) -> list[Any]:
        collected = _Collected()
        with psycopg.Copy(self._cursor(dumpers), binary=True, writer=collected) as formatter:
            _write_rows(formatter, types, rows)
        return collected.blocks


def _write_rows(copy: "psycopg.Copy", types: Sequence[int], rows: Sequence[tuple]) -> None:
    """Each row into ``copy``, every value as ``types`` says."""
    copy.set_types(types)
    write = copy.write_row
    for row in rows:
        write(row)


def _result(pgconn: "pq.abc.PGconn") -> "pq.abc.PGresult | None":
    """The next result of the statement sent, once it is complete."""
    while True:
        pgconn.consume_input()
        if not pgconn.is_busy():
            return pgconn.get_result()
        _wait(pgconn, write=False)


def _wait(pgconn: "pq.abc.PGconn", write: bool) -> None:
    with selectors.DefaultSelector() as selector:
        selector.register(pgconn.socket, selectors.EVENT_WRITE if write else selectors.EVENT_READ)
        selector.select()


def _enlarge_send_buffer(fd: int) -> None:
    """Best effort: a platform or socket that refuses keeps its buffer (the
    copy is then fed as it is waited for, still correct)."""
    try:
        with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as duplicate:  # a copy of the descriptor
            if duplicate.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < SEND_BUFFER:
                duplicate.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    except (OSError, AttributeError, ValueError):
        pass
