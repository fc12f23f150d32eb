"""DAG integrity and the embedded runner.

Airflow reads AIRFLOW_HOME and its config once, when first imported, and other tests may import
things that import Airflow; so every check that needs Airflow runs in a fresh Python process with a
private AIRFLOW_HOME (tmp), `[core] dags_folder` = the folder under test and example DAGs off.
A fresh process is also the only honest way to see which modules importing the DAG files loads.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.orchestration import LINK_DAG, PIPELINE_DAGS, PSEUDONYMISE_DAG, PUBLISH_DAG
from pipeline.orchestration.embedded import DAGS_FOLDER, _exclusive, airflow_env, run_embedded
from pipeline.settings import SOURCES, RunConfig

HEAVY_MODULES = ("polars", "pyarrow", "great_expectations", "splink", "duckdb", "pandas")

# Runs in the child: loads the DagBag and prints what the tests check, as JSON.
DESCRIBE_DAGS = """
import json, sys
from airflow.dag_processing.dagbag import DagBag

def asset(a):
    return None if a is None else {"name": a.name, "uri": a.uri}

bag = DagBag(dag_folder=sys.argv[1])
dags = {}
for dag in bag.dags.values():
    params = {}
    for name in dag.params:
        p = dag.params.get_param(name)
        required = type(p.value).__name__ == "ArgNotSet"
        params[name] = {"description": p.description, "schema": p.schema, "required": required}
    dags[dag.dag_id] = {
        "fileloc": dag.fileloc,
        "tags": sorted(dag.tags),
        "doc_md": dag.doc_md,
        "paused_at_creation": dag.is_paused_upon_creation,
        "timetable": type(dag.timetable).__name__,
        "schedule_asset": asset(getattr(dag.timetable, "asset_condition", None)),
        "params": params,
        "tasks": {
            t.task_id: {
                "owner": t.owner, "retries": t.retries, "retry_delay": t.retry_delay.total_seconds(),
                "retry_policy": t.retry_policy is not None, "mapped": t.is_mapped,
                "upstream": sorted(t.upstream_task_ids), "outlets": [asset(o) for o in t.outlets],
                "queue": t.queue,
            }
            for t in dag.tasks
        },
    }
