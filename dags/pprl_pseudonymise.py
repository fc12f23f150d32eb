"""
### Pseudonymise: identifiable extracts in, tokens out

First of three DAGs (`pprl_pseudonymise` → `pprl_link` → `pprl_publish`). Trigger it by hand, from
the REST API or the CLI with the run settings below; the other two follow through assets.

| task | calls | writes |
| --- | --- | --- |
| `preflight` | `pipeline.tasks.preflight` | nothing but the run's record: checks, before any work, that the label is free (or `replace_release` is set), the inputs, key file and unit-cost table are there; lists every problem at once |
| `check_inputs` | `pipeline.tasks.check_inputs` | input manifest: every extract checked against its contract in `schemas/`, with hashes and row counts |
| `consent_gate` | `pipeline.tasks.consent_gate` | pseudonymised persons: consented, not-withdrawn participants only, tokenised |
| `pseudonymise_source` | `pipeline.tasks.pseudonymise_source` | one mapped task per service-use source (named by source in the UI) |
| `validate_pseudonymised` | `pipeline.tasks.validate_pseudonymised` | validation report of the `pseudonymised/` zone; emits asset `pprl_pseudonymised` |

Only these tasks read `raw/` and the linkage key. They run on the Celery queue `keyholder`, served
by the key holder's worker alone, the only one that mounts the key and `raw/`; in the embedded
default each runs in a child process of its own, so the key never reaches the process that links
and publishes. Everything is written under
`<work_dir>/<zone>/<release_label>/`, so runs with different labels never touch each other's files,
and rerunning a task (clear it in the UI) overwrites its own output.

The asset event carries the run's settings and is partitioned by release label: `pprl_link` starts
one run per label, with exactly these settings. A task failing with a `PipelineError` (bad input or
settings) is not retried: read the task log, fix the input, clear the task.
"""

from __future__ import annotations

from airflow.sdk import dag, get_current_context, task

from pipeline.orchestration.assets import PSEUDONYMISE_DAG, PSEUDONYMISED
from pipeline.orchestration.conf import announce, resolve_conf, run_facts
from pipeline.orchestration.defaults import KEY_HOLDER_QUEUE, default_args, run_params
from pipeline.settings import SOURCES


@dag(
    dag_id=PSEUDONYMISE_DAG,
    schedule=None,
    params=run_params(filled_by_upstream=False),
    default_args=default_args(queue=KEY_HOLDER_QUEUE),
    # Nothing here runs on a clock, so unpaused is safe: a run starts only when someone triggers it.
    is_paused_upon_creation=False,
    tags=["pprl", "pseudonymise"],
    doc_md=__doc__,
)
def pprl_pseudonymise():
    # Each task resolves the run's conf itself instead of pulling it from an upstream task's XCom, so
    # any one task can be cleared and rerun on its own and still sees the same settings.
    @task
    def preflight() -> str:
        from pipeline import tasks

        context = get_current_context()
        return tasks.preflight(resolve_conf(context), run=run_facts(context))

    @task
    def check_inputs() -> str:
        from pipeline import tasks

        return tasks.check_inputs(resolve_conf(get_current_context()))

    @task
    def consent_gate() -> str:
        from pipeline import tasks

        return tasks.consent_gate(resolve_conf(get_current_context()))

    @task(map_index_template="{{ source }}")
    def pseudonymise_source(source: str) -> str:
        from pipeline import tasks

        context = get_current_context()
        # Names the mapped task instance after its source in the UI, instead of a bare index.
        context["source"] = source
        return tasks.pseudonymise_source(resolve_conf(context), source)

    @task(outlets=[PSEUDONYMISED])
    def validate_pseudonymised() -> str:
        from pipeline import tasks

        context = get_current_context()
        conf = resolve_conf(context)
        path = tasks.validate_pseudonymised(conf)
        announce(context, PSEUDONYMISED, conf, path)
        return path

    preflight() >> check_inputs() >> consent_gate() >> pseudonymise_source.expand(source=list(SOURCES)) >> validate_pseudonymised()


pprl_pseudonymise()
