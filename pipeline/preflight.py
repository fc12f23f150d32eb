"""Pre-flight: is the run ready to start? Checked before any work, every problem listed at once.

It runs twice: in `pipeline run` before Airflow starts (so a wrong flag fails in about a second, not
after minutes of pseudonymisation), and as the first task of the pseudonymise DAG (for runs triggered
from the UI or the REST API). It only looks: it never reads an extract or the key, writes nothing,
and the process calling it never holds the key (the key file is checked with `os.stat`/`os.access`).

    >>> preflight(RunConfig.from_conf({"raw_dir": "/nonexistent", "work_dir": "/tmp/w", "release_label": "r1"}))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pipeline.errors.PreflightError: the run cannot start: ...

What it checks, and what it leaves to the stage that reads the thing:
- the release label is not published yet, unless replacing it was asked for (`--replace`);
- the input folder exists and holds every required input, as a file or a folder of Parquet parts
  (`pipeline.pseudonymise.inputs`); whether they follow their contracts is check_inputs' business;
- the key file and the publishing key file, where one is named (the run's setting or PPRL_KEY_FILE,
  PPRL_PUBLISHING_KEY_FILE), exist, are readable and are private to their owner; a key from Airflow's
  secret store is only read by the task that needs it, which says so if it is missing; on the command
  line (`secret_store=False`) a key given nowhere is a problem too;
- the work folder is a folder this user can write in (or can be made);
- the unit-cost table exists (its contract is checked by check_inputs);
- the label matches LABEL_PATTERN in full (RunConfig refuses it first; checked again here so the
  promise holds for any RunConfig).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pipeline.crypto.keys import AIRFLOW_CONN_ID, AIRFLOW_VARIABLE, KEY_FILE_VARIABLE, KEY_VARIABLE
from pipeline.errors import PreflightError, Violation
from pipeline.secret_store import PUBLISHING_KEY_IN_ENVIRONMENT, exposed_mode
from pipeline.settings import LABEL_PATTERN, RunConfig, setting


def preflight(cfg: RunConfig, *, secret_store: bool = True) -> None:
    """Raise PreflightError listing every reason the run cannot start; return None when it can.

    `secret_store` says whether the run's tasks can ask a secret store this process cannot see (an
    Airflow deployment's metadata database): then a key named nowhere may still be found by the
    task that needs it. `pipeline run` passes False, since its embedded Airflow has only the
    environment: a key given neither as a file nor in an AIRFLOW_CONN_/AIRFLOW_VAR_ variable is
    missing, and is said so now rather than when the key holder or the signing task starts.
    """
    problems = (
        _label_problems(cfg) + _input_problems(cfg) + _work_problems(cfg) + _key_problems(cfg, secret_store)
        + _publishing_key_problems(cfg, secret_store) + _unit_cost_problems(cfg)
    )  # fmt: skip
    if problems:
        raise PreflightError(problems)


def _label_problems(cfg: RunConfig) -> list[Violation]:
    label = cfg.release_label
    if not LABEL_PATTERN.fullmatch(label):
        return [Violation(setting("release_label"), None, "release label", "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")]
    # `.old-<label>` is a release moved aside by a replacement that crashed half-way: it is put back
    # before anything else happens, so it counts as published.
    aside = cfg.release_dir.with_name(f".old-{label}")
    if (cfg.release_dir.exists() or aside.exists()) and not cfg.replace_release:
        return [
            Violation(
                str(cfg.release_dir), None, "release label not yet published",
                f"release {label!r} already exists; choose a new label with {setting('release_label')}, or replace "
                f"it with {setting('replace_release')} (its reports in {cfg.reports_dir} are then replaced too)",
            )
        ]  # fmt: skip
    return []


def _input_problems(cfg: RunConfig) -> list[Violation]:
    raw = cfg.raw
    if not raw.is_dir():
        what = "is not a folder" if raw.exists() else "does not exist"
        return [Violation(str(raw), None, "input folder present", f"the input folder {what}; check {setting('raw_dir')}")]
    # Imported only now: they load Polars (about a second), which a wrong folder need not wait for.
    from pipeline.contracts import missing_file_detail
    from pipeline.errors import ContractError
    from pipeline.pseudonymise.inputs import REQUIRED_INPUTS, deliveries, input_path

    try:
        delivered = deliveries(cfg)
    except ContractError as exc:
        return exc.violations  # the deliveries file itself (pipeline.deliveries.load_deliveries)
    out = []
    for dataset in REQUIRED_INPUTS:
        path = input_path(cfg, dataset)
        if dataset in delivered:
            if not path.is_file():
                out.append(Violation(str(path), None, "file present",
                                     f"no file there, and the deliveries file ({setting('deliveries_file')}) lists it; correct its `path:` or copy the file in"))
        elif path.is_dir():
            if not any(path.glob("*.parquet")):
                out.append(
                    Violation(str(path), None, "file present", f"the folder of parts holds no *.parquet file; check the input folder ({setting('raw_dir')})")
                )
        elif not path.is_file():
            out.append(
                Violation(
                    str(path), None, "file present",
                    f"{missing_file_detail(path)} ({setting('raw_dir')}); every run needs {dataset}.parquet "
                    f"or a folder {dataset}/ of Parquet parts",
                )
            )  # fmt: skip
    return out


def _work_problems(cfg: RunConfig) -> list[Violation]:
    """The work folder must be a folder this user can write in, or be creatable where it is named."""
    work = cfg.work
    if work.exists() and not work.is_dir():
        return [Violation(str(work), None, "work folder writable", f"this is a file, not a folder; check {setting('work_dir')}")]
    existing = next(p for p in (work, *work.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "the work folder" if existing == work else f"the work folder does not exist and {existing}"
        return [Violation(str(work), None, "work folder writable", f"{where} is not writable by this user; check {setting('work_dir')}")]
    return []


# Where the embedded runner's Airflow finds a key when no file is named: its environment-variable
# secrets backend (pipeline.crypto.keys.KEY_ENVIRONMENT, pipeline.publish.signing). Spelt out here
# because importing the signing module would load `cryptography` on the fast path.
PUBLISHING_KEY_FILE_VARIABLE = "PPRL_PUBLISHING_KEY_FILE"
LINKAGE_KEY_IN_AIRFLOW = (f"AIRFLOW_CONN_{AIRFLOW_CONN_ID.upper()}", f"AIRFLOW_VAR_{AIRFLOW_VARIABLE.upper()}")


def _key_problems(cfg: RunConfig, secret_store: bool) -> list[Violation]:
    # The same order as pipeline.crypto.keys.load_key, which refuses a key in PPRL_KEY outright.
    if os.environ.get(KEY_VARIABLE):
        return [Violation(f"environment variable {KEY_VARIABLE}", None, "key only in a 0600 file or a secret store",
                          f"unset {KEY_VARIABLE} (every child process would inherit the key) and give the key as a "
                          f"0600 file: {setting('key_file')} or {KEY_FILE_VARIABLE}")]  # fmt: skip
    if cfg.key_file:
        return _key_file_problems(Path(cfg.key_file), setting("key_file"), "`pipeline keys new --out FILE`")
    if os.environ.get(KEY_FILE_VARIABLE):
        how = f"the environment variable {KEY_FILE_VARIABLE}"
        return _key_file_problems(Path(os.environ[KEY_FILE_VARIABLE]), how, "`pipeline keys new --out FILE`")
    if secret_store or any(os.environ.get(v) for v in LINKAGE_KEY_IN_AIRFLOW):
        return []
    return [Violation("linkage key", None, "key given",
                      f"no key file named and no key in Airflow's secret store; give a 0600 key file with "
                      f"{setting('key_file')} (or {KEY_FILE_VARIABLE}), or make one with `pipeline keys new --out FILE`")]  # fmt: skip


def _publishing_key_problems(cfg: RunConfig, secret_store: bool) -> list[Violation]:
    make_one = "`pipeline keys new-publishing --out FILE`"
    if cfg.publishing_key_file:
        return _key_file_problems(Path(cfg.publishing_key_file), setting("publishing_key_file"), make_one)
    if os.environ.get(PUBLISHING_KEY_FILE_VARIABLE):
        how = f"the environment variable {PUBLISHING_KEY_FILE_VARIABLE}"
        return _key_file_problems(Path(os.environ[PUBLISHING_KEY_FILE_VARIABLE]), how, make_one)
    if secret_store or any(os.environ.get(v) for v in PUBLISHING_KEY_IN_ENVIRONMENT):
        return []
    return [Violation("publishing key", None, "key given",
                      f"no publishing key file named and none in Airflow's secret store, so the release could not be "
                      f"signed; give a 0600 file with {setting('publishing_key_file')} (or {PUBLISHING_KEY_FILE_VARIABLE}), "
                      f"or make one with {make_one}")]  # fmt: skip


def _key_file_problems(path: Path, how: str, make_one: str) -> list[Violation]:
    """A key file that is named must exist, be a file, be readable by this user and by no one else.
    Only `os.stat` and `os.access`: the key itself is never read here."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return [Violation(str(path), None, "key file present", f"no key file there; check {how}, or make a key with {make_one}")]
    except OSError as exc:
        return [Violation(str(path), None, "key file readable", f"cannot look at the key file ({exc.strerror}); check {how} and its folder's permissions")]
    if not stat.S_ISREG(st.st_mode):
        return [Violation(str(path), None, "key file present", f"this is not a file; check {how}")]
    if mode := exposed_mode(st):
        return [
            Violation(
                str(path), None, "key file private",
                f"readable or writable by group or others (mode {mode}); run `chmod 600 {path}` "
                f"and check who may have copied it ({how})",
            )
        ]  # fmt: skip
    if not os.access(path, os.R_OK):
        return [Violation(str(path), None, "key file readable", f"this user cannot read the key file; check {how} and its owner")]
    return []


def _unit_cost_problems(cfg: RunConfig) -> list[Violation]:
    path = Path(cfg.unit_costs)
    if path.is_file():
        return []
    return [
        Violation(str(path), None, "file present", f"no unit-cost table there; check {setting('unit_costs')} (a CSV following schemas/unit_costs.yaml)")
    ]
