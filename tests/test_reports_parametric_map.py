"""Parametric Map writer (reports.parametric_map) and result identity (reports.identity)."""

from __future__ import annotations

import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from reports.identity import DEFAULT_RESEARCH_USE_TEXT, ResultIdentity, apply_identity
from reports.parametric_map import MapKind, build_parametric_map
from tests.dicom_factory import affine_from_geometry, make_enhanced_mr, make_legacy_series

SHAPE = (4, 32, 40)  # frames, rows, columns
OBLIQUE = affine_from_geometry(
    origin_mm=[5.0, -30.0, 60.0],
    row_cos=[0.97, 0.2, 0.05],
    col_cos=[-0.15, 0.9, -0.4],
    voxel_mm=[4.0, 0.3, 0.3],
)
IDENTITY = ResultIdentity(software_version="9.8.7")
NON_ASCII_NAME = "Müller^Zoë"


@pytest.fixture
def stored() -> np.ndarray:
    return np.random.default_rng(11).integers(0, 4096, SHAPE, dtype=np.uint16)


@pytest.fixture
def t1_ms() -> np.ndarray:
    values = np.random.default_rng(5).uniform(800.0, 4000.0, SHAPE)
    values[0, :3, :3] = np.nan  # outside the lookup range
    return values


def _round_trip(pm: Dataset) -> Dataset:
    buffer = BytesIO()
    pm.save_as(buffer, enforce_file_format=True)
    return dcmread(BytesIO(buffer.getvalue()))


def _values_by_source_plane(back: Dataset, sources: list[Dataset]) -> np.ndarray:
    """Real-world values of the written map, arranged in the order of the source planes."""
    frames = back.pixel_array.reshape((-1, *SHAPE[1:])).astype(np.float64)
    mapping = back.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    frames = frames * mapping.RealWorldValueSlope + mapping.RealWorldValueIntercept
    sop_index = {ds.SOPInstanceUID: f for f, ds in enumerate(sources)}
    out = np.full(frames.shape, np.inf)
    for frame, item in zip(frames, back.PerFrameFunctionalGroupsSequence, strict=True):
        reference = item.DerivationImageSequence[0].SourceImageSequence[0]
        if len(sources) == 1:
            plane = int(reference.ReferencedFrameNumber) - 1
        else:
            plane = sop_index[reference.ReferencedSOPInstanceUID]
        out[plane] = frame
    return out


def test_legacy_round_trip_gives_back_values_and_units(
    stored: np.ndarray, t1_ms: np.ndarray
) -> None:
    sources = make_legacy_series(stored, OBLIQUE)
    back = _round_trip(
        build_parametric_map(sources, t1_ms, MapKind.T1_MS, series_number=901, identity=IDENTITY)
    )

    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
    assert back.BitsAllocated == 32 and "FloatPixelData" in back
    expected = np.nan_to_num(t1_ms, nan=0.0).astype(np.float32)
    np.testing.assert_array_equal(_values_by_source_plane(back, sources), expected)

    mapping = back.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    unit = mapping.MeasurementUnitsCodeSequence[0]
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("ms", "UCUM")
    quantity = mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0]
    assert (quantity.CodeValue, quantity.CodingSchemeDesignator) == ("113063", "DCM")
    assert mapping.DoubleFloatRealWorldValueFirstValueMapped == 0.0
    assert mapping.DoubleFloatRealWorldValueLastValueMapped == pytest.approx(np.nanmax(t1_ms))
    window = back.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
    assert window.VOILUTFunction == "LINEAR_EXACT"
    assert window.WindowCenterWidthExplanation == "T1 0 to 2500 ms"


def test_enhanced_source_with_shuffled_frames_and_z_scores(stored: np.ndarray) -> None:
    source = make_enhanced_mr(stored, OBLIQUE, frame_order=[2, 0, 3, 1], shared_geometry=False)
    z = np.random.default_rng(2).normal(0.0, 2.0, SHAPE)
    back = _round_trip(
        build_parametric_map([source], z, "Z_SCORE", series_number=902, identity=IDENTITY)
    )

    np.testing.assert_array_equal(_values_by_source_plane(back, [source]), z.astype(np.float32))
    mapping = back.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    quantity = mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0]
    assert (quantity.CodeValue, quantity.CodeMeaning) == ("113071", "Z-score")
    assert back.ContentLabel == "ZSCORE_MAP"
    # each frame sits where its source frame was
    for item in back.PerFrameFunctionalGroupsSequence:
        number = int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        source_position = source.PerFrameFunctionalGroupsSequence[number - 1]
        np.testing.assert_allclose(
            [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in source_position.PlanePositionSequence[0].ImagePositionPatient],
        )


