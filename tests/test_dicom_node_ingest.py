"""Ingest fast path: the header is read up to the pixel data, and the checks still hold."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
)
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from dicom_node.part10 import part10_prefix
from dicom_node.pixel_header import pixel_data_problem, read_received_header
from dicom_node.scp import ScpConfig
from dicom_node.store_response import store_success_command
from tests.hostile_factory import BROKEN, broken_mr
from tests.test_dicom_node_factories import make_mr

LIMIT = 2 * 1024**3


def _encoded(ds: Dataset, syntax: str | None = None) -> bytes:
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=None, little_endian=None)
    return buffer.getvalue()


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_fast_path_names_the_same_problem_as_a_full_read(name: str) -> None:
    encoded = _encoded(broken_mr(name))
    header = read_received_header(encoded, max_pixel_bytes=LIMIT)
    full = pixel_data_problem(dcmread(BytesIO(encoded)), max_pixel_bytes=LIMIT)
    assert header.pixel_problem == full
    assert BROKEN[name][1] in str(header.pixel_problem)


@pytest.mark.parametrize("syntax", [None, ImplicitVRLittleEndian])
def test_native_pixel_data_is_not_read(syntax: str | None) -> None:
    ds = make_mr(rows=448, cols=448)
    ds.PixelData = bytes(448 * 448 * 2)
    header = read_received_header(_encoded(ds, syntax), max_pixel_bytes=LIMIT)
    assert header.pixel_problem is None and not header.read_whole
    assert "PixelData" not in header.dataset
    assert header.dataset.SOPInstanceUID == ds.SOPInstanceUID and header.dataset.Rows == 448


@pytest.mark.parametrize("syntax", [None, ImplicitVRLittleEndian])
def test_a_stream_cut_inside_the_pixel_data_is_refused(syntax: str | None) -> None:
    encoded = _encoded(make_mr(rows=64, cols=64), syntax)
    header = read_received_header(encoded[:-1000], max_pixel_bytes=LIMIT)
    assert (
        header.pixel_problem == f"PixelData cut: {64 * 64 * 2 - 1000} of {64 * 64 * 2} B received"
    )


def test_limit_is_checked_from_the_header_alone() -> None:
    encoded = _encoded(make_mr(rows=64, cols=64))
    assert "over limit" in str(
        read_received_header(encoded, max_pixel_bytes=64 * 64 * 2 - 1).pixel_problem
    )


def test_encapsulated_and_deflated_data_are_read_whole_and_checked() -> None:
    rle = make_mr()
    rle.compress(RLELossless, encoding_plugin="pydicom")
    header = read_received_header(_encoded(rle), max_pixel_bytes=LIMIT)
    assert header.read_whole and header.pixel_problem is None
    cut = make_mr()
    cut.compress(RLELossless, encoding_plugin="pydicom")
    cut["PixelData"].value = cut.PixelData[:-10]
    assert "cut short" in str(
        read_received_header(_encoded(cut), max_pixel_bytes=LIMIT).pixel_problem
    )
    deflated = read_received_header(
        _encoded(broken_mr("half pixel data"), DeflatedExplicitVRLittleEndian),
        max_pixel_bytes=LIMIT,
    )
    assert deflated.read_whole and deflated.pixel_problem == "PixelData 256 B, header needs 512 B"


def test_an_instance_without_pixel_data_keeps_its_whole_header() -> None:
    encoded = _encoded(broken_mr("missing PixelData"))
    header = read_received_header(encoded, max_pixel_bytes=LIMIT)
    assert header.pixel_problem == "no PixelData in an image instance"
    assert header.dataset.PatientID == "PAT-0001"


@pytest.mark.parametrize("poll_s", [0, -1.0, 0.5, True])
def test_transport_poll_must_be_short_and_positive(poll_s: float) -> None:
    with pytest.raises(ValueError, match="transport_poll_s"):
        ScpConfig(ae_title="CORDT1", transport_poll_s=poll_s)


@pytest.mark.parametrize("sop_uid", ["1.2.3.44", "1.2.3.4"])  # even and odd length (padding)
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_file_meta_framing_equals_pynetdicoms(sop_uid: str, syntax: str, tmp_path: Path) -> None:
    expected = b"\x00" * 128 + b"DICM"
    expected += encode_file_meta(
        create_file_meta(
            sop_class_uid=UID(MRImageStorage),
            sop_instance_uid=UID(sop_uid),
            transfer_syntax=UID(syntax),
        )
    )
    prefix = part10_prefix(MRImageStorage, sop_uid, syntax)
    assert prefix == expected
    (tmp_path / "meta.dcm").write_bytes(prefix)
    meta = read_file_meta_info(tmp_path / "meta.dcm")
    assert meta.MediaStorageSOPInstanceUID == sop_uid and meta.TransferSyntaxUID == syntax


@pytest.mark.parametrize("bad", ["", "1." * 40, "1.2.\u00e9"])
def test_file_meta_framing_refuses_uids_it_cannot_write(bad: str) -> None:
    with pytest.raises(ValueError, match="SOP Instance UID"):
        part10_prefix(MRImageStorage, bad, ExplicitVRLittleEndian)


@pytest.mark.parametrize("sop_uid", ["1.2.3.44", "1.2.3.4"])
@pytest.mark.parametrize("message_id", [0, 7, 65535])
def test_store_success_command_equals_pynetdicoms(sop_uid: str, message_id: int) -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = MRImageStorage
    rsp.AffectedSOPInstanceUID = sop_uid
    rsp.Status = 0
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    (pdata,) = message.encode_msg(1, 131072)
    (_, pdv) = pdata.presentation_data_value_list[0]
    assert pdv == b"\x03" + store_success_command(message_id, MRImageStorage, sop_uid)


@pytest.mark.parametrize("bad", [("", "1.2"), ("1.2", "1." * 40), ("1.2", "1.\u00e9")])
def test_store_success_command_refuses_what_it_cannot_write(bad: tuple[str, str]) -> None:
    with pytest.raises(ValueError):
        store_success_command(1, *bad)
    with pytest.raises(ValueError, match="65535"):
        store_success_command(65536, MRImageStorage, "1.2.3")
