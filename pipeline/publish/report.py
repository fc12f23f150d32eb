"""The release audit page, `reports/<label>/audit.html`: what a governance officer reads and signs.

It is rendered from the release manifest alone, so it shows exactly what was published, and it can be
rebuilt from a release at any time (`write_audit_page`). It is one static file with no script and no
external resource, so it opens offline in any browser, prints cleanly, and can be filed with the
sign-off. Every count of people or records on it goes through `pipeline.publish.disclosure`, because
the page is meant to travel (attached to sign-off records) while the manifest stays with the data.
Counts of rules, files and columns describe the pipeline, not people, and are shown as they are.

Each figure carries `data-figure`, the JSON list of manifest paths it is the (controlled) sum of, so
a test, or a sceptical reader with the exact figures beside them, can check every number on the page.
The page is rendered from the exact figures (`reports/<label>/figures.json`, written beside it and
never released) when they belong to the manifest being shown, else from the released manifest,
whose counts are already controlled. One kind of figure is shown exact, marked `data-exact-figure`:
the smallest quasi-identifier group of each row-level table, which the officer must see to judge it.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from pathlib import Path
from typing import Any

from pipeline import io
from pipeline.cohort import outputs
from pipeline.publish import disclosure
from pipeline.publish.page_style import (
    CHECKLIST,
    COHORT_LABELS,
    PAGE_STYLE,
    RANK_MEANINGS,
    SOURCE_LABELS,
    ZONE_LABELS,
)

e = html.escape
STAGE_COLUMNS = ["Extract", "Rows delivered", "Set aside", "Pseudonymised", "Linked", "Not linked", "Conflicts", "Every row accounted for"]
# A service-use record is set aside for having no usable identifier (this text, as
# pipeline.pseudonymise.records.QUARANTINE_REASON reads) or for breaking a row rule of
# pipeline.pseudonymise.row_rules, and the counts carry each reason. This text labels the one line
# shown for a manifest without per-reason counts (written before they were counted). It is spelled
# here rather than imported: the records module imports the key module, which the process that
# publishes never does (pipeline.orchestration.key_holder).
SOURCE_QUARANTINE_REASON = "no usable identifier (no valid NHS number, date of birth or postcode)"
# The love plot (covariate balance before and after matching), shown when the release holds one.
# The cohort stage names the file; the default covers a cohort stage that does not make one yet.
LOVE_PLOT: str = getattr(outputs, "LOVE_PLOT", "love_plot.png")


def _named(name: str, labels: dict[str, str]) -> str:
    """A plain name with the code's name after it, e.g. "Hospital admissions (hospital_apc)"."""
    plain = labels.get(name)
    return f"{e(plain)} <span class=\"small mono\">({e(name)})</span>" if plain else f"<span class=\"mono\">{e(name)}</span>"


def _with_code(text: str) -> str:
    """Escape text, showing `quoted` parts as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", e(text))


def _get(manifest: dict[str, Any], path: list[Any]) -> Any:
    """The manifest value at a path of keys (and list positions); None where the path leads nowhere."""
    value: Any = manifest
    for key in path:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and isinstance(key, int) and 0 <= key < len(value):
            value = value[key]
        else:
            return None
    return value


def figure_value(manifest: dict[str, Any], paths: list[list[Any]]) -> int | None:
    """The exact figure behind a `data-figure`: the sum of the values at `paths` (None if all missing)."""
    values = [_get(manifest, p) for p in paths]
    present = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    return sum(present) if present else None


class _Page:
    """Collects the page's sections; `num` renders one controlled figure with its provenance."""

    def __init__(self, manifest: dict[str, Any], release_href: str | None = None, love_plot: bytes | None = None):
        self.m = manifest
        self.release_href = release_href
        self.love_plot = love_plot
        self.parts: list[str] = []

    def num(self, *paths: list[Any]) -> str:
        paths_list = [list(p) for p in paths]
        raw = figure_value(self.m, paths_list)
        shown = disclosure.shown(raw)
        css = "num suppressed" if raw is not None and disclosure.control_count(raw) is None else "num"
        return f"<td class=\"{css}\" data-figure='{e(json.dumps(paths_list))}'>{e(shown)}</td>"

    def add(self, text: str) -> None:
        self.parts.append(text)


def _table(header: list[str], rows: list[str], cls: str = "") -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _badge(result: str) -> str:
    """A status in words and a symbol, never colour alone (the page is also printed in black and white)."""
    kind = {"passed": "ok", "failed": "bad", "not checked here": "info"}.get(result, "warn")
    symbol = {"ok": "\u2714", "bad": "\u2718", "warn": "\u26a0", "info": "\u2139"}[kind]
    return f'<span class="badge {kind}">{symbol} {e(result)}</span>'


def _zone_result(digest: dict[str, Any]) -> str:
    stats = digest.get("statistics", {})
    if not digest.get("success", False):
        return "failed"
    return "passed with warnings" if stats.get("failed_warning") else "passed"


