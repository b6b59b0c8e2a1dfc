"""``footprint bench``: the benchmarks, each measured on this machine and printed or as JSON.

The benchmarks themselves live in :mod:`footprint.bench`; here are their options and their lines.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from footprint.cli._errors import InputError
from footprint.cli._output import JsonOption, console, show

bench_app = typer.Typer(help="Benchmarks, measured on this machine.", no_args_is_help=True)


@bench_app.command("report")
def bench_report(
    rows: Annotated[
        int | None,
        typer.Option(
            min=100,
            max=20_000_000,
            help="Synthetic query records (default 1,000,000; with --models, 10 per model, "
            "at least 100,000).",
        ),
    ] = None,
    repeats: Annotated[
        int | None,
        typer.Option(min=1, max=10, help="Timed runs per side (default 2; 1 with --models)."),
    ] = None,
    models: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=1_000_000,
            help="Distinct models: time `footprint report` writing every format, and its "
            "peak memory.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """`footprint report --format json` as a whole command vs hand-written SQL, same file;
    with --models, the whole report in every format over that many models."""
    from footprint.bench.report import run, run_models

    if models is not None:
        result = run_models(models, rows=rows, repeats=repeats or 1)
        show(result, as_json, _print_report_models)
        return
    result = run(rows=rows or 1_000_000, repeats=repeats or 2)
    show(result, as_json, _print_report)


def _print_report_models(result: dict[str, Any]) -> None:
    rss = result["peak_rss_mb"]
    console.print(
        f"{result['models']:,} models, {result['rows']:,} records: footprint report, "
        f"every format, {result['report_s']:.2f} s, peak memory "
        f"{'unknown' if rss is None else f'{rss:.0f} MB'} (targets: ≤ "
        f"{result['target_report_s']:.0f} s, ≤ {result['target_peak_rss_mb']:.0f} MB)"
    )


def _print_report(result: dict[str, Any]) -> None:
    console.print(
        f"{result['rows']:,} records: footprint report {result['report_s']:.2f} s, "
        f"hand-written SQL {result['raw_sql_s']:.2f} s: ratio {result['ratio']:.2f}; "
        f"--by tag:team {result['tag_report_s']:.2f} s (targets: ≤ 3 s, ≤ 2, ≤ 3 s)"
    )


@bench_app.command("ingest")
def bench_ingest(
    rows: Annotated[
        int, typer.Option(min=1000, max=10_000_000, help="Records per side.")
    ] = 200_000,
    as_json: JsonOption = False,
) -> None:
    """Records/s through footprint's writer vs raw sqlite3 executemany, same rows."""
    from footprint.bench.ingest import run

    show(run(rows=rows), as_json, _print_ingest)


def _print_ingest(result: dict[str, Any]) -> None:
    console.print(
        f"footprint writer {result['footprint_rows_per_s']:,.0f} rows/s, raw sqlite3 "
        f"executemany {result['raw_sqlite_rows_per_s']:,.0f} rows/s: ratio {result['ratio']:.2f}"
    )


@bench_app.command("overhead")
def bench_overhead(
    as_json: JsonOption = False,
    batches: Annotated[int, typer.Option(min=10, help="Timed batches per side.")] = 300,
) -> None:
    """Per-call cost of @track on a no-op, against the bare call and codecarbon's tasks."""
    from footprint.bench.overhead import run

    show(run(batches=batches), as_json, _print_overhead)


def _print_overhead(result: dict[str, Any]) -> None:
    console.print(
        f"@track adds {result['track_us_median']:.2f} µs median "
        f"(p99 {result['track_us_p99']:.2f} µs) per call; codecarbon start_task/stop_task "
        f"{result['codecarbon_task_us_median']:.0f} µs: "
        f"{result['ratio_codecarbon_over_track']:.0f}× more."
    )
    if "track_otel_span_us_median" in result:
        console.print(
            f"With OpenTelemetry imported: {result['track_otel_no_span_us_median']:.2f} µs "
            f"with no span current, {result['track_otel_span_us_median']:.2f} µs in a span "
            "(its trace ids recorded)."
        )


@bench_app.command("attribution")
def bench_attribution(
    as_json: JsonOption = False,
    spans: Annotated[int, typer.Option(min=1000, help="Spans per concurrency level.")] = 40_000,
) -> None:
    """Resolver cost per span at 100, 1,000 and 4,000 spans running at once on one GPU,
    under the equal split and the token rule."""
    from footprint.bench.attribution import run

    show(run(spans=spans), as_json, _print_attribution)


