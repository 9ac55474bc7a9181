"""Normative T1 model in template space and voxel-wise Z-scores.

Plain functions on numpy arrays: no file, network or database access (``service/`` stores
models and their version metadata).

A model is built from N healthy controls, each given as a T1 map on the template grid
``(z, u, v)`` with a mask of the cells it covers. Per cell it holds

* ``mean_ms``: the local mean of the controls' T1, computed by *normalised convolution*: the
  per-cell sums of T1 and of the observation counts are smoothed with the same Gaussian
  kernel and divided, so cells nobody covers add nothing and do not pull neighbours to zero;
* ``sd_ms``: the spread of one control's T1 around that mean (weighted variance over the same
  neighbourhood, unbiased for reliability weights), shrunk towards the pooled SD of the cell's
  tissue class with ``n0`` pseudo-observations (empirical Bayes)::

      sd^2 = (n * s^2 + n0 * pooled^2) / (n + n0)

  and, by default, widened by the standard error of the mean so that a new subject's Z-score
  has unit variance (``predictive=True``);
* ``count``: how many controls cover the cell. Cells with fewer than ``min_count`` controls
  are invalid (``NaN`` mean and SD).

Every statistic is a function of linear per-cell sums (counts, sums, sums of squares and
their smoothed versions), so leave-one-out models are the totals minus one control's
contribution: :func:`loo_models` costs about twice a single build, not N builds.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.ndimage import correlate1d

__all__ = [
    "ALL_TISSUE",
    "NormativeModel",
    "build_normative_model",
    "loo_models",
    "with_voxel_noise",
    "z_scores",
]

ALL_TISSUE = "all"
"""Key of the pooled SD over every cell (used for cells outside all tissue maps)."""

_KERNEL_TRUNCATE_SD = 3.0

Sigma = float | tuple[float, float, float]


@dataclass(frozen=True)
class NormativeModel:
    """Per-cell normative T1 statistics on the template grid ``(z, u, v)``.

    Parameters
    ----------
    mean_ms : ndarray of float
        Mean T1 (ms) per cell; ``NaN`` where the model is invalid.
    sd_ms : ndarray of float
        SD of T1 (ms) per cell, positive where valid, ``NaN`` where the model is invalid.
    count : ndarray of int
        Number of controls covering each cell (before smoothing).
    tissue_sd_ms : dict of str to float
        Pooled SD (ms) per tissue class, the shrinkage targets; key ``"all"`` pools every cell.

    Raises
    ------
    ValueError
        If the arrays differ in shape, are not 3-D, or hold invalid values.
    """

    mean_ms: NDArray[np.float64]
    sd_ms: NDArray[np.float64]
    count: NDArray[np.int64]
    tissue_sd_ms: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean_ms, dtype=np.float64)
        sd = np.asarray(self.sd_ms, dtype=np.float64)
        count = np.asarray(self.count)
        if mean.ndim != 3:
            raise ValueError(f"mean_ms must be a 3-D (z, u, v) array, got shape {mean.shape}")
        if sd.shape != mean.shape or count.shape != mean.shape:
            raise ValueError(
                f"mean_ms, sd_ms and count must share one shape, got {mean.shape}, "
                f"{sd.shape} and {count.shape}"
            )
        if not np.issubdtype(count.dtype, np.integer) or np.any(count < 0):
            raise ValueError("count must hold non-negative integers")
        if not np.array_equal(np.isfinite(mean), np.isfinite(sd)):
            raise ValueError("mean_ms and sd_ms must be valid (finite) in the same cells")
        if np.any(sd[np.isfinite(sd)] <= 0):
            raise ValueError("sd_ms must be positive wherever the model is valid")
        for tissue, value in self.tissue_sd_ms.items():
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"tissue_sd_ms[{tissue!r}] must be positive, got {value!r}")
        object.__setattr__(self, "mean_ms", _read_only(mean))
        object.__setattr__(self, "sd_ms", _read_only(sd))
        object.__setattr__(self, "count", _read_only(count.astype(np.int64)))
        object.__setattr__(
            self, "tissue_sd_ms", {k: float(v) for k, v in self.tissue_sd_ms.items()}
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the template grid ``(z, u, v)``."""
        z, u, v = self.mean_ms.shape
        return z, u, v

    @property
    def valid(self) -> NDArray[np.bool_]:
        """Cells where the model has a mean and an SD."""
        return np.isfinite(self.mean_ms)


