"""The daemon's metrics people query (issue 21): tokens per model and GPU, energy per
single GPU (a multi-GPU query split among its GPUs), no cost sample where the price is
unknown, and ``/healthz`` degraded when the daemon measures no GPU.

The exposition text is read with prometheus_client's own parser, as Prometheus reads it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_daemon_server import (
    SENSOR,
    Client,
    batch,
    end,
    http_get,
    metrics_text,
    records_of,
    spawn,
    wait_for,
)

from footprint.daemon.metrics import (
    DaemonCollector,
    PowerTracker,
    RecordTotals,
    record_cost_usd,
    registry,
    render,
)

UUIDS = ["GPU-aaaa", "GPU-bbbb"]


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Each sample name's (labels, value) pairs, as Prometheus parses them."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def fake_collector(totals: RecordTotals, gpus: int = 2) -> DaemonCollector:
    devices = [SimpleNamespace(index=i, uuid=UUIDS[i], name="H100") for i in range(gpus)]
    runtime = SimpleNamespace(
        gpu_devices=devices,
        gpu_sampler=SimpleNamespace(latest_sample_times_s=lambda: [time.monotonic()] * gpus),
        inflight={},
        ended=[],
        writer=SimpleNamespace(buffered=0),
        stats=lambda: dict.fromkeys(
            (
                "dropped_spans",
                "abandoned_spans",
                "running_at_exit",
                "unsaved_records",
                "rejected_records",
                "records_written",
            ),
            0,
        ),
    )
    intake = SimpleNamespace(
        connections={}, lost={}, protocol_errors={}, received={}, oddities={}, abandoned_clients=0
    )
    return DaemonCollector(runtime, intake, totals, PowerTracker(gpus), time.monotonic())  # type: ignore[arg-type]


def exposition(records: list[dict], gpus: int = 2) -> dict[str, list]:
    totals = RecordTotals({UUIDS[i]: str(i) for i in range(gpus)})
    totals.observe(records, [])
    return samples(render(registry(fake_collector(totals, gpus))).decode())


def record(model: str, gpus: list[str], **extra) -> dict:
    base = {
        "model": model,
        "status": "ok",
        "gpus": json.dumps(gpus),
        "energy_j": 10.0,
        "input_tokens": 4,
        "output_tokens": 8,
        "co2e_g": 0.5,
        "ownership": "owned",
        "compute_cost": 0.25,
        "energy_cost_usd": 0.5,
    }
    return {**base, **extra}


def test_a_multi_gpu_query_is_split_among_its_gpus():
    found = exposition([record("m", UUIDS), record("m", UUIDS[:1])])
    energy = {s[0]["gpu"]: s[1] for s in found["footprint_energy_joules_total"]}
    assert energy == {"0": 15.0, "1": 5.0}  # 10 J on both GPUs: 5 each; 10 J on GPU 0
    for name in ("footprint_input_tokens_total", "footprint_output_tokens_total"):
        assert {s[0]["gpu"] for s in found[name]} == {"0", "1"}, name
    info = {s[0]["gpu"]: s[0]["uuid"] for s in found["footprint_gpu_info"]}
    assert info == {"0": UUIDS[0], "1": UUIDS[1]}


def test_token_counters_per_model_and_gpu():
    found = exposition(
        [
            record("a", UUIDS[:1], input_tokens=12, output_tokens=80),
            record("a", UUIDS[:1], input_tokens=3, output_tokens=None),  # unknown: adds nothing
            record("b", UUIDS, input_tokens=10, output_tokens=6),
        ]
    )

    def tokens(name: str) -> dict[tuple[str, str], float]:
        return {(s[0]["model"], s[0]["gpu"]): s[1] for s in found[name]}

    assert tokens("footprint_input_tokens_total") == {
        ("a", "0"): 15.0,
        ("b", "0"): 5.0,
        ("b", "1"): 5.0,
    }
    assert tokens("footprint_output_tokens_total") == {
        ("a", "0"): 80.0,
        ("b", "0"): 3.0,
        ("b", "1"): 3.0,
    }


def test_no_cost_sample_where_the_price_is_unknown():
    unknown = {"compute_cost": None, "energy_cost_usd": None}
    found = exposition(
        [
            record("priced", UUIDS[:1]),
            record("priced", UUIDS[:1], **unknown),  # adds nothing
            record("unpriced", UUIDS[:1], **unknown),
            record("unmeasured", UUIDS[:1], energy_j=None, co2e_g=None, **unknown),
            record("rented-no-gpu-price", UUIDS[:1], ownership="rented", compute_cost=None),
            record("free", UUIDS[:1], compute_cost=0.0, energy_cost_usd=0.0),
        ]
    )
    cost = {s[0]["model"]: s[1] for s in found["footprint_cost_usd_total"]}
    assert cost == {"priced": 0.75, "free": 0.0}
    queries = {s[0]["model"] for s in found["footprint_queries_total"]}
    assert {"unpriced", "unmeasured", "rented-no-gpu-price"} <= queries


def test_record_cost_usd():
    assert record_cost_usd({"compute_cost": 1.0, "energy_cost_usd": 2.0}) == 3.0
    assert (
        record_cost_usd({"compute_cost": 1.0, "energy_cost_usd": 2.0, "ownership": "rented"}) == 1.0
    )
    assert record_cost_usd({"compute_cost": None, "energy_cost_usd": 2.0}) == 2.0
    assert record_cost_usd({"compute_cost": None, "energy_cost_usd": None}) is None
    assert record_cost_usd({"energy_cost_usd": 2.0, "ownership": "rented"}) is None


# -- daemons ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder():
    path = Path(tempfile.mkdtemp(prefix="fpm-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_daemon_on_two_gpus_counts_each_gpu_apart(folder):
    daemon = spawn(folder, "--sensor", SENSOR.replace("gpus=1", "gpus=2"), name="two")
    try:
        client = Client(daemon.sock)
        t = time.monotonic()
        client.send(batch(96001, starts=[{"id": 1, "start_s": t, "gpus": [0, 1]}]))
        time.sleep(0.4)
        span = end(
            1, t, time.monotonic(), "two-gpus", gpus=[0, 1], input_tokens=6, output_tokens=10
        )
        client.send(batch(96001, ends=[span]))
        assert wait_for(lambda: records_of(daemon.db, "two-gpus"))
        stored_j = records_of(daemon.db, "two-gpus")[0][6]
        found = wait_for(
            lambda: (
                (s := samples(metrics_text(daemon)))
                and any(x[0]["model"] == "two-gpus" for x in s["footprint_energy_joules_total"])
                and s
            )
        )
        client.close()
        assert wait_for(lambda: http_get(daemon.url("/readyz"))[0] == 200)  # GPUs measured
    finally:
        daemon.stop()
    energy = {
        x[0]["gpu"]: x[1]
        for x in found["footprint_energy_joules_total"]
        if x[0]["model"] == "two-gpus"
    }
    assert set(energy) == {"0", "1"}
    assert energy["0"] == pytest.approx(energy["1"])
    assert sum(energy.values()) == pytest.approx(stored_j)
    tokens = {
        x[0]["gpu"]: x[1]
        for x in found["footprint_output_tokens_total"]
        if x[0]["model"] == "two-gpus"
    }
    assert tokens == {"0": 5.0, "1": 5.0}
    assert {x[0]["gpu"] for x in found["footprint_gpu_info"]} == {"0", "1"}


def test_healthz_is_degraded_when_no_gpu_is_measured(folder):
    daemon = spawn(folder, "--sensor", "none", name="nogpu")
    try:
        status, body = http_get(daemon.url("/healthz"))
        ready_status, ready_body = http_get(daemon.url("/readyz"))
    finally:
        daemon.stop()
    assert status == 200  # liveness: up and answering
    assert ready_status == 503 and json.loads(ready_body)["reasons"] == ["no_gpu"]  # not ready
    health = json.loads(body)
    assert health["status"] == "degraded" and health["reasons"] == ["no_gpu"], health
    assert health["message"] == "no GPU measured: GPU measurement disabled (sensor=none)"
    assert health["gpus"] == 0
