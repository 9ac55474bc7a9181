"""The header check as it was before HeaderValues: plain pydicom access (no tests here).

The equivalence tests compare :mod:`dicom_node.pixel_header` and
:mod:`dicom_node.instance` with these functions, which read every value through pydicom's
own conversion (``ds.get(keyword)``, ``ds[keyword].value``, iteration).
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from dicom_node.components import _DESCRIPTION_PATTERNS, Component, is_multi_echo_gre
from dicom_node.instance import InstanceInfo, OwnResultMarkers, PseudonymKey, _as_list, _norm
from dicom_node.pixel_header import (
    _ALLOWED_BITS,
    _LONG_HEADER_VRS,
    _PIXEL_KEYWORDS,
    _PIXEL_TAGS,
    _UNDEFINED_LENGTH,
    ReceivedHeader,
    _fragment_problem,
    _is_encapsulated,
    expected_native_bytes,
    needs_pixel_data,
)
from dicom_node.validation import check_uid

READING_MODES = {"WARN": pydicom_config.WARN, "IGNORE": pydicom_config.IGNORE, "RAISE": 2}
"""pydicom's ``reading_validation_mode`` values by name (the ``reading_mode`` fixture)."""


def reference_read_partial(encoded: bytes) -> tuple[Dataset, tuple[int, int] | None, int]:
    """pydicom's ``read_partial`` up to the first pixel tag, as the header check used it.

    Returns the data set, that tag with its header length (``None``: none) and the offset
    the stream was left at (pydicom rewinds to the start of the element).
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


def reference_header_uids(ds: Dataset) -> tuple[str, str, str, str]:
    """The four UIDs as the storage SCP read them through pydicom before HeaderValues."""
    return (
        check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID"),
        check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID"),
        check_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID"),
        check_uid(ds.get("SOPClassUID"), "SOPClassUID"),
    )


def reference_received_header(encoded: bytes, *, max_pixel_bytes: int) -> ReceivedHeader:
    """``read_received_header`` read with pydicom's conversion only."""
    header, pixel, start = reference_read_partial(encoded)
    syntax = header.file_meta.get("TransferSyntaxUID")
    if (
        syntax is None
        or syntax == DeflatedExplicitVRLittleEndian
        or UID(syntax).is_encapsulated
        or (pixel is not None and pixel[1] == _UNDEFINED_LENGTH)
    ):
        whole = dcmread(BytesIO(encoded))
        return ReceivedHeader(whole, reference_pixel_problem(whole, max_pixel_bytes), True)
    if pixel is None:
        return ReceivedHeader(header, reference_pixel_problem(header, max_pixel_bytes), False)
    tag, length = pixel
    implicit = UID(syntax).is_implicit_VR
    vr = encoded[start + 4 : start + 6]
    value_at = start + (8 if implicit or vr not in _LONG_HEADER_VRS else 12)
    present = max(len(encoded) - value_at, 0)
    keyword = _PIXEL_TAGS[tag]
    if present < length:
        return ReceivedHeader(header, f"{keyword} cut: {present} of {length} B received", False)
    return ReceivedHeader(header, _length_problem(header, keyword, length, max_pixel_bytes), False)


def reference_pixel_problem(ds: Dataset, max_pixel_bytes: int) -> str | None:
    """``pixel_data_problem`` with pydicom's conversion only."""
    keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
    sop_class = str(ds.get("SOPClassUID", ""))
    if keyword is None:
        return "no PixelData in an image instance" if needs_pixel_data(sop_class) else None
    value = ds[keyword].value
    length = 0 if value is None else len(value)
    problem = _length_problem(ds, keyword, length, max_pixel_bytes)
    if problem is not None or not (keyword == "PixelData" and _is_encapsulated(ds)):
        return problem
    return _fragment_problem(bytes(value), _int(ds, "NumberOfFrames", default=1) or 1)


def _length_problem(ds: Dataset, keyword: str, length: int, max_pixel_bytes: int) -> str | None:
    if length == 0:
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
        shown = frames if frames is not None else repr(ds.get("NumberOfFrames"))[:30]
        return f"NumberOfFrames {shown} is not >= 1"
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    expected = expected_native_bytes(rows, columns, frames, samples, bits, photometric)
    if expected > max_pixel_bytes:
        return f"{rows} x {columns} x {frames} frame(s) = {expected} B, over limit"[:64]
    if keyword == "PixelData" and _is_encapsulated(ds):
        return None
    if length < expected:
        return f"{keyword} {length} B, header needs {expected} B"
    return None


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    if keyword not in ds or ds[keyword].value in (None, ""):
        return default
    try:
        return int(ds[keyword].value)
    except (TypeError, ValueError):
        return None


