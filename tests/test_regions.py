"""Region labels (columns, funiculi, horns), summary masks and level estimates."""

from __future__ import annotations

import numpy as np
import pytest

from processing.atlas import label_regions_atlas
from processing.regions import REGIONS, estimate_levels, label_regions, region_masks
from processing.segmentation import segment_cord, split_gm_wm
from processing.template import cord_coordinates, geometric_gm_prior
from service.pipeline.atlas import load_pam50_priors, pam50_gm_prior, pam50_lps
from service.pipeline.reference_data import load_pam50
from tests.test_segmentation import phantom_exams


def _labelled(slab, t1_ms=None, affine=None):
    t1 = slab.t1_ms if t1_ms is None else t1_ms
    seg = segment_cord(t1, slab.voxel_mm)
    coords = cord_coordinates(seg.cord, seg.centre_ji,
                              slab.affine_lps if affine is None else affine,
                              slab=slab.index, n_slabs=slab.n_slabs)  # fmt: skip
    prior = coords.sample(geometric_gm_prior(slab.n_slabs))
    gm, wm = split_gm_wm(t1, seg.cord, prior, voxel_mm=slab.voxel_mm)
    return seg, coords, gm, wm, label_regions(coords, gm, wm)


@pytest.fixture(scope="module")
def exams(tmp_path_factory):
    return phantom_exams(tmp_path_factory, "small", seed=5, matrix=160, slices_per_slab=4,
                         slabs=2)  # fmt: skip


@pytest.fixture(scope="module")
def oblique(tmp_path_factory):
    return phantom_exams(tmp_path_factory, "oblique", seed=8, matrix=256, slices_per_slab=4,
                         slabs=1, oblique_deg=15.0, snr=25.0)  # fmt: skip


def test_every_cord_voxel_has_one_label_of_its_tissue(exams, oblique) -> None:
    for slab in (exams[0][0], exams[1][1], oblique[0][0]):
        seg, _, gm, wm, labels = _labelled(slab)
        assert np.all((labels > 0) == seg.cord)
        assert set(np.unique(labels[gm])) <= {c for c, r in REGIONS.items() if r.tissue == "gm"}
        assert set(np.unique(labels[wm])) <= {c for c, r in REGIONS.items() if r.tissue == "wm"}
        assert set(np.unique(labels)) == {0, *REGIONS}  # every region is present


def _side_from_patient_x(slab, seg, labels) -> None:
    """Left labels lie at larger LPS x (patient left) than the cord centre."""
    k, j, i = np.nonzero(labels > 0)
    x = slab_affine(slab)[0] @ np.vstack([k, j, i, np.ones_like(k)])
    centre_x = np.array([
        slab_affine(slab)[0] @ [kk, *seg.centre_ji[kk], 1.0] for kk in k
    ])  # fmt: skip
    left = labels[k, j, i] % 2 == 1
    assert np.mean(x[left] > centre_x[left]) > 0.97
    assert np.mean(x[~left] < centre_x[~left]) > 0.97


def slab_affine(slab):
    return slab.affine_lps


def test_left_right_follow_the_patient_also_flipped_and_oblique(exams, oblique) -> None:
    slab = exams[0][0]
    seg, _, _, _, labels = _labelled(slab)
    _side_from_patient_x(slab, seg, labels)
    flipped = slab.affine_lps.copy()
    cols = slab.t1_ms.shape[2]
    flipped[:3, 3] = slab.affine_lps[:3, :3] @ [0, 0, cols - 1] + slab.affine_lps[:3, 3]
    flipped[:3, 2] *= -1
    seg_f, _, _, _, labels_f = _labelled(slab, slab.t1_ms[:, :, ::-1], flipped)
    agree = labels_f[:, :, ::-1] == labels
    assert agree[seg.cord & seg_f.cord[:, :, ::-1]].mean() > 0.9
    ob = oblique[0][0]
    seg_o, _, _, _, labels_o = _labelled(ob)
    _side_from_patient_x(ob, seg_o, labels_o)


def test_dorsal_columns_are_posterior_between_the_dorsal_horns(exams) -> None:
    slab = exams[1][0]
    _, coords, _, _, labels = _labelled(slab)
    dc = np.isin(labels, (1, 2))
    dh = np.isin(labels, (11, 12))
    vh = np.isin(labels, (15, 16))
    assert np.median(coords.v[dc]) > 0.4 and np.median(coords.v[vh]) < -0.2
    # between the horns: |u| of the dorsal columns smaller than |u| of the dorsal horns
    assert np.median(np.abs(coords.u[dc])) < np.median(np.abs(coords.u[dh]))
    # posterior in patient space: larger LPS y than the ventral funiculi
    k, j, i = np.nonzero(dc)
    y_dc = (slab.affine_lps[1] @ np.vstack([k, j, i, np.ones_like(k)])).mean()
    k, j, i = np.nonzero(np.isin(labels, (5, 6)))
    y_vf = (slab.affine_lps[1] @ np.vstack([k, j, i, np.ones_like(k)])).mean()
    assert y_dc > y_vf + 3.0


