"""The Grafana dashboard and the Prometheus rules in docs/ (docs/grafana.md).

- ``promtool check rules`` passes on the rules files, and ``promtool test rules`` on their
  unit tests (the budget, loss and daemon alerts fire when they should, and only then);
- every PromQL expression of the dashboard (targets and ``label_values`` selectors), its
  Grafana variables replaced by values, is valid: promtool checks them as recording rules;
- every metric the dashboard and the rules name is one a real daemon exports: a daemon on a
  simulated GPU gets a few calls, its ``/metrics`` is scraped and compared, and
  ``promtool check metrics`` passes on that scrape;
- a real Prometheus scraping a daemon, with the rules loaded, returns series for every
  panel's query and fires the budget alerts.

promtool and prometheus are Debian's ``prometheus`` package. Without them these checks are
skipped, unless ``FOOTPRINT_REQUIRE_PROMTOOL`` is set (CI sets it), when they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_daemon_metrics import fake_collector, samples
from test_daemon_server import (
    Client,
    batch,
    end,
    http_get,
    metrics_text,
    records_of,
    spawn,
    wait_for,
)

from footprint.daemon.metrics import HEALTH_REASONS, RecordTotals, registry, render

DOCS = Path(__file__).resolve().parent.parent / "docs"
DASHBOARD = DOCS / "grafana" / "footprint-dashboard.json"
GRAFANA_DOC = DOCS / "grafana.md"
RULES = [
    DOCS / "prometheus" / "footprint-budgets.yml",
    DOCS / "prometheus" / "footprint-alerts.yml",
]
RULE_TESTS = DOCS / "prometheus" / "footprint-alerts.test.yml"

# Read when the module is imported: the conftest removes FOOTPRINT_* before each test.
REQUIRE_PROMTOOL = bool(os.environ.get("FOOTPRINT_REQUIRE_PROMTOOL"))

# What the Grafana variables stand for when promtool checks an expression.
GRAFANA_VALUES = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1d",
    "__range_s": "86400",
    "__range_ms": "86400000",
    "instance": ".*",
    "model": "llama-3-8b|other-model",
    "gpu": "0|1",
}
# Series Prometheus makes itself for each target (not the daemon's): ``up`` says whether
# the daemon answered the scrape, which no metric of a daemon that is down can say.
SCRAPE_SERIES = {"up"}


def promtool() -> str:
    """promtool's path; skips the test without it, unless FOOTPRINT_REQUIRE_PROMTOOL."""
    path = shutil.which("promtool")
    if path is not None:
        return path
    if REQUIRE_PROMTOOL:
        pytest.fail("FOOTPRINT_REQUIRE_PROMTOOL is set and promtool is not on PATH")
    pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")


def run_promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


# -- reading the dashboard and the rules --------------------------------------------------
def load_dashboard(text: str | None = None) -> dict:
    return json.loads(DASHBOARD.read_text() if text is None else text)


def dashboard_panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, rows' own included (a collapsed row holds its panels)."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.+),\s*(?P<label>\w+)\s*\)\s*$", re.S)


def variable_query(variable: dict) -> str:
    query = variable.get("query", "")
    return query.get("query", "") if isinstance(query, dict) else query


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every ``label_values`` selector."""
    found = []
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = LABEL_VALUES.match(variable_query(variable))
        assert match, f"variable {variable['name']}: not label_values(selector, label)"
        found.append((f"variable {variable['name']}", match["selector"]))
    return found


GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$([A-Za-z_]\w*)|\[\[(\w+)\]\]")


def substitute(expr: str) -> str:
    """``expr`` with its Grafana variables replaced by ``GRAFANA_VALUES``; an unknown one
    is an error (promtool would be checking something Grafana never sends)."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in GRAFANA_VALUES:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return GRAFANA_VALUES[name]

    return GRAFANA_VARIABLE.sub(value, expr)


