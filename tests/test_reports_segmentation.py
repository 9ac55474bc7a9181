"""DICOM Segmentation writer (reports.segmentation) and its codes (reports.codes)."""

from __future__ import annotations

import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from reports import codes
from reports.identity import DEFAULT_RESEARCH_USE_TEXT, ResultIdentity
from reports.segmentation import (
    SegmentKind,
    SegmentSpec,
    build_segmentation,
    segment_numbers,
    segment_specs,
    segmentation_header,
)
from tests.dicom_factory import affine_from_geometry, make_enhanced_mr, make_legacy_series

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SHAPE = (4, 32, 40)  # slices, rows, columns
OBLIQUE = affine_from_geometry(
    origin_mm=[5.0, -30.0, 60.0],
    row_cos=[0.97, 0.2, 0.05],
    col_cos=[-0.15, 0.9, -0.4],
    voxel_mm=[4.0, 0.3, 0.3],
)
IDENTITY = ResultIdentity(software_version="9.8.7")
NON_ASCII_NAME = "Müller^Zoë"


def _disc(radius: float, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    rows, cols = np.mgrid[: shape[1], : shape[2]]
    disc = np.hypot(rows - shape[1] / 2, cols - shape[2] / 2) < radius
    return np.broadcast_to(disc, shape).copy()


def _exam_masks(shape: tuple[int, int, int] = SHAPE) -> dict[str, object]:
    """Cord, GM, WM, regions (some codes), two reader lesions, one candidate, abnormal."""
    cord = _disc(shape[1] / 4, shape)
    gm = _disc(shape[1] / 10, shape)
    wm = cord & ~gm
    regions = np.zeros(shape, dtype=np.int16)
    centre_row, centre_col = shape[1] // 2, shape[2] // 2
    regions[wm & (np.arange(shape[1])[None, :, None] > centre_row)] = 1  # posterior half
    regions[wm & (np.arange(shape[1])[None, :, None] <= centre_row)] = 4
    regions[gm & (np.arange(shape[2])[None, None, :] >= centre_col)] = 11
    regions[gm & (np.arange(shape[2])[None, None, :] < centre_col)] = 16
    reader = np.zeros(shape, dtype=np.int32)
    reader[1, centre_row : centre_row + 2, centre_col - 5 : centre_col - 3] = 1
    reader[2:, centre_row - 4 : centre_row - 2, centre_col + 2 : centre_col + 4] = 3
    candidate = np.zeros(shape, dtype=np.uint8)
    candidate[0, centre_row - 1 : centre_row + 1, centre_col : centre_col + 3] = 2
    abnormal = np.zeros(shape, dtype=bool)
    abnormal[1:3, centre_row - 3 : centre_row + 3, centre_col - 3 : centre_col + 3] = True
    return {
        "cord": cord,
        "gm": gm,
        "wm": wm,
        "region_labels": regions,
        "lesion_labels_reader": reader,
        "lesion_labels_candidate": candidate,
        "abnormal": abnormal,
        "z_threshold": 1.96,
    }


@pytest.fixture
def stored() -> np.ndarray:
    return np.random.default_rng(11).integers(0, 4096, SHAPE, dtype=np.uint16)


@pytest.fixture
def specs() -> list[SegmentSpec]:
    return segment_specs(**_exam_masks())  # type: ignore[arg-type]


def _round_trip(ds: Dataset) -> Dataset:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return dcmread(BytesIO(buffer.getvalue()))


def _code(item: Dataset) -> tuple[str, str]:
    return str(item.CodeValue), str(item.CodingSchemeDesignator)


def _build(sources: list[Dataset], segments: object, **kwargs: object) -> hd.seg.Segmentation:
    options = {"series_number": 950, "identity": IDENTITY, **kwargs}
    return build_segmentation(sources, segments, **options)  # type: ignore[arg-type]


# ---- the standard list -----------------------------------------------------------------------


def test_the_planned_header_is_what_the_written_seg_says(
    stored: np.ndarray, specs: list[SegmentSpec]
) -> None:
    """A report may reference a SEG that another process is still writing."""
    sources = make_legacy_series(stored, OBLIQUE)
    head = segmentation_header(
        sources, specs, series_instance_uid="1.2.826.0.1.3", sop_instance_uid="1.2.826.0.1.4"
    )
    seg = _round_trip(
        _build(
            sources, specs, series_instance_uid="1.2.826.0.1.3", sop_instance_uid="1.2.826.0.1.4"
        )
    )
    for keyword in ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert head[keyword].value == seg[keyword].value, keyword
    assert (
        head.ReferencedSeriesSequence[0].SeriesInstanceUID
        == seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    )
    assert [(int(i.SegmentNumber), str(i.SegmentLabel)) for i in head.SegmentSequence] == [
        (int(i.SegmentNumber), str(i.SegmentLabel)) for i in seg.SegmentSequence
    ]
    with pytest.raises(ValueError, match="non-empty UID"):
        segmentation_header(sources, specs, series_instance_uid="", sop_instance_uid="1.2")
    other = make_legacy_series(stored, OBLIQUE)
    with pytest.raises(ValueError, match="one series, got 2"):
        segmentation_header(
            [*sources, *other], specs, series_instance_uid="1.2.3", sop_instance_uid="1.2.4"
        )


def test_segment_specs_lists_every_kind_in_order(specs: list[SegmentSpec]) -> None:
    assert [s.label for s in specs] == [
        "Spinal cord",
        "Grey matter",
        "White matter",
        "WM dorsal columns left",
        "WM lateral funiculus right",
        "GM dorsal horn left",
        "GM ventral horn right",
        "Lesion 1 (reader)",
        "Lesion 3 (reader)",
        "Lesion 2 (automatic candidate)",
        "Abnormal voxels (Z > 1.96)",
    ]
    assert {s.kind for s in specs} == set(SegmentKind)
    assert [s.region_code for s in specs if s.kind is SegmentKind.REGION] == [1, 4, 11, 16]
    # the TrackingID is the label: the same text as the SR's tracking identifier
    assert [s.tracking_id for s in specs if s.tracking_id] == [
        "Lesion 1 (reader)",
        "Lesion 3 (reader)",
        "Lesion 2 (automatic candidate)",
    ]
    masks = _exam_masks()
    np.testing.assert_array_equal(specs[7].mask, masks["lesion_labels_reader"] == 1)  # type: ignore[operator]


def test_empty_masks_are_skipped() -> None:
    masks = _exam_masks()
    masks["gm"] = np.zeros(SHAPE, dtype=bool)
    masks["lesion_labels_candidate"] = np.zeros(SHAPE, dtype=np.int16)
    masks["abnormal"] = np.zeros(SHAPE, dtype=bool)
    labels = [s.label for s in segment_specs(**masks)]  # type: ignore[arg-type]
    assert "Grey matter" not in labels
    assert not [label for label in labels if "candidate" in label or "Abnormal" in label]
    no_model = {**_exam_masks(), "abnormal": None, "z_threshold": None}
    assert "Abnormal" not in " ".join(s.label for s in segment_specs(**no_model))  # type: ignore[arg-type]


def test_segment_numbers_follow_the_list(specs: list[SegmentSpec]) -> None:
    numbers = segment_numbers(specs)
    assert numbers["Spinal cord"] == 1
    assert numbers["Lesion 3 (reader)"] == 9
    assert list(numbers.values()) == list(range(1, len(specs) + 1))


# ---- the written object ----------------------------------------------------------------------


def test_every_kind_round_trips_with_codes(stored: np.ndarray, specs: list[SegmentSpec]) -> None:
    sources = make_legacy_series(stored, OBLIQUE)
    back = _round_trip(_build(sources, specs))

    assert back.SOPClassUID == SEG_STORAGE
    assert back.SegmentationType == "BINARY"
    assert back.Modality == "SEG"
    numbers = segment_numbers(specs)
    items = {item.SegmentLabel: item for item in back.SegmentSequence}
    assert {label: int(item.SegmentNumber) for label, item in items.items()} == numbers

    def category_and_type(label: str) -> tuple[tuple[str, str], tuple[str, str]]:
        item = items[label]
        return (
            _code(item.SegmentedPropertyCategoryCodeSequence[0]),
            _code(item.SegmentedPropertyTypeCodeSequence[0]),
        )

    anatomy = ("91723000", "SCT")
    abnormal_structure = ("49755003", "SCT")
    assert category_and_type("Spinal cord") == (anatomy, ("2748008", "SCT"))
    assert category_and_type("Grey matter") == (anatomy, ("12958003", "SCT"))
    assert category_and_type("White matter") == (anatomy, ("27088001", "SCT"))
    assert category_and_type("WM dorsal columns left") == (anatomy, ("59752008", "SCT"))
    assert category_and_type("WM lateral funiculus right") == (anatomy, ("14892003", "SCT"))
    assert category_and_type("GM ventral horn right") == (anatomy, ("12958003", "SCT"))
    assert category_and_type("Lesion 1 (reader)") == (abnormal_structure, ("52988006", "SCT"))
    assert category_and_type("Lesion 2 (automatic candidate)") == (
        abnormal_structure,
        ("52988006", "SCT"),
    )
    assert category_and_type("Abnormal voxels (Z > 1.96)") == (
        abnormal_structure,
        ("263654008", "SCT"),
    )
    for label, side in (
        ("WM dorsal columns left", "7771000"),
        ("GM ventral horn right", "24028007"),
    ):
        modifier = items[label].SegmentedPropertyTypeCodeSequence[0]
        assert _code(modifier.SegmentedPropertyTypeModifierCodeSequence[0]) == (side, "SCT")

    reader = items["Lesion 1 (reader)"]
    assert reader.SegmentAlgorithmType == "MANUAL"
    assert "SegmentationAlgorithmIdentificationSequence" not in reader
    assert reader.TrackingID == "Lesion 1 (reader)" and reader.TrackingUID
    assert _code(reader.AnatomicRegionSequence[0]) == ("2748008", "SCT")
    cord = items["Spinal cord"]
    assert cord.SegmentAlgorithmType == "AUTOMATIC"
    algorithm = cord.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("cordt1", "9.8.7")
    assert _code(algorithm.AlgorithmFamilyCodeSequence[0]) == ("123104", "DCM")

    seg = hd.seg.Segmentation.from_dataset(back)
    pixels = seg.get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in sources],
        segment_numbers=list(numbers.values()),
        assert_missing_frames_are_empty=True,
    )
    for index, spec in enumerate(specs):
        np.testing.assert_array_equal(
            pixels[..., index].astype(bool), spec.mask, err_msg=spec.label
        )


