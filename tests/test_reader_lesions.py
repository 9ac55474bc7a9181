"""Reader lesion masks (DICOM SEG, NIfTI) -> label images on the slab grids."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from scipy import ndimage

from service.inputs.exam import Slab, find_exam_series, match_slabs
from service.inputs.nifti import from_nifti, to_nifti
from service.inputs.reader_lesions import ReaderLesionError, lesions_from_nifti, lesions_from_seg
from service.inputs.volumes import SeriesVolume
from service.phantom import PhantomOptions, write_cohort

SEED = 9  # two lesions in each slab, ids interleaved between the slabs (1, 4 | 2, 3)


@dataclass
class Exam:
    volumes: list[SeriesVolume]  # slab reference volumes, slab 1 first
    truths: list[NDArray[np.int16]]  # phantom lesion labels per slab, [k, j, i]
    truth_dir: Path


def _write_exam(root: Path, *, enhanced: bool) -> Exam:
    options = PhantomOptions(
        matrix=128, slices_per_slab=4, slabs=2, scanner_t1_map=False, enhanced=enhanced
    )
    write_cohort(root, controls=0, patients=1, follow_up=False, seed=SEED, options=options)
    exam_dir = root / "patient-001" / "exam-1"
    (exam,) = find_exam_series(sorted((exam_dir / "dicom").rglob("*.dcm"))).values()
    slabs: list[Slab] = match_slabs(exam)
    truths = []
    for slab in slabs:
        image = nib.load(exam_dir / "truth" / f"slab{slab.index}_lesions.nii.gz")
        labels, affine_lps = from_nifti(image)
        np.testing.assert_allclose(affine_lps, slab.reference.affine_lps, atol=1e-3)
        truths.append(labels)
    return Exam([slab.reference for slab in slabs], truths, exam_dir / "truth")


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Exam:
    return _write_exam(tmp_path_factory.mktemp("legacy"), enhanced=False)


@pytest.fixture(scope="module")
def enhanced(tmp_path_factory: pytest.TempPathFactory) -> Exam:
    return _write_exam(tmp_path_factory.mktemp("enhanced"), enhanced=True)


@pytest.fixture(params=["legacy", "enhanced"])
def exam(request: pytest.FixtureRequest) -> Exam:
    return request.getfixturevalue(request.param)


def _descriptions(count: int) -> list[hd.seg.SegmentDescription]:
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"lesion {number}",
            segmented_property_category=hd.sr.CodedConcept(
                "49755003", "SCT", "Morphologically Altered Structure"
            ),
            segmented_property_type=hd.sr.CodedConcept("52988006", "SCT", "Lesion"),
            algorithm_type="MANUAL",
        )
        for number in range(1, count + 1)
    ]


def _source_order(volume: SeriesVolume) -> NDArray[np.intp]:
    """Slice index k of each source plane (legacy: datasets order; enhanced: frame order)."""
    frames = [frame for _, frame in volume.frame_sources]
    if frames[0] is None:
        return np.arange(len(frames))
    return np.argsort(np.asarray(frames))


def _seg(
    volume: SeriesVolume,
    masks: NDArray[np.floating] | NDArray[np.bool_],
    *,
    segmentation_type: str = "BINARY",
    further: list[SeriesVolume] | None = None,
    further_masks: list[NDArray[np.bool_]] | None = None,
) -> Dataset:
    """A SEG as a reader's workstation would send it, read back from its encoded bytes.

    ``masks`` is ``[k, j, i, segment]`` on ``volume``. Without ``further`` the frames reference
    their source images (highdicom's default); with ``further`` the SEG also covers those
    volumes and gives explicit plane positions, so no frame carries source references.
    """
    if further is None:
        pixels = masks[_source_order(volume)]
        positions = None
        further_sources = None
    else:
        stacks = [masks, *(further_masks or [])]
        volumes = [volume, *further]
        pixels = np.concatenate(stacks)
        positions = [
            hd.PlanePositionSequence("PATIENT", (v.affine_lps @ [k, 0, 0, 1])[:3])
            for v in volumes
            for k in range(v.array.shape[0])
        ]
        further_sources = [ds for v in further for ds in v.datasets]
    seg = hd.seg.Segmentation(
        source_images=volume.datasets,
        further_source_images=further_sources,
        pixel_array=pixels if segmentation_type == "FRACTIONAL" else pixels.astype(np.uint8),
        plane_positions=positions,
        segmentation_type=segmentation_type,
        segment_descriptions=_descriptions(masks.shape[-1]),
        series_instance_uid=hd.UID(),
        series_number=900,
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


def _one_hot(labels: NDArray[np.integer], ids: list[int]) -> NDArray[np.bool_]:
    return np.stack([labels == lesion_id for lesion_id in ids], axis=-1)


def _exam_ids(exam: Exam) -> list[int]:
    return sorted({int(v) for truth in exam.truths for v in np.unique(truth) if v})


def _ranked(truth: NDArray[np.integer]) -> NDArray[np.int32]:
    """Truth labels renumbered 1..N in id order (the lesion ids of a one-slab SEG)."""
    ranked = np.zeros(truth.shape, dtype=np.int32)
    for rank, lesion_id in enumerate(sorted(int(v) for v in np.unique(truth) if v), start=1):
        ranked[truth == lesion_id] = rank
    return ranked


def _two_slab_seg(exam: Exam) -> Dataset:
    ids = _exam_ids(exam)
    return _seg(
        exam.volumes[0],
        _one_hot(exam.truths[0], ids),
        further=[exam.volumes[1]],
        further_masks=[_one_hot(exam.truths[1], ids)],
    )


def _reversed(volume: SeriesVolume) -> SeriesVolume:
    """The same slices indexed the other way round (k -> n-1-k), a valid grid of its own."""
    n = volume.array.shape[0]
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, n - 1.0
    multiframe = volume.frame_sources[0][1] is not None
    return replace(
        volume,
        array=volume.array[::-1].copy(),
        affine_lps=volume.affine_lps @ flip,
        datasets=volume.datasets if multiframe else volume.datasets[::-1],
        frame_sources=volume.frame_sources[::-1],
    )


def _frame_positions_shift(seg: Dataset, shift_mm: float, frames: list[int] | None = None) -> None:
    for number, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        if frames is None or number in frames:
            position = item.PlanePositionSequence[0]
            x, y, z = (float(v) for v in position.ImagePositionPatient)
            position.ImagePositionPatient = [x, y, z + shift_mm]


def _has_frame_references(seg: Dataset) -> bool:
    return any(
        derivation.get("SourceImageSequence")
        for item in seg.PerFrameFunctionalGroupsSequence
        for derivation in item.get("DerivationImageSequence") or []
    )


# --- SEG -> labels -------------------------------------------------------------------------


def test_seg_over_both_slabs_gives_the_truth_labels_of_each_slab(exam: Exam) -> None:
    seg = _two_slab_seg(exam)
    assert not _has_frame_references(seg)  # placed by PlanePositionSequence alone

    labels = lesions_from_seg(seg, exam.volumes)

    assert len(labels) == 2
    for result, truth, volume in zip(labels, exam.truths, exam.volumes, strict=True):
        assert result.dtype == np.int32
        assert result.shape == volume.array.shape
        np.testing.assert_array_equal(result, truth)
    assert all(np.any(truth) for truth in exam.truths)


def test_seg_of_one_slab_leaves_the_other_slab_empty(exam: Exam) -> None:
    slab2 = exam.volumes[1]
    ids = sorted(int(v) for v in np.unique(exam.truths[1]) if v)
    seg = _seg(slab2, _one_hot(exam.truths[1], ids))
    assert _has_frame_references(seg)

    slab1_labels, slab2_labels = lesions_from_seg(seg, exam.volumes)

    assert not slab1_labels.any()
    np.testing.assert_array_equal(slab2_labels, _ranked(exam.truths[1]))


def test_frame_references_decide_the_slice_even_against_the_positions(exam: Exam) -> None:
    """Per-frame source references (with frame numbers for enhanced) place the frames."""
    slab1 = exam.volumes[0]
    ids = sorted(int(v) for v in np.unique(exam.truths[0]) if v)
    seg = _seg(slab1, _one_hot(exam.truths[0], ids))
    _frame_positions_shift(seg, 500.0)  # geometry alone would match nothing
    reversed_slab1 = _reversed(slab1)

    labels, _ = lesions_from_seg(seg, [reversed_slab1, exam.volumes[1]])

    np.testing.assert_array_equal(labels, _ranked(exam.truths[0])[::-1])


def test_enhanced_reference_without_frame_number_is_placed_by_position(enhanced: Exam) -> None:
    """A reference to the whole multi-frame instance leaves the slice to the frame position."""
    slab1 = enhanced.volumes[0]
    ids = sorted(int(v) for v in np.unique(enhanced.truths[0]) if v)
    seg = _seg(slab1, _one_hot(enhanced.truths[0], ids))
    for item in seg.PerFrameFunctionalGroupsSequence:
        del item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber

    labels, _ = lesions_from_seg(seg, enhanced.volumes)

    np.testing.assert_array_equal(labels, _ranked(enhanced.truths[0]))


def test_overlapping_segments_later_segment_wins(legacy: Exam) -> None:
    volume = legacy.volumes[0]
    first = np.zeros(volume.array.shape, dtype=bool)
    second = np.zeros(volume.array.shape, dtype=bool)
    first[1:3, 40:60, 40:60] = True
    second[2:4, 50:70, 50:70] = True
    seg = _seg(volume, np.stack([first, second], axis=-1))

    labels, _ = lesions_from_seg(seg, legacy.volumes)

    assert np.all(labels[second] == 2)
    assert np.all(labels[first & ~second] == 1)
    assert not labels[~(first | second)].any()


def test_fractional_seg_is_thresholded_at_one_half(legacy: Exam) -> None:
    volume, truth = legacy.volumes[1], legacy.truths[1]
    ids = sorted(int(v) for v in np.unique(truth) if v)
    lesions = _one_hot(truth, ids)
    halo = np.stack(
        [
            ndimage.binary_dilation(lesions[..., s], iterations=2) & ~lesions[..., s]
            for s in (0, 1)
        ],
        axis=-1,
    )
    probability = np.where(lesions, 0.7, np.where(halo, 0.3, 0.0)).astype(np.float32)
    seg = _seg(volume, probability, segmentation_type="FRACTIONAL")
    assert seg.SegmentationType == "FRACTIONAL"

    _, labels = lesions_from_seg(seg, legacy.volumes)

    np.testing.assert_array_equal(labels, _ranked(truth))


# --- SEG errors ----------------------------------------------------------------------------


def test_seg_of_another_study_is_refused(legacy: Exam) -> None:
    seg = _two_slab_seg(legacy)
    other_study = generate_uid()
    seg.StudyInstanceUID = other_study

    with pytest.raises(ReaderLesionError, match="another exam") as error:
        lesions_from_seg(seg, legacy.volumes)
    assert other_study in str(error.value)
    assert seg.SOPInstanceUID in str(error.value)


@pytest.mark.parametrize("frame_references", [True, False])
def test_seg_drawn_on_a_slab_that_was_not_given_is_refused(
    legacy: Exam, frame_references: bool
) -> None:
    if frame_references:
        ids = sorted(int(v) for v in np.unique(legacy.truths[1]) if v)
        seg = _seg(legacy.volumes[1], _one_hot(legacy.truths[1], ids))
    else:  # only the Referenced Series Sequence names slab 2's images
        seg = _two_slab_seg(legacy)

    with pytest.raises(ReaderLesionError, match=r"image\(s\) not in the exam") as error:
        lesions_from_seg(seg, legacy.volumes[:1])
    slab2_uids = {uid for uid, _ in legacy.volumes[1].frame_sources}
    assert any(uid in str(error.value) for uid in slab2_uids)


def test_frame_referencing_an_unknown_image_is_refused(legacy: Exam) -> None:
    slab1 = legacy.volumes[0]
    ids = sorted(int(v) for v in np.unique(legacy.truths[0]) if v)
    seg = _seg(slab1, _one_hot(legacy.truths[0], ids))
    stranger = generate_uid()
    source = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    source.SourceImageSequence[0].ReferencedSOPInstanceUID = stranger

    expected = re.escape(f"frame 1, e.g. SOP instance {stranger}")
    with pytest.raises(ReaderLesionError, match=expected):
        lesions_from_seg(seg, legacy.volumes)


@pytest.mark.parametrize("with_references", [True, False])
def test_seg_frames_of_another_size_than_the_slab_are_refused(
    legacy: Exam, with_references: bool
) -> None:
    if with_references:
        ids = sorted(int(v) for v in np.unique(legacy.truths[0]) if v)
        seg = _seg(legacy.volumes[0], _one_hot(legacy.truths[0], ids))
    else:
        seg = _two_slab_seg(legacy)
    cropped = [replace(v, array=v.array[:, :96, :]) for v in legacy.volumes]

    with pytest.raises(ReaderLesionError, match=r"frames are 128x128 pixels .* 96x128"):
        lesions_from_seg(seg, cropped)


def test_seg_matching_no_slice_of_any_slab_is_refused(legacy: Exam) -> None:
    seg = _two_slab_seg(legacy)
    _frame_positions_shift(seg, 2.0)  # half a slice: between slices everywhere

    with pytest.raises(ReaderLesionError, match=r"none of its \d+ frames matches a slice"):
        lesions_from_seg(seg, legacy.volumes)


def test_lesion_frame_outside_the_slabs_is_refused_not_dropped(legacy: Exam) -> None:
    seg = _two_slab_seg(legacy)
    _frame_positions_shift(seg, 300.0, frames=[1])

    with pytest.raises(ReaderLesionError, match=r"frame 1 \(segment 1\) .* lies on no slice"):
        lesions_from_seg(seg, legacy.volumes)


def test_an_image_that_is_not_a_seg_is_refused(legacy: Exam) -> None:
    header = legacy.volumes[0].datasets[0]

    with pytest.raises(ReaderLesionError, match="is not a Segmentation"):
        lesions_from_seg(header, legacy.volumes)


# --- NIfTI -> labels -----------------------------------------------------------------------


def test_labelled_nifti_keeps_its_labels(legacy: Exam) -> None:
    image = nib.load(legacy.truth_dir / "slab2_lesions.nii.gz")  # as written by the phantom

    labels = lesions_from_nifti(image, legacy.volumes[1])

    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, legacy.truths[1])
    assert set(np.unique(labels)) == {0, 2, 3}


def test_binary_nifti_is_split_into_26_connected_lesions(legacy: Exam, tmp_path: Path) -> None:
    volume = legacy.volumes[0]
    mask = np.zeros(volume.array.shape, dtype=np.uint8)
    mask[0, 10, 10] = mask[1, 11, 11] = 1  # corner neighbours: one lesion with 26-connectivity
    mask[3, 60:63, 60:64] = 1
    path = tmp_path / "reader.nii.gz"
    nib.save(to_nifti(mask, volume.affine_lps), path)

    labels = lesions_from_nifti(nib.load(path), volume)

    assert labels[0, 10, 10] == labels[1, 11, 11] == 1
    assert np.all(labels[3, 60:63, 60:64] == 2)
    assert np.count_nonzero(labels) == 2 + 12


def test_nifti_on_another_grid_is_refused_naming_both_grids(legacy: Exam) -> None:
    volume = legacy.volumes[0]
    shifted = volume.affine_lps.copy()
    shifted[2, 3] += 1.0
    image = to_nifti(np.zeros(volume.array.shape, dtype=np.uint8), shifted)

    with pytest.raises(ReaderLesionError, match="differs from the grid") as error:
        lesions_from_nifti(image, volume)
    message = str(error.value)
    assert volume.series_uid in message
    assert message.count("shape (4, 128, 128)") == 2


def test_nifti_within_tolerance_is_accepted_and_other_shapes_are_not(legacy: Exam) -> None:
    volume = legacy.volumes[0]
    nudged = volume.affine_lps.copy()
    nudged[0, 3] += 0.05
    mask = (legacy.truths[0] > 0).astype(np.uint8)

    labels = lesions_from_nifti(to_nifti(mask, nudged), volume, tol_mm=0.1)
    assert np.array_equal(labels > 0, mask > 0)

    with pytest.raises(ReaderLesionError, match=r"shape \(3, 128, 128\)"):
        lesions_from_nifti(to_nifti(mask[:3], volume.affine_lps), volume)


def test_nifti_with_fractions_is_refused(legacy: Exam) -> None:
    volume = legacy.volumes[0]
    image = to_nifti(np.full(volume.array.shape, 0.4, dtype=np.float32), volume.affine_lps)

    with pytest.raises(ReaderLesionError, match="non-integer"):
        lesions_from_nifti(image, volume)
