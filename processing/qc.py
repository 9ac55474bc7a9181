"""Quality control of one exam: a pass / warn / fail verdict with reasons.

Plain functions on numbers and numpy arrays. :func:`assess` applies documented rules to
metrics the pipeline already has (SNR, lookup-table coverage, cord segmentation per slice,
template fit, protocol match, B1 correction); :func:`estimate_snr` measures the SNR of an
INV2 magnitude image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "RAYLEIGH_SD_FACTOR",
    "CordCoverage",
    "QcThresholds",
    "QcVerdict",
    "assess",
    "cord_coverage",
    "estimate_snr",
]

Verdict = Literal["pass", "warn", "fail"]

RAYLEIGH_SD_FACTOR = 0.655
"""SD of pure-noise magnitude (Rayleigh) over the Gaussian noise SD: sqrt(2 - pi/2)."""


@dataclass(frozen=True)
class QcThresholds:
    """Limits of the QC rules (defaults in brackets).

    Fail when: the cord is missing on more than ``max_missing_fraction_fail`` of the slices
    [0.5]; the protocol differs from the normative model's; SNR < ``snr_fail`` [8]; more than
    ``outside_lookup_fail`` of cord voxels fall outside the lookup table [0.20]; fewer than
    ``template_fit_fail`` of cord voxels have a valid model cell [0.5].

    Warn when: the cord is missing on some slices; the cord area of a found slice is outside
    [``area_min_mm2``, ``area_max_mm2``] [40, 160 mm^2, the adult cervical cord is about
    60-90 mm^2]; the cord centre jumps more than ``max_centre_shift_mm`` [3 mm] between
    slices; SNR < ``snr_warn`` [15]; more than ``outside_lookup_warn`` [0.02] outside the
    lookup table; template fit below ``template_fit_warn`` [0.9]; no B1 correction; SNR,
    lookup coverage, template fit or protocol match unknown.
    """

    snr_fail: float = 8.0
    snr_warn: float = 15.0
    outside_lookup_warn: float = 0.02
    outside_lookup_fail: float = 0.20
    max_missing_fraction_fail: float = 0.5
    area_min_mm2: float = 40.0
    area_max_mm2: float = 160.0
    max_centre_shift_mm: float = 3.0
    template_fit_warn: float = 0.9
    template_fit_fail: float = 0.5

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"QC threshold {name} must be a non-negative number")
        if self.snr_warn < self.snr_fail:
            raise ValueError("snr_warn must not be below snr_fail")
        if self.outside_lookup_fail < self.outside_lookup_warn:
            raise ValueError("outside_lookup_fail must not be below outside_lookup_warn")
        if self.template_fit_warn < self.template_fit_fail:
            raise ValueError("template_fit_warn must not be below template_fit_fail")
        if self.area_max_mm2 <= self.area_min_mm2:
            raise ValueError("area_max_mm2 must exceed area_min_mm2")


@dataclass(frozen=True)
class QcVerdict:
    """Outcome of :func:`assess`.

    Attributes
    ----------
    verdict : {"pass", "warn", "fail"}
        The worst outcome of all rules.
    reasons : tuple of str
        One sentence per rule that warned or failed, failures first, each prefixed with
        ``"fail: "`` or ``"warn: "``.
    metrics : dict
        The numbers the rules looked at (JSON-serialisable; ``None`` when unknown).
    """

    verdict: Verdict
    reasons: tuple[str, ...] = ()
    metrics: dict[str, float | int | bool | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in ("pass", "warn", "fail"):
            raise ValueError(f"verdict must be 'pass', 'warn' or 'fail', got {self.verdict!r}")
        if self.verdict != "pass" and not self.reasons:
            raise ValueError(f"a {self.verdict!r} verdict needs at least one reason")


def _ranges(numbers: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    parts: list[str] = []
    start = prev = None
    for n in [*numbers, None]:
        if start is not None and (n is None or n != prev + 1):
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if n is not None and start is None:
            start = n
        prev = n
    return ", ".join(parts)


@dataclass(frozen=True)
class CordCoverage:
    """On which slices the cord was found, per slab: what the exam's numbers rest on.

    Attributes
    ----------
    slices : int
        Slices of all slabs together.
    found : int
        Slices with a cord.
    missing : dict of int to tuple of int
        Slab number -> 1-based numbers of its slices without a cord (slabs with none left out).
    """

    slices: int
    found: int
    missing: dict[int, tuple[int, ...]]

    @property
    def missing_text(self) -> str:
        """The missing slices, e.g. ``"slab 1: slices 3, 7-9; slab 2: slice 12"``."""
        return "; ".join(
            f"slab {slab}: slice{'s' if len(numbers) > 1 else ''} {_ranges(numbers)}"
            for slab, numbers in sorted(self.missing.items())
        )

    @property
    def statement(self) -> str:
        """One sentence for readers, e.g. ``"cord found on 22 of 24 slices (not found: ...)"``."""
        if not self.missing:
            return f"cord found on all {self.slices} slices"
        return (
            f"cord found on {self.found} of {self.slices} slices (not found: {self.missing_text})"
        )

    def as_dict(self) -> dict[str, object]:
        """The ``coverage`` block of summary.json."""
        return {
            "slices": self.slices,
            "cord_slices_found": self.found,
            "missing_slices": {str(k): list(v) for k, v in sorted(self.missing.items())},
            "statement": self.statement,
        }


def cord_coverage(found_per_slab: Mapping[int, ArrayLike]) -> CordCoverage:
    """Summarise per-slab "cord found" flags.

    Parameters
    ----------
    found_per_slab : mapping of int to array_like of bool
        Slab number -> one flag per slice (in slice order).

    Returns
    -------
    CordCoverage

    Examples
    --------
    >>> cord_coverage({1: [True, False, False, True], 2: [True, True]}).statement
    'cord found on 4 of 6 slices (not found: slab 1: slices 2-3)'
    """
    slices = found = 0
    missing: dict[int, tuple[int, ...]] = {}
    for slab, flags in found_per_slab.items():
        flags = _per_slice(f"found flags of slab {slab}", flags, np.bool_)
        slices += flags.size
        found += int(np.count_nonzero(flags))
        numbers = tuple(int(i) + 1 for i in np.flatnonzero(~flags))
        if numbers:
            missing[int(slab)] = numbers
    return CordCoverage(slices=slices, found=found, missing=missing)


def _fraction(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if not np.isfinite(value) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a fraction within [0, 1], got {value!r}")
    return float(value)


def _per_slice(name: str, values: ArrayLike, dtype: type) -> NDArray:
    array = np.asarray(values, dtype=dtype)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array (one value per slice), got {array.shape}")
    return array


def assess(
    *,
    snr: float | None,
    outside_lookup_fraction: float | None,
    cord_area_mm2_per_slice: ArrayLike,
    cord_found_per_slice: ArrayLike,
    centre_shift_mm_per_slice: ArrayLike,
    template_fit: float | None,
    protocol_matches_model: bool | None,
    b1_corrected: bool,
    thresholds: QcThresholds | None = None,
    slab_per_slice: ArrayLike | None = None,
) -> QcVerdict:
    """Apply the QC rules of :class:`QcThresholds` to one exam.

    Parameters
    ----------
    snr : float or None
        SNR of the INV2 image (:func:`estimate_snr`); ``None`` if not measured.
    outside_lookup_fraction : float or None
        Fraction of cord voxels whose UNI value lies outside the lookup table.
    cord_area_mm2_per_slice : array_like of float
        Cord cross-section area per slice (mm^2); ignored on slices without a cord.
    cord_found_per_slice : array_like of bool
        Whether segmentation found a plausible cord on each slice.
    centre_shift_mm_per_slice : array_like of float
        In-plane shift (mm) of the cord centre from the previous slice; ``NaN`` where
        undefined. Length ``n_slices`` (first entry ``NaN``) or ``n_slices - 1``.
    template_fit : float or None
        Fraction of cord voxels with a valid normative model cell.
    protocol_matches_model : bool or None
        Whether the exam's protocol is the model's; ``None`` if no model was compared.
    b1_corrected : bool
        Whether T1 was corrected with a B1 map.
    thresholds : QcThresholds, optional
        Rule limits; the documented defaults when omitted.
    slab_per_slice : array_like of int, optional
        Slab number of every slice (slices of one slab consecutive, in order); with it the
        reasons name the slices without a cord ("slab 2: slices 5-6").

    Returns
    -------
    QcVerdict

    Raises
    ------
    ValueError
        If the per-slice arrays disagree in length or a fraction is outside [0, 1].

    Examples
    --------
    >>> v = assess(snr=30.0, outside_lookup_fraction=0.0, cord_area_mm2_per_slice=[80, 82],
    ...            cord_found_per_slice=[True, True], centre_shift_mm_per_slice=[0.4],
    ...            template_fit=1.0, protocol_matches_model=True, b1_corrected=False)
    >>> v.verdict, v.reasons
    ('warn', ('warn: T1 is not corrected for B1+ inhomogeneity (no B1 map)',))
    """
    limits = thresholds or QcThresholds()
    area = _per_slice("cord_area_mm2_per_slice", cord_area_mm2_per_slice, np.float64)
    found = _per_slice("cord_found_per_slice", cord_found_per_slice, np.bool_)
    shift = _per_slice("centre_shift_mm_per_slice", centre_shift_mm_per_slice, np.float64)
    n_slices = found.size
    if area.size != n_slices:
        raise ValueError(f"cord_area_mm2_per_slice has {area.size} values for {n_slices} slices")
    if shift.size not in (n_slices, max(n_slices - 1, 0)):
        raise ValueError(
            f"centre_shift_mm_per_slice has {shift.size} values for {n_slices} slices "
            f"(expected {n_slices} or {n_slices - 1})"
        )
    if snr is not None and (np.isnan(snr) or snr < 0):
        raise ValueError(f"snr must be a non-negative number, got {snr!r}")
    outside = _fraction("outside_lookup_fraction", outside_lookup_fraction)
    fit = _fraction("template_fit", template_fit)

    fails: list[str] = []
    warns: list[str] = []
    missing = int(np.count_nonzero(~found))
    missing_fraction = missing / n_slices if n_slices else 1.0
    which = ""
    if slab_per_slice is not None:
        slab_of = _per_slice("slab_per_slice", slab_per_slice, np.int64)
        if slab_of.size != n_slices:
            raise ValueError(f"slab_per_slice has {slab_of.size} values for {n_slices} slices")
        coverage = cord_coverage({int(s): found[slab_of == s] for s in np.unique(slab_of)})
        which = f" ({coverage.missing_text})" if coverage.missing else ""
    if n_slices == 0:
        fails.append("no slices to assess")
    elif missing_fraction > limits.max_missing_fraction_fail:
        fails.append(f"no cord found on {missing} of {n_slices} slices{which}")
    elif missing:
        warns.append(f"no cord found on {missing} of {n_slices} slices{which}")

    found_area = area[found]
    bad_area = (found_area < limits.area_min_mm2) | (found_area > limits.area_max_mm2)
    bad_area |= ~np.isfinite(found_area)
    if np.any(bad_area):
        warns.append(
            f"cord area outside {limits.area_min_mm2:g}-{limits.area_max_mm2:g} mm^2 on "
            f"{int(np.count_nonzero(bad_area))} slice(s) "
            f"(range {np.nanmin(found_area):.0f}-{np.nanmax(found_area):.0f} mm^2)"
        )
    finite_shift = shift[np.isfinite(shift)]
    max_shift = float(finite_shift.max()) if finite_shift.size else None
    jumps = int(np.count_nonzero(finite_shift > limits.max_centre_shift_mm))
    if jumps:
        warns.append(
            f"cord centre jumps more than {limits.max_centre_shift_mm:g} mm between slices "
            f"{jumps} time(s) (largest {max_shift:.1f} mm)"
        )

    if snr is None:
        warns.append("SNR was not measured")
    elif snr < limits.snr_fail:
        fails.append(f"SNR {snr:.1f} is below {limits.snr_fail:g}")
    elif snr < limits.snr_warn:
        warns.append(f"SNR {snr:.1f} is below {limits.snr_warn:g}")

    if outside is None:
        warns.append("fraction of voxels outside the T1 lookup table is unknown")
    elif outside > limits.outside_lookup_fail:
        fails.append(f"{100 * outside:.1f} % of cord voxels are outside the T1 lookup table")
    elif outside > limits.outside_lookup_warn:
        warns.append(f"{100 * outside:.1f} % of cord voxels are outside the T1 lookup table")

    if fit is None:
        warns.append("template fit is unknown")
    elif fit < limits.template_fit_fail:
        fails.append(f"only {100 * fit:.0f} % of cord voxels have a normative model value")
    elif fit < limits.template_fit_warn:
        warns.append(f"only {100 * fit:.0f} % of cord voxels have a normative model value")

    if protocol_matches_model is False:
        fails.append("the exam's MP2RAGE protocol differs from the normative model's")
    elif protocol_matches_model is None:
        warns.append("the exam's protocol was not compared with a normative model")

    if not b1_corrected:
        warns.append("T1 is not corrected for B1+ inhomogeneity (no B1 map)")

    metrics: dict[str, float | int | bool | None] = {
        "snr": None if snr is None else float(snr),
        "outside_lookup_percent": None if outside is None else 100 * outside,
        "slices": n_slices,
        "slices_without_cord": missing,
        "slices_area_out_of_range": int(np.count_nonzero(bad_area)),
        "min_cord_area_mm2": float(np.nanmin(found_area)) if found_area.size else None,
        "max_cord_area_mm2": float(np.nanmax(found_area)) if found_area.size else None,
        "max_centre_shift_mm": max_shift,
        "template_fit_percent": None if fit is None else 100 * fit,
        "protocol_matches_model": protocol_matches_model,
        "b1_corrected": bool(b1_corrected),
    }
    verdict: Verdict = "fail" if fails else "warn" if warns else "pass"
    reasons = tuple(f"fail: {r}" for r in fails) + tuple(f"warn: {r}" for r in warns)
    return QcVerdict(verdict=verdict, reasons=reasons, metrics=metrics)


def _dilate_faces(mask: NDArray[np.bool_], iterations: int) -> NDArray[np.bool_]:
    """``mask`` grown ``iterations`` times by its face neighbours (nothing beyond the edges).

    The same as ``scipy.ndimage.binary_dilation(mask, iterations=iterations)`` (its default
    structure), with shifted array views: several times faster on whole volumes.
    """
    grown = mask.copy()
    for _ in range(iterations):
        previous = grown.copy()
        for axis in range(mask.ndim):
            lower = [slice(None)] * mask.ndim
            upper = [slice(None)] * mask.ndim
            lower[axis], upper[axis] = slice(None, -1), slice(1, None)
            grown[tuple(lower)] |= previous[tuple(upper)]
            grown[tuple(upper)] |= previous[tuple(lower)]
    return grown


def estimate_snr(
    inv2: ArrayLike,
    foreground_mask: ArrayLike,
    *,
    background_mask: ArrayLike | None = None,
    margin_vox: int = 2,
    min_background_voxels: int = 50,
) -> float:
    """SNR of a magnitude image: foreground mean / Gaussian noise SD.

    The noise SD is the background (air) SD divided by 0.655, because pure noise in a
    magnitude image is Rayleigh distributed with SD ``0.655 * sigma``.

    Parameters
    ----------
    inv2 : array_like
        Magnitude image (e.g. the INV2 series).
    foreground_mask : array_like of bool
        Signal region whose mean is the signal (e.g. the cord, or the whole neck).
    background_mask : array_like of bool, optional
        Air voxels. When omitted: every voxel farther than ``margin_vox`` from the foreground
        (so ``foreground_mask`` must then cover all tissue, not only the cord).
    margin_vox : int
        Dilation of the foreground before taking the complement as background.
    min_background_voxels : int
        Fewest background voxels accepted.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If shapes differ, a mask is empty or too small, or the background has no noise.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> noise = 5.0 * (rng.standard_normal((2, 64, 64)) + 1j * rng.standard_normal((2, 64, 64)))
    >>> fg = np.zeros((2, 64, 64), bool); fg[:, 16:48, 16:48] = True
    >>> image = np.abs(np.where(fg, 100.0, 0.0) + noise)
    >>> bool(17 < estimate_snr(image, fg) < 23)
    True
    """
    image = np.asarray(inv2, dtype=np.float64)
    fg = np.asarray(foreground_mask)
    if fg.shape != image.shape or fg.dtype != np.bool_:
        raise ValueError(
            f"foreground_mask must be boolean with the image's shape {image.shape}, "
            f"got {fg.dtype} {fg.shape}"
        )
    if background_mask is None:
        if margin_vox < 0:
            raise ValueError(f"margin_vox must be >= 0, got {margin_vox!r}")
        grown = _dilate_faces(fg, margin_vox)
        bg = ~grown
    else:
        bg = np.asarray(background_mask)
        if bg.shape != image.shape or bg.dtype != np.bool_:
            raise ValueError(
                f"background_mask must be boolean with the image's shape {image.shape}"
            )
        if np.any(bg & fg):
            raise ValueError("background_mask and foreground_mask overlap")
    signal = image[fg & np.isfinite(image)]
    noise = image[bg & np.isfinite(image)]
    if signal.size == 0:
        raise ValueError("foreground_mask selects no finite voxel")
    if noise.size < min_background_voxels:
        raise ValueError(
            f"background has {noise.size} voxels, at least {min_background_voxels} are needed"
        )
    noise_sd = float(noise.std(ddof=1)) / RAYLEIGH_SD_FACTOR
    if noise_sd <= 0:
        raise ValueError("background has no noise (constant values): cannot estimate SNR")
    return float(signal.mean()) / noise_sd
