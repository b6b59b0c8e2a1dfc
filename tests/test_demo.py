"""footprint demo: simulated time makes it deterministic; the committed example report in
reports/ is what ``footprint demo --seed 1`` produces, byte for byte."""

from __future__ import annotations

import json
import re
import sqlite3
import struct
from pathlib import Path

import matplotlib
import pytest

from footprint.cli import main
from footprint.demo import DEMO_EPOCH, run_demo

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "reports"
SVG = re.compile(r"<svg.*?</svg>", re.DOTALL)


def _demo(tmp_path: Path, name: str, *args: str, capsys) -> tuple[dict, Path]:
    out = tmp_path / name
    main(["demo", "--db", str(tmp_path / f"{name}.db"), "--out", str(out), "--json", *args])
    return json.loads(capsys.readouterr().out), out


def test_same_seed_same_report_and_simulated_dates(tmp_path, capsys):
    first, out_a = _demo(tmp_path, "a", "--queries", "40", "--days", "2", capsys=capsys)
    _, out_b = _demo(tmp_path, "b", "--queries", "40", "--days", "2", capsys=capsys)
    assert first["queries"] == 40
    assert abs(first["conservation_error_j"]) < 1e-6 * first["measured_energy_j"]
    for name in ("footprint-report.json", "footprint-report.csv", "footprint-report.md",
                 "footprint-report.html"):  # fmt: skip
        assert (out_a / name).read_bytes() == (out_b / name).read_bytes(), name
    report = json.loads((out_a / "footprint-report.json").read_text())
    assert report["period"]["first_query"] >= DEMO_EPOCH.isoformat()
    assert report["period"]["last_query"] < "2026-03-04"
    assert report["totals"]["queries"] == 40
    other, _ = _demo(tmp_path, "c", "--queries", "40", "--days", "2", "--seed", "2",
                     capsys=capsys)  # fmt: skip
    assert other["measured_energy_j"] != first["measured_energy_j"]


def test_demo_showcase_shape(tmp_path):
    summary = run_demo(str(tmp_path / "d.db"), queries=150, seed=4, days=3)
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
    assert set(summary["models"]) == {"llama-3-8b", "mixtral-8x7b", "whisper-large-v3"}
    assert len(json.loads(gpus["mixtral-8x7b"])) == 2 and len(json.loads(gpus["llama-3-8b"])) == 1
    assert overlap > 10  # concurrent queries share the GPUs
    assert ttft > 100 and errors >= 1
    assert summary["warm_windows"] > 1  # the GPUs are released between bursts
    assert abs(summary["conservation_error_j"]) < 1e-6 * summary["measured_energy_j"]


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
