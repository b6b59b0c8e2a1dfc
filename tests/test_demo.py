"""footprint demo: simulated time makes it deterministic; the committed example report in
reports/ is what ``footprint demo --seed 1`` produces, byte for byte."""

from __future__ import annotations

import json
import re
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest

from footprint.cli import main
from footprint.demo import (
    DEMO_EPOCH,
    DEMO_GPUS,
    GPU_IDLE_W,
    GPU_TDP_W,
    MODELS,
    plan_workload,
    run_demo,
)
from footprint.demo.costs import COSTS
from footprint.demo.scheduler import Scheduler
from footprint.demo.workload import Request

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "reports"
SVG = re.compile(r"<svg.*?</svg>", re.DOTALL)

# Published figures the demo's numbers must fall within.
#
# GPU energy per output token (J) of batched serving on H100s, over every batch size
# measured: The ML.ENERGY Benchmark v3.0 (vLLM 0.11.1), Llama 3.1 8B on 1 GPU (batch
# 16-768: 0.263 J at 16 down to 0.070 J at 512) and 70B on 4 GPUs (batch 16-1024: 2.091 J
# down to 0.373 J), figure "Energy per output token vs. batch size" of J.-W. Chung, "LLM
# Inference Energy: A Longitudinal Analysis", ML.ENERGY blog, 2026-02-09,
# https://ml.energy/blog/measurement/energy/llm-inference-energy-a-longitudinal-analysis
# (data: github.com/ml-energy/blog docs/posts/assets/llm-energy-over-time/
# llama-energy-per-token-light.svg). Its text: 8B at batch 64, 0.12 J (v3.0), 0.20 J (v2.0).
PUBLISHED_J_PER_OUTPUT_TOKEN = {"llama-3.1-8b": (0.070, 0.263), "llama-3.1-70b": (0.373, 2.091)}
# Hosted API prices, $ per 1M output tokens, Llama 3.1 Instruct, from pydantic/genai-prices
# prices/providers/*.yml at 47df840a5ab10bbcffb8e5ac01b9899032245d1b (2026-08-21).
# 8B: OpenRouter 0.03, Novita 0.05, nscale 0.06, Groq 0.08, Nebius 0.09, Avian and Cerebras
# 0.10, OVHcloud 0.11, Together 0.18, Fireworks and SambaNova 0.20, Amazon Bedrock 0.22.
# 70B: OpenRouter 0.28, Novita 0.39, Avian 0.45, Amazon Bedrock 0.72, Groq 0.79, Together 0.88.
HOSTED_USD_PER_1M_OUTPUT_TOKENS = {"llama-3.1-8b": (0.03, 0.22), "llama-3.1-70b": (0.28, 0.88)}


def _demo(tmp_path: Path, name: str, *args: str, capsys) -> tuple[dict, Path]:
    out = tmp_path / name
    main(["demo", "--db", str(tmp_path / f"{name}.db"), "--out", str(out), "--json", *args])
    return json.loads(capsys.readouterr().out), out


def test_same_seed_same_report_and_simulated_dates(tmp_path, capsys):
    first, out_a = _demo(tmp_path, "a", "--queries", "40", "--days", "2", capsys=capsys)
    _, out_b = _demo(tmp_path, "b", "--queries", "40", "--days", "2", capsys=capsys)
    assert first["queries"] == 40
    assert abs(first["conservation_error_j"]) < 1e-6 * first["measured_energy_j"]
    for name in (
        "footprint-report.json",
        "footprint-report.csv",
        "footprint-report.md",
        "footprint-report.html",
    ):
        assert (out_a / name).read_bytes() == (out_b / name).read_bytes(), name
    report = json.loads((out_a / "footprint-report.json").read_text())
    assert report["period"]["first_query"] >= DEMO_EPOCH.isoformat()
    assert report["period"]["last_query"] < "2026-03-04"
    assert report["totals"]["queries"] == 40
    other, _ = _demo(tmp_path, "c", "--queries", "40", "--days", "2", "--seed", "2", capsys=capsys)
    assert other["measured_energy_j"] != first["measured_energy_j"]


