"""Child process of the embedded runner: runs DAGs one after another with `dag.test()`.

Airflow reads AIRFLOW_HOME and its config when it is first imported, so this runs in a process the
parent started with the private environment already set (see `embedded.airflow_env`). It reads a
JSON request on stdin, `{"conf": ..., "dags_folder": ..., "dag_ids": [...]}`, and reports to the
parent as JSON lines on the stream that was its stdout. Everything else this process prints,
including Airflow's own logs and the tasks' logs, goes to stderr, which the parent points at a log
file.

    python -m pipeline.orchestration.embedded_child < request.json
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any, TextIO

from pipeline.orchestration import key_holder

# Error messages of these types are written for users and never carry a patient's value, so the
# parent may show them; any other error is only named by type, with the details left in the log.
USER_ERRORS = ("pipeline.errors.PipelineError",)
# Exit codes the parent tells apart.
IMPORT_FAILED, DAG_FAILED = 2, 3


def main() -> int:
    key_holder.keep_sealed_environment_private()
    events = _claim_stdout()
    emit = _emitter(events)
    try:
        request = json.load(sys.stdin)
        return run(request, emit)
    except Exception as err:  # The parent must hear about every way this process can end.
        traceback.print_exc()
        emit("fatal", error=f"{type(err).__name__}: {err}")
        return 1


def run(request: dict[str, Any], emit) -> int:
    started = time.monotonic()
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.listener import get_listener_manager
    from airflow.utils import db

    emit("startup", seconds=time.monotonic() - started)

    started = time.monotonic()
    # upgradedb creates a new database from the ORM, migrates an old one and leaves a current one be,
    # so calling it on every run is the idempotent `airflow db migrate`.
    db.upgradedb()
    emit("migrate", seconds=time.monotonic() - started)

    started = time.monotonic()
    bag = DagBag(dag_folder=request["dags_folder"])
    missing = [dag_id for dag_id in request["dag_ids"] if dag_id not in bag.dags]
    if bag.import_errors or missing:
        emit("dagbag", seconds=time.monotonic() - started, import_errors=dict(bag.import_errors), missing=missing)
        return IMPORT_FAILED
    emit("dagbag", seconds=time.monotonic() - started, import_errors={}, missing=[])

    started = time.monotonic()
    warm_up_task_api()
    emit("warmup", seconds=time.monotonic() - started)

    get_listener_manager().add_listener(progress_listener(emit))
    dag_ids = request["dag_ids"]
    for position, dag_id in enumerate(dag_ids):
        if not any(_has_key_holder_task(bag.get_dag(later)) for later in dag_ids[position:]):
            key_holder.close_sealed_environment()  # the linkage key's seal, kept no longer than needed
        started = time.monotonic()
        emit("dag_start", dag_id=dag_id)
        dag_run = bag.get_dag(dag_id).test(run_conf=request["conf"])
        summary = summarise(dag_run)
        emit("dag_end", seconds=time.monotonic() - started, **summary)
        if summary["state"] != "success":
            return DAG_FAILED
    return 0


def _has_key_holder_task(dag) -> bool:
    from pipeline.tasks import KEY_HOLDER_TASKS

    return any(task_id in KEY_HOLDER_TASKS for task_id in dag.task_ids)


def warm_up_task_api() -> None:
    """Start dag.test()'s in-process task API now, so the first task's duration is its own.

    Building that API takes seconds and otherwise lands inside the first task's timing. It is an
    internal of Airflow's, so if it moves the run still works, only the first timing is inflated.
    """
    try:
        import httpx
        from airflow.sdk.execution_time.supervisor import in_process_api_server

        with httpx.Client(transport=in_process_api_server().transport, base_url="http://in-process.invalid") as client:
            client.get("/execution/health")
    except Exception:
        traceback.print_exc()
        print("warm-up of the in-process task API failed; carrying on without it", file=sys.stderr)


def summarise(run) -> dict[str, Any]:
    """State of the run and of each task instance, and each task's return value (paths, small dicts)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    tasks = []
    for ti in sorted(run.get_task_instances(), key=lambda ti: (ti.start_date is None, ti.start_date, ti.map_index)):
        tasks.append(
            {
                "task_id": ti.task_id,
                "map_index": ti.map_index,
                "label": task_label(ti.task_id, ti.map_index, ti.rendered_map_index),
                "state": _state(ti.state),
                "seconds": ti.duration,
                "tries": ti.try_number,
                # When it ran (UTC), so a bench can tell which task a memory sample fell in.
                "started": ti.start_date.isoformat() if ti.start_date else None,
                "ended": ti.end_date.isoformat() if ti.end_date else None,
            }
        )
    outputs: dict[str, Any] = {}
    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=run.run_id, dag_ids=run.dag_id, key="return_value")).all()
        for row in sorted(rows, key=lambda row: (row.task_id, row.map_index)):
            value = XComModel.deserialize_value(row)
            if row.map_index < 0:
                outputs[row.task_id] = value
            else:
                outputs.setdefault(row.task_id, []).append(value)
    return {"dag_id": run.dag_id, "run_id": run.run_id, "state": _state(run.state), "tasks": tasks, "outputs": outputs}