def _print_attribution(result: dict[str, Any]) -> None:
    for entry, tokens, ratio in zip(
        result["runs"], result["token_runs"], result["tokens_over_equal"], strict=True
    ):
        console.print(
            f"{entry['concurrent']:>5} at once: {entry['us_per_span']:.2f} µs per span equal "
            f"split, {tokens['us_per_span']:.2f} by tokens ({ratio:.2f}×; "
            f"{entry['spans']:,} spans)"
        )
    console.print(
        f"highest / lowest concurrency: {result['ratio_highest_over_lowest']:.2f}× equal "
        f"split, {result['token_ratio_highest_over_lowest']:.2f}× by tokens"
    )


@bench_app.command("pipeline")
def bench_pipeline(
    as_json: JsonOption = False,
    rate: Annotated[int, typer.Option(min=1, max=1_000_000, help="Calls per second.")] = 20_000,
    seconds: Annotated[float, typer.Option(min=0.5, max=600, help="How long.")] = 10.0,
) -> None:
    """Sustained calls/s through track, resolve, price and write in one process."""
    from footprint.bench.pipeline import run

    show(run(rate_per_s=rate, seconds=seconds), as_json, _print_pipeline)


def _print_pipeline(result: dict[str, Any]) -> None:
    console.print(
        f"{result['calls']:,} calls at {result['achieved_rate_per_s']:,.0f}/s: "
        f"{result['written_when_calls_stopped']:,} written when they stopped; exit wrote the "
        f"rest in "
        f"{result['exit_s']:.2f} s; {result['lost']} lost"
    )


@bench_app.command("accuracy")
def bench_accuracy(
    as_json: JsonOption = False,
    scale: Annotated[
        float, typer.Option(min=0.05, max=10.0, help="Scale every scenario's length.")
    ] = 1.0,
    scenario: Annotated[
        list[str] | None,
        typer.Option("--scenario", help="Run only this scenario (repeatable)."),
    ] = None,
    path: Annotated[
        list[str] | None,
        typer.Option(
            "--path", help="Run only this code path (repeatable): simulated, nvml, nvml-part-time."
        ),
    ] = None,
    write: Annotated[
        bool, typer.Option("--write", help="Store the figures that reports quote.")
    ] = False,
) -> None:
    """Attribution error against exact energy, in fixed scenarios, each in fresh processes
    whose first footprint action is the call, on the simulated GPU and on the NVML code
    path (a fake pynvml with an ideal and a part-time counter)."""
    from footprint.bench.accuracy import run
    from footprint.bench.accuracy import write as write_figures
    from footprint.bench.accuracy_scenarios import PATHS, SCENARIOS

    known = [s.name for s in SCENARIOS]
    for name in scenario or []:
        if name not in known:
            raise InputError(f"unknown scenario {name!r}; known: {', '.join(known)}")
    for name in path or []:
        if name not in PATHS:
            raise InputError(f"unknown path {name!r}; known: {', '.join(PATHS)}")
    if write and (scenario or path or scale != 1.0):
        raise InputError("--write records the full benchmark: drop --scenario, --path and --scale")
    result = run(
        scale=scale,
        names=scenario or None,
        paths=path or None,
        progress=_progress,
    )
    if write:
        written = write_figures(result)
        sys.stderr.write(f"figures written to {written}\n")
    show(result, as_json, _print_accuracy)


def _progress(line: str) -> None:
    sys.stderr.write(f"{line}\n")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}%"


def _print_accuracy(result: dict[str, Any]) -> None:
    for entry in result["scenarios"]:
        per_query = entry["per_query_error_pct"] or {}
        long = entry["long_query_error_pct"]
        console.print(
            f"{entry['name']:<34} {entry['queries']:>5} queries: total "
            f"{_pct(entry['total_signed_error_pct'])}; per query p50 {_pct(per_query.get('p50'))} "
            f"p95 {_pct(per_query.get('p95'))} max {_pct(per_query.get('max'))}"
            + (f"; ≥1 s max {long['max']:.3f}%" if long else "")
            + f"; within bound {entry['within_bound_pct']}%"
        )


