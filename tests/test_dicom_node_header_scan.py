"""The lean header scanner builds exactly what pydicom's ``read_partial`` builds, or steps aside.

For every input, :func:`scan_header` either returns ``None`` (the storage SCP then reads the
instance with pydicom, as before) or a data set equal to ``read_partial``'s attribute by
attribute: every element in the same order with the same tag, VR, length, value bytes,
value position and flags, the same file meta (with the same elements converted), the same
stream position. :func:`read_received_header` must then give the same pixel verdict (or
raise the same exception) with the scanner as without it. Inputs: pydicom's own test
files, the benchmark's MR instances, factory instances, hand-made odd and hostile bytes
(truncated at every offset, lengths running past the end, undefined lengths).
"""

from __future__ import annotations

import logging
import struct
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from pydicom import config as pydicom_config
from pydicom.data import get_testdata_files
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

from benchmarks.bench_receive import make_instances
from dicom_node import pixel_header
from dicom_node.header_scan import scan_header
from dicom_node.pixel_header import read_received_header
from reports.identity import ResultIdentity
from reports.parametric_map import MapKind, build_parametric_map
from tests.dicom_factory import make_legacy_series
from tests.header_check_reference import reference_read_partial
from tests.test_dicom_node_header_values import (
    EXPLICIT_LE,
    IMPLICIT_LE,
    _classic_mr,
    _element,
    _encoded,
    _factory_datasets,
    _odd_inputs,
    _part10,
)

MAX_PIXEL_BYTES = 1 << 30
_PIXEL = 0x7FE00010


# ------------------------------------------------------------------------------ comparing
def _element_state(elem: object) -> tuple[object, ...]:
    if isinstance(elem, RawDataElement):
        return ("raw", tuple(elem))
    assert isinstance(elem, DataElement), type(elem)
    state = dict(vars(elem))
    return ("converted", type(elem), type(state["_value"]), sorted(state.items()))


def _dataset_state(ds: Dataset) -> tuple[object, ...]:
    """Everything a reader of ``ds`` could see, without converting anything."""
    attributes = {
        name: value
        for name, value in vars(ds).items()
        if name not in ("_dict", "file_meta", "buffer")
    }
    elements = [(tag, type(tag), _element_state(elem)) for tag, elem in ds._dict.items()]
    meta = _dataset_state(ds.file_meta) if "file_meta" in vars(ds) else None
    buffer = vars(ds).get("buffer")
    stream = None if buffer is None else (type(buffer), buffer.tell(), buffer.getvalue())
    return type(ds), sorted(attributes.items()), elements, meta, stream


