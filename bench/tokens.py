"""Token throughput: distinct canonical values tokenised per second, against OpenSSL's one-core rate.

    .venv/bin/python bench/tokens.py [--values 2000000] [--repeats 5]

Prints, for `--values` distinct 10-digit canonical NHS numbers (the stage tokenises distinct values,
never rows):
1. the pipeline's rate (`pipeline.crypto.tokens.tokenise_distinct`: precomputed HMAC states, hex in
   the workers, one worker process per CPU), best and median of `--repeats` runs, wall clock, from
   a Polars Series of values to a Polars Series of 64-character hex tokens;
2. the same in this process only (`PPRL_TOKEN_WORKERS=0`), and a plain `hmac.digest` loop, for scale;
3. OpenSSL's HMAC-SHA256 rate for 16-byte messages on one core (`openssl speed -hmac sha256`),
   measured in the same run, and the pipeline's rate as a multiple of it.

Other work on the machine slows every figure; the load average is printed before and after so a
reader can judge, and the CPU time the runs used (this process and its token workers) is printed
too: tokens per CPU-second times the number of cores is what the same code makes on idle cores. The
wall-clock figure is the one that counts. Worker start-up (once per process) is reported apart.

    .venv/bin/python bench/tokens.py --phonetic

prints instead the comparison behind the choice of Soundex for the phonetic tokens
(docs/token-spec.md): for each phonetic code in jellyfish, on the synthetic generator's name lists
weighted as it draws them, how often a keying error (`pipeline.synth.faults.typos`) keeps the code
(higher is better), how often two different people drawn at random share it (lower is better), and
how many of a list of known spelling variants agree.
"""

from __future__ import annotations

import argparse
import hmac
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OPENSSL_CMD = ["openssl", "speed", "-seconds", "3", "-bytes", "16", "-mr", "-hmac", "sha256"]


