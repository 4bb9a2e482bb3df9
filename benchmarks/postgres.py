"""The benchmarks' ``--postgres`` option: a URL, or ``start`` for a throwaway
server (the tests' own, :mod:`tests.pgserver`, run with default durability)."""

from __future__ import annotations

from tests.pgserver import Cluster


def run_with_postgres(args, run) -> int:
    """``run(args)`` for a benchmark's ``--postgres`` option: with ``start``, a
    throwaway durable server (fsync and all: a real server's figures) is
    started, put in ``args.postgres`` as its URL, and stopped after."""
    if args.postgres != "start":
        return run(args)
    cluster = Cluster.start(durable=True)
    args.postgres = cluster.url()
    try:
        return run(args)
    finally:
        cluster.stop()