def test_demo_showcase_shape(tmp_path):
    summary = run_demo(str(tmp_path / "d.db"), queries=300, seed=4, days=3)
    con = sqlite3.connect(tmp_path / "d.db")
    try:
        gpus = dict(con.execute("SELECT model, gpus FROM queries GROUP BY model"))
        overlap = con.execute(
            "SELECT COUNT(*) FROM queries a JOIN queries b ON a.id < b.id "
            "AND a.started_at < b.ended_at AND b.started_at < a.ended_at"
        ).fetchone()[0]
        errors = con.execute("SELECT COUNT(*) FROM queries WHERE status = 'error'").fetchone()[0]
        ttft = con.execute(
            "SELECT COUNT(*) FROM queries WHERE time_to_first_token_s > 0"
        ).fetchone()[0]
    finally:
        con.close()
    assert set(summary["models"]) == {"llama-3.1-8b", "llama-3.1-70b"}
    assert (
        len(json.loads(gpus["llama-3.1-70b"])) == 4 and len(json.loads(gpus["llama-3.1-8b"])) == 1
    )
    assert overlap > 1000  # continuous batching: many requests share each GPU step
    assert ttft > 100 and errors >= 1
    assert summary["warm_windows"] > 1  # the GPUs are released between bursts
    assert abs(summary["conservation_error_j"]) < 1e-6 * summary["measured_energy_j"]


def test_demo_batches_change_membership_on_one_replica(tmp_path):
    """Requests join and leave a running batch: on one replica's GPU, the set of requests
    running changes many times while it is never empty."""
    run_demo(str(tmp_path / "b.db"), queries=300, seed=5, days=1)
    con = sqlite3.connect(tmp_path / "b.db")
    try:
        rows = con.execute(
            "SELECT started_at, ended_at FROM queries WHERE gpus = (SELECT gpus FROM queries "
            "WHERE model = 'llama-3.1-8b' GROUP BY gpus ORDER BY COUNT(*) DESC LIMIT 1)"
        ).fetchall()
    finally:
        con.close()
    edges = sorted([(a, 1) for a, _ in rows] + [(b, -1) for _, b in rows])
    running = peak = joins_while_busy = 0
    for _, change in edges:
        joins_while_busy += change == 1 and running > 0
        running += change
        peak = max(peak, running)
    assert peak >= 64  # a real batch, not one request at a time
    assert joins_while_busy > len(rows) // 2  # most join a batch already running


def test_demo_curves_reproduce_the_published_energy_per_token():
    """The transcribed ML.ENERGY points give the post's own figure: 8B at batch 64, 0.12 J."""
    llama_8b = next(m for m in MODELS if m.name == "llama-3.1-8b")
    assert llama_8b.power_w(64) / llama_8b.throughput(64) == pytest.approx(0.12, abs=0.005)
    for model in MODELS:
        low, high = PUBLISHED_J_PER_OUTPUT_TOKEN[model.name]
        for batch in (16, 64, model.max_num_seqs):
            assert low <= model.power_w(batch) / model.throughput(batch) <= high


@pytest.fixture(scope="module")
def serving(tmp_path_factory) -> dict:
    """``footprint demo --json`` with enough queries for a few bursts a day."""
    tmp = tmp_path_factory.mktemp("serving")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "footprint.cli",
            "demo",
            "--db",
            str(tmp / "s.db"),
            "--out",
            str(tmp / "out"),
            "--queries",
            "20000",
            "--seed",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_demo_energy_per_output_token_is_that_of_batched_serving(serving):
    assert set(serving["models"]) == set(PUBLISHED_J_PER_OUTPUT_TOKEN)
    for name, m in serving["models"].items():
        low, high = PUBLISHED_J_PER_OUTPUT_TOKEN[name]
        assert low <= m["j_per_output_token"] <= high, name
        assert m["mean_batch_size"] > 64, name
        # Held-but-idle GPUs make the fully loaded figure higher, never lower.
        assert m["j_per_output_token_fully_loaded"] > m["j_per_output_token"]