def test_sources_are_not_modified(stored: np.ndarray) -> None:
    source = make_enhanced_mr(stored, OBLIQUE, shared_geometry=False)
    legacy = make_legacy_series(stored, OBLIQUE)
    legacy[1].ImageOrientationPatient = [v + 1e-6 for v in legacy[1].ImageOrientationPatient]
    legacy_orientation = list(legacy[1].ImageOrientationPatient)
    legacy[0].SliceThickness = None
    before = source.SharedFunctionalGroupsSequence[0]

    _build([source], np.zeros(SHAPE))
    _build(legacy, np.zeros(SHAPE))

    assert source.SharedFunctionalGroupsSequence[0] is before
    assert "PixelMeasuresSequence" not in source.SharedFunctionalGroupsSequence[0]
    assert list(legacy[1].ImageOrientationPatient) == legacy_orientation
    assert legacy[0].SliceThickness is None
    assert "PixelData" in source and all("PixelData" in ds for ds in legacy)


def test_references_name_every_source_instance(stored: np.ndarray, t1_ms: np.ndarray) -> None:
    sources = make_legacy_series(stored, OBLIQUE)
    back = _round_trip(
        build_parametric_map(sources, t1_ms, "T1_MS", series_number=901, identity=IDENTITY)
    )

    series = back.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == sources[0].SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in series.ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in sources}
    assert "DERIVED" in back.ImageType


def test_patient_and_study_copied_with_non_ascii_name(
    stored: np.ndarray, t1_ms: np.ndarray
) -> None:
    sources = make_legacy_series(
        stored, OBLIQUE, patient_name=NON_ASCII_NAME, specific_character_set="ISO_IR 192"
    )
    back = _round_trip(
        build_parametric_map(sources, t1_ms, "T1_MS", series_number=901, identity=IDENTITY)
    )

    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert str(back.PatientName) == NON_ASCII_NAME
    for keyword in ("PatientID", "PatientBirthDate", "StudyInstanceUID", "AccessionNumber"):
        assert back[keyword].value == sources[0][keyword].value
    assert back.StudyInstanceUID == sources[0].StudyInstanceUID
    assert back.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert back.FrameOfReferenceUID == sources[0].FrameOfReferenceUID


def test_missing_type2_attributes_in_source(stored: np.ndarray, t1_ms: np.ndarray) -> None:
    sources = make_legacy_series(stored, OBLIQUE, empty_type2=True)
    for ds in sources:
        for keyword in ("PatientBirthDate", "PatientSex", "ReferringPhysicianName"):
            delattr(ds, keyword)
        del ds.BodyPartExamined
    back = _round_trip(
        build_parametric_map(sources, t1_ms, "T1_MS", series_number=901, identity=IDENTITY)
    )

    assert back.PatientBirthDate == "" and back.PatientSex == ""
    assert back.BodyPartExamined == "CSPINE"
    assert "PatientBirthDate" not in sources[0]  # the caller's datasets are left alone


def test_identity_and_research_text_are_visible(stored: np.ndarray, t1_ms: np.ndarray) -> None:
    identity = ResultIdentity(software_version="2.0.1", institution="Test Hospital")
    back = _round_trip(
        build_parametric_map(
            make_legacy_series(stored, OBLIQUE), t1_ms, "T1_MS", series_number=7, identity=identity
        )
    )

    assert back.Manufacturer == "cordt1"
    assert back.ManufacturerModelName == "cordt1"
    assert back.SoftwareVersions == "2.0.1"
    assert back.InstitutionName == "Test Hospital"
    assert back.SeriesNumber == 7
    assert back.SeriesDescription == f"cordt1 T1 param map - {DEFAULT_RESEARCH_USE_TEXT}"
    assert back.ContentDescription.endswith(DEFAULT_RESEARCH_USE_TEXT)
    assert back.ContentQualification == "RESEARCH"


def test_cleared_site_gets_product_without_research_text(
    stored: np.ndarray, t1_ms: np.ndarray
) -> None:
    identity = ResultIdentity(software_version="2.0.1", research_use_text="")
    pm = build_parametric_map(
        make_legacy_series(stored, OBLIQUE), t1_ms, "T1_MS", series_number=7, identity=identity
    )
    assert pm.SeriesDescription == "cordt1 T1 param map"
    assert pm.ContentQualification == "PRODUCT"


def test_uids_can_be_given(stored: np.ndarray, t1_ms: np.ndarray) -> None:
    series_uid, sop_uid = generate_uid(), generate_uid()
    pm = build_parametric_map(
        make_legacy_series(stored, OBLIQUE),
        t1_ms,
        "T1_MS",
        series_number=7,
        identity=IDENTITY,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
    )
    assert (pm.SeriesInstanceUID, pm.SOPInstanceUID) == (series_uid, sop_uid)


# ---- validation ------------------------------------------------------------------------------


def _build(sources: list[Dataset], values: object, kind: object = "T1_MS", **kwargs: object):
    options = {"series_number": 901, "identity": IDENTITY, **kwargs}
    return build_parametric_map(sources, values, kind, **options)  # type: ignore[arg-type]


