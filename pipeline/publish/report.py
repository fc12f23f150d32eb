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
import math
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
# The release's unit-cost table and balance table, read for the "needs your judgement" list.
UNIT_COSTS = "unit_costs.csv"
BALANCE = "balance.parquet"


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
            f"{matching.get('method', 'nearest')} ({matching.get('distance', 'glm')}) 1:{matching.get('ratio')}, "
            f"caliper {matching.get('caliper', matching.get('caliper_sd'))} SD of the logit, "
            f"exact on {', '.join(matching.get('exact', [])) or 'nothing'}, "
            f"{'with' if matching.get('replace') else 'without'} replacement; balance threshold |SMD| < "
            f"{matching.get('balance_threshold', 0.1)}, ladder {'on' if matching.get('ladder') else 'off'}",
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
        if isinstance(value, bool) or value is None or key in ("samples", "balance"):
            continue  # samples and the balance gate have their own table (_balance_gate)
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
            + _table(["", "Count"], rows, "figures") + "".join(tables) + _balance_gate(p) + plot)


def _balance_gate(p: _Page) -> str:
    """Matching per sample against the study's balance threshold: the numbers matched (controlled), the
    largest |SMD| and variance ratios after matching, the specification kept, and for a sample that
    missed the threshold every specification the ladder tried."""
    samples = _get(p.m, ["cohort", "samples"]) or {}
    if not samples:
        return ""
    threshold = _get(p.m, ["cohort", "balance", "threshold"]) or _get(p.m, ["settings", "matching", "balance_threshold"]) or 0.1

    def stat(v: Any) -> str:
        return f'<td class="num">{v:.3f}</td>' if isinstance(v, float) else "<td>–</td>"

    rows, tried = [], []
    for name, s in samples.items():
        balanced = bool(s.get("balanced", (s.get("max_abs_smd_after") or 1) < threshold))
        rows.append(
            f'<tr><th scope="row" class="mono">{e(name)}</th>'
            + "".join(p.num(["cohort", "samples", name, k]) for k in ("mdt", "comparators", "matched_mdt", "matched_comparators"))
            + stat(s.get("max_abs_smd_after")) + f"<td>{e(str(s.get('worst_covariate') or ''))}</td>"
            + stat(s.get("variance_ratio_after_min")) + stat(s.get("variance_ratio_after_max"))
            + f"<td>{_badge('passed' if balanced else 'failed')}</td><td>{e(str(s.get('specification') or ''))}</td>"
            + f'<td class="num">{len(s.get("attempts") or [])}</td></tr>'
        )
        if not balanced:
            steps = "".join(
                f"<li>{e(str(a.get('specification')))}: largest |SMD| "
                + (f"{a['max_abs_smd_after']:.3f}" if isinstance(a.get("max_abs_smd_after"), float) else "–")
                + f" ({e(str(a.get('worst_covariate') or ''))}){' — kept' if a.get('kept') else ''}</li>"
                for a in s.get("attempts") or []
            )
            tried.append(f'<p><strong class="mono">{e(name)}</strong> is above the threshold after every attempt:</p><ol>{steps}</ol>')
    note = (f'<p class="note">Balance gate: every covariate’s |standardised mean difference| after matching must be below '
            f"{threshold:g} in every sample. A failed sample is released but its estimates need the caution of docs/economists.md.</p>")
    header = ["Sample", "MDT", "Comparators", "Matched MDT", "Matched comparators", "Largest |SMD| after", "Covariate",
              "Variance ratio min", "Variance ratio max", "Balance", "Specification kept", "Attempts"]  # fmt: skip
    return "<h3>Balance by sample</h3>" + _table(header, rows, "figures") + note + "".join(tried)


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
          + f"<ul class=\"legend\">{legend}</ul>" + _fewer_identifiers(p) + _linkage_quality(p) + "</section>")


# How the input manifest says a delivered source held an identifier (pipeline.deliveries), in words.
IDENTIFIER_WORDS = {"nhs_number": "NHS number", "given_name": "given name", "family_name": "family name",
                    "date_of_birth": "date of birth", "sex": "sex", "postcode": "postcode"}  # fmt: skip


