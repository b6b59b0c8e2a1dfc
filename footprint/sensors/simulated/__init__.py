"""A simulated GPU: the same interface as the NVML sensor, driven by a workload API.

Power model per device: ``idle_w + (busy_w - idle_w) * min(1, load)`` where ``load`` is
the sum of the loads active at that time, plus optional per-tick noise. Loads come from
the tracked calls themselves (``workload=spans``, the default: each call loads the GPUs
it is attributed to with 1.0 for its duration, through ``begin_load``/``end_load``) or
only from the workload API (``workload=manual``: ``add_load``, ``run``). Like real
hardware, the energy counter only changes every ``update_period_s`` (ticks aligned on
multiples of the period in the clock's monotonic time) and reports whole millijoules.

It is deterministic for a given seed, also across processes: ticks are aligned on the
system-wide monotonic clock and the noise of tick ``k`` is a hash of (seed, device, k), so
idle power and noise agree between processes; registered loads are per process.

Like A100/H100 counters (Yang et al., SC'24, "Part-time Power Measurements"), the counter
may only observe part of each period (``window_s``, e.g. 25 ms of 100 ms) and extrapolate
what it saw to the whole period. It never rewrites a value it has published: a load
registered late, for a time at or before a tick already read, is carried into the next
ticks (``late_steps``, ``late_energy_j``), so the counter stays monotonic.

Because it knows the power at every instant, ``true_energy_j(t0, t1)`` is the ground
truth that attribution accuracy is tested against.

Under ``workload=spans`` (a daemon may run for months) memory is bounded: load change
points older than ``HISTORY_S`` (or, past ``MAX_STEPS`` per GPU, all but the last
``MIN_HISTORY_S``) are folded into one (``forgotten_steps``); energy from then on stays
exact, before it is no longer known. A later step for a time before what is kept is
moved to its start (``clamped_steps``). A call's time that is not finite or further than
``MAX_TIME_SKEW_S`` from the sensor's clock is refused (``refused_times``: a start is
ignored, an end taken as now), and an end with no load open is ignored
(``unmatched_ends``): nothing a caller sends can corrupt the counter.

The options and their parsing are in ``spec``, the load model and its exact energy
integral in ``loads``, one device's counter in ``gpu``, the ``Sensor`` in ``sensor``.
"""

from footprint.sensors.simulated.gpu import SimulatedGpu
from footprint.sensors.simulated.loads import LoadModel
from footprint.sensors.simulated.sensor import SimulatedSensor
from footprint.sensors.simulated.spec import SimulatedGpuSpec

__all__ = ["LoadModel", "SimulatedGpu", "SimulatedGpuSpec", "SimulatedSensor"]
