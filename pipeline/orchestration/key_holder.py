"""The key holder's tasks, each in a fresh interpreter of its own, so the key never enters the caller.

The embedded default runs every task of the three DAGs in one process (`dag.test()`), so a key
loaded there by the consent gate would still be in memory when the same process links and
publishes. `pipeline.tasks` therefore hands each key holder's task (the tasks of `pprl_pseudonymise`:
they read raw/ and the key) to a child started with `python -m pipeline.orchestration.key_holder`:
a new interpreter, not a fork, so it inherits none of the caller's state and takes its key and
its raw rows with it when it ends. The caller never imports a key module.

    >>> run_in_key_holder("check_inputs", conf) == str(inputs_file(cfg))  # doctest: +SKIP
    True

The child reports one JSON line on the stream that was its stdout: `{"output": ...}`, or for a
PipelineError `{"error": {"type", "message", ...}}`, which the caller raises again as the same
class with the same message, so the task log and the embedded runner's summary read as if the task
had run in place. Any other failure is named by type only; its traceback is in the task log, where
the child's stderr goes.

A key given in the environment, as Airflow's environment-variable secrets backend takes it
(`AIRFLOW_CONN_PPRL_KEY`, `AIRFLOW_VAR_PPRL_KEY`), must not be inherited by the caller either: every
process of the same user can read a process's environment in /proc/<pid>/environ, and every process
the caller starts (validation workers, DuckDB, Spark's JVM) would inherit it. So the embedded runner
starts Airflow without those variables and seals them instead (`sealed_key_environment`): an
anonymous in-memory file (memfd) whose descriptor the Airflow process holds without reading and
passes to each key holder's child alone; the child reads it, closes it, and puts the variables in its
own environment, where the key's loader looks. The Airflow process closes its descriptor once no DAG
left to run has a key holder's task (`close_sealed_environment`). The publishing key given the same way
(`AIRFLOW_CONN_PPRL_PUBLISHING_KEY`, `AIRFLOW_VAR_PPRL_PUBLISHING_KEY`) is sealed beside it, in a
memfd the Airflow process keeps to itself (never passed on): its publish task signs in place and
puts the key's variable in its environment only while it looks the key up
(`pipeline.secret_store.unsealed_publishing_key`).

`KEY_HOLDER_PROCESS` set to `in-process` runs the task in the caller instead. The Celery key holder
worker does (docker-compose.yml): Airflow runs each of its tasks in a task process of its own, on a
worker that runs nothing else, so the worker is the boundary there, and the task can still ask the
Task Execution API for an Airflow connection `pprl_key` kept in the metadata database (a child
outside the task runner cannot). The tests' stage runner does too, to watch every write.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Iterator, Mapping
from typing import Any

from pipeline import errors
from pipeline.secret_store import (
    KEY_IN_ENVIRONMENT,
    PUBLISHING_KEY_IN_ENVIRONMENT,
    PUBLISHING_SEALED_FD_VARIABLE,
    PUBLISHING_SEALED_NAME,
    read_seal,
    seal,
)

KEY_HOLDER_PROCESS = "PPRL_KEY_HOLDER_PROCESS"
CHILD, IN_PROCESS = "child", "in-process"
CHILD_MODULE = "pipeline.orchestration.key_holder"
# The number of the file descriptor holding the sealed key variables, in the environment of the
# processes that pass it on (the embedded Airflow process) or read it (a key holder's child).
SEALED_FD_VARIABLE = "PPRL_KEY_HOLDER_SEALED_FD"
# The memfd's name, as /proc/<pid>/fd shows it; it names no key.
SEALED_NAME = "pprl-key-holder"


def mode() -> str:
    """`child` (the default) or `in-process`; anything else is refused rather than guessed."""
    value = os.environ.get(KEY_HOLDER_PROCESS, "").strip() or CHILD
    if value not in (CHILD, IN_PROCESS):
        raise errors.PipelineError(
            f"environment variable {KEY_HOLDER_PROCESS}: rule 'one of {CHILD}, {IN_PROCESS}' broken (got {value!r}); "
            f"unset it to run the key holder's tasks in a child process of their own"
        )
    return value


@contextlib.contextmanager
def sealed_key_environment(environ: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """Seal the keys' variables set in `environ`: the linkage key's (`KEY_IN_ENVIRONMENT`) for the key
    holder's children, the publishing key's (`PUBLISHING_KEY_IN_ENVIRONMENT`) for the process itself,
    whose publish task signs.

    Yields what to add to the environment of the process that will hold them: `SEALED_FD_VARIABLE`
    and `PUBLISHING_SEALED_FD_VARIABLE` naming file descriptors to pass it (`pass_fds`), each only
    when one of its variables is set. The caller starts that process without the variables themselves
    (`embedded.airflow_env` drops them). The descriptors are closed here on leaving; the process they
    were passed to holds its own.
    """
    seals = {
        SEALED_FD_VARIABLE: (SEALED_NAME, {name: environ[name] for name in KEY_IN_ENVIRONMENT if environ.get(name)}),
        PUBLISHING_SEALED_FD_VARIABLE: (PUBLISHING_SEALED_NAME, {name: environ[name] for name in PUBLISHING_KEY_IN_ENVIRONMENT if environ.get(name)}),
    }
    fds: dict[str, int] = {}
    try:
        for variable, (name, values) in seals.items():
            if values:
                fds[variable] = seal(values, name)
        yield {variable: str(fd) for variable, fd in fds.items()}
    finally:
        for fd in fds.values():
            os.close(fd)


def _sealed_fd() -> int | None:
    """The sealed key variables' descriptor this process was given, if any."""
    value = os.environ.get(SEALED_FD_VARIABLE, "")
    return int(value) if value.isdigit() else None