@contextmanager
def _pydicom_records() -> Iterator[list[logging.LogRecord]]:
    """What pydicom logs at the info level and above meanwhile (its logger lowered to info)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.setLevel(level)
        logger.removeHandler(handler)


def _outcome(call: Callable[[], object]) -> tuple[str, object]:
    try:
        return "ok", call()
    except Exception as exc:  # compared, not swallowed: both paths must raise alike
        return type(exc).__name__, str(exc)


def _verdict(encoded: bytes) -> tuple[str, object]:
    outcome = _outcome(lambda: read_received_header(encoded, max_pixel_bytes=MAX_PIXEL_BYTES))
    if outcome[0] != "ok":
        return outcome
    header = outcome[1]
    return "ok", (header.pixel_problem, header.read_whole, _dataset_state(header.dataset))  # type: ignore[attr-defined]


def _check(encoded: bytes, label: str, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Assert the scanner agrees with pydicom on ``encoded``; whether it read it itself.

    When the scanner reads an input, pydicom must read it without a warning or a log
    record (the scanner emits none, and falling back would repeat pydicom's).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the scanner itself must never warn
        scanned = scan_header(encoded)
    if scanned is not None:
        with warnings.catch_warnings(record=True) as caught, _pydicom_records() as records:
            warnings.simplefilter("always")
            header, pixel, position = reference_read_partial(encoded)
        assert not caught, f"{label}: pydicom warned on an input the scanner read"
        assert not records, f"{label}: pydicom logged on an input the scanner read"
        assert _dataset_state(scanned.dataset) == _dataset_state(header), label
        got = None if scanned.pixel_tag is None else (scanned.pixel_tag, scanned.pixel_length)
        assert (got, scanned.pixel_at) == (pixel, position), label
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new = _verdict(encoded)
        with monkeypatch.context() as patch:
            patch.setattr(pixel_header, "scan_header", lambda _encoded: None)
            old = _verdict(encoded)
    assert new == old, label
    return scanned is not None


@pytest.fixture(scope="module")
def bench_instances() -> list[bytes]:
    with tempfile.TemporaryDirectory() as scratch:
        make_instances(Path(scratch), 6, n_series=2)
        return [path.read_bytes() for path in sorted(Path(scratch).rglob("*.dcm"))]


# ------------------------------------------------------------------------------ real files
_TEST_FILES = sorted(Path(p) for p in get_testdata_files() if Path(p).is_file())


def test_the_pydicom_test_files_are_there() -> None:
    assert len(_TEST_FILES) > 50


@pytest.mark.parametrize("path", _TEST_FILES, ids=lambda path: path.name)
def test_same_as_pydicom_on_its_test_file(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _check(path.read_bytes(), path.name, monkeypatch)


def test_many_pydicom_test_files_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a scanner that steps aside for everything: most plain test files are its own."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read = [path.name for path in _TEST_FILES if scan_header(path.read_bytes()) is not None]
    assert len(read) >= 40, read
    assert "MR_small.dcm" in read  # explicit VR little endian
    assert "MR_small_implicit.dcm" in read  # implicit VR little endian
    assert "MR_small_RLE.dcm" in read  # encapsulated


def test_benchmark_instances_are_read_by_the_scanner(
    bench_instances: list[bytes], reading_mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index, encoded in enumerate(bench_instances):
        assert _check(encoded, f"bench {index} ({reading_mode})", monkeypatch)
        header = read_received_header(encoded, max_pixel_bytes=MAX_PIXEL_BYTES)
        assert header.pixel_problem is None and not header.read_whole


def test_benchmark_instance_cut_pixel_data_is_refused_alike(
    bench_instances: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded = bench_instances[0][:-1000]
    assert _check(encoded, "cut pixel data", monkeypatch)
    problem = read_received_header(encoded, max_pixel_bytes=MAX_PIXEL_BYTES).pixel_problem
    assert problem is not None and "cut" in problem


def test_same_as_pydicom_on_factory_instances(
    reading_mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for label, ds in _factory_datasets():
        _check(_encoded(ds), f"{label} ({reading_mode})", monkeypatch)


def test_same_as_pydicom_on_a_highdicom_parametric_map(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Parametric Map as the service writes it: float pixel data, many sequences."""
    stored = np.arange(2 * 8 * 6, dtype=np.uint16).reshape(2, 8, 6)
    sources = make_legacy_series(stored, np.eye(4))
    t1_ms = np.full(stored.shape, 1200.0)
    pm = build_parametric_map(
        sources, t1_ms, MapKind.T1_MS, series_number=901, identity=ResultIdentity()
    )
    _check(_encoded(pm), "parametric map", monkeypatch)
    header = read_received_header(_encoded(pm), max_pixel_bytes=MAX_PIXEL_BYTES)
    assert header.pixel_problem is None


