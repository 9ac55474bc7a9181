"""Anatomical sub-regions of the cord (columns, funiculi, horns) and vertebral levels.

Regions are geometric definitions in the normalised cord coordinates of
:mod:`processing.template` (u positive = patient left, v positive = posterior):

- GM by v: ventral horns (v < -0.2), intermediate zone (-0.2 <= v <= 0.15), dorsal horns
  (v > 0.15);
- WM: dorsal columns = posterior WM between the dorsal horns (v > 0 and |u| below the line
  the dorsal horns follow towards the dorsolateral sulcus); ventral funiculi = anterior WM
  medial to the ventral horns (v < -0.3, within a wedge around the anterior median fissure);
  lateral funiculi = the rest of the WM;
- side by the sign of u (u >= 0 left).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from processing.template import CordCoordinates

__all__ = [
    "DEFAULT_COVERAGE",
    "REGIONS",
    "TYPICAL_LEVEL_HEIGHTS_MM",
    "RegionInfo",
    "estimate_levels",
    "label_regions",
    "region_masks",
]

BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class RegionInfo:
    """Name, side and tissue of a region code."""

    name: str
    side: str
    tissue: str

    @property
    def key(self) -> str:
        """Summary key of this region on this side, e.g. ``gm_dorsal_horns_left``."""
        return f"{self.name}_{self.side}"


REGIONS: dict[int, RegionInfo] = {
    1: RegionInfo("wm_dorsal_columns", "left", "wm"),
    2: RegionInfo("wm_dorsal_columns", "right", "wm"),
    3: RegionInfo("wm_lateral_funiculi", "left", "wm"),
    4: RegionInfo("wm_lateral_funiculi", "right", "wm"),
    5: RegionInfo("wm_ventral_funiculi", "left", "wm"),
    6: RegionInfo("wm_ventral_funiculi", "right", "wm"),
    11: RegionInfo("gm_dorsal_horns", "left", "gm"),
    12: RegionInfo("gm_dorsal_horns", "right", "gm"),
    13: RegionInfo("gm_intermediate_zone", "left", "gm"),
    14: RegionInfo("gm_intermediate_zone", "right", "gm"),
    15: RegionInfo("gm_ventral_horns", "left", "gm"),
    16: RegionInfo("gm_ventral_horns", "right", "gm"),
}

#: Typical heights (mm, vertebra + disc) of C1..C7, used to share a slab between levels.
TYPICAL_LEVEL_HEIGHTS_MM = (12.0, 20.0, 15.0, 15.0, 15.0, 15.0, 16.0)

#: Default slab coverage by number of slabs: slab -> (first level, last level).
#: Slab 1 starts at C1 and covers C1-C4 whether or not a second slab (C4-C7) follows.
DEFAULT_COVERAGE: dict[int, dict[int, tuple[int, int]]] = {
    1: {1: (1, 4)},
    2: {1: (1, 4), 2: (4, 7)},
}

_GM_VENTRAL_V = -0.2
_GM_DORSAL_V = 0.15


def _dorsal_column_half_width(v: NDArray[np.float64]) -> NDArray[np.float64]:
    """|u| of the dorsal horns' medial border as they run posterolaterally."""
    return 0.12 + 0.3 * np.clip(v, 0.0, None)


def _ventral_funiculus(u: NDArray[np.float64], v: NDArray[np.float64]) -> BoolArray:
    """Anterior WM medial to the ventral horns (between the anterior median fissure and the
    ventral root exit zone)."""
    return (v < -0.3) & (np.abs(u) < 0.2 + 0.35 * (-v - 0.3))


def label_regions(coords: CordCoordinates, gm: BoolArray, wm: BoolArray) -> NDArray[np.int16]:
    """Region code (see :data:`REGIONS`) of every cord voxel, 0 outside.

    Parameters
    ----------
    coords : CordCoordinates
        Coordinates of the slab.
    gm, wm : ndarray of bool, shape (n_slices, rows, cols)
        Disjoint GM and WM masks (from :func:`processing.segmentation.split_gm_wm`).

    Returns
    -------
    ndarray of int16
        Each GM voxel gets a GM code, each WM voxel a WM code; cord voxels without
        coordinates are labelled by the nearest rule with u = v = 0 (intermediate zone /
        lateral funiculus) so every cord voxel has exactly one label.
    """
    gm = np.asarray(gm, dtype=bool)
    wm = np.asarray(wm, dtype=bool)
    if gm.shape != coords.u.shape or wm.shape != coords.u.shape:
        raise ValueError(f"gm and wm must have the slab's shape {coords.u.shape}")
    if np.any(gm & wm):
        raise ValueError("gm and wm overlap")
    # only cord voxels get a code: work on their flat indices
    voxels = np.flatnonzero(gm | wm)
    u = np.nan_to_num(coords.u.ravel()[voxels], nan=0.0)
    v = np.nan_to_num(coords.v.ravel()[voxels], nan=0.0)
    right = (u < 0).astype(np.int16)  # 0 = left, 1 = right: codes odd left, even right
    gm_code = np.where(v < _GM_VENTRAL_V, 15, np.where(v > _GM_DORSAL_V, 11, 13))
    dorsal = (v > 0) & (np.abs(u) < _dorsal_column_half_width(v))
    wm_code = np.where(dorsal, 1, np.where(_ventral_funiculus(u, v), 5, 3))
    labels = np.zeros(gm.shape, dtype=np.int16)
    labels.flat[voxels] = np.where(gm.ravel()[voxels], gm_code, wm_code) + right
    return labels


