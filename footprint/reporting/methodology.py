"""The methodology section: how every figure of the report is made, with its formulas.

Built from the report's data alone (an old JSON report renders too); the same paragraphs
and tables in HTML and Markdown. The measured accuracy is quoted only from
``measurement.accuracy`` (``footprint bench accuracy``), never typed here.
"""

from __future__ import annotations

from typing import Any

from footprint.reporting import units
from footprint.reporting.content import Table
from footprint.reporting.percentiles import PERCENTILE_SAMPLE

ACCURACY_HEADERS = [
    "Scenario",
    "Queries",
    "Total error",
    "Per query p50",
    "p95",
    "max",
    "Queries ≥ 1 s",
    "≥ 1 s max",
    "Within bound",
]


def _scenario_cell(scenario: dict[str, Any], path: str, key: str, kind: str) -> Any:
    """A scenario's figure as (JSON path, kind), or "–" where the scenario has none."""
    value: Any = scenario
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "–" if value is None else (f"{path}.{key}", kind)


def _accuracy_section(report: dict[str, Any]) -> list[str | Table]:
    """What ``footprint bench accuracy`` measured, from ``measurement.accuracy``."""
    from footprint import __version__

    acc = report["measurement"].get("accuracy")
    if acc is None:
        return [
            f"No accuracy benchmark has been recorded for this version of footprint "
            f"({__version__}), so this report quotes no measured accuracy figure "
            "(`footprint bench accuracy --write` records one)."
        ]
    sim = acc["simulator"]
    described = {
        "idle_w": lambda v: f"{units.number(v)} W idle",
        "busy_w": lambda v: f"{units.number(v)} W busy",
        "update_period_s": lambda v: f"energy counter updated every {units.number(v * 1000)} ms",
        "sampling_period_s": lambda v: f"sampled every {units.number(v * 1000)} ms",
        "part_time_window_s": lambda v: (
            f"the part-time counter observing {units.number(v * 1000)} ms of each period"
        ),
    }
    settings = [described[k](v) if k in described else f"{k} = {v}" for k, v in sim.items()]
    scale = acc.get("scale")
    if isinstance(scale, (int, float)) and scale != 1:
        settings.append(f"scenarios run at {units.number(scale)}× their full length")
    base = "measurement.accuracy.scenarios"
    rows: list[list[str | tuple[str, str]]] = []
    for i, sc in enumerate(acc["scenarios"]):
        rows.append(
            [sc["name"]]
            + [
                _scenario_cell(sc, f"{base}.{i}", key, kind)
                for key, kind in (
                    ("queries", "count"),
                    ("total_error_pct", "pct"),
                    ("per_query_error_pct.p50", "pct"),
                    ("per_query_error_pct.p95", "pct"),
                    ("per_query_error_pct.max", "pct"),
                    ("long_queries", "count"),
                    ("long_query_error_pct.max", "pct"),
                    ("within_bound_pct", "pct"),
                )
            ]
        )
    described_once: dict[str, str] = {}
    for sc in acc["scenarios"]:
        name = sc.get("scenario") if isinstance(sc.get("scenario"), str) else sc["name"]
        described_once.setdefault(name, sc.get("description") or "")
    scenarios = "; ".join(
        f"{name}: {text}" if text else name for name, text in described_once.items()
    )
    return [
        f"Accuracy, as measured by `footprint bench accuracy` for footprint {acc['version']} "
        f"(attribution code sha256 {acc['source_digest'][:12]}…) against exact energy, each "
        "scenario in fresh processes whose first footprint action is the call, on the "
        "simulated GPU and on the NVML code path over a fake pynvml (an ideal counter, and a "
        f"part-time one) ({', '.join(settings)}). Errors are absolute, in percent of the "
        "true energy: of each scenario's total, and per query (median, 95th percentile, "
        "maximum; for queries of 1 s or more, their maximum). Within bound: the share of "
        "queries whose error was within their recorded uncertainty bound.",
        Table(ACCURACY_HEADERS, rows),
        f"Scenarios: {scenarios}.",
        f"Not covered by the simulator: {acc['not_covered']}",
    ]


