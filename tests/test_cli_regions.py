"""``footprint regions``: one line per zone on a terminal of any width and when piped,
and a search by code, country, name and cloud region that finds what it means."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from footprint.cli import main
from footprint.pricing import list_zones

REPO = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# The heavy-head table's lines that are not zones: top rule, headings, rule, bottom rule.
TABLE_LINES = 4


def _env(columns: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    return {**env, "COLUMNS": str(columns), "LINES": "24", "TERM": "xterm"}


def _regions_on_a_terminal(columns: int, *args: str) -> tuple[int, list[str]]:
    """Run ``footprint regions ARGS`` with stdout on a pseudo-terminal ``columns`` wide:
    its exit status and the lines it showed, colours removed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "footprint", "regions", *args],
        stdout=slave,
        stderr=subprocess.DEVNULL,
        env=_env(columns),
        cwd=REPO,
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
    code = proc.wait(timeout=120)
    text = ANSI.sub("", b"".join(chunks).decode("utf-8"))
    return code, text.splitlines()


def _regions_piped(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "footprint", "regions", *args],
        capture_output=True,
        text=True,
        env=_env(columns),
        cwd=REPO,
        timeout=120,
        check=False,
    )


def _search(query: str, capsys: pytest.CaptureFixture[str]) -> list[dict]:
    main(["regions", query, "--json"])
    return json.loads(capsys.readouterr().out)["zones"]


def _cloud_regions_in(iso3: str) -> set[str]:
    with (REPO / "regions" / "cloud_regions.csv").open() as f:
        return {
            f"{r['provider']}:{r['region']}" for r in csv.DictReader(f) if r["country_iso3"] == iso3
        }


def test_piped_one_tab_separated_line_per_zone_then_the_count():
    zones = list_zones()
    clouds = sum(1 for z in zones if z["kind"] == "cloud")
    done = _regions_piped(columns=80)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(zones) + 2  # headings, zones, count
    assert lines[0].split("\t")[:3] == ["zone", "name", "grid zone"]
    assert all(len(line.split("\t")) == 6 for line in lines[:-1])
    assert [line.split("\t")[0] for line in lines[1:-1]] == [z["zone"] for z in zones]
    assert lines[-1] == f"{len(zones) - clouds} zones, {clouds} cloud regions"


@pytest.mark.parametrize("columns", [40, 80, 200])
def test_on_a_terminal_one_line_per_zone_cut_to_its_width(columns):
    zones = list_zones()
    code, lines = _regions_on_a_terminal(columns)
    assert code == 0
    assert len(lines) == len(zones) + TABLE_LINES + 1
    assert max(len(line) for line in lines) <= columns
    shown = [line.split("│")[1].strip() for line in lines[3:-2]]
    assert shown == [z["zone"] for z in zones]  # zone ids whole, in order
    assert lines[-1].endswith("cloud regions")


def test_a_terminal_too_narrow_for_names_still_shows_zone_and_intensity():
    code, lines = _regions_on_a_terminal(40, "france")
    assert code == 0
    assert lines[1].split() == ["┃", "zone", "┃", "gCO2e/kWh", "┃"]
    france_g_per_kwh = list_zones("FRA")[0]["intensity_g_per_kwh"]
    assert lines[3].split() == ["│", "FRA", "│", f"{france_g_per_kwh:.0f}", "│"]
    assert len(lines) == 5 + TABLE_LINES + 1


def test_fra_is_france_not_frankfurt(capsys):
    found = [z["zone"] for z in _search("FRA", capsys)]
    assert found[0] == "FRA"
    assert "aws:eu-central-1" not in found and "gcp:europe-west3" not in found
    assert set(found) == {"FRA"} | _cloud_regions_in("FRA")
    assert [z["zone"] for z in _search("fr", capsys)] == ["FRA", *found[1:]]