def test_same_as_pydicom_on_odd_values(reading_mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    read = sum(
        _check(encoded, f"{label} ({reading_mode})", monkeypatch)
        for label, encoded in _odd_inputs()
    )
    assert read > 100  # most odd values sit in plain headers the scanner reads


# ------------------------------------------------------------------------ hostile bytes
def _hostile_inputs() -> Iterator[tuple[str, bytes, bool]]:
    """Label, bytes, and whether the scanner may read them itself."""
    mr = _classic_mr()
    plain = _part10(mr)
    yield "plain explicit", plain, True
    yield "plain implicit", _part10(mr, IMPLICIT_LE), True
    no_pixels = dict(mr)
    del no_pixels[_PIXEL]
    yield "no pixel data", _part10(no_pixels), True
    yield "no pixel data, 5 bytes after the last element", _part10(no_pixels) + b"\x01" * 5, True
    for vr in ("OB", "OW", "US", "UN"):
        changed = dict(mr)
        changed[_PIXEL] = (vr, bytes(32))
        yield f"pixel data as {vr}", _part10(changed), True
    float_pixels = dict(mr)
    del float_pixels[_PIXEL]
    float_pixels[0x7FE00008] = ("OF", bytes(64))
    yield "float pixel data", _part10(float_pixels), True
    for syntax in (EXPLICIT_LE, IMPLICIT_LE):
        # a value length running past the end of the bytes
        head = _part10({tag: mr[tag] for tag in mr if tag < 0x00280000}, syntax)
        rows = _element(0x00280010, "US", b"\x04\x00", syntax)
        yield f"{syntax!r} length past the end", head + rows[:-2] + b"\x04", False
        yield f"{syntax!r} length far past the end", head + rows[:6] + b"\xff\x7f", False
        # undefined length on an element that is not a sequence
        if syntax == EXPLICIT_LE:
            text = struct.pack("<HH2sHI", 0x0018, 0x1030, b"UT", 0, 0xFFFFFFFF) + b"abcd"
        else:
            text = struct.pack("<HHI", 0x0018, 0x1030, 0xFFFFFFFF) + b"abcd"
        delimiter = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        yield f"{syntax!r} undefined length UT", head + text + delimiter, False
        yield f"{syntax!r} undefined length UT, no delimiter", head + text, False
        # an undefined-length sequence: pydicom reads it as a sequence
        item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        inner = _element(0x00081150, "UI", b"1.2.3\x00", syntax)
        item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        if syntax == EXPLICIT_LE:
            seq = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
        else:
            seq = struct.pack("<HHI", 0x0008, 0x1140, 0xFFFFFFFF)
        yield (
            f"{syntax!r} undefined length sequence",
            head + seq + item + inner + item_end + delimiter,
            False,
        )
        # a defined-length sequence stays raw: the scanner reads it
        defined_item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
        if syntax == EXPLICIT_LE:
            defined = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, len(defined_item))
        else:
            defined = struct.pack("<HHI", 0x0008, 0x1140, len(defined_item))
        yield f"{syntax!r} defined length sequence", head + defined + defined_item, True
        # an item or delimiter tag at the top level
        yield f"{syntax!r} item delimiter at the top", head + item_end + rows, False
        # native pixel data of undefined length
        if syntax == EXPLICIT_LE:
            pixels = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, 0xFFFFFFFF)
        else:
            pixels = struct.pack("<HHI", 0x7FE0, 0x0010, 0xFFFFFFFF)
        yield f"{syntax!r} undefined length native pixels", head + rows + pixels, True
    # explicit VR oddities
    head = _part10({tag: mr[tag] for tag in mr if tag < 0x00280000})
    for vr in (b"XX", b"us", b"\x00\x01", b"U1"):
        odd = struct.pack("<HH2sH", 0x0028, 0x0010, vr, 2) + b"\x04\x00"
        yield f"VR {vr!r}", head + odd, False
    for vr in ("UC", "UR", "SV", "UV", "OL", "OV", "OD", "UN", "UT", "OF"):
        long_header = struct.pack("<HH2sHI", 0x0009, 0x1010, vr.encode(), 0, 8) + b"abcdefgh"
        yield f"12-byte header VR {vr}", head + long_header, True
    duplicated = _part10(mr) + _element(0x00080060, "CS", b"CT", EXPLICIT_LE)
    yield "duplicate tag after the pixel data", duplicated, True
    twice = head + _element(0x00080060, "CS", b"CT", EXPLICIT_LE)
    yield "duplicate tag", twice, True
    # data set encoded other than the transfer syntax says
    yield "implicit bytes, explicit syntax", _relabel(mr, IMPLICIT_LE, EXPLICIT_LE), False
    yield "explicit bytes, implicit syntax", _relabel(mr, EXPLICIT_LE, IMPLICIT_LE), False
    # read as implicit VR, the first element's length (0x00025343) stays within the bytes
    short_first = {tag: mr[tag] for tag in mr if tag > 0x00080018}  # (0008,0060) CS "MR"
    short_first[_PIXEL] = ("OW", bytes(160_000))
    yield (
        "explicit bytes, implicit syntax, in bounds",
        _relabel(short_first, EXPLICIT_LE, IMPLICIT_LE),
        False,
    )
    # file meta oddities
    yield "no DICM prefix", b"\x00" * 128 + b"DICX" + plain[132:], False
    yield "group length off by two", _with_group_length(plain, +2), False
    yield "no group length", _without_group_length(plain), False
    for syntax in (b"1.2.840.10008.1.2.2", b"1.2.840.10008.1.2.1.99", b"1.2.3"):
        yield f"syntax {syntax!r}", _relabel(mr, EXPLICIT_LE, syntax), syntax == b"1.2.3"
    for padding in (b" ", b"\x00 ", b"  "):  # pydicom strips NULs and spaces silently
        padded = _relabel(mr, EXPLICIT_LE, EXPLICIT_LE + padding)
        yield f"syntax padded with {padding!r}", padded, True
    command = _element(0x00000000, "UL", b"\x04\x00\x00\x00", IMPLICIT_LE)
    yield "command set", plain[: len(plain) - len(_body(mr))] + command + _body(mr), False
    implicit = _part10(mr, IMPLICIT_LE)
    implicit_body = _body(mr, IMPLICIT_LE)
    yield (
        "command set, implicit syntax",
        implicit[: len(implicit) - len(implicit_body)] + command + implicit_body,
        False,
    )
    yield "file meta only", plain[: len(plain) - len(_body(mr))], False


