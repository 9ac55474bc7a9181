"""PAM50 atlas priors: regions and GM prior from the field's standard atlas."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from benchmarks.bench_segmentation import dice
from processing.atlas import Pam50Priors, fit_prior_warp, label_regions_atlas
from processing.regions import REGIONS, estimate_levels, region_masks
from processing.segmentation import segment_cord, split_gm_wm
from processing.template import (
    cord_coordinates,
    geometric_gm_prior,
    gm_prior_from_controls,
    template_shape,
)
from service.pipeline.atlas import build_pam50_priors, load_pam50_priors, pam50_gm_prior, pam50_lps
from service.pipeline.reference_data import load_pam50
from tests.test_segmentation import phantom_exams

SHARED_T2S = Path(__file__).resolve().parents[2] / "shared" / "data" / "sct-testing" / "t2s"


@pytest.fixture(scope="module")
def pam50_slab():
    """Mid-C4 to mid-C5 of the PAM50 template as a slab in the project's convention."""
    cord, gm, regions, levels, affine = pam50_lps(load_pam50())
    ks = np.nonzero(np.isin(levels, (4, 5)).any(axis=(1, 2)))[0][::4]
    return cord[ks], gm[ks], regions[:, ks], levels[ks], affine


def _atlas_labels(cord, gm_prob, levels, affine):
    gm = cord & (gm_prob > 0.5)
    wm = cord & ~gm
    centre = np.array([ndimage.center_of_mass(c) for c in cord])
    coords = cord_coordinates(cord, centre, affine, slab=1, n_slabs=1)
    slice_levels = np.array(
        [np.bincount(lv[c & (lv > 0)]).argmax() for lv, c in zip(levels, cord, strict=True)]
    )
    return coords, centre, label_regions_atlas(coords, gm, wm, slice_levels, load_pam50_priors())


def test_atlas_regions_on_a_pam50_cord_reproduce_pam50_shares(pam50_slab) -> None:
    cord, gm_prob, regions, levels, affine = pam50_slab
    _, _, labels = _atlas_labels(cord, gm_prob, levels, affine)
    keys = load_pam50().region_keys
    atlas_total = regions[:, cord].sum()
    for n, key in enumerate(keys):
        code = next(c for c, info in REGIONS.items() if info.key == key)
        ours = float(np.mean(labels[cord] == code))
        theirs = float(regions[n][cord].sum() / atlas_total)
        assert abs(ours - theirs) < 0.03, (key, ours, theirs)


def test_left_is_patient_left_in_the_atlas_and_in_our_labels(pam50_slab) -> None:
    pam50 = load_pam50()
    # the atlas itself: "left" tracts lie at RAS x < 0 (RAS +x is patient right)
    for n, key in enumerate(pam50.region_keys):
        i, _, k = np.nonzero(pam50.regions[n] > 0.3)
        x_ras = pam50.affine_ras[0, 0] * i + pam50.affine_ras[0, 3]
        centre_x = (
            pam50.affine_ras[0, 0] * np.nonzero(pam50.cord)[0].mean() + pam50.affine_ras[0, 3]
        )
        assert (x_ras.mean() < centre_x) == key.endswith("_left"), key
    # our labels: odd (left) codes at larger LPS x than the cord centre
    cord, gm_prob, _, levels, affine = pam50_slab
    _, centre, labels = _atlas_labels(cord, gm_prob, levels, affine)
    k, j, i = np.nonzero(labels > 0)
    x = affine[0] @ np.vstack([k, j, i, np.ones_like(k)])
    x_centre = affine[0] @ np.vstack([k, centre[k, 0], centre[k, 1], np.ones_like(k)])
    left = labels[k, j, i] % 2 == 1
    off = np.abs(x - x_centre) > 0.3  # voxels on the midline belong to either side
    assert np.mean(x[left & off] > x_centre[left & off]) > 0.99
    assert np.mean(x[~left & off] < x_centre[~left & off]) > 0.99


@pytest.fixture(scope="module")
def exams(tmp_path_factory):
    return phantom_exams(tmp_path_factory, "small", seed=5, matrix=160, slices_per_slab=4,
                         slabs=2)  # fmt: skip


