"""Top-level header values read from pydicom's raw elements, without pydicom's conversion.

pydicom converts a raw element on first access (VR hooks, character set, value classes such
as ``UID``/``IS``/``MultiValue``, the ``reading_validation_mode`` checks): some 15 us each,
and the storage SCP reads about 30 values per received instance. :class:`HeaderValues`
decodes the bytes itself only when the result is certainly the value pydicom gives and a
value pydicom's checks accept (so no warning or error is skipped):

- UI: digits and dots, no leading zero in a component (1-64 characters), trailing
  NUL/space padding;
- CS: any bytes (pydicom decodes them as ISO 8859-1 and never checks them on reading);
- US: exactly two bytes;
- IS: an integer of at most 9 digits, at most 12 characters with its leading spaces;
- LO/SH: printable ASCII (no NUL, no ESC, no byte >= 0x80), each value within the VR's
  length, in a data set whose first character set decodes ASCII as ASCII.

Every other case (converted or deferred elements, an explicit VR other than the dictionary
VR, empty values, other bytes, customised pydicom hooks) is read by pydicom itself. Values
are equal to pydicom's, though plain: ``str`` for UI, ``int`` for IS.
"""

from __future__ import annotations

import re
from collections.abc import MutableSequence

from pydicom import config as pydicom_config
from pydicom import hooks as pydicom_hooks
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

__all__ = ["ASCII_TRANSPARENT_CODECS", "HEADER_TAGS", "HeaderValues"]

#: Keyword -> (tag, dictionary VR) of the values :class:`HeaderValues` decodes itself.
HEADER_TAGS: dict[str, tuple[BaseTag, str]] = {
    keyword: (BaseTag(tag), vr)
    for keyword, tag, vr in (
        ("ImageType", 0x00080008, "CS"),
        ("SOPClassUID", 0x00080016, "UI"),
        ("SOPInstanceUID", 0x00080018, "UI"),
        ("Modality", 0x00080060, "CS"),
        ("Manufacturer", 0x00080070, "LO"),
        ("SeriesDescription", 0x0008103E, "LO"),
        ("ManufacturerModelName", 0x00081090, "LO"),
        ("PatientID", 0x00100020, "LO"),
        ("IssuerOfPatientID", 0x00100021, "LO"),
        ("ScanningSequence", 0x00180020, "CS"),
        ("SoftwareVersions", 0x00181020, "LO"),
        ("ProtocolName", 0x00181030, "LO"),
        ("StudyInstanceUID", 0x0020000D, "UI"),
        ("SeriesInstanceUID", 0x0020000E, "UI"),
        ("SeriesNumber", 0x00200011, "IS"),
        ("AcquisitionNumber", 0x00200012, "IS"),
        ("FrameOfReferenceUID", 0x00200052, "UI"),
        ("ImagesInAcquisition", 0x00201002, "IS"),
        ("SamplesPerPixel", 0x00280002, "US"),
        ("PhotometricInterpretation", 0x00280004, "CS"),
        ("NumberOfFrames", 0x00280008, "IS"),
        ("Rows", 0x00280010, "US"),
        ("Columns", 0x00280011, "US"),
        ("BitsAllocated", 0x00280100, "US"),
        ("FrameType", 0x00089007, "CS"),
        ("EchoPulseSequence", 0x00189008, "CS"),
    )
}

#: Python codecs (as pydicom names them) that decode printable ASCII as ASCII.
ASCII_TRANSPARENT_CODECS = frozenset(
    {
        "iso8859",
        "latin_1",
        "iso8859_2",
        "iso8859_3",
        "iso8859_4",
        "iso_ir_126",
        "iso_ir_127",
        "iso_ir_138",
        "iso_ir_144",
        "iso_ir_148",
        "iso_ir_166",
        "UTF8",
        "GB18030",
        "GBK",
    }
)

_TEXT_MAX_CHARS = {"LO": 64, "SH": 16}
_UID = re.compile(rb"((?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*)[\x00 ]*")
_INTEGER = re.compile(rb"( *[+-]?[0-9]{1,9})[\x00 ]*")
_PRINTABLE = re.compile(rb"[\x20-\x7e]+")
_SLOW = object()  # pydicom must convert this element
_ABSENT = object()


