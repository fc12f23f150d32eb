"""Where Splink runs: DuckDB inside the link_rank_p task's own process (the default), or Spark, on a local
session or a cluster (run setting `link_backend`, `pipeline run --link-backend`).

pipeline.link.probabilistic runs the same steps on either; only this module knows which one it is:

- `open_backend(options, temp_dir)` gives a `SplinkBackend`: Splink's database API and what differs
  between engines. The model (pipeline.link.model) writes its SQL once, in DuckDB's dialect;
  `SplinkBackend.sql` and `.settings` put it into the engine's dialect with sqlglot, and `.model`
  puts the planned SQL back into a trained model, so a saved model reads the same whichever engine
  trained it.
- Spark has no unsigned integers, so the 64-bit codes (pipeline.link.profiles) cross into Spark as
  signed integers with the same bits and come back as they were: equality, all the model asks of
  them, is unchanged.
- `SplinkBackend.pairs` collects scored pairs as (record uid, participant uid, match weight),
  oriented and sorted the same way on both engines.

On a small delivery, where u's random pairs (u_max_pairs) and EM's pairs (em_max_pairs) cover every
pair, both engines train on the same pairs and give the same link map (tests/test_link_spark.py).
Beyond those limits each engine draws its own sample (Splink samples with the engine's own hash
function), so the weights differ by sampling noise, as two seeds would.

Spark is an optional extra (`pip install 'mdt-linkage[spark]'`) and needs a Java runtime (17 or
later). Without a cluster configured the session is local, on every core of the machine; a cluster
is Spark's own configuration (docs/data-engineers.md, "Splink on Spark").
"""

from __future__ import annotations

import atexit
import copy
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import polars as pl
import sqlglot
from sqlglot import exp

from pipeline import io
from pipeline.errors import PipelineError
from pipeline.link.model import ProbabilisticOptions
from pipeline.settings import setting

Backend = Literal["duckdb", "spark"]
BACKENDS: tuple[str, ...] = ("duckdb", "spark")
# The dialect pipeline.link.model writes its comparison levels and blocking rules in.
MODEL_DIALECT = "duckdb"
# A local session's SQL settings. Splink runs hundreds of small queries (an EM iteration is one);
# Spark's defaults are for clusters, where a query's fixed costs are small beside its data. On one
# machine: one shuffle partition instead of 200 empty tasks, no adaptive re-planning (a job per
# stage), and no whole-stage code generation (compiling each new query costs more than it saves).
LOCAL_SQL_SETTINGS: dict[str, str] = {
    "spark.sql.shuffle.partitions": "1",
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.codegen.wholeStage": "false",
}
JAVA_HINT = "install a Java runtime, 17 or later (Debian/Ubuntu: apt-get install default-jre-headless), or set JAVA_HOME"
PYSPARK_HINT = "install the Spark extra: pip install 'mdt-linkage[spark]' (uv sync --extra spark)"


class SparkUnavailableError(PipelineError):
    """The Spark backend was chosen but pyspark or Java is missing on this machine."""


# ---------------------------------------------------------------------------------------------------
# SQL: the model's DuckDB dialect into the engine's.


def _spark_arrays_overlap(node: exp.Expression) -> exp.Expression:
    # sqlglot writes DuckDB's list_has_any as `a && b` for Spark, which Spark does not parse; Spark's
    # own function is arrays_overlap (same result on lists without nulls, which the model's are).
    if isinstance(node, exp.ArrayOverlaps):
        return exp.Anonymous(this="arrays_overlap", expressions=[node.this, node.expression])
    return node


def translate_sql(sql: str, dialect: str) -> str:
    """A condition of the model (DuckDB SQL) in `dialect`'s SQL.

    >>> translate_sql('"postcodes_l" IS NULL OR list_has_any("postcodes_l", "postcodes_r")', "spark")
    '`postcodes_l` IS NULL OR ARRAYS_OVERLAP(`postcodes_l`, `postcodes_r`)'
    """
    if dialect == MODEL_DIALECT or sql == "ELSE":
        return sql
    tree = sqlglot.parse_one(sql, read=MODEL_DIALECT)
    if dialect == "spark":
        tree = tree.transform(_spark_arrays_overlap)
    return tree.sql(dialect=dialect)


