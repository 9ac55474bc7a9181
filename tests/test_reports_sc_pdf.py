"""Secondary Capture figures and Encapsulated PDF report (reports.secondary_capture/_pdf)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import EncapsulatedPDFStorage, SecondaryCaptureImageStorage, generate_uid

from dicom_node.components import Component
from reports.encapsulated_pdf import REPORT_CONCEPT, build_encapsulated_pdf
from reports.figures import RenderedFigure, render_exam_figures, render_pdf_report
from reports.identity import DEFAULT_RESEARCH_USE_TEXT, ResultIdentity
from reports.secondary_capture import build_secondary_captures
from tests.dicom_factory import affine_from_geometry, make_enhanced_mr, make_legacy_series
from tests.test_reports_figures import make_slab, make_summary

IDENTITY = ResultIdentity(software_version="9.8.7")
NON_ASCII_NAME = "Müller^Zoë"
AFFINE = affine_from_geometry([0.0, 0.0, 0.0], [1, 0, 0], [0, 1, 0], [4.0, 0.3, 0.3])


@pytest.fixture(scope="module")
def figures() -> list[RenderedFigure]:
    return render_exam_figures(make_summary(), [make_slab()])


@pytest.fixture(scope="module")
def pdf(figures: list[RenderedFigure]) -> bytes:
    return render_pdf_report(make_summary(), figures)


def legacy_sources(*, empty_type2: bool = False) -> list[Dataset]:
    stored = np.zeros((3, 16, 16), dtype=np.uint16)
    sources = make_legacy_series(
        stored,
        AFFINE,
        patient_name=NON_ASCII_NAME,
        specific_character_set="ISO_IR 192",
        empty_type2=empty_type2,
    )
    if empty_type2:
        for ds in sources:
            for keyword in ("PatientBirthDate", "PatientSex", "BodyPartExamined"):
                delattr(ds, keyword)
    return sources


def round_trip(ds: Dataset) -> Dataset:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return dcmread(BytesIO(buffer.getvalue()))


# ---- Secondary Capture ----------------------------------------------------------------------


def test_secondary_captures_round_trip_with_pixels_and_identity(
    figures: list[RenderedFigure],
) -> None:
    sources = legacy_sources()
    images = build_secondary_captures(figures, sources, series_number=9200, identity=IDENTITY)
    backs = [round_trip(sc) for sc in images]

    assert len(backs) == len(figures) == 3
    for number, (back, figure) in enumerate(zip(backs, figures, strict=True), start=1):
        assert back.SOPClassUID == SecondaryCaptureImageStorage
        assert back.PhotometricInterpretation == "RGB" and back.SamplesPerPixel == 3
        assert back.BitsAllocated == 8
        np.testing.assert_array_equal(back.pixel_array, figure.rgb)
        assert back.InstanceNumber == number
        assert back.ConversionType == "WSD"
        assert back.ImageType[0] == "DERIVED"
        assert back.BurnedInAnnotation == "YES"
        assert back.Manufacturer == "cordt1" and back.SoftwareVersions == "9.8.7"
        assert back.SeriesDescription.endswith(DEFAULT_RESEARCH_USE_TEXT)
        assert DEFAULT_RESEARCH_USE_TEXT in back.ImageComments
        assert back.DerivationDescription == figure.title
        assert back.StudyInstanceUID == sources[0].StudyInstanceUID
        assert back.SeriesNumber == 9200
        referenced = {item.ReferencedSOPInstanceUID for item in back.SourceImageSequence}
        assert referenced == {ds.SOPInstanceUID for ds in sources}
    assert len({back.SeriesInstanceUID for back in backs}) == 1
    assert backs[0].SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert len({back.SOPInstanceUID for back in backs}) == 3


def test_overlay_carries_patient_orientation_and_charts_do_not(
    figures: list[RenderedFigure],
) -> None:
    images = build_secondary_captures(
        figures, legacy_sources(), series_number=9200, identity=IDENTITY
    )
    by_name = {figure.name: round_trip(sc) for figure, sc in zip(figures, images, strict=True)}
    assert list(by_name["z_overlay_slab1"].PatientOrientation) == ["L", "P"]
    assert by_name["abnormal_bars"].PatientOrientation in ("", None)


def test_patient_study_copied_with_non_ascii_name_and_type2_gaps(
    figures: list[RenderedFigure],
) -> None:
    sources = legacy_sources(empty_type2=True)
    back = round_trip(
        build_secondary_captures(figures[:1], sources, series_number=1, identity=IDENTITY)[0]
    )
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert str(back.PatientName) == NON_ASCII_NAME
    assert back.PatientID == sources[0].PatientID
    assert back.PatientBirthDate == "" and back.PatientSex == "" and back.AccessionNumber == ""
    assert back.BodyPartExamined == "CSPINE"
    assert "PatientBirthDate" not in sources[0]  # the caller's datasets are left alone


def test_secondary_capture_validation(figures: list[RenderedFigure]) -> None:
    sources = legacy_sources()
    with pytest.raises(ValueError, match="at least one figure"):
        build_secondary_captures([], sources, series_number=1, identity=IDENTITY)
    with pytest.raises(TypeError, match="RenderedFigure"):
        build_secondary_captures(["x"], sources, series_number=1, identity=IDENTITY)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="2 SOP Instance UIDs for 3 figures"):
        build_secondary_captures(
            figures, sources, series_number=1, identity=IDENTITY, sop_instance_uids=["1.2", "1.3"]
        )
    other_study = legacy_sources()
    with pytest.raises(ValueError, match="2 studies"):
        build_secondary_captures(
            figures, sources + other_study, series_number=1, identity=IDENTITY
        )
    with pytest.raises(ValueError, match="series_number"):
        build_secondary_captures(figures, sources, series_number=0, identity=IDENTITY)
    with pytest.raises(TypeError, match="ResultIdentity"):
        build_secondary_captures(figures, sources, series_number=1, identity="cordt1")  # type: ignore[arg-type]


# ---- Encapsulated PDF -----------------------------------------------------------------------


def test_encapsulated_pdf_round_trip(pdf: bytes) -> None:
    sources = legacy_sources()
    uid = generate_uid()
    doc = build_encapsulated_pdf(
        pdf,
        sources,
        document_title="Spinal cord T1 report",
        series_number=9201,
        identity=IDENTITY,
        sop_instance_uid=uid,
    )
    back = round_trip(doc)

    assert back.SOPClassUID == EncapsulatedPDFStorage
    assert back.SOPInstanceUID == uid
    assert back.Modality == "DOC"
    assert back.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert back.DocumentTitle == "Spinal cord T1 report"
    concept = back.ConceptNameCodeSequence[0]
    assert (concept.CodeValue, concept.CodingSchemeDesignator) == ("18748-4", "LN")
    assert back.BurnedInAnnotation == "YES"
    assert back.EncapsulatedDocumentLength == len(pdf)
    assert bytes(back.EncapsulatedDocument[: back.EncapsulatedDocumentLength]) == pdf
    assert len(back.EncapsulatedDocument) % 2 == 0
    assert back.StudyInstanceUID == sources[0].StudyInstanceUID
    assert str(back.PatientName) == NON_ASCII_NAME
    assert back.SeriesDescription.endswith(DEFAULT_RESEARCH_USE_TEXT)
    assert len(back.SourceInstanceSequence) == len(sources)


def test_encapsulated_pdf_from_enhanced_source_with_own_concept(pdf: bytes) -> None:
    source = make_enhanced_mr(np.zeros((3, 16, 16), dtype=np.uint16), AFFINE, empty_type2=True)
    del source.PatientBirthDate
    concept = Code("11528-7", "LN", "Radiology report")
    back = round_trip(
        build_encapsulated_pdf(
            pdf,
            [source],
            document_title="T1 report",
            series_number=2,
            identity=IDENTITY,
            concept_name=concept,
        )
    )
    assert back.ConceptNameCodeSequence[0].CodeValue == "11528-7"
    assert back.PatientBirthDate == ""
    assert back.SourceInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_encapsulated_pdf_validation(pdf: bytes) -> None:
    sources = legacy_sources()
    options = {"document_title": "T1", "series_number": 1, "identity": IDENTITY}
    with pytest.raises(ValueError, match="not a PDF"):
        build_encapsulated_pdf(b"<html>", sources, **options)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bytes"):
        build_encapsulated_pdf("%PDF-1.4", sources, **options)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="document_title"):
        build_encapsulated_pdf(pdf, sources, **{**options, "document_title": " "})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one source"):
        build_encapsulated_pdf(pdf, [], **options)  # type: ignore[arg-type]
    assert REPORT_CONCEPT.value == "18748-4"


# ---- dciodvfy --------------------------------------------------------------------------------


def dciodvfy_errors(path: Path) -> tuple[str, list[str]]:
    result = subprocess.run(
        ["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    report = result.stdout + result.stderr
    return report, [line for line in report.splitlines() if line.startswith("Error")]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
@pytest.mark.parametrize("source_kind", ["legacy", "legacy-empty-type2", "enhanced"])
def test_dciodvfy_finds_no_errors(
    figures: list[RenderedFigure], pdf: bytes, tmp_path: Path, source_kind: str
) -> None:
    if source_kind == "enhanced":
        sources = [make_enhanced_mr(np.zeros((3, 16, 16), dtype=np.uint16), AFFINE)]
    else:
        sources = legacy_sources(empty_type2=source_kind.endswith("type2"))
    objects = build_secondary_captures(figures, sources, series_number=5, identity=IDENTITY)
    objects.append(
        build_encapsulated_pdf(
            pdf, sources, document_title="T1 report", series_number=6, identity=IDENTITY
        )
    )
    for n, ds in enumerate(objects):
        path = tmp_path / f"object{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        report, errors = dciodvfy_errors(path)
        assert ("EncapsulatedPDF" if n == len(objects) - 1 else "SCImage") in report
        assert errors == [], path.name


# ---- Orthanc -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc_exam(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, list]]:
    """A running Orthanc and the header-only source datasets of a phantom UNI series."""
    from service.inputs.volumes import group_by_series, load_series
    from service.phantom import PhantomOptions, write_cohort
    from service.phantom.pacs import OrthancPacs, orthanc_binary

    if orthanc_binary() is None:
        pytest.skip("Orthanc is not installed")
    folder = tmp_path_factory.mktemp("sc_pdf_orthanc")
    cohort = write_cohort(
        folder / "cohort",
        controls=0,
        patients=1,
        follow_up=False,
        seed=5,
        options=PhantomOptions(matrix=128, slices_per_slab=4, slabs=1),
    )
    exam_dir = folder / "cohort" / json.loads(cohort.read_text())[0]["exams"][0]["exam_dir"]
    series = group_by_series(sorted(exam_dir.rglob("*.dcm")))
    volume = next(
        v
        for v in (load_series(paths) for paths in series.values())
        if v.component is Component.UNI
    )
    pacs = OrthancPacs.start(folder / "orthanc")
    try:
        yield pacs, volume.datasets
    finally:
        pacs.stop()


def _store_and_fetch(pacs: object, objects: list[Dataset]) -> list[Dataset]:
    from dicom_node.scu import Destination, send

    report = send(objects, Destination.parse(pacs.destination), calling_ae="CORDT1")  # type: ignore[attr-defined]
    assert report.n_stored == len(objects)
    return [dcmread(BytesIO(pacs.instance_file(ds.SOPInstanceUID))) for ds in objects]  # type: ignore[attr-defined]


@pytest.mark.slow
def test_orthanc_accepts_the_secondary_captures(
    orthanc_exam: tuple[object, list[Dataset]], figures: list[RenderedFigure]
) -> None:
    pacs, sources = orthanc_exam
    images = build_secondary_captures(figures, sources, series_number=9300, identity=IDENTITY)
    stored = _store_and_fetch(pacs, list(images))
    assert [ds.SOPClassUID for ds in stored] == [SecondaryCaptureImageStorage] * len(images)
    study_uid = str(sources[0].StudyInstanceUID)
    assert {str(sc.SOPInstanceUID) for sc in images} <= pacs.sop_instance_uids(study_uid)  # type: ignore[attr-defined]
    found = pacs.find("Instance", {"SOPClassUID": SecondaryCaptureImageStorage})  # type: ignore[attr-defined]
    assert len(found) == len(images)


@pytest.mark.slow
def test_orthanc_accepts_the_encapsulated_pdf(
    orthanc_exam: tuple[object, list[Dataset]], pdf: bytes
) -> None:
    pacs, sources = orthanc_exam
    doc = build_encapsulated_pdf(
        pdf, sources, document_title="T1 report", series_number=9301, identity=IDENTITY
    )
    (stored,) = _store_and_fetch(pacs, [doc])
    assert stored.SOPClassUID == EncapsulatedPDFStorage
    length = int(stored.EncapsulatedDocumentLength)
    assert bytes(stored.EncapsulatedDocument[:length]) == pdf
    found = pacs.find("Instance", {"SOPClassUID": EncapsulatedPDFStorage})  # type: ignore[attr-defined]
    assert [item["MainDicomTags"]["SOPInstanceUID"] for item in found] == [doc.SOPInstanceUID]