# ---------------------------------------------------------------------------------------------------
# Sections


def _identity(p: _Page, manifest_sha256: str, release_location: str) -> None:
    m, s = p.m, p.m.get("settings", {})
    matching = s.get("matching", {})
    rows = [
        ("Release label", m.get("release_label")),
        ("Release folder", release_location),
        ("Code version", m.get("code_version")),
        ("Key id (kid) of the linkage key", m.get("kid")),
        *_study_rows(m.get("study")),
        ("Study window", f"{s.get('study_start')} to {s.get('study_end')}"),
        ("Extract date", s.get("extract_date")),
        (
            "Matching",
            f"1:{matching.get('ratio')} nearest neighbour, caliper {matching.get('caliper_sd')} SD of the logit, "
            f"exact on {', '.join(matching.get('exact', [])) or 'nothing'}, "
            f"{'with' if matching.get('replace') else 'without'} replacement",
        ),
        ("Manifest SHA-256", manifest_sha256),
        *_signing_rows(m),
    ]
    body = "".join(f"<tr><th scope=\"row\">{e(k)}</th><td class=\"mono\">{e(str(v))}</td></tr>" for k, v in rows)
    p.add(f'<section id="identity"><h2>1. Which release this is</h2><table class="facts">{body}</table>'
          "<p class=\"note\">Run <code>pipeline audit &lt;release folder&gt; --fingerprint &lt;fingerprint above&gt;</code> "
          "on the copy you hand over: it must report no problem and print the same manifest SHA-256 and publishing key "
          "fingerprint as above, so this signed page binds to exactly one release.</p></section>")