def _read_only(array: NDArray) -> NDArray:
    out = np.array(array, copy=True)
    out.flags.writeable = False
    return out


@dataclass
class _Sums:
    """Linear per-cell sums; every model statistic is a function of them."""

    n: NDArray[np.float64]  # controls per cell
    s1: NDArray[np.float64]  # sum of (T1 - offset)
    s2: NDArray[np.float64]  # sum of (T1 - offset)^2
    w1: NDArray[np.float64]  # kernel * n
    ws1: NDArray[np.float64]  # kernel * s1
    ws2: NDArray[np.float64]  # kernel * s2
    w2: NDArray[np.float64]  # kernel^2 * n (for the effective sample size)

    def __add__(self, other: _Sums) -> _Sums:
        return _Sums(*(a + b for a, b in zip(self._parts(), other._parts(), strict=True)))

    def __sub__(self, other: _Sums) -> _Sums:
        return _Sums(*(a - b for a, b in zip(self._parts(), other._parts(), strict=True)))

    def _parts(self) -> tuple[NDArray[np.float64], ...]:
        return (self.n, self.s1, self.s2, self.w1, self.ws1, self.ws2, self.w2)


def _kernels(sigma_vox: tuple[float, float, float]) -> list[NDArray[np.float64]]:
    """One normalised 1-D Gaussian kernel per axis (``[1.0]`` for a zero sigma)."""
    kernels = []
    for sigma in sigma_vox:
        if sigma == 0:
            kernels.append(np.ones(1))
            continue
        radius = max(1, int(np.ceil(_KERNEL_TRUNCATE_SD * sigma)))
        x = np.arange(-radius, radius + 1, dtype=np.float64)
        k = np.exp(-0.5 * (x / sigma) ** 2)
        kernels.append(k / k.sum())
    return kernels


def _smooth(values: NDArray[np.float64], kernels: list[NDArray[np.float64]]) -> NDArray:
    """Separable convolution with zero padding (cells outside the grid contribute nothing)."""
    out = values
    for axis, kernel in enumerate(kernels):
        if kernel.size > 1:
            out = correlate1d(out, kernel, axis=axis, mode="constant", cval=0.0)
    return out


def _control_sums(
    t1_ms: NDArray[np.float64],
    valid: NDArray[np.bool_],
    offset_ms: float,
    kernels: list[NDArray[np.float64]],
) -> _Sums:
    n = valid.astype(np.float64)
    x = np.where(valid, t1_ms - offset_ms, 0.0)
    squared = [k * k for k in kernels]
    return _Sums(
        n=n,
        s1=x,
        s2=x * x,
        w1=_smooth(n, kernels),
        ws1=_smooth(x, kernels),
        ws2=_smooth(x * x, kernels),
        w2=_smooth(n, squared),
    )


@dataclass(frozen=True)
class _Controls:
    """Validated control data ready for summation."""

    t1_ms: list[NDArray[np.float64]]
    valid: list[NDArray[np.bool_]]
    tissue_index: NDArray[np.int64]  # per cell: position in tissue_names
    tissue_names: tuple[str, ...]
    offset_ms: float
    kernels: list[NDArray[np.float64]]

    def sums(self, i: int) -> _Sums:
        return _control_sums(self.t1_ms[i], self.valid[i], self.offset_ms, self.kernels)

    def total(self) -> _Sums:
        total = self.sums(0)
        for i in range(1, len(self.t1_ms)):
            total = total + self.sums(i)
        return total