def test_every_region_present_on_a_normal_slab_and_tissues_respected(exams) -> None:
    priors = load_pam50_priors()
    for slab in (exams[0][0], exams[0][1]):
        seg = segment_cord(slab.t1_ms, slab.voxel_mm)
        coords = cord_coordinates(seg.cord, seg.centre_ji, slab.affine_lps, slab=slab.index,
                                  n_slabs=slab.n_slabs)  # fmt: skip
        prior = coords.sample(pam50_gm_prior(slab.n_slabs))
        gm, wm = split_gm_wm(slab.t1_ms, seg.cord, prior, voxel_mm=slab.voxel_mm)
        levels = estimate_levels(coords, slab.n_slabs)
        labels = label_regions_atlas(coords, gm, wm, levels, priors)
        assert set(np.unique(labels)) == {0, *REGIONS}
        assert np.all((labels > 0) == seg.cord)
        assert set(np.unique(labels[gm])) <= {c for c, r in REGIONS.items() if r.tissue == "gm"}
        assert set(np.unique(labels[wm])) <= {c for c, r in REGIONS.items() if r.tissue == "wm"}
        masks = region_masks(labels, gm, wm, levels)
        share = masks["cord_left"].sum() / masks["cord"].sum()
        assert 0.4 < share < 0.6
        # dorsal columns posterior of the ventral funiculi in patient space (LPS +y)
        y = {}
        for codes in ((1, 2), (5, 6)):
            k, j, i = np.nonzero(np.isin(labels, codes))
            y[codes] = (slab.affine_lps[1] @ np.vstack([k, j, i, np.ones_like(k)])).mean()
        assert y[(1, 2)] > y[(5, 6)] + 2.0


def test_gm_prior_follows_the_levels_of_each_slab() -> None:
    priors = load_pam50_priors()
    grid = priors.gm_prior_template(2)
    assert grid.shape == template_shape(2)
    assert grid.min() >= 0.02 and grid.max() <= 0.95
    # slab 1 covers C1-C4, slab 2 C4-C7: its last bin is C7's prior, its first C4's
    assert np.allclose(grid[-1], np.clip(priors.gm[6], 0.02, 0.95))
    assert np.allclose(grid[4], np.clip(priors.gm[3], 0.02, 0.95))
    assert np.array_equal(pam50_gm_prior(2), grid)
    # grey commissure on the midline anterior of the centre (v = -0.3), WM at the edge and
    # in the dorsal columns behind it (v = +0.4)
    assert grid[2, 32, 24] > 0.6
    assert grid[2, 32, 5] == pytest.approx(0.02) and grid[2, 32, 42] == pytest.approx(0.02)


def test_shipped_priors_are_those_built_from_the_shipped_atlas() -> None:
    shipped = load_pam50_priors()
    built = build_pam50_priors()
    assert shipped.region_codes == built.region_codes
    assert np.abs(shipped.gm - built.gm).max() <= 1 / 255 + 1e-9
    assert np.abs(shipped.regions - built.regions).max() <= 1 / 255 + 1e-9


def test_priors_validate_their_shapes() -> None:
    priors = load_pam50_priors()
    with pytest.raises(ValueError, match="regions"):
        Pam50Priors(gm=priors.gm, regions=priors.regions[:11], region_codes=priors.region_codes)
    with pytest.raises(ValueError, match="region_codes"):
        Pam50Priors(gm=priors.gm, regions=priors.regions, region_codes=(1,) * 12)
    with pytest.raises(ValueError, match="gm"):
        Pam50Priors(gm=priors.gm[:, :10], regions=priors.regions, region_codes=priors.region_codes)


def test_learned_prior_shrinks_towards_the_given_base(exams) -> None:
    slab = exams[0][0]
    seg = segment_cord(slab.t1_ms, slab.voxel_mm)
    coords = cord_coordinates(seg.cord, seg.centre_ji, slab.affine_lps, slab=1, n_slabs=2)
    atlas = pam50_gm_prior(2)
    learned = gm_prior_from_controls([(coords, slab.truth["gm"])], pseudo_count=1e6,
                                     smoothing_cells=0.0, base_prior=atlas)  # fmt: skip
    assert np.abs(learned - atlas).max() < 1e-3
    with pytest.raises(ValueError, match="base_prior"):
        gm_prior_from_controls([(coords, slab.truth["gm"])], base_prior=atlas[:2])