def test_france_lists_the_paris_cloud_regions_mapped_to_france(capsys):
    found = {z["zone"]: z for z in _search("france", capsys)}
    for paris in ("aws:eu-west-3", "gcp:europe-west9", "azure:francecentral"):
        assert found[paris]["grid_zone"] == "FRA"
    assert set(found) == {"FRA"} | _cloud_regions_in("FRA")


def test_de_and_germany_find_the_same_zones(capsys):
    by_code = [z["zone"] for z in _search("de", capsys)]
    by_name = [z["zone"] for z in _search("Germany", capsys)]
    assert by_code == by_name
    assert by_code[0] == "DEU"
    assert set(by_code) == {"DEU"} | _cloud_regions_in("DEU")


def test_names_match_at_word_starts_only(capsys):
    assert {z["zone"] for z in _search("frank", capsys)} == {
        "aws:eu-central-1",
        "azure:germanywestcentral",
        "gcp:europe-west3",
    }
    with pytest.raises(SystemExit) as exited:
        main(["regions", "ankfurt"])  # inside a word: no match
    assert exited.value.code == 1


def test_exact_codes_rank_first_then_grid_zones_then_cloud_regions(capsys):
    found = _search("USA", capsys)
    kinds = [z["kind"] for z in found]
    assert found[0]["zone"] == "USA" and found[0]["match"] == "zone code"
    assert kinds == sorted(kinds, key=["country", "subnational", "cloud"].index)
    assert {"USA/california", "aws:us-east-1", "gcp:us-west2"} <= {z["zone"] for z in found}


def test_cloud_region_ids_and_providers(capsys):
    assert [z["zone"] for z in _search("us-east-1", capsys)] == ["aws:us-east-1"]
    assert [z["zone"] for z in _search("AWS:US-EAST-1", capsys)] == ["aws:us-east-1"]
    gcp_europe = _search("gcp:europe-", capsys)
    assert gcp_europe and all(z["zone"].startswith("gcp:europe-") for z in gcp_europe)
    azure = _search("azure", capsys)
    assert len(azure) > 30 and all(z["provider"] == "azure" for z in azure)


def test_a_grid_zone_brings_the_cloud_regions_on_it(capsys):
    found = {z["zone"]: z for z in _search("california", capsys)}
    assert "USA/california" in found
    # Los Angeles: its name does not say California, its grid zone does.
    assert found["gcp:us-west2"]["grid_zone"] == "USA/california"


def test_unknown_query_exits_1_saying_so(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["regions", "xyz"])
    assert exited.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("footprint: no zone matches 'xyz'")


def test_piped_search_ends_with_zones_and_cloud_regions_counted():
    done = _regions_piped("france")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 + 5 + 1
    assert lines[-1] == "1 zone, 4 cloud regions"


def test_json_counts_and_why_each_zone_matched(capsys):
    main(["regions", "FRA", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert (out["count"], out["zone_count"], out["cloud_region_count"]) == (5, 1, 4)
    assert [z["match"] for z in out["zones"]] == ["zone code"] + ["country"] * 4


def test_regions_does_not_import_the_database_layer():
    code = (
        "import sys\n"
        "from footprint.cli import main\n"
        "try:\n"
        "    main(['regions', 'france'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'sqlmodel')),"
        " file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.stderr.strip().splitlines()[-1] == "[]"


def test_countries_by_iso_name_code_and_accents(capsys):
    # codecarbon says "Cote d'Ivoire" and "Russia"; ISO 3166-1 (pycountry) says these.
    assert [z["zone"] for z in _search("Côte d’Ivoire", capsys)] == ["CIV"]
    assert [z["zone"] for z in _search("ci", capsys)] == ["CIV"]
    assert [z["zone"] for z in _search("Russian Federation", capsys)][0] == "RUS"
    assert [z["zone"] for z in _search("KR", capsys)] == [
        z["zone"] for z in _search("south korea", capsys)
    ]
