"""Cord and GM/WM segmentation against the phantom truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.bench_segmentation import PhantomSlab, dice, load_phantom_exam
from processing.segmentation import (
    CordSegmentation,
    SegmentationSettings,
    fit_tissue_mixture,
    segment_cord,
    split_gm_wm,
)
from processing.template import cord_coordinates, gm_prior_from_controls
from service.phantom import PhantomOptions, write_cohort
from service.pipeline.atlas import pam50_gm_prior


def phantom_exams(
    factory: pytest.TempPathFactory, name: str, *, seed: int, **options: object
) -> list[list[PhantomSlab]]:
    """Exams (control + patient) of a phantom cohort, generated once per test session."""
    root = factory.getbasetemp() / f"seg-cohort-{name}"
    if not (root / "cohort.json").exists():
        opts = PhantomOptions(scanner_t1_map=False, **options)  # type: ignore[arg-type]
        write_cohort(root, controls=1, patients=1, follow_up=False, seed=seed, options=opts)
    return [
        load_phantom_exam(exam, root / "site-protocols.toml")
        for exam in sorted(Path(root).glob("*/exam-1"))
    ]


@pytest.fixture(scope="session")
def small_exams(tmp_path_factory: pytest.TempPathFactory) -> list[list[PhantomSlab]]:
    return phantom_exams(tmp_path_factory, "small", seed=5, matrix=160, slices_per_slab=4, slabs=2)


@pytest.fixture(scope="session")
def oblique_exams(tmp_path_factory: pytest.TempPathFactory) -> list[list[PhantomSlab]]:
    return phantom_exams(
        tmp_path_factory,
        "oblique",
        seed=8,
        matrix=256,
        slices_per_slab=4,
        slabs=1,
        oblique_deg=15.0,
        snr=25.0,
    )


def _segment_all(slab: PhantomSlab, prior_grid: np.ndarray | None = None):
    seg = segment_cord(slab.t1_ms, slab.voxel_mm, inv2=slab.inv2)
    coords = cord_coordinates(
        seg.cord, seg.centre_ji, slab.affine_lps, slab=slab.index, n_slabs=slab.n_slabs
    )
    # the product's prior: PAM50 GM probability by level (see
    # service.pipeline.quantify.split_tissues)
    grid = prior_grid if prior_grid is not None else pam50_gm_prior(slab.n_slabs)
    gm, wm = split_gm_wm(slab.t1_ms, seg.cord, coords.sample(grid), voxel_mm=slab.voxel_mm)
    return seg, coords, gm, wm


def test_cord_found_on_every_slice_with_high_dice(small_exams, oblique_exams) -> None:
    for exam in small_exams + oblique_exams:
        for slab in exam:
            for inv2 in (slab.inv2, None):  # with and without the INV2 signal mask
                seg = segment_cord(slab.t1_ms, slab.voxel_mm, inv2=inv2)
                assert seg.found.all(), seg.notes
                assert dice(seg.cord, slab.truth["cord"]) >= 0.90
                assert not (seg.cord & seg.csf).any()
                assert dice(seg.csf & slab.truth["csf"], seg.csf) > 0.7  # CSF really is CSF


def test_centre_follows_the_truth(small_exams) -> None:
    slab = small_exams[0][0]
    seg = segment_cord(slab.t1_ms, slab.voxel_mm)
    for k in range(slab.t1_ms.shape[0]):
        jj, ii = np.nonzero(slab.truth["cord"][k])
        error_mm = np.hypot(seg.centre_ji[k, 0] - jj.mean(), seg.centre_ji[k, 1] - ii.mean())
        assert error_mm * slab.voxel_mm[1] < 0.3


def test_flipped_image_gives_the_flipped_cord(small_exams) -> None:
    slab = small_exams[1][0]
    seg = segment_cord(slab.t1_ms, slab.voxel_mm)
    flipped = segment_cord(slab.t1_ms[:, :, ::-1], slab.voxel_mm)
    assert dice(flipped.cord[:, :, ::-1], seg.cord) > 0.98


def test_slice_without_cord_is_reported(small_exams) -> None:
    slab = small_exams[0][0]
    t1 = slab.t1_ms.copy()
    csf_t1 = float(np.median(t1[slab.truth["csf"]]))
    t1[1][slab.truth["cord"][1]] = csf_t1  # slice 1: canal full of CSF, no cord
    t1[2] = 0.0  # slice 2: no signal at all
    seg = segment_cord(t1, slab.voxel_mm)
    assert seg.found.tolist() == [True, False, False, True]
    assert np.isnan(seg.centre_ji[1:3]).all() and not seg.cord[1:3].any()
    assert any("slice 1" in note for note in seg.notes)
    assert any("slice 2" in note for note in seg.notes)


def test_no_cord_anywhere_is_reported() -> None:
    rng = np.random.default_rng(0)
    t1 = rng.uniform(100, 4500, size=(3, 64, 64))  # air: T1 is noise
    seg = segment_cord(t1, (4.0, 0.3, 0.3))
    assert not seg.found.any() and seg.notes


def test_noise_robustness_on_a_synthetic_slab() -> None:
    """Cord 75 mm^2 in a CSF ring, T1 noise 70 ms in tissue, the cord drifts 1 mm/slice."""
    rng = np.random.default_rng(3)
    jj, ii = np.mgrid[:120, :120]
    slices = []
    truth = []
    for k in range(6):
        r = np.hypot((jj - 60) / 1.2, ii - 55 - 3 * k) * 0.3  # ellipse 5.8 x 4.8 mm
        cord = r < 4.8
        t1 = np.where(cord, 1250.0, np.where(r < 8.0, 3600.0, 1600.0))
        slices.append(t1 + rng.normal(0, 70, t1.shape) * np.where(cord, 1, 3))
        truth.append(cord)
    seg = segment_cord(np.stack(slices), (4.0, 0.3, 0.3))
    assert seg.found.all()
    assert dice(seg.cord, np.stack(truth)) > 0.93


def test_cord_close_to_the_edge_of_the_field_of_view() -> None:
    """The outline is refined on a box around the cord; near the edge that box is clipped."""
    rng = np.random.default_rng(4)
    jj, ii = np.mgrid[:100, :140]
    r = np.hypot(jj - 29, ii - 110) * 0.3  # CSF ring ends 2 voxels from the top edge
    cord = r < 4.5
    t1 = np.where(cord, 1250.0, np.where(r < 8.1, 3600.0, 1600.0))
    t1 = t1 + rng.normal(0, 40, t1.shape)
    seg = segment_cord(np.stack([t1, t1]), (4.0, 0.3, 0.3))
    assert seg.found.all()
    assert dice(seg.cord[0], cord) > 0.95
    assert np.allclose(seg.centre_ji, [29, 110], atol=0.5)
    ring = seg.csf[0]
    assert ring.any() and not (ring & seg.cord[0]).any() and r[ring].max() < 8.5


def test_in_plane_opening_matches_scipy() -> None:
    from scipy import ndimage

    from processing.segmentation.cord import _open_in_plane

    rng = np.random.default_rng(0)
    for shape in [(3, 40, 50), (1, 6, 7), (2, 5, 5)]:
        mask = rng.random(shape) > 0.3
        expected = ndimage.binary_opening(mask, structure=np.ones((1, 3, 3)), iterations=2)
        assert np.array_equal(_open_in_plane(mask), expected)


def test_cord_box_holds_the_cord_with_its_margin() -> None:
    cord = np.zeros((3, 50, 60), bool)
    cord[1, 20:25, 2:9] = True
    seg = CordSegmentation(cord, cord, np.zeros((3, 2)), np.ones(3, bool), ())
    assert seg.box(4) == (slice(0, 3), slice(16, 29), slice(0, 13))
    assert CordSegmentation(cord & False, cord, np.zeros((3, 2)), cord[:, 0, 0], ()).box(4) is None
    with pytest.raises(ValueError, match="margin"):
        seg.box(-1)


def test_segment_cord_validates_input() -> None:
    with pytest.raises(ValueError, match="3-D"):
        segment_cord(np.zeros((64, 64)), (4.0, 0.3, 0.3))
    with pytest.raises(ValueError, match="voxel_mm"):
        segment_cord(np.zeros((2, 64, 64)), (4.0, 0.0, 0.3))
    with pytest.raises(ValueError, match="inv2"):
        segment_cord(np.zeros((2, 64, 64)), (4.0, 0.3, 0.3), inv2=np.zeros((2, 64, 63)))
    with pytest.raises(ValueError, match="area_mm2"):
        SegmentationSettings(area_mm2=(100.0, 50.0))


def test_mixture_ignores_lesions() -> None:
    rng = np.random.default_rng(1)
    t1 = np.r_[rng.normal(1310, 70, 2000), rng.normal(1190, 70, 8000), rng.normal(1900, 80, 900)]
    prior = np.r_[np.full(2000, 0.7), np.full(8000, 0.15), np.full(900, 0.2)]
    mixture = fit_tissue_mixture(t1, prior)
    assert abs(mixture.gm_ms - 1310) < 35 and abs(mixture.wm_ms - 1190) < 25


def test_gm_wm_split_with_the_pam50_prior(small_exams, oblique_exams) -> None:
    """On real cord shapes the PAM50 prior split meets the issue's target (GM Dice >= 0.80)."""
    scores = []
    for exam in small_exams + oblique_exams:
        for slab in exam:
            seg, _, gm, wm = _segment_all(slab)
            assert not (gm & wm).any() and np.array_equal(gm | wm, seg.cord)
            assert dice(wm, slab.truth["wm"]) >= 0.85
            scores.append(dice(gm, slab.truth["gm"]))
            # GM is the butterfly: about 15-30 % of the cross-section
            assert 0.12 < gm.sum() / seg.cord.sum() < 0.32
    assert min(scores) >= 0.7, scores
    assert np.mean(scores) >= 0.80, scores


