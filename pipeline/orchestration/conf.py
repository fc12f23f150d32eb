"""How a run's conf travels between the three DAGs.

The pseudonymise DAG takes its conf from its Params (the trigger form, `dag_run.conf`, or
`dag.test(run_conf=...)`). The last task of each upstream DAG attaches the run's canonical conf to the
asset event it emits; a downstream run started by that event reads it back from
`triggering_asset_events`. A downstream DAG triggered by hand (to rerun a stage) reads its own Params.

    >>> conf = {"raw_dir": "/d/raw", "work_dir": "/d/work", "release_label": "r1"}
    >>> resolve_conf({"params": conf, "dag_run": None})["matching"]["exact"]
    ['site', 'sex']

Every task calls `resolve_conf` itself; the answer depends only on the run (its Params, conf and
triggering events), so each task of a run sees the same settings and can be rerun on its own.
Nothing here imports Airflow: the context is read as a plain mapping, so this module is unit-tested
without a metadata database.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.errors import PipelineError
from pipeline.settings import LINKAGE_PARAMS, MATCHING_FLAGS, RunConfig

# Key of the asset event's `extra` that carries the conf; the output path sits beside it so the
# Airflow UI's asset view shows what each event produced.
EXTRA_CONF = "conf"
EXTRA_OUTPUT = "output"

# The trigger form shows the matching and linkage options flat; RunConfig nests them under
# "matching" and "linkage" (the linkage ones as pipeline.settings.LINKAGE_PARAMS names them).
MATCHING_PARAMS: tuple[str, ...] = tuple(MATCHING_FLAGS)
REQUIRED_PARAMS: tuple[str, ...] = ("raw_dir", "work_dir", "release_label")


def resolve_conf(context: Mapping[str, Any]) -> dict[str, Any]:
    """Return the canonical conf (`RunConfig.to_conf()`) of the run this task belongs to.

    An asset-triggered run uses the conf on its own triggering events; any other run uses its
    Params overlaid with `dag_run.conf`. Raises PipelineError, saying what to set, when neither
    gives a valid conf.
    """
    events = _conf_events(context.get("triggering_asset_events"))
    if events:
        return conf_from_events(events, partition_key=_partition_key(context))
    explicit = getattr(context.get("dag_run"), "conf", None) or {}
    # Airflow merges dag_run.conf into the Params unless [core] dag_run_conf_overrides_params is
    # off; merging again here gives the same answer either way.
    return conf_from_params({**(context.get("params") or {}), **explicit}, explicit=explicit)


def conf_from_params(params: Mapping[str, Any], explicit: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build the canonical conf from flat Params, or from a canonical conf passed as `dag_run.conf`.

    `explicit` is the raw `dag_run.conf`; it is only used to refuse a conf that sets the matching
    options both flat and nested, where it would be unclear which one was meant.
    """
    values = dict(params)
    matching = _nested_options(values, "matching", {name: name for name in MATCHING_PARAMS}, explicit)
    linkage = _nested_options(values, "linkage", LINKAGE_PARAMS, explicit)
    missing = [name for name in REQUIRED_PARAMS if not values.get(name)]
    if missing:
        raise PipelineError(
            f"run settings {missing} are empty: set them in the trigger form or in dag_run.conf "
            "(a downstream DAG only fills them itself when its upstream DAG's asset event triggered it)"
        )
    # None in a Param means "use the pipeline's default" (for example the bundled unit-cost table).
    values = {name: value for name, value in values.items() if value is not None}
    return RunConfig.from_conf({**values, "matching": matching, "linkage": linkage}).to_conf()


def _nested_options(values: dict[str, Any], group: str, flat: Mapping[str, str], explicit: Mapping[str, Any] | None) -> dict[str, Any]:
    """Take one group of options out of `values`: its flat Params (`flat` maps each to the option's
    name) overlaid with the nested `values[group]` of a canonical conf. Values pass as given: None is a
    choice for some options (link_em_max_pairs: every blocked pair)."""
    options = {name: values.pop(param) for param, name in flat.items() if param in values}
    nested = values.pop(group, None)
    if nested:
        # A canonical conf (RunConfig.to_conf()) nests the options. Params always hold the flat
        # defaults too, so the nested ones win unless the caller also set flat ones explicitly.
        clash = sorted(set(flat) & set(explicit or {}))
        if clash:
            raise PipelineError(
                f"the run conf sets {group} options both under '{group}' and flat ({clash}); set them one way only"
            )
        options.update(nested)
    return options