def test_empty_frames_are_left_out(stored: np.ndarray) -> None:
    lesion = np.zeros(SHAPE, dtype=bool)
    lesion[2, 5:8, 5:9] = True
    specs = [
        SegmentSpec("Spinal cord", _disc(8.0), "CORD"),
        SegmentSpec("Lesion 1 (reader)", lesion, SegmentKind.LESION_READER),
    ]
    back = _round_trip(_build(make_legacy_series(stored, OBLIQUE), specs))
    assert int(back.NumberOfFrames) == SHAPE[0] + 1  # cord on every slice, lesion on one
    per_segment = [
        int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        for item in back.PerFrameFunctionalGroupsSequence
    ]
    assert per_segment.count(2) == 1


def test_enhanced_source_with_a_slice_order_different_from_the_frames(stored: np.ndarray) -> None:
    frame_order = [2, 0, 3, 1]  # frame f + 1 holds slice frame_order[f]
    source = make_enhanced_mr(stored, OBLIQUE, frame_order=frame_order, shared_geometry=False)
    slice_order = [frame_order.index(k) for k in range(SHAPE[0])]  # slice k -> frame index
    specs = segment_specs(**_exam_masks())  # type: ignore[arg-type]
    back = _round_trip(_build([source], specs, slice_order=slice_order))

    seg = hd.seg.Segmentation.from_dataset(back)
    frames = [f + 1 for f in slice_order]  # source frames in slice order
    pixels = seg.get_pixels_by_source_frame(
        source.SOPInstanceUID,
        source_frame_numbers=frames,
        segment_numbers=list(segment_numbers(specs).values()),
        assert_missing_frames_are_empty=True,
    )
    for index, spec in enumerate(specs):
        np.testing.assert_array_equal(
            pixels[..., index].astype(bool), spec.mask, err_msg=spec.label
        )
    # each SEG frame sits where its source frame was
    for item in back.PerFrameFunctionalGroupsSequence:
        reference = item.DerivationImageSequence[0].SourceImageSequence[0]
        source_frame = source.PerFrameFunctionalGroupsSequence[
            int(reference.ReferencedFrameNumber) - 1
        ]
        np.testing.assert_allclose(
            [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in source_frame.PlanePositionSequence[0].ImagePositionPatient],
        )