def _fewer_identifiers(p: _Page) -> str:
    """A note naming each source delivered without some identifiers (its mapping says so): it links on
    the others, so its records are likelier to stay unlinked or to link at a lower rank."""
    notes = []
    for name in _in_order(p.m.get("inputs", {})):
        delivered = p.m["inputs"][name]
        carried = delivered.get("identifiers") or {}
        lacking = [f"{IDENTIFIER_WORDS.get(i, i)} ({how})" for i, how in carried.items() if how != "carried"]
        if lacking:
            mapping = delivered.get("mapping", {})
            notes.append(f"<li>{_named(name, SOURCE_LABELS)} (mapping {e(str(mapping.get('name', '')))} v{e(str(mapping.get('version', '')))}): "
                         f"{e(', '.join(lacking))}</li>")
    if not notes:
        return ""
    return ("<p>These sources were delivered without some identifiers and linked on the ones they carry; a date of birth "
            "given to the month only is not used (tokens need the whole date):</p>" f"<ul>{''.join(notes)}</ul>")


BREAKDOWN_LABELS = {"age_band": "Age band", "sex": "Sex", "imd_quintile": "IMD quintile (1 = most deprived)", "site": "Site"}


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


# ---------------------------------------------------------------------------------------------------
# Linkage quality as the GUILD guidance asks (Gilbert et al. 2018), and the verdict.

IDENTIFIER_LABELS = {"nhs_number": "NHS number", "date_of_birth": "Date of birth", "postcode": "Postcode", "name": "Surname"}
CHARACTERISTIC_LABELS = {"provider": "Provider", "record_year": "Year of the record", "record_kind": "Kind of record"}
RANKS = ("1", "2", "3", "4", "5", "P")
# A standardised mean difference above this after matching is the usual mark of imbalance.
SMD_LIMIT = 0.1
QUALITY = ["linkage", "quality"]


def _controlled(p: _Page, paths: list[list[Any]]) -> int | None:
    """The controlled sum of the figures at `paths` (None when hidden or missing)."""
    raw = figure_value(p.m, paths)
    return disclosure.control_count(raw) if raw is not None else None


def _share_of(p: _Page, count_paths: list[list[Any]], of_paths: list[list[Any]]) -> float | None:
    """A share computed from controlled figures only, so it reveals no more than they do. A count the
    manifest does not hold at all (no record at that rank, say) is none: 0%; a hidden count hides the share."""
    of = _controlled(p, of_paths)
    count = 0 if figure_value(p.m, count_paths) is None else _controlled(p, count_paths)
    return count / of if count is not None and of else None


def _pct(share: float | None) -> str:
    return "\u2013" if share is None else f"{100 * share:.0f}%"


def _share_td(p: _Page, count_paths: list[list[Any]], of_paths: list[list[Any]], *, low: float | None = None) -> str:
    """A cell with the share (from controlled figures) and its provenance; marked when below `low`."""
    share = _share_of(p, count_paths, of_paths)
    warn = low is not None and share is not None and share < low
    mark = ' <span class="badge warn">\u26a0 low</span>' if warn else ""
    # data-share, not data-figure: the text is a share of controlled counts, not a count.
    share_paths = json.dumps({"count": count_paths, "of": of_paths})
    return f"<td class=\"num\" data-share='{e(share_paths)}'>{_pct(share)}{mark}</td>"


