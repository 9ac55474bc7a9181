"""Spool.begin writes around the page cache where it can, and is exact and synced either way."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest

from dicom_node.spool import INCOMING_DIR, Spool

STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"
MIB = 2**20


def _record_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool, bool]]:
    """(bytes, O_DIRECT, O_DSYNC) of every write to a file under the incoming folder."""
    real_write = os.write
    writes: list[tuple[int, bool, bool]] = []

    def spy(fd: int, data: bytes | memoryview) -> int:
        if INCOMING_DIR in os.readlink(f"/proc/self/fd/{fd}"):
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            writes.append((len(data), bool(flags & os.O_DIRECT), bool(flags & os.O_DSYNC)))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spy)
    return writes


def _spool_and_read(spool: Spool, payload: bytes) -> bytes:
    path = spool.begin(payload).commit(STUDY, SERIES, SOP)
    return path.read_bytes()


@pytest.mark.parametrize(
    "size",
    [4095, 4096, 400_123, 8 * 4096, 4 * MIB + 4096 + 17, 9 * MIB + 5],
    ids=["under-a-block", "one-block", "mr-slice", "whole-blocks", "two-chunks", "three-chunks"],
)
def test_every_size_arrives_exact_and_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    payload = os.urandom(size)
    writes = _record_writes(monkeypatch)
    assert _spool_and_read(Spool(tmp_path / "spool"), payload) == payload
    assert sum(n for n, _, _ in writes) == size
    assert all(synced for _, _, synced in writes)  # each write returns once the disk has it
    whole_blocks = size - size % 4096
    assert sum(n for n, direct, _ in writes if direct) in (whole_blocks, 0)


def test_whole_blocks_go_around_the_page_cache_the_tail_through_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = _record_writes(monkeypatch)
    spool = Spool(tmp_path / "spool")
    if not _takes_direct_io(tmp_path):
        pytest.skip("this file system takes no O_DIRECT writes")
    payload = os.urandom(400_123)
    assert _spool_and_read(spool, payload) == payload
    head = 400_123 - 400_123 % 4096
    assert writes == [(head, True, True), (400_123 - head, False, True)]


def test_direct_writes_can_be_switched_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = _record_writes(monkeypatch)
    payload = os.urandom(400_123)
    assert _spool_and_read(Spool(tmp_path / "spool", direct_writes=False), payload) == payload
    assert writes and not any(direct for _, direct, _ in writes)


def test_a_file_system_without_direct_io_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fcntl = fcntl.fcntl

    def no_direct(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fcntl(fd, cmd, arg)

    monkeypatch.setattr(fcntl, "fcntl", no_direct)
    writes = _record_writes(monkeypatch)
    payload = os.urandom(400_123)
    assert _spool_and_read(Spool(tmp_path / "spool"), payload) == payload
    assert writes and not any(direct for _, direct, _ in writes)


def test_a_refused_direct_write_is_written_buffered_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    refused: list[int] = []

    def refuse_direct(fd: int, data: bytes | memoryview) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(len(data))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", refuse_direct)
    payload = os.urandom(400_123)
    assert _spool_and_read(Spool(tmp_path / "spool"), payload) == payload
    assert _takes_direct_io(tmp_path) is (len(refused) == 1)


def test_a_failing_direct_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not _takes_direct_io(tmp_path):
        pytest.skip("this file system takes no O_DIRECT writes")
    real_write = os.write

    def disk_full_on_direct(fd: int, data: bytes | memoryview) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", disk_full_on_direct)
    spool = Spool(tmp_path / "spool")
    with pytest.raises(OSError, match="No space"):
        spool.begin(os.urandom(400_123)).commit(STUDY, SERIES, SOP)
    assert not [p for p in (tmp_path / "spool").rglob("*") if p.is_file()]


def _takes_direct_io(folder: Path) -> bool:
    probe = folder / ".direct-probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink()
