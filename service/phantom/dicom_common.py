"""Header content shared by the phantom's legacy and enhanced MR writers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from processing.phantom.geometry import SlabGeometry
from service.phantom.identity import SubjectIdentity
from service.phantom.protocols import ProtocolPreset

__all__ = [
    "TRANSFER_SYNTAX_UIDS",
    "ExamContext",
    "GRETiming",
    "SeriesSpec",
    "common_dataset",
    "save",
]

TRANSFER_SYNTAX_UIDS: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "j2k": JPEG2000Lossless,
    "rle": RLELossless,
    "jpegls": JPEGLSLossless,
}

IMPLEMENTATION_VERSION = "CORDT1_PHANTOM"


@dataclass(frozen=True)
class ExamContext:
    """Patient, study and acquisition context of one exam."""

    seed: int
    identity: SubjectIdentity
    exam_key: str
    study_uid: str
    frame_of_reference_uid: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    preset: ProtocolPreset
    transfer_syntax: str


@dataclass(frozen=True)
class GRETiming:
    """Acquisition of a multi-echo spoiled 2D gradient echo series (T2*-weighted).

    Parameters
    ----------
    echo_times_ms : tuple of float
        Echo times acquired (ms).
    repetition_time_ms : float
    flip_angle_deg : float
    combined : bool
        The pixels hold one root-sum-of-squares image over the echoes (like Siemens MEDIC)
        instead of one image per echo.
    sequence_name : str
        Siemens-like SequenceName.
    """

    echo_times_ms: tuple[float, ...]
    repetition_time_ms: float
    flip_angle_deg: float
    combined: bool = False
    sequence_name: str = "*fl2d4r"

    @property
    def n_images(self) -> int:
        """Images per slice: one per echo, or one when combined."""
        return 1 if self.combined else len(self.echo_times_ms)

    @property
    def effective_echo_time_ms(self) -> float:
        """EchoTime written on a combined image: the mean of the echo times."""
        return float(np.mean(self.echo_times_ms))

    def image_echo_times_ms(self) -> tuple[float, ...]:
        """EchoTime of each image of a slice."""
        if self.combined:
            return (self.effective_echo_time_ms,)
        return tuple(float(te) for te in self.echo_times_ms)


@dataclass(frozen=True)
class SeriesSpec:
    """One series of one slab.

    Parameters
    ----------
    component : str
        ``INV1``, ``INV2``, ``UNI``, ``T1MAP``, ``B1MAP`` or ``T2STAR`` (folder name part).
    slab : int
        1-based slab number; 0 for a series covering the whole exam (coarse B1 map).
    series_number : int
    series_uid : str
    description : str
        SeriesDescription.
    image_type : tuple of str
        ImageType of the legacy instances.
    pixels : ndarray of uint16, shape (n_slices, rows, cols)
        or ``(n_echoes, n_slices, rows, cols)`` for a multi-echo GRE (``gre`` not combined).
    geometry : SlabGeometry
    bits_stored : int
    window : tuple of float
        Window centre and width.
    inversion_time_ms : float or None
        InversionTime (only the inversion images carry one).
    flip_angle_deg : float
    gre : GRETiming, optional
        Set for a multi-echo GRE series (GR headers, per-echo EchoTime, no inversion).
    """

    component: str
    slab: int
    series_number: int
    series_uid: str
    description: str
    image_type: tuple[str, ...]
    pixels: NDArray[np.uint16]
    geometry: SlabGeometry
    bits_stored: int
    window: tuple[float, float]
    inversion_time_ms: float | None
    flip_angle_deg: float
    gre: GRETiming | None = None

    def __post_init__(self) -> None:
        expected = 4 if self.gre is not None and not self.gre.combined else 3
        if self.pixels.ndim != expected:
            raise ValueError(f"{self.component} pixels must be {expected}-D")
        if self.gre is not None and self.image_stack.shape[0] != self.gre.n_images:
            raise ValueError("one pixel volume per echo is needed")

    @property
    def folder(self) -> str:
        """Folder name, e.g. ``004_INV1_slab1`` (``012_B1MAP`` for a whole-exam series)."""
        if self.slab == 0:
            return f"{self.series_number:03d}_{self.component}"
        return f"{self.series_number:03d}_{self.component}_slab{self.slab}"

    @property
    def image_stack(self) -> NDArray[np.uint16]:
        """Pixels as ``(n_images_per_slice, n_slices, rows, cols)`` (one image per slice: 1)."""
        return self.pixels if self.pixels.ndim == 4 else self.pixels[None]

    @property
    def location(self) -> str:
        """``slab <k>`` or ``exam`` (for ImageComments)."""
        return f"slab {self.slab}" if self.slab else "exam"

    @property
    def has_inversion(self) -> bool:
        """True for the inversion images (the only ones with an InversionTime)."""
        return self.inversion_time_ms is not None


def _ds(value: float) -> str:
    """Decimal String of at most 16 characters."""
    text = f"{value:.6g}"
    return "0" if text in ("-0", "0") else text


def common_dataset(exam: ExamContext, series: SeriesSpec) -> Dataset:
    """Patient, study, series, frame of reference and equipment attributes."""
    ident = exam.identity
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.InstanceCreationDate = exam.study_date
    ds.InstanceCreationTime = exam.study_time
    ds.StudyDate = exam.study_date
    ds.SeriesDate = exam.study_date
    ds.AcquisitionDate = exam.study_date
    ds.ContentDate = exam.study_date
    ds.StudyTime = exam.study_time
    ds.SeriesTime = exam.study_time
    ds.AcquisitionTime = exam.study_time
    ds.ContentTime = exam.study_time
    ds.AccessionNumber = exam.accession_number
    ds.Modality = "MR"
    ds.Manufacturer = "SIEMENS"
    ds.InstitutionName = "Phantom Hospital"
    ds.ReferringPhysicianName = ""
    ds.StationName = "AWP00000"
    ds.StudyDescription = "Cervical spine^7T MP2RAGE"
    ds.SeriesDescription = series.description
    ds.ManufacturerModelName = "MAGNETOM Terra"
    ds.PatientName = ident.patient_name
    ds.PatientID = ident.patient_id
    ds.PatientBirthDate = ident.birth_date
    ds.PatientSex = ident.sex
    ds.BodyPartExamined = "CSPINE"
    ds.DeviceSerialNumber = "79999"
    ds.SoftwareVersions = "syngo MR E12"
    # a GRE is its own scanner protocol; only the MP2RAGE series carry the preset's name
    ds.ProtocolName = series.description if series.gre is not None else exam.preset.protocol_name
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = exam.study_uid
    ds.SeriesInstanceUID = series.series_uid
    ds.StudyID = exam.study_id
    ds.SeriesNumber = series.series_number
    ds.FrameOfReferenceUID = exam.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = series.bits_stored
    ds.HighBit = series.bits_stored - 1
    ds.PixelRepresentation = 0
    return ds


def decimal(value: float) -> str:
    """Public alias of the DS formatter."""
    return _ds(value)


def save(ds: Dataset, sop_class_uid: str, pixels: NDArray[np.uint16], path: Path, ts: str) -> None:
    """Attach pixels in the requested transfer syntax and write a DICOM Part 10 file.

    Parameters
    ----------
    ds : Dataset
        Complete header (SOPInstanceUID set).
    sop_class_uid : str
    pixels : ndarray of uint16
        ``(rows, cols)`` or ``(frames, rows, cols)``.
    path : Path
    ts : str
        Key of :data:`TRANSFER_SYNTAX_UIDS`.
    """
    uid = TRANSFER_SYNTAX_UIDS[ts]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID = sop_class_uid
    arr = np.ascontiguousarray(pixels, dtype=np.uint16)
    if uid.is_compressed:
        ds.compress(uid, arr, encoding_plugin="pylibjpeg" if ts == "j2k" else "")
    else:
        ds.PixelData = arr.tobytes()
        meta.TransferSyntaxUID = uid
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
