"""footprint report --format boamps: one Boavizta BoAmps report per model, valid against
the published schema (vendored in tests/data/boamps), with the JSON report's figures."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

import footprint
from footprint.cli import main
from footprint.storage.engine import open_engine
from footprint.tracking import get_runtime

SCHEMAS = Path(__file__).parent / "data" / "boamps"
MODELS = {"llama": 0.2, "mistral": 0.1}  # model: seconds of simulated GPU work per call


def validator() -> jsonschema.Draft4Validator:
    """The BoAmps report schema (draft-04), its $refs resolved to the vendored files."""
    resources = []
    for path in sorted(SCHEMAS.glob("*_schema.json")):
        contents = json.loads(path.read_text(encoding="utf-8"))
        resources.append((contents["id"], Resource.from_contents(contents, DRAFT4)))
    registry = Registry().with_resources(resources)
    schema = json.loads((SCHEMAS / "report_schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"] == "http://json-schema.org/draft-04/schema#"
    return jsonschema.Draft4Validator(schema, registry=registry)


def _calls(model: str, seconds: float, n: int, **tags: str) -> None:
    for i in range(n):
        with footprint.query(model=model, **tags) as q:
            get_runtime().gpu_sensor.run(seconds)
            q.set_tokens(10 + i, 20 + 2 * i)


@pytest.fixture
def db(tmp_path) -> Path:
    """Two models measured on two simulated GPUs in France (one tagged with its task
    family), and calls where no GPU sensor could be read: all of one model's, one of
    another's."""
    path = tmp_path / "fp.db"
    footprint.configure(
        db=str(path),
        sensor="simulated:gpus=2,idle_w=60,busy_w=400,seed=1",
        cpu=False,
        region="FRA",
    )
    _calls("llama", MODELS["llama"], 3, task_family="chatbot")
    _calls("mistral", MODELS["mistral"], 2)
    footprint.flush()
    footprint.reset_configuration()
    footprint.configure(db=str(path), sensor="none", cpu=False, region="FRA")
    with footprint.query(model="blind") as q:
        q.set_tokens(1, 2)
    with footprint.query(model="mistral") as q:  # one of its calls not measured
        q.set_tokens(5, 7)
    footprint.flush()
    footprint.reset_configuration()
    return path


def boamps(capsys, *args: str, errors: list[str] | None = None) -> list[dict]:
    main(["report", *args, "--format", "boamps"])
    captured = capsys.readouterr()
    if errors is not None:
        errors.append(captured.err)
    return json.loads(captured.out)


def exit_code(*args: str) -> int:
    with pytest.raises(SystemExit) as exited:
        main(["report", *args])
    return int(exited.value.code)


def report_json(capsys, *args: str) -> dict:
    main(["report", *args, "--format", "json"])
    return json.loads(capsys.readouterr().out)


def test_one_valid_report_per_measured_model_with_the_json_reports_energy(db, capsys):
    errors: list[str] = []
    reports = boamps(capsys, "--db", str(db), errors=errors)
    figures = {m["model"]: m for m in report_json(capsys, "--db", str(db))["models"]}
    check = validator()
    for report in reports:
        check.validate(report)
    by_model = {r["task"]["algorithms"][0]["foundationModelName"]: r for r in reports}
    assert sorted(by_model) == ["llama", "mistral"]
    for name, report in by_model.items():
        entry = figures[name]
        (measure,) = report["measures"]
        assert measure["powerConsumption"] == entry["energy_kwh"] > 0
        assert measure["measurementMethod"] == "footprint"
        assert measure["gpuTrackingMode"] == "simulated"
        measured = entry["queries"] - entry["queries_without"]["energy"]
        assert measure["measurementDuration"] >= MODELS[name] * measured
        task = report["task"]
        assert task["taskStage"] == "inference"
        assert task["nbRequest"] == entry["queries"]
        tokens = {d["dataUsage"]: d["dataQuantity"] for d in task["dataset"]}
        n = entry["queries"]
        assert tokens == {"input": entry["input_tokens"] / n, "output": entry["output_tokens"] / n}
        assert report["infrastructure"] == {
            "infraType": "onPremise",
            # The simulated GPUs' model, as the sensor names them (the devices table).
            "components": [{"componentType": "gpu", "nbComponent": 2, "series": "Simulated GPU"}],
        }
        assert report["environment"]["country"] == "FRA"
        co2e_per_kwh = entry["co2e_g"] / entry["facility_energy_kwh"]
        assert report["environment"]["powerSourceCarbonIntensity"] == pytest.approx(co2e_per_kwh)
        assert "quality" not in report  # simulated energy: no accuracy to claim
    assert by_model["llama"]["task"]["taskFamily"] == "chatbot"
    assert by_model["mistral"]["task"]["taskFamily"] == "unknown"
    assert "(every one measured)" in by_model["llama"]["task"]["taskDescription"]
    assert "(2 of the 3 measured)" in by_model["mistral"]["task"]["taskDescription"]
    # The model without energy gets no report (never a powerConsumption of 0); stderr
    # names it and says why.
    assert "blind" in figures and figures["blind"]["energy_kwh"] is None
    assert "no BoAmps report for 'blind'" in errors[0]
    assert "energy_source=missing" in errors[0]


