"""Hostile and broken input is answered at once, refused with a reason, and audited."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, RLELossless
from pynetdicom import AE, evt
from pynetdicom._handlers import standard_dimse_sent_handler
from pynetdicom.association import Association
from pynetdicom.sop_class import MRImageStorage, Verification  # type: ignore[attr-defined]

from dicom_node.pixel_header import expected_native_bytes, needs_pixel_data, pixel_data_problem
from dicom_node.scp import ScpConfig, StoreRefusal
from dicom_node.scu import Destination, SendError, echo, send
from dicom_node.status import StoreStatus
from service.jobs.store import JobStore
from service.server import Service, record_association, record_refusal
from service.settings import load_settings
from tests.hostile_factory import BROKEN, broken_mr, send_raw_c_store
from tests.test_dicom_node_factories import make_mr
from tests.test_dicom_node_network import OUR_AE, Node, start_node  # noqa: F401  (fixture)

LIMIT = 2 * 1024**3


def _refusals(node: Node) -> list[StoreRefusal]:
    return node.refusals  # type: ignore[attr-defined, no-any-return]


def _associate(node: Node, calling_ae: str) -> Association:
    """An association of ``calling_ae`` with the node, proposing MR Image Storage."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(MRImageStorage)
    return ae.associate("127.0.0.1", node.destination.port, ae_title=OUR_AE)


@pytest.fixture
def hostile_node(start_node: Callable[..., Node]) -> Callable[..., Node]:  # noqa: F811
    def _start(**config: object) -> Node:
        refusals: list[StoreRefusal] = []
        node = start_node(on_refusal=refusals.append, **config)
        node.refusals = refusals  # type: ignore[attr-defined]
        return node

    return _start


# ---------------------------------------------------------------- header checks (no network)
@pytest.mark.parametrize("name", sorted(BROKEN))
def test_each_broken_instance_is_named(name: str) -> None:
    problem = pixel_data_problem(broken_mr(name), max_pixel_bytes=LIMIT)
    assert problem is not None and BROKEN[name][1] in problem
    assert len(problem) <= 64  # fits the Error Comment (LO)


def test_good_instances_pass_native_and_encapsulated() -> None:
    native = make_mr(rows=32, cols=24)
    rle = make_mr()
    rle.compress(RLELossless, encoding_plugin="pydicom")
    j2k = make_mr(rows=64, cols=64)
    j2k.compress(JPEG2000Lossless)
    for ds in (native, rle, j2k):
        assert pixel_data_problem(ds, max_pixel_bytes=LIMIT) is None


def test_fragments_must_cover_every_frame_and_fit() -> None:
    ds = make_mr()
    ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.NumberOfFrames = 3
    assert pixel_data_problem(ds, max_pixel_bytes=LIMIT) == "1 fragment(s) for 3 frames"
    cut = make_mr()
    cut.compress(RLELossless, encoding_plugin="pydicom")
    cut["PixelData"].value = cut.PixelData[:-10]
    assert "cut short" in str(pixel_data_problem(cut, max_pixel_bytes=LIMIT))


def test_limit_and_sizes() -> None:
    assert expected_native_bytes(448, 448, 1, 1, 16) == 448 * 448 * 2
    assert expected_native_bytes(10, 10, 1, 3, 8, "YBR_FULL_422") == 200
    ds = make_mr(rows=64, cols=64)
    assert pixel_data_problem(ds, max_pixel_bytes=64 * 64 * 2) is None
    assert "over limit" in str(pixel_data_problem(ds, max_pixel_bytes=64 * 64 * 2 - 1))
    assert needs_pixel_data(MRImageStorage)
    assert not needs_pixel_data("1.2.840.10008.5.1.4.1.1.88.34")  # Comprehensive 3D SR
    sr = Dataset()
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    assert pixel_data_problem(sr, max_pixel_bytes=LIMIT) is None