def _map_sql(settings: dict[str, Any], change: Callable[[str, str], str]) -> dict[str, Any]:
    """`settings` with every comparison level's and blocking rule's SQL replaced by change(path, sql)."""
    out = copy.deepcopy(settings)
    for i, comparison in enumerate(out.get("comparisons", [])):
        for j, level in enumerate(comparison["comparison_levels"]):
            level["sql_condition"] = change(f"c{i}.{j}", level["sql_condition"])
    for i, rule in enumerate(out.get("blocking_rules_to_generate_predictions", [])):
        rule["blocking_rule"] = change(f"b{i}", rule["blocking_rule"])
        rule.pop("sql_dialect", None)
    return out


# ---------------------------------------------------------------------------------------------------
# Engines.


@dataclass
class SplinkBackend:
    """Splink's database API on one engine, and the few things that differ between engines."""

    name: Backend
    db: Any  # splink DuckDBAPI or SparkAPI
    dialect: str
    _close: Callable[[], None]

    def sql(self, condition: str) -> str:
        """A condition of the model (an EM training rule) in this engine's dialect."""
        return translate_sql(condition, self.dialect)

    def settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Splink settings of the model (DuckDB SQL) in this engine's dialect."""
        if self.dialect == MODEL_DIALECT:
            return settings
        return _map_sql(settings, lambda _, sql: translate_sql(sql, self.dialect))

    def model(self, trained: dict[str, Any], planned: dict[str, Any]) -> dict[str, Any]:
        """A model Splink saved on this engine, with the planned settings' SQL (DuckDB's) back in
        place of the engine's, so the model file is the same whichever engine trained it."""
        if self.dialect == MODEL_DIALECT:
            return trained
        sql: dict[str, str] = {}
        _map_sql(planned, lambda path, s: sql.setdefault(path, s))
        model = _map_sql(trained, lambda path, _: sql[path])
        for rule in model.get("blocking_rules_to_generate_predictions", []):
            rule["sql_dialect"] = MODEL_DIALECT
        return {**model, "sql_dialect": MODEL_DIALECT}

    def register(self, frame: pl.DataFrame, name: str):
        """`frame` as a Splink input table called `name`."""
        if self.name == "spark":
            frame = frame.with_columns(_signed(frame.schema))
        return self.db.register(frame.to_arrow(), dataset_display_name=name)

    def pairs(self, predictions, records: str, sort: bool = True) -> pl.DataFrame:
        """Splink's scored pairs as record_uid, participant_uid, match_weight, sorted by the uids
        (unless `sort` is false: the caller sorts them, with other chunks' pairs).

        Splink puts either input table on the left; every pair is oriented as (record of the table
        registered as `records`, participant). Sorted, because engines return rows in any order and
        pipeline.link.probabilistic.estimate_prior sums over them: a sum in another order differs in
        the last bits, and so would a rerun's manifest."""
        columns = ["source_dataset_l", "uid_l", "uid_r", "match_weight"]
        if self.name == "spark":
            raw = pl.from_arrow(predictions.as_spark_dataframe().select(*columns).toArrow())
            raw = raw.with_columns(pl.col("uid_l", "uid_r").cast(pl.Int64).reinterpret(signed=False))
        else:
            raw = predictions.as_duckdbpyrelation().select(*columns).pl()
        left_is_record = pl.col("source_dataset_l") == records
        out = raw.select(
            pl.when(left_is_record).then("uid_l").otherwise("uid_r").alias("record_uid"),
            pl.when(left_is_record).then("uid_r").otherwise("uid_l").alias("participant_uid"),
            pl.col("match_weight").cast(pl.Float64),
        )
        return out.sort("record_uid", "participant_uid") if sort else out

    def write_pairs(self, predictions, records: str, path: Path) -> Path:
        """Splink's scored pairs as `pairs` gives them (unsorted), written to the Parquet file `path`.

        On DuckDB the engine writes them itself, so they never pass through this process's memory
        as a whole (DuckDB holds them within its memory limit, spilling beyond it); Spark's are
        collected here, one chunk of pairs at a time."""
        if self.name == "spark":
            return io.write_scratch(self.pairs(predictions, records, sort=False), path)
        from duckdb import SQLExpression

        left_is_record = f"source_dataset_l = '{records}'"
        oriented = predictions.as_duckdbpyrelation().select(
            SQLExpression(f"CASE WHEN {left_is_record} THEN uid_l ELSE uid_r END").alias("record_uid"),
            SQLExpression(f"CASE WHEN {left_is_record} THEN uid_r ELSE uid_l END").alias("participant_uid"),
            SQLExpression("CAST(match_weight AS DOUBLE)").alias("match_weight"),
        )
        return io.write_engine_scratch(oriented, path)

    def close(self) -> None:
        self._close()


