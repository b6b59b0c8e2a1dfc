"""``footprint report --format boamps``: one Boavizta BoAmps report per model and period.

BoAmps (https://github.com/Boavizta/BoAmps, ``model/report_schema.json``, format 1.1.0) is
a JSON format for the energy of AI tasks. Each report here describes one model's inference
requests in the period: the figures come from ``build_report`` (requests, tokens, GPU
energy: the same numbers as ``--format json``), the rest from ``boamps_context`` (when,
how measured, where, on how many GPUs). Nothing is invented: an optional field whose value
is not known is left out; the required ones that may not be known say so the schema's way
(``taskFamily`` "unknown", ``infraType`` "other"). A model whose energy is not known gets
no report (``powerConsumption`` is required and a 0 would be false); the caller is told.

``reportId`` is a uuid5 of the model, the period asked and the data (first and last query,
requests): exporting the same data again gives the same id, so a re-export replaces rather
than duplicates a report downstream. ``reportDatetime`` is the time of the export (UTC), or
``SOURCE_DATE_EPOCH`` when set (reproducible files).
"""

from __future__ import annotations

import datetime as _dt
import os
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from footprint.pricing import Zone, lookup_zone
from footprint.reporting.boamps_context import ModelContext
from footprint.reporting.request import ReportError

FORMAT_VERSION = "1.1.0"  # Boavizta/BoAmps RELEASENOTE.md, latest release of the data model
SPEC_COMMIT = "3bfefec8446ee196d1723c0e35859eb7762da3c9"
SPEC_URI = f"https://github.com/Boavizta/BoAmps/tree/{SPEC_COMMIT}/model"
CONFIDENTIALITY = ("public", "internal", "confidential", "secret")
UNKNOWN = "unknown"  # taskFamily when no query carries a task_family tag
METHOD = "footprint"
# energy_source -> gpuTrackingMode: NVML's energy counter or its power samples, the
# simulated GPU, energy partly estimated over a gap in the samples.
TRACKING_MODES = {
    "counter": "nvml",
    "power": "nvml",
    "simulated": "simulated",
    "estimated": "estimated",
}
# energy_source -> cpuTrackingMode: CPU-only hosts, whose calls get RAPL package and DRAM
# energy (partly estimated over a gap in the samples).
CPU_TRACKING_MODES = {"cpu": "rapl", "cpu-estimated": "rapl+estimated"}
# quality: relative bound on the energy error -> BoAmps level (report_schema.json:
# high +/-10%, medium +/-25%, low +/-50%)
QUALITY_LEVELS = ((0.10, "high"), (0.25, "medium"), (0.50, "low"))
# uuid5 namespace of footprint's BoAmps report ids (uuid5 of the DNS namespace and this
# module's name, fixed so that ids stay stable across releases)
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "footprint.reporting.boamps")
_TIME = "%Y-%m-%d %H:%M:%S"  # BoAmps' date format, UTC


@dataclass(frozen=True)
class Publisher:
    """``header.publisher``: who publishes the reports (BoAmps requires a confidentiality
    level whenever a publisher is given)."""

    confidentiality: str
    name: str | None = None

    def __post_init__(self) -> None:
        if self.confidentiality not in CONFIDENTIALITY:
            raise ReportError(
                f"--confidentiality must be one of {', '.join(CONFIDENTIALITY)}, "
                f"got {self.confidentiality!r}"
            )


def make_publisher(name: str | None, confidentiality: str | None) -> Publisher | None:
    """The publisher from ``--publisher`` and ``--confidentiality`` (None: neither)."""
    if confidentiality is None:
        if name is not None:
            raise ReportError(
                "--publisher needs --confidentiality public|internal|confidential|secret "
                "(BoAmps requires it)"
            )
        return None
    return Publisher(confidentiality=confidentiality, name=name)


def export_time(env: Mapping[str, str] | None = None) -> _dt.datetime:
    """When the reports are published: ``SOURCE_DATE_EPOCH`` (seconds) if set, else now."""
    raw = (os.environ if env is None else env).get("SOURCE_DATE_EPOCH")
    if raw is None or raw == "":
        return _dt.datetime.now(_dt.timezone.utc)
    try:
        return _dt.datetime.fromtimestamp(int(raw), _dt.timezone.utc)
    except (ValueError, OverflowError, OSError):
        raise ReportError(f"SOURCE_DATE_EPOCH must be whole seconds, got {raw!r}") from None


def _stamp(when: _dt.datetime) -> str:
    return when.astimezone(_dt.timezone.utc).strftime(_TIME)


