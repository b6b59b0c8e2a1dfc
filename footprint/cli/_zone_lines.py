"""``footprint regions`` for people: one line per zone at any width, and when piped.

On a terminal, a table fitted to its width: the long columns are elided (``…``), and
when even that does not fit, whole columns are left out, least useful first; the zone id
is never cut. Piped, one tab-separated line per zone with every cell whole. Either way
the last line says how many zones and cloud regions were listed.
"""

from __future__ import annotations

from typing import Any

from rich.table import Column, Table

from footprint.cli._output import console, write

HEADINGS = ("zone", "name", "grid zone", "gCO2e/kWh", "price/kWh", "intensity source")
# Left out, in this order, when the terminal is too narrow for them (never the zone).
_DROP_ORDER = ("intensity source", "price/kWh", "name", "grid zone", "gCO2e/kWh")
# Columns that are elided to fit (the others are shown whole or not at all), and the
# fewest characters they are shown with.
_ELASTIC_MIN = {"name": 8, "grid zone": 10, "intensity source": 12}
# Characters a heavy-head table adds per column (padding and rule) and once per line.
_PER_COLUMN = 3
_PER_LINE = 1


def print_zones(zones: list[dict[str, Any]]) -> None:
    """The zones, one line each, then the count line."""
    rows = [zone_cells(z) for z in zones]
    if console.is_terminal:
        _print_table(rows, console.width)
    else:
        write("\t".join(HEADINGS) + "\n")
        write("".join("\t".join(row) + "\n" for row in rows))
    write(count_line(zones) + "\n")


def count_line(zones: list[dict[str, Any]]) -> str:
    """``"1 zone, 4 cloud regions"``: grid zones (countries, sub-national, world) and
    cloud regions listed."""
    clouds = sum(1 for z in zones if z["kind"] == "cloud")
    return f"{_plural(len(zones) - clouds, 'zone')}, {_plural(clouds, 'cloud region')}"


def zone_cells(z: dict[str, Any]) -> tuple[str, ...]:
    """A zone's cells under ``HEADINGS``, each on one line with no tab."""
    price = f"{z['price_per_kwh']:.4f} {z['currency']}" if z["price_per_kwh"] else "-"
    cells = (
        z["zone"],
        z["name"] or "",
        z["grid_zone"] or "",
        f"{z['intensity_g_per_kwh']:.0f}",
        price,
        z["intensity_ref"],
    )
    return tuple(" ".join(str(c).split()) for c in cells)


def column_widths(rows: list[tuple[str, ...]], width: int) -> dict[str, int]:
    """Heading -> width for the columns that fit in ``width`` characters, in order.

    Whole columns get their widest cell; the elastic ones (``_ELASTIC_MIN``) share what
    is left a character at a time, down to their minimum; columns are left out in
    ``_DROP_ORDER`` until the rest fit. The zone column is always kept, even alone and
    too wide (the console crops its lines).
    """
    natural = {h: max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(HEADINGS)}
    shown = list(HEADINGS)
    dropping = list(_DROP_ORDER)

    def least(h: str) -> int:
        return min(natural[h], _ELASTIC_MIN.get(h, natural[h]))

    while dropping and sum(least(h) + _PER_COLUMN for h in shown) + _PER_LINE > width:
        shown.remove(dropping.pop(0))
    widths = {h: least(h) for h in shown}
    spare = width - _PER_LINE - sum(w + _PER_COLUMN for w in widths.values())
    growing = [h for h in _ELASTIC_MIN if h in widths]
    while spare > 0 and growing:
        for h in list(growing):
            if widths[h] >= natural[h]:
                growing.remove(h)
            elif spare > 0:
                widths[h] += 1
                spare -= 1
    return widths


def _print_table(rows: list[tuple[str, ...]], width: int) -> None:
    widths = column_widths(rows, width)
    index = {h: i for i, h in enumerate(HEADINGS)}
    table = Table(
        *(
            Column(h, width=w, no_wrap=True, overflow="ellipsis" if h in _ELASTIC_MIN else "crop")
            for h, w in widths.items()
        )
    )
    for row in rows:
        table.add_row(*(row[index[h]] for h in widths))
    console.print(table, crop=True)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
