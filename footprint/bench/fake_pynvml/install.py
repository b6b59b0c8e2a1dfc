"""``install_fake_pynvml``: a fake ``pynvml`` on real time, its GPUs driven by load models
(shared with other processes through a ``SharedLoadLog``), installed where footprint
imports ``pynvml``; its options (``FakeInstallSpec``) as text or a mapping."""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass, fields

from footprint.bench.fake_pynvml.gpu import FakeGpu, SystemClock
from footprint.bench.fake_pynvml.library import make_fake_pynvml
from footprint.bench.loads import LoggedLoadModel
from footprint.sensors.simulated import LoadModel


@dataclass(frozen=True)
class FakeInstallSpec:
    """Options of ``install_fake_pynvml`` (``"gpus=4,idle_w=60,counter_window_s=0.025"``)."""

    gpus: int = 1
    idle_w: float = 60.0
    busy_w: float = 400.0
    counter_update_period_s: float = 0.1
    counter_window_s: float | None = None  # None: the counter sees whole periods
    counter_window_offset_s: float | None = None  # None: the window ends at the tick
    power_average_s: float = 0.0  # 0: instantaneous power field
    name: str = "NVIDIA H100 80GB HBM3"
    shared_load_log: str | None = None  # path of a SharedLoadLog other processes feed
    power_limit_w: float | None = None  # enforced power limit; None: busy_w, 0: unsupported
    energy_counter: bool = True  # False: a GPU without the energy counter (power only)
    seed: int = 0  # only changes the UUIDs (``fake_uuids``)
    counter_phase_s: float = 0.0  # the ticks began this long before the module was made

    def __post_init__(self) -> None:
        if not 1 <= self.gpus <= 64:
            raise ValueError(f"fake pynvml: gpus must be 1..64, got {self.gpus}")

    @classmethod
    def parse(cls, spec: str | Mapping[str, object]) -> FakeInstallSpec:
        """From ``"gpus=2,idle_w=60"`` or a mapping; unknown keys or bad values raise
        ValueError."""
        if isinstance(spec, str):
            pairs = [item.partition("=") for item in spec.split(",") if item.strip()]
            given: dict[str, object] = {
                k.strip(): v.strip() if sep else None for k, sep, v in pairs
            }
        else:
            given = dict(spec)
        known = [f.name for f in fields(cls)]
        values: dict[str, object] = {}
        for key, value in given.items():
            if key not in known:
                raise ValueError(
                    f"fake pynvml: unknown option {key!r}; allowed: {', '.join(known)}"
                )
            try:
                values[key] = _option_value(key, value)
            except (TypeError, ValueError):
                raise ValueError(f"fake pynvml: bad value for {key}: {value!r}") from None
        return cls(**values)  # type: ignore[arg-type]


def _option_value(key: str, value: object) -> object:
    if value is None or value == "" or (isinstance(value, str) and value.lower() == "none"):
        if key in (
            "counter_window_s",
            "counter_window_offset_s",
            "shared_load_log",
            "power_limit_w",
        ):
            return None
        raise ValueError(key)
    if key in ("name", "shared_load_log"):
        return str(value)
    if key in ("gpus", "seed"):
        return int(value)  # type: ignore[call-overload]
    if key == "energy_counter":
        text = str(value).strip().lower()
        if text not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(text)
        return text in ("1", "true", "yes")
    return float(value)  # type: ignore[arg-type]


def fake_uuids(gpus: int, seed: int = 0) -> list[str]:
    """The UUIDs ``install_fake_pynvml`` gives its GPUs, by index."""
    return [f"GPU-{seed & 0xFFFFFFFF:08x}-fa4e-4000-8000-{index:012x}" for index in range(gpus)]


def install_fake_pynvml(spec: str | Mapping[str, object]) -> types.ModuleType:
    """Build a fake ``pynvml`` on real time and install it as ``sys.modules["pynvml"]``, so
    ``import pynvml`` in footprint's ``NvmlSensor`` gets it; returns the module.

    ``spec``: ``FakeInstallSpec`` options, as text or a mapping. The GPUs are
    ``module.fake_state.gpus`` (UUIDs ``fake_uuids(gpus, seed)``), each drawing the power
    of its ``.loads``: a ``LoadModel`` the workload drives, or with ``shared_load_log`` a
    ``LoggedLoadModel`` also fed by the steps other processes append to that file.
    """
    options = FakeInstallSpec.parse(spec)
    limit_w = options.busy_w if options.power_limit_w is None else options.power_limit_w
    gpus = []
    for index, uuid in enumerate(fake_uuids(options.gpus, options.seed)):
        loads: LoadModel
        if options.shared_load_log:
            loads = LoggedLoadModel(options.shared_load_log, options.idle_w, options.busy_w, index)
        else:
            loads = LoadModel(options.idle_w, options.busy_w)
        gpus.append(
            FakeGpu(
                uuid,
                name=options.name,
                supports_energy_counter=options.energy_counter,
                power_w=loads.power_w,
                counter_update_period_s=options.counter_update_period_s,
                counter_window_s=options.counter_window_s,
                counter_window_offset_s=options.counter_window_offset_s,
                counter_phase_s=options.counter_phase_s,
                power_average_s=options.power_average_s,
                loads=loads,
                power_limit_w=limit_w or None,
            )
        )
    module = make_fake_pynvml(gpus, clock=SystemClock())
    sys.modules["pynvml"] = module
    return module
