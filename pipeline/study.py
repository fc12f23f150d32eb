"""The study a run evaluates, declared in one YAML file under `studies/`: the one owner of its facts.

Sites, teams and their operating models, the two arms and their index dates, eligibility, the study
window and extract date, the pre/post periods and the monthly panel, the propensity covariates,
matching defaults, the samples to match in, and the unit-cost table and EQ-5D value set. Contracts
and code hold none of these values: the cohort stage, the synthetic generator and validation (as
Great Expectations suite parameters, `suite_parameters`) ask the `Study`.

    >>> study = load_study(PIONEER)
    >>> len(study.sites), len(study.teams), len(study.operating_models), study.min_age
    (2, 11, 4, 55)
    >>> study.periods
    ('pre_12m', 'post_12m')

`load_study` checks the whole file once and raises `StudyError` listing every problem by its YAML
key (`teams[3].site`, `periods.pre_months`) with what to do; `pipeline study check FILE` prints the
same list. `Study.sha256` is the SHA-256 of the file's canonical form (its parsed content as sorted
JSON, so comments and layout do not change it), which the release manifest records.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import StudyError

REPO_DIR = Path(__file__).resolve().parent.parent
STUDIES_DIR = REPO_DIR / "studies"
PIONEER = STUDIES_DIR / "pioneer.yaml"

# Values that become release-table values and parts of sample names ("site=<site>"): short, plain.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ARMS: tuple[str, ...] = ("mdt", "comparator")
# How an arm's index date is set (pipeline.pseudonymise.consent): a column of the consent register,
# or the date of the participant's baseline questionnaire.
INDEX_DATE_RULES: dict[str, str] = {
    "enrolment_date": "the date the participant joined the team's caseload (consent register enrolment_date)",
    "baseline_survey_date": "the date of the participant's baseline questionnaire",
    "consent_date": "the date of the participant's consent decision",
}
# Propensity covariates a study may choose, in the order of the balance table (pipeline.cohort.covariates
# turns each into the model's columns: a categorical one into indicators).
COVARIATE_FAMILIES: tuple[str, ...] = (
    "age_at_index", "sex", "site", "imd_quintile", "n_ltc", "baseline_service_use", "baseline_cost",
    "baseline_eq5d_index", "baseline_eq_vas",
)  # fmt: skip
# Baseline survey answers an eligibility criterion may test (survey contract columns, or the index).
SURVEY_CRITERIA_COLUMNS: tuple[str, ...] = (
    "eq5d_mobility", "eq5d_selfcare", "eq5d_usual", "eq5d_pain", "eq5d_anxiety", "eq5d_index", "eq_vas",
    "ascot_control", "ascot_care", "ascot_food", "ascot_safety", "ascot_social", "ascot_occupation",
    "ascot_accommodation", "ascot_dignity",
)  # fmt: skip
SAMPLE_FAMILIES: tuple[str, ...] = ("all", "per_site", "per_operating_model")
# Cohort columns a matching set may be required to share.
EXACT_COLUMNS: tuple[str, ...] = ("site", "sex", "age_band", "imd_quintile")
# Age bands are 10 years wide from the minimum age, the last open from OPEN_AGE_BAND; coarsened (the
# small-group policy `coarsen`) they are 20 years wide, the last open.
OPEN_AGE_BAND = 85
DAYS_PER_YEAR = 365
NUMBER_WORDS: dict[int, str] = dict(enumerate(
    ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
))  # fmt: skip
TOP_KEYS: tuple[str, ...] = (
    "name", "description", "sites", "operating_models", "teams", "arms", "eligibility", "window", "periods",
    "panel", "propensity", "matching", "samples", "unit_costs", "eq5d_value_set",
)  # fmt: skip


@dataclass(frozen=True)
class Team:
    """One multi-disciplinary team: its ID as the consent register writes it, site and operating model."""

    id: str
    site: str
    operating_model: str
    name: str | None = None


@dataclass(frozen=True)
class SurveyCriterion:
    """An eligibility rule on a baseline survey answer: min <= value <= max (a bound may be open)."""

    column: str
    min: float | None = None
    max: float | None = None

    @property
    def step_name(self) -> str:
        bounds = [f"min_{self.min:g}" if self.min is not None else "", f"max_{self.max:g}" if self.max is not None else ""]
        return "survey_" + self.column + "_" + "_".join(b for b in bounds if b)


@dataclass(frozen=True)
class SampleSpec:
    """A sample to match in: those of `sites` (None: every site) and, of the MDT arm, those of teams
    with one of `operating_models` (None: every team), against every comparator of those sites."""

    name: str
    sites: tuple[str, ...] | None = None
    operating_models: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Study:
    """A checked study file. Build it with `load_study`, never by hand."""

    path: Path
    sha256: str
    name: str
    description: str
    sites: tuple[str, ...]
    operating_models: tuple[str, ...]
    teams: tuple[Team, ...]
    # arm -> INDEX_DATE_RULES key
    index_date: tuple[tuple[str, str], ...]
    min_age: int
    min_long_term_conditions: int
    survey_criteria: tuple[SurveyCriterion, ...]
    study_start: dt.date
    study_end: dt.date
    extract_date: dt.date
    pre_months: int
    post_months: int
    panel_months_before: int
    panel_months_after: int
    covariates: tuple[str, ...]
    # MatchingOptions field -> default value (exact as a tuple)
    matching: tuple[tuple[str, Any], ...]
    samples: tuple[SampleSpec, ...]
    unit_costs: Path
    eq5d_value_set: Path

    # --- teams ---------------------------------------------------------------------------------
    @property
    def team_ids(self) -> tuple[str, ...]:
        return tuple(t.id for t in self.teams)

    def index_date_rule(self, arm: str) -> str:
        return dict(self.index_date)[arm]

    # --- periods -------------------------------------------------------------------------------
    # Month m relative to the index date holds the days d with floor(12 d / 365) = m, so the months of
    # a period add up to it exactly: 12 months are 365 days either side; 6 months are days -182..-1
    # before the index date (182 days) and days 0..182 from it (183 days).
    @staticmethod
    def month_start(month: int) -> int:
        """The first day (relative to the index date) of month `month`."""
        return math.ceil(DAYS_PER_YEAR * month / 12)

    @property
    def pre_days(self) -> int:
        return -self.month_start(-self.pre_months)

    @property
    def post_days(self) -> int:
        return self.month_start(self.post_months)

    @property
    def periods(self) -> tuple[str, str]:
        """The service_use period labels: before and from the index date."""
        return (f"pre_{self.pre_months}m", f"post_{self.post_months}m")

    @property
    def panel_months(self) -> tuple[int, ...]:
        """Months of the person-month panel relative to the index date (0 starts on it)."""
        return tuple(range(-self.panel_months_before, self.panel_months_after))

    # --- eligibility -----------------------------------------------------------------------------
    @property
    def age_bands(self) -> tuple[tuple[int, int, str], ...]:
        """(lowest age, highest age, label) of the release's age bands: 10 years from the minimum age."""
        return _bands(self.min_age, 10)

    @property
    def coarse_age_bands(self) -> dict[str, str]:
        """Each age band -> the 20-year band the small-group policy `coarsen` merges it into."""
        coarse = _bands(self.min_age, 20)
        return {label: next(c for lo_c, hi_c, c in coarse if lo_c <= lo <= hi_c) for lo, _, label in self.age_bands}

    @property
    def age_band_labels(self) -> tuple[str, ...]:
        """Every age_band value the cohort may hold: the bands, then the coarse ones not among them."""
        fine = tuple(label for _, _, label in self.age_bands)
        return fine + tuple(dict.fromkeys(c for c in self.coarse_age_bands.values() if c not in fine))

    # --- matching --------------------------------------------------------------------------------
    @property
    def matching_defaults(self) -> dict[str, Any]:
        return dict(self.matching)

    @property
    def sample_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.samples)

    # --- validation and the manifest -------------------------------------------------------------
    def suite_parameters(self) -> dict[str, Any]:
        """The study's values the contracts refer to as `{study: NAME}` (and GX as `$PARAMETER`)."""
        from pipeline.cohort.covariates import covariate_names

        return {
            "sites": list(self.sites),
            "team_ids": list(self.team_ids),
            "operating_models": list(self.operating_models),
            "samples": list(self.sample_names),
            "covariates": list(covariate_names(self)),
            "age_bands": list(self.age_band_labels),
            "periods": list(self.periods),
            "panel_first_month": self.panel_months[0],
            "panel_last_month": self.panel_months[-1],
        }

    def description_values(self) -> dict[str, str]:
        """Words for the `${NAME}` placeholders of contract descriptions (the data dictionary), so a
        release's dictionary says its own study's ages, conditions and periods."""
        pre, post = self.periods
        coarse = list(dict.fromkeys(self.coarse_age_bands.values()))
        same = self.pre_months == self.post_months
        return {
            "min_age": str(self.min_age),
            "min_conditions": NUMBER_WORDS.get(self.min_long_term_conditions, str(self.min_long_term_conditions)),
            "pre_months": str(self.pre_months),
            "post_months": str(self.post_months),
            "period_length": f"{self.post_months}-month period" if same else f"period ({self.pre_months} months before, {self.post_months} after)",
            "pre_period": pre,
            "post_period": post,
            "pre_days": str(self.pre_days),
            "post_days": str(self.post_days),
            "post_last_day": str(self.post_days - 1),
            "panel_before": str(self.panel_months_before),
            "panel_after": str(self.panel_months_after),
            "panel_first_month": str(self.panel_months[0]),
            "panel_last_month": str(self.panel_months[-1]),
            "coarse_age_bands": " and ".join(coarse),
        }

    def manifest_record(self) -> dict[str, Any]:
        """What the release manifest says about the study: its name, file name and hash, and the design."""
        return {
            "name": self.name,
            "file": self.path.name,
            "sha256": self.sha256,
            "sites": list(self.sites),
            "teams": len(self.teams),
            "operating_models": list(self.operating_models),
            "eligibility": {
                "min_age": self.min_age,
                "min_long_term_conditions": self.min_long_term_conditions,
                "survey_criteria": [c.step_name for c in self.survey_criteria],
            },
            "window": {
                "study_start": self.study_start.isoformat(),
                "study_end": self.study_end.isoformat(),
                "extract_date": self.extract_date.isoformat(),
            },
            "periods": list(self.periods),
            "panel_months": [self.panel_months[0], self.panel_months[-1]],
            "samples": list(self.sample_names),
            # The values the release's contracts were bound to, so `pipeline audit` can check a
            # release against its own study without the study file.
            "values": self.suite_parameters(),
        }


