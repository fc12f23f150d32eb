"""Run settings: one frozen dataclass, validated once, carried as a plain dict through Airflow conf
and XCom, and written into the release manifest.

    >>> cfg = RunConfig.from_conf({"raw_dir": "/data/raw", "work_dir": "/data/work", "release_label": "r1"})
    >>> cfg.matching.caliper
    0.2
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pipeline import zones
from pipeline.errors import PathOutsideRootsError, PipelineError, SettingsError
from pipeline.study import PIONEER, STUDIES_DIR, Study, load_study

SOURCES: tuple[str, ...] = ("hospital_apc", "hospital_ae", "hospital_op", "gp_events", "social_care")
# A label names a folder in every zone, so the whole string must match: always `fullmatch`, never
# `match` with `$`, which also matches before a trailing newline ("r1\n" would pass and show as "r1").
LABEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# The same rule for JSON Schema (the Airflow trigger form): jsonschema searches with Python's `re`, where
# `$` matches before a trailing newline too; "not followed by any character" ends the string in both
# Python and the browser's ECMAScript.
LABEL_SCHEMA_PATTERN = rf"^(?:{LABEL_PATTERN.pattern})(?![\s\S])"

# The choices of each matching option (MatchIt's names), and the key covariates Mahalanobis distance
# uses by default (MatchIt's `mahvars`): the ones selection onto MDT caseloads acts on most.
MATCHING_METHODS: tuple[str, ...] = ("nearest", "optimal")
MATCHING_DISTANCES: tuple[str, ...] = ("glm", "mahalanobis")
DEFAULT_MAHVARS: tuple[str, ...] = (
    "age_at_index", "n_ltc", "baseline_emergency_admissions", "log1p(baseline_cost_gbp)", "baseline_eq5d_index",
)  # fmt: skip
# Each matching option's Param of the trigger form and flag of `pipeline run` (the option's own name).
MATCHING_FLAGS: dict[str, str] = {
    "method": "--method", "distance": "--distance", "ratio": "--ratio", "caliper": "--caliper",
    "replace": "--with-replacement", "exact": "--exact", "mahvars": "--mahvars",
    "balance_threshold": "--balance-threshold", "ladder": "--balance-ladder",
}  # fmt: skip


# How a user sets each run setting: the flag of `pipeline run`, or the Param of the Airflow trigger
# form (the RunConfig field name). Messages name it in the words of whoever set it (`setting`).
CLI_FLAGS: dict[str, str] = {
    "raw_dir": "--raw", "work_dir": "--work", "release_label": "--release", "key_file": "--key",
    "replace_release": "--replace", "study_start": "--study-start", "study_end": "--study-end",
    "extract_date": "--extract-date", "unit_costs": "--unit-costs", "run_date": "--run-date",
    "publishing_key_file": "--publishing-key", "small_groups": "--small-groups",
    "retain_working_files": "--retain-working-files", "retention_reason": "--retain-working-files",
    "link_threshold": "--link-threshold", "link_backend": "--link-backend", "deliveries_file": "--deliveries",
    "eq5d_value_set": "--eq5d-value-set", "study_file": "--study", **MATCHING_FLAGS,
}  # fmt: skip
# Who set the run's settings, and so which names messages use: "cli" (the flags of `pipeline run`),
# "airflow" (the Params of the trigger form), or unset (library use, tests' stage runner): both. An
# environment variable, not a global, because the same messages are written in the embedded
# runner's Airflow child and the key holder's children, which inherit it (`named_as`).
SETTING_NAMES_VARIABLE = "PPRL_SETTING_NAMES"
SETTING_NAMES: tuple[str, ...] = ("cli", "airflow")


@contextlib.contextmanager
def named_as(audience: str) -> Iterator[None]:
    """Name settings as `audience` ("cli" or "airflow") knows them while the block runs, in this
    process and any child it starts; then as before.

        >>> with named_as("cli"):
        ...     setting("replace_release")
        '--replace'
    """
    if audience not in SETTING_NAMES:
        raise ValueError(f"audience must be one of {SETTING_NAMES}, not {audience!r}")
    before = os.environ.get(SETTING_NAMES_VARIABLE)
    os.environ[SETTING_NAMES_VARIABLE] = audience
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(SETTING_NAMES_VARIABLE, None)
        else:
            os.environ[SETTING_NAMES_VARIABLE] = before


def setting_names() -> str:
    """"cli", "airflow" or "" (both): whose names messages use now."""
    return os.environ.get(SETTING_NAMES_VARIABLE, "")


def setting(name: str) -> str:
    """How a message names a run setting, in the words of whoever set it (see `named_as`).

    >>> setting("raw_dir")
    '--raw (Airflow Param raw_dir)'
    >>> setting("link_addresses")
    'Airflow Param link_addresses'
    >>> with named_as("airflow"):
    ...     setting("raw_dir")
    'Airflow Param raw_dir'
    """
    audience = setting_names()
    flag = CLI_FLAGS.get(name)
    if audience == "cli":
        # A setting with no flag can only hold its default on the command line; name it plainly.
        return flag or f"run setting {name} (no flag of `pipeline run`; an Airflow Param)"
    if audience == "airflow" or not flag:
        return f"Airflow Param {name}"
    return f"{flag} (Airflow Param {name})"


# The policies of RunConfig.small_groups; what each does is in pipeline.publish.disclosure.
SMALL_GROUP_POLICIES: tuple[str, ...] = ("suppress", "coarsen", "block")
REPO_DIR = Path(__file__).resolve().parent.parent
DEFAULT_UNIT_COSTS = REPO_DIR / "reference" / "unit_costs.csv"
# EQ-5D value sets shipped with the code, by the name `eq5d_value_set` may give instead of a file
# (pipeline.costs reads them; docs/economists.md cites them).
NAMED_VALUE_SETS: dict[str, Path] = {"england": REPO_DIR / "reference" / "eq5d5l_value_set_england.csv"}
# The settings that name a path on the worker. Anyone who may trigger a DAG sets them, so where a
# deployment lists its data roots they must resolve inside one of them (`confine_to_data_roots`).
PATH_SETTINGS: tuple[str, ...] = (
    "raw_dir", "work_dir", "unit_costs", "key_file", "publishing_key_file", "deliveries_file", "eq5d_value_set", "study_file",
)
# Colon-separated folders a run's paths may resolve into; unset or empty allows any path (one
# analyst's own machine). docker-compose.yml sets it to /data:/run/secrets.
DATA_ROOTS_VARIABLE = "PPRL_DATA_ROOTS"


@dataclass(frozen=True)
class MatchingOptions:
    """Propensity-score matching options, named as economists know them from MatchIt.

    `method` nearest (greedy, largest score first) or optimal (least total distance); `distance` glm
    (the logit of a logistic propensity score) or mahalanobis (on `mahvars`, inside the propensity
    caliper); `caliper` in pooled SDs of the propensity logit; `exact` cohort columns matched exactly.
    `balance_threshold` is the |SMD| every covariate must stay under in every sample; with `ladder`
    a sample that misses it is rematched with the next specification of a short fixed ladder
    (pipeline.cohort.ladder), every attempt recorded.

        >>> MatchingOptions(method="optimal", ratio=2).describe()
        'optimal, glm, 1:2, caliper 0.2, without replacement, exact on site, sex'
    """

    method: Literal["nearest", "optimal"] = "nearest"
    distance: Literal["glm", "mahalanobis"] = "glm"
    ratio: int = 1
    caliper: float = 0.2
    replace: bool = False
    exact: tuple[str, ...] = ("site", "sex")
    mahvars: tuple[str, ...] = DEFAULT_MAHVARS
    balance_threshold: float = 0.1
    ladder: bool = True

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> PipelineError:
            return PipelineError(f"{setting(name)} must be {rule} (got {getattr(self, name)!r})")

        if self.method not in MATCHING_METHODS:
            raise bad("method", "one of " + ", ".join(MATCHING_METHODS))
        if self.distance not in MATCHING_DISTANCES:
            raise bad("distance", "one of " + ", ".join(MATCHING_DISTANCES))
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, int) or self.ratio < 1:
            raise bad("ratio", "a whole number, 1 or more (comparators per MDT participant)")
        if isinstance(self.caliper, bool) or not isinstance(self.caliper, int | float) or self.caliper <= 0:
            raise bad("caliper", "a positive number of pooled SDs of the propensity logit")
        if not isinstance(self.replace, bool):
            raise bad("replace", "true or false")
        if self.method == "optimal" and self.replace:
            raise PipelineError(
                f"{setting('method')} optimal cannot match with replacement ({setting('replace')}): with replacement every "
                "MDT participant simply takes its nearest comparators, which is method nearest"
            )
        if isinstance(self.balance_threshold, bool) or not isinstance(self.balance_threshold, int | float) or not 0 < self.balance_threshold <= 1:
            raise bad("balance_threshold", "an absolute standardised mean difference above 0 and at most 1 (the usual one is 0.1)")
        if not isinstance(self.ladder, bool):
            raise bad("ladder", "true or false")
        if self.distance == "mahalanobis" and not self.mahvars:
            raise bad("mahvars", "at least one covariate when distance is mahalanobis")
        # Tuples and floats whichever way they were typed (a YAML list, 0.2 or 1), so the manifest's
        # settings read the same for the same choice.
        object.__setattr__(self, "exact", tuple(self.exact))
        object.__setattr__(self, "mahvars", tuple(self.mahvars))
        object.__setattr__(self, "caliper", float(self.caliper))
        object.__setattr__(self, "balance_threshold", float(self.balance_threshold))

    def describe(self) -> str:
        """The specification in one line, as the manifest's attempts and the audit page show it."""
        distance = f"mahalanobis on {', '.join(self.mahvars)}" if self.distance == "mahalanobis" else "glm"
        return (
            f"{self.method}, {distance}, 1:{self.ratio}, caliper {self.caliper:g}, "
            f"{'with' if self.replace else 'without'} replacement, exact on {', '.join(self.exact) or 'nothing'}"
        )