def conf_from_events(events: Sequence[Any], partition_key: str | None = None) -> dict[str, Any]:
    """Pick the conf from the asset events that triggered this run.

    Each downstream run is created for one release label (the events' partition key), so its events
    should all name that label. If the upstream DAG ran twice for the label before this run started,
    the latest event wins, as the latest upstream run also wrote the label's zone folders last.
    """
    confs = [(event.timestamp, event.extra[EXTRA_CONF]) for event in events]
    if partition_key is not None:
        confs = [(ts, conf) for ts, conf in confs if conf.get("release_label") == partition_key]
        if not confs:
            raise PipelineError(
                f"none of the asset events that triggered this run is for release label '{partition_key}'; "
                "trigger the DAG by hand with that label's settings"
            )
    labels = sorted({conf.get("release_label") for _, conf in confs}, key=str)
    if len(labels) > 1:
        # Partitioned scheduling makes this impossible; refusing is still safer than guessing.
        raise PipelineError(
            f"this run was triggered by asset events for several release labels {labels}; "
            "trigger the DAG by hand once per label"
        )
    _, latest = max(confs, key=lambda pair: pair[0])
    try:
        return RunConfig.from_conf(latest).to_conf()
    except TypeError as err:
        raise PipelineError(f"the triggering asset event carries an incomplete conf ({err})") from None


def event_extra(conf: Mapping[str, Any], output: str) -> dict[str, Any]:
    """The `extra` an upstream DAG's last task attaches to its asset event."""
    return {EXTRA_CONF: dict(conf), EXTRA_OUTPUT: str(output)}


def announce(context: Mapping[str, Any], asset: Any, conf: Mapping[str, Any], output: str) -> None:
    """Attach the conf to this task's asset event, partitioned by release label.

    The partition key makes the scheduler create one downstream run per label, so concurrent runs
    of different labels never share a downstream run. It is set explicitly, not inherited from the
    DAG run, because a run triggered by hand has no partition key of its own.
    """
    outlet = context["outlet_events"][asset]
    outlet.extra = event_extra(conf, output)
    outlet.add_partitions(conf["release_label"])


def _conf_events(triggering: Mapping[Any, Sequence[Any]] | None) -> list[Any]:
    """Every triggering event that carries a conf, whichever asset it came from, without repeats."""
    if not triggering:
        return []
    seen: dict[tuple[Any, ...], Any] = {}
    for asset_events in triggering.values():
        for event in asset_events:
            extra = getattr(event, "extra", None) or {}
            if isinstance(extra.get(EXTRA_CONF), Mapping):
                key = (event.source_dag_id, event.source_run_id, event.timestamp)
                seen.setdefault(key, event)
    return list(seen.values())


def _partition_key(context: Mapping[str, Any]) -> str | None:
    key = context.get("partition_key")
    if key is None:
        key = getattr(context.get("dag_run"), "partition_key", None)
    return key


def run_facts(context: Mapping[str, Any]) -> dict[str, Any]:
    """Who started this DAG run and when, from the task context, for the release's provenance.

    Read as plain attributes of `dag_run` (Airflow 3.3's DagRunProtocol: `run_id`, `run_type`,
    `triggering_user_name`, `start_date`), so this stays testable without Airflow. These facts go
    into `provenance.json`, never into the conf: the conf is part of the content manifest.
    """
    dag_run = context.get("dag_run")
    started = getattr(dag_run, "start_date", None)
    run_type = getattr(dag_run, "run_type", None)
    return {
        "dag_id": getattr(dag_run, "dag_id", None),
        "run_id": getattr(dag_run, "run_id", None),
        "run_type": getattr(run_type, "value", run_type),
        "triggered_by": getattr(dag_run, "triggering_user_name", None),
        "started": started.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if started else None,
    }
