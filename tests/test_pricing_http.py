"""Cloud metadata detection and the live Electricity Maps lookup, against local fake
servers on 127.0.0.1 (ephemeral ports). Nothing here touches the network."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from footprint.config import Settings, resolve_settings
from footprint.pricing import (
    DefaultZoneWarning,
    ElectricityMapsClient,
    HourlyIntensity,
    IntensitySource,
    build_factors,
    detect_cloud_zone,
    lookup_zone,
    resolve_zone,
    static_intensity,
)
from footprint.pricing.pricer import Pricer, intensity_source

Handler = Callable[[BaseHTTPRequestHandler], tuple[int, str]]


class _FakeServer:
    """A loopback HTTP server whose answers come from a swappable function."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.answer: Handler = lambda req: (404, "not found")
        outer = self

        class _Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                outer.requests.append((self.command, self.path, dict(self.headers)))
                status, body = outer.answer(self)
                data = body.encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = _reply

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_FakeServer]:
    fake = _FakeServer()
    yield fake
    fake.close()


@pytest.fixture
def dead_url() -> str:
    """A loopback URL with nothing listening (connection refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- cloud metadata -------------------------------------------------------------------


def test_detects_aws_via_imdsv2(server):
    def answer(req):
        if req.command == "PUT" and req.path == "/latest/api/token":
            return 200, "tok"
        if req.path == "/latest/meta-data/placement/region":
            ok = req.headers.get("X-aws-ec2-metadata-token") == "tok"
            return (200, "eu-west-3") if ok else (401, "")
        return 404, ""

    server.answer = answer
    zone = detect_cloud_zone(base_url=server.url, timeout_s=1.0)
    assert zone is not None and zone.id == "aws:eu-west-3"


def test_detects_gcp(server):
    def answer(req):
        if (
            req.path == "/computeMetadata/v1/instance/zone"
            and req.headers.get("Metadata-Flavor") == "Google"
        ):
            return 200, "projects/123456/zones/europe-west1-b"
        return 404, ""

    server.answer = answer
    assert detect_cloud_zone(base_url=server.url, timeout_s=1.0).id == "gcp:europe-west1"


def test_detects_azure(server):
    def answer(req):
        if (
            req.path.startswith("/metadata/instance/compute/location")
            and req.headers.get("Metadata") == "true"
        ):
            return 200, "westeurope"
        return 404, ""

    server.answer = answer
    assert detect_cloud_zone(base_url=server.url, timeout_s=1.0).id == "azure:westeurope"


def test_unknown_detected_region_warns_and_is_not_guessed(server):
    server.answer = lambda req: (
        (200, "projects/1/zones/mars-north1-a")
        if req.path == "/computeMetadata/v1/instance/zone"
        else (404, "")
    )
    with pytest.warns(UserWarning, match="mars-north1"):
        assert detect_cloud_zone(base_url=server.url, timeout_s=1.0) is None


def test_detection_only_when_asked_and_after_env(server):
    server.answer = lambda req: (
        (200, "projects/1/zones/us-central1-a")
        if req.path == "/computeMetadata/v1/instance/zone"
        else (404, "")
    )
    zone = resolve_zone(None, env={}, detect_cloud=True, metadata_url=server.url)
    assert zone.id == "gcp:us-central1" and not zone.is_default
    assert (
        resolve_zone(
            None, env={"FOOTPRINT_REGION": "FRA"}, detect_cloud=True, metadata_url=server.url
        ).id
        == "FRA"
    )
    before = len(server.requests)
    with pytest.warns(DefaultZoneWarning, match="no region configured"):
        from footprint.pricing.zones import _reset_default_warning

        _reset_default_warning()
        assert resolve_zone(None, env={}, metadata_url=server.url).is_default
    assert len(server.requests) == before  # not asked without detect_cloud


def test_detection_with_nothing_listening_is_none(dead_url):
    assert detect_cloud_zone(base_url=dead_url, timeout_s=0.5) is None


# --- Electricity Maps ------------------------------------------------------------------


def _em_answer(value: float) -> Handler:
    def answer(req):
        if req.headers.get("auth-token") != "secret":
            return 401, json.dumps({"error": "bad token"})
        if req.path.startswith("/v3/carbon-intensity/"):
            return 200, json.dumps({"zone": "FR", "carbonIntensity": value})
        return 404, ""

    return answer


def test_live_lookup_is_used_and_cached_per_hour(server):
    server.answer = _em_answer(42.0)
    client = ElectricityMapsClient("secret", base_url=server.url + "/v3", timeout_s=1.0)
    source = IntensitySource(live=client)
    fra = lookup_zone("FRA")
    got = source.lookup(fra)
    assert (got.g_per_kwh, got.source) == (42.0, "live")
    assert source.lookup(fra).g_per_kwh == 42.0
    assert client.requests_made == 1  # second lookup in the same hour came from the cache
    method, path, headers = server.requests[0]
    assert path.startswith("/v3/carbon-intensity/latest?") and "zone=FR" in path
    factors = build_factors(fra, intensity=source)
    assert factors.intensity_source == "live" and factors.intensity_g_per_kwh == 42.0


def test_past_hours_use_the_past_endpoint(server):
    server.answer = _em_answer(55.0)
    client = ElectricityMapsClient("secret", base_url=server.url + "/v3", timeout_s=1.0)
    at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=5)
    assert client.carbon_intensity(lookup_zone("aws:eu-north-1"), at) == 55.0
    path = server.requests[-1][1]
    assert path.startswith("/v3/carbon-intensity/past?") and "zone=SE-SE3" in path


def test_live_falls_back_to_static_when_the_server_errors(server):
    server.answer = lambda req: (500, "boom")
    client = ElectricityMapsClient("secret", base_url=server.url, timeout_s=1.0, cooldown_s=60)
    source = IntensitySource(live=client)
    fra = lookup_zone("FRA")
    got = source.lookup(fra)
    assert got.source == "static" and got.g_per_kwh == static_intensity(fra).g_per_kwh
    source.lookup(fra)
    assert client.requests_made == 1  # cooling down after the failure: no second request


@pytest.mark.parametrize("body", ["not json", json.dumps({"carbonIntensity": None}), "{}"])
def test_live_falls_back_on_bad_payloads(server, body):
    server.answer = lambda req: (200, body)
    source = IntensitySource(live=ElectricityMapsClient("secret", base_url=server.url))
    assert source.lookup(lookup_zone("DEU")).source == "static"


def test_live_falls_back_when_the_server_is_down(dead_url):
    source = IntensitySource(live=ElectricityMapsClient("secret", base_url=dead_url, timeout_s=0.5))
    assert source.lookup(lookup_zone("FRA")).source == "static"


def test_cooldown_expires(server):
    now = [0.0]
    server.answer = lambda req: (503, "")
    client = ElectricityMapsClient(
        "secret", base_url=server.url + "/v3", cooldown_s=10, clock=lambda: now[0]
    )
    fra = lookup_zone("FRA")
    assert client.carbon_intensity(fra) is None
    server.answer = _em_answer(12.5)
    assert client.carbon_intensity(fra) is None  # still cooling down
    now[0] = 11.0
    assert client.carbon_intensity(fra) == 12.5


def test_hourly_file_beats_live(server, tmp_path):
    server.answer = _em_answer(42.0)
    hour = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
    path = tmp_path / "h.csv"
    path.write_text(f"timestamp,zone,gco2e_per_kwh\n{hour.isoformat()},FRA,7\n", encoding="utf-8")
    client = ElectricityMapsClient("secret", base_url=server.url + "/v3")
    source = IntensitySource(hourly=HourlyIntensity.from_csv(path), live=client)
    got = source.lookup(lookup_zone("FRA"))
    assert (got.g_per_kwh, got.source) == (7.0, "hourly") and client.requests_made == 0


def test_client_needs_an_explicit_token():
    with pytest.raises(ValueError):
        ElectricityMapsClient("")
    assert intensity_source(Settings()) is None  # no token, no file: static only
    default = intensity_source(Settings(electricitymaps_token="t")).live
    assert default.base_url == ElectricityMapsClient.DEFAULT_BASE_URL


def test_the_pricer_asks_the_settings_url(server, tmp_path):
    """``FOOTPRINT_ELECTRICITYMAPS_URL`` reaches the client through the settings."""
    server.answer = _em_answer(42.0)
    env = {
        "FOOTPRINT_ELECTRICITYMAPS_TOKEN": "secret",
        "FOOTPRINT_ELECTRICITYMAPS_URL": server.url + "/v3/",
        "FOOTPRINT_REGION": "FRA",
    }
    settings = resolve_settings({}, environ=env, directory=tmp_path)
    assert settings.electricitymaps_url == server.url + "/v3/"
    record = {"started_at": dt.datetime.now(dt.timezone.utc), "energy_j": None}
    Pricer(settings, None, env={}).apply(record)
    assert (record["intensity_source"], record["intensity_g_per_kwh"]) == ("live", 42.0)
    assert server.requests[0][1].startswith("/v3/carbon-intensity/latest?")


def test_zone_codes():
    client = ElectricityMapsClient(
        "t", base_url="http://127.0.0.1:9", zone_codes={"USA/virginia": "US-MIDA-PJM"}
    )
    assert client.zone_code(lookup_zone("FRA")) == "FR"
    assert client.zone_code(lookup_zone("NOR/NO1")) == "NO-NO1"
    assert client.zone_code(lookup_zone("gcp:europe-north1")) == "FI"
    assert client.zone_code(lookup_zone("aws:us-east-1")) == "US-MIDA-PJM"
    assert client.zone_code(lookup_zone("USA/texas")) is None