def report_id(model: str, period: Mapping[str, Any], ctx: ModelContext) -> str:
    """A uuid5 of the model, the period asked and the data: the same export, the same id."""
    parts = [
        model,
        str(period.get("since")),
        str(period.get("until")),
        ctx.first_started.isoformat() if ctx.first_started else "",
        ctx.last_ended.isoformat() if ctx.last_ended else "",
        str(ctx.queries),
    ]
    return str(uuid.uuid5(ID_NAMESPACE, "\x1f".join(parts)))


def tracking_mode(sources: Mapping[str, int]) -> str | None:
    """``gpuTrackingMode`` from the energy sources of the measured queries ("+" between
    several); None when no query was measured on a GPU."""
    skip = {"missing", *CPU_TRACKING_MODES}
    modes = sorted({TRACKING_MODES.get(s, s) for s, n in sources.items() if n and s not in skip})
    return "+".join(modes) or None


def cpu_tracking_mode(sources: Mapping[str, int]) -> str | None:
    """``cpuTrackingMode`` where queries of a CPU-only host were measured with RAPL."""
    modes = sorted(
        {CPU_TRACKING_MODES[s] for s, n in sources.items() if n and s in CPU_TRACKING_MODES}
    )
    return "+".join(modes) or None


def quality(entry: Mapping[str, Any], ctx: ModelContext) -> str | None:
    """The BoAmps quality level from the bound on the energy error, when every query was
    measured by a real sensor with a bound; None otherwise (not known)."""
    energy, bound = entry.get("energy_kwh"), entry.get("energy_uncertainty_kwh")
    every_query_bounded = ctx.with_uncertainty == entry["queries"] > 0
    if not energy or bound is None or not every_query_bounded or ctx.sources.get("simulated"):
        return None
    relative = bound / energy
    for limit, level in QUALITY_LEVELS:
        if relative <= limit:
            return level
    return None


def _mean_tokens(total: int, carried: int, queries: int) -> float | None:
    """Tokens per request, when every request carries a count (else not known)."""
    return total / queries if queries and carried == queries else None


def _task(entry: Mapping[str, Any], ctx: ModelContext, period: Mapping[str, Any]) -> dict:
    n = entry["queries"]
    families = [f for f in ctx.families if f]
    family = families[0] if len(families) == 1 and ctx.families[families[0]] == n else UNKNOWN
    datasets = []
    for usage, total, carried in (
        ("input", entry["input_tokens"], ctx.with_input_tokens),
        ("output", entry["output_tokens"], ctx.with_output_tokens),
    ):
        item: dict[str, Any] = {"dataUsage": usage, "dataType": "token"}
        mean = _mean_tokens(total, carried, n)
        if mean is not None:
            item["dataQuantity"] = mean
        datasets.append(item)
    unmeasured = entry["queries_without"]["energy"]
    measured = f"{n - unmeasured:,} of the {n:,}" if unmeasured else "every one"
    since, until = period.get("since"), period.get("until")
    when = f"from {since or 'the first query'} to {until or 'the last query'}"
    requests = "request" if n == 1 else "requests"
    return {
        "taskStage": "inference",
        "taskFamily": family,
        "nbRequest": n,
        "algorithms": [{"foundationModelName": entry["model"]}],
        "dataset": datasets,
        "taskDescription": (
            f"{n:,} inference {requests} to {entry['model']} {when}, measured by "
            f"footprint. powerConsumption is the energy attributed to them ({measured} "
            "measured): GPU energy, or CPU package and DRAM energy on a host without GPUs; "
            "idle energy and the data centre's overhead (PUE) are not included. "
            "dataQuantity is tokens per request."
        ),
    }


def _measure(entry: Mapping[str, Any], ctx: ModelContext, version: str) -> dict:
    measure: dict[str, Any] = {"measurementMethod": METHOD, "version": version}
    mode = tracking_mode(ctx.sources)
    if mode:
        measure["gpuTrackingMode"] = mode
    cpu_mode = cpu_tracking_mode(ctx.sources)
    if cpu_mode:
        measure["cpuTrackingMode"] = cpu_mode
    measure["powerConsumption"] = entry["energy_kwh"]
    if ctx.first_started and ctx.last_ended:
        measure["measurementDuration"] = (ctx.last_ended - ctx.first_started).total_seconds()
        measure["measurementDateTime"] = _stamp(ctx.first_started)
    return measure


def _zones(ctx: ModelContext) -> list[Zone] | None:
    """The zones of every query (``lookup_zone``), or None if a query has none or one is
    not known here."""
    if None in ctx.zones:
        return None
    try:
        return [lookup_zone(z) for z in ctx.zones if z]
    except ValueError:  # UnknownZoneError, DataFileError: a zone of a newer data set
        return None


