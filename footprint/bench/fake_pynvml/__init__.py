"""A fake ``pynvml`` (nvidia-ml-py) module, so the NVML sensor's real code path can be run.

``make_fake_pynvml(gpus)`` returns a module object with the functions, constants and
exception classes the sensor uses, behaving like the library: ``NVMLError(code)`` returns
the per-code subclass (``NVMLError_NotSupported``, ``NVMLError_GpuIsLost``, …, generated
from the ``NVML_ERROR_*`` constants as nvidia-ml-py does), every call before ``nvmlInit``
or after the last ``nvmlShutdown`` raises ``NVMLError_Uninitialized``, init is
reference-counted, handles are opaque, strings are ``str``, energy is an ``int`` in mJ and
power an ``int`` in mW. The tests use it, and ``footprint bench accuracy`` runs footprint's
NVML code path over it (``install_fake_pynvml``).

Each ``FakeGpu`` runs on the module's clock (s; a ``FakeClock``, or ``SystemClock`` for real
time): its energy counter only changes every ``counter_update_period_s`` (tick times
``attach time + k × period``) and reports whole millijoules (truncated), like the hardware.
It may see only part of each period, as A100/H100 counters do (``counter_window_s``), and
its power field may be an average over the last second, as older GPUs' is
(``power_average_s``).

    clock = FakeClock()
    old_gpu = FakeGpu("GPU-bbbb", supports_energy_counter=False, power_w=250.0)
    fake = make_fake_pynvml([FakeGpu("GPU-aaaa"), old_gpu], clock=clock)
    sensor = NvmlSensor(nvml=fake, now_s=clock.now_s)
    clock.advance(0.5)

MIG: a ``FakeGpu(mig_mode=1, mig_slices=[FakeMigSlice("MIG-…", 3), …])`` has MIG devices
with their own true power (``true_slice_energy_j``); NVML measures only the whole GPU.

The package: ``errors`` (codes and exceptions), ``gpu`` (``FakeGpu``, clocks), ``mig``
(``FakeMigSlice``), ``library``
(``make_fake_pynvml``), ``install`` (``install_fake_pynvml``). Everything is taken from
here, the codes and exception classes too, as from ``pynvml``.
"""

from footprint.bench.fake_pynvml.errors import *  # noqa: F403  NVML_* codes, NVMLError*
from footprint.bench.fake_pynvml.errors import __all__ as _ERROR_NAMES
from footprint.bench.fake_pynvml.gpu import FakeClock, FakeGpu, SystemClock
from footprint.bench.fake_pynvml.install import FakeInstallSpec, fake_uuids, install_fake_pynvml
from footprint.bench.fake_pynvml.library import FakeNvmlState, make_fake_pynvml
from footprint.bench.fake_pynvml.mig import FakeMigSlice

# SharedLoadLog and ALL_DEVICES are re-exported: a benchmark takes all it needs from here.
from footprint.bench.loads import ALL_DEVICES, SharedLoadLog

__all__ = [
    *_ERROR_NAMES,
    "ALL_DEVICES",
    "FakeClock",
    "FakeGpu",
    "FakeInstallSpec",
    "FakeMigSlice",
    "FakeNvmlState",
    "SharedLoadLog",
    "SystemClock",
    "fake_uuids",
    "install_fake_pynvml",
    "make_fake_pynvml",
]