def methodology(report: dict[str, Any]) -> list[tuple[str, list[str | Table]]]:
    """The method, as (heading, paragraphs and tables); the same in HTML and Markdown."""
    sources = report["measurement"]["energy_sources"]
    measured = ", ".join(f"{n:,} {name}" for name, n in sources.items()) or "none"
    bounded = report["measurement"].get("uncertainty_queries", 0)
    with_energy = report["measurement"].get("measured_queries", 0)
    return [
        (
            "What is measured",
            [
                "Each query's GPU energy is measured on the GPUs that served it. A sampler "
                "reads every GPU's cumulative energy counter (NVML "
                "nvmlDeviceGetTotalEnergyConsumption, in millijoules; integrated power "
                "readings on GPUs without the counter) every 50 ms. The energy of each "
                "interval between two readings is split among the queries running on that "
                "GPU during it, in proportion to their overlap with the interval, weighted by "
                "the power estimated for each part of it. The time of an interval when no "
                "query ran is the GPU's idle energy, stored per GPU per minute.",
                "Nothing is lost or counted twice: for every GPU, attributed energy plus idle "
                "energy equals the counter's increase over the period (energy conservation, "
                "checked by property-based tests). Prompts and responses are never stored, "
                "only token counts.",
                f"Queries in this report by how their energy was obtained: {measured}.",
            ],
        ),
        (
            "Attributed and fully loaded energy",
            [
                "Attributed energy is what the GPUs spent while a query ran: its share of "
                "each interval when several queries ran at once (continuous batching). It is "
                "the figure to compare models, prompts and optimisations.",
                "Fully loaded energy adds the idle energy of the same GPUs over the same "
                "period, spread over the queries each GPU served in proportion to their "
                "GPU-seconds (a query that ran on n GPUs counts its GPU-seconds / n on each). "
                "It is what holding the GPUs for this workload cost, the figure for an "
                "inventory. Idle energy of GPUs that served no query in the period is shown "
                "as unallocated in the totals. Idle CO2e and cost are priced with the factors "
                "of the queries they are spread over.",
            ],
        ),
        (
            "Capacity: GPU-hours held and busy",
            [
                "A GPU is held while it is measured (idle_energy keeps a row per GPU, minute "
                "and process with the seconds measured, whatever ran). Per GPU: held = Σ over "
                "its minutes of the seconds measured (the longest of the processes measuring "
                "it then: they held it once) / 3600; busy = "
                "Σ GPU-seconds of its queries / 3600 (n GPUs: 1/n each); idle = held − busy "
                "(at least 0); utilisation = busy / held. Totals add the GPUs; a model's or "
                "group's held GPU-hours are its busy ones plus its share of its GPUs' idle "
                "GPU-hours, spread like idle energy (by GPU-seconds). With --by day or host, "
                "each group takes the time held in that day or on that host.",
            ],
        ),
        (
            "From energy to CO2e",
            [
                "Facility energy = GPU energy × PUE (power usage effectiveness) of the data "
                "centre: cloud providers' published fleet PUE, or a configured value. "
                "Location-based CO2e = facility energy × the carbon intensity of the grid "
                "zone where the query ran (gCO2e/kWh): a static annual average from "
                "codecarbon's data (or, for a GCP region, Google's own figure for it), an "
                "hourly series given by the user or a live value from Electricity Maps. The "
                "factor and its source are stored with every query.",
                "Market-based CO2e uses a contractual factor (power purchase agreement, "
                "green tariff, residual mix) where one is configured; it is shown only then.",
                "Embodied CO2e is the GPU's manufacturing footprint amortised over its "
                "service life: embodied kgCO2e × 1000 × seconds / lifetime seconds. "
                "Attributed: over the queries' GPU-seconds; with the time held: over the "
                "GPU-hours held (busy + idle share), as SCI charges it.",
            ],
        ),
        (
            "Cost",
            [
                "Electricity cost = facility energy × the electricity price of the zone, in "
                "its own currency, converted to US dollars at the annual average exchange "
                "rate. GPU time (compute cost) = GPU-seconds / 3600 × $/GPU-hour. What a "
                "GPU-hour costs depends on who owns the GPU (stored with each query):",
                "Rented (a cloud region, by default): $/GPU-hour is the provider's on-demand "
                "price for that GPU model, which already pays for electricity, cooling and "
                "hardware. Cost = GPU time; the electricity cost is shown beside it (the part "
                "of the price that scales with energy) and never added.",
                "Owned (elsewhere, by default): $/GPU-hour is the GPU's purchase price "
                "amortised over its lifetime (purchase / (lifetime years × 8760 h)). Cost = "
                "GPU time + electricity (× PUE, already in the electricity cost).",
                "Queries recorded before ownership was stored are costed as owned ones "
                "were: GPU time + electricity.",
                "Attributed cost is the GPU time the queries used (busy). Fully loaded cost "
                "adds the idle time of the GPUs held: per GPU, idle GPU-hours × the $/GPU-hour "
                "of its queries (their compute cost per GPU-second), spread over them by "
                "GPU-seconds like idle energy; for owned GPUs also the idle energy's "
                "electricity. GPUs that served no query have no price here: their held "
                "GPU-hours are counted, not costed.",
            ],
        ),
        (
            "Unknown is not zero",
            [
                "A figure whose inputs are all missing (no GPU energy measured, no "
                "electricity price, no GPU-hour price) is unknown: null in the JSON, – in the "
                "tables, an empty cell in the CSV (no text in a number column); never 0. A "
                "total over some known and some unknown inputs adds the known ones, and the "
                "notes say how many queries lack what and how to supply it. Means divide by "
                "the queries that have the figure; per 1k output tokens divides by every "
                "query's output tokens.",
            ],
        ),
        (
            "Software Carbon Intensity (ISO/IEC 21031:2024)",
            [
                "SCI = ((E × I) + M) per R. E × I is the fully loaded location-based CO2e "
                "(facility energy × grid intensity, idle energy included), M the embodied "
                "CO2e of the GPUs over the time reserved for the work: the GPU-hours held, "
                "not only the busy ones, and R the functional unit: one query (of those with "
                "a CO2e figure), and 1,000 output tokens. The boundary is the inference GPUs: "
                "CPU, host memory, network and storage are not included.",
            ],
        ),
        (
            "Per-query figures",
            [
                "Means divide a model's totals by its queries that have the figure. p50 and "
                "p95 are nearest-rank percentiles (the ⌈p × n⌉-th of the n values in "
                "increasing order) of the per-query figures of the queries with measured "
                "energy (for CO2e, of those with a CO2e figure; for cost, of those with a "
                "known cost, by their ownership), failed queries included (they used the "
                "GPUs). They are exact, computed from all of a model's queries, except for a "
                f"model with more than {PERCENTILE_SAMPLE:,} such queries: there they come "
                f"from a deterministic sample of about {PERCENTILE_SAMPLE:,} of its queries (a "
                "hash of the record id), as the notes then say with each sample's size. "
                "Latency (from the call's start to its end) and time to first token are "
                "percentiles of the same queries (time to first token: of those that "
                "recorded one). Per 1k output tokens divides the totals, failed queries "
                "included, by the output tokens of the period; $ per 1M output tokens divides "
                "the cost (attributed, or fully loaded) by the output tokens, and $ per 1M "
                "tokens by the input and output tokens together.",
            ],
        ),
        _phase_method(report),
        *_group_method(report),
        (
            "What if elsewhere",
            [
                "The what-if table prices the period's fully loaded GPU energy with other "
                "zones' PUE, electricity price and grid intensity. One grid has one figure: a "
                "zone on a grid the work ran on keeps the intensity the work was priced with "
                "there, so only PUE and price differ; a zone elsewhere takes its static "
                "figure, and the table marks where that is a different kind of figure "
                "(a provider's own against codecarbon's) from the as-run row.",
            ],
        ),
        (
            "Measurement uncertainty",
            [
                "NVML documents its power readings as accurate to within ±5% of the current "
                "draw; the cumulative energy counter used here integrates the board's power "
                "and is updated about every 100 ms, so short queries are resolved to "
                "fractions of a counter update. footprint estimates each update's instant; "
                "inside each interval between two readings, the stretches where no query ran "
                "get the GPU's idle power (learned from the intervals themselves) and the "
                "busy stretches the rest, shared equally among the queries running at each "
                "instant. Shorter queries are individually less certain, but totals are exact "
                "to the counter, since energy is conserved.",
                "Each record carries energy_uncertainty_j, a bound on the error of its "
                "attributed energy under that rule, built from the counter's timing "
                "uncertainty, the spread of the idle-power estimate, the change in busy power "
                "where the set of running queries changed, and the counter's quantisation, "
                "over the parts of the call that shared a counter interval with idle time or "
                "with other queries starting or ending. The ± figures of this "
                "report are sums of these bounds: conservative, as if every query's error had "
                f"the same sign. {bounded:,} of the {with_energy:,} queries with GPU energy in "
                "this report carry a bound.",
                *_accuracy_section(report),
                "Grid intensity factors, PUE and prices are averages with their own "
                "uncertainty, typically larger than the measurement's: their sources are "
                "listed below.",
            ],
        ),
    ]


