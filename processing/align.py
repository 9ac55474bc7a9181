"""Residual in-plane misalignment between two images of one slab (e.g. T1 map and T2* GRE).

Series of one exam share a frame of reference, so resampling by their headers
(:mod:`processing.resample`) puts them on one grid; what remains is subject motion between the
series, mostly a small in-plane translation. It is estimated here by normalised cross
correlation (NCC) inside a box around the cord, where both a T1 map and a T2*-weighted image
show bright CSF around a darker cord, over integer voxel shifts within a few tenths of a
millimetre to ``max_shift_mm``, refined to sub-voxel precision by fitting a parabola through
the peak and its two neighbours along each axis.

Sign convention: a shift ``d`` means the content of ``moving`` sits at ``reference``
position ``+ d``, i.e. ``moving[j, i] ~ reference[j - d_j, i - d_i]``;
:func:`apply_inplane_shift` with the same ``d`` moves it back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from processing.smoothing import smooth_ignoring_nan

__all__ = ["InPlaneShift", "apply_inplane_shift", "estimate_inplane_shift"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class InPlaneShift:
    """Estimated in-plane translation of ``moving`` relative to ``reference``.

    Attributes
    ----------
    shift_mm : tuple of float
        ``(row_mm, col_mm)``: displacement along increasing row index j and column index i.
    correlation : float
        NCC at the best integer shift (1 = identical up to scale and offset).
    at_limit : bool
        The peak lies on the edge of the search range (true shift may be larger).
    """

    shift_mm: tuple[float, float]
    correlation: float
    at_limit: bool


def _ncc(a: FloatArray, b: FloatArray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 50:
        return np.nan
    x = a[ok] - a[ok].mean()
    y = b[ok] - b[ok].mean()
    denominator = float(np.sqrt(np.sum(x * x) * np.sum(y * y)))
    return float(np.sum(x * y) / denominator) if denominator > 0 else np.nan


def _parabola_offset(minus: float, centre: float, plus: float) -> float:
    """Vertex offset (-0.5..0.5) of the parabola through three equally spaced samples."""
    curvature = minus - 2.0 * centre + plus
    if not np.isfinite(curvature) or curvature >= 0:
        return 0.0
    return float(np.clip(0.5 * (minus - plus) / curvature, -0.5, 0.5))


def estimate_inplane_shift(
    reference: FloatArray,
    moving: FloatArray,
    cord: BoolArray,
    *,
    voxel_mm: tuple[float, float],
    max_shift_mm: float = 1.5,
    margin_mm: float = 5.0,
    smooth_mm: float = 0.3,
) -> InPlaneShift:
    """Estimate one in-plane translation of ``moving`` relative to ``reference`` for a slab.

    Parameters
    ----------
    reference, moving : ndarray, shape (n_slices, rows, cols)
        Two images on the same grid (e.g. T1 map and T2*-weighted image resampled onto it);
        NaN marks voxels without a value (they are left out of the correlation).
    cord : ndarray of bool, same shape
        Cord mask on the reference; the correlation box is its in-plane bounding box over
        all slices, widened by ``margin_mm`` (CSF and canal wall).
    voxel_mm : tuple of float
        ``(row_mm, col_mm)`` pixel spacing.
    max_shift_mm : float
        Search range (each axis).
    margin_mm : float
        Box margin around the cord.
    smooth_mm : float
        In-plane Gaussian smoothing (SD) applied to both images first (noise, smooth peak).

    Returns
    -------
    InPlaneShift

    Raises
    ------
    ValueError
        For mismatched shapes, bad sizes, an empty cord mask or too little overlap.

    Examples
    --------
    >>> jj, ii = np.mgrid[:60, :60]
    >>> ref = (np.hypot(jj - 30, ii - 30) < 12).astype(float)[None].repeat(2, 0)
    >>> mov = np.roll(ref, 2, axis=2)
    >>> cord = (np.hypot(jj - 30, ii - 30) < 6)[None].repeat(2, 0)
    >>> r = estimate_inplane_shift(ref, mov, cord, voxel_mm=(0.3, 0.3))
    >>> [round(v, 2) for v in r.shift_mm]
    [0.0, 0.6]
    """
    ref = np.asarray(reference, dtype=np.float64)
    mov = np.asarray(moving, dtype=np.float64)
    mask = np.asarray(cord, dtype=bool)
    if ref.ndim != 3 or mov.shape != ref.shape or mask.shape != ref.shape:
        raise ValueError(
            f"reference, moving and cord must be 3-D with one shape, got {ref.shape}, "
            f"{mov.shape}, {mask.shape}"
        )
    spacing = tuple(float(v) for v in voxel_mm)
    if len(spacing) != 2 or min(spacing) <= 0:
        raise ValueError(f"voxel_mm must be 2 positive sizes, got {voxel_mm}")
    if max_shift_mm <= 0 or margin_mm < 0 or smooth_mm < 0:
        raise ValueError("max_shift_mm must be > 0, margin_mm and smooth_mm >= 0")
    if not mask.any():
        raise ValueError("cord mask is empty: nothing to align on")
    reach = [int(np.ceil(max_shift_mm / s)) for s in spacing]
    _, rows, cols = np.nonzero(mask)
    box = []
    for axis, (values, n) in enumerate(((rows, ref.shape[1]), (cols, ref.shape[2]))):
        pad = int(np.ceil(margin_mm / spacing[axis]))
        low = max(int(values.min()) - pad, reach[axis])
        high = min(int(values.max()) + 1 + pad, n - reach[axis])
        if high - low < 3:
            raise ValueError("the cord box is too close to the image edge to search for a shift")
        box.append((low, high))
    # Work on the search region only (box + shift range + smoothing support).
    support = [reach[axis] + int(np.ceil(4 * smooth_mm / spacing[axis])) for axis in (0, 1)]
    crop = [
        (max(low - extra, 0), min(high + extra, n))
        for (low, high), extra, n in zip(box, support, ref.shape[1:], strict=True)
    ]
    ref = ref[:, crop[0][0] : crop[0][1], crop[1][0] : crop[1][1]]
    mov = mov[:, crop[0][0] : crop[0][1], crop[1][0] : crop[1][1]]
    if smooth_mm > 0:
        sigma = (smooth_mm / spacing[0], smooth_mm / spacing[1])
        ref = smooth_ignoring_nan(ref, (0.0, *sigma), mode="reflect")
        mov = smooth_ignoring_nan(mov, (0.0, *sigma), mode="reflect")
    (j0, j1), (i0, i1) = (
        (low - c0, high - c0) for (low, high), (c0, _) in zip(box, crop, strict=True)
    )
    fixed = ref[:, j0:j1, i0:i1]
    scores = np.full((2 * reach[0] + 1, 2 * reach[1] + 1), np.nan)
    for a, dj in enumerate(range(-reach[0], reach[0] + 1)):
        for b, di in enumerate(range(-reach[1], reach[1] + 1)):
            scores[a, b] = _ncc(fixed, mov[:, j0 + dj : j1 + dj, i0 + di : i1 + di])
    if not np.isfinite(scores).any():
        raise ValueError("too few voxels with both images to correlate")
    a, b = np.unravel_index(np.nanargmax(scores), scores.shape)
    at_limit = a in (0, scores.shape[0] - 1) or b in (0, scores.shape[1] - 1)
    dj = float(a - reach[0])
    di = float(b - reach[1])
    if 0 < a < scores.shape[0] - 1:
        dj += _parabola_offset(scores[a - 1, b], scores[a, b], scores[a + 1, b])
    if 0 < b < scores.shape[1] - 1:
        di += _parabola_offset(scores[a, b - 1], scores[a, b], scores[a, b + 1])
    return InPlaneShift(
        shift_mm=(dj * spacing[0], di * spacing[1]),
        correlation=float(scores[a, b]),
        at_limit=bool(at_limit),
    )


def apply_inplane_shift(
    volume: FloatArray, shift_mm: tuple[float, float], *, voxel_mm: tuple[float, float]
) -> FloatArray:
    """Move ``volume`` back by ``shift_mm`` (as estimated by :func:`estimate_inplane_shift`).

    Linear interpolation; NaN where the result would use a NaN or lie outside the input.

    Parameters
    ----------
    volume : ndarray, shape (n_slices, rows, cols)
    shift_mm : tuple of float
        ``(row_mm, col_mm)`` displacement of the content to undo.
    voxel_mm : tuple of float
        ``(row_mm, col_mm)`` pixel spacing.

    Returns
    -------
    ndarray of float64, same shape

    Examples
    --------
    >>> v = np.arange(5.0)[None, None, :].repeat(2, 1)
    >>> apply_inplane_shift(v, (0.0, 0.5), voxel_mm=(0.5, 0.5))[0, 0].tolist()
    [1.0, 2.0, 3.0, 4.0, nan]
    """
    values = np.asarray(volume, dtype=np.float64)
    if values.ndim != 3:
        raise ValueError(f"volume must be 3-D, got shape {values.shape}")
    spacing = tuple(float(v) for v in voxel_mm)
    shift = tuple(float(v) for v in shift_mm)
    if len(spacing) != 2 or min(spacing) <= 0:
        raise ValueError(f"voxel_mm must be 2 positive sizes, got {voxel_mm}")
    if len(shift) != 2 or not all(np.isfinite(shift)):
        raise ValueError(f"shift_mm must be 2 finite numbers, got {shift_mm}")
    offset = (0.0, -shift[0] / spacing[0], -shift[1] / spacing[1])
    valid = np.isfinite(values)
    moved = ndimage.shift(np.where(valid, values, 0.0), offset, order=1, mode="constant")
    weight = ndimage.shift(valid.astype(np.float64), offset, order=1, mode="constant", cval=0.0)
    return np.where(weight > 1.0 - 1e-6, moved, np.nan)
