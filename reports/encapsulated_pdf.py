"""Encapsulated PDF Storage of the one-page report, in a new series of the source study.

Choices (all visible in the written object):

- SOP class Encapsulated PDF Storage, Modality ``DOC``, Explicit VR Little Endian;
- MIMETypeOfEncapsulatedDocument ``application/pdf``, DocumentTitle from the caller,
  ConceptNameCodeSequence LOINC 18748-4 "Diagnostic imaging report" (override with
  ``concept_name``), BurnedInAnnotation ``YES`` (names and numbers are in the document),
  ConversionType ``WSD``;
- the PDF bytes are padded to even length with one NUL byte as Part 5 requires;
  EncapsulatedDocumentLength holds the unpadded length so readers can strip it;
- SourceInstanceSequence names every source instance (required when derived from them);
- patient/study attributes copied as in :mod:`reports.secondary_capture` (Type 2 gaps empty,
  SpecificCharacterSet kept); identity and research text via
  :func:`reports.identity.apply_identity` (SeriesDescription suffix).
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian

from reports.identity import ResultIdentity, apply_identity
from reports.secondary_capture import copy_patient_study, source_header, source_references

__all__ = ["REPORT_CONCEPT", "SERIES_DESCRIPTION", "build_encapsulated_pdf"]

REPORT_CONCEPT = Code("18748-4", "LN", "Diagnostic imaging report")
SERIES_DESCRIPTION = "cordt1 report (PDF)"
_PDF_MAGIC = b"%PDF-"
_LO_MAX = 64


def build_encapsulated_pdf(
    pdf: bytes,
    source_images: Sequence[Dataset],
    *,
    document_title: str,
    series_number: int,
    identity: ResultIdentity,
    concept_name: Code = REPORT_CONCEPT,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> hd.base.SOPClass:
    """Wrap a PDF document into an Encapsulated PDF instance of the source study.

    Parameters
    ----------
    pdf : bytes
        The PDF document (must start with ``%PDF-``).
    source_images : sequence of pydicom.dataset.Dataset
        Source instances of the exam (one study); headers are enough, nothing is modified.
    document_title : str
        DocumentTitle (ST), shown in PACS document lists.
    series_number : int
        SeriesNumber of the new series (positive).
    identity : ResultIdentity
        Manufacturer, software name/version and research-use text.
    concept_name : pydicom.sr.coding.Code
        ConceptNameCodeSequence item (what kind of document this is).
    series_instance_uid, sop_instance_uid : str, optional
        Generated when omitted.

    Returns
    -------
    highdicom.base.SOPClass
        A pydicom Dataset ready for ``save_as``.

    Raises
    ------
    TypeError
        For ``pdf`` that is not bytes, a wrong identity or concept name type.
    ValueError
        For bytes that are not a PDF, an empty or overlong title, a bad series number, or
        sources without UIDs or from several studies.
    """
    if not isinstance(pdf, bytes | bytearray):
        raise TypeError(f"pdf must be bytes, got {type(pdf).__name__}")
    if not bytes(pdf[:5]) == _PDF_MAGIC:
        raise ValueError("pdf does not start with '%PDF-': not a PDF document")
    if not isinstance(identity, ResultIdentity):
        raise TypeError(f"identity must be a ResultIdentity, got {type(identity).__name__}")
    if not isinstance(concept_name, Code):
        raise TypeError(f"concept_name must be a pydicom Code, got {type(concept_name).__name__}")
    if not isinstance(document_title, str) or not document_title.strip():
        raise ValueError("document_title must be a non-empty str")
    if len(document_title) > 1024 or "\\" in document_title:
        raise ValueError("document_title must be at most 1024 characters without backslash")
    if isinstance(series_number, bool) or not isinstance(series_number, int) or series_number < 1:
        raise ValueError(f"series_number must be a positive int, got {series_number!r}")
    source = source_header(source_images)

    doc = hd.base.SOPClass(
        study_instance_uid=str(source.StudyInstanceUID),
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        sop_class_uid=EncapsulatedPDFStorage,
        instance_number=1,
        modality="DOC",
        manufacturer=identity.manufacturer,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    copy_patient_study(doc, source)
    doc.ConversionType = "WSD"
    doc.SeriesDescription = SERIES_DESCRIPTION
    doc.AcquisitionDateTime = ""
    doc.BurnedInAnnotation = "YES"
    doc.RecognizableVisualFeatures = "NO"
    doc.DocumentTitle = document_title.strip()
    doc.ConceptNameCodeSequence = [hd.sr.CodedConcept(*concept_name)]
    doc.SourceInstanceSequence = source_references(source_images)
    doc.MIMETypeOfEncapsulatedDocument = "application/pdf"
    data = bytes(pdf)
    doc.EncapsulatedDocumentLength = len(data)
    doc.EncapsulatedDocument = data + b"\x00" * (len(data) % 2)
    apply_identity(doc, identity)
    return doc
