"""A run's reports folder works with no network: no asset fetched from outside, nothing linked outside
the folder, warnings drawn as warnings, and the pages styled when Chromium cannot reach any server.

The published reports of the session's reference run (tests/conftest.py) are the pages under test;
small validation runs cover warnings next to critical failures.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

import polars as pl
import pytest
from test_audit_page import chromium
from test_validate import WINDOW, clean_frame, write

from pipeline.errors import ValidationFailed
from pipeline.validate import validate_files
from pipeline.validate.offline_pages import make_page_self_contained

# Every way an HTML or CSS file can make a browser fetch something: src= on any tag, href= on a link
# (stylesheet, icon, preload), url() and @import in CSS.
ASSET_REFERENCES = (
    re.compile(r"""<[a-z]+\b[^>]*?\bsrc\s*=\s*["']?([^"'\s>]*)""", re.I),
    re.compile(r"""<(?:link|script)\b[^>]*?\bhref\s*=\s*["']?([^"'\s>]*)""", re.I),
    re.compile(r"""url\(\s*["']?([^"')\s]*)""", re.I),
    re.compile(r"""@import\s+(?:url\()?\s*["']?([^"');\s]*)""", re.I),
)
ANY_HREF = re.compile(r"""\bhref\s*=\s*["']?([^"'\s>]*)""", re.I)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.I)


def report_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".html", ".css"))


def references(text: str) -> list[str]:
    return [m.group(1) for pattern in ASSET_REFERENCES for m in pattern.finditer(text)]


def test_no_report_page_fetches_anything_from_the_network(reference) -> None:
    files = report_files(reference.cfg.reports_dir)
    assert len(files) > 10 and any("validations" in p.parts for p in files)
    found = {}
    for path in files:
        text = path.read_text(encoding="utf-8")
        external = [r for r in references(text) if EXTERNAL.match(r)]
        # Ordinary links out are plain text too: a secure environment cannot follow them.
        external += [r for r in ANY_HREF.findall(text) if EXTERNAL.match(r) or r.lower().startswith(("http:", "https:"))]
        if external:
            found[str(path.relative_to(reference.cfg.reports_dir))] = sorted(set(external))[:5]
    assert not found, f"report files that reach outside the machine: {found}"


def test_a_copied_reports_folder_needs_nothing_outside_itself(reference, tmp_path) -> None:
    copy = tmp_path / "elsewhere" / "reports" / reference.cfg.release_label
    shutil.copytree(reference.cfg.reports_dir, copy)  # no release beside it: it stayed behind
    broken = []
    for path in report_files(copy):
        text = path.read_text(encoding="utf-8")
        for ref in references(text) + ANY_HREF.findall(text):
            target = unquote(urlsplit(ref).path)
            if not target or ref.startswith(("#", "data:")):
                continue
            resolved = (path.parent / target).resolve()
            if not resolved.is_relative_to(copy.resolve()) or not resolved.exists():
                broken.append((str(path.relative_to(copy)), ref))
    assert not broken, f"references the copied reports folder cannot satisfy: {sorted(set(broken))[:10]}"
    audit = (copy / "audit.html").read_text(encoding="utf-8")
    if (reference.release / "love_plot.png").is_file():
        assert 'src="data:image/png;base64,' in audit, "the love plot is not embedded in the audit page"


def test_self_containing_a_page_is_deterministic_and_leaves_no_script(reference) -> None:
    page = next((reference.cfg.reports_dir / "data_docs").rglob("validations/**/*.html"))
    text = page.read_text(encoding="utf-8")
    again = make_page_self_contained(text, "../../../../")
    assert again == make_page_self_contained(text, "../../../../")
    assert "<script" not in text.lower() and "<footer" not in text.lower() and "Actions</strong>" not in text


def _docs(reports: Path) -> tuple[str, str]:
    site = reports / "data_docs" / "raw"
    (page,) = (site / "validations").rglob("*.html")
    return (site / "index.html").read_text(), page.read_text()


