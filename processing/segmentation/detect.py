"""Cord detection on any image where CSF is bright and the cord dark (T1 maps, T2-weighted).

No initial point is needed. The detection works on relative contrast only:

1. per slice, a box filter compares a dark core (cord) with a brighter frame around it (CSF,
   not necessarily a closed ring: the cord may touch the canal wall in front and behind);
   the strongest local maxima become candidate centres;
2. each candidate is scored on rays cast from it: the fraction of directions that meet bright
   tissue (CSF) a few millimetres out, times the contrast;
3. dynamic programming over slices picks one candidate per slice (or none) so that the score
   is high and the centre line moves little from slice to slice;
4. the outline is star-shaped around the centre: on every ray, the first crossing of a level
   between the local cord and CSF values; rays that do not meet CSF (cord against the canal
   wall) or that run far out take the radius of their neighbours; radii are smoothed across
   angle and slices; the centre is re-estimated once from the outline.

:func:`detect_cord` expects an image scaled so that CSF is about 1 and the cord about 0.2-0.6
(:func:`normalise_bright_csf` does this for any CSF-bright image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = ["CordDetection", "DetectionSettings", "detect_cord", "normalise_bright_csf"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class DetectionSettings:
    """Geometry and contrast limits of :func:`detect_cord` (defaults: adult cervical cord).

    Parameters
    ----------
    area_mm2 : tuple of float
        Plausible cord cross-section.
    core_mm : float
        Side of the square core compared with its frame (about the cord's short axis).
    frame_mm : float
        Side of the square frame around the core (reaches the CSF around the cord).
    max_radius_mm : float
        Longest ray cast from a centre.
    min_contrast : float
        Smallest CSF-minus-cord difference (normalised units) that counts as a cord.
    min_score : float
        Smallest candidate score of a slice with a cord.
    max_shift_mm_per_slice : float
        Largest in-plane move of the cord centre between neighbouring slices (per 4 mm of
        slice distance; never less than this).
    boundary_fraction : float
        Where the outline sits between the cord (0) and the CSF (1).
    n_rays : int
        Directions of the star-shaped outline.
    candidates_per_slice : int
        Local maxima kept per slice for the dynamic programme.
    core_range : tuple of float, optional
        Normalised values a cord's core may take (None: any value darker than the CSF).
    smoothing_mm : float
        In-plane Gaussian sigma applied to the image first (0: the image is smooth already).
    """

    area_mm2: tuple[float, float] = (30.0, 220.0)
    core_mm: float = 4.0
    frame_mm: float = 15.0
    max_radius_mm: float = 11.0
    min_contrast: float = 0.2
    min_score: float = 0.25
    max_shift_mm_per_slice: float = 3.0
    boundary_fraction: float = 0.4
    n_rays: int = 48
    candidates_per_slice: int = 8
    core_range: tuple[float, float] | None = None
    smoothing_mm: float = 0.35

    def __post_init__(self) -> None:
        if not 0 < self.area_mm2[0] < self.area_mm2[1]:
            raise ValueError("area_mm2 must be an increasing pair of positive areas")
        if not 0 < self.core_mm < self.frame_mm:
            raise ValueError("need 0 < core_mm < frame_mm")
        if self.max_radius_mm <= 0 or self.max_shift_mm_per_slice <= 0:
            raise ValueError("max_radius_mm and max_shift_mm_per_slice must be positive")
        if self.min_contrast <= 0 or not 0 < self.min_score < 1:
            raise ValueError("min_contrast must be positive and min_score within (0, 1)")
        if not 0 < self.boundary_fraction < 1:
            raise ValueError("boundary_fraction must be within (0, 1)")
        if self.core_range is not None and not self.core_range[0] < self.core_range[1]:
            raise ValueError("core_range must be an increasing pair")
        if self.smoothing_mm < 0:
            raise ValueError("smoothing_mm must be >= 0")
        if self.n_rays < 8 or self.candidates_per_slice < 1:
            raise ValueError("need n_rays >= 8 and candidates_per_slice >= 1")


@dataclass(frozen=True)
class CordDetection:
    """Result of :func:`detect_cord`.

    Attributes
    ----------
    cord : ndarray of bool, shape (n_slices, rows, cols)
    centre_ji : ndarray of float, shape (n_slices, 2)
        Centroid of the outline (row, column); NaN where no cord was found.
    found : ndarray of bool, shape (n_slices,)
    cord_level, csf_level : ndarray of float, shape (n_slices,)
        Local cord and CSF values (normalised units) the outline sits between; NaN where
        no cord was found.
    notes : tuple of str
        Why slices have no cord.
    """

    cord: BoolArray
    centre_ji: FloatArray
    found: BoolArray
    cord_level: FloatArray
    csf_level: FloatArray
    notes: tuple[str, ...]


@dataclass(frozen=True)
class _Candidate:
    centre_ji: tuple[float, float]
    score: float


def normalise_bright_csf(image: FloatArray, valid: BoolArray | None = None) -> FloatArray:
    """Scale a CSF-bright image so that its brightest tissue (CSF) is about 1.

    The 99.5th percentile of the valid voxels maps to 1 and zero stays zero; NaN becomes 0.
    """
    values = np.asarray(image, dtype=np.float64)
    finite = (
        np.isfinite(values) if valid is None else (np.asarray(valid, bool) & np.isfinite(values))
    )
    if not finite.any():
        return np.zeros(values.shape)
    reference = float(np.percentile(values[finite], 99.5))
    scale = reference if reference > 0 else 1.0
    return np.where(finite, values / scale, 0.0)


def _shifted(values: FloatArray, offset: int, axis: int) -> FloatArray:
    """``values`` moved so that out[p] = values[p + offset] along ``axis`` (0 outside)."""
    out = np.zeros_like(values)
    n = values.shape[axis]
    if abs(offset) >= n:
        return out
    src = [slice(None)] * values.ndim
    dst = [slice(None)] * values.ndim
    src[axis] = slice(max(offset, 0), n + min(offset, 0))
    dst[axis] = slice(max(-offset, 0), n - max(offset, 0))
    out[tuple(dst)] = values[tuple(src)]
    return out


def _block_mean(
    values: FloatArray, valid: BoolArray, factor: tuple[int, int]
) -> tuple[FloatArray, BoolArray]:
    """Means over in-plane blocks of ``factor`` voxels (valid voxels only; edges dropped)."""
    n, rows, cols = values.shape
    r, c = rows // factor[0], cols // factor[1]
    shape = (n, r, factor[0], c, factor[1])
    weight = valid[:, : r * factor[0], : c * factor[1]].reshape(shape).mean(axis=(2, 4))
    total = (values * valid)[:, : r * factor[0], : c * factor[1]].reshape(shape).mean(axis=(2, 4))
    return total / np.maximum(weight, 1e-6), weight >= 0.5


def _candidate_map(
    image: FloatArray, valid: BoolArray, pixel_mm: tuple[float, float], s: DetectionSettings
) -> tuple[FloatArray, FloatArray]:
    """Contrast between a dark core and the brighter of two frames around it, and between
    the core and the brightest voxel near it.

    The frames are means over square annuli (CSF around the cord, even where it is thin or
    interrupted, raises the mean), so the map is smooth and cheap (box filters).
    """
    weight = valid.astype(np.float64)
    sums = []
    for side_mm in (s.core_mm, 0.6 * s.frame_mm, s.frame_mm):
        size = (1, _odd(side_mm, pixel_mm[0]), _odd(side_mm, pixel_mm[1]))
        volume = float(np.prod(size))
        total = ndimage.uniform_filter(image * weight, size, mode="constant") * volume
        count = ndimage.uniform_filter(weight, size, mode="constant") * volume
        sums.append((total, count, volume))
    (core_t, core_n, core_v), (mid_t, mid_n, _), (big_t, big_n, _) = sums
    core = core_t / np.maximum(core_n, 1e-6)
    inner = (mid_t - core_t) / np.maximum(mid_n - core_n, 1e-6)
    outer = (big_t - mid_t) / np.maximum(big_n - mid_n, 1e-6)
    contrast = np.maximum(inner, outer) - core
    # The brightest voxel within a cord radius or so (CSF in a thin layer or a narrow field
    # of view, where the frames' means miss it).
    size = (1, _odd(0.8 * s.frame_mm, pixel_mm[0]), _odd(0.8 * s.frame_mm, pixel_mm[1]))
    nearby = ndimage.maximum_filter(np.where(valid, image, 0.0), size, mode="constant") - core
    keep = valid & (core_n > 0.8 * core_v)
    return np.where(keep, contrast, 0.0), np.where(keep, nearby, 0.0)


def _odd(mm: float, pixel: float) -> int:
    n = max(round(mm / pixel), 1)
    return n if n % 2 else n + 1


def _peaks(
    contrast: FloatArray, pixel_mm: tuple[float, float], s: DetectionSettings
) -> list[tuple[int, int]]:
    """Strongest local maxima of one slice's contrast, at least a cord radius apart."""
    size = (_odd(6.0, pixel_mm[0]), _odd(6.0, pixel_mm[1]))
    top = ndimage.maximum_filter(contrast, size=size, mode="constant")
    peaks = np.argwhere((contrast == top) & (contrast >= s.min_contrast))
    if peaks.size == 0:
        return []
    values = contrast[peaks[:, 0], peaks[:, 1]]
    order = np.argsort(values)[::-1][: 2 * s.candidates_per_slice]
    return [(int(j), int(i)) for j, i in peaks[order]]


def _rays(
    image: FloatArray,
    centre: tuple[float, float],
    pixel_mm: tuple[float, float],
    s: DetectionSettings,
    *,
    coarse: bool = False,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Profiles of ``image`` along rays from ``centre``: (profiles [angle, radius], radii mm,
    angles). ``coarse``: half the rays and steps of at least 0.25 mm (enough to score)."""
    step_mm = max(0.5 * min(pixel_mm), 0.25) if coarse else 0.5 * min(pixel_mm)
    radii = np.arange(0.0, s.max_radius_mm + step_mm, step_mm)
    angles = np.linspace(0.0, 2 * np.pi, s.n_rays // 2 if coarse else s.n_rays, endpoint=False)
    jj = centre[0] + np.outer(np.sin(angles), radii) / pixel_mm[0]
    ii = centre[1] + np.outer(np.cos(angles), radii) / pixel_mm[1]
    # Outside the field of view counts as dark: no CSF is seen there.
    profiles = ndimage.map_coordinates(image, [jj, ii], order=1, mode="constant", cval=0.0)
    return profiles, radii, angles


def _core_level(profiles: FloatArray, radii: FloatArray) -> float:
    """The cord's value near the centre: a low percentile, so that a lesion there (brighter
    than the cord) does not raise it."""
    values = profiles[:, radii <= 2.0].ravel()
    index = int(0.3 * (values.size - 1))
    return float(np.partition(values, index)[index])


def _score(
    image: FloatArray,
    centre: tuple[float, float],
    pixel_mm: tuple[float, float],
    s: DetectionSettings,
) -> float:
    """How cord-like the tissue around ``centre`` is, in [0, 1].

    The fraction of rays that meet CSF (a value well above the core) a cord-like distance
    out, times the CSF-cord contrast (saturating at twice the minimum), times a penalty for
    a core value outside ``core_range`` and for an implausible area inside the CSF.
    """
    profiles, radii, _ = _rays(image, centre, pixel_mm, s, coarse=True)
    core = _core_level(profiles, radii)
    reach = (radii >= 1.5) & (radii <= 0.8 * s.max_radius_mm)
    peak = profiles[:, reach].max(axis=1)
    bright = peak - core >= s.min_contrast
    if not bright.any():
        return 0.0
    csf = float(np.median(peak[bright]))
    score = float(bright.mean()) * min((csf - core) / (2 * s.min_contrast), 1.0)
    if s.core_range is not None and not s.core_range[0] <= core <= s.core_range[1]:
        return 0.0
    level = core + s.boundary_fraction * (csf - core)
    above = (profiles >= level) & (radii >= 1.0)[None, :]
    hit = above.any(axis=1)
    if hit.mean() < 0.5:
        return 0.0
    radius = float(np.median(radii[np.argmax(above[hit], axis=1)]))
    area = np.pi * radius**2
    low, high = s.area_mm2
    if area < low:
        score *= (area / low) ** 2
    elif area > high:
        score *= (high / area) ** 2
    return score


def _choose(
    per_slice: list[list[_Candidate]],
    pixel_mm: tuple[float, float],
    slice_mm: float,
    s: DetectionSettings,
) -> list[_Candidate | None]:
    """Dynamic programme over slices: high scores, small centre moves, 'no cord' allowed."""
    step_mm = s.max_shift_mm_per_slice * max(slice_mm / 4.0, 1.0)
    scale = np.asarray(pixel_mm)
    n = len(per_slice)
    # state 0 = no cord on this slice; state c + 1 = candidate c
    best: list[FloatArray] = []
    back: list[NDArray[np.int64]] = []
    for k in range(n):
        gains = np.array([s.min_score] + [c.score for c in per_slice[k]])
        if k == 0:
            best.append(gains)
            back.append(np.zeros(gains.size, dtype=np.int64))
            continue
        prev = per_slice[k - 1]
        total = np.full((len(prev) + 1, gains.size), -np.inf)
        total[:, 0] = best[-1]  # anything -> none
        total[0, 1:] = best[-1][0]  # none -> candidate
        if prev and per_slice[k]:
            a = np.array([c.centre_ji for c in prev])
            b = np.array([c.centre_ji for c in per_slice[k]])
            dist = np.hypot(*((a[:, None, :] - b[None, :, :]) * scale).transpose(2, 0, 1))
            penalty = 0.5 * np.maximum(dist / step_mm - 0.5, 0.0) ** 2  # half a step is free
            penalty[dist > 2 * step_mm] = np.inf
            total[1:, 1:] = best[-1][1:, None] - penalty
        arg = np.argmax(total, axis=0)
        best.append(total[arg, np.arange(gains.size)] + gains)
        back.append(arg)
    chosen: list[_Candidate | None] = [None] * n
    state = int(np.argmax(best[-1]))
    for k in range(n - 1, -1, -1):
        chosen[k] = per_slice[k][state - 1] if state > 0 else None
        state = int(back[k][state]) if k > 0 else 0
    return chosen


def _circular_smooth(values: FloatArray, width: int) -> FloatArray:
    return ndimage.uniform_filter1d(values, width, mode="wrap")


def _outline_radii(
    image: FloatArray,
    centre: tuple[float, float],
    pixel_mm: tuple[float, float],
    s: DetectionSettings,
) -> tuple[FloatArray, float, float] | None:
    """Boundary radius (mm) per ray, and the cord and CSF levels; None without CSF around."""
    profiles, radii, angles = _rays(image, centre, pixel_mm, s)
    cord_level = _core_level(profiles, radii)
    reach = radii >= 1.0
    peak = profiles[:, reach].max(axis=1)
    bright = peak - cord_level >= s.min_contrast
    if bright.sum() < 0.25 * s.n_rays:
        return None
    csf_level = float(np.median(peak[bright]))
    level = cord_level + s.boundary_fraction * (csf_level - cord_level)
    above = (profiles >= level) & reach[None, :]
    hit = above.any(axis=1)
    first = np.argmax(above, axis=1)
    # sub-voxel crossing between first - 1 and first
    lo = np.clip(first - 1, 0, radii.size - 1)
    p0 = profiles[np.arange(s.n_rays), lo]
    p1 = profiles[np.arange(s.n_rays), first]
    frac = np.clip((level - p0) / np.maximum(p1 - p0, 1e-9), 0.0, 1.0)
    radius = radii[lo] + frac * (radii[first] - radii[lo])
    radius = np.where(hit, radius, np.nan)
    # Rays without CSF (cord on the canal wall) or far outliers take their neighbours' radius.
    typical = np.nanmedian(radius) if np.isfinite(radius).any() else np.nan
    if not np.isfinite(typical):
        return None
    # Far outliers ran past the cord; short ones stopped at a lesion (high T1, bright).
    radius[(radius > 1.8 * typical) | (radius < 0.5 * typical)] = np.nan
    good = np.isfinite(radius)
    if good.sum() < 0.4 * s.n_rays:
        return None
    idx = np.arange(s.n_rays)
    if good.sum() < s.n_rays:
        ellipse = _ellipse_radii(radius, angles, s)
        if ellipse is not None:
            radius = np.where(good, radius, ellipse)
            good = np.isfinite(radius)
    radius = np.interp(idx, idx[good], radius[good], period=s.n_rays)
    radius = ndimage.median_filter(radius, size=5, mode="wrap")
    radius = _circular_smooth(radius, 3)
    return radius, cord_level, csf_level


def _ellipse_radii(
    radius: FloatArray, angles: FloatArray, s: DetectionSettings
) -> FloatArray | None:
    """Radii of an ellipse fitted to the outline points of the rays that met CSF.

    Where the cord touches the canal wall, rays find no CSF; an ellipse (axes along rows and
    columns) through the other points, seen from the same centre, gives their radius. None
    when the fit is not a plausible cord.
    """
    good = np.isfinite(radius)
    y = radius[good] * np.sin(angles[good])
    x = radius[good] * np.cos(angles[good])
    design = np.stack([x**2, y**2, x, y], axis=1)
    try:
        (a, c, d, e), *_ = np.linalg.lstsq(design, np.ones(x.size), rcond=None)
    except np.linalg.LinAlgError:
        return None
    if a <= 0 or c <= 0:
        return None
    x0, y0 = -d / (2 * a), -e / (2 * c)
    scale = 1 + a * x0**2 + c * y0**2
    if scale <= 0:
        return None
    half_x, half_y = np.sqrt(scale / a), np.sqrt(scale / c)
    area = np.pi * half_x * half_y
    if not (s.area_mm2[0] <= area <= s.area_mm2[1]) or max(half_x, half_y) > 2.5 * min(
        half_x, half_y
    ):
        return None
    # distance from the ray origin (0, 0) to the ellipse along each ray
    ux, uy = np.cos(angles), np.sin(angles)
    qa = a * ux**2 + c * uy**2
    qb = -2 * (a * x0 * ux + c * y0 * uy)
    qc = a * x0**2 + c * y0**2 - scale
    disc = qb**2 - 4 * qa * qc
    if qc >= 0 or (disc < 0).any():
        return None  # the ray origin lies outside the ellipse
    return (-qb + np.sqrt(disc)) / (2 * qa)


def _rasterise(
    shape: tuple[int, int],
    centre: tuple[float, float],
    radius: FloatArray,
    pixel_mm: tuple[float, float],
) -> BoolArray:
    """Voxels inside the star-shaped outline (radius per angle, mm) around ``centre``."""
    reach = float(radius.max()) + 1.0
    j0 = max(int(np.floor(centre[0] - reach / pixel_mm[0])), 0)
    j1 = min(int(np.ceil(centre[0] + reach / pixel_mm[0])) + 1, shape[0])
    i0 = max(int(np.floor(centre[1] - reach / pixel_mm[1])), 0)
    i1 = min(int(np.ceil(centre[1] + reach / pixel_mm[1])) + 1, shape[1])
    mask = np.zeros(shape, dtype=bool)
    if j0 >= j1 or i0 >= i1:
        return mask
    jj, ii = np.mgrid[j0:j1, i0:i1]
    dy = (jj - centre[0]) * pixel_mm[0]
    dx = (ii - centre[1]) * pixel_mm[1]
    angle = np.mod(np.arctan2(dy, dx), 2 * np.pi)
    n = radius.size
    position = angle / (2 * np.pi) * n
    r = np.interp(position, np.arange(n + 1), np.append(radius, radius[0]))
    mask[j0:j1, i0:i1] = np.hypot(dy, dx) <= r
    return mask


def _recentred(
    image: FloatArray,
    start: tuple[float, float],
    pixel_mm: tuple[float, float],
    s: DetectionSettings,
) -> tuple[float, float]:
    """Centroid of the star-shaped outline drawn from ``start`` (``start`` if there is none)."""
    result = _outline_radii(image, start, pixel_mm, s)
    if result is None:
        return start
    mask = _rasterise(image.shape, start, result[0], pixel_mm)
    if not mask.any():
        return start
    jj, ii = np.nonzero(mask)
    return float(jj.mean()), float(ii.mean())


def detect_cord(
    image: FloatArray,
    voxel_mm: tuple[float, float, float],
    *,
    valid: BoolArray | None = None,
    settings: DetectionSettings | None = None,
) -> CordDetection:
    """Find the cord on every slice of a CSF-bright, cord-dark image without an initial point.

    Parameters
    ----------
    image : ndarray, shape (n_slices, rows, cols)
        Normalised so that CSF is about 1 and the cord about 0.2-0.6 (see
        :func:`normalise_bright_csf`); axial slices.
    voxel_mm : tuple of float
        ``(slice_mm, row_mm, col_mm)``.
    valid : ndarray of bool, optional
        Voxels whose value can be trusted (others are ignored by the candidate search).
    settings : DetectionSettings, optional

    Returns
    -------
    CordDetection

    Raises
    ------
    ValueError
        For an image that is not 3-D, bad voxel sizes or a ``valid`` mask of another shape.

    Examples
    --------
    >>> jj, ii = np.mgrid[:64, :64]
    >>> r = np.hypot(jj - 30, ii - 34) * 0.5
    >>> image = np.where(r < 4.5, 0.3, np.where(r < 7.0, 1.0, 0.4))
    >>> found = detect_cord(np.stack([image] * 3), (3.0, 0.5, 0.5))
    >>> found.found.tolist(), np.round(found.centre_ji[1]).tolist()
    ([True, True, True], [30.0, 34.0])
    """
    s = settings if settings is not None else DetectionSettings()
    values = np.asarray(image, dtype=np.float64)
    if values.ndim != 3:
        raise ValueError(f"image must be 3-D [k, j, i], got shape {values.shape}")
    spacing = tuple(float(v) for v in voxel_mm)
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ValueError(f"voxel_mm must be 3 positive sizes (slice, row, col), got {voxel_mm}")
    ok = (
        np.isfinite(values)
        if valid is None
        else np.asarray(valid, dtype=bool) & np.isfinite(values)
    )
    if ok.shape != values.shape:
        raise ValueError(f"valid shape {ok.shape} differs from image shape {values.shape}")
    values = np.where(ok, values, 0.0)
    pixel_mm = (spacing[1], spacing[2])
    n_slices = values.shape[0]
    sigma = (0.0, s.smoothing_mm / pixel_mm[0], s.smoothing_mm / pixel_mm[1])
    light = ndimage.gaussian_filter(values, sigma) if max(sigma) > 0.3 else values

    # Candidates are searched on a grid of about 1 mm (block means), enough for a cord.
    factor = (max(int(1.0 / pixel_mm[0]), 1), max(int(1.0 / pixel_mm[1]), 1))
    coarse_values, coarse_ok = _block_mean(light, ok, factor)
    coarse_mm = (pixel_mm[0] * factor[0], pixel_mm[1] * factor[1])
    maps = _candidate_map(coarse_values, coarse_ok, coarse_mm, s)
    per_slice: list[list[_Candidate]] = []
    for k in range(n_slices):
        peaks = dict.fromkeys(p for m in maps for p in _peaks(m[k], coarse_mm, s))
        points = [((j + 0.5) * factor[0] - 0.5, (i + 0.5) * factor[1] - 0.5) for j, i in peaks]
        cands = [_Candidate(p, _score(light[k], p, pixel_mm, s)) for p in points]
        cands = sorted((c for c in cands if c.score > 0), key=lambda c: -c.score)
        per_slice.append(cands[: s.candidates_per_slice])
    chosen = _choose(per_slice, pixel_mm, spacing[0], s)
    # Follow the centre line into slices where it was lost: their neighbours' centres become
    # candidates too, and the programme runs again.
    for _ in range(2):
        added = False
        for k in range(n_slices):
            if chosen[k] is not None:
                continue
            for n in (k - 1, k + 1):
                other = chosen[n] if 0 <= n < n_slices else None
                if other is None:
                    continue
                point = _recentred(light[k], other.centre_ji, pixel_mm, s)
                score = _score(light[k], point, pixel_mm, s)
                if score > 0:
                    per_slice[k].append(_Candidate(point, score))
                    added = True
        if not added:
            break
        chosen = _choose(per_slice, pixel_mm, spacing[0], s)

    notes: list[str] = []
    cord = np.zeros(values.shape, dtype=bool)
    centre = np.full((n_slices, 2), np.nan)
    cord_level = np.full(n_slices, np.nan)
    csf_level = np.full(n_slices, np.nan)
    radii: list[FloatArray | None] = [None] * n_slices
    for k, cand in enumerate(chosen):
        if cand is None:
            notes.append(
                f"slice {k}: no cord-like tissue of plausible area"
                if not per_slice[k]
                else f"slice {k}: no dark cord surrounded by CSF along the centre line"
            )
            continue
        point = cand.centre_ji
        result = None
        for _ in range(2):  # outline, then again from the outline's centroid
            result = _outline_radii(light[k], point, pixel_mm, s)
            if result is None:
                break
            mask = _rasterise(values.shape[1:], point, result[0], pixel_mm)
            if not mask.any():
                result = None
                break
            jj, ii = np.nonzero(mask)
            point = (float(jj.mean()), float(ii.mean()))
        if result is None:
            notes.append(f"slice {k}: no CSF around the candidate cord")
            continue
        radii[k] = result[0]
        centre[k] = point
        cord_level[k], csf_level[k] = result[1], result[2]
    # Smooth the outline across slices (radius per angle), where neighbours have a cord.
    for k in range(n_slices):
        if radii[k] is None:
            continue
        stack = [radii[k], radii[k]]
        stack += [radii[n] for n in (k - 1, k + 1) if 0 <= n < n_slices and radii[n] is not None]
        radius = np.mean(stack, axis=0) if spacing[0] <= 2.5 else radii[k]
        mask = _rasterise(values.shape[1:], (centre[k, 0], centre[k, 1]), radius, pixel_mm)
        area = float(mask.sum()) * pixel_mm[0] * pixel_mm[1]
        if not s.area_mm2[0] <= area <= s.area_mm2[1]:
            notes.append(f"slice {k}: cord area {area:.0f} mm^2 is implausible")
            centre[k] = np.nan
            cord_level[k] = csf_level[k] = np.nan
            continue
        # Voxels on the outline (one voxel either side) follow the level between cord and CSF.
        level = cord_level[k] + s.boundary_fraction * (csf_level[k] - cord_level[k])
        rows, cols = (
            slice(max(b.start - 2, 0), b.stop + 2)
            for b in ndimage.find_objects(mask.view(np.int8))[0]
        )
        inner = mask[rows, cols]
        edge = ndimage.binary_dilation(inner) & ~ndimage.binary_erosion(inner)
        mask[rows, cols] = ndimage.binary_fill_holes(
            (inner & ~edge) | (edge & (light[k][rows, cols] < level))
        )
        cord[k] = mask
        jj, ii = np.nonzero(mask)
        centre[k] = (jj.mean(), ii.mean())
    found = cord.any(axis=(1, 2))
    return CordDetection(
        cord=cord,
        centre_ji=centre,
        found=found,
        cord_level=cord_level,
        csf_level=csf_level,
        notes=tuple(dict.fromkeys(notes)),
    )
