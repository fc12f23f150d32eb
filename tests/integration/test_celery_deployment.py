"""The production deployment's parts for real: Postgres, Redis, the api-server, scheduler, dag-processor
and two Celery workers, as processes on this machine (no Docker), driven over the REST API.

The workers are split as in docker-compose.yml: `keyholder` serves the key holder's queue with the
linkage key; `worker1` serves the default queue (link, publish) with the publishing key only, and,
run as root, without any capability, while the linkage key file and the raw/ folders belong to
another user (`nobody`), 0600 and 0700: the kernel keeps them from it, as separate mounts keep them
from airflow-worker in docker-compose.yml.

What it shows:
- the link and publish worker has no key in its environment, cannot open the key file or list
  raw/, cannot read the key holder's environment, and ran only link and publish tasks; the key
  holder ran every pseudonymise task;
- two runs of different labels triggered at once with `POST /api/v2/dags/pprl_pseudonymise/dagRuns`,
  on one work folder, chain through the assets to `pprl_link` and `pprl_publish` with tasks on both
  workers, and each release is byte for byte the one the embedded default (`run_embedded`,
  dag.test on SQLite) makes of its label alone from the same inputs, key and label: Celery changed
  nothing, and neither run touched the other's files.

The embedded references are made in background processes while the services start. Postgres and
Redis come from the installed server binaries; without them the test is skipped, or fails when
CI=true. Every process is stopped in the fixtures' finalizers, even when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import psutil
from airflow_stack import (
    AirflowStack, Service, ServiceError, can_confine, drop_capabilities, find_server_binaries, start_process, stop_service,
)  # fmt: skip

from pipeline import io
from pipeline.crypto.keys import KEY_ENVIRONMENT, KEY_FILE_VARIABLE
from pipeline.orchestration import KEY_HOLDER_QUEUE, LINK_DAG, PSEUDONYMISE_DAG, PUBLISH_DAG
from pipeline.publish.release_log import LOG_NAME
from pipeline.settings import RunConfig

pytestmark = pytest.mark.integration

PERSONS = 400  # enough for every release table past disclosure control; the test is of the deployment, not of scale
LABEL_A, SEED_A = "it-2026-a", 101
LABEL_B, SEED_B = "it-2026-b", 202
RUN_TIMEOUT = 420  # seconds for one DAG run; a loaded two-core machine needs about a tenth of it
ZONES = ("pseudonymised", "linked", "releases", "reports")
# Owner of the key file and the raw/ folders when the link and publish worker is confined.
OTHER_UID = 65534  # nobody

# Runs in a background process: the embedded default makes a reference release.
EMBEDDED_REFERENCE = """
import json, sys
from pathlib import Path
from pipeline.orchestration.embedded import run_embedded
result = run_embedded(json.loads(sys.argv[1]), Path(sys.argv[2]), progress=lambda line: print(line, flush=True))
print("release:", result["release_path"], flush=True)
"""


def _say(request, line: str) -> None:
    """A line in pytest's own output (not captured), for timings a reader of the CI log wants."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write_line(f"[integration] {line}")


def _clean_env() -> dict[str, str]:
    """The test's environment without a key or Airflow settings a developer's shell may carry."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PPRL_KEY", "PPRL_PUBLISHING", "PPRL_TRUSTED", "AIRFLOW__")) and k != "AIRFLOW_HOME"}


@pytest.fixture(scope="module")
def binaries():
    found, missing = find_server_binaries()
    if found is None:
        message = f"integration test needs real Postgres and Redis servers: {missing}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message} (CI=true, so this fails instead of skipping)", pytrace=False)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two sets of synthetic extracts (different seeds), one linkage key and one publishing key."""
    from pipeline.crypto.keys import new_key_file
    from pipeline.publish.signing import new_publishing_key_file
    from pipeline.synth import generate

    base = tmp_path_factory.mktemp("inputs")
    generate(base / "a", persons=PERSONS, seed=SEED_A, profile="realistic")
    generate(base / "b", persons=PERSONS, seed=SEED_B, profile="realistic")
    key_file = base / "secrets" / "pprl.key.json"
    new_key_file(key_file)
    publishing_key_file = base / "secrets" / "publishing.pem"
    new_publishing_key_file(publishing_key_file)
    raw = {LABEL_A: base / "a" / "raw", LABEL_B: base / "b" / "raw"}
    confined, why = can_confine()
    if confined:
        # Another user's key file (0600) and raw/ folders (0700, files 0600): the key holder and the
        # embedded references, root with every capability, read them; a worker without
        # CAP_DAC_OVERRIDE cannot.
        for folder in raw.values():
            for path in [folder, *folder.rglob("*")]:
                os.chown(path, OTHER_UID, OTHER_UID)
                path.chmod(0o700 if path.is_dir() else 0o600)
        os.chown(key_file, OTHER_UID, OTHER_UID)
    elif os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the link and publish worker cannot be confined here: {why}", pytrace=False)
    return {"base": base, "raw": raw, "key_file": key_file, "publishing_key_file": publishing_key_file, "confined": confined, "why": why}


