"""Our SCU talks to our SCP over real sockets on free ports (in-process, fast)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage, Verification  # type: ignore[attr-defined]

from dicom_node.instance import InstanceInfo, OwnResultMarkers, PseudonymKey
from dicom_node.scp import AssociationRecord, ScpConfig, StorageSCP, StoreRefusal
from dicom_node.scu import Destination, SendError, echo, send
from dicom_node.spool import PendingWrite, Spool
from dicom_node.status import StoreStatus
from tests.test_dicom_node_factories import free_port, make_mr

OUR_AE = "CORDT1"
_DIMSE_RECV = evt.EVT_DIMSE_RECV
MARKERS = OwnResultMarkers(manufacturer="cordt1")


@dataclass
class Node:
    scp: StorageSCP
    spool: Spool
    instances: queue.Queue[InstanceInfo]
    records: queue.Queue[AssociationRecord]

    @property
    def destination(self) -> Destination:
        assert self.scp.port is not None
        return Destination(OUR_AE, "127.0.0.1", self.scp.port)

    def record(self) -> AssociationRecord:
        return self.records.get(timeout=10)


@pytest.fixture(params=[True, False], ids=["direct_pdata", "pynetdicom_pdata"])
def start_node(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Node]]:
    """Start nodes reading C-STORE P-DATA themselves, or through pynetdicom (both tested)."""
    started: list[StorageSCP] = []

    def _start(
        on_instance: Callable[[InstanceInfo], None] | None = None,
        on_refusal: Callable[[StoreRefusal], None] | None = None,
        **config: Any,
    ) -> Node:
        config.setdefault("direct_pdata", request.param)
        node = start_scp(Spool(tmp_path / "spool"), on_instance, on_refusal, **config)
        started.append(node.scp)
        return node

    yield _start
    for scp in started:
        scp.stop()


def start_scp(
    spool: Spool,
    on_instance: Callable[[InstanceInfo], None] | None = None,
    on_refusal: Callable[[StoreRefusal], None] | None = None,
    **config: Any,
) -> Node:
    """Start a node on a free port of 127.0.0.1 (no disk-space minimum); the caller stops it."""
    instances: queue.Queue[InstanceInfo] = queue.Queue()
    records: queue.Queue[AssociationRecord] = queue.Queue()
    settings: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "min_free_bytes": 0}
    settings.update(config)
    scp = StorageSCP(
        ScpConfig(OUR_AE, **settings),
        spool,
        on_instance or instances.put,
        records.put,
        own_markers=MARKERS,
        pseudonyms=PseudonymKey(b"test-site-secret-0123"),
        on_refusal=on_refusal,
    )
    scp.start()
    return Node(scp, spool, instances, records)


def test_sent_instances_arrive_byte_correct_in_the_spool(start_node: Callable[..., Node]) -> None:
    node = start_node(allowed_calling_aes={"SCANNER": "127.0.0.1"})
    study = generate_uid()
    sent = [make_mr(study_uid=study, component=c, patient_id="SECRET-ID") for c in ("UNI", "INV1")]
    report = send(sent, node.destination, calling_ae="SCANNER", timeout_s=10)
    assert report.n_stored == 2 and report.failed == ()
    infos = {info.sop_instance_uid: info for info in (node.instances.get(timeout=5) for _ in sent)}
    for ds in sent:
        info = infos[ds.SOPInstanceUID]
        assert info.path == node.spool.path_for(study, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert info.calling_ae == "SCANNER"
        stored = dcmread(info.path)
        assert stored.PixelData == ds.PixelData
        assert stored == ds  # every element equal
        assert stored.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert info.size_bytes == info.path.stat().st_size
    record = node.record()
    assert (record.calling_ae, record.accepted, record.reason) == ("SCANNER", True, "released")
    assert record.instances == 2 and record.failures == 0
    assert record.bytes == sum(info.size_bytes for info in infos.values())
    assert record.ended_at >= record.started_at


def test_compressed_instance_is_stored_as_received_without_decoding(
    start_node: Callable[..., Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decoding(self: Dataset) -> None:
        raise AssertionError("pixel data must not be decoded while receiving")

    monkeypatch.setattr(Dataset, "pixel_array", property(no_decoding))
    node = start_node()
    ds = make_mr(component="INV2")
    ds.compress(RLELossless, encoding_plugin="pydicom")
    send([ds], node.destination, calling_ae="SCANNER", timeout_s=10)
    info = node.instances.get(timeout=5)
    assert info.transfer_syntax_uid == RLELossless
    assert dcmread(info.path).PixelData == ds.PixelData


def test_files_on_disk_can_be_sent_and_own_results_are_flagged(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = start_node()
    path = tmp_path / "result.dcm"
    make_mr(manufacturer="cordt1").save_as(path, enforce_file_format=True)
    send([path], node.destination, calling_ae="CORDT1", timeout_s=10)
    info = node.instances.get(timeout=5)
    assert info.is_own_result is True
    assert dcmread(info.path) == dcmread(path)


def test_unknown_calling_ae_is_rejected_and_recorded(start_node: Callable[..., Node]) -> None:
    node = start_node(allowed_calling_aes={"SCANNER": None})
    with pytest.raises(SendError, match=r"rejected.*[Cc]alling AE") as caught:
        send([make_mr()], node.destination, calling_ae="INTRUDER", timeout_s=10)
    assert str(node.destination) in str(caught.value)
    record = node.record()
    assert record.calling_ae == "INTRUDER" and record.accepted is False
    assert "not in allowed_calling_aes" in record.reason
    assert list(node.spool.iter_files()) == []


def test_known_ae_from_the_wrong_address_is_rejected(start_node: Callable[..., Node]) -> None:
    node = start_node(allowed_calling_aes={"SCANNER": "192.0.2.10"})
    with pytest.raises(SendError, match="rejected"):
        send([make_mr()], node.destination, calling_ae="SCANNER", timeout_s=10)
    record = node.record()
    assert not record.accepted and "address" in record.reason


def test_wrong_called_ae_is_rejected(start_node: Callable[..., Node]) -> None:
    node = start_node()
    wrong = Destination("NOTUS", "127.0.0.1", node.destination.port)
    with pytest.raises(SendError, match=r"[Cc]alled AE"):
        send([make_mr()], wrong, calling_ae="SCANNER", timeout_s=10)
    assert "called AE title 'NOTUS'" in node.record().reason


def test_low_disk_refuses_with_a700_and_stores_nothing(start_node: Callable[..., Node]) -> None:
    node = start_node(min_free_bytes=2**62)
    with pytest.raises(SendError, match="0xA700") as caught:
        send([make_mr(), make_mr()], node.destination, calling_ae="SCANNER", timeout_s=10)
    report = caught.value.report
    assert report is not None
    assert [o.status for o in report.outcomes] == [StoreStatus.OUT_OF_RESOURCES] * 2
    assert list(node.spool.root.rglob("*")) == []
    assert node.instances.empty()
    assert node.record().failures == 2


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_hostile_uid_is_quarantined_not_spooled(start_node: Callable[..., Node]) -> None:
    node = start_node()
    ds = make_mr()
    ds.StudyInstanceUID = "1.2/../../../evil"
    with pytest.raises(SendError, match="0xC210"):
        send([ds], node.destination, calling_ae="SCANNER", timeout_s=10)
    assert [p for p in node.spool.root.rglob("*") if p.is_file()] == []  # not even a temp file
    (kept,) = node.spool.quarantine_dir.glob("*.dcm")
    assert b"evil" in kept.read_bytes()
    assert "StudyInstanceUID" in kept.with_suffix(".json").read_text()


def test_failing_callback_is_a_failure_status_but_the_file_stays(
    start_node: Callable[..., Node],
) -> None:
    def broken(info: InstanceInfo) -> None:
        raise RuntimeError("database down")

    node = start_node(on_instance=broken)
    ds = make_mr()
    with pytest.raises(SendError, match="0xC211"):
        send([ds], node.destination, calling_ae="SCANNER", timeout_s=10)
    (spooled,) = node.spool.iter_files()
    assert spooled.name == f"{ds.SOPInstanceUID}.dcm"


def test_resending_the_same_instance_is_idempotent(start_node: Callable[..., Node]) -> None:
    node = start_node()
    ds = make_mr()
    send([ds], node.destination, calling_ae="SCANNER", timeout_s=10)
    send([ds], node.destination, calling_ae="SCANNER", timeout_s=10)
    assert len(list(node.spool.iter_files())) == 1


def test_associations_beyond_the_limit_are_rejected_and_recorded(
    start_node: Callable[..., Node],
) -> None:
    node = start_node(max_associations=1)
    holder = AE(ae_title="HOLDER")
    holder.add_requested_context(Verification)
    held = holder.associate("127.0.0.1", node.destination.port, ae_title=OUR_AE)
    assert held.is_established
    try:
        with pytest.raises(SendError, match="rejected"):
            send([make_mr()], node.destination, calling_ae="SCANNER", timeout_s=10)
        record = node.record()
        assert record.calling_ae == "SCANNER" and not record.accepted
        assert "max_associations" in record.reason
    finally:
        held.release()


def test_max_associations_is_checked_before_the_per_ae_cap_in_one_process(
    start_node: Callable[..., Node],
) -> None:
    """As with acceptor processes: an association over both limits is audited as the total."""
    node = start_node(max_associations=2, max_associations_per_ae=1)
    held = []
    for calling_ae in ("SCANNER", "OTHER"):
        holder = AE(ae_title=calling_ae)
        holder.add_requested_context(Verification)
        held.append(holder.associate("127.0.0.1", node.destination.port, ae_title=OUR_AE))
    assert all(assoc.is_established for assoc in held)
    try:
        with pytest.raises(SendError, match="rejected"):
            send([make_mr()], node.destination, calling_ae="SCANNER", timeout_s=10)
        assert node.record().reason == "too many associations (max_associations reached)"
        held.pop().release()  # OTHER's: the total is below the limit again
        assert node.record().reason == "released"
        with pytest.raises(SendError, match="rejected"):
            send([make_mr()], node.destination, calling_ae="SCANNER", timeout_s=10)
        assert node.record().reason == (
            "too many associations from this calling AE (max_associations_per_ae 1)"
        )
    finally:
        for assoc in held:
            assoc.release()


def test_echo_reports_reachability(start_node: Callable[..., Node]) -> None:
    node = start_node()
    assert echo(node.destination, "SCANNER", timeout_s=5) is True
    node.scp.stop()
    assert echo(node.destination, "SCANNER", timeout_s=5) is False


def test_our_scu_reports_a_peer_warning_per_instance_as_stored() -> None:
    """A PACS that stores with a warning (0xB000, coerced elements): stored, and said so."""

    def store(event: evt.Event) -> Dataset:
        status = Dataset()
        coerce = event.request.AffectedSOPInstanceUID == warned.SOPInstanceUID
        status.Status = 0xB000 if coerce else 0x0000
        if coerce:
            status.ErrorComment = "PatientName coerced"
        return status

    warned, plain = make_mr(), make_mr()
    peer = AE(ae_title="WARNPACS")
    peer.add_supported_context(MRImageStorage)
    server = peer.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, store)]
    )
    try:
        destination = Destination("WARNPACS", "127.0.0.1", server.server_address[1])
        report = send([warned, plain], destination, calling_ae="CORDT1", timeout_s=10)
    finally:
        server.shutdown()
    assert (report.n_stored, report.n_warnings, report.failed) == (2, 1, ())
    first, second = report.outcomes
    assert first.status == 0xB000 and first.stored
    assert first.detail == "0xB000 warning: coercion of data elements (PatientName coerced)"
    assert (second.status, second.detail) == (0x0000, "0x0000 success")


def test_send_to_a_closed_port_raises_send_error_naming_destination() -> None:
    destination = Destination("PACS", "127.0.0.1", free_port())
    with pytest.raises(SendError, match=r"PACS@127\.0\.0\.1:\d+.*connection refused") as caught:
        send([make_mr()], destination, calling_ae="CORDT1", timeout_s=5)
    assert caught.value.destination == destination
    assert caught.value.report is None


def test_send_validates_input_before_connecting(tmp_path: Path) -> None:
    destination = Destination("PACS", "127.0.0.1", 104)
    ds = make_mr()
    del ds.file_meta.TransferSyntaxUID
    with pytest.raises(ValueError, match="TransferSyntaxUID"):
        send([ds], destination, calling_ae="CORDT1")
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    with pytest.raises(ValueError, match="not a readable DICOM file"):
        send([tmp_path / "junk.dcm"], destination, calling_ae="CORDT1")
    with pytest.raises(ValueError, match="calling AE"):
        send([make_mr()], destination, calling_ae="")
    assert send([], destination, calling_ae="CORDT1").outcomes == ()


def test_more_than_128_contexts_are_refused() -> None:
    many = []
    for index in range(129):
        ds = make_mr()
        ds.SOPClassUID = f"1.2.840.10008.5.1.4.1.1.{1000 + index}"
        many.append(ds)
    with pytest.raises(ValueError, match="at most 128"):
        send(many, Destination("PACS", "127.0.0.1", 104), calling_ae="CORDT1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("PACS:104", "no AE title"),
        ("@host:104", "no AE title"),
        ("PACS@host", "no HOST:PORT"),
        ("PACS@:104", "no HOST:PORT"),
        ("PACS@host:abc", "not a number"),
        ("PACS@host:0", "1..65535"),
        ("PACS@host:70000", "1..65535"),
        ("WAY_TOO_LONG_AE_TITLE@host:104", "longer than 16"),
        ("PACS@::1:104", "brackets"),
    ],
)
def test_destination_parse_errors_are_clear(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Destination.parse(text)


def test_destination_parse_round_trips() -> None:
    assert Destination.parse(" PACS@10.0.0.5:104 ") == Destination("PACS", "10.0.0.5", 104)
    v6 = Destination.parse("PACS@[::1]:11112")
    assert v6.host == "::1" and str(v6) == "PACS@[::1]:11112"


def test_scp_config_is_validated() -> None:
    with pytest.raises(ValueError, match="port"):
        ScpConfig("CORDT1", port=70000)
    with pytest.raises(ValueError, match="longer than 16"):
        ScpConfig("CORDT1", allowed_calling_aes={"X" * 17: None})
    with pytest.raises(ValueError, match="timeout"):
        ScpConfig("CORDT1", dimse_timeout_s=0)
    config = ScpConfig(" CORDT1 ", allowed_calling_aes={" SCANNER ": None})
    assert config.ae_title == "CORDT1" and dict(config.allowed_calling_aes) == {"SCANNER": None}


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_no_temporary_file_remains_after_stored_and_refused_instances(
    start_node: Callable[..., Node],
) -> None:
    node = start_node()
    good, hostile = make_mr(), make_mr()
    hostile.StudyInstanceUID = "1.2/../../../evil"
    send([good], node.destination, calling_ae="SCANNER", timeout_s=10)
    with pytest.raises(SendError, match="0xC210"):
        send([hostile], node.destination, calling_ae="SCANNER", timeout_s=10)
    assert [p.name for p in node.spool.iter_files()] == [f"{good.SOPInstanceUID}.dcm"]
    assert list(node.spool.root.rglob("*.part")) == []


def test_every_store_is_answered_exactly_once_even_with_reused_message_ids(
    start_node: Callable[..., Node],
) -> None:
    """Stores are answered in the network thread; pynetdicom must not answer them again."""
    node = start_node()
    answers: list[tuple[int, int]] = []

    def on_recv(event: Any) -> None:
        command = event.message.command_set
        if int(command.CommandField) == 0x8001:  # C-STORE-RSP
            answers.append((int(command.MessageIDBeingRespondedTo), int(command.Status)))

    good = [make_mr(instance_number=n) for n in (1, 2, 3)]
    torn = make_mr(instance_number=4)
    torn.PixelData = torn.PixelData[: len(torn.PixelData) // 2]
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(good[0].SOPClassUID)
    ae.add_requested_context(Verification)
    assert node.scp.port is not None
    assoc = ae.associate(
        "127.0.0.1", node.scp.port, ae_title=OUR_AE, evt_handlers=[(_DIMSE_RECV, on_recv)]
    )
    assert assoc.is_established
    try:
        statuses = [int(assoc.send_c_store(ds, msg_id=7).Status) for ds in [*good, torn]]
        assert int(assoc.send_c_echo().Status) == 0  # answered after any second answer
    finally:
        assoc.release()
    assert statuses == [0, 0, 0, int(StoreStatus.PIXEL_DATA_MISMATCH)]
    assert answers == [(7, s) for s in statuses]
    assert sorted(p.name for p in node.spool.iter_files()) == sorted(
        f"{ds.SOPInstanceUID}.dcm" for ds in good
    )
    record = node.record()
    assert (record.instances, record.failures) == (3, 1)


class _HungDiskSpool(Spool):
    """A spool whose disk confirms each write only after ``finish_after_s``."""

    def __init__(self, root: Path, finish_after_s: float) -> None:
        super().__init__(root)
        self.finish_after_s = finish_after_s
        self.temps: list[Path] = []

    def begin(self, encoded: bytes) -> PendingWrite:
        temp = self.root / f".hung-{len(self.temps)}.part"
        temp.write_bytes(encoded)
        self.temps.append(temp)
        write: Future[None] = Future()
        threading.Timer(self.finish_after_s, write.set_result, args=(None,)).start()
        return PendingWrite(self, temp, write)


def test_a_hung_spool_disk_is_answered_a700_in_time_and_audited(tmp_path: Path) -> None:
    spool = _HungDiskSpool(tmp_path / "spool", finish_after_s=3.0)
    refusals: queue.Queue[StoreRefusal] = queue.Queue()
    scp = StorageSCP(
        ScpConfig(OUR_AE, host="127.0.0.1", port=0, min_free_bytes=0, network_timeout_s=1.0),
        spool,
        lambda info: None,
        lambda record: None,
        own_markers=MARKERS,
        pseudonyms=PseudonymKey(b"test-site-secret-0123"),
        on_refusal=refusals.put,
    )
    scp.start()
    try:
        assert scp.port is not None
        with pytest.raises(SendError, match="0xA700"):
            send([make_mr()], Destination(OUR_AE, "127.0.0.1", scp.port), calling_ae="SCANNER")
    finally:
        scp.stop()
    refusal = refusals.get(timeout=5)
    assert refusal.status == StoreStatus.OUT_OF_RESOURCES
    assert "spool disk too slow" in refusal.reason
    assert list(spool.iter_files()) == []
    time.sleep(spool.finish_after_s)  # the disk finishes: the abandoned write is removed
    assert not any(temp.exists() for temp in spool.temps)
