"""The functions Airflow tasks call, one per task. Each takes the run's conf (a plain dict, see
pipeline.settings.RunConfig), does its work idempotently, and returns the path it wrote.

DAG files in dags/ only wire these together; nothing here imports Airflow. Only the pseudonymise
tasks (the key holder's, `KEY_HOLDER_TASKS`) read raw/ or load the key, and each of them runs in a
fresh child interpreter (pipeline.orchestration.key_holder), so the process that calls them, the
one that links and publishes in the embedded default, never holds the key. The first task of each DAG takes `run`, the Airflow facts of its DAG run
(`pipeline.orchestration.conf.run_facts`; None without Airflow), for the release's provenance.

Every report a run writes goes to `cfg.reports_staging_dir`; publish_release moves it to
`cfg.reports_dir` with the release, so a failed run never changes a published release's reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.settings import SOURCES, RunConfig

if TYPE_CHECKING:
    from pipeline.link.plan import LinkPlan

Conf = dict[str, Any]
Run = dict[str, Any] | None


def _cfg(conf: Conf) -> RunConfig:
    return RunConfig.from_conf(conf)


def preflight(conf: Conf, run: Run = None) -> str:
    """Check the run can start (pipeline.preflight), before any work; then open its reports staging
    folder afresh and record the run. Returns the reports staging folder."""
    import shutil

    from pipeline.preflight import preflight as check
    from pipeline.publish.provenance import record_run
    from pipeline.publish.release import finish_interrupted_publish

    cfg = _cfg(conf)
    # A publication killed between renaming the release and its reports is finished first, so the
    # reports of the release in place are never mistaken for this run's leftovers.
    finish_interrupted_publish(cfg)
    check(cfg)
    # A new run of the label: the staging folder's reports, if any, are an earlier failed run's,
    # and mixing them with this run's would misdescribe it.
    shutil.rmtree(cfg.reports_staging_dir, ignore_errors=True)
    record_run(cfg, "pprl_pseudonymise", run, input_folder=cfg.raw_dir)
    return str(cfg.reports_staging_dir)


# The tasks of pprl_pseudonymise: they read raw/ and the key, and run on the key holder's worker.
KEY_HOLDER_TASKS: tuple[str, ...] = ("check_inputs", "consent_gate", "pseudonymise_source", "validate_pseudonymised")


def _in_key_holder(task: str, conf: Conf, *args: str) -> str:
    """Run a key holder's task in a child interpreter of its own, or here when the deployment says so
    (see pipeline.orchestration.key_holder for when, and why)."""
    from pipeline.orchestration import key_holder

    _cfg(conf)  # Bad settings are refused here, without starting a child.
    if key_holder.mode() == key_holder.IN_PROCESS:
        return run_key_holder_task(task, conf, *args)
    return key_holder.run_in_key_holder(task, conf, *args)


def run_key_holder_task(task: str, conf: Conf, *args: str) -> str:
    """The work of one key holder's task, in this process (the child calls this)."""
    if task not in KEY_HOLDER_TASKS:
        raise ValueError(f"{task} is not a key holder's task")
    return globals()[f"_{task}"](conf, *args)


def check_inputs(conf: Conf) -> str:
    """Check every input file against its contract; write and return the input manifest (hashes, rows)."""
    return _in_key_holder("check_inputs", conf)


def consent_gate(conf: Conf) -> str:
    """Keep consented, not-withdrawn participants; tokenise them. Returns pseudonymised persons path."""
    return _in_key_holder("consent_gate", conf)


def pseudonymise_source(conf: Conf, source: str) -> str:
    """Tokenise one service-use source. Returns the source's pseudonymised folder."""
    return _in_key_holder("pseudonymise_source", conf, source)


def validate_pseudonymised(conf: Conf) -> str:
    """Validate raw/'s consent register and quarantine files, then the pseudonymised zone."""
    return _in_key_holder("validate_pseudonymised", conf)


def _check_inputs(conf: Conf) -> str:
    from pipeline.pseudonymise import check_inputs as run

    return str(run(_cfg(conf)))


def _consent_gate(conf: Conf) -> str:
    from pipeline.crypto.keys import load_key
    from pipeline.pseudonymise import run_consent_gate

    cfg = _cfg(conf)
    return str(run_consent_gate(cfg, load_key(cfg.key_file)))


def _pseudonymise_source(conf: Conf, source: str) -> str:
    from pipeline.crypto.keys import load_key
    from pipeline.pseudonymise import pseudonymise_source as run

    cfg = _cfg(conf)
    return str(run(cfg, load_key(cfg.key_file), source))


