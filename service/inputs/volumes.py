"""Load one DICOM series (legacy single-frame or Enhanced multi-frame MR) into a volume.

The volume follows docs/CONVENTIONS.md: a float64 array indexed ``[k, j, i]`` (slice, row,
column) holding real-world values (RescaleSlope/RescaleIntercept applied; a missing slope is
1 and a missing intercept 0), and a 4x4 ``affine_lps`` mapping ``[k, j, i, 1]`` to DICOM
patient coordinates in mm.

Slices are sorted by their position along the slice normal ``n = row_cos x col_cos`` (never by
InstanceNumber). The slice step vector is ``(last position - first position) / (n - 1)``, so a
constant in-plane shear (gantry-tilt style stacks) is kept exactly.

What highdicom does here, and what stays ours (issue 13):

- highdicom (``highdicom.spatial.get_volume_positions``) sorts the slice positions of each
  echo along the normal and decides whether they form a regularly spaced stack (no duplicate
  position, no gap, every gap within ``SLICE_SPACING_RTOL`` of the mean gap);
  ``highdicom.spatial.create_affine_matrix_from_attributes`` builds the affine from the first
  position, the orientation, the pixel spacing and the slice spacing. Handedness
  ``LEFT_HANDED`` with index convention ``DR`` gives this project's slice order.
- Ours: the slice column of the affine is the measured step above. highdicom's is the
  normal times the mean gap, which flattens a tilted stack onto the normal (the last slice of
  a 1 degree tilt lands mm away from its ImagePositionPatient) and refuses tilts beyond about
  2.6 degrees (tests/test_volumes.py shows both). A single slice's step is its SliceThickness
  (highdicom uses SpacingBetweenSlices or 1 mm).
- Ours: header reading (legacy and Enhanced MR functional groups), the consistency checks
  and the error messages. ``highdicom.get_volume_from_series`` compares orientation and
  pixel spacing exactly and raises messages that name neither the series nor the cause
  (highdicom only answers "not a volume", so :func:`_irregular_stack_error` says why).
- Ours: multi-echo grouping. highdicom has no notion of echoes: ``get_volume_from_series``
  and ``Image.get_volume`` refuse several frames at one position.
- Ours: pixel decoding and rescale (two numpy lines). highdicom's value transform is only
  reachable through ``get_volume_from_series`` / ``Image.get_volume``, which re-sort and
  re-check the slices, do not say which instance or frame became which slice (needed for
  ``frame_sources`` and the result writers), and apply a RealWorldValueMapping in preference
  to RescaleSlope/RescaleIntercept when both are present.

Tolerances (documented, module constants):

- orientation cosines agree within ``ORIENTATION_TOL`` (absolute);
- pixel spacing agrees within ``SPACING_RTOL`` (relative);
- every slice gap agrees within ``SLICE_SPACING_RTOL`` (1 %) with the mean gap
  (highdicom's rule); when not, a gap of 1.5 times the smallest gap or more is reported as
  a missing slice;
- two slices closer than ``DUPLICATE_TOL_MM`` along the normal are duplicates;
- positions deviate from the straight line through the first and last one by at most
  ``SLICE_SPACING_RTOL`` of the slice spacing.

Multi-echo series (a gradient echo with several echoes per slice position, as legacy
single-frame instances with their own EchoNumbers/EchoTime, or as one Enhanced MR instance
whose frames carry different MR Echo Sequence EffectiveEchoTime values) are loaded echo by echo
on the same grid and combined into one magnitude volume, the root sum of squares over echoes;
``SeriesVolume.echo_times_ms`` lists the echo times found. Separate series of one echo each are
combined the same way by :func:`combine_echoes`.

Memory: pixel data is decoded once into the float64 volume, then ``PixelData`` is deleted from
the kept datasets, which therefore hold headers only (all that the result writers need).
Error messages name the SeriesInstanceUID, never patient data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from highdicom import AxisHandedness
from highdicom.spatial import create_affine_matrix_from_attributes, get_volume_positions
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_node.components import Component, classify, classify_series

__all__ = [
    "DUPLICATE_TOL_MM",
    "ORIENTATION_TOL",
    "SLICE_SPACING_RTOL",
    "SPACING_RTOL",
    "SeriesVolume",
    "combine_echoes",
    "group_by_series",
    "load_series",
    "same_grid",
]

ORIENTATION_TOL = 1e-4
SPACING_RTOL = 1e-4
SLICE_SPACING_RTOL = 0.01
DUPLICATE_TOL_MM = 1e-3
_MISSING_SLICE_RATIO = 1.5
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: highdicom's index convention for the in-plane axes of ``[k, j, i]``: j goes down the rows
#: (D), i right along the columns (R).
_INDEX_CONVENTION = "DR"
#: highdicom accepts a stack when the cosine between its stacking direction and the slice
#: normal is within this of 1: 1.0 lets every direction off the slice plane through, because a
#: sheared (tilted) stack is kept with its measured step (:func:`_measured_step`) instead of
#: being refused (beyond about 2.6 degrees) or flattened onto the normal (below).
_ANY_STACKING_DIRECTION = 1.0


@dataclass
class SeriesVolume:
    """One series as a volume on its acquisition grid.

    Attributes
    ----------
    series_uid : str
        SeriesInstanceUID.
    component : Component
        MP2RAGE component from :func:`dicom_node.components.classify`.
    array : numpy.ndarray
        float64 real-world values, shape ``(n_slices, rows, columns)``, indexed ``[k, j, i]``.
    affine_lps : numpy.ndarray
        4x4 voxel index ``[k, j, i, 1]`` -> LPS mm.
    datasets : list of pydicom.dataset.Dataset
        Source instances without pixel data: one per slice in slice order (legacy), or the
        single multi-frame instance.
    frame_sources : list of (str, int or None)
        For each slice k: (SOPInstanceUID, 1-based frame number, or None for single-frame).
        For a multi-echo volume: the slices of the first echo.
    echo_times_ms : tuple of float
        The echo times (ms) the volume was made of, sorted; several for a root-sum-of-squares
        combination of echoes, empty when the headers give none.
    """

    series_uid: str
    component: Component
    array: np.ndarray
    affine_lps: np.ndarray
    datasets: list[Dataset]
    frame_sources: list[tuple[str, int | None]] = field(default_factory=list)
    echo_times_ms: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"array must be 3-D [k, j, i], got shape {self.array.shape}")
        if self.affine_lps.shape != (4, 4):
            raise ValueError(f"affine_lps must be 4x4, got shape {self.affine_lps.shape}")
        if self.frame_sources and len(self.frame_sources) != self.array.shape[0]:
            raise ValueError(
                f"{len(self.frame_sources)} frame sources for {self.array.shape[0]} slices"
            )

    @property
    def voxel_mm(self) -> tuple[float, float, float]:
        """(slice spacing, row spacing, column spacing) in mm."""
        norms = np.linalg.norm(self.affine_lps[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def n_echoes(self) -> int:
        """How many echoes were combined into ``array`` (1 for an ordinary series)."""
        return max(1, len(self.echo_times_ms))

    @property
    def frame_of_reference_uid(self) -> str | None:
        """FrameOfReferenceUID of the source instances, if known."""
        if not self.datasets:
            return None
        value = self.datasets[0].get("FrameOfReferenceUID")
        return str(value) if value else None

    def to_source_order(self, values: np.ndarray) -> np.ndarray:
        """Reorder a ``[k, j, i]`` array on this grid into the order of the source frames.

        Result writers take one value plane per source slice, in the order of
        ``datasets`` (legacy: already slice order) or of the frames of the one multi-frame
        instance (which need not be sorted by position).

        Parameters
        ----------
        values : numpy.ndarray
            Array with the shape of ``array``.

        Returns
        -------
        numpy.ndarray
            ``values`` with its first axis permuted into source order (a view-free copy
            only when the order differs).
        """
        if values.shape != self.array.shape:
            raise ValueError(f"values shape {values.shape} != volume shape {self.array.shape}")
        frames = [frame for _, frame in self.frame_sources]
        if not frames or frames[0] is None:
            return values
        order = np.argsort(np.asarray(frames))
        if np.array_equal(order, np.arange(len(order))):
            return values
        return values[order]


@dataclass
class _Slice:
    position_mm: np.ndarray
    orientation: np.ndarray
    spacing_mm: np.ndarray
    shape: tuple[int, int]
    frame_of_reference_uid: str | None
    slope: float
    intercept: float
    sop_instance_uid: str
    frame_number: int | None
    slice_thickness_mm: float | None
    source_index: int = 0
    echo_number: int | None = None
    echo_time_ms: float | None = None

    @property
    def echo_key(self) -> tuple[int | None, float | None]:
        return (self.echo_number, self.echo_time_ms)


def group_by_series(paths: Iterable[Path]) -> dict[str, list[Path]]:
    """Group DICOM files by SeriesInstanceUID, reading headers only.

    Parameters
    ----------
    paths : iterable of Path
        DICOM files.

    Returns
    -------
    dict of str to list of Path
        SeriesInstanceUID -> files of that series, sorted by path.

    Raises
    ------
    ValueError
        If a file is not DICOM or has no SeriesInstanceUID.
    """
    groups: dict[str, list[Path]] = {}
    for path in paths:
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except InvalidDicomError as exc:
            raise ValueError(f"{path} is not a DICOM file") from exc
        uid = ds.get("SeriesInstanceUID")
        if not uid:
            raise ValueError(f"{path} has no SeriesInstanceUID")
        groups.setdefault(str(uid), []).append(Path(path))
    return {uid: sorted(files) for uid, files in groups.items()}


def _float_list(value: object) -> np.ndarray:
    return np.asarray([float(v) for v in value], dtype=float)  # type: ignore[union-attr]


def _number(value: object, default: float) -> float:
    if value is None or value == "":
        return default
    return float(value)  # type: ignore[arg-type]


def _item(ds: Dataset, keyword: str) -> Dataset | None:
    sequence = ds.get(keyword)
    return sequence[0] if sequence else None


def _functional_item(frame: Dataset, shared: Dataset | None, keyword: str) -> Dataset | None:
    item = _item(frame, keyword)
    if item is None and shared is not None:
        item = _item(shared, keyword)
    return item


def _optional_float(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        if not isinstance(value, str | bytes | int | float):
            value = next(iter(value))  # type: ignore[call-overload]
        number = round(float(value), 4)  # type: ignore[arg-type]
    except (TypeError, ValueError, StopIteration):
        return None
    return number if np.isfinite(number) else None


def _optional_int(value: object) -> int | None:
    number = _optional_float(value)
    return None if number is None else int(number)


def _legacy_slice(ds: Dataset, series_uid: str, index: int) -> _Slice:
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if not ds.get(keyword):
            raise ValueError(f"series {series_uid}: instance {ds.SOPInstanceUID} has no {keyword}")
    return _Slice(
        position_mm=_float_list(ds.ImagePositionPatient),
        orientation=_float_list(ds.ImageOrientationPatient),
        spacing_mm=_float_list(ds.PixelSpacing),
        shape=(int(ds.Rows), int(ds.Columns)),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID") or "") or None,
        slope=_number(ds.get("RescaleSlope"), 1.0),
        intercept=_number(ds.get("RescaleIntercept"), 0.0),
        sop_instance_uid=str(ds.SOPInstanceUID),
        frame_number=None,
        slice_thickness_mm=_number(ds.get("SliceThickness"), 0.0) or None,
        source_index=index,
        echo_number=_optional_int(ds.get("EchoNumbers")),
        echo_time_ms=_optional_float(ds.get("EchoTime")),
    )


def _multiframe_slices(ds: Dataset, series_uid: str) -> list[_Slice]:
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    frames = ds.get("PerFrameFunctionalGroupsSequence") or []
    n_frames = int(ds.get("NumberOfFrames", 1))
    if len(frames) != n_frames:
        raise ValueError(
            f"series {series_uid}: {len(frames)} per-frame functional groups "
            f"for NumberOfFrames {n_frames}"
        )
    slices = []
    for number, frame in enumerate(frames, start=1):
        position = _functional_item(frame, shared, "PlanePositionSequence")
        orientation = _functional_item(frame, shared, "PlaneOrientationSequence")
        measures = _functional_item(frame, shared, "PixelMeasuresSequence")
        if position is None or orientation is None or measures is None:
            raise ValueError(
                f"series {series_uid}: frame {number} lacks plane position, plane "
                "orientation or pixel measures"
            )
        transform = _functional_item(frame, shared, "PixelValueTransformationSequence")
        source = transform if transform is not None else ds
        echo = _functional_item(frame, shared, "MREchoSequence")
        slices.append(
            _Slice(
                position_mm=_float_list(position.ImagePositionPatient),
                orientation=_float_list(orientation.ImageOrientationPatient),
                spacing_mm=_float_list(measures.PixelSpacing),
                shape=(int(ds.Rows), int(ds.Columns)),
                frame_of_reference_uid=str(ds.get("FrameOfReferenceUID") or "") or None,
                slope=_number(source.get("RescaleSlope"), 1.0),
                intercept=_number(source.get("RescaleIntercept"), 0.0),
                sop_instance_uid=str(ds.SOPInstanceUID),
                frame_number=number,
                slice_thickness_mm=_number(measures.get("SliceThickness"), 0.0) or None,
                source_index=number - 1,
                echo_time_ms=_optional_float(echo.get("EffectiveEchoTime"))
                if echo is not None
                else None,
            )
        )
    return slices


def _is_multiframe(ds: Dataset) -> bool:
    return "PerFrameFunctionalGroupsSequence" in ds or int(ds.get("NumberOfFrames", 1) or 1) > 1


def _check_consistency(slices: list[_Slice], series_uid: str) -> None:
    first = slices[0]
    references = {s.frame_of_reference_uid for s in slices}
    if len(references) > 1:
        raise ValueError(
            f"series {series_uid}: {len(references)} frames of reference in one series"
        )
    for s in slices[1:]:
        if np.max(np.abs(s.orientation - first.orientation)) > ORIENTATION_TOL:
            raise ValueError(f"series {series_uid}: inconsistent orientation between slices")
        if not np.allclose(s.spacing_mm, first.spacing_mm, rtol=SPACING_RTOL, atol=0):
            raise ValueError(f"series {series_uid}: inconsistent pixel spacing between slices")
        if s.shape != first.shape:
            raise ValueError(f"series {series_uid}: inconsistent matrix size between slices")


def _irregular_stack_error(
    slices: list[_Slice], normal: np.ndarray, series_uid: str
) -> ValueError:
    """Say why highdicom found no regularly spaced stack in ``slices`` (it only says no)."""
    distances_mm = np.sort([float(np.dot(s.position_mm, normal)) for s in slices])
    gaps = np.diff(distances_mm)
    if np.min(gaps) < DUPLICATE_TOL_MM:
        at = distances_mm[int(np.argmin(gaps))]
        return ValueError(
            f"series {series_uid}: duplicate slice position ({at:.3f} mm along the normal)"
        )
    smallest, largest = float(np.min(gaps)), float(np.max(gaps))
    if largest >= smallest * _MISSING_SLICE_RATIO:
        at = distances_mm[int(np.argmax(gaps))]
        return ValueError(
            f"series {series_uid}: missing slice: gap of {largest:.3f} mm after "
            f"{at:.3f} mm along the normal where slices are {smallest:.3f} mm apart"
        )
    return ValueError(
        f"series {series_uid}: non-uniform slice spacing ({smallest:.3f} to "
        f"{largest:.3f} mm, tolerance {SLICE_SPACING_RTOL:.0%} of the mean gap)"
    )


def _measured_step(ordered: list[_Slice], spacing_mm: float, series_uid: str) -> np.ndarray:
    """Slice step ``(last - first) / (n - 1)`` of a sorted stack whose positions are on a line.

    highdicom steps along the normal of ImageOrientationPatient by the mean gap: that drops
    the in-plane shear of a tilted stack (millimetres at its far end) and, with headers
    rounded to 6 significant digits, differs from the measured step by about 1e-6 mm.
    """
    step = (ordered[-1].position_mm - ordered[0].position_mm) / (len(ordered) - 1)
    expected = ordered[0].position_mm + np.outer(np.arange(len(ordered)), step)
    actual = np.array([s.position_mm for s in ordered])
    if np.max(np.linalg.norm(actual - expected, axis=1)) > SLICE_SPACING_RTOL * spacing_mm:
        raise ValueError(f"series {series_uid}: slice positions are not on a straight line")
    return step


def _stack(slices: list[_Slice], series_uid: str) -> tuple[list[_Slice], np.ndarray]:
    """Sort the slices of one echo along the normal; return them and their affine.

    highdicom sorts the positions along the normal, checks that they are regularly spaced
    (duplicates, gaps and gaps off by more than ``SLICE_SPACING_RTOL`` of the mean fail) and
    builds the affine; handedness ``LEFT_HANDED`` with index convention ``DR`` is this
    project's order (slice index increasing along ``row_cos x col_cos``). Its slice column
    is then replaced by the measured step (:func:`_measured_step`).
    """
    first = slices[0]
    spacing_mm, indices = get_volume_positions(
        np.array([s.position_mm for s in slices]),
        first.orientation,
        rtol=SLICE_SPACING_RTOL,
        perpendicular_tol=_ANY_STACKING_DIRECTION,
        index_convention=_INDEX_CONVENTION,
        handedness=AxisHandedness.LEFT_HANDED,
    )
    if (
        spacing_mm is None
        or indices is None
        or (len(slices) > 1 and spacing_mm < DUPLICATE_TOL_MM)
    ):
        normal = np.cross(first.orientation[:3], first.orientation[3:])
        raise _irregular_stack_error(slices, normal, series_uid)
    ordered = [first] * len(slices)
    for s, index in zip(slices, indices, strict=True):
        ordered[index] = s
    if len(slices) == 1:  # highdicom would say 1 mm; the slice's own thickness is better
        spacing_mm = first.slice_thickness_mm or 1.0
    affine = create_affine_matrix_from_attributes(
        image_position=ordered[0].position_mm,
        image_orientation=first.orientation,
        pixel_spacing=first.spacing_mm,
        spacing_between_slices=float(spacing_mm),
        index_convention=_INDEX_CONVENTION,
        slices_first=True,
        handedness=AxisHandedness.LEFT_HANDED,
    )
    if len(slices) > 1:
        affine[:3, 0] = _measured_step(ordered, float(spacing_mm), series_uid)
    return ordered, affine


def _decode(ds: Dataset, series_uid: str) -> np.ndarray:
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise ValueError(f"series {series_uid}: instance {ds.SOPInstanceUID} has no pixel data")
    pixels = np.asarray(ds.pixel_array)
    for keyword in _PIXEL_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    return pixels


def _echo_groups(slices: list[_Slice]) -> list[list[_Slice]]:
    """Split the slices of a series into echoes (one group when it is not multi-echo).

    A series is multi-echo when its slices carry more than one (EchoNumbers, EchoTime) pair
    and slice positions repeat; each echo must then cover the same positions.
    """
    keys = sorted(
        {s.echo_key for s in slices}, key=lambda k: (k[0] or 0, k[1] if k[1] is not None else 0)
    )
    if len(keys) < 2:
        return [slices]
    positions = np.array([s.position_mm for s in slices])
    rounded = {tuple(np.round(p / DUPLICATE_TOL_MM).astype(np.int64)) for p in positions}
    if len(rounded) == len(slices):
        return [slices]
    return [[s for s in slices if s.echo_key == key] for key in keys]


def _echo_label(key: tuple[int | None, float | None]) -> str:
    number, time_ms = key
    if number is not None:
        return f"echo {number}"
    return f"echo at {time_ms:g} ms" if time_ms is not None else "echo"


def load_series(paths: Sequence[Path]) -> SeriesVolume:
    """Read one series into a :class:`SeriesVolume`.

    Parameters
    ----------
    paths : sequence of Path
        All files of one series, in any order: single-frame instances, or exactly one
        multi-frame (Enhanced MR) instance. Compressed transfer syntaxes are decoded with
        the installed pydicom plugins.

    Returns
    -------
    SeriesVolume
        Slices sorted by position along the slice normal. A multi-echo series gives the root
        sum of squares over its echoes, with ``echo_times_ms`` listing them.

    Raises
    ------
    ValueError
        For no files, mixed series, more than one multi-frame instance, inconsistent
        orientation, pixel spacing or matrix, several frames of reference, duplicate slice
        positions, a missing slice, non-uniform slice spacing, echoes on different grids, or
        missing pixel data.
    """
    if not paths:
        raise ValueError("no files given")
    datasets = [dcmread(path) for path in paths]
    series_uids = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in datasets})
    if len(series_uids) > 1:
        raise ValueError(f"mixed series: files belong to series {', '.join(series_uids)}")
    series_uid = series_uids[0]
    if not series_uid:
        raise ValueError("files have no SeriesInstanceUID")

    multiframe = any(_is_multiframe(ds) for ds in datasets)
    if multiframe:
        if len(datasets) != 1:
            raise ValueError(
                f"series {series_uid}: expected one multi-frame instance, got "
                f"{len(datasets)} instances"
            )
        slices = _multiframe_slices(datasets[0], series_uid)
    else:
        slices = [_legacy_slice(ds, series_uid, index) for index, ds in enumerate(datasets)]
    _check_consistency(slices, series_uid)

    echoes = [_stack(group, series_uid) for group in _echo_groups(slices)]
    first, affine = echoes[0]
    for ordered, echo_affine in echoes[1:]:
        if len(ordered) != len(first) or not np.allclose(
            echo_affine, affine, rtol=0, atol=10 * DUPLICATE_TOL_MM
        ):
            raise ValueError(
                f"series {series_uid}: {_echo_label(ordered[0].echo_key)} does not cover the "
                "slice positions of the first echo"
            )

    if multiframe:
        frames = _decode(datasets[0], series_uid).reshape((-1, *slices[0].shape))
        kept = datasets
    else:
        kept = [datasets[s.source_index] for s in first]
        frames = np.stack([_decode(ds, series_uid) for ds in datasets])
    array: np.ndarray | None = None
    for ordered, _ in echoes:
        echo = frames[[s.source_index for s in ordered]].astype(np.float64)
        echo *= np.array([s.slope for s in ordered])[:, None, None]
        echo += np.array([s.intercept for s in ordered])[:, None, None]
        if len(echoes) == 1:
            array = echo
        else:  # root sum of squares, accumulated in place (one echo in memory at a time)
            np.square(echo, out=echo)
            array = echo if array is None else np.add(array, echo, out=array)
    del frames
    assert array is not None
    if len(echoes) > 1:
        np.sqrt(array, out=array)
    times = sorted({o[0].echo_time_ms for o, _ in echoes if o[0].echo_time_ms is not None})

    return SeriesVolume(
        series_uid=series_uid,
        component=classify_series([kept[0], *datasets]) if len(echoes) > 1 else classify(kept[0]),
        array=array,
        affine_lps=affine,
        datasets=kept,
        frame_sources=[(s.sop_instance_uid, s.frame_number) for s in first],
        echo_times_ms=tuple(times),
    )


def combine_echoes(volumes: Sequence[SeriesVolume]) -> SeriesVolume:
    """Combine single-echo series of one grid (one series per echo) into one volume.

    Parameters
    ----------
    volumes : sequence of SeriesVolume
        Two or more volumes on the same grid (:func:`same_grid`), each with one echo time,
        all echo times different.

    Returns
    -------
    SeriesVolume
        Root sum of squares over the echoes, with the headers and series UID of the earliest
        echo and ``echo_times_ms`` listing every echo.

    Raises
    ------
    ValueError
        If fewer than two volumes are given, one is not on the grid of the first, or the
        echo times are missing, several per volume, or repeated.
    """
    if len(volumes) < 2:
        raise ValueError(f"combine_echoes needs two or more volumes, got {len(volumes)}")
    for volume in volumes:
        if len(volume.echo_times_ms) != 1:
            raise ValueError(
                f"series {volume.series_uid}: a single echo time is needed to combine echo "
                f"series, found {list(volume.echo_times_ms)}"
            )
        if not same_grid(volume, volumes[0]):
            raise ValueError(
                f"series {volume.series_uid} is not on the grid of series "
                f"{volumes[0].series_uid}: echoes cannot be combined"
            )
    times = [volume.echo_times_ms[0] for volume in volumes]
    if len(set(times)) != len(times):
        raise ValueError(f"echo series share an echo time ({sorted(times)} ms)")
    ordered = sorted(volumes, key=lambda volume: volume.echo_times_ms[0])
    first = ordered[0]
    array = np.sqrt(np.sum([np.square(volume.array) for volume in ordered], axis=0))
    return SeriesVolume(
        series_uid=first.series_uid,
        component=first.component,
        array=array,
        affine_lps=first.affine_lps.copy(),
        datasets=first.datasets,
        frame_sources=list(first.frame_sources),
        echo_times_ms=tuple(sorted(times)),
    )


def same_grid(a: SeriesVolume, b: SeriesVolume, tol_mm: float = 0.05) -> bool:
    """Whether two volumes sample the same voxel centres.

    Parameters
    ----------
    a, b : SeriesVolume
        Volumes to compare.
    tol_mm : float
        Largest allowed distance between corresponding corner voxel centres.

    Returns
    -------
    bool
        True when shapes match, frames of reference (if both known) match, and every corner
        voxel centre of ``a`` lies within ``tol_mm`` of the same voxel of ``b``.
    """
    if tol_mm < 0:
        raise ValueError(f"tol_mm must be >= 0, got {tol_mm}")
    if a.array.shape != b.array.shape:
        return False
    ref_a, ref_b = a.frame_of_reference_uid, b.frame_of_reference_uid
    if ref_a and ref_b and ref_a != ref_b:
        return False
    last = np.array(a.array.shape) - 1
    corners = np.array(
        [[k, j, i, 1.0] for k in (0, last[0]) for j in (0, last[1]) for i in (0, last[2])]
    )
    distance = np.linalg.norm((corners @ a.affine_lps.T - corners @ b.affine_lps.T)[:, :3], axis=1)
    return bool(np.max(distance) <= tol_mm)