# ---------------------------------------------------------------- over the network
@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_instance_is_refused_named_and_quarantined(
    hostile_node: Callable[..., Node], name: str
) -> None:
    node = hostile_node()
    ds = broken_mr(name)
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", node.destination.port, ae_title=OUR_AE)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status.Status == StoreStatus.PIXEL_DATA_MISMATCH
    assert BROKEN[name][1] in status.ErrorComment
    assert list(node.spool.iter_files()) == []
    (kept,) = node.spool.quarantine_dir.glob("*.dcm")
    assert BROKEN[name][1] in json.loads(kept.with_suffix(".json").read_text())["reason"]
    (refusal,) = _refusals(node)
    assert refusal.status == 0xC220 and refusal.quarantined == kept.name
    assert refusal.sop_instance_uid == ds.SOPInstanceUID and refusal.calling_ae == "SCANNER"
    record = node.record()
    assert (record.instances, record.failures) == (0, 1)


def test_our_scu_reports_the_refusal_and_good_instances_still_arrive(
    hostile_node: Callable[..., Node],
) -> None:
    node = hostile_node()
    good = make_mr()
    with pytest.raises(SendError, match="0xC220") as caught:
        send([broken_mr("half pixel data"), good], node.destination, calling_ae="S", timeout_s=10)
    report = caught.value.report
    assert report is not None and report.n_stored == 1
    (failed,) = report.failed
    assert failed.detail.endswith("(PixelData 256 B, header needs 512 B)")
    assert node.instances.get(timeout=5).sop_instance_uid == good.SOPInstanceUID


def test_empty_affected_sop_instance_uid_is_answered_at_once(
    hostile_node: Callable[..., Node],
) -> None:
    node = hostile_node()
    assoc = _associate(node, "BROKEN")
    try:
        response, seconds = send_raw_c_store(assoc, make_mr(), sop_instance_uid=None)
        assert response is not None, "no answer to a C-STORE without Affected SOP Instance UID"
        assert response.Status == StoreStatus.INVALID_SOP_INSTANCE
        assert "AffectedSOPInstanceUID" in str(response.ErrorComment)
        assert seconds < 2
        good = make_mr()
        assert assoc.send_c_store(good).Status == 0x0000  # the association still works
    finally:
        assoc.release()
    (refusal,) = _refusals(node)
    assert refusal.status == 0x0117 and refusal.sop_instance_uid == ""
    assert node.instances.get(timeout=5).sop_instance_uid == good.SOPInstanceUID
    assert (node.record().failures, len(list(node.spool.iter_files()))) == (1, 1)


@pytest.mark.parametrize(
    ("left_out", "comment"),
    [
        ({"with_data_set": False}, "header not understood"),
        ({"with_class_uid": False}, "AffectedSOPClassUID"),
    ],
    ids=["no data set", "no Affected SOP Class UID"],
)
def test_c_store_without_a_required_part_is_answered_c210_at_once(
    hostile_node: Callable[..., Node], left_out: dict[str, bool], comment: str
) -> None:
    node = hostile_node()
    assoc = _associate(node, "BROKEN")
    ds = make_mr()
    try:
        response, seconds = send_raw_c_store(
            assoc, ds, sop_instance_uid=ds.SOPInstanceUID, **left_out
        )
        good, _ = send_raw_c_store(assoc, ds, sop_instance_uid=ds.SOPInstanceUID, message_id=2)
    finally:
        assoc.release()
    assert response is not None and seconds < 2
    assert response.Status == StoreStatus.CANNOT_UNDERSTAND
    assert comment in str(response.ErrorComment)
    assert good is not None and good.Status == StoreStatus.SUCCESS  # the association goes on
    (refusal,) = _refusals(node)
    assert refusal.sop_instance_uid == ds.SOPInstanceUID
    assert node.instances.get(timeout=5).sop_instance_uid == ds.SOPInstanceUID