RULE_KEY = re.compile(r"^(?P<indent>\s*)(?:-\s+)?(?P<key>expr|record|alert):\s*(?P<rest>.*)$")


def rule_entries(text: str) -> list[tuple[str, str]]:
    """(key, value) of every ``record:``, ``alert:`` and ``expr:`` in a rules file: a plain
    or quoted scalar on its line, or a ``|``/``>`` block on the lines indented below it.
    (No YAML library in the test dependencies; promtool parses the file for real.)"""
    lines = text.splitlines()
    found = []
    for number, line in enumerate(lines):
        match = RULE_KEY.match(line)
        if not match:
            continue
        rest = re.sub(r"\s+#.*$", "", match["rest"]).strip()
        if rest[:1] in ("|", ">"):
            block = []
            for follow in lines[number + 1 :]:
                if follow.strip() and len(follow) - len(follow.lstrip()) <= len(match["indent"]):
                    break
                block.append(follow.strip())
            value = "\n".join(block).strip()
        elif rest[:1] in ("'", '"'):
            value = json.loads(rest) if rest[0] == '"' else rest[1:-1].replace("''", "'")
        else:
            value = rest
        found.append((match["key"], value))
    return found


def rule_exprs(path: Path) -> list[str]:
    return [value for key, value in rule_entries(path.read_text()) if key == "expr"]


def recorded_names(paths: list[Path]) -> set[str]:
    return {
        value for path in paths for key, value in rule_entries(path.read_text()) if key == "record"
    }


# -- metric names in PromQL ---------------------------------------------------------------
STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
NAME_MATCHER = re.compile(r"__name__\s*=\s*(\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*')")
COMMENT = re.compile(r"#[^\n]*")
MATCHERS = re.compile(r"\{[^{}]*\}")
RANGE = re.compile(r"\[[^\[\]]*\]")
LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.I)
TOKEN = re.compile(r"(?P<number>\d[\w.]*|\.\d[\w.]*)|(?P<name>[A-Za-z_:][\w:]*)(?P<call>\s*\()?")
KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "atan2",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers left once strings, label
    matchers, ranges, ``by (...)``-style label lists, numbers and durations are taken out,
    less keywords and names called as functions; plus ``{__name__="..."}`` names."""
    names = {
        json.loads(m[1]) if m[1][0] == '"' else m[1][1:-1] for m in NAME_MATCHER.finditer(expr)
    }
    text = STRING.sub('""', expr)
    text = COMMENT.sub("", text)
    text = MATCHERS.sub("", text)
    text = RANGE.sub("", text)
    text = LABEL_LIST.sub("", text)
    for token in TOKEN.finditer(text):
        name = token["name"]
        if name and not token["call"] and name.lower() not in KEYWORDS:
            names.add(name)
    return names


def named_metrics(dashboard: dict, rule_files: list[Path]) -> dict[str, set[str]]:
    """Each metric name the dashboard and the rules use -> where."""
    used: dict[str, set[str]] = {}
    exprs = dashboard_exprs(dashboard)
    exprs += [(path.name, expr) for path in rule_files for expr in rule_exprs(path)]
    for where, expr in exprs:
        for name in metric_names(substitute(expr)):
            used.setdefault(name, set()).add(where)
    return used


def not_exported(used: dict[str, set[str]], exported: set[str]) -> dict[str, set[str]]:
    """The names used that are neither exported, nor recorded by the rules, nor the
    scrape's own series."""
    known = exported | recorded_names(RULES) | SCRAPE_SERIES
    return {name: where for name, where in used.items() if name not in known}


def check_exprs(exprs: list[str], folder: Path) -> subprocess.CompletedProcess[str]:
    """promtool check rules on ``exprs`` written as recording rules (how promtool parses
    an expression); JSON strings are valid YAML double-quoted scalars."""
    rules = [
        f"      - record: dashboard:expr_{i}\n        expr: {json.dumps(e)}"
        for i, e in enumerate(exprs)
    ]
    path = folder / "dashboard-exprs.yml"
    path.write_text("groups:\n  - name: dashboard\n    rules:\n" + "\n".join(rules) + "\n")
    return run_promtool("check", "rules", str(path))


