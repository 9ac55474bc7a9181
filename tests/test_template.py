"""Template space: normalised cord coordinates, template averaging/sampling, GM priors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from processing.segmentation import segment_cord
from processing.template import (
    TEMPLATE_SHAPE_UV,
    TEMPLATE_Z_BINS_PER_SLAB,
    CordCoordinates,
    cord_coordinates,
    geometric_gm_prior,
    gm_prior_from_controls,
    template_shape,
)
from service.pipeline.atlas import pam50_gm_prior
from tests.test_segmentation import phantom_exams

AXIAL = np.array([[0, 0, 0.3, -20], [0, 0.3, 0, -10], [4, 0, 0, 0], [0, 0, 0, 1.0]])


def _ellipse(n_slices: int = 3, shape: int = 80) -> tuple[np.ndarray, np.ndarray]:
    jj, ii = np.mgrid[:shape, :shape]
    cord = ((jj - 40) / 15.0) ** 2 + ((ii - 38) / 21.0) ** 2 <= 1.0  # 6.3 x 4.5 mm
    return np.repeat(cord[None], n_slices, 0), np.tile([[40.0, 38.0]], (n_slices, 1))


@pytest.fixture(scope="module")
def slab(tmp_path_factory):
    return phantom_exams(tmp_path_factory, "small", seed=5, matrix=160, slices_per_slab=4,
                         slabs=2)[0][0]  # fmt: skip


def test_outline_maps_to_unit_circle_and_centre_to_zero(slab) -> None:
    seg = segment_cord(slab.t1_ms, slab.voxel_mm)
    truth = slab.truth["cord"]
    c = cord_coordinates(truth, seg.centre_ji, slab.affine_lps, slab=1, n_slabs=2)
    rho = np.hypot(c.u, c.v)
    edge = truth & ~np.stack([ndimage.binary_erosion(t) for t in truth])
    assert 0.85 < np.median(rho[edge]) <= 1.0
    assert np.percentile(rho[truth], 99) <= 1.05
    for k in range(truth.shape[0]):
        j, i = np.round(seg.centre_ji[k]).astype(int)
        assert rho[k, j, i] < 0.1


def test_u_follows_patient_left_even_when_flipped() -> None:
    cord, centre = _ellipse()
    c = cord_coordinates(cord, centre, AXIAL, slab=1, n_slabs=1)
    # i increases towards patient left (+x LPS) in AXIAL: voxel right of centre has u > 0
    assert c.u[0, 40, 55] > 0.5 and c.v[0, 52, 38] > 0.5
    flipped = AXIAL.copy()
    flipped[:3, 2] *= -1  # image flipped left-right: i now runs to patient right
    flipped[:3, 3] = AXIAL[:3, :3] @ [0, 0, 79] + AXIAL[:3, 3]
    cf = cord_coordinates(cord[:, :, ::-1], centre * [1, 1] + [0, 79 - 2 * 38], flipped,
                          slab=1, n_slabs=1)  # fmt: skip
    np.testing.assert_allclose(np.nan_to_num(cf.u[:, :, ::-1]), np.nan_to_num(c.u), atol=1e-9)
    np.testing.assert_allclose(np.nan_to_num(cf.v[:, :, ::-1]), np.nan_to_num(c.v), atol=1e-9)


def test_oblique_and_rotated_slices_keep_patient_directions() -> None:
    cord, centre = _ellipse()
    angle = np.deg2rad(15)
    oblique = AXIAL.copy()
    oblique[:3, 1] = 0.3 * np.array([0, np.cos(angle), -np.sin(angle)])
    oblique[:3, 0] = 4 * np.array([0, np.sin(angle), np.cos(angle)])
    c = cord_coordinates(cord, centre, oblique, slab=1, n_slabs=1)
    assert c.u[0, 40, 55] > 0.5 and c.v[0, 52, 38] > 0.5
    # rows and columns swapped (image rotated by 90 degrees): j now runs left, i posterior
    swapped = AXIAL[:, [0, 2, 1, 3]]
    cs = cord_coordinates(cord.transpose(0, 2, 1), centre[:, ::-1], swapped, slab=1, n_slabs=1)
    np.testing.assert_allclose(np.nan_to_num(cs.u.transpose(0, 2, 1)), np.nan_to_num(c.u))


def test_s_runs_from_superior_to_inferior() -> None:
    cord, centre = _ellipse(5)
    up = cord_coordinates(cord, centre, AXIAL, slab=1, n_slabs=2)
    assert up.s.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]  # k increases towards the head
    down = AXIAL.copy()
    down[:3, 0] *= -1
    assert cord_coordinates(cord, centre, down, slab=2, n_slabs=2).s[0] == 0.0


def test_to_template_and_sample_round_trip_smooth_fields() -> None:
    cord, centre = _ellipse(8)
    c = cord_coordinates(cord, centre, AXIAL, slab=2, n_slabs=2)
    field = 1000 + 200 * c.u - 150 * c.v + 50 * c.u * c.v
    grid = c.to_template(field, cord)
    assert grid.shape == template_shape(2) == (2 * TEMPLATE_Z_BINS_PER_SLAB, *TEMPLATE_SHAPE_UV)
    assert np.isnan(grid[:TEMPLATE_Z_BINS_PER_SLAB]).all()  # slab 1's bins hold no data
    back = c.sample(grid)
    inner = cord & (np.hypot(c.u, c.v) < 0.9) & np.isfinite(back)
    assert inner.sum() > 0.7 * (cord & (np.hypot(c.u, c.v) < 0.9)).sum()
    assert np.nanmax(np.abs(back[inner] - field[inner])) < 15.0
    assert np.isnan(c.sample(grid)[0, 0, 0])  # outside the mapped area


def test_sampling_several_grids_from_one_slab() -> None:
    """The sample positions are computed once per slab; each grid still gets its own values."""
    cord, centre = _ellipse(8)
    c = cord_coordinates(cord, centre, AXIAL, slab=1, n_slabs=1)
    first = c.sample(np.full(template_shape(1), 7.0))
    grid = geometric_gm_prior(1)
    fresh = cord_coordinates(cord, centre, AXIAL, slab=1, n_slabs=1).sample(grid)
    np.testing.assert_array_equal(c.sample(grid), fresh)
    np.testing.assert_allclose(first[np.isfinite(first)], 7.0)
    assert np.array_equal(np.isfinite(first), np.isfinite(c.u) & np.isfinite(c.v))


def test_sample_rejects_wrong_shapes_and_validation() -> None:
    cord, centre = _ellipse()
    c = cord_coordinates(cord, centre, AXIAL, slab=1, n_slabs=1)
    with pytest.raises(ValueError, match="template must have shape"):
        c.sample(np.zeros((3, 64, 64)))
    with pytest.raises(ValueError, match="slab"):
        cord_coordinates(cord, centre, AXIAL, slab=3, n_slabs=2)
    with pytest.raises(ValueError, match="centre_ji"):
        cord_coordinates(cord, centre[:2], AXIAL, slab=1, n_slabs=1)
    with pytest.raises(ValueError, match="s must"):
        CordCoordinates(c.u, c.v, np.zeros(2), slab=1)


def test_geometric_prior_is_a_butterfly() -> None:
    p = geometric_gm_prior(1)[0]
    assert np.allclose(p, p[::-1, :])  # left-right symmetric
    cells = np.hypot(*np.meshgrid(*(np.linspace(-1.25, 1.25, 64),) * 2, indexing="ij")) <= 1
    share = p[cells].mean()
    assert 0.15 < share < 0.35  # GM is about 20 % of the cross-section
    u = np.linspace(-1.25, 1.25, 65)[:-1] + 2.5 / 128
    iu, iv = (np.abs(u - 0.35)).argmin(), (np.abs(u - 0.6)).argmin()
    ivm = (np.abs(u)).argmin()
    assert p[iu, iv] > 0.5  # dorsal horn posterolateral
    assert p[ivm, iv] < 0.1  # dorsal columns between the horns
    assert p[(np.abs(u - 0.4)).argmin(), (np.abs(u + 0.35)).argmin()] > 0.5  # ventral horn


def test_prior_from_controls_learns_the_gm_share(slab) -> None:
    """A prior learned from one slab's GM (shrunk towards PAM50, as ``model build`` does).

    Shrunk towards the geometric butterfly instead, cells with few voxels keep that textbook
    shape, which real cords do not have (mean prior on the true GM 0.58).
    """
    seg = segment_cord(slab.t1_ms, slab.voxel_mm)
    c = cord_coordinates(seg.cord, seg.centre_ji, slab.affine_lps, slab=1, n_slabs=2)
    learned = gm_prior_from_controls(
        [(c, slab.truth["gm"])], pseudo_count=1.0, base_prior=pam50_gm_prior(2)
    )
    sampled = c.sample(learned)
    truth_gm = slab.truth["gm"] & seg.cord
    assert np.nanmean(sampled[truth_gm]) > 0.6
    assert np.nanmean(sampled[seg.cord & ~truth_gm]) < 0.2
    with pytest.raises(ValueError, match="at least one"):
        gm_prior_from_controls([])
