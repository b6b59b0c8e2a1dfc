"""``footprint devices`` and ``footprint regions``: what is measured here, and the known zones."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from footprint.cli._errors import InputError
from footprint.cli._output import JsonOption, console, show


def devices(
    as_json: JsonOption = False,
    sensor: Annotated[
        str | None,
        typer.Option(help="auto | nvml | amd | simulated[:opts] | none (default: settings)"),
    ] = None,
) -> None:
    """List every GPU and CPU package found: vendor, model, how its energy is measured, and
    what is missing and why."""
    from footprint.config import resolve_settings, validate_sensor
    from footprint.sensors.inventory import survey

    try:
        if sensor is not None:
            validate_sensor(sensor)
        spec = sensor or resolve_settings().sensor
    except ValueError as exc:
        raise InputError(str(exc)) from None
    result = survey(spec)
    show(result, as_json, _print_devices)


def _print_devices(result: dict[str, Any]) -> None:
    """Every device as a table, then what the runtime measures and why a library found none."""
    if result["devices"]:
        table = Table(
            "kind",
            "index",
            "vendor",
            "model",
            Column("uuid", overflow="fold"),
            "energy",
            Column("missing", overflow="fold"),
        )
        for d in result["devices"]:
            index = "-" if d["index"] is None else str(d["index"])
            energy = d["energy_method"]
            if d.get("share") is not None:  # a MIG device: a share of its GPU's reading
                energy = f"{energy} x {d['share']:.3f} of its GPU"
            table.add_row(
                d["kind"],
                index,
                d["vendor"] or "?",
                d["model"] or "?",
                d["uuid"] or "-",
                energy,
                d["missing"] or "",
            )
        console.print(table)
    if not result["gpus"]:
        then = (
            "Queries' energy will be their share of the CPU packages' (and DRAM's) RAPL "
            "energy: energy_source=cpu."
            if result["cpus"]
            else "Queries will be recorded with energy_source=missing."
        )
        console.print(f"No GPU measured: {result['gpu_note']}. {then}", markup=False)
    else:
        uuids = ", ".join(g["uuid"] for g in result["gpus"])
        console.print(f"GPU energy (sensor={result['sensor']}): {uuids}", markup=False)
    if result["cpus"]:
        console.print(f"CPU energy (RAPL): {', '.join(c['uuid'] for c in result['cpus'])}")
    else:
        console.print(f"CPU energy: not available ({result['cpu_note']})", markup=False)
    console.print(f"Settings: {settings_source()}", markup=False)


def settings_source() -> str:
    """Which settings files apply here (found from the working directory up)."""
    from footprint.config import resolve_settings

    try:
        return resolve_settings().config_source
    except ValueError as exc:  # the settings are invalid: say so, the rest stands
        return f"invalid: {exc}"


def regions(
    query: Annotated[
        str | None,
        typer.Argument(
            help="A zone code (FRA, USA/CA), country code or name (FR, germany), provider "
            "(aws, gcp:europe-), cloud region (us-east-1) or place name (frankfurt)."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """The zones we know (countries, grids, AWS/Azure/GCP regions) with their factors,
    one line each; exit 1 when QUERY matches none."""
    from footprint.pricing import list_zones, lookup_zone

    zones = list_zones(query)
    if not zones:
        hint = ""
        try:
            lookup_zone(query or "")
        except ValueError as exc:
            hint = f" ({exc})"
        sys.stderr.write(f"footprint: no zone matches {query!r}{hint}\n")
        raise typer.Exit(1)
    from footprint.cli._zone_lines import print_zones

    clouds = sum(1 for z in zones if z["kind"] == "cloud")
    result = {
        "query": query,
        "count": len(zones),
        "zone_count": len(zones) - clouds,
        "cloud_region_count": clouds,
        "zones": zones,
    }
    show(result, as_json, lambda _: print_zones(zones))
