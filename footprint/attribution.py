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
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from footprint.sampling import Sample

Point = tuple[float, float, float]  # (busy fraction, average W, duration s) of an interval

_START, _END = 0, 1  # event kinds; a start sorts before an end at the same instant

# What the counter's whole-unit readings can hide, per sample (NVML and the simulator
# count whole millijoules).
QUANTUM_J = 0.001

# An interval shared by calls and idle time waits for up to this many later intervals
# (and at most this long behind the resolution horizon) while the device's idle power is
# not known (a process that just started), instead of splitting its energy by time.
WAIT_FOR_IDLE = 10
WAIT_FOR_IDLE_S = 1.0

# Spans that began before the device's first sample (the runtime starts its sensors off
# the caller's thread) are measured from their start when they began at most this long
# before it: the counter is extended back at the power of the first interval.
MAX_EXTRAPOLATION_S = 10.0


@dataclass
class SpanShare:
    """What one device gave one span: energy in J, GPU-seconds, and the energy's bound.

    ``uncertainty_j`` bounds |energy_j − true share| under the attribution rule (busy
    power shared equally among the spans running at each instant); ``partial`` means
    part of the span had no measurement (it was announced late, or its device stopped
    answering) and the figure is a lower estimate with no bound; ``estimated`` means
    part of it was extrapolated (it began before the device's first sample), and the
    bound covers anything from no power to the device's maximum there.
    """

    energy_j: float = 0.0
    gpu_s: float = 0.0
    uncertainty_j: float = 0.0
    partial: bool = False
    estimated: bool = False


class _Span:
    __slots__ = ("key", "start_s", "end_s", "energy_at_start_j", "gpu_s_at_start",
                 "bound_at_start_j", "started", "partial")  # fmt: skip

    def __init__(self, key: Hashable, start_s: float) -> None:
        self.key = key
        self.start_s = start_s
        self.end_s = math.inf
        self.energy_at_start_j = 0.0
        self.gpu_s_at_start = 0.0
        self.bound_at_start_j = 0.0
        self.started = False
        self.partial = False


@dataclass(frozen=True)
class EnergyPiece:
    """Energy of one interval (or part of it): ``start_s``..``end_s`` in monotonic s."""

    start_s: float
    end_s: float
    energy_j: float


@dataclass(frozen=True)
class IdleEstimate:
    """The idle power used for an interval, in W, and how far off it may be, in W."""

    power_w: float
    spread_w: float
    method: str  # "idle-intervals" | "regression"