def test_patient_study_identity_and_untouched_sources(
    stored: np.ndarray, specs: list[SegmentSpec]
) -> None:
    sources = make_legacy_series(
        stored,
        OBLIQUE,
        patient_name=NON_ASCII_NAME,
        specific_character_set="ISO_IR 192",
        empty_type2=True,
    )
    for ds in sources:
        del ds.PatientBirthDate, ds.BodyPartExamined
    identity = ResultIdentity(software_version="2.0.1", institution="Test Hospital")
    back = _round_trip(_build(sources, specs, identity=identity, series_number=7))

    assert str(back.PatientName) == NON_ASCII_NAME
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert back.PatientBirthDate == "" and back.BodyPartExamined == "CSPINE"
    assert (back.StudyInstanceUID, back.FrameOfReferenceUID) == (
        sources[0].StudyInstanceUID,
        sources[0].FrameOfReferenceUID,
    )
    referenced = {
        item.ReferencedSOPInstanceUID
        for item in back.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == {ds.SOPInstanceUID for ds in sources}
    assert back.SeriesNumber == 7 and back.InstitutionName == "Test Hospital"
    assert back.SeriesDescription == f"cordt1 cord segmentation - {DEFAULT_RESEARCH_USE_TEXT}"
    assert back.ContentDescription.endswith(DEFAULT_RESEARCH_USE_TEXT)
    assert back.SoftwareVersions == "2.0.1"
    assert "PatientBirthDate" not in sources[0] and "PixelData" in sources[0]


# ---- validation ------------------------------------------------------------------------------


def test_shape_mismatch_is_refused(stored: np.ndarray, specs: list[SegmentSpec]) -> None:
    sources = make_legacy_series(stored, OBLIQUE)
    with pytest.raises(ValueError, match=r"has shape \(4, 32, 40\); the sources .* \(3, 32, 40\)"):
        _build(sources[:3], specs)
    with pytest.raises(ValueError, match="has shape"):
        segment_specs(**{**_exam_masks(), "gm": np.zeros((4, 40, 32), dtype=bool)})  # type: ignore[arg-type]


def test_empty_list_empty_mask_and_duplicate_labels_are_refused(stored: np.ndarray) -> None:
    sources = make_legacy_series(stored, OBLIQUE)
    with pytest.raises(ValueError, match="at least one segment"):
        _build(sources, [])
    with pytest.raises(ValueError, match="'Grey matter' is empty"):
        _build(sources, [SegmentSpec("Grey matter", np.zeros(SHAPE, dtype=bool), "GM")])
    twice = [SegmentSpec("Cord", _disc(5.0), "CORD"), SegmentSpec("Cord", _disc(6.0), "CORD")]
    with pytest.raises(ValueError, match="'Cord' is used twice"):
        _build(sources, twice)


def test_non_boolean_masks_are_refused() -> None:
    with pytest.raises(TypeError, match="must be boolean, got dtype uint8"):
        SegmentSpec("Spinal cord", _disc(5.0).astype(np.uint8), "CORD")
    with pytest.raises(TypeError, match="cord must be a boolean mask"):
        segment_specs(**{**_exam_masks(), "cord": _disc(5.0).astype(float)})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="integer label image"):
        segment_specs(**{**_exam_masks(), "region_labels": _disc(5.0)})  # type: ignore[arg-type]


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="needs a region_code"):
        SegmentSpec("WM", _disc(5.0), SegmentKind.REGION)
    with pytest.raises(ValueError, match="unknown region code 7"):
        SegmentSpec("WM", _disc(5.0), SegmentKind.REGION, region_code=7)
    with pytest.raises(ValueError, match="must not have a region_code"):
        SegmentSpec("Cord", _disc(5.0), SegmentKind.CORD, region_code=1)
    with pytest.raises(ValueError, match="unknown segment kind 'CSF'"):
        SegmentSpec("CSF", _disc(5.0), "CSF")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most 64"):
        SegmentSpec("x" * 65, _disc(5.0), "CORD")
    with pytest.raises(ValueError, match="unknown region codes \\[9\\]"):
        segment_specs(**{**_exam_masks(), "region_labels": _disc(5.0).astype(np.int16) * 9})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite z_threshold"):
        segment_specs(**{**_exam_masks(), "z_threshold": None})  # type: ignore[arg-type]


