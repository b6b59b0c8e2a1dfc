"""The accuracy benchmark's fixed scenarios, its code paths and the simulated GPU's
powers and counter they run on (``footprint.bench.accuracy``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IDLE_W, BUSY_W, UPDATE_PERIOD_S, SAMPLING_PERIOD_S = 60.0, 400.0, 0.1, 0.05
PART_TIME_WINDOW_S = 0.025

PATHS = ("simulated", "nvml", "nvml-part-time")

NOT_COVERED = (
    "The counters here report the exact energy of what they observe; real GPUs add their "
    "sensor's own error (NVML: ±5% of the draw) and draw powers that vary between and "
    "within calls, which the attribution rule (busy power shared equally among the calls "
    "running at each instant) does not see: the calls-of-different-power scenario says "
    "how far that rule is from each call's own energy."
)


@dataclass(frozen=True)
class Scenario:
    """One fixed workload (``accuracy_child.WORKLOADS``), run ``repeats`` times in fresh
    processes (``clients`` at once behind a daemon when ``daemon``)."""

    name: str
    description: str
    workload: str
    params: dict[str, Any]
    gpus: int = 1
    repeats: int = 1
    daemon: bool = False
    clients: int = 1
    paths: tuple[str, ...] = PATHS
    scaled: tuple[str, ...] = ()  # params multiplied by --scale
    extra: tuple[str, ...] = field(default=())  # extra figures: "warmup", "own_energy"


SCENARIOS = (
    Scenario(
        "one-call-10ms",
        "one 10 ms call, then exit (5 processes)",
        "one_call",
        {"seconds": 0.01},
        repeats=5,
    ),
    Scenario(
        "one-call-100ms",
        "one 100 ms call, then exit (5 processes)",
        "one_call",
        {"seconds": 0.1},
        repeats=5,
    ),
    Scenario(
        "one-call-1s",
        "one 1 s call, then exit (5 processes)",
        "one_call",
        {"seconds": 1.0},
        repeats=5,
    ),
    Scenario(
        "warm-up",
        "the first 200 calls of a process: 1–20 ms calls, 5–50 ms gaps (3 processes)",
        "bursty",
        {"calls": 200},
        repeats=3,
        extra=("warmup",),
    ),
    Scenario(
        "short-bursty",
        "1,000 calls of 1–20 ms with 5–50 ms gaps",
        "bursty",
        {"calls": 1000},
        scaled=("calls",),
    ),
    Scenario(
        "long",
        "sequential 1–3 s calls with 20–150 ms gaps",
        "long",
        {"seconds": 16.0},
        scaled=("seconds",),
    ),
    Scenario(
        "concurrent-16",
        "16 threads of overlapping 50 ms–2 s calls on one GPU",
        "threads",
        {"threads": 16, "seconds": 10.0, "gpus": 1},
        scaled=("seconds",),
    ),
    Scenario(
        "two-gpus",
        "two GPUs, 6 threads: calls on GPU 0, on GPU 1, and on both",
        "threads",
        {"threads": 6, "seconds": 10.0, "gpus": 2},
        gpus=2,
        scaled=("seconds",),
    ),
    Scenario(
        "daemon-bursty",
        "4 processes behind one daemon, each 250 calls of 1–20 ms with 5–50 ms gaps",
        "bursty",
        {"calls": 250},
        daemon=True,
        clients=4,
        scaled=("calls",),
    ),
    Scenario(
        "daemon-long",
        "4 processes behind one daemon, each making 1–3 s calls",
        "long",
        {"seconds": 12.0},
        daemon=True,
        clients=4,
        scaled=("seconds",),
    ),
    Scenario(
        "different-power",
        "heavy calls (full load) overlapping light ones (a fifth of it), 0.2–1 s each",
        "mixed_power",
        {"seconds": 12.0},
        paths=("nvml", "nvml-part-time"),
        scaled=("seconds",),
        extra=("own_energy",),
    ),
)
