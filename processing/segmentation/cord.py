"""Whole-cord segmentation on T1 maps: a low-T1 blob enclosed by a high-T1 CSF ring.

The method needs no initial point. On every slice it

1. smooths T1 lightly and marks voxels whose T1 is unreliable (no signal in INV2, or a
   locally erratic T1 as in air and cortical bone);
2. labels connected low-T1 blobs (cord-like T1, 0.8-2.0 s) of plausible cross-section and
   scores each by how much of a thin ring around it is CSF (T1 above 2.3 s);
3. keeps, along the slab, the candidates that agree with the slab's robust centre line
   (the cord moves a few mm per slice at most);
4. refines the outline of each kept blob with a local threshold halfway between the cord's
   and the surrounding CSF's T1, fills holes (lesions) and returns the CSF ring around it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = ["CordSegmentation", "SegmentationSettings", "segment_cord"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
Box = tuple[slice, slice]

#: The refined cord lies within this distance (mm) of its detected blob ...
_NEAR_MM = 1.5
#: ... and its CSF ring within this distance (mm) of the refined cord.
_CSF_RING_MM = 4.0
#: scipy's default Gaussian kernel reach, in standard deviations.
_GAUSS_TRUNCATE = 4.0


@dataclass(frozen=True)
class SegmentationSettings:
    """Tunable physiology of :func:`segment_cord` (defaults fit the 7 T cervical cord).

    Parameters
    ----------
    cord_t1_ms : tuple of float
        T1 range of cord tissue after light smoothing (lesions included).
    csf_t1_ms : float
        Smoothed T1 above which a voxel counts as CSF for the enclosure test.
    area_mm2 : tuple of float
        Plausible cord cross-section (C1-C7 is about 60-150 mm^2; the range leaves room for
        partial volume, atrophy and oblique cuts).
    min_ring_fraction : float
        Smallest fraction of the ring around a blob that must be CSF.
    ring_mm : tuple of float
        Inner and outer distance (mm) of the ring tested around a blob.
    max_shift_mm_per_slice : float
        Largest in-plane move of the cord centre from one slice to the next.
    boundary_fraction : float
        Where the outline sits between the cord's T1 (0) and the CSF's T1 (1).
    smoothing_mm : float
        Gaussian sigma (mm) of the in-plane smoothing used for detection.
    """

    cord_t1_ms: tuple[float, float] = (800.0, 2000.0)
    csf_t1_ms: float = 2300.0
    area_mm2: tuple[float, float] = (30.0, 220.0)
    min_ring_fraction: float = 0.55
    ring_mm: tuple[float, float] = (0.4, 1.5)
    max_shift_mm_per_slice: float = 3.0
    boundary_fraction: float = 0.4
    smoothing_mm: float = 0.5

    def __post_init__(self) -> None:
        lo, hi = self.cord_t1_ms
        if not 0 < lo < hi < self.csf_t1_ms:
            raise ValueError("need 0 < cord_t1_ms[0] < cord_t1_ms[1] < csf_t1_ms")
        if not 0 < self.area_mm2[0] < self.area_mm2[1]:
            raise ValueError("area_mm2 must be an increasing pair of positive areas")
        if not 0 < self.min_ring_fraction <= 1:
            raise ValueError("min_ring_fraction must be within (0, 1]")
        if not 0 <= self.ring_mm[0] < self.ring_mm[1]:
            raise ValueError("ring_mm must be an increasing pair of distances >= 0")
        if self.max_shift_mm_per_slice <= 0 or self.smoothing_mm <= 0:
            raise ValueError("max_shift_mm_per_slice and smoothing_mm must be positive")
        if not 0 < self.boundary_fraction < 1:
            raise ValueError("boundary_fraction must be within (0, 1)")


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


@dataclass(frozen=True)
class _Candidate:
    label: int
    centre_ji: tuple[float, float]
    area_mm2: float
    ring_fraction: float
    box: Box


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
) -> BoolArray:
    """Voxels whose T1 can be trusted: signal in INV2 and a locally steady T1.

    Without signal (air, cortical bone) the MP2RAGE ratio is noise and T1 jumps from voxel to
    voxel; tissue edges also give large local differences, but only along thin lines, which a
    morphological opening of the erratic mask removes.
    """
    finite = np.isfinite(t1)
    values = np.where(finite, t1, 0.0)
    residual = values - ndimage.gaussian_filter(values, (0.0, 1.0, 1.0))
    spread = np.sqrt(ndimage.gaussian_filter(residual**2, (0.0, *sigma_vox)))
    erratic = _open_in_plane(spread > 700.0)
    ok = finite & ~erratic
    if inv2 is not None:
        reference = float(np.percentile(inv2, 99.5))
        ok &= inv2 > 0.05 * reference if reference > 0 else False
    return ok


def _candidates(
    smooth: FloatArray, reliable: BoolArray, pixel_mm: tuple[float, float], s: SegmentationSettings
) -> tuple[NDArray[np.int32], list[_Candidate]]:
    """Low-T1 blobs of one slice with their CSF-ring score."""
    pixel_area = pixel_mm[0] * pixel_mm[1]
    low = reliable & (smooth > s.cord_t1_ms[0]) & (smooth < s.cord_t1_ms[1])
    csf = reliable & (smooth > s.csf_t1_ms)
    labels, count = ndimage.label(low)
    if count == 0:
        return labels, []
    areas = np.bincount(labels.ravel(), minlength=count + 1) * pixel_area
    plausible = np.flatnonzero((areas >= s.area_mm2[0]) & (areas <= s.area_mm2[1]))
    plausible = plausible[plausible > 0]
    margin = np.ceil(s.ring_mm[1] / np.array(pixel_mm)).astype(int) + 2
    boxes = ndimage.find_objects(labels)
    out = []
    for label in plausible:
        box = boxes[label - 1]
        if box is None or any(
            b.start == 0 or b.stop == n for b, n in zip(box, labels.shape, strict=True)
        ):
            continue  # cut by the field of view: not enclosed
        crop = tuple(
            slice(max(b.start - m, 0), min(b.stop + m, n))
            for b, m, n in zip(box, margin, labels.shape, strict=True)
        )
        blob = labels[crop] == label
        if blob.all():
            continue
        distance = ndimage.distance_transform_edt(~blob, sampling=pixel_mm)
        ring = (distance > s.ring_mm[0]) & (distance <= s.ring_mm[1])
        if not ring.any():
            continue
        fraction = float(csf[crop][ring].mean())
        jj, ii = np.nonzero(blob)
        centre = (float(jj.mean() + crop[0].start), float(ii.mean() + crop[1].start))
        out.append(_Candidate(int(label), centre, float(areas[label]), fraction, box))
    return labels, out


def _choose(
    per_slice: list[list[_Candidate]],
    pixel_mm: tuple[float, float],
    slice_mm: float,
    s: SegmentationSettings,
) -> tuple[list[_Candidate | None], list[str]]:
    """One candidate per slice, consistent with the slab's robust centre line."""
    notes: list[str] = []
    good = [[c for c in cands if c.ring_fraction >= s.min_ring_fraction] for cands in per_slice]
    best = [max(c, key=lambda c: c.ring_fraction) if c else None for c in good]
    points = np.array([b.centre_ji for b in best if b is not None])
    chosen: list[_Candidate | None] = [None] * len(per_slice)
    if points.size == 0:
        return chosen, ["no slice shows a low-T1 blob enclosed by CSF"]
    scale = np.array(pixel_mm)
    reference = np.median(points, axis=0)
    # Slab-wide tolerance: the cord may drift across the slab, a few mm per slice.
    span_mm = s.max_shift_mm_per_slice * max(slice_mm / 4.0, 1.0) * max(len(per_slice) / 2, 1)
    reach_mm = min(max(span_mm, 6.0), 20.0)
    for k, cands in enumerate(good):
        near = [c for c in cands if np.hypot(*((np.array(c.centre_ji) - reference) * scale))
                <= reach_mm]  # fmt: skip
        if near:
            chosen[k] = max(near, key=lambda c: c.ring_fraction)
        elif per_slice[k]:
            notes.append(f"slice {k}: no low-T1 blob of plausible area enclosed by CSF")
        else:
            notes.append(f"slice {k}: no cord-like tissue of plausible area")
    # Continuity: drop slices that jump away from both found neighbours.
    step_mm = s.max_shift_mm_per_slice * max(slice_mm / 4.0, 1.0)
    found = [k for k, c in enumerate(chosen) if c is not None]
    for k in found:
        c = chosen[k]
        assert c is not None
        neighbours = [
            chosen[n] for n in (k - 1, k + 1) if 0 <= n < len(chosen) and chosen[n] is not None
        ]
        if not neighbours:
            continue
        jumps = [
            np.hypot(*((np.array(c.centre_ji) - np.array(n.centre_ji)) * scale))
            for n in neighbours
            if n is not None
        ]
        if min(jumps) > 2 * step_mm:
            notes.append(f"slice {k}: cord centre jumps {min(jumps):.1f} mm from its neighbours")
            chosen[k] = None
    return chosen, notes


