"""PAM50 atlas priors on the template grid: GM probability and reporting regions per level.

The PAM50 template (De Leener et al., NeuroImage 2018) and its white/grey matter atlas (Lévy
et al., NeuroImage 2015) are mapped slice by slice into the normalised cord coordinates of
:mod:`processing.template` (the PAM50 cord outline onto the unit circle) and averaged per
vertebral level into ``(u, v)`` cells. A slab's slices then take the GM prior and the region
of every voxel from the level they lie on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage, optimize

from processing.regions import REGIONS, estimate_levels
from processing.segmentation import fit_tissue_mixture
from processing.template import (
    TEMPLATE_EXTENT,
    TEMPLATE_SHAPE_UV,
    TEMPLATE_Z_BINS_PER_SLAB,
    CordCoordinates,
    cord_coordinates,
    template_shape,
)

__all__ = [
    "WARP_BOUNDS",
    "Pam50Priors",
    "PriorWarp",
    "fit_prior_warp",
    "label_regions_atlas",
    "pam50_priors_from_atlas",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

#: Normalised smoothing (cells) that fills the cells no PAM50 voxel centre fell into.
_FILL_SIGMA_CELLS = 1.0
#: A level's region is only assigned where the atlas gives this much probability of a tissue's
#: regions; further out a cell takes the region of the nearest cell that has it.
_MIN_REGION_PROBABILITY = 0.05
#: Half-width (in v) of the band where the prior warp's left-right scale passes from the
#: ventral to the dorsal one.
_U_BLEND_HALF_WIDTH = 0.1
#: Fine samples along a slab used to map template z bins onto levels.
_Z_SAMPLES_PER_BIN = 16


@dataclass(frozen=True)
class Pam50Priors:
    """PAM50 GM probability and region probabilities on the template's ``(u, v)`` grid.

    Attributes
    ----------
    gm : ndarray, shape (n_levels, nu, nv)
        Mean PAM50 GM probability per level (index 0 = C1) and cell.
    regions : ndarray, shape (12, n_levels, nu, nv)
        Mean probability of each reporting region, in the order of ``region_codes``.
    region_codes : tuple of int
        :data:`processing.regions.REGIONS` code of each entry of ``regions``.
    """

    gm: FloatArray
    regions: FloatArray
    region_codes: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.gm.ndim != 3 or self.gm.shape[1:] != TEMPLATE_SHAPE_UV:
            raise ValueError(f"gm must have shape (n_levels, *{TEMPLATE_SHAPE_UV})")
        if self.regions.shape != (len(REGIONS), *self.gm.shape):
            raise ValueError(f"regions must have shape ({len(REGIONS)}, *{self.gm.shape})")
        if sorted(self.region_codes) != sorted(REGIONS):
            raise ValueError("region_codes must name every code of REGIONS once")
        if not (np.all(np.isfinite(self.gm)) and np.all(np.isfinite(self.regions))):
            raise ValueError("gm and regions must be finite")

    @property
    def n_levels(self) -> int:
        """Number of vertebral levels covered (1 = C1 ...)."""
        return int(self.gm.shape[0])

    def level_index(self, levels: NDArray[np.integer]) -> NDArray[np.intp]:
        """Index into the level axis of levels 1..n (out-of-range levels clipped)."""
        return np.clip(np.asarray(levels, dtype=np.intp) - 1, 0, self.n_levels - 1)

    def gm_prior_template(
        self,
        n_slabs: int,
        coverage: Mapping[int, tuple[int, int]] | None = None,
        *,
        floor: float = 0.02,
        ceiling: float = 0.95,
    ) -> FloatArray:
        """GM prior on the template grid of a protocol, each z bin from the levels it spans.

        Every template z bin is mapped onto vertebral levels by the same estimate as the
        slab's slices (:func:`processing.regions.estimate_levels`, ``coverage``) and takes the
        mean of those levels' PAM50 GM probability.

        Parameters
        ----------
        n_slabs : int
        coverage : mapping, optional
            Slab -> (first level, last level); default that of ``estimate_levels``.
        floor, ceiling : float
            The prior is clipped to ``[floor, ceiling]``: the atlas is an average of other
            people, never certain about this cord.

        Returns
        -------
        ndarray, shape ``template_shape(n_slabs)``
        """
        if not 0 < floor < ceiling < 1:
            raise ValueError("need 0 < floor < ceiling < 1")
        shape = template_shape(n_slabs)
        out = np.empty(shape)
        n = TEMPLATE_Z_BINS_PER_SLAB * _Z_SAMPLES_PER_BIN
        s = (np.arange(n) + 0.5) / n
        for slab in range(1, n_slabs + 1):
            dummy = CordCoordinates(np.zeros((n, 1, 1)), np.zeros((n, 1, 1)), s, slab, n_slabs)
            index = self.level_index(estimate_levels(dummy, n_slabs, coverage))
            for b in range(TEMPLATE_Z_BINS_PER_SLAB):
                chunk = index[b * _Z_SAMPLES_PER_BIN : (b + 1) * _Z_SAMPLES_PER_BIN]
                out[(slab - 1) * TEMPLATE_Z_BINS_PER_SLAB + b] = self.gm[chunk].mean(axis=0)
        return np.clip(out, floor, ceiling)

    def sample_gm(self, coords: CordCoordinates, levels: NDArray[np.integer]) -> FloatArray:
        """PAM50 GM probability of every mapped voxel at its ``(u, v)`` and its slice's level.

        Parameters
        ----------
        coords : CordCoordinates
        levels : ndarray of int, shape (n_slices,)
            Vertebral level per slice (1 = C1).

        Returns
        -------
        ndarray, shape of ``coords.u``; NaN where the voxel has no coordinates.
        """
        levels = np.asarray(levels)
        if levels.shape != coords.s.shape:
            raise ValueError(f"levels must have one value per slice {coords.s.shape}")
        out = np.full(coords.u.shape, np.nan)
        mapped = np.flatnonzero(np.isfinite(coords.u) & np.isfinite(coords.v))
        k = mapped // (coords.u.shape[1] * coords.u.shape[2])
        nu, nv = TEMPLATE_SHAPE_UV
        iu = np.clip(_uv_index(coords.u.ravel()[mapped], nu), 0, nu - 1)
        iv = np.clip(_uv_index(coords.v.ravel()[mapped], nv), 0, nv - 1)
        points = np.stack([self.level_index(levels)[k].astype(np.float64), iu, iv])
        out.flat[mapped] = ndimage.map_coordinates(self.gm, points, order=1, mode="nearest")
        return out

    @cached_property
    def region_maps(self) -> tuple[NDArray[np.int16], NDArray[np.int16]]:
        """GM and WM region code of every cell per level, shape (n_levels, nu, nv) each.

        A cell takes the region of its tissue with the highest atlas probability; cells where
        the atlas has (almost) none of that tissue take the nearest cell's region, so every
        cell of the grid has one GM and one WM region.
        """
        codes = np.asarray(self.region_codes, dtype=np.int16)
        out = []
        for tissue in ("gm", "wm"):
            pick = np.array([REGIONS[int(c)].tissue == tissue for c in codes])
            probs = self.regions[pick]
            best = codes[pick][np.argmax(probs, axis=0)]
            known = probs.sum(axis=0) >= _MIN_REGION_PROBABILITY
            maps = np.empty(best.shape, dtype=np.int16)
            for lv in range(self.n_levels):
                _, nearest = ndimage.distance_transform_edt(~known[lv], return_indices=True)
                maps[lv] = best[lv][nearest[0], nearest[1]]
            out.append(maps)
        return out[0], out[1]


def _uv_index(values: FloatArray, n: int) -> FloatArray:
    """Continuous cell index (cell centres at integers) of u or v values."""
    return (values + TEMPLATE_EXTENT) / (2 * TEMPLATE_EXTENT) * n - 0.5


def label_regions_atlas(
    coords: CordCoordinates,
    gm: BoolArray,
    wm: BoolArray,
    levels: NDArray[np.integer],
    priors: Pam50Priors,
) -> NDArray[np.int16]:
    """Region code (see :data:`REGIONS`) of every cord voxel from the PAM50 atlas, 0 outside.

    Each GM voxel gets the GM region the atlas finds most probable at its ``(u, v)`` on its
    slice's level, each WM voxel the WM region likewise (left/right included: the atlas'
    left is patient left, ``u > 0``). Cord voxels without coordinates are labelled as if at
    the cord centre.

    Parameters
    ----------
    coords : CordCoordinates
    gm, wm : ndarray of bool, shape (n_slices, rows, cols)
        Disjoint GM and WM masks.
    levels : ndarray of int, shape (n_slices,)
        Vertebral level per slice (1 = C1), e.g. from
        :func:`processing.regions.estimate_levels`.
    priors : Pam50Priors

    Returns
    -------
    ndarray of int16, shape of ``gm``
    """
    gm = np.asarray(gm, dtype=bool)
    wm = np.asarray(wm, dtype=bool)
    if gm.shape != coords.u.shape or wm.shape != coords.u.shape:
        raise ValueError(f"gm and wm must have the slab's shape {coords.u.shape}")
    if np.any(gm & wm):
        raise ValueError("gm and wm overlap")
    levels = np.asarray(levels)
    if levels.shape != coords.s.shape:
        raise ValueError(f"levels must have one value per slice {coords.s.shape}")
    voxels = np.flatnonzero(gm | wm)
    nu, nv = TEMPLATE_SHAPE_UV
    u = np.nan_to_num(coords.u.ravel()[voxels], nan=0.0)
    v = np.nan_to_num(coords.v.ravel()[voxels], nan=0.0)
    iu = np.clip(np.floor(_uv_index(u, nu) + 0.5), 0, nu - 1).astype(np.intp)
    iv = np.clip(np.floor(_uv_index(v, nv) + 0.5), 0, nv - 1).astype(np.intp)
    lv = priors.level_index(levels)[voxels // (gm.shape[1] * gm.shape[2])]
    gm_map, wm_map = priors.region_maps
    labels = np.zeros(gm.shape, dtype=np.int16)
    labels.flat[voxels] = np.where(gm.ravel()[voxels], gm_map[lv, iu, iv], wm_map[lv, iu, iv])
    return labels


def pam50_priors_from_atlas(
    cord: BoolArray,
    gm: FloatArray,
    regions: FloatArray,
    levels: NDArray[np.integer],
    affine_lps: FloatArray,
    region_keys: Sequence[str],
) -> Pam50Priors:
    """Map the PAM50 template slice by slice into cord coordinates and average per level.

    Parameters
    ----------
    cord : ndarray of bool, shape (n_slices, rows, cols)
        PAM50 cord mask in the project's ``[k, j, i]`` order.
    gm : ndarray, same shape
        PAM50 GM probability.
    regions : ndarray, shape (12, n_slices, rows, cols)
        Region probabilities, named by ``region_keys``.
    levels : ndarray of int, same shape as ``cord``
        Vertebral level of each cord voxel (1 = C1), 0 outside; a slice belongs to the
        level most of its cord voxels have.
    affine_lps : ndarray, shape (4, 4)
        Voxel ``[k, j, i, 1]`` to LPS mm.
    region_keys : sequence of str
        Summary key of each region (``REGIONS`` keys, e.g. ``gm_dorsal_horns_left``).

    Returns
    -------
    Pam50Priors
        Levels 1 .. highest level present; a level without slices takes its neighbour's.
    """
    cord = np.asarray(cord, dtype=bool)
    gm = np.asarray(gm, dtype=np.float64)
    regions = np.asarray(regions, dtype=np.float64)
    levels = np.asarray(levels)
    if cord.ndim != 3 or gm.shape != cord.shape or levels.shape != cord.shape:
        raise ValueError("cord, gm and levels must be 3-D arrays of one shape")
    if regions.shape != (len(REGIONS), *cord.shape):
        raise ValueError(f"regions must have shape ({len(REGIONS)}, *{cord.shape})")
    by_key = {info.key: code for code, info in REGIONS.items()}
    if sorted(region_keys) != sorted(by_key):
        raise ValueError("region_keys must be the keys of REGIONS")
    codes = tuple(by_key[k] for k in region_keys)

    n = cord.shape[0]
    centre = np.full((n, 2), np.nan)
    slice_level = np.zeros(n, dtype=np.intp)
    for k in range(n):
        if cord[k].any():
            centre[k] = ndimage.center_of_mass(cord[k])
            lv = levels[k][cord[k] & (levels[k] > 0)]
            if lv.size:
                slice_level[k] = int(np.bincount(lv.astype(np.intp)).argmax())
    coords = cord_coordinates(cord, centre, affine_lps, slab=1, n_slabs=1)

    nu, nv = TEMPLATE_SHAPE_UV
    n_levels = int(slice_level.max())
    if n_levels < 1:
        raise ValueError("no cord slice carries a vertebral level")
    channels = np.concatenate([gm[None], regions])  # (13, n, rows, cols)
    sums = np.zeros((channels.shape[0], n_levels, nu, nv))
    counts = np.zeros((n_levels, nu, nv))
    mapped = np.isfinite(coords.u) & np.isfinite(coords.v)
    for k in np.flatnonzero(slice_level > 0):
        ok = mapped[k]
        iu = np.floor(_uv_index(coords.u[k][ok], nu) + 0.5).astype(np.intp)
        iv = np.floor(_uv_index(coords.v[k][ok], nv) + 0.5).astype(np.intp)
        inside = (iu >= 0) & (iu < nu) & (iv >= 0) & (iv < nv)
        cell = iu[inside] * nv + iv[inside]
        lv = slice_level[k] - 1
        counts[lv].flat[:] += np.bincount(cell, minlength=nu * nv)
        values = channels[:, k][:, ok][:, inside]
        for c in range(channels.shape[0]):
            sums[c, lv].flat[:] += np.bincount(cell, weights=values[c], minlength=nu * nv)
    sigma = (0.0, _FILL_SIGMA_CELLS, _FILL_SIGMA_CELLS)
    weight = ndimage.gaussian_filter(counts, sigma)
    filled = np.empty_like(sums)
    for c in range(channels.shape[0]):
        smooth = ndimage.gaussian_filter(sums[c], sigma) / np.maximum(weight, 1e-9)
        filled[c] = np.where(weight > 1e-3, smooth, 0.0)
    for lv in range(n_levels):  # a level without slices: copy the nearest level that has some
        if counts[lv].sum() == 0:
            have = np.flatnonzero(counts.sum(axis=(1, 2)) > 0)
            filled[:, lv] = filled[:, have[np.argmin(np.abs(have - lv))]]
    return Pam50Priors(
        gm=np.clip(filled[0], 0.0, 1.0),
        regions=np.clip(filled[1:], 0.0, 1.0),
        region_codes=codes,
    )


@dataclass(frozen=True)
class PriorWarp:
    """In-plane warp of the template's ``(u, v)`` that aligns a GM prior with one slab.

    With ``w = v - shift_v``, the prior is read at ``w / scale_anterior`` (``w < 0``) or
    ``w / scale_posterior`` (``w >= 0``) and at ``u / su(w)``, where ``su`` runs smoothly from
    ``scale_u_anterior`` (``w <= -0.1``) to ``scale_u_posterior`` (``w >= 0.1``). Scales above
    1 stretch the prior's butterfly (the ventral and the dorsal horns separately), ``shift_v >
    0`` moves it posteriorly. ``correlation`` is that of the slab's interior T1 with the warped
    prior (GM has the longer T1), ``identity_correlation`` the same with the unwarped prior.
    """

    scale_u_anterior: float = 1.0
    scale_u_posterior: float = 1.0
    scale_anterior: float = 1.0
    scale_posterior: float = 1.0
    shift_v: float = 0.0
    correlation: float = float("nan")
    identity_correlation: float = float("nan")

    @property
    def is_identity(self) -> bool:
        """True when the prior is read where the slab's coordinates say."""
        return (
            self.scale_u_anterior,
            self.scale_u_posterior,
            self.scale_anterior,
            self.scale_posterior,
            self.shift_v,
        ) == (1.0, 1.0, 1.0, 1.0, 0.0)

    def warp_uv(self, u: FloatArray, v: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Where the slab's ``(u, v)`` read the prior grid."""
        w = v - self.shift_v
        t = np.clip((w + _U_BLEND_HALF_WIDTH) / (2 * _U_BLEND_HALF_WIDTH), 0.0, 1.0)
        su = self.scale_u_anterior * (1.0 - t) + self.scale_u_posterior * t
        return u / su, np.where(w < 0, w / self.scale_anterior, w / self.scale_posterior)

    def apply(self, coords: CordCoordinates) -> CordCoordinates:
        """Coordinates at which the slab reads the (unwarped) prior grid."""
        u, v = self.warp_uv(coords.u, coords.v)
        return CordCoordinates(u=u, v=v, s=coords.s, slab=coords.slab, n_slabs=coords.n_slabs)

    def as_dict(self) -> dict[str, float]:
        """Rounded values for the exam summary."""
        return {
            "scale_u_anterior": round(self.scale_u_anterior, 3),
            "scale_u_posterior": round(self.scale_u_posterior, 3),
            "scale_anterior": round(self.scale_anterior, 3),
            "scale_posterior": round(self.scale_posterior, 3),
            "shift_v": round(self.shift_v, 3),
            "t1_prior_correlation": round(self.correlation, 3),
            "t1_prior_correlation_unwarped": round(self.identity_correlation, 3),
        }


#: Search ranges of the prior warp: scale_u_anterior, scale_u_posterior, scale_anterior,
#: scale_posterior, shift_v.
WARP_BOUNDS = ((0.8, 1.3), (0.8, 1.3), (0.8, 1.4), (0.8, 1.8), (-0.2, 0.2))
#: The warp is fitted on at most this many interior voxels, with at most this many
#: evaluations of the correlation (keeps the fit at tens of milliseconds per slab).
_WARP_MAX_VOXELS = 3000
_WARP_MAX_EVALUATIONS = 150


def fit_prior_warp(
    t1_ms: FloatArray,
    cord: BoolArray,
    coords: CordCoordinates,
    prior_template: FloatArray,
    *,
    voxel_mm: tuple[float, float, float],
    edge_mm: float = 0.6,
    min_voxels: int = 200,
    min_correlation: float = 0.1,
    min_gain: float = 0.04,
) -> PriorWarp:
    """Find the in-plane warp of a GM prior that best matches the slab's T1 contrast.

    Grey matter has a longer T1 than white matter, so over the cord's interior (no partial
    volume with CSF) T1 correlates with a well-placed GM prior. The warp maximising that
    correlation within :data:`WARP_BOUNDS` is found by Powell's method from the identity.

    Parameters
    ----------
    t1_ms : ndarray, shape (n_slices, rows, cols)
        T1 (ms); NaN voxels (e.g. known lesions) are ignored.
    cord : ndarray of bool, same shape
        Whole-cord mask.
    coords : CordCoordinates
    prior_template : ndarray, shape ``template_shape(coords.n_slabs)``
        GM prior on the template grid.
    voxel_mm : tuple of float
        ``(slice_mm, row_mm, col_mm)``.
    edge_mm : float
        Only cord voxels farther than this from the cord's edge (in-plane) are used: the
        edge's partial volume with CSF has a long T1 too.
    min_voxels : int
        Fewer usable voxels than this: no warp (identity).
    min_correlation, min_gain : float
        The warp is kept only if its correlation reaches ``min_correlation`` and beats the
        unwarped prior's by ``min_gain``: without a clear GM/WM contrast (noise, lesions, a
        contrast the wrong way round), or when the atlas already fits (on real cords with
        expert outlines the warp gained 0.01-0.03 and did not improve the GM Dice), the prior
        stays as the atlas has it.

    Returns
    -------
    PriorWarp
        The identity (with the unwarped correlation) when the warp is not kept.
    """
    t1 = np.asarray(t1_ms, dtype=np.float64)
    cord = np.asarray(cord, dtype=bool)
    if t1.shape != coords.u.shape or cord.shape != coords.u.shape:
        raise ValueError(f"t1_ms and cord must have the slab's shape {coords.u.shape}")
    spacing = tuple(float(x) for x in voxel_mm)
    if len(spacing) != 3 or min(spacing) <= 0 or edge_mm < 0:
        raise ValueError("voxel_mm must be 3 positive sizes and edge_mm >= 0")
    interior = np.zeros(cord.shape, dtype=bool)
    if cord.any():
        box = ndimage.find_objects(cord.astype(np.int8))[0]
        for k in range(box[0].start, box[0].stop):
            padded = np.pad(cord[k][box[1:]], 1)  # the box's border is outside the cord
            depth = ndimage.distance_transform_edt(padded, sampling=spacing[1:])
            interior[k][box[1:]] = depth[1:-1, 1:-1] > edge_mm
    grid = np.asarray(prior_template, dtype=np.float64)
    if grid.shape != template_shape(coords.n_slabs):
        raise ValueError(f"prior_template must have shape {template_shape(coords.n_slabs)}")
    use = interior & np.isfinite(t1) & np.isfinite(coords.u) & np.isfinite(coords.v)
    if use.sum() < min_voxels:
        return PriorWarp()
    flat = np.flatnonzero(use)
    flat = flat[:: max(1, flat.size // _WARP_MAX_VOXELS)]  # evenly thinned: speed, not bias
    # T1 far outside both tissue classes (lesions, residual partial volume) would pull the
    # prior towards itself: only voxels within the GM/WM mixture's classes are used
    values = t1.flat[flat]
    mixture = fit_tissue_mixture(values, coords.sample(grid).flat[flat])
    flat = flat[mixture.within_classes(values)]
    if flat.size < min_voxels:
        return PriorWarp()
    k = flat // (use.shape[1] * use.shape[2])
    u, v, values = coords.u.flat[flat], coords.v.flat[flat], t1.flat[flat]
    values = (values - values.mean()) / max(float(values.std()), 1e-9)
    nu, nv = TEMPLATE_SHAPE_UV
    z = np.clip(coords.s[k] * TEMPLATE_Z_BINS_PER_SLAB - 0.5, 0, TEMPLATE_Z_BINS_PER_SLAB - 1)
    z = z + (coords.slab - 1) * TEMPLATE_Z_BINS_PER_SLAB

    def correlation(params: NDArray[np.float64]) -> float:
        wu, wv = PriorWarp(*(float(x) for x in params)).warp_uv(u, v)
        iu = np.clip(_uv_index(wu, nu), 0, nu - 1)
        iv = np.clip(_uv_index(wv, nv), 0, nv - 1)
        p = ndimage.map_coordinates(grid, np.stack([z, iu, iv]), order=1, mode="nearest")
        sd = float(p.std())
        return float(np.mean(values * (p - p.mean())) / sd) if sd > 0 else -1.0

    start = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    identity = correlation(start)
    found = optimize.minimize(
        lambda x: -correlation(x),
        start,
        method="Powell",
        bounds=WARP_BOUNDS,
        options={"xtol": 2e-2, "ftol": 1e-3, "maxfev": _WARP_MAX_EVALUATIONS},
    )
    best = -float(found.fun)
    if not np.isfinite(best) or best < min_correlation or best - identity < min_gain:
        return PriorWarp(correlation=identity, identity_correlation=identity)
    return PriorWarp(*(float(x) for x in found.x), best, identity)
