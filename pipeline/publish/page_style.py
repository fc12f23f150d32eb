"""The fixed words and looks of the audit page: style sheet, rank legend and sign-off checklist.

Kept apart from `report.py` so the wording a governance team may want to change sits in one short
file, away from the code that fills in the figures.
"""

from __future__ import annotations

# What each linkage rank means, in words (DESIGN.md, "Linkage").
RANK_MEANINGS: dict[str, str] = {
    "1": "NHS number, date of birth, sex and postcode all agree",
    "2": "NHS number, date of birth and sex agree",
    "3": "NHS number and part of the date of birth agree (year and month, or day and month swapped)",
    "4": "NHS number and postcode agree",
    "5": "date of birth, sex and postcode agree, and the NHS numbers do not contradict",
    "P": "probabilistic: names, date of birth and area agree closely enough (a scored match above a set threshold)",
}

# Plain names for the extracts and zones the page talks about (the code's name follows in brackets).
SOURCE_LABELS: dict[str, str] = {
    "consent_register": "Consent register",
    "survey": "Survey responses",
    "hospital_apc": "Hospital admissions",
    "hospital_ae": "A&E attendances",
    "hospital_op": "Outpatient appointments",
    "gp_events": "GP consultations",
    "social_care": "Social care services",
    "postcode_imd": "Postcode to deprivation lookup",
    "unit_costs": "Unit costs",
}
ZONE_LABELS: dict[str, str] = {
    "raw": "Raw: consent register and set-aside rows (key holder only)",
    "pseudonymised": "Pseudonymised: tokens and payloads",
    "linked": "Linked: the link map",
    "release": "Release: the files economists receive",
}

# The cohort stage's counts, in the order the page lists them; keys not named here follow, spelled out.
COHORT_LABELS: dict[str, str] = {
    "consented_participants": "Consented participants reaching the cohort stage",
    "with_baseline_survey": "... with a baseline questionnaire",
    "aged_55_plus": "... aged 55 or over at index",
    "with_2plus_conditions": "... with two or more long-term conditions",
    "index_in_study_window": "... with an index date in the study window",
    "complete_followup": "... with 12 months of follow-up before the extract date",
    "eligible": "Eligible for the analysis cohort",
    "eligible_mdt": "Eligible, MDT arm",
    "eligible_comparator": "Eligible, comparators",
    "mdt": "MDT participants",
    "comparators": "Comparators",
    "matched_mdt": "Matched MDT participants",
    "matched_comparators": "Matched comparators",
    "unmatched_mdt": "MDT participants left unmatched",
    "max_abs_smd_after": "Largest standardised mean difference after matching",
    "duplicate_records_removed": "Duplicate records removed",
    "samples": "Matching by sample (whole study, each site, each operating model)",
}

# (what to check, how) for each item of the sign-off checklist; `code` is shown as code.
CHECKLIST: tuple[tuple[str, str], ...] = (
    ("Identity.", "The release label, code version and key id (section 1) are those of the run that was approved."),
    ("Tamper evidence.", "`pipeline audit` on the folder handed over reports no problem and prints the manifest SHA-256 shown in section 1."),
    ("Inputs.", "The input files' SHA-256 fingerprints (section 9) match the providers' delivery notes."),
    ("Consent.", "Declined and withdrawn people were excluded, and the consent figures (section 2) are plausible for the study."),
    ("Completeness.", "Every extract shows every row accounted for (section 3), and the reasons rows were set aside (section 4) are understood."),
    ("Linkage.", "The share of records linked at each rank and the number of conflicts (section 5) are in line with earlier releases."),
    ("Validation.", "No critical failure; every warning (section 6) has been reviewed and is acceptable or has an agreed action."),
    ("Privacy.", "Every privacy rule passed (section 7), and the smallest quasi-identifier group is acceptable for this release."),
    ("Disclosure control.", "Aggregate tables and this page follow the suppression and rounding rule (section 8)."),
    ("Recipients.", "The economists receiving the release are approved for it and have read its data dictionary."),
)

PAGE_STYLE = """
<style>
  :root { --ink: #1d1d1f; --muted: #555; --line: #c9c9c9; --ok: #1b5e20; --bad: #b00020; --warn: #7a4f00; --info: #0b4f8a; }
  body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); margin: 0; background: #f6f6f4; }
  main { max-width: 1180px; margin: 0 auto; padding: 1.5rem 2rem 3rem; background: #fff; }
  h1 { font-size: 1.9rem; margin: .2rem 0 .6rem; }
  h2 { font-size: 1.35rem; margin: 2.2rem 0 .6rem; padding-top: .6rem; border-top: 2px solid var(--line); }
  h3 { font-size: 1.05rem; margin: 1.2rem 0 .4rem; }
  p, li { line-height: 1.5; max-width: 62rem; }
  .lede { font-size: 1.05rem; }
  .note, .small, footer { color: var(--muted); font-size: .9rem; }
  nav { margin: 1rem 0; display: flex; flex-wrap: wrap; gap: .4rem 1rem; }
  nav a { text-decoration: none; border-bottom: 1px solid; }
  table { border-collapse: collapse; margin: .4rem 0 1rem; font-size: .95rem; }
  th, td { border: 1px solid var(--line); padding: .35rem .6rem; text-align: left; vertical-align: top; }
  thead th { background: #ecece8; }
  tbody tr:nth-child(even) { background: #fafaf8; }
  th[scope="row"] { font-weight: 600; background: transparent; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
  td.suppressed { color: var(--muted); font-style: italic; }
  .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; font-size: .85rem; }
  td.hash { word-break: break-all; max-width: 34rem; }
  table.facts td { word-break: break-all; }
  .badge { display: inline-block; padding: .05rem .45rem; border-radius: .7rem; font-weight: 600; white-space: nowrap; border: 1px solid; }
  .badge.ok { color: var(--ok); } .badge.bad { color: var(--bad); } .badge.warn { color: var(--warn); } .badge.info { color: var(--info); }
  .banner { font-size: 1.15rem; font-weight: 600; padding: .7rem 1rem; border-left: 6px solid; background: #f3f3f0; }
  .banner.ok { border-color: var(--ok); color: var(--ok); } .banner.bad { border-color: var(--bad); color: var(--bad); }
  .banner.warn { border-color: var(--warn); color: var(--warn); }
  ul.legend { columns: 2; font-size: .9rem; }
  ol.checklist li { margin: .45rem 0; }
  ol.checklist input { transform: scale(1.3); margin-right: .5rem; }
  table.signature { min-width: 36rem; } table.signature td { height: 2.2rem; min-width: 26rem; color: var(--muted); }
  footer { margin-top: 2.5rem; border-top: 1px solid var(--line); padding-top: .6rem; }
  @media print {
    body { background: #fff; } main { max-width: none; padding: 0; } nav { display: none; }
    h2 { break-after: avoid; } tr { break-inside: avoid; }
  }
</style>
"""