def _completeness(p: _Page) -> str:
    """Identifier completeness by source and provider, and of linked records by participant group."""
    figures = _get(p.m, [*QUALITY, "identifier_present"]) or {}
    if not figures:
        return ""
    ids = list(IDENTIFIER_LABELS)
    rows = []
    for s in _in_order(figures):
        base = [*QUALITY, "identifier_present", s]
        cells = "".join(
            _share_td(p, [[*base, i, "all", "all", "count"]], [[*base, i, "all", "all", "of"]]) if _get(p.m, [*base, i, "all", "all"]) else "<td></td>"
            for i in ids
        )
        rows.append(f'<tr><th scope="row">{_named(s, SOURCE_LABELS)}</th><td>all providers</td>{p.num([*base, ids[0], "all", "all", "of"])}{cells}</tr>')
        providers = sorted((_get(p.m, [*base, ids[0], "provider"]) or {}))
        for prov in providers:
            cells = "".join(
                _share_td(p, [[*base, i, "provider", prov, "count"]], [[*base, i, "provider", prov, "of"]]) for i in ids
            )
            rows.append(f'<tr><td></td><td class="mono">{e(prov)}</td>{p.num([*base, ids[0], "provider", prov, "of"])}{cells}</tr>')
    by_provider = _table(["Extract", "Provider", "Records"] + [f"{IDENTIFIER_LABELS[i]} usable" for i in ids], rows, "figures")
    group_rows = []
    sources = _in_order(figures)
    for breakdown, title in BREAKDOWN_LABELS.items():
        groups = sorted({g for s in sources for g in (_get(p.m, [*QUALITY, "identifier_present", s, "nhs_number", breakdown]) or {})})
        for g in groups:
            cells = "".join(
                _share_td(p, [[*QUALITY, "identifier_present", s, "nhs_number", breakdown, g, "count"]],
                          [[*QUALITY, "identifier_present", s, "nhs_number", breakdown, g, "of"]])
                for s in sources
            )
            group_rows.append(f'<tr><th scope="row">{e(title)}: {e(g)}</th>{cells}</tr>')
    by_group = _table(["Group of the linked participant"] + [SOURCE_LABELS.get(s, s) for s in sources], group_rows, "figures")
    return ("<h4>Identifier completeness</h4>"
            "<p>The share of each extract's records whose identifier could be used (a valid NHS number passing the "
            "Modulus 11 check, a date of birth, a postcode, a surname), by provider. A provider far below the others "
            "is sending incomplete identifiers; its records rest on weaker ranks or fail to link.</p>" + by_provider
            + "<p>The share of <em>linked</em> records carrying a valid NHS number, by the group of the participant they "
            "linked to (records carry no readable date of birth, so unlinked records cannot be grouped by age). A group "
            "with fewer NHS numbers is linked more often on weaker evidence.</p>" + by_group)


def _rank_mix(p: _Page) -> str:
    """The mix of ranks among linked records, by participant group, all extracts together."""
    figures = _get(p.m, [*QUALITY, "linked_by_rank_by_group"]) or {}
    sources = _in_order(figures)
    if not sources:
        return ""
    rows = []
    for breakdown, title in BREAKDOWN_LABELS.items():
        groups = sorted({g for s in sources for g in (figures[s].get(breakdown) or {})})
        for g in groups:
            # Every rank's row of a group carries the same denominator: take it from any rank present.
            of_paths = []
            for s in sources:
                present = next((r for r in RANKS if _get(p.m, [*QUALITY, "linked_by_rank_by_group", s, breakdown, g, r]) is not None), None)
                if present:
                    of_paths.append([*QUALITY, "linked_by_rank_by_group", s, breakdown, g, present, "of"])
            cells = "".join(
                _share_td(p, [[*QUALITY, "linked_by_rank_by_group", s, breakdown, g, r, "count"] for s in sources], of_paths) for r in RANKS
            )
            rows.append(f'<tr><th scope="row">{e(title)}: {e(g)}</th>{p.num(*of_paths)}{cells}</tr>')
    return ("<h4>How records were linked, by group</h4>"
            "<p>Of the records linked to each group's participants (all extracts), the share linked by each rank. Rank 1 "
            "is the strongest evidence; a group that needs ranks 5 and P more often has less reliable service-use counts "
            "(more false and missed links).</p>"
            + _table(["Group", "Linked records"] + [f"Rank {r}" for r in RANKS], rows, "figures"))


def _linked_vs_unlinked(p: _Page) -> str:
    """Linked and unlinked records compared on what records carry: provider, year and kind."""
    figures = _get(p.m, [*QUALITY, "records_by_characteristic"]) or {}
    rows = []
    for s in _in_order(figures):
        for characteristic, title in CHARACTERISTIC_LABELS.items():
            values = figures[s].get(characteristic) or {}
            for v in sorted(values):
                base = [*QUALITY, "records_by_characteristic", s, characteristic, v]
                linked = _share_of(p, [[*base, "linked", "count"]], [[*base, "linked", "of"]]) if "linked" in values[v] else 0.0
                unlinked = _share_of(p, [[*base, "unlinked", "count"]], [[*base, "unlinked", "of"]]) if "unlinked" in values[v] else 0.0
                points = None if linked is None or unlinked is None else round(100 * (linked - unlinked))
                gap = "\u2013" if points is None else f"{points:+d}" if points else "0"
                first = not rows or rows[-1][0] != s
                rows.append((s,
                    f'<tr><th scope="row">{_named(s, SOURCE_LABELS) if first else ""}</th><td>{e(title)}</td><td class="mono">{e(v)}</td>'
                    f'<td class="num">{_pct(linked)}</td><td class="num">{_pct(unlinked)}</td>'
                    f'<td class="num">{gap}</td></tr>'
                ))
    if not rows:
        return ""
    return ("<h4>Linked and unlinked records compared</h4>"
            "<p>How linked and unlinked records of each extract are spread over providers, years and kinds of record "
            "(column shares, from controlled counts). Unlinked records include those of people outside the study, so some "
            "difference is expected; a provider or a year that makes up far more of the unlinked than of the linked records "
            "points to a delivery problem, not to who the participants are.</p>"
            + _table(["Extract", "Characteristic", "Value", "Of linked records", "Of unlinked records", "Difference (points)"], [r for _, r in rows], "figures"))