def _infrastructure(ctx: ModelContext, zones: list[Zone] | None) -> dict:
    infra: dict[str, Any] = {"infraType": "other"}
    providers = {z.provider for z in zones or ()}
    if zones and len(providers) == 1 and None not in providers:
        infra["infraType"] = "publicCloud"
        infra["cloudProvider"] = providers.pop()
    elif zones and set(ctx.ownerships) == {"owned"}:
        infra["infraType"] = "onPremise"
    infra["components"] = _gpu_components(ctx)
    return infra


_MAKERS = ("nvidia", "amd", "intel")


def _gpu_components(ctx: ModelContext) -> list[dict[str, Any]]:
    """One ``gpu`` component per GPU model the queries ran on (``series``: the model as the
    sensor named it; ``manufacturer``: its vendor, or the maker its name starts with);
    GPUs the database does not name are counted in a component without them."""
    kinds: Counter[tuple[str | None, str | None]] = Counter()
    for gpu_uuid in ctx.gpus:
        named = ctx.gpu_names.get(gpu_uuid, {})
        name = named.get("name") or None
        vendor = named.get("vendor") or None
        if vendor is None and name and name.split()[0].lower() in _MAKERS:
            vendor = name.split()[0]
        kinds[(vendor, name)] += 1
    components = []
    for (vendor, name), count in sorted(kinds.items(), key=lambda kv: (str(kv[0]), kv[1])):
        component: dict[str, Any] = {"componentType": "gpu", "nbComponent": count}
        if vendor:
            component["manufacturer"] = vendor.lower()
        if name:
            component["series"] = name
        components.append(component)
    if not components and cpu_tracking_mode(ctx.sources) and ctx.cpu_packages:
        # A CPU-only host: its packages (RAPL) measured the calls.
        return [{"componentType": "cpu", "nbComponent": ctx.cpu_packages}]
    return components or [{"componentType": "gpu", "nbComponent": 0}]


def _environment(ctx: ModelContext, zones: list[Zone] | None) -> dict | None:
    """Country (ISO 3166-1 alpha-3), zone and grid intensity when every query ran in one
    known country; None otherwise."""
    countries = {z.country_iso3 for z in zones or ()}
    if not zones or len(countries) != 1 or any(z.kind == "world" for z in zones):
        return None
    env: dict[str, Any] = {"country": countries.pop()}
    if len(zones) == 1 and zones[0].kind != "country":
        env["location"] = zones[0].id
    intensity = ctx.intensity_g_per_kwh
    if intensity is not None:
        env["powerSourceCarbonIntensity"] = intensity
    return env


def boamps_report(
    entry: Mapping[str, Any],
    ctx: ModelContext,
    period: Mapping[str, Any],
    version: str,
    published: _dt.datetime,
    publisher: Publisher | None = None,
) -> dict[str, Any]:
    """One model's BoAmps report from its figures (``report["models"]``) and context."""
    header: dict[str, Any] = {
        "formatVersion": FORMAT_VERSION,
        "formatVersionSpecificationUri": SPEC_URI,
        "reportId": report_id(entry["model"], period, ctx),
        "reportDatetime": _stamp(published),
    }
    if publisher is not None:
        header["publisher"] = {"confidentialityLevel": publisher.confidentiality}
        if publisher.name:
            header["publisher"]["name"] = publisher.name
    zones = _zones(ctx)
    out: dict[str, Any] = {
        "header": header,
        "task": _task(entry, ctx, period),
        "measures": [_measure(entry, ctx, version)],
        "infrastructure": _infrastructure(ctx, zones),
    }
    env = _environment(ctx, zones)
    if env is not None:
        out["environment"] = env
    level = quality(entry, ctx)
    if level is not None:
        out["quality"] = level
    return out


def boamps_reports(
    report: Mapping[str, Any],
    contexts: Mapping[str, ModelContext],
    version: str,
    published: _dt.datetime,
    publisher: Publisher | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """A BoAmps report per model with known energy, in the report's order; and a line
    for each model left out, saying why."""
    out: list[dict[str, Any]] = []
    skipped: list[str] = []
    for entry in report["models"]:
        name = entry["model"]
        ctx = contexts.get(name)
        if entry["energy_kwh"] is None:
            skipped.append(
                f"no BoAmps report for {name!r}: none of its {entry['queries']:,} queries "
                "has measured energy (energy_source=missing)"
            )
        elif ctx is None or not (ctx.gpus or cpu_tracking_mode(ctx.sources)):
            skipped.append(f"no BoAmps report for {name!r}: no GPU recorded for its queries")
        else:
            out.append(boamps_report(entry, ctx, report["period"], version, published, publisher))
    return out, skipped
