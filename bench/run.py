"""Benchmark harness: `make bench SIZE=small|medium|large|xlarge`.

Generates (and caches) synthetic inputs of 10 thousand, 100 thousand, 1 million or 3 million people, then:
1. runs every stage of the pipeline, each in its own process so its peak memory is its own, and
   prints wall time, peak resident memory and service-use rows per second per stage;
2. measures two floors in the same run: the time Polars needs just to read every input Parquet
   file once, and OpenSSL's HMAC-SHA256 rate on one core;
3. runs the whole pipeline again through the real DAGs on the embedded default, end to end;
4. writes everything as JSON to bench/results/<size>.json, and when results of two or more sizes
   exist, prints how each stage's time grows with the number of people (the exponent b in t ~ n^b).

    uv run python bench/run.py --size small
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

# xlarge: an integrated care system of 3 million. The synthetic world's default register share (70%,
# pipeline.synth.study.ARM_SHARE) would put 2.1 million people in the consent register, each needing
# a distinct NHS number from the 999 test range, which holds 909,091. At 3 million the register is 25%
# (750,000 people, about as many as at 1 million); the test range's remaining 159,091 numbers go to the
# others, shared by about 14 people each and never with a participant (recorded in truth/parameters.json;
# pipeline.synth.identifiers.allocate_nhs_numbers says why shared rather than left out).
SIZES = {"small": 10_000, "medium": 100_000, "large": 1_000_000, "xlarge": 3_000_000}
REGISTER_SHARE = {"xlarge": 0.25}
SEED = 2026
PROFILE = "realistic"


# Free disk a size needs, in GB. RUN_DISK_GB: one pass of the pipeline (the work folder's zones, the
# link stage's spilled scored pairs, the release), from `df` every 10 seconds through `make bench
# SIZE=<size> BENCH_ARGS=--dags-only` on 8 December 2026 (at most 1 GB at 100k, 10 GB at 1M, 31 GB
# at 3M), with some room. A bench without --dags-only makes two passes, the stages' and the DAGs', each
# under its own release label in the same work folder. WORLD_DISK_GB: the cached synthetic world.
RUN_DISK_GB = {"small": 0.5, "medium": 2.0, "large": 14.0, "xlarge": 40.0}
WORLD_DISK_GB = {"small": 0.1, "medium": 0.2, "large": 1.0, "xlarge": 2.0}


class NotEnoughDisk(SystemExit):
    """A bench that would run out of disk part way (at 3M, after half an hour), refused before it starts."""


def check_free_disk(size: str, passes: int, world_cached: bool, work_root: Path | None = None, cache_root: Path | None = None) -> None:
    """Refuse a bench of `size` that would not fit on disk: its work folder goes under the system's
    temporary folder (TMPDIR), its world under bench/.cache (when not cached yet)."""
    work_root = Path(tempfile.gettempdir()) if work_root is None else work_root
    cache_root = HERE / ".cache" if cache_root is None else cache_root
    cache_root.mkdir(parents=True, exist_ok=True)
    needs = {work_root: RUN_DISK_GB[size] * passes}
    if not world_cached:
        needs[cache_root] = WORLD_DISK_GB[size]
    by_device: dict[int, tuple[list[Path], float]] = {}
    for folder, gb in needs.items():
        device = folder.stat().st_dev
        folders, total = by_device.get(device, ([], 0.0))
        by_device[device] = ([*folders, folder], total + gb)
    for folders, gb in by_device.values():
        free = shutil.disk_usage(folders[0]).free / 1e9
        if free < gb:
            where = " and ".join(str(f) for f in folders)
            raise NotEnoughDisk(
                f"make bench SIZE={size} (bench/run.py --size {size}): needs about {gb:.0f} GB of free disk under {where}, and {free:.1f} GB are free "
                f"({passes} pass{'es' if passes > 1 else ''} of the pipeline{'' if world_cached else ', and the synthetic world to generate'}). "
                "Free some space, or put the work folder on a larger disk with TMPDIR=<folder> before `make bench`"
                + ("; BENCH_ARGS=--dags-only makes one pass instead of two." if passes > 1 else ".")
            )


def cached_inputs(size: str) -> Path:
    """Synthetic inputs for a size, generated once and reused (same seed, same bytes).

    Generated in a child process: the stages are children of this process, and a child's peak RSS
    (wait4's ru_maxrss) counts what it shared with this process when forked, so a parent that had
    generated a million people itself would give every stage a floor of about 2 GB."""
    out = HERE / ".cache" / size
    if not world_cached(size):
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        code = (
            "import sys; from pipeline.synth import generate; share = float(sys.argv[5]) if sys.argv[5] != 'default' else None;"
            "generate(sys.argv[1], persons=int(sys.argv[2]), seed=int(sys.argv[3]), profile=sys.argv[4], register_share=share)"
        )
        share = str(REGISTER_SHARE.get(size, "default"))
        subprocess.run([sys.executable, "-c", code, str(out), str(SIZES[size]), str(SEED), PROFILE, share], cwd=REPO, check=True)
        (out / ".complete").write_text(f"generated in {time.perf_counter() - t:.1f}s\ngenerator {synth_fingerprint()}\n")
    return out


def world_cached(size: str) -> bool:
    """Whether bench/.cache holds the world of `size` made by today's generator. The world is generated
    again when the generator's code has changed since: a cache of an older world would be benchmarked
    without anyone noticing."""
    marker = HERE / ".cache" / size / ".complete"
    return marker.exists() and f"generator {synth_fingerprint()}" in marker.read_text()


def synth_fingerprint() -> str:
    """SHA-256 of the synthetic world generator's source files (pipeline/synth), in name order."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "pipeline" / "synth").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def service_use_rows(raw: Path) -> int:
    import polars as pl

    from pipeline.settings import SOURCES

    return sum(pl.scan_parquet(raw / f"{s}.parquet").select(pl.len()).collect().item() for s in SOURCES)


def read_floor(raw: Path) -> float:
    """Seconds to read every input Parquet file once with Polars (in a fresh process, cold caches aside).

    Batch by batch, each dropped when read: at 3 million people the inputs take about 20 GB in memory,
    and holding them all (as this floor once did) is what a stage must never do."""
    code = (
        "import polars as pl, sys, glob, time; t=time.perf_counter();"
        "[None for f in sorted(glob.glob(sys.argv[1] + '/*.parquet')) for _ in pl.scan_parquet(f).collect_batches()];"
        "print(time.perf_counter()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(raw)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def openssl_hmac_rate() -> float | None:
    """HMAC-SHA256 operations per second for 16-byte messages on one core, from `openssl speed`."""
    # Plain `openssl speed hmac` measures HMAC-MD5; `-hmac sha256` selects the digest we use.
    for cmd in (["openssl", "speed", "-seconds", "2", "-bytes", "16", "-mr", "-hmac", "sha256"],):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        # Machine-readable output: "+R:<count>:<alg>:<seconds>" per block size.
        for line in (out.stdout + out.stderr).splitlines():
            m = re.match(r"\+R:(\d+):([^:]+):([\d.]+)", line)
            if m and "sha256" in m.group(2):
                return int(m.group(1)) / float(m.group(3))
    return None


STAGE_CODE = """
import json, sys, time
from pipeline import tasks
from pipeline.settings import SOURCES
conf = json.loads(sys.argv[1]); name = sys.argv[2]
t = time.perf_counter()
if name == "pseudonymise_source":
    for s in SOURCES:
        tasks.pseudonymise_source(conf, s)
else:
    getattr(tasks, name)(conf)
print(time.perf_counter() - t)
"""


def run_stage(conf: dict, name: str) -> dict:
    """Run one stage in a child process; its own wall time and peak RSS (from wait4)."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", STAGE_CODE, json.dumps(conf), name], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    stdout, stderr = proc.stdout.read().decode(), proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage {name} failed:\n{stderr[-3000:]}")
    inner = float(stdout.strip().splitlines()[-1])
    return {
        "stage": name,
        "seconds": round(inner, 3),
        "process_seconds": round(wall, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        # CPU seconds of the stage and the workers it waited for: on a shared machine this moves far
        # less with the load than the wall time does.
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "load_1m_at_end": load_1m(),
    }


def load_1m() -> float:
    """The 1-minute load average: the machine is shared, and a figure means little without it."""
    return round(os.getloadavg()[0], 2)


# The DAG run's memory is sampled this often: reading a big process's PSS costs the kernel about 65 ms
# (bench/memory.py), which every half second would take 13% of a core from the run it measures.
DAG_RUN_SAMPLE_SECONDS = 2.0


def run_dags(conf: dict, airflow_home: Path) -> dict:
    """The whole pipeline through the three DAGs on the embedded default; wall time, the peak RSS of
    its largest process and the peak PSS of its whole process tree."""
    from memory import TreeMemory

    code = (
        "import json,sys; from pipeline.orchestration.embedded import run_embedded;"
        "r = run_embedded(json.loads(sys.argv[1]), sys.argv[2], progress=lambda s: None);"
        "open(sys.argv[3], 'w').write(json.dumps(r['dags']))"
    )
    result_file = airflow_home.parent / "dag-run.json"
    t = time.perf_counter()
    # stderr to a file, not a pipe: a run of millions of people logs more than a pipe holds, and a
    # full pipe would stop the run until it is read.
    with tempfile.TemporaryFile() as err:
        args = [sys.executable, "-c", code, json.dumps(conf), str(airflow_home), str(result_file)]
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        memory = TreeMemory({"dags": proc.pid}, every=DAG_RUN_SAMPLE_SECONDS)
        memory.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            memory.stop()
        wall = time.perf_counter() - t
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"DAG run failed:\n{err.read().decode(errors='replace')[-3000:]}")
    dags = json.loads(result_file.read_text())
    return {
        "seconds": round(wall, 1),
        # ru_maxrss of a waited-for child is the largest RSS of it and of the descendants it waited
        # for (the token and validation workers), each on its own: not their sum.
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        # The sum over the run's processes at one moment, sampled every DAG_RUN_SAMPLE_SECONDS
        # (bench/memory.py): what the machine held.
        "peak_tree_pss_mb": round(memory.peak_total_mb, 1),
        # What the sampling itself took from the run it measured (bench/memory.py).
        "memory_sampler_cpu_seconds": round(memory.cpu_seconds, 1),
        "load_1m_at_end": load_1m(),
        "tasks": task_seconds(dags),
        "task_peak_pss_mb": task_peaks(dags, memory),
        "instance_peak_pss_mb": instance_peaks(dags, memory),
    }


def task_seconds(dags: dict) -> dict[str, float]:
    """Seconds per task of a DAG run, as Airflow timed each task instance; a mapped task's instances
    (one per source) are added up under the task's name, since the embedded run runs them one after
    another. In the order the tasks ran."""
    seconds: dict[str, float] = {}
    for run in dags.values():
        for task in run["tasks"]:
            seconds[task["task_id"]] = round(seconds.get(task["task_id"], 0.0) + (task["seconds"] or 0.0), 1)
    return seconds


def task_peaks(dags: dict, memory: Any) -> dict[str, float | None]:
    """The peak PSS of the run's processes together while each task ran (a mapped task's instances
    together), from the run's memory samples (`memory.TreeMemory`): which task the run's peak is in.
    None for a task that ran between two samples."""
    peaks: dict[str, float | None] = {}
    for label, peak in instance_peaks(dags, memory).items():
        name = label.split("[")[0]
        peaks[name] = peak if peaks.get(name) is None else max(peaks[name], peak or 0.0)
    return peaks


def instance_peaks(dags: dict, memory: Any) -> dict[str, float | None]:
    """The same for each task instance, by its label (`pseudonymise_source[gp_events]` for a mapped
    one): which source's instance holds a mapped task's peak."""
    peaks: dict[str, float | None] = {}
    for run in dags.values():
        for task in run["tasks"]:
            peak = None
            if task.get("started") and task.get("ended"):
                start, end = (dt.datetime.fromisoformat(task[k]).timestamp() for k in ("started", "ended"))
                peak = memory.peak_between(start, end)
            peaks[task["label"]] = None if peak is None else round(peak, 1)
    return peaks


DAG_TASK = "dag: "  # a DAG run's task, beside the stages run one by one


def _series_names(runs: list[dict]) -> list[str]:
    """The stages, then the DAG run's tasks, then the DAG run as a whole, in the order first met."""
    names: dict[str, None] = {}
    for r in runs:
        names.update((s["stage"], None) for s in r["stages"])
    for r in runs:
        names.update((DAG_TASK + t, None) for t in r.get("dags", {}).get("tasks", {}))
    return [*names, "dags_end_to_end"]


def _seconds(run: dict, name: str) -> float | None:
    if name == "dags_end_to_end":
        secs = run.get("dags", {}).get("seconds")
    elif name.startswith(DAG_TASK):
        secs = run.get("dags", {}).get("tasks", {}).get(name.removeprefix(DAG_TASK))
    else:
        secs = next((s["seconds"] for s in run["stages"] if s["stage"] == name), None)
    return secs if secs and secs > 0 else None


def scaling_exponents(results_dir: Path, largest: int | None = None) -> dict[str, float]:
    """Least-squares slope of log(seconds) on log(persons) per stage, over every size measured (or
    over the `largest` sizes only: fixed costs, such as importing GX, flatten the slope at 10k)."""
    runs = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]
    # Only this bench's results: linkage_quality*.json in the same folder also records "persons".
    runs = sorted((r for r in runs if r.get("persons") and "stages" in r), key=lambda r: r["persons"])
    if largest:
        runs = runs[-largest:]
    if len({r["persons"] for r in runs}) < 2:
        return {}
    out = {}
    for name in _series_names(runs):
        pts = [(math.log(r["persons"]), math.log(secs)) for r in runs if (secs := _seconds(r, name))]
        if len(pts) >= 2:
            mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
            sxx = sum((x - mx) ** 2 for x, _ in pts)
            out[name] = round(sum((x - mx) * (y - my) for x, y in pts) / sxx, 2) if sxx else float("nan")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SIZES), default="small")
    runs = ap.add_mutually_exclusive_group()
    runs.add_argument("--no-dags", action="store_true", help="skip the end-to-end run through the DAGs")
    runs.add_argument("--dags-only", action="store_true", help="skip the stage-by-stage runs: only the floors and the run through the DAGs")
    args = ap.parse_args()

    from pipeline.crypto.keys import new_key_file
    from pipeline.publish.signing import new_publishing_key_file
    from pipeline.tasks import STAGES

    persons = SIZES[args.size]
    check_free_disk(args.size, passes=1 if (args.dags_only or args.no_dags) else 2, world_cached=world_cached(args.size))
    t = time.perf_counter()
    base = cached_inputs(args.size)
    raw = base / "raw"
    print(f"inputs: {persons:,} people, profile {PROFILE}, seed {SEED} ({time.perf_counter() - t:.1f}s incl. cache check)")
    load_start = load_1m()
    print(f"machine: {os.cpu_count()} CPUs, load average (1 min) {load_start:.2f} at start")
    rows = service_use_rows(raw)
    print(f"service-use rows: {rows:,}")
    floor_read = read_floor(raw)
    hmac_rate = openssl_hmac_rate()
    print(f"floor: Polars reads every input file once in {floor_read:.2f}s")
    print(f"floor: OpenSSL HMAC-SHA256, 16-byte messages, one core: {hmac_rate:,.0f}/s" if hmac_rate else "floor: openssl speed unavailable")

    with tempfile.TemporaryDirectory(prefix="pprl-bench-") as tmp:
        tmp = Path(tmp)
        new_key_file(tmp / "key.json")
        new_publishing_key_file(tmp / "publishing.pem")
        conf = {"raw_dir": str(raw), "work_dir": str(tmp / "work"), "release_label": f"bench-{args.size}", "key_file": str(tmp / "key.json"),
                "publishing_key_file": str(tmp / "publishing.pem")}
        stages = []
        if not args.dags_only:
            print(f"\n{'stage':<26}{'seconds':>9}{'CPU s':>8}{'peak MB':>10}{'rows/s':>14}{'load':>7}")
        for name in () if args.dags_only else STAGES:
            r = run_stage(conf, name)
            r["rows_per_second"] = round(rows / r["seconds"]) if r["seconds"] > 0 else None
            stages.append(r)
            print(f"{name:<26}{r['seconds']:>9.2f}{r['cpu_seconds']:>8.1f}{r['peak_rss_mb']:>10.0f}{r['rows_per_second'] or 0:>14,}{r['load_1m_at_end']:>7.2f}")
        if stages:
            total = sum(s["seconds"] for s in stages)
            print(f"{'all stages':<26}{total:>9.2f}{sum(s['cpu_seconds'] for s in stages):>8.1f}{max(s['peak_rss_mb'] for s in stages):>10.0f}{round(rows / total):>14,}")
        else:
            print("(stage by stage: not run, --dags-only)")
        hmac_text = f"OpenSSL HMAC-SHA256 {hmac_rate:,.0f}/s on one core" if hmac_rate else "OpenSSL rate unavailable"
        print(f"{'floors':<26}Polars reads every input in {floor_read:.2f}s; {hmac_text}")
        results_dir = HERE / "results"
        results_dir.mkdir(exist_ok=True)

        def save(dags: dict) -> dict:
            result = {
                "size": args.size,
                "persons": persons,
                "service_use_rows": rows,
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
                "floors": {"polars_read_all_inputs_seconds": round(floor_read, 3), "openssl_hmac_sha256_per_second_one_core": hmac_rate},
                "load_average_1m": {"start": load_start, "end": load_1m()},
                "stages": stages,
                "dags": dags,
            }
            (results_dir / f"{args.size}.json").write_text(json.dumps(result, indent=2) + "\n")
            return result

        # Saved once the stages are done, so a long DAG run that is stopped does not lose them.
        save({})
        if not args.no_dags:
            conf["release_label"] = f"bench-{args.size}-dags"
            dags = run_dags(conf, tmp / "airflow")
            print(
                f"\nend to end through the DAGs (embedded default): {dags['seconds']:.1f}s, peak {dags['peak_rss_mb']:.0f} MB RSS "
                f"(largest process), {dags['peak_tree_pss_mb']:.0f} MB PSS (all its processes together), "
                f"load average {dags['load_1m_at_end']:.2f} at the end; sampling the memory took {dags['memory_sampler_cpu_seconds']:.1f} CPU s"
            )
            print(f"\n{'task (mapped: all sources)':<28}{'seconds':>9}{'peak PSS MB':>13}  in")
            instances = dags["instance_peak_pss_mb"]
            for task, secs in dags["tasks"].items():
                peak = dags["task_peak_pss_mb"].get(task)
                # A mapped task's peak: which source's instance it was in.
                held = [label for label, p in instances.items() if label.startswith(f"{task}[") and p is not None and p == peak]
                where = held[0][len(task) + 1 : -1] if held else ""
                print(f"{task:<28}{secs:>9.1f}{'-' if peak is None else f'{peak:,.0f}':>13}  {where}")
            save(dags)

    exps, top = scaling_exponents(results_dir), scaling_exponents(results_dir, largest=2)
    if exps:
        # n log n from 100k to 1M people is b = 1.08; from 10k to 1M, 1.09 (on log-log axes).
        print("\nscaling exponent b (time ~ persons^b) over the sizes in bench/results/ (n log n: about 1.08):")
        print(f"  {'stage':<34}{'all sizes':>10}{'two largest':>13}")
        for stage, b in exps.items():
            print(f"  {stage:<34}{b:>10.2f}{top.get(stage, float('nan')):>13.2f}")
    print(f"\nresults written to {results_dir / (args.size + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
