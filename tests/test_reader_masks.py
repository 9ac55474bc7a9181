"""Cord, GM and WM outlines given with the exam (reader SEG or NIfTI) instead of our own
segmentation: what a segment is, how given masks combine, and the pipeline using them."""

from __future__ import annotations

import json
import shutil
from io import BytesIO
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataset import Dataset

from processing.segmentation import CordSegmentation, segmentation_with_given_cord
from service.cli import main
from service.inputs.exam import find_exam_series, match_slabs
from service.inputs.nifti import from_nifti
from service.inputs.protocol import load_site_protocols
from service.inputs.reader_lesions import (
    ReaderLesionError,
    SegmentKind,
    kind_from_text,
    lesions_from_seg,
    read_seg,
    segment_kind,
)
from service.inputs.reader_masks import (
    GivenMasks,
    mask_from_nifti,
    mask_kind_of_file,
    masks_from_seg,
)
from service.inputs.volumes import SeriesVolume
from service.pipeline.identity import result_identity
from service.pipeline.run import process_exam
from service.settings import Settings
from tests.service_harness import PhantomExam, make_exams
from tests.test_reader_lesions import Exam, _source_order, _write_exam

BoolArray = NDArray[np.bool_]

CORD = ("2748008", "SCT", "Spinal cord")
GM = ("12958003", "SCT", "Spinal cord gray matter")
WM = ("27088001", "SCT", "Spinal cord white matter")
LESION = ("52988006", "SCT", "Lesion")
TISSUE = ("85756007", "SCT", "Tissue")
ANATOMY = ("91723000", "SCT", "Anatomical Structure")
ABNORMAL = ("49755003", "SCT", "Morphologically Altered Structure")


def _description(
    number: int,
    label: str,
    prop: tuple[str, str, str],
    *,
    category: tuple[str, str, str] = ANATOMY,
) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=hd.sr.CodedConcept(*category),
        segmented_property_type=hd.sr.CodedConcept(*prop),
        algorithm_type="MANUAL",
    )


def _reader_seg(
    volume: SeriesVolume, segments: list[tuple[str, tuple[str, str, str], BoolArray]]
) -> Dataset:
    """A reader SEG on one slab: (label, property type, mask [k, j, i]) per segment."""
    descriptions = [
        _description(n, label, prop, category=ABNORMAL if prop == LESION else ANATOMY)
        for n, (label, prop, _) in enumerate(segments, start=1)
    ]
    pixels = np.stack([mask for _, _, mask in segments], axis=-1)[_source_order(volume)]
    seg = hd.seg.Segmentation(
        source_images=volume.datasets,
        pixel_array=pixels.astype(np.uint8),
        segmentation_type="BINARY",
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test reader",
        manufacturer_model_name="workstation",
        software_versions="1",
        device_serial_number="1",
    )
    buffer = BytesIO()
    seg.save_as(buffer)
    buffer.seek(0)
    return dcmread(buffer)


def _truth(truth_dir: Path, slab: int, name: str) -> NDArray[np.int32]:
    data, _ = from_nifti(nib.load(truth_dir / f"slab{slab}_{name}.nii.gz"))
    return np.asarray(data).astype(np.int32)


# --- what a segment is -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prop", "label", "expected"),
    [
        (CORD, "outline 1", SegmentKind.CORD),
        (GM, "outline 2", SegmentKind.GM),
        (("389081007", "SCT", "Gray Matter"), "x", SegmentKind.GM),
        (WM, "outline 3", SegmentKind.WM),
        (("389080008", "SCT", "White Matter"), "x", SegmentKind.WM),
        (LESION, "WM lesion", SegmentKind.LESION),  # the code wins over the words
        (LESION, "spinal cord", SegmentKind.LESION),
        (CORD, "lesion 1", SegmentKind.CORD),
        (TISSUE, "Spinal_Cord", SegmentKind.CORD),  # uninformative code: the label decides
        (TISSUE, "GreyMatter", SegmentKind.GM),
        (TISSUE, "gray matter", SegmentKind.GM),
        (TISSUE, "WM", SegmentKind.WM),
        (TISSUE, "cord GM", SegmentKind.GM),
        (TISSUE, "CSF", SegmentKind.LESION),  # anything else stays a lesion, as before
        (("68523003", "SCT", "Cerebral White Matter"), "seg", SegmentKind.LESION),
    ],
)
def test_segment_kind_reads_the_code_first_then_the_label(
    prop: tuple[str, str, str], label: str, expected: SegmentKind
) -> None:
    assert segment_kind(_description(1, label, prop)) == expected


