"""The functions Airflow tasks call, one per task. Each takes the run's conf (a plain dict, see
pipeline.settings.RunConfig), does its work idempotently, and returns the path it wrote.

DAG files in dags/ only wire these together; nothing here imports Airflow. Only the pseudonymise
tasks (the key holder's, `KEY_HOLDER_TASKS`) read raw/ or load the key, and each of them runs in a
fresh child interpreter (pipeline.orchestration.key_holder), so the process that calls them, the
one that links and publishes in the embedded default, never holds the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.settings import SOURCES, RunConfig

Conf = dict[str, Any]


def _cfg(conf: Conf) -> RunConfig:
    return RunConfig.from_conf(conf)


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
    from pipeline.pseudonymise import payload_contract
    from pipeline.pseudonymise.inputs import input_files
    from pipeline.pseudonymised import blocks_path, records_path
    from pipeline.validate import run_parameters, validate_files
    from pipeline.validate.suites import QUARANTINE_SUFFIX, QUARANTINED_DATASETS

    cfg = _cfg(conf)
    parameters = run_parameters(cfg)
    raw: dict[str, list[Path]] = {"consent_register": input_files(cfg, "consent_register")}
    for dataset in QUARANTINED_DATASETS:
        quarantined = cfg.quarantine_dir / f"{dataset}.parquet"
        if quarantined.exists():
            raw[f"{dataset}{QUARANTINE_SUFFIX}"] = [quarantined]
    validate_files("raw", raw, cfg.reports_dir, cfg.release_label, parameters=parameters)

    d = cfg.pseudonymised_dir
    files: dict[str, list[Path]] = {"pseudo_persons": [d / "persons.parquet"], "survey": [d / "survey.parquet"]}
    files["token_blocks"] = [blocks_path(d, s) for s in SOURCES]
    files["record_blocks"] = [records_path(d, s) for s in SOURCES]
    for s in SOURCES:
        files[payload_contract(s).name] = [d / "payload" / f"{s}.parquet"]
    return str(validate_files("pseudonymised", files, cfg.reports_dir, cfg.release_label, parameters=parameters))


def link(conf: Conf) -> str:
    """Deterministic ranks 1-5 over every source. Returns the link map path."""
    from pipeline.link import run_link

    return str(run_link(_cfg(conf)))


def validate_linked(conf: Conf) -> str:
    from pipeline.validate import run_parameters, validate_files

    cfg = _cfg(conf)
    files = {"link_map": [cfg.linked_dir / "link_map.parquet"]}
    return str(validate_files("linked", files, cfg.reports_dir, cfg.release_label, parameters=run_parameters(cfg)))


def build_cohort(conf: Conf) -> str:
    from pipeline.cohort import build_cohort as run

    return str(run(_cfg(conf)))


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
    "check_inputs", "consent_gate", "pseudonymise_source", "validate_pseudonymised",
    "link", "validate_linked", "build_cohort", "stage_release", "validate_release", "publish_release",
)  # fmt: skip

__all__ = ["KEY_HOLDER_TASKS", "SOURCES", "STAGES"]
