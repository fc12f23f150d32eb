"""Fixtures shared by more than one test module."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline import io
from pipeline.orchestration.key_holder import IN_PROCESS, KEY_HOLDER_PROCESS
from pipeline.settings import RunConfig

# The tests call the key holder's tasks in their own process, where they can watch its writes and
# scan its logs; tests/test_key_holder.py and every embedded run (which always uses child
# processes, pipeline.orchestration.embedded.airflow_env) cover the child processes.
os.environ[KEY_HOLDER_PROCESS] = IN_PROCESS

# `make test` runs the suite on every core, a whole file per worker (pytest-xdist, --dist loadfile),
# in the order below: the files that take longest first (seconds on 2 cores, serial, December 2026),
# so that no worker starts one of them while the other has nothing left to do. The rest follow in
# their usual order.
SLOWEST_FIRST = (
    "integration/test_celery_deployment.py",  # 225 s: Postgres, Redis and Airflow's services
    "test_end_to_end.py",  # 150 s
    "test_crash_safety.py",  # 130 s
    "test_privacy_zones.py",  # 120 s
    "test_dags.py",  # 85 s
    "test_key_holder.py",  # 70 s
    "test_validate.py",  # 60 s
    "test_effect_recovery.py",  # 60 s
    "test_pseudonymise.py",  # 55 s
    "test_link_spark.py",  # 55 s
)


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}

    def slowness(item) -> int:
        try:
            name = item.path.resolve().relative_to(here).as_posix()
        except ValueError:
            return len(rank)
        return rank.get(name, len(rank))

    items.sort(key=slowness)  # stable: the usual order within a file and among the rest


RELIABILITY_LABEL = "ref-1"
# Settings for a run whose tests read its working zones (pseudonymised/, linked/) after publication,
# which removes them by default (pipeline.zones.purge_working_files).
RETAIN = {"retain_working_files": True, "retention_reason": "the tests read the working zones after publication"}


@dataclass(frozen=True)
class Reference:
    """One uninterrupted run of a small realistic delivery, published as `RELIABILITY_LABEL`."""

    base: Path
    raw: Path
    key_file: Path
    publishing_key_file: Path
    cfg: RunConfig
    # The work folder as it was before each step (pipeline steps, see tests/stage_runner.py).
    snapshots: dict[str, Path]
    # How many outputs each step wrote through pipeline.io.atomic_path.
    writes: dict[str, int]

    def conf(self, work: Path, label: str = RELIABILITY_LABEL, raw: Path | None = None, **extra) -> dict:
        return RunConfig.from_conf(
            {"raw_dir": str(raw or self.raw), "work_dir": str(work), "release_label": label, "key_file": str(self.key_file),
             "publishing_key_file": str(self.publishing_key_file), **extra}
        ).to_conf()

    def published_work(self, work: Path) -> Path:
        """A copy of the published reference run's work folder at `work`, with the label's working
        zones put back from before publication (as a run that kept them would have them)."""
        shutil.copytree(self.cfg.work, work, symlinks=True)
        before = self.snapshots["publish_release"]
        for zone in ("pseudonymised", "linked"):
            shutil.copytree(before / zone / RELIABILITY_LABEL, work / zone / RELIABILITY_LABEL, symlinks=True)
        return work

    @property
    def before_publication(self) -> RunConfig:
        """The reference run as it was before publication, working zones included (a snapshot)."""
        return RunConfig.from_conf({**self.cfg.to_conf(), "work_dir": str(self.snapshots["publish_release"])})

    @property
    def release(self) -> Path:
        return self.cfg.release_dir

    @property
    def trusted(self):
        """The publishing key `pipeline audit` is told to trust (the public key beside the private one)."""
        from pipeline.publish.signing import public_key_path, trusted_key

        return trusted_key(public_key_file=public_key_path(self.publishing_key_file))


def record_tokens(key_file: Path, source: str, record_ids) -> set[str]:
    """The record tokens (pipeline.crypto.tokens.tokenise_record_ids) of a source's provider record IDs."""
    import polars as pl

    from pipeline.crypto.keys import load_key
    from pipeline.crypto.tokens import record_token_key, tokenise_record_ids

    ids = pl.Series("record_id", sorted(record_ids), dtype=pl.String)
    return set(tokenise_record_ids(record_token_key(load_key(str(key_file))), source, ids).to_list())


def tokenised_truth(truth, key):
    """The generator's truth (a frame with source and record_id) with each provider record ID replaced
    by its record token under `key`, as the pseudonymised and linked zones hold it."""
    import polars as pl

    from pipeline.crypto.tokens import record_token_key, tokenise_record_ids

    record_key = record_token_key(key)
    parts = [
        part.with_columns(record_id=tokenise_record_ids(record_key, source, part.get_column("record_id")))
        for (source,), part in truth.group_by("source", maintain_order=True)
    ]
    return pl.concat(parts)


def release_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of a release, by name, with its bytes (a release is a flat folder), except the files
    of facts that differ per run (pipeline.publish.signing.PER_RUN_FILES) and the signature over them,
    which `pipeline audit` checks instead."""
    from pipeline.publish.signing import PER_RUN_FILES, SIGNATURE_FILE

    per_run = (*PER_RUN_FILES, SIGNATURE_FILE)
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.name not in per_run}


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): io.sha256_file(p) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> Reference:
    """Synthetic extracts for 300 people (realistic faults), a key, and the whole run, step by step."""
    import stage_runner

    base = tmp_path_factory.mktemp("reliability")
    conf = stage_runner.new_run(base, RELIABILITY_LABEL, persons=300, seed=29)
    cfg = RunConfig.from_conf(conf)
    key_file, publishing_key_file, work = Path(cfg.key_file), Path(cfg.publishing_key_file), cfg.work
    snapshots: dict[str, Path] = {}
    writes: dict[str, int] = {}

    def on_write(step, n, final):
        writes[step] = n

    for step in stage_runner.steps():
        snapshots[step] = base / "snapshots" / step.replace(":", "-")
        if work.exists():
            shutil.copytree(work, snapshots[step], symlinks=True)
        else:
            snapshots[step].mkdir(parents=True)
        stage_runner.run_watched(conf, on_write, first=step, last=step)
    return Reference(base, base / "input" / "raw", key_file, publishing_key_file, cfg, snapshots, writes)