heavy = [m for m in %r if m in sys.modules]
print(json.dumps({"import_errors": dict(bag.import_errors), "dags": dags, "heavy": heavy}))
""" % (HEAVY_MODULES,)


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("airflow_home")
    done = subprocess.run(
        [sys.executable, "-c", DESCRIBE_DAGS, str(DAGS_FOLDER)],
        env=airflow_env(home, DAGS_FOLDER),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_dag_files_import_without_errors(dagbag):
    assert dagbag["import_errors"] == {}


def test_exactly_the_three_pipeline_dags(dagbag):
    assert sorted(dagbag["dags"]) == sorted(PIPELINE_DAGS)


def test_dag_files_stay_thin(dagbag):
    """Parsing must not load data libraries: the scheduler parses DAG files every few seconds."""
    assert dagbag["heavy"] == []


def test_every_dag_has_tags_docs_and_owner_with_retries(dagbag):
    for dag_id, dag in dagbag["dags"].items():
        assert "pprl" in dag["tags"] and len(dag["tags"]) >= 2, dag_id
        assert dag["doc_md"] and len(dag["doc_md"]) > 200, dag_id
        assert dag["paused_at_creation"] is False, dag_id
        for task_id, task in dag["tasks"].items():
            assert task["owner"] == "pprl", (dag_id, task_id)
            assert task["retries"] >= 1, (dag_id, task_id)
            assert 0 < task["retry_delay"] <= 300, (dag_id, task_id)
            assert task["retry_policy"], (dag_id, task_id)


def test_every_dag_has_the_run_params_with_descriptions(dagbag):
    from dataclasses import fields

    from pipeline.orchestration.conf import MATCHING_PARAMS
    from pipeline.settings import LINKAGE_PARAMS

    # One Param per RunConfig setting, the nested matching and linkage options flat.
    expected = {f.name for f in fields(RunConfig)} - {"matching", "linkage"} | set(MATCHING_PARAMS) | set(LINKAGE_PARAMS)
    assert {"ratio", "link_threshold", "small_groups", "run_date"} <= expected
    for dag_id, dag in dagbag["dags"].items():
        assert set(dag["params"]) == expected, dag_id
        for name, param in dag["params"].items():
            assert param["description"], (dag_id, name)
            assert "type" in param["schema"], (dag_id, name)
    params = dagbag["dags"][PSEUDONYMISE_DAG]["params"]
    assert params["ratio"]["schema"]["minimum"] == 1
    # The matching options and the study window may be left empty: the study file's values apply.
    assert params["exact"]["schema"]["type"] == ["null", "array"] and "null" in params["study_start"]["schema"]["type"]
    # The pseudonymise DAG cannot start without the inputs; the downstream ones take them from
    # the asset event, so theirs may be empty.
    assert params["raw_dir"]["required"]
    assert not dagbag["dags"][LINK_DAG]["params"]["raw_dir"]["required"]
    assert "null" in dagbag["dags"][LINK_DAG]["params"]["raw_dir"]["schema"]["type"]


def test_tasks_and_their_order(dagbag):
    pseudonymise = dagbag["dags"][PSEUDONYMISE_DAG]["tasks"]
    assert pseudonymise["preflight"]["upstream"] == []
    assert pseudonymise["check_inputs"]["upstream"] == ["preflight"]
    assert pseudonymise["consent_gate"]["upstream"] == ["check_inputs"]
    assert pseudonymise["pseudonymise_source"]["mapped"]
    assert pseudonymise["pseudonymise_source"]["upstream"] == ["consent_gate"]
    assert pseudonymise["validate_pseudonymised"]["upstream"] == ["pseudonymise_source"]
    link = dagbag["dags"][LINK_DAG]["tasks"]
    assert link["prepare_link"]["upstream"] == []
    assert link["link_ranks"]["mapped"] and link["link_ranks"]["upstream"] == ["prepare_link"]
    # Rank P of any source needs the addresses every source's ranks found.
    assert link["model_participants"]["upstream"] == ["link_ranks"]
    assert link["link_rank_p"]["mapped"] and link["link_rank_p"]["upstream"] == ["model_participants"]
    assert link["write_link_map"]["upstream"] == ["link_rank_p"]
    assert link["validate_linked"]["upstream"] == ["write_link_map"]
    publish = dagbag["dags"][PUBLISH_DAG]["tasks"]
    assert publish["publish_release"]["upstream"] == ["validate_release"]
    assert publish["validate_release"]["upstream"] == ["stage_release"]
    assert publish["stage_release"]["upstream"] == ["build_cohort"]


def test_only_the_key_holders_tasks_go_to_its_queue(dagbag):
    """Every task of pprl_pseudonymise (raw/ and the key) runs on the key holder's worker; no other task does."""
    queues = {(dag_id, task_id): t["queue"] for dag_id, d in dagbag["dags"].items() for task_id, t in d["tasks"].items()}
    keyholder = {key for key, queue in queues.items() if queue == "keyholder"}
    assert keyholder == {(PSEUDONYMISE_DAG, task) for task in dagbag["dags"][PSEUDONYMISE_DAG]["tasks"]}
    # And they are the tasks pipeline.tasks runs in child processes of their own, but for pre-flight:
    # it looks at raw/ and the key file's mode (so it runs on the key holder's worker) and never
    # reads the key or an extract, so it needs no child of its own.
    from pipeline.tasks import KEY_HOLDER_TASKS

    assert set(dagbag["dags"][PSEUDONYMISE_DAG]["tasks"]) == {*KEY_HOLDER_TASKS, "preflight"}
    assert {queue for key, queue in queues.items() if key not in keyholder} == {"default"}