# -- the dashboard as Grafana reads it ----------------------------------------------------
def test_the_dashboard_has_a_datasource_variable_and_model_gpu_variables():
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name, label in (("model", "model"), ("gpu", "gpu"), ("instance", "instance")):
        match = LABEL_VALUES.match(variable_query(variables[name]))
        assert match and match["label"] == label, name
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*", name
    datasource = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    ids = []
    for panel in dashboard_panels(dashboard):
        ids.append(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == datasource, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == datasource, panel["title"]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_no_two_panels_overlap():
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard_panels(load_dashboard()):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[x, y]!r}"
                cells[x, y] = panel["title"]


def test_the_dashboard_shows_what_the_issue_asks_for():
    used = named_metrics(load_dashboard(), [])
    for name in (
        "footprint_energy_joules_total",
        "footprint_co2e_grams_total",
        "footprint_cost_usd_total",
        "footprint_input_tokens_total",
        "footprint_output_tokens_total",
        "footprint_idle_energy_joules_total",
        "footprint_gpu_power_watts",
        "footprint_lost_spans_total",
        "footprint_lost_energy_joules_total",
        "footprint_connections_refused_total",
        "footprint_ready",
        "footprint_health_problem",
    ):
        assert name in used, name


def test_docs_list_every_panel():
    doc = GRAFANA_DOC.read_text()
    for panel in dashboard_panels(load_dashboard()):
        if panel["type"] != "row":
            assert panel["title"] in doc, f"docs/grafana.md does not list {panel['title']!r}"


def test_the_rules_have_the_budget_loss_and_daemon_alerts():
    alerts = {value for key, value in rule_entries(RULES[1].read_text()) if key == "alert"}
    assert {
        "FootprintModelOverDailyCostBudget",
        "FootprintModelOverDailyEnergyBudget",
        "FootprintSpansLost",
        "FootprintDaemonDown",
        "FootprintDaemonNotReady",
        "FootprintNoGpuMeasured",
    } <= alerts
    assert {"footprint:budget_usd_per_day", "footprint:budget_joules_per_day"} <= recorded_names(
        RULES
    )


# -- promtool ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", RULES, ids=lambda p: p.name)
def test_promtool_check_rules(path):
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_exprs(path))} rules found" in result.stdout


def test_promtool_unit_tests_of_the_alerts():
    """The budget alerts fire for a model over its own or the default budget (summed over
    daemons), not under it; the loss alert for 15 minutes; the daemon alerts after 5."""
    result = run_promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_expression_is_valid_promql(tmp_path):
    exprs = dashboard_exprs(load_dashboard())
    substituted = [substitute(expr) for _, expr in exprs]
    assert not [e for e in substituted if "$" in e]
    result = check_exprs(substituted, tmp_path)
    listing = "\n".join(
        f"{i}: {where}: {e}" for i, ((where, _), e) in enumerate(zip(exprs, substituted))
    )
    assert result.returncode == 0, result.stdout + result.stderr + "\n" + listing
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_the_expression_check_fails_on_bad_promql(tmp_path):
    good = substitute(
        'sum by (model) (rate(footprint_energy_joules_total{model=~"$model"}[$__rate_interval]))'
    )
    assert check_exprs([good], tmp_path).returncode == 0
    for bad in (good[:-1], "rate(footprint_energy_joules_total)", 'sum by (model) (x{model=~"(})'):
        result = check_exprs([good, bad], tmp_path)
        assert result.returncode != 0, bad


def test_an_unknown_grafana_variable_is_an_error():
    assert (
        substitute('x[$__rate_interval] and y{a=~"${model}"}')
        == 'x[1m] and y{a=~"llama-3-8b|other-model"}'
    )
    with pytest.raises(KeyError, match=r"\$team"):
        substitute('x{team=~"$team"}')