def _threshold_weight(p: _Page) -> float | None:
    """The match weight (bits) of the probabilistic threshold, from its match probability."""
    prob = _get(p.m, ["linkage", "probabilistic", "options", "threshold_match_probability"])
    if not isinstance(prob, (int, float)) or not 0 < prob < 1:
        return None
    return math.log2(prob / (1 - prob))


def _weight_chart(p: _Page) -> str:
    """An inline SVG histogram of match weights (all extracts), the threshold marked."""
    hist = _get(p.m, [*QUALITY, "match_weight_histogram"]) or {}
    totals: dict[str, dict[str, int]] = {}
    for s, rows in hist.items():
        for i, r in enumerate(rows):
            count = _controlled(p, [[*QUALITY, "match_weight_histogram", s, i, "records"]]) or 0
            totals.setdefault(r["bin"], {}).setdefault(r["outcome"], 0)
            totals[r["bin"]][r["outcome"]] += count
    if not hist:
        return ""
    from pipeline.link.quality import WEIGHT_EDGES

    # Every bin the link stage uses, drawn or not, so the threshold always has its place.
    lo, hi = WEIGHT_EDGES[0], WEIGHT_EDGES[-1]
    bins = [f"< {lo}", *(f"[{a}, {b})" for a, b in zip(WEIGHT_EDGES, WEIGHT_EDGES[1:])), f">= {hi}"]
    bins += sorted(set(totals) - set(bins), key=_bin_start)
    totals = {b: totals.get(b, {}) for b in sorted(bins, key=_bin_start)}
    bins = list(totals)
    width, height, left, bottom = 720, 220, 50, 40
    bar = (width - left - 10) / len(bins)
    drawn = max(sum(v.values()) for v in totals.values())
    top = drawn or 1
    colours = {"P": "#1b5e20", "unlinked": "#9e9e9e", "conflict": "#b00020"}
    shapes = []
    for k, b in enumerate(bins):
        y = height - bottom
        for outcome in ("unlinked", "conflict", "P"):
            n = totals[b].get(outcome, 0)
            h = (height - bottom - 10) * n / top
            y -= h
            if n:
                shapes.append(f'<rect x="{left + k * bar + 1:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" height="{h:.1f}" fill="{colours[outcome]}"/>')
        label = b.strip("[").split(",")[0] if b.startswith("[") else b.replace(">=", "\u2265").replace(" ", "")
        shapes.append(f'<text x="{left + k * bar:.1f}" y="{height - bottom + 14}" font-size="10" text-anchor="middle">{e(label)}</text>')
    threshold = _threshold_weight(p)
    if threshold is not None:
        # Place the line inside the bin holding the threshold, in proportion.
        for k, b in enumerate(bins):
            start = _bin_start(b)
            if b.startswith("[") and start <= threshold < start + 5:
                x = left + (k + (threshold - start) / 5) * bar
                shapes.append(f'<line x1="{x:.1f}" y1="5" x2="{x:.1f}" y2="{height - bottom}" stroke="#0b4f8a" stroke-width="2" stroke-dasharray="5,3"/>'
                              f'<text x="{x + 4:.1f}" y="16" font-size="11" fill="#0b4f8a">threshold {threshold:.1f} bits</text>')
    axis = (f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="#555"/>'
            f'<text x="{left - 6}" y="15" font-size="10" text-anchor="end">{top:,}</text>'
            f'<text x="{left - 6}" y="{height - bottom}" font-size="10" text-anchor="end">0</text>'
            f'<text x="{(width + left) / 2:.0f}" y="{height - 8}" font-size="11" text-anchor="middle">match weight (bits: log2 odds of a match)</text>')
    if not drawn:
        axis += (f'<text x="{left + (width - left) * 0.7:.0f}" y="{(height - bottom) / 2:.0f}" font-size="12" text-anchor="middle" fill="#555">'
                 "every bin's count is zero or hidden (1\u20137) in this release</text>")
    return (f'<figure><svg role="img" aria-label="Histogram of match weights with the threshold marked" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" style="max-width:100%;background:#fff">'
            + "".join(shapes) + axis + "</svg><figcaption>Records the probabilistic step scored, all extracts, by the match weight of "
            "their best candidate: <span style=\"color:#1b5e20\">\u25a0 linked (rank P)</span>, <span style=\"color:#9e9e9e\">\u25a0 not "
            "linked</span>, <span style=\"color:#b00020\">\u25a0 conflict</span>; the dashed line is the threshold. Bars just left of it "
            "are near misses; controlled counts.</figcaption></figure>")


