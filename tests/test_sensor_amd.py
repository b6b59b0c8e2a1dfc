"""The AMD sensor (amdsmi) against a fake ``amdsmi`` that behaves like ROCm's bindings."""

from __future__ import annotations

import json
import sys

import pytest

from footprint.cli import main
from footprint.config import validate_sensor
from footprint.sensors import open_gpu_sensor
from footprint.sensors.amd import AmdSensor, open_amd, select_visible
from footprint.sensors.base import ENERGY_COUNTER, ENERGY_POWER, SensorError
from footprint.sensors.inventory import survey
from tests.fake_amdsmi import (
    RESOLUTION_UJ,
    FakeAmdGpu,
    make_fake_amdsmi,
    mi250x_card,
    mi300x_host,
)


class Clock:
    def __init__(self) -> None:
        self.t_s = 100.0

    def now_s(self) -> float:
        return self.t_s


def make(gpus, environ=None, **fake_options):
    fake = make_fake_amdsmi(gpus, **fake_options)
    clock = Clock()
    sensor = AmdSensor(environ or {}, smi=fake, now_s=clock.now_s)
    return sensor, fake, clock


def advance(fake, clock: Clock, seconds: float) -> None:
    fake.fake_advance(seconds)
    clock.t_s += seconds


@pytest.fixture(autouse=True)
def _no_visible_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)


# --- the fake behaves like the library ------------------------------------------------


def test_fake_reports_accumulator_times_resolution_in_microjoules() -> None:
    gpu = FakeAmdGpu(uuid="u0", power_w=500.0, accumulator=0)
    fake = make_fake_amdsmi([gpu])
    fake.amdsmi_init(fake.AmdSmiInitFlags.INIT_AMD_GPUS)
    handle = fake.amdsmi_get_processor_handles()[0]
    fake.fake_advance(1.0)
    reading = fake.amdsmi_get_energy_count(handle)
    assert reading["counter_resolution"] == pytest.approx(RESOLUTION_UJ)
    energy_uj = reading["energy_accumulator"] * reading["counter_resolution"]
    assert energy_uj == pytest.approx(500e6, abs=RESOLUTION_UJ)
    with pytest.raises(fake.AmdSmiParameterException):
        fake.amdsmi_get_energy_count("not a handle")
    fake.fake_gpus[0].energy_supported = False
    with pytest.raises(fake.AmdSmiLibraryException) as raised:
        fake.amdsmi_get_energy_count(handle)
    assert raised.value.get_error_code() == 2  # AMDSMI_STATUS_NOT_SUPPORTED


# --- reading energy -------------------------------------------------------------------


@pytest.mark.parametrize("version", ["6.2", "6.3", "6.4"])
def test_counter_energy_is_accumulator_times_resolution(version: str) -> None:
    sensor, fake, clock = make(mi300x_host(2), version=version)
    assert [d.energy_method for d in sensor.devices] == [ENERGY_COUNTER] * 2
    assert sensor.read_energy_j() == [0.0, 0.0]
    fake.fake_gpus[0].power_w = 750.0
    advance(fake, clock, 2.0)
    first, second = sensor.read_energy_j()
    assert first == pytest.approx(1500.0, abs=1e-3)  # 750 W x 2 s
    assert second == pytest.approx(600.0, abs=1e-3)  # 300 W x 2 s
    sensor.close()


def test_counter_wrap_and_reset_keep_the_series_going_up() -> None:
    near_wrap = (1 << 64) - 1000
    sensor, fake, clock = make([FakeAmdGpu(uuid="u0", accumulator=near_wrap, power_w=306.0)])
    advance(fake, clock, 1.0)  # 306 J = 20,000,000 counts: wraps past 2**64
    assert fake.fake_gpus[0].accumulator < near_wrap
    assert sensor.read_energy_j()[0] == pytest.approx(306.0, abs=1e-3)
    fake.fake_gpus[0].accumulator = 10**12
    sensor.read_energy_j()
    fake.fake_gpus[0].accumulator = 0  # a GPU reset: the counter starts again from 0
    advance(fake, clock, 1.0)
    total_j = 306.0 + (10**12 - 20_000_000) * RESOLUTION_UJ / 1e6 + 306.0
    assert sensor.read_energy_j()[0] == pytest.approx(total_j, rel=1e-6)  # float32 resolution