def conf_for(inputs, label: str, work: Path, *, with_key_file: bool) -> dict:
    conf = {"raw_dir": str(inputs["raw"][label]), "work_dir": str(work), "release_label": label}
    if with_key_file:
        conf["key_file"] = str(inputs["key_file"])
        conf["publishing_key_file"] = str(inputs["publishing_key_file"])
    return RunConfig.from_conf(conf).to_conf()


@pytest.fixture(scope="module")
def deployment(request, binaries, inputs, tmp_path_factory):
    """The started services, and the embedded reference releases made while they started."""
    root = tmp_path_factory.mktemp("deployment")
    started = time.monotonic()
    references: dict[str, tuple[Service, Path]] = {}
    try:
        for label in (LABEL_A, LABEL_B):
            # The embedded default takes the keys from the run's key_file and publishing_key_file; the
            # workers take them from PPRL_KEY_FILE and PPRL_PUBLISHING_KEY_FILE, as in docker-compose.yml.
            # The manifest records neither path.
            conf = conf_for(inputs, label, root / f"embedded-{label}" / "work", with_key_file=True)
            service = start_process(
                f"embedded-{label}", [sys.executable, "-c", EMBEDDED_REFERENCE, json.dumps(conf), str(root / f"embedded-{label}" / "airflow")],
                root, _clean_env(), cwd=root,
            )  # fmt: skip
            references[label] = (service, RunConfig.from_conf(conf).release_dir)
        stack = AirflowStack(
            root / "stack", binaries=binaries, key_file=inputs["key_file"], workers=1, worker_concurrency=2,
            publishing_key_file=inputs["publishing_key_file"], confined=inputs["confined"],
            data_roots=(root, inputs["base"]),
        )
        request.addfinalizer(lambda: _stop(request, stack, started))
        stack.start()
        _say(request, f"services ready in {stack.timings['ready']:.0f}s ({_steps(stack.timings)})")
        for label, (service, _) in references.items():
            try:
                code = service.process.wait(timeout=600)
            except subprocess.TimeoutExpired:
                raise ServiceError(f"the embedded reference run for {label} took over 600s; log {service.log_path}") from None
            if code != 0:
                raise ServiceError(f"the embedded reference run for {label} failed; log {service.log_path}:\n{service.log_tail()}")
        _say(request, f"embedded references ready {time.monotonic() - started:.0f}s after the start")
        yield {"stack": stack, "root": root, "reference": {label: path for label, (_, path) in references.items()}}
    finally:
        for service, _ in references.values():
            stop_service(service)


def _stop(request, stack: AirflowStack, started: float) -> None:
    stopping = time.monotonic()
    try:
        stack.stop()
    finally:
        killed = f"; killed after the grace period: {stack.killed}" if stack.killed else ""
        _say(
            request,
            f"services stopped in {time.monotonic() - stopping:.0f}s ({_steps(stack.stop_timings)}), "
            f"{time.monotonic() - started:.0f}s in all{killed}",
        )


def _steps(timings: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.0f}s" for name, seconds in timings.items() if name != "ready")