def test_segment_kind_falls_back_to_the_description() -> None:
    item = _description(1, "segment 1", TISSUE)
    item.SegmentDescription = "white matter of the cord"
    assert segment_kind(item) == SegmentKind.WM


def test_lesion_category_keeps_a_segment_a_lesion_whatever_its_label() -> None:
    item = _description(1, "cord", TISSUE, category=ABNORMAL)
    assert segment_kind(item) == SegmentKind.LESION


def test_a_label_naming_grey_and_white_matter_is_refused() -> None:
    with pytest.raises(ReaderLesionError, match="segment 1: 'GM/WM' names both grey and white"):
        segment_kind(_description(1, "GM/WM", TISSUE))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("slab1_cord", SegmentKind.CORD),
        ("sub-01_desc-gm_mask", SegmentKind.GM),
        ("slab2-WM", SegmentKind.WM),
        ("MS plaque", SegmentKind.LESION),
        ("slab1_lesions", SegmentKind.LESION),
        ("according", None),  # "cord" inside a word is not the cord
        ("sigma", None),
    ],
)
def test_kind_from_text(text: str, expected: SegmentKind | None) -> None:
    assert kind_from_text(text) == expected


# --- SEG with tissue and lesion segments -----------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Exam:
    return _write_exam(tmp_path_factory.mktemp("small"), enhanced=False)


def test_seg_with_cord_and_lesion_gives_one_lesion_and_the_cord(small: Exam) -> None:
    volume = small.volumes[0]
    cord = _truth(small.truth_dir, 1, "cord") > 0
    lesion = small.truths[0] == int(np.unique(small.truths[0][small.truths[0] > 0])[0])
    seg = _reader_seg(volume, [("lesion 1", LESION, lesion), ("Spinal cord", CORD, cord)])

    labels = lesions_from_seg(seg, small.volumes)
    assert sorted(np.unique(labels[0]).tolist()) == [0, 1]  # one lesion, not two
    np.testing.assert_array_equal(labels[0] > 0, lesion)
    assert not labels[1].any()

    given = masks_from_seg(read_seg(seg, small.volumes))
    assert given[1] is None  # nothing outlined on slab 2
    assert given[0] is not None and given[0].kinds == ("cord",)
    np.testing.assert_array_equal(given[0].cord, cord)
    assert given[0].describe() == f"reader SEG {seg.SOPInstanceUID} (cord)"


def test_seg_of_tissue_only_has_no_lesions(small: Exam) -> None:
    gm = _truth(small.truth_dir, 1, "gm") > 0
    wm = _truth(small.truth_dir, 1, "wm") > 0
    seg = _reader_seg(small.volumes[0], [("GM", TISSUE, gm), ("WM", TISSUE, wm)])
    assert not any(labels.any() for labels in lesions_from_seg(seg, small.volumes))
    given = masks_from_seg(read_seg(seg, small.volumes))[0]
    assert given is not None and given.kinds == ("gm", "wm")
    np.testing.assert_array_equal(given.whole_cord(), gm | wm)


# --- how given masks combine ------------------------------------------------------------------


def _disc(shape: tuple[int, int, int], radius: float, centre: tuple[float, float]) -> BoolArray:
    jj, ii = np.mgrid[: shape[1], : shape[2]]
    disc = np.hypot(jj - centre[0], ii - centre[1]) <= radius
    return np.broadcast_to(disc, shape).copy()


def test_given_gm_makes_wm_the_rest_of_the_cord() -> None:
    cord = _disc((3, 20, 20), 6, (10, 10))
    gm = _disc((3, 20, 20), 2, (10, 10))
    given = GivenMasks(cord=cord, gm=gm | _disc((3, 20, 20), 1, (1, 1)), ids=("1.2",))
    segmentation = given.cord_segmentation(lambda: pytest.fail("automatic cord not needed"))
    result = given.grey_matter(segmentation.cord)
    assert result is not None
    grey, slices = result
    np.testing.assert_array_equal(grey, gm)  # GM outside the cord is dropped
    assert slices.all() and given.covers_grey_matter(segmentation.cord)
    np.testing.assert_allclose(segmentation.centre_ji, np.full((3, 2), 10.0))
    assert given.describe() == "reader SEG 1.2 (cord, gm)"


