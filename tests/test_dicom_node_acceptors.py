"""Several acceptor processes share the plain port; policy and callbacks stay in this process."""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import queue
import signal
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node import acceptors as acceptors_module
from dicom_node.instance import InstanceInfo, OwnResultMarkers, PseudonymKey
from dicom_node.scp import AssociationRecord, ScpConfig, StorageSCP, StoreRefusal
from dicom_node.scu import Destination, SendError, send
from dicom_node.spool import Spool
from dicom_node.status import StoreStatus
from tests.test_dicom_node_factories import make_mr

pytestmark = pytest.mark.slow  # starts child processes

OUR_AE = "CORDT1"


@dataclass
class Pool:
    scp: StorageSCP
    spool: Spool
    instances: queue.Queue[InstanceInfo] = field(default_factory=queue.Queue)
    records: queue.Queue[AssociationRecord] = field(default_factory=queue.Queue)
    refusals: queue.Queue[StoreRefusal] = field(default_factory=queue.Queue)
    paused: threading.Event = field(default_factory=threading.Event)
    failing: threading.Event = field(default_factory=threading.Event)

    @property
    def destination(self) -> Destination:
        assert self.scp.port is not None
        return Destination(OUR_AE, "127.0.0.1", self.scp.port)

    def drain_records(self) -> list[AssociationRecord]:
        out = []
        while True:
            try:
                out.append(self.records.get(timeout=0.5))
            except queue.Empty:
                return out


def _start(root: Path, **limits: int) -> Pool:
    """A pooled SCP (2 processes); ``limits`` replace max_associations(_per_ae)."""
    spool = Spool(root / "spool")
    config: dict[str, int] = {"max_associations_per_ae": 2}
    config.update(limits)
    holder: dict[str, Pool] = {}

    def on_instance(info: InstanceInfo) -> None:
        if holder["pool"].failing.is_set():
            raise RuntimeError("database down")
        holder["pool"].instances.put(info)

    scp = StorageSCP(
        ScpConfig(
            OUR_AE,
            host="127.0.0.1",
            port=0,
            min_free_bytes=0,
            allowed_calling_aes={"SCANNER": None, "OTHER": None},
            acceptor_processes=2,
            **config,  # type: ignore[arg-type]
        ),
        spool,
        on_instance,
        lambda record: holder["pool"].records.put(record),
        own_markers=OwnResultMarkers(manufacturer="cordt1"),
        pseudonyms=PseudonymKey(b"test-site-secret-0123"),
        on_refusal=lambda refusal: holder["pool"].refusals.put(refusal),
        paused=lambda: holder["pool"].paused.is_set(),
    )
    pool = Pool(scp, spool)
    holder["pool"] = pool
    scp.start()
    return pool


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    started = _start(tmp_path_factory.mktemp("acceptors"))
    yield started
    started.scp.stop()


@pytest.fixture(autouse=True)
def _clean(pool: Pool) -> Iterator[None]:
    pool.paused.clear()
    pool.failing.clear()
    yield
    pool.drain_records()
    for leftover in (pool.instances, pool.refusals):
        while not leftover.empty():
            leftover.get_nowait()


def test_associations_are_spread_over_the_processes_and_reported_here(pool: Pool) -> None:
    assert len(pool.scp.acceptor_pids) == 2
    sent = [make_mr() for _ in range(16)]
    for ds in sent:  # one after the other: the children take turns
        send([ds], pool.destination, calling_ae="SCANNER", timeout_s=20)
    infos = [pool.instances.get(timeout=10) for _ in sent]
    assert {i.sop_instance_uid for i in infos} == {ds.SOPInstanceUID for ds in sent}
    assert all(i.calling_ae == "SCANNER" for i in infos)
    assert dcmread(infos[0].path) == next(
        ds for ds in sent if ds.SOPInstanceUID == infos[0].sop_instance_uid
    )
    records = pool.drain_records()
    assert len(records) == 16 and all(r.accepted and r.instances == 1 for r in records)
    served_by = {r.acceptor_pid for r in records}
    assert served_by == set(pool.scp.acceptor_pids) and os.getpid() not in served_by


def _hold(pool: Pool, n: int, calling_ae: str = "SCANNER") -> list[Association]:
    holder = AE(ae_title=calling_ae)
    holder.add_requested_context(Verification)
    port = pool.destination.port
    held = [holder.associate("127.0.0.1", port, ae_title=OUR_AE) for _ in range(n)]
    assert all(assoc.is_established for assoc in held)
    return held


