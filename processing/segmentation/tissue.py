"""Grey/white matter split inside the cord: Gaussian mixture + spatial prior + smoothness.

GM (T1 about 1.31 s) and WM (about 1.19 s) differ by less than twice the voxel noise at 7 T,
so a voxel-wise threshold fails. The split combines three pieces of evidence in log-odds:

- intensity: a two-class Gaussian mixture (shared variance) fitted per exam by EM inside the
  cord, with the spatial prior as each voxel's mixing weight; voxels far outside both classes
  (lesions, partial volume) carry no intensity evidence;
- the spatial GM prior (from the template, sampled on the exam grid);
- smoothness: a mean-field Potts term that pulls each voxel towards its in-plane neighbours.

When the exam has a T2*-weighted multi-echo GRE (grey matter bright against white matter,
with far better contrast-to-noise than T1 at 7 T), its image resampled onto the T1 grid adds a
second intensity term: normalised per slice by its median inside the cord (the receive field
varies between slices), fitted with its own two-class mixture and the same prior, and its
log-likelihood ratio added to the T1 one (the two classes' intensities are taken as
conditionally independent). Voxels without T2* (NaN: not covered) keep the T1 evidence only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from processing.smoothing import smooth_ignoring_nan

__all__ = ["TissueMixture", "fit_tissue_mixture", "normalise_t2star", "split_gm_wm"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

_PRIOR_RANGE = (0.01, 0.99)
#: A slice's T2*-weighted image is used only with this many covered cord-interior voxels.
_MIN_T2STAR_SLICE_VOXELS = 20
#: Normalised T2*-weighted intensity: per mille of the slice's median inside the cord.
_T2STAR_SCALE = 1000.0


@dataclass(frozen=True)
class TissueMixture:
    """Two-class Gaussian mixture of T1 inside the cord.

    Attributes
    ----------
    gm_ms, wm_ms : float
        Class means (ms).
    sd_ms : float
        Shared within-class standard deviation (ms).
    """

    gm_ms: float
    wm_ms: float
    sd_ms: float

    def within_classes(self, t1_ms: FloatArray, *, outlier_sd: float = 2.5) -> BoolArray:
        """True where a value is finite and within ``outlier_sd`` SD of the class means."""
        t1 = np.asarray(t1_ms, dtype=np.float64)
        low = min(self.gm_ms, self.wm_ms) - outlier_sd * self.sd_ms
        high = max(self.gm_ms, self.wm_ms) + outlier_sd * self.sd_ms
        with np.errstate(invalid="ignore"):
            return np.isfinite(t1) & (t1 >= low) & (t1 <= high)

    def log_odds(self, t1_ms: FloatArray, *, outlier_sd: float = 2.5) -> FloatArray:
        """Log-likelihood ratio GM : WM per voxel (0 for values far outside both classes)."""
        t1 = np.asarray(t1_ms, dtype=np.float64)
        var = self.sd_ms**2
        with np.errstate(invalid="ignore"):
            llr = ((t1 - self.wm_ms) ** 2 - (t1 - self.gm_ms) ** 2) / (2 * var)
        return np.where(self.within_classes(t1, outlier_sd=outlier_sd), llr, 0.0)


def fit_tissue_mixture(
    t1_ms: FloatArray, gm_prior: FloatArray, *, iterations: int = 30
) -> TissueMixture:
    """Fit the GM/WM mixture by EM with the spatial prior as per-voxel mixing weight.

    Parameters
    ----------
    t1_ms, gm_prior : ndarray
        T1 (ms) and GM prior probability of the voxels to fit (same shape, any). Any other
        intensity works too when one unit of it is negligible (the variance floor is 1).
    iterations : int
        EM iterations.

    Returns
    -------
    TissueMixture

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> prior = np.r_[np.full(3000, 0.8), np.full(7000, 0.1)]
    >>> t1 = np.r_[rng.normal(1310, 70, 3000), rng.normal(1190, 70, 7000)]
    >>> m = fit_tissue_mixture(t1, prior)
    >>> bool(abs(m.gm_ms - 1310) < 30 and abs(m.wm_ms - 1190) < 20)
    True
    """
    t1 = np.asarray(t1_ms, dtype=np.float64).ravel()
    prior = np.clip(np.asarray(gm_prior, dtype=np.float64).ravel(), *_PRIOR_RANGE)
    if t1.shape != prior.shape:
        raise ValueError("t1_ms and gm_prior must have the same number of voxels")
    keep = np.isfinite(t1) & np.isfinite(prior)
    t1, prior = t1[keep], prior[keep]
    if t1.size < 20:
        raise ValueError(f"too few voxels ({t1.size}) to fit a GM/WM mixture")
    # Robust EM: lesions (T1 far above GM) and partial volume would drag the GM class up, so
    # each M-step uses only voxels within a few SD of the class means.
    q = prior.copy()
    median = float(np.median(t1))
    gm = wm = median
    var = (1.4826 * float(np.median(np.abs(t1 - median)))) ** 2
    inlier = np.ones(t1.size, dtype=bool)
    for _ in range(iterations):
        w = q * inlier
        gm = float(np.sum(w * t1) / max(w.sum(), 1e-9))
        w = (1 - q) * inlier
        wm = float(np.sum(w * t1) / max(w.sum(), 1e-9))
        resid = q * (t1 - gm) ** 2 + (1 - q) * (t1 - wm) ** 2
        var = max(float(np.sum(resid * inlier) / max(inlier.sum(), 1)), 1.0)
        sd = np.sqrt(var)
        inlier = (t1 > min(gm, wm) - 3.0 * sd) & (t1 < max(gm, wm) + 2.5 * sd)
        llr = ((t1 - wm) ** 2 - (t1 - gm) ** 2) / (2 * var)
        logit = np.clip(llr + np.log(prior / (1 - prior)), -30, 30)
        q = 1.0 / (1.0 + np.exp(-logit))
    return TissueMixture(gm_ms=gm, wm_ms=wm, sd_ms=float(np.sqrt(var)))


def _smooth_inside(t1: FloatArray, mask: BoolArray, sigma_vox: tuple[float, float]) -> FloatArray:
    """In-plane Gaussian smoothing restricted to ``mask`` (finite values inside it)."""
    inside = np.where(mask, t1, np.nan)
    smoothed = smooth_ignoring_nan(inside, (0.0, *sigma_vox), mode="reflect")
    return np.where(np.isfinite(smoothed), smoothed, t1)


def normalise_t2star(t2star: FloatArray, interior: BoolArray) -> FloatArray:
    """T2*-weighted image relative to each slice's median inside ``interior`` (per mille).

    Parameters
    ----------
    t2star : ndarray, shape (n_slices, rows, cols)
        T2*-weighted magnitude on the T1 grid; NaN where the GRE does not cover.
    interior : ndarray of bool, same shape
        Cord interior (the median is taken over its covered, positive voxels).

    Returns
    -------
    ndarray
        ``1000 * value / median`` per slice; NaN on slices with fewer than 20 covered
        interior voxels and wherever the input is NaN.

    Examples
    --------
    >>> image = np.array([[[2.0, 4.0, np.nan]]]).repeat(10, axis=1)
    >>> normalise_t2star(image, np.ones(image.shape, bool))[0, 0].tolist()
    [666.6666666666666, 1333.3333333333333, nan]
    """
    values = np.asarray(t2star, dtype=np.float64)
    out = np.full(values.shape, np.nan)
    for k in range(values.shape[0]):
        with np.errstate(invalid="ignore"):
            usable = interior[k] & np.isfinite(values[k]) & (values[k] > 0)
        if usable.sum() < _MIN_T2STAR_SLICE_VOXELS:
            continue
        out[k] = _T2STAR_SCALE * values[k] / float(np.median(values[k][usable]))
    return out


def _t2star_evidence(
    t2: FloatArray,
    usable: BoolArray,
    prior: FloatArray,
    spacing: tuple[float, ...],
    denoise_mm: float,
) -> FloatArray:
    """GM:WM log-likelihood ratio of the normalised T2*-weighted image (0 where unusable)."""
    if denoise_mm > 0:
        t2 = _smooth_inside(t2, usable, (denoise_mm / spacing[1], denoise_mm / spacing[2]))
    mixture = fit_tissue_mixture(t2[usable], prior[usable])
    return np.where(usable, mixture.log_odds(t2), 0.0)


def split_gm_wm(
    t1_ms: FloatArray,
    cord: BoolArray,
    gm_prior: FloatArray,
    *,
    voxel_mm: tuple[float, float, float],
    smoothness: float = 1.5,
    iterations: int = 8,
    edge_mm: float = 0.6,
    denoise_mm: float = 0.25,
    t2star: FloatArray | None = None,
) -> tuple[BoolArray, BoolArray]:
    """Split the cord into grey and white matter.

    Parameters
    ----------
    t1_ms : ndarray, shape (n_slices, rows, cols)
        T1 (ms).
    cord : ndarray of bool, same shape
        Whole-cord mask (from :func:`segment_cord`).
    gm_prior : ndarray, same shape
        GM probability per voxel (template prior sampled on the exam grid); NaN counts as
        "no information" (0.5 is not assumed: NaN voxels get the cord's mean prior).
    voxel_mm : tuple of float
        ``(slice_mm, row_mm, col_mm)``.
    smoothness : float
        Weight (log-odds) of the neighbourhood agreement term.
    iterations : int
        Mean-field iterations.
    edge_mm : float
        Voxels closer than this to the cord edge (partial volume with CSF, and the outline's
        own uncertainty: two voxel rows at 0.3 mm) carry no intensity evidence; they follow
        the prior and their neighbours.
    denoise_mm : float
        In-plane Gaussian smoothing (inside the cord interior) of the intensities.
    t2star : ndarray, same shape, optional
        T2*-weighted GRE magnitude (multi-echo combined by root-sum-of-squares) already
        resampled onto the T1 grid, NaN where the GRE does not cover; any receive-field
        scaling is fine (normalised per slice). Adds a second, independent intensity term;
        voxels and slices without it keep T1-only evidence. Lesion voxels (T1 far outside
        both classes) take no evidence from either image.

    Returns
    -------
    gm, wm : ndarray of bool
        Disjoint masks whose union is ``cord``.

    Raises
    ------
    ValueError
        For mismatched shapes, bad voxel sizes or a cord too small to fit the mixture.
    """
    t1 = np.asarray(t1_ms, dtype=np.float64)
    cord = np.asarray(cord, dtype=bool)
    prior = np.asarray(gm_prior, dtype=np.float64)
    if t1.ndim != 3 or cord.shape != t1.shape or prior.shape != t1.shape:
        raise ValueError(
            f"t1_ms, cord and gm_prior must be 3-D with one shape, got {t1.shape}, "
            f"{cord.shape}, {prior.shape}"
        )
    if t2star is not None:
        t2star = np.asarray(t2star, dtype=np.float64)
        if t2star.shape != t1.shape:
            raise ValueError(f"t2star must have the shape of t1_ms {t1.shape}, got {t2star.shape}")
    spacing = tuple(float(x) for x in voxel_mm)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"voxel_mm must be 3 positive sizes, got {voxel_mm}")
    if smoothness < 0 or iterations < 0 or edge_mm < 0:
        raise ValueError("smoothness, iterations and edge_mm must be >= 0")
    gm = np.zeros(cord.shape, dtype=bool)
    if not cord.any():
        return gm, gm.copy()
    if not np.isfinite(prior[cord]).any():
        raise ValueError("gm_prior has no finite value inside the cord")
    mean_prior = float(np.nanmean(prior[cord]))
    prior = np.clip(np.where(np.isfinite(prior), prior, mean_prior), *_PRIOR_RANGE)

    # work on the cord's bounding box
    box = ndimage.find_objects(cord.astype(np.int8))[0]
    box = tuple(
        slice(max(b.start - 2, 0), min(b.stop + 2, n)) if axis else b
        for axis, (b, n) in enumerate(zip(box, cord.shape, strict=True))
    )
    c, t, p = cord[box], t1[box], prior[box]
    depth = np.stack(
        [ndimage.distance_transform_edt(sl, sampling=spacing[1:]) for sl in c]
    )  # distance to the edge, in-plane
    interior = c & (depth > edge_mm) & np.isfinite(t)
    if denoise_mm > 0:
        t = _smooth_inside(t, interior, (denoise_mm / spacing[1], denoise_mm / spacing[2]))
    fit_on = interior if interior.sum() >= 50 else c & np.isfinite(t)
    mixture = fit_tissue_mixture(t[fit_on], p[fit_on])
    llr = np.where(interior, mixture.log_odds(t), 0.0)
    if t2star is not None:
        # T1 outliers (lesions, partial volume) take no evidence from the T2* image either
        t2 = normalise_t2star(t2star[box], interior)
        usable = interior & mixture.within_classes(t) & np.isfinite(t2)
        if usable.sum() >= 50:
            llr = llr + _t2star_evidence(t2, usable, p, spacing, denoise_mm)
    base = llr + np.log(p / (1 - p))
    kernel = np.ones((1, 3, 3))
    kernel[0, 1, 1] = 0.0
    neighbours = ndimage.convolve(c.astype(np.float64), kernel, mode="constant")
    q = np.where(c, 1.0 / (1.0 + np.exp(-np.clip(base, -30, 30))), 0.0)
    for _ in range(iterations):
        gm_sum = ndimage.convolve(q, kernel, mode="constant")
        wm_sum = neighbours - gm_sum
        field = smoothness * (gm_sum - wm_sum) / np.maximum(neighbours, 1.0)
        q = np.where(c, 1.0 / (1.0 + np.exp(-np.clip(base + field, -30, 30))), 0.0)
    gm[box] = c & (q > 0.5)
    return gm, cord & ~gm