def _study_rows(study: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The study file the release evaluates (pipeline.study), with its hash to compare with the file."""
    if not study:
        return [("Study", "not recorded (published before the pipeline read a study file)")]
    window = study.get("window", {})
    eligibility = study.get("eligibility", {})
    return [
        ("Study", f"{study.get('name')} ({study.get('file')})"),
        ("Study file SHA-256 (canonical form)", study.get("sha256")),
        ("Sites and operating models", f"{', '.join(study.get('sites', []))}; {study.get('teams')} teams; "
                                       f"{', '.join(study.get('operating_models', []))}"),
        ("Eligibility", f"aged {eligibility.get('min_age')}+, {eligibility.get('min_long_term_conditions')}+ long-term "
                        f"conditions" + "".join(f", {c}" for c in eligibility.get("survey_criteria", []))),
        ("Periods", f"{', '.join(study.get('periods', []))}; study's window {window.get('study_start')} to "
                    f"{window.get('study_end')}, extract {window.get('extract_date')}"),
    ]  # fmt: skip


def _signing_rows(m: dict[str, Any]) -> list[tuple[str, str]]:
    """The publishing key that signed the release (pipeline.publish.signing), as the officer compares it."""
    from pipeline.publish.signing import show_fingerprint

    fp = (m.get("signing") or {}).get("fingerprint")
    return [("Publishing key fingerprint", show_fingerprint(fp) if fp else "not signed")]


def _provenance(p: _Page, provenance: dict[str, Any] | None) -> None:
    """Who ran the release, when and from where: provenance.json, kept apart from the manifest because
    it differs from run to run. Unnumbered, so the numbered sections keep their numbers."""
    if not provenance:
        p.add('<section id="provenance"><h2>Who ran it, and when</h2><p class="note">This release has no '
              "provenance.json (it was published before the pipeline recorded one).</p></section>")
        return
    rows = [
        ("Run by", provenance.get("orchestrator")),
        ("Triggered by", provenance.get("triggered_by")),
        ("Started (UTC)", provenance.get("started")),
        ("Finished (UTC)", provenance.get("finished")),
        ("Input folder", provenance.get("input_folder")),
        ("Replaced an earlier release of this label", "yes" if provenance.get("replaced_an_existing_release") else "no"),
    ]
    body = "".join(f"<tr><th scope=\"row\">{e(k)}</th><td class=\"mono\">{e(str(v))}</td></tr>" for k, v in rows)
    runs = [
        "<tr>" + "".join(f"<td class=\"mono\">{e(str(r.get(k) or ''))}</td>" for k in ("dag_id", "run_id", "triggered_by", "started")) + "</tr>"
        for r in provenance.get("runs", [])
    ]
    p.add('<section id="provenance"><h2>Who ran it, and when</h2><table class="facts">' + body + "</table>"
          + _table(["DAG", "Run id", "Triggered by", "Started (UTC)"], runs)
          + "<p class=\"note\">From the release's provenance.json. Input file hashes and the code version are in "
          "section 1 and the manifest, which is the same for every run of the same inputs.</p></section>")


def _consent(p: _Page) -> None:
    """Every consent category, each row a part of the register (the parts add up to its size)."""
    errors = sorted(_get(p.m, ["consent", "register_errors"]) or {})
    error_paths = [["consent", "register_errors", r] for r in errors]
    rows = [
        ("People in the consent register (rows; invited to the survey)", [["consent", "in_register"]], False),
        ("Consented to linkage (as recorded)", [["consent", "consented"]], False),
        ("Declined", [["consent", "declined"]], False),
        ("Withdrew consent (withdrawal received on or before the day of the run)", [["consent", "withdrawn"]], False),
        ("of whom withdrew after the extract date, before the run (excluded all the same)", [["consent", "withdrawn_after_extract"]], True),
        ("Excluded because the same NHS number declined or withdrew under another participant ID", [["consent", "same_person_excluded"]], False),
        ("Register errors, set aside and not used (by reason below)", error_paths, False),
        *((f"register error: {r}", [path], True) for r, path in zip(errors, error_paths, strict=True)),
        ("Eligible for linkage (consented, not withdrawn, no register error or conflict)", [["consent", "eligible_for_linkage"]], False),
        ("Set aside in quarantine: register errors and unusable rows (reasons in section 4)", [["consent", "quarantined"]], False),
        ("Kept: pseudonymised and linked as participants", [["consent", "persons_pseudonymised"]], False),
    ]
    body = [
        f"<tr><th scope=\"row\">{'&emsp;' if indent else ''}{e(label)}</th>{p.num(*paths)}</tr>"
        for label, paths, indent in rows
    ]
    p.add('<section id="consent"><h2>2. Consent</h2>'
          "<p>A withdrawal excludes the person from every run made after it was received, whatever the extract date: "
          "a new linkage run is new processing. A consent or withdrawal dated after the day of the run, or a withdrawal "
          "dated before its consent, is a register error: the row is set aside, never used. Where one NHS number is under "
          "several participant IDs, the most restrictive decision applies to all of them; two consented IDs for one NHS "
          "number are both set aside. Declined, withdrawn and set-aside people are dropped before any identifier is turned "
          "into a token; they are only counted.</p>"
          + _table(["", "People"], body, "figures") + "</section>")


def _in_order(names: Any) -> list[str]:
    """Extracts in the order the pipeline lists them, unknown ones last."""
    known = list(SOURCE_LABELS)
    return sorted(names, key=lambda n: (known.index(n) if n in known else len(known), n))


def _stages(p: _Page) -> None:
    sources = _in_order(p.m.get("pseudonymisation", {}))
    rows = []
    for s in sources:
        ranks = [["linkage", "sources", s, "linked_by_rank", r] for r in sorted(_get(p.m, ["linkage", "sources", s, "linked_by_rank"]) or {})]
        exact_in = _get(p.m, ["inputs", s, "rows"])
        exact_out = sum(_get(p.m, ["pseudonymisation", s, k]) or 0 for k in ("pseudonymised", "quarantined"))
        linked = sum(_get(p.m, path) or 0 for path in ranks) + sum(_get(p.m, ["linkage", "sources", s, k]) or 0 for k in ("unlinked", "conflicts"))
        balanced = exact_in == exact_out and _get(p.m, ["pseudonymisation", s, "pseudonymised"]) == linked
        rows.append(
            f"<tr><th scope=\"row\">{_named(s, SOURCE_LABELS)}</th>{p.num(['inputs', s, 'rows'])}{p.num(['pseudonymisation', s, 'quarantined'])}"
            f"{p.num(['pseudonymisation', s, 'pseudonymised'])}{p.num(*ranks)}{p.num(['linkage', 'sources', s, 'unlinked'])}"
            f"{p.num(['linkage', 'sources', s, 'conflicts'])}<td>{_badge('passed' if balanced else 'failed')}</td></tr>"
        )
    p.add('<section id="stages"><h2>3. Rows in and out of every stage</h2>'
          "<p>Each service-use extract: the rows delivered, the rows set aside because no identifier could be used, "
          "the rows pseudonymised, and what linkage made of them. <em>Every row accounted for</em> is checked on the "
          "exact figures: delivered = set aside + pseudonymised = linked + not linked + conflicts.</p>"
          + _table(STAGE_COLUMNS, rows, "figures")
          + _cohort(p) + "</section>")


def _label(key: str) -> str:
    return COHORT_LABELS.get(key) or SOURCE_LABELS.get(key) or key.replace("_", " ").capitalize()


def _value_cell(p: _Page, path: list[Any], value: Any) -> str:
    """A count (controlled), a statistic such as a standardised mean difference (as it is), or a word."""
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, float):
        return f'<td class="num">{value:.3f}</td>'
    if isinstance(value, int) or value is None:
        return p.num(path)
    return f"<td>{e(str(value))}</td>"


def _cohort(p: _Page) -> str:
    """The cohort stage's counts, whatever the stage reports: scalars, per-source counts, per-sample tables."""
    cohort = p.m.get("cohort", {})
    order = list(COHORT_LABELS)
    keys = sorted(cohort, key=lambda k: (order.index(k) if k in order else len(order), k))
    rows, tables = [], []
    for key in keys:
        value = cohort[key]
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            rows.append(f'<tr><th scope="row">{e(_label(key))}</th>{_value_cell(p, ["cohort", key], value)}</tr>')
        elif isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()) and value:
            columns = sorted({c for v in value.values() for c in v}, key=lambda c: (order.index(c) if c in order else len(order), c))
            body = [
                f'<tr><th scope="row">{e(sub)}</th>'
                + "".join(_value_cell(p, ["cohort", key, sub, c], v.get(c)) if c in v else "<td></td>" for c in columns)
                + "</tr>"
                for sub, v in value.items()
            ]
            tables.append(f"<h3>{e(_label(key))}</h3>" + _table([""] + [_label(c) for c in columns], body, "figures"))
        elif isinstance(value, dict):
            rows += [
                f'<tr><th scope="row">{e(_label(key))}: {e(_label(sub))}</th>{_value_cell(p, ["cohort", key, sub], v)}</tr>'
                for sub, v in value.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            ]
    rows += [
        f'<tr><th scope="row">Rows in {e(name)}</th>{p.num(["files", name, "rows"])}</tr>'
        for name in sorted(p.m.get("files", {}))
        if "rows" in p.m["files"][name]
    ]
    plot = ""
    if LOVE_PLOT in p.m.get("files", {}) and p.love_plot:
        # Embedded, not linked: a copied reports folder (or the page filed alone) still shows it.
        src = "data:image/png;base64," + base64.b64encode(p.love_plot).decode("ascii")
        plot = (f'<figure><img src="{src}" alt="Love plot: standardised mean difference of each covariate before and after matching" '
                f'style="max-width:100%"><figcaption>Covariate balance before and after matching (the release\u2019s {e(LOVE_PLOT)}). '
                "A standardised mean difference of 0.1 or less is the usual mark of good balance.</figcaption></figure>")
    return ("<h3>From participants to the released cohort</h3>"
            + _table(["", "Count"], rows, "figures") + "".join(tables) + plot)