def test_demo_quotes_the_price_and_money_per_token_of_its_report(serving):
    """One price: the $/GPU-hour the demo states is the one its records carry (and its
    report uses), and its $ per 1M output tokens are the report's."""
    report = json.loads(Path(serving["report"]["dir"], "footprint-report.json").read_text())
    (factors,) = report["factors"]
    gpus = serving["gpus"]
    assert gpus["usd_per_gpu_hour"] == factors["usd_per_gpu_hour"]
    assert gpus["usd_per_gpu_hour_source"] == factors["sources"]["gpu_price_ref"]
    assert "p5.48xlarge" in gpus["usd_per_gpu_hour_source"]  # the zone's rented H100
    by_name = {m["model"]: m for m in report["models"]}
    for name, m in serving["models"].items():
        shown = by_name[name]
        per_1m = m["usd_per_1m_output_tokens"]
        # (the report divides cost × 1e6 by the tokens: the last bit may differ from this)
        busy, held = shown["cost_usd"], shown["fully_loaded_cost_usd"]
        assert per_1m["busy"] == pytest.approx(busy / shown["output_tokens"] * 1e6, rel=1e-12)
        assert per_1m["held"] == pytest.approx(held / shown["output_tokens"] * 1e6, rel=1e-12)
        assert per_1m["busy"] == pytest.approx(
            m["gpu_seconds"] / 3600 * gpus["usd_per_gpu_hour"] / m["output_tokens"] * 1e6
        )
        assert per_1m["held"] > per_1m["busy"]
        # An AWS on-demand H100 costs more per token than hosted APIs charge (models.py).
        assert per_1m["busy"] > HOSTED_USD_PER_1M_OUTPUT_TOKENS[name][1]


def test_demo_and_its_report_count_the_same_gpus(serving):
    report = json.loads(Path(serving["report"]["dir"], "footprint-report.json").read_text())
    gpus = serving["gpus"]
    assert gpus["gpus_measured"] == report["measurement"]["gpus"]
    assert gpus["gpus_measured"] == len(report["capacity"]["gpus"])
    assert gpus["peak_held"] <= gpus["pool"] <= gpus["gpus_measured"]


def test_demo_tags_each_burst_with_a_team(serving, tmp_path):
    """``--by tag:team``, as the report's help advertises, has the demo's teams as rows
    and no "(no team)" row."""
    out = tmp_path / "by-team"
    main(
        ["report", "--db", serving["db"], "--by", "tag:team", "--format", "json", "--out", str(out)]
    )
    report = json.loads((out / "footprint-report.json").read_text())
    teams = [g["tag:team"] for g in report["groups"]]
    assert teams == ["research", "search", "support"]  # no None: every query has a team
    assert sum(g["queries"] for g in report["groups"]) == serving["queries"]


def test_demo_holds_more_gpu_hours_than_it_keeps_busy(serving):
    gpus = serving["gpus"]
    assert gpus["held_gpu_hours"] > gpus["busy_gpu_hours"] > 0
    assert gpus["utilization"] == pytest.approx(gpus["busy_gpu_hours"] / gpus["held_gpu_hours"])
    assert gpus["peak_held"] <= gpus["pool"]
    for m in serving["models"].values():
        assert m["held_gpu_hours"] > m["busy_gpu_hours"] > 0
        assert m["busy_gpu_hours"] == pytest.approx(m["gpu_seconds"] / 3600)
    # Scaled from zero for each burst and released after it, and scaled up in some.
    assert sum(m["replica_windows"] for m in serving["models"].values()) > 7
    assert max(m["peak_replicas"] for m in serving["models"].values()) > 1
    assert abs(serving["conservation_error_j"]) < 1e-6 * serving["measured_energy_j"]


def test_demo_refuses_a_database_with_real_measurements(tmp_path, capsys):
    db = tmp_path / "real.db"
    run_demo(str(db), queries=5, seed=1, days=1)
    con = sqlite3.connect(db)
    con.execute("UPDATE queries SET tags = '{}' WHERE id = 1")
    con.commit()
    con.close()
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--db", str(db), "--out", str(tmp_path / "r"), "--queries", "5"])
    assert exited.value.code == 2
    assert "non-demo" in capsys.readouterr().err