# Each probabilistic linkage option's flat name: the trigger form's Param and the word messages use.
LINKAGE_PARAMS: dict[str, str] = {
    "link_threshold": "threshold", "link_addresses": "addresses", "link_u_max_pairs": "u_max_pairs",
    "link_em_max_pairs": "em_max_pairs", "link_seed": "seed", "link_backend": "backend",
}  # fmt: skip
LINKAGE_ADDRESSES: tuple[str, ...] = ("register", "register_and_linked")
# Engines Splink can run the probabilistic step on (pipeline.link.backends).
LINKAGE_BACKENDS: tuple[str, ...] = ("duckdb", "spark")


@dataclass(frozen=True)
class LinkageOptions:
    """The probabilistic linkage choices a study makes; pipeline.link.plan hands them to
    pipeline.link.model.ProbabilisticOptions, which holds them with the engine's own settings. The
    defaults are the values every earlier release was linked with, so leaving them alone changes
    nothing.

        >>> LinkageOptions(threshold=0.95).threshold
        0.95
    """

    # A record links to the one participant whose match probability reaches this; two or more
    # reaching it make a conflict, left unlinked. Higher: fewer false links, more records unlinked.
    threshold: float = 0.9
    # Participant addresses for the postcode comparison: the register's only, or also those on
    # records linked by NHS number (ranks 1-4), so a house move is not counted against a match.
    addresses: Literal["register", "register_and_linked"] = "register_and_linked"
    # Random pairs per source for estimating u (chance agreement among non-matches).
    u_max_pairs: float = 3e6
    # Blocked pairs each EM session samples per source (None: all of them).
    em_max_pairs: float | None = 5e5
    # Seed of every random draw of the model (u pairs, EM samples, training profiles).
    seed: int = 2026
    # Where Splink runs: DuckDB inside each source's link_rank_p task (one machine), or Spark (a local session, or the
    # cluster Spark's own configuration names; needs the `spark` extra and Java). The same pairs give
    # the same links on both (pipeline.link.backends).
    backend: Literal["duckdb", "spark"] = "duckdb"

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> PipelineError:
            flat = next(k for k, v in LINKAGE_PARAMS.items() if v == name)
            return PipelineError(f"{setting(flat)} must be {rule} (got {getattr(self, name)!r})")

        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float) or not 0.5 <= self.threshold < 1:
            raise bad("threshold", "a match probability of at least 0.5 and below 1")
        if self.addresses not in LINKAGE_ADDRESSES:
            raise bad("addresses", "one of " + ", ".join(repr(a) for a in LINKAGE_ADDRESSES))
        if isinstance(self.u_max_pairs, bool) or not isinstance(self.u_max_pairs, int | float) or self.u_max_pairs < 1e4:
            raise bad("u_max_pairs", "a number of at least 10,000, for a usable estimate of u")
        if self.em_max_pairs is not None and (
            isinstance(self.em_max_pairs, bool) or not isinstance(self.em_max_pairs, int | float) or self.em_max_pairs < 1e3
        ):
            raise bad("em_max_pairs", "a number of at least 1,000, or empty for all blocked pairs")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise bad("seed", "a whole number")
        if self.backend not in LINKAGE_BACKENDS:
            raise bad("backend", "one of " + ", ".join(repr(b) for b in LINKAGE_BACKENDS))
        # Numbers as floats whichever way they were typed (3000000 on the form, 3e6 here), so the
        # manifest's settings read the same for the same choice.
        for name in ("threshold", "u_max_pairs", "em_max_pairs"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, float(getattr(self, name)))


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs to know. Paths are absolute strings so the config crosses XCom."""

    raw_dir: str
    work_dir: str
    release_label: str
    # The study file (pipeline.study): sites, teams, eligibility, windows, samples, reference tables.
    study_file: str = str(PIONEER)
    # The study window and extract date: None takes the study's (window: in the study file); a value
    # overrides it for this run, and the manifest's settings record what was used.
    study_start: str | None = None
    study_end: str | None = None
    extract_date: str | None = None
    # The day the run is made, which decides which withdrawals it must honour (the consent gate):
    # None means today in UTC, resolved once by the consent gate task. Tests pin it. It differs
    # from run to run, so it is kept out of the content manifest (pipeline.publish.release).
    run_date: str | None = None
    # The unit-cost table: None takes the study's (unit_costs: in the study file).
    unit_costs: str | None = None
    # A deliveries file (pipeline.deliveries): sources delivered in a provider's own layout (CSV,
    # pipe-delimited, gzip, Parquet) with the mapping that reads each. None: every input is
    # `<dataset>.parquet` in the contracts' layout in raw_dir. The deliveries themselves (file hashes,
    # mapping name and version) are recorded in the input manifest.
    deliveries_file: str | None = None
    # The EQ-5D value set: a name of NAMED_VALUE_SETS or the path of a CSV (schemas/eq5d_value_set.yaml).
    # None: the shipped England 5L set (the study file may name another).
    eq5d_value_set: str | None = None
    replace_release: bool = False
    # Path of a 0600 key file. Only the pseudonymise tasks read it; production sets PPRL_KEY_FILE or
    # the Airflow connection `pprl_key` instead (see pipeline.crypto.keys.load_key).
    key_file: str | None = None
    # Path of the 0600 publishing key (Ed25519) that signs the release. Only the publish task reads
    # it; production sets PPRL_PUBLISHING_KEY_FILE or the Airflow connection `pprl_publishing_key`
    # instead (see pipeline.publish.signing.load_publishing_key). Kept out of the manifest, as key_file.
    publishing_key_file: str | None = None
    matching: MatchingOptions = field(default_factory=MatchingOptions)
    linkage: LinkageOptions = field(default_factory=LinkageOptions)
    # What publication does about a combination of quasi-identifiers shared by fewer than
    # MIN_GROUP_SIZE people in a row-level table (pipeline.publish.disclosure.SMALL_GROUP_POLICIES):
    # "suppress" (default) withholds those rows' least important quasi-identifiers and drops people no
    # withholding protects; "coarsen" merges age bands and IMD for everyone first; "block" refuses.
    # The default lets a realistic study publish; a governance officer who wants to see every small
    # group before anything is changed runs "block".
    small_groups: Literal["suppress", "coarsen", "block"] = "suppress"
    # Once the label is published its working files (pseudonymised/<label>/, linked/<label>/) are
    # removed (pipeline.zones.purge_working_files): tokens and link map kept after a release would let
    # a later label's tokens re-link people who withdrew in between. A run that must keep them (to
    # rerun linkage for the label, or for an audit) says why; the reason goes into the manifest's
    # settings, so the release records that its working files were kept and on whose word.
    retain_working_files: bool = False
    retention_reason: str | None = None

    def __post_init__(self) -> None:
        study = self.study  # checked once here: a broken study file stops the run before any work
        for name in ("study_start", "study_end", "extract_date"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, getattr(study, name).isoformat())
        if self.unit_costs is None:
            object.__setattr__(self, "unit_costs", str(study.unit_costs))
        if isinstance(self.retention_reason, str) and not self.retention_reason.strip():
            # An empty field of the Airflow trigger form is no reason.
            object.__setattr__(self, "retention_reason", None)
        if self.retain_working_files and not (isinstance(self.retention_reason, str) and self.retention_reason.strip()):
            raise SettingsError(
                f"keeping the working files needs a reason: give it with {setting('retain_working_files')} REASON"
                + ("" if setting_names() == "cli" else " (Airflow Param retention_reason)")
                + ", for the manifest"
            )
        if self.retention_reason is not None and not self.retain_working_files:
            raise SettingsError(
                "retention_reason is given but retain_working_files is not set; set both (the CLI's "
                f"{setting('retain_working_files')} REASON does) or neither"
            )
        if self.small_groups not in SMALL_GROUP_POLICIES:
            choices = ", ".join(repr(p) for p in SMALL_GROUP_POLICIES)
            raise SettingsError(f"{setting('small_groups')} must be one of {choices} (got {self.small_groups!r})")
        if not isinstance(self.release_label, str) or not LABEL_PATTERN.fullmatch(self.release_label):
            raise SettingsError(
                f"{setting('release_label')} must be 1-64 characters of letters, digits, '.', '_' or '-', "
                "starting with a letter or digit, and nothing else (no space or line break)"
            )
        for name in ("study_start", "study_end", "extract_date"):
            try:
                dt.date.fromisoformat(getattr(self, name))
            except ValueError:
                raise SettingsError(f"{setting(name)} must be a date written YYYY-MM-DD") from None
        if self.study_start >= self.study_end:
            raise SettingsError(f"{setting('study_start')} must be before {setting('study_end')}")
        if self.run_date is not None:
            try:
                dt.date.fromisoformat(self.run_date)
            except (TypeError, ValueError):
                raise SettingsError(f"{setting('run_date')} must be a date written YYYY-MM-DD, or left empty for today") from None
            if dt.date.fromisoformat(self.run_date) < self.extract:
                raise SettingsError(
                    f"{setting('run_date')} must be on or after {setting('extract_date')}: a run cannot be made before its extract was taken"
                )

    @classmethod
    def from_conf(cls, conf: dict[str, Any]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(conf) - known
        if unknown:
            raise SettingsError(f"unknown run settings {sorted(unknown)}; known ones are {sorted(known)}")
        conf = dict(conf)
        m = conf.pop("matching", None) or {}
        if not isinstance(m, MatchingOptions):
            m = dict(m)
            if "caliper_sd" in m:  # the option's name before it took MatchIt's
                m.setdefault("caliper", m.pop("caliper_sd"))
            unknown_options = set(m) - {f.name for f in fields(MatchingOptions)}
            if unknown_options:
                raise PipelineError(
                    f"unknown matching options {sorted(unknown_options)}; known ones are {sorted(f.name for f in fields(MatchingOptions))}"
                )
            # The study's matching section gives the defaults, field by field; a value set for the
            # run (CLI flag, Param, conf) overrides it. None means "not set".
            study = load_study(conf.get("study_file") or PIONEER)
            m = {**study.matching_defaults, **{k: v for k, v in m.items() if v is not None}}
            if "exact" in m:
                m["exact"] = tuple(m["exact"])
            m = MatchingOptions(**m)
        link = conf.pop("linkage", None) or {}
        if not isinstance(link, LinkageOptions):
            unknown_options = set(link) - {f.name for f in fields(LinkageOptions)}
            if unknown_options:
                raise SettingsError(
                    f"unknown linkage options {sorted(unknown_options)}; known ones are {sorted(f.name for f in fields(LinkageOptions))}"
                )
            link = LinkageOptions(**link)
        for p in PATH_SETTINGS:
            if conf.get(p) is None or (p == "eq5d_value_set" and conf[p] in NAMED_VALUE_SETS):
                continue
            conf[p] = str(Path(conf[p]).expanduser().resolve())
        confine_to_data_roots(conf, data_roots())
        return cls(matching=m, linkage=link, **conf)

    @cached_property
    def study(self) -> Study:
        """The run's study (pipeline.study), loaded and checked once."""
        return load_study(self.study_file)

    def to_conf(self) -> dict[str, Any]:
        d = asdict(self)
        d["matching"]["exact"] = list(self.matching.exact)
        d["matching"]["mahvars"] = list(self.matching.mahvars)
        return d

    @property
    def value_set_file(self) -> Path:
        """The EQ-5D value set's file: a named one's, the given path, or else the study file's."""
        if self.eq5d_value_set is None:
            return Path(self.study.eq5d_value_set)
        return NAMED_VALUE_SETS.get(self.eq5d_value_set, Path(self.eq5d_value_set))

    # Zone layout: the folders are declared in pipeline.zones, with every file in them.
    @property
    def raw(self) -> Path:
        return Path(self.raw_dir)

    @property
    def work(self) -> Path:
        return Path(self.work_dir)

    @property
    def quarantine_dir(self) -> Path:
        return zones.quarantine_dir(self.work, self.release_label)

    @property
    def pseudonymised_dir(self) -> Path:
        return zones.zone_dir(self.work, "pseudonymised", self.release_label)

    @property
    def linked_dir(self) -> Path:
        return zones.zone_dir(self.work, "linked", self.release_label)

    @property
    def staging_dir(self) -> Path:
        return zones.staging_dir(self.work, self.release_label)

    @property
    def release_dir(self) -> Path:
        return zones.release_dir(self.work, self.release_label)

    @property
    def reports_dir(self) -> Path:
        """Written only by publish_release, with the release (pipeline.zones.reports_dir)."""
        return zones.reports_dir(self.work, self.release_label)

    @property
    def reports_staging_dir(self) -> Path:
        """Where this run writes its reports until publication (pipeline.zones.reports_staging_dir)."""
        return zones.reports_staging_dir(self.work, self.release_label)

    @property
    def start(self) -> dt.date:
        return dt.date.fromisoformat(self.study_start)

    @property
    def end(self) -> dt.date:
        return dt.date.fromisoformat(self.study_end)

    @property
    def extract(self) -> dt.date:
        return dt.date.fromisoformat(self.extract_date)