def _quarantine(p: _Page) -> None:
    rows = [
        f"<tr><td>{_named('consent_register', SOURCE_LABELS)}</td><td>{e(reason)}</td>{p.num(['consent', 'quarantine_reasons', reason])}</tr>"
        for reason in sorted(_get(p.m, ["consent", "quarantine_reasons"]) or {})
    ]
    for s in _in_order(p.m.get("pseudonymisation", {})):
        # Per reason as the run recorded them (no usable identifier, and the row rules of
        # pipeline.pseudonymise.row_rules); one line for a manifest written before reasons were counted.
        reasons = _get(p.m, ["pseudonymisation", s, "quarantine_reasons"])
        if reasons:
            rows += [
                f"<tr><td>{_named(s, SOURCE_LABELS)}</td><td>{e(r)}</td>{p.num(['pseudonymisation', s, 'quarantine_reasons', r])}</tr>"
                for r in sorted(reasons)
            ]
        else:
            rows.append(
                f"<tr><td>{_named(s, SOURCE_LABELS)}</td><td>{e(SOURCE_QUARANTINE_REASON)}</td>{p.num(['pseudonymisation', s, 'quarantined'])}</tr>"
            )
    p.add('<section id="quarantine"><h2>4. Rows set aside (quarantine) and why</h2>'
          "<p>Set-aside rows stay in the key holder's <code>raw/quarantine/</code> folder; they are not linked or released.</p>"
          + _table(["Dataset", "Reason", "Rows"], rows, "figures") + "</section>")


def _linkage(p: _Page) -> None:
    sources = _get(p.m, ["linkage", "sources"]) or {}
    ranks = sorted({r for s in sources.values() for r in s.get("linked_by_rank", {})})
    rows = [
        f"<tr><th scope=\"row\">{_named(s, SOURCE_LABELS)}</th>"
        + "".join(p.num(["linkage", "sources", s, "linked_by_rank", r]) for r in ranks)
        + p.num(["linkage", "sources", s, "unlinked"]) + p.num(["linkage", "sources", s, "conflicts"])
        + p.num(["linkage", "sources", s, "participants_found"]) + "</tr>"
        for s in _in_order(sources)
    ]
    legend = "".join(f"<li><strong>Rank {e(r)}</strong>: {e(RANK_MEANINGS.get(r, 'see DESIGN.md'))}</li>" for r in ranks)
    p.add('<section id="linkage"><h2>5. Linkage by rank</h2>'
          "<p>Records linked to a participant, by the rule (rank) that linked them; all comparisons are made on tokens, never on names or numbers. "
          "A conflict is a record that matched two participants equally well: it is left unlinked, never resolved silently.</p>"
          + _table(["Extract"] + [f"Rank {r}" for r in ranks] + ["Not linked", "Conflicts", "Participants found"], rows, "figures")
          + f"<ul class=\"legend\">{legend}</ul>" + _linkage_quality(p) + "</section>")


