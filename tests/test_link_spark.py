"""Splink on Spark links as Splink on DuckDB does (issue 19): the link stage, run from the reference
run's work folder as it was before linking, gives the same link map, quality report and models with
`link_backend: spark` on a local Spark session as with DuckDB.

Both runs link one source, gp_events (the largest, with rank P links): Spark's cost on a small
delivery is a fixed cost per query (an EM iteration is one), so each source adds about as much as
the first, and one is enough to compare the engines. At 300 people u's random pairs and EM's pairs
cover every pair, so both engines train on the same pairs (pipeline.link.backends says why larger
runs differ by sampling noise). Floating-point sums in another order may differ in the last bits,
so weights and probabilities are compared to 1e-9, everything else exactly.

Without pyspark or Java the test is skipped, saying what to install; under CI=true it fails instead
(`make test` installs Java in its system step and pyspark with the dev group).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipeline import io
from pipeline.link.backends import SparkUnavailableError, check_spark_available, translate_sql
from pipeline.link.plan import LinkPlan, plan_link
from pipeline.link.stage import execute_link
from pipeline.settings import RunConfig

FLOAT_TOLERANCE = 1e-9
SOURCE = "gp_events"


def _spark_or_skip() -> None:
    try:
        check_spark_available()
    except SparkUnavailableError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the Spark backend cannot run: {e}")
        pytest.skip(str(e))


def _assert_models_agree(duckdb: object, spark: object, path: str = "model") -> None:
    """The same JSON structure, strings and integers equal, floats equal to FLOAT_TOLERANCE."""
    assert type(duckdb) is type(spark), path
    if isinstance(duckdb, dict):
        assert duckdb.keys() == spark.keys(), path
        for k in duckdb:
            _assert_models_agree(duckdb[k], spark[k], f"{path}.{k}")
    elif isinstance(duckdb, list):
        assert len(duckdb) == len(spark), path
        for i, (a, b) in enumerate(zip(duckdb, spark, strict=True)):
            _assert_models_agree(a, b, f"{path}[{i}]")
    elif isinstance(duckdb, float):
        assert math.isclose(duckdb, spark, rel_tol=FLOAT_TOLERANCE, abs_tol=1e-15), path
    else:
        assert duckdb == spark, path


def _link(reference, work, backend: str) -> LinkPlan:
    """The link stage of SOURCE, on `backend`, from the reference run's work folder before linking."""
    shutil.copytree(reference.snapshots["link"], work, symlinks=True)
    conf = reference.cfg.to_conf()
    cfg = RunConfig.from_conf({**conf, "work_dir": str(work), "linkage": {**conf["linkage"], "backend": backend}})
    plan = dataclasses.replace(plan_link(cfg), sources=(SOURCE,))
    execute_link(plan)
    return plan


def test_spark_backend_gives_the_duckdb_link_map(reference, tmp_path, monkeypatch):
    _spark_or_skip()
    # A small local session, through Spark's own configuration (as a cluster's would come): two
    # cores, and the JIT's quick tier only, which a JVM this short-lived gains from.
    monkeypatch.setenv(
        "PYSPARK_SUBMIT_ARGS",
        os.environ.get("PYSPARK_SUBMIT_ARGS", '--master local[2] --driver-java-options "-XX:TieredStopAtLevel=1" pyspark-shell'),
    )
    duckdb = _link(reference, tmp_path / "duckdb", "duckdb")
    t = time.perf_counter()
    spark = _link(reference, tmp_path / "spark", "spark")
    print(f"link stage of {SOURCE} on Spark, session start included: {time.perf_counter() - t:.1f}s")

    duckdb_map, spark_map = pl.read_parquet(duckdb.link_map), pl.read_parquet(spark.link_map)
    assert spark_map.filter(pl.col("rank") == "P").height > 0, "the probabilistic step linked nothing: nothing compared"
    assert_frame_equal(spark_map, duckdb_map, check_exact=False, rel_tol=FLOAT_TOLERANCE, abs_tol=1e-12)
    assert_frame_equal(pl.read_parquet(spark.quality), pl.read_parquet(duckdb.quality))

    duckdb_model, spark_model = io.read_json(duckdb.models[SOURCE]), io.read_json(spark.models[SOURCE])
    _assert_models_agree(duckdb_model, spark_model, SOURCE)
    duckdb_summary, spark_summary = io.read_json(duckdb.summary), io.read_json(spark.summary)
    assert spark_summary["probabilistic"]["options"]["backend"] == "spark"
    assert spark_summary["sources"] == duckdb_summary["sources"]
    assert spark_summary["sources"][SOURCE]["linked_by_rank"]["P"] > 0


def test_model_sql_reads_the_same_in_spark():
    """The model's DuckDB conditions, as Spark must read them: quoted names are columns (in Spark a
    double-quoted name would be a string), and list overlap is Spark's arrays_overlap."""
    assert translate_sql('"forename_l" = "forename_r"', "spark") == "`forename_l` = `forename_r`"
    assert translate_sql('list_has_any("postcodes_l", "postcodes_r")', "spark") == "ARRAYS_OVERLAP(`postcodes_l`, `postcodes_r`)"
    rule = "l.dob = r.dob AND (l.nhs IS NULL OR r.nhs IS NULL OR l.nhs = r.nhs)"
    assert translate_sql(rule, "spark") == rule
    assert translate_sql("ELSE", "spark") == "ELSE"
    assert translate_sql('"forename_l" = "forename_r"', "duckdb") == '"forename_l" = "forename_r"'


def test_spark_without_java_is_a_named_error(monkeypatch, tmp_path):
    """Choosing Spark on a machine without Java stops with what to install, in the user's words."""
    pytest.importorskip("pyspark")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-java"))
    with pytest.raises(SparkUnavailableError, match=r"--link-backend \(Airflow Param link_backend\) is 'spark'.*default-jre-headless"):
        check_spark_available()
