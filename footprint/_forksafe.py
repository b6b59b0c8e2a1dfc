"""No fork while footprint imports or opens things on one of its threads.

A fork copies the locks other threads hold. If the writer thread is importing a module
(the store loads SQLAlchemy on first use) when the server forks, the child inherits that
module's import lock held by a thread it does not have, and its first import of the
module waits forever. Work that imports is done inside ``no_fork()``; a fork waits for it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.RLock()  # re-entered: a write may open the store


@contextmanager
def no_fork() -> Iterator[None]:
    """Hold off ``os.fork`` (from any thread) while the block runs."""
    with _lock:
        yield


def _before_fork() -> None:
    _lock.acquire()


def _after_fork_in_parent() -> None:
    _lock.release()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