BREAKDOWN_LABELS = {"age_band": "Age band", "sex": "Sex", "imd_quintile": "IMD quintile (1 = most deprived)", "site": "Site"}


def _count_span(p: _Page, path: list[Any]) -> str:
    """One controlled count inside a cell, with its provenance (as `_Page.num`, for a span)."""
    return f"<span data-figure='{e(json.dumps([path]))}'>{e(disclosure.shown(_get(p.m, path)))}</span>"


def _share_cell(p: _Page, base: list[Any]) -> str:
    """The share in per cent over "count of denominator", both controlled. The share is computed from
    the controlled figures, so it reveals no more than they do; hidden when either is."""
    raw_count, raw_of = _get(p.m, base + ["count"]), _get(p.m, base + ["of"])
    count = disclosure.control_count(raw_count) if raw_count is not None else None
    of = disclosure.control_count(raw_of) if raw_of is not None else None
    share = f"{100 * count / of:.1f}%" if count is not None and of else "\u2013"
    return (f'<td class="num">{share}<br><span class="small">{_count_span(p, base + ["count"])} of '
            f"{_count_span(p, base + ['of'])}</span></td>")


def _by_group(p: _Page, measure: str, intro: str) -> str:
    """One table per breakdown: a row per group, a column per source (share, count of denominator)."""
    figures = _get(p.m, ["linkage", "quality", measure]) or {}
    sources = _in_order(figures)
    if not sources:
        return ""
    out = [f"<p>{intro}</p>"]
    for breakdown, title in BREAKDOWN_LABELS.items():
        groups = sorted({g for s in sources for g in (figures[s].get(breakdown) or {})})
        if not groups:
            continue
        rows = []
        for g in groups:
            cells = "".join(
                _share_cell(p, ["linkage", "quality", measure, s, breakdown, g])
                if _get(p.m, ["linkage", "quality", measure, s, breakdown, g]) is not None else "<td></td>"
                for s in sources
            )
            rows.append(f'<tr><th scope="row">{e(g)}</th>{cells}</tr>')
        out.append(f"<h4>{e(title)}</h4>" + _table([title] + [SOURCE_LABELS.get(s, s) for s in sources], rows, "figures"))
    return "".join(out)


def _weight_histogram(p: _Page) -> str:
    """Records the probabilistic step scored, by match-weight bin and outcome, per source."""
    hist = _get(p.m, ["linkage", "quality", "match_weight_histogram"]) or {}
    rows = []
    for s in _in_order(hist):
        bins: dict[str, dict[str, int]] = {}
        for i, r in enumerate(hist[s]):
            bins.setdefault(r["bin"], {})[r["outcome"]] = i
        for b in sorted(bins, key=_bin_start):
            cells = "".join(
                p.num(["linkage", "quality", "match_weight_histogram", s, bins[b][o], "records"]) if o in bins[b] else '<td class="num">0</td>'
                for o in ("P", "unlinked", "conflict")
            )
            rows.append(f'<tr><th scope="row">{_named(s, SOURCE_LABELS)}</th><td class="mono">{e(b)}</td>{cells}</tr>')
    if not rows:
        return "<p>The probabilistic step scored no record in this run.</p>"
    return _table(["Extract", "Match weight (bits)", "Linked (rank P)", "Not linked", "Conflict"], rows, "figures")


def _bin_start(label: str) -> float:
    """Sort key of a bin label such as "[10, 15)" or "< -10"."""
    found = re.search(r"-?\d+(?:\.\d+)?", label)
    start = float(found.group()) if found else 0.0
    return start - 0.5 if label.lstrip().startswith("<") else start


def _linkage_quality(p: _Page) -> str:
    """Whether linkage failure is biased: participants found and rank P's share, by group; the weights."""
    if not _get(p.m, ["linkage", "quality"]):
        return ""
    return ("<h3>Linkage quality: is linkage failure biased?</h3>"
            "<p>A group whose participants are found less often, or whose records needed the probabilistic rank more often, "
            "is a group whose service use may be undercounted or rests on weaker evidence. Compare the shares across groups; "
            "shares are computed from the controlled counts.</p>"
            + _by_group(p, "participants_found_by_group",
                        "<strong>Participants found</strong> in each extract: the share of the group's participants, "
                        "and below it how many were found of how many.")
            + _by_group(p, "linked_by_p_by_group",
                        "<strong>Linked records that needed the probabilistic rank (P)</strong>: the share of the group's "
                        "linked records in each extract.")
            + "<h4>Match weights of the records the probabilistic step scored</h4>"
            "<p>Each record's best candidate, in bins of match weight (log2 of the odds of a match). Records just below the "
            "threshold are the near misses; a conflict is a record two participants both matched.</p>"
            + _weight_histogram(p))


