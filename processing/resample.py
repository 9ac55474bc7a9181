"""Resample a volume onto another voxel grid of the same patient frame (world coordinates).

Series of one exam rarely share a grid: a B1 map is acquired at a few millimetres, a
multi-echo GRE may have finer pixels, thicker slices or another obliquity than the MP2RAGE.
Both grids are described by 4x4 affines mapping ``[k, j, i, 1]`` to patient millimetres (see
docs/CONVENTIONS.md), so the map from a target voxel to the source voxel it falls in is the
fixed linear map ``inv(source_affine) @ target_affine``: no registration, no search.

When the source is finer than the target along an axis, it is first smoothed with a Gaussian
whose width makes up the difference (so a 0.2 mm GRE resampled to 0.3 mm averages what one
target voxel covers instead of picking single noisy voxels).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from processing.smoothing import smooth_ignoring_nan

__all__ = ["coverage", "coverage_fraction", "resample_to_grid", "source_index_map"]

FloatArray = NDArray[np.float64]

#: Gaussian sigma (in target-voxel units) that matches a box of one voxel (FWHM ~ 1 voxel).
_BOX_SIGMA = 0.4247


def _check_affine(name: str, affine: NDArray[np.float64]) -> FloatArray:
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"{name} must be 4x4, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{name} has non-finite entries")
    if abs(float(np.linalg.det(matrix[:3, :3]))) < 1e-9:
        raise ValueError(f"{name} is singular (zero voxel size or parallel axes)")
    return matrix


def source_index_map(
    source_affine: NDArray[np.float64], target_affine: NDArray[np.float64]
) -> FloatArray:
    """4x4 map from a target voxel index ``[k, j, i, 1]`` to the source voxel index.

    Examples
    --------
    >>> source = np.diag([2.0, 1.0, 1.0, 1.0])
    >>> target = np.diag([1.0, 1.0, 1.0, 1.0])
    >>> source_index_map(source, target) @ [4, 0, 0, 1]
    array([2., 0., 0., 1.])
    """
    source = _check_affine("source_affine", source_affine)
    target = _check_affine("target_affine", target_affine)
    return np.linalg.inv(source) @ target


def _target_extent_in_source(index_map: FloatArray) -> FloatArray:
    """How many source voxels one target voxel spans along each source axis."""
    return np.abs(index_map[:3, :3]).sum(axis=1)


def resample_to_grid(
    values: NDArray[np.floating] | NDArray[np.integer],
    source_affine: NDArray[np.float64],
    target_shape: tuple[int, int, int],
    target_affine: NDArray[np.float64],
    *,
    order: int = 1,
    fill: float = np.nan,
    antialias: bool = True,
) -> FloatArray:
    """Sample ``values`` (on the source grid) at the voxel centres of the target grid.

    Parameters
    ----------
    values : ndarray, shape (n_slices, rows, cols)
        Source volume indexed ``[k, j, i]``; NaN marks voxels without a value.
    source_affine, target_affine : ndarray, shape (4, 4)
        Voxel index ``[k, j, i, 1]`` -> patient mm (same frame of reference).
    target_shape : tuple of int
        Shape of the target grid.
    order : int
        Spline order: 0 (nearest, for labels) or 1 (trilinear).
    fill : float
        Value of target voxels outside the source volume.
    antialias : bool
        Smooth the source first where it is finer than the target (``order=1`` only).

    Returns
    -------
    ndarray of float64, shape ``target_shape``

    Raises
    ------
    ValueError
        For a non-3-D source, a bad target shape, a singular affine or an unsupported order.

    Examples
    --------
    >>> src = np.arange(4.0)[:, None, None] * np.ones((4, 2, 2))
    >>> source_affine = np.diag([2.0, 1.0, 1.0, 1.0])  # 2 mm slices
    >>> out = resample_to_grid(src, source_affine, (7, 2, 2), np.eye(4))  # 1 mm slices
    >>> out[:, 0, 0].tolist()
    [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    """
    source = np.asarray(values, dtype=np.float64)
    if source.ndim != 3:
        raise ValueError(f"values must be 3-D [k, j, i], got shape {source.shape}")
    shape = tuple(int(n) for n in target_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"target_shape must be 3 positive sizes, got {target_shape}")
    if order not in (0, 1):
        raise ValueError(f"order must be 0 (nearest) or 1 (linear), got {order}")
    index_map = source_index_map(source_affine, target_affine)
    sigma = np.zeros(3)
    if antialias and order == 1:
        extent = _target_extent_in_source(index_map)
        sigma = _BOX_SIGMA * np.sqrt(np.clip(extent**2 - 1.0, 0.0, None))
    # Only the part of the source the target grid sees (plus the filters' reach) is used.
    inside = coverage(source.shape, source_affine, shape, target_affine)
    if not inside.any():
        return np.full(shape, fill, dtype=np.float64)
    corners = np.array(
        [
            [k, j, i, 1.0]
            for k in (0, shape[0] - 1)
            for j in (0, shape[1] - 1)
            for i in (0, shape[2] - 1)
        ]
    )
    seen = corners @ index_map.T
    reach = 2 + np.ceil(4.0 * sigma).astype(int)
    low = np.maximum(np.floor(seen[:, :3].min(axis=0)).astype(int) - reach, 0)
    high = np.minimum(np.ceil(seen[:, :3].max(axis=0)).astype(int) + reach + 1, source.shape)
    source = source[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    index_map = index_map.copy()
    index_map[:3, 3] -= low
    if np.any(sigma > 0.05):
        source = smooth_ignoring_nan(source, tuple(float(s) for s in sigma))
    # Normalised interpolation: NaN voxels get no weight, and a target voxel whose neighbours
    # are mostly NaN stays NaN.
    valid = np.isfinite(source)
    all_valid = bool(valid.all())
    interpolated = _affine(np.where(valid, source, 0.0), index_map, shape, order)
    if not all_valid:
        weight = _affine(valid.astype(np.float64), index_map, shape, order)
        with np.errstate(invalid="ignore", divide="ignore"):
            interpolated = np.where(weight > 0.5, interpolated / weight, np.nan)
    return np.where(inside & np.isfinite(interpolated), interpolated, fill)


def _affine(
    values: FloatArray, index_map: FloatArray, shape: tuple[int, ...], order: int
) -> FloatArray:
    return ndimage.affine_transform(
        values,
        index_map[:3, :3],
        offset=index_map[:3, 3],
        output_shape=shape,
        order=order,
        mode="nearest",
        prefilter=False,
    )


def coverage(
    source_shape: tuple[int, ...],
    source_affine: NDArray[np.float64],
    target_shape: tuple[int, int, int],
    target_affine: NDArray[np.float64],
    *,
    margin_voxels: float = 0.5,
) -> NDArray[np.bool_]:
    """Target voxels whose centre lies inside the source volume.

    A source voxel counts out to half a voxel beyond its centre (``margin_voxels``), so the
    source's outer voxels still cover the boundary of their own footprint.
    """
    if len(source_shape) != 3:
        raise ValueError(f"source_shape must have 3 sizes, got {source_shape}")
    index_map = source_index_map(source_affine, target_affine)
    k, j, i = np.meshgrid(
        *(np.arange(n, dtype=np.float64) for n in target_shape), indexing="ij", sparse=True
    )
    inside = np.ones(tuple(int(n) for n in target_shape), dtype=bool)
    for axis, n in enumerate(source_shape):
        row = index_map[axis]
        position = row[0] * k + row[1] * j + row[2] * i + row[3]
        inside &= (position >= -margin_voxels) & (position <= n - 1 + margin_voxels)
    return inside


def coverage_fraction(
    source_shape: tuple[int, ...],
    source_affine: NDArray[np.float64],
    target_shape: tuple[int, int, int],
    target_affine: NDArray[np.float64],
) -> float:
    """Fraction of the target grid's voxels that the source volume covers (0..1).

    Examples
    --------
    >>> half = np.diag([1.0, 1.0, 1.0, 1.0])
    >>> coverage_fraction((5, 4, 4), half, (10, 4, 4), half)
    0.5
    """
    return float(coverage(source_shape, source_affine, target_shape, target_affine).mean())