def reference_classify(ds: Dataset) -> Component:
    """``classify`` with pydicom's conversion only."""
    modality = str(ds.get("Modality", "")).upper()
    if modality == "SEG" or ds.get("SOPClassUID") == "1.2.840.10008.5.1.4.1.1.66.4":
        return Component.SEG
    value = ds.get("ImageType") or ds.get("FrameType") or []
    if isinstance(value, str):
        value = value.split("\\")
    image_type = [str(v).upper() for v in value]
    tokens = set(image_type)
    if "T1 MAP" in tokens or "T1MAP" in tokens or "T1_MAP" in tokens:
        return Component.T1MAP
    if "UNI" in tokens:
        return Component.UNI
    if "B1 MAP" in tokens or "B1MAP" in tokens or "FLIP ANGLE MAP" in tokens:
        return Component.B1MAP
    if "INV1" in tokens:
        return Component.INV1
    if "INV2" in tokens:
        return Component.INV2
    if "P" in image_type[2:3] or "PHASE" in tokens:
        return Component.PHASE
    series_description = str(ds.get("SeriesDescription", ""))
    for component, pattern in _DESCRIPTION_PATTERNS:
        if pattern.search(series_description):
            return component
    if is_multi_echo_gre([ds]):
        return Component.T2STAR
    return Component.OTHER


def reference_matches(markers: OwnResultMarkers, ds: Dataset) -> bool:
    """``OwnResultMarkers.matches`` with pydicom's conversion only."""
    if markers.manufacturer is not None and _norm(ds.get("Manufacturer")) == _norm(
        markers.manufacturer
    ):
        return True
    if markers.software_name is not None:
        name = _norm(markers.software_name)
        if _norm(ds.get("ManufacturerModelName")) == name:
            return True
        for version in _as_list(ds.get("SoftwareVersions")):
            text = _norm(version)
            if text == name or (text.split() or [""])[0] == name:
                return True
    if markers.private_creator is not None:
        creator = _norm(markers.private_creator)
        for element in ds:
            if element.tag.is_private_creator and _norm(element.value) == creator:
                return True
    return False


def reference_instance_info(
    ds: Dataset, *, own_markers: OwnResultMarkers, pseudonyms: PseudonymKey, size_bytes: int
) -> InstanceInfo:
    """``read_instance_info`` with pydicom's conversion only (fixed path, AE, time)."""
    study_uid = check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID")
    series_uid = check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
    sop_uid = check_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID")
    sop_class_uid = check_uid(ds.get("SOPClassUID"), "SOPClassUID")
    file_meta = getattr(ds, "file_meta", None)
    ts_uid = check_uid(
        file_meta.get("TransferSyntaxUID") if file_meta is not None else None,
        "file meta TransferSyntaxUID",
    )
    frame_of_reference = ds.get("FrameOfReferenceUID")
    return InstanceInfo(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class_uid,
        transfer_syntax_uid=ts_uid,
        component=reference_classify(ds),
        modality=str(ds.get("Modality", "") or ""),
        series_number=_optional_int(ds, "SeriesNumber"),
        series_description=str(ds.get("SeriesDescription", "") or ""),
        protocol_name=str(ds.get("ProtocolName", "") or ""),
        patient_key=pseudonyms.patient_key(
            str(ds.get("IssuerOfPatientID", "") or ""), str(ds.get("PatientID", "") or "")
        ),
        images_in_acquisition=_optional_int(ds, "ImagesInAcquisition"),
        number_of_frames=_optional_int(ds, "NumberOfFrames"),
        acquisition_number=_optional_int(ds, "AcquisitionNumber"),
        frame_of_reference_uid=str(frame_of_reference) if frame_of_reference else None,
        calling_ae="A",
        path=Path("/spool/x.dcm"),
        size_bytes=size_bytes,
        received_at=0.0,
        is_own_result=reference_matches(own_markers, ds),
    )


def _optional_int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{keyword} is not a valid integer string") from exc
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue):
        raise ValueError(f"{keyword} must be a single integer, got {len(value)} values")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{keyword} must be an integer, got {value!r}") from exc