class IdlePowerEstimator:
    """A device's idle power, learned from the intervals the resolver has seen.

    Intervals with no span at all are direct observations: their median (robust to
    noise) is the estimate, their largest deviation from it the spread. Where traffic
    leaves no interval idle (calls shorter than the counter period with shorter gaps),
    the average power of an interval is ``idle + (busy − idle) × busy fraction``, and a
    least-squares line through recent intervals gives idle power as its intercept.

    A part-time counter (``part_time``) reports an interval at idle power whenever its
    window saw no call, however busy the rest was: that line is then as noisy as the
    window is short (its intercept was 40 W for a 60 W GPU in the bench), while the lowest
    tenth of the partly idle intervals' powers sits on idle power, all alike. That floor
    is used where it exists and agrees with the line better than the line's own spread.
    """

    def __init__(
        self,
        window: int = 256,
        idle_window: int = 64,
        min_idle: int = 3,
        part_time: bool = False,
    ) -> None:
        self.min_idle = min_idle
        self.part_time = part_time
        self._idle_w: deque[float] = deque(maxlen=idle_window)
        self._points: deque[Point] = deque(maxlen=window)
        self._cached: IdleEstimate | None = None
        self._dirty = True

    def observe(self, busy_fraction: float, power_w: float, duration_s: float) -> None:
        """One resolved interval: its busy fraction (0..1), average power and length."""
        if not (math.isfinite(power_w) and duration_s > 0):
            return
        if busy_fraction <= 0.0:
            self._idle_w.append(power_w)
        self._points.append((busy_fraction, power_w, duration_s))
        self._dirty = True

    def estimate(
        self, extra: list[tuple[float, float, float]] | None = None
    ) -> IdleEstimate | None:
        """The current estimate (``extra``: not-yet-resolved intervals to fit with)."""
        if len(self._idle_w) >= self.min_idle:
            if self._dirty:
                self._cached = _median(sorted(self._idle_w), "idle-intervals")
                self._dirty = False
            return self._cached
        if extra:
            idle_w = list(self._idle_w) + [p for f, p, _ in extra if f <= 0.0]
            if len(idle_w) >= self.min_idle:  # idle intervals to come tell it directly
                return _median(sorted(idle_w), "idle-intervals")
            return self._from_busy_intervals(list(self._points) + list(extra))
        if self._dirty:
            self._cached = self._from_busy_intervals(self._points)
            self._dirty = False
        return self._cached

    def _from_busy_intervals(self, points: Iterable[Point]) -> IdleEstimate | None:
        pts = list(points)
        fitted = _fit_intercept(pts)
        if not self.part_time or len(pts) < 8:
            return fitted
        # Only intervals with idle time in them can have shown idle power (in traffic
        # that keeps the GPU busy, the lowest quarter of all intervals is busy power).
        partly_idle = sorted(p for f, p, _ in pts if f < 1.0)
        if len(partly_idle) < 8:
            return fitted
        lowest = partly_idle[: max(2, len(partly_idle) // 10)]
        floor = _median(lowest, "lowest")
        if lowest[-1] - lowest[0] > max(2.0, 0.02 * floor.power_w):
            return fitted  # no floor that many windows read alike: traffic too dense
        if fitted is None:
            return floor
        consistent = floor.power_w <= fitted.power_w + fitted.spread_w
        return floor if consistent and floor.spread_w < fitted.spread_w else fitted


def _median(ordered: list[float], method: str) -> IdleEstimate:
    """The median of sorted powers, its spread the largest deviation from it."""
    median = ordered[len(ordered) // 2]
    return IdleEstimate(median, max(median - ordered[0], ordered[-1] - median), method)


def _fit_intercept(points: Iterable[Point]) -> IdleEstimate | None:
    """Weighted least squares of power on busy fraction; None when ill-conditioned.

    The spread is the largest residual plus twice the intercept's standard error, so a
    fit from few or alike intervals says how little it knows.
    """
    pts = list(points)
    n = len(pts)
    if n < 3:
        return None
    sw = sum(w for _, _, w in pts)
    mean_f = sum(f * w for f, _, w in pts) / sw
    mean_p = sum(p * w for _, p, w in pts) / sw
    var_f = sum(w * (f - mean_f) ** 2 for f, _, w in pts) / sw
    if var_f < 1e-4 or mean_f > 0.95:
        return None  # busy fractions too alike (or all busy) to tell idle from busy
    slope = sum(w * (f - mean_f) * (p - mean_p) for f, p, w in pts) / sw / var_f
    intercept = mean_p - slope * mean_f
    residuals = [p - (intercept + slope * f) for f, p, _ in pts]
    sigma_w = math.sqrt(sum(r * r for r in residuals) / max(n - 2, 1))
    standard_error_w = sigma_w * math.sqrt(1 / n + mean_f**2 / (n * var_f))
    floor_w = min(p for _, p, _ in pts)
    intercept = min(max(intercept, 0.0), floor_w)
    spread = max(abs(r) for r in residuals) + 2 * standard_error_w
    return IdleEstimate(intercept, spread, "regression")


@dataclass
class _Interval:
    start_s: float
    end_s: float
    energy_j: float
    busy_s: float = 0.0
    edges: int = 0  # span starts and ends inside it
    busy_changes: int = 0  # of those, the ones between two busy stretches (set changes)

    @property
    def power_w(self) -> float:
        return self.energy_j / (self.end_s - self.start_s)

    @property
    def busy_fraction(self) -> float:
        return self.busy_s / (self.end_s - self.start_s)


class DeviceResolver:
    """Streaming resolver for one device.

    Feed it samples (``add_samples``) and spans (``begin``/``end``) in any order;
    ``resolve`` hands out every interval whose neighbours are known and returns the spans
    that are complete (a sample after their end exists). ``idle`` and ``measured``
    collect the idle energy and the total counter delta per resolved interval. Odd input
    (time going backwards, negative deltas, spans ending before they start, spans
    announced after their start was resolved) never raises: it is counted in
    ``oddities`` and energy stays conserved.
    """

    def __init__(
        self,
        estimator: IdlePowerEstimator | None = None,
        extrapolate_start: bool = False,
        *,
        max_power_w: float | None = None,
        counter_period_s: float | None = None,
        counter_window_s: float | None = None,
    ) -> None:
        """``max_power_w``: the most the device draws (bounds extrapolated stretches);
        ``counter_window_s`` of each ``counter_period_s``: how much of each period the
        counter observes (None: all of it), which bounds what it cannot see."""
        self._samples: list[Sample] = []
        self.extrapolate_start = extrapolate_start
        self.max_power_w = max_power_w
        self.counter_period_s = counter_period_s
        self.counter_window_s = counter_window_s
        self._spans: dict[Hashable, _Span] = {}
        self._events: list[tuple[float, int, int, _Span]] = []  # sorted, not yet swept
        self._new_events: list[tuple[float, int, int, _Span]] = []
        self._seq = 0
        self._active = 0  # spans running at the sweep position
        self._energy_per_span_j = 0.0  # running integrals per active span since a rebase
        self._gpu_s_per_span = 0.0
        self._bound_per_span_j = 0.0
        self._prev: _Interval | None = None
        self._last_busy_w: float | None = None  # busy power of the last busy interval
        self.estimator = estimator or IdlePowerEstimator(part_time=bool(counter_window_s))
        self.timing_uncertainty_s = 0.0  # how far a sample's time may be off (sampler's)
        self.first_sample_s: float | None = None
        self.resolved_until_s: float | None = None
        self._extrapolated_until_s = -math.inf  # intervals up to here were extrapolated
        self.idle: list[EnergyPiece] = []
        self.measured: list[EnergyPiece] = []
        self.oddities: dict[str, int] = {
            "non_increasing_samples": 0,
            "negative_deltas": 0,
            "below_idle_intervals": 0,
            "unknown_idle_intervals": 0,
            "ends_before_start": 0,
            "late_starts": 0,
            "extrapolated_starts": 0,  # began before the first sample, measured back to it
            "late_ends": 0,
            "expired_spans": 0,  # released because the device stopped reporting
        }

    # -- input ---------------------------------------------------------------------
    def add_samples(self, samples: list[Sample]) -> None:
        """Append samples (monotonic time, cumulative J); out-of-order ones are counted."""
        for t_s, energy_j in samples:
            if self._samples and t_s <= self._samples[-1][0]:
                self.oddities["non_increasing_samples"] += 1
                continue
            if not (math.isfinite(t_s) and math.isfinite(energy_j)):
                self.oddities["non_increasing_samples"] += 1
                continue
            if self.first_sample_s is None:
                self.first_sample_s = t_s
                self.resolved_until_s = t_s
            self._samples.append((t_s, energy_j))

    def begin(self, key: Hashable, start_s: float) -> None:
        """A span started at ``start_s``; it takes its share of every interval from then."""
        if key in self._spans:
            return
        span = _Span(key, start_s)
        self._spans[key] = span
        self._seq += 1
        self._new_events.append((start_s, _START, self._seq, span))

    def end(self, key: Hashable, end_s: float) -> None:
        """The span ended; it completes once intervals up to ``end_s`` are resolved."""
        span = self._spans.get(key)
        if span is None or span.end_s != math.inf:
            return
        if end_s < span.start_s:
            self.oddities["ends_before_start"] += 1
            end_s = span.start_s
        span.end_s = end_s
        self._seq += 1
        self._new_events.append((end_s, _END, self._seq, span))

    @property
    def open_spans(self) -> int:
        return len(self._spans)

    # -- resolving -----------------------------------------------------------------
    def resolve(
        self, until_s: float = math.inf, drain_all: bool = False, final: bool = False
    ) -> dict[Hashable, SpanShare]:
        """Attribute every interval ending by ``until_s`` that can be; return complete spans.

        The caller guarantees that every span begun before ``until_s`` has been announced
        with ``begin`` (and ``end`` if it ended). The last interval waits for the next
        one (its power helps where idle power is not known yet), unless ``drain_all`` (a
        flush). ``final`` (exit) also returns the spans that could not complete, as
        partial, with what they had received so far.
        """
        done: dict[Hashable, SpanShare] = {}
        self._extend_back()
        self._merge_new_events()
        last = len(self._samples) - (1 if drain_all or final else 2)
        lookahead: list[_Interval] | None = None
        lookahead_from = 0
        resolved = 0
        for i in range(max(last, 0)):
            (t0, e0), (t1, e1) = self._samples[i], self._samples[i + 1]
            if t1 > until_s:
                break
            interval = _Interval(t0, t1, e1 - e0)
            start, _ = self._scan(interval)
            estimate = self.estimator.estimate()
            if estimate is None and 0 < interval.busy_s < t1 - t0:
                if lookahead is None:
                    lookahead, lookahead_from = self._lookahead(i), i
                this_and_ahead = lookahead[i - lookahead_from :]
                ahead = this_and_ahead[1:]
                estimate = self.estimator.estimate(
                    [(x.busy_fraction, x.power_w, x.end_s - x.start_s) for x in this_and_ahead]
                )
                waiting = len(ahead) < WAIT_FOR_IDLE and t1 > until_s - WAIT_FOR_IDLE_S
                if estimate is None and waiting and not (drain_all or final):
                    break  # idle power unknown yet: the next intervals may tell it
                if estimate is None:
                    neighbour = ahead[0] if ahead else None
                    self._apply(interval, start, None, neighbour, done)
                    resolved = i + 1
                    continue
            self._apply(interval, start, estimate, None, done)
            resolved = i + 1
        if resolved:
            del self._samples[:resolved]
        if final:
            self._finish_open(done)
        return done

    def _extend_back(self) -> None:
        """With ``extrapolate_start``, before anything is resolved: spans that began
        shortly before the first sample get a sample at the earliest of their starts,
        extrapolated at the first interval's power. That interval's energy (in
        ``measured`` too, so that conservation holds) is an estimate: its bound is all of it.
        """
        samples = self._samples
        if (
            not self.extrapolate_start
            or len(samples) < 2
            or self.resolved_until_s != self.first_sample_s
        ):
            return
        (t0, e0), (t1, e1) = samples[0], samples[1]
        starts = [t for t, kind, _, _ in self._new_events if kind == _START and t < t0]
        if not starts:
            return
        earliest_s = max(min(starts), t0 - MAX_EXTRAPOLATION_S)
        power_w = max(e1 - e0, 0.0) / (t1 - t0)
        samples.insert(0, (earliest_s, e0 - power_w * (t0 - earliest_s)))
        self.first_sample_s = self.resolved_until_s = earliest_s
        self._extrapolated_until_s = t0
        self.oddities["extrapolated_starts"] += sum(t >= earliest_s for t in starts)

    def _merge_new_events(self) -> None:
        if not self._new_events:
            return
        floor_s = self.resolved_until_s
        if floor_s is not None:
            for n, (t, kind, seq, span) in enumerate(self._new_events):
                if t < floor_s:
                    # Began (or ended) inside what is already resolved: it only takes
                    # its share from here on, and says so.
                    if kind == _START:
                        self.oddities["late_starts"] += 1
                        span.partial = True
                    else:
                        self.oddities["late_ends"] += 1
                    self._new_events[n] = (floor_s, kind, seq, span)
        self._events.extend(self._new_events)
        self._new_events.clear()
        self._events.sort()

    def _scan(self, interval: _Interval, j: int = 0, active: int | None = None) -> tuple[int, int]:
        """Fill ``interval``'s busy time and edge counts from the events from index ``j``
        on, with ``active`` spans running at its start (default: the sweep's); returns the
        index after its events and the spans running at its end. Nothing is swept."""
        events, t1 = self._events, interval.end_s
        active = self._active if active is None else active
        cursor, busy_s, changes, first = interval.start_s, 0.0, 0, j
        n = len(events)
        while j < n and events[j][0] <= t1:
            t, kind = events[j][0], events[j][1]
            if active > 0:
                busy_s += t - cursor
                changes += kind == _START or active > 1
            cursor = t
            active += 1 if kind == _START else -1
            j += 1
        if active > 0:
            busy_s += t1 - cursor
        interval.busy_s = busy_s
        interval.edges = j - first
        interval.busy_changes = changes
        return j, active

    def _lookahead(self, first: int) -> list[_Interval]:
        """Busy fractions of the buffered intervals from ``first`` on, without sweeping."""
        out = []
        j, active = 0, self._active
        for i in range(first, len(self._samples) - 1):
            (t0, e0), (t1, e1) = self._samples[i], self._samples[i + 1]
            interval = _Interval(t0, t1, e1 - e0)
            j, active = self._scan(interval, j, active)
            out.append(interval)
        return out

    def _busy_energy(
        self,
        interval: _Interval,
        estimate: IdleEstimate | None,
        neighbour: _Interval | None,
    ) -> tuple[float, float]:
        """(busy J, bound J) for the interval: the energy its spans share, and its error."""
        delta_j = interval.energy_j
        duration_s = interval.end_s - interval.start_s
        busy_s = interval.busy_s
        idle_s = duration_s - busy_s
        if delta_j < 0:
            self.oddities["negative_deltas"] += 1
            return 0.0, 0.0  # a counter going backwards: all to idle, nothing invented
        if busy_s <= 0.0:
            return 0.0, 0.0
        if interval.end_s <= self._extrapolated_until_s:  # not measured
            busy_j = delta_j * busy_s / duration_s
            # Anything from no power to the device's maximum over the busy time.
            ceiling_j = (self.max_power_w or 0.0) * busy_s
            return busy_j, max(busy_j, ceiling_j - busy_j)
        quantum_j = 2 * QUANTUM_J
        if idle_s <= 0.0:
            busy_w = delta_j / busy_s
            return delta_j, (
                quantum_j
                + self._timing_j(interval, estimate, busy_w)
                + self._mix_j(interval, busy_w)
                + self._unobserved_j(interval, estimate, busy_w)
            )
        time_split_j = delta_j * busy_s / duration_s
        if estimate is None:
            prev = self._prev
            full = [x for x in (prev, neighbour) if x is not None and x.busy_fraction >= 1.0]
            if full:
                busy_w = full[0].power_w
                busy_j = min(delta_j, max(busy_w * busy_s, time_split_j))
                return busy_j, (
                    quantum_j
                    + (delta_j - time_split_j)
                    + self._unobserved_j(interval, None, busy_w)
                )
            self.oddities["unknown_idle_intervals"] += 1
            return time_split_j, delta_j
        busy_j = delta_j - estimate.power_w * idle_s
        if busy_j < time_split_j:
            # Less than idle power on average: the spans get no more than their time share.
            self.oddities["below_idle_intervals"] += 1
            busy_j = time_split_j
        unobserved_j = self._unobserved_j(interval, estimate, busy_j / busy_s)
        bound_j = (
            quantum_j
            + estimate.spread_w * idle_s
            + self._timing_j(interval, estimate, busy_j / busy_s)
            + self._mix_j(interval, busy_j / busy_s)
        )
        # A counter that saw all of the interval holds all of its energy: the busy part
        # cannot be off by more than the delta. One that saw part of it can.
        return busy_j, min(bound_j, delta_j) + unobserved_j

    def _mix_j(self, interval: _Interval, busy_w: float) -> float:
        """What one busy power for the whole interval may misplace between its spans.

        Where the set of running spans changes inside an interval, the stretches may
        draw different powers; the change in busy power from the last busy interval
        bounds how different (the power seen around the change).
        """
        if not interval.busy_changes or self._last_busy_w is None:
            return 0.0
        return abs(busy_w - self._last_busy_w) * interval.busy_s

    def _unobserved_j(
        self, interval: _Interval, estimate: IdleEstimate | None, busy_w: float
    ) -> float:
        """What a counter that observes only part of each period cannot see.

        It reports the energy of its window scaled to the period: busy time outside the
        window is missed, busy time inside it counted period/window times. For busy time
        ``b`` in an interval ``D`` of which ``W`` is observed, the busy seconds reported
        are anywhere in [b − D·max(0, (b − (D − W))/W), D·min(1, b/W)]; the error is the
        larger distance to ``b``, times the step from idle to busy power.
        """
        window_s, period_s = self.counter_window_s, self.counter_period_s
        if not window_s or not period_s or window_s >= period_s:
            return 0.0
        duration_s = interval.end_s - interval.start_s
        busy_s = interval.busy_s
        if busy_s <= 0.0 or (busy_s >= duration_s and not interval.busy_changes):
            return 0.0
        seen_s = duration_s * window_s / period_s
        over_s = duration_s * min(1.0, busy_s / seen_s) - busy_s
        under_s = busy_s - duration_s * max(0.0, (busy_s - (duration_s - seen_s)) / seen_s)
        idle_w = estimate.power_w if estimate is not None else 0.0
        top_w = max(self.max_power_w or 0.0, busy_w, self._last_busy_w or 0.0)
        return max(over_s, under_s, 0.0) * max(top_w - idle_w, 0.0)

    def _timing_j(self, interval: _Interval, estimate: IdleEstimate | None, busy_w: float) -> float:
        """Energy a sample time off by the sampler's uncertainty can move across an edge.

        The busy-over-idle step moves with the edge, and the idle time subtracted from the
        interval is off by as much: stamps off by different amounts at a call's start and
        end (a period still being learned) do not cancel.
        """
        if not interval.edges and interval.busy_s >= interval.end_s - interval.start_s:
            return 0.0
        idle_w = estimate.power_w if estimate is not None else 0.0
        return 2 * self.timing_uncertainty_s * max(busy_w, idle_w, 0.0)

    def _apply(
        self,
        interval: _Interval,
        end_index: int,
        estimate: IdleEstimate | None,
        neighbour: _Interval | None,
        done: dict[Hashable, SpanShare],
    ) -> None:
        t0, t1 = interval.start_s, interval.end_s
        busy_j, bound_j = self._busy_energy(interval, estimate, neighbour)
        busy_s = interval.busy_s
        energy_per_s = busy_j / busy_s if busy_s > 0 else 0.0
        bound_per_s = bound_j / busy_s if busy_s > 0 else 0.0
        energy = self._energy_per_span_j
        gpu_s = self._gpu_s_per_span
        bound = self._bound_per_span_j
        active = self._active
        cursor = t0
        events = self._events
        for j in range(end_index):
            t, kind, _, span = events[j]
            if active > 0:
                share_s = (t - cursor) / active
                energy += energy_per_s * share_s
                gpu_s += share_s
                bound += bound_per_s * share_s
            cursor = t
            if kind == _START:
                span.energy_at_start_j = energy
                span.gpu_s_at_start = gpu_s
                span.bound_at_start_j = bound
                span.started = True
                active += 1
            else:
                active -= 1
                del self._spans[span.key]
                done[span.key] = SpanShare(
                    energy - span.energy_at_start_j,
                    gpu_s - span.gpu_s_at_start,
                    bound - span.bound_at_start_j,
                    span.partial,
                    span.start_s < self._extrapolated_until_s,
                )
        if active > 0:
            share_s = (t1 - cursor) / active
            energy += energy_per_s * share_s
            gpu_s += share_s
            bound += bound_per_s * share_s
        else:
            energy = gpu_s = bound = 0.0  # nobody holds a start value: rebase (precision)
        del events[:end_index]
        self._energy_per_span_j, self._gpu_s_per_span, self._bound_per_span_j = energy, gpu_s, bound
        self._active = active
        self.measured.append(EnergyPiece(t0, t1, interval.energy_j))
        idle_j = interval.energy_j - busy_j
        if idle_j:
            self.idle.append(EnergyPiece(t0, t1, idle_j))
        if interval.energy_j >= 0 and t1 > self._extrapolated_until_s:
            # Extrapolated intervals are guesses: they never teach the idle power.
            self.estimator.observe(interval.busy_fraction, interval.power_w, t1 - t0)
        self._prev = interval
        if busy_s > 0 and busy_j > 0:
            self._last_busy_w = busy_j / busy_s
        self.resolved_until_s = t1

    def expire(self, ended_by_s: float) -> dict[Hashable, SpanShare]:
        """The device stopped reporting: release the spans that ended by ``ended_by_s``.

        They get what they had received (flagged partial) and leave the sweep, so the
        records of a call that also ran on other devices are not held back by this one.
        """
        self._merge_new_events()
        done = {
            key: self._share_so_far(span)
            for key, span in self._spans.items()
            if span.end_s <= ended_by_s
        }
        if done:
            for key in done:
                self._active -= self._spans.pop(key).started
            self._events = [e for e in self._events if e[3].key not in done]
            self.oddities["expired_spans"] += len(done)
        return done

    def _finish_open(self, done: dict[Hashable, SpanShare]) -> None:
        """At exit: spans not complete get what they have so far, flagged partial."""
        for key, span in self._spans.items():
            done[key] = self._share_so_far(span)
        self._spans.clear()
        self._events.clear()
        self._active = 0

    def _share_so_far(self, span: _Span) -> SpanShare:
        """What a span not yet complete has received, flagged partial."""
        if not span.started:
            return SpanShare(partial=True)
        return SpanShare(
            self._energy_per_span_j - span.energy_at_start_j,
            self._gpu_s_per_span - span.gpu_s_at_start,
            self._bound_per_span_j - span.bound_at_start_j,
            partial=True,
        )
