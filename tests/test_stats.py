"""Region statistics and normal-appearing tissue masks, checked by hand on tiny arrays."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

import processing.stats as stats_module
from processing.stats import (
    DEFAULT_Z_THRESHOLD,
    normal_appearing,
    region_statistics,
    without_lesions,
)

# One slice of 2 x 3 voxels: T1 (ms) and Z, with one voxel outside the model (NaN Z).
T1_MS = np.array([[[1000.0, 1100.0, 1500.0], [1200.0, 1300.0, 1600.0]]])
Z = np.array([[[-1.0, 0.5, 2.5], [1.96, np.nan, 3.0]]])
WM = np.array([[[True, True, False], [True, True, False]]])
GM = ~WM
CORD = np.ones_like(WM)


def test_doctests() -> None:
    assert doctest.testmod(stats_module).failed == 0


def test_default_threshold_is_the_one_sided_2_5_percent_point() -> None:
    assert DEFAULT_Z_THRESHOLD == 1.96
    assert 0.5 * math.erfc(DEFAULT_Z_THRESHOLD / math.sqrt(2)) == pytest.approx(0.025, abs=1e-4)


def test_region_statistics_by_hand() -> None:
    result = region_statistics(T1_MS, Z, {"cord": CORD, "wm": WM, "gm": GM})
    assert list(result) == ["cord", "wm", "gm"]

    cord = result["cord"]
    assert cord.voxels == 6
    assert cord.mean_t1_ms == pytest.approx(7700.0 / 6)
    assert cord.median_t1_ms == pytest.approx(1250.0)
    assert cord.scored_voxels == 5
    assert cord.unscored_voxels == 1
    assert cord.mean_z == pytest.approx((-1.0 + 0.5 + 2.5 + 1.96 + 3.0) / 5)
    # Z = 1.96 is not above the threshold: only 2.5 and 3.0 count.
    assert cord.abnormal_voxels == 2
    assert cord.abnormal_percent == pytest.approx(40.0)

    wm = result["wm"]
    assert (wm.voxels, wm.scored_voxels, wm.unscored_voxels, wm.abnormal_voxels) == (4, 3, 1, 0)
    assert wm.mean_t1_ms == pytest.approx(1150.0)
    assert wm.abnormal_percent == 0.0

    gm = result["gm"]
    assert gm.abnormal_percent == 100.0
    assert gm.mean_z == pytest.approx(2.75)
    assert gm.median_t1_ms == pytest.approx(1550.0)


def test_threshold_is_configurable_and_one_sided() -> None:
    low = region_statistics(T1_MS, Z, {"cord": CORD}, threshold=0.0)["cord"]
    assert low.abnormal_voxels == 4  # 0.5, 2.5, 1.96, 3.0; -1.0 is not abnormal
    strict = region_statistics(T1_MS, -Z, {"cord": CORD})["cord"]
    assert strict.abnormal_voxels == 0  # very low T1 is not "abnormal"


def test_empty_and_unscored_regions_give_nan_not_zero() -> None:
    nothing = np.zeros_like(CORD)
    only_unscored = np.zeros_like(CORD)
    only_unscored[0, 1, 1] = True
    result = region_statistics(T1_MS, Z, {"C7": nothing, "hole": only_unscored})
    assert result["C7"].voxels == 0
    assert math.isnan(result["C7"].mean_t1_ms)
    assert math.isnan(result["C7"].abnormal_percent)
    hole = result["hole"]
    assert hole.voxels == 1 and hole.unscored_voxels == 1
    assert hole.mean_t1_ms == 1300.0
    assert math.isnan(hole.mean_z) and math.isnan(hole.abnormal_percent)


def test_missing_t1_is_left_out_of_t1_statistics() -> None:
    t1 = T1_MS.copy()
    t1[0, 0, 0] = np.nan
    wm = region_statistics(t1, Z, {"wm": WM})["wm"]
    assert wm.mean_t1_ms == pytest.approx((1100.0 + 1200.0 + 1300.0) / 3)


def test_region_statistics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        region_statistics(T1_MS, Z[:, :1], {"cord": CORD})
    with pytest.raises(ValueError, match="boolean"):
        region_statistics(T1_MS, Z, {"cord": CORD.astype(np.uint8)})
    with pytest.raises(ValueError, match=r"'wm'.*shape"):
        region_statistics(T1_MS, Z, {"wm": WM[:, :1]})
    with pytest.raises(ValueError, match="threshold"):
        region_statistics(T1_MS, Z, {"cord": CORD}, threshold=float("nan"))


def test_normal_appearing_tissue_excludes_lesions() -> None:
    lesion = np.array([[[False, True, True], [False, False, False]]])
    na = normal_appearing({"wm": WM, "gm": GM, "cord": CORD}, lesion)
    assert set(na) == {"nawm", "nagm"}
    np.testing.assert_array_equal(na["nawm"], [[[True, False, False], [True, True, False]]])
    np.testing.assert_array_equal(na["nagm"], [[[False, False, False], [False, False, True]]])
    nawm = region_statistics(T1_MS, Z, na)["nawm"]
    assert nawm.mean_t1_ms == pytest.approx((1000.0 + 1200.0 + 1300.0) / 3)


def test_without_lesions_keeps_every_key() -> None:
    lesion = np.zeros_like(CORD)
    lesion[0, 0, 2] = True
    cleaned = without_lesions({"cord": CORD, "gm": GM}, lesion)
    assert cleaned["cord"].sum() == 5
    assert cleaned["gm"].sum() == 1


def test_normal_appearing_needs_wm_and_gm() -> None:
    with pytest.raises(ValueError, match="gm"):
        normal_appearing({"wm": WM}, np.zeros_like(WM))
    with pytest.raises(ValueError, match="boolean"):
        normal_appearing({"wm": WM, "gm": GM}, np.zeros(WM.shape, dtype=int))