# -- the metric names ----------------------------------------------------------------------
def test_metric_names_leaves_out_functions_labels_keywords_and_durations():
    expr = (
        'sum by (model, gpu) (rate(footprint_energy_joules_total{model=~"a|b", gpu!="0"}[5m]))\n'
        "/ on (model) group_left () (sum without (status) (increase(footprint_queries_total[1h:1m]"
        " offset 1d)) > bool 3e6)\n"
        'or label_replace(vector(1.5e-3), "dst", "$1", "src", "(.*)") * inf # footprint_gone\n'
        "unless topk(5, {__name__=\"footprint_named\", job='x'}) and absent(up)"
    )
    assert metric_names(expr) == {
        "footprint_energy_joules_total",
        "footprint_queries_total",
        "footprint_named",
        "up",
    }
    assert metric_names("model:footprint_cost_usd:increase24h > on (model) budget") == {
        "model:footprint_cost_usd:increase24h",
        "budget",
    }


def test_a_renamed_metric_is_caught():
    """Each check finds a name that the daemon does not export: one renamed in the
    dashboard, and one renamed in the daemon (its old name still in the dashboard)."""
    text = DASHBOARD.read_text()
    used = named_metrics(load_dashboard(text), RULES)
    exported = set(used)
    assert not_exported(used, exported) == {}
    renamed = named_metrics(
        load_dashboard(text.replace("footprint_gpu_power_watts", "footprint_gpu_power_w")), RULES
    )
    assert set(not_exported(renamed, exported)) == {"footprint_gpu_power_w"}
    assert set(not_exported(used, exported - {"footprint_lost_spans_total"})) == {
        "footprint_lost_spans_total"
    }
    rule_only = named_metrics({"panels": [], "templating": {"list": []}}, RULES)
    assert "footprint_cost_usd_total" in rule_only and "footprint_health_problem" in rule_only


def test_rule_entries_reads_plain_quoted_and_block_values():
    text = (
        "groups:\n  - name: g\n    rules:\n"
        "      - record: a:b  # comment\n        expr: vector(1)  # one\n"
        '      - alert: X\n        expr: "up == 0"\n'
        "      - alert: Y\n        expr: |\n          sum(x)\n          > 1\n        for: 5m\n"
    )
    assert rule_entries(text) == [
        ("record", "a:b"),
        ("expr", "vector(1)"),
        ("alert", "X"),
        ("expr", "up == 0"),
        ("alert", "Y"),
        ("expr", "sum(x)\n> 1"),
    ]


