"""Does an instance's pixel data match its header? Lengths only, pixel data is never decoded.

The storage SCP calls :func:`pixel_data_problem` on every received data set and refuses the
instance when it returns a text: image SOP classes without pixel data, Rows/Columns 0,
BitsAllocated not in 1/8/16/32/64, a declared size beyond a limit (65535 x 65535 x 16 bit is
8 GiB for one frame), native pixel data shorter than Rows x Columns x frames x samples x
BitsAllocated / 8, or encapsulated pixel data with no (or too few, or cut) fragments.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import UID

__all__ = ["expected_native_bytes", "needs_pixel_data", "pixel_data_problem"]

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
    if value is None or len(value) == 0:
        return f"{keyword} is empty"
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    if not rows or not columns or rows < 0 or columns < 0:
        return f"Rows {rows} x Columns {columns} with {keyword}"
    bits = _int(ds, "BitsAllocated")
    if keyword == "FloatPixelData":
        bits = 32 if bits is None else bits
    elif keyword == "DoubleFloatPixelData":
        bits = 64 if bits is None else bits
    if bits not in _ALLOWED_BITS:
        return f"BitsAllocated {bits} is not 1, 8, 16, 32 or 64"
    samples = _int(ds, "SamplesPerPixel", default=1)
    if samples is None or not 1 <= samples <= 4:
        return f"SamplesPerPixel {samples} is not 1..4"
    frames = _int(ds, "NumberOfFrames", default=1)
    if frames is None or frames < 1:
        return f"NumberOfFrames {ds.get('NumberOfFrames')!r} is not >= 1"
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    expected = expected_native_bytes(rows, columns, frames, samples, bits, photometric)
    if expected > max_pixel_bytes:
        return f"{rows} x {columns} x {frames} frame(s) = {expected} B, over limit"[:64]
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is not None and UID(syntax).is_encapsulated and keyword == "PixelData":
        return _fragment_problem(bytes(value), frames)
    if len(value) < expected:
        return f"{keyword} {len(value)} B, header needs {expected} B"
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


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    if keyword not in ds or ds[keyword].value in (None, ""):
        return default
    try:
        return int(ds[keyword].value)
    except (TypeError, ValueError):
        return None