def test_power_is_polled_and_integrated_where_the_accumulator_is_missing() -> None:
    gpu = FakeAmdGpu(uuid="u0", energy_supported=False, power_w=400.0)
    sensor, fake, clock = make([gpu])
    assert [d.energy_method for d in sensor.devices] == [ENERGY_POWER]
    assert sensor.read_energy_j() == [0.0]
    gpu.power_w = 600.0
    clock.t_s += 2.0
    assert sensor.read_energy_j()[0] == pytest.approx(1000.0)  # trapezoid (400+600)/2 x 2


def test_average_socket_power_is_used_where_current_is_na() -> None:
    gpu = FakeAmdGpu(
        uuid="u0", energy_supported=False, power_w=300.0, power_fields=("average_socket_power",)
    )
    sensor, _, clock = make([gpu])
    sensor.read_energy_j()
    clock.t_s += 1.0
    assert sensor.read_energy_j()[0] == pytest.approx(300.0)


def test_gpu_with_neither_reading_is_skipped_with_the_reason() -> None:
    dead = FakeAmdGpu(uuid="dead", energy_supported=False, power_fields=())
    sensor, _, _ = make([dead, *mi300x_host(1)])
    assert [d.uuid for d in sensor.devices] == [mi300x_host(1)[0].uuid]
    assert "NOT_SUPPORTED" in sensor.skipped["dead"] and "N/A" in sensor.skipped["dead"]
    assert open_amd({}, smi=make_fake_amdsmi([dead]))[1].startswith(
        "no AMD GPU with a usable energy reading"
    )


def test_a_failed_read_is_none_and_counted() -> None:
    sensor, fake, _ = make(mi300x_host(2))
    fake.fake_gpus[1].fail_next_reads = 1
    assert sensor.read_energy_j()[1] is None
    assert sensor.read_errors == 1
    assert sensor.read_energy_j()[1] == 0.0
    for gpu in fake.fake_gpus:
        gpu.fail_next_reads = 1
    with pytest.raises(SensorError):
        sensor.read_energy_j()


def test_device_info_names_the_model_vendor_and_power_limit() -> None:
    sensor, _, _ = make(mi300x_host(1))
    (device,) = sensor.devices
    assert (device.vendor, device.name, device.max_power_w) == ("AMD", "AMD Instinct MI300X", 750)


# --- dual-GCD MI250X --------------------------------------------------------------------


def test_mi250x_second_die_shares_the_package_reading_of_the_first() -> None:
    sensor, fake, clock = make(mi250x_card(0) + mi250x_card(1))
    first, second = sensor.devices
    dies = fake.fake_gpus
    assert (first.index, first.uuid, first.covers_indices) == (0, dies[0].uuid, (1,))
    assert first.covers_uuids == (dies[1].uuid,)
    assert (second.index, second.covers_indices) == (2, (3,))
    sensor.read_energy_j()
    advance(fake, clock, 1.0)
    assert sensor.read_energy_j() == pytest.approx([400.0, 400.0], abs=1e-3)  # package power


def test_mi250x_second_die_alone_is_measured_by_the_package_reading() -> None:
    sensor, fake, clock = make(mi250x_card(0), {"HIP_VISIBLE_DEVICES": "1"})
    (device,) = sensor.devices
    assert device.index == 0  # what this process calls the second die
    assert device.uuid == fake.fake_gpus[0].uuid  # the die that reports the package
    assert device.covers_uuids == (fake.fake_gpus[1].uuid,)
    sensor.read_energy_j()
    advance(fake, clock, 1.0)
    assert sensor.read_energy_j()[0] == pytest.approx(400.0, abs=1e-3)


