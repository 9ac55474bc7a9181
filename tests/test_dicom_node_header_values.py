"""The cheap header check gives exactly what pydicom's own conversion gives, on every input.

Each input is checked twice from its bytes: by the node (:func:`read_received_header`,
:func:`read_instance_info`, :func:`classify`, :meth:`OwnResultMarkers.matches`) and by the
reference in ``tests/header_check_reference.py`` (the same logic reading every value through
pydicom). Results must be equal field by field; where one raises, the other must raise the
same exception type with the same message. Every pydicom reading validation mode is used.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_files
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pydicom.valuerep import IS

from dicom_node.components import classify
from dicom_node.header_values import ASCII_TRANSPARENT_CODECS, HEADER_TAGS, HeaderValues
from dicom_node.instance import OwnResultMarkers, PseudonymKey, header_uids, read_instance_info
from dicom_node.pixel_header import read_received_header
from tests.dicom_factory import make_enhanced_mr, make_legacy_series
from tests.header_check_reference import (
    READING_MODES,
    reference_classify,
    reference_header_uids,
    reference_instance_info,
    reference_matches,
    reference_received_header,
)
from tests.hostile_factory import BROKEN, broken_mr
from tests.test_dicom_node_factories import make_mr

MODES = READING_MODES
SITE = PseudonymKey(b"site-secret-0123456789")
MARKERS = (
    OwnResultMarkers(manufacturer="cordt1", software_name="cordt1"),
    OwnResultMarkers(manufacturer="SIEMENS"),
    OwnResultMarkers(software_name="syngo"),
    OwnResultMarkers(private_creator="SIEMENS CSA HEADER"),
)
MAX_PIXEL_BYTES = 1 << 30
EXPLICIT_LE = b"1.2.840.10008.1.2.1"
IMPLICIT_LE = b"1.2.840.10008.1.2"
EXPLICIT_BE = b"1.2.840.10008.1.2.2"
_LONG_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UN", "UT", "UC", "UR"}


def _outcome(call: Callable[[], object]) -> tuple[str, object]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return "ok", call()
        except Exception as exc:  # compared, not swallowed: both paths must raise alike
            return type(exc).__name__, str(exc)


def _new_check(encoded: bytes, markers: OwnResultMarkers) -> list[tuple[str, object]]:
    header = _outcome(lambda: read_received_header(encoded, max_pixel_bytes=MAX_PIXEL_BYTES))
    if header[0] != "ok":
        return [header]
    ds = header[1].dataset  # type: ignore[attr-defined]
    info = _outcome(
        lambda: read_instance_info(
            ds,
            path=Path("/spool/x.dcm"),
            calling_ae=" A ",
            received_at=0,
            own_markers=markers,
            pseudonyms=SITE,
            size_bytes=len(encoded),
        )
    )
    problem = (header[1].pixel_problem, header[1].read_whole)  # type: ignore[attr-defined]
    return [("ok", problem), info, _outcome(lambda: classify(ds)), _marks(markers, ds)]


def _reference_check(encoded: bytes, markers: OwnResultMarkers) -> list[tuple[str, object]]:
    header = _outcome(lambda: reference_received_header(encoded, max_pixel_bytes=MAX_PIXEL_BYTES))
    if header[0] != "ok":
        return [header]
    ds = header[1].dataset  # type: ignore[attr-defined]
    info = _outcome(
        lambda: reference_instance_info(
            ds, own_markers=markers, pseudonyms=SITE, size_bytes=len(encoded)
        )
    )
    problem = (header[1].pixel_problem, header[1].read_whole)  # type: ignore[attr-defined]
    return [
        ("ok", problem),
        info,
        _outcome(lambda: reference_classify(ds)),
        _outcome(lambda: reference_matches(markers, ds)),
    ]


def _marks(markers: OwnResultMarkers, ds: Dataset) -> tuple[str, object]:
    return _outcome(lambda: markers.matches(ds))


def _assert_same(encoded: bytes, label: str) -> None:
    for markers in MARKERS:
        new = _new_check(encoded, markers)
        reference = _reference_check(encoded, markers)
        assert new == reference, f"{label} with {markers}"


def _encoded(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# ------------------------------------------------------------------ hand-made Part-10 bytes
def _element(tag: int, vr: str, value: bytes, syntax: bytes) -> bytes:
    """One data element encoded byte for byte as given (no padding, no checks)."""
    if syntax == IMPLICIT_LE:
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value
    order = ">" if syntax == EXPLICIT_BE else "<"
    head = struct.pack(f"{order}HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr in _LONG_VRS:
        return head + struct.pack(f"{order}HI", 0, len(value)) + value
    return head + struct.pack(f"{order}H", len(value)) + value


def _part10(elements: dict[int, tuple[str, bytes]], syntax: bytes = EXPLICIT_LE) -> bytes:
    sop_class = elements.get(0x00080016, ("UI", b"1.2.840.10008.5.1.4.1.1.4\x00"))[1]
    meta = b"".join(
        _element(tag, vr, value, EXPLICIT_LE)
        for tag, vr, value in (
            (0x00020001, "OB", b"\x00\x01"),
            (0x00020002, "UI", sop_class),
            (0x00020003, "UI", b"1.2.3.4.5.6\x00"),
            (0x00020010, "UI", syntax + (b"\x00" if len(syntax) % 2 else b"")),
        )
    )
    group_length = _element(0x00020000, "UL", struct.pack("<I", len(meta)), EXPLICIT_LE)
    body = b"".join(
        _element(tag, vr, value, syntax) for tag, (vr, value) in sorted(elements.items())
    )
    return b"\x00" * 128 + b"DICM" + group_length + meta + body


def _classic_mr() -> dict[int, tuple[str, bytes]]:
    """A plain 4 x 4 16-bit MR header with its pixel data."""
    return {
        0x00080005: ("CS", b"ISO_IR 100"),
        0x00080008: ("CS", b"ORIGINAL\\PRIMARY\\M\\ND\\INV1 "),
        0x00080016: ("UI", b"1.2.840.10008.5.1.4.1.1.4\x00"),
        0x00080018: ("UI", b"1.2.3.4.5.6\x00"),
        0x00080060: ("CS", b"MR"),
        0x00080070: ("LO", b"SIEMENS "),
        0x0008103E: ("LO", b"mp2rage_INV1"),
        0x00081090: ("LO", b"Investigational_Device_7T "),
        0x00100020: ("LO", b"PAT-0001"),
        0x00100021: ("LO", b"HOSP"),
        0x00180020: ("CS", b"GR\\IR "),
        0x00181020: ("LO", b"syngo MR E12\\cordt1 1.0 "),
        0x00181030: ("LO", b"mp2rage_cord "),
        0x0020000D: ("UI", b"1.2.3.4\x00"),
        0x0020000E: ("UI", b"1.2.3.4.5\x00"),
        0x00200011: ("IS", b"5 "),
        0x00200012: ("IS", b"1 "),
        0x00200052: ("UI", b"1.2.3.9\x00"),
        0x00201002: ("IS", b"3 "),
        0x00280002: ("US", struct.pack("<H", 1)),
        0x00280004: ("CS", b"MONOCHROME2 "),
        0x00280010: ("US", struct.pack("<H", 4)),
        0x00280011: ("US", struct.pack("<H", 4)),
        0x00280100: ("US", struct.pack("<H", 16)),
        0x00291010: ("LO", b"SIEMENS CSA HEADER"),
        0x7FE00010: ("OW", bytes(32)),
    }


_UID_TAGS = (0x0020000D, 0x00080016, 0x00200052)
_IS_TAGS = (0x00200011, 0x00201002, 0x00280008)
_US_TAGS = (0x00280010, 0x00280002, 0x00280100)
_LO_TAGS = (0x0008103E, 0x00181020, 0x00100020, 0x00080070)
_CS_TAGS = (0x00080008, 0x00080060, 0x00280004, 0x00180020)
ODD_VALUES: dict[str, tuple[tuple[int, ...], tuple[str | None, ...], tuple[bytes, ...]]] = {
    "UI": (
        _UID_TAGS,
        ("UI", "UN", "LO"),
        (
            b"",
            b"1.2.3 ",
            b"1..2",
            b"01.2",
            b" 1.2",
            b"1.2\\1.3",
            b"1.2\x00\x00",
            b"1" * 65,
            b"1.2.840.10008.5.1.4.1.1.66.4",
            b"1.2.a",
        ),
    ),
    "IS": (
        _IS_TAGS,
        ("IS", "UN", "DS"),
        (
            b"",
            b"  ",
            b"0",
            b"-3",
            b"+7\x00",
            b" 12 ",
            b"1.5",
            b"2.0",
            b"1\\2",
            b"abc",
            b"1234567890",
            b"123456789",
            b"          12",
            b"\xe9",
        ),
    ),
    "US": (
        _US_TAGS,
        ("US", "SS", "UN", "OB"),
        (b"", b"\x00\x00", b"\x10\x00\x00", b"\x10\x00\x02\x00", b"\xff\xff", b"\x08\x00"),
    ),
    "LO": (
        _LO_TAGS,
        ("LO", "SH", "UN", "UT"),
        (
            b"",
            b"T1_MAP",
            b"caf\xe9",
            b"a" * 65,
            b"x" * 17,
            b"x\\y ",
            b"x\x00",
            b"\x1b$B",
            b"cordt1 2.0",
            b"CORDT1",
            b"FIELD_MAP B0",
        ),
    ),
    "CS": (
        _CS_TAGS,
        ("CS", "UN", "LO"),
        (
            b"",
            b"inv2",
            b"\xe9",
            b"A \\ B",
            b"DERIVED\\PRIMARY\\T1 MAP ",
            b"SEG",
            b"GR",
            b"ORIGINAL\\PRIMARY\\P\\ND",
            b"YBR_FULL_422",
            b"\x00",
        ),
    ),
}
CHARSETS = (
    None,
    b"",
    b"ISO_IR 13",
    b"ISO_IR 192",
    b"ISO 2022 IR 87",
    b"\\ISO 2022 IR 87",
    b"ISO 2022 IR 6\\ISO 2022 IR 149",
    b"GB18030",
    b"ISO_IR 144",
    b"NOT A CHARSET",
)


def _odd_inputs() -> Iterator[tuple[str, bytes]]:
    for kind, (tags, vrs, values) in ODD_VALUES.items():
        for tag in tags:
            for vr in vrs:
                for value in values:
                    elements = _classic_mr()
                    elements[tag] = (vr or kind, value)
                    yield f"{tag:08X} {vr} {value!r}", _part10(elements)
    for charset in CHARSETS:
        for text in (b"T2STAR", b"caf\xe9", b"\x1b$B"):
            elements = _classic_mr()
            if charset is None:
                del elements[0x00080005]
            else:
                elements[0x00080005] = ("CS", charset)
            elements[0x0008103E] = ("LO", text)
            yield f"charset {charset!r} {text!r}", _part10(elements)
    for syntax in (IMPLICIT_LE, EXPLICIT_BE):
        elements = _classic_mr()
        yield f"syntax {syntax!r}", _part10(elements, syntax)
        elements[0x00280008] = ("IS", b"1 ")
        elements[0x00200011] = ("IS", b"x")
        yield f"syntax {syntax!r} bad IS", _part10(elements, syntax)
    elements = _classic_mr()
    del elements[0x0020000D]
    yield "no StudyInstanceUID", _part10(elements)


def _factory_datasets() -> Iterator[tuple[str, Dataset]]:
    for component in ("INV1", "INV2", "UNI", "T1MAP", "OTHER"):
        yield f"make_mr {component}", make_mr(component=component)
    yield "make_mr cordt1", make_mr(manufacturer="cordt1")
    stored = np.arange(3 * 4 * 4, dtype=np.uint16).reshape(3, 4, 4)
    for charset in (None, "ISO_IR 192", "ISO_IR 100"):
        for ds in make_legacy_series(stored, np.eye(4), specific_character_set=charset)[:1]:
            yield f"legacy {charset}", ds
        yield (
            f"enhanced {charset}",
            make_enhanced_mr(stored, np.eye(4), specific_character_set=charset),
        )
    yield "enhanced empty type 2", make_enhanced_mr(stored, np.eye(4), empty_type2=True)
    for name in BROKEN:
        yield f"broken {name}", broken_mr(name)


def _plain_kin(value: object) -> bool:
    """pydicom's UID and IS values come back as the plain str and int they subclass."""
    return isinstance(value, UID | IS)