def _validate_pseudonymised(conf: Conf) -> str:
    """Validate the raw zone's consent register and quarantine files, then the pseudonymised zone.

    Both run here, in the key holder's DAG, because only its tasks may read raw/. The service-use
    extracts themselves were checked against their contracts by check_inputs; their business rules
    run on their pseudonymised payloads (the same rows, less the quarantined ones checked here).
    """
    from pipeline.pseudonymise.inputs import input_files
    from pipeline.validate import run_parameters, validate_files
    from pipeline.validate.suites import QUARANTINE_SUFFIX, QUARANTINED_DATASETS
    from pipeline.zones import quarantine_file, validated_files

    cfg = _cfg(conf)
    parameters = run_parameters(cfg)
    raw: dict[str, list[Path]] = {"consent_register": input_files(cfg, "consent_register")}
    for dataset in QUARANTINED_DATASETS:
        quarantined = quarantine_file(cfg, dataset)
        if quarantined.exists():
            raw[f"{dataset}{QUARANTINE_SUFFIX}"] = [quarantined]
    validate_files("raw", raw, cfg.reports_staging_dir, cfg.release_label, parameters=parameters)

    files = validated_files(cfg, "pseudonymised", SOURCES)
    return str(validate_files("pseudonymised", files, cfg.reports_staging_dir, cfg.release_label, parameters=parameters))


def link(conf: Conf, run: Run = None) -> str:
    """Deterministic ranks 1-5, then the probabilistic rank P, over every source: every step of the
    link DAG below, in order, in this process. Returns the link map path."""
    prepare_link(conf, run)
    for source in SOURCES:
        link_ranks(conf, source)
    model_participants(conf)
    for source in SOURCES:
        link_rank_p(conf, source)
    return write_link_map(conf)


# The link DAG's tasks (pipeline.link.stage runs each step; it owns the order and the files between).
def prepare_link(conf: Conf, run: Run = None) -> str:
    """Check the token files and start the link stage's work folder. Returns the folder."""
    from pipeline.link.stage import prepare_link as prepare
    from pipeline.publish.provenance import record_run

    from pipeline.publish.release import finish_interrupted_publish

    cfg = _cfg(conf)
    finish_interrupted_publish(cfg)  # first task of its DAG: see preflight
    record_run(cfg, "pprl_link", run)
    return str(prepare(_link_plan(cfg)))


def link_ranks(conf: Conf, source: str) -> str:
    """One source's profiles and ranks 1-5 (mapped per source)."""
    from pipeline.link.stage import link_ranks as ranks

    return str(ranks(_link_plan(_cfg(conf)), source))


def model_participants(conf: Conf) -> str:
    """The participants as the model compares them, with the addresses every source's ranks found
    (nothing, and "", when the token files lack the model's columns)."""
    from pipeline.link.stage import model_participants as model

    path = model(_link_plan(_cfg(conf)))
    return str(path) if path else ""


def link_rank_p(conf: Conf, source: str) -> str:
    """One source's rank P, the probabilistic step (mapped per source)."""
    from pipeline.link.stage import link_rank_p as rank_p

    return str(rank_p(_link_plan(_cfg(conf)), source))


def write_link_map(conf: Conf) -> str:
    """The link map, linkage quality report and summary, from every source's result."""
    from pipeline.link.stage import write_link_map as write

    return str(write(_link_plan(_cfg(conf))))


def _link_plan(cfg: RunConfig) -> LinkPlan:
    from pipeline.link.plan import plan_link

    return plan_link(cfg)


def validate_linked(conf: Conf) -> str:
    from pipeline.validate import run_parameters, validate_files
    from pipeline.zones import validated_files

    cfg = _cfg(conf)
    files = validated_files(cfg, "linked", SOURCES)
    return str(validate_files("linked", files, cfg.reports_staging_dir, cfg.release_label, parameters=run_parameters(cfg)))


def build_cohort(conf: Conf, run: Run = None) -> str:
    from pipeline.cohort import build_cohort as build
    from pipeline.publish.provenance import record_run

    from pipeline.publish.release import finish_interrupted_publish

    cfg = _cfg(conf)
    finish_interrupted_publish(cfg)  # first task of its DAG: see preflight
    record_run(cfg, "pprl_publish", run)
    return str(build(cfg))


def stage_release(conf: Conf) -> str:
    from pipeline.publish import stage_release as run

    return str(run(_cfg(conf)))


def validate_release(conf: Conf) -> str:
    from pipeline.publish import validate_release as run

    return str(run(_cfg(conf)))


def publish_release(conf: Conf) -> str:
    from pipeline.publish import publish_release as run

    return str(run(_cfg(conf)))


# The order the embedded runner and tests run the stages in, without Airflow.
STAGES: tuple[str, ...] = (
    "preflight", "check_inputs", "consent_gate", "pseudonymise_source", "validate_pseudonymised",
    "link", "validate_linked", "build_cohort", "stage_release", "validate_release", "publish_release",
)  # fmt: skip

__all__ = ["KEY_HOLDER_TASKS", "SOURCES", "STAGES"]