def _sigma_triplet(smoothing_sigma_vox: Sigma) -> tuple[float, float, float]:
    values = np.broadcast_to(np.asarray(smoothing_sigma_vox, dtype=np.float64), (3,))
    if values.ndim != 1 or not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(
            "smoothing_sigma_vox must be a non-negative number or three of them (z, u, v), "
            f"got {smoothing_sigma_vox!r}"
        )
    return float(values[0]), float(values[1]), float(values[2])


def _prepare(
    t1_template: Sequence[ArrayLike],
    masks: Sequence[ArrayLike],
    tissue_maps: Mapping[str, ArrayLike] | None,
    smoothing_sigma_vox: Sigma,
    shrinkage_n0: float,
    min_count: int,
    *,
    min_controls: int,
) -> _Controls:
    if isinstance(min_count, bool) or int(min_count) != min_count or min_count < 2:
        raise ValueError(f"min_count must be an integer >= 2, got {min_count!r}")
    if not np.isfinite(shrinkage_n0) or shrinkage_n0 < 0:
        raise ValueError(f"shrinkage_n0 must be a non-negative number, got {shrinkage_n0!r}")
    sigma = _sigma_triplet(smoothing_sigma_vox)
    if len(t1_template) != len(masks):
        raise ValueError(
            f"got {len(t1_template)} T1 maps but {len(masks)} masks: one mask per control"
        )
    if len(t1_template) < min_controls:
        raise ValueError(
            f"a normative model needs at least {min_controls} controls, got {len(t1_template)}"
        )
    t1_list: list[NDArray[np.float64]] = []
    valid_list: list[NDArray[np.bool_]] = []
    shape: tuple[int, ...] | None = None
    for i, (t1_raw, mask_raw) in enumerate(zip(t1_template, masks, strict=True)):
        t1 = np.asarray(t1_raw, dtype=np.float64)
        mask = np.asarray(mask_raw)
        if t1.ndim != 3:
            raise ValueError(f"control {i}: T1 map must be 3-D (z, u, v), got shape {t1.shape}")
        if shape is None:
            shape = t1.shape
        if t1.shape != shape or mask.shape != shape:
            raise ValueError(
                f"control {i}: T1 map {t1.shape} and mask {mask.shape} must match the "
                f"template grid {shape}"
            )
        if mask.dtype != np.bool_:
            raise ValueError(f"control {i}: mask must be boolean, got dtype {mask.dtype}")
        valid = mask & np.isfinite(t1)
        if np.any(t1[valid] <= 0):
            raise ValueError(f"control {i}: T1 must be positive (ms) inside the mask")
        t1_list.append(t1)
        valid_list.append(valid)
    assert shape is not None
    observed = np.concatenate([t1[v] for t1, v in zip(t1_list, valid_list, strict=True)])
    if observed.size == 0:
        raise ValueError("the controls' masks cover no cell with a finite T1")
    tissue_index, tissue_names = _tissue_index(tissue_maps, shape)
    return _Controls(
        t1_ms=t1_list,
        valid=valid_list,
        tissue_index=tissue_index,
        tissue_names=tissue_names,
        offset_ms=float(np.median(observed)),
        kernels=_kernels(sigma),
    )


def _tissue_index(
    tissue_maps: Mapping[str, ArrayLike] | None, shape: tuple[int, ...]
) -> tuple[NDArray[np.int64], tuple[str, ...]]:
    """Index of each cell's tissue class; 0 (``"all"``) for cells outside every map."""
    names = [ALL_TISSUE]
    index = np.zeros(shape, dtype=np.int64)
    for name, raw in (tissue_maps or {}).items():
        if name == ALL_TISSUE:
            raise ValueError(f"tissue name {ALL_TISSUE!r} is reserved for the pooled SD")
        tissue = np.asarray(raw)
        if tissue.shape != shape or tissue.dtype != np.bool_:
            raise ValueError(
                f"tissue map {name!r} must be a boolean array of the template shape {shape}, "
                f"got {tissue.dtype} {tissue.shape}"
            )
        if np.any(index[tissue] != 0):
            raise ValueError(f"tissue map {name!r} overlaps another tissue map")
        names.append(name)
        index[tissue] = len(names) - 1
    return index, tuple(names)