def _new_info_from_disk(path: Path, markers: OwnResultMarkers) -> object:
    return read_instance_info(
        dcmread(path, stop_before_pixels=True),
        path=Path("/spool/x.dcm"),
        calling_ae=" A ",
        received_at=0,
        own_markers=markers,
        pseudonyms=SITE,
        size_bytes=7,
    )


def _reference_info_from_disk(path: Path, markers: OwnResultMarkers) -> object:
    return reference_instance_info(
        dcmread(path, stop_before_pixels=True), own_markers=markers, pseudonyms=SITE, size_bytes=7
    )


def test_header_tags_use_the_dictionary_vr() -> None:
    for keyword, (tag, vr) in HEADER_TAGS.items():
        assert dictionary_VR(tag) == vr, keyword


def test_listed_codecs_decode_printable_ascii_as_ascii() -> None:
    from pydicom.charset import decode_bytes

    printable = bytes(range(0x20, 0x7F))
    for codec in ASCII_TRANSPARENT_CODECS:
        assert decode_bytes(printable, [codec], set()) == printable.decode("ascii"), codec


def test_values_equal_pydicom_get_on_odd_values(reading_mode: str) -> None:
    for label, encoded in _odd_inputs():
        read = _outcome(partial(dcmread, BytesIO(encoded)))
        if read[0] != "ok":
            continue  # the whole check is compared on these in test_same_check_on_odd_values
        fast_ds, slow_ds = dcmread(BytesIO(encoded)), dcmread(BytesIO(encoded))
        fast_values = HeaderValues(fast_ds)
        for keyword in HEADER_TAGS:
            fast = _outcome(partial(fast_values.get, keyword, "-"))
            slow = _outcome(partial(slow_ds.get, keyword, "-"))
            assert fast == slow, f"{label}: {keyword} ({reading_mode})"
            assert type(fast[1]) is type(slow[1]) or fast[0] != "ok" or _plain_kin(slow[1])


