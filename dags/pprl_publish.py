"""
### Publish: matched cohorts out, as an immutable, versioned release

Last of three DAGs. Runs when `pprl_link` emits asset `pprl_linked`: one run per release label, with
the settings carried on that asset event (the Params below are then ignored).

| task | calls | writes |
| --- | --- | --- |
| `build_cohort` | `pipeline.tasks.build_cohort` | matched MDT / comparator cohorts, balance diagnostics, service use and costs |
| `stage_release` | `pipeline.tasks.stage_release` | the release in `releases/.staging-<release_label>/`, with manifest and data dictionary |
| `validate_release` | `pipeline.tasks.validate_release` | privacy checks and Great Expectations on the staged release; a failure removes it and stops the run |
| `publish_release` | `pipeline.tasks.publish_release` | hashes every file into the manifest, writes `provenance.json` (run ids, who, when) and the audit page, renames the staged folder to `releases/<release_label>/` and the run's reports to `reports/<release_label>/`; emits asset `pprl_release` |

Write-audit-publish: nothing appears under `releases/<release_label>/` or `reports/<release_label>/`
until every check has passed, so a failed run leaves earlier releases and their reports untouched; its
own reports are in `reports/.staging-<release_label>/`. An existing release is only replaced when the run
sets `replace_release`. The return value of `publish_release` (see its XCom) is the release folder
economists read.
"""

from __future__ import annotations

from airflow.sdk import PartitionedAssetTimetable, dag, get_current_context, task

from pipeline.orchestration.assets import LINKED, PUBLISH_DAG, RELEASE
from pipeline.orchestration.conf import announce, resolve_conf, run_facts
from pipeline.orchestration.defaults import default_args, run_params


@dag(
    dag_id=PUBLISH_DAG,
    # Partitioned by release label, like pprl_link: one publish run per label, never a merged one.
    schedule=PartitionedAssetTimetable(assets=LINKED),
    params=run_params(filled_by_upstream=True),
    default_args=default_args(),
    # Nothing here runs on a clock, so unpaused is safe, and the asset chain needs the downstream
    # DAGs unpaused: a paused DAG's asset events are dropped, not queued.
    is_paused_upon_creation=False,
    tags=["pprl", "publish"],
    doc_md=__doc__,
)
def pprl_publish():
    @task
    def build_cohort() -> str:
        from pipeline import tasks

        context = get_current_context()
        return tasks.build_cohort(resolve_conf(context), run=run_facts(context))

    @task
    def stage_release() -> str:
        from pipeline import tasks

        return tasks.stage_release(resolve_conf(get_current_context()))

    @task
    def validate_release() -> str:
        from pipeline import tasks

        return tasks.validate_release(resolve_conf(get_current_context()))

    @task(outlets=[RELEASE])
    def publish_release() -> str:
        from pipeline import tasks

        context = get_current_context()
        conf = resolve_conf(context)
        path = tasks.publish_release(conf)
        announce(context, RELEASE, conf, path)
        return path

    build_cohort() >> stage_release() >> validate_release() >> publish_release()


pprl_publish()
