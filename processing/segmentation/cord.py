"""Whole-cord segmentation on T1 maps, where CSF (long T1) is brighter than the cord.

The method needs no initial point. It

1. marks voxels whose T1 is unreliable (no signal in INV2, or a locally erratic T1 as in air
   and cortical bone);
2. scales T1 so that CSF is about 1 and hands the slab to
   :func:`processing.segmentation.detect.detect_cord`, which finds the cord centre line across
   slices (candidate score per slice + dynamic programming along z) and a star-shaped outline
   between the local cord and CSF values (the cord may touch the canal wall; lesions, whose T1
   stays well below CSF, stay inside);
3. returns the CSF within a few millimetres of the cord.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from processing.segmentation.detect import DetectionSettings, detect_cord

__all__ = ["CordSegmentation", "SegmentationSettings", "segment_cord"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
Box = tuple[slice, slice]

#: The CSF ring lies within this distance (mm) of the cord.
_CSF_RING_MM = 4.0


@dataclass(frozen=True)
class SegmentationSettings:
    """Tunable physiology of :func:`segment_cord` (defaults fit the 7 T cervical cord).

    Parameters
    ----------
    cord_t1_ms : tuple of float
        T1 range of the cord's core after light smoothing (lesions included).
    area_mm2 : tuple of float
        Plausible cord cross-section (C1-C7 is about 60-150 mm^2; the range leaves room for
        partial volume, atrophy and oblique cuts).
    max_shift_mm_per_slice : float
        Largest in-plane move of the cord centre from one slice to the next (per 4 mm).
    boundary_fraction : float
        Where the outline sits between the cord's T1 (0) and the CSF's T1 (1).
    smoothing_mm : float
        Gaussian sigma (mm) of the smoothing used to judge whether T1 is reliable.
    csf_reference_t1_ms : float
        Typical CSF T1; T1 is divided by it for the detection (CSF about 1, cord about 0.3).
    min_csf_contrast_ms : float
        Smallest CSF-minus-cord T1 difference around a cord.
    """

    cord_t1_ms: tuple[float, float] = (800.0, 2000.0)
    area_mm2: tuple[float, float] = (30.0, 220.0)
    max_shift_mm_per_slice: float = 3.0
    boundary_fraction: float = 0.4
    smoothing_mm: float = 0.5
    csf_reference_t1_ms: float = 3800.0
    min_csf_contrast_ms: float = 760.0

    def __post_init__(self) -> None:
        if not 0 < self.cord_t1_ms[0] < self.cord_t1_ms[1]:
            raise ValueError("cord_t1_ms must be an increasing pair of positive T1")
        if not 0 < self.area_mm2[0] < self.area_mm2[1]:
            raise ValueError("area_mm2 must be an increasing pair of positive areas")
        if self.max_shift_mm_per_slice <= 0 or self.smoothing_mm <= 0:
            raise ValueError("max_shift_mm_per_slice and smoothing_mm must be positive")
        if not 0 < self.boundary_fraction < 1:
            raise ValueError("boundary_fraction must be within (0, 1)")
        if not 0 < self.min_csf_contrast_ms < self.csf_reference_t1_ms:
            raise ValueError("need 0 < min_csf_contrast_ms < csf_reference_t1_ms")


@dataclass(frozen=True)
class CordSegmentation:
    """Result of :func:`segment_cord` on one slab.

    Attributes
    ----------
    cord : ndarray of bool, shape (n_slices, rows, cols)
        Whole cord (GM + WM + lesions).
    csf : ndarray of bool, shape (n_slices, rows, cols)
        CSF ring around the cord (within a few mm of it).
    centre_ji : ndarray of float, shape (n_slices, 2)
        Cord centroid (row, column) per slice; NaN where no cord was found.
    found : ndarray of bool, shape (n_slices,)
        Slice has a plausible cord.
    notes : tuple of str
        Why slices were rejected (read by QC).
    """

    cord: BoolArray
    csf: BoolArray
    centre_ji: FloatArray
    found: BoolArray
    notes: tuple[str, ...]

    def area_mm2(self, voxel_mm: tuple[float, float, float]) -> FloatArray:
        """Cord cross-section (mm^2) per slice."""
        return self.cord.sum(axis=(1, 2)) * float(voxel_mm[1] * voxel_mm[2])

    def box(self, margin_vox: int) -> tuple[slice, slice, slice] | None:
        """Every slice, in-plane the cord's bounding box grown by ``margin_vox`` voxels.

        Work confined to the cord and its surroundings can crop to this box; None without
        cord.

        Examples
        --------
        >>> cord = np.zeros((2, 9, 9), bool); cord[1, 4:6, 3] = True
        >>> seg = CordSegmentation(cord, cord, np.zeros((2, 2)), np.ones(2, bool), ())
        >>> seg.box(2)
        (slice(0, 2, None), slice(2, 8, None), slice(1, 6, None))
        """
        if margin_vox < 0:
            raise ValueError(f"margin_vox must be >= 0, got {margin_vox}")
        rows = np.flatnonzero(self.cord.any(axis=(0, 2)))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(self.cord.any(axis=(0, 1)))
        n_rows, n_cols = self.cord.shape[1:]
        return (
            slice(0, self.cord.shape[0]),
            slice(max(int(rows[0]) - margin_vox, 0), min(int(rows[-1]) + 1 + margin_vox, n_rows)),
            slice(max(int(cols[0]) - margin_vox, 0), min(int(cols[-1]) + 1 + margin_vox, n_cols)),
        )


def _validate(
    t1_ms: FloatArray, voxel_mm: tuple[float, float, float], inv2: FloatArray | None
) -> tuple[FloatArray, tuple[float, float, float], FloatArray | None]:
    t1 = np.asarray(t1_ms, dtype=np.float64)
    if t1.ndim != 3:
        raise ValueError(f"t1_ms must be 3-D [k, j, i], got shape {t1.shape}")
    if min(t1.shape[1:]) < 8:
        raise ValueError(f"slices of {t1.shape[1:]} voxels are too small to hold a cord")
    spacing = tuple(float(v) for v in voxel_mm)
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ValueError(f"voxel_mm must be 3 positive sizes (slice, row, col), got {voxel_mm}")
    signal = None
    if inv2 is not None:
        signal = np.asarray(inv2, dtype=np.float64)
        if signal.shape != t1.shape:
            raise ValueError(f"inv2 shape {signal.shape} differs from t1_ms shape {t1.shape}")
    return t1, spacing, signal  # type: ignore[return-value]


def _open_in_plane(mask: BoolArray) -> BoolArray:
    """Binary opening of every slice by a 3 x 3 square, twice (= one 5 x 5 square).

    The same result as ``ndimage.binary_opening(mask, np.ones((1, 3, 3)), iterations=2)``
    (nothing outside the volume counts as set), with separable minimum / maximum filters,
    several times faster on whole slices.
    """
    size = (1, 5, 5)
    flags = np.ascontiguousarray(mask, dtype=np.bool_).view(np.uint8)
    eroded = ndimage.minimum_filter(flags, size=size, mode="constant", cval=0)
    return ndimage.maximum_filter(eroded, size=size, mode="constant", cval=0).view(np.bool_)


def _reliable(
    t1: FloatArray, inv2: FloatArray | None, sigma_vox: tuple[float, float]
) -> tuple[BoolArray, FloatArray]:
    """Voxels whose T1 can be trusted (signal in INV2, a locally steady T1), and T1 smoothed
    in-plane by one voxel.

    Without signal (air, cortical bone) the MP2RAGE ratio is noise and T1 jumps from voxel to
    voxel; tissue edges also give large local differences, but only along thin lines, which a
    morphological opening of the erratic mask removes.
    """
    finite = np.isfinite(t1)
    values = np.where(finite, t1, 0.0)
    smooth = ndimage.gaussian_filter(values, (0.0, 1.0, 1.0))
    residual = values - smooth
    spread = np.sqrt(ndimage.gaussian_filter(residual**2, (0.0, *sigma_vox)))
    erratic = _open_in_plane(spread > 700.0)
    ok = finite & ~erratic
    if inv2 is not None:
        reference = float(np.percentile(inv2, 99.5))
        ok &= inv2 > 0.05 * reference if reference > 0 else False
    return ok, smooth


def _grow(box: Box, margin: tuple[int, int], shape: tuple[int, ...]) -> Box:
    """``box`` widened by ``margin`` voxels per axis, clipped to a slice of ``shape``."""
    j, i = (
        slice(max(b.start - m, 0), min(b.stop + m, n))
        for b, m, n in zip(box, margin, shape, strict=True)
    )
    return j, i


def segment_cord(
    t1_ms: FloatArray,
    voxel_mm: tuple[float, float, float],
    *,
    inv2: FloatArray | None = None,
    settings: SegmentationSettings | None = None,
) -> CordSegmentation:
    """Find the spinal cord on every slice of a T1 map without any initial point.

    Parameters
    ----------
    t1_ms : ndarray, shape (n_slices, rows, cols)
        T1 (ms) on the exam grid; NaN where the lookup table had no answer.
    voxel_mm : tuple of float
        ``(slice_mm, row_mm, col_mm)``.
    inv2 : ndarray, optional
        INV2 magnitude on the same grid; voxels without signal (air, bone) are ignored.
    settings : SegmentationSettings, optional
        Physiological ranges and tolerances (defaults for the 7 T cervical cord).

    Returns
    -------
    CordSegmentation

    Raises
    ------
    ValueError
        For a volume that is not 3-D, slices too small, bad voxel sizes or an ``inv2`` of
        another shape.

    Examples
    --------
    >>> jj, ii = np.mgrid[:64, :64]
    >>> r = np.hypot(jj - 32, ii - 30) * 0.3
    >>> t1 = np.where(r < 5.0, 1250.0, np.where(r < 8.0, 3800.0, 1500.0))
    >>> seg = segment_cord(np.stack([t1, t1]), (4.0, 0.3, 0.3))
    >>> seg.found.tolist(), np.round(seg.centre_ji[0]).tolist()
    ([True, True], [32.0, 30.0])
    """
    s = settings if settings is not None else SegmentationSettings()
    t1, spacing, signal = _validate(t1_ms, voxel_mm, inv2)
    pixel_mm = (spacing[1], spacing[2])
    sigma_vox = (s.smoothing_mm / pixel_mm[0], s.smoothing_mm / pixel_mm[1])
    reliable, smooth = _reliable(t1, signal, sigma_vox)
    filled = np.where(np.isfinite(t1), t1, 0.0)
    detection = detect_cord(
        smooth / s.csf_reference_t1_ms,
        spacing,
        valid=reliable,
        settings=DetectionSettings(
            area_mm2=s.area_mm2,
            max_shift_mm_per_slice=s.max_shift_mm_per_slice,
            boundary_fraction=s.boundary_fraction,
            min_contrast=s.min_csf_contrast_ms / s.csf_reference_t1_ms,
            smoothing_mm=0.0,  # T1 smoothed by one voxel already
            core_range=(
                s.cord_t1_ms[0] / s.csf_reference_t1_ms,
                s.cord_t1_ms[1] / s.csf_reference_t1_ms,
            ),
        ),
    )
    notes = list(detection.notes)
    cord = detection.cord.copy()
    csf = np.zeros(t1.shape, dtype=bool)
    light_sigma = (0.5 * sigma_vox[0], 0.5 * sigma_vox[1])
    ring_vox = (
        int(np.ceil(_CSF_RING_MM / pixel_mm[0])) + 1,
        int(np.ceil(_CSF_RING_MM / pixel_mm[1])) + 1,
    )
    for k in np.flatnonzero(detection.found):
        box = _grow(ndimage.find_objects(cord[k].astype(np.int8))[0], ring_vox, t1.shape[1:])
        level = detection.cord_level[k] + s.boundary_fraction * (
            detection.csf_level[k] - detection.cord_level[k]
        )
        around = ndimage.distance_transform_edt(~cord[k][box], sampling=pixel_mm)
        light = ndimage.gaussian_filter(filled[k][box], light_sigma)
        csf[k][box] = (
            (around > 0)
            & (around <= _CSF_RING_MM)
            & reliable[k][box]
            & (light >= level * s.csf_reference_t1_ms)
        )
    found = detection.found.copy()
    centre = detection.centre_ji.copy()
    return CordSegmentation(
        cord=cord, csf=csf, centre_ji=centre, found=found, notes=tuple(dict.fromkeys(notes))
    )
