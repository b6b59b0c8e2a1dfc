"""``footprint devices`` and ``footprint regions``: what is measured here, and the known zones."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Column, Table

from footprint.cli._errors import InputError
from footprint.cli._output import JsonOption, console, show


def devices(
    as_json: JsonOption = False,
    sensor: Annotated[
        str | None, typer.Option(help="auto | nvml | simulated[:opts] (default: settings)")
    ] = None,
) -> None:
    """List the GPUs (and CPU packages) found and how each one's energy is measured."""
    from footprint.config import resolve_settings, validate_sensor
    from footprint.sensors import open_cpu_sensor, open_gpu_sensor

    try:
        if sensor is not None:
            validate_sensor(sensor)
        spec = sensor or resolve_settings().sensor
    except ValueError as exc:
        raise InputError(str(exc)) from None
    gpu_sensor, reason = open_gpu_sensor(spec)
    cpu_sensor, cpu_reason = open_cpu_sensor()
    found = [d.__dict__ for d in gpu_sensor.devices]
    cpus = [d.__dict__ for d in cpu_sensor.devices] if cpu_sensor else []
    gpu_sensor.close()
    if cpu_sensor:
        cpu_sensor.close()
    result = {
        "sensor": spec,
        "gpus": found,
        "gpu_note": reason or None,
        "cpus": cpus,
        "cpu_note": cpu_reason or None,
    }
    show(result, as_json, lambda r: _print_devices(r, reason, cpu_reason))


def _print_devices(result: dict[str, Any], gpu_reason: str, cpu_reason: str) -> None:
    """The GPUs as a table (or why there is none), then the CPU packages on one line."""
    if not result["gpus"]:
        console.print(
            f"No GPU found: {gpu_reason}. Queries will be recorded with energy_source=missing."
        )
    else:
        table = Table("index", "uuid", "name", "energy method")
        for d in result["gpus"]:
            table.add_row(str(d["index"]), d["uuid"], d["name"], d["energy_method"])
        console.print(table)
    if result["cpus"]:
        console.print(f"CPU energy (RAPL): {', '.join(c['uuid'] for c in result['cpus'])}")
    else:
        console.print(f"CPU energy: not available ({cpu_reason})")
    console.print(f"Settings: {settings_source()}", markup=False)


def settings_source() -> str:
    """Which settings files apply here (found from the working directory up)."""
    from footprint.config import resolve_settings

    try:
        return resolve_settings().config_source
    except ValueError as exc:  # the settings are invalid: say so, the rest stands
        return f"invalid: {exc}"


def regions(
    query: Annotated[str | None, typer.Argument(help="Filter: a zone, provider or place.")] = None,
    as_json: JsonOption = False,
) -> None:
    """The zones we know (countries, grids, AWS/Azure/GCP regions) with their factors."""
    from footprint.pricing import list_zones, lookup_zone

    zones = list_zones(query)
    if not zones:
        try:
            lookup_zone(query or "")
        except ValueError as exc:
            raise InputError(f"no zone matches {query!r}: {exc}") from None
        raise InputError(f"no zone matches {query!r}")
    result = {"query": query, "count": len(zones), "zones": zones}
    show(result, as_json, lambda _: _print_zones(zones))


def _print_zones(zones: list[dict[str, Any]]) -> None:
    """One row per zone, then how many."""
    # Zone ids are never cut: the other columns wrap.
    table = Table(
        Column("zone", no_wrap=True, min_width=max(len(z["zone"]) for z in zones)),
        *(Column(h, overflow="fold") for h in ("name", "grid zone", "gCO2e/kWh", "price/kWh")),
        Column("intensity source", overflow="fold"),
    )
    for z in zones:
        price = f"{z['price_per_kwh']:.4f} {z['currency']}" if z["price_per_kwh"] else "-"
        intensity = f"{z['intensity_g_per_kwh']:.0f}"
        row = (z["zone"], z["name"] or "", z["grid_zone"] or "", intensity, price)
        table.add_row(*row, z["intensity_ref"][:60])
    console.print(table)
    console.print(f"{len(zones)} zones")
