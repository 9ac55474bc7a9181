"""Spool: atomic, durable, idempotent files; hostile UIDs never become paths."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from concurrent.futures import Future
from pathlib import Path

import pytest

from dicom_node import spool as spool_module
from dicom_node.spool import INCOMING_DIR, PARTIAL_SUFFIX, PendingWrite, Spool

STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_write_puts_exact_bytes_under_study_series_sop(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    payload = b"\0" * 128 + b"DICM" + os.urandom(1000)
    path = spool.write(payload, STUDY, SERIES, SOP)
    assert path == tmp_path / "spool" / STUDY / SERIES / f"{SOP}.dcm"
    assert path.read_bytes() == payload
    assert _files(tmp_path / "spool") == [path]


def test_target_appears_only_complete_via_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool")
    payload = os.urandom(50_000)
    seen: list[tuple[bool, bytes]] = []
    real_replace = os.replace

    def spy_replace(src: str, dst: str) -> None:
        # Just before the rename the final name must not exist, the temp file is complete.
        seen.append((Path(dst).exists(), Path(src).read_bytes()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy_replace)
    spool.write(payload, STUDY, SERIES, SOP)
    assert seen == [(False, payload)]


def test_failed_write_leaves_no_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        spool.write(b"data", STUDY, SERIES, SOP)
    assert _files(tmp_path / "spool") == []


@pytest.mark.parametrize("how", ["write", "begin"])
def test_a_folder_made_by_someone_else_is_synced_up_to_the_root_before_the_first_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Another acceptor process may have created the folders and not yet synced them."""
    spool = Spool(tmp_path / "spool")
    root = tmp_path / "spool"
    (root / STUDY / SERIES).mkdir(parents=True)  # made elsewhere, entries maybe not on disk
    synced: list[Path] = []
    real_fsync_dir = spool_module._fsync_dir
    monkeypatch.setattr(
        spool_module, "_fsync_dir", lambda folder: (synced.append(folder), real_fsync_dir(folder))
    )

    def store(sop: str) -> Path:
        if how == "write":
            return spool.write(os.urandom(5000), STUDY, SERIES, sop)
        return spool.begin(os.urandom(5000)).commit(STUDY, SERIES, sop)

    first = store(SOP)
    assert synced == [root / STUDY, root, root / STUDY / SERIES]  # parents, then the file's
    synced.clear()
    store(SOP + ".1")  # known now: only the new file's folder entry
    assert synced == [root / STUDY / SERIES]
    assert first.parent == root / STUDY / SERIES
    shutil.rmtree(root / STUDY)  # retention purged the study: a re-sent instance still lands
    synced.clear()
    again = store(SOP)
    assert again.is_file() and synced == [root / STUDY, root, root / STUDY / SERIES]


