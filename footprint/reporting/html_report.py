"""The report as one self-contained HTML page: inline CSS, inline SVG charts, no script.

Every figure carries ``data-key`` (its path in the JSON report), ``data-kind`` and
``data-value`` (the exact number, empty when unknown) so that a reader, or a test, can
check it against the JSON. One font: the charts are drawn in DejaVu Sans (as paths, so
they look the same everywhere) and the page asks for it first.
"""

from __future__ import annotations

import html
import re
from typing import Any

from footprint.reporting import units
from footprint.reporting.charts import Chart, model_colors
from footprint.reporting.content import (
    TITLE,
    Change,
    Table,
    fmt,
    header_line,
    lookup,
    period_text,
    pm,
    summary_cards,
)
from footprint.reporting.factor_tables import (
    FACTOR_HEADERS,
    factor_rows,
    sources,
    what_if_table,
    what_if_words,
)
from footprint.reporting.methodology import methodology
from footprint.reporting.tables import (
    capacity_table,
    group_table,
    group_title,
    model_tables,
)

CSS = """
:root{--ink:#0f172a;--muted:#64748b;--line:#e2e8f0;--soft:#f8fafc;--accent:#0f766e;
--accent-soft:#ccfbf1;--warn:#92400e;--warn-soft:#fef3c7}
*{box-sizing:border-box}
body{margin:0;background:#f1f5f9;color:var(--ink);font:15px/1.55 "DejaVu Sans",
"Bitstream Vera Sans",Verdana,sans-serif}
.page{max-width:1560px;margin:0 auto;padding:0 24px 48px}
header.hero{background:linear-gradient(120deg,#0f766e,#115e59 55%,#134e4a);color:#fff;
padding:36px 0 30px;margin-bottom:28px}
header.hero .page{padding-bottom:0}
.eyebrow{text-transform:uppercase;letter-spacing:.12em;font-size:12px;opacity:.8;margin:0}
h1{font-size:32px;line-height:1.2;margin:6px 0 8px;font-weight:700}
.hero p.meta{margin:0;opacity:.9}
h2{font-size:21px;margin:40px 0 6px}
h3{font-size:16px;margin:22px 0 6px}
p.lead{color:var(--muted);margin:0 0 16px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(190px,1fr));gap:14px}
.card{background:#fff;border:1px solid var(--line);border-radius:12px;padding:16px 18px;
box-shadow:0 1px 2px rgba(15,23,42,.04)}
.card .label{font-size:12px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted)}
.card .value{font-size:28px;font-weight:700;margin:4px 0 6px;color:var(--accent);
white-space:nowrap}
.card .value .bound{display:block;font-size:14px;font-weight:600;color:var(--muted)}
.card .sub{font-size:13px;color:var(--muted);line-height:1.5}
.card .sub b{color:var(--ink);font-weight:600}
.note{background:var(--warn-soft);color:var(--warn);border-radius:10px;padding:10px 14px;
margin:14px 0;font-size:14px}
.panel{background:#fff;border:1px solid var(--line);border-radius:12px;padding:18px 20px;
margin-top:12px;overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:7px 8px;border-bottom:1px solid var(--line);text-align:right;
white-space:nowrap}
th{font-size:11px;color:var(--muted);font-weight:600;text-transform:uppercase;
letter-spacing:.03em;border-bottom:2px solid var(--line);white-space:normal;
vertical-align:bottom;line-height:1.3}
th:first-child,td:first-child{text-align:left}
tbody tr:hover{background:var(--soft)}
tfoot td{font-weight:700;border-top:2px solid var(--line);border-bottom:none}
.footnote{color:var(--muted);font-size:13px;margin:8px 0 0}
.swatch{display:inline-block;width:10px;height:10px;border-radius:3px;margin-right:8px;
vertical-align:baseline}
figure{margin:0}
figure svg{width:100%;max-width:1180px;height:auto;display:block;margin:0 auto}
figcaption{color:var(--muted);font-size:13px;margin-top:6px}
.better{color:#15803d;font-weight:600}.worse{color:#b91c1c;font-weight:600}
.method h3{color:var(--accent)}
.method p{margin:6px 0 10px;max-width:80ch}
code{font:.92em "DejaVu Sans Mono",Menlo,Consolas,monospace;background:var(--soft);
border:1px solid var(--line);border-radius:4px;padding:0 4px}
.note code{background:rgba(255,255,255,.55);border-color:transparent}
dl.sources{font-size:13px;color:var(--muted);margin:8px 0}
dl.sources dt{font-weight:600;color:var(--ink);margin-top:8px}
dl.sources dd{margin:2px 0 0 0}
footer{color:var(--muted);font-size:13px;margin-top:40px;border-top:1px solid var(--line);
padding-top:14px}
@media (max-width:1400px){th,td{padding:7px 5px}.panel{padding:16px 14px}}
@media print{body{background:#fff}.panel,.card{box-shadow:none}}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


_CODE = re.compile(r"`([^`]+)`")


def _prose(text: str) -> str:
    """Escaped text whose Markdown code spans (`footprint db info`) become ``<code>``."""
    return _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", _e(text))


def _figure_html(report: dict[str, Any], key: str, kind: str, tag: str = "span") -> str:
    value = lookup(report, key)
    raw = "" if value is None else repr(value)
    title = ' title="unknown"' if value is None else ""
    return (
        f'<{tag} data-key="{_e(key)}" data-kind="{kind}" data-value="{_e(raw)}"{title}>'
        f"{_e(fmt(value, kind))}</{tag}>"
    )


def _cell_html(report: dict[str, Any], cell: Any) -> str:
    """A table cell's content: text, a figure (``±`` before a bound, outside its span), or
    a change against the as-run row."""
    if isinstance(cell, str):
        return _e(cell)
    if isinstance(cell, Change):
        if cell.value is None:
            return "–"
        cls = "better" if cell.value < 0 else "worse"
        sign = "+" if cell.value > 0 else "−" if cell.value < 0 else ""
        return f'<span class="{cls}">{sign}{units.percent(abs(cell.value))}</span>'
    key, kind = cell
    return _e(pm(key, lookup(report, key))) + _figure_html(report, key, kind)


def _table_html(report: dict[str, Any], table: Table, colors: dict[str, str] | None = None) -> str:
    out = ['<div class="panel"><table><thead><tr>']
    out.append("".join(f"<th>{_e(h)}</th>" for h in table.headers))
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(table.rows):
        cells = [_cell_html(report, c) for c in row]
        if colors and i < len(table.paths) and table.paths[i] in colors:
            color = colors[table.paths[i]]
            cells[0] = f'<span class="swatch" style="background:{color}"></span>' + cells[0]
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</tbody>")
    if table.foot:
        out.append("<tfoot><tr>")
        out.append("".join(f"<td>{_cell_html(report, c)}</td>" for c in table.foot))
        out.append("</tr></tfoot>")
    out.append("</table></div>")
    return "".join(out)


def _method_html(report: dict[str, Any], item: str | Table) -> str:
    if isinstance(item, str):
        return f"<p>{_prose(item)}</p>"
    return _table_html(report, item)


def _chart_html(chart: Chart, caption: bool = True) -> str:
    """A chart: its SVG carries its own title (``role="img"``, ``aria-labelledby``)."""
    text = f"<figcaption>{_e(chart.alt)}.</figcaption>" if caption else ""
    return f'<div class="panel"><figure>{chart.svg}{text}</figure></div>'


def render_html(report: dict[str, Any], charts: list[Chart], version: str) -> str:
    """The report as one self-contained HTML page (inline CSS, inline SVG charts)."""
    parts: list[str] = []
    add = parts.append
    add("<!DOCTYPE html>")
    add('<html lang="en"><head><meta charset="utf-8">')
    add('<meta name="viewport" content="width=device-width, initial-scale=1">')
    add(f"<title>{_e(TITLE)} report · {_e(period_text(report))}</title>")
    add(f'<meta name="generator" content="footprint {_e(version)}">')
    add(f"<style>{CSS}</style></head><body>")
    add('<header class="hero"><div class="page">')
    add('<p class="eyebrow">Sustainability report · AI inference</p>')
    add(f"<h1>{_e(TITLE)}: energy, CO2e and cost per model</h1>")
    add(f'<p class="meta">{_e(header_line(report))}</p>')
    add("</div></header>")
    add('<main class="page">')

    add('<section id="summary"><div class="cards">')
    for card in summary_cards(report):
        key, kind = card["main"]
        add('<div class="card">')
        add(f'<div class="label">{_e(card["label"])}</div>')
        bound = ""
        if card.get("bound") and lookup(report, card["bound"][0]) is not None:
            bound = f'<span class="bound"> ± {_figure_html(report, *card["bound"])}</span>'
        add(f'<div class="value">{_figure_html(report, key, kind)}{bound}</div>')
        if card["subs"]:
            subs = " · ".join(
                f"<b>{_figure_html(report, k, kd)}</b> {_e(label)}" for k, kd, label in card["subs"]
            )
            add(f'<div class="sub">{subs}</div>')
        add("</div>")
    add("</div>")
    for note in report["notes"]:
        add(f'<div class="note">{_prose(note)}</div>')
    add("</section>")

    colors = model_colors(report)
    add('<section id="models"><h2>Per model</h2>')
    for i, (title, lead, table) in enumerate(model_tables(report)):
        if i:
            add(f"<h3>{_e(title)}</h3>")
        if lead:
            add(f'<p class="lead">{_prose(lead)}</p>')
        add(_table_html(report, table, colors if i < 2 else None))
    add("</section>")

    shown = [c for c in charts if c.name != "what-if"]
    if shown:
        add('<section id="charts"><h2>Over time and by model</h2>')
        add("".join(_chart_html(chart) for chart in shown))
        add("</section>")

    if report.get("groups") is not None:
        title, _ = group_title(report)
        add(f'<section id="groups"><h2>{_e(title)}</h2>')
        add(_table_html(report, group_table(report)))
        add("</section>")

    capacity = capacity_table(report)
    if capacity is not None:
        add('<section id="capacity"><h2>GPU capacity</h2>')
        add(
            '<p class="lead">Per GPU: the hours it was held (measured, minute by minute) '
            "against the hours its queries kept it busy.</p>"
        )
        add(_table_html(report, capacity))
        add("</section>")

    lead, *footnotes = what_if_words(report)
    add('<section id="what-if"><h2>What if elsewhere</h2>')
    add(f'<p class="lead">{_prose(lead)}</p>')
    add("".join(_chart_html(c, caption=False) for c in charts if c.name == "what-if"))
    add(_table_html(report, what_if_table(report)))
    add("".join(f'<p class="footnote">{_prose(f)}</p>' for f in footnotes))
    add("</section>")

    add('<section id="method" class="method"><h2>Methodology</h2>')
    for heading, paragraphs in methodology(report):
        add(f"<h3>{_e(heading)}</h3>")
        add("".join(_method_html(report, p) for p in paragraphs))
    add("</section>")

    add(_factors_html(report))
    add(
        f"<footer>Generated by footprint {_e(version)} (report schema "
        f"{_e(report['schema'])}). Every figure above is in the JSON report of the same "
        "run; figures are rounded to three significant digits here; – is a figure that is "
        "not known.</footer>"
    )
    add("</main></body></html>")
    return "\n".join(parts) + "\n"


def _factors_html(report: dict[str, Any]) -> str:
    out = ['<section id="factors"><h2>Factors used</h2>']
    out.append(
        '<p class="lead">The factors stored with the queries of this period (each query keeps '
        "the factors it was priced with), and where they come from.</p>"
    )
    out.append('<div class="panel"><table><thead><tr>')
    out.append("".join(f"<th>{_e(h)}</th>" for h in FACTOR_HEADERS))
    out.append("</tr></thead><tbody>")
    for row in factor_rows(report):
        out.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    for zone, refs in sources(report):
        out.append(f'<h3>{_e(zone)}</h3><dl class="sources">')
        for label, text in refs:
            out.append(f"<dt>{_e(label)}</dt><dd>{_e(text)}</dd>")
        out.append("</dl>")
    out.append("</div></section>")
    return "".join(out)
