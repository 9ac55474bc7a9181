"""Per-region T1 and Z-score summaries, and normal-appearing tissue masks.

Plain functions on numpy arrays on the exam grid ``[k, j, i]``. Regions are boolean masks
keyed by summary key (``"cord"``, ``"wm"``, ``"gm"``, ``"wm_dorsal_columns"``, ``"C3"``...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DEFAULT_Z_THRESHOLD",
    "RegionStats",
    "normal_appearing",
    "region_statistics",
    "without_lesions",
]

DEFAULT_Z_THRESHOLD = 1.96
"""Z above which a voxel counts as abnormal.

1.96 is the 97.5th percentile of the standard normal distribution: used one-sided (tissue
damage raises T1, it does not lower it), a healthy voxel exceeds it with probability 2.5 %,
which is the false-positive rate a leave-one-out control should show. It is the threshold of
the voxel-wise Z-score maps in the 7 T cord MP2RAGE study the service automates.
"""


@dataclass(frozen=True)
class RegionStats:
    """T1 and Z-score summary of one region.

    Attributes
    ----------
    voxels : int
        Voxels in the region mask.
    mean_t1_ms, median_t1_ms : float
        Mean and median T1 (ms) over region voxels with a finite T1 (``NaN`` if none).
    mean_z : float
        Mean Z over voxels with a valid Z (``NaN`` if none).
    abnormal_percent : float
        Percentage of voxels with a valid Z whose Z exceeds the threshold (``NaN`` if none).
    scored_voxels : int
        Voxels with a valid (finite) Z: the denominator of ``abnormal_percent``.
    unscored_voxels : int
        Voxels without a valid Z (outside the model, T1 missing); not in the percentage.
    abnormal_voxels : int
        Voxels with Z above the threshold.
    """

    voxels: int
    mean_t1_ms: float
    median_t1_ms: float
    mean_z: float
    abnormal_percent: float
    scored_voxels: int
    unscored_voxels: int
    abnormal_voxels: int


def _as_mask(name: str, mask: ArrayLike, shape: tuple[int, ...]) -> NDArray[np.bool_]:
    array = np.asarray(mask)
    if array.dtype != np.bool_:
        raise ValueError(f"mask {name!r} must be boolean, got dtype {array.dtype}")
    if array.shape != shape:
        raise ValueError(f"mask {name!r} has shape {array.shape}, expected {shape}")
    return array


def region_statistics(
    t1_ms: ArrayLike,
    z: ArrayLike,
    masks: Mapping[str, ArrayLike],
    *,
    threshold: float = DEFAULT_Z_THRESHOLD,
) -> dict[str, RegionStats]:
    """Summarise T1 and Z per region; abnormal means ``Z > threshold`` (one-sided).

    Parameters
    ----------
    t1_ms : array_like
        T1 (ms) per voxel.
    z : array_like
        Z-score per voxel, same shape; ``NaN`` where the model gives none.
    masks : mapping of str to ndarray of bool
        Region masks by summary key, same shape.
    threshold : float
        Z threshold for an abnormal voxel.

    Returns
    -------
    dict of str to RegionStats
        One entry per mask, in the order of ``masks``.

    Raises
    ------
    ValueError
        If shapes differ, a mask is not boolean, or the threshold is not finite.

    Examples
    --------
    >>> t1 = np.array([1000.0, 1200.0, 1400.0, 1600.0])
    >>> z = np.array([0.0, 1.0, 3.0, np.nan])
    >>> s = region_statistics(t1, z, {"cord": np.ones(4, bool)})["cord"]
    >>> s.voxels, s.mean_t1_ms, s.abnormal_percent, s.unscored_voxels
    (4, 1300.0, 33.333333333333336, 1)
    """
    t1 = np.asarray(t1_ms, dtype=np.float64)
    zz = np.asarray(z, dtype=np.float64)
    if t1.shape != zz.shape:
        raise ValueError(f"t1_ms {t1.shape} and z {zz.shape} must share one shape")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    result: dict[str, RegionStats] = {}
    for name, raw in masks.items():
        mask = _as_mask(name, raw, t1.shape)
        t1_values = t1[mask]
        t1_values = t1_values[np.isfinite(t1_values)]
        z_values = zz[mask]
        z_values = z_values[np.isfinite(z_values)]
        abnormal = int(np.count_nonzero(z_values > threshold))
        scored = int(z_values.size)
        voxels = int(np.count_nonzero(mask))
        result[name] = RegionStats(
            voxels=voxels,
            mean_t1_ms=float(t1_values.mean()) if t1_values.size else float("nan"),
            median_t1_ms=float(np.median(t1_values)) if t1_values.size else float("nan"),
            mean_z=float(z_values.mean()) if scored else float("nan"),
            abnormal_percent=100.0 * abnormal / scored if scored else float("nan"),
            scored_voxels=scored,
            unscored_voxels=voxels - scored,
            abnormal_voxels=abnormal,
        )
    return result


def without_lesions(
    masks: Mapping[str, ArrayLike], lesion_mask: ArrayLike
) -> dict[str, NDArray[np.bool_]]:
    """Every region mask with the lesion voxels removed (same keys).

    Parameters
    ----------
    masks : mapping of str to ndarray of bool
        Region masks by summary key.
    lesion_mask : ndarray of bool
        Lesion voxels (reader outline or automatic candidates), same shape.

    Returns
    -------
    dict of str to ndarray of bool

    Raises
    ------
    ValueError
        If a mask is not boolean or shapes differ.
    """
    lesion = np.asarray(lesion_mask)
    if lesion.dtype != np.bool_:
        raise ValueError(f"lesion_mask must be boolean, got dtype {lesion.dtype}")
    return {name: _as_mask(name, raw, lesion.shape) & ~lesion for name, raw in masks.items()}


def normal_appearing(
    masks: Mapping[str, ArrayLike], lesion_mask: ArrayLike
) -> dict[str, NDArray[np.bool_]]:
    """Normal-appearing white and grey matter: ``"nawm"`` = WM minus lesions, ``"nagm"`` = GM.

    Parameters
    ----------
    masks : mapping of str to ndarray of bool
        Must contain ``"wm"`` and ``"gm"``.
    lesion_mask : ndarray of bool
        Lesion voxels, same shape.

    Returns
    -------
    dict of str to ndarray of bool
        ``{"nawm": ..., "nagm": ...}``.

    Raises
    ------
    ValueError
        If ``"wm"`` or ``"gm"`` is missing, a mask is not boolean, or shapes differ.

    Examples
    --------
    >>> masks = {"wm": np.array([True, True, False]), "gm": np.array([False, False, True])}
    >>> na = normal_appearing(masks, np.array([False, True, True]))
    >>> na["nawm"].tolist(), na["nagm"].tolist()
    ([True, False, False], [False, False, False])
    """
    missing = [key for key in ("wm", "gm") if key not in masks]
    if missing:
        raise ValueError(f"normal_appearing needs masks {missing} (got {sorted(masks)})")
    cleaned = without_lesions({"wm": masks["wm"], "gm": masks["gm"]}, lesion_mask)
    return {"nawm": cleaned["wm"], "nagm": cleaned["gm"]}
