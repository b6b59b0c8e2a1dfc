"""Ended spans whose fate is decided (a record built, or a loss counted), until a write
makes it durable: then the call journal counts them settled and ``on_settled`` is told
their ids (the daemon acknowledges its clients' ends with it).

The call journal (``footprint.storage.journal``) is the file a killed process leaves
behind: the hot path counts its ends there, the settlement the rest.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from footprint.storage.journal import CallJournal
from footprint.storage.writer import WriteFailed, Writer

OnSettled = Callable[[list[int]], None]


def _plain_sqlite_path(db: str) -> str | None:
    """The SQLite file of a plain path or a simple ``sqlite:///`` URL, without importing
    the store's modules; None for anything else."""
    if "://" not in db:
        return str(Path(db).expanduser().resolve())
    if db.startswith("sqlite:///") and "?" not in db and db != "sqlite:///:memory:":
        return db.removeprefix("sqlite:///")
    return None


class Settlement:
    """The span ids decided since the last good write, oldest first (``ids``)."""

    def __init__(
        self, writer: Writer, journal: CallJournal, warn_once: Callable[[str, str], None]
    ) -> None:
        self.ids: list[int] = []
        self._writer = writer
        self._journal = journal
        self._warn_once = warn_once

    def open_journal(self, db: str, host: str, early: bool = False) -> None:
        """Map the call journal beside the SQLite database ``db`` (under the runtime
        directory for a server database), once. ``early``: before the store's modules
        are imported, for a plain file path."""
        if self._journal.path is not None:
            return
        path = _plain_sqlite_path(db) if early else self._writer.journal_base()
        if path is not None and os.path.isdir(os.path.dirname(path)):
            self._journal.open(path, host)

    def write(
        self,
        records: list[dict[str, Any]],
        idle_rows: list[dict[str, Any]],
        on_settled: OnSettled | None,
    ) -> bool:
        """Hand ``records`` and ``idle_rows`` to the writer and flush it; True if the
        write succeeded: every decided id is settled. Else only those whose records the
        writer dropped (it keeps its newest ones, and counts the others)."""
        self._writer.submit(records, idle_rows)
        try:
            self._writer.flush()
        except WriteFailed as exc:
            if exc.reason != "disk full":  # a full disk: the writer said so in one line
                self._warn_once(
                    "write",
                    f"footprint: records will not be stored for now ({exc}); keeping up to "
                    f"{self._writer.max_buffered} in memory and counting what overflows",
                )
            excess = len(self.ids) - self._writer.max_buffered
            if excess > 0:
                self._settle(excess, on_settled)
            return False
        self._settle(len(self.ids), on_settled)
        return True

    def _settle(self, count: int, on_settled: OnSettled | None) -> None:
        """The oldest ``count`` ids: counted in the journal, told to ``on_settled``."""
        if count <= 0:
            return
        ids = self.ids[:count]
        del self.ids[:count]
        self._journal.settled(len(ids))
        if on_settled is None:
            return
        try:
            on_settled(ids)
        except Exception as exc:  # the acknowledgements never stop the records
            self._warn_once("settled", f"footprint: internal error after a write: {exc!r}")

    def give_up(self) -> int:
        """At exit: what the writer still holds is given up (logged, and counted where
        losses are kept: then settled in the journal), and the journal closed (removed
        when every ended call is settled). Returns the records given up."""
        self._writer.losses_saved_to = None
        lost = self._writer.abandon()
        if lost and self._writer.losses_saved_to is not None:
            self._journal.settled(lost)
        self._journal.close()
        return lost
