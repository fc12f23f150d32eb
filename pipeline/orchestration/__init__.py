"""Airflow glue for the pipeline: shared DAG settings, conf passing between DAGs, the embedded runner.

Modules that define DAG pieces (`assets`, `defaults`) import Airflow; this package's root, `conf`
and `embedded` do not, so the command line can start an embedded run without loading Airflow (and
its configuration) into its own process.
"""

PSEUDONYMISE_DAG = "pprl_pseudonymise"
LINK_DAG = "pprl_link"
PUBLISH_DAG = "pprl_publish"
# The order the embedded runner runs them in, which is also the order the assets chain them.
PIPELINE_DAGS: tuple[str, ...] = (PSEUDONYMISE_DAG, LINK_DAG, PUBLISH_DAG)
# The Celery queue of the key holder's tasks (every task of pprl_pseudonymise: they read raw/ and
# the key). Only the key holder's worker consumes it, and only that worker mounts the key and raw/
# (docker-compose.yml, service airflow-keyholder); every other task goes to Airflow's default queue.
KEY_HOLDER_QUEUE = "keyholder"
