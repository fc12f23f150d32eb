"""How a run's conf is resolved from Params, dag_run.conf and triggering asset events; no Airflow needed.

The context is a plain dict here, with stand-ins shaped like Airflow 3.3's objects: an asset event has
`extra`, `timestamp`, `source_dag_id`, `source_run_id`; `triggering_asset_events` maps an asset to
its events; an outlet event accessor has `extra` and `add_partitions`.
"""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest

from pipeline.errors import PipelineError
from pipeline.orchestration.conf import announce, conf_from_params, event_extra, resolve_conf
from pipeline.orchestration.embedded import _Report
from pipeline.settings import MatchingOptions, RunConfig

T0 = dt.datetime(2026, 5, 1, 9, 0, tzinfo=dt.timezone.utc)


def canonical(label: str = "r1", **changes) -> dict:
    return RunConfig.from_conf({"raw_dir": "/d/raw", "work_dir": "/d/work", "release_label": label, **changes}).to_conf()


def form(**changes) -> dict:
    """Params as Airflow hands them to a task: every Param, defaults filled in, flat matching options."""
    params = {
        "raw_dir": "/d/raw", "work_dir": "/d/work", "release_label": "r1", "study_start": "2021-04-01",
        "study_end": "2026-03-31", "extract_date": "2026-03-31", "key_file": None, "publishing_key_file": None, "unit_costs": None,
        "replace_release": False, "eq5d_value_set": None, "method": "nearest", "distance": "glm", "ratio": 1, "caliper": 0.2,
        "replace": False, "exact": ["site", "sex"], "mahvars": list(MatchingOptions().mahvars), "balance_threshold": 0.1, "ladder": True,
        "link_threshold": 0.9, "link_addresses": "register_and_linked", "link_u_max_pairs": 3e6,
        "link_em_max_pairs": 5e5, "link_seed": 2026,
    }
    return {**params, **changes}


def event(conf: dict, minutes: int = 0, run: str = "run1") -> SimpleNamespace:
    return SimpleNamespace(
        extra=event_extra(conf, f"/d/work/pseudonymised/{conf['release_label']}"),
        timestamp=T0 + dt.timedelta(minutes=minutes),
        source_dag_id="pprl_pseudonymise",
        source_run_id=run,
    )


def triggered(*events, partition_key=None) -> dict:
    return {
        "params": form(raw_dir=None, work_dir=None, release_label=None),
        "dag_run": SimpleNamespace(conf={}, partition_key=partition_key),
        "partition_key": partition_key,
        "triggering_asset_events": {"pprl_pseudonymised": list(events)},
    }


def test_manual_run_takes_the_trigger_form():
    context = {"params": form(ratio=3, exact=["site"]), "dag_run": SimpleNamespace(conf={})}
    assert resolve_conf(context) == canonical(matching={"ratio": 3, "exact": ["site"]})


def test_dag_test_run_conf_in_canonical_form_wins_over_flat_defaults():
    conf = canonical(matching={"ratio": 2, "caliper": 0.1})
    # Airflow merges dag_run.conf into the Params, so the flat defaults are there too.
    context = {"params": {**form(), **conf}, "dag_run": SimpleNamespace(conf=conf)}
    assert resolve_conf(context) == conf


def test_matching_options_set_both_ways_are_refused():
    explicit = {"ratio": 4, "matching": {"ratio": 2}}
    with pytest.raises(PipelineError, match="both under 'matching' and flat"):
        conf_from_params({**form(), **explicit}, explicit=explicit)


def test_linkage_options_travel_flat_on_the_form_and_nested_in_the_conf():
    context = {"params": form(link_threshold=0.95, link_em_max_pairs=None), "dag_run": SimpleNamespace(conf={})}
    conf = resolve_conf(context)
    assert conf == canonical(linkage={"threshold": 0.95, "em_max_pairs": None})
    assert RunConfig.from_conf(conf).linkage.threshold == 0.95
    explicit = {"link_seed": 7, "linkage": {"seed": 8}}
    with pytest.raises(PipelineError, match="both under 'linkage' and flat"):
        conf_from_params({**form(), **explicit}, explicit=explicit)


def test_the_forms_defaults_are_todays_linkage_so_releases_do_not_change():
    from pipeline.link.model import ProbabilisticOptions
    from pipeline.link.plan import plan_link, probabilistic_options
    from pipeline.orchestration.defaults import run_params
    from pipeline.settings import LINKAGE_PARAMS, LinkageOptions

    params = run_params(filled_by_upstream=False)
    assert {LINKAGE_PARAMS[n]: params[n].value for n in LINKAGE_PARAMS} == vars(LinkageOptions())
    # The options the link stage ran with before they became settings.
    assert probabilistic_options(LinkageOptions()) == ProbabilisticOptions()
    assert plan_link(RunConfig.from_conf(canonical())).options == ProbabilisticOptions()


@pytest.mark.parametrize(
    ("linkage", "message"),
    [
        ({"threshold": 1.0}, r"--link-threshold \(Airflow Param link_threshold\) must be a match probability of at least 0.5 and below 1 \(got 1.0\)"),
        ({"threshold": 0.4}, r"--link-threshold .* at least 0.5"),
        ({"threshold": "high"}, r"--link-threshold .* \(got 'high'\)"),
        ({"addresses": "anywhere"}, r"Airflow Param link_addresses must be one of 'register', 'register_and_linked'"),
        ({"u_max_pairs": 100}, r"Airflow Param link_u_max_pairs must be a number of at least 10,000"),
        ({"em_max_pairs": 10}, r"Airflow Param link_em_max_pairs must be a number of at least 1,000, or empty"),
        ({"seed": 1.5}, r"Airflow Param link_seed must be a whole number"),
        ({"thresold": 0.9}, r"unknown linkage options \['thresold'\]"),
    ],
)
def test_bad_linkage_options_are_refused_naming_the_flag_or_param(linkage, message):
    with pytest.raises(PipelineError, match=message):
        canonical(linkage=linkage)


