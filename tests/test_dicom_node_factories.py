"""Shared builders for the dicom_node tests (no tests here).

Datasets imitate Siemens MP2RAGE headers; pixel data is a tiny gradient.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from dicom_node.components import Component
from dicom_node.instance import InstanceInfo

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"

SIEMENS_IMAGE_TYPES: dict[str, list[str]] = {
    "INV1": ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"],
    "INV2": ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"],
    "UNI": ["DERIVED", "PRIMARY", "M", "ND", "UNI"],
    "T1MAP": ["DERIVED", "PRIMARY", "T1 MAP", "ND", "UNI"],
}
SIEMENS_DESCRIPTIONS: dict[str, str] = {
    "INV1": "mp2rage_cord_0.3_INV1",
    "INV2": "mp2rage_cord_0.3_INV2",
    "UNI": "mp2rage_cord_0.3_UNI_Images",
    "T1MAP": "mp2rage_cord_0.3_T1_Images",
}


def make_mr(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    component: str = "UNI",
    instance_number: int = 1,
    images_in_acquisition: int | None = 3,
    rows: int = 16,
    cols: int = 16,
    manufacturer: str = "SIEMENS",
    patient_id: str = "PAT-0001",
) -> Dataset:
    """Return a single-frame MR instance with Siemens-like MP2RAGE header fields."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = "1.2.3.4.5"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = "HOSP"
    ds.Modality = "MR"
    ds.Manufacturer = manufacturer
    ds.ImageType = SIEMENS_IMAGE_TYPES.get(component, ["ORIGINAL", "PRIMARY", "M", "ND"])
    ds.SeriesDescription = SIEMENS_DESCRIPTIONS.get(component, component)
    ds.ProtocolName = "mp2rage_cord_0.3"
    ds.SeriesNumber = 5
    ds.InstanceNumber = instance_number
    ds.AcquisitionNumber = 1
    if images_in_acquisition is not None:
        ds.ImagesInAcquisition = images_in_acquisition
    ds.Rows = rows
    ds.Columns = cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.3, 0.3]
    ds.SliceThickness = 4.0
    pixels = (
        np.arange(rows * cols, dtype=np.uint16).reshape(rows, cols) * 7 + instance_number
    ) % 4096
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def make_info(
    *,
    study_uid: str = "1.2.3",
    series_uid: str = "1.2.3.1",
    component: Component = Component.UNI,
    sop_uid: str | None = None,
    images_in_acquisition: int | None = None,
    number_of_frames: int | None = None,
    acquisition_number: int | None = 1,
    is_own_result: bool = False,
) -> InstanceInfo:
    """Return an InstanceInfo without touching disk (for tracker tests)."""
    return InstanceInfo(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_instance_uid=sop_uid or generate_uid(),
        sop_class_uid=MR_IMAGE_STORAGE if number_of_frames is None else ENHANCED_MR_STORAGE,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        component=component,
        modality="MR",
        series_number=1,
        series_description="",
        protocol_name="",
        patient_key="0123456789abcdef",
        images_in_acquisition=images_in_acquisition,
        number_of_frames=number_of_frames,
        acquisition_number=acquisition_number,
        frame_of_reference_uid=None,
        calling_ae="SCANNER",
        path=Path("/nonexistent.dcm"),
        size_bytes=0,
        received_at=0.0,
        is_own_result=is_own_result,
    )


def free_port() -> int:
    """Return a TCP port that was free a moment ago (for external programs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
