"""Does an instance's pixel data match its header? Lengths only, pixel data is never decoded.

The storage SCP calls :func:`pixel_data_problem` on every received data set and refuses the
instance when it returns a text: image SOP classes without pixel data, Rows/Columns 0,
BitsAllocated not in 1/8/16/32/64, SamplesPerPixel not in 1..4, NumberOfFrames below 1, a
declared size beyond a limit (65535 x 65535 x 16 bit is 8 GiB for one frame), native pixel
data shorter than Rows x Columns x frames x samples x BitsAllocated / 8, or encapsulated
pixel data with no (or too few, or cut) fragments.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from dicom_node.header_scan import PIXEL_TAGS, scan_header
from dicom_node.header_values import HeaderValues

__all__ = [
    "ReceivedHeader",
    "expected_native_bytes",
    "needs_pixel_data",
    "pixel_data_problem",
    "read_received_header",
]

_ITEM_TAG = b"\xfe\xff\x00\xe0"
_SEQ_DELIMITER_TAG = b"\xfe\xff\xdd\xe0"
_ALLOWED_BITS = (1, 8, 16, 32, 64)
# Storage SOP classes that carry pixel data although "Image" is not in their name.
_PIXEL_CLASSES_WITHOUT_IMAGE_IN_NAME = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
        "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage
        "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map Storage
    }
)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_TAGS = PIXEL_TAGS  # tag -> keyword, the tags the header reading stops at
_UNDEFINED_LENGTH = 0xFFFFFFFF
# Explicit VRs with a 2-byte reserved field and a 4-byte length (12-byte element header).
_LONG_HEADER_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UN", b"UT"})


@dataclass(frozen=True)
class ReceivedHeader:
    """A received instance read up to (not into) its pixel data.

    Attributes
    ----------
    dataset : pydicom.dataset.Dataset
        File meta and every top-level element before the pixel data element.
    pixel_problem : str or None
        What :func:`pixel_data_problem` says about the pixel data (``None``: lengths agree).
    read_whole : bool
        ``True`` when the pixel data had to be read to check it (encapsulated or deflated
        data); ``False`` when only the element header was looked at.
    """

    dataset: Dataset
    pixel_problem: str | None
    read_whole: bool


def read_received_header(encoded: bytes, *, max_pixel_bytes: int) -> ReceivedHeader:
    """Parse a received Part-10 instance without reading its native pixel data.

    For native pixel data (the usual MR case) the parser stops at the pixel data element
    and takes its length from the element header; the value is neither copied nor decoded.
    The checks are those of :func:`pixel_data_problem`, plus: the declared value length
    must be present in ``encoded`` (a cut-off stream is refused). Encapsulated pixel data
    (fragments are walked) and deflated data sets are read whole. The header is read by
    :func:`dicom_node.header_scan.scan_header` (the same objects as pydicom's
    ``read_partial``, in about half the time) or, for anything unusual, by ``read_partial``.

    Parameters
    ----------
    encoded : bytes
        Preamble, file meta and data set as received.
    max_pixel_bytes : int
        Largest pixel data size (native, from the header) we accept.

    Returns
    -------
    ReceivedHeader

    Raises
    ------
    Exception
        Whatever pydicom raises for a header it cannot parse (the caller refuses the
        instance as not understood).
    """
    scanned = scan_header(encoded)  # the usual syntaxes, read cheaply; None: ask pydicom
    if scanned is None:
        header, pixel, start = _read_partial(encoded)
    else:
        header, start = scanned.dataset, scanned.pixel_at
        pixel = None if scanned.pixel_tag is None else (scanned.pixel_tag, scanned.pixel_length)
    syntax = header.file_meta.get("TransferSyntaxUID")
    if (
        syntax is None
        or syntax == DeflatedExplicitVRLittleEndian
        or _as_uid(syntax).is_encapsulated
        or (pixel is not None and pixel[1] == _UNDEFINED_LENGTH)
    ):
        whole = dcmread(BytesIO(encoded))  # encapsulated or deflated: read the value
        return ReceivedHeader(
            whole, pixel_data_problem(whole, max_pixel_bytes=max_pixel_bytes), True
        )
    if pixel is None:
        problem = pixel_data_problem(header, max_pixel_bytes=max_pixel_bytes)
        return ReceivedHeader(header, problem, False)
    tag, length = pixel
    implicit = _as_uid(syntax).is_implicit_VR
    vr = encoded[start + 4 : start + 6]
    value_at = start + (8 if implicit or vr not in _LONG_HEADER_VRS else 12)
    present = max(len(encoded) - value_at, 0)
    keyword = _PIXEL_TAGS[tag]
    if present < length:
        return ReceivedHeader(header, f"{keyword} cut: {present} of {length} B received", False)
    values = HeaderValues(header)
    problem = _length_problem(header, values, keyword, length, max_pixel_bytes, encapsulated=False)
    return ReceivedHeader(header, problem, False)


def _read_partial(encoded: bytes) -> tuple[Dataset, tuple[int, int] | None, int]:
    """pydicom's ``read_partial`` up to a pixel tag.

    Returns the data set, the first pixel tag met with its header length (``None``: none)
    and the offset the stream was left at (pydicom rewinds to the start of the element).
    """
    found: list[tuple[int, int]] = []

    def at_pixels(tag: BaseTag, _vr: str | None, length: int) -> bool:
        if int(tag) in _PIXEL_TAGS:
            found.append((int(tag), int(length)))
            return True
        return False

    stream = BytesIO(encoded)
    header = read_partial(stream, stop_when=at_pixels)
    return header, (found[0] if found else None), stream.tell()


def needs_pixel_data(sop_class_uid: str) -> bool:
    """Return ``True`` for storage SOP classes whose instances must carry pixel data.

    Parameters
    ----------
    sop_class_uid : str
        SOP Class UID.

    Returns
    -------
    bool

    Examples
    --------
    >>> needs_pixel_data("1.2.840.10008.5.1.4.1.1.4")  # MR Image Storage
    True
    >>> needs_pixel_data("1.2.840.10008.5.1.4.1.1.88.34")  # Comprehensive 3D SR
    False
    """
    if sop_class_uid in _PIXEL_CLASSES_WITHOUT_IMAGE_IN_NAME:
        return True
    return "Image Storage" in UID(sop_class_uid).name


def expected_native_bytes(
    rows: int, columns: int, frames: int, samples: int, bits_allocated: int, photometric: str = ""
) -> int:
    """Return the bytes native (uncompressed) pixel data need according to the header.

    Parameters
    ----------
    rows, columns, frames, samples, bits_allocated : int
        Rows, Columns, NumberOfFrames, SamplesPerPixel, BitsAllocated.
    photometric : str, optional
        PhotometricInterpretation; ``YBR_FULL_422`` stores two samples per pixel.

    Returns
    -------
    int
        ``ceil(rows * columns * frames * samples * bits_allocated / 8)``.

    Examples
    --------
    >>> expected_native_bytes(448, 448, 1, 1, 16)
    401408
    >>> expected_native_bytes(3, 3, 1, 1, 1)
    2
    """
    if photometric == "YBR_FULL_422" and samples == 3:
        samples = 2
    bits = rows * columns * frames * samples * bits_allocated
    return (bits + 7) // 8


def pixel_data_problem(ds: Dataset, *, max_pixel_bytes: int) -> str | None:
    """Say what is wrong with the pixel data of ``ds`` compared with its header, if anything.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A received data set read completely (pixel data as bytes, not decoded), with
        ``file_meta.TransferSyntaxUID``.
    max_pixel_bytes : int
        Largest pixel data size (native, from the header) we accept.

    Returns
    -------
    str or None
        A short text naming the problem (at most 64 characters, it goes into the DIMSE
        Error Comment), or ``None`` when the lengths agree.
    """
    keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
    sop_class = str(ds.get("SOPClassUID", ""))
    if keyword is None:
        return "no PixelData in an image instance" if needs_pixel_data(sop_class) else None
    value = ds[keyword].value
    length = 0 if value is None else len(value)
    values = HeaderValues(ds)
    problem = _length_problem(ds, values, keyword, length, max_pixel_bytes)
    if problem is not None or not (keyword == "PixelData" and _is_encapsulated(ds)):
        return problem
    return _fragment_problem(bytes(value), _int(values, "NumberOfFrames", default=1) or 1)


def _is_encapsulated(ds: Dataset) -> bool:
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    return syntax is not None and UID(syntax).is_encapsulated


def _as_uid(value: object) -> UID:
    """``UID(value)``, without building it again when it is one already."""
    return value if isinstance(value, UID) else UID(value)  # type: ignore[arg-type]


def _length_problem(
    ds: Dataset,
    values: HeaderValues,
    keyword: str,
    length: int,
    max_pixel_bytes: int,
    *,
    encapsulated: bool | None = None,
) -> str | None:
    """Header checks plus, for native data, the value length against the header.

    ``encapsulated`` is read from ``ds`` when ``None`` (the caller may know it already).
    """
    if length == 0:
        return f"{keyword} is empty"
    rows, columns = _int(values, "Rows"), _int(values, "Columns")
    if not rows or not columns or rows < 0 or columns < 0:
        return f"Rows {rows} x Columns {columns} with {keyword}"
    bits = _int(values, "BitsAllocated")
    if keyword == "FloatPixelData":
        bits = 32 if bits is None else bits
    elif keyword == "DoubleFloatPixelData":
        bits = 64 if bits is None else bits
    if bits not in _ALLOWED_BITS:
        return f"BitsAllocated {bits} is not 1, 8, 16, 32 or 64"
    samples = _int(values, "SamplesPerPixel", default=1)
    if samples is None or not 1 <= samples <= 4:
        return f"SamplesPerPixel {samples} is not 1..4"
    frames = _int(values, "NumberOfFrames", default=1)
    if frames is None or frames < 1:
        shown = frames if frames is not None else repr(ds.get("NumberOfFrames"))[:30]
        return f"NumberOfFrames {shown} is not >= 1"
    photometric = str(values.get("PhotometricInterpretation", "")).strip()
    expected = expected_native_bytes(rows, columns, frames, samples, bits, photometric)
    if expected > max_pixel_bytes:
        return f"{rows} x {columns} x {frames} frame(s) = {expected} B, over limit"[:64]
    if keyword == "PixelData" and (_is_encapsulated(ds) if encapsulated is None else encapsulated):
        return None  # the caller walks the fragments
    if length < expected:
        return f"{keyword} {length} B, header needs {expected} B"
    return None


def _fragment_problem(value: bytes, frames: int) -> str | None:
    """Walk the items of encapsulated pixel data (offsets and lengths only)."""
    offset = 0
    items: list[int] = []
    while offset + 8 <= len(value):
        tag = value[offset : offset + 4]
        if tag == _SEQ_DELIMITER_TAG:
            break
        if tag != _ITEM_TAG:
            return f"encapsulated PixelData: no item tag at byte {offset}"
        length = int.from_bytes(value[offset + 4 : offset + 8], "little")
        offset += 8
        if length == 0xFFFFFFFF or offset + length > len(value):
            return f"encapsulated PixelData: item {len(items)} cut short"
        items.append(length)
        offset += length
    if offset < len(value) and value[offset : offset + 4] != _SEQ_DELIMITER_TAG:
        return "encapsulated PixelData: trailing bytes after the items"
    fragments = [length for length in items[1:] if length > 0]  # items[0]: offset table
    if not fragments:
        return "encapsulated PixelData has no fragments"
    if len(fragments) < frames:
        return f"{len(fragments)} fragment(s) for {frames} frames"
    return None


def _int(values: HeaderValues, keyword: str, default: int | None = None) -> int | None:
    value = values.value(keyword)
    if value in (None, ""):
        return default
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