def test_assets_chain_the_dags(dagbag):
    dags = dagbag["dags"]

    def outlet(dag_id: str, task_id: str) -> dict:
        (asset,) = dags[dag_id]["tasks"][task_id]["outlets"]
        return asset

    assert dags[PSEUDONYMISE_DAG]["timetable"] == "NullTimetable"
    assert outlet(PSEUDONYMISE_DAG, "validate_pseudonymised")["name"] == "pprl_pseudonymised"
    assert dags[LINK_DAG]["schedule_asset"] == outlet(PSEUDONYMISE_DAG, "validate_pseudonymised")
    assert outlet(LINK_DAG, "validate_linked")["name"] == "pprl_linked"
    assert dags[PUBLISH_DAG]["schedule_asset"] == outlet(LINK_DAG, "validate_linked")
    assert outlet(PUBLISH_DAG, "publish_release")["name"] == "pprl_release"
    # Partitioned by release label, so concurrent labels get separate downstream runs.
    assert dags[LINK_DAG]["timetable"] == dags[PUBLISH_DAG]["timetable"] == "PartitionedAssetTimetable"


# --- The embedded runner, on throwaway DAGs that do not depend on the pipeline's task bodies. ---

TOY_DAGS = '''
"""Three toy DAGs shaped like the pipeline's, and one that fails."""
from pathlib import Path

from airflow.sdk import Asset, PartitionedAssetTimetable, dag, get_current_context, task

from pipeline.orchestration.conf import announce, resolve_conf
from pipeline.orchestration.defaults import default_args, run_params

FIRST = Asset(name="toy_first", uri="x-toy://first")
SECOND = Asset(name="toy_second", uri="x-toy://second")


def write(name):
    conf = resolve_conf(get_current_context())
    path = Path(conf["work_dir"]) / conf["release_label"] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(conf["matching"]["ratio"]))
    return str(path)


@dag(dag_id="toy_first", schedule=None, params=run_params(filled_by_upstream=False), default_args=default_args())
def toy_first():
    @task
    def start():
        return write("start")

    @task(map_index_template="{{ source }}")
    def per_source(source):
        get_current_context()["source"] = source
        return write(source)

    @task(outlets=[FIRST])
    def finish():
        context = get_current_context()
        path = write("finish")
        announce(context, FIRST, resolve_conf(context), path)
        return path

    start() >> per_source.expand(source=["north", "south"]) >> finish()


@dag(dag_id="toy_second", schedule=PartitionedAssetTimetable(assets=FIRST),
     params=run_params(filled_by_upstream=True), default_args=default_args())
def toy_second():
    @task(outlets=[SECOND])
    def link():
        import time

        from pipeline.progress import Progress

        context = get_current_context()
        # A long stage in small: it reports every 0.3 s while it runs (every minute in a real run).
        with Progress("toy link", total=4, unit="rows", interval=0.3) as progress:
            for _ in range(4):
                time.sleep(0.25)
                progress.advance()
        path = write("link")
        announce(context, SECOND, resolve_conf(context), path)
        return path

    link()


@dag(dag_id="toy_third", schedule=PartitionedAssetTimetable(assets=SECOND),
     params=run_params(filled_by_upstream=True), default_args=default_args())
def toy_third():
    @task
    def publish_release():
        return str(Path(write("release")).parent)

    publish_release()


@dag(dag_id="toy_broken", schedule=None, params=run_params(filled_by_upstream=True), default_args=default_args())
def toy_broken():
    @task
    def fine():
        return write("fine")

    @task
    def check_things():
        from pipeline.errors import PipelineError

        raise PipelineError("toy.parquet, column nhs_number: rule 'mod11' broken: fix the extract")

    @task
    def never():
        return write("never")

    fine() >> check_things() >> never()


toy_first()
toy_second()
toy_third()
toy_broken()
'''


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("toy")
    (root / "dags").mkdir()
    (root / "dags" / "toy_dags.py").write_text(TOY_DAGS)
    return {"dags": root / "dags", "home": root / "airflow", "work": root / "work", "raw": root / "raw"}


@pytest.fixture(scope="module")
def toy_run(toy) -> tuple[dict, list[str]]:
    lines: list[str] = []
    conf = {"raw_dir": str(toy["raw"]), "work_dir": str(toy["work"]), "release_label": "toy1", "matching": {"ratio": 3}}
    chain = ("toy_first", "toy_second", "toy_third")
    result = run_embedded(conf, toy["home"], lines.append, dags_folder=toy["dags"], dag_ids=chain)
    return result, lines


