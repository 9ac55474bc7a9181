"""The header facts the node keeps about one received instance (never pixel data)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicom_node.components import Component, classify_header
from dicom_node.header_values import HeaderValues
from dicom_node.validation import check_uid

__all__ = [
    "MIN_SECRET_BYTES",
    "InstanceInfo",
    "OwnResultMarkers",
    "PseudonymKey",
    "header_uids",
    "patient_key",
    "read_instance_info",
]

#: Shortest site secret accepted for keyed pseudonyms (128 bits).
MIN_SECRET_BYTES = 16


@dataclass(frozen=True)
class OwnResultMarkers:
    """How to recognise instances this service produced (so they never start a new job).

    An instance is our own result when any configured marker matches:

    - ``manufacturer``: equals Manufacturer (0008,0070), case-insensitive;
    - ``software_name``: equals ManufacturerModelName (0008,1090) or the first word of any
      SoftwareVersions (0018,1020) value, case-insensitive;
    - ``private_creator``: equals a private creator value in the top-level dataset.

    Parameters
    ----------
    manufacturer : str or None
        Manufacturer our writers put in results, e.g. ``"cordt1"``.
    software_name : str or None
        Software name our writers put in results.
    private_creator : str or None
        Private creator our writers reserve, e.g. ``"CORDT1"``.

    Raises
    ------
    ValueError
        If no marker is given (results would loop back as new jobs).
    """

    manufacturer: str | None = None
    software_name: str | None = None
    private_creator: str | None = None

    def __post_init__(self) -> None:
        values = (self.manufacturer, self.software_name, self.private_creator)
        for value in values:
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"own-result markers must be non-empty strings, got {value!r}")
        if all(value is None for value in values):
            raise ValueError(
                "OwnResultMarkers needs at least one of manufacturer, software_name, "
                "private_creator; otherwise results sent back by a PACS start new jobs"
            )

    def matches(self, ds: Dataset) -> bool:
        """Return ``True`` if ``ds`` carries one of the markers.

        Parameters
        ----------
        ds : pydicom.dataset.Dataset
            Header of the instance.

        Returns
        -------
        bool
        """
        return self.matches_header(HeaderValues(ds))

    def matches_header(self, values: HeaderValues) -> bool:
        """Return ``True`` if the header read by ``values`` carries one of the markers.

        Parameters
        ----------
        values : HeaderValues
            Values of the instance's header.

        Returns
        -------
        bool
        """
        if self.manufacturer is not None and _norm(values.get("Manufacturer")) == _norm(
            self.manufacturer
        ):
            return True
        if self.software_name is not None:
            name = _norm(self.software_name)
            if _norm(values.get("ManufacturerModelName")) == name:
                return True
            for version in _as_list(values.get("SoftwareVersions")):
                text = _norm(version)
                if text == name or (text.split() or [""])[0] == name:
                    return True
        if self.private_creator is not None:
            creator = _norm(self.private_creator)
            for element in values.dataset:
                if element.tag.is_private_creator and _norm(element.value) == creator:
                    return True
        return False


@dataclass(frozen=True)
class InstanceInfo:
    """Header facts about one spooled instance.

    Attributes
    ----------
    study_uid, series_uid, sop_instance_uid, sop_class_uid, transfer_syntax_uid : str
        Identifiers from the dataset and its file meta.
    component : Component
        What the series holds (see :func:`dicom_node.components.classify`).
    modality : str
        Modality (0008,0060), ``""`` when absent.
    series_number : int or None
        SeriesNumber.
    series_description, protocol_name : str
        ``""`` when absent.
    patient_key : str
        First 16 hex characters of an HMAC-SHA256 (site secret) of issuer and patient ID
        (see :func:`patient_key`); never the raw ID.
    images_in_acquisition : int or None
        ImagesInAcquisition (0020,1002), the expected count for single-frame series.
    number_of_frames : int or None
        NumberOfFrames for multi-frame (enhanced) instances.
    acquisition_number : int or None
        AcquisitionNumber.
    frame_of_reference_uid : str or None
        FrameOfReferenceUID.
    calling_ae : str
        AE title of the sender.
    path : pathlib.Path
        The spooled Part-10 file.
    size_bytes : int
        Size of that file.
    received_at : float
        Epoch seconds of reception.
    is_own_result : bool
        ``True`` when :class:`OwnResultMarkers` recognised the instance as produced by us.
    """

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    component: Component
    modality: str
    series_number: int | None
    series_description: str
    protocol_name: str
    patient_key: str
    images_in_acquisition: int | None
    number_of_frames: int | None
    acquisition_number: int | None
    frame_of_reference_uid: str | None
    calling_ae: str
    path: Path
    size_bytes: int
    received_at: float
    is_own_result: bool


@dataclass(frozen=True)
class PseudonymKey:
    """The site secret that keys every pseudonymous patient key (HMAC-SHA256).

    Without the secret a key cannot be recomputed from a PatientID, so a research label
    (BIDS ``sub-``) or a job-store key does not reveal whom it belongs to by trying IDs.
    The same secret must be used by the receiver, the workers and the exports of one site.

    Parameters
    ----------
    secret : bytes
        At least :data:`MIN_SECRET_BYTES` bytes; never shown in ``repr``.

    Raises
    ------
    ValueError
        If the secret is shorter than :data:`MIN_SECRET_BYTES` bytes.
    """

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"the pseudonym secret must be at least {MIN_SECRET_BYTES} bytes "
                f"(got {len(self.secret) if isinstance(self.secret, bytes) else 'no bytes'})"
            )

    def patient_key(self, issuer_of_patient_id: str, patient_id: str) -> str:
        """Return the keyed pseudonym of one patient (see :func:`patient_key`)."""
        return patient_key(issuer_of_patient_id, patient_id, self)


def patient_key(issuer_of_patient_id: str, patient_id: str, key: PseudonymKey) -> str:
    """Return a pseudonymous key for a patient: safe to log and to compare.

    The key is the first 16 hex characters of HMAC-SHA256, keyed with the site secret, over
    ``IssuerOfPatientID + "\\" + PatientID`` (UTF-8). The backslash cannot occur in either
    value (LO), so different (issuer, ID) pairs never collide by concatenation.

    Parameters
    ----------
    issuer_of_patient_id : str
        IssuerOfPatientID (0010,0021), ``""`` when absent.
    patient_id : str
        PatientID (0010,0020), ``""`` when absent.
    key : PseudonymKey
        The site secret.

    Returns
    -------
    str
        16 lowercase hex characters.

    Examples
    --------
    >>> site = PseudonymKey(b"0123456789abcdef")
    >>> key = patient_key("HOSP", "123", site)
    >>> len(key), key == patient_key("HOSP", "12", site)
    (16, False)
    >>> key == patient_key("HOSP", "123", PseudonymKey(b"another-site-secret"))
    False
    """
    if not isinstance(key, PseudonymKey):
        raise TypeError(f"key must be a PseudonymKey, got {type(key).__name__}")
    raw = f"{issuer_of_patient_id.strip()}\\{patient_id.strip()}".encode()
    return hmac.new(key.secret, raw, hashlib.sha256).hexdigest()[:16]


def header_uids(ds: Dataset) -> tuple[str, str, str, str]:
    """Return the Study, Series, SOP Instance and SOP Class UIDs of a header, checked.

    The same values and errors as ``check_uid(ds.get(keyword), keyword)`` for each, read
    cheaply (see :class:`dicom_node.header_values.HeaderValues`).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The instance's header.

    Returns
    -------
    tuple of str
        StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, SOPClassUID.

    Raises
    ------
    ValueError
        If one of them is missing or not a valid UID (the first such, in that order).
    """
    return _checked_uids(HeaderValues(ds))


def _checked_uids(values: HeaderValues) -> tuple[str, str, str, str]:
    return (
        check_uid(values.get("StudyInstanceUID"), "StudyInstanceUID"),
        check_uid(values.get("SeriesInstanceUID"), "SeriesInstanceUID"),
        check_uid(values.get("SOPInstanceUID"), "SOPInstanceUID"),
        check_uid(values.get("SOPClassUID"), "SOPClassUID"),
    )


def read_instance_info(
    ds: Dataset,
    *,
    path: Path,
    calling_ae: str,
    received_at: float,
    own_markers: OwnResultMarkers,
    pseudonyms: PseudonymKey,
    size_bytes: int | None = None,
) -> InstanceInfo:
    """Read the header facts of a (header-only) dataset.

    Pixel data is never touched; a dataset read with ``stop_before_pixels=True`` is enough.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The instance, with file meta (for the transfer syntax).
    path : pathlib.Path
        Where the instance is spooled.
    calling_ae : str
        AE title of the sender (``""`` when rebuilt from disk and unknown).
    received_at : float
        Epoch seconds of reception.
    own_markers : OwnResultMarkers
        Rule that recognises our own results.
    pseudonyms : PseudonymKey
        Site secret for :attr:`InstanceInfo.patient_key`.
    size_bytes : int, optional
        File size; read from ``path`` when not given.

    Returns
    -------
    InstanceInfo

    Raises
    ------
    ValueError
        If a Study/Series/SOP Instance/SOP Class UID or the transfer syntax is missing or
        invalid, or if a count attribute is not an integer.
    """
    values = HeaderValues(ds)
    study_uid, series_uid, sop_uid, sop_class_uid = _checked_uids(values)
    file_meta = getattr(ds, "file_meta", None)
    ts_uid = check_uid(
        file_meta.get("TransferSyntaxUID") if file_meta is not None else None,
        "file meta TransferSyntaxUID",
    )
    frame_of_reference = values.get("FrameOfReferenceUID")
    if size_bytes is None:
        size_bytes = Path(path).stat().st_size
    return InstanceInfo(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class_uid,
        transfer_syntax_uid=ts_uid,
        component=classify_header(values),
        modality=str(values.get("Modality", "") or ""),
        series_number=_optional_int(values, "SeriesNumber"),
        series_description=str(values.get("SeriesDescription", "") or ""),
        protocol_name=str(values.get("ProtocolName", "") or ""),
        patient_key=pseudonyms.patient_key(
            str(values.get("IssuerOfPatientID", "") or ""),
            str(values.get("PatientID", "") or ""),
        ),
        images_in_acquisition=_optional_int(values, "ImagesInAcquisition"),
        number_of_frames=_optional_int(values, "NumberOfFrames"),
        acquisition_number=_optional_int(values, "AcquisitionNumber"),
        frame_of_reference_uid=str(frame_of_reference) if frame_of_reference else None,
        calling_ae=calling_ae.strip(),
        path=Path(path),
        size_bytes=int(size_bytes),
        received_at=float(received_at),
        is_own_result=own_markers.matches_header(values),
    )


def _optional_int(values: HeaderValues, keyword: str) -> int | None:
    try:
        value = values.get(keyword)
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


def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    try:
        return list(value)  # type: ignore[call-overload]
    except TypeError:
        return [value]


def _norm(value: object) -> str:
    return "" if value is None else str(value).strip().casefold()
