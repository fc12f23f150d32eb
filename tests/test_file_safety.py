"""Files the pipeline writes and reads: modes, symbolic links and durability.

- No output is more widely readable than the process's umask allows.
- Quarantined rows (identifiable) are 0600 in 0700 folders whatever the umask.
- An input that is a symbolic link to a file outside the input folder is refused.
- Each output is flushed to disk (file, then folder) around the rename that publishes it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import stat
from pathlib import Path

import polars as pl
import pytest

import stage_runner
from pipeline import io
from pipeline.errors import InputOutsideFolderError
from pipeline.pseudonymise.inputs import check_inputs
from pipeline.settings import SOURCES, RunConfig


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- modes of ordinary outputs follow the umask --------------------------------------------------------


@pytest.mark.parametrize("mask,expected", [(0o077, 0o600), (0o027, 0o640), (0o022, 0o644)])
def test_an_output_is_never_wider_than_the_umask(tmp_path, mask, expected):
    with umask(mask):
        written = [
            io.write_json({"a": 1}, tmp_path / "a.json"),
            io.write_table(pl.DataFrame({"x": [1]}).to_arrow(), tmp_path / "t.parquet"),
            io.copy_file(tmp_path / "a.json", tmp_path / "copy.json"),
        ]
        with io.atomic_path(tmp_path / "streamed.parquet") as tmp:
            pl.LazyFrame({"x": [1]}).sink_parquet(tmp)
        written.append(tmp_path / "streamed.parquet")
    assert {p.name: mode(p) for p in written} == {p.name: expected for p in written}


# --- private outputs: 0600 files in 0700 folders -------------------------------------------------------


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_a_private_output_is_owner_only_whatever_the_umask(tmp_path, mask):
    with umask(mask):
        path = io.write_table(pl.DataFrame({"x": [1]}).to_arrow(), tmp_path / "raw" / "quarantine" / "r1" / "q.parquet", private=True)
        with io.atomic_path(tmp_path / "raw" / "quarantine" / "r1" / "s.parquet", private=True) as tmp:
            pl.LazyFrame({"x": [1]}).sink_parquet(tmp)
    assert mode(path) == mode(path.with_name("s.parquet")) == 0o600
    assert mode(path.parent) == mode(path.parent.parent) == 0o700


@pytest.fixture(scope="module")
def small_delivery(tmp_path_factory):
    """A delivery of 120 people and a key, nothing run yet, with rows that go to quarantine: a
    consented participant born in the future, and a hospital stay discharged before admission."""
    base = tmp_path_factory.mktemp("files")
    conf = stage_runner.new_run(base, "files-1", persons=120, seed=31)
    raw = Path(conf["raw_dir"])
    register = pl.read_parquet(raw / "consent_register.parquet")
    first = register.filter(pl.col("consent_status") == "consented").get_column("participant_id").min()
    register.with_columns(
        date_of_birth=pl.when(pl.col("participant_id") == first).then(pl.lit(dt.date(2030, 1, 1))).otherwise("date_of_birth")
    ).write_parquet(raw / "consent_register.parquet")
    apc = pl.read_parquet(raw / "hospital_apc.parquet")
    first = apc.get_column("record_id").min()
    apc.with_columns(
        discharge_date=pl.when(pl.col("record_id") == first).then(pl.col("admission_date") - pl.duration(days=3)).otherwise("discharge_date")
    ).write_parquet(raw / "hospital_apc.parquet")
    return conf


def test_quarantined_rows_are_owner_only_under_umask_022(small_delivery):
    """The attack: a run under the common umask 022 left identifiable quarantined rows world-readable."""
    with umask(0o022):
        stage_runner.run_steps(small_delivery, last=f"pseudonymise_source:{SOURCES[-1]}")
    quarantine = RunConfig.from_conf(small_delivery).quarantine_dir
    files = sorted(p for p in quarantine.parent.rglob("*") if p.is_file())
    assert {p.name for p in files} == {"consent_register.parquet", "hospital_apc.parquet"}
    assert {str(p): mode(p) for p in files} == {str(p): 0o600 for p in files}
    folders = [quarantine, quarantine.parent]
    assert {str(p): mode(p) for p in folders} == {str(p): 0o700 for p in folders}
    # Outputs of other zones still follow the umask.
    assert mode(RunConfig.from_conf(small_delivery).pseudonymised_dir / "consent.json") == 0o644


# --- symbolic links in the input folder ----------------------------------------------------------------


def test_an_input_linked_to_a_file_outside_the_input_folder_is_refused(small_delivery, tmp_path):
    delivered = Path(small_delivery["raw_dir"])
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in delivered.glob("*.parquet"):
        if f.name == "survey.parquet":
            (raw / f.name).symlink_to(f)
        else:
            shutil.copyfile(f, raw / f.name)
    cfg = RunConfig.from_conf({**small_delivery, "raw_dir": str(raw)})
    with pytest.raises(InputOutsideFolderError) as refused:
        check_inputs(cfg)
    message = str(refused.value)
    assert message.startswith(f"{raw / 'survey.parquet'}: rule 'inside the input folder' broken: ")
    assert "symbolic link" in message and "copy the file into the input folder" in message


def test_an_input_linked_to_a_part_outside_the_input_folder_is_refused(small_delivery, tmp_path):
    delivered = Path(small_delivery["raw_dir"])
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in delivered.glob("*.parquet"):
        if f.name != "gp_events.parquet":
            shutil.copyfile(f, raw / f.name)
    (raw / "gp_events").mkdir()
    (raw / "gp_events" / "part-1.parquet").symlink_to(delivered / "gp_events.parquet")
    with pytest.raises(InputOutsideFolderError, match=r"gp_events/part-1.parquet: rule 'inside the input folder'"):
        check_inputs(RunConfig.from_conf({**small_delivery, "raw_dir": str(raw)}))


def test_a_link_inside_the_input_folder_is_allowed(small_delivery, tmp_path):
    delivered = Path(small_delivery["raw_dir"])
    raw = tmp_path / "raw"
    (raw / "deliveries").mkdir(parents=True)
    for f in delivered.glob("*.parquet"):
        shutil.copyfile(f, raw / "deliveries" / f.name)
        (raw / f.name).symlink_to(Path("deliveries") / f.name)
    cfg = RunConfig.from_conf({**small_delivery, "raw_dir": str(raw), "work_dir": str(tmp_path / "work")})
    assert check_inputs(cfg).exists()


# --- durability: fsync before and after each rename ----------------------------------------------------


class _Journal:
    """Calls through to the real os.fsync and os.replace, writing down what each was given."""

    def __init__(self, monkeypatch):
        self.events: list[tuple[str, str]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd):
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            return real_fsync(fd)

        def replace(src, dst, **kw):
            self.events.append(("replace", str(dst)))
            return real_replace(src, dst, **kw)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)


def test_a_file_is_flushed_before_its_rename_and_its_folder_after(tmp_path, monkeypatch):
    journal = _Journal(monkeypatch)
    with io.atomic_path(tmp_path / "out.parquet") as tmp:
        pl.LazyFrame({"x": [1]}).sink_parquet(tmp)
    (first, flushed), *rest = journal.events
    assert first == "fsync" and Path(flushed).parent == tmp_path and Path(flushed).name.startswith(".out.parquet.")
    assert rest == [("replace", str(tmp_path / "out.parquet")), ("fsync", str(tmp_path))]


def test_a_folder_is_flushed_before_it_replaces_another(tmp_path, monkeypatch):
    src, dst = tmp_path / "staging", tmp_path / "final"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("a")
    dst.mkdir()
    journal = _Journal(monkeypatch)
    io.replace_dir(src, dst)
    synced = [Path(t) for k, t in journal.events if k == "fsync"]
    first_replace = next(i for i, (k, _) in enumerate(journal.events) if k == "replace")
    before = {Path(t) for k, t in journal.events[:first_replace] if k == "fsync"}
    assert {src / "sub" / "a.txt", src / "sub", src} <= before
    assert synced[-1] == tmp_path and journal.events[-1][0] == "fsync"
    assert (dst / "sub" / "a.txt").read_text() == "a"