def test_gm_split_with_a_prior_learned_from_other_controls(
    small_exams, oblique_exams, tmp_path_factory
) -> None:
    """A prior learned from other subjects (shrunk towards PAM50, as ``model build`` does)."""
    training = phantom_exams(
        tmp_path_factory, "training", seed=21, matrix=160, slices_per_slab=4, slabs=2
    )
    controls = []
    for exam in training:
        for slab in exam:
            seg = segment_cord(slab.t1_ms, slab.voxel_mm)
            coords = cord_coordinates(seg.cord, seg.centre_ji, slab.affine_lps, slab=slab.index,
                                      n_slabs=slab.n_slabs)  # fmt: skip
            controls.append((coords, slab.truth["gm"] & seg.cord))
    learned = gm_prior_from_controls(controls, base_prior=pam50_gm_prior(2))
    scores = []
    for exam in small_exams:
        for slab in exam:
            _, _, gm, wm = _segment_all(slab, learned)
            scores.append(dice(gm, slab.truth["gm"]))
            assert dice(wm, slab.truth["wm"]) >= 0.85
    assert np.mean(scores) >= 0.80, scores
    # the split beats using the learned prior alone
    for slab in small_exams[0]:
        seg, coords, gm, _ = _segment_all(slab, learned)
        prior_only = seg.cord & (coords.sample(learned) > 0.5)
        assert dice(gm, slab.truth["gm"]) > dice(prior_only, slab.truth["gm"]) + 0.03


