"""Resampling between voxel grids of one patient frame (processing.resample)."""

from __future__ import annotations

import numpy as np
import pytest

from processing.resample import coverage, coverage_fraction, resample_to_grid
from tests.grids import tilted_affine, world_mm


def _linear_field(points_mm: np.ndarray) -> np.ndarray:
    return 3.0 * points_mm[..., 0] - 2.0 * points_mm[..., 1] + 0.5 * points_mm[..., 2] + 10.0


def test_same_grid_returns_the_values() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(4, 6, 5))
    affine = tilted_affine((4.0, 0.3, 0.3), (1.0, 2.0, 3.0), tilt_deg=12.0)
    out = resample_to_grid(values, affine, values.shape, affine)
    np.testing.assert_allclose(out, values, atol=1e-12)


def test_coarse_oblique_map_gives_a_linear_field_exactly_on_the_target_grid() -> None:
    """A smooth field (like B1) on a coarse tilted grid lands exactly on a fine axial grid."""
    source_affine = tilted_affine((5.0, 2.0, 2.0), (-20.0, -20.0, -20.0), tilt_deg=20.0)
    source_shape = (10, 24, 24)
    source = _linear_field(world_mm(source_shape, source_affine))
    target_affine = tilted_affine((4.0, 0.3, 0.3), (-4.0, -4.0, 0.0))
    target_shape = (6, 30, 30)
    out = resample_to_grid(source, source_affine, target_shape, target_affine, antialias=False)
    inside = np.isfinite(out)
    assert inside.mean() > 0.99
    expected = _linear_field(world_mm(target_shape, target_affine))
    np.testing.assert_allclose(out[inside], expected[inside], atol=1e-6)


def test_voxels_outside_the_source_get_the_fill_value() -> None:
    source_affine = tilted_affine((1.0, 1.0, 1.0))
    target_affine = tilted_affine((1.0, 1.0, 1.0), (0.0, 0.0, 3.0))  # shifted by 3 slices
    out = resample_to_grid(np.ones((5, 4, 4)), source_affine, (5, 4, 4), target_affine, fill=-1)
    assert (out[:2] == 1.0).all()
    assert (out[3:] == -1.0).all()
    assert coverage_fraction((5, 4, 4), source_affine, (5, 4, 4), target_affine) == pytest.approx(
        0.4
    )


def test_nan_voxels_stay_local() -> None:
    values = np.ones((3, 9, 9))
    values[1, 4, 4] = np.nan
    affine = tilted_affine((1.0, 1.0, 1.0))
    half_shift = tilted_affine((1.0, 1.0, 1.0), (0.0, 0.25, 0.25))  # a quarter voxel off
    out = resample_to_grid(values, affine, values.shape, half_shift, antialias=False)
    assert np.isnan(out).sum() == 1  # the NaN voxel, not its neighbours
    np.testing.assert_allclose(out[np.isfinite(out)], 1.0)


def test_finer_source_is_averaged_not_picked() -> None:
    """Noise on a 0.1 mm grid resampled to 0.4 mm drops roughly by the averaging factor."""
    rng = np.random.default_rng(1)
    source = rng.normal(size=(2, 200, 200))
    source_affine = tilted_affine((4.0, 0.1, 0.1))
    target_affine = tilted_affine((4.0, 0.4, 0.4))
    smoothed = resample_to_grid(source, source_affine, (2, 48, 48), target_affine)
    picked = resample_to_grid(source, source_affine, (2, 48, 48), target_affine, antialias=False)
    assert np.std(picked) > 0.9
    assert np.std(smoothed) < 0.35


def test_nearest_keeps_label_values() -> None:
    labels = np.zeros((3, 10, 10))
    labels[:, 2:5, 2:5] = 7
    labels[:, 6:9, 6:9] = 3
    source_affine = tilted_affine((1.0, 1.0, 1.0))
    target_affine = tilted_affine((1.0, 0.5, 0.5))
    out = resample_to_grid(labels, source_affine, (3, 20, 20), target_affine, order=0, fill=0)
    assert set(np.unique(out)) == {0.0, 3.0, 7.0}


def test_coverage_margin_is_half_a_voxel() -> None:
    source_affine = tilted_affine((2.0, 1.0, 1.0))
    inside = coverage((3, 4, 4), source_affine, (7, 4, 4), tilted_affine((1.0, 1.0, 1.0)))
    # source slice centres at 0, 2, 4 mm: covered from -1 to 5 mm
    assert inside[:, 0, 0].tolist() == [True] * 6 + [False]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": np.zeros((4, 4))}, "3-D"),
        ({"target_shape": (0, 4, 4)}, "target_shape"),
        ({"order": 3}, "order"),
        ({"source_affine": np.zeros((4, 4))}, "singular"),
        ({"target_affine": np.eye(3)}, "4x4"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    arguments = {
        "values": np.zeros((2, 4, 4)),
        "source_affine": np.eye(4),
        "target_shape": (2, 4, 4),
        "target_affine": np.eye(4),
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        resample_to_grid(
            arguments.pop("values"),
            arguments.pop("source_affine"),
            arguments.pop("target_shape"),
            arguments.pop("target_affine"),
            **arguments,
        )


def test_a_box_of_the_target_grid_gets_the_same_values_as_the_whole_grid() -> None:
    """Only the part of the source a box sees is smoothed and sampled: same numbers."""
    rng = np.random.default_rng(4)
    source_affine = tilted_affine((3.0, 0.22, 0.22), (-10.0, -12.0, -8.0), tilt_deg=7.0)
    source = rng.normal(100.0, 10.0, (8, 120, 120))
    target_affine = tilted_affine((4.0, 0.3, 0.3), (-6.0, -6.0, 0.0))
    whole = resample_to_grid(source, source_affine, (5, 60, 60), target_affine)
    box_affine = target_affine.copy()
    box_affine[:3, 3] = (target_affine @ [0, 20, 25, 1.0])[:3]
    box = resample_to_grid(source, source_affine, (5, 15, 20), box_affine)
    assert np.isfinite(box).mean() > 0.9
    np.testing.assert_allclose(box, whole[:, 20:35, 25:45], rtol=1e-12, equal_nan=True)