def test_two_reporting_dies_on_one_board_stay_two_devices() -> None:
    dies = mi250x_card(0)
    dies[1].silent, dies[1].accumulator, dies[1].power_w = False, 5, 200.0
    sensor, _, _ = make(dies)
    assert [d.covers_uuids for d in sensor.devices] == [(), ()]


# --- which devices this process sees ----------------------------------------------------


def test_hip_order_comes_from_the_library_not_the_handle_order() -> None:
    gpus = mi300x_host(3)
    for gpu, hip_id in zip(gpus, (2, 0, 1), strict=True):
        gpu.hip_id = gpu.kfd_node_id = hip_id
    sensor, _, _ = make(gpus)
    assert [d.uuid for d in sensor.devices] == [gpus[1].uuid, gpus[2].uuid, gpus[0].uuid]
    older, _, _ = make(gpus, enumeration_info=False)  # ROCm 6.3: KFD node order
    assert [d.uuid for d in older.devices] == [d.uuid for d in sensor.devices]


def test_rocr_then_hip_visible_devices_select_by_index_and_uuid() -> None:
    gpus = mi300x_host(4)
    environ = {"ROCR_VISIBLE_DEVICES": f"GPU-{gpus[3].asic_serial:016x},1,2"}
    sensor, _, _ = make(gpus, environ)
    assert [d.uuid for d in sensor.devices] == [gpus[3].uuid, gpus[1].uuid, gpus[2].uuid]
    environ["HIP_VISIBLE_DEVICES"] = "2,0"
    sensor, _, _ = make(gpus, environ)
    assert [(d.index, d.uuid) for d in sensor.devices] == [(0, gpus[2].uuid), (1, gpus[3].uuid)]


def test_cuda_visible_devices_counts_when_hip_visible_devices_is_unset() -> None:
    gpus = mi300x_host(3)
    sensor, _, _ = make(gpus, {"CUDA_VISIBLE_DEVICES": "2"})
    assert [d.uuid for d in sensor.devices] == [gpus[2].uuid]
    sensor, _, _ = make(gpus, {"CUDA_VISIBLE_DEVICES": "2", "HIP_VISIBLE_DEVICES": "0"})
    assert [d.uuid for d in sensor.devices] == [gpus[0].uuid]


def test_visible_lists_end_at_the_first_invalid_entry_and_reject_repeats() -> None:
    ids = [["a"], ["b"], ["c"]]
    assert select_visible("1,x,0", ids, "HIP_VISIBLE_DEVICES") == [1]
    assert select_visible("", ids, "HIP_VISIBLE_DEVICES") == []
    with pytest.raises(ValueError, match="more than once"):
        select_visible("1,B", ids, "ROCR_VISIBLE_DEVICES")
    sensor, reason = open_amd({"HIP_VISIBLE_DEVICES": "-1"}, smi=make_fake_amdsmi(mi300x_host(2)))
    assert sensor is None and "hides all 2 AMD GPUs" in reason


# --- opening: reasons, auto, explicit -----------------------------------------------------


def test_driver_not_loaded_is_a_reason_not_an_exception() -> None:
    fake = make_fake_amdsmi(mi300x_host(1), driver_loaded=False)
    sensor, reason = open_amd({}, smi=fake)
    assert sensor is None and "amdgpu driver not loaded" in reason


def test_missing_amdsmi_module_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "amdsmi", None)
    sensor, reason = open_amd()
    assert sensor is None and "footprint[amd]" in reason


