"""Small synthetic MR datasets for tests (legacy single-frame and Enhanced MR multi-frame).

Geometry is given as an ``affine_lps`` in the project convention (docs/CONVENTIONS.md): the
factory derives ImagePositionPatient, ImageOrientationPatient and PixelSpacing from it, so a
test can compare what a loader reconstructs with the affine it started from. No real patient
data: names and IDs are invented.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

__all__ = [
    "ENHANCED_MR_STORAGE",
    "affine_from_geometry",
    "make_enhanced_mr",
    "make_legacy_series",
    "write_datasets",
]

ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"


def affine_from_geometry(
    origin_mm: Sequence[float],
    row_cos: Sequence[float],
    col_cos: Sequence[float],
    voxel_mm: Sequence[float],
) -> np.ndarray:
    """Build an ``affine_lps`` from DICOM-style geometry.

    Parameters
    ----------
    origin_mm : sequence of float
        Position of voxel (0, 0, 0) in LPS mm.
    row_cos, col_cos : sequence of float
        ImageOrientationPatient row and column direction cosines (normalised here).
    voxel_mm : sequence of float
        (slice spacing, row spacing, column spacing) in mm.

    Returns
    -------
    numpy.ndarray
        4x4 affine mapping ``[k, j, i, 1]`` to LPS mm; the slice axis is ``row x col``.
    """
    row = np.asarray(row_cos, dtype=float)
    row = row / np.linalg.norm(row)
    col = np.asarray(col_cos, dtype=float)
    col = col - row * np.dot(col, row)
    col = col / np.linalg.norm(col)
    normal = np.cross(row, col)
    affine = np.eye(4)
    affine[:3, 0] = normal * voxel_mm[0]
    affine[:3, 1] = col * voxel_mm[1]
    affine[:3, 2] = row * voxel_mm[2]
    affine[:3, 3] = origin_mm
    return affine


def _geometry(affine_lps: np.ndarray) -> tuple[list[float], list[float], np.ndarray]:
    col_step = affine_lps[:3, 1]
    row_step = affine_lps[:3, 2]
    spacing = [float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))]
    iop = [*(row_step / spacing[1]), *(col_step / spacing[0])]
    return [round(float(v), 10) for v in iop], spacing, affine_lps[:3, 0]


def _base_dataset(
    sop_class_uid: str,
    *,
    study_uid: str,
    series_uid: str,
    frame_of_reference_uid: str,
    series_number: int,
    patient_name: str,
    specific_character_set: str | None,
    empty_type2: bool,
    image_type: Sequence[str],
    series_description: str,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    if specific_character_set:
        ds.SpecificCharacterSet = specific_character_set
    ds.SOPClassUID = sop_class_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Modality = "MR"
    ds.PatientName = patient_name
    ds.PatientID = "PHANTOM-001"
    ds.StudyID = "1"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.ImageType = list(image_type)
    ds.Manufacturer = "TestVendor"
    ds.BodyPartExamined = "CSPINE"
    if empty_type2:
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
    else:
        ds.PatientBirthDate = "19800101"
        ds.PatientSex = "O"
        ds.AccessionNumber = "ACC1"
        ds.ReferringPhysicianName = "Referrer^Test"
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D"
    ds.EchoTime = 2.3
    ds.RepetitionTime = 6.5
    ds.EchoTrainLength = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    return ds


def make_legacy_series(
    stored: np.ndarray,
    affine_lps: np.ndarray,
    *,
    rescale: tuple[float, float] | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 1,
    patient_name: str = "Phantom^Test",
    specific_character_set: str | None = None,
    empty_type2: bool = False,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "M", "UNI", "ND"),
    series_description: str = "mp2rage_UNI_Images",
) -> list[Dataset]:
    """One MR Image Storage instance per slice of ``stored`` (uint16, [k, j, i]).

    ``rescale`` is (slope, intercept); ``None`` writes no Rescale attributes at all.
    InstanceNumber runs against the slice order on purpose (loaders must sort by position).
    """
    if stored.ndim != 3 or stored.dtype != np.uint16:
        raise ValueError("stored must be a 3-D uint16 array [k, j, i]")
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    iop, spacing, slice_step = _geometry(affine_lps)
    slice_mm = float(np.linalg.norm(slice_step))
    n_slices = stored.shape[0]
    datasets = []
    for k in range(n_slices):
        ds = _base_dataset(
            MRImageStorage,
            study_uid=study_uid,
            series_uid=series_uid,
            frame_of_reference_uid=frame_of_reference_uid,
            series_number=series_number,
            patient_name=patient_name,
            specific_character_set=specific_character_set,
            empty_type2=empty_type2,
            image_type=image_type,
            series_description=series_description,
        )
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = n_slices - k
        ds.ImagePositionPatient = [round(float(v), 6) for v in affine_lps @ [k, 0, 0, 1]][:3]
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = [round(v, 6) for v in spacing]
        ds.SliceThickness = round(slice_mm, 6)
        ds.SpacingBetweenSlices = round(slice_mm, 6)
        ds.Rows, ds.Columns = stored.shape[1:]
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
            ds.RescaleType = "US"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        datasets.append(ds)
    return datasets


def make_enhanced_mr(
    stored: np.ndarray,
    affine_lps: np.ndarray,
    *,
    rescale: tuple[float, float] | Sequence[tuple[float, float]] | None = None,
    frame_order: Sequence[int] | None = None,
    shared_geometry: bool = True,
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 1,
    patient_name: str = "Phantom^Test",
    specific_character_set: str | None = None,
    empty_type2: bool = False,
) -> Dataset:
    """One Enhanced MR Image Storage instance holding every slice of ``stored`` as a frame.

    Parameters
    ----------
    rescale : (slope, intercept), list of them (one per slice), or None
        One pair goes to the shared functional groups, a list to the per-frame groups.
    frame_order : sequence of int, optional
        ``frame_order[f]`` is the slice index stored in frame ``f + 1`` (default: identity).
    shared_geometry : bool
        Put PixelMeasures and PlaneOrientation in the shared (True) or per-frame groups.
    """
    if stored.ndim != 3 or stored.dtype != np.uint16:
        raise ValueError("stored must be a 3-D uint16 array [k, j, i]")
    n_slices = stored.shape[0]
    order = list(range(n_slices)) if frame_order is None else list(frame_order)
    iop, spacing, slice_step = _geometry(affine_lps)
    slice_mm = float(np.linalg.norm(slice_step))
    ds = _base_dataset(
        ENHANCED_MR_STORAGE,
        study_uid=study_uid or generate_uid(),
        series_uid=series_uid or generate_uid(),
        frame_of_reference_uid=frame_of_reference_uid or generate_uid(),
        series_number=series_number,
        patient_name=patient_name,
        specific_character_set=specific_character_set,
        empty_type2=empty_type2,
        image_type=("ORIGINAL", "PRIMARY", "UNI", "NONE"),
        series_description="mp2rage_UNI_Images",
    )
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 1
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.NumberOfFrames = n_slices
    ds.Rows, ds.Columns = stored.shape[1:]

    measures = Dataset()
    measures.PixelSpacing = [round(v, 6) for v in spacing]
    measures.SliceThickness = round(slice_mm, 6)
    measures.SpacingBetweenSlices = round(slice_mm, 6)
    orientation = Dataset()
    orientation.ImageOrientationPatient = iop

    shared = Dataset()
    if shared_geometry:
        shared.PixelMeasuresSequence = [measures]
        shared.PlaneOrientationSequence = [orientation]
    per_frame_rescale = rescale is not None and isinstance(rescale[0], Sequence)
    if rescale is not None and not per_frame_rescale:
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = rescale
        transform.RescaleType = "US"
        shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]

    per_frame = []
    for k in order:
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [round(float(v), 6) for v in affine_lps @ [k, 0, 0, 1]][:3]
        item.PlanePositionSequence = [position]
        if not shared_geometry:
            item.PixelMeasuresSequence = [measures]
            item.PlaneOrientationSequence = [orientation]
        if per_frame_rescale:
            transform = Dataset()
            transform.RescaleSlope, transform.RescaleIntercept = rescale[k]
            transform.RescaleType = "US"
            item.PixelValueTransformationSequence = [transform]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = np.ascontiguousarray(stored[order]).tobytes()
    return ds


def write_datasets(datasets: Sequence[Dataset], directory: Path, seed: int = 0) -> list[Path]:
    """Write ``datasets`` under random file names; return the paths in a shuffled order."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for ds in datasets:
        path = directory / f"{rng.integers(1 << 62):x}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return [paths[i] for i in rng.permutation(len(paths))]
