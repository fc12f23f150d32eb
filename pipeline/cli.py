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
from pipeline.errors import OutputFolderError, PipelineError


def _synth(args: argparse.Namespace) -> int:
    from pipeline.synth import generate

    from pipeline.study import PIONEER, load_study

    study = load_study(args.study or PIONEER)
    try:
        out = generate(Path(args.out), persons=args.persons, seed=args.seed, profile=args.profile, mdt_effect=args.mdt_effect, study=study,
                       register_share=args.register_share)
        if args.layout == "nhs":
            from pipeline.synth.native import write_native_layout

            deliveries = write_native_layout(out)
    except OSError as exc:  # a folder that cannot be made or written; the generator's own errors are named
        raise OutputFolderError(
            f"{exc.filename or args.out}: rule 'writable folder' broken: {exc.strerror or exc}; give --out a folder you can write to"
        ) from None
    if args.layout == "nhs":
        print(f"synthetic extracts in {out / 'raw'}, the five sources in providers' layouts listed in {deliveries}; "
              f"run them with --raw {out / 'raw'} --deliveries {deliveries}")
    else:
        print(f"synthetic extracts in {out / 'raw'}")
    print(f"ground truth (never read by the pipeline) in {out / 'truth'}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from pipeline.contracts import check_file
    from pipeline.study import PIONEER, load_study

    study = load_study(args.study or PIONEER)
    rows = check_file(Path(args.file), args.dataset, args.mapping, study=study)
    print(f"{args.file}: follows the {args.dataset} contract ({rows} rows)")
    return 0


def _study_check(args: argparse.Namespace) -> int:
    from pipeline.study import check_study, describe

    print(describe(check_study(args.file)))
    return 0


def _run(args: argparse.Namespace) -> int:
    from pipeline.orchestration.embedded import run_embedded
    from pipeline.preflight import preflight
    from pipeline.settings import RunConfig

    conf = {"raw_dir": args.raw, "work_dir": args.work, "release_label": args.release, "key_file": args.key}
    if args.publishing_key:
        conf["publishing_key_file"] = args.publishing_key
    for name in ("study_file", "study_start", "study_end", "extract_date", "unit_costs", "small_groups", "run_date", "deliveries", "eq5d_value_set"):
        if getattr(args, name):
            conf["deliveries_file" if name == "deliveries" else name] = getattr(args, name)
    matching = matching_conf(args)
    if matching:
        conf["matching"] = matching
    linkage = {"threshold": args.link_threshold, "backend": args.link_backend}
    if any(v is not None for v in linkage.values()):
        conf["linkage"] = {k: v for k, v in linkage.items() if v is not None}
    if args.replace:
        conf["replace_release"] = True
    if args.retain_working_files is not None:
        conf.update(retain_working_files=True, retention_reason=args.retain_working_files)
    cfg = RunConfig.from_conf(conf)
    # Every problem a look can find (label taken, inputs, key files, unit costs) stops the run here, in
    # a second, before Airflow is imported; the DAG's own preflight task checks again for other
    # triggers. The embedded Airflow sees no secret store but the environment (secret_store=False).
    preflight(cfg, secret_store=False)
    airflow_home = Path(args.airflow_home) if args.airflow_home else default_airflow_home(cfg)
    result = run_embedded(cfg.to_conf(), airflow_home)
    print()
    print(summary_text(cfg.release_dir))
    return 0 if result else 1


def matching_conf(args: argparse.Namespace) -> dict:
    """The matching options given on the command line (pipeline.settings.MATCHING_FLAGS), by field name."""
    from pipeline.settings import MATCHING_FLAGS

    return {name: getattr(args, f"matching_{name}") for name in MATCHING_FLAGS if getattr(args, f"matching_{name}") is not None}


def add_matching_arguments(r: argparse.ArgumentParser) -> None:
    """`pipeline run`'s matching options, one per MatchingOptions field (MatchIt's names); unset ones take
    the study's value, then MatchingOptions' default."""
    from pipeline.settings import MATCHING_DISTANCES, MATCHING_FLAGS, MATCHING_METHODS

    g = r.add_argument_group("matching (MatchIt's options; see docs/economists.md)")
    flag = MATCHING_FLAGS

    def add(name: str, **kw) -> None:
        g.add_argument(flag[name], dest=f"matching_{name}", default=None, **kw)

    add("method", choices=MATCHING_METHODS, help="nearest (greedy, largest score first; default) or optimal (least total distance)")
    add("distance", choices=MATCHING_DISTANCES, help="glm (propensity-score logit; default) or mahalanobis (on --mahvars, inside the caliper)")
    add("ratio", type=int, metavar="K", help="comparators per MDT participant, 1:K (default 1)")
    add("caliper", type=float, metavar="SD", help="caliper in pooled SDs of the propensity-score logit (default 0.2)")
    add("replace", action="store_const", const=True, help="match with replacement: a comparator may serve several participants")
    add("exact", nargs="*", metavar="COLUMN", help="cohort columns matched exactly (default: site sex; none: give the flag alone)")
    add("mahvars", nargs="+", metavar="COVARIATE", help="covariates of the Mahalanobis distance (default: age, conditions, emergency admissions, log cost, EQ-5D)")
    add("balance_threshold", type=float, metavar="SMD", help="largest |standardised mean difference| a sample may keep after matching (default 0.1)")
    add("ladder", action=argparse.BooleanOptionalAction, help="rematch a sample that misses the threshold with a fixed ladder of specifications (default on)")


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
        *balance_lines(m),
        "  (counts disclosure-controlled: 1-7 hidden, the rest rounded to 5; exact figures in the reports folder)",
        f"  release: {release_dir}",
        f"  audit page for sign-off: {release_dir.parent.parent / 'reports' / m['release_label'] / 'audit.html'}",
    ]
    return "\n".join(lines)