def _drift_chart(p: _Page, source: str, providers: dict[str, Any], flagged: set[tuple[str, str]]) -> str:
    """Small SVG: each provider's monthly linkage rate (controlled counts), flagged months ringed."""
    months = sorted({m for v in providers.values() for m in v.get("months", [])})
    if len(months) < 2:
        return ""
    width, height, left, bottom = 720, 170, 40, 28
    step = (width - left - 90) / (len(months) - 1)
    palette = ["#0b4f8a", "#7a4f00", "#1b5e20", "#6a1b9a", "#00695c", "#5d4037", "#ad1457", "#37474f"]
    shown_months = cells = 0
    shapes = [f'<line x1="{left}" y1="{height - bottom}" x2="{width - 90}" y2="{height - bottom}" stroke="#555"/>',
              f'<text x="{left - 4}" y="14" font-size="10" text-anchor="end">100%</text>',
              f'<text x="{left - 4}" y="{height - bottom}" font-size="10" text-anchor="end">0%</text>']
    for k, m in enumerate(months):
        if m.endswith("-01") or k == 0:
            shapes.append(f'<text x="{left + k * step:.1f}" y="{height - bottom + 14}" font-size="9" text-anchor="middle">{e(m[:4])}</text>')
    for i, (prov, series) in enumerate(sorted(providers.items())):
        colour = palette[i % len(palette)]
        segments: list[list[str]] = [[]]
        rings = []
        base = [*QUALITY, "provider_month", "sources", source, prov]
        for j, m in enumerate(series.get("months", [])):
            share = _share_of(p, [[*base, "linked", j]], [[*base, "records", j]])
            if share is None:
                segments.append([])  # a hidden month breaks the line: no slope is drawn across it
                continue
            shown_months += 1
            x = left + months.index(m) * step
            y = 8 + (height - bottom - 8) * (1 - share)
            if segments[-1] and months.index(m) != months.index(series["months"][j - 1]) + 1:
                segments.append([])
            segments[-1].append(f"{x:.1f},{y:.1f}")
            if (prov, m) in flagged:
                rings.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="none" stroke="#b00020" stroke-width="2"/>')
        for seg in segments:
            if len(seg) > 1:
                shapes.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
            elif seg:
                x, y = seg[0].split(",")
                shapes.append(f'<circle cx="{x}" cy="{y}" r="2" fill="{colour}"/>')
        shapes += rings
        shapes.append(f'<text x="{width - 85}" y="{20 + 14 * i}" font-size="11" fill="{colour}">\u2014 {e(prov)}</text>')
        cells += len(series.get("months", []))
    label = e(SOURCE_LABELS.get(source, source))
    if shown_months < cells / 2:
        return (f'<p class="note">{label}: too few records a month to draw each provider\u2019s monthly rate from controlled counts '
                f"(a rate is shown only where both counts are over {disclosure.SUPPRESSION_THRESHOLD}: {shown_months} of {cells} "
                "provider-months); the flag above is still judged on the exact counts.</p>")
    return (f'<figure><svg role="img" aria-label="Monthly linkage rate of each provider of {e(SOURCE_LABELS.get(source, source))}" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" style="max-width:100%">'
            + "".join(shapes) + f"</svg><figcaption>{e(SOURCE_LABELS.get(source, source))}: share of each provider's records linked, month "
            "by month (months with hidden counts left out, the line broken there); flagged months are ringed in red.</figcaption></figure>")