def _validation(p: _Page, data_docs_href: str) -> None:
    digests = p.m.get("validation", {})
    rows, warnings = [], []
    order = list(ZONE_LABELS) + sorted(set(digests) - set(ZONE_LABELS))
    for zone in [z for z in order if z in digests]:
        d = digests[zone]
        stats = d.get("statistics", {})
        rows.append(
            f"<tr><th scope=\"row\">{_named(zone, ZONE_LABELS)}</th><td>{_badge(_zone_result(d))}</td>"
            f"<td class=\"num\">{e(str(stats.get('files', '')))}</td>"
            f"{p.num(['validation', zone, 'statistics', 'rows'])}<td class=\"num\">{e(str(stats.get('evaluated_expectations', '')))}</td>"
            f"<td class=\"num\">{e(str(stats.get('failed_critical', '')))}</td><td class=\"num\">{e(str(stats.get('failed_warning', '')))}</td></tr>"
        )
        for dataset, entry in sorted(d.get("datasets", {}).items()):
            for i, f in enumerate(entry.get("files", [])):
                for j, fail in enumerate(f.get("failures", [])):
                    path = ["validation", zone, "datasets", dataset, "files", i, "failures", j, "unexpected_count"]
                    count = p.num(path) if fail.get("unexpected_count") is not None else "<td>could not be checked</td>"
                    warnings.append(
                        f"<tr><td>{e(zone)}</td><td>{e(dataset)}</td><td>{e(f.get('file', ''))}</td><td>{e(fail.get('column') or '(whole file)')}</td>"
                        f"<td>{e(fail.get('rule', ''))}<br><span class=\"small mono\">{e(fail.get('expectation', ''))} "
                        f"[{e(fail.get('severity', ''))}]</span></td>{count}</tr>"
                    )
    warning_table = (_table(["Zone", "Dataset", "File", "Column", "Rule (expectation)", "Rows breaking it"], warnings, "figures")
                     if warnings else "<p>No expectation failed, not even a warning.</p>")
    p.add('<section id="validation"><h2>6. Validation (Great Expectations)</h2>'
          "<p>Every file of every zone is checked against its data contract and business rules. A <em>critical</em> failure stops the run "
          "before publication, so a published release has none; <em>warnings</em> are listed here for review. "
          f'Full results, rule by rule: <a href="{e(data_docs_href)}">Great Expectations Data Docs</a> (counts and rules only, no data values).</p>'
          + _table(["Zone", "Result", "Files", "Rows", "Expectations checked", "Critical failures", "Warnings"], rows, "figures")
          + "<h3>Warnings to review</h3>" + warning_table + "</section>")


def _privacy(p: _Page) -> None:
    privacy = p.m.get("privacy", {})
    rows = [
        f"<tr><td>{e(r['rule'][:1].upper() + r['rule'][1:])}</td><td>{e(r['checks'])}</td><td>{_badge(r['result'])}</td></tr>"
        for r in privacy.get("rules", [])
    ]
    warnings = "".join(f"<li>{e(w)}</li>" for w in privacy.get("warnings", []))
    qi_rows = [
        f"<tr><th scope=\"row\">{e(table)}</th><td>{e(', '.join(q.get('columns', [])))}</td>"
        f"{p.num(['privacy', 'quasi_identifiers', table, 'groups'])}{_exact_cell(p, ['privacy', 'quasi_identifiers', table, 'smallest_group'])}"
        f"{p.num(['privacy', 'quasi_identifiers', table, 'groups_below_minimum'])}</tr>"
        for table, q in sorted(privacy.get("quasi_identifiers", {}).items())
    ]
    minimum = privacy.get("min_group_size", disclosure.MIN_GROUP_SIZE)
    p.add('<section id="privacy"><h2>7. Privacy checks</h2>'
          "<p>Run on every release before it is published, and again by <code>pipeline audit</code>. Any failure stops publication.</p>"
          + _table(["Rule", "What is checked", "Result"], rows)
          + (f"<h3>Warnings</h3><ul>{warnings}</ul>" if warnings else "")
          + "<h3>Quasi-identifiers: how small is the smallest group?</h3>"
          "<p>People who share every quasi-identifier value (for example age band, sex and deprivation quintile) form a group; "
          "the smaller the smallest group, the easier it is to single someone out by combining the release with other knowledge. "
          f"A release is refused when any group of a row-level table, over all its quasi-identifiers, has fewer than {minimum} people. "
          "The smallest group is shown exactly (this page is internal); it is controlled in the released manifest.</p>"
          + _small_groups(p)
          + (_table(["Table", "Quasi-identifiers", "Groups", "People in the smallest group (exact)", f"Groups of fewer than {minimum} people"],
                    qi_rows, "figures")
             if qi_rows else "<p>No release table holds quasi-identifiers.</p>")
          + "</section>")


def _exact_cell(p: _Page, path: list[Any]) -> str:
    """A figure shown exactly (the smallest group size), marked so a test can find and check it."""
    value = _get(p.m, path)
    shown = disclosure.NOT_RECORDED if value is None else f"{value:,}" if isinstance(value, int) else str(value)
    return f"<td class=\"num\" data-exact-figure='{e(json.dumps([path]))}'>{e(shown)}</td>"