def _signed(schema: pl.Schema) -> list[pl.Expr]:
    """Unsigned 64-bit columns (and lists of them) as signed ones with the same bits."""
    out = []
    for name, dtype in schema.items():
        if dtype == pl.UInt64:
            out.append(pl.col(name).reinterpret(signed=True))
        elif dtype == pl.List(pl.UInt64):
            out.append(pl.col(name).list.eval(pl.element().reinterpret(signed=True)))
    return out


@contextmanager
def open_backend(options: ProbabilisticOptions, temp_dir: Path) -> Iterator[SplinkBackend]:
    """The engine of `options.backend`, closed (its tables dropped) on leaving the block."""
    backend = _duckdb(options, temp_dir) if options.backend == "duckdb" else _spark()
    try:
        yield backend
    finally:
        backend.close()


def _duckdb(options: ProbabilisticOptions, temp_dir: Path) -> SplinkBackend:
    import duckdb
    from splink import DuckDBAPI

    con = duckdb.connect()
    temp_dir.mkdir(parents=True, exist_ok=True)
    con.execute(f"SET memory_limit='{options.duckdb_memory_limit}'")
    con.execute("SET temp_directory='" + str(temp_dir).replace("'", "''") + "'")
    con.execute("SET preserve_insertion_order=false")
    return SplinkBackend("duckdb", DuckDBAPI(con), "duckdb", con.close)


def _spark() -> SplinkBackend:
    from splink.backends.spark import SparkAPI

    spark = spark_session()
    # Splink's intermediate tables are cached (memory, then the executors' local disks), which needs
    # no storage shared with the executors, unlike its default of Parquet in a checkpoint folder.
    db = SparkAPI(spark_session=spark, break_lineage_method="persist")
    views = {table.name for table in spark.catalog.listTables()}

    def close() -> None:
        spark.catalog.clearCache()
        for table in spark.catalog.listTables():
            if table.isTemporary and table.name not in views:
                spark.catalog.dropTempView(table.name)

    return SplinkBackend("spark", db, "spark", close)


def check_spark_available() -> None:
    """Raise SparkUnavailableError, saying what to install, if pyspark or Java is missing."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise SparkUnavailableError(f"{setting('link_backend')} is 'spark' but pyspark is not installed: {PYSPARK_HINT}") from None
    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home, "bin", "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        where = f"JAVA_HOME ({java_home}) has no bin/java" if java_home else "no `java` on the PATH"
        raise SparkUnavailableError(f"{setting('link_backend')} is 'spark' but {where}: {JAVA_HINT}")


@cache
def spark_session():
    """The process's Spark session, started on first use with Splink's similarity functions.

    Its master and resources come from Spark's own configuration (spark-defaults.conf in
    SPARK_CONF_DIR, or PYSPARK_SUBMIT_ARGS); with none, a local session on every core. A local
    session gets LOCAL_SQL_SETTINGS; a cluster keeps its own."""
    check_spark_available()
    # py4j logs every connection it opens and closes at INFO; the last of them comes from a finaliser
    # at interpreter exit, after logging's streams are closed, and prints a "Logging error" traceback.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    from pyspark.sql import SparkSession
    from splink.backends.spark import similarity_jar_location

    spark = (
        SparkSession.builder.appName("pprl-link")
        .config("spark.jars", similarity_jar_location())
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    if spark.sparkContext.master.startswith("local"):
        for name, value in LOCAL_SQL_SETTINGS.items():
            spark.conf.set(name, value)
        spark.sparkContext.setLogLevel("ERROR")
    atexit.register(spark.stop)
    return spark