def _drift(p: _Page) -> str:
    """Linkage rate by provider and month, with the months the drift rule flagged."""
    figures = _get(p.m, [*QUALITY, "provider_month"])
    if not isinstance(figures, dict):
        return ("<h4>Linkage rate by provider and month</h4><p class=\"note\">Not recorded for this release (made before "
                "records carried their provider).</p>")
    flags = figures.get("flagged") or []
    runs: dict[tuple[str, str], list[int]] = {}
    for i, f in enumerate(flags):
        runs.setdefault((f["source"], f["provider"]), []).append(i)
    rows = []
    for (source, provider), idx in runs.items():
        paths = [[*QUALITY, "provider_month", "flagged", i] for i in idx]
        rows.append(
            f'<tr><th scope="row">{_named(source, SOURCE_LABELS)}</th><td class="mono">{e(provider)}</td>'
            f'<td class="mono">{e(_month_ranges([flags[i]["month"] for i in idx]))}</td>'
            f'{p.num(*[[*path, "records"] for path in paths])}{p.num(*[[*path, "linked"] for path in paths])}'
            f'<td class="num">{_pct(_provider_norm(p, source, provider))}</td></tr>'
        )
    table = (_table(["Extract", "Provider", "Months flagged", "Records", "Linked", "Provider's usual rate (other months)"], rows, "figures") if rows
             else '<p><span class="badge ok">\u2714 no provider-month flagged</span></p>')
    charts = "".join(
        _drift_chart(p, s, figures["sources"][s], {(f["provider"], f["month"]) for f in flags if f["source"] == s})
        for s in _in_order(figures.get("sources") or {})
    )
    return ("<h4>Linkage rate by provider and month</h4>"
            "<p>A provider whose records stop linking (identifiers wrongly withheld, a changed feed) leaves totals looking "
            f"normal. Each provider is compared with itself: {e(figures.get('rule', ''))}. Records and links are controlled "
            "counts summed over the flagged months; the usual rate is the provider's months not flagged, pooled, from controlled counts.</p>"
            + table + charts)


def _provider_norm(p: _Page, source: str, provider: str) -> float | None:
    """A provider's usual linkage rate for the page: its months not flagged, pooled, from controlled counts."""
    base = [*QUALITY, "provider_month", "sources", source, provider, "unflagged"]
    return _share_of(p, [[*base, "linked"]], [[*base, "records"]])


def _month_ranges(months: list[str]) -> str:
    """"2024-04 to 2025-03, 2025-06" from sorted YYYY-MM months, consecutive ones joined."""
    def index(m: str) -> int:
        return int(m[:4]) * 12 + int(m[5:7])

    runs: list[list[str]] = []
    for m in sorted(months):
        if runs and index(m) == index(runs[-1][-1]) + 1:
            runs[-1].append(m)
        else:
            runs.append([m])
    return ", ".join(r[0] if len(r) == 1 else f"{r[0]} to {r[-1]}" for r in runs)


def _linkage_quality(p: _Page) -> str:
    """Linkage quality as GUILD asks: completeness, rank mix, linked against unlinked, weights, drift."""
    if not _get(p.m, QUALITY):
        return ""
    return ("<h3>Linkage quality, as the GUILD guidance asks</h3>"
            "<p>GUILD (Gilbert et al. 2018, <em>J Public Health</em>) asks those who release linked data to show how well the "
            "identifiers were recorded, how records were linked, whether linked and unlinked records differ, where the "
            "match threshold sits, and whether any provider or period links worse than the rest. Shares are computed from "
            "controlled counts. (Comparing who was <em>found</em> in an extract across age groups would measure who uses "
            "the service, not linkage failure, so it is not shown.)</p>"
            + _completeness(p) + _rank_mix(p) + _linked_vs_unlinked(p)
            + "<h4>Match weights and the threshold</h4>" + _weight_chart(p) + _weight_histogram(p)
            + _drift(p))


