"""Background sampling of cumulative energy into bounded per-device timelines.

A timeline sample ``(t_s, energy_j)`` means "``energy_j`` had been spent by monotonic
time ``t_s``". Hardware counters only change every few tens of milliseconds, so the time
a changed value is first seen is later than the instant it describes; for counters whose
update period is known, ``TickEstimator`` locks onto the counter's phase and stamps each
value with its tick instead of the poll time. Unchanged readings carry no information
and are not stored.

The sampler thread and its polling cadence are in ``sampler``, the timelines and the
stamping of each value in ``timeline``, the tick estimators and their uncertainty in
``ticks``.
"""

from footprint.sampling.sampler import Sampler
from footprint.sampling.timeline import Sample

__all__ = ["Sample", "Sampler"]
