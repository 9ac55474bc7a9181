"""Load one DICOM series (legacy single-frame or Enhanced multi-frame MR) into a volume.

The volume follows docs/CONVENTIONS.md: a float64 array indexed ``[k, j, i]`` (slice, row,
column) holding real-world values (RescaleSlope/RescaleIntercept applied; a missing slope is
1 and a missing intercept 0), and a 4x4 ``affine_lps`` mapping ``[k, j, i, 1]`` to DICOM
patient coordinates in mm.

Slices are sorted by their position along the slice normal ``n = row_cos x col_cos`` (never by
InstanceNumber). The slice step vector is ``(last position - first position) / (n - 1)``, so a
constant in-plane shear (gantry-tilt style stacks) is kept exactly.

Tolerances (documented, module constants):

- orientation cosines agree within ``ORIENTATION_TOL`` (absolute);
- pixel spacing agrees within ``SPACING_RTOL`` (relative);
- slice gaps agree within ``SLICE_SPACING_RTOL`` (1 %) of the smallest gap; a gap of
  1.5 times the smallest gap or more is reported as a missing slice;
- two slices closer than ``DUPLICATE_TOL_MM`` along the normal are duplicates.

Memory: pixel data is decoded once into the float64 volume, then ``PixelData`` is deleted from
the kept datasets, which therefore hold headers only (all that the result writers need).
Error messages name the SeriesInstanceUID, never patient data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_node.components import Component, classify

__all__ = [
    "DUPLICATE_TOL_MM",
    "ORIENTATION_TOL",
    "SLICE_SPACING_RTOL",
    "SPACING_RTOL",
    "SeriesVolume",
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
    """

    series_uid: str
    component: Component
    array: np.ndarray
    affine_lps: np.ndarray
    datasets: list[Dataset]
    frame_sources: list[tuple[str, int | None]] = field(default_factory=list)

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


def _legacy_slice(ds: Dataset, series_uid: str) -> _Slice:
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


def _slice_step(
    slices: list[_Slice], distances_mm: np.ndarray, normal: np.ndarray, series_uid: str
) -> np.ndarray:
    if len(slices) == 1:
        thickness = slices[0].slice_thickness_mm or 1.0
        return normal * thickness
    gaps = np.diff(distances_mm)
    if np.min(gaps) < DUPLICATE_TOL_MM:
        at = distances_mm[int(np.argmin(gaps))]
        raise ValueError(
            f"series {series_uid}: duplicate slice position ({at:.3f} mm along the normal)"
        )
    smallest = float(np.min(gaps))
    largest = float(np.max(gaps))
    if largest > smallest * (1 + SLICE_SPACING_RTOL):
        if largest >= smallest * _MISSING_SLICE_RATIO:
            at = distances_mm[int(np.argmax(gaps))]
            raise ValueError(
                f"series {series_uid}: missing slice: gap of {largest:.3f} mm after "
                f"{at:.3f} mm along the normal where slices are {smallest:.3f} mm apart"
            )
        raise ValueError(
            f"series {series_uid}: non-uniform slice spacing ({smallest:.3f} to "
            f"{largest:.3f} mm, tolerance {SLICE_SPACING_RTOL:.0%})"
        )
    step = (slices[-1].position_mm - slices[0].position_mm) / (len(slices) - 1)
    expected = slices[0].position_mm + np.outer(np.arange(len(slices)), step)
    actual = np.array([s.position_mm for s in slices])
    if np.max(np.linalg.norm(actual - expected, axis=1)) > SLICE_SPACING_RTOL * smallest:
        raise ValueError(f"series {series_uid}: slice positions are not on a straight line")
    return step


def _affine(slices: list[_Slice], step: np.ndarray) -> np.ndarray:
    first = slices[0]
    row_cos, col_cos = first.orientation[:3], first.orientation[3:]
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = col_cos * first.spacing_mm[0]
    affine[:3, 2] = row_cos * first.spacing_mm[1]
    affine[:3, 3] = first.position_mm
    return affine


def _decode(ds: Dataset, series_uid: str) -> np.ndarray:
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise ValueError(f"series {series_uid}: instance {ds.SOPInstanceUID} has no pixel data")
    pixels = np.asarray(ds.pixel_array)
    for keyword in _PIXEL_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    return pixels


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
        Slices sorted by position along the slice normal.

    Raises
    ------
    ValueError
        For no files, mixed series, more than one multi-frame instance, inconsistent
        orientation, pixel spacing or matrix, several frames of reference, duplicate slice
        positions, a missing slice, non-uniform slice spacing, or missing pixel data.
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

    if any(_is_multiframe(ds) for ds in datasets):
        if len(datasets) != 1:
            raise ValueError(
                f"series {series_uid}: expected one multi-frame instance, got "
                f"{len(datasets)} instances"
            )
        source = datasets[0]
        slices = _multiframe_slices(source, series_uid)
    else:
        slices = [_legacy_slice(ds, series_uid) for ds in datasets]
    _check_consistency(slices, series_uid)

    normal = np.cross(slices[0].orientation[:3], slices[0].orientation[3:])
    distances_mm = np.array([float(np.dot(s.position_mm, normal)) for s in slices])
    order = np.argsort(distances_mm, kind="stable")
    slices = [slices[k] for k in order]
    distances_mm = distances_mm[order]
    step = _slice_step(slices, distances_mm, normal, series_uid)

    if len(datasets) == 1 and slices[0].frame_number is not None:
        frames = _decode(datasets[0], series_uid)
        frames = frames.reshape((-1, *slices[0].shape))
        stored = frames[[s.frame_number - 1 for s in slices]]  # type: ignore[operator]
        kept = datasets
    else:
        kept = [datasets[k] for k in order]
        stored = np.stack([_decode(ds, series_uid) for ds in kept])
    slope = np.array([s.slope for s in slices])[:, None, None]
    intercept = np.array([s.intercept for s in slices])[:, None, None]
    array = stored.astype(np.float64) * slope + intercept

    return SeriesVolume(
        series_uid=series_uid,
        component=classify(kept[0]),
        array=array,
        affine_lps=_affine(slices, step),
        datasets=kept,
        frame_sources=[(s.sop_instance_uid, s.frame_number) for s in slices],
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
