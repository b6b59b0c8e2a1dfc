"""One accuracy workload in a fresh process, as a user's script runs it.

``python -m footprint.bench.accuracy_child SPEC_JSON``: the parent
(``footprint.bench.accuracy``) sets ``FOOTPRINT_*`` in the environment, so this process
never calls ``configure()``: its first footprint action is the first tracked call, with no
head start. On the NVML path a fake ``pynvml`` running on the real monotonic clock is put
in ``sys.modules`` first (a library is not a footprint action), and each call loads the
fake GPUs it runs on; on the simulated path the calls load the simulated GPUs themselves
(``workload=spans``). Before exiting (footprint's own exit flush runs after), the process
writes what the parent needs to compute each call's true energy: the load steps it put on
each GPU and its wall-clock offset.

SPEC keys: ``workload`` (a name in ``WORKLOADS``), ``params`` (its keyword arguments),
``path`` (``simulated`` | ``nvml``), ``fake`` (options of ``install_fake_pynvml``),
``shared_load_log`` (daemon clients on the NVML path: append load steps there instead),
``seed``, ``out`` (the JSON file to write).
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

LoadStep = tuple[int, float, float]  # (GPU index, monotonic s, load change)


class Loads:
    """Where a call's load goes: the fake GPUs (NVML path), a log shared with the
    daemon's fake GPUs, or nowhere (the simulated GPUs are loaded by footprint itself)."""

    def __init__(self, gpus: int, apply: Callable[[int, float, float], None] | None) -> None:
        self.gpus = gpus
        self._apply = apply
        self.steps: list[LoadStep] = []
        self._lock = threading.Lock()

    def step(self, gpus: list[int] | None, delta: float) -> None:
        if self._apply is None:
            return
        t_s = time.monotonic()
        for index in range(self.gpus) if gpus is None else gpus:
            self._apply(index, t_s, delta)
            with self._lock:
                self.steps.append((index, t_s, delta))


class Context:
    """What a workload uses: tracked calls that load their GPUs for their duration."""

    def __init__(self, loads: Loads) -> None:
        import footprint

        self._track = footprint.track
        self.loads = loads

    def caller(
        self, model: str, gpus: list[int] | None = None, load: float = 1.0
    ) -> Callable[[float], None]:
        loads = self.loads

        @self._track(model=model, gpus=gpus)
        def call(seconds: float) -> None:
            loads.step(gpus, load)
            time.sleep(seconds)
            loads.step(gpus, -load)

        return call


def one_call(ctx: Context, rng: random.Random, seconds: float) -> None:
    ctx.caller("bench")(seconds)


def bursty(ctx: Context, rng: random.Random, calls: int) -> None:
    """Calls of 1–20 ms with gaps of 5–50 ms, one after the other."""
    call = ctx.caller("bench")
    for _ in range(calls):
        call(rng.uniform(0.001, 0.02))
        time.sleep(rng.uniform(0.005, 0.05))


def long_calls(ctx: Context, rng: random.Random, seconds: float) -> None:
    """Calls of 1–3 s with gaps of 20–150 ms, for ``seconds``."""
    call = ctx.caller("bench")
    deadline_s = time.monotonic() + seconds
    while time.monotonic() < deadline_s:
        call(rng.uniform(1.0, 3.0))
        time.sleep(rng.uniform(0.02, 0.15))


def _in_threads(loops: list[Callable[[random.Random], None]], rng: random.Random) -> None:
    plans = [random.Random(rng.random()) for _ in loops]
    workers = [threading.Thread(target=loop, args=(plan,)) for loop, plan in zip(loops, plans)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def threads(ctx: Context, rng: random.Random, threads: int, seconds: float, gpus: int) -> None:
    """``threads`` callers of overlapping 50 ms–2 s calls; with two GPUs a third of them
    pinned to GPU 0, a third to GPU 1, the rest on both."""
    callers = [ctx.caller("bench-all")]
    if gpus > 1:
        callers += [ctx.caller("bench-gpu0", gpus=[0]), ctx.caller("bench-gpu1", gpus=[1])]
    deadline_s = time.monotonic() + seconds

    def loop_for(index: int) -> Callable[[random.Random], None]:
        def loop(plan: random.Random) -> None:
            work = callers[index % len(callers)]
            time.sleep(plan.uniform(0, 0.05))
            while time.monotonic() < deadline_s:
                work(plan.uniform(0.05, 2.0))
                time.sleep(plan.uniform(0.0, 0.2))

        return loop

    _in_threads([loop_for(i) for i in range(threads)], rng)


def mixed_power(ctx: Context, rng: random.Random, seconds: float) -> None:
    """Heavy calls (load 1.0) overlapping light ones (load 0.2), 0.2–1 s each."""
    heavy, light = ctx.caller("heavy", load=1.0), ctx.caller("light", load=0.2)
    deadline_s = time.monotonic() + seconds

    def loop_for(work: Callable[[float], None]) -> Callable[[random.Random], None]:
        def loop(plan: random.Random) -> None:
            while time.monotonic() < deadline_s:
                work(plan.uniform(0.2, 1.0))
                time.sleep(plan.uniform(0.0, 0.3))

        return loop

    _in_threads([loop_for(heavy), loop_for(light)], rng)


WORKLOADS: dict[str, Callable[..., None]] = {
    "one_call": one_call,
    "bursty": bursty,
    "long": long_calls,
    "threads": threads,
    "mixed_power": mixed_power,
}


def _loads(spec: dict[str, Any]) -> Loads:
    gpus = int(spec.get("gpus", 1))
    if spec["path"] == "simulated":
        return Loads(gpus, None)
    from footprint.bench.fake_pynvml import SharedLoadLog, install_fake_pynvml

    if spec.get("shared_load_log"):  # a daemon client: the daemon's fake GPUs read it
        log = SharedLoadLog(spec["shared_load_log"])
        return Loads(gpus, lambda index, t_s, delta: log.append(index, t_s, delta))
    module = install_fake_pynvml(spec["fake"])
    models = [gpu.loads for gpu in module.fake_state.gpus]
    return Loads(gpus, lambda index, t_s, delta: models[index].add_step(t_s, delta))


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    wall_offset_s = time.time() - time.monotonic()
    loads = _loads(spec)
    ctx = Context(loads)
    WORKLOADS[spec["workload"]](ctx, random.Random(spec.get("seed", 1)), **spec["params"])
    with open(spec["out"], "w", encoding="utf-8") as out:
        json.dump({"wall_offset_s": wall_offset_s, "steps": loads.steps}, out)
    return 0  # footprint's exit flush runs now, as in any script


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
