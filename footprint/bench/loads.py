"""Loads that drive fake GPUs, in one process (``LoadModel``) or across several.

``LoadModel`` (the simulated GPU's power model: ``idle_w + (busy_w - idle_w) * min(1,
load)``, exact energy by prefix sums, thread-safe) is what a fake GPU's exact energy
model runs on. For a benchmark whose clients are separate processes, the clients append
load steps to a ``SharedLoadLog`` file and the process reading the fake GPUs (footprint's
daemon) sees them through a ``LoggedLoadModel``, which takes the new records whenever its
energy or power is asked for. Times are ``time.monotonic`` seconds: CLOCK_MONOTONIC is one
clock for every process on Linux.
"""

from __future__ import annotations

import math
import os
import struct
import threading
from types import TracebackType

from footprint.sensors.simulated import LoadModel

__all__ = ["ALL_DEVICES", "LoadModel", "LoggedLoadModel", "SharedLoadLog"]

ALL_DEVICES = -1  # a logged step for every device
_RECORD = struct.Struct("<qdd")  # device index (or ALL_DEVICES), t_s, load delta


class SharedLoadLog:
    """An append-only file of load steps that several processes write at once.

    Each step is one fixed-size record written by a single ``os.write`` on an ``O_APPEND``
    descriptor, so records from different processes never interleave.
    """

    record_size = _RECORD.size

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd: int | None = None
        self._fd_pid = 0
        self._lock = threading.Lock()

    def add_step(self, t_s: float, delta: float, device: int = ALL_DEVICES) -> None:
        """Append: the load of ``device`` (every device by default) changes by ``delta``
        from monotonic time ``t_s`` on."""
        if not (math.isfinite(t_s) and math.isfinite(delta)):
            raise ValueError("add_step needs a finite time and load change")
        record = _RECORD.pack(device, t_s, delta)
        with self._lock:
            written = os.write(self._descriptor(), record)
        if written != len(record):
            raise OSError(f"short write to the load log {self.path}")

    def append(self, device: int, t_s: float, delta: float) -> None:
        """``add_step`` with the device first, as ``read`` returns steps."""
        self.add_step(t_s, delta, device)

    def add_load(
        self, start_s: float, end_s: float, load: float = 1.0, device: int = ALL_DEVICES
    ) -> None:
        """Append a load between two monotonic times (two steps)."""
        if not end_s > start_s or not math.isfinite(load) or load < 0:
            raise ValueError("add_load needs end_s > start_s and a finite load >= 0")
        self.add_step(start_s, load, device)
        self.add_step(end_s, -load, device)

    def read(self, offset_b: int = 0) -> tuple[list[tuple[int, float, float]], int]:
        """The ``(device, t_s, delta)`` records from byte ``offset_b`` on, and the offset
        after them (a record still being written is left for the next read)."""
        try:
            with open(self.path, "rb") as log:
                log.seek(offset_b)
                data = log.read()
        except FileNotFoundError:
            return [], offset_b
        usable_b = len(data) - len(data) % _RECORD.size
        records = [_RECORD.unpack_from(data, i) for i in range(0, usable_b, _RECORD.size)]
        return records, offset_b + usable_b

    def read_all(self) -> list[tuple[int, float, float]]:
        """Every ``(device, t_s, delta)`` record appended so far, in file order."""
        return self.read(0)[0]

    def close(self) -> None:
        """Close this process's write descriptor (a later ``add_step`` reopens it)."""
        with self._lock:
            if self._fd is not None and self._fd_pid == os.getpid():
                os.close(self._fd)
            self._fd = None

    def __enter__(self) -> SharedLoadLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _descriptor(self) -> int:
        # Each process opens its own descriptor (one inherited through fork would work
        # too with O_APPEND, but closing it in one process must not affect the other).
        pid = os.getpid()
        if self._fd is None or self._fd_pid != pid:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._fd_pid = pid
        return self._fd


class LoggedLoadModel(LoadModel):
    """A ``LoadModel`` that also takes the steps appended to a ``SharedLoadLog`` for its
    ``device`` (or for every device), read whenever its power or energy is asked for."""

    def __init__(
        self,
        log: SharedLoadLog | str | os.PathLike[str],
        idle_w: float,
        busy_w: float,
        device: int = 0,
    ) -> None:
        super().__init__(idle_w, busy_w)
        self.log = log if isinstance(log, SharedLoadLog) else SharedLoadLog(log)
        self.device = device
        self.logged_steps = 0  # steps taken from the log
        self.bad_records = 0  # records with a time or delta that is not finite: skipped
        self._offset_b = 0
        self._poll_lock = threading.Lock()

    def poll(self) -> int:
        """Take the records appended since the last poll; returns how many were ours."""
        with self._poll_lock:
            records, self._offset_b = self.log.read(self._offset_b)
            taken = 0
            with self._lock:
                for device, t_s, delta in records:
                    if device not in (ALL_DEVICES, self.device):
                        continue
                    if not (math.isfinite(t_s) and math.isfinite(delta)):
                        self.bad_records += 1
                        continue
                    self._step(t_s, delta)
                    taken += 1
            self.logged_steps += taken
        return taken

    def _sync(self) -> None:
        self.poll()