def _refine(
    t1: FloatArray,
    light: FloatArray,
    blob: BoolArray,
    reliable: BoolArray,
    pixel_mm: tuple[float, float],
    s: SegmentationSettings,
) -> tuple[BoolArray, BoolArray]:
    """Sharpen the outline of one blob; return the cord and its CSF ring.

    All arrays are one slice's box around the blob, wide enough to hold the cord
    (``_NEAR_MM``) and its CSF ring (``_CSF_RING_MM``).
    """
    inside = ndimage.binary_erosion(blob, iterations=2)
    core = inside if inside.sum() >= 10 else blob
    cord_t1 = float(np.median(t1[core & np.isfinite(t1)])) if core.any() else 1250.0
    distance = ndimage.distance_transform_edt(~blob, sampling=pixel_mm)
    shell = (distance > 0.6) & (distance <= 2.0) & reliable & (light > s.csf_t1_ms)
    csf_t1 = float(np.median(light[shell])) if shell.sum() >= 10 else 3500.0
    threshold = cord_t1 + s.boundary_fraction * (csf_t1 - cord_t1)
    near = distance <= _NEAR_MM
    cord = near & (light < threshold)
    labels, count = ndimage.label(cord)
    if count > 1:
        overlap = np.bincount(labels[blob], minlength=count + 1)
        overlap[0] = 0
        cord = labels == int(np.argmax(overlap))
    cord = ndimage.binary_fill_holes(cord)
    cord = ndimage.binary_opening(cord, iterations=1) | (cord & blob)
    cord = ndimage.binary_fill_holes(cord)
    around = ndimage.distance_transform_edt(~cord, sampling=pixel_mm)
    csf = (around > 0) & (around <= _CSF_RING_MM) & reliable & (light >= threshold)
    return cord, csf


