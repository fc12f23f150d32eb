"""Path settings are confined to the deployment's data roots (`PPRL_DATA_ROOTS`).

Anyone who may trigger a DAG sets its Params; without confinement `raw_dir`, `work_dir`, `key_file`,
`publishing_key_file` or `unit_costs` could point the worker at any file it can read or write.
Every case is resolved the way a run resolves it (`RunConfig.from_conf`): symbolic links and `..`
followed first, then checked.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.errors import PathOutsideRootsError
from pipeline.settings import DATA_ROOTS_VARIABLE, DEFAULT_UNIT_COSTS, RunConfig, data_roots


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """data/ and secrets/ are the roots; elsewhere/ is not. data/escape links out, data/inner links in."""
    for folder in ("data/raw", "data/work", "secrets", "elsewhere"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "secrets" / "key.json").write_text("{}")
    (tmp_path / "elsewhere" / "key.json").write_text("{}")
    (tmp_path / "data" / "escape").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "inner").symlink_to(tmp_path / "data" / "raw")
    (tmp_path / "data-other").mkdir()  # a sibling whose name starts like a root's
    return tmp_path


# (setting, value relative to the tree, allowed?)
CASES = [
    ("raw_dir", "data/raw", True),
    ("work_dir", "data/work", True),
    ("work_dir", "data", True),  # a root itself
    ("key_file", "secrets/key.json", True),
    ("publishing_key_file", "secrets/key.json", True),
    ("unit_costs", "data/work/costs.csv", True),
    ("raw_dir", "elsewhere/inner", True),  # a link from outside that lands inside
    ("raw_dir", "elsewhere", False),
    ("work_dir", "data/../elsewhere", False),  # `..` escape
    ("work_dir", "data/raw/../../elsewhere", False),
    ("raw_dir", "data/escape", False),  # a symbolic link inside a root to a folder outside
    ("key_file", "data/escape/key.json", False),
    ("key_file", "elsewhere/key.json", False),
    ("publishing_key_file", "data/../elsewhere/key.json", False),
    ("unit_costs", "elsewhere/costs.csv", False),
    ("work_dir", "data-other", False),  # a prefix of the name is not a folder inside
]


def _conf(tree: Path, **overrides: str) -> dict:
    conf = {"raw_dir": str(tree / "data/raw"), "work_dir": str(tree / "data/work"), "release_label": "r1"}
    return {**conf, **{name: str(tree / value) for name, value in overrides.items()}}


@pytest.mark.parametrize(("setting", "value", "allowed"), CASES, ids=[f"{s}={v}" for s, v, _ in CASES])
def test_path_settings_must_resolve_inside_a_root(tree, monkeypatch, setting, value, allowed):
    roots = os.pathsep.join([str(tree / "data"), str(tree / "secrets")])
    monkeypatch.setenv(DATA_ROOTS_VARIABLE, roots)
    conf = _conf(tree, **{setting: value})
    if allowed:
        assert RunConfig.from_conf(conf).to_conf()[setting] == str((tree / value).resolve())
        return
    with pytest.raises(PathOutsideRootsError) as refused:
        RunConfig.from_conf(conf)
    message = str(refused.value)
    assert message.startswith(f"run setting {setting} (")
    assert "rule 'inside the data roots' broken" in message
    assert DATA_ROOTS_VARIABLE in message and str(tree / "data") in message and str(tree / "secrets") in message


def test_without_roots_any_path_is_allowed(tree, monkeypatch):
    monkeypatch.delenv(DATA_ROOTS_VARIABLE, raising=False)
    assert RunConfig.from_conf(_conf(tree, work_dir="elsewhere")).work_dir == str(tree / "elsewhere")


def test_the_bundled_unit_cost_table_is_allowed_outside_the_roots(tree, monkeypatch):
    monkeypatch.setenv(DATA_ROOTS_VARIABLE, str(tree / "data"))
    assert RunConfig.from_conf(_conf(tree)).unit_costs == str(DEFAULT_UNIT_COSTS.resolve())


def test_roots_are_read_colon_separated_and_resolved(tree):
    assert data_roots({DATA_ROOTS_VARIABLE: f"{tree}/data/escape::{tree}/secrets"}) == ((tree / "elsewhere").resolve(), tree / "secrets")
    assert data_roots({}) == ()


def test_a_dag_run_with_a_path_outside_the_roots_is_refused_by_the_task(tree, monkeypatch):
    """The Params reach the tasks through resolve_conf, which builds the RunConfig: refused there."""
    from pipeline.orchestration.conf import resolve_conf

    monkeypatch.setenv(DATA_ROOTS_VARIABLE, str(tree / "data"))
    params = _conf(tree, key_file="elsewhere/key.json")
    with pytest.raises(PathOutsideRootsError, match="run setting key_file"):
        resolve_conf({"params": params, "dag_run": None})