def run_pipeline(stack: AirflowStack, runs: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """Trigger pprl_pseudonymise once per label, all at once; follow each through link and publish.

    The downstream runs are found by their triggering asset event, which names the upstream run, so
    a label that ran before in another work folder cannot be mistaken for this one.
    """
    triggered = {label: stack.api.trigger(PSEUDONYMISE_DAG, conf) for label, conf in runs.items()}
    results: dict[str, dict[str, dict]] = {label: {} for label in runs}
    for label, run_id in triggered.items():
        upstream = stack.wait_for_run(PSEUDONYMISE_DAG, run_id, RUN_TIMEOUT)
        results[label][PSEUDONYMISE_DAG] = upstream
        for dag_id, upstream_dag in ((LINK_DAG, PSEUDONYMISE_DAG), (PUBLISH_DAG, LINK_DAG)):
            if upstream["state"] != "success":
                break
            upstream = stack.wait_for_downstream_run(dag_id, upstream_dag, upstream["dag_run_id"], label, RUN_TIMEOUT)
            results[label][dag_id] = upstream
    failures = [
        stack.describe_run(dag_id, run["dag_run_id"])
        for label in results for dag_id, run in results[label].items() if run["state"] != "success"
    ]  # fmt: skip
    missing = [f"{label}: {dag_id}" for label in results for dag_id in (PSEUDONYMISE_DAG, LINK_DAG, PUBLISH_DAG) if dag_id not in results[label]]
    assert not failures and not missing, "runs that did not succeed:\n" + "\n".join(failures + missing)
    return results


def assert_same_release(got: Path, want: Path) -> None:
    differences = release_differences(got, want)
    assert not differences, f"{got} is not byte for byte the embedded default's {want}:\n  " + "\n  ".join(differences)


def release_differences(got: Path, want: Path) -> list[str]:
    """Every way release `got` differs from `want`: files missing or extra, and files whose bytes differ.

    For manifest.json the differing top-level keys are named, so a legitimate difference (a path,
    a time) would be found and reported rather than hidden.
    """
    if not got.is_dir():
        return [f"{got} is not a folder"]
    files_got = {p.relative_to(got) for p in got.rglob("*") if p.is_file()}
    files_want = {p.relative_to(want) for p in want.rglob("*") if p.is_file()}
    problems = [f"missing {name}" for name in sorted(files_want - files_got)]
    problems += [f"extra {name}" for name in sorted(files_got - files_want)]
    # Who ran it and when (provenance.json), and so the signature over it, differ per run by design;
    # they must be there, name this release's manifest and be signed with the same publishing key.
    from pipeline.publish.provenance import PER_RUN_FILES
    from pipeline.publish.signing import NOT_IN_MANIFEST, SIGNATURE_FILE

    for name in (Path(n) for n in (*PER_RUN_FILES, SIGNATURE_FILE)):
        if name in files_got:
            named = json.loads((got / name).read_text())
            manifest_sha = named.get("manifest_sha256") or named.get("statement", {}).get("manifest_sha256")
            if manifest_sha != io.sha256_file(got / "manifest.json"):
                problems.append(f"{name} names another manifest")
    signatures = [json.loads((r / SIGNATURE_FILE).read_text())["fingerprint"] for r in (got, want) if (r / SIGNATURE_FILE).is_file()]
    if len(set(signatures)) > 1:
        problems.append("signed with another publishing key")
    per_run = {Path(n) for n in NOT_IN_MANIFEST} - {Path("manifest.json")}
    for name in sorted((files_got & files_want) - per_run):
        if (got / name).read_bytes() != (want / name).read_bytes():
            detail = ""
            if name.name == "manifest.json":
                a, b = json.loads((got / name).read_text()), json.loads((want / name).read_text())
                detail = f" (keys {sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))})"
            elif name.suffix == ".parquet":
                detail = f" ({_parquet_difference(got / name, want / name)})"
            problems.append(f"{name} differs{detail}")
    return problems


def _parquet_difference(got: Path, want: Path) -> str:
    """Where two Parquet files differ: schema, row order, or which values (and by how much)."""
    import polars as pl

    a, b = pl.read_parquet(got), pl.read_parquet(want)
    if a.schema != b.schema or a.height != b.height:
        return f"schema or row count: {a.schema} {a.height} rows against {b.schema} {b.height} rows"
    if a.equals(b):
        return "same values, different file bytes (metadata or encoding)"
    if a.sort(a.columns).equals(b.sort(b.columns)):
        return "same rows in a different order"
    parts = []
    for column in a.columns:
        x, y = a.get_column(column), b.get_column(column)
        unequal = x.ne_missing(y)
        if unequal.any():
            part = f"{column}: {int(unequal.sum())} value(s)"
            if x.dtype.is_float():
                part += f", largest difference {float((x - y).abs().max()):.3g}"
            parts.append(part)
    return "values differ in " + "; ".join(parts)


def _family(service: Service) -> list[psutil.Process]:
    root = psutil.Process(service.process.pid)
    return [root, *root.children(recursive=True)]


# Runs under the link and publish worker's confinement: what can it open?
PROBE = """
import json, os, sys
def attempt(action, path):
    try:
        action(path)
        return "allowed"
    except PermissionError:
        return "refused"
print(json.dumps({
    "key file": attempt(lambda p: open(p, "rb").read(), sys.argv[1]),
    "raw/": attempt(os.listdir, sys.argv[2]),
    "raw extract": attempt(lambda p: open(p, "rb").read(1), sys.argv[3]),
    "key holder's environment": attempt(lambda p: open(p, "rb").read(), sys.argv[4]),
}))
"""


def test_the_link_and_publish_worker_has_no_key_and_cannot_open_the_key_or_raw(deployment, inputs):
    if not inputs["confined"]:
        pytest.skip(f"the link and publish worker cannot be confined here: {inputs['why']}")
    stack = deployment["stack"]
    keyholder, worker = stack.worker("keyholder"), stack.worker("worker1")

    # No key, and no pointer to one, in the environment of the worker or any process it started
    # (read by the test, which runs as root with every capability). The key holder's shows the check
    # can fail: it carries the key file's path.
    for proc in _family(worker):
        with contextlib.suppress(psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):  # a task process that just ended
            carried = sorted(set(KEY_ENVIRONMENT) & set(proc.environ()))
            assert carried == [], f"worker1 process {proc.pid} ({proc.name()}) carries {carried}"
            status = dict(line.split(":\t", 1) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines() if ":\t" in line)
            assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0, f"worker1 process {proc.pid} holds capabilities"
    assert psutil.Process(keyholder.process.pid).environ()[KEY_FILE_VARIABLE] == str(inputs["key_file"])

    # What a process confined as the worker is can open: not the key file, not raw/ nor a file in
    # it, not the key holder's environment. The same probe with every capability opens all four.
    raw = inputs["raw"][LABEL_A]
    extract = next(p for p in raw.rglob("*.parquet"))
    argv = [sys.executable, "-c", PROBE, str(inputs["key_file"]), str(raw), str(extract), f"/proc/{keyholder.process.pid}/environ"]
    confined = subprocess.run(argv, preexec_fn=drop_capabilities, capture_output=True, text=True, timeout=120)
    assert confined.returncode == 0, confined.stderr[-2000:]
    assert set(json.loads(confined.stdout).values()) == {"refused"}, confined.stdout
    privileged = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert set(json.loads(privileged.stdout).values()) == {"allowed"}, privileged.stdout


def test_two_labels_triggered_at_once_over_the_rest_api_publish_the_embedded_defaults_releases(deployment, inputs, request):
    """One trigger per label, at once, on one work folder: both runs chain through the three DAGs on
    their own queues, and each release is byte for byte the one the embedded default makes of its
    label alone, so neither run touched the other's files.

    (One test, not a run alone and then two at once: each label's embedded reference is the run
    alone, and a Celery run costs about 100 seconds of the suite's 15 minutes.)
    """
    stack = deployment["stack"]
    work = deployment["root"] / "work"  # one work folder for both: the zones are shared
    labels = (LABEL_A, LABEL_B)
    before = stack.celery_task_counts()
    started = time.monotonic()
    results = run_pipeline(stack, {label: conf_for(inputs, label, work, with_key_file=False) for label in labels})
    _say(request, f"two runs at once through the three DAGs on Celery: {time.monotonic() - started:.0f}s")

    for label in labels:
        assert results[label][PUBLISH_DAG]["partition_key"] == label
        assert_same_release(work / "releases" / label, deployment["reference"][label])
    assert (work / "releases" / LABEL_A / "cohort.parquet").read_bytes() != (work / "releases" / LABEL_B / "cohort.parquet").read_bytes()
    for zone in ZONES:
        found = sorted(p.name for p in (work / zone).iterdir() if p.name != LOG_NAME)  # the release log is shared
        if zone in ("pseudonymised", "linked"):
            # Working zones: each label's folder is removed once it is published (default retention).
            assert found == [], f"{zone}/ still holds {found} after publication"
        else:
            # No staging folder or earlier version left beside the two labels.
            assert found == sorted(labels), f"{zone}/ holds {found}, not just the two labels"

    # Every pseudonymise task went to the key holder's queue and ran on its worker; every other task
    # ran on the link and publish worker. Each try of a task is one Celery task.
    after = stack.celery_task_counts()
    ran = {worker: after.get(worker, 0) - before.get(worker, 0) for worker in stack.worker_names}
    tries: dict[str, int] = {"keyholder": 0, "worker1": 0}
    for label in labels:
        for dag_id, run in results[label].items():
            for ti in stack.api.task_instances(dag_id, run["dag_run_id"]):
                expected = KEY_HOLDER_QUEUE if dag_id == PSEUDONYMISE_DAG else "default"
                assert ti["queue"] == expected, f"{label}: {dag_id}.{ti['task_id']} went to queue {ti['queue']}"
                tries["keyholder" if dag_id == PSEUDONYMISE_DAG else "worker1"] += ti["try_number"]
    assert ran == tries, f"Celery tasks per worker {ran}; task tries per queue {tries}"
    assert all(count > 0 for count in ran.values()), f"tasks per Celery worker: {ran}; both workers should have run tasks"
