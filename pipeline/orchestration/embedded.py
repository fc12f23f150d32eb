"""The embedded default runner: the pipeline's three DAGs, one after another, on a private Airflow home.

    >>> result = run_embedded(conf, Path("~/.pprl/airflow").expanduser())  # doctest: +SKIP
    pseudonymise: check_inputs ✓ 3.1s
    ...
      … validate: 1,200,000 of 3,400,000 rows (35%), 1m00s elapsed, about 1m50s left
    >>> result["release_path"]  # doctest: +SKIP

Each DAG runs with `dag.test(run_conf=conf)`, which runs its tasks in order in one process, with no
scheduler and no asset triggers; so every DAG gets the same conf directly. Airflow reads AIRFLOW_HOME
and its config when first imported, so the DAGs run in a child process (`embedded_child`) started
with a private environment: SQLite metadata database, config and logs all inside `airflow_home`.
This module never imports Airflow itself. Besides each task's end, it prints the progress long
stages report every minute (pipeline.progress), read from a file beside the log.

A linkage key given in the environment (`AIRFLOW_CONN_PPRL_KEY`, `AIRFLOW_VAR_PPRL_KEY`) is kept out
of the Airflow process, which links and publishes too: it is sealed for the key holder's children
(pipeline.orchestration.key_holder), the only processes that read it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.orchestration import PIPELINE_DAGS
from pipeline.orchestration.embedded_child import IMPORT_FAILED
from pipeline.orchestration.key_holder import CHILD, KEY_HOLDER_PROCESS, sealed_key_environment
from pipeline.progress import FILE_VARIABLE as PROGRESS_FILE_VARIABLE
from pipeline.secret_store import KEY_IN_ENVIRONMENT, PUBLISHING_KEY_IN_ENVIRONMENT
from pipeline.settings import REPO_DIR, RunConfig

DAGS_FOLDER = REPO_DIR / "dags"
CHILD_MODULE = "pipeline.orchestration.embedded_child"
RELEASE_TASK = "publish_release"
_MARKS = {"success": "✓", "failed": "✗", "up_for_retry": "↻ will retry", "skipped": "–"}


class EmbeddedRunFailed(PipelineError):
    """An embedded run failed; says where (DAG, task) and which log file tells the whole story."""

    def __init__(self, message: str, *, log_file: Path, dag_id: str | None = None, task: str | None = None):
        super().__init__(f"{message} Full log: {log_file}")
        self.log_file, self.dag_id, self.task = log_file, dag_id, task


def run_embedded(
    conf: dict[str, Any],
    airflow_home: Path,
    progress: Callable[[str], None] = print,
    *,
    dags_folder: Path | None = None,
    dag_ids: Sequence[str] = PIPELINE_DAGS,
) -> dict[str, Any]:
    """Run `dag_ids` in order with `conf`; return per-DAG states, durations and the release path.

    Raises EmbeddedRunFailed (a PipelineError) naming the DAG and the task that failed and the log
    file to read; the DAGs after a failed one are not run. `dags_folder` and `dag_ids` default to the pipeline's own.
    """
    conf = RunConfig.from_conf(conf).to_conf()  # Bad settings fail here, before Airflow starts.
    from pipeline.crypto.keys import refuse_key_in_environment

    # So does a key in PPRL_KEY (KeyEnvironmentError), which the run would otherwise refuse only once
    # the key holder first loaded it, after the input check.
    refuse_key_in_environment()
    home = Path(airflow_home).expanduser().resolve()
    folder = Path(dags_folder or DAGS_FOLDER).expanduser().resolve()
    log_dir = home / "logs" / "embedded"
    log_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    log_path = log_dir / f"{stamp}-{conf['release_label']}.log"
    # Long stages report here every minute (pipeline.progress), from whichever process they run in.
    progress_path = log_dir / f"{stamp}-{conf['release_label']}.progress.jsonl"
    env = {**airflow_env(home, folder), PROGRESS_FILE_VARIABLE: str(progress_path)}
    request = {"conf": conf, "dags_folder": str(folder), "dag_ids": list(dag_ids)}
    fresh_database = not (home / "airflow.db").exists()

    started = time.monotonic()
    with _exclusive(home), open(log_path, "wb") as log, sealed_key_environment(os.environ) as sealed:
        progress(f"airflow: home {home}, log {log_path}")
        report = _Report(progress, log_path, fresh_database)
        tail = _ProgressTail(progress_path, progress)
        tail.start()
        child = subprocess.Popen(
            [sys.executable, "-m", CHILD_MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env={**env, **sealed},
            # The keys' variables, sealed: the Airflow process passes the linkage key's on to the key
            # holder's children unread, and reads the publishing key's only while it signs.
            pass_fds=[int(fd) for fd in sealed.values()],
            cwd=home,
            text=True,
            encoding="utf-8",
        )
        try:
            child.stdin.write(json.dumps(request))
            child.stdin.close()
            for line in child.stdout:
                tail.catch_up()  # progress said before a task ended is printed before its end
                report.handle(line)
            returncode = child.wait()
        finally:
            # Ctrl-C or an error in a progress callback must not leave Airflow running.
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    child.kill()
            tail.finish()
    report.check(returncode, list(dag_ids))
    return report.result(home, time.monotonic() - started)


def airflow_env(airflow_home: Path, dags_folder: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a private Airflow: everything inside `airflow_home`, DAGs from `dags_folder`.

    Inherited Airflow settings (AIRFLOW__*, AIRFLOW_HOME, AIRFLOW_CONFIG) are dropped, so a shell set
    up for a production Airflow cannot point the embedded run at its database. Connections and
    variables given as AIRFLOW_CONN_* / AIRFLOW_VAR_* are kept, but not those that hold a key
    (`KEY_IN_ENVIRONMENT`, `PUBLISHING_KEY_IN_ENVIRONMENT`): `run_embedded` seals the linkage key's for
    the key holder's children and the publishing key's for the publish task, which signs in the
    Airflow process itself. The key holder's tasks always run in child processes of their own here
    (whatever the caller's environment says), since dag.test() runs linkage and publishing in the
    same process after them.
    """
    home = Path(airflow_home).resolve()
    env = {
        name: value
        for name, value in (os.environ if base is None else base).items()
        if not name.startswith("AIRFLOW__")
        and name not in ("AIRFLOW_HOME", "AIRFLOW_CONFIG", *KEY_IN_ENVIRONMENT, *PUBLISHING_KEY_IN_ENVIRONMENT)
    }
    pythonpath = [str(REPO_DIR)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(Path(dags_folder).resolve()),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(home / "logs"),
        PYTHONPATH=os.pathsep.join(pythonpath),
    )
    env[KEY_HOLDER_PROCESS] = CHILD
    return env


