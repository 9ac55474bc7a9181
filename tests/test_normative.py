"""Normative model: recovery of known statistics, shrinkage, smoothing, leave-one-out Z."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from numpy.typing import NDArray

import processing.normative as normative_module
from processing.normative import (
    NormativeModel,
    build_normative_model,
    loo_models,
    z_scores,
)
from processing.stats import DEFAULT_Z_THRESHOLD

SD_MS = 80.0


def _truth(shape: tuple[int, int, int]) -> NDArray[np.float64]:
    """A smooth mean T1 field (ms) over the template grid."""
    z, u, v = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return 1200.0 + 60.0 * np.sin(2 * u) * np.cos(v) + 20.0 * z


def _controls(
    seed: int, n: int, truth: NDArray[np.float64], sd_ms: float | NDArray[np.float64] = SD_MS
) -> list[NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    return [truth + sd_ms * rng.standard_normal(truth.shape) for _ in range(n)]


def _full_masks(n: int, shape: tuple[int, ...]) -> list[NDArray[np.bool_]]:
    return [np.ones(shape, dtype=bool) for _ in range(n)]


def test_doctests() -> None:
    assert doctest.testmod(normative_module).failed == 0


def test_model_from_15_controls_recovers_known_mean_and_sd() -> None:
    shape = (6, 24, 24)
    truth = _truth(shape)
    controls = _controls(1, 15, truth)
    model = build_normative_model(controls, _full_masks(15, shape))
    assert model.valid.all()
    error = model.mean_ms - truth
    assert abs(error.mean()) < 2.0
    assert np.sqrt(np.mean(error**2)) < 0.1 * SD_MS
    assert model.sd_ms.mean() == pytest.approx(SD_MS, rel=0.04)
    assert np.percentile(np.abs(model.sd_ms / SD_MS - 1), 95) < 0.15
    assert model.count.max() == 15
    assert model.tissue_sd_ms["all"] == pytest.approx(SD_MS, rel=0.03)


def test_unsmoothed_model_has_the_sampling_error_of_n_controls() -> None:
    shape = (4, 20, 20)
    truth = _truth(shape)
    controls = _controls(2, 12, truth)
    model = build_normative_model(
        controls, _full_masks(12, shape), smoothing_sigma_vox=0.0, predictive=False
    )
    np.testing.assert_allclose(model.mean_ms, np.mean(controls, axis=0), rtol=1e-12)
    rms = np.sqrt(np.mean((model.mean_ms - truth) ** 2))
    assert rms == pytest.approx(SD_MS / np.sqrt(12), rel=0.1)


def test_pooled_sd_per_tissue_class() -> None:
    shape = (4, 20, 20)
    gm = np.zeros(shape, dtype=bool)
    gm[:, 6:14, 6:14] = True
    sd = np.where(gm, 100.0, 60.0)
    controls = _controls(3, 14, _truth(shape), sd)
    model = build_normative_model(
        controls, _full_masks(14, shape), tissue_maps={"gm": gm, "wm": ~gm}
    )
    assert model.tissue_sd_ms["gm"] == pytest.approx(100.0, rel=0.05)
    assert model.tissue_sd_ms["wm"] == pytest.approx(60.0, rel=0.05)
    inner_gm = np.zeros(shape, dtype=bool)
    inner_gm[:, 8:12, 8:12] = True
    assert model.sd_ms[inner_gm].mean() == pytest.approx(100.0, rel=0.08)
    assert model.sd_ms[:, :3, :].mean() == pytest.approx(60.0, rel=0.08)


def test_shrinkage_formula_by_hand_on_a_tiny_grid() -> None:
    t1 = np.array([[1100.0, 1210.0, 1330.0], [1150.0, 1190.0, 1300.0], [1200.0, 1250.0, 1280.0]])
    controls = [row.reshape(1, 1, 3) for row in t1]
    masks = _full_masks(3, (1, 1, 3))
    model = build_normative_model(
        controls, masks, smoothing_sigma_vox=0.0, shrinkage_n0=2.0, predictive=False
    )
    s2 = t1.var(axis=0, ddof=1)
    pooled2 = s2.mean()  # same n in every cell
    expected = np.sqrt((3 * s2 + 2.0 * pooled2) / (3 + 2.0))
    np.testing.assert_allclose(model.sd_ms.ravel(), expected, rtol=1e-10)
    np.testing.assert_allclose(model.mean_ms.ravel(), t1.mean(axis=0), rtol=1e-12)
    assert model.tissue_sd_ms["all"] == pytest.approx(np.sqrt(pooled2))


def test_shrinkage_pulls_noisy_sds_towards_the_pooled_sd() -> None:
    shape = (4, 16, 16)
    controls = _controls(4, 5, _truth(shape))
    masks = _full_masks(5, shape)
    raw = build_normative_model(
        controls, masks, smoothing_sigma_vox=0.0, shrinkage_n0=0.0, predictive=False
    )
    shrunk = build_normative_model(
        controls, masks, smoothing_sigma_vox=0.0, shrinkage_n0=5.0, predictive=False
    )
    pooled = shrunk.tissue_sd_ms["all"]
    assert np.all(np.abs(shrunk.sd_ms - pooled) <= np.abs(raw.sd_ms - pooled) + 1e-9)
    assert shrunk.sd_ms.std() < 0.6 * raw.sd_ms.std()
    raw_error = np.sqrt(np.mean((raw.sd_ms - SD_MS) ** 2))
    shrunk_error = np.sqrt(np.mean((shrunk.sd_ms - SD_MS) ** 2))
    assert shrunk_error < 0.6 * raw_error


def test_smoothing_does_not_bleed_empty_cells() -> None:
    shape = (4, 16, 16)
    truth = np.full(shape, 1200.0)
    controls = _controls(5, 12, truth, 30.0)
    covered = np.zeros(shape, dtype=bool)
    covered[:, :, :8] = True
    masks = [covered.copy() for _ in range(12)]
    model = build_normative_model(controls, masks, smoothing_sigma_vox=2.0)
    assert np.isnan(model.mean_ms[~covered]).all()
    assert np.isnan(model.sd_ms[~covered]).all()
    assert (model.count[~covered] == 0).all()
    edge = model.mean_ms[:, :, 7]
    np.testing.assert_allclose(edge, 1200.0, atol=15.0)
    assert model.sd_ms[:, :, 7].mean() == pytest.approx(30.0, rel=0.15)


def test_nan_cells_are_ignored_and_sparse_cells_invalid() -> None:
    shape = (2, 8, 8)
    controls = _controls(6, 6, np.full(shape, 1200.0), 40.0)
    for control in controls[2:]:
        control[0, 0, 0] = np.nan  # only two controls keep this cell
    model = build_normative_model(controls, _full_masks(6, shape), min_count=3)
    assert model.count[0, 0, 0] == 2
    assert np.isnan(model.mean_ms[0, 0, 0])
    assert model.count[1, 1, 1] == 6
    assert np.isfinite(model.mean_ms[0, 0, 1])


def test_leave_one_out_equals_rebuilding_without_the_control() -> None:
    shape = (3, 10, 10)
    controls = _controls(7, 6, _truth(shape))
    masks = _full_masks(6, shape)
    masks[2][:, :, :3] = False
    gm = np.zeros(shape, dtype=bool)
    gm[:, 3:7, 3:7] = True
    kwargs = {"tissue_maps": {"gm": gm}, "smoothing_sigma_vox": 1.0, "shrinkage_n0": 5.0}
    loo = list(loo_models(controls, masks, **kwargs))
    assert len(loo) == 6
    for i in (0, 2, 5):
        rest = [j for j in range(6) if j != i]
        rebuilt = build_normative_model(
            [controls[j] for j in rest], [masks[j] for j in rest], **kwargs
        )
        np.testing.assert_allclose(loo[i].mean_ms, rebuilt.mean_ms, rtol=1e-9)
        np.testing.assert_allclose(loo[i].sd_ms, rebuilt.sd_ms, rtol=1e-9)
        np.testing.assert_array_equal(loo[i].count, rebuilt.count)
        assert loo[i].tissue_sd_ms == pytest.approx(rebuilt.tissue_sd_ms)


def test_left_out_controls_have_the_nominal_false_positive_rate() -> None:
    shape = (8, 32, 32)
    truth = _truth(shape)
    controls = _controls(8, 14, truth)
    masks = _full_masks(14, shape)
    healthy: list[NDArray[np.float64]] = []
    raised: list[NDArray[np.float64]] = []
    for i, model in enumerate(loo_models(controls, masks)):
        healthy.append(z_scores(controls[i], model.mean_ms, model.sd_ms)[model.valid])
        raised.append(z_scores(controls[i] * 1.05, model.mean_ms, model.sd_ms)[model.valid])
    z_healthy = np.concatenate(healthy)
    z_raised = np.concatenate(raised)
    assert z_healthy.size > 100_000
    false_positive_percent = 100 * np.mean(z_healthy > DEFAULT_Z_THRESHOLD)
    assert abs(false_positive_percent - 2.5) < 1.5
    assert z_healthy.std() == pytest.approx(1.0, abs=0.05)
    raised_percent = 100 * np.mean(z_raised > DEFAULT_Z_THRESHOLD)
    assert raised_percent > 4 * false_positive_percent


def test_z_scores_are_nan_where_the_model_is_invalid() -> None:
    z = z_scores(
        np.array([1300.0, 1300.0, np.nan, 1000.0]),
        np.array([1200.0, np.nan, 1200.0, 1200.0]),
        np.array([50.0, np.nan, 50.0, 100.0]),
    )
    np.testing.assert_array_equal(z, [2.0, np.nan, np.nan, -2.0])


def test_z_scores_of_single_values_and_infinite_t1() -> None:
    assert z_scores(1300.0, 1200.0, 50.0) == 2.0
    z = z_scores(np.array([np.inf, 1300.0]), np.array([1200.0, 1200.0]), np.array([50.0, np.inf]))
    assert np.isnan(z).all()  # infinite T1, infinite SD: no Z


def test_z_scores_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        z_scores(np.zeros(3), np.zeros(3), np.ones(4))
    with pytest.raises(ValueError, match="positive"):
        z_scores(np.zeros(2), np.zeros(2), np.array([1.0, 0.0]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n": 2}, "at least 3 controls"),
        ({"mask_dtype": np.uint8}, "boolean"),
        ({"bad_shape": True}, "template grid"),
        ({"negative": True}, "positive"),
        ({"sigma": -1.0}, "smoothing_sigma_vox"),
        ({"n0": -1.0}, "shrinkage_n0"),
        ({"min_count": 1}, "min_count"),
    ],
)
def test_build_rejects_bad_input(change: dict[str, object], message: str) -> None:
    n = int(change.get("n", 4))  # type: ignore[call-overload]
    shape = (2, 4, 4)
    controls = _controls(9, n, np.full(shape, 1200.0), 40.0)
    masks: list[NDArray] = [
        np.ones(shape, dtype=change.get("mask_dtype", bool))  # type: ignore[arg-type]
        for _ in range(n)
    ]
    if change.get("bad_shape"):
        controls[1] = controls[1][:, :3, :]
    if change.get("negative"):
        controls[0][0, 0, 0] = -5.0
    with pytest.raises(ValueError, match=message):
        build_normative_model(
            controls,
            masks,
            smoothing_sigma_vox=change.get("sigma", 1.0),  # type: ignore[arg-type]
            shrinkage_n0=change.get("n0", 5.0),  # type: ignore[arg-type]
            min_count=change.get("min_count", 3),  # type: ignore[arg-type]
        )


def test_overlapping_tissue_maps_are_rejected() -> None:
    shape = (2, 4, 4)
    controls = _controls(10, 4, np.full(shape, 1200.0), 40.0)
    tissue = np.ones(shape, dtype=bool)
    with pytest.raises(ValueError, match="overlaps"):
        build_normative_model(
            controls, _full_masks(4, shape), tissue_maps={"wm": tissue, "gm": tissue}
        )


def test_model_validates_and_freezes_its_arrays() -> None:
    mean = np.full((1, 2, 2), 1200.0)
    sd = np.full((1, 2, 2), 50.0)
    count = np.full((1, 2, 2), 5)
    model = NormativeModel(mean, sd, count, {"all": 50.0})
    with pytest.raises(ValueError, match="read-only"):
        model.mean_ms[0, 0, 0] = 0.0
    with pytest.raises(ValueError, match="positive"):
        NormativeModel(mean, -sd, count)
    with pytest.raises(ValueError, match="same cells"):
        NormativeModel(mean, np.where(count > 0, np.nan, sd), count)
    with pytest.raises(ValueError, match="shape"):
        NormativeModel(mean, sd[:, :1], count)
