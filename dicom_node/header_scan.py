"""Read a received instance's file meta and top-level header as pydicom's ``read_partial`` would.

:func:`pixel_header.read_received_header` parses every received instance up to (not into)
its pixel data. pydicom's ``read_partial`` does that through file-like reads, a generator
and per-element callbacks, about 5 us per element. :func:`scan_header` walks the same bytes
with ``struct.unpack_from`` and builds the very objects ``read_partial`` builds: a
``FileDataset`` whose top-level elements are ``RawDataElement`` s with the same tag, VR
(``None`` in implicit VR, as pydicom leaves it), length, value bytes, value position and
flags, in the same order, and the same file meta, with the elements pydicom converts while
reading (group length, transfer syntax, Specific Character Set) converted by pydicom itself.
The data set objects are made by pydicom's own constructors.

It reads only what it can reproduce exactly and returns ``None`` for anything else, so the
caller reads those instances with pydicom itself: no 'DICM' prefix, a file meta that does
not start with a right (0002,0000) group length, a transfer syntax other than implicit or
explicit VR little endian or an encapsulated one (so no deflate, no big endian), a command
set, an undefined length outside the pixel data element (sequences included), item or
delimiter tags, unknown or lower-case VRs, a data set encoded with the other VR kind than
its transfer syntax says, a value running past the end of the bytes, a Specific Character
Set pydicom would warn about, and pydicom's debug logging (on, or the 'pydicom' logger at
the debug level). Nothing it does before returning a result warns, logs or raises, so
falling back repeats nothing the caller could notice.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO
from struct import Struct

import pydicom.uid
from pydicom import config as pydicom_config
from pydicom.charset import STAND_ALONE_ENCODINGS, python_encoding
from pydicom.dataelem import RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import ENCODED_VR
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32
from pydicom.values import convert_string

__all__ = ["PIXEL_TAGS", "ScannedHeader", "scan_header"]

#: The tags ``read_received_header`` stops at, with their keywords.
PIXEL_TAGS = {
    0x7FE00010: "PixelData",
    0x7FE00008: "FloatPixelData",
    0x7FE00009: "DoubleFloatPixelData",
}

_PREAMBLE_BYTES = 128
_META_AT = 132  # preamble + b"DICM"
_GROUP_LENGTH_BYTES = 12  # (0002,0000) UL, 4-byte value: 8-byte header + value
_CHARSET_TAG = BaseTag(0x00080005)  # compared with plain int tags as 0x00080005
_GROUP_LENGTH_TAG = BaseTag(0x00020000)
_TRANSFER_SYNTAX_TAG = BaseTag(0x00020010)
_EXPLICIT_HEADER = Struct("<HH2sH").unpack_from
_IMPLICIT_HEADER = Struct("<HHL").unpack_from
_UINT32 = Struct("<L").unpack_from
_DEFAULT_ENCODING = "iso8859"  # pydicom.charset.default_encoding
# Encoded explicit VR -> (the str pydicom puts in RawDataElement.VR, 4-byte length?)
_EXPLICIT_VRS: dict[bytes, tuple[str, bool]] = {
    vr: (vr.decode("ascii"), vr.decode("ascii") in EXPLICIT_VR_LENGTH_32)
    for vr in ENCODED_VR
    if len(vr) == 2
}
_VALID_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
_CS_TERM = re.compile(r"[A-Z0-9 _]{0,16}")
_RAW_ELEMENT = tuple.__new__  # RawDataElement(...) without its Python-level __new__
_EMPTY = empty_value_for_VR


@dataclass(frozen=True)
class ScannedHeader:
    """A received instance read up to (not into) its pixel data element.

    Attributes
    ----------
    dataset : pydicom.dataset.FileDataset
        What ``read_partial(BytesIO(encoded), stop_when=<at a pixel tag>)`` returns.
    pixel_tag : int or None
        Tag of the pixel data element the reading stopped at (``None``: none was found).
    pixel_length : int
        Value length in that element's header (``0xFFFFFFFF``: undefined).
    pixel_at : int
        Offset of that element's tag in the bytes (where ``read_partial`` leaves the stream).
    """

    dataset: FileDataset
    pixel_tag: int | None
    pixel_length: int
    pixel_at: int


def scan_header(encoded: bytes) -> ScannedHeader | None:
    """Read a Part-10 instance up to its pixel data the way pydicom's ``read_partial`` does.

    Parameters
    ----------
    encoded : bytes
        Preamble, file meta and data set as received.

    Returns
    -------
    ScannedHeader or None
        The data set, file meta and pixel element position exactly as ``read_partial`` gives
        them; ``None`` when the bytes need pydicom's own reader (see the module docstring).

    Examples
    --------
    >>> scan_header(b"not a DICOM file") is None
    True
    """
    if (
        type(encoded) is not bytes
        or pydicom_config.debugging
        or pydicom_config.logger.isEnabledFor(logging.DEBUG)
    ):
        return None  # pydicom's reader logs what it reads at the debug level
    end = len(encoded)
    if end < _META_AT + _GROUP_LENGTH_BYTES or encoded[_PREAMBLE_BYTES:_META_AT] != b"DICM":
        return None
    meta = _scan_meta(encoded, end)
    if meta is None:
        return None
    meta_elements, data_at, syntax = meta
    if end - data_at < 8 or _EXPLICIT_HEADER(encoded, data_at)[0] == 0:
        return None  # no data set, or a command set (group 0000) before it
    implicit = syntax == pydicom.uid.ImplicitVRLittleEndian
    if _looks_implicit(encoded, data_at) != implicit:
        return None  # pydicom would warn (or raise) and switch the VR encoding
    scan = _scan_implicit if implicit else _scan_explicit
    scanned = scan(encoded, data_at, end)
    if scanned is None:
        return None
    elements, pixel_tag, pixel_length, stop_at = scanned
    file_meta = _file_meta(meta_elements)
    file_meta[_TRANSFER_SYNTAX_TAG]  # read_partial reads it: converted
    if file_meta.get("TransferSyntaxUID") != syntax:
        return None  # not reached with pydicom's own hooks
    return ScannedHeader(
        _file_dataset(encoded, stop_at, elements, file_meta, implicit),
        pixel_tag,
        pixel_length,
        stop_at,
    )


def _scan_meta(encoded: bytes, end: int) -> tuple[dict[BaseTag, RawDataElement], int, str] | None:
    """File meta elements, where the data set starts, and the transfer syntax."""
    group, elem, vr, length = _EXPLICIT_HEADER(encoded, _META_AT)
    if (group, elem, vr, length) != (2, 0, b"UL", 4):
        return None  # pydicom converts the first element: keep that the plain UL
    scanned = _scan_explicit(encoded, _META_AT, end, meta=True)
    if scanned is None:
        return None
    elements, _tag, _length, data_at = scanned
    group_length = elements[_GROUP_LENGTH_TAG]  # the last one, should it come twice
    if (
        group_length.VR != "UL"
        or group_length.length != 4
        or _UINT32(group_length.value, 0)[0] != data_at - (_META_AT + _GROUP_LENGTH_BYTES)
    ):
        return None  # pydicom logs a mismatch
    syntax_element = elements.get(_TRANSFER_SYNTAX_TAG)
    if syntax_element is None or syntax_element.VR != "UI" or not syntax_element.value:
        return None
    syntax = syntax_element.value.decode(_DEFAULT_ENCODING).rstrip("\0 ")
    if (
        len(syntax) > 64
        or _VALID_UID.fullmatch(syntax) is None
        or syntax == pydicom.uid.ExplicitVRBigEndian
        or syntax == pydicom.uid.DeflatedExplicitVRLittleEndian
        or syntax in pydicom.uid.PrivateTransferSyntaxes
    ):
        return None
    return elements, data_at, syntax


def _looks_implicit(encoded: bytes, offset: int) -> bool:
    """pydicom's guess from the first element: a VR needs two upper-case letters."""
    first, second = encoded[offset + 4], encoded[offset + 5]
    return not (0x40 < first < 0x5B and 0x40 < second < 0x5B)