def _judgement_items(p: _Page, unit_cost_versions: list[str], balance: list[dict[str, Any]] | None) -> list[str]:
    """What the officer must weigh before signing, each with its figure against its threshold."""
    items = []
    for zone, d in (p.m.get("validation") or {}).items():
        for dataset, entry in sorted((d.get("datasets") or {}).items()):
            for i, f in enumerate(entry.get("files", [])):
                for j, fail in enumerate(f.get("failures", [])):
                    if fail.get("severity") == "critical":
                        continue
                    path = ["validation", zone, "datasets", dataset, "files", i, "failures", j]
                    share = _share_of(p, [[*path, "unexpected_count"]], [[*path, "checked_count"]])
                    mostly = fail.get("mostly")
                    allowed = f"at most {100 * (1 - mostly):.0f}% allowed" if isinstance(mostly, (int, float)) else "no row allowed"
                    items.append(f"Validation warning, {e(dataset)} {e(fail.get('column') or '')}: {e(fail.get('rule', ''))}: "
                                 f"<strong>{_pct(share)}</strong> of rows break it ({allowed}; section 6).")
    for w in (p.m.get("privacy") or {}).get("warnings", []):
        items.append(f"Privacy warning: {e(w)} (section 7).")
    dark: dict[tuple[str, str], list[int]] = {}
    for i, f in enumerate(_get(p.m, [*QUALITY, "provider_month", "flagged"]) or []):
        dark.setdefault((f["source"], f["provider"]), []).append(i)
    for (source, provider), idx in dark.items():
        paths = [[*QUALITY, "provider_month", "flagged", i] for i in idx]
        months = [_get(p.m, [*path, "month"]) for path in paths]
        rate = _share_of(p, [[*path, "linked"] for path in paths], [[*path, "records"] for path in paths])
        items.append(f"Provider <span class=\"mono\">{e(provider)}</span> ({e(SOURCE_LABELS.get(source, source))}): linkage rate "
                     f"<strong>{_pct(rate)}</strong> in {len(months)} month(s), {e(_month_ranges(months))}, against its usual "
                     f"{_pct(_provider_norm(p, source, provider))} (section 5).")
    samples = _get(p.m, ["cohort", "samples"]) or {}
    for name, s in sorted(samples.items()):
        smd = s.get("max_abs_smd_after") if isinstance(s, dict) else None
        if isinstance(smd, (int, float)) and abs(smd) > SMD_LIMIT:
            covariates = [r["covariate"] for r in (balance or []) if r.get("sample") == name and isinstance(r.get("smd_after"), (int, float)) and abs(r["smd_after"]) > SMD_LIMIT]
            covariates.sort(key=lambda c: -abs(next(r["smd_after"] for r in balance or [] if r.get("sample") == name and r["covariate"] == c)))
            more = f" and {len(covariates) - 3} more" if len(covariates) > 3 else ""
            which = f", most of all {e(', '.join(covariates[:3]))}{more}" if covariates else ""
            items.append(f"Sample <span class=\"mono\">{e(name)}</span>: largest |SMD| after matching <strong>{abs(smd):.2f}</strong> "
                         f"(threshold {SMD_LIMIT}){which} (section 3).")
    for version in unit_cost_versions:
        if "illustrative" in version.lower():
            items.append(f"Unit costs are placeholders (version <span class=\"mono\">{e(version)}</span>): costs in this release "
                         "are illustrative, not published national figures.")
    return items


def _smallest_group(p: _Page) -> str:
    groups = {t: q.get("smallest_group") for t, q in ((_get(p.m, ["privacy", "quasi_identifiers"]) or {}).items()) if isinstance(q, dict)}
    groups = {t: n for t, n in groups.items() if isinstance(n, int)}
    if not groups:
        return ""
    table = min(groups, key=lambda t: groups[t])
    minimum = _get(p.m, ["privacy", "min_group_size"]) or disclosure.MIN_GROUP_SIZE
    path = ["privacy", "quasi_identifiers", table, "smallest_group"]
    return (f"<li>Smallest group of people sharing every quasi-identifier: <strong data-exact-figure='{e(json.dumps([path]))}'>"
            f"{groups[table]:,}</strong> in <span class=\"mono\">{e(table)}</span> (minimum {minimum}; section 7).</li>")


def _verdict(p: _Page, unit_cost_versions: list[str], balance: list[dict[str, Any]] | None) -> str:
    """The page's opening: Do not sign / Needs your judgement / Ready to sign, and the list to weigh."""
    privacy = p.m.get("privacy", {})
    failed = [r for r in privacy.get("rules", []) if r.get("result") == "failed"]
    critical = sum(d.get("statistics", {}).get("failed_critical", 0) for d in p.m.get("validation", {}).values())
    items = _judgement_items(p, unit_cost_versions, balance)
    if failed or critical:
        banner = '<p class="banner bad">\u2718 Do not sign: this release failed a check and must not be used.</p>'
    elif items:
        banner = (f'<p class="banner warn">\u26a0 Needs your judgement: every blocking check passed, and {len(items)} '
                  f"item(s) below need a decision before sign-off.</p>")
    else:
        banner = '<p class="banner ok">\u2714 Ready to sign: every check passed, with nothing that needs judgement.</p>'
    listed = "".join(f"<li>{i}</li>" for i in items) + _smallest_group(p)
    return banner + (f'<section id="judgement"><h2>Needs your judgement</h2><ul class="judgement">{listed}</ul></section>' if listed else "")


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
        f"<tr><th scope=\"row\">{_named(name, SOURCE_LABELS)}</th><td class=\"mono\">{e(str(v.get('file', '')))}{_delivered_as(v)}</td>"
        f"{p.num(['inputs', name, 'rows'])}"
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