def test_duplicate_instance_overwrites_idempotently(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    first = spool.write(b"same bytes", STUDY, SERIES, SOP)
    second = spool.write(b"same bytes", STUDY, SERIES, SOP)
    assert first == second
    assert second.read_bytes() == b"same bytes"
    assert len(_files(tmp_path / "spool")) == 1


@pytest.mark.parametrize(
    "hostile",
    ["..", "../1.2", "1.2/3", "/etc", "1..2", ".1.2", "1.2.", "", "1" * 65, "1.2\x00", "1.a"],
)
def test_hostile_uids_are_rejected_before_touching_disk(tmp_path: Path, hostile: str) -> None:
    spool = Spool(tmp_path / "spool")
    for uids in ((hostile, SERIES, SOP), (STUDY, hostile, SOP), (STUDY, SERIES, hostile)):
        with pytest.raises(ValueError, match="not a valid DICOM UID"):
            spool.write(b"x", *uids)
    assert _files(tmp_path) == []


def test_empty_payload_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        Spool(tmp_path / "spool").write(b"", STUDY, SERIES, SOP)


def test_quarantine_keeps_bytes_and_sidecar(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    kept = spool.quarantine(b"garbage", "header not understood", calling_ae="SCANNER ")
    assert kept.parent == tmp_path / "quarantine"
    assert kept.read_bytes() == b"garbage"
    sidecar = json.loads(kept.with_suffix(".json").read_text())
    assert sidecar["reason"] == "header not understood"
    assert sidecar["calling_ae"] == "SCANNER"
    assert sidecar["size_bytes"] == 7
    assert isinstance(sidecar["received_at"], float)
    assert list(spool.iter_files()) == []


def test_quarantine_folder_can_be_configured(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", quarantine_dir=tmp_path / "bad")
    assert spool.quarantine(b"x", "why").parent == tmp_path / "bad"


def test_free_bytes_reports_the_file_system(tmp_path: Path) -> None:
    free = Spool(tmp_path / "spool").free_bytes()
    assert isinstance(free, int)
    assert 0 < free <= os.statvfs(tmp_path).f_blocks * os.statvfs(tmp_path).f_frsize


def test_iter_files_skips_and_remove_partial_cleans_crash_leftovers(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    done = spool.write(b"ok", STUDY, SERIES, SOP)
    leftover = done.parent / f".{SOP}.abc{PARTIAL_SUFFIX}"
    leftover.write_bytes(b"half")
    assert list(spool.iter_files()) == [done]
    assert spool.remove_partial() == 1
    assert not leftover.exists()
    assert done.exists()


def test_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        Spool(tmp_path / "f")


def test_begin_writes_in_the_background_and_commit_renames(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    payload = os.urandom(300_000)
    pending = spool.begin(payload)
    assert list(spool.iter_files()) == []  # no final name before the commit
    path = pending.commit(STUDY, SERIES, SOP)
    assert path == spool.path_for(STUDY, SERIES, SOP) and path.read_bytes() == payload
    assert _files(tmp_path / "spool") == [path]  # the temporary file is gone
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(RuntimeError, match="already committed"):
        pending.commit(STUDY, SERIES, SOP)


def test_discarded_or_failed_pending_writes_leave_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.begin(b"refused instance").discard()
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        spool.begin(b"data").commit("1.2/../evil", SERIES, SOP)

    real_write = os.write
    synced_flags: list[bool] = []

    def full_disk_write(fd: int, data: bytes | memoryview) -> int:
        if INCOMING_DIR not in os.readlink(f"/proc/self/fd/{fd}"):
            return real_write(fd, data)
        synced_flags.append(bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DSYNC))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk_write)
    with pytest.raises(OSError, match="No space"):
        spool.begin(b"data").commit(STUDY, SERIES, SOP)
    assert _files(tmp_path / "spool") == []
    assert synced_flags == [True]  # the write returns only once the disk has the data


def test_remove_partial_cleans_interrupted_background_writes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.begin(b"x").commit(STUDY, SERIES, SOP)
    leftover = spool.root / INCOMING_DIR / f".abc{PARTIAL_SUFFIX}"
    leftover.write_bytes(b"half")
    assert spool.remove_partial() == 1 and not leftover.exists()


def test_a_write_the_disk_does_not_finish_times_out_and_is_cleaned_up_later(
    tmp_path: Path,
) -> None:
    """A hung disk gets a TimeoutError, not a hang; its file goes when the disk finishes."""
    spool = Spool(tmp_path / "spool")
    temp = spool.root / INCOMING_DIR / f".slow{PARTIAL_SUFFIX}"
    temp.parent.mkdir()
    temp.write_bytes(b"written by a disk that has not confirmed it yet")
    write: Future[None] = Future()
    pending = PendingWrite(spool, temp, write)
    with pytest.raises(TimeoutError, match=r"did not finish writing within 0\.05 s"):
        pending.commit(STUDY, SERIES, SOP, timeout_s=0.05)
    assert not spool.path_for(STUDY, SERIES, SOP).exists()
    assert temp.exists()  # the disk still holds the write
    write.set_result(None)  # the disk finishes
    assert not temp.exists() and list(spool.iter_files()) == []
    with pytest.raises(RuntimeError, match="already committed or discarded"):
        pending.commit(STUDY, SERIES, SOP)
