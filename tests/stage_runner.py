"""The pipeline's stages run in order without Airflow, for the reliability tests, in the test process
or in a child process that the tests can kill.

A run is the list of `STEPS`: every task of pipeline.tasks in the DAGs' order, the pseudonymise
task once per source (as Airflow maps it). As a script it runs some of them in a child process:

    python tests/stage_runner.py '{"conf": {...}, "first": "link", "crash": {"step": "link", "write": 2}}'

With `crash`, the child counts the outputs its `step` writes through pipeline.io.atomic_path (every
output of the pipeline goes through it) and, when the `write`-th one is complete under its temporary
name but not yet renamed into place, stops itself with SIGSTOP: a fixed point in the middle of the
stage, however loaded the machine. The test then kills it with SIGKILL, as a crash or an OOM kill
would, and reruns. `count_writes` gives the number of such writes per step of a whole run, so a test
can pick the middle one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import io, tasks  # noqa: E402
from pipeline.orchestration.key_holder import IN_PROCESS, KEY_HOLDER_PROCESS  # noqa: E402

# The key holder's tasks run here, not in child interpreters of their own: the watcher below sees
# only this process's writes through pipeline.io.atomic_path, and the crash tests stop this process
# at one of them. The child path is tested in tests/test_key_holder.py and by every embedded run.
os.environ[KEY_HOLDER_PROCESS] = IN_PROCESS
from pipeline.settings import SOURCES  # noqa: E402

STEPS: tuple[str, ...] = tuple(
    step for stage in tasks.STAGES for step in ([f"{stage}:{s}" for s in SOURCES] if stage == "pseudonymise_source" else [stage])
)


def steps(first: str | None = None, last: str | None = None) -> list[str]:
    """The steps from `first` to `last`, both included (default: the whole run)."""
    start = STEPS.index(first) if first else 0
    stop = STEPS.index(last) + 1 if last else len(STEPS)
    return list(STEPS[start:stop])


def run_step(conf: dict, step: str) -> str:
    stage, _, source = step.partition(":")
    return tasks.pseudonymise_source(conf, source) if source else getattr(tasks, stage)(conf)


def run_steps(conf: dict, first: str | None = None, last: str | None = None) -> None:
    for step in steps(first, last):
        run_step(conf, step)


def new_run(base: Path, label: str, *, persons: int, seed: int, profile: str = "realistic") -> dict:
    """Synthetic extracts in `base/input`, a linkage key and a publishing key (with its public key,
    `publishing.pem.pub`) in `base/secrets`, and the conf of a run of `label` with its work folder in
    `base/work`; nothing run yet."""
    from pipeline.crypto.keys import new_key_file
    from pipeline.publish.signing import new_publishing_key_file
    from pipeline.settings import RunConfig
    from pipeline.synth import generate

    generate(base / "input", persons=persons, seed=seed, profile=profile)
    new_key_file(base / "secrets" / "key.json")
    new_publishing_key_file(base / "secrets" / "publishing.pem")
    return RunConfig.from_conf(
        {"raw_dir": str(base / "input" / "raw"), "work_dir": str(base / "work"), "release_label": label,
         "key_file": str(base / "secrets" / "key.json"), "publishing_key_file": str(base / "secrets" / "publishing.pem")}
    ).to_conf()


def trusted(conf: dict):
    """The publishing key a governance officer would trust for a run made by `new_run` (its .pub file)."""
    from pipeline.publish.signing import public_key_path, trusted_key

    return trusted_key(public_key_file=public_key_path(Path(conf["publishing_key_file"])))


_current: dict[str, object] = {"step": None, "writes": 0}


@contextlib.contextmanager
def watching_writes(on_write) -> Iterator[None]:
    """Call `on_write(step, n, final)` after the n-th output of a step is written under its temporary
    name and before it is renamed over `final`."""
    real = io.atomic_path

    @contextlib.contextmanager
    def watched(final: Path, **options):
        with real(final, **options) as tmp:
            yield tmp
            _current["writes"] = int(_current["writes"]) + 1
            on_write(_current["step"], _current["writes"], Path(final))

    io.atomic_path = watched
    try:
        yield
    finally:
        io.atomic_path = real


def run_watched(conf: dict, on_write, first: str | None = None, last: str | None = None) -> None:
    with watching_writes(on_write):
        for step in steps(first, last):
            _current.update(step=step, writes=0)
            run_step(conf, step)


def count_writes(conf: dict) -> dict[str, int]:
    """Run the whole pipeline; return how many outputs each step wrote through atomic_path."""
    counts: dict[str, int] = {}

    def on_write(step, n, final):
        counts[step] = n

    run_watched(conf, on_write)
    return counts


def main(request: dict) -> int:
    crash = request.get("crash")

    def on_write(step, n, final):
        if crash and step == crash["step"] and n == crash["write"]:
            print(json.dumps({"stopped_before_renaming": str(final)}), flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)

    run_watched(request["conf"], on_write, request.get("first"), request.get("last"))
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
