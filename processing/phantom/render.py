"""Partial-volume rendering: material fractions per voxel by sub-voxel supersampling."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from processing.phantom.geometry import SlabGeometry
from processing.phantom.lesions import Lesion, apply_lesions
from processing.phantom.protocol import Anatomy

__all__ = ["render_slice_fractions"]


def _offsets(count: int) -> NDArray[np.float64]:
    """Sub-voxel sample offsets (voxel units) of a box profile: centres of ``count`` bins."""
    return (np.arange(count) + 0.5) / count - 0.5


def render_slice_fractions(
    geometry: SlabGeometry,
    k: int,
    anatomy: Anatomy,
    lesions: tuple[Lesion, ...],
    n_materials: int,
    *,
    inplane_samples: int = 3,
    slice_samples: int = 4,
    fine_radius_mm: float = 12.0,
    medium_radius_mm: float = 30.0,
) -> NDArray[np.float32]:
    """Fraction of each material in every voxel of slice ``k``.

    Sampling is adaptive: voxels whose centre lies within ``fine_radius_mm`` of the cord
    centre line (cord, CSF, canal wall) get ``inplane_samples**2 * slice_samples`` samples,
    voxels within ``medium_radius_mm`` get ``slice_samples`` samples along the slice normal
    (slice profile), the rest of the neck one sample.

    Parameters
    ----------
    geometry : SlabGeometry
    k : int
        Slice index.
    anatomy : Anatomy
    lesions : tuple of Lesion
    n_materials : int
        Number of material codes (base materials + 2 per lesion).
    inplane_samples, slice_samples : int
        Supersampling factors of the finely sampled region.
    fine_radius_mm, medium_radius_mm : float
        Radii of the finely and medium sampled regions around the cord.

    Returns
    -------
    ndarray of float32, shape (rows, cols, n_materials)
        Fractions summing to 1 in every voxel.
    """
    n_slices, rows, cols = geometry.shape
    if not 0 <= k < n_slices:
        raise ValueError(f"slice index {k} outside 0..{n_slices - 1}")
    if inplane_samples < 1 or slice_samples < 1:
        raise ValueError("supersampling factors must be >= 1")
    jj, ii = np.meshgrid(np.arange(rows, dtype=float), np.arange(cols, dtype=float), indexing="ij")
    centres = geometry.points_mm(k, jj, ii)
    xc, yc = anatomy.centreline(centres[..., 2])
    distance = np.hypot(centres[..., 0] - xc, centres[..., 1] - yc).ravel()
    tier = (distance <= medium_radius_mm).astype(int) + (distance <= fine_radius_mm)
    counts = np.zeros((rows * cols, n_materials), dtype=np.float32)
    sampling = {
        0: (np.zeros(1), np.zeros(1)),
        1: (_offsets(slice_samples), np.zeros(1)),
        2: (_offsets(slice_samples), _offsets(inplane_samples)),
    }
    for level, (dk, dij) in sampling.items():
        index = np.flatnonzero(tier == level)
        if index.size == 0:
            continue
        j0 = jj.ravel()[index]
        i0 = ii.ravel()[index]
        ok, oj, oi = np.meshgrid(dk, dij, dij, indexing="ij")
        n_sub = ok.size
        points = geometry.points_mm(
            k + ok.ravel()[None, :], j0[:, None] + oj.ravel()[None, :], i0[:, None] + oi.ravel()
        )
        codes = anatomy.materials(points)
        if lesions:
            codes = apply_lesions(points, codes, anatomy, lesions)
        voxel = np.repeat(np.arange(index.size), n_sub)
        hist = np.bincount(
            voxel * n_materials + codes.ravel().astype(np.int64),
            minlength=index.size * n_materials,
        ).reshape(index.size, n_materials)
        counts[index] = hist / np.float32(n_sub)
    return counts.reshape(rows, cols, n_materials)
