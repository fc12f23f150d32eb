"""Celery workers bench: `make bench-workers SIZE=small|medium`.

Issue 19 asks that more Celery workers make a run faster: the per-source and per-part tasks are
mapped tasks, so two workers can run two of them at once. This bench runs the whole pipeline through
the real Celery deployment (tests/integration/airflow_stack.py: Postgres, Redis, the api-server,
scheduler, dag-processor and Celery workers as processes on this machine) twice, on the same cached
inputs, keys and release label:

- with 1 worker per queue: one on the key holder's queue (`keyholder`, with the linkage key) and one
  on the default queue (`worker1`);
- with 2 workers per queue: `keyholder` and `keyholder2`, `worker1` and `worker2`.

Every worker has one task slot (worker_concurrency=1), so "N workers per queue" means at most N tasks
of that queue at once. Each measurement has a stack of its own, started fresh (a new database, no
earlier runs) and stopped after it, and a work folder of its own. It prints, for each:

- the wall time from triggering pprl_pseudonymise over the REST API to pprl_publish finishing, each
  DAG run's duration, and the rest (the scheduler starting the next DAG from the asset event);
- every task instance, read from the REST API whatever shape the DAGs have: when it started and ended
  (seconds after the trigger), its duration and the Celery worker that ran it, so a reader sees which
  tasks ran side by side; and per queue the most task instances that were running at once;
- how long the worker's slot was held for each task (the Celery task, from the worker's log): the
  task's duration plus starting its process and noticing that it ended; a slot held 5 s longer
  than the task is Airflow's supervisor waiting out its heartbeat interval ([workers]
  min_heartbeat_interval) before it sees the task process gone;
- the 1-minute load average at the trigger and at the end of the run, and the CPU seconds each
  service (the workers, scheduler, api-server, dag-processor, Postgres, Redis) used during the run,
  with every process it started and waited for;
- the peak memory of the workers' process trees (each worker, its task processes, and their token and
  validation worker processes), sampled every half second as PSS (proportional set size: a page
  shared by forked processes is counted once across them, where a sum of RSS would count it in
  each); a peak shorter than the sampling interval can be missed;

then the speed-up (1-worker time / 2-worker time), and whether the two releases are byte for byte
the same apart from the per-run facts (who ran it and when, and the signature over them). Results go
to bench/results/celery_workers-<size>.json.

How to read it. The machine has 2 cores: two tasks at once can at best halve the time of the part of
the run where two independent tasks are ready, and nothing else; one task at a time runs the same
either way (a DAG whose tasks form a chain gains nothing). Tasks that already use several processes
(the token workers in pseudonymisation, the validation workers) already fill both cores and gain
less, or lose, when a second task competes with them. The scheduler, api-server and Postgres share
the same cores. A load above 2 means something else took CPU too, and then wall times say more about
the load than about the workers; CPU seconds move much less with the load, so compare them when the
load differs between the two runs. The run is triggered SETTLE_SECONDS after the stack is ready, so
that its start-up (every service importing Airflow) is over; the 1-minute load average still
remembers some of it.

The TI's `hostname` from the REST API is the machine's name, the same for every worker here, so the
worker that ran a task is found in the workers' own logs: each logs the task instance's id when it
starts a task ("Executing workload in Celery"), and how long the Celery task took when it ends.

    uv run python bench/celery_workers.py --size small
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE), str(REPO / "tests" / "integration")]

from airflow_stack import AirflowStack, find_server_binaries  # noqa: E402
from memory import TreeMemory, family  # noqa: E402
from run import SIZES, cached_inputs, load_1m  # noqa: E402

from pipeline.orchestration import PIPELINE_DAGS, PSEUDONYMISE_DAG  # noqa: E402

WORKER_COUNTS = (1, 2)
# Larger sizes are left out: two tasks of a million people side by side can need up to twice the
# memory of one (the embedded run's peak at 1M is about 6 GB), on a machine other jobs share.
BENCH_SIZES = ("small", "medium")
RUN_TIMEOUT = {"small": 900, "medium": 3600}  # seconds for one DAG run
SETTLE_SECONDS = 30


# ---------------------------------------------------------------------------------------------
# Measuring


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its descendants: their own, and that of every process they waited for.

    Taken before and after a run, the difference is what the tree used in between, task processes
    that ended in between included (their parent reaped them, so they count in its children's times).
    """
    total = 0.0
    for proc in family(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = proc.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def instant(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def seconds_after(start: datetime, text: str | None) -> float | None:
    moment = instant(text)
    return round((moment - start).total_seconds(), 1) if moment else None


CELERY_START = re.compile(r"\[(?P<celery_id>[0-9a-f-]{36})\] Executing workload in Celery")
# "succeeded in <seconds>s" when the task ended well; "raised ..." and others, without seconds, when not.
CELERY_END = re.compile(r"Task execute_workload\[(?P<celery_id>[0-9a-f-]{36})\] (?:succeeded in (?P<seconds>[0-9.]+)s)?")
TASK_INSTANCE_ID = re.compile(r"\bti=\w+\(id=UUID\('(?P<ti_id>[0-9a-f-]{36})'\)")


def celery_tasks(stack: AirflowStack, timeout: float = 30) -> dict[str, dict[str, Any]]:
    """Per task instance id, the worker whose log says it started it, and how long its Celery task took.

    A worker logs the workload (which names the task instance's id) when a Celery task starts, and
    how it ended when it ends, with its seconds if it succeeded. The last task's Celery task can end
    a few seconds after the DAG run (its slot is held until the task process is seen gone), so the
    logs are read until every Celery task that started has ended, for up to `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, dict[str, Any]] = {}
        running = 0
        for name in stack.worker_names:
            by_celery_id: dict[str, dict[str, Any]] = {}
            for line in stack.worker(name).log_path.read_text(errors="replace").splitlines():
                if start := CELERY_START.search(line):
                    record = by_celery_id.setdefault(start["celery_id"], {"worker": name, "celery_seconds": None, "ended": False})
                    if ti := TASK_INSTANCE_ID.search(line):
                        found[ti["ti_id"]] = record
                elif (end := CELERY_END.search(line)) and end["celery_id"] in by_celery_id:
                    record = by_celery_id[end["celery_id"]]
                    record["ended"] = True
                    record["celery_seconds"] = round(float(end["seconds"]), 1) if end["seconds"] else None
            running += sum(not record["ended"] for record in by_celery_id.values())
        if not running or time.monotonic() > deadline:
            return found
        time.sleep(1)


def task_rows(stack: AirflowStack, runs: dict[str, dict], triggered: datetime) -> list[dict[str, Any]]:
    """Every task instance of the runs, in the order they started, with the worker that ran it."""
    celery = celery_tasks(stack)
    rows = []
    for dag_id, run in runs.items():
        for ti in stack.api.task_instances(dag_id, run["dag_run_id"]):
            ran = celery.get(ti["id"], {})
            rows.append({
                "dag_id": dag_id,
                "task_id": ti["task_id"],
                "map_index": ti["map_index"],
                "rendered_map_index": ti.get("rendered_map_index"),
                "state": ti["state"],
                "try_number": ti["try_number"],
                "queue": ti["queue"],
                "hostname": ti["hostname"],
                "celery_worker": ran.get("worker"),
                "queued_s": seconds_after(triggered, ti["queued_when"]),
                "start_s": seconds_after(triggered, ti["start_date"]),
                "end_s": seconds_after(triggered, ti["end_date"]),
                "duration_s": round(ti["duration"], 1) if ti["duration"] is not None else None,
                "slot_held_s": ran.get("celery_seconds"),
            })  # fmt: skip
    return sorted(rows, key=lambda row: (row["start_s"] is None, row["start_s"] or 0.0))


def most_at_once(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Per queue, the most task instances running at the same moment."""
    result = {}
    for queue in sorted({row["queue"] for row in rows}):
        # An end sorts before a start at the same time, so back-to-back tasks do not count as overlapping.
        events = sorted(
            (moment, change)
            for row in rows if row["queue"] == queue and row["start_s"] is not None and row["end_s"] is not None
            for moment, change in ((row["start_s"], 1), (row["end_s"], -1))
        )  # fmt: skip
        running = peak = 0
        for _, change in events:
            running += change
            peak = max(peak, running)
        result[queue] = peak
    return result


def seconds_without_a_task(rows: list[dict[str, Any]], wall: float) -> float:
    """Seconds of the run in which no task instance was running: scheduling, queueing, DAG hand-overs."""
    busy, reached = 0.0, 0.0
    for start, end in sorted((row["start_s"], row["end_s"]) for row in rows if row["start_s"] is not None and row["end_s"] is not None):
        if end > reached:
            busy += end - max(start, reached)
            reached = end
    return round(wall - busy, 1)


def measure(stack: AirflowStack, conf: dict, timeout: float) -> dict[str, Any]:
    """Trigger pprl_pseudonymise once and follow it through link and publish; what it took."""
    label = conf["release_label"]
    workers = [stack.worker(name) for name in stack.worker_names]
    memory = TreeMemory({worker.name: worker.process.pid for worker in workers})
    cpu_start = {service.name: tree_cpu_seconds(service.process.pid) for service in stack.services}
    load_start = load_1m()
    memory.start()
    try:
        triggered = datetime.now(timezone.utc)
        run_id = stack.api.trigger(PSEUDONYMISE_DAG, conf)
        runs = {PSEUDONYMISE_DAG: stack.wait_for_run(PSEUDONYMISE_DAG, run_id, timeout)}
        for upstream_dag, dag_id in zip(PIPELINE_DAGS, PIPELINE_DAGS[1:]):
            upstream = runs[upstream_dag]
            if upstream["state"] != "success":
                break
            runs[dag_id] = stack.wait_for_downstream_run(dag_id, upstream_dag, upstream["dag_run_id"], label, timeout)
    finally:
        memory.stop()
    cpu = {service.name: round(tree_cpu_seconds(service.process.pid) - cpu_start[service.name], 1) for service in stack.services}
    failed = [stack.describe_run(dag_id, run["dag_run_id"]) for dag_id, run in runs.items() if run["state"] != "success"]
    if failed or len(runs) < len(PIPELINE_DAGS):
        raise SystemExit("the pipeline did not finish:\n" + "\n".join(failed or [f"only {', '.join(runs)} ran"]))
    last = runs[PIPELINE_DAGS[-1]]
    rows = task_rows(stack, runs, triggered)
    wall = seconds_after(triggered, last["end_date"])
    return {
        "wall_seconds": wall,
        "seconds_without_a_task": seconds_without_a_task(rows, wall),
        "dag_runs": {
            dag_id: {
                "run_id": run["dag_run_id"],
                "start_s": seconds_after(triggered, run["start_date"]),
                "end_s": seconds_after(triggered, run["end_date"]),
                "duration_s": round(run["duration"], 1),
            }
            for dag_id, run in runs.items()
        },
        "task_instances": rows,
        "most_tasks_at_once": most_at_once(rows),
        "load_average_1m": {"start": load_start, "end": load_1m()},
        "cpu_seconds": {"all_services": round(sum(cpu.values()), 1), **cpu},
        "peak_pss_mb": {
            "all_workers": round(memory.peak_total_mb),
            **{name: round(mb) for name, mb in memory.peak_mb.items()},
        },
    }


def run_with_workers(count: int, *, binaries, conf: dict, keys: dict[str, Path], root: Path, timeout: float) -> dict[str, Any]:
    """A fresh stack with `count` workers on each queue, one measured run, then the stack stopped."""
    stack = AirflowStack(
        root / "stack", binaries=binaries, key_file=keys["linkage"], publishing_key_file=keys["publishing"],
        workers=count, keyholders=count, worker_concurrency=1,
    )  # fmt: skip
    try:
        stack.start()
        print(f"  stack ready in {stack.timings['ready']:.0f}s; workers {', '.join(stack.worker_names)}")
        time.sleep(SETTLE_SECONDS)
        result = measure(stack, conf, timeout)
    finally:
        stack.stop()
    return {"workers_per_queue": count, "workers": stack.worker_names, "stack_ready_seconds": stack.timings["ready"], **result}


def release_differences(got: Path, want: Path) -> list[str]:
    """Files that are missing, extra or different between two releases, leaving out the per-run facts.

    The idea of tests/integration/test_celery_deployment.py's comparison with the embedded default:
    provenance.json (who ran it, when, which runs) differs per run by design, and so does
    signature.json, which signs it; every other byte must be the same.
    """
    from pipeline.publish.provenance import PER_RUN_FILES
    from pipeline.publish.signing import SIGNATURE_FILE

    per_run = {Path(name) for name in (*PER_RUN_FILES, SIGNATURE_FILE)}

    def files(root: Path) -> set[Path]:
        return {p.relative_to(root) for p in root.rglob("*") if p.is_file()} - per_run

    if not got.is_dir() or not want.is_dir():
        return [f"{folder} is not a folder" for folder in (got, want) if not folder.is_dir()]
    problems = [f"only in {want}: {name}" for name in sorted(files(want) - files(got))]
    problems += [f"only in {got}: {name}" for name in sorted(files(got) - files(want))]
    problems += [f"{name} differs" for name in sorted(files(got) & files(want)) if (got / name).read_bytes() != (want / name).read_bytes()]
    return problems


# ---------------------------------------------------------------------------------------------
# Printing


def print_run(result: dict[str, Any]) -> None:
    load = result["load_average_1m"]
    cpu = result["cpu_seconds"]
    print(f"  wall time, trigger to publish finished: {result['wall_seconds']:.1f}s (load average {load['start']:.2f} -> {load['end']:.2f})")
    print(f"  CPU seconds in the run: {cpu['all_services']:.1f} ({', '.join(f'{name} {s:.1f}' for name, s in cpu.items() if name != 'all_services')})")
    in_runs = 0.0
    for dag_id, run in result["dag_runs"].items():
        in_runs += run["duration_s"]
        print(f"    {dag_id:<20}{run['duration_s']:>8.1f}s  (+{run['start_s']:.1f}s -> +{run['end_s']:.1f}s)")
    print(f"    {'between DAG runs':<20}{result['wall_seconds'] - in_runs:>8.1f}s  (trigger to first start, asset events to next start)")
    print(f"    {'no task running':<20}{result['seconds_without_a_task']:>8.1f}s  (scheduling, queueing and hand-overs, inside runs too)")
    print(f"  task instances (seconds after the trigger; slot: the Celery task; most at once per queue: {result['most_tasks_at_once']}):")
    print(f"    {'queued':>7}{'start':>8}{'end':>8}{'took':>7}{'slot':>7}  {'worker':<12}task")
    for row in result["task_instances"]:
        name = row["task_id"] if row["map_index"] < 0 else f"{row['task_id']}[{row['rendered_map_index'] or row['map_index']}]"
        state = "" if row["state"] == "success" else f"  ({row['state']})"
        times = "".join(f"{'-' if row[key] is None else format(row[key], '.1f'):>{width}}" for key, width in
                        (("queued_s", 7), ("start_s", 8), ("end_s", 8), ("duration_s", 7), ("slot_held_s", 7)))  # fmt: skip
        print(f"    {times}  {row['celery_worker'] or '?':<12}{row['dag_id']}.{name}{state}")
    hosts = sorted({row["hostname"] for row in result["task_instances"] if row["hostname"]})
    peak = result["peak_pss_mb"]
    each = ", ".join(f"{name} {mb}" for name, mb in peak.items() if name != "all_workers")
    print(f"  task instances' hostname (Airflow's, the machine's): {', '.join(hosts)}")
    print(f"  peak PSS of the workers' process trees: {peak['all_workers']} MB together ({each} MB each)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=BENCH_SIZES, default="small")
    args = parser.parse_args()
    binaries, missing = find_server_binaries()
    if binaries is None:
        raise SystemExit(f"this bench starts real Postgres and Redis servers, and this machine is {missing}; `make system-deps` installs them")

    from pipeline.crypto.keys import new_key_file
    from pipeline.publish.signing import new_publishing_key_file
    from pipeline.settings import RunConfig

    persons = SIZES[args.size]
    raw = cached_inputs(args.size) / "raw"
    label = f"bench-workers-{args.size}"
    print(f"inputs: {persons:,} people ({raw}); release label {label}; {os.cpu_count()} CPUs")
    results_file = HERE / "results" / f"celery_workers-{args.size}.json"
    results_file.parent.mkdir(exist_ok=True)
    runs: list[dict[str, Any]] = []
    summary: dict[str, Any] = {
        "size": args.size,
        "persons": persons,
        "release_label": label,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "worker_concurrency": 1,
        "runs": runs,
    }
    with tempfile.TemporaryDirectory(prefix="pprl-bench-workers-") as tmp:
        tmp = Path(tmp)
        keys = {"linkage": tmp / "secrets" / "pprl.key.json", "publishing": tmp / "secrets" / "publishing.pem"}
        new_key_file(keys["linkage"])
        new_publishing_key_file(keys["publishing"])
        releases = {}
        for count in WORKER_COUNTS:
            root = tmp / f"workers-{count}"
            # The workers take the keys from their environment (PPRL_KEY_FILE, PPRL_PUBLISHING_KEY_FILE),
            # as in docker-compose.yml, so the run's settings name no key.
            conf = RunConfig.from_conf({"raw_dir": str(raw), "work_dir": str(root / "work"), "release_label": label}).to_conf()
            print(f"\n== {count} worker(s) per queue, one task slot each")
            runs.append(run_with_workers(count, binaries=binaries, conf=conf, keys=keys, root=root, timeout=RUN_TIMEOUT[args.size]))
            print_run(runs[-1])
            releases[count] = RunConfig.from_conf(conf).release_dir
            results_file.write_text(json.dumps(summary, indent=2) + "\n")  # saved after each run, so one that is stopped keeps the first
        one, two = (next(r["wall_seconds"] for r in runs if r["workers_per_queue"] == n) for n in WORKER_COUNTS)
        differences = release_differences(releases[2], releases[1])
    summary["speed_up"] = round(one / two, 2)
    summary["releases_identical"] = not differences
    summary["release_differences"] = differences
    results_file.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nspeed-up, 1 worker / 2 workers per queue: {one:.1f}s / {two:.1f}s = {summary['speed_up']:.2f}")
    print("releases: byte for byte the same (apart from provenance.json and signature.json)" if not differences
          else "releases differ:\n  " + "\n  ".join(differences))  # fmt: skip
    print(f"results written to {results_file}")
    return 0 if not differences else 1


if __name__ == "__main__":
    sys.exit(main())
