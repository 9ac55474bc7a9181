"""A cord segmentation that takes a given (reader's) cord outline on the slices it covers."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from processing.segmentation.cord import CordSegmentation

__all__ = ["segmentation_with_given_cord"]

BoolArray = NDArray[np.bool_]


def segmentation_with_given_cord(
    cord: BoolArray, automatic: CordSegmentation | None
) -> CordSegmentation:
    """A cord segmentation whose slices with given cord voxels take the given outline.

    Parameters
    ----------
    cord : ndarray of bool, shape (n_slices, rows, cols)
        Given cord; a slice without any voxel is not given.
    automatic : CordSegmentation or None
        The automatic segmentation for the other slices; None when every slice is given.

    Returns
    -------
    CordSegmentation
        Centre per slice from the cord's centroid, ``found`` where the slice has cord. The CSF
        ring (read by no later stage) is left empty on given slices.

    Raises
    ------
    ValueError
        If ``automatic`` is None while some slice is not given, or has another shape.

    Examples
    --------
    >>> cord = np.zeros((2, 5, 5), bool); cord[:, 1:3, 2] = True
    >>> seg = segmentation_with_given_cord(cord, None)
    >>> seg.found.tolist(), seg.centre_ji[0].tolist()
    ([True, True], [1.5, 2.0])
    """
    cord = np.asarray(cord, dtype=bool)
    if cord.ndim != 3:
        raise ValueError(f"cord must be 3-D [k, j, i], got shape {cord.shape}")
    given = cord.any(axis=(1, 2))
    if automatic is None and not given.all():
        raise ValueError("cord is not given on every slice: the automatic segmentation is needed")
    if automatic is not None and automatic.cord.shape != cord.shape:
        raise ValueError(f"automatic segmentation {automatic.cord.shape} is not {cord.shape}")
    out_cord = cord.copy()
    csf = np.zeros(cord.shape, dtype=bool)
    centre = np.full((cord.shape[0], 2), np.nan)
    found = given.copy()
    notes: tuple[str, ...] = ()
    if automatic is not None:
        out_cord[~given] = automatic.cord[~given]
        csf[~given] = automatic.csf[~given]
        centre[~given] = automatic.centre_ji[~given]
        found[~given] = automatic.found[~given]
        notes = automatic.notes
    for k in np.flatnonzero(given):
        jj, ii = np.nonzero(cord[k])
        centre[k] = (jj.mean(), ii.mean())
    return CordSegmentation(cord=out_cord, csf=csf, centre_ji=centre, found=found, notes=notes)
