"""Time sources, injectable so tests and the demo can run on simulated time."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds for measuring, epoch seconds for stamping records."""

    def monotonic_s(self) -> float: ...

    def wall_s(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clocks: ``time.monotonic`` (system-wide on Linux) and ``time.time``."""

    monotonic_s = staticmethod(time.monotonic)
    wall_s = staticmethod(time.time)
    sleep = staticmethod(time.sleep)


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A clock that only moves when told to: ``sleep`` advances it instantly.

    Lets tests and the demo run hours of simulated time in milliseconds, with the
    sampler driven by hand (``Sampler.sample_once``) instead of its thread.
    """

    def __init__(self, monotonic_s: float = 1000.0, wall_s: float = 1_767_225_600.0) -> None:
        self._monotonic_s = monotonic_s
        self._wall_offset_s = wall_s - monotonic_s

    def monotonic_s(self) -> float:
        return self._monotonic_s

    def wall_s(self) -> float:
        return self._monotonic_s + self._wall_offset_s

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._monotonic_s += seconds