def _scan_explicit(
    encoded: bytes, pos: int, end: int, *, meta: bool = False
) -> tuple[dict[BaseTag, RawDataElement], int | None, int, int] | None:
    """Explicit VR little endian elements from ``pos``: up to a pixel tag or the end.

    With ``meta``, up to the first element outside group 0002 instead.
    Returns the elements, the pixel tag and length (``None``, 0 without one) and the offset
    where reading stopped; ``None`` when pydicom must read these bytes.
    """
    elements: dict[BaseTag, RawDataElement] = {}
    # locals: this loop runs for every element of every received instance
    header, uint32, vrs, pixel_tags = _EXPLICIT_HEADER, _UINT32, _EXPLICIT_VRS, PIXEL_TAGS
    new_raw, raw_class, base_tag, empty_value = _RAW_ELEMENT, RawDataElement, BaseTag, _EMPTY
    while True:
        if end - pos < 8:
            if meta:
                return None
            return elements, None, 0, end  # pydicom ends the data set at a short read
        group, elem, encoded_vr, length = header(encoded, pos)
        if group == 0xFFFE:
            return None  # an item or delimiter tag
        spec = vrs.get(encoded_vr)
        if meta and group != 2:  # the data set's first element: any VR encoding
            if spec is not None and spec[1] and end - pos < 12:
                return None  # pydicom raises struct.error on the 4-byte length
            return elements, None, 0, pos
        if spec is None:
            return None  # unknown VR, or implicit VR in an explicit data set
        vr, long_length = spec
        start = pos + 8
        if long_length:
            if end - pos < 12:
                return None  # pydicom raises struct.error
            length = uint32(encoded, start)[0]
            start += 4
        tag = group << 16 | elem
        if not meta and tag in pixel_tags:
            return elements, tag, length, pos
        if length == 0xFFFFFFFF:
            return None  # undefined length
        pos = start + length
        if pos > end:
            return None  # value cut off
        value = encoded[start:pos] if length else empty_value(vr, raw=True)
        if tag == 0x00080005 and not _plain_charset(vr, value):
            return None
        key = base_tag(tag)
        elements[key] = new_raw(
            raw_class, (key, vr, length, value, start, False, True, True, False)
        )