def _body(elements: dict[int, tuple[str, bytes]], syntax: bytes = EXPLICIT_LE) -> bytes:
    return b"".join(
        _element(tag, vr, value, syntax) for tag, (vr, value) in sorted(elements.items())
    )


def _relabel(elements: dict[int, tuple[str, bytes]], encoding: bytes, label: bytes) -> bytes:
    """Part-10 bytes with the data set encoded in ``encoding`` but the meta saying ``label``."""
    labelled = _part10(elements, label)
    return labelled[: len(labelled) - len(_body(elements, label))] + _body(elements, encoding)


def _with_group_length(encoded: bytes, change: int) -> bytes:
    (length,) = struct.unpack_from("<I", encoded, 140)
    return encoded[:140] + struct.pack("<I", length + change) + encoded[144:]


def _without_group_length(encoded: bytes) -> bytes:
    return encoded[:132] + encoded[144:]


@pytest.mark.parametrize(
    ("label", "encoded", "may_scan"), list(_hostile_inputs()), ids=lambda v: str(v)[:40]
)
def test_hostile_bytes_give_the_same_outcome(
    label: str, encoded: bytes, may_scan: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    scanned = _check(encoded, label, monkeypatch)
    if not may_scan:
        assert not scanned, f"{label}: the scanner should leave this to pydicom"
    else:
        assert scanned, f"{label}: a plain input the scanner should read itself"


@pytest.mark.parametrize("syntax", [EXPLICIT_LE, IMPLICIT_LE], ids=["explicit", "implicit"])
def test_truncated_at_every_byte_gives_the_same_outcome(
    syntax: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded = _part10(_classic_mr(), syntax)
    read = sum(
        _check(encoded[:cut], f"cut at {cut}", monkeypatch) for cut in range(len(encoded) + 1)
    )
    assert read > 32  # cut inside the pixel value or between elements: still read


def test_pydicom_debugging_leaves_the_reading_to_pydicom(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    encoded = _part10(_classic_mr())
    monkeypatch.setattr(pydicom_config, "debugging", True)
    assert scan_header(encoded) is None
    with caplog.at_level(logging.DEBUG, logger="pydicom"):
        read_received_header(encoded, max_pixel_bytes=MAX_PIXEL_BYTES)
    assert any("(0028,0010)" in record.getMessage() for record in caplog.records)


def test_a_debug_level_pydicom_logger_gets_pydicom_records(
    caplog: pytest.LogCaptureFixture,
) -> None:
    encoded = _part10(_classic_mr())
    assert scan_header(encoded) is not None
    with caplog.at_level(logging.DEBUG, logger="pydicom"):
        assert scan_header(encoded) is None
        read_received_header(encoded, max_pixel_bytes=MAX_PIXEL_BYTES)
    assert any("'DICM' prefix found" in record.getMessage() for record in caplog.records)


def test_a_data_element_callback_still_converts_as_pydicom(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[int] = []

    def callback(raw: RawDataElement, **_kwargs: object) -> RawDataElement:
        seen.append(int(raw.tag))
        return raw

    monkeypatch.setattr(pydicom_config, "data_element_callback", callback)
    encoded = _part10(_classic_mr())
    for _ in range(2):  # the second time too: nothing remembered is used
        assert _check(encoded, "with a callback", monkeypatch)
    assert seen.count(0x00020010) >= 4  # the transfer syntax, converted by pydicom each time


def test_headers_share_no_mutable_state(bench_instances: list[bytes]) -> None:
    """Two instances read alike are still two data sets: changing one leaves the other."""
    first, second = (scan_header(bench_instances[0]) for _ in range(2))
    assert first is not None and second is not None
    for mine, other in (
        (first.dataset, second.dataset),
        (first.dataset.file_meta, second.dataset.file_meta),
    ):
        for name, value in vars(mine).items():
            if isinstance(value, dict | list):
                assert value is not vars(other)[name], name
        for tag, elem in mine._dict.items():
            if isinstance(elem, DataElement):
                assert elem is not other._dict[tag]
    first.dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
    first.dataset.Modality = "CT"
    assert second.dataset.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert second.dataset.Modality == "MR"
