"""First come, first served turns on a database file, across processes.

DuckDB lets one process at a time write a file and refuses the others at
once; waiting is up to us. Retrying with backoff is not fair: whoever tries
just as the file is let go wins, so an early waiter asleep in a long backoff
can lose round after round to newcomers and time out behind operations of
tens of milliseconds (issue 20: 4 of 800 operations failed so).

Here waiters queue in a sidecar file, ``<database>.lock``, with POSIX record
locks (``fcntl.lockf``), which the kernel drops when a process exits:

* a *ticket*: a counter in the sidecar's first 8 bytes, taken under a lock
  of its first byte (held for microseconds);
* a *place*: the byte at ``SLOTS + ticket``, locked from the ticket until the
  turn ends, exclusively by a writer, shared by a reader;
* the *turn* comes when no earlier place is in the way: a writer waits for
  every earlier ticket, a reader for earlier writers only (one lock test
  over the range of earlier places tells, whatever its length).

A waiter that gives up or dies leaves the queue with its lock. Plain
blocking locks (``flock``, ``F_SETLKW``) would not do: they cannot time out
(a thread blocked in one cannot be called back), and their order is not
promised (on Linux 6.18, 8 blocked waiters got the lock in arrival order in
10 rounds of 10, but a process trying without blocking takes it whenever it
comes first). So a waiter tests its turn, every millisecond when at most one
ticket is ahead of it, every 10 ms further back; the order is the tickets'. The queue only orders the waiters:
the file stays guarded by DuckDB's own lock, which the one whose turn it is
then takes (waiting out anything outside the queue: another program, an
instance kept open).

POSIX locks belong to a process, not to a thread, so the threads of one
process share one place in a file's queue (as they share its DuckDB
instance); the last of them to finish leaves it. Where there is no ``fcntl``
(Windows), or the sidecar cannot be opened, there is no queue.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no queue, the backoff alone
    fcntl = None  # type: ignore[assignment]

SLOTS = 4096  # the offset of ticket 0's place; the counter sits before it
NEXT_POLL = 0.001  # seconds between tests of the one next in line
QUEUE_POLL = 0.01  # and of those further back


def sidecar(path: Path) -> Path:
    """The file holding ``path``'s queue."""
    return path.with_name(path.name + ".lock")


@dataclass
class Place:
    """A process's place in one file's queue."""

    key: str
    fd: int
    ticket: int
    shared: bool
    users: int = 0
    ready: bool = False
    testing: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, deadline: float) -> None:
        """Return once no earlier place is in the way; :class:`TimeoutError`
        at ``deadline``."""
        while True:
            with self.testing:
                try:
                    if self.ready or _free(self.fd, self.ticket, self.shared):
                        self.ready = True
                        return
                    next_in_line = _free(self.fd, self.ticket - 1, self.shared)
                except OSError:  # the locks stopped working: DuckDB's own lock still guards the file
                    self.ready = True
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"ticket {self.ticket} of {self.key}: not its turn by the deadline")
            time.sleep(min(NEXT_POLL if next_in_line else QUEUE_POLL, remaining))


_places: dict[str, Place] = {}
_guard = threading.Lock()


def acquire(path: Path, *, shared: bool, create: bool, deadline: float) -> Place | None:
    """Queue for ``path`` (``shared``: with other readers) and wait for the
    turn; None where there is no queue (no ``fcntl``; no sidecar, and
    ``create`` false; a sidecar that cannot be opened). Raises
    :class:`TimeoutError` at ``deadline``, out of the queue again."""
    if fcntl is None:
        return None
    place = _join(str(path.resolve()), sidecar(path), shared, create, deadline)
    if place is None:
        return None
    try:
        place.wait(deadline)
    except BaseException:
        release(place)
        raise
    return place


def release(place: Place | None) -> None:
    """The turn is over for one user of ``place``; the last leaves the queue."""
    if place is None:
        return
    with _guard:  # closed before another place can open the file: a close drops all the process's locks on it
        place.users -= 1
        if place.users:
            return
        if _places.get(place.key) is place:
            del _places[place.key]
        os.close(place.fd)  # lets go of the place's lock


def _join(key: str, lock_file: Path, shared: bool, create: bool, deadline: float) -> Place | None:
    with _guard:
        place = _places.get(key)
        if place is None:
            try:
                fd = os.open(lock_file, os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o666)
            except OSError:
                return None
            try:
                place = Place(key, fd, _take_ticket(fd, shared, deadline), shared)
            except OSError:  # no record locks here (some network file systems): no queue
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            _places[key] = place
        place.users += 1
        return place


def _take_ticket(fd: int, shared: bool, deadline: float) -> int:
    """The next ticket, its place locked before anyone can take the one after."""
    while not _try_lock(fd, fcntl.LOCK_EX, 0, 1):
        if time.monotonic() >= deadline:
            raise TimeoutError("the queue's counter stayed locked until the deadline")
        time.sleep(NEXT_POLL)
    try:
        counter = os.pread(fd, 8, 0)
        ticket = int.from_bytes(counter, "little") if len(counter) == 8 else 0
        os.pwrite(fd, (ticket + 1).to_bytes(8, "little"), 0)
        fcntl.lockf(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB, 1, SLOTS + ticket)
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
    return ticket


def _free(fd: int, ticket: int, shared: bool) -> bool:
    """Whether no place before ``ticket`` is in the way (of a reader: no
    writer's; of a writer: none)."""
    if ticket <= 0:
        return True
    if not _try_lock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX, SLOTS, ticket):
        return False
    fcntl.lockf(fd, fcntl.LOCK_UN, ticket, SLOTS)
    return True


def _try_lock(fd: int, kind: int, start: int, length: int) -> bool:
    try:
        fcntl.lockf(fd, kind | fcntl.LOCK_NB, length, start)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EACCES):  # another process holds part of the range
            return False
        raise
    return True


def _forget_in_child() -> None:
    """A forked child holds none of its parent's locks: it starts with no places."""
    global _guard
    _guard = threading.Lock()
    for place in _places.values():
        try:
            os.close(place.fd)
        except OSError:
            pass
    _places.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