def _grow(box: Box, margin: tuple[int, int], shape: tuple[int, ...]) -> Box:
    """``box`` widened by ``margin`` voxels per axis, clipped to a slice of ``shape``."""
    j, i = (
        slice(max(b.start - m, 0), min(b.stop + m, n))
        for b, m, n in zip(box, margin, shape, strict=True)
    )
    return j, i


def _within(outer: Box, inner: Box) -> Box:
    """``inner`` (slice coordinates) relative to ``outer``."""
    j, i = (slice(b.start - o.start, b.stop - o.start) for o, b in zip(outer, inner, strict=True))
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
    n_slices = t1.shape[0]
    sigma_vox = (s.smoothing_mm / pixel_mm[0], s.smoothing_mm / pixel_mm[1])
    reliable = _reliable(t1, signal, sigma_vox)
    filled = np.where(np.isfinite(t1), t1, 0.0)
    smooth = ndimage.gaussian_filter(filled, (0.0, *sigma_vox))
    light_sigma = (0.5 * sigma_vox[0], 0.5 * sigma_vox[1])

    labels = []
    per_slice = []
    for k in range(n_slices):
        slice_labels, cands = _candidates(smooth[k], reliable[k], pixel_mm, s)
        labels.append(slice_labels)
        per_slice.append(cands)
    chosen, notes = _choose(per_slice, pixel_mm, spacing[0], s)

    cord = np.zeros(t1.shape, dtype=bool)
    csf = np.zeros(t1.shape, dtype=bool)
    centre = np.full((n_slices, 2), np.nan)
    found = np.zeros(n_slices, dtype=bool)
    # Refinement works on a box around the blob that holds the cord and its CSF ring; the
    # light smoothing is computed on that box plus the Gaussian's reach, which gives the
    # same values as smoothing the whole slice.
    reach = (_NEAR_MM + _CSF_RING_MM) / np.asarray(pixel_mm)
    margin = (int(np.ceil(reach[0])) + 2, int(np.ceil(reach[1])) + 2)
    pad = (
        int(_GAUSS_TRUNCATE * light_sigma[0] + 0.5),
        int(_GAUSS_TRUNCATE * light_sigma[1] + 0.5),
    )
    for k, cand in enumerate(chosen):
        if cand is None:
            continue
        box = _grow(cand.box, margin, t1.shape[1:])
        padded = _grow(box, pad, t1.shape[1:])
        light = ndimage.gaussian_filter(filled[k][padded], light_sigma, truncate=_GAUSS_TRUNCATE)
        light = light[_within(padded, box)]
        blob = labels[k][box] == cand.label
        cord_box, csf_box = _refine(t1[k][box], light, blob, reliable[k][box], pixel_mm, s)
        area = float(cord_box.sum()) * pixel_mm[0] * pixel_mm[1]
        if not s.area_mm2[0] <= area <= s.area_mm2[1]:
            notes.append(f"slice {k}: refined cord area {area:.0f} mm^2 is implausible")
            continue
        cord[k][box] = cord_box
        csf[k][box] = csf_box
        jj, ii = np.nonzero(cord_box)
        centre[k] = ((jj + box[0].start).mean(), (ii + box[1].start).mean())
        found[k] = True
    return CordSegmentation(
        cord=cord, csf=csf, centre_ji=centre, found=found, notes=tuple(dict.fromkeys(notes))
    )
