"""Template space: a per-slice normalised cord coordinate system and a GM prior in it.

In-plane, every voxel gets ``(u, v)``: its angle θ around the slice's cord centre, measured in
patient directions (u positive = patient left, v positive = posterior), and its distance
divided by the cord radius at that angle, so the cord outline maps onto the unit circle.
Along the cord, ``s`` runs from 0 at the slab's superior end to 1 at its inferior end. The
template grid is ``TEMPLATE_Z_BINS_PER_SLAB`` bins per slab by ``TEMPLATE_SHAPE_UV`` cells
over ``u, v`` in ``[-TEMPLATE_EXTENT, TEMPLATE_EXTENT]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = [
    "TEMPLATE_EXTENT",
    "TEMPLATE_SHAPE_UV",
    "TEMPLATE_Z_BINS_PER_SLAB",
    "CordCoordinates",
    "cord_coordinates",
    "geometric_gm_prior",
    "gm_prior_from_controls",
    "template_shape",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

TEMPLATE_SHAPE_UV = (64, 64)
TEMPLATE_EXTENT = 1.25
TEMPLATE_Z_BINS_PER_SLAB = 4
_ANGLE_BINS = 72
_LEFT = np.array([1.0, 0.0, 0.0])  # LPS +x
_POSTERIOR = np.array([0.0, 1.0, 0.0])  # LPS +y


def template_shape(n_slabs: int) -> tuple[int, int, int]:
    """Shape ``(z, u, v)`` of the template grid of a protocol with ``n_slabs`` slabs.

    Examples
    --------
    >>> template_shape(2)
    (8, 64, 64)
    """
    if not isinstance(n_slabs, int) or n_slabs < 1:
        raise ValueError(f"n_slabs must be a positive integer, got {n_slabs!r}")
    return (TEMPLATE_Z_BINS_PER_SLAB * n_slabs, *TEMPLATE_SHAPE_UV)


def _uv_index(values: FloatArray, n: int) -> FloatArray:
    """Continuous cell index (cell centres at integers) of u or v values."""
    return (values + TEMPLATE_EXTENT) / (2 * TEMPLATE_EXTENT) * n - 0.5


def _cell_centres(n: int) -> FloatArray:
    return (np.arange(n) + 0.5) / n * 2 * TEMPLATE_EXTENT - TEMPLATE_EXTENT


@dataclass(frozen=True)
class CordCoordinates:
    """Normalised cord coordinates of every voxel of one slab.

    Attributes
    ----------
    u, v : ndarray, shape (n_slices, rows, cols)
        Left-right (+ = patient left) and antero-posterior (+ = posterior) coordinates; the
        cord outline lies at ``hypot(u, v) = 1``. NaN outside the mapped area (beyond
        ``TEMPLATE_EXTENT`` or on slices without cord).
    s : ndarray, shape (n_slices,)
        Position along the slab, 0 at its superior end, 1 at its inferior end.
    slab : int
        Slab index (1 = most superior).
    n_slabs : int
        Number of slabs of the protocol (sets the template's z size).
    """

    u: FloatArray
    v: FloatArray
    s: FloatArray
    slab: int
    n_slabs: int = 1

    def __post_init__(self) -> None:
        if self.u.shape != self.v.shape or self.u.ndim != 3:
            raise ValueError("u and v must be 3-D arrays of the same shape")
        if self.s.shape != (self.u.shape[0],):
            raise ValueError(f"s must have one value per slice, got shape {self.s.shape}")
        if not 1 <= self.slab <= self.n_slabs:
            raise ValueError(f"slab {self.slab} outside 1..{self.n_slabs}")

    @property
    def z_bin(self) -> NDArray[np.int64]:
        """Template z bin of every slice (within the whole template, all slabs)."""
        local = np.clip(
            np.floor(self.s * TEMPLATE_Z_BINS_PER_SLAB), 0, TEMPLATE_Z_BINS_PER_SLAB - 1
        )
        return local.astype(np.int64) + (self.slab - 1) * TEMPLATE_Z_BINS_PER_SLAB

    def _cells(self, mask: BoolArray) -> tuple[NDArray[np.int64], BoolArray]:
        nu, nv = TEMPLATE_SHAPE_UV
        iu = np.floor(_uv_index(self.u, nu) + 0.5)
        iv = np.floor(_uv_index(self.v, nv) + 0.5)
        ok = mask & np.isfinite(iu) & np.isfinite(iv)
        ok &= (iu >= 0) & (iu < nu) & (iv >= 0) & (iv < nv)
        z = np.broadcast_to(self.z_bin[:, None, None], self.u.shape)
        flat = (z[ok] * nu + iu[ok].astype(np.int64)) * nv + iv[ok].astype(np.int64)
        return flat, ok

    def to_template(self, values: FloatArray, mask: BoolArray) -> FloatArray:
        """Average ``values`` over ``mask`` into the template grid.

        Parameters
        ----------
        values : ndarray, shape (n_slices, rows, cols)
        mask : ndarray of bool, same shape
            Voxels to use (non-finite values are skipped).

        Returns
        -------
        ndarray, shape ``template_shape(n_slabs)``
            Mean per cell; NaN where no voxel fell (including the other slabs' bins).
        """
        values = np.asarray(values, dtype=np.float64)
        mask = np.asarray(mask, dtype=bool)
        if values.shape != self.u.shape or mask.shape != self.u.shape:
            raise ValueError(f"values and mask must have the slab's shape {self.u.shape}")
        flat, ok = self._cells(mask & np.isfinite(values))
        shape = template_shape(self.n_slabs)
        size = int(np.prod(shape))
        total = np.bincount(flat, weights=values[ok], minlength=size)
        count = np.bincount(flat, minlength=size)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        return mean.reshape(shape)

    def template_counts(self, mask: BoolArray) -> NDArray[np.int64]:
        """Number of voxels of ``mask`` per template cell."""
        flat, _ = self._cells(np.asarray(mask, dtype=bool))
        shape = template_shape(self.n_slabs)
        return np.bincount(flat, minlength=int(np.prod(shape))).reshape(shape)

    def sample(self, template_values: FloatArray) -> FloatArray:
        """Interpolate a template grid onto the exam grid (linear in z, u and v).

        Parameters
        ----------
        template_values : ndarray
            Shape ``template_shape(n_slabs)`` or one slab's block
            ``(TEMPLATE_Z_BINS_PER_SLAB, *TEMPLATE_SHAPE_UV)``.

        Returns
        -------
        ndarray, shape (n_slices, rows, cols)
            NaN outside the mapped area and where the surrounding template cells are mostly
            NaN (interpolation weights of NaN cells are dropped and the rest renormalised).
        """
        grid = np.asarray(template_values, dtype=np.float64)
        full = template_shape(self.n_slabs)
        block = (TEMPLATE_Z_BINS_PER_SLAB, *TEMPLATE_SHAPE_UV)
        if grid.shape == full:
            start = (self.slab - 1) * TEMPLATE_Z_BINS_PER_SLAB
            grid = grid[start : start + TEMPLATE_Z_BINS_PER_SLAB]
        elif grid.shape != block:
            raise ValueError(f"template must have shape {full} or {block}, got {grid.shape}")
        out = np.full(self.u.shape, np.nan)
        mapped, points = self._sample_points
        if mapped.size == 0:
            return out
        # normalised interpolation: empty (NaN) cells do not erase their neighbours
        known = np.isfinite(grid)
        values = ndimage.map_coordinates(np.where(known, grid, 0.0), points, order=1,
                                         mode="nearest")  # fmt: skip
        weight = ndimage.map_coordinates(known.astype(np.float64), points, order=1,
                                         mode="nearest")  # fmt: skip
        with np.errstate(invalid="ignore", divide="ignore"):
            out.flat[mapped] = np.where(weight > 0.25, values / weight, np.nan)
        return out

    @cached_property
    def _sample_points(self) -> tuple[NDArray[np.intp], FloatArray]:
        """Flat indices of the mapped voxels and their (z, u, v) template cell positions.

        Computed once per object (a slab's grids are sampled several times); ``u``, ``v``
        and ``s`` must not be changed in place afterwards.
        """
        mapped = np.flatnonzero(np.isfinite(self.u) & np.isfinite(self.v))
        nu, nv = TEMPLATE_SHAPE_UV
        kk = mapped // (self.u.shape[1] * self.u.shape[2])
        z = np.clip(self.s[kk] * TEMPLATE_Z_BINS_PER_SLAB - 0.5, 0, TEMPLATE_Z_BINS_PER_SLAB - 1)
        iu = np.clip(_uv_index(self.u.ravel()[mapped], nu), 0, nu - 1)
        iv = np.clip(_uv_index(self.v.ravel()[mapped], nv), 0, nv - 1)
        return mapped, np.stack([z, iu, iv])


def _in_plane_axes(affine_lps: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Patient-left and posterior unit vectors within the slice plane, and the normal."""
    a = np.asarray(affine_lps, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise ValueError("affine_lps must be a finite 4x4 matrix")
    normal = np.cross(a[:3, 1], a[:3, 2])
    if np.linalg.norm(normal) == 0:
        raise ValueError("affine_lps has parallel row and column steps")
    normal /= np.linalg.norm(normal)
    left = _LEFT - normal * (normal @ _LEFT)
    if np.linalg.norm(left) < 0.3:
        raise ValueError("slices are not transverse enough to tell left from right")
    left /= np.linalg.norm(left)
    posterior = _POSTERIOR - normal * (normal @ _POSTERIOR) - left * (left @ _POSTERIOR)
    if np.linalg.norm(posterior) < 0.3:
        raise ValueError("slices are not transverse enough to tell anterior from posterior")
    posterior /= np.linalg.norm(posterior)
    return left, posterior, normal


def _outline_radius(theta: FloatArray, r: FloatArray, pixel_mm: float) -> FloatArray:
    """Smoothed cord radius per angle bin from the cord's voxels (angles and distances)."""
    bins = np.floor((theta + np.pi) / (2 * np.pi) * _ANGLE_BINS).astype(int) % _ANGLE_BINS
    radius = np.zeros(_ANGLE_BINS)
    np.maximum.at(radius, bins, r)
    radius = np.where(radius > 0, radius + 0.5 * pixel_mm, np.nan)
    known = np.isfinite(radius)
    if not known.all():
        idx = np.arange(_ANGLE_BINS)
        radius = np.interp(idx, idx[known], radius[known], period=_ANGLE_BINS)
    # circular smoothing over +-10 degrees
    return ndimage.uniform_filter1d(radius, size=5, mode="wrap")


def cord_coordinates(
    cord: BoolArray,
    centre_ji: FloatArray,
    affine_lps: FloatArray,
    *,
    slab: int,
    n_slabs: int,
) -> CordCoordinates:
    """Normalised cord coordinates ``(u, v, s)`` of every voxel of a slab.

    Parameters
    ----------
    cord : ndarray of bool, shape (n_slices, rows, cols)
        Whole-cord mask.
    centre_ji : ndarray, shape (n_slices, 2)
        Cord centre (row, column) per slice, NaN where there is no cord.
    affine_lps : ndarray, shape (4, 4)
        Voxel ``[k, j, i, 1]`` to patient LPS mm.
    slab, n_slabs : int
        Slab index (1 = most superior) and number of slabs of the protocol.

    Returns
    -------
    CordCoordinates

    Raises
    ------
    ValueError
        For mismatched shapes, a bad affine, or a slab index outside ``1..n_slabs``.

    Examples
    --------
    >>> jj, ii = np.mgrid[:40, :40]
    >>> cord = (np.hypot(jj - 20, ii - 20) <= 10)[None]
    >>> axial = np.array([[0, 0, 0.3, 0], [0, 0.3, 0, 0], [4, 0, 0, 0], [0, 0, 0, 1]])
    >>> c = cord_coordinates(cord, np.array([[20.0, 20.0]]), axial, slab=1, n_slabs=1)
    >>> round(float(c.u[0, 20, 30]), 1), round(float(c.v[0, 30, 20]), 1)
    (1.0, 1.0)
    """
    cord = np.asarray(cord, dtype=bool)
    if cord.ndim != 3:
        raise ValueError(f"cord must be 3-D [k, j, i], got shape {cord.shape}")
    centre = np.asarray(centre_ji, dtype=np.float64)
    n_slices = cord.shape[0]
    if centre.shape != (n_slices, 2):
        raise ValueError(f"centre_ji must have shape ({n_slices}, 2), got {centre.shape}")
    if not isinstance(n_slabs, int) or n_slabs < 1 or not 1 <= slab <= n_slabs:
        raise ValueError(f"need 1 <= slab <= n_slabs, got slab={slab!r}, n_slabs={n_slabs!r}")
    a = np.asarray(affine_lps, dtype=np.float64)
    left, posterior, _ = _in_plane_axes(a)
    step_j, step_i = a[:3, 1], a[:3, 2]
    # in-plane (left, posterior) mm per unit of j and i
    proj = np.array([[left @ step_j, left @ step_i], [posterior @ step_j, posterior @ step_i]])
    pixel_mm = float(np.sqrt(np.linalg.norm(step_j) * np.linalg.norm(step_i)))

    u = np.full(cord.shape, np.nan)
    v = np.full(cord.shape, np.nan)
    rows, cols = cord.shape[1:]
    for k in range(n_slices):
        if not np.all(np.isfinite(centre[k])) or not cord[k].any():
            continue
        jj, ii = np.nonzero(cord[k])
        x, y = proj @ np.vstack([jj - centre[k, 0], ii - centre[k, 1]])
        radius = _outline_radius(np.arctan2(y, x), np.hypot(x, y), pixel_mm)
        reach = TEMPLATE_EXTENT * float(np.max(radius)) + 2 * pixel_mm
        half = int(np.ceil(reach / min(np.linalg.norm(step_j), np.linalg.norm(step_i))))
        j0, j1 = max(int(centre[k, 0]) - half, 0), min(int(centre[k, 0]) + half + 2, rows)
        i0, i1 = max(int(centre[k, 1]) - half, 0), min(int(centre[k, 1]) + half + 2, cols)
        gj, gi = np.mgrid[j0:j1, i0:i1]
        x, y = proj @ np.vstack([gj.ravel() - centre[k, 0], gi.ravel() - centre[k, 1]])
        theta = np.arctan2(y, x)
        pos = (theta + np.pi) / (2 * np.pi) * _ANGLE_BINS - 0.5
        r_theta = np.interp(pos, np.arange(_ANGLE_BINS), radius, period=_ANGLE_BINS)
        rho = np.hypot(x, y) / r_theta
        inside = (rho <= TEMPLATE_EXTENT) | cord[k, j0:j1, i0:i1].ravel()
        uu = np.where(inside, rho * np.cos(theta), np.nan).reshape(gj.shape)
        vv = np.where(inside, rho * np.sin(theta), np.nan).reshape(gj.shape)
        u[k, j0:j1, i0:i1] = uu
        v[k, j0:j1, i0:i1] = vv

    # s: 0 at the superior (head, +z in LPS) end of the slab.
    index = np.arange(n_slices, dtype=np.float64)
    if n_slices == 1 or a[2, 0] == 0:
        s = np.full(n_slices, 0.5)
    elif a[2, 0] > 0:
        s = (n_slices - 1 - index) / (n_slices - 1)
    else:
        s = index / (n_slices - 1)
    return CordCoordinates(u=u, v=v, s=s, slab=slab, n_slabs=n_slabs)


def _capsule_distance(
    u: FloatArray, v: FloatArray, start: tuple[float, float], end: tuple[float, float]
) -> FloatArray:
    """Distance of points to the segment ``start``-``end`` in (u, v)."""
    p = np.array(start)
    d = np.array(end) - p
    t = np.clip(((u - p[0]) * d[0] + (v - p[1]) * d[1]) / float(d @ d), 0.0, 1.0)
    return np.hypot(u - p[0] - t * d[0], v - p[1] - t * d[1])


#: Butterfly of the cervical grey matter as capsules (segment in |u|, v and a half-width):
#: ventral horns broad and anterolateral, dorsal horns thin and reaching posterolaterally
#: towards the dorsolateral sulcus, intermediate zone and grey commissure in the middle.
_GM_CAPSULES: tuple[tuple[tuple[float, float], tuple[float, float], float], ...] = (
    ((0.22, -0.12), (0.42, -0.40), 0.17),  # ventral horn
    ((0.08, -0.02), (0.28, -0.02), 0.13),  # intermediate zone
    ((0.00, -0.03), (0.12, -0.03), 0.07),  # grey commissure around the central canal
    ((0.22, 0.10), (0.36, 0.80), 0.075),  # dorsal horn
)


def geometric_gm_prior(n_slabs: int = 1, *, edge_width: float = 0.05) -> FloatArray:
    """Default GM probability on the template grid, from textbook cervical anatomy.

    Parameters
    ----------
    n_slabs : int
        Number of slabs (the same in-plane prior is repeated along z).
    edge_width : float
        Softness of the butterfly's edge in normalised units.

    Returns
    -------
    ndarray, shape ``template_shape(n_slabs)``
        Probability in [0.02, 0.9]; symmetric left-right.

    Examples
    --------
    >>> p = geometric_gm_prior()
    >>> bool(p[0, 32, 31] > 0.5), bool(p[0, 2, 2] < 0.05)  # centre vs. outside the cord
    (True, True)
    """
    if edge_width <= 0:
        raise ValueError("edge_width must be positive")
    cu = _cell_centres(TEMPLATE_SHAPE_UV[0])
    cv = _cell_centres(TEMPLATE_SHAPE_UV[1])
    uu, vv = np.meshgrid(np.abs(cu), cv, indexing="ij")
    signed = np.full(uu.shape, np.inf)
    for start, end, half_width in _GM_CAPSULES:
        signed = np.minimum(signed, _capsule_distance(uu, vv, start, end) - half_width)
    prior = 0.02 + 0.88 / (1.0 + np.exp(signed / edge_width))
    prior[np.hypot(uu, vv) > 1.0] = 0.02
    return np.broadcast_to(prior, template_shape(n_slabs)).copy()


def gm_prior_from_controls(
    controls: Sequence[tuple[CordCoordinates, BoolArray]],
    *,
    pseudo_count: float = 20.0,
    smoothing_cells: float = 1.0,
    base_prior: FloatArray | None = None,
) -> FloatArray:
    """GM probability on the template grid learned from controls' GM masks.

    Each cell's probability is the fraction of GM among the controls' cord voxels that fall
    into it, shrunk towards ``base_prior`` (default :func:`geometric_gm_prior`) with
    ``pseudo_count`` voxels of weight, then smoothed in-plane.

    Parameters
    ----------
    controls : sequence of (CordCoordinates, ndarray of bool)
        Coordinates and GM mask of each control slab (all with the same ``n_slabs``).
    pseudo_count : float
        Weight of the geometric prior in voxels per cell.
    smoothing_cells : float
        Gaussian sigma (cells) of the in-plane smoothing.
    base_prior : ndarray, shape ``template_shape(n_slabs)``, optional
        Prior the learned one is shrunk towards (e.g. the PAM50 atlas' GM probability).

    Returns
    -------
    ndarray, shape ``template_shape(n_slabs)``
    """
    if not controls:
        raise ValueError("need at least one control")
    if pseudo_count <= 0 or smoothing_cells < 0:
        raise ValueError("pseudo_count must be positive and smoothing_cells >= 0")
    n_slabs = controls[0][0].n_slabs
    shape = template_shape(n_slabs)
    gm_count = np.zeros(shape)
    total = np.zeros(shape)
    for coords, gm in controls:
        if coords.n_slabs != n_slabs:
            raise ValueError("all controls must come from protocols with the same slab count")
        gm = np.asarray(gm, dtype=bool)
        inside = np.isfinite(coords.u) & (np.hypot(coords.u, coords.v) <= 1.0)
        gm_count += coords.template_counts(gm & inside)
        total += coords.template_counts(inside)
    if base_prior is None:
        base = geometric_gm_prior(n_slabs)
    else:
        base = np.asarray(base_prior, dtype=np.float64)
        if base.shape != shape or not np.all(np.isfinite(base)):
            raise ValueError(f"base_prior must be finite with shape {shape}")
    prior = (gm_count + pseudo_count * base) / (total + pseudo_count)
    if smoothing_cells > 0:
        prior = ndimage.gaussian_filter(prior, (0.0, smoothing_cells, smoothing_cells))
    return np.clip(prior, 0.01, 0.99)
