"""Pseudonymised inputs for the linkage benchmarks, cached under bench/.cache/.

`prepare(persons, profile, seed)` generates synthetic extracts (pipeline.synth), makes a key, and runs
the real consent gate and pseudonymisation of every source (pipeline.pseudonymise), so the link stage
reads exactly what production gives it. Generation and pseudonymisation are not timed here: they are
measured by bench/run.py.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pyarrow.parquet as pq  # noqa: E402

from pipeline.settings import SOURCES, RunConfig  # noqa: E402
from pipeline.zones import counts_file, persons_file, study_persons_file  # noqa: E402

CACHE = HERE / ".cache"


def prepare(persons: int, profile: str, seed: int, label: str = "bench", log=print) -> tuple[RunConfig, Path]:
    """(run config with pseudonymised inputs, truth folder), made once per (persons, profile, seed)."""
    from pipeline.crypto.keys import new_key_file, read_key_file
    from pipeline.link.model import COMPARISON_COLUMNS
    from pipeline.pseudonymise import pseudonymise_source, run_consent_gate
    from pipeline.synth import generate

    base = CACHE / f"linkage-{profile}-{persons}-s{seed}"
    if not (base / ".complete").exists():
        shutil.rmtree(base, ignore_errors=True)
        t = time.perf_counter()
        generate(base, persons=persons, seed=seed, profile=profile)
        (base / ".complete").write_text(f"generated in {time.perf_counter() - t:.1f}s\n")
        log(f"generated {persons:,} people ({profile}, seed {seed}) in {time.perf_counter() - t:.0f}s")
    key_file = base / "secrets" / "key.json"
    key = read_key_file(key_file) if key_file.exists() else new_key_file(key_file)
    cfg = RunConfig.from_conf(
        {"raw_dir": str(base / "raw"), "work_dir": str(base / "work"), "release_label": label, "key_file": str(key_file)}
    )
    marker = cfg.pseudonymised_dir / ".complete"
    if not marker.exists():
        t = time.perf_counter()
        if not (persons_file(cfg).exists() and study_persons_file(cfg).exists()):
            run_consent_gate(cfg, key)
        for s in SOURCES:
            if (counts_file(cfg, s)).exists():
                continue  # written last, atomically, by an interrupted earlier preparation
            pseudonymise_source(cfg, key, s)
            log(f"  {s}: {time.perf_counter() - t:.0f}s")
        marker.write_text(f"pseudonymised in {time.perf_counter() - t:.1f}s\n")
        log(f"pseudonymised in {time.perf_counter() - t:.0f}s")
    have = set(pq.read_schema(persons_file(cfg)).names)
    lacking = sorted(set(COMPARISON_COLUMNS.values()) - have)
    if lacking:
        raise SystemExit(
            f"the cached pseudonymised files lack {lacking}: delete {cfg.pseudonymised_dir} to pseudonymise again"
        )
    return cfg, base / "truth"


def record_tokens(cfg: RunConfig):
    """The run's record tokeniser, so the ground truth's record IDs meet the link map's record tokens."""
    from pipeline.crypto.keys import read_key_file
    from pipeline.pseudonymise.records import record_tokeniser

    return record_tokeniser(read_key_file(cfg.key_file))