def _t2s_real_outlines():
    names = ("t2s.nii.gz", "t2s_seg.nii.gz", "t2s_gmseg_manual.nii.gz")
    if not all((SHARED_T2S / n).is_file() for n in names):
        pytest.skip("shared real data (sct-testing t2s) not available")
    images = [nib.load(SHARED_T2S / n) for n in names]
    to_kji = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ images[0].affine @ to_kji
    image, cord, gm = (np.asarray(i.dataobj, dtype=float).transpose(2, 1, 0) for i in images)
    cord = cord > 0.5
    keep = cord.any(axis=(1, 2))
    zooms = images[0].header.get_zooms()
    voxel_mm = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    return image[keep], cord[keep], (gm[keep] > 0.5) & cord[keep], affine, voxel_mm


def test_pam50_prior_fits_real_grey_matter_better_than_the_geometric_one() -> None:
    """Expert GM outlines of a real cord (T2*-weighted GRE, GM bright like on a T1 map)."""
    image, cord, gm_true, affine, voxel_mm = _t2s_real_outlines()
    centre = np.array([ndimage.center_of_mass(c) for c in cord])
    coords = cord_coordinates(cord, centre, affine, slab=1, n_slabs=1)
    atlas = load_pam50_priors().gm_prior_template(1, {1: (2, 4)})
    result = {}
    for name, grid in (("geometric", geometric_gm_prior(1)), ("pam50", atlas)):
        prior = coords.sample(grid)
        gm, _ = split_gm_wm(image, cord, prior, voxel_mm=voxel_mm)
        result[name] = (dice(cord & (np.nan_to_num(prior) > 0.5), gm_true), dice(gm, gm_true))
    # measured: prior alone 0.47 -> 0.73, split 0.61 -> 0.79
    assert result["pam50"][0] > result["geometric"][0] + 0.15
    assert result["pam50"][1] > result["geometric"][1] + 0.1
    assert result["pam50"][1] > 0.72


def test_prior_warp_aligns_the_atlas_with_the_slabs_contrast(tmp_path_factory) -> None:
    """The warp's job: an atlas whose butterfly does not fit the cord is fitted to its contrast.

    Pinned to the analytic phantom: its textbook butterfly is such a misfit (on real-shape
    cords, PAM50 deformed per subject, the atlas already fits: see the next test).
    """
    simple = phantom_exams(tmp_path_factory, "small-simple", seed=5, matrix=160,
                           slices_per_slab=4, slabs=2, anatomy="simple")  # fmt: skip
    slab = simple[0][1]
    seg = segment_cord(slab.t1_ms, slab.voxel_mm)
    coords = cord_coordinates(seg.cord, seg.centre_ji, slab.affine_lps, slab=2, n_slabs=2)
    atlas = pam50_gm_prior(2)
    warp = fit_prior_warp(slab.t1_ms, seg.cord, coords, atlas, voxel_mm=slab.voxel_mm)
    assert warp.correlation > warp.identity_correlation + 0.01
    plain, _ = split_gm_wm(slab.t1_ms, seg.cord, coords.sample(atlas), voxel_mm=slab.voxel_mm)
    warped, _ = split_gm_wm(slab.t1_ms, seg.cord, warp.apply(coords).sample(atlas),
                            voxel_mm=slab.voxel_mm)  # fmt: skip
    assert dice(warped, slab.truth["gm"]) > dice(plain, slab.truth["gm"]) + 0.03
    # no contrast to fit on (uniform T1): the prior stays as the atlas has it
    flat = np.where(seg.cord, 1400.0, 4000.0)
    still = fit_prior_warp(flat, seg.cord, coords, atlas, voxel_mm=slab.voxel_mm)
    assert still.is_identity
    with pytest.raises(ValueError, match="shape"):
        fit_prior_warp(slab.t1_ms[:1], seg.cord, coords, atlas, voxel_mm=slab.voxel_mm)


