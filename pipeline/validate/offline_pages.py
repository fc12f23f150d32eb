"""Make a GX Data Docs site self-contained: no network, no script, warnings shown as warnings.

GX's page templates (great_expectations/render/view/templates: page.j2, js_script_imports.j2,
top_navbar.j2, cloud-footer.j2) load Bootstrap, jQuery, Vega, bootstrap-table and Font Awesome from
public CDNs and the logo from GX's web server, and GX offers no setting for local copies. No installed
package ships those libraries in the versions GX expects (flask_appbuilder has Bootstrap 3, not 4), so
rather than vendor them the pages drop them: every `<script>` and external stylesheet is removed and a
small stylesheet of our own (`OFFLINE_STYLE`) is inlined. What the scripts did is given up on purpose:
the index page's JavaScript tables and the "Show All / Failed Only" filter, which the script-free
results table at the top of the index page replaces. The GX logo comes from the `static/` folder GX
copies into the site; its newsletter footer is removed, and links out (to greatexpectations.io) become
plain text, because a secure environment cannot follow them.

GX does not know our severities: it draws every failed expectation as a red cross. `page_statuses`
reads, from the stored result, the status GX will draw for each expectation in page order (by GX's
own column ordering), so `make_page_self_contained` can redraw a warning's cross as an amber
"Warning" and the page's "Failed" header as "Passed with N warning(s)", as the landing page says.

Post-processing is regular expressions on tags the templates write, not an HTML parser: a site of
50 pages of a few MB each takes well under a second, and the same page always gives the same bytes.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from pipeline.validate._gx import Renderer

log = logging.getLogger(__name__)

TABLE_LEVEL = "Table-Level Expectations"  # GX's section for expectations on no single column
PASSED, FAILED, NOT_EVALUATED = "passed", "failed", "not evaluated"

OFFLINE_STYLE = """<style id="pipeline-offline-style">
  body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f; background: #f6f6f4; margin: 0; line-height: 1.45; }
  a { color: #0b4f8a; }
  nav.navbar { display: flex; align-items: center; background: #fff; border-bottom: 1px solid #c9c9c9; padding: .4rem 1.5rem; height: auto !important; }
  nav.navbar nav { display: flex; align-items: center; gap: 1.2rem; }
  .navbar-brand img { height: 40px !important; visibility: visible !important; }
  ol.breadcrumb { display: flex; flex-wrap: wrap; list-style: none; margin: 0; padding: 0; font-size: .9rem; }
  .breadcrumb-item + .breadcrumb-item::before { content: "/"; padding: 0 .4rem; color: #777; }
  .container-fluid { padding: 1rem 1.5rem; box-sizing: border-box; }
  .row { display: flex; flex-wrap: wrap; }
  [class*="col-"] { box-sizing: border-box; width: 100%; padding: 0 .6rem; }
  @media (min-width: 768px) {
    .col-md-2 { width: 18%; } .col-md-10 { width: 82%; } .col-md-6, .col-6 { width: 50%; }
  }
  .card { background: #fff; border: 1px solid #c9c9c9; border-radius: 4px; margin-bottom: 1rem; }
  .card-header { background: #ecece8; padding: .4rem .7rem; border-bottom: 1px solid #c9c9c9; }
  .card-body { padding: .6rem .7rem; }
  .ge-section, .alert { margin-bottom: .8rem; }
  .alert-secondary { background: #ecece8; border: 1px solid #c9c9c9; border-radius: 4px; padding: .5rem .8rem; }
  .alert h4, .alert h5 { margin: 0; }
  .nav { list-style: none; margin: 0; padding: 0; }
  .nav-link { display: block; padding: .15rem .3rem; text-decoration: none; font-size: .9rem; }
  table.table { border-collapse: collapse; width: 100%; background: #fff; margin: .4rem 0 1rem; font-size: .92rem; }
  table.table th, table.table td { border: 1px solid #c9c9c9; padding: .3rem .55rem; text-align: left; vertical-align: top; }
  table.table thead th { background: #ecece8; }
  .badge { display: inline-block; padding: 0 .35rem; border-radius: .25rem; background: #e4e4e0; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: .85em; }
  .text-success { color: #1b5e20; } .text-danger { color: #b00020; } .text-warning { color: #8a5a00; }
  .lead { font-size: 1.05rem; } .h6 { font-weight: 600; }
  .collapse { display: block; }
  a[data-toggle="collapse"] { display: none; }
  .pipeline-failed { color: #b00020; font-weight: bold; }
  .pipeline-warning { color: #8a5a00; font-weight: bold; }
  .pipeline-passed { color: #1b5e20; font-weight: bold; }
  i.fas { font-style: normal; }
  i.fas.fa-check-circle.text-success::before { content: "\\2714"; color: #1b5e20; }
  i.fas.fa-times.text-danger::before { content: "\\2718"; color: #b00020; }
  i.fas.fa-exclamation-triangle.text-warning::before { content: "\\26A0"; color: #8a5a00; }
</style>"""

_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script\s*>", re.S | re.I)
_LINK = re.compile(r"<link\b[^>]*>", re.I)
# GX's favicon link climbs the wrong number of folders on validation pages; the pages go without it.
_DROPPED_LINK = re.compile(r"""\bhref\s*=\s*["']?(?:[a-z][a-z0-9+.-]*:|//)|\brel\s*=\s*["']?(?:shortcut )?icon""", re.I)
_FOOTER = re.compile(r"<footer\b[^>]*>.*?</footer\s*>", re.S | re.I)
_EXTERNAL_ANCHOR = re.compile(r"""<a\b[^>]*\bhref\s*=\s*["'](?:[a-z][a-z0-9+.-]*:|//)[^"']*["'][^>]*>(.*?)</a\s*>""", re.S | re.I)
_EXTERNAL_URL = re.compile(r"""url\(\s*["']?(?:[a-z][a-z0-9+.-]*:|//)[^)]*\)""", re.I)
_IMPORT = re.compile(r"@import\b[^;]*;", re.I)
_LOGO = re.compile(r"""(<img\b[^>]*?\bsrc\s*=\s*")(?:https?:)?//[^"]*/(logo-long\.png)(?:\?[^"]*)?(")""", re.I)
_ANY_EXTERNAL_SRC = re.compile(r"""(<(?:img|source|iframe|embed|video|audio)\b[^>]*?)\bsrc\s*=\s*["'](?!data:)(?:[a-z][a-z0-9+.-]*:|//)[^"']*["']""", re.I)
_DIV = re.compile(r"<(/?)div\b", re.I)
_ROW_ICON = re.compile(r'<i class="fas (?:fa-check-circle text-success|fa-times text-danger|fa-exclamation-triangle text-warning)" ></i>')
_CROSS = '<i class="fas fa-times text-danger" ></i>'
_HEADER_FAILED = '<i class="fas fa-times text-danger" aria-hidden="true"></i> Failed'


def page_statuses(suite_result: Any) -> list[tuple[str, str]]:
    """(status, severity) of each expectation of a stored result, in the order GX's page lists them.

    GX puts expectations on no single column first, then each column's, in the order of
    `Renderer._get_column_list_from_evrs` (GX's own, so an upgrade moves both together).
    """
    by_column: dict[str, list[Any]] = {}
    for r in suite_result.results:
        by_column.setdefault(r.expectation_config.kwargs.get("column", TABLE_LEVEL), []).append(r)
    order = [TABLE_LEVEL] + list(Renderer._get_column_list_from_evrs(suite_result))
    statuses = []
    for column in order:
        for r in by_column.get(column, []):
            raised = any(
                (v.get("raised_exception") if isinstance(v, dict) else False)
                for v in ([r.exception_info] if "raised_exception" in r.exception_info else r.exception_info.values())
            )
            status = NOT_EVALUATED if raised else PASSED if r.success else FAILED
            statuses.append((status, (r.expectation_config.meta or {}).get("severity", "critical")))
    return statuses


def _remove_div(page: str, start: int) -> str:
    """`page` without the <div> that opens at `start` (and everything in it)."""
    depth = 0
    for m in _DIV.finditer(page, start):
        depth += -1 if m.group(1) else 1
        if depth == 0:
            end = page.index(">", m.end()) + 1
            return page[:start] + page[end:]
    return page


def _remove_divs_marked(page: str, opening: str, marker: str | None = None) -> str:
    """Remove each <div> whose opening tag starts with `opening` (and, if given, holds `marker` next)."""
    position = 0
    while (start := page.find(opening, position)) >= 0:
        following = page.find(opening, start + 1)
        if marker is None or marker in page[start : following if following >= 0 else len(page)][:400]:
            page = _remove_div(page, start)
            position = start
        else:
            position = start + 1
    return page


def _redraw_warnings(page: str, statuses: list[tuple[str, str]], where: str) -> str:
    """Draw each failed warning-level expectation as an amber "Warning", each critical one as "Failed"."""
    icons = list(_ROW_ICON.finditer(page))
    drawn = [("passed" if "check" in m.group(0) else "failed" if "times" in m.group(0) else "not evaluated") for m in icons]
    if drawn != [status for status, _ in statuses]:
        # GX drew the page differently from what its result says; colour nothing rather than the wrong row.
        log.warning("Data Docs page %s: GX's status icons do not follow its results; warnings left as GX drew them", where)
        return page
    parts, last = [], 0
    for i, (m, (status, severity)) in enumerate(zip(icons, statuses, strict=True)):
        if status != FAILED:
            continue
        row_end = icons[i + 1].start() if i + 1 < len(icons) else len(page)
        parts.append(page[last : m.start()])
        if severity == "critical":
            parts.append(_CROSS + ' <span class="pipeline-failed">Failed</span>')
            parts.append(page[m.end() : row_end])
        else:
            parts.append('<i class="fas fa-exclamation-triangle text-warning" ></i> <span class="pipeline-warning">Warning</span>')
            parts.append(page[m.end() : row_end].replace('<strong class="text-danger" >', '<strong class="text-warning" >'))
        last = row_end
    parts.append(page[last:])
    page = "".join(parts)
    failed = [severity for status, severity in statuses if status != PASSED]
    if failed and "critical" not in failed:
        page = page.replace(
            _HEADER_FAILED,
            '<i class="fas fa-exclamation-triangle text-warning" aria-hidden="true"></i> '
            f'<span class="pipeline-warning">Passed with {len(failed)} warning(s)</span>',
        )
    return page


def _site_root(page: Path, site_dir: Path) -> str:
    """The site's root folder relative to `page`, ending in "/" ("" for a page at the root)."""
    up = len(page.relative_to(site_dir).parts) - 1
    return "../" * up


def make_page_self_contained(text: str, root: str, statuses: list[tuple[str, str]] | None = None, where: str = "") -> str:
    """One GX page with nothing fetched from the network and no script; `root` leads from it to the site's root."""
    text = _SCRIPT.sub("", text)
    text = _LINK.sub(lambda m: "" if _DROPPED_LINK.search(m.group(0)) else m.group(0), text)
    text = _FOOTER.sub("", text)
    text = _IMPORT.sub("", text)
    text = _EXTERNAL_URL.sub("none", text)
    text = _LOGO.sub(lambda m: f"{m.group(1)}{root}static/images/{m.group(2)}{m.group(3)}", text)
    text = _ANY_EXTERNAL_SRC.sub(r"\1", text)
    text = _EXTERNAL_ANCHOR.sub(r"<span>\1</span>", text)
    # The "Show All / Failed Only" filter and the index page's script-drawn tables do nothing without their scripts.
    text = _remove_divs_marked(text, '<div class="card mb-3">', "<strong>Actions</strong>")
    text = _remove_divs_marked(text, '<div id="section-1-content-block-2" class="col-12 ge-index-page-tabs-container"')
    if statuses is not None:
        text = _redraw_warnings(text, statuses, where)
    return text.replace("</head>", OFFLINE_STYLE + "</head>", 1)


def make_site_self_contained(site_dir: Path, statuses: dict[str, list[tuple[str, str]]] | None = None) -> None:
    """Rewrite every page of a GX site in place; `statuses` maps a validation page (relative to the
    site, as `docs.store_result` returns it) to `page_statuses` of its result."""
    site_dir = Path(site_dir)
    statuses = statuses or {}
    for page in sorted(site_dir.rglob("*.html")):
        relative = page.relative_to(site_dir).as_posix()
        text = page.read_text(encoding="utf-8")
        page.write_text(make_page_self_contained(text, _site_root(page, site_dir), statuses.get(relative), relative), encoding="utf-8")
    # GX's template for custom styles links nothing, but it is not ours to ship either.
    for sheet in sorted(site_dir.rglob("*.css")):
        text = sheet.read_text(encoding="utf-8")
        cleaned = _EXTERNAL_URL.sub("none", _IMPORT.sub("", text))
        if cleaned != text:
            sheet.write_text(cleaned, encoding="utf-8")

