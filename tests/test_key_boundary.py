"""The key boundary as structure: code that links, matches, validates or publishes never loads the key.

DESIGN.md: "Code that links, matches or publishes never loads the key and never reads raw/: an import
test enforces it". Each stage module is imported in a fresh interpreter (a module imported once by an
earlier test would hide the import chain), and the test lists which key-holding modules came with it.
"""

from __future__ import annotations

import ast
import base64
import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.crypto import keys
from pipeline.errors import KeyEnvironmentError, KeyFileError

REPO_DIR = Path(__file__).resolve().parents[1]

# What a link, cohort, validation or publish process imports. pipeline.tasks is imported by every
# DAG file, so by every Airflow worker, the key holder's or not.
NO_KEY_MODULES: tuple[str, ...] = (
    "pipeline.link",
    "pipeline.link.stage",
    "pipeline.cohort",
    "pipeline.cohort.stage",
    "pipeline.costs",
    "pipeline.publish",
    "pipeline.publish.release",
    "pipeline.publish.audit",
    "pipeline.publish.report",
    "pipeline.validate",
    "pipeline.validate.runner",
    "pipeline.tasks",
)
# Modules that hold, load or use the linkage key. The pseudonymise package is the key holder's stage.
KEY_MODULES: frozenset[str] = frozenset(
    {
        "pipeline.crypto.keys",
        "pipeline.crypto.tokens",
        "pipeline.crypto.hmac_pool",
        "pipeline.crypto.hmac_batch",
        "pipeline.crypto.cli_keys",
    }
)


def _is_key_module(name: str) -> bool:
    # Not a prefix test: only the pseudonymise package itself and its modules hold the key.
    return name in KEY_MODULES or name == "pipeline.pseudonymise" or name.startswith("pipeline.pseudonymise.")


def _modules_after_importing(module: str) -> list[str]:
    code = f"import importlib, json, sys; importlib.import_module({module!r}); print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_DIR, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@functools.cache
def _key_importers() -> frozenset[str]:
    """Modules of the package that import a key module at top level (so load it on import)."""
    found = set()
    for path in (REPO_DIR / "pipeline").rglob("*.py"):
        module = ".".join(path.relative_to(REPO_DIR).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.parse(path.read_text()).body:
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(_is_key_module(n) for n in names):
                found.add(module)
    return frozenset(found)


@pytest.mark.parametrize("module", NO_KEY_MODULES)
def test_a_stage_that_needs_no_key_imports_no_key_module(module):
    loaded = _modules_after_importing(module)
    assert module in loaded
    # A module that imports a key module at top level is a key-loading module too.
    importers = _key_importers()
    forbidden = sorted(n for n in loaded if _is_key_module(n) or n in importers)
    assert forbidden == [], f"importing {module} loads key-holding modules {forbidden}; import them lazily in the key holder's code"


def test_the_key_importers_scan_finds_the_key_holders():
    """The scan above can fail: the pseudonymise stage imports the key at top level."""
    importers = _key_importers()
    assert {"pipeline.pseudonymise.consent", "pipeline.pseudonymise.records", "pipeline.pseudonymise.identifiers"} <= importers
    assert not importers & set(NO_KEY_MODULES)


RAW_ATTRIBUTES = {"raw", "raw_dir", "quarantine_dir", "key_file"}


@pytest.mark.parametrize("package", ["link", "cohort", "publish"])
def test_linking_matching_and_publishing_code_never_reads_raw_or_the_key_file(package):
    """DESIGN.md: code that links, matches or publishes never reads raw/ (the import test above
    covers the key; a path into raw/ is not an import, so its attribute is looked for instead)."""
    for path in sorted((REPO_DIR / "pipeline" / package).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                assert node.attr not in RAW_ATTRIBUTES, f"{package}/{path.name}:{node.lineno} reads {node.attr}"


# --- where the key may come from ----------------------------------------------------------------------

FIXED_KEY = b"pprl-v1 published TEST key #056."


def test_a_key_in_the_environment_is_refused_with_the_reason_and_what_to_do(tmp_path, monkeypatch):
    """An environment variable is inherited by every child process and readable in /proc/<pid>/environ;
    it cannot be held to the 0600 rule a key file is."""
    key_file = tmp_path / "key.json"
    keys.new_key_file(key_file, random_bytes=FIXED_KEY)
    monkeypatch.setenv("PPRL_KEY", json.dumps({"key": base64.b64encode(FIXED_KEY).decode()}))
    for given in (None, key_file):
        with pytest.raises(KeyEnvironmentError) as refused:
            keys.load_key(given)
        message = str(refused.value)
        assert message.startswith("environment variable PPRL_KEY: ")
        assert "PPRL_KEY_FILE" in message and "--key" in message and "Airflow connection pprl_key" in message
        assert "unset PPRL_KEY" in message
        assert base64.b64encode(FIXED_KEY).decode() not in message
        assert isinstance(refused.value, KeyFileError)
    monkeypatch.delenv("PPRL_KEY")
    assert keys.load_key(key_file).kid == keys.key_id(FIXED_KEY)


def test_keys_which_reports_the_refusal(monkeypatch, capsys):
    import argparse

    from pipeline.crypto.cli_keys import add_keys_parser

    parser = argparse.ArgumentParser()
    add_keys_parser(parser.add_subparsers(dest="command"))
    monkeypatch.setenv("PPRL_KEY", json.dumps({"key": base64.b64encode(FIXED_KEY).decode()}))
    args = parser.parse_args(["keys", "which"])
    with pytest.raises(KeyEnvironmentError):
        args.func(args)


# --- the key's environment variables are named once -------------------------------------------------


def test_the_key_variables_are_named_once_where_no_key_is_held():
    """pipeline.secret_store names them (validation and the embedded runner must not import the keys
    module); they are the keys module's own names, and every process starter uses that one tuple."""
    from pipeline import secret_store
    from pipeline.crypto import hmac_pool
    from pipeline.validate import workers

    assert keys.KEY_ENVIRONMENT == (keys.KEY_VARIABLE, keys.KEY_FILE_VARIABLE, f"AIRFLOW_CONN_{keys.AIRFLOW_CONN_ID.upper()}",
                                    f"AIRFLOW_VAR_{keys.AIRFLOW_VARIABLE.upper()}")  # fmt: skip
    assert keys.KEY_ENVIRONMENT == ("PPRL_KEY", "PPRL_KEY_FILE", "AIRFLOW_CONN_PPRL_KEY", "AIRFLOW_VAR_PPRL_KEY")
    assert hmac_pool.KEY_ENVIRONMENT is workers.KEY_ENVIRONMENT is keys.KEY_ENVIRONMENT is secret_store.KEY_ENVIRONMENT
    # Those that hold the key itself, sealed for the key holder's children: all but the file's path.
    assert secret_store.KEY_IN_ENVIRONMENT == ("PPRL_KEY", "AIRFLOW_CONN_PPRL_KEY", "AIRFLOW_VAR_PPRL_KEY")


def test_no_other_module_spells_out_the_key_variables():
    spelled = re.compile(r"""["'](PPRL_KEY|PPRL_KEY_FILE|AIRFLOW_CONN_PPRL_KEY|AIRFLOW_VAR_PPRL_KEY)["']""")
    allowed = {Path("pipeline/crypto/keys.py"), Path("pipeline/secret_store.py")}
    offenders = [
        f"{path.relative_to(REPO_DIR)}:{n}"
        for path in sorted((REPO_DIR / "pipeline").rglob("*.py"))
        if path.relative_to(REPO_DIR) not in allowed
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if spelled.search(line)
    ]
    assert offenders == []