def test_given_gm_and_wm_without_cord_make_the_cord() -> None:
    gm = _disc((2, 20, 20), 2, (8, 9))
    wm = _disc((2, 20, 20), 5, (8, 9)) & ~gm
    given = GivenMasks(gm=gm, wm=wm, origin="reader NIfTI", ids=("a_gm.nii", "a_wm.nii"))
    np.testing.assert_array_equal(given.whole_cord(), gm | wm)
    assert given.describe() == "reader NIfTI a_gm.nii, a_wm.nii (gm, wm)"


def test_partial_cord_takes_the_automatic_cord_on_the_other_slices() -> None:
    shape = (4, 20, 20)
    automatic_cord = _disc(shape, 5, (12, 12))
    automatic = CordSegmentation(
        cord=automatic_cord,
        csf=np.zeros(shape, bool),
        centre_ji=np.full((4, 2), 12.0),
        found=np.ones(4, bool),
        notes=(),
    )
    given_cord = _disc(shape, 4, (8, 8))
    given_cord[2:] = False
    given = GivenMasks(cord=given_cord, ids=("1.2",))
    calls: list[int] = []

    def run() -> CordSegmentation:
        calls.append(1)
        return automatic

    segmentation = given.cord_segmentation(run)
    assert calls == [1]
    np.testing.assert_array_equal(segmentation.cord[:2], given_cord[:2])
    np.testing.assert_array_equal(segmentation.cord[2:], automatic_cord[2:])
    np.testing.assert_allclose(segmentation.centre_ji[:, 0], [8, 8, 12, 12])
    assert segmentation.found.all()
    assert given.describe() == "reader SEG 1.2 (cord); automatic on slice(s) k = 2, 3"
    with pytest.raises(ValueError, match="automatic segmentation is needed"):
        segmentation_with_given_cord(given_cord, None)


def test_nifti_mask_names_and_values(small: Exam, tmp_path: Path) -> None:
    assert mask_kind_of_file(Path("slab1_cord.nii.gz")) == SegmentKind.CORD
    assert mask_kind_of_file(Path("sub-01_gm.nii")) == SegmentKind.GM
    for name in ("slab1_lesions.nii.gz", "slab1_t1.nii.gz"):
        with pytest.raises(ReaderLesionError, match="cord, gm or wm"):
            mask_kind_of_file(Path(name))
    image = nib.load(small.truth_dir / "slab1_lesions.nii.gz")  # labels 1..N: not binary
    if np.asarray(image.dataobj).max() > 1:
        with pytest.raises(ReaderLesionError, match="send a binary mask"):
            mask_from_nifti(image, small.volumes[0], SegmentKind.GM)
    cord = mask_from_nifti(
        nib.load(small.truth_dir / "slab1_cord.nii.gz"), small.volumes[0], SegmentKind.CORD
    )
    np.testing.assert_array_equal(cord, _truth(small.truth_dir, 1, "cord") > 0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sub-01_T2star_seg.nii.gz", SegmentKind.CORD),  # sct_deepseg_sc / sct_propseg
        ("sub-01_T2star_gmseg.nii.gz", SegmentKind.GM),  # sct_deepseg_gm
        ("sub-01_T2star_wmseg.nii", SegmentKind.WM),  # sct_maths: cord minus GM
        ("sub-01_UNIT1_label-SC_seg.nii.gz", SegmentKind.CORD),  # BIDS derivatives naming
        ("sub-01_UNIT1_label-GM_seg.nii", SegmentKind.GM),
        ("sub-01_UNIT1_label-WM_seg.nii.gz", SegmentKind.WM),
        ("SUB-01_T2STAR_GMSEG.nii.gz", SegmentKind.GM),
        ("slab1_gm_seg.nii.gz", SegmentKind.GM),  # our own word wins over the plain _seg
        ("sub-01_T2star_gmseg-manual.nii.gz", SegmentKind.GM),  # spine-generic corrections
        ("sub-01_T1w_seg-manual.nii.gz", SegmentKind.CORD),
    ],
)
def test_spinal_cord_toolbox_mask_names(name: str, expected: SegmentKind) -> None:
    assert mask_kind_of_file(Path(name)) == expected