def _small_groups(p: _Page) -> str:
    """What the run's small-group policy did (manifest disclosure_control.small_groups), counts controlled."""
    base = ["disclosure_control", "small_groups"]
    s = _get(p.m, base)
    if not isinstance(s, dict):
        return ""
    rows = [f'<tr><th scope="row">Values withheld: {e(c)}</th>{p.num([*base, "withheld_values", c])}</tr>' for c in s.get("withheld_values", {})]
    rows.append(f'<tr><th scope="row">People dropped from every table</th>{p.num([*base, "people_dropped"])}</tr>')
    rows += [f'<tr><th scope="row">Rows dropped from {e(t)}</th>{p.num([*base, "rows_dropped", t])}</tr>' for t in sorted(s.get("rows_dropped", {}))]
    coarsened = ", ".join(s.get("coarsened") or []) or "nothing"
    return (f"<p>Small-group policy of this run: <strong>{e(str(s.get('policy')))}</strong>; merged for everyone: {e(coarsened)}; "
            f"withheld in this order: {e(', '.join(s.get('withheld_order') or []))}.</p>" + _table(["", "Count"], rows, "figures"))


def _disclosure(p: _Page) -> None:
    d = p.m.get("disclosure_control", {})
    tables = d.get("tables", {})
    rows = [
        f"<tr><th scope=\"row\">{e(t)}</th><td>{e(', '.join(v.get('columns', [])))}</td>"
        f"<td class=\"num\">{e(str(v.get('suppressed_cells', 0)))}</td><td class=\"num\">{e(str(v.get('changed_cells', 0)))}</td></tr>"
        for t, v in sorted(tables.items())
    ]
    applied = (_table(["Aggregate table", "Count columns", "Cells suppressed", "Cells changed"], rows, "figures") if rows
               else "<p>This release holds no aggregate table with count columns "
               "(its tables are one row per participant, used inside the secure environment).</p>")
    p.add('<section id="disclosure"><h2>8. Disclosure control</h2>'
          f"<p>Rule: {e(d.get('rule', disclosure.RULE_TEXT))}. It is applied to every count column of the release's aggregate tables "
          "and to every count of people or records on this page. A hidden count is shown as "
          f"<q>{e(disclosure.SUPPRESSED_TEXT)}</q>. Totals are rounded on their own, so parts may not add up to their total exactly.</p>"
          + applied + "</section>")


def _files(p: _Page) -> None:
    inputs = [
        f"<tr><th scope=\"row\">{_named(name, SOURCE_LABELS)}</th><td class=\"mono\">{e(str(v.get('file', '')))}</td>{p.num(['inputs', name, 'rows'])}"
        f"<td class=\"mono hash\">{e(str(v.get('sha256', '')))}</td></tr>"
        for name, v in ((n, p.m["inputs"][n]) for n in _in_order(p.m.get("inputs", {})))
    ]
    released = [
        f"<tr><th scope=\"row\" class=\"mono\">{e(name)}</th>"
        + (p.num(["files", name, "rows"]) if "rows" in v else "<td class=\"num\">\u2013</td>")
        + f"<td class=\"mono hash\">{e(str(v.get('sha256', '')))}</td></tr>"
        for name, v in sorted(p.m.get("files", {}).items())
    ]
    p.add('<section id="files"><h2>9. Files and their fingerprints (SHA-256)</h2>'
          "<p>A SHA-256 fingerprint changes if a single byte of the file changes. Compare the inputs' fingerprints with the "
          "providers' delivery notes; <code>pipeline audit</code> recomputes the release's.</p>"
          "<h3>Input files</h3>" + _table(["Dataset", "File", "Rows", "SHA-256"], inputs, "figures")
          + "<h3>Release files</h3>" + _table(["File", "Rows", "SHA-256"], released, "figures") + "</section>")


def _checklist(p: _Page) -> None:
    items = "".join(
        f'<li><label><input type="checkbox"> <strong>{e(title)}</strong> {_with_code(text)}</label></li>' for title, text in CHECKLIST
    )
    p.add('<section id="sign-off"><h2>10. Sign-off</h2><p>Tick each item once you have checked it, then sign.</p>'
          f'<ol class="checklist">{items}</ol>'
          '<table class="signature"><tr><th>Name</th><td></td></tr><tr><th>Role</th><td></td></tr>'
          "<tr><th>Decision</th><td>approved / approved with conditions / refused</td></tr>"
          "<tr><th>Date</th><td></td></tr><tr><th>Signature</th><td></td></tr></table></section>")


