"""`pipeline` command line: synth, keys, check, run, describe.

User errors (bad input, missing key, existing release) print one clear message and exit 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.crypto.cli_keys import add_keys_parser
from pipeline.errors import PipelineError


def _synth(args: argparse.Namespace) -> int:
    from pipeline.synth import generate

    out = generate(Path(args.out), persons=args.persons, seed=args.seed, profile=args.profile, mdt_effect=args.mdt_effect)
    print(f"synthetic extracts in {out / 'raw'}; ground truth (never read by the pipeline) in {out / 'truth'}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from pipeline.contracts import check_file

    rows = check_file(Path(args.file), args.dataset, Path(args.mapping) if args.mapping else None)
    print(f"{args.file}: follows the {args.dataset} contract ({rows} rows)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from pipeline.orchestration.embedded import run_embedded
    from pipeline.preflight import preflight
    from pipeline.settings import RunConfig

    conf = {"raw_dir": args.raw, "work_dir": args.work, "release_label": args.release, "key_file": args.key}
    if args.publishing_key:
        conf["publishing_key_file"] = args.publishing_key
    for name in ("study_start", "study_end", "extract_date", "unit_costs", "small_groups", "run_date"):
        if getattr(args, name):
            conf[name] = getattr(args, name)
    linkage = {"threshold": args.link_threshold, "backend": args.link_backend}
    if any(v is not None for v in linkage.values()):
        conf["linkage"] = {k: v for k, v in linkage.items() if v is not None}
    if args.replace:
        conf["replace_release"] = True
    if args.retain_working_files is not None:
        conf.update(retain_working_files=True, retention_reason=args.retain_working_files)
    cfg = RunConfig.from_conf(conf)
    # Every problem a look can find (label taken, inputs, key file, unit costs) stops the run here, in
    # a second, before Airflow starts; the DAG's own preflight task checks again for other triggers.
    preflight(cfg)
    airflow_home = Path(args.airflow_home) if args.airflow_home else default_airflow_home(cfg)
    result = run_embedded(cfg.to_conf(), airflow_home)
    print()
    print(summary_text(cfg.release_dir))
    return 0 if result else 1


def default_airflow_home(cfg) -> Path:
    """WORK/.airflow/<label>: one private Airflow per release label, so runs of different labels on
    one work folder can go at the same time (an embedded Airflow home serves one run at a time)."""
    return cfg.work / ".airflow" / cfg.release_label


def summary_text(release_dir: Path) -> str:
    """The short end-of-run summary: people, consent, linkage by rank, matching, balance, where."""
    from pipeline.publish.disclosure import SUPPRESSED_TEXT

    m = json.loads((release_dir / "manifest.json").read_text())
    # The release's manifest holds counts disclosure-controlled (null where 1-7): shown as such, and
    # sums of controlled parts are only approximate, like everything economists see.
    c, k = ({key: SUPPRESSED_TEXT if v is None else v for key, v in m[part].items()} for part in ("consent", "cohort"))
    ranks: dict[str, int] = {}
    for s in m["linkage"]["sources"].values():
        for r, n in s["linked_by_rank"].items():
            ranks[r] = ranks.get(r, 0) + (n or 0)
    unlinked = sum(s["unlinked"] or 0 for s in m["linkage"]["sources"].values())
    conflicts = sum(s["conflicts"] or 0 for s in m["linkage"]["sources"].values())
    lines = [
        f"release {m['release_label']} (kid {m['kid']}, code {m['code_version']})",
        f"  people in consent register: {c['in_register']}; consented {c['consented']}, declined {c['declined']}, "
        f"withdrawn {c['withdrawn']}; linked as participants: {c['persons_pseudonymised']}",
        "  records linked by rank: " + ", ".join(f"{r}: {n}" for r, n in sorted(ranks.items())) + f"; unlinked {unlinked}, conflicts {conflicts}",
        f"  eligible: {k['eligible']} ({k['eligible_mdt']} MDT, {k['eligible_comparator']} comparators); "
        f"matched: {k['matched_mdt']} MDT with {k['matched_comparators']} comparators",
        f"  largest |standardised mean difference| after matching: {m['cohort']['max_abs_smd_after']:.3f}",
        "  (counts disclosure-controlled: 1-7 hidden, the rest rounded to 5; exact figures in the reports folder)",
        f"  release: {release_dir}",
        f"  audit page for sign-off: {release_dir.parent.parent / 'reports' / m['release_label'] / 'audit.html'}",
    ]
    return "\n".join(lines)


def _describe(args: argparse.Namespace) -> int:
    import polars as pl

    release = Path(args.release_dir)
    print(summary_text(release))
    for p in sorted(release.glob("*.parquet")):
        schema = pl.read_parquet_schema(p)
        rows = pl.scan_parquet(p).select(pl.len()).collect().item()
        print(f"\n{p.name}: {rows} rows")
        for name, dtype in schema.items():
            print(f"  {name}: {dtype}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from pipeline.publish.audit import main_audit

    return main_audit(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pipeline", description="Consented, privacy-preserving record linkage for the MDT evaluation.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write synthetic extracts with ground truth")
    s.add_argument("--out", required=True, help="folder to write raw/ and truth/ into")
    s.add_argument("--persons", type=int, default=5000)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--profile", choices=["clean", "realistic", "hard"], default="realistic")
    s.add_argument("--mdt-effect", type=float, default=0.8, help="rate ratio of emergency admissions after MDT enrolment")
    s.set_defaults(func=_synth)

    add_keys_parser(sub)

    c = sub.add_parser("check", help="check one file against its data contract")
    c.add_argument("dataset", help="contract name, e.g. hospital_apc")
    c.add_argument("file")
    c.add_argument("--mapping", help="YAML mapping the provider's column names to the contract's")
    c.set_defaults(func=_check)

    r = sub.add_parser("run", help="run the three DAGs on the embedded default (dag.test on SQLite)")
    r.add_argument("--raw", required=True, help="folder of input Parquet files following schemas/")
    r.add_argument("--work", required=True, help="folder holding the zones (pseudonymised/, linked/, releases/, reports/)")
    r.add_argument("--key", help="0600 key file (or set PPRL_KEY_FILE, or the Airflow connection pprl_key)")
    r.add_argument("--publishing-key", help="0600 publishing key file that signs the release (or set PPRL_PUBLISHING_KEY_FILE)")
    r.add_argument("--release", required=True, help="release label")
    r.add_argument("--study-start", help="first day of the study window, YYYY-MM-DD (default 2021-04-01)")
    r.add_argument("--study-end", help="last day of the study window, YYYY-MM-DD (default 2026-03-31)")
    r.add_argument("--extract-date", help="the day the extracts were taken, YYYY-MM-DD (default 2026-03-31)")
    r.add_argument(
        "--run-date",
        help="the day of the run, YYYY-MM-DD (default: today, UTC): withdrawals dated up to it are counted as "
        "withdrawn, later ones as register errors; either way the person is not linked",
    )
    r.add_argument("--unit-costs", help="CSV following schemas/unit_costs.yaml (default: reference/unit_costs.csv)")
    r.add_argument("--replace", action="store_true", help="replace an existing release of the same label")
    r.add_argument(
        "--small-groups", choices=["suppress", "coarsen", "block"],
        help="what to do when fewer than 8 people share a combination of quasi-identifiers: withhold their values "
        "(suppress, the default), merge age bands and IMD for everyone (coarsen), or refuse to publish (block)",
    )
    r.add_argument(
        "--retain-working-files", metavar="REASON",
        help="keep pseudonymised/<label>/ and linked/<label>/ after publication (removed by default), for the "
        "reason given, which the manifest records",
    )
    r.add_argument(
        "--link-threshold", type=float, metavar="P",
        help="match probability a record needs to link to a participant in the probabilistic step, "
        "at least 0.5 and below 1 (default 0.9)",
    )
    r.add_argument(
        "--link-backend", choices=["duckdb", "spark"],
        help="where Splink runs the probabilistic step: duckdb in this process (the default), or spark, on the "
        "cluster Spark's configuration names or a local session (needs pip install 'mdt-linkage[spark]' and Java)",
    )
    r.add_argument("--airflow-home", help="private AIRFLOW_HOME (default WORK/.airflow/<label>)")
    r.set_defaults(func=_run)

    a = sub.add_parser(
        "audit", help="verify a release's signature and release log, check its files against its manifest, rerun its privacy checks"
    )
    a.add_argument("release_dir", help="a release folder, releases/<label>/")
    trust = a.add_mutually_exclusive_group()
    trust.add_argument("--public-key", metavar="FILE", help="the publisher's public key file (FILE.pub) to verify the signature with")
    trust.add_argument("--fingerprint", metavar="HEX", help="the publishing key fingerprint you trust (SHA256:..., from the signed audit page)")
    a.add_argument("--log", metavar="FILE", help="the release log (default: release_log.jsonl beside the release folder)")
    a.set_defaults(func=_audit)

    d = sub.add_parser("describe", help="print what is in a release")
    d.add_argument("release_dir")
    d.set_defaults(func=_describe)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