def test_report_ids_are_stable_and_one_file_per_report(db, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")  # 2026-01-01 00:00:00 UTC
    first = boamps(capsys, "--db", str(db), "--model", "llama,mistral")
    again = boamps(capsys, "--db", str(db), "--model", "llama,mistral")
    assert first == again
    assert {r["header"]["reportDatetime"] for r in first} == {"2026-01-01 00:00:00"}
    ids = [r["header"]["reportId"] for r in first]
    assert len(set(ids)) == 2
    other_period = boamps(capsys, "--db", str(db), "--model", "llama", "--since", "2000-01-01")
    assert other_period[0]["header"]["reportId"] not in ids
    out = tmp_path / "out"
    main(["report", "--db", str(db), "--format", "boamps,csv", "--out", str(out)])
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([f"footprint-boamps-{i}.json" for i in ids] + ["footprint-report.csv"])
    written = json.loads((out / f"footprint-boamps-{ids[0]}.json").read_text(encoding="utf-8"))
    assert written == first[0]


def test_publisher_needs_a_confidentiality_level(db, capsys):
    (report,) = boamps(
        capsys,
        "--db",
        str(db),
        "--model",
        "llama",
        "--publisher",
        "ACME",
        "--confidentiality",
        "internal",
    )
    validator().validate(report)
    assert report["header"]["publisher"] == {"confidentialityLevel": "internal", "name": "ACME"}
    assert exit_code("--db", str(db), "--format", "boamps", "--publisher", "ACME") == 2
    assert "--confidentiality" in capsys.readouterr().err
    bad = ["--confidentiality", "everyone"]
    assert exit_code("--db", str(db), "--format", "boamps", *bad) == 2
    assert "must be one of public, internal" in capsys.readouterr().err
    # Only with a BoAmps export.
    assert exit_code("--db", str(db), "--format", "json", "--publisher", "ACME") == 2
    assert "go with --format boamps" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--since", "2000-01-01", "--until", "2000-01-02"], "no queries in the period"),
        (["--since", "yesterday"], "not a date"),
        (["--model", "blind"], "no model has measured energy"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(db, capsys, args, words):
    assert exit_code("--db", str(db), "--format", "boamps", *args) == 2
    captured = capsys.readouterr()
    assert words in captured.err and "Traceback" not in captured.err
    assert captured.out == ""


def test_an_empty_database_is_an_error(tmp_path, capsys):
    path = tmp_path / "e.db"
    open_engine(str(path)).dispose()
    assert exit_code("--db", str(path), "--format", "boamps") == 2
    assert "no queries" in capsys.readouterr().err
    # Asked for explicitly, an empty export is an empty list.
    assert boamps(capsys, "--db", str(path), "--allow-empty") == []


def test_all_does_not_include_boamps(db, tmp_path):
    out = tmp_path / "all"
    main(["report", "--db", str(db), "--format", "csv,json", "--out", str(out)])
    main(["report", "--db", str(db), "--format", "all", "--out", str(out)])
    assert not [p for p in out.iterdir() if p.name.startswith("footprint-boamps-")]


def test_cloud_region_is_public_cloud_with_its_provider(tmp_path, capsys):
    path = tmp_path / "cloud.db"
    footprint.configure(
        db=str(path),
        sensor="simulated:gpus=1,idle_w=60,busy_w=400,seed=2",
        cpu=False,
        region="aws:us-east-1",
    )
    _calls("gemma", 0.05, 1)
    footprint.flush()
    footprint.reset_configuration()
    (report,) = boamps(capsys, "--db", str(path))
    validator().validate(report)
    assert report["infrastructure"]["infraType"] == "publicCloud"
    assert report["infrastructure"]["cloudProvider"] == "aws"
    assert report["environment"]["country"] == "USA"
    assert report["environment"]["location"] == "aws:us-east-1"


def test_tracking_mode_and_quality_say_only_what_is_known():
    from footprint.reporting.boamps import quality, tracking_mode
    from footprint.reporting.boamps_context import ModelContext

    assert tracking_mode({"counter": 3, "power": 1, "missing": 2}) == "nvml"
    assert tracking_mode({"counter": 3, "estimated": 1}) == "estimated+nvml"
    assert tracking_mode({"missing": 2}) is None
    ctx = ModelContext(queries=4, with_uncertainty=4)
    ctx.sources.update({"counter": 4})
    entry = {"queries": 4, "energy_kwh": 1.0, "energy_uncertainty_kwh": 0.05}
    assert quality(entry, ctx) == "high"
    assert quality({**entry, "energy_uncertainty_kwh": 0.2}, ctx) == "medium"
    assert quality({**entry, "energy_uncertainty_kwh": 0.5}, ctx) == "low"
    assert quality({**entry, "energy_uncertainty_kwh": 0.9}, ctx) is None
    assert quality({**entry, "energy_uncertainty_kwh": None}, ctx) is None
    ctx.with_uncertainty = 3  # a query without a bound: the level is not known
    assert quality(entry, ctx) is None


def test_the_schema_rejects_what_the_export_must_not_write():
    """The validator is live: a report without powerConsumption or with a bad enum fails."""
    check = validator()
    good = {
        "task": {
            "taskStage": "inference",
            "taskFamily": "unknown",
            "algorithms": [{}],
            "dataset": [{"dataUsage": "input", "dataType": "token"}],
        },
        "measures": [{"measurementMethod": "footprint", "powerConsumption": 0.1}],
        "infrastructure": {
            "infraType": "other",
            "components": [{"componentType": "gpu", "nbComponent": 1}],
        },
    }
    check.validate(good)
    no_power = json.loads(json.dumps(good))
    del no_power["measures"][0]["powerConsumption"]
    assert not check.is_valid(no_power)
    bad_infra = json.loads(json.dumps(good))
    bad_infra["infrastructure"]["infraType"] = "unknown"
    assert not check.is_valid(bad_infra)
    # The $refs are followed into the vendored files (a count that is not an integer).
    bad_component = json.loads(json.dumps(good))
    bad_component["infrastructure"]["components"][0]["nbComponent"] = 1.5
    assert not check.is_valid(bad_component)
