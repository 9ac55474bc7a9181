"""Our own P-DATA-TF reading (dicom_node.pdata_receive): parser units and raw PDUs on a node."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import MRImageStorage, Verification  # type: ignore[attr-defined]

from dicom_node.pdata_receive import (
    PDataError,
    Pdv,
    StoreRequest,
    decode_command,
    encode_pdata,
    has_data_set,
    split_pdvs,
    store_request,
)
from dicom_node.scp import ScpConfig, StorageSCP
from dicom_node.spool import Spool
from tests.test_dicom_node_factories import make_mr
from tests.test_dicom_node_network import OUR_AE, Node, start_scp

CLASS_UID = str(MRImageStorage)
COMMAND_LAST = 0x03
COMMAND_MORE = 0x01
DATA_LAST = 0x02
DATA_MORE = 0x00


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _uid(text: str) -> bytes:
    raw = text.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def command_set(
    *,
    command_field: int = 0x0001,
    message_id: int | None = 1,
    class_uid: str = CLASS_UID,
    instance_uid: str = "1.2.3.4",
    data_set_type: int = 0x0000,
) -> bytes:
    """A command set written element by element (as a peer would), group length first."""
    body = _element(0x0002, _uid(class_uid))
    body += _element(0x0100, struct.pack("<H", command_field))
    if message_id is not None:
        body += _element(0x0110, struct.pack("<H", message_id))
    if command_field == 0x0001:
        body += _element(0x0700, struct.pack("<H", 0))
    body += _element(0x0800, struct.pack("<H", data_set_type))
    if command_field == 0x0001:
        body += _element(0x1000, _uid(instance_uid))
    return _element(0x0000, struct.pack("<I", len(body))) + body


def pdu(*items: tuple[int, int, bytes]) -> bytes:
    """A P-DATA-TF PDU of ``(context ID, control, value)`` items."""
    return encode_pdata([Pdv(context_id, control, value) for context_id, control, value in items])


# ---------------------------------------------------------------- parser (no network)
def test_pdvs_are_split_and_encoded_back_unchanged() -> None:
    raw = pdu((1, COMMAND_LAST, b"abcd"), (3, DATA_MORE, b"xy"), (3, DATA_LAST, b"z" * 300))
    assert raw[0] == 0x04 and struct.unpack(">I", raw[2:6])[0] == len(raw) - 6
    items = split_pdvs(raw[6:])
    assert [(p.context_id, p.is_command, p.is_last, bytes(p.value)) for p in items] == [
        (1, True, True, b"abcd"),
        (3, False, False, b"xy"),
        (3, False, True, b"z" * 300),
    ]
    assert encode_pdata(items) == raw


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "without PDV items"),
        (b"\x00\x00\x00", "cut off"),
        (b"\x00\x00\x00\x02\x01\x03" + b"\x00\x00", "cut off"),  # second header truncated
        (b"\x00\x00\x00\x00\x01\x03", "length 0"),
        (b"\x00\x00\x00\x01\x01\x03", "length 1"),
        (b"\x00\x00\x00\x09\x01\x03abc", "beyond the PDU"),
        (b"\xff\xff\xff\xff\x01\x03abc", "beyond the PDU"),
    ],
)
def test_inconsistent_pdv_items_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(PDataError, match=message):
        split_pdvs(body)


def test_a_plain_c_store_command_is_recognised() -> None:
    elements = decode_command(command_set(message_id=513, instance_uid="1.2.345"))
    assert has_data_set(elements) is True
    assert store_request(elements, 5) == StoreRequest(5, 513, CLASS_UID, "1.2.345")


@pytest.mark.parametrize(
    "command",
    [
        command_set(command_field=0x0030, class_uid=str(Verification), data_set_type=0x0101),
        command_set(data_set_type=0x0101),  # C-STORE without a data set: pynetdicom's way
        command_set(message_id=None),
        command_set(instance_uid=""),
        command_set(instance_uid="1.2.x"),
        command_set(instance_uid="1." * 40),
    ],
    ids=["c-echo", "no-data-set", "no-message-id", "empty-uid", "letter-in-uid", "long-uid"],
)
def test_other_commands_are_not_taken(command: bytes) -> None:
    assert store_request(decode_command(command), 1) is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x00\x00\x00\x01\x02", "cut off"),
        (b"\x08\x00\x16\x00\x02\x00\x00\x00ab", "not in group 0000"),
        (b"\x00\x00\x10\x01\x09\x00\x00\x00ab", "longer than the command"),
        (_element(0x0110, b"\x01\x00") * 2, "twice"),
    ],
)
def test_broken_command_sets_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(PDataError, match=message):
        decode_command(raw)


def test_data_set_type_missing_or_odd_is_unknown() -> None:
    assert has_data_set({}) is None
    assert has_data_set({0x0800: b"\x01"}) is None
    assert has_data_set({0x0800: b"\x01\x01"}) is False


# ---------------------------------------------------------------- raw PDUs on a node
@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    started: list[StorageSCP] = []

    def _start(direct_pdata: bool = True) -> Node:
        node = start_scp(Spool(tmp_path / f"spool-{len(started)}"), direct_pdata=direct_pdata)
        started.append(node.scp)
        return node

    yield _start
    for scp in started:
        scp.stop()


def _associate(node: Node) -> tuple[Association, int, int]:
    """An association with an MR context (implicit VR) and Verification; their IDs."""
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage, ImplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assert node.scp.port is not None
    assoc = ae.associate("127.0.0.1", node.scp.port, ae_title=OUR_AE)
    assert assoc.is_established
    ids = {str(c.abstract_syntax): int(c.context_id) for c in assoc.accepted_contexts}
    return assoc, ids[CLASS_UID], ids[str(Verification)]


def _exchange(assoc: Association, *pdus: bytes, answers: int = 1, timeout_s: float = 5.0) -> Any:
    """Send raw PDUs; the responses that came (up to ``answers``), stopping on an abort."""
    assoc._reactor_checkpoint.clear()  # our reading of the response queue, not pynetdicom's
    try:
        while not assoc._is_paused:
            time.sleep(0.001)
        for raw in pdus:
            assert assoc.dul.socket is not None
            assoc.dul.socket.send(raw)
        responses: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(responses) < answers and time.monotonic() < deadline:
            if assoc.acse.is_aborted() or not assoc.is_established:
                break
            _, message = assoc.dimse.get_msg(block=False)
            if message is not None:
                responses.append(message)
            time.sleep(0.002)
        return responses
    finally:
        assoc._reactor_checkpoint.set()


def _wait_aborted(assoc: Association, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.01)
    assert assoc.is_aborted


def _mr_bytes(instance_number: int = 1) -> tuple[str, bytes]:
    ds = make_mr(instance_number=instance_number)
    return str(ds.SOPInstanceUID), bytes(encode(ds, True, True))


@pytest.mark.parametrize("direct", [True, False], ids=["direct_pdata", "pynetdicom_pdata"])
def test_direct_reading_is_used_for_c_stores_when_on(
    start: Callable[..., Node], monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    """With direct_pdata, pynetdicom decodes no P-DATA-TF PDU of a C-STORE (only others)."""
    decoded: list[bytes] = []
    original = DULServiceProvider._decode_pdu

    def counting(dul: DULServiceProvider, bytestream: bytearray) -> Any:
        if dul.assoc.is_acceptor and bytestream[:1] == b"\x04":
            decoded.append(bytes(bytestream[:1]))
        return original(dul, bytestream)

    monkeypatch.setattr(DULServiceProvider, "_decode_pdu", counting)
    node = start(direct_pdata=direct)
    assoc, _, _ = _associate(node)
    try:
        statuses = [int(assoc.send_c_store(make_mr(instance_number=n)).Status) for n in (1, 2)]
        stores_decoded = len(decoded)
        assert int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()
    assert statuses == [0, 0]
    assert len(list(node.spool.iter_files())) == 2
    if direct:
        assert stores_decoded == 0
        assert len(decoded) == 1  # the C-ECHO went pynetdicom's way
    else:
        assert stores_decoded >= 2


def test_fragments_across_pdus_and_a_c_echo_behind_them_are_both_answered(
    start: Callable[..., Node],
) -> None:
    node = start()
    assoc, mr, echo = _associate(node)
    sop_uid, data = _mr_bytes()
    cut = len(data) // 3
    store = command_set(message_id=7, instance_uid=sop_uid)
    echo_command = command_set(
        command_field=0x0030, message_id=8, class_uid=str(Verification), data_set_type=0x0101
    )
    try:
        responses = _exchange(
            assoc,
            pdu((mr, COMMAND_MORE, store[:10]), (mr, COMMAND_LAST, store[10:])),
            pdu((mr, DATA_MORE, data[:cut]), (mr, DATA_MORE, data[cut : 2 * cut])),
            pdu((mr, DATA_LAST, data[2 * cut :]), (echo, COMMAND_LAST, echo_command)),
            answers=2,
        )
    finally:
        assoc.release()
    kinds = sorted(
        (type(r).__name__, int(r.MessageIDBeingRespondedTo), r.Status) for r in responses
    )
    assert kinds == [("C_ECHO", 8, 0), ("C_STORE", 7, 0)]
    (stored,) = node.spool.iter_files()
    assert stored.name == f"{sop_uid}.dcm"
    assert dcmread(stored).SOPInstanceUID == sop_uid
    assert node.record().instances == 1


def test_a_pdu_longer_than_our_maximum_aborts_before_its_body_is_read(
    start: Callable[..., Node],
) -> None:
    node = start()
    assoc, _, _ = _associate(node)
    _exchange(assoc, struct.pack(">BBI", 0x04, 0, 0xFFFFFFF0) + b"\x00" * 64, answers=0)
    _wait_aborted(assoc)
    record = node.record()
    assert record.reason == (
        "aborted by us: P-DATA-TF PDU of 4294967280 bytes, above our maximum 131072"
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x00\x00\x00\x09\x01\x03abc", "beyond the PDU"),
        (b"\x00\x00\x00\x00\x01\x03", "length 0"),
        (b"\x00\x00\x00", "cut off"),
    ],
    ids=["pdv-beyond-pdu", "zero-length-item", "truncated-item"],
)
def test_inconsistent_pdata_aborts_with_the_reason_recorded(
    start: Callable[..., Node], body: bytes, reason: str
) -> None:
    node = start()
    assoc, _, _ = _associate(node)
    _exchange(assoc, struct.pack(">BBI", 0x04, 0, len(body)) + body, answers=0)
    _wait_aborted(assoc)
    record = node.record()
    assert record.accepted and record.reason.startswith("aborted by us:")
    assert reason in record.reason


def test_a_command_inside_a_c_store_data_set_aborts(start: Callable[..., Node]) -> None:
    node = start()
    assoc, mr, _ = _associate(node)
    sop_uid, data = _mr_bytes()
    store = command_set(instance_uid=sop_uid)
    _exchange(
        assoc,
        pdu((mr, COMMAND_LAST, store), (mr, DATA_MORE, data[:100])),
        pdu((mr, COMMAND_LAST, store)),
        answers=0,
    )
    _wait_aborted(assoc)
    assert "before the last data fragment" in node.record().reason
    assert list(node.spool.iter_files()) == []


def test_a_command_never_finished_before_release_is_dropped(start: Callable[..., Node]) -> None:
    node = start()
    assoc, mr, _ = _associate(node)
    store = command_set()
    assert _exchange(assoc, pdu((mr, COMMAND_MORE, store[:20])), answers=0) == []
    assoc.release()
    assert assoc.is_released
    record = node.record()
    assert (record.reason, record.instances, record.failures) == ("released", 0, 0)


def _outcome(node: Node, *pdus: bytes) -> tuple[list[tuple[str, int]], bool, str]:
    assoc, _, _ = _associate(node)
    responses = _exchange(assoc, *pdus, timeout_s=2.0)
    deadline = time.monotonic() + 2
    while not assoc.is_aborted and time.monotonic() < deadline and not responses:
        time.sleep(0.01)
    aborted = assoc.is_aborted
    if assoc.is_established:
        assoc.release()
    answered = [(type(r).__name__, int(r.Status)) for r in responses]
    return answered, aborted, node.record().reason


@pytest.mark.parametrize("case", ["data-before-command", "unknown-context", "no-data-set-store"])
def test_unusual_messages_are_handled_as_pynetdicom_does(
    start: Callable[..., Node], case: str
) -> None:
    """What pynetdicom does without direct_pdata, the direct path does too (handed over)."""
    sop_uid, data = _mr_bytes()

    def pdus(mr: int) -> list[bytes]:
        if case == "data-before-command":
            return [pdu((mr, DATA_LAST, data))]
        if case == "unknown-context":
            return [pdu((99, COMMAND_LAST, command_set(instance_uid=sop_uid)), (99, 2, data))]
        return [pdu((mr, COMMAND_LAST, command_set(instance_uid=sop_uid, data_set_type=0x0101)))]

    outcomes = []
    for direct in (False, True):
        node = start(direct_pdata=direct)
        assert node.scp.port is not None
        mr = 1  # the first context pynetdicom proposes
        outcomes.append(_outcome(node, *pdus(mr)))
    assert outcomes[0] == outcomes[1]
    if case == "no-data-set-store":
        assert outcomes[0][0] == [("C_STORE", 0xC210)]


def test_store_then_echo_use_the_message_ids_of_their_requests(
    start: Callable[..., Node],
) -> None:
    node = start()
    assoc, mr, _ = _associate(node)
    sop_uid, data = _mr_bytes()
    try:
        (response,) = _exchange(
            assoc,
            pdu((mr, COMMAND_LAST, command_set(message_id=65535, instance_uid=sop_uid))),
            pdu((mr, DATA_LAST, data)),
        )
        assert isinstance(response, C_STORE)
        assert (response.MessageIDBeingRespondedTo, response.Status) == (65535, 0)
        assert response.AffectedSOPInstanceUID == sop_uid
        assert int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()
    assert node.instances.get(timeout=5).sop_instance_uid == sop_uid


def test_direct_pdata_setting_is_a_bool_and_on_by_default() -> None:
    assert ScpConfig("CORDT1").direct_pdata is True
    with pytest.raises(ValueError, match="direct_pdata"):
        ScpConfig("CORDT1", direct_pdata="no")  # type: ignore[arg-type]