# -- a real daemon ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder():
    path = Path(tempfile.mkdtemp(prefix="fpg-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def scrape(folder) -> str:
    """/metrics of a daemon on a simulated GPU that stored calls of two models."""
    daemon = spawn(folder, name="dash")
    try:
        client = Client(daemon.sock)
        t0 = time.monotonic()
        client.send(batch(95001, starts=[{"id": 1, "start_s": t0, "gpus": [0]}]))
        time.sleep(0.3)
        t1 = time.monotonic()
        ends = [
            end(1, t0, t1, "dash-a", input_tokens=12, output_tokens=40),
            end(2, t1 - 0.1, t1, "dash-b", input_tokens=3, output_tokens=5, status="error"),
        ]
        client.send(batch(95001, ends=ends))
        assert wait_for(lambda: records_of(daemon.db, "dash-a") and records_of(daemon.db, "dash-b"))

        def complete() -> str | None:
            text = metrics_text(daemon)
            found = samples(text)
            models = {s[0].get("model") for s in found.get("footprint_cost_usd_total", [])}
            return (
                text
                if {"dash-a", "dash-b"} <= models and "footprint_gpu_power_watts" in found
                else None
            )

        text = wait_for(complete)
        client.close()
    finally:
        daemon.stop()
    assert text, "the daemon's metrics never showed both models and the GPU's power"
    return text


def test_every_metric_named_is_one_the_daemon_exports(scrape):
    exported = set(samples(scrape))
    missing = not_exported(named_metrics(load_dashboard(), RULES), exported)
    assert missing == {}, f"not exported by the daemon: {missing}"


def test_promtool_check_metrics_on_the_daemons_scrape(scrape):
    result = run_promtool("check", "metrics", stdin=scrape)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_a_ready_daemon_says_so_in_its_metrics(scrape):
    found = samples(scrape)
    assert found["footprint_ready"] == [({}, 1.0)]
    problems = {labels["reason"]: value for labels, value in found["footprint_health_problem"]}
    assert problems == dict.fromkeys(HEALTH_REASONS, 0.0)
    assert {labels["gpu"] for labels, _ in found["footprint_lost_energy_joules_total"]} == {"0"}


def test_a_daemon_measuring_no_gpu_is_not_ready_in_its_metrics(folder):
    daemon = spawn(folder, "--sensor", "none", name="dash-nogpu")
    try:
        found = samples(metrics_text(daemon))
        ready_status = http_get(daemon.url("/readyz"))[0]
    finally:
        daemon.stop()
    assert ready_status == 503
    assert found["footprint_ready"] == [({}, 0.0)]
    problems = {labels["reason"]: value for labels, value in found["footprint_health_problem"]}
    assert problems["no_gpu"] == 1.0
    assert sum(problems.values()) == 1.0
    assert "footprint_gpu_info" not in found


# Metrics that stay flat while nothing goes wrong: their panels show ``increase > 0`` or
# ``== 1`` only, so no series is the right answer for them in the run below.
TROUBLE_METRICS = {
    "footprint_lost_spans_total",
    "footprint_connections_refused_total",
    "footprint_protocol_errors_total",
    "footprint_accept_failures_total",
    "footprint_spans_ignored_total",
    "footprint_clients_gone_total",
    "footprint_health_problem",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prometheus_query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)["data"]["result"]


def scraped(port: int) -> bool:
    """Whether Prometheus has scraped the daemon (False while it is not answering yet)."""
    try:
        return bool(prometheus_query(port, "footprint_records_written_total"))
    except OSError:
        return False


@pytest.mark.slow
def test_a_real_prometheus_gets_data_for_every_panel_and_fires_the_budget_alerts(
    folder, tmp_path, monkeypatch
):
    """Prometheus (the same Debian package as promtool) scrapes a daemon every second with
    the rules loaded, budgets set near 0: every panel's query returns series, and the
    budget alerts fire for the models the daemon measured."""
    promtool()  # skipped or failed as the promtool checks are
    binary = shutil.which("prometheus")
    if binary is None:
        if REQUIRE_PROMTOOL:
            pytest.fail("FOOTPRINT_REQUIRE_PROMTOOL is set and prometheus is not on PATH")
        pytest.skip("no prometheus binary beside promtool")
    rules = tmp_path / "rules"
    rules.mkdir()
    budgets = RULES[0].read_text()
    for shipped, here in (
        ("vector(100)", "vector(1e-9)"),  # the default budgets: any use is over them
        ("vector(36e6)", "vector(1e-9)"),
        ("interval: 1m", "interval: 1s"),  # the budgets group: as often as the alerts
    ):
        assert shipped in budgets, shipped
        budgets = budgets.replace(shipped, here)
    (rules / "budgets.yml").write_text(budgets)
    (rules / "alerts.yml").write_text(RULES[1].read_text())
    daemon = spawn(folder, name="dash-live")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f'rule_files: ["{rules}/*.yml"]\n'
        "scrape_configs:\n"
        "  - job_name: footprint\n"
        f'    static_configs: [{{targets: ["127.0.0.1:{daemon.port}"]}}]\n'
    )
    with open(tmp_path / "prometheus.log", "wb") as log:
        server = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    monkeypatch.setitem(GRAFANA_VALUES, "__rate_interval", "5s")
    monkeypatch.setitem(GRAFANA_VALUES, "__range", "5m")
    monkeypatch.setitem(GRAFANA_VALUES, "model", ".*")
    monkeypatch.setitem(GRAFANA_VALUES, "gpu", ".*")
    exprs = [
        (where, substitute(expr))
        for where, expr in dashboard_exprs(load_dashboard())
        if not metric_names(expr) & TROUBLE_METRICS
    ]
    try:
        assert wait_for(lambda: scraped(port), timeout=60, step=0.5), "Prometheus never scraped"
        client = Client(daemon.sock)

        def calls(first_id: int, count: int) -> None:
            """``count`` calls of 0.3 s, alternately of the models live-0 and live-1."""
            for span_id in range(first_id, first_id + count):
                t0 = time.monotonic()
                client.send(batch(95101, starts=[{"id": span_id, "start_s": t0, "gpus": [0]}]))
                time.sleep(0.3)
                model = f"live-{span_id % 2}"
                span = end(span_id, t0, time.monotonic(), model, input_tokens=10, output_tokens=20)
                client.send(batch(95101, ends=[span]))

        def queries_scraped() -> float:
            found = prometheus_query(port, 'min(footprint_queries_total{model=~"live-.*"})')
            return float(found[0]["value"][1]) if found else 0.0

        # A counter's first scraped value adds nothing to increase(): both models' series
        # are scraped once before the calls the budget alerts must see.
        calls(1, 2)
        assert wait_for(lambda: queries_scraped() >= 1, timeout=60, step=0.5)
        calls(3, 8)
        assert wait_for(lambda: queries_scraped() >= 5, timeout=60, step=0.5)

        def empty() -> list[str]:
            return [where for where, expr in exprs if not prometheus_query(port, expr)]

        def budget_alerts() -> set[tuple[str, str]]:
            found = prometheus_query(port, 'ALERTS{alertstate="firing"}')
            return {(a["metric"]["alertname"], a["metric"].get("model", "")) for a in found}

        wait_for(lambda: not empty(), timeout=60, step=1.0)
        missing = empty()
        expected = {
            (alert, model)
            for alert in (
                "FootprintModelOverDailyCostBudget",
                "FootprintModelOverDailyEnergyBudget",
            )
            for model in ("live-0", "live-1")
        }
        wait_for(lambda: expected <= budget_alerts(), timeout=30, step=1.0)
        alerts = budget_alerts()
        client.close()
    finally:
        server.terminate()
        server.wait(30)
        daemon.stop()
    log = (tmp_path / "prometheus.log").read_text(errors="replace")[-2000:]
    assert missing == [], f"panels with no data: {missing}; prometheus said: {log}"
    assert expected <= alerts, alerts


def test_lost_energy_is_counted_per_gpu():
    """The energy the idle rows give to calls never stored, per GPU (CPU rows left out)."""
    totals = RecordTotals({"GPU-aaaa": "0", "GPU-bbbb": "1"})
    rows = [
        {"device_uuid": "GPU-aaaa", "idle_energy_j": 5.0, "lost_energy_j": 2.5},
        {"device_uuid": "GPU-aaaa", "idle_energy_j": 1.0, "lost_energy_j": 0.5},
        {"device_uuid": "GPU-bbbb", "idle_energy_j": 1.0},  # no lost energy
        {"device_uuid": "cpu-package-0", "idle_energy_j": 9.0, "lost_energy_j": 9.0},
    ]
    totals.observe([], rows)
    found = samples(render(registry(fake_collector(totals))).decode())
    lost = {labels["gpu"]: value for labels, value in found["footprint_lost_energy_joules_total"]}
    assert lost == {"0": 3.0, "1": 0.0}
    idle = {labels["gpu"]: value for labels, value in found["footprint_idle_energy_joules_total"]}
    assert idle == {"0": 6.0, "1": 1.0}