@bench_app.command("batching")
def bench_batching(
    as_json: JsonOption = False,
    requests: Annotated[
        int, typer.Option(min=10, max=200_000, help="Requests per scenario.")
    ] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the traffic and the sampler's jitter.")] = 1,
    scenario: Annotated[
        list[str] | None,
        typer.Option("--scenario", help="Run only this scenario (repeatable)."),
    ] = None,
    seeds: Annotated[
        int,
        typer.Option(
            min=1, max=100, help="Run under this many seeds (from --seed) and sum up each p95."
        ),
    ] = 1,
    path: Annotated[
        str,
        typer.Option(
            "--path",
            help="How the GPUs are read: simulated, nvml or nvml-part-time (a fake pynvml).",
        ),
    ] = "simulated",
    first_token: Annotated[
        bool,
        typer.Option(
            "--first-token/--no-first-token",
            help="Whether the requests mark their first token (--no-first-token: not "
            "streamed, only token counts).",
        ),
    ] = True,
) -> None:
    """Attribution on a continuously batching model server against each request's true
    energy: a step-by-step engine calibrated on published H100 measurements, run
    through the real runtime under each attribution rule."""
    from footprint.bench.batching.counters import PATHS
    from footprint.bench.batching.measure import run
    from footprint.bench.batching.traffic import SCENARIOS

    if path not in PATHS:
        raise InputError(f"unknown path {path!r}; known: {', '.join(PATHS)}")
    known = [s.name for s in SCENARIOS]
    for name in scenario or []:
        if name not in known:
            raise InputError(f"unknown scenario {name!r}; known: {', '.join(known)}")
    result = run(
        requests=requests,
        seed=seed,
        names=scenario or None,
        progress=_progress,
        seeds=seeds,
        path=path,
        first_token=first_token,
    )
    show(result, as_json, _print_batching)


def _print_batching(result: dict[str, Any]) -> None:
    rules = result["rules"]
    for entry in result["scenarios"]:
        truth = entry["truth"]
        console.print(
            f"{entry['name']}: {truth['requests']:,} requests on {entry['gpus']} GPU(s), "
            f"mean batch {truth['mean_batch']:g}, {truth['j_per_output_token']:.3f} J per "
            f"output token; truth conserved to {abs(truth['conservation_residual_j']):.1e} J"
        )
        for name in rules:
            figures = entry["rules"][name]
            per = figures["per_request_error_pct"]
            kinds = ", ".join(
                f"{kind} {value:+.1f}%" for kind, value in figures["signed_mean_error_pct"].items()
            )
            console.print(
                f"  {name}: per request p50 {per['p50']:.1f}% p95 {per['p95']:.1f}% max "
                f"{per['max']:.1f}%; total {figures['total_error_pct']:+.3f}%; within bound "
                f"{figures['bound_coverage_pct']}%; {figures['runtime_us_per_span']:.0f} µs "
                f"per span ({figures['cycles_us_per_span']:.0f} in cycles)"
            )
            console.print(f"    mean signed error by kind: {kinds}")
    spread = result.get("across_seeds")
    if spread is not None:
        seeds = spread["seeds"]
        console.print(f"per-request p95 across seeds {seeds[0]}-{seeds[-1]}:")
        for name, rules_figures in spread["per_request_p95_pct"].items():
            line = "; ".join(
                f"{rule} mean {f['mean']:.1f}% max {f['max']:.1f}% "
                f"({f['seeds_within_target']}/{len(f['by_seed'])} within target)"
                for rule, f in rules_figures.items()
            )
            console.print(f"  {name}: {line}")
    for model in result["calibration"]:
        lo, hi = model["published_range_j_per_token"]
        points = ", ".join(
            f"B={p['batch']} {p['simulated_j_per_token']:.3f} ({p['published_j_per_token']:.3f})"
            for p in model["points"]
        )
        console.print(
            f"calibration {model['model']}: J per output token simulated (published): "
            f"{points}; published range {lo:.3f}-{hi:.3f}"
        )


@bench_app.command("daemon")
def bench_daemon(
    as_json: JsonOption = False,
    rate: Annotated[
        int, typer.Option(min=100, max=1_000_000, help="Spans per second, all senders.")
    ] = 10_000,
    seconds: Annotated[float, typer.Option(min=1, max=600, help="How long they send.")] = 10.0,
    senders: Annotated[int, typer.Option(min=1, max=64, help="Sender processes.")] = 8,
    idle_seconds: Annotated[
        float, typer.Option(min=1, max=600, help="How long the idle CPU is measured.")
    ] = 5.0,
    saturate: Annotated[
        bool, typer.Option(help="Also offer 4x the rate, to see what the daemon takes.")
    ] = True,
    ack: Annotated[
        bool, typer.Option(help="Senders ask for acknowledgements, as the client does.")
    ] = True,
) -> None:
    """Spans/s from sender processes over the Unix socket (and how many were lost), and
    the daemon's CPU use sampling 8 simulated GPUs at 20 Hz with no traffic."""
    from footprint.bench.daemon import run

    result = run(
        rate_per_s=rate,
        seconds=seconds,
        senders=senders,
        idle_seconds=idle_seconds,
        saturate=saturate,
        ack=ack,
    )
    show(result, as_json, _print_daemon)