def _phase_method(report: dict[str, Any]) -> tuple[str, list[str | Table]]:
    """How the per-1M-input-token and per-1M-output-token figures are made, and the
    token-aware rule behind the split (its constants read from the code)."""
    from footprint.attribution.tokens import MAX_WINDOW_S, SPAN_WINDOWS, WINDOW_S
    from footprint.attribution.weights import BLOCK_S, MIN_BLOCKS, SPAN_BLOCKS

    totals = report.get("totals", {})
    phase = totals.get("per_1m_phase_tokens") or {}
    split = int(phase.get("queries") or 0)
    queries = int(totals.get("queries") or 0)
    return (
        "Prefill and decode: per 1M input and output tokens",
        [
            "Each record's GPU energy is split at the call's first token: prefill_energy_j "
            "is what its GPUs gave it from its start to its first token (reading the "
            "prompt), decode_energy_j from its first token to its end (writing the answer); "
            "the two sum to energy_j. A call is split when it tells its time to first token "
            "and its token counts (the attribution is told both with its end); under the "
            "equal rule, not when part of it went unmeasured. Per 1M input tokens = Σ "
            "prefill energy / Σ input tokens × 10^6 and per 1M output tokens = Σ decode "
            "energy / Σ output tokens × 10^6, both over the same queries: those carrying "
            "both phase energies and both "
            f"token counts ({split:,} of the {queries:,} queries in this report). The first "
            "token is made by the prefill, so it counts in the prefill energy, while the "
            "output tokens divide the decode energy whole: the usual way providers price.",
            "CO2e and cost are split in the same proportion as energy: the phase energy is "
            "priced at the CO2e and the attributed cost (GPU time, plus electricity for owned "
            "GPUs) per joule of its queries' energy, per hourly rollup row (the same model, "
            "GPUs and factors). Fully loaded idle energy is not included.",
            "How a call's energy is split in time follows the attribution rule. Under the "
            "equal rule the busy energy of each instant is shared equally among the calls "
            "running, and a call's prefill energy is what it received before its first "
            'token. Under the token rule (`attribution = "tokens"`, or `"auto"`, the '
            "default, from the first call that ends with token counts) the GPU's busy power "
            "is modelled as P = F·steps/s + α·Σ prefill tokens/s + β·Σ decode tokens/s + "
            "γ·Σ decode tokens/s × context: each call carries its input tokens in its "
            "prefill, before its first token, and its output tokens in its decode, after "
            "it, and is charged its own terms plus an equal share of the fixed term F with "
            "the calls it ran with (the Shapley value of that additive model). The weights "
            "F, α, β and γ are learned per GPU from the energy counter by non-negative, "
            "exponentially weighted least squares of the busy energy on the token work, "
            f"over rows of {SPAN_BLOCKS} consecutive blocks of about "
            f"{units.number(BLOCK_S)} busy seconds, and used once {MIN_BLOCKS} rows "
            "determine them (busy energy that no fit shares is split equally, and counted). "
            "The measured busy energy is shared over windows of "
            f"{units.number(WINDOW_S)} busy seconds (longer where the calls are long: "
            f"{units.number(SPAN_WINDOWS)} times their length, up to "
            f"{units.number(MAX_WINDOW_S)} s) in proportion to each call's predicted "
            "energy, so the shares of a window sum to what the counter measured, and a "
            "call's prefill energy is its share before its first token. A call running "
            "across a window's edge has its output tokens placed on either side as the "
            "server stepped (a token a step, by its step time fitted on the calls' own "
            "decode times). The fitted weights "
            "are not a report figure: `footprint bench batching` measures how far each "
            "rule's split is from the truth on a simulated server.",
        ],
    )


def _group_method(report: dict[str, Any]) -> list[tuple[str, list[str | Table]]]:
    """How --by tag:NAME groups (chargeback), when the report is grouped by a tag."""
    by = report.get("by") or report.get("filters", {}).get("by") or ""
    if not by.startswith("tag:"):
        return []
    name = by[len("tag:") :]
    return [
        (
            "Chargeback by tag",
            [
                f"The groups are the values of the tag {name!r} given to track() or query() "
                f"(JSON text of each query's tags); queries without it are one group, "
                f"(no {name}). Each group's figures are those of its queries, read from "
                "every query of the period, with their share of the idle energy and idle "
                "GPU-hours of the GPUs they ran on: the groups add up to the totals, GPUs "
                "that served no query apart. The idle energy's CO2e and cost are split "
                "among the groups by each query's idle share times its own CO2e and cost "
                "per joule, and scaled to the totals' (which price an hour's idle share at "
                "that hour's average per joule).",
            ],
        )
    ]