def _pooled_sd(
    sums: _Sums, tissue_index: NDArray[np.int64], tissue_names: tuple[str, ...]
) -> dict[str, float]:
    """Pooled within-cell SD per tissue class (raw, unsmoothed cells with >= 2 controls)."""
    usable = sums.n >= 2
    n_safe = np.where(usable, sums.n, 1.0)
    ss = np.where(usable, np.maximum(sums.s2 - sums.s1**2 / n_safe, 0.0), 0.0)
    dof = np.where(usable, sums.n - 1.0, 0.0)
    total_dof = dof.sum()
    if total_dof <= 0 or ss.sum() <= 0:
        raise ValueError("cannot pool an SD: no cell has two controls with different T1 values")
    pooled = {ALL_TISSUE: float(np.sqrt(ss.sum() / total_dof))}
    for i, name in enumerate(tissue_names[1:], start=1):
        in_class = tissue_index == i
        class_dof = dof[in_class].sum()
        class_ss = ss[in_class].sum()
        pooled[name] = (
            float(np.sqrt(class_ss / class_dof))
            if class_dof > 0 and class_ss > 0
            else pooled[ALL_TISSUE]
        )
    return pooled


def _finish(
    sums: _Sums,
    controls: _Controls,
    *,
    shrinkage_n0: float,
    min_count: int,
    predictive: bool,
) -> NormativeModel:
    tissue_sd = _pooled_sd(sums, controls.tissue_index, controls.tissue_names)
    pooled_sd = np.array([tissue_sd[name] for name in controls.tissue_names])
    pooled_var = pooled_sd[controls.tissue_index] ** 2
    count = np.rint(sums.n).astype(np.int64)
    valid = (count >= min_count) & (sums.w1 > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        w1 = np.where(valid, sums.w1, 1.0)
        mean_offset = sums.ws1 / w1
        # Unbiased weighted variance for reliability weights: V1 - V2 / V1 in the denominator.
        dof = w1 - sums.w2 / w1
        local_ss = np.maximum(sums.ws2 - sums.ws1**2 / w1, 0.0)
        local_var = np.where(dof > 0, local_ss / np.where(dof > 0, dof, 1.0), 0.0)
        var = (count * local_var + shrinkage_n0 * pooled_var) / np.maximum(
            count + shrinkage_n0, 1e-12
        )
        if predictive:
            # Variance of a new observation around an estimated mean: sigma^2 (1 + V2 / V1^2).
            var = var * (1.0 + sums.w2 / w1**2)
    valid &= var > 0
    mean_ms = np.where(valid, mean_offset + controls.offset_ms, np.nan)
    sd_ms = np.where(valid, np.sqrt(np.where(valid, var, 1.0)), np.nan)
    return NormativeModel(mean_ms=mean_ms, sd_ms=sd_ms, count=count, tissue_sd_ms=tissue_sd)


def build_normative_model(
    t1_template: Sequence[ArrayLike],
    masks: Sequence[ArrayLike],
    *,
    tissue_maps: Mapping[str, ArrayLike] | None = None,
    smoothing_sigma_vox: Sigma = 1.0,
    shrinkage_n0: float = 5.0,
    min_count: int = 3,
    predictive: bool = True,
) -> NormativeModel:
    """Build a normative T1 model from healthy controls in template space.

    Parameters
    ----------
    t1_template : sequence of ndarray
        One T1 map (ms) per control on the template grid ``(z, u, v)``; ``NaN`` cells are
        ignored.
    masks : sequence of ndarray of bool
        One mask per control: the cells it covers (same shape as its T1 map).
    tissue_maps : mapping of str to ndarray of bool, optional
        Non-overlapping tissue classes on the template grid (e.g. ``"wm"``, ``"gm"``). A cell's
        SD shrinks towards the pooled SD of its class; cells outside every class (or all cells
        when omitted) shrink towards the SD pooled over the whole grid (key ``"all"``).
    smoothing_sigma_vox : float or (float, float, float)
        Gaussian sigma in template cells (one value, or one per axis ``z, u, v``); 0 disables
        smoothing.
    shrinkage_n0 : float
        Pseudo-observations of the pooled tissue SD; 0 disables shrinkage.
    min_count : int
        Cells covered by fewer controls are invalid (``NaN``); at least 2, and the model needs
        at least ``min_count`` controls.
    predictive : bool
        Widen the SD by the standard error of the mean, ``sd * sqrt(1 + sum(w^2)/sum(w)^2)``,
        so Z-scores of a *new* subject have unit variance. With the default smoothing the
        factor is below 1.01; without smoothing it is ``sqrt(1 + 1/n)``.

    Returns
    -------
    NormativeModel

    Raises
    ------
    ValueError
        If there are fewer than ``min_count`` controls, shapes differ, masks are not boolean,
        T1 is not positive inside a mask, or a parameter is out of range.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> controls = [1200 + 50 * rng.standard_normal((2, 4, 4)) for _ in range(12)]
    >>> masks = [np.ones((2, 4, 4), bool)] * 12
    >>> model = build_normative_model(controls, masks)
    >>> bool(abs(np.nanmean(model.mean_ms) - 1200) < 30), int(model.count.max())
    (True, 12)
    """
    controls = _prepare(
        t1_template,
        masks,
        tissue_maps,
        smoothing_sigma_vox,
        shrinkage_n0,
        min_count,
        min_controls=min_count,
    )
    return _finish(
        controls.total(),
        controls,
        shrinkage_n0=shrinkage_n0,
        min_count=min_count,
        predictive=predictive,
    )


def loo_models(
    t1_template: Sequence[ArrayLike],
    masks: Sequence[ArrayLike],
    *,
    tissue_maps: Mapping[str, ArrayLike] | None = None,
    smoothing_sigma_vox: Sigma = 1.0,
    shrinkage_n0: float = 5.0,
    min_count: int = 3,
    predictive: bool = True,
) -> Iterator[NormativeModel]:
    """Leave-one-out models: the i-th model is built from every control except control i.

    Each model equals ``build_normative_model`` on the remaining controls (same parameters),
    but is computed as the totals minus control i's sums, so the cost is about two builds.

    Parameters
    ----------
    t1_template, masks, tissue_maps, smoothing_sigma_vox, shrinkage_n0, min_count, predictive
        As for :func:`build_normative_model`; ``min_count + 1`` controls are needed.

    Yields
    ------
    NormativeModel
        The model without control ``i``, for ``i = 0 .. N-1`` in order.

    Raises
    ------
    ValueError
        As for :func:`build_normative_model`.
    """
    controls = _prepare(
        t1_template,
        masks,
        tissue_maps,
        smoothing_sigma_vox,
        shrinkage_n0,
        min_count,
        min_controls=min_count + 1,
    )
    total = controls.total()
    for i in range(len(controls.t1_ms)):
        yield _finish(
            total - controls.sums(i),
            controls,
            shrinkage_n0=shrinkage_n0,
            min_count=min_count,
            predictive=predictive,
        )


def z_scores(t1_ms: ArrayLike, mean_ms: ArrayLike, sd_ms: ArrayLike) -> NDArray[np.float64]:
    """Voxel-wise Z-scores ``(T1 - mean) / SD``.

    Use on the exam grid after sampling the model's ``mean_ms`` and ``sd_ms`` there (or
    directly on the template grid).

    Parameters
    ----------
    t1_ms : array_like
        T1 (ms) per voxel.
    mean_ms, sd_ms : array_like
        Normative mean and SD (ms) on the same grid; ``NaN`` where the model is invalid.

    Returns
    -------
    ndarray of float
        Z per voxel; ``NaN`` wherever T1, the mean or the SD is not finite.

    Raises
    ------
    ValueError
        If the shapes differ or a finite SD is not positive.

    Examples
    --------
    >>> z_scores([1300.0, 1100.0, np.nan], [1200.0, 1200.0, 1200.0], [50.0, 50.0, 50.0])
    array([ 2., -2., nan])
    """
    t1 = np.asarray(t1_ms, dtype=np.float64)
    mean = np.asarray(mean_ms, dtype=np.float64)
    sd = np.asarray(sd_ms, dtype=np.float64)
    if not t1.shape == mean.shape == sd.shape:
        raise ValueError(
            f"t1_ms {t1.shape}, mean_ms {mean.shape} and sd_ms {sd.shape} must share one shape"
        )
    finite_sd = np.isfinite(sd)
    if np.any(finite_sd & (sd <= 0)):
        raise ValueError("sd_ms must be positive wherever it is finite")
    ok = np.isfinite(t1) & np.isfinite(mean) & finite_sd
    # whole arrays at once (faster than gathering the valid voxels), invalid ones blanked
    out = np.empty(t1.shape)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        np.subtract(t1, mean, out=out)
        np.divide(out, sd, out=out)
    out[~ok] = np.nan
    return out


def with_voxel_noise(
    model: NormativeModel,
    within_ss: Sequence[NDArray],
    within_dof: Sequence[NDArray],
    *,
    smoothing_sigma_vox: Sigma = 1.0,
) -> NormativeModel:
    """Widen a model built from template-cell means to predict single voxels.

    A template cell averages several voxels of each control, so the spread of the cell
    means across controls misses most of the voxel-level measurement noise that a patient's
    single voxel carries. This adds the pooled within-cell variance of the controls
    (sum of squared deviations over degrees of freedom, smoothed like the model) to the
    model's variance: ``sd^2 <- sd^2 + within``.

    Parameters
    ----------
    model : NormativeModel
        Built from per-control cell means.
    within_ss : sequence of ndarray
        Per control and cell, the sum of squared deviations of its voxels from the cell mean.
    within_dof : sequence of ndarray
        Per control and cell, voxels minus one (0 where fewer than two voxels).
    smoothing_sigma_vox : float or tuple
        Gaussian sigma (template cells) for pooling neighbouring cells.

    Returns
    -------
    NormativeModel
        Same mean and count; wider SD where the controls had within-cell variance.

    Examples
    --------
    >>> m = NormativeModel(np.full((1, 2, 2), 1200.0), np.full((1, 2, 2), 30.0),
    ...                    np.full((1, 2, 2), 5))
    >>> ss = [np.full((1, 2, 2), 4 * 40.0**2)] * 3
    >>> dof = [np.full((1, 2, 2), 4.0)] * 3
    >>> float(with_voxel_noise(m, ss, dof, smoothing_sigma_vox=0).sd_ms[0, 0, 0])
    50.0
    """
    if len(within_ss) != len(within_dof) or not within_ss:
        raise ValueError(
            "within_ss and within_dof must list the same, non-zero number of controls"
        )
    shape = model.shape
    for name, arrays in (("within_ss", within_ss), ("within_dof", within_dof)):
        for array in arrays:
            if np.shape(array) != shape:
                raise ValueError(f"{name} arrays must have the model's shape {shape}")
    ss = np.sum([np.nan_to_num(np.asarray(a, dtype=np.float64)) for a in within_ss], axis=0)
    dof = np.sum([np.nan_to_num(np.asarray(a, dtype=np.float64)) for a in within_dof], axis=0)
    if np.any(ss < 0) or np.any(dof < 0):
        raise ValueError("within-cell sums of squares and degrees of freedom must be >= 0")
    kernels = _kernels(_sigma_triplet(smoothing_sigma_vox))
    ss_s, dof_s = _smooth(ss, kernels), _smooth(dof, kernels)
    with np.errstate(invalid="ignore", divide="ignore"):
        within = np.where(dof_s > 0.5, ss_s / dof_s, 0.0)
    sd = np.sqrt(np.asarray(model.sd_ms, dtype=np.float64) ** 2 + within)
    return NormativeModel(
        mean_ms=np.asarray(model.mean_ms),
        sd_ms=sd,
        count=np.asarray(model.count),
        tissue_sd_ms=dict(model.tissue_sd_ms),
    )
