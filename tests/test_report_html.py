"""The HTML report for real: it parses, is self-contained, every figure it shows equals the
JSON report's, the Markdown and CSV carry the same rows, and headless Chromium renders it."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sqlite3
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_report_accuracy import write_accuracy_file

from footprint.bench.report import build_db
from footprint.cli import main
from footprint.reporting import accuracy
from footprint.reporting.render import fmt, lookup
from footprint.storage import rollups
from footprint.storage.engine import open_engine

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "reports"
VOID = {"meta", "link", "br", "img", "input", "hr", "col", "source", "wbr", "area", "base"}


class Checker(HTMLParser):
    """Collects tag balance problems, external references and the data-key figures."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.external: list[str] = []
        self.figures: list[dict] = []
        self._figure: dict | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        found = dict(attrs)
        for name in ("src", "href", "xlink:href"):
            value = found.get(name) or ""
            if value and not value.startswith("#"):
                self.external.append(f"{tag} {name}={value}")
        if tag in ("script", "iframe", "object", "embed"):
            self.external.append(tag)
        if tag == "link":
            self.external.append(f"link {found}")
        if "data-key" in found:
            self._figure = {**found, "text": ""}
            self.figures.append(self._figure)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        if self._figure is not None and tag in ("span", "div", "td"):
            self._figure = None

    def handle_data(self, data):
        if self._figure is not None:
            self._figure["text"] += data
        self.text.append(data)