class HeaderValues:
    """Reads top-level values of one data set, cheaply where that is exact.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The data set (typically read by ``read_partial``/``dcmread``, elements still raw).

    Examples
    --------
    >>> ds = Dataset()
    >>> ds.Modality = "MR"
    >>> HeaderValues(ds).get("Modality"), HeaderValues(ds).get("Rows", 0)
    ('MR', 0)
    """

    def __init__(self, ds: Dataset) -> None:
        self._ds = ds
        self._plain = _pydicom_is_plain()
        self._ascii_text: bool | None = None  # decided on the first text value

    @property
    def dataset(self) -> Dataset:
        """The data set the values are read from."""
        return self._ds

    def get(self, keyword: str, default: object = None) -> object:
        """Return what ``ds.get(keyword, default)`` returns (plain ``str``/``int`` types).

        Parameters
        ----------
        keyword : str
            DICOM keyword of a top-level element.
        default : object, optional
            Returned when the element is absent.

        Returns
        -------
        object
        """
        value = self._fast(keyword)
        if value is _SLOW:
            return self._ds.get(keyword, default)
        return default if value is _ABSENT else value

    def value(self, keyword: str) -> object:
        """Return ``ds[keyword].value``, or ``None`` when ``keyword`` is not in ``ds``.

        Parameters
        ----------
        keyword : str
            DICOM keyword of a top-level element.

        Returns
        -------
        object
        """
        value = self._fast(keyword)
        if value is _SLOW:
            return self._ds[keyword].value if keyword in self._ds else None
        return None if value is _ABSENT else value

    def _fast(self, keyword: str) -> object:
        spec = HEADER_TAGS.get(keyword)
        if spec is None or not self._plain:
            return _SLOW
        tag, vr = spec
        elem = self._ds.get_item(tag, keep_deferred=True)
        if elem is None:
            return _ABSENT
        if not isinstance(elem, RawDataElement):
            return elem.value
        raw = elem.value
        if not raw or elem.VR not in (None, vr):
            return _SLOW  # deferred, empty, or a VR pydicom may look up again
        if vr == "UI":
            return _uid(raw)
        if vr == "CS":
            return _code_string(raw)
        if vr == "US":
            return _unsigned_short(raw, elem.is_little_endian)
        if vr == "IS":
            return _integer(raw)
        return self._text(raw, _TEXT_MAX_CHARS[vr])

    def _text(self, raw: bytes, max_chars: int) -> object:
        if self._ascii_text is None:
            self._ascii_text = _ascii_charset(self._ds.original_character_set)
        if not self._ascii_text or _PRINTABLE.fullmatch(raw) is None:
            return _SLOW
        items = [item.rstrip(" ") for item in raw.decode("ascii").split("\\")]
        if any(len(item) > max_chars for item in raw.split(b"\\")):
            return _SLOW  # pydicom warns (or raises) about the length
        return items[0] if len(items) == 1 else MultiValue(str, items)


def _pydicom_is_plain() -> bool:
    """Whether pydicom converts raw elements the default way (no callbacks, no numpy)."""
    return (
        pydicom_config.data_element_callback is None
        and pydicom_hooks.hooks.raw_element_vr is pydicom_hooks.raw_element_vr
        and pydicom_hooks.hooks.raw_element_value is pydicom_hooks.raw_element_value
        and not pydicom_config.use_IS_numpy
    )


def _ascii_charset(encodings: str | MutableSequence[str] | None) -> bool:
    if not encodings:
        return False  # pydicom would work the character set out again
    first = encodings if isinstance(encodings, str) else encodings[0]
    return first in ASCII_TRANSPARENT_CODECS


def _uid(raw: bytes) -> object:
    match = _UID.fullmatch(raw)
    if match is None or len(match.group(1)) > 64:
        return _SLOW
    return match.group(1).decode("ascii")


def _code_string(raw: bytes) -> object:
    items = raw.decode("latin-1").rstrip(" \x00").split("\\")
    return items[0] if len(items) == 1 else MultiValue(str, items)


def _unsigned_short(raw: bytes, little_endian: bool) -> object:
    if len(raw) != 2:
        return _SLOW  # several values, or a length pydicom refuses
    return int.from_bytes(raw, "little" if little_endian else "big")


def _integer(raw: bytes) -> object:
    match = _INTEGER.fullmatch(raw)
    if match is None or len(match.group(1)) > 12:
        return _SLOW
    return int(match.group(1))