def keep_sealed_environment_private() -> None:
    """Called first thing by a process given the seals: no process it starts inherits a descriptor
    unless it is passed on by name (the linkage key's, by `run_in_key_holder`; the publishing key's,
    never)."""
    for value in (os.environ.get(SEALED_FD_VARIABLE, ""), os.environ.get(PUBLISHING_SEALED_FD_VARIABLE, "")):
        if value.isdigit():
            os.set_inheritable(int(value), False)


def close_sealed_environment() -> None:
    """Let go of the sealed key variables: no task left to run in this process needs them."""
    if (fd := _sealed_fd()) is not None:
        del os.environ[SEALED_FD_VARIABLE]
        with contextlib.suppress(OSError):
            os.close(fd)


def _open_seal() -> None:
    """In a key holder's child: read the sealed key variables into this environment and close the seal."""
    if (fd := _sealed_fd()) is None:
        return
    try:
        sealed = read_seal(fd)
    finally:
        close_sealed_environment()
    os.environ.update(sealed)


def run_in_key_holder(task: str, conf: dict[str, Any], *args: str) -> str:
    """Run `pipeline.tasks.<task>(conf, *args)` in a fresh child interpreter; return its output path."""
    request = json.dumps({"task": task, "conf": conf, "args": list(args)})
    sealed = _sealed_fd()
    child = subprocess.Popen(
        [sys.executable, "-m", CHILD_MODULE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        # Inherited: the child's logs and any traceback land in the task's own log.
        stderr=None,
        # The sealed key variables, to this child alone; not the publishing key's descriptor's number.
        pass_fds=() if sealed is None else (sealed,),
        env={name: value for name, value in os.environ.items() if name != PUBLISHING_SEALED_FD_VARIABLE},
        text=True,
        encoding="utf-8",
    )
    try:
        reply, _ = child.communicate(request)
    finally:
        # The task was stopped (Airflow's SIGTERM, Ctrl-C): stop the child with it.
        if child.poll() is None:
            child.kill()
            child.wait()
    lines = [line for line in reply.splitlines() if line.strip()]
    result = json.loads(lines[-1]) if lines else {}
    if "output" in result and child.returncode == 0:
        return result["output"]
    if "error" in result:
        raise rebuild_error(result["error"])
    failure = result.get("crash") or f"exit code {child.returncode}"
    raise RuntimeError(f"key holder task {task} failed in its child process ({failure}); the traceback is in the task log above")


def describe(err: errors.PipelineError) -> dict[str, Any]:
    """What the caller needs to raise `err` again: its class (when pipeline.errors has it) and message."""
    cls = type(err)
    known = cls.__module__ == errors.__name__ and getattr(errors, cls.__name__, None) is cls
    found = {"type": cls.__name__ if known else "PipelineError", "message": str(err)}
    if isinstance(err, errors.ContractError):
        found["violations"] = [vars(v) for v in err.violations]
    return found


def rebuild_error(found: dict[str, Any]) -> errors.PipelineError:
    """The child's PipelineError in the caller: the same class, the same message (and violations).

    Only classes of pipeline.errors are rebuilt, so nothing the child says makes the caller import
    another module (a key module among them).
    """
    cls = getattr(errors, str(found.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.PipelineError)):
        cls = errors.PipelineError
    err = cls.__new__(cls)
    errors.PipelineError.__init__(err, found["message"])
    if issubclass(cls, errors.ContractError):
        err.violations = [errors.Violation(**v) for v in found.get("violations", [])]
    return err


# --- the child ------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def main() -> int:
    # Stdout carries the one reply; everything else printed goes to stderr, the task log.
    sys.stdout.flush()
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    # Ends with its caller however the caller ends, even by SIGKILL (Linux only; elsewhere the caller's
    # `finally` stops it on every end but SIGKILL).
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    try:
        _open_seal()
        request = json.load(sys.stdin)
        os.environ[KEY_HOLDER_PROCESS] = IN_PROCESS  # the child runs the task itself, never a grandchild
        from pipeline import tasks

        reply: dict[str, Any] = {"output": tasks.run_key_holder_task(request["task"], request["conf"], *request["args"])}
        code = 0
    except errors.PipelineError as err:
        reply, code = {"error": describe(err)}, 1
    except BaseException as err:  # the caller must hear about every way the task can end
        traceback.print_exc()
        reply, code = {"crash": type(err).__name__}, 1
    replies.write(json.dumps(reply) + "\n")
    replies.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
