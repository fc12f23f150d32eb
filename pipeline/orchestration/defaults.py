"""What every pipeline DAG shares: default task arguments and the run Params of the trigger form.

The Params mirror `pipeline.settings.RunConfig` field by field and take their defaults from it, so
the form and the pipeline cannot disagree about a default.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import fields
from typing import Any

from airflow.sdk import ExceptionRetryPolicy, Param, RetryAction, RetryRule

__all__ = ["KEY_HOLDER_QUEUE", "default_args", "run_params"]

from pipeline.orchestration import KEY_HOLDER_QUEUE
from pipeline.settings import (
    LABEL_SCHEMA_PATTERN,
    LINKAGE_ADDRESSES,
    LINKAGE_BACKENDS,
    MATCHING_DISTANCES,
    MATCHING_METHODS,
    NAMED_VALUE_SETS,
    SMALL_GROUP_POLICIES,
    LinkageOptions,
    RunConfig,
)

OWNER = "pprl"
RETRIES = 2
RETRY_DELAY = dt.timedelta(seconds=30)

# Retrying only helps with transient trouble (a full disk, a flaky network share). A PipelineError
# means the input or the settings are wrong and a stub raising NotImplementedError will not change,
# so those fail at once instead of after two pointless retries.
RETRY_POLICY = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception="pipeline.errors.PipelineError",
            action=RetryAction.FAIL,
            reason="PipelineError: the input or the run settings must be fixed first",
        ),
        RetryRule(exception="builtins.NotImplementedError", action=RetryAction.FAIL, reason="not implemented"),
    ]
)


def default_args(*, queue: str | None = None) -> dict[str, Any]:
    """Task defaults for every pipeline DAG: owner, retries with a short delay, the retry policy, and
    the Celery queue when it is not the default one (the key holder's DAG passes KEY_HOLDER_QUEUE)."""
    args = {"owner": OWNER, "retries": RETRIES, "retry_delay": RETRY_DELAY, "retry_policy": RETRY_POLICY}
    if queue is not None:
        args["queue"] = queue
    return args


def _default(cls: type, name: str) -> Any:
    return next(f.default for f in fields(cls) if f.name == name)


def run_params(*, filled_by_upstream: bool) -> dict[str, Param]:
    """The trigger form: one Param per RunConfig setting, matching and linkage options flat.

    With `filled_by_upstream` (the link and publish DAGs) the three required settings may be left
    empty, because an asset-triggered run takes the whole conf from its upstream event; they must be
    set only to rerun the DAG by hand.
    """
    if filled_by_upstream:
        required: dict[str, Any] = {"default": None, "type": ["null", "string"]}
        how = " Leave empty when the upstream DAG triggers this one; set it to rerun this DAG by hand."
    else:
        required = {"type": "string", "minLength": 1}
        how = ""
    date = {"type": ["null", "string"], "format": "date"}
    return {
        "raw_dir": Param(
            **required,
            title="Raw input folder",
            description="Folder of the identifiable Parquet extracts (consent register, survey, service use)." + how,
            section="Inputs",
        ),
        "work_dir": Param(
            **required,
            title="Work folder",
            description="Folder under which the zones (pseudonymised/, linked/, releases/, reports/) are written."
            + how,
            section="Inputs",
        ),
        "release_label": Param(
            **required,
            pattern=LABEL_SCHEMA_PATTERN,
            title="Release label",
            description="Name of this run and its release: 1-64 letters, digits, '.', '_' or '-'. "
            "Every zone keeps one folder per label, so runs of different labels never share a file." + how,
            section="Inputs",
        ),
        "study_file": Param(
            _default(RunConfig, "study_file"), type="string", minLength=1, title="Study file",
            description="The study YAML file (sites, teams, eligibility, windows, samples, reference tables); "
            "check one with `pipeline study check FILE`.", section="Study window",
        ),
        "study_start": Param(
            None, **date, title="Study start",
            description="First day of the study window (YYYY-MM-DD). Leave empty for the study file's.", section="Study window",
        ),
        "study_end": Param(
            None, **date, title="Study end",
            description="Last day of the study window (YYYY-MM-DD); must be after the start. Leave empty for the study file's.",
            section="Study window",
        ),
        "extract_date": Param(
            None, **date, title="Extract date",
            description="Date the extracts were taken (YYYY-MM-DD). Leave empty for the study file's.", section="Study window",
        ),
        "run_date": Param(
            None, type=["null", "string"], format="date", title="Run date",
            description="The day the run counts withdrawals up to (YYYY-MM-DD): every withdrawal received by "
            "then excludes the person, whatever the extract date. Leave empty for today (UTC).",
            section="Study window",
        ),
        "key_file": Param(
            None, type=["null", "string"], title="Key file",
            description="Path of the 0600 linkage key file. Leave empty in production, where the key comes "
            "from the key file named by PPRL_KEY_FILE on the key holder's workers or the Airflow connection pprl_key.",
            section="Inputs",
        ),
        "publishing_key_file": Param(
            None, type=["null", "string"], title="Publishing key file",
            description="Path of the 0600 publishing key that signs the release (not the linkage key). Leave "
            "empty in production, where it comes from PPRL_PUBLISHING_KEY_FILE or the Airflow connection "
            "pprl_publishing_key.",
            section="Release",
        ),
        "unit_costs": Param(
            None, type=["null", "string"], title="Unit-cost table",
            description="CSV of unit costs to use instead of the study file's (the bundled studies name the cited reference/unit_costs.csv).",
            section="Release",
        ),
        "deliveries_file": Param(
            None, type=["null", "string"], title="Deliveries file",
            description="YAML listing sources delivered in a provider's own layout (CSV, pipe-delimited, gzip, "
            "Parquet) with the mapping that reads each (docs/data-engineers.md). Leave empty when every input "
            "is <dataset>.parquet in the raw folder.",
            section="Inputs",
        ),
        "replace_release": Param(
            _default(RunConfig, "replace_release"), type="boolean", title="Replace an existing release",
            description="Publish over an existing release with this label. Off: the run stops before "
            "touching a release that already exists.",
            section="Release",
        ),
        "small_groups": Param(
            _default(RunConfig, "small_groups"), type="string", enum=list(SMALL_GROUP_POLICIES),
            title="Small quasi-identifier groups",
            description="What publishing does about a row-level group of fewer than MIN_GROUP_SIZE people: "
            "suppress (withhold quasi-identifiers of those rows, then drop who is still too few), coarsen "
            "(merge age bands and IMD first), or block (refuse the release).",
            section="Release",
        ),
        "retain_working_files": Param(
            _default(RunConfig, "retain_working_files"), type="boolean", title="Keep working files",
            description="Keep pseudonymised/<label>/ and linked/<label>/ after publication (to rerun linkage "
            "for this label, or for an audit). Off: they are removed once the release is published. "
            "Needs a reason, recorded in the manifest.",
            section="Release",
        ),
        "retention_reason": Param(
            _default(RunConfig, "retention_reason"), type=["null", "string"], title="Why the working files are kept",
            description="Required when keeping the working files; recorded in the release manifest's settings.",
            section="Release",
        ),
        "eq5d_value_set": Param(
            None, type=["null", "string"], title="EQ-5D value set",
            description="A shipped value set by name (" + ", ".join(NAMED_VALUE_SETS) + ") or the path of a CSV "
            "following schemas/eq5d_value_set.yaml. Empty: the study file's.",
            section="Release",
        ),
        # The matching options (RunConfig.matching), flat, each Param named as its MatchingOptions field;
        # empty takes the study file's matching section (and MatchingOptions' default where it is silent).
        "method": Param(
            None, type=["null", "string"], enum=[None, *MATCHING_METHODS], title="Matching method",
            description="nearest: greedy nearest neighbour, largest propensity score first; optimal: the pairs "
            "with the least total distance (within the caliper). Empty: the study file's.", section="Matching",
        ),
        "distance": Param(
            None, type=["null", "string"], enum=[None, *MATCHING_DISTANCES], title="Distance",
            description="glm: the logit of the propensity score; mahalanobis: Mahalanobis distance on the key "
            "covariates (mahvars), inside the propensity-score caliper. Empty: the study file's.", section="Matching",
        ),
        "ratio": Param(
            None, type=["null", "integer"], minimum=1, title="Matching ratio (1:k)",
            description="Comparators matched to each MDT participant. Empty: the study file's.", section="Matching",
        ),
        "caliper": Param(
            None, type=["null", "number"], exclusiveMinimum=0, title="Caliper",
            description="Caliper width in pooled standard deviations of the propensity-score logit. Empty: the study file's.", section="Matching",
        ),
        "replace": Param(
            None, type=["null", "boolean"], title="Match with replacement",
            description="Allow one comparator to be matched to several participants (method nearest only). Empty: the study file's.", section="Matching",
        ),
        "exact": Param(
            None, type=["null", "array"], items={"type": "string"},
            title="Exact-match variables",
            description="Variables a comparator must share exactly with its participant. Empty: the study file's.", section="Matching",
        ),
        "mahvars": Param(
            None, type=["null", "array"], items={"type": "string"},
            title="Mahalanobis covariates",
            description="Covariates of the Mahalanobis distance (distance mahalanobis, and the ladder's Mahalanobis steps). Empty: the study file's, or the key covariates it has.",
            section="Matching",
        ),
        "balance_threshold": Param(
            None, type=["null", "number"], exclusiveMinimum=0, maximum=1,
            title="Balance threshold (|SMD|)",
            description="Every covariate's absolute standardised mean difference after matching must be below this "
            "in every sample; a sample above it is flagged. Empty: the study file's (0.1 if silent).", section="Matching",
        ),
        "ladder": Param(
            None, type=["null", "boolean"], title="Seek balance (ladder)",
            description="Rematch a sample that misses the threshold with the next specification of a short fixed "
            "ladder, keeping the first that balances (or the best); every attempt is in the manifest. Empty: the study file's (on if silent).", section="Matching",
        ),
        # The probabilistic linkage options (RunConfig.linkage), flat as pipeline.settings.LINKAGE_PARAMS names them.
        "link_threshold": Param(
            _default(LinkageOptions, "threshold"), type="number", minimum=0.5, exclusiveMaximum=1,
            title="Match probability threshold",
            description="A record links to the one participant whose match probability reaches this; "
            "two or more reaching it are a conflict, left unlinked.", section="Linkage",
        ),
        "link_addresses": Param(
            _default(LinkageOptions, "addresses"), type="string", enum=list(LINKAGE_ADDRESSES), title="Known addresses",
            description="Postcodes compared: the register's only, or also those on records linked by NHS number.",
            section="Linkage",
        ),
        "link_u_max_pairs": Param(
            _default(LinkageOptions, "u_max_pairs"), type="number", minimum=10_000, title="Pairs for u",
            description="Random pairs per source for estimating chance agreement among non-matches.", section="Linkage",
        ),
        "link_em_max_pairs": Param(
            _default(LinkageOptions, "em_max_pairs"), type=["null", "number"], minimum=1_000, title="Pairs per EM session",
            description="Blocked pairs each training session samples per source; empty for all of them.", section="Linkage",
        ),
        "link_seed": Param(
            _default(LinkageOptions, "seed"), type="integer", title="Linkage seed",
            description="Seed of the model's random draws; the same seed gives the same links.", section="Linkage",
        ),
        "link_backend": Param(
            _default(LinkageOptions, "backend"), type="string", enum=list(LINKAGE_BACKENDS), title="Linkage engine",
            description="Where Splink runs: duckdb inside each source's link_rank_p task, or spark (the cluster of the worker's Spark "
            "configuration, or a local session); spark needs the spark extra and Java on the worker.",
            section="Linkage",
        ),
    }