def region_masks(
    labels: NDArray[np.integer],
    gm: BoolArray,
    wm: BoolArray,
    levels: NDArray[np.integer],
    *,
    within: BoolArray | None = None,
) -> dict[str, BoolArray]:
    """Masks of every summary key.

    Parameters
    ----------
    labels : ndarray of int
        Region codes from :func:`label_regions`.
    gm, wm : ndarray of bool
        GM and WM masks.
    levels : ndarray of int
        Vertebral level (1..7) per slice, shape (n_slices,), or per voxel.
    within : ndarray of bool, optional
        Every mask is restricted to these voxels (e.g. the cord without its outer rim); the
        keys stay those of the unrestricted masks.

    Returns
    -------
    dict
        ``cord``, ``wm``, ``gm`` and every region name (both sides), each also with
        ``_left`` / ``_right``; plus ``C1``..``C7`` (cord on that level) for the levels
        present in ``levels``.

    Examples
    --------
    >>> gm = np.zeros((2, 3, 3), bool); gm[:, 1, 1] = True
    >>> wm = np.zeros_like(gm); wm[:, 1, 2] = True
    >>> labels = np.where(gm, 13, np.where(wm, 3, 0))
    >>> masks = region_masks(labels, gm, wm, np.array([4, 5]))
    >>> int(masks["cord"].sum()), int(masks["gm_left"].sum()), "C5" in masks
    (4, 2, True)
    """
    labels = np.asarray(labels)
    gm = np.asarray(gm, dtype=bool)
    wm = np.asarray(wm, dtype=bool)
    if labels.shape != gm.shape or gm.shape != wm.shape:
        raise ValueError("labels, gm and wm must have one shape")
    levels = np.asarray(levels)
    if levels.shape != (labels.shape[0],) and levels.shape != labels.shape:
        raise ValueError(f"levels must have shape ({labels.shape[0]},) or {labels.shape}")
    if within is not None:
        within = np.asarray(within, dtype=bool)
        if within.shape != labels.shape:
            raise ValueError(f"within must have the labels' shape {labels.shape}")
    # Every mask lies in the cord or the labelled voxels: decide on those voxels only.
    cord_3d = gm | wm
    voxels = np.flatnonzero(cord_3d | (labels > 0))
    code = labels.ravel()[voxels]
    cord = cord_3d.ravel()[voxels]
    if levels.shape == labels.shape:
        level = levels.ravel()[voxels]
    else:
        level = levels[voxels // (labels.shape[1] * labels.shape[2])]
    keep = np.ones(voxels.size, dtype=bool) if within is None else within.ravel()[voxels]

    def full(selected: BoolArray) -> BoolArray:
        mask = np.zeros(labels.shape, dtype=bool)
        mask.flat[voxels[selected & keep]] = True
        return mask

    odd = (code % 2 == 1) & (code > 0)
    even = (code % 2 == 0) & (code > 0)
    out: dict[str, BoolArray] = {}
    for key, selected in (("cord", cord), ("wm", wm.ravel()[voxels]), ("gm", gm.ravel()[voxels])):
        out[key] = full(selected)
        out[f"{key}_left"] = full(selected & odd)
        out[f"{key}_right"] = full(selected & even)
    names: dict[str, BoolArray] = {}
    for value, info in REGIONS.items():
        selected = code == value
        names[info.name] = names[info.name] | selected if info.name in names else selected
        out[info.name] = full(names[info.name])
        out[info.key] = full(selected)
    for lv in sorted(int(x) for x in np.unique(level[cord]) if 1 <= x <= 7):
        out[f"C{lv}"] = full(cord & (level == lv))
    return out


def estimate_levels(
    coords: CordCoordinates,
    n_slabs: int,
    coverage: Mapping[int, tuple[int, int]] | None = None,
) -> NDArray[np.int16]:
    """Estimated vertebral level (1..7 = C1..C7) of every slice of a slab.

    The slab is assumed to span from the top of its first level to the bottom of its last
    one (``coverage``), shared between levels in proportion to typical level heights. This
    is an estimate: it holds for a protocol that places its slabs at fixed levels.

    Parameters
    ----------
    coords : CordCoordinates
        Coordinates of the slab (its ``s`` and ``slab`` are used).
    n_slabs : int
        Number of slabs of the exam.
    coverage : mapping, optional
        Slab -> (first level, last level); default :data:`DEFAULT_COVERAGE`.

    Returns
    -------
    ndarray of int16, shape (n_slices,)

    Examples
    --------
    >>> import numpy as np
    >>> s = np.linspace(0, 1, 6)
    >>> c = CordCoordinates(np.zeros((6, 1, 1)), np.zeros((6, 1, 1)), s, slab=2, n_slabs=2)
    >>> estimate_levels(c, 2).tolist()
    [4, 4, 5, 6, 7, 7]
    """
    if coverage is None:
        if n_slabs not in DEFAULT_COVERAGE:
            raise ValueError(f"no default coverage for {n_slabs} slabs; pass coverage")
        coverage = DEFAULT_COVERAGE[n_slabs]
    if coords.slab not in coverage:
        raise ValueError(f"coverage has no entry for slab {coords.slab}")
    first, last = coverage[coords.slab]
    if not 1 <= first <= last <= 7:
        raise ValueError(f"coverage of slab {coords.slab} must satisfy 1 <= first <= last <= 7")
    heights = np.asarray(TYPICAL_LEVEL_HEIGHTS_MM[first - 1 : last])
    edges = np.concatenate([[0.0], np.cumsum(heights) / heights.sum()])
    index = np.searchsorted(edges, np.clip(coords.s, 0.0, 1.0), side="right") - 1
    return (first + np.clip(index, 0, last - first)).astype(np.int16)
