"""The assets that tie the three DAGs together (the DAG ids are re-exported from the package).

A DAG is scheduled on the asset its upstream DAG emits, so these objects are the contract between
DAG files; defining them once keeps the chain from drifting. The URIs are logical (`x-pprl://`):
the zone folders live under each run's `work_dir`, which is not known when the DAGs are parsed.
"""

from __future__ import annotations

from airflow.sdk import Asset

from pipeline.orchestration import LINK_DAG, PIPELINE_DAGS, PSEUDONYMISE_DAG, PUBLISH_DAG

__all__ = ["LINK_DAG", "LINKED", "PIPELINE_DAGS", "PSEUDONYMISE_DAG", "PSEUDONYMISED", "PUBLISH_DAG", "RELEASE"]

PSEUDONYMISED = Asset(name="pprl_pseudonymised", uri="x-pprl://zones/pseudonymised")
LINKED = Asset(name="pprl_linked", uri="x-pprl://zones/linked")
RELEASE = Asset(name="pprl_release", uri="x-pprl://zones/releases")
