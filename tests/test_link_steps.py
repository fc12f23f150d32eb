"""The link stage as the link DAG runs it (issue 19): steps that are tasks of their own, the
per-source ones mapped, so Celery workers may take the sources in any order, side by side.

Run from the reference run's work folder as it was before linking, the steps in another order than
pipeline.tasks.link's (sources reversed, two sources' rank P at once in two processes, a source's
rank P rerun as a cleared task would be) give
the reference run's link map and quality report byte for byte. A step that finds no started work
folder says which task to rerun from instead of linking from files of another run.
"""

from __future__ import annotations

import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipeline import io
from pipeline.errors import PipelineError
from pipeline.link.plan import plan_link
from pipeline.link.profiles import PROFILE_KEY
from pipeline.link.stage import STATE, link_rank_p, link_ranks, model_participants, prepare_link, write_link_map
from pipeline.settings import RunConfig


def _plan(reference, work):
    shutil.copytree(reference.snapshots["link"], work, symlinks=True)
    return plan_link(RunConfig.from_conf({**reference.cfg.to_conf(), "work_dir": str(work)}))


def test_steps_in_any_source_order_give_the_same_link_map(reference, tmp_path):
    plan = _plan(reference, tmp_path / "work")
    linked = RunConfig.from_conf({**reference.cfg.to_conf(), "work_dir": str(reference.snapshots["validate_linked"])})
    expected = plan_link(linked)

    prepare_link(plan)
    for source in reversed(plan.sources):
        link_ranks(plan, source)
    model_participants(plan)
    # Two sources' rank P at a time, in processes of their own, as two Celery workers run them.
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(link_rank_p, [plan] * len(plan.sources), reversed(plan.sources)))
    # A mapped task cleared and run again rewrites its own result, and the same one (its rows in any
    # order: the link map takes each profile's result by a lookup).
    first = pl.read_parquet(link_rank_p(plan, plan.sources[0])).sort(PROFILE_KEY)
    assert_frame_equal(pl.read_parquet(link_rank_p(plan, plan.sources[0])).sort(PROFILE_KEY), first)
    write_link_map(plan)

    assert io.sha256_file(plan.link_map) == io.sha256_file(expected.link_map)
    assert io.sha256_file(plan.quality) == io.sha256_file(expected.quality)
    summary, reference_summary = io.read_json(plan.summary), io.read_json(expected.summary)
    assert summary["sources"] == reference_summary["sources"] and summary["quality"] == reference_summary["quality"]
    assert not plan.work.exists()  # the scratch folder is removed with the last step


@pytest.mark.parametrize("step", ["link_ranks", "model_participants", "link_rank_p", "write_link_map"])
def test_a_step_without_a_started_work_folder_says_where_to_rerun_from(reference, tmp_path, step):
    plan = _plan(reference, tmp_path / "work")
    run = {"link_ranks": lambda: link_ranks(plan, plan.sources[0]), "model_participants": lambda: model_participants(plan),
           "link_rank_p": lambda: link_rank_p(plan, plan.sources[0]), "write_link_map": lambda: write_link_map(plan)}  # fmt: skip
    with pytest.raises(PipelineError, match=f"{STATE} is missing.*rerun the link from prepare_link"):
        run[step]()
    assert not plan.link_map.exists()


def test_blocks_with_the_same_key_tokens_but_another_token_different_are_refused():
    """A profile is the blocks that share the key tokens; every token made from them must agree. Two
    blocks that do not (a file made under another token spec, or a profile key clash) are refused, and
    blocks that do are one profile, whichever of them stands for it."""
    from pipeline.link.profiles import build_profiles
    from pipeline.zones import TOKEN_BLOCK

    blocks = pl.DataFrame({TOKEN_BLOCK: [0, 1, 2], "tok_nhs": ["a", "a", "b"], "tok_dob": ["d", "d", "e"],
                           "tok_surname_near": [["x", "y"], ["x", "y"], None]})  # fmt: skip
    records = pl.DataFrame({TOKEN_BLOCK: [0, 1, 1, 2]})
    columns = ["tok_nhs", "tok_dob", "tok_surname_near"]
    profiles, by_block = build_profiles(records.lazy(), blocks.lazy(), columns, ["tok_nhs"], where="t.parquet")
    assert profiles.height == 2 and profiles.get_column(PROFILE_KEY).is_sorted()
    assert by_block.get_column(PROFILE_KEY).to_list()[0] == by_block.get_column(PROFILE_KEY).to_list()[1]
    for changed in ({"tok_dob": ["d", "other", "e"]}, {"tok_surname_near": [["x", "y"], ["x"], None]}):
        with pytest.raises(PipelineError, match=r"t\.parquet: records with the same key tokens \(tok_nhs\) differ in a token"):
            build_profiles(records.lazy(), blocks.with_columns(**{k: pl.Series(v) for k, v in changed.items()}).lazy(), columns, ["tok_nhs"], where="t.parquet")