def openssl_hmac_rate() -> tuple[float | None, str]:
    """HMAC-SHA256 operations per CPU second for 16-byte messages on one core, and the command.

    OpenSSL 3 spells it `-hmac sha256` (the bare `hmac` algorithm name measures HMAC-MD5); `-mr`
    prints `+R:<count>:hmac(sha256):<seconds>`, where seconds are CPU seconds of its one process.
    """
    try:
        done = subprocess.run(OPENSSL_CMD, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None, " ".join(OPENSSL_CMD)
    for line in (done.stdout + done.stderr).splitlines():
        m = re.match(r"\+R:(\d+):hmac\(sha256\):([\d.]+)", line)
        if m and float(m.group(2)) > 0:
            return int(m.group(1)) / float(m.group(2)), " ".join(OPENSSL_CMD)
    return None, " ".join(OPENSSL_CMD)


def rates(fn, n: int, repeats: int, cpu_log: list[float] | None = None) -> list[float]:
    """Wall-clock rates of `repeats` runs; with `cpu_log`, also the CPU seconds each run used in this
    process and in the token workers."""
    out = []
    for _ in range(repeats):
        cpu = _cpu_seconds()
        started = time.perf_counter()
        fn()
        out.append(n / (time.perf_counter() - started))
        if cpu_log is not None:
            cpu_log.append(_cpu_seconds() - cpu)
    return out


def _cpu_seconds() -> float:
    """CPU seconds used so far by this process and its live token workers (Linux /proc)."""
    from pipeline.crypto import hmac_pool

    total = time.process_time()
    pool = hmac_pool._pool
    for worker in pool.workers if pool else []:
        fields = Path(f"/proc/{worker.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return total


VARIANTS = [("SMITH", "SMYTH"), ("THOMPSON", "THOMSON"), ("MACDONALD", "MCDONALD"), ("PHILLIPS", "PHILIPS"),
            ("STEPHENSON", "STEVENSON"), ("CATHERINE", "KATHRYN"), ("JON", "JOHN"), ("STEVEN", "STEPHEN"), ("REID", "READ"),
            ("CLARKE", "CLARK"), ("DAVIS", "DAVIES"), ("MOHAMMED", "MUHAMMAD"), ("NEIL", "NEAL"), ("GEOFFREY", "JEFFREY"),
            ("JONATHON", "JONATHAN"), ("SEAN", "SHAUN"), ("LOUISE", "LOUISA"), ("ALISON", "ALLISON"), ("ANN", "ANNE"),
            ("MATHEW", "MATTHEW"), ("CARL", "KARL"), ("CHRISTINE", "KRISTINE"), ("WOJCIK", "VOYCHIK"), ("BYRNE", "BURNS"),
            ("GRAY", "GREY"), ("HAYES", "HAYS"), ("ONEILL", "ONEIL")]  # fmt: skip


def phonetic_comparison(samples: int = 20_000, seed: int = 1) -> None:
    import jellyfish
    import numpy as np
    import polars as pl

    from pipeline.crypto.names import canonical_name
    from pipeline.synth.faults import typos
    from pipeline.synth.names import _TRADITIONS, _zipf_weights

    codes = {"soundex": jellyfish.soundex, "nysiis": jellyfish.nysiis, "metaphone": jellyfish.metaphone,
             "match rating": jellyfish.match_rating_codex}  # fmt: skip
    rng = np.random.default_rng(seed)
    print(f"{'list':<9}{'code':<14}{'distinct codes':>15}{'typo keeps code':>17}{'random pair shares':>20}")
    for kind, lists in (("surname", (4,)), ("forename", (2, 3))):
        pool, weight = [], []
        for tradition in _TRADITIONS:
            for i in lists:
                pool += [canonical_name(n) for n in tradition[i]]
                weight += list(_zipf_weights(len(tradition[i])) * tradition[1])
        w = np.array(weight) / sum(weight)
        drawn = pl.Series(rng.choice(pool, size=samples, p=w))
        typed = typos(rng, drawn.str.to_lowercase()).str.to_uppercase()
        for name, code in codes.items():
            by_code: dict[str, float] = {}
            for n, p in zip(pool, w, strict=True):
                by_code[code(n)] = by_code.get(code(n), 0.0) + p
            kept = np.mean([code(a) == code(b) for a, b in zip(drawn.to_list(), typed.to_list(), strict=True)])
            shared = sum(p * p for p in by_code.values())
            print(f"{kind:<9}{name:<14}{len(by_code):>15}{kept:>17.3f}{shared:>20.4f}")
    for name, code in codes.items():
        agree = sum(code(a) == code(b) for a, b in VARIANTS)
        print(f"known spelling variants agreeing under {name}: {agree} of {len(VARIANTS)}")


def main() -> int:
    import polars as pl

    from pipeline.crypto import hmac_pool
    from pipeline.crypto.keys import LinkageKey, key_id
    from pipeline.crypto.tokens import field_key, tokenise_distinct

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--values", type=int, default=2_000_000, help="distinct values to tokenise per run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--phonetic", action="store_true", help="compare jellyfish's phonetic codes instead")
    args = p.parse_args()
    if args.phonetic:
        phonetic_comparison()
        return 0

    secret = os.urandom(32)  # a throwaway key: the bench never touches a real one
    key = LinkageKey(secret, key_id(secret))
    values = pl.Series("v", range(9_990_000_000, 9_990_000_000 + args.values), dtype=pl.Int64).cast(pl.String)
    workers = hmac_pool.worker_count()
    print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.machine()}; "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    print(f"values: {args.values:,} distinct 10-digit strings; token workers: {workers}")

    started = time.perf_counter()
    tokenise_distinct(key, "nhs_number", values.head(hmac_pool.PARALLEL_MIN_VALUES))  # starts the workers
    print(f"worker start-up and first {hmac_pool.PARALLEL_MIN_VALUES:,} tokens: {time.perf_counter() - started:.2f}s")

    cpu: list[float] = []
    parallel = rates(lambda: tokenise_distinct(key, "nhs_number", values), args.values, args.repeats, cpu)
    os.environ["PPRL_TOKEN_WORKERS"] = "0"
    single = rates(lambda: tokenise_distinct(key, "nhs_number", values), args.values, max(1, args.repeats // 2))
    del os.environ["PPRL_TOKEN_WORKERS"]
    fk, sample = field_key(key, "nhs_number"), [v.encode() for v in values.head(500_000).to_list()]
    plain = rates(lambda: [hmac.digest(fk, v, "sha256").hex() for v in sample], len(sample), 2)

    best, median = max(parallel), statistics.median(parallel)
    print(f"pipeline, {workers} worker processes: best {best:,.0f} tokens/s, median {median:,.0f} "
          f"({', '.join(f'{r / 1e6:.2f}M' for r in parallel)})")  # fmt: skip
    per_cpu = args.values / min(cpu)
    print(f"  CPU used: {min(cpu):.2f} CPU-seconds per run at best, i.e. {per_cpu:,.0f} tokens per CPU-second; "
          f"on {workers} otherwise idle cores that is at most {per_cpu * workers:,.0f} tokens/s")  # fmt: skip
    print(f"pipeline, this process only:    best {max(single):,.0f} tokens/s")
    print(f"plain hmac.digest loop:         best {max(plain):,.0f} tokens/s")
    openssl, cmd = openssl_hmac_rate()
    if openssl:
        print(f"openssl, one core, 16-byte messages: {openssl:,.0f} HMAC-SHA256/s  ({cmd})")
        print(f"pipeline / openssl one core: best {best / openssl:.2f}x, median {median / openssl:.2f}x")
    else:
        print(f"openssl speed unavailable ({cmd})")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