@pytest.mark.parametrize(
    "name",
    ["sub-01_lesion_seg.nii.gz", "sub-01_label-lesion_seg.nii.gz", "sub-01_T2star.nii.gz"],
)
def test_names_that_are_no_tissue_mask_stay_refused(name: str) -> None:
    with pytest.raises(ReaderLesionError, match="Spinal Cord Toolbox name"):
        mask_kind_of_file(Path(name))


# --- the pipeline on given masks ------------------------------------------------------------


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory) -> PhantomExam:
    return make_exams(tmp_path_factory.mktemp("masks"), patients=1, seed=5)[0]


def _nifti(out_dir: Path, name: str) -> NDArray[np.int32]:
    data, _ = from_nifti(nib.load(out_dir / "nifti" / name))
    return np.asarray(data).astype(np.int32)


@pytest.mark.slow
def test_masks_sent_as_seg_with_the_exam_replace_the_segmentation(
    patient: PhantomExam, tmp_path: Path
) -> None:
    """Slab 1: cord, GM, WM and the lesions in one SEG. Slab 2: cord and GM on the first four
    slices only (the rest automatic)."""
    copy = tmp_path / "exam"
    shutil.copytree(patient.root, copy)
    series = find_exam_series(sorted((copy / "dicom").rglob("*.dcm")))[patient.study_uid]
    uids = {}
    for slab in match_slabs(series):
        k = slab.index
        cord, gm, wm = (_truth(copy / "truth", k, name) > 0 for name in ("cord", "gm", "wm"))
        lesions = _truth(copy / "truth", k, "lesions")
        if k == 1:
            segments = [("Spinal cord", CORD, cord), ("Gray matter", GM, gm), ("WM", WM, wm)]
            segments += [(f"lesion {n}", LESION, lesions == n) for n in np.unique(lesions) if n]
        else:
            cord[4:], gm[4:] = False, False
            segments = [("cord", TISSUE, cord), ("grey matter", TISSUE, gm)]
        seg = _reader_seg(slab.reference, segments)
        seg.save_as(copy / "dicom" / f"reader_seg_slab{k}.dcm")
        uids[k] = str(seg.SOPInstanceUID)
    exam = find_exam_series(sorted((copy / "dicom").rglob("*.dcm")))[patient.study_uid]
    out = tmp_path / "out"
    summary = process_exam(
        exam,
        out,
        profiles=load_site_protocols(patient.site_protocols),
        identity=result_identity(Settings()),
    ).summary

    sources = {s["slab"]: s["segmentation_source"] for s in summary["slabs"]}
    assert sources == {
        1: f"reader SEG {uids[1]} (cord, gm, wm)",
        2: f"reader SEG {uids[2]} (cord, gm); automatic on slice(s) k = 4, 5",
    }
    for name in ("cord", "gm", "wm"):
        np.testing.assert_array_equal(
            _nifti(out, f"slab1_{name}.nii.gz"), _truth(patient.truth_dir, 1, name)
        )
    for name in ("cord", "gm"):
        np.testing.assert_array_equal(
            _nifti(out, f"slab2_{name}.nii.gz")[:4], _truth(patient.truth_dir, 2, name)[:4]
        )
    assert _nifti(out, "slab2_cord.nii.gz")[4:].any()  # automatic where nothing was given
    assert summary["slabs"][0]["gm_wm_evidence"]["source"] == "given masks"
    truth_lesions = len([n for n in np.unique(_truth(patient.truth_dir, 1, "lesions")) if n])
    reader = [les for les in summary["lesions"] if les["source"] == "reader"]
    assert len(reader) == truth_lesions  # the cord, GM and WM segments are no lesions


