"""
### Link: survey participants to their service-use records, on tokens only

Second of three DAGs. Runs when `pprl_pseudonymise` emits asset `pprl_pseudonymised`: one run per
release label, with the settings carried on that asset event (the Params below are then ignored).

| task | calls | writes |
| --- | --- | --- |
| `link` | `pipeline.tasks.link` | link map under `linked/<release_label>/`: deterministic ranks 1-5, then probabilistic |
| `validate_linked` | `pipeline.tasks.validate_linked` | linkage quality report; emits asset `pprl_linked` |

This DAG never reads `raw/` or the linkage key. To rerun it by hand (say, after a linkage fix), trigger
it with the same raw_dir, work_dir and release_label as the pseudonymise run; it rewrites only that
label's `linked/` folder and, on success, starts `pprl_publish` for the label.
"""

from __future__ import annotations

from airflow.sdk import PartitionedAssetTimetable, dag, get_current_context, task

from pipeline.orchestration.assets import LINK_DAG, LINKED, PSEUDONYMISED
from pipeline.orchestration.conf import announce, resolve_conf, run_facts
from pipeline.orchestration.defaults import default_args, run_params


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
    def link() -> str:
        from pipeline import tasks

        context = get_current_context()
        return tasks.link(resolve_conf(context), run=run_facts(context))

    @task(outlets=[LINKED])
    def validate_linked() -> str:
        from pipeline import tasks

        context = get_current_context()
        conf = resolve_conf(context)
        path = tasks.validate_linked(conf)
        announce(context, LINKED, conf, path)
        return path

    link() >> validate_linked()


pprl_link()