def balance_lines(m: dict) -> list[str]:
    """The balance gate per sample: each sample's largest |SMD| after matching, and for one above the
    study's threshold what the ladder tried."""
    samples = (m.get("cohort") or {}).get("samples") or {}
    threshold = ((m.get("cohort") or {}).get("balance") or {}).get("threshold", 0.1)
    lines = [f"  balance by sample (threshold |SMD| < {threshold:g}):"] if samples else []
    for name, s in samples.items():
        smd = s.get("max_abs_smd_after")
        shown = f"{smd:.3f}" if isinstance(smd, float) else "-"
        ok = bool(s.get("balanced"))
        lines.append(f"    {name}: {shown} ({s.get('worst_covariate') or '-'}) {'balanced' if ok else 'NOT BALANCED'}; {s.get('specification') or ''}")
        if not ok:
            for a in s.get("attempts") or []:
                a_smd = a.get("max_abs_smd_after")
                lines.append(f"      tried {a.get('specification')}: {a_smd:.3f}" if isinstance(a_smd, float) else f"      tried {a.get('specification')}: -")
    return lines


def _describe(args: argparse.Namespace) -> int:
    from pipeline.publish.describe import describe_release, read_manifest

    release = Path(args.release_dir)
    read_manifest(release)  # a wrong path is named before anything is printed
    print(summary_text(release))
    print(describe_release(release))
    return 0