def _bands(start: int, width: int) -> tuple[tuple[int, int, str], ...]:
    if start >= OPEN_AGE_BAND:
        return ((start, 200, f"{start}+"),)
    out, lo = [], start
    while lo + width <= OPEN_AGE_BAND:
        out.append((lo, lo + width - 1, f"{lo}-{lo + width - 1}"))
        lo += width
    out.append((lo, 200, f"{lo}+"))
    return tuple(out)


# ---------------------------------------------------------------------------------------------------
# Reading and checking


def canonical_sha256(spec: Any) -> str:
    """SHA-256 of the study's parsed content as sorted JSON: the same study, however it is laid out."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _Checker:
    """Collects every problem as (YAML key path, what to do)."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def add(self, key: str, what: str) -> None:
        self.problems.append((key, what))

    def mapping(self, value: Any, key: str, known: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.add(key, f"must be a mapping with {', '.join(known)}")
            return {}
        for k in value:
            if k not in known:
                self.add(f"{key}.{k}" if key else str(k), f"unknown key; use one of {', '.join(known)}")
        for k in required:
            if k not in value:
                self.add(f"{key}.{k}" if key else k, "missing; add it")
        return value

    def integer(self, value: Any, key: str, low: int, high: int) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.add(key, f"must be a whole number from {low} to {high}")
            return None
        return value

    def date(self, value: Any, key: str) -> dt.date | None:
        if value is None:
            return None
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        try:
            return dt.date.fromisoformat(str(value))
        except ValueError:
            self.add(key, "must be a date written YYYY-MM-DD")
            return None

    def names(self, value: Any, key: str, what: str, minimum: int = 1) -> tuple[str, ...]:
        if not isinstance(value, list) or len(value) < minimum:
            self.add(key, f"must be a list of at least {minimum} {what}")
            return ()
        out = []
        for i, v in enumerate(value):
            if not isinstance(v, str) or not NAME_PATTERN.fullmatch(v):
                self.add(f"{key}[{i}]", f"each of the {what} must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")
            elif v in out:
                self.add(f"{key}[{i}]", f"{v!r} is listed twice; list each of the {what} once")
            else:
                out.append(v)
        return tuple(out)

    def file(self, value: Any, key: str, base: Path) -> Path | None:
        if not isinstance(value, str) or not value.strip():
            self.add(key, "must be the path of a file (relative to the study file's folder)")
            return None
        path = (base / value).resolve()
        if not path.is_file():
            self.add(key, f"no file at {path}; give the path relative to the study file's folder")
            return None
        return path


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StudyError(str(path), [("(file)", f"cannot read the study file ({exc.strerror}); give the path of a study YAML file")]) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise StudyError(str(path), [("(file)", f"not plain YAML{where} ({type(exc).__name__}); tags such as !!python/... are never accepted")]) from None


def _check(spec: Any, path: Path, check_tables: bool) -> Study:
    c = _Checker()
    top = c.mapping(spec, "", TOP_KEYS, required=tuple(k for k in TOP_KEYS if k != "description"))
    name = top.get("name")
    if "name" in top and (not isinstance(name, str) or not name.strip()):
        c.add("name", "must be the study's name, in words")
    sites = c.names(top.get("sites"), "sites", "sites") if "sites" in top else ()
    models = c.names(top.get("operating_models"), "operating_models", "operating models") if "operating_models" in top else ()

    teams: list[Team] = []
    raw_teams = top.get("teams")
    if "teams" in top and (not isinstance(raw_teams, list) or not raw_teams):
        c.add("teams", "must be a list of teams, each with id, site and operating_model")
    for i, t in enumerate(raw_teams if isinstance(raw_teams, list) else []):
        key = f"teams[{i}]"
        t = c.mapping(t, key, ("id", "site", "operating_model", "name"), required=("id", "site", "operating_model"))
        tid, site, model = t.get("id"), t.get("site"), t.get("operating_model")
        ok = True
        if "id" in t and (not isinstance(tid, str) or not NAME_PATTERN.fullmatch(tid)):
            c.add(f"{key}.id", "must be the team's ID as the consent register writes it (1-64 letters, digits, '_', '.' or '-')")
            ok = False
        elif tid in [x.id for x in teams]:
            c.add(f"{key}.id", f"team ID {tid!r} is used by another team; give each team its own ID")
            ok = False
        if "site" in t and site not in sites:
            c.add(f"{key}.site", f"{site!r} is not one of the study's sites; use one of {', '.join(sites)} or add it to sites")
            ok = False
        if "operating_model" in t and model not in models:
            c.add(f"{key}.operating_model", f"{model!r} is not one of operating_models; use one of {', '.join(models)} or add it there")
            ok = False
        if "name" in t and not isinstance(t["name"], str):
            c.add(f"{key}.name", "must be the team's name, in words")
        if ok and {"id", "site", "operating_model"} <= set(t):
            teams.append(Team(tid, site, model, t.get("name")))
    for s in sites:
        if teams and s not in {t.site for t in teams}:
            c.add("teams", f"site {s!r} has no team; add its teams, or remove the site from sites")
    for m in models:
        if teams and m not in {t.operating_model for t in teams}:
            c.add("teams", f"operating model {m!r} has no team; add a team with it, or remove it from operating_models")

    arms = c.mapping(top.get("arms", {}), "arms", ARMS, required=ARMS) if "arms" in top else {}
    index_date = []
    for arm in ARMS:
        rule = c.mapping(arms.get(arm, {}), f"arms.{arm}", ("index_date", "description"), required=("index_date",)) if arm in arms else {}
        if "index_date" in rule:
            if rule["index_date"] not in INDEX_DATE_RULES:
                c.add(f"arms.{arm}.index_date", f"must be one of {', '.join(INDEX_DATE_RULES)}")
            else:
                index_date.append((arm, rule["index_date"]))

    el = c.mapping(top.get("eligibility", {}), "eligibility", ("min_age", "min_long_term_conditions", "survey_criteria"),
                   required=("min_age", "min_long_term_conditions")) if "eligibility" in top else {}  # fmt: skip
    min_age = c.integer(el.get("min_age"), "eligibility.min_age", 0, 120)
    min_ltc = c.integer(el.get("min_long_term_conditions"), "eligibility.min_long_term_conditions", 0, 20)
    criteria = []
    raw_criteria = el.get("survey_criteria") or []
    if not isinstance(raw_criteria, list):
        c.add("eligibility.survey_criteria", "must be a list of {column, min, max} rules on baseline survey answers")
        raw_criteria = []
    for i, rule in enumerate(raw_criteria):
        key = f"eligibility.survey_criteria[{i}]"
        rule = c.mapping(rule, key, ("column", "min", "max"), required=("column",))
        if "column" in rule and rule["column"] not in SURVEY_CRITERIA_COLUMNS:
            c.add(f"{key}.column", f"must be a baseline survey answer: one of {', '.join(SURVEY_CRITERIA_COLUMNS)}")
            continue
        bounds = []
        for b in ("min", "max"):
            v = rule.get(b)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                c.add(f"{key}.{b}", "must be a number")
                v = None
            bounds.append(v)
        if "column" in rule and bounds == [None, None]:
            c.add(key, "needs min, max or both")
        elif "column" in rule:
            criteria.append(SurveyCriterion(rule["column"], *bounds))

    win = c.mapping(top.get("window", {}), "window", ("study_start", "study_end", "extract_date"),
                    required=("study_start", "study_end", "extract_date")) if "window" in top else {}  # fmt: skip
    start, end, extract = (c.date(win.get(k), f"window.{k}") for k in ("study_start", "study_end", "extract_date"))
    if start and end and start >= end:
        c.add("window.study_end", "must be after window.study_start")
    if start and extract and extract < start:
        c.add("window.extract_date", "must be on or after window.study_start: the extracts cover the study window")

    per = c.mapping(top.get("periods", {}), "periods", ("pre_months", "post_months"), required=("pre_months", "post_months")) if "periods" in top else {}
    pre = c.integer(per.get("pre_months"), "periods.pre_months", 1, 60)
    post = c.integer(per.get("post_months"), "periods.post_months", 1, 60)
    pan = c.mapping(top.get("panel", {}), "panel", ("months_before", "months_after"), required=("months_before", "months_after")) if "panel" in top else {}
    before = c.integer(pan.get("months_before"), "panel.months_before", 0, 60)
    after = c.integer(pan.get("months_after"), "panel.months_after", 1, 60)
    if before is not None and pre is not None and before > pre:
        c.add("panel.months_before", f"must be at most periods.pre_months ({pre}): the panel splits the periods' days into months")
    if after is not None and post is not None and after > post:
        c.add("panel.months_after", f"must be at most periods.post_months ({post}): follow-up is only complete for the post period")

    prop = c.mapping(top.get("propensity", {}), "propensity", ("covariates",), required=("covariates",)) if "propensity" in top else {}
    covariates: tuple[str, ...] = ()
    if "covariates" in prop:
        covariates = c.names(prop["covariates"], "propensity.covariates", "covariates")
        for i, v in enumerate(covariates):
            if v not in COVARIATE_FAMILIES:
                c.add(f"propensity.covariates[{i}]", f"{v!r} is not a covariate the pipeline builds; use some of {', '.join(COVARIATE_FAMILIES)}")
        covariates = tuple(v for v in COVARIATE_FAMILIES if v in covariates)  # the balance table's order

    matching = _check_matching(c, top.get("matching"), sites) if "matching" in top else ()
    samples = _check_samples(c, top.get("samples"), sites, models) if "samples" in top else ()

    base = path.parent
    unit_costs = c.file(top.get("unit_costs"), "unit_costs", base) if "unit_costs" in top else None
    value_set = c.file(top.get("eq5d_value_set"), "eq5d_value_set", base) if "eq5d_value_set" in top else None
    if check_tables:
        _check_tables(c, unit_costs, value_set)

    if c.problems:
        raise StudyError(str(path), c.problems)
    return Study(
        path=path, sha256=canonical_sha256(spec), name=" ".join(name.split()), description=" ".join(str(top.get("description", "")).split()),
        sites=sites, operating_models=models, teams=tuple(teams), index_date=tuple(index_date),
        min_age=min_age, min_long_term_conditions=min_ltc, survey_criteria=tuple(criteria),
        study_start=start, study_end=end, extract_date=extract, pre_months=pre, post_months=post,
        panel_months_before=before, panel_months_after=after, covariates=covariates, matching=matching,
        samples=samples, unit_costs=unit_costs, eq5d_value_set=value_set,
    )  # fmt: skip


def _check_matching(c: _Checker, value: Any, sites: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    """The matching defaults: any field of pipeline.settings.MatchingOptions, by name."""
    from pipeline.errors import PipelineError
    from pipeline.settings import MatchingOptions

    known = tuple(f.name for f in fields(MatchingOptions))
    m = c.mapping(value if value is not None else {}, "matching", known)
    options = {k: (tuple(v) if isinstance(v, list) else v) for k, v in m.items() if k in known}
    for i, col in enumerate(options.get("exact", ())):
        if col not in EXACT_COLUMNS:
            c.add(f"matching.exact[{i}]", f"{col!r} is not a cohort column matching can hold equal; use some of {', '.join(EXACT_COLUMNS)}")
    try:
        MatchingOptions(**options)
    except (PipelineError, TypeError, ValueError) as exc:
        c.add("matching", f"{exc}; correct the option")
    return tuple(sorted(options.items()))


def _check_samples(c: _Checker, value: Any, sites: tuple[str, ...], models: tuple[str, ...]) -> tuple[SampleSpec, ...]:
    if not isinstance(value, list) or not value:
        c.add("samples", f"must be a list of samples: {', '.join(SAMPLE_FAMILIES)}, or named subsets {{name, sites, operating_models}}")
        return ()
    out: list[SampleSpec] = []
    for i, entry in enumerate(value):
        key = f"samples[{i}]"
        if entry == "all":
            out.append(SampleSpec("all"))
        elif entry == "per_site":
            out += [SampleSpec(f"site={s}", sites=(s,)) for s in sites]
        elif entry == "per_operating_model":
            out += [SampleSpec(f"operating_model={m}", operating_models=(m,)) for m in models]
        elif isinstance(entry, dict):
            sub = c.mapping(entry, key, ("name", "sites", "operating_models"), required=("name",))
            name = sub.get("name")
            if "name" in sub and (not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or "=" in name):
                c.add(f"{key}.name", "must be 1-64 letters, digits, '_', '.' or '-' (no '=': that marks the built-in samples)")
                continue
            chosen = {}
            for field, allowed in (("sites", sites), ("operating_models", models)):
                if field in sub:
                    picked = c.names(sub[field], f"{key}.{field}", field.replace("_", " "))
                    for j, v in enumerate(picked):
                        if v not in allowed:
                            c.add(f"{key}.{field}[{j}]", f"{v!r} is not one of the study's {field.replace('_', ' ')}")
                    chosen[field] = picked
            if "name" in sub:
                out.append(SampleSpec(name, chosen.get("sites"), chosen.get("operating_models")))
        else:
            c.add(key, f"must be one of {', '.join(SAMPLE_FAMILIES)}, or a named subset {{name, sites, operating_models}}")
    names = [s.name for s in out]
    for n in sorted({n for n in names if names.count(n) > 1}):
        c.add("samples", f"sample {n!r} is listed twice; list each once")
    if "all" not in names:
        c.add("samples", "must include all: the cohort table carries the whole-study sample's matching")
    return tuple(out)


def _check_tables(c: _Checker, unit_costs: Path | None, value_set: Path | None) -> None:
    """The unit-cost table and value set follow their contracts (only `pipeline study check` reads them)."""
    from pipeline.costs import read_value_set, scan_unit_costs
    from pipeline.errors import ContractError

    for key, path, read in (("unit_costs", unit_costs, lambda p: scan_unit_costs(p).collect()), ("eq5d_value_set", value_set, read_value_set)):
        if path is None:
            continue
        try:
            read(path)
        except ContractError as exc:
            for v in exc.violations:
                c.add(key, f"{v}")


@cache
def _load(path: Path, mtime_ns: int, size: int, check_tables: bool) -> Study:
    return _check(_read_yaml(path), path, check_tables)


def load_study(path: str | Path = PIONEER, *, check_tables: bool = False) -> Study:
    """The checked study of `path`; StudyError listing every problem (by YAML key) otherwise.

    With `check_tables` the unit-cost table and value set it names are read and checked as well.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise StudyError(str(path), [("(file)", "no study file here; give the path of a study YAML file (see studies/)")])
    st = path.stat()
    return _load(path, st.st_mtime_ns, st.st_size, check_tables)


def check_study(path: str | Path) -> Study:
    """`pipeline study check FILE`: the whole file and the reference tables it names."""
    return load_study(path, check_tables=True)


def bundled_studies() -> list[Path]:
    return sorted(STUDIES_DIR.glob("*.yaml"))


def describe(study: Study) -> str:
    """A few lines saying what the study declares, for `pipeline study check`."""
    samples = ", ".join(study.sample_names)
    return "\n".join(
        [
            f"{study.path}: study {study.name!r} is valid (sha256 {study.sha256[:16]}...)",
            f"  {len(study.sites)} site(s): {', '.join(study.sites)}; {len(study.teams)} team(s); "
            f"{len(study.operating_models)} operating model(s): {', '.join(study.operating_models)}",
            f"  eligible: aged {study.min_age}+, {study.min_long_term_conditions}+ long-term condition(s)"
            + "".join(f", {c.step_name}" for c in study.survey_criteria),
            f"  window {study.study_start} to {study.study_end}, extract {study.extract_date}; periods {', '.join(study.periods)}; "
            f"panel months {study.panel_months[0]} to {study.panel_months[-1]}",
            f"  samples: {samples}",
        ]
    )