def _wait_open(pool: Pool, wanted: list[int]) -> None:
    assert pool.scp._pool is not None
    deadline = time.monotonic() + 10
    while sorted(pool.scp._pool.open_connections) != wanted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(pool.scp._pool.open_connections) == wanted


def test_concurrent_senders_are_spread_evenly_over_the_processes(pool: Pool) -> None:
    # The kernel's SO_REUSEPORT hash put 3 or 4 of 4 senders on one of two processes in
    # 10 of 16 cases; the least busy process now takes each new connection.
    for _ in range(3):
        held = _hold(pool, 2) + _hold(pool, 2, calling_ae="OTHER")
        _wait_open(pool, [2, 2])
        for assoc in held:
            assoc.release()
        _wait_open(pool, [0, 0])
        records = pool.drain_records()
        assert len(records) == 4 and all(r.accepted for r in records)
        per_process = Counter(r.acceptor_pid for r in records)
        assert sorted(per_process.values()) == [2, 2]
        assert set(per_process) == set(pool.scp.acceptor_pids)


def test_a_new_connection_goes_to_the_process_whose_association_ended(pool: Pool) -> None:
    first, second = _hold(pool, 2)
    _wait_open(pool, [1, 1])
    first.release()
    _wait_open(pool, [0, 1])
    (ended,) = pool.drain_records()
    assert pool.scp._pool is not None
    idle_pid = pool.scp.acceptor_pids[pool.scp._pool.open_connections.index(0)]
    assert ended.acceptor_pid == idle_pid
    send([make_mr()], pool.destination, calling_ae="SCANNER", timeout_s=20)
    (sent,) = pool.drain_records()
    assert sent.acceptor_pid == idle_pid and sent.instances == 1
    second.release()
    _wait_open(pool, [0, 0])


