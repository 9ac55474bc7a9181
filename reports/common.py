"""Helpers shared by the DICOM result writers (Parametric Map, Segmentation).

The writers never modify the caller's source datasets: they work on header-only copies
(:func:`header_copy`) in which geometry may be normalised for highdicom and missing Type 2
patient/study attributes are present but empty (:func:`prepare_sources`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

__all__ = [
    "DEFAULT_BODY_PART",
    "TYPE2_PATIENT_STUDY",
    "body_part_examined",
    "header_copy",
    "instance_header",
    "is_multiframe",
    "prepare_sources",
    "replace",
]

#: BodyPartExamined written when the sources have none (without it dciodvfy reports
#: Laterality missing in the General Series module).
DEFAULT_BODY_PART = "CSPINE"

_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # (Float/DoubleFloat) PixelData
TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_ORIENTATION_TOL = 1e-4


def header_copy(ds: Dataset) -> Dataset:
    """A dataset sharing every element of ``ds`` except pixel data (cheap, no decoding)."""
    copy = Dataset({tag: elem for tag, elem in ds.items() if tag not in _PIXEL_TAGS})
    if hasattr(ds, "file_meta"):
        copy.file_meta = ds.file_meta
    return copy


def instance_header(
    source: Dataset, *, sop_class_uid: str, series_instance_uid: str, sop_instance_uid: str
) -> Dataset:
    """The identity of a result object that is still being written, in ``source``'s study.

    What a report needs to list the object as evidence before the object itself exists
    (results of one exam are written in parallel, their UIDs chosen beforehand).

    Examples
    --------
    >>> src = Dataset()
    >>> src.StudyInstanceUID = "1.2.3"
    >>> head = instance_header(src, sop_class_uid="1.2.840.10008.5.1.4.1.1.30",
    ...                        series_instance_uid="1.2.3.4", sop_instance_uid="1.2.3.4.5")
    >>> head.StudyInstanceUID, head.SOPInstanceUID
    ('1.2.3', '1.2.3.4.5')
    """
    for name, uid in (
        ("sop_class_uid", sop_class_uid),
        ("series_instance_uid", series_instance_uid),
        ("sop_instance_uid", sop_instance_uid),
    ):
        if not isinstance(uid, str) or not uid:
            raise ValueError(f"{name} must be a non-empty UID string, got {uid!r}")
    if not source.get("StudyInstanceUID"):
        raise ValueError("the source has no StudyInstanceUID")
    head = Dataset()
    head.SOPClassUID = sop_class_uid
    head.StudyInstanceUID = source.StudyInstanceUID
    head.SeriesInstanceUID = series_instance_uid
    head.SOPInstanceUID = sop_instance_uid
    return head


def replace(ds: Dataset, keyword: str, value: object) -> None:
    """Set ``keyword`` on a header copy without touching the element it shares with the source.

    Assigning to an existing keyword would change the shared DataElement in place, i.e. the
    caller's dataset; deleting it first makes the copy get a new element.
    """
    if keyword in ds:
        delattr(ds, keyword)
    setattr(ds, keyword, value)


def is_multiframe(ds: Dataset) -> bool:
    """Whether ``ds`` is a multi-frame image (functional groups or NumberOfFrames > 1)."""
    return "PerFrameFunctionalGroupsSequence" in ds or int(ds.get("NumberOfFrames", 1) or 1) > 1


def body_part_examined(source: Dataset) -> str:
    """BodyPartExamined of ``source``, or :data:`DEFAULT_BODY_PART` when absent or empty."""
    return str(source.get("BodyPartExamined") or "") or DEFAULT_BODY_PART


def _require(ds: Dataset, keyword: str) -> None:
    if not ds.get(keyword):
        raise ValueError(f"source image {ds.get('SOPInstanceUID', '?')} has no {keyword}")


def _frame_item(frame: Dataset, shared: Dataset, keyword: str) -> Dataset | None:
    for group in (frame, shared):
        sequence = group.get(keyword)
        if sequence:
            return sequence[0]
    return None


def _share_multiframe_geometry(src: Dataset, what: str) -> None:
    """Make pixel measures and orientation shared (highdicom reads them from there)."""
    shared = Dataset(dict(src.SharedFunctionalGroupsSequence[0].items()))
    frames = src.PerFrameFunctionalGroupsSequence
    for keyword in ("PixelMeasuresSequence", "PlaneOrientationSequence"):
        if shared.get(keyword):
            continue
        items = [_frame_item(frame, shared, keyword) for frame in frames]
        if any(item is None for item in items):
            raise ValueError(f"multi-frame source {src.SOPInstanceUID} lacks {keyword}")
        if keyword == "PlaneOrientationSequence":
            cosines = np.array([[float(v) for v in i.ImageOrientationPatient] for i in items])
            if np.max(np.abs(cosines - cosines[0])) > _ORIENTATION_TOL:
                raise ValueError(
                    f"multi-frame source {src.SOPInstanceUID} has frames of different "
                    f"orientation; one {what} per orientation is needed"
                )
        else:
            spacing = np.array([[float(v) for v in i.PixelSpacing] for i in items])
            if not np.allclose(spacing, spacing[0], rtol=1e-4, atol=0):
                raise ValueError(
                    f"multi-frame source {src.SOPInstanceUID} has frames of different "
                    "pixel spacing"
                )
        setattr(shared, keyword, [items[0]])
    replace(src, "SharedFunctionalGroupsSequence", [shared])


def prepare_sources(
    source_images: Sequence[Dataset], *, what: str = "map"
) -> tuple[list[Dataset], int, int, int]:
    """Validate the sources of one result object; return header copies ready for highdicom.

    Parameters
    ----------
    source_images : sequence of pydicom.dataset.Dataset
        Single-frame images of one series, or exactly one multi-frame image.
    what : str
        Name of the result object in error messages (``"map"``, ``"segmentation"``).

    Returns
    -------
    tuple
        (header copies, number of source planes, rows, columns).

    Raises
    ------
    TypeError
        If ``source_images`` is not a sequence of datasets.
    ValueError
        For no sources, sources from several series, several multi-frame sources, or
        sources without the geometry a result object needs.
    """
    if isinstance(source_images, Dataset) or not isinstance(source_images, Sequence):
        raise TypeError("source_images must be a sequence of pydicom Datasets")
    if len(source_images) == 0:
        raise ValueError("at least one source image is required")
    for ds in source_images:
        if not isinstance(ds, Dataset):
            raise TypeError(f"source_images holds a {type(ds).__name__}, not a pydicom Dataset")
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        for ds in source_images:
            _require(ds, keyword)
    series = {str(ds.SeriesInstanceUID) for ds in source_images}
    if len(series) > 1:
        raise ValueError(
            f"source images come from {len(series)} series; build one {what} per source series"
        )
    sources = [header_copy(ds) for ds in source_images]
    first = sources[0]
    rows, columns = int(first.get("Rows", 0)), int(first.get("Columns", 0))
    if any(is_multiframe(ds) for ds in sources):
        if len(sources) != 1:
            raise ValueError("give exactly one multi-frame source image (or single-frame ones)")
        _share_multiframe_geometry(first, what)
        n_frames = int(first.NumberOfFrames)
    else:
        for ds in sources:
            for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
                _require(ds, keyword)
            if (int(ds.Rows), int(ds.Columns)) != (rows, columns):
                raise ValueError("source images differ in Rows/Columns")
            cosines = np.array([float(v) for v in ds.ImageOrientationPatient])
            reference = np.array([float(v) for v in first.ImageOrientationPatient])
            if np.max(np.abs(cosines - reference)) > _ORIENTATION_TOL:
                raise ValueError("source images differ in ImageOrientationPatient")
            replace(ds, "ImageOrientationPatient", list(first.ImageOrientationPatient))
        if first.get("SliceThickness") in (None, ""):
            spacing = first.get("SpacingBetweenSlices")
            if spacing in (None, ""):
                raise ValueError(
                    "source images have neither SliceThickness nor SpacingBetweenSlices"
                )
            replace(first, "SliceThickness", spacing)
        n_frames = len(sources)
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in first:
            setattr(first, keyword, "")
    return sources, n_frames, rows, columns
