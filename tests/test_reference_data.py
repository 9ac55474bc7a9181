"""The shipped reference data: PAM50 cervical template/atlas and the real neck."""

from __future__ import annotations

import numpy as np

from service.pipeline.reference_data import load_neck, load_pam50


def test_pam50_regions_cover_the_cord_and_levels_run_c1_to_t1() -> None:
    pam50 = load_pam50()
    assert len(pam50.region_keys) == 12
    assert pam50.regions.shape[1:] == pam50.cord.shape
    # every cord voxel of a mid-cervical slice belongs mostly to some region
    k = int(np.median(np.nonzero((pam50.levels == 4).any(axis=(0, 1)))[0]))
    total = pam50.regions[:, :, :, k].sum(axis=0)
    inner = pam50.cord[:, :, k] & (pam50.gm[:, :, k] + pam50.wm[:, :, k] > 0.9)
    assert float(np.median(total[inner])) > 0.8
    assert set(np.unique(pam50.levels)) >= set(range(1, 9))


def test_neck_has_a_grey_matter_outline_of_plausible_area_on_most_slices() -> None:
    neck = load_neck()
    voxel_mm2 = float(np.prod(np.linalg.norm(neck.affine_ras[:3, :2], axis=0)))
    areas = neck.gm.sum(axis=(0, 1))[neck.gm_outlined] * voxel_mm2
    assert neck.gm_outlined.sum() >= 9
    # cervical GM is roughly 10-25 mm^2 in cross-section
    assert np.all((areas > 8) & (areas < 30)), areas
