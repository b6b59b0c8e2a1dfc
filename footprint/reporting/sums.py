"""The report's sums: grouped rows folded into per-model, per-group, per-day and total sums.

A grouped row (``footprint.reporting.grouped``) holds the sums of the queries sharing a
model, day and the factors they were priced with. ``Fold.add`` turns each into the
accumulator keys of ``SUM_KEYS`` and adds it to its model, its group (``--by``), the
totals and its model's day. What is not known stays apart from what is 0: each figure has
a count of the queries that carry it (``energy_n``, ``co2e_n``, ``energy_cost_n``,
``compute_n``, …); a figure whose count is 0 is shown as unknown (null), never 0.

A grouped row's counts follow from its key columns, the same way whether it comes from
the hourly rollups or from a scan of ``queries``: energy is known for its
``measured_queries``; CO2e and embodied carbon where it was priced with a grid intensity;
the energy cost where it has an electricity price (and a USD figure or a known exchange
rate); the compute cost where it has a $/GPU-hour. A non-zero sum is known whatever the
keys say.

Money by ``ownership`` (``footprint.storage.models.QueryRecord``): a ``rented`` query's
cost is its compute cost alone (the hourly price includes the electricity); an ``owned``
one's is its compute cost plus its energy cost; a query with no ownership (recorded before
the column) is costed as ``owned`` was: energy plus compute. ``billed_energy_cost_usd`` is
the part of the energy cost that is in the cost.

Idle energy and idle capacity are not known until every row is in (``settle``, with
``footprint.reporting.capacity``): until then each sum keeps, per set of GPUs, what its
share will be computed from (``SPREAD``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from footprint.pricing.factors import bills_energy
from footprint.reporting.request import ReportRequest

JOULES_PER_KWH = 3_600_000.0

# The queries carrying both phase energies and both token counts (``phase_n``): their
# prefill and decode energy, input and output tokens; that energy's CO2e and cost, priced
# at the CO2e and cost per joule of the grouped row it is in (same model, hour, GPUs and
# factors), with the count of the rows where each was known.
PHASE_KEYS = (
    "phase_n",
    "prefill_j",
    "decode_j",
    "phase_input_tokens",
    "phase_output_tokens",
    "prefill_co2e_g",
    "decode_co2e_g",
    "phase_co2e_n",
    "prefill_cost_usd",
    "decode_cost_usd",
    "phase_cost_n",
)
SUM_KEYS = (
    "queries",
    "errors",
    "input_tokens",
    "output_tokens",
    "gpu_seconds",
    "duration_s",
    "energy_j",
    "energy_n",
    "energy_uncertainty_j",
    "uncertainty_n",
    "facility_energy_j",
    "co2e_g",
    "co2e_n",
    "market_co2e_g",
    "market_n",
    "embodied_co2e_g",
    "embodied_n",
    "energy_cost_usd",
    "energy_cost_n",
    "billed_energy_cost_usd",
    "billed_energy_cost_n",
    "compute_cost_usd",
    "compute_n",
    "no_energy",
    "no_electricity_price",
    "no_gpu_price",
    "rented_queries",
    "owned_queries",
    # shares of the idle time of the GPUs, filled by ``Fold.settle`` (or a group's own)
    "idle_j",
    "idle_co2e_g",
    "idle_energy_cost_usd",
    "idle_billed_energy_cost_usd",
    "idle_gpu_s",
    "idle_compute_cost_usd",
    "idle_embodied_co2e_g",
    *PHASE_KEYS,
)
# Per set of GPUs, what idle shares are computed from: GPU-seconds, GPU-seconds × CO2e per
# joule, × energy cost per joule, × billed energy cost per joule; compute cost; embodied.
SPREAD = 6


def zero() -> dict[str, Any]:
    """An empty accumulator (with its per-GPU-set spread, ``_idle``)."""
    acc: dict[str, Any] = dict.fromkeys(SUM_KEYS, 0)
    acc["_idle"] = {}
    return acc


def add(into: dict[str, Any], row: dict[str, Any]) -> None:
    """Add the sums of ``row`` to ``into`` (both accumulators)."""
    for key in SUM_KEYS:
        into[key] += row[key]


def phase_sums(row: dict[str, Any], sums: dict[str, Any]) -> dict[str, Any]:
    """A grouped row's phase sums (``PHASE_KEYS``), given its other ``sums``: its phase
    energy priced like the rest of its energy, per joule (the row's CO2e and attributed
    cost over its energy). A row from a source without phase columns (a tag scan) has
    none."""
    prefill_j = row.get("prefill_energy_j") or 0.0
    decode_j = row.get("decode_energy_j") or 0.0
    out: dict[str, Any] = {
        "phase_n": row.get("phase_queries") or 0,
        "prefill_j": prefill_j,
        "decode_j": decode_j,
        "phase_input_tokens": row.get("phase_input_tokens") or 0,
        "phase_output_tokens": row.get("phase_output_tokens") or 0,
        "prefill_co2e_g": 0.0,
        "decode_co2e_g": 0.0,
        "phase_co2e_n": 0,
        "prefill_cost_usd": 0.0,
        "decode_cost_usd": 0.0,
        "phase_cost_n": 0,
    }
    energy_j = sums["energy_j"]
    if not out["phase_n"] or not energy_j or energy_j <= 0:
        return out
    if sums["co2e_n"]:
        per_j = sums["co2e_g"] / energy_j
        out.update(prefill_co2e_g=prefill_j * per_j, decode_co2e_g=decode_j * per_j)
        out["phase_co2e_n"] = 1
    if sums["compute_n"] or sums["billed_energy_cost_n"]:
        per_j = (sums["compute_cost_usd"] + sums["billed_energy_cost_usd"]) / energy_j
        out.update(prefill_cost_usd=prefill_j * per_j, decode_cost_usd=decode_j * per_j)
        out["phase_cost_n"] = 1
    return out


def split_gpus(gpus: str | None) -> list[str]:
    """The GPU UUIDs of a ``gpus`` column (a JSON list); none when it is not one."""
    try:
        uuids = json.loads(gpus or "[]")
    except ValueError:
        return []
    return [str(u) for u in uuids] if isinstance(uuids, list) else []


FACTOR_NAMES = (
    "zone",
    "intensity_source",
    "pue",
    "price_per_kwh",
    "currency",
    "usd_per_gpu_hour",
    "market_intensity_g_per_kwh",
    "ownership",
    "gpu_price_source",
)


class Fold:
    """The grouped rows, folded one at a time into the sums the report shows.

    Per model, per group (--by day|region|host), per model and day, in total; the factor
    sets, zones, days and energy sources seen; what the percentiles need (measured queries
    per model, currencies to convert); per GPU, its GPU-seconds and what its idle time is
    priced with (``devices``), and with --by day|host, its GPU-seconds per group.
    """

    def __init__(self, request: ReportRequest, device_gs: dict[str, float] | None) -> None:
        from footprint.reporting.request import tag_name

        self.request = request
        self.given_device_gs = device_gs  # with --model: GPU-seconds of every model
        self.group_by = None if tag_name(request.by) else request.by
        self.rows = 0
        self.queries = 0
        self.by_model: dict[str, dict[str, Any]] = {}
        self.by_group: dict[Any, dict[str, Any]] = {}
        self.by_day: dict[str, dict[str, list[float]]] = {}
        self.total = zero()
        self.by_source: dict[str, int] = defaultdict(int)
        # Per model, its queries by energy_source (a CPU-only host's: cpu).
        self.sources_by_model: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.factor_sets: dict[tuple, dict[str, Any]] = {}
        self.zones: dict[str, list[float]] = {}  # zone: [GPU J, facility J, CO2e g, CO2e n]
        self.measured: dict[str, int] = defaultdict(int)
        self.unconverted_models: set[str] = set()
        self.rate_refs: dict[str | None, tuple[float, str] | None] = {}
        self.converted: dict[str, int] = defaultdict(int)
        self.unpriced = 0
        self.gpu_sets: dict[str | None, list[str]] = {}
        self.device_gs: dict[str, float] = defaultdict(float)
        # per GPU, its share of each row's spread vector (what its idle time is priced at)
        self.devices: dict[str, list[float]] = {}
        self.group_device_gs: dict[tuple[Any, str], float] = defaultdict(float)
        # per GPU, the models that ran on it and the hosts they ran on (capacity table)
        self.device_models: dict[str, set[str]] = defaultdict(set)
        self.device_hosts: dict[str, set[str]] = defaultdict(set)
        self.no_gpu_price_reasons: dict[str, int] = defaultdict(int)
        self.factors: dict[str | None, tuple[float, float]] = {}  # set by ``settle``

    @property
    def rates(self) -> dict[str, float]:
        """USD per unit of each currency whose energy cost has no USD figure in the records."""
        return {c: r[0] for c, r in self.rate_refs.items() if c and r is not None}

    def _rate(self, currency: str | None) -> tuple[float, str] | None:
        from footprint.pricing import usd_per_unit

        if currency not in self.rate_refs:
            self.rate_refs[currency] = usd_per_unit(currency) if currency else None
        return self.rate_refs[currency]

    def sums_of(self, row: dict[str, Any]) -> dict[str, Any]:
        """A grouped row as accumulator sums (``SUM_KEYS``), its unknowns counted."""
        model = row["model"]
        n = row["queries"]
        measured = row["measured_queries"]
        energy_cost = row["energy_cost_usd"]
        energy_cost_n = measured if row["price_per_kwh"] is not None else 0
        unconverted = row["unconverted_queries"]
        if unconverted:
            self.unconverted_models.add(model)
            currency = row["currency"]
            rate = self._rate(currency)
            if rate is None:
                self.unpriced += unconverted
                energy_cost_n = max(0, energy_cost_n - unconverted)
            else:
                energy_cost += row["unconverted_energy_cost"] * rate[0]
                self.converted[currency] += unconverted
        if energy_cost and not energy_cost_n:
            energy_cost_n = measured or n
        co2e_n = measured if row["intensity_min"] is not None else 0
        if row["co2e_g"] and not co2e_n:
            co2e_n = measured or n
        embodied_n = (measured or n) if row["embodied_co2e_g"] else co2e_n
        compute_n = measured if row["usd_per_gpu_hour"] is not None else 0
        if row["compute_cost_usd"] and not compute_n:
            compute_n = n
        ownership = row.get("ownership")
        billed = bills_energy(ownership)
        sums = {
            "queries": n,
            "errors": row["errors"],
            "input_tokens": row["input_tokens"],
            "output_tokens": row["output_tokens"],
            "gpu_seconds": row["gpu_seconds"],
            "duration_s": row["duration_s"],
            "energy_j": row["energy_j"],
            "energy_n": measured,
            "energy_uncertainty_j": row["energy_uncertainty_j"],
            "uncertainty_n": row["uncertainty_queries"],
            "facility_energy_j": row["facility_energy_j"],
            "co2e_g": row["co2e_g"],
            "co2e_n": co2e_n,
            "market_co2e_g": row["market_co2e_g"],
            "market_n": row["market_queries"],
            "embodied_co2e_g": row["embodied_co2e_g"],
            "embodied_n": embodied_n,
            "energy_cost_usd": energy_cost,
            "energy_cost_n": energy_cost_n,
            "billed_energy_cost_usd": energy_cost if billed else 0.0,
            "billed_energy_cost_n": energy_cost_n if billed else 0,
            "compute_cost_usd": row["compute_cost_usd"],
            "compute_n": compute_n,
            "no_energy": n - measured,
            "no_electricity_price": n if row["price_per_kwh"] is None else 0,
            "no_gpu_price": n if row["usd_per_gpu_hour"] is None else 0,
            "rented_queries": n if ownership == "rented" else 0,
            "owned_queries": n if ownership == "owned" else 0,
            "idle_j": 0.0,
            "idle_co2e_g": 0.0,
            "idle_energy_cost_usd": 0.0,
            "idle_billed_energy_cost_usd": 0.0,
            "idle_gpu_s": 0.0,
            "idle_compute_cost_usd": 0.0,
            "idle_embodied_co2e_g": 0.0,
        }
        sums.update(phase_sums(row, sums))
        return sums

    @staticmethod
    def spread_of(sums: dict[str, Any], row: dict[str, Any]) -> list[float]:
        """What a row's idle shares are computed from (``SPREAD`` figures)."""
        seconds = sums["gpu_seconds"]
        energy = sums["energy_j"]
        co2e_per_j = cost_per_j = billed_per_j = 0.0
        if energy > 0:
            co2e_per_j = sums["co2e_g"] / energy
            cost_per_j = sums["energy_cost_usd"] / energy
            billed_per_j = sums["billed_energy_cost_usd"] / energy
        elif row["pue"] and row["intensity_min"] is not None:
            mid = (row["intensity_min"] + row["intensity_max"]) / 2
            co2e_per_j = row["pue"] * mid / JOULES_PER_KWH
        return [
            seconds,
            seconds * co2e_per_j,
            seconds * cost_per_j,
            seconds * billed_per_j,
            sums["compute_cost_usd"],
            sums["embodied_co2e_g"],
        ]

    def add(self, row: dict[str, Any]) -> None:
        """Fold one grouped row in."""
        self.rows += 1
        model = row["model"]
        sums = self.sums_of(row)
        self.queries += sums["queries"]
        self.measured[model] += sums["energy_n"]
        if sums["no_gpu_price"]:
            self.no_gpu_price_reasons[row.get("gpu_price_source") or ""] += sums["queries"]
        spread = self._add_devices(row, sums)
        self._add_sums(row, sums, spread)
        self._add_day(row, sums)
        source = row["energy_source"] or "missing"
        self.by_source[source] += sums["queries"]
        self.sources_by_model[model][source] += sums["queries"]
        self._add_zone(row["zone"], sums)
        self._add_factors(row)

    def _add_devices(self, row: dict[str, Any], sums: dict[str, Any]) -> list[float] | None:
        """Share a row's GPU-seconds and idle spread among its GPUs; the spread (None for a
        row without GPUs or GPU-seconds)."""
        gpus = row["gpus"]
        uuids = self.gpu_sets.get(gpus)
        if uuids is None:
            uuids = self.gpu_sets[gpus] = split_gpus(gpus)
        if not (uuids and sums["gpu_seconds"]):
            return None
        spread = self.spread_of(sums, row)
        share = 1.0 / len(uuids)
        group = self._group_name(row)
        for uuid in uuids:
            self.device_gs[uuid] += spread[0] * share
            self.device_models[uuid].add(row["model"])
            if row.get("host"):
                self.device_hosts[uuid].add(row["host"])
            vector = self.devices.get(uuid)
            if vector is None:
                self.devices[uuid] = [v * share for v in spread]
            else:
                for i in range(SPREAD):
                    vector[i] += spread[i] * share
            if self.group_by in ("day", "host"):
                self.group_device_gs[(group, uuid)] += spread[0] * share
        return spread

    def _add_sums(
        self, row: dict[str, Any], sums: dict[str, Any], spread: list[float] | None
    ) -> None:
        """Add a row's sums (and idle spread, per GPU set) to its model's, its group's and
        the total accumulators."""
        gpus = row["gpus"]
        targets = [self._acc(self.by_model, row["model"]), self.total]
        if self.group_by is not None and self.group_by != "model":
            targets.append(self._acc(self.by_group, self._group_name(row)))
        for acc in targets:
            add(acc, sums)
            if spread is not None:
                parts = acc["_idle"].get(gpus)
                if parts is None:
                    acc["_idle"][gpus] = list(spread)
                else:
                    for i in range(SPREAD):
                        parts[i] += spread[i]

    def _add_day(self, row: dict[str, Any], sums: dict[str, Any]) -> None:
        """Add a row's figures to its model's on its day."""
        day = self.by_day.get(row["day"])
        if day is None:
            day = self.by_day[row["day"]] = {}
        cost = sums["compute_cost_usd"] + sums["billed_energy_cost_usd"]
        cost_n = max(sums["compute_n"], sums["billed_energy_cost_n"])
        figures = (
            sums["queries"],
            sums["energy_j"],
            sums["energy_n"],
            sums["co2e_g"],
            sums["co2e_n"],
            cost,
            cost_n,
            sums["gpu_seconds"],
        )
        found = day.get(row["model"])
        if found is None:
            day[row["model"]] = list(figures)
        else:
            for i, value in enumerate(figures):
                found[i] += value

    def _add_zone(self, zone: str | None, sums: dict[str, Any]) -> None:
        """Add a row's energy and CO2e to its zone's (none for a row without a zone)."""
        if not zone:
            return
        z = self.zones.get(zone)
        if z is None:
            z = self.zones[zone] = [0.0, 0.0, 0.0, 0]
        z[0] += sums["energy_j"]
        z[1] += sums["facility_energy_j"] if sums["co2e_n"] else 0.0
        z[2] += sums["co2e_g"]
        z[3] += sums["co2e_n"]

    def _group_name(self, row: dict[str, Any]) -> Any:
        by = self.group_by
        if by == "day":
            return row["day"]
        if by == "region":
            return row["zone"] or "(no zone)"
        if by == "host":
            return row["host"]
        return None

    @staticmethod
    def _acc(into: dict[Any, dict[str, Any]], name: Any) -> dict[str, Any]:
        acc = into.get(name)
        if acc is None:
            acc = into[name] = zero()
        return acc

    def _add_factors(self, row: dict[str, Any]) -> None:
        """Count a grouped row's queries under the factor set it was priced with."""
        key = tuple(row.get(name) for name in FACTOR_NAMES)
        entry = self.factor_sets.get(key)
        if entry is None:
            entry = self.factor_sets[key] = {
                "zone": row["zone"],
                "intensity_source": row["intensity_source"],
                "intensity_g_per_kwh_min": row["intensity_min"],
                "intensity_g_per_kwh_max": row["intensity_max"],
                "market_intensity_g_per_kwh": row["market_intensity_g_per_kwh"],
                "pue": row["pue"],
                "price_per_kwh": row["price_per_kwh"],
                "currency": row["currency"],
                "usd_per_gpu_hour": row["usd_per_gpu_hour"],
                "ownership": row.get("ownership"),
                "gpu_price_source": row.get("gpu_price_source"),
                "queries": 0,
            }
        entry["queries"] += row["queries"]
        for bound, pick in (("intensity_g_per_kwh_min", min), ("intensity_g_per_kwh_max", max)):
            value = row["intensity_min" if pick is min else "intensity_max"]
            if value is not None:
                current = entry[bound]
                entry[bound] = value if current is None else pick(current, value)

    def denominators(self) -> dict[str, float]:
        """GPU-seconds per GPU that its idle time is spread over (every model's)."""
        return self.given_device_gs if self.given_device_gs is not None else self.device_gs

    def settle(self, idle_j: dict[str, float], idle_s: dict[str, float]) -> None:
        """Put each GPU's idle energy (``idle_j``) and idle GPU-seconds (``idle_s``) into
        the sums, shared by GPU-seconds among the queries that ran on it.

        A query on n GPUs counts its GPU-seconds / n on each. Idle CO2e and costs are
        priced like the queries they are spread over: the CO2e and energy cost per joule
        of the rows, their compute cost per GPU-second (idle GPU-hours at the $/GPU-hour
        of the queries on that GPU) and their embodied carbon per GPU-second.
        """
        totals = self.denominators()
        for gpus, uuids in self.gpu_sets.items():
            per_j = per_s = 0.0
            for uuid in uuids:
                busy = totals.get(uuid, 0.0)
                if busy > 0:
                    per_j += idle_j.get(uuid, 0.0) / len(uuids) / busy
                    per_s += idle_s.get(uuid, 0.0) / len(uuids) / busy
            self.factors[gpus] = (per_j, per_s)
        for acc in self.accumulators():
            for gpus, vector in acc.pop("_idle", {}).items():
                per_j, per_s = self.factors.get(gpus, (0.0, 0.0))
                acc["idle_j"] += vector[0] * per_j
                acc["idle_co2e_g"] += vector[1] * per_j
                acc["idle_energy_cost_usd"] += vector[2] * per_j
                acc["idle_billed_energy_cost_usd"] += vector[3] * per_j
                acc["idle_gpu_s"] += vector[0] * per_s
                acc["idle_compute_cost_usd"] += vector[4] * per_s
                acc["idle_embodied_co2e_g"] += vector[5] * per_s

    def accumulators(self) -> list[dict[str, Any]]:
        return [*self.by_model.values(), *self.by_group.values(), self.total]

    def device_rates(self, uuid: str) -> list[float] | None:
        """Per idle joule (CO2e, energy cost, billed energy cost) and per idle GPU-second
        (compute cost, embodied) of one GPU: its queries' rates; None without queries."""
        vector = self.devices.get(uuid)
        if not vector or vector[0] <= 0:
            return None
        seconds = vector[0]
        return [
            vector[1] / seconds,
            vector[2] / seconds,
            vector[3] / seconds,
            vector[4] / seconds,
            vector[5] / seconds,
        ]