def test_bad_slice_order_and_arguments_are_refused(
    stored: np.ndarray, specs: list[SegmentSpec]
) -> None:
    sources = make_legacy_series(stored, OBLIQUE)
    with pytest.raises(ValueError, match=r"permutation of 0\.\.3"):
        _build(sources, specs, slice_order=[0, 1, 1, 2])
    with pytest.raises(TypeError, match="ResultIdentity"):
        _build(sources, specs, identity="cordt1")
    with pytest.raises(ValueError, match="series_number must be positive"):
        _build(sources, specs, series_number=0)
    with pytest.raises(TypeError, match="sequence of SegmentSpec"):
        _build(sources, specs[0])
    other = make_legacy_series(stored[:2], OBLIQUE)
    with pytest.raises(ValueError, match="one segmentation per source series"):
        _build(sources[:2] + other, [SegmentSpec("Cord", _disc(5.0)[:4], "CORD")])


def test_region_code_table_covers_the_design_doc() -> None:
    assert sorted(codes.REGION_CONCEPTS) == [1, 2, 3, 4, 5, 6, 11, 12, 13, 14, 15, 16]
    for code, concept in codes.REGION_CONCEPTS.items():
        assert concept.laterality == (codes.LEFT if code % 2 else codes.RIGHT)
        tissue = codes.SPINAL_CORD_GRAY_MATTER if code > 10 else None
        if tissue is not None:
            assert concept.property_type == tissue
        assert concept.label.endswith("left" if code % 2 else "right")
    with pytest.raises(ValueError, match="unknown region code 0"):
        codes.region_concept(0)