def test_embedded_run_prints_the_progress_of_long_stages_as_they_run(toy_run):
    result, lines = toy_run
    progress = [line for line in lines if line.startswith("  … toy link: ")]
    assert 1 <= len(progress) <= 4, lines
    assert all(" of 4 rows (" in line and " elapsed" in line for line in progress)
    # Said while the task ran, so before the line that reports its end.
    assert lines.index(progress[-1]) < next(i for i, line in enumerate(lines) if line.startswith("toy_second: link ✓"))
    # And in the task's log, where the reports are logged.
    assert f"progress: {progress[0].removeprefix('  … ')}" in Path(result["log_file"]).read_text()


def test_embedded_run_succeeds_and_returns_states_durations_and_release(toy, toy_run):
    result, _ = toy_run
    assert result["state"] == "success"
    assert list(result["dags"]) == ["toy_first", "toy_second", "toy_third"]
    for run in result["dags"].values():
        assert run["state"] == "success" and run["seconds"] > 0
        assert all(task["state"] == "success" and task["seconds"] >= 0 for task in run["tasks"])
        # When each task ran (the bench finds a task's memory peak by it): start, then end.
        for task in run["tasks"]:
            started, ended = (dt.datetime.fromisoformat(task[k]) for k in ("started", "ended"))
            assert started.utcoffset() is not None and started <= ended
    assert result["release_path"] == str(toy["work"] / "toy1")
    first = result["dags"]["toy_first"]
    labels = [task["label"] for task in first["tasks"]]  # In the order they ran; mapped ones in any order.
    assert labels[0] == "start" and labels[-1] == "finish"
    assert sorted(labels[1:-1]) == ["per_source[north]", "per_source[south]"]
    assert first["outputs"]["per_source"] == [str(toy["work"] / "toy1" / s) for s in ("north", "south")]
    # The nested matching option reached every DAG through dag.test(run_conf=...) and Params.
    assert (toy["work"] / "toy1" / "release").read_text() == "3"
    assert set(result["overhead_seconds"]) >= {"startup", "migrate", "dagbag", "warmup", "ready"}


def test_embedded_run_keeps_airflow_inside_its_home_and_out_of_the_terminal(toy, toy_run):
    result, lines = toy_run
    assert (toy["home"] / "airflow.db").exists()
    log = Path(result["log_file"])
    assert log.parent.parent == toy["home"] / "logs" and "[DAG TEST]" in log.read_text()
    assert "toy_first: per_source[north] ✓" in "\n".join(lines)
    assert not any("[DAG TEST]" in line or "[info" in line for line in lines)
    assert any("database created" in line for line in lines)


def test_embedded_failure_names_the_dag_the_task_and_the_log(toy, toy_run):
    lines: list[str] = []
    conf = {"raw_dir": str(toy["raw"]), "work_dir": str(toy["work"]), "release_label": "toy2"}
    with pytest.raises(PipelineError) as raised:
        chain = ("toy_first", "toy_broken", "toy_third")
        run_embedded(conf, toy["home"], lines.append, dags_folder=toy["dags"], dag_ids=chain)
    message = str(raised.value)
    assert "toy_broken" in message and "'check_things' failed" in message
    assert "rule 'mod11' broken" in message
    assert "Not run: toy_third" in message
    log = Path(message.rsplit("Full log: ", 1)[1])
    assert log == raised.value.log_file and log.is_file() and "PipelineError" in log.read_text()
    assert (raised.value.dag_id, raised.value.task) == ("toy_broken", "check_things")
    # A PipelineError is not retried, and the second run reused the first one's database.
    assert any("check_things ✗" in line for line in lines)
    assert not any("will retry" in line for line in lines)
    assert any("database checked" in line for line in lines)
    assert not (toy["work"] / "toy2" / "never").exists()


def test_embedded_run_refuses_a_busy_airflow_home(toy):
    conf = {"raw_dir": str(toy["raw"]), "work_dir": str(toy["work"]), "release_label": "busy"}
    with _exclusive(toy["home"]), pytest.raises(PipelineError, match="another embedded run"):
        run_embedded(conf, toy["home"], dags_folder=toy["dags"], dag_ids=("toy_first",))


