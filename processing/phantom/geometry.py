"""Slab geometry: voxel grid of one stack of parallel slices (array ``[k, j, i]``, LPS)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["SlabGeometry", "slab_geometry"]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class SlabGeometry:
    """Voxel grid of a slab.

    Parameters
    ----------
    shape : tuple of int
        ``(n_slices, rows, cols)``.
    affine_lps : ndarray, shape (4, 4)
        Maps ``[k, j, i, 1]`` to patient LPS mm (see docs/CONVENTIONS.md).
    """

    shape: tuple[int, int, int]
    affine_lps: FloatArray

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"shape must be 3 positive ints, got {self.shape}")
        if np.asarray(self.affine_lps).shape != (4, 4):
            raise ValueError("affine_lps must be 4x4")

    @property
    def slice_step_mm(self) -> FloatArray:
        """Vector from one slice centre to the next."""
        return np.asarray(self.affine_lps[:3, 0])

    @property
    def row_cosines(self) -> FloatArray:
        """Direction of increasing column index i (DICOM 'row' direction cosines)."""
        v = self.affine_lps[:3, 2]
        return v / np.linalg.norm(v)

    @property
    def column_cosines(self) -> FloatArray:
        """Direction of increasing row index j."""
        v = self.affine_lps[:3, 1]
        return v / np.linalg.norm(v)

    @property
    def pixel_spacing_mm(self) -> tuple[float, float]:
        """(row spacing, column spacing) as DICOM PixelSpacing."""
        return (
            float(np.linalg.norm(self.affine_lps[:3, 1])),
            float(np.linalg.norm(self.affine_lps[:3, 2])),
        )

    @property
    def slice_mm(self) -> float:
        """Distance between slice centres."""
        return float(np.linalg.norm(self.slice_step_mm))

    def position_mm(self, k: int) -> FloatArray:
        """Patient position of voxel (k, 0, 0) (DICOM ImagePositionPatient)."""
        return self.affine_lps @ np.array([k, 0.0, 0.0, 1.0])

    def points_mm(self, k: FloatArray, j: FloatArray, i: FloatArray) -> FloatArray:
        """Patient coordinates of (fractional) voxel indices, broadcast together."""
        k, j, i = np.broadcast_arrays(
            np.asarray(k, dtype=float), np.asarray(j, dtype=float), np.asarray(i, dtype=float)
        )
        a = self.affine_lps
        return (
            k[..., None] * a[:3, 0] + j[..., None] * a[:3, 1] + i[..., None] * a[:3, 2] + a[:3, 3]
        )

    def slice_centres_mm(self) -> FloatArray:
        """Centre of each slice, shape (n_slices, 3)."""
        n, rows, cols = self.shape
        return self.points_mm(np.arange(n), (rows - 1) / 2.0, (cols - 1) / 2.0)


def slab_geometry(
    centre_mm: tuple[float, float, float],
    *,
    n_slices: int,
    rows: int,
    cols: int,
    voxel_mm: float,
    slice_mm: float,
    oblique_deg: float = 0.0,
) -> SlabGeometry:
    """Axial (or oblique about the left-right axis) slab centred on ``centre_mm``.

    Rows run along +x (patient left), columns along +y rotated by ``oblique_deg`` toward -z,
    and slices step along their cross product (toward the head for ``oblique_deg = 0``).

    Examples
    --------
    >>> g = slab_geometry((0.0, 0.0, 0.0), n_slices=3, rows=4, cols=4, voxel_mm=0.5, slice_mm=4)
    >>> (g.slice_step_mm + 0.0).tolist()
    [0.0, 0.0, 4.0]
    """
    if min(n_slices, rows, cols) < 1:
        raise ValueError("n_slices, rows and cols must be >= 1")
    if voxel_mm <= 0 or slice_mm <= 0:
        raise ValueError("voxel_mm and slice_mm must be positive")
    if not -45.0 <= oblique_deg <= 45.0:
        raise ValueError("oblique_deg must be within [-45, 45]")
    theta = np.deg2rad(oblique_deg)
    row_dir = np.array([1.0, 0.0, 0.0])
    col_dir = np.array([0.0, np.cos(theta), -np.sin(theta)])
    normal = np.cross(row_dir, col_dir) + 0.0  # no negative zeros in the headers
    affine = np.eye(4)
    affine[:3, 0] = normal * slice_mm
    affine[:3, 1] = col_dir * voxel_mm
    affine[:3, 2] = row_dir * voxel_mm
    centre = np.asarray(centre_mm, dtype=float)
    affine[:3, 3] = (
        centre
        - affine[:3, 0] * (n_slices - 1) / 2.0
        - affine[:3, 1] * (rows - 1) / 2.0
        - affine[:3, 2] * (cols - 1) / 2.0
    )
    return SlabGeometry(shape=(n_slices, rows, cols), affine_lps=affine)