# ---- real peers: phantom sources, dciodvfy, Orthanc ------------------------------------------


def _phantom_series(tmp_path: Path, enhanced: bool, slabs: int = 1) -> list[object]:
    from service.inputs.volumes import load_series
    from service.phantom import PhantomOptions, write_cohort

    options = PhantomOptions(matrix=128, slices_per_slab=4, slabs=slabs, enhanced=enhanced)
    write_cohort(tmp_path, controls=0, patients=1, follow_up=False, seed=5, options=options)
    folders = sorted(tmp_path.glob("patient-001/exam-1/dicom/*_UNI_slab*"))
    assert len(folders) == slabs
    return [load_series(sorted(folder.glob("*.dcm"))) for folder in folders]


def _phantom_specs(shape: tuple[int, int, int]) -> list[SegmentSpec]:
    return segment_specs(**_exam_masks(shape))  # type: ignore[arg-type]


def _dciodvfy_errors(path: Path) -> tuple[str, list[str]]:
    result = subprocess.run(
        ["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    report = result.stdout + result.stderr
    return report, [line for line in report.splitlines() if line.startswith("Error")]


@pytest.mark.slow
@pytest.mark.parametrize("enhanced", [False, True])
def test_phantom_slabs_round_trip(tmp_path: Path, enhanced: bool) -> None:
    for slab, volume in enumerate(_phantom_series(tmp_path, enhanced, slabs=2), start=1):
        specs = _phantom_specs(volume.array.shape)
        slice_order = None
        if enhanced:
            slice_order = [frame - 1 for _, frame in volume.frame_sources]  # type: ignore[operator]
        back = _round_trip(
            _build(volume.datasets, specs, series_number=960 + slab, slice_order=slice_order)
        )
        seg = hd.seg.Segmentation.from_dataset(back)
        numbers = list(segment_numbers(specs).values())
        if enhanced:
            pixels = seg.get_pixels_by_source_frame(
                volume.datasets[0].SOPInstanceUID,
                source_frame_numbers=[frame for _, frame in volume.frame_sources],
                segment_numbers=numbers,
            )
        else:
            pixels = seg.get_pixels_by_source_instance(
                [ds.SOPInstanceUID for ds in volume.datasets], segment_numbers=numbers
            )
        for index, spec in enumerate(specs):
            np.testing.assert_array_equal(pixels[..., index].astype(bool), spec.mask)
        assert back.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.series_uid


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
@pytest.mark.parametrize("source_kind", ["legacy", "enhanced", "legacy-empty-type2", "phantom"])
def test_dciodvfy_finds_no_errors(stored: np.ndarray, tmp_path: Path, source_kind: str) -> None:
    order = None
    if source_kind == "enhanced":
        sources = [make_enhanced_mr(stored, OBLIQUE, frame_order=[3, 1, 0, 2])]
        order = [2, 1, 3, 0]
    elif source_kind == "phantom":
        volume = _phantom_series(tmp_path / "phantom", enhanced=True)[0]
        sources = volume.datasets
        order = [frame - 1 for _, frame in volume.frame_sources]  # type: ignore[operator]
    else:
        sources = make_legacy_series(
            stored,
            OBLIQUE,
            empty_type2=source_kind.endswith("type2"),
            patient_name=NON_ASCII_NAME,
            specific_character_set="ISO_IR 192",
        )
    shape = (len(order) if order else SHAPE[0], int(sources[0].Rows), int(sources[0].Columns))
    path = tmp_path / "seg.dcm"
    _build(sources, _phantom_specs(shape), slice_order=order).save_as(
        path, enforce_file_format=True
    )

    report, errors = _dciodvfy_errors(path)
    assert "Segmentation" in report
    assert errors == []


@pytest.mark.slow
def test_orthanc_accepts_the_segmentation(tmp_path: Path) -> None:
    from dicom_node.scu import Destination, send
    from service.phantom.pacs import OrthancPacs, orthanc_binary

    if orthanc_binary() is None:
        pytest.skip("Orthanc not installed")
    volume = _phantom_series(tmp_path / "phantom", enhanced=False)[0]
    seg = _build(volume.datasets, _phantom_specs(volume.array.shape))
    pacs = OrthancPacs.start(tmp_path / "orthanc")
    try:
        report = send([seg], Destination.parse(pacs.destination), calling_ae="CORDT1")
        assert report.n_stored == 1
        found = pacs.find("Instance", {"SOPClassUID": SEG_STORAGE})
        assert [item["MainDicomTags"]["SOPInstanceUID"] for item in found] == [seg.SOPInstanceUID]
        series = pacs.find("Series", {"Modality": "SEG"})
        assert len(series) == 1
        stored_back = dcmread(BytesIO(pacs.instance_file(seg.SOPInstanceUID)))
        assert [item.SegmentLabel for item in stored_back.SegmentSequence] == [
            item.SegmentLabel for item in seg.SegmentSequence
        ]
    finally:
        pacs.stop()


# ---- what a reader sees: one lesion numbering, two layers, lesion-first colours ---------------


def test_lesions_are_named_by_their_exam_wide_ids() -> None:
    from reports.segmentation import lesion_label

    # slab 2 of an exam whose slab 1 held lesions 1-3: this slab's reader lesions 1 and 3 and
    # candidate 2 are the exam's lesions 4, 6 and 5
    ids = {("reader", 1): 4, ("reader", 3): 6, ("candidate", 2): 5}
    specs = segment_specs(**_exam_masks(), lesion_ids=ids)  # type: ignore[arg-type]
    lesions = [
        s for s in specs if s.kind in (SegmentKind.LESION_READER, SegmentKind.LESION_CANDIDATE)
    ]
    assert [s.label for s in lesions] == [
        "Lesion 4 (reader)",
        "Lesion 6 (reader)",
        "Lesion 5 (automatic candidate)",
    ]
    assert [s.tracking_id for s in lesions] == [s.label for s in lesions]
    assert lesion_label(5, "candidate") == "Lesion 5 (automatic candidate)"
    # a lesion the report does not list (e.g. wholly outside the cord) gets no segment
    partial = segment_specs(**_exam_masks(), lesion_ids={("reader", 1): 1})  # type: ignore[arg-type]
    assert [s.label for s in partial if s.label.startswith("Lesion")] == ["Lesion 1 (reader)"]


def test_layers_split_the_clinical_segments_from_the_anatomy(specs: list[SegmentSpec]) -> None:
    from reports.segmentation import split_layers

    clinical, anatomy = split_layers(specs)
    assert [s.label for s in clinical] == [
        "Spinal cord",
        "Lesion 1 (reader)",
        "Lesion 3 (reader)",
        "Lesion 2 (automatic candidate)",
        "Abnormal voxels (Z > 1.96)",
    ]
    assert [s.label for s in anatomy][:3] == [
        "Grey matter",
        "White matter",
        "WM dorsal columns left",
    ]
    assert len(clinical) + len(anatomy) == len(specs)


def _chroma(item: Dataset) -> float:
    """CIELab chroma of a segment's display colour (DICOM scales a*, b* to 0..65535)."""
    _, a, b = (int(v) for v in item.RecommendedDisplayCIELabValue)
    return float(np.hypot(a * 255 / 65535 - 128, b * 255 / 65535 - 128))


def test_lesion_colours_stand_out_against_muted_anatomy(
    stored: np.ndarray, specs: list[SegmentSpec]
) -> None:
    back = _round_trip(_build(make_legacy_series(stored, OBLIQUE), specs))
    chroma = {str(item.SegmentLabel): _chroma(item) for item in back.SegmentSequence}
    lesions = [chroma[label] for label in chroma if label.startswith(("Lesion", "Abnormal"))]
    anatomy = [
        chroma[s.label]
        for s in specs
        if s.kind in (SegmentKind.GM, SegmentKind.WM, SegmentKind.REGION)
    ]
    assert min(lesions) > 2 * max(anatomy)
    colours = {
        tuple(item.RecommendedDisplayCIELabValue)
        for item in back.SegmentSequence
        if str(item.SegmentLabel).startswith(("Lesion 1", "Lesion 2", "Abnormal", "Spinal"))
    }
    assert len(colours) == 4  # reader lesions, candidates, abnormal voxels, cord: distinct