def test_embedded_run_reports_dag_files_that_do_not_import(tmp_path):
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "broken_dag.py").write_text("from airflow.sdk import dag\nimport no_such_module\n")
    conf = {"raw_dir": str(tmp_path), "work_dir": str(tmp_path), "release_label": "x"}
    with pytest.raises(PipelineError, match="broken_dag.py.*no_such_module"):
        run_embedded(conf, tmp_path / "airflow", lambda _: None, dags_folder=tmp_path / "dags", dag_ids=("x",))


# The pipeline's own DAG files under dag.test(), with every pipeline.tasks function replaced by a
# stub (through sitecustomize, which the child imports at start-up) that records the conf it got.
STUB_TASKS = """
import json
from pathlib import Path

import pipeline.tasks as tasks

def stub(name):
    def run(conf, *args, **airflow_facts):
        out = Path(conf["work_dir"]) / "stub" / conf["release_label"] / "-".join((name,) + args)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(conf, sort_keys=True))
        return str(out)
    return run

for name in %r:
    setattr(tasks, name, stub(name))
"""

TASKS = (
    "preflight", "check_inputs", "consent_gate", "pseudonymise_source", "validate_pseudonymised", "prepare_link",
    "link_ranks", "model_participants", "link_rank_p", "write_link_map", "validate_linked", "build_cohort",
    "stage_release", "validate_release", "publish_release",
)
MAPPED = ("pseudonymise_source", "link_ranks", "link_rank_p")  # one task instance per source


def test_pipeline_dags_run_in_order_with_one_conf(tmp_path, monkeypatch):
    (tmp_path / "stubs").mkdir()
    (tmp_path / "stubs" / "sitecustomize.py").write_text(STUB_TASKS % (TASKS,))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "stubs"))
    conf = RunConfig.from_conf(
        {"raw_dir": str(tmp_path / "raw"), "work_dir": str(tmp_path / "work"), "release_label": "r1",
         "matching": {"ratio": 2, "exact": ["site"]}}
    ).to_conf()

    result = run_embedded(conf, tmp_path / "airflow", lambda _: None)

    assert [run["state"] for run in result["dags"].values()] == ["success"] * 3
    labels = [task["label"] for task in result["dags"][PSEUDONYMISE_DAG]["tasks"]]
    assert sorted(labels) == sorted(
        ["preflight", "check_inputs", "consent_gate", "validate_pseudonymised"] + [f"pseudonymise_source[{s}]" for s in SOURCES]
    )
    stub = tmp_path / "work" / "stub" / "r1"
    assert result["release_path"] == str(stub / "publish_release")
    written = sorted(path.name for path in stub.iterdir())
    expected = [name for name in TASKS if name not in MAPPED] + [f"{name}-{s}" for name in MAPPED for s in SOURCES]
    assert written == sorted(expected)
    assert {path.read_text() for path in stub.iterdir()} == {json.dumps(conf, sort_keys=True)}


def test_airflow_env_is_private(tmp_path):
    base = {
        "PATH": "/bin", "AIRFLOW_HOME": "/prod", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://prod",
        "AIRFLOW_CONFIG": "/prod/airflow.cfg", "AIRFLOW_VAR_PPRL_KEY": "from-secret-store", "AIRFLOW_CONN_PPRL_KEY": "{}",
        "AIRFLOW_CONN_PPRL_PUBLISHING_KEY": "signing",
    }
    env = airflow_env(tmp_path, DAGS_FOLDER, base)
    assert env["AIRFLOW_HOME"] == str(tmp_path.resolve())
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{tmp_path.resolve() / 'airflow.db'}"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(DAGS_FOLDER)
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert "AIRFLOW_CONFIG" not in env
    # Both keys are sealed instead (tests/test_end_to_end.py): the linkage key for the key holder's
    # children, the publishing key for the publish task, which signs in this process.
    assert "AIRFLOW_VAR_PPRL_KEY" not in env and "AIRFLOW_CONN_PPRL_KEY" not in env
    assert "AIRFLOW_CONN_PPRL_PUBLISHING_KEY" not in env