def _print_daemon(result: dict[str, Any]) -> None:
    idle = result["idle"]
    for name in ("traffic", "saturation"):
        traffic = result[name]
        if traffic is None:
            continue
        console.print(
            f"{name}: {traffic['senders']} senders, {traffic['spans_sent']:,} spans at "
            f"{traffic['achieved_spans_per_s']:,.0f}/s (offered "
            f"{traffic['target_spans_per_s']:,}/s), {traffic['end_to_end_spans_per_s']:,.0f}/s "
            f"until written; {traffic['stored']:,} stored, {traffic['lost']} lost"
            + (
                ""
                if traffic["acknowledged"] is None
                else f", {traffic['acknowledged']:,} acknowledged"
            )
            + f"; daemon CPU {traffic['daemon_cpu_pct']:.1f}% of a core"
        )
    console.print(
        f"idle, {idle['gpus']} simulated GPUs sampled at {idle['sampling_hz']:g} Hz: daemon CPU "
        f"{idle['daemon_cpu_pct']:.2f}% of a core (target ≤ {idle['target_cpu_pct']:g}%)"
    )


@bench_app.command("soak")
def bench_soak(
    as_json: JsonOption = False,
    minutes: Annotated[
        float, typer.Option(min=0.05, max=600, help="How long each setup runs.")
    ] = 1.0,
    workers: Annotated[int, typer.Option(min=1, max=32, help="Worker processes.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the random stop times.")] = 1,
) -> None:
    """Calls made, stored, counted lost and duplicated while workers (and the daemon)
    are stopped with SIGTERM at random times; RSS over time."""
    from footprint.bench.soak import run

    show(run(minutes=minutes, workers=workers, seed=seed), as_json, _print_soak)


def _print_soak(result: dict[str, Any]) -> None:
    for setup in result["setups"]:
        rss = setup["rss_mib"]
        console.print(
            f"{setup['mode']}: {setup['worker_stops']} worker and {setup['daemon_stops']} daemon "
            f"SIGTERMs; {setup['made']:,} calls made, {setup['stored']:,} stored, "
            f"{setup['counted_lost']:,} counted lost, {setup['duplicated']:,} duplicated, "
            f"{setup['unaccounted']:,} unaccounted; worker RSS max "
            f"{rss['workers']['max'] if rss['workers'] else '-'} MiB"
            + (f", daemon RSS max {rss['daemon']['max']} MiB" if rss["daemon"] else "")
        )


@bench_app.command("proxy")
def bench_proxy(
    as_json: JsonOption = False,
    requests: Annotated[
        int, typer.Option(min=50, max=100_000, help="Sequential requests per side (latency).")
    ] = 1000,
    seconds: Annotated[
        float, typer.Option(min=0.5, max=120, help="Seconds per side at 32 concurrent clients.")
    ] = 5.0,
    concurrency: Annotated[int, typer.Option(min=1, max=512, help="Concurrent clients.")] = 32,
    upstream_latency_ms: Annotated[
        float,
        typer.Option(min=0, max=10_000, help="Time the fake upstream takes per request (ms)."),
    ] = 20.0,
) -> None:
    """A small chat completion against the fake upstream directly and through
    `footprint proxy`, side by side: added latency (median, p99) and requests/s."""
    from footprint.bench.proxy import run

    result = run(
        requests=requests,
        seconds=seconds,
        concurrency=concurrency,
        upstream_latency_ms=upstream_latency_ms,
    )
    show(result, as_json, _print_proxy)


def _print_proxy(result: dict[str, Any]) -> None:
    console.print(
        f"latency: direct {result['direct_ms_median']:.3f} ms median "
        f"(p99 {result['direct_ms_p99']:.3f}), through the proxy "
        f"{result['proxy_ms_median']:.3f} ms (p99 {result['proxy_ms_p99']:.3f}): "
        f"{result['added_ms_median']:.3f} ms added (target ≤ 1 ms)"
    )
    console.print(
        f"{result['concurrency']} concurrent clients, upstream taking "
        f"{result['upstream_latency_ms']:g} ms: direct {result['rps_direct']:,.0f} req/s, "
        f"through the proxy {result['rps_proxy']:,.0f} req/s: ratio {result['rps_ratio']:.2f} "
        f"(target ≥ 0.8)"
    )
    console.print(
        f"upstream taking no time: direct {result['rps_direct_zero_latency']:,.0f} req/s, "
        f"through the proxy {result['rps_proxy_zero_latency']:,.0f} req/s: ratio "
        f"{result['rps_ratio_zero_latency']:.2f}; {result['records']:,} records stored for "
        f"{result['requests_through_proxy']:,} requests through the proxy"
    )