def data_roots(environ: dict[str, str] | None = None) -> tuple[Path, ...]:
    """The folders `PPRL_DATA_ROOTS` lists (colon-separated), resolved; empty when it is unset."""
    value = (os.environ if environ is None else environ).get(DATA_ROOTS_VARIABLE, "")
    return tuple(Path(part).expanduser().resolve() for part in value.split(os.pathsep) if part.strip())


def confine_to_data_roots(conf: dict[str, Any], roots: tuple[Path, ...]) -> None:
    """Refuse a path setting that resolves (symbolic links and `..` followed) outside every root.

    With no roots nothing is checked. The bundled unit-cost table is allowed wherever the code is
    installed: it is the default, not a path anyone chose.

        >>> confine_to_data_roots({"work_dir": "/data/work"}, (Path("/data"),))
        >>> confine_to_data_roots({"work_dir": "/etc"}, (Path("/data"),))
        Traceback (most recent call last):
        ...
        pipeline.errors.PathOutsideRootsError: run setting work_dir (--work (Airflow Param work_dir)): rule 'inside the data roots' broken: ...
    """
    if not roots:
        return
    for name in PATH_SETTINGS:
        value = conf.get(name)
        if value is None:
            continue
        path = Path(value).expanduser().resolve()
        if name == "unit_costs" and path == DEFAULT_UNIT_COSTS.resolve():
            continue
        if name == "eq5d_value_set" and (value in NAMED_VALUE_SETS or path in {v.resolve() for v in NAMED_VALUE_SETS.values()}):
            continue
        if name == "study_file" and path.parent == STUDIES_DIR.resolve():
            continue  # a study shipped with the code
        if not any(path == root or path.is_relative_to(root) for root in roots):
            listed = ", ".join(str(root) for root in roots)
            raise PathOutsideRootsError(
                f"run setting {name} ({setting(name)}): rule 'inside the data roots' broken: it resolves outside every folder "
                f"{DATA_ROOTS_VARIABLE} allows ({listed}); give a path under one of them, or ask the "
                "deployment's administrator to add a root"
            )
