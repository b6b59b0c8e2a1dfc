"""Attribution: split each device's measured energy among the spans that ran on it.

The resolver sweeps a device's sampling intervals in time order. Inside an interval
(the counter delta between two samples) the parts with no span get the device's idle
power, learned online (``IdlePowerEstimator``); the busy parts get the rest, at one
uniform power, shared equally among the spans running at each instant. Every interval's
delta is handed out in full, so energy is conserved exactly:

    Σ span energy + Σ idle energy = counter(last sample) − counter(first sample)

Cost does not depend on how many spans run at once: per device the resolver keeps
running integrals of energy, GPU-seconds and error bound *per active span*; a span's
share is the difference of an integral between its end and its start. Each start and
end is one event, visited a constant number of times.

The sweep is in ``resolver``, the running integrals in ``shares``, an interval's busy
energy and its bound in ``energy``, the idle power estimate in ``idle``.
"""

from footprint.attribution.energy import EnergyPiece
from footprint.attribution.idle import IdleEstimate, IdlePowerEstimator
from footprint.attribution.resolver import DeviceResolver
from footprint.attribution.shares import SpanShare

__all__ = ["DeviceResolver", "EnergyPiece", "IdleEstimate", "IdlePowerEstimator", "SpanShare"]