@pytest.mark.slow
def test_qc_judges_the_given_cord(patient: PhantomExam, tmp_path: Path) -> None:
    """A given cord far too small on one slice is what QC warns about."""
    copy = tmp_path / "exam"
    shutil.copytree(patient.root, copy)
    series = find_exam_series(sorted((copy / "dicom").rglob("*.dcm")))[patient.study_uid]
    slab = match_slabs(series)[0]
    cord = _truth(copy / "truth", 1, "cord") > 0
    jj, ii = (int(np.median(a)) for a in np.nonzero(cord[0]))
    cord[0] = False
    cord[0, jj - 2 : jj + 2, ii - 2 : ii + 2] = True  # 16 voxels, a few mm^2
    _reader_seg(slab.reference, [("cord", CORD, cord)]).save_as(copy / "dicom" / "seg.dcm")
    exam = find_exam_series(sorted((copy / "dicom").rglob("*.dcm")))[patient.study_uid]
    summary = process_exam(
        exam,
        tmp_path / "out",
        profiles=load_site_protocols(patient.site_protocols),
        identity=result_identity(Settings()),
    ).summary
    assert any("cord area outside" in reason for reason in summary["qc"]["reasons"])
    np.testing.assert_array_equal(_nifti(tmp_path / "out", "slab1_cord.nii.gz"), cord)


@pytest.mark.slow
def test_process_cli_uses_nifti_masks(patient: PhantomExam, tmp_path: Path) -> None:
    """``--masks`` with GM and WM only: the cord is their union."""
    masks = tmp_path / "masks"
    masks.mkdir()
    for k in (1, 2):
        for name in ("gm", "wm"):
            shutil.copy(patient.truth_dir / f"slab{k}_{name}.nii.gz", masks)
    argv = ["process", str(patient.dicom_dir), "--out", str(tmp_path / "out")]
    argv += ["--site-protocols", str(patient.site_protocols), "--masks", str(masks)]
    assert main(argv) == 0
    out = tmp_path / "out" / patient.study_uid
    summary = json.loads((out / "summary.json").read_text())
    assert [s["segmentation_source"] for s in summary["slabs"]] == [
        f"reader NIfTI slab{k}_gm.nii.gz, slab{k}_wm.nii.gz (gm, wm)" for k in (1, 2)
    ]
    for k in (1, 2):
        for name in ("cord", "gm", "wm"):
            np.testing.assert_array_equal(
                _nifti(out, f"slab{k}_{name}.nii.gz"), _truth(patient.truth_dir, k, name)
            )


@pytest.mark.slow
def test_process_cli_takes_masks_under_spinal_cord_toolbox_names(
    patient: PhantomExam, tmp_path: Path
) -> None:
    """Slab 1 as sct_deepseg_sc/_gm name them, slab 2 with BIDS ``label-`` names."""
    masks = tmp_path / "sct"
    masks.mkdir()
    names = {
        (1, "cord"): "sub-01_acq-top_T2star_seg.nii.gz",
        (1, "gm"): "sub-01_acq-top_T2star_gmseg.nii.gz",
        (2, "cord"): "sub-01_acq-bottom_UNIT1_label-SC_seg.nii.gz",
        (2, "wm"): "sub-01_acq-bottom_UNIT1_label-WM_seg.nii.gz",
    }
    for (k, tissue), name in names.items():
        shutil.copy(patient.truth_dir / f"slab{k}_{tissue}.nii.gz", masks / name)
    argv = ["process", str(patient.dicom_dir), "--out", str(tmp_path / "out")]
    argv += ["--site-protocols", str(patient.site_protocols), "--masks", str(masks)]
    assert main(argv) == 0
    out = tmp_path / "out" / patient.study_uid
    summary = json.loads((out / "summary.json").read_text())
    sources = [s["segmentation_source"] for s in summary["slabs"]]
    assert sources[0].startswith("reader NIfTI") and sources[0].endswith("(cord, gm)")
    assert sources[1].startswith("reader NIfTI") and sources[1].endswith("(cord, wm)")
    for k in (1, 2):
        for name in ("cord", "gm", "wm"):
            np.testing.assert_array_equal(
                _nifti(out, f"slab{k}_{name}.nii.gz"), _truth(patient.truth_dir, k, name)
            )


def test_process_cli_refuses_a_mask_file_without_a_tissue_name(
    patient: PhantomExam, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mask = tmp_path / "slab1_outline.nii.gz"
    shutil.copy(patient.truth_dir / "slab1_cord.nii.gz", mask)
    argv = ["process", str(patient.dicom_dir), "--out", str(tmp_path / "out")]
    argv += ["--site-protocols", str(patient.site_protocols), "--masks", str(mask)]
    assert main(argv) == 1
    assert "must say which tissue it holds (cord, gm or wm)" in capsys.readouterr().out
