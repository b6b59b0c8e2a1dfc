"""The docs say what the code does, and the README stays short.

Every option of every ``footprint`` command is listed in the docs section headed with that
command; every setting and its ``FOOTPRINT_*`` variable has a row in docs/settings.md with
its true default; every relative link resolves, anchors included; the README is short,
links every docs page and holds the install and test commands that ``.ci/run`` runs.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main

from footprint.cli import app
from footprint.config import ENV_PREFIX, Settings, settable_names

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_CHARS = 6_000
# Variables the docs may name that are not settings (the test suite's own).
OTHER_VARIABLES = {"FOOTPRINT_TEST_POSTGRES_URL"}

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_INLINE_CODE = re.compile(r"`[^`]*`")


def doc_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def prose_lines(text: str) -> Iterator[tuple[str, bool]]:
    """Each line of a Markdown text, and whether it is inside a fenced code block."""
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            yield line, True
            continue
        yield line, fenced


def sections(text: str) -> Iterator[tuple[str, str]]:
    """(heading text, body up to the next heading of the same or a higher level)."""
    lines = list(prose_lines(text))
    heads = [
        (i, len(m.group(1)), m.group(2))
        for i, (line, fenced) in enumerate(lines)
        if not fenced and (m := _HEADING.match(line))
    ]
    for n, (i, level, title) in enumerate(heads):
        end = next((j for j, lv, _ in heads[n + 1 :] if lv <= level), len(lines))
        yield title, "\n".join(line for line, _ in lines[i + 1 : end])


def slug(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link: its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings (repeated ones get -1, -2, … as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    for line, fenced in prose_lines(path.read_text(encoding="utf-8")):
        m = None if fenced else _HEADING.match(line)
        if m is None:
            continue
        base = slug(m.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


# -- (a) every option of every command ----------------------------------------------------
def commands(command: Any = None, path: tuple[str, ...] = ()) -> Iterator[tuple[str, list[str]]]:
    """("footprint bench accuracy", its options) for every leaf command of the CLI."""
    command = command or typer.main.get_command(app)
    subcommands = getattr(command, "commands", None)
    if subcommands:
        for name, sub in subcommands.items():
            yield from commands(sub, (*path, name))
        return
    options = [
        name
        for param in command.params
        if param.param_type_name == "option"
        for name in (*param.opts, *param.secondary_opts)
        if name.startswith("--") and name != "--help"
    ]
    yield " ".join(("footprint", *path)), options


def command_sections(command: str) -> list[str]:
    """The bodies of the docs sections whose heading names ``command``."""
    named = re.compile(re.escape(command) + r"(?![\w-])")
    return [
        body
        for page in doc_pages()
        for title, body in sections(page.read_text(encoding="utf-8"))
        if named.search(title)
    ]


def has_option(text: str, option: str) -> bool:
    return re.search(re.escape(option) + r"(?![\w-])", text) is not None


def test_every_command_option_is_documented_under_its_command() -> None:
    missing = []
    for command, options in commands():
        bodies = command_sections(command)
        if not bodies:
            missing.append(f"{command}: no docs/*.md section headed with `{command}`")
            continue
        absent = [o for o in options if not any(has_option(b, o) for b in bodies)]
        if absent:
            missing.append(f"{command}: {', '.join(absent)}")
    assert not missing, "undocumented commands or options:\n" + "\n".join(missing)


def test_the_commands_the_walk_finds_are_the_cli() -> None:
    found = dict(commands())
    assert "--allow-empty" in found["footprint report"]
    assert "--concurrency" in found["footprint demo"]
    assert "--no-saturate" in found["footprint bench daemon"]
    assert set(found["footprint db export"]) == {"--format", "--db", "--out"}


def test_the_root_options_are_documented() -> None:
    root = typer.main.get_command(app)
    text = "\n".join(p.read_text(encoding="utf-8") for p in doc_pages())
    options = [o for p in root.params for o in p.opts if o != "--help"]
    assert options and all(has_option(text, o) for o in options), options


# -- (b) every setting ----------------------------------------------------------------------
def settings_rows() -> dict[str, list[str]]:
    """docs/settings.md's table rows keyed by their first cell's setting name."""
    rows: dict[str, list[str]] = {}
    page = DOCS / "settings.md"
    text = page.read_text(encoding="utf-8") if page.exists() else ""
    for line, fenced in prose_lines(text):
        if fenced or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`(\w+)`", cells[0])
        if m:
            rows[m.group(1)] = cells
    return rows


def shown(value: object) -> set[str]:
    """How a default may be written in the docs."""
    if isinstance(value, bool):
        return {str(value).lower()}
    if isinstance(value, float):
        return {f"{value:g}", repr(value)}
    return {str(value)}


def test_every_setting_has_a_row_with_its_variable_and_default() -> None:
    rows = settings_rows()
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    problems = []
    for name in settable_names():
        variable = f"{ENV_PREFIX}{name.upper()}"
        cells = rows.get(name)
        if cells is None:
            problems.append(f"{name}: no row in docs/settings.md")
            continue
        if not any(has_option(c, variable) for c in cells[1:2]):
            problems.append(f"{name}: its row does not name {variable}")
        default = defaults[name]
        if default is not None and not any(f"`{s}`" in cells[2] for s in shown(default)):
            problems.append(f"{name}: its default cell does not say `{default}`")
    assert not problems, "docs/settings.md:\n" + "\n".join(problems)


def test_every_variable_the_docs_name_exists() -> None:
    known = {f"{ENV_PREFIX}{n.upper()}" for n in settable_names()} | OTHER_VARIABLES
    pages = [README, *doc_pages()]
    named = {
        (page.name, v)
        for page in pages
        for v in re.findall(r"FOOTPRINT_[A-Z0-9_]+", page.read_text(encoding="utf-8"))
    }
    assert not {(p, v) for p, v in named if v not in known}


# -- (c) links --------------------------------------------------------------------------------
def links(path: Path) -> Iterator[str]:
    for line, fenced in prose_lines(path.read_text(encoding="utf-8")):
        if not fenced:
            yield from _LINK.findall(_INLINE_CODE.sub("", line))


@pytest.mark.parametrize("page", [README, *doc_pages()], ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: not checked (no network)
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_the_link_checker_sees_links_and_anchors() -> None:
    assert slug("Threat model / access") == "threat-model--access"
    assert slug("`footprint report` options") == "footprint-report-options"
    assert list(links(README)), "the README links no page"


# -- (d) the README ---------------------------------------------------------------------------
def ci_commands() -> list[str]:
    """The install and test commands of .ci/run (its venv, editable install, pytest)."""
    wanted = []
    for raw in (ROOT / ".ci" / "run").read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        venv = line.startswith("python3 -m venv")
        install = line.startswith(".venv/bin/pip install") and " -e " in line
        if venv or install or line.startswith(".venv/bin/python -m pytest"):
            wanted.append(line)
    return wanted


def test_readme_is_short() -> None:
    size = len(README.read_text(encoding="utf-8"))
    assert size <= README_MAX_CHARS, f"README.md has {size} characters (at most {README_MAX_CHARS})"


def test_readme_has_the_commands_ci_runs() -> None:
    commands_run = ci_commands()
    assert len(commands_run) == 3, commands_run  # venv, install, test
    code = "\n".join(
        line for line, fenced in prose_lines(README.read_text(encoding="utf-8")) if fenced
    )
    missing = [c for c in commands_run if c not in code]
    assert not missing, f"README.md's code blocks lack: {missing}"


def test_readme_links_every_docs_page() -> None:
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
    unlinked = [p.name for p in doc_pages() if p.resolve() not in linked]
    assert not unlinked, f"README.md links none of: {unlinked}"


def test_accuracy_page_names_every_scenario_and_path() -> None:
    from footprint.bench.accuracy_scenarios import PATHS, SCENARIOS

    text = (DOCS / "accuracy.md").read_text(encoding="utf-8")
    names = [s.name for s in SCENARIOS] + list(PATHS)
    assert not [n for n in names if f"`{n}`" not in text]