def test_a_failure_while_handing_over_drops_that_connection_only(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert pool.scp._pool is not None
    real = pool.scp._pool._hand_out
    calls: list[int] = []

    def fail_once(connection: socket.socket) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in the hand-over")
        real(connection)

    monkeypatch.setattr(pool.scp._pool, "_hand_out", fail_once)
    with pytest.raises(SendError):
        send([make_mr()], pool.destination, calling_ae="SCANNER", timeout_s=20)
    ds = make_mr()
    send([ds], pool.destination, calling_ae="SCANNER", timeout_s=20)  # still accepting
    assert pool.instances.get(timeout=10).sop_instance_uid == ds.SOPInstanceUID
    assert len(calls) == 2


def test_a_connection_reset_before_its_acceptor_reads_it_is_not_counted_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A health check or an impatient sender that connects and resets: the acceptor process
    # gets a connection that is already dead (no peer address) and never serves it.
    started = _start(tmp_path)
    try:
        assert started.scp._pool is not None
        real = started.scp._pool._hand_out
        reset, handed = threading.Event(), threading.Event()

        def after_the_reset(connection: socket.socket) -> None:
            reset.wait(10)
            real(connection)
            handed.set()

        monkeypatch.setattr(started.scp._pool, "_hand_out", after_the_reset)
        probe = socket.create_connection(("127.0.0.1", started.destination.port))
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        probe.close()  # RST
        time.sleep(0.1)
        reset.set()
        assert handed.wait(10)
        _wait_open(started, [0, 0])  # not counted as open for ever
        monkeypatch.undo()
        held = _hold(started, 2)  # and two senders are still spread over both processes
        _wait_open(started, [1, 1])
        for assoc in held:
            assoc.release()
    finally:
        started.scp.stop()


def test_refusals_in_an_acceptor_process_reach_the_audit_trail_here(pool: Pool) -> None:
    with pytest.raises(SendError, match=r"rejected.*[Cc]alling AE"):
        send([make_mr()], pool.destination, calling_ae="INTRUDER", timeout_s=20)
    (record,) = pool.drain_records()
    assert not record.accepted and "not in allowed_calling_aes" in record.reason
    ds = make_mr()
    ds.StudyInstanceUID = "1.2/../../../evil"
    with pytest.raises(SendError, match="0xC210"):
        send([ds], pool.destination, calling_ae="SCANNER", timeout_s=20)
    refusal = pool.refusals.get(timeout=10)
    assert refusal.status == StoreStatus.CANNOT_UNDERSTAND and refusal.calling_ae == "SCANNER"
    assert refusal.quarantined is not None
    assert (pool.spool.quarantine_dir / refusal.quarantined).is_file()


def test_per_ae_limit_counts_the_associations_of_every_process(pool: Pool) -> None:
    holder = AE(ae_title="SCANNER")
    holder.add_requested_context(Verification)
    held = [holder.associate("127.0.0.1", pool.destination.port, ae_title=OUR_AE) for _ in "ab"]
    try:
        assert all(assoc.is_established for assoc in held)
        with pytest.raises(SendError, match="rejected"):
            send([make_mr()], pool.destination, calling_ae="SCANNER", timeout_s=20)
        send([make_mr()], pool.destination, calling_ae="OTHER", timeout_s=20)
    finally:
        for assoc in held:
            assoc.release()
    reasons = [r.reason for r in pool.drain_records() if not r.accepted]
    assert reasons == ["too many associations from this calling AE (max_associations_per_ae 2)"]
    send([make_mr()], pool.destination, calling_ae="SCANNER", timeout_s=20)  # slots freed


MAX_REACHED = "too many associations (max_associations reached)"
PER_AE_REACHED = "too many associations from this calling AE (max_associations_per_ae 2)"
TRANSIENT_LOCAL_LIMIT = (2, 3, 2)  # rejected-transient, service-provider (presentation), limit


def _rejection(pool: Pool, calling_ae: str) -> tuple[tuple[int, int, int], str]:
    """Ask for one more association, which must be rejected: (result, source, reason), why."""
    asker = AE(ae_title=calling_ae)
    asker.add_requested_context(Verification)
    assoc = asker.associate("127.0.0.1", pool.destination.port, ae_title=OUR_AE)
    assert assoc.is_rejected, f"association from {calling_ae} not rejected"
    primitive = assoc.acceptor.primitive
    assert primitive is not None
    (record,) = pool.drain_records()
    assert not record.accepted and record.calling_ae == calling_ae
    return (primitive.result, primitive.result_source, primitive.diagnostic), record.reason


def test_max_associations_counts_every_process_and_a_freed_slot_serves_again(
    tmp_path: Path,
) -> None:
    started = _start(tmp_path, max_associations=3, max_associations_per_ae=10)
    held: list[Association] = []
    try:
        held = _hold(started, 2) + _hold(started, 1, calling_ae="OTHER")
        _wait_open(started, [1, 2])  # the three are spread over both processes
        assert _rejection(started, "OTHER") == (TRANSIENT_LOCAL_LIMIT, MAX_REACHED)
        with pytest.raises(SendError, match="rejected"):
            send([make_mr()], started.destination, calling_ae="SCANNER", timeout_s=20)
        assert [r.reason for r in started.drain_records()] == [MAX_REACHED]
        held.pop(0).release()
        (ended,) = started.drain_records()
        assert ended.accepted and ended.reason == "released"
        ds = make_mr()
        report = send([ds], started.destination, calling_ae="SCANNER", timeout_s=20)
        assert report.n_stored == 1
        assert started.instances.get(timeout=10).sop_instance_uid == ds.SOPInstanceUID
    finally:
        for assoc in held:
            assoc.release()
        started.scp.stop()


def test_max_associations_is_checked_before_the_per_ae_cap(tmp_path: Path) -> None:
    started = _start(tmp_path, max_associations=3, max_associations_per_ae=2)
    held: list[Association] = []
    try:
        held = _hold(started, 2)
        _wait_open(started, [1, 1])  # one SCANNER association in each process
        assert _rejection(started, "SCANNER") == (TRANSIENT_LOCAL_LIMIT, PER_AE_REACHED)
        held += _hold(started, 1, calling_ae="OTHER")  # the last slot of max_associations
        _wait_open(started, [1, 2])
        # a third SCANNER association is over both limits: the audit names max_associations
        assert _rejection(started, "SCANNER") == (TRANSIENT_LOCAL_LIMIT, MAX_REACHED)
        assert _rejection(started, "OTHER") == (TRANSIENT_LOCAL_LIMIT, MAX_REACHED)
        held.pop().release()  # OTHER's
        (ended,) = started.drain_records()
        assert ended.calling_ae == "OTHER" and ended.reason == "released"
        assert _rejection(started, "SCANNER") == (TRANSIENT_LOCAL_LIMIT, PER_AE_REACHED)
    finally:
        for assoc in held:
            assoc.release()
        started.scp.stop()


def test_pause_switch_of_this_process_rejects_in_every_acceptor(pool: Pool) -> None:
    before = len(list(pool.spool.iter_files()))
    pool.paused.set()
    for _ in range(4):
        with pytest.raises(SendError, match="rejected"):
            send([make_mr()], pool.destination, calling_ae="SCANNER", timeout_s=20)
    records = pool.drain_records()
    assert [r.reason for r in records] == ["intake paused by an operator"] * 4
    assert len(list(pool.spool.iter_files())) == before


def test_a_failing_callback_here_is_answered_c211_and_the_file_stays(pool: Pool) -> None:
    pool.failing.set()
    ds = make_mr()
    with pytest.raises(SendError, match="0xC211"):
        send([ds], pool.destination, calling_ae="SCANNER", timeout_s=20)
    spooled = pool.spool.path_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert spooled.is_file()
    pool.failing.clear()
    send([ds], pool.destination, calling_ae="SCANNER", timeout_s=20)  # a re-send is taken
    assert pool.instances.get(timeout=10).sop_instance_uid == ds.SOPInstanceUID


def test_a_killed_acceptor_is_replaced_and_its_slots_freed(tmp_path: Path) -> None:
    started = _start(tmp_path)
    try:
        old = started.scp.acceptor_pids
        holder = AE(ae_title="SCANNER")
        holder.add_requested_context(Verification)
        held = [
            holder.associate("127.0.0.1", started.destination.port, ae_title=OUR_AE) for _ in "ab"
        ]
        assert all(assoc.is_established for assoc in held)
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pids = started.scp.acceptor_pids
            if len(pids) == 2 and not set(pids) & set(old):
                break
            time.sleep(0.1)
        assert len(started.scp.acceptor_pids) == 2 and not set(started.scp.acceptor_pids) & set(
            old
        )
        lost = [started.records.get(timeout=10) for _ in held]
        assert all("acceptor process" in r.reason and r.acceptor_pid in old for r in lost)
        # both SCANNER slots (max_associations_per_ae 2) are free again
        send([make_mr()], started.destination, calling_ae="SCANNER", timeout_s=20)
        assert started.instances.get(timeout=10).calling_ae == "SCANNER"
    finally:
        started.scp.stop()


def test_an_acceptor_that_cannot_be_started_again_at_once_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = _start(tmp_path)
    try:
        pool = started.scp._pool
        assert pool is not None
        real_spawn = pool._spawn
        refused: list[int] = []

        def refuse_once(index: int) -> object:
            if not refused:  # a passing shortage: too many processes, say
                refused.append(index)
                raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
            return real_spawn(index)

        monkeypatch.setattr(pool, "_spawn", refuse_once)
        old = started.scp.acceptor_pids
        os.kill(old[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pids = started.scp.acceptor_pids
            ready = all(child.ready for child in pool._children)
            if len(pids) == 2 and old[0] not in pids and ready:
                break
            time.sleep(0.1)
        assert refused and old[0] not in started.scp.acceptor_pids
        held = _hold(started, 2)  # both processes serve again
        _wait_open(started, [1, 1])
        for assoc in held:
            assoc.release()
    finally:
        started.scp.stop()


def test_stop_ends_the_acceptor_processes(tmp_path: Path) -> None:
    started = _start(tmp_path)
    pids = started.scp.acceptor_pids
    started.scp.stop()
    assert not started.scp.is_running
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_acceptor_processes_is_validated() -> None:
    for bad in (0, 33, True, 2.0):
        with pytest.raises(ValueError, match="acceptor_processes"):
            ScpConfig(OUR_AE, acceptor_processes=bad)  # type: ignore[arg-type]


def test_a_child_channel_is_not_closed_while_a_connection_is_being_handed_to_it() -> None:
    """Closing waits for the hand-over in progress; a later hand-over fails cleanly."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            ours.send(b"x" * 65536)  # the child reads nothing: its buffer fills
    ours.settimeout(1.0)  # the hand-over now waits this long, then fails
    conn, child_conn = multiprocessing.Pipe()
    control, child_control = multiprocessing.Pipe()
    child = acceptors_module._Child(None, conn, control, ours)  # type: ignore[arg-type]
    events: list[str] = []
    with socket.socket() as connection:

        def hand() -> None:
            try:
                child.hand(connection)
            except OSError as exc:
                events.append(f"hand-over failed: {type(exc).__name__}")

        sender = threading.Thread(target=hand)
        sender.start()
        time.sleep(0.2)  # the send is under way (blocked)
        child.close()
        events.append("closed")
        sender.join(timeout=5)
        assert events == ["hand-over failed: TimeoutError", "closed"]
        with pytest.raises(OSError):  # closed: no descriptor number is written to
            child.hand(connection)
    for end in (theirs, child_conn, child_control):
        end.close()