@contextlib.contextmanager
def _exclusive(home: Path) -> Iterator[None]:
    """One embedded run per Airflow home at a time: SQLite and dag.test() are not made to share."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".embedded.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(
                f"another embedded run is using the Airflow home {home}; wait for it to finish or "
                "choose another Airflow home"
            ) from None
        yield


class _ProgressTail(threading.Thread):
    """Passes the progress file's new lines (pipeline.progress) to `say` as they are written."""

    def __init__(self, path: Path, say: Callable[[str], None], poll_seconds: float = 0.5):
        super().__init__(name="embedded progress", daemon=True)
        self.path, self.say, self.poll_seconds = path, say, poll_seconds
        self.position = 0
        self.stopping = threading.Event()
        self.reading = threading.Lock()

    def run(self) -> None:
        while not self.stopping.wait(self.poll_seconds):
            self.catch_up()
        self.catch_up()

    def catch_up(self) -> None:
        """Pass on every complete line written so far."""
        with self.reading:
            self._read_new_lines()

    def finish(self) -> None:
        self.stopping.set()
        self.join(timeout=5)

    def _read_new_lines(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as stream:
                stream.seek(self.position)
                text = stream.read()
        except FileNotFoundError:
            return
        complete, _, _ = text.rpartition("\n")  # a line still being written waits for the next look
        if not complete:
            return
        self.position += len((complete + "\n").encode("utf-8"))
        for line in complete.splitlines():
            try:
                self.say(f"  … {json.loads(line)['message']}")
            except (json.JSONDecodeError, KeyError, TypeError):
                continue


class _Report:
    """Turns the child's JSON events into progress lines, a result dict, or a PipelineError."""

    def __init__(self, progress: Callable[[str], None], log_path: Path, fresh_database: bool):
        self.progress = progress
        self.log_path = log_path
        self.fresh_database = fresh_database
        self.overhead: dict[str, float] = {}
        self.dags: dict[str, dict[str, Any]] = {}
        self.errors: dict[tuple[str, str], str] = {}
        self.import_errors: dict[str, str] = {}
        self.missing: list[str] = []
        self.fatal: str | None = None
        self.spawned = time.monotonic()

    def handle(self, line: str) -> None:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            return  # Not a report; the child sends everything else to the log.
        kind = event.pop("event", None)
        if kind in ("startup", "migrate", "dagbag", "warmup"):
            self.overhead[kind] = event["seconds"]
            if kind == "dagbag":
                self.import_errors, self.missing = event["import_errors"], event["missing"]
            if kind == "warmup":
                self._say_ready()
        elif kind == "task":
            self._say_task(event)
        elif kind == "dag_end":
            self.dags[event["dag_id"]] = event
            self.progress(f"{_short(event['dag_id'])}: {event['state']} in {event['seconds']:.1f}s")
        elif kind == "fatal":
            self.fatal = event["error"]

    def _say_ready(self) -> None:
        # Measured here, from spawning the child, so the interpreter's own start-up is counted too.
        o = self.overhead
        o["ready"] = time.monotonic() - self.spawned
        database = "created" if self.fresh_database else "checked"
        self.progress(
            f"airflow: ready in {o['ready']:.1f}s (imports {o.get('startup', 0):.1f}s, "
            f"database {database} {o.get('migrate', 0):.1f}s, DAGs parsed {o.get('dagbag', 0):.1f}s, "
            f"task API {o.get('warmup', 0):.1f}s)"
        )

    def _say_task(self, event: dict[str, Any]) -> None:
        mark = _MARKS.get(event["state"], event["state"])
        seconds = f" {event['seconds']:.1f}s" if event.get("seconds") is not None else ""
        line = f"{_short(event['dag_id'])}: {event['label']} {mark}{seconds}"
        if event.get("error"):
            # The progress line gets the error's first line; the PipelineError raised at the end, all of it.
            self.errors[(event["dag_id"], event["label"])] = event["error"]
            first, *rest = event["error"].splitlines()
            line += f"  ({first}{' …' if rest else ''})"
        self.progress(line)

    def check(self, returncode: int, dag_ids: list[str]) -> None:
        """Raise EmbeddedRunFailed unless every DAG ran and every task instance succeeded."""
        log = self.log_path
        if returncode == IMPORT_FAILED or self.import_errors or self.missing:
            problems = [f"{path}: {error.strip().splitlines()[-1]}" for path, error in self.import_errors.items()]
            problems += [f"no DAG with id '{dag_id}' in the DAG folder" for dag_id in self.missing]
            listing = "\n  ".join(problems)
            raise EmbeddedRunFailed(f"the DAG files could not be loaded:\n  {listing}\n", log_file=log)
        for position, dag_id in enumerate(dag_ids):
            run = self.dags.get(dag_id)
            if run is None:
                why = f" ({self.fatal})" if self.fatal else ""
                message = f"the embedded Airflow stopped before {dag_id} finished{why}."
                raise EmbeddedRunFailed(message, log_file=log, dag_id=dag_id)
            failed = [task for task in run["tasks"] if task["state"] != "success"]
            if run["state"] != "success" or failed:
                # The task that failed itself, not the ones only left undone because of it.
                culprits = [task for task in failed if task["state"] == "failed"] or failed
                message = self._failure(run, culprits, dag_ids[position + 1 :])
                task = culprits[0]["label"] if culprits else None
                raise EmbeddedRunFailed(message, log_file=log, dag_id=dag_id, task=task)
        if returncode != 0:
            raise EmbeddedRunFailed(f"the embedded Airflow exited with code {returncode}.", log_file=log)

    def _failure(self, run: dict[str, Any], culprits: list[dict[str, Any]], skipped_dags: list[str]) -> str:
        dag_id = run["dag_id"]
        parts = []
        for task in culprits:
            error = self.errors.get((dag_id, task["label"]))
            parts.append(f"task '{task['label']}' {task['state']}" + (f": {error}" if error else ""))
        message = f"DAG {dag_id} {run['state']}: " + "; ".join(parts or ["no task failed, see the log"]) + "."
        if skipped_dags:
            message += f" Not run: {', '.join(skipped_dags)}."
        return message

    def result(self, home: Path, seconds: float) -> dict[str, Any]:
        dags = {
            dag_id: {key: run[key] for key in ("state", "run_id", "seconds", "tasks", "outputs")}
            for dag_id, run in self.dags.items()
        }
        last = list(dags.values())[-1]["outputs"] if dags else {}
        return {
            "state": "success",
            "dags": dags,
            "release_path": last.get(RELEASE_TASK),
            "airflow_home": str(home),
            "log_file": str(self.log_path),
            "overhead_seconds": dict(self.overhead),
            "seconds": seconds,
        }


def _short(dag_id: str) -> str:
    return dag_id.removeprefix("pprl_")