def test_split_validates_input() -> None:
    cord = np.zeros((1, 8, 8), dtype=bool)
    with pytest.raises(ValueError, match="one shape"):
        split_gm_wm(np.zeros((1, 8, 8)), cord, np.zeros((1, 8, 7)), voxel_mm=(4, 0.3, 0.3))
    gm, wm = split_gm_wm(np.zeros((1, 8, 8)), cord, np.zeros((1, 8, 8)), voxel_mm=(4, 0.3, 0.3))
    assert not gm.any() and not wm.any()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("seed", "matrix", "oblique", "snr"),
    [(31, 448, 0.0, 35.0), (32, 448, 15.0, 25.0), (33, 256, 0.0, 25.0)],
)
def test_full_size_exams(tmp_path_factory, seed, matrix, oblique, snr) -> None:
    import time

    exams = phantom_exams(
        tmp_path_factory, f"full-{seed}", seed=seed, matrix=matrix, slices_per_slab=12,
        slabs=2, oblique_deg=oblique, snr=snr,
    )  # fmt: skip
    for exam in exams:
        for slab in exam:
            start = time.perf_counter()
            seg, _, gm, wm = _segment_all(slab)
            elapsed = time.perf_counter() - start
            assert seg.found.all(), seg.notes
            assert dice(seg.cord, slab.truth["cord"]) >= 0.90
            assert dice(wm, slab.truth["wm"]) >= 0.85
            assert dice(gm, slab.truth["gm"]) >= 0.6
            assert elapsed < 6.0


def test_lesions_stay_inside_the_cord(small_exams, tmp_path_factory) -> None:
    """T1 rises in a lesion but stays well below CSF: the outline keeps the lesion inside."""
    import nibabel as nib

    from service.inputs.nifti import from_nifti

    patient = tmp_path_factory.getbasetemp() / "seg-cohort-small" / "patient-001" / "exam-1"
    lesion_voxels = inside = 0
    for slab in small_exams[1]:
        path = patient / "truth" / f"slab{slab.index}_lesions.nii.gz"
        lesions = from_nifti(nib.load(path))[0] > 0
        seg = segment_cord(slab.t1_ms, slab.voxel_mm, inv2=slab.inv2)
        lesion_voxels += int(lesions.sum())
        inside += int((lesions & seg.cord).sum())
    assert lesion_voxels > 0  # the patient has lesions in these slabs
    assert inside >= 0.95 * lesion_voxels