def _pam50_shares(levels: np.ndarray) -> dict[str, float]:
    """Share of the cord each region name has in PAM50 itself (voxels), averaged over slices."""
    pam50 = load_pam50()
    cord, _, regions, atlas_levels, _ = pam50_lps(pam50)
    per_level = {}
    for lv in np.unique(levels):
        ks = np.nonzero((atlas_levels == lv).any(axis=(1, 2)))[0]
        mass = regions[:, ks][:, cord[ks]].astype(np.float64).sum(axis=1)
        per_level[lv] = mass / mass.sum()
    mean = np.mean([per_level[lv] for lv in levels], axis=0)
    by_key = {info.key: info.name for info in REGIONS.values()}
    shares: dict[str, float] = {}
    for key, value in zip(pam50.region_keys, mean, strict=True):
        shares[by_key[key]] = shares.get(by_key[key], 0.0) + float(value)
    return shares


def test_region_proportions_match_pam50(exams) -> None:
    """The pipeline's regions (PAM50 prior split, PAM50 atlas labels) on a real-shape cord
    take the shares of the cord that PAM50 itself gives at the slab's levels (the old bounds
    came from the geometric rules' butterfly, not from real cords)."""
    slab = exams[0][1]
    seg = segment_cord(slab.t1_ms, slab.voxel_mm)
    coords = cord_coordinates(seg.cord, seg.centre_ji, slab.affine_lps, slab=slab.index,
                              n_slabs=slab.n_slabs)  # fmt: skip
    prior = coords.sample(pam50_gm_prior(slab.n_slabs))
    gm, wm = split_gm_wm(slab.t1_ms, seg.cord, prior, voxel_mm=slab.voxel_mm)
    # these short slabs (4 x 4 mm) cover C1-C2 and C2-C3 (see the level test below)
    levels = estimate_levels(coords, slab.n_slabs, coverage={1: (1, 2), 2: (2, 3)})
    labels = label_regions_atlas(coords, gm, wm, levels, load_pam50_priors())
    masks = region_masks(labels, gm, wm, levels)
    cord = masks["cord"].sum()
    assert masks["cord_left"].sum() + masks["cord_right"].sum() == cord
    assert 0.4 < masks["cord_left"].sum() / cord < 0.6
    share = {name: masks[name].sum() / cord for name in {r.name for r in REGIONS.values()}}
    expected = _pam50_shares(levels)
    for name, value in share.items():
        assert value == pytest.approx(expected[name], abs=0.05), (name, share, expected)
    assert sum(share.values()) == pytest.approx(1.0)
    assert sum(masks[f"C{lv}"].sum() for lv in range(1, 8) if f"C{lv}" in masks) == cord
    for code, info in REGIONS.items():
        assert np.array_equal(masks[info.key], labels == code)


def test_estimated_levels_match_the_phantom_within_one(exams) -> None:
    """These short slabs (4 x 4 mm) cover C1-C2 and C2-C3: the coverage is a protocol setting."""
    for slab in exams[0]:
        seg = segment_cord(slab.t1_ms, slab.voxel_mm)
        coords = cord_coordinates(seg.cord, seg.centre_ji, slab.affine_lps, slab=slab.index,
                                  n_slabs=slab.n_slabs)  # fmt: skip
        estimated = estimate_levels(coords, slab.n_slabs, coverage={1: (1, 2), 2: (2, 3)})
        true = slab.truth["levels"].max(axis=(1, 2))
        assert np.all(np.abs(estimated - true) <= 1), (estimated, true)
    assert estimate_levels(coords, 2, coverage={1: (1, 7), 2: (7, 7)}).tolist() == [7] * 4


def test_masks_restricted_to_a_region_keep_every_key(exams) -> None:
    slab = exams[0][0]
    _, coords, gm, wm, labels = _labelled(slab)
    levels = estimate_levels(coords, slab.n_slabs)
    within = np.zeros(gm.shape, bool)
    within[1:] = gm[1:] | wm[1:]  # nothing on the first slice
    within[1:, :, : gm.shape[2] // 2] = False
    full = region_masks(labels, gm, wm, levels)
    restricted = region_masks(labels, gm, wm, levels, within=within)
    assert list(restricted) == list(full)
    for key, mask in full.items():
        assert np.array_equal(restricted[key], mask & within), key
    with pytest.raises(ValueError, match="within"):
        region_masks(labels, gm, wm, levels, within=within[:1])


def test_validation(exams) -> None:
    slab = exams[0][0]
    _, coords, gm, wm, labels = _labelled(slab)
    with pytest.raises(ValueError, match="overlap"):
        label_regions(coords, gm, gm)
    with pytest.raises(ValueError, match="levels"):
        region_masks(labels, gm, wm, np.ones(2))
    with pytest.raises(ValueError, match="no default coverage"):
        estimate_levels(coords, 3)
