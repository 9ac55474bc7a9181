"""Secondary Capture images of the rendered report figures (one RGB instance per figure).

The figures (:mod:`reports.figures`) go to the PACS as a new series of the source study, so a
radiologist sees them next to the images in any viewer:

- SOP class Secondary Capture Image Storage, RGB 8 bit, Explicit VR Little Endian;
- ConversionType ``WSD`` (workstation), ImageType ``DERIVED\\SECONDARY\\OTHER``,
  BurnedInAnnotation ``YES`` (the text is in the pixels), no recognisable visual features;
- patient and study attributes copied verbatim from the source header (Type 2 attributes the
  source lacks are written empty; SpecificCharacterSet is copied so non-ASCII names survive);
- SourceImageSequence names every source instance, DerivationDescription and ImageComments
  say what the figure shows and carry the research-use text;
- PatientOrientation: the rows/columns directions of the slice panels for the Z overlay
  (letters from the figure), empty for charts (it is Type 2C);
- identity (manufacturer, software name and version, research text) via
  :func:`reports.identity.apply_identity`.

:func:`source_header` and :func:`source_references` are shared with
:mod:`reports.encapsulated_pdf`.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from reports.common import TYPE2_PATIENT_STUDY, body_part_examined
from reports.figures import RenderedFigure
from reports.identity import ResultIdentity, apply_identity

__all__ = [
    "SERIES_DESCRIPTION",
    "build_secondary_captures",
    "copy_patient_study",
    "source_header",
    "source_references",
]

SERIES_DESCRIPTION = "cordt1 report figures"
_BIPED = {"L": "L", "R": "R", "A": "A", "P": "P", "S": "H", "I": "F"}


def source_header(source_images: Sequence[Dataset]) -> Dataset:
    """Validate the source images of a result; return the first one (the patient/study source).

    Parameters
    ----------
    source_images : sequence of pydicom.dataset.Dataset
        Instances of one study (any number of series; headers are enough).

    Returns
    -------
    pydicom.dataset.Dataset
        The first source (not a copy: callers only read from it).

    Raises
    ------
    TypeError
        If ``source_images`` is not a sequence of datasets.
    ValueError
        If it is empty, lacks SOP/study UIDs, or mixes studies.
    """
    if isinstance(source_images, Dataset) or not isinstance(source_images, Sequence):
        raise TypeError("source_images must be a sequence of pydicom Datasets")
    if len(source_images) == 0:
        raise ValueError("at least one source image is required")
    for ds in source_images:
        if not isinstance(ds, Dataset):
            raise TypeError(f"source_images holds a {type(ds).__name__}, not a pydicom Dataset")
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"):
            if not ds.get(keyword):
                raise ValueError(f"source image {ds.get('SOPInstanceUID', '?')} has no {keyword}")
    studies = {str(ds.StudyInstanceUID) for ds in source_images}
    if len(studies) > 1:
        raise ValueError(f"source images come from {len(studies)} studies; expected one")
    return source_images[0]


def copy_patient_study(result: Dataset, source: Dataset) -> None:
    """Copy patient/study attributes verbatim; write Type 2 ones the source lacks as empty.

    SpecificCharacterSet is copied with them so that non-ASCII names decode as in the source.
    """
    if "SpecificCharacterSet" in source:
        result.SpecificCharacterSet = source.SpecificCharacterSet
    for keyword in TYPE2_PATIENT_STUDY:
        value = source.get(keyword)
        setattr(result, keyword, "" if value is None else value)
    result.StudyInstanceUID = source.StudyInstanceUID


def source_references(source_images: Sequence[Dataset]) -> list[Dataset]:
    """Items (ReferencedSOPClassUID, ReferencedSOPInstanceUID) naming every source instance."""
    items = []
    seen: set[str] = set()
    for ds in source_images:
        if str(ds.SOPInstanceUID) in seen:
            continue
        seen.add(str(ds.SOPInstanceUID))
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        items.append(item)
    return items


def _check_number(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _orientation(figure: RenderedFigure) -> tuple[str, str] | None:
    letters = figure.data.get("letters")
    if not isinstance(letters, dict):
        return None
    row, column = _BIPED.get(letters.get("right", "")), _BIPED.get(letters.get("bottom", ""))
    return (row, column) if row and column else None


def build_secondary_captures(
    figures: Sequence[RenderedFigure],
    source_images: Sequence[Dataset],
    *,
    series_number: int,
    identity: ResultIdentity,
    series_instance_uid: str | None = None,
    sop_instance_uids: Sequence[str] | None = None,
) -> list[hd.sc.SCImage]:
    """One Secondary Capture instance per figure, all in one new series of the source study.

    Parameters
    ----------
    figures : sequence of RenderedFigure
        The rendered figures (RGB uint8), in the order of their InstanceNumber.
    source_images : sequence of pydicom.dataset.Dataset
        Source instances of the exam (one study); headers are enough, nothing is modified.
    series_number : int
        SeriesNumber of the new series (positive).
    identity : ResultIdentity
        Manufacturer, software name/version and research-use text.
    series_instance_uid : str, optional
        Generated when omitted.
    sop_instance_uids : sequence of str, optional
        One per figure; generated when omitted.

    Returns
    -------
    list of highdicom.sc.SCImage
        Ready for ``save_as``.

    Raises
    ------
    TypeError
        For figures that are not RenderedFigure, sources that are not datasets, or an
        identity that is not a ResultIdentity.
    ValueError
        For no figures, a bad series number, a wrong number of SOP Instance UIDs, or
        sources without UIDs or from several studies.
    """
    if isinstance(figures, RenderedFigure) or not isinstance(figures, Sequence):
        raise TypeError("figures must be a sequence of RenderedFigure")
    if not figures:
        raise ValueError("at least one figure is required")
    for figure in figures:
        if not isinstance(figure, RenderedFigure):
            raise TypeError(f"figures holds a {type(figure).__name__}, not a RenderedFigure")
    if not isinstance(identity, ResultIdentity):
        raise TypeError(f"identity must be a ResultIdentity, got {type(identity).__name__}")
    series_number = _check_number("series_number", series_number)
    if sop_instance_uids is not None and len(sop_instance_uids) != len(figures):
        raise ValueError(f"{len(sop_instance_uids)} SOP Instance UIDs for {len(figures)} figures")
    source = source_header(source_images)
    references = source_references(source_images)
    series_uid = series_instance_uid or hd.UID()
    research = identity.research_use_text
    images = []
    for number, figure in enumerate(figures, start=1):
        orientation = _orientation(figure)
        sc = hd.sc.SCImage(
            pixel_array=figure.rgb,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            study_instance_uid=str(source.StudyInstanceUID),
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uids[number - 1] if sop_instance_uids else hd.UID(),
            instance_number=number,
            manufacturer=identity.manufacturer,
            patient_orientation=orientation or ("L", "P"),
            transfer_syntax_uid=ExplicitVRLittleEndian,
        )
        if orientation is None:  # a chart has no patient orientation (Type 2C: empty)
            sc.PatientOrientation = ""
        copy_patient_study(sc, source)
        sc.ConversionType = "WSD"
        sc.BurnedInAnnotation = "YES"
        sc.RecognizableVisualFeatures = "NO"
        sc.BodyPartExamined = body_part_examined(source)
        sc.SeriesDescription = SERIES_DESCRIPTION
        sc.DerivationDescription = figure.title
        sc.ImageComments = f"{figure.title}. {research}".strip() if research else figure.title
        sc.SourceImageSequence = references
        apply_identity(sc, identity)
        images.append(sc)
    return images