def test_c_store_without_priority_is_stored_and_answered_success(
    hostile_node: Callable[..., Node],
) -> None:
    """Priority (0000,0700) is required in a C-STORE-RQ, but its absence is tolerated."""
    node = hostile_node()
    sent_commands: list[Dataset] = []

    def on_sent(event: evt.Event) -> None:
        sent_commands.append(event.message.command_set)

    assoc = _associate(node, "NOPRIO")
    assert assoc.is_established
    # pynetdicom's debug-log handler raises on a missing Priority, and would skip ours
    if any(h[0] is standard_dimse_sent_handler for h in assoc.get_handlers(evt.EVT_DIMSE_SENT)):
        assoc.unbind(evt.EVT_DIMSE_SENT, standard_dimse_sent_handler)
    assoc.bind(evt.EVT_DIMSE_SENT, on_sent)
    ds = make_mr()
    try:
        response, seconds = send_raw_c_store(
            assoc, ds, sop_instance_uid=ds.SOPInstanceUID, priority=None
        )
    finally:
        assoc.release()
    (command,) = sent_commands
    assert "Priority" not in command and command.CommandField == 0x0001  # really without it
    assert response is not None and response.Status == StoreStatus.SUCCESS and seconds < 2
    info = node.instances.get(timeout=5)
    assert info.sop_instance_uid == ds.SOPInstanceUID and info.calling_ae == "NOPRIO"
    assert dcmread(info.path) == ds
    assert _refusals(node) == []
    record = node.record()
    assert (record.instances, record.failures, record.reason) == (1, 0, "released")


def test_a_data_set_whose_uids_differ_from_the_request_gets_a900(
    hostile_node: Callable[..., Node],
) -> None:
    """The request names one instance, the data set is another: refused, nothing kept."""
    node = hostile_node()
    assoc = _associate(node, "SCANNER")
    assert assoc.is_established
    ds = make_mr()
    named = "1.2.826.0.1.3680043.8.498.1"  # a valid UID, not the data set's
    try:
        response, seconds = send_raw_c_store(assoc, ds, sop_instance_uid=named)
        good, _ = send_raw_c_store(assoc, ds, sop_instance_uid=ds.SOPInstanceUID, message_id=2)
    finally:
        assoc.release()
    assert response is not None and seconds < 2
    assert response.Status == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert "differ from the request" in str(response.ErrorComment)
    assert good is not None and good.Status == StoreStatus.SUCCESS  # the association goes on
    info = node.instances.get(timeout=5)
    assert info.sop_instance_uid == ds.SOPInstanceUID
    assert [path.name for path in node.spool.iter_files()] == [info.path.name]
    assert list(node.spool.quarantine_dir.glob("*.dcm")) == []
    (refusal,) = _refusals(node)
    assert refusal.sop_instance_uid == named
    assert refusal.status == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    record = node.record()
    assert (record.instances, record.failures) == (1, 1)


def test_request_without_message_id_is_aborted_at_once(
    hostile_node: Callable[..., Node],
) -> None:
    node = hostile_node()
    assoc = _associate(node, "BROKEN")
    ds = make_mr()
    started = time.monotonic()
    response, _ = send_raw_c_store(
        assoc, ds, sop_instance_uid=ds.SOPInstanceUID, message_id=None, timeout_s=5
    )
    deadline = time.monotonic() + 5
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.01)
    assert response is None and assoc.is_aborted
    assert time.monotonic() - started < 3
    record = node.record()
    assert "MessageID" in record.reason and record.accepted


def test_idle_association_is_aborted_after_the_timeout(
    hostile_node: Callable[..., Node],
) -> None:
    node = hostile_node(network_timeout_s=1.0)
    ae = AE(ae_title="IDLER")
    ae.add_requested_context(Verification)
    started = time.monotonic()
    assoc = ae.associate("127.0.0.1", node.destination.port, ae_title=OUR_AE)
    assert assoc.is_established
    while assoc.is_established and time.monotonic() - started < 10:
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    assert assoc.is_aborted and 0.9 <= elapsed < 4
    record = node.record()
    assert record.calling_ae == "IDLER" and record.reason == "aborted by us: idle for 1 s"