def _audit(args: argparse.Namespace) -> int:
    from pipeline.publish.audit import main_audit

    return main_audit(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pipeline", description="Consented, privacy-preserving record linkage for the MDT evaluation.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write synthetic extracts with ground truth")
    s.add_argument("--out", required=True, help="folder to write raw/ and truth/ into")
    s.add_argument("--persons", type=int, default=5000, help="people in the synthetic world, of whom 70%% are in the consent register (default 5000)")
    s.add_argument("--seed", type=int, default=1, help="random seed; the same seed and options write the same files (default 1)")
    s.add_argument(
        "--profile", choices=["clean", "realistic", "hard", "provider_blackout"], default="realistic",
        help="how much the extracts disagree with the truth (typos, moves, missing NHS numbers): clean, realistic "
        "(the default), hard, or provider_blackout (realistic, and one trust's records lose their identifiers for a year)",
    )
    s.add_argument("--mdt-effect", type=float, default=0.8, help="rate ratio of emergency admissions after MDT enrolment")
    s.add_argument(
        "--register-share", type=float, default=None, metavar="SHARE",
        help="share of people in the consent register (default 0.70); above about 1.3 million people use less, since "
        "every participant needs an NHS number from the 999 test range, which holds 909,091",
    )
    s.add_argument(
        "--layout", choices=["canonical", "nhs"], default="canonical",
        help="canonical: every extract as <dataset>.parquet in the contracts' layout; nhs: the same people, the five "
        "sources also written in providers' layouts (HES APC and OP, ECDS, a GP extract, ASC CLD) as CSV or "
        "pipe-delimited text, with deliveries.yaml naming the shipped mapping of each",
    )
    s.add_argument("--study", metavar="FILE", help="study file whose sites, teams and eligibility to generate for (default studies/pioneer.yaml)")
    s.set_defaults(func=_synth)

    add_keys_parser(sub)

    c = sub.add_parser("check", help="check one file against its data contract")
    c.add_argument("dataset", help="contract name, e.g. hospital_apc (a wrong name lists them all)")
    c.add_argument("file", help="the file (or folder of Parquet parts) to check")
    c.add_argument(
        "--mapping",
        help="a shipped mapping's name (schemas/mappings/, e.g. hes_apc) or a mapping YAML, to read the file in its "
        "provider's layout; the format (.parquet, .csv, .txt pipe-delimited, .gz) is taken from the file's name",
    )
    c.add_argument("--study", metavar="FILE", help="the study whose sites, teams and models the file may hold (default studies/pioneer.yaml)")
    c.set_defaults(func=_check)

    st = sub.add_parser("study", help="work with a study file (studies/<name>.yaml)")
    st_sub = st.add_subparsers(dest="study_command", required=True)
    sc = st_sub.add_parser("check", help="check a study file; list every problem by its YAML key")
    sc.add_argument("file", help="the study YAML file, e.g. studies/pioneer.yaml")
    sc.set_defaults(func=_study_check)

    r = sub.add_parser("run", help="run the three DAGs on the embedded default (dag.test on SQLite)")
    r.add_argument("--raw", required=True, help="folder of input Parquet files following schemas/")
    r.add_argument("--work", required=True, help="folder holding the zones (pseudonymised/, linked/, releases/, reports/)")
    r.add_argument("--key", help="0600 key file (or set PPRL_KEY_FILE, or the Airflow connection pprl_key)")
    r.add_argument("--publishing-key", help="0600 publishing key file that signs the release (or set PPRL_PUBLISHING_KEY_FILE)")
    r.add_argument(
        "--release", required=True,
        help="release label, 1-64 letters, digits, '.', '_' or '-'; names the folder in every zone, so it must be new unless --replace",
    )
    r.add_argument("--study", dest="study_file", metavar="FILE", help="the study file (default studies/pioneer.yaml)")
    r.add_argument("--study-start", help="first day of the study window, YYYY-MM-DD (default: the study file's)")
    r.add_argument("--study-end", help="last day of the study window, YYYY-MM-DD (default: the study file's)")
    r.add_argument("--extract-date", help="the day the extracts were taken, YYYY-MM-DD (default: the study file's)")
    r.add_argument(
        "--run-date",
        help="the day of the run, YYYY-MM-DD (default: today, UTC): withdrawals dated up to it are counted as "
        "withdrawn, later ones as register errors; either way the person is not linked",
    )
    r.add_argument("--unit-costs", help="CSV following schemas/unit_costs.yaml (default: the study file's)")
    r.add_argument(
        "--deliveries", metavar="FILE",
        help="deliveries YAML: sources delivered in a provider's layout (CSV, pipe-delimited, gzip, Parquet) with the "
        "mapping of each (docs/data-engineers.md); the other inputs stay <dataset>.parquet in --raw",
    )
    r.add_argument("--eq5d-value-set", metavar="NAME_OR_FILE", help="EQ-5D value set: a shipped name (england) or a CSV following schemas/eq5d_value_set.yaml (default: the study file's)")
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
    add_matching_arguments(r)
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

    d = sub.add_parser(
        "describe", help="print what is in a release: each table's purpose, rows, sample sizes, caveats and a starter script"
    )
    d.add_argument("release_dir", help="a release folder, releases/<label>/")
    d.set_defaults(func=_describe)
    return p


def main(argv: list[str] | None = None) -> int:
    from pipeline.settings import named_as

    args = build_parser().parse_args(argv)
    # Messages, here and in the embedded Airflow's tasks, name the flags the user typed.
    with named_as("cli"):
        try:
            return args.func(args)
        except PipelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            # Every stage writes through atomic renames (pipeline.io), so an interrupted run leaves no half file.
            print("interrupted: files are written whole or not at all, so the same command can be run again", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