def _state(state: Any) -> str | None:
    """A state as plain text; Airflow hands out enums in some places and strings in others."""
    return None if state is None else str(getattr(state, "value", state))


def task_label(task_id: str, map_index: int | None, rendered: str | None) -> str:
    """`task`, or `task[source]` for a mapped task instance (its map index when it has no name)."""
    if map_index is None or map_index < 0:
        return task_id
    return f"{task_id}[{rendered or map_index}]"


def progress_listener(emit):
    """An Airflow listener that reports each task instance as it finishes, with its duration.

    Built inside a function so that importing this module does not import Airflow before stdout
    has been claimed for reports.
    """
    from airflow.listeners import hookimpl

    def report(ti, state: str, error: BaseException | str | None = None) -> None:
        seconds = None
        if ti.start_date and ti.end_date:
            seconds = (ti.end_date - ti.start_date).total_seconds()
        label = task_label(ti.task_id, ti.map_index, getattr(ti, "rendered_map_index", None))
        emit("task", dag_id=ti.dag_id, label=label, state=state, seconds=seconds, tries=ti.try_number,
             error=describe_error(error))

    class ProgressListener:
        @hookimpl
        def on_task_instance_success(self, previous_state, task_instance):
            report(task_instance, "success")

        @hookimpl
        def on_task_instance_failed(self, previous_state, task_instance, error):
            # Called for a failure that will be retried too; the instance's state tells them apart.
            report(task_instance, _state(task_instance.state) or "failed", error)

        @hookimpl
        def on_task_instance_skipped(self, previous_state, task_instance):
            report(task_instance, "skipped")

    return ProgressListener()


def describe_error(error: BaseException | str | None) -> str | None:
    """The error as the parent may show it: the message for user errors, the type otherwise."""
    if error is None:
        return None
    if isinstance(error, str):
        return None  # Airflow's own description of a failure; it stays in the log.
    names = {f"{cls.__module__}.{cls.__qualname__}" for cls in type(error).__mro__}
    if names & set(USER_ERRORS):
        return f"{type(error).__name__}: {error}"
    return f"{type(error).__name__} (details in the log)"


def _claim_stdout() -> TextIO:
    """Keep stdout for reports to the parent and send everything else printed to stderr (the log)."""
    sys.stdout.flush()
    events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    return events


def _emitter(stream: TextIO):
    def emit(event: str, **fields: Any) -> None:
        stream.write(json.dumps({"event": event, **fields}, default=str) + "\n")
        stream.flush()

    return emit


if __name__ == "__main__":
    sys.exit(main())
