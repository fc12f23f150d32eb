"""The link stage's plan (pipeline/link/plan.py): what a run will read, write and run with, decided
from its settings and the zone layout before any file is read, so it is checked here without data."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.link.model import ProbabilisticOptions
from pipeline.link.plan import DETERMINISTIC_COLUMNS, NHS_RANKS, plan_link
from pipeline.settings import SOURCES, RunConfig
from pipeline.zones import ZONE_FILES

CONF = {"raw_dir": "/d/raw", "work_dir": "/d/work", "release_label": "r1"}


def test_the_plan_reads_the_token_side_only_and_writes_the_linked_zone() -> None:
    cfg = RunConfig.from_conf(CONF)
    plan = plan_link(cfg)
    token_files = plan.token_files()
    assert set(token_files) == {"persons", *SOURCES, *(f"{s} records" for s in SOURCES)}
    assert token_files["persons"] == ZONE_FILES["persons"].path(cfg)
    # The study IDs' file is not a token file; the stage reads only its covariates.
    assert ZONE_FILES["study_persons"].path(cfg) not in token_files.values()
    assert all(p.is_relative_to(cfg.pseudonymised_dir) for p in token_files.values())
    written = [plan.link_map, plan.quality, plan.summary, plan.work, *plan.models.values()]
    assert all(p.is_relative_to(cfg.linked_dir) for p in written)


def test_the_link_map_is_written_in_source_name_order_and_ranks_run_in_settings_order() -> None:
    plan = plan_link(RunConfig.from_conf(CONF))
    assert plan.sources == SOURCES
    assert plan.link_map_order == tuple(sorted(SOURCES))


def test_the_plan_takes_the_options_and_defaults_to_todays() -> None:
    cfg = RunConfig.from_conf(CONF)
    assert plan_link(cfg).options == ProbabilisticOptions()
    chosen = ProbabilisticOptions(threshold_match_probability=0.95)
    assert plan_link(cfg, chosen).options is chosen
    plan = plan_link(cfg)
    assert plan.address_ranks == NHS_RANKS and plan.wanted_columns[: len(DETERMINISTIC_COLUMNS)] == DETERMINISTIC_COLUMNS
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.link_map = cfg.work  # type: ignore[misc]