def test_per_ae_cap_rejects_the_third_but_not_another_ae(
    hostile_node: Callable[..., Node],
) -> None:
    node = hostile_node(max_associations_per_ae=2, max_associations=10)
    ae = AE(ae_title="BROKEN")
    ae.add_requested_context(Verification)
    held = [ae.associate("127.0.0.1", node.destination.port, ae_title=OUR_AE) for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        third = ae.associate("127.0.0.1", node.destination.port, ae_title=OUR_AE)
        assert third.is_rejected
        primitive = third.acceptor.primitive
        assert (primitive.result, primitive.result_source, primitive.diagnostic) == (2, 3, 2)
        record = node.record()
        assert record.calling_ae == "BROKEN" and "max_associations_per_ae 2" in record.reason
        report = send([make_mr()], node.destination, calling_ae="SCANNER", timeout_s=10)
        assert report.n_stored == 1
    finally:
        for assoc in held:
            assoc.release()


def test_ten_bad_clients_do_not_lock_out_the_scanner(hostile_node: Callable[..., Node]) -> None:
    node = hostile_node(max_associations_per_ae=2, max_associations=10)
    results: list[bool] = []
    holders = []

    def bad_client() -> None:
        ae = AE(ae_title="BROKEN")
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", node.destination.port, ae_title=OUR_AE)
        results.append(assoc.is_established)
        if assoc.is_established:
            holders.append(assoc)
            send_raw_c_store(assoc, make_mr(), sop_instance_uid=None)

    threads = [threading.Thread(target=bad_client) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    try:
        assert sorted(results) == [False] * 8 + [True] * 2
        started = time.monotonic()
        report = send([make_mr()], node.destination, calling_ae="SCANNER", timeout_s=10)
        assert report.n_stored == 1 and time.monotonic() - started < 3
    finally:
        for assoc in holders:
            assoc.release()


def test_silent_clients_with_other_ae_titles_hold_every_slot_until_the_idle_timeout(
    hostile_node: Callable[..., Node],
) -> None:
    """The limit of an empty allow-list: only the idle timeout frees the slots."""
    node = hostile_node(max_associations=3, network_timeout_s=1.5)
    holders = []
    for n in range(3):
        ae = AE(ae_title=f"SILENT{n}")
        ae.add_requested_context(Verification)
        holders.append(ae.associate("127.0.0.1", node.destination.port, ae_title=OUR_AE))
    try:
        assert all(assoc.is_established for assoc in holders)
        assert not echo(node.destination, "SCANNER", timeout_s=5)  # every slot is held
        deadline = time.monotonic() + 10
        while any(not a.is_aborted for a in holders) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(assoc.is_aborted for assoc in holders)  # dropped as idle
        # the slots are free once each is finished (audited), a moment after the abort
        records = [node.record() for _ in range(4)]
        assert sorted((r.calling_ae, r.reason) for r in records) == [
            ("SCANNER", "too many associations (max_associations reached)"),
            *[(f"SILENT{n}", "aborted by us: idle for 1.5 s") for n in range(3)],
        ]
        assert echo(node.destination, "SCANNER", timeout_s=5)
    finally:
        for assoc in holders:
            if assoc.is_established:
                assoc.release()


def test_a_connection_that_never_asks_for_an_association_is_closed_after_the_acse_timeout(
    hostile_node: Callable[..., Node],
) -> None:
    node = hostile_node(acse_timeout_s=1.0)
    with socket.create_connection(("127.0.0.1", node.destination.port), timeout=10) as raw:
        started = time.monotonic()
        assert raw.recv(1024) == b""  # closed by us, nothing sent
        assert 0.8 < time.monotonic() - started < 5
    assert echo(node.destination, "SCANNER", timeout_s=5)


def test_scp_config_validates_the_new_limits() -> None:
    with pytest.raises(ValueError, match="max_associations_per_ae"):
        ScpConfig("CORDT1", max_associations_per_ae=0)
    with pytest.raises(ValueError, match="max_pixel_bytes"):
        ScpConfig("CORDT1", max_pixel_bytes=0)


# ---------------------------------------------------------------- audit trail
def test_refusals_and_associations_are_audited_with_reasons(
    hostile_node: Callable[..., Node], tmp_path: Path
) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    node = hostile_node()
    node.scp._on_refusal = lambda refusal: record_refusal(store, refusal)
    with pytest.raises(SendError):
        send([broken_mr("BitsAllocated 0")], node.destination, calling_ae="SCANNER", timeout_s=10)
    record_association(store, node.record())
    full = hostile_node(min_free_bytes=2**62)
    full.scp._on_refusal = lambda refusal: record_refusal(store, refusal)
    with pytest.raises(SendError, match="0xA700"):
        send([make_mr()], full.destination, calling_ae="SCANNER", timeout_s=10)
    lines = [event["message"] for event in store.iter_events("store.refused")]
    assert len(lines) == 2
    assert "0xC220" in lines[0] and "BitsAllocated 0" in lines[0] and "quarantined as" in lines[0]
    assert "0xA700" in lines[1] and "spool disk" in lines[1] and "quarantined" not in lines[1]
    (association,) = [event["message"] for event in store.iter_events("association")]
    assert "0 instance(s) stored, 1 refused" in association and "released" in association
    assert "Doe" not in " ".join(lines) + association  # no patient name in the audit trail


def test_service_wires_the_settings_and_audits_refusals(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path / "data",
        node={
            "host": "127.0.0.1",
            "port": 0,
            "min_free_mb": 0,
            "idle_timeout_s": 1.0,
            "max_associations_per_ae": 1,
            "max_pixel_mb": 1,
            "direct_pdata": False,  # the default (on) is what the other tests run
        },
    )
    service = Service(settings)
    assert service.scp._config.direct_pdata is False
    service.scp.start()
    try:
        port = service.scp.port
        assert port is not None
        destination = Destination(settings.node.ae_title, "127.0.0.1", port)
        big = make_mr(rows=1024, cols=1024)  # 2 MiB of pixel data, above max_pixel_mb
        with pytest.raises(SendError, match="0xC220"):
            send([big], destination, calling_ae="SCANNER", timeout_s=10)
        ae = AE(ae_title="IDLER")
        ae.add_requested_context(Verification)
        idle = ae.associate("127.0.0.1", port, ae_title=settings.node.ae_title)
        second = ae.associate("127.0.0.1", port, ae_title=settings.node.ae_title)
        assert idle.is_established and second.is_rejected
        deadline = time.monotonic() + 10
        while idle.is_established and time.monotonic() < deadline:
            time.sleep(0.02)
        assert idle.is_aborted
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            messages = [e["message"] for e in service.store.iter_events("association")]
            if len(messages) == 3:
                break
            time.sleep(0.05)
    finally:
        service.scp.stop()
    (refused,) = [e["message"] for e in service.store.iter_events("store.refused")]
    assert "0xC220" in refused and "over limit" in refused and "quarantined as" in refused
    assert any("0 instance(s) stored, 1 refused" in m for m in messages)
    assert any("IDLER" in m and "max_associations_per_ae 1" in m for m in messages)
    assert any("IDLER" in m and "idle for 1 s" in m for m in messages)
    service.store.close()


@pytest.mark.parametrize(
    "bad", [{"idle_timeout_s": 0}, {"max_associations_per_ae": 0}, {"max_pixel_mb": 0}]
)
def test_node_settings_refuse_nonsense_limits(bad: dict[str, float]) -> None:
    with pytest.raises(ValidationError, match=next(iter(bad))):
        load_settings(node=bad)


def test_error_comment_is_a_valid_lo() -> None:
    from dicom_node.scp import _error_comment

    comment = _error_comment("bad \\ value é\n" + "x" * 100)
    assert comment.startswith("bad ? value ??x") and len(comment) == 64
    assert all(" " <= c <= "~" and c != "\\" for c in comment)