def _scan_implicit(
    encoded: bytes, pos: int, end: int
) -> tuple[dict[BaseTag, RawDataElement], int | None, int, int] | None:
    """Implicit VR little endian elements from ``pos``: as :func:`_scan_explicit`."""
    elements: dict[BaseTag, RawDataElement] = {}
    header, pixel_tags = _IMPLICIT_HEADER, PIXEL_TAGS
    new_raw, raw_class, base_tag, empty_value = _RAW_ELEMENT, RawDataElement, BaseTag, _EMPTY
    while True:
        if end - pos < 8:
            return elements, None, 0, end
        group, elem, length = header(encoded, pos)
        if group == 0xFFFE:
            return None
        tag = group << 16 | elem
        if tag in pixel_tags:
            return elements, tag, length, pos
        if length == 0xFFFFFFFF:
            return None
        start = pos + 8
        pos = start + length
        if pos > end:
            return None
        value = encoded[start:pos] if length else empty_value(None, raw=True)
        if tag == 0x00080005 and not _plain_charset(None, value):
            return None
        key = base_tag(tag)
        elements[key] = new_raw(
            raw_class, (key, None, length, value, start, True, True, True, False)
        )


@lru_cache(maxsize=64)
def _plain_charset(vr: str | None, value: bytes | None) -> bool:
    """Whether pydicom reads this Specific Character Set without a warning."""
    if vr not in (None, "CS"):
        return False
    terms = convert_string(value or b"", True)  # what pydicom's reader decodes
    terms = [terms] if isinstance(terms, str) else list(terms)
    if len(terms) > 1 and any(term in STAND_ALONE_ENCODINGS for term in terms):
        return False
    return all(term in python_encoding and _CS_TERM.fullmatch(term) for term in terms)


def _file_meta(elements: dict[BaseTag, RawDataElement]) -> FileMetaDataset:
    """The file meta as pydicom's ``_read_file_meta_info`` leaves it."""
    file_meta = FileMetaDataset(Dataset(elements, parent_encoding=_DEFAULT_ENCODING))
    file_meta.set_original_encoding(
        is_implicit_vr=False, is_little_endian=True, character_encoding=_DEFAULT_ENCODING
    )
    file_meta[_GROUP_LENGTH_TAG]  # pydicom's check converts the first one
    return file_meta


def _file_dataset(
    encoded: bytes,
    stop_at: int,
    elements: dict[BaseTag, RawDataElement],
    file_meta: FileMetaDataset,
    implicit: bool,
) -> FileDataset:
    """The ``FileDataset`` that ``read_partial`` builds from the data set's elements."""
    stream = BytesIO(encoded)
    stream.seek(stop_at)  # where read_partial leaves it
    preamble = encoded[:_PREAMBLE_BYTES]
    header = FileDataset(stream, Dataset(elements), preamble, file_meta, implicit, True)
    if _CHARSET_TAG in elements:
        header[_CHARSET_TAG]  # as header._character_set converts it
    # read_dataset's data set has the same elements and parent encoding: same character set
    header.set_original_encoding(implicit, True, header._character_set)
    return header