def test_a_warning_is_drawn_as_a_warning(tmp_path) -> None:
    df = clean_frame("social_care").with_columns(
        service_type=pl.Series(["home_care", "residential", "nursing"]), hours_per_week=pl.Series([10.0, 131.8125, None])
    )
    path = write(df, "social_care", tmp_path / "in" / "social_care.parquet")
    validate_files("raw", {"social_care": [path]}, tmp_path / "reports", "run-1", parameters=WINDOW)
    index, page = _docs(tmp_path / "reports")
    assert "passed with 1 warning(s)" in (tmp_path / "reports" / "data_docs" / "index.html").read_text()
    assert 'Status:</span> <i class="fas fa-exclamation-triangle text-warning" aria-hidden="true"></i> <span class="pipeline-warning">Passed with 1 warning(s)</span>' in page
    assert page.count('<span class="pipeline-warning">Warning</span>') == 1
    assert "fa-times text-danger" not in page and "text-danger" not in page.split("</head>", 1)[1]
    assert "\u26a0 Warning" in index


def test_a_warning_beside_a_critical_failure_keeps_its_own_colour(tmp_path) -> None:
    df = clean_frame("social_care").with_columns(
        service_type=pl.Series(["home_care", "residential", "nursing"]), hours_per_week=pl.Series([10.0, 131.8125, None]),
        record_id=pl.Series(["SC000000001", "SC000000001", "SC000000003"]),  # a repeated id: critical
    )  # fmt: skip
    path = write(df, "social_care", tmp_path / "in" / "social_care.parquet")
    with pytest.raises(ValidationFailed):
        validate_files("raw", {"social_care": [path]}, tmp_path / "reports", "run-1", parameters=WINDOW)
    _, page = _docs(tmp_path / "reports")
    assert page.count('<span class="pipeline-warning">Warning</span>') == 1
    assert page.count('<i class="fas fa-times text-danger" ></i> <span class="pipeline-failed">Failed</span>') == 1
    assert '<i class="fas fa-times text-danger" aria-hidden="true"></i> Failed' in page  # the page failed
    # The warning is the hours rule's row, the failure the record id's.
    warning_row = page[page.index('<span class="pipeline-warning">Warning</span>') :][:3000]
    assert "must be null" in warning_row


def screenshot(page: Path, png: Path, tmp_path: Path) -> None:
    """Chromium with every connection refused and every host name unknown: what an offline browser shows."""
    result = subprocess.run(
        [
            chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--proxy-server=127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--window-size=1920,1400", f"--screenshot={png}", page.resolve().as_uri(),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and png.is_file(), f"Chromium could not render {page}: {result.stderr[-2000:]}"


PAGE_BACKGROUND = (246, 246, 244)  # #f6f6f4, the background of our stylesheets; unstyled pages are white


def test_the_pages_are_styled_with_the_network_off(reference, tmp_path) -> None:
    from PIL import Image

    reports = reference.cfg.reports_dir
    pages = {
        "data_docs_index": reports / "data_docs" / "release" / "index.html",
        "validation_page": next((reports / "data_docs" / "release").rglob("validations/**/*.html")),
        "audit_page": reports / "audit.html",
    }
    for name, page in pages.items():
        png = tmp_path / f"{name}.png"
        screenshot(page, png, tmp_path)
        image = Image.open(png).convert("RGB")
        colours = image.getcolors(maxcolors=image.width * image.height)
        share = {colour: count / (image.width * image.height) for count, colour in colours}
        # Styled: mostly our page background; an unstyled page is mostly white with black serif text.
        assert share.get(PAGE_BACKGROUND, 0) > 0.2, f"{name} does not look styled offline: {share.get((255, 255, 255), 0):.0%} white"
        assert share.get((255, 255, 255), 0) < 0.9, name