def test_empty_param_means_the_pipeline_default():
    conf = resolve_conf({"params": form(unit_costs=None, key_file=None), "dag_run": None})
    assert conf["unit_costs"] == RunConfig.from_conf(canonical()).unit_costs
    assert conf["key_file"] is None


def test_manual_downstream_run_without_inputs_says_what_to_set():
    with pytest.raises(PipelineError, match=r"\['raw_dir', 'work_dir', 'release_label'\] are empty"):
        resolve_conf(triggered())


def test_invalid_settings_are_refused_with_the_pipeline_message():
    with pytest.raises(PipelineError, match=r"--release \(Airflow Param release_label\) must be"):
        resolve_conf({"params": form(release_label="no spaces please"), "dag_run": None})


def test_asset_triggered_run_takes_the_conf_of_its_event_not_its_params():
    conf = canonical(matching={"ratio": 5})
    assert resolve_conf(triggered(event(conf), partition_key="r1")) == conf


def test_a_run_only_uses_events_for_its_own_release_label():
    mine, other = canonical("mine", matching={"ratio": 2}), canonical("other")
    context = triggered(event(other, minutes=5, run="b"), event(mine, run="a"), partition_key="mine")
    assert resolve_conf(context) == mine


def test_the_latest_event_for_the_label_wins():
    old, new = canonical(study_end="2025-03-31"), canonical(study_end="2026-03-31")
    assert resolve_conf(triggered(event(new, minutes=10, run="b"), event(old, run="a"), partition_key="r1")) == new


def test_events_for_several_labels_without_a_partition_are_refused():
    with pytest.raises(PipelineError, match="several release labels"):
        resolve_conf(triggered(event(canonical("a"), run="a"), event(canonical("b"), run="b")))


def test_no_event_for_the_runs_label_is_refused():
    with pytest.raises(PipelineError, match="release label 'r2'"):
        resolve_conf(triggered(event(canonical("r1")), partition_key="r2"))


def test_events_without_a_conf_are_ignored():
    foreign = SimpleNamespace(extra={"rows": 10}, timestamp=T0, source_dag_id="other", source_run_id="x")
    context = {**triggered(foreign), "params": form(), "dag_run": SimpleNamespace(conf={})}
    assert resolve_conf(context) == canonical()


def test_announce_attaches_the_conf_and_partitions_by_label():
    outlet = SimpleNamespace(extra={}, partitions=[])
    outlet.add_partitions = outlet.partitions.append
    conf = canonical("r7")
    announce({"outlet_events": {"asset": outlet}}, "asset", conf, "/d/work/linked/r7")
    assert outlet.extra == {"conf": conf, "output": "/d/work/linked/r7"}
    assert outlet.partitions == ["r7"]
    # What one DAG announces, the next one resolves.
    emitted = SimpleNamespace(extra=outlet.extra, timestamp=T0, source_dag_id="d", source_run_id="r")
    assert resolve_conf(triggered(emitted, partition_key="r7")) == conf


def test_report_turns_child_events_into_progress_lines(tmp_path):
    lines: list[str] = []
    report = _Report(lines.append, tmp_path / "run.log", fresh_database=True)
    for seconds, kind in enumerate(("startup", "migrate", "dagbag", "warmup")):
        report.handle(f'{{"event": "{kind}", "seconds": {seconds}, "import_errors": {{}}, "missing": []}}')
    report.handle(
        '{"event": "task", "dag_id": "pprl_link", "label": "link", "state": "failed", "seconds": 1.25,'
        ' "error": "PipelineError: fix it"}'
    )
    report.handle("not json from a stray print")
    assert lines[0].startswith("airflow: ready in") and "database created 1.0s" in lines[0]
    assert lines[1] == "link: link ✗ 1.2s  (PipelineError: fix it)"
    report.handle(
        '{"event": "dag_end", "dag_id": "pprl_link", "run_id": "r", "state": "failed", "seconds": 2.0, "outputs": {},'
        ' "tasks": [{"label": "link", "state": "failed"}, {"label": "validate_linked", "state": "upstream_failed"}]}'
    )
    with pytest.raises(PipelineError) as raised:
        report.check(3, ["pprl_link", "pprl_publish"])
    assert str(raised.value) == (
        "DAG pprl_link failed: task 'link' failed: PipelineError: fix it. Not run: pprl_publish. "
        f"Full log: {tmp_path / 'run.log'}"
    )
    assert (raised.value.dag_id, raised.value.task, raised.value.log_file) == ("pprl_link", "link", tmp_path / "run.log")


def test_the_command_line_takes_the_threshold_and_refuses_a_bad_one_by_its_flag(tmp_path, capsys):
    from pipeline.cli import build_parser, main

    args = build_parser().parse_args(["run", "--raw", "r", "--work", "w", "--release", "r1", "--link-threshold", "0.97"])
    assert args.link_threshold == 0.97
    code = main(["run", "--raw", str(tmp_path), "--work", str(tmp_path / "w"), "--release", "r1", "--link-threshold", "1.5"])
    assert code == 2 and "--link-threshold" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
