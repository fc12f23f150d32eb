"""End to end: synthetic extracts (clean profile) through the three real DAGs on the embedded default,
then the release checked against the generator's ground truth."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import threading
import time
from pathlib import Path

import polars as pl
import psutil
import pytest
from conftest import RETAIN, tokenised_truth

from pipeline import io
from pipeline.cohort.service_use import service_use
from pipeline.contracts import check_file, load_contract
from pipeline.crypto.keys import AIRFLOW_CONN_ID, KEY_ENVIRONMENT, new_key_file
from pipeline.publish.signing import AIRFLOW_CONN_ID as PUBLISHING_CONN_ID
from pipeline.publish.signing import new_publishing_key_file
from pipeline.crypto.tokens import study_ids
from pipeline.cohort.outputs import RELEASE_TABLES
from pipeline.orchestration.key_holder import SEALED_NAME
from pipeline.publish import disclosure
from pipeline.publish.privacy import check_release_privacy
from pipeline.costs import scan_unit_costs
from pipeline.secret_store import PUBLISHING_KEY_IN_ENVIRONMENT, PUBLISHING_SEALED_NAME
from pipeline.settings import SOURCES, RunConfig
from pipeline.zones import study_persons_file

pytestmark = pytest.mark.e2e
LABEL = "e2e-clean"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from pipeline.orchestration.embedded import run_embedded
    from pipeline.synth import generate

    base = tmp_path_factory.mktemp("e2e")
    generate(base / "input", persons=1500, seed=11, profile="clean")
    key = new_key_file(base / "secrets" / "key.json")
    publishing = new_publishing_key_file(base / "secrets" / "publishing.pem")
    # Both keys come from the secret store, as a platform injects them (Airflow connections in the
    # environment), not from files: the run must keep each out of every process that does not need it.
    cfg = RunConfig.from_conf(
        {"raw_dir": str(base / "input" / "raw"), "work_dir": str(base / "work"), "release_label": LABEL, **RETAIN}
    )  # fmt: skip
    connection = {"conn_type": "generic", "password": (base / "secrets" / "key.json").read_text()}
    publishing_pem = (base / "secrets" / "publishing.pem").read_text()
    publishing_connection = {"conn_type": "generic", "password": publishing_pem}
    lines: list[str] = []
    watch = KeyWatch(base64.b64encode(key.key), publishing_pem.splitlines()[1].encode())
    with pytest.MonkeyPatch.context() as env, watch:
        for name in (*KEY_ENVIRONMENT, *PUBLISHING_KEY_IN_ENVIRONMENT, "PPRL_PUBLISHING_KEY_FILE"):
            env.delenv(name, raising=False)
        env.setenv(f"AIRFLOW_CONN_{AIRFLOW_CONN_ID.upper()}", json.dumps(connection))
        env.setenv(f"AIRFLOW_CONN_{PUBLISHING_CONN_ID.upper()}", json.dumps(publishing_connection))
        result = run_embedded(cfg.to_conf(), base / "airflow", progress=lines.append)
    return {"cfg": cfg, "key": key, "truth": base / "input" / "truth", "raw": base / "input" / "raw", "result": result,
            "progress": lines, "base": base, "watch": watch, "publishing": publishing}  # fmt: skip


class KeyWatch(threading.Thread):
    """Looks at every process under this one, every 20 ms while a run goes, for the linkage key and
    the publishing key.

    Look by look, for each process: its role (the embedded Airflow process, a key holder's child, or
    another: validation and token workers, DuckDB, Java), taken afresh each time, because a child
    between fork and exec still shows its parent's command line and descriptors; and whether it held
    the key holder's sealed environment open (a file descriptor whose link names the memfd
    `pprl-key-holder`) or the publishing key's (`pprl-publishing-key`). Once per command line: whether
    its environment (/proc/<pid>/environ, which any process of the same user can read) names one of a
    key's variables or holds a key's text. `direct` marks the process this one started (the Airflow
    process of `run_embedded`).
    """

    def __init__(self, key_text: bytes, publishing_text: bytes, interval: float = 0.02):
        super().__init__(name="key watch", daemon=True)
        self.key_text, self.publishing_text, self.interval = key_text, publishing_text, interval
        self.stopping = threading.Event()
        self.seen: dict[int, dict] = {}

    def __enter__(self) -> KeyWatch:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.join(timeout=10)

    def run(self) -> None:
        me = psutil.Process()
        while not self.stopping.wait(self.interval):
            try:
                direct = {child.pid for child in me.children()}
                children = me.children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                self._look(child.pid, child.pid in direct)

    def _look(self, pid: int, direct: bool) -> None:
        proc = Path(f"/proc/{pid}")
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            seen = self.seen.setdefault(pid, {"direct": direct, "commands": [], "variables": [], "key_in_environment": False,
                                              "publishing_variables": [], "publishing_key_in_environment": False, "looks": []})  # fmt: skip
            if command not in seen["commands"]:
                environ = b"\0" + (proc / "environ").read_bytes()
                seen["commands"].append(command)
                seen["variables"] += [n for n in KEY_ENVIRONMENT if f"\0{n}=".encode() in environ]
                seen["key_in_environment"] |= self.key_text in environ
                seen["publishing_variables"] += [n for n in PUBLISHING_KEY_IN_ENVIRONMENT if f"\0{n}=".encode() in environ]
                seen["publishing_key_in_environment"] |= self.publishing_text in environ
            links = []
            for fd in os.listdir(proc / "fd"):
                try:
                    links.append(os.readlink(proc / "fd" / fd))
                except OSError:
                    continue
        except OSError:
            return  # it ended while being looked at
        seen["role"] = self._role(command)
        seen["looks"].append({"at": time.time(), "role": seen["role"], "sealed": any(SEALED_NAME in link for link in links),
                              "publishing_sealed": any(PUBLISHING_SEALED_NAME in link for link in links)})  # fmt: skip

    @staticmethod
    def _role(command: str) -> str:
        if "pipeline.orchestration.embedded_child" in command:
            return "airflow"
        if "pipeline.orchestration.key_holder" in command:
            return "key holder"
        return "other"


def kept_participants(run) -> pl.DataFrame:
    """Consented and never withdrawn, from the raw register (the test may read raw/). The run is made
    today (no run_date), after every synthetic withdrawal was received, so every withdrawal counts,
    including those dated after the extract date."""
    reg = pl.read_parquet(run["raw"] / "consent_register.parquet")
    assert reg.get_column("withdrawal_date").drop_nulls().max() < dt.date.today()
    return reg.filter((pl.col("consent_status") == "consented") & pl.col("withdrawal_date").is_null())


def test_the_release_is_published_with_every_file_following_its_contract(run):
    release = run["cfg"].release_dir
    assert release.is_dir() and not run["cfg"].staging_dir.exists()
    for table in RELEASE_TABLES:
        check_file(release / f"{table}.parquet", load_contract(table))
    manifest = io.read_json(release / "manifest.json")
    assert manifest["kid"] == run["key"].kid
    for name, entry in manifest["files"].items():
        assert io.sha256_file(release / name) == entry["sha256"]
    assert (release / "data_dictionary.md").read_text().count("| `") >= sum(len(load_contract(t).columns) for t in RELEASE_TABLES)


def test_the_linkage_key_reaches_the_key_holders_children_and_no_other_process(run):
    """The attack: a key given in the secret store's environment form (AIRFLOW_CONN_PPRL_KEY) used to be
    inherited by the embedded Airflow process, which also links and publishes, and by every process it
    starts (validation workers, DuckDB, Spark's JVM); any process of the same user could read it in
    /proc/<pid>/environ. The runner now starts Airflow without it and hands it, sealed, to the key
    holder's children only; the Airflow process passes the seal on unread and closes it once the last
    DAG with a key holder's task has run."""
    seen = [p for p in run["watch"].seen.values() if p["looks"]]
    airflow = [p for p in seen if p["direct"] and p["role"] == "airflow"]
    assert len(airflow) == 1 and [p["role"] for p in seen].count("key holder") >= 2, [p["commands"] for p in seen]  # the watch saw them
    for process in seen:
        assert process["variables"] == [] and not process["key_in_environment"], process["commands"]
    # Only the Airflow process (or a child of it not yet past exec, which is still its program) and the
    # key holder's children held the seal.
    held_by = {look["role"] for p in seen for look in p["looks"] if look["sealed"]}
    assert held_by <= {"airflow", "key holder"}, held_by
    # The Airflow process held the seal while the key holder's DAG ran, and let go of it before the DAGs
    # that link and publish began (by the task times Airflow recorded).
    held = [look["at"] for look in airflow[0]["looks"] if look["sealed"]]
    spans = {dag_id: (min(dt.datetime.fromisoformat(t["started"]).timestamp() for t in dag["tasks"]),
                      max(dt.datetime.fromisoformat(t["ended"]).timestamp() for t in dag["tasks"]))
             for dag_id, dag in run["result"]["dags"].items()}  # fmt: skip
    keyholders_dag, *later = list(spans)
    assert any(spans[keyholders_dag][0] <= when <= spans[keyholders_dag][1] for when in held)
    assert later and not [when for when in held for dag_id in later if spans[dag_id][0] <= when <= spans[dag_id][1]]
    # And the key holder's tasks did get it: no key file is named anywhere, and the tokens are under it.
    assert io.read_json(run["cfg"].release_dir / "manifest.json")["kid"] == run["key"].kid


def test_the_publishing_key_reaches_no_process_but_the_one_that_signs(run):
    """The attack: a publishing key given in the secret store's environment form
    (AIRFLOW_CONN_PPRL_PUBLISHING_KEY) was kept in the embedded Airflow process's environment, so every
    process it started inherited it: the key holder's children, validation and token workers, Spark's
    JVM. Any of them, or anything that read its /proc/<pid>/environ, could sign a forged release that
    an auditor would accept. The runner now starts Airflow without it and seals it; only the Airflow
    process, where the publish task signs, holds the seal, and it reads it only while it signs."""
    seen = [p for p in run["watch"].seen.values() if p["looks"]]
    airflow = [p for p in seen if p["direct"] and p["role"] == "airflow"]
    assert len(airflow) == 1
    for process in seen:
        assert process["publishing_variables"] == [] and not process["publishing_key_in_environment"], process["commands"]
    # Held by the Airflow process (or a child of it not yet past exec, which is still its program) only.
    assert {look["role"] for p in seen for look in p["looks"] if look["publishing_sealed"]} == {"airflow"}
    assert any(look["publishing_sealed"] for look in airflow[0]["looks"])
    # The release was signed all the same, with the key from the connection.
    manifest = io.read_json(run["cfg"].release_dir / "manifest.json")
    assert manifest["signing"]["fingerprint"] == run["publishing"].fingerprint


def test_progress_was_reported_stage_by_stage(run):
    text = "\n".join(run["progress"])
    for task in ("check_inputs", "consent_gate", "link", "build_cohort", "publish_release"):
        assert task in text


def test_release_holds_no_identifier_and_no_token(run):
    release = run["cfg"].release_dir
    assert check_release_privacy(release) == []
    raw_values: set[str] = set()
    for dataset in ("consent_register", *SOURCES):
        df = pl.read_parquet(run["raw"] / f"{dataset}.parquet", columns=["nhs_number", "given_name", "family_name", "postcode"])
        for col in df.columns:
            raw_values |= set(df.get_column(col).drop_nulls().unique().to_list())
    # Every token of the participants' token file, each element of the near-miss lists included.
    persons = pl.read_parquet(run["cfg"].pseudonymised_dir / "persons.parquet").select(pl.selectors.starts_with("tok_"))
    tokens: set[str] = set()
    for col in persons.columns:
        values = persons.get_column(col)
        tokens |= set((values.explode() if values.dtype == pl.List(pl.String) else values).drop_nulls().to_list())
    assert any(len(t) == 64 for t in tokens) and persons.schema["tok_surname_near"] == pl.List(pl.String)
    for table in RELEASE_TABLES:
        df = pl.read_parquet(release / f"{table}.parquet")
        for col in df.select(pl.col(pl.String)).columns:
            values = set(df.get_column(col).drop_nulls().unique().to_list())
            assert not values & raw_values, f"{table}.{col} holds a raw identifier value"
            assert not values & tokens, f"{table}.{col} holds a linkage token"


def test_link_map_matches_ground_truth_exactly_on_the_clean_profile(run):
    kept = kept_participants(run).get_column("participant_id")
    truth = tokenised_truth(pl.read_parquet(run["truth"] / "record_links.parquet"), run["key"]).select(
        "source", "record_id", pl.when(pl.col("participant_id").is_in(kept.implode())).then(pl.col("participant_id")).alias("expected")
    )
    link_map = pl.read_parquet(run["cfg"].linked_dir / "link_map.parquet")
    compared = truth.join(link_map, on=["source", "record_id"], how="full", coalesce=True)
    assert compared.height == truth.height == link_map.height
    wrong = compared.filter(pl.col("expected").ne_missing(pl.col("participant_id")))
    assert wrong.height == 0, f"{wrong.height} records linked differently from the truth"
    assert set(link_map.get_column("rank").drop_nulls().unique()) == {"1"}


def test_withdrawn_and_declined_people_are_absent_from_the_release(run):
    reg = pl.read_parquet(run["raw"] / "consent_register.parquet")
    excluded = reg.join(kept_participants(run).select("participant_id"), on="participant_id", how="anti")
    assert excluded.height > 0
    assert (excluded.get_column("withdrawal_date") > run["cfg"].extract).any()  # withdrawn after the extract date
    ids = set(study_ids(run["key"], LABEL, excluded.get_column("participant_id").to_list()))
    released = set(pl.read_parquet(run["cfg"].release_dir / "cohort.parquet").get_column("study_id"))
    assert not ids & released


def test_released_service_use_equals_service_use_of_the_true_links(run):
    """Recompute service use from the raw payloads joined by the truth (not by our linkage) and compare."""
    cfg = run["cfg"]
    truth = pl.read_parquet(run["truth"] / "record_links.parquet").filter(pl.col("participant_id").is_not_null())
    events = {
        s: pl.scan_parquet(run["raw"] / f"{s}.parquet").join(
            truth.lazy().filter(pl.col("source") == s).select("record_id", "participant_id"), on="record_id"
        )
        for s in SOURCES
    }
    cohort_ids = pl.read_parquet(cfg.release_dir / "cohort.parquet").get_column("study_id")
    persons = pl.read_parquet(study_persons_file(cfg)).filter(pl.col("study_id").is_in(cohort_ids.implode()))
    expected = (
        service_use(events, persons.lazy(), scan_unit_costs(Path(cfg.unit_costs)), cfg.extract)
        .collect()
        .join(persons.select("participant_id", "study_id"), on="participant_id")
        .drop("participant_id")
        .select("study_id", "period", "service_type", "units", "cost_gbp")
        # Released at the contract's precision (units to 0.1, costs to the nearest 10).
        .with_columns(disclosure.precision_expr(c, r) for c, r in disclosure.declared_precision("service_use").items())
        .sort("study_id", "period", "service_type")
    )
    released = pl.read_parquet(cfg.release_dir / "service_use.parquet").sort("study_id", "period", "service_type")
    assert released.equals(expected)
    assert released.get_column("units").sum() > 0


def test_emergency_admissions_counted_independently_agree(run):
    """A second, plain count of emergency admissions after index per participant, from raw + truth."""
    cfg = run["cfg"]
    persons = pl.read_parquet(study_persons_file(cfg))
    truth = pl.read_parquet(run["truth"] / "record_links.parquet").filter(pl.col("source") == "hospital_apc")
    apc = pl.read_parquet(run["raw"] / "hospital_apc.parquet").join(truth.select("record_id", "participant_id"), on="record_id")
    index = dict(zip(persons.get_column("participant_id"), persons.get_column("index_date"), strict=True))
    counts: dict[str, int] = {}
    for pid, method, day in apc.select("participant_id", "admission_method", "admission_date").iter_rows():
        if pid in index and method.startswith("2") and index[pid] <= day < index[pid] + dt.timedelta(days=365):
            counts[pid] = counts.get(pid, 0) + 1
    sid = dict(zip(persons.get_column("participant_id"), persons.get_column("study_id"), strict=True))
    released = pl.read_parquet(cfg.release_dir / "service_use.parquet").filter(
        (pl.col("period") == "post_12m") & (pl.col("service_type") == "emergency_admission")
    )
    got = dict(zip(released.get_column("study_id"), released.get_column("units"), strict=True))
    for pid, n in counts.items():
        if sid[pid] in got:
            assert got[sid[pid]] == n


def test_rerun_with_the_same_label_is_refused_and_leaves_the_release_untouched(run):
    from pipeline.errors import PipelineError
    from pipeline.orchestration.embedded import run_embedded

    release = run["cfg"].release_dir
    before = {p.name: io.sha256_file(p) for p in release.iterdir()}
    with pytest.raises(PipelineError, match="already exists"):
        run_embedded(run["cfg"].to_conf(), run["base"] / "airflow", progress=lambda _: None)
    assert {p.name: io.sha256_file(p) for p in release.iterdir()} == before
    assert not run["cfg"].staging_dir.exists()


def test_rebuilding_the_cohort_gives_identical_bytes(run):
    """Same inputs, same bytes: floating-point sums must not depend on the engine's summation order."""
    from pipeline import tasks

    conf = run["cfg"].to_conf()
    built = run["cfg"].linked_dir / "cohort"
    hashes = set()
    for _ in range(5):
        tasks.build_cohort(conf)
        hashes.add(tuple(io.sha256_file(built / f"{t}.parquet") for t in RELEASE_TABLES))
    assert len(hashes) == 1