def _delivered_as(v: dict[str, Any]) -> str:
    """" (csv, mapping hes_apc v1)" for a source delivered in its provider's layout, else nothing."""
    mapping = v.get("mapping")
    return f" ({e(str(v.get('format', '')))}, mapping {e(str(mapping.get('name', '')))} v{e(str(mapping.get('version', '')))})" if mapping else ""


def _checklist(p: _Page) -> None:
    items = "".join(
        f'<li><label><input type="checkbox"> <strong>{e(title)}</strong> {_with_code(text)}</label></li>' for title, text in CHECKLIST
    )
    p.add('<section id="sign-off"><h2>10. Sign-off</h2><p>Tick each item once you have checked it, then sign.</p>'
          f'<ol class="checklist">{items}</ol>'
          '<table class="signature"><tr><th>Name</th><td></td></tr><tr><th>Role</th><td></td></tr>'
          "<tr><th>Decision</th><td>approved / approved with conditions / refused</td></tr>"
          "<tr><th>Date</th><td></td></tr><tr><th>Signature</th><td></td></tr></table></section>")


def render_audit_page(
    manifest: dict[str, Any],
    manifest_sha256: str,
    release_location: str,
    *,
    release_href: str | None = None,
    data_docs_href: str = "data_docs/index.html",
    provenance: dict[str, Any] | None = None,
    love_plot: bytes | None = None,
    unit_cost_versions: list[str] | None = None,
    balance: list[dict[str, Any]] | None = None,
) -> str:
    """The whole page as one HTML string (no script, no link out of the reports folder).

    `unit_cost_versions` (the release's unit_costs.csv `version`s) and `balance` (balance.parquet's
    rows) feed the opening verdict's "needs your judgement" list.

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
        + _verdict(p, unit_cost_versions or [], balance)
        + '<nav><a href="#judgement">Judgement</a> <a href="#consent">Consent</a> <a href="#stages">Stages</a> <a href="#quarantine">Quarantine</a> '
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


def _listed_file(manifest_path: Path, name: str) -> Path | None:
    """A release file beside the manifest, if the manifest lists it with these very bytes."""
    path = manifest_path.with_name(name)
    listed = io.read_json(manifest_path).get("files", {}).get(name, {})
    return path if path.is_file() and listed.get("sha256") == io.sha256_file(path) else None


def _unit_cost_versions(manifest_path: Path) -> list[str]:
    """The distinct `version`s of the release's unit-cost table (e.g. illustrative-0.1)."""
    import polars as pl

    path = _listed_file(manifest_path, UNIT_COSTS)
    if path is None:
        return []
    table = pl.read_csv(path, infer_schema=False)
    return sorted(set(table.get_column("version").drop_nulls().to_list())) if "version" in table.columns else []


def _balance_rows(manifest_path: Path) -> list[dict[str, Any]] | None:
    """The release's balance table (sample, covariate, smd_after), if it has one."""
    import polars as pl

    path = _listed_file(manifest_path, BALANCE)
    if path is None:
        return None
    table = pl.read_parquet(path)
    keep = [c for c in ("sample", "covariate", "smd_after") if c in table.columns]
    return table.select(keep).to_dicts()


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
        unit_cost_versions=_unit_cost_versions(Path(manifest_path)),
        balance=_balance_rows(Path(manifest_path)),
    )


def write_audit_page(release_dir: Path, reports_dir: Path) -> Path:
    """Re-render the page of a published release into `reports_dir/audit.html` (atomically)."""
    page = page_for(Path(release_dir) / "manifest.json", reports_dir, release_dir)
    target = Path(reports_dir) / "audit.html"
    with io.atomic_path(target) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return target