def test_shape_mismatch_is_refused(stored: np.ndarray, t1_ms: np.ndarray) -> None:
    sources = make_legacy_series(stored, OBLIQUE)
    with pytest.raises(
        ValueError, match=r"\(4, 32, 40\) does not match the sources .* = \(3, 32, 40\)"
    ):
        _build(sources[:3], t1_ms)
    with pytest.raises(ValueError, match="does not match the sources"):
        _build(sources, t1_ms.transpose(0, 2, 1))


def test_infinite_values_are_refused(stored: np.ndarray, t1_ms: np.ndarray) -> None:
    t1_ms[1, 2, 3] = np.inf
    with pytest.raises(ValueError, match="1 infinite voxels"):
        _build(make_legacy_series(stored, OBLIQUE), t1_ms)


def test_unknown_kind_is_refused(stored: np.ndarray, t1_ms: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown map kind 'R2STAR'"):
        _build(make_legacy_series(stored, OBLIQUE), t1_ms, kind="R2STAR")


def test_wrong_types_are_refused(stored: np.ndarray, t1_ms: np.ndarray) -> None:
    sources = make_legacy_series(stored, OBLIQUE)
    with pytest.raises(TypeError, match="real numbers"):
        _build(sources, t1_ms > 1000)
    with pytest.raises(TypeError, match="numpy array"):
        _build(sources, t1_ms.tolist())
    with pytest.raises(TypeError, match="ResultIdentity"):
        _build(sources, t1_ms, identity="cordt1")
    with pytest.raises(TypeError, match="sequence of pydicom Datasets"):
        _build(sources[0], t1_ms)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="series_number"):
        _build(sources, t1_ms, series_number=0)


def test_sources_from_two_series_are_refused(stored: np.ndarray, t1_ms: np.ndarray) -> None:
    first = make_legacy_series(stored[:2], OBLIQUE)
    second = make_legacy_series(stored[2:], OBLIQUE)
    with pytest.raises(ValueError, match="one map per source series"):
        _build(first + second, t1_ms)


def test_frames_of_different_orientation_are_refused(stored: np.ndarray) -> None:
    source = make_enhanced_mr(stored, OBLIQUE, shared_geometry=False)
    tilted = Dataset()
    tilted.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    source.PerFrameFunctionalGroupsSequence[2].PlaneOrientationSequence = [tilted]
    with pytest.raises(ValueError, match="different orientation"):
        _build([source], np.zeros(SHAPE))


# ---- identity --------------------------------------------------------------------------------


def test_apply_identity_keeps_the_research_text_when_the_description_is_long() -> None:
    # Shortened by whole words only (never "cordt1 T1 measurement re - ..."): first the
    # software name in front, then words from the end.
    ds = Dataset()
    ds.SeriesDescription = "cordt1 T1 measurement report cervical cord"
    apply_identity(ds, IDENTITY)
    assert ds.SeriesDescription == f"T1 measurement report - {DEFAULT_RESEARCH_USE_TEXT}"
    apply_identity(ds, IDENTITY)  # idempotent
    assert ds.SeriesDescription.count(DEFAULT_RESEARCH_USE_TEXT) == 1
    short = Dataset()
    short.SeriesDescription = "cordt1 T1 map ms slab 2"
    apply_identity(short, IDENTITY)
    assert short.SeriesDescription == f"cordt1 T1 map ms slab 2 - {DEFAULT_RESEARCH_USE_TEXT}"
    # a single word longer than the room is left out rather than cut
    long_word = Dataset()
    long_word.SeriesDescription = "x" * 64
    apply_identity(long_word, IDENTITY)
    assert long_word.SeriesDescription == DEFAULT_RESEARCH_USE_TEXT


def test_result_identity_validates() -> None:
    with pytest.raises(ValueError, match="software_version must not be empty"):
        ResultIdentity(software_version="")
    with pytest.raises(ValueError, match="at most 64"):
        ResultIdentity(manufacturer="m" * 65)
    with pytest.raises(ValueError, match="fits into SeriesDescription"):
        ResultIdentity(research_use_text="R" * 61)
    assert ResultIdentity().software_version  # package version, never empty


# ---- dciodvfy --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
@pytest.mark.parametrize("kind", list(MapKind))
@pytest.mark.parametrize("source_kind", ["legacy", "enhanced", "legacy-empty-type2"])
def test_dciodvfy_finds_no_errors(
    stored: np.ndarray, t1_ms: np.ndarray, tmp_path: Path, kind: MapKind, source_kind: str
) -> None:
    if source_kind == "enhanced":
        sources = [make_enhanced_mr(stored, OBLIQUE, frame_order=[3, 1, 0, 2])]
    else:
        sources = make_legacy_series(
            stored,
            OBLIQUE,
            empty_type2=source_kind.endswith("type2"),
            patient_name=NON_ASCII_NAME,
            specific_character_set="ISO_IR 192",
        )
    values = t1_ms if kind is MapKind.T1_MS else (t1_ms - 1200.0) / 100.0
    path = tmp_path / "pm.dcm"
    _build(sources, values, kind).save_as(path, enforce_file_format=True)

    result = subprocess.run(
        ["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    report = result.stdout + result.stderr
    assert "ParametricMap" in report
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert errors == []