def test_prior_warp_does_no_harm_on_real_cord_shapes(exams) -> None:
    """On real-shape cords the atlas already fits: warped or not, the GM split is as good."""
    for slab in exams[0]:
        seg = segment_cord(slab.t1_ms, slab.voxel_mm)
        coords = cord_coordinates(seg.cord, seg.centre_ji, slab.affine_lps, slab=slab.index,
                                  n_slabs=slab.n_slabs)  # fmt: skip
        atlas = pam50_gm_prior(2)
        warp = fit_prior_warp(slab.t1_ms, seg.cord, coords, atlas, voxel_mm=slab.voxel_mm)
        plain, _ = split_gm_wm(slab.t1_ms, seg.cord, coords.sample(atlas), voxel_mm=slab.voxel_mm)
        warped, _ = split_gm_wm(slab.t1_ms, seg.cord, warp.apply(coords).sample(atlas),
                                voxel_mm=slab.voxel_mm)  # fmt: skip
        assert dice(warped, slab.truth["gm"]) >= dice(plain, slab.truth["gm"]) - 0.01
        assert dice(warped, slab.truth["gm"]) >= 0.8


@pytest.mark.slow
def test_pam50_prior_splits_real_shapes_better_than_the_geometric_one(
    exams, tmp_path_factory
) -> None:
    """On the real-anatomy phantom (PAM50 cords deformed per subject) the warped PAM50 prior
    splits far better than the geometric (textbook butterfly) one it replaced."""
    oblique = phantom_exams(tmp_path_factory, "oblique", seed=8, matrix=256, slices_per_slab=4,
                            slabs=1, oblique_deg=15.0, snr=25.0)  # fmt: skip
    scores: dict[str, list[float]] = {"geometric": [], "pam50": []}
    for slab in [s for exam in exams + oblique for s in exam]:
        seg = segment_cord(slab.t1_ms, slab.voxel_mm, inv2=slab.inv2)
        coords = cord_coordinates(seg.cord, seg.centre_ji, slab.affine_lps, slab=slab.index,
                                  n_slabs=slab.n_slabs)  # fmt: skip
        geometric = coords.sample(geometric_gm_prior(slab.n_slabs))
        gm, _ = split_gm_wm(slab.t1_ms, seg.cord, geometric, voxel_mm=slab.voxel_mm)
        scores["geometric"].append(dice(gm, slab.truth["gm"]))
        atlas = pam50_gm_prior(slab.n_slabs)
        warp = fit_prior_warp(slab.t1_ms, seg.cord, coords, atlas, voxel_mm=slab.voxel_mm)
        gm, _ = split_gm_wm(slab.t1_ms, seg.cord, warp.apply(coords).sample(atlas),
                            voxel_mm=slab.voxel_mm)  # fmt: skip
        scores["pam50"].append(dice(gm, slab.truth["gm"]))
    # measured on these 6 small slabs (patients with lesions included): 0.86 vs 0.65
    assert np.mean(scores["pam50"]) > np.mean(scores["geometric"]) + 0.1
    assert np.mean(scores["pam50"]) >= 0.80
    assert min(scores["pam50"]) > 0.7


@pytest.mark.slow
def test_atlas_sides_follow_the_patient_on_an_oblique_and_a_flipped_slab(
    exams, tmp_path_factory
) -> None:
    from tests.test_regions import _side_from_patient_x

    oblique = phantom_exams(tmp_path_factory, "oblique", seed=8, matrix=256, slices_per_slab=4,
                            slabs=1, oblique_deg=15.0, snr=25.0)  # fmt: skip
    slab = exams[0][0]
    flipped = slab.affine_lps.copy()
    flipped[:3, 3] = slab.affine_lps[:3, :3] @ [0, 0, slab.t1_ms.shape[2] - 1] + flipped[:3, 3]
    flipped[:3, 2] *= -1
    ob = oblique[0][0]
    cases = [
        (ob, ob.t1_ms, ob.affine_lps),
        (slab, slab.t1_ms, slab.affine_lps),
        (slab, slab.t1_ms[:, :, ::-1], flipped),
    ]
    for case, t1, affine in cases:
        seg = segment_cord(t1, case.voxel_mm)
        coords = cord_coordinates(seg.cord, seg.centre_ji, affine, slab=case.index,
                                  n_slabs=case.n_slabs)  # fmt: skip
        gm, wm = split_gm_wm(t1, seg.cord, coords.sample(pam50_gm_prior(case.n_slabs)),
                             voxel_mm=case.voxel_mm)  # fmt: skip
        levels = estimate_levels(coords, case.n_slabs)
        labels = label_regions_atlas(coords, gm, wm, levels, load_pam50_priors())

        class View:  # the slab as the helper reads it
            affine_lps = affine

        _side_from_patient_x(View, seg, labels)
