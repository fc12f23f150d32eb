"""
### Link: survey participants to their service-use records, on tokens only

Second of three DAGs. Runs when `pprl_pseudonymise` emits asset `pprl_pseudonymised`: one run per
release label, with the settings carried on that asset event (the Params below are then ignored).

| task | calls | writes |
| --- | --- | --- |
| `prepare_link` | `pipeline.tasks.prepare_link` | nothing but the link stage's work folder: checks every token file is there, made under one key id and this token spec |
| `link_ranks` | `pipeline.tasks.link_ranks` | one mapped task per source (named by source in the UI): its identity profiles and deterministic ranks 1-5 |
| `model_participants` | `pipeline.tasks.model_participants` | the participants as the model compares them, with the addresses every source's ranks 1-4 found |
| `link_rank_p` | `pipeline.tasks.link_rank_p` | one mapped task per source: the probabilistic rank P for what ranks 1-5 left, and its Splink model |
| `write_link_map` | `pipeline.tasks.write_link_map` | link map, linkage quality report and summary under `linked/<release_label>/` |
| `validate_linked` | `pipeline.tasks.validate_linked` | validation report of the `linked/` zone; emits asset `pprl_linked` |

The per-source tasks are mapped, so with more than one Celery worker (or `worker_concurrency` above
one) different sources are linked side by side; the embedded default runs them one after another.
Each step reads what the steps before it left in `linked/<release_label>/.work/`, which
`write_link_map` removes when it ends.

This DAG never reads `raw/` or the linkage key. To rerun it by hand (say, after a linkage fix), trigger
it with the same raw_dir, work_dir and release_label as the pseudonymise run; it rewrites only that
label's `linked/` folder and, on success, starts `pprl_publish` for the label. To rerun part of a run,
clear from `prepare_link`: a task cleared on its own finds the work folder of the run before it.
"""

from __future__ import annotations

from airflow.sdk import PartitionedAssetTimetable, dag, get_current_context, task

from pipeline.orchestration.assets import LINK_DAG, LINKED, PSEUDONYMISED
from pipeline.orchestration.conf import announce, resolve_conf, run_facts
from pipeline.orchestration.defaults import default_args, run_params
from pipeline.settings import SOURCES


@dag(
    dag_id=LINK_DAG,
    # Partitioned by release label: two labels finishing pseudonymisation together still get two
    # link runs, each seeing only its own event, where a plain asset schedule would merge them.
    schedule=PartitionedAssetTimetable(assets=PSEUDONYMISED),
    params=run_params(filled_by_upstream=True),
    default_args=default_args(),
    # Nothing here runs on a clock, so unpaused is safe, and the asset chain needs the downstream
    # DAGs unpaused: a paused DAG's asset events are dropped, not queued.
    is_paused_upon_creation=False,
    tags=["pprl", "link"],
    doc_md=__doc__,
)
def pprl_link():
    @task
    def prepare_link() -> str:
        from pipeline import tasks

        context = get_current_context()
        return tasks.prepare_link(resolve_conf(context), run=run_facts(context))

    @task(map_index_template="{{ source }}")
    def link_ranks(source: str) -> str:
        from pipeline import tasks

        context = get_current_context()
        # Names the mapped task instance after its source in the UI, instead of a bare index.
        context["source"] = source
        return tasks.link_ranks(resolve_conf(context), source)

    @task
    def model_participants() -> str:
        from pipeline import tasks

        return tasks.model_participants(resolve_conf(get_current_context()))

    @task(map_index_template="{{ source }}")
    def link_rank_p(source: str) -> str:
        from pipeline import tasks

        context = get_current_context()
        context["source"] = source
        return tasks.link_rank_p(resolve_conf(context), source)

    @task
    def write_link_map() -> str:
        from pipeline import tasks

        return tasks.write_link_map(resolve_conf(get_current_context()))

    @task(outlets=[LINKED])
    def validate_linked() -> str:
        from pipeline import tasks

        context = get_current_context()
        conf = resolve_conf(context)
        path = tasks.validate_linked(conf)
        announce(context, LINKED, conf, path)
        return path

    sources = list(SOURCES)
    prepare_link() >> link_ranks.expand(source=sources) >> model_participants() >> link_rank_p.expand(source=sources) >> write_link_map() >> validate_linked()


pprl_link()