def _mpl_version(html: str) -> str | None:
    found = re.search(r"Matplotlib v([0-9][^,\s<]*)", html)
    return found.group(1) if found else None


@pytest.mark.slow
def test_regenerated_example_report_equals_the_committed_one(tmp_path, capsys):
    """``footprint demo --seed 1`` again: the files in reports/ must come out the same."""
    _, out = _demo(tmp_path, "example", "--seed", "1", capsys=capsys)
    for name in ("footprint-report.json", "footprint-report.csv", "footprint-report.md"):
        assert (out / name).read_text() == (EXAMPLE / name).read_text(), name
    fresh = (out / "footprint-report.html").read_text()
    committed = (EXAMPLE / "footprint-report.html").read_text()
    same_plotter = _mpl_version(committed) == matplotlib.__version__
    if same_plotter:
        assert fresh == committed
    else:  # another matplotlib draws the same data slightly differently: compare the rest
        assert SVG.sub("<svg/>", fresh) == SVG.sub("<svg/>", committed)
    pngs = sorted(p.name for p in (EXAMPLE / "charts").glob("*.png"))
    assert pngs == sorted(p.name for p in (out / "charts").glob("*.png")) != []
    for name in pngs:
        new, old = (out / "charts" / name).read_bytes(), (EXAMPLE / "charts" / name).read_bytes()
        if same_plotter:
            assert new == old, name
        else:
            assert struct.unpack(">II", new[16:24]) == pytest.approx(
                struct.unpack(">II", old[16:24]), rel=0.05
            )
    assert sorted(p.name for p in EXAMPLE.iterdir()) == sorted(p.name for p in out.iterdir())


def test_demo_report_shows_per_million_input_and_output_tokens_beside_published_prices(serving):
    """Run with the default attribution (``auto``: the token rule once calls end with
    tokens), every model's requests are split at their first token: its report gives J,
    CO2e and $ per 1M input tokens (prefill) and per 1M output tokens (decode), Σ phase
    energy / Σ tokens of its database, beside the hosted APIs' list prices."""
    out = Path(serving["report"]["dir"])
    report = json.loads((out / "footprint-report.json").read_text())
    md = (out / "footprint-report.md").read_text()
    con = sqlite3.connect(serving["db"])
    try:
        sums = {
            row[0]: row[1:]
            for row in con.execute(
                "SELECT model, count(*), sum(prefill_energy_j), sum(decode_energy_j),"
                " sum(input_tokens), sum(output_tokens) FROM queries"
                " WHERE prefill_energy_j IS NOT NULL AND decode_energy_j IS NOT NULL"
                " AND input_tokens IS NOT NULL AND output_tokens IS NOT NULL GROUP BY model"
            )
        }
    finally:
        con.close()
    for entry in report["models"]:
        phase = entry["per_1m_phase_tokens"]
        assert entry["model"] in sums, "no request split: the rule gave no prefill/decode energy"
        n, prefill_j, decode_j, n_in, n_out = sums[entry["model"]]
        assert phase["queries"] == n > 0.9 * entry["queries"]
        assert phase["input"]["energy_j"] == pytest.approx(prefill_j / n_in * 1e6, rel=1e-9)
        assert phase["output"]["energy_j"] == pytest.approx(decode_j / n_out * 1e6, rel=1e-9)
        assert phase["input"]["cost_usd"] > 0 and phase["output"]["cost_usd"] > 0
        assert phase["input"]["co2e_g"] > 0 and phase["output"]["co2e_g"] > 0
        assert serving["models"][entry["model"]]["per_1m_phase_tokens"]["queries"] == n
    refs = {r["model"]: r for r in report["references"]}
    assert set(refs) == set(HOSTED_USD_PER_1M_OUTPUT_TOKENS)
    for name, (low, high) in HOSTED_USD_PER_1M_OUTPUT_TOKENS.items():
        assert (
            refs[name]["output_usd_per_1m"]["low"],
            refs[name]["output_usd_per_1m"]["high"],
        ) == (
            low,
            high,
        )
        assert f"| {name} | $" in md and f"${low:g}–${high:g}" in md
    assert "### Beside published figures" in md


