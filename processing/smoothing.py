"""Gaussian smoothing of images with holes (NaN = no value), by normalised convolution."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = ["smooth_ignoring_nan"]


def smooth_ignoring_nan(
    values: NDArray[np.float64], sigma_vox: tuple[float, ...], *, mode: str = "nearest"
) -> NDArray[np.float64]:
    """Gaussian smoothing where NaN voxels neither count nor spread (and stay NaN).

    Parameters
    ----------
    values : ndarray
        Image; NaN marks voxels without a value.
    sigma_vox : tuple of float
        Gaussian SD per axis in voxels (0 leaves an axis alone).
    mode : str
        Border handling of :func:`scipy.ndimage.gaussian_filter`.

    Returns
    -------
    ndarray of float64, same shape

    Examples
    --------
    >>> smooth_ignoring_nan(np.array([2.0, np.nan, 2.0, 2.0]), (1.0,)).round(6).tolist()
    [2.0, nan, 2.0, 2.0]
    """
    valid = np.isfinite(values)
    if valid.all():
        return ndimage.gaussian_filter(values, sigma_vox, mode=mode)
    weight = ndimage.gaussian_filter(valid.astype(np.float64), sigma_vox, mode=mode)
    total = ndimage.gaussian_filter(np.where(valid, values, 0.0), sigma_vox, mode=mode)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid & (weight > 1e-6), total / weight, np.nan)
