"""When a T2*-weighted image is used for the GM/WM split, and when it is refused."""

from __future__ import annotations

import numpy as np

from processing.segmentation import CordSegmentation
from service.pipeline.quantify import MIN_T2STAR_CORRELATION, GreyWhiteEvidence
from service.pipeline.quantify import t2star_evidence as _t2star_evidence

VOXEL_MM = (4.0, 0.3, 0.3)


def t2star_evidence(
    t1: np.ndarray, t2: np.ndarray, cord: np.ndarray, voxel_mm: tuple[float, float, float]
) -> GreyWhiteEvidence:
    """Run the evidence step with the image given whole (the sampler cuts the asked box)."""
    asked: list[tuple[slice, ...]] = []

    def sampler(box: tuple[slice, slice, slice]) -> np.ndarray:
        asked.append(box)
        return t2[box]

    n = cord.shape[0]
    segmentation = CordSegmentation(cord, cord, np.zeros((n, 2)), np.ones(n, bool), ())
    evidence = _t2star_evidence(t1, sampler, segmentation, voxel_mm)
    assert len(asked) == 1  # resampled once, on the box around the cord
    return evidence


def _slab(shift_vox: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T1 map and T2*-weighted image of a cord (dark) in CSF (bright), the GRE shifted."""
    jj, ii = np.mgrid[:80, :80].astype(float)
    radius = np.hypot(jj - 40, ii - 40)
    cord = radius < 12
    t1 = np.where(cord, 1200.0, np.where(radius < 22, 3700.0, 900.0))[None].repeat(4, 0)
    rng = np.random.default_rng(0)
    t1 = t1 + rng.normal(0, 60, t1.shape)
    t2 = np.where(cord, 300.0, np.where(radius < 22, 600.0, 150.0))
    t2 = np.roll(t2, shift_vox, axis=(0, 1))[None].repeat(4, 0) + rng.normal(0, 15, t1.shape)
    return t1, t2, cord[None].repeat(4, 0)


def test_a_matching_gre_is_aligned_and_used() -> None:
    t1, t2, cord = _slab(shift_vox=(2, -1))
    evidence = t2star_evidence(t1, t2, cord, VOXEL_MM)
    assert evidence.info["source"] == "T1 + T2*-weighted GRE"
    np.testing.assert_allclose(
        evidence.info["t2star_alignment"]["shift_mm"], [0.6, -0.3], atol=0.05
    )
    assert evidence.t2star is not None
    # after alignment the GRE's cord edge sits on the T1 cord edge
    inside = evidence.t2star[cord].mean()
    ring = evidence.t2star[~cord & (np.abs(t1 - 3700) < 400)].mean()
    assert inside < 0.6 * ring


def test_a_gre_that_does_not_show_the_same_anatomy_is_not_used() -> None:
    t1, _, cord = _slab()
    noise = np.random.default_rng(3).normal(100.0, 10.0, t1.shape)
    evidence = t2star_evidence(t1, noise, cord, VOXEL_MM)
    assert evidence.t2star is None
    assert evidence.info["source"] == "T1"
    assert f"< {MIN_T2STAR_CORRELATION}" in evidence.info["t2star_note"]


def test_a_gre_that_misses_the_cord_is_not_used() -> None:
    t1, t2, cord = _slab()
    evidence = t2star_evidence(t1, np.full(t2.shape, np.nan), cord, VOXEL_MM)
    assert evidence.t2star is None
    assert evidence.info["t2star_cord_covered_percent"] == 0.0
    assert "does not cover the cord" in evidence.info["t2star_note"]


def test_a_gre_shifted_beyond_the_search_range_is_not_used() -> None:
    t1, t2, cord = _slab(shift_vox=(9, 0))  # 2.7 mm, beyond the 1.5 mm range
    evidence = t2star_evidence(t1, t2, cord, VOXEL_MM)
    assert evidence.t2star is None
    assert "not used" in evidence.info["t2star_note"]
