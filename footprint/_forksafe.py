"""No fork while footprint imports, writes or reads a sensor on one of its threads.

A fork copies the locks other threads hold. If the writer thread is importing a module
(the store loads SQLAlchemy on first use) or is inside SQLite when the server forks, the
child inherits a lock held by a thread it does not have, and its first use of that
module or of SQLite waits forever (the same goes for a sensor library mid-read). Such
work is done inside ``no_fork(kind)``; a fork waits for it. Each kind has its own lock,
so the sampler's reads never wait for a database write.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

KINDS = ("store", "sensor")
_locks = {kind: threading.RLock() for kind in KINDS}  # re-entered: a write may open the store


@contextmanager
def no_fork(kind: str = "store") -> Iterator[None]:
    """Hold off ``os.fork`` (from any thread) while the block runs."""
    with _locks[kind]:
        yield


def _before_fork() -> None:
    for kind in KINDS:  # always in this order
        _locks[kind].acquire()


def _after_fork_in_parent() -> None:
    for kind in reversed(KINDS):
        _locks[kind].release()


def _after_fork_in_child() -> None:
    for kind in KINDS:
        _locks[kind] = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