def test_amdsmi_without_rocm_is_a_reason_and_prints_nothing(tmp_path, monkeypatch, capsys):
    """The PyPI wheel installs without ROCm; importing it then prints to stdout and raises
    KeyError: 'libamd_smi.so' (amdsmi 7.0.2). That text must not reach the user's stdout
    (it would corrupt ``footprint devices --json``)."""
    package = tmp_path / "amdsmi"
    package.mkdir()
    (package / "__init__.py").write_text(
        "print('Unable to find libamd_smi.so library try installing amd-smi-lib')\n"
        "raise KeyError('libamd_smi.so')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "amdsmi", raising=False)
    sensor, reason = open_amd()
    assert sensor is None
    assert "cannot load ROCm's libamd_smi.so" in reason and "Unable to find" in reason
    assert capsys.readouterr().out == ""


def test_close_shuts_the_library_down_once() -> None:
    sensor, fake, _ = make(mi300x_host(1))
    sensor.close()
    sensor.close()
    assert fake.fake_state.shutdowns == 1
    with pytest.raises(SensorError):
        sensor.read_energy_j()


def test_auto_falls_back_to_amd_when_nvml_finds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setitem(sys.modules, "amdsmi", make_fake_amdsmi(mi300x_host(2)))
    sensor, reason = open_gpu_sensor("auto")
    assert reason == "" and isinstance(sensor, AmdSensor) and len(sensor.devices) == 2
    sensor.close()
    explicit, _ = open_gpu_sensor("amd")
    assert isinstance(explicit, AmdSensor)
    explicit.close()
    nvml_only, reason = open_gpu_sensor("nvml")
    assert nvml_only.devices == [] and "pynvml" in reason


def test_auto_without_any_gpu_library_names_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setitem(sys.modules, "amdsmi", None)
    sensor, reason = open_gpu_sensor("auto")
    assert sensor.devices == []
    assert reason.startswith("NVIDIA: ") and "; AMD: " in reason


def test_amd_is_a_valid_sensor_setting_without_options() -> None:
    validate_sensor("amd")
    with pytest.raises(ValueError, match="takes no options"):
        validate_sensor("amd:gpus=2")


# --- footprint devices --------------------------------------------------------------------


@pytest.fixture
def amd_host(monkeypatch: pytest.MonkeyPatch):
    """No NVML; an MI250X card and an MI300X behind a fake amdsmi; RAPL unreadable."""
    from footprint.sensors import rapl

    monkeypatch.setitem(sys.modules, "pynvml", None)
    fake = make_fake_amdsmi(mi250x_card(0) + mi300x_host(1))
    monkeypatch.setitem(sys.modules, "amdsmi", fake)

    def unreadable(root=rapl.DEFAULT_POWERCAP_ROOT):
        return None, (
            "RAPL energy counters are readable only by root (/sys/class/powercap/"
            "intel-rapl:0/energy_uj: permission denied; energy_uj is mode 0400 since the "
            "CVE-2020-8694 fix); run as root or grant read access to the energy_uj files"
        )

    monkeypatch.setattr(rapl, "open_rapl", unreadable)
    return fake


def test_devices_json_lists_amd_gpus_shared_dies_and_why_cpu_is_missing(amd_host, capsys):
    main(["devices", "--json"])
    out = json.loads(capsys.readouterr().out)
    dies = amd_host.fake_gpus
    assert [g["uuid"] for g in out["gpus"]] == [dies[0].uuid, dies[2].uuid]
    assert out["gpus"][0]["covers_indices"] == [1]
    rows = {row["uuid"]: row for row in out["devices"] if row["kind"] == "gpu"}
    assert rows[dies[0].uuid]["vendor"] == "AMD"
    assert rows[dies[0].uuid]["model"] == "AMD Instinct MI250X"
    assert rows[dies[0].uuid]["energy_method"] == "counter"
    assert rows[dies[1].uuid]["shares_with"] == dies[0].uuid
    assert rows[dies[1].uuid]["index"] == 1
    assert "reports 0" in rows[dies[1].uuid]["missing"]
    assert rows[dies[2].uuid]["missing"] is None
    (cpu,) = [row for row in out["devices"] if row["kind"] == "cpu"]
    assert cpu["energy_method"] == "missing"
    assert "chmod a+r /sys/class/powercap" in cpu["missing"]
    assert out["libraries"]["amdsmi"] is None and "pynvml" in out["libraries"]["nvml"]


def test_devices_table_shows_the_amd_gpus(amd_host, capsys):
    main(["devices"])
    out = capsys.readouterr().out
    assert "MI250X" in out and "MI300X" in out and "counter" in out


def test_survey_lists_a_skipped_gpu_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = FakeAmdGpu(uuid="dead", energy_supported=False, power_fields=())
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setitem(sys.modules, "amdsmi", make_fake_amdsmi([dead, *mi300x_host(1)]))
    rows = {row["uuid"]: row for row in survey("amd")["devices"] if row["kind"] == "gpu"}
    assert rows["dead"]["energy_method"] == "missing"
    assert "NOT_SUPPORTED" in rows["dead"]["missing"]


# --- through the tracker -------------------------------------------------------------------


def test_tracked_calls_on_an_amd_host_get_counter_energy(tmp_path, monkeypatch) -> None:
    """Before amdsmi support these records said energy_source=missing."""
    import sqlite3
    import time

    import footprint

    monkeypatch.setitem(sys.modules, "pynvml", None)
    gpus = mi250x_card(0) + mi300x_host(1)
    monkeypatch.setitem(sys.modules, "amdsmi", make_fake_amdsmi(gpus, now_s=time.monotonic))
    db = tmp_path / "amd.db"
    footprint.configure(
        db=str(db),
        sensor="auto",
        cpu=False,
        region="FRA",
        flush_interval_s=0.2,
        sampling_period_s=0.02,
    )

    @footprint.track(model="m", gpus=[2])
    def on_the_mi300x():
        time.sleep(0.01)

    for _ in range(30):
        on_the_mi300x()
    footprint.shutdown()
    con = sqlite3.connect(db)
    rows = con.execute("SELECT energy_source, gpus, energy_j FROM queries").fetchall()
    con.close()
    assert len(rows) == 30
    assert {(source, json.loads(on)[0]) for source, on, _ in rows} == {("counter", gpus[2].uuid)}
    assert sum(energy_j for _, _, energy_j in rows) > 0


def test_calls_on_the_second_die_of_an_mi250x_share_the_packages_counter(tmp_path, monkeypatch):
    """The driver reports the package's energy on die 0 and 0 on die 1: calls naming die 1
    (by index or UUID) are measured on die 0's counter, not left without energy."""
    import sqlite3
    import time

    import footprint

    monkeypatch.setitem(sys.modules, "pynvml", None)
    dies = mi250x_card(0)
    monkeypatch.setitem(sys.modules, "amdsmi", make_fake_amdsmi(dies, now_s=time.monotonic))
    db = tmp_path / "mi250x.db"
    footprint.configure(
        db=str(db),
        sensor="amd",
        cpu=False,
        region="FRA",
        flush_interval_s=0.2,
        sampling_period_s=0.02,
    )
    for gpus in ([1], [dies[1].uuid]):
        for _ in range(10):
            with footprint.query(model="m", gpus=gpus):
                time.sleep(0.01)
    footprint.shutdown()
    con = sqlite3.connect(db)
    rows = con.execute("SELECT energy_source, gpus FROM queries").fetchall()
    con.close()
    assert len(rows) == 20
    assert {source for source, _ in rows} <= {"counter", "estimated"}
    assert sum(source == "counter" for source, _ in rows) >= 18
    assert {json.loads(on)[0] for _, on in rows} == {dies[0].uuid}


# --- regions rows ---------------------------------------------------------------------------


def test_owned_mi300x_and_mi250x_have_a_cited_purchase_price() -> None:
    from footprint.pricing import gpu_capex_for

    for model, purchase_usd in (("AMD Instinct MI300X", 25733.71), ("AMD Instinct MI250X", 14500)):
        found = gpu_capex_for(model)
        assert found is not None, model
        per_hour, source = found
        assert per_hour == pytest.approx(purchase_usd / (5 * 8760))
        assert "epoch-research/training-cost-trends" in source
    assert gpu_capex_for("AMD Instinct MI300A") is None  # an APU, not priced as an MI300X
