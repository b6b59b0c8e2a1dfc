"""The accuracy a report quotes comes from the benchmark's file, never from typed prose.

``published_accuracy()`` reads ``footprint/bench/accuracy.json`` only when it was written
for this version and this attribution code (``source_digest``); the methodology of the
HTML and Markdown reports shows its figures, or says that none has been recorded.
These tests write their own file and point the loader at it: the real one is generated
by ``footprint bench accuracy --write``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

import footprint
from footprint.bench.ingest import make_records
from footprint.reporting import ReportRequest, accuracy, build_report
from footprint.reporting.render import fmt, methodology, write_report
from footprint.storage.store import Store

FIXTURE: dict[str, Any] = {
    "benchmark": "accuracy",
    "simulator": {"idle_w": 60, "busy_w": 400, "update_period_s": 0.1, "sampling_period_s": 0.05},
    "scenarios": [
        {
            "name": "short-sequential",
            "description": "sequential 1–20 ms calls with 5–50 ms gaps",
            "queries": 300,
            "total_error_pct": 0.31,
            "per_query_error_pct": {"p50": 1.27, "p95": 4.06, "max": 9.13},
            "long_queries": 0,
            "long_query_error_pct": None,
            "within_bound_pct": 100.0,
        },
        {
            "name": "long-batched",
            "description": "eight concurrent 1–5 s calls",
            "queries": 120,
            "total_error_pct": 0.0472,
            "per_query_error_pct": {"p50": 0.213, "p95": 0.634, "max": 0.871},
            "long_queries": 117,
            "long_query_error_pct": {"p50": 0.208, "p95": 0.611, "max": 0.852},
            "within_bound_pct": 99.2,
        },
    ],
    "not_covered": "Power transients shorter than a counter update on real boards.",
}
# Every figure of the fixture as the report shows it (three significant digits).
SHOWN = [
    "0.31%",
    "1.27%",
    "4.06%",
    "9.13%",
    "0.0472%",
    "0.213%",
    "0.634%",
    "0.871%",
    "0.852%",
    "99.2%",
]


def fixture_data(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(FIXTURE)
    data["version"] = footprint.__version__
    data["source_digest"] = accuracy.source_digest()
    data.update(changes)
    return data


def write_accuracy_file(path: Path, **changes: Any) -> Path:
    """A benchmark file for this version and code (or with ``changes``)."""
    path.write_text(json.dumps(fixture_data(**changes), indent=1), encoding="utf-8")
    return path


# --- the loader ----------------------------------------------------------------------------


def test_source_digest_is_the_sha256_of_the_attribution_code_in_order():
    package = Path(footprint.__file__).resolve().parent
    joined = b"".join(
        (package / name).read_bytes()
        for name in (
            "attribution/__init__.py",
            "attribution/energy.py",
            "attribution/idle.py",
            "attribution/resolver.py",
            "attribution/shares.py",
            "sampling/__init__.py",
            "sampling/sampler.py",
            "sampling/ticks.py",
            "sampling/timeline.py",
            "sensors/simulated/__init__.py",
            "sensors/simulated/gpu.py",
            "sensors/simulated/loads.py",
            "sensors/simulated/sensor.py",
            "sensors/simulated/spec.py",
            "sensors/nvml.py",
            "runtime/local.py",
            "runtime/spans.py",
            "runtime/devices.py",
            "runtime/idle.py",
            "runtime/measuring.py",
            "runtime/pending.py",
            "runtime/records.py",
            "runtime/settling.py",
            "runtime/simload.py",
            "runtime/worker.py",
        )
    )
    assert accuracy.source_digest() == hashlib.sha256(joined).hexdigest()


def test_the_file_is_read_from_the_installed_package():
    package = Path(footprint.__file__).resolve().parent
    assert accuracy.accuracy_path().resolve() == package / "bench" / "accuracy.json"


def test_a_current_file_is_published(tmp_path, monkeypatch):
    path = write_accuracy_file(tmp_path / "accuracy.json")
    assert accuracy.published_accuracy(path) == fixture_data()
    monkeypatch.setattr(accuracy, "ACCURACY_FILE", path)
    assert accuracy.published_accuracy() == fixture_data()


@pytest.mark.parametrize(
    "text",
    [
        None,  # no file
        "{not json",
        json.dumps([1, 2]),
        "stale-version",
        "stale-digest",
        "no-digest",
        "no-scenarios",
        "text-figure",
        "negative-figure",
        "no-not-covered",
    ],
)
def test_a_missing_stale_or_malformed_file_is_not_published(tmp_path, text):
    path = tmp_path / "accuracy.json"
    data = fixture_data()
    changed = {
        "stale-version": lambda d: d.update(version="0.0.1"),
        "stale-digest": lambda d: d.update(source_digest="0" * 64),
        "no-digest": lambda d: d.pop("source_digest"),
        "no-scenarios": lambda d: d.update(scenarios=[]),
        "text-figure": lambda d: d["scenarios"][0].update(total_error_pct="0.3"),
        "negative-figure": lambda d: d["scenarios"][1]["per_query_error_pct"].update(max=-1),
        "no-not-covered": lambda d: d.pop("not_covered"),
    }
    if text in changed:
        changed[text](data)
        text = json.dumps(data)
    if text is not None:
        path.write_text(text, encoding="utf-8")
    assert accuracy.published_accuracy(path) is None


def test_unreadable_attribution_code_publishes_nothing(tmp_path, monkeypatch):
    path = write_accuracy_file(tmp_path / "accuracy.json")
    monkeypatch.setattr(accuracy, "DIGEST_FILES", ("no_such_module.py",))
    assert accuracy.published_accuracy(path) is None


# --- the methodology -----------------------------------------------------------------------


@pytest.fixture
def small_db(tmp_path) -> str:
    db = str(tmp_path / "small.db")
    records = make_records(40, seed=3)
    for r in records:
        r["energy_uncertainty_j"] = r["energy_j"] * 0.01
    store = Store(db)
    store.insert(records)
    store.close()
    return db


def _write(db: str, out: Path, accuracy_file: Path | None, monkeypatch) -> dict[str, str]:
    monkeypatch.setattr(accuracy, "ACCURACY_FILE", accuracy_file or out / "absent.json")
    report = build_report(ReportRequest(db=db))
    write_report(report, out, ["html", "md", "json"], footprint.__version__)
    return {
        "json": (out / "footprint-report.json").read_text(encoding="utf-8"),
        "html": (out / "footprint-report.html").read_text(encoding="utf-8"),
        "md": (out / "footprint-report.md").read_text(encoding="utf-8"),
    }


def _uncertainty_section(text: str, kind: str) -> str:
    """The "Measurement uncertainty" part of the methodology, tags removed."""
    if kind == "md":
        return text.split("### Measurement uncertainty", 1)[1].split("\n## ", 1)[0]
    part = text.split("<h3>Measurement uncertainty</h3>", 1)[1].split("</section>", 1)[0]
    return re.sub(r"<[^>]+>", " ", part)


def test_methodology_quotes_the_benchmark_figures(small_db, tmp_path, monkeypatch):
    path = write_accuracy_file(tmp_path / "accuracy.json")
    files = _write(small_db, tmp_path / "out", path, monkeypatch)
    assert json.loads(files["json"])["measurement"]["accuracy"] == fixture_data()
    for kind in ("html", "md"):
        section = _uncertainty_section(files[kind], kind)
        for shown in SHOWN:
            assert shown in section, (kind, shown)
        for text in (
            "60 W idle",
            "400 W busy",
            "updated every 100 ms",
            "sampled every 50 ms",
            FIXTURE["not_covered"],
            "sequential 1–20 ms calls with 5–50 ms gaps",
            "short-sequential",
            "long-batched",
            "energy_uncertainty_j",
        ):
            assert text in section, (kind, text)
        assert "No accuracy benchmark" not in section
        assert "±5%" in section  # NVML's documented accuracy stays
    md = _uncertainty_section(files["md"], "md")
    assert "| short-sequential | 300 | 0.31% | 1.27% | 4.06% | 9.13% | 0 | – | 100% |" in md
    assert (
        "| long-batched | 120 | 0.0472% | 0.213% | 0.634% | 0.871% | 117 | 0.852% | 99.2% |" in md
    )
    # In the HTML each figure carries its JSON path.
    assert (
        '<span data-key="measurement.accuracy.scenarios.1.long_query_error_pct.max" '
        'data-kind="pct" data-value="0.852">0.852%</span>'
    ) in files["html"]


@pytest.mark.parametrize(
    "changes", [{"version": "0.0.1"}, {"source_digest": "0" * 64}, None], ids=str
)
def test_methodology_without_a_current_benchmark_quotes_no_figure(
    small_db, tmp_path, monkeypatch, changes
):
    path = None if changes is None else write_accuracy_file(tmp_path / "acc.json", **changes)
    files = _write(small_db, tmp_path / "out", path, monkeypatch)
    assert json.loads(files["json"])["measurement"]["accuracy"] is None
    for kind in ("html", "md"):
        section = _uncertainty_section(files[kind], kind)
        assert (
            f"No accuracy benchmark has been recorded for this version of footprint "
            f"({footprint.__version__})" in section
        ), kind
        for shown in SHOWN:
            assert shown not in section, (kind, shown)
        # The only percentage left is NVML's documented ±5%: no typed accuracy claim.
        assert re.findall(r"[\d.]+\s*%", section) == ["5%"], kind
        assert "energy_uncertainty_j" in section


def test_methodology_is_built_from_the_report_alone():
    """Rendering an old JSON report (no accuracy key) says nothing is recorded."""
    report = {
        "measurement": {"energy_sources": {"counter": 3}, "measured_queries": 3},
        "totals": {},
    }
    sections = dict(methodology(report))
    text = " ".join(p for p in sections["Measurement uncertainty"] if isinstance(p, str))
    assert "No accuracy benchmark has been recorded" in text
    assert "0 of the 3 queries" in text
    assert fmt(0.31, "pct") == "0.31%" and fmt(None, "pct") == "–"


def test_extra_keys_and_figures_a_scenario_lacks_are_shown_as_such(tmp_path):
    empty = {
        "name": "idle-only",
        "description": "no call at all",
        "queries": 0,
        "total_error_pct": None,
        "total_signed_error_pct": None,
        "per_query_error_pct": None,
        "long_queries": 0,
        "long_query_error_pct": None,
        "within_bound_pct": None,
    }
    data = fixture_data(scale=0.5, targets={"total_error_pct": 1.0})
    data["scenarios"][0]["total_signed_error_pct"] = -0.31
    data["scenarios"].append(empty)
    path = tmp_path / "accuracy.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    published = accuracy.published_accuracy(path)
    assert published == data
    report = {
        "measurement": {"energy_sources": {}, "measured_queries": 0, "accuracy": published},
    }
    section = dict(methodology(report))["Measurement uncertainty"]
    text = " ".join(p for p in section if isinstance(p, str))
    assert "scenarios run at 0.5× their full length" in text
    table = next(p for p in section if not isinstance(p, str))
    assert table.rows[-1] == [
        "idle-only",
        ("measurement.accuracy.scenarios.2.queries", "count"),
        "–",
        "–",
        "–",
        "–",
        ("measurement.accuracy.scenarios.2.long_queries", "count"),
        "–",
        "–",
    ]