@pytest.mark.slow
def test_same_check_on_odd_values(reading_mode: str) -> None:
    count = 0
    for label, encoded in _odd_inputs():
        _assert_same(encoded, f"{label} ({reading_mode})")
        count += 1
    assert count > 400


def test_same_check_on_factory_instances(reading_mode: str) -> None:
    for label, ds in _factory_datasets():
        _assert_same(_encoded(ds), f"{label} ({reading_mode})")


@pytest.mark.slow
def test_same_check_on_pydicom_test_files(reading_mode: str) -> None:
    paths = [Path(p) for p in get_testdata_files() if Path(p).is_file()]
    assert len(paths) > 50
    for path in paths:
        _assert_same(path.read_bytes(), f"{path.name} ({reading_mode})")


@pytest.mark.slow
@pytest.mark.parametrize("reading_mode", ["WARN"], indirect=True)  # the service's mode
def test_same_info_on_whole_test_files(reading_mode: str) -> None:
    """The service reads headers from disk too (``dcmread``, ``stop_before_pixels``)."""
    for path in (Path(p) for p in get_testdata_files("*.dcm")):
        if _outcome(partial(dcmread, path, stop_before_pixels=True))[0] != "ok":
            continue
        for markers in MARKERS:
            new = _outcome(partial(_new_info_from_disk, path, markers))
            reference = _outcome(partial(_reference_info_from_disk, path, markers))
            assert new == reference, f"{path.name} {markers} ({reading_mode})"


def test_header_uids_as_the_scp_reads_them(reading_mode: str) -> None:
    """``header_uids`` (what the SCP reads) equals the pydicom reading: same UIDs, errors."""
    compared = 0
    for label, encoded in _odd_inputs():
        read = _outcome(partial(read_received_header, encoded, max_pixel_bytes=MAX_PIXEL_BYTES))
        if read[0] != "ok":
            continue
        new = _outcome(partial(header_uids, read[1].dataset))  # type: ignore[attr-defined]
        header = reference_received_header(encoded, max_pixel_bytes=MAX_PIXEL_BYTES)
        assert new == _outcome(partial(reference_header_uids, header.dataset)), label
        compared += new[0] == "ok"
    assert compared > 100