SCALES = {
    "µWh": 1e-9,
    "mWh": 1e-6,
    "Wh": 1e-3,
    "kWh": 1.0,
    "MWh": 1e3,
    "µg": 1e-6,
    "mg": 1e-3,
    "g": 1.0,
    "kg": 1e3,
    "t": 1e6,
}
SECONDS = {"ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}


def parse_shown(text: str, kind: str) -> float | None:
    """The number a reader sees, back in the JSON's unit (kWh, g, USD, count)."""
    text = text.strip()
    if text == "–":
        return None
    if kind == "money":
        return float(text.replace("$", "").replace(",", ""))
    if kind == "pct":  # a value already in percent
        return float(text.removesuffix("%").replace(",", ""))
    if kind == "percent":  # a fraction shown in percent
        return float(text.removesuffix("%").replace(",", "")) / 100
    if kind in ("count", "number"):
        return float(text.replace(",", ""))
    if kind == "gpu_hours":
        return float(text.replace(",", "")) * 3600.0
    number, unit = text.rsplit(" ", 1)
    if kind == "duration":
        return float(number.replace(",", "")) * SECONDS[unit]
    value = float(number.replace(",", "")) * SCALES[unit]
    return value * 1000 if kind == "wh" else value


def check_html(html_path: Path, report: dict) -> Checker:
    checker = Checker()
    checker.feed(html_path.read_text(encoding="utf-8"))
    checker.close()
    assert checker.problems == []
    assert checker.stack == []
    assert checker.external == [], "the report must not load anything from outside"
    assert len(checker.figures) > 50
    for figure in checker.figures:
        value = lookup(report, figure["data-key"])
        kind = figure["data-kind"]
        assert figure["data-value"] == ("" if value is None else repr(value)), figure
        assert figure["text"] == fmt(value, kind), figure
        shown = parse_shown(figure["text"], kind)
        if value is None:
            assert shown is None
        elif kind == "count":
            assert shown == value
        else:  # three significant digits (cents for dollars) on the page
            assert shown == pytest.approx(value, rel=6e-3, abs=6e-3 if kind == "money" else 0)
    return checker


@pytest.fixture(scope="module")
def fresh_report(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("html")
    db = folder / "bench.db"
    build_db(db, 2000, seed=9)
    con = sqlite3.connect(db)  # every record with an uncertainty bound, whatever the bench
    con.execute(
        "UPDATE queries SET energy_uncertainty_j = energy_j * 0.004 + 0.05 "
        "WHERE energy_uncertainty_j IS NULL AND energy_j IS NOT NULL"
    )
    con.commit()
    con.close()
    engine = open_engine(str(db), create=False)
    rollups.rebuild(engine)
    engine.dispose()
    accuracy_file = folder / "accuracy.json"
    write_accuracy_file(accuracy_file)
    out = folder / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(accuracy, "ACCURACY_FILE", accuracy_file)
        main(["report", "--db", str(db), "--out", str(out), "--by", "region", "--compare", "FRA"])
    return out


def _load(folder: Path) -> dict:
    return json.loads((folder / "footprint-report.json").read_text(encoding="utf-8"))


def test_every_figure_in_the_html_equals_the_json(fresh_report):
    report = _load(fresh_report)
    checker = check_html(fresh_report / "footprint-report.html", report)
    keys = {f["data-key"] for f in checker.figures}
    # The summary cards and the model table's footer are the JSON totals.
    for key in (
        "totals.queries",
        "totals.energy_kwh",
        "totals.co2e_g",
        "totals.cost_usd",
        "totals.fully_loaded_energy_kwh",
        "totals.sci.per_1k_output_tokens_g",
    ):
        assert key in keys
    assert {f"models.{i}.co2e_g" for i in range(len(report["models"]))} <= keys
    assert "groups.0.queries" in keys  # --by region table
    # The ± bounds: summary card, every model, the totals row and the groups.
    assert report["totals"]["energy_uncertainty_kwh"] > 0
    assert {f"models.{i}.energy_uncertainty_kwh" for i in range(len(report["models"]))} <= keys
    assert {"totals.energy_uncertainty_kwh", "groups.0.energy_uncertainty_kwh"} <= keys
    # The measured accuracy quoted in the methodology, figure by figure.
    scenarios = report["measurement"]["accuracy"]["scenarios"]
    for i in range(len(scenarios)):
        for name in (
            "total_error_pct",
            "per_query_error_pct.p50",
            "per_query_error_pct.p95",
            "per_query_error_pct.max",
            "within_bound_pct",
        ):
            assert f"measurement.accuracy.scenarios.{i}.{name}" in keys
    assert "measurement.accuracy.scenarios.1.long_query_error_pct.max" in keys
    assert report["what_if"]["zones"][-1]["zone"] == "FRA"
    assert "<svg" in (fresh_report / "footprint-report.html").read_text()


def test_example_report_html_matches_its_json():
    check_html(EXAMPLE / "footprint-report.html", _load(EXAMPLE))


def test_markdown_and_csv_carry_the_same_rows(fresh_report):
    report = _load(fresh_report)
    md = (fresh_report / "footprint-report.md").read_text(encoding="utf-8")
    for model in report["models"]:
        line = next(li for li in md.splitlines() if li.startswith(f"| {model['model']} |"))
        assert fmt(model["co2e_g"], "mass") in line
        energy = fmt(model["energy_kwh"], "energy")
        assert f"| {energy} | ± {fmt(model['energy_uncertainty_kwh'], 'energy')} |" in line
    t = report["totals"]
    card = f"| {fmt(t['energy_kwh'], 'energy')} ± {fmt(t['energy_uncertainty_kwh'], 'energy')} |"
    assert card in md
    for target in re.findall(r"\]\((charts/[^)]+\.png)\)", md):
        png = (fresh_report / target).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png[16:24])
        assert width > 600 and height > 200
    with open(fresh_report / "footprint-report.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    *rows, total = rows
    assert total["row"] == "total" and float(total["co2e_g"]) == report["totals"]["co2e_g"]
    assert [r["zone"] for r in rows] == [g["zone"] for g in report["groups"]]
    assert float(rows[0]["co2e_g"]) == report["groups"][0]["co2e_g"]
    names = list(rows[0])
    assert names[names.index("energy_kwh") + 1] == "energy_uncertainty_kwh"
    for row, group in zip(rows, report["groups"]):
        assert float(row["energy_uncertainty_kwh"]) == group["energy_uncertainty_kwh"]


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.skipif(
    _browser() is None, reason="no headless browser (Debian's chromium package) installed"
)
def test_chromium_renders_the_example_report(tmp_path):
    browser = _browser()
    page = (EXAMPLE / "footprint-report.html").resolve().as_uri()
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    shot = tmp_path / "report.png"
    done = subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1280,2400", page],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1280, 2400)
    assert len(png) > 100_000  # a rendered page with charts, not a blank one
    dom = subprocess.run(
        [*flags, "--dump-dom", page], capture_output=True, text=True, timeout=180, check=False
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    report = _load(EXAMPLE)
    assert "AI inference footprint" in dom.stdout
    assert fmt(report["totals"]["co2e_g"], "mass") in dom.stdout
    assert dom.stdout.count("<svg") >= 3