def _replica_energy_j(replica) -> float:
    """What a replica's GPUs drew while it ran a batch (idle floor included): its steps'
    energy, from its power over idle and the idle floor over those times."""
    floor_w = replica.model.gpus_per_replica * GPU_IDLE_W
    ends = [*replica.power_steps[1:], (replica.end_s, 0.0)]
    energy_j = sum(w * (t1 - t0) for (t0, w), (t1, _) in zip(replica.power_steps, ends))
    sizes = [*replica.load_steps[1:], (replica.end_s, 0)]
    running_s = sum(t1 - t0 for (t0, n), (t1, _) in zip(replica.load_steps, sizes) if n)
    return energy_j + floor_w * running_s


def _serve_one_replica(late_prompt_tokens: int) -> tuple[Request, object]:
    """32 requests decoding on one 8B replica, and one more arriving once they decode."""
    model = next(m for m in MODELS if m.name == "llama-3.1-8b")
    requests = [Request(i, model, 0.0, 16, 2000, False) for i in range(32)]
    late = Request(32, model, model.cold_start_s + 5.0, late_prompt_tokens, 500, False)
    (replica,) = Scheduler(DEMO_GPUS).run([*requests, late])
    return late, replica


def test_a_replica_prefilling_a_long_prompt_draws_what_the_cost_model_says():
    """The same batch with a 1,000-token prompt to prefill draws more than with a
    16-token one, and the replica's energy differs by the cost model's prefill of the
    984 more prompt tokens (a per token) and their context read at each decode step."""
    long, with_long = _serve_one_replica(1000)
    short, with_short = _serve_one_replica(16)
    costs = COSTS["llama-3.1-8b"]

    def prefill_step_w(replica, request) -> float:  # the step its first token came out of
        return next(w for t, w in reversed(replica.power_steps) if t < request.first_s)

    assert long.admit_s == short.admit_s and long.first_s > short.first_s
    prefill_w, decode_w = prefill_step_w(with_long, long), prefill_step_w(with_short, short)
    assert prefill_w > 1.1 * decode_w  # while it prefills, not averaged away by the batch
    extra = 1000 - 16
    expected_j = extra * (
        costs.prefill_j_per_token + costs.seq_j_per_context_token * (long.output_tokens - 1)
    )
    got_j = _replica_energy_j(with_long) - _replica_energy_j(with_short)
    assert got_j == pytest.approx(expected_j, rel=1e-6)


def test_replicas_draw_within_idle_and_cap_and_as_ml_energy_measured_on_average():
    """Over a day of the demo's traffic every step draws between idle and the power cap,
    and each model's replicas draw, on average while running, the power (and energy per
    output token) that ML.ENERGY measured at the same batch sizes: within the 5 % to which
    the cost model reproduces those measurements (test_bench_batching)."""
    requests = plan_workload(2000, 3, 1)
    replicas = Scheduler(DEMO_GPUS).run(requests)
    for model in MODELS:
        mine = [r for r in replicas if r.model is model]
        cap_w = model.gpus_per_replica * (GPU_TDP_W - GPU_IDLE_W)
        assert all(0.0 <= w <= cap_w * (1 + 1e-12) for r in mine for _, w in r.power_steps)
        measured_j = sum(
            model.power_w(n) * (t1 - t0)
            for r in mine
            for (t0, n), (t1, _) in zip(r.load_steps, [*r.load_steps[1:], (r.end_s, 0)])
            if n
        )
        simulated_j = sum(_replica_energy_j(r) for r in mine)
        assert simulated_j == pytest.approx(measured_j, rel=0.05), model.name
        # and the prefill part is what the cost model charges, not folded into the batch
        prompts_j = COSTS[model.name].prefill_j_per_token * sum(
            q.input_tokens for q in requests if q.model is model
        )
        assert 0.03 * simulated_j < prompts_j < 0.2 * simulated_j
