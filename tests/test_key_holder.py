"""The key holder's tasks run in child interpreters of their own, so the key never reaches the process
that links and publishes (the embedded default runs all of them in one process, `dag.test()`).

The attack: a process runs the pseudonymise tasks and then linkage, as dag.test() does; afterwards
it must hold no key module, and so no key. The run is made in a fresh interpreter, the only honest
way to see what it imported; its pseudonymised zone must be byte for byte the in-process run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RELIABILITY_LABEL, file_hashes

from test_key_boundary import KEY_MODULES

from pipeline import errors, secret_store
from pipeline.orchestration import key_holder
from pipeline.orchestration.embedded import DAGS_FOLDER, airflow_env
from pipeline.secret_store import PUBLISHING_SEALED_FD_VARIABLE, PUBLISHING_SEALED_NAME, unsealed_publishing_key
from pipeline.settings import SOURCES

REPO_DIR = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter, as the embedded default's dag.test() process would: every key
# holder's task, then link, then reports which key modules the process has loaded.
PARENT = """
import json, sys
from pipeline import tasks
conf = json.loads(sys.argv[1])
outputs = [tasks.check_inputs(conf), tasks.consent_gate(conf)]
outputs += [tasks.pseudonymise_source(conf, s) for s in json.loads(sys.argv[2])]
outputs += [tasks.validate_pseudonymised(conf), tasks.link(conf)]
key_modules = set(json.loads(sys.argv[3]))
loaded = sorted(m for m in sys.modules if m in key_modules or m.startswith("pipeline.pseudonymise.") or m == "pipeline.pseudonymise")
print(json.dumps({"outputs": outputs, "key_modules": loaded}))
"""


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != key_holder.KEY_HOLDER_PROCESS}
    return {**env, **extra}


def test_the_process_that_links_never_loads_the_key(reference, tmp_path):
    conf = reference.conf(tmp_path / "work")
    done = subprocess.run(
        # The key-holding modules as the import-boundary test defines them; key-free ones (canonical
        # forms, the token files' spec metadata) may be loaded.
        [sys.executable, "-c", PARENT, json.dumps(conf), json.dumps(list(SOURCES)), json.dumps(sorted(KEY_MODULES))],
        cwd=REPO_DIR, env=_child_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["key_modules"] == [], f"the linking process loaded {report['key_modules']}"
    # The children did the work: every output is there, and the zone is the in-process run's, byte for byte.
    assert all(Path(p).exists() for p in report["outputs"])
    label = f"pseudonymised/{RELIABILITY_LABEL}"
    assert file_hashes(tmp_path / "work" / label) == file_hashes(reference.snapshots["link"] / label)


def test_in_process_the_same_run_would_load_the_key(reference, tmp_path):
    """The check above can fail: run in the caller, the consent gate leaves the key module loaded."""
    conf = reference.conf(tmp_path / "work")
    code = "import json, sys; from pipeline import tasks; tasks.check_inputs(json.loads(sys.argv[1])); " \
        "tasks.consent_gate(json.loads(sys.argv[1])); print('pipeline.crypto.keys' in sys.modules)"  # fmt: skip
    env = _child_env(**{key_holder.KEY_HOLDER_PROCESS: key_holder.IN_PROCESS})
    done = subprocess.run([sys.executable, "-c", code, json.dumps(conf)], cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "True"


# (what is wrong, how to make it so) -> the error must cross from the child as the same class and text.
ERROR_CASES = {
    "no key file": lambda conf, tmp: {**conf, "key_file": str(tmp / "missing.key.json")},
    "key file readable by others": lambda conf, tmp: {**conf, "key_file": _exposed_key(tmp)},
    "no raw folder": lambda conf, tmp: {**conf, "raw_dir": str(tmp / "no-such-raw")},
}


def _exposed_key(tmp: Path) -> str:
    from pipeline.crypto.keys import new_key_file

    path = tmp / "exposed.key.json"
    new_key_file(path)
    path.chmod(0o644)
    return str(path)


@pytest.mark.parametrize("case", ERROR_CASES)
def test_a_pipeline_error_in_the_child_reaches_the_caller_as_the_same_error(case, reference, tmp_path, monkeypatch):
    conf = ERROR_CASES[case](reference.conf(tmp_path / "work"), tmp_path)
    task = "check_inputs" if case == "no raw folder" else "consent_gate"
    from pipeline import tasks

    with pytest.raises(errors.PipelineError) as here:
        tasks.run_key_holder_task(task, conf)
    monkeypatch.setenv(key_holder.KEY_HOLDER_PROCESS, key_holder.CHILD)
    with pytest.raises(errors.PipelineError) as there:
        getattr(tasks, task)(conf)
    assert type(there.value) is type(here.value)
    assert str(there.value) == str(here.value)
    assert "Traceback" not in str(there.value)
    assert getattr(there.value, "violations", None) == getattr(here.value, "violations", None)


ROUND_TRIPS = [
    errors.KeyFileError("key.json: the key file is readable by group or others; run `chmod 600 key.json`"),
    errors.ContractError([errors.Violation("survey.parquet", "eq5d_mobility", "in 1-5", "3 row(s) outside; fix the extract")]),
    errors.PipelineError("plain"),
    type("LocalError", (errors.PipelineError,), {})("a class pipeline.errors does not hold"),
]


@pytest.mark.parametrize("err", ROUND_TRIPS, ids=lambda e: type(e).__name__)
def test_errors_cross_as_json(err):
    back = key_holder.rebuild_error(json.loads(json.dumps(key_holder.describe(err))))
    expected = type(err) if getattr(errors, type(err).__name__, None) is type(err) else errors.PipelineError
    assert type(back) is expected and str(back) == str(err)
    assert getattr(back, "violations", None) == getattr(err, "violations", None)


def test_an_unknown_mode_is_refused(monkeypatch):
    monkeypatch.setenv(key_holder.KEY_HOLDER_PROCESS, "thread")
    with pytest.raises(errors.PipelineError, match="PPRL_KEY_HOLDER_PROCESS: rule 'one of child, in-process' broken"):
        key_holder.mode()


def test_the_embedded_default_always_uses_child_processes(tmp_path):
    base = {"PATH": "/bin", key_holder.KEY_HOLDER_PROCESS: key_holder.IN_PROCESS}
    assert airflow_env(tmp_path, DAGS_FOLDER, base)[key_holder.KEY_HOLDER_PROCESS] == key_holder.CHILD


# --- a key given in the environment reaches the key holder's children sealed, and no other process ----
# The whole run is watched in tests/test_end_to_end.py; here, the seal's parts.


def test_each_seal_holds_its_own_keys_variables_and_nothing_else():
    environ = {"PATH": "/bin", "AIRFLOW_CONN_PPRL_KEY": '{"password": "k"}', "AIRFLOW_VAR_PPRL_KEY": "v",
               "PPRL_KEY_FILE": "/secrets/key.json", "AIRFLOW_CONN_PPRL_PUBLISHING_KEY": "signing",
               "PPRL_PUBLISHING_KEY_FILE": "/secrets/publishing.pem", "PPRL_KEY": ""}  # fmt: skip
    with key_holder.sealed_key_environment(environ) as sealed:
        assert list(sealed) == [key_holder.SEALED_FD_VARIABLE, PUBLISHING_SEALED_FD_VARIABLE]
        fd, publishing_fd = int(sealed[key_holder.SEALED_FD_VARIABLE]), int(sealed[PUBLISHING_SEALED_FD_VARIABLE])
        assert os.readlink(f"/proc/self/fd/{fd}").startswith(f"/memfd:{key_holder.SEALED_NAME}")
        assert os.readlink(f"/proc/self/fd/{publishing_fd}").startswith(f"/memfd:{PUBLISHING_SEALED_NAME}")
        assert not os.get_inheritable(fd) and not os.get_inheritable(publishing_fd)  # only a process given it by name
        # Each key's own variables only: the files' paths stay where they were.
        assert json.loads(os.pread(fd, 1 << 16, 0)) == {"AIRFLOW_CONN_PPRL_KEY": '{"password": "k"}', "AIRFLOW_VAR_PPRL_KEY": "v"}
        assert json.loads(os.pread(publishing_fd, 1 << 16, 0)) == {"AIRFLOW_CONN_PPRL_PUBLISHING_KEY": "signing"}
    for closed in (fd, publishing_fd):
        with pytest.raises(OSError):
            os.fstat(closed)  # closed on leaving
    with key_holder.sealed_key_environment({"PATH": "/bin", "PPRL_KEY_FILE": "/secrets/key.json"}) as sealed:
        assert sealed == {}


def test_the_publishing_key_is_in_the_environment_only_while_it_is_looked_up(monkeypatch):
    with key_holder.sealed_key_environment({"AIRFLOW_VAR_PPRL_PUBLISHING_KEY": "pem text"}) as sealed:
        monkeypatch.setenv(PUBLISHING_SEALED_FD_VARIABLE, sealed[PUBLISHING_SEALED_FD_VARIABLE])
        with unsealed_publishing_key():
            assert os.environ["AIRFLOW_VAR_PPRL_PUBLISHING_KEY"] == "pem text"
        assert "AIRFLOW_VAR_PPRL_PUBLISHING_KEY" not in os.environ
        with unsealed_publishing_key():  # the seal stays open: a retried publish signs too
            assert os.environ["AIRFLOW_VAR_PPRL_PUBLISHING_KEY"] == "pem text"
        with monkeypatch.context() as no_proc:  # no /proc (not Linux): an open descriptor is the seal
            no_proc.setattr(secret_store.os.path, "isdir", lambda path: False)
            with unsealed_publishing_key():
                assert os.environ["AIRFLOW_VAR_PPRL_PUBLISHING_KEY"] == "pem text"
    # A descriptor number that names another file (inherited by a process not given the seal) is no seal.
    with open(os.devnull) as other:
        monkeypatch.setenv(PUBLISHING_SEALED_FD_VARIABLE, str(other.fileno()))
        with unsealed_publishing_key():
            assert "AIRFLOW_VAR_PPRL_PUBLISHING_KEY" not in os.environ


OPEN_SEAL = """
import json, os, sys
from pipeline.orchestration import key_holder
key_holder._open_seal()
fd = int(sys.argv[1])
print(json.dumps({"conn": os.environ.get("AIRFLOW_CONN_PPRL_KEY"), "variable": key_holder.SEALED_FD_VARIABLE in os.environ,
                  "open": os.path.exists(f"/proc/self/fd/{fd}")}))
"""


def test_a_child_given_the_seal_reads_it_into_its_environment_and_closes_it():
    with key_holder.sealed_key_environment({"AIRFLOW_CONN_PPRL_KEY": "secret"}) as sealed:
        fd = int(sealed[key_holder.SEALED_FD_VARIABLE])
        env = {**_child_env(), **sealed}
        done = subprocess.run([sys.executable, "-c", OPEN_SEAL, str(fd)], env=env, cwd=REPO_DIR, pass_fds=(fd,),
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {"conn": "secret", "variable": False, "open": False}


def test_the_embedded_runner_refuses_a_key_in_pprl_key_before_airflow_starts(tmp_path, monkeypatch):
    from pipeline.orchestration.embedded import run_embedded

    monkeypatch.setenv("PPRL_KEY", '{"key": "..."}')
    conf = {"raw_dir": str(tmp_path / "raw"), "work_dir": str(tmp_path / "work"), "release_label": "r1"}
    with pytest.raises(errors.KeyEnvironmentError, match="environment variable PPRL_KEY: "):
        run_embedded(conf, tmp_path / "airflow", lambda _: None)
    assert not (tmp_path / "airflow").exists()