def _summary(p: _Page) -> str:
    privacy = p.m.get("privacy", {})
    failed = [r for r in privacy.get("rules", []) if r.get("result") == "failed"]
    critical = sum(d.get("statistics", {}).get("failed_critical", 0) for d in p.m.get("validation", {}).values())
    warnings = sum(d.get("statistics", {}).get("failed_warning", 0) for d in p.m.get("validation", {}).values())
    warnings += len(privacy.get("warnings", []))
    if failed or critical:
        return '<p class="banner bad">\u2718 This release failed a check and must not be used.</p>'
    if warnings:
        return (f'<p class="banner warn">\u26a0 Every blocking check passed. {warnings} warning(s) need review before sign-off '
                "(sections 6 and 7).</p>")
    return '<p class="banner ok">\u2714 Every check passed, with no warning.</p>'


def render_audit_page(
    manifest: dict[str, Any],
    manifest_sha256: str,
    release_location: str,
    *,
    release_href: str | None = None,
    data_docs_href: str = "data_docs/index.html",
    provenance: dict[str, Any] | None = None,
    love_plot: bytes | None = None,
) -> str:
    """The whole page as one HTML string (no script, no link out of the reports folder).

    `love_plot` is the release's love_plot.png, embedded as a data URI when the manifest lists it.
    `provenance` is the release's provenance.json (who ran it, when), shown after section 1.
    """
    p = _Page(manifest, release_href, love_plot)
    _identity(p, manifest_sha256, release_location)
    _provenance(p, provenance)
    _consent(p)
    _stages(p)
    _quarantine(p)
    _linkage(p)
    _validation(p, data_docs_href)
    _privacy(p)
    _disclosure(p)
    _files(p)
    _checklist(p)
    label = e(str(manifest.get("release_label", "")))
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Release audit: {label}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">{PAGE_STYLE}</head><body><main>'
        f"<h1>Release audit: {label}</h1>"
        f"<p class=\"lede\">For the governance officer: is this release complete, valid and safe to hand to economists? "
        f"Every count of people or records on this page is rounded to the nearest {disclosure.ROUNDING_BASE}, and counts from 1 to "
        f"{disclosure.SUPPRESSION_THRESHOLD} are hidden (<q>{e(disclosure.SUPPRESSED_TEXT)}</q>); "
        "the exact figures are in figures.json beside this page, which is never released.</p>"
        + _summary(p)
        + '<nav><a href="#consent">Consent</a> <a href="#stages">Stages</a> <a href="#quarantine">Quarantine</a> '
        '<a href="#linkage">Linkage</a> <a href="#validation">Validation</a> <a href="#privacy">Privacy</a> '
        f'<a href="#files">Files</a> <a href="#sign-off">Sign-off</a> <a href="{e(data_docs_href)}">Data Docs</a></nav>'
        + "".join(p.parts)
        + f'<footer>Made by the pipeline ({e(str(manifest.get("code_version", "")))}) from the release manifest; '
        "no patient\u2019s value appears on this page.</footer>"
        + "</main></body></html>\n"
    )


FIGURES = "figures.json"


def page_figures(manifest_path: Path, reports_dir: Path) -> dict[str, Any]:
    """The exact figures behind a released manifest when `reports_dir` holds them for that very manifest
    (same SHA-256), else the released manifest itself (its counts already controlled)."""
    figures = Path(reports_dir) / FIGURES
    if figures.is_file():
        exact = io.read_json(figures)
        if exact.get("manifest_sha256") == io.sha256_file(manifest_path):
            return exact["manifest"]
    return io.read_json(manifest_path)


def _love_plot_bytes(manifest_path: Path) -> bytes | None:
    """The love plot beside a release manifest, if the manifest lists it with these very bytes."""
    plot = manifest_path.with_name(LOVE_PLOT)
    listed = io.read_json(manifest_path).get("files", {}).get(LOVE_PLOT, {})
    if not plot.is_file() or listed.get("sha256") != io.sha256_file(plot):
        return None
    return plot.read_bytes()


def page_for(manifest_path: Path, reports_dir: Path, release_dir: Path, figures_dir: Path | None = None) -> str:
    """The page of a release whose manifest is at `manifest_path` and which is (or will be) at `release_dir`.

    `reports_dir` is where the page is published (its links are relative to it); `figures_dir` holds
    the exact figures (`figures.json`) while the run's reports are still staged (default `reports_dir`).
    """
    from pipeline.publish.provenance import PROVENANCE

    release_href = os.path.relpath(Path(release_dir).resolve(), Path(reports_dir).resolve())
    provenance_path = Path(manifest_path).with_name(PROVENANCE)
    return render_audit_page(
        page_figures(manifest_path, figures_dir or reports_dir), io.sha256_file(manifest_path), str(release_dir), release_href=Path(release_href).as_posix(),
        provenance=io.read_json(provenance_path) if provenance_path.is_file() else None,
        love_plot=_love_plot_bytes(Path(manifest_path)),
    )


def write_audit_page(release_dir: Path, reports_dir: Path) -> Path:
    """Re-render the page of a published release into `reports_dir/audit.html` (atomically)."""
    page = page_for(Path(release_dir) / "manifest.json", reports_dir, release_dir)
    target = Path(reports_dir) / "audit.html"
    with io.atomic_path(target) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return target
