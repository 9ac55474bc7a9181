"""Do the series of one MP2RAGE acquisition belong together? Is the scanner's T1 map usable?

INV1, INV2, UNI and the scanner T1 map of one slab come from one acquisition, so they must
agree on what that acquisition was:

- **RepetitionTime** (TR_MP2RAGE, the time between inversions; Siemens writes it into every
  series of the acquisition): equal in every series that carries it, within
  :data:`TIMING_RTOL`.
- **InversionTime**: INV1 carries TI1, INV2 carries TI2, and TI1 < TI2 (otherwise the two
  were swapped or mislabelled). UNI and the T1 map are derived from both; when they carry an
  InversionTime it must be TI1 or TI2 (within :data:`TIMING_RTOL`).
- **FlipAngle**: INV1 carries the first flip angle, INV2 the second (they may differ). UNI
  and the T1 map, when they carry one, must carry one of the two (within
  :data:`FLIP_ATOL_DEG`).
- UNI and the T1 map are compared (InversionTime, FlipAngle) only when INV1 and INV2 both
  carry the value: without one of them, the value it would have carried is unknown (a
  derived series carrying the missing INV1's flip angle is not a mismatch with INV2's).
- **Geometry**: every series on the same grid (matrix, pixel spacing, slice spacing,
  orientation, position, frame of reference); see :func:`grid_differences` for the
  tolerances. Series are paired to a slab by grid, so a series of a slab that is off the grid
  is found as a series that pairs with no slab.

A value no series carries is not a mismatch (the protocol check says what is missing). A
mismatch names the series (component, SeriesNumber, SeriesDescription: never patient data),
the tag and both values.

A scanner T1 map is only used when it is plausible (:func:`scanner_t1_problem`): finite
values, some positive, and a foreground median within :data:`SCANNER_T1_MEDIAN_RANGE_MS`.

Import rules: as the rest of :mod:`service.inputs` (volumes and headers only; no job store).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from service.inputs.protocol import header_number
from service.inputs.volumes import SeriesVolume

__all__ = [
    "FLIP_ATOL_DEG",
    "GRID_ORIENTATION_TOL",
    "GRID_POSITION_TOL_MM",
    "GRID_SPACING_RTOL",
    "SCANNER_T1_MEDIAN_RANGE_MS",
    "SLAB_COMPONENTS",
    "TIMING_RTOL",
    "InconsistentSlabError",
    "check_slab",
    "grid_differences",
    "header_mismatches",
    "missing_series_text",
    "scanner_t1_problem",
    "series_label",
]

#: Relative tolerance on RepetitionTime and InversionTime (ms) between series of one
#: acquisition: headers round to a few digits; two real protocols differ by far more.
TIMING_RTOL = 0.01
#: Absolute tolerance on FlipAngle (deg) between series of one acquisition.
FLIP_ATOL_DEG = 0.1
#: Largest distance (mm) between the first voxel centres of two series on "the same grid"
#: (the tolerance :func:`service.inputs.volumes.same_grid` pairs series with).
GRID_POSITION_TOL_MM = 0.05
#: Largest difference of any direction cosine between two series on the same grid.
GRID_ORIENTATION_TOL = 1e-3
#: Relative tolerance on pixel and slice spacing between two series on the same grid.
GRID_SPACING_RTOL = 1e-3
#: A scanner T1 map whose median (ms) in the slab's foreground lies outside this range is not
#: a T1 map of tissue (cord ~1.2 s, CSF ~4 s at 7 T; a scaling error is off by 10x or more).
SCANNER_T1_MEDIAN_RANGE_MS = (300.0, 5000.0)
#: The series of one acquisition, in the order they are named.
SLAB_COMPONENTS = ("inv1", "inv2", "uni", "t1map")

_NAMES = {"inv1": "INV1", "inv2": "INV2", "uni": "UNI", "t1map": "T1 map"}


class InconsistentSlabError(ValueError):
    """The series of one slab disagree; the message names the series, the tag and values."""


def series_label(volume: SeriesVolume) -> str:
    """How a message names a series: component, SeriesNumber and SeriesDescription.

    Examples
    --------
    >>> from pydicom.dataset import Dataset
    >>> from dicom_node.components import Component
    >>> ds = Dataset()
    >>> ds.SeriesNumber, ds.SeriesDescription = 5, "mp2_INV2"
    >>> v = SeriesVolume("1.2", Component.INV2, np.zeros((1, 1, 1)), np.eye(4), [ds])
    >>> series_label(v)
    "INV2 series 5 ('mp2_INV2')"
    """
    ds = volume.datasets[0] if volume.datasets else None
    number = ds.get("SeriesNumber") if ds is not None else None
    description = str(ds.get("SeriesDescription", "") or "") if ds is not None else ""
    name = _NAMES.get(str(volume.component).lower(), str(volume.component))
    label = f"{name} series {number if number not in (None, '') else '(no number)'}"
    return label + (f" ({description!r})" if description else "")


def _close(a: float, b: float, rtol: float) -> bool:
    return abs(a - b) <= rtol * max(abs(a), abs(b))


def _timing(volume: SeriesVolume, keyword: str) -> float | None:
    ds = volume.datasets[0] if volume.datasets else None
    value = header_number(ds, keyword)
    if value is None and keyword == "InversionTime":
        value = header_number(ds, "InversionTimes")
    return value


def header_mismatches(series: Mapping[str, SeriesVolume | None]) -> list[str]:
    """Where the headers of one acquisition's series disagree (empty when they agree).

    Parameters
    ----------
    series : mapping
        ``"inv1"``, ``"inv2"``, ``"uni"``, ``"t1map"`` -> the slab's series (absent or
        ``None`` when the slab has none).

    Returns
    -------
    list of str
        One sentence per disagreement, naming the tag, the series and both values.
    """
    present = {k: v for k in SLAB_COMPONENTS if (v := series.get(k)) is not None}
    problems: list[str] = []
    # RepetitionTime: the value most series carry is the acquisition's; the others deviate.
    trs = {k: tr for k, v in present.items() if (tr := _timing(v, "RepetitionTime")) is not None}
    if trs:
        groups: list[list[str]] = []
        for key, value in trs.items():
            group = next((g for g in groups if _close(trs[g[0]], value, TIMING_RTOL)), None)
            if group is None:
                groups.append([key])
            else:
                group.append(key)
        reference = max(groups, key=len)[0]
        for key in trs:
            if not _close(trs[key], trs[reference], TIMING_RTOL):
                problems.append(
                    f"RepetitionTime {trs[key]:g} ms in {series_label(present[key])} vs "
                    f"{trs[reference]:g} ms in {series_label(present[reference])}"
                )
    # InversionTime: TI1 (INV1) before TI2 (INV2); derived series carry one of the two.
    tis = {k: ti for k, v in present.items() if (ti := _timing(v, "InversionTime")) is not None}
    if "inv1" in tis and "inv2" in tis and not tis["inv1"] < tis["inv2"]:
        problems.append(
            f"InversionTime {tis['inv1']:g} ms in {series_label(present['inv1'])} is not "
            f"shorter than {tis['inv2']:g} ms in {series_label(present['inv2'])} "
            "(INV1 is the first inversion time: are the series swapped?)"
        )
    problems += _derived_agree(present, tis, "InversionTime", "ms", TIMING_RTOL, relative=True)
    flips = {k: f for k, v in present.items() if (f := _timing(v, "FlipAngle")) is not None}
    problems += _derived_agree(present, flips, "FlipAngle", "deg", FLIP_ATOL_DEG, relative=False)
    return problems


def _derived_agree(
    present: Mapping[str, SeriesVolume],
    values: Mapping[str, float],
    tag: str,
    unit: str,
    tolerance: float,
    *,
    relative: bool,
) -> list[str]:
    """UNI/T1 map values of ``tag`` that are neither INV1's nor INV2's.

    Judged only when INV1 and INV2 both carry ``tag``: a derived series may carry the value of
    the inversion series that is missing (or silent), so with one of the two it cannot be
    told apart from a mismatch (the missing series is reported where T1 needs it).
    """
    sources = [k for k in ("inv1", "inv2") if k in values]
    if len(sources) < 2:
        return []
    problems = []
    for key in ("uni", "t1map"):
        if key not in values:
            continue
        value = values[key]
        if any(
            _close(value, values[s], tolerance)
            if relative
            else abs(value - values[s]) <= tolerance
            for s in sources
        ):
            continue
        others = " or ".join(
            f"{values[s]:g} {unit} in {series_label(present[s])}" for s in sources
        )
        problems.append(f"{tag} {value:g} {unit} in {series_label(present[key])} vs {others}")
    return problems


def grid_differences(volume: SeriesVolume, reference: SeriesVolume) -> list[str]:
    """How ``volume``'s grid differs from ``reference``'s (empty when it is the same grid).

    Tolerances: matrix exact; pixel and slice spacing :data:`GRID_SPACING_RTOL` (relative);
    orientation :data:`GRID_ORIENTATION_TOL` (direction cosines); position of the first voxel
    :data:`GRID_POSITION_TOL_MM`; FrameOfReferenceUID equal when both carry one.

    Returns
    -------
    list of str
        ``"<tag> <value> vs <value>"`` per differing property, ``volume``'s value first.
    """
    out: list[str] = []
    shape, ref_shape = volume.array.shape, reference.array.shape
    if shape[1:] != ref_shape[1:]:
        out.append(
            f"matrix (Rows x Columns) {shape[1]} x {shape[2]} vs {ref_shape[1]} x {ref_shape[2]}"
        )
    if shape[0] != ref_shape[0]:
        out.append(f"number of slices {shape[0]} vs {ref_shape[0]}")
    slice_mm, row_mm, col_mm = volume.voxel_mm
    ref_slice_mm, ref_row_mm, ref_col_mm = reference.voxel_mm
    if not (
        _close(row_mm, ref_row_mm, GRID_SPACING_RTOL)
        and _close(col_mm, ref_col_mm, GRID_SPACING_RTOL)
    ):
        out.append(
            f"PixelSpacing {row_mm:.4g}\\{col_mm:.4g} mm vs {ref_row_mm:.4g}\\{ref_col_mm:.4g} mm"
        )
    if min(shape[0], ref_shape[0]) > 1 and not _close(slice_mm, ref_slice_mm, GRID_SPACING_RTOL):
        out.append(f"slice spacing {slice_mm:.4g} mm vs {ref_slice_mm:.4g} mm")
    directions = _directions(volume)
    ref_directions = _directions(reference)
    if np.max(np.abs(directions - ref_directions)) > GRID_ORIENTATION_TOL:
        out.append(
            "ImageOrientationPatient "
            + _cosines(directions[:, 1:])
            + " vs "
            + _cosines(ref_directions[:, 1:])
        )
    position = volume.affine_lps[:3, 3]
    ref_position = reference.affine_lps[:3, 3]
    if float(np.linalg.norm(position - ref_position)) > GRID_POSITION_TOL_MM:
        out.append(
            "ImagePositionPatient (first slice) "
            + "\\".join(f"{v:.2f}" for v in position)
            + " mm vs "
            + "\\".join(f"{v:.2f}" for v in ref_position)
            + " mm"
        )
    ref_a, ref_b = volume.frame_of_reference_uid, reference.frame_of_reference_uid
    if ref_a and ref_b and ref_a != ref_b:
        out.append("FrameOfReferenceUID differs")
    return out


def _directions(volume: SeriesVolume) -> NDArray[np.float64]:
    """Unit vectors of the slice, row and column axes (columns of a 3x3 matrix)."""
    axes = np.asarray(volume.affine_lps[:3, :3], dtype=np.float64)
    norms = np.linalg.norm(axes, axis=0)
    return axes / np.where(norms > 0, norms, 1.0)


def _cosines(axes: NDArray[np.float64]) -> str:
    # Column direction (along a row: index i) first, then row direction, as DICOM writes them.
    return "\\".join(f"{v:.3f}" for v in np.concatenate([axes[:, 1], axes[:, 0]]))


def check_slab(index: int, series: Mapping[str, SeriesVolume | None]) -> None:
    """Raise when the headers of one slab's series disagree (see the module docstring).

    Parameters
    ----------
    index : int
        Slab number (1 = most superior), for the message.
    series : mapping
        ``"inv1"``, ``"inv2"``, ``"uni"``, ``"t1map"`` -> the slab's series or ``None``.

    Raises
    ------
    InconsistentSlabError
        Naming every disagreement: the tag, the series and both values.
    """
    problems = header_mismatches(series)
    if problems:
        raise InconsistentSlabError(
            f"the series of slab {index} do not come from one MP2RAGE acquisition: "
            + "; ".join(problems)
        )


def scanner_t1_problem(
    t1map: SeriesVolume, foreground: NDArray[np.bool_] | None = None
) -> str | None:
    """Why a scanner T1 map cannot be used, or ``None`` when it can.

    Parameters
    ----------
    t1map : SeriesVolume
        The scanner's T1 map (values in ms after RescaleSlope/Intercept).
    foreground : ndarray of bool, optional
        Voxels with signal on the map's grid (from INV2); without it, the map's positive
        voxels.

    Returns
    -------
    str or None
        E.g. ``"its values are not finite (RescaleSlope 'NaN')"``, ``"no value is positive"``
        or ``"its median in the foreground is 12 ms (expected 300-5000 ms)"``.
    """
    values = t1map.array
    finite = np.isfinite(values)
    if not finite.all():
        ds = t1map.datasets[0] if t1map.datasets else None
        slope = ds.get("RescaleSlope") if ds is not None else None
        where = f" (RescaleSlope {str(slope)!r})" if slope not in (None, "") else ""
        share = 100.0 * float(np.mean(~finite))
        return f"{share:.0f} % of its values are not finite numbers{where}"
    positive = values > 0
    if not positive.any():
        return "no value is positive (all values <= 0)"
    region = foreground if foreground is not None and foreground.any() else positive
    if region.shape != values.shape:
        raise ValueError(f"foreground shape {region.shape} is not the map's {values.shape}")
    median = float(np.median(values[region]))
    low, high = SCANNER_T1_MEDIAN_RANGE_MS
    if not low <= median <= high:
        return (
            f"its median in the foreground is {median:.0f} ms (expected {low:.0f}-{high:.0f} "
            "ms for tissue T1: wrong scaling or not a T1 map)"
        )
    return None


def missing_series_text(index: int, missing: Sequence[str], received: Sequence[str]) -> str:
    """How a missing series is reported: ``"INV2 series missing for slab 1: received UNI, INV1"``.

    ``missing`` and ``received`` hold the keys of :data:`SLAB_COMPONENTS`.
    """
    names = " and ".join(_NAMES.get(m, m) for m in missing)
    got = ", ".join(_NAMES.get(r, r) for r in received) or "nothing of the acquisition"
    return f"{names} series missing for slab {index}: received {got}"
