"""``footprint daemon`` and ``footprint proxy``: the long-running servers that record queries.

Both run until a signal; the daemon serves every process on the host, the proxy one model server.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from footprint.cli._database import DB_HELP
from footprint.cli._errors import InputError


def daemon_command(
    socket_path: Annotated[
        str | None,
        typer.Option(
            "--socket",
            help="Unix socket for the clients (default: $XDG_RUNTIME_DIR/footprint/daemon.sock"
            ", else /run/footprint/daemon.sock).",
        ),
    ] = None,
    http: Annotated[
        str,
        typer.Option(
            help="HOST:PORT for GET /metrics, GET /healthz and POST /v1/spans; port 0 takes a "
            "free one; 'off' for none. Not loopback: needs --token.",
        ),
    ] = "127.0.0.1:9464",
    db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    sampling_period: Annotated[
        float | None,
        typer.Option("--sampling-period", help="Seconds between GPU samples (default 0.05)."),
    ] = None,
    sensor: Annotated[
        str | None,
        typer.Option(help="auto | nvml | amd | simulated[:opts] | none (default: settings)."),
    ] = None,
    region: Annotated[
        str | None, typer.Option(help="Grid zone or cloud region (default: settings).")
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(help="Group that may use the socket (made 0660, its folder 0750)."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FOOTPRINT_DAEMON_TOKEN",
            help="Bearer token HTTP clients must send (env FOOTPRINT_DAEMON_TOKEN keeps it "
            "out of ps).",
        ),
    ] = None,
    max_connections: Annotated[
        int,
        typer.Option(
            min=1,
            help="Client connections at most (fewer if the open-files limit leaves room for "
            "fewer); over it a new one gets a one-line error and is closed.",
        ),
    ] = 4096,
    max_connections_per_peer: Annotated[
        int,
        typer.Option(
            min=1,
            help="Client connections at most from one process (one uid where its pid "
            "is not visible).",
        ),
    ] = 256,
    max_http_connections: Annotated[
        int,
        typer.Option(
            min=1,
            help="HTTP connections served at once (a thread each); over it a new one gets "
            "503 and is closed.",
        ),
    ] = 64,
    otel_metrics: Annotated[
        bool,
        typer.Option(
            "--otel-metrics",
            help="Also publish energy, CO2e, cost, tokens and queries per model as "
            "OpenTelemetry counters, through the MeterProvider the OTel SDK configured "
            "(run under opentelemetry-instrument; needs footprint[otel]).",
        ),
    ] = False,
    otel_tag: Annotated[
        list[str] | None,
        typer.Option(
            "--otel-tag",
            help="A record tag to add to the OpenTelemetry attributes (repeatable; none "
            "by default: tags are unbounded).",
        ),
    ] = None,
) -> None:
    """The host's sidecar daemon: one sampler for every GPU, spans from every process,
    Prometheus metrics. Runs until SIGTERM or Ctrl-C (SIGHUP re-reads the settings)."""
    from footprint.daemon.config import DaemonConfig
    from footprint.daemon.main import run_daemon

    observers: tuple = ()
    if otel_tag and not otel_metrics:
        raise InputError("--otel-tag needs --otel-metrics")
    if otel_metrics:
        from footprint.integrations.otel import (
            OtelUnavailable,
            RecordMetrics,
            configured_meter_provider,
        )

        try:
            observers = (RecordMetrics(configured_meter_provider(), otel_tag or ()).observe,)
        except (OtelUnavailable, TypeError, ValueError) as exc:
            raise InputError(f"--otel-metrics: {exc}") from None

    config = DaemonConfig(
        socket_path=socket_path,
        http=http,
        db=db,
        sampling_period_s=sampling_period,
        sensor=sensor,
        region=region,
        group=group,
        token=token,
        max_connections=max_connections,
        max_connections_per_peer=max_connections_per_peer,
        max_http_connections=max_http_connections,
        record_observers=observers,
    )
    code = run_daemon(config)
    if code:
        raise typer.Exit(code)


def proxy_command(
    upstream: Annotated[
        str, typer.Option(help="The model server's base URL, e.g. http://127.0.0.1:8000.")
    ],
    listen: Annotated[
        str, typer.Option(help="HOST:PORT the clients call; port 0 takes a free one.")
    ] = "127.0.0.1:8001",
    db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    gpus: Annotated[
        str | None,
        typer.Option(
            help="GPUs the model server runs on: CUDA indices or UUIDs, a,b (default: all)."
        ),
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="KEY=VALUE stored with every record.")
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for the upstream's next byte.")
    ] = 600.0,
    grace: Annotated[
        float, typer.Option(min=0, help="Seconds requests in flight get to finish on SIGTERM.")
    ] = 15.0,
    tag_header: Annotated[
        list[str] | None,
        typer.Option(
            "--tag-header",
            help="HEADER=TAG: a request's HEADER value stored as tag TAG (cut to 128 "
            "characters); repeatable. No other header is stored.",
        ),
    ] = None,
    tag_user: Annotated[
        bool,
        typer.Option(
            "--tag-user", help="Store the request body's OpenAI 'user' field as tag user."
        ),
    ] = False,
    tag_api_key_hash: Annotated[
        bool,
        typer.Option(
            "--tag-api-key-hash",
            help="Store a keyed hash of the 'Authorization: Bearer' API key as tag "
            "api_key_hash (16 hex digits; never the key).",
        ),
    ] = False,
    api_key_secret_file: Annotated[
        str | None,
        typer.Option(
            "--api-key-secret-file",
            help="File holding this deployment's secret key for --tag-api-key-hash "
            "(default: a fixed, public salt).",
        ),
    ] = None,
) -> None:
    """Measure an OpenAI-compatible model server (vLLM, TGI, SGLang, llama.cpp, Ollama) with
    no code change: forward every request to --upstream, record each inference request."""
    import footprint
    from footprint.proxy import ProxyConfigError, make_config, serve

    def ready(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    try:
        config = make_config(
            upstream,
            listen,
            gpus,
            tag,
            tag_headers=tag_header,
            tag_user=tag_user,
            tag_api_key_hash=tag_api_key_hash,
            api_key_secret_file=api_key_secret_file,
            read_timeout_s=timeout,
            grace_s=grace,
        )
        if db is not None:
            footprint.configure(db=db)
        stopped_by = serve(config, on_ready=ready)
    except (ProxyConfigError, ValueError) as exc:
        raise InputError(str(exc)) from None
    if stopped_by == 2:  # SIGINT: Ctrl-C's exit status and line
        raise typer.Exit(130)
